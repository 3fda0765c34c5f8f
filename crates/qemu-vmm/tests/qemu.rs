//! Against a real QEMU with no guest (`-M pc -S`, SeaBIOS only): QMP,
//! trace-event control, log parsing and clock conversion, gdbstub opened at
//! run time. Skipped when qemu-system-x86_64 is not installed.

use qemu_vmm::{Error, FollowConfig, LogFollower, Qmp, RunState, TraceEventState, monotonic_ns};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(10);

/// A paused QEMU whose QMP socket and log are in a private directory; killed
/// on drop (also on panic).
struct Qemu {
    child: Child,
    dir: tempfile::TempDir,
}

impl Qemu {
    fn qmp(&self) -> PathBuf {
        self.dir.path().join("qmp.sock")
    }
    fn log(&self) -> PathBuf {
        self.dir.path().join("qemu.log")
    }
}

impl Drop for Qemu {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(extra: &[&str]) -> Option<Qemu> {
    let ok = Command::new("qemu-system-x86_64")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        eprintln!("qemu-system-x86_64 not installed: skipping");
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let child = Command::new("qemu-system-x86_64")
        .args([
            "-M",
            "pc",
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-S",
            "-accel",
            "tcg",
            "-cpu",
            "qemu64",
            "-m",
            "64",
            "-msg",
            "timestamp=on",
        ])
        .arg("-qmp")
        .arg(format!(
            "unix:{},server=on,wait=off",
            dir.path().join("qmp.sock").display()
        ))
        .arg("-D")
        .arg(dir.path().join("qemu.log"))
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let q = Qemu { child, dir };
    let deadline = Instant::now() + T;
    while !q.qmp().exists() {
        assert!(
            Instant::now() < deadline,
            "QEMU's QMP socket never appeared"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    Some(q)
}

#[test]
fn handshake_status_events_and_trace_list() {
    let Some(vm) = start(&["-smp", "2"]) else {
        return;
    };
    let mut q = Qmp::connect_unix_wait(&vm.qmp(), T).unwrap();
    let v = q.greeting().version.qemu;
    assert!(v.major >= 7, "{v:?}");

    let st = q.query_status().unwrap();
    assert!(!st.running);
    assert_eq!(st.status, RunState::Prelaunch);
    let cpus = q.query_cpus_fast().unwrap();
    assert_eq!(cpus.len(), 2);
    assert_eq!((cpus[0].cpu_index, cpus[1].cpu_index), (0, 1));
    assert_ne!(cpus[0].thread_id, cpus[1].thread_id);
    assert_eq!(cpus[0].target, "x86_64");
    q.cont().unwrap();
    q.wait_event("RESUME", T).unwrap();
    let st = q.query_status().unwrap();
    assert!(st.running);
    assert_eq!(st.status, RunState::Running);
    q.stop().unwrap();
    let stop = q.wait_event("STOP", T).unwrap();
    assert!(stop.realtime_us.is_some());
    assert_eq!(q.query_status().unwrap().status, RunState::Paused);

    let all = q.trace_event_list("*").unwrap();
    assert!(all.len() > 4000, "{} events", all.len());
    // The binary lists the same events without a VM.
    let mut from_binary = qemu_vmm::trace::list_events_from_binary(
        "qemu-system-x86_64".as_ref(),
        Duration::from_secs(30),
    )
    .unwrap();
    let mut from_qmp: Vec<String> = all.iter().map(|e| e.name.clone()).collect();
    from_binary.sort();
    from_qmp.sort();
    assert_eq!(from_binary, from_qmp);
    let serial = q.trace_event_list("serial_*").unwrap();
    let w = serial.iter().find(|e| e.name == "serial_write").unwrap();
    assert_eq!(w.state, TraceEventState::Disabled);
    // QEMU 7.2 has no `serial_ioport_write` (renamed `serial_write` in 5.x):
    // a name without wildcards must exist, a pattern may match nothing.
    assert!(matches!(
        q.trace_event_list("serial_ioport_write"),
        Err(Error::Qmp { .. })
    ));
    assert!(q.trace_event_list("serial_ioport_*").unwrap().is_empty());

    q.trace_event_set_state("serial_write", true).unwrap();
    let w = q.trace_event_list("serial_write").unwrap();
    assert_eq!(w[0].state, TraceEventState::Enabled);
    q.trace_event_set_state("serial_*", false).unwrap();
    assert!(
        q.trace_event_list("serial_*")
            .unwrap()
            .iter()
            .all(|e| e.state == TraceEventState::Disabled)
    );

    match q.trace_event_set_state("no_such_event", true) {
        Err(Error::Qmp { class, desc, .. }) => {
            assert_eq!(class, "GenericError");
            assert!(desc.contains("no_such_event"), "{desc}");
        }
        other => panic!("{other:?}"),
    }
    match q.execute_raw("no-such-command", None) {
        Err(Error::Qmp { class, .. }) => assert_eq!(class, "CommandNotFound"),
        other => panic!("{other:?}"),
    }
    // The session still works after errors.
    assert!(!q.query_status().unwrap().running);
    let out = q.human_monitor_command("info status").unwrap();
    assert!(out.contains("paused"), "{out}");
    q.quit().unwrap();
}

/// Events on, events off, every line parsed, and the clock conversion
/// checked against the host. For each QMP command QEMU logs
/// `handle_qmp_command` (monitor thread, on reading the request),
/// `monitor_qmp_cmd_in_band` (main loop, on dispatch; its message is the
/// id) and `monitor_qmp_respond` (before writing the reply). Converted to
/// CLOCK_MONOTONIC they must lie, in that order, between sending the request
/// and reading the reply; the closest approach to either end bounds the
/// conversion error from measurement alone.
#[test]
fn trace_events_on_off_and_clock_error() {
    let Some(vm) = start(&[]) else { return };
    let mut q = Qmp::connect_unix_wait(&vm.qmp(), T).unwrap();
    let follower = LogFollower::spawn(vm.log(), FollowConfig::default()).unwrap();
    let clock = loop {
        if let Some(c) = follower.clock() {
            break c;
        }
        std::thread::sleep(Duration::from_millis(1));
    };

    let events = "monitor_qmp_cmd_in_band";
    q.trace_event_set_state(events, true).unwrap();
    q.trace_event_set_state("handle_qmp_command", true).unwrap();
    q.trace_event_set_state("monitor_qmp_respond", true)
        .unwrap();
    let mut brackets = Vec::new();
    for _ in 0..300 {
        let t0 = monotonic_ns();
        q.query_status().unwrap();
        let t1 = monotonic_ns();
        brackets.push((t0, t1));
    }
    q.trace_event_set_state("monitor_qmp_*", false).unwrap();
    q.trace_event_set_state("handle_qmp_command", false)
        .unwrap();
    for _ in 0..20 {
        q.query_status().unwrap();
    }
    follower.sync(T).unwrap();
    let got = follower.drain();
    let stats = follower.stop();
    assert_eq!(stats.dropped, 0);
    assert_eq!(stats.skipped, 0, "{stats:?}");

    // The request/reply id, from the in-band event's field or the JSON text.
    let id_of = |e: &qemu_vmm::TraceEvent| -> u64 {
        if e.name == "monitor_qmp_cmd_in_band" {
            return e.field("arg0").and_then(|v| v.as_u64()).unwrap();
        }
        let at = e.message.find("\"id\": ").unwrap() + 6;
        let digits: String = e.message[at..]
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        digits.parse().unwrap()
    };
    let in_band: Vec<u64> = got
        .iter()
        .filter(|e| e.name == "monitor_qmp_cmd_in_band")
        .map(id_of)
        .collect();
    // A set-state is logged only once it has taken effect for that event:
    // ids run from the two set-states after the first one, through the 300
    // query-status, to the disabling `monitor_qmp_*`, consecutively.
    assert_eq!(in_band.len(), 303, "{in_band:?}");
    assert!(in_band.windows(2).all(|w| w[1] == w[0] + 1), "{in_band:?}");
    let base = in_band[2];

    let err = clock.max_error_ns() as i64;
    let (mut after_send, mut before_reply) = (i64::MAX, i64::MAX);
    let mut widths = Vec::new();
    for (i, &(t0, t1)) in brackets.iter().enumerate() {
        let id = base + i as u64;
        let stamp = |name: &str| {
            let e = got
                .iter()
                .find(|e| e.name == name && id_of(e) == id)
                .unwrap_or_else(|| panic!("no {name} for id {id}"));
            assert!(e.tid.is_some());
            e.ts_ns as i64
        };
        let (h, b, r) = (
            stamp("handle_qmp_command"),
            stamp("monitor_qmp_cmd_in_band"),
            stamp("monitor_qmp_respond"),
        );
        assert!(h <= b && b <= r, "order {h} {b} {r}");
        after_send = after_send.min(h - t0 as i64);
        before_reply = before_reply.min(t1 as i64 - r);
        widths.push(t1 - t0);
    }
    widths.sort_unstable();
    eprintln!(
        "clock: offset bracket ±{} ns, stated max error {} ns; QMP round trip median {} us; \
         closest stamp after send {} ns, closest before reply {} ns \
         (so the conversion error is within -{}..+{} ns by measurement)",
        clock.uncertainty_ns,
        err,
        widths[widths.len() / 2] / 1000,
        after_send,
        before_reply,
        after_send.max(0),
        before_reply.max(0),
    );
    assert!(
        after_send >= -err,
        "stamp {after_send} ns before the request"
    );
    assert!(
        before_reply >= -err,
        "stamp {} ns after the reply",
        -before_reply
    );
}

#[test]
fn guest_activity_is_parsed_with_fields() {
    let Some(vm) = start(&[]) else { return };
    let mut q = Qmp::connect_unix_wait(&vm.qmp(), T).unwrap();
    let follower = LogFollower::spawn(vm.log(), FollowConfig::default()).unwrap();
    q.trace_event_set_state("memory_region_ops_write", true)
        .unwrap();
    q.cont().unwrap();
    // SeaBIOS prints its banner on the debug console (port 0x402).
    let deadline = Instant::now() + T;
    let mut debugcon = Vec::new();
    while Instant::now() < deadline && !debugcon.ends_with(b"\n") {
        if let Some(e) = follower.recv_timeout(Duration::from_millis(50)) {
            assert_eq!(e.name, "memory_region_ops_write");
            let name = e
                .field("name")
                .and_then(|v| v.as_str())
                .unwrap()
                .to_string();
            let addr = e.field("addr").and_then(|v| v.as_u64()).unwrap();
            let size = e.field("size").and_then(|v| v.as_u64()).unwrap();
            assert!(e.field("cpu").and_then(|v| v.as_i64()).is_some());
            assert!(e.field("mr").is_some());
            if name == "io" && addr == 0x402 {
                assert_eq!(size, 1);
                debugcon.push(e.field("value").and_then(|v| v.as_u64()).unwrap() as u8);
            }
        }
    }
    q.trace_event_set_state("memory_region_ops_write", false)
        .unwrap();
    let text = String::from_utf8_lossy(&debugcon);
    assert!(text.starts_with("SeaBIOS"), "{text:?}");
    follower.sync(T).unwrap();
    let _ = follower.drain();
    // Disabled: nothing more arrives while the firmware keeps running.
    std::thread::sleep(Duration::from_millis(300));
    follower.sync(T).unwrap();
    assert!(follower.drain().is_empty());
    let stats = follower.stop();
    assert_eq!((stats.dropped, stats.skipped), (0, 0), "{stats:?}");
}

/// A gdbstub opened at run time on a VM started without `-gdb`.
#[test]
fn gdbstub_at_run_time_tcp_and_unix() {
    let Some(vm) = start(&[]) else { return };
    let mut q = Qmp::connect_unix_wait(&vm.qmp(), T).unwrap();
    let addr = q.open_gdbstub_tcp(0).unwrap();
    assert!(addr.ip().is_loopback());
    let mut gdb = gdb_remote::Client::connect_tcp(addr, T).unwrap();
    let threads = gdb.threads().unwrap();
    assert_eq!(threads.len(), 1);
    // The reset vector: CS base 0xffff0000, IP 0xfff0.
    assert_eq!(gdb.read_register(threads[0], "rip").unwrap(), 0xfff0);
    let mut mem = [0u8; 4];
    gdb.read_memory(0xffff_fff0, &mut mem).unwrap();
    assert_eq!(mem[0], 0xea, "far jmp at the reset vector");
    gdb.detach().unwrap();
    drop(gdb);
    q.close_gdbstub().unwrap();

    // Again on a running VM, over a Unix socket: connecting stops the VM
    // (QEMU does so when a debugger attaches), detaching resumes it.
    q.cont().unwrap();
    assert!(q.query_status().unwrap().running);
    let sock = vm.dir.path().join("gdb-late.sock");
    q.open_gdbstub_unix(&sock).unwrap();
    let mut gdb = gdb_remote::Client::connect_unix(&sock, T).unwrap();
    let threads = gdb.threads().unwrap();
    assert_eq!(threads.len(), 1);
    assert_ne!(gdb.read_register(threads[0], "rip").unwrap(), 0xfff0);
    assert!(!q.query_status().unwrap().running);
    gdb.detach().unwrap();
    let deadline = Instant::now() + T;
    while !q.query_status().unwrap().running {
        assert!(Instant::now() < deadline, "VM not resumed after detach");
        std::thread::sleep(Duration::from_millis(10));
    }
}
