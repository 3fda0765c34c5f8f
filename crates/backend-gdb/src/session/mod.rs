//! A probing session on one guest: arm, serve hits (`hits.rs`), disarm,
//! detach.

mod events;
mod hits;
mod modules;

use crate::context::HitContext;
use crate::{Error, Result, vcpu_index};
use gdb_remote::{
    AbortCheck, BreakpointKind, Client, Registers, ResumeAction, Stall, StallPolicy, StopReason,
    StopReply, ThreadId,
};
use kernel_image::KernelSymbols;
use linux_guest::GuestKernel;
use probe_engine::layers::{LayerSet, LayerSource};
use probe_engine::record::{EventBase, EventSink, GuestThread, UnfinishedCall};
use probe_engine::{EndReason, HitStats, LiveStats, monotonic_ns};
use probe_lang::{BlockId, WatchMode};
use probe_plan::{
    Entered, PendingCall, ProbeSite, ReturnTracker, Returned, Skip, TimerProbe, TimerSchedule,
    WatchProbe,
};
use probe_runtime::{Flow, Runtime, Traced};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use trace_formats::{Layer, Value as FieldValue};

/// How long the loop waits for a stop before polling for the end of the run.
const POLL_INTERVAL: Duration = Duration::from_millis(20);
/// How long a stopped guest may take to answer an interrupt.
const STOP_TIMEOUT: Duration = Duration::from_secs(2);
/// Bound on finding the KASLR slide: QEMU answers its at most about 520
/// reads (one per 2 MiB candidate, a few more where one matches) within a
/// second; a stub slower than this is not one to probe through.
pub const SLIDE_DEADLINE: Duration = Duration::from_secs(30);
/// With a stall timeout: how late a reply is when vmprobe says the stub
/// seems stopped (or half the stall timeout, if that is shorter), unless
/// the client's reply timeout is shorter still.
const STALL_NOTICE: Duration = Duration::from_secs(10);
/// What [`Session::stall`] holds: no stall, one reported, one given up on.
const STALL_NONE: u8 = 0;
const STALL_SILENT: u8 = 1;
const STALL_GAVE_UP: u8 = 2;
/// Bytes compared at each probe site across attach and detach.
const SITE_BYTES: usize = 16;
/// `endbr64`, the first instruction of functions in kernels built with IBT
/// support. Without CET enabled it is a no-op, and the kernel never patches
/// it at run time, so moving the pc past it is exactly executing it.
const ENDBR64: [u8; 4] = [0xf3, 0x0f, 0x1e, 0xfa];
/// The 5-byte NOP of an idle ftrace site. The guest may patch it into a call
/// at any time (ftrace, kprobes, BPF), so it is re-read at each hit.
const NOP5: [u8; 5] = [0x0f, 0x1f, 0x44, 0x00, 0x00];

/// Run-time addresses armed at most for uprobes in position-independent
/// files (PIE executables, shared libraries), over all processes: beyond
/// it a process's address is dropped, counted as an error of the probe.
pub const MAX_USER_ADDRS: usize = 4096;

const ARG_NAMES: [&str; 6] = ["arg0", "arg1", "arg2", "arg3", "arg4", "arg5"];
const ARG_REGS: [&str; 6] = ["rdi", "rsi", "rdx", "rcx", "r8", "r9"];

/// How a stopped vCPU gets going again after its stop was served.
enum Resume {
    /// Continue all vCPUs as they are.
    Continue,
    /// Move `thread`'s pc to `pc`, then continue.
    SetPc(ThreadId, u64),
    /// Single-step `thread` off the breakpoint at its pc (the address),
    /// then continue.
    StepOff(ThreadId, u64),
}

