//! Chrome trace-event JSON: parsed back with serde_json, track structure and
//! counts checked. (Whether ui.perfetto.dev draws it cannot be tested here.)

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value as Json;
use trace_formats::perfetto::PerfettoWriter;
use trace_formats::{Layer, StreamKey, Value};

#[test]
fn tracks_metadata_and_events() {
    let mut w = PerfettoWriter::new(Vec::new()).unwrap();
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
    let out = String::from_utf8(w.finish().unwrap()).unwrap();

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
