//! Bad input: each gives a one-line error naming the problem, a non-zero
//! exit, no panic, and no QEMU left behind. None of these boot a guest.
//!
//! Long file: one test per kind of bad input, all judged by the same
//! helpers (one error line, its line:column, nothing booted).

mod support;
use std::path::Path;
use std::time::Duration;
use support::*;

const LIMIT: Duration = Duration::from_secs(120);

fn fails_with(args: &[&str], env: &[(&str, &str)], needle: &str) -> String {
    let mut cmd = vmprobe();
    cmd.args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = run_bounded(&mut cmd, LIMIT);
    let stderr = text(&out.stderr);
    assert!(!out.status.success(), "expected failure for {args:?}");
    assert!(stderr.contains(needle), "expected {needle:?} in:\n{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    stderr
}

/// The error is one line, the last, and nothing before it is an error
/// (earlier lines may report progress such as "booting").
fn last_line_is_one_error(stderr: &str, needle: &str) {
    let last = stderr.lines().rfind(|l| !l.trim().is_empty()).unwrap_or("");
    assert!(
        last.starts_with("vmprobe: ") && last.contains(needle),
        "last line should name the problem:\n{stderr}"
    );
    let naming = stderr.lines().filter(|l| l.contains(needle)).count();
    assert_eq!(naming, 1, "the problem is reported once:\n{stderr}");
}

#[test]
fn unknown_symbol_is_reported_before_booting() {
    let e = fails_with(
        &[
            "run",
            "-e",
            "kprobe:no_such_function_xyz { @c = count(); }",
            "--",
            "true",
        ],
        &[],
        "unknown kernel symbol 'no_such_function_xyz'",
    );
    // A compile error's form: at its line:column, with a caret line.
    assert!(e.contains(" --> stdin:1:1\n"), "{e}");
    assert!(e.ends_with("^^^^^^^^^^^^^^^^^^^^^^^^^^^\n"), "{e:?}");
    let naming = e
        .lines()
        .filter(|l| l.contains("unknown kernel symbol"))
        .count();
    assert_eq!(naming, 1, "reported once:\n{e}");
    assert!(!e.contains("booting"), "must fail before booting:\n{e}");
    // A watchpoint's symbol too, at its probe's place.
    let e = fails_with(
        &[
            "run",
            "-e",
            "BEGIN { }\nwatchpoint:no_such_var_xyz:8:w { @c = count(); }",
            "--",
            "true",
        ],
        &[],
        "unknown kernel symbol 'no_such_var_xyz' in probe watchpoint:no_such_var_xyz:8:w",
    );
    assert!(e.contains(" --> stdin:2:1\n"), "{e}");
    assert!(!e.contains("booting"), "must fail before booting:\n{e}");
}

/// What constants prove is an error before booting, at its line:column: a
/// loop that cannot end, a division or modulo by zero.
#[test]
fn constant_errors_are_diagnostics_before_booting() {
    for (program, says, at) in [
        ("BEGIN { while(1){} }", "this loop never ends", "stdin:1:9"),
        ("BEGIN {\n  $x = 1/0;\n}", "division by zero", "stdin:2:10"),
        (
            "kprobe:ksys_write { @m[arg0 % (4 - 4)] = count(); }",
            "modulo by zero",
            "stdin:1:31",
        ),
    ] {
        let e = fails_with(&["run", "-e", program, "--", "true"], &[], says);
        assert!(e.contains(at), "{program}: {e}");
        assert!(!e.contains("booting"), "{program}: {e}");
    }
}

/// A NUL in a script is named, not echoed raw into the terminal; a script
/// that is not UTF-8 gives the place of its first bad byte.
#[test]
fn unprintable_and_non_utf8_scripts_are_named_with_their_place() {
    let dir = tempfile::tempdir().unwrap();
    let nul = dir.path().join("nul.bt");
    std::fs::write(&nul, "BEGIN { @x = 1 \0 }").unwrap();
    let e = fails_with(
        &["run", nul.to_str().unwrap(), "--", "true"],
        &[],
        "unexpected character '\\0'",
    );
    assert!(!e.contains('\0'), "{e:?}");
    assert!(e.contains("1 | BEGIN { @x = 1 \u{2400} }\n"), "{e}");
    let path = dir.path().join("latin1.bt");
    std::fs::write(&path, b"BEGIN {\n  printf(\"caf\xe9\");\n}").unwrap();
    let e = fails_with(
        &["run", path.to_str().unwrap(), "--", "true"],
        &[],
        "not UTF-8",
    );
    last_line_is_one_error(
        &e,
        "latin1.bt:2:14: the script is not UTF-8 text (byte offset 21)",
    );
}

#[test]
fn syntax_error_points_at_line_and_column() {
    let e = fails_with(
        &[
            "run",
            "-e",
            "kprobe:ksys_write {\n  @c = count(;\n}",
            "--",
            "true",
        ],
        &[],
        "stdin:2:",
    );
    assert!(e.contains('^'), "caret line expected:\n{e}");
}

#[test]
fn non_kernel_image_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk.img");
    std::fs::write(&junk, b"this is not a kernel image at all\n").unwrap();
    let e = fails_with(
        &[
            "run",
            "--kernel",
            junk.to_str().unwrap(),
            "-e",
            "kprobe:ksys_write { @c = count(); }",
            "--",
            "true",
        ],
        &[],
        "junk.img",
    );
    last_line_is_one_error(&e, "junk.img");
}

