use super::*;
use proto::collector::logs::v1::ExportLogsServiceRequest;
use proto::collector::trace::v1::ExportTraceServiceRequest;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;

/// A request as the receiver saw it.
struct Request {
    path: String,
    content_type: String,
    body: Vec<u8>,
}

/// An HTTP/1.1 receiver on loopback answering 200 to every POST (keep-alive
/// connections included), or never answering (`silent`).
fn receiver(silent: bool) -> (String, Arc<Mutex<Vec<Request>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { return };
            let log = log.clone();
            std::thread::spawn(move || {
                let mut reader = BufReader::new(conn.try_clone().unwrap());
                let mut conn = conn;
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
                    let (mut length, mut content_type) = (0, String::new());
                    loop {
                        let mut h = String::new();
                        reader.read_line(&mut h).unwrap();
                        let h = h.trim_end();
                        if h.is_empty() {
                            break;
                        }
                        let (k, v) = h.split_once(':').unwrap();
                        match k.to_ascii_lowercase().as_str() {
                            "content-length" => length = v.trim().parse().unwrap(),
                            "content-type" => content_type = v.trim().to_string(),
                            _ => {}
                        }
                    }
                    let mut body = vec![0; length];
                    reader.read_exact(&mut body).unwrap();
                    if silent {
                        std::thread::sleep(Duration::from_secs(30));
                        return;
                    }
                    log.lock().unwrap().push(Request {
                        path,
                        content_type,
                        body,
                    });
                    conn.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
                        .unwrap();
                }
            });
        }
    });
    (url, seen)
}

fn attrs(pairs: &[(&str, AttrValue)]) -> Attributes {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect()
}

fn string_attr(kvs: &[KeyValue], key: &str) -> Option<String> {
    kvs.iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
            any_value::Value::StringValue(s) => Some(s.clone()),
            any_value::Value::IntValue(i) => Some(i.to_string()),
            _ => None,
        })
}

#[test]
fn logs_and_spans_arrive_as_otlp_protobuf() {
    let (url, seen) = receiver(false);
    let failures = Arc::new(AtomicU64::new(0));
    let f = failures.clone();
    let exporter = Exporter::start(
        Endpoint::parse(&format!("{url}/")).unwrap(),
        attrs(&[("host.name", AttrValue::Str("h".into()))]),
        vec![
            attrs(&[("vmprobe.guest", AttrValue::Str("vm0".into()))]),
            attrs(&[("vmprobe.guest", AttrValue::Str("vm1".into()))]),
        ],
        Options {
            batch: 3,
            on_first_failure: Box::new(move |_| {
                f.fetch_add(1, Ordering::Relaxed);
            }),
            ..Options::default()
        },
    )
    .unwrap();
    let h = exporter.handle();
    let base = host_clock::monotonic_ns();
    for i in 0..5u64 {
        h.log(
            ResourceId((i % 2) as usize),
            base + i,
            format!("w {i}\n"),
            attrs(&[("vcpu", AttrValue::Int(i as i64))]),
        );
    }
    h.span(
        ResourceId(1),
        "ksys_write".into(),
        base + 1000,
        base + 1234,
        attrs(&[("retval", AttrValue::Int(-14))]),
    );
    let stats = exporter.finish(Duration::from_secs(10));
    assert_eq!(
        stats,
        Stats {
            logs_sent: 5,
            spans_sent: 1,
            dropped: 0
        }
    );
    assert_eq!(failures.load(Ordering::Relaxed), 0);
    let seen = seen.lock().unwrap();
    let (mut bodies, mut spans) = (Vec::new(), Vec::new());
    for r in seen.iter() {
        assert_eq!(r.content_type, "application/x-protobuf");
        match r.path.as_str() {
            "/v1/logs" => {
                let req = ExportLogsServiceRequest::decode(&r.body[..]).unwrap();
                for rl in req.resource_logs {
                    let attrs = rl.resource.unwrap().attributes;
                    assert_eq!(string_attr(&attrs, "host.name").as_deref(), Some("h"));
                    let guest = string_attr(&attrs, "vmprobe.guest").unwrap();
                    for l in &rl.scope_logs[0].log_records {
                        let vcpu: u64 =
                            string_attr(&l.attributes, "vcpu").unwrap().parse().unwrap();
                        assert_eq!(guest, format!("vm{}", vcpu % 2));
                        let Some(any_value::Value::StringValue(b)) =
                            l.body.as_ref().and_then(|b| b.value.clone())
                        else {
                            panic!("no string body");
                        };
                        bodies.push((l.time_unix_nano, b));
                    }
                }
            }
            "/v1/traces" => {
                let req = ExportTraceServiceRequest::decode(&r.body[..]).unwrap();
                for rs in req.resource_spans {
                    spans.extend(rs.scope_spans.into_iter().flat_map(|s| s.spans));
                }
            }
            p => panic!("POST to {p}"),
        }
    }
    bodies.sort();
    let texts: Vec<&str> = bodies.iter().map(|(_, b)| b.as_str()).collect();
    assert_eq!(texts, ["w 0\n", "w 1\n", "w 2\n", "w 3\n", "w 4\n"]);
    // Monotonic stamps moved onto the epoch by one offset: differences kept.
    assert_eq!(bodies[4].0 - bodies[0].0, 4);
    let now = host_clock::realtime_now_ns() as u64;
    assert!(bodies[0].0 < now && bodies[0].0 > now - 60_000_000_000);
    assert_eq!(spans.len(), 1);
    let s = &spans[0];
    assert_eq!(s.name, "ksys_write");
    assert_eq!(s.end_time_unix_nano - s.start_time_unix_nano, 234);
    assert_eq!(s.trace_id.len(), 16);
    assert_eq!(s.span_id.len(), 8);
    assert_eq!(string_attr(&s.attributes, "retval").as_deref(), Some("-14"));
}

