//! The order of a run, whatever the backends: `BEGIN`, then every guest
//! served in a thread of its own until the run ends (workloads done,
//! Ctrl-C, `exit()`, a deadline, or the target gone), then every backend
//! finished. One guest's slowness or death never stalls another: each has
//! its own thread and connection, and the shared runtime is locked only
//! while a handler runs.

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
}

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
    let names: Vec<String> = guests.iter().map(|g| g.name.clone()).collect();
    let served: Vec<std::thread::Result<(Guest, EndReason, Option<f64>)>> =
        std::thread::scope(|scope| {
            let handles: Vec<_> = guests
                .into_iter()
                .enumerate()
                .map(|(index, g)| {
                    let script_exit = &script_exit;
                    scope.spawn(move || {
                        serve_guest(g, index, begin_exit, runtime, script_exit, plan)
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join()).collect()
        });
    let outcomes = served
        .into_iter()
        .zip(names)
        .map(|(served, name)| {
            // A guest thread that panicked took its backend down with it;
            // the backend's drop removed what it armed.
            let Ok((g, reason, workload_secs)) = served else {
                return GuestOutcome {
                    name,
                    kind: "",
                    control: None,
                    reason: EndReason::TargetGone("vmprobe's thread for it panicked".into()),
                    workload_secs: None,
                    stats_line: String::new(),
                    finished: Finished::default(),
                };
            };
            let kind = g.backend.kind();
            let gone = matches!(reason, EndReason::TargetGone(_));
            let finished = g.backend.finish(Some(runtime), gone);
            GuestOutcome {
                name: g.name,
                kind,
                control: g.control,
                reason,
                workload_secs,
                stats_line: finished.stats_line.clone(),
                finished,
            }
        })
        .collect();
    (outcomes, kernel)
}

/// One guest's thread: start it, hand it the workload, serve it.
fn serve_guest(
    mut g: Guest,
    index: usize,
    begin_exit: bool,
    runtime: &Mutex<Runtime>,
    script_exit: &AtomicBool,
    plan: &ServePlan<'_>,
) -> (Guest, EndReason, Option<f64>) {
    if begin_exit {
        return (g, EndReason::ScriptExit, None);
    }
    let started = Instant::now();
    let mut start = || -> Result<(), BackendError> {
        g.backend.start(runtime)?;
        (plan.on_live)(&g.name, g.backend.kind());
        if let (Some(command), Some(control)) = (&plan.workload, g.control.as_mut()) {
            let exports = format!(
                "export VMPROBE_GUEST={} VMPROBE_GUEST_INDEX={index}; ",
                g.name
            );
            control.start_workload(&format!("{exports}{command}"))?;
        }
        Ok(())
    };
    if let Err(e) = start() {
        return (g, EndReason::TargetGone(e.to_string()), None);
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
    let reason = g.backend.run(runtime, &mut poll);
    if reason == EndReason::ScriptExit {
        script_exit.store(true, Ordering::Relaxed);
    }
    (g, reason, Some(started.elapsed().as_secs_f64()))
}

/// The runtime is shared by the guests of a run; a handler holds it only
/// while it runs. A poisoned lock (a panicking handler, which must not
/// happen) still gives the maps for the final report.
pub fn lock(runtime: &Mutex<Runtime>) -> std::sync::MutexGuard<'_, Runtime> {
    runtime.lock().unwrap_or_else(|e| e.into_inner())
}
