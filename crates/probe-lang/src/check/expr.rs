//! Expressions: literals, variables, map reads, casts, tuples, operators
//! and the ternary, typed bottom-up. Calls, builtins and kernel-type
//! accesses are delegated to their files.

use super::Checker;
use super::types::unsigned_const;
use crate::ast::{Access, BinOp, Expr, ExprKind, Type, UnOp};
use crate::diag::Span;

impl Checker<'_, '_> {
    /// `uid`/`gid` as bpftrace's `bpf_get_current_uid_gid()` gives them:
    /// the current task's `cred->uid`/`cred->gid`, read through the guest's
    /// BTF as `curtask->cred->uid.val` would be.
    fn cred_id(&mut self, e: &mut Expr) {
        let ExprKind::Ident(name) = &e.kind else {
            return;
        };
        let name = name.clone();
        let has_cred = self.types.is_some_and(|t| {
            t.lookup("struct task_struct")
                .and_then(|task| t.member(task, "cred"))
                .is_some()
        });
        if !has_cred {
            self.r.error(
                e.span,
                format!("{name} needs the guest kernel's BTF (it reads the task's cred->{name})"),
            );
            e.ty = Type::Unknown;
            return;
        }
        let node = |kind| {
            Box::new(Expr {
                kind,
                span: e.span,
                ty: Type::Unknown,
            })
        };
        let member = |base, name: &str, arrow| ExprKind::Member {
            base,
            name: name.to_string(),
            arrow,
            offset: 0,
            access: Access::Unresolved,
        };
        let cred = member(node(ExprKind::Ident("curtask".into())), "cred", true);
        let id = member(node(cred), &name, true);
        e.kind = member(node(id), "val", false);
        self.expr(e);
    }

