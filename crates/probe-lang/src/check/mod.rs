//! Pass 3: semantic check. Resolves attach points into [`ProbeSpec`]s,
//! fills in expression types, and validates builtins, calls, printf formats,
//! scratch variables and map usage (one aggregation kind and one key
//! signature per map). Nothing runs unless this pass reports no errors.

use crate::ast::*;
use crate::diag::{Reporter, Span};
use crate::types::{FieldType, KernelTypes, TypeInfo, TypeRef};
use crate::{KprobeTarget, ProbeSpec};
use rustc_hash::FxHashMap;

mod attach;
mod calls;
mod maps;
mod printf;
mod stmt;
mod trace;

pub use attach::{MIN_PERIOD_NS, parse_probe};
pub use calls::{BUF_MAX, KSTACK_MAX, STR_MAX};
pub use maps::{AggKind, HIST_BUCKETS, LhistParams, MapDecl};
pub use trace::{TraceSite, TraceType};

pub struct Checked {
    pub maps: Vec<MapDecl>,
    pub map_index: FxHashMap<String, usize>,
    /// (spec, index of the AST probe block), source order.
    pub probes: Vec<(ProbeSpec, usize)>,
    /// Scratch variable slots per block.
    pub scratch: Vec<FxHashMap<String, (u16, Type)>>,
    /// Symbol names given to `kaddr()`, so the engine can resolve them
    /// before attaching.
    pub kaddrs: Vec<(String, Span)>,
    /// Element types of each `Type::Tuple(i)`.
    pub tuples: Vec<Vec<Type>>,
    /// Register names given to `reg()`, so the engine can check them
    /// against the stub's register set before attaching.
    pub regs: Vec<(String, Span)>,
    /// Per-vCPU variables (`self->name`): name and type, by slot.
    pub self_vars: Vec<(String, Type)>,
    /// The field layout of each `trace(name = expr, ...)` call site.
    pub traces: Vec<TraceSite>,
    /// Every `trace()` / `snapshot()` call (`"trace"` or `"snapshot"`),
    /// which only `vmprobe record` can serve.
    pub recording: Vec<(String, Span)>,
}
fn same_shape(a: Type, b: Type) -> bool {
    a.is_int() && b.is_int() || a == b
}

struct Checker<'a, 's> {
    r: &'a mut Reporter<'s>,
    maps: Vec<MapDecl>,
    map_index: FxHashMap<String, usize>,
    /// Current block's scratch variables.
    vars: FxHashMap<String, (u16, Type)>,
    /// What the current block's attach points allow.
    all_kprobe: bool,
    all_kretprobe: bool,
    loops: usize,
    kaddrs: Vec<(String, Span)>,
    tuples: Vec<Vec<Type>>,
    regs: Vec<(String, Span)>,
    /// The map whose assignment's value is being checked: reading it there
    /// before any declaration (`@x = @x + 1`) reads an unsigned 0, as in
    /// bpftrace 0.17.
    assigning: Option<String>,
    /// Guest kernel types, when the caller has them (BTF).
    types: Option<&'a dyn KernelTypes>,
    /// The current block's attach points.
    specs: Vec<ProbeSpec>,
    traces: Vec<TraceSite>,
    recording: Vec<(String, Span)>,
    /// Per-vCPU variables of the whole program: slot and type.
    self_vars: FxHashMap<String, (u16, Type)>,
    /// The first pass, which only discovers declarations.
    discovering: bool,
}

/// Why kernel types are unavailable, for messages.
const NO_BTF: &str =
    "needs the guest kernel's type information (BTF), which this compilation does not have";

/// Pointer levels followed when normalizing a kernel type.
const MAX_PTR_DEPTH: u8 = 16;

