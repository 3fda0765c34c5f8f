//! Tests against this host's kernel, as root: threads and child processes
//! that make a known number of system calls are the ground truth.
//!
//! Where perf_event_open or tracefs is unavailable the tests skip with a
//! note, or fail when the environment variable CI is set.

use std::fs::File;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use host_tracepoints::{
    Error, EventSpec, FieldValue, Options, Sample, Target, Tracefs, Tracepoint, TracepointCounter,
    TracepointReader,
};

/// Tracefs, or None (skip) when host tracing is not available here.
fn tracefs() -> Option<Tracefs> {
    let t = match Tracefs::open() {
        Ok(t) => t,
        Err(e) => return unavailable(&e),
    };
    // Probe perf_event_open itself: the usual failure is permission.
    let tp = Tracepoint::resolve(&t, "syscalls:sys_enter_getppid").ok()?;
    match TracepointCounter::open(&tp, &Target::Threads(vec![tid()]), &Options::default()) {
        Ok(_) => Some(t),
        Err(e) => unavailable(&e),
    }
}

fn unavailable<T>(e: &Error) -> Option<T> {
    if std::env::var_os("CI").is_some() {
        panic!("host tracing unavailable under CI: {e}");
    }
    eprintln!("note: skipping, host tracing unavailable: {e}");
    None
}

fn tid() -> i32 {
    // SAFETY: gettid has no preconditions.
    unsafe { libc::gettid() }
}

fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec to write to.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    assert_eq!(rc, 0);
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// A thread that, once told to go, makes exactly one write(2) to /dev/null
/// per entry of `lengths`, of that many bytes, and nothing else.
struct Writer {
    tid: i32,
    fd: i32,
    go: mpsc::Sender<()>,
    done: thread::JoinHandle<()>,
}

impl Writer {
    fn spawn(lengths: Vec<usize>) -> Writer {
        let null = File::options().write(true).open("/dev/null").unwrap();
        let fd = null.as_raw_fd();
        let (tid_tx, tid_rx) = mpsc::channel();
        let (go, go_rx) = mpsc::channel::<()>();
        let done = thread::Builder::new()
            .name("ht-writer".into())
            .spawn(move || {
                tid_tx.send(tid()).unwrap();
                go_rx.recv().unwrap();
                let buf = [b'x'; 4096];
                for &n in &lengths {
                    // One File::write is one write(2).
                    assert_eq!((&null).write(&buf[..n]).unwrap(), n);
                }
            })
            .unwrap();
        Writer {
            tid: tid_rx.recv().unwrap(),
            fd,
            go,
            done,
        }
    }

    /// Lets the writes happen; returns CLOCK_MONOTONIC just before and after.
    fn run(self) -> (u64, u64) {
        let before = monotonic_ns();
        self.go.send(()).unwrap();
        self.done.join().unwrap();
        (before, monotonic_ns())
    }
}

fn drain(r: &mut TracepointReader) -> Vec<Sample> {
    r.disable().unwrap();
    let mut v = Vec::new();
    r.read(&mut v).unwrap();
    v
}

fn resolve(t: &Tracefs, name: &str) -> Tracepoint {
    Tracepoint::resolve(t, name).unwrap()
}

#[test]
fn write_samples_exact_count_tid_time_and_fields() {
    let Some(t) = tracefs() else { return };
    let tp = resolve(&t, "syscalls:sys_enter_write");
    let lengths: Vec<usize> = (0..200).map(|i| 1 + (i * 37) % 1000).collect();
    let w = Writer::spawn(lengths.clone());
    let (tid, fd) = (w.tid, w.fd);
    let mut r =
        TracepointReader::open_with(&tp, &Target::Threads(vec![tid]), &Options::default()).unwrap();
    let (before, after) = w.run();
    let s = drain(&mut r);

    assert_eq!(s.len(), lengths.len());
    assert_eq!(r.stats().lost, 0);
    assert_eq!(r.stats().undecodable, 0);
    assert_eq!(r.hits().unwrap(), lengths.len() as u64);
    let ts: Vec<u64> = s.iter().map(|x| x.ts_ns).collect();
    assert!(before < ts[0], "{before} !< {}", ts[0]);
    assert!(*ts.last().unwrap() < after);
    assert!(
        ts.windows(2).all(|w| w[0] < w[1]),
        "timestamps not increasing"
    );
    for (x, &len) in s.iter().zip(&lengths) {
        assert_eq!(x.tid, tid);
        assert_eq!(x.pid, std::process::id() as i32);
        assert_eq!(&*x.name, "syscalls:sys_enter_write");
        assert_eq!(x.field("count"), Some(&FieldValue::U64(len as u64)));
        assert_eq!(x.field("fd"), Some(&FieldValue::U64(fd as u64)));
        assert_eq!(
            x.field("__syscall_nr"),
            Some(&FieldValue::I64(libc::SYS_write))
        );
        assert!(x.field("buf").unwrap().as_u64().unwrap() != 0);
    }
}

