//! Flight recorder: a bounded in-memory ring of encoded events, one per
//! stream, that keeps the newest events and counts the ones it overwrote.
//!
//! Not lock-free, on purpose: events come from the one thread that serves
//! the stub's stop replies (the VM is stopped for each hit, so hits arrive
//! one at a time), and a drain happens only on a trigger or at exit. A plain
//! `&mut self` ring, wrapped by the caller in a `Mutex` if another thread
//! must drain it, costs one uncontended lock per hit, nothing next to the
//! VM exit the hit already cost; an atomic ring would add complexity and
//! `unsafe` for nothing measurable.
//!
//! Storage is one `VecDeque<u8>` of records (no allocation per event once
//! it has grown): `len: u32, seq: u64, ts: u64, class: u32`, then each field
//! as a tag byte and its value. Capacity counts these bytes.

use std::collections::VecDeque;

use crate::ctf::CtfWriter;
use crate::model::{ClassId, OwnedValue, StreamId};
use crate::{Error, Value};

const RECORD_HEADER: usize = 4 + 8 + 8 + 4;

/// One event taken out of the ring.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RingEvent {
    /// Position in the stream since the ring was created (0, 1, 2, ...):
    /// the events of one drain have contiguous sequence numbers.
    pub seq: u64,
    pub ts_ns: u64,
    pub class: ClassId,
    pub values: Vec<OwnedValue>,
}

/// A bounded ring of one stream's newest events.
#[derive(Debug)]
pub struct EventRing {
    bytes: VecDeque<u8>,
    capacity: usize,
    next_seq: u64,
    /// Sequence number of the oldest event still held.
    first_seq: u64,
    overwritten: u64,
    refused: u64,
    scratch: Vec<u8>,
}

impl EventRing {
    /// A ring holding at most `capacity_bytes` of encoded events.
    pub fn new(capacity_bytes: usize) -> Self {
        EventRing {
            bytes: VecDeque::new(),
            capacity: capacity_bytes,
            next_seq: 0,
            first_seq: 0,
            overwritten: 0,
            refused: 0,
            scratch: Vec::new(),
        }
    }

