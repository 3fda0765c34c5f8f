//! The abstract syntax tree produced by the parser. Every node has a byte
//! span; expression nodes get their type filled in by the checker.

use crate::diag::Span;
use std::fmt::Write;

#[derive(Clone, Debug)]
pub struct Ast {
    pub probes: Vec<ProbeBlock>,
    /// What the `#include`s could not give, for unknown identifiers.
    pub headers: crate::preprocess::HeaderNotes,
}

#[derive(Clone, Debug)]
pub struct ProbeBlock {
    /// Raw attach point text with span, e.g. `kprobe:vfs_read+4`.
    pub attach: Vec<(String, Span)>,
    pub predicate: Option<Expr>,
    pub body: Vec<Stmt>,
}

/// Value types of the language. Integers are 64-bit; signedness only
/// affects comparison, avg/min/max and how values are printed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Type {
    Unknown,
    Int {
        signed: bool,
    },
    Str,
    /// Bytes from `buf(ptr, len)`; printed with `%r`.
    Buf,
    /// A guest pointer to an integer of `size` bytes (from a cast such as
    /// `(uint32 *)arg0`); `*p` reads it, `p + n` advances `n * size` bytes.
    Ptr {
        size: u8,
        signed: bool,
    },
    /// A tuple; the index is into the checker's tuple type table
    /// (`Checked::tuples`), so `Type` stays `Copy`.
    Tuple(u32),
    /// `kstack`: printed one frame per line.
    Stack,
    /// A guest kernel type (from the [`crate::types::KernelTypes`]
    /// provider): `ptr` levels of pointer to type `id`. With `ptr == 0` it
    /// is a struct, union or array in guest memory, whose value at run time
    /// is its address (a place, not loaded).
    Kernel {
        id: u32,
        ptr: u8,
    },
}

impl Type {
    pub const SIGNED: Type = Type::Int { signed: true };
    pub const UNSIGNED: Type = Type::Int { signed: false };
    pub fn name(self) -> &'static str {
        match self {
            Type::Unknown => "unknown",
            Type::Int { .. } => "integer",
            Type::Str => "string",
            Type::Buf => "buffer",
            Type::Ptr { .. } => "pointer",
            Type::Tuple(_) => "tuple",
            Type::Stack => "stack",
            Type::Kernel { ptr: 0, .. } => "struct",
            Type::Kernel { .. } => "pointer",
        }
    }
    /// Integers and pointers (a pointer is an address, usable as one).
    pub fn is_int(self) -> bool {
        matches!(self, Type::Int { .. } | Type::Ptr { .. }) || self.is_kernel_ptr()
    }
    /// A kernel pointer (`Type::Kernel` with at least one `*`).
    pub fn is_kernel_ptr(self) -> bool {
        matches!(self, Type::Kernel { ptr: 1.., .. })
    }
    /// The integer type a value of this type behaves as in arithmetic.
    pub fn as_int(self) -> Type {
        match self {
            Type::Ptr { .. } | Type::Kernel { ptr: 1.., .. } => Type::UNSIGNED,
            t => t,
        }
    }
}

#[derive(Clone, Debug)]
pub struct Expr {
    pub kind: ExprKind,
    pub span: Span,
    pub ty: Type,
}

