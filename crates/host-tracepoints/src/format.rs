//! Parsing of tracefs `events/<system>/<event>/format` files and decoding of
//! the raw records they describe.
//!
//! A format file lists every field of the record as
//! `field:TYPE NAME; offset:N; size:N; signed:N;`. The common fields
//! (`common_type`, `common_pid`, ...) come first, then a blank line, then the
//! event's own fields. The raw data of a perf sample (`PERF_SAMPLE_RAW`) is
//! exactly this record, so offsets apply to it directly.

use std::fmt;
use std::sync::Arc;

/// A parse failure, with the 1-based line it was found on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct ParseError {
    pub line: usize,
    pub message: String,
}

/// A decode failure: the raw record does not hold what the format promises.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("field `{field}`: {message}")]
pub struct DecodeError {
    pub field: String,
    pub message: String,
}

/// How a field's bytes are laid out in the record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// One value of `size` bytes at `offset`.
    Scalar,
    /// A fixed array of `len` elements (`char comm[16]`, `unsigned long args[6]`).
    Array { len: usize },
    /// `__data_loc` (`relative: false`) or `__rel_loc` (`relative: true`): a
    /// u32 at `offset` whose low 16 bits are the data's offset (from the
    /// record's start, or from the end of this u32 for `__rel_loc`) and whose
    /// high 16 bits are its length in bytes.
    Dynamic { relative: bool },
    /// A flexible array member (`char buf[]`, size 0): the rest of the record.
    Trailing,
}

/// What one element of a field is, for decoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Element {
    /// `char`: arrays of it are NUL-terminated strings.
    Char,
    /// An integer (or pointer) of 1, 2, 4 or 8 bytes.
    Int { size: usize, signed: bool },
    /// Anything else (structs, cpumasks, odd sizes): raw bytes.
    Opaque,
}

/// One field of an event record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    /// Shared with every decoded value of this field: no allocation per sample.
    pub name: Arc<str>,
    /// The declared type as written in the format file (`char[16]` is written
    /// `char`, with the length in [`Layout::Array`]).
    pub type_name: String,
    pub offset: usize,
    /// Size in the fixed part of the record (4 for `__data_loc`, 0 for a
    /// trailing array).
    pub size: usize,
    pub signed: bool,
    pub layout: Layout,
    pub element: Element,
    /// `common_type`, `common_pid`, ...: the header every event shares.
    pub common: bool,
}

/// A decoded field value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FieldValue {
    U64(u64),
    I64(i64),
    /// `char` arrays, fixed or dynamic, up to the first NUL (lossy UTF-8).
    Str(String),
    /// Byte arrays (`u8 insn[15]`) and opaque data (`cpumask_t`).
    Bytes(Vec<u8>),
    /// Arrays of wider integers (`unsigned long args[6]`, `__data_loc u64[]`).
    Array(Vec<FieldValue>),
}

impl FieldValue {
    /// The value as an unsigned integer (signed ones reinterpreted).
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            FieldValue::U64(v) => Some(v),
            FieldValue::I64(v) => Some(v as u64),
            _ => None,
        }
    }

    /// The value as a signed integer (unsigned ones reinterpreted).
    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            FieldValue::U64(v) => Some(v as i64),
            FieldValue::I64(v) => Some(v),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            FieldValue::Str(s) => Some(s),
            _ => None,
        }
    }
}

impl fmt::Display for FieldValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FieldValue::U64(v) => write!(f, "{v}"),
            FieldValue::I64(v) => write!(f, "{v}"),
            FieldValue::Str(s) => f.write_str(s),
            FieldValue::Bytes(b) => {
                for (i, x) in b.iter().enumerate() {
                    if i > 0 {
                        f.write_str(" ")?;
                    }
                    write!(f, "{x:02x}")?;
                }
                Ok(())
            }
            FieldValue::Array(v) => {
                f.write_str("[")?;
                for (i, x) in v.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{x}")?;
                }
                f.write_str("]")
            }
        }
    }
}

