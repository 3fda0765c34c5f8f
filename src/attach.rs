//! `vmprobe attach`: probe VMs that vmprobe did not start, through the GDB
//! stub their VMM already offers, and leave them running on detach.
//!
//! A script of host tracepoints only (`host:tracepoint:kvm:kvm_pio`, ...) needs
//! neither a stub nor a kernel image: vmprobe finds the VM's vCPU threads
//! through QMP and never stops the guest.

use crate::kernel::KernelInfo;
use crate::recorder::{Recording, start_recorder};
use crate::report::{ServePlan, serve_and_report};
use anyhow::{Context, Result, anyhow, bail};
use backend_gdb::Session;
use gdb_remote::Client;
use kernel_image::KernelSymbols;
use probe_engine::Backend;
use probe_engine::layers::{HostSource, LayerSet, LayersOnly, VmmSource};
use probe_engine::serve::Guest;
use probe_lang::ProbeSpec;
use probe_plan::LayerPlan;
use qemu_vmm::Qmp;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub use crate::vm_spec::{StubAddr, VmSpec, parse_vm_spec};

mod again;

pub fn attach(args: crate::AttachArgs) -> Result<i32> {
    attach_recording(args, None)
}

/// `attach`, or with a recording `record --vm`: the probe events of running
/// VMs also go into trace files.
pub fn attach_recording(args: crate::AttachArgs, recording: Option<Recording>) -> Result<i32> {
    crate::bpftrace::apply(&args.bpftrace)?;
    let pid =
        crate::bpftrace::pid_for_attach(&args.bpftrace, args.vm.len(), args.config.is_some())?;
    let (source, source_name) = crate::script::program_source(&args.program, &args.file)?;
    // With only a watched directory, the program is typed with the kernel
    // its VMs will run.
    let watched = args.watch.as_ref().map(|w| VmSpec {
        kernel: w.kernel.clone(),
        ..VmSpec::named("watch").expect("a valid name")
    });
    let Some(first) = args.vm.first().or(watched.as_ref()) else {
        bail!("no VM: give --vm NAME=gdb:HOST:PORT or NAME=plugin:SOCKET (repeatable)");
    };
    let allowed = allowed_recording(&recording, &args.otlp);
    let guest_root = args.guest_root.as_deref();
    let (compiled, mut first_kernel) = compile_for(
        &source,
        &source_name,
        first,
        allowed,
        (guest_root, args.kernel_headers.as_deref()),
        pid,
    )?;
    let program = match compiled {
        Ok(p) => Arc::new(p),
        Err(diags) => {
            eprint!("{diags}");
            return Ok(1);
        }
    };
    // What no probe kind has (guest state in a VMM event): refused before
    // any VM is touched, layers-only attaches included.
    if !crate::kernel::check_capabilities(&program) {
        return Ok(1);
    }
    // A per-guest probe (`vm1:kprobe:F`) names one of the VMs given; with a
    // watched directory, VMs are named as they appear.
    if args.watch.is_none() {
        let names: Vec<&str> = args.vm.iter().map(|s| s.name.as_str()).collect();
        if let Err(diags) = program.check_guests(&names) {
            eprint!("{diags}");
            return Ok(1);
        }
    }
    let layers = check_layers(&program, &args.vm, args.watch.is_some(), &args.config)?;
    let records = recording.is_some() || args.otlp.is_some();
    let recording_mode = crate::plugin::record_mode(records, &program);
    let metrics = crate::metrics::bind(args.metrics, &program)?;
    let stop = Arc::new(AtomicBool::new(false));
    // Which signal it was, for the exit status of an interrupted attach.
    let signal = Arc::new(AtomicUsize::new(0));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, stop.clone()).context("installing signal handlers")?;
        signal_hook::flag::register_usize(sig, signal.clone(), sig as usize)
            .context("installing signal handlers")?;
    }
    let deadline = args.duration.and_then(|d| Instant::now().checked_add(d));
    let snapshot_requested = Arc::new(AtomicBool::new(false));
    // Named and typed with the kernel the program was typed with.
    let recorder = start_recorder(recording.as_ref(), &snapshot_requested, || {
        first_kernel
            .as_ref()
            .map(|k| crate::kernel::own_fields(&program, k))
            .unwrap_or_default()
    })?;
    let mut plan = ServePlan {
        workload: None,
        deadline,
        stats: args.stats,
        output: args.format.format(),
        flamegraph: recording.and_then(|r| r.flamegraph),
        out: crate::bpftrace::output(&args.bpftrace)?,
        otlp: args.otlp.clone().map(|endpoint| crate::otlp::OtlpPlan {
            endpoint,
            releases: otlp_releases(&args.vm),
        }),
        metrics,
        reattach: None,
        discover: None,
        reload: None,
    };
    if layers_only(&program) {
        let guests = attach_layers_only(&args, &program, &layers)?;
        return serve_and_report(
            guests,
            &program,
            recorder,
            &stop,
            &snapshot_requested,
            &plan,
        );
    }
    // Stubs opened through QMP live in a private 0700 directory and are
    // closed again after detach, leaving the VM as it was.
    let private =
        qemu_guest::private_dir("vmprobe-attach-").context("creating a socket directory")?;
    let mut opened: Vec<&VmSpec> = Vec::new();
    let mut guests = Vec::new();
    for (i, spec) in args.vm.iter().enumerate() {
        // The first VM's kernel was loaded to type the program.
        let kernel = match first_kernel.take().filter(|_| i == 0) {
            Some(k) => Ok(k),
            None => vm_kernel(spec),
        };
        let until = Until {
            stop: stop.clone(),
            deadline,
        };
        let attached =
            kernel.and_then(
                |k| match plugin_choice(spec, &program, args.backend, args.verbose)? {
                    Some(socket) => {
                        let how = (recording_mode, args.stall_timeout);
                        attach_plugin(spec, &socket, k, &program, &layers, how)
                    }
                    None => attach_one(
                        spec,
                        k,
                        &program,
                        &layers,
                        private.path(),
                        &mut opened,
                        (&until, args.stall_timeout, false),
                    ),
                },
            );
        match attached {
            Ok(g) => guests.push(g),
            Err(e) => {
                // The VMs attached so far are the user's: leave them as
                // they were, running and without breakpoints.
                for g in guests {
                    report_detach(&g.name, g.backend.finish(None, false));
                }
                close_stubs(&mut opened);
                let aborted = e
                    .chain()
                    .any(|c| matches!(c.downcast_ref(), Some(gdb_remote::Error::Aborted)));
                if !aborted {
                    return Err(e.context(spec.name.clone()));
                }
                // Interrupted: "while connecting to the GDB stub" or "while
                // finding the KASLR slide", from the error's context.
                return Ok(interrupted(&spec.name, &e, &args, &signal));
            }
        }
    }
    let service = match &args.config {
        Some(config) => {
            // SIGHUP reloads the program (only in service mode: elsewhere
            // it ends vmprobe, as it ends bpftrace).
            let requested = Arc::new(AtomicBool::new(false));
            signal_hook::flag::register(signal_hook::consts::SIGHUP, requested.clone())
                .context("installing signal handlers")?;
            let reload = again::Reload {
                config: config.clone(),
                requested,
                typed_with: first.clone(),
                recording: allowed,
                guest_root: args.guest_root.clone(),
                kernel_headers: args.kernel_headers.clone(),
                settings: crate::service::load(config)?,
            };
            Some(Arc::new(again::Service {
                specs: Mutex::new(args.vm.clone()),
                watch: args.watch.clone(),
                program: Mutex::new(program.clone()),
                private: private.path().to_path_buf(),
                until: Until {
                    stop: stop.clone(),
                    deadline,
                },
                stall_timeout: args.stall_timeout,
                backend: args.backend,
                records,
                opened: Mutex::new(Vec::new()),
                told: Mutex::new(HashMap::new()),
                reload,
            }))
        }
        None => None,
    };
    if let Some(service) = &service {
        let s = service.clone();
        plan.reattach = Some(Box::new(move |name, ended| s.reattach(name, ended)));
        if service.watch.is_some() {
            let s = service.clone();
            plan.discover = Some(Box::new(move |ended| s.discover(ended)));
        }
        let (s, i, r) = (service.clone(), service.clone(), service.clone());
        plan.reload = Some(crate::report::ReloadPlan {
            program: Box::new(move || s.reloaded_program()),
            install: Box::new(move |p| *again::lock(&i.program) = p.clone()),
            rearm: Box::new(move |name, ended| r.rearm(name, ended)),
        });
    }
    let code = serve_and_report(
        guests,
        &program,
        recorder,
        &stop,
        &snapshot_requested,
        &plan,
    );
    // Stubs opened through QMP on a VM attached again or found in the
    // watched directory are closed too, once.
    let more = service.map(|s| s.opened_specs()).unwrap_or_default();
    for spec in &more {
        if !opened.iter().any(|o| o.name == spec.name) {
            opened.push(spec);
        }
    }
    close_stubs(&mut opened);
    code
}

