//! Control flow: condition codes, the stack (push/pop/leave), jcc, jmp, call and ret, and
//! the hooks asked before every call and unconditional jump.

use iced_x86::{ConditionCode, Instruction, Mnemonic, OpKind};

use crate::decode::unsupported;
use crate::exec::Flow;
use crate::flags::{CF, OF, PF, SF, ZF};
use crate::{Action, EmuError, Hooks, Machine, Memory, RAX, RBP, RSP, Stopped, Transfer};

impl Machine {
    /// Whether the instruction's condition holds under the current flags.
    pub(crate) fn condition(&self, instr: &Instruction) -> Result<bool, EmuError> {
        let f = self.regs.rflags;
        let set = |b: u64| f & b != 0;
        Ok(match instr.condition_code() {
            ConditionCode::o => set(OF),
            ConditionCode::no => !set(OF),
            ConditionCode::b => set(CF),
            ConditionCode::ae => !set(CF),
            ConditionCode::e => set(ZF),
            ConditionCode::ne => !set(ZF),
            ConditionCode::be => set(CF) || set(ZF),
            ConditionCode::a => !set(CF) && !set(ZF),
            ConditionCode::s => set(SF),
            ConditionCode::ns => !set(SF),
            ConditionCode::p => set(PF),
            ConditionCode::np => !set(PF),
            ConditionCode::l => set(SF) != set(OF),
            ConditionCode::ge => set(SF) == set(OF),
            ConditionCode::le => set(ZF) || set(SF) != set(OF),
            ConditionCode::g => !set(ZF) && set(SF) == set(OF),
            _ => return Err(unsupported(instr, "condition")),
        })
    }

    /// Pushes `size` bytes (8, or 2 with an operand-size prefix).
    fn push_sized(&mut self, v: u64, size: u32) {
        let rsp = self.regs.gpr[RSP].wrapping_sub(u64::from(size));
        self.store(rsp, size, v);
        self.regs.gpr[RSP] = rsp;
    }

    fn pop_sized(&mut self, mem: &mut dyn Memory, size: u32) -> Result<u64, EmuError> {
        let rsp = self.regs.gpr[RSP];
        let v = self.load(mem, rsp, size)?;
        self.regs.gpr[RSP] = rsp.wrapping_add(u64::from(size));
        Ok(v)
    }

    /// push, pop, pushfq, popfq, leave.
    pub(crate) fn stack_op(
        &mut self,
        mem: &mut dyn Memory,
        instr: &Instruction,
    ) -> Result<(), EmuError> {
        // stack_pointer_increment is -8/+8, or -2/+2 with a 66 prefix.
        let size = instr.stack_pointer_increment().unsigned_abs();
        match instr.mnemonic() {
            Mnemonic::Push => {
                if size != 8 && size != 2 {
                    return Err(unsupported(instr, "push size"));
                }
                let v = self.read_op(mem, instr, 0, size)?;
                self.push_sized(v, size);
            }
            Mnemonic::Pop => {
                if size != 8 && size != 2 {
                    return Err(unsupported(instr, "pop size"));
                }
                let v = self.pop_sized(mem, size)?;
                // `pop [rsp+d]` addresses with the incremented rsp, as the hardware does.
                if let Err(e) = self.write_op(instr, 0, v) {
                    self.regs.gpr[RSP] = self.regs.gpr[RSP].wrapping_sub(u64::from(size));
                    return Err(e);
                }
            }
            Mnemonic::Pushfq => {
                // The pushed image has RF and VM clear.
                let v = self.regs.rflags & !((1 << 16) | (1 << 17));
                self.push_sized(v, 8);
            }
            Mnemonic::Popfq => {
                let v = self.pop_sized(mem, 8)?;
                // Writable bits (status, TF, IF, DF, IOPL, NT, AC, VIF, VIP, ID); bit 1 is 1.
                self.regs.rflags = (v & 0x3c_7fd5) | 2;
            }
            Mnemonic::Leave => {
                let saved = self.regs.gpr[RSP];
                self.regs.gpr[RSP] = self.regs.gpr[RBP];
                match self.pop_sized(mem, 8) {
                    Ok(v) => self.regs.gpr[RBP] = v,
                    Err(e) => {
                        self.regs.gpr[RSP] = saved;
                        return Err(e);
                    }
                }
            }
            _ => return Err(unsupported(instr, "")),
        }
        Ok(())
    }

    /// The target of a jmp/call: direct, a register, or memory (RIP-relative included).
    fn branch_target(
        &mut self,
        mem: &mut dyn Memory,
        instr: &Instruction,
    ) -> Result<u64, EmuError> {
        match instr.op_kind(0) {
            OpKind::NearBranch64 => Ok(instr.near_branch64()),
            OpKind::Register | OpKind::Memory => {
                if self.op_size(instr, 0)? != 8 {
                    return Err(unsupported(instr, "branch size"));
                }
                self.read_op(mem, instr, 0, 8)
            }
            _ => Err(unsupported(instr, "far or relative-16 branch")),
        }
    }

    /// jcc: taken as the flags say; a taken one is a jump for the hooks (gcc emits
    /// conditional tail calls).
    pub(crate) fn jcc(
        &mut self,
        mem: &mut dyn Memory,
        hooks: &mut dyn Hooks,
        instr: &Instruction,
    ) -> Result<Flow, EmuError> {
        if !self.condition(instr)? {
            self.regs.rip = instr.next_ip();
            return Ok(Flow::Next);
        }
        self.transfer_to(mem, hooks, instr, instr.near_branch64(), Transfer::Jump)
    }

    /// call and jmp, after asking the hooks.
    pub(crate) fn transfer(
        &mut self,
        mem: &mut dyn Memory,
        hooks: &mut dyn Hooks,
        instr: &Instruction,
        kind: Transfer,
    ) -> Result<Flow, EmuError> {
        let target = self.branch_target(mem, instr)?;
        self.transfer_to(mem, hooks, instr, target, kind)
    }

    fn transfer_to(
        &mut self,
        mem: &mut dyn Memory,
        hooks: &mut dyn Hooks,
        instr: &Instruction,
        mut target: u64,
        kind: Transfer,
    ) -> Result<Flow, EmuError> {
        if let Some(&(_, reg)) = self.thunks.iter().find(|(t, _)| *t == target) {
            target = self.regs.gpr[reg];
        }
        match hooks.transfer(target, kind, self) {
            Action::Stop => return Ok(Flow::Stop(Stopped { target, kind })),
            Action::Return(v) => {
                if kind == Transfer::Jump {
                    // A tail call that returns at once: our function returns.
                    let to = self.pop_sized(mem, 8)?;
                    self.regs.rip = to;
                } else {
                    self.regs.rip = instr.next_ip();
                }
                self.regs.gpr[RAX] = v;
            }
            Action::Continue => {
                if kind == Transfer::Call {
                    self.push_sized(instr.next_ip(), 8);
                }
                self.regs.rip = target;
            }
        }
        Ok(Flow::Next)
    }

    /// ret and ret imm16.
    pub(crate) fn ret(
        &mut self,
        mem: &mut dyn Memory,
        instr: &Instruction,
    ) -> Result<(), EmuError> {
        let to = self.pop_sized(mem, 8)?;
        if instr.op_count() == 1 {
            self.regs.gpr[RSP] = self.regs.gpr[RSP].wrapping_add(u64::from(instr.immediate16()));
        }
        self.regs.rip = to;
        Ok(())
    }
}
