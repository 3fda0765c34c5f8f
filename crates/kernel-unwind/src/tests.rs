use std::collections::HashMap;
use std::path::PathBuf;

use super::*;

const TEXT: u64 = 0xffffffff81000000;
const SLIDE: u64 = 0x2a0_0000;
const STACK: u64 = 0xffff_c900_0001_0000;

fn e(sp_reg: u8, sp_offset: i16, bp_reg: u8, bp_offset: i16, kind: OrcType, end: bool) -> OrcEntry {
    OrcEntry {
        sp_offset,
        bp_offset,
        sp_reg,
        bp_reg,
        kind,
        end,
    }
}

fn call_sp(off: i16) -> OrcEntry {
    e(reg::SP, off, reg::UNDEFINED, 0, OrcType::Call, false)
}

// Function addresses (link time) in the synthetic table.
const A: u64 = TEXT + 0x100; // leaf: push rbp at +0x10
const B: u64 = TEXT + 0x200; // 24 bytes of locals
const C: u64 = TEXT + 0x300; // frame pointer based
const D: u64 = TEXT + 0x400; // entry code: pt_regs at SP
const E: u64 = TEXT + 0x500; // kernel thread start: end of stack
const F: u64 = TEXT + 0x600; // gap: terminator
const G: u64 = TEXT + 0x700; // switches stacks: previous SP saved at [SP]
const H: u64 = TEXT + 0x800; // iret frame only (REGS_PARTIAL) at SP
const I: u64 = TEXT + 0x900; // based on R10
const END: u64 = TEXT + 0xa00;

fn table_entries() -> Vec<(u64, OrcEntry)> {
    vec![
        (A, call_sp(8)),
        (
            A + 0x10,
            e(reg::SP, 16, reg::PREV_SP, -16, OrcType::Call, false),
        ),
        (B, call_sp(32)),
        (C, e(reg::BP, 16, reg::PREV_SP, -16, OrcType::Call, false)),
        (D, e(reg::SP, 0, reg::UNDEFINED, 0, OrcType::Regs, false)),
        (
            E,
            e(reg::UNDEFINED, 0, reg::UNDEFINED, 0, OrcType::Call, true),
        ),
        (
            F,
            e(reg::UNDEFINED, 0, reg::UNDEFINED, 0, OrcType::Call, false),
        ),
        (
            G,
            e(reg::SP_INDIRECT, 8, reg::UNDEFINED, 0, OrcType::Call, false),
        ),
        (
            H,
            e(reg::SP, 0, reg::UNDEFINED, 0, OrcType::RegsPartial, false),
        ),
        (I, e(reg::R10, 0, reg::UNDEFINED, 0, OrcType::Call, false)),
        (
            END,
            e(reg::UNDEFINED, 0, reg::UNDEFINED, 0, OrcType::Call, false),
        ),
    ]
}

/// The two sections for `entries`, with `.orc_unwind_ip` at `ip_addr`.
fn sections(entries: &[(u64, OrcEntry)], ip_addr: u64) -> (Vec<u8>, Vec<u8>) {
    let mut ips = Vec::new();
    let mut orc = Vec::new();
    for (i, (ip, ent)) in entries.iter().enumerate() {
        let rel = ip.wrapping_sub(ip_addr + 4 * i as u64) as i64 as i32;
        ips.extend_from_slice(&rel.to_le_bytes());
        orc.extend_from_slice(&ent.encode());
    }
    (ips, orc)
}

fn table() -> OrcTable {
    let (ips, orc) = sections(&table_entries(), 0xffffffff82c5f474);
    OrcTable::parse(&ips, 0xffffffff82c5f474, &orc).unwrap()
}

/// Sparse fake guest memory: 8-byte words; anything else fails to read.
#[derive(Default)]
struct Mem(HashMap<u64, u64>);

