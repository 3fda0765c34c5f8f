//! Issue 14, "Liveness and honest exits": `vmprobe attach` through a GDB
//! stub that stops answering while the run is served (its QEMU stopped
//! with SIGSTOP, say). vmprobe says so, waits for the reply it is owed up
//! to `--stall-timeout`, and goes on if it comes (1); otherwise the run
//! ends with what was collected, exit status 3 (2); and a stalled guest
//! does not stall another (3). The stub is a thread of the test whose
//! guest hits the probe every 10 ms, then goes silent on the next packet
//! it owes an answer to. Times are hang detectors, not performance limits;
//! each case prints what it measured (`--nocapture`).

mod support;
use std::process::Child;
use std::sync::OnceLock;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use support::stub::{FakeStub, Hostile, Memory};
use support::*;

/// Hang detector: every case ends well within this.
const LIMIT: Duration = Duration::from_secs(90);
/// Hits served before the stub goes silent.
const HITS_BEFORE: usize = 30;

fn memory() -> Memory {
    static MEMORY: OnceLock<Memory> = OnceLock::new();
    MEMORY
        .get_or_init(|| Memory::kernel_text(&default_guest().kernel))
        .clone()
}

struct Ended {
    code: i32,
    took: Duration,
    stdout: String,
    stderr: String,
}

/// Runs `vmprobe attach` with `args` until it exits (killed, and the test
/// failed, at [`LIMIT`]).
fn attach(args: &[String]) -> Ended {
    let start = Instant::now();
    let (child, stdout, stderr) = spawn_collected(vmprobe().arg("attach").args(args));
    let code = wait_bounded(child, &stderr);
    Ended {
        code,
        took: start.elapsed(),
        stdout: stdout.finish(),
        stderr: stderr.finish(),
    }
}

fn wait_bounded(mut child: Child, stderr: &Collected) -> i32 {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status.code().unwrap_or(-1);
        }
        if start.elapsed() > LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "vmprobe killed after {:?}:\n{}",
                start.elapsed(),
                stderr.text()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `--vm` for `stub` as `name`, and the program.
fn vm(stub: &FakeStub, name: &str) -> [String; 2] {
    let kernel = default_guest().kernel;
    ["--vm".into(), stub.vm_spec_named(name, &kernel)]
}

fn args(parts: &[&[String]], rest: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = parts.iter().flat_map(|p| p.iter().cloned()).collect();
    v.extend(rest.iter().map(|s| s.to_string()));
    v
}

