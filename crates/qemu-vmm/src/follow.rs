//! Following QEMU's log file (`-D PATH`) like `tail -f`.
//!
//! A background thread polls the file, parses each complete line and sends
//! the events over a bounded channel. QEMU writes to a file, so a slow reader
//! never blocks it; when the channel is full the event is dropped and
//! counted ([`FollowStats::dropped`]), and lines that are not trace events
//! are counted too ([`FollowStats::skipped`]): nothing is lost silently.
//!
//! ```no_run
//! # fn main() -> qemu_vmm::Result<()> {
//! use qemu_vmm::{FollowConfig, LogFollower};
//! use std::time::Duration;
//! let follower = LogFollower::spawn("/tmp/vm/qemu.log", FollowConfig::default())?;
//! while let Some(ev) = follower.recv_timeout(Duration::from_millis(100)) {
//!     println!("{} {} {:?}", ev.ts_ns, ev.name, ev.fields);
//! }
//! let stats = follower.stop();
//! assert_eq!(stats.dropped, 0);
//! # Ok(()) }
//! ```

use crate::catalogue::Catalogue;
use crate::trace::{LineParser, TraceEvent};
use crate::{Error, Result};
use host_clock::{RealtimeToMonotonic, monotonic_ns};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// A line longer than this without a newline is not QEMU's; it is skipped.
const MAX_LINE: usize = 1 << 20;
/// How often the REALTIME-MONOTONIC offset is re-measured (catches steps).
const CLOCK_REFRESH: Duration = Duration::from_secs(1);

#[derive(Clone, Debug)]
pub struct FollowConfig {
    /// Events buffered between the reader thread and the consumer.
    pub capacity: usize,
    /// How long the thread sleeps at the end of the file.
    pub poll_interval: Duration,
    /// Read the file from its start (QEMU truncates it at launch) rather
    /// than from its current end.
    pub from_start: bool,
    /// How long to wait for the file to appear.
    pub wait_for_file: Duration,
    /// Accept only these event names (see [`LineParser::with_known_events`]).
    pub known_events: Option<Vec<String>>,
    /// Accept untimed lines (QEMU without `-msg timestamp=on`), stamped when read.
    pub accept_untimed: bool,
    /// Event declarations that name fields (see [`LineParser::with_catalogue`]).
    pub catalogue: Option<Arc<Catalogue>>,
}

impl Default for FollowConfig {
    fn default() -> Self {
        FollowConfig {
            capacity: 65536,
            poll_interval: Duration::from_millis(2),
            from_start: true,
            wait_for_file: Duration::from_secs(10),
            known_events: None,
            accept_untimed: false,
            catalogue: None,
        }
    }
}

/// Counters of a follower, all since it started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FollowStats {
    /// Bytes read from the file.
    pub bytes: u64,
    /// Complete lines read.
    pub lines: u64,
    /// Events delivered to the channel.
    pub delivered: u64,
    /// Events dropped because the channel was full.
    pub dropped: u64,
    /// Lines that were not trace events.
    pub skipped: u64,
    /// Times the file shrank (re-read from its start).
    pub truncations: u64,
}

#[derive(Default)]
struct Shared {
    bytes: AtomicU64,
    lines: AtomicU64,
    delivered: AtomicU64,
    dropped: AtomicU64,
    skipped: AtomicU64,
    truncations: AtomicU64,
    /// File offset up to which every complete line has been handled.
    consumed: AtomicU64,
    error: Mutex<Option<String>>,
    clock: Mutex<Option<RealtimeToMonotonic>>,
}

/// A running follower; dropping it stops the thread.
pub struct LogFollower {
    rx: Receiver<TraceEvent>,
    shared: Arc<Shared>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    path: PathBuf,
}

impl LogFollower {
    /// Starts following `path` (which may not exist yet).
    pub fn spawn(path: impl Into<PathBuf>, cfg: FollowConfig) -> Result<LogFollower> {
        let path = path.into();
        let (tx, rx) = std::sync::mpsc::sync_channel(cfg.capacity.max(1));
        let shared = Arc::new(Shared::default());
        let stop = Arc::new(AtomicBool::new(false));
        let thread = std::thread::Builder::new()
            .name("qemu-log-follow".into())
            .spawn({
                let (path, shared, stop) = (path.clone(), shared.clone(), stop.clone());
                move || {
                    if let Err(e) = run(&path, &cfg, &tx, &shared, &stop) {
                        *shared.error.lock().unwrap_or_else(|e| e.into_inner()) =
                            Some(e.to_string());
                    }
                }
            })
            .map_err(crate::io_err("spawning the log follower"))?;
        Ok(LogFollower {
            rx,
            shared,
            stop,
            thread: Some(thread),
            path,
        })
    }

    /// The next event, waiting at most `timeout`.
    pub fn recv_timeout(&self, timeout: Duration) -> Option<TraceEvent> {
        self.rx.recv_timeout(timeout).ok()
    }

