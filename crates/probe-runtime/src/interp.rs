//! The interpreter: walks the resolved IR of one block per probe hit.
//!
//! Long file: the evaluator is one `match` per IR node kind (expressions,
//! statements, builtins) over the same evaluation state; splitting it would
//! spread one exhaustive match over files.
//!
//! Integer semantics: every integer is a 64-bit two's complement pattern;
//! `+ - * << ~` and unary `-` wrap. Comparisons are signed only when the
//! static types say so (literals are signed; `argN`, `nsecs`, `vcpu`,
//! `retval` are unsigned; mixing makes the result unsigned, as in C); `>>`
//! is always logical, as in bpftrace 0.17.
//! `/` and `%` are unsigned like bpftrace's BPF code; division by zero is a
//! runtime error.
//!
//! A failed guest memory read ([`ContextError::Memory`]: `*p`, a kernel
//! member, `str()`, `buf()`, `*_as()`) is counted per (probe, message) and
//! yields zero (0, "" or zeroed bytes), and the handler goes on, as
//! bpftrace's `probe_read` does. Any other runtime error (division by
//! zero, a register or capability the context lacks, no current task, the
//! step budget running out) aborts that one handler run and is counted the
//! same way; nothing panics.
//!
//! Guest memory is only read through [`ProbeContext::read_memory`], and
//! every read is bounded (`str()` by the program's BPFTRACE_STRLEN, `buf()` by [`BUF_MAX`]).
//! Maps are reached through a [`MapBackend`] and output goes out as
//! [`OutputEvent`]s: the interpreter holds neither, so the same code runs
//! over one store in vmprobe or over per-vCPU shards inside QEMU.

use crate::context::{ContextError, Flow, ProbeContext, Traced, TracedValue};
use crate::output::{MapOp, Origin, Output, OutputEvent};
use crate::store::{Cell, MapBackend, zero_value};
use crate::thread_vars::{ThreadVars, thread_key};
use probe_lang::check::{BUF_MAX, TraceType};
use probe_lang::ir::{Block, Builtin, Expr, KeyExpr, Op1, Op2, ReadAsKind, Stmt};
use probe_lang::value::{Key, KeyPart, Value};
use probe_lang::{BlockId, Executable};
use rustc_hash::FxHashMap;
use std::sync::{Arc, Mutex, MutexGuard};

/// Per-run step budget (IR nodes evaluated) unless changed with
/// [`Interpreter::set_step_budget`].
pub const DEFAULT_STEP_BUDGET: u64 = 100_000;

/// Per-run wall-clock budget unless changed with
/// [`Interpreter::set_time_budget`]: a handler whose guest reads are slow
/// (through a stub, `kstack(127)` in a loop) must not hold a stopped guest
/// for seconds within its step budget.
pub const DEFAULT_TIME_BUDGET: std::time::Duration = std::time::Duration::from_millis(500);

/// The clock is read every this many steps (reading it at every step would
/// cost more than a typical handler).
const STEPS_PER_CLOCK_READ: u64 = 32;

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

/// A bounded memory read: the current address space or another task's.
type ReadFn<'a> = dyn FnMut(u64, &mut [u8]) -> Result<(), ContextError> + 'a;

/// What one handler run works with: the place it fired, the maps, and
/// where its output goes.
struct Env<'a> {
    ctx: &'a mut dyn ProbeContext,
    maps: &'a mut dyn MapBackend,
    out: &'a mut dyn Output,
}

impl Env<'_> {
    fn emit(&mut self, event: OutputEvent) {
        let ts = self.ctx.nsecs();
        let origin = Origin {
            guest: self.ctx.guest(),
            vcpu: Some(self.ctx.vcpu()),
            probe: Some(self.ctx.probe()),
        };
        self.out.emit_from(ts, &origin, event);
    }
}

