//! Issue 14, "Liveness and honest exits": `vmprobe attach` against a fake
//! GDB stub that misbehaves on purpose: garbage instead of replies, wrong
//! checksums, 10 MB packets, silence (from the start, and after the
//! handshake), a connection closed after `qSupported`, replies trickled a
//! byte a second, floods of unsolicited stop replies and console output.
//! Each case ends in bounded time (a hang detector, not a performance
//! limit) and bounded memory (vmprobe's high-water mark, read from /proc
//! while it runs, against a run on a stub that behaves), without a panic:
//! with one line on stderr naming the problem and exit status 1 (nothing
//! was probed), or, for the floods, by probing through them until
//! `--duration` ends the run. No guest boots: the stub is a thread of the
//! test, whose memory holds the kernel image's `.text` samples so that
//! vmprobe finds the slide as on QEMU. Each case prints its time, peak
//! memory and line (`--nocapture`).

mod support;
use std::process::Child;
use std::sync::OnceLock;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use support::stub::{FakeStub, Hostile, Memory, Stall};
use support::*;

const PROGRAM: &str = "kprobe:ksys_write { @c = count(); }";
/// Hang detector: every case ends well within this.
const LIMIT: Duration = Duration::from_secs(60);
/// How far above a run on a stub that behaves vmprobe's peak memory may
/// go: well under one 10 MB packet (buffered whole, one shows as 8 to 9
/// MiB more), far under a flood; the cases seen stay within 2 MiB of it.
const MARGIN_KIB: u64 = 4 * 1024;
/// A run whose memory passes this is killed at once (before the machine
/// runs out).
const RUNAWAY_KIB: u64 = 1024 * 1024;
/// 10 MB, the size of the packets of case 3.
const TEN_MB: usize = 10_000_000;

/// How a run of `vmprobe attach` ended.
struct Ended {
    code: i32,
    took: Duration,
    /// Peak resident memory (VmHWM), KiB, as last seen before it exited.
    peak_kib: u64,
    stdout: String,
    stderr: String,
}

/// The stub's memory: the default guest kernel's `.text` samples.
fn memory() -> Memory {
    static MEMORY: OnceLock<Memory> = OnceLock::new();
    MEMORY
        .get_or_init(|| Memory::kernel_text(&default_guest().kernel))
        .clone()
}

/// Runs `vmprobe attach` on `stub` until it exits.
fn attach(stub: &FakeStub, extra: &[&str]) -> Ended {
    let kernel = default_guest().kernel;
    let start = Instant::now();
    let (child, stdout, stderr) = spawn_collected(
        vmprobe()
            .args(["attach", "--vm", &stub.vm_spec(&kernel), "-e", PROGRAM])
            .args(extra),
    );
    let (code, peak_kib) = wait_measured(child, &stderr);
    Ended {
        code,
        took: start.elapsed(),
        peak_kib,
        stdout: stdout.finish(),
        stderr: stderr.finish(),
    }
}

/// Waits for `child` to exit, reading its high-water mark every 2 ms
/// (`ru_maxrss` from `wait4` would not do: it counts the test process's
/// memory at the fork as the child's): its exit status (-1 if a signal
/// ended it) and the last high-water mark seen, KiB. Kills it, and fails,
/// at [`LIMIT`] or once the mark passes [`RUNAWAY_KIB`].
fn wait_measured(mut child: Child, stderr: &Collected) -> (i32, u64) {
    let start = Instant::now();
    let mut peak = 0;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return (status.code().unwrap_or(-1), peak);
        }
        peak = peak.max(high_water_kib(child.id()));
        if start.elapsed() > LIMIT || peak > RUNAWAY_KIB {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "vmprobe killed after {:?} at {peak} KiB:\n{}",
                start.elapsed(),
                stderr.text()
            );
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// VmHWM of a running process, KiB (0 once it has exited).
fn high_water_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// The reference run: a stub that behaves, probed for a second.
fn behaving_run() -> &'static Ended {
    static RUN: OnceLock<Ended> = OnceLock::new();
    RUN.get_or_init(|| {
        let stub = FakeStub::hostile(Hostile::Behaves, memory());
        let ended = attach(&stub, &["--duration", "1"]);
        eprintln!(
            "stub that behaves: exit {} after {:?}, peak {} KiB",
            ended.code, ended.took, ended.peak_kib
        );
        ended
    })
}

