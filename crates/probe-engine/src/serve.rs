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
//!
//! With [`ServePlan::reload`] (SIGHUP in service mode) a new program takes
//! over while the run goes on: every guest's thread detaches, the new
//! runtime takes the maps both programs declare alike, and each thread
//! attaches its VM again with the new program. A [`Gate`] keeps handlers
//! of one program from running with the other's runtime.

use crate::{Backend, BackendError, EndReason, Finished, run_special};
use linux_guest::GuestKernel;
use probe_lang::{ProbeSpec, Program};
use probe_runtime::{Flow, Runtime};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

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
    /// Service mode: a new program swapped in while the run goes on.
    pub reload: Option<Reload<'a>>,
}

/// SIGHUP's reload, as the caller does its parts.
pub struct Reload<'a> {
    /// Polled every 100 ms from a thread of its own: the new program and
    /// its runtime when a reload was asked for and the program is valid
    /// (the callee says why not otherwise).
    pub prepare: &'a (dyn Fn() -> Option<Reloaded> + Sync),
    /// Makes `program` the one guests are attached with from now on;
    /// called once no handler of the old one runs, before the new one's
    /// BEGIN.
    pub install: &'a (dyn Fn(&Arc<Program>) + Sync),
    /// Attaches a guest again after it detached for the reload, with the
    /// program installed last, as [`Reattach`] does for a VM that came
    /// back.
    pub rearm: Reattach<'a>,
    /// Told once the new program runs, with the maps it carried.
    pub done: &'a (dyn Fn(&[String]) + Sync),
}

/// A reload's new program and the runtime that runs it.
pub struct Reloaded {
    pub program: Arc<Program>,
    pub runtime: Runtime,
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
    let gate = Gate::default();
    let begin_exit = run_special(
        program,
        &mut lock(runtime),
        &ProbeSpec::Begin,
        kernel.as_deref(),
    ) == Flow::Exit;
    let script_exit = AtomicBool::new(false);
    let all_done = AtomicBool::new(false);
    let mut names: Vec<String> = guests.iter().map(|g| g.name.clone()).collect();
    let first_count = guests.len();
    let ended = || run_ended(plan, &script_exit);
    let served: Vec<std::thread::Result<Served>> = std::thread::scope(|scope| {
        let handles: Vec<_> = guests
            .into_iter()
            .enumerate()
            .map(|(index, g)| {
                let (script_exit, gate) = (&script_exit, &gate);
                scope.spawn(move || {
                    serve_guest(g, 0, index, begin_exit, runtime, (script_exit, gate), plan)
                })
            })
            .collect();
        // Guests found while the run goes on (a watched socket directory),
        // each served in a thread of its own as the first ones are; the
        // thread that finds them joins them.
        let discovery = plan.discover.filter(|_| !begin_exit).map(|discover| {
            let (script_exit, ended, gate) = (&script_exit, &ended, &gate);
            scope.spawn(move || {
                let mut found = Vec::new();
                loop {
                    // The program it is attached with is this generation's
                    // or a later one's.
                    let generation = gate.generation();
                    let Some(g) = discover(ended) else { break };
                    let index = first_count + found.len();
                    let name = g.name.clone();
                    let shared = (script_exit, gate);
                    let handle = scope.spawn(move || {
                        serve_guest(g, generation, index, false, runtime, shared, plan)
                    });
                    found.push((name, handle));
                }
                found
                    .into_iter()
                    .map(|(name, h)| (name, h.join()))
                    .collect::<Vec<_>>()
            })
        });
        if let Some(reload) = plan.reload.as_ref().filter(|_| !begin_exit) {
            let (script_exit, ended, gate) = (&script_exit, &ended, &gate);
            let kernel = kernel.as_deref();
            let all_done = &all_done;
            scope.spawn(move || {
                while !ended() && !all_done.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(100));
                    if let Some(new) = (reload.prepare)() {
                        swap_program(new, reload, gate, runtime, kernel, ended, script_exit);
                    }
                }
            });
        }
        let mut served: Vec<_> = handles.into_iter().map(|h| h.join()).collect();
        if let Some(Ok(found)) = discovery.map(|d| d.join()) {
            for (name, result) in found {
                names.push(name);
                served.push(result);
            }
        }
        all_done.store(true, Ordering::Relaxed);
        served
    });
    let outcomes = served
        .into_iter()
        .zip(names)
        .map(|(served, name)| {
            // A guest thread that panicked took its backend down with it;
            // the backend's drop removed what it armed.
            let Ok(served) = served else {
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
            let gone = matches!(served.reason, EndReason::TargetGone(_));
            let mut earlier = served.earlier;
            // Without a backend at the end (the run ended while one was
            // attached again), the last life's account is the outcome's.
            let mut finished = match served.backend {
                Some(b) => b.finish(Some(runtime), gone),
                None => earlier.pop().unwrap_or_default(),
            };
            for e in earlier {
                finished.absorb(e);
            }
            GuestOutcome {
                name: served.name,
                kind: served.kind,
                control: served.control,
                reason: served.reason,
                workload_secs: served.workload_secs,
                stats_line: finished.stats_line.clone(),
                finished,
                reattached: served.reattached,
            }
        })
        .collect();
    (outcomes, kernel)
}

