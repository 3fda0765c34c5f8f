//! vmprobe: dynamic instrumentation for virtual machines, from outside the guest.
//!
//! The CLI is thin: it parses arguments, wires the crates together in the order
//! a run needs (compile, prepare guest, load symbols, boot, attach, arm, run,
//! detach, report) and turns their typed errors into one-line messages.

/// `-q`: progress lines on stderr are left out, as bpftrace's `-q` leaves
/// out its own. Set once, before anything runs.
static QUIET: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// A progress line on stderr (what is booting, what is attached), which
/// `-q` silences; errors and what the user asked for (`-v`, `--stats`) use
/// `eprintln!`.
macro_rules! progress {
    ($($arg:tt)*) => {
        if !$crate::QUIET.load(std::sync::atomic::Ordering::Relaxed) {
            eprintln!($($arg)*);
        }
    };
}

mod attach;
mod bench;
mod bpftrace;
mod gdb;
mod kernel;
mod list;
mod metrics;
mod noguest;
mod otlp;
mod plugin;
mod record;
mod recorder;
mod report;
mod run;
mod script;
mod service;
mod uprobe;
mod vm_spec;

use anyhow::Result;
use clap::{Args, Parser, Subcommand, ValueEnum};
use std::path::{Path, PathBuf};

#[derive(Parser)]
#[command(
    name = "vmprobe",
    version,
    about = "Dynamic instrumentation for virtual machines, from outside the guest"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Boot a guest, run a probe program while it runs WORKLOAD, print the results.
    Run(RunArgs),
    /// Probe VMs vmprobe did not start, through vmprobe's plugin loaded in
    /// their QEMU or the GDB stub their VMM offers; they keep running after
    /// detach.
    Attach(AttachArgs),
    /// Like `run`, and write every probe event into trace files (CTF or
    /// Perfetto JSON), directly or through an in-memory flight recorder.
    Record(RecordArgs),
    /// Measure what probing costs: boot the default guest and run workloads
    /// under every configuration (no vmprobe ... GDB ... in-guest kprobes).
    Bench(BenchArgs),
    /// Print the QEMU flags that load vmprobe's plugin, for a VM you start
    /// yourself and attach to with `--vm NAME=plugin:SOCKET`.
    QemuArgs {
        /// Where the plugin listens (a Unix socket; its directory should be
        /// yours alone).
        #[arg(long, value_name = "SOCKET", default_value = "/run/vmprobe/vm.sock")]
        socket: PathBuf,
    },
    /// Manage the default guest.
    Guest {
        #[command(subcommand)]
        command: GuestCommand,
    },
    /// List the probes a script can name, without booting: kernel functions,
    /// QEMU trace events, host tracepoints, and the parametric kinds.
    List {
        /// Only probes matching this pattern ('*' and '?' wildcards), of one
        /// kind with a prefix ("kprobe:vfs_*", "vmm:serial_*", "host:tracepoint:kvm:*", "tracepoint:syscalls:*").
        pattern: Option<String>,
        /// Also print parameters and fields: kernel functions' from BTF, QEMU
        /// events' from their declarations, tracepoints' from tracefs (bpftrace's -lv).
        #[arg(short, long)]
        verbose: bool,
        #[command(flatten)]
        guest: GuestArgs,
        /// The QEMU binary whose trace events are listed (default: qemu-system-x86_64 from PATH).
        #[arg(long, value_name = "PATH")]
        qemu: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum GuestCommand {
    /// Fetch Debian's current kernel and busybox (apt-get download) and write the initramfs.
    Build,
}

#[derive(Args, Default)]
pub struct GuestArgs {
    /// Kernel image to boot instead of the default guest's (bzImage or vmlinux).
    #[arg(long, value_name = "PATH")]
    kernel: Option<PathBuf>,
    /// Initramfs to boot with --kernel (its /init must speak vmprobe's control protocol; see README).
    #[arg(long, value_name = "PATH", requires = "kernel")]
    initrd: Option<PathBuf>,
    /// Kernel command line.
    #[arg(long, value_name = "ARGS")]
    append: Option<String>,
    /// Where kernel symbols come from, if not the kernel image (System.map, /proc/kallsyms dump or ELF).
    #[arg(long, value_name = "PATH")]
    symbols: Option<PathBuf>,
    /// The guest's files on the host, for uprobes' symbols (uprobe:PATH
    /// reads DIR/PATH); by default the default guest's own programs.
    #[arg(long, value_name = "DIR")]
    guest_root: Option<PathBuf>,
}

/// How `run` and `record` boot their guests.
#[derive(Args)]
pub struct BootArgs {
    #[command(flatten)]
    guest: GuestArgs,
    /// Accelerator; by default KVM when it can run the guest, else TCG.
    #[arg(long, value_enum)]
    accel: Option<AccelArg>,
    /// Number of vCPUs.
    #[arg(long, default_value_t = 1)]
    vcpus: u32,
    /// The QEMU binary (default: qemu-system-x86_64 from PATH).
    #[arg(long, value_name = "PATH")]
    qemu: Option<PathBuf>,
    /// Boot this many default guests (vm0, vm1, ...), run the workload in
    /// each (with VMPROBE_GUEST and VMPROBE_GUEST_INDEX set) and probe them all.
    #[arg(long, default_value_t = 1)]
    guests: u32,
    /// Give the guest a virtio-blk disk backed by this raw image (/dev/vda
    /// in the default guest); it is written to if the workload writes.
    #[arg(long, value_name = "FILE")]
    disk: Option<PathBuf>,
    /// Which backend serves the probes: inside QEMU (plugin: TCG, QEMU 9.2
    /// or later, no VM stop per hit), through the GDB stub (gdb), or the
    /// plugin where it can serve the program and QEMU, else the stub (auto).
    #[arg(long, value_enum, default_value = "auto")]
    backend: BackendArg,
    /// How long a guest's QEMU may stay stopped (SIGSTOP, a debugger on
    /// it) before the run ends with what was collected (exit status 3).
    #[arg(long, value_name = "SECONDS", default_value = "30", value_parser = parse_seconds)]
    stall_timeout: std::time::Duration,
    /// The kernel's headers for `#include` (a tree built in place, or a
    /// /lib/modules/VERSION directory with source/ and build/); by default
    /// the default guest's (Debian's linux-headers packages, fetched on
    /// first use), the host's /usr/include only with --kernel.
    #[arg(long, value_name = "DIR")]
    kernel_headers: Option<PathBuf>,
}

/// `--stall-timeout`, `--duration`: seconds above 0 that a `Duration`
/// holds (a huge value would panic in `Duration::from_secs_f64`).
fn parse_seconds(text: &str) -> Result<std::time::Duration, String> {
    text.parse::<f64>()
        .ok()
        .and_then(|s| std::time::Duration::try_from_secs_f64(s).ok())
        .filter(|d| !d.is_zero())
        .ok_or_else(|| "a number of seconds above 0 and below 1.8e19".to_string())
}

/// A guest process id: a positive integer, as the guest's `pid_t` holds.
fn parse_pid(text: &str) -> Result<u64, String> {
    text.parse::<i32>()
        .ok()
        .filter(|&p| p > 0)
        .map(|p| p as u64)
        .ok_or_else(|| format!("'{text}' is not a process id (a positive integer)"))
}

#[derive(Args)]
pub struct RunArgs {
    /// The probe program.
    #[arg(short = 'e', value_name = "PROGRAM")]
    program: Option<String>,
    /// A file holding the probe program (with -e, the first ARG).
    #[arg(value_name = "FILE")]
    file: Option<PathBuf>,
    /// Positional parameters, `$1`.. in the program (`$#` counts them), as
    /// bpftrace's; before `--`.
    #[arg(value_name = "ARG")]
    params: Vec<String>,
    /// Print the program's AST and IR, then exit.
    #[arg(short = 'd')]
    dump: bool,
    /// Output format, as bpftrace's `-f`: text, or json (one object per line).
    #[arg(short = 'f', value_enum, default_value = "text")]
    format: OutputArg,
    #[command(flatten)]
    boot: BootArgs,
    /// Show the guest console (kernel messages and the workload's output) on stderr.
    #[arg(long)]
    console: bool,
    /// Print hit statistics (hits, service time per hit, round trips) on stderr at the end.
    #[arg(long)]
    stats: bool,
    /// Say which backend serves the guests, and why (with -l: parameters
    /// and fields, as bpftrace's -lv).
    #[arg(short, long)]
    verbose: bool,
    /// End the run this many seconds after the probes are live (else when
    /// the workload exits, at Ctrl-C or `exit()`).
    #[arg(long, value_name = "SECONDS", value_parser = parse_seconds)]
    duration: Option<std::time::Duration>,
    /// The workload as one shell command line, as bpftrace's -c (the same
    /// as giving it after `--`).
    #[arg(short = 'c', value_name = "CMD", conflicts_with = "workload")]
    command: Option<String>,
    /// List probes as `vmprobe list` does, without booting: those matching
    /// FILE taken as a PATTERN, or the program's (-e), as bpftrace's -l.
    #[arg(short = 'l')]
    list: bool,
    /// Serve the program's maps and vmprobe's health at /metrics for
    /// Prometheus (OpenMetrics text) on PORT or ADDR:PORT; a bare PORT is
    /// on loopback.
    #[arg(long, value_name = "ADDR:PORT", value_parser = metrics::parse_addr)]
    metrics: Option<std::net::SocketAddr>,
    /// Also send printf output as OpenTelemetry log records, and
    /// kprobe/kretprobe calls as spans, to this OTLP/HTTP receiver (e.g. a
    /// collector's http://127.0.0.1:4318); events it cannot take are dropped.
    #[arg(long, value_name = "URL", value_parser = otlp::parse_endpoint)]
    otlp: Option<otlp_export::Endpoint>,
    #[command(flatten)]
    bpftrace: BpftraceArgs,
    /// The workload: one argument is a shell command line; several are quoted and joined.
    #[arg(last = true, value_name = "WORKLOAD")]
    workload: Vec<String>,
}

/// bpftrace's options that `run` and `attach` take as bpftrace does.
#[derive(Args, Default)]
pub struct BpftraceArgs {
    /// Write the program's output (printf, print, the maps, the
    /// "Attaching" line) to FILE instead of stdout, as bpftrace's -o.
    #[arg(short = 'o', value_name = "FILE")]
    output: Option<PathBuf>,
    /// Quiet, as bpftrace's -q: no "Attaching N probes..." line and no
    /// progress lines on stderr (errors and warnings still go there).
    #[arg(short = 'q')]
    quiet: bool,
    /// Accepted for bpftrace's command lines: vmprobe has no unsafe
    /// builtins (system(), signal() ...), so it changes nothing.
    #[arg(long = "unsafe")]
    allow_unsafe: bool,
    /// With `attach` and one VM, as bpftrace's -p: guest probes (kprobes,
    /// uprobes, syscall tracepoints, profile ...) fire only in the guest
    /// process PID (its tgid, bpftrace's `pid`); BEGIN, END, interval,
    /// vmm: and host: blocks are not filtered.
    #[arg(short = 'p', value_name = "PID", value_parser = parse_pid)]
    pid: Option<u64>,
}

#[derive(Args)]
pub struct AttachArgs {
    /// A VM to probe: NAME=gdb:HOST:PORT (or gdb:unix:PATH), and/or
    /// plugin:SOCKET (see `vmprobe qemu-args`), [,qmp:PATH][,kernel:IMAGE].
    /// Repeat for several VMs. Without kernel:, the default guest's kernel.
    #[arg(long, value_name = "SPEC", value_parser = attach::parse_vm_spec, required_unless_present = "config")]
    vm: Vec<attach::VmSpec>,
    /// Service mode: the program and the VMs from this TOML file (see
    /// README, "Service mode"); a VM whose QEMU restarts is attached again
    /// and its counts go on.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["vm", "program", "file", "metrics", "otlp"])]
    config: Option<PathBuf>,
    /// Set from `--config`'s `[watch]`.
    #[arg(skip)]
    watch: Option<service::Watch>,
    /// The probe program.
    #[arg(short = 'e', value_name = "PROGRAM", conflicts_with = "file")]
    program: Option<String>,
    /// A file holding the probe program.
    #[arg(value_name = "FILE")]
    file: Option<PathBuf>,
    /// Output format, as bpftrace's `-f`: text, or json (one object per line).
    #[arg(short = 'f', value_enum, default_value = "text")]
    format: OutputArg,
    /// Detach after this many seconds (else at Ctrl-C or `exit()`).
    #[arg(long, value_name = "SECONDS", value_parser = parse_seconds)]
    duration: Option<std::time::Duration>,
    /// Print hit statistics on stderr at the end.
    #[arg(long)]
    stats: bool,
    /// Which backend serves a VM given both `plugin:` and `gdb:`: the
    /// plugin, the stub, or the plugin where it can serve the program.
    #[arg(long, value_enum, default_value = "auto")]
    backend: BackendArg,
    /// Say which backend serves each VM, and why.
    #[arg(short, long)]
    verbose: bool,
    /// How long a VM's stub or plugin may stay silent (its QEMU stopped or
    /// wedged) once the probes are live before the run ends with what was
    /// collected (exit status 3); vmprobe says so on stderr from a stub's
    /// reply 5 s late or 10 s of the plugin's silence (or half this).
    #[arg(long, value_name = "SECONDS", default_value = "30", value_parser = parse_seconds)]
    stall_timeout: std::time::Duration,
    /// Serve the program's maps and vmprobe's health at /metrics for
    /// Prometheus (OpenMetrics text) on PORT or ADDR:PORT; a bare PORT is
    /// on loopback.
    #[arg(long, value_name = "ADDR:PORT", value_parser = metrics::parse_addr)]
    metrics: Option<std::net::SocketAddr>,
    /// Also send printf output as OpenTelemetry log records, and
    /// kprobe/kretprobe calls as spans, to this OTLP/HTTP receiver (e.g. a
    /// collector's http://127.0.0.1:4318); events it cannot take are dropped.
    #[arg(long, value_name = "URL", value_parser = otlp::parse_endpoint)]
    otlp: Option<otlp_export::Endpoint>,
    /// The guest's files on the host, for uprobes' symbols (uprobe:PATH
    /// reads DIR/PATH); by default the default guest's own programs.
    #[arg(long, value_name = "DIR")]
    guest_root: Option<PathBuf>,
    /// The kernel's headers for `#include` (a tree built in place, or a
    /// /lib/modules/VERSION directory with source/ and build/); by default
    /// the default guest's (Debian's linux-headers packages, fetched on
    /// first use), the host's /usr/include only for a VM's own kernel:IMAGE.
    #[arg(long, value_name = "DIR")]
    kernel_headers: Option<PathBuf>,
    #[command(flatten)]
    bpftrace: BpftraceArgs,
}

#[derive(Args)]
pub struct RecordArgs {
    /// The trace directory (CTF: `metadata` plus a stream file per vCPU;
    /// Perfetto: `trace.json`; flight recorder: `snapshot-N/` CTF traces).
    #[arg(short = 'o', long, value_name = "DIR")]
    output: PathBuf,
    #[arg(long, value_enum, default_value = "ctf")]
    format: recorder::Format,
    /// Flight recorder: keep only the newest SIZE bytes of events per vCPU in
    /// memory (e.g. 1M); write them on exit or on SIGUSR1, nothing before.
    #[arg(long, value_name = "SIZE", value_parser = recorder::parse_size)]
    ring: Option<usize>,
    /// Also draw the program's kstack-keyed maps (e.g. `profile:hz:99 {
    /// @[kstack] = count(); }`) as a flame graph: FILE (SVG) and FILE's
    /// `.folded` sibling (Brendan Gregg's folded stacks).
    #[arg(long, value_name = "FILE")]
    flamegraph: Option<PathBuf>,
    /// The probe program; every probe it fires is recorded with its arguments.
    #[arg(short = 'e', value_name = "PROGRAM")]
    program: Option<String>,
    /// A program FILE, or probes to trace with their arguments (`kprobe:F`,
    /// `kretprobe:F`, wildcards allowed).
    #[arg(value_name = "FILE|PROBE")]
    probes: Vec<String>,
    #[command(flatten)]
    boot: BootArgs,
    /// Show the guest console on stderr.
    #[arg(long)]
    console: bool,
    /// Print hit statistics on stderr at the end.
    #[arg(long)]
    stats: bool,
    /// Record a running VM instead of booting one, as `attach --vm` (no
    /// workload; the recording ends at Ctrl-C, `exit()` or --duration).
    /// Repeatable.
    #[arg(long, value_name = "SPEC", value_parser = attach::parse_vm_spec)]
    vm: Vec<attach::VmSpec>,
    /// With --vm: detach after this many seconds.
    #[arg(long, value_name = "SECONDS", requires = "vm", value_parser = parse_seconds)]
    duration: Option<std::time::Duration>,
    /// Say which backend serves the guests, and why.
    #[arg(short, long)]
    verbose: bool,
    /// Also send printf output as OpenTelemetry log records, and
    /// kprobe/kretprobe calls as spans, to this OTLP/HTTP receiver (e.g. a
    /// collector's http://127.0.0.1:4318); events it cannot take are dropped.
    #[arg(long, value_name = "URL", value_parser = otlp::parse_endpoint)]
    otlp: Option<otlp_export::Endpoint>,
    /// The workload, as for `run`.
    #[arg(last = true, value_name = "WORKLOAD")]
    workload: Vec<String>,
}

#[derive(Args)]
pub struct BenchArgs {
    /// A short matrix (one workload, few hits) that finishes in a few minutes.
    #[arg(long)]
    quick: bool,
    /// Repetitions of each cell (default 3).
    #[arg(long)]
    reps: Option<u32>,
    /// Where the report (REPORT.md), charts (SVG) and raw samples (CSV) go.
    #[arg(short = 'o', long, default_value = "bench/results")]
    output: PathBuf,
    /// Accelerator; by default KVM when it can run the guest, else TCG.
    #[arg(long, value_enum)]
    accel: Option<AccelArg>,
    /// The QEMU binary to benchmark (default: qemu-system-x86_64 from PATH).
    #[arg(long, value_name = "PATH")]
    qemu: Option<PathBuf>,
    /// Only the in-VMM comparison, on QEMU 10: no probes, the plugin loaded
    /// but idle, probes inside QEMU, and probes through the stub.
    #[arg(long)]
    in_vmm: bool,
}

#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum OutputArg {
    Text,
    Json,
}

