//! The recorder of `vmprobe record` (and of `--otlp`'s recording mode):
//! probe events into trace files (CTF for babeltrace2 and
//! Trace Compass, Chrome/Perfetto JSON), directly or through a flight
//! recorder that keeps only the newest events in memory until a snapshot.
//!
//! The engine calls the sink with the guest stopped, so the writer never
//! falls behind: a slow disk slows the guest instead of losing events. What
//! can still be lost (a failed write, events overwritten in the ring) is
//! counted per stream, written into the trace as CTF `events_discarded`, and
//! reported on stderr once, at the end, with the number of events lost (the
//! run then exits non-zero). A trace that lost events still reads: CTF up
//! to its last whole packet, Perfetto JSON up to its last complete event.

use anyhow::{Context, Result, anyhow};
use probe_engine::own_fields::{MAX_ARGS, OwnFields};
use probe_engine::{EventSink, GuestThread, RecordedEvent, UnfinishedCall};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use trace_formats::ctf::{CtfOptions, CtfWriter};
use trace_formats::perfetto::PerfettoWriter;
use trace_formats::ring::FlightRecorder;
use trace_formats::{
    ClassId, ClockOffset, EventClass, FieldType, Layer, StreamId, StreamKey, Value,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Ctf,
    Perfetto,
}

enum Output {
    Ctf(CtfWriter),
    Perfetto(PerfettoWriter<std::fs::File>),
    Ring {
        ring: FlightRecorder,
        snapshots: u32,
    },
}

/// Streams (one per guest vCPU and layer) and event classes (one per probe
/// and `trace(name = ...)` call site), numbered in order of first use, the
/// same in every snapshot.
#[derive(Default)]
struct Registry {
    streams: HashMap<StreamKey, StreamId>,
    stream_keys: Vec<StreamKey>,
    classes: HashMap<(String, Option<u32>), ClassId>,
    class_list: Vec<EventClass>,
}

pub struct Recorder {
    dir: PathBuf,
    clock: ClockOffset,
    output: Output,
    registry: Registry,
    /// A kprobe's or kretprobe's own fields as the kernel's prototype
    /// names and types them.
    own: OwnFields,
    /// Events handed to the writer (or ring), taken or not.
    attempted: u64,
    /// Events the writer did not take, per stream index, and those whose
    /// stream could not even be made.
    rejected: Vec<u64>,
    unstreamed: u64,
    first_error: Option<String>,
    /// `snapshot()` without `--ring` was reported once.
    warned_snapshot: bool,
}

/// The engine owns its sink; the CLI keeps a handle to snapshot and finish.
#[derive(Clone)]
pub struct SharedRecorder(pub Arc<Mutex<Recorder>>);

impl EventSink for SharedRecorder {
    fn event(&mut self, event: &RecordedEvent<'_>) {
        if let Ok(mut r) = self.0.lock() {
            r.event(event);
        }
    }

    fn snapshot(&mut self) {
        let Ok(mut r) = self.0.lock() else { return };
        if !matches!(r.output, Output::Ring { .. }) {
            if !std::mem::replace(&mut r.warned_snapshot, true) {
                eprintln!(
                    "vmprobe: warning: snapshot() does nothing without a flight recorder (--ring SIZE); events go to {} as they happen",
                    r.dir.display()
                );
            }
            return;
        }
        match r.snapshot() {
            Ok(Some((dir, n))) => eprintln!("vmprobe: snapshot: {n} events in {}", dir.display()),
            Ok(None) => {}
            Err(e) => eprintln!("vmprobe: snapshot failed: {e:#}"),
        }
    }

    fn unfinished_call(&mut self, call: &UnfinishedCall<'_>) {
        if let Ok(mut r) = self.0.lock() {
            r.unfinished_call(call);
        }
    }

    /// Perfetto puts guest events on their task's track; CTF keeps its
    /// per-vCPU streams and needs no task.
    fn wants_threads(&self) -> bool {
        self.0
            .lock()
            .is_ok_and(|r| matches!(r.output, Output::Perfetto(_)))
    }
}

