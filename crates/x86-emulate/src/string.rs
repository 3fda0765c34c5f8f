//! String instructions: movs, stos, lods, cmps, scas, with rep/repe/repne and either
//! direction. Each iteration counts against the run's budget; a run out of budget leaves
//! rip at the instruction with rcx/rsi/rdi as far as it got (as an interrupt would).

use iced_x86::{Instruction, Mnemonic, OpKind};

use crate::alu;
use crate::decode::unsupported;
use crate::flags::{DF, ZF};
use crate::{EmuError, Machine, Memory, RAX, RCX, RDI, RSI};

impl Machine {
    pub(crate) fn string_op(
        &mut self,
        mem: &mut dyn Memory,
        instr: &Instruction,
        left: &mut u64,
    ) -> Result<(), EmuError> {
        for i in 0..instr.op_count() {
            match instr.op_kind(i) {
                OpKind::Register | OpKind::MemoryESRDI | OpKind::MemorySegRSI => {}
                _ => return Err(unsupported(instr, "32-bit string addressing")),
            }
        }
        let size = instr.memory_size().size() as u32;
        if !matches!(size, 1 | 2 | 4 | 8) {
            return Err(unsupported(instr, "operand size"));
        }
        let op = instr.mnemonic();
        let compares = matches!(
            op,
            Mnemonic::Cmpsb | Mnemonic::Cmpsw | Mnemonic::Cmpsd | Mnemonic::Cmpsq
        ) || matches!(
            op,
            Mnemonic::Scasb | Mnemonic::Scasw | Mnemonic::Scasd | Mnemonic::Scasq
        );
        let repeated = instr.has_rep_prefix() || instr.has_repne_prefix();
        *left -= 1;
        self.executed += 1;
        if !repeated {
            self.string_once(mem, instr, op, size)?;
            self.regs.rip = instr.next_ip();
            return Ok(());
        }
        let mut first = true;
        while self.regs.gpr[RCX] != 0 {
            if !first {
                if *left == 0 {
                    return Ok(());
                }
                *left -= 1;
                self.executed += 1;
            }
            first = false;
            self.string_once(mem, instr, op, size)?;
            self.regs.gpr[RCX] = self.regs.gpr[RCX].wrapping_sub(1);
            if compares {
                let zf = self.regs.rflags & ZF != 0;
                if (instr.has_repe_prefix() && !zf) || (instr.has_repne_prefix() && zf) {
                    break;
                }
            }
        }
        self.regs.rip = instr.next_ip();
        Ok(())
    }

    /// One iteration; registers move only once its reads succeeded.
    fn string_once(
        &mut self,
        mem: &mut dyn Memory,
        instr: &Instruction,
        op: Mnemonic,
        size: u32,
    ) -> Result<(), EmuError> {
        let step = if self.regs.rflags & DF != 0 {
            0u64.wrapping_sub(u64::from(size))
        } else {
            u64::from(size)
        };
        let src = self.regs.gpr[RSI].wrapping_add(self.segment_base(instr.memory_segment()));
        let dst = self.regs.gpr[RDI];
        let (mut rsi, mut rdi) = (false, false);
        match op {
            Mnemonic::Movsb | Mnemonic::Movsw | Mnemonic::Movsd | Mnemonic::Movsq => {
                let v = self.load(mem, src, size)?;
                self.store(dst, size, v);
                (rsi, rdi) = (true, true);
            }
            Mnemonic::Stosb | Mnemonic::Stosw | Mnemonic::Stosd | Mnemonic::Stosq => {
                let v = self.regs.gpr[RAX];
                self.store(dst, size, v);
                rdi = true;
            }
            Mnemonic::Lodsb | Mnemonic::Lodsw | Mnemonic::Lodsd | Mnemonic::Lodsq => {
                let v = self.load(mem, src, size)?;
                let reg = instr.op_register(0);
                self.set_reg(instr, reg, v)?;
                rsi = true;
            }
            Mnemonic::Cmpsb | Mnemonic::Cmpsw | Mnemonic::Cmpsd | Mnemonic::Cmpsq => {
                let a = self.load(mem, src, size)?;
                let b = self.load(mem, dst, size)?;
                self.regs.rflags = alu::sub(a, b, false, size).merge(self.regs.rflags);
                (rsi, rdi) = (true, true);
            }
            Mnemonic::Scasb | Mnemonic::Scasw | Mnemonic::Scasd | Mnemonic::Scasq => {
                let b = self.load(mem, dst, size)?;
                let a = self.regs.gpr[RAX];
                self.regs.rflags = alu::sub(a, b, false, size).merge(self.regs.rflags);
                rdi = true;
            }
            _ => return Err(unsupported(instr, "")),
        }
        if rsi {
            self.regs.gpr[RSI] = self.regs.gpr[RSI].wrapping_add(step);
        }
        if rdi {
            self.regs.gpr[RDI] = self.regs.gpr[RDI].wrapping_add(step);
        }
        Ok(())
    }
}