impl Mem {
    fn put(&mut self, addr: u64, v: u64) {
        self.0.insert(addr, v);
    }
    fn reader(&self) -> impl FnMut(u64, &mut [u8]) -> Result<(), String> + '_ {
        |addr, buf| {
            let v = self.0.get(&addr).ok_or(format!("unmapped {addr:#x}"))?;
            let bytes = v.to_le_bytes();
            buf.copy_from_slice(bytes.get(..buf.len()).ok_or("read past a word")?);
            Ok(())
        }
    }
}

fn rt(link: u64) -> u64 {
    link + SLIDE
}

#[test]
fn entry_encoding_roundtrip() {
    for flags in 0..(1u16 << 11) {
        let mut b = [0x34, 0x12, 0xf0, 0xff, 0, 0];
        b[4..].copy_from_slice(&flags.to_le_bytes());
        let ent = OrcEntry::decode(b);
        assert_eq!(ent.encode(), b, "flags {flags:#x}");
    }
    // ksys_write's entry in Debian 6.1: sp_offset 8, sp_reg SP, type CALL.
    let ent = OrcEntry::decode([8, 0, 0, 0, 0x05, 0x00]);
    assert_eq!(ent, call_sp(8));
    assert!(OrcEntry::decode([0, 0, 0, 0, 0, 0x04]).end);
    assert_eq!(OrcEntry::decode([0, 0, 0, 0, 0, 0x01]).kind, OrcType::Regs);
    assert_eq!(OrcEntry::decode([0, 0, 0, 0, 0x45, 0]).bp_reg, reg::BP);
}

#[test]
fn table_parse_and_lookup() {
    let t = table();
    assert_eq!(t.len(), 11);
    assert!(t.was_sorted());
    assert_eq!(t.find(A - 1), None);
    assert_eq!(t.find(A), Some(&call_sp(8)));
    assert_eq!(t.find(A + 0xf), Some(&call_sp(8)));
    assert_eq!(t.find(A + 0x10).unwrap().sp_offset, 16);
    assert_eq!(t.find(B + 0xff), Some(&call_sp(32)));
    assert_eq!(t.find(u64::MAX).unwrap().sp_reg, reg::UNDEFINED);

    // Out of order input is sorted; a terminator at the same ip as a real entry loses.
    let mut ents = table_entries();
    ents.reverse();
    ents.push((B, e(reg::UNDEFINED, 0, 0, 0, OrcType::Call, false)));
    let (ips, orc) = sections(&ents, 0x1000);
    let t2 = OrcTable::parse(&ips, 0x1000, &orc).unwrap();
    assert!(!t2.was_sorted());
    assert!(t2.iter().map(|(ip, _)| ip).is_sorted());
    assert_eq!(t2.find(B + 4), Some(&call_sp(32)));

    let (ips, orc) = sections(&table_entries(), 0x1000);
    assert_eq!(
        OrcTable::parse(&ips[..ips.len() - 1], 0x1000, &orc).unwrap_err(),
        Error::IpLength(ips.len() - 1)
    );
    assert_eq!(
        OrcTable::parse(&ips, 0x1000, &orc[..orc.len() - 1]).unwrap_err(),
        Error::OrcLength(orc.len() - 1)
    );
    assert!(matches!(
        OrcTable::parse(&ips[..8], 0x1000, &orc),
        Err(Error::CountMismatch { ips: 2, .. })
    ));
    assert_eq!(OrcTable::parse(&[], 0, &[]).unwrap_err(), Error::Empty);
}

/// Three call frames of different kinds, then a kernel thread's end of stack:
/// A (rbp pushed) ← B (sp-based, 24 bytes locals) ← C (rbp-based) ← E (thread start).
fn three_frames() -> (Regs, Mem, Vec<u64>) {
    let mut m = Mem::default();
    let sp0 = STACK;
    let saved_bp = STACK + 0x100; // C's frame pointer, pushed by A
    // A at +0x13: CFA = sp + 16; return address at CFA - 8, caller's rbp at CFA - 16.
    m.put(sp0, saved_bp);
    m.put(sp0 + 8, rt(B + 0x20));
    // B: CFA = (sp0 + 16) + 32.
    m.put(sp0 + 16 + 32 - 8, rt(C + 0x30));
    // C: CFA = rbp + 16; caller's rbp at CFA - 16 = [rbp].
    m.put(saved_bp, 0xdead_beef);
    m.put(saved_bp + 8, rt(E + 5));
    let regs = Regs::new(rt(A + 0x13), sp0, 0x1234);
    (
        regs,
        m,
        vec![rt(A + 0x13), rt(B + 0x20), rt(C + 0x30), rt(E + 5)],
    )
}

