//! linux-guest: what vmprobe knows of a Linux guest kernel beyond its
//! symbols: the layout of its task structure (from BTF), its unwind tables
//! (ORC), and how to find the current task on a vCPU. All of it comes from
//! the kernel image; the guest is only read, with bounded reads, through
//! [`GuestMemory`] and [`VcpuRegisters`], which each backend implements (a
//! GDB stub, or QEMU's plugin API from inside the vCPU thread). The crate
//! knows nothing of either.
//!
//! Linux-specific (x86-64): `current_task` is a per-CPU variable reached
//! through the GS base; task fields come from `struct task_struct`; a
//! task's address space is `task->mm->pgd` (a direct-map address, so its
//! physical address is `pgd - page_offset_base`); a task's user registers
//! are the `pt_regs` at the top of its kernel stack. [`vtop`] (page walks
//! from a CR3) is x86-64 but OS-independent.
//!
//! Every walk is bounded (frames, parents, tree levels, string lengths): the
//! guest is untrusted, and a cyclic list or a wild pointer ends in an error,
//! never a hang.

#![forbid(unsafe_code)]
use kernel_btf::Btf;
use kernel_image::KernelSymbols;
use kernel_unwind::{OrcTable, Regs};
use std::sync::{Arc, OnceLock};
use x86_paging::{VirtualReadError, Walker};

mod address_space;
mod cgroup;
mod handler_errors;
mod layout;
mod modules;
mod user_maps;
use address_space::reg;
pub use address_space::vtop;
use cgroup::cgroup_path_in;
pub use handler_errors::task_read_error;
pub use layout::KernelLayout;
use layout::TaskLayout;
pub use modules::LoadedModule;
pub use user_maps::{FileMapping, MappedFile};

/// The image sections this crate reads.
pub const SECTIONS: [&str; 3] = [".BTF", ".orc_unwind_ip", ".orc_unwind"];

/// The registers introspection reads, by what they are rather than by a
/// stub's or an API's name for them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reg {
    Rip,
    Rsp,
    Rbp,
    Rdi,
    Rdx,
    R10,
    R13,
    Cs,
    GsBase,
    KGsBase,
    Cr3,
    Cr4,
}

impl Reg {
    /// The register's name in GDB's x86-64 target description, which QEMU's
    /// stub and its plugin API both use.
    pub fn gdb_name(self) -> &'static str {
        match self {
            Reg::Rip => "rip",
            Reg::Rsp => "rsp",
            Reg::Rbp => "rbp",
            Reg::Rdi => "rdi",
            Reg::Rdx => "rdx",
            Reg::R10 => "r10",
            Reg::R13 => "r13",
            Reg::Cs => "cs",
            Reg::GsBase => "gs_base",
            Reg::KGsBase => "k_gs_base",
            Reg::Cr3 => "cr3",
            Reg::Cr4 => "cr4",
        }
    }
}

/// The registers of the vCPU a probe fired on.
pub trait VcpuRegisters {
    fn get(&mut self, reg: Reg) -> Option<u64>;
}

/// A vCPU a probe fired on: its registers and the memory it sees.
pub trait GuestVcpu: GuestMemory + VcpuRegisters {}

impl<T: GuestMemory + VcpuRegisters + ?Sized> GuestVcpu for T {}

/// A guest-physical reader handed out by [`GuestMemory::with_physical`].
pub type PhysReader<'a> = dyn FnMut(u64, &mut [u8]) -> Result<(), String> + 'a;

/// Guest memory as seen from the vCPU a probe fired on.
pub trait GuestMemory {
    /// Reads guest-virtual memory in the vCPU's current address space.
    fn read(&mut self, addr: u64, buf: &mut [u8]) -> Result<(), GuestError>;
    /// Runs `f` with guest-physical memory (for page walks in another
    /// address space). Backends that cannot read physical memory keep
    /// this default.
    fn with_physical(&mut self, f: &mut dyn FnMut(&mut PhysReader<'_>)) -> Result<(), GuestError> {
        let _ = f;
        Err(GuestError::NoPhysical)
    }
}

/// The ORC unwind tables as the image holds them (`.orc_unwind_ip` with its
/// link address, `.orc_unwind`): what a process that does not read the
/// image is given to unwind kernel stacks.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct OrcSections {
    pub ip: Vec<u8>,
    pub ip_addr: u64,
    pub entries: Vec<u8>,
}

