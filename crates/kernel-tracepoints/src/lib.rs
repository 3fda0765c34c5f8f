//! Guest kernel tracepoints served from outside the guest.
//!
//! A disabled tracepoint costs the kernel one 5-byte no-op at each place it
//! is called: a static branch (`__jump_table` entry) whose target is an
//! out-of-line block that loads the tracepoint's probe list, puts the
//! tracepoint's arguments in argument registers and calls its static call
//! `__SCT__tp_func_EVENT`. Enabling it from inside would flip that branch,
//! which means writing guest memory; vmprobe does not. Instead:
//!
//! - **Where it fires**: a breakpoint on each such no-op ([`EventSite`]),
//!   found in the image's jump table by the tracepoint's key.
//! - **What it records**: at a hit, the kernel's own code is *emulated*
//!   ([`serve`], feature `serve`): the out-of-line block, with the probe
//!   list's pointer faked in a private overlay, up to its static call; then
//!   the event class's `trace_event_raw_event_CLASS` (the code tracefs runs
//!   for the event), with `trace_event_buffer_reserve` answering a private
//!   buffer, up to `trace_event_buffer_commit`. The buffer then holds the
//!   record exactly as the guest's tracefs would have it, laid out as BTF's
//!   `struct trace_event_raw_CLASS` ([`EventField`]). Every read goes to
//!   guest memory, every write to the overlay: the guest is not changed.
//!
//! [`EventRecipe`] is what a hit needs, found before booting from the image
//! (feature `images`: symbols, `.rodata`/`.data` and BTF) and sent to the
//! backends (also into QEMU, to vmprobe's plugin) as plain data.

#![forbid(unsafe_code)]

#[cfg(feature = "images")]
mod find;
#[cfg(feature = "serve")]
mod serve;

#[cfg(feature = "images")]
pub use find::{EventFinder, FindError, SECTIONS};
#[cfg(feature = "serve")]
pub use serve::{LineCache, ServeError, registers, serve};

/// Everything a hit on a guest tracepoint needs, at link-time addresses
/// until [`EventRecipe::slid`].
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct EventRecipe {
    pub system: String,
    pub event: String,
    /// Every place the tracepoint is called.
    pub sites: Vec<EventSite>,
    /// `&__tracepoint_EVENT.funcs`: the probe list the block loads.
    pub funcs: u64,
    /// Offset of `data` in `struct tracepoint_func` (what the block passes
    /// as the first argument: the event's `trace_event_file` for tracefs).
    pub func_data_offset: u64,
    /// `trace_event_raw_event_CLASS`.
    pub raw_event: u64,
    pub reserve: u64,
    pub commit: u64,
    /// The record's fields, as tracefs's `format` lists them after the
    /// common ones.
    pub fields: Vec<EventField>,
}

/// One call of a tracepoint: the static branch's no-op and its block.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct EventSite {
    pub code: u64,
    /// Length of the static branch's instruction (a 5- or 2-byte no-op,
    /// or a jump where the kernel has the event on).
    pub len: u8,
    pub block: u64,
    /// The block's call of the tracepoint's static call (in the image:
    /// `call __SCT__tp_func_EVENT`). Where the guest has the event on,
    /// x86's inline static calls make it a call of whatever probe is
    /// registered, so the place, not the target, marks it.
    pub call_at: u64,
    /// The function the call is in (`__schedule`).
    pub func: String,
}

impl EventSite {
    /// Whether `bytes` (read at the site) are what the kernel itself may
    /// put there: a no-op of the site's length, or the jump to its block
    /// (the event switched on inside the guest, by its tracefs).
    pub fn is_own_branch(&self, bytes: &[u8]) -> bool {
        let len = usize::from(self.len);
        let Some(b) = bytes.get(..len) else {
            return false;
        };
        let nop = match len {
            5 => b == [0x0f, 0x1f, 0x44, 0x00, 0x00],
            2 => b == [0x66, 0x90],
            _ => false,
        };
        let rel = self.block.wrapping_sub(self.code + len as u64) as i64;
        let jump = match len {
            5 => b[0] == 0xe9 && i64::from(i32::from_le_bytes([b[1], b[2], b[3], b[4]])) == rel,
            2 => b[0] == 0xeb && i64::from(b[1] as i8) == rel,
            _ => false,
        };
        nop || jump
    }
}

/// A field of the record.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct EventField {
    pub name: String,
    /// The C type as tracefs prints it (`pid_t`, `char[16]`,
    /// `__data_loc char[]`).
    pub c_type: String,
    pub offset: u32,
    pub size: u32,
    pub signed: bool,
    pub kind: FieldKind,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum FieldKind {
    /// An integer of `size` bytes (1, 2, 4 or 8).
    Int,
    /// `char[N]`: a string of at most N bytes.
    Chars,
    /// `__data_loc char[]`: a u32 whose low half is the string's offset in
    /// the record and whose high half its length.
    DataLoc,
    /// Any other array or aggregate: raw bytes.
    Bytes,
}

/// A field's value in one record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FieldValue {
    /// Sign-extended to 64 bits when the field is signed.
    Int(u64),
    Str(String),
    Bytes(Vec<u8>),
}

/// The record of one hit, as the kernel's code wrote it (common fields
/// included, zero: vmprobe's own `pid`, `comm`, ... say the same).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record(pub Vec<u8>);

impl EventRecipe {
    /// `tracepoint:SYSTEM:EVENT`.
    pub fn name(&self) -> String {
        format!("tracepoint:{}:{}", self.system, self.event)
    }

