//! What a bpftrace user expects of the command line (issue 16): runs with
//! no workload that trace until Ctrl-C, `exit()` or `--duration`; programs
//! of BEGIN/END/interval probes that run without booting a guest; `#!`
//! scripts; `-o`, `-q`, `-c`, `-l`, `--unsafe`, and `-p`'s errors (the
//! guest-process filter itself is tests/pid_filter.rs). Three tests boot a guest; the rest start no QEMU.

mod support;
use rustix::process::{Pid, Signal};
use std::process::Child;
use std::time::{Duration, Instant};
use support::*;

/// Plenty for a run that boots nothing; a hang detector only.
const NO_BOOT_LIMIT: Duration = Duration::from_secs(30);

/// vmprobe with no QEMU on PATH and an empty cache: a run that tried to
/// boot (or even to read the default guest's image) would fail.
fn vmprobe_without_guest(cache: &std::path::Path) -> std::process::Command {
    let mut cmd = vmprobe();
    cmd.env("PATH", cache).env("XDG_CACHE_HOME", cache);
    cmd
}

/// Waits for `child` while watching that it never starts a QEMU; returns
/// its status and output.
fn wait_never_booting(
    mut child: Child,
    stdout: Collected,
    stderr: Collected,
) -> (Option<i32>, String, String) {
    let start = Instant::now();
    let status = loop {
        assert!(
            qemu_children(child.id()).is_empty(),
            "a QEMU was started:\n{}",
            stderr.text()
        );
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if start.elapsed() > NO_BOOT_LIMIT {
            let _ = child.kill();
            panic!("vmprobe did not end:\n{}\n{}", stdout.text(), stderr.text());
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    (status.code(), stdout.finish(), stderr.finish())
}

fn interrupt(child: &Child) {
    let pid = Pid::from_raw(child.id() as i32).unwrap();
    rustix::process::kill_process(pid, Signal::INT).unwrap();
}

#[test]
fn begin_and_interval_programs_run_at_once_without_a_guest() {
    let empty = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let (child, out, err) = spawn_collected(vmprobe_without_guest(empty.path()).args([
        "run",
        "-e",
        "BEGIN { @h = hist(3); printf(\"hi\\n\"); exit(); }",
    ]));
    let (code, stdout, stderr) = wait_never_booting(child, out, err);
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(
        stdout,
        "Attaching 1 probe...\nhi\n\n\n@h: \n\
         [2, 4)                 1 |@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@|\n\n"
    );
    assert!(stderr.is_empty(), "{stderr}");
    assert!(started.elapsed() < Duration::from_secs(10));

    // interval blocks fire on host timers, END runs, the maps print.
    let (child, out, err) = spawn_collected(vmprobe_without_guest(empty.path()).args([
        "run",
        "-e",
        "interval:ms:50 { @ticks = count(); if (@ticks == 3) { exit(); } } \
         END { printf(\"end after %d\\n\", 3); }",
    ]));
    let (code, stdout, stderr) = wait_never_booting(child, out, err);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.starts_with("Attaching 2 probes...\n"), "{stdout}");
    assert!(stdout.contains("end after 3\n"), "{stdout}");
    assert_eq!(map_value(&stdout, "ticks"), 3, "{stdout}");
}

/// Without exit(), a guest-free program runs until Ctrl-C or --duration,
/// as bpftrace does: END runs, the maps print, status 0.
#[test]
fn ctrl_c_and_duration_end_a_run_without_a_guest() {
    let empty = tempfile::tempdir().unwrap();
    let program = "BEGIN { printf(\"started\\n\"); @a = 1; } END { printf(\"end\\n\"); }";
    let (child, out, err) =
        spawn_collected(vmprobe_without_guest(empty.path()).args(["run", "-e", program]));
    out.wait_for("started\n", NO_BOOT_LIMIT);
    // Still running: nothing ends a BEGIN without exit() but the user.
    std::thread::sleep(Duration::from_millis(300));
    assert!(!out.text().contains("end"), "{}", out.text());
    interrupt(&child);
    let (code, stdout, stderr) = wait_never_booting(child, out, err);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.ends_with("started\nend\n\n\n@a: 1\n"), "{stdout:?}");

    let started = Instant::now();
    let (child, out, err) = spawn_collected(vmprobe_without_guest(empty.path()).args([
        "run",
        "--duration",
        "0.5",
        "-e",
        program,
    ]));
    let (code, stdout, stderr) = wait_never_booting(child, out, err);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(started.elapsed() >= Duration::from_millis(500));
    assert!(stdout.ends_with("started\nend\n\n\n@a: 1\n"), "{stdout:?}");
}

