//! Serving a run's guests and reporting on it: the banner, the engine's
//! serve loop, then what bpftrace prints at exit (END's output, every
//! map), the errors and statistics on stderr, and the exit status.

use crate::recorder::{SharedRecorder, finish_recorder, snapshot};
use anyhow::{Context, Result};
use probe_engine::EndReason;
use probe_engine::serve::{Guest, GuestOutcome, serve};
use probe_lang::ProbeSpec;
use std::io::Write;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// How the guests of a run are served and when the run ends.
pub struct ServePlan {
    /// The command each guest's init runs (`run`); `None` when attaching to
    /// VMs that run whatever they run.
    pub workload: Option<String>,
    /// Ends the run at this time (`attach --duration`).
    pub deadline: Option<Instant>,
    pub stats: bool,
    pub output: probe_output::OutputFormat,
    /// Write the program's `kstack`-keyed maps as a flame graph (SVG, and
    /// folded stacks next to it).
    pub flamegraph: Option<std::path::PathBuf>,
    /// `-o FILE`: the program's output goes there instead of stdout.
    pub out: Option<std::fs::File>,
    /// `--otlp`: printf output and calls also go to an OTLP receiver.
    pub otlp: Option<crate::otlp::OtlpPlan>,
    /// `--metrics`: the maps and vmprobe's health at `/metrics`, bound.
    pub metrics: Option<crate::metrics::Metrics>,
    /// Service mode (`attach --config`): how a VM whose connection ended
    /// is attached again once it is back.
    pub reattach: Option<Box<Reattach>>,
    /// Service mode with a watched directory: waits for a new VM and
    /// attaches to it.
    pub discover: Option<Box<Discover>>,
    /// Service mode: SIGHUP's new program.
    pub reload: Option<ReloadPlan>,
}

type SharedProgram = Arc<probe_lang::Program>;

/// How a service reloads its program (SIGHUP), as `attach` does its parts.
pub struct ReloadPlan {
    /// The new program, once asked for and valid (else the reason is
    /// said); polled.
    pub program: Box<dyn Fn() -> Option<SharedProgram> + Sync>,
    /// Makes the program the one VMs are attached with from now on.
    pub install: Box<dyn Fn(&SharedProgram) + Sync>,
    /// Attaches a VM again with the program installed last.
    pub rearm: Box<Reattach>,
}

/// Waits for a VM that was not there and attaches to it; `None` once the
/// check says the run has ended.
pub type Discover = dyn Fn(&dyn Fn() -> bool) -> Option<Guest> + Sync;

/// Waits for the named VM to be back and attaches to it again; `None` once
/// the check says the run has ended.
pub type Reattach =
    dyn Fn(&str, &dyn Fn() -> bool) -> Option<Box<dyn probe_engine::Backend>> + Sync;

