//! QMP error paths against a scripted fake server on a Unix socket.

use qemu_vmm::{Error, Qmp, RunState};
use serde_json::Value;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixListener;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

const GREETING: &str = "{\"QMP\": {\"version\": {\"qemu\": {\"micro\": 0, \"minor\": 2, \"major\": 7}, \"package\": \"fake\"}, \"capabilities\": [\"oob\"]}}\n";

/// What the fake server does with a request: lines to send back (the
/// request's id is substituted for `ID`), and whether to hang up afterwards.
type Script = Box<dyn FnMut(&Value) -> (Vec<String>, bool) + Send>;

struct Fake {
    _dir: tempfile::TempDir,
    path: std::path::PathBuf,
    thread: Option<JoinHandle<()>>,
}

impl Drop for Fake {
    fn drop(&mut self) {
        // The server thread ends when the client hangs up.
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn fake(greeting: &'static str, mut script: Script) -> Fake {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("qmp.sock");
    let listener = UnixListener::bind(&path).unwrap();
    let thread = std::thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        let mut out = stream.try_clone().unwrap();
        out.write_all(greeting.as_bytes()).unwrap();
        let mut lines = BufReader::new(stream).lines();
        while let Some(Ok(line)) = lines.next() {
            let req: Value = serde_json::from_str(&line).unwrap();
            let id = req["id"].to_string();
            if req["execute"] == "qmp_capabilities" {
                let _ = writeln!(out, r#"{{"return": {{}}, "id": {id}}}"#);
                continue;
            }
            let (replies, hang_up) = script(&req);
            for r in replies {
                let _ = out.write_all(r.replace("ID", &id).as_bytes());
            }
            if hang_up {
                let _ = out.shutdown(std::net::Shutdown::Both);
                return;
            }
        }
    });
    Fake {
        _dir: dir,
        path,
        thread: Some(thread),
    }
}

fn connect(f: &Fake) -> Qmp {
    Qmp::connect_unix(&f.path, Duration::from_secs(2)).unwrap()
}

#[test]
fn typed_reply_and_queued_events() {
    let f = fake(
        GREETING,
        Box::new(|req| {
            assert_eq!(req["execute"], "query-status");
            (
                vec![
                    // A reply to some earlier, timed-out request: ignored.
                    "{\"return\": {\"status\": \"paused\", \"running\": false}, \"id\": 999999}\n".into(),
                    "{\"timestamp\": {\"seconds\": 1, \"microseconds\": 2}, \"event\": \"STOP\"}\r\n".into(),
                    "\n".into(),
                    "{\"return\": {\"status\": \"running\", \"singlestep\": false, \"running\": true}, \"id\": ID}\n".into(),
                ],
                false,
            )
        }),
    );
    let mut q = connect(&f);
    assert_eq!(q.greeting().version.qemu.minor, 2);
    let st = q.query_status().unwrap();
    assert!(st.running);
    assert_eq!(st.status, RunState::Running);
    let ev = q.take_events();
    assert_eq!(ev.len(), 1);
    assert_eq!(ev[0].name, "STOP");
    assert_eq!(ev[0].realtime_us, Some(1_000_002));
}

#[test]
fn error_reply_is_typed() {
    let f = fake(
        GREETING,
        Box::new(|_| {
            (
                vec![
                    "{\"error\": {\"class\": \"GenericError\", \"desc\": \"unknown event \\\"nosuch\\\"\"}, \"id\": ID}\n".into(),
                ],
                false,
            )
        }),
    );
    let mut q = connect(&f);
    match q.trace_event_set_state("nosuch", true) {
        Err(Error::Qmp {
            command,
            class,
            desc,
        }) => {
            assert_eq!(command, "trace-event-set-state");
            assert_eq!(class, "GenericError");
            assert_eq!(desc, "unknown event \"nosuch\"");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn closed_mid_json_keeps_the_partial_text() {
    let f = fake(
        GREETING,
        Box::new(|_| (vec![r#"{"return": {"sta"#.into()], true)),
    );
    let mut q = connect(&f);
    match q.query_status() {
        Err(Error::Malformed { text, reason }) => {
            assert_eq!(text, r#"{"return": {"sta"#);
            assert!(reason.contains("closed"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn closed_between_messages() {
    let f = fake(GREETING, Box::new(|_| (vec![], true)));
    let mut q = connect(&f);
    assert!(matches!(q.cont(), Err(Error::Closed { .. })));
}

#[test]
fn garbage_is_malformed_with_its_text() {
    let f = fake(
        GREETING,
        Box::new(|_| (vec!["this is not json\n".into(), "[1,2]\n".into()], false)),
    );
    let mut q = connect(&f);
    match q.stop() {
        Err(Error::Malformed { text, .. }) => assert_eq!(text, "this is not json"),
        other => panic!("{other:?}"),
    }
    match q.stop() {
        Err(Error::Malformed { text, reason }) => {
            assert_eq!(text, "[1,2]");
            assert!(reason.contains("object"));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn wrong_reply_type_is_malformed() {
    let f = fake(
        GREETING,
        Box::new(|_| (vec!["{\"return\": 42, \"id\": ID}\n".into()], false)),
    );
    let mut q = connect(&f);
    match q.trace_event_list("*") {
        Err(Error::Malformed { text, reason }) => {
            assert_eq!(text, "42");
            assert!(reason.contains("trace-event-get-state"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn silent_server_times_out() {
    let f = fake(GREETING, Box::new(|_| (vec![], false)));
    let mut q = connect(&f);
    q.set_timeout(Duration::from_millis(200));
    let t = Instant::now();
    assert!(matches!(q.query_status(), Err(Error::Timeout { .. })));
    assert!(t.elapsed() < Duration::from_secs(2));
    assert!(matches!(
        q.wait_event("SHUTDOWN", Duration::from_millis(100)),
        Err(Error::Timeout { .. })
    ));
    drop(q);
}

#[test]
fn bad_greeting() {
    let f = fake("{\"hello\": 1}\n", Box::new(|_| (vec![], false)));
    match Qmp::connect_unix(&f.path, Duration::from_secs(2)) {
        Err(Error::Malformed { text, .. }) => assert_eq!(text, "{\"hello\": 1}"),
        Err(e) => panic!("{e}"),
        Ok(_) => panic!("accepted a bad greeting"),
    }
}

#[test]
fn no_greeting_times_out() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("qmp.sock");
    let _listener = UnixListener::bind(&path).unwrap();
    let t = Instant::now();
    let r = Qmp::connect_unix(&path, Duration::from_millis(200));
    assert!(matches!(r, Err(Error::Timeout { .. })), "{:?}", r.err());
    assert!(t.elapsed() < Duration::from_secs(2));
    // Nothing listening at all.
    let r = Qmp::connect_unix(&dir.path().join("none.sock"), Duration::from_millis(200));
    assert!(matches!(r, Err(Error::Connect { .. })));
}

#[test]
fn refuses_non_loopback() {
    let r = Qmp::connect_tcp(
        "192.0.2.1:4444".parse().unwrap(),
        Duration::from_millis(100),
    );
    assert!(matches!(r, Err(Error::Protocol(_))));
}

#[test]
fn refuses_gdbstub_on_all_interfaces() {
    let f = fake(
        GREETING,
        Box::new(|req| {
            panic!("must not reach QEMU: {req}");
        }),
    );
    let mut q = connect(&f);
    for dev in ["tcp::1234", "tcp:0.0.0.0:1234", "1234", "pty"] {
        assert!(
            matches!(q.open_gdbstub(dev), Err(Error::Protocol(_))),
            "{dev}"
        );
    }
}

#[test]
fn monitor_failure_is_reported() {
    let f = fake(
        GREETING,
        Box::new(|req| {
            assert_eq!(req["execute"], "human-monitor-command");
            assert_eq!(
                req["arguments"]["command-line"],
                "gdbserver tcp:127.0.0.1:1"
            );
            (
                vec![
                    "{\"return\": \"Could not open gdbserver on device 'tcp:127.0.0.1:1'\\r\\n\", \"id\": ID}\n"
                        .into(),
                ],
                false,
            )
        }),
    );
    let mut q = connect(&f);
    match q.open_gdbstub_tcp(1) {
        Err(Error::Monitor { output, .. }) => assert!(output.starts_with("Could not open")),
        other => panic!("{other:?}"),
    }
}

#[test]
fn last_event_before_hang_up_is_delivered() {
    let f = fake(
        GREETING,
        Box::new(|_| {
            (
                vec![
                    "{\"return\": {}, \"id\": ID}\n{\"event\": \"SHUTDOWN\", \"data\": {\"guest\": true}}\n"
                        .into(),
                ],
                true,
            )
        }),
    );
    let mut q = connect(&f);
    q.cont().unwrap();
    let ev = q.wait_event("SHUTDOWN", Duration::from_secs(2)).unwrap();
    assert_eq!(ev.data["guest"], true);
    assert_eq!(ev.realtime_us, None);
    assert!(matches!(
        q.wait_event("SHUTDOWN", Duration::from_secs(2)),
        Err(Error::Closed { .. })
    ));
}