/// `-o FILE` takes the program's output, banner included, as bpftrace's
/// `-o`; `-q` drops the banner.
#[test]
fn output_file_and_quiet() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("out.txt");
    let program = "BEGIN { printf(\"hi\\n\"); @n = 2; exit(); }";
    let run = |extra: &[&str]| {
        let out = run_bounded(
            vmprobe_without_guest(dir.path())
                .arg("run")
                .args(extra)
                .args(["-e", program]),
            NO_BOOT_LIMIT,
        );
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        assert!(out.stderr.is_empty(), "{}", text(&out.stderr));
        text(&out.stdout)
    };
    let all = "Attaching 1 probe...\nhi\n\n\n@n: 2\n";
    assert_eq!(run(&["-o", file.to_str().unwrap()]), "");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), all);
    assert_eq!(run(&["-q"]), "hi\n\n\n@n: 2\n");
    assert_eq!(run(&["-q", "-o", file.to_str().unwrap()]), "");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "hi\n\n\n@n: 2\n");
    // A file that cannot be created is an error before anything runs.
    let out = run_bounded(
        vmprobe().args(["run", "-o", "/nonexistent/dir/out", "-e", program]),
        NO_BOOT_LIMIT,
    );
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        text(&out.stderr),
        "vmprobe: -o /nonexistent/dir/out: No such file or directory (os error 2)\n"
    );
}

/// A script starting with `#!` runs, and the line numbers of its errors
/// count the `#!` line.
#[test]
fn shebang_scripts_run_and_errors_count_the_first_line() {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("hello.bt");
    std::fs::write(
        &script,
        "#!/usr/bin/env vmprobe\nBEGIN { printf(\"from a file\\n\"); exit(); }\n",
    )
    .unwrap();
    let out = run_bounded(
        vmprobe_without_guest(dir.path()).args(["run", "-q", script.to_str().unwrap()]),
        NO_BOOT_LIMIT,
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "from a file\n\n\n");

    std::fs::write(&script, "#!/usr/bin/bpftrace\n\nBEGIN {\n  @x = foo;\n}\n").unwrap();
    let out = run_bounded(
        vmprobe_without_guest(dir.path()).args(["run", script.to_str().unwrap()]),
        NO_BOOT_LIMIT,
    );
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("--> {}:4:8\n", script.display())),
        "{stderr}"
    );
    assert!(stderr.contains("4 |   @x = foo;\n"), "{stderr}");
}

/// `#include` brings the host header's integer macros, as bpftrace gets
/// them from clang; a missing header is named when a name stays unknown.
#[test]
fn includes_bring_host_header_macros() {
    if !std::path::Path::new("/usr/include/x86_64-linux-gnu/sys/socket.h").is_file() {
        eprintln!("no libc6-dev headers: skipping");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let run = |program: &str| {
        run_bounded(
            vmprobe_without_guest(dir.path()).args(["run", "-q", "-e", program]),
            NO_BOOT_LIMIT,
        )
    };
    let out = run("#include <sys/socket.h>\n#include <netinet/in.h>\n\
         BEGIN { printf(\"%d %d %d\\n\", AF_INET, AF_INET6, IPV6_V6ONLY); exit(); }");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "2 10 26\n\n\n");
    // ((in_addr_t) 0x7f000001) is a cast, not an integer constant.
    let out = run("#include <netinet/in.h>\nBEGIN { printf(\"%d\\n\", INADDR_LOOPBACK); exit(); }");
    let err = text(&out.stderr);
    assert!(
        err.contains("unknown identifier 'INADDR_LOOPBACK': /usr/include/netinet/in.h defines it, but not as an integer constant"),
        "{err}"
    );
    let out = run("#include <net/sock.h>\nBEGIN { printf(\"%d\\n\", AF_INET); exit(); }");
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("unknown identifier 'AF_INET'")
            && err.contains("<net/sock.h> was not found in /usr/local/include, /usr/include, /usr/include/x86_64-linux-gnu"),
        "{err}"
    );
}