/// Runs BEGIN, serves every guest in its own thread until the run ends
/// (workloads done, Ctrl-C, `exit()`, deadline, or the target gone), then
/// detaches, finishes the trace, runs END, prints the maps and returns the
/// exit status.
pub fn serve_and_report(
    mut guests: Vec<Guest>,
    program: &Arc<probe_lang::Program>,
    recorder: Option<SharedRecorder>,
    stop: &AtomicBool,
    snapshot_requested: &AtomicBool,
    plan: &ServePlan,
) -> Result<i32> {
    let count = guests.len();
    let otlp = match &plan.otlp {
        Some(p) => {
            let names: Vec<String> = guests.iter().map(|g| g.name.clone()).collect();
            Some(crate::otlp::Otlp::start(p, &names)?)
        }
        None => None,
    };
    // The program served now: a service's reload replaces it.
    let current = Mutex::new(program.clone());
    let program_now = || current.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let sink_for = |program: &probe_lang::Program| -> Option<Box<dyn probe_engine::EventSink>> {
        let mut sinks: Vec<Box<dyn probe_engine::EventSink>> = Vec::new();
        if let Some(r) = &recorder {
            sinks.push(Box::new(r.clone()));
        }
        if let Some(o) = &otlp {
            sinks.push(Box::new(o.sink(program)));
        }
        match sinks.len() {
            0 => None,
            1 => Some(sinks.remove(0)),
            _ => Some(Box::new(crate::otlp::Tee(sinks))),
        }
    };
    // With trace() the script decides what is recorded.
    let set_recorder = |backend: &mut dyn probe_engine::Backend| {
        let program = program_now();
        if let Some(sink) = sink_for(&program) {
            backend.set_recorder(sink, !program.uses_trace());
        }
    };
    for g in &mut guests {
        set_recorder(&mut *g.backend);
    }
    // What backends count live, for --metrics; a service adds the
    // backends it attaches later.
    let live = crate::metrics::guest_live(&guests);
    // A VM attached again records and exports as it did before.
    let reattach = plan
        .reattach
        .as_deref()
        .map(|r| with_sinks(r, &live, &set_recorder));
    let discover = plan.discover.as_ref().map(|d| {
        let live = &live;
        move |ended: &dyn Fn() -> bool| {
            let mut guest = d(ended)?;
            crate::metrics::add_backend(live, &guest.name, &*guest.backend);
            set_recorder(&mut *guest.backend);
            Some(guest)
        }
    });
    // A runtime for a program: its printer, and OTLP's log records.
    let runtime_for = |program: &probe_lang::Program| -> Result<probe_runtime::Runtime> {
        let exec = program.executable().clone();
        let printer =
            probe_output::Printer::new(crate::bpftrace::writer(plan.out.as_ref())?, exec.clone())
                .with_format(plan.output);
        let output = match &otlp {
            Some(o) => o.output(exec.clone(), Box::new(printer)),
            None => Box::new(printer),
        };
        Ok(probe_runtime::Runtime::new(exec, output))
    };
    // The line bpftrace prints as it attaches; -q leaves it out, -o sends
    // it to the file with the rest.
    let banner = |program: &probe_lang::Program| -> Result<()> {
        if !crate::QUIET.load(std::sync::atomic::Ordering::Relaxed) {
            let mut out = crate::bpftrace::writer(plan.out.as_ref())?;
            let message =
                probe_output::attaching_message_for(program.written_probe_count(), plan.output);
            let _ = out.write_all(message.as_bytes());
            let _ = out.flush();
        }
        Ok(())
    };
    let mut runtime = runtime_for(program)?;
    banner(program)?;
    runtime.set_start_nsecs(probe_engine::monotonic_ns());
    let runtime = Mutex::new(runtime);
    let rearm = plan
        .reload
        .as_ref()
        .map(|r| with_sinks(&*r.rearm, &live, &set_recorder));
    let prepare = || {
        let program = (plan.reload.as_ref()?.program)()?;
        match runtime_for(&program) {
            Ok(runtime) => Some(probe_engine::serve::Reloaded { program, runtime }),
            Err(e) => {
                eprintln!("vmprobe: reload: {e:#}; still serving the previous program");
                None
            }
        }
    };
    let install = |program: &Arc<probe_lang::Program>| {
        *current.lock().unwrap_or_else(|e| e.into_inner()) = program.clone();
        if let Some(m) = &plan.metrics {
            m.relabel(program);
        }
        if let Some(r) = &plan.reload {
            (r.install)(program);
        }
        let _ = banner(program);
    };
    let reloaded = |carried: &[String]| {
        let maps = match carried {
            [] => "none".to_string(),
            names => names
                .iter()
                .map(|n| format!("@{n}"))
                .collect::<Vec<_>>()
                .join(", "),
        };
        progress!("vmprobe: reloaded; maps carried over: {maps}");
    };

    let take_snapshot = || snapshot(recorder.as_ref());
    let engine_plan = probe_engine::serve::ServePlan {
        workload: plan.workload.clone(),
        deadline: plan.deadline,
        stop,
        snapshot_requested,
        snapshot: &take_snapshot,
        on_live: &|name, kind| {
            // Through a stub the guest waits, stopped, until it is served;
            // inside QEMU it runs on, so a user (or a test) starting a
            // workload needs to know when the probes see it.
            if kind == "plugin" {
                progress!("vmprobe: {name}: probes live in QEMU");
            }
        },
        reattach: reattach
            .as_ref()
            .map(|r| r as probe_engine::serve::Reattach<'_>),
        discover: discover
            .as_ref()
            .map(|d| d as probe_engine::serve::Discover<'_>),
        reload: rearm.as_ref().map(|rearm| probe_engine::serve::Reload {
            prepare: &prepare,
            install: &install,
            rearm,
            done: &reloaded,
        }),
    };
    let (outcomes, kernel) = match &plan.metrics {
        Some(m) => m.serve_while(&runtime, &live, otlp.as_ref(), || {
            serve(guests, program, &runtime, &engine_plan)
        }),
        None => serve(guests, program, &runtime, &engine_plan),
    };
    // What attaches again holds the recorder and the OTLP exporter, which
    // are finished below.
    drop(engine_plan);
    drop(reattach);
    drop(rearm);
    // END is the program's served last (a service's reload replaces it).
    let program = &program_now();

    let trace_complete = match recorder {
        Some(r) => finish_recorder(r)?,
        None => true,
    };
    let mut runtime = runtime.into_inner().unwrap_or_else(|e| e.into_inner());
    probe_engine::run_special(program, &mut runtime, &ProbeSpec::End, kernel.as_deref());
    if let Some(path) = &plan.flamegraph {
        match write_flamegraph(path, runtime.stack_entries()) {
            Ok(n) => eprintln!("vmprobe: flame graph of {n} stacks in {}", path.display()),
            Err(e) => eprintln!("vmprobe: writing the flame graph: {e:#}"),
        }
    }
    runtime.print_maps();
    let _ = std::io::stdout().flush();
    // After END and the maps: END's printf output is exported too.
    let otlp_stats = otlp.map(crate::otlp::Otlp::finish);
    let mut partial = Vec::new();
    let errors = runtime.errors();
    for (probe, error, count) in &errors {
        eprintln!("vmprobe: {probe}: {error} ({count} times)");
    }
    match errors.iter().map(|e| e.2).sum::<u64>() {
        0 => {}
        1 => partial.push("1 handler error".to_string()),
        n => partial.push(format!("{n} handler errors")),
    }
    let lost: u64 = outcomes.iter().map(|o| o.finished.lost_events).sum();
    if lost > 0 {
        partial.push(format!("{lost} events lost inside QEMU"));
    }
    if !trace_complete {
        partial.push("events lost from the trace".to_string());
    }
    for o in outcomes.iter().filter(|o| o.reattached > 0) {
        let times = if o.reattached == 1 { "time" } else { "times" };
        eprintln!(
            "vmprobe: {}: attached again {} {times} after its VM restarted",
            o.name, o.reattached
        );
    }
    if plan.stats {
        for o in &outcomes {
            eprintln!("{}", stats_line(o));
        }
        for o in &outcomes {
            for line in &o.finished.layer_summaries {
                eprintln!("vmprobe: stats: {}: {line}", o.name);
            }
        }
        if let Some(line) = &otlp_stats {
            eprintln!("vmprobe: stats: {line}");
        }
    }
    for o in &outcomes {
        if let Some(e) = &o.finished.detach_error {
            eprintln!("vmprobe: detach: {}: {e}", o.name);
            partial.push(format!("{} did not detach", o.name));
        }
        if let Some(c) = &o.finished.caveat {
            eprintln!("vmprobe: {}: {c}", o.name);
        }
    }
    let code = exit_status(outcomes, count, &mut partial);
    if partial.is_empty() {
        return Ok(code);
    }
    if code != 0 {
        partial.push(format!("and the workload exited with status {code}"));
    }
    eprintln!(
        "vmprobe: partial results (exit status {EXIT_PARTIAL}): {}",
        partial.join(", ")
    );
    Ok(EXIT_PARTIAL)
}

/// A VM attached again (it came back, or a reload) records, exports and
/// counts for `/metrics` as it did before.
fn with_sinks<'a>(
    attach: &'a Reattach,
    live: &'a Mutex<Vec<crate::metrics::GuestLive>>,
    set_recorder: &'a (dyn Fn(&mut dyn probe_engine::Backend) + Sync),
) -> impl Fn(&str, &dyn Fn() -> bool) -> Option<Box<dyn probe_engine::Backend>> + Sync + 'a {
    move |name, ended| {
        let mut backend = attach(name, ended)?;
        crate::metrics::add_backend(live, name, &*backend);
        set_recorder(&mut *backend);
        Some(backend)
    }
}

