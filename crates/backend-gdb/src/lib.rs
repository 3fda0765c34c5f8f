//! backend-gdb: probes served through a GDB remote stub (QEMU's gdbstub,
//! Firecracker, Cloud Hypervisor, Xen's gdbsx, bhyve). The guest stops at
//! a breakpoint; vmprobe runs the handlers and gets the vCPU going again.
//!
//! One hit costs, on QEMU: the stop reply, a register read only if the handler
//! (or telling several probe sites apart) needs one, one single step of the
//! stopped vCPU over the breakpoint (or a pc move past a no-op), and a
//! continue. QEMU ignores breakpoints at the pc of a single-stepping vCPU,
//! so the breakpoint stays armed: no remove/re-insert per hit (each of
//! which would also invalidate translated code under TCG).
//!
//! Invariants:
//! - nothing is sent to the stub while the guest runs except an interrupt;
//! - every breakpoint inserted is removed before detach, on every exit path
//!   that still has a connection (and by `Drop` when a session is dropped
//!   armed);
//! - guest memory at each probe site is read before arming and after
//!   disarming, and a difference is reported as an error.

#![forbid(unsafe_code)]
mod backend;
mod context;
mod session;

pub use context::{StopView, StubMemory};
pub use session::{SLIDE_DEADLINE, Session};

use gdb_remote::ThreadId;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "could not find the kernel in guest memory (KASLR slide detection failed); is the guest kernel the image given?"
    )]
    SlideNotFound,
    #[error(
        "KASLR slide detection gave up after {seconds} s ({reads} reads of guest memory); is the stub answering?"
    )]
    SlideTimeout { seconds: u64, reads: u32 },
    #[error(transparent)]
    Plan(#[from] probe_plan::Error),
    #[error(transparent)]
    Boundary(#[from] probe_engine::boundary::BoundaryError),
    #[error("cannot arm probe at {addr:#x} ({probe}): {source}")]
    Arm {
        probe: String,
        addr: u64,
        source: gdb_remote::Error,
    },
    #[error("guest memory at probe site {addr:#x} changed across attach/detach")]
    MemoryChanged { addr: u64 },
    #[error("{0}")]
    Stub(#[from] gdb_remote::Error),
    #[error("{0}")]
    Guest(#[from] linux_guest::GuestError),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// QEMU numbers vCPU threads from 1; scripts see vCPUs from 0, as CPUs.
pub(crate) fn vcpu_index(thread: ThreadId) -> u32 {
    thread.tid.saturating_sub(1) as u32
}