#[derive(Clone, Debug)]
pub enum ExprKind {
    Int(u64),
    Str(String),
    Var(String),
    /// Builtin identifier such as `arg0`, `func`.
    Ident(String),
    Map {
        name: String,
        keys: Vec<Expr>,
    },
    /// Function call used as expression (aggregation functions, or an
    /// unknown function that the checker rejects).
    Call {
        name: String,
        args: Vec<Expr>,
    },
    Unary(UnOp, Box<Expr>),
    Binary(BinOp, Box<Expr>, Box<Expr>),
    Ternary(Box<Expr>, Box<Expr>, Box<Expr>),
    /// `(uint32)e` (an integer of `size` bytes) or `(uint32 *)e` (`ptr`).
    Cast {
        size: u8,
        signed: bool,
        ptr: bool,
        expr: Box<Expr>,
    },
    /// `*e` on a pointer.
    Deref(Box<Expr>),
    /// `(a, b, ...)`, two or more elements.
    Tuple(Vec<Expr>),
    /// `t.N`
    Field(Box<Expr>, u32),
    /// `e.name` / `e->name` on a kernel struct, or `args.name`.
    Member {
        base: Box<Expr>,
        name: String,
        arrow: bool,
        /// Filled in by the checker: byte offset and how to read it.
        offset: u64,
        access: Access,
    },
    /// `e[i]` on a kernel array or pointer.
    Index {
        base: Box<Expr>,
        index: Box<Expr>,
        /// Filled in by the checker.
        elem_size: u64,
        access: Access,
    },
    /// `(struct task_struct *)e`: `ty` is the C name, `ptr` the stars.
    KCast {
        ty: String,
        ptr: u8,
        expr: Box<Expr>,
    },
    /// `sizeof(struct file)`.
    SizeofType(String),
    /// `offsetof(struct task_struct, comm)` (a `.`-separated member path).
    Offsetof(String, Vec<String>),
    /// `self->name`: a thread-local variable (DTrace's), one per guest thread.
    SelfVar(String),
}

/// How a kernel member/element is read; decided by the checker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    Unresolved,
    /// A scalar (integer, enum, pointer) of `size` bytes.
    Load {
        size: u8,
        signed: bool,
    },
    /// A bitfield: `size` bytes loaded, shifted right, masked to `width`.
    Bits {
        size: u8,
        shift: u8,
        width: u8,
        signed: bool,
    },
    /// A `char` array, read as a string of at most `len` bytes.
    Str {
        len: u32,
    },
    /// A struct, union or array: its address.
    Place,
    /// `args.NAME` of a kprobe: argument register `index`, `size` bytes.
    Arg {
        index: u8,
        size: u8,
        signed: bool,
    },
    /// `args.NAME` of a `vmm:`/`host:tracepoint:` probe.
    ProbeArg,
    /// `args.NAME` of a guest `syscalls:sys_enter_*` tracepoint: the
    /// syscall argument saved in the `struct pt_regs` whose address is the
    /// probed `__x64_sys_NAME`'s argument (arg0), `offset` bytes into it.
    /// All 8 bytes, as tracefs stores each argument (an `unsigned long`).
    SyscallArg {
        offset: u16,
    },
    /// `args.ret` of a `syscalls:sys_exit_*` tracepoint: the return value.
    Retval,
    /// A value known when compiling (`args.__syscall_nr`).
    Const(u64),
}