/// The state of one thread of execution: scratch variables, the step
/// budget, error counts, the `self->` table and the clocks of `elapsed`
/// and `strftime`. Maps are not here: each run is given its
/// [`MapBackend`].
pub struct Interpreter {
    slots: Vec<Value>,
    steps: u64,
    budget: u64,
    time_budget: std::time::Duration,
    /// When the current run started.
    started: std::time::Instant,
    errors: FxHashMap<(String, String), u64>,
    args: Vec<Value>,
    /// nsecs of the first run, the origin of `elapsed`.
    start_ns: Option<u64>,
    /// (nsecs, Unix time in ns) at the first run, to turn `nsecs`
    /// timestamps into wall-clock time for `strftime()`.
    wall_origin: Option<(u64, u64)>,
    /// xorshift64 state for `rand`.
    rng: u64,
    /// `self->` values of every guest thread; shared by the interpreters
    /// of one program (each vCPU's inside QEMU).
    thread_vars: Arc<Mutex<ThreadVars>>,
    /// The key of this run's guest thread, once read (a `tid` read per
    /// run, and none in a run that uses no `self->`).
    thread: Option<u64>,
}

impl Default for Interpreter {
    fn default() -> Self {
        Interpreter::new()
    }
}

impl Interpreter {
    pub fn new() -> Interpreter {
        Interpreter {
            slots: Vec::new(),
            steps: 0,
            budget: DEFAULT_STEP_BUDGET,
            time_budget: DEFAULT_TIME_BUDGET,
            started: std::time::Instant::now(),
            errors: FxHashMap::default(),
            args: Vec::new(),
            start_ns: None,
            wall_origin: None,
            rng: 0,
            thread_vars: Arc::default(),
            thread: None,
        }
    }

    /// Makes this interpreter keep `self->` values in `vars`, shared with
    /// the others of the same program (each vCPU's inside QEMU).
    pub fn share_thread_vars(&mut self, vars: Arc<Mutex<ThreadVars>>) {
        self.thread_vars = vars;
    }

    /// The `self->` table (for its limit and for tests).
    pub fn thread_vars(&self) -> &Arc<Mutex<ThreadVars>> {
        &self.thread_vars
    }

    pub fn set_step_budget(&mut self, steps: u64) {
        self.budget = steps;
    }

    pub fn set_time_budget(&mut self, budget: std::time::Duration) {
        self.time_budget = budget;
    }

    /// The origin of `elapsed`, once set or taken from the first run.
    pub fn start_nsecs(&self) -> Option<u64> {
        self.start_ns
    }

    /// Sets the origin of `elapsed` (by default the first run's `nsecs`).
    pub fn set_start_nsecs(&mut self, ns: u64) {
        self.start_ns = Some(ns);
    }

