use super::maps::{LabelNames, families, hist_bound, lhist_bound};
use super::*;
use probe_lang::check::LhistParams;
use probe_lang::ir::AggOp;
use probe_lang::value::{Key, Value as PValue};
use probe_runtime::store::{MapBackend, MapStore, hist_index, lhist_index, make_key};

fn store(src: &str) -> MapStore {
    let p = probe_lang::compile(src, "t").unwrap();
    MapStore::new(&p.ir().maps, &p.ir().tuples)
}

fn text(store: &MapStore, names: &LabelNames, format: Format) -> String {
    Snapshot {
        families: families(store, names),
    }
    .encode(format)
}

#[test]
fn counts_are_counters_keyed_by_labels() {
    let mut s = store("kprobe:f { @writes[comm, arg0] = count(); @c = count(); }");
    let key = make_key(vec![PValue::Str("dd".into()), PValue::Int(1)]);
    for _ in 0..3 {
        s.agg(0, key.clone(), AggOp::Count, 0);
    }
    s.agg(1, Key::None, AggOp::Count, 0);
    let om = text(&s, &LabelNames::new(), Format::OpenMetrics);
    assert!(om.contains("# TYPE writes counter\n"), "{om}");
    assert!(
        om.contains("writes_total{key0=\"dd\",key1=\"1\"} 3\n"),
        "{om}"
    );
    assert!(om.contains("c_total 1\n"), "{om}");
    assert!(om.ends_with("# EOF\n"), "{om}");
    let named = LabelNames::from([("writes".to_string(), vec!["comm".into(), "fd".into()])]);
    let prom = text(&s, &named, Format::Prometheus004);
    assert!(prom.contains("# TYPE writes_total counter\n"), "{prom}");
    assert!(
        prom.contains("writes_total{comm=\"dd\",fd=\"1\"} 3\n"),
        "{prom}"
    );
    assert!(!prom.contains("EOF"), "{prom}");
}

/// Every value lands in the bucket whose bound is the least >= it, as
/// bpftrace's bucket index puts it.
#[test]
fn bucket_bounds_agree_with_the_bucket_index() {
    let n = probe_lang::check::HIST_BUCKETS;
    for v in [
        -7i64,
        -1,
        0,
        1,
        2,
        3,
        4,
        7,
        8,
        1000,
        1 << 30,
        (1 << 31) - 1,
        1 << 31,
        1 << 50,
    ] {
        let i = hist_index(v as u64);
        assert!((v as f64) <= hist_bound(i, n), "{v} in bucket {i}");
        if i > 0 {
            assert!((v as f64) > hist_bound(i - 1, n), "{v} in bucket {i}");
        }
    }
    for l in [
        LhistParams {
            min: 0,
            max: 10,
            step: 3,
        },
        LhistParams {
            min: 5,
            max: 100,
            step: 10,
        },
    ] {
        for v in -30i64..120 {
            let (i, n) = (lhist_index(v as u64, l), l.buckets());
            assert!((v as f64) <= lhist_bound(i, n, l), "{v} in {i} of {l:?}");
            if i > 0 {
                assert!((v as f64) > lhist_bound(i - 1, n, l), "{v} in {i} of {l:?}");
            }
        }
    }
}

