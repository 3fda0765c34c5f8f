//! The guest kernel's BTF as the language's type provider
//! ([`probe_lang::KernelTypes`]): function prototypes for `args.NAME`,
//! structs and members for casts and `->`, sizes for `sizeof`.

use kernel_btf::{Btf, Kind};
use probe_lang::{KernelTypes, MemberInfo, Param, Prototype, TypeInfo, TypeRef};

/// [`KernelTypes`] over a parsed `.BTF`.
#[derive(Clone, Copy)]
pub struct BtfTypes<'a> {
    btf: &'a Btf,
}

impl<'a> BtfTypes<'a> {
    pub fn new(btf: &'a Btf) -> Self {
        BtfTypes { btf }
    }
}

impl KernelTypes for BtfTypes<'_> {
    fn function(&self, name: &str) -> Option<Prototype> {
        let f = self.btf.function(name)?;
        Some(Prototype {
            params: f
                .params
                .iter()
                .map(|p| Param {
                    name: p.name.to_string(),
                    ty: TypeRef(p.ty),
                })
                .collect(),
            ret: TypeRef(f.ret),
        })
    }

    fn lookup(&self, c_name: &str) -> Option<TypeRef> {
        self.btf.lookup(c_name).map(TypeRef)
    }

    fn enumerator(&self, name: &str) -> Option<i64> {
        self.btf.find_enumerator(name).map(|(_, v)| v)
    }

    fn info(&self, ty: TypeRef) -> TypeInfo {
        let Ok(id) = self.btf.resolve(ty.0) else {
            return TypeInfo::Other;
        };
        if id == 0 {
            return TypeInfo::Void;
        }
        let size = || self.btf.size_of(id).ok();
        match self.btf.kind(id) {
            Ok(Kind::Int) => match self.btf.int(id) {
                Ok(Some(i)) if (1..=8).contains(&i.size) => TypeInfo::Int {
                    size: i.size as u8,
                    signed: i.signed,
                    // Only plain `char` arrays are strings, as in bpftrace
                    // (clang's Char_S/Char_U): `unsigned char addr[16]`
                    // (`__u8`) is an array of bytes.
                    char: self.btf.name(id).is_ok_and(|n| {
                        (i.char || n == "char") && n != "unsigned char" && n != "signed char"
                    }),
                },
                _ => TypeInfo::Other,
            },
            Ok(Kind::Enum | Kind::Enum64) => match size() {
                Some(s @ 1..=8) => TypeInfo::Enum {
                    size: s as u8,
                    signed: self.btf.enum_signed(id).unwrap_or(false),
                },
                _ => TypeInfo::Other,
            },
            Ok(Kind::Ptr) => match self.btf.pointee(id) {
                Ok(Some(p)) => TypeInfo::Ptr {
                    pointee: TypeRef(p),
                },
                _ => TypeInfo::Other,
            },
            Ok(Kind::Array) => match self.btf.array(id) {
                Ok(Some(a)) => TypeInfo::Array {
                    elem: TypeRef(a.elem),
                    count: a.count,
                },
                _ => TypeInfo::Other,
            },
            Ok(Kind::Struct) => size().map_or(TypeInfo::Other, |size| TypeInfo::Struct { size }),
            Ok(Kind::Union) => size().map_or(TypeInfo::Other, |size| TypeInfo::Union { size }),
            Ok(Kind::Void) => TypeInfo::Void,
            _ => TypeInfo::Other,
        }
    }

    fn member(&self, ty: TypeRef, name: &str) -> Option<MemberInfo> {
        let m = self.btf.member(ty.0, name).ok()??;
        Some(MemberInfo {
            ty: TypeRef(m.ty),
            bit_offset: m.bit_offset,
            bitfield_size: m.bitfield_size,
        })
    }

    fn type_name(&self, ty: TypeRef) -> String {
        self.btf.type_name(ty.0)
    }
}
