//! Chrome trace-event JSON, the format ui.perfetto.dev (and
//! chrome://tracing) opens directly: drag the file onto the Perfetto UI.
//!
//! Mapping: one process per guest (its guest-layer streams), plus one
//! process `host` for every VMM- and host-layer stream; one thread (track)
//! per stream, named by `M` metadata events (`process_name`, `thread_name`,
//! and sort indexes so vCPUs appear in order). Probe hits are instant events
//! (`ph: "i"`, `s: "t"`), entry/return pairs complete slices (`ph: "X"`) or
//! `B`/`E` pairs; fields go to `args`. Timestamps are CLOCK_MONOTONIC in
//! microseconds, written with their exact nanosecond fraction (`12.345`):
//! not through an f64, which would round large values.
//!
//! The output is `{"displayTimeUnit":"ns","traceEvents":[...]}`, streamed:
//! each event is written as it comes, the closing `]}` by [`finish`].
//!
//! [`finish`]: PerfettoWriter::finish

use std::io::Write;

use serde_json::{Map, Value as Json};

use crate::model::{Layer, StreamId, StreamKey};
use crate::{Error, Value};

/// pid of the process holding the VMM and host layers.
pub const HOST_PID: u32 = 1;

struct Track {
    key: StreamKey,
    pid: u32,
    tid: u32,
}

/// Streams Chrome trace-event JSON to `out`.
pub struct PerfettoWriter<W: Write> {
    out: W,
    tracks: Vec<Track>,
    /// Guest names, in order of first appearance; pid = index + 2.
    guests: Vec<String>,
    host_named: bool,
    first: bool,
}

impl<W: Write> PerfettoWriter<W> {
    pub fn new(mut out: W) -> Result<Self, Error> {
        out.write_all(b"{\"displayTimeUnit\":\"ns\",\"traceEvents\":[\n")?;
        Ok(PerfettoWriter {
            out,
            tracks: Vec::new(),
            guests: Vec::new(),
            host_named: false,
            first: true,
        })
    }

    /// Adds a track for `key` (the same key twice gives the same id) and
    /// writes the metadata events naming its process and thread.
    pub fn add_stream(&mut self, key: StreamKey) -> Result<StreamId, Error> {
        if let Some(i) = self.tracks.iter().position(|t| t.key == key) {
            return Ok(StreamId(i as u32));
        }
        let pid = match key.layer {
            Layer::Guest => match self.guests.iter().position(|g| *g == key.guest) {
                Some(i) => i as u32 + 2,
                None => {
                    self.guests.push(key.guest.clone());
                    let pid = self.guests.len() as u32 + 1;
                    let name = format!("guest {}", key.guest);
                    self.meta(pid, 0, "process_name", "name", Json::from(name))?;
                    self.meta(pid, 0, "process_sort_index", "sort_index", Json::from(pid))?;
                    pid
                }
            },
            Layer::Vmm | Layer::Host => {
                if !self.host_named {
                    self.host_named = true;
                    self.meta(HOST_PID, 0, "process_name", "name", Json::from("host"))?;
                    self.meta(
                        HOST_PID,
                        0,
                        "process_sort_index",
                        "sort_index",
                        Json::from(0),
                    )?;
                }
                HOST_PID
            }
        };
        // tids are unique across the file, so no two tracks ever merge.
        let tid = self.tracks.len() as u32 + 1;
        let name = match (key.layer, key.vcpu) {
            (Layer::Guest, Some(v)) => format!("vcpu{v}"),
            (Layer::Guest, None) => "guest".to_owned(),
            (l, Some(v)) => format!("{} {l} vcpu{v}", key.guest),
            (l, None) => format!("{} {l}", key.guest),
        };
        self.meta(pid, tid, "thread_name", "name", Json::from(name))?;
        let sort = key.vcpu.map_or(i64::from(u32::MAX), i64::from);
        self.meta(
            pid,
            tid,
            "thread_sort_index",
            "sort_index",
            Json::from(sort),
        )?;
        self.tracks.push(Track { key, pid, tid });
        Ok(StreamId(self.tracks.len() as u32 - 1))
    }

