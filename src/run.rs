//! `vmprobe run`, `guest build` and `list`: the order of a run, and its reports.

use crate::{AccelArg, GuestArgs, RunArgs};
use anyhow::{Context, Result, anyhow, bail};
use gdb_remote::Client;
use kernel_image::KernelSections;
use kernel_image::KernelSymbols;
use probe_engine::guest::GuestKernel;
use probe_engine::{
    EndReason, Session, resolve_probes, resolve_timers, resolve_watches, run_special,
};
use probe_lang::{Flow, ProbeSpec, Runtime};
use qemu_guest::{Accel, GuestImage, LaunchConfig, Vm};
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A TCG boot takes 5-20 s on a loaded 2-core machine; leave ample room.
const BOOT_TIMEOUT: Duration = Duration::from_secs(180);

pub fn guest_build() -> Result<GuestImage> {
    let cache = qemu_guest::cache_dir();
    let image =
        qemu_guest::build_default_guest(&cache, &mut |step| eprintln!("vmprobe: guest: {step}"))
            .context("building the default guest")?;
    eprintln!("vmprobe: guest: kernel {}", image.kernel.display());
    eprintln!("vmprobe: guest: initrd {}", image.initrd.display());
    Ok(image)
}

/// The user's images, else the default guest, built on first use.
pub(crate) fn guest_image(args: &GuestArgs) -> Result<GuestImage> {
    let mut image = match &args.kernel {
        Some(kernel) => {
            let default = qemu_guest::default_guest(&qemu_guest::cache_dir());
            let initrd = match (&args.initrd, default) {
                (Some(initrd), _) => initrd.clone(),
                (None, Some(d)) => d.initrd,
                (None, None) => guest_build()?.initrd,
            };
            GuestImage {
                kernel: kernel.clone(),
                initrd,
                append: qemu_guest::DEFAULT_APPEND.to_string(),
                version: "custom".into(),
            }
        }
        None => match qemu_guest::default_guest(&qemu_guest::cache_dir()) {
            Some(image) => image,
            None => {
                eprintln!("vmprobe: preparing the default guest (first use)");
                guest_build()?
            }
        },
    };
    if let Some(append) = &args.append {
        image.append = append.clone();
    }
    Ok(image)
}

/// The default guest, built on first use.
pub fn default_image() -> Result<GuestImage> {
    guest_image(&GuestArgs::default())
}

/// Symbols from the image itself, cached.
pub fn load_image_symbols(image: &GuestImage) -> Result<KernelSymbols> {
    load_symbols(&GuestArgs::default(), image)
}

/// What vmprobe reads from a guest kernel image: symbols, plus the sections
/// behind types and stacks (absent from System.map-style symbol files).
pub struct KernelInfo {
    pub symbols: Arc<KernelSymbols>,
    /// Parsed once (BTF, ORC); each guest takes it with its own slide.
    pub guest: GuestKernel,
}

pub fn load_kernel(symbols: KernelSymbols, image: &std::path::Path) -> KernelInfo {
    let cache = qemu_guest::cache_dir().join("sections");
    let _ = std::fs::create_dir_all(&cache);
    // Types and stacks are extras: an image without them still probes.
    let sections = KernelSections::load(image, &probe_engine::guest::SECTIONS, Some(&cache)).ok();
    let symbols = Arc::new(symbols);
    let guest = GuestKernel::new(symbols.clone(), 0, sections.as_ref());
    KernelInfo { symbols, guest }
}

/// Compiles with the kernel's BTF as the type provider, when the image has it.
pub fn compile_typed(
    source: &str,
    source_name: &str,
    kernel: &KernelInfo,
) -> Result<probe_lang::Program, probe_lang::Diagnostics> {
    let types = kernel.guest.types().map(probe_engine::LayerTypes::new);
    probe_lang::compile_with_types(
        source,
        source_name,
        types.as_ref().map(|t| t as &dyn probe_lang::KernelTypes),
    )
}

/// Checks what the program names in the kernel (`kaddr`) before booting.
pub fn check_program(program: &probe_lang::Program, symbols: &KernelSymbols) -> Result<bool> {
    if let Err(diags) = program.check_kaddrs(|s| symbols.lookup(s).is_some()) {
        eprint!("{diags}");
        return Ok(false);
    }
    resolve_probes(program, symbols, 0)?;
    Ok(true)
}