/// What ends an attach still under way: a signal (SIGINT, SIGTERM) or the
/// `--duration` deadline.
#[derive(Clone)]
struct Until {
    stop: Arc<AtomicBool>,
    deadline: Option<Instant>,
}

impl Until {
    fn reached(&self) -> bool {
        self.stop.load(Ordering::Relaxed) || self.deadline.is_some_and(|d| Instant::now() >= d)
    }

    /// The check a stub's client makes while it waits for the stub.
    fn abort_check(&self) -> gdb_remote::AbortCheck {
        let until = self.clone();
        Box::new(move || until.reached())
    }
}

/// Says why an attach stopped part way and gives the exit status: 128 plus
/// the signal's number (130 for SIGINT, 143 for SIGTERM), as a shell
/// reports a command a signal ended, since nothing was probed and nothing
/// printed; 1 when `--duration` ran out first.
fn interrupted(
    name: &str,
    e: &anyhow::Error,
    args: &crate::AttachArgs,
    signal: &AtomicUsize,
) -> i32 {
    let what = e.to_string();
    match signal.load(Ordering::Relaxed) {
        0 => {
            let seconds = args.duration.unwrap_or_default().as_secs_f64();
            eprintln!(
                "vmprobe: {name}: --duration {seconds} s ran out while {what}; nothing was probed"
            );
            1
        }
        sig => {
            let sig_name = if sig == signal_hook::consts::SIGTERM as usize {
                "SIGTERM"
            } else {
                "SIGINT"
            };
            eprintln!(
                "vmprobe: {name}: interrupted by {sig_name} while {what}; nothing was probed"
            );
            128 + sig as i32
        }
    }
}