/// What a guest's thread hands back.
struct Served {
    name: String,
    kind: &'static str,
    control: Option<Box<dyn GuestControl>>,
    /// `None` when the run ended while the VM was being attached again.
    backend: Option<Box<dyn Backend>>,
    reason: EndReason,
    workload_secs: Option<f64>,
    /// The backends of the VM's earlier lives, finished (service mode).
    earlier: Vec<Finished>,
    /// How many times the VM was attached again after it went away.
    reattached: u32,
}

/// One guest's thread: start it, hand it the workload, serve it; in
/// service mode, again after each time its target went away and came back,
/// and after each reload. `generation` is the [`Gate`]'s when the guest's
/// backend was armed.
fn serve_guest(
    g: Guest,
    mut generation: u64,
    index: usize,
    begin_exit: bool,
    runtime: &Mutex<Runtime>,
    shared: (&AtomicBool, &Gate),
    plan: &ServePlan<'_>,
) -> Served {
    let (script_exit, gate) = shared;
    let Guest {
        name,
        backend,
        mut control,
    } = g;
    let kind = backend.kind();
    let mut backend = Some(backend);
    let mut earlier = Vec::new();
    let mut reattached = 0;
    let started = Instant::now();
    let ended = || run_ended(plan, script_exit);
    let mut first = true;
    let reason = loop {
        if begin_exit {
            break EndReason::ScriptExit;
        }
        let Some(mut b) = backend.take() else {
            break EndReason::Interrupted;
        };
        // A backend armed with an earlier program (attached while a reload
        // went on) is armed again with the current one.
        let Some(now) = gate.enter(&ended) else {
            backend = Some(b);
            break EndReason::Interrupted;
        };
        let reason = if now == generation {
            let workload = plan.workload.as_deref().filter(|_| first);
            let guest = (name.as_str(), index, &mut control);
            let reason = serve_once(guest, &mut *b, workload, runtime, shared, plan);
            first = false;
            reason
        } else {
            EndReason::Reload
        };
        gate.leave();
        if reason == EndReason::ScriptExit {
            script_exit.store(true, Ordering::Relaxed);
        }
        let again = match (&reason, plan.reattach, &plan.reload) {
            (EndReason::TargetGone(_), Some(reattach), _) => {
                reattached += 1;
                earlier.push(b.finish(Some(runtime), true));
                reattach
            }
            (EndReason::Reload, _, Some(reload)) => {
                // Detached before the new runtime is in: maps the old
                // program kept elsewhere go into the old runtime.
                earlier.push(b.finish(Some(runtime), false));
                if gate.wait_open(&ended).is_none() {
                    break EndReason::Interrupted;
                }
                reload.rearm
            }
            _ => {
                backend = Some(b);
                break reason;
            }
        };
        // Waiting for the VM holds nothing of the others: only this thread
        // waits, and the runtime is not locked.
        generation = gate.generation();
        match again(&name, &ended) {
            Some(b) => backend = Some(b),
            None => break reason,
        }
    };
    Served {
        name,
        kind,
        control,
        backend,
        reason,
        workload_secs: (!begin_exit).then(|| started.elapsed().as_secs_f64()),
        earlier,
        reattached,
    }
}

/// Lets a reload swap programs while guest threads serve: a thread
/// counts itself in while its backend may run handlers, and a reload
/// closes the gate, waits for every thread to be out, swaps the runtime
/// and opens it again, one generation on.
#[derive(Default)]
pub struct Gate {
    state: Mutex<GateState>,
    changed: Condvar,
    /// Mirrors `state.closed`, for the serve loop's poll.
    closing: AtomicBool,
}

#[derive(Default)]
struct GateState {
    generation: u64,
    closed: bool,
    inside: usize,
}