#[test]
fn other_threads_are_not_seen() {
    let Some(t) = tracefs() else { return };
    let tp = resolve(&t, "syscalls:sys_enter_write");
    let traced = Writer::spawn(vec![3; 10]);
    let other = Writer::spawn(vec![5; 50]);
    let mut r =
        TracepointReader::open_with(&tp, &Target::Threads(vec![traced.tid]), &Options::default())
            .unwrap();
    let tid = traced.tid;
    other.run();
    traced.run();
    let s = drain(&mut r);
    assert_eq!(s.len(), 10);
    assert!(s.iter().all(|x| x.tid == tid));
}

#[test]
fn several_threads_merged_in_time_order() {
    let Some(t) = tracefs() else { return };
    let tp = resolve(&t, "syscalls:sys_enter_write");
    let a = Writer::spawn(vec![1; 30]);
    let b = Writer::spawn(vec![2; 40]);
    let (ta, tb) = (a.tid, b.tid);
    let mut r =
        TracepointReader::open_with(&tp, &Target::Threads(vec![ta, tb]), &Options::default())
            .unwrap();
    let ha = thread::spawn(move || a.run());
    let hb = thread::spawn(move || b.run());
    ha.join().unwrap();
    hb.join().unwrap();
    let s = drain(&mut r);
    assert_eq!(s.iter().filter(|x| x.tid == ta).count(), 30);
    assert_eq!(s.iter().filter(|x| x.tid == tb).count(), 40);
    assert!(
        s.iter()
            .all(|x| x.field("count").unwrap().as_u64() == Some(if x.tid == ta { 1 } else { 2 }))
    );
    assert!(s.windows(2).all(|w| w[0].ts_ns <= w[1].ts_ns));
}

#[test]
fn counting_mode_counts_exactly() {
    let Some(t) = tracefs() else { return };
    let tp = resolve(&t, "syscalls:sys_enter_write");
    let lengths: Vec<usize> = (0..5000).map(|i| if i % 10 == 0 { 7 } else { 1 }).collect();
    let w = Writer::spawn(lengths);
    let target = Target::Threads(vec![w.tid]);
    let all = TracepointCounter::open(&tp, &target, &Options::default()).unwrap();
    let sevens =
        TracepointCounter::open(&tp, &target, &Options::default().filter("count == 7")).unwrap();
    // System-wide, per CPU, narrowed to the thread by an in-kernel filter.
    let per_cpu = TracepointCounter::open(
        &tp,
        &Target::AllCpus,
        &Options::default().filter(format!("common_pid == {}", w.tid)),
    )
    .unwrap();
    assert_eq!(all.read().unwrap(), 0);
    w.run();
    assert_eq!(all.read().unwrap(), 5000);
    assert_eq!(all.read_each().unwrap(), [5000]);
    assert_eq!(sevens.read().unwrap(), 500);
    assert_eq!(per_cpu.read().unwrap(), 5000);
    let each = per_cpu.read_each().unwrap();
    assert_eq!(
        each.len(),
        host_tracepoints::perf::online_cpus().unwrap().len()
    );
}

#[test]
fn filter_selects_exactly_the_matching_writes() {
    let Some(t) = tracefs() else { return };
    let tp = resolve(&t, "syscalls:sys_enter_write");
    let lengths: Vec<usize> = (0..300).map(|i| [7, 1, 8, 7, 70, 6][i % 6]).collect();
    let want = lengths.iter().filter(|&&n| n == 7).count();
    let w = Writer::spawn(lengths);
    let mut r = TracepointReader::open_with(
        &tp,
        &Target::Threads(vec![w.tid]),
        &Options::default().filter("count == 7"),
    )
    .unwrap();
    w.run();
    let s = drain(&mut r);
    assert_eq!(s.len(), want);
    assert!(
        s.iter()
            .all(|x| x.field("count") == Some(&FieldValue::U64(7)))
    );
}

#[test]
fn bad_filter_is_a_clear_error() {
    let Some(t) = tracefs() else { return };
    let tp = resolve(&t, "syscalls:sys_enter_write");
    let e = TracepointReader::open_with(
        &tp,
        &Target::Threads(vec![tid()]),
        &Options::default().filter("no_such_field == 1"),
    )
    .unwrap_err();
    assert!(matches!(e, Error::Filter { .. }), "{e}");
    assert!(e.to_string().contains("no_such_field"), "{e}");
}

