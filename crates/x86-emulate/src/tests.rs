//! Robustness and the overlay: arbitrary bytes never panic, wild reads fault, loops run out of
//! budget, writes stay in the overlay, scratch regions read zero, hooks steer calls and jumps.

use super::*;

/// Bytes at `base`; everything else faults. Never written (the trait cannot write):
/// `bytes` after a run is the proof.
type Flat = FlatMemory;

const CODE: u64 = 0xffff_ffff_8100_0000;
const STACK: u64 = 0xffff_c900_0000_8000;

fn machine() -> Machine {
    let mut regs = Registers {
        rip: CODE,
        rflags: 0x202,
        ..Registers::default()
    };
    regs.gpr[RSP] = STACK;
    let mut m = Machine::new(regs);
    m.add_scratch(STACK - 0x4000, 0x8000);
    m
}

fn code(bytes: &[u8]) -> Flat {
    let mut b = bytes.to_vec();
    b.resize(4096, 0xcc);
    Flat {
        base: CODE,
        bytes: b,
    }
}

struct Xorshift(u64);

impl Xorshift {
    fn draw(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// Hooks that answer at random.
struct RandomHooks(Xorshift);

impl Hooks for RandomHooks {
    fn transfer(&mut self, _: u64, _: Transfer, _: &mut Machine) -> Action {
        match self.0.draw() % 3 {
            0 => Action::Continue,
            1 => Action::Return(self.0.draw()),
            _ => Action::Stop,
        }
    }
}

#[test]
fn random_bytes_as_code_never_panic() {
    let mut rng = Xorshift(0x1234_5678_9abc_def1);
    let mut outcomes = [0u32; 5];
    for _ in 0..5000 {
        // Code and data in one region, registers pointing into it and anywhere.
        let bytes: Vec<u8> = (0..8192).map(|_| rng.draw() as u8).collect();
        let mut mem = Flat { base: CODE, bytes };
        let mut regs = Registers {
            rip: CODE + rng.draw() % 8000,
            rflags: rng.draw(),
            fs_base: rng.draw(),
            gs_base: CODE,
            ..Registers::default()
        };
        for r in regs.gpr.iter_mut() {
            *r = match rng.draw() % 3 {
                0 => CODE + rng.draw() % 8192,
                1 => rng.draw() % 64,
                _ => rng.draw(),
            };
        }
        let mut m = Machine::new(regs);
        if rng.draw().is_multiple_of(2) {
            m.add_scratch(CODE + 4096, rng.draw() % 8192);
        }
        let mut hooks = RandomHooks(Xorshift(rng.draw() | 1));
        let i = match m.run(&mut mem, &mut hooks, 64) {
            Ok(_) => 0,
            Err(EmuError::Unsupported { .. }) => 1,
            Err(EmuError::Fault { .. }) => 2,
            Err(EmuError::Budget { .. }) => 3,
            Err(EmuError::DivideError { .. }) => 4,
        };
        outcomes[i] += 1;
    }
    // Every kind of ending happened: the runs went somewhere.
    assert!(outcomes.iter().all(|&n| n > 0), "{outcomes:?}");
}

#[test]
fn a_wild_read_faults_naming_the_instruction_and_address() {
    // mov rax, [rbx]
    let mut mem = code(&[0x48, 0x8b, 0x03]);
    let mut m = machine();
    m.regs.gpr[RBX] = 0xdead_beef_0000;
    let e = m.run(&mut mem, &mut NoHooks, 10).unwrap_err();
    assert_eq!(
        e,
        EmuError::Fault {
            rip: CODE,
            addr: 0xdead_beef_0000
        }
    );
    assert_eq!(
        e.to_string(),
        "x86 emulation at 0xffffffff81000000: cannot read memory at 0xdeadbeef0000"
    );
    assert_eq!(m.regs.rip, CODE, "the failing instruction had no effect");
}

#[test]
fn a_loop_runs_out_of_budget() {
    // 1: inc rax; jmp 1b
    let mut mem = code(&[0x48, 0xff, 0xc0, 0xeb, 0xfb]);
    let mut m = machine();
    let e = m.run(&mut mem, &mut NoHooks, 1001).unwrap_err();
    assert_eq!(
        e,
        EmuError::Budget {
            rip: CODE + 3,
            executed: 1001
        }
    );
    assert_eq!(m.regs.gpr[RAX], 501);
    assert_eq!(m.executed(), 1001);
}

#[test]
fn a_huge_rep_count_is_bounded_by_the_budget_and_resumes() {
    // rep stosb; ret
    let mut mem = code(&[0xf3, 0xaa, 0xc3]);
    let mut m = machine();
    let dst = 0xffff_8880_0000_0000;
    m.regs.gpr[RDI] = dst;
    m.regs.gpr[RCX] = 1 << 40;
    m.regs.gpr[RAX] = 0x5a;
    let e = m.run(&mut mem, &mut NoHooks, 1000).unwrap_err();
    assert_eq!(
        e,
        EmuError::Budget {
            rip: CODE,
            executed: 1000
        }
    );
    assert_eq!(m.regs.gpr[RCX], (1 << 40) - 1000);
    assert_eq!(m.regs.gpr[RDI], dst + 1000);
    // Resumed with a small count left, it finishes and reaches the ret.
    m.regs.gpr[RCX] = 3;
    m.call_function(CODE, 0x1234);
    m.run(&mut mem, &mut NoHooks, 100).unwrap();
    let mut out = [0u8; 1004];
    m.add_scratch(dst, 1004);
    m.read(&mut mem, dst, &mut out).unwrap();
    assert!(out[..1003].iter().all(|&b| b == 0x5a) && out[1003] == 0);
}

#[test]
fn writes_stay_in_the_overlay_and_reads_see_them_first() {
    // mov [rbx+2], eax; mov rcx, [rbx]
    let mut mem = code(&[0x89, 0x43, 0x02, 0x48, 0x8b, 0x0b]);
    let data = CODE + 0x800;
    mem.bytes[0x800..0x808].copy_from_slice(&[1, 2, 3, 4, 5, 6, 7, 8]);
    let before = mem.bytes.clone();
    let mut m = machine();
    m.regs.gpr[RBX] = data;
    m.regs.gpr[RAX] = 0xaabb_ccdd;
    let _ = m.run(&mut mem, &mut NoHooks, 2);
    assert_eq!(
        m.regs.gpr[RCX], 0x0807_aabb_ccdd_0201,
        "overlay bytes over memory bytes"
    );
    assert_eq!(mem.bytes, before, "memory is unchanged");
    let mut b = [0u8; 8];
    m.read(&mut mem, data, &mut b).unwrap();
    assert_eq!(b, [1, 2, 0xdd, 0xcc, 0xbb, 0xaa, 7, 8]);
    // A write across a page boundary.
    m.write(CODE + 0xffe, &[9, 9, 9, 9]);
    let mut b = [0u8; 4];
    m.read(&mut mem, CODE + 0xffe, &mut b).unwrap();
    assert_eq!(
        b, [9; 4],
        "read back across the page boundary, where memory has nothing"
    );
}

#[test]
fn scratch_regions_read_zero_until_written_and_never_touch_memory() {
    let mut mem = code(&[0x90; 64]);
    let mut m = machine();
    // Memory has 0x90s there; scratch hides them.
    m.add_scratch(CODE + 16, 16);
    let mut b = [0xffu8; 32];
    m.read(&mut mem, CODE + 8, &mut b).unwrap();
    assert_eq!(&b[..8], &[0x90; 8]);
    assert_eq!(&b[8..24], &[0; 16]);
    assert_eq!(&b[24..], &[0x90; 8]);
    m.write(CODE + 20, &[7]);
    m.read(&mut mem, CODE + 16, &mut b[..8]).unwrap();
    assert_eq!(&b[..8], &[0, 0, 0, 0, 7, 0, 0, 0]);
    // Scratch where memory faults reads fine.
    m.add_scratch(0x1000, 8);
    assert_eq!(m.read_u64(&mut mem, 0x1000), Ok(0));
    assert!(
        m.read_u64(&mut mem, 0x1004).is_err(),
        "half outside the scratch region"
    );
}

/// Records and answers every transfer with one action.
struct Answer(Action, Vec<(u64, Transfer)>);

impl Hooks for Answer {
    fn transfer(&mut self, target: u64, kind: Transfer, m: &mut Machine) -> Action {
        assert_eq!(m.regs().rip, CODE, "hooks see rip at the instruction");
        self.1.push((target, kind));
        self.0
    }
}

#[test]
fn hooks_stop_or_fake_calls_and_tail_calls() {
    // call +0x10 (to CODE+0x15); ret
    let call = [0xe8, 0x10, 0, 0, 0, 0xc3];
    let mut mem = code(&call);
    let mut m = machine();
    let mut h = Answer(Action::Stop, Vec::new());
    let s = m.run(&mut mem, &mut h, 10).unwrap();
    assert_eq!(
        s,
        Stopped {
            target: CODE + 0x15,
            kind: Transfer::Call
        }
    );
    assert_eq!(
        (m.regs.rip, m.regs.gpr[RSP]),
        (CODE, STACK),
        "stopped before the call"
    );

    // Faked: rax = 42, rip past the call, nothing pushed; then the ret to the stop.
    let mut m = machine();
    m.call_function(CODE, 0x4242);
    let mut h = Answer(Action::Return(42), Vec::new());
    let s = m.run(&mut mem, &mut h, 10).unwrap();
    assert_eq!(
        s,
        Stopped {
            target: 0x4242,
            kind: Transfer::Return
        }
    );
    assert_eq!((m.regs.gpr[RAX], m.regs.gpr[RSP]), (42, STACK));
    assert_eq!(h.1, [(CODE + 0x15, Transfer::Call)]);

    // jmp [rip+0x10] faked: a tail call that returns at once pops our return address.
    let mut mem = code(&[0xff, 0x25, 0x10, 0, 0, 0]);
    mem.bytes[0x16..0x1e].copy_from_slice(&0xffff_ffff_8200_0000u64.to_le_bytes());
    let mut m = machine();
    m.call_function(CODE, 0x4242);
    let mut h = Answer(Action::Return(7), Vec::new());
    let s = m.run(&mut mem, &mut h, 10).unwrap();
    assert_eq!(s.target, 0x4242);
    assert_eq!((m.regs.gpr[RAX], m.regs.gpr[RSP]), (7, STACK));
    assert_eq!(h.1, [(0xffff_ffff_8200_0000, Transfer::Jump)]);
}

#[test]
fn a_declared_thunk_shows_the_register_target() {
    // call CODE+0x100 (a "thunk"); ret
    let mut mem = code(&[0xe8, 0xfb, 0, 0, 0, 0xc3]);
    let mut m = machine();
    m.add_indirect_thunk(CODE + 0x100, R11);
    m.regs.gpr[R11] = 0xffff_ffff_8123_4560;
    let mut h = Answer(Action::Stop, Vec::new());
    let s = m.run(&mut mem, &mut h, 10).unwrap();
    assert_eq!(s.target, 0xffff_ffff_8123_4560);
}

#[test]
fn instruction_fetch_stops_at_the_end_of_readable_memory() {
    // Two nops end the page; the next page is not there.
    let mut mem = code(&[]);
    mem.bytes[4094] = 0x90;
    mem.bytes[4095] = 0x90;
    let mut m = machine();
    m.regs.rip = CODE + 4094;
    let e = m.run(&mut mem, &mut NoHooks, 10).unwrap_err();
    assert_eq!(
        e,
        EmuError::Fault {
            rip: CODE + 4096,
            addr: CODE + 4096
        }
    );
    // An instruction cut by the page end.
    mem.bytes[4095] = 0xeb;
    let mut m = machine();
    m.regs.rip = CODE + 4095;
    let e = m.run(&mut mem, &mut NoHooks, 10).unwrap_err();
    assert_eq!(
        e,
        EmuError::Fault {
            rip: CODE + 4095,
            addr: CODE + 4096
        }
    );
}

#[test]
fn privileged_and_trapping_instructions_are_refused_by_name() {
    for (bytes, name) in [
        (&[0xfa][..], "cli"),
        (&[0xfb], "sti"),
        (&[0xf4], "hlt"),
        (&[0x0f, 0x0b], "ud2"),
        (&[0xcc], "int3"),
        (&[0x0f, 0x30], "wrmsr"),
        (&[0x0f, 0x32], "rdmsr"),
        (&[0x0f, 0x22, 0xd8], "mov cr3"),
        (&[0xec], "in al"),
        (&[0xee], "out dx"),
        (&[0x48, 0xcf], "iretq"),
        (&[0x0f, 0x05], "syscall"),
        (&[0x0f, 0x01, 0xf8], "swapgs"),
        (&[0x0f, 0x31], "rdtsc"),
        (&[0x66, 0x0f, 0xef, 0xc0], "pxor"),
        (&[0x8e, 0xd8], "mov ds"),
    ] {
        let mut mem = code(bytes);
        let mut m = machine();
        match m.run(&mut mem, &mut NoHooks, 10) {
            Err(EmuError::Unsupported { rip, what }) => {
                assert_eq!(rip, CODE);
                assert!(what.starts_with(name), "{what:?} names {name}");
            }
            other => panic!("{name}: {other:?}"),
        }
    }
    let mut mem = code(&[0x0f, 0x0b]);
    let e = machine().run(&mut mem, &mut NoHooks, 1).unwrap_err();
    assert_eq!(
        e.to_string(),
        "x86 emulation at 0xffffffff81000000: unsupported instruction: ud2 (a BUG())"
    );
}

#[test]
fn gs_operands_add_the_gs_base() {
    // mov rax, gs:[0x28]; mov fs:[rbx], eax
    let mut mem = code(&[
        0x65, 0x48, 0x8b, 0x04, 0x25, 0x28, 0, 0, 0, 0x64, 0x89, 0x03,
    ]);
    mem.bytes[0x828..0x830].copy_from_slice(&0x1122_3344_5566_7788u64.to_le_bytes());
    let mut m = machine();
    m.regs.gs_base = CODE + 0x800;
    m.regs.fs_base = 0x10_0000;
    m.regs.gpr[RBX] = 0x20;
    let _ = m.run(&mut mem, &mut NoHooks, 2);
    assert_eq!(m.regs.gpr[RAX], 0x1122_3344_5566_7788);
    m.add_scratch(0x10_0000, 0x100);
    assert_eq!(m.read_u64(&mut mem, 0x10_0020), Ok(0x5566_7788));
}

#[test]
fn a_taken_conditional_jump_is_a_jump_for_the_hooks() {
    // test eax, eax; jne +0x10; ret
    let mut mem = code(&[0x85, 0xc0, 0x75, 0x10, 0xc3]);
    for (rax, stopped) in [(0, false), (1, true)] {
        let mut m = machine();
        m.call_function(CODE, 0x4242);
        m.regs.gpr[RAX] = rax;
        let mut seen = Vec::new();
        let s = m.run(&mut mem, &mut JumpsOnly(&mut seen), 10).unwrap();
        if stopped {
            assert_eq!(
                s,
                Stopped {
                    target: CODE + 0x14,
                    kind: Transfer::Jump
                }
            );
            assert_eq!(m.regs.rip, CODE + 2, "stopped before the jne");
        } else {
            assert_eq!(s.kind, Transfer::Return);
            assert!(seen.is_empty(), "a jcc not taken is not reported");
        }
    }
}

/// Records transfers and stops at each.
struct JumpsOnly<'a>(&'a mut Vec<(u64, Transfer)>);

impl Hooks for JumpsOnly<'_> {
    fn transfer(&mut self, target: u64, kind: Transfer, _: &mut Machine) -> Action {
        self.0.push((target, kind));
        Action::Stop
    }
}

#[test]
fn reset_forgets_writes_and_scratch_but_still_runs() {
    // mov [rbx], eax; ret
    let mut mem = code(&[0x89, 0x03, 0xc3]);
    mem.bytes[0x800..0x804].copy_from_slice(&[1, 2, 3, 4]);
    let mut m = machine();
    m.regs.gpr[RBX] = CODE + 0x800;
    m.regs.gpr[RAX] = 0xaabb_ccdd;
    m.call_function(CODE, 0x4242);
    m.run(&mut mem, &mut NoHooks, 10).unwrap();
    assert_eq!(
        m.read_u64(&mut mem, CODE + 0x800),
        Ok(0xcccc_cccc_aabb_ccdd)
    );
    let regs = machine().regs;
    m.reset(regs);
    assert_eq!(m.executed(), 0);
    assert_eq!(
        m.read_u64(&mut mem, CODE + 0x800),
        Ok(0xcccc_cccc_0403_0201)
    );
    assert!(
        m.read_u64(&mut mem, STACK).is_err(),
        "the stack scratch region is gone"
    );
}