#[test]
fn histograms_gauges_and_averages() {
    let mut s = store(
        "kprobe:f { @h = hist(arg0); @l = lhist(arg0, 0, 100, 50); @mx = max(arg0); \
         @mn = min(arg0); @a = avg(arg0); @v = 5; @s = \"x\"; @neg = sum(-1); }",
    );
    let names = ["h", "l", "mx", "a", "v", "neg"].map(|n| s.index_of(n).unwrap());
    let [h, l, mx, a, v_map, neg] = names;
    let lp = LhistParams {
        min: 0,
        max: 100,
        step: 50,
    };
    for v in [0u64, 1, 5, 6, 300] {
        s.agg(h, Key::None, AggOp::Hist, v);
        s.agg(l, Key::None, AggOp::Lhist(lp), v);
        s.agg(mx, Key::None, AggOp::Max { signed: false }, v);
        s.agg(a, Key::None, AggOp::Avg, v);
    }
    s.set(v_map, Key::None, probe_runtime::Cell::Num { a: 5, b: 0 });
    s.agg(neg, Key::None, AggOp::Sum, -1i64 as u64);
    let om = text(&s, &LabelNames::new(), Format::OpenMetrics);
    // 0 | 1 | 5, 6 in [4, 8) | 300 in [256, 512); cumulative.
    for line in [
        "h_bucket{le=\"-1.0\"} 0\n",
        "h_bucket{le=\"0.0\"} 1\n",
        "h_bucket{le=\"1.0\"} 2\n",
        "h_bucket{le=\"3.0\"} 2\n",
        "h_bucket{le=\"7.0\"} 4\n",
        "h_bucket{le=\"255.0\"} 4\n",
        "h_bucket{le=\"511.0\"} 5\n",
        "h_bucket{le=\"+Inf\"} 5\n",
        "h_count 5\n",
        "h_sum NaN\n",
        "l_bucket{le=\"-1.0\"} 0\n",
        "l_bucket{le=\"49.0\"} 4\n",
        "l_bucket{le=\"99.0\"} 4\n",
        "l_bucket{le=\"+Inf\"} 5\n",
        "# TYPE mx gauge\n",
        "mx 300\n",
        "a_sum 312\n",
        "a_count 5\n",
        "v 5\n",
        "neg -1\n",
    ] {
        assert!(om.contains(line), "{line:?} in\n{om}");
    }
    // An empty min() has no value yet; a string is not a number.
    assert!(!om.contains("\nmn "), "{om}");
    assert!(!om.contains("\ns "), "{om}");
}

#[test]
fn names_are_sanitised_and_kept_apart_from_vmprobes_own() {
    assert_eq!(metric_name("a.b-c"), "a_b_c");
    assert_eq!(metric_name("9x"), "_9x");
    assert_eq!(label_name("__x"), "_x");
    assert_eq!(maps::family_name(""), "map");
    assert_eq!(maps::family_name("vmprobe_hits"), "map_vmprobe_hits");
    assert_eq!(maps::family_name("ksys_write"), "ksys_write");
}

#[test]
fn accept_headers_choose_the_format() {
    let prometheus_242 = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
    assert_eq!(Format::negotiate(Some(prometheus_242)), Format::OpenMetrics);
    assert_eq!(
        Format::negotiate(Some("text/plain;version=0.0.4")),
        Format::Prometheus004
    );
    assert_eq!(Format::negotiate(None), Format::OpenMetrics);
}

#[test]
fn addresses() {
    assert_eq!(
        Server::parse_addr("9464").unwrap().to_string(),
        "127.0.0.1:9464"
    );
    assert_eq!(
        Server::parse_addr("[::1]:80").unwrap().to_string(),
        "[::1]:80"
    );
    for bad in ["", "host:80", "127.0.0.1", "127.0.0.1:99999", "99999"] {
        assert!(Server::parse_addr(bad).is_err(), "{bad}");
    }
}

/// A real HTTP round trip: the format follows Accept, other paths 404,
/// and a second bind of the same port fails.
#[test]
fn serves_metrics_over_http() {
    let server = Server::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = server.local_addr();
    assert!(matches!(Server::bind(addr), Err(Error::Bind { .. })));
    let stop = server.stopper();
    let source = || Snapshot {
        families: vec![Family {
            name: "x".into(),
            help: "h".into(),
            samples: vec![(vec![("guest".into(), "vm0".into())], Value::Counter(7))],
        }],
    };
    std::thread::scope(|s| {
        s.spawn(|| server.serve(&source));
        let get = |path: &str, accept: &str| -> String {
            use std::io::{Read, Write};
            let mut c = std::net::TcpStream::connect(addr).unwrap();
            write!(
                c,
                "GET {path} HTTP/1.1\r\nHost: x\r\nAccept: {accept}\r\nConnection: close\r\n\r\n"
            )
            .unwrap();
            let mut out = String::new();
            c.read_to_string(&mut out).unwrap();
            out
        };
        let om = get("/metrics", "application/openmetrics-text");
        assert!(om.starts_with("HTTP/1.1 200"), "{om}");
        assert!(
            om.contains("application/openmetrics-text; version=1.0.0"),
            "{om}"
        );
        assert!(om.contains("x_total{guest=\"vm0\"} 7\n# EOF\n"), "{om}");
        let prom = get("/metrics", "text/plain");
        assert!(prom.contains("text/plain; version=0.0.4"), "{prom}");
        assert!(prom.contains("# TYPE x_total counter\n"), "{prom}");
        assert!(get("/", "*/*").starts_with("HTTP/1.1 404"));
        stop.stop();
    });
}
