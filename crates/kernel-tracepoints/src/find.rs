//! Finding a tracepoint's [`EventRecipe`] in a kernel image.
//!
//! What is read, all at link-time addresses:
//! - symbols: `__tracepoint_EVENT` (its static key and probe list),
//!   `event_EVENT` (its `struct trace_event_call`), `__SCT__tp_func_EVENT`,
//!   `__start___jump_table`/`__stop___jump_table`;
//! - `.rodata`/`.data`: the jump table's entries (x86-64's relative form:
//!   code and target as 32-bit offsets from their own fields, the key as a
//!   64-bit offset with the branch flags in its low bits), the event's class
//!   and its system's name;
//! - BTF: the offsets of the structures above, and the record's layout
//!   (`struct trace_event_raw_CLASS`).
//!
//! The image is untrusted: pointers are checked against the sections read,
//! strings and counts are bounded, and nothing here panics.

use crate::{EventField, EventRecipe, EventSite, FieldKind};
use kernel_btf::{Btf, Kind, TypeId};
use kernel_image::{KernelSections, KernelSymbols, Section};
use std::collections::HashMap;

/// The image sections [`EventFinder`] reads.
pub const SECTIONS: [&str; 3] = [".rodata", ".data", ".text"];
/// How far into a static branch's block its call must be: the blocks of
/// 6.1's tracepoint calls reach it within a dozen instructions.
const BLOCK_SCAN: usize = 48;
const JUMP_ENTRY: u64 = 16;
/// 6.1 has about 60,000 jump table entries.
const MAX_JUMP_ENTRIES: u64 = 1 << 20;
const MAX_NAME: usize = 64;
/// A record is at most a page (tracefs's own limit is smaller).
const MAX_FIELDS: usize = 64;

/// Why a tracepoint cannot be served: each a message that names it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FindError {
    #[error("the guest kernel has no tracepoint '{event}'")]
    NoSuchTracepoint { event: String },
    #[error(
        "'{event}' is a tracepoint without a trace event (no tracefs format, so no args): bpftrace reaches it only as a rawtracepoint"
    )]
    NoEvent { event: String },
    #[error("'{event}' is in system '{actual}', not '{asked}' (tracepoint:{actual}:{event})")]
    OtherSystem {
        event: String,
        asked: String,
        actual: String,
    },
    #[error("the guest kernel never calls tracepoint '{event}' (no static branch uses its key)")]
    NotCalled { event: String },
    #[error("the image lacks what serving '{event}' needs: {what}")]
    Missing { event: String, what: String },
}

/// Reads recipes out of one image.
pub struct EventFinder<'a> {
    symbols: &'a KernelSymbols,
    sections: Vec<&'a Section>,
    btf: &'a Btf,
    /// The jump table's sites by key, read once.
    by_key: std::sync::OnceLock<HashMap<u64, Vec<EventSite>>>,
}

impl<'a> EventFinder<'a> {
    /// `sections` must hold [`SECTIONS`].
    pub fn new(symbols: &'a KernelSymbols, sections: &'a KernelSections, btf: &'a Btf) -> Self {
        EventFinder {
            symbols,
            sections: SECTIONS.iter().filter_map(|n| sections.get(n)).collect(),
            btf,
            by_key: std::sync::OnceLock::new(),
        }
    }

