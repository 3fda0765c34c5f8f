//! Guest kernel stack traces from the kernel's own ORC tables (`.orc_unwind_ip`,
//! `.orc_unwind`), read from outside the guest: x86-64 kernels built with UNWINDER_ORC have no
//! frame pointers, and ORC is what the kernel itself unwinds with.
//!
//! [`OrcTable::parse`] takes the raw sections (`kernel_image::KernelSections` reads them from a
//! bzImage); [`OrcTable::unwind`] follows the semantics of the kernel's
//! `arch/x86/kernel/unwind_orc.c` (6.1): call frames, `pt_regs` frames of interrupts and
//! syscalls (continuing into the interrupted kernel code, stopping at user mode), the
//! SP/BP/indirect base registers and end-of-stack hints. Guest memory comes through a closure
//! and is untrusted: the walk is bounded by a frame limit, the stack pointer must move up, a
//! repeated (ip, sp) ends it, and any read failure ends it with the frames found so far.
//!
//! Entry layout, as in the 6.1 kernel's `arch/x86/include/asm/orc_types.h` (drgn calls this
//! format version 1; 6.3 and 6.4 changed the flag bits): `s16 sp_offset; s16 bp_offset;` then
//! a little-endian bitfield `sp_reg:4, bp_reg:4, type:2, end:1`.
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let (vmlinuz, cache) = (std::path::Path::new("vmlinuz"), std::path::Path::new("cache"));
//! # let (rip, rsp, rbp, slide) = (0, 0, 0, 0);
//! # let mut guest_read = |_: u64, _: &mut [u8]| -> Result<(), ()> { Ok(()) };
//! use kernel_unwind::{OrcTable, Regs};
//! let names = [".orc_unwind_ip", ".orc_unwind"];
//! let secs = kernel_image::KernelSections::load(vmlinuz, &names, Some(cache))?;
//! let (ip, orc) = (secs.get(names[0]).ok_or("no ORC")?, secs.get(names[1]).ok_or("no ORC")?);
//! let table = OrcTable::parse(&ip.data, ip.addr, &orc.data)?;
//!
//! // e.g. read_mem = |addr, buf| gdb_client.read_memory(addr, buf)
//! let frames: Vec<u64> = table.unwind(Regs::new(rip, rsp, rbp), &mut guest_read, slide, 64);
//! # Ok(())
//! # }
//! ```

#![forbid(unsafe_code)]
use std::collections::HashSet;

/// ORC base registers (`ORC_REG_*`).
pub mod reg {
    pub const UNDEFINED: u8 = 0;
    pub const PREV_SP: u8 = 1;
    pub const DX: u8 = 2;
    pub const DI: u8 = 3;
    pub const BP: u8 = 4;
    pub const SP: u8 = 5;
    pub const R10: u8 = 6;
    pub const R13: u8 = 7;
    pub const BP_INDIRECT: u8 = 8;
    pub const SP_INDIRECT: u8 = 9;
}

/// `ORC_TYPE_*` in 6.1 (type:2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OrcType {
    /// A normal call frame: the return address sits just below the previous frame's SP.
    Call,
    /// SP points at a full `struct pt_regs` (interrupt, exception or syscall entry).
    Regs,
    /// SP points at the hardware iret frame (`pt_regs` from `ip` on).
    RegsPartial,
    /// Type 3: not defined in 6.1.
    Unknown,
}

/// One decoded `struct orc_entry`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OrcEntry {
    pub sp_offset: i16,
    pub bp_offset: i16,
    pub sp_reg: u8,
    pub bp_reg: u8,
    pub kind: OrcType,
    /// With `sp_reg == UNDEFINED`: the end of the stack (kernel thread entry).
    pub end: bool,
}

impl OrcEntry {
    pub const SIZE: usize = 6;

    pub fn decode(b: [u8; 6]) -> OrcEntry {
        let flags = u16::from_le_bytes([b[4], b[5]]);
        OrcEntry {
            sp_offset: i16::from_le_bytes([b[0], b[1]]),
            bp_offset: i16::from_le_bytes([b[2], b[3]]),
            sp_reg: (flags & 0xf) as u8,
            bp_reg: ((flags >> 4) & 0xf) as u8,
            kind: match (flags >> 8) & 3 {
                0 => OrcType::Call,
                1 => OrcType::Regs,
                2 => OrcType::RegsPartial,
                _ => OrcType::Unknown,
            },
            end: flags & (1 << 10) != 0,
        }
    }

