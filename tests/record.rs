//! `vmprobe record`: traces that babeltrace2 (the reference CTF reader) and a
//! JSON parser read back, checked against the guest kernel's own count, and
//! the flight recorder's snapshot window.

mod support;
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::*;

/// babeltrace2's text output of a trace; fails on any warning or error.
fn babeltrace(dir: &Path) -> Vec<String> {
    let out = Command::new("babeltrace2")
        .arg(dir)
        .output()
        .expect("babeltrace2 is installed by .ci/install-deps");
    let stderr = text(&out.stderr);
    assert!(
        out.status.success(),
        "babeltrace2 failed on {}: {stderr}",
        dir.display()
    );
    assert!(stderr.trim().is_empty(), "babeltrace2 warned: {stderr}");
    text(&out.stdout).lines().map(str::to_string).collect()
}

/// `name` and the payload field `field` of a babeltrace2 text line.
fn event_field(line: &str, field: &str) -> Option<u64> {
    let key = format!("{field} = ");
    line.split(&key)
        .nth(1)?
        .split([',', ' '])
        .next()?
        .parse()
        .ok()
}

/// The bracketed timestamp of a babeltrace2 line, as text (sortable: fixed width).
fn timestamp(line: &str) -> &str {
    &line[1..line.find(']').expect("timestamp")]
}

#[test]
fn ctf_trace_read_by_babeltrace2_matches_guest_count() {
    let n = 40;
    let dir = tempfile::tempdir().unwrap();
    let trace = dir.path().join("trace");
    let workload = ground_truth_workload(&format!("dd if=/dev/zero of=/dev/null bs=1 count={n}"));
    let out = run_bounded(
        vmprobe()
            .args(["record", "--console", "-o"])
            .arg(&trace)
            .args(["kprobe:ksys_write", "kretprobe:ksys_write", "--", &workload]),
        RUN_LIMIT,
    );
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "vmprobe record failed: {stderr}");
    let lines = babeltrace(&trace);
    let recorded: usize = stderr
        .lines()
        .find_map(|l| l.strip_prefix("vmprobe: recorded "))
        .and_then(|l| l.split(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("no 'recorded N events' line: {stderr}"));
    assert_eq!(
        lines.len(),
        recorded,
        "babeltrace2 reads every event vmprobe wrote"
    );
    let entries: Vec<&String> = lines
        .iter()
        .filter(|l| l.contains("] (") && l.contains(" kprobe:ksys_write: "))
        .collect();
    let returns = lines
        .iter()
        .filter(|l| l.contains(" kretprobe:ksys_write: "))
        .count();
    assert_eq!(
        entries.len() + returns,
        lines.len(),
        "only the two probes: {lines:?}"
    );
    // Every call returned, except possibly init's write of the exit message
    // on the control port: the run ends when that message arrives, before
    // the write returns.
    assert!(
        entries.len() == returns || entries.len() == returns + 1,
        "{} calls, {returns} returns",
        entries.len()
    );
    // The same window as the guest's own kprobe event: 1-byte writes
    // between the marker writes, from arg2 of each entry.
    let mut inside = None;
    for l in &entries {
        match (event_field(l, "arg2"), inside) {
            (Some(WINDOW_START), None) => inside = Some(0u64),
            (Some(WINDOW_END), Some(_)) => break,
            (Some(1), Some(k)) => inside = Some(k + 1),
            _ => {}
        }
    }
    let guest = ground_truth_hits(&stderr);
    assert_eq!(inside, Some(guest), "trace and guest kernel disagree");
    assert_eq!(guest, n);
    let stamps: Vec<&str> = lines.iter().map(|l| timestamp(l)).collect();
    assert!(
        stamps.windows(2).all(|w| w[0] <= w[1]),
        "timestamps out of order"
    );
}

