//! What a program prints, as events: the runtime never formats text.
//! `probe-output` renders the events as bpftrace does; a backend in
//! another process (the QEMU plugin) ships them to vmprobe to be rendered
//! there, as bpftrace's BPF programs send their printf arguments to user
//! space through a ring.

use crate::store::Shown;
use probe_lang::ast::Type;
use probe_lang::value::{Key, Value};

/// One piece of a program's output.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum OutputEvent {
    /// `printf(fmt, args...)`: the format's index in the program's IR.
    Printf { fmt: u32, args: Vec<Value> },
    /// `time(fmt)`, already formatted.
    Time(String),
    /// `print(value)`.
    Value { value: Value, ty: Type },
    /// `print(@m, top, div)`, or a map printed at exit: the entries,
    /// unsorted.
    Map {
        map: u32,
        entries: Vec<(Key, Shown)>,
        top: u64,
        div: u64,
    },
    /// What bpftrace prints after END, before the maps printed at exit.
    ExitSeparator,
    /// `print`, `clear` or `zero` of a map a handler's thread holds only a
    /// part of (one vCPU's shard): whoever holds the whole does it, in
    /// order with the rest of the output. A printer never sees one.
    MapOp { map: u32, op: MapOp },
}

/// A whole-map operation handed on by [`OutputEvent::MapOp`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum MapOp {
    Print { top: u64, div: u64 },
    Clear,
    Zero,
}

/// Where an output event came from, for outputs that ship events with
/// their context (OTLP log records).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Origin<'a> {
    pub guest: &'a str,
    pub vcpu: Option<u32>,
    /// The probe as written; `None` where it is not known (output the QEMU
    /// plugin sent).
    pub probe: Option<&'a str>,
}

/// Where a runtime's output goes.
pub trait Output: Send {
    /// `ts_ns` is the host CLOCK_MONOTONIC time of the hit that printed.
    fn emit(&mut self, ts_ns: u64, event: OutputEvent);

    /// An event printed by a handler, with where it fired. Outputs that
    /// only render text need not know.
    fn emit_from(&mut self, ts_ns: u64, _origin: &Origin<'_>, event: OutputEvent) {
        self.emit(ts_ns, event);
    }
}

/// Keeps the events (for tests, and for shipping them elsewhere).
#[derive(Default)]
pub struct Collected(pub Vec<(u64, OutputEvent)>);

impl Output for Collected {
    fn emit(&mut self, ts_ns: u64, event: OutputEvent) {
        self.0.push((ts_ns, event));
    }
}

/// Drops every event.
pub struct Discard;

impl Output for Discard {
    fn emit(&mut self, _: u64, _: OutputEvent) {}
}