/// Integer type names usable in casts: (name, size, signed).
pub const INT_TYPES: &[(&str, u8, bool)] = &[
    ("int8", 1, true),
    ("int16", 2, true),
    ("int32", 4, true),
    ("int64", 8, true),
    ("uint8", 1, false),
    ("uint16", 2, false),
    ("uint32", 4, false),
    ("uint64", 8, false),
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnOp {
    Neg,
    Not,
    BitNot,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BinOp {
    Add,
    Sub,
    Mul,
    Div,
    Mod,
    And,
    Or,
    Xor,
    Shl,
    Shr,
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    LogAnd,
    LogOr,
}

impl BinOp {
    pub fn symbol(self) -> &'static str {
        use BinOp::*;
        match self {
            Add => "+",
            Sub => "-",
            Mul => "*",
            Div => "/",
            Mod => "%",
            And => "&",
            Or => "|",
            Xor => "^",
            Shl => "<<",
            Shr => ">>",
            Eq => "==",
            Ne => "!=",
            Lt => "<",
            Le => "<=",
            Gt => ">",
            Ge => ">=",
            LogAnd => "&&",
            LogOr => "||",
        }
    }
}

#[derive(Clone, Debug)]
pub struct Stmt {
    pub kind: StmtKind,
    pub span: Span,
}

#[derive(Clone, Debug)]
pub enum StmtKind {
    /// `@m[keys] = value;`
    MapAssign {
        name: String,
        name_span: Span,
        keys: Vec<Expr>,
        value: Expr,
    },
    /// `$x = value;`
    VarAssign {
        name: String,
        value: Expr,
    },
    /// A call statement: `printf(..)`, `print(@m)`, `exit()`, ...
    Call {
        name: String,
        name_span: Span,
        args: Vec<Expr>,
    },
    If {
        cond: Expr,
        then: Vec<Stmt>,
        els: Vec<Stmt>,
    },
    /// `@m[keys] op= value;`, `@m[keys]++` (op `Add`, value 1): a
    /// read-modify-write of an integer map value.
    MapUpdate {
        name: String,
        name_span: Span,
        keys: Vec<Expr>,
        op: BinOp,
        value: Expr,
    },
    /// `unroll (N) { .. }`: the body N times (N a literal, 1..=100).
    Unroll {
        count: u64,
        body: Vec<Stmt>,
    },
    /// `while (cond) { .. }`, bounded by the per-run step budget.
    While {
        cond: Expr,
        body: Vec<Stmt>,
    },
    Break,
    Continue,
    /// `trace()` (the probe's own fields) or `trace(name = expr, ...)`
    /// (`vmprobe record`). `site` numbers the call sites with fields; the
    /// checker fills it in.
    Trace {
        fields: Vec<TraceArg>,
        site: Option<u32>,
    },
    /// `self->name = value;` (`op=`, `++`, `--` desugared as for `$x`).
    SelfAssign {
        name: String,
        value: Expr,
    },
}

/// One argument of `trace(...)`: `name = value`, or a bare value (which the
/// checker rejects, with its position).
#[derive(Clone, Debug)]
pub struct TraceArg {
    pub name: Option<(String, Span)>,
    pub value: Expr,
}

impl Ast {
    /// Readable indented dump (for `-d`).
    pub fn dump(&self) -> String {
        let mut s = String::from("AST\n");
        for p in &self.probes {
            let names: Vec<&str> = p.attach.iter().map(|a| a.0.as_str()).collect();
            let _ = writeln!(s, " probe {}", names.join(","));
            if let Some(pred) = &p.predicate {
                let _ = writeln!(s, "  predicate");
                dump_expr(&mut s, pred, 3);
            }
            dump_stmts(&mut s, &p.body, 2);
        }
        s
    }
}

fn dump_stmts(s: &mut String, stmts: &[Stmt], d: usize) {
    for st in stmts {
        let ind = " ".repeat(d);
        match &st.kind {
            StmtKind::MapAssign {
                name, keys, value, ..
            } => {
                let _ = writeln!(s, "{ind}= @{name}");
                for k in keys {
                    dump_expr(s, k, d + 2);
                }
                dump_expr(s, value, d + 1);
            }
            StmtKind::VarAssign { name, value } => {
                let _ = writeln!(s, "{ind}= ${name}");
                dump_expr(s, value, d + 1);
            }
            StmtKind::Call { name, args, .. } => {
                let _ = writeln!(s, "{ind}call {name}");
                for a in args {
                    dump_expr(s, a, d + 1);
                }
            }
            StmtKind::MapUpdate {
                name,
                keys,
                op,
                value,
                ..
            } => {
                let _ = writeln!(s, "{ind}{}= @{name}", op.symbol());
                for k in keys {
                    dump_expr(s, k, d + 2);
                }
                dump_expr(s, value, d + 1);
            }
            StmtKind::Unroll { count, body } => {
                let _ = writeln!(s, "{ind}unroll {count}");
                dump_stmts(s, body, d + 1);
            }
            StmtKind::While { cond, body } => {
                let _ = writeln!(s, "{ind}while");
                dump_expr(s, cond, d + 1);
                dump_stmts(s, body, d + 1);
            }
            StmtKind::Break => {
                let _ = writeln!(s, "{ind}break");
            }
            StmtKind::Continue => {
                let _ = writeln!(s, "{ind}continue");
            }
            StmtKind::Trace { fields, .. } => {
                let _ = writeln!(s, "{ind}trace");
                for f in fields {
                    if let Some((n, _)) = &f.name {
                        let _ = writeln!(s, "{ind} {n} =");
                    }
                    dump_expr(s, &f.value, d + 2);
                }
            }
            StmtKind::SelfAssign { name, value } => {
                let _ = writeln!(s, "{ind}= self->{name}");
                dump_expr(s, value, d + 1);
            }
            StmtKind::If { cond, then, els } => {
                let _ = writeln!(s, "{ind}if");
                dump_expr(s, cond, d + 1);
                let _ = writeln!(s, "{ind} then");
                dump_stmts(s, then, d + 2);
                if !els.is_empty() {
                    let _ = writeln!(s, "{ind} else");
                    dump_stmts(s, els, d + 2);
                }
            }
        }
    }
}

fn dump_expr(s: &mut String, e: &Expr, d: usize) {
    let ind = " ".repeat(d);
    match &e.kind {
        ExprKind::Int(v) => {
            let _ = writeln!(s, "{ind}int: {v}");
        }
        ExprKind::Str(v) => {
            let _ = writeln!(s, "{ind}string: {v:?}");
        }
        ExprKind::Var(v) => {
            let _ = writeln!(s, "{ind}variable: ${v}");
        }
        ExprKind::Ident(v) => {
            let _ = writeln!(s, "{ind}builtin: {v}");
        }
        ExprKind::Map { name, keys } => {
            let _ = writeln!(s, "{ind}map: @{name}");
            for k in keys {
                dump_expr(s, k, d + 1);
            }
        }
        ExprKind::Call { name, args } => {
            let _ = writeln!(s, "{ind}call: {name}");
            for a in args {
                dump_expr(s, a, d + 1);
            }
        }
        ExprKind::Unary(op, a) => {
            let _ = writeln!(s, "{ind}unop: {op:?}");
            dump_expr(s, a, d + 1);
        }
        ExprKind::Binary(op, a, b) => {
            let _ = writeln!(s, "{ind}{}", op.symbol());
            dump_expr(s, a, d + 1);
            dump_expr(s, b, d + 1);
        }
        ExprKind::Cast {
            size,
            signed,
            ptr,
            expr,
        } => {
            let star = if *ptr { " *" } else { "" };
            let u = if *signed { "" } else { "u" };
            let _ = writeln!(s, "{ind}cast: {u}int{}{star}", *size as u32 * 8);
            dump_expr(s, expr, d + 1);
        }
        ExprKind::Deref(a) => {
            let _ = writeln!(s, "{ind}deref");
            dump_expr(s, a, d + 1);
        }
        ExprKind::Tuple(v) => {
            let _ = writeln!(s, "{ind}tuple");
            for e in v {
                dump_expr(s, e, d + 1);
            }
        }
        ExprKind::Field(a, n) => {
            let _ = writeln!(s, "{ind}field .{n}");
            dump_expr(s, a, d + 1);
        }
        ExprKind::Member {
            base, name, arrow, ..
        } => {
            let _ = writeln!(s, "{ind}{}{name}", if *arrow { "->" } else { "." });
            dump_expr(s, base, d + 1);
        }
        ExprKind::Index { base, index, .. } => {
            let _ = writeln!(s, "{ind}[]");
            dump_expr(s, base, d + 1);
            dump_expr(s, index, d + 1);
        }
        ExprKind::KCast { ty, ptr, expr } => {
            let _ = writeln!(s, "{ind}cast: {ty} {}", "*".repeat(*ptr as usize));
            dump_expr(s, expr, d + 1);
        }
        ExprKind::SizeofType(t) => {
            let _ = writeln!(s, "{ind}sizeof: {t}");
        }
        ExprKind::Offsetof(t, path) => {
            let _ = writeln!(s, "{ind}offsetof: {t}, {}", path.join("."));
        }
        ExprKind::SelfVar(v) => {
            let _ = writeln!(s, "{ind}thread-local variable: self->{v}");
        }
        ExprKind::Ternary(c, a, b) => {
            let _ = writeln!(s, "{ind}?:");
            dump_expr(s, c, d + 1);
            dump_expr(s, a, d + 1);
            dump_expr(s, b, d + 1);
        }
    }
}