    /// Evaluates the block's predicate, then its body. Errors are counted
    /// and turn into `Flow::Continue`.
    pub fn run(
        &mut self,
        exec: &Executable,
        block: BlockId,
        ctx: &mut dyn ProbeContext,
        maps: &mut dyn MapBackend,
        out: &mut dyn Output,
    ) -> Flow {
        let Some(b) = exec.ir.blocks.get(block.0 as usize) else {
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
        self.thread = None;
        self.started = std::time::Instant::now();
        self.slots.clear();
        self.slots.resize(b.slots as usize, Value::Int(0));
        let mut env = Env { ctx, maps, out };
        match self.run_block(exec, b, &mut env) {
            Ok(()) | Err(RunError::Break | RunError::Continue) => Flow::Continue,
            Err(RunError::Exit) => Flow::Exit,
            Err(RunError::Msg(m)) => {
                self.count_error(env.ctx.probe(), *m);
                Flow::Continue
            }
            Err(RunError::Ctx(e)) => {
                self.count_error(env.ctx.probe(), e.to_string());
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

    /// Adds errors counted elsewhere (another shard of the same program).
    pub fn add_errors(&mut self, errors: &[(String, String, u64)]) {
        for (p, e, n) in errors {
            *self.errors.entry((p.clone(), e.clone())).or_insert(0) += n;
        }
    }

    /// Like bpftrace's BPF maps, a map holds a bounded number of entries
    /// and further new keys are dropped (counted as an error, the handler
    /// goes on).
    #[cold]
    fn map_full(&mut self, p: &Executable, map: u32, env: &mut Env<'_>) {
        let msg = format!(
            "map @{} is full ({} entries); new keys are dropped",
            p.ir.maps[map as usize].name,
            env.maps.limit()
        );
        self.count_error(env.ctx.probe(), msg);
    }

    /// The key of the guest thread this run fired in (read once a run).
    fn thread(&mut self, env: &mut Env<'_>) -> Result<u64, RunError> {
        if let Some(k) = self.thread {
            return Ok(k);
        }
        let tid = env.ctx.tid().map_err(|e| {
            RunError::Msg(Box::new(format!(
                "self-> variables belong to the guest thread, and its tid is unknown here: {e}"
            )))
        })?;
        let k = thread_key(tid, env.ctx.vcpu());
        self.thread = Some(k);
        Ok(k)
    }

    fn vars(&self) -> MutexGuard<'_, ThreadVars> {
        self.thread_vars.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `self->x` as an expression: unset reads as 0 or "" (as DTrace's).
    fn self_get(
        &mut self,
        p: &Executable,
        slot: u16,
        env: &mut Env<'_>,
    ) -> Result<Value, RunError> {
        let t = self.thread(env)?;
        let v = self.vars().get(env.ctx.guest(), t, slot);
        Ok(v.unwrap_or_else(|| zero_value(p.ir.self_vars[slot as usize].1, &p.ir.tuples)))
    }

    /// `self->x = v`; a zero (0 or "") clears it, as in DTrace, so a
    /// thread holds nothing once its variables are back to zero.
    fn self_set(
        &mut self,
        p: &Executable,
        slot: u16,
        v: Option<Value>,
        env: &mut Env<'_>,
    ) -> Result<(), RunError> {
        let v = v.filter(|v| match v {
            Value::Int(i) => *i != 0,
            Value::Str(s) => !s.is_empty(),
            _ => true,
        });
        let t = self.thread(env)?;
        let n = p.ir.self_vars.len();
        let (stored, limit) = {
            let mut vars = self.vars();
            (vars.set(env.ctx.guest(), t, slot, n, v), vars.limit())
        };
        if !stored {
            self.count_error(
                env.ctx.probe(),
                format!(
                    "self-> variables are held for {limit} threads (the limit); a new thread's value is dropped"
                ),
            );
        }
        Ok(())
    }

    /// bpftrace's `probe_read` semantics: a read the guest faulted on is
    /// counted and gives `zero()` (zeroes, or "" for `str()`), and the
    /// handler goes on; any other failure (the stub gone, no such
    /// capability) ends this handler run.
    fn on_fault<T>(
        &mut self,
        ctx: &dyn ProbeContext,
        r: Result<T, ContextError>,
        zero: impl FnOnce() -> T,
    ) -> Result<T, RunError> {
        match r {
            Ok(v) => Ok(v),
            Err(e @ ContextError::Memory { .. }) => {
                self.count_error(ctx.probe(), e.to_string());
                Ok(zero())
            }
            Err(e) => Err(e.into()),
        }
    }

    fn step(&mut self) -> Result<(), RunError> {
        self.steps += 1;
        if self.steps > self.budget {
            return Err(RunError::Msg(Box::new(format!(
                "handler exceeded its step budget of {} operations",
                self.budget
            ))));
        }
        if self.steps.is_multiple_of(STEPS_PER_CLOCK_READ)
            && self.started.elapsed() > self.time_budget
        {
            return Err(RunError::Msg(Box::new(format!(
                "handler exceeded its time budget of {} ms (the hit was abandoned)",
                self.time_budget.as_millis()
            ))));
        }
        Ok(())
    }

    fn run_block(&mut self, p: &Executable, b: &Block, env: &mut Env<'_>) -> Result<(), RunError> {
        if let Some(pred) = &b.predicate
            && self.eval(p, pred, env)?.as_int() == 0
        {
            return Ok(());
        }
        self.exec(p, &b.body, env)
    }

    fn exec(&mut self, p: &Executable, stmts: &[Stmt], env: &mut Env<'_>) -> Result<(), RunError> {
        for s in stmts {
            self.step()?;
            match s {
                Stmt::Agg { map, key, op, arg } => {
                    let key = self.key(p, key, env)?;
                    let v = match arg {
                        Some(a) => self.eval(p, a, env)?.as_int(),
                        None => 0,
                    };
                    if !env.maps.agg(*map, key, *op, v) {
                        self.map_full(p, *map, env);
                    }
                }
                Stmt::MapSet { map, key, value } => {
                    let key = self.key(p, key, env)?;
                    let cell = match self.eval(p, value, env)? {
                        Value::Int(a) => Cell::Num { a, b: 0 },
                        v => Cell::Val(v),
                    };
                    if !env.maps.set(*map, key, cell) {
                        self.map_full(p, *map, env);
                    }
                }
                Stmt::MapUpdate {
                    map,
                    key,
                    op,
                    value,
                } => {
                    let key = self.key(p, key, env)?;
                    let old = env.maps.read(*map, &key).as_int();
                    let v = self.eval(p, value, env)?.as_int();
                    let a = binop(*op, old, v)?;
                    if !env.maps.set(*map, key, Cell::Num { a, b: 0 }) {
                        self.map_full(p, *map, env);
                    }
                }
                Stmt::Printf { fmt, args } => {
                    let mut vals = std::mem::take(&mut self.args);
                    vals.clear();
                    for a in args {
                        match self.eval(p, a, env) {
                            Ok(v) => vals.push(v),
                            Err(e) => {
                                self.args = vals;
                                return Err(e);
                            }
                        }
                    }
                    env.emit(OutputEvent::Printf {
                        fmt: *fmt,
                        args: vals.clone(),
                    });
                    self.args = vals;
                }
                Stmt::Exit => return Err(RunError::Exit),
                Stmt::Set(slot, e) => {
                    let v = self.eval(p, e, env)?;
                    self.slots[*slot as usize] = v;
                }
                Stmt::If { cond, then, els } => {
                    let c = self.eval(p, cond, env)?.as_int() != 0;
                    self.exec(p, if c { then } else { els }, env)?;
                }
                Stmt::Unroll(n, body) => {
                    for _ in 0..*n {
                        self.exec(p, body, env)?;
                    }
                }
                Stmt::While { cond, body } => {
                    // Bounded by the step budget: every iteration costs steps.
                    while self.eval(p, cond, env)?.as_int() != 0 {
                        match self.exec(p, body, env) {
                            Ok(()) | Err(RunError::Continue) => {}
                            Err(RunError::Break) => break,
                            Err(e) => return Err(e),
                        }
                    }
                }
                Stmt::Break => return Err(RunError::Break),
                Stmt::Continue => return Err(RunError::Continue),
                _ => self.exec_rare(p, s, env)?,
            }
        }
        Ok(())
    }

    /// Statements that are not on the per-hit fast path, kept out of
    /// [`Interpreter::exec`] for the same reason as [`Interpreter::eval_rare`].
    #[inline(never)]
    fn exec_rare(&mut self, p: &Executable, s: &Stmt, env: &mut Env<'_>) -> Result<(), RunError> {
        match s {
            Stmt::Print { map, top, div } => {
                let top = match top {
                    Some(e) => self.eval(p, e, env)?.as_int(),
                    None => 0,
                };
                let div = match div {
                    Some(e) => self.eval(p, e, env)?.as_int(),
                    None => 1,
                };
                if env.maps.sees_whole_maps() {
                    let entries = env.maps.entries(*map);
                    env.emit(OutputEvent::Map {
                        map: *map,
                        entries,
                        top,
                        div,
                    });
                } else {
                    env.emit(OutputEvent::MapOp {
                        map: *map,
                        op: MapOp::Print { top, div },
                    });
                }
            }
            Stmt::Clear(m) => whole_map(env, *m, MapOp::Clear),
            Stmt::Zero(m) => whole_map(env, *m, MapOp::Zero),
            Stmt::Delete { map, key } => {
                let k = self.key(p, key, env)?;
                env.maps.delete(*map, &k);
            }
            Stmt::Time(f) => {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0);
                let s = probe_lang::format::strftime(&p.ir.strings[*f as usize], now);
                env.emit(OutputEvent::Time(s));
            }
            Stmt::PrintValue(e, ty) => {
                let v = self.eval(p, e, env)?;
                env.emit(OutputEvent::Value { value: v, ty: *ty });
            }
            Stmt::TraceProbe => env.ctx.trace(Traced::Probe)?,
            Stmt::Snapshot => env.ctx.trace(Traced::Snapshot)?,
            Stmt::Trace { site, fields } => {
                let mut out = Vec::with_capacity(fields.len());
                for (name, ty, e) in fields {
                    let v = match (self.eval(p, e, env)?, ty) {
                        (Value::Str(s), _) => TracedValue::Str(s),
                        (Value::Buf(b), _) => TracedValue::Bytes(b),
                        (v, TraceType::Signed) => TracedValue::I64(v.as_int() as i64),
                        (v, _) => TracedValue::U64(v.as_int()),
                    };
                    out.push((name.clone(), v));
                }
                env.ctx.trace(Traced::Fields {
                    site: *site,
                    fields: out,
                })?;
            }
            Stmt::SelfSet(slot, e) => {
                let v = self.eval(p, e, env)?;
                self.self_set(p, *slot, Some(v), env)?;
            }
            Stmt::SelfDelete(slot) => self.self_set(p, *slot, None, env)?,
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
            | Stmt::Continue => self.exec(p, std::slice::from_ref(s), env)?,
        }
        Ok(())
    }

    fn key(&mut self, p: &Executable, k: &KeyExpr, env: &mut Env<'_>) -> Result<Key, RunError> {
        Ok(match k {
            KeyExpr::None => Key::None,
            KeyExpr::Single(e) => match self.eval(p, e, env)? {
                Value::Int(v) => Key::Int(v),
                Value::Str(s) => Key::Str(s),
                v => single_part_key(v),
            },
            KeyExpr::Multi(es) => {
                let mut parts = Vec::with_capacity(es.len());
                for e in es {
                    parts.push(KeyPart::from(self.eval(p, e, env)?));
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

    fn eval(&mut self, p: &Executable, e: &Expr, env: &mut Env<'_>) -> Result<Value, RunError> {
        self.step()?;
        Ok(match e {
            Expr::Const(v) => Value::Int(*v),
            Expr::Str(i) => Value::Str(Arc::clone(&p.ir.strings[*i as usize])),
            Expr::Scratch(i) => self.slots[*i as usize].clone(),
            Expr::Builtin(b) => match b {
                Builtin::Arg(n) => Value::Int(env.ctx.arg(*n)?),
                Builtin::Retval => Value::Int(env.ctx.retval()?),
                Builtin::Vcpu => Value::Int(env.ctx.vcpu() as u64),
                Builtin::Nsecs => Value::Int(env.ctx.nsecs()),
                Builtin::Elapsed => {
                    Value::Int(env.ctx.nsecs().saturating_sub(self.start_ns.unwrap_or(0)))
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
                Builtin::Func => Value::Str(Arc::from(env.ctx.func())),
                Builtin::Probe => Value::Str(Arc::from(env.ctx.probe())),
                Builtin::Comm => Value::Str(Arc::from(env.ctx.comm()?.as_str())),
                Builtin::Pid => Value::Int(env.ctx.pid()?),
                Builtin::Tid => Value::Int(env.ctx.tid()?),
                Builtin::Cgroup => Value::Int(env.ctx.cgroup()?),
                Builtin::Curtask => Value::Int(env.ctx.curtask()?),
                Builtin::Guest => Value::Str(Arc::from(env.ctx.guest())),
            },
            Expr::MapRead { map, key } => {
                let k = self.key(p, key, env)?;
                env.maps.read(*map, &k)
            }
            Expr::Unary(op, a) => {
                let v = self.eval(p, a, env)?.as_int();
                Value::Int(match op {
                    Op1::Neg => v.wrapping_neg(),
                    Op1::Not => (v == 0) as u64,
                    Op1::BitNot => !v,
                })
            }
            Expr::LogAnd(a, b) => Value::Int(
                (self.eval(p, a, env)?.as_int() != 0 && self.eval(p, b, env)?.as_int() != 0) as u64,
            ),
            Expr::LogOr(a, b) => Value::Int(
                (self.eval(p, a, env)?.as_int() != 0 || self.eval(p, b, env)?.as_int() != 0) as u64,
            ),
            Expr::Ternary(c, a, b) => {
                if self.eval(p, c, env)?.as_int() != 0 {
                    self.eval(p, a, env)?
                } else {
                    self.eval(p, b, env)?
                }
            }
            Expr::Binary(op, a, b) => {
                let x = self.eval(p, a, env)?;
                let y = self.eval(p, b, env)?;
                if let (Op2::StrEq | Op2::StrNe, Value::Str(s), Value::Str(t)) = (op, &x, &y) {
                    return Ok(Value::Int(((s == t) == (*op == Op2::StrEq)) as u64));
                }
                Value::Int(binop(*op, x.as_int(), y.as_int())?)
            }
            _ => return self.eval_rare(p, e, env),
        })
    }

    /// The less common expressions, kept out of [`Interpreter::eval`] so the
    /// hot recursive function stays small (its frame size is paid at every
    /// node). The step was already counted by `eval`.
    #[inline(never)]
    fn eval_rare(
        &mut self,
        p: &Executable,
        e: &Expr,
        env: &mut Env<'_>,
    ) -> Result<Value, RunError> {
        Ok(match e {
            Expr::Len(m) => Value::Int(env.maps.len(*m)),
            Expr::SelfVar(slot) => self.self_get(p, *slot, env)?,
            Expr::Tuple(es) => {
                let mut v = Vec::with_capacity(es.len());
                for e in es {
                    v.push(self.eval(p, e, env)?);
                }
                Value::Tuple(Arc::from(v))
            }
            Expr::Kstack(limit) => {
                let frames = env.ctx.kstack(*limit as usize)?;
                let lines: Vec<Arc<str>> = frames
                    .iter()
                    .take(*limit as usize)
                    .map(|&a| match env.ctx.ksym(a) {
                        Some((s, off)) => Arc::from(format!("{s}+{off}")),
                        None => Arc::from(format!("{a:#x}")),
                    })
                    .collect();
                Value::Stack(Arc::from(lines))
            }
            Expr::Ustack(limit) => {
                let frames = env.ctx.ustack(*limit as usize)?;
                // Where no symbols are known, addresses, as bpftrace prints
                // frames it cannot resolve.
                let lines: Vec<Arc<str>> = frames
                    .iter()
                    .take(*limit as usize)
                    .map(|&a| match env.ctx.usym(a) {
                        Some((s, off)) => Arc::from(format!("{s}+{off}")),
                        None => Arc::from(format!("{a:#x}")),
                    })
                    .collect();
                Value::Stack(Arc::from(lines))
            }
            Expr::Vtop(cr3, va) => {
                let cr3 = self.eval(p, cr3, env)?.as_int();
                let va = self.eval(p, va, env)?.as_int();
                Value::Int(env.ctx.vtop(cr3, va)?)
            }
            Expr::ReadAs { task, addr, kind } => {
                let task = self.eval(p, task, env)?.as_int();
                let addr = self.eval(p, addr, env)?.as_int();
                match kind {
                    ReadAsKind::Str(len) => {
                        let max = match len {
                            Some(l) => self.eval(p, l, env)?.as_int().min(p.ir.str_len - 1),
                            None => p.ir.str_len - 1,
                        };
                        let r = Self::read_str(
                            &mut |a, b| env.ctx.read_task_memory(task, a, b),
                            addr,
                            max,
                        );
                        self.on_fault(&*env.ctx, r, || Value::Str(Arc::from("")))?
                    }
                    ReadAsKind::Buf(len) => {
                        let len = self.eval(p, len, env)?.as_int().min(BUF_MAX);
                        let mut b = vec![0u8; len as usize];
                        let r = env.ctx.read_task_memory(task, addr, &mut b);
                        self.on_fault(&*env.ctx, r, || b.fill(0))?;
                        Value::Buf(Arc::from(b))
                    }
                    ReadAsKind::Uint(n) => {
                        let mut b = [0u8; 8];
                        let r = env.ctx.read_task_memory(task, addr, &mut b[..*n as usize]);
                        self.on_fault(&*env.ctx, r, || b.fill(0))?;
                        Value::Int(u64::from_le_bytes(b))
                    }
                }
            }
            Expr::Strftime(f, ts) => {
                let ns = self.eval(p, ts, env)?.as_int();
                let (ns0, wall0) = self.wall_origin.unwrap_or((ns, 0));
                let wall = wall0.wrapping_add(ns.wrapping_sub(ns0)) / 1_000_000_000;
                Value::Str(Arc::from(probe_lang::format::strftime(
                    &p.ir.strings[*f as usize],
                    wall,
                )))
            }
            Expr::Field(t, n) => match self.eval(p, t, env)? {
                Value::Tuple(v) => v.get(*n as usize).cloned().unwrap_or(Value::Int(0)),
                _ => Value::Int(0),
            },
            Expr::HasKey { map, key } => {
                let k = self.key(p, key, env)?;
                Value::Int(env.maps.contains(*map, &k) as u64)
            }
            Expr::Cast { size, signed, e } => {
                let v = self.eval(p, e, env)?.as_int();
                Value::Int(extend(v, *size, *signed))
            }
            Expr::Deref { size, signed, ptr } => {
                let addr = self.eval(p, ptr, env)?.as_int();
                let mut b = [0u8; 8];
                let r = env.ctx.read_memory(addr, &mut b[..*size as usize]);
                self.on_fault(&*env.ctx, r, || b.fill(0))?;
                Value::Int(extend(u64::from_le_bytes(b), *size, *signed))
            }
            Expr::Join { ptr, delim } => {
                let base = self.eval(p, ptr, env)?.as_int();
                let mut parts: Vec<String> = Vec::new();
                for i in 0..probe_lang::ir::JOIN_ARGS {
                    let mut b = [0u8; 8];
                    let r = env.ctx.read_memory(base.wrapping_add(i * 8), &mut b);
                    self.on_fault(&*env.ctx, r, || b = [0; 8])?;
                    let at = u64::from_le_bytes(b);
                    if at == 0 {
                        break;
                    }
                    let r = Self::read_str(
                        &mut |a, b| env.ctx.read_memory(a, b),
                        at,
                        probe_lang::ir::JOIN_ARG_MAX - 1,
                    );
                    match self.on_fault(&*env.ctx, r, || Value::Str(Arc::from("")))? {
                        Value::Str(s) => parts.push(s.to_string()),
                        _ => break,
                    }
                }
                Value::Str(Arc::from(parts.join(&p.ir.strings[*delim as usize])))
            }
            Expr::StrRead { ptr, len } => {
                let addr = self.eval(p, ptr, env)?.as_int();
                // bpftrace's strings hold BPFTRACE_STRLEN bytes including the NUL.
                let max = match len {
                    Some(l) => self.eval(p, l, env)?.as_int().min(p.ir.str_len - 1),
                    None => p.ir.str_len - 1,
                };
                let r = Self::read_str(&mut |a, b| env.ctx.read_memory(a, b), addr, max);
                self.on_fault(&*env.ctx, r, || Value::Str(Arc::from("")))?
            }
            Expr::BufRead { ptr, len } => {
                let addr = self.eval(p, ptr, env)?.as_int();
                let len = self.eval(p, len, env)?.as_int().min(BUF_MAX);
                let mut b = vec![0u8; len as usize];
                let r = env.ctx.read_memory(addr, &mut b);
                self.on_fault(&*env.ctx, r, || b.fill(0))?;
                Value::Buf(Arc::from(b))
            }
            Expr::Bswap { size, e } => {
                let v = self.eval(p, e, env)?.as_int();
                Value::Int(match size {
                    1 => v & 0xff,
                    2 => (v as u16).swap_bytes() as u64,
                    4 => (v as u32).swap_bytes() as u64,
                    _ => v.swap_bytes(),
                })
            }
            Expr::Ksym(a) => {
                let addr = self.eval(p, a, env)?.as_int();
                Value::Str(Arc::from(match env.ctx.ksym(addr) {
                    Some((s, _)) => s,
                    // As bpftrace 0.17 prints unresolvable addresses.
                    None if addr == 0 => "0".to_string(),
                    None => format!("{addr:#x}"),
                }))
            }
            // As bpftrace prints it: the function's name, or the address
            // where no symbols of the file mapped there are known.
            Expr::Usym(a) => {
                let addr = self.eval(p, a, env)?.as_int();
                Value::Str(Arc::from(match env.ctx.usym(addr) {
                    Some((s, _)) => s,
                    None => format!("{addr:#x}"),
                }))
            }
            // As bpftrace resolves it: the first user with this uid, else "".
            Expr::Username(a) => {
                let uid = self.eval(p, a, env)?.as_int();
                let users = &p.ir.users;
                let name = users
                    .iter()
                    .find(|(u, _)| *u == uid)
                    .map(|(_, n)| n.clone());
                Value::Str(name.unwrap_or_else(|| Arc::from("")))
            }
            Expr::CgroupPath { id, unified } => {
                let id = self.eval(p, id, env)?.as_int();
                // As bpftrace prints it: `hierarchy:path` for each
                // hierarchy where the id has a path.
                let path = match unified {
                    true => env.ctx.cgroup_path(id)?,
                    false => None,
                };
                Value::Str(Arc::from(
                    path.map_or_else(String::new, |p| format!("unified:{p}")),
                ))
            }
            Expr::Kaddr(i) => {
                let name = &p.ir.strings[*i as usize];
                match env.ctx.kaddr(name) {
                    Some(a) => Value::Int(a),
                    None => {
                        return Err(RunError::Msg(Box::new(format!(
                            "unknown kernel symbol '{name}'"
                        ))));
                    }
                }
            }
            Expr::Reg(i) => Value::Int(env.ctx.register(&p.ir.strings[*i as usize])?),
            Expr::ProbeArg(i) => env.ctx.probe_arg(&p.ir.strings[*i as usize])?,
            Expr::Strncmp(a, b, n) => {
                let a = self.eval(p, a, env)?;
                let b = self.eval(p, b, env)?;
                let n = self.eval(p, n, env)?.as_int();
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
                    Some(f) => Some(self.eval(p, f, env)?.as_int()),
                    None => None,
                };
                let v = self.eval(p, a, env)?;
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
            | Expr::Binary(..) => return self.eval(p, e, env),
        })
    }
}

/// `clear(@m)` / `zero(@m)`: done here on a backend that holds whole maps;
/// else done to the part this thread holds, and handed on as an event for
/// whoever holds the rest.
fn whole_map(env: &mut Env<'_>, map: u32, op: MapOp) {
    match op {
        MapOp::Zero => env.maps.zero(map),
        _ => env.maps.clear(map),
    }
    if !env.maps.sees_whole_maps() {
        env.emit(OutputEvent::MapOp { map, op });
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

#[cfg(test)]
mod tests {
    use super::*;

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
