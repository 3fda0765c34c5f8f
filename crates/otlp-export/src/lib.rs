//! Probe events as OpenTelemetry log records and spans, sent to an OTLP/HTTP
//! receiver (`POST {endpoint}/v1/logs` and `/v1/traces`, protobuf bodies).
//!
//! Why not the `opentelemetry` SDK and its OTLP exporter: vmprobe is
//! synchronous (a thread per guest, no async runtime), and the SDK's
//! exporters want tokio or their own runtime threads plus a global provider
//! state. What vmprobe needs is small: the official message definitions
//! (`opentelemetry-proto`'s prost types, without tonic), a blocking HTTP
//! client (`ureq`) and a queue. Knows nothing of probes or the CLI.
//!
//! Never blocks the caller (a guest's serving thread, or a vCPU stopped at a
//! breakpoint): events go into a bounded queue that one background thread
//! drains in batches. When the queue is full, or a batch cannot be sent (no
//! receiver, an HTTP error), its events are dropped and counted; the first
//! such failure is reported once through [`Options::on_first_failure`].
//!
//! Time: events carry host CLOCK_MONOTONIC stamps (vmprobe's one clock,
//! `host-clock`); OTLP wants Unix-epoch nanoseconds. The offset between the
//! two is measured once when the exporter starts and applied to every
//! stamp, so the durations of spans are exactly the monotonic differences
//! (a later wall-clock step does not move events already converted, nor
//! those after it).

#![forbid(unsafe_code)]
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, span::SpanKind};
use prost::Message;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The protobuf messages, for receivers (tests) that decode what is sent.
pub use opentelemetry_proto::tonic as proto;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("'{0}' is not an OTLP/HTTP endpoint (e.g. http://127.0.0.1:4318): {1}")]
    BadEndpoint(String, String),
    #[error("POST {url}: {why}")]
    Send { url: String, why: String },
    #[error("the export queue is full ({0} events)")]
    QueueFull(usize),
    #[error("starting the OTLP export thread: {0}")]
    Thread(std::io::Error),
}

/// An OTLP/HTTP receiver's base URL (a collector's is `http://HOST:4318`);
/// the signal paths `/v1/logs` and `/v1/traces` are appended to it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    base: String,
}

impl Endpoint {
    /// Checks the URL: `http://HOST[:PORT][/PREFIX]`, nothing else.
    pub fn parse(text: &str) -> Result<Endpoint, Error> {
        let bad = |why: &str| Error::BadEndpoint(text.to_string(), why.to_string());
        let uri: ureq::http::Uri = text.parse().map_err(|e| bad(&format!("{e}")))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some("https") => {
                return Err(bad(
                    "https is not supported (no TLS built in); use a collector's plain http receiver, e.g. on loopback",
                ));
            }
            Some(other) => return Err(bad(&format!("scheme {other}: only http is supported"))),
            None => return Err(bad("no scheme: it starts with http://")),
        }
        if uri.host().is_none_or(str::is_empty) {
            return Err(bad("no host"));
        }
        if uri.query().is_some() {
            return Err(bad("a query string is not part of an OTLP endpoint"));
        }
        Ok(Endpoint {
            base: text.trim_end_matches('/').to_string(),
        })
    }

    pub fn logs_url(&self) -> String {
        format!("{}/v1/logs", self.base)
    }

    pub fn traces_url(&self) -> String {
        format!("{}/v1/traces", self.base)
    }
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.base)
    }
}

/// An attribute value (OTLP's `AnyValue`, the kinds probes produce).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AttrValue {
    Int(i64),
    Str(String),
    Bytes(Vec<u8>),
}

pub type Attributes = Vec<(String, AttrValue)>;

/// One of the resources given to [`Exporter::start`] (a guest, in vmprobe).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResourceId(pub usize);

enum Item {
    Log {
        resource: ResourceId,
        ts_ns: u64,
        body: String,
        attributes: Attributes,
    },
    Span {
        resource: ResourceId,
        name: String,
        start_ns: u64,
        end_ns: u64,
        attributes: Attributes,
    },
}

