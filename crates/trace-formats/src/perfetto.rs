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
//! not through an f64, which would round large values. For the same reason
//! an integer arg that a JavaScript viewer would round (beyond 2^53, as
//! kernel pointers are) is a string: hex for an unsigned value
//! (`"0xffff888003a1c000"`), decimal for a signed one. An address
//! ([`Value::Ptr`]) is hex text whatever its size (`"0x7ffd1000"`).
//!
//! The output is `{"displayTimeUnit":"ns","traceEvents":[...]}`, written
//! in chunks of about 64 KiB, each followed by the closing `]}`, which the
//! next chunk overwrites: the file is valid JSON after every chunk, also if
//! vmprobe is killed. A chunk that cannot be written (disk full) is lost
//! whole: the closing is put back where the last complete event ends (over
//! bytes already in the file, so it needs no new space), the rest of what
//! went out becomes spaces, and its events are counted
//! ([`lost_events`](PerfettoWriter::lost_events)); later chunks are tried
//! again.

use std::io::{Seek, SeekFrom, Write};

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

const HEADER: &[u8] = b"{\"displayTimeUnit\":\"ns\",\"traceEvents\":[\n";
const CLOSE: &[u8] = b"\n]}\n";
/// Bytes of events gathered before they are written out.
const CHUNK: usize = 64 * 1024;

/// Writes Chrome trace-event JSON to `out` (a file, or a `Cursor`).
pub struct PerfettoWriter<W: Write + Seek> {
    out: W,
    tracks: Vec<Track>,
    /// Guest names, in order of first appearance; pid = index + 2.
    guests: Vec<String>,
    host_named: bool,
    /// Items (events, metadata) not written yet, joined by `,\n`.
    pending: Vec<u8>,
    pending_events: u64,
    /// Where the items in `out` end, and the closing starts.
    end: u64,
    /// Probe events in `out`, and events lost with chunks not written.
    events: u64,
    lost: u64,
    error: Option<std::io::Error>,
}

impl<W: Write + Seek> PerfettoWriter<W> {
    /// Writes the (empty, valid) document to `out`, at its start.
    pub fn new(mut out: W) -> Result<Self, Error> {
        out.seek(SeekFrom::Start(0))?;
        out.write_all(HEADER)?;
        out.write_all(CLOSE)?;
        Ok(PerfettoWriter {
            out,
            tracks: Vec::new(),
            guests: Vec::new(),
            host_named: false,
            pending: Vec::with_capacity(CHUNK + 4096),
            pending_events: 0,
            end: HEADER.len() as u64,
            events: 0,
            lost: 0,
            error: None,
        })
    }

    /// Probe events written out so far (not counting metadata).
    pub fn event_count(&self) -> u64 {
        self.events
    }

    /// Events lost with chunks that could not be written.
    pub fn lost_events(&self) -> u64 {
        self.lost
    }