pub(crate) fn check(
    ast: &mut Ast,
    r: &mut Reporter<'_>,
    types: Option<&dyn KernelTypes>,
) -> Checked {
    let (probes, blocks) = attach::resolve(ast, r);

    // Pass A discovers map declarations wherever they are in the script (a
    // map may be read in a block that comes before its assignment); pass B
    // re-walks with the complete table and is the one that reports errors.
    let mut scratch = Vec::new();
    let mut maps = Vec::new();
    let mut map_index = FxHashMap::default();
    let mut kaddrs = Vec::new();
    let mut tuples = Vec::new();
    let mut regs = Vec::new();
    let mut traces = Vec::new();
    let mut recording = Vec::new();
    let mut self_vars = FxHashMap::default();
    for pass in 0..2 {
        let mut tmp = Reporter::new(r.source, r.name);
        let rep = if pass == 0 { &mut tmp } else { &mut *r };
        let mut c = Checker {
            r: rep,
            maps: std::mem::take(&mut maps),
            map_index: std::mem::take(&mut map_index),
            vars: FxHashMap::default(),
            all_kprobe: false,
            all_kretprobe: false,
            loops: 0,
            kaddrs: Vec::new(),
            tuples: std::mem::take(&mut tuples),
            regs: Vec::new(),
            assigning: None,
            types,
            specs: Vec::new(),
            traces: Vec::new(),
            recording: Vec::new(),
            self_vars: std::mem::take(&mut self_vars),
            discovering: pass == 0,
        };
        scratch.clear();
        for (block, attach) in ast.probes.iter_mut().zip(&blocks) {
            c.vars.clear();
            c.specs.clone_from(&attach.specs);
            c.all_kprobe = attach.all_kprobe;
            c.all_kretprobe = attach.all_kretprobe;
            if let Some(p) = &mut block.predicate {
                c.expr(p);
                c.want_int(p, "predicate");
            }
            c.stmts(&mut block.body);
            scratch.push(std::mem::take(&mut c.vars));
        }
        maps = c.maps;
        map_index = c.map_index;
        kaddrs = c.kaddrs;
        tuples = c.tuples;
        regs = c.regs;
        traces = c.traces;
        recording = c.recording;
        self_vars = c.self_vars;
    }
    let mut self_vars: Vec<(String, (u16, Type))> = self_vars.into_iter().collect();
    self_vars.sort_by_key(|(_, (slot, _))| *slot);
    Checked {
        maps,
        map_index,
        probes,
        scratch,
        kaddrs,
        tuples,
        regs,
        traces,
        recording,
        self_vars: self_vars.into_iter().map(|(n, (_, t))| (n, t)).collect(),
    }
}

impl Checker<'_, '_> {
    fn want_int(&mut self, e: &Expr, what: &str) {
        if !e.ty.is_int() && e.ty != Type::Unknown {
            self.r.error(
                e.span,
                format!("{what} must be an integer, found {}", e.ty.name()),
            );
        }
    }

    fn expr(&mut self, e: &mut Expr) {
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
                let t = a.ty;
                e.ty = self.deref_type(t, e.span);
            }
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
            ExprKind::Ident(name) => self.builtin(name, e.span),
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
            ExprKind::Map { name, keys } => {
                let key_tys = self.keys(keys);
                match (self.map_index.get(name.as_str()), key_tys) {
                    (Some(&i), Some(k)) => {
                        let d = &self.maps[i];
                        let (kind, value) = (d.kind, d.value);
                        let name = name.clone();
                        self.check_keys(&name, &k, e.span);
                        match kind {
                            AggKind::Value => value,
                            AggKind::Hist | AggKind::Lhist | AggKind::Stats => {
                                self.r.error(
                                    e.span,
                                    format!(
                                        "@{name} is a {}() map and cannot be read as a value",
                                        kind.name()
                                    ),
                                );
                                Type::Unknown
                            }
                            AggKind::Count => Type::UNSIGNED,
                            _ => value,
                        }
                    }
                    (None, _) if self.assigning.as_ref() == Some(name) => Type::UNSIGNED,
                    (None, _) => {
                        self.r.error(e.span, format!("undefined map '@{name}'"));
                        Type::Unknown
                    }
                    _ => Type::Unknown,
                }
            }
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

