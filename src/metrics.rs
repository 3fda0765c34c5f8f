//! `--metrics ADDR:PORT` (`run`, `attach`): the program's maps and
//! vmprobe's health served at `/metrics` for Prometheus, through
//! `metrics-export`, from a thread that lives as long as the guests are
//! served. Each scrape copies the maps under the runtime's lock and lets it
//! go before anything is encoded or written.

use anyhow::{Context, Result};
use metrics_export::maps::LabelNames;
use metrics_export::{Family, Server, Snapshot, Value};
use probe_engine::{LiveMaps, LiveStats};
use probe_runtime::Runtime;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

/// clap's parser for `--metrics`: `PORT` (loopback) or `ADDR:PORT`.
pub fn parse_addr(text: &str) -> Result<SocketAddr, String> {
    Server::parse_addr(text).map_err(|e| e.to_string())
}

/// A bound `/metrics` listener and how the program's keys are labelled.
pub struct Metrics {
    server: Server,
    /// The current program's (a service's reload changes it).
    labels: Mutex<LabelNames>,
}

/// Binds `--metrics` (before anything boots: a port in use is an error
/// then). Only an address given explicitly can be other than loopback, and
/// it is said on stderr even with `-q`.
pub fn bind(addr: Option<SocketAddr>, program: &probe_lang::Program) -> Result<Option<Metrics>> {
    let Some(addr) = addr else { return Ok(None) };
    let server = Server::bind(addr).context("--metrics")?;
    let at = server.local_addr();
    if at.ip().is_loopback() {
        progress!("vmprobe: metrics at http://{at}/metrics");
    } else {
        eprintln!(
            "vmprobe: metrics at http://{at}/metrics, not loopback: whoever reaches it reads the maps"
        );
    }
    Ok(Some(Metrics {
        server,
        labels: Mutex::new(label_names(program)),
    }))
}

/// `@m[guest, $fd, arg0 + 1]`: labels `guest`, `fd`, `key2`.
fn label_names(program: &probe_lang::Program) -> LabelNames {
    program
        .map_key_names()
        .into_iter()
        .map(|(map, keys)| {
            let names = keys
                .into_iter()
                .enumerate()
                .map(|(i, n)| n.unwrap_or_else(|| format!("key{i}")))
                .collect();
            (map, names)
        })
        .collect()
}

/// What a guest's backend counts live, taken before the guests are
/// handed to the serve loop, and again from each backend a service
/// attaches later ([`add_backend`]).
pub struct GuestLive {
    name: String,
    /// One per life of the guest (service mode: per attach), summed, so
    /// that its counters go on across a restart.
    stats: Vec<Arc<LiveStats>>,
    maps: Option<Arc<LiveMaps>>,
}

pub fn guest_live(guests: &[probe_engine::serve::Guest]) -> Mutex<Vec<GuestLive>> {
    Mutex::new(
        guests
            .iter()
            .map(|g| GuestLive {
                name: g.name.clone(),
                stats: g.backend.live_stats().into_iter().collect(),
                maps: g.backend.live_maps(),
            })
            .collect(),
    )
}

/// A guest's new backend (attached again, or found in a watched
/// directory): its counters add to the guest's earlier ones.
pub fn add_backend(live: &Mutex<Vec<GuestLive>>, name: &str, backend: &dyn probe_engine::Backend) {
    let mut live = live.lock().unwrap_or_else(|e| e.into_inner());
    match live.iter_mut().find(|g| g.name == name) {
        Some(g) => {
            g.stats.extend(backend.live_stats());
            // The earlier backend's maps are merged into the runtime when
            // it is finished; only the new one's are outside it.
            g.maps = backend.live_maps();
        }
        None => live.push(GuestLive {
            name: name.to_string(),
            stats: backend.live_stats().into_iter().collect(),
            maps: backend.live_maps(),
        }),
    }
}

impl Metrics {
    /// Labels the maps of `program`, the one a service reloaded.
    pub fn relabel(&self, program: &probe_lang::Program) {
        *self.labels.lock().unwrap_or_else(|e| e.into_inner()) = label_names(program);
    }

