//! Pass 3: semantic check. Resolves attach points into [`ProbeSpec`]s,
//! fills in expression types, and validates builtins, calls, printf formats,
//! scratch variables and map usage (one aggregation kind and one key
//! signature per map). Nothing runs unless this pass reports no errors.

use crate::ast::*;
use crate::diag::{Reporter, Span};
use crate::format::{Conv, Format};
use crate::lexer::parse_int;
use crate::{KprobeTarget, ProbeSpec};
use rustc_hash::FxHashMap;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AggKind {
    Count,
    Sum,
    Min,
    Max,
    Avg,
}

impl AggKind {
    pub fn from_name(n: &str) -> Option<AggKind> {
        Some(match n {
            "count" => AggKind::Count,
            "sum" => AggKind::Sum,
            "min" => AggKind::Min,
            "max" => AggKind::Max,
            "avg" => AggKind::Avg,
            _ => return None,
        })
    }
    pub fn name(self) -> &'static str {
        match self {
            AggKind::Count => "count",
            AggKind::Sum => "sum",
            AggKind::Min => "min",
            AggKind::Max => "max",
            AggKind::Avg => "avg",
        }
    }
}

/// Key component types are `Int{..}` or `Str`; empty for scalar maps.
#[derive(Clone, Debug)]
pub struct MapDecl {
    pub name: String,
    pub kind: AggKind,
    pub keys: Vec<Type>,
    /// Signedness of the aggregated value (count is unsigned).
    pub signed: bool,
    pub span: Span,
}

pub struct Checked {
    pub maps: Vec<MapDecl>,
    pub map_index: FxHashMap<String, usize>,
    /// (spec, index of the AST probe block), source order.
    pub probes: Vec<(ProbeSpec, usize)>,
    /// Scratch variable slots per block.
    pub scratch: Vec<FxHashMap<String, (u16, Type)>>,
}

const BUILTINS: &[&str] = &[
    "arg0", "arg1", "arg2", "arg3", "arg4", "arg5", "func", "probe", "vcpu", "cpu", "nsecs",
    "retval",
];

fn same_shape(a: Type, b: Type) -> bool {
    a.is_int() && b.is_int() || a == b
}

fn key_sig(keys: &[Type]) -> String {
    let v: Vec<&str> = keys.iter().map(|t| t.name()).collect();
    format!("[{}]", v.join(", "))
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
}

pub(crate) fn check(ast: &mut Ast, r: &mut Reporter<'_>) -> Checked {
    let mut probes = Vec::new();
    let mut kinds = Vec::new();
    for (bi, block) in ast.probes.iter().enumerate() {
        let mut all_k = true;
        let mut all_kr = true;
        for (text, span) in &block.attach {
            match parse_probe(text) {
                Ok(spec) => {
                    all_k &= matches!(spec, ProbeSpec::Kprobe { .. });
                    all_kr &= matches!(spec, ProbeSpec::Kretprobe { .. });
                    probes.push((spec, bi));
                }
                Err(m) => r.error(*span, m),
            }
        }
        kinds.push((all_k, all_kr));
    }

    // Pass A discovers map declarations wherever they are in the script (a
    // map may be read in a block that comes before its assignment); pass B
    // re-walks with the complete table and is the one that reports errors.
    let mut scratch = Vec::new();
    let mut maps = Vec::new();
    let mut map_index = FxHashMap::default();
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
        };
        scratch.clear();
        for (block, &(k, kr)) in ast.probes.iter_mut().zip(&kinds) {
            c.vars.clear();
            c.all_kprobe = k;
            c.all_kretprobe = kr;
            if let Some(p) = &mut block.predicate {
                c.expr(p);
                c.want_int(p, "predicate");
            }
            c.stmts(&mut block.body);
            scratch.push(std::mem::take(&mut c.vars));
        }
        maps = c.maps;
        map_index = c.map_index;
    }
    Checked {
        maps,
        map_index,
        probes,
        scratch,
    }
}

