//! CTF 1.8 writer: a plain-text TSDL `metadata` file plus one binary file
//! per stream, following LTTng's conventions so that babeltrace2 and Trace
//! Compass read it.
//!
//! Long file: the TSDL metadata and the binary packets it describes are
//! written here together, so a change to a field's layout and its
//! declaration stay side by side (babeltrace2 rejects any mismatch).
//!
//! No crate writes CTF 1.8: crates.io has readers/parsers (e.g.
//! `barectf-parser`, for barectf's output) and bindings to the C
//! babeltrace2 library, but no writer; `cargo search` could not be run from
//! here (the registry mirror has no search API). So the binary layout and
//! the TSDL are hand-written, and tested against babeltrace2.
//!
//! Layout of a stream file: packets, each
//! - packet header (LTTng's): `magic` 0xC1FC1FC1, trace `uuid`, `stream_id`
//!   (always 0: one stream class), `stream_instance_id` (the [`StreamId`]);
//! - packet context (LTTng's): `timestamp_begin`, `timestamp_end`,
//!   `content_size`, `packet_size`, `packet_seq_num`, `events_discarded`
//!   (cumulative per stream, as LTTng), `cpu_id` (the vCPU, 0 when none),
//!   plus `guest_id` (an index into the `guest_N` env entries), `layer` and
//!   `has_vcpu`, so a stream's identity is in every packet at no per-event cost;
//! - events: LTTng's compact header (5-bit id and the low 27 bits of the
//!   timestamp in one 32-bit word; id 31 selects the extended header with a
//!   32-bit id and full 64-bit timestamp, used for ids >= 31 and whenever
//!   2^27 ns (134 ms) or more passed since the previous event of the packet),
//!   then the payload. No padding to a record size.
//!
//! Packets are built in memory and written whole when they reach
//! [`CtfOptions::packet_bytes`] (a target: the event that crosses it stays in
//! the packet), so `packet_size` equals `content_size` and nothing is padded.
//! The metadata file is rewritten (atomically) before any packet that needs
//! a class or stream it did not describe yet, so the files on disk are
//! always readable up to the last packet written.
//!
//! A packet that cannot be written (disk full) is cut off the file and its
//! events are counted in `events_discarded`, as are the caller's drops
//! ([`CtfWriter::add_discarded`]); the first error is kept
//! ([`CtfWriter::io_error`]). [`CtfWriter::close`] makes the trace state
//! every discarded event: when even the small packet carrying the count
//! cannot be written, the stream's last packet is given up to make room
//! (its events counted too), so that what the trace says is discarded is
//! what was lost.

use std::fs::{self, File};
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use uuid::Uuid;

use crate::model::{ClassId, ClockOffset, EventClass, FieldType, Schema, StreamId, StreamKey};
use crate::{Error, Layer, Value};

/// CTF packet magic number.
pub const MAGIC: u32 = 0xC1FC_1FC1;
/// Largest id a compact event header can carry; 31 means "extended".
const COMPACT_MAX_ID: u32 = 30;
const EXTENDED_ID: u8 = 31;
const COMPACT_TS_BITS: u32 = 27;
/// Bytes of packet header (32) plus packet context (56 + 8).
pub const PACKET_PREAMBLE_BYTES: usize = 88;

/// How integers are aligned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// Every field byte-aligned (`align = 8` bits), as LTTng does on x86
    /// (efficient unaligned access): smallest files, no padding at all.
    Packed,
    /// Integers aligned to their size (`align = size`), padding before them
    /// as CTF requires: what readers that map files directly prefer.
    Natural,
}

impl Layout {
    /// Alignment in bytes of an integer of `size` bytes.
    fn align(self, size: usize) -> usize {
        match self {
            Layout::Packed => 1,
            Layout::Natural => size,
        }
    }
}

