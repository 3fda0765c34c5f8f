//! The guest kernel's own compiled library functions, emulated from the real image
//! (`$VMPROBE_TEST_VMLINUZ`) and checked against Rust's std or a crate as ground truth.
//! The image's `.text`/`.rodata`/`.data` are served at their link-time addresses, with a test
//! heap and stack; `call __fentry__`, `jmp __x86_return_thunk` and the retpoline thunks are
//! unpatched in the image and run as the code says.

mod bits;
mod strings;
mod survey;
mod trace;

use std::path::PathBuf;
use std::sync::OnceLock;

use kernel_image::{KernelSections, KernelSymbols};
use x86_emulate::{
    Action, EmuError, Hooks, Machine, Memory, MemoryFault, R8, R9, RCX, RDI, RDX, RSI, RSP,
    Registers, Stopped, Transfer,
};

/// The test heap (inputs live here, in "guest memory"), with the stack at its top.
pub const HEAP: u64 = 0xffff_8880_0100_0000;
pub const HEAP_LEN: usize = 1 << 20;
pub const STACK_TOP: u64 = HEAP + HEAP_LEN as u64 - 0x100;
/// `%gs:` points here (per-CPU data): the stack protector's canary is at %gs:0x28.
pub const PERCPU: usize = 0x20000;
pub const CANARY: u64 = 0x5eed_cafe_f00d_1234;
/// The return address pushed for the emulated function; reaching it ends the run.
pub const RETURN_TO: u64 = 0xffff_ffff_dead_0000;

pub struct Kernel {
    pub syms: KernelSymbols,
    pub btf: kernel_btf::Btf,
    sections: Vec<(u64, Vec<u8>)>,
}

/// The real image, loaded once per test binary; None (with a notice) when unset outside CI.
pub fn kernel() -> Option<&'static Kernel> {
    static KERNEL: OnceLock<Option<Kernel>> = OnceLock::new();
    KERNEL
        .get_or_init(|| {
            let path = match std::env::var_os("VMPROBE_TEST_VMLINUZ") {
                Some(p) => PathBuf::from(p),
                None if std::env::var_os("CI").is_some() => {
                    panic!("VMPROBE_TEST_VMLINUZ must be set in CI")
                }
                None => {
                    eprintln!("note: VMPROBE_TEST_VMLINUZ unset; skipping real-kernel tests");
                    return None;
                }
            };
            let syms = KernelSymbols::load(&path, None).expect("loads the image's symbols");
            let names = [".text", ".rodata", ".data"];
            let secs = KernelSections::load(&path, &[&names[..], &[".BTF"]].concat(), None)
                .expect("loads sections");
            let btf = secs.get(".BTF").expect("the image has .BTF");
            let btf = kernel_btf::Btf::parse(&btf.data).expect("parses .BTF");
            let sections = names
                .iter()
                .map(|n| {
                    let s = secs.get(n).unwrap_or_else(|| panic!("image has {n}"));
                    (s.addr, s.data.clone())
                })
                .collect();
            Some(Kernel {
                syms,
                btf,
                sections,
            })
        })
        .as_ref()
}

impl Kernel {
    pub fn addr(&self, name: &str) -> u64 {
        self.syms
            .lookup(name)
            .unwrap_or_else(|| panic!("the image has no symbol {name}"))
            .addr
    }
}

/// The image's sections and the heap, read-only: the emulator has no way to write here.
pub struct TestMemory {
    kernel: &'static Kernel,
    pub heap: Vec<u8>,
    /// Reads served (the emulator fetches code through here too).
    pub reads: u64,
}

impl TestMemory {
    pub fn new(kernel: &'static Kernel) -> TestMemory {
        let mut heap = vec![0; HEAP_LEN];
        heap[PERCPU + 0x28..PERCPU + 0x30].copy_from_slice(&CANARY.to_le_bytes());
        TestMemory {
            kernel,
            heap,
            reads: 0,
        }
    }

    /// Places `bytes` in the heap at `off`; returns its address.
    pub fn put(&mut self, off: usize, bytes: &[u8]) -> u64 {
        self.heap[off..off + bytes.len()].copy_from_slice(bytes);
        HEAP + off as u64
    }
}

fn slice_at(base: u64, data: &[u8], addr: u64, len: usize) -> Option<&[u8]> {
    let off = usize::try_from(addr.checked_sub(base)?).ok()?;
    data.get(off..off.checked_add(len)?)
}

impl Memory for TestMemory {
    fn read(&mut self, addr: u64, buf: &mut [u8]) -> Result<(), MemoryFault> {
        self.reads += 1;
        let found = self
            .kernel
            .sections
            .iter()
            .find_map(|(base, data)| slice_at(*base, data, addr, buf.len()))
            .or_else(|| slice_at(HEAP, &self.heap, addr, buf.len()));
        buf.copy_from_slice(found.ok_or(MemoryFault)?);
        Ok(())
    }
}