    /// C pointer arithmetic on a kernel pointer: `p + n` and `p - n` stay
    /// pointers of the same type and move `n` pointees (`n` is scaled here,
    /// in the tree, so later passes see plain byte arithmetic). `None` when
    /// the operation is not one.
    fn kernel_pointer_arithmetic(&mut self, op: BinOp, a: &Expr, b: &mut Expr) -> Option<Type> {
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

    /// A kernel type by C name; errors at `span` without BTF or when the
    /// guest kernel has no such type.
    fn lookup(&mut self, c_name: &str, span: Span) -> Option<TypeRef> {
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
    fn norm(&self, mut id: TypeRef, mut ptr: u8) -> Type {
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

    fn info(&self, id: TypeRef) -> TypeInfo {
        self.types.map_or(TypeInfo::Other, |t| t.info(id))
    }

    fn type_name(&self, ty: Type) -> String {
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
    fn size_of(&self, id: TypeRef) -> Option<u64> {
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
    fn value_of(&mut self, id: TypeRef, decay: bool, span: Span) -> Option<(Type, Access)> {
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
    fn kernel_access(&mut self, e: &mut Expr, decay: bool) -> Type {
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

    /// `args.NAME` / `args->NAME` in the current block.
    fn args_member(&mut self, name: &str, span: Span) -> Option<(Type, Access)> {
        let specs = self.specs.clone();
        let is_event =
            |s: &ProbeSpec| matches!(s, ProbeSpec::Vmm { .. } | ProbeSpec::Tracepoint { .. });
        if !specs.is_empty() && specs.iter().all(is_event) {
            for spec in &specs {
                let Some(fields) = self.types.and_then(|t| t.event_fields(spec)) else {
                    continue;
                };
                if !fields.iter().any(|(n, _)| n == name) {
                    let names: Vec<&str> = fields.iter().map(|(n, _)| n.as_str()).collect();
                    self.r.error(
                        span,
                        format!(
                            "'{}' has no field '{name}' (fields: {})",
                            spec.name(),
                            if names.is_empty() {
                                "none".to_string()
                            } else {
                                names.join(", ")
                            }
                        ),
                    );
                    return None;
                }
            }
            let field = self.types.and_then(|t| t.event_field(&specs[0], name));
            let t = match field {
                Some(FieldType::Str) => Type::Str,
                Some(FieldType::Int { signed }) => Type::Int { signed },
                None => Type::UNSIGNED,
            };
            return Some((t, Access::ProbeArg));
        }
        let mut funcs = Vec::new();
        for s in &specs {
            match s {
                ProbeSpec::Kprobe {
                    target: KprobeTarget::Function(f),
                    offset: 0,
                } if !f.contains(['*', '?']) => funcs.push(f.clone()),
                ProbeSpec::Kretprobe { .. } => {
                    self.r.error(
                        span,
                        "args is not available in kretprobe blocks (use retval for the return value)",
                    );
                    return None;
                }
                other => {
                    self.r.error(
                        span,
                        format!(
                            "args can only be used in kprobes on a named function (without offset or wildcard), vmm and tracepoint probes, not in '{}'",
                            other.name()
                        ),
                    );
                    return None;
                }
            }
        }
        if funcs.is_empty() {
            return None;
        }
        let Some(types) = self.types else {
            self.r.error(span, format!("args {NO_BTF}"));
            return None;
        };
        let mut found: Option<(usize, TypeRef)> = None;
        for f in &funcs {
            let Some(proto) = types.function(f) else {
                self.r.error(
                    span,
                    format!("no prototype for function '{f}' in the guest kernel's BTF"),
                );
                return None;
            };
            let Some(i) = proto.params.iter().position(|p| p.name == name) else {
                let names: Vec<&str> = proto.params.iter().map(|p| p.name.as_str()).collect();
                self.r.error(
                    span,
                    format!(
                        "function '{f}' has no parameter named '{name}' (parameters: {})",
                        if names.is_empty() {
                            "none".to_string()
                        } else {
                            names.join(", ")
                        }
                    ),
                );
                return None;
            };
            let ty = proto.params[i].ty;
            match found {
                Some((j, t)) if j != i || types.type_name(t) != types.type_name(ty) => {
                    self.r.error(
                        span,
                        format!("parameter '{name}' differs between the probed functions"),
                    );
                    return None;
                }
                _ => found = Some((i, ty)),
            }
        }
        let (index, ty) = found?;
        if index >= 6 {
            self.r.error(
                span,
                format!("parameter '{name}' is passed on the stack (parameter {}), which is not supported", index + 1),
            );
            return None;
        }
        match self.value_of(ty, true, span)? {
            (t, Access::Load { size, signed }) => Some((
                t,
                Access::Arg {
                    index: index as u8,
                    size,
                    signed,
                },
            )),
            _ => {
                self.r.error(
                    span,
                    format!(
                        "parameter '{name}' is passed by value as a '{}', which is not supported",
                        types.type_name(ty)
                    ),
                );
                None
            }
        }
    }

    /// `offsetof(struct X, a.b)`.
    fn offsetof(&mut self, ty: &str, path: &[String], span: Span) -> Option<u64> {
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
fn unsigned_const(n: u64, span: Span) -> ExprKind {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parser::parse;

    fn checked(src: &str) -> (Ast, Checked, usize) {
        let mut ast = parse(src).unwrap();
        let mut r = Reporter::new(src, "t");
        let c = check(&mut ast, &mut r, None);
        let n = r.diags.len();
        (ast, c, n)
    }

    #[test]
    fn types_and_maps() {
        let (ast, c, errs) = checked(
            "kprobe:f { $a = arg0 + 1; $b = -1 * 2; @s[func, 1] = sum($b); @u = sum($a); }",
        );
        assert_eq!(errs, 0);
        let ty = |i: usize| match &ast.probes[0].body[i].kind {
            StmtKind::VarAssign { value, .. } => value.ty,
            _ => unreachable!(),
        };
        // Mixed signedness is unsigned (C conversions); literals are signed.
        assert_eq!(ty(0), Type::UNSIGNED);
        assert_eq!(ty(1), Type::SIGNED);
        let s = &c.maps[c.map_index["s"]];
        assert_eq!(
            (s.kind, s.keys.clone(), s.signed),
            (AggKind::Sum, vec![Type::Str, Type::SIGNED], true)
        );
        assert!(!c.maps[c.map_index["u"]].signed);
        assert_eq!(c.scratch[0].len(), 2);
    }

    #[test]
    fn error_count_is_not_doubled_by_two_passes() {
        let (_, _, errs) = checked("kprobe:f { $x = nope; @m = count(); @m = sum(1); }");
        assert_eq!(errs, 2);
    }
}
