//! Pass 5: the interpreter. Walks the resolved IR of one block per probe hit.
//!
//! Integer semantics: every integer is a 64-bit two's complement pattern;
//! `+ - * << ~` and unary `-` wrap. Comparisons are signed only when the
//! static types say so (literals are signed; `argN`, `nsecs`, `vcpu`,
//! `retval` are unsigned; mixing makes the result unsigned, as in C); `>>`
//! is always logical, as in bpftrace 0.17.
//! `/` and `%` are unsigned like bpftrace's BPF code; division by zero is a
//! runtime error.
//!
//! A runtime error (division by zero, a failed register/memory read, the
//! step budget running out) aborts that one handler run and is counted per
//! (probe, message); nothing panics.
//!
//! Guest memory is only read through [`ProbeContext::read_memory`], and
//! every read is bounded (`str()` and `buf()` by [`STR_MAX`]/[`BUF_MAX`]).

use crate::check::{AggKind, BUF_MAX, HIST_BUCKETS, LhistParams, STR_MAX, TraceType};
use crate::ir::{AggOp, Block, Builtin, Expr, KeyExpr, Op1, Op2, ReadAsKind, Stmt};
use crate::printer::{OutputFormat, Printer, Shown};
use crate::value::{Key, KeyPart, Value};
use crate::{BlockId, Program};
use rustc_hash::FxHashMap;
use std::sync::Arc;

/// What a handler can ask about the place it fired; implemented by the
/// probe engine (registers come lazily from the stub).
///
/// Methods with a default body were added after the first engine; the
/// defaults report "not supported" so older implementors keep compiling.
pub trait ProbeContext {
    /// arg0..arg5 (the engine maps them to SysV argument registers).
    fn arg(&mut self, n: u8) -> Result<u64, ContextError>;
    fn retval(&mut self) -> Result<u64, ContextError>;
    fn vcpu(&self) -> u32;
    /// Host CLOCK_MONOTONIC nanoseconds of the hit.
    fn nsecs(&self) -> u64;
    /// Function name where the probe fired.
    fn func(&self) -> &str;
    /// Full probe name, e.g. `"kprobe:ksys_write"`, `"BEGIN"`.
    fn probe(&self) -> &str;
    /// Reads guest (virtual) memory; `buf.len()` is at most a few hundred
    /// bytes.
    fn read_memory(&mut self, addr: u64, buf: &mut [u8]) -> Result<(), ContextError>;
    /// Any register by its name in the stub's target description, e.g.
    /// `"rax"`, `"rip"`, `"cr3"` (for `reg("name")`).
    fn register(&mut self, name: &str) -> Result<u64, ContextError> {
        Err(ContextError::Register(format!(
            "reg(\"{name}\") is not supported by this probe context"
        )))
    }
    /// Guest kernel address of a symbol, KASLR slide applied (`kaddr()`).
    fn kaddr(&self, _name: &str) -> Option<u64> {
        None
    }
    /// The guest kernel symbol containing `addr` and `addr`'s offset into
    /// it (`ksym()`, `kstack` frames).
    fn ksym(&self, _addr: u64) -> Option<(String, u64)> {
        None
    }
    /// Return addresses of the interrupted kernel stack, innermost first,
    /// at most `limit` (for `kstack`). The language symbolizes them with
    /// [`ProbeContext::ksym`].
    fn kstack(&mut self, _limit: usize) -> Result<Vec<u64>, ContextError> {
        Err(ContextError::Message(
            "kstack is not supported by this probe context".into(),
        ))
    }
    /// Address of the current task's `task_struct` (Linux guests).
    fn curtask(&mut self) -> Result<u64, ContextError> {
        Err(ContextError::Message(
            "curtask is not supported by this probe context".into(),
        ))
    }
    /// The current task's `comm` (Linux guests).
    fn comm(&mut self) -> Result<String, ContextError> {
        Err(ContextError::Message(
            "comm is not supported by this probe context".into(),
        ))
    }
    /// The current process id, `task->tgid` (Linux guests).
    fn pid(&mut self) -> Result<u64, ContextError> {
        Err(ContextError::Message(
            "pid is not supported by this probe context".into(),
        ))
    }
    /// The current thread id, `task->pid` (Linux guests).
    fn tid(&mut self) -> Result<u64, ContextError> {
        Err(ContextError::Message(
            "tid is not supported by this probe context".into(),
        ))
    }
    /// The current task's cgroup v2 id (Linux guests), as bpftrace's `cgroup`.
    fn cgroup(&mut self) -> Result<u64, ContextError> {
        Err(ContextError::Message(
            "cgroup is not supported by this probe context".into(),
        ))
    }
    /// The path of cgroup v2 id `id` in the default hierarchy (`/`,
    /// `/a/b`), `None` when no cgroup has that id (Linux guests).
    fn cgroup_path(&mut self, _id: u64) -> Result<Option<String>, ContextError> {
        Err(ContextError::Message(
            "cgroup_path is not supported by this probe context".into(),
        ))
    }
    /// Named argument `args.NAME` of a `vmm:EVENT` or
    /// `tracepoint:SYSTEM:EVENT` probe (an integer, or a string where the
    /// type provider said so).
    fn probe_arg(&mut self, name: &str) -> Result<Value, ContextError> {
        Err(ContextError::Message(format!(
            "args.{name} is not supported by this probe context"
        )))
    }
    /// The VM the probe fired in (`guest`).
    fn guest(&self) -> &str {
        "vm0"
    }
    /// The physical address of `vaddr` in the address space whose
    /// top-level page table is at physical address `cr3` (`vtop`).
    fn vtop(&mut self, _cr3: u64, _vaddr: u64) -> Result<u64, ContextError> {
        Err(ContextError::Message(
            "vtop is not supported by this probe context".into(),
        ))
    }
    /// Reads memory at `addr` in the address space of `task` (a kernel
    /// task structure's address), whatever runs on the vCPU (`str_as`,
    /// `buf_as`, `uint_as`).
    fn read_task_memory(
        &mut self,
        _task: u64,
        _addr: u64,
        _buf: &mut [u8],
    ) -> Result<(), ContextError> {
        Err(ContextError::Message(
            "reading another task's memory is not supported by this probe context".into(),
        ))
    }
    /// Return addresses of the current task's user stack, innermost first,
    /// at most `limit` (for `ustack`).
    fn ustack(&mut self, _limit: usize) -> Result<Vec<u64>, ContextError> {
        Err(ContextError::Message(
            "ustack is not supported by this probe context".into(),
        ))
    }
    /// `trace(...)` and `snapshot()`: hands the event (or the snapshot
    /// request) to the recorder of `vmprobe record`.
    fn trace(&mut self, _what: Traced) -> Result<(), ContextError> {
        Err(ContextError::Message(
            "trace() and snapshot() work only under `vmprobe record`".into(),
        ))
    }
}

