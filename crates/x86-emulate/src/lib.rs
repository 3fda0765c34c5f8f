//! A concrete, read-only x86-64 interpreter for Linux kernel code.
//!
//! vmprobe runs a few hundred instructions of the guest kernel's own code outside the guest:
//! registers come from a stopped vCPU ([`Registers`]), memory reads go to guest memory through
//! [`Memory`] (also used for instruction fetch), and every write (stores, pushes, calls) goes to
//! a private overlay in the [`Machine`], never to the guest: [`Memory`] has no write at all.
//! Reads see the overlay first. [`Machine::add_scratch`] declares regions that are never read
//! from [`Memory`] (zero until written): fake objects such as a trace buffer.
//!
//! # What is emulated
//! The integer subset gcc -O2 emits for kernel C code, at every operand size (8/16/32/64 bits,
//! `ah`..`bh`, 32-bit writes zeroing the upper half, 8/16-bit writes merging): `mov`/`movabs`,
//! `movzx`/`movsx`/`movsxd`, `lea`, `add`/`adc`/`sub`/`sbb`/`and`/`or`/`xor`/`not`/`neg`/
//! `inc`/`dec`, `cmp`/`test`, `shl`/`shr`/`sar`/`rol`/`ror`/`rcl`/`rcr`/`shld`/`shrd`, `imul`
//! (1, 2, 3 operands), `mul`, `div`/`idiv` ([`EmuError::DivideError`] on a zero divisor or a
//! quotient overflow), `bt`/`bts`/`btr`/`btc`, `bsf`/`bsr`/`tzcnt`/`lzcnt`/`popcnt`, `bswap`,
//! `cmovcc`, `setcc`, `jcc`, `jmp`/`call` (direct, through a register or memory, RIP-relative
//! included), `ret`/`ret imm16`, `push`/`pop`, `pushfq`/`popfq` (`popfq` sets the emulated
//! flags only, IF included), `leave`, `cbw`..`cqo`, `xchg`, `cmpxchg`, `xadd`,
//! `movs`/`stos`/`lods`/`cmps`/`scas` with `rep`/`repe`/`repne` and either direction flag,
//! `clc`/`stc`/`cmc`/`cld`/`std`, and as no-ops `nop`, `endbr64`, `pause`, the fences,
//! `stac`/`clac` and `prefetch*`. `lock` changes nothing (one CPU, no other writer).
//! `%fs:`/`%gs:` operands add `fs_base`/`gs_base` (per-CPU data).
//!
//! Flags: CF PF AF ZF SF OF as the SDM defines them for each instruction (AF included). Where
//! the SDM leaves a flag undefined this crate leaves it unchanged, except the arithmetic flags
//! of `imul`/`mul` (SF ZF PF from the low half, AF clear: an Intel host keeps ZF clear) and
//! logic instructions (AF clear). Tests compare the defined flags with the host CPU.
//!
//! # What is refused
//! Everything else is [`EmuError::Unsupported`] naming the instruction and its address:
//! privileged and system instructions (`cli`, `sti`, `hlt`, `wrmsr`, `rdmsr`, `mov cr`, `in`,
//! `out`, `iret`, `syscall`, `sysret`, `swapgs`, `invlpg`, `rdtsc`, ...), `ud2` (a `BUG()`),
//! `int3` (padding), `int`, segment-register moves, x87/SSE/AVX, 32-bit addressing for string
//! operations, and bytes that do not decode. No input makes it panic: arbitrary bytes as
//! code, wild addresses, huge `rep` counts (each iteration counts against the budget of
//! [`Machine::run`]).
//!
//! # Calls, jumps and returns
//! Before every `call`, every unconditional `jmp` (direct or indirect) and every taken
//! conditional jump (gcc emits conditional tail calls: in Debian's 6.1 image 5,922 `jcc`s
//! target outside their symbol, tail calls and `.cold` parts), [`Hooks::transfer`] sees the
//! resolved target with `rip` still at the instruction, and says whether to execute it, to act
//! as if the target returned at once with a value, or to stop. To call a function and learn
//! when it returned, push a return address and register it with [`Machine::set_return_stop`]
//! (or use [`Machine::call_function`]): when `rip` reaches that address (by the function's
//! `ret`), [`Machine::run`] returns [`Stopped`] with [`Transfer::Return`]. Indirect calls in a
//! retpoline kernel go through `__x86_indirect_thunk_<reg>`, which reaches its target by a
//! `ret`: declare the thunks with [`Machine::add_indirect_thunk`] so hooks see the real
//! targets. Instructions are fetched from [`Memory`], not from the overlay: the kernel's code
//! does not modify itself, and decoded instructions are cached per [`Machine`] on that
//! assumption ([`Machine::reset`] keeps them for the next run over the same code).
//!
//! # Example
//! ```
//! use x86_emulate::*;
//!
//! // f(rdi): call g (faked by the hook: returns 5); rax += rdi; ret
//! let code = [0xe8, 0x10, 0, 0, 0, 0x48, 0x01, 0xf8, 0xc3];
//! let mut mem = FlatMemory { base: 0xffff_ffff_8100_0000, bytes: code.to_vec() };
//! let mut regs = Registers::default();
//! regs.gpr[RSP] = 0xffff_c900_0000_8000;
//! regs.gpr[RDI] = 37;
//! let mut m = Machine::new(regs);
//! m.add_scratch(0xffff_c900_0000_0000, 0x8000); // the stack: a fake object
//! m.call_function(mem.base, 0xdead_0000); // pushes the return address, stops there
//!
//! struct FakeG(u64);
//! impl Hooks for FakeG {
//!     fn transfer(&mut self, target: u64, kind: Transfer, _: &mut Machine) -> Action {
//!         if target == self.0 && kind == Transfer::Call { Action::Return(5) } else { Action::Continue }
//!     }
//! }
//! let mut hooks = FakeG(mem.base + 0x15);
//! let stopped = m.run(&mut mem, &mut hooks, 100).unwrap();
//! assert_eq!(stopped, Stopped { target: 0xdead_0000, kind: Transfer::Return });
//! assert_eq!(m.regs().gpr[RAX], 42);
//! assert_eq!(m.executed(), 3);
//! ```

