//! Map state: the cells of every map of a program, how an aggregation
//! updates a cell, and how shards of the same maps merge.
//!
//! A [`MapStore`] holds every map of one program. Where handlers run on
//! several threads at once (one per vCPU, inside QEMU), each thread keeps
//! its own store for the aggregation maps (a shard, as bpftrace's per-CPU
//! maps), and [`MapStore::merge`] adds the shards up when they are printed:
//! count, sum, avg and stats add, min and max keep the extreme, histograms
//! add bucket by bucket. Plain value maps (`@m[k] = v`) are not sharded:
//! their last write wins, so they live in one store that every thread
//! shares. [`MapBackend`] is what the interpreter sees of either layout.

use probe_lang::ast::Type;
use probe_lang::check::{AggKind, HIST_BUCKETS, LhistParams, MapDecl};
use probe_lang::ir::AggOp;
use probe_lang::value::{Key, KeyPart, Value};
use rustc_hash::FxHashMap;
use std::sync::Arc;

/// Entries per map, as bpftrace's default BPFTRACE_MAP_KEYS_MAX.
pub const DEFAULT_MAP_LIMIT: usize = 4096;

/// One map entry. `Num` serves count / sum / min / max / integer values
/// (in `a`; min/max set `b`=1 once they hold a value) and avg / stats (sum
/// in `a`, count in `b`).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Cell {
    Num {
        a: u64,
        b: u64,
    },
    Hist(Box<[u64]>),
    /// A string or tuple value.
    Val(Value),
}

/// A map entry's value as printed.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Shown {
    /// count, sum, min, max, avg (already divided) or an integer value.
    Int(u64),
    /// A string or tuple value.
    Val(Value),
    Stats {
        count: u64,
        total: u64,
    },
    Hist(Vec<u64>),
}

type Map = FxHashMap<Key, Cell>;

/// What the interpreter does to maps, whatever holds them: one store, or
/// a thread's shard plus a shared store for value maps.
pub trait MapBackend {
    /// Applies an aggregation; `false` when the map is full and `key` new.
    fn agg(&mut self, map: u32, key: Key, op: AggOp, v: u64) -> bool;
    /// `@m[k] = v`; `false` when the map is full and `key` new.
    fn set(&mut self, map: u32, key: Key, cell: Cell) -> bool;
    /// `@m[k]` as an expression (the type's zero when missing).
    fn read(&mut self, map: u32, key: &Key) -> Value;
    fn contains(&mut self, map: u32, key: &Key) -> bool;
    fn len(&mut self, map: u32) -> u64;
    /// `delete(@m[k])`.
    fn delete(&mut self, map: u32, key: &Key);
    /// `clear(@m)`.
    fn clear(&mut self, map: u32);
    /// `zero(@m)`.
    fn zero(&mut self, map: u32);
    /// Every entry as printed (`print(@m)`).
    fn entries(&mut self, map: u32) -> Vec<(Key, Shown)>;
    /// Entries a map may hold.
    fn limit(&self) -> usize;
    /// Whether `entries`, `clear` and `zero` see every entry of a map;
    /// false for a thread's shard, whose `print`/`clear`/`zero` go out as
    /// [`crate::OutputEvent::MapOp`] for the holder of the rest.
    fn sees_whole_maps(&self) -> bool {
        true
    }
}

/// Every map of one program (or one shard of them).
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct MapStore {
    decls: Arc<[MapDecl]>,
    tuples: Arc<[Vec<Type>]>,
    maps: Vec<Map>,
    limit: usize,
}

impl MapStore {
    /// Empty maps for these declarations; `tuples` are the program's tuple
    /// types (what a missing tuple value reads as).
    pub fn new(decls: &[MapDecl], tuples: &[Vec<Type>]) -> MapStore {
        let mut store = MapStore {
            decls: decls.into(),
            tuples: tuples.into(),
            maps: decls.iter().map(|_| Map::default()).collect(),
            limit: DEFAULT_MAP_LIMIT,
        };
        store.init_scalar_counts();
        store
    }

    /// bpftrace always shows a scalar count map, even untouched (`@c: 0`).
    fn init_scalar_counts(&mut self) {
        for (m, d) in self.maps.iter_mut().zip(self.decls.iter()) {
            if is_scalar_count(d) {
                m.entry(Key::None).or_insert(Cell::Num { a: 0, b: 0 });
            }
        }
    }

