//! Pass 4: lowering of the checked AST into a compact resolved IR.
//!
//! The IR is a *resolved tree*: maps, scratch variables, strings and printf
//! formats are indices into tables, builtins are enum variants, and every
//! operator already carries its signedness (e.g. `SLt` vs `ULt`). No names
//! are looked up at run time.
//!
//! Why a tree rather than bytecode or closures: handlers are short (a few
//! dozen nodes), so a `match` over a tree costs about the same as a bytecode
//! dispatch loop while keeping lowering and the `-d` dump trivial; closures
//! would be slightly faster but opaque to dumping. Evaluation counts one step
//! per node, which is what the per-run step budget limits.

use crate::ast::{self, Access, BinOp, ExprKind, StmtKind, Type, UnOp};
use crate::check::{AggKind, Checked, LhistParams, MapDecl, TraceSite, TraceType};
use crate::format::Format;
use rustc_hash::FxHashMap;
use std::fmt::Write;
use std::sync::Arc;

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Builtin {
    Arg(u8),
    Retval,
    Func,
    Probe,
    Vcpu,
    Nsecs,
    Elapsed,
    Rand,
    /// Linux guests: the current task's name, process id (tgid), thread id
    /// and `task_struct` address.
    Comm,
    Pid,
    Tid,
    Cgroup,
    Curtask,
    /// The name of the VM the probe fired in.
    Guest,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Op1 {
    Neg,
    Not,
    BitNot,
}

/// Binary operators with signedness resolved. Division and modulo are
/// unsigned, as bpftrace's generated BPF code does (`-7 / 2` is a huge
/// number, printed by `%d` as its low 32 bits: -4).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Op2 {
    Add,
    Sub,
    Mul,
    Div,
    Mod,
    And,
    Or,
    Xor,
    Shl,
    LShr,
    /// Arithmetic shift right (signed bitfields only; `>>` is logical).
    AShr,
    Eq,
    Ne,
    ULt,
    ULe,
    UGt,
    UGe,
    SLt,
    SLe,
    SGt,
    SGe,
    StrEq,
    StrNe,
}

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub enum Expr {
    Const(u64),
    Str(u32),
    Scratch(u16),
    /// A thread-local variable (`self->name`) by slot.
    SelfVar(u16),
    Builtin(Builtin),
    MapRead {
        map: u32,
        key: KeyExpr,
    },
    Unary(Op1, Box<Expr>),
    Binary(Op2, Box<Expr>, Box<Expr>),
    LogAnd(Box<Expr>, Box<Expr>),
    LogOr(Box<Expr>, Box<Expr>),
    Ternary(Box<Expr>, Box<Expr>, Box<Expr>),
    /// Integer cast to `size` bytes: truncate, then sign-extend if signed.
    Cast {
        size: u8,
        signed: bool,
        e: Box<Expr>,
    },
    /// Guest memory read of `size` bytes at the pointer.
    Deref {
        size: u8,
        signed: bool,
        ptr: Box<Expr>,
    },
    Len(u32),
    HasKey {
        map: u32,
        key: KeyExpr,
    },
    /// `str(ptr[, len])`: at most `len` (capped at STR_MAX) bytes, to NUL.
    StrRead {
        ptr: Box<Expr>,
        len: Option<Box<Expr>>,
    },
    BufRead {
        ptr: Box<Expr>,
        len: Box<Expr>,
    },
    Ksym(Box<Expr>),
    /// `cgroup_path(id [, filter])`: `unified:PATH`, or empty when the
    /// filter excludes the cgroup v2 hierarchy (bpftrace calls it
    /// `unified`; vmprobe knows no v1 hierarchies).
    CgroupPath {
        id: Box<Expr>,
        unified: bool,
    },
    /// Symbol name (string table index).
    Kaddr(u32),
    /// Register name (string table index).
    Reg(u32),
    Strncmp(Box<Expr>, Box<Expr>, Box<Expr>),
    Ntop(Option<Box<Expr>>, Box<Expr>),
    Tuple(Vec<Expr>),
    Field(Box<Expr>, u32),
    /// `kstack` / `kstack(n)`: at most n frames.
    Kstack(u64),
    /// `ustack` / `ustack(n)`: at most n user frames (frame pointers).
    Ustack(u64),
    /// `vtop(cr3, vaddr)`: physical address.
    Vtop(Box<Expr>, Box<Expr>),
    /// `str_as` / `buf_as` / `uint_as(task, addr, ...)`: a read in the
    /// address space of another task.
    ReadAs {
        task: Box<Expr>,
        addr: Box<Expr>,
        kind: ReadAsKind,
    },
    /// `strftime(fmt, nsecs)`: format (string table index) and timestamp.
    Strftime(u32, Box<Expr>),
    /// `args.NAME` of a `vmm:`/`tracepoint:` probe (string table index).
    ProbeArg(u32),
}

