//! The probe logic of vmprobe's QEMU plugin: a program vmprobe compiled,
//! run in QEMU's vCPU threads at the instructions it probes, with no VM
//! stop. What it runs and how the vCPUs share maps is in [`run`] and
//! [`shards`]; the socket vmprobe talks to is [`control`].
//!
//! While no vmprobe is attached, the plugin instruments nothing: it is not
//! [`active`](Hooks::active), so QEMU has no translation callback of ours
//! and runs the guest's code as without the plugin (where QEMU does not
//! export the wake-up `tcg` needs, the doorbell blocks stay: see `tcg`).

mod context;
mod control;
mod events;
mod run;
mod shards;

use crate::tcg::{self, Hooks, Vcpu};
use arc_swap::ArcSwapOption;
use kernel_image::TextSample;
use plugin_protocol::FromPlugin;
use run::Run;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex, OnceLock};

/// Something only a vCPU thread can do (read guest memory), asked by the
/// control thread and answered through its channel.
pub(crate) enum VcpuWork {
    DetectSlide {
        id: u64,
        samples: Vec<TextSample>,
    },
    Read {
        id: u64,
        addr: u64,
        len: u64,
    },
    /// Arm the run-time addresses of the processes running at the start
    /// (uprobes in position-independent files); nothing is answered.
    ScanProcesses,
}

pub(crate) struct Plugin {
    vcpus: AtomicU32,
    /// The attached program, if any.
    run: ArcSwapOption<Run>,
    work: Mutex<Vec<(VcpuWork, Sender<control::Event>)>>,
    work_pending: AtomicBool,
    /// `profile` samplers due on each vCPU, one bit per sampler.
    due: Box<[AtomicU64]>,
    /// How many ticks of each sampler (vCPU * MAX_SAMPLERS + sampler) a
    /// vCPU has not served yet: under single-threaded TCG a vCPU may wait
    /// longer than a period for its turn, and each tick is still one sample,
    /// as on a real CPU.
    pending: Box<[AtomicU32]>,
    /// Counts the reinstrumentations that took effect, so the control
    /// thread can wait for one it asked for.
    generation: AtomicU64,
}

/// vCPUs a QEMU may have at most (QEMU's own limit is far higher; the
/// per-vCPU tables here are sized once, at install).
const MAX_VCPUS: usize = 256;

/// `profile` probes a program may have (one bit each in a due mask).
pub(crate) const MAX_SAMPLERS: usize = 64;

/// Ticks of one sampler a vCPU catches up at most when it runs again: a
/// second's worth, within these bounds; older ones are dropped.
const CATCH_UP: std::ops::RangeInclusive<u64> = 16..=1000;

static PLUGIN: OnceLock<Plugin> = OnceLock::new();

impl Plugin {
    fn new(vcpus: u32) -> Plugin {
        Plugin {
            vcpus: AtomicU32::new(vcpus),
            run: ArcSwapOption::empty(),
            work: Mutex::new(Vec::new()),
            work_pending: AtomicBool::new(false),
            due: (0..MAX_VCPUS).map(|_| AtomicU64::new(0)).collect(),
            pending: (0..MAX_VCPUS * MAX_SAMPLERS)
                .map(|_| AtomicU32::new(0))
                .collect(),
            generation: AtomicU64::new(0),
        }
    }

    fn vcpus(&self) -> u32 {
        self.vcpus.load(Ordering::Relaxed)
    }

    /// Queues work for the next vCPU that samples: turns sampling on, so
    /// that one soon does.
    fn submit(&self, work: VcpuWork, reply: Sender<control::Event>) {
        self.work
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((work, reply));
        self.work_pending.store(true, Ordering::Release);
        tcg::set_sampling(true);
        tcg::arm_all_samples();
    }

    /// Whether sampling is still needed once the queued work is done.
    fn sampling_needed(&self) -> bool {
        self.work_pending.load(Ordering::Acquire)
            || self
                .run
                .load()
                .as_ref()
                .is_some_and(|r| !r.samplers.is_empty() && r.started.load(Ordering::Acquire))
    }

    fn serve_work(&self, vcpu: &mut Vcpu<'_>) {
        let work = std::mem::take(&mut *self.work.lock().unwrap_or_else(|e| e.into_inner()));
        self.work_pending.store(false, Ordering::Release);
        for (w, reply) in work {
            let answer = match w {
                VcpuWork::ScanProcesses => {
                    if let Some(run) = self.run.load_full()
                        && run.scan_guest(vcpu)
                    {
                        tcg::request_reinstrument();
                    }
                    continue;
                }
                VcpuWork::DetectSlide { id, samples } => {
                    let slide = kernel_image::detect_slide(&samples, |addr, len| {
                        let mut buf = vec![0u8; len];
                        vcpu.read_memory(addr, &mut buf).then_some(buf)
                    });
                    FromPlugin::Slide { id, slide }
                }
                VcpuWork::Read { id, addr, len } => {
                    let mut buf = vec![0u8; len.min(plugin_protocol::MAX_READ) as usize];
                    let bytes = vcpu.read_memory(addr, &mut buf).then_some(buf);
                    FromPlugin::Memory { id, bytes }
                }
            };
            let _ = reply.send(control::Event::Vcpu(answer));
        }
        if !self.sampling_needed() {
            tcg::set_sampling(false);
        }
    }

