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

use kernel_btf::Btf;
use kernel_image::KernelSymbols;
use kernel_unwind::{OrcTable, Regs};
use std::sync::{Arc, OnceLock};
use x86_paging::{VirtualReadError, Walker};

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

/// Offsets inside `struct task_struct`, from BTF.
#[derive(Clone, Copy, Debug, serde::Serialize, serde::Deserialize)]
struct TaskLayout {
    comm: u64,
    pid: u64,
    tgid: u64,
}

/// What reading another task's memory and its user registers needs:
/// offsets in `task_struct`, `mm_struct` and `pt_regs`, from BTF.
#[derive(Clone, Copy, Debug, serde::Serialize, serde::Deserialize)]
struct MmLayout {
    task_mm: u64,
    task_stack: u64,
    mm_pgd: u64,
    regs_size: u64,
    regs_ip: u64,
    regs_bp: u64,
    regs_cs: u64,
}

impl MmLayout {
    fn from_btf(btf: &Btf) -> Option<MmLayout> {
        let off = |ty: &str, name: &str| member_offset(btf, ty, name);
        let regs = btf.struct_by_name("pt_regs")?;
        Some(MmLayout {
            task_mm: off("task_struct", "mm")?,
            task_stack: off("task_struct", "stack")?,
            mm_pgd: off("mm_struct", "pgd")?,
            // Bounded: it sizes a read (x86-64's is 168 bytes).
            regs_size: btf.size_of(regs).ok().filter(|&n| (8..=512).contains(&n))?,
            regs_ip: off("pt_regs", "ip")?,
            regs_bp: off("pt_regs", "bp")?,
            regs_cs: off("pt_regs", "cs")?,
        })
    }
}

/// Byte offset of member `name` of `struct ty`.
fn member_offset(btf: &Btf, ty: &str, name: &str) -> Option<u64> {
    let t = btf.struct_by_name(ty)?;
    Some(btf.member(t, name).ok()??.offset)
}

/// Where the cgroup v2 id of a task is: `task->cgroups->dfl_cgrp->kn->id`
/// (the id bpftrace's `cgroup` gives, and the inode number of the cgroup's
/// directory in cgroupfs), from BTF.
#[derive(Clone, Copy, Debug, serde::Serialize, serde::Deserialize)]
struct CgroupLayout {
    task_cgroups: u64,
    css_set_dfl_cgrp: u64,
    cgroup_kn: u64,
    kn_id: u64,
}

impl CgroupLayout {
    fn from_btf(btf: &Btf) -> Option<CgroupLayout> {
        let off = |ty: &str, name: &str| member_offset(btf, ty, name);
        Some(CgroupLayout {
            task_cgroups: off("task_struct", "cgroups")?,
            css_set_dfl_cgrp: off("css_set", "dfl_cgrp")?,
            cgroup_kn: off("cgroup", "kn")?,
            kn_id: off("kernfs_node", "id")?,
        })
    }
}

/// What resolving a cgroup v2 id to its path needs (`cgroup_path()`), from
/// BTF and the symbol table: the default hierarchy's root
/// (`cgrp_dfl_root.kf_root`), its id-to-node table (`ino_idr`, an IDR: a
/// radix tree keyed by inode number), and each kernfs node's name and
/// parent. The path is what the kernel's own `kernfs_path_from_node()`
/// gives: the names from the hierarchy's root down, joined by `/`.
#[derive(Clone, Copy, Debug, serde::Serialize, serde::Deserialize)]
struct CgroupPathLayout {
    /// Unslid address of `cgrp_dfl_root`.
    dfl_root: u64,
    root_kf_root: u64,
    kf_root_ino_idr: u64,
    idr_rt: u64,
    idr_base: u64,
    xa_head: u64,
    node_shift: u64,
    node_slots: u64,
    kn_id: u64,
    kn_parent: u64,
    kn_name: u64,
}

