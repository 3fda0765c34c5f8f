//! x86-64 virtual-to-physical translation by walking a page-table
//! hierarchy from a CR3 value, as the MMU does for a read: 4-level or
//! 5-level paging (LA57), 1 GiB and 2 MiB pages, PCID and flag bits of CR3
//! masked off. Access rights (NX, user/supervisor, writable) do not stop a
//! read-only walk; they are reported in the [`Translation`].
//!
//! Physical memory comes through [`PhysRead`]; this crate knows nothing of
//! GDB, QEMU or Linux. The tables are untrusted (a hostile or corrupt
//! guest): a walk reads at most one entry per level, so it cannot loop,
//! and every malformed entry is a typed [`WalkError`] (reserved bits set,
//! a table or page beyond the physical address width or the memory limit,
//! a failed read). Nothing panics on any input.

#![forbid(unsafe_code)]
#[cfg(test)]
mod tests;

/// Bit 12 of CR4: 57-bit linear addresses, five paging levels.
pub const CR4_LA57: u64 = 1 << 12;

const PRESENT: u64 = 1;
const WRITABLE: u64 = 1 << 1;
const USER: u64 = 1 << 2;
const PAGE_SIZE_BIT: u64 = 1 << 7;
const NX: u64 = 1 << 63;
/// Bits 51:12 of an entry or of CR3: a physical frame address.
const ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;

/// Guest-physical memory.
pub trait PhysRead {
    type Error: std::fmt::Display;
    fn read_phys(&mut self, addr: u64, buf: &mut [u8]) -> Result<(), Self::Error>;
}

impl<E: std::fmt::Display, F: FnMut(u64, &mut [u8]) -> Result<(), E>> PhysRead for F {
    type Error = E;
    fn read_phys(&mut self, addr: u64, buf: &mut [u8]) -> Result<(), E> {
        self(addr, buf)
    }
}

/// A paging structure, named as in the Intel SDM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    Pml5,
    Pml4,
    Pdpt,
    Pd,
    Pt,
}

impl Level {
    /// Bit position of the lowest address bit this level's index covers.
    fn shift(self) -> u32 {
        match self {
            Level::Pml5 => 48,
            Level::Pml4 => 39,
            Level::Pdpt => 30,
            Level::Pd => 21,
            Level::Pt => 12,
        }
    }

    fn next(self) -> Option<Level> {
        match self {
            Level::Pml5 => Some(Level::Pml4),
            Level::Pml4 => Some(Level::Pdpt),
            Level::Pdpt => Some(Level::Pd),
            Level::Pd => Some(Level::Pt),
            Level::Pt => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Level::Pml5 => "PML5",
            Level::Pml4 => "PML4",
            Level::Pdpt => "PDPT",
            Level::Pd => "PD",
            Level::Pt => "PT",
        }
    }
}

impl std::fmt::Display for Level {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Errors. Each renders as one line naming the virtual address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WalkError {
    #[error("{vaddr:#x} is not a canonical {bits}-bit address")]
    NonCanonical { vaddr: u64, bits: u32 },
    #[error("{vaddr:#x} is not mapped ({level} entry {entry:#x} not present)")]
    NotPresent {
        vaddr: u64,
        level: Level,
        entry: u64,
    },
    #[error("{vaddr:#x}: malformed page table ({level} entry {entry:#x} has reserved bits set)")]
    Reserved {
        vaddr: u64,
        level: Level,
        entry: u64,
    },
    #[error("{vaddr:#x}: {what} at physical {addr:#x} lies outside guest memory")]
    OutsideMemory {
        vaddr: u64,
        what: &'static str,
        addr: u64,
    },
    #[error("{vaddr:#x}: reading the {level} entry at physical {addr:#x}: {reason}")]
    Read {
        vaddr: u64,
        level: Level,
        addr: u64,
        reason: String,
    },
}

/// Where a virtual address lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Translation {
    pub phys: u64,
    /// 4 KiB, 2 MiB or 1 GiB.
    pub page_size: u64,
    /// Every level allows writes / user access; the leaf forbids execution.
    pub writable: bool,
    pub user: bool,
    pub nx: bool,
}

/// How to walk: paging mode and the bounds of physical memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Walker {
    five_level: bool,
    /// Physical address width (MAXPHYADDR); bits from here to 51 of an
    /// entry are reserved.
    phys_bits: u32,
    /// Physical addresses at or above this are not memory.
    limit: u64,
}

impl Walker {
    /// 4-level paging, or 5-level when `five_level`; 52 physical address
    /// bits (the architectural maximum) and no memory limit.
    pub fn new(five_level: bool) -> Walker {
        Walker {
            five_level,
            phys_bits: 52,
            limit: u64::MAX,
        }
    }

    /// The paging mode a vCPU uses, from its CR4.
    pub fn from_cr4(cr4: u64) -> Walker {
        Walker::new(cr4 & CR4_LA57 != 0)
    }

    /// The CPU's MAXPHYADDR (clamped to 12..=52).
    pub fn with_phys_bits(self, bits: u32) -> Walker {
        Walker {
            phys_bits: bits.clamp(12, 52),
            ..self
        }
    }

