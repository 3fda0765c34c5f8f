//! Maps as a handler that runs in vmprobe sees them while the plugin holds
//! the guest's part (`interval` blocks): aggregations go into vmprobe's own
//! store and are merged with the plugin's shards when read or printed;
//! value maps live in the plugin and are read and written there.

use crate::client::PluginClient;
use probe_lang::check::AggKind;
use probe_lang::ir::AggOp;
use probe_lang::value::{Key, Value};
use probe_runtime::{Cell, MapBackend, MapStore, Shown};

pub(crate) struct HomeMaps<'a> {
    pub home: &'a mut MapStore,
    pub client: &'a mut PluginClient,
    /// The plugin's shards merged with `home`, fetched once per handler
    /// run when first needed.
    merged: Option<MapStore>,
    /// The first request that failed (the handler's result is then
    /// incomplete; the run counts it as an error).
    pub failed: Option<String>,
}

impl<'a> HomeMaps<'a> {
    pub fn new(home: &'a mut MapStore, client: &'a mut PluginClient) -> Self {
        HomeMaps {
            home,
            client,
            merged: None,
            failed: None,
        }
    }

    fn is_value(&self, map: u32) -> bool {
        self.home
            .decls()
            .get(map as usize)
            .is_some_and(|d| d.kind == AggKind::Value)
    }

    fn fail(&mut self, e: crate::Error) {
        self.failed.get_or_insert_with(|| e.to_string());
    }

    /// The whole of every map as it stands: the plugin's, with vmprobe's
    /// aggregations added.
    fn whole(&mut self) -> &mut MapStore {
        if self.merged.is_none() {
            let mut all = match self.client.maps() {
                Ok(s) => s,
                Err(e) => {
                    self.fail(e);
                    self.home.only(|_| false)
                }
            };
            all.merge(self.home);
            self.merged = Some(all);
        }
        self.merged.as_mut().expect("filled above")
    }

    /// A change after which the merged copy is stale.
    fn changed(&mut self) {
        self.merged = None;
    }
}

impl MapBackend for HomeMaps<'_> {
    fn agg(&mut self, map: u32, key: Key, op: AggOp, v: u64) -> bool {
        self.changed();
        self.home.agg(map, key, op, v)
    }

    fn set(&mut self, map: u32, key: Key, cell: Cell) -> bool {
        self.changed();
        if !self.is_value(map) {
            return self.home.set(map, key, cell);
        }
        match self.client.write_value(map, key, Some(cell)) {
            Ok(()) => true,
            Err(e) => {
                self.fail(e);
                false
            }
        }
    }

    fn read(&mut self, map: u32, key: &Key) -> Value {
        if !self.is_value(map) {
            return self.whole().read(map, key);
        }
        match self.client.read_value(map, key.clone()) {
            Ok(Some(v)) => v,
            // A missing entry reads as its type's zero.
            Ok(None) => self.home.only(|_| false).read(map, key),
            Err(e) => {
                self.fail(e);
                Value::Int(0)
            }
        }
    }

    fn contains(&mut self, map: u32, key: &Key) -> bool {
        if !self.is_value(map) {
            return self.whole().contains(map, key);
        }
        match self.client.read_value(map, key.clone()) {
            Ok(v) => v.is_some(),
            Err(e) => {
                self.fail(e);
                false
            }
        }
    }

    fn len(&mut self, map: u32) -> u64 {
        self.whole().len(map)
    }

    fn delete(&mut self, map: u32, key: &Key) {
        self.changed();
        let sent = if self.is_value(map) {
            self.client.write_value(map, key.clone(), None)
        } else {
            self.home.delete(map, key);
            self.client.delete(map, key.clone())
        };
        if let Err(e) = sent {
            self.fail(e);
        }
    }

    fn clear(&mut self, map: u32) {
        self.changed();
        self.home.clear(map);
        if let Err(e) = self.client.clear(map, false) {
            self.fail(e);
        }
    }

    fn zero(&mut self, map: u32) {
        self.changed();
        self.home.zero(map);
        if let Err(e) = self.client.clear(map, true) {
            self.fail(e);
        }
    }

    fn entries(&mut self, map: u32) -> Vec<(Key, Shown)> {
        self.whole().entries(map)
    }

    fn limit(&self) -> usize {
        self.home.limit()
    }
}