/// What a [`Expr::ReadAs`] reads.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub enum ReadAsKind {
    /// A string of at most the length (capped at STR_MAX), to its NUL.
    Str(Option<Box<Expr>>),
    Buf(Box<Expr>),
    /// An unsigned integer of 1, 2, 4 or 8 bytes.
    Uint(u8),
}

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub enum KeyExpr {
    None,
    Single(Box<Expr>),
    Multi(Vec<Expr>),
}

/// Aggregation update; min/max/avg carry the argument's signedness.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum AggOp {
    Count,
    Sum,
    Min { signed: bool },
    Max { signed: bool },
    Avg,
    Stats,
    Hist,
    Lhist(LhistParams),
}

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub enum Stmt {
    Agg {
        map: u32,
        key: KeyExpr,
        op: AggOp,
        arg: Option<Expr>,
    },
    Printf {
        fmt: u32,
        args: Vec<Expr>,
    },
    Print {
        map: u32,
        top: Option<Expr>,
        div: Option<Expr>,
    },
    Clear(u32),
    Zero(u32),
    /// `@m[k] = v` on a value map.
    MapSet {
        map: u32,
        key: KeyExpr,
        value: Expr,
    },
    /// `@m[k] op= v` (missing entries read as 0).
    MapUpdate {
        map: u32,
        key: KeyExpr,
        op: Op2,
        value: Expr,
    },
    /// `time(fmt)`: string-table index of the strftime format.
    Time(u32),
    Unroll(u64, Vec<Stmt>),
    While {
        cond: Expr,
        body: Vec<Stmt>,
    },
    Break,
    Continue,
    /// `print(value)`, with the value's type for formatting.
    PrintValue(Expr, Type),
    Delete {
        map: u32,
        key: KeyExpr,
    },
    Exit,
    Set(u16, Expr),
    /// `self->x = v` / clearing it (`delete(self->x)`, `self->x = 0`).
    SelfSet(u16, Expr),
    SelfDelete(u16),
    If {
        cond: Expr,
        then: Vec<Stmt>,
        els: Vec<Stmt>,
    },
    /// `trace()`: an event with the probe's own fields.
    TraceProbe,
    /// `trace(name = expr, ...)` at call site `site` (an index into
    /// [`Ir::traces`]), each field with its static type.
    Trace {
        site: u32,
        fields: Vec<(Arc<str>, TraceType, Expr)>,
    },
    /// `snapshot()`: write the flight recorder's ring.
    Snapshot,
}

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Block {
    pub predicate: Option<Expr>,
    pub body: Vec<Stmt>,
    pub slots: u16,
}

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Ir {
    pub blocks: Vec<Block>,
    pub maps: Vec<MapDecl>,
    pub strings: Vec<Arc<str>>,
    pub formats: Vec<Format>,
    /// Element types of `Type::Tuple(i)`.
    pub tuples: Vec<Vec<Type>>,
    /// Field layouts of the `trace(name = ...)` call sites.
    pub traces: Vec<TraceSite>,
    /// Thread-local variables by slot: name and type (what an unset one reads as).
    pub self_vars: Vec<(String, Type)>,
}

struct Lower<'a> {
    maps: &'a FxHashMap<String, usize>,
    traces: &'a [TraceSite],
    decls: &'a [MapDecl],
    vars: &'a FxHashMap<String, (u16, Type)>,
    self_vars: &'a [(String, Type)],
    strings: &'a mut Vec<Arc<str>>,
    string_ids: &'a mut FxHashMap<String, u32>,
    formats: &'a mut Vec<Format>,
}

pub fn lower(ast: &ast::Ast, checked: &Checked) -> Ir {
    let mut strings = Vec::new();
    let mut string_ids = FxHashMap::default();
    let mut formats = Vec::new();
    let mut blocks = Vec::new();
    for (b, vars) in ast.probes.iter().zip(&checked.scratch) {
        let mut l = Lower {
            maps: &checked.map_index,
            traces: &checked.traces,
            decls: &checked.maps,
            vars,
            self_vars: &checked.self_vars,
            strings: &mut strings,
            string_ids: &mut string_ids,
            formats: &mut formats,
        };
        blocks.push(Block {
            predicate: b.predicate.as_ref().map(|p| l.expr(p)),
            body: l.stmts(&b.body),
            slots: vars.len() as u16,
        });
    }
    Ir {
        blocks,
        maps: checked.maps.clone(),
        strings,
        formats,
        tuples: checked.tuples.clone(),
        traces: checked.traces.clone(),
        self_vars: checked.self_vars.clone(),
    }
}