    /// The inverse of [`OrcEntry::decode`] (for building tables in tests and tools).
    pub fn encode(&self) -> [u8; 6] {
        let kind = match self.kind {
            OrcType::Call => 0,
            OrcType::Regs => 1,
            OrcType::RegsPartial => 2,
            OrcType::Unknown => 3,
        };
        let flags = (self.sp_reg as u16 & 0xf)
            | (self.bp_reg as u16 & 0xf) << 4
            | kind << 8
            | (self.end as u16) << 10;
        let mut b = [0; 6];
        b[..2].copy_from_slice(&self.sp_offset.to_le_bytes());
        b[2..4].copy_from_slice(&self.bp_offset.to_le_bytes());
        b[4..].copy_from_slice(&flags.to_le_bytes());
        b
    }

    /// A terminator: "no unwind information here" (objtool's gaps between sections).
    fn is_terminator(&self) -> bool {
        self.sp_reg == reg::UNDEFINED && !self.end
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error(".orc_unwind_ip length {0} is not a multiple of 4")]
    IpLength(usize),
    #[error(".orc_unwind length {0} is not a multiple of 6")]
    OrcLength(usize),
    #[error("ORC tables disagree: {ips} ips but {entries} entries")]
    CountMismatch { ips: usize, entries: usize },
    #[error("ORC tables are empty")]
    Empty,
}

/// The kernel's ORC table, sorted by link-time address.
#[derive(Debug, Clone)]
pub struct OrcTable {
    ips: Vec<u64>,
    entries: Vec<OrcEntry>,
    /// Whether the table came sorted (vmlinux tables are sorted at build time).
    was_sorted: bool,
}

/// Reads guest virtual memory at an address into the buffer (all of it, or fails).
pub type ReadMem<'a, E> = dyn FnMut(u64, &mut [u8]) -> Result<(), E> + 'a;

/// Registers at the starting point. `rip`, `rsp` and `rbp` are needed; the others only for the
/// rare ORC entries based on them (entry code, realigned stacks): leave them None when unknown.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Regs {
    pub rip: u64,
    pub rsp: u64,
    pub rbp: u64,
    pub r10: Option<u64>,
    pub r13: Option<u64>,
    pub rdi: Option<u64>,
    pub rdx: Option<u64>,
}

impl Regs {
    pub fn new(rip: u64, rsp: u64, rbp: u64) -> Regs {
        Regs {
            rip,
            rsp,
            rbp,
            ..Regs::default()
        }
    }
}

/// Why an unwind stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// An end-of-stack hint (kernel thread, or the top of an entry stack).
    EndOfStack,
    /// A `pt_regs` frame from user mode: the syscall or interrupt came from user space.
    UserMode { ip: u64, sp: u64 },
    /// `max_frames` frames were collected.
    MaxFrames,
    /// No ORC entry covers this (runtime) ip: a module, BPF or a bad address. It is the last
    /// frame (module and BPF frames are real, so it is kept; the kernel would guess on with
    /// a frame pointer, which these kernels do not keep).
    NoOrcEntry { ip: u64 },
    /// An entry this unwinder cannot follow (terminator, unknown register or type) at `ip`.
    BadEntry { ip: u64 },
    /// The entry needs a register the caller did not supply (R10, R13, DI or DX).
    MissingRegister { ip: u64, reg: u8 },
    /// Guest memory at `addr` could not be read.
    ReadFailed { addr: u64 },
    /// The stack pointer did not move up, or an (ip, sp) pair repeated: corrupt or hostile
    /// stack.
    NotAdvancing { ip: u64, sp: u64 },
}

/// A stack trace: runtime return addresses, innermost first (`frames[0]` is the starting
/// rip).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unwind {
    pub frames: Vec<u64>,
    pub stop: Stop,
}

