//! Member and element access on kernel types: `e.name`, `p->name`
//! (bitfields included) and `e[i]` (arrays and pointers), typed and given
//! their byte offset and how they are read.

use super::Checker;
use super::types::NO_BTF;
use crate::ast::{Access, Expr, ExprKind, Type};
use crate::types::{TypeInfo, TypeRef};

impl Checker<'_, '_> {
    /// The base of `.`/`->`/`[]`: a member or element stays a place (no
    /// string decay) so that `task->comm[0]` indexes the array.
    fn base_expr(&mut self, e: &mut Expr) {
        if matches!(e.kind, ExprKind::Member { .. } | ExprKind::Index { .. }) {
            e.ty = self.kernel_access(e, false);
        } else {
            self.expr(e);
        }
    }

    /// Types `e` (a `Member` or `Index`) and records how it is read.
    pub(super) fn kernel_access(&mut self, e: &mut Expr, decay: bool) -> Type {
        if self.raw_syscall_index(e) {
            return Type::Unknown;
        }
        let span = e.span;
        match &mut e.kind {
            ExprKind::Member {
                base,
                name,
                arrow,
                offset,
                access,
            } => {
                if matches!(&base.kind, ExprKind::Ident(b) if b == "args") {
                    return match self.args_member(name, span) {
                        Some((t, a)) => {
                            *access = a;
                            t
                        }
                        None => Type::Unknown,
                    };
                }
                self.base_expr(base);
                let (id, ptr) = match base.ty {
                    Type::Unknown => return Type::Unknown,
                    Type::Kernel { id, ptr } => (TypeRef(id), ptr),
                    Type::Tuple(_) if !*arrow => {
                        self.r.error(
                            span,
                            format!("expected a tuple index after '.', found '{name}'"),
                        );
                        return Type::Unknown;
                    }
                    t => {
                        let what = if *arrow { "->" } else { "." };
                        let hint = if self.types.is_none() && t.is_int() {
                            format!(" (casting it to a struct pointer {NO_BTF})")
                        } else {
                            String::new()
                        };
                        self.r.error(
                            span,
                            format!(
                                "cannot use '{what}{name}' on a value of type {}{hint}",
                                t.name()
                            ),
                        );
                        return Type::Unknown;
                    }
                };
                if ptr > 1 || (ptr == 1) != *arrow {
                    let tn = self.type_name(base.ty);
                    let m = if ptr > 1 {
                        format!("'{tn}' is a pointer to a pointer; dereference it first")
                    } else if *arrow {
                        format!("'{tn}' is not a pointer; use '.{name}'")
                    } else {
                        format!("'{tn}' is a pointer; use '->{name}'")
                    };
                    self.r.error(span, m);
                    return Type::Unknown;
                }
                if !matches!(
                    self.info(id),
                    TypeInfo::Struct { .. } | TypeInfo::Union { .. }
                ) {
                    let tn = self.type_name(Type::Kernel { id: id.0, ptr: 0 });
                    self.r
                        .error(span, format!("'{tn}' is not a struct or union"));
                    return Type::Unknown;
                }
                let Some(m) = self.types.and_then(|t| t.member(id, name)) else {
                    let tn = self.type_name(Type::Kernel { id: id.0, ptr: 0 });
                    self.r
                        .error(span, format!("'{tn}' has no member named '{name}'"));
                    return Type::Unknown;
                };
                *offset = m.bit_offset / 8;
                if m.bitfield_size > 0 {
                    let shift = (m.bit_offset % 8) as u32;
                    let bytes = (shift + m.bitfield_size).div_ceil(8);
                    if bytes > 8 || m.bitfield_size > 64 {
                        self.r
                            .error(span, format!("bitfield '{name}' is wider than 64 bits"));
                        return Type::Unknown;
                    }
                    let signed = matches!(
                        self.info(m.ty),
                        TypeInfo::Int { signed: true, .. } | TypeInfo::Enum { signed: true, .. }
                    );
                    *access = Access::Bits {
                        size: bytes as u8,
                        shift: shift as u8,
                        width: m.bitfield_size as u8,
                        signed,
                    };
                    return Type::Int { signed };
                }
                match self.value_of(m.ty, decay, span) {
                    Some((t, a)) => {
                        *access = a;
                        t
                    }
                    None => Type::Unknown,
                }
            }
            ExprKind::Index {
                base,
                index,
                elem_size,
                access,
            } => {
                self.base_expr(base);
                self.expr(index);
                self.want_int(index, "array index");
                let (elem, count) = match base.ty {
                    Type::Unknown => return Type::Unknown,
                    Type::Kernel { id, ptr: 0 } => match self.info(TypeRef(id)) {
                        TypeInfo::Array { elem, count } => (self.norm(elem, 0), Some(count)),
                        _ => {
                            let tn = self.type_name(base.ty);
                            self.r
                                .error(span, format!("'{tn}' is not an array or a pointer"));
                            return Type::Unknown;
                        }
                    },
                    Type::Kernel { id, ptr } => (Type::Kernel { id, ptr: ptr - 1 }, None),
                    t => {
                        self.r
                            .error(span, format!("cannot index a value of type {}", t.name()));
                        return Type::Unknown;
                    }
                };
                if let (Some(n), ExprKind::Int(i)) = (count, &index.kind)
                    && *i >= n as u64
                {
                    self.r.error(
                        index.span,
                        format!("index {i} is out of bounds for an array of {n} elements"),
                    );
                    return Type::Unknown;
                }
                let Type::Kernel { id, ptr } = elem else {
                    return Type::Unknown;
                };
                if ptr > 0 {
                    *elem_size = 8;
                    *access = Access::Load {
                        size: 8,
                        signed: false,
                    };
                    return elem;
                }
                let Some(size) = self.size_of(TypeRef(id)) else {
                    let tn = self.type_name(elem);
                    self.r
                        .error(span, format!("cannot index: '{tn}' has no size"));
                    return Type::Unknown;
                };
                *elem_size = size;
                match self.value_of(TypeRef(id), decay, span) {
                    Some((t, a)) => {
                        *access = a;
                        t
                    }
                    None => Type::Unknown,
                }
            }
            _ => {
                self.expr(e);
                e.ty
            }
        }
    }
}
