//! The event model shared by every output format.

use std::collections::HashMap;
use std::fmt;

use crate::Error;

/// Which layer of the stack an event was observed in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Layer {
    /// Inside the guest (a probe on a guest kernel function).
    Guest,
    /// The virtual machine monitor (QEMU) process.
    Vmm,
    /// The host kernel or vmprobe itself.
    Host,
}

impl Layer {
    /// Lower-case name, as used in file names, TSDL and track names.
    pub fn as_str(self) -> &'static str {
        match self {
            Layer::Guest => "guest",
            Layer::Vmm => "vmm",
            Layer::Host => "host",
        }
    }
}

impl fmt::Display for Layer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What identifies a stream: a trace holds one stream per key.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StreamKey {
    /// The guest (VM) name the events belong to.
    pub guest: String,
    /// The vCPU, or `None` for events not tied to one (VMM, host).
    pub vcpu: Option<u32>,
    pub layer: Layer,
}

impl StreamKey {
    pub fn new(guest: impl Into<String>, vcpu: Option<u32>, layer: Layer) -> Self {
        StreamKey {
            guest: guest.into(),
            vcpu,
            layer,
        }
    }
}

impl fmt::Display for StreamKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.guest, self.layer)?;
        if let Some(v) = self.vcpu {
            write!(f, " vcpu{v}")?;
        }
        Ok(())
    }
}

/// Index of a stream in the writer that returned it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StreamId(pub u32);

/// Index of an event class in a [`Schema`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClassId(pub u32);

/// The type of one event field.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FieldType {
    U64,
    I64,
    /// An address: unsigned 64-bit, shown in hex (CTF `base = 16`,
    /// Perfetto `"0x..."`).
    Ptr,
    /// UTF-8 text without NUL bytes (CTF strings are NUL-terminated).
    Str,
    /// Arbitrary bytes (a length plus the bytes).
    Bytes,
}

/// A field value, borrowed so that writing an event allocates nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Value<'a> {
    U64(u64),
    I64(i64),
    Ptr(u64),
    Str(&'a str),
    Bytes(&'a [u8]),
}

impl Value<'_> {
    pub fn field_type(&self) -> FieldType {
        match self {
            Value::U64(_) => FieldType::U64,
            Value::I64(_) => FieldType::I64,
            Value::Ptr(_) => FieldType::Ptr,
            Value::Str(_) => FieldType::Str,
            Value::Bytes(_) => FieldType::Bytes,
        }
    }

    pub fn to_owned_value(&self) -> OwnedValue {
        match *self {
            Value::U64(v) => OwnedValue::U64(v),
            Value::I64(v) => OwnedValue::I64(v),
            Value::Ptr(v) => OwnedValue::Ptr(v),
            Value::Str(s) => OwnedValue::Str(s.to_owned()),
            Value::Bytes(b) => OwnedValue::Bytes(b.to_vec()),
        }
    }
}

/// An owned field value (what the flight recorder hands back).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OwnedValue {
    U64(u64),
    I64(i64),
    Ptr(u64),
    Str(String),
    Bytes(Vec<u8>),
}

impl OwnedValue {
    pub fn as_value(&self) -> Value<'_> {
        match self {
            OwnedValue::U64(v) => Value::U64(*v),
            OwnedValue::I64(v) => Value::I64(*v),
            OwnedValue::Ptr(v) => Value::Ptr(*v),
            OwnedValue::Str(s) => Value::Str(s),
            OwnedValue::Bytes(b) => Value::Bytes(b),
        }
    }
}

/// An event class: a name and a fixed field layout.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventClass {
    /// E.g. `kprobe:ksys_write`.
    pub name: String,
    pub fields: Vec<(String, FieldType)>,
}

impl EventClass {
    pub fn new(name: impl Into<String>, fields: &[(&str, FieldType)]) -> Self {
        EventClass {
            name: name.into(),
            fields: fields.iter().map(|(n, t)| ((*n).to_owned(), *t)).collect(),
        }
    }
}

/// The event classes of a trace, by id. Names are unique: declaring a name
/// again with the same layout returns the same id, with another layout fails.
#[derive(Clone, Debug, Default)]
pub struct Schema {
    classes: Vec<EventClass>,
    /// Name lookup on every `write_named`: hashed, not a scan.
    by_name: HashMap<String, ClassId>,
}