/// `struct pt_regs` offsets (x86-64).
mod pt_regs {
    pub const R13: u64 = 2 * 8;
    pub const BP: u64 = 4 * 8;
    pub const R10: u64 = 7 * 8;
    pub const DX: u64 = 12 * 8;
    pub const DI: u64 = 14 * 8;
    /// `IRET_FRAME_OFFSET`: where the hardware frame (ip, cs, flags, sp, ss) starts.
    pub const IP: u64 = 16 * 8;
    pub const CS: u64 = 17 * 8;
    pub const SP: u64 = 19 * 8;
}

/// Stack switches (IRQ stack → task stack, entry trampoline → task stack) may move the stack
/// pointer down, at indirect or `pt_regs` frames only; a real kernel needs a few at most.
const MAX_STACK_SWITCHES: usize = 8;

/// Where the unwinder finds register values other than rip/rsp/rbp.
#[derive(Clone, Copy)]
enum RegsSource {
    /// The caller's starting registers.
    Initial,
    /// A full `pt_regs` at this stack address.
    Full(u64),
    /// Only the iret frame of a `pt_regs` at this address is valid.
    Partial(u64),
    None,
}

impl OrcTable {
    /// Parses the two sections. `ip_section_addr` is the link-time address of
    /// `.orc_unwind_ip`: each entry is an s32 offset from its own address.
    pub fn parse(
        ip_section: &[u8],
        ip_section_addr: u64,
        orc_section: &[u8],
    ) -> Result<OrcTable, Error> {
        if !ip_section.len().is_multiple_of(4) {
            return Err(Error::IpLength(ip_section.len()));
        }
        if !orc_section.len().is_multiple_of(OrcEntry::SIZE) {
            return Err(Error::OrcLength(orc_section.len()));
        }
        let n = ip_section.len() / 4;
        if n != orc_section.len() / OrcEntry::SIZE {
            return Err(Error::CountMismatch {
                ips: n,
                entries: orc_section.len() / OrcEntry::SIZE,
            });
        }
        if n == 0 {
            return Err(Error::Empty);
        }
        let ips = ip_section.chunks_exact(4).enumerate().map(|(i, c)| {
            let rel = i32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            ip_section_addr
                .wrapping_add(4 * i as u64)
                .wrapping_add_signed(rel as i64)
        });
        let entries = orc_section
            .chunks_exact(OrcEntry::SIZE)
            .map(|c| OrcEntry::decode([c[0], c[1], c[2], c[3], c[4], c[5]]));
        let mut pairs: Vec<(u64, OrcEntry)> = ips.zip(entries).collect();
        let order = |a: &(u64, OrcEntry)| (a.0, !a.1.is_terminator());
        let was_sorted = pairs.is_sorted_by_key(|p| p.0);
        // Terminators first among equal ips, so the lookup (last entry at or below the ip)
        // prefers real entries, as the kernel's orc_sort_cmp arranges.
        pairs.sort_by_key(order);
        let (ips, entries) = pairs.into_iter().unzip();
        Ok(OrcTable {
            ips,
            entries,
            was_sorted,
        })
    }

    pub fn len(&self) -> usize {
        self.ips.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ips.is_empty()
    }

    /// Whether the sections were already in address order (the build sorts vmlinux's).
    pub fn was_sorted(&self) -> bool {
        self.was_sorted
    }

    /// (link-time ip, entry) pairs in address order.
    pub fn iter(&self) -> impl Iterator<Item = (u64, &OrcEntry)> {
        self.ips.iter().copied().zip(&self.entries)
    }

    /// The entry covering link-time address `ip`: the last one at or below it.
    pub fn find(&self, ip: u64) -> Option<&OrcEntry> {
        let i = self.ips.partition_point(|&a| a <= ip);
        self.entries.get(i.checked_sub(1)?)
    }

    /// Unwinds from `regs` and returns the runtime addresses of the frames, innermost first.
    /// See [`OrcTable::unwind_detailed`].
    pub fn unwind<E>(
        &self,
        regs: Regs,
        read_mem: &mut ReadMem<'_, E>,
        slide: u64,
        max_frames: usize,
    ) -> Vec<u64> {
        self.unwind_detailed(regs, read_mem, slide, max_frames)
            .frames
    }

