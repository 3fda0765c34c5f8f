//! The probe engine: turns a compiled probe program into breakpoints on a
//! guest's GDB stub, and runs the program's handlers on each hit.
//!
//! One hit costs, on QEMU: the stop reply, a register read only if the handler
//! (or telling several probe sites apart) needs one, one single step of the
//! stopped vCPU over the breakpoint, and a continue. QEMU ignores breakpoints
//! at the pc of a single-stepping vCPU, so the breakpoint stays armed: no
//! remove/re-insert per hit (each of which would also invalidate translated
//! code under TCG).
//!
//! Invariants:
//! - nothing is sent to the stub while the guest runs except an interrupt;
//! - every breakpoint inserted is removed before detach, on every exit path
//!   that still has a connection;
//! - guest memory at each probe site is read before arming and after
//!   disarming, and a difference is reported as an error.

mod context;
pub mod event_types;
pub mod guest;
pub mod layers;
mod resolve;
mod session;
pub mod types;
pub use event_types::LayerTypes;
pub use types::BtfTypes;

pub use resolve::{
    LayerPlan, ProbeSite, Skip, resolve_layers, resolve_probes, resolve_timers, resolve_watches,
};
pub use session::{
    EndReason, EventSink, HitStats, MAX_PENDING_RETURNS, RecordedEvent, SLIDE_DEADLINE, Session,
    TimerProbe, UnfinishedCall, WatchProbe, record_layer_event,
};

/// Host CLOCK_MONOTONIC in nanoseconds: the one time base of every event.
pub fn monotonic_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("unknown kernel symbol '{name}' in probe {probe}")]
    UnknownSymbol { probe: String, name: String },
    #[error(
        "probe {probe}: pattern '{pattern}' matches {count} functions, more than the limit of {limit}"
    )]
    TooManyMatches {
        probe: String,
        pattern: String,
        count: usize,
        limit: usize,
    },
    #[error("probe {probe}: no kernel function matches '{pattern}'")]
    NoMatch { probe: String, pattern: String },
    #[error("probe {0} is not supported yet")]
    Unsupported(String),
    #[error(
        "could not find the kernel in guest memory (KASLR slide detection failed); is the guest kernel the image given?"
    )]
    SlideNotFound,
    #[error(
        "KASLR slide detection gave up after {seconds} s ({reads} reads of guest memory); is the stub answering?"
    )]
    SlideTimeout { seconds: u64, reads: u32 },
    #[error("{probe}: offset {offset} is past the end of the function")]
    OffsetOutside { probe: String, offset: u64 },
    #[error(
        "{probe}: offset {offset} is inside an instruction (the one at +{insn} is {len} bytes long); \
         a probe must start an instruction"
    )]
    NotOnInstruction {
        probe: String,
        offset: u64,
        insn: u64,
        len: usize,
    },
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
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Runs the blocks of every `BEGIN` (or `END`) probe, which see no guest
/// state beyond the kernel's symbols (`kaddr`, `ksym`).
pub fn run_special(
    program: &probe_lang::Program,
    runtime: &mut probe_lang::Runtime,
    which: &probe_lang::ProbeSpec,
    kernel: Option<&guest::GuestKernel>,
) -> probe_lang::Flow {
    let name = match which {
        probe_lang::ProbeSpec::Begin => "BEGIN",
        _ => "END",
    };
    let mut flow = probe_lang::Flow::Continue;
    for (index, spec) in program.probes().iter().enumerate() {
        if spec == which {
            let mut ctx = context::HitContext {
                client: None,
                thread: None,
                regs: None,
                vcpu: 0,
                nsecs: monotonic_ns(),
                func: name,
                probe: name,
                kernel,
                guest: "",
                task: None,
                fields: None,
                traced: Vec::new(),
            };
            if let probe_lang::Flow::Exit = runtime.run(program.block_of(index), &mut ctx) {
                flow = probe_lang::Flow::Exit;
            }
        }
    }
    flow
}
