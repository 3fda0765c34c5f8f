//! `--otlp URL`: what vmprobe sends to an OTLP/HTTP receiver, decoded with
//! the official protobuf definitions (`opentelemetry-proto`), against what
//! the same run printed and what the guest kernel counted itself. The
//! receiver is a small HTTP server (tiny_http) started by each test; no
//! OpenTelemetry Collector is installable from the registries this project
//! uses.

mod support;
use otlp_export::proto::collector::logs::v1::ExportLogsServiceRequest;
use otlp_export::proto::collector::trace::v1::ExportTraceServiceRequest;
use otlp_export::proto::common::v1::{KeyValue, any_value};
use prost::Message;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use support::*;

/// What the receiver decoded: each log record (resource attributes, its
/// attributes, body, time) and each span.
#[derive(Default)]
struct Received {
    logs: Vec<(Attrs, Attrs, String, u64)>,
    spans: Vec<(Attrs, Attrs, String, u64, u64)>,
    bad: Vec<String>,
}

type Attrs = BTreeMap<String, String>;

fn attrs(kvs: &[KeyValue]) -> Attrs {
    kvs.iter()
        .map(|kv| {
            let v = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                Some(any_value::Value::StringValue(s)) => s.clone(),
                Some(any_value::Value::IntValue(i)) => i.to_string(),
                other => format!("{other:?}"),
            };
            (kv.key.clone(), v)
        })
        .collect()
}

/// An OTLP/HTTP receiver on a loopback port, decoding every request.
fn receiver() -> (String, Arc<Mutex<Received>>) {
    let server = tiny_http::Server::http("127.0.0.1:0").expect("binding the receiver");
    let url = format!("http://{}", server.server_addr().to_ip().unwrap());
    let got = Arc::new(Mutex::new(Received::default()));
    let into = got.clone();
    std::thread::spawn(move || {
        for mut req in server.incoming_requests() {
            let mut body = Vec::new();
            let _ = req.as_reader().read_to_end(&mut body);
            let protobuf = req.headers().iter().any(|h| {
                h.field.equiv("Content-Type") && h.value.as_str() == "application/x-protobuf"
            });
            let mut r = into.lock().unwrap();
            match (req.method(), req.url(), protobuf) {
                (tiny_http::Method::Post, "/v1/logs", true) => {
                    let m = ExportLogsServiceRequest::decode(&body[..]).expect("logs decode");
                    for rl in m.resource_logs {
                        let res = attrs(&rl.resource.unwrap_or_default().attributes);
                        for l in rl.scope_logs.into_iter().flat_map(|s| s.log_records) {
                            let body = match l.body.and_then(|b| b.value) {
                                Some(any_value::Value::StringValue(s)) => s,
                                other => format!("{other:?}"),
                            };
                            r.logs.push((
                                res.clone(),
                                attrs(&l.attributes),
                                body,
                                l.time_unix_nano,
                            ));
                        }
                    }
                }
                (tiny_http::Method::Post, "/v1/traces", true) => {
                    let m = ExportTraceServiceRequest::decode(&body[..]).expect("traces decode");
                    for rs in m.resource_spans {
                        let res = attrs(&rs.resource.unwrap_or_default().attributes);
                        for s in rs.scope_spans.into_iter().flat_map(|s| s.spans) {
                            r.spans.push((
                                res.clone(),
                                attrs(&s.attributes),
                                s.name,
                                s.start_time_unix_nano,
                                s.end_time_unix_nano,
                            ));
                        }
                    }
                }
                (m, u, p) => r.bad.push(format!("{m} {u} protobuf={p}")),
            }
            drop(r);
            let _ = req.respond(tiny_http::Response::empty(200));
        }
    });
    (url, got)
}

/// Every ksys_write prints its size; every return its latency as vmprobe
/// computes it (nsecs at return less nsecs at entry) and its return value.
/// BEGIN and END print in no guest.
const PROGRAM: &str = r#"
BEGIN { printf("begin\n"); }
END { printf("end\n"); }
kprobe:ksys_write { @start[tid] = nsecs; printf("w %d\n", arg2); }
kretprobe:ksys_write /@start[tid]/ {
    printf("lat %d %d\n", nsecs - @start[tid], retval);
    delete(@start[tid]);
}"#;

/// What PROGRAM printed, lines with their newline.
fn printed_lines(stdout: &str) -> Vec<String> {
    stdout
        .lines()
        .filter(|l| {
            ["w ", "lat ", "begin", "end"]
                .iter()
                .any(|p| l.starts_with(p))
        })
        .map(|l| format!("{l}\n"))
        .collect()
}

fn unix_now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap()
        .trim()
        .to_string()
}

