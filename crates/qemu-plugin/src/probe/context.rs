//! What a handler sees when it runs inside QEMU: the vCPU that is about to
//! execute the probed instruction, its registers read through the plugin
//! API and its memory read in its own address space.

use crate::tcg::{Reg as TcgReg, Vcpu};
use linux_guest::{GuestError, GuestKernel, GuestMemory, Reg, VcpuRegisters};
use probe_runtime::{ContextError, ProbeContext, Traced};

/// x86-64 System V argument registers, in order.
const ARG_REGS: [TcgReg; 6] = [
    TcgReg::Rdi,
    TcgReg::Rsi,
    TcgReg::Rdx,
    TcgReg::Rcx,
    TcgReg::R8,
    TcgReg::R9,
];

/// The vCPU as `linux-guest` reads it.
pub(crate) struct VcpuView<'a, 'v>(pub &'a mut Vcpu<'v>);

impl VcpuRegisters for VcpuView<'_, '_> {
    fn get(&mut self, reg: Reg) -> Option<u64> {
        self.0.reg_id(tcg_reg(reg))
    }
}

impl GuestMemory for VcpuView<'_, '_> {
    fn read(&mut self, addr: u64, buf: &mut [u8]) -> Result<(), GuestError> {
        if self.0.read_memory(addr, buf) {
            Ok(())
        } else {
            Err(GuestError::Memory {
                addr,
                reason: "not mapped in the vCPU's address space".into(),
            })
        }
    }
    // No physical reads: QEMU 10.0's plugin API (version 4) has none, so
    // the default says so; vmprobe refuses programs that need them before
    // attaching.
}

fn tcg_reg(reg: Reg) -> TcgReg {
    match reg {
        Reg::Rip => TcgReg::Rip,
        Reg::Rsp => TcgReg::Rsp,
        Reg::Rbp => TcgReg::Rbp,
        Reg::Rdi => TcgReg::Rdi,
        Reg::Rdx => TcgReg::Rdx,
        Reg::R10 => TcgReg::R10,
        Reg::R13 => TcgReg::R13,
        Reg::Cs => TcgReg::Cs,
        Reg::GsBase => TcgReg::GsBase,
        Reg::KGsBase => TcgReg::KGsBase,
        Reg::Cr3 => TcgReg::Cr3,
        Reg::Cr4 => TcgReg::Cr4,
    }
}

pub(crate) struct VcpuContext<'a, 'v> {
    pub vcpu: &'a mut Vcpu<'v>,
    pub kernel: &'a GuestKernel,
    pub guest: &'a str,
    pub nsecs: u64,
    pub func: &'a str,
    pub probe: &'a str,
    /// The current task, once looked up in this hit.
    pub task: Option<u64>,
    /// What `trace()`/`snapshot()` calls asked for, with the probe.
    pub traced: Vec<(Box<str>, Traced)>,
    /// At a `kretfunc` return: the argument registers captured at the
    /// call's entry, which `args` reads instead of the clobbered registers.
    pub entry_args: Option<[u64; 6]>,
    /// At a guest tracepoint's hit: the record its emulated code wrote.
    pub event: Option<&'a (
        std::sync::Arc<kernel_tracepoints::EventRecipe>,
        kernel_tracepoints::Record,
    )>,
}

impl VcpuContext<'_, '_> {
    fn reg(&mut self, r: TcgReg) -> Result<u64, ContextError> {
        self.vcpu
            .reg_id(r)
            .ok_or_else(|| ContextError::Register(format!("QEMU lists no register '{}'", r.name())))
    }

    fn task(&mut self) -> Result<u64, ContextError> {
        if let Some(t) = self.task {
            return Ok(t);
        }
        let t = self
            .kernel
            .current_task(&mut VcpuView(self.vcpu))
            .map_err(ContextError::from)?;
        self.task = Some(t);
        Ok(t)
    }

    fn of_current_task<T>(
        &mut self,
        read: impl FnOnce(&GuestKernel, &mut dyn GuestMemory, u64) -> Result<T, GuestError>,
    ) -> Result<T, ContextError> {
        let task = self.task()?;
        read(self.kernel, &mut VcpuView(self.vcpu), task).map_err(ContextError::from)
    }
}

