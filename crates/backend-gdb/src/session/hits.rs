//! Serving one stop: a breakpoint hit (entry or return), a watchpoint, or
//! the timers; and getting the vCPU going again afterwards.

use super::*;

/// What a site's handlers did: their flow, the registers they read, what
/// they traced, and the task they ran in (if a recording wants it).
type SiteRun = (
    Flow,
    Option<Registers>,
    Vec<(Box<str>, Traced)>,
    Option<GuestThread>,
);

impl Session {
    /// Stops the guest and runs every timer probe that is due. A breakpoint
    /// hit that races with the interrupt is served first (and resumed); the
    /// timers then stay due and fire on the next pass.
    pub(super) fn fire_timers(&mut self, runtime: &Mutex<Runtime>) -> Result<Flow, String> {
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
        for timer in self.timers.take_due(received) {
            let threads: Vec<Option<ThreadId>> = if timer.every_vcpu {
                self.vcpus.iter().copied().map(Some).collect()
            } else {
                vec![stopped_thread]
            };
            for thread in threads {
                self.stats.timer_fires += 1;
                self.live.hit();
                let mut ctx = HitContext::at_stop(
                    &mut self.client,
                    self.kernel.as_deref(),
                    &self.name,
                    thread,
                    None,
                    received,
                    "",
                );
                ctx.user_symbols = self.user_symbols.as_deref();
                let block = [(timer.block, timer.probe.clone())];
                if let Flow::Exit = ctx.run_all(runtime, &block)? {
                    flow = Flow::Exit;
                }
                let vcpu = ctx.vcpu;
                // A `profile` sample is the task it interrupted's; an
                // `interval` is no task's.
                let thread = match self.record_threads && timer.every_vcpu && !ctx.traced.is_empty()
                {
                    true => ctx.thread(),
                    false => None,
                };
                if let Some(sink) = self.recorder.as_mut() {
                    let base = EventBase {
                        guest: &self.name,
                        ts_ns: received,
                        vcpu: Some(vcpu),
                        layer: Layer::Guest,
                        func: "",
                        entry_ns: None,
                        thread,
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
    pub(super) fn serve(
        &mut self,
        stop: StopReply,
        runtime: &Mutex<Runtime>,
        resume: bool,
    ) -> Result<Flow, String> {
        let received = monotonic_ns();
        // Events of the other layers that happened before this stop run
        // first: one script sees the layers in the order things happened.
        if let Flow::Exit = self.serve_layers(runtime, Some(probe_engine::layers::STOP_SYNC)) {
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
        self.hand_pending_errors(runtime);
        if let Some(StopReason::Watch { addr, .. }) = reason {
            return self.serve_watch(thread, addr, runtime, resume, received);
        }
        // With a single entry site and nothing else armed, every SIGTRAP
        // while continuing is that site's breakpoint (QEMU reports only its
        // own breakpoints to us; guest int3s stay in the guest), so the pc
        // need not be read.
        let only_site = self.sites.len() == 1
            && self.mmap_hook.is_none()
            && self.module_hook.is_none()
            && !self.sites[0].deferred()
            && self.returns.return_addresses().next().is_none()
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
        if self.mmap_hook == Some(pc) {
            return self.serve_mmap(pc, thread, regs, runtime, resume, received);
        }
        if self.is_module_hook(pc) {
            return self.serve_module_load(pc, thread, regs, runtime, resume, received);
        }
        if let Some(&index) = self.by_addr.get(&pc) {
            return self.serve_entry(index, thread, regs, runtime, resume, received);
        }
        if self.returns.is_return_address(pc) {
            return self.serve_return(pc, thread, regs, runtime, resume, received);
        }
        self.stats.stray_stops += 1;
        self.resume_if(resume, Resume::Continue, received)
            .map(|_| Flow::Continue)
    }

    pub(super) fn serve_entry(
        &mut self,
        index: usize,
        thread: ThreadId,
        regs: Option<Registers>,
        runtime: &Mutex<Runtime>,
        resume: bool,
        received: u64,
    ) -> Result<Flow, String> {
        // A guest tracepoint's call fires only if its own code, emulated,
        // writes a record.
        let mut regs = regs;
        if let Some(recipe) = self.sites[index].event.clone() {
            match self.serve_event(&recipe, index, thread, &mut regs)? {
                Some(record) => self.event_record = Some((recipe, record)),
                None => {
                    let addr = self.sites[index].addr;
                    return self
                        .resume_if(resume, Resume::StepOff(thread, addr), received)
                        .map(|_| Flow::Continue);
                }
            }
        }
        // A user instruction on a page the process has not touched yet
        // faults before it runs (TCG stops at the breakpoint before
        // fetching it): the guest pages it in and comes back to the same
        // breakpoint, and that stop is the call's.
        if self.sites[index].is_user() {
            let addr = self.sites[index].addr;
            let mut byte = [0u8; 1];
            if let Err(e) = self.client.read_memory(addr, &mut byte) {
                if !matches!(e, gdb_remote::Error::ErrorReply { .. }) {
                    return Err(e.to_string());
                }
                return self
                    .resume_if(resume, Resume::StepOff(thread, addr), received)
                    .map(|_| Flow::Continue);
            }
        }
        // A user address is every process's: run only the probes whose
        // file the current task maps there.
        let (mut regs, user) = if self.sites[index].is_user() {
            let (regs, mapped) = self.mapped_at(index, thread, regs, runtime)?;
            let site = &self.sites[index];
            let m = mapped.as_ref().map(|m| (m.path.as_str(), m.file_offset));
            (
                regs,
                Some((site.handlers_for(false, m), site.handlers_for(true, m))),
            )
        } else {
            (regs, None)
        };
        if let Some((entry, ret)) = &user
            && entry.is_empty()
            && ret.is_empty()
        {
            self.stats.other_files += 1;
            let addr = self.sites[index].addr;
            return self
                .resume_if(resume, Resume::StepOff(thread, addr), received)
                .map(|_| Flow::Continue);
        }
        self.stats.hits += 1;
        self.live.hit();
        let entry_handlers = user.as_ref().map(|(e, _)| e.clone());
        // Every hit recorded: the task is read at the entry for the
        // entry's events and, kept with the call, for its return's.
        let site = &self.sites[index];
        let thread_always =
            self.record_every_hit && !(site.handlers.is_empty() && site.ret_handlers.is_empty());
        let (flow, regs2, traced, guest_thread) = self.run_site(
            index,
            At::Entry,
            thread,
            regs.take(),
            runtime,
            received,
            entry_handlers,
            thread_always,
        )?;
        regs = regs2;
        let site = &self.sites[index];
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
            EventBase::guest_hit(&self.name, received, vcpu_index(thread), &site.func, None)
                .in_thread(guest_thread)
                .emit_hit(
                    sink.as_mut(),
                    &fields,
                    every.then_some(&site.handlers),
                    &traced,
                );
        }
        if matches!(flow, Flow::Exit) {
            return Ok(Flow::Exit);
        }
        let awaits = match &user {
            Some((_, ret)) => !ret.is_empty(),
            None => !site.ret_handlers.is_empty(),
        };
        if awaits {
            self.await_return(index, thread, regs, received, guest_thread)?;
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
            None => Resume::StepOff(thread, addr),
        };
        self.resume_if(resume, how, received)?;
        Ok(flow)
    }

    /// At `uprobe_mmap(vma)`: a process maps a file. An executable mapping
    /// of a probed position-independent file arms its run-time addresses
    /// before the process can run code there.
    fn serve_mmap(
        &mut self,
        pc: u64,
        thread: ThreadId,
        regs: Option<Registers>,
        runtime: &Mutex<Runtime>,
        resume: bool,
        received: u64,
    ) -> Result<Flow, String> {
        let vma = register(&mut self.client, regs.as_ref(), thread, "rdi")?;
        if let Some(kernel) = self.kernel.clone() {
            let mut view = crate::context::StubMemory(&mut self.client);
            let mapping = kernel.vma_mapping(&mut view, vma);
            if let Some(why) = self.client.lost() {
                return Err(why.to_string());
            }
            if let Ok(Some(m)) = mapping {
                self.arm_mapping(&m).map_err(|e| e.to_string())?;
            }
        }
        self.hand_pending_errors(runtime);
        self.resume_if(resume, Resume::StepOff(thread, pc), received)
            .map(|_| Flow::Continue)
    }

    /// At a function entry (the return address is on top of the stack),
    /// arms a breakpoint at the return address and remembers the call.
    pub(super) fn await_return(
        &mut self,
        site: usize,
        thread: ThreadId,
        regs: Option<Registers>,
        entry_ns: u64,
        guest_thread: Option<GuestThread>,
    ) -> Result<(), String> {
        let rsp = register(&mut self.client, regs.as_ref(), thread, "rsp")?;
        let mut word = [0u8; 8];
        if self.client.read_memory(rsp, &mut word).is_err() {
            self.returns.missed += 1;
            return Ok(());
        }
        let ret = u64::from_le_bytes(word);
        let mut args = [0u64; 6];
        if self.sites[site].entry_args {
            let fetched;
            let regs = match &regs {
                Some(r) => r,
                None => {
                    fetched = self
                        .client
                        .read_registers(thread)
                        .map_err(|e| e.to_string())?;
                    &fetched
                }
            };
            for (a, reg) in args.iter_mut().zip(ARG_REGS) {
                *a = regs.get(reg).unwrap_or(0);
            }
        }
        let call = PendingCall {
            site,
            entry_ns,
            vcpu: vcpu_index(thread),
            args,
            thread: guest_thread,
        };
        // User stacks of two processes can sit at the same address: a
        // user call is also keyed by its thread (its task).
        let owner = if self.sites[site].is_user() {
            match self.current_task(thread, regs.as_ref()) {
                Ok(task) => task,
                Err(_) => {
                    self.returns.missed += 1;
                    return Ok(());
                }
            }
        } else {
            0
        };
        if let Entered::NewReturnAddress(ret) = self.returns.enter_owned(ret, rsp, owner, call)
            && self
                .client
                .insert_breakpoint(BreakpointKind::Software, ret, 1)
                .is_err()
        {
            // Not code the stub can break on (a wild return address).
            self.returns.abandon_owned(ret, rsp, owner);
        }
        Ok(())
    }

    pub(super) fn serve_return(
        &mut self,
        pc: u64,
        thread: ThreadId,
        regs: Option<Registers>,
        runtime: &Mutex<Runtime>,
        resume: bool,
        received: u64,
    ) -> Result<Flow, String> {
        let rsp = register(&mut self.client, regs.as_ref(), thread, "rsp")?;
        // Kernel return addresses are never user ones: a user address
        // pairs by its task too.
        let owner = if pc < 0xffff_8000_0000_0000 {
            self.current_task(thread, regs.as_ref()).unwrap_or(u64::MAX)
        } else {
            0
        };
        let Returned::Call {
            call:
                PendingCall {
                    site,
                    entry_ns,
                    args,
                    thread: entry_thread,
                    ..
                },
            last,
        } = self.returns.returned_owned(pc, rsp, owner)
        else {
            self.stats.stray_stops += 1;
            return self
                .resume_if(resume, Resume::StepOff(thread, pc), received)
                .map(|_| Flow::Continue);
        };
        // The task entered through the probed file; which of the site's
        // uretprobes did is asked again of the entry address.
        let (regs, handlers) = if self.sites[site].is_user() {
            let (regs, mapped) = self.mapped_at(site, thread, regs, runtime)?;
            let m = mapped.as_ref().map(|m| (m.path.as_str(), m.file_offset));
            let h = self.sites[site].handlers_for(true, m);
            (regs, Some(h))
        } else {
            (regs, None)
        };
        self.stats.returns += 1;
        self.live.hit();
        let entry_args = self.sites[site].entry_args.then_some(args);
        // The call's task, as its entry read it, else read here.
        let thread_always = entry_thread.is_none()
            && self.record_every_hit
            && !self.sites[site].ret_handlers.is_empty();
        let (flow, regs, traced, read_thread) = self.run_site(
            site,
            At::Return(entry_args),
            thread,
            regs,
            runtime,
            received,
            handlers,
            thread_always,
        )?;
        let guest_thread = entry_thread.or(read_thread);
        let site = &self.sites[site];
        if let Some(sink) = self.recorder.as_mut() {
            let every = self.record_every_hit;
            let retval = if every || traced.iter().any(|(_, t)| *t == Traced::Probe) {
                register(&mut self.client, regs.as_ref(), thread, "rax")?
            } else {
                0
            };
            let own = [("retval", FieldValue::U64(retval))];
            EventBase::guest_hit(
                &self.name,
                received,
                vcpu_index(thread),
                &site.func,
                Some(entry_ns),
            )
            .in_thread(guest_thread)
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
            self.client
                .remove_breakpoint(BreakpointKind::Software, pc, 1)
                .map_err(|e| e.to_string())?;
            Resume::Continue
        } else {
            Resume::StepOff(thread, pc)
        };
        if matches!(flow, Flow::Continue) {
            self.resume_if(resume, how, received)?;
        }
        Ok(flow)
    }

    pub(super) fn serve_watch(
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
        ctx.user_symbols = self.user_symbols.as_deref();
        // Others wait on the runtime while a handler runs: no stall wait.
        ctx.client.set_stalls_deferred(true);
        for w in &hit {
            self.stats.watch_hits += 1;
            self.live.hit();
            ctx.probe = &w.probe;
            if let Flow::Exit = lock(runtime).run(w.block, &mut ctx) {
                flow = Flow::Exit;
            }
        }
        ctx.client.set_stalls_deferred(false);
        if let Some(why) = ctx.client.lost() {
            return Err(why.to_string());
        }
        let traced = std::mem::take(&mut ctx.traced);
        let guest_thread = match self.record_threads && !traced.is_empty() {
            true => ctx.thread(),
            false => None,
        };
        if let Some(sink) = self.recorder.as_mut() {
            EventBase::guest_hit(&self.name, received, vcpu_index(thread), "", None)
                .in_thread(guest_thread)
                .emit(sink.as_mut(), &[("addr", FieldValue::U64(addr))], &traced);
        }
        if matches!(flow, Flow::Continue) {
            self.resume_if(resume, Resume::Continue, received)?;
        }
        Ok(flow)
    }

    pub(super) fn resume_if(
        &mut self,
        resume: bool,
        how: Resume,
        received: u64,
    ) -> Result<(), String> {
        if resume {
            self.resume_with(how, received)?;
        }
        Ok(())
    }

    pub(super) fn resume_with(&mut self, how: Resume, received: u64) -> Result<(), String> {
        const ALL: &[(Option<ThreadId>, ResumeAction)] = &[(None, ResumeAction::Continue)];
        match how {
            Resume::Continue => self.client.resume(ALL),
            Resume::SetPc(thread, pc) => self
                .client
                .write_register_and_resume(thread, "rip", pc, ALL),
            Resume::StepOff(thread, at) => {
                self.step_off_site(thread, at)?;
                self.client.resume(ALL)
            }
        }
        .map_err(|e| e.to_string())?;
        self.running = true;
        let took = monotonic_ns().saturating_sub(received);
        let _ = self.stats.service_ns.record(took);
        self.live.served(took);
        Ok(())
    }

    /// Single-steps `thread`, stopped at breakpoint `start`, until its pc
    /// has left it. A
    /// single-stepping vCPU ignores the breakpoint at its pc, so breakpoints
    /// stay armed. QEMU occasionally reports a step done with the pc unmoved
    /// (seen about once in a thousand steps on TCG); resuming then would hit
    /// the same breakpoint again and count one call twice, so the pc is
    /// checked and the step repeated. A step that lands on another probe's
    /// address (the next instruction, or a call's target) stops there:
    /// QEMU reports that breakpoint as soon as the vCPU continues, so it is
    /// served rather than stepped over.
    pub(super) fn step_off_site(&mut self, thread: ThreadId, start: u64) -> Result<(), String> {
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
            if pc != start
                || (!self.by_addr.contains_key(&pc) && !self.returns.is_return_address(pc))
            {
                return Ok(());
            }
        }
        Err(format!(
            "vCPU {thread} did not move off a probe site after {MAX_STEPS} single steps"
        ))
    }

    /// The current task at a stop of `thread`.
    fn current_task(&mut self, thread: ThreadId, regs: Option<&Registers>) -> Result<u64, String> {
        let kernel = self.kernel.clone().ok_or("no guest kernel known")?;
        let r = match regs {
            Some(r) => r.clone(),
            None => self
                .client
                .read_registers(thread)
                .map_err(|e| e.to_string())?,
        };
        let mut view = crate::context::StopView::new(&mut self.client, &r);
        kernel.current_task(&mut view).map_err(|e| e.to_string())
    }

    /// The file the current task maps at user site `index`'s address (all
    /// registers read, for the current task). A failed lookup is counted
    /// as an error of the site's probes and taken as no file: the hit is
    /// then not served, and the run says so.
    fn mapped_at(
        &mut self,
        index: usize,
        thread: ThreadId,
        regs: Option<Registers>,
        runtime: &Mutex<Runtime>,
    ) -> Result<(Option<Registers>, Option<linux_guest::MappedFile>), String> {
        let r = match regs {
            Some(r) => r,
            None => self
                .client
                .read_registers(thread)
                .map_err(|e| e.to_string())?,
        };
        let addr = self.sites[index].addr;
        let found = match self.kernel.clone() {
            Some(kernel) => {
                let mut view = crate::context::StopView::new(&mut self.client, &r);
                kernel.mapped_file(&mut view, addr)
            }
            None => Err(linux_guest::GuestError::Missing("uprobes", "guest kernel")),
        };
        if let Some(why) = self.client.lost() {
            return Err(why.to_string());
        }
        match found {
            Ok(m) => Ok((Some(r), m)),
            Err(e) => {
                let site = &self.sites[index];
                let errors: Vec<(String, String, u64)> = site
                    .user
                    .iter()
                    .map(|u| {
                        (
                            u.probe.to_string(),
                            format!("finding the file mapped at {addr:#x}: {e}"),
                            1,
                        )
                    })
                    .collect();
                lock(runtime).interpreter_mut().add_errors(&errors);
                Ok((Some(r), None))
            }
        }
    }

    /// Runs the entry (or return) handlers of site `index` at a stop of
    /// `thread` (`only`: these of them): their flow, the registers they
    /// read, what they traced, and, for a recorder that wants tasks, the
    /// task when they traced something (or `thread_always`).
    #[allow(clippy::too_many_arguments)]
    fn run_site(
        &mut self,
        index: usize,
        at: At,
        thread: ThreadId,
        regs: Option<Registers>,
        runtime: &Mutex<Runtime>,
        received: u64,
        only: Option<Vec<(BlockId, Arc<str>)>>,
        thread_always: bool,
    ) -> Result<SiteRun, String> {
        let site = &self.sites[index];
        let (all, entry_args) = match at {
            At::Return(args) => (&site.ret_handlers, args),
            At::Entry => (&site.handlers, None),
        };
        let handlers = only.as_ref().unwrap_or(all);
        let event = match at {
            At::Entry => self.event_record.take(),
            At::Return(_) => None,
        };
        let mut ctx = HitContext::at_stop(
            &mut self.client,
            self.kernel.as_deref(),
            &self.name,
            Some(thread),
            regs,
            received,
            &site.func,
        );
        ctx.entry_args = entry_args;
        ctx.user_symbols = self.user_symbols.as_deref();
        ctx.event = event;
        let flow = ctx.run_all(runtime, handlers)?;
        let wanted = self.recorder.is_some()
            && self.record_threads
            && (thread_always || !ctx.traced.is_empty());
        let guest_thread = if wanted { ctx.thread() } else { None };
        Ok((
            flow,
            ctx.regs.take(),
            std::mem::take(&mut ctx.traced),
            guest_thread,
        ))
    }
}

/// Which handlers of a site a stop runs: the entry's, or the return's with
/// the argument registers captured at the entry (`kretfunc`'s `args`).
#[derive(Clone, Copy)]
enum At {
    Entry,
    Return(Option<[u64; 6]>),
}
