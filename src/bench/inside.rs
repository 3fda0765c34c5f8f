//! The in-VMM backend measured against the gdbstub and against no probes,
//! in one run (issue 13): one QEMU 10 guest with vmprobe's plugin loaded
//! serves every probed configuration, and a second guest on the same QEMU
//! without the plugin is the baseline the idle plugin is compared with.
//!
//! - per-hit cost: the same counting program, inside QEMU and through the
//!   stub, on the same guest: (time - unprobed time) / hits;
//! - overhead at fixed probe rates (100 to 100,000 probes/s): `vmprobe-mix`
//!   with and without the probe inside QEMU;
//! - the idle plugin: a CPU-bound run and a system-call-bound run, on the
//!   guest with the plugin loaded (nothing attached) and the one without,
//!   interleaved, with the spread of the difference.

use super::report::Stats;
use super::{RUN_TIMEOUT, SharedBuf, connect};
use crate::kernel::KernelInfo;
use anyhow::{Context, Result, anyhow, bail};
use backend_gdb::Session;
use probe_engine::{Backend, EndReason};
use qemu_guest::{Accel, GuestImage, LaunchConfig, Vm};
use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The program the per-hit cost is measured with (issue 13's target).
const COUNT_DD: &str = "kprobe:ksys_write /comm == \"dd\"/ { @c = count(); }";
/// Writes by the shell, not by dd: they run `COUNT_DD`'s probe and
/// predicate without counting.
const WARM_WRITES: &str = "i=0; while [ $i -lt 300 ]; do echo x > /dev/null; i=$((i+1)); done";

pub struct InsideReport {
    qemu: String,
    cost: Vec<CostRow>,
    rates: Vec<RateRow>,
    idle: Vec<IdleRow>,
    reps: u32,
}

struct CostRow {
    backend: &'static str,
    writes: u64,
    hits: u64,
    base: Stats,
    probed: Stats,
    /// The plugin's own service time per hit inside QEMU: mean, median.
    inside_ns: Option<(f64, u64)>,
}

struct RateRow {
    target: u64,
    every: u64,
    hits: u64,
    base: Stats,
    probed: Stats,
}

struct IdleRow {
    workload: String,
    without: Stats,
    with: Stats,
    pairs: usize,
    /// Of the per-pair differences (with - without) / without, percent.
    diff_mean: f64,
    diff_stderr: f64,
}

/// Runs the comparison, or says why it cannot (no QEMU 10, no plugin
/// library) and returns `None`.
pub fn run(
    quick: bool,
    reps: u32,
    image: &GuestImage,
    kernel: &KernelInfo,
) -> Result<Option<InsideReport>> {
    let Some(qemu) = qemu_guest::installed_qemu10() else {
        eprintln!(
            "vmprobe bench: no QEMU 10 (run .ci/install-deps): the in-VMM backend is not measured"
        );
        return Ok(None);
    };
    let Some(library) = backend_plugin::library() else {
        eprintln!(
            "vmprobe bench: no {} (cargo build --release -p vmprobe-qemu-plugin): the in-VMM backend is not measured",
            backend_plugin::LIBRARY
        );
        return Ok(None);
    };
    let version = qemu_guest::QemuVersion::of(&qemu)?;
    let mut cfg = LaunchConfig::new(image.clone());
    cfg.accel = Accel::Tcg;
    cfg.qemu = qemu;
    let mut bare = boot(&cfg)?;
    cfg.plugin = Some(library);
    let mut guest = boot(&cfg)?;
    eprintln!("vmprobe bench: QEMU {version} guests up, one with vmprobe's plugin");

    let mut out = InsideReport {
        qemu: version.to_string(),
        cost: Vec::new(),
        rates: Vec::new(),
        idle: Vec::new(),
        reps,
    };
    // Per-hit cost: many writes inside QEMU (cheap), fewer through the stub
    // (milliseconds each under TCG).
    let (many, few) = if quick { (2_000, 100) } else { (20_000, 1_000) };
    for (backend, writes) in [("plugin", many), ("gdb", few)] {
        let command = format!("dd if=/dev/zero of=/dev/null bs=1 count={writes} 2>/dev/null");
        let (mut base, mut probed) = (Vec::new(), Vec::new());
        let (mut hits, mut inside) = (0, None);
        for _ in 0..reps {
            base.push(plain(&mut guest, WARM_WRITES, &command)?);
            let run = match backend {
                "plugin" => with_plugin(&mut guest, kernel, COUNT_DD, WARM_WRITES, &command)?,
                // Every stop flushes the translated code: nothing to warm.
                _ => with_gdb(&mut guest, kernel, COUNT_DD, "true", &command)?,
            };
            probed.push(run.secs);
            hits = run.count;
            inside = run.inside_ns.or(inside);
        }
        let row = CostRow {
            backend,
            writes,
            hits,
            base: Stats::of(&base),
            probed: Stats::of(&probed),
            inside_ns: inside,
        };
        eprintln!(
            "vmprobe bench: {backend}: {writes} writes {:.3} s -> {:.3} s, {hits} hits",
            row.base.geomean, row.probed.geomean
        );
        out.cost.push(row);
    }

    // Overhead at fixed rates.
    // Seconds-long runs: the console's latency jitters by tens of ms.
    let iter: u64 = if quick { 200_000 } else { 10_000_000 };
    let warm_mix = format!("vmprobe-mix {} 0", iter / 10);
    let calib = plain(&mut guest, &warm_mix, &format!("vmprobe-mix {iter} 0"))?;
    let rounds_per_sec = iter as f64 / calib;
    let targets: &[u64] = if quick {
        &[10_000]
    } else {
        // 0: attached, and the probe never fires (no getppid): what an
        // active plugin costs by itself.
        &[0, 100, 1_000, 10_000, 100_000]
    };
    for &target in targets {
        let every = match target {
            0 => 0,
            t => ((rounds_per_sec / t as f64).round() as u64).max(1),
        };
        let command = format!("vmprobe-mix {iter} {every}");
        let (mut base, mut probed, mut hits) = (Vec::new(), Vec::new(), 0);
        for _ in 0..reps {
            base.push(plain(&mut guest, &warm_mix, &command)?);
            let run = with_plugin(
                &mut guest,
                kernel,
                "kprobe:__x64_sys_getppid { @c = count(); }",
                &warm_mix,
                &command,
            )?;
            probed.push(run.secs);
            hits = run.count;
        }
        let row = RateRow {
            target,
            every,
            hits,
            base: Stats::of(&base),
            probed: Stats::of(&probed),
        };
        eprintln!(
            "vmprobe bench: plugin at {target}/s: {:.3} s -> {:.3} s ({hits} hits)",
            row.base.geomean, row.probed.geomean
        );
        out.rates.push(row);
    }

    // The idle plugin: the same runs on both guests, in pairs, alternating
    // which goes first.
    let pairs = if quick { 3 } else { (reps * 4).max(12) };
    let idle_iter = if quick { 200_000 } else { 10_000_000 };
    let warm_idle = "vmprobe-mix 10000 0";
    for command in [
        format!("vmprobe-mix {idle_iter} 0"),
        format!("vmprobe-nullsys {}", idle_iter / 4),
    ] {
        let (mut without, mut with, mut diffs) = (Vec::new(), Vec::new(), Vec::new());
        for i in 0..pairs {
            let (a, b) = if i % 2 == 0 {
                let a = plain(&mut bare, warm_idle, &command)?;
                (a, plain(&mut guest, warm_idle, &command)?)
            } else {
                let b = plain(&mut guest, warm_idle, &command)?;
                (plain(&mut bare, warm_idle, &command)?, b)
            };
            without.push(a);
            with.push(b);
            diffs.push((b - a) / a * 100.0);
        }
        let n = diffs.len() as f64;
        let mean = diffs.iter().sum::<f64>() / n;
        let sd =
            (diffs.iter().map(|d| (d - mean).powi(2)).sum::<f64>() / (n - 1.0).max(1.0)).sqrt();
        let row = IdleRow {
            workload: command.clone(),
            without: Stats::of(&without),
            with: Stats::of(&with),
            pairs: diffs.len(),
            diff_mean: mean,
            diff_stderr: sd / n.sqrt(),
        };
        eprintln!(
            "vmprobe bench: idle plugin, `{command}`: {:+.2}% ± {:.2}% (standard error, {pairs} pairs)",
            row.diff_mean, row.diff_stderr
        );
        out.idle.push(row);
    }
    let _ = bare.shutdown(Duration::from_secs(10));
    let _ = guest.shutdown(Duration::from_secs(10));
    Ok(Some(out))
}

fn boot(cfg: &LaunchConfig) -> Result<Vm> {
    let mut vm = Vm::launch(cfg).context("starting QEMU 10")?;
    // Paused (-S) until the monitor lets it go; no debugger attaches.
    qemu_vmm::Qmp::connect_unix_wait(&vm.qmp_socket(), Duration::from_secs(5))
        .and_then(|mut q| q.cont())
        .context("starting the guest through QMP")?;
    vm.wait_ready(super::BOOT_TIMEOUT)?;
    Ok(vm)
}

/// A command with nothing attached, after its warm-up; its wall time.
fn plain(vm: &mut Vm, warmup: &str, command: &str) -> Result<f64> {
    for c in [warmup, command] {
        let t = Instant::now();
        vm.start_workload(c)?;
        let status = vm.wait_exit(RUN_TIMEOUT)?;
        let end = vm.last_event_at().unwrap_or_else(Instant::now);
        if status != 0 {
            bail!("`{c}` exited with status {status}");
        }
        if c == command {
            return Ok(end.duration_since(t).as_secs_f64());
        }
    }
    unreachable!("the loop returns at the command")
}

/// A warm-up, then the measured command, in one probed run: attaching
/// flushes QEMU's translated code, and retranslating the guest's hot code
/// (a few hundred ms under TCG) is a cost of attaching, not of hits. The
/// warm-up runs the same code paths without hitting the measured probe.
struct Phases<'a> {
    warmup: Option<&'a str>,
    command: &'a str,
    started: Option<Instant>,
}