/// Says how `case` ended, for quoting, and checks its memory stayed
/// within [`MARGIN_KIB`] of the run on a stub that behaves.
fn report(case: &str, stub: &FakeStub, e: &Ended) {
    let base = behaving_run().peak_kib;
    eprintln!(
        "{case}: exit {} after {:?}, peak {} KiB ({:+} KiB on a stub that behaves), \
         the stub sent {} bytes\nstderr: {}",
        e.code,
        e.took,
        e.peak_kib,
        e.peak_kib as i64 - base as i64,
        stub.sent.load(Ordering::SeqCst),
        e.stderr.trim_end()
    );
    assert!(
        e.peak_kib < base + MARGIN_KIB,
        "{case}: peak {} KiB, {base} KiB on a stub that behaves",
        e.peak_kib
    );
}

/// An attach that failed before probing: status 1, and stderr is one
/// line, `vmprobe: vm0: ...`, containing each of `says`.
fn assert_one_line_error(e: &Ended, says: &[&str]) {
    assert_eq!(e.code, 1, "{}", e.stderr);
    let lines: Vec<&str> = e.stderr.lines().collect();
    let [line] = lines[..] else {
        panic!("not one line:\n{}", e.stderr);
    };
    assert!(line.starts_with("vmprobe: vm0: "), "{line}");
    for s in says {
        assert!(line.contains(s), "no {s:?} in {line}");
    }
}

/// Runs an attach on a stub misbehaving as `how`, reports it, and checks
/// it failed with one line saying `says`.
fn fails(case: &str, how: Hostile, says: &[&str]) -> Ended {
    let stub = FakeStub::hostile(how, memory());
    let ended = attach(&stub, &[]);
    report(case, &stub, &ended);
    assert_one_line_error(&ended, says);
    ended
}

/// The control: on a stub that behaves vmprobe attaches (the slide found
/// in the stub's memory), probes until `--duration` and detaches. Each
/// `Hostile` stub below differs from this one in one way.
#[test]
fn a_stub_that_behaves_is_probed_until_the_duration_ends() {
    let e = behaving_run();
    assert_eq!(e.code, 0, "{}", e.stderr);
    assert_eq!(
        e.stderr.trim_end(),
        "vmprobe: attached to vm0, KASLR slide 0x0"
    );
    assert!(e.stdout.starts_with("Attaching 1 probe..."), "{}", e.stdout);
    // The stub stops only when interrupted: no hit.
    assert_eq!(map_value(&e.stdout, "c"), 0, "{}", e.stdout);
}

/// Case 1: random bytes instead of replies (some of them `$`, `#`, `*`).
#[test]
fn random_bytes_instead_of_replies_are_one_error() {
    let says = ["connecting to the GDB stub: malformed packet from gdb stub ("];
    let e = fails("random bytes", Hostile::RandomBytes, &says);
    // The bytes shown are cut to a readable line, escapes and all.
    assert!(e.stderr.len() < 400, "{}", e.stderr);
}

/// Case 1: noise in which no packet ever starts, endlessly.
#[test]
fn noise_that_is_never_a_packet_is_an_error_at_the_reply_timeout() {
    let says = [
        "connecting to the GDB stub: timed out waiting for reply to `qSupported",
        " bytes received, not one whole packet)",
    ];
    fails("noise", Hostile::Noise, &says);
}

/// Case 2: a wrong checksum on every reply, retransmissions included.
#[test]
fn wrong_checksums_on_every_reply_are_one_error() {
    let says = [
        "connecting to the GDB stub: malformed packet from gdb stub (checksum mismatch",
        "PacketSize=1000",
    ];
    fails("wrong checksums", Hostile::BadChecksums, &says);
}

/// Case 3: a reply of 10 MB that never ends is given up at 1 MiB.
#[test]
fn an_unterminated_10_mb_reply_is_rejected_at_1_mib() {
    let says = [
        "connecting to the GDB stub: malformed packet from gdb stub (packet larger than 1 MiB): aaaa",
        "... (1048576 bytes)",
    ];
    fails(
        "unterminated 10 MB reply",
        Hostile::Unterminated(TEN_MB),
        &says,
    );
}

/// Case 3: a well-formed 10 MB reply to a memory read, after the
/// handshake: given up at 1 MiB, and the detach after it still works.
#[test]
fn a_well_formed_10_mb_reply_is_rejected_at_1_mib() {
    let says = [
        "finding the KASLR slide: malformed packet from gdb stub (packet larger than 1 MiB): 0000",
        "... (1048576 bytes)",
    ];
    fails("well-formed 10 MB reply", Hostile::Huge(TEN_MB), &says);
}

