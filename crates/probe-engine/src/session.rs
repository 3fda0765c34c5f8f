//! A probing session on one guest: arm, serve hits, disarm, detach.

use crate::context::HitContext;
use crate::guest::GuestKernel;
use crate::layers::{LayerSet, LayerSource, LayerValue};
use crate::resolve::{ProbeSite, Skip};
use crate::{Error, Result, monotonic_ns};
use gdb_remote::{
    BreakpointKind, Client, Registers, ResumeAction, StopReason, StopReply, ThreadId,
};
use hdrhistogram::Histogram;
use kernel_image::KernelSymbols;
use probe_lang::{BlockId, Flow, Runtime, Traced, TracedValue};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use trace_formats::{Layer, Value as FieldValue};

/// The largest `F+OFFSET` checked for an instruction boundary (and so
/// allowed).
const MAX_CHECKED_OFFSET: usize = 64 * 1024;

/// How long the loop waits for a stop before polling for the end of the run.
const POLL_INTERVAL: Duration = Duration::from_millis(20);
/// How long a stopped guest may take to answer an interrupt.
const STOP_TIMEOUT: Duration = Duration::from_secs(2);
/// Bound on finding the KASLR slide: QEMU answers its at most about 520
/// reads (one per 2 MiB candidate, a few more where one matches) within a
/// second; a stub slower than this is not one to probe through.
pub const SLIDE_DEADLINE: Duration = Duration::from_secs(30);
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
    /// Returns matched to a call seen at entry (kretprobe fires).
    pub returns: u64,
    /// Calls whose return could not be tracked: more calls in flight than
    /// [`MAX_PENDING_RETURNS`] (bpftrace's "missed" kretprobes).
    pub missed_returns: u64,
    /// Timer (`interval`, `profile`) firings, counting each vCPU sampled.
    pub timer_fires: u64,
    /// Watchpoint hits.
    pub watch_hits: u64,
    /// VMM and host events that ran a handler.
    pub layer_events: u64,
    /// Stops that matched no probe site (resumed and otherwise ignored).
    pub stray_stops: u64,
    /// Nanoseconds from receiving a hit's stop reply to resuming the guest.
    pub service_ns: Histogram<u64>,
}

impl HitStats {
    fn new() -> Self {
        HitStats {
            hits: 0,
            returns: 0,
            missed_returns: 0,
            timer_fires: 0,
            watch_hits: 0,
            layer_events: 0,
            stray_stops: 0,
            service_ns: Histogram::new(3).expect("3 significant digits is valid"),
        }
    }
}

/// Calls in flight whose return is awaited, at most. A guest that recurses
/// deeply or blocks many tasks in a probed function must not grow vmprobe's
/// memory without bound; calls past the limit are counted as missed.
pub const MAX_PENDING_RETURNS: usize = 4096;

/// A probe that fires on a host timer: `interval` runs its block once per
/// period, `profile` once per vCPU per period with that vCPU's registers.
#[derive(Clone, Debug)]
pub struct TimerProbe {
    pub period_ns: u64,
    pub every_vcpu: bool,
    pub block: BlockId,
    pub probe: Arc<str>,
}

/// A data watchpoint (`Z2`-`Z4`) and the block it runs.
#[derive(Clone, Debug)]
pub struct WatchProbe {
    pub addr: u64,
    pub len: u64,
    pub kind: BreakpointKind,
    pub block: BlockId,
    pub probe: Arc<str>,
}

/// A call seen at entry whose return is awaited.
struct PendingReturn {
    site: usize,
    entry_ns: u64,
    /// The vCPU the call entered on.
    vcpu: u32,
}

/// One probe firing, as handed to an [`EventSink`] (`vmprobe record`).
#[derive(Debug)]
pub struct RecordedEvent<'a> {
    /// The guest's name in this run (`vm0`, ...).
    pub guest: &'a str,
    /// Host CLOCK_MONOTONIC nanoseconds of the stop (or of the VMM/host
    /// event).
    pub ts_ns: u64,
    /// `None` for a VMM or host event not emitted by a vCPU thread.
    pub vcpu: Option<u32>,
    pub layer: Layer,
    /// The probe as written, e.g. `kretprobe:ksys_write`.
    pub probe: &'a str,
    pub func: &'a str,
    /// For a return: when the matching call entered.
    pub entry_ns: Option<u64>,
    /// The `trace(name = ...)` call site (an index into the program's
    /// `trace_sites()`) whose fields these are; `None` for the probe's own
    /// fields: `arg0`..`arg5` at an entry, `retval` at a return, a VMM or
    /// host event's fields.
    pub site: Option<u32>,
    pub fields: &'a [(&'a str, FieldValue<'a>)],
}