impl<'a> Phases<'a> {
    fn begin(vm: &mut Vm, warmup: &'a str, command: &'a str) -> Result<Phases<'a>> {
        vm.start_workload(warmup)?;
        Ok(Phases {
            warmup: Some(warmup),
            command,
            started: None,
        })
    }

    /// The serve loop's `until`: starts the command once the warm-up ended.
    fn poll(&mut self, vm: &mut Vm) -> Option<EndReason> {
        match vm.poll_exit() {
            Ok(Some(0)) if self.warmup.take().is_some() => {
                self.started = Some(Instant::now());
                match vm.start_workload(self.command) {
                    Ok(()) => None,
                    Err(e) => Some(EndReason::TargetGone(e.to_string())),
                }
            }
            Ok(Some(status)) => Some(EndReason::WorkloadExited(status)),
            Ok(None) => None,
            Err(e) => Some(EndReason::TargetGone(e.to_string())),
        }
    }

    /// The measured command's wall time.
    fn secs(&self, vm: &Vm) -> Result<f64> {
        let t = self
            .started
            .ok_or_else(|| anyhow!("the warm-up `{:?}` failed", self.warmup))?;
        let end = vm.last_event_at().unwrap_or_else(Instant::now);
        Ok(end.duration_since(t).as_secs_f64())
    }
}