#[test]
fn unwinds_call_frames_to_end_of_stack() {
    let t = table();
    let (regs, m, want) = three_frames();
    let u = t.unwind_detailed(regs, &mut m.reader(), SLIDE, 64);
    assert_eq!(u.frames, want);
    assert_eq!(u.stop, Stop::EndOfStack);
    assert_eq!(t.unwind(regs, &mut m.reader(), SLIDE, 64), want);
    // Frame limit.
    let u = t.unwind_detailed(regs, &mut m.reader(), SLIDE, 2);
    assert_eq!((u.frames.as_slice(), u.stop), (&want[..2], Stop::MaxFrames));
    assert!(t.unwind(regs, &mut m.reader(), SLIDE, 0).is_empty());
    // Wrong slide: the first lookup misses the table.
    let u = t.unwind_detailed(regs, &mut m.reader(), 0x4000_0000, 64);
    assert_eq!(
        (u.frames.len(), u.stop),
        (1, Stop::NoOrcEntry { ip: regs.rip })
    );
}

#[test]
fn return_address_at_function_end_uses_the_call_site() {
    // B's call is its last instruction: the return address is the first byte of C. The entry
    // must come from ip - 1 (B), not C (which would need rbp).
    let t = table();
    let mut m = Mem::default();
    m.put(STACK, rt(C)); // A at entry: CFA = sp + 8
    m.put(STACK + 8 + 32 - 8, rt(E + 1)); // B's frame
    let u = t.unwind_detailed(Regs::new(rt(A), STACK, 0), &mut m.reader(), SLIDE, 64);
    assert_eq!(u.frames, [rt(A), rt(C), rt(E + 1)]);
    assert_eq!(u.stop, Stop::EndOfStack);
}

/// A `pt_regs` at `at` with the given ip/sp/cs and rbp.
fn put_regs(m: &mut Mem, at: u64, ip: u64, sp: u64, cs: u64, bp: u64) {
    m.put(at + pt_regs::BP, bp);
    m.put(at + pt_regs::IP, ip);
    m.put(at + pt_regs::CS, cs);
    m.put(at + pt_regs::SP, sp);
}

#[test]
fn pt_regs_frames() {
    let t = table();
    // A called from entry code D (syscall from user space): stops at user mode.
    let mut m = Mem::default();
    m.put(STACK, rt(D + 0x10));
    put_regs(&mut m, STACK + 8, 0x401000, 0x7ffd_0000_1000, 0x33, 7);
    let u = t.unwind_detailed(Regs::new(rt(A), STACK, 0), &mut m.reader(), SLIDE, 64);
    assert_eq!(u.frames, [rt(A), rt(D + 0x10)]);
    assert_eq!(
        u.stop,
        Stop::UserMode {
            ip: 0x401000,
            sp: 0x7ffd_0000_1000
        }
    );

    // An interrupt in kernel code: continue at the interrupted ip (exact, not ip - 1), on the
    // interrupted stack (here: lower, another stack), with rbp from pt_regs.
    let mut m = Mem::default();
    let task_stack = STACK - 0x8000;
    let frame_bp = task_stack + 0x200;
    m.put(STACK, rt(D + 0x10));
    put_regs(&mut m, STACK + 8, rt(C), task_stack, 0x10, frame_bp);
    // C: CFA = rbp + 16; its caller's rbp at CFA - 16.
    m.put(frame_bp, 0);
    m.put(frame_bp + 8, rt(E + 3));
    let u = t.unwind_detailed(Regs::new(rt(A), STACK, 0), &mut m.reader(), SLIDE, 64);
    assert_eq!(u.frames, [rt(A), rt(D + 0x10), rt(C), rt(E + 3)]);
    assert_eq!(u.stop, Stop::EndOfStack);

    // Hardware iret frame only (REGS_PARTIAL): SP points at ip; rbp is not restored.
    let mut m = Mem::default();
    m.put(STACK, rt(H + 4));
    let iret = STACK + 8;
    m.put(iret, 0x401000);
    m.put(iret + 8, 0x33);
    m.put(iret + 24, 0x7ffd_0000_2000);
    let u = t.unwind_detailed(Regs::new(rt(A), STACK, 0), &mut m.reader(), SLIDE, 64);
    assert_eq!(u.frames, [rt(A), rt(H + 4)]);
    assert_eq!(
        u.stop,
        Stop::UserMode {
            ip: 0x401000,
            sp: 0x7ffd_0000_2000
        }
    );
}

