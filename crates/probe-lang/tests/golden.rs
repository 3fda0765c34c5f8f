//! Golden tests: each `tests/golden/NAME.bt` was run with real bpftrace 0.17
//! on the host (`bpftrace NAME.bt > NAME.out`) and the stdout captured
//! verbatim into `NAME.out`. We run the same script through compile() +
//! Runtime (BEGIN blocks, then END blocks, then print_maps, like bpftrace)
//! and require byte-identical output, including the `Attaching N probes...`
//! banner (which bpftrace 0.17 prints on stdout).
//!
//! `tests/golden_json/NAME.bt` were captured the same way with
//! `bpftrace -f json NAME.bt > NAME.out` and are run with
//! `OutputFormat::Json`.
//!
//! bpftrace runs `print`, `clear` and `zero` asynchronously (in user space,
//! after the BPF program returns), so the scripts only use them after the
//! last map update of their block, where both orders agree.

mod support;

use probe_lang::ProbeSpec;
use probe_output::{OutputFormat, attaching_message_for};
use support::run_script_as;

fn golden(name: &str) {
    golden_in("golden", name, OutputFormat::Text);
}

fn golden_json(name: &str) {
    golden_in("golden_json", name, OutputFormat::Json);
}

fn golden_in(sub: &str, name: &str, format: OutputFormat) {
    let dir = format!("{}/tests/{sub}/", env!("CARGO_MANIFEST_DIR"));
    let src = std::fs::read_to_string(format!("{dir}{name}.bt")).unwrap();
    let want = std::fs::read_to_string(format!("{dir}{name}.out")).unwrap();
    let prog = probe_lang::compile(&src, name).unwrap_or_else(|d| panic!("{d}"));
    let n = prog.probes().len();
    let got = format!(
        "{}{}",
        attaching_message_for(n, format),
        run_script_as(&src, format)
    );
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
#[test]
fn hist_units() {
    golden("hist_units");
}
#[test]
fn hist_keyed() {
    golden("hist_keyed");
}
#[test]
fn lhist() {
    golden("lhist");
}
#[test]
fn stats() {
    golden("stats");
}
#[test]
fn print_top_div() {
    golden("print_top_div");
}
#[test]
fn zero_clear() {
    golden("zero_clear");
}
#[test]
fn values() {
    golden("values");
}
#[test]
fn loops() {
    golden("loops");
}
#[test]
fn printf_conv() {
    golden("printf_conv");
}
#[test]
fn json_maps() {
    golden_json("maps");
}
#[test]
fn json_hist_edge() {
    golden_json("hist_edge");
}
#[test]
fn json_printf_escape() {
    golden_json("printf_escape");
}
#[test]
fn tuples() {
    golden("tuples");
}
#[test]
fn json_tuples() {
    golden_json("tuples");
}
#[test]
fn json_aggs() {
    golden_json("aggs");
}
#[test]
fn lhist_div() {
    golden("lhist_div");
}
#[test]
fn json_lhist_div() {
    golden_json("lhist_div");
}
#[test]
fn compound_ops() {
    golden("compound_ops");
}
#[test]
fn keys_signed_values() {
    golden("keys_signed_values");
}
#[test]
fn max_negative() {
    golden("max_negative");
}
#[test]
fn nested_while() {
    golden("nested_while");
}
#[test]
fn value_updates() {
    golden("value_updates");
}
#[test]
fn printf_more() {
    golden("printf_more");
}
#[test]
fn hist_end() {
    golden("hist_end");
}
#[test]
fn map_names() {
    golden("map_names");
}
#[test]
fn clear_zero_values() {
    golden("clear_zero_values");
}
#[test]
fn signed_div_strcmp() {
    golden("signed_div_strcmp");
}
#[test]
fn key_text() {
    golden("key_text");
}
#[test]
fn stats_zero_min() {
    golden("stats_zero_min");
}
#[test]
fn json_misc() {
    golden_json("misc");
}
#[test]
fn json_values() {
    golden_json("values");
}
#[test]
fn zero_minmax() {
    golden("zero_minmax");
}
#[test]
fn sizeof_kptr() {
    golden("sizeof_kptr");
}
#[test]
fn hist_bars() {
    golden("hist_bars");
}
#[test]
fn printf_pad() {
    golden("printf_pad");
}
#[test]
fn self_reference() {
    golden("self_reference");
}
#[test]
fn value_types() {
    golden("value_types");
}
#[test]
fn operators() {
    golden("operators");
}