/// Deepest cgroup nesting `cgroup_path()` follows: a deeper chain of
/// parents is taken for a corrupt (cyclic) one.
const MAX_CGROUP_DEPTH: usize = 128;
/// Longest kernfs node name read (the kernel's NAME_MAX).
const MAX_KERNFS_NAME: usize = 255;
/// Radix tree levels: 6 bits each, so 11 cover a 64-bit index.
const MAX_RADIX_LEVELS: usize = 11;

impl CgroupPathLayout {
    fn new(btf: &Btf, symbols: &KernelSymbols) -> Option<CgroupPathLayout> {
        let off = |ty: &str, name: &str| member_offset(btf, ty, name);
        Some(CgroupPathLayout {
            dfl_root: symbols.lookup("cgrp_dfl_root")?.addr,
            root_kf_root: off("cgroup_root", "kf_root")?,
            kf_root_ino_idr: off("kernfs_root", "ino_idr")?,
            idr_rt: off("idr", "idr_rt")?,
            idr_base: off("idr", "idr_base")?,
            // `struct radix_tree_root` is a macro for `struct xarray`.
            xa_head: off("xarray", "xa_head")?,
            node_shift: off("xa_node", "shift")?,
            node_slots: off("xa_node", "slots")?,
            kn_id: off("kernfs_node", "id")?,
            kn_parent: off("kernfs_node", "parent")?,
            kn_name: off("kernfs_node", "name")?,
        })
    }
}

/// Where things are in the kernel's structures: offsets from BTF and a
/// few symbols, computed once from the image. Serialisable, so a process
/// without the image (the QEMU plugin) gets the same knowledge.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct KernelLayout {
    task: Option<TaskLayout>,
    /// Per-CPU offset of `current_task` (not moved by KASLR).
    current_task: Option<u64>,
    mm: Option<MmLayout>,
    cgroup: Option<CgroupLayout>,
    cgroup_path: Option<CgroupPathLayout>,
    thread_size: u64,
}

impl KernelLayout {
    /// What the kernel's BTF (if any) and symbols say of its structures.
    pub fn new(btf: Option<&Btf>, symbols: &KernelSymbols) -> KernelLayout {
        let task = btf.and_then(|btf| {
            let t = btf.struct_by_name("task_struct")?;
            let off = |name: &str| Some(btf.member(t, name).ok()??.offset);
            Some(TaskLayout {
                comm: off("comm")?,
                pid: off("pid")?,
                tgid: off("tgid")?,
            })
        });
        // KASAN doubles the kernel stacks; its runtime is in the image.
        let thread_size = if symbols.lookup("__asan_load8").is_some() {
            2 * THREAD_SIZE
        } else {
            THREAD_SIZE
        };
        KernelLayout {
            task,
            current_task: symbols.lookup("current_task").map(|s| s.addr),
            mm: btf.and_then(MmLayout::from_btf),
            cgroup: btf.and_then(CgroupLayout::from_btf),
            cgroup_path: btf.and_then(|b| CgroupPathLayout::new(b, symbols)),
            thread_size,
        }
    }
}

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

impl GuestKernel {
    fn mm_layout(&self) -> Result<MmLayout, GuestError> {
        self.layout.mm.ok_or(GuestError::Missing(
            "address spaces of tasks",
            ".BTF with task_struct.mm, mm_struct.pgd and pt_regs",
        ))
    }

    /// A kernel variable's value, read once per guest (`cell`); only a
    /// plausible value (`ok`) is kept, so a read during early boot is
    /// retried later.
    fn kernel_u64(
        &self,
        mem: &mut dyn GuestMemory,
        cell: &OnceLock<u64>,
        name: &'static str,
        ok: impl Fn(u64) -> bool,
    ) -> Result<u64, GuestError> {
        if let Some(&v) = cell.get() {
            return Ok(v);
        }
        let sym = self
            .symbols
            .lookup(name)
            .ok_or(GuestError::Missing(name, "symbol"))?;
        let addr = sym.addr.wrapping_add(self.slide);
        let v = read_u64(mem, addr)?;
        if !ok(v) {
            return Err(GuestError::Memory {
                addr,
                reason: format!("{name} is {v:#x}, not yet set up"),
            });
        }
        Ok(*cell.get_or_init(|| v))
    }

