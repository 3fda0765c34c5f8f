//! Address spaces: page walks from a CR3 ([`vtop`]), another task's
//! memory through its `mm`, and user stacks.

use crate::layout::MmLayout;
use crate::*;

impl GuestKernel {
    pub(crate) fn mm_layout(&self) -> Result<MmLayout, GuestError> {
        self.layout.mm.ok_or(GuestError::Missing(
            "address spaces of tasks",
            ".BTF with task_struct.mm, mm_struct.pgd and pt_regs",
        ))
    }

    /// A kernel variable's value, read once per guest (`cell`); only a
    /// plausible value (`ok`) is kept, so a read during early boot is
    /// retried later.
    pub(crate) fn kernel_u64(
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
    pub(crate) fn walker(&self, cpu: &mut dyn GuestVcpu) -> Result<Walker, GuestError> {
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
pub(crate) fn reg(regs: &mut dyn VcpuRegisters, r: Reg) -> Result<u64, GuestError> {
    regs.get(r).ok_or(GuestError::Register(r.gdb_name()))
}

/// The page walker for the vCPU `regs` came from (CR4.LA57), without a
/// memory limit: x86-64, any OS.
pub(crate) fn walker_for(regs: &mut dyn VcpuRegisters) -> Result<Walker, GuestError> {
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
pub(crate) fn read_physical_virtual(
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
