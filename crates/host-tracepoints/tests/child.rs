//! A child process as the traced "vCPU thread", cross-checked against
//! `perf stat` counting the same child.
//!
//! The child is `sh -c 'read x; exec dd ... bs=1 count=N status=none'`: it
//! blocks reading stdin until we have opened our events on its pid (which
//! `exec` keeps), then dd makes exactly N one-byte writes to fd 1.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use host_tracepoints::{
    Error, FieldValue, Options, Target, Tracefs, Tracepoint, TracepointCounter, TracepointReader,
};

const N: u64 = 1000;

fn script(n: u64) -> String {
    format!("read x; exec dd if=/dev/zero of=/dev/null bs=1 count={n} status=none")
}

fn skip(why: &str) {
    if std::env::var_os("CI").is_some() {
        panic!("host tracing unavailable under CI: {why}");
    }
    eprintln!("note: skipping: {why}");
}

fn open_both(t: &Tracefs, pid: i32) -> Result<(TracepointReader, TracepointCounter), Error> {
    let tp = Tracepoint::resolve(t, "syscalls:sys_enter_write")?;
    let target = Target::Threads(vec![pid]);
    Ok((
        TracepointReader::open_with(&tp, &target, &Options::default())?,
        TracepointCounter::open(&tp, &target, &Options::default())?,
    ))
}

fn check(r: &mut TracepointReader, c: &TracepointCounter, pid: i32) {
    r.disable().unwrap();
    let mut s = Vec::new();
    r.read(&mut s).unwrap();
    assert_eq!(s.len() as u64, N);
    assert_eq!(r.lost(), 0);
    assert_eq!(c.read().unwrap(), N);
    for x in &s {
        assert_eq!((x.pid, x.tid), (pid, pid));
        // dd writes its output through fd 1, one byte at a time.
        assert_eq!(x.field("fd"), Some(&FieldValue::U64(1)));
        assert_eq!(x.field("count"), Some(&FieldValue::U64(1)));
    }
    assert!(s.windows(2).all(|w| w[0].ts_ns < w[1].ts_ns));
}

#[test]
fn child_process_exact_writes() {
    let t = match Tracefs::open() {
        Ok(t) => t,
        Err(e) => return skip(&e.to_string()),
    };
    let mut child = Command::new("sh")
        .args(["-c", &script(N)])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id() as i32;
    let (mut r, c) = match open_both(&t, pid) {
        Ok(x) => x,
        Err(e) => {
            child.kill().ok();
            child.wait().ok();
            return skip(&e.to_string());
        }
    };
    child.stdin.take().unwrap().write_all(b"\n").unwrap();
    assert!(child.wait().unwrap().success());
    check(&mut r, &c, pid);
}

/// The workload's pid under `perf stat`: perf's only child.
fn child_of(pid: u32) -> Option<i32> {
    let path = format!("/proc/{pid}/task/{pid}/children");
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        let s = std::fs::read_to_string(&path).ok()?;
        if let Some(c) = s.split_whitespace().next() {
            return c.parse().ok();
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    None
}

#[test]
fn agrees_with_perf_stat_on_the_same_child() {
    let t = match Tracefs::open() {
        Ok(t) => t,
        Err(e) => return skip(&e.to_string()),
    };
    if !Path::new("/usr/bin/perf").exists() {
        return skip("perf (Debian linux-perf) not installed");
    }
    let out = std::env::temp_dir().join(format!("ht-perf-stat-{}.csv", std::process::id()));
    let mut perf = Command::new("/usr/bin/perf")
        .args(["stat", "-x,", "-e", "syscalls:sys_enter_write", "-o"])
        .arg(&out)
        .args(["--", "sh", "-c", &script(N)])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child_of(perf.id()).expect("perf stat started no workload");
    let (mut r, c) = match open_both(&t, pid) {
        Ok(x) => x,
        Err(e) => {
            perf.kill().ok();
            perf.wait().ok();
            return skip(&e.to_string());
        }
    };
    perf.stdin.take().unwrap().write_all(b"\n").unwrap();
    assert!(perf.wait().unwrap().success());
    check(&mut r, &c, pid);

    // `1000,,syscalls:sys_enter_write,...`
    let csv = std::fs::read_to_string(&out).unwrap();
    std::fs::remove_file(&out).ok();
    let line = csv
        .lines()
        .find(|l| l.contains("syscalls:sys_enter_write"))
        .unwrap_or_else(|| panic!("no count in perf output:\n{csv}"));
    let perf_count: u64 = line.split(',').next().unwrap().parse().unwrap();
    assert_eq!(perf_count, N, "perf stat says {perf_count}");
}
