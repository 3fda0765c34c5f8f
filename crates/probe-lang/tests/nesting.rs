//! Deep expressions and blocks: the parser's nesting limit must bound every
//! later pass (checker, lowering, interpreter, dumps, drop), whatever the
//! shape, so that no input overflows a thread's stack.

mod support;

use probe_lang::KernelTypes;
use probe_lang::parser::MAX_NESTING;
use std::sync::Arc;
use support::nodes::{Nodes, hit};

/// Compiles with the fake types, dumps, runs every block on a context whose
/// memory holds a self-linked node. A program the checker rejects has
/// still been walked by it.
fn compile_and_run(src: &str) {
    let Ok(p) = probe_lang::compile_with_types(src, "deep", Some(&Nodes)) else {
        return;
    };
    let _ = p.dump();
    let p = Arc::new(p);
    let mut rt = support::new_runtime(&p, std::io::sink());
    for i in 0..p.probes().len() {
        rt.run(p.block_of(i), &mut hit());
    }
    rt.print_maps();
}

/// A script nested `n` deep.
type Shape = fn(usize) -> String;

/// Script shapes, and whether each type-checks.
const SHAPES: &[(Shape, bool)] = &[
    (
        |n| format!("kprobe:f {{ $x = 1{}; }}", "+1".repeat(n)),
        true,
    ),
    (
        |n| format!("kprobe:f {{ $x = args.n{}->value; }}", "->next".repeat(n)),
        true,
    ),
    (
        |n| format!("kprobe:f {{ $x = (args.n{})->value; }}", "->next".repeat(n)),
        true,
    ),
    (
        |n| format!("kprobe:f {{ $x = args.n{}->value; }}", "[0].next".repeat(n)),
        true,
    ),
    (
        |n| format!("kprobe:f {{ $x = {}1; }}", "- ".repeat(n)),
        true,
    ),
    (
        |n| format!("kprobe:f {{ $x = {}1{}; }}", "(".repeat(n), ")".repeat(n)),
        true,
    ),
    (
        |n| {
            format!(
                "kprobe:f {{ $x = {}1{}; }}",
                "(1 + ".repeat(n),
                ")".repeat(n)
            )
        },
        true,
    ),
    (
        |n| format!("kprobe:f {{ $x = 1{}; }}", " * (1 + 1)".repeat(n)),
        true,
    ),
    (
        |n| format!("kprobe:f {{ $x = {}arg0; }}", "(uint64)".repeat(n)),
        true,
    ),
    (
        |n| format!("kprobe:f {{ $x = {}arg0; }}", "*(uint64 *)".repeat(n)),
        true,
    ),
    (
        |n| format!("kprobe:f {{ $x = {}args.n; }}", "(struct node *)".repeat(n)),
        true,
    ),
    (
        |n| {
            format!(
                "kprobe:f {{ $x = {}1{}; }}",
                "1 ? ".repeat(n),
                " : 0".repeat(n)
            )
        },
        true,
    ),
    (
        |n| {
            format!(
                "kprobe:f {{ @m[0] = 1; $x = {}0{}; }}",
                "@m[".repeat(n),
                "]".repeat(n)
            )
        },
        true,
    ),
    (
        |n| {
            format!(
                "kprobe:f {{ printf(\"%d\\n\", {}1{}); }}",
                "(1, ".repeat(n),
                ").0".repeat(n)
            )
        },
        true,
    ),
    (
        |n| {
            format!(
                "kprobe:f {{ {}$x = 1;{} }}",
                "if (1) { ".repeat(n),
                " }".repeat(n)
            )
        },
        true,
    ),
    (
        |n| {
            format!(
                "kprobe:f {{ if (0) {{ }}{} else {{ $x = 1; }} }}",
                " else if (0) { }".repeat(n)
            )
        },
        true,
    ),
    (
        |n| {
            format!(
                "kprobe:f {{ {}$x = 1; break;{} }}",
                "while (arg0) { ".repeat(n),
                " }".repeat(n)
            )
        },
        true,
    ),
    (
        |n| {
            format!(
                "kprobe:f {{ unroll(2) {{ {}$x = 1;{} }} }}",
                "unroll(2) { ".repeat(n),
                " }".repeat(n)
            )
        },
        true,
    ),
    (|n| format!("kprobe:f /1{}/ {{ }}", "+1".repeat(n)), true),
    (
        |n| {
            format!(
                "kprobe:f {{ self->x = 1; self->x += 1{}; }}",
                "+1".repeat(n)
            )
        },
        true,
    ),
    (
        |n| {
            format!(
                "kprobe:f {{ $x = {}arg0{}; }}",
                "str(".repeat(n),
                ")".repeat(n)
            )
        },
        false,
    ),
    (
        |n| format!("kprobe:f {{ $x = args.n{}; }}", "->nope".repeat(n)),
        false,
    ),
];