    /// The walker for the vCPU `regs` came from: its paging mode (CR4.LA57)
    /// and the guest's memory size (`max_pfn`) as the physical limit.
    fn walker(&self, cpu: &mut dyn GuestVcpu) -> Result<Walker, GuestError> {
        let w = walker_for(cpu)?;
        let pfns = self.kernel_u64(cpu, &self.max_pfn, "max_pfn", |v| v > 0)?;
        Ok(w.with_limit(pfns.saturating_mul(4096)))
    }

    /// The physical address of `task`'s top-level page table: what CR3
    /// holds while it runs (PCID bits aside).
    pub fn task_cr3(&self, mem: &mut dyn GuestMemory, task: u64) -> Result<u64, GuestError> {
        let l = self.mm_layout()?;
        let mm = read_u64(mem, task.wrapping_add(l.task_mm))?;
        if mm == 0 {
            return Err(GuestError::NoMm(task));
        }
        let pgd = read_u64(mem, mm.wrapping_add(l.mm_pgd))?;
        let base = self.kernel_u64(mem, &self.page_offset, "page_offset_base", |v| {
            is_kernel_address(v)
        })?;
        if pgd < base || pgd & 0xfff != 0 {
            return Err(GuestError::BadPgd { task, pgd, base });
        }
        Ok(pgd - base)
    }

    /// Reads `buf.len()` bytes at `vaddr` in `task`'s address space, by
    /// walking its page tables in guest-physical memory (one walk per
    /// page touched). Works whatever task the vCPU is running.
    pub fn read_task_memory(
        &self,
        cpu: &mut dyn GuestVcpu,
        task: u64,
        vaddr: u64,
        buf: &mut [u8],
    ) -> Result<(), GuestError> {
        let cr3 = self.task_cr3(cpu, task)?;
        let walker = self.walker(cpu)?;
        read_physical_virtual(cpu, walker, cr3, vaddr, buf)
    }

