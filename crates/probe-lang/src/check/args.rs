//! `args.NAME`: a kprobe's parameter by its prototype in the guest
//! kernel's BTF (an argument register), or a field of a VMM or host
//! tracepoint event, depending on the block's attach points.

use super::Checker;
use super::types::NO_BTF;
use crate::ast::{Access, Type};
use crate::diag::Span;
use crate::types::{FieldType, TypeRef};
use crate::{KprobeTarget, ProbeSpec};

impl Checker<'_, '_> {
    /// `args.NAME` / `args->NAME` in the current block.
    pub(super) fn args_member(&mut self, name: &str, span: Span) -> Option<(Type, Access)> {
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
}
