//! One instruction: the dispatch on its mnemonic, and the data instructions (moves,
//! arithmetic, bit operations). Control flow is in `control`, string operations in `string`.

use iced_x86::{Instruction, Mnemonic, OpKind, Register};

use crate::alu::{self, Shift};
use crate::decode::unsupported;
use crate::flags::{CF, DF, STATUS, ZF};
use crate::operands::{Place, mask, sext};
use crate::{EmuError, Hooks, Machine, Memory, Stopped, Transfer};

pub(crate) enum Flow {
    Next,
    Stop(Stopped),
}

/// The accumulator (rax) and rdx at `size` bytes, for mul/div and friends.
fn acc_regs(size: u32) -> (Register, Register) {
    match size {
        1 => (Register::AL, Register::AH),
        2 => (Register::AX, Register::DX),
        4 => (Register::EAX, Register::EDX),
        _ => (Register::RAX, Register::RDX),
    }
}

impl Machine {
    pub(crate) fn step(
        &mut self,
        mem: &mut dyn Memory,
        hooks: &mut dyn Hooks,
        instr: &Instruction,
        left: &mut u64,
    ) -> Result<Flow, EmuError> {
        if instr.is_string_instruction() {
            self.string_op(mem, instr, left)?;
            return Ok(Flow::Next);
        }
        let flow = match instr.mnemonic() {
            Mnemonic::Jmp => self.transfer(mem, hooks, instr, Transfer::Jump)?,
            Mnemonic::Call => self.transfer(mem, hooks, instr, Transfer::Call)?,
            Mnemonic::Ret => {
                self.ret(mem, instr)?;
                Flow::Next
            }
            Mnemonic::Jo
            | Mnemonic::Jno
            | Mnemonic::Jb
            | Mnemonic::Jae
            | Mnemonic::Je
            | Mnemonic::Jne
            | Mnemonic::Jbe
            | Mnemonic::Ja
            | Mnemonic::Js
            | Mnemonic::Jns
            | Mnemonic::Jp
            | Mnemonic::Jnp
            | Mnemonic::Jl
            | Mnemonic::Jge
            | Mnemonic::Jle
            | Mnemonic::Jg => self.jcc(mem, hooks, instr)?,
            _ => {
                self.data_op(mem, instr)?;
                self.regs.rip = instr.next_ip();
                Flow::Next
            }
        };
        *left -= 1;
        self.executed += 1;
        Ok(flow)
    }

    fn set_flags(&mut self, out: alu::Out) {
        self.regs.rflags = out.merge(self.regs.rflags);
    }