/// The layout of one tracepoint's records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventFormat {
    /// The event name (`sched_switch`), from the `name:` line.
    pub name: String,
    /// The tracepoint id (`ID:` line): `perf_event_attr.config`.
    pub id: u64,
    /// All fields in file order, common ones first.
    pub fields: Vec<Field>,
}

/// Size in bytes of the fixed record part no field may exceed; tracefs
/// records are at most a page, so anything larger is junk.
const MAX_RECORD: usize = 1 << 16;

impl EventFormat {
    /// Parses the text of a `format` file. Never panics, whatever the input.
    pub fn parse(text: &str) -> Result<EventFormat, ParseError> {
        let mut name = None;
        let mut id = None;
        let mut fields = Vec::new();
        // Fields before the first blank line after `format:` are common ones.
        let mut in_common = true;
        let mut seen_format = false;
        for (i, line) in text.lines().enumerate() {
            let lineno = i + 1;
            let err = |message: String| ParseError {
                line: lineno,
                message,
            };
            let t = line.trim();
            if let Some(rest) = t.strip_prefix("name:") {
                name = Some(rest.trim().to_string());
            } else if let Some(rest) = t.strip_prefix("ID:") {
                id = Some(
                    rest.trim()
                        .parse::<u64>()
                        .map_err(|e| err(format!("bad ID `{}`: {e}", rest.trim())))?,
                );
            } else if t == "format:" {
                seen_format = true;
            } else if t.is_empty() {
                if seen_format && !fields.is_empty() {
                    in_common = false;
                }
            } else if t.starts_with("field:") {
                if !seen_format {
                    return Err(err("field before `format:`".into()));
                }
                let mut f = parse_field(t).map_err(err)?;
                // The kernel names them common_*; trust the name too, in case
                // the blank separator is missing.
                f.common = in_common || f.name.starts_with("common_");
                if fields.iter().any(|g: &Field| g.name == f.name) {
                    return Err(err(format!("duplicate field `{}`", f.name)));
                }
                fields.push(f);
            } else if t.starts_with("print fmt:") {
                break;
            } else {
                return Err(err(format!("unexpected line `{}`", truncate(t))));
            }
        }
        let name = name.ok_or_else(|| ParseError {
            line: 0,
            message: "no `name:` line".into(),
        })?;
        let id = id.ok_or_else(|| ParseError {
            line: 0,
            message: "no `ID:` line".into(),
        })?;
        if !seen_format {
            return Err(ParseError {
                line: 0,
                message: "no `format:` section".into(),
            });
        }
        Ok(EventFormat { name, id, fields })
    }

    /// The field called `name`, common or not.
    pub fn field(&self, name: &str) -> Option<&Field> {
        self.fields.iter().find(|f| &*f.name == name)
    }

    /// The event's own fields (not `common_*`), in record order.
    pub fn event_fields(&self) -> impl Iterator<Item = &Field> {
        self.fields.iter().filter(|f| !f.common)
    }

    /// Decodes the event's own fields of one raw record.
    pub fn decode(&self, raw: &[u8]) -> Result<Vec<(Arc<str>, FieldValue)>, DecodeError> {
        self.event_fields()
            .map(|f| Ok((f.name.clone(), f.decode(raw)?)))
            .collect()
    }
}

