//! probe-plan: what a program asks to instrument, resolved against the
//! guest kernel's symbols, and how a call's entry pairs with its return.
//! Backend-neutral: shared by vmprobe (whatever backend serves the hits)
//! and by its QEMU plugin, which is sent the sites resolved here.

#![forbid(unsafe_code)]
mod resolve;
pub mod returns;
mod timers;

pub use resolve::{
    LayerPlan, ProbeSite, Skip, TimerProbe, UserFile, UserSymbols, WILDCARD_LIMIT, WatchProbe,
    resolve_layers, resolve_probes, resolve_probes_at, resolve_probes_for, resolve_timers,
    resolve_watches,
};
pub use returns::{
    Entered, GuestThread, MAX_PENDING_RETURNS, PendingCall, ReturnTracker, Returned,
};
pub use timers::TimerSchedule;

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
    #[error("{probe}: not placed in its ELF before arming")]
    UnboundUprobe { probe: String },
    #[error("{probe}: the tracepoint was not found in the guest kernel's image before arming")]
    UnboundEvent { probe: String },
    #[error("{probe}: offset {offset} is past the end of the function")]
    OffsetOutside { probe: String, offset: u64 },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