/// The count in a line `@c: N` (or `@[NAME]: N`) of the output.
fn count(stdout: &str, key: &str) -> u64 {
    stdout
        .lines()
        .find_map(|l| l.strip_prefix(key)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no `{key} N` in the output:\n{stdout}"))
}

fn report(case: &str, stub: &FakeStub, e: &Ended) {
    eprintln!(
        "{case}: exit {} after {:.1} s; stub sent {} hits, stalled on {:?}\n--- stdout\n{}--- stderr\n{}",
        e.code,
        e.took.as_secs_f64(),
        stub.hits.load(Ordering::SeqCst),
        stub.stalled_on.lock().unwrap(),
        e.stdout,
        e.stderr
    );
}

/// Silent for 8 s, within `--stall-timeout 30`: the notice, then "answers
/// again", and the run goes on to its `--duration`, exit status 0, every
/// hit counted.
#[test]
fn a_stub_silent_for_a_while_is_waited_for_and_the_run_goes_on() {
    let silent_for = Some(Duration::from_secs(8));
    let stub = FakeStub::hostile(
        Hostile::StallsAfter {
            hits: HITS_BEFORE,
            silent_for,
        },
        memory(),
    );
    let e = attach(&args(
        &[&vm(&stub, "vm0")],
        &[
            "-e",
            "kprobe:ksys_write { @c = count(); }",
            "--duration",
            "14",
            "--stall-timeout",
            "30",
        ],
    ));
    report("silent 8 s", &stub, &e);
    assert!(stub.stalled_on.lock().unwrap().is_some(), "never stalled");
    assert_eq!(e.code, 0, "{}", e.stderr);
    assert!(
        e.stderr.contains(
            "vmprobe: vm0: no reply from the gdb stub for 5 s; is QEMU stopped? \
             waiting up to 30 s (--stall-timeout)"
        ),
        "{}",
        e.stderr
    );
    let answers = e
        .stderr
        .lines()
        .find_map(|l| l.strip_prefix("vmprobe: vm0: the gdb stub answers again after "))
        .unwrap_or_else(|| panic!("no `answers again`:\n{}", e.stderr));
    let after: f64 = answers.trim_end_matches(" s").parse().unwrap();
    eprintln!("answered again after {after} s");
    assert!(after >= 7.5, "{after}");
    // The hits after the stall were served as well: the counts of vmprobe
    // and the stub agree (one may have raced with the final interrupt).
    let hits = stub.hits.load(Ordering::SeqCst) as u64;
    let c = count(&e.stdout, "@c:");
    assert!(hits > HITS_BEFORE as u64 + 50, "{hits} hits");
    assert!(c + 1 >= hits && c <= hits, "counted {c} of {hits} hits");
}

/// Silent for good, `--stall-timeout 6`: the notice at half of it, then
/// the run ends at it with what was collected, exit status 3, the reason
/// on stderr.
#[test]
fn a_stub_silent_for_good_ends_the_run_at_the_stall_timeout() {
    let stub = FakeStub::hostile(
        Hostile::StallsAfter {
            hits: HITS_BEFORE,
            silent_for: None,
        },
        memory(),
    );
    let e = attach(&args(
        &[&vm(&stub, "vm0")],
        &[
            "-e",
            "kprobe:ksys_write { @c = count(); }",
            "--stall-timeout",
            "6",
        ],
    ));
    report("silent for good", &stub, &e);
    assert_eq!(e.code, 3, "{}", e.stderr);
    assert!(
        e.stderr.contains(
            "vmprobe: vm0: no reply from the gdb stub for 3 s; is QEMU stopped? \
             waiting up to 6 s (--stall-timeout)"
        ),
        "{}",
        e.stderr
    );
    assert!(
        e.stderr
            .contains("no reply from the gdb stub for 6 s (--stall-timeout)"),
        "{}",
        e.stderr
    );
    assert!(!e.stderr.contains("answers again"), "{}", e.stderr);
    assert!(
        e.stderr
            .lines()
            .last()
            .unwrap_or("")
            .contains("exit status 3"),
        "{}",
        e.stderr
    );
    // What was collected before the stall is printed.
    assert_eq!(count(&e.stdout, "@c:"), HITS_BEFORE as u64, "{}", e.stdout);
    // Bounded by the stall timeout, not by anything longer.
    assert!(e.took < Duration::from_secs(40), "{:?}", e.took);
}

/// A stub whose connection closes while a handler reads guest memory (its
/// QEMU killed, say): the broken connection ends that VM's run right after
/// the handler, with what was collected and the read that broke it named,
/// rather than being counted as one more handler error and used again.
#[test]
fn a_connection_lost_in_a_handler_ends_the_run_with_what_was_collected() {
    let stub = FakeStub::hostile(Hostile::ClosesOnReadAfter { hits: HITS_BEFORE }, memory());
    let e = attach(&args(
        &[&vm(&stub, "vm0")],
        &[
            "-e",
            "kprobe:ksys_write { @c = count(); @v = *(uint64 *)0xffffffff81000000; }",
        ],
    ));
    report("closed in a handler", &stub, &e);
    let read = stub.stalled_on.lock().unwrap().clone();
    let read = read.expect("the stub closed on a read");
    assert!(read.starts_with('m'), "{read}");
    assert_eq!(e.code, 3, "{}", e.stderr);
    // The run ends on the read that broke the connection, not on a later
    // use of it (a resume, a detach).
    let reason = format!("gdb stub closed the connection while waiting for reply to `{read}`");
    assert!(e.stderr.contains(&reason), "{reason}: {}", e.stderr);
    assert!(!e.stderr.contains("vCont"), "{}", e.stderr);
    // Every hit counted, the last being the one whose read broke it.
    assert_eq!(count(&e.stdout, "@c:"), HITS_BEFORE as u64, "{}", e.stdout);
    assert!(e.took < Duration::from_secs(20), "{:?}", e.took);
}

/// Two VMs, one of whose stubs goes silent for good: the other's hits keep
/// being served (its guest is not held stopped) until `--duration` ends the
/// run, which also ends the wait on the silent one.
#[test]
fn a_stalled_guest_does_not_stall_another() {
    let stalls = FakeStub::hostile(
        Hostile::StallsAfter {
            hits: HITS_BEFORE,
            silent_for: None,
        },
        memory(),
    );
    let healthy = FakeStub::hostile(Hostile::Hits, memory());
    let (child, stdout, stderr) = spawn_collected(vmprobe().arg("attach").args(args(
        &[&vm(&stalls, "vm0"), &vm(&healthy, "vm1")],
        &[
            "-e",
            "kprobe:ksys_write { @[guest] = count(); }",
            "--duration",
            "14",
            "--stall-timeout",
            "30",
        ],
    )));
    let start = Instant::now();
    // While vm0 is silent, vm1's guest goes on hitting its probe.
    while stalls.stalled_on.lock().unwrap().is_none() {
        assert!(
            start.elapsed() < LIMIT,
            "vm0 never stalled:\n{}",
            stderr.text()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let stalled_at = start.elapsed();
    let before = healthy.hits.load(Ordering::SeqCst);
    std::thread::sleep(Duration::from_secs(6));
    let during = healthy.hits.load(Ordering::SeqCst) - before;
    let code = wait_bounded(child, &stderr);
    let e = Ended {
        code,
        took: start.elapsed(),
        stdout: stdout.finish(),
        stderr: stderr.finish(),
    };
    eprintln!(
        "vm0 stalled after {:.1} s; vm1 sent {during} hits in the 6 s after",
        stalled_at.as_secs_f64()
    );
    report("two VMs, one stalled", &stalls, &e);
    assert!(
        during > 100,
        "vm1 sent only {during} hits while vm0 stalled"
    );
    assert!(
        e.stderr
            .contains("vmprobe: vm0: no reply from the gdb stub for 5 s; is QEMU stopped?"),
        "{}",
        e.stderr
    );
    assert!(!e.stderr.contains("vm1: no reply"), "{}", e.stderr);
    // vm0 could not be detached (its stub never answered): partial results.
    assert_eq!(e.code, 3, "{}", e.stderr);
    assert_eq!(count(&e.stdout, "@[vm0]:"), HITS_BEFORE as u64);
    let vm1 = count(&e.stdout, "@[vm1]:");
    let sent = healthy.hits.load(Ordering::SeqCst) as u64;
    assert!(
        vm1 + 1 >= sent && vm1 <= sent,
        "vm1: counted {vm1} of {sent}"
    );
    // --duration ended the wait on vm0 (a second after it, at most a few).
    assert!(e.took < Duration::from_secs(30), "{:?}", e.took);
}

/// Ctrl-C while vmprobe waits for a silent stub (well within
/// `--stall-timeout`) ends the wait within a second or so, with what was
/// collected: exit status 3, as the VM could not be detached.
#[test]
fn sigint_ends_a_stalled_wait_promptly() {
    let stub = FakeStub::hostile(
        Hostile::StallsAfter {
            hits: HITS_BEFORE,
            silent_for: None,
        },
        memory(),
    );
    let (child, stdout, stderr) = spawn_collected(vmprobe().arg("attach").args(args(
        &[&vm(&stub, "vm0")],
        &[
            "-e",
            "kprobe:ksys_write { @c = count(); }",
            "--stall-timeout",
            "60",
        ],
    )));
    let start = Instant::now();
    while !stderr.text().contains("no reply from the gdb stub") {
        assert!(start.elapsed() < LIMIT, "no notice:\n{}", stderr.text());
        std::thread::sleep(Duration::from_millis(20));
    }
    let pid = rustix::process::Pid::from_child(&child);
    rustix::process::kill_process(pid, rustix::process::Signal::INT).unwrap();
    let signalled = Instant::now();
    let code = wait_bounded(child, &stderr);
    let took = signalled.elapsed();
    let e = Ended {
        code,
        took: start.elapsed(),
        stdout: stdout.finish(),
        stderr: stderr.finish(),
    };
    eprintln!("SIGINT during the stall: exit after {took:?}");
    report("SIGINT while stalled", &stub, &e);
    assert_eq!(e.code, 3, "{}", e.stderr);
    assert!(
        e.stderr
            .contains("the gdb stub had stopped answering when the run ended"),
        "{}",
        e.stderr
    );
    assert_eq!(count(&e.stdout, "@c:"), HITS_BEFORE as u64);
    // A hang detector, far below the 60 s stall timeout.
    assert!(took < Duration::from_secs(10), "{took:?}");
}
