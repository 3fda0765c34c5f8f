//! Chrome trace-event JSON, the format ui.perfetto.dev (and
//! chrome://tracing) opens directly: drag the file onto the Perfetto UI.
//!
//! Mapping: guest events that know their task go on that task's track
//! ([`thread`](PerfettoWriter::thread)): a process per (guest, guest pid)
//! named `vm0 pid 123 (sh)`, a thread per guest tid named by its `comm`,
//! so that the calls of one task nest on its track however often it
//! blocks and another task runs on the vCPU. The JSON pid and tid are the
//! guest's own, offset by [`GUEST_ID_SPAN`] times the guest's index (order
//! of first appearance) so that two guests' pids never merge. Other
//! streams ([`add_stream`](PerfettoWriter::add_stream): guest events with
//! no task, such as an idle vCPU's, and every VMM- and host-layer event)
//! keep a track each: one process per guest for its vCPU tracks and one
//! process `host`, with ids from [`SYNTHETIC_ID`] up. Names come as `M`
//! metadata events (`process_name`, `thread_name`, and sort indexes so
//! guests, their processes, threads and vCPUs appear in order; a name is
//! written again when a task's `comm` changes, at `exec`, and Perfetto
//! keeps the last). Probe hits are instant events
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

use std::collections::HashMap;
use std::io::{Seek, SeekFrom, Write};

use serde_json::{Map, Value as Json};

use crate::model::{Layer, StreamId, StreamKey};
use crate::{Error, Value};

/// JSON pids and tids of guest `g`'s tasks are `g * GUEST_ID_SPAN` plus
/// the guest's own: Linux's pids stay below 2^22 (`PID_MAX_LIMIT`).
pub const GUEST_ID_SPAN: u32 = 1 << 22;

/// Ids of tracks that are no guest task (vCPUs, VMM, host) start here,
/// above every guest's range (guests past the 447th get no task tracks).
pub const SYNTHETIC_ID: u32 = 0x7000_0000;

/// pid of the process holding the VMM and host layers.
pub const HOST_PID: u32 = SYNTHETIC_ID;

struct Track {
    /// `None` for a guest task's track.
    key: Option<StreamKey>,
    pid: u32,
    tid: u32,
}

/// A guest task's track, and the name it was last given.
struct ThreadTrack {
    stream: StreamId,
    comm: String,
}

/// A guest process: its name's `comm`, and whether that is its leader's
/// (the thread whose tid is the pid), which names it once seen.
struct Process {
    comm: String,
    by_leader: bool,
}

const HEADER: &[u8] = b"{\"displayTimeUnit\":\"ns\",\"traceEvents\":[\n";
const CLOSE: &[u8] = b"\n]}\n";
/// Bytes of events gathered before they are written out.
const CHUNK: usize = 64 * 1024;

