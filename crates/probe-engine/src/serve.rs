//! The order of a run, whatever the backends: `BEGIN`, then every guest
//! served in a thread of its own until the run ends (workloads done,
//! Ctrl-C, `exit()`, a deadline, or the target gone), then every backend
//! finished. One guest's slowness or death never stalls another: each has
//! its own thread and connection, and the shared runtime is locked only
//! while a handler runs.
//!
//! With [`ServePlan::reattach`] (`attach`'s service mode) a guest whose
//! target went away does not end: its thread asks for a new backend on the
//! same VM (its QEMU restarted) and serves that one, with the same runtime,
//! so the maps go on where they were. [`ServePlan::discover`] adds guests
//! that appear while the run goes on, each in a thread of its own.

use crate::{Backend, BackendError, EndReason, Finished, run_special};
use linux_guest::GuestKernel;
use probe_lang::{ProbeSpec, Program};
use probe_runtime::{Flow, Runtime};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// A VM vmprobe started: it runs the workload and says when it ended.
pub trait GuestControl: Send {
    fn start_workload(&mut self, command: &str) -> Result<(), BackendError>;
    /// The workload's exit status once it has exited.
    fn poll_exit(&mut self) -> Result<Option<i32>, BackendError>;
    /// Powers the guest off once its workload is done.
    fn shutdown(&mut self) -> Result<(), BackendError>;
}

/// One guest of a run.
pub struct Guest {
    pub name: String,
    pub backend: Box<dyn Backend>,
    /// `None` for a VM someone else started (attach): it runs whatever it
    /// runs, and keeps running after the run.
    pub control: Option<Box<dyn GuestControl>>,
}

/// When the run ends, and what the guests run.
pub struct ServePlan<'a> {
    /// The command each guest runs (`run`); `None` when attaching.
    pub workload: Option<String>,
    /// Ends the run at this time (`--duration`).
    pub deadline: Option<Instant>,
    /// Set by Ctrl-C and SIGTERM.
    pub stop: &'a AtomicBool,
    /// Set by SIGUSR1: `snapshot` is called from the first guest's thread.
    pub snapshot_requested: &'a AtomicBool,
    pub snapshot: &'a (dyn Fn() + Sync),
    /// Called from a guest's thread once its probes are live, with the
    /// guest's name and backend kind, before its workload starts.
    pub on_live: &'a (dyn Fn(&str, &'static str) + Sync),
    /// Service mode: brings back a guest whose target went away.
    pub reattach: Option<Reattach<'a>>,
    /// Service mode: waits for a new guest to serve (a VM that appeared),
    /// given a check that says the run has ended; `None` once it has.
    pub discover: Option<Discover<'a>>,
}

/// See [`ServePlan::discover`].
pub type Discover<'a> = &'a (dyn Fn(&dyn Fn() -> bool) -> Option<Guest> + Sync);

/// Called from a guest's thread once its target went away, with the
/// guest's name and a check that says the run has ended: waits for the VM
/// to come back and returns its new backend, armed as after attach, or
/// `None` once the run has ended first.
pub type Reattach<'a> = &'a (dyn Fn(&str, &dyn Fn() -> bool) -> Option<Box<dyn Backend>> + Sync);

/// How one guest's run went.
pub struct GuestOutcome {
    pub name: String,
    pub kind: &'static str,
    pub control: Option<Box<dyn GuestControl>>,
    pub reason: EndReason,
    /// From starting the workload to the end of the run.
    pub workload_secs: Option<f64>,
    pub stats_line: String,
    pub finished: Finished,
    /// How many times the guest was attached again after its target went
    /// away (service mode).
    pub reattached: u32,
}

/// Runs BEGIN, serves every guest until the run ends and finishes every
/// backend (probes removed, maps kept elsewhere merged into `runtime`).
/// BEGIN sees the first guest's kernel symbols (for `kaddr`/`ksym`);
/// returned for END.
pub fn serve(
    guests: Vec<Guest>,
    program: &Program,
    runtime: &Mutex<Runtime>,
    plan: &ServePlan<'_>,
) -> (Vec<GuestOutcome>, Option<Arc<GuestKernel>>) {
    let kernel = guests.first().and_then(|g| g.backend.kernel().cloned());
    let begin_exit = run_special(
        program,
        &mut lock(runtime),
        &ProbeSpec::Begin,
        kernel.as_deref(),
    ) == Flow::Exit;
    let script_exit = AtomicBool::new(false);
    let mut names: Vec<String> = guests.iter().map(|g| g.name.clone()).collect();
    let first_count = guests.len();
    let ended = || run_ended(plan, &script_exit);
    let served: Vec<std::thread::Result<Served>> = std::thread::scope(|scope| {
        let handles: Vec<_> = guests
            .into_iter()
            .enumerate()
            .map(|(index, g)| {
                let script_exit = &script_exit;
                scope.spawn(move || serve_guest(g, index, begin_exit, runtime, script_exit, plan))
            })
            .collect();
        // Guests found while the run goes on (a watched socket directory),
        // each served in a thread of its own as the first ones are; the
        // thread that finds them joins them.
        let discovery = plan.discover.filter(|_| !begin_exit).map(|discover| {
            let (script_exit, ended) = (&script_exit, &ended);
            scope.spawn(move || {
                let mut found = Vec::new();
                while let Some(g) = discover(ended) {
                    let index = first_count + found.len();
                    let name = g.name.clone();
                    let handle = scope
                        .spawn(move || serve_guest(g, index, false, runtime, script_exit, plan));
                    found.push((name, handle));
                }
                found
                    .into_iter()
                    .map(|(name, h)| (name, h.join()))
                    .collect::<Vec<_>>()
            })
        });
        let mut served: Vec<_> = handles.into_iter().map(|h| h.join()).collect();
        if let Some(Ok(found)) = discovery.map(|d| d.join()) {
            for (name, result) in found {
                names.push(name);
                served.push(result);
            }
        }
        served
    });
    let outcomes = served
        .into_iter()
        .zip(names)
        .map(|(served, name)| {
            // A guest thread that panicked took its backend down with it;
            // the backend's drop removed what it armed.
            let Ok(Served {
                guest: g,
                reason,
                workload_secs,
                earlier,
            }) = served
            else {
                return GuestOutcome {
                    name,
                    kind: "",
                    control: None,
                    reason: EndReason::TargetGone("vmprobe's thread for it panicked".into()),
                    workload_secs: None,
                    stats_line: String::new(),
                    finished: Finished::default(),
                    reattached: 0,
                };
            };
            let kind = g.backend.kind();
            let gone = matches!(reason, EndReason::TargetGone(_));
            let mut finished = g.backend.finish(Some(runtime), gone);
            let reattached = earlier.len() as u32;
            for e in earlier {
                finished.absorb(e);
            }
            GuestOutcome {
                name: g.name,
                kind,
                control: g.control,
                reason,
                workload_secs,
                stats_line: finished.stats_line.clone(),
                finished,
                reattached,
            }
        })
        .collect();
    (outcomes, kernel)
}

