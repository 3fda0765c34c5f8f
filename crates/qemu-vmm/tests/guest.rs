//! `serial_write` trace events from a booted guest, checked byte for byte
//! against what vmprobe received on the guest's console. Boots the default
//! guest with TCG through `qemu_guest::Vm` (skipped if it was never built).

use qemu_vmm::{FollowConfig, LogFollower, Qmp, TraceEvent, monotonic_ns};
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(10);

/// The data bytes the guest wrote to a UART transmit register, in order:
/// writes to offset 0 while the divisor latch (LCR bit 7) is clear. Offset
/// 3 is the LCR. Both UARTs share the event; only ttyS0 changes its LCR
/// during a workload (the control port stays open and configured).
fn transmitted(events: &[TraceEvent]) -> Vec<u8> {
    let mut dlab = false;
    let mut out = Vec::new();
    for e in events.iter().filter(|e| e.name == "serial_write") {
        let addr = e.field("addr").and_then(|v| v.as_u64()).unwrap();
        let val = e.field("val").and_then(|v| v.as_u64()).unwrap();
        match addr {
            3 => dlab = val & 0x80 != 0,
            0 if !dlab => out.push(val as u8),
            _ => {}
        }
    }
    out
}

#[test]
fn serial_write_matches_console_bytes() {
    let Some(image) = qemu_guest::default_guest(&qemu_guest::cache_dir()) else {
        eprintln!("default guest not built: skipping");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("qemu.log");
    let console = Arc::new(Mutex::new(Vec::<u8>::new()));
    let mut cfg = qemu_guest::LaunchConfig::new(image);
    cfg.console = Some(console.clone() as Arc<Mutex<dyn Write + Send>>);
    cfg.log_file = Some(log.clone());
    let mut vm = qemu_guest::Vm::launch(&cfg).unwrap();
    assert_eq!(vm.log_file(), Some(log.as_path()));
    let mut qmp = Qmp::connect_unix_wait(&vm.qmp_socket(), T).unwrap();
    qmp.cont().unwrap();
    vm.wait_ready(Duration::from_secs(180)).unwrap();

    let follower = LogFollower::spawn(&log, FollowConfig::default()).unwrap();
    let console_len = || console.lock().unwrap().len();
    // Lowercase only: disjoint from the control channel's "VMPROBE:EXIT 0\n".
    let line = "abcdefghijklmnopqrstuvwxyz";
    let workload = format!("for i in $(seq 40); do printf {line}; done");

    let t_on = monotonic_ns();
    qmp.trace_event_set_state("serial_write", true).unwrap();
    let c0 = console_len();
    vm.start_workload(&workload).unwrap();
    assert_eq!(vm.wait_exit(Duration::from_secs(60)).unwrap(), 0);
    // Let the console socket deliver what the UART sent.
    let expect = c0 + 40 * line.len();
    let deadline = Instant::now() + T;
    while console_len() < expect && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(200));
    qmp.trace_event_set_state("serial_write", false).unwrap();
    let t_off = monotonic_ns();
    let got_console = console.lock().unwrap()[c0..].to_vec();
    follower.sync(T).unwrap();
    let events = follower.drain();

    // The guest wrote the UART from its vCPU's thread.
    let vcpu_threads: Vec<u32> = qmp
        .query_cpus_fast()
        .unwrap()
        .iter()
        .map(|c| c.thread_id)
        .collect();
    assert!(
        events
            .iter()
            .all(|e| e.tid.is_some_and(|t| vcpu_threads.contains(&t))),
        "{vcpu_threads:?}"
    );
    let tx = transmitted(&events);
    let (to_console, to_control): (Vec<u8>, Vec<u8>) =
        tx.iter().partition(|b| b.is_ascii_lowercase());
    assert_eq!(
        String::from_utf8_lossy(&to_console),
        String::from_utf8_lossy(&got_console)
    );
    assert_eq!(got_console, line.repeat(40).as_bytes());
    assert_eq!(to_control, b"VMPROBE:EXIT 0\n");
    let slack = follower.clock().unwrap().max_error_ns();
    for e in &events {
        assert!(
            e.ts_ns + slack >= t_on && e.ts_ns <= t_off + slack,
            "{} not in [{t_on}, {t_off}]",
            e.ts_ns
        );
    }
    assert!(events.windows(2).all(|w| w[0].ts_ns <= w[1].ts_ns));

    // Disabled: a second workload's output leaves no events.
    vm.start_workload(&workload).unwrap();
    assert_eq!(vm.wait_exit(Duration::from_secs(60)).unwrap(), 0);
    std::thread::sleep(Duration::from_millis(200));
    follower.sync(T).unwrap();
    assert!(follower.drain().is_empty());
    let stats = follower.stop();
    assert_eq!((stats.dropped, stats.skipped), (0, 0), "{stats:?}");
    eprintln!(
        "{} serial_write events, {} console bytes, {stats:?}",
        events.len(),
        got_console.len()
    );
    vm.shutdown(Duration::from_secs(30)).unwrap();
    let ev = qmp.wait_event("SHUTDOWN", T).unwrap();
    assert_eq!(ev.data["guest"], true, "{ev:?}");
    assert!(matches!(
        qmp.query_status(),
        Err(qemu_vmm::Error::Closed { .. })
    ));
}