/// Positional parameters after FILE (or after -e PROGRAM), as bpftrace's;
/// and the C preprocessor lines of bpftrace's tools.
#[test]
fn positional_parameters_and_preprocessor_lines() {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("params.bt");
    std::fs::write(
        &script,
        "#!/usr/bin/env bpftrace\n#include <linux/sched.h>\n#ifndef BPFTRACE_HAVE_BTF\n\
         BEGIN { printf(\"no BTF\\n\"); }\n#else\n#define TIMES 3\n#endif\n\
         BEGIN { printf(\"%d %s %d %d %s| %d\\n\", $1 * TIMES, str($2), $#, $3, str($3), 1e6 + 1_000); exit(); }\n",
    )
    .unwrap();
    let out = run_bounded(
        vmprobe_without_guest(dir.path()).args([
            "run",
            "-q",
            script.to_str().unwrap(),
            "7",
            "word",
        ]),
        NO_BOOT_LIMIT,
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "21 word 2 0 | 1001000\n\n\n");
    let out = run_bounded(
        vmprobe_without_guest(dir.path()).args([
            "run",
            "-q",
            "-e",
            "BEGIN { printf(\"%s %d\\n\", str($1), $#); exit(); }",
            "one",
            "two",
        ]),
        NO_BOOT_LIMIT,
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "one 2\n\n\n");
}

/// The flags that have no meaning for a VM say so; `-c` and `-- CMD` are
/// one workload; `-l` lists as `vmprobe list` does.
#[test]
fn bpftrace_flags_without_a_meaning_here_say_so() {
    let empty = tempfile::tempdir().unwrap();
    // -p names a guest process: `run` has none yet, `attach` needs one VM.
    let one_error = |args: &[&str], needles: &[&str]| {
        let out = run_bounded(vmprobe().args(args), NO_BOOT_LIMIT);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(needles.iter().all(|n| stderr.contains(n)), "{stderr}");
    };
    one_error(
        &["run", "-p", "1234", "-e", "BEGIN { exit(); }"],
        &[
            "vmprobe: -p 1234: `vmprobe run` boots a fresh guest",
            "/pid == N/",
            "vmprobe attach --vm",
        ],
    );
    one_error(
        &[
            "attach",
            "--vm",
            "vm0=gdb:127.0.0.1:1",
            "--vm",
            "vm1=gdb:127.0.0.1:2",
            "-p",
            "1234",
            "-e",
            "kprobe:vfs_read { }",
        ],
        &["vmprobe: -p 1234: a pid names a process of one guest, and 2 VMs were given"],
    );
    // Not a positive pid: a usage error naming the value.
    for bad in ["0", "abc", "1.5", "99999999999", ""] {
        for command in [&["run"][..], &["attach", "--vm", "vm0=gdb:127.0.0.1:1"]] {
            let out = run_bounded(
                vmprobe().args(command).args(["-p", bad, "-e", "BEGIN { }"]),
                NO_BOOT_LIMIT,
            );
            let stderr = text(&out.stderr);
            assert_eq!(
                out.status.code(),
                Some(2),
                "{command:?} -p {bad:?}: {stderr}"
            );
            let first = stderr.lines().next().unwrap_or("");
            assert!(
                first.contains("-p <PID>")
                    && first.contains(&format!("'{bad}' is not a process id")),
                "{stderr}"
            );
        }
    }

    let out = run_bounded(
        vmprobe_without_guest(empty.path()).args([
            "run",
            "--unsafe",
            "-e",
            "BEGIN { printf(\"ran\\n\"); exit(); }",
        ]),
        NO_BOOT_LIMIT,
    );
    assert_eq!(out.status.code(), Some(0));
    assert!(text(&out.stdout).contains("ran\n"));
    assert!(
        text(&out.stderr).starts_with("vmprobe: --unsafe: nothing to allow"),
        "{}",
        text(&out.stderr)
    );

    // -c and a workload after -- are one thing: not both.
    let out = run_bounded(
        vmprobe().args(["run", "-e", "BEGIN { }", "-c", "true", "--", "false"]),
        NO_BOOT_LIMIT,
    );
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));

    // -l PATTERN, -lv, and -l with a program: its attach points.
    default_guest();
    let list = |args: &[&str]| {
        let out = run_bounded(vmprobe().args(args), NO_BOOT_LIMIT);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        text(&out.stdout)
    };
    assert_eq!(
        list(&["run", "-l", "interval:*"]),
        "interval:s:N\ninterval:ms:N\ninterval:us:N\ninterval:hz:N\n"
    );
    assert_eq!(
        list(&["run", "-l", "kprobe:vfs_read"]),
        list(&["list", "kprobe:vfs_read"])
    );
    assert!(
        list(&["run", "-lv", "kprobe:vfs_read"]).contains("    size_t count\n"),
        "-lv lists parameters"
    );
    let listed = list(&["run", "-l", "-e", "kprobe:vfs_rea* { } BEGIN { }"]);
    assert!(
        listed.contains("kprobe:vfs_read\n") && listed.ends_with("BEGIN\n"),
        "{listed}"
    );
}

