//! bpftrace's own one-liners (its tutorial_one_liners.md and README), each
//! a file of tests/oneliners/ as a bpftrace user types it, against ONE
//! default guest through the gdbstub (the fixture harness of
//! tests/scripts.rs, whose `//-` language they use): each runs with a
//! workload that exercises it and agrees with the guest kernel's own
//! account, or carries `//- fails: "TEXT"` and is refused before booting
//! with TEXT in the message. The guest has a zero-filled disk as /dev/vda
//! for the block I/O ones, and the attach names its QMP socket too.

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
    // QMP too: uprobes, once merged, are served only on a TCG VM, which
    // vmprobe checks through it.
    run_suite(
        "oneliners",
        Suite {
            disk_mib: Some(16),
            qmp: true,
            ..Suite::default()
        },
    );
}

/// The bucket comparisons judge by bpftrace's own labels: each value of a
/// guest table lands where bpftrace's `hist`/`lhist` would print it.
#[test]
fn buckets_follow_bpftrace() {
    let lin = Some((0, 2000, 200));
    let cases = [
        (-2, None, i64::MIN),
        (0, None, 0),
        (1, None, 1),
        (3, None, 2),
        (700, None, 512),
        (4096, None, 4096),
        (-1, lin, i64::MIN),
        (199, lin, 0),
        (700, lin, 600),
        (2000, lin, 2000),
        (2500, lin, 2000),
    ];
    for (v, linear, want) in cases {
        assert_eq!(bucket_of(v, linear), want, "{v} {linear:?}");
    }
    let printed = "@bytes: \n(..., 0)     1 |@@   |\n[0]          2 |@@@@ |\n\
                   [4K, 8K)     0 |     |\n[128K, 256K) 3 |@@@@@|\n\n@other: 1\n";
    let got = hist_buckets(printed, "bytes").unwrap();
    assert_eq!(
        got.into_iter().collect::<Vec<_>>(),
        [(i64::MIN, 1), (0, 2), (131072, 3)]
    );
    let lhist = "@[dd]: \n[0, 200)     4 |@@@@|\n[2000, ...)  2 |@@  |\n";
    let got = hist_buckets(lhist, "[dd]").unwrap();
    assert_eq!(got.into_iter().collect::<Vec<_>>(), [(0, 4), (2000, 2)]);
    assert!(hist_buckets(lhist, "missing").is_err());
}
