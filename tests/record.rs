//! `vmprobe record`: traces that babeltrace2 (the reference CTF reader) and a
//! JSON parser read back, checked against the guest kernel's own count, and
//! the flight recorder's snapshot window.

mod support;
/// Perfetto's guest-thread tracks against the guest's own tasks.
#[path = "record/threads.rs"]
mod threads;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::trace_read::*;
use support::*;

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
    assert_eq!(
        lines.len(),
        recorded_count(&stderr),
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
    // between the marker writes, from each entry's `count` (BTF's name for
    // ksys_write's third parameter).
    let mut inside = None;
    for l in &entries {
        match (event_field(l, "count"), inside) {
            (Some(WINDOW_START), None) => inside = Some(0u64),
            (Some(WINDOW_END), Some(_)) => break,
            (Some(1), Some(k)) => inside = Some(k + 1),
            _ => {}
        }
    }
    let guest = ground_truth_hits(&stderr);
    assert_eq!(inside, Some(guest), "trace and guest kernel disagree");
    assert_eq!(guest, n);
    assert_time_ordered(&lines);
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
                // The background dd's one 100,000-byte write fills the
                // pipe and blocks: a call still in flight at the end.
                "dd if=/dev/zero bs=100000 count=1 2>/dev/null | sleep 1000 & sleep 1; \
                 dd if=/dev/zero of=/dev/null bs=1 count=15 2>/dev/null",
            ]),
        RUN_LIMIT,
    );
    assert!(
        out.status.success(),
        "vmprobe record failed: {}",
        text(&out.stderr)
    );
    let events = perfetto_events(dir.path());
    let of = |ph: &str| events.iter().filter(|e| e["ph"] == ph).collect::<Vec<_>>();
    let names: Vec<String> = of("M")
        .iter()
        .map(|e| e["args"]["name"].as_str().unwrap_or("").to_string())
        .collect();
    // Calls are on their task's track, in a process per guest pid.
    assert!(
        names
            .iter()
            .any(|n| n.starts_with("vm0 pid ") && n.ends_with(" (dd)")),
        "a process for each dd: {names:?}"
    );
    assert!(
        names.iter().any(|n| n == "dd"),
        "a track for dd's thread: {names:?}"
    );
    let instants = of("i");
    let slices = of("X");
    let unfinished = of("B");
    // Every call is an instant at entry, and a slice from entry to return;
    // a call still in flight at the end opens a slice that never closes.
    assert_eq!(instants.len(), slices.len() + unfinished.len());
    assert!(instants.iter().all(|i| i["name"] == "kprobe:ksys_write"));
    assert!(
        slices
            .iter()
            .all(|s| s["name"] == "ksys_write" && s["dur"].as_f64().unwrap() > 0.0)
    );
    assert!(of("E").is_empty());
    assert!(unfinished.iter().all(|b| b["name"] == "ksys_write"));
    let blocked = instants
        .iter()
        .find(|i| i["args"]["count"] == 100_000)
        .unwrap_or_else(|| panic!("no entry of the blocked write: {instants:?}"));
    assert!(
        unfinished
            .iter()
            .any(|b| b["ts"] == blocked["ts"] && b["tid"] == blocked["tid"]),
        "the blocked write is an unfinished slice: {unfinished:?}"
    );
    // dd's 15 one-byte writes (its status lines and init's messages are
    // longer writes).
    let one_byte = instants.iter().filter(|i| i["args"]["count"] == 1).count();
    let returned_one = slices.iter().filter(|s| s["args"]["retval"] == 1).count();
    assert_eq!(one_byte, 15, "{instants:?}");
    assert_eq!(returned_one, 15);
}