impl Lower<'_> {
    fn map(&self, name: &str) -> u32 {
        self.maps[name] as u32
    }

    fn self_slot(&self, name: &str) -> u16 {
        self.self_vars
            .iter()
            .position(|(n, _)| n == name)
            .expect("checked: assigned thread-local variable") as u16
    }

    fn intern(&mut self, s: &str) -> u32 {
        if let Some(&i) = self.string_ids.get(s) {
            return i;
        }
        let i = self.strings.len() as u32;
        self.strings.push(Arc::from(s));
        self.string_ids.insert(s.to_string(), i);
        i
    }

    fn key(&mut self, keys: &[ast::Expr]) -> KeyExpr {
        match keys {
            [] => KeyExpr::None,
            [k] => KeyExpr::Single(Box::new(self.expr(k))),
            ks => KeyExpr::Multi(ks.iter().map(|k| self.expr(k)).collect()),
        }
    }

    fn stmts(&mut self, stmts: &[ast::Stmt]) -> Vec<Stmt> {
        stmts.iter().map(|s| self.stmt(s)).collect()
    }

    fn stmt(&mut self, s: &ast::Stmt) -> Stmt {
        match &s.kind {
            StmtKind::MapAssign {
                name, keys, value, ..
            } => {
                let map = self.map(name);
                let key = self.key(keys);
                let agg = match &value.kind {
                    ExprKind::Call { name: f, args } => AggKind::from_name(f).map(|k| (k, args)),
                    _ => None,
                };
                let Some((kind, args)) = agg else {
                    return Stmt::MapSet {
                        map,
                        key,
                        value: self.expr(value),
                    };
                };
                let signed = args.first().is_some_and(|a| a.ty == Type::SIGNED);
                let op = match kind {
                    AggKind::Count => AggOp::Count,
                    AggKind::Sum => AggOp::Sum,
                    AggKind::Min => AggOp::Min { signed },
                    AggKind::Max => AggOp::Max { signed },
                    AggKind::Avg => AggOp::Avg,
                    AggKind::Stats => AggOp::Stats,
                    AggKind::Hist => AggOp::Hist,
                    AggKind::Lhist => {
                        AggOp::Lhist(self.decls[map as usize].lhist.expect("checked lhist"))
                    }
                    AggKind::Value => unreachable!("not an aggregation function"),
                };
                Stmt::Agg {
                    map,
                    key,
                    op,
                    arg: args.first().map(|a| self.expr(a)),
                }
            }
            StmtKind::MapUpdate {
                name,
                keys,
                op,
                value,
                ..
            } => {
                let signed = self.decls[self.map(name) as usize].signed;
                Stmt::MapUpdate {
                    map: self.map(name),
                    key: self.key(keys),
                    op: op2(*op, signed && value.ty == Type::SIGNED, false),
                    value: self.expr(value),
                }
            }
            StmtKind::Unroll { count, body } => Stmt::Unroll(*count, self.stmts(body)),
            StmtKind::While { cond, body } => Stmt::While {
                cond: self.expr(cond),
                body: self.stmts(body),
            },
            StmtKind::Break => Stmt::Break,
            StmtKind::Continue => Stmt::Continue,
            StmtKind::VarAssign { name, value } => Stmt::Set(self.vars[name].0, self.expr(value)),
            StmtKind::SelfAssign { name, value } => match value.kind {
                ExprKind::Int(0) => Stmt::SelfDelete(self.self_slot(name)),
                _ => Stmt::SelfSet(self.self_slot(name), self.expr(value)),
            },
            StmtKind::If { cond, then, els } => Stmt::If {
                cond: self.expr(cond),
                then: self.stmts(then),
                els: self.stmts(els),
            },
            StmtKind::Trace { site: None, .. } => Stmt::TraceProbe,
            StmtKind::Trace {
                site: Some(site),
                fields,
            } => {
                let layout = &self.traces[*site as usize].fields;
                Stmt::Trace {
                    site: *site,
                    fields: layout
                        .iter()
                        .zip(fields)
                        .map(|((name, ty), f)| (Arc::from(name.as_str()), *ty, self.expr(&f.value)))
                        .collect(),
                }
            }
            StmtKind::Call { name, args, .. } => {
                let map_arg = |l: &mut Self| match &args[0].kind {
                    ExprKind::Map { name, keys } => (l.map(name), l.key(keys)),
                    _ => unreachable!("checked: map argument"),
                };
                match name.as_str() {
                    "printf" => {
                        let ExprKind::Str(f) = &args[0].kind else {
                            unreachable!("checked: literal format")
                        };
                        self.formats.push(Format::parse(f).expect("checked"));
                        Stmt::Printf {
                            fmt: self.formats.len() as u32 - 1,
                            args: args[1..].iter().map(|a| self.expr(a)).collect(),
                        }
                    }
                    "exit" => Stmt::Exit,
                    "snapshot" => Stmt::Snapshot,
                    "time" => {
                        let f = match args.first().map(|a| &a.kind) {
                            Some(ExprKind::Str(f)) => f.as_str(),
                            _ => "%H:%M:%S\n",
                        };
                        Stmt::Time(self.intern(f))
                    }
                    "print" if !matches!(args[0].kind, ExprKind::Map { .. }) => {
                        Stmt::PrintValue(self.expr(&args[0]), args[0].ty)
                    }
                    "print" => Stmt::Print {
                        map: map_arg(self).0,
                        top: args.get(1).map(|a| self.expr(a)),
                        div: args.get(2).map(|a| self.expr(a)),
                    },
                    "clear" => Stmt::Clear(map_arg(self).0),
                    "zero" => Stmt::Zero(map_arg(self).0),
                    "delete" => match &args[0].kind {
                        ExprKind::SelfVar(v) => Stmt::SelfDelete(self.self_slot(v)),
                        _ => {
                            let (map, key) = map_arg(self);
                            Stmt::Delete { map, key }
                        }
                    },
                    _ => unreachable!("checked: known statement"),
                }
            }
        }
    }

    fn expr(&mut self, e: &ast::Expr) -> Expr {
        match &e.kind {
            ExprKind::Int(v) => Expr::Const(*v),
            ExprKind::Str(s) => Expr::Str(self.intern(s)),
            ExprKind::Var(v) => Expr::Scratch(self.vars[v].0),
            ExprKind::SelfVar(v) => Expr::SelfVar(self.self_slot(v)),
            ExprKind::Ident(n) if n == "kstack" => Expr::Kstack(crate::check::KSTACK_MAX),
            ExprKind::Ident(n) if n == "ustack" => Expr::Ustack(crate::check::KSTACK_MAX),
            ExprKind::Ident(n) => Expr::Builtin(match n.as_str() {
                "func" => Builtin::Func,
                "probe" => Builtin::Probe,
                "vcpu" | "cpu" => Builtin::Vcpu,
                "nsecs" => Builtin::Nsecs,
                "retval" => Builtin::Retval,
                "elapsed" => Builtin::Elapsed,
                "rand" => Builtin::Rand,
                "comm" => Builtin::Comm,
                "pid" => Builtin::Pid,
                "tid" => Builtin::Tid,
                "cgroup" => Builtin::Cgroup,
                "curtask" => Builtin::Curtask,
                "guest" => Builtin::Guest,
                a => Builtin::Arg(a.as_bytes()[3] - b'0'),
            }),
            ExprKind::Map { name, keys } => Expr::MapRead {
                map: self.map(name),
                key: self.key(keys),
            },
            ExprKind::Call { name, args } => self.call(name, args),
            ExprKind::Cast {
                size,
                signed,
                ptr,
                expr,
            } => {
                let inner = self.expr(expr);
                if *ptr || *size == 8 {
                    inner
                } else {
                    Expr::Cast {
                        size: *size,
                        signed: *signed,
                        e: Box::new(inner),
                    }
                }
            }
            ExprKind::Tuple(v) => Expr::Tuple(v.iter().map(|e| self.expr(e)).collect()),
            ExprKind::Member {
                base,
                name,
                offset,
                access,
                ..
            } => match *access {
                Access::Arg {
                    index,
                    size,
                    signed,
                } => {
                    let a = Expr::Builtin(Builtin::Arg(index));
                    if size < 8 {
                        Expr::Cast {
                            size,
                            signed,
                            e: Box::new(a),
                        }
                    } else {
                        a
                    }
                }
                Access::ProbeArg => Expr::ProbeArg(self.intern(name)),
                Access::SyscallArg { offset } => Expr::Deref {
                    size: 8,
                    signed: false,
                    ptr: Box::new(Expr::Binary(
                        Op2::Add,
                        Box::new(Expr::Builtin(Builtin::Arg(0))),
                        Box::new(Expr::Const(offset.into())),
                    )),
                },
                Access::Retval => Expr::Builtin(Builtin::Retval),
                Access::Const(v) => Expr::Const(v),
                acc => {
                    let b = self.expr(base);
                    let addr = if *offset == 0 {
                        b
                    } else {
                        Expr::Binary(Op2::Add, Box::new(b), Box::new(Expr::Const(*offset)))
                    };
                    read_access(addr, acc)
                }
            },
            ExprKind::Index {
                base,
                index,
                elem_size,
                access: acc,
            } => {
                let b = self.expr(base);
                let addr = match (&index.kind, *elem_size) {
                    (ExprKind::Int(0), _) => b,
                    (ExprKind::Int(i), n) => Expr::Binary(
                        Op2::Add,
                        Box::new(b),
                        Box::new(Expr::Const(i.wrapping_mul(n))),
                    ),
                    (_, n) => Expr::Binary(
                        Op2::Add,
                        Box::new(b),
                        Box::new(Expr::Binary(
                            Op2::Mul,
                            Box::new(self.expr(index)),
                            Box::new(Expr::Const(n)),
                        )),
                    ),
                };
                read_access(addr, *acc)
            }
            ExprKind::KCast { expr, .. } => self.expr(expr),
            // The checker replaces both by their value.
            ExprKind::SizeofType(_) | ExprKind::Offsetof(..) => Expr::Const(0),
            ExprKind::Field(a, n) => Expr::Field(Box::new(self.expr(a)), *n),
            ExprKind::Deref(a) => {
                let Type::Ptr { size, signed } = a.ty else {
                    unreachable!("checked: deref of a pointer")
                };
                Expr::Deref {
                    size,
                    signed,
                    ptr: Box::new(self.expr(a)),
                }
            }
            ExprKind::Unary(op, a) => Expr::Unary(
                match op {
                    UnOp::Neg => Op1::Neg,
                    UnOp::Not => Op1::Not,
                    UnOp::BitNot => Op1::BitNot,
                },
                Box::new(self.expr(a)),
            ),
            ExprKind::Binary(op, a, b) => {
                let la = Box::new(self.expr(a));
                let mut lb = Box::new(self.expr(b));
                // C pointer arithmetic: the offset counts pointees.
                if let Type::Ptr { size, .. } = a.ty
                    && size > 1
                    && matches!(op, BinOp::Add | BinOp::Sub)
                    && b.ty.is_int()
                    && !matches!(b.ty, Type::Ptr { .. })
                {
                    lb = Box::new(Expr::Binary(
                        Op2::Mul,
                        lb,
                        Box::new(Expr::Const(size as u64)),
                    ));
                }
                // Signed only if both operands are signed (C conversions).
                let s = a.ty == Type::SIGNED && b.ty == Type::SIGNED;
                match op {
                    BinOp::LogAnd => Expr::LogAnd(la, lb),
                    BinOp::LogOr => Expr::LogOr(la, lb),
                    op => Expr::Binary(op2(*op, s, a.ty == Type::Str), la, lb),
                }
            }
            ExprKind::Ternary(c, a, b) => Expr::Ternary(
                Box::new(self.expr(c)),
                Box::new(self.expr(a)),
                Box::new(self.expr(b)),
            ),
        }
    }
}