#[test]
fn an_unreachable_endpoint_drops_counts_and_warns_once() {
    // A port nothing listens on: bound, then closed.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let failures = Arc::new(Mutex::new(Vec::new()));
    let f = failures.clone();
    let exporter = Exporter::start(
        Endpoint::parse(&format!("http://127.0.0.1:{port}")).unwrap(),
        Vec::new(),
        vec![Vec::new()],
        Options {
            batch: 2,
            on_first_failure: Box::new(move |e| f.lock().unwrap().push(e.to_string())),
            ..Options::default()
        },
    )
    .unwrap();
    let h = exporter.handle();
    for i in 0..7 {
        h.log(ResourceId(0), i, "x".into(), Vec::new());
        h.span(ResourceId(0), "f".into(), i, i + 1, Vec::new());
        std::thread::sleep(Duration::from_millis(30));
    }
    let stats = exporter.finish(Duration::from_secs(10));
    assert_eq!(stats.dropped, 14, "{stats:?}");
    assert_eq!(stats.logs_sent + stats.spans_sent, 0);
    let failures = failures.lock().unwrap();
    assert_eq!(failures.len(), 1, "{failures:?}");
    assert!(
        failures[0].contains(&format!("127.0.0.1:{port}/v1/")),
        "{}",
        failures[0]
    );
}

#[test]
fn a_full_queue_drops_instead_of_blocking() {
    // The receiver reads the first request and never answers: the thread
    // waits on it while events pile up behind.
    let (url, _) = receiver(true);
    let exporter = Exporter::start(
        Endpoint::parse(&url).unwrap(),
        Vec::new(),
        vec![Vec::new()],
        Options {
            queue: 4,
            batch: 1,
            timeout: Duration::from_millis(500),
            ..Options::default()
        },
    )
    .unwrap();
    let h = exporter.handle();
    h.log(ResourceId(0), 0, "first".into(), Vec::new());
    std::thread::sleep(Duration::from_millis(300));
    for i in 0..100 {
        h.log(ResourceId(0), i, "x".into(), Vec::new());
    }
    assert!(h.dropped() >= 100 - 4, "{}", h.dropped());
    // The exporter's own getter says the same while it runs.
    let live = exporter.stats();
    assert!(live.dropped >= 100 - 4 && live.logs_sent == 0, "{live:?}");
    // The grace period is over before the receiver answers: the rest is
    // dropped too, and finish returns.
    let stats = exporter.finish(Duration::from_millis(100));
    assert_eq!(stats.dropped + stats.logs_sent, 101, "{stats:?}");
}

#[test]
fn endpoints_are_checked() {
    let e = Endpoint::parse("http://collector:4318/").unwrap();
    assert_eq!(e.logs_url(), "http://collector:4318/v1/logs");
    assert_eq!(
        Endpoint::parse("http://h/otel").unwrap().traces_url(),
        "http://h/otel/v1/traces"
    );
    for bad in [
        "",
        "collector:4318",
        "https://h:4318",
        "ftp://h",
        "http://",
        "http://h?x=1",
        "http://h :1",
    ] {
        let err = Endpoint::parse(bad).unwrap_err().to_string();
        assert!(err.contains(&format!("'{bad}'")), "{bad}: {err}");
    }
}
