//! `--metrics ADDR:PORT` (`run`, `attach`): the program's maps and
//! vmprobe's health served at `/metrics` for Prometheus, through
//! `metrics-export`, from a thread that lives as long as the guests are
//! served. Each scrape copies the maps under the runtime's lock and lets it
//! go before anything is encoded or written.

use anyhow::{Context, Result};
use metrics_export::maps::LabelNames;
use metrics_export::{Family, Server, Snapshot, Value};
use probe_runtime::Runtime;
use std::net::SocketAddr;
use std::sync::Mutex;

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

impl Metrics {
    /// Serves `/metrics` on a thread of its own while `serving` runs.
    pub fn serve_while<R>(
        &self,
        runtime: &Mutex<Runtime>,
        health: &(dyn Fn(&mut Vec<Family>) + Sync),
        serving: impl FnOnce() -> R,
    ) -> R {
        let source = || {
            // The copy is all that happens under the lock.
            let store = probe_engine::serve::lock(runtime).maps().clone();
            let mut families = metrics_export::maps::families(&store, &self.labels);
            health(&mut families);
            families.push(build_info());
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
