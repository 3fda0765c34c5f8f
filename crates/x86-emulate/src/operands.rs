//! Operands: general-purpose registers at every size, effective addresses (`%fs:`/`%gs:`
//! bases, RIP-relative), and reads/writes of register, memory and immediate operands.

use iced_x86::{Instruction, OpKind, Register};

use crate::decode::unsupported;
use crate::{EmuError, Machine, Memory};

/// All ones in the low `size` bytes.
pub(crate) fn mask(size: u32) -> u64 {
    if size >= 8 {
        u64::MAX
    } else {
        (1u64 << (size * 8)) - 1
    }
}

/// Sign-extends the low `size` bytes of `v`.
pub(crate) fn sext(v: u64, size: u32) -> i64 {
    let shift = 64 - size * 8;
    ((v << shift) as i64) >> shift
}

/// (gpr index, size in bytes, high byte) of a general-purpose register; None for others.
pub(crate) fn gpr(r: Register) -> Option<(usize, u32, bool)> {
    let n = r as usize;
    Some(match n {
        1..=4 => (n - 1, 1, false),
        5..=8 => (n - 5, 1, true),
        9..=20 => (n - 5, 1, false),
        21..=36 => (n - 21, 2, false),
        37..=52 => (n - 37, 4, false),
        53..=68 => (n - 53, 8, false),
        _ => return None,
    })
}

/// The size in bytes of a general-purpose register (0 for others).
pub(crate) fn reg_size(r: Register) -> u32 {
    gpr(r).map_or(0, |g| g.1)
}

impl Machine {
    pub(crate) fn get_reg(&self, instr: &Instruction, r: Register) -> Result<u64, EmuError> {
        let (i, size, high) = gpr(r).ok_or_else(|| unsupported(instr, "register"))?;
        let v = self.regs.gpr[i];
        Ok(if high {
            (v >> 8) & 0xff
        } else {
            v & mask(size)
        })
    }

    /// Writes with the architectural rules: 32-bit writes zero the upper half, 8/16-bit
    /// writes merge.
    pub(crate) fn set_reg(
        &mut self,
        instr: &Instruction,
        r: Register,
        v: u64,
    ) -> Result<(), EmuError> {
        let (i, size, high) = gpr(r).ok_or_else(|| unsupported(instr, "register"))?;
        let old = self.regs.gpr[i];
        self.regs.gpr[i] = match (size, high) {
            (1, true) => (old & !0xff00) | ((v & 0xff) << 8),
            (4, _) => v & 0xffff_ffff,
            (8, _) => v,
            _ => (old & !mask(size)) | (v & mask(size)),
        };
        Ok(())
    }

    /// The effective address of the memory operand, without a segment base (`lea`).
    pub(crate) fn effective_address(&self, instr: &Instruction) -> Result<u64, EmuError> {
        if instr.is_ip_rel_memory_operand() {
            return Ok(instr.ip_rel_memory_address());
        }
        let mut a = instr.memory_displacement64();
        let mut narrow = false;
        let base = instr.memory_base();
        if base != Register::None {
            narrow |= reg_size(base) == 4;
            a = a.wrapping_add(self.get_reg(instr, base)?);
        }
        let index = instr.memory_index();
        if index != Register::None {
            narrow |= reg_size(index) == 4;
            let scale = u64::from(instr.memory_index_scale());
            a = a.wrapping_add(self.get_reg(instr, index)?.wrapping_mul(scale));
        }
        Ok(if narrow { a & 0xffff_ffff } else { a })
    }

    /// The linear address of the memory operand: `%fs:`/`%gs:` add their bases.
    pub(crate) fn memory_address(&self, instr: &Instruction) -> Result<u64, EmuError> {
        let ea = self.effective_address(instr)?;
        Ok(ea.wrapping_add(self.segment_base(instr.memory_segment())))
    }

    pub(crate) fn segment_base(&self, seg: Register) -> u64 {
        match seg {
            Register::FS => self.regs.fs_base,
            Register::GS => self.regs.gs_base,
            _ => 0,
        }
    }