/// Deepest kernel stack unwound (bpftrace's default for kstack is 127).
pub const MAX_STACK: usize = 127;

/// Deepest user stack walked (bpftrace's default for ustack).
pub const MAX_USTACK: usize = 127;

/// `THREAD_SIZE` of x86-64 Linux: 16 KiB, doubled under KASAN
/// (`KASAN_STACK_ORDER`); 6.1 puts no padding above `pt_regs`.
const THREAD_SIZE: u64 = 16 << 10;

/// What a process that cannot read the kernel image is sent to know the
/// guest kernel as vmprobe does: its symbols, layout and unwind tables.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct KernelDescription {
    pub symbols: KernelSymbols,
    pub layout: KernelLayout,
    pub orc: Option<OrcSections>,
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
    orc_sections: Option<Arc<OrcSections>>,
    layout: KernelLayout,
    /// Values of `page_offset_base` (start of the direct map, randomized
    /// by KASLR) and `max_pfn`, read from the guest once per guest.
    page_offset: Arc<OnceLock<u64>>,
    max_pfn: Arc<OnceLock<u64>>,
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
    #[error("task {0:#x} has no address space (mm is NULL: a kernel thread or an exited task)")]
    NoMm(u64),
    #[error(
        "task {task:#x}: mm->pgd {pgd:#x} is not in the direct map (page_offset_base {base:#x})"
    )]
    BadPgd { task: u64, pgd: u64, base: u64 },
    #[error("{0}")]
    Walk(#[from] x86_paging::WalkError),
    #[error("physical memory: {0}")]
    Physical(String),
    #[error("this backend cannot read guest-physical memory")]
    NoPhysical,
    #[error("corrupt kernel structure: {0}")]
    Corrupt(String),
    /// The memory could not be asked at all (the stub's connection failed
    /// or timed out), as opposed to the guest faulting on the read.
    #[error("{0}")]
    Transport(String),
}

impl GuestError {
    /// Whether the guest's own state made the read fail (an unmapped or
    /// non-canonical address, a task or page table that points nowhere):
    /// what bpftrace's `probe_read` reads as zeroes. A missing capability,
    /// symbol or connection is not.
    pub fn is_guest_fault(&self) -> bool {
        match self {
            GuestError::Memory { .. }
            | GuestError::NoMm(_)
            | GuestError::BadPgd { .. }
            | GuestError::Corrupt(_) => true,
            GuestError::Walk(w) => !matches!(w, x86_paging::WalkError::Read { .. }),
            GuestError::Missing(..)
            | GuestError::Register(_)
            | GuestError::NoCurrentTask(_)
            | GuestError::Physical(_)
            | GuestError::NoPhysical
            | GuestError::Transport(_) => false,
        }
    }
}

impl GuestKernel {
    /// The kernel of these symbols, with its `.BTF` section's bytes and its
    /// ORC tables where the image has them.
    pub fn new(
        symbols: Arc<KernelSymbols>,
        slide: u64,
        btf: Option<&[u8]>,
        orc: Option<OrcSections>,
    ) -> Self {
        let btf = btf.and_then(|b| Btf::parse(b).ok());
        let layout = KernelLayout::new(btf.as_ref(), &symbols);
        let mut kernel = GuestKernel::from_layout(symbols, slide, layout, orc);
        kernel.btf = btf.map(Arc::new);
        kernel
    }

    /// The kernel of these symbols, with the `.BTF` and ORC sections of its
    /// image, where it has them.
    #[cfg(feature = "images")]
    pub fn from_image_sections(
        symbols: Arc<KernelSymbols>,
        slide: u64,
        sections: Option<&kernel_image::KernelSections>,
    ) -> Self {
        let section = |name: &str| sections.and_then(|s| s.get(name));
        let orc = match (section(".orc_unwind_ip"), section(".orc_unwind")) {
            (Some(ip), Some(entries)) => Some(OrcSections {
                ip: ip.data.clone(),
                ip_addr: ip.addr,
                entries: entries.data.clone(),
            }),
            _ => None,
        };
        let btf = section(".BTF").map(|s| s.data.as_slice());
        GuestKernel::new(symbols, slide, btf, orc)
    }

