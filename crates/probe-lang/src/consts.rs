//! Errors the checker can prove from constants alone, reported before
//! anything boots: a division or modulo by a constant zero, and a `while`
//! whose condition is always true with no reachable `break` or `exit()`
//! (it would only end at the step budget, on every hit).
//!
//! Evaluation is deliberately partial: only operators whose result does not
//! depend on signedness are folded, as the interpreter computes them
//! (64-bit, wrapping); anything else is "not constant" and never an error.

use crate::ast::{Ast, BinOp, Expr, ExprKind, Stmt, StmtKind, UnOp};
use crate::diag::Reporter;
use crate::visit::{self, Visitor};

pub fn check(ast: &Ast, r: &mut Reporter<'_>) {
    let mut c = Consts { r };
    for probe in &ast.probes {
        visit::walk_block(&mut c, probe);
    }
}

struct Consts<'a, 's> {
    r: &'a mut Reporter<'s>,
}

impl Visitor for Consts<'_, '_> {
    /// A loop is judged after what is inside it.
    fn visit_stmt(&mut self, s: &Stmt) {
        visit::walk_stmt(self, s);
        if let StmtKind::While { cond, body } = &s.kind
            && value(cond).is_some_and(|v| v != 0)
            && !ends(body, true)
        {
            self.r.error(
                s.span,
                "this loop never ends: its condition is always true and nothing in it \
                 breaks or calls exit()",
            );
        }
    }

    /// Reports every `/` or `%` by a constant zero, operands first.
    fn visit_expr(&mut self, e: &Expr) {
        visit::walk_expr(self, e);
        if let ExprKind::Binary(op, _, b) = &e.kind
            && matches!(op, BinOp::Div | BinOp::Mod)
            && value(b) == Some(0)
        {
            let what = if *op == BinOp::Div {
                "division"
            } else {
                "modulo"
            };
            self.r.error(b.span, format!("{what} by zero"));
        }
    }
}

/// Whether running `body` can leave the loop around it (`break`, when
/// `own_loop`: not one of an inner loop's) or the handler (`exit()`).
/// Branches whose condition is a constant that skips them do not count.
fn ends(body: &[Stmt], own_loop: bool) -> bool {
    body.iter().any(|s| match &s.kind {
        StmtKind::Break => own_loop,
        StmtKind::Call { name, .. } => name == "exit",
        StmtKind::If { cond, then, els } => match value(cond) {
            Some(0) => ends(els, own_loop),
            Some(_) => ends(then, own_loop),
            None => ends(then, own_loop) || ends(els, own_loop),
        },
        StmtKind::Unroll { body, .. } => ends(body, own_loop),
        StmtKind::While { body, .. } => ends(body, false),
        _ => false,
    })
}

/// The value of a constant integer expression, if it is one.
fn value(e: &Expr) -> Option<u64> {
    match &e.kind {
        ExprKind::Int(v) => Some(*v),
        ExprKind::Unary(op, a) => {
            let a = value(a)?;
            Some(match op {
                UnOp::Neg => a.wrapping_neg(),
                UnOp::Not => (a == 0) as u64,
                UnOp::BitNot => !a,
            })
        }
        ExprKind::Binary(op, a, b) => {
            let (x, y) = (value(a)?, value(b)?);
            use BinOp::*;
            Some(match op {
                Add => x.wrapping_add(y),
                Sub => x.wrapping_sub(y),
                Mul => x.wrapping_mul(y),
                Div => x.checked_div(y)?,
                Mod => x.checked_rem(y)?,
                And => x & y,
                Or => x | y,
                Xor => x ^ y,
                Shl => x.wrapping_shl(y as u32 & 63),
                Eq => (x == y) as u64,
                Ne => (x != y) as u64,
                LogAnd => (x != 0 && y != 0) as u64,
                LogOr => (x != 0 || y != 0) as u64,
                // Signed or unsigned by type: not folded here.
                Shr | Lt | Le | Gt | Ge => return None,
            })
        }
        ExprKind::Ternary(c, a, b) => match value(c)? {
            0 => value(b),
            _ => value(a),
        },
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    fn first_error(src: &str) -> Option<String> {
        crate::compile(src, "t.bt")
            .err()
            .map(|d| d.to_string().lines().next().unwrap_or("").to_string())
    }

    #[test]
    fn constant_division_and_modulo_by_zero() {
        for src in [
            "BEGIN { $x = 1 / 0; }",
            "BEGIN { $x = 5 % (2 - 2); }",
            "BEGIN { @m[1 / (3 == 4)] = 1; }",
            "kprobe:f /(arg0 % 0) == 1/ { }",
        ] {
            let e = first_error(src).unwrap_or_else(|| panic!("{src} compiled"));
            assert!(e.contains("by zero"), "{src}: {e}");
        }
        for src in [
            "BEGIN { $x = 1 / 1; }",
            "kprobe:f { $x = 8 / arg0; $y = 8 % (arg0 - 1); }",
            // Not folded: depends on signedness.
            "BEGIN { $x = 1 / (-1 < 0); }",
        ] {
            assert_eq!(first_error(src), None, "{src}");
        }
    }

    #[test]
    fn endless_loops() {
        for src in [
            "BEGIN { while (1) { } }",
            "BEGIN { while (1 == 1) { $x = 1; if (0) { break; } } }",
            "BEGIN { $y = 1; while (2) { while ($y) { break; } } }",
        ] {
            let e = first_error(src).unwrap_or_else(|| panic!("{src} compiled"));
            assert!(e.contains("this loop never ends"), "{src}: {e}");
        }
        for src in [
            "BEGIN { $i = 0; while ($i < 3) { $i = $i + 1; } }",
            "BEGIN { $x = 1; while (1) { if ($x) { break; } } }",
            "BEGIN { while (1) { exit(); } }",
            "BEGIN { while (1) { if (1) { } else { } unroll(2) { break; } } }",
            "BEGIN { while (0) { } }",
        ] {
            assert_eq!(first_error(src), None, "{src}");
        }
    }
}