    /// The first write error, if any chunk was lost.
    pub fn io_error(&self) -> Option<&std::io::Error> {
        self.error.as_ref()
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

    /// Writes out what is gathered. Its error, if any, is the first write
    /// error of the trace (see [`lost_events`](Self::lost_events)); the
    /// document stays valid either way.
    pub fn close(&mut self) -> Result<(), Error> {
        self.write_pending();
        let flushed = self.out.flush();
        if let Err(e) = flushed {
            self.error.get_or_insert(e);
        }
        match &self.error {
            Some(e) => Err(Error::Write(std::io::Error::new(e.kind(), e.to_string()))),
            None => Ok(()),
        }
    }

    /// [`close`](Self::close)s and returns the output.
    pub fn finish(mut self) -> Result<W, Error> {
        self.close()?;
        Ok(self.out)
    }

    /// The output, as it stands (valid JSON up to the last chunk written).
    pub fn into_inner(self) -> W {
        self.out
    }

    /// Adds one item (an event if `event`) to the chunk being gathered.
    fn push(&mut self, item: &[u8], event: bool) {
        if !self.pending.is_empty() {
            self.pending.extend_from_slice(b",\n");
        }
        self.pending.extend_from_slice(item);
        self.pending_events += event as u64;
        if self.pending.len() >= CHUNK {
            self.write_pending();
        }
    }

    /// Writes the gathered items and the closing after the last complete
    /// one; on an error, restores the closing there and counts them lost.
    fn write_pending(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let sep: &[u8] = if self.end > HEADER.len() as u64 {
            b",\n"
        } else {
            b""
        };
        let written = self
            .out
            .seek(SeekFrom::Start(self.end))
            .and_then(|_| self.out.write_all(sep))
            .and_then(|_| self.out.write_all(&self.pending))
            .and_then(|_| self.out.write_all(CLOSE));
        match written {
            Ok(()) => {
                self.end += (sep.len() + self.pending.len()) as u64;
                self.events += self.pending_events;
            }
            Err(e) => {
                self.lost += self.pending_events;
                self.error.get_or_insert(e);
                // Best effort; if this fails too, the next chunk tries again.
                let _ = self.restore_close();
            }
        }
        self.pending.clear();
        self.pending_events = 0;
    }

    /// The closing at `end` again, and spaces over whatever a failed chunk
    /// left after it: all in bytes the file already has (the previous
    /// closing was at `end`).
    fn restore_close(&mut self) -> std::io::Result<()> {
        let len = self.out.seek(SeekFrom::End(0))?;
        self.out.seek(SeekFrom::Start(self.end))?;
        self.out.write_all(CLOSE)?;
        let mut left = len.saturating_sub(self.end + CLOSE.len() as u64);
        let spaces = [b' '; 4096];
        while left > 0 {
            let n = left.min(spaces.len() as u64) as usize;
            self.out.write_all(&spaces[..n])?;
            left -= n as u64;
        }
        Ok(())
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
        let item = serde_json::to_vec(&ev).map_err(std::io::Error::from)?;
        self.push(&item, false);
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
            a.insert((*k).to_owned(), arg(v));
        }
        let name = serde_json::to_string(name).map_err(std::io::Error::from)?;
        let args = serde_json::to_string(&a).map_err(std::io::Error::from)?;
        let mut item = format!(
            "{{\"ph\":\"{ph}\",\"pid\":{pid},\"tid\":{tid},\"ts\":{},\"name\":{name}",
            micros(ts_ns)
        );
        if ph == "i" {
            item.push_str(",\"s\":\"t\"");
        }
        if let Some(d) = dur_ns {
            item.push_str(&format!(",\"dur\":{}", micros(d)));
        }
        item.push_str(&format!(",\"args\":{args}}}"));
        self.push(item.as_bytes(), true);
        Ok(())
    }
}

/// One field as a JSON arg: numbers where a JavaScript viewer keeps them
/// exact, text otherwise; an address is always hex text, as a viewer shows
/// no number in hex.
fn arg(v: &Value<'_>) -> Json {
    match *v {
        Value::Ptr(x) => Json::from(format!("{x:#x}")),
        Value::U64(x) if x > MAX_SAFE_INTEGER => Json::from(format!("{x:#x}")),
        Value::U64(x) => Json::from(x),
        Value::I64(x) if x.unsigned_abs() > MAX_SAFE_INTEGER => Json::from(x.to_string()),
        Value::I64(x) => Json::from(x),
        Value::Str(s) => Json::from(s),
        Value::Bytes(b) => Json::from(hex(b)),
    }
}

/// The largest integer a JavaScript number holds exactly (2^53 - 1).
const MAX_SAFE_INTEGER: u64 = (1 << 53) - 1;

/// Nanoseconds as an exact decimal number of microseconds.
fn micros(ns: u64) -> String {
    format!("{}.{:03}", ns / 1000, ns % 1000)
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn args_keep_their_sign_and_addresses_are_hex() {
        assert_eq!(arg(&Value::Ptr(0x7ffd_1000)), Json::from("0x7ffd1000"));
        assert_eq!(arg(&Value::Ptr(0)), Json::from("0x0"));
        assert_eq!(
            arg(&Value::Ptr(0xffff_8880_03a1_c000)),
            Json::from("0xffff888003a1c000")
        );
        assert_eq!(arg(&Value::I64(-100)), Json::from(-100));
        assert_eq!(
            arg(&Value::I64(-(1 << 53))),
            Json::from("-9007199254740992")
        );
        assert_eq!(arg(&Value::I64(i64::MIN)), Json::from(i64::MIN.to_string()));
        assert_eq!(arg(&Value::U64(4096)), Json::from(4096));
        assert_eq!(arg(&Value::U64(1 << 53)), Json::from("0x20000000000000"));
        assert_eq!(arg(&Value::Bytes(&[0xde, 0xad])), Json::from("dead"));
    }
}