/// On a stopped, attached guest: finds the KASLR slide, arms every probe of
/// the program (breakpoints, watchpoints, timers) and gives handlers the
/// guest kernel's symbols, types and unwind tables. Returns the slide.
pub fn arm_program(
    session: &mut Session,
    program: &probe_lang::Program,
    kernel: &KernelInfo,
) -> Result<u64> {
    let slide = session
        .detect_slide(&kernel.symbols)
        .context("finding the KASLR slide")?;
    // Arming is not interrupted part way: what was armed is removed again.
    session.client().set_abort(None);
    let map = session.client().register_map();
    if let Err(diags) = program.check_registers(|r| map.lookup(r).is_some()) {
        bail!("{}", diags.to_string().trim_end());
    }
    let sites = resolve_probes(program, &kernel.symbols, slide)?;
    session.arm(sites)?;
    session.arm_watches(resolve_watches(program))?;
    session.set_timers(resolve_timers(program))?;
    session.set_kernel(Arc::new(kernel.guest.with_slide(slide)));
    Ok(slide)
}

pub(crate) fn load_symbols(args: &GuestArgs, image: &GuestImage) -> Result<KernelSymbols> {
    let path = args.symbols.as_ref().unwrap_or(&image.kernel);
    let cache = qemu_guest::cache_dir().join("symbols");
    let _ = std::fs::create_dir_all(&cache);
    KernelSymbols::load(path, Some(&cache)).with_context(|| "loading kernel symbols".to_string())
}

/// `vmprobe list [-v] [PATTERN]`: with `-v`, each function's parameters
/// from the kernel's BTF, one `    TYPE NAME` line each, as `bpftrace -lv`.
/// Joins the workload words into one shell command line for the guest.
fn command_line(words: &[String]) -> String {
    if let [only] = words {
        return only.clone();
    }
    let quote = |w: &String| {
        if !w.is_empty()
            && w.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_./=:,+@%".contains(&b))
        {
            w.clone()
        } else {
            format!("'{}'", w.replace('\'', r"'\''"))
        }
    };
    words.iter().map(quote).collect::<Vec<_>>().join(" ")
}

/// `vmprobe record`: a run whose probe events also go into trace files.
pub fn record(args: crate::RecordArgs) -> Result<i32> {
    let (program, file) = match (&args.program, args.probes.as_slice()) {
        (Some(p), []) => (Some(p.clone()), None),
        (Some(_), _) => bail!("give either -e PROGRAM or probes/FILE, not both"),
        (None, [one]) if !one.contains(':') => (None, Some(std::path::PathBuf::from(one))),
        (None, []) => {
            bail!("nothing to record: give probes (e.g. kprobe:ksys_write), -e PROGRAM or a FILE")
        }
        (None, probes) => {
            // A bare probe list traces those probes with their arguments:
            // every probe an empty action block.
            if let Some(bad) = probes.iter().find(|p| !p.contains(':')) {
                bail!("'{bad}' is not a probe (e.g. kprobe:ksys_write, kretprobe:vfs_read)");
            }
            let text = probes
                .iter()
                .map(|p| format!("{p} {{ }}\n"))
                .collect::<String>();
            (Some(text), None)
        }
    };
    let recording = Recording {
        flamegraph: args.flamegraph,
        dir: args.output,
        format: args.format,
        ring: args.ring,
    };
    if !args.vm.is_empty() {
        if !args.workload.is_empty() {
            bail!("--vm records a running VM: it takes no workload after `--`");
        }
        let attach_args = crate::AttachArgs {
            vm: args.vm,
            program,
            file,
            format: crate::OutputArg::Text,
            duration: args.duration,
            stats: args.stats,
        };
        return crate::attach::attach_recording(attach_args, Some(recording));
    }
    let run_args = RunArgs {
        program,
        file,
        dump: false,
        format: crate::OutputArg::Text,
        boot: args.boot,
        console: args.console,
        stats: args.stats,
        workload: args.workload,
    };
    run_recording(run_args, Some(recording))
}