#[test]
fn trace_fields_chosen_by_the_script_match_the_guest_kernel() {
    let n = 30;
    let dir = tempfile::tempdir().unwrap();
    let trace = dir.path().join("trace");
    // Only what trace() records is written: the 1-byte writes and the
    // window markers (as the guest's own kprobe event counts them), the
    // 3-byte write of "ABC", and the opens; snapshot() without --ring warns
    // once and changes nothing.
    let program = format!(
        "kprobe:ksys_write /arg2 == 1 || arg2 == {WINDOW_START} || arg2 == {WINDOW_END}/ \
           {{ trace(wfd = arg0, wlen = arg2, wcomm = comm); }}\n\
         kprobe:ksys_write /arg2 == 3/ {{ trace(data = buf(arg1, 3), fd = (int32)arg0); }}\n\
         kprobe:do_sys_openat2 {{ trace(path = str(args.filename), dfd = args.dfd); snapshot(); }}"
    );
    let workload = ground_truth_workload(&format!(
        "dd if=/dev/zero of=/dev/null bs=1 count={n} 2>/dev/null && echo -n ABC > /tmp/vmprobe-traced"
    ));
    let out = run_bounded(
        vmprobe()
            .args(["record", "--console", "-o"])
            .arg(&trace)
            .args(["-e", &program, "--", &workload]),
        RUN_LIMIT,
    );
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "vmprobe record failed: {stderr}");
    assert_eq!(
        stderr.matches("snapshot() does nothing without").count(),
        1,
        "one warning: {stderr}"
    );
    let lines = babeltrace(&trace);
    assert_eq!(lines.len(), recorded_count(&stderr));
    let of = |class: &str| -> Vec<&String> {
        let tag = format!(" {class}: ");
        lines.iter().filter(|l| l.contains(&tag)).collect()
    };
    // One event class per call site, named after the probe; the second
    // layout in the same probe gets `#2`.
    let (writes, abc, opens) = (
        of("kprobe:ksys_write"),
        of("kprobe:ksys_write#2"),
        of("kprobe:do_sys_openat2"),
    );
    assert_eq!(writes.len() + abc.len() + opens.len(), lines.len());
    let mut inside = None;
    for l in &writes {
        match (event_field(l, "wlen"), inside) {
            (Some(WINDOW_START), None) => inside = Some(0u64),
            (Some(WINDOW_END), Some(_)) => break,
            (Some(1), Some(k)) => {
                assert_eq!(field_text(l, "wcomm"), Some("\"dd\""), "{l}");
                assert_eq!(event_field(l, "wfd"), Some(1), "{l}");
                inside = Some(k + 1);
            }
            _ => {}
        }
    }
    let guest = ground_truth_hits(&stderr);
    assert_eq!(guest, n);
    assert_eq!(inside, Some(guest), "trace and guest kernel disagree");
    // The byte array, as a CTF sequence of uint8.
    let abc_bytes = "[ [0] = 0x41, [1] = 0x42, [2] = 0x43 ]";
    assert_eq!(
        abc.iter()
            .filter(|l| field_text(l, "data") == Some(abc_bytes))
            .count(),
        1,
        "{abc:?}"
    );
    // The string, and a signed field (AT_FDCWD).
    assert!(
        opens
            .iter()
            .any(|l| field_text(l, "path") == Some("\"/tmp/vmprobe-traced\"")
                && field_text(l, "dfd") == Some("-100")),
        "{opens:?}"
    );
    assert_time_ordered(&lines);
}

#[test]
fn bare_trace_records_a_vmm_event_with_its_fields_next_to_the_guest_write() {
    // Each byte dd writes to the serial port is a guest kprobe hit and a
    // QEMU `serial_write` event; trace() records both with their own fields.
    let program = r#"
kprobe:ksys_write /comm == "dd" && arg2 == 1/ { trace(); }
vmm:serial_write /args.value == 90/ { trace(); }
"#;
    let dir = tempfile::tempdir().unwrap();
    let workload = "printf ZZZZZZZZZZ > /tmp/z && dd if=/tmp/z of=/dev/ttyS0 bs=1 2>/dev/null";
    let out = run_bounded(
        vmprobe()
            .args(["record", "-o"])
            .arg(dir.path())
            .args(["-e", program, "--", workload]),
        RUN_LIMIT,
    );
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let lines = babeltrace(dir.path());
    let guest: Vec<&String> = lines
        .iter()
        .filter(|l| l.contains(" kprobe:ksys_write: "))
        .collect();
    let vmm: Vec<&String> = lines
        .iter()
        .filter(|l| l.contains(" vmm:serial_write: "))
        .collect();
    assert_eq!(guest.len() + vmm.len(), lines.len(), "{lines:?}");
    assert_eq!(guest.len(), 10, "{lines:?}");
    assert!(guest.iter().all(|l| event_field(l, "count") == Some(1)));
    assert_eq!(vmm.len(), 10, "{lines:?}");
    assert!(
        vmm.iter()
            .all(|l| event_field(l, "value") == Some(90) && l.contains("\"vmm\"")),
        "the VMM layer, with the event's fields: {vmm:?}"
    );
    assert_time_ordered(&lines);
}

