//! Pass 5: the interpreter. Walks the resolved IR of one block per probe hit.
//!
//! Integer semantics: every integer is a 64-bit two's complement pattern;
//! `+ - * << ~` and unary `-` wrap. Comparisons and `>>` are signed only
//! when the static types say so (literals are signed; `argN`, `nsecs`,
//! `vcpu`, `retval` are unsigned; mixing makes the result unsigned, as in C).
//! `/` and `%` are unsigned like bpftrace's BPF code; division by zero is a
//! runtime error.
//!
//! A runtime error (division by zero, a failed register/memory read, the
//! step budget running out) aborts that one handler run and is counted per
//! (probe, message); nothing panics.

use crate::check::AggKind;
use crate::ir::{AggOp, Block, Builtin, Expr, KeyExpr, Op1, Op2, Stmt};
use crate::printer::Printer;
use crate::value::{Key, KeyPart, Value};
use crate::{BlockId, Program};
use rustc_hash::FxHashMap;
use std::sync::Arc;

/// What a handler can ask about the place it fired; implemented by the
/// probe engine (registers come lazily from the stub).
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
    /// For later features (`str()`, pointer reads).
    fn read_memory(&mut self, addr: u64, buf: &mut [u8]) -> Result<(), ContextError>;
}

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

/// Aggregation state: count / sum / min / max use `a` (min/max set `b`=1
/// once they hold a value); avg keeps sum in `a` and count in `b`.
#[derive(Clone, Copy, Debug, Default)]
struct Agg {
    a: u64,
    b: u64,
}

type Map = FxHashMap<Key, Agg>;

enum RunError {
    Msg(String),
    Ctx(ContextError),
    Exit,
}

impl From<ContextError> for RunError {
    fn from(e: ContextError) -> Self {
        RunError::Ctx(e)
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
}

impl Runtime {
    pub fn new(program: Arc<Program>, out: Box<dyn std::io::Write + Send>) -> Runtime {
        let mut maps: Vec<Map> = program.ir.maps.iter().map(|_| Map::default()).collect();
        // bpftrace always shows a scalar count map, even untouched (`@c: 0`).
        for (m, d) in maps.iter_mut().zip(&program.ir.maps) {
            if d.kind == AggKind::Count && d.keys.is_empty() {
                m.insert(Key::None, Agg::default());
            }
        }
        Runtime {
            program,
            maps,
            printer: Printer::new(out),
            slots: Vec::new(),
            steps: 0,
            budget: DEFAULT_STEP_BUDGET,
            errors: FxHashMap::default(),
            args: Vec::new(),
        }
    }

    pub fn set_step_budget(&mut self, steps: u64) {
        self.budget = steps;
    }