    /// The kernel as another process described it (no BTF: types were
    /// resolved when the program was compiled).
    pub fn from_description(d: KernelDescription, slide: u64) -> Self {
        GuestKernel::from_layout(Arc::new(d.symbols), slide, d.layout, d.orc)
    }

    fn from_layout(
        symbols: Arc<KernelSymbols>,
        slide: u64,
        layout: KernelLayout,
        orc: Option<OrcSections>,
    ) -> Self {
        let table = orc
            .as_ref()
            .and_then(|o| OrcTable::parse(&o.ip, o.ip_addr, &o.entries).ok());
        GuestKernel {
            symbols,
            slide,
            btf: None,
            orc: table.map(Arc::new),
            orc_sections: orc.map(Arc::new),
            layout,
            page_offset: Arc::default(),
            max_pfn: Arc::default(),
        }
    }

    /// What [`GuestKernel::from_description`] rebuilds this kernel from.
    pub fn description(&self) -> KernelDescription {
        KernelDescription {
            symbols: (*self.symbols).clone(),
            layout: self.layout.clone(),
            orc: self.orc_sections.as_deref().cloned(),
        }
    }

    /// The same kernel, running with this KASLR slide (in another guest:
    /// values read from guest memory are not shared).
    pub fn with_slide(&self, slide: u64) -> GuestKernel {
        GuestKernel {
            slide,
            page_offset: Arc::default(),
            max_pfn: Arc::default(),
            ..self.clone()
        }
    }

    pub fn btf(&self) -> Option<&Btf> {
        self.btf.as_deref()
    }

    /// A symbol's run-time address, KASLR slide applied (`kaddr()`).
    pub fn kaddr(&self, name: &str) -> Option<u64> {
        self.symbols
            .lookup(name)
            .map(|s| s.addr.wrapping_add(self.slide))
    }

