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
use probe_engine::layers::{HostSource, LayerSet};
use probe_engine::{LayerPlan, Session};
use probe_lang::{Flow, ProbeSpec, Runtime};
use qemu_vmm::Qmp;
use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Where a VM's stub is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StubAddr {
    Tcp(String),
    Unix(PathBuf),
}

/// One `--vm NAME=gdb:HOST:PORT[,qmp:PATH][,kernel:IMAGE]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VmSpec {
    pub name: String,
    pub gdb: Option<StubAddr>,
    pub qmp: Option<PathBuf>,
    pub kernel: Option<PathBuf>,
}

/// Parses a `--vm` value; the error names the part that is wrong.
pub fn parse_vm_spec(text: &str) -> Result<VmSpec, String> {
    let (name, rest) = text.split_once('=').ok_or_else(|| {
        format!("'{text}': expected NAME=gdb:HOST:PORT[,qmp:PATH][,kernel:IMAGE]")
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
        kernel: None,
    };
    for part in rest.split(',') {
        let (key, value) = part
            .split_once(':')
            .ok_or_else(|| format!("'{part}': expected KEY:VALUE (gdb:, qmp: or kernel:)"))?;
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
            "kernel" => spec.kernel = Some(PathBuf::from(value)),
            other => return Err(format!("'{other}': unknown key (gdb, qmp or kernel)")),
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
    let (source, source_name) = match (&args.program, &args.file) {
        (Some(p), _) => (p.clone(), "stdin".to_string()),
        (None, Some(f)) => (
            std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?,
            f.display().to_string(),
        ),
        (None, None) => bail!("no program: give -e PROGRAM or a FILE"),
    };
    let compiled = probe_lang::compile(&source, &source_name)
        .and_then(|p| p.check_not_recording("attach").map(|()| p));
    let program = match compiled {
        Ok(p) => Arc::new(p),
        Err(diags) => {
            eprint!("{diags}");
            return Ok(1);
        }
    };
    if args.vm.is_empty() {
        bail!("no VM: give --vm NAME=gdb:HOST:PORT (repeatable)");
    }
    let layers = probe_engine::resolve_layers(&program);
    if let Some(e) = layers.vmm_events.first() {
        bail!(
            "vmm:{e}: QEMU trace events need the log file `vmprobe run` gives QEMU; attach \
             cannot probe them yet"
        );
    }
    // Host tracepoints fail here, not after a guest has been stopped and armed.
    if !layers.tracepoints.is_empty() {
        probe_engine::layers::check_tracepoints(&layers.tracepoints)?;
        if let Some(spec) = args.vm.iter().find(|s| s.qmp.is_none()) {
            bail!("{}: {NEED_QMP}", spec.name);
        }
    }
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, stop.clone()).context("installing signal handlers")?;
    }
    let deadline = args
        .duration
        .map(|s| Instant::now() + Duration::from_secs_f64(s));
    if host_only(&program) {
        return serve_host_only(&args, &program, &layers, deadline, &stop);
    }
    // Stubs opened through QMP live in a private 0700 directory and are
    // closed again after detach, leaving the VM as it was.
    let private = tempfile::Builder::new()
        .prefix("vmprobe-attach-")
        .tempdir()
        .context("creating a private socket directory")?;
    let mut opened: Vec<(String, Qmp)> = Vec::new();
    let mut guests = Vec::new();
    for spec in &args.vm {
        match attach_one(spec, &program, &layers, private.path(), &mut opened) {
            Ok(g) => guests.push(g),
            Err(e) => {
                close_stubs(&mut opened);
                return Err(e.context(spec.name.clone()));
            }
        }
    }
    let plan = ServePlan {
        workload: None,
        deadline,
        stats: args.stats,
        output: args.format.format(),
        flamegraph: None,
    };
    let code = serve_and_report(
        guests,
        &program,
        None,
        &stop,
        &AtomicBool::new(false),
        &plan,
    );
    close_stubs(&mut opened);
    code
}

fn close_stubs(opened: &mut Vec<(String, Qmp)>) {
    for (name, mut qmp) in opened.drain(..) {
        if let Err(e) = qmp.close_gdbstub() {
            eprintln!("vmprobe: {name}: closing the gdbstub opened through QMP: {e}");
        }
    }
}