/// Creates the trace writer of a recording, and sets SIGUSR1 to ask for a
/// flight-recorder snapshot.
pub fn start_recorder(
    recording: Option<&Recording>,
    snapshot_requested: &Arc<AtomicBool>,
) -> Result<Option<crate::record::SharedRecorder>> {
    let Some(r) = recording else {
        return Ok(None);
    };
    signal_hook::flag::register(signal_hook::consts::SIGUSR1, snapshot_requested.clone())
        .context("installing the SIGUSR1 handler")?;
    Ok(Some(crate::record::SharedRecorder(Arc::new(
        std::sync::Mutex::new(crate::record::Recorder::create(&r.dir, r.format, r.ring)?),
    ))))
}

/// What `vmprobe record` adds to a run.
pub struct Recording {
    pub flamegraph: Option<std::path::PathBuf>,
    pub dir: std::path::PathBuf,
    pub format: crate::record::Format,
    pub ring: Option<usize>,
}

pub fn run(args: RunArgs) -> Result<i32> {
    run_recording(args, None)
}

pub fn run_recording(args: RunArgs, recording: Option<Recording>) -> Result<i32> {
    // Everything that can be checked before booting is checked first.
    let (source, source_name) = crate::script::program_source(&args.program, &args.file)?;
    // The program is typed with the guest kernel's BTF (args, struct
    // casts); without an image, a program that needs no types still checks.
    let loaded = guest_image(&args.boot.guest).and_then(|image| {
        let symbols = load_symbols(&args.boot.guest, &image)?;
        let kernel = load_kernel(symbols, &image.kernel);
        Ok((image, kernel))
    });
    let (image, kernel) = match loaded {
        Ok(pair) => pair,
        Err(e) => {
            if let Err(diags) = probe_lang::compile(&source, &source_name) {
                eprint!("{diags}");
                return Ok(1);
            }
            return Err(e);
        }
    };
    let program = match compile_typed(&source, &source_name, &kernel) {
        Ok(p) => Arc::new(p),
        Err(diags) => {
            eprint!("{diags}");
            return Ok(1);
        }
    };
    if args.dump {
        print!("{}", program.dump());
        return Ok(0);
    }
    // trace() and snapshot() need the trace `record` writes: an error
    // before anything boots, as bpftrace reports errors before attaching.
    if recording.is_none()
        && let Err(diags) = program.check_not_recording("run")
    {
        eprint!("{diags}");
        return Ok(1);
    }
    if args.workload.is_empty() {
        bail!("no workload: give the command to run in the guest after `--`");
    }
    if let Some(disk) = &args.boot.disk {
        if args.boot.guests > 1 {
            bail!("--disk gives one guest a disk; several guests (--guests) cannot share it");
        }
        std::fs::metadata(disk).with_context(|| format!("--disk {}", disk.display()))?;
    }
    // Unknown symbols and bad patterns fail here, before anything boots.
    if !check_program(&program, &kernel.symbols)? {
        return Ok(1);
    }

    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, stop.clone()).context("installing signal handlers")?;
    }
    let snapshot_requested = Arc::new(AtomicBool::new(false));
    let recorder = start_recorder(recording.as_ref(), &snapshot_requested)?;

    let mut cfg = LaunchConfig::new(image);
    cfg.vcpus = args.boot.vcpus;
    cfg.disk = args.boot.disk.clone();
    if let Some(q) = &args.boot.qemu {
        cfg.qemu = q.clone();
    }
    if let Some(a) = args.boot.accel {
        cfg.accel = match a {
            AccelArg::Kvm => Accel::Kvm,
            AccelArg::Tcg => Accel::Tcg,
        };
    }
    if args.console {
        cfg.console = Some(Arc::new(std::sync::Mutex::new(std::io::stderr())));
    }
    let count = args.boot.guests.max(1);
    eprintln!(
        "vmprobe: booting {} guest{} of {} ({:?})",
        count,
        if count == 1 { "" } else { "s" },
        cfg.image.kernel.display(),
        cfg.accel
    );
    // QEMUs are started from this thread: PR_SET_PDEATHSIG fires when the
    // *thread* that forked them exits. They then boot in parallel; any
    // failure ends the run (the others' QEMUs are killed when their `Vm`s
    // drop).
    let layers = probe_engine::resolve_layers(&program);
    let logs = qemu_guest::private_dir("vmprobe-logs-").context("creating a log directory")?;
    let mut vms = Vec::new();
    for i in 0..count {
        let name = format!("vm{i}");
        let mut cfg = cfg.clone();
        if args.console && count > 1 {
            // Several consoles on one stderr: each line says whose it is.
            cfg.console = Some(Arc::new(std::sync::Mutex::new(PrefixLines::new(
                format!("{name}: "),
                std::io::stderr(),
            ))));
        }
        if !layers.vmm_events.is_empty() {
            // QEMU's trace events go to a log file vmprobe follows; it can
            // carry guest data, so it lives in a private directory.
            cfg.log_file = Some(logs.path().join(format!("{name}.log")));
        }
        let vm = Vm::launch(&cfg).with_context(|| format!("{name}: starting QEMU"))?;
        vms.push((name, vm));
    }
    let booted: Vec<Result<Guest>> = std::thread::scope(|scope| {
        let handles: Vec<_> = vms
            .into_iter()
            .map(|(name, vm)| {
                let (kernel, program, layers) = (&kernel, &program, &layers);
                scope.spawn(move || boot_guest(name, vm, kernel, program, layers))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow!("booting a guest panicked")))
            })
            .collect()
    });
    let mut guests = Vec::new();
    for g in booted {
        guests.push(g?);
    }
    for g in &mut guests {
        if let Some(r) = &recorder {
            g.session.set_recorder(Box::new(r.clone()));
        }
    }

    let plan = ServePlan {
        workload: Some(command_line(&args.workload)),
        deadline: None,
        stats: args.stats,
        output: args.format.format(),
        flamegraph: recording.as_ref().and_then(|r| r.flamegraph.clone()),
    };
    serve_and_report(
        guests,
        &program,
        recorder,
        &stop,
        &snapshot_requested,
        &plan,
    )
}