impl Recorder {
    /// `ring`: keep only the newest `ring` bytes per vCPU in memory and
    /// write nothing until a snapshot.
    pub fn create(
        dir: &Path,
        format: Format,
        ring: Option<usize>,
        own: OwnFields,
    ) -> Result<Recorder> {
        let clock = ClockOffset::measure();
        let output = match (ring, format) {
            (Some(bytes), _) => Output::Ring {
                ring: FlightRecorder::new(bytes),
                snapshots: 0,
            },
            (None, Format::Ctf) => Output::Ctf(
                CtfWriter::create(dir, ctf_options(clock))
                    .with_context(|| format!("creating the trace in {}", dir.display()))?,
            ),
            (None, Format::Perfetto) => {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("creating {}", dir.display()))?;
                let path = dir.join("trace.json");
                let file = std::fs::File::create(&path)
                    .with_context(|| format!("creating {}", path.display()))?;
                Output::Perfetto(
                    PerfettoWriter::new(file)
                        .with_context(|| format!("writing {}", path.display()))?,
                )
            }
        };
        Ok(Recorder {
            dir: dir.to_path_buf(),
            clock,
            output,
            registry: Registry::default(),
            own,
            attempted: 0,
            rejected: Vec::new(),
            unstreamed: 0,
            first_error: None,
            warned_snapshot: false,
        })
    }

    fn stream_key(event: &RecordedEvent<'_>) -> StreamKey {
        StreamKey::new(event.guest, event.vcpu, event.layer)
    }

    fn stream(&mut self, key: StreamKey) -> Result<StreamId, trace_formats::Error> {
        if let Some(&id) = self.registry.streams.get(&key) {
            return Ok(id);
        }
        let id = match &mut self.output {
            Output::Ctf(w) => w.add_stream(key.clone())?,
            Output::Perfetto(w) => w.add_stream(key.clone())?,
            Output::Ring { .. } => StreamId(self.registry.stream_keys.len() as u32),
        };
        self.registry.streams.insert(key.clone(), id);
        self.registry.stream_keys.push(key);
        self.rejected.push(0);
        Ok(id)
    }

    /// The class of a probe's own fields, or of one `trace(name = ...)`
    /// call site in that probe. It is named after the probe (what
    /// babeltrace2 shows); a second layout in the same probe (another call
    /// site) gets `probe#2`, and so on, since class names are unique.
    fn class(&mut self, event: &RecordedEvent<'_>) -> Result<ClassId, trace_formats::Error> {
        let key = (event.probe.to_string(), event.site);
        if let Some(&id) = self.registry.classes.get(&key) {
            return Ok(id);
        }
        let fields: Vec<(&str, FieldType)> = event
            .fields
            .iter()
            .map(|(n, v)| (*n, v.field_type()))
            .collect();
        let mut class = EventClass::new(event.probe, &fields);
        let taken = |c: &EventClass, list: &[EventClass]| {
            list.iter()
                .any(|o| o.name == c.name && o.fields != c.fields)
        };
        let mut n = 1;
        while taken(&class, &self.registry.class_list) {
            n += 1;
            class.name = format!("{}#{n}", event.probe);
        }
        let id = match &mut self.output {
            Output::Ctf(w) => w.declare(class.clone())?,
            _ => match self.registry.class_list.iter().position(|c| *c == class) {
                Some(i) => ClassId(i as u32),
                None => ClassId(self.registry.class_list.len() as u32),
            },
        };
        self.registry.classes.insert(key, id);
        if id.0 as usize == self.registry.class_list.len() {
            self.registry.class_list.push(class);
        }
        Ok(id)
    }

    fn event(&mut self, event: &RecordedEvent<'_>) {
        let result = match self.own.layout(event).cloned() {
            Some(layout) => {
                let mut typed = [("", Value::U64(0)); MAX_ARGS];
                match layout.apply(event.fields, &mut typed) {
                    Some(fields) => self.try_event(&RecordedEvent { fields, ..*event }),
                    None => self.try_event(event),
                }
            }
            None => self.try_event(event),
        };
        self.count(&Self::stream_key(event), result);
    }

    /// Counts an event handed over; one the writer did not take is counted
    /// against its stream. (Events the writer took but could not write out
    /// are counted by the writer itself.)
    fn count(&mut self, key: &StreamKey, result: Result<(), trace_formats::Error>) {
        self.attempted += 1;
        if let Err(e) = result {
            match self.registry.streams.get(key) {
                Some(&StreamId(i)) => self.rejected[i as usize] += 1,
                None => self.unstreamed += 1,
            }
            self.first_error.get_or_insert_with(|| e.to_string());
        }
    }

    /// A guest event's Perfetto track: its task's when known (and given
    /// one), else its stream's (vCPU, VMM, host).
    fn track(
        &mut self,
        key: StreamKey,
        thread: Option<&GuestThread>,
    ) -> Result<StreamId, trace_formats::Error> {
        if let (Some(t), Output::Perfetto(w)) = (thread, &mut self.output)
            && let Some(id) = w.thread(&key.guest, t.pid, t.tid, &t.comm())?
        {
            return Ok(id);
        }
        self.stream(key)
    }

    fn try_event(&mut self, event: &RecordedEvent<'_>) -> Result<(), trace_formats::Error> {
        if matches!(self.output, Output::Perfetto(_)) {
            let stream = self.track(Self::stream_key(event), event.thread.as_ref())?;
            let Output::Perfetto(w) = &mut self.output else {
                unreachable!("checked above")
            };
            let mut args: Vec<(&str, Value<'_>)> = event.fields.to_vec();
            // On a task's track, where it ran is an arg (a field of the
            // script's own name wins).
            if let Some(v) = event.vcpu
                && !args.iter().any(|(n, _)| *n == "vcpu")
            {
                args.push(("vcpu", Value::U64(v.into())));
            }
            return match event.entry_ns {
                // A return closes the slice of its call.
                Some(entry) => w.complete(
                    stream,
                    entry,
                    event.ts_ns.saturating_sub(entry),
                    event.func,
                    &args,
                ),
                None => w.instant(stream, event.ts_ns, event.probe, &args),
            };
        }
        let stream = self.stream(Self::stream_key(event))?;
        let class = self.class(event)?;
        let values: Vec<Value<'_>> = event.fields.iter().map(|(_, v)| *v).collect();
        match &mut self.output {
            Output::Ctf(w) => w.write(stream, event.ts_ns, class, &values),
            Output::Ring { ring, .. } => ring.push(stream, event.ts_ns, class, &values).map(|_| ()),
            Output::Perfetto(_) => unreachable!("handled above"),
        }
    }

    /// A call in flight when the run ended. In Perfetto it opens a slice
    /// that never closes, which the UI shows as "Did not end"; CTF already
    /// holds its entry event, and the missing return says the same.
    fn unfinished_call(&mut self, call: &UnfinishedCall<'_>) {
        if !matches!(self.output, Output::Perfetto(_)) {
            return;
        }
        let key = StreamKey::new(call.guest, Some(call.vcpu), Layer::Guest);
        let args = [("vcpu", Value::U64(call.vcpu.into()))];
        let result =
            self.track(key.clone(), call.thread.as_ref())
                .and_then(|stream| match &mut self.output {
                    Output::Perfetto(w) => w.begin(stream, call.entry_ns, call.func, &args),
                    _ => unreachable!("checked above"),
                });
        self.count(&key, result);
    }

    /// Flight recorder: writes the events held now as a CTF trace in
    /// `DIR/snapshot-N` and empties the ring. Returns the path and count.
    pub fn snapshot(&mut self) -> Result<Option<(PathBuf, u64)>> {
        let Output::Ring { ring, snapshots } = &mut self.output else {
            return Ok(None);
        };
        *snapshots += 1;
        let dir = self.dir.join(format!("snapshot-{snapshots}"));
        let mut ctf = CtfWriter::create(&dir, ctf_options(self.clock))
            .with_context(|| format!("creating {}", dir.display()))?;
        for key in &self.registry.stream_keys {
            ctf.add_stream(key.clone())?;
        }
        for class in &self.registry.class_list {
            ctf.declare(class.clone())?;
        }
        let n = ring.drain_into(&mut ctf)?;
        ctf.finish()?;
        Ok(Some((dir, n)))
    }

    /// Ends the trace: writes the ring (as a last snapshot) or closes the
    /// files, with lost events counted in the trace.
    pub fn finish(mut self) -> Result<Finished> {
        let snapshot = self.snapshot()?;
        // Events in the trace, and those it says it discarded (CTF).
        let (in_trace, stated) = match &mut self.output {
            Output::Ctf(w) => {
                for (i, &n) in self.rejected.iter().enumerate() {
                    w.add_discarded(StreamId(i as u32), n)?;
                }
                if let Err(e) = w.close() {
                    self.first_error.get_or_insert_with(|| e.to_string());
                }
                let t = w.totals();
                (t.events, Some(t.discarded))
            }
            Output::Perfetto(w) => {
                if let Err(e) = w.close() {
                    self.first_error.get_or_insert_with(|| e.to_string());
                }
                (w.event_count(), None)
            }
            Output::Ring { .. } => {
                let rejected = self.rejected.iter().sum::<u64>() + self.unstreamed;
                (self.attempted - rejected, None)
            }
        };
        let summary = match snapshot {
            Some((dir, n)) => format!("{n} newest events in {}", dir.display()),
            None => format!("{in_trace} events in {}", self.dir.display()),
        };
        let lost = self.attempted.saturating_sub(in_trace);
        let error = (lost > 0).then(|| {
            let why = self.first_error.unwrap_or_default();
            let said = match stated {
                Some(n) if n == lost => "; the trace counts them as discarded".to_string(),
                Some(n) => format!("; the trace counts {n} as discarded"),
                None => String::new(),
            };
            format!("{lost} events could not be written ({why}){said}")
        });
        Ok(Finished { summary, error })
    }
}