#[test]
fn perfetto_trace_has_tracks_instants_and_call_slices() {
    let dir = tempfile::tempdir().unwrap();
    let out = run_bounded(
        vmprobe()
            .args(["record", "--format", "perfetto", "-o"])
            .arg(dir.path())
            .args([
                "kprobe:ksys_write",
                "kretprobe:ksys_write",
                "--",
                "dd if=/dev/zero of=/dev/null bs=1 count=15 2>/dev/null",
            ]),
        RUN_LIMIT,
    );
    assert!(
        out.status.success(),
        "vmprobe record failed: {}",
        text(&out.stderr)
    );
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("trace.json")).unwrap()).unwrap();
    let events = json
        .as_array()
        .or_else(|| json["traceEvents"].as_array())
        .expect("a trace-event array");
    let of = |ph: &str| events.iter().filter(|e| e["ph"] == ph).collect::<Vec<_>>();
    let names: Vec<String> = of("M")
        .iter()
        .map(|e| e["args"]["name"].as_str().unwrap_or("").to_string())
        .collect();
    assert!(
        names.iter().any(|n| n.contains("vm0")),
        "a process for the guest: {names:?}"
    );
    assert!(
        names.iter().any(|n| n.contains("vcpu0")),
        "a track for vCPU 0: {names:?}"
    );
    let instants = of("i");
    let slices = of("X");
    // Every call is an instant at entry and a slice from entry to return.
    assert_eq!(instants.len(), slices.len());
    assert!(instants.iter().all(|i| i["name"] == "kprobe:ksys_write"));
    assert!(
        slices
            .iter()
            .all(|s| s["name"] == "ksys_write" && s["dur"].as_f64().unwrap() > 0.0)
    );
    // dd's 15 one-byte writes (its status lines and init's messages are
    // longer writes).
    let one_byte = instants.iter().filter(|i| i["args"]["arg2"] == 1).count();
    let returned_one = slices.iter().filter(|s| s["args"]["retval"] == 1).count();
    assert_eq!(one_byte, 15, "{instants:?}");
    assert_eq!(returned_one, 15);
}

#[test]
fn flight_recorder_snapshot_holds_the_newest_events_without_gaps() {
    let n = 4000;
    let dir = tempfile::tempdir().unwrap();
    let mut child = vmprobe()
        .args(["record", "--ring", "32K", "-o"])
        .arg(dir.path())
        .args(["kprobe:ksys_lseek", "--", &format!("vmprobe-seq {n}")])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Probes are armed when "Attaching" is printed; the workload runs for
    // tens of seconds after that (thousands of stops).
    let stdout = child.stdout.take().unwrap();
    let attached = Arc::new(Mutex::new(None::<Instant>));
    let seen = attached.clone();
    let reader = std::thread::spawn(move || {
        use std::io::BufRead;
        let mut out = String::new();
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if line.starts_with("Attaching") {
                *seen.lock().unwrap() = Some(Instant::now());
            }
            out.push_str(&line);
            out.push('\n');
        }
        out
    });
    let start = Instant::now();
    let mut signalled = false;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(start.elapsed() < RUN_LIMIT, "vmprobe record did not finish");
        let since_attach = attached.lock().unwrap().map(|t| t.elapsed());
        if !signalled && since_attach.is_some_and(|d| d > Duration::from_secs(5)) {
            // Nothing is written before a snapshot is asked for.
            let entries = std::fs::read_dir(dir.path()).unwrap().count();
            assert_eq!(entries, 0, "the flight recorder wrote before a snapshot");
            Command::new("kill")
                .args(["-USR1", &child.id().to_string()])
                .status()
                .unwrap();
            signalled = true;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let out = child.wait_with_output().unwrap();
    let _ = reader.join();
    let stderr = text(&out.stderr);
    assert!(status.success(), "vmprobe record failed: {stderr}");
    assert!(
        signalled,
        "the run ended before the snapshot was asked for: {stderr}"
    );
    let seqs = |name: &str| -> Vec<u64> {
        let out = Command::new("babeltrace2")
            .arg(dir.path().join(name))
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out.stderr));
        text(&out.stdout)
            .lines()
            .filter_map(|l| event_field(l, "arg1"))
            .collect()
    };
    let first = seqs("snapshot-1");
    let last = seqs("snapshot-2");
    for window in [&first, &last] {
        assert!(
            window.len() > 100,
            "a 32K ring holds hundreds of events: {}",
            window.len()
        );
        assert!(
            window.windows(2).all(|w| w[1] == w[0] + 1),
            "gap or disorder inside the snapshot window"
        );
    }
    // The final snapshot ends with the workload's last call, and the ring
    // was overwritten (far more events than fit).
    assert_eq!(*last.last().unwrap(), n);
    assert!(
        last.len() < n as usize,
        "the ring kept only the newest events"
    );
    assert!(
        first.last() < last.first(),
        "snapshot 1 precedes snapshot 2"
    );
}

#[test]
fn profile_kernel_stacks_as_a_flame_graph() {
    let dir = tempfile::tempdir().unwrap();
    let svg = dir.path().join("stacks.svg");
    let out = run_bounded(
        vmprobe()
            .args(["record", "-o"])
            .arg(dir.path().join("trace"))
            .arg("--flamegraph")
            .arg(&svg)
            .args([
                "-e",
                "profile:hz:100 { @stacks[kstack] = count(); @samples = count(); }",
                "--",
                "vmprobe-nullsys 100000",
            ]),
        RUN_LIMIT,
    );
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "{stderr}");
    let folded = std::fs::read_to_string(svg.with_extension("folded")).unwrap();
    let counts: u64 = folded
        .lines()
        .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
        .sum();
    // Every sample taken in the kernel is a folded stack; samples in user
    // space have an empty kernel stack, as in bpftrace.
    let samples = map_value(&stdout, "samples");
    assert!(
        counts > 0 && counts <= samples,
        "{counts} of {samples}\n{folded}"
    );
    assert!(
        folded
            .lines()
            .any(|l| l.starts_with("entry_SYSCALL_64") && l.contains(";do_syscall_64;")),
        "system-call stacks, root first:\n{folded}"
    );
    let svg = std::fs::read_to_string(&svg).unwrap();
    assert!(
        svg.contains("<svg") && svg.contains("do_syscall_64"),
        "an SVG flame graph"
    );
}

