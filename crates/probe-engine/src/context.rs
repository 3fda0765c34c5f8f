//! What a handler sees at a hit: registers fetched lazily from the stub.

use crate::guest::{GuestError, GuestKernel};
use crate::layers::LayerValue;
use gdb_remote::{Client, Registers, ThreadId};
use probe_lang::BlockId;
use probe_runtime::{ContextError, Flow, ProbeContext, Runtime, Traced};
use std::sync::{Arc, Mutex};

/// x86-64 System V argument registers, in order.
const ARG_REGS: [&str; 6] = ["rdi", "rsi", "rdx", "rcx", "r8", "r9"];

pub(crate) struct HitContext<'a> {
    pub client: Option<&'a mut Client>,
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
    /// A VMM or host event's fields (`args.NAME` in its probe's block).
    pub fields: Option<&'a [(String, LayerValue)]>,
    /// What this hit's `trace()`/`snapshot()` calls asked for, with the
    /// probe that asked; the session hands it to the recorder.
    pub traced: Vec<(Box<str>, Traced)>,
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
            client: Some(client),
            thread,
            regs,
            // QEMU numbers vCPU threads from 1; scripts see vCPUs from 0.
            vcpu: thread.map_or(0, |t| t.tid.saturating_sub(1) as u32),
            nsecs,
            func,
            probe: "",
            kernel,
            guest,
            task: None,
            fields: None,
            traced: Vec::new(),
        }
    }

    /// Runs each handler with this view, holding the shared runtime only
    /// while one runs. `Exit` if any called `exit()`.
    pub fn run_all(
        &mut self,
        runtime: &Mutex<Runtime>,
        handlers: &'a [(BlockId, Arc<str>)],
    ) -> Flow {
        let mut flow = Flow::Continue;
        for (block, probe) in handlers {
            self.probe = probe;
            let mut rt = runtime.lock().unwrap_or_else(|e| e.into_inner());
            if let Flow::Exit = rt.run(*block, self) {
                flow = Flow::Exit;
            }
        }
        flow
    }

    fn kernel(&self, what: &str) -> Result<&'a GuestKernel, ContextError> {
        self.kernel.ok_or_else(|| {
            ContextError::Message(format!(
                "{what}: no guest kernel information in {}",
                self.probe
            ))
        })
    }

    /// The stub, for reading guest memory; none for a probe that is not a
    /// guest stop (a VMM or host event).
    fn memory(&mut self) -> Result<&mut Client, ContextError> {
        let probe = self.probe;
        self.client
            .as_deref_mut()
            .ok_or_else(|| ContextError::Message(format!("no guest memory in {probe}")))
    }

    /// Something the guest kernel knows of the current task (`comm`,
    /// `pid`, ...).
    fn of_current_task<T>(
        &mut self,
        what: &str,
        read: impl FnOnce(&GuestKernel, &mut Client, u64) -> Result<T, GuestError>,
    ) -> Result<T, ContextError> {
        let task = self.task()?;
        let kernel = self.kernel(what)?;
        let client = self.client.as_deref_mut().expect("task() needs a client");
        read(kernel, client, task).map_err(|e| ContextError::Message(e.to_string()))
    }

    /// All registers (one `g`), fetched once per hit.
    fn registers(&mut self) -> Result<&Registers, ContextError> {
        if self.regs.is_none() {
            self.get_register("rip")?;
        }
        Ok(self.regs.as_ref().expect("fetched above"))
    }

    /// The stub and the registers of this stop (fetched once per hit).
    fn stopped(&mut self) -> Result<(&mut Client, &Registers), ContextError> {
        self.registers()?;
        match (self.client.as_deref_mut(), self.regs.as_ref()) {
            (Some(client), Some(regs)) => Ok((client, regs)),
            _ => Err(ContextError::Message("no guest in this probe".into())),
        }
    }

    fn task(&mut self) -> Result<u64, ContextError> {
        if let Some(t) = self.task {
            return Ok(t);
        }
        let kernel = self.kernel("curtask")?;
        let (client, regs) = self.stopped()?;
        let t = kernel
            .current_task(client, regs)
            .map_err(|e| ContextError::Message(e.to_string()))?;
        self.task = Some(t);
        Ok(t)
    }

    fn get_register(&mut self, name: &str) -> Result<u64, ContextError> {
        if self.regs.is_none() {
            let (Some(client), Some(thread)) = (self.client.as_deref_mut(), self.thread) else {
                return Err(ContextError::Message(format!(
                    "no registers in {}",
                    self.probe
                )));
            };
            // One `g` fetches every register: cheaper than a `p` per register
            // as soon as a handler reads two of them.
            let regs = client
                .read_registers(thread)
                .map_err(|e| ContextError::Message(e.to_string()))?;
            self.regs = Some(regs);
        }
        let regs = self.regs.as_ref().expect("fetched above");
        regs.get(name)
            .ok_or_else(|| ContextError::Message(format!("the stub has no register '{name}'")))
    }
}