/// What a guest's thread hands back.
struct Served {
    guest: Guest,
    reason: EndReason,
    workload_secs: Option<f64>,
    /// The backends of the VM's earlier lives, finished (service mode).
    earlier: Vec<Finished>,
}

/// One guest's thread: start it, hand it the workload, serve it; in
/// service mode, again after each time its target went away and came back.
fn serve_guest(
    mut g: Guest,
    index: usize,
    begin_exit: bool,
    runtime: &Mutex<Runtime>,
    script_exit: &AtomicBool,
    plan: &ServePlan<'_>,
) -> Served {
    let mut earlier = Vec::new();
    if begin_exit {
        return Served {
            guest: g,
            reason: EndReason::ScriptExit,
            workload_secs: None,
            earlier,
        };
    }
    let started = Instant::now();
    let ended = || run_ended(plan, script_exit);
    let mut first = true;
    let reason = loop {
        let reason = serve_once(&mut g, index, first, runtime, script_exit, plan);
        first = false;
        if reason == EndReason::ScriptExit {
            script_exit.store(true, Ordering::Relaxed);
        }
        let (EndReason::TargetGone(_), Some(reattach)) = (&reason, plan.reattach) else {
            break reason;
        };
        // Waiting for the VM holds nothing of the others: only this thread
        // waits, and the runtime is not locked.
        match reattach(&g.name, &ended) {
            Some(backend) => {
                let old = std::mem::replace(&mut g.backend, backend);
                earlier.push(old.finish(Some(runtime), true));
            }
            None => break reason,
        }
    };
    Served {
        guest: g,
        reason,
        workload_secs: Some(started.elapsed().as_secs_f64()),
        earlier,
    }
}

/// Whether the run has ended: Ctrl-C, `exit()` or the deadline.
fn run_ended(plan: &ServePlan<'_>, script_exit: &AtomicBool) -> bool {
    plan.stop.load(Ordering::Relaxed)
        || script_exit.load(Ordering::Relaxed)
        || plan.deadline.is_some_and(|d| Instant::now() >= d)
}

/// Starts the guest's backend (and, the first time, its workload) and
/// serves it until the run ends or its target goes away.
fn serve_once(
    g: &mut Guest,
    index: usize,
    first: bool,
    runtime: &Mutex<Runtime>,
    script_exit: &AtomicBool,
    plan: &ServePlan<'_>,
) -> EndReason {
    let mut start = || -> Result<(), BackendError> {
        g.backend.start(runtime)?;
        (plan.on_live)(&g.name, g.backend.kind());
        if let (true, Some(command), Some(control)) = (first, &plan.workload, g.control.as_mut()) {
            let exports = format!(
                "export VMPROBE_GUEST={} VMPROBE_GUEST_INDEX={index}; ",
                g.name
            );
            control.start_workload(&format!("{exports}{command}"))?;
        }
        Ok(())
    };
    if let Err(e) = start() {
        return EndReason::TargetGone(e.to_string());
    }
    let control = &mut g.control;
    let mut poll = || {
        if plan.stop.load(Ordering::Relaxed) {
            return Some(EndReason::Interrupted);
        }
        if script_exit.load(Ordering::Relaxed) {
            return Some(EndReason::ScriptExit);
        }
        if plan.deadline.is_some_and(|d| Instant::now() >= d) {
            return Some(EndReason::Interrupted);
        }
        if index == 0 && plan.snapshot_requested.swap(false, Ordering::Relaxed) {
            (plan.snapshot)();
        }
        match control.as_mut()?.poll_exit() {
            Ok(Some(status)) => Some(EndReason::WorkloadExited(status)),
            Ok(None) => None,
            Err(e) => Some(EndReason::TargetGone(e.to_string())),
        }
    };
    g.backend.run(runtime, &mut poll)
}

/// The runtime is shared by the guests of a run; a handler holds it only
/// while it runs. A poisoned lock (a panicking handler, which must not
/// happen) still gives the maps for the final report.
pub fn lock(runtime: &Mutex<Runtime>) -> std::sync::MutexGuard<'_, Runtime> {
    runtime.lock().unwrap_or_else(|e| e.into_inner())
}
