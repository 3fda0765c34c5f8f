//! `--otlp URL`: a run's printf output as OpenTelemetry log records and its
//! kprobe/kretprobe calls as spans, through `otlp-export`. Printf events
//! are taken where they are rendered (an [`Output`] in front of the
//! printer); calls come through the recording path (`EventSink`), which
//! pairs each return with its entry as `vmprobe record` does for Perfetto
//! slices.

use anyhow::{Context, Result};
use otlp_export::{AttrValue, Attributes, Endpoint, Exporter, Handle, Options, ResourceId};
use probe_engine::{EventSink, RecordedEvent};
use probe_lang::Executable;
use probe_runtime::{Origin, Output, OutputEvent};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use trace_formats::Value as FieldValue;

/// `--otlp`: checked by clap, so a bad URL is an error before anything boots.
pub fn parse_endpoint(text: &str) -> Result<Endpoint, String> {
    Endpoint::parse(text).map_err(|e| e.to_string())
}

/// How long the end of a run waits for the last events to go out.
const FINISH_GRACE: Duration = Duration::from_secs(5);

/// Entry arguments held for calls awaiting their return, at most.
const MAX_PENDING_CALLS: usize = 65_536;

/// What a run exports to, set up before the guests are served.
pub struct OtlpPlan {
    pub endpoint: Endpoint,
    /// Each guest's kernel release (`os.version`), where known.
    pub releases: HashMap<String, String>,
}

/// A started export: its thread, and which resource each guest is.
pub struct Otlp {
    exporter: Exporter,
    resources: Arc<Resources>,
}

/// Each guest's resource, and the host's, for what no guest printed
/// (BEGIN, END, `interval`).
struct Resources {
    guests: HashMap<String, ResourceId>,
    host: ResourceId,
}

impl Resources {
    fn of(&self, guest: &str) -> ResourceId {
        self.guests.get(guest).copied().unwrap_or(self.host)
    }
}

/// The guest attribute of an event printed in a guest.
fn guest_attr(attrs: &mut Attributes, guest: &str) {
    if !guest.is_empty() {
        attrs.push(("vmprobe.guest".into(), str_attr(guest)));
    }
}

impl Otlp {
    /// One resource per guest: `host.name` (this hypervisor host),
    /// `service.name` `vmprobe`, the VM's name and its kernel release.
    pub fn start(plan: &OtlpPlan, guests: &[String]) -> Result<Otlp> {
        let host = rustix::system::uname()
            .nodename()
            .to_string_lossy()
            .into_owned();
        let s = |v: &str| AttrValue::Str(v.to_string());
        let common: Attributes = vec![
            ("host.name".into(), s(&host)),
            ("service.name".into(), s("vmprobe")),
            ("service.version".into(), s(env!("CARGO_PKG_VERSION"))),
        ];
        let mut resources: Vec<Attributes> = guests
            .iter()
            .map(|g| {
                let mut attrs = vec![("vmprobe.guest".to_string(), s(g))];
                if let Some(r) = plan.releases.get(g) {
                    attrs.push(("os.type".into(), s("linux")));
                    attrs.push(("os.version".into(), s(r)));
                }
                attrs
            })
            .collect();
        // Last, the host's: the common attributes alone.
        resources.push(Vec::new());
        let endpoint = plan.endpoint.clone();
        let options = Options {
            on_first_failure: Box::new(move |e| {
                eprintln!(
                    "vmprobe: warning: OTLP export to {endpoint}: {e}; events are dropped and counted (--stats)"
                );
            }),
            version: env!("CARGO_PKG_VERSION").into(),
            ..Options::default()
        };
        let exporter =
            Exporter::start(plan.endpoint.clone(), common, resources, options).context("--otlp")?;
        let resources = Resources {
            guests: guests
                .iter()
                .enumerate()
                .map(|(i, g)| (g.clone(), ResourceId(i)))
                .collect(),
            host: ResourceId(guests.len()),
        };
        Ok(Otlp {
            exporter,
            resources: Arc::new(resources),
        })
    }