/// What a `trace(...)` or `snapshot()` call asks the recorder to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Traced {
    /// `trace()`: an event with the probe's own fields (arguments, return
    /// value, or a VMM/host event's fields), which the engine knows.
    Probe,
    /// `trace(name = expr, ...)` at call site `site`: the fields in order.
    Fields {
        site: u32,
        fields: Vec<(Arc<str>, TracedValue)>,
    },
    /// `snapshot()`.
    Snapshot,
}

/// A typed `trace()` field value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TracedValue {
    U64(u64),
    I64(i64),
    Str(Arc<str>),
    Bytes(Arc<[u8]>),
}

/// A bounded memory read: the current address space or another task's.
type ReadFn<'a> = dyn FnMut(u64, &mut [u8]) -> Result<(), ContextError> + 'a;

#[derive(Debug, thiserror::Error)]
pub enum ContextError {
    #[error("{0}")]
    Message(String),
    #[error("failed to read register: {0}")]
    Register(String),
    #[error("failed to read memory at {addr:#x}: {reason}")]
    Memory { addr: u64, reason: String },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flow {
    Continue,
    /// The handler called `exit()`.
    Exit,
}

/// Per-run step budget (IR nodes evaluated) unless changed with
/// [`Runtime::set_step_budget`].
pub const DEFAULT_STEP_BUDGET: u64 = 100_000;

/// Entries per map, as bpftrace's default BPFTRACE_MAP_KEYS_MAX.
pub const DEFAULT_MAP_LIMIT: usize = 4096;

/// One map entry. `Num` serves count / sum / min / max / integer values
/// (in `a`; min/max set `b`=1 once they hold a value) and avg / stats (sum
/// in `a`, count in `b`).
#[derive(Clone, Debug)]
enum Cell {
    Num {
        a: u64,
        b: u64,
    },
    Hist(Box<[u64]>),
    /// A string or tuple value.
    Val(Value),
}

type Map = FxHashMap<Key, Cell>;

/// The per-vCPU variables (`self->name`) of one vCPU of one guest, by
/// slot; `None` is unset (reads as the type's zero).
struct VcpuVars {
    guest: String,
    vcpu: u32,
    vals: Vec<Option<Value>>,
}

/// Why a handler run stopped early. Kept to 16 bytes (boxed payloads) so
/// `Result<Value, RunError>`, returned by every `eval`, stays small.
// The extra Box around the String is the point: one pointer-sized payload.
#[allow(clippy::box_collection)]
enum RunError {
    Msg(Box<String>),
    Ctx(Box<ContextError>),
    Exit,
    Break,
    Continue,
}

impl From<ContextError> for RunError {
    fn from(e: ContextError) -> Self {
        RunError::Ctx(Box::new(e))
    }
}

pub struct Runtime {
    program: Arc<Program>,
    maps: Vec<Map>,
    printer: Printer,
    slots: Vec<Value>,
    steps: u64,
    budget: u64,
    errors: FxHashMap<(String, String), u64>,
    args: Vec<Value>,
    /// nsecs of the first run, the origin of `elapsed`.
    start_ns: Option<u64>,
    /// (nsecs, Unix time in ns) at the first run, to turn `nsecs`
    /// timestamps into wall-clock time for `strftime()`.
    wall_origin: Option<(u64, u64)>,
    /// xorshift64 state for `rand`.
    rng: u64,
    map_limit: usize,
    /// Few entries (one per vCPU seen), so a linear search is the fastest.
    per_vcpu: Vec<VcpuVars>,
}

impl Runtime {
    pub fn new(program: Arc<Program>, out: Box<dyn std::io::Write + Send>) -> Runtime {
        let mut maps: Vec<Map> = program.ir.maps.iter().map(|_| Map::default()).collect();
        // bpftrace always shows a scalar count map, even untouched (`@c: 0`).
        for (m, d) in maps.iter_mut().zip(&program.ir.maps) {
            if d.kind == AggKind::Count && d.keys.is_empty() {
                m.insert(Key::None, Cell::Num { a: 0, b: 0 });
            }
        }
        let tuples = program.ir.tuples.clone();
        Runtime {
            program,
            maps,
            printer: Printer::new(out, tuples),
            slots: Vec::new(),
            steps: 0,
            budget: DEFAULT_STEP_BUDGET,
            errors: FxHashMap::default(),
            args: Vec::new(),
            start_ns: None,
            wall_origin: None,
            rng: 0,
            map_limit: DEFAULT_MAP_LIMIT,
            per_vcpu: Vec::new(),
        }
    }

    /// Text (default, like `bpftrace`) or JSON (like `bpftrace -f json`).
    pub fn set_output_format(&mut self, f: OutputFormat) {
        self.printer.set_format(f);
    }

    /// Maximum entries per map (default [`DEFAULT_MAP_LIMIT`]).
    pub fn set_map_limit(&mut self, entries: usize) {
        self.map_limit = entries;
    }

    pub fn set_step_budget(&mut self, steps: u64) {
        self.budget = steps;
    }

    /// Sets the origin of `elapsed` (by default the first run's `nsecs`).
    pub fn set_start_nsecs(&mut self, ns: u64) {
        self.start_ns = Some(ns);
    }