    /// Appends an event, overwriting the oldest ones as needed. Returns its
    /// sequence number. An event larger than the whole ring is refused
    /// (and given no sequence number): the caller must count it as dropped.
    pub fn push(&mut self, ts_ns: u64, class: ClassId, values: &[Value<'_>]) -> Result<u64, Error> {
        let seq = self.next_seq;
        let mut r = std::mem::take(&mut self.scratch);
        r.clear();
        r.extend_from_slice(&[0; 4]);
        r.extend_from_slice(&seq.to_le_bytes());
        r.extend_from_slice(&ts_ns.to_le_bytes());
        r.extend_from_slice(&class.0.to_le_bytes());
        for v in values {
            match *v {
                Value::U64(x) => {
                    r.push(0);
                    r.extend_from_slice(&x.to_le_bytes());
                }
                Value::I64(x) => {
                    r.push(1);
                    r.extend_from_slice(&x.to_le_bytes());
                }
                Value::Ptr(x) => {
                    r.push(4);
                    r.extend_from_slice(&x.to_le_bytes());
                }
                Value::Str(s) => {
                    r.push(2);
                    r.extend_from_slice(&(s.len() as u32).to_le_bytes());
                    r.extend_from_slice(s.as_bytes());
                }
                Value::Bytes(b) => {
                    r.push(3);
                    r.extend_from_slice(&(b.len() as u32).to_le_bytes());
                    r.extend_from_slice(b);
                }
            }
        }
        let size = r.len();
        if size > self.capacity || u32::try_from(size).is_err() {
            self.scratch = r;
            return Err(Error::EventTooLarge {
                size,
                capacity: self.capacity,
            });
        }
        r[0..4].copy_from_slice(&(size as u32).to_le_bytes());
        while self.bytes.len() + size > self.capacity {
            let old = self.front_len();
            self.bytes.drain(..old);
            self.first_seq += 1;
            self.overwritten += 1;
        }
        self.bytes.extend(r.iter().copied());
        self.scratch = r;
        self.next_seq += 1;
        Ok(seq)
    }

    /// Events overwritten (lost from the window) since creation.
    pub fn overwritten(&self) -> u64 {
        self.overwritten
    }

    /// Events refused because larger than the ring.
    pub fn refused(&self) -> u64 {
        self.refused
    }

    /// Events currently held.
    pub fn len(&self) -> u64 {
        self.next_seq - self.first_seq
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes currently used.
    pub fn used_bytes(&self) -> usize {
        self.bytes.len()
    }

    pub fn capacity_bytes(&self) -> usize {
        self.capacity
    }

    /// Takes every held event out, oldest first, with no gaps; the ring is
    /// empty afterwards (sequence numbers and the overwritten count go on).
    pub fn drain(&mut self) -> Vec<RingEvent> {
        let mut out = Vec::with_capacity(self.len() as usize);
        let bytes: Vec<u8> = self.bytes.drain(..).collect();
        let mut p = 0;
        while p < bytes.len() {
            let len = u32_at(&bytes, p) as usize;
            out.push(decode(&bytes[p..p + len]));
            p += len;
        }
        self.first_seq = self.next_seq;
        out
    }

    fn front_len(&self) -> usize {
        let mut b = [0u8; 4];
        for (d, s) in b.iter_mut().zip(self.bytes.range(..4)) {
            *d = *s;
        }
        u32::from_le_bytes(b) as usize
    }
}

/// One [`EventRing`] per stream, indexed by the [`StreamId`]s of the
/// [`CtfWriter`] it is eventually drained into.
#[derive(Debug)]
pub struct FlightRecorder {
    rings: Vec<EventRing>,
    capacity: usize,
    /// Per ring, lost events (overwritten + refused) already reported.
    reported: Vec<u64>,
}

impl FlightRecorder {
    /// Each stream gets a ring of `capacity_bytes` (e.g. 1 MiB) on first use.
    pub fn new(capacity_bytes: usize) -> Self {
        FlightRecorder {
            rings: Vec::new(),
            capacity: capacity_bytes,
            reported: Vec::new(),
        }
    }

    /// Records an event on `stream`'s ring; see [`EventRing::push`].
    pub fn push(
        &mut self,
        stream: StreamId,
        ts_ns: u64,
        class: ClassId,
        values: &[Value<'_>],
    ) -> Result<u64, Error> {
        let i = stream.0 as usize;
        while self.rings.len() <= i {
            self.rings.push(EventRing::new(self.capacity));
            self.reported.push(0);
        }
        self.rings[i].push(ts_ns, class, values)
    }

    pub fn ring(&self, stream: StreamId) -> Option<&EventRing> {
        self.rings.get(stream.0 as usize)
    }

    /// Writes every held event to `ctf` (the same stream ids, classes
    /// declared there with the same ids) and empties the rings. Events lost
    /// since the last drain (overwritten or refused) are first added to the
    /// stream's discarded count, so the trace says what the window misses.
    /// Returns the number of events written; on an error the rest of the
    /// drained window is not written (the error says so).
    pub fn drain_into(&mut self, ctf: &mut CtfWriter) -> Result<u64, Error> {
        let mut written = 0;
        for (i, ring) in self.rings.iter_mut().enumerate() {
            let stream = StreamId(i as u32);
            let lost = ring.overwritten() + ring.refused();
            if lost > self.reported[i] {
                ctf.add_discarded(stream, lost - self.reported[i])?;
                self.reported[i] = lost;
            }
            for e in ring.drain() {
                let values: Vec<Value<'_>> = e.values.iter().map(OwnedValue::as_value).collect();
                ctf.write(stream, e.ts_ns, e.class, &values)?;
                written += 1;
            }
        }
        Ok(written)
    }
}

fn u32_at(b: &[u8], p: usize) -> u32 {
    u32::from_le_bytes(b[p..p + 4].try_into().expect("4 bytes"))
}

fn u64_at(b: &[u8], p: usize) -> u64 {
    u64::from_le_bytes(b[p..p + 8].try_into().expect("8 bytes"))
}

/// Decodes one record written by `push` (so its shape is trusted).
fn decode(r: &[u8]) -> RingEvent {
    let seq = u64_at(r, 4);
    let ts_ns = u64_at(r, 12);
    let class = ClassId(u32_at(r, 20));
    let mut values = Vec::new();
    let mut p = RECORD_HEADER;
    while p < r.len() {
        let tag = r[p];
        p += 1;
        let v = match tag {
            0 => {
                p += 8;
                OwnedValue::U64(u64_at(r, p - 8))
            }
            1 => {
                p += 8;
                OwnedValue::I64(u64_at(r, p - 8) as i64)
            }
            4 => {
                p += 8;
                OwnedValue::Ptr(u64_at(r, p - 8))
            }
            _ => {
                let n = u32_at(r, p) as usize;
                p += 4 + n;
                let data = &r[p - n..p];
                if tag == 2 {
                    OwnedValue::Str(String::from_utf8_lossy(data).into_owned())
                } else {
                    OwnedValue::Bytes(data.to_vec())
                }
            }
        };
        values.push(v);
    }
    RingEvent {
        seq,
        ts_ns,
        class,
        values,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_exactly_the_newest_events() {
        let cap = 1 << 20;
        let mut ring = EventRing::new(cap);
        let comm = "workload";
        let total = 200_000u64;
        for i in 0..total {
            let v = [
                Value::U64(i),
                Value::I64(-(i as i64)),
                Value::Ptr(!i),
                Value::Str(comm),
                Value::Bytes(&[1, 2, 3]),
            ];
            assert_eq!(ring.push(1000 + i * 10, ClassId(3), &v).unwrap(), i);
        }
        // Every record has the same size, so the window is exactly computable.
        let rec = RECORD_HEADER + 9 + 9 + 9 + 5 + comm.len() + 5 + 3;
        let held = (cap / rec) as u64;
        assert!(ring.used_bytes() <= cap);
        assert_eq!(ring.len(), held);
        assert_eq!(ring.overwritten(), total - held);
        let events = ring.drain();
        assert_eq!(events.len() as u64, held);
        for (k, e) in events.iter().enumerate() {
            let i = total - held + k as u64;
            assert_eq!(e.seq, i, "contiguous sequence numbers");
            assert_eq!(e.ts_ns, 1000 + i * 10);
            assert_eq!(e.class, ClassId(3));
            assert_eq!(
                e.values,
                vec![
                    OwnedValue::U64(i),
                    OwnedValue::I64(-(i as i64)),
                    OwnedValue::Ptr(!i),
                    OwnedValue::Str(comm.into()),
                    OwnedValue::Bytes(vec![1, 2, 3])
                ]
            );
        }
        assert!(ring.is_empty());
        // Sequence numbers go on after a drain.
        assert_eq!(ring.push(0, ClassId(0), &[]).unwrap(), total);
        assert_eq!(ring.drain()[0].seq, total);
    }

    #[test]
    fn variable_sizes_keep_a_contiguous_suffix() {
        let cap = 4096;
        let mut ring = EventRing::new(cap);
        let total = 10_000u64;
        let mut sizes = Vec::new();
        for i in 0..total {
            let s = "x".repeat((i % 97) as usize);
            ring.push(i, ClassId(1), &[Value::Str(&s)]).unwrap();
            sizes.push(RECORD_HEADER + 5 + s.len());
        }
        // The newest suffix of records that fits in `cap`.
        let mut used = 0;
        let mut held = 0u64;
        for s in sizes.iter().rev() {
            if used + s > cap {
                break;
            }
            used += s;
            held += 1;
        }
        assert_eq!(ring.used_bytes(), used);
        assert_eq!(ring.overwritten(), total - held);
        let events = ring.drain();
        assert_eq!(events.len() as u64, held);
        for w in events.windows(2) {
            assert_eq!(w[1].seq, w[0].seq + 1);
        }
        assert_eq!(events.last().unwrap().seq, total - 1);
        let last = &events.last().unwrap().values[0];
        assert_eq!(
            *last,
            OwnedValue::Str("x".repeat(((total - 1) % 97) as usize))
        );
    }

    #[test]
    fn oversized_event_is_refused_not_lost_silently() {
        let mut ring = EventRing::new(64);
        ring.push(1, ClassId(0), &[Value::U64(1)]).unwrap();
        let big = [0u8; 100];
        let err = ring.push(2, ClassId(0), &[Value::Bytes(&big)]).unwrap_err();
        assert!(matches!(err, Error::EventTooLarge { .. }));
        assert_eq!(ring.len(), 1, "the window is unchanged");
        assert_eq!(ring.overwritten(), 0);
    }
}