impl ProbeContext for VcpuContext<'_, '_> {
    fn arg(&mut self, n: u8) -> Result<u64, ContextError> {
        if let Some(args) = self.entry_args
            && let Some(&v) = args.get(n as usize)
        {
            return Ok(v);
        }
        let r = *ARG_REGS.get(n as usize).ok_or_else(|| {
            ContextError::Unavailable(format!("arg{n}: only arg0..arg5 are passed in registers"))
        })?;
        self.reg(r)
    }

    fn retval(&mut self) -> Result<u64, ContextError> {
        self.reg(TcgReg::Rax)
    }

    fn register(&mut self, name: &str) -> Result<u64, ContextError> {
        self.vcpu
            .reg(name)
            .ok_or_else(|| ContextError::Register(format!("QEMU lists no register '{name}'")))
    }

    fn probe_arg(&mut self, name: &str) -> Result<probe_lang::value::Value, ContextError> {
        match self.event {
            Some((recipe, record)) => probe_runtime::guest_event_arg(recipe, record, name),
            None => Err(ContextError::Unavailable(format!(
                "args.{name} is not supported by this probe context"
            ))),
        }
    }

    fn vcpu(&self) -> u32 {
        self.vcpu.index()
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
        if self.vcpu.read_memory(addr, buf) {
            Ok(())
        } else {
            Err(ContextError::Memory {
                addr,
                reason: "not mapped in the vCPU's address space".into(),
            })
        }
    }

    fn kaddr(&self, name: &str) -> Option<u64> {
        self.kernel.kaddr(name)
    }

    fn ksym(&self, addr: u64) -> Option<(String, u64)> {
        self.kernel.ksym(addr)
    }

    fn kstack(&mut self, limit: usize) -> Result<Vec<u64>, ContextError> {
        self.kernel
            .kstack(&mut VcpuView(self.vcpu), limit)
            .map_err(ContextError::from)
    }

    fn curtask(&mut self) -> Result<u64, ContextError> {
        self.task()
    }

    fn comm(&mut self) -> Result<String, ContextError> {
        self.of_current_task(|k, m, t| k.comm(m, t))
    }

    fn pid(&mut self) -> Result<u64, ContextError> {
        self.of_current_task(|k, m, t| k.tgid(m, t).map(u64::from))
    }

    fn tid(&mut self) -> Result<u64, ContextError> {
        self.of_current_task(|k, m, t| k.pid(m, t).map(u64::from))
    }

    fn cgroup(&mut self) -> Result<u64, ContextError> {
        self.of_current_task(|k, m, t| k.cgroup_id(m, t))
    }

    fn cgroup_path(&mut self, id: u64) -> Result<Option<String>, ContextError> {
        self.kernel
            .cgroup_path(&mut VcpuView(self.vcpu), id)
            .map_err(ContextError::from)
    }

    fn guest(&self) -> &str {
        self.guest
    }

    fn vtop(&mut self, cr3: u64, vaddr: u64) -> Result<u64, ContextError> {
        linux_guest::vtop(&mut VcpuView(self.vcpu), Some(self.kernel), cr3, vaddr)
            .map_err(|e| ContextError::Guest(format!("vtop: {e}")))
    }

    fn read_task_memory(
        &mut self,
        task: u64,
        addr: u64,
        buf: &mut [u8],
    ) -> Result<(), ContextError> {
        self.kernel
            .read_task_memory(&mut VcpuView(self.vcpu), task, addr, buf)
            .map_err(|e| linux_guest::task_read_error(task, addr, e))
    }

    fn ustack(&mut self, limit: usize) -> Result<Vec<u64>, ContextError> {
        let in_user = self.reg(TcgReg::Cs)? & 3 == 3;
        let task = if in_user { None } else { Some(self.task()?) };
        self.kernel
            .ustack(&mut VcpuView(self.vcpu), task, limit)
            .map_err(ContextError::from)
    }

    fn trace(&mut self, what: Traced) -> Result<(), ContextError> {
        self.traced.push((self.probe.into(), what));
        Ok(())
    }
}
