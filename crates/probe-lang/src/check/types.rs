//! Guest kernel types (BTF, through [`crate::types::KernelTypes`]):
//! lookups by C name, pointer levels, sizes, names, what reading a value
//! of a type gives, `offsetof`, and pointer arithmetic scaled by the
//! pointee's size. Member and element access are in `access.rs`,
//! `args.NAME` in `args.rs`.

use super::Checker;
use crate::ast::{Access, BinOp, Expr, ExprKind, Type};
use crate::diag::Span;
use crate::types::{TypeInfo, TypeRef};

/// Why kernel types are unavailable, for messages.
pub(super) const NO_BTF: &str =
    "needs the guest kernel's type information (BTF), which this compilation does not have";

/// Pointer levels followed when normalizing a kernel type.
const MAX_PTR_DEPTH: u8 = 16;

impl Checker<'_, '_> {
    /// C pointer arithmetic on a kernel pointer: `p + n` and `p - n` stay
    /// pointers of the same type and move `n` pointees (`n` is scaled here,
    /// in the tree, so later passes see plain byte arithmetic). `None` when
    /// the operation is not one.
    pub(super) fn kernel_pointer_arithmetic(
        &mut self,
        op: BinOp,
        a: &Expr,
        b: &mut Expr,
    ) -> Option<Type> {
        let Type::Kernel { id, ptr: ptr @ 1.. } = a.ty else {
            return None;
        };
        if !matches!(op, BinOp::Add | BinOp::Sub) || !matches!(b.ty, Type::Int { .. }) {
            return None;
        }
        let size = if ptr > 1 {
            Some(8)
        } else {
            self.size_of(TypeRef(id))
        };
        let Some(size) = size else {
            let name = self
                .types
                .map_or_else(String::new, |t| t.type_name(TypeRef(id)));
            self.r.error(
                a.span,
                format!("pointer arithmetic on a pointer to '{name}', which has no size"),
            );
            return Some(Type::Unknown);
        };
        // Blocks can be checked more than once: scale only once. The
        // scaled form is `count * (uint64)SIZE` spanning what the user wrote.
        let scaled = matches!(&b.kind, ExprKind::Binary(BinOp::Mul, _, k)
            if k.span == b.span && matches!(&k.kind, ExprKind::Cast { expr, .. }
                if matches!(expr.kind, ExprKind::Int(n) if n == size)));
        if size != 1 && !scaled {
            let span = b.span;
            let placeholder = Expr {
                kind: ExprKind::Int(0),
                span,
                ty: Type::SIGNED,
            };
            let count = std::mem::replace(b, placeholder);
            *b = Expr {
                kind: ExprKind::Binary(
                    BinOp::Mul,
                    Box::new(count),
                    Box::new(Expr {
                        kind: unsigned_const(size, span),
                        span,
                        ty: Type::UNSIGNED,
                    }),
                ),
                span,
                ty: Type::UNSIGNED,
            };
        }
        Some(a.ty)
    }

    /// A kernel type by C name; errors at `span` without BTF or when the
    /// guest kernel has no such type.
    pub(super) fn lookup(&mut self, c_name: &str, span: Span) -> Option<TypeRef> {
        let Some(t) = self.types else {
            self.r.error(span, format!("'{c_name}' {NO_BTF}"));
            return None;
        };
        let id = t.lookup(c_name);
        if id.is_none() {
            self.r.error(
                span,
                format!("unknown type '{c_name}' (not in the guest kernel's BTF)"),
            );
        }
        id
    }

    /// `ptr` pointers to `id`, with pointer types followed into levels.
    pub(super) fn norm(&self, mut id: TypeRef, mut ptr: u8) -> Type {
        if let Some(t) = self.types {
            for _ in 0..MAX_PTR_DEPTH {
                match t.info(id) {
                    TypeInfo::Ptr { pointee } => {
                        id = pointee;
                        ptr = ptr.saturating_add(1);
                    }
                    _ => break,
                }
            }
        }
        Type::Kernel { id: id.0, ptr }
    }