#[test]
fn register_based_entries() {
    let t = table();
    let mut m = Mem::default();
    let cfa = STACK + 0x40;
    m.put(cfa - 8, rt(E + 2));
    let mut regs = Regs::new(rt(I + 1), STACK, 0);
    let u = t.unwind_detailed(regs, &mut m.reader(), SLIDE, 64);
    assert_eq!(
        u.stop,
        Stop::MissingRegister {
            ip: rt(I + 1),
            reg: reg::R10
        }
    );
    regs.r10 = Some(cfa);
    let u = t.unwind_detailed(regs, &mut m.reader(), SLIDE, 64);
    assert_eq!(u.frames, [rt(I + 1), rt(E + 2)]);
    assert_eq!(u.stop, Stop::EndOfStack);
}

#[test]
fn hostile_stacks_end_cleanly() {
    let t = table();
    // Read failure after two frames: what was collected is returned.
    let (regs, mut m, want) = three_frames();
    m.0.remove(&(STACK + 0x100 + 8));
    let u = t.unwind_detailed(regs, &mut m.reader(), SLIDE, 64);
    assert_eq!(u.frames, want[..3]);
    assert_eq!(
        u.stop,
        Stop::ReadFailed {
            addr: STACK + 0x100 + 8
        }
    );

    // Frame pointer pointing down the stack: refused.
    let (regs, mut m, _) = three_frames();
    m.put(STACK, STACK - 0x100);
    m.put(STACK - 0x100, 0);
    m.put(STACK - 0x100 + 8, rt(E + 5));
    let u = t.unwind_detailed(regs, &mut m.reader(), SLIDE, 64);
    assert_eq!(u.frames.len(), 3);
    assert!(matches!(u.stop, Stop::NotAdvancing { .. }), "{u:x?}");

    // Stack switch that leads back to itself: G's saved SP makes the same frame again.
    let mut m = Mem::default();
    m.put(STACK, STACK - 8);
    m.put(STACK - 8, rt(G + 0x10));
    let u = t.unwind_detailed(Regs::new(rt(G + 4), STACK, 0), &mut m.reader(), SLIDE, 1000);
    assert!(u.frames.len() < 5, "{:x?}", u.frames);
    assert!(matches!(u.stop, Stop::NotAdvancing { .. }), "{u:x?}");

    // Stack switches that keep going down are cut after a few.
    let mut m = Mem::default();
    for k in 0..100u64 {
        let sp = STACK - k * 0x100;
        m.put(sp, sp - 0x100 - 8); // CFA = [sp] + 8 = next sp
        m.put(sp - 0x108, rt(G + 0x10));
    }
    let u = t.unwind_detailed(Regs::new(rt(G + 4), STACK, 0), &mut m.reader(), SLIDE, 1000);
    assert!(
        u.frames.len() <= MAX_STACK_SWITCHES + 2,
        "{}",
        u.frames.len()
    );
    assert!(matches!(u.stop, Stop::NotAdvancing { .. }), "{u:x?}");

    // Gaps and bad entries.
    let u = t.unwind_detailed(Regs::new(rt(F + 1), STACK, 0), &mut m.reader(), SLIDE, 64);
    assert_eq!(u.stop, Stop::BadEntry { ip: rt(F + 1) });
    let u = t.unwind_detailed(Regs::new(rt(A) - 1, STACK, 0), &mut m.reader(), SLIDE, 64);
    assert_eq!(u.stop, Stop::NoOrcEntry { ip: rt(A) - 1 });
}