/// How the guests of a run are served and when the run ends.
pub struct ServePlan {
    /// The command each guest's init runs (`run`); `None` when attaching to
    /// VMs that run whatever they run.
    pub workload: Option<String>,
    /// Ends the run at this time (`attach --duration`).
    pub deadline: Option<Instant>,
    pub stats: bool,
    pub output: probe_lang::OutputFormat,
    /// Write the program's `kstack`-keyed maps as a flame graph (SVG, and
    /// folded stacks next to it).
    pub flamegraph: Option<std::path::PathBuf>,
}

/// Runs BEGIN, serves every guest in its own thread until the run ends
/// (workloads done, Ctrl-C, `exit()`, deadline, or the target gone), then
/// detaches, finishes the trace, runs END, prints the maps and returns the
/// exit status.
pub fn serve_and_report(
    guests: Vec<Guest>,
    program: &Arc<probe_lang::Program>,
    recorder: Option<crate::record::SharedRecorder>,
    stop: &AtomicBool,
    snapshot_requested: &AtomicBool,
    plan: &ServePlan,
) -> Result<i32> {
    let count = guests.len();
    let mut guests = guests;
    for g in &mut guests {
        if let Some(r) = &recorder {
            g.session.set_recorder(Box::new(r.clone()));
            // With trace() the script decides what is recorded.
            g.session.set_record_every_hit(!program.uses_trace());
        }
    }
    let nprobes = program.probes().len();
    let mut runtime = Runtime::new(program.clone(), Box::new(std::io::stdout()));
    runtime.set_output_format(plan.output);
    runtime.set_start_nsecs(probe_engine::monotonic_ns());
    let runtime = Mutex::new(runtime);
    print!(
        "{}",
        probe_lang::attaching_message_for(nprobes, plan.output)
    );
    let _ = std::io::stdout().flush();

    let script_exit = AtomicBool::new(false);
    // BEGIN and END see the first guest's kernel symbols (for kaddr/ksym).
    let special_kernel = guests.first().and_then(|g| g.session.kernel().cloned());
    let begin_exit = {
        let mut rt = runtime.lock().unwrap_or_else(|e| e.into_inner());
        run_special(
            program,
            &mut rt,
            &ProbeSpec::Begin,
            special_kernel.as_deref(),
        ) == Flow::Exit
    };
    // One thread per guest: a slow or dead guest never stalls the others.
    // They share the runtime (maps, output), held only while a handler runs.
    let outcomes: Vec<GuestOutcome> = std::thread::scope(|scope| {
        let handles: Vec<_> = guests
            .into_iter()
            .enumerate()
            .map(|(index, mut g)| {
                let (runtime, script_exit, recorder) = (&runtime, &script_exit, &recorder);
                scope.spawn(move || {
                    if begin_exit {
                        return GuestOutcome::new(g, EndReason::ScriptExit, None);
                    }
                    let started = Instant::now();
                    let mut start = || -> Result<()> {
                        g.session.resume()?;
                        if let (Some(command), Some(vm)) = (&plan.workload, g.vm.as_mut()) {
                            let exports = format!(
                                "export VMPROBE_GUEST={} VMPROBE_GUEST_INDEX={index}; ",
                                g.name
                            );
                            vm.start_workload(&format!("{exports}{command}"))?;
                        }
                        Ok(())
                    };
                    if let Err(e) = start() {
                        return GuestOutcome::new(g, EndReason::TargetGone(e.to_string()), None);
                    }
                    let vm = &mut g.vm;
                    let mut poll = || {
                        if stop.load(Ordering::Relaxed) {
                            return Some(EndReason::Interrupted);
                        }
                        if script_exit.load(Ordering::Relaxed) {
                            return Some(EndReason::ScriptExit);
                        }
                        if plan.deadline.is_some_and(|d| Instant::now() >= d) {
                            return Some(EndReason::Interrupted);
                        }
                        if index == 0 && snapshot_requested.swap(false, Ordering::Relaxed) {
                            snapshot(recorder.as_ref());
                        }
                        let vm = vm.as_mut()?;
                        match vm.poll_exit() {
                            Ok(Some(status)) => Some(EndReason::WorkloadExited(status)),
                            Ok(None) => None,
                            Err(e) => Some(EndReason::TargetGone(e.to_string())),
                        }
                    };
                    let reason = g.session.run(runtime, &mut poll);
                    if reason == EndReason::ScriptExit {
                        script_exit.store(true, Ordering::Relaxed);
                    }
                    GuestOutcome::new(g, reason, Some(started.elapsed().as_secs_f64()))
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("a guest thread panicked"))
            .collect()
    });

    let mut outcomes = outcomes;
    let mut detach_errors = Vec::new();
    let mut stats_lines = Vec::new();
    for o in &mut outcomes {
        if plan.stats {
            stats_lines.push(stats_line(o));
        }
    }
    let mut finished = Vec::new();
    for o in outcomes {
        let GuestOutcome {
            mut guest, reason, ..
        } = o;
        drop(guest.session.take_recorder());
        for line in guest.session.finish_layers() {
            if plan.stats {
                eprintln!("vmprobe: stats: {}: {line}", guest.name);
            }
        }
        let gone = matches!(reason, EndReason::TargetGone(_));
        let name = guest.name.clone();
        if !gone && let Err(e) = guest.session.detach() {
            detach_errors.push(format!("{name}: {e}"));
        }
        finished.push((name, guest.vm, reason));
    }

    let trace_complete = match recorder {
        Some(r) => finish_recorder(r)?,
        None => true,
    };
    let mut runtime = runtime.into_inner().unwrap_or_else(|e| e.into_inner());
    run_special(
        program,
        &mut runtime,
        &ProbeSpec::End,
        special_kernel.as_deref(),
    );
    if let Some(path) = &plan.flamegraph {
        match write_flamegraph(path, runtime.stack_entries()) {
            Ok(n) => eprintln!("vmprobe: flame graph of {n} stacks in {}", path.display()),
            Err(e) => eprintln!("vmprobe: writing the flame graph: {e:#}"),
        }
    }
    runtime.print_maps();
    let _ = std::io::stdout().flush();
    for (probe, error, count) in runtime.errors() {
        eprintln!("vmprobe: {probe}: {error} ({count} times)");
    }
    for line in stats_lines {
        eprintln!("{line}");
    }
    for e in detach_errors {
        eprintln!("vmprobe: detach: {e}");
    }

    let prefix = |name: &str| {
        if count == 1 {
            String::new()
        } else {
            format!("{name}: ")
        }
    };
    let mut code = 0;
    for (name, vm, reason) in finished {
        let c = match reason {
            EndReason::WorkloadExited(status) => {
                if let Some(mut vm) = vm
                    && let Err(e) = vm.shutdown(Duration::from_secs(10))
                {
                    eprintln!("vmprobe: {}{e}", prefix(&name));
                }
                status
            }
            EndReason::ScriptExit | EndReason::Interrupted => 0,
            EndReason::TargetGone(why) => {
                eprintln!(
                    "vmprobe: {}the VM went away ({why}); output above is what was collected",
                    prefix(&name)
                );
                1
            }
        };
        if code == 0 {
            code = c;
        }
    }
    if code == 0 && !trace_complete {
        code = 1;
    }
    Ok(code)
}

/// One guest, armed and stopped: booted by vmprobe (with its `Vm`) or
/// attached to (no `Vm`: someone else's QEMU, left running on detach).
pub struct Guest {
    pub name: String,
    pub vm: Option<Vm>,
    pub session: Session,
}

pub struct GuestOutcome {
    guest: Guest,
    reason: EndReason,
    workload_secs: Option<f64>,
}

impl GuestOutcome {
    fn new(guest: Guest, reason: EndReason, workload_secs: Option<f64>) -> Self {
        GuestOutcome {
            guest,
            reason,
            workload_secs,
        }
    }
}

fn stats_line(o: &mut GuestOutcome) -> String {
    let round_trips = o.guest.session.client().round_trips();
    let s = &o.guest.session.stats;
    let h = &s.service_ns;
    format!(
        "vmprobe: stats: {}: workload {:.3} s wall, {} hits, {} returns, {} stray stops, service time per hit: mean {:.1} us, p50 {:.1} us, p99 {:.1} us, {} round trips in all",
        o.guest.name,
        o.workload_secs.unwrap_or(0.0),
        s.hits,
        s.returns,
        s.stray_stops,
        h.mean() / 1e3,
        h.value_at_quantile(0.5) as f64 / 1e3,
        h.value_at_quantile(0.99) as f64 / 1e3,
        round_trips,
    )
}

/// Lets a launched guest boot, attaches, finds its KASLR slide and arms the
/// program.
fn boot_guest(
    name: String,
    mut vm: Vm,
    kernel: &KernelInfo,
    program: &Arc<probe_lang::Program>,
    layers: &probe_engine::LayerPlan,
) -> Result<Guest> {
    let mut client = Client::connect_unix_wait(&vm.gdb_socket(), Duration::from_secs(5))
        .with_context(|| format!("{name}: attaching to QEMU's gdbstub"))?;
    // QEMU's system-mode stub reads packets without waiting for our acks.
    client.set_stub_ignores_acks(true);
    let mut session = Session::new(client);
    session.set_name(&name);
    session.resume()?;
    let booted = Instant::now();
    vm.wait_ready(BOOT_TIMEOUT)
        .map_err(|e| anyhow!("{name}: {e}; last console output: {}", tail(&vm)))?;
    session.pause()?;
    let slide = arm_program(&mut session, program, kernel)?;
    if !layers.vmm_events.is_empty() {
        let log = vm
            .log_file()
            .context("QEMU was started without a log file")?;
        let source =
            probe_engine::layers::VmmSource::start(&vm.qmp_socket(), log, &layers.vmm_events)
                .with_context(|| format!("{name}: QEMU trace events"))?;
        session.add_layer(Box::new(source), &layers.handlers);
    }
    if !layers.tracepoints.is_empty() {
        let conditions = probe_engine::layers::host_conditions(program);
        let source =
            probe_engine::layers::HostSource::start(vm.pid(), &layers.tracepoints, &conditions)
                .with_context(|| format!("{name}: host tracepoints"))?;
        session.add_layer(Box::new(source), &layers.handlers);
    }
    eprintln!(
        "vmprobe: {name} up in {:.1} s, KASLR slide {slide:#x}",
        booted.elapsed().as_secs_f64()
    );
    Ok(Guest {
        name,
        vm: Some(vm),
        session,
    })
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

/// Puts a prefix in front of every line written through it, and passes on
/// whole lines only: several guests share one stderr, and a line written in
/// two pieces would otherwise have another guest's line land in its middle.
struct PrefixLines<W: Write> {
    prefix: String,
    inner: W,
    pending: Vec<u8>,
}

/// A line longer than this is passed on in pieces rather than held forever.
const MAX_HELD_LINE: usize = 64 * 1024;

impl<W: Write> PrefixLines<W> {
    fn new(prefix: String, inner: W) -> Self {
        PrefixLines {
            prefix,
            inner,
            pending: Vec::new(),
        }
    }

    /// Writes `line` (newline included, if any) with the prefix, in one write.
    fn emit(&mut self, line: &[u8]) -> std::io::Result<()> {
        let mut out = Vec::with_capacity(self.prefix.len() + line.len());
        out.extend_from_slice(self.prefix.as_bytes());
        out.extend_from_slice(line);
        self.inner.write_all(&out)
    }
}

impl<W: Write> Write for PrefixLines<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.pending.extend_from_slice(buf);
        let mut out = Vec::new();
        let mut start = 0;
        while let Some(nl) = self.pending[start..].iter().position(|&b| b == b'\n') {
            out.extend_from_slice(self.prefix.as_bytes());
            out.extend_from_slice(&self.pending[start..start + nl + 1]);
            start += nl + 1;
        }
        self.pending.drain(..start);
        if !out.is_empty() {
            self.inner.write_all(&out)?;
        }
        if self.pending.len() > MAX_HELD_LINE {
            let held = std::mem::take(&mut self.pending);
            self.emit(&held)?;
            self.inner.write_all(b"\n")?;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

impl<W: Write> Drop for PrefixLines<W> {
    /// The guest's last words, even without a final newline.
    fn drop(&mut self) {
        if !self.pending.is_empty() {
            let held = std::mem::take(&mut self.pending);
            let _ = self.emit(&held).and_then(|_| self.inner.write_all(b"\n"));
        }
    }
}

/// Writes the rest of the trace (or the flight recorder's last snapshot)
/// once nothing else holds the recorder, and says what was recorded, and
/// what was lost, once. Returns whether the trace holds every event.
pub(crate) fn finish_recorder(r: crate::record::SharedRecorder) -> Result<bool> {
    let recorder = Arc::try_unwrap(r.0)
        .map_err(|_| anyhow!("recorder still shared"))?
        .into_inner()
        .map_err(|_| anyhow!("recorder lock poisoned"))?;
    match recorder.finish() {
        Ok(done) => {
            eprintln!("vmprobe: recorded {}", done.summary);
            if let Some(e) = &done.error {
                eprintln!("vmprobe: writing the trace: {e}");
            }
            Ok(done.error.is_none())
        }
        Err(e) => {
            eprintln!("vmprobe: writing the trace: {e}");
            Ok(false)
        }
    }
}

/// Flight recorder snapshot on SIGUSR1.
pub(crate) fn snapshot(recorder: Option<&crate::record::SharedRecorder>) {
    let Some(r) = recorder else {
        eprintln!("vmprobe: SIGUSR1: nothing is being recorded");
        return;
    };
    match r
        .0
        .lock()
        .map_err(|_| anyhow!("recorder lock"))
        .and_then(|mut r| r.snapshot())
    {
        Ok(Some((dir, n))) => eprintln!("vmprobe: snapshot: {n} events in {}", dir.display()),
        Ok(None) => eprintln!("vmprobe: SIGUSR1: no flight recorder (--ring)"),
        Err(e) => eprintln!("vmprobe: snapshot failed: {e}"),
    }
}

fn tail(vm: &Vm) -> String {
    let text = vm.console_tail();
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(3)..].join(" | ")
}

#[cfg(test)]
mod tests {
    use super::{PrefixLines, command_line};
    use std::io::Write;

    #[test]
    fn console_lines_get_the_guest_prefix() {
        let mut out = Vec::new();
        {
            let mut w = PrefixLines::new("vm1: ".into(), &mut out);
            w.write_all(b"a\nb").unwrap();
            // Only whole lines go out, so another guest's line cannot land
            // inside "bc".
            assert_eq!(w.inner.as_slice(), b"vm1: a\n");
            w.write_all(b"c\n\nd").unwrap();
        }
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "vm1: a\nvm1: bc\nvm1: \nvm1: d\n"
        );
    }

    #[test]
    fn workload_words_are_quoted_for_the_guest_shell() {
        let w = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            command_line(&w(&["dd", "if=/dev/zero", "bs=1"])),
            "dd if=/dev/zero bs=1"
        );
        assert_eq!(
            command_line(&w(&["echo", "a b", "it's"])),
            r"echo 'a b' 'it'\''s'"
        );
        assert_eq!(command_line(&w(&["echo a; echo b"])), "echo a; echo b");
        assert_eq!(command_line(&w(&["printf", ""])), "printf ''");
    }
}