/// A call seen at entry (by a `kretprobe`) whose return had not come when
/// recording ended: the run ended while the call was in flight.
#[derive(Debug)]
pub struct UnfinishedCall<'a> {
    pub guest: &'a str,
    /// The vCPU the call entered on.
    pub vcpu: u32,
    pub func: &'a str,
    pub entry_ns: u64,
}

/// Where recorded events go. Called with the guest stopped, so a slow sink
/// slows the guest but never loses events.
pub trait EventSink: Send {
    fn event(&mut self, event: &RecordedEvent<'_>);
    /// A script called `snapshot()`.
    fn snapshot(&mut self) {}
    /// At the end of recording, once per call still awaiting its return.
    fn unfinished_call(&mut self, _call: &UnfinishedCall<'_>) {}
}

/// What the events of one stop have in common.
struct EventBase<'a> {
    guest: &'a str,
    ts_ns: u64,
    vcpu: Option<u32>,
    layer: Layer,
    func: &'a str,
    entry_ns: Option<u64>,
}

impl<'a> EventBase<'a> {
    /// A stop of `thread` in the guest.
    fn guest_stop(
        guest: &'a str,
        ts_ns: u64,
        thread: ThreadId,
        func: &'a str,
        entry_ns: Option<u64>,
    ) -> Self {
        EventBase {
            guest,
            ts_ns,
            vcpu: Some(vcpu_index(thread)),
            layer: Layer::Guest,
            func,
            entry_ns,
        }
    }