impl ProbeContext for HitContext<'_> {
    fn arg(&mut self, n: u8) -> Result<u64, ContextError> {
        let reg = ARG_REGS.get(n as usize).ok_or_else(|| {
            ContextError::Message(format!("arg{n}: only arg0..arg5 are passed in registers"))
        })?;
        self.get_register(reg)
    }

    fn retval(&mut self) -> Result<u64, ContextError> {
        self.get_register("rax")
    }

    fn register(&mut self, name: &str) -> Result<u64, ContextError> {
        self.get_register(name)
    }

    fn kaddr(&self, name: &str) -> Option<u64> {
        let k = self.kernel?;
        k.symbols.lookup(name).map(|s| s.addr.wrapping_add(k.slide))
    }

    fn ksym(&self, addr: u64) -> Option<(String, u64)> {
        let k = self.kernel?;
        k.symbols
            .symbolize(addr.wrapping_sub(k.slide))
            .map(|(s, off)| (s.name.clone(), off))
    }

    fn kstack(&mut self, limit: usize) -> Result<Vec<u64>, ContextError> {
        let kernel = self.kernel("kstack")?;
        let (client, regs) = self.stopped()?;
        kernel
            .kstack(client, regs, limit)
            .map_err(|e| ContextError::Message(e.to_string()))
    }

    fn curtask(&mut self) -> Result<u64, ContextError> {
        self.task()
    }

    fn vtop(&mut self, cr3: u64, vaddr: u64) -> Result<u64, ContextError> {
        let kernel = self.kernel;
        let (client, regs) = self.stopped()?;
        crate::guest::vtop(client, regs, kernel, cr3, vaddr)
            .map_err(|e| ContextError::Message(format!("vtop: {e}")))
    }

    fn read_task_memory(
        &mut self,
        task: u64,
        addr: u64,
        buf: &mut [u8],
    ) -> Result<(), ContextError> {
        let kernel = self.kernel("reading another task's memory")?;
        let (client, regs) = self.stopped()?;
        kernel
            .read_task_memory(client, regs, task, addr, buf)
            .map_err(|e| ContextError::Message(format!("read at {addr:#x} in task {task:#x}: {e}")))
    }

    fn ustack(&mut self, limit: usize) -> Result<Vec<u64>, ContextError> {
        let kernel = self.kernel("ustack")?;
        self.registers()?;
        // The task (for its saved user registers) only matters when the
        // vCPU stopped in the kernel.
        let in_user = self
            .regs
            .as_ref()
            .and_then(|r| r.get("cs"))
            .is_some_and(|cs| cs & 3 == 3);
        let task = if in_user { None } else { Some(self.task()?) };
        let (client, regs) = self.stopped()?;
        kernel
            .ustack(client, regs, task, limit)
            .map_err(|e| ContextError::Message(e.to_string()))
    }

    fn comm(&mut self) -> Result<String, ContextError> {
        self.of_current_task("comm", |k, c, t| k.comm(c, t))
    }

    fn pid(&mut self) -> Result<u64, ContextError> {
        self.of_current_task("pid", |k, c, t| k.tgid(c, t).map(u64::from))
    }

    fn tid(&mut self) -> Result<u64, ContextError> {
        self.of_current_task("tid", |k, c, t| k.pid(c, t).map(u64::from))
    }

    fn cgroup(&mut self) -> Result<u64, ContextError> {
        self.of_current_task("cgroup", |k, c, t| k.cgroup_id(c, t))
    }

    fn cgroup_path(&mut self, id: u64) -> Result<Option<String>, ContextError> {
        let kernel = self.kernel("cgroup_path")?;
        let client = self.memory()?;
        kernel
            .cgroup_path(client, id)
            .map_err(|e| ContextError::Message(e.to_string()))
    }

    fn guest(&self) -> &str {
        self.guest
    }

    fn trace(&mut self, what: Traced) -> Result<(), ContextError> {
        self.traced.push((self.probe.into(), what));
        Ok(())
    }

    fn probe_arg(&mut self, name: &str) -> Result<probe_lang::Value, ContextError> {
        let Some(fields) = self.fields else {
            return Err(ContextError::Message(format!(
                "args.{name}: {} has no named arguments",
                self.probe
            )));
        };
        match fields.iter().find(|(n, _)| n == name) {
            Some((_, LayerValue::Int(v))) => Ok(probe_lang::Value::Int(*v)),
            Some((_, LayerValue::Str(s))) => Ok(probe_lang::Value::Str(s.as_str().into())),
            None => Err(ContextError::Message(format!(
                "args.{name}: {} has fields {}",
                self.probe,
                fields
                    .iter()
                    .map(|(n, _)| n.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))),
        }
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
        self.memory()?
            .read_memory(addr, buf)
            .map_err(|e| ContextError::Message(format!("read at {addr:#x}: {e}")))
    }
}