fn check_export(backend: &[&str], expect_probe: bool) {
    let n = 25;
    let (url, got) = receiver();
    let guest = default_guest();
    let workload = ground_truth_workload(&format!("dd if=/dev/zero of=/dev/null bs=1 count={n}"));
    let before = unix_now_ns();
    let out = run_bounded(
        vmprobe()
            .args(["run", "--console", "--stats", "--otlp", &url])
            .args(backend)
            .args(["-e", PROGRAM, "--", &workload]),
        RUN_LIMIT,
    );
    let after = unix_now_ns();
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "vmprobe failed:\n{stderr}");
    let printed = printed_lines(&stdout);
    let writes = printed.iter().filter(|l| l.starts_with("w ")).count();
    let lats: Vec<(u64, String)> = printed
        .iter()
        .filter_map(|l| {
            let mut w = l.split_whitespace().skip(1);
            // %d of a u64 return value: as the span's signed 64-bit integer.
            let retval = w.nth(1)?.parse::<i128>().ok()? as u64 as i64;
            Some((
                l.split_whitespace().nth(1)?.parse().ok()?,
                retval.to_string(),
            ))
        })
        .collect();
    assert!(writes >= n, "{stdout}");
    assert!(
        printed.contains(&"begin\n".to_string()) && printed.contains(&"end\n".to_string()),
        "{stdout}"
    );

    let r = got.lock().unwrap();
    assert!(r.bad.is_empty(), "unexpected requests: {:?}", r.bad);
    // Log records: one per printf vmprobe printed, with the same text.
    let mut bodies: Vec<String> = r.logs.iter().map(|l| l.2.clone()).collect();
    let mut expected = printed.clone();
    bodies.sort();
    expected.sort();
    assert_eq!(bodies, expected, "log bodies are the printf output");
    // The guest kernel's own count of the workload's 1-byte writes, from
    // its kprobe event, equals the records of 1-byte writes in its window.
    let mut inside = None;
    let mut in_order: Vec<&(Attrs, Attrs, String, u64)> = r.logs.iter().collect();
    in_order.sort_by_key(|l| l.3);
    for l in in_order.iter().filter(|l| l.2.starts_with("w ")) {
        match (l.2.trim(), inside) {
            ("w 4242", None) => inside = Some(0),
            ("w 4343", Some(_)) => break,
            ("w 1", Some(k)) => inside = Some(k + 1),
            _ => {}
        }
    }
    assert_eq!(
        inside,
        Some(ground_truth_hits(&stderr)),
        "1-byte writes between the markers"
    );
    let host = hostname();
    for (res, at, body, t) in r.logs.iter() {
        assert_eq!(res["host.name"], host);
        assert_eq!(res["service.name"], "vmprobe");
        assert!(before < *t && *t < after, "{t} is not in the run's time");
        if body == "begin\n" || body == "end\n" {
            // The host's resource: no guest printed it.
            assert!(!res.contains_key("vmprobe.guest"), "{res:?}");
            assert!(!at.contains_key("vmprobe.guest"), "{at:?}");
            continue;
        }
        assert_eq!(res["vmprobe.guest"], "vm0");
        assert_eq!(
            res["os.version"], guest.version,
            "the guest kernel's release"
        );
        assert_eq!(at["vmprobe.guest"], "vm0");
        assert!(at.contains_key("vmprobe.vcpu"), "{at:?}");
        if expect_probe {
            let probe = if body.starts_with("w ") {
                "kprobe:ksys_write"
            } else {
                "kretprobe:ksys_write"
            };
            assert_eq!(at["vmprobe.probe"], probe);
        }
    }
    // Spans: one per completed call, each as long as the latency vmprobe
    // printed for it, with the return value it printed.
    assert_eq!(r.spans.len(), lats.len());
    let mut spans: Vec<(u64, String)> = r
        .spans
        .iter()
        .map(|(res, at, name, start, end)| {
            assert_eq!(name, "ksys_write");
            assert_eq!(res["vmprobe.guest"], "vm0");
            assert!(before < *start && start <= end && *end < after);
            assert!(at.contains_key("vmprobe.vcpu"), "{at:?}");
            (end - start, at["vmprobe.retval"].clone())
        })
        .collect();
    let mut lats = lats;
    spans.sort();
    lats.sort();
    assert_eq!(spans, lats, "span durations and return values");
    // The entry's arguments ride on the span: count was arg2.
    assert!(
        r.spans
            .iter()
            .filter(|s| s.1.get("vmprobe.arg2").map(String::as_str) == Some("1"))
            .count()
            >= n
    );
    eprintln!(
        "{} log records, {} spans, {:?} 1-byte writes in the window",
        r.logs.len(),
        r.spans.len(),
        inside
    );
    let stats = format!(
        "vmprobe: stats: otlp: {} log records, {} spans sent, 0 events dropped",
        printed.len(),
        lats.len()
    );
    assert!(stderr.contains(&stats), "{stats} in:\n{stderr}");
    assert!(!stderr.contains("warning"), "{stderr}");
}