pub struct Session {
    client: Client,
    name: Arc<str>,
    sites: Vec<ProbeSite>,
    by_addr: HashMap<u64, usize>,
    /// Calls awaiting their return, and the return addresses that have a
    /// breakpoint for them.
    returns: ReturnTracker,
    timers: TimerSchedule,
    watches: Vec<WatchProbe>,
    vcpus: Vec<ThreadId>,
    kernel: Option<Arc<GuestKernel>>,
    /// Symbols of the user files the program's uprobes name (`ustack`).
    user_symbols: Option<Arc<probe_plan::UserSymbols>>,
    /// Guest memory lines read while emulating tracepoints (kernel text
    /// kept across hits), and the record of the hit being served.
    event_lines: Option<kernel_tracepoints::LineCache>,
    event_record: Option<(
        Arc<kernel_tracepoints::EventRecipe>,
        kernel_tracepoints::Record,
    )>,
    /// The tracepoint calls among the sites, whose bytes the guest may
    /// switch between its no-op and its jump while attached.
    own_branches: Vec<kernel_tracepoints::EventSite>,
    /// VMM and host event sources, and the blocks of their probes by name.
    layers: LayerSet,
    recorder: Option<Box<dyn EventSink>>,
    /// Record every probe hit (a program without `trace()`), not only what
    /// `trace()` asks for.
    record_every_hit: bool,
    /// The recorder wants each guest event's task (Perfetto's thread
    /// tracks): read at each recorded hit.
    record_threads: bool,
    before: Vec<(u64, Vec<u8>)>,
    armed: Vec<u64>,
    /// The guest's `uprobe_mmap()`, where a process maps a file, while a
    /// site is in a position-independent file ([`Session::arm_user_mappings`]).
    mmap_hook: Option<u64>,
    /// The guest's `do_init_module()`, where a module is loaded, while a
    /// site is a module's function ([`Session::arm_modules`]).
    module_hook: Option<u64>,
    /// The guest's `free_module()`, where a module goes away, with the
    /// addresses armed in each module (by its `struct module`).
    module_unload_hook: Option<u64>,
    module_addrs: Vec<(u64, u64)>,
    /// Run-time addresses armed for position-independent files' sites
    /// (each a copy of its site at that address, in `sites`).
    user_addrs: usize,
    /// Errors found while the guest was stopped with no handler running
    /// (arming), handed to the runtime at the next stop.
    pending_errors: Vec<(String, String, u64)>,
    running: bool,
    /// Detached from the stub: nothing is armed any more.
    detached: bool,
    skip_nops: bool,
    /// How long the stub may be late with a reply before the run ends
    /// (`None`: the client's reply timeout; see [`Session::set_stall_timeout`]).
    stall_timeout: Option<Duration>,
    /// The stall under way, as the client's stall policy last reported it.
    stall: Arc<AtomicU8>,
    pub stats: HitStats,
    /// Hits and service times as they happen, for `--metrics`.
    pub live: Arc<LiveStats>,
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
            returns: ReturnTracker::new(),
            timers: TimerSchedule::default(),
            watches: Vec::new(),
            vcpus: Vec::new(),
            kernel: None,
            user_symbols: None,
            event_lines: None,
            event_record: None,
            own_branches: Vec::new(),
            layers: LayerSet::default(),
            recorder: None,
            record_every_hit: true,
            record_threads: false,
            before: Vec::new(),
            armed: Vec::new(),
            mmap_hook: None,
            module_hook: None,
            module_unload_hook: None,
            module_addrs: Vec::new(),
            user_addrs: 0,
            pending_errors: Vec::new(),
            running: false,
            detached: false,
            skip_nops: true,
            stall_timeout: None,
            stall: Arc::default(),
            stats: HitStats::new(),
            live: Arc::default(),
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

    /// For a VM whose QEMU vmprobe cannot watch (attach): a stub that is
    /// late with a reply (a stopped QEMU) is waited for up to `limit`, not
    /// just the reply timeout, and said to be silent on stderr meanwhile
    /// (from the reply timeout, or half of `limit` if that is shorter);
    /// then the run ends with what was collected (the target gone).
    /// `abort` (a signal, `--duration`) ends such a wait early. Set once the
    /// probes are armed, after [`Session::set_name`]; handlers, which others
    /// wait on, keep the reply timeout.
    pub fn set_stall_timeout(&mut self, limit: Option<Duration>, abort: Option<AbortCheck>) {
        self.stall_timeout = limit;
        let Some(limit) = limit else {
            self.client.set_stall_policy(None);
            return;
        };
        let notice = STALL_NOTICE.min(limit / 2).min(self.client.timeout());
        let name = self.name.clone();
        let stall = self.stall.clone();
        let report = move |s: Stall| match s {
            Stall::Silent { waited, limit } => {
                eprintln!(
                    "vmprobe: {name}: no reply from the gdb stub for {}; is QEMU stopped? \
                     waiting up to {} (--stall-timeout)",
                    seconds(waited),
                    seconds(limit)
                );
                stall.store(STALL_SILENT, Ordering::Relaxed);
            }
            Stall::Answered { after } => {
                eprintln!(
                    "vmprobe: {name}: the gdb stub answers again after {:.1} s",
                    after.as_secs_f64()
                );
                stall.store(STALL_NONE, Ordering::Relaxed);
            }
            Stall::GaveUp { .. } => stall.store(STALL_GAVE_UP, Ordering::Relaxed),
        };
        self.client.set_stall_policy(Some(StallPolicy {
            limit,
            notice,
            report: Box::new(report),
            abort,
        }));
    }