    /// Forgets the ticks of an earlier session's samplers.
    fn clear_ticks(&self) {
        self.due.iter().for_each(|d| d.store(0, Ordering::Release));
        self.pending
            .iter()
            .for_each(|p| p.store(0, Ordering::Release));
    }

    /// One tick of sampler `i` on every vCPU.
    fn tick(&self, i: usize) {
        let vcpus = (self.vcpus() as usize).min(MAX_VCPUS);
        for v in 0..vcpus {
            // Counted before the bit is set: a vCPU that sees the bit finds the count.
            self.pending[v * MAX_SAMPLERS + i].fetch_add(1, Ordering::AcqRel);
            self.due[v].fetch_or(1 << i, Ordering::AcqRel);
        }
    }
}

impl Hooks for Plugin {
    fn instrument(&self, vaddr: u64) -> Option<u64> {
        let run = self.run.load();
        let run = run.as_ref()?;
        (run.started.load(Ordering::Acquire) && run.instruments(vaddr)).then_some(vaddr)
    }

    fn active(&self) -> bool {
        let run = self.run.load();
        run.as_ref()
            .is_some_and(|r| r.started.load(Ordering::Acquire))
    }

    fn on_insn(&self, vcpu: &mut Vcpu<'_>, vaddr: u64) {
        let Some(run) = self.run.load_full() else {
            return;
        };
        // Where the instruction runs now (a shared library's block runs in
        // every process mapping its page, at each one's own address).
        let pc = vcpu.reg_id(crate::tcg::Reg::Rip).unwrap_or(vaddr);
        if run.hit(vcpu, vaddr, pc) {
            // A call's return address needs a callback before it returns:
            // the flush runs before this vCPU's next block.
            tcg::request_reinstrument();
        }
    }

    fn on_sample(&self, vcpu: &mut Vcpu<'_>, _resumed: bool) {
        if self.work_pending.load(Ordering::Acquire) {
            self.serve_work(vcpu);
        }
        let Some(due) = self.due.get(vcpu.index() as usize) else {
            return;
        };
        let bits = due.swap(0, Ordering::AcqRel);
        if bits == 0 {
            return;
        }
        let Some(run) = self.run.load_full() else {
            return;
        };
        let base = vcpu.index() as usize * MAX_SAMPLERS;
        for (i, sampler) in run.samplers.iter().enumerate().take(MAX_SAMPLERS) {
            if bits & (1 << i) != 0 {
                let ticks = self.pending[base + i].swap(0, Ordering::AcqRel);
                let block = [(sampler.block, sampler.probe.clone())];
                let per_second = 1_000_000_000 / sampler.period_ns.max(1);
                let most = per_second.clamp(*CATCH_UP.start(), *CATCH_UP.end());
                for _ in 0..u64::from(ticks).min(most) {
                    run.sample(vcpu, &block);
                }
            }
        }
    }

    fn reinstrumented(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    fn vcpu_init(&self, vcpu_index: u32) {
        self.vcpus.fetch_max(vcpu_index + 1, Ordering::Relaxed);
    }
}

/// `qemu_plugin_install`'s body: `-plugin PATH,sock=SOCKET` listens for
/// vmprobe on SOCKET (a Unix socket only its owner may use).
pub fn install(
    id: tcg::qemu_plugin_id_t,
    info: &tcg::qemu_info_t,
    args: &[String],
) -> Result<(), String> {
    let mut sock = None;
    for a in args {
        match a.split_once('=') {
            Some(("sock", path)) if !path.is_empty() => sock = Some(path.to_string()),
            _ => return Err(format!("unknown argument '{a}' (expected sock=PATH)")),
        }
    }
    let sock = sock.ok_or("give the socket to listen on: -plugin PATH,sock=SOCKET")?;
    let listener = control::listen(std::path::Path::new(&sock))?;
    let plugin = PLUGIN.get_or_init(|| Plugin::new(1));
    let installed = tcg::install(id, info, plugin)?;
    plugin
        .vcpus
        .store(installed.vcpus.max(1), Ordering::Relaxed);
    std::thread::Builder::new()
        .name("vmprobe-ctl".into())
        .spawn(move || control::accept(listener, plugin))
        .map_err(|e| format!("starting the control thread: {e}"))?;
    Ok(())
}

/// The attached program, if any, kept alive while the caller holds it.
fn current(plugin: &Plugin) -> Option<Arc<Run>> {
    plugin.run.load_full()
}
