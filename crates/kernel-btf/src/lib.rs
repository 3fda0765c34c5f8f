//! Guest kernel types from the kernel's own `.BTF` section: structs and their member offsets,
//! enums, integer types, array bounds, function prototypes with argument names.
//!
//! [`Btf::parse`] takes the raw section bytes (`kernel_image::KernelSections` reads them from a
//! bzImage) and checks all of it up front: every type record lies inside the type section,
//! every name is a NUL-terminated string in the string section and every referenced type id
//! exists. Accessors then only walk checked data; chains that could loop in corrupt input
//! (typedef → const → typedef ...) are bounded and reported as [`Error::Cycle`]. Nothing here
//! panics on any input.
//!
//! The parser is written here rather than taken from the `btf-rs` crate: the format is small
//! (one header, u32 records), btf-rs' API is a low-level one we would wrap entirely anyway,
//! it brings memmap2 and its mmap backend (unsafe, and a guest image file may change under
//! the mapping), and owning the parser lets us check every bound ourselves (see the fuzz
//! tests). Parsing Debian 6.1's 4.3 MB `.BTF` takes about as long as hashing it, so results are
//! not cached.
//!
//! Format: <https://docs.kernel.org/bpf/btf.html> (`include/uapi/linux/btf.h`).
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let (vmlinuz, cache) = (std::path::Path::new("vmlinuz"), std::path::Path::new("cache"));
//! let secs = kernel_image::KernelSections::load(vmlinuz, &[".BTF"], Some(cache))?;
//! let btf = kernel_btf::Btf::parse(&secs.get(".BTF").ok_or("no .BTF")?.data)?;
//!
//! let task = btf.lookup("struct task_struct").ok_or("no task_struct")?;
//! let comm = btf.member(task, "comm")?.ok_or("no comm")?;
//! println!("comm at {} is {}", comm.offset, btf.type_name(comm.ty)); // 2976, char[16]
//!
//! let f = btf.function("ksys_write").ok_or("no ksys_write")?;
//! for p in &f.params {
//!     println!("{} {}", btf.type_name(p.ty), p.name); // unsigned int fd, ...
//! }
//! # Ok(())
//! # }
//! ```

#![forbid(unsafe_code)]
use std::fmt;

mod names;
mod parse;
use parse::Hdr;

/// A BTF type id; 0 is `void`.
pub type TypeId = u32;

/// Pointer size of the only architecture with ORC and BTF we read (x86-64); BTF does not
/// record it.
pub const POINTER_SIZE: u64 = 8;

/// Longest typedef/modifier chain or type nesting followed before giving up (real kernels need
/// well under 10; corrupt input may loop).
const MAX_DEPTH: usize = 64;

/// Types spelled out at most in one type name (a real kernel's longest
/// function-pointer types have a few dozen).
const MAX_NAME_PARTS: usize = 4096;

