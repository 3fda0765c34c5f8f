//! Lexer, parser, checker, IR lowering and the interpreter on arbitrary
//! UTF-8: any input must give a program or diagnostics, never a panic, a
//! hang or a stack overflow (a deep expression is a parse error, so no
//! later pass recurses without bound). Each input is compiled twice:
//! without kernel types, and with a tiny provider (a self-referential
//! struct with an integer, a bitfield, a char array, a pointer and an array
//! of structs) so the typed paths (`args`, casts, `->`, `[i]`, `sizeof`,
//! `offsetof`) are reached too; what compiles with types runs every block
//! once on a fake context holding a node that links to itself.

#![no_main]

use libfuzzer_sys::fuzz_target;
use std::sync::Arc;
use support::nodes::Nodes;

// The crate's test helpers: the kernel types and the fake probe context.
#[path = "../../crates/probe-lang/tests/support/mod.rs"]
mod support;

fuzz_target!(|src: &str| {
    if let Ok(p) = probe_lang::compile(src, "fuzz") {
        // The dump walks every AST and IR node.
        let _ = p.dump();
    }
    if let Ok(p) = probe_lang::compile_with_types(src, "fuzz", Some(&Nodes)) {
        let p = Arc::new(p);
        let mut rt = support::new_runtime(&p, std::io::sink());
        // Loops end at the budget; a small one keeps executions fast.
        rt.set_step_budget(10_000);
        for i in 0..p.probes().len() {
            rt.run(p.block_of(i), &mut support::nodes::hit());
        }
        rt.print_maps();
    }
});
