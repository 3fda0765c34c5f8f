//! What a handler sees at a hit: registers fetched lazily from the stub.

use gdb_remote::{Client, Registers, ThreadId};
use probe_lang::{ContextError, ProbeContext};

/// x86-64 System V argument registers, in order.
const ARG_REGS: [&str; 6] = ["rdi", "rsi", "rdx", "rcx", "r8", "r9"];

pub(crate) struct HitContext<'a> {
    pub client: Option<&'a mut Client>,
    pub thread: Option<ThreadId>,
    pub regs: Option<Registers>,
    pub vcpu: u32,
    pub nsecs: u64,
    pub func: &'a str,
    pub probe: &'a str,
}

impl HitContext<'_> {
    fn register(&mut self, name: &str) -> Result<u64, ContextError> {
        if self.regs.is_none() {
            let (Some(client), Some(thread)) = (self.client.as_deref_mut(), self.thread) else {
                return Err(ContextError::Message(format!(
                    "no registers in {}",
                    self.probe
                )));
            };
            // One `g` fetches every register: cheaper than a `p` per register
            // as soon as a handler reads two of them.
            let regs = client
                .read_registers(thread)
                .map_err(|e| ContextError::Message(e.to_string()))?;
            self.regs = Some(regs);
        }
        let regs = self.regs.as_ref().expect("fetched above");
        regs.get(name)
            .ok_or_else(|| ContextError::Message(format!("the stub has no register '{name}'")))
    }
}

impl ProbeContext for HitContext<'_> {
    fn arg(&mut self, n: u8) -> Result<u64, ContextError> {
        let reg = ARG_REGS.get(n as usize).ok_or_else(|| {
            ContextError::Message(format!("arg{n}: only arg0..arg5 are passed in registers"))
        })?;
        self.register(reg)
    }

    fn retval(&mut self) -> Result<u64, ContextError> {
        self.register("rax")
    }

    fn vcpu(&self) -> u32 {
        self.vcpu
    }

    fn nsecs(&self) -> u64 {
        self.nsecs
    }

    fn func(&self) -> &str {
        self.func
    }

    fn probe(&self) -> &str {
        self.probe
    }

    fn read_memory(&mut self, addr: u64, buf: &mut [u8]) -> Result<(), ContextError> {
        let Some(client) = self.client.as_deref_mut() else {
            return Err(ContextError::Message(format!(
                "no guest memory in {}",
                self.probe
            )));
        };
        client
            .read_memory(addr, buf)
            .map_err(|e| ContextError::Message(format!("read at {addr:#x}: {e}")))
    }
}