const MAGIC: u16 = 0xeb9f;
const HEADER_LEN: usize = 24;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("BTF data truncated: {0}")]
    Truncated(&'static str),
    #[error("not BTF data (magic {0:#06x}, expected 0xeb9f)")]
    BadMagic(u16),
    #[error("unsupported BTF version {0}")]
    Version(u8),
    #[error("bad BTF header: {0}")]
    Header(&'static str),
    #[error("bad BTF string section: {0}")]
    Strings(&'static str),
    #[error("bad BTF type [{id}]: {what}")]
    BadType { id: TypeId, what: &'static str },
    #[error("no BTF type [{0}]")]
    NoType(TypeId),
    #[error("BTF type [{0}]: typedef/modifier chain or nesting too deep (cyclic?)")]
    Cycle(TypeId),
    #[error("BTF type [{id}] is {found}, not {expected}")]
    WrongKind {
        id: TypeId,
        expected: &'static str,
        found: Kind,
    },
    #[error("BTF type [{id}] ({kind}) has no size")]
    NoSize { id: TypeId, kind: Kind },
}

/// BTF type kinds (`BTF_KIND_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Void,
    Int,
    Ptr,
    Array,
    Struct,
    Union,
    Enum,
    Fwd,
    Typedef,
    Volatile,
    Const,
    Restrict,
    Func,
    FuncProto,
    Var,
    Datasec,
    Float,
    DeclTag,
    TypeTag,
    Enum64,
}

impl Kind {
    fn from_raw(k: u32) -> Option<Kind> {
        use Kind::*;
        Some(match k {
            1 => Int,
            2 => Ptr,
            3 => Array,
            4 => Struct,
            5 => Union,
            6 => Enum,
            7 => Fwd,
            8 => Typedef,
            9 => Volatile,
            10 => Const,
            11 => Restrict,
            12 => Func,
            13 => FuncProto,
            14 => Var,
            15 => Datasec,
            16 => Float,
            17 => DeclTag,
            18 => TypeTag,
            19 => Enum64,
            _ => return None,
        })
    }

    /// The name bpftool uses (`STRUCT`, `FUNC_PROTO`, ...).
    pub fn as_str(self) -> &'static str {
        use Kind::*;
        match self {
            Void => "VOID",
            Int => "INT",
            Ptr => "PTR",
            Array => "ARRAY",
            Struct => "STRUCT",
            Union => "UNION",
            Enum => "ENUM",
            Fwd => "FWD",
            Typedef => "TYPEDEF",
            Volatile => "VOLATILE",
            Const => "CONST",
            Restrict => "RESTRICT",
            Func => "FUNC",
            FuncProto => "FUNC_PROTO",
            Var => "VAR",
            Datasec => "DATASEC",
            Float => "FLOAT",
            DeclTag => "DECL_TAG",
            TypeTag => "TYPE_TAG",
            Enum64 => "ENUM64",
        }
    }

    /// Kinds that only qualify or rename another type.
    fn is_alias(self) -> bool {
        matches!(
            self,
            Kind::Typedef | Kind::Const | Kind::Volatile | Kind::Restrict | Kind::TypeTag
        )
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A struct or union member. Offsets count from the start of the outermost struct the lookup
/// began at (members of anonymous struct/union members are found through them, as in C).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Member<'a> {
    /// Empty for an anonymous struct/union member.
    pub name: &'a str,
    pub ty: TypeId,
    /// `bit_offset / 8`: for a bitfield, the byte holding its first bit.
    pub offset: u64,
    pub bit_offset: u64,
    /// Width in bits for a bitfield, 0 otherwise.
    pub bitfield_size: u32,
}

/// An integer type (`BTF_KIND_INT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IntInfo {
    /// Storage size in bytes.
    pub size: u32,
    /// Value bits (less than `size * 8` only for legacy bitfield encodings).
    pub bits: u32,
    pub bit_offset: u32,
    pub signed: bool,
    pub char: bool,
    pub bool: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArrayInfo {
    pub elem: TypeId,
    pub index: TypeId,
    pub count: u32,
}

/// One enumerator. Values are stored as i64; an unsigned 64-bit enumerator above `i64::MAX`
/// keeps its bit pattern.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Enumerator<'a> {
    pub name: &'a str,
    pub value: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Param<'a> {
    /// Empty when the prototype does not name it (function pointer types).
    pub name: &'a str,
    pub ty: TypeId,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Linkage {
    Static,
    Global,
    Extern,
    Other(u32),
}

/// A function prototype: a `FUNC` (named kernel function) or a bare `FUNC_PROTO`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Function<'a> {
    /// Empty for a bare prototype.
    pub name: &'a str,
    /// The `FUNC` id, or the prototype's id for a bare prototype.
    pub id: TypeId,
    pub proto: TypeId,
    /// 0 (`void`) for functions that return nothing.
    pub ret: TypeId,
    pub params: Vec<Param<'a>>,
    pub variadic: bool,
    pub linkage: Option<Linkage>,
}

/// Parsed, checked BTF.
#[derive(Debug, Clone)]
pub struct Btf {
    /// The type section as u32 words in host order (every BTF record is word-sized).
    words: Vec<u32>,
    /// Word index of each type's 3-word header; entry 0 (void) is unused.
    starts: Vec<u32>,
    strings: String,
    /// Ids of named types, sorted by name then id.
    by_name: Vec<TypeId>,
}
impl Btf {
    /// Number of type ids, counting `void` (id 0); valid ids are `0..type_count()`.
    pub fn type_count(&self) -> usize {
        self.starts.len()
    }

    pub fn kind(&self, id: TypeId) -> Result<Kind, Error> {
        Ok(self.hdr(id)?.kind)
    }

    /// The type's own name; empty for anonymous types.
    pub fn name(&self, id: TypeId) -> Result<&str, Error> {
        let h = self.hdr(id)?;
        Ok(self.str_at(h.name).unwrap_or(""))
    }

    /// All types with exactly this name (any kind), in id order.
    pub fn ids_by_name(&self, name: &str) -> &[TypeId] {
        let from = self
            .by_name
            .partition_point(|&id| self.name_or_empty(id) < name);
        let to = self
            .by_name
            .partition_point(|&id| self.name_or_empty(id) <= name);
        self.by_name.get(from..to).unwrap_or_default()
    }

    /// The first type of this kind and name.
    pub fn find(&self, name: &str, kind: Kind) -> Option<TypeId> {
        self.ids_by_name(name)
            .iter()
            .copied()
            .find(|&id| self.kind(id).ok() == Some(kind))
    }

    /// A type by its C spelling: `struct task_struct`, `union bpf_attr`, `enum pid_type`, or a
    /// typedef, integer or float name (`pid_t`, `unsigned int`). A struct/union is found before
    /// a forward declaration of it.
    pub fn lookup(&self, c_name: &str) -> Option<TypeId> {
        let c_name = c_name.trim();
        let (kinds, name): (&[Kind], &str) = if let Some(n) = c_name.strip_prefix("struct ") {
            (&[Kind::Struct, Kind::Fwd], n)
        } else if let Some(n) = c_name.strip_prefix("union ") {
            (&[Kind::Union, Kind::Fwd], n)
        } else if let Some(n) = c_name.strip_prefix("enum ") {
            // BTF has no enum forwards (they are empty ENUMs); FWD is for structs/unions.
            (&[Kind::Enum, Kind::Enum64], n)
        } else if c_name == "void" {
            return Some(0);
        } else {
            (&[Kind::Typedef, Kind::Int, Kind::Float], c_name)
        };
        let name = name.trim();
        kinds.iter().find_map(|&k| {
            self.find(name, k)
                .filter(|&id| k != Kind::Fwd || self.fwd_matches(id, kinds[0]))
        })
    }

    fn fwd_matches(&self, id: TypeId, want: Kind) -> bool {
        match self.hdr(id) {
            Ok(h) => match want {
                Kind::Union => h.kind_flag,
                Kind::Struct => !h.kind_flag,
                _ => true,
            },
            Err(_) => false,
        }
    }

    /// `struct NAME`, else `union NAME` (complete definitions only).
    pub fn struct_by_name(&self, name: &str) -> Option<TypeId> {
        self.find(name, Kind::Struct)
            .or_else(|| self.find(name, Kind::Union))
    }

    /// Follows typedefs and const/volatile/restrict/type tags to the underlying type.
    pub fn resolve(&self, id: TypeId) -> Result<TypeId, Error> {
        let mut cur = id;
        for _ in 0..MAX_DEPTH {
            let h = self.hdr(cur)?;
            if !h.kind.is_alias() {
                return Ok(cur);
            }
            cur = h.st;
        }
        Err(Error::Cycle(id))
    }

    /// Size in bytes, as C `sizeof`.
    pub fn size_of(&self, id: TypeId) -> Result<u64, Error> {
        self.size_of_depth(id, 0)
    }

    fn size_of_depth(&self, id: TypeId, depth: usize) -> Result<u64, Error> {
        if depth > MAX_DEPTH {
            return Err(Error::Cycle(id));
        }
        let r = self.resolve(id)?;
        let h = self.hdr(r)?;
        use Kind::*;
        match h.kind {
            Int | Struct | Union | Enum | Enum64 | Float => Ok(h.st as u64),
            Ptr => Ok(POINTER_SIZE),
            Array => {
                let elem = self.size_of_depth(self.extra(&h, 0), depth + 1)?;
                elem.checked_mul(self.extra(&h, 2) as u64)
                    .ok_or(Error::BadType {
                        id: r,
                        what: "array size overflows",
                    })
            }
            Datasec => Ok(h.st as u64),
            Var => self.size_of_depth(h.st, depth + 1),
            kind => Err(Error::NoSize { id: r, kind }),
        }
    }

    fn composite(&self, id: TypeId) -> Result<(TypeId, Hdr), Error> {
        let r = self.resolve(id)?;
        let h = self.hdr(r)?;
        if !matches!(h.kind, Kind::Struct | Kind::Union) {
            return Err(Error::WrongKind {
                id: r,
                expected: "a struct or union",
                found: h.kind,
            });
        }
        Ok((r, h))
    }

    /// Direct members of a struct or union (through typedefs/qualifiers), in declaration order.
    pub fn members(&self, id: TypeId) -> Result<Vec<Member<'_>>, Error> {
        let (_, h) = self.composite(id)?;
        Ok((0..h.vlen).map(|i| self.member_at(&h, i, 0)).collect())
    }

    fn member_at(&self, h: &Hdr, i: usize, base: u64) -> Member<'_> {
        let name = self.str_at(self.extra(h, 3 * i)).unwrap_or("");
        let ty = self.extra(h, 3 * i + 1);
        let raw = self.extra(h, 3 * i + 2);
        let (mut bit_offset, mut bitfield_size) = if h.kind_flag {
            ((raw & 0xff_ffff) as u64, raw >> 24)
        } else {
            (raw as u64, 0)
        };
        // Old encoding: the bitfield width and shift live in the member's INT type.
        if !h.kind_flag
            && let Ok(Some(int)) = self.hdr(ty).map(|mh| self.int_of(&mh))
            && (int.bit_offset != 0 || int.bits != int.size.saturating_mul(8))
        {
            bit_offset += int.bit_offset as u64;
            bitfield_size = int.bits;
        }
        let bit_offset = base.saturating_add(bit_offset);
        Member {
            name,
            ty,
            offset: bit_offset / 8,
            bit_offset,
            bitfield_size,
        }
    }

    /// The member called `name`, looking inside anonymous struct/union members as C does.
    /// Ok(None) when there is none; an error when `id` is not a struct or union.
    pub fn member(&self, id: TypeId, name: &str) -> Result<Option<Member<'_>>, Error> {
        let (r, _) = self.composite(id)?;
        self.member_in(r, name, 0, 0)
    }

    fn member_in(
        &self,
        id: TypeId,
        name: &str,
        base: u64,
        depth: usize,
    ) -> Result<Option<Member<'_>>, Error> {
        if depth > MAX_DEPTH {
            return Err(Error::Cycle(id));
        }
        let h = self.hdr(id)?;
        for i in 0..h.vlen {
            let m = self.member_at(&h, i, base);
            if !name.is_empty() && m.name == name {
                return Ok(Some(m));
            }
            if m.name.is_empty() {
                let inner = self.resolve(m.ty)?;
                if matches!(self.kind(inner)?, Kind::Struct | Kind::Union)
                    && let Some(found) = self.member_in(inner, name, m.bit_offset, depth + 1)?
                {
                    return Ok(Some(found));
                }
            }
        }
        Ok(None)
    }

    fn int_of(&self, h: &Hdr) -> Option<IntInfo> {
        (h.kind == Kind::Int).then(|| {
            let enc = self.extra(h, 0);
            IntInfo {
                size: h.st,
                bits: enc & 0xff,
                bit_offset: (enc >> 16) & 0xff,
                signed: enc & (1 << 24) != 0,
                char: enc & (2 << 24) != 0,
                bool: enc & (4 << 24) != 0,
            }
        })
    }

    /// Integer details, through typedefs/qualifiers; None for other kinds.
    pub fn int(&self, id: TypeId) -> Result<Option<IntInfo>, Error> {
        let h = self.hdr(self.resolve(id)?)?;
        Ok(self.int_of(&h))
    }

    /// Element type and count, through typedefs/qualifiers; None for other kinds.
    pub fn array(&self, id: TypeId) -> Result<Option<ArrayInfo>, Error> {
        let h = self.hdr(self.resolve(id)?)?;
        Ok((h.kind == Kind::Array).then(|| ArrayInfo {
            elem: self.extra(&h, 0),
            index: self.extra(&h, 1),
            count: self.extra(&h, 2),
        }))
    }

    /// The pointed-to type, through typedefs/qualifiers; None for non-pointers.
    pub fn pointee(&self, id: TypeId) -> Result<Option<TypeId>, Error> {
        let h = self.hdr(self.resolve(id)?)?;
        Ok((h.kind == Kind::Ptr).then_some(h.st))
    }

    /// Enumerators of an enum (32- or 64-bit), through typedefs/qualifiers.
    pub fn enumerators(&self, id: TypeId) -> Result<Vec<Enumerator<'_>>, Error> {
        let r = self.resolve(id)?;
        let h = self.hdr(r)?;
        // kind_flag set: the enum is signed.
        let signed = h.kind_flag;
        match h.kind {
            Kind::Enum => Ok((0..h.vlen)
                .map(|i| {
                    let v = self.extra(&h, 2 * i + 1);
                    Enumerator {
                        name: self.str_at(self.extra(&h, 2 * i)).unwrap_or(""),
                        value: if signed { v as i32 as i64 } else { v as i64 },
                    }
                })
                .collect()),
            Kind::Enum64 => Ok((0..h.vlen)
                .map(|i| {
                    let lo = self.extra(&h, 3 * i + 1) as u64;
                    let hi = self.extra(&h, 3 * i + 2) as u64;
                    Enumerator {
                        name: self.str_at(self.extra(&h, 3 * i)).unwrap_or(""),
                        value: (hi << 32 | lo) as i64,
                    }
                })
                .collect()),
            found => Err(Error::WrongKind {
                id: r,
                expected: "an enum",
                found,
            }),
        }
    }

    /// Whether enum `id` (through typedefs/qualifiers) is signed: BTF's
    /// kind_flag, which pahole sets for an enum with a negative value.
    pub fn enum_signed(&self, id: TypeId) -> Result<bool, Error> {
        let r = self.resolve(id)?;
        let h = self.hdr(r)?;
        match h.kind {
            Kind::Enum | Kind::Enum64 => Ok(h.kind_flag),
            found => Err(Error::WrongKind {
                id: r,
                expected: "an enum",
                found,
            }),
        }
    }

    /// The value of enumerator `name` of enum `id`.
    pub fn enum_value(&self, id: TypeId, name: &str) -> Result<Option<i64>, Error> {
        Ok(self
            .enumerators(id)?
            .into_iter()
            .find(|e| e.name == name)
            .map(|e| e.value))
    }

    /// The enumerator `name` of any enum: the first enum (by id) that has
    /// it, and its value, as bpftrace dumps the first such enum from BTF.
    /// Anonymous enums count (the kernel's TCP states are one).
    pub fn find_enumerator(&self, name: &str) -> Option<(TypeId, i64)> {
        (1..self.type_count() as TypeId)
            .filter(|&id| matches!(self.kind(id), Ok(Kind::Enum | Kind::Enum64)))
            .find_map(|id| {
                let v = self.enumerators(id).ok()?;
                v.iter().find(|e| e.name == name).map(|e| (id, e.value))
            })
    }

    /// The first enumerator of enum `id` with this value.
    pub fn enum_name(&self, id: TypeId, value: i64) -> Result<Option<&str>, Error> {
        Ok(self
            .enumerators(id)?
            .into_iter()
            .find(|e| e.value == value)
            .map(|e| e.name))
    }

    /// The kernel function `name` (a `FUNC` record): parameter names and types, return type.
    pub fn function(&self, name: &str) -> Option<Function<'_>> {
        let id = self.find(name, Kind::Func)?;
        self.function_by_id(id).ok()
    }

    /// A `FUNC` or `FUNC_PROTO` (through typedefs/qualifiers and one pointer, so function
    /// pointer members work too).
    pub fn function_by_id(&self, id: TypeId) -> Result<Function<'_>, Error> {
        let mut r = self.resolve(id)?;
        if let Some(p) = self.pointee(r)? {
            r = self.resolve(p)?;
        }
        let h = self.hdr(r)?;
        let (name, linkage, proto) = match h.kind {
            Kind::Func => (
                self.str_at(h.name).unwrap_or(""),
                Some(match h.vlen {
                    0 => Linkage::Static,
                    1 => Linkage::Global,
                    2 => Linkage::Extern,
                    n => Linkage::Other(n as u32),
                }),
                h.st,
            ),
            Kind::FuncProto => ("", None, r),
            found => {
                return Err(Error::WrongKind {
                    id: r,
                    expected: "a function",
                    found,
                });
            }
        };
        let ph = self.hdr(proto)?;
        if ph.kind != Kind::FuncProto {
            return Err(Error::WrongKind {
                id: proto,
                expected: "a function prototype",
                found: ph.kind,
            });
        }
        let mut params: Vec<Param<'_>> = (0..ph.vlen)
            .map(|i| Param {
                name: self.str_at(self.extra(&ph, 2 * i)).unwrap_or(""),
                ty: self.extra(&ph, 2 * i + 1),
            })
            .collect();
        // A last parameter of type void with no name marks `...`.
        let variadic = params
            .last()
            .is_some_and(|p| p.ty == 0 && p.name.is_empty());
        if variadic {
            params.pop();
        }
        Ok(Function {
            name,
            id: r,
            proto,
            ret: ph.st,
            params,
            variadic,
            linkage,
        })
    }
}

/// Entry points for the fuzz targets in `fuzz/` and the tests (not a
/// stable API).
#[doc(hidden)]
pub mod fuzzing {
    use super::{Btf, TypeId};

    /// Every accessor on every type (and two ids past the end): corrupt
    /// input must give errors, never panics or hangs.
    pub fn exercise(btf: &Btf) {
        for id in 0..btf.type_count() as TypeId + 2 {
            let _ = btf.kind(id);
            let _ = btf.name(id);
            let _ = btf.resolve(id);
            let _ = btf.size_of(id);
            let _ = btf.members(id);
            let _ = btf.member(id, "comm");
            let _ = btf.member(id, "b");
            let _ = btf.int(id);
            let _ = btf.array(id);
            let _ = btf.pointee(id);
            let _ = btf.enumerators(id);
            let _ = btf.enum_name(id, 5);
            let _ = btf.function_by_id(id);
            let _ = btf.type_name(id);
        }
        for n in ["struct task", "union fwdonly", "u32_t", "enum color", ""] {
            let _ = btf.lookup(n);
        }
        let _ = btf.function("do_thing");
    }
}

#[cfg(test)]
mod tests;
