//! Maps: their declarations (one aggregation kind, value type and key
//! signature per map, wherever in the script it is used), assignments and
//! updates, keys, and map arguments of functions.

use super::{Checker, same_shape};
use crate::ast::{BinOp, Expr, ExprKind, Type, UnOp};
use crate::diag::Span;

/// What a map holds: one aggregation, or plain values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum AggKind {
    Count,
    Sum,
    Min,
    Max,
    Avg,
    Stats,
    Hist,
    Lhist,
    /// A plain value map: `@m[k] = expr` (integer or string).
    Value,
}

impl AggKind {
    /// Aggregation functions (not `Value`).
    pub fn from_name(n: &str) -> Option<AggKind> {
        Some(match n {
            "count" => AggKind::Count,
            "sum" => AggKind::Sum,
            "min" => AggKind::Min,
            "max" => AggKind::Max,
            "avg" => AggKind::Avg,
            "stats" => AggKind::Stats,
            "hist" => AggKind::Hist,
            "lhist" => AggKind::Lhist,
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
            AggKind::Stats => "stats",
            AggKind::Hist => "hist",
            AggKind::Lhist => "lhist",
            AggKind::Value => "value",
        }
    }
    /// Maps whose entries are histograms (bucket arrays).
    pub fn is_hist(self) -> bool {
        matches!(self, AggKind::Hist | AggKind::Lhist)
    }
}

/// `lhist(v, min, max, step)` parameters (literals, checked).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LhistParams {
    pub min: u64,
    pub max: u64,
    pub step: u64,
}

impl LhistParams {
    /// Buckets: `(..., min)`, one per step, `[max, ...)`.
    pub fn buckets(self) -> usize {
        ((self.max - self.min) / self.step) as usize + 2
    }
}

/// Number of `hist()` buckets: `(..., 0)`, `[0]`, `[1]`, then powers of
/// two up to `[2G, 4G)` (bpftrace 0.17's log2 stops at 2^31).
pub const HIST_BUCKETS: usize = 34;

/// Key component types are `Int{..}` or `Str`; empty for scalar maps.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct MapDecl {
    pub name: String,
    pub kind: AggKind,
    pub keys: Vec<Type>,
    /// Signedness of the aggregated value (count is unsigned).
    pub signed: bool,
    /// For `Value` maps: the value type (`Int{..}` or `Str`).
    pub value: Type,
    pub lhist: Option<LhistParams>,
    pub span: Span,
}

fn key_sig(keys: &[Type]) -> String {
    let v: Vec<&str> = keys.iter().map(|t| t.name()).collect();
    format!("[{}]", v.join(", "))
}

