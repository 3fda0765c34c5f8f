//! What vmprobe knows of the guest kernel beyond its symbols: the layout of
//! its task structure (from BTF), its unwind tables (ORC), and how to find
//! the current task on a stopped vCPU. All of it comes from the kernel
//! image; the guest is only read, through the stub, with bounded reads.
//!
//! Linux-specific (x86-64): `current_task` is a per-CPU variable reached
//! through the GS base; task fields come from `struct task_struct`.
//! Everything else in the engine is OS-independent.

use gdb_remote::{Client, Registers, ThreadId};
use kernel_btf::Btf;
use kernel_image::{KernelSections, KernelSymbols};
use kernel_unwind::{OrcTable, Regs};
use std::sync::Arc;

/// The image sections this module reads.
pub const SECTIONS: [&str; 3] = [".BTF", ".orc_unwind_ip", ".orc_unwind"];

/// Deepest kernel stack unwound (bpftrace's default for kstack is 127).
pub const MAX_STACK: usize = 127;

/// Offsets inside `struct task_struct`, from BTF.
#[derive(Clone, Copy, Debug)]
struct TaskLayout {
    comm: u64,
    pid: u64,
    tgid: u64,
}

/// The guest kernel as the engine sees it. Parsed once per image; each
/// guest gets a copy with its own KASLR slide ([`GuestKernel::with_slide`])
/// that shares the parsed tables.
#[derive(Clone)]
pub struct GuestKernel {
    pub symbols: Arc<KernelSymbols>,
    pub slide: u64,
    btf: Option<Arc<Btf>>,
    orc: Option<Arc<OrcTable>>,
    task: Option<TaskLayout>,
    /// Per-CPU offset of `current_task` (not moved by KASLR).
    current_task: Option<u64>,
}

#[derive(Debug, thiserror::Error)]
pub enum GuestError {
    #[error("{0} is not available: the kernel image has no {1}")]
    Missing(&'static str, &'static str),
    #[error("the stub reports no register '{0}'")]
    Register(&'static str),
    #[error("no current task: GS base {0:#x} is not a kernel per-CPU area")]
    NoCurrentTask(u64),
    #[error("reading guest memory at {addr:#x}: {reason}")]
    Memory { addr: u64, reason: String },
}

impl GuestKernel {
    pub fn new(symbols: Arc<KernelSymbols>, slide: u64, sections: Option<&KernelSections>) -> Self {
        let btf = sections
            .and_then(|s| s.get(".BTF"))
            .and_then(|s| Btf::parse(&s.data).ok());
        let orc = sections.and_then(|s| {
            let ip = s.get(".orc_unwind_ip")?;
            let orc = s.get(".orc_unwind")?;
            OrcTable::parse(&ip.data, ip.addr, &orc.data).ok()
        });
        let task = btf.as_ref().and_then(|btf| {
            let t = btf.struct_by_name("task_struct")?;
            let off = |name: &str| Some(btf.member(t, name).ok()??.offset);
            Some(TaskLayout {
                comm: off("comm")?,
                pid: off("pid")?,
                tgid: off("tgid")?,
            })
        });
        let current_task = symbols.lookup("current_task").map(|s| s.addr);
        GuestKernel {
            symbols,
            slide,
            btf: btf.map(Arc::new),
            orc: orc.map(Arc::new),
            task,
            current_task,
        }
    }

    /// The same kernel, running with this KASLR slide.
    pub fn with_slide(&self, slide: u64) -> GuestKernel {
        GuestKernel {
            slide,
            ..self.clone()
        }
    }

    pub fn btf(&self) -> Option<&Btf> {
        self.btf.as_deref()
    }

    /// The kernel's types for [`probe_lang::compile_with_types`].
    pub fn types(&self) -> Option<crate::BtfTypes<'_>> {
        self.btf.as_deref().map(crate::BtfTypes::new)
    }

    /// `func+off` (decimal offset, as bpftrace prints kernel frames), or the
    /// address in hex when no symbol covers it.
    pub fn symbolize(&self, addr: u64) -> String {
        match self.symbols.symbolize(addr.wrapping_sub(self.slide)) {
            Some((sym, 0)) => sym.name.clone(),
            Some((sym, off)) => format!("{}+{off}", sym.name),
            None => format!("{addr:#x}"),
        }
    }