#![forbid(unsafe_code)]

mod alu;
mod control;
mod decode;
mod exec;
mod operands;
mod overlay;
mod string;

use decode::DecodeCache;
use overlay::Overlay;

/// rax rcx rdx rbx rsp rbp rsi rdi r8 r9 r10 r11 r12 r13 r14 r15 (the hardware/iced numbering).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Registers {
    pub gpr: [u64; 16],
    pub rip: u64,
    pub rflags: u64,
    pub fs_base: u64,
    pub gs_base: u64,
}

pub const RAX: usize = 0;
pub const RCX: usize = 1;
pub const RDX: usize = 2;
pub const RBX: usize = 3;
pub const RSP: usize = 4;
pub const RBP: usize = 5;
pub const RSI: usize = 6;
pub const RDI: usize = 7;
pub const R8: usize = 8;
pub const R9: usize = 9;
pub const R10: usize = 10;
pub const R11: usize = 11;
pub const R12: usize = 12;
pub const R13: usize = 13;
pub const R14: usize = 14;
pub const R15: usize = 15;

/// RFLAGS bits this crate reads or writes.
pub mod flags {
    pub const CF: u64 = 1 << 0;
    pub const PF: u64 = 1 << 2;
    pub const AF: u64 = 1 << 4;
    pub const ZF: u64 = 1 << 6;
    pub const SF: u64 = 1 << 7;
    pub const DF: u64 = 1 << 10;
    pub const OF: u64 = 1 << 11;
    /// The six arithmetic status flags.
    pub const STATUS: u64 = CF | PF | AF | ZF | SF | OF;
}

/// Guest memory (virtual addresses), also used for instruction fetch.
pub trait Memory {
    fn read(&mut self, addr: u64, buf: &mut [u8]) -> Result<(), MemoryFault>;
}

/// Bytes at a base address, nothing elsewhere: a snapshot of code or data (and tests).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FlatMemory {
    pub base: u64,
    pub bytes: Vec<u8>,
}

