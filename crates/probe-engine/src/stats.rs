//! What a backend counts while it serves a run.

use hdrhistogram::Histogram;

/// Counters and the service-time distribution of hits, for the end-of-run
/// report and `vmprobe bench`.
pub struct HitStats {
    pub hits: u64,
    /// Returns matched to a call seen at entry (kretprobe fires).
    pub returns: u64,
    /// Calls whose return could not be tracked: more calls in flight than
    /// [`MAX_PENDING_RETURNS`] (bpftrace's "missed" kretprobes).
    pub missed_returns: u64,
    /// Timer (`interval`, `profile`) firings, counting each vCPU sampled.
    pub timer_fires: u64,
    /// Watchpoint hits.
    pub watch_hits: u64,
    /// VMM and host events that ran a handler.
    pub layer_events: u64,
    /// Stops that matched no probe site (resumed and otherwise ignored).
    pub stray_stops: u64,
    /// Nanoseconds from receiving a hit's stop reply to resuming the guest.
    pub service_ns: Histogram<u64>,
}

impl HitStats {
    pub fn new() -> Self {
        HitStats {
            hits: 0,
            returns: 0,
            missed_returns: 0,
            timer_fires: 0,
            watch_hits: 0,
            layer_events: 0,
            stray_stops: 0,
            service_ns: Histogram::new(3).expect("3 significant digits is valid"),
        }
    }
}

impl Default for HitStats {
    fn default() -> Self {
        HitStats::new()
    }
}