    /// Printf output goes to `inner` and, as log records, to the exporter.
    pub fn output(&self, exec: Arc<Executable>, inner: Box<dyn Output>) -> Box<dyn Output> {
        Box::new(LogOutput {
            inner,
            exec,
            handle: self.exporter.handle(),
            resources: self.resources.clone(),
        })
    }

    /// What a guest's backend records becomes spans (calls) and log
    /// records (`trace()`).
    pub fn sink(&self, program: &probe_lang::Program) -> OtlpSink {
        let returns = program
            .probes()
            .iter()
            .filter_map(|p| match p {
                probe_lang::ProbeSpec::Kretprobe { function }
                | probe_lang::ProbeSpec::Kretfunc { function } => Some(function.clone()),
                _ => None,
            })
            .collect();
        OtlpSink {
            handle: self.exporter.handle(),
            resources: self.resources.clone(),
            returns,
            pending: HashMap::new(),
        }
    }

    /// Sent and dropped so far (`--metrics`).
    pub fn stats(&self) -> otlp_export::Stats {
        self.exporter.stats()
    }

    /// Sends what is left; the line `--stats` prints.
    pub fn finish(self) -> String {
        let s = self.exporter.finish(FINISH_GRACE);
        format!(
            "otlp: {} log records, {} spans sent, {} events dropped",
            s.logs_sent, s.spans_sent, s.dropped
        )
    }
}

struct LogOutput {
    inner: Box<dyn Output>,
    exec: Arc<Executable>,
    handle: Handle,
    resources: Arc<Resources>,
}

impl Output for LogOutput {
    fn emit(&mut self, ts_ns: u64, event: OutputEvent) {
        self.inner.emit(ts_ns, event);
    }

    fn emit_from(&mut self, ts_ns: u64, origin: &Origin<'_>, event: OutputEvent) {
        if let OutputEvent::Printf { fmt, args } = &event
            && let Some(format) = self.exec.ir.formats.get(*fmt as usize)
        {
            let mut body = String::new();
            format.render(args, &mut body);
            let mut attrs = Vec::new();
            guest_attr(&mut attrs, origin.guest);
            if let Some(v) = origin.vcpu {
                attrs.push(("vmprobe.vcpu".into(), AttrValue::Int(v.into())));
            }
            if let Some(p) = origin.probe {
                attrs.push(("vmprobe.probe".into(), str_attr(p)));
            }
            self.handle
                .log(self.resources.of(origin.guest), ts_ns, body, attrs);
        }
        self.inner.emit_from(ts_ns, origin, event);
    }
}

fn str_attr(s: &str) -> AttrValue {
    AttrValue::Str(s.to_string())
}

fn attr(v: &FieldValue<'_>) -> AttrValue {
    match v {
        // OTLP integers are signed 64-bit: a u64 keeps its bits.
        FieldValue::U64(v) => AttrValue::Int(*v as i64),
        FieldValue::I64(v) => AttrValue::Int(*v),
        FieldValue::Ptr(v) => str_attr(&format!("{v:#x}")),
        FieldValue::Str(s) => str_attr(s),
        FieldValue::Bytes(b) => AttrValue::Bytes(b.to_vec()),
    }
}

/// Recorded events as spans and log records. A return (an event with its
/// call's entry time) is a span from entry to return, named after the
/// function, with the return value and, when the program also probes the
/// entry, the arguments the entry saw. `trace()` events are log records.
pub struct OtlpSink {
    handle: Handle,
    resources: Arc<Resources>,
    /// Functions with a kretprobe: only their entries' arguments are kept.
    returns: std::collections::HashSet<String>,
    /// Entry arguments by (guest, function, entry time).
    pending: HashMap<(String, String, u64), Attributes>,
}

