//! Runtime values and map keys.

use std::sync::Arc;

/// A runtime value. Integers are raw 64-bit patterns; whether they are read
/// as signed is a static property of the expression (see [`crate::ast::Type`]).
#[derive(Clone, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Value {
    Int(u64),
    Str(Arc<str>),
    /// Bytes read by `buf()`.
    Buf(Arc<[u8]>),
    Tuple(Arc<[Value]>),
    /// `kstack`: symbolized frames (`func+off` or a hex address).
    Stack(Arc<[Arc<str>]>),
}

impl Value {
    pub fn as_int(&self) -> u64 {
        match self {
            Value::Int(v) => *v,
            Value::Str(_) | Value::Buf(_) | Value::Tuple(_) | Value::Stack(_) => 0,
        }
    }
}

/// Map key. The common single-integer key is stored inline so a keyed
/// `count()` never allocates.
#[derive(
    Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub enum Key {
    None,
    Int(u64),
    Str(Arc<str>),
    Multi(Box<[KeyPart]>),
}

#[derive(
    Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub enum KeyPart {
    Int(u64),
    Str(Arc<str>),
    Stack(Arc<[Arc<str>]>),
}

impl From<Value> for KeyPart {
    fn from(v: Value) -> Self {
        match v {
            Value::Int(i) => KeyPart::Int(i),
            Value::Str(s) => KeyPart::Str(s),
            // The checker rejects buffer keys; keep the bytes visible anyway.
            Value::Buf(b) => KeyPart::Str(String::from_utf8_lossy(&b).into()),
            Value::Tuple(_) => KeyPart::Str("".into()),
            Value::Stack(s) => KeyPart::Stack(s),
        }
    }
}