impl Memory for FlatMemory {
    fn read(&mut self, addr: u64, buf: &mut [u8]) -> Result<(), MemoryFault> {
        let off = usize::try_from(addr.wrapping_sub(self.base)).map_err(|_| MemoryFault)?;
        let end = off.checked_add(buf.len()).ok_or(MemoryFault)?;
        buf.copy_from_slice(self.bytes.get(off..end).ok_or(MemoryFault)?);
        Ok(())
    }
}

/// A read [`Memory`] could not serve.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryFault;

/// What kind of control transfer a hook sees, or a run stopped at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transfer {
    Call,
    Jump,
    /// Only in [`Stopped`], never given to hooks: `rip` reached the address given to
    /// [`Machine::set_return_stop`] (the emulated function returned).
    Return,
}

/// A hook's answer to a call or jump.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Execute the call/jump as the code says.
    Continue,
    /// Do not enter the target: act as if it returned at once with rax = value
    /// (for a `call`: rip moves past the call; for a `jmp` (a tail call): emulate a `ret`).
    Return(u64),
    /// Stop before executing this call/jump; `run` returns `Stopped`.
    Stop,
}

/// Decides, before every `call` and unconditional `jmp`, what the machine does with it.
pub trait Hooks {
    /// Called before every `call` (direct or indirect), every unconditional `jmp` (direct
    /// or indirect) and every taken `jcc` (as a [`Transfer::Jump`]: conditional tail calls)
    /// with its resolved target. `machine.regs().rip` is the instruction's
    /// address; the hook may read and change the machine (registers, overlay).
    fn transfer(&mut self, target: u64, kind: Transfer, machine: &mut Machine) -> Action;
}

/// Hooks that let every call and jump through.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoHooks;

impl Hooks for NoHooks {
    fn transfer(&mut self, _: u64, _: Transfer, _: &mut Machine) -> Action {
        Action::Continue
    }
}

/// Why a run ended without an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stopped {
    /// The target of the call/jump a hook stopped before, or the return-stop address.
    pub target: u64,
    pub kind: Transfer,
}

/// Why emulation could not go on. Each message names the instruction's address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EmuError {
    /// An instruction outside the emulated subset, privileged, or bytes that do not decode.
    #[error("x86 emulation at {rip:#x}: unsupported instruction: {what}")]
    Unsupported { rip: u64, what: String },
    /// A memory read (data or instruction fetch) failed.
    #[error("x86 emulation at {rip:#x}: cannot read memory at {addr:#x}")]
    Fault { rip: u64, addr: u64 },
    /// The instruction budget ran out before a stop.
    #[error(
        "x86 emulation at {rip:#x}: instruction budget exhausted after {executed} instructions"
    )]
    Budget { rip: u64, executed: u64 },
    /// `div`/`idiv` by zero or with a quotient that does not fit (#DE on hardware).
    #[error("x86 emulation at {rip:#x}: divide error")]
    DivideError { rip: u64 },
}

/// The emulated CPU: registers, the write overlay, scratch regions and counters.
#[derive(Debug, Clone)]
pub struct Machine {
    pub regs: Registers,
    overlay: Overlay,
    return_stop: Option<u64>,
    /// (address, register) of retpoline thunks: `__x86_indirect_thunk_<reg>`.
    thunks: Vec<(u64, usize)>,
    executed: u64,
    cache: DecodeCache,
}

impl Machine {
    pub fn new(regs: Registers) -> Machine {
        Machine {
            regs,
            overlay: Overlay::default(),
            return_stop: None,
            thunks: Vec::new(),
            executed: 0,
            cache: DecodeCache::default(),
        }
    }

    /// Starts over with `regs`: forgets the overlay, scratch regions, return stop and
    /// count of executed instructions, and keeps the declared thunks and the decoded
    /// instructions (valid while the code in memory stays the same): one `Machine` can serve
    /// many probe hits.
    pub fn reset(&mut self, regs: Registers) {
        self.regs = regs;
        self.overlay.clear();
        self.return_stop = None;
        self.executed = 0;
    }

    pub fn regs(&self) -> &Registers {
        &self.regs
    }