impl Item {
    fn resource(&self) -> ResourceId {
        match self {
            Item::Log { resource, .. } | Item::Span { resource, .. } => *resource,
        }
    }
}

pub struct Options {
    /// Events held at most while waiting to be sent.
    pub queue: usize,
    /// Events sent at most per request.
    pub batch: usize,
    /// How long one request may take.
    pub timeout: Duration,
    /// Told once, at the first event dropped (queue full, a failed send).
    pub on_first_failure: Box<dyn Fn(&Error) + Send + Sync>,
    /// `service.version` and the instrumentation scope's version.
    pub version: String,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            queue: 16_384,
            batch: 1024,
            timeout: Duration::from_secs(3),
            on_first_failure: Box::new(|_| {}),
            version: String::new(),
        }
    }
}

/// What was exported, and what was lost.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub logs_sent: u64,
    pub spans_sent: u64,
    /// Events dropped: queue full, a failed request, or still queued when
    /// the exporter was finished and its time was up.
    pub dropped: u64,
}

#[derive(Default)]
struct Shared {
    logs_sent: AtomicU64,
    spans_sent: AtomicU64,
    dropped: AtomicU64,
    failed_once: AtomicBool,
    closing: AtomicBool,
    /// When the last events must have gone out, once closing.
    give_up_at: Mutex<Option<Instant>>,
}

/// Hands events to the exporter's queue; cheap to clone, never blocks.
#[derive(Clone)]
pub struct Handle {
    tx: SyncSender<Item>,
    shared: Arc<Shared>,
    queue: usize,
    on_failure: Arc<dyn Fn(&Error) + Send + Sync>,
}

impl Handle {
    /// A log record at host CLOCK_MONOTONIC `ts_ns`.
    pub fn log(&self, resource: ResourceId, ts_ns: u64, body: String, attributes: Attributes) {
        self.push(Item::Log {
            resource,
            ts_ns,
            body,
            attributes,
        });
    }

    /// A span from `start_ns` to `end_ns` (host CLOCK_MONOTONIC).
    pub fn span(
        &self,
        resource: ResourceId,
        name: String,
        start_ns: u64,
        end_ns: u64,
        attributes: Attributes,
    ) {
        self.push(Item::Span {
            resource,
            name,
            start_ns,
            end_ns,
            attributes,
        });
    }

    /// The events dropped so far.
    pub fn dropped(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }

    fn push(&self, item: Item) {
        if self.shared.closing.load(Ordering::Relaxed) {
            self.shared.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        match self.tx.try_send(item) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.shared.dropped.fetch_add(1, Ordering::Relaxed);
                fail_once(
                    &self.shared,
                    &*self.on_failure,
                    &Error::QueueFull(self.queue),
                );
            }
        }
    }
}

fn fail_once(shared: &Shared, on_failure: &(dyn Fn(&Error) + Send + Sync), e: &Error) {
    if !shared.failed_once.swap(true, Ordering::Relaxed) {
        on_failure(e);
    }
}

/// The export thread and its queue.
pub struct Exporter {
    handle: Handle,
    thread: std::thread::JoinHandle<()>,
}

impl Exporter {
    /// Starts the export thread. `common` goes into every resource (host,
    /// service); `resources` are the sources' own attributes (one per
    /// guest), numbered as [`ResourceId`]s in that order.
    pub fn start(
        endpoint: Endpoint,
        common: Attributes,
        resources: Vec<Attributes>,
        options: Options,
    ) -> Result<Exporter, Error> {
        let (tx, rx) = sync_channel(options.queue.max(1));
        let shared = Arc::new(Shared::default());
        let on_failure: Arc<dyn Fn(&Error) + Send + Sync> = Arc::from(options.on_first_failure);
        let resources = resources
            .into_iter()
            .map(|own| Resource {
                attributes: common.iter().chain(&own).map(key_value).collect(),
                ..Default::default()
            })
            .collect();
        let worker = Worker {
            endpoint,
            agent: ureq::Agent::new_with_config(
                ureq::Agent::config_builder()
                    .timeout_global(Some(options.timeout))
                    .build(),
            ),
            clock: host_clock::RealtimeToMonotonic::measure(),
            resources,
            scope: InstrumentationScope {
                name: "vmprobe".into(),
                version: options.version,
                ..Default::default()
            },
            batch: options.batch.max(1),
            shared: shared.clone(),
            on_failure: on_failure.clone(),
            next_id: 0,
            id_seed: (host_clock::realtime_now_ns() as u64) ^ u64::from(std::process::id()) << 32,
        };
        let thread = std::thread::Builder::new()
            .name("otlp-export".into())
            .spawn(move || worker.run(rx))
            .map_err(Error::Thread)?;
        Ok(Exporter {
            handle: Handle {
                tx,
                shared,
                queue: options.queue.max(1),
                on_failure,
            },
            thread,
        })
    }

