//! A plugin that counts executions of guest instructions, built on
//! `vmprobe_qemu_plugin::tcg` alone; the end-to-end tests load it into QEMU
//! 10 with the default guest.
//!
//! ```text
//! -plugin libcount_insns.so,out=FILE[,addr=0xA[:0xB..]][,switch=0xC[:0xD..]]
//!         [,trigger=PATH][,after=SECONDS][,window=START:END][,sample=MS][,wake=off]
//! ```
//!
//! - `addr`: instructions to count (repeatable, or `:`-separated: QEMU
//!   splits its options at commas). At each hit the callback reads rdi, rsi
//!   and rdx, 16 bytes at rsi, and counts rdx in a histogram.
//! - `switch`, with `trigger` or `after`: a second set of addresses. A
//!   thread of the plugin's own calls `request_reinstrument` to count the
//!   other set instead: `after` seconds after install, and every time the
//!   file `trigger` appears (the plugin deletes it once the switch took
//!   effect, so the test can wait for it).
//! - `window=START:END`: counts (and the histogram) also per window: from a
//!   hit whose rdx is START (included) to one whose rdx is END (excluded).
//! - `sample=MS`: sampling on; a thread arms a sample on every vCPU every MS
//!   milliseconds.
//! - `wake=off`: switches wait for a doorbell block (no `async_run_on_cpu`
//!   wake-up; see `tcg::set_immediate_wake`).
//!
//! At exit it writes to `out` one fact per line (see `write_report`).

use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use vmprobe_qemu_plugin::tcg::{self, Hooks, Reg, Vcpu, qemu_info_t, qemu_plugin_id_t};

vmprobe_qemu_plugin::export_plugin!(install);

const MAX_VCPUS: usize = 8;
const MAX_ADDRS: usize = 8;
/// rdx values counted one by one; larger ones share the last bin.
const HIST_BINS: usize = 8192;
const MAX_SWITCHES: usize = 1024;

#[derive(Default)]
struct Config {
    out: PathBuf,
    /// Addresses of each phase: `[0]` before the first switch, `[1]` after.
    phases: [Vec<u64>; 2],
    trigger: Option<PathBuf>,
    after: Option<Duration>,
    window: Option<(u64, u64)>,
    sample: Option<Duration>,
    /// `wake=off`: no immediate wake-up of a vCPU (doorbell blocks only).
    no_wake: bool,
}

struct Counter {
    cfg: Config,
    started: Instant,
    /// The phase `instrument` answers for (the switches so far, modulo 2).
    phase: AtomicUsize,
    switches_requested: AtomicU64,
    switches_done: AtomicU64,
    /// Per switch, ns since `started`: when requested, when in effect (0:
    /// not yet). Atomics, because `reinstrumented` runs in QEMU's exclusive
    /// section, where waiting for a lock the switcher thread holds would
    /// stall every vCPU.
    requested_ns: Vec<AtomicU64>,
    done_ns: Vec<AtomicU64>,
    /// [vcpu][phase][addr]: all hits, and hits inside the window.
    hits: Vec<AtomicU64>,
    window_hits: Vec<AtomicU64>,
    /// [phase][addr][rdx bin], inside the window (or all hits without one).
    hist: Vec<AtomicU64>,
    window_open: AtomicBool,
    /// Hits of an address of the other phase after the switch took effect:
    /// must stay 0 (the reset flushed every block that called them).
    stale_hits: AtomicU64,
    rip_mismatch: AtomicU64,
    reg_missing: AtomicU64,
    mem_fail: AtomicU64,
    mem_checksum: AtomicU64,
    samples: [AtomicU64; MAX_VCPUS],
    samples_resumed: [AtomicU64; MAX_VCPUS],
    samples_no_rip: AtomicU64,
    arms: AtomicU64,
    vcpus_seen: AtomicU64,
}

static COUNTER: OnceLock<Counter> = OnceLock::new();

fn parse_hex(s: &str) -> Result<u64, String> {
    let digits = s.trim().trim_start_matches("0x").trim_start_matches("0X");
    u64::from_str_radix(digits, 16).map_err(|e| format!("bad hex address {s:?}: {e}"))
}

