//! One attached program inside QEMU: its sites, shards, rings and
//! counters, and what a hit does on the vCPU thread.

use super::context::VcpuContext;
use super::shards::ShardMaps;
use crate::tcg::{Reg, Vcpu};
use linux_guest::GuestKernel;
use plugin_protocol::{Attach, PluginStats, Printed, RecordMode, TracedEvent};
use probe_lang::{BlockId, Executable};
use probe_plan::{
    Entered, GuestThread, PendingCall, ProbeSite, ReturnTracker, Returned, TimerProbe,
};
use probe_runtime::{Interpreter, MapStore, Output, OutputEvent, Traced, TracedValue};
use rustc_hash::{FxHashMap, FxHashSet};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

mod deferred;

/// What one vCPU hands the control thread, bounded: a vCPU never waits
/// for vmprobe. What does not fit is dropped and counted.
#[derive(Default)]
pub(crate) struct Ring {
    pub printed: VecDeque<Printed>,
    pub traced: VecDeque<TracedEvent>,
}

#[derive(Default)]
pub(crate) struct Counters {
    pub hits: AtomicU64,
    pub returns: AtomicU64,
    pub samples: AtomicU64,
    pub lost: AtomicU64,
    pub service_ns_sum: AtomicU64,
    pub service_ns_max: AtomicU64,
    /// Hits by service time (`plugin_protocol::service_bucket`).
    pub service_ns_hist: ServiceHist,
}

pub(crate) struct ServiceHist(pub [AtomicU64; plugin_protocol::SERVICE_BUCKETS]);

impl Default for ServiceHist {
    fn default() -> ServiceHist {
        ServiceHist(std::array::from_fn(|_| AtomicU64::new(0)))
    }
}

/// Run-time addresses armed at most for uprobes in position-independent
/// files (PIE executables, shared libraries), over all processes: beyond
/// it a process's address is dropped, counted as an error of the probe.
/// Processes mostly share a library's address after fork; each exec of a
/// PIE adds one per probe.
pub(crate) const MAX_USER_ADDRS: usize = 4096;

pub(crate) struct Run {
    pub exec: Arc<Executable>,
    pub kernel: GuestKernel,
    pub guest: String,
    pub sites: Vec<ProbeSite>,
    site_at: FxHashMap<u64, u32>,
    /// Run-time addresses of position-independent files' uprobes: each
    /// with the site it serves. A hit there is known to this run as site
    /// `sites.len() + i` (what a pending call keeps), `i` its index here.
    user_addrs: RwLock<UserAddrs>,
    /// The guest's `uprobe_mmap()`, where a process maps a file (also at
    /// exec), while a site is in a position-independent file.
    mmap_hook: Option<u64>,
    /// The guest's `do_init_module()`, where a module is loaded, while a
    /// site is a module's function (`modules`).
    module_hook: Option<u64>,
    /// The guest's `free_module()`, where a module goes away, and the
    /// addresses armed in each module (by its `struct module`).
    module_unload_hook: Option<u64>,
    module_addrs: Mutex<Vec<(u64, u64)>>,
    /// The processes (and modules) there are at the start are still to
    /// be walked, for sites whose addresses they give.
    pub scan_pending: AtomicBool,
    /// Page offsets (one bit each of 4096) of the user addresses armed at
    /// run time (position-independent files' sites, user return
    /// addresses): QEMU runs a block translated for one process's address
    /// of a shared page in every process mapping that page, so whether a
    /// user instruction gets a callback cannot depend on the address it
    /// was translated at, only on its offset in the page; the callback
    /// then looks its run-time address up exactly.
    user_offsets: Box<[AtomicU64]>,
    /// Return addresses given a callback: every one a tracked call used,
    /// kept until detach (dropping one would cost a flush of all code).
    return_sites: RwLock<FxHashSet<u64>>,
    pub tracker: Mutex<ReturnTracker>,
    /// Hits run handlers (after BEGIN, until detach).
    pub started: AtomicBool,
    /// Each vCPU's interpreter (its errors, its step budget).
    pub interps: Box<[Mutex<Interpreter>]>,
    /// Each vCPU's aggregations.
    pub shards: Box<[Mutex<MapStore>]>,
    map_limit: usize,
    pub values: Mutex<MapStore>,
    pub rings: Box<[Mutex<Ring>]>,
    ring_events: usize,
    pub exit: AtomicBool,
    pub counters: Counters,
    pub record: RecordMode,
    /// Recorded events carry their task (`Start`'s `threads`).
    threads: AtomicBool,
    pub samplers: Vec<TimerProbe>,
}