    /// Types `e` and everything in it, reporting what does not type.
    pub(super) fn expr(&mut self, e: &mut Expr) {
        if let ExprKind::Ident(name) = &e.kind
            && (name == "uid" || name == "gid")
        {
            return self.cred_id(e);
        }
        // `username` is the current uid's name: a lookup of `uid` in the
        // guest's users when the run knows them.
        if let ExprKind::Ident(name) = &e.kind
            && name == "username"
            && self.users
        {
            let uid = Expr {
                kind: ExprKind::Ident("uid".into()),
                span: e.span,
                ty: Type::Unknown,
            };
            e.kind = ExprKind::Call {
                name: "username".into(),
                args: vec![uid],
            };
        }
        if let ExprKind::Deref(a) = &mut e.kind {
            self.expr(a);
            if let Type::Kernel { .. } = a.ty {
                // `*p` on a kernel pointer is `p[0]`.
                let placeholder = Expr {
                    kind: ExprKind::Int(0),
                    span: a.span,
                    ty: Type::SIGNED,
                };
                let base = std::mem::replace(&mut **a, placeholder);
                let mut index = Expr {
                    kind: ExprKind::Int(0),
                    span: base.span,
                    ty: Type::Unknown,
                };
                self.expr(&mut index);
                e.kind = ExprKind::Index {
                    base: Box::new(base),
                    index: Box::new(index),
                    elem_size: 0,
                    access: Access::Unresolved,
                };
                e.ty = self.kernel_access(e, true);
            } else {
                // bpftrace reads a u64 at an integer address (`*kaddr("x")`).
                if let Type::Int { .. } = a.ty {
                    a.ty = Type::Ptr {
                        size: 8,
                        signed: false,
                    };
                }
                let t = a.ty;
                e.ty = self.deref_type(t, e.span);
            }
            return;
        }
        if self.all_kretfunc && matches!(&e.kind, ExprKind::Ident(n) if n == "retval") {
            e.ty = self.kretfunc_retval(e);
            return;
        }
        e.ty = match &mut e.kind {
            ExprKind::Int(_) => Type::SIGNED,
            ExprKind::Str(_) => Type::Str,
            ExprKind::Var(name) => match self.vars.get(name.as_str()) {
                Some(&(_, t)) => t,
                None => {
                    self.r
                        .error(e.span, format!("undefined variable '${name}'"));
                    Type::Unknown
                }
            },
            ExprKind::Ident(name) => match self.enumerator(name) {
                // As bpftrace takes an enum from BTF for an enumerator the
                // program names: a constant.
                Some(v) => {
                    e.kind = ExprKind::Int(v as u64);
                    Type::SIGNED
                }
                None => self.builtin(name, e.span),
            },
            ExprKind::SelfVar(name) => match self.self_vars.get(name.as_str()) {
                Some(&(_, t)) => t,
                None => {
                    self.r.error(
                        e.span,
                        format!("undefined variable 'self->{name}' (it is never assigned)"),
                    );
                    Type::Unknown
                }
            },
            ExprKind::Map { name, keys } => self.map_read(name, keys, e.span),
            ExprKind::Call { name, args } => {
                let name = name.clone();
                self.call_expr(&name, args, e.span)
            }
            ExprKind::Cast {
                size,
                signed,
                ptr,
                expr,
            } => {
                self.expr(expr);
                self.want_int(expr, "operand of a cast");
                match (expr.ty.is_int(), *ptr) {
                    (false, _) => Type::Unknown,
                    (true, true) => Type::Ptr {
                        size: *size,
                        signed: *signed,
                    },
                    (true, false) => Type::Int { signed: *signed },
                }
            }
            ExprKind::Tuple(elems) => {
                let mut tys = Vec::new();
                for el in elems.iter_mut() {
                    self.expr(el);
                    tys.push(el.ty);
                    if el.ty == Type::Buf {
                        self.r.error(el.span, "a buffer cannot be part of a tuple");
                    }
                    if let Type::Kernel { ptr: 0, .. } = el.ty {
                        self.r.error(el.span, "a struct cannot be part of a tuple");
                    }
                }
                if tys
                    .iter()
                    .any(|t| matches!(t, Type::Unknown | Type::Buf | Type::Kernel { ptr: 0, .. }))
                {
                    Type::Unknown
                } else {
                    let tys: Vec<Type> = tys.into_iter().map(Type::as_int).collect();
                    let id = match self.tuples.iter().position(|t| *t == tys) {
                        Some(i) => i,
                        None => {
                            self.tuples.push(tys);
                            self.tuples.len() - 1
                        }
                    };
                    Type::Tuple(id as u32)
                }
            }
            ExprKind::Field(a, n) => {
                self.expr(a);
                match a.ty {
                    Type::Unknown => Type::Unknown,
                    Type::Tuple(id) => {
                        let tys = &self.tuples[id as usize];
                        match tys.get(*n as usize) {
                            Some(t) => *t,
                            None => {
                                let m = format!(
                                    "tuple index {n} out of range (the tuple has {} elements)",
                                    tys.len()
                                );
                                self.r.error(e.span, m);
                                Type::Unknown
                            }
                        }
                    }
                    t => {
                        self.r.error(
                            e.span,
                            format!("cannot access field .{n} of a value of type {}", t.name()),
                        );
                        Type::Unknown
                    }
                }
            }
            ExprKind::Member { .. } | ExprKind::Index { .. } => self.kernel_access(e, true),
            ExprKind::KCast { ty, ptr, expr } => {
                self.expr(expr);
                self.want_int(expr, "operand of a cast");
                let (ty, ptr) = (ty.clone(), *ptr);
                match self.lookup(&ty, e.span) {
                    Some(id) => self.norm(id, ptr),
                    None => Type::Unknown,
                }
            }
            ExprKind::SizeofType(ty) => {
                let ty = ty.clone();
                match self.lookup(&ty, e.span).map(|id| (id, self.size_of(id))) {
                    Some((_, Some(n))) => {
                        e.kind = unsigned_const(n, e.span);
                        Type::UNSIGNED
                    }
                    Some((_, None)) => {
                        self.r.error(e.span, format!("'{ty}' has no size"));
                        Type::Unknown
                    }
                    None => Type::Unknown,
                }
            }
            ExprKind::Offsetof(ty, path) => {
                let (ty, path) = (ty.clone(), path.clone());
                match self.offsetof(&ty, &path, e.span) {
                    Some(n) => {
                        e.kind = unsigned_const(n, e.span);
                        Type::UNSIGNED
                    }
                    None => Type::Unknown,
                }
            }
            ExprKind::Deref(_) => unreachable!("handled above"),
            ExprKind::Unary(op, a) => {
                self.expr(a);
                self.want_int(
                    a,
                    &format!(
                        "operand of '{}'",
                        match op {
                            UnOp::Neg => "-",
                            UnOp::Not => "!",
                            UnOp::BitNot => "~",
                        }
                    ),
                );
                match (op, a.ty) {
                    (_, t) if !t.is_int() => Type::Unknown,
                    (UnOp::Not, _) => Type::SIGNED,
                    (_, t) => t.as_int(),
                }
            }
            ExprKind::Binary(op, a, b) => {
                self.expr(a);
                self.expr(b);
                let op = *op;
                let pointer = self.kernel_pointer_arithmetic(op, a, b);
                match (a.ty, b.ty) {
                    _ if pointer.is_some() => pointer.unwrap_or(Type::Unknown),
                    (Type::Unknown, _) | (_, Type::Unknown) => Type::Unknown,
                    (Type::Str, Type::Str) if matches!(op, BinOp::Eq | BinOp::Ne) => Type::SIGNED,
                    // C pointer arithmetic: `p + n` / `p - n` stay pointers.
                    (p @ Type::Ptr { .. }, Type::Int { .. })
                        if matches!(op, BinOp::Add | BinOp::Sub) =>
                    {
                        p
                    }
                    (x, y) if x.is_int() && y.is_int() => {
                        let (x, y) = (x == Type::SIGNED, y == Type::SIGNED);
                        match op {
                            BinOp::Eq
                            | BinOp::Ne
                            | BinOp::Lt
                            | BinOp::Le
                            | BinOp::Gt
                            | BinOp::Ge
                            | BinOp::LogAnd
                            | BinOp::LogOr => Type::SIGNED,
                            BinOp::Shl | BinOp::Shr => Type::Int { signed: x },
                            // C's usual arithmetic conversions for 64-bit operands.
                            _ => Type::Int { signed: x && y },
                        }
                    }
                    (x, y) => {
                        self.r.error(
                            e.span,
                            format!(
                                "operator '{}' cannot be applied to {} and {}",
                                op.symbol(),
                                x.name(),
                                y.name()
                            ),
                        );
                        Type::Unknown
                    }
                }
            }
            ExprKind::Ternary(c, a, b) => {
                self.expr(c);
                self.want_int(c, "ternary condition");
                self.expr(a);
                self.expr(b);
                match (a.ty, b.ty) {
                    (Type::Unknown, _) | (_, Type::Unknown) => Type::Unknown,
                    (x, y) if x.is_int() && y.is_int() => Type::Int {
                        signed: x == Type::SIGNED && y == Type::SIGNED,
                    },
                    (Type::Str, Type::Str) => Type::Str,
                    (x, y) => {
                        self.r.error(
                            e.span,
                            format!(
                                "ternary branches have different types: {} and {}",
                                x.name(),
                                y.name()
                            ),
                        );
                        Type::Unknown
                    }
                }
            }
        };
    }

    fn deref_type(&mut self, t: Type, span: Span) -> Type {
        match t {
            Type::Ptr { signed, .. } => Type::Int { signed },
            Type::Unknown => Type::Unknown,
            t => {
                self.r.error(
                    span,
                    format!(
                        "cannot dereference a value of type {} (cast it first, e.g. *(uint64 *)addr)",
                        t.name()
                    ),
                );
                Type::Unknown
            }
        }
    }
}
