//! A tiny kernel for typed scripts, shared by the fuzz target:
//! ```c
//! struct node {                   // size 64
//!     int value;                  // 0
//!     int flag:3;                 // bit 32
//!     struct node *next;          // 8
//!     char comm[16];              // 16
//!     struct node kids[2];        // 32 (an array of structs)
//! };
//! int f(struct node *n, int i);
//! ```

use probe_lang::{KernelTypes, MemberInfo, Param, Prototype, TypeInfo, TypeRef};

const INT: u32 = 1;
const CHAR: u32 = 2;
const NODE: u32 = 3;
const NODE_PTR: u32 = 4;
const COMM: u32 = 5;
const NODES: u32 = 6;

pub struct Nodes;

impl KernelTypes for Nodes {
    fn function(&self, name: &str) -> Option<Prototype> {
        (name == "f").then(|| Prototype {
            params: vec![
                Param {
                    name: "n".into(),
                    ty: TypeRef(NODE_PTR),
                },
                Param {
                    name: "i".into(),
                    ty: TypeRef(INT),
                },
            ],
            ret: TypeRef(INT),
        })
    }

    fn lookup(&self, c_name: &str) -> Option<TypeRef> {
        match c_name {
            "struct node" => Some(TypeRef(NODE)),
            "int" => Some(TypeRef(INT)),
            _ => None,
        }
    }

    fn info(&self, ty: TypeRef) -> TypeInfo {
        match ty.0 {
            INT => TypeInfo::Int {
                size: 4,
                signed: true,
                char: false,
            },
            CHAR => TypeInfo::Int {
                size: 1,
                signed: true,
                char: true,
            },
            NODE => TypeInfo::Struct { size: 64 },
            NODE_PTR => TypeInfo::Ptr {
                pointee: TypeRef(NODE),
            },
            COMM => TypeInfo::Array {
                elem: TypeRef(CHAR),
                count: 16,
            },
            NODES => TypeInfo::Array {
                elem: TypeRef(NODE),
                count: 2,
            },
            0 => TypeInfo::Void,
            _ => TypeInfo::Other,
        }
    }

    fn member(&self, ty: TypeRef, name: &str) -> Option<MemberInfo> {
        if ty.0 != NODE {
            return None;
        }
        let (ty, bit_offset, bitfield_size) = match name {
            "value" => (INT, 0, 0),
            "flag" => (INT, 32, 3),
            "next" => (NODE_PTR, 64, 0),
            "comm" => (COMM, 128, 0),
            "kids" => (NODES, 256, 0),
            _ => return None,
        };
        Some(MemberInfo {
            ty: TypeRef(ty),
            bit_offset,
            bitfield_size,
        })
    }

    fn type_name(&self, ty: TypeRef) -> String {
        match ty.0 {
            INT => "int",
            CHAR => "char",
            NODE => "struct node",
            NODE_PTR => "struct node *",
            COMM => "char[16]",
            NODES => "struct node[2]",
            _ => "void",
        }
        .into()
    }
}

/// Where [`hit`]'s node is.
pub const NODE_ADDR: u64 = 0x1000;

/// A hit of `kprobe:f` whose `n` is a node at [`NODE_ADDR`] with value 7
/// and `next` pointing to itself, so that any chain of links reads it.
pub fn hit() -> super::FakeCtx {
    let mut ctx = super::FakeCtx::new("kprobe:f");
    ctx.args[0] = NODE_ADDR;
    let mut node = vec![0u8; 64];
    node[0..4].copy_from_slice(&7i32.to_le_bytes());
    node[8..16].copy_from_slice(&NODE_ADDR.to_le_bytes());
    ctx.memory.push((NODE_ADDR, node));
    ctx
}