/// Run-time addresses of position-independent files' sites: by address,
/// each one's place in the list of (address, site).
type UserAddrs = (FxHashMap<u64, u32>, Vec<(u64, u32)>);

/// Blocks to run, with their probe names.
type Handlers = Vec<(BlockId, Arc<str>)>;

/// Where a recorded hit happened: vCPU, site, time, the call's entry time
/// (at a return), task.
type HitAt = (u32, usize, u64, Option<u64>, Option<GuestThread>);

/// The `arg0`..`arg5` registers, for recorded hits.
const ARG_REGS: [Reg; 6] = [Reg::Rdi, Reg::Rsi, Reg::Rdx, Reg::Rcx, Reg::R8, Reg::R9];
const ARG_NAMES: [&str; 6] = ["arg0", "arg1", "arg2", "arg3", "arg4", "arg5"];

impl Run {
    pub fn new(a: Attach, vcpus: u32) -> Run {
        let exec = Arc::new(a.exec);
        let kernel = GuestKernel::from_description(a.kernel, a.slide);
        // A position-independent file's site has a link-time address, never
        // run at: its run-time addresses are armed per process instead.
        let site_at = a
            .sites
            .iter()
            .enumerate()
            .filter(|(_, s)| !s.deferred())
            .map(|(i, s)| (s.addr, i as u32))
            .collect();
        let relocatable = a.sites.iter().any(|s| s.user.iter().any(|u| u.relocatable));
        let mmap_hook = relocatable.then(|| kernel.kaddr("uprobe_mmap")).flatten();
        let in_modules = a.sites.iter().any(|s| s.in_module());
        let module_hook = in_modules.then(|| kernel.module_load_hook()).flatten();
        let module_unload_hook = in_modules.then(|| kernel.module_unload_hook()).flatten();
        let store = || {
            let mut s = MapStore::new(&exec.ir.maps, &exec.ir.tuples);
            s.set_limit(a.map_limit);
            s
        };
        // One `self->` table for every vCPU: a thread that sleeps on one
        // vCPU and wakes on another finds its values.
        let thread_vars = Arc::default();
        let interps = (0..vcpus.max(1))
            .map(|_| {
                let mut interp = Interpreter::new();
                interp.set_step_budget(a.step_budget);
                interp.share_thread_vars(Arc::clone(&thread_vars));
                Mutex::new(interp)
            })
            .collect();
        let shards = (0..vcpus.max(1)).map(|_| Mutex::new(store())).collect();
        let rings = (0..vcpus.max(1)).map(|_| Mutex::default()).collect();
        Run {
            kernel,
            guest: a.guest,
            sites: a.sites,
            site_at,
            user_addrs: RwLock::default(),
            mmap_hook,
            module_hook,
            module_unload_hook,
            module_addrs: Mutex::default(),
            scan_pending: AtomicBool::new(relocatable || in_modules),
            user_offsets: (0..64).map(|_| AtomicU64::new(0)).collect(),
            return_sites: RwLock::default(),
            tracker: Mutex::new(ReturnTracker::new()),
            started: AtomicBool::new(false),
            interps,
            shards,
            map_limit: a.map_limit,
            values: Mutex::new(store()),
            rings,
            ring_events: a.ring_events.max(1),
            exit: AtomicBool::new(false),
            counters: Counters::default(),
            record: a.record,
            threads: AtomicBool::new(false),
            samplers: a.samplers,
            exec,
        }
    }