    /// The recipe at run-time addresses, for a kernel slid by `slide`.
    pub fn slid(&self, slide: u64) -> EventRecipe {
        let s = |a: u64| a.wrapping_add(slide);
        EventRecipe {
            system: self.system.clone(),
            event: self.event.clone(),
            sites: self
                .sites
                .iter()
                .map(|site| EventSite {
                    code: s(site.code),
                    len: site.len,
                    block: s(site.block),
                    call_at: s(site.call_at),
                    func: site.func.clone(),
                })
                .collect(),
            funcs: s(self.funcs),
            func_data_offset: self.func_data_offset,
            raw_event: s(self.raw_event),
            reserve: s(self.reserve),
            commit: s(self.commit),
            fields: self.fields.clone(),
        }
    }

    pub fn field(&self, name: &str) -> Option<&EventField> {
        self.fields.iter().find(|f| f.name == name)
    }
}

impl EventField {
    /// The field as tracefs's `format` (and `bpftrace -lv`) declares it:
    /// `char prev_comm[16]`, `pid_t prev_pid`, `__data_loc char[] cmd`.
    pub fn declaration(&self) -> String {
        match self.c_type.find('[') {
            Some(i) if self.kind != FieldKind::DataLoc => {
                format!("{} {}{}", &self.c_type[..i], self.name, &self.c_type[i..])
            }
            _ => format!("{} {}", self.c_type, self.name),
        }
    }
}

impl Record {
    /// `field`'s value; bytes past the record's end read as zero (a record
    /// is as long as the kernel reserved).
    pub fn value(&self, field: &EventField) -> FieldValue {
        let at = |off: usize, len: usize| -> Vec<u8> {
            (off..off.saturating_add(len))
                .map(|i| self.0.get(i).copied().unwrap_or(0))
                .collect()
        };
        let text = |b: &[u8]| {
            let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
            String::from_utf8_lossy(&b[..end]).into_owned()
        };
        let off = field.offset as usize;
        match field.kind {
            FieldKind::Int => {
                let size = field.size.clamp(1, 8) as usize;
                let mut raw = [0u8; 8];
                raw[..size].copy_from_slice(&at(off, size));
                let mut v = u64::from_le_bytes(raw);
                let bits = size * 8;
                if field.signed && bits < 64 && v >> (bits - 1) & 1 == 1 {
                    v |= u64::MAX << bits;
                }
                FieldValue::Int(v)
            }
            FieldKind::Chars => FieldValue::Str(text(&at(off, field.size as usize))),
            FieldKind::DataLoc => {
                let raw = at(off, 4);
                let loc = u32::from_le_bytes([raw[0], raw[1], raw[2], raw[3]]);
                let (start, len) = ((loc & 0xffff) as usize, (loc >> 16) as usize);
                FieldValue::Str(text(&at(start, len)))
            }
            FieldKind::Bytes => FieldValue::Bytes(at(off, field.size as usize)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(name: &str, offset: u32, size: u32, signed: bool, kind: FieldKind) -> EventField {
        EventField {
            name: name.into(),
            c_type: String::new(),
            offset,
            size,
            signed,
            kind,
        }
    }

    #[test]
    fn a_site_accepts_only_its_own_no_op_or_jump() {
        let site = EventSite {
            code: 0x1000,
            len: 5,
            block: 0x1100,
            call_at: 0x1110,
            func: String::new(),
        };
        assert!(site.is_own_branch(&[0x0f, 0x1f, 0x44, 0x00, 0x00, 0xcc]));
        // jmp rel32 to 0x1100 from 0x1005.
        assert!(site.is_own_branch(&[0xe9, 0xfb, 0x00, 0x00, 0x00]));
        assert!(!site.is_own_branch(&[0xe9, 0xfc, 0x00, 0x00, 0x00]));
        assert!(!site.is_own_branch(&[0xcc, 0x1f, 0x44, 0x00, 0x00]));
        assert!(!site.is_own_branch(&[0x0f]));
        let short = EventSite {
            len: 2,
            block: 0x1010,
            ..site
        };
        assert!(short.is_own_branch(&[0x66, 0x90]));
        assert!(short.is_own_branch(&[0xeb, 0x0e]));
        assert!(!short.is_own_branch(&[0xeb, 0x0f]));
    }

    #[test]
    fn values_are_read_as_tracefs_lays_them_out() {
        let mut r = vec![0u8; 40];
        r[8..12].copy_from_slice(&(-100i32).to_le_bytes());
        r[12..16].copy_from_slice(&7u32.to_le_bytes());
        r[16..20].copy_from_slice(b"sh\0x");
        // __data_loc: offset 32, length 5.
        r[24..28].copy_from_slice(&(32u32 | 5 << 16).to_le_bytes());
        r[32..37].copy_from_slice(b"vda\0\0");
        let r = Record(r);
        let v = |f: EventField| r.value(&f);
        assert_eq!(
            v(field("a", 8, 4, true, FieldKind::Int)),
            FieldValue::Int(-100i64 as u64)
        );
        assert_eq!(
            v(field("b", 12, 4, false, FieldKind::Int)),
            FieldValue::Int(7)
        );
        assert_eq!(
            v(field("c", 16, 4, false, FieldKind::Chars)),
            FieldValue::Str("sh".into())
        );
        assert_eq!(
            v(field("d", 24, 4, false, FieldKind::DataLoc)),
            FieldValue::Str("vda".into())
        );
        // Past the end: zero, not a panic.
        assert_eq!(
            v(field("e", 38, 8, true, FieldKind::Int)),
            FieldValue::Int(0)
        );
        assert_eq!(
            v(field("f", u32::MAX, 8, false, FieldKind::Bytes)),
            FieldValue::Bytes(vec![0; 8])
        );
    }
}
