//! Statements: control flow (`if`, `while`, `unroll`, `break` outside a
//! loop), scratch variables (`$x`, one type per block) and per-vCPU
//! variables (`self->x`, one type per program). Map statements, calls and
//! `trace()` go to their own files.

use super::{Checker, same_shape};
use crate::ast::{Expr, ExprKind, Stmt, StmtKind, Type};

impl Checker<'_, '_> {
    pub(super) fn stmts(&mut self, stmts: &mut [Stmt]) {
        for s in stmts {
            self.stmt(s);
        }
    }

    fn stmt(&mut self, s: &mut Stmt) {
        match &mut s.kind {
            StmtKind::MapAssign {
                name,
                name_span,
                keys,
                value,
            } => self.map_assign(name, *name_span, keys, value),
            StmtKind::MapUpdate {
                name,
                name_span,
                keys,
                value,
                op,
            } => self.map_update(name, *name_span, keys, *op, value),
            StmtKind::VarAssign { name, value } => {
                self.expr(value);
                if value.ty == Type::Unknown {
                    return;
                }
                let next = self.vars.len() as u16;
                match self.vars.get(name.as_str()) {
                    Some(&(_, t)) if !same_shape(t, value.ty) => {
                        self.var_mismatch(&format!("${name}"), value, t)
                    }
                    Some(_) => {}
                    None => {
                        self.vars.insert(name.clone(), (next, value.ty));
                    }
                }
            }
            StmtKind::SelfAssign { name, value } => self.self_assign(name, value),
            StmtKind::If { cond, then, els } => {
                self.expr(cond);
                self.want_int(cond, "if condition");
                self.stmts(then);
                self.stmts(els);
            }
            StmtKind::Unroll { body, .. } => self.stmts(body),
            StmtKind::While { cond, body } => {
                self.expr(cond);
                self.want_int(cond, "while condition");
                self.loops += 1;
                self.stmts(body);
                self.loops -= 1;
            }
            StmtKind::Break | StmtKind::Continue => {
                if self.loops == 0 {
                    self.r.error(
                        s.span,
                        "break and continue can only be used in a while loop",
                    );
                }
            }
            StmtKind::Call {
                name,
                name_span,
                args,
            } => self.call_stmt(name, *name_span, args, s.span),
            StmtKind::Trace { fields, site } => *site = self.trace(fields, s.span),
        }
    }

    fn var_mismatch(&mut self, var: &str, value: &Expr, t: Type) {
        self.r.error(
            value.span,
            format!(
                "type mismatch for {var}: assigning {} to a variable of type {}",
                value.ty.name(),
                t.name()
            ),
        );
    }

    /// `self->name = value`: one type per name in the whole program, as
    /// scratch variables have per block. A literal `0` clears the variable
    /// (as in DTrace) whatever its type, so it does not fix the type itself
    /// unless nothing else does.
    fn self_assign(&mut self, name: &str, value: &mut Expr) {
        let clears = matches!(value.kind, ExprKind::Int(0));
        // `self->n++` / `self->n += v` on a variable nothing else assigns
        // makes it an integer, as `@m++` does for maps.
        if let ExprKind::Binary(_, lhs, _) = &value.kind
            && matches!(&lhs.kind, ExprKind::SelfVar(n) if n == name)
            && !self.self_vars.contains_key(name)
        {
            let slot = self.self_vars.len() as u16;
            self.self_vars
                .insert(name.to_string(), (slot, Type::SIGNED));
        }
        self.expr(value);
        if value.ty == Type::Unknown {
            return;
        }
        match self.self_vars.get(name) {
            Some(_) if clears => {}
            Some(&(_, t)) if !same_shape(t, value.ty) => {
                self.var_mismatch(&format!("self->{name}"), value, t)
            }
            Some(_) => {}
            None if clears && self.discovering => {}
            None => {
                if matches!(
                    value.ty,
                    Type::Buf | Type::Stack | Type::Kernel { ptr: 0, .. }
                ) {
                    self.r.error(
                        value.span,
                        format!(
                            "a {} cannot be stored in a per-vCPU variable",
                            value.ty.name()
                        ),
                    );
                    return;
                }
                let slot = self.self_vars.len() as u16;
                self.self_vars.insert(name.to_string(), (slot, value.ty));
            }
        }
    }
}
