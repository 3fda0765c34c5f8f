//! kretprobe: the return values vmprobe sees equal the ones the guest
//! kernel's own kretprobe event records for the same window, call for call,
//! and every entry seen is matched by one return.

mod support;
use support::*;

#[test]
fn return_values_equal_guest_kretprobe_event() {
    let workload = ground_truth_return_workload(
        "dd if=/dev/zero of=/dev/null bs=1 count=60 2>/dev/null && \
         dd if=/dev/zero of=/dev/null bs=7 count=25 2>/dev/null",
    );
    let program = format!(
        "kretprobe:ksys_write /retval == {WINDOW_START}/ {{ @on = sum(1); }}\n\
         kretprobe:ksys_write /retval == {WINDOW_END}/ {{ @on = sum(-1); }}\n\
         kretprobe:ksys_write /@on == 1 && retval != {WINDOW_START}/ {{ @ret[retval] = count(); }}\n\
         kprobe:ksys_write {{ @calls = count(); }}\n\
         kretprobe:ksys_write {{ @returns = count(); }}\n\
         END {{ clear(@on); }}"
    );
    let out = run_bounded(
        vmprobe().args([
            "run",
            "--console",
            "--stats",
            "-e",
            &program,
            "--",
            &workload,
        ]),
        RUN_LIMIT,
    );
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "vmprobe failed: {stderr}");
    let ours = keyed_map(&stdout, "ret");
    let theirs = ground_truth_returns(&stderr);
    assert_eq!(
        ours, theirs,
        "vmprobe's return values differ from the guest's\n{stdout}"
    );
    assert_eq!(theirs.get(&1), Some(&60), "60 one-byte writes: {theirs:?}");
    assert_eq!(
        theirs.get(&7),
        Some(&25),
        "25 seven-byte writes: {theirs:?}"
    );
    // Calls in flight at the end (none here: the shell is between writes)
    // would make these differ; every call seen returned.
    assert_eq!(map_value(&stdout, "calls"), map_value(&stdout, "returns"));
}

/// The VProbes latency pattern: entry time per thread, a histogram at
/// return. Its count equals the guest kernel's own count of dd's vfs_read
/// calls (a kprobe event filtered by comm).
#[test]
fn vfs_read_latency_histogram_counts_every_call() {
    let program = r#"
kprobe:vfs_read /comm == "dd"/ { @start[tid] = nsecs; }
kretprobe:vfs_read /comm == "dd" && @start[tid] != 0/ {
    @latency_ns = hist(nsecs - @start[tid]);
    delete(@start[tid]);
    @reads = count();
}
"#;
    let workload = "cd /sys/kernel/tracing && echo 'p:gv vfs_read' > kprobe_events && \
        echo 'comm == \"dd\"' > events/kprobes/gv/filter && echo 1 > events/kprobes/gv/enable && \
        dd if=/dev/zero of=/dev/null bs=1 count=80 2>/dev/null; \
        echo 0 > events/kprobes/gv/enable; echo GTREADS $(grep -c 'gv:' trace)";
    let out = run_bounded(
        vmprobe().args(["run", "--console", "-e", program, "--", workload]),
        RUN_LIMIT,
    );
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "vmprobe failed: {stderr}");
    let theirs: u64 = stderr
        .lines()
        .find_map(|l| l.split("GTREADS ").nth(1))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no count from the guest: {stderr}"));
    assert!(theirs >= 80, "dd read 80 times: {theirs}");
    assert_eq!(map_value(&stdout, "reads"), theirs, "{stdout}");
    assert!(stdout.contains("@latency_ns:"), "{stdout}");
}