    /// A kprobe/kretprobe hit: an event per probe in `every_hit` (when
    /// every hit is recorded), then what the handlers traced.
    fn emit_hit(
        &self,
        sink: &mut dyn EventSink,
        own: &[(&str, FieldValue<'_>)],
        every_hit: Option<&Vec<(BlockId, Arc<str>)>>,
        traced: &[(Box<str>, Traced)],
    ) {
        if let Some(handlers) = every_hit {
            let all: Vec<(Box<str>, Traced)> = handlers
                .iter()
                .map(|(_, p)| (Box::from(&**p), Traced::Probe))
                .collect();
            self.emit(sink, own, &all);
        }
        self.emit(sink, own, traced);
    }

    /// Hands `traced` (what the handlers' `trace()`/`snapshot()` calls
    /// asked for) to the sink; `own` is the probe's own fields, for a bare
    /// `trace()`.
    fn emit(
        &self,
        sink: &mut dyn EventSink,
        own: &[(&str, FieldValue<'_>)],
        traced: &[(Box<str>, Traced)],
    ) {
        for (probe, t) in traced {
            let event = |site, fields| RecordedEvent {
                guest: self.guest,
                ts_ns: self.ts_ns,
                vcpu: self.vcpu,
                layer: self.layer,
                probe,
                func: self.func,
                entry_ns: self.entry_ns,
                site,
                fields,
            };
            match t {
                Traced::Probe => sink.event(&event(None, own)),
                Traced::Fields { site, fields } => {
                    let fields: Vec<(&str, FieldValue<'_>)> = fields
                        .iter()
                        .map(|(n, v)| {
                            let v = match v {
                                TracedValue::U64(v) => FieldValue::U64(*v),
                                TracedValue::I64(v) => FieldValue::I64(*v),
                                TracedValue::Str(s) => FieldValue::Str(s),
                                TracedValue::Bytes(b) => FieldValue::Bytes(b),
                            };
                            (&**n, v)
                        })
                        .collect();
                    sink.event(&event(Some(*site), &fields));
                }
                Traced::Snapshot => sink.snapshot(),
            }
        }
    }
}

const ARG_NAMES: [&str; 6] = ["arg0", "arg1", "arg2", "arg3", "arg4", "arg5"];
const ARG_REGS: [&str; 6] = ["rdi", "rsi", "rdx", "rcx", "r8", "r9"];

/// How a stopped vCPU gets going again after its stop was served.
enum Resume {
    /// Continue all vCPUs as they are.
    Continue,
    /// Move `thread`'s pc to `pc`, then continue.
    SetPc(ThreadId, u64),
    /// Single-step `thread` off the breakpoint at its pc, then continue.
    StepOff(ThreadId),
}

pub struct Session {
    client: Client,
    name: Arc<str>,
    sites: Vec<ProbeSite>,
    by_addr: HashMap<u64, usize>,
    /// Return addresses with a breakpoint, and how many pending calls use it.
    return_bps: HashMap<u64, usize>,
    /// Calls awaiting their return, keyed by (return address, stack pointer
    /// right after the return). Kernel stacks are per task, so the pair tells
    /// nested and concurrent calls apart, also when a task returns on
    /// another vCPU than it entered on.
    pending: HashMap<(u64, u64), PendingReturn>,
    timers: Vec<(TimerProbe, u64)>,
    watches: Vec<WatchProbe>,
    vcpus: Vec<ThreadId>,
    kernel: Option<Arc<GuestKernel>>,
    /// VMM and host event sources, and the blocks of their probes by name.
    layers: LayerSet,
    recorder: Option<Box<dyn EventSink>>,
    /// Record every probe hit (a program without `trace()`), not only what
    /// `trace()` asks for.
    record_every_hit: bool,
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
            name: "vm0".into(),
            sites: Vec::new(),
            by_addr: HashMap::new(),
            return_bps: HashMap::new(),
            pending: HashMap::new(),
            timers: Vec::new(),
            watches: Vec::new(),
            vcpus: Vec::new(),
            kernel: None,
            layers: LayerSet::default(),
            recorder: None,
            record_every_hit: true,
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

    /// What handlers may know of the guest kernel (symbols for `kaddr`,
    /// `ksym`; BTF and ORC for `comm`, `pid`, `kstack`).
    pub fn set_kernel(&mut self, kernel: Arc<GuestKernel>) {
        self.kernel = Some(kernel);
    }

    /// Adds a source of VMM or host events; `handlers` maps probe names
    /// (`vmm:serial_write`, `tracepoint:sched:sched_switch`) to blocks.
    pub fn add_layer(
        &mut self,
        source: Box<dyn LayerSource>,
        handlers: &HashMap<String, Vec<(BlockId, Arc<str>)>>,
    ) {
        self.layers.add(source, handlers);
    }

    /// Switches the layer sources off; one summary line each.
    pub fn finish_layers(&mut self) -> Vec<String> {
        self.layers.finish()
    }

    /// Runs the handlers of the VMM and host events that arrived; with
    /// `sync`, first waits for every event emitted before now (at a stop).
    fn serve_layers(&mut self, runtime: &Mutex<Runtime>, sync: Option<Duration>) -> Flow {
        if self.layers.is_empty() {
            return Flow::Continue;
        }
        let (name, recorder) = (&self.name, &mut self.recorder);
        let mut record = |ev: &crate::layers::LayerEvent, traced: &[(Box<str>, Traced)]| {
            if let Some(sink) = recorder.as_mut() {
                record_layer_event(sink.as_mut(), name, ev, traced);
            }
        };
        let (flow, served) =
            self.layers
                .serve(runtime, sync, self.kernel.as_deref(), name, &mut record);
        self.stats.layer_events += served;
        flow
    }

    pub fn kernel(&self) -> Option<&Arc<GuestKernel>> {
        self.kernel.as_ref()
    }

    /// Names the guest (`guest` in scripts, stream names in traces).
    pub fn set_name(&mut self, name: &str) {
        self.name = name.into();
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Records every kprobe hit (with `arg0`..`arg5`) and kretprobe return
    /// (with `retval`) into `sink`, besides running the handlers, and
    /// whatever the handlers' `trace()` calls trace.
    pub fn set_recorder(&mut self, sink: Box<dyn EventSink>) {
        self.recorder = Some(sink);
    }

    /// Off: only what `trace()` calls trace is recorded (the program
    /// decides); on (the default): every kprobe/kretprobe hit as well.
    pub fn set_record_every_hit(&mut self, on: bool) {
        self.record_every_hit = on;
    }

    /// Takes the recorder back (to finish writing it). When every hit is
    /// recorded, it is first told of the calls still awaiting their return,
    /// oldest first; a program that calls `trace()` records only what it
    /// traces.
    pub fn take_recorder(&mut self) -> Option<Box<dyn EventSink>> {
        let mut sink = self.recorder.take()?;
        if !self.record_every_hit {
            return Some(sink);
        }
        let mut calls: Vec<&PendingReturn> = self.pending.values().collect();
        calls.sort_by_key(|p| p.entry_ns);
        for p in calls {
            sink.unfinished_call(&UnfinishedCall {
                guest: &self.name,
                vcpu: p.vcpu,
                func: &self.sites[p.site].func,
                entry_ns: p.entry_ns,
            });
        }
        Some(sink)
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
    /// with the image's text. The guest must be stopped. Ends early, with
    /// the error, when the stub does not answer a read (or the client's
    /// abort check says so, see [`Client::set_abort`]), and after
    /// [`SLIDE_DEADLINE`] in all.
    pub fn detect_slide(&mut self, symbols: &KernelSymbols) -> Result<u64> {
        let samples = symbols.text_samples();
        if samples.is_empty() {
            // Symbols from a System.map or /proc/kallsyms: taken as they are.
            return Ok(0);
        }
        let deadline = Instant::now() + SLIDE_DEADLINE;
        let client = &mut self.client;
        let mut reads = 0u32;
        kernel_image::try_detect_slide(samples, |addr, len| {
            if Instant::now() >= deadline {
                return Err(Error::SlideTimeout {
                    seconds: SLIDE_DEADLINE.as_secs(),
                    reads,
                });
            }
            reads += 1;
            let mut buf = vec![0u8; len];
            match client.read_memory(addr, &mut buf) {
                Ok(()) => Ok(Some(buf)),
                // An error reply: nothing mapped there, not this slide.
                Err(gdb_remote::Error::ErrorReply { .. }) => Ok(None),
                Err(e) => Err(Error::Stub(e)),
            }
        })?
        .ok_or(Error::SlideNotFound)
    }

    /// Inserts a breakpoint at every site, after recording the guest memory
    /// there. The guest must be stopped.
    pub fn arm(&mut self, mut sites: Vec<ProbeSite>) -> Result<()> {
        for site in &sites {
            self.check_instruction_boundary(site)?;
        }
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
                .iter()
                .chain(&site.ret_handlers)
                .next()
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

    /// A breakpoint inside an instruction never fires under TCG and, where
    /// the stub writes `int3` (KVM), corrupts the guest's code: decode the
    /// function from its start, as it is in guest memory, up to the site.
    fn check_instruction_boundary(&mut self, site: &ProbeSite) -> Result<()> {
        if site.offset == 0 {
            return Ok(());
        }
        let probe = || {
            site.handlers
                .iter()
                .chain(&site.ret_handlers)
                .next()
                .map(|(_, p)| p.to_string())
                .unwrap_or_default()
        };
        let start = site.addr - site.offset;
        // The longest x86 instruction is 15 bytes; functions this long are
        // none in Linux, and the read stays bounded.
        let len = usize::try_from(site.offset)
            .ok()
            .filter(|&n| n <= MAX_CHECKED_OFFSET)
            .ok_or_else(|| Error::OffsetOutside {
                probe: probe(),
                offset: site.offset,
            })?;
        let mut code = vec![0u8; len + 15];
        self.client.read_memory(start, &mut code)?;
        let mut decoder =
            iced_x86::Decoder::with_ip(64, &code, start, iced_x86::DecoderOptions::NONE);
        let mut insn = iced_x86::Instruction::default();
        while decoder.can_decode() && decoder.ip() < site.addr {
            decoder.decode_out(&mut insn);
        }
        if decoder.ip() != site.addr {
            return Err(Error::NotOnInstruction {
                probe: probe(),
                offset: site.offset,
                insn: insn.ip() - start,
                len: insn.len(),
            });
        }
        Ok(())
    }

    /// Inserts the data watchpoints. The guest must be stopped.
    pub fn arm_watches(&mut self, watches: Vec<WatchProbe>) -> Result<()> {
        for w in watches {
            self.client
                .insert_breakpoint(w.kind, w.addr, w.len)
                .map_err(|source| Error::Arm {
                    probe: w.probe.to_string(),
                    addr: w.addr,
                    source,
                })?;
            self.watches.push(w);
        }
        Ok(())
    }

    /// Registers timer probes; they start counting now. The guest must be
    /// stopped (the vCPU list is read for `profile`).
    pub fn set_timers(&mut self, timers: Vec<TimerProbe>) -> Result<()> {
        if timers.iter().any(|t| t.every_vcpu) {
            self.vcpus = self.client.threads()?;
        }
        let now = monotonic_ns();
        self.timers = timers
            .into_iter()
            .map(|t| {
                let first = now + t.period_ns.max(1);
                (t, first)
            })
            .collect();
        Ok(())
    }

    /// Serves hits until `poll` reports the end of the run, a handler calls
    /// `exit()`, or the target goes away. Returns with the guest stopped (or gone).
    pub fn run(
        &mut self,
        runtime: &Mutex<Runtime>,
        poll: &mut dyn FnMut() -> Option<EndReason>,
    ) -> EndReason {
        loop {
            if let Some(reason) = poll() {
                let _ = self.serve_layers(runtime, Some(crate::layers::FINAL_SYNC));
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
            let now = monotonic_ns();
            let next_timer = self.timers.iter().map(|(_, due)| *due).min();
            if next_timer.is_some_and(|due| due <= now) {
                match self.fire_timers(runtime) {
                    Ok(Flow::Continue) => continue,
                    Ok(Flow::Exit) => return EndReason::ScriptExit,
                    Err(e) => return EndReason::TargetGone(e),
                }
            }
            if let Flow::Exit = self.serve_layers(runtime, None) {
                return EndReason::ScriptExit;
            }
            let wait = next_timer.map_or(POLL_INTERVAL, |due| {
                Duration::from_nanos(due - now).min(POLL_INTERVAL)
            });
            match self.client.wait_stop(Some(wait)) {
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

    /// Stops the guest and runs every timer probe that is due. A breakpoint
    /// hit that races with the interrupt is served first (and resumed); the
    /// timers then stay due and fire on the next pass.
    fn fire_timers(&mut self, runtime: &Mutex<Runtime>) -> Result<Flow, String> {
        let stop = self.stop().map_err(|e| e.to_string())?;
        let stopped_thread = match stop {
            Some(
                stop @ StopReply::Signal {
                    signal: 5,
                    thread: Some(_),
                    ..
                },
            ) => return self.serve(stop, runtime, true),
            Some(StopReply::Exited { status }) => {
                return Err(format!("the VM exited (status {status})"));
            }
            Some(StopReply::Terminated { signal }) => {
                return Err(format!("the VM was terminated (signal {signal})"));
            }
            Some(stop) => stop.thread(),
            None => None,
        };
        let received = monotonic_ns();
        let mut flow = Flow::Continue;
        for i in 0..self.timers.len() {
            let (timer, due) = &mut self.timers[i];
            if *due > received {
                continue;
            }
            // Periods missed while the guest was slow are skipped, not
            // replayed in a burst (as bpftrace's timers, which do not queue).
            let period = timer.period_ns.max(1);
            let late = (received - *due) / period;
            *due += (late + 1) * period;
            let timer = timer.clone();
            let threads: Vec<Option<ThreadId>> = if timer.every_vcpu {
                self.vcpus.iter().copied().map(Some).collect()
            } else {
                vec![stopped_thread]
            };
            for thread in threads {
                self.stats.timer_fires += 1;
                let mut ctx = HitContext::at_stop(
                    &mut self.client,
                    self.kernel.as_deref(),
                    &self.name,
                    thread,
                    None,
                    received,
                    "",
                );
                let block = [(timer.block, timer.probe.clone())];
                if let Flow::Exit = ctx.run_all(runtime, &block) {
                    flow = Flow::Exit;
                }
                let vcpu = ctx.vcpu;
                if let Some(sink) = self.recorder.as_mut() {
                    let base = EventBase {
                        guest: &self.name,
                        ts_ns: received,
                        vcpu: Some(vcpu),
                        layer: Layer::Guest,
                        func: "",
                        entry_ns: None,
                    };
                    base.emit(sink.as_mut(), &[], &ctx.traced);
                }
            }
        }
        if matches!(flow, Flow::Continue) {
            self.resume_with(Resume::Continue, received)?;
        }
        Ok(flow)
    }

    /// Handles one stop: runs the handlers of the probe hit and, if
    /// `resume`, gets the vCPU past the breakpoint and lets the guest go.
    fn serve(
        &mut self,
        stop: StopReply,
        runtime: &Mutex<Runtime>,
        resume: bool,
    ) -> Result<Flow, String> {
        let received = monotonic_ns();
        // Events of the other layers that happened before this stop run
        // first: one script sees the layers in the order things happened.
        if let Flow::Exit = self.serve_layers(runtime, Some(crate::layers::STOP_SYNC)) {
            return Ok(Flow::Exit);
        }
        let (thread, reason) = match stop {
            StopReply::Signal {
                signal: 5,
                thread: Some(thread),
                reason,
            } => (thread, reason),
            StopReply::Signal { .. } => {
                self.stats.stray_stops += 1;
                return self
                    .resume_if(resume, Resume::Continue, received)
                    .map(|_| Flow::Continue);
            }
            StopReply::Exited { status } => return Err(format!("the VM exited (status {status})")),
            StopReply::Terminated { signal } => {
                return Err(format!("the VM was terminated (signal {signal})"));
            }
        };
        if let Some(StopReason::Watch { addr, .. }) = reason {
            return self.serve_watch(thread, addr, runtime, resume, received);
        }
        // With a single entry site and nothing else armed, every SIGTRAP
        // while continuing is that site's breakpoint (QEMU reports only its
        // own breakpoints to us; guest int3s stay in the guest), so the pc
        // need not be read.
        let only_site = self.sites.len() == 1
            && self.return_bps.is_empty()
            && self.sites[0].ret_handlers.is_empty();
        let mut regs = None;
        let pc = if only_site {
            self.sites[0].addr
        } else {
            let r = self
                .client
                .read_registers(thread)
                .map_err(|e| e.to_string())?;
            let pc = r.get("rip").ok_or("the stub reports no rip register")?;
            regs = Some(r);
            pc
        };
        if let Some(&index) = self.by_addr.get(&pc) {
            return self.serve_entry(index, thread, regs, runtime, resume, received);
        }
        if self.return_bps.contains_key(&pc) {
            return self.serve_return(pc, thread, regs, runtime, resume, received);
        }
        self.stats.stray_stops += 1;
        self.resume_if(resume, Resume::Continue, received)
            .map(|_| Flow::Continue)
    }

    fn serve_entry(
        &mut self,
        index: usize,
        thread: ThreadId,
        regs: Option<Registers>,
        runtime: &Mutex<Runtime>,
        resume: bool,
        received: u64,
    ) -> Result<Flow, String> {
        self.stats.hits += 1;
        let site = &self.sites[index];
        let mut ctx = HitContext::at_stop(
            &mut self.client,
            self.kernel.as_deref(),
            &self.name,
            Some(thread),
            regs,
            received,
            &site.func,
        );
        let flow = ctx.run_all(runtime, &site.handlers);
        let mut regs = ctx.regs.take();
        let traced = std::mem::take(&mut ctx.traced);
        if let Some(sink) = self.recorder.as_mut() {
            let every = self.record_every_hit;
            let mut fields = [("", FieldValue::U64(0)); 6];
            if every || traced.iter().any(|(_, t)| *t == Traced::Probe) {
                if regs.is_none() {
                    regs = Some(
                        self.client
                            .read_registers(thread)
                            .map_err(|e| e.to_string())?,
                    );
                }
                let r = regs.as_ref().expect("fetched above");
                for (i, f) in fields.iter_mut().enumerate() {
                    *f = (
                        ARG_NAMES[i],
                        FieldValue::U64(r.get(ARG_REGS[i]).unwrap_or(0)),
                    );
                }
            }
            EventBase::guest_stop(&self.name, received, thread, &site.func, None).emit_hit(
                sink.as_mut(),
                &fields,
                every.then_some(&site.handlers),
                &traced,
            );
        }
        if matches!(flow, Flow::Exit) {
            return Ok(Flow::Exit);
        }
        if !site.ret_handlers.is_empty() {
            self.await_return(index, thread, regs, received)?;
        }
        let site = &self.sites[index];
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
        let how = match skip {
            Some(len) => Resume::SetPc(thread, addr + u64::from(len)),
            None => Resume::StepOff(thread),
        };
        self.resume_if(resume, how, received)?;
        Ok(flow)
    }

    /// At a function entry (the return address is on top of the stack),
    /// arms a breakpoint at the return address and remembers the call.
    fn await_return(
        &mut self,
        site: usize,
        thread: ThreadId,
        regs: Option<Registers>,
        entry_ns: u64,
    ) -> Result<(), String> {
        let rsp = register(&mut self.client, regs.as_ref(), thread, "rsp")?;
        let mut word = [0u8; 8];
        if self.client.read_memory(rsp, &mut word).is_err() {
            self.stats.missed_returns += 1;
            return Ok(());
        }
        let ret = u64::from_le_bytes(word);
        let key = (ret, rsp.wrapping_add(8));
        let call = PendingReturn {
            site,
            entry_ns,
            vcpu: vcpu_index(thread),
        };
        if let Some(pending) = self.pending.get_mut(&key) {
            // The same frame again: the earlier call never came back (the
            // task died, or vmprobe missed its return). Replace it.
            *pending = call;
            return Ok(());
        }
        if self.pending.len() >= MAX_PENDING_RETURNS {
            self.stats.missed_returns += 1;
            return Ok(());
        }
        if !self.return_bps.contains_key(&ret) {
            if self
                .client
                .insert_breakpoint(BreakpointKind::Software, ret, 1)
                .is_err()
            {
                // Not code the stub can break on (a wild return address).
                self.stats.missed_returns += 1;
                return Ok(());
            }
            self.return_bps.insert(ret, 0);
        }
        *self.return_bps.get_mut(&ret).expect("inserted above") += 1;
        self.pending.insert(key, call);
        Ok(())
    }

    fn serve_return(
        &mut self,
        pc: u64,
        thread: ThreadId,
        regs: Option<Registers>,
        runtime: &Mutex<Runtime>,
        resume: bool,
        received: u64,
    ) -> Result<Flow, String> {
        let rsp = register(&mut self.client, regs.as_ref(), thread, "rsp")?;
        let Some(PendingReturn { site, entry_ns, .. }) = self.pending.remove(&(pc, rsp)) else {
            // Another call returning to the same place (one that started
            // before attaching, or an untracked one): not ours.
            self.stats.stray_stops += 1;
            return self
                .resume_if(resume, Resume::StepOff(thread), received)
                .map(|_| Flow::Continue);
        };
        self.stats.returns += 1;
        let users = self.return_bps.get_mut(&pc).expect("checked by caller");
        *users -= 1;
        let last = *users == 0;
        let site = &self.sites[site];
        let mut ctx = HitContext::at_stop(
            &mut self.client,
            self.kernel.as_deref(),
            &self.name,
            Some(thread),
            regs,
            received,
            &site.func,
        );
        let flow = ctx.run_all(runtime, &site.ret_handlers);
        let regs = ctx.regs.take();
        let traced = std::mem::take(&mut ctx.traced);
        if let Some(sink) = self.recorder.as_mut() {
            let every = self.record_every_hit;
            let retval = if every || traced.iter().any(|(_, t)| *t == Traced::Probe) {
                register(&mut self.client, regs.as_ref(), thread, "rax")?
            } else {
                0
            };
            let own = [("retval", FieldValue::U64(retval))];
            EventBase::guest_stop(&self.name, received, thread, &site.func, Some(entry_ns))
                .emit_hit(
                    sink.as_mut(),
                    &own,
                    every.then_some(&site.ret_handlers),
                    &traced,
                );
        }
        let how = if last {
            // No call awaits this address any more: drop its breakpoint, and
            // the vCPU can simply continue.
            self.return_bps.remove(&pc);
            self.client
                .remove_breakpoint(BreakpointKind::Software, pc, 1)
                .map_err(|e| e.to_string())?;
            Resume::Continue
        } else {
            Resume::StepOff(thread)
        };
        if matches!(flow, Flow::Continue) {
            self.resume_if(resume, how, received)?;
        }
        Ok(flow)
    }

    fn serve_watch(
        &mut self,
        thread: ThreadId,
        addr: u64,
        runtime: &Mutex<Runtime>,
        resume: bool,
        received: u64,
    ) -> Result<Flow, String> {
        // QEMU reports a data watchpoint after the access completed, with the
        // pc on the next instruction: there is nothing to step over.
        let hit: Vec<WatchProbe> = self
            .watches
            .iter()
            .filter(|w| addr >= w.addr && addr < w.addr + w.len.max(1))
            .cloned()
            .collect();
        if hit.is_empty() {
            self.stats.stray_stops += 1;
        }
        let mut flow = Flow::Continue;
        let mut ctx = HitContext::at_stop(
            &mut self.client,
            self.kernel.as_deref(),
            &self.name,
            Some(thread),
            None,
            received,
            "",
        );
        for w in &hit {
            self.stats.watch_hits += 1;
            ctx.probe = &w.probe;
            if let Flow::Exit = lock(runtime).run(w.block, &mut ctx) {
                flow = Flow::Exit;
            }
        }
        let traced = std::mem::take(&mut ctx.traced);
        if let Some(sink) = self.recorder.as_mut() {
            EventBase::guest_stop(&self.name, received, thread, "", None).emit(
                sink.as_mut(),
                &[("addr", FieldValue::U64(addr))],
                &traced,
            );
        }
        if matches!(flow, Flow::Continue) {
            self.resume_if(resume, Resume::Continue, received)?;
        }
        Ok(flow)
    }

    fn resume_if(&mut self, resume: bool, how: Resume, received: u64) -> Result<(), String> {
        if resume {
            self.resume_with(how, received)?;
        }
        Ok(())
    }

    fn resume_with(&mut self, how: Resume, received: u64) -> Result<(), String> {
        const ALL: &[(Option<ThreadId>, ResumeAction)] = &[(None, ResumeAction::Continue)];
        match how {
            Resume::Continue => self.client.resume(ALL),
            Resume::SetPc(thread, pc) => self
                .client
                .write_register_and_resume(thread, "rip", pc, ALL),
            Resume::StepOff(thread) => {
                self.step_off_site(thread)?;
                self.client.resume(ALL)
            }
        }
        .map_err(|e| e.to_string())?;
        self.running = true;
        let _ = self
            .stats
            .service_ns
            .record(monotonic_ns().saturating_sub(received));
        Ok(())
    }

    /// Single-steps `thread` until its pc has left every breakpoint. A
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
            if !self.by_addr.contains_key(&pc) && !self.return_bps.contains_key(&pc) {
                return Ok(());
            }
        }
        Err(format!(
            "vCPU {thread} did not move off a probe site after {MAX_STEPS} single steps"
        ))
    }

    /// Removes every breakpoint and watchpoint, checks guest memory at the
    /// probe sites is as it was before arming, and detaches, leaving the
    /// guest running.
    pub fn detach(mut self) -> Result<()> {
        self.stop()?;
        let mut first_error = None;
        let returns: Vec<u64> = self.return_bps.drain().map(|(addr, _)| addr).collect();
        for addr in std::mem::take(&mut self.armed).into_iter().chain(returns) {
            if let Err(e) = self
                .client
                .remove_breakpoint(BreakpointKind::Software, addr, 1)
            {
                first_error.get_or_insert(Error::from(e));
            }
        }
        for w in std::mem::take(&mut self.watches) {
            if let Err(e) = self.client.remove_breakpoint(w.kind, w.addr, w.len) {
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

/// Hands what the handlers of a VMM or host event traced to `sink`. Such
/// events are recorded only when a script traces them (they can be many:
/// every exit, every I/O).
pub fn record_layer_event(
    sink: &mut dyn EventSink,
    guest: &str,
    ev: &crate::layers::LayerEvent,
    traced: &[(Box<str>, Traced)],
) {
    let own: Vec<(&str, FieldValue<'_>)> = ev
        .fields
        .iter()
        .map(|(n, v)| {
            let v = match v {
                LayerValue::Int(i) => FieldValue::U64(*i),
                LayerValue::Str(s) => FieldValue::Str(s),
            };
            (n.as_str(), v)
        })
        .collect();
    let base = EventBase {
        guest,
        ts_ns: ev.ts_ns,
        vcpu: ev.vcpu,
        layer: if ev.probe.starts_with("vmm:") {
            Layer::Vmm
        } else {
            Layer::Host
        },
        func: &ev.probe,
        entry_ns: None,
    };
    base.emit(sink, &own, traced);
}

/// A register of a stopped thread: from the registers already read at this
/// stop, else with one `p`.
fn register(
    client: &mut Client,
    regs: Option<&Registers>,
    thread: ThreadId,
    name: &str,
) -> Result<u64, String> {
    match regs.and_then(|r| r.get(name)) {
        Some(v) => Ok(v),
        None => client
            .read_register(thread, name)
            .map_err(|e| e.to_string()),
    }
}

/// QEMU numbers vCPU threads from 1; scripts see vCPUs from 0, as CPUs.
fn vcpu_index(thread: ThreadId) -> u32 {
    thread.tid.saturating_sub(1) as u32
}

/// The runtime is shared by the sessions of all guests of a run; a handler
/// holds it only while it runs. A poisoned lock (a panicking handler, which
/// must not happen) still gives the maps for the final report.
fn lock(runtime: &Mutex<Runtime>) -> MutexGuard<'_, Runtime> {
    runtime.lock().unwrap_or_else(|e| e.into_inner())
}
