//! bpftrace's own options where they mean something for a VM: `-o FILE`,
//! `-q`, `--unsafe` and `-p PID` (refused, with what to use instead), shared
//! by `run` and `attach`.

use crate::BpftraceArgs;
use anyhow::{Context, Result, bail};
use std::io::Write;

/// Applies the options that act before anything else: `-p` is an error,
/// `--unsafe` a note, `-q` silences progress from here on.
pub fn apply(args: &BpftraceArgs) -> Result<()> {
    if let Some(pid) = &args.pid {
        // No faking: a host PID means nothing inside the guest, and
        // vmprobe has no user-space probes of host processes.
        bail!(
            "-p {pid}: vmprobe probes a VM's kernel from outside, not a host process; \
             for a guest process filter on it (/pid == N/), for a running VM use \
             `vmprobe attach --vm NAME=...`"
        );
    }
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
