//! `trace()` and `snapshot()`, which write to `vmprobe record`'s trace:
//! the field layout of each `trace(name = expr, ...)` call site, and where
//! such calls are allowed.

use super::Checker;
use crate::ProbeSpec;
use crate::ast::{TraceArg, Type};
use crate::diag::Span;

/// The static type of a `trace()` field, which becomes its type in the
/// trace file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum TraceType {
    Unsigned,
    Signed,
    Str,
    Buf,
}

/// One `trace(name = expr, ...)` call site: its fields, in order.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TraceSite {
    pub fields: Vec<(String, TraceType)>,
}

impl Checker<'_, '_> {
    /// `trace()` records the probe's own fields; `trace(name = expr, ...)`
    /// declares a call site whose fields are integers, strings or buffers.
    /// Returns the site's index (None for a bare `trace()`).
    pub(super) fn trace(&mut self, fields: &mut [TraceArg], span: Span) -> Option<u32> {
        self.recording_call("trace", span);
        if fields.is_empty() {
            return None;
        }
        let mut site = TraceSite { fields: Vec::new() };
        for f in fields.iter_mut() {
            self.expr(&mut f.value);
            let Some((name, name_span)) = &f.name else {
                self.r.error(
                    f.value.span,
                    "trace() fields need a name, as in trace(fd = arg0, n = arg2)",
                );
                continue;
            };
            if site.fields.iter().any(|(n, _)| n == name) {
                self.r
                    .error(*name_span, format!("trace() field '{name}' is given twice"));
                continue;
            }
            let ty = match f.value.ty {
                Type::Unknown => continue,
                t if t.is_int() => match t.as_int() {
                    Type::Int { signed: true } => TraceType::Signed,
                    _ => TraceType::Unsigned,
                },
                Type::Str => TraceType::Str,
                Type::Buf => TraceType::Buf,
                t => {
                    let what = match t {
                        Type::Tuple(_) => "a tuple; trace its elements as separate fields",
                        Type::Stack => "a stack; trace(...) takes integers, str() or buf()",
                        _ => "a struct, union or array; trace one of its members",
                    };
                    self.r.error(
                        f.value.span,
                        format!("trace() field '{name}' cannot hold {what}"),
                    );
                    continue;
                }
            };
            site.fields.push((name.clone(), ty));
        }
        // A byte array `b` is written to CTF with a length field `_b_length`.
        for (name, ty) in &site.fields {
            if *ty == TraceType::Buf
                && let Some(f) = fields.iter().find(|f| {
                    f.name.as_ref().is_some_and(|(n, _)| {
                        n.strip_prefix('_') == Some(&format!("{name}_length"))
                    })
                })
            {
                let (n, sp) = f.name.as_ref().expect("found by name");
                self.r.error(
                    *sp,
                    format!("trace() field '{n}' clashes with the length of buffer field '{name}'"),
                );
            }
        }
        self.traces.push(site);
        Some(self.traces.len() as u32 - 1)
    }

    /// `trace()` and `snapshot()` write to the trace of `vmprobe record`:
    /// they need a probe that fires in a guest.
    pub(super) fn recording_call(&mut self, name: &str, span: Span) {
        if let Some(p) = self
            .specs
            .iter()
            .find(|p| matches!(p, ProbeSpec::Begin | ProbeSpec::End))
        {
            self.r.error(
                span,
                format!(
                    "{name}() cannot be used in {}: it records what happens in a guest",
                    p.name()
                ),
            );
        }
        self.recording.push((name.to_string(), span));
    }
}