    pub fn handle(&self) -> Handle {
        self.handle.clone()
    }

    /// What was sent and dropped so far, while the export goes on.
    pub fn stats(&self) -> Stats {
        let shared = &self.handle.shared;
        Stats {
            logs_sent: shared.logs_sent.load(Ordering::Relaxed),
            spans_sent: shared.spans_sent.load(Ordering::Relaxed),
            dropped: shared.dropped.load(Ordering::Relaxed),
        }
    }

    /// Sends what is queued, for at most `grace`, then stops; what could not
    /// be sent by then is counted as dropped.
    pub fn finish(self, grace: Duration) -> Stats {
        let shared = self.handle.shared.clone();
        *shared.give_up_at.lock().unwrap_or_else(|e| e.into_inner()) =
            Instant::now().checked_add(grace);
        shared.closing.store(true, Ordering::Relaxed);
        drop(self.handle);
        let _ = self.thread.join();
        Stats {
            logs_sent: shared.logs_sent.load(Ordering::Relaxed),
            spans_sent: shared.spans_sent.load(Ordering::Relaxed),
            dropped: shared.dropped.load(Ordering::Relaxed),
        }
    }
}

/// How long the thread waits for more events before sending a batch that
/// is not full.
const LINGER: Duration = Duration::from_millis(100);

struct Worker {
    endpoint: Endpoint,
    agent: ureq::Agent,
    clock: host_clock::RealtimeToMonotonic,
    resources: Vec<Resource>,
    scope: InstrumentationScope,
    batch: usize,
    shared: Arc<Shared>,
    on_failure: Arc<dyn Fn(&Error) + Send + Sync>,
    next_id: u64,
    id_seed: u64,
}

impl Worker {
    fn run(mut self, rx: Receiver<Item>) {
        let mut batch = Vec::with_capacity(self.batch);
        loop {
            let closing = self.shared.closing.load(Ordering::Relaxed);
            match rx.recv_timeout(LINGER) {
                Ok(item) => batch.push(item),
                Err(RecvTimeoutError::Timeout) if !closing => continue,
                // Closing and nothing left (or every handle gone).
                Err(_) => break,
            }
            let linger_until = Instant::now() + LINGER;
            while batch.len() < self.batch {
                let left = linger_until.saturating_duration_since(Instant::now());
                match rx.recv_timeout(left) {
                    Ok(item) => batch.push(item),
                    Err(_) => break,
                }
            }
            self.send(std::mem::take(&mut batch));
        }
    }

    fn give_up(&self) -> bool {
        let at = *self
            .shared
            .give_up_at
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        at.is_some_and(|t| Instant::now() >= t)
    }

    fn send(&mut self, items: Vec<Item>) {
        if self.give_up() {
            self.shared
                .dropped
                .fetch_add(items.len() as u64, Ordering::Relaxed);
            return;
        }
        let (logs, spans) = self.encode(items);
        for (url, body, n, sent) in [
            (
                self.endpoint.logs_url(),
                logs.0,
                logs.1,
                &self.shared.logs_sent,
            ),
            (
                self.endpoint.traces_url(),
                spans.0,
                spans.1,
                &self.shared.spans_sent,
            ),
        ] {
            if n == 0 {
                continue;
            }
            let result = self
                .agent
                .post(&url)
                .header("Content-Type", "application/x-protobuf")
                .send(&body[..]);
            match result {
                Ok(_) => {
                    sent.fetch_add(n, Ordering::Relaxed);
                }
                Err(e) => {
                    self.shared.dropped.fetch_add(n, Ordering::Relaxed);
                    fail_once(
                        &self.shared,
                        &*self.on_failure,
                        &Error::Send {
                            url,
                            why: e.to_string(),
                        },
                    );
                }
            }
        }
    }