/// An empty file, random bytes and a bzImage cut short as `--kernel`, and
/// garbage as `--symbols`: one error naming the file and what is wrong,
/// before booting.
#[test]
fn empty_random_and_truncated_images_are_one_error_before_booting() {
    let dir = tempfile::tempdir().unwrap();
    let image = std::fs::read(default_guest().kernel).unwrap();
    // Bytes that are the same on every run, as random as /dev/urandom's.
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let random: Vec<u8> = (0..100_000)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    let cases: [(&str, &[u8], &str, &str); 4] = [
        ("empty.img", b"", "--kernel", "not a Linux kernel image"),
        (
            "random.img",
            &random,
            "--kernel",
            "not a Linux kernel image",
        ),
        (
            "cut.img",
            &image[..image.len() / 2],
            "--kernel",
            "could not be decompressed",
        ),
        (
            "garbage.map",
            &random[..5000],
            "--symbols",
            "not a Linux kernel image",
        ),
    ];
    for (name, bytes, flag, says) in cases {
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        let e = fails_with(
            &[
                "run",
                flag,
                path.to_str().unwrap(),
                "-e",
                "kprobe:ksys_write { @c = count(); }",
                "--",
                "true",
            ],
            &[],
            says,
        );
        last_line_is_one_error(&e, name);
        assert!(!e.contains("booting"), "{name}: {e}");
    }
}

#[test]
fn unreadable_image_is_rejected() {
    let e = fails_with(
        &[
            "run",
            "--kernel",
            "/nonexistent/vmlinuz",
            "-e",
            "BEGIN { exit(); }",
            "--",
            "true",
        ],
        &[],
        "/nonexistent/vmlinuz",
    );
    last_line_is_one_error(&e, "/nonexistent/vmlinuz");
}

#[test]
fn missing_qemu_says_what_to_install() {
    // With the default guest in place and an empty PATH, only QEMU is missing.
    default_guest();
    let dir = tempfile::tempdir().unwrap();
    let e = fails_with(
        &[
            "run",
            "-e",
            "kprobe:ksys_write { @c = count(); }",
            "--",
            "true",
        ],
        &[("PATH", dir.path().to_str().unwrap())],
        "qemu-system-x86_64 not found",
    );
    assert!(e.contains("apt-get install qemu-system-x86"), "{e}");
    last_line_is_one_error(&e, "qemu-system-x86_64 not found");
}

/// (No workload is no error: the run traces until Ctrl-C, as bpftrace
/// does; tests/bpftrace_cli.rs checks it.)
#[test]
fn missing_program_is_an_error() {
    fails_with(&["run", "--", "true"], &[], "no program");
    fails_with(&["run", "-c", "true"], &[], "no program");
}

/// Guest state where no vCPU stops for the probe (BEGIN, END, a VMM event,
/// a host tracepoint) is refused at its use before anything boots or is
/// attached, instead of failing at each hit.
#[test]
fn guest_state_where_no_vcpu_stops_is_refused_before_booting() {
    let e = fails_with(
        &["run", "-e", "BEGIN { printf(\"%s\\n\", comm); exit(); }"],
        &[],
        "comm reads guest state, which BEGIN and END do not have",
    );
    assert!(e.contains("stdin:1:24"), "line:col of the use: {e}");
    assert!(!e.contains("booting"), "nothing booted: {e}");
    let e = fails_with(
        &[
            "run",
            "-e",
            "vmm:serial_write { @[kstack] = count(); }",
            "--",
            "true",
        ],
        &[],
        "kstack reads guest state, which a VMM event does not have",
    );
    assert!(e.contains("stdin:1:22"), "{e}");
    assert!(!e.contains("booting"), "nothing booted: {e}");
    // attach refuses before it connects: the VM named does not exist.
    let e = fails_with(
        &[
            "attach",
            "--vm",
            "x=gdb:127.0.0.1:1",
            "-e",
            "host:tracepoint:kvm:kvm_exit { @[pid] = count(); }",
        ],
        &[],
        "pid reads guest state, which a host tracepoint does not have",
    );
    assert!(!e.contains("connect"), "nothing attached: {e}");
}