    /// Evaluates the block's predicate, then its body. Errors are counted
    /// and turn into `Flow::Continue`.
    pub fn run(&mut self, block: BlockId, ctx: &mut dyn ProbeContext) -> Flow {
        let program = Arc::clone(&self.program);
        let Some(b) = program.ir.blocks.get(block.0 as usize) else {
            self.count_error(ctx.probe(), format!("no such block {}", block.0));
            return Flow::Continue;
        };
        self.steps = 0;
        self.slots.clear();
        self.slots.resize(b.slots as usize, Value::Int(0));
        match self.run_block(&program, b, ctx) {
            Ok(()) => Flow::Continue,
            Err(RunError::Exit) => Flow::Exit,
            Err(RunError::Msg(m)) => {
                self.count_error(ctx.probe(), m);
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
            self.print_map(i);
        }
    }

    /// Current value of a map entry as `@m[key]` reads it (for tests/tools).
    pub fn map_value(&self, name: &str, key: &[Value]) -> Option<u64> {
        let i = self.program.ir.maps.iter().position(|m| m.name == name)?;
        let key = make_key(key.to_vec());
        Some(self.read(i, &key))
    }

    fn print_map(&mut self, i: usize) {
        let decl = &self.program.ir.maps[i];
        let mut entries: Vec<(Key, u64)> = self.maps[i].keys().map(|k| (k.clone(), 0)).collect();
        for e in &mut entries {
            e.1 = self.read(i, &e.0);
        }
        self.printer.map(decl, &mut entries);
    }

    fn read(&self, map: usize, key: &Key) -> u64 {
        let decl = &self.program.ir.maps[map];
        let Some(agg) = self.maps[map].get(key) else {
            return 0;
        };
        match decl.kind {
            AggKind::Avg if agg.b == 0 => 0,
            AggKind::Avg if decl.signed => (agg.a as i64).wrapping_div(agg.b as i64) as u64,
            AggKind::Avg => agg.a / agg.b,
            _ => agg.a,
        }
    }

    fn step(&mut self) -> Result<(), RunError> {
        self.steps += 1;
        if self.steps > self.budget {
            return Err(RunError::Msg(format!(
                "handler exceeded its step budget of {} operations",
                self.budget
            )));
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
                    let agg = self.maps[*map as usize].entry(key).or_default();
                    match *op {
                        AggOp::Count => agg.a = agg.a.wrapping_add(1),
                        AggOp::Sum => agg.a = agg.a.wrapping_add(v),
                        AggOp::Avg => {
                            agg.a = agg.a.wrapping_add(v);
                            agg.b += 1;
                        }
                        AggOp::Min { signed } | AggOp::Max { signed } => {
                            let less = if signed {
                                (v as i64) < (agg.a as i64)
                            } else {
                                v < agg.a
                            };
                            let better = if matches!(op, AggOp::Min { .. }) {
                                less
                            } else {
                                !less && v != agg.a
                            };
                            if agg.b == 0 || better {
                                agg.a = v;
                                agg.b = 1;
                            }
                        }
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
                Stmt::Print(m) => self.print_map(*m as usize),
                Stmt::Clear(m) => self.clear(*m as usize, None),
                Stmt::Delete { map, key } => {
                    let k = self.key(p, key, ctx)?;
                    self.clear(*map as usize, Some(k));
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
            }
        }
        Ok(())
    }

    /// `clear(@m)` / `delete(@m[k])`. Scalar count maps are zeroed rather
    /// than removed, as bpftrace 0.17 prints them as `@c: 0` afterwards.
    fn clear(&mut self, map: usize, key: Option<Key>) {
        let decl = &self.program.ir.maps[map];
        let m = &mut self.maps[map];
        if decl.kind == AggKind::Count && decl.keys.is_empty() {
            m.insert(Key::None, Agg::default());
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
                Builtin::Func => Value::Str(Arc::from(ctx.func())),
                Builtin::Probe => Value::Str(Arc::from(ctx.probe())),
            },
            Expr::MapRead { map, key } => {
                let k = self.key(p, key, ctx)?;
                Value::Int(self.read(*map as usize, &k))
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
                let (x, y) = (x.as_int(), y.as_int());
                let (sx, sy) = (x as i64, y as i64);
                Value::Int(match op {
                    Op2::Add => x.wrapping_add(y),
                    Op2::Sub => x.wrapping_sub(y),
                    Op2::Mul => x.wrapping_mul(y),
                    Op2::Div | Op2::Mod if y == 0 => {
                        return Err(RunError::Msg("division by zero".into()));
                    }
                    Op2::Div => x / y,
                    Op2::Mod => x % y,
                    Op2::And => x & y,
                    Op2::Or => x | y,
                    Op2::Xor => x ^ y,
                    Op2::Shl => x.wrapping_shl(y as u32 & 63),
                    Op2::LShr => x.wrapping_shr(y as u32 & 63),
                    Op2::AShr => sx.wrapping_shr(y as u32 & 63) as u64,
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
        })
    }
}

/// Builds a map key from evaluated key values (same shape as the interpreter).
pub(crate) fn make_key(mut vals: Vec<Value>) -> Key {
    match vals.len() {
        0 => Key::None,
        1 => match vals.pop().expect("len 1") {
            Value::Int(v) => Key::Int(v),
            Value::Str(s) => Key::Str(s),
        },
        _ => Key::Multi(vals.into_iter().map(KeyPart::from).collect()),
    }
}
