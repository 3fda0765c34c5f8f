//! probe-runtime: runs compiled probe programs ([`probe_lang::Executable`]).
//!
//! - [`context`]: what a handler asks of the place it fired
//!   ([`ProbeContext`]), implemented by each backend;
//! - [`interp`]: the [`Interpreter`], which runs one block per hit with a
//!   step budget;
//! - [`store`]: map state ([`MapStore`]), shards and how they merge;
//! - [`thread_vars`]: `self->` values per guest thread ([`ThreadVars`]);
//! - [`output`]: what a program prints, as [`OutputEvent`]s (rendering
//!   is `probe-output`'s);
//! - [`runtime`]: the three together in one process ([`Runtime`]).
//!
//! The crate knows nothing of GDB, QEMU or x86: the backend supplies the
//! context, and it is shared by vmprobe and by its QEMU plugin.

#![forbid(unsafe_code)]
pub mod context;
pub mod interp;
pub mod output;
pub mod runtime;
pub mod store;
pub mod thread_vars;

pub use context::{ContextError, Flow, ProbeContext, Traced, TracedValue, guest_event_arg};
pub use interp::{DEFAULT_STEP_BUDGET, DEFAULT_TIME_BUDGET, Interpreter};
pub use output::{MapOp, Origin, Output, OutputEvent};
pub use runtime::Runtime;
pub use store::{Cell, DEFAULT_MAP_LIMIT, MapBackend, MapStore, Shown};
pub use thread_vars::{DEFAULT_THREAD_LIMIT, ThreadVars};