    /// The user-space stack of the current task, innermost first, by
    /// frame pointers: from the vCPU's registers if it stopped in user
    /// mode, else from the user registers the kernel saved at syscall or
    /// interrupt entry (`task_pt_regs`). Empty for kernel threads. Reads
    /// go through the current address space (through the task's page
    /// tables if the vCPU is on another one, as inside a context switch),
    /// bounded by `max_frames`; the walk ends at a zero, misaligned,
    /// kernel or non-increasing frame pointer, or an unreadable frame.
    pub fn ustack(
        &self,
        cpu: &mut dyn GuestVcpu,
        task: Option<u64>,
        max_frames: usize,
    ) -> Result<Vec<u64>, GuestError> {
        // Where the user stack is read: the current address space, or,
        // when the vCPU runs on another one than the task's (a sample in
        // the middle of a context switch), the task's page tables.
        let mut other_space = None;
        let (ip, mut bp) = if reg(cpu, Reg::Cs)? & 3 == 3 {
            (reg(cpu, Reg::Rip)?, reg(cpu, Reg::Rbp)?)
        } else {
            let l = self.mm_layout()?;
            let Some(task) = task else {
                return Ok(Vec::new());
            };
            let stack = read_u64(cpu, task.wrapping_add(l.task_stack))?;
            let pt = stack
                .wrapping_add(self.layout.thread_size)
                .wrapping_sub(l.regs_size);
            let mut raw = vec![0u8; l.regs_size as usize];
            cpu.read(pt, &mut raw)?;
            let field = |off: u64| {
                let o = off as usize;
                raw.get(o..o + 8)
                    .map_or(0, |b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
            };
            // Entered from kernel mode (a kernel thread): no user stack.
            if field(l.regs_cs) & 3 != 3 {
                return Ok(Vec::new());
            }
            let cr3 = match self.task_cr3(cpu, task) {
                // An exiting task has dropped its address space (and its
                // user stack with it), as bpftrace's ustack finds it.
                Err(GuestError::NoMm(_)) => return Ok(Vec::new()),
                r => r?,
            };
            // PCID (bits 11:0) and PTI's user half (bit 12) aside.
            const TABLE: u64 = 0x000f_ffff_ffff_e000;
            if reg(cpu, Reg::Cr3)? & TABLE != cr3 & TABLE {
                other_space = Some((cr3, self.walker(cpu)?));
            }
            (field(l.regs_ip), field(l.regs_bp))
        };
        let read_frame = |cpu: &mut dyn GuestMemory, addr: u64, buf: &mut [u8]| match other_space {
            None => cpu.read(addr, buf).is_ok(),
            Some((cr3, walker)) => read_physical_virtual(cpu, walker, cr3, addr, buf).is_ok(),
        };
        let max = max_frames.min(MAX_USTACK);
        let mut frames = Vec::with_capacity(max.min(16));
        if max == 0 || is_kernel_address(ip) {
            return Ok(frames);
        }
        frames.push(ip);
        while frames.len() < max {
            if bp == 0 || bp & 7 != 0 || is_kernel_address(bp) {
                break;
            }
            let mut frame = [0u8; 16];
            if !read_frame(cpu, bp, &mut frame) {
                break;
            }
            let next = u64::from_le_bytes(frame[..8].try_into().expect("8 bytes"));
            let ret = u64::from_le_bytes(frame[8..].try_into().expect("8 bytes"));
            if ret == 0 || is_kernel_address(ret) {
                break;
            }
            frames.push(ret);
            // Frames live higher up the stack than their callees'.
            if next <= bp {
                break;
            }
            bp = next;
        }
        Ok(frames)
    }
}

/// A register the introspection cannot do without.
fn reg(regs: &mut dyn VcpuRegisters, r: Reg) -> Result<u64, GuestError> {
    regs.get(r).ok_or(GuestError::Register(r.gdb_name()))
}

/// The page walker for the vCPU `regs` came from (CR4.LA57), without a
/// memory limit: x86-64, any OS.
fn walker_for(regs: &mut dyn VcpuRegisters) -> Result<Walker, GuestError> {
    Ok(Walker::from_cr4(reg(regs, Reg::Cr4)?))
}

/// The physical address of `vaddr` in the address space `cr3`, with the
/// vCPU's paging mode; x86-64, any OS.
pub fn vtop(
    cpu: &mut dyn GuestVcpu,
    kernel: Option<&GuestKernel>,
    cr3: u64,
    vaddr: u64,
) -> Result<u64, GuestError> {
    let walker = match kernel {
        Some(k) => match k.walker(cpu) {
            Ok(w) => w,
            Err(_) => walker_for(cpu)?,
        },
        None => walker_for(cpu)?,
    };
    let mut result = None;
    cpu.with_physical(&mut |phys| {
        result = Some(walker.translate(&mut |a: u64, b: &mut [u8]| phys(a, b), cr3, vaddr));
    })?;
    let t = result.ok_or_else(|| GuestError::Physical("no physical memory session".into()))??;
    Ok(t.phys)
}

/// `buf.len()` bytes at `vaddr` of address space `cr3`, through physical
/// memory, in one physical-memory session.
fn read_physical_virtual(
    mem: &mut dyn GuestMemory,
    walker: Walker,
    cr3: u64,
    vaddr: u64,
    buf: &mut [u8],
) -> Result<(), GuestError> {
    let mut result = None;
    mem.with_physical(&mut |phys| {
        result = Some(walker.read_virtual(&mut |a: u64, b: &mut [u8]| phys(a, b), cr3, vaddr, buf));
    })?;
    result
        .ok_or_else(|| GuestError::Physical("no physical memory session".into()))?
        .map_err(|e| match e {
            VirtualReadError::Walk(w) => GuestError::Walk(w),
            VirtualReadError::Memory {
                vaddr,
                phys,
                reason,
            } => GuestError::Memory {
                addr: vaddr,
                reason: format!("physical {phys:#x}: {reason}"),
            },
        })
}

/// Canonical upper-half addresses belong to the kernel on x86-64.
fn is_kernel_address(addr: u64) -> bool {
    addr >= 0xffff_8000_0000_0000
}

/// [`GuestKernel::cgroup_path`] over any memory, with the kernel's layout
/// and KASLR slide.
fn cgroup_path_in<M: GuestMemory + ?Sized>(
    client: &mut M,
    l: &CgroupPathLayout,
    slide: u64,
    id: u64,
) -> Result<Option<String>, GuestError> {
    let kf_root = read_u64(
        client,
        l.dfl_root.wrapping_add(slide).wrapping_add(l.root_kf_root),
    )?;
    let idr = kf_root.wrapping_add(l.kf_root_ino_idr);
    let base = u64::from(read_u32(client, idr.wrapping_add(l.idr_base))?);
    // `idr_find(&root->ino_idr, (u32)id)`: the low 32 bits are the inode
    // number; the whole id is checked against the node found.
    let Some(index) = (id & 0xffff_ffff).checked_sub(base) else {
        return Ok(None);
    };
    let head = read_u64(client, idr.wrapping_add(l.idr_rt).wrapping_add(l.xa_head))?;
    let Some(kn) = radix_lookup(client, l, head, index)? else {
        return Ok(None);
    };
    if read_u64(client, kn.wrapping_add(l.kn_id))? != id {
        return Ok(None);
    }
    let mut names = Vec::new();
    let mut node = kn;
    loop {
        let parent = read_u64(client, node.wrapping_add(l.kn_parent))?;
        if parent == 0 {
            break;
        }
        if names.len() == MAX_CGROUP_DEPTH {
            return Err(GuestError::Corrupt(format!(
                "cgroup {id}: more than {MAX_CGROUP_DEPTH} parents (a cycle?)"
            )));
        }
        let name = read_u64(client, node.wrapping_add(l.kn_name))?;
        names.push(read_cstr(client, name, MAX_KERNFS_NAME)?);
        node = parent;
    }
    names.reverse();
    Ok(Some(format!("/{}", names.join("/"))))
}

/// The radix tree (xarray) lookup of `radix_tree_lookup()`: an internal
/// entry (low bits `10`) is a node, whose `shift` says which 6 bits of
/// the index pick the next slot; any other entry is the value.
fn radix_lookup<M: GuestMemory + ?Sized>(
    client: &mut M,
    l: &CgroupPathLayout,
    head: u64,
    index: u64,
) -> Result<Option<u64>, GuestError> {
    const INTERNAL: u64 = 2;
    // Internal entries below this are retry and sibling markers, not
    // nodes.
    const FIRST_NODE: u64 = 4096;
    let is_internal = |e: u64| e & 3 == INTERNAL;
    let mut entry = head;
    if !is_internal(entry) {
        // A lone entry at the head holds index 0 only.
        return Ok((index == 0 && entry != 0).then_some(entry));
    }
    for level in 0..MAX_RADIX_LEVELS {
        if entry <= FIRST_NODE {
            return Ok(None);
        }
        let node = entry - INTERNAL;
        let mut shift = [0u8];
        client.read(node.wrapping_add(l.node_shift), &mut shift)?;
        let shift = u32::from(shift[0]);
        if shift >= 64 || (level == 0 && shift + 6 < 64 && index >> (shift + 6) != 0) {
            // Past the tree's largest index (or not a radix node).
            return Ok(None);
        }
        let slot = (index >> shift) & 63;
        entry = read_u64(
            client,
            node.wrapping_add(l.node_slots).wrapping_add(8 * slot),
        )?;
        if shift == 0 {
            return Ok((!is_internal(entry) && entry != 0).then_some(entry));
        }
        if !is_internal(entry) {
            return Ok(None);
        }
    }
    Err(GuestError::Corrupt(format!(
        "cgroup id table deeper than {MAX_RADIX_LEVELS} levels"
    )))
}

/// A NUL-terminated string of at most `max` bytes (cut there if longer),
/// read a page at a time so that a short string at the end of a mapping
/// reads.
fn read_cstr<M: GuestMemory + ?Sized>(
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

fn read_u64<M: GuestMemory + ?Sized>(client: &mut M, addr: u64) -> Result<u64, GuestError> {
    let mut b = [0u8; 8];
    client.read(addr, &mut b)?;
    Ok(u64::from_le_bytes(b))
}

fn read_u32<M: GuestMemory + ?Sized>(client: &mut M, addr: u64) -> Result<u32, GuestError> {
    let mut b = [0u8; 4];
    client.read(addr, &mut b)?;
    Ok(u32::from_le_bytes(b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    /// Guest memory of a few hand-placed values: the pages they are on read
    /// as zeros elsewhere; other pages are unmapped.
    #[derive(Default)]
    struct FakeMemory(BTreeMap<u64, u8>);

    impl FakeMemory {
        fn put(&mut self, addr: u64, bytes: &[u8]) {
            for (i, b) in bytes.iter().enumerate() {
                self.0.insert(addr + i as u64, *b);
            }
        }
        fn mapped(&self, addr: u64) -> bool {
            let page = addr & !0xfff;
            self.0.range(page..page + 0x1000).next().is_some()
        }
        fn put_u64(&mut self, addr: u64, v: u64) {
            self.put(addr, &v.to_le_bytes());
        }
    }

    impl GuestMemory for FakeMemory {
        fn read(&mut self, addr: u64, buf: &mut [u8]) -> Result<(), GuestError> {
            for (i, b) in buf.iter_mut().enumerate() {
                let at = addr.wrapping_add(i as u64);
                if !self.mapped(at) {
                    return Err(GuestError::Memory {
                        addr: at,
                        reason: "unmapped".into(),
                    });
                }
                *b = self.0.get(&at).copied().unwrap_or(0);
            }
            Ok(())
        }
    }

    const LAYOUT: CgroupPathLayout = CgroupPathLayout {
        dfl_root: 0x1000,
        root_kf_root: 0x8,
        kf_root_ino_idr: 0x10,
        idr_rt: 0,
        idr_base: 0x10,
        xa_head: 0x8,
        node_shift: 0,
        node_slots: 0x28,
        kn_id: 0x60,
        kn_parent: 0x10,
        kn_name: 0x18,
    };
    const KF_ROOT: u64 = 0x2000;
    const IDR: u64 = KF_ROOT + 0x10;
    const INTERNAL: u64 = 2;

    /// A kernfs node at `at` named `name`, with `id` and `parent`.
    fn node(m: &mut FakeMemory, at: u64, id: u64, parent: u64, name: &str) {
        m.put_u64(at + LAYOUT.kn_id, id);
        m.put_u64(at + LAYOUT.kn_parent, parent);
        m.put_u64(at + LAYOUT.kn_name, at + 0x200);
        m.put(at + 0x200, name.as_bytes());
        m.put(at + 0x200 + name.len() as u64, &[0]);
    }

    /// A radix node at `at` with `shift` and the given slots (others empty).
    fn radix_node(m: &mut FakeMemory, at: u64, shift: u8, slots: &[(u64, u64)]) {
        m.put(at + LAYOUT.node_shift, &[shift]);
        for slot in 0..64 {
            m.put_u64(at + LAYOUT.node_slots + 8 * slot, 0);
        }
        for &(slot, entry) in slots {
            m.put_u64(at + LAYOUT.node_slots + 8 * slot, entry);
        }
    }

    /// A hierarchy `/` (id 1) > `probed` (id 5) > `inner` (id 67), its id
    /// table two levels deep (67 = slot 1, then slot 3).
    fn hierarchy() -> FakeMemory {
        let mut m = FakeMemory::default();
        m.put_u64(LAYOUT.dfl_root + LAYOUT.root_kf_root, KF_ROOT);
        m.put(IDR + LAYOUT.idr_base, &0u32.to_le_bytes());
        let (root, probed, inner) = (0x10_0000, 0x11_0000, 0x12_0000);
        node(&mut m, root, 1, 0, "");
        node(&mut m, probed, 5, root, "probed");
        node(&mut m, inner, 67, probed, "inner");
        let (top, low0, low1) = (0x20_0000, 0x21_0000, 0x22_0000);
        m.put_u64(IDR + LAYOUT.idr_rt + LAYOUT.xa_head, top + INTERNAL);
        radix_node(
            &mut m,
            top,
            6,
            &[(0, low0 + INTERNAL), (1, low1 + INTERNAL)],
        );
        radix_node(&mut m, low0, 0, &[(1, root), (5, probed)]);
        radix_node(&mut m, low1, 0, &[(3, inner)]);
        m
    }

    fn path(m: &mut FakeMemory, id: u64) -> Result<Option<String>, GuestError> {
        cgroup_path_in(m, &LAYOUT, 0, id)
    }

    #[test]
    fn cgroup_ids_resolve_to_paths_through_the_id_table() {
        let mut m = hierarchy();
        assert_eq!(path(&mut m, 1).unwrap().as_deref(), Some("/"));
        assert_eq!(path(&mut m, 5).unwrap().as_deref(), Some("/probed"));
        assert_eq!(path(&mut m, 67).unwrap().as_deref(), Some("/probed/inner"));
        // An empty slot, an index past the tree, a node whose id differs in
        // its high bits (a reused inode number).
        assert_eq!(path(&mut m, 6).unwrap(), None);
        assert_eq!(path(&mut m, 64 * 64).unwrap(), None);
        assert_eq!(path(&mut m, (1 << 32) | 5).unwrap(), None);
    }

    #[test]
    fn a_lone_head_entry_holds_index_zero_only() {
        let mut m = hierarchy();
        m.put_u64(IDR + LAYOUT.idr_base, 5);
        m.put_u64(IDR + LAYOUT.idr_rt + LAYOUT.xa_head, 0x11_0000);
        assert_eq!(path(&mut m, 5).unwrap().as_deref(), Some("/probed"));
        assert_eq!(path(&mut m, 6).unwrap(), None);
        assert_eq!(path(&mut m, 4).unwrap(), None);
    }

    #[test]
    fn a_cyclic_parent_chain_is_an_error_not_a_hang() {
        let mut m = hierarchy();
        // `inner`'s parent is itself.
        m.put_u64(0x12_0000 + LAYOUT.kn_parent, 0x12_0000);
        let err = path(&mut m, 67).unwrap_err().to_string();
        assert!(err.contains("more than 128 parents"), "{err}");
    }

    #[test]
    fn a_cyclic_id_table_is_an_error_not_a_hang() {
        let mut m = hierarchy();
        // The top node's slot 1 points back at the top node.
        m.put_u64(0x20_0000 + LAYOUT.node_slots + 8, 0x20_0000 + INTERNAL);
        let err = path(&mut m, 67).unwrap_err().to_string();
        assert!(err.contains("deeper than 11 levels"), "{err}");
    }

    #[test]
    fn wild_pointers_and_endless_names_are_bounded() {
        let mut m = hierarchy();
        // `probed`'s name runs on for a page and more without a NUL: cut at
        // 255 bytes.
        let name = 0x11_0000 + 0x200;
        m.put(name, &[b'x'; 5000]);
        let long = path(&mut m, 5).unwrap().unwrap();
        assert_eq!(long.len(), 1 + MAX_KERNFS_NAME);
        // `inner`'s parent is a wild pointer: a read error naming it.
        m.put_u64(0x12_0000 + LAYOUT.kn_parent, 0xdead_0000_beef);
        let err = path(&mut m, 67).unwrap_err().to_string();
        assert!(err.contains("0xdead0000"), "{err}");
    }
}