#[test]
fn trace_fields_become_perfetto_args() {
    for backend in ["gdb", "plugin"] {
        trace_fields_become_perfetto_args_with(backend);
    }
}

fn trace_fields_become_perfetto_args_with(backend: &str) {
    let dir = tempfile::tempdir().unwrap();
    let program = "kprobe:ksys_write /arg2 == 1/ { trace(n = arg2, who = comm, b = buf(arg1, 1), \
                   task = curtask); }\n\
                   kretprobe:ksys_write /retval == 1/ { trace(); }";
    let out = run_bounded(
        vmprobe()
            .args(["record", "--backend", backend, "--format", "perfetto", "-o"])
            .arg(dir.path())
            .args([
                "-e",
                program,
                "--",
                // `yes` fills a pipe nobody reads: its write is still in
                // flight when the run ends, a call the program never traces.
                "yes | sleep 30 & dd if=/dev/zero of=/dev/null bs=1 count=12 2>/dev/null",
            ]),
        RUN_LIMIT,
    );
    assert!(out.status.success(), "{backend}: {}", text(&out.stderr));
    let events = perfetto_events(dir.path());
    let of = |ph: &str| events.iter().filter(|e| e["ph"] == ph).collect::<Vec<_>>();
    let instants = of("i");
    assert_eq!(instants.len(), 12, "{backend}: {instants:?}");
    for i in &instants {
        assert_eq!(i["name"], "kprobe:ksys_write");
        assert_eq!(i["args"]["n"], 1);
        assert_eq!(i["args"]["who"], "dd");
        assert!(i["args"]["b"].is_string(), "{i}");
        // A kernel pointer is beyond what a JavaScript number holds
        // exactly: hex text, not a rounded number.
        let task = i["args"]["task"].as_str().unwrap_or_else(|| panic!("{i}"));
        assert!(task.starts_with("0xffff"), "{i}");
    }
    // A bare trace() in a kretprobe is the return's slice with its retval.
    let slices = of("X");
    assert_eq!(slices.len(), 12, "{slices:?}");
    assert!(slices.iter().all(|s| s["args"]["retval"] == 1));
    // The program decides what is recorded: no unfinished calls it did not
    // trace (`yes`'s write is in flight at the end), on either backend.
    assert!(of("B").is_empty(), "{backend}: {:?}", of("B"));
}

#[test]
fn trace_outside_record_is_an_error_before_booting() {
    let out = run_bounded(
        vmprobe().args([
            "run",
            "-e",
            "kprobe:ksys_write {\n  trace(fd = arg0);\n}",
            "--",
            "true",
        ]),
        RUN_LIMIT,
    );
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(!stderr.contains("booting"), "{stderr}");
    assert!(
        stderr.contains("trace() writes to a trace, which `vmprobe run` does not make")
            && stderr.contains("stdin:2:3"),
        "{stderr}"
    );
}

