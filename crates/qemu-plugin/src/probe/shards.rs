//! Maps inside QEMU without serialising the vCPUs: each vCPU aggregates
//! into a shard of its own (as bpftrace's per-CPU maps), locked only by its
//! own thread while a handler runs and, briefly, by the control thread when
//! it merges the shards for printing. Value maps (`@m[k] = v`, whose last
//! write wins and which handlers read back) are one store every vCPU
//! shares.
//!
//! Lock order: a vCPU holds its own shard, then may take the value store;
//! the control thread takes one shard at a time, or the value store, never
//! two at once. So no two threads wait on each other.

use probe_lang::check::AggKind;
use probe_lang::ir::AggOp;
use probe_lang::value::{Key, Value};
use probe_runtime::{Cell, Interpreter, MapBackend, MapStore, Shown};
use std::sync::Mutex;

/// One vCPU's interpreter and aggregation maps.
pub(crate) struct Shard {
    pub interp: Interpreter,
    pub aggs: MapStore,
}

/// What one handler run on a vCPU sees of the maps.
pub(crate) struct ShardMaps<'a> {
    pub own: &'a mut MapStore,
    pub values: &'a Mutex<MapStore>,
}

fn is_value(store: &MapStore, map: u32) -> bool {
    store
        .decls()
        .get(map as usize)
        .is_some_and(|d| d.kind == AggKind::Value)
}

impl ShardMaps<'_> {
    /// The store that holds `map`: the shared one for value maps.
    fn with<R>(&mut self, map: u32, f: impl FnOnce(&mut MapStore) -> R) -> R {
        if is_value(self.own, map) {
            f(&mut self.values.lock().unwrap_or_else(|e| e.into_inner()))
        } else {
            f(self.own)
        }
    }
}

impl MapBackend for ShardMaps<'_> {
    fn agg(&mut self, map: u32, key: Key, op: AggOp, v: u64) -> bool {
        self.own.agg(map, key, op, v)
    }

    fn set(&mut self, map: u32, key: Key, cell: Cell) -> bool {
        self.with(map, |s| s.set(map, key, cell))
    }

    fn read(&mut self, map: u32, key: &Key) -> Value {
        self.with(map, |s| s.read(map, key))
    }

    fn contains(&mut self, map: u32, key: &Key) -> bool {
        self.with(map, |s| s.contains(map, key))
    }

    fn len(&mut self, map: u32) -> u64 {
        self.with(map, |s| s.len(map))
    }

    fn delete(&mut self, map: u32, key: &Key) {
        self.with(map, |s| s.delete(map, key))
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
        self.own.limit()
    }

    fn sees_whole_maps(&self) -> bool {
        false
    }
}

/// Every shard and the value maps merged into one store (for printing).
pub(crate) fn merged(shards: &[Mutex<Shard>], values: &Mutex<MapStore>) -> MapStore {
    let mut all = values.lock().unwrap_or_else(|e| e.into_inner()).clone();
    for shard in shards {
        let shard = shard.lock().unwrap_or_else(|e| e.into_inner());
        all.merge(&shard.aggs);
    }
    all
}

/// `clear(@m)` / `zero(@m)` in every shard and the value store.
pub(crate) fn clear_everywhere(
    shards: &[Mutex<Shard>],
    values: &Mutex<MapStore>,
    map: u32,
    zero: bool,
) {
    let apply = |s: &mut MapStore| {
        if zero { s.zero(map) } else { s.clear(map) }
    };
    for shard in shards {
        apply(&mut shard.lock().unwrap_or_else(|e| e.into_inner()).aggs);
    }
    apply(&mut values.lock().unwrap_or_else(|e| e.into_inner()));
}