    /// Every event queued now, without waiting.
    pub fn drain(&self) -> Vec<TraceEvent> {
        self.rx.try_iter().collect()
    }

    /// The channel itself, e.g. for `select`-style polling.
    pub fn receiver(&self) -> &Receiver<TraceEvent> {
        &self.rx
    }

    pub fn stats(&self) -> FollowStats {
        let s = &self.shared;
        let get = |a: &AtomicU64| a.load(Ordering::Acquire);
        FollowStats {
            bytes: get(&s.bytes),
            lines: get(&s.lines),
            delivered: get(&s.delivered),
            dropped: get(&s.dropped),
            skipped: get(&s.skipped),
            truncations: get(&s.truncations),
        }
    }

    /// The clock conversion last measured by the thread.
    pub fn clock(&self) -> Option<RealtimeToMonotonic> {
        *self.shared.clock.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Why the thread stopped, if it failed (file never appeared, read error).
    pub fn error(&self) -> Option<String> {
        self.shared
            .error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Waits until every line in the file as of now has been handled (sent,
    /// dropped or skipped). QEMU flushes each line as it logs it, so after
    /// this, every event QEMU logged before the call is in the channel or
    /// counted.
    pub fn sync(&self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let size = std::fs::metadata(&self.path).map(|m| m.len()).unwrap_or(0);
        // A partial last line is never consumed: wait for what is complete,
        // which is everything QEMU has finished writing.
        let target = self.complete_up_to(size);
        loop {
            if let Some(e) = self.error() {
                return Err(Error::Protocol(format!("log follower failed: {e}")));
            }
            if self.shared.consumed.load(Ordering::Acquire) >= target {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(Error::Timeout {
                    what: format!("the log follower to reach offset {target}"),
                    after: timeout,
                });
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// The end of the last complete line at or before `size`.
    fn complete_up_to(&self, size: u64) -> u64 {
        let Ok(mut f) = File::open(&self.path) else {
            return 0;
        };
        let start = size.saturating_sub(MAX_LINE as u64);
        let mut buf = Vec::new();
        if f.seek(SeekFrom::Start(start)).is_err()
            || f.take(size - start).read_to_end(&mut buf).is_err()
        {
            return 0;
        }
        buf.iter()
            .rposition(|&b| b == b'\n')
            .map_or(start, |p| start + p as u64 + 1)
    }

    /// Reads to the end of the file, stops the thread and returns the counters.
    pub fn stop(mut self) -> FollowStats {
        self.shutdown();
        self.stats()
    }

    fn shutdown(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for LogFollower {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn run(
    path: &Path,
    cfg: &FollowConfig,
    tx: &SyncSender<TraceEvent>,
    shared: &Shared,
    stop: &AtomicBool,
) -> Result<()> {
    let clock = RealtimeToMonotonic::measure();
    *shared.clock.lock().unwrap_or_else(|e| e.into_inner()) = Some(clock);
    let mut parser = LineParser::new(clock).accept_untimed(cfg.accept_untimed);
    if let Some(k) = &cfg.known_events {
        parser = parser.with_known_events(k.iter().cloned());
    }
    if let Some(c) = &cfg.catalogue {
        parser = parser.with_catalogue(c.clone());
    }
    let deadline = Instant::now() + cfg.wait_for_file;
    let mut file = loop {
        match File::open(path) {
            Ok(f) => break f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if stop.load(Ordering::Acquire) {
                    return Ok(());
                }
                if Instant::now() >= deadline {
                    return Err(Error::Timeout {
                        what: format!("{} to appear", path.display()),
                        after: cfg.wait_for_file,
                    });
                }
                std::thread::sleep(cfg.poll_interval);
            }
            Err(source) => {
                return Err(Error::Io {
                    what: path.display().to_string(),
                    source,
                });
            }
        }
    };
    let io = |source| Error::Io {
        what: path.display().to_string(),
        source,
    };
    let mut offset = if cfg.from_start {
        0
    } else {
        file.seek(SeekFrom::End(0)).map_err(io)?
    };
    shared.consumed.store(offset, Ordering::Release);
    let mut pending: Vec<u8> = Vec::new();
    let mut chunk = vec![0u8; 256 * 1024];
    let mut last_clock = Instant::now();
    loop {
        // Read the stop flag before reading, so the last pass after it is
        // set still drains everything written up to then.
        let stopping = stop.load(Ordering::Acquire);
        let n = file.read(&mut chunk).map_err(io)?;
        if n == 0 {
            if stopping {
                if !pending.is_empty() {
                    shared.skipped.fetch_add(1, Ordering::AcqRel);
                }
                return Ok(());
            }
            let len = file.metadata().map_err(io)?.len();
            if len < offset {
                // Truncated (QEMU reopened it): start again from the top.
                file.seek(SeekFrom::Start(0)).map_err(io)?;
                offset = 0;
                pending.clear();
                shared.truncations.fetch_add(1, Ordering::AcqRel);
                shared.consumed.store(0, Ordering::Release);
                continue;
            }
            std::thread::sleep(cfg.poll_interval);
            continue;
        }
        if last_clock.elapsed() >= CLOCK_REFRESH {
            let clock = RealtimeToMonotonic::measure();
            parser.set_clock(clock);
            *shared.clock.lock().unwrap_or_else(|e| e.into_inner()) = Some(clock);
            last_clock = Instant::now();
        }
        let read_ns = monotonic_ns();
        offset += n as u64;
        shared.bytes.fetch_add(n as u64, Ordering::AcqRel);
        pending.extend_from_slice(&chunk[..n]);
        let mut start = 0;
        while let Some(nl) = pending[start..].iter().position(|&b| b == b'\n') {
            let line = String::from_utf8_lossy(&pending[start..start + nl]);
            start += nl + 1;
            shared.lines.fetch_add(1, Ordering::AcqRel);
            match parser.parse(&line, read_ns) {
                Some(ev) => match tx.try_send(ev) {
                    Ok(()) => {
                        shared.delivered.fetch_add(1, Ordering::AcqRel);
                    }
                    Err(TrySendError::Full(_)) => {
                        shared.dropped.fetch_add(1, Ordering::AcqRel);
                    }
                    // Nobody listens any more.
                    Err(TrySendError::Disconnected(_)) => return Ok(()),
                },
                None => {
                    shared.skipped.fetch_add(1, Ordering::AcqRel);
                }
            }
        }
        pending.drain(..start);
        if pending.len() > MAX_LINE {
            shared.skipped.fetch_add(1, Ordering::AcqRel);
            pending.clear();
        }
        shared
            .consumed
            .store(offset - pending.len() as u64, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn follows_appends_partial_lines_and_counts() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("qemu.log");
        let cfg = FollowConfig {
            capacity: 4,
            ..FollowConfig::default()
        };
        let follower = LogFollower::spawn(&path, cfg).unwrap();
        let mut f = std::fs::File::create(&path).unwrap();
        write!(f, "1@1795317900.000001:serial_write addr 0x00 val 0x41\njunk line\n1@1795317900.000002:serial_wr").unwrap();
        f.flush().unwrap();
        follower.sync(Duration::from_secs(5)).unwrap();
        let e = follower.recv_timeout(Duration::from_secs(5)).unwrap();
        assert_eq!(e.field("val").and_then(|v| v.as_u64()), Some(0x41));
        assert!(follower.recv_timeout(Duration::from_millis(50)).is_none());
        writeln!(f, "ite addr 0x00 val 0x42").unwrap();
        for i in 0..10 {
            writeln!(
                f,
                "1@1795317900.{:06}:serial_write addr 0x00 val {i}",
                10 + i
            )
            .unwrap();
        }
        f.flush().unwrap();
        follower.sync(Duration::from_secs(5)).unwrap();
        let got = follower.drain();
        assert_eq!(got.len(), 4, "capacity");
        assert_eq!(got[0].field("val").and_then(|v| v.as_u64()), Some(0x42));
        let s = follower.stop();
        assert_eq!(s.lines, 13);
        assert_eq!(s.skipped, 1);
        assert_eq!(s.delivered + s.dropped, 12);
        assert_eq!(s.dropped, 7);
    }

    /// How fast lines are parsed and delivered (`cargo test --release --
    /// --ignored throughput --nocapture`).
    #[test]
    #[ignore]
    fn throughput() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("qemu.log");
        let mut text = String::new();
        let n = 500_000;
        for i in 0..n {
            text += &format!(
                "911@1795317888.{:06}:memory_region_ops_write cpu 0 mr 0x5561d77cd980 addr 0x70 value 0x{i:x} size 1 name 'rtc-index'\n",
                i % 1_000_000
            );
        }
        std::fs::write(&path, &text).unwrap();
        let t = Instant::now();
        let mut p = LineParser::new(RealtimeToMonotonic::measure());
        for line in text.lines() {
            std::hint::black_box(p.parse(line, 0));
        }
        eprintln!("parse only: {:.2} s", t.elapsed().as_secs_f64());
        let t = Instant::now();
        let follower = LogFollower::spawn(&path, FollowConfig::default()).unwrap();
        let mut got = 0;
        while got < n {
            if follower.recv_timeout(Duration::from_secs(10)).is_none() {
                break;
            }
            got += 1;
        }
        let secs = t.elapsed().as_secs_f64();
        eprintln!(
            "{got} events in {secs:.2} s: {:.0} events/s, {:.0} MB/s",
            got as f64 / secs,
            text.len() as f64 / secs / 1e6
        );
        assert_eq!(got, n);
    }

    #[test]
    fn missing_file_times_out() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = FollowConfig {
            wait_for_file: Duration::from_millis(50),
            ..FollowConfig::default()
        };
        let follower = LogFollower::spawn(dir.path().join("none.log"), cfg).unwrap();
        std::thread::sleep(Duration::from_millis(300));
        assert!(follower.error().unwrap().contains("to appear"));
        assert!(follower.sync(Duration::from_millis(10)).is_err());
    }
}