fn truncate(s: &str) -> &str {
    match s.char_indices().nth(80) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// Parses `field:TYPE NAME; offset:N; size:N; signed:N;`.
fn parse_field(line: &str) -> Result<Field, String> {
    let body = line.strip_prefix("field:").unwrap_or(line);
    let mut parts = body.split(';').map(str::trim);
    let decl = parts.next().unwrap_or("");
    let mut offset = None;
    let mut size = None;
    let mut signed = None;
    for p in parts.filter(|p| !p.is_empty()) {
        let (k, v) = p
            .split_once(':')
            .ok_or_else(|| format!("bad attribute `{}`", truncate(p)))?;
        let v: usize = v
            .trim()
            .parse()
            .map_err(|e| format!("bad {k} `{}`: {e}", truncate(v)))?;
        match k.trim() {
            "offset" => offset = Some(v),
            "size" => size = Some(v),
            "signed" => signed = Some(v != 0),
            _ => {} // Unknown attributes are ignored: newer kernels may add some.
        }
    }
    let offset = offset.ok_or("no offset")?;
    let size = size.ok_or("no size")?;
    if offset > MAX_RECORD || size > MAX_RECORD {
        return Err(format!("offset {offset} / size {size} out of range"));
    }

    // Split `TYPE NAME[LEN]` at the last identifier.
    let decl = decl.trim();
    let name_start = decl.rfind([' ', '*', '\t']).map_or(0, |i| i + 1);
    let (ty, name) = decl.split_at(name_start);
    let ty = ty.trim();
    let (name, array) = match name.find('[') {
        Some(i) => {
            let inner = name[i + 1..]
                .strip_suffix(']')
                .ok_or_else(|| format!("bad array declarator `{}`", truncate(name)))?;
            (&name[..i], Some(inner))
        }
        None => (name, None),
    };
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(format!("bad field name in `{}`", truncate(decl)));
    }
    if ty.is_empty() {
        return Err(format!("no type in `{}`", truncate(decl)));
    }
    // Older kernels omit `signed:`; guess from the type then.
    let signed = signed.unwrap_or_else(|| type_is_signed(ty));

    let (layout, elem_ty, type_name) = if let Some(rest) = ty.strip_prefix("__data_loc ") {
        let rest = rest.trim();
        let elem = rest.strip_suffix("[]").unwrap_or(rest).trim();
        (Layout::Dynamic { relative: false }, elem, elem)
    } else if let Some(rest) = ty.strip_prefix("__rel_loc ") {
        let rest = rest.trim();
        let elem = rest.strip_suffix("[]").unwrap_or(rest).trim();
        (Layout::Dynamic { relative: true }, elem, elem)
    } else {
        match array {
            Some("") => (Layout::Trailing, ty, ty),
            Some(n) => {
                // The length is normally a number; if a macro name survived,
                // derive it from the size.
                let len = match n.trim().parse::<usize>() {
                    Ok(len) => len,
                    Err(_) => match scalar_size(ty) {
                        Some(es) => size / es,
                        None => size,
                    },
                };
                (Layout::Array { len }, ty, ty)
            }
            None => (Layout::Scalar, ty, ty),
        }
    };
    if matches!(layout, Layout::Dynamic { .. }) && size != 4 {
        return Err(format!("dynamic field `{name}` has size {size}, not 4"));
    }

    let element = match layout {
        Layout::Scalar => match size {
            1 | 2 | 4 | 8 => Element::Int { size, signed },
            _ => Element::Opaque,
        },
        Layout::Array { len } => {
            if is_char(elem_ty) {
                Element::Char
            } else if len > 0 && size % len == 0 && matches!(size / len, 1 | 2 | 4 | 8) {
                Element::Int {
                    size: size / len,
                    signed,
                }
            } else {
                Element::Opaque
            }
        }
        Layout::Dynamic { .. } | Layout::Trailing => {
            if is_char(elem_ty) {
                Element::Char
            } else {
                match scalar_size(elem_ty) {
                    Some(size) => Element::Int { size, signed },
                    None => Element::Opaque,
                }
            }
        }
    };
    Ok(Field {
        name: name.into(),
        type_name: type_name.to_string(),
        offset,
        size,
        signed,
        layout,
        element,
        common: false,
    })
}

fn strip_qualifiers(ty: &str) -> &str {
    let mut t = ty.trim();
    loop {
        if let Some(r) = t.strip_prefix("const ") {
            t = r.trim_start();
        } else if let Some(r) = t.strip_prefix("volatile ") {
            t = r.trim_start();
        } else {
            return t;
        }
    }
}

fn is_char(ty: &str) -> bool {
    strip_qualifiers(ty) == "char"
}