/// A finished trace: what it holds, and what it lost.
pub struct Finished {
    pub summary: String,
    pub error: Option<String>,
}

fn ctf_options(clock: ClockOffset) -> CtfOptions {
    let mut opts = CtfOptions::new(clock);
    opts.env.push(("tracer_name".into(), "vmprobe".into()));
    opts
}

/// Parses sizes like `1M`, `512K`, `4096`.
pub fn parse_size(text: &str) -> Result<usize, String> {
    let t = text.trim();
    let (digits, mult) = match t.char_indices().last() {
        Some((i, 'K' | 'k')) => (&t[..i], 1 << 10),
        Some((i, 'M' | 'm')) => (&t[..i], 1 << 20),
        Some((i, 'G' | 'g')) => (&t[..i], 1 << 30),
        _ => (t, 1),
    };
    let n: usize = digits
        .parse()
        .map_err(|_| format!("'{text}' is not a size (e.g. 1M, 512K, 65536)"))?;
    n.checked_mul(mult)
        .filter(|&b| b > 0)
        .ok_or_else(|| format!("'{text}' is not a usable size"))
}

/// Creates the trace writer of a recording, and sets SIGUSR1 to ask for a
/// flight-recorder snapshot.
pub fn start_recorder(
    recording: Option<&Recording>,
    snapshot_requested: &Arc<AtomicBool>,
    own: impl FnOnce() -> OwnFields,
) -> Result<Option<SharedRecorder>> {
    let Some(r) = recording else {
        return Ok(None);
    };
    signal_hook::flag::register(signal_hook::consts::SIGUSR1, snapshot_requested.clone())
        .context("installing the SIGUSR1 handler")?;
    Ok(Some(SharedRecorder(Arc::new(std::sync::Mutex::new(
        Recorder::create(&r.dir, r.format, r.ring, own())?,
    )))))
}

