//! Several guests in one run (issue 5): three default guests run the same
//! workload with different iteration counts; one script counts per guest
//! (`guest` builtin), each count equal to that guest kernel's own count. One
//! guest is killed mid-run: the others finish and report.

mod support;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::*;

#[test]
fn three_guests_counted_apart_and_one_killed() {
    let counts = [60, 120, 4000];
    // vm2 first sleeps, so that it is still running when it is killed: its
    // 4000 writes alone take well under the second the test waits inside
    // QEMU.
    let dd = format!(
        "case $VMPROBE_GUEST_INDEX in 0) n={};; 1) n={};; *) n={}; sleep 60;; esac; \
         dd if=/dev/zero of=/dev/null bs=1 count=$n",
        counts[0], counts[1], counts[2]
    );
    let workload = ground_truth_workload(&dd);
    let program = format!(
        "kprobe:ksys_write /arg2 == {WINDOW_START}/ {{ @on[guest] = 1; }}\n\
         kprobe:ksys_write /arg2 == {WINDOW_END}/ {{ @on[guest] = 0; }}\n\
         kprobe:ksys_write /arg2 == 1 && @on[guest] == 1/ {{ @writes[guest] = count(); }}\n\
         END {{ clear(@on); }}"
    );
    let mut child = vmprobe()
        .args([
            "run",
            "--guests",
            "3",
            "--console",
            "-e",
            &program,
            "--",
            &workload,
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let me = child.id();
    let stderr_pipe = child.stderr.take().unwrap();
    let seen = Arc::new(Mutex::new(String::new()));
    let sink = seen.clone();
    let reader = std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr_pipe)
            .lines()
            .map_while(Result::ok)
        {
            let mut s = sink.lock().unwrap();
            s.push_str(&line);
            s.push('\n');
        }
    });
    // Guests are launched in order, so the newest QEMU child is vm2. Kill
    // it once vm0 and vm1 have printed their guest kernel's counts (their
    // workloads are done); vm2's is far longer.
    let start = Instant::now();
    let mut killed = false;
    while child.try_wait().unwrap().is_none() {
        assert!(start.elapsed() < RUN_LIMIT, "vmprobe did not finish");
        let others_done = {
            let s = seen.lock().unwrap();
            s.contains("vm0: GT ") && s.contains("vm1: GT ")
        };
        if !killed && others_done {
            std::thread::sleep(Duration::from_secs(1));
            let out = std::process::Command::new("pgrep")
                .args(["-n", "-P", &me.to_string(), "qemu-system"])
                .output()
                .unwrap();
            let pid = text(&out.stdout).trim().to_string();
            assert!(!pid.is_empty(), "no QEMU child to kill");
            std::process::Command::new("kill")
                .args(["-9", &pid])
                .status()
                .unwrap();
            killed = true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = child.wait_with_output().unwrap();
    reader.join().unwrap();
    let stdout = text(&out.stdout);
    let stderr = seen.lock().unwrap().clone();
    assert!(killed, "the run ended before vm2 was killed:\n{stderr}");
    assert!(!out.status.success(), "a guest died: the run must fail");
    assert!(stderr.contains("vm2: the VM went away"), "{stderr}");
    for (i, &n) in counts[..2].iter().enumerate() {
        let name = format!("vm{i}");
        let console: String = stderr
            .lines()
            .filter_map(|l| l.strip_prefix(&format!("{name}: ")))
            .map(|l| format!("{l}\n"))
            .collect();
        let theirs = ground_truth_hits(&console);
        assert_eq!(theirs, n, "{name} made {n} one-byte writes");
        let ours = stdout
            .lines()
            .find_map(|l| l.strip_prefix(&format!("@writes[{name}]: ")))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or_else(|| panic!("no count for {name}:\n{stdout}"));
        assert_eq!(
            ours, theirs,
            "{name}: vmprobe and the guest kernel disagree"
        );
    }
}

/// A per-guest probe (`vm1:kprobe:F`) is armed in that guest only: two
/// guests run the same workload with different counts; vm1's count equals
/// vm1's guest kernel's own, and vm0 never stops for the probe (0 hits in
/// its `--stats` line), on both backends.
#[test]
fn a_per_guest_probe_is_armed_in_that_guest_only() {
    let mut backends: Vec<Vec<String>> = vec![vec!["--backend".into(), "gdb".into()]];
    match qemu10() {
        Some(q) => backends.push(vec![
            "--backend".into(),
            "plugin".into(),
            "--qemu".into(),
            q.display().to_string(),
        ]),
        None => eprintln!("no QEMU 10: the plugin backend is not checked"),
    }
    let counts = [300, 120];
    let dd = format!(
        "case $VMPROBE_GUEST_INDEX in 0) n={};; *) n={};; esac; \
         dd if=/dev/zero of=/dev/null bs=1 count=$n",
        counts[0], counts[1]
    );
    let workload = ground_truth_workload(&dd);
    let program = windowed_count_program()
        .replace("kprobe:", "vm1:kprobe:")
        .replace("@writes = count()", "@writes[guest] = count()");
    assert_eq!(program.matches("vm1:kprobe:").count(), 3, "{program}");
    for backend in backends {
        let out = run_bounded(
            vmprobe()
                .args(["run", "--guests", "2", "--console", "--stats"])
                .args(&backend)
                .args(["-e", &program, "--", &workload]),
            RUN_LIMIT,
        );
        let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
        assert!(out.status.success(), "{backend:?}: {stderr}");
        let console = |name: &str| -> String {
            stderr
                .lines()
                .filter_map(|l| l.strip_prefix(&format!("{name}: ")))
                .map(|l| format!("{l}\n"))
                .collect()
        };
        let theirs = ground_truth_hits(&console("vm1"));
        assert_eq!(theirs, counts[1], "vm1's own count");
        // vm0 did its writes too, unseen.
        assert_eq!(ground_truth_hits(&console("vm0")), counts[0]);
        let ours = stdout
            .lines()
            .find_map(|l| l.strip_prefix("@writes[vm1]: "))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or_else(|| panic!("{backend:?}: no count for vm1:\n{stdout}"));
        assert_eq!(
            ours, theirs,
            "{backend:?}: vmprobe and vm1's kernel disagree"
        );
        assert!(
            !stdout.contains("vm0"),
            "{backend:?}: vm0 counted:\n{stdout}"
        );
        let hits = |name: &str| -> u64 {
            stderr
                .lines()
                .find_map(|l| l.strip_prefix(&format!("vmprobe: stats: {name}: ")))
                .and_then(|l| l.split(", ").find_map(|f| f.strip_suffix(" hits")))
                .and_then(|h| h.parse().ok())
                .unwrap_or_else(|| panic!("{backend:?}: no stats for {name}:\n{stderr}"))
        };
        assert_eq!(hits("vm0"), 0, "{backend:?}: vm0 stopped for vm1's probe");
        // Every ksys_write of vm1 from arming to detach: at least its own.
        assert!(hits("vm1") >= theirs + 2, "{backend:?}: {}", hits("vm1"));
    }
}