    /// The symbol containing run-time address `addr`, and the offset into
    /// it (`ksym()`, `kstack` frames).
    pub fn ksym(&self, addr: u64) -> Option<(String, u64)> {
        self.symbols
            .symbolize(addr.wrapping_sub(self.slide))
            .map(|(s, off)| (s.name.clone(), off))
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
    pub fn current_task(&self, cpu: &mut dyn GuestVcpu) -> Result<u64, GuestError> {
        let offset = self
            .layout
            .current_task
            .ok_or(GuestError::Missing("curtask", "current_task symbol"))?;
        // In kernel mode after swapgs the GS base is the CPU's per-CPU area;
        // stopped in user mode (or before swapgs) the kernel's value waits
        // in KERNEL_GS_BASE. A kernel address tells which one is live.
        let gs = reg(cpu, Reg::GsBase)?;
        let base = if is_kernel_address(gs) {
            gs
        } else {
            let k = reg(cpu, Reg::KGsBase)?;
            if !is_kernel_address(k) {
                return Err(GuestError::NoCurrentTask(gs));
            }
            k
        };
        read_u64(cpu, base.wrapping_add(offset))
    }

    fn task_layout(&self) -> Result<TaskLayout, GuestError> {
        self.layout.task.ok_or(GuestError::Missing(
            "task fields",
            ".BTF with struct task_struct",
        ))
    }

    /// `task->comm`, up to its NUL.
    pub fn comm(&self, mem: &mut dyn GuestMemory, task: u64) -> Result<String, GuestError> {
        let mut buf = [0u8; 16];
        mem.read(task.wrapping_add(self.task_layout()?.comm), &mut buf)?;
        let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
        Ok(String::from_utf8_lossy(&buf[..end]).into_owned())
    }

    /// Who `task` is (its tgid, pid and comm), for naming what it did:
    /// one read of the span of `task_struct` that holds all three when it
    /// is short (576 bytes in Debian's 6.1: `pid` at 0x970, `tgid` at
    /// 0x974, `comm` at 0xba0), else one read each.
    pub fn task_ids(&self, mem: &mut dyn GuestMemory, task: u64) -> Result<TaskIds, GuestError> {
        task_ids_in(mem, &self.task_layout()?, task)
    }

    /// `task->tgid`: what user space (and bpftrace's `pid`) calls the pid.
    pub fn tgid(&self, mem: &mut dyn GuestMemory, task: u64) -> Result<u32, GuestError> {
        read_u32(mem, task.wrapping_add(self.task_layout()?.tgid))
    }

    /// The task's cgroup v2 id (bpftrace's `cgroup`): four dependent reads.
    pub fn cgroup_id(&self, mem: &mut dyn GuestMemory, task: u64) -> Result<u64, GuestError> {
        let l = self.layout.cgroup.ok_or(GuestError::Missing(
            "cgroup",
            ".BTF with task_struct.cgroups, css_set, cgroup and kernfs_node",
        ))?;
        let set = read_u64(mem, task.wrapping_add(l.task_cgroups))?;
        let cgrp = read_u64(mem, set.wrapping_add(l.css_set_dfl_cgrp))?;
        let kn = read_u64(mem, cgrp.wrapping_add(l.cgroup_kn))?;
        read_u64(mem, kn.wrapping_add(l.kn_id))
    }

    /// The path of cgroup v2 id `id` in the default hierarchy (`/` for its
    /// root, `/a/b` below it), as the kernel's `cgroup_path()` gives it;
    /// `None` when no cgroup has that id. The id is looked up in the
    /// hierarchy's own id table, as `kernfs_find_and_get_node_by_id()`
    /// does; every step is bounded, so a corrupt table or a cyclic chain of
    /// parents ends in an error, not a hang.
    pub fn cgroup_path(
        &self,
        mem: &mut dyn GuestMemory,
        id: u64,
    ) -> Result<Option<String>, GuestError> {
        let l = self.layout.cgroup_path.ok_or(GuestError::Missing(
            "cgroup_path",
            "cgrp_dfl_root symbol or .BTF with cgroup_root, kernfs_root, idr, xa_node and kernfs_node",
        ))?;
        cgroup_path_in(mem, &l, self.slide, id)
    }

    /// `task->pid`: the thread id (bpftrace's `tid`).
    pub fn pid(&self, mem: &mut dyn GuestMemory, task: u64) -> Result<u32, GuestError> {
        read_u32(mem, task.wrapping_add(self.task_layout()?.pid))
    }

    /// The kernel stack at a stop, innermost frame first, unwound with the
    /// kernel's own ORC tables. Bounded in frames and reads; a corrupt stack
    /// ends the walk with what was found.
    pub fn kstack(
        &self,
        cpu: &mut dyn GuestVcpu,
        max_frames: usize,
    ) -> Result<Vec<u64>, GuestError> {
        let orc = self
            .orc
            .as_ref()
            .ok_or(GuestError::Missing("kstack", "ORC unwind tables"))?;
        let rip = reg(cpu, Reg::Rip)?;
        // Stopped in user space: no kernel stack (bpftrace's kstack is
        // empty there too).
        if !is_kernel_address(rip) {
            return Ok(Vec::new());
        }
        let mut start = Regs::new(rip, reg(cpu, Reg::Rsp)?, reg(cpu, Reg::Rbp)?);
        start.r10 = cpu.get(Reg::R10);
        start.r13 = cpu.get(Reg::R13);
        start.rdi = cpu.get(Reg::Rdi);
        start.rdx = cpu.get(Reg::Rdx);
        let mut reader =
            kernel_unwind::CachedReader::new(|addr: u64, buf: &mut [u8]| cpu.read(addr, buf), 256);
        Ok(orc.unwind(
            start,
            &mut |addr, buf| reader.read(addr, buf),
            self.slide,
            max_frames.min(MAX_STACK),
        ))
    }
}

/// A NUL-terminated string of at most `max` bytes (cut there if longer),
/// read a page at a time so that a short string at the end of a mapping
/// reads.
pub(crate) fn read_cstr<M: GuestMemory + ?Sized>(
    client: &mut M,
    addr: u64,
    max: usize,
) -> Result<String, GuestError> {
    const PAGE: u64 = 4096;
    let mut out = Vec::new();
    let mut at = addr;
    while out.len() < max {
        let chunk = ((PAGE - at % PAGE) as usize).min(max - out.len());
        let mut buf = vec![0u8; chunk];
        client.read(at, &mut buf)?;
        if let Some(end) = buf.iter().position(|&b| b == 0) {
            out.extend_from_slice(&buf[..end]);
            break;
        }
        out.extend_from_slice(&buf);
        at = at.wrapping_add(chunk as u64);
    }
    Ok(String::from_utf8_lossy(&out).into_owned())
}

/// A task as `vmprobe record` names what it did: `tgid` is what user
/// space calls its pid, `pid` its thread id, `comm` its name up to 16
/// bytes (NUL-padded).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TaskIds {
    pub tgid: u32,
    pub pid: u32,
    pub comm: [u8; 16],
}