fn parse(args: &[String]) -> Result<Config, String> {
    let mut cfg = Config::default();
    for arg in args {
        let (k, v) = arg
            .split_once('=')
            .ok_or_else(|| format!("argument {arg:?} is not name=value"))?;
        match k {
            "out" => cfg.out = PathBuf::from(v),
            "addr" | "switch" => {
                let phase = &mut cfg.phases[usize::from(k == "switch")];
                for a in v.split(':').filter(|a| !a.is_empty()) {
                    phase.push(parse_hex(a)?);
                }
            }
            "trigger" => cfg.trigger = Some(PathBuf::from(v)),
            "wake" => cfg.no_wake = v == "off",
            "after" => {
                let s: f64 = v.parse().map_err(|e| format!("after={v}: {e}"))?;
                cfg.after = Some(Duration::from_secs_f64(s));
            }
            "window" => {
                let (a, b) = v
                    .split_once(':')
                    .ok_or_else(|| format!("window={v}: want START:END"))?;
                let n = |s: &str| s.parse::<u64>().map_err(|e| format!("window={v}: {e}"));
                cfg.window = Some((n(a)?, n(b)?));
            }
            "sample" => {
                let ms: u64 = v.parse().map_err(|e| format!("sample={v}: {e}"))?;
                cfg.sample = Some(Duration::from_millis(ms.max(1)));
            }
            _ => return Err(format!("unknown argument {k:?}")),
        }
    }
    if cfg.out.as_os_str().is_empty() {
        return Err("out=FILE is required".into());
    }
    if cfg.phases.iter().any(|p| p.len() > MAX_ADDRS) {
        return Err(format!("at most {MAX_ADDRS} addresses per phase"));
    }
    Ok(cfg)
}

fn zeros(n: usize) -> Vec<AtomicU64> {
    (0..n).map(|_| AtomicU64::new(0)).collect()
}

impl Counter {
    fn hit_index(vcpu: u32, phase: usize, addr: usize) -> usize {
        ((vcpu as usize).min(MAX_VCPUS - 1) * 2 + phase) * MAX_ADDRS + addr
    }

    fn hist_index(phase: usize, addr: usize, rdx: u64) -> usize {
        (phase * MAX_ADDRS + addr) * HIST_BINS + (rdx as usize).min(HIST_BINS - 1)
    }

    /// Called from the switcher thread only.
    fn request_switch(&self) {
        let k = self.switches_requested.load(Ordering::SeqCst) as usize;
        if k >= MAX_SWITCHES {
            return;
        }
        self.requested_ns[k].store(self.now_ns(), Ordering::SeqCst);
        self.phase.fetch_xor(1, Ordering::SeqCst);
        self.switches_requested.fetch_add(1, Ordering::SeqCst);
        tcg::request_reinstrument();
    }

    fn now_ns(&self) -> u64 {
        self.started.elapsed().as_nanos() as u64
    }
}

impl Hooks for Counter {
    fn instrument(&self, vaddr: u64) -> Option<u64> {
        let phase = self.phase.load(Ordering::SeqCst);
        let i = self.cfg.phases[phase].iter().position(|&a| a == vaddr)?;
        Some(((phase as u64) << 8) | i as u64)
    }

