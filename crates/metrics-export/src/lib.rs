//! Probe maps and vmprobe's own health as Prometheus metrics, served at
//! `/metrics` from a background thread.
//!
//! The text is `prometheus-client`'s (the OpenMetrics reference crate for
//! Rust): OpenMetrics 1.0 text by default, Prometheus' 0.0.4 text when a
//! scraper's `Accept` header asks for `text/plain` and not OpenMetrics.
//! What is exposed is a [`Snapshot`] of metric families the caller builds
//! on each scrape ([`maps::families`] turns a probe-runtime `MapStore` into
//! families); this crate holds no state of its own between scrapes and
//! knows nothing of the CLI, backends or guests.
//!
//! Invariant: the caller's source is called once per scrape and is the only
//! thing run under the caller's locks; encoding and HTTP happen after it
//! returned, on the server's thread.

#![forbid(unsafe_code)]
pub mod maps;
mod server;

pub use server::{Server, Stopper};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("'{0}' is not ADDR:PORT (e.g. 127.0.0.1:9464 or [::1]:9464)")]
    BadAddress(String),
    #[error("cannot listen on {addr}: {why}")]
    Bind { addr: String, why: String },
    #[error("starting the metrics thread: {0}")]
    Thread(std::io::Error),
}

/// Labels of one sample, in order: (name, value).
pub type Labels = Vec<(String, String)>;

/// One sample's value.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Counter(u64),
    Gauge(i64),
    GaugeF(f64),
    /// Per-bucket counts (not cumulative) with each bucket's inclusive
    /// upper bound, the last one `+Inf`; `sum` is NaN where it is not
    /// known (bpftrace's `hist()` keeps no sum).
    Histogram {
        buckets: Vec<(f64, u64)>,
        sum: f64,
    },
    /// `info`: a constant 1 carrying its labels (`build_info`).
    Info,
}

impl Value {
    fn metric_type(&self) -> MetricType {
        match self {
            Value::Counter(_) => MetricType::Counter,
            Value::Gauge(_) | Value::GaugeF(_) => MetricType::Gauge,
            Value::Histogram { .. } => MetricType::Histogram,
            Value::Info => MetricType::Info,
        }
    }
}

/// A metric family: its name (without the `_total`, `_bucket` or `_info`
/// suffixes the format adds), help text and samples, all of one type.
#[derive(Clone, Debug, PartialEq)]
pub struct Family {
    pub name: String,
    pub help: String,
    pub samples: Vec<(Labels, Value)>,
}

/// Everything one scrape exposes.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Snapshot {
    pub families: Vec<Family>,
}

/// The text formats a scraper may ask for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    OpenMetrics,
    Prometheus004,
}

impl Format {
    /// What an `Accept` header asks for: OpenMetrics unless it names
    /// `text/plain` without OpenMetrics (Prometheus itself asks for both,
    /// OpenMetrics first).
    pub fn negotiate(accept: Option<&str>) -> Format {
        match accept {
            Some(a) if a.contains("text/plain") && !a.contains("application/openmetrics-text") => {
                Format::Prometheus004
            }
            _ => Format::OpenMetrics,
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
            Format::Prometheus004 => "text/plain; version=0.0.4; charset=utf-8",
        }
    }
}

/// A metric name as OpenMetrics allows it (`[a-zA-Z_:][a-zA-Z0-9_:]*`):
/// other characters become `_`, a leading digit gets a `_` before it.
pub fn metric_name(raw: &str) -> String {
    let mut out: String = raw
        .chars()
        .map(|c| match c {
            'a'..='z' | 'A'..='Z' | '0'..='9' | '_' | ':' => c,
            _ => '_',
        })
        .collect();
    if out.is_empty() || out.starts_with(|c: char| c.is_ascii_digit()) {
        out.insert(0, '_');
    }
    out
}

/// A label name as OpenMetrics allows it (`[a-zA-Z_][a-zA-Z0-9_]*`, and
/// not starting with `__`, which is reserved).
pub fn label_name(raw: &str) -> String {
    let mut out = metric_name(raw).replace(':', "_");
    while out.starts_with("__") {
        out.remove(0);
    }
    out
}

impl Snapshot {
    /// The snapshot as text in `format`.
    pub fn encode(self, format: Format) -> String {
        let mut registry = prometheus_client::registry::Registry::default();
        registry.register_collector(Box::new(SnapshotCollector(self)));
        let mut out = String::new();
        let r = match format {
            Format::OpenMetrics => prometheus_client::encoding::text::encode(&mut out, &registry),
            Format::Prometheus004 => {
                prometheus_client::encoding::prometheus_text::encode(&mut out, &registry)
            }
        };
        // Writing into a String cannot fail; an encoder error is a bug in
        // what was handed to it, and a partial text is better than none.
        debug_assert!(r.is_ok(), "encoding metrics: {r:?}");
        out
    }
}

#[derive(Debug)]
struct SnapshotCollector(Snapshot);

impl Collector for SnapshotCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        for f in &self.0.families {
            let Some((_, first)) = f.samples.first() else {
                continue;
            };
            let ty = first.metric_type();
            let mut family = encoder.encode_descriptor(&f.name, &f.help, None, ty)?;
            for (labels, value) in &f.samples {
                if value.metric_type() != ty {
                    continue;
                }
                match value {
                    Value::Info => family.encode_info(labels)?,
                    v => encode_value(v, &mut family.encode_family(labels)?)?,
                }
            }
        }
        Ok(())
    }
}

fn encode_value(v: &Value, e: &mut MetricEncoder<'_>) -> Result<(), std::fmt::Error> {
    match v {
        Value::Counter(v) => e.encode_counter::<NoLabelSet, _, u64>(v, None),
        Value::Gauge(v) => e.encode_gauge(v),
        Value::GaugeF(v) => e.encode_gauge(v),
        Value::Histogram { buckets, sum } => {
            let count = buckets.iter().map(|b| b.1).sum();
            e.encode_histogram::<NoLabelSet>(*sum, count, buckets, None)
        }
        Value::Info => Ok(()),
    }
}

#[cfg(test)]
mod tests;