#[test]
fn unknown_kaddr_symbol_is_a_diagnostic_before_booting() {
    let e = fails_with(
        &[
            "run",
            "-e",
            "BEGIN { printf(\"%x\\n\", kaddr(\"no_such_symbol_xyz\")); exit(); }",
            "--",
            "true",
        ],
        &[],
        "unknown kernel symbol",
    );
    assert!(e.contains("1:"), "line:col of the call: {e}");
    assert!(!e.contains("booting"), "nothing booted: {e}");
}

#[test]
fn bad_record_and_attach_arguments() {
    fails_with(
        &[
            "record",
            "-o",
            "/tmp/x",
            "--ring",
            "1X",
            "kprobe:ksys_write",
            "--",
            "true",
        ],
        &[],
        "'1X' is not a size",
    );
    let e = fails_with(
        &[
            "record",
            "-o",
            "/tmp/x",
            "ksys_write",
            "vfs_read",
            "--",
            "true",
        ],
        &[],
        "is not a probe",
    );
    last_line_is_one_error(&e, "is not a probe");
    fails_with(
        &[
            "attach",
            "--vm",
            "vm0=gdb:127.0.0.1:notaport",
            "-e",
            "BEGIN { exit(); }",
        ],
        &[],
        "not a TCP port",
    );
    let e = fails_with(
        &[
            "record",
            "--vm",
            "vm0=gdb:unix:/nonexistent/gdb.sock",
            "-o",
            "/tmp/x",
            "kprobe:ksys_write",
            "--",
            "true",
        ],
        &[],
        "--vm records a running VM: it takes no workload",
    );
    last_line_is_one_error(&e, "takes no workload");
    // Durations a `Duration` cannot hold are refused by name, not a panic.
    for (command, value) in [
        ("attach", "--duration=-1"),
        ("attach", "--duration=1e300"),
        ("attach", "--duration=nan"),
        ("attach", "--stall-timeout=inf"),
        ("record", "--duration=1e300"),
    ] {
        let mut args = vec![command, "--vm", "vm0=gdb:127.0.0.1:1", value];
        if command == "record" {
            args.extend(["-o", "/tmp/x"]);
        }
        args.extend(["-e", "kprobe:ksys_write {}"]);
        fails_with(&args, &[], "a number of seconds above 0");
    }
}

/// A field the event does not declare is an error before booting, naming
/// the fields it has: QEMU's declaration for `vmm:` events, the host's
/// tracefs format for `host:tracepoint:` events.
#[test]
fn unknown_event_field_is_a_diagnostic_before_booting() {
    let e = fails_with(
        &[
            "run",
            "-e",
            "vmm:serial_write { @[args.val] = count(); }",
            "--",
            "true",
        ],
        &[],
        "'vmm:serial_write' has no field 'val' (fields: addr, value)",
    );
    assert!(e.contains("stdin:1:22"), "{e}");
    assert!(!e.contains("booting"), "must fail before booting:\n{e}");
    let format = "/sys/kernel/tracing/events/sched/sched_switch/format";
    if !std::path::Path::new(format).exists() {
        eprintln!("no {format}: tracepoint part skipped");
        return;
    }
    fails_with(
        &[
            "run",
            "-e",
            "host:tracepoint:sched:sched_switch { @[args.next_cmm] = count(); }",
            "--",
            "true",
        ],
        &[],
        "'host:tracepoint:sched:sched_switch' has no field 'next_cmm' (fields: prev_comm, prev_pid",
    );
}

#[test]
fn bad_disk_arguments() {
    let prog = "kprobe:ksys_write { @c = count(); }";
    let e = fails_with(
        &[
            "run",
            "--disk",
            "/nonexistent/disk.img",
            "-e",
            prog,
            "--",
            "true",
        ],
        &[],
        "--disk /nonexistent/disk.img",
    );
    last_line_is_one_error(&e, "/nonexistent/disk.img");
    fails_with(
        &[
            "run",
            "--disk",
            "/dev/null",
            "--guests",
            "2",
            "-e",
            prog,
            "--",
            "true",
        ],
        &[],
        "several guests (--guests) cannot share it",
    );
}