struct Probed {
    secs: f64,
    /// `@c` as printed at the end.
    count: u64,
    inside_ns: Option<(f64, u64)>,
}

fn compile(program: &str, kernel: &KernelInfo) -> Result<probe_lang::Program> {
    crate::kernel::compile_typed(program, "bench", kernel, &Default::default(), None)
        .map_err(|d| anyhow!("bench program: {d}"))
}

fn printing(program: &probe_lang::Program, out: &SharedBuf) -> Mutex<probe_runtime::Runtime> {
    Mutex::new(probe_output::printing_runtime(
        program.executable().clone(),
        Box::new(out.clone()),
        probe_output::OutputFormat::Text,
    ))
}

/// The count a program printed as `@c: N`.
fn count_of(printed: &SharedBuf) -> Result<u64> {
    let text =
        String::from_utf8_lossy(&printed.0.lock().map_err(|_| anyhow!("lock"))?).into_owned();
    text.lines()
        .find_map(|l| l.strip_prefix("@c: "))
        .and_then(|n| n.trim().parse().ok())
        .ok_or_else(|| anyhow!("no @c in {text:?}"))
}

/// Runs `command` with the program attached through the guest's plugin.
fn with_plugin(
    vm: &mut Vm,
    kernel: &KernelInfo,
    program: &str,
    warmup: &str,
    command: &str,
) -> Result<Probed> {
    let program = compile(program, kernel)?;
    let backend = crate::plugin::attach(
        "bench",
        &vm.plugin_socket(),
        &program,
        kernel,
        plugin_protocol::RecordMode::Off,
    )?;
    let printed = SharedBuf::default();
    let runtime = printing(&program, &printed);
    let mut backend: Box<dyn Backend> = Box::new(backend);
    backend
        .start(&runtime)
        .map_err(|e| anyhow!("starting the probes: {e}"))?;
    let mut phases = Phases::begin(vm, warmup, command)?;
    let reason = backend.run(&runtime, &mut || phases.poll(vm));
    let secs = phases.secs(vm);
    let finished = backend.finish(Some(&runtime), false);
    if let Some(e) = finished.detach_error {
        bail!("detaching: {e}");
    }
    if reason != EndReason::WorkloadExited(0) {
        bail!("the run ended as {reason:?}");
    }
    runtime.lock().map_err(|_| anyhow!("lock"))?.print_maps();
    Ok(Probed {
        secs: secs?,
        count: count_of(&printed)?,
        inside_ns: inside_times(&finished.stats_line),
    })
}

