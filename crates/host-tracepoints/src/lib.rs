//! Host kernel tracepoints for vmprobe: `host:tracepoint:kvm:kvm_exit`,
//! `tracepoint:sched:sched_switch`, ... on the host, seen only for a VM's
//! vCPU threads, with the tracepoint's fields decoded by name and timestamps
//! on host `CLOCK_MONOTONIC` (vmprobe's one time base).
//!
//! This crate knows nothing of the CLI or the script language.
//! - [`tracefs`]: find (or mount) tracefs, list tracepoints, read formats;
//! - [`format`]: parse `format` files, decode raw records;
//! - [`perf`]: `perf_event_open` per thread or per CPU, with mmap'd rings
//!   ([`TracepointReader`]) or counters only ([`TracepointCounter`]), and
//!   in-kernel filters.
//!
//! ```no_run
//! use host_tracepoints::{
//!     EventSpec, Options, Target, Tracefs, Tracepoint, TracepointCounter, TracepointReader,
//! };
//! use std::time::Duration;
//!
//! let vcpu_tids = [4242, 4243]; // from the VMM
//! let tracefs = Tracefs::open()?;
//! let tp = Tracepoint::resolve(&tracefs, "sched:sched_switch")?;
//! let mut reader = TracepointReader::open_with(
//!     &tp,
//!     &Target::Threads(vcpu_tids.to_vec()),
//!     &Options::default().filter("prev_state == 0"),
//! )?;
//! let mut samples = Vec::new();
//! reader.wait(Duration::from_millis(20))?;
//! reader.read(&mut samples)?;
//! for s in &samples {
//!     println!("{} {} tid={} prev={}", s.ts_ns, s.name, s.tid, s.field("prev_comm").unwrap());
//! }
//! assert_eq!(reader.lost(), 0); // losses are counted, never hidden
//!
//! // Several tracepoints, each with its own filter, one ring per thread:
//! // samples of one thread come out in the order they happened.
//! let specs = ["kvm:kvm_exit", "kvm:kvm_userspace_exit"].map(|name| EventSpec {
//!     tracepoint: Tracepoint::resolve(&tracefs, name).unwrap(),
//!     filter: None,
//! });
//! let mut kvm = TracepointReader::open_many(&specs, &Target::Threads(vcpu_tids.to_vec()), 64)?;
//! kvm.add_threads(&[4244])?; // a vCPU thread started later
//! kvm.read(&mut samples)?;
//!
//! // Hot events: count in the kernel, no samples.
//! let writes = Tracepoint::resolve(&tracefs, "syscalls:sys_enter_write")?;
//! let counter = TracepointCounter::open(&writes, &Target::Threads(vcpu_tids.to_vec()), &Options::default())?;
//! println!("{} writes", counter.read()?);
//! # Ok::<(), host_tracepoints::Error>(())
//! ```

use std::path::PathBuf;

pub mod format;
pub mod perf;
pub mod tracefs;

pub use format::{EventFormat, Field, FieldValue};
pub use perf::{
    EventSpec, Options, Sample, Stats, Target, Tracepoint, TracepointCounter, TracepointReader,
    open,
};
pub use tracefs::{Tracefs, TracepointName};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("tracefs unavailable at /sys/kernel/tracing and /sys/kernel/debug/tracing: {reason}")]
    TracefsUnavailable { reason: String },
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("bad tracepoint name `{0}` (want system:event, e.g. sched:sched_switch)")]
    BadTracepointName(String),
    #[error("no tracepoint {0} on this kernel (see available_events in tracefs)")]
    UnknownTracepoint(String),
    #[error("{}: {source}", path.display())]
    Format {
        path: PathBuf,
        source: format::ParseError,
    },
    #[error(
        "perf_event_open of {tracepoint} not permitted ({source}): run as root, or lower \
         kernel.perf_event_paranoid"
    )]
    PerfPermission {
        tracepoint: String,
        source: std::io::Error,
    },
    #[error("no thread {0} (has the VM exited?)")]
    NoSuchThread(i32),
    #[error("perf_event_open of {tracepoint} for {who}: {source}")]
    PerfOpen {
        tracepoint: String,
        who: String,
        source: std::io::Error,
    },
    #[error("filter `{filter}` rejected for {tracepoint}: {source}")]
    Filter {
        tracepoint: String,
        filter: String,
        source: std::io::Error,
    },
    #[error("no threads or tracepoints to trace")]
    NoTargets,
    #[error("threads can only be added to a per-thread reader")]
    NotPerThread,
    #[error("ring size {0} pages is not a power of two")]
    BadRingSize(usize),
    #[error("{op}: {source}")]
    Sys {
        op: &'static str,
        source: std::io::Error,
    },
}