// The tests below boot a guest.

/// No workload: the guest is traced until Ctrl-C, which runs END and prints
/// the maps, status 0. A program of interval probes that reads the guest
/// (`comm`) boots one. With -q nothing of vmprobe's progress shows; with
/// -o the output goes to the file.
#[test]
fn an_open_ended_run_traces_the_guest_until_ctrl_c() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("out.txt");
    let (child, out, err) = spawn_collected(vmprobe().args([
        "run",
        "-q",
        "-o",
        file.to_str().unwrap(),
        "-e",
        "interval:ms:200 { @[comm] = count(); printf(\"tick\\n\"); } END { printf(\"end\\n\"); }",
    ]));
    let start = Instant::now();
    let mut booted = false;
    loop {
        booted |= !qemu_children(child.id()).is_empty();
        if std::fs::read_to_string(&file).is_ok_and(|t| t.contains("tick\ntick\n")) {
            break;
        }
        assert!(start.elapsed() < RUN_LIMIT, "no ticks:\n{}", err.text());
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(booted, "no QEMU was started");
    interrupt(&child);
    let mut child = child;
    let status = wait_for_exit(&mut child, RUN_LIMIT);
    let (stdout, stderr) = (out.finish(), err.finish());
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert_eq!(stdout, "", "-o takes all of the program's output");
    assert!(
        !stderr.contains("booting")
            && !stderr.contains(" up in ")
            && !stderr.contains("tracing until"),
        "-q leaves out progress:\n{stderr}"
    );
    let written = std::fs::read_to_string(&file).unwrap();
    assert!(!written.contains("Attaching"), "{written}");
    assert!(written.contains("\nend\n\n\n@["), "{written}");
}

/// `-c CMD` is the workload: it runs in the guest even for a program of
/// BEGIN/END only (as bpftrace's -c runs CMD), and its exit status is the
/// run's.
#[test]
fn dash_c_runs_the_workload_even_for_begin_and_end_only() {
    let (mut child, out, err) = spawn_collected(vmprobe().args([
        "run",
        "-e",
        "BEGIN { printf(\"begin\\n\"); } END { printf(\"end\\n\"); }",
        "-c",
        "echo from the guest; exit 7",
        "--console",
    ]));
    let start = Instant::now();
    let mut booted = false;
    let status = loop {
        booted |= !qemu_children(child.id()).is_empty();
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(start.elapsed() < RUN_LIMIT, "{}", err.text());
        std::thread::sleep(Duration::from_millis(50));
    };
    let (stdout, stderr) = (out.finish(), err.finish());
    assert!(booted, "no QEMU was started");
    assert_eq!(status.code(), Some(7), "{stderr}");
    assert!(stderr.contains("from the guest"), "{stderr}");
    assert_eq!(stdout, "Attaching 2 probes...\nbegin\nend\n\n\n");
}

/// `--duration` ends an open-ended run by itself; handler errors still make
/// the results partial (status 3), with no workload status to add.
#[test]
fn duration_ends_an_open_ended_run_and_errors_make_it_partial() {
    let out = run_bounded(
        vmprobe().args([
            "run",
            "--duration",
            "3",
            "-e",
            "interval:ms:250 { @[comm] = count(); @z = 0; @q = 1 / @z; }",
        ]),
        RUN_LIMIT,
    );
    let stderr = text(&out.stderr);
    assert_partial(&out);
    assert!(
        stderr.contains("vmprobe: no workload: tracing until Ctrl-C, exit() or --duration"),
        "{stderr}"
    );
    let last = stderr.lines().rfind(|l| !l.is_empty()).unwrap_or("");
    assert!(
        last.starts_with("vmprobe: partial results (exit status 3): ")
            && last.ends_with(" handler errors"),
        "{stderr}"
    );
    assert!(text(&out.stdout).contains("\n@["), "{}", text(&out.stdout));
}
