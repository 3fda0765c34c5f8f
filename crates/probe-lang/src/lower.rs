//! Pass 4: lowering of the checked AST into the resolved IR (`ir.rs`).

use crate::ast::{self, Access, BinOp, ExprKind, StmtKind, Type, UnOp};
use crate::check::{AggKind, Checked, MapDecl, TraceSite};
use crate::format::Format;
use crate::ir::*;
use rustc_hash::FxHashMap;
use std::sync::Arc;

struct Lower<'a> {
    maps: &'a FxHashMap<String, usize>,
    traces: &'a [TraceSite],
    decls: &'a [MapDecl],
    vars: &'a FxHashMap<String, (u16, Type)>,
    self_vars: &'a [(String, Type)],
    strings: &'a mut Vec<Arc<str>>,
    string_ids: &'a mut FxHashMap<String, u32>,
    formats: &'a mut Vec<Format>,
    bswaps: &'a FxHashMap<(u32, u32), u8>,
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
            bswaps: &checked.bswaps,
        };
        blocks.push(Block {
            predicate: b.predicate.as_ref().map(|p| l.expr(p)),
            body: l.stmts(&b.body),
            slots: vars.len() as u16,
        });
    }
    Ir {
        str_len: crate::check::STR_MAX,
        users: Vec::new(),
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
                    // bpftrace prints the joined strings and a newline.
                    "join" => {
                        let delim = match args.get(1).map(|a| &a.kind) {
                            Some(ExprKind::Str(d)) => d.as_str(),
                            _ => " ",
                        };
                        let delim = self.intern(delim);
                        self.formats
                            .push(Format::parse("%s\n").expect("a valid format"));
                        Stmt::Printf {
                            fmt: self.formats.len() as u32 - 1,
                            args: vec![Expr::Join {
                                ptr: Box::new(self.expr(&args[0])),
                                delim,
                            }],
                        }
                    }
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
            ExprKind::Call { name, args } => self.call(name, args, e.span),
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
    fn call(&mut self, name: &str, args: &[ast::Expr], span: crate::diag::Span) -> Expr {
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
            "usym" => Expr::Usym(b(self, 0)),
            "username" => Expr::Username(b(self, 0)),
            "bswap" => Expr::Bswap {
                size: self
                    .bswaps
                    .get(&(span.start, span.end))
                    .copied()
                    .unwrap_or(8),
                e: b(self, 0),
            },
            "cgroup_path" => Expr::CgroupPath {
                id: b(self, 0),
                unified: match args.get(1).map(|a| &a.kind) {
                    Some(ExprKind::Str(filter)) => wildcard_match(filter, "unified"),
                    Some(_) => unreachable!("checked: string literal"),
                    None => true,
                },
            },
            "kaddr" => Expr::Kaddr(lit(self)),
            "reg" => Expr::Reg(match &args[0].kind {
                ExprKind::Str(s) => self.intern(crate::check::register_name(s)),
                _ => unreachable!("checked: string literal"),
            }),
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

/// `*`-only wildcard match, as bpftrace matches `cgroup_path()` filters
/// against hierarchy names.
pub(crate) fn wildcard_match(pattern: &str, name: &str) -> bool {
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