    /// The batch as one logs request and one traces request (protobuf
    /// bytes, and how many events each holds), grouped by resource.
    fn encode(&mut self, items: Vec<Item>) -> ((Vec<u8>, u64), (Vec<u8>, u64)) {
        let observed = host_clock::realtime_now_ns().max(0) as u64;
        let mut logs: Vec<Vec<LogRecord>> = vec![Vec::new(); self.resources.len()];
        let mut spans: Vec<Vec<Span>> = vec![Vec::new(); self.resources.len()];
        for item in items {
            let r = item.resource().0;
            if r >= self.resources.len() {
                self.shared.dropped.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            match item {
                Item::Log {
                    ts_ns,
                    body,
                    attributes,
                    ..
                } => logs[r].push(LogRecord {
                    time_unix_nano: self.clock.monotonic_to_realtime_ns(ts_ns),
                    observed_time_unix_nano: observed,
                    body: Some(any(AttrValue::Str(body))),
                    attributes: attributes.iter().map(key_value).collect(),
                    ..Default::default()
                }),
                Item::Span {
                    name,
                    start_ns,
                    end_ns,
                    attributes,
                    ..
                } => {
                    // Each call is a trace of its own (nothing links calls).
                    self.next_id += 1;
                    let mut trace_id = self.id_seed.to_be_bytes().to_vec();
                    trace_id.extend_from_slice(&self.next_id.to_be_bytes());
                    spans[r].push(Span {
                        trace_id,
                        span_id: self.next_id.to_be_bytes().to_vec(),
                        name,
                        kind: SpanKind::Internal as i32,
                        start_time_unix_nano: self.clock.monotonic_to_realtime_ns(start_ns),
                        end_time_unix_nano: self.clock.monotonic_to_realtime_ns(end_ns),
                        attributes: attributes.iter().map(key_value).collect(),
                        ..Default::default()
                    });
                }
            }
        }
        let (n_logs, n_spans) = (count(&logs), count(&spans));
        let logs = ExportLogsServiceRequest {
            resource_logs: logs
                .into_iter()
                .zip(&self.resources)
                .filter(|(l, _)| !l.is_empty())
                .map(|(log_records, resource)| ResourceLogs {
                    resource: Some(resource.clone()),
                    scope_logs: vec![ScopeLogs {
                        scope: Some(self.scope.clone()),
                        log_records,
                        ..Default::default()
                    }],
                    ..Default::default()
                })
                .collect(),
        };
        let spans = ExportTraceServiceRequest {
            resource_spans: spans
                .into_iter()
                .zip(&self.resources)
                .filter(|(s, _)| !s.is_empty())
                .map(|(spans, resource)| ResourceSpans {
                    resource: Some(resource.clone()),
                    scope_spans: vec![ScopeSpans {
                        scope: Some(self.scope.clone()),
                        spans,
                        ..Default::default()
                    }],
                    ..Default::default()
                })
                .collect(),
        };
        (
            (logs.encode_to_vec(), n_logs),
            (spans.encode_to_vec(), n_spans),
        )
    }
}

fn count<T>(groups: &[Vec<T>]) -> u64 {
    groups.iter().map(|g| g.len() as u64).sum()
}

fn any(v: AttrValue) -> AnyValue {
    AnyValue {
        value: Some(match v {
            AttrValue::Int(i) => any_value::Value::IntValue(i),
            AttrValue::Str(s) => any_value::Value::StringValue(s),
            AttrValue::Bytes(b) => any_value::Value::BytesValue(b),
        }),
    }
}

fn key_value((key, value): &(String, AttrValue)) -> KeyValue {
    KeyValue {
        key: key.clone(),
        value: Some(any(value.clone())),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests;
