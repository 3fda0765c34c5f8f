//! The crate graph's rules (ARCHITECTURE.md), checked with `cargo tree`:
//! the crates shared with the QEMU plugin, and those below the engine,
//! depend on no backend, stub, monitor, perf or file-format crate; the
//! language compiles without its runtime. A change that adds such a
//! dependency fails here, not in review.

use std::collections::BTreeSet;
use std::process::Command;

/// Every package `package` depends on (normal edges, as built alone).
fn deps(package: &str) -> BTreeSet<String> {
    let out = Command::new(env!("CARGO"))
        .args([
            "tree", "-e", "normal", "--prefix", "none", "-f", "{p}", "-p",
        ])
        .arg(package)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("runs cargo tree");
    assert!(
        out.status.success(),
        "cargo tree -p {package}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| *n != package)
        .map(str::to_string)
        .collect()
}

/// What the in-QEMU side and the crates it shares must not pull in.
const NOT_IN_QEMU: &[&str] = &[
    "gdb-remote",
    "host-tracepoints",
    "qemu-vmm",
    "qemu-guest",
    "probe-engine",
    "backend-gdb",
    "backend-plugin",
    "trace-formats",
    // OTLP export: HTTP and protobuf belong to vmprobe, not to QEMU.
    "otlp-export",
    "opentelemetry-proto",
    "ureq",
    // Prometheus metrics: an HTTP server in vmprobe, never in QEMU.
    "metrics-export",
    "prometheus-client",
    "tiny_http",
    "inferno",
    "xz2",
    "flate2",
    "zstd",
    "object",
];

#[test]
fn crates_shared_with_the_plugin_depend_on_no_backend_or_format() {
    let mut checked = 0;
    for package in [
        "probe-lang",
        "probe-runtime",
        "probe-plan",
        "linux-guest",
        "plugin-protocol",
        "x86-emulate",
        "kernel-tracepoints",
        "vmprobe-qemu-plugin",
    ] {
        let deps = deps(package);
        let bad: Vec<&&str> = NOT_IN_QEMU.iter().filter(|d| deps.contains(**d)).collect();
        assert!(bad.is_empty(), "{package} depends on {bad:?}");
        checked += 1;
    }
    assert_eq!(checked, 8);
}

#[test]
fn the_language_compiles_without_its_runtime_and_output() {
    let lang = deps("probe-lang");
    for d in ["probe-runtime", "probe-output", "linux-guest", "probe-plan"] {
        assert!(!lang.contains(d), "probe-lang depends on {d}");
    }
}

#[test]
fn the_engine_knows_no_backend() {
    let engine = deps("probe-engine");
    for d in [
        "gdb-remote",
        "backend-gdb",
        "backend-plugin",
        "plugin-protocol",
    ] {
        assert!(!engine.contains(d), "probe-engine depends on {d}");
    }
    // A backend is a crate on top of the engine.
    assert!(deps("backend-gdb").contains("probe-engine"));
    assert!(deps("backend-plugin").contains("probe-engine"));
}

/// The Rust source files of the workspace (crates, the binary, tests,
/// benches, fuzz targets), relative to the repository root.
fn source_files() -> Vec<std::path::PathBuf> {
    fn walk(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let name = entry.file_name();
            if name == "target" || name.to_string_lossy().starts_with('.') {
                continue;
            }
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    for dir in ["crates", "src", "tests", "bench", "fuzz"] {
        walk(&root.join(dir), &mut files);
    }
    files.sort();
    files
}

/// Files past this many lines say why at their top, in a `Long file:`
/// comment (the "no file over ~800 lines without a written reason").
const LONG_FILE_LINES: usize = 800;

#[test]
fn a_file_over_800_lines_says_why() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let files = source_files();
    assert!(files.len() > 100, "found only {} files", files.len());
    let mut unexplained = Vec::new();
    for path in &files {
        let text = std::fs::read_to_string(path).expect("reads a source file");
        let lines = text.lines().count();
        let explained = text.lines().take(40).any(|l| {
            l.trim_start().starts_with("//! Long file:")
                || l.trim_start().starts_with("// Long file:")
        });
        if lines > LONG_FILE_LINES && !explained {
            let shown = path.strip_prefix(root).unwrap_or(path);
            unexplained.push(format!("{} ({lines} lines)", shown.display()));
        }
    }
    assert!(
        unexplained.is_empty(),
        "split these, or say why in a `//! Long file:` comment at the top: {unexplained:?}"
    );
}

/// The top-level modules a module file names through `crate::`, as
/// `crate::a::X` or `use crate::{a::X, b}`, or through as many `super::`
/// as the file is deep (`depth` 1 for `a.rs` and `a/mod.rs`, 2 for
/// `a/b.rs`). Comments are skipped; a name that is not a module is dropped
/// by the caller.
fn crate_references(text: &str, depth: usize) -> BTreeSet<String> {
    let mut refs = BTreeSet::new();
    let code: String = text
        .lines()
        .map(|l| match l.find("//") {
            Some(i) => &l[..i],
            None => l,
        })
        .collect::<Vec<_>>()
        .join("\n");
    let ident = |s: &str| -> String {
        s.trim_start()
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect()
    };
    let to_root = "super::".repeat(depth);
    let mut rest = code.as_str();
    while let Some(i) = rest.find(&to_root) {
        let preceded = rest[..i]
            .chars()
            .next_back()
            .is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':');
        rest = &rest[i + to_root.len()..];
        if !preceded && !rest.starts_with("super::") {
            refs.insert(ident(rest));
        }
    }
    let mut rest = code.as_str();
    while let Some(i) = rest.find("crate::") {
        let preceded_by_ident = rest[..i]
            .chars()
            .next_back()
            .is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '$');
        rest = &rest[i + "crate::".len()..];
        if preceded_by_ident {
            continue;
        }
        if let Some(group) = rest.strip_prefix('{') {
            // The first segment of each item of the group, at brace depth 1.
            let mut depth = 1;
            let mut item_start = true;
            for (j, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' => {
                        depth -= 1;
                        if depth == 0 {
                            break;
                        }
                    }
                    ',' if depth == 1 => item_start = true,
                    _ if item_start && depth == 1 && !c.is_whitespace() => {
                        refs.insert(ident(&group[j..]));
                        item_start = false;
                    }
                    _ => {}
                }
            }
        } else {
            refs.insert(ident(rest));
        }
    }
    refs
}

