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
    labels: LabelNames,
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
        labels: label_names(program),
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
/// handed to the serve loop.
pub struct GuestLive {
    name: String,
    stats: Option<Arc<LiveStats>>,
    maps: Option<Arc<LiveMaps>>,
}

pub fn guest_live(guests: &[probe_engine::serve::Guest]) -> Vec<GuestLive> {
    guests
        .iter()
        .map(|g| GuestLive {
            name: g.name.clone(),
            stats: g.backend.live_stats(),
            maps: g.backend.live_maps(),
        })
        .collect()
}

impl Metrics {
    /// Serves `/metrics` on a thread of its own while `serving` runs.
    pub fn serve_while<R>(
        &self,
        runtime: &Mutex<Runtime>,
        guests: &[GuestLive],
        otlp: Option<&crate::otlp::Otlp>,
        serving: impl FnOnce() -> R,
    ) -> R {
        let source = || {
            // The copy is all that happens under the lock.
            let (mut store, errors) = {
                let rt = probe_engine::serve::lock(runtime);
                (rt.maps().clone(), rt.errors())
            };
            // Maps inside QEMU, as last copied, merged as at detach.
            for g in guests {
                if let Some(m) = g.maps.as_ref().and_then(|m| m.get()) {
                    store.merge(&m);
                }
            }
            let mut families = metrics_export::maps::families(&store, &self.labels);
            families.extend(health(guests, errors.iter().map(|e| e.2).sum(), otlp));
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

/// vmprobe's own families, all named `vmprobe_*`.
fn health(guests: &[GuestLive], errors: u64, otlp: Option<&crate::otlp::Otlp>) -> Vec<Family> {
    let guest = |g: &GuestLive| vec![("guest".to_string(), g.name.clone())];
    let counted: Vec<(&GuestLive, &LiveStats)> = guests
        .iter()
        .filter_map(|g| Some((g, g.stats.as_deref()?)))
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
            help: "Probe hits served through the stub (entries, returns, watchpoints, timers)"
                .into(),
            samples: counted
                .iter()
                .map(|(g, s)| (guest(g), Value::Counter(s.hits.load(Ordering::Relaxed))))
                .collect(),
        },
        Family {
            name: "vmprobe_service_seconds".into(),
            help: "Time from a guest's stop to its resume, per stop served through the stub".into(),
            samples: counted
                .iter()
                .map(|(g, s)| {
                    let (buckets, sum) = s.service_seconds();
                    (guest(g), Value::Histogram { buckets, sum })
                })
                .collect(),
        },
        Family {
            name: "vmprobe_lost_events".into(),
            help: "Events lost before vmprobe got them (none through the stub: the guest waits)"
                .into(),
            samples: counted
                .iter()
                .map(|(g, _)| (guest(g), Value::Counter(0)))
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
