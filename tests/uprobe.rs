//! uprobe/uretprobe in guest processes (default guest, TCG, gdb backend):
//! `vmprobe-ucount` prints its own count of `ucount_step` calls and each
//! call's return value, and vmprobe's counts, arguments and return values
//! must equal them. A copy of the same binary under another path (same
//! code at the same virtual addresses, on another mount) runs alongside,
//! on a second vCPU, and must count nothing.

mod support;
use std::collections::BTreeMap;
use support::*;

const PROGRAM: &str = r#"
uprobe:/bin/vmprobe-ucount:ucount_step { @calls = count(); @args[arg0] = count(); }
uretprobe:/bin/vmprobe-ucount:ucount_step { @ret[retval] = count(); @rets = count(); }
uprobe:/bin/vmprobe-ucount:ucount_step /arg0 == 3/ { @stack[ustack(2)] = count(); }
"#;

/// The real binary's output goes to a file, printed with a prefix after
/// both ran; the copy's (in /tmp, a tmpfs, under the same file name) is
/// dropped. They run at once on two vCPUs, twice.
const WORKLOAD: &str = "mkdir -p /tmp/bin && cp /bin/vmprobe-ucount /tmp/bin/vmprobe-ucount && \
    (/tmp/bin/vmprobe-ucount 9 > /dev/null & /bin/vmprobe-ucount 25 > /tmp/real.txt; wait) && \
    (/bin/vmprobe-ucount 6 >> /tmp/real.txt & /tmp/bin/vmprobe-ucount 11 > /dev/null; wait) && \
    sed 's/^/REAL /' /tmp/real.txt";

#[test]
fn uprobe_counts_exactly_the_calls_of_its_file_and_uretprobe_sees_their_return_values() {
    let out = run_bounded(
        vmprobe().args([
            "run",
            "--console",
            "--stats",
            "-v",
            "--vcpus",
            "2",
            "-e",
            PROGRAM,
            "--",
            WORKLOAD,
        ]),
        RUN_LIMIT,
    );
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "vmprobe failed: {stderr}");
    // What the program itself saw.
    let real: Vec<&str> = stderr
        .lines()
        .filter_map(|l| l.split("REAL ").nth(1))
        .collect();
    let their_calls: u64 = real
        .iter()
        .filter_map(|l| l.strip_prefix("ucount calls "))
        .map(|n| n.trim().parse::<u64>().expect("count"))
        .sum();
    assert_eq!(
        their_calls, 31,
        "the program's own counts: {real:?}\n{stderr}"
    );
    let mut their_rets: BTreeMap<u64, u64> = BTreeMap::new();
    for r in real.iter().filter_map(|l| l.strip_prefix("ucount ret ")) {
        *their_rets
            .entry(r.trim().parse().expect("ret"))
            .or_default() += 1;
    }
    assert_eq!(map_value(&stdout, "calls"), their_calls, "{stdout}");
    assert_eq!(map_value(&stdout, "rets"), their_calls, "{stdout}");
    assert_eq!(keyed_map(&stdout, "ret"), their_rets, "{stdout}");
    // arg0 is i: 0..25 from the first run and 0..6 from the second.
    let args = keyed_map(&stdout, "args");
    let expected: BTreeMap<u64, u64> = (0..25).map(|i| (i, if i < 6 { 2 } else { 1 })).collect();
    assert_eq!(args, expected, "{stdout}");
    // ustack is symbolised from the ELF. At a function's entry the frame
    // pointer is still the caller's, so the walk goes from the pc to the
    // caller's return address (main's caller), as Linux's perf callchain
    // (and so bpftrace) does.
    assert!(
        stdout.contains("@stack[\n    ucount_step+0\n    __libc_start_call_main+")
            && stdout.contains("]: 2\n"),
        "{stdout}"
    );
    // The copy's 20 calls stopped the guest and were told apart.
    let other: u64 = stderr
        .split(" uprobe stops in other files")
        .next()
        .and_then(|s| s.rsplit(", ").next())
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no uprobe stops in the stats: {stderr}"));
    assert!(other >= 20, "{other} stops in other files: {stderr}");
    // With --backend auto the plugin, which lacks uprobes, is passed over.
    if qemu10().is_some() {
        assert!(
            stderr.contains("backend: gdb")
                && stderr.contains("uprobes are served through the GDB stub"),
            "{stderr}"
        );
    }
}

/// The plugin backend refuses uprobes before booting, at the attach
/// point, and says what to use.
#[test]
fn the_plugin_backend_refuses_uprobes_before_booting() {
    if qemu10().is_none() {
        return;
    }
    let out = run_bounded(
        vmprobe().args(["run", "--backend", "plugin", "-e", PROGRAM, "--", "true"]),
        RUN_LIMIT,
    );
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(
            "uprobe:/bin/vmprobe-ucount:ucount_step: uprobes are served through the GDB stub"
        ) && stderr.contains("use --backend gdb")
            && stderr.contains(":2:1"),
        "{stderr}"
    );
    assert!(!stderr.contains("booting"), "{stderr}");
}

/// `vmprobe list 'uprobe:PATH:*'` lists the ELF's functions.
#[test]
fn list_names_the_functions_of_a_guest_file() {
    default_guest();
    let out = run_bounded(
        vmprobe().args(["list", "uprobe:/bin/vmprobe-ucount:ucount_*"]),
        RUN_LIMIT,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        "uprobe:/bin/vmprobe-ucount:ucount_step\n"
    );
    let out = run_bounded(
        vmprobe().args(["list", "uprobe:/bin/vmprobe-ucount:*"]),
        RUN_LIMIT,
    );
    let all = text(&out.stdout);
    assert!(
        all.lines().any(|l| l == "uprobe:/bin/vmprobe-ucount:main"),
        "{all}"
    );
    assert!(all.lines().count() > 100, "{all}");
}