/// Each crate's (and the binary's) top-level modules, as a graph of which
/// names which, must have no cycle: a module that needs another is below
/// it, as the "no import cycles between modules" asks.
#[test]
fn no_module_depends_on_itself_through_others() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut src_dirs: Vec<std::path::PathBuf> = std::fs::read_dir(root.join("crates"))
        .expect("reads crates/")
        .flatten()
        .map(|e| e.path().join("src"))
        .filter(|p| p.is_dir())
        .collect();
    src_dirs.push(root.join("src"));
    src_dirs.sort();
    let mut graphs = 0;
    let mut cycles = Vec::new();
    for src in &src_dirs {
        // Top-level module -> the files that make it (foo.rs and foo/**).
        let mut modules: std::collections::BTreeMap<String, Vec<std::path::PathBuf>> =
            Default::default();
        for path in source_files().into_iter().filter(|p| p.starts_with(src)) {
            let rel = path.strip_prefix(src).expect("under src");
            let first = rel.components().next().expect("a file").as_os_str();
            let name = first.to_string_lossy().trim_end_matches(".rs").to_string();
            if rel.components().count() == 1 && (name == "lib" || name == "main") {
                continue;
            }
            modules.entry(name).or_default().push(path);
        }
        let mut edges: std::collections::BTreeMap<String, BTreeSet<String>> = Default::default();
        for (name, files) in &modules {
            let mut to = BTreeSet::new();
            for f in files {
                let text = std::fs::read_to_string(f).expect("reads a module");
                let rel = f.strip_prefix(src).expect("under src");
                let depth = rel.components().count()
                    - usize::from(rel.file_name().is_some_and(|n| n == "mod.rs"));
                to.extend(
                    crate_references(&text, depth)
                        .into_iter()
                        .filter(|r| r != name && modules.contains_key(r)),
                );
            }
            edges.insert(name.clone(), to);
        }
        graphs += 1;
        // Depth-first search for a back edge; the path shows the cycle.
        fn visit(
            node: &str,
            edges: &std::collections::BTreeMap<String, BTreeSet<String>>,
            path: &mut Vec<String>,
            done: &mut BTreeSet<String>,
            found: &mut Vec<String>,
        ) {
            if let Some(at) = path.iter().position(|p| p == node) {
                let mut cycle = path[at..].to_vec();
                cycle.push(node.to_string());
                found.push(cycle.join(" -> "));
                return;
            }
            if !done.insert(node.to_string()) {
                return;
            }
            path.push(node.to_string());
            for next in &edges[node] {
                visit(next, edges, path, done, found);
            }
            path.pop();
        }
        let mut done = BTreeSet::new();
        let mut found = Vec::new();
        for node in edges.keys() {
            visit(node, &edges, &mut Vec::new(), &mut done, &mut found);
        }
        let krate = match src.parent().and_then(|p| p.file_name()) {
            Some(name) if src != &root.join("src") => name.to_string_lossy().into_owned(),
            _ => "vmprobe (src/)".to_string(),
        };
        cycles.extend(found.into_iter().map(|c| format!("{krate}: {c}")));
    }
    assert!(graphs > 15, "checked only {graphs} crates");
    assert!(cycles.is_empty(), "module cycles: {cycles:#?}");
}

