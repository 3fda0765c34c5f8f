//! `vmprobe attach`: probe VMs that vmprobe did not start, through the GDB
//! stub their VMM already offers, and leave them running on detach.

use crate::run::{Guest, ServePlan, serve_and_report};
use anyhow::{Context, Result, anyhow, bail};
use gdb_remote::Client;
use kernel_image::KernelSymbols;
use probe_engine::Session;
use qemu_vmm::Qmp;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
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
    if args.vm.is_empty() {
        bail!("no VM: give --vm NAME=gdb:HOST:PORT (repeatable)");
    }
    // Typed with the first VM's kernel (BTF: args, struct casts, curtask),
    // as `run` does; without its image, a program needing no types checks.
    let mut first = load_kernel_of(&args.vm[0]);
    let compiled = match &first {
        Ok(kernel) => crate::run::compile_typed(&source, &source_name, kernel),
        Err(_) => probe_lang::compile(&source, &source_name),
    };
    let program = match compiled {
        Ok(p) => Arc::new(p),
        Err(diags) => {
            eprint!("{diags}");
            return Ok(1);
        }
    };
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, stop.clone()).context("installing signal handlers")?;
    }
    // Stubs opened through QMP live in a private 0700 directory and are
    // closed again after detach, leaving the VM as it was.
    let private = tempfile::Builder::new()
        .prefix("vmprobe-attach-")
        .tempdir()
        .context("creating a private socket directory")?;
    let mut opened: Vec<(String, Qmp)> = Vec::new();
    let mut guests = Vec::new();
    for (i, spec) in args.vm.iter().enumerate() {
        let kernel = if i == 0 {
            std::mem::replace(&mut first, Err(anyhow!("taken")))
        } else {
            load_kernel_of(spec)
        };
        let attached =
            kernel.and_then(|k| attach_one(spec, k, &program, private.path(), &mut opened));
        match attached {
            Ok(g) => guests.push(g),
            Err(e) => {
                close_stubs(&mut opened);
                return Err(e.context(spec.name.clone()));
            }
        }
    }
    let plan = ServePlan {
        workload: None,
        deadline: args
            .duration
            .map(|s| Instant::now() + Duration::from_secs_f64(s)),
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

/// The kernel image of a `--vm` (the default guest's unless `kernel:`).
fn load_kernel_of(spec: &VmSpec) -> Result<crate::run::KernelInfo> {
    let image = match &spec.kernel {
        Some(k) => k.clone(),
        None => crate::run::default_image()?.kernel,
    };
    let cache = qemu_guest::cache_dir().join("symbols");
    let _ = std::fs::create_dir_all(&cache);
    let symbols = KernelSymbols::load(&image, Some(&cache)).context("loading kernel symbols")?;
    Ok(crate::run::load_kernel(symbols, &image))
}

fn attach_one(
    spec: &VmSpec,
    kernel: crate::run::KernelInfo,
    program: &Arc<probe_lang::Program>,
    private: &std::path::Path,
    opened: &mut Vec<(String, Qmp)>,
) -> Result<Guest> {
    if !crate::run::check_program(program, &kernel.symbols)? {
        bail!("the program names unknown kernel symbols");
    }
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
            let qmp_path = spec
                .qmp
                .as_ref()
                .expect("parse_vm_spec requires gdb: or qmp:");
            let mut qmp = Qmp::connect_unix(qmp_path, timeout)
                .with_context(|| format!("connecting to QMP at {}", qmp_path.display()))?;
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
    eprintln!("vmprobe: attached to {}, KASLR slide {slide:#x}", spec.name);
    Ok(Guest {
        name: spec.name.clone(),
        vm: None,
        session,
    })
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