    fn on_insn(&self, vcpu: &mut Vcpu<'_>, userdata: u64) {
        let (phase, i) = ((userdata >> 8) as usize & 1, (userdata & 0xff) as usize);
        let addr = self.cfg.phases[phase][i];
        if phase != self.phase.load(Ordering::Relaxed)
            && self.switches_done.load(Ordering::SeqCst)
                == self.switches_requested.load(Ordering::SeqCst)
        {
            self.stale_hits.fetch_add(1, Ordering::Relaxed);
        }
        if vcpu.reg("rip") != Some(addr) || vcpu.reg_id(Reg::Rip) != Some(addr) {
            self.rip_mismatch.fetch_add(1, Ordering::Relaxed);
        }
        let (Some(_rdi), Some(rsi), Some(rdx)) = (
            vcpu.reg_id(Reg::Rdi),
            vcpu.reg_id(Reg::Rsi),
            vcpu.reg_id(Reg::Rdx),
        ) else {
            self.reg_missing.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let mut bytes = [0u8; 16];
        if vcpu.read_memory(rsi, &mut bytes) {
            let sum = bytes.iter().map(|&b| u64::from(b)).sum::<u64>();
            self.mem_checksum.fetch_add(sum, Ordering::Relaxed);
        } else {
            self.mem_fail.fetch_add(1, Ordering::Relaxed);
        }
        let h = Self::hit_index(vcpu.index(), phase, i);
        self.hits[h].fetch_add(1, Ordering::Relaxed);
        let counted = match self.cfg.window {
            None => true,
            Some((start, end)) => {
                if rdx == start {
                    self.window_open.store(true, Ordering::Relaxed);
                } else if rdx == end {
                    self.window_open.store(false, Ordering::Relaxed);
                }
                self.window_open.load(Ordering::Relaxed)
            }
        };
        if counted {
            self.window_hits[h].fetch_add(1, Ordering::Relaxed);
            self.hist[Self::hist_index(phase, i, rdx)].fetch_add(1, Ordering::Relaxed);
        }
    }

    fn on_sample(&self, vcpu: &mut Vcpu<'_>, resumed: bool) {
        let v = (vcpu.index() as usize).min(MAX_VCPUS - 1);
        self.samples[v].fetch_add(1, Ordering::Relaxed);
        if resumed {
            self.samples_resumed[v].fetch_add(1, Ordering::Relaxed);
        }
        if vcpu.reg_id(Reg::Rip).unwrap_or(0) == 0 {
            self.samples_no_rip.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn reinstrumented(&self) {
        // Every switch requested so far is in effect now (requests coalesce).
        let requested = self.switches_requested.load(Ordering::SeqCst);
        if self.switches_done.load(Ordering::SeqCst) == requested {
            return;
        }
        let now = self.now_ns();
        let done = self.switches_done.load(Ordering::SeqCst);
        for k in done..requested {
            self.done_ns[k as usize].store(now, Ordering::SeqCst);
        }
        self.switches_done.store(requested, Ordering::SeqCst);
    }

    fn vcpu_init(&self, _vcpu_index: u32) {
        self.vcpus_seen.fetch_add(1, Ordering::Relaxed);
    }

    fn at_exit(&self) {
        if let Err(e) = self.write_report() {
            eprintln!("count_insns: writing {}: {e}", self.cfg.out.display());
        }
    }
}

impl Counter {
    /// One fact per line, `key value` or `key name=value ...`.
    fn write_report(&self) -> std::io::Result<()> {
        let mut out = String::new();
        let mut line = |s: String| {
            out.push_str(&s);
            out.push('\n');
        };
        line(format!("resets {}", tcg::resets()));
        line(format!(
            "immediate_wake {}",
            u8::from(tcg::immediate_wake())
        ));
        line(format!("panics {}", tcg::caught_panics()));
        line(format!("vcpus {}", self.vcpus_seen.load(Ordering::Relaxed)));
        for (name, v) in [
            ("stale_hits", &self.stale_hits),
            ("rip_mismatch", &self.rip_mismatch),
            ("reg_missing", &self.reg_missing),
            ("mem_fail", &self.mem_fail),
            ("mem_checksum", &self.mem_checksum),
            ("arms", &self.arms),
            ("samples_no_rip", &self.samples_no_rip),
        ] {
            line(format!("{name} {}", v.load(Ordering::Relaxed)));
        }
        for v in 0..MAX_VCPUS {
            let n = self.samples[v].load(Ordering::Relaxed);
            if n > 0 {
                let r = self.samples_resumed[v].load(Ordering::Relaxed);
                line(format!("samples vcpu={v} n={n} resumed={r}"));
            }
        }
        for (phase, addrs) in self.cfg.phases.iter().enumerate() {
            for (i, addr) in addrs.iter().enumerate() {
                for v in 0..MAX_VCPUS {
                    let h = Self::hit_index(v as u32, phase, i);
                    let total = self.hits[h].load(Ordering::Relaxed);
                    let window = self.window_hits[h].load(Ordering::Relaxed);
                    if total > 0 || v == 0 {
                        line(format!(
                            "hits phase={phase} addr={addr:#x} vcpu={v} total={total} window={window}"
                        ));
                    }
                }
                let mut hist: HashMap<usize, u64> = HashMap::new();
                for bin in 0..HIST_BINS {
                    let n =
                        self.hist[Self::hist_index(phase, i, bin as u64)].load(Ordering::Relaxed);
                    if n > 0 {
                        hist.insert(bin, n);
                    }
                }
                let mut bins: Vec<_> = hist.into_iter().collect();
                bins.sort();
                for (bin, n) in bins {
                    let rdx = if bin == HIST_BINS - 1 {
                        format!(">={bin}")
                    } else {
                        bin.to_string()
                    };
                    line(format!("hist phase={phase} addr={addr:#x} rdx={rdx} n={n}"));
                }
            }
        }
        let requested = self.switches_requested.load(Ordering::SeqCst) as usize;
        for k in 0..requested {
            let req = self.requested_ns[k].load(Ordering::SeqCst);
            let done = self.done_ns[k].load(Ordering::SeqCst);
            line(format!("switch {k} request_ns={req} done_ns={done}"));
        }
        let mut f = std::fs::File::create(&self.cfg.out)?;
        f.write_all(out.as_bytes())?;
        f.sync_all()
    }
}

/// Switches when asked: `after` once, and at every appearance of `trigger`.
fn switcher(c: &'static Counter) {
    if let Some(after) = c.cfg.after {
        std::thread::sleep(after);
        c.request_switch();
    }
    let Some(trigger) = &c.cfg.trigger else {
        return;
    };
    loop {
        if trigger.exists() {
            c.request_switch();
            // The file goes once the switch is in effect: the test's signal.
            while c.switches_done.load(Ordering::SeqCst)
                != c.switches_requested.load(Ordering::SeqCst)
            {
                std::thread::sleep(Duration::from_micros(200));
            }
            let _ = std::fs::remove_file(trigger);
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn sampler(c: &'static Counter, period: Duration) {
    loop {
        std::thread::sleep(period);
        tcg::arm_all_samples();
        c.arms.fetch_add(1, Ordering::Relaxed);
    }
}

fn install(id: qemu_plugin_id_t, info: &qemu_info_t, args: &[String]) -> Result<(), String> {
    let cfg = parse(args)?;
    let counter = Counter {
        started: Instant::now(),
        phase: AtomicUsize::new(0),
        switches_requested: AtomicU64::new(0),
        switches_done: AtomicU64::new(0),
        requested_ns: zeros(MAX_SWITCHES),
        done_ns: zeros(MAX_SWITCHES),
        hits: zeros(MAX_VCPUS * 2 * MAX_ADDRS),
        window_hits: zeros(MAX_VCPUS * 2 * MAX_ADDRS),
        hist: zeros(2 * MAX_ADDRS * HIST_BINS),
        window_open: AtomicBool::new(false),
        stale_hits: AtomicU64::new(0),
        rip_mismatch: AtomicU64::new(0),
        reg_missing: AtomicU64::new(0),
        mem_fail: AtomicU64::new(0),
        mem_checksum: AtomicU64::new(0),
        samples: Default::default(),
        samples_resumed: Default::default(),
        samples_no_rip: AtomicU64::new(0),
        arms: AtomicU64::new(0),
        vcpus_seen: AtomicU64::new(0),
        cfg,
    };
    if COUNTER.set(counter).is_err() {
        return Err("installed twice".into());
    }
    let c: &'static Counter = COUNTER.get().ok_or("no counter")?;
    tcg::set_immediate_wake(!c.cfg.no_wake);
    tcg::install(id, info, c)?;
    if let Some(period) = c.cfg.sample {
        tcg::set_sampling(true);
        std::thread::spawn(move || sampler(c, period));
    }
    if c.cfg.after.is_some() || c.cfg.trigger.is_some() {
        std::thread::spawn(move || switcher(c));
    }
    Ok(())
}
