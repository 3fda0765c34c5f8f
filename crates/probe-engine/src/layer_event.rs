//! One event of the VMM or host layer, as the layers hand it to handlers
//! and to the recording (below both, so neither needs the other).

/// A field of a layer event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LayerValue {
    Int(u64),
    Str(String),
}

/// One event of the VMM or host layer.
#[derive(Clone, Debug)]
pub struct LayerEvent {
    /// Host CLOCK_MONOTONIC ns (converted from QEMU's wall-clock stamp, or
    /// perf's CLOCK_MONOTONIC sample time).
    pub ts_ns: u64,
    /// The vCPU whose thread emitted it, when it was a vCPU thread.
    pub vcpu: Option<u32>,
    /// The probe it matches: `vmm:NAME` or `host:tracepoint:SYS:NAME`.
    pub probe: String,
    pub fields: Vec<(String, LayerValue)>,
}
