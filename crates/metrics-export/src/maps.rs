//! A program's maps as metric families.
//!
//! | map | family |
//! | --- | --- |
//! | `count()`, `sum()` of unsigned values | counter `NAME_total` |
//! | `sum()` of signed values, `min()`, `max()`, integer values | gauge `NAME` |
//! | `avg()`, `stats()` | gauges `NAME_sum` and `NAME_count` |
//! | `hist()`, `lhist()` | histogram `NAME_bucket{le=...}`, `NAME_count`, `NAME_sum` (NaN: not kept) |
//!
//! Keys become labels, `key0`, `key1`, ... unless the caller names them.
//! String values are not exported (a metric is a number).

use crate::{Family, Labels, Value, label_name, metric_name};
use probe_lang::ast::Type;
use probe_lang::check::{AggKind, LhistParams, MapDecl};
use probe_lang::value::{Key, KeyPart, Value as PValue};
use probe_runtime::{Cell, MapStore};
use std::collections::HashMap;

/// Label names of each map's keys, by map name (without `@`); a map not
/// named here gets `key0`, `key1`, ...
pub type LabelNames = HashMap<String, Vec<String>>;

/// The family name of map `@name`: sanitised, `map` for the anonymous
/// `@`, and kept apart from vmprobe's own `vmprobe_*` families.
pub fn family_name(map: &str) -> String {
    let name = if map.is_empty() {
        "map".to_string()
    } else {
        metric_name(map)
    };
    if name.starts_with("vmprobe_") {
        format!("map_{name}")
    } else {
        name
    }
}

/// Every map of `store` as families, in name order.
pub fn families(store: &MapStore, names: &LabelNames) -> Vec<Family> {
    let decls = store.decls();
    let mut order: Vec<usize> = (0..decls.len()).collect();
    order.sort_by(|&a, &b| decls[a].name.cmp(&decls[b].name));
    let mut out = Vec::new();
    for i in order {
        let d = &decls[i];
        let keys: Vec<String> = match names.get(&d.name) {
            Some(given) => given.iter().map(|n| label_name(n)).collect(),
            None => (0..d.keys.len()).map(|k| format!("key{k}")).collect(),
        };
        let mut cells: Vec<(&Key, &Cell)> = store.cells(i as u32).collect();
        cells.sort_by(|a, b| a.0.cmp(b.0));
        let name = family_name(&d.name);
        let help = format!("vmprobe map @{}", d.name);
        match d.kind {
            AggKind::Avg | AggKind::Stats => {
                let (mut sums, mut counts) = (Vec::new(), Vec::new());
                for (k, c) in &cells {
                    if let Cell::Num { a, b } = c {
                        let l = labels(k, &d.keys, &keys);
                        sums.push((l.clone(), gauge(*a, d.signed)));
                        counts.push((l, gauge(*b, false)));
                    }
                }
                out.push(Family {
                    name: format!("{name}_sum"),
                    help: format!("{help}: the sum of the values"),
                    samples: sums,
                });
                out.push(Family {
                    name: format!("{name}_count"),
                    help: format!("{help}: how many values"),
                    samples: counts,
                });
            }
            kind => {
                let samples = cells
                    .iter()
                    .filter_map(|(k, c)| Some((labels(k, &d.keys, &keys), sample(d, kind, c)?)))
                    .collect();
                out.push(Family {
                    name,
                    help,
                    samples,
                });
            }
        }
    }
    out
}

fn sample(d: &MapDecl, kind: AggKind, cell: &Cell) -> Option<Value> {
    match (kind, cell) {
        (AggKind::Count, Cell::Num { a, .. }) => Some(Value::Counter(*a)),
        // A counter never goes down: a sum of signed values may.
        (AggKind::Sum, Cell::Num { a, .. }) if !d.signed => Some(Value::Counter(*a)),
        (AggKind::Sum, Cell::Num { a, .. }) => Some(gauge(*a, true)),
        // min/max set b once they hold a value.
        (AggKind::Min | AggKind::Max, Cell::Num { a, b }) => (*b == 1).then(|| gauge(*a, d.signed)),
        (AggKind::Value, Cell::Num { a, .. }) => Some(gauge(*a, value_signed(d))),
        (AggKind::Value, Cell::Val(PValue::Int(a))) => Some(gauge(*a, value_signed(d))),
        (AggKind::Hist, Cell::Hist(counts)) => Some(Value::Histogram {
            buckets: counts
                .iter()
                .enumerate()
                .map(|(i, n)| (hist_bound(i, counts.len()), *n))
                .collect(),
            sum: f64::NAN,
        }),
        (AggKind::Lhist, Cell::Hist(counts)) => {
            let l = d.lhist?;
            Some(Value::Histogram {
                buckets: counts
                    .iter()
                    .enumerate()
                    .map(|(i, n)| (lhist_bound(i, counts.len(), l), *n))
                    .collect(),
                sum: f64::NAN,
            })
        }
        _ => None,
    }
}

fn value_signed(d: &MapDecl) -> bool {
    matches!(d.value, Type::Int { signed: true })
}

fn gauge(v: u64, signed: bool) -> Value {
    match (signed, i64::try_from(v)) {
        (true, _) => Value::Gauge(v as i64),
        (false, Ok(v)) => Value::Gauge(v),
        (false, Err(_)) => Value::GaugeF(v as f64),
    }
}

/// The inclusive upper bound of `hist()` bucket `i` (bpftrace 0.17's
/// buckets: negatives, 0, 1, then `[2^k, 2^(k+1))`, the last open-ended).
/// Values are integers, so `[2, 4)` is `le="3"`.
pub fn hist_bound(i: usize, buckets: usize) -> f64 {
    match i {
        _ if i + 1 >= buckets => f64::INFINITY,
        0 => -1.0,
        1 => 0.0,
        i => ((1u64 << (i - 1)) - 1) as f64,
    }
}

/// The inclusive upper bound of `lhist()` bucket `i`: below `min`, one per
/// `step`, then `max` and above.
pub fn lhist_bound(i: usize, buckets: usize, l: LhistParams) -> f64 {
    if i + 1 >= buckets {
        return f64::INFINITY;
    }
    let (min, max) = (l.min as i64 as i128, l.max as i64 as i128);
    // A last step cut short by max ends at max.
    (min + i as i128 * l.step as i128 - 1).min(max - 1) as f64
}

fn labels(key: &Key, types: &[Type], names: &[String]) -> Labels {
    let parts: Vec<String> = match key {
        Key::None => Vec::new(),
        Key::Int(v) => vec![int_text(*v, types.first())],
        Key::Str(s) => vec![s.to_string()],
        Key::Multi(parts) => parts
            .iter()
            .enumerate()
            .map(|(i, p)| match p {
                KeyPart::Int(v) => int_text(*v, types.get(i)),
                KeyPart::Str(s) => s.to_string(),
                KeyPart::Stack(frames) => frames
                    .iter()
                    .map(|f| f.as_ref())
                    .collect::<Vec<_>>()
                    .join(";"),
            })
            .collect(),
    };
    parts
        .into_iter()
        .enumerate()
        .map(|(i, v)| {
            let name = names.get(i).cloned().unwrap_or_else(|| format!("key{i}"));
            (name, v)
        })
        .collect()
}

fn int_text(v: u64, ty: Option<&Type>) -> String {
    match ty {
        Some(Type::Int { signed: true }) => (v as i64).to_string(),
        _ => v.to_string(),
    }
}
