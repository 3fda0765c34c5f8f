//! Hand-built page tables in a fake physical memory.

use crate::*;

/// A few MiB of physical memory; reads past the end fail.
struct Mem {
    bytes: Vec<u8>,
    reads: usize,
}

impl Mem {
    fn new(size: usize) -> Mem {
        Mem {
            bytes: vec![0; size],
            reads: 0,
        }
    }
    fn set(&mut self, addr: u64, entry: u64) {
        let a = addr as usize;
        self.bytes[a..a + 8].copy_from_slice(&entry.to_le_bytes());
    }
    /// Sets the entry for `vaddr` at `level` in `table`.
    fn map(&mut self, table: u64, level: Level, vaddr: u64, entry: u64) {
        let index = (vaddr >> level.shift()) & 0x1ff;
        self.set(table + index * 8, entry);
    }
}

impl PhysRead for Mem {
    type Error = String;
    fn read_phys(&mut self, addr: u64, buf: &mut [u8]) -> Result<(), String> {
        self.reads += 1;
        let end = addr
            .checked_add(buf.len() as u64)
            .filter(|&e| e <= self.bytes.len() as u64)
            .ok_or_else(|| format!("no memory at {addr:#x}"))?;
        buf.copy_from_slice(&self.bytes[addr as usize..end as usize]);
        Ok(())
    }
}

const P: u64 = 1;
const RW: u64 = 2;
const US: u64 = 4;
const PS: u64 = 1 << 7;

/// Tables at fixed frames: PML5 0x1000, PML4 0x2000, PDPT 0x3000,
/// PD 0x4000, PT 0x5000; data pages from 0x10_0000.
const PML5: u64 = 0x1000;
const PML4: u64 = 0x2000;
const PDPT: u64 = 0x3000;
const PD: u64 = 0x4000;
const PT: u64 = 0x5000;

const USER_VA: u64 = 0x0000_7f12_3456_7abc;

/// `vaddr` mapped by a 4 KiB page at `frame` through 4 levels.
fn four_level(mem: &mut Mem, vaddr: u64, frame: u64) {
    mem.map(PML4, Level::Pml4, vaddr, PDPT | P | RW | US);
    mem.map(PDPT, Level::Pdpt, vaddr, PD | P | RW | US);
    mem.map(PD, Level::Pd, vaddr, PT | P | RW | US);
    mem.map(PT, Level::Pt, vaddr, frame | P | RW | US);
}

#[test]
fn four_kib_page_through_four_levels() {
    let mut mem = Mem::new(4 << 20);
    four_level(&mut mem, USER_VA, 0x10_0000);
    mem.bytes[0x10_0abc..0x10_0ac1].copy_from_slice(b"hello");
    let w = Walker::new(false);
    let t = w.translate(&mut mem, PML4, USER_VA).unwrap();
    assert_eq!(
        t,
        Translation {
            phys: 0x10_0abc,
            page_size: 4096,
            writable: true,
            user: true,
            nx: false
        }
    );
    let mut buf = [0u8; 5];
    w.read_virtual(&mut mem, PML4, USER_VA, &mut buf).unwrap();
    assert_eq!(&buf, b"hello");
}

#[test]
fn pcid_and_flag_bits_of_cr3_are_masked_and_nx_does_not_stop_reads() {
    let mut mem = Mem::new(4 << 20);
    four_level(&mut mem, USER_VA, 0x10_0000);
    // The leaf is no-execute and read-only; the PD entry is supervisor.
    mem.map(PT, Level::Pt, USER_VA, 0x10_0000 | P | (1 << 63));
    mem.map(PD, Level::Pd, USER_VA, PT | P | RW);
    let cr3 = PML4 | 0x5a5 | (1 << 63);
    let t = Walker::from_cr4(0)
        .translate(&mut mem, cr3, USER_VA)
        .unwrap();
    assert_eq!(t.phys, 0x10_0abc);
    assert!(t.nx && !t.writable && !t.user);
}

