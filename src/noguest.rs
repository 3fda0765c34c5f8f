//! Programs that need no guest: only `BEGIN`, `END` and `interval` probes,
//! reading nothing of a guest. bpftrace runs such a program without
//! attaching to anything; vmprobe runs it without booting a guest (no
//! QEMU), its `interval` blocks on host timers in vmprobe, until `exit()`,
//! Ctrl-C or `--duration`.
//!
//! What such a program may use: maps, `printf`/`print`/`time`, `nsecs`,
//! `elapsed`, scratch variables, control flow. Anything that needs a guest
//! (`comm`, `argN`, `kstack`, memory reads, `kaddr()`/`ksym()`, which need
//! the guest kernel's KASLR slide) makes the run boot one, as before.

use linux_guest::GuestKernel;
use probe_engine::event_context::EventContext;
use probe_engine::serve::lock;
use probe_engine::{Backend, BackendError, EndReason, EventSink, Finished};
use probe_lang::needs::Need;
use probe_lang::{ProbeSpec, Program};
use probe_plan::TimerSchedule;
use probe_runtime::{Flow, Runtime};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Whether `program` runs without a guest.
pub fn needs_no_guest(program: &Program) -> bool {
    let host_probes = program.probes().iter().all(|p| {
        matches!(
            p,
            ProbeSpec::Begin | ProbeSpec::End | ProbeSpec::Interval { .. }
        )
    });
    let guest_reads = program
        .needs()
        .iter()
        .any(|n| matches!(n.need, Need::GuestState | Need::PhysicalMemory));
    host_probes && !guest_reads && !names_kernel_symbols(program)
}

/// `kaddr()` and `ksym()` answer from the guest kernel's symbols, slid by
/// its KASLR offset, which only a booted guest gives.
fn names_kernel_symbols(program: &Program) -> bool {
    !program.kaddr_symbols().is_empty() || program.calls("ksym")
}

/// The backend of a run without a guest: fires the `interval` blocks, in
/// vmprobe, with no vCPU (as inside QEMU, where `interval` blocks also run
/// in vmprobe).
pub struct NoGuest {
    timers: TimerSchedule,
    fired: u64,
}

/// The longest sleep between looks at Ctrl-C, `--duration` and the timers.
const POLL: Duration = Duration::from_millis(20);

impl NoGuest {
    pub fn new(program: &Program) -> Self {
        NoGuest {
            timers: TimerSchedule::new(
                probe_plan::resolve_timers(program),
                probe_engine::monotonic_ns(),
            ),
            fired: 0,
        }
    }

    fn fire_due(&mut self, runtime: &Mutex<Runtime>) -> Flow {
        let now = probe_engine::monotonic_ns();
        let mut flow = Flow::Continue;
        for timer in self.timers.take_due(now) {
            let mut ctx = EventContext::new("", now, "", None);
            ctx.probe = &timer.probe;
            self.fired += 1;
            if let Flow::Exit = lock(runtime).run(timer.block, &mut ctx) {
                flow = Flow::Exit;
            }
        }
        flow
    }
}

impl Backend for NoGuest {
    fn kind(&self) -> &'static str {
        "no-guest"
    }

    fn kernel(&self) -> Option<&Arc<GuestKernel>> {
        None
    }

    fn set_recorder(&mut self, _sink: Box<dyn EventSink>, _every_hit: bool) {}

    fn start(&mut self, _runtime: &Mutex<Runtime>) -> Result<(), BackendError> {
        self.timers.restart(probe_engine::monotonic_ns());
        Ok(())
    }

    fn run(
        &mut self,
        runtime: &Mutex<Runtime>,
        poll: &mut dyn FnMut() -> Option<EndReason>,
    ) -> EndReason {
        loop {
            if let Some(reason) = poll() {
                return reason;
            }
            if let Flow::Exit = self.fire_due(runtime) {
                return EndReason::ScriptExit;
            }
            let now = probe_engine::monotonic_ns();
            let wait = self.timers.wait(now, POLL);
            std::thread::sleep(wait);
        }
    }

    fn finish(self: Box<Self>, _runtime: Option<&Mutex<Runtime>>, _gone: bool) -> Finished {
        Finished {
            stats_line: format!("{} interval firings", self.fired),
            ..Finished::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::needs_no_guest;

    fn no_guest(source: &str) -> bool {
        let program = probe_lang::compile(source, "t").expect("compiles");
        needs_no_guest(&program)
    }

    #[test]
    fn only_begin_end_interval_and_no_guest_reads_run_without_a_guest() {
        assert!(no_guest(
            "BEGIN { @h = hist(3); printf(\"hi\\n\"); exit(); }"
        ));
        assert!(no_guest(
            "interval:ms:10 { @n = count(); if (@n > 2) { exit(); } } END { print(@n); time(); }"
        ));
        assert!(no_guest("BEGIN { printf(\"%d %d\\n\", nsecs, elapsed); }"));
        // A probe on the guest, a guest read, or the guest's symbols: boot.
        assert!(!no_guest("BEGIN { } kprobe:vfs_read { @ = count(); }"));
        assert!(!no_guest("interval:s:1 { @[comm] = count(); }"));
        assert!(!no_guest("interval:s:1 { @[kstack] = count(); }"));
        assert!(!no_guest(
            "BEGIN { printf(\"%x\\n\", kaddr(\"vfs_read\")); }"
        ));
        assert!(!no_guest(
            "BEGIN { printf(\"%s\\n\", ksym(0xffffffff81000000)); }"
        ));
        assert!(!no_guest("profile:hz:99 { @ = count(); }"));
        // The name in a string or a comment is not the builtin.
        assert!(no_guest("BEGIN { printf(\"ksym\\n\"); } // ksym"));
    }
}