    /// Evaluates the block's predicate, then its body. Errors are counted
    /// and turn into `Flow::Continue`.
    pub fn run(&mut self, block: BlockId, ctx: &mut dyn ProbeContext) -> Flow {
        let program = Arc::clone(&self.program);
        let Some(b) = program.ir.blocks.get(block.0 as usize) else {
            self.count_error(ctx.probe(), format!("no such block {}", block.0));
            return Flow::Continue;
        };
        if self.wall_origin.is_none() {
            // First run: the origin of `elapsed` and of strftime's clock.
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64);
            self.start_ns.get_or_insert(ctx.nsecs());
            self.wall_origin = Some((ctx.nsecs(), now));
            self.rng = now | 1;
        }
        self.steps = 0;
        self.slots.clear();
        self.slots.resize(b.slots as usize, Value::Int(0));
        match self.run_block(&program, b, ctx) {
            Ok(()) | Err(RunError::Break | RunError::Continue) => Flow::Continue,
            Err(RunError::Exit) => Flow::Exit,
            Err(RunError::Msg(m)) => {
                self.count_error(ctx.probe(), *m);
                Flow::Continue
            }
            Err(RunError::Ctx(e)) => {
                self.count_error(ctx.probe(), e.to_string());
                Flow::Continue
            }
        }
    }

    fn count_error(&mut self, probe: &str, msg: String) {
        *self.errors.entry((probe.to_string(), msg)).or_insert(0) += 1;
    }

    /// Runtime error counts, sorted by probe then message.
    pub fn errors(&self) -> Vec<(String, String, u64)> {
        let mut v: Vec<_> = self
            .errors
            .iter()
            .map(|((p, e), n)| (p.clone(), e.clone(), *n))
            .collect();
        v.sort();
        v
    }

    /// bpftrace's at-exit output: `\n\n`, then every map in name order
    /// (empty maps print as a blank line, exactly as bpftrace 0.17 does).
    pub fn print_maps(&mut self) {
        self.printer.exit_separator();
        let mut order: Vec<usize> = (0..self.maps.len()).collect();
        order.sort_by(|&a, &b| {
            self.program.ir.maps[a]
                .name
                .cmp(&self.program.ir.maps[b].name)
        });
        for i in order {
            self.print_map(i, 0, 1);
        }
    }

    /// Every map entry keyed by a `kstack` (alone or with other keys), as
    /// (frames innermost first, value): what a flame graph is drawn from.
    pub fn stack_entries(&self) -> Vec<(Vec<String>, u64)> {
        let mut out = Vec::new();
        for (i, map) in self.maps.iter().enumerate() {
            for key in map.keys() {
                let Key::Multi(parts) = key else { continue };
                for part in parts.iter() {
                    if let KeyPart::Stack(frames) = part {
                        let frames = frames.iter().map(|f| f.to_string()).collect();
                        out.push((frames, self.read(i, key).as_int()));
                    }
                }
            }
        }
        out
    }

    /// Current value of a map entry as `@m[key]` reads it (for tests/tools).
    pub fn map_value(&self, name: &str, key: &[Value]) -> Option<u64> {
        let i = self.program.ir.maps.iter().position(|m| m.name == name)?;
        let key = make_key(key.to_vec());
        Some(self.read(i, &key).as_int())
    }

    fn print_map(&mut self, i: usize, top: u64, div: u64) {
        let decl = &self.program.ir.maps[i];
        let mut entries: Vec<(Key, Shown)> = self.maps[i]
            .iter()
            .map(|(k, c)| {
                let shown = match (c, decl.kind) {
                    (Cell::Hist(b), _) => Shown::Hist(b.to_vec()),
                    (Cell::Val(v), _) => Shown::Val(v.clone()),
                    (&Cell::Num { a, b }, AggKind::Stats) => Shown::Stats { count: b, total: a },
                    (Cell::Num { .. }, _) => Shown::Int(self.read(i, k).as_int()),
                };
                (k.clone(), shown)
            })
            .collect();
        self.printer.map(decl, &mut entries, top, div);
    }

    fn read(&self, map: usize, key: &Key) -> Value {
        let decl = &self.program.ir.maps[map];
        match self.maps[map].get(key) {
            None => zero_value(decl.value, &self.program.ir.tuples),
            Some(Cell::Val(v)) => v.clone(),
            Some(Cell::Hist(_)) => Value::Int(0),
            Some(&Cell::Num { a, b }) => Value::Int(match decl.kind {
                AggKind::Avg | AggKind::Stats => avg(a, b, decl.signed),
                _ => a,
            }),
        }
    }

    /// The per-vCPU variables of the vCPU (of the guest) a probe fired on.
    fn vcpu_vars(&mut self, ctx: &dyn ProbeContext) -> &mut Vec<Option<Value>> {
        let (guest, vcpu) = (ctx.guest(), ctx.vcpu());
        let i = match self
            .per_vcpu
            .iter()
            .position(|v| v.vcpu == vcpu && v.guest == guest)
        {
            Some(i) => i,
            None => {
                self.per_vcpu.push(VcpuVars {
                    guest: guest.to_string(),
                    vcpu,
                    vals: vec![None; self.program.ir.self_vars.len()],
                });
                self.per_vcpu.len() - 1
            }
        };
        &mut self.per_vcpu[i].vals
    }

    fn step(&mut self) -> Result<(), RunError> {
        self.steps += 1;
        if self.steps > self.budget {
            return Err(RunError::Msg(Box::new(format!(
                "handler exceeded its step budget of {} operations",
                self.budget
            ))));
        }
        Ok(())
    }

    fn run_block(
        &mut self,
        p: &Program,
        b: &Block,
        ctx: &mut dyn ProbeContext,
    ) -> Result<(), RunError> {
        if let Some(pred) = &b.predicate
            && self.eval(p, pred, ctx)?.as_int() == 0
        {
            return Ok(());
        }
        self.exec(p, &b.body, ctx)
    }

    /// Whether `key` exists or may be added: like bpftrace's BPF maps, a
    /// map holds at most `map_limit` entries and further new keys are
    /// dropped (counted as an error, the handler goes on).
    #[inline]
    fn has_room(&mut self, map: usize, key: &Key, ctx: &dyn ProbeContext) -> bool {
        let m = &self.maps[map];
        if m.len() < self.map_limit || m.contains_key(key) {
            return true;
        }
        let msg = format!(
            "map @{} is full ({} entries); new keys are dropped",
            self.program.ir.maps[map].name, self.map_limit
        );
        self.count_error(ctx.probe(), msg);
        false
    }

