//! A program's whole runtime in one process: the interpreter, one store
//! for every map, and an output. What vmprobe uses where handlers run in
//! its own process (the gdbstub backend, BEGIN, END, timers, VMM and host
//! events); a backend with handlers on several threads builds its own from
//! [`Interpreter`] and shards of [`MapStore`].

use crate::context::{Flow, ProbeContext};
use crate::interp::Interpreter;
use crate::output::{Origin, Output, OutputEvent};
use crate::store::{MapBackend, MapStore, make_key};
use probe_lang::value::{Key, KeyPart, Value};
use probe_lang::{BlockId, Executable};
use std::sync::Arc;

pub struct Runtime {
    exec: Arc<Executable>,
    interp: Interpreter,
    maps: MapStore,
    out: Box<dyn Output>,
}

impl Runtime {
    pub fn new(exec: Arc<Executable>, out: Box<dyn Output>) -> Runtime {
        let maps = MapStore::new(&exec.ir.maps, &exec.ir.tuples);
        Runtime {
            exec,
            interp: Interpreter::new(),
            maps,
            out,
        }
    }

    pub fn executable(&self) -> &Arc<Executable> {
        &self.exec
    }

    /// Maximum entries per map (default [`crate::DEFAULT_MAP_LIMIT`]).
    pub fn set_map_limit(&mut self, entries: usize) {
        self.maps.set_limit(entries);
    }

    pub fn set_step_budget(&mut self, steps: u64) {
        self.interp.set_step_budget(steps);
    }

    pub fn set_time_budget(&mut self, budget: std::time::Duration) {
        self.interp.set_time_budget(budget);
    }

    /// Sets the origin of `elapsed` (by default the first run's `nsecs`).
    pub fn set_start_nsecs(&mut self, ns: u64) {
        self.interp.set_start_nsecs(ns);
    }

    /// Runs one block (predicate, then body); errors are counted.
    pub fn run(&mut self, block: BlockId, ctx: &mut dyn ProbeContext) -> Flow {
        self.interp
            .run(&self.exec, block, ctx, &mut self.maps, &mut *self.out)
    }

    /// Runs one block with its maps elsewhere than this runtime's store
    /// (some of them held in another process); output still goes to this
    /// runtime's output.
    pub fn run_with_maps(
        &mut self,
        block: BlockId,
        ctx: &mut dyn ProbeContext,
        maps: &mut dyn MapBackend,
    ) -> Flow {
        self.interp
            .run(&self.exec, block, ctx, maps, &mut *self.out)
    }

    /// The store and the output at once (for a backend that merges maps
    /// it was sent into the store as it prints them).
    pub fn maps_and_output(&mut self) -> (&mut MapStore, &mut dyn Output) {
        (&mut self.maps, &mut *self.out)
    }

    /// Runtime error counts, sorted by probe then message.
    pub fn errors(&self) -> Vec<(String, String, u64)> {
        self.interp.errors()
    }

    pub fn interpreter_mut(&mut self) -> &mut Interpreter {
        &mut self.interp
    }

    pub fn maps(&self) -> &MapStore {
        &self.maps
    }

    pub fn maps_mut(&mut self) -> &mut MapStore {
        &mut self.maps
    }

    /// Hands an event to the output as if a handler had printed it.
    pub fn emit(&mut self, ts_ns: u64, event: OutputEvent) {
        self.out.emit(ts_ns, event);
    }

    /// Hands an event a handler printed elsewhere (in QEMU) to the output,
    /// with where it fired.
    pub fn emit_from(&mut self, ts_ns: u64, origin: &Origin<'_>, event: OutputEvent) {
        self.out.emit_from(ts_ns, origin, event);
    }

    /// bpftrace's at-exit output: `\n\n`, then every map in name order.
    pub fn print_maps(&mut self) {
        self.print_maps_where(|_| true);
    }

    /// Takes over from `old`, the runtime of the program this one's
    /// replaces (service mode's SIGHUP): the maps both declare alike keep
    /// their entries (see [`MapStore::carry_from`]), and handler error
    /// counts and the origin of `elapsed` go on. Returns the names of the
    /// maps carried; `old` keeps the rest.
    pub fn carry_from(&mut self, old: &mut Runtime) -> Vec<String> {
        let carried = self.maps.carry_from(&mut old.maps);
        self.interp.add_errors(&old.interp.errors());
        if let Some(ns) = old.interp.start_nsecs() {
            self.interp.set_start_nsecs(ns);
        }
        carried
    }

    /// The maps `keep` chooses, as [`Runtime::print_maps`] prints them.
    pub fn print_maps_where(&mut self, keep: impl Fn(&str) -> bool) {
        let ts = host_clock::monotonic_ns();
        self.out.emit(ts, OutputEvent::ExitSeparator);
        let mut order: Vec<u32> = (0..self.exec.ir.maps.len() as u32)
            .filter(|&m| keep(&self.exec.ir.maps[m as usize].name))
            .collect();
        let decls = &self.exec.ir.maps;
        order.sort_by(|&a, &b| decls[a as usize].name.cmp(&decls[b as usize].name));
        for map in order {
            let entries = self.maps.entries(map);
            self.out.emit(
                ts,
                OutputEvent::Map {
                    map,
                    entries,
                    top: 0,
                    div: 1,
                },
            );
        }
    }

    /// Every map entry keyed by a `kstack` (alone or with other keys), as
    /// (frames innermost first, value): what a flame graph is drawn from.
    pub fn stack_entries(&mut self) -> Vec<(Vec<String>, u64)> {
        let mut out = Vec::new();
        for i in 0..self.exec.ir.maps.len() as u32 {
            let keys: Vec<Key> = self.maps.cells(i).map(|(k, _)| k.clone()).collect();
            for key in keys {
                let Key::Multi(parts) = &key else { continue };
                for part in parts.iter() {
                    if let KeyPart::Stack(frames) = part {
                        let frames = frames.iter().map(|f| f.to_string()).collect();
                        out.push((frames, self.maps.read(i, &key).as_int()));
                    }
                }
            }
        }
        out
    }

    /// Current value of a map entry as `@m[key]` reads it (for tests/tools).
    pub fn map_value(&mut self, name: &str, key: &[Value]) -> Option<u64> {
        let i = self.maps.index_of(name)?;
        let key = make_key(key.to_vec());
        Some(self.maps.read(i, &key).as_int())
    }
}