    pub fn regs_mut(&mut self) -> &mut Registers {
        &mut self.regs
    }

    /// A region read from the overlay only (zero until written), never from Memory: fake objects.
    pub fn add_scratch(&mut self, base: u64, len: u64) {
        self.overlay.add_scratch(base, len);
    }

    /// Overlay-aware read (overlay bytes over memory bytes).
    pub fn read(
        &mut self,
        mem: &mut dyn Memory,
        addr: u64,
        buf: &mut [u8],
    ) -> Result<(), EmuError> {
        self.overlay
            .read(mem, addr, buf)
            .map_err(|addr| EmuError::Fault {
                rip: self.regs.rip,
                addr,
            })
    }

    /// A little-endian u64 through [`Machine::read`].
    pub fn read_u64(&mut self, mem: &mut dyn Memory, addr: u64) -> Result<u64, EmuError> {
        let mut b = [0; 8];
        self.read(mem, addr, &mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    /// Writes to the overlay (never to Memory).
    pub fn write(&mut self, addr: u64, bytes: &[u8]) {
        self.overlay.write(addr, bytes);
    }

    /// When `rip` reaches `addr`, [`Machine::run`] returns [`Stopped`] with
    /// [`Transfer::Return`]; `None` removes it.
    pub fn set_return_stop(&mut self, addr: Option<u64>) {
        self.return_stop = addr;
    }

    /// Declares `addr` a retpoline thunk jumping to register `reg` (the kernel's
    /// `__x86_indirect_thunk_<reg>`): a call or jump to it is taken as an indirect call or
    /// jump through `reg`, so hooks see the real target. Without this the thunk runs as
    /// code, and reaches its target by a `ret` that hooks do not see.
    pub fn add_indirect_thunk(&mut self, addr: u64, reg: usize) {
        if reg < 16 {
            self.thunks.push((addr, reg));
        }
    }

    /// Sets up a call of the function at `entry`: pushes `return_to` as its return address
    /// (to the overlay), makes it the return stop and sets `rip`. Arguments are the caller's
    /// business (rdi, rsi, rdx, rcx, r8, r9).
    pub fn call_function(&mut self, entry: u64, return_to: u64) {
        self.push(return_to);
        self.return_stop = Some(return_to);
        self.regs.rip = entry;
    }

    /// Pushes a u64 on the stack (to the overlay).
    pub fn push(&mut self, value: u64) {
        let rsp = self.regs.gpr[RSP].wrapping_sub(8);
        self.regs.gpr[RSP] = rsp;
        self.overlay.write(rsp, &value.to_le_bytes());
    }

    /// Pops a u64 off the stack (a return address, for a hook emulating a return itself).
    pub fn pop(&mut self, mem: &mut dyn Memory) -> Result<u64, EmuError> {
        let rsp = self.regs.gpr[RSP];
        let v = self.read_u64(mem, rsp)?;
        self.regs.gpr[RSP] = rsp.wrapping_add(8);
        Ok(v)
    }

    /// Runs from regs.rip until a hook says Stop, `rip` reaches the return stop, `budget`
    /// instructions ran (each `rep` iteration counts as one), or an error. After an error,
    /// `rip` is the address of the instruction that failed, which had no effect.
    pub fn run(
        &mut self,
        mem: &mut dyn Memory,
        hooks: &mut dyn Hooks,
        budget: u32,
    ) -> Result<Stopped, EmuError> {
        let mut left = u64::from(budget);
        loop {
            let rip = self.regs.rip;
            if self.return_stop == Some(rip) {
                return Ok(Stopped {
                    target: rip,
                    kind: Transfer::Return,
                });
            }
            if left == 0 {
                return Err(EmuError::Budget {
                    rip,
                    executed: self.executed,
                });
            }
            let instr = self.cache.fetch(mem, rip)?;
            match self.step(mem, hooks, &instr, &mut left)? {
                exec::Flow::Next => {}
                exec::Flow::Stop(s) => return Ok(s),
            }
        }
    }

    /// Instructions executed over all runs (`rep` iterations counted one by one).
    pub fn executed(&self) -> u64 {
        self.executed
    }
}

#[cfg(test)]
mod tests;