/// Hooks for one call: record, and serve fake callees by reading the machine's memory.
pub struct CallHooks<'a> {
    pub record: &'a mut Vec<(u64, Transfer)>,
    pub fakes: &'a [(u64, Fake)],
    pub heap: &'a mut TestMemory,
}

/// A fake callee: computes rax from the machine and the heap, as if the target returned.
pub type Fake = fn(&mut Machine, &mut TestMemory) -> u64;

impl Hooks for CallHooks<'_> {
    fn transfer(&mut self, target: u64, kind: Transfer, machine: &mut Machine) -> Action {
        self.record.push((target, kind));
        match self.fakes.iter().find(|(t, _)| *t == target) {
            Some((_, f)) => Action::Return(f(machine, self.heap)),
            None => Action::Continue,
        }
    }
}

/// The outcome of calling one function.
pub struct Called {
    pub rax: u64,
    pub machine: Machine,
    pub mem: TestMemory,
    pub transfers: Vec<(u64, Transfer)>,
}

impl Called {
    /// `len` bytes at `addr` as the emulated code left them (overlay over memory).
    pub fn bytes(&mut self, addr: u64, len: usize) -> Vec<u8> {
        let mut out = vec![0; len];
        self.machine
            .read(&mut self.mem, addr, &mut out)
            .expect("reads the result");
        out
    }

    /// How many transfers went to `target`.
    pub fn transfers_to(&self, target: u64) -> usize {
        self.transfers.iter().filter(|(t, _)| *t == target).count()
    }
}

/// The retpoline thunks by register number (none for rsp).
const THUNKS: [&str; 16] = [
    "rax", "rcx", "rdx", "rbx", "", "rbp", "rsi", "rdi", "r8", "r9", "r10", "r11", "r12", "r13",
    "r14", "r15",
];

/// Registers at a function's entry: `args` in rdi, rsi, rdx, rcx, r8, r9 (SysV), the test
/// stack, `%gs` at the test per-CPU area.
pub fn entry_regs(args: &[u64]) -> Registers {
    let mut regs = Registers {
        rflags: 0x202,
        gs_base: HEAP + PERCPU as u64,
        ..Registers::default()
    };
    regs.gpr[RSP] = STACK_TOP;
    for (reg, v) in [RDI, RSI, RDX, RCX, R8, R9].iter().zip(args) {
        regs.gpr[*reg] = *v;
    }
    regs
}

/// Declares the image's retpoline thunks, so hooks see indirect targets.
pub fn declare_thunks(k: &Kernel, m: &mut Machine) {
    for (reg, name) in THUNKS.iter().enumerate() {
        if !name.is_empty() {
            m.add_indirect_thunk(k.addr(&format!("__x86_indirect_thunk_{name}")), reg);
        }
    }
}

/// Calls `name(args...)` as the SysV ABI says, running until it returns to RETURN_TO.
pub fn call(k: &'static Kernel, mem: TestMemory, name: &str, args: &[u64]) -> Called {
    call_with(k, mem, name, args, &[], false).unwrap_or_else(|e| panic!("{name}: {e}"))
}

pub fn call_with(
    k: &'static Kernel,
    mut mem: TestMemory,
    name: &str,
    args: &[u64],
    fakes: &[(u64, Fake)],
    thunks: bool,
) -> Result<Called, EmuError> {
    let mut machine = Machine::new(entry_regs(args));
    machine.call_function(k.addr(name), RETURN_TO);
    if thunks {
        declare_thunks(k, &mut machine);
    }
    let mut transfers = Vec::new();
    // The hooks see a snapshot of the heap: fakes read their inputs from there.
    let mut snapshot = TestMemory {
        kernel: k,
        heap: mem.heap.clone(),
        reads: 0,
    };
    let stopped = {
        let mut hooks = CallHooks {
            record: &mut transfers,
            fakes,
            heap: &mut snapshot,
        };
        machine.run(&mut mem, &mut hooks, 2_000_000)?
    };
    assert_eq!(
        stopped,
        Stopped {
            target: RETURN_TO,
            kind: Transfer::Return
        },
        "{name} returned"
    );
    assert_eq!(
        machine.regs().gpr[RSP],
        STACK_TOP,
        "{name} popped its frame"
    );
    let rax = machine.regs().gpr[x86_emulate::RAX];
    Ok(Called {
        rax,
        machine,
        mem,
        transfers,
    })
}

/// Deterministic pseudo-random numbers (xorshift64*).
pub struct Rng(pub u64);

impl Rng {
    pub fn draw(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}