impl OutputArg {
    pub fn format(self) -> probe_output::OutputFormat {
        match self {
            OutputArg::Text => probe_output::OutputFormat::Text,
            OutputArg::Json => probe_output::OutputFormat::Json,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum BackendArg {
    Auto,
    Plugin,
    Gdb,
}

#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum AccelArg {
    Kvm,
    Tcg,
}

fn main() {
    let cli = Cli::parse();
    let result: Result<i32> = match cli.command {
        Command::Run(args) => run::run(args),
        Command::Bench(args) => bench::bench(args),
        Command::Record(args) => record::record(args),
        Command::Attach(args) => service::apply(args).and_then(attach::attach),
        Command::QemuArgs { socket } => plugin::qemu_args(&socket).map(|_| 0),
        Command::Guest {
            command: GuestCommand::Build,
        } => kernel::guest_build().map(|_| 0),
        Command::List {
            pattern,
            verbose,
            guest,
            qemu,
        } => list::list(
            pattern.as_deref(),
            verbose,
            &guest,
            qemu.as_deref().unwrap_or(Path::new("qemu-system-x86_64")),
        )
        .map(|_| 0),
    };
    match result {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("vmprobe: {}", one_line(&e));
            std::process::exit(1);
        }
    }
}

/// The error and its causes on one line. Library errors often print their
/// cause in their own message too; a cause already shown is not repeated.
fn one_line(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if line.ends_with(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}