    /// Every instruction that falls through to the next one (no string operations).
    fn data_op(&mut self, mem: &mut dyn Memory, instr: &Instruction) -> Result<(), EmuError> {
        use Mnemonic as M;
        let op = instr.mnemonic();
        match op {
            M::Mov => {
                let size = self.op_size(instr, 0)?;
                let v = self.read_op(mem, instr, 1, size)?;
                self.write_op(instr, 0, v)?;
            }
            M::Movzx => {
                let v = self.read_op(mem, instr, 1, 8)?;
                self.write_op(instr, 0, v)?;
            }
            M::Movsx | M::Movsxd => {
                let src = self.op_size(instr, 1)?;
                let v = self.read_op(mem, instr, 1, src)?;
                self.write_op(instr, 0, sext(v, src) as u64)?;
            }
            M::Lea => {
                let a = self.effective_address(instr)?;
                self.write_op(instr, 0, a)?;
            }
            M::Add | M::Adc | M::Sub | M::Sbb | M::Cmp | M::And | M::Or | M::Xor | M::Test => {
                let p = self.place(instr, 0)?;
                let size = p.size();
                let a = self.get(mem, instr, p)?;
                let b = self.read_op(mem, instr, 1, size)?;
                let cf = self.regs.rflags & CF != 0;
                let out = match op {
                    M::Add => alu::add(a, b, false, size),
                    M::Adc => alu::add(a, b, cf, size),
                    M::Sub | M::Cmp => alu::sub(a, b, false, size),
                    M::Sbb => alu::sub(a, b, cf, size),
                    M::And | M::Test => alu::logic(a & b, size),
                    M::Or => alu::logic(a | b, size),
                    _ => alu::logic(a ^ b, size),
                };
                if !matches!(op, M::Cmp | M::Test) {
                    self.put(instr, p, out.v)?;
                }
                self.set_flags(out);
            }
            M::Not | M::Neg | M::Inc | M::Dec => {
                let p = self.place(instr, 0)?;
                let size = p.size();
                let a = self.get(mem, instr, p)?;
                if op == M::Not {
                    self.put(instr, p, !a & mask(size))?;
                } else {
                    let out = match op {
                        M::Neg => alu::neg(a, size),
                        M::Inc => alu::inc_dec(a, false, size),
                        _ => alu::inc_dec(a, true, size),
                    };
                    self.put(instr, p, out.v)?;
                    self.set_flags(out);
                }
            }
            M::Shl | M::Sal | M::Shr | M::Sar | M::Rol | M::Ror | M::Rcl | M::Rcr => {
                self.shift(mem, instr)?
            }
            M::Shld | M::Shrd => {
                let p = self.place(instr, 0)?;
                let size = p.size();
                let a = self.get(mem, instr, p)?;
                let b = self.read_op(mem, instr, 1, size)?;
                let count = self.read_op(mem, instr, 2, 1)? as u32 & count_mask(size);
                // A count of 0 keeps the flags, but a 32-bit register is still written
                // (zero-extended), as for every shift.
                match alu::double_shift(op == M::Shld, a, b, count, size) {
                    Some(out) => {
                        self.put(instr, p, out.v)?;
                        self.set_flags(out);
                    }
                    None => self.put(instr, p, a)?,
                }
            }
            M::Imul | M::Mul | M::Div | M::Idiv => self.multiply_divide(mem, instr)?,
            M::Bt | M::Bts | M::Btr | M::Btc => self.bit_test(mem, instr)?,
            M::Bsf | M::Bsr | M::Tzcnt | M::Lzcnt | M::Popcnt => self.bit_scan(mem, instr)?,
            M::Bswap => {
                let size = self.op_size(instr, 0)?;
                let v = self.read_op(mem, instr, 0, size)?;
                let r = match size {
                    4 => u64::from((v as u32).swap_bytes()),
                    8 => v.swap_bytes(),
                    _ => return Err(unsupported(instr, "16-bit bswap is undefined")),
                };
                self.write_op(instr, 0, r)?;
            }
            M::Cmovo
            | M::Cmovno
            | M::Cmovb
            | M::Cmovae
            | M::Cmove
            | M::Cmovne
            | M::Cmovbe
            | M::Cmova
            | M::Cmovs
            | M::Cmovns
            | M::Cmovp
            | M::Cmovnp
            | M::Cmovl
            | M::Cmovge
            | M::Cmovle
            | M::Cmovg => {
                let size = self.op_size(instr, 0)?;
                let src = self.read_op(mem, instr, 1, size)?;
                // A 32-bit cmov writes (zero-extends) its destination even when not taken.
                let v = if self.condition(instr)? {
                    src
                } else {
                    self.read_op(mem, instr, 0, size)?
                };
                self.write_op(instr, 0, v)?;
            }
            M::Seto
            | M::Setno
            | M::Setb
            | M::Setae
            | M::Sete
            | M::Setne
            | M::Setbe
            | M::Seta
            | M::Sets
            | M::Setns
            | M::Setp
            | M::Setnp
            | M::Setl
            | M::Setge
            | M::Setle
            | M::Setg => {
                let v = u64::from(self.condition(instr)?);
                self.write_op(instr, 0, v)?;
            }
            M::Push | M::Pop | M::Pushfq | M::Popfq | M::Leave => self.stack_op(mem, instr)?,
            M::Cbw | M::Cwde | M::Cdqe => {
                let (from, to) = match op {
                    M::Cbw => (Register::AL, Register::AX),
                    M::Cwde => (Register::AX, Register::EAX),
                    _ => (Register::EAX, Register::RAX),
                };
                let v = self.get_reg(instr, from)?;
                let size = match from {
                    Register::AL => 1,
                    Register::AX => 2,
                    _ => 4,
                };
                self.set_reg(instr, to, sext(v, size) as u64)?;
            }
            M::Cwd | M::Cdq | M::Cqo => {
                let size = match op {
                    M::Cwd => 2,
                    M::Cdq => 4,
                    _ => 8,
                };
                let (a, d) = acc_regs(size);
                let v = self.get_reg(instr, a)?;
                let fill = if sext(v, size) < 0 { u64::MAX } else { 0 };
                self.set_reg(instr, d, fill)?;
            }
            M::Xchg => {
                let (p0, p1) = (self.place(instr, 0)?, self.place(instr, 1)?);
                let a = self.get(mem, instr, p0)?;
                let b = self.get(mem, instr, p1)?;
                self.put(instr, p0, b)?;
                self.put(instr, p1, a)?;
            }
            M::Cmpxchg => {
                let p = self.place(instr, 0)?;
                let size = p.size();
                let d = self.get(mem, instr, p)?;
                let src = self.read_op(mem, instr, 1, size)?;
                let (acc, _) = acc_regs(size);
                let a = self.get_reg(instr, acc)?;
                let out = alu::sub(a, d, false, size);
                if out.v == 0 {
                    self.put(instr, p, src)?;
                } else {
                    self.set_reg(instr, acc, d)?;
                }
                self.set_flags(out);
            }
            M::Xadd => {
                let p = self.place(instr, 0)?;
                let size = p.size();
                let d = self.get(mem, instr, p)?;
                let src_reg = instr.op_register(1);
                let s = self.get_reg(instr, src_reg)?;
                let out = alu::add(d, s, false, size);
                self.set_reg(instr, src_reg, d)?;
                self.put(instr, p, out.v)?;
                self.set_flags(out);
            }
            M::Clc => self.regs.rflags &= !CF,
            M::Stc => self.regs.rflags |= CF,
            M::Cmc => self.regs.rflags ^= CF,
            M::Cld => self.regs.rflags &= !DF,
            M::Std => self.regs.rflags |= DF,
            M::Nop
            | M::Endbr64
            | M::Pause
            | M::Lfence
            | M::Mfence
            | M::Sfence
            | M::Stac
            | M::Clac
            | M::Prefetchnta
            | M::Prefetcht0
            | M::Prefetcht1
            | M::Prefetcht2
            | M::Prefetchw
            | M::Prefetch => {}
            M::Ud2 => return Err(unsupported(instr, "a BUG()")),
            M::Int3 => return Err(unsupported(instr, "padding or a breakpoint")),
            _ => return Err(unsupported(instr, "")),
        }
        Ok(())
    }