#[test]
fn random_memory_never_hangs() {
    let t = table();
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let starts = [A, A + 0x13, B, C, D, G, H, I];
    for round in 0..3000 {
        let salt = next();
        // Memory that answers every read with junk that often looks like stack or text.
        let mut read = |addr: u64, buf: &mut [u8]| -> Result<(), ()> {
            let h = (addr ^ salt).wrapping_mul(0x9e37_79b9_7f4a_7c15);
            let v = match h >> 62 {
                0 => rt(TEXT + (h >> 20) % 0xa00),
                1 => STACK.wrapping_add((h >> 20) % 0x400).wrapping_sub(0x200),
                2 if h & 1 == 0 => return Err(()),
                _ => h,
            };
            buf.copy_from_slice(&v.to_le_bytes()[..buf.len()]);
            Ok(())
        };
        let start = starts[round % starts.len()];
        let regs = Regs {
            r10: Some(next()),
            ..Regs::new(rt(start + next() % 16), STACK, STACK + next() % 0x400)
        };
        let u = t.unwind_detailed(regs, &mut read, SLIDE, 50);
        assert!(!u.frames.is_empty() && u.frames.len() <= 50);
    }
}

// ---- Against the real Debian kernel image ----

fn real_image() -> Option<PathBuf> {
    match std::env::var_os("VMPROBE_TEST_VMLINUZ") {
        Some(p) => Some(PathBuf::from(p)),
        None if std::env::var_os("CI").is_some() => {
            panic!("VMPROBE_TEST_VMLINUZ must be set in CI")
        }
        None => {
            eprintln!("note: VMPROBE_TEST_VMLINUZ unset; skipping real-image test");
            None
        }
    }
}

/// The image's ORC table and symbols, decoded once per test binary (slow in debug builds).
fn real() -> Option<&'static (OrcTable, kernel_image::KernelSymbols)> {
    static REAL: std::sync::OnceLock<(OrcTable, kernel_image::KernelSymbols)> =
        std::sync::OnceLock::new();
    let img = real_image()?;
    Some(REAL.get_or_init(|| {
        let secs =
            kernel_image::KernelSections::load(&img, &[".orc_unwind_ip", ".orc_unwind"], None)
                .unwrap();
        let ip = secs.get(".orc_unwind_ip").expect(".orc_unwind_ip");
        let orc = secs.get(".orc_unwind").expect(".orc_unwind");
        let t0 = std::time::Instant::now();
        let t = OrcTable::parse(&ip.data, ip.addr, &orc.data).unwrap();
        eprintln!("parsed {} ORC entries in {:?}", t.len(), t0.elapsed());
        (t, kernel_image::KernelSymbols::load(&img, None).unwrap())
    }))
}