/// Closes the stubs opened through QMP, each through a new monitor
/// connection: QEMU serves one client per monitor, and while attached that
/// client may be the `vmm:` event source.
fn close_stubs(opened: &mut Vec<&VmSpec>) {
    for spec in opened.drain(..) {
        let closed = connect_qmp(spec, Duration::from_secs(5))
            .and_then(|mut qmp| qmp.close_gdbstub().map_err(anyhow::Error::from));
        if let Err(e) = closed {
            eprintln!(
                "vmprobe: {}: closing the gdbstub opened through QMP: {e:#}",
                spec.name
            );
        }
    }
}

/// The plugin's socket when the plugin serves this VM: given (`plugin:`),
/// not refused with `--backend gdb`, and able to serve the program (else,
/// with `--backend plugin` or no stub to fall back on, the error says why).
fn plugin_choice(
    spec: &VmSpec,
    program: &probe_lang::Program,
    backend: crate::BackendArg,
    verbose: bool,
) -> Result<Option<PathBuf>> {
    let Some(socket) = &spec.plugin else {
        if backend == crate::BackendArg::Plugin {
            bail!("--backend plugin: give the VM's plugin socket (plugin:SOCKET)");
        }
        return Ok(None);
    };
    let no_stub = spec.gdb.is_none() && spec.qmp.is_none();
    if backend == crate::BackendArg::Gdb {
        if no_stub {
            bail!("--backend gdb: give the VM's stub (gdb:, or qmp: to open one)");
        }
        return Ok(None);
    }
    match backend_plugin::check_program(program) {
        Ok(()) => {
            if verbose {
                eprintln!("vmprobe: {}: backend: plugin", spec.name);
            }
            Ok(Some(socket.clone()))
        }
        Err(diags) if backend == crate::BackendArg::Plugin || no_stub => {
            bail!(
                "the plugin cannot serve this program:\n{}",
                diags.to_string().trim_end()
            )
        }
        Err(diags) => {
            if verbose {
                let first = diags.to_string();
                eprintln!(
                    "vmprobe: {}: backend: gdb ({})",
                    spec.name,
                    first.lines().next().unwrap_or("")
                );
            }
            Ok(None)
        }
    }
}