    /// Why the run ends, after `error` from the stub: a stall said as such.
    fn gone(&self, error: String) -> EndReason {
        let limit = self.stall_timeout.unwrap_or_default();
        EndReason::TargetGone(match self.stall.load(Ordering::Relaxed) {
            STALL_GAVE_UP => format!(
                "no reply from the gdb stub for {} (--stall-timeout)",
                seconds(limit)
            ),
            // The wait was ended early (a signal, --duration), which is all
            // `error` says then.
            STALL_SILENT if error == gdb_remote::Error::Aborted.to_string() => {
                "the gdb stub had stopped answering when the run ended".into()
            }
            _ => error,
        })
    }

    /// What handlers may know of the guest kernel (symbols for `kaddr`,
    /// `ksym`; BTF and ORC for `comm`, `pid`, `kstack`).
    pub fn set_kernel(&mut self, kernel: Arc<GuestKernel>) {
        self.kernel = Some(kernel);
    }

    /// Adds a source of VMM or host events; `handlers` maps probe names
    /// (`vmm:serial_write`, `tracepoint:sched:sched_switch`) to blocks.
    /// Symbols for `ustack` frames in user files (those uprobes name).
    pub fn set_user_symbols(&mut self, symbols: Arc<probe_plan::UserSymbols>) {
        self.user_symbols = Some(symbols);
    }

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
        let recorder = self.recorder.as_deref_mut();
        let kernel = self.kernel.as_deref();
        let (flow, served) = self
            .layers
            .serve(runtime, sync, kernel, &self.name, recorder);
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
        self.record_threads = sink.wants_threads();
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
        for p in self.returns.pending() {
            sink.unfinished_call(&UnfinishedCall {
                guest: &self.name,
                vcpu: p.vcpu,
                func: &self.sites[p.site].func,
                entry_ns: p.entry_ns,
                thread: p.thread,
            });
        }
        Some(sink)
    }

    /// Packets exchanged with the stub so far.
    pub fn round_trips(&self) -> u64 {
        self.client.round_trips()
    }

    /// Calls whose return could not be tracked (bpftrace's missed
    /// kretprobes): too many in flight, or an unreadable return address.
    pub fn missed_returns(&self) -> u64 {
        self.returns.missed
    }

    /// The target went away: there is nothing left to disarm.
    pub fn forget_target(&mut self) {
        self.detached = true;
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
        let stop = self.client.wait_stop_owed(STOP_TIMEOUT, || {
            "the guest to stop after an interrupt".into()
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
        // A module function's site has no address until its module is
        // loaded ([`Session::arm_modules`]).
        for site in sites.iter().filter(|s| !s.in_module()) {
            self.check_instruction_boundary(site)?;
        }
        for site in sites.iter_mut().filter(|s| !s.in_module()) {
            self.prepare_kernel_site(site)?;
        }
        for site in sites.iter().filter(|s| !s.deferred()) {
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
        // A position-independent file's site is at a link-time address no
        // process runs: [`Session::arm_user_mappings`] arms each process's.
        self.by_addr = sites
            .iter()
            .enumerate()
            .filter(|(_, s)| !s.deferred())
            .map(|(i, s)| (s.addr, i))
            .collect();
        self.sites = sites;
        Ok(())
    }

    /// With sites in position-independent files (and the kernel known):
    /// arms their run-time addresses in the processes running now (their
    /// executable mappings of the file) and a breakpoint on the guest's
    /// `uprobe_mmap()`, which `mmap_region()` calls for each new file
    /// mapping (also at exec), to arm those of later processes. Each hit
    /// at such an address still checks the file the task maps there. The
    /// guest must be stopped.
    pub fn arm_user_mappings(&mut self) -> Result<()> {
        let relocatable = self
            .sites
            .iter()
            .any(|s| s.user.iter().any(|u| u.relocatable));
        let Some(kernel) = self.kernel.clone().filter(|_| relocatable) else {
            return Ok(());
        };
        let hook =
            kernel
                .kaddr("uprobe_mmap")
                .ok_or(Error::Guest(linux_guest::GuestError::Missing(
                    "uprobes in PIE executables and shared libraries",
                    "the uprobe_mmap symbol (CONFIG_UPROBES)",
                )))?;
        self.arm_own_hook("uprobe_mmap", hook)?;
        self.mmap_hook = Some(hook);
        let mut view = crate::context::StubMemory(&mut self.client);
        match kernel.exec_file_mappings(&mut view, MAX_USER_ADDRS * 4) {
            Ok(maps) => {
                for m in maps {
                    self.arm_mapping(&m)?;
                }
            }
            Err(e) => {
                let why = format!("walking the processes' mappings: {e}");
                self.site_errors(|_, s| s.relocatable(), why);
            }
        }
        Ok(())
    }

    /// A breakpoint of vmprobe's own at kernel function `name` (at
    /// `addr`), where the guest tells of something that arms sites.
    fn arm_own_hook(&mut self, name: &str, addr: u64) -> Result<()> {
        self.client
            .insert_breakpoint(BreakpointKind::Software, addr, 1)
            .map_err(|source| Error::Arm {
                probe: format!("{name} (vmprobe's own)"),
                addr,
                source,
            })?;
        self.armed.push(addr);
        Ok(())
    }

    /// Errors found while no handler ran (arming), for the runtime now.
    fn hand_pending_errors(&mut self, runtime: &Mutex<Runtime>) {
        if !self.pending_errors.is_empty() {
            let errors = std::mem::take(&mut self.pending_errors);
            lock(runtime).interpreter_mut().add_errors(&errors);
        }
    }

    /// Arms the run-time addresses mapping `m` gives the sites of
    /// position-independent files: a copy of the site at each address.
    fn arm_mapping(&mut self, m: &linux_guest::FileMapping) -> Result<()> {
        for i in 0..self.sites.len() {
            for addr in self.sites[i].run_time_addrs(&m.path, m.start, m.end, m.offset) {
                if self.by_addr.contains_key(&addr) {
                    continue;
                }
                if self.user_addrs >= MAX_USER_ADDRS {
                    let why = format!(
                        "more than {MAX_USER_ADDRS} run-time addresses of uprobes in position-independent files: {} at {addr:#x} not armed",
                        m.path
                    );
                    self.site_errors(|j, _| j == i, why);
                    continue;
                }
                // Under TCG QEMU keeps the breakpoint by virtual address
                // and drops the code it translated there.
                self.client
                    .insert_breakpoint(BreakpointKind::Software, addr, 1)?;
                self.armed.push(addr);
                self.user_addrs += 1;
                self.by_addr.insert(addr, self.sites.len());
                let at = self.sites[i].at(addr);
                self.sites.push(at);
            }
        }
        Ok(())
    }

    /// An error of the probes of the sites `which` takes, for the runtime
    /// at the next stop.
    fn site_errors(&mut self, which: impl Fn(usize, &ProbeSite) -> bool, why: String) {
        let errors: Vec<(String, String, u64)> = self
            .sites
            .iter()
            .enumerate()
            .filter(|(i, s)| which(*i, s))
            .flat_map(|(_, s)| s.probe_names())
            .map(|p| (p.to_string(), why.clone(), 1))
            .collect();
        self.pending_errors.extend(errors);
    }

    /// `F+OFFSET` must start an instruction of F as it is in guest memory.
    /// Records the guest memory at a kernel site (compared at detach) and
    /// whether its instruction may be skipped. A user address reads as
    /// whatever the stopped vCPU's process maps there (often nothing), and
    /// its code was checked in the ELF; TCG keeps breakpoints outside
    /// guest memory, which holds nothing of ours to compare at detach.
    fn prepare_kernel_site(&mut self, site: &mut ProbeSite) -> Result<()> {
        if site.is_user() {
            return Ok(());
        }
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
        if let Some(e) = &site.event
            && let Some(s) = e.sites.iter().find(|s| s.code == site.addr)
        {
            self.own_branches.push(s.clone());
        }
        Ok(())
    }

    fn check_instruction_boundary(&mut self, site: &ProbeSite) -> Result<()> {
        let client = &mut self.client;
        probe_engine::boundary::check_instruction_boundary(site, |addr, len| {
            let mut code = vec![0u8; len];
            client
                .read_memory(addr, &mut code)
                .map(|()| code)
                .map_err(|e| e.to_string())
        })?;
        Ok(())
    }

    /// Inserts the data watchpoints. The guest must be stopped.
    pub fn arm_watches(&mut self, watches: Vec<WatchProbe>) -> Result<()> {
        for w in watches {
            self.client
                .insert_breakpoint(watch_kind(w.mode), w.addr, w.len)
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
        self.timers = TimerSchedule::new(timers, monotonic_ns());
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
                let _ = self.serve_layers(runtime, Some(probe_engine::layers::FINAL_SYNC));
                return match self.stop() {
                    Ok(Some(stop)) => {
                        // A hit that raced with our interrupt still counts;
                        // the guest stays stopped.
                        let _ = self.serve(stop, runtime, false);
                        reason
                    }
                    Ok(None) => reason,
                    Err(e) => self.gone(e.to_string()),
                };
            }
            let now = monotonic_ns();
            let next_timer = self.timers.next_due();
            if next_timer.is_some_and(|due| due <= now) {
                match self.fire_timers(runtime) {
                    Ok(Flow::Continue) => continue,
                    Ok(Flow::Exit) => return EndReason::ScriptExit,
                    Err(e) => return self.gone(e),
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
                        Err(e) => return self.gone(e),
                    }
                }
                Err(e) => {
                    self.running = false;
                    return self.gone(e.to_string());
                }
            }
        }
    }

    /// Removes every breakpoint and watchpoint, checks guest memory at the
    /// probe sites is as it was before arming, and detaches, leaving the
    /// guest running.
    pub fn detach(mut self) -> Result<()> {
        self.disarm()
    }

    /// What [`Session::detach`] does, leaving the session with nothing
    /// armed (what `Drop` does to a session never detached).
    fn disarm(&mut self) -> Result<()> {
        if self.detached {
            return Ok(());
        }
        self.stop()?;
        let mut first_error = None;
        let returns = self.returns.drain_return_addresses();
        for addr in std::mem::take(&mut self.armed).into_iter().chain(returns) {
            if let Err(e) = self
                .client
                .remove_breakpoint(BreakpointKind::Software, addr, 1)
            {
                first_error.get_or_insert(Error::from(e));
            }
        }
        for w in std::mem::take(&mut self.watches) {
            if let Err(e) = self
                .client
                .remove_breakpoint(watch_kind(w.mode), w.addr, w.len)
            {
                first_error.get_or_insert(Error::from(e));
            }
        }
        for (addr, bytes) in std::mem::take(&mut self.before) {
            let mut now = vec![0u8; bytes.len()];
            match self.client.read_memory(addr, &mut now) {
                // A tracepoint's static branch, which the guest may switch
                // itself (its tracefs) while attached.
                Ok(())
                    if now != bytes
                        && !self.own_branches.iter().any(|s| {
                            s.code == addr && s.is_own_branch(&now) && s.is_own_branch(&bytes)
                        }) =>
                {
                    first_error.get_or_insert(Error::MemoryChanged { addr });
                }
                Ok(()) => {}
                Err(e) => {
                    first_error.get_or_insert(Error::from(e));
                }
            }
        }
        self.detached = true;
        self.client.detach()?;
        first_error.map_or(Ok(()), Err)
    }
}

impl Drop for Session {
    /// A session dropped armed (an error path, a panicking thread) still
    /// leaves the guest without breakpoints, running.
    fn drop(&mut self) {
        let _ = self.disarm();
    }
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

/// The runtime is shared by the sessions of all guests of a run; a handler
/// holds it only while it runs. A poisoned lock (a panicking handler, which
/// must not happen) still gives the maps for the final report.
fn lock(runtime: &Mutex<Runtime>) -> MutexGuard<'_, Runtime> {
    runtime.lock().unwrap_or_else(|e| e.into_inner())
}

/// `5 s`, `2.5 s`.
fn seconds(d: Duration) -> String {
    let s = d.as_secs_f64();
    if (s - s.round()).abs() < 0.05 {
        format!("{s:.0} s")
    } else {
        format!("{s:.1} s")
    }
}

/// The stub's watchpoint kind for a watch mode.
fn watch_kind(mode: WatchMode) -> BreakpointKind {
    match mode {
        WatchMode::Read => BreakpointKind::ReadWatch,
        WatchMode::Write => BreakpointKind::WriteWatch,
        WatchMode::ReadWrite => BreakpointKind::AccessWatch,
    }
}