#[test]
fn printf_output_and_calls_arrive_as_log_records_and_spans() {
    check_export(&["--backend", "gdb"], true);
}

#[test]
fn the_plugin_backend_exports_the_same() {
    let Some(qemu) = qemu10() else { return };
    plugin_library();
    let qemu = qemu.to_string_lossy().into_owned();
    // The plugin's printf output does not say which probe printed it.
    check_export(&["--backend", "plugin", "--qemu", &qemu], false);
}

#[test]
fn an_unreachable_endpoint_drops_counts_and_warns_once() {
    // A port nothing listens on: bound, then closed.
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let out = run_bounded(
        vmprobe()
            .args(["run", "--stats", "--backend", "gdb", "--otlp", &url])
            .args(["-e", PROGRAM, "--"])
            .arg("dd if=/dev/zero of=/dev/null bs=1 count=20 2>/dev/null"),
        RUN_LIMIT,
    );
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "{stderr}");
    let printed = printed_lines(&stdout).len();
    let spans = stdout.lines().filter(|l| l.starts_with("lat ")).count();
    assert!(
        stdout.lines().filter(|l| *l == "w 1").count() >= 20,
        "{stdout}"
    );
    let warnings: Vec<&str> = stderr.lines().filter(|l| l.contains("warning")).collect();
    assert_eq!(warnings.len(), 1, "{stderr}");
    assert!(
        warnings[0].contains(&format!("OTLP export to {url}")),
        "{}",
        warnings[0]
    );
    let stats = format!(
        "vmprobe: stats: otlp: 0 log records, 0 spans sent, {} events dropped",
        printed + spans
    );
    assert!(stderr.contains(&stats), "{stats} in:\n{stderr}");
}

#[test]
fn an_invalid_url_is_refused_before_booting() {
    for bad in [
        "ftp://127.0.0.1:4318",
        "127.0.0.1:4318",
        "https://collector:4318",
    ] {
        let out = run_bounded(
            vmprobe().args(["run", "--otlp", bad, "-e", PROGRAM, "--", "true"]),
            RUN_LIMIT,
        );
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        let first = stderr.lines().next().unwrap_or("");
        assert!(
            first.contains("--otlp")
                && first.contains(&format!("'{bad}' is not an OTLP/HTTP endpoint")),
            "{stderr}"
        );
        assert!(!stderr.contains("booting"), "{stderr}");
    }
}

#[test]
fn traced_fields_are_log_records_and_traced_returns_spans() {
    let n = 15;
    let (url, got) = receiver();
    let workload = ground_truth_workload(&format!("dd if=/dev/zero of=/dev/null bs=1 count={n}"));
    // The script marks what goes out: the writes' sizes and who made them
    // as records, the returns of 1-byte writes as spans.
    let program = "kprobe:ksys_write { trace(n = arg2, who = comm); @size[tid] = arg2; }
                   kretprobe:ksys_write /@size[tid] == 1/ { trace(); @ones = count(); }
                   kretprobe:ksys_write { delete(@size[tid]); }";
    let out = run_bounded(
        vmprobe()
            .args(["run", "--console", "--backend", "gdb", "--otlp", &url])
            .args(["-e", program, "--", &workload]),
        RUN_LIMIT,
    );
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "vmprobe failed:\n{stderr}");
    let r = got.lock().unwrap();
    let mut records: Vec<&(Attrs, Attrs, String, u64)> = r.logs.iter().collect();
    records.sort_by_key(|l| l.3);
    let mut inside = None;
    for (_, at, body, _) in &records {
        assert_eq!(body, "kprobe:ksys_write");
        match (at["vmprobe.n"].as_str(), inside) {
            ("4242", None) => inside = Some(0),
            ("4343", Some(_)) => break,
            ("1", Some(k)) => {
                assert_eq!(at["vmprobe.who"], "dd");
                inside = Some(k + 1);
            }
            _ => {}
        }
    }
    assert_eq!(inside, Some(ground_truth_hits(&stderr)));
    assert_eq!(r.spans.len() as u64, map_value(&stdout, "ones"));
    assert!(
        r.spans
            .iter()
            .all(|s| s.2 == "ksys_write" && s.1.contains_key("vmprobe.retval") && s.3 <= s.4)
    );
}

