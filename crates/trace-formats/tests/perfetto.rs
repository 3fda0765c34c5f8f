//! Chrome trace-event JSON: parsed back with serde_json, track structure and
//! counts checked. (Whether ui.perfetto.dev draws it cannot be tested here.)

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value as Json;
use trace_formats::perfetto::PerfettoWriter;
use trace_formats::{Layer, StreamKey, Value};

#[test]
fn tracks_metadata_and_events() {
    let mut w = PerfettoWriter::new(std::io::Cursor::new(Vec::new())).unwrap();
    let keys = [
        StreamKey::new("vm1", Some(0), Layer::Guest),
        StreamKey::new("vm1", Some(1), Layer::Guest),
        StreamKey::new("vm1", None, Layer::Vmm),
        StreamKey::new("vm2", Some(0), Layer::Guest),
        StreamKey::new("vm2", None, Layer::Host),
    ];
    let ids: Vec<_> = keys
        .iter()
        .map(|k| w.add_stream(k.clone()).unwrap())
        .collect();
    assert_eq!(
        w.add_stream(keys[0].clone()).unwrap(),
        ids[0],
        "same key, same track"
    );

    // Per track: i instants, then i complete slices, then one B/E pair.
    let base = 123_456_789_012_345_678u64; // large: exact fractions matter
    for (i, &s) in ids.iter().enumerate() {
        for k in 0..(i as u64 + 1) {
            let ts = base + k * 1_001;
            w.instant(
                s,
                ts,
                "kprobe:ksys_write",
                &[("fd", Value::U64(k)), ("comm", Value::Str("sh"))],
            )
            .unwrap();
            w.complete(s, ts + 10, 2_500, "ksys_read", &[("ret", Value::I64(-4))])
                .unwrap();
        }
        w.begin(
            s,
            base + 50_000,
            "vmexit",
            &[("buf", Value::Bytes(&[0xde, 0xad]))],
        )
        .unwrap();
        w.end(s, base + 50_999, "vmexit", &[]).unwrap();
    }
    let out = String::from_utf8(w.finish().unwrap().into_inner()).unwrap();

    // Timestamps are exact decimal microseconds, not rounded through f64.
    assert!(out.contains("\"ts\":123456789012345.678"), "{out}");
    assert!(out.contains("\"dur\":2.500"));

    let doc: Json = serde_json::from_str(&out).expect("valid JSON");
    assert_eq!(doc["displayTimeUnit"], "ns");
    let events = doc["traceEvents"].as_array().unwrap();

    let mut processes = BTreeMap::new();
    let mut threads = BTreeMap::new();
    let mut counts: BTreeMap<(u64, u64, String), usize> = BTreeMap::new();
    for e in events {
        let pid = e["pid"].as_u64().unwrap();
        let tid = e["tid"].as_u64().unwrap();
        let ph = e["ph"].as_str().unwrap().to_owned();
        match (ph.as_str(), e["name"].as_str().unwrap()) {
            ("M", "process_name") => {
                assert!(
                    processes
                        .insert(pid, e["args"]["name"].as_str().unwrap().to_owned())
                        .is_none()
                )
            }
            ("M", "thread_name") => {
                assert!(
                    threads
                        .insert((pid, tid), e["args"]["name"].as_str().unwrap().to_owned())
                        .is_none()
                )
            }
            ("M", _) => {}
            (ph, _) => {
                assert!(e["ts"].is_f64(), "ts with a fraction");
                if ph == "i" {
                    assert_eq!(e["s"], "t", "thread-scoped instant");
                    assert_eq!(e["args"]["comm"], "sh");
                }
                if ph == "X" {
                    assert_eq!(e["args"]["ret"], -4);
                }
                if ph == "B" {
                    assert_eq!(e["args"]["buf"], "dead");
                }
                *counts.entry((pid, tid, ph.to_owned())).or_default() += 1;
            }
        }
    }

    // One process per guest, plus one for the VMM and host layers.
    let names: BTreeSet<&str> = processes.values().map(String::as_str).collect();
    assert_eq!(names, BTreeSet::from(["guest vm1", "guest vm2", "host"]));
    let pid_of = |n: &str| *processes.iter().find(|(_, v)| *v == n).unwrap().0;
    let (vm1, vm2, host) = (pid_of("guest vm1"), pid_of("guest vm2"), pid_of("host"));

    // One named thread per stream, in the right process.
    let mut by_name: BTreeMap<(u64, &str), u64> = BTreeMap::new();
    for ((pid, tid), name) in &threads {
        assert!(by_name.insert((*pid, name.as_str()), *tid).is_none());
    }
    let want = [
        (vm1, "vcpu0"),
        (vm1, "vcpu1"),
        (host, "vm1 vmm"),
        (vm2, "vcpu0"),
        (host, "vm2 host"),
    ];
    assert_eq!(threads.len(), want.len());
    let tids: BTreeSet<u64> = threads.keys().map(|(_, t)| *t).collect();
    assert_eq!(tids.len(), want.len(), "tids unique across processes");

    for (i, key) in want.iter().enumerate() {
        let tid = by_name[key];
        let n = |ph: &str| {
            counts
                .get(&(key.0, tid, ph.to_owned()))
                .copied()
                .unwrap_or(0)
        };
        assert_eq!(
            (n("i"), n("X"), n("B"), n("E")),
            (i + 1, i + 1, 1, 1),
            "track {key:?}"
        );
    }
    // No event on a track without a name.
    for (pid, tid, _) in counts.keys() {
        assert!(threads.contains_key(&(*pid, *tid)));
    }
}

