//! A read-only walk over the AST, for the passes that look at every
//! statement and expression without changing them (`consts`, `needs`).
//!
//! As with syn's and rust-analyzer's visitors, a pass overrides the
//! `visit_*` methods it cares about and calls the matching `walk_*`
//! function to go on into the children (before or after its own work), so
//! which children a node has is written once, here. The checker and the
//! lowering do not use it: both rewrite or build from each node, in an
//! order of their own.

use crate::ast::{Expr, ExprKind, ProbeBlock, Stmt, StmtKind};

pub(crate) trait Visitor {
    fn visit_stmt(&mut self, s: &Stmt) {
        walk_stmt(self, s);
    }

    fn visit_expr(&mut self, e: &Expr) {
        walk_expr(self, e);
    }
}

/// A probe block: its predicate, then its body.
pub(crate) fn walk_block<V: Visitor + ?Sized>(v: &mut V, block: &ProbeBlock) {
    if let Some(p) = &block.predicate {
        v.visit_expr(p);
    }
    walk_stmts(v, &block.body);
}

pub(crate) fn walk_stmts<V: Visitor + ?Sized>(v: &mut V, stmts: &[Stmt]) {
    for s in stmts {
        v.visit_stmt(s);
    }
}

/// The statement's expressions and statements, in source order.
pub(crate) fn walk_stmt<V: Visitor + ?Sized>(v: &mut V, s: &Stmt) {
    match &s.kind {
        StmtKind::MapAssign { keys, value, .. } | StmtKind::MapUpdate { keys, value, .. } => {
            keys.iter().for_each(|k| v.visit_expr(k));
            v.visit_expr(value);
        }
        StmtKind::VarAssign { value, .. } | StmtKind::SelfAssign { value, .. } => {
            v.visit_expr(value)
        }
        StmtKind::Call { args, .. } => args.iter().for_each(|a| v.visit_expr(a)),
        StmtKind::If { cond, then, els } => {
            v.visit_expr(cond);
            walk_stmts(v, then);
            walk_stmts(v, els);
        }
        StmtKind::Unroll { body, .. } => walk_stmts(v, body),
        StmtKind::While { cond, body } => {
            v.visit_expr(cond);
            walk_stmts(v, body);
        }
        StmtKind::Trace { fields, .. } => fields.iter().for_each(|f| v.visit_expr(&f.value)),
        StmtKind::Break | StmtKind::Continue => {}
    }
}

/// The expression's operands, in source order.
pub(crate) fn walk_expr<V: Visitor + ?Sized>(v: &mut V, e: &Expr) {
    match &e.kind {
        ExprKind::Int(_)
        | ExprKind::Str(_)
        | ExprKind::Var(_)
        | ExprKind::Ident(_)
        | ExprKind::SizeofType(_)
        | ExprKind::Offsetof(..)
        | ExprKind::SelfVar(_) => {}
        ExprKind::Map { keys, .. } => keys.iter().for_each(|k| v.visit_expr(k)),
        ExprKind::Call { args, .. } => args.iter().for_each(|a| v.visit_expr(a)),
        ExprKind::Unary(_, a) | ExprKind::Field(a, _) | ExprKind::Deref(a) => v.visit_expr(a),
        ExprKind::Cast { expr, .. } | ExprKind::KCast { expr, .. } => v.visit_expr(expr),
        ExprKind::Binary(_, a, b) => {
            v.visit_expr(a);
            v.visit_expr(b);
        }
        ExprKind::Ternary(c, a, b) => {
            v.visit_expr(c);
            v.visit_expr(a);
            v.visit_expr(b);
        }
        ExprKind::Tuple(es) => es.iter().for_each(|x| v.visit_expr(x)),
        ExprKind::Member { base, .. } => v.visit_expr(base),
        ExprKind::Index { base, index, .. } => {
            v.visit_expr(base);
            v.visit_expr(index);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parser::parse;

    /// Every integer literal and every statement kind seen, in order.
    #[derive(Default)]
    struct Seen {
        ints: Vec<u64>,
        stmts: usize,
    }

    impl Visitor for Seen {
        fn visit_stmt(&mut self, s: &Stmt) {
            self.stmts += 1;
            walk_stmt(self, s);
        }

        fn visit_expr(&mut self, e: &Expr) {
            if let ExprKind::Int(n) = e.kind {
                self.ints.push(n);
            }
            walk_expr(self, e);
        }
    }

    #[test]
    fn the_default_walk_reaches_every_expression_in_source_order() {
        let ast = parse(
            "kprobe:f /1 + -2/ {
                @m[3, (4, 5).0] = 6 ? 7 : 8;
                @n[9] += 10;
                $x = *(uint64 *)11;
                self->y = ((struct task_struct *)12)->comm[13];
                if (14) { printf(\"%d\", 15); } else { unroll (2) { exit(); } }
                while (16) { break; }
                trace(a = 17, b = str(18));
            }",
        )
        .unwrap();
        let mut seen = Seen::default();
        walk_block(&mut seen, &ast.probes[0]);
        assert_eq!(seen.ints, (1..=18).collect::<Vec<_>>());
        // Seven at the top, printf and exit in the branches, unroll, break.
        assert_eq!(seen.stmts, 11);
    }
}