/// Attaches through vmprobe's plugin in the VM's QEMU: the guest never
/// stops.
fn attach_plugin(
    spec: &VmSpec,
    socket: &std::path::Path,
    kernel: KernelInfo,
    program: &Arc<probe_lang::Program>,
    layers: &LayerPlan,
    (record, stall_timeout): (plugin_protocol::RecordMode, Duration),
) -> Result<Guest> {
    if !crate::kernel::check_program(program, &kernel.symbols)? {
        bail!("the program names unknown kernel symbols");
    }
    let mut backend = crate::plugin::attach(&spec.name, socket, program, &kernel, record)?;
    // vmprobe did not start this QEMU, so only the plugin's silence tells
    // that it stopped.
    backend.set_stall_timeout(Some(stall_timeout));
    if !layers.tracepoints.is_empty() {
        let vcpus = vcpu_threads(&mut connect_qmp(spec, Duration::from_secs(5))?)?;
        let source = host_source(vcpus, program, layers)?;
        backend.add_layer(Box::new(source), &layers.handlers);
    }
    if !layers.vmm_events.is_empty() {
        backend.add_layer(Box::new(vmm_source(spec, layers)?), &layers.handlers);
    }
    let slide = probe_engine::Backend::kernel(&backend).map_or(0, |k| k.slide);
    progress!(
        "vmprobe: attached to {} through its plugin ({}), KASLR slide {slide:#x}",
        spec.name,
        backend.plugin_version()
    );
    Ok(Guest {
        name: spec.name.clone(),
        backend: Box::new(backend),
        control: None,
    })
}

fn attach_one<'s>(
    spec: &'s VmSpec,
    kernel: KernelInfo,
    program: &Arc<probe_lang::Program>,
    layers: &LayerPlan,
    private: &std::path::Path,
    opened: &mut Vec<&'s VmSpec>,
    (until, stall_timeout, after_boot): (&Until, Duration, bool),
) -> Result<Guest> {
    if !crate::kernel::check_program(program, &kernel.symbols)? {
        bail!("the program names unknown kernel symbols");
    }
    let timeout = Duration::from_secs(5);
    if crate::uprobe::has_uprobes(program) {
        // Only QMP says which accelerator the VM runs under.
        if spec.qmp.is_none() {
            bail!(
                "uprobes need the VM's qmp:PATH, to check that it runs under TCG ({})",
                crate::uprobe::KVM_REFUSAL
            );
        }
        let kvm = connect_qmp(spec, timeout)?
            .execute_raw("query-kvm", None)
            .context("asking QMP whether the VM runs under KVM (query-kvm)")?;
        if kvm.get("enabled").and_then(|v| v.as_bool()) != Some(false) {
            bail!("{}", crate::uprobe::KVM_REFUSAL);
        }
    }
    // Signals and --duration end the connection and the search for the
    // slide (`arm_program` takes the check off before arming).
    let abort = Some(until.abort_check());
    let client = match &spec.gdb {
        Some(StubAddr::Unix(path)) => Client::connect_unix_abortable(path, timeout, false, abort),
        Some(StubAddr::Tcp(addr)) => {
            let addr = std::net::ToSocketAddrs::to_socket_addrs(addr)
                .with_context(|| format!("resolving {addr}"))?
                .next()
                .ok_or_else(|| anyhow!("{addr}: no address"))?;
            Client::connect_tcp_abortable(addr, timeout, abort)
        }
        None => {
            // No stub given: open one on the running VM through its QMP
            // monitor (HMP `gdbserver`), on a Unix socket only we can reach.
            // The monitor connection is closed right after, freeing the
            // monitor for the `vmm:` event source.
            let sock = private.join(format!("{}.gdb", spec.name));
            // A socket left by an earlier QEMU of this VM (service mode),
            // in vmprobe's own directory.
            let _ = std::fs::remove_file(&sock);
            connect_qmp(spec, timeout)?
                .open_gdbstub_unix(&sock)
                .context("opening a gdbstub through QMP")?;
            opened.push(spec);
            qemu_guest::check_private_socket(&sock)?;
            Client::connect_unix_abortable(&sock, timeout, true, abort)
        }
    }
    .context("connecting to the GDB stub")?;
    // QEMU stops the VM when a debugger connects; from here it is as after
    // boot in `run`.
    let mut session = Session::new(client);
    session.set_name(&spec.name);
    match arm_with_layers(spec, &mut session, kernel, program, layers, after_boot) {
        Ok(slide) => {
            // vmprobe did not start this QEMU, so only the stub's silence
            // tells that it stopped: from here on a late reply is waited
            // for up to --stall-timeout (signals and --duration end the
            // wait), not failed at the reply timeout.
            session.set_stall_timeout(Some(stall_timeout), Some(until.abort_check()));
            progress!("vmprobe: attached to {}, KASLR slide {slide:#x}", spec.name);
            Ok(Guest {
                name: spec.name.clone(),
                backend: Box::new(session),
                control: None,
            })
        }
        Err(e) => {
            // After an interruption the stub gets half a second: a stub that
            // stopped answering would otherwise hold the exit for its whole
            // reply timeout.
            session.client().set_abort(None);
            let interrupted = until.reached();
            if interrupted {
                session.client().set_timeout(Duration::from_millis(500));
            }
            let finished = Box::new(session).finish(None, false);
            match finished.detach_error {
                // One line, in the order things happened: the error, then
                // what it left behind (QEMU keeps a VM stopped when its
                // debugger leaves without detaching).
                Some(detach) if !interrupted => Err(anyhow!(
                    "{}; detaching after it failed too (the VM may still be stopped): {detach}",
                    crate::one_line(&e)
                )),
                _ => {
                    report_detach(&spec.name, finished);
                    Err(e)
                }
            }
        }
    }
}