    #[inline]
    fn agg(&mut self, map: usize, key: Key, op: AggOp, v: u64) {
        let m = &mut self.maps[map];
        if let AggOp::Hist | AggOp::Lhist(_) = op {
            let (n, idx) = match op {
                AggOp::Lhist(l) => (l.buckets(), lhist_index(v, l)),
                _ => (HIST_BUCKETS, hist_index(v)),
            };
            let cell = m
                .entry(key)
                .or_insert_with(|| Cell::Hist(vec![0; n].into_boxed_slice()));
            if let Cell::Hist(b) = cell
                && let Some(x) = b.get_mut(idx)
            {
                *x += 1;
            }
            return;
        }
        if let AggOp::Max { signed } = op
            && !m.contains_key(&key)
        {
            // bpftrace 0.17 compares with 0 when the entry is missing, so a
            // max() map never gets an entry for negative values.
            if !signed || v as i64 >= 0 {
                m.insert(key, Cell::Num { a: v, b: 1 });
            }
            return;
        }
        let Cell::Num { a, b } = m.entry(key).or_insert(Cell::Num { a: 0, b: 0 }) else {
            return;
        };
        match op {
            AggOp::Count => *a = a.wrapping_add(1),
            AggOp::Sum => *a = a.wrapping_add(v),
            AggOp::Avg | AggOp::Stats => {
                *a = a.wrapping_add(v);
                *b += 1;
            }
            AggOp::Min { signed } | AggOp::Max { signed } => {
                let less = if signed {
                    (v as i64) < (*a as i64)
                } else {
                    v < *a
                };
                let better = if matches!(op, AggOp::Min { .. }) {
                    less
                } else {
                    !less && v != *a
                };
                // A max() entry always holds a value (0 after zero()), and
                // bpftrace compares with it; min() takes the first value.
                let first = *b == 0 && matches!(op, AggOp::Min { .. });
                if first || better {
                    *a = v;
                    *b = 1;
                }
            }
            AggOp::Hist | AggOp::Lhist(_) => {}
        }
    }

    fn exec(
        &mut self,
        p: &Program,
        stmts: &[Stmt],
        ctx: &mut dyn ProbeContext,
    ) -> Result<(), RunError> {
        for s in stmts {
            self.step()?;
            match s {
                Stmt::Agg { map, key, op, arg } => {
                    let key = self.key(p, key, ctx)?;
                    let v = match arg {
                        Some(a) => self.eval(p, a, ctx)?.as_int(),
                        None => 0,
                    };
                    if self.has_room(*map as usize, &key, ctx) {
                        self.agg(*map as usize, key, *op, v);
                    }
                }
                Stmt::MapSet { map, key, value } => {
                    let key = self.key(p, key, ctx)?;
                    let cell = match self.eval(p, value, ctx)? {
                        Value::Int(a) => Cell::Num { a, b: 0 },
                        v => Cell::Val(v),
                    };
                    if self.has_room(*map as usize, &key, ctx) {
                        self.maps[*map as usize].insert(key, cell);
                    }
                }
                Stmt::MapUpdate {
                    map,
                    key,
                    op,
                    value,
                } => {
                    let key = self.key(p, key, ctx)?;
                    let old = self.read(*map as usize, &key).as_int();
                    let v = self.eval(p, value, ctx)?.as_int();
                    let a = binop(*op, old, v)?;
                    if self.has_room(*map as usize, &key, ctx) {
                        self.maps[*map as usize].insert(key, Cell::Num { a, b: 0 });
                    }
                }
                Stmt::Printf { fmt, args } => {
                    let mut vals = std::mem::take(&mut self.args);
                    vals.clear();
                    for a in args {
                        match self.eval(p, a, ctx) {
                            Ok(v) => vals.push(v),
                            Err(e) => {
                                self.args = vals;
                                return Err(e);
                            }
                        }
                    }
                    self.printer.printf(&p.ir.formats[*fmt as usize], &vals);
                    self.args = vals;
                }
                Stmt::Exit => return Err(RunError::Exit),
                Stmt::Set(slot, e) => {
                    let v = self.eval(p, e, ctx)?;
                    self.slots[*slot as usize] = v;
                }
                Stmt::If { cond, then, els } => {
                    let c = self.eval(p, cond, ctx)?.as_int() != 0;
                    self.exec(p, if c { then } else { els }, ctx)?;
                }
                Stmt::Unroll(n, body) => {
                    for _ in 0..*n {
                        self.exec(p, body, ctx)?;
                    }
                }
                Stmt::While { cond, body } => {
                    // Bounded by the step budget: every iteration costs steps.
                    while self.eval(p, cond, ctx)?.as_int() != 0 {
                        match self.exec(p, body, ctx) {
                            Ok(()) | Err(RunError::Continue) => {}
                            Err(RunError::Break) => break,
                            Err(e) => return Err(e),
                        }
                    }
                }
                Stmt::Break => return Err(RunError::Break),
                Stmt::Continue => return Err(RunError::Continue),
                _ => self.exec_rare(p, s, ctx)?,
            }
        }
        Ok(())
    }