#[test]
fn snapshot_called_by_the_script_writes_the_ring_at_that_point() {
    let n = 600;
    let dir = tempfile::tempdir().unwrap();
    let program = format!(
        "kprobe:ksys_lseek /comm == \"vmprobe-seq\"/ {{ trace(seq = arg1); if (arg1 == {}) {{ snapshot(); }} }}",
        n / 2
    );
    let out = run_bounded(
        vmprobe()
            .args(["record", "--ring", "256K", "-o"])
            .arg(dir.path())
            .args(["-e", &program, "--", &format!("vmprobe-seq {n}")]),
        RUN_LIMIT,
    );
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let seqs = |name: &str| -> Vec<u64> {
        babeltrace(&dir.path().join(name))
            .iter()
            .filter_map(|l| event_field(l, "seq"))
            .collect()
    };
    // The ring holds every event here: the script's snapshot has exactly
    // the calls up to the one that asked for it, the exit snapshot the rest.
    assert_eq!(seqs("snapshot-1"), (1..=n / 2).collect::<Vec<_>>());
    assert_eq!(seqs("snapshot-2"), (n / 2 + 1..=n).collect::<Vec<_>>());
}

#[test]
fn flight_recorder_snapshot_holds_the_newest_events_without_gaps() {
    // Events of about 1 KiB (16 buffers of 64 bytes of guest kernel memory
    // and a sequence number from the guest), so a 1 MiB ring holds about
    // 900 and the workload makes more than three times that.
    let (n, half) = (3000, 1500);
    let pad: String = (0..16)
        .map(|i| format!(", p{i} = buf(kaddr(\"init_task\") + {}, 64)", i * 64))
        .collect();
    let program = format!(
        "kprobe:ksys_lseek /comm == \"vmprobe-seq\"/ {{ trace(seq = arg1{pad}); \
           if (arg1 == {half}) {{ printf(\"half\\n\"); }} }}"
    );
    let dir = tempfile::tempdir().unwrap();
    // Through the stub: the signal must come mid-run, and inside QEMU the
    // 3000 calls are over before the test can react to "half".
    let mut child = vmprobe()
        .args(["record", "--backend", "gdb", "--ring", "1M", "-o"])
        .arg(dir.path())
        .args(["-e", &program, "--", &format!("vmprobe-seq {n}")])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The script says when half the events (well over 1 MiB) were made.
    let stdout = child.stdout.take().unwrap();
    let half_seen = Arc::new(Mutex::new(false));
    let seen = half_seen.clone();
    let reader = std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if line == "half" {
                *seen.lock().unwrap() = true;
            }
        }
    });
    let start = Instant::now();
    let mut signalled = false;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(start.elapsed() < RUN_LIMIT, "vmprobe record did not finish");
        if !signalled && *half_seen.lock().unwrap() {
            // Nothing is written before a snapshot is asked for.
            let entries = std::fs::read_dir(dir.path()).unwrap().count();
            assert_eq!(entries, 0, "the flight recorder wrote before a snapshot");
            Command::new("kill")
                .args(["-USR1", &child.id().to_string()])
                .status()
                .unwrap();
            signalled = true;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let out = child.wait_with_output().unwrap();
    let _ = reader.join();
    let stderr = text(&out.stderr);
    assert!(status.success(), "vmprobe record failed: {stderr}");
    assert!(
        signalled,
        "the run ended before the snapshot was asked for: {stderr}"
    );
    let read = |name: &str| -> (Vec<u64>, Vec<String>) {
        let out = Command::new("babeltrace2")
            .arg(dir.path().join(name))
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out.stderr));
        let lines: Vec<String> = text(&out.stdout).lines().map(str::to_string).collect();
        let seqs = lines.iter().filter_map(|l| event_field(l, "seq")).collect();
        (seqs, lines)
    };
    let ((first, first_lines), (last, last_lines)) = (read("snapshot-1"), read("snapshot-2"));
    for (window, lines) in [(&first, &first_lines), (&last, &last_lines)] {
        assert_eq!(window.len(), lines.len(), "every event has its seq");
        assert!(
            window.windows(2).all(|w| w[1] == w[0] + 1),
            "gap or disorder inside the snapshot window"
        );
        assert_time_ordered(lines);
        // A full ring of ~1 KiB events: hundreds, and far fewer than made.
        assert!(
            (500..1100).contains(&window.len()),
            "a 1 MiB ring of ~1 KiB events: {}",
            window.len()
        );
    }
    // The SIGUSR1 snapshot is the newest events when it was asked for: it
    // ends past the half-way call and the oldest were overwritten.
    assert!(*first.last().unwrap() >= half && first[0] > 1, "{first:?}");
    // The final snapshot ends with the workload's last call.
    assert_eq!(*last.last().unwrap(), n);
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
        .args(["kprobe:ksys_lseek", "--", "vmprobe-seq 100000000"])
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
        .filter_map(|l| event_field(l, "offset"))
        .collect();
    assert!(
        seqs.windows(2).all(|w| w[1] == w[0] + 1),
        "a gap-free prefix"
    );
}

