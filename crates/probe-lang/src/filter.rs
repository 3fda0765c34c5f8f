//! What a block's predicate says about a layer event's fields, in a form an
//! event source can check before the event reaches the handler (a host
//! tracepoint's in-kernel filter), so that hot events the predicate rejects
//! cost nothing.
//!
//! The condition is an over-approximation: every event the predicate
//! accepts satisfies it, but it may accept more (parts it cannot express are
//! dropped from a conjunction, and make a disjunction unconstrained). The
//! handler still runs the predicate, so the result is exact either way.

use crate::ast::BinOp;
use crate::ir::{Expr, Op2};
use crate::{BlockId, Program};

/// `c OP field` as `field OP' c`.
fn flipped(op: BinOp) -> BinOp {
    match op {
        BinOp::Lt => BinOp::Gt,
        BinOp::Le => BinOp::Ge,
        BinOp::Gt => BinOp::Lt,
        BinOp::Ge => BinOp::Le,
        same => same,
    }
}

/// A condition on `args.NAME` fields (see the module docs).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FieldCondition {
    /// `args.field OP value`, unsigned 64-bit; `op` is one of `==`, `!=`,
    /// `<`, `<=`, `>`, `>=`.
    Cmp {
        field: String,
        op: BinOp,
        value: u64,
    },
    And(Box<FieldCondition>, Box<FieldCondition>),
    Or(Box<FieldCondition>, Box<FieldCondition>),
}

impl Program {
    /// The part of `block`'s predicate that constrains `args.NAME` fields
    /// only; `None` when nothing is known (no predicate, or none of it is a
    /// plain comparison of a field with a constant).
    pub fn field_condition(&self, block: BlockId) -> Option<FieldCondition> {
        let b = self.ir().blocks.get(block.0 as usize)?;
        condition(self, b.predicate.as_ref()?)
    }
}

fn condition(p: &Program, e: &Expr) -> Option<FieldCondition> {
    match e {
        Expr::LogAnd(a, b) => match (condition(p, a), condition(p, b)) {
            (Some(a), Some(b)) => Some(FieldCondition::And(Box::new(a), Box::new(b))),
            // The other side is checked by the handler.
            (one, None) | (None, one) => one,
        },
        Expr::LogOr(a, b) => Some(FieldCondition::Or(
            Box::new(condition(p, a)?),
            Box::new(condition(p, b)?),
        )),
        Expr::Binary(op, a, b) => {
            let op = match op {
                Op2::Eq => BinOp::Eq,
                Op2::Ne => BinOp::Ne,
                Op2::ULt => BinOp::Lt,
                Op2::ULe => BinOp::Le,
                Op2::UGt => BinOp::Gt,
                Op2::UGe => BinOp::Ge,
                // Signed comparisons differ from the kernel's unsigned ones.
                _ => return None,
            };
            let (field, op, value) = match (&**a, &**b) {
                (Expr::ProbeArg(s), Expr::Const(c)) => (*s, op, *c),
                (Expr::Const(c), Expr::ProbeArg(s)) => (*s, flipped(op), *c),
                _ => return None,
            };
            Some(FieldCondition::Cmp {
                field: p.ir().strings[field as usize].to_string(),
                op,
                value,
            })
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compile;

    fn cond(src: &str) -> Option<FieldCondition> {
        let p = compile(src, "t").unwrap();
        p.field_condition(p.block_of(0))
    }

    fn tp(pred: &str) -> Option<FieldCondition> {
        cond(&format!(
            "host:tracepoint:kvm:kvm_pio /{pred}/ {{ @ = count(); }}"
        ))
    }

    fn cmp(field: &str, op: BinOp, value: u64) -> FieldCondition {
        FieldCondition::Cmp {
            field: field.into(),
            op,
            value,
        }
    }

    #[test]
    fn comparisons_of_fields_with_constants() {
        assert_eq!(tp("args.port == 0x99"), Some(cmp("port", BinOp::Eq, 0x99)));
        // Constant first: the operator turns around.
        assert_eq!(tp("4 > args.size"), Some(cmp("size", BinOp::Lt, 4)));
        assert_eq!(
            tp("args.port != 1 && args.size >= 2"),
            Some(FieldCondition::And(
                Box::new(cmp("port", BinOp::Ne, 1)),
                Box::new(cmp("size", BinOp::Ge, 2)),
            ))
        );
        assert_eq!(
            tp("args.port <= 1 || args.port > 9"),
            Some(FieldCondition::Or(
                Box::new(cmp("port", BinOp::Le, 1)),
                Box::new(cmp("port", BinOp::Gt, 9)),
            ))
        );
    }

    #[test]
    fn what_cannot_be_said_is_left_to_the_handler() {
        // A conjunction keeps the part it can say: still a superset.
        assert_eq!(
            tp("args.port == 0x99 && nsecs > 5"),
            Some(cmp("port", BinOp::Eq, 0x99))
        );
        // A disjunction with an unknown side says nothing.
        assert_eq!(tp("args.port == 0x99 || nsecs > 5"), None);
        assert_eq!(tp("!(args.port == 0x99)"), None);
        assert_eq!(tp("args.port + 1 == 0x99"), None);
        assert_eq!(tp("args.port == args.val"), None);
        assert_eq!(cond("host:tracepoint:kvm:kvm_pio { @ = count(); }"), None);
    }
}