/// What `vmprobe record` adds to a run.
pub struct Recording {
    pub flamegraph: Option<std::path::PathBuf>,
    pub dir: std::path::PathBuf,
    pub format: Format,
    pub ring: Option<usize>,
}

/// Writes the rest of the trace (or the flight recorder's last snapshot)
/// once nothing else holds the recorder, and says what was recorded, and
/// what was lost, once. Returns whether the trace holds every event.
pub(crate) fn finish_recorder(r: SharedRecorder) -> Result<bool> {
    let recorder = Arc::try_unwrap(r.0)
        .map_err(|_| anyhow!("recorder still shared"))?
        .into_inner()
        .map_err(|_| anyhow!("recorder lock poisoned"))?;
    match recorder.finish() {
        Ok(done) => {
            eprintln!("vmprobe: recorded {}", done.summary);
            if let Some(e) = &done.error {
                eprintln!("vmprobe: writing the trace: {e}");
            }
            Ok(done.error.is_none())
        }
        Err(e) => {
            eprintln!("vmprobe: writing the trace: {e}");
            Ok(false)
        }
    }
}

/// Flight recorder snapshot on SIGUSR1.
pub(crate) fn snapshot(recorder: Option<&SharedRecorder>) {
    let Some(r) = recorder else {
        eprintln!("vmprobe: SIGUSR1: nothing is being recorded");
        return;
    };
    match r
        .0
        .lock()
        .map_err(|_| anyhow!("recorder lock"))
        .and_then(|mut r| r.snapshot())
    {
        Ok(Some((dir, n))) => eprintln!("vmprobe: snapshot: {n} events in {}", dir.display()),
        Ok(None) => eprintln!("vmprobe: SIGUSR1: no flight recorder (--ring)"),
        Err(e) => eprintln!("vmprobe: snapshot failed: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event<'a>(
        thread: Option<GuestThread>,
        entry_ns: Option<u64>,
        fields: &'a [(&'a str, Value<'a>)],
    ) -> RecordedEvent<'a> {
        RecordedEvent {
            guest: "vm0",
            ts_ns: 5_000,
            vcpu: Some(1),
            layer: Layer::Guest,
            probe: "kretprobe:vfs_read",
            func: "vfs_read",
            entry_ns,
            site: None,
            fields,
            thread,
        }
    }

    #[test]
    fn perfetto_puts_guest_events_on_their_task_with_the_vcpu_as_an_arg() {
        let dir = tempfile::tempdir().unwrap();
        let ctf = SharedRecorder(Arc::new(Mutex::new(
            Recorder::create(
                &dir.path().join("ctf"),
                Format::Ctf,
                None,
                OwnFields::default(),
            )
            .unwrap(),
        )));
        // CTF keeps its per-vCPU streams: no task is read for it.
        assert!(!ctf.wants_threads());
        let mut perfetto = SharedRecorder(Arc::new(Mutex::new(
            Recorder::create(dir.path(), Format::Perfetto, None, OwnFields::default()).unwrap(),
        )));
        assert!(perfetto.wants_threads());
        let mut comm = [0u8; 16];
        comm[..3].copy_from_slice(b"cat");
        let cat = GuestThread {
            pid: 90,
            tid: 91,
            comm,
        };
        let retval = [("retval", Value::U64(2))];
        perfetto.event(&event(Some(cat), Some(1_000), &retval));
        // A field the script named `vcpu` is kept as it is.
        perfetto.event(&event(Some(cat), None, &[("vcpu", Value::U64(7))]));
        // No task known (an idle vCPU, a failed read): the vCPU's track.
        perfetto.event(&event(None, None, &[]));
        perfetto.unfinished_call(&UnfinishedCall {
            guest: "vm0",
            vcpu: 1,
            func: "ksys_read",
            entry_ns: 900,
            thread: Some(cat),
        });
        drop(ctf);
        assert!(finish_recorder(perfetto).unwrap());
        let doc: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.path().join("trace.json")).unwrap()).unwrap();
        let events: Vec<&serde_json::Value> = doc["traceEvents"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["ph"] != "M")
            .collect();
        let at = |e: &serde_json::Value| {
            (
                e["pid"].clone(),
                e["tid"].clone(),
                e["args"]["vcpu"].clone(),
            )
        };
        let on_cat = (serde_json::json!(90), serde_json::json!(91));
        assert_eq!(events[0]["ph"], "X");
        assert_eq!(
            at(events[0]),
            (on_cat.0.clone(), on_cat.1.clone(), serde_json::json!(1))
        );
        assert_eq!(
            at(events[1]),
            (on_cat.0.clone(), on_cat.1.clone(), serde_json::json!(7))
        );
        assert!(
            events[2]["tid"].as_u64().unwrap() >= 1 << 22,
            "{}",
            events[2]
        );
        assert_eq!(events[3]["ph"], "B");
        assert_eq!(at(events[3]), (on_cat.0, on_cat.1, serde_json::json!(1)));
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("1M"), Ok(1 << 20));
        assert_eq!(parse_size("512k"), Ok(512 << 10));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("0").is_err());
        assert!(parse_size("1X").is_err());
        assert!(parse_size("").is_err());
    }
}
