//! What a handler sees at a stop: registers fetched lazily from the stub
//! (one `g` for all of them), memory read through it, and the guest
//! kernel's view of the current task.

use gdb_remote::{Client, Registers, ThreadId};
use linux_guest::{GuestError, GuestKernel, GuestMemory, PhysReader, Reg, VcpuRegisters};
use probe_engine::GuestThread;
use probe_lang::BlockId;
use probe_runtime::{ContextError, Flow, ProbeContext, Runtime, Traced};
use std::sync::{Arc, Mutex};

/// x86-64 System V argument registers, in order.
const ARG_REGS: [&str; 6] = ["rdi", "rsi", "rdx", "rcx", "r8", "r9"];

/// The stub as the guest's memory, as `linux-guest` reads it.
pub struct StubMemory<'a>(pub &'a mut Client);

impl GuestMemory for StubMemory<'_> {
    fn read(&mut self, addr: u64, buf: &mut [u8]) -> Result<(), GuestError> {
        self.0.read_memory(addr, buf).map_err(|e| match e {
            // The stub's error reply: the guest faulted on the read.
            gdb_remote::Error::ErrorReply { .. } => GuestError::Memory {
                addr,
                reason: e.to_string(),
            },
            e => GuestError::Transport(format!("read at {addr:#x}: {e}")),
        })
    }

    fn with_physical(&mut self, f: &mut dyn FnMut(&mut PhysReader<'_>)) -> Result<(), GuestError> {
        self.0
            .with_physical(|m| f(&mut |a, b| m.read(a, b).map_err(|e| e.to_string())))
            .map_err(|e| GuestError::Physical(e.to_string()))
    }
}

/// A stopped vCPU as `linux-guest` reads it: the registers read from the
/// stub at this stop, and memory through the stub.
pub struct StopView<'a> {
    pub memory: StubMemory<'a>,
    pub regs: &'a Registers,
}

impl<'a> StopView<'a> {
    pub fn new(client: &'a mut Client, regs: &'a Registers) -> Self {
        StopView {
            memory: StubMemory(client),
            regs,
        }
    }
}

impl VcpuRegisters for StopView<'_> {
    fn get(&mut self, reg: Reg) -> Option<u64> {
        self.regs.get(reg.gdb_name())
    }
}

impl GuestMemory for StopView<'_> {
    fn read(&mut self, addr: u64, buf: &mut [u8]) -> Result<(), GuestError> {
        self.memory.read(addr, buf)
    }

    fn with_physical(&mut self, f: &mut dyn FnMut(&mut PhysReader<'_>)) -> Result<(), GuestError> {
        self.memory.with_physical(f)
    }
}

pub(crate) struct HitContext<'a> {
    pub client: &'a mut Client,
    /// The stopped vCPU; `None` for a timer firing on a stop with no thread.
    pub thread: Option<ThreadId>,
    pub regs: Option<Registers>,
    pub vcpu: u32,
    pub nsecs: u64,
    pub func: &'a str,
    pub probe: &'a str,
    pub kernel: Option<&'a GuestKernel>,
    pub guest: &'a str,
    /// The current task, once looked up in this hit.
    pub task: Option<u64>,
    /// What this hit's `trace()`/`snapshot()` calls asked for, with the
    /// probe that asked; the session hands it to the recorder.
    pub traced: Vec<(Box<str>, Traced)>,
    /// At a `kretfunc` return: the argument registers captured at the
    /// call's entry, which `args` reads instead of the clobbered registers.
    pub entry_args: Option<[u64; 6]>,
    /// Symbols of the user files the program's uprobes name (`ustack`).
    pub user_symbols: Option<&'a probe_plan::UserSymbols>,
    /// At a guest tracepoint's hit: the record its emulated code wrote.
    pub event: Option<(
        Arc<kernel_tracepoints::EventRecipe>,
        kernel_tracepoints::Record,
    )>,
}

impl<'a> HitContext<'a> {
    /// The view of a stop of `thread` (registers fetched on first use,
    /// unless already read).
    pub fn at_stop(
        client: &'a mut Client,
        kernel: Option<&'a GuestKernel>,
        guest: &'a str,
        thread: Option<ThreadId>,
        regs: Option<Registers>,
        nsecs: u64,
        func: &'a str,
    ) -> Self {
        HitContext {
            client,
            thread,
            regs,
            vcpu: thread.map_or(0, crate::vcpu_index),
            nsecs,
            func,
            probe: "",
            kernel,
            guest,
            task: None,
            traced: Vec::new(),
            entry_args: None,
            user_symbols: None,
            event: None,
        }
    }