/// Reads a kernel member/element at `addr` as the checker decided.
fn read_access(addr: Expr, acc: Access) -> Expr {
    match acc {
        Access::Load { size, signed } => Expr::Deref {
            size,
            signed,
            ptr: Box::new(addr),
        },
        Access::Bits {
            size,
            shift,
            width,
            signed,
        } => {
            let raw = Expr::Deref {
                size,
                signed: false,
                ptr: Box::new(addr),
            };
            // Move the field to the top bits, then shift it back down
            // (arithmetically for signed fields).
            let up = 64 - (shift as u64 + width as u64);
            let top = Expr::Binary(Op2::Shl, Box::new(raw), Box::new(Expr::Const(up)));
            let down = 64 - width as u64;
            if signed {
                Expr::Binary(Op2::AShr, Box::new(top), Box::new(Expr::Const(down)))
            } else {
                Expr::Binary(Op2::LShr, Box::new(top), Box::new(Expr::Const(down)))
            }
        }
        Access::Str { len } => Expr::StrRead {
            ptr: Box::new(addr),
            len: Some(Box::new(Expr::Const(len as u64))),
        },
        Access::Place
        | Access::Unresolved
        | Access::Arg { .. }
        | Access::ProbeArg
        | Access::SyscallArg { .. }
        | Access::Retval
        | Access::Const(_) => addr,
    }
}