fn attach_one(
    spec: &VmSpec,
    program: &Arc<probe_lang::Program>,
    layers: &LayerPlan,
    private: &std::path::Path,
    opened: &mut Vec<(String, Qmp)>,
) -> Result<Guest> {
    let image = match &spec.kernel {
        Some(k) => k.clone(),
        None => crate::run::default_image()?.kernel,
    };
    let cache = qemu_guest::cache_dir().join("symbols");
    let _ = std::fs::create_dir_all(&cache);
    let symbols = KernelSymbols::load(&image, Some(&cache)).context("loading kernel symbols")?;
    if !crate::run::check_program(program, &symbols)? {
        bail!("the program names unknown kernel symbols");
    }
    let kernel = crate::run::load_kernel(symbols, &image);
    let timeout = Duration::from_secs(5);
    let client = match &spec.gdb {
        Some(StubAddr::Unix(path)) => Client::connect_unix(path, timeout),
        Some(StubAddr::Tcp(addr)) => {
            let addr = std::net::ToSocketAddrs::to_socket_addrs(addr)
                .with_context(|| format!("resolving {addr}"))?
                .next()
                .ok_or_else(|| anyhow!("{addr}: no address"))?;
            Client::connect_tcp(addr, timeout)
        }
        None => {
            // No stub given: open one on the running VM through its QMP
            // monitor (HMP `gdbserver`), on a Unix socket only we can reach.
            let mut qmp = connect_qmp(spec, timeout)?;
            let sock = private.join(format!("{}.gdb", spec.name));
            qmp.open_gdbstub_unix(&sock)
                .context("opening a gdbstub through QMP")?;
            opened.push((spec.name.clone(), qmp));
            Client::connect_unix(&sock, timeout)
        }
    }
    .context("connecting to the GDB stub")?;
    // QEMU stops the VM when a debugger connects; from here it is as after
    // boot in `run`.
    let mut session = Session::new(client);
    session.set_name(&spec.name);
    let slide = crate::run::arm_program(&mut session, program, &kernel)?;
    if !layers.tracepoints.is_empty() {
        // The guest is stopped: no event is missed between arming and
        // resuming.
        let vcpus = match opened.iter_mut().find(|(n, _)| *n == spec.name) {
            Some((_, qmp)) => vcpu_threads(qmp)?,
            None => vcpu_threads(&mut connect_qmp(spec, timeout)?)?,
        };
        let source = host_source(vcpus, program, layers)?;
        session.add_layer(Box::new(source), &layers.handlers);
    }
    eprintln!("vmprobe: attached to {}, KASLR slide {slide:#x}", spec.name);
    Ok(Guest {
        name: spec.name.clone(),
        vm: None,
        session,
    })
}

/// Whether every probe of the program is outside the guest (host
/// tracepoints, BEGIN, END): then no stub is opened and no kernel read.
fn host_only(program: &probe_lang::Program) -> bool {
    program.probes().iter().all(|p| {
        matches!(
            p,
            ProbeSpec::Begin | ProbeSpec::End | ProbeSpec::Tracepoint { .. }
        )
    }) && program
        .probes()
        .iter()
        .any(|p| matches!(p, ProbeSpec::Tracepoint { .. }))
}

const NEED_QMP: &str = "tracepoint: probes need qmp:PATH to find the VM's vCPU threads";

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

/// One VM probed through host tracepoints only.
struct HostOnlyVm {
    name: String,
    layers: LayerSet,
    tids: Vec<i32>,
}

impl HostOnlyVm {
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

/// Serves scripts of host tracepoints: the events come from perf rings and
/// the guest never stops, so one thread serves every VM. Ends at Ctrl-C,
/// `exit()`, the deadline, or when every VM has exited.
fn serve_host_only(
    args: &crate::AttachArgs,
    program: &Arc<probe_lang::Program>,
    layers: &LayerPlan,
    deadline: Option<Instant>,
    stop: &AtomicBool,
) -> Result<i32> {
    let mut vms = Vec::new();
    for spec in &args.vm {
        let mut qmp = connect_qmp(spec, Duration::from_secs(5)).context(spec.name.clone())?;
        // The QMP connection is not kept: QEMU serves one client per
        // monitor, which stays the user's.
        let vcpus = vcpu_threads(&mut qmp).context(spec.name.clone())?;
        drop(qmp);
        let tids = vcpus.keys().copied().collect();
        let source = host_source(vcpus, program, layers).context(spec.name.clone())?;
        let mut set = LayerSet::default();
        set.add(Box::new(source), &layers.handlers);
        eprintln!("vmprobe: attached to {} (host tracepoints only)", spec.name);
        vms.push(HostOnlyVm {
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
        let all_gone = vms.iter().all(HostOnlyVm::gone);
        let ending = all_gone
            || stop.load(Ordering::Relaxed)
            || deadline.is_some_and(|d| Instant::now() >= d);
        for vm in &mut vms {
            if vm
                .layers
                .serve(&runtime, false, None, &vm.name, &mut |_, _| {})
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
    probe_engine::run_special(program, &mut runtime, &ProbeSpec::End, None);
    runtime.print_maps();
    let _ = std::io::stdout().flush();
    for (probe, error, count) in runtime.errors() {
        eprintln!("vmprobe: {probe}: {error} ({count} times)");
    }
    Ok(0)
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
                kernel: Some("/boot/vmlinuz".into()),
            }
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
            "a=foo:bar",
            "a=gdb",
        ] {
            assert!(parse_vm_spec(bad).is_err(), "{bad} should be refused");
        }
    }
}