    /// Runs each handler with this view, holding the shared runtime only
    /// while one runs. `Exit` if any called `exit()`; an error if the
    /// connection to the stub broke under a handler, which ends the VM's
    /// run (the handler's error is counted as well).
    pub fn run_all(
        &mut self,
        runtime: &Mutex<Runtime>,
        handlers: &'a [(BlockId, Arc<str>)],
    ) -> Result<Flow, String> {
        // Others wait on the runtime while a handler runs, so a stub late
        // with a reply fails the read at the reply timeout; the session
        // waits for that reply afterwards.
        self.client.set_stalls_deferred(true);
        let flow = probe_engine::run_handlers(self, runtime, handlers, |c, p| c.probe = p);
        self.client.set_stalls_deferred(false);
        match self.client.lost() {
            Some(why) => Err(why.to_string()),
            None => Ok(flow),
        }
    }

    /// A stub error as a handler sees it: [`ContextError::Lost`] once the
    /// connection is broken (the session then ends this VM's run), else
    /// what `class` makes of it.
    fn stub_error(
        &self,
        e: gdb_remote::Error,
        class: impl FnOnce(String) -> ContextError,
    ) -> ContextError {
        match self.client.lost() {
            Some(_) => ContextError::Lost(e.to_string()),
            None => class(e.to_string()),
        }
    }

    /// An introspection error, or [`ContextError::Lost`] if the stub broke
    /// under it.
    fn guest_error(&self, e: GuestError) -> ContextError {
        match self.client.lost() {
            Some(why) => ContextError::Lost(why.to_string()),
            None => e.into(),
        }
    }

    fn kernel(&self, what: &str) -> Result<&'a GuestKernel, ContextError> {
        self.kernel.ok_or_else(|| {
            ContextError::Unavailable(format!(
                "{what}: no guest kernel information in {}",
                self.probe
            ))
        })
    }

    /// The stub and the registers of this stop (fetched once per hit), as
    /// `linux-guest` reads them.
    fn stopped(&mut self) -> Result<StopView<'_>, ContextError> {
        self.registers()?;
        let regs = self.regs.as_ref().expect("fetched above");
        Ok(StopView::new(self.client, regs))
    }

    /// All registers (one `g`), fetched once per hit.
    fn registers(&mut self) -> Result<&Registers, ContextError> {
        if self.regs.is_none() {
            let Some(thread) = self.thread else {
                return Err(ContextError::Unavailable(format!(
                    "no registers in {}",
                    self.probe
                )));
            };
            // One `g` fetches every register: cheaper than a `p` per register
            // as soon as a handler reads two of them.
            let regs = match self.client.read_registers(thread) {
                Ok(regs) => regs,
                Err(e) => return Err(self.stub_error(e, ContextError::Register)),
            };
            self.regs = Some(regs);
        }
        Ok(self.regs.as_ref().expect("fetched above"))
    }

    fn get_register(&mut self, name: &str) -> Result<u64, ContextError> {
        self.registers()?
            .get(name)
            .ok_or_else(|| ContextError::Register(format!("the stub has no register '{name}'")))
    }

    fn task(&mut self) -> Result<u64, ContextError> {
        if let Some(t) = self.task {
            return Ok(t);
        }
        let kernel = self.kernel("curtask")?;
        let mut cpu = self.stopped()?;
        let t = kernel.current_task(&mut cpu);
        let t = t.map_err(|e| self.guest_error(e))?;
        self.task = Some(t);
        Ok(t)
    }

    /// The current task as a recording names it, `None` if it cannot be
    /// read. Through the stub: a `g` unless this stop's registers were
    /// read, an `m` for the current task unless a handler found it, and
    /// one `m` for its tgid, pid and comm.
    pub fn thread(&mut self) -> Option<GuestThread> {
        let task = self.task().ok()?;
        let ids = self.kernel?.task_ids(&mut StubMemory(self.client), task);
        let ids = ids.ok()?;
        Some(GuestThread {
            pid: ids.tgid,
            tid: ids.pid,
            comm: ids.comm,
        })
    }

    /// Something the guest kernel knows of the current task (`comm`,
    /// `pid`, ...).
    fn of_current_task<T>(
        &mut self,
        what: &str,
        read: impl FnOnce(&GuestKernel, &mut dyn GuestMemory, u64) -> Result<T, GuestError>,
    ) -> Result<T, ContextError> {
        let task = self.task()?;
        let kernel = self.kernel(what)?;
        let read = read(kernel, &mut StubMemory(self.client), task);
        read.map_err(|e| self.guest_error(e))
    }
}