    /// Statements that are not on the per-hit fast path, kept out of
    /// [`Runtime::exec`] for the same reason as [`Runtime::eval_rare`].
    #[inline(never)]
    fn exec_rare(
        &mut self,
        p: &Program,
        s: &Stmt,
        ctx: &mut dyn ProbeContext,
    ) -> Result<(), RunError> {
        match s {
            Stmt::Print { map, top, div } => {
                let top = match top {
                    Some(e) => self.eval(p, e, ctx)?.as_int(),
                    None => 0,
                };
                let div = match div {
                    Some(e) => self.eval(p, e, ctx)?.as_int(),
                    None => 1,
                };
                self.print_map(*map as usize, top, div);
            }
            Stmt::Clear(m) => self.clear(*m as usize, None),
            Stmt::Zero(m) => {
                for c in self.maps[*m as usize].values_mut() {
                    match c {
                        Cell::Num { a, b } => (*a, *b) = (0, 0),
                        Cell::Hist(b) => b.fill(0),
                        Cell::Val(v) => *v = zero_like(v),
                    }
                }
            }
            Stmt::Delete { map, key } => {
                let k = self.key(p, key, ctx)?;
                self.clear(*map as usize, Some(k));
            }
            Stmt::Time(f) => {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0);
                let s = crate::format::strftime(&p.ir.strings[*f as usize], now);
                self.printer.time(&s);
            }
            Stmt::PrintValue(e, ty) => {
                let v = self.eval(p, e, ctx)?;
                self.printer.value(&v, *ty);
            }
            Stmt::TraceProbe => ctx.trace(Traced::Probe)?,
            Stmt::Snapshot => ctx.trace(Traced::Snapshot)?,
            Stmt::Trace { site, fields } => {
                let mut out = Vec::with_capacity(fields.len());
                for (name, ty, e) in fields {
                    let v = match (self.eval(p, e, ctx)?, ty) {
                        (Value::Str(s), _) => TracedValue::Str(s),
                        (Value::Buf(b), _) => TracedValue::Bytes(b),
                        (v, TraceType::Signed) => TracedValue::I64(v.as_int() as i64),
                        (v, _) => TracedValue::U64(v.as_int()),
                    };
                    out.push((name.clone(), v));
                }
                ctx.trace(Traced::Fields {
                    site: *site,
                    fields: out,
                })?;
            }
            Stmt::SelfSet(slot, e) => {
                let v = self.eval(p, e, ctx)?;
                self.vcpu_vars(ctx)[*slot as usize] = Some(v);
            }
            Stmt::SelfDelete(slot) => self.vcpu_vars(ctx)[*slot as usize] = None,
            // The rest is run by `exec` itself and never sent here.
            Stmt::Agg { .. }
            | Stmt::MapSet { .. }
            | Stmt::MapUpdate { .. }
            | Stmt::Printf { .. }
            | Stmt::Exit
            | Stmt::Set(..)
            | Stmt::If { .. }
            | Stmt::Unroll(..)
            | Stmt::While { .. }
            | Stmt::Break
            | Stmt::Continue => self.exec(p, std::slice::from_ref(s), ctx)?,
        }
        Ok(())
    }

    /// `clear(@m)` / `delete(@m[k])`. Scalar count maps are zeroed rather
    /// than removed, as bpftrace 0.17 prints them as `@c: 0` afterwards.
    fn clear(&mut self, map: usize, key: Option<Key>) {
        let decl = &self.program.ir.maps[map];
        let m = &mut self.maps[map];
        if decl.kind == AggKind::Count && decl.keys.is_empty() {
            m.insert(Key::None, Cell::Num { a: 0, b: 0 });
            return;
        }
        match key {
            Some(k) => {
                m.remove(&k);
            }
            None => m.clear(),
        }
    }

    fn key(
        &mut self,
        p: &Program,
        k: &KeyExpr,
        ctx: &mut dyn ProbeContext,
    ) -> Result<Key, RunError> {
        Ok(match k {
            KeyExpr::None => Key::None,
            KeyExpr::Single(e) => match self.eval(p, e, ctx)? {
                Value::Int(v) => Key::Int(v),
                Value::Str(s) => Key::Str(s),
                v => single_part_key(v),
            },
            KeyExpr::Multi(es) => {
                let mut parts = Vec::with_capacity(es.len());
                for e in es {
                    parts.push(KeyPart::from(self.eval(p, e, ctx)?));
                }
                Key::Multi(parts.into_boxed_slice())
            }
        })
    }

    /// Reads up to `len` bytes at `addr`; if the whole range is unreadable,
    /// retries up to the end of the first page (a short string may sit
    /// just before an unmapped page).
    fn read_bytes(read: &mut ReadFn<'_>, addr: u64, len: u64) -> Result<Vec<u8>, ContextError> {
        let mut buf = vec![0u8; len as usize];
        match read(addr, &mut buf) {
            Ok(()) => Ok(buf),
            Err(e) => {
                let to_page = 4096 - (addr % 4096);
                if to_page >= len {
                    return Err(e);
                }
                buf.truncate(to_page as usize);
                read(addr, &mut buf)?;
                Ok(buf)
            }
        }
    }

    /// `str()`'s result from at most `max` bytes read with `read`.
    fn read_str(read: &mut ReadFn<'_>, addr: u64, max: u64) -> Result<Value, ContextError> {
        let b = Self::read_bytes(read, addr, max)?;
        let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
        Ok(Value::Str(Arc::from(String::from_utf8_lossy(&b[..end]))))
    }

    fn eval(
        &mut self,
        p: &Program,
        e: &Expr,
        ctx: &mut dyn ProbeContext,
    ) -> Result<Value, RunError> {
        self.step()?;
        Ok(match e {
            Expr::Const(v) => Value::Int(*v),
            Expr::Str(i) => Value::Str(Arc::clone(&p.ir.strings[*i as usize])),
            Expr::Scratch(i) => self.slots[*i as usize].clone(),
            Expr::Builtin(b) => match b {
                Builtin::Arg(n) => Value::Int(ctx.arg(*n)?),
                Builtin::Retval => Value::Int(ctx.retval()?),
                Builtin::Vcpu => Value::Int(ctx.vcpu() as u64),
                Builtin::Nsecs => Value::Int(ctx.nsecs()),
                Builtin::Elapsed => {
                    Value::Int(ctx.nsecs().saturating_sub(self.start_ns.unwrap_or(0)))
                }
                Builtin::Rand => {
                    // xorshift64: cheap, and rand needs no quality.
                    let mut x = self.rng.max(1);
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    self.rng = x;
                    Value::Int(x >> 32)
                }
                Builtin::Func => Value::Str(Arc::from(ctx.func())),
                Builtin::Probe => Value::Str(Arc::from(ctx.probe())),
                Builtin::Comm => Value::Str(Arc::from(ctx.comm()?.as_str())),
                Builtin::Pid => Value::Int(ctx.pid()?),
                Builtin::Tid => Value::Int(ctx.tid()?),
                Builtin::Cgroup => Value::Int(ctx.cgroup()?),
                Builtin::Curtask => Value::Int(ctx.curtask()?),
                Builtin::Guest => Value::Str(Arc::from(ctx.guest())),
            },
            Expr::MapRead { map, key } => {
                let k = self.key(p, key, ctx)?;
                self.read(*map as usize, &k)
            }
            Expr::Unary(op, a) => {
                let v = self.eval(p, a, ctx)?.as_int();
                Value::Int(match op {
                    Op1::Neg => v.wrapping_neg(),
                    Op1::Not => (v == 0) as u64,
                    Op1::BitNot => !v,
                })
            }
            Expr::LogAnd(a, b) => Value::Int(
                (self.eval(p, a, ctx)?.as_int() != 0 && self.eval(p, b, ctx)?.as_int() != 0) as u64,
            ),
            Expr::LogOr(a, b) => Value::Int(
                (self.eval(p, a, ctx)?.as_int() != 0 || self.eval(p, b, ctx)?.as_int() != 0) as u64,
            ),
            Expr::Ternary(c, a, b) => {
                if self.eval(p, c, ctx)?.as_int() != 0 {
                    self.eval(p, a, ctx)?
                } else {
                    self.eval(p, b, ctx)?
                }
            }
            Expr::Binary(op, a, b) => {
                let x = self.eval(p, a, ctx)?;
                let y = self.eval(p, b, ctx)?;
                if let (Op2::StrEq | Op2::StrNe, Value::Str(s), Value::Str(t)) = (op, &x, &y) {
                    return Ok(Value::Int(((s == t) == (*op == Op2::StrEq)) as u64));
                }
                Value::Int(binop(*op, x.as_int(), y.as_int())?)
            }
            _ => return self.eval_rare(p, e, ctx),
        })
    }

    /// The less common expressions, kept out of [`Runtime::eval`] so the
    /// hot recursive function stays small (its frame size is paid at every
    /// node). The step was already counted by `eval`.
    #[inline(never)]
    fn eval_rare(
        &mut self,
        p: &Program,
        e: &Expr,
        ctx: &mut dyn ProbeContext,
    ) -> Result<Value, RunError> {
        Ok(match e {
            Expr::Len(m) => Value::Int(self.maps[*m as usize].len() as u64),
            Expr::SelfVar(slot) => match &self.vcpu_vars(ctx)[*slot as usize] {
                Some(v) => v.clone(),
                // Unset reads as 0 or "" (DTrace's thread-locals do too).
                None => zero_value(p.ir.self_vars[*slot as usize].1, &p.ir.tuples),
            },
            Expr::Tuple(es) => {
                let mut v = Vec::with_capacity(es.len());
                for e in es {
                    v.push(self.eval(p, e, ctx)?);
                }
                Value::Tuple(Arc::from(v))
            }
            Expr::Kstack(limit) => {
                let frames = ctx.kstack(*limit as usize)?;
                let lines: Vec<Arc<str>> = frames
                    .iter()
                    .take(*limit as usize)
                    .map(|&a| match ctx.ksym(a) {
                        Some((s, off)) => Arc::from(format!("{s}+{off}")),
                        None => Arc::from(format!("{a:#x}")),
                    })
                    .collect();
                Value::Stack(Arc::from(lines))
            }
            Expr::Ustack(limit) => {
                let frames = ctx.ustack(*limit as usize)?;
                // No user symbols: addresses as bpftrace prints frames it
                // cannot resolve.
                let lines: Vec<Arc<str>> = frames
                    .iter()
                    .take(*limit as usize)
                    .map(|&a| Arc::from(format!("{a:#x}")))
                    .collect();
                Value::Stack(Arc::from(lines))
            }
            Expr::Vtop(cr3, va) => {
                let cr3 = self.eval(p, cr3, ctx)?.as_int();
                let va = self.eval(p, va, ctx)?.as_int();
                Value::Int(ctx.vtop(cr3, va)?)
            }
            Expr::ReadAs { task, addr, kind } => {
                let task = self.eval(p, task, ctx)?.as_int();
                let addr = self.eval(p, addr, ctx)?.as_int();
                match kind {
                    ReadAsKind::Str(len) => {
                        let max = match len {
                            Some(l) => self.eval(p, l, ctx)?.as_int().min(STR_MAX - 1),
                            None => STR_MAX - 1,
                        };
                        Self::read_str(&mut |a, b| ctx.read_task_memory(task, a, b), addr, max)?
                    }
                    ReadAsKind::Buf(len) => {
                        let len = self.eval(p, len, ctx)?.as_int().min(BUF_MAX);
                        let mut b = vec![0u8; len as usize];
                        ctx.read_task_memory(task, addr, &mut b)?;
                        Value::Buf(Arc::from(b))
                    }
                    ReadAsKind::Uint(n) => {
                        let mut b = [0u8; 8];
                        ctx.read_task_memory(task, addr, &mut b[..*n as usize])?;
                        Value::Int(u64::from_le_bytes(b))
                    }
                }
            }
            Expr::Strftime(f, ts) => {
                let ns = self.eval(p, ts, ctx)?.as_int();
                let (ns0, wall0) = self.wall_origin.unwrap_or((ns, 0));
                let wall = wall0.wrapping_add(ns.wrapping_sub(ns0)) / 1_000_000_000;
                Value::Str(Arc::from(crate::format::strftime(
                    &p.ir.strings[*f as usize],
                    wall,
                )))
            }
            Expr::Field(t, n) => match self.eval(p, t, ctx)? {
                Value::Tuple(v) => v.get(*n as usize).cloned().unwrap_or(Value::Int(0)),
                _ => Value::Int(0),
            },
            Expr::HasKey { map, key } => {
                let k = self.key(p, key, ctx)?;
                Value::Int(self.maps[*map as usize].contains_key(&k) as u64)
            }
            Expr::Cast { size, signed, e } => {
                let v = self.eval(p, e, ctx)?.as_int();
                Value::Int(extend(v, *size, *signed))
            }
            Expr::Deref { size, signed, ptr } => {
                let addr = self.eval(p, ptr, ctx)?.as_int();
                let mut b = [0u8; 8];
                ctx.read_memory(addr, &mut b[..*size as usize])?;
                Value::Int(extend(u64::from_le_bytes(b), *size, *signed))
            }
            Expr::StrRead { ptr, len } => {
                let addr = self.eval(p, ptr, ctx)?.as_int();
                // bpftrace's strings hold STR_MAX bytes including the NUL.
                let max = match len {
                    Some(l) => self.eval(p, l, ctx)?.as_int().min(STR_MAX - 1),
                    None => STR_MAX - 1,
                };
                Self::read_str(&mut |a, b| ctx.read_memory(a, b), addr, max)?
            }
            Expr::BufRead { ptr, len } => {
                let addr = self.eval(p, ptr, ctx)?.as_int();
                let len = self.eval(p, len, ctx)?.as_int().min(BUF_MAX);
                let mut b = vec![0u8; len as usize];
                ctx.read_memory(addr, &mut b)?;
                Value::Buf(Arc::from(b))
            }
            Expr::Ksym(a) => {
                let addr = self.eval(p, a, ctx)?.as_int();
                Value::Str(Arc::from(match ctx.ksym(addr) {
                    Some((s, _)) => s,
                    // As bpftrace 0.17 prints unresolvable addresses.
                    None if addr == 0 => "0".to_string(),
                    None => format!("{addr:#x}"),
                }))
            }
            Expr::CgroupPath { id, unified } => {
                let id = self.eval(p, id, ctx)?.as_int();
                // As bpftrace prints it: `hierarchy:path` for each
                // hierarchy where the id has a path.
                let path = match unified {
                    true => ctx.cgroup_path(id)?,
                    false => None,
                };
                Value::Str(Arc::from(
                    path.map_or_else(String::new, |p| format!("unified:{p}")),
                ))
            }
            Expr::Kaddr(i) => {
                let name = &p.ir.strings[*i as usize];
                match ctx.kaddr(name) {
                    Some(a) => Value::Int(a),
                    None => {
                        return Err(RunError::Msg(Box::new(format!(
                            "unknown kernel symbol '{name}'"
                        ))));
                    }
                }
            }
            Expr::Reg(i) => Value::Int(ctx.register(&p.ir.strings[*i as usize])?),
            Expr::ProbeArg(i) => ctx.probe_arg(&p.ir.strings[*i as usize])?,
            Expr::Strncmp(a, b, n) => {
                let a = self.eval(p, a, ctx)?;
                let b = self.eval(p, b, ctx)?;
                let n = self.eval(p, n, ctx)?.as_int();
                let (Value::Str(a), Value::Str(b)) = (a, b) else {
                    return Ok(Value::Int(1));
                };
                // bpftrace: 0 if the first n bytes (up to a NUL) match, else 1.
                let n = n.min(4096) as usize;
                let pad = |s: &[u8]| -> Vec<u8> {
                    s.iter()
                        .copied()
                        .chain(std::iter::repeat(0))
                        .take(n)
                        .collect()
                };
                Value::Int((pad(a.as_bytes()) != pad(b.as_bytes())) as u64)
            }
            Expr::Ntop(af, a) => {
                let af = match af {
                    Some(f) => Some(self.eval(p, f, ctx)?.as_int()),
                    None => None,
                };
                let v = self.eval(p, a, ctx)?;
                Value::Str(Arc::from(ntop(af, &v)?))
            }
            Expr::Const(_)
            | Expr::Str(_)
            | Expr::Scratch(_)
            | Expr::Builtin(_)
            | Expr::MapRead { .. }
            | Expr::Unary(..)
            | Expr::LogAnd(..)
            | Expr::LogOr(..)
            | Expr::Ternary(..)
            | Expr::Binary(..) => return self.eval(p, e, ctx),
        })
    }
}

