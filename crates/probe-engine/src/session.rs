//! A probing session on one guest: arm, serve hits, disarm, detach.

use crate::context::HitContext;
use crate::resolve::{ProbeSite, Skip};
use crate::{Error, Result, monotonic_ns};
use gdb_remote::{BreakpointKind, Client, ResumeAction, StopReply, ThreadId};
use hdrhistogram::Histogram;
use kernel_image::KernelSymbols;
use probe_lang::{Flow, Runtime};
use std::collections::HashMap;
use std::time::Duration;

/// How long the loop waits for a stop before polling for the end of the run.
const POLL_INTERVAL: Duration = Duration::from_millis(20);
/// How long a stopped guest may take to answer an interrupt.
const STOP_TIMEOUT: Duration = Duration::from_secs(2);
/// Bytes compared at each probe site across attach and detach.
const SITE_BYTES: usize = 16;
/// `endbr64`, the first instruction of functions in kernels built with IBT
/// support. Without CET enabled it is a no-op, and the kernel never patches
/// it at run time, so moving the pc past it is exactly executing it.
const ENDBR64: [u8; 4] = [0xf3, 0x0f, 0x1e, 0xfa];
/// The 5-byte NOP of an idle ftrace site. The guest may patch it into a call
/// at any time (ftrace, kprobes, BPF), so it is re-read at each hit.
const NOP5: [u8; 5] = [0x0f, 0x1f, 0x44, 0x00, 0x00];

/// Why a run ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EndReason {
    /// The workload finished with this exit status.
    WorkloadExited(i32),
    /// The user asked to stop (Ctrl-C, SIGTERM).
    Interrupted,
    /// A handler called `exit()`.
    ScriptExit,
    /// The stub or VM went away; the message says how.
    TargetGone(String),
}

/// Counters and the service-time distribution of hits, for the end-of-run
/// report and `vmprobe bench`.
pub struct HitStats {
    pub hits: u64,
    /// Stops that matched no probe site (resumed and otherwise ignored).
    pub stray_stops: u64,
    /// Nanoseconds from receiving a hit's stop reply to resuming the guest.
    pub service_ns: Histogram<u64>,
}

impl HitStats {
    fn new() -> Self {
        HitStats {
            hits: 0,
            stray_stops: 0,
            service_ns: Histogram::new(3).expect("3 significant digits is valid"),
        }
    }
}

pub struct Session {
    client: Client,
    sites: Vec<ProbeSite>,
    by_addr: HashMap<u64, usize>,
    before: Vec<(u64, Vec<u8>)>,
    armed: Vec<u64>,
    running: bool,
    skip_nops: bool,
    pub stats: HitStats,
}

impl Session {
    /// Takes a connected client whose target is stopped.
    pub fn new(mut client: Client) -> Self {
        // QEMU makes the vCPU that stopped the current `Hg` thread, which
        // saves an `Hg` round trip per register read on a hit.
        client.set_trust_stop_thread(true);
        Session {
            client,
            sites: Vec::new(),
            by_addr: HashMap::new(),
            before: Vec::new(),
            armed: Vec::new(),
            running: false,
            skip_nops: true,
            stats: HitStats::new(),
        }
    }

    /// Whether a hit on an `endbr64` may be resumed by moving the pc past it
    /// (one register write) instead of a single step (a VM stop/start cycle,
    /// the most expensive part of a hit). On by default; turn it off for guests
    /// that enable CET indirect-branch tracking, where skipping the endbr64
    /// would leave the CPU expecting one.
    pub fn set_skip_nops(&mut self, on: bool) {
        self.skip_nops = on;
    }

    pub fn client(&mut self) -> &mut Client {
        &mut self.client
    }

    pub fn sites(&self) -> &[ProbeSite] {
        &self.sites
    }

    /// Lets the guest run.
    pub fn resume(&mut self) -> Result<()> {
        self.client.resume(&[(None, ResumeAction::Continue)])?;
        self.running = true;
        Ok(())
    }

    /// Stops a running guest. Returns the stop reply, which may be a probe
    /// hit that raced with the interrupt (the caller decides what to do).
    fn stop(&mut self) -> Result<Option<StopReply>> {
        if !self.running {
            return Ok(None);
        }
        self.client.interrupt()?;
        let stop =
            self.client
                .wait_stop(Some(STOP_TIMEOUT))?
                .ok_or(gdb_remote::Error::Timeout {
                    waiting_for: "the guest to stop after an interrupt".into(),
                })?;
        self.running = false;
        Ok(Some(stop))
    }