    /// A little-endian value of `size` bytes (1, 2, 4 or 8) at `addr`.
    pub(crate) fn load(
        &mut self,
        mem: &mut dyn Memory,
        addr: u64,
        size: u32,
    ) -> Result<u64, EmuError> {
        let mut b = [0u8; 8];
        self.read(mem, addr, &mut b[..size as usize])?;
        Ok(u64::from_le_bytes(b))
    }

    pub(crate) fn store(&mut self, addr: u64, size: u32, v: u64) {
        self.write(addr, &v.to_le_bytes()[..size as usize]);
    }

    /// The size in bytes of operand `i`: registers and memory by their own size, immediates
    /// by the size of operand 0.
    pub(crate) fn op_size(&self, instr: &Instruction, i: u32) -> Result<u32, EmuError> {
        let size = match instr.op_kind(i) {
            OpKind::Register => reg_size(instr.op_register(i)),
            OpKind::Memory => instr.memory_size().size() as u32,
            _ if i > 0 => return self.op_size(instr, 0),
            _ => 0,
        };
        match size {
            1 | 2 | 4 | 8 => Ok(size),
            _ => Err(unsupported(instr, "operand size")),
        }
    }

    /// Operand `i`'s value, zero-extended; immediates are sign-extended to the instruction's
    /// operand size as the encoding says, then cut to `size`.
    pub(crate) fn read_op(
        &mut self,
        mem: &mut dyn Memory,
        instr: &Instruction,
        i: u32,
        size: u32,
    ) -> Result<u64, EmuError> {
        match instr.op_kind(i) {
            OpKind::Register => self.get_reg(instr, instr.op_register(i)),
            OpKind::Memory => {
                let addr = self.memory_address(instr)?;
                let n = self.op_size(instr, i)?;
                self.load(mem, addr, n)
            }
            OpKind::Immediate8
            | OpKind::Immediate16
            | OpKind::Immediate32
            | OpKind::Immediate64
            | OpKind::Immediate8to16
            | OpKind::Immediate8to32
            | OpKind::Immediate8to64
            | OpKind::Immediate32to64 => Ok(instr.immediate(i) & mask(size)),
            OpKind::NearBranch64 => Ok(instr.near_branch64()),
            _ => Err(unsupported(instr, "operand kind")),
        }
    }

    /// Writes operand `i` (a register or memory).
    pub(crate) fn write_op(&mut self, instr: &Instruction, i: u32, v: u64) -> Result<(), EmuError> {
        match instr.op_kind(i) {
            OpKind::Register => self.set_reg(instr, instr.op_register(i), v),
            OpKind::Memory => {
                let addr = self.memory_address(instr)?;
                let n = self.op_size(instr, i)?;
                self.store(addr, n, v);
                Ok(())
            }
            _ => Err(unsupported(instr, "destination kind")),
        }
    }

    /// Where a read-modify-write operand lives, resolved once.
    pub(crate) fn place(&self, instr: &Instruction, i: u32) -> Result<Place, EmuError> {
        let size = self.op_size(instr, i)?;
        match instr.op_kind(i) {
            OpKind::Register => Ok(Place::Reg(instr.op_register(i), size)),
            OpKind::Memory => Ok(Place::Mem(self.memory_address(instr)?, size)),
            _ => Err(unsupported(instr, "destination kind")),
        }
    }

    pub(crate) fn get(
        &mut self,
        mem: &mut dyn Memory,
        instr: &Instruction,
        p: Place,
    ) -> Result<u64, EmuError> {
        match p {
            Place::Reg(r, _) => self.get_reg(instr, r),
            Place::Mem(a, size) => self.load(mem, a, size),
        }
    }

    pub(crate) fn put(&mut self, instr: &Instruction, p: Place, v: u64) -> Result<(), EmuError> {
        match p {
            Place::Reg(r, _) => self.set_reg(instr, r, v),
            Place::Mem(a, size) => {
                self.store(a, size, v);
                Ok(())
            }
        }
    }
}

/// A resolved register or memory operand with its size.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Place {
    Reg(Register, u32),
    Mem(u64, u32),
}

impl Place {
    pub(crate) fn size(self) -> u32 {
        match self {
            Place::Reg(_, s) | Place::Mem(_, s) => s,
        }
    }
}
