//! Maps inside QEMU without serialising the vCPUs: each vCPU aggregates
//! into a shard of its own (as bpftrace's per-CPU maps). A handler reading
//! an aggregation (`@on == 1` for `@on = sum(..)`) sees it merged over
//! every shard, as bpftrace sums a per-CPU map read in an expression.
//! Value maps (`@m[k] = v`, whose last write wins and which handlers read
//! back) are one store every vCPU shares.
//!
//! Lock order: every lock here is held for one map operation, and no
//! thread holds two of them at once, so no two threads (vCPUs under
//! multi-threaded TCG, the control thread) wait on each other.

use probe_lang::check::{AggKind, MapDecl};
use probe_lang::ir::AggOp;
use probe_lang::value::{Key, Value};
use probe_runtime::{Cell, MapBackend, MapStore, Shown};
use std::sync::{Mutex, MutexGuard};

fn lock(m: &Mutex<MapStore>) -> MutexGuard<'_, MapStore> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// What one handler run on a vCPU sees of the maps.
pub(crate) struct ShardMaps<'a> {
    pub decls: &'a [MapDecl],
    /// Every vCPU's aggregations; this one's is `own`.
    pub shards: &'a [Mutex<MapStore>],
    pub own: usize,
    pub values: &'a Mutex<MapStore>,
    pub limit: usize,
}

impl ShardMaps<'_> {
    fn is_value(&self, map: u32) -> bool {
        self.decls
            .get(map as usize)
            .is_some_and(|d| d.kind == AggKind::Value)
    }

    /// The store that holds this vCPU's part of `map`: the shared one for
    /// value maps.
    fn with<R>(&mut self, map: u32, f: impl FnOnce(&mut MapStore) -> R) -> R {
        if self.is_value(map) {
            f(&mut lock(self.values))
        } else {
            f(&mut lock(&self.shards[self.own]))
        }
    }
}

impl MapBackend for ShardMaps<'_> {
    fn agg(&mut self, map: u32, key: Key, op: AggOp, v: u64) -> bool {
        lock(&self.shards[self.own]).agg(map, key, op, v)
    }

    fn set(&mut self, map: u32, key: Key, cell: Cell) -> bool {
        self.with(map, |s| s.set(map, key, cell))
    }

    fn read(&mut self, map: u32, key: &Key) -> Value {
        if self.is_value(map) {
            return lock(self.values).read(map, key);
        }
        let mut cell = None;
        for shard in self.shards {
            lock(shard).merge_cell_into(map, key, &mut cell);
        }
        lock(&self.shards[self.own]).value_of(map, cell.as_ref())
    }

    fn contains(&mut self, map: u32, key: &Key) -> bool {
        if self.is_value(map) {
            return lock(self.values).contains(map, key);
        }
        self.shards.iter().any(|s| lock(s).contains(map, key))
    }

    fn len(&mut self, map: u32) -> u64 {
        if self.is_value(map) || self.shards.len() == 1 {
            return self.with(map, |s| s.len(map));
        }
        let mut keys = std::collections::HashSet::new();
        for shard in self.shards {
            keys.extend(lock(shard).cells(map).map(|(k, _)| k.clone()));
        }
        keys.len() as u64
    }

    /// From every shard: the key is gone for every vCPU.
    fn delete(&mut self, map: u32, key: &Key) {
        if self.is_value(map) {
            return lock(self.values).delete(map, key);
        }
        for shard in self.shards {
            lock(shard).delete(map, key);
        }
    }

    /// This vCPU's part; the interpreter hands the rest on as an event.
    fn clear(&mut self, map: u32) {
        self.with(map, |s| s.clear(map))
    }

    fn zero(&mut self, map: u32) {
        self.with(map, |s| s.zero(map))
    }

    fn entries(&mut self, map: u32) -> Vec<(Key, Shown)> {
        self.with(map, |s| s.entries(map))
    }

    fn limit(&self) -> usize {
        self.limit
    }

    fn sees_whole_maps(&self) -> bool {
        false
    }
}

/// Every shard and the value maps merged into one store (for printing).
pub(crate) fn merged(shards: &[Mutex<MapStore>], values: &Mutex<MapStore>) -> MapStore {
    let mut all = lock(values).clone();
    for shard in shards {
        all.merge(&lock(shard));
    }
    all
}

/// `clear(@m)` / `zero(@m)` in every shard and the value store.
pub(crate) fn clear_everywhere(
    shards: &[Mutex<MapStore>],
    values: &Mutex<MapStore>,
    map: u32,
    zero: bool,
) {
    let apply = |s: &mut MapStore| {
        if zero { s.zero(map) } else { s.clear(map) }
    };
    for shard in shards {
        apply(&mut lock(shard));
    }
    apply(&mut lock(values));
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The windowed count of the end-to-end tests: the window opens on one
    /// vCPU (`@on = sum(1)`), and a hit on another sees it open.
    #[test]
    fn a_handler_reads_an_aggregation_over_every_vcpu() {
        let p = probe_lang::compile(
            "kprobe:f { @on = sum(1); @m[arg0] = count(); @v = 7; }",
            "t",
        )
        .unwrap();
        let ir = p.ir();
        let store = || MapStore::new(&ir.maps, &ir.tuples);
        let shards = [Mutex::new(store()), Mutex::new(store())];
        let values = Mutex::new(store());
        let view = |own| ShardMaps {
            decls: &ir.maps,
            shards: &shards,
            own,
            values: &values,
            limit: 100,
        };
        let (on, m, v) = (0, 1, 2);
        assert!(view(0).agg(on, Key::None, AggOp::Sum, 1));
        assert!(view(0).agg(m, Key::Int(1), AggOp::Count, 0));
        assert!(view(1).agg(m, Key::Int(1), AggOp::Count, 0));
        assert!(view(1).agg(m, Key::Int(2), AggOp::Count, 0));
        assert!(view(1).set(v, Key::None, Cell::Num { a: 7, b: 0 }));
        let mut other = view(1);
        assert_eq!(other.read(on, &Key::None), Value::Int(1));
        assert_eq!(other.read(m, &Key::Int(1)), Value::Int(2));
        assert_eq!(other.len(m), 2);
        assert!(other.contains(m, &Key::Int(1)));
        assert_eq!(view(0).read(v, &Key::None), Value::Int(7));
        // delete() is every vCPU's.
        other.delete(m, &Key::Int(1));
        assert!(!view(0).contains(m, &Key::Int(1)));
    }
}