    /// The `task_struct` running on the vCPU `regs` were read from.
    pub fn current_task(&self, client: &mut Client, regs: &Registers) -> Result<u64, GuestError> {
        let offset = self
            .current_task
            .ok_or(GuestError::Missing("curtask", "current_task symbol"))?;
        // In kernel mode after swapgs the GS base is the CPU's per-CPU area;
        // stopped in user mode (or before swapgs) the kernel's value waits
        // in KERNEL_GS_BASE. A kernel address tells which one is live.
        let gs = regs.get("gs_base").ok_or(GuestError::Register("gs_base"))?;
        let base = if is_kernel_address(gs) {
            gs
        } else {
            let k = regs
                .get("k_gs_base")
                .ok_or(GuestError::Register("k_gs_base"))?;
            if !is_kernel_address(k) {
                return Err(GuestError::NoCurrentTask(gs));
            }
            k
        };
        read_u64(client, base.wrapping_add(offset))
    }

    fn layout(&self) -> Result<TaskLayout, GuestError> {
        self.task.ok_or(GuestError::Missing(
            "task fields",
            ".BTF with struct task_struct",
        ))
    }

    /// `task->comm`, up to its NUL.
    pub fn comm(&self, client: &mut Client, task: u64) -> Result<String, GuestError> {
        let mut buf = [0u8; 16];
        read(client, task.wrapping_add(self.layout()?.comm), &mut buf)?;
        let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
        Ok(String::from_utf8_lossy(&buf[..end]).into_owned())
    }

    /// `task->tgid`: what user space (and bpftrace's `pid`) calls the pid.
    pub fn tgid(&self, client: &mut Client, task: u64) -> Result<u32, GuestError> {
        read_u32(client, task.wrapping_add(self.layout()?.tgid))
    }

    /// `task->pid`: the thread id (bpftrace's `tid`).
    pub fn pid(&self, client: &mut Client, task: u64) -> Result<u32, GuestError> {
        read_u32(client, task.wrapping_add(self.layout()?.pid))
    }

    /// The kernel stack at a stop, innermost frame first, unwound with the
    /// kernel's own ORC tables. Bounded in frames and reads; a corrupt stack
    /// ends the walk with what was found.
    pub fn kstack(
        &self,
        client: &mut Client,
        regs: &Registers,
        max_frames: usize,
    ) -> Result<Vec<u64>, GuestError> {
        let orc = self
            .orc
            .as_ref()
            .ok_or(GuestError::Missing("kstack", "ORC unwind tables"))?;
        let get = |name: &'static str| regs.get(name).ok_or(GuestError::Register(name));
        // Stopped in user space: no kernel stack (bpftrace's kstack is
        // empty there too).
        if !is_kernel_address(get("rip")?) {
            return Ok(Vec::new());
        }
        let mut start = Regs::new(get("rip")?, get("rsp")?, get("rbp")?);
        start.r10 = regs.get("r10");
        start.r13 = regs.get("r13");
        start.rdi = regs.get("rdi");
        start.rdx = regs.get("rdx");
        let mut reader = kernel_unwind::CachedReader::new(
            |addr: u64, buf: &mut [u8]| client.read_memory(addr, buf),
            256,
        );
        Ok(orc.unwind(
            start,
            &mut |addr, buf| reader.read(addr, buf),
            self.slide,
            max_frames.min(MAX_STACK),
        ))
    }
}

/// Canonical upper-half addresses belong to the kernel on x86-64.
fn is_kernel_address(addr: u64) -> bool {
    addr >= 0xffff_8000_0000_0000
}

fn read(client: &mut Client, addr: u64, buf: &mut [u8]) -> Result<(), GuestError> {
    client
        .read_memory(addr, buf)
        .map_err(|e| GuestError::Memory {
            addr,
            reason: e.to_string(),
        })
}

fn read_u64(client: &mut Client, addr: u64) -> Result<u64, GuestError> {
    let mut b = [0u8; 8];
    read(client, addr, &mut b)?;
    Ok(u64::from_le_bytes(b))
}

fn read_u32(client: &mut Client, addr: u64) -> Result<u32, GuestError> {
    let mut b = [0u8; 4];
    read(client, addr, &mut b)?;
    Ok(u32::from_le_bytes(b))
}

/// Reads the registers of `thread` (for callers without a hit context).
pub fn registers(client: &mut Client, thread: ThreadId) -> Result<Registers, gdb_remote::Error> {
    client.read_registers(thread)
}