/// Case 4: a stub that accepts and never answers, and no signal: one
/// reply timeout (5 s) ends the handshake.
#[test]
fn a_stub_that_never_answers_is_an_error_after_one_reply_timeout() {
    let stub = FakeStub::start(Stall::AtOnce);
    let e = attach(&stub, &[]);
    report("never answers", &stub, &e);
    let says = ["connecting to the GDB stub: timed out waiting for reply to `qSupported"];
    assert_one_line_error(&e, &says);
    assert!(e.stderr.trim_end().ends_with('`'), "{}", e.stderr);
    assert_eq!(stub.packets.load(Ordering::SeqCst), 1);
}

/// Case 4 after the handshake: the first memory read is never answered,
/// nor the detach after it (one reply timeout each); the line says both,
/// in that order.
#[test]
fn a_stub_silent_after_the_handshake_is_one_error() {
    let stub = FakeStub::start(Stall::AfterHandshake);
    let e = attach(&stub, &[]);
    report("silent after the handshake", &stub, &e);
    let says = [
        "finding the KASLR slide: timed out waiting for reply to `m",
        "`; detaching after it failed too (the VM may still be stopped): \
         timed out waiting for reply to `D;1`",
    ];
    assert_one_line_error(&e, &says);
}

/// Case 5: `qSupported` answered, then the connection closed.
#[test]
fn a_stub_that_closes_after_qsupported_is_one_error() {
    let e = fails(
        "closes after qSupported",
        Hostile::CloseAfterQSupported,
        &[],
    );
    // Whether the next request went out before the close is a race.
    let closed = "vmprobe: vm0: connecting to the GDB stub: gdb stub closed the connection while";
    let either = [
        format!("{closed} sending `QStartNoAckMode`"),
        format!("{closed} waiting for reply to `QStartNoAckMode`"),
    ];
    assert!(
        either.contains(&e.stderr.trim_end().to_string()),
        "{}",
        e.stderr
    );
}

/// Case 6: every reply trickled a byte a second, from the handshake on:
/// the first reply is not whole at its timeout.
#[test]
fn a_stub_trickling_from_the_handshake_on_is_an_error_at_the_reply_timeout() {
    let trickle = Hostile::Trickle(Duration::from_secs(1));
    let says = [
        "connecting to the GDB stub: timed out waiting for reply to `qSupported",
        " bytes received, not one whole packet)",
    ];
    fails("trickle", trickle, &says);
}

/// Attaches through a flood of `packet`, probing for 3 s: vmprobe must
/// attach, serve until `--duration` and detach as on a stub that behaves.
fn probed_through(case: &str, packet: &'static str) -> Ended {
    let stub = FakeStub::hostile(Hostile::Flood(packet), memory());
    let e = attach(&stub, &["--duration", "3"]);
    report(case, &stub, &e);
    assert_eq!(e.code, 0, "{}", e.stderr);
    assert_eq!(
        e.stderr.trim_end(),
        "vmprobe: attached to vm0, KASLR slide 0x0"
    );
    assert!(e.stdout.starts_with("Attaching 1 probe..."), "{}", e.stdout);
    e
}

/// Case 7: unsolicited console output (`O` packets) from the connection
/// on, faster than vmprobe reads: none of it is taken as a reply (it is
/// kept, up to 1 MiB, as a running guest's output).
#[test]
fn a_flood_of_console_output_is_probed_through() {
    let e = probed_through("console output flood", "O666c6f6f640a");
    assert_eq!(map_value(&e.stdout, "c"), 0, "{}", e.stdout);
}

/// Case 7: unsolicited stop replies with a thread from the connection
/// on: none is taken as the reply to a request; while the guest runs,
/// each is a stop of that vCPU at the one probe site (all vmprobe can
/// tell without reading its pc), served as a hit.
#[test]
fn a_flood_of_stop_replies_is_probed_through() {
    let e = probed_through("stop reply flood", "T05thread:p01.01;");
    let hits = map_value(&e.stdout, "c");
    eprintln!("stop reply flood: @c {hits}");
    assert!(hits > 0, "{}", e.stdout);
}

/// Case 7: unsolicited stop replies without a thread: while the guest
/// runs, each is a stray stop (no probe's), and the guest is resumed.
#[test]
fn a_flood_of_threadless_stop_replies_is_probed_through() {
    let e = probed_through("threadless stop reply flood", "S05");
    assert_eq!(map_value(&e.stdout, "c"), 0, "{}", e.stdout);
}
