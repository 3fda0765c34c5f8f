//! Kprobes on kernel module functions (by name and by wildcard), judged
//! by the guest kernel's own kprobe on the same function. The default guest's virtio_blk is a
//! module; the workload removes it and loads it again, so vmprobe arms
//! the probe at the module's load (`do_init_module`), not at attach, and
//! disarms it at its removal (`free_module`): twice, at whatever address
//! the guest loads it each time. Detach then finds guest memory as it was
//! (the gdb backend compares every armed site's bytes), which it would not
//! if a site of the freed module were still counted as armed.

mod support;
use support::*;

/// Direct 4 KiB reads of /dev/vda in each window.
const READS: [u64; 2] = [16, 9];

/// The guest counts `virtio_queue_rq` with its own kprobe (`gtq`, on the
/// module's function as tracefs names it) over each window, between the
/// marker writes that toggle vmprobe's count; then the module goes away.
fn workload() -> String {
    let window = |n: u64| {
        format!(
            "insmod /lib/modules/virtio_blk.ko && sleep 1 && \
             echo 'p:gtq virtio_blk:virtio_queue_rq' > kprobe_events && \
             echo 1 > events/kprobes/gtq/enable && \
             dd if=/dev/zero of=/dev/null bs={WINDOW_START} count=1 2>/dev/null && \
             dd if=/dev/vda of=/dev/null bs=4k count={n} iflag=direct 2>/dev/null && \
             dd if=/dev/zero of=/dev/null bs={WINDOW_END} count=1 2>/dev/null && \
             echo 0 > events/kprobes/gtq/enable && \
             sed 's/^/GTQ /' kprobe_profile && echo '-:gtq' >> kprobe_events && \
             rmmod virtio_blk"
        )
    };
    format!(
        "cd /sys/kernel/tracing && rmmod virtio_blk && {} && {}",
        window(READS[0]),
        window(READS[1])
    )
}

/// vmprobe's count per window: `@q[N]` for the Nth window.
fn program() -> String {
    format!(
        "kprobe:ksys_write /arg2 == {WINDOW_START}/ {{ @on = 1; @n = @n + 1; }}\n\
         kprobe:ksys_write /arg2 == {WINDOW_END}/ {{ @on = 0; }}\n\
         kprobe:virtio_queue_rq /@on == 1/ {{ @q[@n] = count(); }}\n\
         kprobe:virtio_queue_r? /@on == 1/ {{ @w[func] = count(); }}\n\
         END {{ clear(@on); clear(@n); }}"
    )
}

fn counts_equal_the_guests_own(backend: &str) {
    let disk = tempfile::NamedTempFile::new().unwrap();
    disk.as_file().set_len(16 << 20).unwrap();
    let out = run_bounded(
        vmprobe().args([
            "run",
            "--backend",
            backend,
            "--console",
            "--disk",
            &disk.path().to_string_lossy(),
            "-e",
            &program(),
            "--",
            &workload(),
        ]),
        RUN_LIMIT,
    );
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "{backend}: vmprobe failed: {stderr}");
    // kprobe_profile: "gtq  HITS  MISSES" per window.
    let theirs: Vec<u64> = stderr
        .lines()
        .filter_map(|l| l.split("GTQ ").nth(1))
        .filter_map(|l| l.split_whitespace().nth(1)?.parse().ok())
        .collect();
    assert_eq!(theirs, READS, "{backend}: the guest's own counts\n{stderr}");
    for (i, n) in READS.iter().enumerate() {
        let ours = map_value(&stdout, &format!("q[{}]", i + 1));
        assert_eq!(ours, *n, "{backend}: window {}\n{stdout}\n{stderr}", i + 1);
    }
    // A wildcard matches the module's functions too (`virtio_queue_rq`,
    // and `virtio_queue_rqs` if a batch came).
    let total: u64 = READS.iter().sum();
    assert_eq!(map_value(&stdout, "w[virtio_queue_rq]"), total, "{stdout}");
    assert!(
        stdout
            .lines()
            .filter(|l| l.starts_with("@w["))
            .all(|l| l.starts_with("@w[virtio_queue_rq")),
        "{stdout}"
    );
    assert!(!stderr.contains("changed across"), "{backend}: {stderr}");
    eprintln!("{backend}: per window ours = theirs = {READS:?}");
}

#[test]
fn a_module_function_is_armed_at_each_load_and_disarmed_at_each_removal_through_the_stub() {
    counts_equal_the_guests_own("gdb");
}

#[test]
fn a_module_function_is_armed_at_each_load_and_disarmed_at_each_removal_in_qemu() {
    if qemu10().is_none() {
        return;
    }
    counts_equal_the_guests_own("plugin");
}

#[test]
fn a_function_in_no_module_is_refused_before_booting() {
    let out = run_bounded(
        vmprobe().args([
            "run",
            "-e",
            "kprobe:no_such_function_anywhere {}",
            "--",
            "true",
        ]),
        RUN_LIMIT,
    );
    let stderr = text(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("unknown kernel symbol 'no_such_function_anywhere'"),
        "{stderr}"
    );
    assert!(!stderr.contains("booting"), "{stderr}");
}
