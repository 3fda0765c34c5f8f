//! Lexer, parser, checker, IR lowering and the interpreter on arbitrary
//! UTF-8: any input must give a program or diagnostics, never a panic, a
//! hang or a stack overflow (a deep expression is a parse error, so no
//! later pass recurses without bound). Each input is compiled twice:
//! without kernel types, and with a tiny provider (a self-referential
//! struct with an integer, a bitfield, a char array, a pointer and an array
//! of structs) so the typed paths (`args`, casts, `->`, `[i]`, `sizeof`,
//! `offsetof`) are reached too; what compiles with types runs every block
//! once on a fake context whose memory reads as a repeating byte pattern.

#![no_main]

use libfuzzer_sys::fuzz_target;
use probe_lang::{
    ContextError, KernelTypes, MemberInfo, Param, ProbeContext, Prototype, Runtime, TypeInfo,
    TypeRef,
};
use std::sync::Arc;

const INT: u32 = 1;
const CHAR: u32 = 2;
const NODE: u32 = 3;
const NODE_PTR: u32 = 4;
const COMM: u32 = 5;
const NODES: u32 = 6;

struct Types;

impl KernelTypes for Types {
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

/// A probe hit with fixed arguments; every address reads as bytes of its
/// own value, so a pointer chain leads somewhere and strings end.
struct Hit;

impl ProbeContext for Hit {
    fn arg(&mut self, n: u8) -> Result<u64, ContextError> {
        Ok(0x1000 * u64::from(n))
    }
    fn retval(&mut self) -> Result<u64, ContextError> {
        Ok(0)
    }
    fn vcpu(&self) -> u32 {
        0
    }
    fn nsecs(&self) -> u64 {
        1
    }
    fn func(&self) -> &str {
        "f"
    }
    fn probe(&self) -> &str {
        "kprobe:f"
    }
    fn read_memory(&mut self, addr: u64, buf: &mut [u8]) -> Result<(), ContextError> {
        for (i, b) in buf.iter_mut().enumerate() {
            *b = (addr.wrapping_add(i as u64) % 7) as u8;
        }
        Ok(())
    }
}

fuzz_target!(|src: &str| {
    if let Ok(p) = probe_lang::compile(src, "fuzz") {
        // The dump walks every AST and IR node.
        let _ = p.dump();
    }
    if let Ok(p) = probe_lang::compile_with_types(src, "fuzz", Some(&Types)) {
        let p = Arc::new(p);
        let mut rt = Runtime::new(p.clone(), Box::new(std::io::sink()));
        // Loops end at the budget; a small one keeps executions fast.
        rt.set_step_budget(10_000);
        for i in 0..p.probes().len() {
            rt.run(p.block_of(i), &mut Hit);
        }
        rt.print_maps();
    }
});