/// After an error, the VMs attached are left running and without
/// breakpoints (a VM stays stopped with its breakpoints when a debugger
/// just disconnects): says if that failed.
fn report_detach(name: &str, finished: probe_engine::Finished) {
    if let Some(e) = finished.detach_error {
        eprintln!("vmprobe: {name}: detaching after the error: {e}");
    }
}

/// Arms the program on a stopped VM and adds its host and VMM event
/// sources. Returns the KASLR slide.
fn arm_with_layers(
    spec: &VmSpec,
    session: &mut Session,
    kernel: KernelInfo,
    program: &Arc<probe_lang::Program>,
    layers: &LayerPlan,
    after_boot: bool,
) -> Result<u64> {
    let timeout = Duration::from_secs(5);
    let slide = if after_boot {
        crate::gdb::arm_program_after_boot(session, program, &kernel)?
    } else {
        crate::gdb::arm_program(session, program, &kernel)?
    };
    if !layers.tracepoints.is_empty() {
        // The guest is stopped: no event is missed between arming and
        // resuming.
        let vcpus = vcpu_threads(&mut connect_qmp(spec, timeout)?)?;
        let source = host_source(vcpus, program, layers)?;
        session.add_layer(Box::new(source), &layers.handlers);
    }
    if !layers.vmm_events.is_empty() {
        session.add_layer(Box::new(vmm_source(spec, layers)?), &layers.handlers);
    }
    Ok(slide)
}

/// The VM's kernel (`kernel:IMAGE`, else the default guest's): its symbols
/// and what handlers need of it.
/// Which recording calls a program may make: all of them when recording
/// (`None`), `trace()` when exporting over OTLP, else none.
pub(crate) fn allowed_recording(
    recording: &Option<Recording>,
    otlp: &Option<otlp_export::Endpoint>,
) -> Option<&'static [&'static str]> {
    match (recording, otlp) {
        (Some(_), _) => None,
        (None, Some(_)) => Some(&["trace"]),
        (None, None) => Some(&[]),
    }
}