/// The plugin's mean and median service time, from its statistics line.
fn inside_times(line: &str) -> Option<(f64, u64)> {
    let after = |key: &str| -> Option<f64> {
        line.split(key)
            .nth(1)?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    };
    Some((
        after("mean ")? * 1e3,
        (after("median under ")? * 1e3) as u64,
    ))
}

/// Runs `command` with the program armed through the guest's gdbstub.
fn with_gdb(
    vm: &mut Vm,
    kernel: &KernelInfo,
    program: &str,
    warmup: &str,
    command: &str,
) -> Result<Probed> {
    let program = compile(program, kernel)?;
    let mut session = Session::new(connect(vm)?);
    crate::gdb::arm_program(&mut session, &program, kernel)?;
    let printed = SharedBuf::default();
    let runtime = printing(&program, &printed);
    session.resume()?;
    let mut phases = Phases::begin(vm, warmup, command)?;
    let reason = session.run(&runtime, &mut || phases.poll(vm));
    let secs = phases.secs(vm);
    session.detach()?;
    if reason != EndReason::WorkloadExited(0) {
        bail!("the run ended as {reason:?}");
    }
    runtime.lock().map_err(|_| anyhow!("lock"))?.print_maps();
    Ok(Probed {
        secs: secs?,
        count: count_of(&printed)?,
        inside_ns: None,
    })
}

fn per_hit(base: &Stats, probed: &Stats, hits: u64) -> f64 {
    (probed.geomean - base.geomean) / hits.max(1) as f64
}

fn us(secs: f64) -> String {
    if secs.abs() >= 1e-3 {
        format!("{:.2} ms", secs * 1e3)
    } else {
        format!("{:.2} us", secs * 1e6)
    }
}