#[test]
fn system_wide_per_cpu_with_pid_filter() {
    let Some(t) = tracefs() else { return };
    let tp = resolve(&t, "syscalls:sys_enter_write");
    let w = Writer::spawn(vec![9; 100]);
    let tid = w.tid;
    let mut r = TracepointReader::open_with(
        &tp,
        &Target::AllCpus,
        &Options::default().filter(format!("common_pid == {tid}")),
    )
    .unwrap();
    w.run();
    let s = drain(&mut r);
    assert_eq!(s.len(), 100);
    let cpus = host_tracepoints::perf::online_cpus().unwrap();
    assert!(
        s.iter()
            .all(|x| x.tid == tid && cpus.contains(&(x.cpu as i32)))
    );
    assert!(s.windows(2).all(|w| w[0].ts_ns <= w[1].ts_ns));
}

#[test]
fn full_ring_losses_are_counted_not_hidden() {
    let Some(t) = tracefs() else { return };
    let tp = resolve(&t, "syscalls:sys_enter_write");
    let n = 20_000;
    let w = Writer::spawn(vec![1; n]);
    let mut r = TracepointReader::open_with(
        &tp,
        &Target::Threads(vec![w.tid]),
        &Options::default().ring_pages(1),
    )
    .unwrap();
    w.run(); // Nobody reads meanwhile: a 4 KiB ring holds about 50 samples.
    let s = drain(&mut r);
    let st = r.stats();
    assert!(st.lost > 0, "{st:?}");
    assert_eq!(s.len() as u64, st.samples);
    assert_eq!(st.samples + st.lost, n as u64, "{st:?}");
    assert_eq!(r.hits().unwrap(), n as u64);
}

#[test]
fn sched_switch_comms_decode_as_strings() {
    let Some(t) = tracefs() else { return };
    let tp = resolve(&t, "sched:sched_switch");
    let (tid_tx, tid_rx) = mpsc::channel();
    let (go, go_rx) = mpsc::channel::<()>();
    let h = thread::Builder::new()
        .name("ht-sleeper".into())
        .spawn(move || {
            tid_tx.send(tid()).unwrap();
            go_rx.recv().unwrap();
            for _ in 0..20 {
                thread::sleep(Duration::from_millis(1));
            }
        })
        .unwrap();
    let tid = tid_rx.recv().unwrap();
    let mut r =
        TracepointReader::open_with(&tp, &Target::Threads(vec![tid]), &Options::default()).unwrap();
    go.send(()).unwrap();
    h.join().unwrap();
    let s = drain(&mut r);
    // Each sleep switches the thread out at least once.
    assert!(s.len() >= 20, "{} switches", s.len());
    for x in &s {
        assert_eq!(
            x.field("prev_comm"),
            Some(&FieldValue::Str("ht-sleeper".into()))
        );
        assert_eq!(x.field("prev_pid"), Some(&FieldValue::I64(tid as i64)));
        let next = x.field("next_comm").unwrap().as_str().unwrap();
        assert!(!next.is_empty() && !next.contains('\0'), "{next:?}");
        assert!(x.field("next_pid").unwrap().as_i64().unwrap() != tid as i64);
    }
}

#[test]
fn unknown_tracepoint_and_thread() {
    let Some(t) = tracefs() else { return };
    assert!(matches!(
        Tracepoint::resolve(&t, "sched:no_such_event"),
        Err(Error::UnknownTracepoint(_))
    ));
    assert!(matches!(
        Tracepoint::resolve(&t, "../../etc:passwd"),
        Err(Error::BadTracepointName(_))
    ));
    let tp = resolve(&t, "syscalls:sys_enter_write");
    let e = TracepointReader::open_with(&tp, &Target::Threads(vec![i32::MAX]), &Options::default())
        .unwrap_err();
    assert!(matches!(e, Error::NoSuchThread(_)), "{e}");
    assert!(matches!(
        TracepointReader::open_with(&tp, &Target::Threads(vec![]), &Options::default()),
        Err(Error::NoTargets)
    ));
    // The tracefs list agrees with what resolves.
    let evs = t.available_events().unwrap();
    assert!(evs.iter().any(|e| e.to_string() == "sched:sched_switch"));
    assert!(evs.iter().any(|e| e.to_string() == "kvm:kvm_pio"));
}

#[test]
fn every_available_format_parses() {
    let Some(t) = tracefs() else { return };
    let evs = t.available_events().unwrap();
    let mut failed = Vec::new();
    for e in &evs {
        match t.format(e) {
            Ok(f) => {
                assert_eq!(f.name, e.event);
                assert_eq!(f.id, t.id(e).unwrap(), "{e}");
            }
            Err(err) => failed.push(format!("{e}: {err}")),
        }
    }
    assert!(
        failed.is_empty(),
        "{} of {}: {failed:#?}",
        failed.len(),
        evs.len()
    );
}