#[test]
fn two_mib_and_one_gib_pages() {
    let mut mem = Mem::new(4 << 20);
    let w = Walker::new(false);
    // 2 MiB page at 0x20_0000 (PAT bit 12 set: not reserved).
    let va2m = 0xffff_8880_0034_5678;
    mem.map(PML4, Level::Pml4, va2m, PDPT | P);
    mem.map(PDPT, Level::Pdpt, va2m, PD | P);
    mem.map(PD, Level::Pd, va2m, 0x20_0000 | (1 << 12) | PS | P);
    let t = w.translate(&mut mem, PML4, va2m).unwrap();
    assert_eq!((t.phys, t.page_size), (0x20_0000 + 0x14_5678, 2 << 20));
    // 1 GiB page at physical 0x4000_0000.
    let va1g = 0xffff_ff00_1234_5678;
    mem.map(PML4, Level::Pml4, va1g, 0x6000 | P);
    mem.map(0x6000, Level::Pdpt, va1g, 0x4000_0000 | PS | P);
    let t = w.translate(&mut mem, PML4, va1g).unwrap();
    assert_eq!((t.phys, t.page_size), (0x4000_0000 + 0x1234_5678, 1 << 30));
}

#[test]
fn five_level_paging_uses_the_pml5_and_57_bit_addresses() {
    let mut mem = Mem::new(4 << 20);
    // Above the 48-bit range: only valid with LA57.
    let va = 0x00ab_cdef_1234_5000u64;
    mem.map(PML5, Level::Pml5, va, PML4 | P | RW | US);
    four_level(&mut mem, va, 0x11_0000);
    let t = Walker::from_cr4(CR4_LA57)
        .translate(&mut mem, PML5, va)
        .unwrap();
    assert_eq!(t.phys, 0x11_0000);
    assert_eq!(
        Walker::new(false).translate(&mut mem, PML4, va),
        Err(WalkError::NonCanonical {
            vaddr: va,
            bits: 48
        })
    );
    assert!(matches!(
        Walker::new(true).translate(&mut mem, PML5, 0x0100_0000_0000_0000),
        Err(WalkError::NonCanonical { bits: 57, .. })
    ));
}

#[test]
fn not_present_at_each_level() {
    let w = Walker::new(false);
    for (level, table) in [
        (Level::Pml4, PML4),
        (Level::Pdpt, PDPT),
        (Level::Pd, PD),
        (Level::Pt, PT),
    ] {
        let mut mem = Mem::new(4 << 20);
        four_level(&mut mem, USER_VA, 0x10_0000);
        // Present bit clear, the rest still looks like an entry.
        mem.map(table, level, USER_VA, 0x7000 | RW);
        assert_eq!(
            w.translate(&mut mem, PML4, USER_VA),
            Err(WalkError::NotPresent {
                vaddr: USER_VA,
                level,
                entry: 0x7000 | RW
            })
        );
    }
}

#[test]
fn reserved_bits_are_malformed_tables() {
    let w = Walker::new(false).with_phys_bits(40);
    let cases: [(Level, u64, u64); 5] = [
        // PS in a PML4 entry.
        (Level::Pml4, PML4, PDPT | P | PS),
        // A table address beyond MAXPHYADDR (bit 45).
        (Level::Pdpt, PDPT, PD | P | (1 << 45)),
        // Bits 20:13 of a 2 MiB page.
        (Level::Pd, PD, 0x20_0000 | P | PS | (1 << 14)),
        // Bits 29:13 of a 1 GiB page.
        (Level::Pdpt, PDPT, 0x4000_0000 | P | PS | (1 << 25)),
        // A frame beyond MAXPHYADDR in a PTE.
        (Level::Pt, PT, (1 << 50) | P),
    ];
    for (level, table, entry) in cases {
        let mut mem = Mem::new(4 << 20);
        four_level(&mut mem, USER_VA, 0x10_0000);
        mem.map(table, level, USER_VA, entry);
        assert_eq!(
            w.translate(&mut mem, PML4, USER_VA),
            Err(WalkError::Reserved {
                vaddr: USER_VA,
                level,
                entry
            }),
            "{level} entry {entry:#x}"
        );
    }
    // In a 5-level walk, PS is reserved in the PML5 entry too.
    let mut mem = Mem::new(4 << 20);
    mem.map(PML5, Level::Pml5, USER_VA, PML4 | P | PS);
    assert!(matches!(
        Walker::new(true).translate(&mut mem, PML5, USER_VA),
        Err(WalkError::Reserved {
            level: Level::Pml5,
            ..
        })
    ));
}

