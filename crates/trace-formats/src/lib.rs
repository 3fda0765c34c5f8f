//! Trace-file formats for vmprobe: typed events in, files out.
//!
//! This crate knows nothing of the CLI, the guest or the script language.
//! The model ([`model`]) is: a trace has streams, each identified by a
//! [`StreamKey`] (guest name, vCPU or none, layer); an event has a
//! CLOCK_MONOTONIC timestamp in ns, an [`EventClass`] (name plus fixed field
//! layout, declared up front or on first use) and typed [`Value`]s.
//!
//! Outputs:
//! - [`ctf`]: CTF 1.8 (TSDL metadata plus one binary file per stream), read by
//!   babeltrace2 and Trace Compass;
//! - [`perfetto`]: Chrome trace-event JSON, opened by ui.perfetto.dev;
//! - [`flame`]: folded stacks and flame-graph SVG (through `inferno`);
//! - [`ring`]: a bounded flight-recorder ring keeping the newest events.
//!
//! ```
//! use trace_formats::ctf::{CtfOptions, CtfWriter};
//! use trace_formats::perfetto::PerfettoWriter;
//! use trace_formats::ring::FlightRecorder;
//! use trace_formats::{flame, ClockOffset, EventClass, FieldType, Layer, StreamKey, Value};
//!
//! # let tmp = std::env::temp_dir().join(format!("trace-formats-doc-{}", std::process::id()));
//! // CTF: a directory with `metadata` and one file per stream.
//! let mut ctf = CtfWriter::create(&tmp, CtfOptions::new(ClockOffset::measure()))?;
//! let vcpu0 = ctf.add_stream(StreamKey::new("vm1", Some(0), Layer::Guest))?;
//! let write = ctf.declare(EventClass::new(
//!     "kprobe:ksys_write",
//!     &[("fd", FieldType::U64), ("comm", FieldType::Str)],
//! ))?;
//! let now = ClockOffset::monotonic_now_ns();
//! ctf.write(vcpu0, now, write, &[Value::U64(1), Value::Str("sh")])?;
//! // Or declared on first use, by name:
//! ctf.write_named(vcpu0, now + 10, "kretprobe:ksys_write", &[("ret", Value::I64(-4))])?;
//! ctf.add_discarded(vcpu0, 3)?; // dropped events are counted, never hidden
//! ctf.finish()?;
//!
//! // Perfetto / Chrome JSON: open the file in ui.perfetto.dev.
//! let mut pf = PerfettoWriter::new(std::io::Cursor::new(Vec::new()))?;
//! let t = pf.add_stream(StreamKey::new("vm1", Some(0), Layer::Guest))?;
//! pf.instant(t, now, "kprobe:ksys_write", &[("fd", Value::U64(1))])?;
//! pf.complete(t, now, 2_500, "ksys_write", &[("ret", Value::I64(12))])?;
//! let json: Vec<u8> = pf.finish()?.into_inner();
//!
//! // Folded stacks (frames root first) and a flame-graph SVG.
//! let folded = flame::fold([(["do_syscall_64", "ksys_write"], 12)]);
//! assert_eq!(folded, ["do_syscall_64;ksys_write 12"]);
//! let mut svg = Vec::new();
//! flame::write_flamegraph(&mut svg, &folded, "ksys_write stacks")?;
//!
//! // Flight recorder: keep the newest 1 MiB per stream, dump on demand.
//! let mut rec = FlightRecorder::new(1 << 20);
//! rec.push(vcpu0, now + 20, write, &[Value::U64(2), Value::Str("sh")])?;
//! let mut dump = CtfWriter::create(tmp.join("dump"), CtfOptions::new(ClockOffset::measure()))?;
//! dump.add_stream(StreamKey::new("vm1", Some(0), Layer::Guest))?;
//! dump.declare(EventClass::new("kprobe:ksys_write", &[("fd", FieldType::U64), ("comm", FieldType::Str)]))?;
//! assert_eq!(rec.drain_into(&mut dump)?, 1);
//! dump.finish()?;
//! # std::fs::remove_dir_all(&tmp).ok();
//! # Ok::<(), trace_formats::Error>(())
//! ```

#![forbid(unsafe_code)]
pub mod ctf;
pub mod flame;
pub mod model;
pub mod perfetto;
pub mod ring;
pub mod size;

pub use model::{
    ClassId, ClockOffset, EventClass, FieldType, Layer, OwnedValue, Schema, StreamId, StreamKey,
    Value,
};

use std::path::PathBuf;

/// Errors of every writer in this crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("i/o error: {0}")]
    Write(#[from] std::io::Error),
    #[error("event `{event}` used with a field layout other than the one declared")]
    LayoutMismatch { event: String },
    #[error("event `{event}` has field `{field}` twice")]
    DuplicateField { event: String, field: String },
    #[error("invalid event or field name {0:?}")]
    InvalidName(String),
    #[error("unknown event class id {0}")]
    UnknownClass(u32),
    #[error("unknown stream id {0}")]
    UnknownStream(u32),
    #[error("string field `{field}` contains a NUL byte (use a byte-array field)")]
    NulInString { field: String },
    #[error("byte-array field `{field}` is longer than 4 GiB")]
    TooLong { field: String },
    #[error("timestamp {ts} ns is before the stream's previous event at {last} ns")]
    TimestampRegression { ts: u64, last: u64 },
    #[error("event of {size} bytes does not fit a ring of {capacity} bytes")]
    EventTooLarge { size: usize, capacity: usize },
}