/// Binary operator with signedness: `s` both operands signed, `strs` for
/// string comparison.
fn op2(op: BinOp, s: bool, strs: bool) -> Op2 {
    match op {
        // Lowered separately (short-circuit); never reached from there.
        BinOp::LogAnd => Op2::And,
        BinOp::LogOr => Op2::Or,
        BinOp::Add => Op2::Add,
        BinOp::Sub => Op2::Sub,
        BinOp::Mul => Op2::Mul,
        BinOp::Div => Op2::Div,
        BinOp::Mod => Op2::Mod,
        BinOp::And => Op2::And,
        BinOp::Or => Op2::Or,
        BinOp::Xor => Op2::Xor,
        BinOp::Shl => Op2::Shl,
        // bpftrace 0.17 shifts right logically even for signed operands
        // (`-16 >> 2` is 4611686018427387900).
        BinOp::Shr => Op2::LShr,
        BinOp::Eq if strs => Op2::StrEq,
        BinOp::Ne if strs => Op2::StrNe,
        BinOp::Eq => Op2::Eq,
        BinOp::Ne => Op2::Ne,
        BinOp::Lt if s => Op2::SLt,
        BinOp::Le if s => Op2::SLe,
        BinOp::Gt if s => Op2::SGt,
        BinOp::Ge if s => Op2::SGe,
        BinOp::Lt => Op2::ULt,
        BinOp::Le => Op2::ULe,
        BinOp::Gt => Op2::UGt,
        BinOp::Ge => Op2::UGe,
    }
}

