//! What `vmprobe record` is handed: every probe hit (or what a program's
//! `trace()` calls trace), whatever backend served it.

use crate::layer_event::{LayerEvent, LayerValue};
use probe_lang::BlockId;
pub use probe_plan::GuestThread;
use probe_runtime::{Traced, TracedValue};
use std::sync::Arc;
use trace_formats::{Layer, Value as FieldValue};

/// One probe firing, as handed to an [`EventSink`] (`vmprobe record`).
#[derive(Debug)]
pub struct RecordedEvent<'a> {
    /// The guest's name in this run (`vm0`, ...).
    pub guest: &'a str,
    /// Host CLOCK_MONOTONIC nanoseconds of the stop (or of the VMM/host
    /// event).
    pub ts_ns: u64,
    /// `None` for a VMM or host event not emitted by a vCPU thread.
    pub vcpu: Option<u32>,
    pub layer: Layer,
    /// The probe as written, e.g. `kretprobe:ksys_write`.
    pub probe: &'a str,
    pub func: &'a str,
    /// For a return: when the matching call entered.
    pub entry_ns: Option<u64>,
    /// The `trace(name = ...)` call site (an index into the program's
    /// `trace_sites()`) whose fields these are; `None` for the probe's own
    /// fields: `arg0`..`arg5` at an entry, `retval` at a return, a VMM or
    /// host event's fields.
    pub site: Option<u32>,
    pub fields: &'a [(&'a str, FieldValue<'a>)],
    /// The guest task it ran in, read only for a sink that
    /// [`wants_threads`](EventSink::wants_threads); `None` otherwise, for
    /// VMM and host events, and where the task could not be read.
    pub thread: Option<GuestThread>,
}

/// A call seen at entry (by a `kretprobe`) whose return had not come when
/// recording ended: the run ended while the call was in flight.
#[derive(Debug)]
pub struct UnfinishedCall<'a> {
    pub guest: &'a str,
    /// The vCPU the call entered on.
    pub vcpu: u32,
    pub func: &'a str,
    pub entry_ns: u64,
    /// The task the call entered in, as [`RecordedEvent::thread`].
    pub thread: Option<GuestThread>,
}

/// Where recorded events go. Called with the guest stopped, so a slow sink
/// slows the guest but never loses events.
pub trait EventSink: Send {
    fn event(&mut self, event: &RecordedEvent<'_>);
    /// A script called `snapshot()`.
    fn snapshot(&mut self) {}
    /// At the end of recording, once per call still awaiting its return.
    fn unfinished_call(&mut self, _call: &UnfinishedCall<'_>) {}
    /// Whether guest events should carry their task
    /// ([`RecordedEvent::thread`]): the backend then reads it at each
    /// recorded hit, which costs reads of guest memory.
    fn wants_threads(&self) -> bool {
        false
    }
}

/// What the events of one hit have in common.
pub struct EventBase<'a> {
    pub guest: &'a str,
    pub ts_ns: u64,
    pub vcpu: Option<u32>,
    pub layer: Layer,
    pub func: &'a str,
    pub entry_ns: Option<u64>,
    pub thread: Option<GuestThread>,
}

impl<'a> EventBase<'a> {
    /// A hit on `vcpu` in the guest.
    pub fn guest_hit(
        guest: &'a str,
        ts_ns: u64,
        vcpu: u32,
        func: &'a str,
        entry_ns: Option<u64>,
    ) -> Self {
        EventBase {
            guest,
            ts_ns,
            vcpu: Some(vcpu),
            layer: Layer::Guest,
            func,
            entry_ns,
            thread: None,
        }
    }

    /// The same, in `thread`.
    pub fn in_thread(mut self, thread: Option<GuestThread>) -> Self {
        self.thread = thread;
        self
    }

    /// A kprobe/kretprobe hit: an event per probe in `every_hit` (when
    /// every hit is recorded), then what the handlers traced.
    pub fn emit_hit(
        &self,
        sink: &mut dyn EventSink,
        own: &[(&str, FieldValue<'_>)],
        every_hit: Option<&Vec<(BlockId, Arc<str>)>>,
        traced: &[(Box<str>, Traced)],
    ) {
        if let Some(handlers) = every_hit {
            let all: Vec<(Box<str>, Traced)> = handlers
                .iter()
                .map(|(_, p)| (Box::from(&**p), Traced::Probe))
                .collect();
            self.emit(sink, own, &all);
        }
        self.emit(sink, own, traced);
    }

    /// Hands `traced` (what the handlers' `trace()`/`snapshot()` calls
    /// asked for) to the sink; `own` is the probe's own fields, for a bare
    /// `trace()`.
    pub fn emit(
        &self,
        sink: &mut dyn EventSink,
        own: &[(&str, FieldValue<'_>)],
        traced: &[(Box<str>, Traced)],
    ) {
        for (probe, t) in traced {
            let event = |site, fields| RecordedEvent {
                guest: self.guest,
                ts_ns: self.ts_ns,
                vcpu: self.vcpu,
                layer: self.layer,
                probe,
                func: self.func,
                entry_ns: self.entry_ns,
                site,
                fields,
                thread: self.thread,
            };
            match t {
                Traced::Probe => sink.event(&event(None, own)),
                Traced::Fields { site, fields } => {
                    let fields: Vec<(&str, FieldValue<'_>)> =
                        fields.iter().map(|(n, v)| (&**n, field_value(v))).collect();
                    sink.event(&event(Some(*site), &fields));
                }
                Traced::Snapshot => sink.snapshot(),
            }
        }
    }
}

/// A `trace()` value as a trace field.
pub fn field_value(v: &TracedValue) -> FieldValue<'_> {
    match v {
        TracedValue::U64(v) => FieldValue::U64(*v),
        TracedValue::I64(v) => FieldValue::I64(*v),
        TracedValue::Str(s) => FieldValue::Str(s),
        TracedValue::Bytes(b) => FieldValue::Bytes(b),
    }
}

/// Hands what the handlers of a VMM or host event traced to `sink`. Such
/// events are recorded only when a script traces them (they can be many:
/// every exit, every I/O).
pub fn record_layer_event(
    sink: &mut dyn EventSink,
    guest: &str,
    ev: &LayerEvent,
    traced: &[(Box<str>, Traced)],
) {
    let own: Vec<(&str, FieldValue<'_>)> = ev
        .fields
        .iter()
        .map(|(n, v)| {
            let v = match v {
                LayerValue::Int(i) => FieldValue::U64(*i),
                LayerValue::Str(s) => FieldValue::Str(s),
            };
            (n.as_str(), v)
        })
        .collect();
    let base = EventBase {
        guest,
        ts_ns: ev.ts_ns,
        vcpu: ev.vcpu,
        layer: if ev.probe.starts_with("vmm:") {
            Layer::Vmm
        } else {
            Layer::Host
        },
        func: &ev.probe,
        entry_ns: None,
        thread: None,
    };
    base.emit(sink, &own, traced);
}
