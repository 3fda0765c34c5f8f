//! `printf()`: the format string must be a literal that parses (the
//! conversions themselves are [`crate::format`]'s), and each argument must
//! match its conversion in number and type.

use super::Checker;
use crate::ast::{Expr, ExprKind, Type};
use crate::diag::Span;
use crate::format::{Conv, Format};

impl Checker<'_, '_> {
    /// `printf(fmt, args...)`: every argument is checked first, so errors
    /// inside them are reported whatever the format says.
    pub(super) fn printf(&mut self, args: &mut [Expr], span: Span) {
        for a in args.iter_mut() {
            self.expr(a);
        }
        let Some(first) = args.first() else {
            self.r.error(span, "printf() needs a format string");
            return;
        };
        let ExprKind::Str(fmt) = &first.kind else {
            self.r.error(
                first.span,
                "printf: the first argument must be a string literal",
            );
            return;
        };
        let fmt = match Format::parse(fmt) {
            Ok(f) => f,
            Err(m) => {
                self.r.error(first.span, m);
                return;
            }
        };
        let specs: Vec<_> = fmt.specs().copied().collect();
        let (given, want) = (args.len() - 1, specs.len());
        if given != want {
            let which = if given > want {
                "Too many"
            } else {
                "Not enough"
            };
            self.r.error(
                span,
                format!("printf: {which} arguments for format string ({given} supplied, {want} expected)"),
            );
            return;
        }
        for (spec, a) in specs.iter().zip(&args[1..]) {
            let want = match spec.conv {
                Conv::Str => Type::Str,
                Conv::Buf => Type::Buf,
                _ => Type::SIGNED,
            };
            let ok = a.ty == Type::Unknown
                || match want {
                    Type::Str => matches!(a.ty, Type::Str | Type::Stack),
                    Type::Buf => a.ty == Type::Buf,
                    _ => a.ty.is_int(),
                };
            if !ok {
                let wname = if want.is_int() {
                    "integer"
                } else {
                    want.name()
                };
                self.r.error(
                    a.span,
                    format!(
                        "printf: %{} specifier expects a value of type {wname} ({} supplied)",
                        spec.conv.letter(),
                        a.ty.name()
                    ),
                );
            }
        }
    }
}
