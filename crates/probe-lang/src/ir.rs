//! The compact resolved IR that lowering (pass 4, `lower.rs`) makes of the
//! checked AST.
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

use crate::ast::Type;
use crate::check::{AggKind, LhistParams, MapDecl, TraceSite, TraceType};
use crate::format::Format;
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
    /// `join(argv[, delim])`'s text: the strings of a NULL-ended array of
    /// at most [`JOIN_ARGS`] pointers, separated by string `delim`.
    Join {
        ptr: Box<Expr>,
        delim: u32,
    },
    Ksym(Box<Expr>),
    /// The user function holding an address in the current task (`usym`).
    Usym(Box<Expr>),
    /// The name of a uid in the guest's /etc/passwd ([`Ir::users`]), or
    /// "" (bpftrace's `username`).
    Username(Box<Expr>),
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
    /// `bswap(e)`: the low `size` bytes of `e` in reverse order.
    Bswap {
        size: u8,
        e: Box<Expr>,
    },
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

/// bpftrace's bounds for `join()`: 16 elements of at most 1024 bytes.
pub const JOIN_ARGS: u64 = 16;
pub const JOIN_ARG_MAX: u64 = 1024;

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
    /// Bytes a string holds, its NUL included: bpftrace's BPFTRACE_STRLEN.
    pub str_len: u64,
    /// The guest's users (uid, name), as its /etc/passwd lists them, for
    /// `username` ([`crate::Options::users`]).
    #[serde(default)]
    pub users: Vec<(u64, Arc<str>)>,
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
        Expr::Join { ptr, delim } => format!("join({}, s{delim})", dexpr(ptr)),
        Expr::Ksym(a) => format!("ksym({})", dexpr(a)),
        Expr::Usym(a) => format!("usym({})", dexpr(a)),
        Expr::Username(a) => format!("username({})", dexpr(a)),
        Expr::Bswap { size, e } => format!("bswap{}({})", *size as u32 * 8, dexpr(e)),
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
