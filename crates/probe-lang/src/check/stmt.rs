//! Statements: control flow (`if`, `while`, `unroll`, `break` outside a
//! loop), scratch variables (`$x`, one type per block) and thread-local
//! variables (`self->x`, one type per program). Map statements, calls and
//! `trace()` go to their own files.

use super::{Checker, same_shape};
use crate::ast::{Expr, ExprKind, Stmt, StmtKind, Type};
use crate::diag::Span;

/// Scratch and thread-local variables live in slots numbered by a `u16`, and
/// a block's slot count is a `u16` too: past this, a count wraps to 0 or
/// two variables share a slot.
const MAX_VARS: usize = u16::MAX as usize;

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
                    None if self.vars.len() >= MAX_VARS => self.r.error(
                        s.span,
                        format!("too many scratch variables in one block (at most {MAX_VARS})"),
                    ),
                    None => {
                        self.vars.insert(name.clone(), (next, value.ty));
                        let size = self.int_size(value);
                        self.var_sizes.insert(name.clone(), size);
                    }
                }
            }
            StmtKind::SelfAssign { name, value } => self.self_assign(name, value, s.span),
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
    fn self_assign(&mut self, name: &str, value: &mut Expr, span: Span) {
        let clears = matches!(value.kind, ExprKind::Int(0));
        // `self->n++` / `self->n += v` on a variable nothing else assigns
        // makes it an integer, as `@m++` does for maps.
        if let ExprKind::Binary(_, lhs, _) = &value.kind
            && matches!(&lhs.kind, ExprKind::SelfVar(n) if n == name)
            && !self.self_vars.contains_key(name)
            && !self.new_self_var(name, Type::SIGNED, span)
        {
            return;
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
                            "a {} cannot be stored in a thread-local variable",
                            value.ty.name()
                        ),
                    );
                    return;
                }
                self.new_self_var(name, value.ty, span);
            }
        }
    }

    /// Gives thread-local variable `name` the next slot; false (reported at
    /// `span`) when there is none left.
    fn new_self_var(&mut self, name: &str, ty: Type, span: Span) -> bool {
        if self.self_vars.len() >= MAX_VARS {
            self.r.error(
                span,
                format!("too many thread-local variables (at most {MAX_VARS})"),
            );
            return false;
        }
        let slot = self.self_vars.len() as u16;
        self.self_vars.insert(name.to_string(), (slot, ty));
        true
    }
}

#[cfg(test)]
mod tests {
    fn first_error(src: &str) -> Option<String> {
        crate::compile(src, "t.bt")
            .err()
            .map(|d| d.to_string().lines().next().unwrap_or("").to_string())
    }

    /// `n` assignments `{prefix}vI = 1;` in one block.
    fn assignments(prefix: &str, n: usize) -> String {
        let body: String = (0..n).map(|i| format!("{prefix}v{i} = 1; ")).collect();
        format!("BEGIN {{ {body} }}")
    }

    #[test]
    fn variable_slots_do_not_wrap() {
        // 65536 scratch variables made a block's slot count 0 (a panic
        // when run); a 65537th thread-local variable shared slot 0.
        assert_eq!(first_error(&assignments("$", 65535)), None);
        for (prefix, what, n) in [("$", "scratch", 65536), ("self->", "thread-local", 65537)] {
            let e = first_error(&assignments(prefix, n))
                .unwrap_or_else(|| panic!("{n} {what} variables compiled"));
            assert!(e.contains(&format!("too many {what} variables")), "{e}");
        }
    }
}