/// Each VM's kernel release, from its image (`kernel:` or the default
/// guest's), for OTLP's resource attributes.
fn otlp_releases(specs: &[VmSpec]) -> std::collections::HashMap<String, String> {
    let default = std::sync::OnceLock::new();
    specs
        .iter()
        .filter_map(|spec| {
            let image = match &spec.kernel {
                Some(k) => k.clone(),
                None => default
                    .get_or_init(|| crate::kernel::default_image().ok().map(|i| i.kernel))
                    .clone()?,
            };
            Some((spec.name.clone(), crate::otlp::kernel_release(&image)?))
        })
        .collect()
}

fn vm_kernel(spec: &VmSpec) -> Result<KernelInfo> {
    let image = match &spec.kernel {
        Some(k) => k.clone(),
        None => crate::kernel::default_image()?.kernel,
    };
    let cache = qemu_guest::cache_dir().join("symbols");
    let _ = std::fs::create_dir_all(&cache);
    let symbols = KernelSymbols::load(&image, Some(&cache)).context("loading kernel symbols")?;
    Ok(crate::kernel::load_kernel(symbols, &image))
}

/// Whether every probe of the program is outside the guest (host
/// tracepoints, QEMU trace events, BEGIN, END): then no stub is opened and
/// no kernel read.
fn layers_only(program: &probe_lang::Program) -> bool {
    only_layers(program.probes())
}

fn only_layers(probes: &[ProbeSpec]) -> bool {
    let layer =
        |p: &ProbeSpec| matches!(p, ProbeSpec::HostTracepoint { .. } | ProbeSpec::Vmm { .. });
    probes
        .iter()
        .all(|p| layer(p) || matches!(p, ProbeSpec::Begin | ProbeSpec::End))
        && probes.iter().any(layer)
}

/// What compiling for attach gives: the program or its diagnostics, and
/// the first VM's kernel if it was loaded to type the program.
type Compiled = (
    Result<probe_lang::Program, probe_lang::Diagnostics>,
    Option<KernelInfo>,
);

/// Compiles the program typed: with the first VM's kernel types for guest
/// probes (every VM's kernel is checked against it when attaching), with
/// event fields only for a program of VMM and host events. The error is a
/// kernel that cannot be read.
fn compile_for(
    source: &str,
    source_name: &str,
    first: &VmSpec,
    recording: Option<&[&str]>,
    (guest_root, kernel_headers): (Option<&std::path::Path>, Option<&std::path::Path>),
    pid: Option<u64>,
) -> Result<Compiled> {
    let (typed, kernel) = if only_layers(&probe_lang::attach_points(source)) {
        let types = probe_engine::LayerTypes::events_only();
        let typed = probe_lang::compile_with_types(source, source_name, Some(&types));
        (typed, None)
    } else {
        let kernel = vm_kernel(first)?;
        // A VM without kernel:IMAGE, or with the default guest's own image,
        // runs the default guest's kernel.
        let default = match &first.kernel {
            None => Some(crate::kernel::default_image()?.version),
            Some(k) => qemu_guest::default_guest(&qemu_guest::cache_dir())
                .filter(|d| crate::kernel::same_file(&d.kernel, k))
                .map(|d| d.version),
        };
        let headers = crate::script::program_headers(source, kernel_headers, default.as_deref())?;
        (
            crate::kernel::compile_typed(
                source,
                source_name,
                &kernel,
                &probe_lang::Options {
                    pid,
                    headers: Some(headers),
                    ..Default::default()
                },
                guest_root,
            ),
            Some(kernel),
        )
    };
    let checked = match recording {
        None => typed,
        Some(allowed) => typed.and_then(|p| p.check_recording_only("attach", allowed).map(|()| p)),
    };
    Ok((checked, kernel))
}