    /// An instant event (a probe hit), scoped to its thread.
    pub fn instant(
        &mut self,
        stream: StreamId,
        ts_ns: u64,
        name: &str,
        args: &[(&str, Value<'_>)],
    ) -> Result<(), Error> {
        self.event(stream, "i", ts_ns, None, name, args)
    }

    /// A complete slice from `start_ns` lasting `dur_ns` (an entry/return
    /// pair known at return time).
    pub fn complete(
        &mut self,
        stream: StreamId,
        start_ns: u64,
        dur_ns: u64,
        name: &str,
        args: &[(&str, Value<'_>)],
    ) -> Result<(), Error> {
        self.event(stream, "X", start_ns, Some(dur_ns), name, args)
    }

    /// Opens a slice (`B`); close it with [`end`](Self::end) on the same track.
    pub fn begin(
        &mut self,
        stream: StreamId,
        ts_ns: u64,
        name: &str,
        args: &[(&str, Value<'_>)],
    ) -> Result<(), Error> {
        self.event(stream, "B", ts_ns, None, name, args)
    }

    /// Closes the innermost open slice of the track (`E`).
    pub fn end(
        &mut self,
        stream: StreamId,
        ts_ns: u64,
        name: &str,
        args: &[(&str, Value<'_>)],
    ) -> Result<(), Error> {
        self.event(stream, "E", ts_ns, None, name, args)
    }

    /// Closes the JSON document and returns the output.
    pub fn finish(mut self) -> Result<W, Error> {
        self.out.write_all(b"\n]}\n")?;
        self.out.flush()?;
        Ok(self.out)
    }

    fn meta(
        &mut self,
        pid: u32,
        tid: u32,
        name: &str,
        key: &str,
        value: Json,
    ) -> Result<(), Error> {
        let mut args = Map::new();
        args.insert(key.to_owned(), value);
        let ev = serde_json::json!({"ph": "M", "pid": pid, "tid": tid, "name": name, "args": args});
        self.sep()?;
        serde_json::to_writer(&mut self.out, &ev).map_err(std::io::Error::from)?;
        Ok(())
    }

    fn sep(&mut self) -> Result<(), Error> {
        if !self.first {
            self.out.write_all(b",\n")?;
        }
        self.first = false;
        Ok(())
    }

    fn event(
        &mut self,
        stream: StreamId,
        ph: &str,
        ts_ns: u64,
        dur_ns: Option<u64>,
        name: &str,
        args: &[(&str, Value<'_>)],
    ) -> Result<(), Error> {
        let t = self
            .tracks
            .get(stream.0 as usize)
            .ok_or(Error::UnknownStream(stream.0))?;
        let (pid, tid) = (t.pid, t.tid);
        let mut a = Map::new();
        for (k, v) in args {
            let j = match *v {
                Value::U64(x) => Json::from(x),
                Value::I64(x) => Json::from(x),
                Value::Str(s) => Json::from(s),
                Value::Bytes(b) => Json::from(hex(b)),
            };
            a.insert((*k).to_owned(), j);
        }
        let name = serde_json::to_string(name).map_err(std::io::Error::from)?;
        let args = serde_json::to_string(&a).map_err(std::io::Error::from)?;
        self.sep()?;
        write!(
            self.out,
            "{{\"ph\":\"{ph}\",\"pid\":{pid},\"tid\":{tid},\"ts\":{},\"name\":{name}",
            micros(ts_ns)
        )?;
        if ph == "i" {
            self.out.write_all(b",\"s\":\"t\"")?;
        }
        if let Some(d) = dur_ns {
            write!(self.out, ",\"dur\":{}", micros(d))?;
        }
        write!(self.out, ",\"args\":{args}}}")?;
        Ok(())
    }
}

/// Nanoseconds as an exact decimal number of microseconds.
fn micros(ns: u64) -> String {
    format!("{}.{:03}", ns / 1000, ns % 1000)
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}