#[test]
fn crate_references_reads_paths_and_groups() {
    let refs = crate_references(
        "use crate::a::X;\nuse crate::{b::{Y, Z}, c};\n// crate::d\nlet v = crate::e::f();\nmy_crate::g;",
        1,
    );
    let want: BTreeSet<String> = ["a", "b", "c", "e"].map(String::from).into();
    assert_eq!(refs, want);
    // Two levels down, one `super::` is the parent module, two the root.
    let refs = crate_references("use super::x;\nuse super::super::y::Z;", 2);
    assert_eq!(refs, ["y".to_string()].into());
}

/// A crate with no `unsafe` block forbids them (`#![forbid(unsafe_code)]`
/// in its root), so one added later is a decision, not an accident; the
/// crates with `unsafe` (FFI: perf, QEMU's plugin API, process setup) deny
/// undocumented blocks through the workspace lints.
#[test]
fn crates_without_unsafe_forbid_it() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let files = source_files();
    let mut checked = 0;
    let mut missing = Vec::new();
    for entry in std::fs::read_dir(root.join("crates"))
        .expect("reads crates/")
        .flatten()
    {
        let src = entry.path().join("src");
        let lib = src.join("lib.rs");
        if !lib.is_file() {
            continue;
        }
        let uses_unsafe = files.iter().filter(|f| f.starts_with(&src)).any(|f| {
            let text = std::fs::read_to_string(f).expect("reads a source file");
            ["unsafe {", "unsafe fn", "unsafe impl", "unsafe extern"]
                .iter()
                .any(|u| text.contains(u))
        });
        let text = std::fs::read_to_string(&lib).expect("reads lib.rs");
        if !uses_unsafe && !text.contains("#![forbid(unsafe_code)]") {
            missing.push(entry.file_name().to_string_lossy().into_owned());
        }
        checked += 1;
    }
    assert!(checked > 15, "checked only {checked} crates");
    assert!(
        missing.is_empty(),
        "add #![forbid(unsafe_code)] to {missing:?}"
    );
}