impl Checker<'_, '_> {
    /// `@m[keys] = value`: an aggregation (`count()`, `lhist(...)`, ...)
    /// or a plain value, which declares the map or must agree with it.
    pub(super) fn map_assign(
        &mut self,
        name: &str,
        name_span: Span,
        keys: &mut [Expr],
        value: &mut Expr,
    ) {
        let key_tys = self.keys(keys);
        let span = name_span.to(value.span);
        let agg = match &value.kind {
            ExprKind::Call { name: f, .. } => AggKind::from_name(f),
            _ => None,
        };
        let Some(kind) = agg else {
            self.assigning = Some(name.to_string());
            self.expr(value);
            self.assigning = None;
            match value.ty {
                Type::Unknown => {}
                Type::Buf => self
                    .r
                    .error(value.span, "a buffer cannot be stored in a map"),
                Type::Kernel { ptr: 0, .. } => self.r.error(
                    value.span,
                    "a struct, union or array cannot be stored in a map; store one of its members",
                ),
                t => self.declare(name, AggKind::Value, key_tys, t.as_int(), None, span),
            }
            return;
        };
        let ExprKind::Call { name: f, args } = &mut value.kind else {
            return;
        };
        for a in args.iter_mut() {
            self.expr(a);
        }
        let want = match kind {
            AggKind::Count => 0,
            AggKind::Lhist => 4,
            _ => 1,
        };
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
                a.ty.as_int() == Type::SIGNED
            }
            None => false,
        };
        let lhist = if kind == AggKind::Lhist {
            match lhist_params(&args[1..]) {
                Ok(p) => Some(p),
                Err((span, m)) => {
                    self.r.error(span, m);
                    return;
                }
            }
        } else {
            None
        };
        value.ty = Type::UNSIGNED;
        let vt = Type::Int { signed };
        self.declare(name, kind, key_tys, vt, lhist, span);
    }

    /// `@m[keys]` read as a value: only value, count, sum, min, max and
    /// avg maps have one.
    pub(super) fn map_read(&mut self, name: &str, keys: &mut [Expr], span: Span) -> Type {
        let key_tys = self.keys(keys);
        match (self.map_index.get(name), key_tys) {
            (Some(&i), Some(k)) => {
                let d = &self.maps[i];
                let (kind, value) = (d.kind, d.value);
                self.check_keys(name, &k, span);
                match kind {
                    AggKind::Value => value,
                    AggKind::Hist | AggKind::Lhist | AggKind::Stats => {
                        self.r.error(
                            span,
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
            (None, _) if self.assigning.as_deref() == Some(name) => Type::UNSIGNED,
            (None, _) => {
                self.r.error(span, format!("undefined map '@{name}'"));
                Type::Unknown
            }
            _ => Type::Unknown,
        }
    }

    /// `@m[keys] op= value` and `@m++`: a read-modify-write of an integer.
    pub(super) fn map_update(
        &mut self,
        name: &str,
        name_span: Span,
        keys: &mut [Expr],
        op: BinOp,
        value: &mut Expr,
    ) {
        let key_tys = self.keys(keys);
        self.expr(value);
        self.want_int(value, &format!("right operand of '{}='", op.symbol()));
        let span = name_span.to(value.span);
        // `@m++` declares an integer map like `@m = 0` would.
        let vt = match self.map_index.get(name) {
            Some(&i) => {
                let d = &self.maps[i];
                if d.kind != AggKind::Value || !d.value.is_int() {
                    let what = if d.kind == AggKind::Value {
                        format!("{} values", d.value.name())
                    } else {
                        format!("{}() values", d.kind.name())
                    };
                    let m = format!("@{name} holds {what}; '{}=' needs integers", op.symbol());
                    self.r.error(span, m);
                    return;
                }
                Type::Int { signed: d.signed }
            }
            None => Type::SIGNED,
        };
        self.declare(name, AggKind::Value, key_tys, vt, None, span);
    }

    fn declare(
        &mut self,
        name: &str,
        kind: AggKind,
        keys: Option<Vec<Type>>,
        value: Type,
        lhist: Option<LhistParams>,
        span: Span,
    ) {
        let Some(keys) = keys else { return };
        if let Some(k) = keys
            .iter()
            .find(|t| matches!(t, Type::Buf | Type::Tuple(_) | Type::Kernel { ptr: 0, .. }))
        {
            self.r
                .error(span, format!("a {} cannot be used as a map key", k.name()));
            return;
        }
        let signed = value == Type::SIGNED;
        match self.map_index.get(name) {
            None => {
                self.map_index.insert(name.to_string(), self.maps.len());
                self.maps.push(MapDecl {
                    name: name.to_string(),
                    kind,
                    keys,
                    signed,
                    value,
                    lhist,
                    span,
                });
            }
            Some(&i) => {
                let d = &self.maps[i];
                let what = |k: AggKind, v: Type| {
                    if k == AggKind::Value && v.is_int() {
                        "an integer value".to_string()
                    } else if let (AggKind::Value, Type::Tuple(_)) = (k, v) {
                        format!("a {} tuple", self.ty_name(v))
                    } else if k == AggKind::Value {
                        format!("a {} value", v.name())
                    } else {
                        format!("{}()", k.name())
                    }
                };
                if d.kind != kind || !same_shape(d.value, value) {
                    let m = format!(
                        "@{name} is used as {} here but as {} elsewhere",
                        what(kind, value),
                        what(d.kind, d.value)
                    );
                    self.r.error(span, m);
                } else if d.lhist != lhist {
                    self.r.error(
                        span,
                        format!("@{name} is used with different lhist() parameters elsewhere"),
                    );
                } else if d.span != span {
                    self.check_keys(name, &keys, span);
                }
            }
        }
    }

    /// Type name with tuple elements spelled out: `(integer, string)`.
    fn ty_name(&self, t: Type) -> String {
        match t {
            Type::Tuple(i) => {
                let el: Vec<String> = self
                    .tuples
                    .get(i as usize)
                    .map(|ts| ts.iter().map(|t| self.ty_name(*t)).collect())
                    .unwrap_or_default();
                format!("({})", el.join(", "))
            }
            t => t.name().to_string(),
        }
    }

    pub(super) fn check_keys(&mut self, name: &str, keys: &[Type], span: Span) {
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
    pub(super) fn keys(&mut self, keys: &mut [Expr]) -> Option<Vec<Type>> {
        let mut out = Vec::new();
        for k in keys.iter_mut() {
            self.expr(k);
            out.push(k.ty.as_int());
        }
        if out.contains(&Type::Unknown) {
            None
        } else {
            Some(out)
        }
    }

    /// Checks that `arg` is a map (whole or with a key, per `keyed`) and
    /// exists; returns its index.
    pub(super) fn map_arg(&mut self, f: &str, arg: &mut Expr, keyed: bool) -> Option<usize> {
        let span = arg.span;
        let ExprKind::Map { name, keys } = &mut arg.kind else {
            self.expr(arg);
            self.r.error(span, format!("{f}() expects a map argument"));
            return None;
        };
        if !keyed && !keys.is_empty() {
            self.r
                .error(span, format!("{f}() expects a whole map, without a key"));
            return None;
        }
        let name = name.clone();
        let key_tys = self.keys(keys);
        let Some(&i) = self.map_index.get(&name) else {
            self.r.error(span, format!("undefined map '@{name}'"));
            return None;
        };
        if let Some(k) = key_tys
            && keyed
        {
            self.check_keys(&name, &k, span);
        }
        Some(i)
    }
}

/// Validates lhist's min, max, step: integer literals, as in bpftrace.
fn lhist_params(args: &[Expr]) -> Result<LhistParams, (Span, String)> {
    let mut v = [0u64; 3];
    for (i, (a, what)) in args.iter().zip(["min", "max", "step"]).enumerate() {
        match a.kind {
            ExprKind::Int(n) => v[i] = n,
            ExprKind::Unary(UnOp::Neg, ref x) if matches!(x.kind, ExprKind::Int(n) if n > 0) => {
                return Err((a.span, format!("lhist() {what} must be non-negative")));
            }
            _ => {
                return Err((a.span, format!("lhist() {what} must be an integer literal")));
            }
        }
    }
    let [min, max, step] = v;
    let span = args[0].span.to(args[2].span);
    if step == 0 {
        return Err((args[2].span, "lhist() step must be >= 1".into()));
    }
    if min >= max {
        return Err((span, "lhist() max must be greater than min".into()));
    }
    if min > i64::MAX as u64 || max > i64::MAX as u64 {
        return Err((span, "lhist() bounds are too large".into()));
    }
    if (max - min) / step > 1000 {
        return Err((span, "lhist() too many buckets, must be <= 1000".into()));
    }
    Ok(LhistParams { min, max, step })
}