/// Attach point text -> ProbeSpec.
pub fn parse_probe(text: &str) -> Result<ProbeSpec, String> {
    match text {
        "BEGIN" => return Ok(ProbeSpec::Begin),
        "END" => return Ok(ProbeSpec::End),
        _ => {}
    }
    let Some((kind, rest)) = text.split_once(':') else {
        return Err(format!("invalid probe '{text}'"));
    };
    let valid_name = |n: &str| {
        !n.is_empty()
            && n.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '*' | '?'))
    };
    match kind {
        "kprobe" | "k" => {
            let (target, off) = match rest.split_once('+') {
                Some((t, o)) => {
                    let off = parse_int(o).ok_or_else(|| format!("invalid probe offset '{o}'"))?;
                    (t, off)
                }
                None => (rest, 0),
            };
            if target.starts_with("0x") {
                let a = parse_int(target).ok_or_else(|| format!("invalid address '{target}'"))?;
                return Ok(ProbeSpec::Kprobe {
                    target: KprobeTarget::Address(a),
                    offset: off,
                });
            }
            if !valid_name(target) {
                return Err(format!("invalid kprobe function name '{target}'"));
            }
            if off != 0 && target.contains(['*', '?']) {
                return Err("an offset cannot be combined with a wildcard".into());
            }
            Ok(ProbeSpec::Kprobe {
                target: KprobeTarget::Function(target.to_string()),
                offset: off,
            })
        }
        "kretprobe" | "kr" => {
            if !valid_name(rest) {
                return Err(format!("invalid kretprobe function name '{rest}'"));
            }
            Ok(ProbeSpec::Kretprobe {
                function: rest.to_string(),
            })
        }
        "tracepoint" | "t" | "uprobe" | "u" | "uretprobe" | "ur" | "usdt" | "U" | "profile"
        | "p" | "interval" | "i" | "software" | "s" | "hardware" | "h" | "watchpoint" | "w"
        | "kfunc" | "f" | "kretfunc" | "fr" | "rawtracepoint" | "rt" | "iter" => Err(format!(
            "probe type '{kind}' is not supported yet (supported: BEGIN, END, kprobe, kretprobe)"
        )),
        _ => Err(format!("unknown probe type '{kind}'")),
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

    fn stmts(&mut self, stmts: &mut [Stmt]) {
        for s in stmts {
            self.stmt(s);
        }
    }

    fn stmt(&mut self, s: &mut Stmt) {
        match &mut s.kind {
            StmtKind::MapAssign {
                name,
                name_span,
                keys,
                value,
            } => {
                let key_tys = self.keys(keys);
                let ExprKind::Call { name: f, args } = &mut value.kind else {
                    self.expr(value);
                    self.r.error(
                        value.span,
                        "map values must be aggregations for now: count(), sum(), min(), max(), avg()",
                    );
                    return;
                };
                let Some(kind) = AggKind::from_name(f) else {
                    self.r.error(
                        value.span,
                        format!("unknown aggregation function '{f}' (expected count, sum, min, max or avg)"),
                    );
                    return;
                };
                for a in args.iter_mut() {
                    self.expr(a);
                }
                let want = if kind == AggKind::Count { 0 } else { 1 };
                if args.len() != want {
                    self.r.error(
                        value.span,
                        format!(
                            "{f}() takes {want} argument{}, got {}",
                            if want == 1 { "" } else { "s" },
                            args.len()
                        ),
                    );
                    return;
                }
                let signed = match args.first() {
                    Some(a) => {
                        self.want_int(a, &format!("argument of {f}()"));
                        a.ty == Type::SIGNED
                    }
                    None => false,
                };
                value.ty = Type::UNSIGNED;
                let span = *name_span;
                self.declare(name, kind, key_tys, signed, span.to(value.span));
            }
            StmtKind::VarAssign { name, value } => {
                self.expr(value);
                if value.ty == Type::Unknown {
                    return;
                }
                let next = self.vars.len() as u16;
                match self.vars.get(name.as_str()) {
                    Some(&(_, t)) if !same_shape(t, value.ty) => self.r.error(
                        value.span,
                        format!(
                            "type mismatch for ${name}: assigning {} to a variable of type {}",
                            value.ty.name(),
                            t.name()
                        ),
                    ),
                    Some(_) => {}
                    None => {
                        self.vars.insert(name.clone(), (next, value.ty));
                    }
                }
            }
            StmtKind::If { cond, then, els } => {
                self.expr(cond);
                self.want_int(cond, "if condition");
                self.stmts(then);
                self.stmts(els);
            }
            StmtKind::Call {
                name,
                name_span,
                args,
            } => self.call_stmt(name, *name_span, args, s.span),
        }
    }

    fn declare(
        &mut self,
        name: &str,
        kind: AggKind,
        keys: Option<Vec<Type>>,
        signed: bool,
        span: Span,
    ) {
        let Some(keys) = keys else { return };
        match self.map_index.get(name) {
            None => {
                self.map_index.insert(name.to_string(), self.maps.len());
                self.maps.push(MapDecl {
                    name: name.to_string(),
                    kind,
                    keys,
                    signed,
                    span,
                });
            }
            Some(&i) => {
                let d = &self.maps[i];
                if d.kind != kind {
                    let m = format!(
                        "@{name} is used as {}() here but as {}() elsewhere",
                        kind.name(),
                        d.kind.name()
                    );
                    self.r.error(span, m);
                } else if d.span != span {
                    self.check_keys(name, &keys, span);
                }
            }
        }
    }

    fn check_keys(&mut self, name: &str, keys: &[Type], span: Span) {
        let Some(&i) = self.map_index.get(name) else {
            self.r.error(span, format!("undefined map '@{name}'"));
            return;
        };
        let d = &self.maps[i];
        let ok =
            d.keys.len() == keys.len() && d.keys.iter().zip(keys).all(|(a, b)| same_shape(*a, *b));
        if !ok {
            let m = format!(
                "@{name} is used with key {} here but key {} elsewhere",
                key_sig(keys),
                key_sig(&d.keys)
            );
            self.r.error(span, m);
        }
    }

    /// Checks key expressions; None if one of them is already in error.
    fn keys(&mut self, keys: &mut [Expr]) -> Option<Vec<Type>> {
        let mut out = Vec::new();
        for k in keys.iter_mut() {
            self.expr(k);
            out.push(k.ty);
        }
        if out.contains(&Type::Unknown) {
            None
        } else {
            Some(out)
        }
    }

    fn map_arg(
        &mut self,
        f: &str,
        args: &mut [Expr],
        call_span: Span,
        keyed: bool,
    ) -> Option<(String, Span, Option<Vec<Type>>)> {
        if args.len() != 1 {
            self.r.error(
                call_span,
                format!("{f}() takes 1 argument, got {}", args.len()),
            );
            return None;
        }
        let span = args[0].span;
        if !matches!(args[0].kind, ExprKind::Map { .. }) {
            self.expr(&mut args[0]);
            self.r.error(span, format!("{f}() expects a map argument"));
            return None;
        }
        let ExprKind::Map { name, keys } = &mut args[0].kind else {
            return None;
        };
        if !keyed && !keys.is_empty() {
            self.r
                .error(span, format!("{f}() expects a whole map, without a key"));
            return None;
        }
        let key_tys = self.keys(keys);
        Some((name.clone(), span, key_tys))
    }

    fn call_stmt(&mut self, name: &str, name_span: Span, args: &mut [Expr], span: Span) {
        match name {
            "printf" => self.printf(args, span),
            "exit" => {
                if !args.is_empty() {
                    self.r.error(
                        span,
                        format!("exit() takes 0 arguments, got {}", args.len()),
                    );
                }
            }
            "print" | "clear" | "delete" => {
                let keyed = name == "delete";
                if let Some((m, mspan, keys)) = self.map_arg(name, args, span, keyed) {
                    match keys {
                        Some(keys) if keyed => self.check_keys(&m, &keys, mspan),
                        _ if !self.map_index.contains_key(&m) => {
                            self.r.error(mspan, format!("undefined map '@{m}'"))
                        }
                        _ => {}
                    }
                }
            }
            _ if AggKind::from_name(name).is_some() => self.r.error(
                span,
                format!("{name}() must be assigned to a map, e.g. @x = {name}(...)"),
            ),
            _ => self
                .r
                .error(name_span, format!("unknown function '{name}'")),
        }
    }

    fn printf(&mut self, args: &mut [Expr], span: Span) {
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
            let need_str = spec.conv == Conv::Str;
            let bad = match a.ty {
                Type::Unknown => false,
                Type::Str => !need_str,
                Type::Int { .. } => need_str,
            };
            if bad {
                let (want, c) = if need_str {
                    ("string", "s")
                } else {
                    ("integer", "d")
                };
                let c = match spec.conv {
                    Conv::Str | Conv::Signed => c,
                    Conv::Unsigned => "u",
                    Conv::HexLower => "x",
                    Conv::HexUpper => "X",
                    Conv::Char => "c",
                };
                self.r.error(
                    a.span,
                    format!(
                        "printf: %{c} specifier expects a value of type {want} ({} supplied)",
                        a.ty.name()
                    ),
                );
            }
        }
    }

    fn expr(&mut self, e: &mut Expr) {
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
            ExprKind::Map { name, keys } => {
                let key_tys = self.keys(keys);
                match (self.map_index.get(name.as_str()), key_tys) {
                    (Some(&i), Some(k)) => {
                        let signed = self.maps[i].signed;
                        let name = name.clone();
                        self.check_keys(&name, &k, e.span);
                        Type::Int { signed }
                    }
                    (None, _) => {
                        self.r.error(e.span, format!("undefined map '@{name}'"));
                        Type::Unknown
                    }
                    _ => Type::Unknown,
                }
            }
            ExprKind::Call { name, args } => {
                for a in args.iter_mut() {
                    self.expr(a);
                }
                let m = if AggKind::from_name(name).is_some() {
                    format!("{name}() can only be used as a map value, e.g. @x = {name}(...)")
                } else if matches!(
                    name.as_str(),
                    "printf" | "print" | "clear" | "delete" | "exit"
                ) {
                    format!("{name}() is a statement and has no value")
                } else {
                    format!("unknown function '{name}'")
                };
                self.r.error(e.span, m);
                Type::Unknown
            }
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
                    (_, Type::Unknown) | (_, Type::Str) => Type::Unknown,
                    (UnOp::Not, _) => Type::SIGNED,
                    (_, t) => t,
                }
            }
            ExprKind::Binary(op, a, b) => {
                self.expr(a);
                self.expr(b);
                let op = *op;
                match (a.ty, b.ty) {
                    (Type::Unknown, _) | (_, Type::Unknown) => Type::Unknown,
                    (Type::Str, Type::Str) if matches!(op, BinOp::Eq | BinOp::Ne) => Type::SIGNED,
                    (Type::Int { signed: x }, Type::Int { signed: y }) => match op {
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
                    },
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
                    (Type::Int { signed: x }, Type::Int { signed: y }) => {
                        Type::Int { signed: x && y }
                    }
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

    fn builtin(&mut self, name: &str, span: Span) -> Type {
        if !BUILTINS.contains(&name) {
            self.r.error(span, format!("unknown builtin '{name}'"));
            return Type::Unknown;
        }
        match name {
            "func" | "probe" => Type::Str,
            "retval" if !self.all_kretprobe => {
                self.r.error(
                    span,
                    "the retval builtin can only be used in kretprobe blocks",
                );
                Type::Unknown
            }
            n if n.starts_with("arg") && !self.all_kprobe => {
                self.r.error(
                    span,
                    format!("the {n} builtin can only be used in kprobe blocks"),
                );
                Type::Unknown
            }
            _ => Type::UNSIGNED,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parser::parse;

    fn checked(src: &str) -> (Ast, Checked, usize) {
        let mut ast = parse(src).unwrap();
        let mut r = Reporter::new(src, "t");
        let c = check(&mut ast, &mut r);
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
    fn probe_parsing() {
        assert_eq!(
            parse_probe("kprobe:f+0x10").unwrap(),
            ProbeSpec::Kprobe {
                target: KprobeTarget::Function("f".into()),
                offset: 16
            }
        );
        assert_eq!(
            parse_probe("kprobe:0x10").unwrap(),
            ProbeSpec::Kprobe {
                target: KprobeTarget::Address(16),
                offset: 0
            }
        );
        assert!(parse_probe("kprobe:").is_err());
        assert!(parse_probe("kprobe:f+zz").is_err());
        assert!(parse_probe("kretprobe:f+1").is_err());
        assert!(parse_probe("BEGINX").is_err());
    }

    #[test]
    fn error_count_is_not_doubled_by_two_passes() {
        let (_, _, errs) = checked("kprobe:f { $x = nope; @m = count(); @m = sum(1); }");
        assert_eq!(errs, 2);
    }
}