/// The exit status of a run whose results are incomplete: handler errors,
/// lost events, a VM that went away or did not detach. (1 is an error
/// before anything was probed, 2 a usage error, as clap makes it.)
pub const EXIT_PARTIAL: i32 = 3;

fn stats_line(o: &GuestOutcome) -> String {
    format!(
        "vmprobe: stats: {}: {} backend, workload {:.3} s wall, {}",
        o.name,
        o.kind,
        o.workload_secs.unwrap_or(0.0),
        o.stats_line,
    )
}

/// The first non-zero status of the guests' workloads; a VM that went
/// away makes the results `partial`. Guests whose workload finished are
/// powered off.
fn exit_status(outcomes: Vec<GuestOutcome>, count: usize, partial: &mut Vec<String>) -> i32 {
    let prefix = |name: &str| {
        if count == 1 {
            String::new()
        } else {
            format!("{name}: ")
        }
    };
    let mut code = 0;
    for o in outcomes {
        let c = match o.reason {
            EndReason::WorkloadExited(status) => {
                if let Some(mut control) = o.control
                    && let Err(e) = control.shutdown()
                {
                    eprintln!("vmprobe: {}{e}", prefix(&o.name));
                }
                status
            }
            EndReason::ScriptExit | EndReason::Interrupted | EndReason::Reload => 0,
            EndReason::VmExited => {
                eprintln!("vmprobe: {}: the VM exited", o.name);
                0
            }
            EndReason::TargetGone(why) => {
                eprintln!(
                    "vmprobe: {}the VM went away ({why}); output above is what was collected",
                    prefix(&o.name)
                );
                partial.push(format!("{} went away", o.name));
                0
            }
        };
        if code == 0 {
            code = c;
        }
    }
    code
}

/// Folds stacks (frames innermost first, as `kstack` holds them) root first,
/// without offsets so that calls from anywhere in a function merge, and
/// writes `PATH` (SVG) and `PATH` with extension `folded`.
fn write_flamegraph(path: &std::path::Path, stacks: Vec<(Vec<String>, u64)>) -> Result<usize> {
    let n = stacks.len();
    let folded = trace_formats::flame::fold(stacks.into_iter().map(|(frames, count)| {
        let root_first: Vec<String> = frames
            .iter()
            .rev()
            .map(|f| f.split('+').next().unwrap_or(f).to_string())
            .collect();
        (root_first, count)
    }));
    let folded_path = path.with_extension("folded");
    let file = std::fs::File::create(&folded_path)
        .with_context(|| format!("creating {}", folded_path.display()))?;
    trace_formats::flame::write_folded(std::io::BufWriter::new(file), &folded)?;
    let file =
        std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    trace_formats::flame::write_flamegraph(
        std::io::BufWriter::new(file),
        &folded,
        "vmprobe: kernel stacks",
    )?;
    Ok(n)
}