impl Schema {
    pub fn new() -> Self {
        Self::default()
    }

    /// Declares `class`, or returns the id it already has.
    pub fn declare(&mut self, class: EventClass) -> Result<ClassId, Error> {
        if let Some(id) = self.lookup(&class.name) {
            let old = &self.classes[id.0 as usize];
            if old.fields != class.fields {
                return Err(Error::LayoutMismatch { event: class.name });
            }
            return Ok(id);
        }
        validate_class(&class)?;
        let id = ClassId(self.classes.len() as u32);
        self.by_name.insert(class.name.clone(), id);
        self.classes.push(class);
        Ok(id)
    }

    /// Declares on first use from named values; later uses must match.
    pub fn declare_from_values(
        &mut self,
        name: &str,
        fields: &[(&str, Value<'_>)],
    ) -> Result<ClassId, Error> {
        if let Some(id) = self.lookup(name) {
            let old = &self.classes[id.0 as usize];
            let same = old.fields.len() == fields.len()
                && old
                    .fields
                    .iter()
                    .zip(fields)
                    .all(|((on, ot), (n, v))| on == n && *ot == v.field_type());
            if !same {
                return Err(Error::LayoutMismatch {
                    event: name.to_owned(),
                });
            }
            return Ok(id);
        }
        let class = EventClass {
            name: name.to_owned(),
            fields: fields
                .iter()
                .map(|(n, v)| ((*n).to_owned(), v.field_type()))
                .collect(),
        };
        self.declare(class)
    }

    pub fn lookup(&self, name: &str) -> Option<ClassId> {
        self.by_name.get(name).copied()
    }

    pub fn get(&self, id: ClassId) -> Option<&EventClass> {
        self.classes.get(id.0 as usize)
    }

    pub fn classes(&self) -> &[EventClass] {
        &self.classes
    }

    /// Checks that `values` fit the class's layout.
    pub fn check(&self, id: ClassId, values: &[Value<'_>]) -> Result<&EventClass, Error> {
        let class = self.get(id).ok_or(Error::UnknownClass(id.0))?;
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
        Ok(class)
    }
}

/// Field names become TSDL identifiers and JSON keys: keep them to C
/// identifiers so every format shows the same name.
fn validate_class(class: &EventClass) -> Result<(), Error> {
    if class.name.is_empty() || class.name.chars().any(|c| c.is_control()) {
        return Err(Error::InvalidName(class.name.clone()));
    }
    for (i, (name, _)) in class.fields.iter().enumerate() {
        let mut chars = name.chars();
        let first_ok = chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
        if !first_ok || !chars.all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(Error::InvalidName(name.clone()));
        }
        // CTF gives a byte array `b` a length field `_b_length`.
        let length_of = |(n, t): &(String, FieldType)| {
            *t == FieldType::Bytes && name.strip_prefix('_') == Some(&format!("{n}_length"))
        };
        if class.fields[..i].iter().any(|(n, _)| n == name) || class.fields.iter().any(length_of) {
            return Err(Error::DuplicateField {
                event: class.name.clone(),
                field: name.clone(),
            });
        }
    }
    Ok(())
}

/// Where CLOCK_MONOTONIC stood against wall-clock time at trace start.
///
/// Timestamps are CLOCK_MONOTONIC nanoseconds (immune to wall-clock steps);
/// this offset, recorded once, lets viewers show real dates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClockOffset {
    /// CLOCK_REALTIME minus CLOCK_MONOTONIC, in ns, at trace start.
    pub realtime_minus_monotonic_ns: i128,
}

impl ClockOffset {
    /// Measures the offset now (the tightest of several clock brackets).
    pub fn measure() -> Self {
        ClockOffset {
            realtime_minus_monotonic_ns: host_clock::RealtimeToMonotonic::measure().offset_ns,
        }
    }

    /// Reads CLOCK_MONOTONIC, the clock every timestamp must come from.
    pub fn monotonic_now_ns() -> u64 {
        host_clock::monotonic_ns()
    }
}