    /// Unwinds from `regs` (a stop in kernel mode). `read_mem(addr, buf)` reads guest virtual
    /// memory; `slide` is the KASLR slide (runtime minus link-time address). Returns at most
    /// `max_frames` frames (the starting rip first) and why the walk stopped.
    pub fn unwind_detailed<E>(
        &self,
        regs: Regs,
        read_mem: &mut ReadMem<'_, E>,
        slide: u64,
        max_frames: usize,
    ) -> Unwind {
        let mut frames = Vec::new();
        let stop = self.walk(regs, read_mem, slide, max_frames, &mut frames);
        Unwind { frames, stop }
    }

    fn walk<E>(
        &self,
        regs: Regs,
        read_mem: &mut ReadMem<'_, E>,
        slide: u64,
        max_frames: usize,
        frames: &mut Vec<u64>,
    ) -> Stop {
        let mut read = |addr: u64| -> Result<u64, Stop> {
            let mut b = [0u8; 8];
            read_mem(addr, &mut b).map_err(|_| Stop::ReadFailed { addr })?;
            Ok(u64::from_le_bytes(b))
        };
        let (mut ip, mut sp, mut bp) = (regs.rip, regs.rsp, regs.rbp);
        // The first ip is where the CPU stopped, not a return address.
        let mut signal = true;
        let mut src = RegsSource::Initial;
        let mut switches = 0;
        let mut seen = HashSet::new();
        if max_frames == 0 {
            return Stop::MaxFrames;
        }
        frames.push(ip);
        loop {
            if frames.len() >= max_frames {
                return Stop::MaxFrames;
            }
            // Return addresses may be the last byte of a function (calls to noreturn
            // functions): look up the call instruction instead.
            let lookup = if signal { ip } else { ip.wrapping_sub(1) };
            let Some(orc) = self.find(lookup.wrapping_sub(slide)) else {
                return Stop::NoOrcEntry { ip };
            };
            if orc.sp_reg == reg::UNDEFINED {
                return if orc.end {
                    Stop::EndOfStack
                } else {
                    Stop::BadEntry { ip }
                };
            }
            let mut get_reg = |off: u64| -> Result<Option<u64>, Stop> {
                match src {
                    RegsSource::Initial => Ok(match off {
                        pt_regs::R10 => regs.r10,
                        pt_regs::R13 => regs.r13,
                        pt_regs::DI => regs.rdi,
                        pt_regs::DX => regs.rdx,
                        pt_regs::BP => Some(regs.rbp),
                        _ => None,
                    }),
                    RegsSource::Full(at) => read(at.wrapping_add(off)).map(Some),
                    RegsSource::Partial(at) if off >= pt_regs::IP => {
                        read(at.wrapping_add(off)).map(Some)
                    }
                    RegsSource::Partial(_) | RegsSource::None => Ok(None),
                }
            };
            let off = orc.sp_offset as i64;
            let mut indirect = false;
            let cfa = match orc.sp_reg {
                reg::SP => sp.wrapping_add_signed(off),
                reg::BP => bp.wrapping_add_signed(off),
                reg::SP_INDIRECT => {
                    indirect = true;
                    match read(sp) {
                        Ok(v) => v.wrapping_add_signed(off),
                        Err(s) => return s,
                    }
                }
                reg::BP_INDIRECT => {
                    indirect = true;
                    match read(bp.wrapping_add_signed(off)) {
                        Ok(v) => v,
                        Err(s) => return s,
                    }
                }
                r @ (reg::R10 | reg::R13 | reg::DI | reg::DX) => {
                    let at = match r {
                        reg::R10 => pt_regs::R10,
                        reg::R13 => pt_regs::R13,
                        reg::DI => pt_regs::DI,
                        _ => pt_regs::DX,
                    };
                    match get_reg(at) {
                        Ok(Some(v)) => v,
                        Ok(None) => return Stop::MissingRegister { ip, reg: r },
                        Err(s) => return s,
                    }
                }
                _ => return Stop::BadEntry { ip },
            };
            let (new_ip, new_sp, new_src) = match orc.kind {
                OrcType::Call => match read(cfa.wrapping_sub(8)) {
                    Ok(v) => (v, cfa, RegsSource::None),
                    Err(s) => return s,
                },
                OrcType::Regs | OrcType::RegsPartial => {
                    let base = if orc.kind == OrcType::Regs {
                        cfa
                    } else {
                        cfa.wrapping_sub(pt_regs::IP)
                    };
                    let frame = (|| {
                        Ok::<_, Stop>((
                            read(base.wrapping_add(pt_regs::IP))?,
                            read(base.wrapping_add(pt_regs::SP))?,
                            read(base.wrapping_add(pt_regs::CS))?,
                        ))
                    })();
                    let (rip, rsp, cs) = match frame {
                        Ok(f) => f,
                        Err(s) => return s,
                    };
                    if cs & 3 != 0 {
                        return Stop::UserMode { ip: rip, sp: rsp };
                    }
                    let src = if orc.kind == OrcType::Regs {
                        RegsSource::Full(base)
                    } else {
                        RegsSource::Partial(base)
                    };
                    (rip, rsp, src)
                }
                OrcType::Unknown => return Stop::BadEntry { ip },
            };
            // The caller's BP: unchanged, saved in this frame, or restored from pt_regs.
            let new_bp = match orc.bp_reg {
                reg::UNDEFINED => {
                    let from_regs = match new_src {
                        RegsSource::Full(at) => read(at.wrapping_add(pt_regs::BP)).map(Some),
                        _ => Ok(None),
                    };
                    match from_regs {
                        Ok(v) => v.unwrap_or(bp),
                        Err(s) => return s,
                    }
                }
                reg::PREV_SP => match read(cfa.wrapping_add_signed(orc.bp_offset as i64)) {
                    Ok(v) => v,
                    Err(s) => return s,
                },
                reg::BP => match read(bp.wrapping_add_signed(orc.bp_offset as i64)) {
                    Ok(v) => v,
                    Err(s) => return s,
                },
                _ => return Stop::BadEntry { ip },
            };
            let may_switch = indirect || orc.kind != OrcType::Call;
            if new_sp <= sp {
                if !may_switch || switches >= MAX_STACK_SWITCHES {
                    return Stop::NotAdvancing {
                        ip: new_ip,
                        sp: new_sp,
                    };
                }
                switches += 1;
            }
            if !seen.insert((new_ip, new_sp)) {
                return Stop::NotAdvancing {
                    ip: new_ip,
                    sp: new_sp,
                };
            }
            (ip, sp, bp) = (new_ip, new_sp, new_bp);
            src = new_src;
            signal = orc.kind != OrcType::Call;
            frames.push(ip);
        }
    }
}