/// A disk of `capacity` bytes (which the test may grow): writes past it
/// go in part, then fail as a full disk does; bytes already written can be
/// overwritten.
struct Disk {
    data: Vec<u8>,
    pos: usize,
    capacity: std::rc::Rc<std::cell::Cell<usize>>,
}

impl Disk {
    fn new(capacity: usize) -> (Disk, std::rc::Rc<std::cell::Cell<usize>>) {
        let cap = std::rc::Rc::new(std::cell::Cell::new(capacity));
        let disk = Disk {
            data: Vec::new(),
            pos: 0,
            capacity: cap.clone(),
        };
        (disk, cap)
    }
}

impl std::io::Write for Disk {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let room = self.capacity.get().max(self.data.len()) - self.pos;
        let n = buf.len().min(room);
        if n == 0 && !buf.is_empty() {
            return Err(std::io::ErrorKind::StorageFull.into());
        }
        let end = self.pos + n;
        if end > self.data.len() {
            self.data.resize(end, 0);
        }
        self.data[self.pos..end].copy_from_slice(&buf[..n]);
        self.pos = end;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl std::io::Seek for Disk {
    fn seek(&mut self, to: std::io::SeekFrom) -> std::io::Result<u64> {
        self.pos = match to {
            std::io::SeekFrom::Start(n) => n as usize,
            std::io::SeekFrom::End(d) => (self.data.len() as i64 + d) as usize,
            std::io::SeekFrom::Current(d) => (self.pos as i64 + d) as usize,
        };
        Ok(self.pos as u64)
    }
}

/// The events (not metadata) of a document, by their `i`.
fn event_numbers(doc: &[u8]) -> Vec<u64> {
    let doc: Json = serde_json::from_slice(doc).expect("valid JSON");
    doc["traceEvents"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["ph"] != "M")
        .map(|e| e["args"]["i"].as_u64().unwrap())
        .collect()
}

/// Writes `total` instants numbered 0.. on one track; `during(i, w)` runs
/// before each.
fn instants(
    disk: Disk,
    total: u64,
    mut during: impl FnMut(u64, &PerfettoWriter<Disk>),
) -> PerfettoWriter<Disk> {
    let mut w = PerfettoWriter::new(disk).unwrap();
    let s = w
        .add_stream(StreamKey::new("vm", Some(0), Layer::Guest))
        .unwrap();
    for i in 0..total {
        during(i, &w);
        w.instant(s, 1_000 + i, "kprobe:f", &[("i", Value::U64(i))])
            .unwrap();
    }
    w
}

/// A disk that fills up: the file stays valid JSON holding the events
/// before the chunk that did not fit, every later event is counted lost,
/// and closing reports the error.
#[test]
fn a_full_disk_keeps_the_json_valid_and_counts_what_is_lost() {
    let (disk, _) = Disk::new(300_000);
    let total = 20_000;
    let mut w = instants(disk, total, |_, _| {});
    let e = w.close().unwrap_err();
    assert!(e.to_string().contains("no storage space"), "{e}");
    let (kept, lost) = (w.event_count(), w.lost_events());
    assert_eq!(kept + lost, total);
    assert!(kept > 1000 && lost > 1000, "{kept} kept, {lost} lost");
    let doc = w.into_inner().data;
    assert!(doc.len() <= 300_000);
    // The events before the first chunk that did not fit, every one whole;
    // a last chunk small enough for the bytes the failed one left may
    // follow (it needs no new space).
    let got = event_numbers(&doc);
    assert_eq!(got.len() as u64, kept);
    assert!(got.windows(2).all(|p| p[1] > p[0]), "in order");
    let prefix = got.iter().zip(0..).take_while(|(n, i)| **n == *i).count();
    let tail = &got[prefix..];
    assert!(prefix > 1000, "{prefix} events before the disk filled");
    assert!(
        tail.iter()
            .zip(total - tail.len() as u64..)
            .all(|(n, i)| *n == i),
        "only the last chunk after the gap: {tail:?}"
    );
}

/// Room again after a full disk: later chunks go in after the last
/// complete event; only the chunks that failed are missing, and counted.
#[test]
fn chunks_after_the_disk_has_room_again_are_kept() {
    let (disk, capacity) = Disk::new(100_000);
    let total = 20_000;
    let mut lost_while_full = 0;
    let mut w = instants(disk, total, |i, w| {
        if i == 10_000 {
            lost_while_full = w.lost_events();
            capacity.set(usize::MAX);
        }
    });
    assert!(w.close().is_err(), "the lost chunks are an error");
    let (kept, lost) = (w.event_count(), w.lost_events());
    assert_eq!(kept + lost, total);
    assert_eq!(lost, lost_while_full);
    let got = event_numbers(&w.into_inner().data);
    assert_eq!(got.len() as u64, kept);
    assert!(got.windows(2).all(|p| p[0] < p[1]));
    assert_eq!(got.last(), Some(&(total - 1)));
}

/// Integers a JavaScript viewer would round (beyond 2^53) are strings:
/// kernel pointers in hex, large signed values in decimal; the others stay
/// numbers.
#[test]
fn integers_beyond_2_pow_53_are_strings() {
    let mut w = PerfettoWriter::new(std::io::Cursor::new(Vec::new())).unwrap();
    let s = w
        .add_stream(StreamKey::new("vm0", Some(0), Layer::Guest))
        .unwrap();
    let safe = (1u64 << 53) - 1;
    w.instant(
        s,
        1,
        "kprobe:vfs_read",
        &[
            ("file", Value::U64(0xffff_8880_03a1_c000)),
            ("count", Value::U64(safe)),
            ("over", Value::U64(safe + 1)),
            ("neg", Value::I64(-(1i64 << 60))),
            ("small", Value::I64(-4)),
        ],
    )
    .unwrap();
    let out = String::from_utf8(w.finish().unwrap().into_inner()).unwrap();
    let doc: Json = serde_json::from_str(&out).unwrap();
    let args = &doc["traceEvents"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["ph"] == "i")
        .unwrap()["args"];
    assert_eq!(args["file"], "0xffff888003a1c000");
    assert_eq!(args["count"], safe);
    assert_eq!(args["over"], "0x20000000000000");
    assert_eq!(args["neg"], "-1152921504606846976");
    assert_eq!(args["small"], -4);
}