    /// Whether the instruction at `vaddr` gets a callback.
    pub fn instruments(&self, vaddr: u64) -> bool {
        self.site_at.contains_key(&vaddr)
            || self.mmap_hook == Some(vaddr)
            || self.module_hook == Some(vaddr)
            || self.module_unload_hook == Some(vaddr)
            || (is_user(vaddr) && self.user_offset_armed(vaddr))
            || self.user_site(vaddr).is_some()
            || self
                .return_sites
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .contains(&vaddr)
    }

    /// `BEGIN`'s value maps, and from now on hits run handlers
    /// (recording their tasks if `threads`).
    pub fn start(&self, values: MapStore, start_ns: u64, threads: bool) {
        self.threads.store(threads, Ordering::Relaxed);
        let mut mine = self.values.lock().unwrap_or_else(|e| e.into_inner());
        mine.merge(&values);
        for interp in self.interps.iter() {
            interp
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .set_start_nsecs(start_ns);
        }
        self.started.store(true, Ordering::Release);
    }

    /// The instrumented instruction translated at `vaddr` is about to run
    /// on `vcpu`, at `pc`: the same in the kernel, and in user space where
    /// the block was translated for this address; another process's where
    /// QEMU runs a block translated for one process's mapping of a page
    /// in another's (see `tcg::callbacks::run_time_pc`). Returns whether a
    /// new return address needs a callback (the caller asks QEMU to
    /// reinstrument).
    pub fn hit(&self, vcpu: &mut Vcpu<'_>, vaddr: u64, pc: u64) -> bool {
        if !self.started.load(Ordering::Acquire) {
            return false;
        }
        let t0 = host_clock::monotonic_ns();
        let mut new_return = false;
        if self.mmap_hook == Some(vaddr) {
            new_return |= self.mapped(vcpu);
        }
        if self.module_hook == Some(vaddr) {
            new_return |= self.module_loaded(vcpu);
        }
        if self.module_unload_hook == Some(vaddr) {
            new_return |= self.module_freed(vcpu);
        }
        if let Some(&site) = self.site_at.get(&pc) {
            new_return |= self.entry(vcpu, site as usize, t0);
        }
        if let Some(index) = self.user_site(pc) {
            new_return |= self.entry(vcpu, index, t0);
        }
        if self.is_return_site(pc) {
            self.ret(vcpu, pc, t0);
        }
        let spent = host_clock::monotonic_ns().saturating_sub(t0);
        self.counters
            .service_ns_sum
            .fetch_add(spent, Ordering::Relaxed);
        self.counters
            .service_ns_max
            .fetch_max(spent, Ordering::Relaxed);
        let bucket = plugin_protocol::service_bucket(spent);
        self.counters.service_ns_hist.0[bucket].fetch_add(1, Ordering::Relaxed);
        new_return
    }

    /// Marks user address `addr`'s page offset (see `user_offsets`).
    fn arm_user_offset(&self, addr: u64) {
        if is_user(addr) {
            let off = (addr & 0xfff) as usize;
            self.user_offsets[off / 64].fetch_or(1 << (off % 64), Ordering::AcqRel);
        }
    }

    fn user_offset_armed(&self, addr: u64) -> bool {
        let off = (addr & 0xfff) as usize;
        self.user_offsets[off / 64].load(Ordering::Acquire) & (1 << (off % 64)) != 0
    }

    /// The run's index for run-time address `vaddr` of a
    /// position-independent file's site (`sites.len()` + its place).
    fn user_site(&self, vaddr: u64) -> Option<usize> {
        let addrs = self.user_addrs.read().unwrap_or_else(|e| e.into_inner());
        addrs.0.get(&vaddr).map(|&i| self.sites.len() + i as usize)
    }