    /// Stops the guest for inspection (for example before arming).
    pub fn pause(&mut self) -> Result<()> {
        self.stop().map(|_| ())
    }

    /// Finds the KASLR slide of the running kernel by comparing guest memory
    /// with the image's text. The guest must be stopped.
    pub fn detect_slide(&mut self, symbols: &KernelSymbols) -> Result<u64> {
        let samples = symbols.text_samples();
        if samples.is_empty() {
            // Symbols from a System.map or /proc/kallsyms: taken as they are.
            return Ok(0);
        }
        let client = &mut self.client;
        kernel_image::detect_slide(samples, |addr, len| {
            let mut buf = vec![0u8; len];
            client.read_memory(addr, &mut buf).ok().map(|_| buf)
        })
        .ok_or(Error::SlideNotFound)
    }

    /// Inserts a breakpoint at every site, after recording the guest memory
    /// there. The guest must be stopped.
    pub fn arm(&mut self, mut sites: Vec<ProbeSite>) -> Result<()> {
        for site in &mut sites {
            let mut bytes = vec![0u8; SITE_BYTES];
            self.client.read_memory(site.addr, &mut bytes)?;
            if self.skip_nops {
                if bytes.starts_with(&ENDBR64) {
                    site.skippable = Some(Skip::Stable(ENDBR64.len() as u8));
                } else if bytes.starts_with(&NOP5) {
                    site.skippable = Some(Skip::Verify(NOP5.len() as u8));
                }
            }
            self.before.push((site.addr, bytes));
        }
        for site in &sites {
            let probe = site
                .handlers
                .first()
                .map(|(_, p)| p.to_string())
                .unwrap_or_default();
            self.client
                .insert_breakpoint(BreakpointKind::Software, site.addr, 1)
                .map_err(|source| Error::Arm {
                    probe,
                    addr: site.addr,
                    source,
                })?;
            self.armed.push(site.addr);
        }
        self.by_addr = sites.iter().enumerate().map(|(i, s)| (s.addr, i)).collect();
        self.sites = sites;
        Ok(())
    }

    /// Serves hits until `poll` reports the end of the run, a handler calls
    /// `exit()`, or the target goes away. Returns with the guest stopped (or gone).
    pub fn run(
        &mut self,
        runtime: &mut Runtime,
        poll: &mut dyn FnMut() -> Option<EndReason>,
    ) -> EndReason {
        loop {
            if let Some(reason) = poll() {
                return match self.stop() {
                    Ok(Some(stop)) => {
                        // A hit that raced with our interrupt still counts;
                        // the guest stays stopped.
                        let _ = self.serve(stop, runtime, false);
                        reason
                    }
                    Ok(None) => reason,
                    Err(e) => EndReason::TargetGone(e.to_string()),
                };
            }
            match self.client.wait_stop(Some(POLL_INTERVAL)) {
                Ok(None) => {}
                Ok(Some(stop)) => {
                    self.running = false;
                    match self.serve(stop, runtime, true) {
                        Ok(Flow::Continue) => {}
                        Ok(Flow::Exit) => return EndReason::ScriptExit,
                        Err(e) => return EndReason::TargetGone(e),
                    }
                }
                Err(e) => {
                    self.running = false;
                    return EndReason::TargetGone(e.to_string());
                }
            }
        }
    }