#[test]
fn several_tracepoints_one_ring_in_order_with_own_filters() {
    let Some(t) = tracefs() else { return };
    let enter = resolve(&t, "syscalls:sys_enter_write");
    let exit = resolve(&t, "syscalls:sys_exit_write");
    let lengths: Vec<usize> = (0..100).map(|i| if i % 4 == 0 { 7 } else { 3 }).collect();
    let w = Writer::spawn(lengths);
    let specs = [
        EventSpec {
            tracepoint: enter,
            filter: Some("count == 7".into()),
        },
        EventSpec {
            tracepoint: exit,
            filter: None,
        },
    ];
    let mut r = TracepointReader::open_many(&specs, &Target::Threads(vec![w.tid]), 64).unwrap();
    assert_eq!(r.tracepoints().len(), 2);
    w.run();
    let s = drain(&mut r);
    let names: Vec<&str> = s.iter().map(|x| &*x.name).collect();
    assert_eq!(
        names
            .iter()
            .filter(|n| **n == "syscalls:sys_enter_write")
            .count(),
        25
    );
    assert_eq!(
        names
            .iter()
            .filter(|n| **n == "syscalls:sys_exit_write")
            .count(),
        100
    );
    assert_eq!(r.hits().unwrap(), 125);
    // Every filtered enter is followed by its exit, returning 7.
    for (i, x) in s.iter().enumerate() {
        if &*x.name == "syscalls:sys_enter_write" {
            let next = &s[i + 1];
            assert_eq!(&*next.name, "syscalls:sys_exit_write");
            assert_eq!(next.field("ret"), Some(&FieldValue::I64(7)));
            assert!(x.ts_ns < next.ts_ns);
        }
    }
}

#[test]
fn threads_added_later_are_traced() {
    let Some(t) = tracefs() else { return };
    let tp = resolve(&t, "syscalls:sys_enter_write");
    let a = Writer::spawn(vec![2; 20]);
    let ta = a.tid;
    let mut r =
        TracepointReader::open_with(&tp, &Target::Threads(vec![ta]), &Options::default()).unwrap();
    // A vCPU thread the VMM starts later.
    let b = Writer::spawn(vec![4; 30]);
    let tb = b.tid;
    let e = r.add_threads(&[i32::MAX]).unwrap_err();
    assert!(matches!(e, Error::NoSuchThread(_)), "{e}");
    r.add_threads(&[tb, ta, tb]).unwrap();
    assert_eq!(r.threads(), Some(&[ta, tb][..]));
    a.run();
    b.run();
    let s = drain(&mut r);
    assert_eq!(s.iter().filter(|x| x.tid == ta).count(), 20);
    assert_eq!(s.iter().filter(|x| x.tid == tb).count(), 30);
    assert_eq!(s.len(), 50);

    let mut all = TracepointReader::open_with(&tp, &Target::AllCpus, &Options::default()).unwrap();
    assert!(matches!(all.add_threads(&[ta]), Err(Error::NotPerThread)));
    assert_eq!(all.threads(), None);
}

#[test]
fn wait_wakes_on_the_watermark_and_times_out_when_idle() {
    let Some(t) = tracefs() else { return };
    let tp = resolve(&t, "syscalls:sys_enter_write");
    // A writer that stays alive after its writes: a thread's exit would wake
    // the wait too (POLLHUP), and that is not what is tested here.
    let (tid_tx, tid_rx) = mpsc::channel();
    let (go, go_rx) = mpsc::channel::<usize>();
    let h = thread::spawn(move || {
        let null = File::options().write(true).open("/dev/null").unwrap();
        tid_tx.send(tid()).unwrap();
        while let Ok(n) = go_rx.recv() {
            for _ in 0..n {
                assert_eq!((&null).write(b"x").unwrap(), 1);
            }
        }
    });
    let wtid = tid_rx.recv().unwrap();
    let mut r = TracepointReader::open_with(
        &tp,
        &Target::Threads(vec![wtid]),
        &Options::default().ring_pages(4),
    )
    .unwrap();
    // Below the mark (a quarter of 16 KiB, about 40 samples): no wakeup,
    // but read() still gets them.
    go.send(5).unwrap();
    let t0 = std::time::Instant::now();
    assert!(!r.wait(Duration::from_millis(100)).unwrap());
    assert!(t0.elapsed() >= Duration::from_millis(95));
    let mut s = Vec::new();
    assert_eq!(r.read(&mut s).unwrap(), 5);
    // Past the mark: woken well before the timeout.
    go.send(100).unwrap();
    let t0 = std::time::Instant::now();
    assert!(r.wait(Duration::from_secs(10)).unwrap());
    assert!(t0.elapsed() < Duration::from_secs(5));
    drop(go);
    h.join().unwrap();
    s.extend(drain(&mut r));
    assert_eq!(s.len(), 105);
}