    /// A site index of this run (see [`Run::user_site`]) as the site it
    /// serves and the address it is at.
    fn site_and_addr(&self, index: usize) -> (usize, u64) {
        match index.checked_sub(self.sites.len()) {
            None => (index, self.sites[index].addr),
            Some(i) => {
                let addrs = self.user_addrs.read().unwrap_or_else(|e| e.into_inner());
                let (addr, site) = addrs.1[i];
                (site as usize, addr)
            }
        }
    }

    /// An error of each of the site's probes, counted in `vcpu`'s shard.
    fn add_site_errors(&self, vcpu: usize, site: &ProbeSite, why: String) {
        let errors: Vec<(String, String, u64)> = site
            .probe_names()
            .iter()
            .map(|p| (p.to_string(), why.clone(), 1))
            .collect();
        self.interps[vcpu % self.interps.len()]
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .add_errors(&errors);
    }

    fn is_return_site(&self, vaddr: u64) -> bool {
        self.return_sites
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&vaddr)
    }

    /// At a user site (uprobe): the entry and return handlers of the
    /// probes whose file the current task maps at the site's address, and
    /// the task; `None` for a kernel site. A failed lookup is counted as
    /// each probe's error and runs nothing.
    fn user_handlers(
        &self,
        vcpu: &mut Vcpu<'_>,
        index: usize,
    ) -> Option<(Handlers, Handlers, u64)> {
        let (site, addr) = self.site_and_addr(index);
        let s = &self.sites[site];
        if !s.is_user() {
            return None;
        }
        let mut view = super::context::VcpuView(vcpu);
        let found = self
            .kernel
            .mapped_file(&mut view, addr)
            .and_then(|m| Ok((m, self.kernel.current_task(&mut view)?)));
        match found {
            Ok((m, task)) => {
                let m = m.as_ref().map(|m| (m.path.as_str(), m.file_offset));
                Some((s.handlers_for(false, m), s.handlers_for(true, m), task))
            }
            Err(e) => {
                let why = format!("finding the file mapped at {addr:#x}: {e}");
                self.add_site_errors(vcpu.index() as usize, s, why);
                Some((Vec::new(), Vec::new(), 0))
            }
        }
    }

    /// `index`: the run's index of the site (see [`Run::user_site`]).
    fn entry(&self, vcpu: &mut Vcpu<'_>, index: usize, now: u64) -> bool {
        // A guest tracepoint's call is an event only where its own code,
        // emulated, writes a record (kernel sites are their own index).
        let event = self.event_record(vcpu, self.site_and_addr(index).0);
        if self.sites[self.site_and_addr(index).0].event.is_some() && event.is_none() {
            return false;
        }
        // A user address is every process's: only the probes of the file
        // the current task maps there run.
        let user = self.user_handlers(vcpu, index);
        let site = self.site_and_addr(index).0;
        if let Some((entry, ret, _)) = &user
            && entry.is_empty()
            && ret.is_empty()
        {
            return false;
        }
        self.counters.hits.fetch_add(1, Ordering::Relaxed);
        let s = &self.sites[site];
        let handlers = user.as_ref().map_or(&s.handlers, |(e, _, _)| e);
        let traced = self.run_blocks(vcpu, handlers, &s.func, now, None, event.as_ref());
        // Every hit recorded: the task is read at the entry for the
        // entry's events and, kept with the call, for its return's.
        let always = self.record == RecordMode::EveryHit
            && !(s.handlers.is_empty() && s.ret_handlers.is_empty());
        let thread = self.thread_if(vcpu, always || !traced.is_empty());
        if self.record != RecordMode::Off {
            let own: Vec<(String, TracedValue)> = ARG_NAMES
                .iter()
                .zip(ARG_REGS)
                .map(|(n, r)| (n.to_string(), TracedValue::U64(vcpu.reg_id(r).unwrap_or(0))))
                .collect();
            let at = (vcpu.index(), site, now, None, thread);
            self.record_hit(at, handlers, &own, traced);
        }
        let (awaits, owner) = match &user {
            Some((_, ret, task)) => (!ret.is_empty(), *task),
            None => (!s.ret_handlers.is_empty(), 0),
        };
        if !awaits {
            return false;
        }
        // At the entry the return address is on top of the stack.
        let Some(rsp) = vcpu.reg_id(Reg::Rsp) else {
            return false;
        };
        let mut word = [0u8; 8];
        let mut tracker = self.tracker.lock().unwrap_or_else(|e| e.into_inner());
        if !vcpu.read_memory(rsp, &mut word) {
            tracker.missed += 1;
            return false;
        }
        let mut args = [0u64; 6];
        if s.entry_args {
            for (a, r) in args.iter_mut().zip(ARG_REGS) {
                *a = vcpu.reg_id(r).unwrap_or(0);
            }
        }
        let call = PendingCall {
            site: index,
            entry_ns: now,
            vcpu: vcpu.index(),
            args,
            thread,
        };
        match tracker.enter_owned(u64::from_le_bytes(word), rsp, owner, call) {
            Entered::NewReturnAddress(ret) => {
                self.arm_user_offset(ret);
                self.return_sites
                    .write()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(ret)
            }
            Entered::Tracked | Entered::Full => false,
        }
    }

    fn ret(&self, vcpu: &mut Vcpu<'_>, pc: u64, now: u64) {
        let Some(rsp) = vcpu.reg_id(Reg::Rsp) else {
            return;
        };
        // A user call pairs by its task too (user stacks of two processes
        // share addresses).
        let owner = if pc < 0xffff_8000_0000_0000 {
            self.kernel
                .current_task(&mut super::context::VcpuView(vcpu))
                .unwrap_or(u64::MAX)
        } else {
            0
        };
        let returned = self
            .tracker
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .returned_owned(pc, rsp, owner);
        // Another call returning to the same place (one that started
        // before attaching, or an untracked one) is not ours.
        let Returned::Call { call, .. } = returned else {
            return;
        };
        // Which of a user site's uretprobes: asked again of its address.
        let user = self.user_handlers(vcpu, call.site);
        let site = self.site_and_addr(call.site).0;
        self.counters.returns.fetch_add(1, Ordering::Relaxed);
        let s = &self.sites[site];
        let entry_args = s.entry_args.then_some(call.args);
        let handlers = user.as_ref().map_or(&s.ret_handlers, |(_, r, _)| r);
        let traced = self.run_blocks(vcpu, handlers, &s.func, now, entry_args, None);
        // The call's task, as its entry read it, else read here.
        let thread = match call.thread {
            Some(t) => Some(t),
            None => {
                let always = self.record == RecordMode::EveryHit && !s.ret_handlers.is_empty();
                self.thread_if(vcpu, always || !traced.is_empty())
            }
        };
        if self.record != RecordMode::Off {
            let retval = vcpu.reg_id(Reg::Rax).unwrap_or(0);
            let own = [("retval".to_string(), TracedValue::U64(retval))];
            let at = (vcpu.index(), site, now, Some(call.entry_ns), thread);
            self.record_hit(at, handlers, &own, traced);
        }
    }

    /// A due `profile` sample on this vCPU.
    pub fn sample(&self, vcpu: &mut Vcpu<'_>, blocks: &[(BlockId, Arc<str>)]) {
        if !self.started.load(Ordering::Acquire) {
            return;
        }
        self.counters.samples.fetch_add(1, Ordering::Relaxed);
        let now = host_clock::monotonic_ns();
        let traced = self.run_blocks(vcpu, blocks, "", now, None, None);
        let thread = self.thread_if(vcpu, !traced.is_empty());
        self.push_traced(vcpu.index(), u32::MAX, now, thread, traced);
    }

    /// The current task as a recording names it, if `wanted` and `Start`
    /// asked for tasks: two reads in the vCPU (the current task, then its
    /// tgid, pid and comm in one span), no stop.
    fn thread_if(&self, vcpu: &mut Vcpu<'_>, wanted: bool) -> Option<GuestThread> {
        if !wanted || self.record == RecordMode::Off || !self.threads.load(Ordering::Relaxed) {
            return None;
        }
        let mut view = super::context::VcpuView(vcpu);
        let task = self.kernel.current_task(&mut view).ok()?;
        let ids = self.kernel.task_ids(&mut view, task).ok()?;
        Some(GuestThread {
            pid: ids.tgid,
            tid: ids.pid,
            comm: ids.comm,
        })
    }

    /// Runs `blocks` on `vcpu`'s shard; returns what they traced.
    fn run_blocks(
        &self,
        vcpu: &mut Vcpu<'_>,
        blocks: &[(BlockId, Arc<str>)],
        func: &str,
        now: u64,
        entry_args: Option<[u64; 6]>,
        event: Option<&(
            Arc<kernel_tracepoints::EventRecipe>,
            kernel_tracepoints::Record,
        )>,
    ) -> Vec<(Box<str>, Traced)> {
        let index = vcpu.index() as usize;
        let (Some(interp), Some(ring)) = (self.interps.get(index), self.rings.get(index)) else {
            return Vec::new();
        };
        let mut interp = interp.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = RingOutput {
            ring,
            vcpu: index as u32,
            cap: self.ring_events,
            lost: &self.counters.lost,
        };
        let mut ctx = VcpuContext {
            vcpu,
            kernel: &self.kernel,
            guest: &self.guest,
            nsecs: now,
            func,
            probe: "",
            task: None,
            traced: Vec::new(),
            entry_args,
            event,
        };
        for (block, probe) in blocks {
            ctx.probe = probe;
            let mut maps = ShardMaps {
                decls: &self.exec.ir.maps,
                shards: &self.shards,
                own: index,
                values: &self.values,
                limit: self.map_limit,
            };
            if let probe_runtime::Flow::Exit =
                interp.run(&self.exec, *block, &mut ctx, &mut maps, &mut out)
            {
                self.exit.store(true, Ordering::Release);
            }
        }
        ctx.traced
    }

    /// The events `vmprobe record` gets of one hit (`at`: vCPU, site,
    /// time, the call's entry time at a return, task): every hit's own
    /// fields (when every hit is recorded), then what its handlers traced.
    fn record_hit(
        &self,
        (vcpu, site, now, entry_ns, thread): HitAt,
        handlers: &[(BlockId, Arc<str>)],
        own: &[(String, TracedValue)],
        traced: Vec<(Box<str>, Traced)>,
    ) {
        let mut all: Vec<(Box<str>, Traced)> = Vec::new();
        if self.record == RecordMode::EveryHit {
            all.extend(
                handlers
                    .iter()
                    .map(|(_, p)| (Box::from(&**p), Traced::Probe)),
            );
        }
        all.extend(traced);
        let events = all.into_iter().map(|(probe, t)| {
            let (trace_site, fields, snapshot) = match t {
                Traced::Probe => (None, own.to_vec(), false),
                Traced::Fields { site, fields } => (
                    Some(site),
                    fields
                        .into_iter()
                        .map(|(n, v)| (n.to_string(), v))
                        .collect(),
                    false,
                ),
                Traced::Snapshot => (None, Vec::new(), true),
            };
            TracedEvent {
                ts_ns: now,
                vcpu,
                site: site as u32,
                probe: probe.into(),
                entry_ns,
                trace_site,
                fields,
                snapshot,
                thread,
            }
        });
        self.push_events(vcpu, events);
    }

    /// What a `profile` sample's handlers traced.
    fn push_traced(
        &self,
        vcpu: u32,
        site: u32,
        now: u64,
        thread: Option<GuestThread>,
        traced: Vec<(Box<str>, Traced)>,
    ) {
        if self.record == RecordMode::Off || traced.is_empty() {
            return;
        }
        let events = traced.into_iter().map(|(probe, t)| {
            let (trace_site, fields, snapshot) = match t {
                Traced::Probe => (None, Vec::new(), false),
                Traced::Fields { site, fields } => (
                    Some(site),
                    fields
                        .into_iter()
                        .map(|(n, v)| (n.to_string(), v))
                        .collect(),
                    false,
                ),
                Traced::Snapshot => (None, Vec::new(), true),
            };
            TracedEvent {
                ts_ns: now,
                vcpu,
                site,
                probe: probe.into(),
                entry_ns: None,
                trace_site,
                fields,
                snapshot,
                thread,
            }
        });
        self.push_events(vcpu, events);
    }

    fn push_events(&self, vcpu: u32, events: impl Iterator<Item = TracedEvent>) {
        let Some(ring) = self.rings.get(vcpu as usize) else {
            return;
        };
        let mut ring = ring.lock().unwrap_or_else(|e| e.into_inner());
        for e in events {
            if ring.traced.len() >= self.ring_events {
                self.counters.lost.fetch_add(1, Ordering::Relaxed);
            } else {
                ring.traced.push_back(e);
            }
        }
    }

    /// Everything the rings hold, printed output in time order.
    pub fn drain(&self) -> (Vec<Printed>, Vec<TracedEvent>) {
        let (mut printed, mut traced) = (Vec::new(), Vec::new());
        for ring in self.rings.iter() {
            let mut ring = ring.lock().unwrap_or_else(|e| e.into_inner());
            printed.extend(ring.printed.drain(..));
            traced.extend(ring.traced.drain(..));
        }
        printed.sort_by_key(|p| p.ts_ns);
        traced.sort_by_key(|t| t.ts_ns);
        (printed, traced)
    }

    pub fn stats(&self) -> PluginStats {
        let c = &self.counters;
        PluginStats {
            hits: c.hits.load(Ordering::Relaxed),
            returns: c.returns.load(Ordering::Relaxed),
            missed_returns: self
                .tracker
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .missed,
            samples: c.samples.load(Ordering::Relaxed),
            lost_events: c.lost.load(Ordering::Relaxed),
            caught_panics: crate::tcg::caught_panics(),
            reinstrumentations: crate::tcg::resets(),
            service_ns_sum: c.service_ns_sum.load(Ordering::Relaxed),
            service_ns_max: c.service_ns_max.load(Ordering::Relaxed),
            service_ns_hist: c
                .service_ns_hist
                .0
                .iter()
                .map(|b| b.load(Ordering::Relaxed))
                .collect(),
            idle_untranslated: false,
        }
    }

    /// Errors of every shard, summed.
    pub fn errors(&self) -> Vec<(String, String, u64)> {
        let mut all = Interpreter::new();
        for interp in self.interps.iter() {
            all.add_errors(&interp.lock().unwrap_or_else(|e| e.into_inner()).errors());
        }
        all.errors()
    }
}

/// A user-space address (the lower half).
fn is_user(addr: u64) -> bool {
    addr < 0x8000_0000_0000_0000
}

/// A vCPU's handler output, into its ring.
struct RingOutput<'a> {
    ring: &'a Mutex<Ring>,
    vcpu: u32,
    cap: usize,
    lost: &'a AtomicU64,
}

impl Output for RingOutput<'_> {
    fn emit(&mut self, ts_ns: u64, event: OutputEvent) {
        let mut ring = self.ring.lock().unwrap_or_else(|e| e.into_inner());
        if ring.printed.len() >= self.cap {
            self.lost.fetch_add(1, Ordering::Relaxed);
            return;
        }
        ring.printed.push_back(Printed {
            ts_ns,
            vcpu: self.vcpu,
            event,
        });
    }
}
