//! What a backend counts while it serves a run.

use hdrhistogram::Histogram;
use probe_runtime::MapStore;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

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
    /// Hits at a uprobe's address in a process that maps another file (or
    /// none) there: not the probe's, resumed without running handlers.
    pub other_files: u64,
    /// Stops at a guest tracepoint's call whose emulated code chose not to
    /// fire (its condition).
    pub events_not_fired: u64,
    /// Stops at a guest tracepoint's call that could not be served, and
    /// the first reason.
    pub event_errors: u64,
    pub event_error: Option<String>,
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
            other_files: 0,
            events_not_fired: 0,
            event_errors: 0,
            event_error: None,
            service_ns: Histogram::new(3).expect("3 significant digits is valid"),
        }
    }
}

impl Default for HitStats {
    fn default() -> Self {
        HitStats::new()
    }
}

/// Service-time buckets of [`LiveStats`]: bucket `i` holds stops served in
/// at most 2^i microseconds, the last one the rest.
pub const SERVICE_BUCKETS: usize = 24;

/// What a backend counts as it serves, readable from another thread while
/// it does (`--metrics`): relaxed atomics, one increment per hit.
#[derive(Debug, Default)]
pub struct LiveStats {
    /// Probe hits: entries, returns, watchpoint hits, timer firings.
    pub hits: AtomicU64,
    service: [AtomicU64; SERVICE_BUCKETS],
    service_ns: AtomicU64,
    /// Events lost before vmprobe got them (inside QEMU: a ring full).
    pub lost: AtomicU64,
}

impl LiveStats {
    pub fn hit(&self) {
        self.hits.fetch_add(1, Ordering::Relaxed);
    }

    /// One stop served in `ns` (stop reply to resume).
    pub fn served(&self, ns: u64) {
        self.service[service_bucket(ns)].fetch_add(1, Ordering::Relaxed);
        self.service_ns.fetch_add(ns, Ordering::Relaxed);
    }

    /// Counts kept elsewhere (inside QEMU), as last copied: they replace
    /// these. `service` is (time in ns, hits) pairs.
    pub fn publish(
        &self,
        hits: u64,
        lost: u64,
        service: impl Iterator<Item = (u64, u64)>,
        service_ns: u64,
    ) {
        let mut buckets = [0u64; SERVICE_BUCKETS];
        for (ns, n) in service {
            buckets[service_bucket(ns)] += n;
        }
        for (b, n) in self.service.iter().zip(buckets) {
            b.store(n, Ordering::Relaxed);
        }
        self.service_ns.store(service_ns, Ordering::Relaxed);
        self.hits.store(hits, Ordering::Relaxed);
        self.lost.store(lost, Ordering::Relaxed);
    }

    /// The service-time histogram: (inclusive upper bound in seconds, stops)
    /// per bucket, the last `+Inf`, and the total in seconds.
    pub fn service_seconds(&self) -> (Vec<(f64, u64)>, f64) {
        let buckets = self
            .service
            .iter()
            .enumerate()
            .map(|(i, n)| {
                let le = if i + 1 == SERVICE_BUCKETS {
                    f64::INFINITY
                } else {
                    (1u64 << i) as f64 * 1e-6
                };
                (le, n.load(Ordering::Relaxed))
            })
            .collect();
        let total = self.service_ns.load(Ordering::Relaxed) as f64 * 1e-9;
        (buckets, total)
    }
}

/// The bucket of a service time: the least power of two microseconds that
/// holds it.
fn service_bucket(ns: u64) -> usize {
    let us = ns.div_ceil(1000);
    let i = match us {
        0 | 1 => 0,
        us => (64 - (us - 1).leading_zeros()) as usize,
    };
    i.min(SERVICE_BUCKETS - 1)
}

/// The maps a backend holds outside vmprobe's runtime (inside QEMU), as
/// last copied, for readers while the run goes on (`--metrics`).
#[derive(Debug, Default)]
pub struct LiveMaps(Mutex<Option<MapStore>>);

impl LiveMaps {
    pub fn publish(&self, store: &MapStore) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Some(store.clone());
    }

    pub fn get(&self) -> Option<MapStore> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// No copy any more: the backend merged its maps into the runtime.
    /// Done while the runtime is locked, and read with it locked, so that
    /// a reader sees each count once.
    pub fn withdraw(&self) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Counts copied from inside QEMU replace, not add to, the last copy.
    #[test]
    fn published_counts_replace_the_last_copy() {
        let s = LiveStats::default();
        s.publish(5, 1, [(900, 2), (1500, 3)].into_iter(), 5000);
        s.publish(7, 2, [(900, 3), (1500, 4)].into_iter(), 7000);
        let (b, total) = s.service_seconds();
        assert_eq!((b[0].1, b[1].1), (3, 4));
        assert_eq!(s.hits.load(Ordering::Relaxed), 7);
        assert_eq!(s.lost.load(Ordering::Relaxed), 2);
        assert!((total - 7e-6).abs() < 1e-12, "{total}");
    }

    #[test]
    fn service_times_land_in_the_least_bucket_that_holds_them() {
        let s = LiveStats::default();
        for ns in [0, 1000, 1001, 2000, 2001, 1_000_000, u64::MAX / 4] {
            s.served(ns);
        }
        let (b, _) = s.service_seconds();
        let n = |i: usize| b[i].1;
        // <= 1 us twice, <= 2 us twice, <= 4 us once, 1 ms in <= 1024 us.
        assert_eq!((n(0), n(1), n(2), n(10)), (2, 2, 1, 1));
        assert_eq!(b[SERVICE_BUCKETS - 1], (f64::INFINITY, 1));
        assert_eq!(b[3].0, 8e-6);
    }
}