impl Lower<'_> {
    fn call(&mut self, name: &str, args: &[ast::Expr]) -> Expr {
        let b = |l: &mut Self, i: usize| Box::new(l.expr(&args[i]));
        let lit = |l: &mut Self| match &args[0].kind {
            ExprKind::Str(s) => l.intern(s),
            _ => unreachable!("checked: string literal"),
        };
        let map_of = |l: &mut Self| match &args[0].kind {
            ExprKind::Map { name, .. } => l.map(name),
            _ => unreachable!("checked: map argument"),
        };
        match name {
            "len" => Expr::Len(map_of(self)),
            "has_key" => Expr::HasKey {
                map: map_of(self),
                key: self.key(&args[1..]),
            },
            "str" => Expr::StrRead {
                ptr: b(self, 0),
                len: (args.len() > 1).then(|| b(self, 1)),
            },
            "buf" => Expr::BufRead {
                ptr: b(self, 0),
                len: b(self, 1),
            },
            "ksym" => Expr::Ksym(b(self, 0)),
            "cgroup_path" => Expr::CgroupPath {
                id: b(self, 0),
                unified: match args.get(1).map(|a| &a.kind) {
                    Some(ExprKind::Str(filter)) => wildcard_match(filter, "unified"),
                    Some(_) => unreachable!("checked: string literal"),
                    None => true,
                },
            },
            "kaddr" => Expr::Kaddr(lit(self)),
            "reg" => Expr::Reg(lit(self)),
            "strncmp" => Expr::Strncmp(b(self, 0), b(self, 1), b(self, 2)),
            "kptr" | "uptr" => self.expr(&args[0]),
            "sizeof" => Expr::Const(match &args[0].kind {
                ExprKind::Ident(t) => ast::INT_TYPES
                    .iter()
                    .find(|x| x.0 == t)
                    .map_or(8, |x| x.1 as u64),
                // Every integer expression is 64-bit here.
                _ => 8,
            }),
            "strftime" => Expr::Strftime(lit(self), b(self, 1)),
            "kstack" | "ustack" => {
                let n = match args[0].kind {
                    ExprKind::Int(n) => n,
                    _ => unreachable!("checked: literal frame count"),
                };
                if name == "kstack" {
                    Expr::Kstack(n)
                } else {
                    Expr::Ustack(n)
                }
            }
            "vtop" => Expr::Vtop(b(self, 0), b(self, 1)),
            "str_as" | "buf_as" | "uint_as" => Expr::ReadAs {
                task: b(self, 0),
                addr: b(self, 1),
                kind: match name {
                    "str_as" => ReadAsKind::Str((args.len() > 2).then(|| b(self, 2))),
                    "buf_as" => ReadAsKind::Buf(b(self, 2)),
                    _ => ReadAsKind::Uint(match args[2].kind {
                        ExprKind::Int(n) => n as u8,
                        _ => unreachable!("checked: literal size"),
                    }),
                },
            },
            "ntop" if args.len() == 2 => Expr::Ntop(Some(b(self, 0)), b(self, 1)),
            "ntop" => Expr::Ntop(None, b(self, 0)),
            _ => unreachable!("checked: known function {name}"),
        }
    }
}

impl Ir {
    /// Readable IR listing for `-d`.
    pub fn dump(&self) -> String {
        let mut s = String::from("IR\n maps:\n");
        for (i, m) in self.maps.iter().enumerate() {
            let keys: Vec<&str> = m.keys.iter().map(|t| t.name()).collect();
            let kind = match (m.kind, m.lhist) {
                (AggKind::Value, _) => m.value.name().to_string(),
                (_, Some(l)) => format!("lhist({}, {}, {})", l.min, l.max, l.step),
                (k, None) => k.name().to_string(),
            };
            let _ = writeln!(
                s,
                "  m{i} @{} {}[{}] {}",
                m.name,
                kind,
                keys.join(", "),
                if m.signed { "signed" } else { "unsigned" }
            );
        }
        if !self.self_vars.is_empty() {
            let _ = writeln!(s, " thread-local variables:");
            for (i, (name, ty)) in self.self_vars.iter().enumerate() {
                let _ = writeln!(s, "  self{i} self->{name} {}", ty.name());
            }
        }
        let _ = writeln!(s, " strings:");
        for (i, st) in self.strings.iter().enumerate() {
            let _ = writeln!(s, "  s{i} {st:?}");
        }
        let _ = writeln!(s, " formats:");
        for (i, f) in self.formats.iter().enumerate() {
            let _ = writeln!(s, "  f{i} {:?}", f.to_string());
        }
        for (i, b) in self.blocks.iter().enumerate() {
            let _ = writeln!(s, " block {i} (slots: {})", b.slots);
            if let Some(p) = &b.predicate {
                let _ = writeln!(s, "  predicate {}", dexpr(p));
            }
            dstmts(&mut s, &b.body, 2);
        }
        s
    }
}