    /// Maximum entries per map (default [`DEFAULT_MAP_LIMIT`]).
    pub fn set_limit(&mut self, entries: usize) {
        self.limit = entries;
    }

    pub fn decls(&self) -> &[MapDecl] {
        &self.decls
    }

    /// The map's cells, for readers outside the interpreter (printing,
    /// tests).
    pub fn cells(&self, map: u32) -> impl Iterator<Item = (&Key, &Cell)> {
        self.maps.get(map as usize).into_iter().flatten()
    }

    /// Adds this shard's `@m[k]` to `acc`, as merging whole shards would:
    /// bpftrace reads a per-CPU aggregation in an expression as the sum
    /// (or min, max, average) over every CPU.
    pub fn merge_cell_into(&self, map: u32, key: &Key, acc: &mut Option<Cell>) {
        let (Some(decl), Some(cell)) = (
            self.decls.get(map as usize),
            self.maps.get(map as usize).and_then(|m| m.get(key)),
        ) else {
            return;
        };
        match acc {
            None => *acc = Some(cell.clone()),
            Some(mine) => merge_cell(mine, cell, decl.kind, decl.signed),
        }
    }

    /// `@m[k]` as an expression, given its cell (merged from shards).
    pub fn value_of(&self, map: u32, cell: Option<&Cell>) -> Value {
        let decl = &self.decls[map as usize];
        match cell {
            None => zero_value(decl.value, &self.tuples),
            Some(Cell::Val(v)) => v.clone(),
            Some(Cell::Hist(_)) => Value::Int(0),
            Some(&Cell::Num { a, b }) => Value::Int(match decl.kind {
                AggKind::Avg | AggKind::Stats => avg(a, b, decl.signed),
                _ => a,
            }),
        }
    }

    /// Index of the map named `name` (without `@`).
    pub fn index_of(&self, name: &str) -> Option<u32> {
        self.decls
            .iter()
            .position(|d| d.name == name)
            .map(|i| i as u32)
    }

    /// Whether the map is full and `key` would be a new entry.
    fn full(&self, map: usize, key: &Key) -> bool {
        let m = &self.maps[map];
        m.len() >= self.limit && !m.contains_key(key)
    }

    /// Adds `other`'s entries (another shard of the same program) into
    /// this store, as printing all shards at once shows them.
    pub fn merge(&mut self, other: &MapStore) {
        for (i, theirs) in other.maps.iter().enumerate() {
            let Some(decl) = self.decls.get(i) else { break };
            let kind = decl.kind;
            let signed = decl.signed;
            let mine = &mut self.maps[i];
            for (k, c) in theirs {
                match mine.get_mut(k) {
                    None => {
                        mine.insert(k.clone(), c.clone());
                    }
                    Some(m) => merge_cell(m, c, kind, signed),
                }
            }
        }
    }

    /// Moves into this store the entries of `old`'s maps that this store
    /// declares alike (name, aggregation, signedness, `lhist` bounds, key
    /// and value types, tuples compared element by element): a reloaded
    /// program going on with the previous one's counts. Returns the names
    /// of the maps moved; they are left empty in `old`.
    pub fn carry_from(&mut self, old: &mut MapStore) -> Vec<String> {
        let mut carried = Vec::new();
        for (i, decl) in self.decls.iter().enumerate() {
            let Some(j) = old.index_of(&decl.name).map(|j| j as usize) else {
                continue;
            };
            let theirs = &old.decls[j];
            let alike = decl.kind == theirs.kind
                && decl.signed == theirs.signed
                && decl.lhist == theirs.lhist
                && same_types(&decl.keys, &self.tuples, &theirs.keys, &old.tuples)
                && same_types(&[decl.value], &self.tuples, &[theirs.value], &old.tuples);
            if alike {
                self.maps[i] = std::mem::take(&mut old.maps[j]);
                carried.push(decl.name.clone());
            }
        }
        carried
    }

    /// A copy holding only the maps `keep` chooses (the others empty).
    pub fn only(&self, keep: impl Fn(&MapDecl) -> bool) -> MapStore {
        let mut copy = self.clone();
        for (m, d) in copy.maps.iter_mut().zip(self.decls.iter()) {
            if !keep(d) {
                m.clear();
            }
        }
        copy
    }