/// How long a gate waits at a time before it looks at the run's end again.
const GATE_TICK: Duration = Duration::from_millis(100);

impl Gate {
    fn lock(&self) -> std::sync::MutexGuard<'_, GateState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn generation(&self) -> u64 {
        self.lock().generation
    }

    fn closing(&self) -> bool {
        self.closing.load(Ordering::Relaxed)
    }

    /// Waits for the gate to be open; `None` once the run has ended first.
    fn wait_open(&self, ended: &dyn Fn() -> bool) -> Option<std::sync::MutexGuard<'_, GateState>> {
        let mut state = self.lock();
        while state.closed {
            if ended() {
                return None;
            }
            state = self
                .changed
                .wait_timeout(state, GATE_TICK)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        Some(state)
    }

    /// Counts a thread in once the gate is open; the generation it is in.
    fn enter(&self, ended: &dyn Fn() -> bool) -> Option<u64> {
        let mut state = self.wait_open(ended)?;
        state.inside += 1;
        Some(state.generation)
    }

    fn leave(&self) {
        let mut state = self.lock();
        state.inside -= 1;
        self.changed.notify_all();
    }

    /// Closes the gate and waits for every thread to be out; `false` (the
    /// gate open again) once the run has ended first.
    fn close(&self, ended: &dyn Fn() -> bool) -> bool {
        let mut state = self.lock();
        state.closed = true;
        self.closing.store(true, Ordering::Relaxed);
        while state.inside > 0 {
            if ended() {
                drop(state);
                self.open(false);
                return false;
            }
            state = self
                .changed
                .wait_timeout(state, GATE_TICK)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        true
    }

    /// Opens the gate, one generation on if `advance`.
    fn open(&self, advance: bool) {
        let mut state = self.lock();
        if advance {
            state.generation += 1;
        }
        state.closed = false;
        self.closing.store(false, Ordering::Relaxed);
        self.changed.notify_all();
    }
}

/// A reload, from the thread that polls for one: no handler of the old
/// program runs from here on; the new runtime takes the maps both declare
/// alike; the old program's other maps are printed, as at its end; the new
/// program's BEGIN runs; the guests are attached again with it.
fn swap_program(
    new: Reloaded,
    reload: &Reload<'_>,
    gate: &Gate,
    runtime: &Mutex<Runtime>,
    kernel: Option<&GuestKernel>,
    ended: &dyn Fn() -> bool,
    script_exit: &AtomicBool,
) {
    let Reloaded {
        program,
        runtime: mut fresh,
    } = new;
    if !gate.close(ended) {
        return;
    }
    let carried = {
        let mut current = lock(runtime);
        let carried = fresh.carry_from(&mut current);
        current.print_maps_where(|name| !carried.iter().any(|c| c == name));
        // The old runtime goes, with its output, once its maps are printed.
        drop(std::mem::replace(&mut *current, fresh));
        // Any time between closing and opening the gate: a VM attached
        // with the old program meanwhile is armed again once it is open.
        (reload.install)(&program);
        if run_special(&program, &mut current, &ProbeSpec::Begin, kernel) == Flow::Exit {
            script_exit.store(true, Ordering::Relaxed);
        }
        carried
    };
    gate.open(true);
    (reload.done)(&carried);
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
    (name, index, control): (&str, usize, &mut Option<Box<dyn GuestControl>>),
    backend: &mut dyn Backend,
    workload: Option<&str>,
    runtime: &Mutex<Runtime>,
    (script_exit, gate): (&AtomicBool, &Gate),
    plan: &ServePlan<'_>,
) -> EndReason {
    let mut start = || -> Result<(), BackendError> {
        backend.start(runtime)?;
        (plan.on_live)(name, backend.kind());
        if let (Some(command), Some(control)) = (workload, control.as_mut()) {
            let exports = format!("export VMPROBE_GUEST={name} VMPROBE_GUEST_INDEX={index}; ");
            control.start_workload(&format!("{exports}{command}"))?;
        }
        Ok(())
    };
    if let Err(e) = start() {
        return EndReason::TargetGone(e.to_string());
    }
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
        if gate.closing() {
            return Some(EndReason::Reload);
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
    backend.run(runtime, &mut poll)
}

/// The runtime is shared by the guests of a run; a handler holds it only
/// while it runs. A poisoned lock (a panicking handler, which must not
/// happen) still gives the maps for the final report.
pub fn lock(runtime: &Mutex<Runtime>) -> std::sync::MutexGuard<'_, Runtime> {
    runtime.lock().unwrap_or_else(|e| e.into_inner())
}