#[test]
fn unwritable_trace_folder_is_one_error_before_booting() {
    let out = run_bounded(
        vmprobe().args([
            "record",
            "-o",
            "/proc/vmprobe-cannot-write-here",
            "kprobe:ksys_write",
            "--",
            "true",
        ]),
        RUN_LIMIT,
    );
    let stderr = text(&out.stderr);
    assert!(!out.status.success());
    assert!(
        !stderr.contains("booting"),
        "failed before booting: {stderr}"
    );
    let last = stderr.lines().rfind(|l| !l.trim().is_empty()).unwrap_or("");
    assert!(
        last.starts_with("vmprobe: ") && last.contains("/proc/vmprobe-cannot-write-here"),
        "{stderr}"
    );
}

#[test]
fn guest_killed_mid_record_leaves_a_readable_trace() {
    let dir = tempfile::tempdir().unwrap();
    let trace = dir.path().join("trace");
    let child = vmprobe()
        .args(["record", "-o"])
        .arg(&trace)
        .args(["kprobe:ksys_lseek", "--", "vmprobe-seq 100000"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let me = child.id().to_string();
    let start = Instant::now();
    // Kill QEMU once events are being written.
    loop {
        assert!(start.elapsed() < RUN_LIMIT, "no events were ever written");
        let written = std::fs::read_dir(&trace)
            .map(|d| {
                d.flatten()
                    .filter(|e| e.file_name() != "metadata")
                    .any(|e| e.metadata().map(|m| m.len() > 0).unwrap_or(false))
            })
            .unwrap_or(false);
        if written {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_secs(2));
    let qemu = Command::new("pgrep")
        .args(["-n", "-P", &me, "qemu-system"])
        .output()
        .unwrap();
    Command::new("kill")
        .args(["-9", text(&qemu.stdout).trim()])
        .status()
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = text(&out.stderr);
    assert!(!out.status.success(), "the VM died: {stderr}");
    assert!(stderr.contains("the VM went away"), "{stderr}");
    // Everything written so far reads back without a warning, in order.
    let lines = babeltrace(&trace);
    assert!(lines.len() > 10, "{} events", lines.len());
    let seqs: Vec<u64> = lines
        .iter()
        .filter_map(|l| event_field(l, "arg1"))
        .collect();
    assert!(
        seqs.windows(2).all(|w| w[1] == w[0] + 1),
        "a gap-free prefix"
    );
}

#[test]
fn disk_full_mid_record_leaves_a_readable_trace_and_says_so() {
    // A 64 KiB tmpfs fills after a few hundred events.
    let dir = tempfile::tempdir().unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=64k", "tmpfs"])
        .arg(dir.path())
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI runs as root and can mount a tmpfs"
        );
        eprintln!("cannot mount a tmpfs here: skipping");
        return;
    }
    let trace = dir.path().join("trace");
    let out = run_bounded(
        vmprobe().args(["record", "-o"]).arg(&trace).args([
            "kprobe:ksys_lseek",
            "--",
            "vmprobe-seq 3000",
        ]),
        RUN_LIMIT,
    );
    let stderr = text(&out.stderr);
    let read = Command::new("babeltrace2").arg(&trace).output().unwrap();
    let _ = Command::new("umount").arg(dir.path()).status();
    assert!(
        stderr.contains("could not be written"),
        "the loss is reported: {stderr}"
    );
    assert!(stderr.contains("No space left on device"), "{stderr}");
    // The trace reads back; babeltrace2's only complaint is the discarded
    // events, which the trace itself declares.
    assert!(read.status.success(), "{}", text(&read.stderr));
    let warnings = text(&read.stderr);
    assert!(warnings.contains("discarded events"), "{warnings}");
    let seqs: Vec<u64> = text(&read.stdout)
        .lines()
        .filter_map(|l| event_field(l, "arg1"))
        .collect();
    assert!(seqs.len() > 100, "{} events", seqs.len());
    assert!(seqs.windows(2).all(|w| w[1] > w[0]), "in order");
}