fn dkey(k: &KeyExpr) -> String {
    match k {
        KeyExpr::None => String::new(),
        KeyExpr::Single(e) => format!("[{}]", dexpr(e)),
        KeyExpr::Multi(v) => format!("[{}]", v.iter().map(dexpr).collect::<Vec<_>>().join(", ")),
    }
}

fn dexpr(e: &Expr) -> String {
    match e {
        Expr::Const(v) => v.to_string(),
        Expr::Str(i) => format!("s{i}"),
        Expr::Scratch(i) => format!("${i}"),
        Expr::SelfVar(i) => format!("self{i}"),
        Expr::Builtin(b) => format!("{b:?}").to_lowercase(),
        Expr::MapRead { map, key } => format!("m{map}{}", dkey(key)),
        Expr::Unary(op, a) => format!("{op:?}({})", dexpr(a)),
        Expr::Binary(op, a, b) => format!("{op:?}({}, {})", dexpr(a), dexpr(b)),
        Expr::LogAnd(a, b) => format!("LogAnd({}, {})", dexpr(a), dexpr(b)),
        Expr::LogOr(a, b) => format!("LogOr({}, {})", dexpr(a), dexpr(b)),
        Expr::Ternary(c, a, b) => format!("Select({}, {}, {})", dexpr(c), dexpr(a), dexpr(b)),
        Expr::Cast { size, signed, e } => {
            format!(
                "{}int{}({})",
                if *signed { "" } else { "u" },
                *size as u32 * 8,
                dexpr(e)
            )
        }
        Expr::Deref { size, signed, ptr } => {
            format!(
                "load{}{}({})",
                if *signed { "s" } else { "u" },
                *size as u32 * 8,
                dexpr(ptr)
            )
        }
        Expr::Len(m) => format!("len(m{m})"),
        Expr::Tuple(v) => format!("({})", v.iter().map(dexpr).collect::<Vec<_>>().join(", ")),
        Expr::Field(a, n) => format!("{}.{n}", dexpr(a)),
        Expr::Strftime(f, a) => format!("strftime(s{f}, {})", dexpr(a)),
        Expr::ProbeArg(i) => format!("probe_arg(s{i})"),
        Expr::Kstack(n) => format!("kstack({n})"),
        Expr::Ustack(n) => format!("ustack({n})"),
        Expr::Vtop(c, a) => format!("vtop({}, {})", dexpr(c), dexpr(a)),
        Expr::ReadAs { task, addr, kind } => match kind {
            ReadAsKind::Str(None) => format!("str_as({}, {})", dexpr(task), dexpr(addr)),
            ReadAsKind::Str(Some(l)) | ReadAsKind::Buf(l) => format!(
                "{}_as({}, {}, {})",
                if matches!(kind, ReadAsKind::Str(_)) {
                    "str"
                } else {
                    "buf"
                },
                dexpr(task),
                dexpr(addr),
                dexpr(l)
            ),
            ReadAsKind::Uint(n) => format!("uint_as({}, {}, {n})", dexpr(task), dexpr(addr)),
        },
        Expr::HasKey { map, key } => format!("has_key(m{map}{})", dkey(key)),
        Expr::StrRead { ptr, len } => match len {
            Some(l) => format!("str({}, {})", dexpr(ptr), dexpr(l)),
            None => format!("str({})", dexpr(ptr)),
        },
        Expr::BufRead { ptr, len } => format!("buf({}, {})", dexpr(ptr), dexpr(len)),
        Expr::Ksym(a) => format!("ksym({})", dexpr(a)),
        Expr::CgroupPath { id, unified } => {
            format!("cgroup_path({}, unified={unified})", dexpr(id))
        }
        Expr::Kaddr(i) => format!("kaddr(s{i})"),
        Expr::Reg(i) => format!("reg(s{i})"),
        Expr::Strncmp(a, b, n) => format!("strncmp({}, {}, {})", dexpr(a), dexpr(b), dexpr(n)),
        Expr::Ntop(f, a) => match f {
            Some(f) => format!("ntop({}, {})", dexpr(f), dexpr(a)),
            None => format!("ntop({})", dexpr(a)),
        },
    }
}

