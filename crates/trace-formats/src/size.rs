//! Bytes per event: this crate's CTF layout against a fixed-size record
//! layout carrying the same fields, for the numbers in bench/RESULTS.md.
//!
//! The fixed-size model follows Xentrace's shape (fixed records, arguments
//! beyond the inline ones in extra words): a 32-byte base record (u64
//! timestamp, u32 event id, u32 cpu/stream, two u64 argument slots, unused
//! slots still written), plus one 8-byte extra word per further integer;
//! strings and byte arrays take a length word plus their bytes rounded up to
//! 8-byte words.

use crate::ctf::{self, Layout};
use crate::model::EventClass;
use crate::{Error, Value};

/// Size in bytes of one event in the fixed-size record layout.
pub fn fixed_record_bytes(values: &[Value<'_>]) -> usize {
    let mut ints = 0usize;
    let mut extra = 0;
    for v in values {
        match v {
            Value::U64(_) | Value::I64(_) | Value::Ptr(_) => ints += 1,
            Value::Str(s) => extra += 8 + (s.len() + 1).div_ceil(8) * 8,
            Value::Bytes(b) => extra += 8 + b.len().div_ceil(8) * 8,
        }
    }
    32 + ints.saturating_sub(2) * 8 + extra
}

/// Size in bytes of one CTF event (header and payload, no packet
/// overhead), `delta_ns` after the previous event of its packet, starting at
/// an offset aligned for any field (natural-layout padding varies with the
/// position; this gives the aligned case).
pub fn ctf_event_bytes(
    layout: Layout,
    class_id: u32,
    delta_ns: u64,
    class: &EventClass,
    values: &[Value<'_>],
) -> Result<usize, Error> {
    let ok = class.fields.len() == values.len()
        && class
            .fields
            .iter()
            .zip(values)
            .all(|((_, t), v)| *t == v.field_type());
    if !ok {
        return Err(Error::LayoutMismatch {
            event: class.name.clone(),
        });
    }
    let mut buf = Vec::with_capacity(64);
    ctf::encode_event(&mut buf, layout, 0, delta_ns, class_id, class, values);
    Ok(buf.len())
}