#[test]
fn real_image_table() {
    let Some((t, syms)) = real() else { return };
    assert!(t.len() > 100_000, "{} entries", t.len());
    assert!(
        t.was_sorted(),
        "vmlinux ORC tables are sorted at build time"
    );
    let text = syms.lookup("_stext").unwrap().addr;
    let etext = syms.lookup("_etext").unwrap().addr;
    let covered = t
        .iter()
        .filter(|(ip, _)| (text..etext).contains(ip))
        .count();
    assert!(covered > 100_000, "{covered} entries in .text");

    let kw = syms.lookup("ksys_write").unwrap().addr;
    assert_eq!(t.find(kw), Some(&call_sp(8)), "ksys_write entry");
    // Past the end of .text (rodata, data) only the section's terminator covers an address,
    // so a bogus return address there ends an unwind.
    let past = t.find(etext + 0x1000).unwrap();
    assert_eq!((past.sp_reg, past.end), (reg::UNDEFINED, false));
    let u = t.unwind_detailed(
        Regs::new(etext + 0x1000, STACK, 0),
        &mut |_, _| Err(()),
        0,
        8,
    );
    assert_eq!(u.stop, Stop::BadEntry { ip: etext + 0x1000 });

    // Independent check against kallsyms: at the first byte of ordinary C functions the
    // return address is the only thing on the stack.
    let (mut funcs, mut at_entry) = (0, 0);
    for s in syms.iter() {
        if s.kind != 'T' || !(text..etext).contains(&s.addr) || s.name.starts_with("__pfx") {
            continue;
        }
        funcs += 1;
        if t.find(s.addr) == Some(&call_sp(8)) {
            at_entry += 1;
        }
    }
    eprintln!("{at_entry}/{funcs} global functions start with CALL sp+8");
    assert!(
        funcs > 10_000 && at_entry * 100 >= funcs * 95,
        "{at_entry}/{funcs}"
    );
}

/// Builds a syscall stack the way the real table describes it: ksys_write's first byte ←
/// do_syscall_64 (which keeps a frame pointer: BP-based entries) ← the syscall entry code
/// (pt_regs from user mode). __x64_sys_write tail-calls ksys_write, so it is not on the stack.
/// Return sites are found by their entries; the stack contents follow from the entries, so
/// this checks the walk over real entries of three kinds, with a KASLR slide.
#[test]
fn real_image_syscall_stack() {
    let Some((t, syms)) = real() else { return };
    let slide = 0x1e00_0000u64; // a KASLR slide (2 MiB aligned)
    let range = |name: &str| {
        let s = syms.lookup(name).unwrap_or_else(|| panic!("{name}"));
        let end = syms
            .iter()
            .map(|x| x.addr)
            .filter(|&a| a > s.addr)
            .min()
            .unwrap();
        s.addr..end
    };
    // A return site in `name`: the first address past the prologue whose preceding byte has an
    // entry of the wanted shape.
    let site = |name: &str, want: &dyn Fn(&OrcEntry) -> bool| {
        range(name)
            .skip(8)
            .find(|&a| t.find(a - 1).is_some_and(want))
            .unwrap_or_else(|| panic!("no return site in {name}"))
    };
    let r1 = site("do_syscall_64", &|e: &OrcEntry| {
        e.kind == OrcType::Call && e.sp_reg == reg::BP
    });
    let r2 = site("entry_SYSCALL_64_after_hwframe", &|e: &OrcEntry| {
        e.kind == OrcType::Regs && e.sp_reg == reg::SP
    });
    let kw = syms.lookup("ksys_write").unwrap().addr;

    // Lay out the stack frame by frame. `bp_at`: where the current frame's rbp comes from
    // (None: the starting registers).
    let mut m = Mem::default();
    let mut regs = Regs::new(kw + slide, STACK, 0);
    let (mut ip, mut sp, mut signal) = (kw, STACK, true);
    let mut bp_at: Option<u64> = None;
    for ret in [r1, r2] {
        let ent = *t.find(if signal { ip } else { ip - 1 }).unwrap();
        assert_eq!(ent.kind, OrcType::Call);
        let cfa = match ent.sp_reg {
            reg::SP => sp + ent.sp_offset as u64,
            reg::BP => {
                // Put this frame's rbp so that its CFA is a little above the stack pointer.
                let cfa = sp + 0x40;
                let bp = cfa.wrapping_add_signed(-(ent.sp_offset as i64));
                match bp_at {
                    None => regs.rbp = bp,
                    Some(at) => m.put(at, bp),
                }
                cfa
            }
            r => panic!("unexpected sp_reg {r} at {ip:#x}"),
        };
        m.put(cfa - 8, ret + slide);
        match ent.bp_reg {
            reg::PREV_SP => {
                let at = cfa.wrapping_add_signed(ent.bp_offset as i64);
                m.0.entry(at).or_insert(0);
                bp_at = Some(at);
            }
            reg::UNDEFINED => {}
            r => panic!("unexpected bp_reg {r} at {ip:#x}"),
        }
        (ip, sp, signal) = (ret, cfa, false);
    }
    let ent = t.find(r2 - 1).unwrap();
    put_regs(
        &mut m,
        sp + ent.sp_offset as u64,
        0x7f00_1234,
        0x7ffc_0000_0000,
        0x33,
        0,
    );

    let u = t.unwind_detailed(regs, &mut m.reader(), slide, 64);
    assert_eq!(u.frames, [kw, r1, r2].map(|a| a + slide));
    assert_eq!(
        u.stop,
        Stop::UserMode {
            ip: 0x7f00_1234,
            sp: 0x7ffc_0000_0000
        }
    );
    let names: Vec<&str> = u
        .frames
        .iter()
        .map(|f| syms.symbolize(f - slide).unwrap().0.name.as_str())
        .collect();
    assert_eq!(
        names,
        [
            "ksys_write",
            "do_syscall_64",
            "entry_SYSCALL_64_after_hwframe"
        ]
    );
}