#[inline]
fn binop(op: Op2, x: u64, y: u64) -> Result<u64, RunError> {
    let (sx, sy) = (x as i64, y as i64);
    Ok(match op {
        Op2::Add => x.wrapping_add(y),
        Op2::Sub => x.wrapping_sub(y),
        Op2::Mul => x.wrapping_mul(y),
        Op2::Div | Op2::Mod if y == 0 => {
            return Err(RunError::Msg(Box::new("division by zero".into())));
        }
        Op2::Div => x / y,
        Op2::Mod => x % y,
        Op2::And => x & y,
        Op2::Or => x | y,
        Op2::Xor => x ^ y,
        Op2::Shl => x.wrapping_shl(y as u32 & 63),
        Op2::LShr => x.wrapping_shr(y as u32 & 63),
        Op2::AShr => (sx.wrapping_shr(y as u32 & 63)) as u64,
        Op2::Eq => (x == y) as u64,
        Op2::Ne => (x != y) as u64,
        Op2::ULt => (x < y) as u64,
        Op2::ULe => (x <= y) as u64,
        Op2::UGt => (x > y) as u64,
        Op2::UGe => (x >= y) as u64,
        Op2::SLt => (sx < sy) as u64,
        Op2::SLe => (sx <= sy) as u64,
        Op2::SGt => (sx > sy) as u64,
        Op2::SGe => (sx >= sy) as u64,
        Op2::StrEq | Op2::StrNe => 0,
    })
}