/// Options of a CTF trace.
#[derive(Clone, Debug)]
pub struct CtfOptions {
    pub layout: Layout,
    /// Target packet size in bytes (default 64 KiB).
    pub packet_bytes: usize,
    /// Recorded once, as the clock class offset, so viewers show real dates.
    pub clock: ClockOffset,
    /// Extra `env` entries (e.g. `hostname`); keys must be C identifiers.
    pub env: Vec<(String, String)>,
}

impl CtfOptions {
    pub fn new(clock: ClockOffset) -> Self {
        CtfOptions {
            layout: Layout::Packed,
            packet_bytes: 64 * 1024,
            clock,
            env: Vec::new(),
        }
    }
}

struct Stream {
    key: StreamKey,
    guest_id: u16,
    path: PathBuf,
    file: File,
    /// The packet being built; empty when no packet is open.
    buf: Vec<u8>,
    ts_begin: u64,
    last_ts: u64,
    seq: u64,
    /// Events discarded on the stream so far (the caller's and lost
    /// packets'), and the count the last packet on disk states.
    discarded: u64,
    discarded_written: u64,
    events: u64,
    /// Events in the open packet (counted as discarded if it cannot be written).
    packet_events: u64,
    /// Bytes of complete packets in the file: where a failed write is cut
    /// back to, so that the file always ends on a packet boundary.
    written: u64,
    /// Events in the packets on disk.
    written_events: u64,
    /// The last packet on disk, which [`CtfWriter::close`] may give up.
    last: Option<LastPacket>,
}

#[derive(Clone, Copy)]
struct LastPacket {
    start: u64,
    events: u64,
    /// The discarded count the packet before it states.
    discarded_before: u64,
}

/// Events of a trace, once it is closed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CtfTotals {
    /// In the stream files.
    pub events: u64,
    /// Stated as discarded by the trace (`events_discarded`).
    pub discarded: u64,
    /// Lost without the trace saying so (the disk did not even take the
    /// packet carrying the count, or the metadata).
    pub unstated: u64,
}

impl Stream {
    /// Appends `buf` (a packet of `events` events; its preamble is filled
    /// in here) stating `discarded`. On failure the file is cut back to its
    /// last whole packet.
    fn put(
        &mut self,
        uuid: &[u8; 16],
        index: usize,
        buf: &mut [u8],
        (begin, end): (u64, u64),
        discarded: u64,
        events: u64,
    ) -> std::io::Result<()> {
        let bits = buf.len() as u64 * 8;
        buf[0..4].copy_from_slice(&MAGIC.to_le_bytes());
        buf[4..20].copy_from_slice(uuid);
        buf[20..24].copy_from_slice(&0u32.to_le_bytes());
        buf[24..32].copy_from_slice(&(index as u64).to_le_bytes());
        buf[32..40].copy_from_slice(&begin.to_le_bytes());
        buf[40..48].copy_from_slice(&end.to_le_bytes());
        buf[48..56].copy_from_slice(&bits.to_le_bytes()); // content_size
        buf[56..64].copy_from_slice(&bits.to_le_bytes()); // packet_size
        buf[64..72].copy_from_slice(&self.seq.to_le_bytes());
        buf[72..80].copy_from_slice(&discarded.to_le_bytes());
        buf[80..84].copy_from_slice(&self.key.vcpu.unwrap_or(0).to_le_bytes());
        buf[84..86].copy_from_slice(&self.guest_id.to_le_bytes());
        buf[86] = layer_code(self.key.layer);
        buf[87] = self.key.vcpu.is_some() as u8;
        if let Err(e) = self.file.write_all(buf) {
            self.cut_to(self.written);
            return Err(e);
        }
        self.last = Some(LastPacket {
            start: self.written,
            events,
            discarded_before: self.discarded_written,
        });
        self.written += buf.len() as u64;
        self.written_events += events;
        self.seq += 1;
        self.discarded_written = discarded;
        Ok(())
    }

    fn cut_to(&mut self, len: u64) {
        let _ = self.file.set_len(len);
        let _ = self.file.seek(SeekFrom::Start(len));
    }

