//! The probe engine: what every backend shares. A backend (breakpoints
//! through a GDB stub in `backend-gdb`, handlers inside QEMU in
//! `backend-plugin`) arms a program on one guest and serves its hits; the
//! engine gives it the rest:
//!
//! - [`Backend`]: what the serve loop asks of a backend;
//! - [`serve`]: BEGIN, one thread per guest until the run ends, detach;
//! - [`layers`]: the VMM's and host's events (`vmm:`, `host:tracepoint:`), run
//!   in time order with the guest's;
//! - [`record`]: what `vmprobe record` is handed ([`EventSink`]);
//! - [`own_fields`]: a recorded probe's own fields named and typed after
//!   the kernel's prototype;
//! - [`event_context`]: the handler's view where no vCPU stopped (BEGIN,
//!   END, layer events);
//! - [`types`], [`event_types`]: the kernel's BTF and the layers' event
//!   fields as the language's type provider;
//! - [`HitStats`]: what a backend counts.
//!
//! The engine knows no backend: a new one is a crate that implements
//! [`Backend`].

#![forbid(unsafe_code)]
pub mod boundary;
pub mod capabilities;
pub mod event_context;
pub mod event_types;
pub mod layer_event;
pub mod layers;
pub mod own_fields;
pub mod record;
pub mod serve;
mod stats;
pub mod types;

pub use event_types::LayerTypes;
pub use host_clock::monotonic_ns;
pub use record::{EventSink, GuestThread, RecordedEvent, UnfinishedCall, record_layer_event};
pub use stats::{HitStats, LiveMaps, LiveStats, SERVICE_BUCKETS};
pub use types::BtfTypes;

use event_context::EventContext;
use linux_guest::GuestKernel;
use probe_runtime::{Flow, Runtime};
use std::sync::{Arc, Mutex};

/// Why a run ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EndReason {
    /// The workload finished with this exit status.
    WorkloadExited(i32),
    /// The user asked to stop (Ctrl-C, SIGTERM).
    Interrupted,
    /// A handler called `exit()`.
    ScriptExit,
    /// The stub or VM went away; the message says how.
    TargetGone(String),
    /// A VM vmprobe attached to exited (its probes were layers only, so
    /// nothing was armed in it).
    VmExited,
    /// Service mode: the guest detaches for a new program (SIGHUP), and
    /// is attached again with it. Never the reason a run ends.
    Reload,
}

/// A backend's error, with its own type behind it.
pub type BackendError = Box<dyn std::error::Error + Send + Sync>;

/// What the rest of a run is told when a backend has finished.
#[derive(Debug, Default)]
pub struct Finished {
    /// One line per layer source (counts, drops), for `--stats`.
    pub layer_summaries: Vec<String>,
    /// Detaching failed (probes may be left in the guest): why.
    pub detach_error: Option<String>,
    /// The backend's counters, one line for `--stats`.
    pub stats_line: String,
    /// What the user must know of the output (maps as of an earlier
    /// moment, say), printed whatever the options.
    pub caveat: Option<String>,
    /// Events dropped before vmprobe got them (a full ring inside QEMU).
    pub lost_events: u64,
}

impl Finished {
    /// Takes in what an earlier backend of the same guest left (service
    /// mode: the VM's life before a restart); its stats line is dropped.
    pub fn absorb(&mut self, earlier: Finished) {
        self.layer_summaries.extend(earlier.layer_summaries);
        self.lost_events += earlier.lost_events;
        if self.detach_error.is_none() {
            self.detach_error = earlier.detach_error;
        }
        if self.caveat.is_none() {
            self.caveat = earlier.caveat;
        }
    }
}

/// One guest's probes, armed by a backend, and how its hits are served.
pub trait Backend: Send {
    /// Which backend serves the guest: `gdb` or `plugin`.
    fn kind(&self) -> &'static str;
    /// The guest kernel, with the guest's KASLR slide.
    fn kernel(&self) -> Option<&Arc<GuestKernel>>;
    /// Records every hit (`every_hit`) or what `trace()` calls trace.
    fn set_recorder(&mut self, sink: Box<dyn EventSink>, every_hit: bool);
    /// Lets the guest run with the program armed; `runtime` holds what
    /// BEGIN left in the maps.
    fn start(&mut self, runtime: &Mutex<Runtime>) -> Result<(), BackendError>;
    /// Serves hits until `poll` reports the end of the run, a handler calls
    /// `exit()`, or the target goes away.
    fn run(
        &mut self,
        runtime: &Mutex<Runtime>,
        poll: &mut dyn FnMut() -> Option<EndReason>,
    ) -> EndReason;
    /// Ends probing: hands calls still in flight to the recorder, switches
    /// the layers off and, unless the target is `gone`, removes every probe
    /// and leaves the guest running. What the backend kept outside
    /// `runtime` (maps inside QEMU) is merged into it; without a runtime
    /// (a failed attach) it is dropped.
    fn finish(self: Box<Self>, runtime: Option<&Mutex<Runtime>>, gone: bool) -> Finished;
    /// Hits and service times, counted as they are served (`--metrics`),
    /// where the backend counts them live.
    fn live_stats(&self) -> Option<Arc<LiveStats>> {
        None
    }
    /// Maps the backend holds outside `runtime`, as last copied.
    fn live_maps(&self) -> Option<Arc<LiveMaps>> {
        None
    }
}

/// Runs each of `handlers` (a probe's blocks) with `ctx`, holding the
/// shared runtime only while one runs and telling `ctx` which probe runs
/// through `set_probe`. `Exit` if any called `exit()`.
pub fn run_handlers<'a, C: probe_runtime::ProbeContext>(
    ctx: &mut C,
    runtime: &Mutex<Runtime>,
    handlers: &'a [(probe_lang::BlockId, Arc<str>)],
    set_probe: impl Fn(&mut C, &'a str),
) -> Flow {
    let mut flow = Flow::Continue;
    for (block, probe) in handlers {
        set_probe(ctx, probe);
        let mut rt = serve::lock(runtime);
        if let Flow::Exit = rt.run(*block, ctx) {
            flow = Flow::Exit;
        }
    }
    flow
}

/// Runs the blocks of every `BEGIN` (or `END`) probe, which see no guest
/// state beyond the kernel's symbols (`kaddr`, `ksym`).
pub fn run_special(
    program: &probe_lang::Program,
    runtime: &mut Runtime,
    which: &probe_lang::ProbeSpec,
    kernel: Option<&GuestKernel>,
) -> Flow {
    let name = match which {
        probe_lang::ProbeSpec::Begin => "BEGIN",
        _ => "END",
    };
    let mut flow = Flow::Continue;
    for (index, spec) in program.probes().iter().enumerate() {
        if spec == which {
            let mut ctx = EventContext::new("", monotonic_ns(), name, kernel);
            ctx.probe = name;
            if let Flow::Exit = runtime.run(program.block_of(index), &mut ctx) {
                flow = Flow::Exit;
            }
        }
    }
    flow
}