    /// The recipe of `system:event`.
    pub fn find(&self, system: &str, event: &str) -> Result<EventRecipe, FindError> {
        let missing = |what: &str| FindError::Missing {
            event: event.to_string(),
            what: what.to_string(),
        };
        let sym = |name: String| self.symbols.lookup(&name).map(|s| s.addr);
        let tp =
            sym(format!("__tracepoint_{event}")).ok_or_else(|| FindError::NoSuchTracepoint {
                event: event.to_string(),
            })?;
        let call = sym(format!("event_{event}")).ok_or_else(|| FindError::NoEvent {
            event: event.to_string(),
        })?;
        let off = |s: &str, m: &str| {
            self.offset(s, m)
                .ok_or_else(|| missing(&format!("BTF member {s}.{m}")))
        };
        let class = self
            .u64(call + off("trace_event_call", "class")?)
            .ok_or_else(|| missing("the event's class pointer"))?;
        let actual = self
            .u64(class + off("trace_event_class", "system")?)
            .and_then(|p| self.cstr(p))
            .ok_or_else(|| missing("the event class's system name"))?;
        if actual != system {
            return Err(FindError::OtherSystem {
                event: event.to_string(),
                asked: system.to_string(),
                actual,
            });
        }
        let raw_event = self
            .u64(class + off("trace_event_class", "probe")?)
            .ok_or_else(|| missing("the event class's probe"))?;
        let class_name = self
            .symbols
            .symbolize(raw_event)
            .filter(|(_, o)| *o == 0)
            .and_then(|(s, _)| s.name.strip_prefix("trace_event_raw_event_"))
            .ok_or_else(|| missing("trace_event_raw_event_CLASS at the class's probe"))?
            .to_string();
        let fields = self
            .fields(&class_name)
            .ok_or_else(|| missing(&format!("BTF struct trace_event_raw_{class_name}")))?;
        let calls = self.call_targets(event);
        if calls.is_empty() {
            return Err(missing("__SCT__tp_func_EVENT or __traceiter_EVENT"));
        }
        let key = tp + off("tracepoint", "key")?;
        // The key's other static branches are `trace_EVENT_enabled()`
        // tests, not calls of it: only blocks that reach the call fire.
        let sites: Vec<EventSite> = self
            .sites(key)
            .into_iter()
            .filter_map(|s| {
                let call_at = self.block_call(s.block, &calls)?;
                Some(EventSite { call_at, ..s })
            })
            .collect();
        if sites.is_empty() {
            return Err(FindError::NotCalled {
                event: event.to_string(),
            });
        }
        Ok(EventRecipe {
            system: system.to_string(),
            event: event.to_string(),
            sites,
            funcs: tp + off("tracepoint", "funcs")?,
            func_data_offset: off("tracepoint_func", "data")?,
            raw_event,
            reserve: sym("trace_event_buffer_reserve".into())
                .ok_or_else(|| missing("trace_event_buffer_reserve"))?,
            commit: sym("trace_event_buffer_commit".into())
                .ok_or_else(|| missing("trace_event_buffer_commit"))?,
            fields,
        })
    }

    /// Every `SYSTEM:EVENT` of the image that the kernel calls (tracepoints
    /// with a trace event and a static branch), sorted.
    pub fn events(&self) -> Vec<(String, String)> {
        let (Some(class_off), Some(system_off), Some(key_off)) = (
            self.offset("trace_event_call", "class"),
            self.offset("trace_event_class", "system"),
            self.offset("tracepoint", "key"),
        ) else {
            return Vec::new();
        };
        let mut out: Vec<(String, String)> = self
            .symbols
            .iter()
            .filter_map(|s| {
                let event = s.name.strip_prefix("event_")?;
                if event.starts_with("class_") || !matches!(s.kind, 'd' | 'D') {
                    return None;
                }
                let tp = self.symbols.lookup(&format!("__tracepoint_{event}"))?;
                let calls = self.call_targets(event);
                if !self
                    .sites(tp.addr + key_off)
                    .iter()
                    .any(|s| self.block_call(s.block, &calls).is_some())
                {
                    return None;
                }
                let class = self.u64(s.addr + class_off)?;
                let system = self.cstr(self.u64(class + system_off)?)?;
                Some((system, event.to_string()))
            })
            .collect();
        out.sort();
        out.dedup();
        out
    }

    /// The static branches keyed by the tracepoint's key at `key`.
    fn sites(&self, key: u64) -> Vec<EventSite> {
        self.by_key
            .get_or_init(|| self.jump_table())
            .get(&key)
            .cloned()
            .unwrap_or_default()
    }