fn dstmts(s: &mut String, stmts: &[Stmt], d: usize) {
    let ind = " ".repeat(d);
    for st in stmts {
        let _ = match st {
            Stmt::Agg { map, key, op, arg } => writeln!(
                s,
                "{ind}m{map}{} <- {op:?}({})",
                dkey(key),
                arg.as_ref().map(dexpr).unwrap_or_default()
            ),
            Stmt::Printf { fmt, args } => writeln!(
                s,
                "{ind}printf f{fmt}({})",
                args.iter().map(dexpr).collect::<Vec<_>>().join(", ")
            ),
            Stmt::Print { map, top, div } => writeln!(
                s,
                "{ind}print m{map}{}{}",
                top.as_ref()
                    .map(|e| format!(" top {}", dexpr(e)))
                    .unwrap_or_default(),
                div.as_ref()
                    .map(|e| format!(" div {}", dexpr(e)))
                    .unwrap_or_default()
            ),
            Stmt::Clear(m) => writeln!(s, "{ind}clear m{m}"),
            Stmt::Zero(m) => writeln!(s, "{ind}zero m{m}"),
            Stmt::MapSet { map, key, value } => {
                writeln!(s, "{ind}m{map}{} = {}", dkey(key), dexpr(value))
            }
            Stmt::MapUpdate {
                map,
                key,
                op,
                value,
            } => writeln!(s, "{ind}m{map}{} {op:?}= {}", dkey(key), dexpr(value)),
            Stmt::Time(f) => writeln!(s, "{ind}time s{f}"),
            Stmt::Unroll(n, body) => {
                let _ = writeln!(s, "{ind}unroll {n}");
                dstmts(s, body, d + 2);
                Ok(())
            }
            Stmt::While { cond, body } => {
                let _ = writeln!(s, "{ind}while {}", dexpr(cond));
                dstmts(s, body, d + 2);
                Ok(())
            }
            Stmt::Break => writeln!(s, "{ind}break"),
            Stmt::PrintValue(e, _) => writeln!(s, "{ind}print {}", dexpr(e)),
            Stmt::Continue => writeln!(s, "{ind}continue"),
            Stmt::Delete { map, key } => writeln!(s, "{ind}delete m{map}{}", dkey(key)),
            Stmt::Exit => writeln!(s, "{ind}exit"),
            Stmt::TraceProbe => writeln!(s, "{ind}trace probe"),
            Stmt::Trace { site, fields } => {
                let f: Vec<String> = fields
                    .iter()
                    .map(|(n, t, e)| format!("{n}: {t:?} = {}", dexpr(e)))
                    .collect();
                writeln!(s, "{ind}trace site{site} {}", f.join(", "))
            }
            Stmt::Snapshot => writeln!(s, "{ind}snapshot"),
            Stmt::Set(v, e) => writeln!(s, "{ind}${v} = {}", dexpr(e)),
            Stmt::SelfSet(v, e) => writeln!(s, "{ind}self{v} = {}", dexpr(e)),
            Stmt::SelfDelete(v) => writeln!(s, "{ind}delete self{v}"),
            Stmt::If { cond, then, els } => {
                let _ = writeln!(s, "{ind}if {}", dexpr(cond));
                dstmts(s, then, d + 2);
                if !els.is_empty() {
                    let _ = writeln!(s, "{ind}else");
                    dstmts(s, els, d + 2);
                }
                Ok(())
            }
        };
    }
}

/// `*`-only wildcard match, as bpftrace matches `cgroup_path()` filters
/// against hierarchy names.
fn wildcard_match(pattern: &str, name: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or("");
    let Some(mut rest) = name.strip_prefix(first) else {
        return false;
    };
    let parts: Vec<&str> = parts.collect();
    let Some((last, middle)) = parts.split_last() else {
        return rest.is_empty();
    };
    for part in middle {
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

#[cfg(test)]
mod tests {
    use super::wildcard_match;
    use crate::compile;

    #[test]
    fn resolves_names_to_indices_and_signed_ops() {
        let p = compile(
            "kprobe:f { @a = count(); @b[arg0] = sum(1); $x = \"s\"; $y = \"s\"; if (-1 < 1 && arg0 < 1) { @b[-1 >> 1] = sum(arg0 >> 1); } }",
            "t",
        )
        .unwrap();
        let d = p.ir().dump();
        assert!(d.contains("m0 @a count[] unsigned"), "{d}");
        assert!(d.contains("m1 @b sum[integer] signed"), "{d}");
        // Identical string literals are interned once.
        assert_eq!(p.ir().strings.len(), 1);
        assert!(d.contains("LogAnd(SLt(Neg(1), 1), ULt(arg(0), 1))"), "{d}");
        assert!(
            d.contains("m1[LShr(Neg(1), 1)] <- Sum(LShr(arg(0), 1))"),
            "{d}"
        );
        assert!(d.contains("$0 = s0") && d.contains("$1 = s0"), "{d}");
    }

    #[test]
    fn cgroup_path_filters_match_like_bpftrace_wildcards() {
        for (pattern, hit) in [
            ("unified", true),
            ("*", true),
            ("uni*", true),
            ("*fied", true),
            ("u*i*d", true),
            ("", false),
            ("cpu", false),
            ("unified*x", false),
            ("*unifiedx", false),
        ] {
            assert_eq!(wildcard_match(pattern, "unified"), hit, "{pattern}");
        }
    }
}