    /// Empties the maps `drop` chooses (scalar counts back to 0).
    pub fn clear_where(&mut self, drop: impl Fn(&MapDecl) -> bool) {
        for i in 0..self.maps.len() {
            if drop(&self.decls[i]) {
                MapBackend::clear(self, i as u32);
            }
        }
    }
}

/// Whether two lists of types are the same, each tuple type looked up in
/// its own program's tuple table (the indexes differ between programs).
fn same_types(a: &[Type], a_tuples: &[Vec<Type>], b: &[Type], b_tuples: &[Vec<Type>]) -> bool {
    a.len() == b.len()
        && a.iter().zip(b).all(|(x, y)| match (x, y) {
            (Type::Tuple(i), Type::Tuple(j)) => {
                match (a_tuples.get(*i as usize), b_tuples.get(*j as usize)) {
                    (Some(ta), Some(tb)) => same_types(ta, a_tuples, tb, b_tuples),
                    _ => false,
                }
            }
            _ => x == y,
        })
}

fn is_scalar_count(d: &MapDecl) -> bool {
    d.kind == AggKind::Count && d.keys.is_empty()
}

/// `mine` and `theirs` are one entry in two shards: the merged entry.
fn merge_cell(mine: &mut Cell, theirs: &Cell, kind: AggKind, signed: bool) {
    match (mine, theirs) {
        (Cell::Hist(a), Cell::Hist(b)) => {
            for (x, y) in a.iter_mut().zip(b.iter()) {
                *x = x.wrapping_add(*y);
            }
        }
        (Cell::Num { a, b }, Cell::Num { a: ta, b: tb }) => match kind {
            AggKind::Count | AggKind::Sum => *a = a.wrapping_add(*ta),
            AggKind::Avg | AggKind::Stats => {
                *a = a.wrapping_add(*ta);
                *b = b.wrapping_add(*tb);
            }
            AggKind::Min | AggKind::Max => {
                if *tb == 0 {
                    return;
                }
                let less = if signed {
                    (*ta as i64) < (*a as i64)
                } else {
                    ta < a
                };
                let better = if kind == AggKind::Min { less } else { !less };
                if *b == 0 || better {
                    (*a, *b) = (*ta, 1);
                }
            }
            // Value maps are not sharded; a merge of two copies keeps the
            // other's (the later) value.
            AggKind::Value | AggKind::Hist | AggKind::Lhist => (*a, *b) = (*ta, *tb),
        },
        (m, t) => *m = t.clone(),
    }
}

impl MapBackend for MapStore {
    fn limit(&self) -> usize {
        self.limit
    }

    #[inline]
    fn agg(&mut self, map: u32, key: Key, op: AggOp, v: u64) -> bool {
        let map = map as usize;
        if self.full(map, &key) {
            return false;
        }
        apply_agg(&mut self.maps[map], key, op, v);
        true
    }

    fn set(&mut self, map: u32, key: Key, cell: Cell) -> bool {
        let map = map as usize;
        if self.full(map, &key) {
            return false;
        }
        self.maps[map].insert(key, cell);
        true
    }

    fn read(&mut self, map: u32, key: &Key) -> Value {
        self.value_of(map, self.maps[map as usize].get(key))
    }

    fn contains(&mut self, map: u32, key: &Key) -> bool {
        self.maps[map as usize].contains_key(key)
    }

    fn len(&mut self, map: u32) -> u64 {
        self.maps[map as usize].len() as u64
    }

    /// Scalar count maps are zeroed rather than removed, as bpftrace 0.17
    /// prints them as `@c: 0` afterwards.
    fn delete(&mut self, map: u32, key: &Key) {
        let (decl, m) = (&self.decls[map as usize], &mut self.maps[map as usize]);
        if is_scalar_count(decl) {
            m.insert(Key::None, Cell::Num { a: 0, b: 0 });
        } else {
            m.remove(key);
        }
    }

    fn clear(&mut self, map: u32) {
        let (decl, m) = (&self.decls[map as usize], &mut self.maps[map as usize]);
        m.clear();
        if is_scalar_count(decl) {
            m.insert(Key::None, Cell::Num { a: 0, b: 0 });
        }
    }

