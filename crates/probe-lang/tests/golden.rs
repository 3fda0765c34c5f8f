//! Golden tests: each `tests/golden/NAME.bt` was run with real bpftrace 0.17
//! on the host (`bpftrace NAME.bt > NAME.out`) and the stdout captured
//! verbatim into `NAME.out`. We run the same script through compile() +
//! Runtime (BEGIN blocks, then END blocks, then print_maps, like bpftrace)
//! and require byte-identical output, including the `Attaching N probes...`
//! banner (which bpftrace 0.17 prints on stdout).

mod support;

use probe_lang::{ProbeSpec, attaching_message};
use support::run_script;

fn golden(name: &str) {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden/");
    let src = std::fs::read_to_string(format!("{dir}{name}.bt")).unwrap();
    let want = std::fs::read_to_string(format!("{dir}{name}.out")).unwrap();
    let prog = probe_lang::compile(&src, name).unwrap_or_else(|d| panic!("{d}"));
    let n = prog.probes().len();
    let got = format!("{}{}", attaching_message(n), run_script(&src));
    assert!(
        prog.probes()
            .iter()
            .all(|p| matches!(p, ProbeSpec::Begin | ProbeSpec::End))
    );
    assert_eq!(got, want, "output of {name} differs from bpftrace 0.17");
}

#[test]
fn printf_basic() {
    golden("printf_basic");
}
#[test]
fn printf_widths() {
    golden("printf_widths");
}
#[test]
fn printf_32bit() {
    golden("printf_32bit");
}
#[test]
fn maps_all() {
    golden("maps_all");
}
#[test]
fn maps_signed() {
    golden("maps_signed");
}
#[test]
fn print_clear_end() {
    golden("print_clear_end");
}
#[test]
fn print_inline() {
    golden("print_inline");
}
#[test]
fn print_avg_inline() {
    golden("print_avg_inline");
}
#[test]
fn untouched() {
    golden("untouched");
}
#[test]
fn deleted() {
    golden("deleted");
}
#[test]
fn arith() {
    golden("arith");
}
#[test]
fn end_only() {
    golden("end_only");
}
#[test]
fn keys_str() {
    golden("keys_str");
}
#[test]
fn printf_percent() {
    golden("printf_percent");
}