/// Sizes of the integer types seen in x86-64 format files, for elements whose
/// size the format does not state (`__data_loc u64[]`).
fn scalar_size(ty: &str) -> Option<usize> {
    let t = strip_qualifiers(ty);
    if t.ends_with('*') {
        return Some(8);
    }
    Some(match t {
        "char" | "signed char" | "unsigned char" | "u8" | "__u8" | "s8" | "__s8" | "bool" => 1,
        "short" | "unsigned short" | "u16" | "__u16" | "s16" | "__s16" => 2,
        "int" | "unsigned int" | "unsigned" | "u32" | "__u32" | "s32" | "__s32" | "pid_t"
        | "uid_t" | "gid_t" | "dev_t" => 4,
        "long" | "unsigned long" | "long long" | "unsigned long long" | "u64" | "__u64" | "s64"
        | "__s64" | "size_t" | "ssize_t" | "loff_t" | "gfp_t" | "phys_addr_t" | "dma_addr_t" => 8,
        _ => return None,
    })
}

fn type_is_signed(ty: &str) -> bool {
    let t = strip_qualifiers(ty);
    !(t.contains("unsigned") || t.ends_with('*') || t.starts_with('u') || t.starts_with("__u"))
        && scalar_size(t).is_some()
}

impl Field {
    /// Decodes this field from a raw record. Never panics: out-of-range
    /// offsets are errors.
    pub fn decode(&self, raw: &[u8]) -> Result<FieldValue, DecodeError> {
        let err = |message: String| DecodeError {
            field: self.name.to_string(),
            message,
        };
        let slice = |start: usize, len: usize| -> Result<&[u8], DecodeError> {
            start
                .checked_add(len)
                .and_then(|end| raw.get(start..end))
                .ok_or_else(|| {
                    err(format!(
                        "bytes {start}..{} past the record's {} bytes",
                        start.saturating_add(len),
                        raw.len()
                    ))
                })
        };
        match self.layout {
            Layout::Scalar => {
                let b = slice(self.offset, self.size)?;
                Ok(match self.element {
                    Element::Int { size, signed } => int(b, size, signed),
                    _ => FieldValue::Bytes(b.to_vec()),
                })
            }
            Layout::Array { .. } => Ok(self.elements(slice(self.offset, self.size)?)),
            Layout::Dynamic { relative } => {
                let b = slice(self.offset, 4)?;
                let loc = u32::from_ne_bytes([b[0], b[1], b[2], b[3]]);
                let mut start = (loc & 0xffff) as usize;
                let len = (loc >> 16) as usize;
                if relative {
                    start += self.offset + 4;
                }
                Ok(self.elements(slice(start, len)?))
            }
            Layout::Trailing => {
                let b = raw.get(self.offset..).unwrap_or(&[]);
                Ok(self.elements(b))
            }
        }
    }

    fn elements(&self, b: &[u8]) -> FieldValue {
        match self.element {
            Element::Char => {
                let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
                FieldValue::Str(String::from_utf8_lossy(&b[..end]).into_owned())
            }
            Element::Int {
                size: 1,
                signed: false,
            }
            | Element::Opaque => FieldValue::Bytes(b.to_vec()),
            Element::Int { size, signed } => {
                FieldValue::Array(b.chunks_exact(size).map(|c| int(c, size, signed)).collect())
            }
        }
    }
}

/// A native-endian integer of `size` bytes (`b.len() == size`), sign-extended
/// when `signed`.
fn int(b: &[u8], size: usize, signed: bool) -> FieldValue {
    let mut buf = [0u8; 8];
    let n = size.min(8).min(b.len());
    // Native endian: on little-endian hosts the low bytes come first.
    if cfg!(target_endian = "little") {
        buf[..n].copy_from_slice(&b[..n]);
    } else {
        buf[8 - n..].copy_from_slice(&b[..n]);
    }
    let v = u64::from_ne_bytes(buf);
    if signed && n > 0 && n < 8 {
        let shift = 64 - 8 * n as u32;
        FieldValue::I64(((v << shift) as i64) >> shift)
    } else if signed {
        FieldValue::I64(v as i64)
    } else {
        FieldValue::U64(v)
    }
}

#[cfg(test)]
mod tests;