    fn zero(&mut self, map: u32) {
        for c in self.maps[map as usize].values_mut() {
            match c {
                Cell::Num { a, b } => (*a, *b) = (0, 0),
                Cell::Hist(b) => b.fill(0),
                Cell::Val(v) => *v = zero_like(v),
            }
        }
    }

    fn entries(&mut self, map: u32) -> Vec<(Key, Shown)> {
        let i = map as usize;
        let decl = &self.decls[i];
        self.maps[i]
            .iter()
            .map(|(k, c)| {
                let shown = match (c, decl.kind) {
                    (Cell::Hist(b), _) => Shown::Hist(b.to_vec()),
                    (Cell::Val(v), _) => Shown::Val(v.clone()),
                    (&Cell::Num { a, b }, AggKind::Stats) => Shown::Stats { count: b, total: a },
                    (&Cell::Num { a, b }, AggKind::Avg) => Shown::Int(avg(a, b, decl.signed)),
                    (&Cell::Num { a, .. }, _) => Shown::Int(a),
                };
                (k.clone(), shown)
            })
            .collect()
    }
}

/// One aggregation update of `m[key]`.
#[inline]
fn apply_agg(m: &mut Map, key: Key, op: AggOp, v: u64) {
    if let AggOp::Hist | AggOp::Lhist(_) = op {
        let (n, idx) = match op {
            AggOp::Lhist(l) => (l.buckets(), lhist_index(v, l)),
            _ => (HIST_BUCKETS, hist_index(v)),
        };
        let cell = m
            .entry(key)
            .or_insert_with(|| Cell::Hist(vec![0; n].into_boxed_slice()));
        if let Cell::Hist(b) = cell
            && let Some(x) = b.get_mut(idx)
        {
            *x += 1;
        }
        return;
    }
    if let AggOp::Max { signed } = op
        && !m.contains_key(&key)
    {
        // bpftrace 0.17 compares with 0 when the entry is missing, so a
        // max() map never gets an entry for negative values.
        if !signed || v as i64 >= 0 {
            m.insert(key, Cell::Num { a: v, b: 1 });
        }
        return;
    }
    let Cell::Num { a, b } = m.entry(key).or_insert(Cell::Num { a: 0, b: 0 }) else {
        return;
    };
    match op {
        AggOp::Count => *a = a.wrapping_add(1),
        AggOp::Sum => *a = a.wrapping_add(v),
        AggOp::Avg | AggOp::Stats => {
            *a = a.wrapping_add(v);
            *b += 1;
        }
        AggOp::Min { signed } | AggOp::Max { signed } => {
            let less = if signed {
                (v as i64) < (*a as i64)
            } else {
                v < *a
            };
            let better = if matches!(op, AggOp::Min { .. }) {
                less
            } else {
                !less && v != *a
            };
            // A max() entry always holds a value (0 after zero()), and
            // bpftrace compares with it; min() takes the first value.
            let first = *b == 0 && matches!(op, AggOp::Min { .. });
            if first || better {
                *a = v;
                *b = 1;
            }
        }
        AggOp::Hist | AggOp::Lhist(_) => {}
    }
}

/// The value a missing map entry (or variable) of type `ty` reads as.
pub fn zero_value(ty: Type, tuples: &[Vec<Type>]) -> Value {
    match ty {
        Type::Str => Value::Str(Arc::from("")),
        Type::Tuple(i) => Value::Tuple(
            tuples
                .get(i as usize)
                .map(|ts| ts.iter().map(|t| zero_value(*t, tuples)).collect())
                .unwrap_or_default(),
        ),
        _ => Value::Int(0),
    }
}

/// `zero()` of a string or tuple value: same shape, zeros and "".
fn zero_like(v: &Value) -> Value {
    match v {
        Value::Int(_) => Value::Int(0),
        Value::Str(_) => Value::Str(Arc::from("")),
        Value::Buf(b) => Value::Buf(Arc::from(vec![0u8; b.len()])),
        Value::Tuple(t) => Value::Tuple(t.iter().map(zero_like).collect()),
        Value::Stack(_) => Value::Stack(Arc::from(Vec::new())),
    }
}

/// avg/stats average (0 when empty), signed if the values are.
pub fn avg(sum: u64, count: u64, signed: bool) -> u64 {
    match count {
        0 => 0,
        c if signed => (sum as i64).wrapping_div(c as i64) as u64,
        c => sum / c,
    }
}