impl ProbeContext for HitContext<'_> {
    fn arg(&mut self, n: u8) -> Result<u64, ContextError> {
        if let Some(args) = self.entry_args
            && let Some(&v) = args.get(n as usize)
        {
            return Ok(v);
        }
        let reg = ARG_REGS.get(n as usize).ok_or_else(|| {
            ContextError::Unavailable(format!("arg{n}: only arg0..arg5 are passed in registers"))
        })?;
        self.get_register(reg)
    }

    fn retval(&mut self) -> Result<u64, ContextError> {
        self.get_register("rax")
    }

    fn register(&mut self, name: &str) -> Result<u64, ContextError> {
        self.get_register(name)
    }

    fn probe_arg(&mut self, name: &str) -> Result<probe_lang::value::Value, ContextError> {
        match &self.event {
            Some((recipe, record)) => probe_runtime::guest_event_arg(recipe, record, name),
            None => Err(ContextError::Unavailable(format!(
                "args.{name} is not supported by this probe context"
            ))),
        }
    }

    fn kaddr(&self, name: &str) -> Option<u64> {
        self.kernel?.kaddr(name)
    }

    fn ksym(&self, addr: u64) -> Option<(String, u64)> {
        self.kernel?.ksym(addr)
    }

    fn kstack(&mut self, limit: usize) -> Result<Vec<u64>, ContextError> {
        let kernel = self.kernel("kstack")?;
        let mut cpu = self.stopped()?;
        let stack = kernel.kstack(&mut cpu, limit);
        stack.map_err(|e| self.guest_error(e))
    }

    fn curtask(&mut self) -> Result<u64, ContextError> {
        self.task()
    }

    fn vtop(&mut self, cr3: u64, vaddr: u64) -> Result<u64, ContextError> {
        let kernel = self.kernel;
        let mut cpu = self.stopped()?;
        let paddr = linux_guest::vtop(&mut cpu, kernel, cr3, vaddr);
        paddr.map_err(|e| match self.client.lost() {
            Some(why) => ContextError::Lost(why.to_string()),
            None => ContextError::Guest(format!("vtop: {e}")),
        })
    }

    fn read_task_memory(
        &mut self,
        task: u64,
        addr: u64,
        buf: &mut [u8],
    ) -> Result<(), ContextError> {
        let kernel = self.kernel("reading another task's memory")?;
        let mut cpu = self.stopped()?;
        let read = kernel.read_task_memory(&mut cpu, task, addr, buf);
        read.map_err(|e| match self.client.lost() {
            Some(why) => ContextError::Lost(why.to_string()),
            None => linux_guest::task_read_error(task, addr, e),
        })
    }

    fn ustack(&mut self, limit: usize) -> Result<Vec<u64>, ContextError> {
        let kernel = self.kernel("ustack")?;
        // The task (for its saved user registers) only matters when the
        // vCPU stopped in the kernel.
        let in_user = self.registers()?.get("cs").is_some_and(|cs| cs & 3 == 3);
        let task = if in_user { None } else { Some(self.task()?) };
        let mut cpu = self.stopped()?;
        let stack = kernel.ustack(&mut cpu, task, limit);
        stack.map_err(|e| self.guest_error(e))
    }

    fn usym(&mut self, addr: u64) -> Option<(String, u64)> {
        let symbols = self.user_symbols.filter(|s| !s.is_empty())?;
        let kernel = self.kernel?;
        let mut cpu = self.stopped().ok()?;
        // The file the task maps at the frame, if its symbols are known.
        let mapped = kernel.mapped_file(&mut cpu, addr).ok()??;
        symbols
            .knows(&mapped.path)
            .then(|| symbols.symbolize_mapped(&mapped.path, addr, mapped.file_offset))?
    }

    fn comm(&mut self) -> Result<String, ContextError> {
        self.of_current_task("comm", |k, m, t| k.comm(m, t))
    }

    fn pid(&mut self) -> Result<u64, ContextError> {
        self.of_current_task("pid", |k, m, t| k.tgid(m, t).map(u64::from))
    }

    fn tid(&mut self) -> Result<u64, ContextError> {
        self.of_current_task("tid", |k, m, t| k.pid(m, t).map(u64::from))
    }

    fn cgroup(&mut self) -> Result<u64, ContextError> {
        self.of_current_task("cgroup", |k, m, t| k.cgroup_id(m, t))
    }

    fn cgroup_path(&mut self, id: u64) -> Result<Option<String>, ContextError> {
        let kernel = self.kernel("cgroup_path")?;
        let path = kernel.cgroup_path(&mut StubMemory(self.client), id);
        path.map_err(|e| self.guest_error(e))
    }

    fn guest(&self) -> &str {
        self.guest
    }

    fn trace(&mut self, what: Traced) -> Result<(), ContextError> {
        self.traced.push((self.probe.into(), what));
        Ok(())
    }

    fn vcpu(&self) -> u32 {
        self.vcpu
    }

    fn nsecs(&self) -> u64 {
        self.nsecs
    }

    fn func(&self) -> &str {
        self.func
    }

    fn probe(&self) -> &str {
        self.probe
    }

    fn read_memory(&mut self, addr: u64, buf: &mut [u8]) -> Result<(), ContextError> {
        match self.client.read_memory(addr, buf) {
            Ok(()) => Ok(()),
            // The stub's error reply: the guest faulted on the read.
            Err(e @ gdb_remote::Error::ErrorReply { .. }) => Err(ContextError::Memory {
                addr,
                reason: e.to_string(),
            }),
            Err(e) => Err(self.stub_error(e, |reason| {
                ContextError::Guest(format!("read at {addr:#x}: {reason}"))
            })),
        }
    }
}