    /// Handles one stop: runs the handlers of the site hit and, if
    /// `resume`, steps the vCPU over the breakpoint and lets the guest go.
    fn serve(
        &mut self,
        stop: StopReply,
        runtime: &mut Runtime,
        resume: bool,
    ) -> Result<Flow, String> {
        let received = monotonic_ns();
        let thread = match stop {
            StopReply::Signal {
                signal: 5,
                thread: Some(thread),
                ..
            } => thread,
            StopReply::Signal { .. } => {
                self.stats.stray_stops += 1;
                return self
                    .resume_if(resume, None, received)
                    .map(|_| Flow::Continue);
            }
            StopReply::Exited { status } => return Err(format!("the VM exited (status {status})")),
            StopReply::Terminated { signal } => {
                return Err(format!("the VM was terminated (signal {signal})"));
            }
        };
        // With a single site every SIGTRAP while continuing is that site's
        // breakpoint (QEMU reports only its own breakpoints to us; guest int3s
        // stay in the guest), so the pc need not be read.
        let index = if self.sites.len() == 1 {
            Some(0)
        } else {
            let pc = self
                .client
                .read_register(thread, "rip")
                .map_err(|e| e.to_string())?;
            self.by_addr.get(&pc).copied()
        };
        let Some(index) = index else {
            self.stats.stray_stops += 1;
            return self
                .resume_if(resume, Some(thread), received)
                .map(|_| Flow::Continue);
        };
        self.stats.hits += 1;
        let site = &self.sites[index];
        let mut ctx = HitContext {
            client: Some(&mut self.client),
            thread: Some(thread),
            regs: None,
            // QEMU numbers vCPU threads from 1.
            vcpu: thread.tid.saturating_sub(1) as u32,
            nsecs: received,
            func: &site.func,
            probe: "",
        };
        let mut flow = Flow::Continue;
        for (block, probe) in &site.handlers {
            ctx.probe = probe;
            if let Flow::Exit = runtime.run(*block, &mut ctx) {
                flow = Flow::Exit;
            }
        }
        if matches!(flow, Flow::Exit) {
            return Ok(Flow::Exit);
        }
        let (addr, skippable) = (site.addr, site.skippable);
        let skip = match skippable {
            Some(Skip::Stable(len)) => Some(len),
            Some(Skip::Verify(len)) => {
                let mut now = [0u8; NOP5.len()];
                self.client
                    .read_memory(addr, &mut now)
                    .map_err(|e| e.to_string())?;
                (now == NOP5).then_some(len)
            }
            None => None,
        };
        match skip {
            Some(len) if resume => {
                self.client
                    .write_register(thread, "rip", addr + u64::from(len))
                    .map_err(|e| e.to_string())?;
                self.resume_if(resume, None, received)?;
            }
            _ => self.resume_if(resume, Some(thread), received)?,
        }
        Ok(flow)
    }

    fn resume_if(
        &mut self,
        resume: bool,
        stepping: Option<ThreadId>,
        received: u64,
    ) -> Result<(), String> {
        if !resume {
            return Ok(());
        }
        if let Some(thread) = stepping {
            self.step_off_site(thread)?;
        }
        self.client
            .resume(&[(None, ResumeAction::Continue)])
            .map_err(|e| e.to_string())?;
        self.running = true;
        let _ = self
            .stats
            .service_ns
            .record(monotonic_ns().saturating_sub(received));
        Ok(())
    }

    /// Single-steps `thread` until its pc has left every probe site. A
    /// single-stepping vCPU ignores the breakpoint at its pc, so breakpoints
    /// stay armed. QEMU occasionally reports a step done with the pc unmoved
    /// (seen about once in a thousand steps on TCG); resuming then would hit
    /// the same breakpoint again and count one call twice, so the pc is
    /// checked and the step repeated.
    fn step_off_site(&mut self, thread: ThreadId) -> Result<(), String> {
        const MAX_STEPS: usize = 8;
        for _ in 0..MAX_STEPS {
            match self.client.step_thread(thread).map_err(|e| e.to_string())? {
                StopReply::Exited { status } => {
                    return Err(format!("the VM exited (status {status})"));
                }
                StopReply::Terminated { signal } => {
                    return Err(format!("the VM was terminated (signal {signal})"));
                }
                StopReply::Signal { .. } => {}
            }
            let pc = self
                .client
                .read_register(thread, "rip")
                .map_err(|e| e.to_string())?;
            if !self.by_addr.contains_key(&pc) {
                return Ok(());
            }
        }
        Err(format!(
            "vCPU {thread} did not move off a probe site after {MAX_STEPS} single steps"
        ))
    }

    /// Removes every breakpoint, checks guest memory at the probe sites is
    /// as it was before arming, and detaches, leaving the guest running.
    pub fn detach(mut self) -> Result<()> {
        self.stop()?;
        let mut first_error = None;
        for addr in std::mem::take(&mut self.armed) {
            if let Err(e) = self
                .client
                .remove_breakpoint(BreakpointKind::Software, addr, 1)
            {
                first_error.get_or_insert(Error::from(e));
            }
        }
        for (addr, bytes) in std::mem::take(&mut self.before) {
            let mut now = vec![0u8; bytes.len()];
            match self.client.read_memory(addr, &mut now) {
                Ok(()) if now != bytes => {
                    first_error.get_or_insert(Error::MemoryChanged { addr });
                }
                Ok(()) => {}
                Err(e) => {
                    first_error.get_or_insert(Error::from(e));
                }
            }
        }
        self.client.detach()?;
        first_error.map_or(Ok(()), Err)
    }
}