/// bpftrace 0.17's hist bucket: 0 for negatives, 1 for 0, else 2 + log2
/// computed by halving steps of 16, 8, 4, 2, 1 bits (so it stops at 2^31).
pub fn hist_index(v: u64) -> usize {
    let n = v as i64;
    if n < 0 {
        return 0;
    }
    if n == 0 {
        return 1;
    }
    let (mut n, mut r) = (v, 0);
    for i in [16, 8, 4, 2, 1] {
        if n >= 1 << i {
            n >>= i;
            r += i;
        }
    }
    r + 2
}

/// lhist bucket: 0 below min, last at or above max (signed compare).
pub fn lhist_index(v: u64, l: LhistParams) -> usize {
    let (v, min, max) = (v as i64, l.min as i64, l.max as i64);
    if v < min {
        0
    } else if v >= max {
        l.buckets() - 1
    } else {
        (((v - min) as u64 / l.step) as usize + 1).min(l.buckets() - 1)
    }
}

/// Builds a map key from evaluated key values (same shape as the interpreter).
pub fn make_key(mut vals: Vec<Value>) -> Key {
    match vals.len() {
        0 => Key::None,
        1 => match vals.pop().expect("len 1") {
            Value::Int(v) => Key::Int(v),
            Value::Str(s) => Key::Str(s),
            v @ (Value::Buf(_) | Value::Tuple(_) | Value::Stack(_)) => {
                Key::Multi(Box::new([KeyPart::from(v)]))
            }
        },
        _ => Key::Multi(vals.into_iter().map(KeyPart::from).collect()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hist_buckets_match_bpftrace_log2() {
        let cases = [
            (-5i64 as u64, 0),
            (0, 1),
            (1, 2),
            (2, 3),
            (3, 3),
            (4, 4),
            (1023, 11),
            (1024, 12),
            (1 << 31, 33),
            (1 << 40, 33),
            (i64::MAX as u64, 33),
        ];
        for (v, want) in cases {
            assert_eq!(hist_index(v), want, "hist_index({v})");
        }
    }

    #[test]
    fn lhist_buckets() {
        let l = LhistParams {
            min: 0,
            max: 10,
            step: 3,
        };
        assert_eq!(l.buckets(), 5);
        let got: Vec<usize> = [-1i64, 0, 2, 3, 8, 9, 10, 11]
            .iter()
            .map(|&v| lhist_index(v as u64, l))
            .collect();
        assert_eq!(got, [0, 1, 1, 2, 3, 4, 4, 4]);
    }

    fn store(src: &str) -> MapStore {
        let p = probe_lang::compile(src, "t").unwrap();
        MapStore::new(&p.ir().maps, &p.ir().tuples)
    }

    /// A reloaded program keeps the maps declared alike, and only those:
    /// a map whose aggregation, key types or tuple element types changed
    /// starts empty, and the old store keeps it to be printed.
    #[test]
    fn a_reloaded_program_carries_maps_declared_alike() {
        let old_src = r#"kprobe:f { @c = count(); @k[pid, comm] = sum(arg0); @t[1] = (1, "a");
                         @gone = count(); @h = hist(arg0); @changed[pid] = count(); }"#;
        let new_src = r#"kprobe:g { @x[2] = ("b", 2); @t[1] = (2, "b"); @c = count();
                         @k[pid, comm] = sum(arg1); @h = lhist(arg0, 0, 10, 1); @changed[comm] = count(); }"#;
        let mut old = store(old_src);
        for name in ["c", "gone", "changed"] {
            let i = old.index_of(name).unwrap();
            let key = if name == "changed" {
                Key::Int(7)
            } else {
                Key::None
            };
            old.agg(i, key.clone(), AggOp::Count, 0);
            old.agg(i, key, AggOp::Count, 0);
        }
        let t = old.index_of("t").unwrap();
        let pair = Value::Tuple(vec![Value::Int(1), Value::Str("a".into())].into());
        old.set(t, Key::Int(1), Cell::Val(pair.clone()));
        let mut new = store(new_src);
        let mut carried = new.carry_from(&mut old);
        carried.sort();
        assert_eq!(carried, ["c", "k", "t"]);
        let c = new.index_of("c").unwrap();
        assert_eq!(new.read(c, &Key::None), Value::Int(2));
        assert_eq!(new.read(new.index_of("t").unwrap(), &Key::Int(1)), pair);
        // What was not carried stays in the old store, to be printed.
        let gone = old.index_of("gone").unwrap();
        assert_eq!(old.read(gone, &Key::None), Value::Int(2));
        let changed = old.index_of("changed").unwrap();
        assert_eq!(old.read(changed, &Key::Int(7)), Value::Int(2));
        assert_eq!(old.cells(c).count(), 0);
    }

    /// Two shards updated with halves of the same values merge into what
    /// one store updated with all of them holds.
    #[test]
    fn shards_merge_as_one_store() {
        let src = "kprobe:f { @c = count(); @s = sum(arg0); @a = avg(arg0); @st = stats(arg0); \
                   @mn = min(arg0); @mx = max(arg0); @h = hist(arg0); @l = lhist(arg0, 0, 100, 10); \
                   @k[arg0 % 3] = count(); }";
        let ops = |m: &str| -> AggOp {
            match m {
                "c" | "k" => AggOp::Count,
                "s" => AggOp::Sum,
                "a" => AggOp::Avg,
                "st" => AggOp::Stats,
                "mn" => AggOp::Min { signed: false },
                "mx" => AggOp::Max { signed: false },
                "h" => AggOp::Hist,
                _ => AggOp::Lhist(LhistParams {
                    min: 0,
                    max: 100,
                    step: 10,
                }),
            }
        };
        let (mut whole, mut a, mut b) = (store(src), store(src), store(src));
        let names: Vec<String> = whole.decls().iter().map(|d| d.name.clone()).collect();
        for v in [5u64, 17, 3, 99, 42, 7, 250, 0] {
            for (i, name) in names.iter().enumerate() {
                let key = if name == "k" {
                    Key::Int(v % 3)
                } else {
                    Key::None
                };
                let op = ops(name);
                whole.agg(i as u32, key.clone(), op, v);
                let shard = if v % 2 == 0 { &mut a } else { &mut b };
                shard.agg(i as u32, key, op, v);
            }
        }
        // Read in an expression, a key merged from both shards reads as
        // the whole store's (bpftrace's per-CPU reads).
        for i in 0..names.len() as u32 {
            let key = if names[i as usize] == "k" {
                Key::Int(1)
            } else {
                Key::None
            };
            let mut acc = None;
            a.merge_cell_into(i, &key, &mut acc);
            b.merge_cell_into(i, &key, &mut acc);
            assert_eq!(
                a.value_of(i, acc.as_ref()),
                whole.read(i, &key),
                "@{}",
                names[i as usize]
            );
        }
        a.merge(&b);
        for i in 0..names.len() as u32 {
            let mut got = a.entries(i);
            let mut want = whole.entries(i);
            got.sort_by(|x, y| x.0.cmp(&y.0));
            want.sort_by(|x, y| x.0.cmp(&y.0));
            assert_eq!(got, want, "@{}", names[i as usize]);
        }
    }

    #[test]
    fn a_full_map_refuses_new_keys_only() {
        let mut s = store("kprobe:f { @m[arg0] = count(); }");
        s.set_limit(2);
        assert!(s.agg(0, Key::Int(1), AggOp::Count, 0));
        assert!(s.agg(0, Key::Int(2), AggOp::Count, 0));
        assert!(!s.agg(0, Key::Int(3), AggOp::Count, 0));
        assert!(s.agg(0, Key::Int(1), AggOp::Count, 0));
        assert_eq!(s.read(0, &Key::Int(1)), Value::Int(2));
    }

    #[test]
    fn stores_round_trip_through_serde() {
        let mut s = store("kprobe:f { @m[comm, arg0] = hist(arg1); @v = \"x\"; }");
        s.agg(
            0,
            make_key(vec![Value::Str("dd".into()), Value::Int(3)]),
            AggOp::Hist,
            100,
        );
        s.set(1, Key::None, Cell::Val(Value::Str("hello".into())));
        let bytes = postcard::to_allocvec(&s).unwrap();
        let mut back: MapStore = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(back.entries(0), s.entries(0));
        assert_eq!(back.read(1, &Key::None), Value::Str("hello".into()));
    }
}