/// `F+OFFSET` past the end of F is refused before booting, as bpftrace does.
#[test]
fn kprobe_offset_past_the_function_is_refused_before_booting() {
    let e = fails_with(
        &[
            "run",
            "-e",
            "kprobe:vfs_read+1000000 { @c = count(); }",
            "--",
            "true",
        ],
        &[],
        "kprobe:vfs_read+1000000: offset 1000000 is past the end of the function",
    );
    assert!(!e.contains("booting"), "must fail before booting:\n{e}");
}

/// 100,000-link chains (up to 800 KB of script), which aborted vmprobe with
/// a stack overflow, are one diagnostic with its line:column and exit 1,
/// before anything boots.
#[test]
fn long_operator_and_member_chains_are_a_diagnostic_before_booting() {
    let dir = tempfile::tempdir().unwrap();
    let limit = format!(
        "expression nested too deeply (more than {} levels)",
        probe_lang::parser::MAX_NESTING
    );
    let scripts = [
        (
            "plus.bt",
            format!("BEGIN {{ $x = 1{}; }}", "+1".repeat(100_000)),
        ),
        (
            "arrow.bt",
            format!(
                "kprobe:ksys_write {{ $t = curtask{}->pid; }}",
                "->parent".repeat(100_000)
            ),
        ),
    ];
    for (name, script) in scripts {
        let path = dir.path().join(name);
        std::fs::write(&path, &script).unwrap();
        let out = run_bounded(
            vmprobe().args(["run", path.to_str().unwrap(), "--", "true"]),
            LIMIT,
        );
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{name}: {stderr}");
        assert_eq!(stderr.matches(&limit).count(), 1, "{name}: {stderr}");
        // At the link that went too deep: a `+` or a `->` on line 1.
        let at = format!("{}:1:", path.display());
        assert!(stderr.contains(&at), "{name}: {stderr}");
        assert!(stderr.len() < 1000, "{name}: a short report: {stderr}");
        assert!(!stderr.contains("booting"), "{name}: {stderr}");
    }
}

/// The script file is read with a bound: `/dev/zero` (which never ends)
/// and a 17 MiB file are refused by name, at once and in little memory,
/// where vmprobe grew to 2.1 GB in 3.4 s reading `/dev/zero` before.
#[test]
fn a_script_larger_than_16_mib_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let big = dir.path().join("big.bt");
    std::fs::File::create(&big)
        .unwrap()
        .set_len(17 << 20)
        .unwrap();
    for path in [Path::new("/dev/zero"), big.as_path()] {
        let needle = format!(
            "{}: the script is larger than the limit of 16 MiB",
            path.display()
        );
        let start = std::time::Instant::now();
        // GNU time, where installed, gives the peak memory (KiB).
        let time = Path::new("/usr/bin/time");
        let mut cmd = if time.exists() {
            let mut c = std::process::Command::new(time);
            c.args(["-f", "peak-rss-kib %M", env!("CARGO_BIN_EXE_vmprobe")]);
            c
        } else {
            vmprobe()
        };
        let out = run_bounded(cmd.arg("run").arg(path).args(["--", "true"]), LIMIT);
        let took = start.elapsed();
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(stderr.contains(&needle), "{stderr}");
        assert!(took < Duration::from_secs(10), "{took:?}");
        let peak: Option<u64> = stderr
            .lines()
            .find_map(|l| l.strip_prefix("peak-rss-kib ")?.trim().parse().ok());
        eprintln!(
            "{}: refused in {took:?}, peak RSS {peak:?} KiB",
            path.display()
        );
        assert!(peak.is_none_or(|kib| kib < 100 << 10), "{stderr}");
    }
}

/// `profile:hz:1000000000` (a `true` workload then took 22 s) is an error
/// at its line:column before anything boots, as bpftrace cannot attach it.
#[test]
fn a_timer_faster_than_100_khz_is_a_diagnostic_before_booting() {
    let e = fails_with(
        &[
            "run",
            "-e",
            "profile:hz:1000000000 { @n = count(); }",
            "--",
            "true",
        ],
        &[],
        "profile:hz:1000000000 fires more than 100000 times a second",
    );
    assert!(e.contains("stdin:1:1"), "{e}");
    assert!(!e.contains("booting"), "{e}");
}

