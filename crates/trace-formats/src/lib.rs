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