impl EventSink for OtlpSink {
    fn event(&mut self, e: &RecordedEvent<'_>) {
        let mut attrs = Vec::new();
        guest_attr(&mut attrs, e.guest);
        if let Some(v) = e.vcpu {
            attrs.push(("vmprobe.vcpu".into(), AttrValue::Int(v.into())));
        }
        let fields = e
            .fields
            .iter()
            .map(|(n, v)| (format!("vmprobe.{n}"), attr(v)));
        let res = self.resources.of(e.guest);
        match (e.site, e.entry_ns) {
            // A probe's own fields at a return: the call's span.
            (None, Some(entry)) => {
                if let Some(args) =
                    self.pending
                        .remove(&(e.guest.to_string(), e.func.to_string(), entry))
                {
                    attrs.extend(args);
                }
                attrs.extend(fields);
                self.handle
                    .span(res, e.func.to_string(), entry, e.ts_ns, attrs);
            }
            // An entry: its arguments wait for the return.
            (None, None) => {
                if self.returns.contains(e.func) && self.pending.len() < MAX_PENDING_CALLS {
                    self.pending.insert(
                        (e.guest.to_string(), e.func.to_string(), e.ts_ns),
                        fields.collect(),
                    );
                }
            }
            // What a `trace()` call traced.
            (Some(_), _) => {
                attrs.push(("vmprobe.probe".into(), str_attr(e.probe)));
                attrs.extend(fields);
                self.handle.log(res, e.ts_ns, e.probe.to_string(), attrs);
            }
        }
    }

    fn unfinished_call(&mut self, call: &probe_engine::UnfinishedCall<'_>) {
        self.pending
            .remove(&(call.guest.to_string(), call.func.to_string(), call.entry_ns));
    }
}

/// Hands every recorded event to several sinks (a trace and OTLP).
pub struct Tee(pub Vec<Box<dyn EventSink>>);

impl EventSink for Tee {
    fn event(&mut self, event: &RecordedEvent<'_>) {
        for s in &mut self.0 {
            s.event(event);
        }
    }

    fn snapshot(&mut self) {
        for s in &mut self.0 {
            s.snapshot();
        }
    }

    fn unfinished_call(&mut self, call: &probe_engine::UnfinishedCall<'_>) {
        for s in &mut self.0 {
            s.unfinished_call(call);
        }
    }

    fn wants_threads(&self) -> bool {
        self.0.iter().any(|s| s.wants_threads())
    }
}

/// The kernel release a bzImage states in its setup header (the boot
/// protocol's `kernel_version` field: a pointer, less 0x200, to a
/// NUL-terminated string such as "6.1.0-57-amd64 (debian-kernel@...) #1
/// SMP ..."), its first word. `None` for other images (a vmlinux ELF).
pub fn kernel_release(image: &std::path::Path) -> Option<String> {
    use std::io::Read;
    let mut head = Vec::new();
    std::fs::File::open(image)
        .ok()?
        .take(64 * 1024)
        .read_to_end(&mut head)
        .ok()?;
    release_from_setup_header(&head)
}

fn release_from_setup_header(head: &[u8]) -> Option<String> {
    if head.get(0x202..0x206)? != b"HdrS" {
        return None;
    }
    let ptr = u16::from_le_bytes(head.get(0x20e..0x210)?.try_into().ok()?) as usize;
    if ptr == 0 {
        return None;
    }
    let text = head.get(ptr + 0x200..)?;
    let end = text.iter().position(|&b| b == 0)?;
    let release = std::str::from_utf8(&text[..end])
        .ok()?
        .split_whitespace()
        .next()?;
    Some(release.to_string())
}

#[cfg(test)]
mod tests {
    use super::release_from_setup_header;

    #[test]
    fn the_release_comes_from_the_setup_header() {
        let mut head = vec![0u8; 0x1000];
        head[0x202..0x206].copy_from_slice(b"HdrS");
        head[0x20e..0x210].copy_from_slice(&0x0400u16.to_le_bytes());
        let text = b"6.1.0-57-amd64 (debian-kernel@lists.debian.org) #1 SMP\0";
        head[0x600..0x600 + text.len()].copy_from_slice(text);
        assert_eq!(
            release_from_setup_header(&head).as_deref(),
            Some("6.1.0-57-amd64")
        );
        head[0x202] = b'X';
        assert_eq!(release_from_setup_header(&head), None);
        assert_eq!(release_from_setup_header(&[0; 16]), None);
    }
}