/// The in-VMM backend's refusals: asked for where it cannot serve, each is
/// one error naming why (the program's at line:column), before booting.
#[test]
fn the_plugin_backend_says_why_it_cannot_serve() {
    let e = fails_with(
        &[
            "attach",
            "--vm",
            "vm0=plugin:/nonexistent/plugin.sock",
            "-e",
            "kprobe:ksys_write { @c = count(); }",
        ],
        &[],
        "/nonexistent/plugin.sock",
    );
    last_line_is_one_error(&e, "connecting to the plugin at /nonexistent/plugin.sock");

    // Debian 12's QEMU 7.2 has no plugin API v4.
    let old = Path::new("/usr/bin/qemu-system-x86_64");
    if qemu_guest::QemuVersion::of(old).is_ok_and(|v| v.major < 9) {
        let e = fails_with(
            &[
                "run",
                "--backend",
                "plugin",
                "--qemu",
                "/usr/bin/qemu-system-x86_64",
                "-e",
                "kprobe:ksys_write { @c = count(); }",
                "--",
                "true",
            ],
            &[],
            "the plugin needs 9.2.0 or later",
        );
        last_line_is_one_error(&e, "is QEMU 7.");
        assert!(!e.contains("booting"), "{e}");
    }

    if qemu10().is_none() {
        return;
    }
    plugin_library();
    let e = fails_with(
        &[
            "run",
            "--backend",
            "plugin",
            "-e",
            "kprobe:ksys_write { @c = count(); }\nwatchpoint:0xffffffff81000000:8:w { @w = count(); }",
            "--",
            "true",
        ],
        &[],
        "watchpoints are served through the GDB stub: use --backend gdb",
    );
    assert!(e.contains("stdin:2:1"), "{e}");
    assert!(!e.contains("booting"), "{e}");

    // A VMM handler reading what a guest probe wrote needs the gdb backend's order.
    let e = fails_with(
        &[
            "run",
            "--backend",
            "plugin",
            "-e",
            "kprobe:ksys_write { @start = nsecs; }\nvmm:serial_write { @lat = hist(nsecs - @start); }",
            "--",
            "true",
        ],
        &[],
        "@start is written inside QEMU, and VMM and host events are served later in vmprobe",
    );
    assert!(e.contains("stdin:2:40"), "{e}");
    assert!(!e.contains("booting"), "{e}");
}

/// A guest tracepoint that cannot be served from outside the guest is
/// refused at its line:column before anything boots, saying why, once; so
/// is a syscall the guest kernel does not have.
#[test]
fn unservable_guest_tracepoint_is_refused_before_booting() {
    let e = fails_with(
        &[
            "run",
            "-e",
            "BEGIN { }\n  tracepoint:sched:sched_update_nr_running_tp { @ = count(); }",
            "--",
            "true",
        ],
        &[],
        "error: guest tracepoint sched:sched_update_nr_running_tp: 'sched_update_nr_running_tp' is a tracepoint without a trace event \
         (no tracefs format, so no args): bpftrace reaches it only as a rawtracepoint",
    );
    assert!(e.contains("stdin:2:3"), "{e}");
    assert!(!e.contains("booting"), "must fail before booting:\n{e}");
    assert_eq!(
        e.matches("sched_update_nr_running_tp:").count(),
        1,
        "reported once:\n{e}"
    );
    let e = fails_with(
        &[
            "run",
            "-e",
            "tracepoint:syscalls:sys_enter_nosuch { }",
            "--",
            "true",
        ],
        &[],
        "guest tracepoint syscalls:sys_enter_nosuch: the guest kernel has no syscall 'nosuch'",
    );
    assert!(e.contains("stdin:1:1") && !e.contains("booting"), "{e}");
    let e = fails_with(
        &[
            "run",
            "-e",
            "tracepoint:syscalls:sys_exit_openat { @[args.filename] = count(); }",
            "--",
            "true",
        ],
        &[],
        "'tracepoint:syscalls:sys_exit_openat' has no field 'filename' (fields: __syscall_nr, ret)",
    );
    assert!(e.contains("stdin:1:41") && !e.contains("booting"), "{e}");
}