#[test]
fn cached_reader_matches_direct_reads() {
    let t = table();
    let (regs, m, want) = three_frames();
    let mut direct_calls = 0;
    let mut counting = |a: u64, b: &mut [u8]| {
        direct_calls += 1;
        m.reader()(a, b)
    };
    assert_eq!(t.unwind(regs, &mut counting, SLIDE, 64), want);

    // The fake memory only maps single words, so blocks fail and exact reads take over.
    let mut calls = 0;
    let mut cached = CachedReader::new(
        |a: u64, b: &mut [u8]| {
            calls += 1;
            m.reader()(a, b)
        },
        256,
    );
    assert_eq!(
        t.unwind(regs, &mut |a, b| cached.read(a, b), SLIDE, 64),
        want
    );
    drop(cached);
    assert_eq!(
        calls,
        2 * direct_calls,
        "a failed block read, then the exact read"
    );

    // Memory mapped as whole blocks: one read per block touched.
    let mut flat = vec![0u8; 0x200];
    let base = STACK;
    for (addr, v) in &m.0 {
        if let Some(o) = addr.checked_sub(base).map(|o| o as usize)
            && o + 8 <= flat.len()
        {
            flat[o..o + 8].copy_from_slice(&v.to_le_bytes());
        }
    }
    let mut block_reads = Vec::new();
    let mut cached = CachedReader::new(
        |a: u64, b: &mut [u8]| -> Result<(), ()> {
            block_reads.push((a, b.len()));
            let o = a.checked_sub(base).ok_or(())? as usize;
            b.copy_from_slice(flat.get(o..o + b.len()).ok_or(())?);
            Ok(())
        },
        256,
    );
    assert_eq!(
        t.unwind(regs, &mut |a, b| cached.read(a, b), SLIDE, 64),
        want
    );
    drop(cached);
    assert_eq!(block_reads, [(STACK, 256), (STACK + 0x100, 256)]);
    assert!(direct_calls >= 5, "{direct_calls}");

    // Reads that straddle a block go straight through; odd sizes are rounded.
    let mut seen = Vec::new();
    let mut c = CachedReader::new(
        |a: u64, b: &mut [u8]| -> Result<(), ()> {
            seen.push((a, b.len()));
            b.fill(0xab);
            Ok(())
        },
        100,
    );
    let mut buf = [0u8; 8];
    c.read(0x1000 + 124, &mut buf).unwrap();
    c.read(0x1000 + 8, &mut buf).unwrap();
    assert_eq!(buf, [0xab; 8]);
    drop(c);
    assert_eq!(seen, [(0x1000 + 124, 8), (0x1000, 128)]);
}
