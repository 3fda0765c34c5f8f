//! Acceptance (d): killing QEMU mid-run ends vmprobe promptly with a clear
//! message and the counts collected so far.

mod support;
use std::time::{Duration, Instant};
use support::*;

/// `vmprobe run --console -e PROGRAM -- WORKLOAD`, its output collected.
fn spawn_run(program: &str, workload: &str) -> (std::process::Child, Collected, Collected) {
    spawn_collected(vmprobe().args(["run", "--console", "-e", program, "--", workload]))
}

#[test]
fn killing_qemu_mid_run_reports_what_was_collected() {
    killing_qemu_mid_run(&["--backend", "gdb"]);
}

/// With the plugin the counts live in QEMU: vmprobe's last copy of them
/// (at most 500 ms old) is what it prints.
#[test]
fn killing_qemu_mid_run_with_the_plugin_reports_its_last_copy() {
    if qemu10().is_none() {
        return;
    }
    plugin_library();
    let stderr = killing_qemu_mid_run(&["--backend", "plugin"]);
    assert!(
        stderr.contains("its maps are as copied"),
        "the age of the maps printed is stated: {stderr}"
    );
}

/// Kills QEMU a few seconds into a run; returns vmprobe's stderr.
fn killing_qemu_mid_run(backend: &[&str]) -> String {
    let (mut child, stdout, stderr) = spawn_collected(
        vmprobe()
            .args(["run", "--console"])
            .args(backend)
            .args(["-e", "kprobe:ksys_write { @writes = count(); }"])
            .args(["--", "while true; do echo x; done"]),
    );
    // Give the guest time to boot and the workload to produce hits. (QEMU
    // is looked for only then: vmprobe first runs `qemu -version`.)
    stderr.wait_for("KASLR slide", RUN_LIMIT);
    std::thread::sleep(Duration::from_secs(3));
    let qemu = qemu_children(child.id());
    assert_eq!(qemu.len(), 1, "one QEMU child: {qemu:?}");
    let qemu = qemu[0];
    let killed = Instant::now();
    std::process::Command::new("kill")
        .args(["-9", &qemu.to_string()])
        .status()
        .unwrap();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            killed.elapsed() < Duration::from_secs(30),
            "vmprobe hung after QEMU died"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let ended_after = killed.elapsed();
    let (stdout, stderr) = (stdout.finish(), stderr.finish());
    assert_eq!(
        status.code(),
        Some(3),
        "a dead VM makes the results partial"
    );
    assert!(
        ended_after < Duration::from_secs(2),
        "vmprobe took {ended_after:?} to notice QEMU died"
    );
    assert!(stderr.contains("the VM went away"), "{stderr}");
    assert!(
        map_value(&stdout, "writes") > 0,
        "counts collected before the kill are printed:\n{stdout}"
    );
    stderr
}

/// Ctrl-C ends a run as it ends bpftrace: probes removed, END run, every
/// map printed, exit status 0, and QEMU gone with vmprobe.
#[test]
fn ctrl_c_runs_end_and_prints_the_maps() {
    let (mut child, stdout, stderr) = spawn_run(
        "kprobe:ksys_write { @writes = count(); } END { printf(\"END ran\\n\"); }",
        "i=0; while true; do i=$((i+1)); echo tick$i; sleep 0.2; done",
    );
    // The workload's ticks reach the console only through probed writes.
    stderr.wait_for("tick3", RUN_LIMIT);
    let qemu = qemu_children(child.id());
    assert_eq!(qemu.len(), 1, "one QEMU child");
    std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(start.elapsed() < RUN_LIMIT, "vmprobe did not end at SIGINT");
        std::thread::sleep(Duration::from_millis(50));
    };
    let (stdout, stderr) = (stdout.finish(), stderr.finish());
    assert!(
        status.success(),
        "Ctrl-C is a normal end: {status:?}\n{stderr}"
    );
    assert!(stdout.contains("END ran\n"), "{stdout}");
    assert!(map_value(&stdout, "writes") >= 3, "{stdout}");
    assert!(
        !std::path::Path::new(&format!("/proc/{}", qemu[0])).exists(),
        "QEMU outlived vmprobe"
    );
}

/// `kill -STOP` on QEMU: vmprobe says so within a second or so, waits
/// `--stall-timeout`, then ends with what was collected and status 3.
#[test]
fn a_stopped_qemu_is_reported_and_ends_the_run_at_the_stall_timeout() {
    let (mut child, stdout, stderr) = spawn_collected(vmprobe().args([
        "run",
        "--stall-timeout",
        "4",
        "-e",
        "kprobe:ksys_write { @writes = count(); }",
        "--",
        "while true; do echo x > /dev/null; done",
    ]));
    stderr.wait_for("KASLR slide", RUN_LIMIT);
    std::thread::sleep(Duration::from_secs(2));
    let qemu = qemu_children(child.id());
    assert_eq!(qemu.len(), 1, "one QEMU child: {qemu:?}");
    let stopped = Instant::now();
    signal(qemu[0], "-STOP");
    stderr.wait_for("is stopped (SIGSTOP?)", Duration::from_secs(5));
    let said_after = stopped.elapsed();
    let status = wait_for_exit(&mut child, Duration::from_secs(30));
    let ended_after = stopped.elapsed();
    signal(qemu[0], "-CONT");
    let (stdout, stderr) = (stdout.finish(), stderr.finish());
    eprintln!("stopped QEMU: said so after {said_after:?}, ended after {ended_after:?}");
    assert!(
        said_after < Duration::from_secs(3),
        "{said_after:?}: {stderr}"
    );
    assert!(
        ended_after >= Duration::from_secs(4) && ended_after < Duration::from_secs(10),
        "--stall-timeout 4 ended the run after {ended_after:?}: {stderr}"
    );
    assert_eq!(status.code(), Some(3), "{stderr}");
    assert!(
        stderr.contains("QEMU stayed stopped for 4 s (--stall-timeout)"),
        "{stderr}"
    );
    assert!(map_value(&stdout, "writes") > 0, "{stdout}");
}

/// SIGSTOP then SIGCONT within the stall timeout: the run goes on and
/// ends as it would have, with the workload's status.
#[test]
fn a_qemu_stopped_then_continued_goes_on() {
    let (mut child, stdout, stderr) = spawn_collected(vmprobe().args([
        "run",
        "--stall-timeout",
        "20",
        "-e",
        "kprobe:ksys_write /comm == \"dd\" && arg2 == 1/ { @writes = count(); }",
        "--",
        "sleep 4; dd if=/dev/zero of=/dev/null bs=1 count=50 2>/dev/null",
    ]));
    stderr.wait_for("KASLR slide", RUN_LIMIT);
    let qemu = qemu_children(child.id());
    assert_eq!(qemu.len(), 1, "one QEMU child: {qemu:?}");
    signal(qemu[0], "-STOP");
    stderr.wait_for("is stopped (SIGSTOP?)", Duration::from_secs(5));
    std::thread::sleep(Duration::from_secs(2));
    signal(qemu[0], "-CONT");
    let status = wait_for_exit(&mut child, RUN_LIMIT);
    let (stdout, stderr) = (stdout.finish(), stderr.finish());
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("QEMU goes on after"), "{stderr}");
    assert_eq!(map_value(&stdout, "writes"), 50, "{stdout}");
}

fn signal(pid: u32, sig: &str) {
    std::process::Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .unwrap();
}
