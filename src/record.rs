//! `vmprobe record`: a run, or an attach with `--vm`, whose probe events
//! also go into trace files through the recorder (`recorder.rs`).

use crate::recorder::Recording;
use anyhow::{Result, bail};

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
            config: None,
            watch: None,
            program,
            file,
            format: crate::OutputArg::Text,
            duration: args.duration,
            stats: args.stats,
            backend: args.boot.backend,
            verbose: args.verbose,
            stall_timeout: args.boot.stall_timeout,
            otlp: args.otlp,
            metrics: None,
            guest_root: args.boot.guest.guest_root.clone(),
            kernel_headers: args.boot.kernel_headers.clone(),
            bpftrace: crate::BpftraceArgs::default(),
        };
        return crate::attach::attach_recording(attach_args, Some(recording));
    }
    let run_args = crate::RunArgs {
        program,
        file,
        params: Vec::new(),
        dump: false,
        format: crate::OutputArg::Text,
        boot: args.boot,
        console: args.console,
        stats: args.stats,
        verbose: args.verbose,
        duration: None,
        command: None,
        list: false,
        otlp: args.otlp,
        metrics: None,
        bpftrace: crate::BpftraceArgs::default(),
        workload: args.workload,
    };
    crate::run::run_recording(run_args, Some(recording))
}
