//! bpftrace's own options where they mean something for a VM: `-o FILE`,
//! `-q`, `--unsafe` and `-p PID` (a guest process, with `attach`), shared
//! by `run` and `attach`.

use crate::BpftraceArgs;
use anyhow::{Context, Result, bail};
use std::io::Write;

/// Applies the options that act before anything else: `--unsafe` is a
/// note, `-q` silences progress from here on. `-p` is read where the
/// program is compiled ([`pid_for_run`], [`pid_for_attach`]).
pub fn apply(args: &BpftraceArgs) -> Result<()> {
    if args.allow_unsafe {
        eprintln!(
            "vmprobe: --unsafe: nothing to allow, vmprobe has no unsafe builtins \
             (system(), signal() ...); handlers never write to the guest"
        );
    }
    if args.quiet {
        crate::QUIET.store(true, std::sync::atomic::Ordering::Relaxed);
    }
    Ok(())
}

/// `run -p`: refused, since `run` boots a fresh guest whose processes
/// have no pid before its workload starts.
pub fn pid_for_run(args: &BpftraceArgs) -> Result<()> {
    if let Some(pid) = args.pid {
        bail!(
            "-p {pid}: `vmprobe run` boots a fresh guest, where no process has a pid yet; \
             filter on it in the program (/pid == N/), or use -p with \
             `vmprobe attach --vm NAME=...` on a running guest"
        );
    }
    Ok(())
}

/// `attach -p`: the guest process whose tgid every guest probe is filtered
/// on, which needs one guest (a pid names a process in one kernel).
pub fn pid_for_attach(args: &BpftraceArgs, vms: usize, config: bool) -> Result<Option<u64>> {
    match args.pid {
        Some(pid) if config => {
            bail!("-p {pid}: needs the VM on the command line (--vm), not --config")
        }
        Some(pid) if vms != 1 => bail!(
            "-p {pid}: a pid names a process of one guest, and {vms} VMs were given (--vm): give one"
        ),
        pid => Ok(pid),
    }
}

/// Where the program's output goes: `-o FILE` (created now, before anything
/// boots, so a bad path fails first), else stdout.
pub fn output(args: &BpftraceArgs) -> Result<Option<std::fs::File>> {
    args.output
        .as_ref()
        .map(|path| std::fs::File::create(path).with_context(|| format!("-o {}", path.display())))
        .transpose()
}

/// A writer for the program's output: a handle on the `-o` file, else
/// stdout.
pub fn writer(file: Option<&std::fs::File>) -> Result<Box<dyn Write + Send>> {
    Ok(match file {
        Some(f) => Box::new(f.try_clone().context("-o: duplicating the file handle")?),
        None => Box::new(std::io::stdout()),
    })
}
