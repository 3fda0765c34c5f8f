//! `vmprobe attach`: probe VMs that vmprobe did not start, through the GDB
//! stub their VMM already offers, and leave them running on detach.
//!
//! A script of host tracepoints only (`tracepoint:kvm:kvm_pio`, ...) needs
//! neither a stub nor a kernel image: vmprobe finds the VM's vCPU threads
//! through QMP and never stops the guest.

use crate::run::{Guest, ServePlan, serve_and_report};
use anyhow::{Context, Result, anyhow, bail};
use gdb_remote::Client;
use kernel_image::KernelSymbols;
use probe_engine::layers::{HostSource, LayerSet, VmmSource};
use probe_engine::{LayerPlan, Session};
use probe_lang::{Flow, ProbeSpec, Runtime};
use qemu_vmm::Qmp;
use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Where a VM's stub is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StubAddr {
    Tcp(String),
    Unix(PathBuf),
}

/// One `--vm NAME=gdb:HOST:PORT[,qmp:PATH][,log:PATH][,kernel:IMAGE]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VmSpec {
    pub name: String,
    pub gdb: Option<StubAddr>,
    pub qmp: Option<PathBuf>,
    /// QEMU's log file (`-D PATH -msg timestamp=on`), for `vmm:` probes.
    pub log: Option<PathBuf>,
    pub kernel: Option<PathBuf>,
}

/// Parses a `--vm` value; the error names the part that is wrong.
pub fn parse_vm_spec(text: &str) -> Result<VmSpec, String> {
    let (name, rest) = text.split_once('=').ok_or_else(|| {
        format!("'{text}': expected NAME=gdb:HOST:PORT[,qmp:PATH][,log:PATH][,kernel:IMAGE]")
    })?;
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(format!(
            "'{name}': a VM name is letters, digits, '-' and '_'"
        ));
    }
    let mut spec = VmSpec {
        name: name.to_string(),
        gdb: None,
        qmp: None,
        log: None,
        kernel: None,
    };
    for part in rest.split(',') {
        let (key, value) = part
            .split_once(':')
            .ok_or_else(|| format!("'{part}': expected KEY:VALUE (gdb:, qmp:, log: or kernel:)"))?;
        match key {
            "gdb" => {
                spec.gdb = Some(match value.strip_prefix("unix:") {
                    Some(path) => StubAddr::Unix(PathBuf::from(path)),
                    None => {
                        let (host, port) = value
                            .rsplit_once(':')
                            .ok_or_else(|| format!("'{value}': expected HOST:PORT or unix:PATH"))?;
                        port.parse::<u16>()
                            .map_err(|_| format!("'{port}': not a TCP port"))?;
                        StubAddr::Tcp(format!("{host}:{port}"))
                    }
                })
            }
            "qmp" => spec.qmp = Some(PathBuf::from(value)),
            "log" => spec.log = Some(PathBuf::from(value)),
            "kernel" => spec.kernel = Some(PathBuf::from(value)),
            other => return Err(format!("'{other}': unknown key (gdb, qmp, log or kernel)")),
        }
    }
    if spec.gdb.is_none() && spec.qmp.is_none() {
        return Err(format!(
            "'{text}': give gdb:HOST:PORT (or qmp:PATH to open one)"
        ));
    }
    Ok(spec)
}

pub fn attach(args: crate::AttachArgs) -> Result<i32> {
    attach_recording(args, None)
}