    /// Every jump table entry's site, by key.
    fn jump_table(&self) -> HashMap<u64, Vec<EventSite>> {
        let mut by_key: HashMap<u64, Vec<EventSite>> = HashMap::new();
        let (Some(start), Some(stop)) = (
            self.symbols.lookup("__start___jump_table"),
            self.symbols.lookup("__stop___jump_table"),
        ) else {
            return by_key;
        };
        let count = (stop.addr.saturating_sub(start.addr) / JUMP_ENTRY).min(MAX_JUMP_ENTRIES);
        for i in 0..count {
            let entry = start.addr + i * JUMP_ENTRY;
            let Some(raw) = self.bytes(entry, JUMP_ENTRY as usize) else {
                continue;
            };
            let code = i32::from_le_bytes(raw[0..4].try_into().expect("4 bytes"));
            let target = i32::from_le_bytes(raw[4..8].try_into().expect("4 bytes"));
            let k = i64::from_le_bytes(raw[8..16].try_into().expect("8 bytes"));
            let key = (entry + 8).wrapping_add(k as u64) & !3;
            let code = entry.wrapping_add(code as i64 as u64);
            let block = (entry + 4).wrapping_add(target as i64 as u64);
            let func = self
                .symbols
                .symbolize(code)
                .map(|(s, _)| s.name.clone())
                .unwrap_or_default();
            let len = self.instruction_len(code).unwrap_or(5);
            by_key.entry(key).or_default().push(EventSite {
                code,
                len,
                block,
                call_at: 0,
                func,
            });
        }
        by_key
    }

    /// What a block calls to run the tracepoint's probes: its static call
    /// `__SCT__tp_func_EVENT`, or `__traceiter_EVENT` (kernels without
    /// static calls).
    fn call_targets(&self, event: &str) -> Vec<u64> {
        [
            format!("__SCT__tp_func_{event}"),
            format!("__traceiter_{event}"),
        ]
        .iter()
        .filter_map(|n| self.symbols.lookup(n).map(|s| s.addr))
        .collect()
    }

    /// Where the block at `block`, read straight on from its start (up to
    /// an unconditional jump or return), calls one of `calls`.
    fn block_call(&self, block: u64, calls: &[u64]) -> Option<u64> {
        use iced_x86::{Decoder, DecoderOptions, FlowControl};
        let code = self.bytes_from(block, BLOCK_SCAN * 15)?;
        let mut d = Decoder::with_ip(64, code, block, DecoderOptions::NONE);
        for _ in 0..BLOCK_SCAN {
            if !d.can_decode() {
                return None;
            }
            let i = d.decode();
            match i.flow_control() {
                FlowControl::Call if calls.contains(&i.near_branch_target()) => {
                    return Some(i.ip());
                }
                FlowControl::UnconditionalBranch
                | FlowControl::IndirectBranch
                | FlowControl::Return
                | FlowControl::Exception
                | FlowControl::Interrupt => return None,
                _ => {}
            }
        }
        None
    }

    /// The length of the instruction at `addr` in the image.
    fn instruction_len(&self, addr: u64) -> Option<u8> {
        let code = self.bytes_from(addr, 15)?;
        let mut d = iced_x86::Decoder::with_ip(64, code, addr, iced_x86::DecoderOptions::NONE);
        let i = d.decode();
        (!i.is_invalid()).then(|| i.len() as u8)
    }

    /// At most `len` bytes from `addr` on, within one section.
    fn bytes_from(&self, addr: u64, len: usize) -> Option<&[u8]> {
        self.sections.iter().find_map(|s| {
            let off = usize::try_from(addr.checked_sub(s.addr)?).ok()?;
            let rest = s.data.get(off..)?;
            Some(&rest[..rest.len().min(len)])
        })
    }

