//! Test helpers: a fake ProbeContext and a capturing writer.
#![allow(dead_code)]

pub mod nodes;

use probe_lang::{ProbeSpec, Program, Value};
use probe_output::OutputFormat;
use probe_runtime::{ContextError, Flow, ProbeContext, Runtime};
use std::io::Write;
use std::sync::{Arc, Mutex};

#[derive(Clone, Default)]
pub struct Capture(pub Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Capture {
    pub fn take(&self) -> String {
        String::from_utf8(std::mem::take(&mut *self.0.lock().unwrap())).unwrap()
    }
}

pub struct FakeCtx {
    pub args: [u64; 6],
    pub retval: u64,
    pub vcpu: u32,
    pub nsecs: u64,
    pub func: String,
    pub probe: String,
    /// Make arg reads fail, like a gdbstub error.
    pub fail_args: bool,
    /// Readable guest memory: (start address, bytes).
    pub memory: Vec<(u64, Vec<u8>)>,
    pub registers: Vec<(String, u64)>,
    pub symbols: Vec<(String, u64)>,
    /// Largest single read_memory request seen (reads must be bounded).
    pub max_read: usize,
    /// Return addresses for kstack.
    pub stack: Vec<u64>,
    /// `curtask` (None: not supported).
    pub curtask: Option<u64>,
    /// `args.NAME` of vmm/tracepoint probes.
    pub probe_args: Vec<(String, Value)>,
    /// Number of read_memory calls.
    pub reads: usize,
}

impl FakeCtx {
    pub fn new(probe: &str) -> Self {
        FakeCtx {
            args: [0; 6],
            retval: 0,
            vcpu: 0,
            nsecs: 0,
            func: probe.rsplit(':').next().unwrap_or("").to_string(),
            probe: probe.to_string(),
            fail_args: false,
            memory: Vec::new(),
            registers: Vec::new(),
            symbols: Vec::new(),
            max_read: 0,
            stack: Vec::new(),
            curtask: None,
            probe_args: Vec::new(),
            reads: 0,
        }
    }
}

impl ProbeContext for FakeCtx {
    fn arg(&mut self, n: u8) -> Result<u64, ContextError> {
        if self.fail_args {
            return Err(ContextError::Register("register read failed".into()));
        }
        Ok(self.args[n as usize])
    }
    fn retval(&mut self) -> Result<u64, ContextError> {
        Ok(self.retval)
    }
    fn vcpu(&self) -> u32 {
        self.vcpu
    }
    fn nsecs(&self) -> u64 {
        self.nsecs
    }
    fn func(&self) -> &str {
        &self.func
    }
    fn probe(&self) -> &str {
        &self.probe
    }
    fn read_memory(&mut self, addr: u64, buf: &mut [u8]) -> Result<(), ContextError> {
        self.max_read = self.max_read.max(buf.len());
        self.reads += 1;
        for (start, bytes) in &self.memory {
            let Some(off) = addr.checked_sub(*start) else {
                continue;
            };
            let off = off as usize;
            if off + buf.len() <= bytes.len() {
                buf.copy_from_slice(&bytes[off..off + buf.len()]);
                return Ok(());
            }
        }
        Err(ContextError::Memory {
            addr,
            reason: "unmapped".into(),
        })
    }
    fn register(&mut self, name: &str) -> Result<u64, ContextError> {
        self.registers
            .iter()
            .find(|r| r.0 == name)
            .map(|r| r.1)
            .ok_or_else(|| ContextError::Register(format!("no register '{name}'")))
    }
    fn kaddr(&self, name: &str) -> Option<u64> {
        self.symbols.iter().find(|s| s.0 == name).map(|s| s.1)
    }
    fn ksym(&self, addr: u64) -> Option<(String, u64)> {
        // Nearest symbol at or below addr, like kallsyms.
        self.symbols
            .iter()
            .filter(|s| s.1 <= addr)
            .max_by_key(|s| s.1)
            .map(|s| (s.0.clone(), addr - s.1))
    }
    fn curtask(&mut self) -> Result<u64, ContextError> {
        self.curtask
            .ok_or_else(|| ContextError::Guest("no curtask".into()))
    }
    fn probe_arg(&mut self, name: &str) -> Result<Value, ContextError> {
        self.probe_args
            .iter()
            .find(|a| a.0 == name)
            .map(|a| a.1.clone())
            .ok_or_else(|| ContextError::Unavailable(format!("no field '{name}'")))
    }
    fn kstack(&mut self, limit: usize) -> Result<Vec<u64>, ContextError> {
        if self.stack.is_empty() {
            return Err(ContextError::Guest("no stack".into()));
        }
        Ok(self.stack.iter().copied().take(limit).collect())
    }
}

/// Runs a script the way bpftrace does for BEGIN/END-only programs: every
/// BEGIN block (stopping at exit()), then END blocks, then the exit print.
pub fn run_script(src: &str) -> String {
    run_script_as(src, OutputFormat::Text)
}

/// [`run_script`] in the given output format.
pub fn run_script_as(src: &str, format: OutputFormat) -> String {
    let prog = Arc::new(probe_lang::compile(src, "test").unwrap_or_else(|d| panic!("{d}")));
    let cap = Capture::default();
    let mut rt = new_runtime_as(&prog, cap.clone(), format);
    for (i, p) in prog.probes().iter().enumerate() {
        if *p == ProbeSpec::Begin
            && rt.run(prog.block_of(i), &mut FakeCtx::new("BEGIN")) == Flow::Exit
        {
            break;
        }
    }
    for (i, p) in prog.probes().iter().enumerate() {
        if *p == ProbeSpec::End {
            rt.run(prog.block_of(i), &mut FakeCtx::new("END"));
        }
    }
    rt.print_maps();
    cap.take()
}

/// A runtime for `p` whose output, printed as bpftrace's text, goes to `out`.
pub fn new_runtime(p: &Arc<Program>, out: impl Write + Send + 'static) -> Runtime {
    new_runtime_as(p, out, OutputFormat::Text)
}

/// [`new_runtime`] in the given output format.
pub fn new_runtime_as(
    p: &Arc<Program>,
    out: impl Write + Send + 'static,
    format: OutputFormat,
) -> Runtime {
    probe_output::printing_runtime(p.executable().clone(), Box::new(out), format)
}
