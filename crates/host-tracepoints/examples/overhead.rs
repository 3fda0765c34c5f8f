//! What a traced write(2) costs the traced thread: untraced, counted, and
//! sampled with a reader draining concurrently (as vmprobe would).
//!
//! `cargo run --release -p host-tracepoints --example overhead [N]` as root.

use std::fs::File;
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use host_tracepoints::{Options, Target, Tracefs, Tracepoint, TracepointCounter, TracepointReader};

/// Spawns a thread that makes `n` one-byte writes when told; returns its tid
/// and a go function giving the elapsed time.
fn writer(n: usize) -> (i32, impl FnOnce() -> Duration) {
    let (tid_tx, tid_rx) = mpsc::channel();
    let (go, go_rx) = mpsc::channel::<()>();
    let h = thread::spawn(move || {
        // SAFETY: gettid has no preconditions.
        tid_tx.send(unsafe { libc::gettid() }).unwrap();
        let null = File::options().write(true).open("/dev/null").unwrap();
        go_rx.recv().unwrap();
        let t = Instant::now();
        for _ in 0..n {
            (&null).write_all(b"x").unwrap();
        }
        t.elapsed()
    });
    (tid_rx.recv().unwrap(), move || {
        go.send(()).unwrap();
        h.join().unwrap()
    })
}

fn main() -> Result<(), host_tracepoints::Error> {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(200_000);
    let t = Tracefs::open()?;
    let tp = Tracepoint::resolve(&t, "syscalls:sys_enter_write")?;
    let per = |d: Duration| d.as_nanos() as f64 / n as f64;

    let (_, run) = writer(n);
    let base = run();
    println!("untraced: {:.0} ns/write", per(base));

    let (tid, run) = writer(n);
    let c = TracepointCounter::open(&tp, &Target::Threads(vec![tid]), &Options::default())?;
    let d = run();
    println!("counted:  {:.0} ns/write ({} counted)", per(d), c.read()?);

    let (tid, run) = writer(n);
    let mut r = TracepointReader::open_with(&tp, &Target::Threads(vec![tid]), &Options::default())?;
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = stop.clone();
    let drainer = thread::spawn(move || {
        let mut v = Vec::new();
        let mut got = 0usize;
        while !stop2.load(Ordering::Relaxed) {
            r.wait(Duration::from_millis(20))?;
            got += r.read(&mut v)?;
            v.clear();
        }
        r.disable()?;
        got += r.read(&mut v)?;
        Ok::<_, host_tracepoints::Error>((got, r.lost()))
    });
    let d = run();
    stop.store(true, Ordering::Relaxed);
    let (got, lost) = drainer.join().unwrap()?;
    println!(
        "sampled:  {:.0} ns/write ({got} samples decoded, {lost} lost)",
        per(d)
    );

    // Decode speed alone: a ring big enough for everything, read afterwards.
    let (tid, run) = writer(n);
    let pages = (n * 96 / 4096).next_power_of_two();
    let mut r = TracepointReader::open_with(
        &tp,
        &Target::Threads(vec![tid]),
        &Options::default().ring_pages(pages),
    )?;
    run();
    r.disable()?;
    let mut v = Vec::with_capacity(n);
    let t0 = Instant::now();
    let got = r.read(&mut v)?;
    println!(
        "decode:   {:.0} ns/sample ({got} samples, {} lost)",
        t0.elapsed().as_nanos() as f64 / got.max(1) as f64,
        r.lost()
    );

    // The format decode alone, in memory.
    let raw = vec![0u8; 40];
    let t0 = Instant::now();
    let mut fields = 0;
    for _ in 0..n {
        fields += std::hint::black_box(tp.format().decode(std::hint::black_box(&raw)))
            .map_or(0, |v| v.len());
    }
    println!(
        "format:   {:.0} ns/record ({fields} fields)",
        t0.elapsed().as_nanos() as f64 / n as f64
    );
    Ok(())
}