/// Writes Chrome trace-event JSON to `out` (a file, or a `Cursor`).
pub struct PerfettoWriter<W: Write + Seek> {
    out: W,
    tracks: Vec<Track>,
    /// Guest names, in order of first appearance: their index places
    /// their ids (see [`GUEST_ID_SPAN`]).
    guests: Vec<String>,
    /// Guests (by index) whose vCPU-track process is named.
    vcpu_processes: Vec<bool>,
    /// Guest tasks' tracks by (guest index, pid, tid), and processes by
    /// (guest index, pid).
    threads: HashMap<(usize, u32, u32), ThreadTrack>,
    processes: HashMap<(usize, u32), Process>,
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
            vcpu_processes: Vec::new(),
            threads: HashMap::new(),
            processes: HashMap::new(),
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
        if let Some(i) = self
            .tracks
            .iter()
            .position(|t| t.key.as_ref() == Some(&key))
        {
            return Ok(StreamId(i as u32));
        }
        let pid = match key.layer {
            Layer::Guest => {
                let g = self.guest_index(&key.guest);
                let pid = SYNTHETIC_ID + 1 + g as u32;
                if !self.vcpu_processes[g] {
                    self.vcpu_processes[g] = true;
                    let name = format!("guest {}", key.guest);
                    self.meta(pid, 0, "process_name", "name", Json::from(name))?;
                    // Before the guest's processes.
                    let sort = i64::from(g as u32 * GUEST_ID_SPAN);
                    self.meta(pid, 0, "process_sort_index", "sort_index", Json::from(sort))?;
                }
                pid
            }
            Layer::Vmm | Layer::Host => {
                if !self.host_named {
                    self.host_named = true;
                    self.meta(HOST_PID, 0, "process_name", "name", Json::from("host"))?;
                    self.meta(
                        HOST_PID,
                        0,
                        "process_sort_index",
                        "sort_index",
                        Json::from(-1),
                    )?;
                }
                HOST_PID
            }
        };
        // tids are unique across the file, so no two tracks ever merge.
        let tid = SYNTHETIC_ID + self.tracks.len() as u32 + 1;
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
        self.tracks.push(Track {
            key: Some(key),
            pid,
            tid,
        });
        Ok(StreamId(self.tracks.len() as u32 - 1))
    }

    /// The track of guest task `tid` of process `pid` (the tgid) in
    /// `guest`, named `comm`; made, with its process, on first use, and
    /// named again when its `comm` changed (an `exec`). `None` where a task
    /// has no track of its own: tid 0 (each CPU's idle task has it), ids
    /// no Linux gives (2^22 and up), a guest past the 447th; its events go
    /// on a vCPU track ([`add_stream`](Self::add_stream)) instead.
    pub fn thread(
        &mut self,
        guest: &str,
        pid: u32,
        tid: u32,
        comm: &str,
    ) -> Result<Option<StreamId>, Error> {
        if tid == 0 || pid >= GUEST_ID_SPAN || tid >= GUEST_ID_SPAN {
            return Ok(None);
        }
        let g = self.guest_index(guest);
        let Some(base) = (g as u32)
            .checked_mul(GUEST_ID_SPAN)
            .filter(|b| b + GUEST_ID_SPAN <= SYNTHETIC_ID)
        else {
            return Ok(None);
        };
        let (json_pid, json_tid) = (base + pid, base + tid);
        let process_name = match self.processes.get_mut(&(g, pid)) {
            None => {
                let sort = Json::from(json_pid);
                self.meta(json_pid, 0, "process_sort_index", "sort_index", sort)?;
                self.processes.insert(
                    (g, pid),
                    Process {
                        comm: comm.to_owned(),
                        by_leader: tid == pid,
                    },
                );
                true
            }
            // The leader names its process, also after an exec.
            Some(p) if tid == pid && (!p.by_leader || p.comm != comm) => {
                p.comm = comm.to_owned();
                p.by_leader = true;
                true
            }
            Some(_) => false,
        };
        if process_name {
            let name = format!("{guest} pid {pid} ({comm})");
            self.meta(json_pid, 0, "process_name", "name", Json::from(name))?;
        }
        let stream = match self.threads.get_mut(&(g, pid, tid)) {
            Some(t) if t.comm == comm => return Ok(Some(t.stream)),
            Some(t) => {
                t.comm = comm.to_owned();
                t.stream
            }
            None => {
                let stream = StreamId(self.tracks.len() as u32);
                self.tracks.push(Track {
                    key: None,
                    pid: json_pid,
                    tid: json_tid,
                });
                self.threads.insert(
                    (g, pid, tid),
                    ThreadTrack {
                        stream,
                        comm: comm.to_owned(),
                    },
                );
                let sort = Json::from(tid);
                self.meta(json_pid, json_tid, "thread_sort_index", "sort_index", sort)?;
                stream
            }
        };
        self.meta(json_pid, json_tid, "thread_name", "name", Json::from(comm))?;
        Ok(Some(stream))
    }

    /// The index of `guest`, added on first use.
    fn guest_index(&mut self, guest: &str) -> usize {
        match self.guests.iter().position(|g| g == guest) {
            Some(i) => i,
            None => {
                self.guests.push(guest.to_owned());
                self.vcpu_processes.push(false);
                self.guests.len() - 1
            }
        }
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
    use std::io::Cursor;

    fn events(w: PerfettoWriter<Cursor<Vec<u8>>>) -> Vec<Json> {
        let bytes = w.finish().unwrap().into_inner();
        let doc: Json = serde_json::from_slice(&bytes).unwrap();
        doc["traceEvents"].as_array().unwrap().clone()
    }

    fn meta<'a>(events: &'a [Json], name: &str) -> Vec<&'a Json> {
        events
            .iter()
            .filter(|e| e["ph"] == "M" && e["name"] == name)
            .collect()
    }

    #[test]
    fn each_guest_task_has_a_track_in_a_process_per_guest_pid() {
        let mut w = PerfettoWriter::new(Cursor::new(Vec::new())).unwrap();
        let leader = w.thread("vm0", 100, 100, "sh").unwrap().unwrap();
        let worker = w.thread("vm0", 100, 101, "sh").unwrap().unwrap();
        let cat = w.thread("vm0", 102, 102, "cat").unwrap().unwrap();
        // The same pid in another guest is another process.
        let other = w.thread("vm1", 100, 100, "sh").unwrap().unwrap();
        assert_eq!(w.thread("vm0", 100, 101, "sh").unwrap(), Some(worker));
        // Idle tasks (tid 0, one per CPU) and ids Linux never gives have
        // no track of their own.
        assert_eq!(w.thread("vm0", 0, 0, "swapper/0").unwrap(), None);
        assert_eq!(w.thread("vm0", GUEST_ID_SPAN, 5, "x").unwrap(), None);
        let vcpu = w
            .add_stream(StreamKey::new("vm0", Some(0), Layer::Guest))
            .unwrap();
        for (i, s) in [leader, worker, cat, other, vcpu].into_iter().enumerate() {
            w.instant(s, 1000 + i as u64, "kprobe:f", &[]).unwrap();
        }
        let ev = events(w);
        let at: Vec<(u64, u64)> = ev
            .iter()
            .filter(|e| e["ph"] == "i")
            .map(|e| (e["pid"].as_u64().unwrap(), e["tid"].as_u64().unwrap()))
            .collect();
        let span = u64::from(GUEST_ID_SPAN);
        assert_eq!(
            at[..4],
            [(100, 100), (100, 101), (102, 102), (span + 100, span + 100)]
        );
        // The vCPU track is in the guest's own process, clear of tasks.
        assert!(at[4].0 > u64::from(SYNTHETIC_ID) && at[4].1 > u64::from(SYNTHETIC_ID));
        // One name per process and per thread: asking again wrote nothing.
        let names = |m: &str| -> Vec<(u64, u64, String)> {
            meta(&ev, m)
                .iter()
                .map(|e| {
                    let n = e["args"]["name"].as_str().unwrap().to_string();
                    (e["pid"].as_u64().unwrap(), e["tid"].as_u64().unwrap(), n)
                })
                .collect()
        };
        assert_eq!(
            names("process_name")[..3],
            [
                (100, 0, "vm0 pid 100 (sh)".to_string()),
                (102, 0, "vm0 pid 102 (cat)".to_string()),
                (span + 100, 0, "vm1 pid 100 (sh)".to_string()),
            ]
        );
        assert_eq!(names("process_name")[3].2, "guest vm0");
        assert_eq!(
            names("thread_name")[..4],
            [
                (100, 100, "sh".to_string()),
                (100, 101, "sh".to_string()),
                (102, 102, "cat".to_string()),
                (span + 100, span + 100, "sh".to_string()),
            ]
        );
    }

    #[test]
    fn sort_indexes_order_guests_then_pids_then_tids() {
        let mut w = PerfettoWriter::new(Cursor::new(Vec::new())).unwrap();
        w.thread("vm0", 300, 301, "b").unwrap();
        w.thread("vm0", 20, 20, "a").unwrap();
        w.thread("vm1", 5, 5, "c").unwrap();
        w.add_stream(StreamKey::new("vm1", Some(1), Layer::Guest))
            .unwrap();
        w.add_stream(StreamKey::new("vm0", None, Layer::Vmm))
            .unwrap();
        let ev = events(w);
        let sorted = |m: &str, by: &str| -> Vec<u64> {
            let mut v: Vec<(i64, u64)> = meta(&ev, m)
                .iter()
                .map(|e| {
                    (
                        e["args"]["sort_index"].as_i64().unwrap(),
                        e[by].as_u64().unwrap(),
                    )
                })
                .collect();
            v.sort();
            v.into_iter().map(|(_, id)| id).collect()
        };
        let span = u64::from(GUEST_ID_SPAN);
        let vm1_vcpus = u64::from(SYNTHETIC_ID) + 2;
        // host, vm0's processes by pid, vm1's vCPUs, then vm1's processes.
        assert_eq!(
            sorted("process_sort_index", "pid"),
            [u64::from(HOST_PID), 20, 300, vm1_vcpus, span + 5]
        );
        // Within a process, threads by tid (vCPUs by number).
        let threads: Vec<(u64, i64)> = meta(&ev, "thread_sort_index")
            .iter()
            .map(|e| {
                (
                    e["tid"].as_u64().unwrap(),
                    e["args"]["sort_index"].as_i64().unwrap(),
                )
            })
            .collect();
        assert_eq!(threads[..3], [(301, 301), (20, 20), (span + 5, 5)]);
        assert_eq!(threads[3].1, 1);
    }

    #[test]
    fn a_new_comm_renames_the_thread_and_a_leader_its_process() {
        let mut w = PerfettoWriter::new(Cursor::new(Vec::new())).unwrap();
        // A child of the shell runs first as `sh`, then execs `cat`.
        let sh = w.thread("vm0", 7, 8, "sh").unwrap();
        let cat = w.thread("vm0", 7, 8, "cat").unwrap();
        assert_eq!(sh, cat, "one task, one track");
        w.thread("vm0", 7, 8, "cat").unwrap();
        // The leader, seen later, names the process.
        w.thread("vm0", 7, 7, "cat").unwrap();
        w.thread("vm0", 7, 7, "cat").unwrap();
        let ev = events(w);
        let names = |m: &str| -> Vec<String> {
            meta(&ev, m)
                .iter()
                .map(|e| e["args"]["name"].as_str().unwrap().to_string())
                .collect()
        };
        assert_eq!(names("thread_name"), ["sh", "cat", "cat"]);
        assert_eq!(names("process_name"), ["vm0 pid 7 (sh)", "vm0 pid 7 (cat)"]);
    }

    /// Two tasks on one vCPU: A blocks in `ksys_read` > `vfs_read` while B
    /// makes calls, then A's calls return. On A's and B's own tracks every
    /// two slices nest or are apart; on one vCPU track they would overlap.
    #[test]
    fn a_blocked_call_nests_on_its_own_track() {
        let mut w = PerfettoWriter::new(Cursor::new(Vec::new())).unwrap();
        let a = w.thread("vm0", 10, 10, "cat").unwrap().unwrap();
        let b = w.thread("vm0", 11, 11, "cat").unwrap().unwrap();
        // (track, start, end, name), written at each return.
        let calls = [
            (a, 1_100, 9_000, "vfs_read"),
            (a, 1_000, 9_500, "ksys_read"),
            (b, 2_100, 11_000, "vfs_read"),
            (b, 2_000, 12_000, "ksys_read"),
        ];
        for (track, start, end, name) in calls {
            w.complete(track, start, end - start, name, &[]).unwrap();
        }
        let ev = events(w);
        let slices: Vec<(u64, f64, f64)> = ev
            .iter()
            .filter(|e| e["ph"] == "X")
            .map(|e| {
                let ts = e["ts"].as_f64().unwrap();
                (
                    e["tid"].as_u64().unwrap(),
                    ts,
                    ts + e["dur"].as_f64().unwrap(),
                )
            })
            .collect();
        assert_eq!(slices.len(), 4);
        let nest_or_apart = |x: &(u64, f64, f64), y: &(u64, f64, f64)| {
            let inside = |p: &(u64, f64, f64), q: &(u64, f64, f64)| p.1 >= q.1 && p.2 <= q.2;
            x.2 <= y.1 || y.2 <= x.1 || inside(x, y) || inside(y, x)
        };
        for x in &slices {
            for y in &slices {
                if x.0 == y.0 {
                    assert!(nest_or_apart(x, y), "{x:?} and {y:?} overlap");
                }
            }
        }
        // The same calls on one track would not nest.
        assert!(!nest_or_apart(&slices[0], &slices[3]));
        assert_eq!(
            slices.iter().map(|s| s.0).collect::<Vec<_>>(),
            [10, 10, 11, 11]
        );
    }

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