    /// Physical memory ends here: tables and pages at or above it are
    /// errors, not reads (some stubs answer reads of unbacked addresses).
    pub fn with_limit(self, limit: u64) -> Walker {
        Walker { limit, ..self }
    }

    pub fn five_level(&self) -> bool {
        self.five_level
    }

    /// Bits 51:MAXPHYADDR, reserved in every entry.
    fn reserved_high(&self) -> u64 {
        ADDR_MASK & !((1u64 << self.phys_bits) - 1)
    }

    /// Translates `vaddr` in the address space whose CR3 is `cr3`.
    pub fn translate<M: PhysRead>(
        &self,
        mem: &mut M,
        cr3: u64,
        vaddr: u64,
    ) -> Result<Translation, WalkError> {
        let bits = if self.five_level { 57 } else { 48 };
        // Canonical: bits 63..bits-1 all equal.
        let top = (vaddr as i64) >> (bits - 1);
        if top != 0 && top != -1 {
            return Err(WalkError::NonCanonical { vaddr, bits });
        }
        let mut level = if self.five_level {
            Level::Pml5
        } else {
            Level::Pml4
        };
        // CR3's low 12 bits are PCID or cache flags, bit 63 a no-flush
        // hint; only bits 51:12 locate the top table.
        let mut table = cr3 & ADDR_MASK & ((1u64 << self.phys_bits) - 1);
        let (mut writable, mut user) = (true, true);
        // One entry per level: at most five iterations, whatever the
        // tables say.
        loop {
            if table >= self.limit {
                return Err(WalkError::OutsideMemory {
                    vaddr,
                    what: "page table",
                    addr: table,
                });
            }
            let index = (vaddr >> level.shift()) & 0x1ff;
            let addr = table | (index * 8);
            let mut raw = [0u8; 8];
            mem.read_phys(addr, &mut raw).map_err(|e| WalkError::Read {
                vaddr,
                level,
                addr,
                reason: e.to_string(),
            })?;
            let entry = u64::from_le_bytes(raw);
            if entry & PRESENT == 0 {
                return Err(WalkError::NotPresent {
                    vaddr,
                    level,
                    entry,
                });
            }
            let reserved = self.reserved_high()
                | match level {
                    // PS is reserved in PML5 and PML4 entries.
                    Level::Pml5 | Level::Pml4 => PAGE_SIZE_BIT,
                    // Bits 29:13 of a 1 GiB page, 20:13 of a 2 MiB page
                    // (bit 12 is PAT).
                    Level::Pdpt if entry & PAGE_SIZE_BIT != 0 => 0x3fff_e000,
                    Level::Pd if entry & PAGE_SIZE_BIT != 0 => 0x001f_e000,
                    _ => 0,
                };
            if entry & reserved != 0 {
                return Err(WalkError::Reserved {
                    vaddr,
                    level,
                    entry,
                });
            }
            writable &= entry & WRITABLE != 0;
            user &= entry & USER != 0;
            let leaf = level == Level::Pt
                || (matches!(level, Level::Pdpt | Level::Pd) && entry & PAGE_SIZE_BIT != 0);
            let next = match level.next() {
                Some(n) if !leaf => n,
                _ => {
                    let page_size = 1u64 << level.shift();
                    let frame = entry & ADDR_MASK & !(page_size - 1);
                    let phys = frame | (vaddr & (page_size - 1));
                    if phys >= self.limit {
                        return Err(WalkError::OutsideMemory {
                            vaddr,
                            what: "page",
                            addr: phys,
                        });
                    }
                    return Ok(Translation {
                        phys,
                        page_size,
                        writable,
                        user,
                        nx: entry & NX != 0,
                    });
                }
            };
            table = entry & ADDR_MASK;
            level = next;
        }
    }

    /// Reads `buf.len()` bytes at `vaddr` of the address space `cr3`,
    /// translating each page the range touches on its own (neighbouring
    /// virtual pages need not be neighbours in physical memory).
    pub fn read_virtual<M: PhysRead>(
        &self,
        mem: &mut M,
        cr3: u64,
        vaddr: u64,
        buf: &mut [u8],
    ) -> Result<(), VirtualReadError<M::Error>> {
        let mut done = 0usize;
        while done < buf.len() {
            let va = vaddr.wrapping_add(done as u64);
            let t = self.translate(mem, cr3, va)?;
            // Up to the end of this page (of whatever size it is).
            let room = t.page_size - (t.phys & (t.page_size - 1));
            let n = (buf.len() - done).min(usize::try_from(room).unwrap_or(usize::MAX));
            mem.read_phys(t.phys, &mut buf[done..done + n])
                .map_err(|reason| VirtualReadError::Memory {
                    vaddr: va,
                    phys: t.phys,
                    reason,
                })?;
            done += n;
        }
        Ok(())
    }
}

/// A failed [`Walker::read_virtual`]: the translation, or the data read.
#[derive(Debug, thiserror::Error)]
pub enum VirtualReadError<E: std::fmt::Display> {
    #[error(transparent)]
    Walk(#[from] WalkError),
    #[error("{vaddr:#x} (physical {phys:#x}): {reason}")]
    Memory { vaddr: u64, phys: u64, reason: E },
}
