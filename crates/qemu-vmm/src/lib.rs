//! QEMU itself as a layer to instrument: vmprobe's `vmm:EVENT` probes.
//!
//! - [`qmp`]: a synchronous QMP client (Unix socket or loopback TCP) with
//!   bounded timeouts, typed commands and queued asynchronous events. It
//!   switches QEMU's trace events on and off at run time and can open a
//!   gdbstub on a VM started without `-gdb` ([`Qmp::open_gdbstub`]).
//! - [`trace`]: QEMU's `log` trace backend output, parsed. QEMU 7.2 prints an
//!   enabled event as `TID@SECONDS.MICROS:name message` (with `-msg
//!   timestamp=on`; `name message` without it). The message is the event's
//!   printf format expanded: read back through the event's declaration
//!   ([`catalogue`]), each value is named after its C argument; without one,
//!   names come from the line itself (see [`trace::parse_fields`]).
//! - [`clock`]: QEMU stamps lines with `gettimeofday` (CLOCK_REALTIME, in
//!   microseconds); [`host_clock::RealtimeToMonotonic`] converts to vmprobe's one
//!   time base, CLOCK_MONOTONIC, with a measured offset.
//! - [`follow`]: follows QEMU's log file like `tail -f` in a background
//!   thread and delivers parsed events over a bounded channel, counting what
//!   it had to drop or could not parse.
//! - [`catalogue`]: `trace-events` declarations (format strings, argument
//!   names and types), from the `trace-events-all` installed with QEMU
//!   (Debian: qemu-system-common); [`catalogue::EventDecl::match_message`]
//!   reads a message back through its format.
//!
//! Nothing here knows about scripts, probes or the CLI.
//!
//! ```no_run
//! # fn main() -> qemu_vmm::Result<()> {
//! use qemu_vmm::{FollowConfig, LogFollower, Qmp};
//! use std::time::Duration;
//! // QEMU launched with `-qmp unix:DIR/qmp.sock,server=on,wait=off
//! // -D DIR/qemu.log -msg timestamp=on` (qemu_guest::LaunchConfig::log_file).
//! let mut qmp = Qmp::connect_unix_wait("/tmp/vm/qmp.sock".as_ref(), Duration::from_secs(5))?;
//! let events = LogFollower::spawn("/tmp/vm/qemu.log", FollowConfig::default())?;
//! qmp.trace_event_set_state("serial_write", true)?;
//! while let Some(ev) = events.recv_timeout(Duration::from_secs(1)) {
//!     let val = ev.field("value").and_then(|v| v.as_u64());
//!     println!("{} ns tid {:?} {} val={val:?}", ev.ts_ns, ev.tid, ev.name);
//! }
//! qmp.trace_event_set_state("serial_write", false)?;
//! let stats = events.stop();
//! eprintln!("{} dropped, {} unparsable lines", stats.dropped, stats.skipped);
//! # Ok(()) }
//! ```

#![forbid(unsafe_code)]
pub mod catalogue;
pub mod follow;
pub mod qmp;
pub mod trace;

pub use follow::{FollowConfig, FollowStats, LogFollower};
pub use host_clock::{RealtimeToMonotonic, monotonic_ns};
pub use qmp::{CpuInfoFast, Qmp, QmpEvent, RunState, StatusInfo, TraceEventInfo, TraceEventState};
pub use trace::{FieldValue, LineParser, TraceEvent};

use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("connecting to {addr}: {source}")]
    Connect {
        addr: String,
        source: std::io::Error,
    },
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("timed out after {after:?} waiting for {what}")]
    Timeout { what: String, after: Duration },
    #[error("QMP connection closed by QEMU while waiting for {what}")]
    Closed { what: String },
    #[error("malformed QMP message ({reason}): {text:?}")]
    Malformed { text: String, reason: String },
    #[error("QMP command `{command}` failed: {class}: {desc}")]
    Qmp {
        command: String,
        class: String,
        desc: String,
    },
    #[error("QMP protocol error: {0}")]
    Protocol(String),
    #[error("monitor command `{command}` failed: {output}")]
    Monitor { command: String, output: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

pub(crate) fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let what = what.into();
    move |source| Error::Io { what, source }
}