/// `attach`, or with a recording `record --vm`: the probe events of running
/// VMs also go into trace files.
pub fn attach_recording(
    args: crate::AttachArgs,
    recording: Option<crate::run::Recording>,
) -> Result<i32> {
    let (source, source_name) = crate::script::program_source(&args.program, &args.file)?;
    if args.vm.is_empty() {
        bail!("no VM: give --vm NAME=gdb:HOST:PORT (repeatable)");
    }
    let (compiled, mut first_kernel) =
        compile_for(&source, &source_name, &args.vm[0], recording.is_some())?;
    let program = match compiled {
        Ok(p) => Arc::new(p),
        Err(diags) => {
            eprint!("{diags}");
            return Ok(1);
        }
    };
    let layers = probe_engine::resolve_layers(&program);
    if !layers.vmm_events.is_empty()
        && let Some(spec) = args.vm.iter().find(|s| s.qmp.is_none() || s.log.is_none())
    {
        bail!("{}: {NEED_LOG}", spec.name);
    }
    // Host tracepoints fail here, not after a guest has been stopped and armed.
    if !layers.tracepoints.is_empty() {
        probe_engine::layers::check_tracepoints(&layers.tracepoints)?;
        if let Some(spec) = args.vm.iter().find(|s| s.qmp.is_none()) {
            bail!("{}: {NEED_QMP}", spec.name);
        }
    }
    let stop = Arc::new(AtomicBool::new(false));
    // Which signal it was, for the exit status of an interrupted attach.
    let signal = Arc::new(AtomicUsize::new(0));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, stop.clone()).context("installing signal handlers")?;
        signal_hook::flag::register_usize(sig, signal.clone(), sig as usize)
            .context("installing signal handlers")?;
    }
    let deadline = args
        .duration
        .map(|s| Instant::now() + Duration::from_secs_f64(s));
    let snapshot_requested = Arc::new(AtomicBool::new(false));
    let recorder = crate::run::start_recorder(recording.as_ref(), &snapshot_requested)?;
    if layers_only(&program) {
        let plan = LayersOnlyPlan {
            deadline,
            stop: &stop,
            recorder,
            snapshot_requested: &snapshot_requested,
        };
        return serve_layers_only(&args, &program, &layers, plan);
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
        let attached = kernel.and_then(|k| {
            attach_one(
                spec,
                k,
                &program,
                &layers,
                private.path(),
                &mut opened,
                &until,
            )
        });
        match attached {
            Ok(g) => guests.push(g),
            Err(e) => {
                // The VMs attached so far are the user's: leave them as
                // they were, running and without breakpoints.
                for g in guests {
                    detach_after_error(&g.name, g.session, false);
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
    let plan = ServePlan {
        workload: None,
        deadline,
        stats: args.stats,
        output: args.format.format(),
        flamegraph: recording.and_then(|r| r.flamegraph),
    };
    let code = serve_and_report(
        guests,
        &program,
        recorder,
        &stop,
        &snapshot_requested,
        &plan,
    );
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
            let seconds = args.duration.unwrap_or_default();
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

fn attach_one<'s>(
    spec: &'s VmSpec,
    kernel: crate::run::KernelInfo,
    program: &Arc<probe_lang::Program>,
    layers: &LayerPlan,
    private: &std::path::Path,
    opened: &mut Vec<&'s VmSpec>,
    until: &Until,
) -> Result<Guest> {
    if !crate::run::check_program(program, &kernel.symbols)? {
        bail!("the program names unknown kernel symbols");
    }
    let timeout = Duration::from_secs(5);
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
    match arm_with_layers(spec, &mut session, kernel, program, layers) {
        Ok(slide) => {
            eprintln!("vmprobe: attached to {}, KASLR slide {slide:#x}", spec.name);
            Ok(Guest {
                name: spec.name.clone(),
                vm: None,
                session,
            })
        }
        Err(e) => {
            detach_after_error(&spec.name, session, until.reached());
            Err(e)
        }
    }
}

/// Removes what was armed and lets the VM run again: the VM stays stopped
/// with its breakpoints when a debugger just disconnects. After an
/// interruption the stub gets half a second: a stub that stopped answering
/// would otherwise hold the exit for its whole reply timeout.
fn detach_after_error(name: &str, mut session: Session, interrupted: bool) {
    session.client().set_abort(None);
    if interrupted {
        session.client().set_timeout(Duration::from_millis(500));
    }
    // Trace events and host counters off first.
    session.finish_layers();
    if let Err(e) = session.detach() {
        eprintln!("vmprobe: {name}: detaching after the error: {e}");
    }
}

/// Arms the program on a stopped VM and adds its host and VMM event
/// sources. Returns the KASLR slide.
fn arm_with_layers(
    spec: &VmSpec,
    session: &mut Session,
    kernel: crate::run::KernelInfo,
    program: &Arc<probe_lang::Program>,
    layers: &LayerPlan,
) -> Result<u64> {
    let timeout = Duration::from_secs(5);
    let slide = crate::run::arm_program(session, program, &kernel)?;
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
fn vm_kernel(spec: &VmSpec) -> Result<crate::run::KernelInfo> {
    let image = match &spec.kernel {
        Some(k) => k.clone(),
        None => crate::run::default_image()?.kernel,
    };
    let cache = qemu_guest::cache_dir().join("symbols");
    let _ = std::fs::create_dir_all(&cache);
    let symbols = KernelSymbols::load(&image, Some(&cache)).context("loading kernel symbols")?;
    Ok(crate::run::load_kernel(symbols, &image))
}

/// Whether every probe of the program is outside the guest (host
/// tracepoints, QEMU trace events, BEGIN, END): then no stub is opened and
/// no kernel read.
fn layers_only(program: &probe_lang::Program) -> bool {
    only_layers(program.probes())
}

fn only_layers(probes: &[ProbeSpec]) -> bool {
    let layer = |p: &ProbeSpec| matches!(p, ProbeSpec::Tracepoint { .. } | ProbeSpec::Vmm { .. });
    probes
        .iter()
        .all(|p| layer(p) || matches!(p, ProbeSpec::Begin | ProbeSpec::End))
        && probes.iter().any(layer)
}

/// What compiling for attach gives: the program or its diagnostics, and
/// the first VM's kernel if it was loaded to type the program.
type Compiled = (
    Result<probe_lang::Program, probe_lang::Diagnostics>,
    Option<crate::run::KernelInfo>,
);

/// Compiles the program typed: with the first VM's kernel types for guest
/// probes (every VM's kernel is checked against it when attaching), with
/// event fields only for a program of VMM and host events. The error is a
/// kernel that cannot be read.
fn compile_for(
    source: &str,
    source_name: &str,
    first: &VmSpec,
    recording: bool,
) -> Result<Compiled> {
    let (typed, kernel) = if only_layers(&probe_lang::attach_points(source)) {
        let types = probe_engine::LayerTypes::events_only();
        let typed = probe_lang::compile_with_types(source, source_name, Some(&types));
        (typed, None)
    } else {
        let kernel = vm_kernel(first)?;
        (
            crate::run::compile_typed(source, source_name, &kernel),
            Some(kernel),
        )
    };
    let checked = match recording {
        true => typed,
        false => typed.and_then(|p| p.check_not_recording("attach").map(|()| p)),
    };
    Ok((checked, kernel))
}

const NEED_QMP: &str = "tracepoint: probes need qmp:PATH to find the VM's vCPU threads";
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

/// One VM probed through its layers only (host tracepoints, QEMU events).
struct LayersOnlyVm {
    name: String,
    layers: LayerSet,
    tids: Vec<i32>,
}

impl LayersOnlyVm {
    /// The VM is gone once none of its vCPU threads runs (exited, or a
    /// zombie until the VMM's parent reaps it).
    fn gone(&self) -> bool {
        !self.tids.iter().any(|t| {
            std::fs::read_to_string(format!("/proc/{t}/task/{t}/stat")).is_ok_and(|s| {
                // `pid (comm) STATE ...`; comm may hold spaces and parens.
                s.rsplit_once(')').is_some_and(|(_, rest)| {
                    !matches!(rest.trim_start().chars().next(), Some('Z' | 'X'))
                })
            })
        })
    }
}

/// Serves scripts of host tracepoints and QEMU trace events: the events
/// come from perf rings and QEMU's log and the guest never stops, so one
/// thread serves every VM. Ends at Ctrl-C, `exit()`, the deadline, or when
/// every VM has exited.
/// When a layers-only attach ends, and where its events are recorded.
struct LayersOnlyPlan<'a> {
    deadline: Option<Instant>,
    stop: &'a AtomicBool,
    recorder: Option<crate::record::SharedRecorder>,
    snapshot_requested: &'a AtomicBool,
}

fn serve_layers_only(
    args: &crate::AttachArgs,
    program: &Arc<probe_lang::Program>,
    layers: &LayerPlan,
    plan: LayersOnlyPlan<'_>,
) -> Result<i32> {
    let LayersOnlyPlan {
        deadline,
        stop,
        mut recorder,
        snapshot_requested,
    } = plan;
    let mut vms = Vec::new();
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
        eprintln!(
            "vmprobe: attached to {} (VMM and host layers only, no stub)",
            spec.name
        );
        vms.push(LayersOnlyVm {
            name: spec.name.clone(),
            layers: set,
            tids,
        });
    }
    let output = args.format.format();
    let mut runtime = Runtime::new(program.clone(), Box::new(std::io::stdout()));
    runtime.set_output_format(output);
    runtime.set_start_nsecs(probe_engine::monotonic_ns());
    print!(
        "{}",
        probe_lang::attaching_message_for(program.probes().len(), output)
    );
    let _ = std::io::stdout().flush();
    let begin = probe_engine::run_special(program, &mut runtime, &ProbeSpec::Begin, None);
    let runtime = Mutex::new(runtime);
    let mut exited = begin == Flow::Exit;
    while !exited {
        // Checked before draining, so that the events up to the end are
        // served.
        let all_gone = vms.iter().all(LayersOnlyVm::gone);
        let ending = all_gone
            || stop.load(Ordering::Relaxed)
            || deadline.is_some_and(|d| Instant::now() >= d);
        // The last pass waits for the events still in flight.
        let final_sync = ending.then_some(probe_engine::layers::FINAL_SYNC);
        if snapshot_requested.swap(false, Ordering::Relaxed) {
            crate::run::snapshot(recorder.as_ref());
        }
        for vm in &mut vms {
            let (name, layers) = (&vm.name, &mut vm.layers);
            let mut record = |ev: &probe_engine::layers::LayerEvent, traced: &[_]| {
                if let Some(r) = recorder.as_mut() {
                    probe_engine::record_layer_event(r, name, ev, traced);
                }
            };
            if layers
                .serve(&runtime, final_sync, None, name, &mut record)
                .0
                == Flow::Exit
            {
                exited = true;
            }
        }
        if all_gone {
            for vm in &vms {
                eprintln!("vmprobe: {}: the VM exited", vm.name);
            }
        }
        if ending {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut runtime = runtime.into_inner().unwrap_or_else(|e| e.into_inner());
    for vm in &mut vms {
        for line in vm.layers.finish() {
            if args.stats {
                eprintln!("vmprobe: stats: {}: {line}", vm.name);
            }
        }
    }
    let trace_complete = match recorder {
        Some(r) => crate::run::finish_recorder(r)?,
        None => true,
    };
    probe_engine::run_special(program, &mut runtime, &ProbeSpec::End, None);
    runtime.print_maps();
    let _ = std::io::stdout().flush();
    for (probe, error, count) in runtime.errors() {
        eprintln!("vmprobe: {probe}: {error} ({count} times)");
    }
    Ok(if trace_complete { 0 } else { 1 })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vm_specs() {
        assert_eq!(
            parse_vm_spec("web=gdb:127.0.0.1:1234,kernel:/boot/vmlinuz").unwrap(),
            VmSpec {
                name: "web".into(),
                gdb: Some(StubAddr::Tcp("127.0.0.1:1234".into())),
                qmp: None,
                log: None,
                kernel: Some("/boot/vmlinuz".into()),
            }
        );
        assert_eq!(
            parse_vm_spec("k=qmp:/run/k.qmp,log:/run/k.log")
                .unwrap()
                .log,
            Some("/run/k.log".into())
        );
        assert_eq!(
            parse_vm_spec("a=gdb:unix:/run/a.sock,qmp:/run/a.qmp")
                .unwrap()
                .gdb,
            Some(StubAddr::Unix("/run/a.sock".into()))
        );
        for bad in [
            "gdb:127.0.0.1:1",
            "=gdb:h:1",
            "a b=gdb:h:1",
            "a=gdb:h",
            "a=gdb:h:port",
            "a=kernel:/x",
            "a=log:/x",
            "a=foo:bar",
            "a=gdb",
        ] {
            assert!(parse_vm_spec(bad).is_err(), "{bad} should be refused");
        }
    }
}