impl InsideReport {
    /// The report's Markdown section.
    pub fn render(&self) -> String {
        let mut md = String::new();
        let _ = writeln!(
            md,
            "## In-VMM probes against the gdbstub (QEMU {})\n",
            self.qemu
        );
        let _ = writeln!(
            md,
            "One QEMU {} TCG guest with vmprobe's plugin loaded serves both backends; a second \
             guest on the same QEMU without the plugin is the baseline of the idle plugin. \
             Program: `{COUNT_DD}`. Each cell: geometric mean of {} runs.\n",
            self.qemu, self.reps
        );
        let _ = writeln!(
            md,
            "| backend | dd writes | hits | time without (s) | time with (s) | per-hit cost (wall) | inside QEMU: mean / median |"
        );
        let _ = writeln!(md, "|---|---:|---:|---:|---:|---:|---:|");
        for r in &self.cost {
            let inside = r
                .inside_ns
                .map(|(mean, median)| {
                    format!("{:.2} us / under {:.2} us", mean / 1e3, median as f64 / 1e3)
                })
                .unwrap_or_default();
            let _ = writeln!(
                md,
                "| {} | {} | {} | {:.3} | {:.3} | {} | {inside} |",
                r.backend,
                r.writes,
                r.hits,
                r.base.geomean,
                r.probed.geomean,
                us(per_hit(&r.base, &r.probed, r.hits)),
            );
        }
        if let (Some(p), Some(g)) = (
            self.cost.iter().find(|r| r.backend == "plugin"),
            self.cost.iter().find(|r| r.backend == "gdb"),
        ) {
            let (p, g) = (
                per_hit(&p.base, &p.probed, p.hits),
                per_hit(&g.base, &g.probed, g.hits),
            );
            if p > 0.0 {
                let _ = writeln!(
                    md,
                    "\nA hit through the stub costs {:.0} times a hit inside QEMU (wall time).",
                    g / p
                );
            }
        }
        if !self.rates.is_empty() {
            let _ = writeln!(md, "\n### Overhead at fixed probe rates, inside QEMU\n");
            let _ = writeln!(
                md,
                "`vmprobe-mix` (busy arithmetic, a `getppid` every N rounds) with \
                 `kprobe:__x64_sys_getppid {{ @c = count(); }}` inside QEMU.\n"
            );
            let _ = writeln!(
                md,
                "| target rate | rounds per call | hits | measured rate | time without (s) | time with (s) | overhead |"
            );
            let _ = writeln!(md, "|---:|---:|---:|---:|---:|---:|---:|");
            for r in &self.rates {
                let (target, every) = match r.target {
                    0 => ("none (attached, never fires)".to_string(), "-".to_string()),
                    t => (format!("{t}/s"), r.every.to_string()),
                };
                let _ = writeln!(
                    md,
                    "| {target} | {every} | {} | {:.0}/s | {:.3} | {:.3} | {:+.1}% |",
                    r.hits,
                    r.hits as f64 / r.probed.geomean,
                    r.base.geomean,
                    r.probed.geomean,
                    (r.probed.geomean / r.base.geomean - 1.0) * 100.0
                );
            }
        }
        if !self.idle.is_empty() {
            let _ = writeln!(md, "\n### The plugin loaded, nothing attached\n");
            let _ = writeln!(
                md,
                "| workload | without the plugin (s) | with it, idle (s) | difference, mean ± standard error |"
            );
            let _ = writeln!(md, "|---|---:|---:|---:|");
            for r in &self.idle {
                let _ = writeln!(
                    md,
                    "| `{}` | {:.3} (sigma {:.1}%) | {:.3} (sigma {:.1}%) | {:+.2}% ± {:.2}% ({} pairs) |",
                    r.workload,
                    r.without.geomean,
                    r.without.sigma_pct,
                    r.with.geomean,
                    r.with.sigma_pct,
                    r.diff_mean,
                    r.diff_stderr,
                    r.pairs
                );
            }
        }
        md
    }
}