#[test]
fn record_writes_its_trace_and_exports_the_calls() {
    let (url, got) = receiver();
    let dir = tempfile::tempdir().unwrap();
    let out = run_bounded(
        vmprobe()
            .args(["record", "--backend", "gdb", "--otlp", &url, "-o"])
            .arg(dir.path())
            .args(["kprobe:ksys_write", "kretprobe:ksys_write", "--"])
            .arg("dd if=/dev/zero of=/dev/null bs=1 count=10 2>/dev/null"),
        RUN_LIMIT,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    // babeltrace2 reads the CTF trace: its returns are the spans.
    let returns: Vec<u64> = babeltrace(dir.path())
        .iter()
        .filter(|l| l.contains(" kretprobe:ksys_write: "))
        .map(|l| {
            l.split("retval = ")
                .nth(1)
                .unwrap()
                .split([',', ' '])
                .next()
                .unwrap()
                .parse()
                .unwrap()
        })
        .collect();
    let r = got.lock().unwrap();
    assert!(returns.len() >= 10);
    let mut spans: Vec<u64> = r
        .spans
        .iter()
        .map(|s| s.1["vmprobe.retval"].parse::<i64>().unwrap() as u64)
        .collect();
    let mut returns = returns;
    spans.sort();
    returns.sort();
    assert_eq!(spans, returns, "one span per return, with its return value");
    assert!(r.logs.is_empty(), "no printf, no trace(): no records");
}

/// `attach --otlp`: a VM the test started, as a user would, exports the
/// same way; the resource names it and its kernel.
#[test]
fn attach_exports_a_running_vm() {
    use qemu_guest::{Accel, LaunchConfig, Vm};
    let image = default_guest();
    let (kernel, version) = (image.kernel.clone(), image.version.clone());
    let mut cfg = LaunchConfig::new(image);
    cfg.accel = Accel::Tcg;
    let mut vm = Vm::launch(&cfg).expect("launch");
    boot_through_stub(&mut vm);
    vm.start_workload(
        "i=0; while [ $i -lt 40 ]; do dd if=/dev/zero of=/dev/null bs=1 count=100 2>/dev/null; \
         sleep 0.5; i=$((i+1)); done",
    )
    .unwrap();
    let (url, got) = receiver();
    let spec = format!(
        "prod-db=gdb:unix:{},kernel:{}",
        vm.gdb_socket().display(),
        kernel.display()
    );
    let program = r#"kprobe:ksys_write /arg2 == 1/ {
        @n = count(); printf("write %d\n", tid); if (@n == 30) { exit(); } }"#;
    let out = run_bounded(
        vmprobe().args(["attach", "--vm", &spec, "--otlp", &url, "-e", program]),
        RUN_LIMIT,
    );
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "{stderr}");
    let mut printed: Vec<String> = stdout
        .lines()
        .filter(|l| l.starts_with("write "))
        .map(|l| format!("{l}\n"))
        .collect();
    assert!(printed.len() >= 30, "{stdout}");
    let r = got.lock().unwrap();
    let mut bodies: Vec<String> = r.logs.iter().map(|l| l.2.clone()).collect();
    printed.sort();
    bodies.sort();
    assert_eq!(bodies, printed);
    for (res, at, _, _) in r.logs.iter() {
        assert_eq!(res["vmprobe.guest"], "prod-db");
        assert_eq!(res["os.version"], version);
        assert_eq!(at["vmprobe.probe"], "kprobe:ksys_write");
    }
    let _ = vm.shutdown(std::time::Duration::from_secs(10));
}

/// A receiver that takes connections and never answers: every request
/// times out, the guest is never held up by it, and the run still ends.
#[test]
fn a_receiver_that_never_answers_does_not_hold_the_run() {
    // Connections complete in the listen backlog; nothing reads them.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", silent.local_addr().unwrap());
    let out = run_bounded(
        vmprobe()
            .args(["run", "--stats", "--backend", "gdb", "--otlp", &url])
            .args(["-e", PROGRAM, "--"])
            .arg("dd if=/dev/zero of=/dev/null bs=1 count=20 2>/dev/null"),
        RUN_LIMIT,
    );
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "{stderr}");
    let printed = printed_lines(&stdout).len();
    let spans = stdout.lines().filter(|l| l.starts_with("lat ")).count();
    assert!(spans >= 20, "{stdout}");
    let warnings: Vec<&str> = stderr.lines().filter(|l| l.contains("warning")).collect();
    assert_eq!(warnings.len(), 1, "{stderr}");
    let stats = format!(
        "vmprobe: stats: otlp: 0 log records, 0 spans sent, {} events dropped",
        printed + spans
    );
    assert!(stderr.contains(&stats), "{stats} in:\n{stderr}");
    drop(silent);
}