#[test]
fn metrics_port_in_use_is_one_error_before_booting() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let program = "kprobe:ksys_write { @c = count(); }";
    // A run that boots a guest, one that needs none, and an attach.
    for args in [
        vec!["run", "--metrics", &addr, "-e", program, "--", "true"],
        vec!["run", "--metrics", &addr, "-e", "BEGIN { exit(); }"],
        vec![
            "attach",
            "--vm",
            "vm0=gdb:127.0.0.1:1",
            "--metrics",
            &addr,
            "-e",
            program,
        ],
    ] {
        let out = run_bounded(vmprobe().args(&args), LIMIT);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        let needle = format!("--metrics: cannot listen on {addr}: ");
        last_line_is_one_error(&stderr, &needle);
        assert!(stderr.contains("in use"), "{stderr}");
        assert!(!stderr.contains("booting"), "{stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
    drop(taken);
}

#[test]
fn bad_metrics_addresses_are_usage_errors() {
    for bad in ["host:9464", "127.0.0.1", "99999", "127.0.0.1:port", ""] {
        let out = run_bounded(
            vmprobe().args(["run", "--metrics", bad, "-e", "BEGIN { exit(); }"]),
            LIMIT,
        );
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{bad}: {stderr}");
        let first = stderr.lines().next().unwrap_or("");
        assert!(
            first.contains("--metrics") && first.contains(&format!("'{bad}' is not ADDR:PORT")),
            "{stderr}"
        );
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}

/// `kfunc:`/`kretfunc:` need a BTF prototype whose every parameter is in
/// an entry register, and a wildcard must match a function: anything else
/// is an error at the attach point's line:column, before booting.
#[test]
fn kfunc_without_a_usable_prototype_is_refused_before_booting() {
    for (program, says, at) in [
        (
            "BEGIN { }\nkfunc:no_such_function_xyz { }",
            "kfunc:no_such_function_xyz: the guest kernel's BTF has no function 'no_such_function_xyz'",
            "stdin:2:1",
        ),
        (
            // Assembly: a symbol, but no BTF prototype.
            "kretfunc:entry_SYSCALL_64 { }",
            "kretfunc:entry_SYSCALL_64: the guest kernel's BTF has no function 'entry_SYSCALL_64'",
            "stdin:1:1",
        ),
        (
            "BEGIN { }  kfunc:do_mmap { }",
            "kfunc:do_mmap: parameter 'populate' (parameter 7) is passed on the stack",
            "stdin:1:12",
        ),
        (
            "kfunc:set_pte_vaddr { }",
            "kfunc:set_pte_vaddr: parameter 'pteval' is a 'pte_t' passed by value",
            "stdin:1:1",
        ),
        (
            "kretfunc:ksys_sync { @ = retval; }",
            "'ksys_sync' returns void: kretfunc:ksys_sync has no retval",
            "stdin:1:26",
        ),
        (
            "kfunc:ksys_write { @ = args.nosuch; }",
            "function 'ksys_write' has no parameter named 'nosuch' (parameters: fd, buf, count)",
            "stdin:1:24",
        ),
        (
            "fentry:ksys_write { }",
            "unknown probe type 'fentry' (bpftrace 0.17 and vmprobe spell it kfunc:)",
            "stdin:1:1",
        ),
        (
            "kfunc:* { }",
            "functions; at most 512 can be probed at once",
            "stdin:1:1",
        ),
        (
            "BEGIN { }\n  kretfunc:vfs_nosuch_* { }",
            "kretfunc:vfs_nosuch_*: no function matches 'vfs_nosuch_*'",
            "stdin:2:3",
        ),
        (
            // As bpftrace 0.17: `args` on a wildcard whose functions'
            // parameters differ.
            "kfunc:vfs_rea* { @[args.buf] = count(); }",
            "kfunc:vfs_rea*: Probe has attach points with mixed arguments (vfs_read(file, buf, count, pos) and vfs_readlink(dentry, buffer, buflen))",
            "stdin:1:1",
        ),
    ] {
        let e = fails_with(&["run", "-e", program, "--", "true"], &[], says);
        assert!(e.contains(at), "{program}: expected {at} in\n{e}");
        assert!(!e.contains("booting"), "must fail before booting:\n{e}");
        assert_eq!(e.matches(says).count(), 1, "reported once:\n{e}");
    }
}

/// raw_syscalls: an event that does not exist, a field the event does not
/// have, and an `args.args` index that is not a constant 0..5 are errors
/// at their line:column, before booting.
#[test]
fn bad_raw_syscalls_probes_are_refused_before_booting() {
    for (program, says, at) in [
        (
            "tracepoint:raw_syscalls:sys_entr { }",
            "guest tracepoint raw_syscalls:sys_entr: no such event (raw_syscalls:sys_enter or raw_syscalls:sys_exit",
            "stdin:1:1",
        ),
        (
            "tracepoint:raw_syscalls:sys_exit { @[args.args[0]] = count(); }",
            "'tracepoint:raw_syscalls:sys_exit' has no field 'args' (fields: id, ret)",
            "stdin:1:38",
        ),
        (
            "tracepoint:raw_syscalls:sys_enter { $i = 1; @[args.args[$i]] = count(); }",
            "args.args needs a constant index (0..5)",
            "stdin:1:57",
        ),
        (
            "tracepoint:raw_syscalls:sys_enter { @[args.args[6]] = count(); }",
            "args.args has 6 elements (0..5)",
            "stdin:1:39",
        ),
    ] {
        let e = fails_with(&["run", "-e", program, "--", "true"], &[], says);
        assert!(e.contains(at), "{program}: expected {at} in\n{e}");
        assert!(!e.contains("booting"), "must fail before booting:\n{e}");
        assert_eq!(e.matches(says).count(), 1, "reported once:\n{e}");
    }
}

/// A per-guest probe naming no guest of the run, or on a probe kind that is
/// not armed per guest, is an error at its line:column before booting.
#[test]
fn a_per_guest_probe_on_an_unknown_guest_is_refused_before_booting() {
    let e = fails_with(
        &[
            "run",
            "--guests",
            "2",
            "-e",
            "BEGIN { }\n vm2:kprobe:ksys_write { @ = count(); }",
            "--",
            "true",
        ],
        &[],
        "vm2:kprobe:ksys_write: no guest named 'vm2' in this run (guests: vm0, vm1)",
    );
    assert!(e.contains("stdin:2:2") && !e.contains("booting"), "{e}");
    // In attach, guests are the --vm names; nothing is connected to.
    let e = fails_with(
        &[
            "attach",
            "--vm",
            "web=gdb:127.0.0.1:9",
            "-e",
            "db:kprobe:ksys_write { @ = count(); }",
        ],
        &[],
        "db:kprobe:ksys_write: no guest named 'db' in this run (guests: web)",
    );
    assert!(e.contains("stdin:1:1") && !e.contains("connecting"), "{e}");
    let e = fails_with(
        &["run", "-e", "vm0:interval:s:1 { }", "--", "true"],
        &[],
        "vm0:interval:s:1: a guest prefix applies to kprobe, kretprobe, kfunc, kretfunc and guest tracepoint probes only",
    );
    assert!(e.contains("stdin:1:1") && !e.contains("booting"), "{e}");
}

/// bpftrace's C preprocessor lines, literals, positional parameters and
/// BPFTRACE_STRLEN: each mistake is one error at its line:column, before
/// anything boots.
#[test]
fn preprocessor_literal_and_parameter_errors_name_their_place() {
    let cases: &[(&str, &[&str], &str, &str)] = &[
        (
            "BEGIN { exit(); }\n  #pragma once\n",
            &[],
            "unknown directive '#pragma'",
            "stdin:2:3",
        ),
        (
            "#ifdef BPFTRACE_HAVE_BTF\nBEGIN { exit(); }\n",
            &[],
            "this conditional has no #endif",
            "stdin:1:1",
        ),
        (
            "BEGIN { exit(); }\n#endif\n",
            &[],
            "#endif without #ifdef or #ifndef",
            "stdin:2:1",
        ),
        (
            "#define F(x) x\nBEGIN { exit(); }\n",
            &[],
            "function-like macro 'F'",
            "stdin:1:9",
        ),
        (
            "BEGIN { @x = 12e3; exit(); }",
            &[],
            "invalid integer literal '12e3': the coefficient of a scientific literal must be 0 to 9",
            "stdin:1:14",
        ),
        (
            "BEGIN { @x = 1e17; exit(); }",
            &[],
            "the exponent of a scientific literal must be at most 16",
            "stdin:1:14",
        ),
        (
            "BEGIN { @x = $1; exit(); }",
            &["abc"],
            "$1 used numerically but given \"abc\"; try str($1)",
            "stdin:1:14",
        ),
        (
            "BEGIN { @x = $0; exit(); }",
            &[],
            "$0 is not a valid parameter",
            "stdin:1:14",
        ),
    ];
    for (program, params, needle, place) in cases {
        let mut args = vec!["run", "-e", program];
        args.extend_from_slice(params);
        args.extend(["--", "true"]);
        let e = fails_with(&args, &[], needle);
        assert!(
            e.contains(&format!(" --> {place}\n")),
            "{place} expected:\n{e}"
        );
        assert!(!e.contains("booting"), "must fail before booting:\n{e}");
        let naming = e.lines().filter(|l| l.contains(needle)).count();
        assert_eq!(naming, 1, "reported once:\n{e}");
    }
    for bad in ["0", "201", "lots"] {
        let e = fails_with(
            &["run", "-e", "BEGIN { exit(); }"],
            &[("BPFTRACE_STRLEN", bad)],
            &format!("BPFTRACE_STRLEN={bad}: give a number of bytes from 1 to 200"),
        );
        last_line_is_one_error(&e, "BPFTRACE_STRLEN");
    }
}

/// A uprobe whose file has no host copy, a function its ELF lacks, a
/// library name the guest's ld cache lacks (or a guest root without one)
/// and an address outside the file's code: each an error at its attach
/// point, before booting; and uprobes under KVM are refused before booting.
#[test]
fn bad_uprobes_are_errors_at_their_place_before_booting() {
    default_guest();
    let cases: [(&str, &str); 4] = [
        (
            "uprobe:/bin/no-such-file:main { }",
            "/bin/no-such-file: vmprobe has no host copy of this guest file; give --guest-root DIR",
        ),
        (
            "BEGIN { }\nuprobe:/bin/vmprobe-ucount:no_such_fn { }",
            "has no function 'no_such_fn' (`vmprobe list 'uprobe:/bin/vmprobe-ucount:*'` lists them)",
        ),
        (
            "uprobe:libnothere:f { }",
            "libnothere: no library libnothere.so* in the guest's ld cache ",
        ),
        (
            "uprobe:/bin/vmprobe-ucount:0x10 { }",
            "0x10 is not in an executable segment of the file",
        ),
    ];
    for (program, needle) in cases {
        let e = fails_with(&["run", "-e", program, "--", "true"], &[], needle);
        let line = program.lines().count();
        assert!(e.contains(&format!(" --> stdin:{line}:1\n")), "{e}");
        assert!(!e.contains("booting"), "must fail before booting:\n{e}");
    }
    // An address inside an instruction (ucount_step+1: its first one is
    // 4 bytes long), from the ELF's code.
    let elf = kernel_image::UserElf::load(
        &qemu_guest::default_guest_files(&qemu_guest::cache_dir())
            .into_iter()
            .find(|(g, _)| g == "/bin/vmprobe-ucount")
            .expect("the default guest's ucount")
            .1,
    )
    .unwrap();
    let step = elf.lookup("ucount_step").unwrap().addr;
    let program = format!("uprobe:/bin/vmprobe-ucount:{:#x} {{ }}", step + 1);
    let e = fails_with(
        &["run", "-e", &program, "--", "true"],
        &[],
        "is inside an instruction",
    );
    assert!(!e.contains("booting"), "{e}");
    // The same as FUNC+OFFSET, and an offset past the function's end.
    let e = fails_with(
        &[
            "run",
            "-e",
            "uprobe:/bin/vmprobe-ucount:ucount_step+1 { }",
            "--",
            "true",
        ],
        &[],
        "is inside an instruction",
    );
    assert!(!e.contains("booting"), "{e}");
    let e = fails_with(
        &[
            "run",
            "-e",
            "uprobe:/bin/vmprobe-ucount:ucount_step+100000 { }",
            "--",
            "true",
        ],
        &[],
        "offset 100000 is past the end of 'ucount_step'",
    );
    assert!(
        e.contains(" --> stdin:1:1\n") && !e.contains("booting"),
        "{e}"
    );
    // --guest-root without an ld cache: a library name names the file.
    let root = tempfile::tempdir().unwrap();
    let root_arg = root.path().to_str().unwrap();
    let e = fails_with(
        &[
            "run",
            "--guest-root",
            root_arg,
            "-e",
            "uprobe:libc:getaddrinfo { }",
            "--",
            "true",
        ],
        &[],
        &format!("{}: ", root.path().join("etc/ld.so.cache").display()),
    );
    assert!(e.contains(" --> stdin:1:1\n"), "{e}");
    // Under KVM (asked for), uprobes are refused before booting.
    let e = fails_with(
        &[
            "run",
            "--accel",
            "kvm",
            "-e",
            "uprobe:/bin/vmprobe-ucount:ucount_step { }",
            "--",
            "true",
        ],
        &[],
        "uprobes are served only under TCG",
    );
    last_line_is_one_error(&e, "uprobes are served only under TCG");
    assert!(!e.contains("booting"), "{e}");
}