    /// Gives up the last packet on disk, counting its events as discarded.
    fn drop_last_packet(&mut self) -> bool {
        let Some(last) = self.last.take() else {
            return false;
        };
        self.cut_to(last.start);
        self.written = last.start;
        self.written_events -= last.events;
        self.discarded += last.events;
        self.discarded_written = last.discarded_before;
        self.seq -= 1;
        true
    }
}

/// Writes one CTF trace directory.
pub struct CtfWriter {
    dir: PathBuf,
    uuid: Uuid,
    clock_uuid: Uuid,
    opts: CtfOptions,
    schema: Schema,
    streams: Vec<Stream>,
    guests: Vec<String>,
    /// Number of classes and streams the metadata on disk describes.
    described: (usize, usize),
    /// The first error writing a packet or the metadata.
    error: Option<Error>,
    finished: bool,
}

impl CtfWriter {
    /// Creates `dir` (and parents) and writes an initial metadata file.
    pub fn create(dir: impl AsRef<Path>, opts: CtfOptions) -> Result<Self, Error> {
        let dir = dir.as_ref().to_path_buf();
        fs::create_dir_all(&dir).map_err(|source| Error::Io {
            path: dir.clone(),
            source,
        })?;
        for (k, _) in &opts.env {
            if !is_identifier(k) {
                return Err(Error::InvalidName(k.clone()));
            }
        }
        let mut w = CtfWriter {
            dir,
            uuid: Uuid::new_v4(),
            clock_uuid: Uuid::new_v4(),
            opts,
            schema: Schema::new(),
            streams: Vec::new(),
            guests: Vec::new(),
            described: (usize::MAX, usize::MAX),
            error: None,
            finished: false,
        };
        w.write_metadata()?;
        Ok(w)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn uuid(&self) -> Uuid {
        self.uuid
    }

    pub fn schema(&self) -> &Schema {
        &self.schema
    }

    /// Adds a stream (its file is created now); the same key twice gives
    /// the same id.
    pub fn add_stream(&mut self, key: StreamKey) -> Result<StreamId, Error> {
        if let Some(i) = self.streams.iter().position(|s| s.key == key) {
            return Ok(StreamId(i as u32));
        }
        let guest_id = match self.guests.iter().position(|g| *g == key.guest) {
            Some(i) => i,
            None => {
                self.guests.push(key.guest.clone());
                self.guests.len() - 1
            }
        } as u16;
        let id = self.streams.len() as u32;
        let mut name: String = key
            .guest
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        name.push('_');
        name.push_str(key.layer.as_str());
        if let Some(v) = key.vcpu {
            name.push_str(&format!("_vcpu{v}"));
        }
        if self
            .streams
            .iter()
            .any(|s| s.path.file_name() == Some(name.as_ref()))
        {
            name.push_str(&format!("_{id}"));
        }
        let path = self.dir.join(name);
        let file = File::create(&path).map_err(|source| Error::Io {
            path: path.clone(),
            source,
        })?;
        self.streams.push(Stream {
            key,
            guest_id,
            path,
            file,
            buf: Vec::new(),
            ts_begin: 0,
            last_ts: 0,
            seq: 0,
            discarded: 0,
            discarded_written: 0,
            events: 0,
            packet_events: 0,
            written: 0,
            written_events: 0,
            last: None,
        });
        Ok(StreamId(id))
    }

    /// Declares an event class up front (or returns its id).
    pub fn declare(&mut self, class: EventClass) -> Result<ClassId, Error> {
        self.schema.declare(class)
    }

    /// Writes one event of a declared class; `values` follow its layout.
    /// Timestamps must not go backwards within a stream. An error means
    /// the event was not taken; a packet that cannot be written is counted
    /// as discarded instead (see [`io_error`](Self::io_error)).
    pub fn write(
        &mut self,
        stream: StreamId,
        ts_ns: u64,
        class: ClassId,
        values: &[Value<'_>],
    ) -> Result<(), Error> {
        let layout = self.opts.layout;
        let ec = self.schema.check(class, values)?;
        validate_values(ec, values)?;
        let st = self
            .streams
            .get_mut(stream.0 as usize)
            .ok_or(Error::UnknownStream(stream.0))?;
        if st.events > 0 && ts_ns < st.last_ts {
            return Err(Error::TimestampRegression {
                ts: ts_ns,
                last: st.last_ts,
            });
        }
        if st.buf.is_empty() {
            st.buf.resize(PACKET_PREAMBLE_BYTES, 0);
            st.ts_begin = ts_ns;
            st.last_ts = ts_ns;
        }
        encode_event(&mut st.buf, layout, st.last_ts, ts_ns, class.0, ec, values);
        st.last_ts = ts_ns;
        st.events += 1;
        st.packet_events += 1;
        if st.buf.len() >= self.opts.packet_bytes {
            self.close_packet_or_count(stream.0 as usize);
        }
        Ok(())
    }

    /// Writes an event by name, declaring its class on first use from the
    /// values' names and types; later events of that name must match.
    pub fn write_named(
        &mut self,
        stream: StreamId,
        ts_ns: u64,
        name: &str,
        fields: &[(&str, Value<'_>)],
    ) -> Result<(), Error> {
        let class = self.schema.declare_from_values(name, fields)?;
        // Small events are the common case: avoid an allocation for them.
        let mut small = [Value::U64(0); 8];
        if fields.len() <= small.len() {
            for (slot, (_, v)) in small.iter_mut().zip(fields) {
                *slot = *v;
            }
            self.write(stream, ts_ns, class, &small[..fields.len()])
        } else {
            let values: Vec<Value<'_>> = fields.iter().map(|(_, v)| *v).collect();
            self.write(stream, ts_ns, class, &values)
        }
    }

    /// Counts `n` events the caller had to drop on `stream`; they are
    /// reported in the `events_discarded` field (a running total, as in
    /// LTTng) of the stream's open or next packet (an empty one at
    /// [`flush`](Self::flush) if need be); readers show the drop between the
    /// previous packet's end and that packet's end.
    pub fn add_discarded(&mut self, stream: StreamId, n: u64) -> Result<(), Error> {
        let i = stream.0 as usize;
        let st = self
            .streams
            .get_mut(i)
            .ok_or(Error::UnknownStream(stream.0))?;
        st.discarded += n;
        Ok(())
    }

    /// Events written to `stream` so far.
    pub fn event_count(&self, stream: StreamId) -> u64 {
        self.streams.get(stream.0 as usize).map_or(0, |s| s.events)
    }

    /// Events of `stream` counted as discarded: added by the caller, or lost
    /// with a packet that could not be written (disk full).
    pub fn discarded_count(&self, stream: StreamId) -> u64 {
        self.streams
            .get(stream.0 as usize)
            .map_or(0, |s| s.discarded)
    }

    /// The first error writing a packet or the metadata: what the
    /// discarded events beyond the caller's were lost to.
    pub fn io_error(&self) -> Option<&Error> {
        self.error.as_ref()
    }

    /// What the trace holds and states, and what it lost without saying
    /// (final after [`close`](Self::close)).
    pub fn totals(&self) -> CtfTotals {
        let mut t = CtfTotals::default();
        for st in &self.streams {
            t.events += st.written_events;
            t.discarded += st.discarded_written;
            t.unstated += st.discarded - st.discarded_written + st.packet_events;
        }
        t
    }

    /// Packets written to `stream` so far.
    pub fn packet_count(&self, stream: StreamId) -> u64 {
        self.streams.get(stream.0 as usize).map_or(0, |s| s.seq)
    }

    /// Path of `stream`'s file.
    pub fn stream_path(&self, stream: StreamId) -> Option<&Path> {
        self.streams
            .get(stream.0 as usize)
            .map(|s| s.path.as_path())
    }

    /// Closes every open packet and writes it out, with an empty packet
    /// for a stream whose discarded count changed. The error is the first
    /// of this flush; packets that failed are counted as discarded.
    pub fn flush(&mut self) -> Result<(), Error> {
        let mut first = None;
        for i in 0..self.streams.len() {
            let st = &mut self.streams[i];
            if st.buf.is_empty() && st.discarded != st.discarded_written {
                st.buf.resize(PACKET_PREAMBLE_BYTES, 0);
                st.ts_begin = st.last_ts;
            }
            if !st.buf.is_empty()
                && let Err(e) = self.close_packet(i)
            {
                // Still buffered (the metadata could not be written): lost.
                let st = &mut self.streams[i];
                st.discarded += st.packet_events;
                st.packet_events = 0;
                st.buf.clear();
                first.get_or_insert(e);
            }
        }
        match (first, self.write_metadata_if_stale()) {
            (Some(e), _) | (None, Err(e)) => Err(e),
            (None, Ok(())) => Ok(()),
        }
    }

    /// Writes everything out and makes the trace state every discarded
    /// event, giving up a stream's last packet where the disk has no room
    /// for the count (see the module's documentation); then
    /// [`totals`](Self::totals) is final. Returns the trace's first write
    /// error, if it had any.
    pub fn close(&mut self) -> Result<(), Error> {
        self.finished = true;
        if let Err(e) = self.flush() {
            self.error.get_or_insert(e);
        }
        for i in 0..self.streams.len() {
            let unstated = |st: &Stream| st.discarded != st.discarded_written;
            // A last packet that could not be written leaves its count to
            // a small packet of its own; only where even that has no room
            // is the stream's last packet on disk given up.
            if unstated(&self.streams[i]) {
                let _ = self.flush();
            }
            if unstated(&self.streams[i]) && self.streams[i].drop_last_packet() {
                let _ = self.flush();
            }
        }
        for st in &self.streams {
            if let Err(source) = st.file.sync_data() {
                self.error.get_or_insert(Error::Io {
                    path: st.path.clone(),
                    source,
                });
            }
        }
        match &self.error {
            None => Ok(()),
            Some(e) => Err(Error::Write(std::io::Error::other(e.to_string()))),
        }
    }

    /// [`close`](Self::close)s the trace.
    pub fn finish(mut self) -> Result<(), Error> {
        self.close()
    }

    /// [`close_packet`](Self::close_packet), keeping its error for
    /// [`io_error`](Self::io_error) (its events are counted as discarded).
    fn close_packet_or_count(&mut self, i: usize) {
        if let Err(e) = self.close_packet(i) {
            self.error.get_or_insert(e);
        }
    }

    fn close_packet(&mut self, i: usize) -> Result<(), Error> {
        // On failure the packet stays buffered: it may need what the
        // metadata on disk does not describe yet.
        self.write_metadata_if_stale()?;
        let uuid = *self.uuid.as_bytes();
        let st = &mut self.streams[i];
        let io = |st: &Stream, source| Error::Io {
            path: st.path.clone(),
            source,
        };
        if st.seq == 0 && st.discarded > 0 {
            // Readers show a drop as the difference between two packets'
            // counts, never the first packet's: an empty one stating 0
            // goes first.
            let mut empty = [0u8; PACKET_PREAMBLE_BYTES];
            let at = (st.ts_begin, st.ts_begin);
            if let Err(source) = st.put(&uuid, i, &mut empty, at, 0, 0) {
                return Err(io(st, source));
            }
        }
        let mut buf = std::mem::take(&mut st.buf);
        let (at, events) = ((st.ts_begin, st.last_ts), st.packet_events);
        let put = st.put(&uuid, i, &mut buf, at, st.discarded, events);
        buf.clear();
        st.buf = buf;
        st.packet_events = 0;
        if let Err(source) = put {
            // Cut off (the file ends on a whole packet): counted, and
            // stated by a later packet.
            st.discarded += events;
            return Err(io(st, source));
        }
        Ok(())
    }

    fn write_metadata_if_stale(&mut self) -> Result<(), Error> {
        if self.described != (self.schema.classes().len(), self.streams.len()) {
            self.write_metadata()?;
        }
        Ok(())
    }

    fn write_metadata(&mut self) -> Result<(), Error> {
        let text = self.tsdl();
        let path = self.dir.join("metadata");
        let tmp = self.dir.join(".metadata.tmp");
        fs::write(&tmp, text).map_err(|source| {
            let _ = fs::remove_file(&tmp);
            Error::Io {
                path: tmp.clone(),
                source,
            }
        })?;
        fs::rename(&tmp, &path).map_err(|source| Error::Io {
            path: path.clone(),
            source,
        })?;
        self.described = (self.schema.classes().len(), self.streams.len());
        Ok(())
    }

    /// The TSDL text describing the trace as it stands.
    pub fn tsdl(&self) -> String {
        let l = self.opts.layout;
        let a = |bytes: usize| l.align(bytes) * 8;
        let mut s = String::new();
        s.push_str("/* CTF 1.8 */\n\n");
        s.push_str(&format!(
            "typealias integer {{ size = 8; align = 8; signed = false; }} := uint8_t;\n\
             typealias integer {{ size = 16; align = {}; signed = false; }} := uint16_t;\n\
             typealias integer {{ size = 32; align = {}; signed = false; }} := uint32_t;\n\
             typealias integer {{ size = 64; align = {}; signed = false; }} := uint64_t;\n\
             typealias integer {{ size = 5; align = 1; signed = false; }} := uint5_t;\n\n",
            a(2),
            a(4),
            a(8)
        ));
        s.push_str(&format!(
            "trace {{\n\tmajor = 1;\n\tminor = 8;\n\tuuid = \"{}\";\n\tbyte_order = le;\n\
             \tpacket.header := struct {{\n\t\tuint32_t magic;\n\t\tuint8_t uuid[16];\n\
             \t\tuint32_t stream_id;\n\t\tuint64_t stream_instance_id;\n\t}};\n}};\n\n",
            self.uuid
        ));
        s.push_str("env {\n\ttracer_name = \"vmprobe\";\n");
        s.push_str(&format!(
            "\ttracer_version = \"{}\";\n",
            env!("CARGO_PKG_VERSION")
        ));
        for (k, v) in &self.opts.env {
            s.push_str(&format!("\t{k} = {};\n", quote(v)));
        }
        for (i, g) in self.guests.iter().enumerate() {
            s.push_str(&format!("\tguest_{i} = {};\n", quote(g)));
        }
        s.push_str("};\n\n");
        let off = self.opts.clock.realtime_minus_monotonic_ns;
        s.push_str(&format!(
            "clock {{\n\tname = \"monotonic\";\n\tuuid = \"{}\";\n\
             \tdescription = \"CLOCK_MONOTONIC\";\n\tfreq = 1000000000;\n\tprecision = 1;\n\
             \toffset_s = {};\n\toffset = {};\n\tabsolute = FALSE;\n}};\n\n",
            self.clock_uuid,
            off.div_euclid(1_000_000_000),
            off.rem_euclid(1_000_000_000)
        ));
        s.push_str(&format!(
            "typealias integer {{ size = 27; align = 1; signed = false; map = clock.monotonic.value; }} := uint27_clock_monotonic_t;\n\
             typealias integer {{ size = 64; align = {}; signed = false; map = clock.monotonic.value; }} := uint64_clock_monotonic_t;\n\n",
            a(8)
        ));
        s.push_str(
            "struct packet_context {\n\tuint64_clock_monotonic_t timestamp_begin;\n\
             \tuint64_clock_monotonic_t timestamp_end;\n\tuint64_t content_size;\n\
             \tuint64_t packet_size;\n\tuint64_t packet_seq_num;\n\tuint64_t events_discarded;\n\
             \tuint32_t cpu_id;\n\tuint16_t guest_id;\n\
             \tenum : uint8_t { guest = 0, vmm = 1, host = 2 } layer;\n\tuint8_t has_vcpu;\n};\n\n",
        );
        s.push_str(&format!(
            "struct event_header_compact {{\n\tenum : uint5_t {{ compact = 0 ... 30, extended = 31 }} id;\n\
             \tvariant <id> {{\n\t\tstruct {{\n\t\t\tuint27_clock_monotonic_t timestamp;\n\t\t}} compact;\n\
             \t\tstruct {{\n\t\t\tuint32_t id;\n\t\t\tuint64_clock_monotonic_t timestamp;\n\t\t}} extended;\n\
             \t}} v;\n}} align({});\n\n",
            a(4)
        ));
        s.push_str(
            "stream {\n\tid = 0;\n\tevent.header := struct event_header_compact;\n\
             \tpacket.context := struct packet_context;\n};\n\n",
        );
        for (id, class) in self.schema.classes().iter().enumerate() {
            s.push_str(&format!(
                "event {{\n\tname = {};\n\tid = {id};\n\tstream_id = 0;\n\tfields := struct {{\n",
                quote(&class.name)
            ));
            for (name, ty) in &class.fields {
                // A leading underscore is stripped by readers (CTF 1.8 §7.1),
                // so field names may be TSDL keywords (`align`, `event`...).
                match ty {
                    FieldType::U64 | FieldType::I64 | FieldType::Ptr => s.push_str(&format!(
                        "\t\tinteger {{ size = 64; align = {}; signed = {}; base = {}; }} _{name};\n",
                        a(8),
                        *ty == FieldType::I64,
                        if *ty == FieldType::Ptr { 16 } else { 10 }
                    )),
                    FieldType::Str => {
                        s.push_str(&format!("\t\tstring {{ encoding = UTF8; }} _{name};\n"))
                    }
                    FieldType::Bytes => s.push_str(&format!(
                        "\t\tuint32_t __{name}_length;\n\
                         \t\tinteger {{ size = 8; align = 8; signed = false; base = 16; }} _{name}[__{name}_length];\n"
                    )),
                }
            }
            s.push_str("\t};\n};\n\n");
        }
        s
    }
}

impl Drop for CtfWriter {
    fn drop(&mut self) {
        // Best effort for a writer dropped on an error path: keep what was
        // recorded readable. `finish` reports errors; Drop cannot.
        if !self.finished {
            let _ = self.flush();
        }
    }
}

fn layer_code(l: Layer) -> u8 {
    match l {
        Layer::Guest => 0,
        Layer::Vmm => 1,
        Layer::Host => 2,
    }
}

fn is_identifier(s: &str) -> bool {
    let mut c = s.chars();
    c.next()
        .is_some_and(|f| f.is_ascii_alphabetic() || f == '_')
        && c.all(|f| f.is_ascii_alphanumeric() || f == '_')
}

/// A TSDL string literal.
fn quote(s: &str) -> String {
    let mut q = String::with_capacity(s.len() + 2);
    q.push('"');
    for c in s.chars() {
        match c {
            '"' => q.push_str("\\\""),
            '\\' => q.push_str("\\\\"),
            '\n' => q.push_str("\\n"),
            c if c.is_control() => q.push(' '),
            c => q.push(c),
        }
    }
    q.push('"');
    q
}

/// Checks what the encoder cannot represent, before anything is encoded,
/// so a rejected event leaves the packet untouched.
fn validate_values(class: &EventClass, values: &[Value<'_>]) -> Result<(), Error> {
    for ((name, _), v) in class.fields.iter().zip(values) {
        match v {
            Value::Str(s) if s.as_bytes().contains(&0) => {
                return Err(Error::NulInString {
                    field: name.clone(),
                });
            }
            Value::Bytes(b) if u32::try_from(b.len()).is_err() => {
                return Err(Error::TooLong {
                    field: name.clone(),
                });
            }
            _ => {}
        }
    }
    Ok(())
}

/// Pads `buf` with zeros to a multiple of `align` bytes (positions are
/// relative to the packet start, as CTF alignment is).
fn pad(buf: &mut Vec<u8>, align: usize) {
    let rem = buf.len() % align;
    if rem != 0 {
        buf.resize(buf.len() + align - rem, 0);
    }
}

/// Alignment (bytes) of an event payload struct: its largest member's.
fn payload_align(layout: Layout, class: &EventClass) -> usize {
    class
        .fields
        .iter()
        .map(|(_, t)| match t {
            FieldType::U64 | FieldType::I64 | FieldType::Ptr => layout.align(8),
            FieldType::Bytes => layout.align(4),
            FieldType::Str => 1,
        })
        .max()
        .unwrap_or(1)
}

/// Whether an event at `ts` may use the compact header after one at `last`:
/// the reader rebuilds the full value from the low 27 bits assuming at
/// most one wrap, which holds when less than 2^27 ns passed.
pub fn fits_compact(id: u32, last: u64, ts: u64) -> bool {
    id <= COMPACT_MAX_ID
        && ts
            .checked_sub(last)
            .is_some_and(|d| d < 1 << COMPACT_TS_BITS)
}

pub(crate) fn encode_event(
    buf: &mut Vec<u8>,
    layout: Layout,
    last: u64,
    ts: u64,
    id: u32,
    class: &EventClass,
    values: &[Value<'_>],
) {
    // The header struct is align(32) (natural) or align(8) (packed).
    pad(buf, layout.align(4));
    if fits_compact(id, last, ts) {
        let word = id | ((ts as u32 & ((1 << COMPACT_TS_BITS) - 1)) << 5);
        buf.extend_from_slice(&word.to_le_bytes());
    } else {
        // 5-bit tag 31; the extended struct's alignment is its largest
        // member's (the u64), then each member at its own alignment.
        buf.push(EXTENDED_ID);
        pad(buf, layout.align(8));
        buf.extend_from_slice(&id.to_le_bytes());
        pad(buf, layout.align(8));
        buf.extend_from_slice(&ts.to_le_bytes());
    }
    pad(buf, payload_align(layout, class));
    for v in values {
        match *v {
            Value::U64(x) | Value::Ptr(x) => {
                pad(buf, layout.align(8));
                buf.extend_from_slice(&x.to_le_bytes());
            }
            Value::I64(x) => {
                pad(buf, layout.align(8));
                buf.extend_from_slice(&x.to_le_bytes());
            }
            Value::Str(s) => {
                buf.extend_from_slice(s.as_bytes());
                buf.push(0);
            }
            Value::Bytes(b) => {
                pad(buf, layout.align(4));
                buf.extend_from_slice(&(b.len() as u32).to_le_bytes());
                buf.extend_from_slice(b);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tsdl_gives_signedness_and_base() {
        let tmp = std::env::temp_dir().join(format!("ctf-tsdl-{}", std::process::id()));
        let mut w = CtfWriter::create(&tmp, CtfOptions::new(ClockOffset::measure())).unwrap();
        w.declare(EventClass::new(
            "kprobe:ksys_write",
            &[
                ("fd", FieldType::U64),
                ("dfd", FieldType::I64),
                ("buf", FieldType::Ptr),
            ],
        ))
        .unwrap();
        let tsdl = w.tsdl();
        drop(w);
        std::fs::remove_dir_all(&tmp).ok();
        for line in [
            "integer { size = 64; align = 8; signed = false; base = 10; } _fd;",
            "integer { size = 64; align = 8; signed = true; base = 10; } _dfd;",
            "integer { size = 64; align = 8; signed = false; base = 16; } _buf;",
        ] {
            assert!(tsdl.contains(line), "{line} in\n{tsdl}");
        }
    }

    #[test]
    fn compact_header_limits() {
        assert!(fits_compact(30, 5, 5 + (1 << 27) - 1));
        assert!(!fits_compact(30, 5, 5 + (1 << 27)));
        assert!(!fits_compact(31, 5, 6));
        assert!(!fits_compact(0, 6, 5));
        // One wrap of the low 27 bits is fine when the delta is small.
        assert!(fits_compact(0, (1 << 27) - 1, 1 << 27));
    }
}