#[test]
fn entries_pointing_outside_memory_are_errors() {
    let mut mem = Mem::new(4 << 20);
    four_level(&mut mem, USER_VA, 0x10_0000);
    // A PD entry naming a table far beyond the 4 MiB of memory.
    mem.map(PD, Level::Pd, USER_VA, 0x7_0000_0000 | P);
    let e = Walker::new(false)
        .translate(&mut mem, PML4, USER_VA)
        .unwrap_err();
    assert!(
        matches!(&e, WalkError::Read { level: Level::Pt, addr, .. } if *addr >= 0x7_0000_0000),
        "{e:?}"
    );
    assert!(e.to_string().contains("no memory at"), "{e}");
    // With a known memory size the walker does not even read there.
    let reads = mem.reads;
    let w = Walker::new(false).with_limit(4 << 20);
    assert!(matches!(
        w.translate(&mut mem, PML4, USER_VA),
        Err(WalkError::OutsideMemory {
            what: "page table",
            ..
        })
    ));
    assert_eq!(mem.reads, reads + 3);
    // A leaf page beyond the limit; a CR3 beyond it.
    four_level(&mut mem, USER_VA, 0x1000_0000);
    assert!(matches!(
        w.translate(&mut mem, PML4, USER_VA),
        Err(WalkError::OutsideMemory { what: "page", .. })
    ));
    assert!(matches!(
        w.translate(&mut mem, 0x1_0000_0000, USER_VA),
        Err(WalkError::OutsideMemory { .. })
    ));
}

#[test]
fn a_table_that_points_at_itself_ends_after_one_entry_per_level() {
    // Every entry of the one table maps the table itself (a cycle).
    let mut mem = Mem::new(1 << 20);
    for i in 0..512 {
        mem.set(PML4 + i * 8, PML4 | P | RW);
    }
    let reads = mem.reads;
    let t = Walker::new(false)
        .translate(&mut mem, PML4, USER_VA)
        .unwrap();
    assert_eq!(t.phys, PML4 | (USER_VA & 0xfff));
    assert_eq!(mem.reads, reads + 4);
    // Five-level, same table: five reads.
    let reads = mem.reads;
    Walker::new(true)
        .translate(&mut mem, PML4, USER_VA)
        .unwrap();
    assert_eq!(mem.reads, reads + 5);
}

#[test]
fn reads_across_pages_translate_each_page() {
    let mut mem = Mem::new(4 << 20);
    let va = 0x40_0ffa;
    // Two neighbouring virtual pages in frames far apart, in reverse order.
    four_level(&mut mem, va, 0x30_0000);
    mem.map(PT, Level::Pt, va + 0x1000, 0x10_0000 | P);
    mem.bytes[0x30_0ffa..0x30_1000].copy_from_slice(b"across");
    mem.bytes[0x10_0000..0x10_0006].copy_from_slice(b" pages");
    let w = Walker::new(false);
    let mut buf = [0u8; 12];
    w.read_virtual(&mut mem, PML4, va, &mut buf).unwrap();
    assert_eq!(&buf, b"across pages");
    // The second page unmapped: an error naming its address.
    mem.map(PT, Level::Pt, va + 0x1000, 0);
    let e = w.read_virtual(&mut mem, PML4, va, &mut buf).unwrap_err();
    assert!(
        matches!(
            e,
            VirtualReadError::Walk(WalkError::NotPresent {
                vaddr: 0x40_1000,
                level: Level::Pt,
                ..
            })
        ),
        "{e:?}"
    );
    assert_eq!(
        e.to_string(),
        "0x401000 is not mapped (PT entry 0x0 not present)"
    );
}

#[test]
fn random_tables_never_panic_and_stay_bounded() {
    // xorshift: memory full of random words, random addresses and CR3s.
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut mem = Mem::new(1 << 20);
    for chunk in mem.bytes.chunks_mut(8) {
        // Mostly small frame numbers, so walks go deep.
        let v = next();
        let v = if v & 3 == 0 { v } else { v & 0xf_f0ff | 1 };
        chunk.copy_from_slice(&v.to_le_bytes());
    }
    for i in 0..20_000u64 {
        let w = Walker::new(i % 2 == 0).with_phys_bits((next() % 60) as u32);
        let cr3 = if i % 3 == 0 {
            next()
        } else {
            next() & 0xf_f000
        };
        let va = next();
        let before = mem.reads;
        let _ = w.translate(&mut mem, cr3, va);
        assert!(mem.reads - before <= 5);
        let mut buf = [0u8; 64];
        let _ = w.read_virtual(&mut mem, cr3, va, &mut buf);
    }
}
