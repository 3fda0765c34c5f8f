//! Issue 17, item 3: a stub that stalls while `vmprobe attach` connects or
//! looks for the KASLR slide. SIGINT and SIGTERM end it within a second,
//! `--duration` when it says, a silent stub after one reply timeout (5 s),
//! and a stub that answers too slowly at the slide search's deadline. No
//! guest boots: the stub is a thread of the test.

mod support;
use rustix::process::{Pid, Signal};
use std::process::Child;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use support::stub::{FakeStub, Stall};
use support::*;

const PROGRAM: &str = "kprobe:ksys_write { @c = count(); }";

fn attach(stub: &FakeStub, extra: &[&str]) -> (Child, Collected) {
    let kernel = default_guest().kernel;
    let (child, _, stderr) = spawn_collected(
        vmprobe()
            .args(["attach", "--vm", &stub.vm_spec(&kernel), "-e", PROGRAM])
            .args(extra),
    );
    (child, stderr)
}

/// Waits until `count` reaches `n` (the stub got that far).
fn wait_until(count: &std::sync::atomic::AtomicUsize, n: usize) {
    let start = Instant::now();
    while count.load(Ordering::SeqCst) < n {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "the stub saw too little"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Sends `signal` and waits: how long vmprobe took to exit, its status and
/// its stderr.
fn signal_and_wait(child: Child, stderr: Collected, signal: Signal) -> (Duration, i32, String) {
    let pid = Pid::from_raw(child.id() as i32).unwrap();
    rustix::process::kill_process(pid, signal).unwrap();
    wait_exit(child, stderr)
}

/// Waits for vmprobe: how long it took from now, its status and stderr.
fn wait_exit(mut child: Child, stderr: Collected) -> (Duration, i32, String) {
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(start.elapsed() < Duration::from_secs(120), "still running");
        std::thread::sleep(Duration::from_millis(5));
    };
    (
        start.elapsed(),
        status.code().unwrap_or(-1),
        stderr.finish(),
    )
}

/// Attaches to a stub that stalls as `stall`, sends `signal` once the
/// stub has seen `reads` memory reads (0: any packet) and 300 ms more, and
/// checks vmprobe ends within a second with `code`, saying `says`.
fn interrupt(stall: Stall, reads: usize, signal: Signal, code: i32, says: &str) {
    let stub = FakeStub::start(stall);
    let (child, stderr) = attach(&stub, &[]);
    match reads {
        0 => wait_until(&stub.packets, 1),
        n => wait_until(&stub.reads, n),
    }
    std::thread::sleep(Duration::from_millis(300));
    let (took, got, err) = signal_and_wait(child, stderr, signal);
    eprintln!("{stall:?}, {signal:?}: exit {got} after {took:?}");
    assert!(took < Duration::from_secs(1), "{took:?}: {err}");
    assert_eq!(got, code, "{err}");
    assert!(err.contains(says), "{err}");
}

#[test]
fn sigint_while_finding_the_slide_ends_within_a_second() {
    let says = "vm0: interrupted by SIGINT while finding the KASLR slide";
    interrupt(Stall::AfterHandshake, 1, Signal::INT, 130, says);
}

#[test]
fn sigterm_during_the_handshake_ends_within_a_second() {
    let says = "vm0: interrupted by SIGTERM while connecting to the GDB stub";
    interrupt(Stall::AtOnce, 0, Signal::TERM, 143, says);
}

#[test]
fn sigint_while_a_stub_drips_its_replies_ends_within_a_second() {
    let drip = Stall::Drip(Duration::from_millis(200));
    interrupt(drip, 2, Signal::INT, 130, "vm0: interrupted by SIGINT");
}

#[test]
fn duration_ends_an_attach_whose_stub_went_silent() {
    let stub = FakeStub::start(Stall::AfterHandshake);
    let (child, stderr) = attach(&stub, &["--duration", "3"]);
    // The 3 s count from before connecting, after the kernel is loaded.
    wait_until(&stub.packets, 1);
    let (took, code, err) = wait_exit(child, stderr);
    eprintln!("--duration 3 with a silent stub: exit {code} {took:?} after connecting");
    assert!(took < Duration::from_millis(4500), "{took:?}: {err}");
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("vm0: --duration 3 s ran out while finding the KASLR slide"),
        "{err}"
    );
}

/// One reply timeout (5 s) ends the search, not one per candidate slide
/// (over 500 of them); the detach after it waits one more.
#[test]
fn a_silent_stub_is_an_error_after_one_reply_timeout() {
    let stub = FakeStub::start(Stall::AfterHandshake);
    let (child, stderr) = attach(&stub, &[]);
    let (took, code, err) = wait_exit(child, stderr);
    eprintln!("silent stub: exit {code} after {took:?}");
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("timed out waiting for reply to `m"), "{err}");
    assert_eq!(stub.reads.load(Ordering::SeqCst), 1, "{err}");
    assert!(took < Duration::from_secs(20), "{took:?}: {err}");
}

/// A stub that answers each read in 1.4 s (a byte per 200 ms) would take
/// 12 minutes over every candidate; the search gives up at its deadline.
#[test]
fn a_stub_too_slow_for_the_slide_search_meets_its_deadline() {
    let stub = FakeStub::start(Stall::Drip(Duration::from_millis(200)));
    let (child, stderr) = attach(&stub, &[]);
    let (took, code, err) = wait_exit(child, stderr);
    eprintln!("dripping stub: exit {code} after {took:?}");
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("KASLR slide detection gave up after 30 s"),
        "{err}"
    );
    let limit = backend_gdb::SLIDE_DEADLINE + Duration::from_secs(15);
    assert!(took < limit, "{took:?}: {err}");
}