/// The value a missing map entry of type `ty` reads as.
fn zero_value(ty: crate::ast::Type, tuples: &[Vec<crate::ast::Type>]) -> Value {
    use crate::ast::Type;
    match ty {
        Type::Str => Value::Str(Arc::from("")),
        Type::Tuple(i) => Value::Tuple(
            tuples
                .get(i as usize)
                .map(|ts| ts.iter().map(|t| zero_value(*t, tuples)).collect())
                .unwrap_or_default(),
        ),
        _ => Value::Int(0),
    }
}

/// `zero()` of a string or tuple value: same shape, zeros and "".
fn zero_like(v: &Value) -> Value {
    match v {
        Value::Int(_) => Value::Int(0),
        Value::Str(_) => Value::Str(Arc::from("")),
        Value::Buf(b) => Value::Buf(Arc::from(vec![0u8; b.len()])),
        Value::Tuple(t) => Value::Tuple(t.iter().map(zero_like).collect()),
        Value::Stack(_) => Value::Stack(Arc::from(Vec::new())),
    }
}

/// Truncates to `size` bytes, then sign- or zero-extends to 64 bits.
fn extend(v: u64, size: u8, signed: bool) -> u64 {
    if size >= 8 {
        return v;
    }
    let bits = size as u32 * 8;
    let v = v & ((1u64 << bits) - 1);
    if signed && v >> (bits - 1) & 1 == 1 {
        v | (!0u64 << bits)
    } else {
        v
    }
}

