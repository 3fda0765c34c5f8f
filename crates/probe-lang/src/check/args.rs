//! `args.NAME`: a kprobe's parameter by its prototype in the guest
//! kernel's BTF (an argument register), a field of a VMM or host
//! tracepoint event, or a field of a guest syscall tracepoint (read from
//! the syscall's saved registers), depending on the block's attach points.

use super::Checker;
use super::types::NO_BTF;
use crate::ast::{Access, Expr, ExprKind, Type};
use crate::diag::Span;
use crate::types::{FieldType, TypeInfo, TypeRef};
use crate::{KprobeTarget, ProbeSpec};

impl Checker<'_, '_> {
    /// `args.NAME` / `args->NAME` in the current block.
    pub(super) fn args_member(&mut self, name: &str, span: Span) -> Option<(Type, Access)> {
        let specs = self.specs.clone();
        let syscall = |s: &ProbeSpec| {
            matches!(s, ProbeSpec::GuestTracepoint { .. })
                && (s.syscall_event().is_some() || s.raw_syscall_event().is_some())
        };
        if !specs.is_empty() && specs.iter().all(syscall) {
            return self.syscall_field(&specs, name, span);
        }
        // Other guest tracepoints' records are fields as VMM and host
        // events' are: typed by their declaration, read at the hit.
        let is_event = |s: &ProbeSpec| {
            matches!(s, ProbeSpec::Vmm { .. } | ProbeSpec::HostTracepoint { .. })
                || matches!(s, ProbeSpec::GuestTracepoint { .. }) && !syscall(s)
        };
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
                // A kretfunc's args are the entry registers, captured at
                // the entry and handed to the return's handlers.
                ProbeSpec::Kfunc { function } | ProbeSpec::Kretfunc { function } => {
                    funcs.push(function.clone())
                }
                ProbeSpec::Kretprobe { .. } => {
                    self.r.error(
                        span,
                        "args is not available in kretprobe blocks (use retval for the return value, or kretfunc: for args and retval)",
                    );
                    return None;
                }
                other => {
                    self.r.error(
                        span,
                        format!(
                            "args can only be used in kprobes on a named function (without offset or wildcard), kfunc, kretfunc, tracepoint, vmm and host:tracepoint probes, not in '{}'",
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
}

/// The registers of the syscall arguments in `struct pt_regs`, in order
/// (the x86-64 syscall convention: the fourth is `r10`, not `rcx`).
const SYSCALL_ARG_REGS: [&str; 6] = ["di", "si", "dx", "r10", "r8", "r9"];

impl Checker<'_, '_> {
    /// `args.NAME` of guest syscall tracepoints, as the guest's tracefs
    /// names and types the event's fields: `__syscall_nr`, then the
    /// syscall's parameters (`sys_enter_*`) or `ret` (`sys_exit_*`). Every
    /// attach point of the block must give the field the same reading.
    fn syscall_field(
        &mut self,
        specs: &[ProbeSpec],
        name: &str,
        span: Span,
    ) -> Option<(Type, Access)> {
        let Some(types) = self.types else {
            self.r.error(span, format!("args {NO_BTF}"));
            return None;
        };
        if specs.iter().any(|s| s.raw_syscall_event().is_some()) {
            return self.raw_syscall_field(specs, name, span);
        }
        let mut found: Option<(Type, Access)> = None;
        for spec in specs {
            let (sys, exit) = spec.syscall_event()?;
            if sys.contains(['*', '?']) {
                self.r.error(
                    span,
                    format!(
                        "args cannot be used in '{}': a wildcard's syscalls have different fields",
                        spec.name()
                    ),
                );
                return None;
            }
            let Some(decl) = types.syscall(sys) else {
                self.r.error(
                    span,
                    format!("args of '{}' needs the guest kernel's syscall metadata, which this compilation does not have", spec.name()),
                );
                return None;
            };
            let got = if name == "__syscall_nr" {
                let Some(nr) = decl.nr else {
                    self.r
                        .error(span, format!("the number of syscall '{sys}' is not known"));
                    return None;
                };
                (Type::SIGNED, Access::Const(nr.into()))
            } else if exit {
                if name != "ret" {
                    self.r.error(
                        span,
                        format!(
                            "'{}' has no field '{name}' (fields: __syscall_nr, ret)",
                            spec.name()
                        ),
                    );
                    return None;
                }
                // tracefs: `long ret`.
                (Type::SIGNED, Access::Retval)
            } else {
                let Some(i) = decl.params.iter().position(|(_, n)| n == name) else {
                    let mut names = vec!["__syscall_nr"];
                    names.extend(decl.params.iter().map(|(_, n)| n.as_str()));
                    self.r.error(
                        span,
                        format!(
                            "'{}' has no field '{name}' (fields: {})",
                            spec.name(),
                            names.join(", ")
                        ),
                    );
                    return None;
                };
                let offset = SYSCALL_ARG_REGS
                    .get(i)
                    .and_then(|reg| {
                        Some(
                            types
                                .member(types.lookup("struct pt_regs")?, reg)?
                                .bit_offset
                                / 8,
                        )
                    })
                    .and_then(|o| u16::try_from(o).ok());
                let Some(offset) = offset else {
                    self.r.error(span, "no 'struct pt_regs' (with di, si, dx, r10, r8, r9) in the guest kernel's BTF");
                    return None;
                };
                (
                    self.c_type(&decl.params[i].0),
                    Access::SyscallArg { offset },
                )
            };
            match found {
                Some(f) if f != got => {
                    self.r.error(
                        span,
                        format!("field '{name}' differs between the probed tracepoints"),
                    );
                    return None;
                }
                _ => found = Some(got),
            }
        }
        found
    }

    /// The language type of a syscall parameter from its C type as the
    /// metadata spells it (`const char *`, `unsigned int`, `umode_t`,
    /// `struct stat *`): a kernel pointer where BTF has the pointee (so
    /// `str()` and `->` work), otherwise an integer, signed as the C type is
    /// (bpftrace reads each 8-byte field as a 64-bit integer of the type's
    /// signedness).
    fn c_type(&self, c: &str) -> Type {
        let ptr = c.matches('*').count() as u8;
        let base: Vec<&str> = c
            .split(|ch: char| ch == '*' || ch.is_whitespace())
            .filter(|w| !w.is_empty() && !matches!(*w, "const" | "volatile" | "__user"))
            .collect();
        let base = base.join(" ");
        let Some(types) = self.types else {
            return Type::UNSIGNED;
        };
        if ptr > 0 {
            return match types.lookup(&base) {
                Some(id) => self.norm(id, ptr),
                None => Type::UNSIGNED,
            };
        }
        let words: Vec<&str> = base.split(' ').collect();
        if words.contains(&"unsigned") {
            return Type::UNSIGNED;
        }
        if words
            .iter()
            .all(|w| matches!(*w, "int" | "long" | "short" | "char" | "signed"))
        {
            return Type::SIGNED;
        }
        match types.lookup(&base).map(|id| types.info(id)) {
            Some(TypeInfo::Int { signed, .. } | TypeInfo::Enum { signed, .. }) => {
                Type::Int { signed }
            }
            _ => Type::UNSIGNED,
        }
    }
}

impl Checker<'_, '_> {
    /// `retval` in a block of `kretfunc`s: typed by the functions' return
    /// type (they must agree). An integer narrower than 8 bytes is only the
    /// low bytes of rax, so the node becomes a cast of the raw register (in
    /// the reporting pass only, so that a second walk does not wrap it twice).
    pub(super) fn kretfunc_retval(&mut self, e: &mut Expr) -> Type {
        let specs = self.specs.clone();
        let Some(types) = self.types else {
            self.r.error(e.span, format!("retval of kretfunc {NO_BTF}"));
            return Type::Unknown;
        };
        let mut found: Option<(Type, Access)> = None;
        for spec in &specs {
            let ProbeSpec::Kretfunc { function } = spec else {
                continue;
            };
            // A missing prototype is reported at the attach point.
            let Some(proto) = types.function(function) else {
                return Type::Unknown;
            };
            if matches!(types.info(proto.ret), TypeInfo::Void) {
                self.r.error(
                    e.span,
                    format!("'{function}' returns void: kretfunc:{function} has no retval"),
                );
                return Type::Unknown;
            }
            let Some(got) = self.value_of(proto.ret, false, e.span) else {
                return Type::Unknown;
            };
            if !matches!(got.1, Access::Load { .. }) {
                self.r.error(
                    e.span,
                    format!(
                        "'{function}' returns a '{}' by value, which is not supported",
                        types.type_name(proto.ret)
                    ),
                );
                return Type::Unknown;
            }
            match found {
                Some(f) if f != got => {
                    self.r.error(
                        e.span,
                        "retval differs in type between the probed functions",
                    );
                    return Type::Unknown;
                }
                _ => found = Some(got),
            }
        }
        let Some((t, access)) = found else {
            return Type::Unknown;
        };
        if let Access::Load { size, signed } = access
            && size < 8
            && !self.discovering
        {
            let raw = Expr {
                kind: ExprKind::Ident("retval".into()),
                span: e.span,
                ty: Type::UNSIGNED,
            };
            e.kind = ExprKind::Cast {
                size,
                signed,
                ptr: false,
                expr: Box::new(raw),
            };
        }
        t
    }
}

impl Checker<'_, '_> {
    /// `args.NAME` of `raw_syscalls:sys_enter` (`id`, `args[0]`..`args[5]`)
    /// and `raw_syscalls:sys_exit` (`id`, `ret`), as the guest's tracefs
    /// declares them (`long id; unsigned long args[6];` / `long id; long
    /// ret;`): read from the `struct pt_regs` that the probed function's
    /// first argument points to (`orig_ax`, the argument registers, `ax`).
    /// `args.args[N]` arrives here as `args[N]` (see `raw_syscall_index`).
    fn raw_syscall_field(
        &mut self,
        specs: &[ProbeSpec],
        name: &str,
        span: Span,
    ) -> Option<(Type, Access)> {
        let Some(types) = self.types else {
            self.r.error(span, format!("args {NO_BTF}"));
            return None;
        };
        let mut found: Option<(Type, Access)> = None;
        for spec in specs {
            let Some(exit) = spec.raw_syscall_event() else {
                self.r.error(
                    span,
                    format!(
                        "args cannot mix raw_syscalls with '{}' in one block",
                        spec.name()
                    ),
                );
                return None;
            };
            let (reg, ty) = match (name, exit) {
                ("id", _) => ("orig_ax", Type::SIGNED),
                ("ret", true) => ("ax", Type::SIGNED),
                (n, false) if n.starts_with("args[") => {
                    let i: Option<usize> = n
                        .strip_prefix("args[")
                        .and_then(|r| r.strip_suffix(']'))
                        .and_then(|d| d.parse().ok());
                    match i.and_then(|i| SYSCALL_ARG_REGS.get(i)) {
                        Some(reg) => (*reg, Type::UNSIGNED),
                        None => {
                            self.r.error(span, "args.args has 6 elements (0..5)");
                            return None;
                        }
                    }
                }
                ("args", false) => {
                    self.r.error(
                        span,
                        "args.args is read by element, with a constant index: args.args[0]..args.args[5]",
                    );
                    return None;
                }
                _ => {
                    self.r.error(
                        span,
                        format!(
                            "'{}' has no field '{name}' (fields: {})",
                            spec.name(),
                            if exit { "id, ret" } else { "id, args" }
                        ),
                    );
                    return None;
                }
            };
            let offset = types
                .lookup("struct pt_regs")
                .and_then(|r| types.member(r, reg))
                .and_then(|m| u16::try_from(m.bit_offset / 8).ok());
            let Some(offset) = offset else {
                self.r.error(
                    span,
                    format!("no 'struct pt_regs' with '{reg}' in the guest kernel's BTF"),
                );
                return None;
            };
            let got = (ty, Access::SyscallArg { offset });
            match found {
                Some(f) if f != got => {
                    self.r.error(
                        span,
                        format!("field '{name}' differs between the probed tracepoints"),
                    );
                    return None;
                }
                _ => found = Some(got),
            }
        }
        found
    }

    /// `args.args[N]` in `raw_syscalls:sys_enter` blocks: the six syscall
    /// arguments are not contiguous in `struct pt_regs`, so each element is
    /// its own field, `args[N]`, and N must be a constant. Rewrites the
    /// index expression into that member; false if `e` is not one.
    pub(super) fn raw_syscall_index(&mut self, e: &mut Expr) -> bool {
        if !self
            .specs
            .iter()
            .any(|s| s.raw_syscall_event() == Some(false))
        {
            return false;
        }
        let ExprKind::Index { base, index, .. } = &mut e.kind else {
            return false;
        };
        let ExprKind::Member {
            base: args, name, ..
        } = &base.kind
        else {
            return false;
        };
        if name != "args" || !matches!(&args.kind, ExprKind::Ident(a) if a == "args") {
            return false;
        }
        let ExprKind::Int(n) = index.kind else {
            self.r.error(
                index.span,
                "args.args needs a constant index (0..5): the syscall's arguments are six registers",
            );
            e.ty = Type::Unknown;
            return true;
        };
        let args = args.clone();
        e.kind = ExprKind::Member {
            base: args,
            name: format!("args[{n}]"),
            arrow: false,
            offset: 0,
            access: Access::Unresolved,
        };
        false
    }
}
