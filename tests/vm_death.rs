//! Acceptance (d): killing QEMU mid-run ends vmprobe promptly with a clear
//! message and the counts collected so far.

mod support;
use std::process::Stdio;
use std::time::{Duration, Instant};
use support::*;

fn qemu_children(parent: u32) -> Vec<u32> {
    let out = std::process::Command::new("pgrep")
        .args(["-P", &parent.to_string(), "qemu-system"])
        .output()
        .unwrap();
    text(&out.stdout)
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

#[test]
fn killing_qemu_mid_run_reports_what_was_collected() {
    let mut child = vmprobe()
        .args([
            "run",
            "-e",
            "kprobe:ksys_write { @writes = count(); }",
            "--",
            "while true; do echo x; done",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait for the probes to be armed and firing: the banner is on stdout.
    let mut stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        use std::io::Read;
        let mut all = Vec::new();
        let _ = stdout.read_to_end(&mut all);
        all
    });
    let start = Instant::now();
    let qemu = loop {
        if let Some(pid) = qemu_children(child.id()).first() {
            break *pid;
        }
        assert!(start.elapsed() < RUN_LIMIT, "QEMU never started");
        std::thread::sleep(Duration::from_millis(100));
    };
    // Give the guest time to boot and the workload to produce hits.
    let mut stderr = child.stderr.take().unwrap();
    let mut seen = Vec::new();
    {
        use std::io::Read;
        let mut buf = [0u8; 256];
        while !text(&seen).contains("KASLR slide") {
            let n = stderr.read(&mut buf).unwrap();
            assert!(n > 0, "vmprobe ended early: {}", text(&seen));
            seen.extend_from_slice(&buf[..n]);
        }
    }
    std::thread::sleep(Duration::from_secs(3));
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
    let mut rest = Vec::new();
    use std::io::Read;
    let _ = stderr.read_to_end(&mut rest);
    seen.extend_from_slice(&rest);
    let stdout = text(&reader.join().unwrap());
    let stderr = text(&seen);
    assert!(!status.success(), "a dead VM is a failed run");
    assert!(
        ended_after < Duration::from_secs(2),
        "vmprobe took {ended_after:?} to notice QEMU died"
    );
    assert!(stderr.contains("the VM went away"), "{stderr}");
    assert!(
        map_value(&stdout, "writes") > 0,
        "counts collected before the kill are printed:\n{stdout}"
    );
}