    fn shift(&mut self, mem: &mut dyn Memory, instr: &Instruction) -> Result<(), EmuError> {
        let p = self.place(instr, 0)?;
        let size = p.size();
        let a = self.get(mem, instr, p)?;
        let count = self.read_op(mem, instr, 1, 1)? as u32 & count_mask(size);
        if matches!(instr.mnemonic(), Mnemonic::Rcl | Mnemonic::Rcr) {
            let cf = self.regs.rflags & CF != 0;
            let left = instr.mnemonic() == Mnemonic::Rcl;
            match alu::rotate_carry(left, a, count, size, cf) {
                Some(out) => {
                    self.put(instr, p, out.v)?;
                    self.set_flags(out);
                }
                None => self.put(instr, p, a)?,
            }
            return Ok(());
        }
        let op = match instr.mnemonic() {
            Mnemonic::Shl | Mnemonic::Sal => Shift::Shl,
            Mnemonic::Shr => Shift::Shr,
            Mnemonic::Sar => Shift::Sar,
            Mnemonic::Rol => Shift::Rol,
            _ => Shift::Ror,
        };
        // A count of 0 keeps the flags, but a 32-bit register is still written (zero-extended).
        match alu::shift(op, a, count, size) {
            Some(out) => {
                self.put(instr, p, out.v)?;
                self.set_flags(out);
            }
            None => self.put(instr, p, a)?,
        }
        Ok(())
    }