/// Serves small reads from aligned blocks of guest memory fetched once, so an unwind costs a
/// few guest reads (GDB round trips) instead of one or more per frame. Blocks are aligned to
/// their size (a power of two up to 4096), so a block never spans two pages: when a block
/// cannot be read, the exact range is read instead. Use one per stop: guest memory changes
/// while the guest runs.
pub struct CachedReader<F> {
    inner: F,
    block: u64,
    /// (block address, contents); cleared when full (a kernel stack is 16 KiB).
    blocks: Vec<(u64, Vec<u8>)>,
}

const MAX_CACHED_BLOCKS: usize = 64;

impl<F, E> CachedReader<F>
where
    F: FnMut(u64, &mut [u8]) -> Result<(), E>,
{
    /// `block_size` is rounded to a power of two in 8..=4096.
    pub fn new(inner: F, block_size: usize) -> CachedReader<F> {
        let block = (block_size.clamp(8, 4096) as u64)
            .next_power_of_two()
            .min(4096);
        CachedReader {
            inner,
            block,
            blocks: Vec::new(),
        }
    }

    pub fn read(&mut self, addr: u64, buf: &mut [u8]) -> Result<(), E> {
        let base = addr & !(self.block - 1);
        let off = (addr - base) as usize;
        let fits = off
            .checked_add(buf.len())
            .is_some_and(|end| end as u64 <= self.block);
        if !fits {
            return (self.inner)(addr, buf);
        }
        if let Some((_, data)) = self.blocks.iter().find(|(b, _)| *b == base) {
            buf.copy_from_slice(&data[off..off + buf.len()]);
            return Ok(());
        }
        let mut data = vec![0u8; self.block as usize];
        if (self.inner)(base, &mut data).is_err() {
            return (self.inner)(addr, buf);
        }
        buf.copy_from_slice(&data[off..off + buf.len()]);
        if self.blocks.len() >= MAX_CACHED_BLOCKS {
            self.blocks.clear();
        }
        self.blocks.push((base, data));
        Ok(())
    }
}

#[cfg(test)]
mod tests;