/// The longest span of `task_struct` [`GuestKernel::task_ids`] reads at
/// once: a stub's reply holds it in one packet.
const TASK_IDS_SPAN: u64 = 1024;

fn task_ids_in(
    mem: &mut dyn GuestMemory,
    l: &TaskLayout,
    task: u64,
) -> Result<TaskIds, GuestError> {
    let start = l.pid.min(l.tgid).min(l.comm);
    let end = (l.pid + 4).max(l.tgid + 4).max(l.comm + 16);
    let mut ids = TaskIds {
        tgid: 0,
        pid: 0,
        comm: [0; 16],
    };
    if end - start <= TASK_IDS_SPAN {
        let mut span = vec![0u8; (end - start) as usize];
        mem.read(task.wrapping_add(start), &mut span)?;
        let at = |off: u64| (off - start) as usize;
        let u32_at = |off: u64| {
            let i = at(off);
            u32::from_le_bytes(span[i..i + 4].try_into().expect("4 bytes"))
        };
        ids.tgid = u32_at(l.tgid);
        ids.pid = u32_at(l.pid);
        ids.comm.copy_from_slice(&span[at(l.comm)..at(l.comm) + 16]);
    } else {
        ids.tgid = read_u32(mem, task.wrapping_add(l.tgid))?;
        ids.pid = read_u32(mem, task.wrapping_add(l.pid))?;
        mem.read(task.wrapping_add(l.comm), &mut ids.comm)?;
    }
    Ok(ids)
}

pub(crate) fn read_u64<M: GuestMemory + ?Sized>(
    client: &mut M,
    addr: u64,
) -> Result<u64, GuestError> {
    let mut b = [0u8; 8];
    client.read(addr, &mut b)?;
    Ok(u64::from_le_bytes(b))
}

pub(crate) fn read_u32<M: GuestMemory + ?Sized>(
    client: &mut M,
    addr: u64,
) -> Result<u32, GuestError> {
    let mut b = [0u8; 4];
    client.read(addr, &mut b)?;
    Ok(u32::from_le_bytes(b))
}

/// Canonical upper-half addresses belong to the kernel on x86-64.
pub(crate) fn is_kernel_address(addr: u64) -> bool {
    addr >= 0xffff_8000_0000_0000
}

#[cfg(test)]
mod task_ids_tests {
    use super::*;

    /// A task_struct image at 0x1000, counting the reads made of it.
    struct Task(Vec<u8>, u32);

    impl GuestMemory for Task {
        fn read(&mut self, addr: u64, buf: &mut [u8]) -> Result<(), GuestError> {
            self.1 += 1;
            let at = (addr - 0x1000) as usize;
            buf.copy_from_slice(&self.0[at..at + buf.len()]);
            Ok(())
        }
    }

    fn task(l: &TaskLayout) -> Task {
        let mut t = vec![0u8; 0x2000];
        t[l.tgid as usize..][..4].copy_from_slice(&123u32.to_le_bytes());
        t[l.pid as usize..][..4].copy_from_slice(&124u32.to_le_bytes());
        t[l.comm as usize..][..3].copy_from_slice(b"cat");
        Task(t, 0)
    }

    #[test]
    fn ids_close_together_take_one_read_and_far_apart_three() {
        let mut comm = [0u8; 16];
        comm[..3].copy_from_slice(b"cat");
        let want = TaskIds {
            tgid: 123,
            pid: 124,
            comm,
        };
        // Debian's 6.1.
        let near = TaskLayout {
            pid: 0x970,
            tgid: 0x974,
            comm: 0xba0,
        };
        let mut t = task(&near);
        assert_eq!(task_ids_in(&mut t, &near, 0x1000).unwrap(), want);
        assert_eq!(t.1, 1);
        let far = TaskLayout {
            pid: 0x10,
            tgid: 0x14,
            comm: 0x1800,
        };
        let mut t = task(&far);
        assert_eq!(task_ids_in(&mut t, &far, 0x1000).unwrap(), want);
        assert_eq!(t.1, 3);
    }
}