/// The deepest `n` of a shape that parses (the parser decides the depth).
fn deepest(shape: Shape) -> usize {
    (0..=MAX_NESTING)
        .rev()
        .find(|&n| probe_lang::parser::parse(&shape(n)).is_ok())
        .expect("a shallow script parses")
}

/// Every pass, on the deepest script of every shape the parser accepts,
/// fits in a 1 MiB stack: half of a Rust thread's default 2 MiB, in an
/// unoptimised build (whose frames are several times larger).
#[test]
fn deepest_accepted_scripts_fit_in_1_mib_of_stack() {
    for (i, &(shape, typed)) in SHAPES.iter().enumerate() {
        let n = deepest(shape);
        // Every shape gets near the limit: nothing else stops it first.
        assert!(n >= MAX_NESTING / 2 - 4, "shape {i}: only {n} levels");
        let err = probe_lang::compile(&shape(n + 1), "deep").unwrap_err();
        assert!(
            err.to_string().contains("nested too deeply"),
            "shape {i}: {err}"
        );
        if typed {
            let checked = probe_lang::compile_with_types(&shape(n), "deep", Some(&Nodes));
            assert!(checked.is_ok(), "shape {i}: {}", checked.unwrap_err());
        }
        let src = shape(n);
        std::thread::Builder::new()
            .stack_size(1 << 20)
            .spawn(move || compile_and_run(&src))
            .unwrap()
            .join()
            .unwrap_or_else(|_| panic!("shape {i} panicked"));
    }
}

/// The one diagnostic of a script that must fail, and the text at its column.
fn only_error(src: &str, types: Option<&dyn KernelTypes>) -> (probe_lang::Diagnostic, String) {
    let mut d = probe_lang::compile_with_types(src, "long.bt", types)
        .unwrap_err()
        .0;
    assert_eq!(d.len(), 1, "{d:?}");
    let d = d.remove(0);
    let at: String = d.source_line.chars().skip(d.col - 1).take(6).collect();
    // Shown around the column, not as a line of hundreds of kilobytes,
    // with the caret under the same text.
    let shown = d.to_string();
    assert!(shown.len() < 400, "{shown}");
    let lines: Vec<&str> = shown.lines().collect();
    let caret = lines[4].find('^').unwrap();
    assert!(lines[3][caret..].starts_with(&at), "{shown}");
    (d, at)
}

/// 100,000-term chains (200 KB and 600 KB of script), which overflowed
/// the stack before, are one error at the link that goes too deep.
#[test]
fn long_chains_are_one_error_at_the_link_too_deep() {
    let limit = format!("expression nested too deeply (more than {MAX_NESTING} levels)");
    let plus = format!("BEGIN {{ $x = 1{}; }}", "+1".repeat(100_000));
    let (d, at) = only_error(&plus, None);
    assert_eq!(d.message, limit);
    assert_eq!((d.line, at.as_str()), (1, "+1+1+1"));
    // Nothing is typed before the parser stops it.
    let arrow = format!("kprobe:f {{ $t = args.n{}; }}", "->next".repeat(100_000));
    let (d, at) = only_error(&arrow, Some(&Nodes));
    assert_eq!(d.message, limit);
    assert_eq!((d.line, at.as_str()), (1, "->next"));
    // The same on a later line, in a predicate.
    let pred = format!("BEGIN {{ }}\nkprobe:f /1{}/ {{ }}", " - 1".repeat(100_000));
    let (d, at) = only_error(&pred, Some(&Nodes));
    assert_eq!(d.message, limit);
    assert_eq!((d.line, at.as_str()), (2, "- 1 - "));
}