/// What vmprobe said of a trace that lost events: (in the trace, lost).
fn recorded_and_lost(stderr: &str) -> (u64, u64) {
    let lost: Vec<u64> = stderr
        .lines()
        .filter_map(|l| l.strip_prefix("vmprobe: writing the trace: "))
        .filter_map(|l| l.split(' ').next()?.parse().ok())
        .collect();
    assert_eq!(lost.len(), 1, "the loss is reported once: {stderr}");
    (recorded_count(stderr) as u64, lost[0])
}

/// A disk that fills up during `record` (a 96 KiB tmpfs, 6,000 system
/// calls: ksys_lseek's three typed fields make CTF events of about 28
/// bytes): the run exits 1 and says once how many events were lost; the
/// trace holds the others, in order, and still reads: JSON that parses,
/// CTF whose discarded count babeltrace2 gives as the number vmprobe said.
#[test]
fn disk_full_mid_record_leaves_a_readable_trace_and_says_so() {
    for format in ["ctf", "perfetto"] {
        let Some(disk) = small_disk::SmallDisk::mount(96 << 10) else {
            assert!(std::env::var_os("CI").is_none(), "CI runs as root");
            return;
        };
        let dir = disk.path().join("trace");
        let out = run_bounded(
            vmprobe()
                .args(["record", "--format", format, "-o"])
                .arg(&dir)
                .args(["kprobe:ksys_lseek", "--", "vmprobe-seq 6000"]),
            RUN_LIMIT,
        );
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(3), "{format}: partial: {stderr}");
        assert!(stderr.contains("No space left on device"), "{stderr}");
        let (kept, lost) = recorded_and_lost(&stderr);
        eprintln!("{format} on 96 KiB: {kept} events in the trace, {lost} lost");
        assert!(kept > 100 && lost > 100, "{format}: {stderr}");
        assert!(kept + lost >= 6000, "{format}: {stderr}");
        let seqs: Vec<u64> = if format == "perfetto" {
            let events = perfetto_events(&dir);
            let probes: Vec<_> = events.iter().filter(|e| e["ph"] != "M").collect();
            assert_eq!(probes.len() as u64, kept, "{stderr}");
            probes
                .iter()
                .filter_map(|e| e["args"]["offset"].as_u64())
                .collect()
        } else {
            assert!(
                stderr.contains("the trace counts them as discarded"),
                "{stderr}"
            );
            let read = Command::new("babeltrace2").arg(&dir).output().unwrap();
            assert!(read.status.success(), "{}", text(&read.stderr));
            let lines = text(&read.stdout);
            assert_eq!(lines.lines().count() as u64, kept);
            // babeltrace2's only complaint: the discarded events, as many
            // as vmprobe said.
            let said: u64 = text(&read.stderr)
                .lines()
                .map(|l| {
                    let n = l.strip_prefix("WARNING: Tracer discarded ");
                    n.and_then(|n| n.split(' ').next()?.parse::<u64>().ok())
                        .unwrap_or_else(|| panic!("{l}"))
                })
                .sum();
            assert_eq!(said, lost, "{}", text(&read.stderr));
            lines
                .lines()
                .filter_map(|l| event_field(l, "offset"))
                .collect()
        };
        assert!(seqs.len() > 100, "{} events", seqs.len());
        assert!(seqs.windows(2).all(|w| w[1] > w[0]), "in order");
    }
}