    pub(super) fn info(&self, id: TypeRef) -> TypeInfo {
        self.types.map_or(TypeInfo::Other, |t| t.info(id))
    }

    pub(super) fn type_name(&self, ty: Type) -> String {
        match (ty, self.types) {
            (Type::Kernel { id, ptr }, Some(t)) => {
                let n = t.type_name(TypeRef(id));
                if ptr == 0 {
                    n
                } else {
                    format!("{n} {}", "*".repeat(ptr as usize))
                }
            }
            (t, _) => t.name().to_string(),
        }
    }

    /// Size in bytes of a kernel type (arrays nest a bounded depth).
    pub(super) fn size_of(&self, id: TypeRef) -> Option<u64> {
        let mut id = id;
        let mut mult: u64 = 1;
        for _ in 0..MAX_PTR_DEPTH {
            let n = match self.info(id) {
                TypeInfo::Int { size, .. } | TypeInfo::Enum { size, .. } => size as u64,
                TypeInfo::Ptr { .. } => 8,
                TypeInfo::Struct { size } | TypeInfo::Union { size } => size,
                TypeInfo::Array { elem, count } => {
                    mult = mult.checked_mul(count as u64)?;
                    id = elem;
                    continue;
                }
                TypeInfo::Void | TypeInfo::Other => return None,
            };
            return n.checked_mul(mult);
        }
        None
    }

    /// What reading a value of kernel type `id` gives: its language type
    /// and how to read it. `decay`: a `char` array is read as a string.
    pub(super) fn value_of(
        &mut self,
        id: TypeRef,
        decay: bool,
        span: Span,
    ) -> Option<(Type, Access)> {
        Some(match self.info(id) {
            TypeInfo::Int { size, signed, .. } | TypeInfo::Enum { size, signed } => {
                if !(1..=8).contains(&size) {
                    self.r
                        .error(span, format!("{size}-byte integers are not supported"));
                    return None;
                }
                (Type::Int { signed }, Access::Load { size, signed })
            }
            TypeInfo::Ptr { .. } => (
                self.norm(id, 0),
                Access::Load {
                    size: 8,
                    signed: false,
                },
            ),
            TypeInfo::Array { elem, count }
                if decay && matches!(self.info(elem), TypeInfo::Int { char: true, .. }) =>
            {
                (Type::Str, Access::Str { len: count })
            }
            TypeInfo::Array { .. } | TypeInfo::Struct { .. } | TypeInfo::Union { .. } => {
                (Type::Kernel { id: id.0, ptr: 0 }, Access::Place)
            }
            TypeInfo::Void | TypeInfo::Other => {
                let n = self.types.map_or_else(String::new, |t| t.type_name(id));
                self.r
                    .error(span, format!("cannot read a value of type '{n}'"));
                return None;
            }
        })
    }

    /// `offsetof(struct X, a.b)`.
    pub(super) fn offsetof(&mut self, ty: &str, path: &[String], span: Span) -> Option<u64> {
        let mut id = self.lookup(ty, span)?;
        let types = self.types?;
        let mut off = 0u64;
        for m in path {
            if !matches!(
                types.info(id),
                TypeInfo::Struct { .. } | TypeInfo::Union { .. }
            ) {
                self.r.error(
                    span,
                    format!("'{}' is not a struct or union", types.type_name(id)),
                );
                return None;
            }
            let Some(mi) = types.member(id, m) else {
                self.r.error(
                    span,
                    format!("'{}' has no member named '{m}'", types.type_name(id)),
                );
                return None;
            };
            off = off.saturating_add(mi.bit_offset / 8);
            id = mi.ty;
        }
        Some(off)
    }
}

/// `(uint64)n`: what `sizeof`/`offsetof` become once resolved, so the
/// checker's second pass still types them unsigned.
pub(super) fn unsigned_const(n: u64, span: Span) -> ExprKind {
    ExprKind::Cast {
        size: 8,
        signed: false,
        ptr: false,
        expr: Box::new(Expr {
            kind: ExprKind::Int(n),
            span,
            ty: Type::SIGNED,
        }),
    }
}
