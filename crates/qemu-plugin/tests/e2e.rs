//! The example plugin in QEMU 10 with the default guest kernel, judged by
//! the guest kernel's own kprobe counts.

mod support;
use support::*;

/// Marker writes around the measured window: sizes nothing else writes.
const WINDOW_START: u64 = 4242;
const WINDOW_END: u64 = 4343;

/// Shell for the guest: a kprobe event on ksys_write counts, from the
/// opening marker to just before the closing one, what the plugin counts in
/// its window (the write that enables the event is seen by neither: the
/// event arms in the middle of it, and the plugin's window is not open yet).
fn ground_truth(workload: &str) -> String {
    format!(
        "cd /sys/kernel/tracing && echo 'p:gt ksys_write' > kprobe_events && \
         echo 1 > events/kprobes/gt/enable && \
         dd if=/dev/zero of=/dev/null bs={WINDOW_START} count=1 2>/dev/null && {workload} && \
         echo 0 > events/kprobes/gt/enable && \
         dd if=/dev/zero of=/dev/null bs={WINDOW_END} count=1 2>/dev/null && \
         sed 's/^/KP /' kprobe_profile && echo > kprobe_events"
    )
}

/// The kprobe event's hit count from `kprobe_profile` (`KP gt NHIT NMISS`).
fn kprobe_hits(console: &str) -> u64 {
    console
        .lines()
        .filter_map(|l| l.trim().strip_prefix("KP "))
        .find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() == 3 && f[0].ends_with("gt")).then(|| f[1].parse().ok())?
        })
        .unwrap_or_else(|| panic!("no kprobe_profile line in the console:\n{console}"))
}

#[test]
fn counts_ksys_write_as_the_guest_kernel_does() {
    let Some(qemu) = qemu10() else { return };
    let plugin = example_plugin("count_insns");
    let image = default_guest();
    let ksys_write = kernel_symbol(&image, "ksys_write");
    let dir = scratch();
    let out = dir.path().join("report");
    let args = format!(
        "addr={ksys_write:#x},out={},window={WINDOW_START}:{WINDOW_END},sample=200",
        out.display()
    );
    let mut guest = Guest::boot(&qemu, Some((&plugin, &args)));
    let (status, took) = guest.run(&ground_truth(
        "dd if=/dev/zero of=/dev/null bs=1 count=1000 && sleep 1",
    ));
    eprintln!("workload took {:.1} s", took.as_secs_f64());
    assert_eq!(status, 0, "{}", guest.console());
    let console = guest.shutdown();
    let report = Report::read(&out);
    eprintln!("{}", report.text);
    let truth = kprobe_hits(&console);
    let ours = report.hits(ksys_write, "window");
    assert_eq!(ours, truth, "plugin against the guest's kprobe_profile");
    assert!(
        truth >= 1002,
        "{truth}: dd's 1000 writes, its summary, the disable"
    );
    let hist = report.hist(ksys_write);
    assert_eq!(hist.get("1"), Some(&1000), "{hist:?}");
    assert_eq!(hist.get(&WINDOW_START.to_string()), Some(&1));
    assert_eq!(report.scalar("rip_mismatch"), 0);
    assert_eq!(report.scalar("reg_missing"), 0);
    assert_eq!(report.scalar("mem_fail"), 0);
    assert_eq!(report.scalar("panics"), 0);
    // Sampling: the guest ran for seconds with a sample armed every 200 ms.
    let samples: u64 = report
        .records("samples")
        .iter()
        .map(|r| r["n"].parse::<u64>().unwrap())
        .sum();
    assert!(
        samples >= 5 && samples <= report.scalar("arms"),
        "{samples} samples"
    );
    assert_eq!(report.scalar("samples_no_rip"), 0);
}
