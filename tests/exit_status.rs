//! The exit statuses the README's "What a run does" states, each checked:
//! the workload's own, 3 for partial results (with the reason as the last
//! line), 1 for an error before probing, 2 for a usage error.

mod support;
use support::*;

#[test]
fn a_failed_workload_with_complete_results_exits_with_its_status() {
    let out = run_bounded(
        vmprobe().args([
            "run",
            "-e",
            "kprobe:ksys_write { @c = count(); }",
            "--",
            "echo x; exit 7",
        ]),
        RUN_LIMIT,
    );
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(7), "{stderr}");
    assert!(!stderr.contains("partial"), "{stderr}");
    assert!(map_value(&text(&out.stdout), "c") > 0);
}

/// Handler errors make the results partial (3), whatever the workload's
/// status, which the last line still gives.
#[test]
fn handler_errors_exit_3_and_say_so_last() {
    let out = run_bounded(
        vmprobe().args([
            "run",
            "-e",
            "kprobe:ksys_write /comm == \"dd\" && arg2 == 1/ { @calls = count(); $z = arg2 - 1; @q = arg0 / $z; }",
            "--",
            "dd if=/dev/zero of=/dev/null bs=1 count=2 2>/dev/null; exit 5",
        ]),
        RUN_LIMIT,
    );
    let stderr = text(&out.stderr);
    assert_partial(&out);
    assert_eq!(map_value(&text(&out.stdout), "calls"), 2, "{stderr}");
    let last = stderr.lines().rfind(|l| !l.is_empty()).unwrap_or("");
    assert_eq!(
        last,
        "vmprobe: partial results (exit status 3): 2 handler errors, and the workload exited with status 5"
    );
}

#[test]
fn usage_errors_exit_2_and_script_errors_1_before_booting() {
    let out = run_bounded(vmprobe().args(["run", "--no-such-option"]), RUN_LIMIT);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    let out = run_bounded(
        vmprobe().args(["run", "-e", "kprobe:ksys_write { @c = ; }", "--", "true"]),
        RUN_LIMIT,
    );
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(!stderr.contains("booting"), "{stderr}");
}

/// Output into a pipe closed early (`| head -1`): no panic, vmprobe ends
/// quietly as other Unix tools do, and the guest is cleaned up.
#[test]
fn output_into_a_closed_pipe_ends_quietly() {
    let mut child = vmprobe()
        .args([
            "run",
            "-e",
            "kprobe:ksys_write { printf(\"write %d\\n\", arg2); }",
            "--",
            "dd if=/dev/zero of=/dev/null bs=1 count=200 2>/dev/null",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    std::io::BufRead::read_line(&mut stdout, &mut first).unwrap();
    assert_eq!(first, "Attaching 1 probe...\n");
    drop(stdout);
    wait_for_exit(&mut child, RUN_LIMIT);
    let out = child.wait_with_output().unwrap();
    let stderr = text(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(
        matches!(out.status.code(), Some(0) | None),
        "{:?}: {stderr}",
        out.status
    );
}