    /// The record's fields after `struct trace_entry ent`.
    fn fields(&self, class: &str) -> Option<Vec<EventField>> {
        let btf = self.btf;
        let id = btf.struct_by_name(&format!("trace_event_raw_{class}"))?;
        let mut fields = Vec::new();
        for m in btf.members(id).ok()?.iter().take(MAX_FIELDS) {
            if m.name == "ent" || m.name == "__data" || m.name.is_empty() {
                continue;
            }
            let offset = u32::try_from(m.offset).ok()?;
            if let Some(name) = m.name.strip_prefix("__data_loc_") {
                fields.push(EventField {
                    name: name.to_string(),
                    c_type: "__data_loc char[]".into(),
                    offset,
                    size: 4,
                    signed: false,
                    kind: FieldKind::DataLoc,
                });
                continue;
            }
            let size = u32::try_from(btf.size_of(m.ty).ok()?).ok()?;
            let target = btf.resolve(m.ty).ok()?;
            let (kind, signed) = match btf.kind(target).ok()? {
                Kind::Int => (
                    FieldKind::Int,
                    btf.int(target).ok()??.signed && !btf.int(target).ok()??.bool,
                ),
                Kind::Enum | Kind::Enum64 => (FieldKind::Int, false),
                Kind::Ptr => (FieldKind::Int, false),
                Kind::Array => {
                    let a = btf.array(target).ok()??;
                    let elem = btf.resolve(a.elem).ok()?;
                    let chars = btf.int(elem).ok()?.is_some_and(|i| i.size == 1);
                    (
                        if chars {
                            FieldKind::Chars
                        } else {
                            FieldKind::Bytes
                        },
                        false,
                    )
                }
                _ => (FieldKind::Bytes, false),
            };
            let kind = match kind {
                FieldKind::Int if !matches!(size, 1 | 2 | 4 | 8) => FieldKind::Bytes,
                k => k,
            };
            fields.push(EventField {
                name: m.name.to_string(),
                c_type: self.c_type(m.ty, 0),
                offset,
                size,
                signed,
                kind,
            });
        }
        Some(fields)
    }

    /// A type as C spells it, typedef names kept (`pid_t`, `char[16]`).
    fn c_type(&self, id: TypeId, depth: u32) -> String {
        let btf = self.btf;
        if depth > 8 {
            return "?".into();
        }
        match btf.kind(id) {
            Ok(Kind::Typedef | Kind::Float) => btf.name(id).map(str::to_string).unwrap_or_default(),
            // BTF has DWARF's spellings; tracefs the C source's.
            Ok(Kind::Int) => match btf.name(id).unwrap_or("") {
                "long int" => "long",
                "long unsigned int" => "unsigned long",
                "long long int" => "long long",
                "long long unsigned int" => "unsigned long long",
                "short int" => "short",
                "short unsigned int" => "unsigned short",
                "_Bool" => "bool",
                other => other,
            }
            .to_string(),
            Ok(Kind::Struct) => format!("struct {}", btf.name(id).unwrap_or("")),
            Ok(Kind::Union) => format!("union {}", btf.name(id).unwrap_or("")),
            Ok(Kind::Enum | Kind::Enum64) => format!("enum {}", btf.name(id).unwrap_or("")),
            Ok(Kind::Ptr) => match btf.pointee(id) {
                Ok(Some(t)) => format!("{} *", self.c_type(t, depth + 1)),
                _ => "void *".into(),
            },
            Ok(Kind::Array) => match btf.array(id) {
                Ok(Some(a)) => format!("{}[{}]", self.c_type(a.elem, depth + 1), a.count),
                _ => "?".into(),
            },
            Ok(Kind::Void) => "void".into(),
            Ok(Kind::Const | Kind::Volatile | Kind::Restrict | Kind::TypeTag) => {
                match btf.resolve(id) {
                    Ok(t) if t != id => self.c_type(t, depth + 1),
                    _ => "?".into(),
                }
            }
            _ => "?".into(),
        }
    }

    fn offset(&self, strukt: &str, member: &str) -> Option<u64> {
        let id = self.btf.struct_by_name(strukt)?;
        Some(self.btf.member(id, member).ok()??.offset)
    }

    fn bytes(&self, addr: u64, len: usize) -> Option<&[u8]> {
        self.sections.iter().find_map(|s| {
            let off = usize::try_from(addr.checked_sub(s.addr)?).ok()?;
            s.data.get(off..off.checked_add(len)?)
        })
    }

    fn u64(&self, addr: u64) -> Option<u64> {
        Some(u64::from_le_bytes(self.bytes(addr, 8)?.try_into().ok()?))
    }

    fn cstr(&self, addr: u64) -> Option<String> {
        let s = self.sections.iter().find_map(|s| {
            let off = usize::try_from(addr.checked_sub(s.addr)?).ok()?;
            s.data.get(off..)
        })?;
        let s = &s[..s.len().min(MAX_NAME)];
        let end = s.iter().position(|&b| b == 0)?;
        std::str::from_utf8(&s[..end]).ok().map(str::to_string)
    }
}
