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
        "vmprobe-qemu-plugin",
    ] {
        let deps = deps(package);
        let bad: Vec<&&str> = NOT_IN_QEMU.iter().filter(|d| deps.contains(**d)).collect();
        assert!(bad.is_empty(), "{package} depends on {bad:?}");
        checked += 1;
    }
    assert_eq!(checked, 6);
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
