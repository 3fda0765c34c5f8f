//! bpftrace's own one-liners (its tutorial_one_liners.md and README), each
//! a file of tests/oneliners/ as a bpftrace user types it, against ONE
//! default guest through the gdbstub (the fixture harness of
//! tests/scripts.rs, whose `//-` language they use): each runs with a
//! workload that exercises it and agrees with the guest kernel's own
//! account, or carries `//- fails: "TEXT"` and is refused before booting
//! with TEXT in the message. The guest has a zero-filled disk as /dev/vda
//! for the block I/O ones.

#[path = "support/fixtures.rs"]
mod fixtures;
mod support;

use fixtures::*;

#[test]
fn oneliners_parse() {
    let all = fixtures("oneliners");
    assert!(all.len() >= 18, "{} one-liners", all.len());
    for f in all.iter().filter(|f| f.fails.is_none()) {
        let source = std::fs::read_to_string(&f.path).unwrap();
        if let Err(e) = probe_lang::parser::parse(&source) {
            panic!("{}: {} at byte {}", f.name, e.message, e.span.start);
        }
    }
}

#[test]
fn every_oneliner_against_one_guest() {
    run_suite("oneliners", None, Some(16));
}
