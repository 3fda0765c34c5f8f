//! `sched:sched_switch` decoded by us and by bpftrace (an independent
//! decoder) for the same thread over the same interval: the same switches,
//! field for field.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use host_tracepoints::{Options, Target, Tracefs, Tracepoint, TracepointReader};

fn skip(why: &str) {
    if std::env::var_os("CI").is_some() {
        panic!("cannot cross-check with bpftrace under CI: {why}");
    }
    eprintln!("note: skipping: {why}");
}

type Switch = (i64, String, i64, String);

/// The name the sleeper takes before its last switch: the end of the window.
const DONE: &str = "ht-bt-done";

/// One line of the bpftrace program's output: `prev_pid|prev_comm|next_pid|next_comm`.
fn parse_switch(line: &str) -> Option<Switch> {
    let p: Vec<&str> = line.split('|').collect();
    Some((
        p.first()?.parse().ok()?,
        p.get(1)?.to_string(),
        p.get(2)?.parse().ok()?,
        p.get(3)?.to_string(),
    ))
}

/// The switches up to and including the first one out of the renamed thread.
fn up_to_end_marker(mut switches: Vec<Switch>) -> Vec<Switch> {
    if let Some(i) = switches.iter().position(|s| s.1 == DONE) {
        switches.truncate(i + 1);
    }
    switches
}

#[test]
fn sched_switch_agrees_with_bpftrace() {
    let Ok(t) = Tracefs::open() else {
        return skip("no tracefs");
    };
    if !Path::new("/usr/bin/bpftrace").exists() {
        return skip("bpftrace not installed");
    }
    let (tid_tx, tid_rx) = mpsc::channel();
    let (go, go_rx) = mpsc::channel::<()>();
    // The thread must outlive the comparison: perf detaches per-thread events
    // in do_exit, before the thread's last switch, which bpftrace still sees.
    let (slept_tx, slept_rx) = mpsc::channel::<()>();
    let (end, end_rx) = mpsc::channel::<()>();
    let sleeper = thread::Builder::new()
        .name("ht-bt-sleeper".into())
        .spawn(move || {
            // SAFETY: gettid has no preconditions.
            tid_tx.send(unsafe { libc::gettid() }).unwrap();
            if go_rx.recv().is_ok() {
                for _ in 0..30 {
                    thread::sleep(Duration::from_micros(500));
                }
                // The last switch is the end marker both sides look for: a
                // switch out of a thread named DONE.
                let name = std::ffi::CString::new(DONE).unwrap();
                // SAFETY: PR_SET_NAME reads a NUL-terminated string of at
                // most 16 bytes, which `name` is.
                unsafe { libc::prctl(libc::PR_SET_NAME, name.as_ptr()) };
                thread::sleep(Duration::from_micros(500));
                slept_tx.send(()).unwrap();
                end_rx.recv().ok();
            }
        })
        .unwrap();
    let tid = tid_rx.recv().unwrap();

    let tp = Tracepoint::resolve(&t, "sched:sched_switch").unwrap();
    let mut r =
        match TracepointReader::open_with(&tp, &Target::Threads(vec![tid]), &Options::default()) {
            Ok(r) => r,
            Err(e) => {
                drop(go);
                sleeper.join().unwrap();
                return skip(&e.to_string());
            }
        };
    // BEGIN runs once every probe is attached.
    let prog = format!(
        "BEGIN {{ printf(\"ready\\n\"); }} \
         tracepoint:sched:sched_switch /args->prev_pid == {tid}/ {{ \
           printf(\"%d|%s|%d|%s\\n\", args->prev_pid, args->prev_comm, args->next_pid, args->next_comm); }}"
    );
    let mut bt = Command::new("/usr/bin/bpftrace")
        .args(["-e", &prog])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // bpftrace's output is read on a thread, so that every wait below has
    // a deadline: a bpftrace that never starts or never exits is killed,
    // not waited for forever.
    let (line_tx, lines) = mpsc::channel::<String>();
    let stdout = bt.stdout.take().unwrap();
    let reader = thread::spawn(move || {
        for l in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line_tx.send(l).is_err() {
                break;
            }
        }
    });
    loop {
        match lines.recv_timeout(Duration::from_secs(120)) {
            Ok(l) if l == "ready" => break,
            Ok(_) => continue,
            Err(_) => {
                drop(go);
                sleeper.join().unwrap();
                bt.kill().ok();
                bt.wait().ok();
                return skip("bpftrace did not start within 120 s");
            }
        }
    }
    go.send(()).unwrap();
    slept_rx.recv().unwrap();
    // Read bpftrace's lines up to the end marker, then kill it: its output
    // is complete by then, and waiting for it to exit gracefully hung in CI
    // (bpftrace 0.17 once did not exit within 60 s of SIGINT).
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let mut theirs: Vec<Switch> = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match lines.recv_timeout(left) {
            Ok(l) => {
                if let Some(sw) = parse_switch(&l) {
                    let done = sw.1 == DONE;
                    theirs.push(sw);
                    if done {
                        break;
                    }
                }
            }
            Err(e) => {
                bt.kill().ok();
                bt.wait().ok();
                panic!("bpftrace printed no end-marker switch within 60 s ({e:?})");
            }
        }
    }
    bt.kill().ok();
    bt.wait().ok();
    reader.join().unwrap();

    r.disable().unwrap();
    drop(end);
    sleeper.join().unwrap();
    let mut s = Vec::new();
    r.read(&mut s).unwrap();
    let ours: Vec<Switch> = s
        .iter()
        .map(|x| {
            let i = |n| x.field(n).unwrap().as_i64().unwrap();
            let st = |n| x.field(n).unwrap().as_str().unwrap().to_string();
            (
                i("prev_pid"),
                st("prev_comm"),
                i("next_pid"),
                st("next_comm"),
            )
        })
        .collect();
    let ours = up_to_end_marker(ours);
    assert!(ours.len() >= 30, "{} switches", ours.len());
    assert_eq!(r.lost(), 0);
    assert_eq!(ours, theirs);
}