    /// Serves `/metrics` on a thread of its own while `serving` runs.
    pub fn serve_while<R>(
        &self,
        runtime: &Mutex<Runtime>,
        guests: &Mutex<Vec<GuestLive>>,
        otlp: Option<&crate::otlp::Otlp>,
        serving: impl FnOnce() -> R,
    ) -> R {
        let source = || {
            // The copies are all that happens under the lock: the maps, and
            // those inside QEMU as last copied (a backend merges its maps
            // into the runtime and withdraws its copy with the runtime
            // locked, so each count is seen once).
            let (mut store, errors, inside) = {
                let rt = probe_engine::serve::lock(runtime);
                let guests = guests.lock().unwrap_or_else(|e| e.into_inner());
                let inside: Vec<_> = guests
                    .iter()
                    .filter_map(|g| g.maps.as_ref().and_then(|m| m.get()))
                    .collect();
                (rt.maps().clone(), rt.errors(), inside)
            };
            for m in &inside {
                store.merge(m);
            }
            let guests = guests.lock().unwrap_or_else(|e| e.into_inner());
            let labels = self.labels.lock().unwrap_or_else(|e| e.into_inner());
            let mut families = metrics_export::maps::families(&store, &labels);
            drop(labels);
            families.extend(health(&guests, errors.iter().map(|e| e.2).sum(), otlp));
            Snapshot { families }
        };
        let stopper = self.server.stopper();
        std::thread::scope(|s| {
            let thread = std::thread::Builder::new()
                .name("metrics".into())
                .spawn_scoped(s, || self.server.serve(&source));
            if let Err(e) = &thread {
                eprintln!("vmprobe: warning: no metrics thread: {e}");
            }
            let r = serving();
            stopper.stop();
            r
        })
    }
}

/// A service-time histogram: (upper bound, stops) per bucket, and the sum.
type ServiceSeconds = (Vec<(f64, u64)>, f64);

/// vmprobe's own families, all named `vmprobe_*`.
fn health(guests: &[GuestLive], errors: u64, otlp: Option<&crate::otlp::Otlp>) -> Vec<Family> {
    let guest = |g: &GuestLive| vec![("guest".to_string(), g.name.clone())];
    // Each guest's lives summed: hits, and the service-time histogram
    // bucket by bucket.
    let counted: Vec<(&GuestLive, u64, u64, ServiceSeconds)> = guests
        .iter()
        .filter(|g| !g.stats.is_empty())
        .map(|g| {
            let hits = g.stats.iter().map(|s| s.hits.load(Ordering::Relaxed)).sum();
            let lost = g.stats.iter().map(|s| s.lost.load(Ordering::Relaxed)).sum();
            let mut lives = g.stats.iter().map(|s| s.service_seconds());
            let mut total = lives.next().unwrap_or_default();
            for (buckets, sum) in lives {
                for (t, b) in total.0.iter_mut().zip(buckets) {
                    t.1 += b.1;
                }
                total.1 += sum;
            }
            (g, hits, lost, total)
        })
        .collect();
    let mut out = vec![
        build_info(),
        Family {
            name: "vmprobe_handler_errors".into(),
            help:
                "Handler errors (step budget, division by zero, unreadable memory) run in vmprobe"
                    .into(),
            samples: vec![(Vec::new(), Value::Counter(errors))],
        },
        Family {
            name: "vmprobe_hits".into(),
            help: "Probe hits (entries, returns, watchpoints, timers, samples), through the stub \
                   or inside QEMU (as last copied with the maps)"
                .into(),
            samples: counted
                .iter()
                .map(|(g, hits, _, _)| (guest(g), Value::Counter(*hits)))
                .collect(),
        },
        Family {
            name: "vmprobe_service_seconds".into(),
            help: "Time to serve a hit: through the stub from the guest's stop to its resume, \
                   inside QEMU the handler's time in the vCPU thread"
                .into(),
            samples: counted
                .iter()
                .map(|(g, _, _, (buckets, sum))| {
                    (
                        guest(g),
                        Value::Histogram {
                            buckets: buckets.clone(),
                            sum: *sum,
                        },
                    )
                })
                .collect(),
        },
        Family {
            name: "vmprobe_lost_events".into(),
            help: "Events lost before vmprobe got them (inside QEMU: a vCPU's ring full; \
                   none through the stub, where the guest waits)"
                .into(),
            samples: counted
                .iter()
                .map(|(g, _, lost, _)| (guest(g), Value::Counter(*lost)))
                .collect(),
        },
    ];
    if let Some(o) = otlp {
        let s = o.stats();
        out.push(Family {
            name: "vmprobe_otlp_dropped_events".into(),
            help: "--otlp events dropped (queue full, a failed request)".into(),
            samples: vec![(Vec::new(), Value::Counter(s.dropped))],
        });
        let signal = |n: &str| vec![("signal".to_string(), n.to_string())];
        out.push(Family {
            name: "vmprobe_otlp_sent".into(),
            help: "--otlp log records and spans sent".into(),
            samples: vec![
                (signal("logs"), Value::Counter(s.logs_sent)),
                (signal("spans"), Value::Counter(s.spans_sent)),
            ],
        });
    }
    out
}

fn build_info() -> Family {
    Family {
        name: "vmprobe_build".into(),
        help: "vmprobe's version".into(),
        samples: vec![(
            vec![("version".into(), env!("CARGO_PKG_VERSION").into())],
            Value::Info,
        )],
    }
}