/// What the program's layer probes need of the VMs, checked before any VM
/// is touched (at start, and for a service's reload); the layer plan.
fn check_layers(
    program: &probe_lang::Program,
    vms: &[VmSpec],
    watch: bool,
    config: &Option<std::path::PathBuf>,
) -> Result<LayerPlan> {
    let layers = probe_plan::resolve_layers(program);
    if watch && (layers_only(program) || !layers.vmm_events.is_empty()) {
        bail!(
            "{}: [watch] serves programs of guest probes (VMs found there have no QEMU log for vmm: probes)",
            config
                .as_deref()
                .unwrap_or(std::path::Path::new(""))
                .display()
        );
    }
    if !layers.vmm_events.is_empty()
        && let Some(spec) = vms.iter().find(|s| s.qmp.is_none() || s.log.is_none())
    {
        bail!("{}: {NEED_LOG}", spec.name);
    }
    // Host tracepoints fail here, not after a guest has been stopped and armed.
    if !layers.tracepoints.is_empty() {
        probe_engine::layers::check_tracepoints(&layers.tracepoints)?;
        if let Some(spec) = vms.iter().find(|s| s.qmp.is_none()) {
            bail!("{}: {NEED_QMP}", spec.name);
        }
    }
    Ok(layers)
}

const NEED_QMP: &str = "host:tracepoint: probes need qmp:PATH to find the VM's vCPU threads";
const NEED_LOG: &str = "vmm: probes need qmp:PATH and log:PATH (QEMU's -D file; start QEMU \
                        with -D PATH -msg timestamp=on)";

/// QEMU's trace events of the VM, through its monitor and log file.
fn vmm_source(spec: &VmSpec, layers: &LayerPlan) -> Result<VmmSource> {
    let (Some(qmp), Some(log)) = (&spec.qmp, &spec.log) else {
        bail!(NEED_LOG);
    };
    VmmSource::start(qmp, log, &layers.vmm_events).context("enabling QEMU trace events")
}

fn connect_qmp(spec: &VmSpec, timeout: Duration) -> Result<Qmp> {
    let path = spec.qmp.as_ref().ok_or_else(|| anyhow!(NEED_QMP))?;
    Qmp::connect_unix(path, timeout)
        .with_context(|| format!("connecting to QMP at {}", path.display()))
}

/// vCPU thread ids (to vCPU index) as the VMM reports them.
fn vcpu_threads(qmp: &mut Qmp) -> Result<HashMap<i32, u32>> {
    Ok(qmp
        .query_cpus_fast()
        .context("listing the vCPU threads (query-cpus-fast)")?
        .into_iter()
        .map(|c| (c.thread_id as i32, c.cpu_index))
        .collect())
}

fn host_source(
    vcpus: HashMap<i32, u32>,
    program: &probe_lang::Program,
    layers: &LayerPlan,
) -> Result<HostSource> {
    let conditions = probe_engine::layers::host_conditions(program);
    let source = HostSource::start_threads(vcpus, &layers.tracepoints, &conditions)?;
    for (tp, filter) in source.filters() {
        if let Some(f) = filter {
            eprintln!("vmprobe: {tp}: in-kernel filter `{f}`");
        }
    }
    Ok(source)
}

/// Sets up every VM of a program of host tracepoints and QEMU trace
/// events: the events come from perf rings and QEMU's log, and the guest
/// never stops.
fn attach_layers_only(
    args: &crate::AttachArgs,
    program: &Arc<probe_lang::Program>,
    layers: &LayerPlan,
) -> Result<Vec<Guest>> {
    let mut guests = Vec::new();
    for spec in &args.vm {
        let mut qmp = connect_qmp(spec, Duration::from_secs(5)).context(spec.name.clone())?;
        // The QMP connection is not kept: QEMU serves one client per
        // monitor, which stays the user's.
        let vcpus = vcpu_threads(&mut qmp).context(spec.name.clone())?;
        drop(qmp);
        let tids = vcpus.keys().copied().collect();
        let mut set = LayerSet::default();
        if !layers.tracepoints.is_empty() {
            let source = host_source(vcpus, program, layers).context(spec.name.clone())?;
            set.add(Box::new(source), &layers.handlers);
        }
        if !layers.vmm_events.is_empty() {
            let source = vmm_source(spec, layers).context(spec.name.clone())?;
            set.add(Box::new(source), &layers.handlers);
        }
        progress!(
            "vmprobe: attached to {} (VMM and host layers only, no stub)",
            spec.name
        );
        guests.push(Guest {
            name: spec.name.clone(),
            backend: Box::new(LayersOnly::new(&spec.name, set, tids)),
            control: None,
        });
    }
    Ok(guests)
}