/// avg/stats average (0 when empty), signed if the values are.
pub(crate) fn avg_of(sum: u64, count: u64, signed: bool) -> u64 {
    avg(sum, count, signed)
}

fn avg(sum: u64, count: u64, signed: bool) -> u64 {
    match count {
        0 => 0,
        c if signed => (sum as i64).wrapping_div(c as i64) as u64,
        c => sum / c,
    }
}

/// bpftrace 0.17's hist bucket: 0 for negatives, 1 for 0, else 2 + log2
/// computed by halving steps of 16, 8, 4, 2, 1 bits (so it stops at 2^31).
pub(crate) fn hist_index(v: u64) -> usize {
    let n = v as i64;
    if n < 0 {
        return 0;
    }
    if n == 0 {
        return 1;
    }
    let (mut n, mut r) = (v, 0);
    for i in [16, 8, 4, 2, 1] {
        if n >= 1 << i {
            n >>= i;
            r += i;
        }
    }
    r + 2
}

/// lhist bucket: 0 below min, last at or above max (signed compare).
pub(crate) fn lhist_index(v: u64, l: LhistParams) -> usize {
    let (v, min, max) = (v as i64, l.min as i64, l.max as i64);
    if v < min {
        0
    } else if v >= max {
        l.buckets() - 1
    } else {
        (((v - min) as u64 / l.step) as usize + 1).min(l.buckets() - 1)
    }
}

/// `ntop([af,] addr)`: IPv4 from an integer (bytes in memory order, as
/// bpftrace) or from a 4-byte buffer; IPv6 from a 16-byte buffer.
fn ntop(af: Option<u64>, v: &Value) -> Result<String, RunError> {
    let bytes: Vec<u8> = match v {
        Value::Int(i) => (*i as u32).to_le_bytes().to_vec(),
        Value::Buf(b) => b.to_vec(),
        Value::Str(_) | Value::Tuple(_) | Value::Stack(_) => Vec::new(),
    };
    match (af, bytes.len()) {
        (None | Some(2), 4) => {
            let a: [u8; 4] = bytes[..4].try_into().expect("4 bytes");
            Ok(std::net::Ipv4Addr::from(a).to_string())
        }
        (None | Some(10), 16) => {
            let a: [u8; 16] = bytes[..16].try_into().expect("16 bytes");
            Ok(std::net::Ipv6Addr::from(a).to_string())
        }
        (af, n) => Err(RunError::Msg(Box::new(format!(
            "ntop: unsupported address (family {}, {n} bytes)",
            af.map_or("none".to_string(), |f| f.to_string())
        )))),
    }
}

/// A one-part key of a kind without its own `Key` variant (a stack); out
/// of line so the common integer/string keys stay cheap.
#[cold]
#[inline(never)]
fn single_part_key(v: Value) -> Key {
    Key::Multi(Box::new([KeyPart::from(v)]))
}

/// Builds a map key from evaluated key values (same shape as the interpreter).
pub(crate) fn make_key(mut vals: Vec<Value>) -> Key {
    match vals.len() {
        0 => Key::None,
        1 => match vals.pop().expect("len 1") {
            Value::Int(v) => Key::Int(v),
            Value::Str(s) => Key::Str(s),
            v @ (Value::Buf(_) | Value::Tuple(_) | Value::Stack(_)) => {
                Key::Multi(Box::new([KeyPart::from(v)]))
            }
        },
        _ => Key::Multi(vals.into_iter().map(KeyPart::from).collect()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hist_buckets_match_bpftrace_log2() {
        let cases = [
            (-5i64 as u64, 0),
            (0, 1),
            (1, 2),
            (2, 3),
            (3, 3),
            (4, 4),
            (1023, 11),
            (1024, 12),
            (1 << 31, 33),
            (1 << 40, 33),
            (i64::MAX as u64, 33),
        ];
        for (v, want) in cases {
            assert_eq!(hist_index(v), want, "hist_index({v})");
        }
    }

    #[test]
    fn lhist_buckets() {
        let l = LhistParams {
            min: 0,
            max: 10,
            step: 3,
        };
        assert_eq!(l.buckets(), 5);
        let got: Vec<usize> = [-1i64, 0, 2, 3, 8, 9, 10, 11]
            .iter()
            .map(|&v| lhist_index(v as u64, l))
            .collect();
        assert_eq!(got, [0, 1, 1, 2, 3, 4, 4, 4]);
    }

    #[test]
    fn casts_extend() {
        assert_eq!(extend(0x1ff, 1, false), 255);
        assert_eq!(extend(0xff, 1, true), u64::MAX);
        assert_eq!(extend(u64::MAX, 4, true), u64::MAX);
        assert_eq!(extend(u64::MAX, 2, false), 65535);
    }

    #[test]
    fn ntop_forms() {
        let s = |af, v| ntop(af, &v).ok();
        assert_eq!(
            s(None, Value::Int(0x0100007f)).as_deref(),
            Some("127.0.0.1")
        );
        assert_eq!(
            s(Some(2), Value::Int(0x0100007f)).as_deref(),
            Some("127.0.0.1")
        );
        let mut v6 = [0u8; 16];
        v6[15] = 1;
        assert_eq!(
            s(Some(10), Value::Buf(Arc::from(v6.to_vec()))).as_deref(),
            Some("::1")
        );
        assert!(s(Some(10), Value::Int(1)).is_none());
    }
}