    fn multiply_divide(
        &mut self,
        mem: &mut dyn Memory,
        instr: &Instruction,
    ) -> Result<(), EmuError> {
        let op = instr.mnemonic();
        let size = self.op_size(instr, 0)?;
        if op == Mnemonic::Imul && instr.op_count() > 1 {
            let (a, b) = if instr.op_count() == 2 {
                (
                    self.read_op(mem, instr, 0, size)?,
                    self.read_op(mem, instr, 1, size)?,
                )
            } else {
                (
                    self.read_op(mem, instr, 1, size)?,
                    self.read_op(mem, instr, 2, size)?,
                )
            };
            let (low, _, overflow) = alu::imul_wide(a, b, size);
            self.write_op(instr, 0, low)?;
            self.regs.rflags = (self.regs.rflags & !STATUS) | alu::mul_flags(low, overflow, size);
            return Ok(());
        }
        let src = self.read_op(mem, instr, 0, size)?;
        let (acc, high_reg) = acc_regs(size);
        let low_in = self.get_reg(instr, acc)?;
        let high_in = self.get_reg(instr, high_reg)?;
        let (low, high) = match op {
            Mnemonic::Imul | Mnemonic::Mul => {
                let (low, high, overflow) = if op == Mnemonic::Imul {
                    alu::imul_wide(low_in, src, size)
                } else {
                    alu::mul_wide(low_in, src, size)
                };
                self.regs.rflags =
                    (self.regs.rflags & !STATUS) | alu::mul_flags(low, overflow, size);
                (low, high)
            }
            _ => {
                let r = if op == Mnemonic::Div {
                    alu::div_wide(high_in, low_in, src, size)
                } else {
                    alu::idiv_wide(high_in, low_in, src, size)
                };
                let (q, rem) = r.ok_or(EmuError::DivideError { rip: instr.ip() })?;
                (q, rem)
            }
        };
        // 8-bit: the high half (or remainder) goes to ah, the low half to al.
        self.set_reg(instr, acc, low)?;
        self.set_reg(instr, high_reg, high)?;
        Ok(())
    }

    fn bit_test(&mut self, mem: &mut dyn Memory, instr: &Instruction) -> Result<(), EmuError> {
        let size = self.op_size(instr, 0)?;
        let bits = u64::from(size) * 8;
        let off = self.read_op(mem, instr, 1, size)?;
        let (p, bit) = if instr.op_kind(0) == OpKind::Memory && instr.op_kind(1) == OpKind::Register
        {
            // A register bit offset into memory is signed and reaches past the operand.
            let off = sext(off, size);
            let base = self.memory_address(instr)?;
            let delta = off.div_euclid(bits as i64).wrapping_mul(i64::from(size));
            let addr = base.wrapping_add(delta as u64);
            (Place::Mem(addr, size), off.rem_euclid(bits as i64) as u64)
        } else {
            (self.place(instr, 0)?, off & (bits - 1))
        };
        let v = self.get(mem, instr, p)?;
        let set = (v >> bit) & 1 != 0;
        let new = match instr.mnemonic() {
            Mnemonic::Bts => Some(v | (1 << bit)),
            Mnemonic::Btr => Some(v & !(1 << bit)),
            Mnemonic::Btc => Some(v ^ (1 << bit)),
            _ => None,
        };
        if let Some(n) = new {
            self.put(instr, p, n)?;
        }
        self.regs.rflags = (self.regs.rflags & !CF) | if set { CF } else { 0 };
        Ok(())
    }

    fn bit_scan(&mut self, mem: &mut dyn Memory, instr: &Instruction) -> Result<(), EmuError> {
        let size = self.op_size(instr, 0)?;
        let bits = size * 8;
        let src = self.read_op(mem, instr, 1, size)?;
        let f = self.regs.rflags;
        let zf = |c: bool| if c { ZF } else { 0 };
        let cf = |c: bool| if c { CF } else { 0 };
        match instr.mnemonic() {
            Mnemonic::Bsf | Mnemonic::Bsr => {
                // A zero source leaves the destination unchanged (as both vendors do).
                if src != 0 {
                    let r = if instr.mnemonic() == Mnemonic::Bsf {
                        src.trailing_zeros()
                    } else {
                        63 - src.leading_zeros()
                    };
                    self.write_op(instr, 0, u64::from(r))?;
                }
                self.regs.rflags = (f & !ZF) | zf(src == 0);
            }
            Mnemonic::Tzcnt | Mnemonic::Lzcnt => {
                let r = match (src, instr.mnemonic()) {
                    (0, _) => bits,
                    (_, Mnemonic::Tzcnt) => src.trailing_zeros(),
                    _ => src.leading_zeros() - (64 - bits),
                };
                self.write_op(instr, 0, u64::from(r))?;
                self.regs.rflags = (f & !(ZF | CF)) | zf(r == 0) | cf(src == 0);
            }
            _ => {
                self.write_op(instr, 0, u64::from(src.count_ones()))?;
                self.regs.rflags = (f & !STATUS) | zf(src == 0);
            }
        }
        Ok(())
    }
}

/// Shift counts are masked to 6 bits for 64-bit operands, 5 otherwise.
fn count_mask(size: u32) -> u32 {
    if size == 8 { 0x3f } else { 0x1f }
}
