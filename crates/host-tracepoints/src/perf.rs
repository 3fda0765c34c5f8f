//! Tracepoints through `perf_event_open`: sampled into mmap'd ring buffers
//! and decoded with the tracefs format, or only counted.
//!
//! Long file: the whole of vmprobe's `perf_event_open` use (attributes,
//! filters, per-CPU rings shared between events with `SET_OUTPUT`, ring
//! reading with lost-record counts) sits in one place, so that every one
//! of the crate's `unsafe` blocks is here, beside its SAFETY comment.
//! Why not a perf crate: `perf-event2` 0.7 and `perf-event-open` 0.6 (their
//! docs.rs pages, read 2026-12-02) open tracepoints by id and read samples;
//! moving to one is possible and not done yet, because it must keep the
//! ring sharing, the filters and the lost-record accounting that
//! `tests/host_kvm.rs` checks against bpftrace's counts.
//!
//! Every event is opened disabled, given its filter and ring, then enabled,
//! so nothing fires before the filter is in place. Sample times use
//! `CLOCK_MONOTONIC` (`use_clockid`), vmprobe's one time base.

use std::collections::HashMap;
use std::fs::File;
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use perf_event_open_sys as sys;
use sys::bindings::{self as b, perf_event_attr};

use crate::Error;
use crate::format::{EventFormat, FieldValue};
use crate::tracefs::{Tracefs, TracepointName};

/// A tracepoint resolved against tracefs: its id and record layout.
#[derive(Debug, Clone)]
pub struct Tracepoint {
    name: TracepointName,
    label: Arc<str>,
    format: Arc<EventFormat>,
}

impl Tracepoint {
    /// Resolves `system:event` (e.g. `sched:sched_switch`).
    pub fn resolve(tracefs: &Tracefs, name: &str) -> Result<Tracepoint, Error> {
        let name: TracepointName = name.parse()?;
        let mut format = tracefs.format(&name)?;
        // The `id` file is what perf documents; the format's ID line has
        // always matched it, but the file wins.
        format.id = tracefs.id(&name)?;
        Ok(Tracepoint {
            label: name.to_string().into(),
            name,
            format: Arc::new(format),
        })
    }

    pub fn name(&self) -> &TracepointName {
        &self.name
    }

    pub fn format(&self) -> &EventFormat {
        &self.format
    }

    /// The id perf uses (`perf_event_attr.config`).
    pub fn id(&self) -> u64 {
        self.format.id
    }
}

/// Whose events to see.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// These threads only, on whatever CPU they run (pid = tid, cpu = -1):
    /// a VM's vCPU threads. One ring buffer per thread.
    ///
    /// The kernel detaches such events when the thread exits (in `do_exit`),
    /// so events of an exiting thread's last moments, e.g. its final
    /// `sched_switch`, are not seen.
    Threads(Vec<i32>),
    /// Every thread, one ring buffer per online CPU (pid = -1, cpu = N).
    AllCpus,
}

/// Options for [`TracepointReader::open_with`] and [`TracepointCounter::open`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// A tracefs filter (`count == 7 && fd == 1`), applied in the kernel
    /// (`PERF_EVENT_IOC_SET_FILTER`): unmatched events cost no sample.
    pub filter: Option<String>,
    /// Data pages per ring buffer; a power of two. Bigger rings lose less
    /// when the reader falls behind.
    pub ring_pages: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            filter: None,
            ring_pages: 64,
        }
    }
}

impl Options {
    pub fn filter(mut self, filter: impl Into<String>) -> Self {
        self.filter = Some(filter.into());
        self
    }

    pub fn ring_pages(mut self, pages: usize) -> Self {
        self.ring_pages = pages;
        self
    }
}

/// One decoded tracepoint hit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sample {
    /// Host `CLOCK_MONOTONIC`, ns.
    pub ts_ns: u64,
    /// Process (thread group) id of the thread that hit it.
    pub pid: i32,
    pub tid: i32,
    pub cpu: u32,
    /// `system:event`.
    pub name: Arc<str>,
    /// The event's own fields in record order (`common_*` left out: `pid`
    /// and `tid` say the same).
    pub fields: Vec<(Arc<str>, FieldValue)>,
}

impl Sample {
    pub fn field(&self, name: &str) -> Option<&FieldValue> {
        self.fields
            .iter()
            .find(|(n, _)| &**n == name)
            .map(|(_, v)| v)
    }
}

/// Loss and decode accounting since the reader was opened, as of the last
/// [`TracepointReader::read`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Samples decoded and returned.
    pub samples: u64,
    /// Samples the kernel dropped because a ring was full. The kernel reports
    /// them in `PERF_RECORD_LOST` records only once space frees up again, so
    /// where it can (Linux 6.0+, `PERF_FORMAT_LOST`) this is read from the
    /// event instead, which is exact at any time.
    pub lost: u64,
    /// Samples whose raw data did not match the format (never expected).
    pub undecodable: u64,
}

/// Opens `tracepoint` (`system:event`) for the threads `tids`, with default
/// options: the short form of [`TracepointReader::open_with`].
pub fn open(tracepoint: &str, tids: &[i32]) -> Result<TracepointReader, Error> {
    let tp = Tracepoint::resolve(&Tracefs::open()?, tracepoint)?;
    TracepointReader::open_with(&tp, &Target::Threads(tids.to_vec()), &Options::default())
}

/// One tracepoint of a [`TracepointReader::open_many`], with its own filter.
#[derive(Debug, Clone)]
pub struct EventSpec {
    pub tracepoint: Tracepoint,
    pub filter: Option<String>,
}

/// Samples of one or more tracepoints, decoded. All tracepoints of one
/// thread (or CPU) share one ring, so their samples come out in the order
/// they happened.
#[derive(Debug)]
pub struct TracepointReader {
    tps: Vec<Tracepoint>,
    // Unmapped before the descriptors close (field order).
    rings: Vec<Ring>,
    fds: Vec<EventFd>,
    /// Kernel event id (`PERF_SAMPLE_IDENTIFIER`) to index in `tps`.
    ids: HashMap<u64, usize>,
    stats: Stats,
    scratch: Vec<u8>,
    specs: Vec<EventSpec>,
    /// Bytes of each ring's data area.
    data_size: usize,
    /// `PERF_FORMAT_LOST`, or 0 on kernels without it.
    read_format: u64,
    /// The traced threads, for [`Target::Threads`].
    threads: Option<Vec<i32>>,
    enabled: bool,
}

#[derive(Debug)]
struct EventFd {
    file: File,
    /// Opened with `PERF_FORMAT_LOST`.
    lost_format: bool,
}

impl TracepointReader {
    /// Opens the tracepoint for `target`, sampling every hit that passes the
    /// filter, and enables it.
    pub fn open_with(tp: &Tracepoint, target: &Target, opts: &Options) -> Result<Self, Error> {
        let spec = EventSpec {
            tracepoint: tp.clone(),
            filter: opts.filter.clone(),
        };
        Self::open_many(&[spec], target, opts.ring_pages)
    }

    /// Opens several tracepoints for `target` into one ring per thread (or
    /// CPU) of `ring_pages` pages, and enables them.
    pub fn open_many(
        events: &[EventSpec],
        target: &Target,
        ring_pages: usize,
    ) -> Result<Self, Error> {
        if !ring_pages.is_power_of_two() {
            return Err(Error::BadRingSize(ring_pages));
        }
        if events.is_empty() {
            return Err(Error::NoTargets);
        }
        let mut reader = TracepointReader {
            tps: events.iter().map(|e| e.tracepoint.clone()).collect(),
            specs: events.to_vec(),
            rings: Vec::new(),
            fds: Vec::new(),
            ids: HashMap::new(),
            stats: Stats::default(),
            scratch: Vec::new(),
            data_size: ring_pages * page_size(),
            read_format: b::PERF_FORMAT_LOST as u64,
            threads: match target {
                Target::Threads(t) => Some(Vec::with_capacity(t.len())),
                Target::AllCpus => None,
            },
            enabled: false,
        };
        for (pid, cpu) in targets(target)? {
            reader.attach(pid, cpu)?;
        }
        reader.enable()?;
        Ok(reader)
    }

    /// Adds threads to a [`Target::Threads`] reader (vCPU threads the VMM
    /// started later); ones already traced are skipped. They are enabled if
    /// the reader is. On error none of `tids` from the failing one on is
    /// traced.
    pub fn add_threads(&mut self, tids: &[i32]) -> Result<(), Error> {
        if self.threads.is_none() {
            return Err(Error::NotPerThread);
        }
        for &tid in tids {
            if self.threads.as_ref().is_some_and(|t| t.contains(&tid)) {
                continue;
            }
            let first = self.fds.len();
            self.attach(tid, -1)?;
            if self.enabled {
                for f in &self.fds[first..] {
                    ioctl_enable(&f.file, true)?;
                }
            }
        }
        Ok(())
    }

    /// The threads traced (`None` for [`Target::AllCpus`]).
    pub fn threads(&self) -> Option<&[i32]> {
        self.threads.as_deref()
    }

    /// Opens every tracepoint for one thread or CPU, disabled, into one new
    /// ring; all or nothing.
    fn attach(&mut self, pid: i32, cpu: i32) -> Result<(), Error> {
        let (rings, fds) = (self.rings.len(), self.fds.len());
        let r = self.attach_inner(pid, cpu);
        if r.is_err() {
            self.rings.truncate(rings);
            self.fds.truncate(fds);
        } else if pid >= 0
            && let Some(t) = &mut self.threads
        {
            t.push(pid);
        }
        r
    }

    fn attach_inner(&mut self, pid: i32, cpu: i32) -> Result<(), Error> {
        let mut leader = None;
        for (i, ev) in self.specs.iter().enumerate() {
            let tp = &ev.tracepoint;
            let mut attr = base_attr(tp.id());
            attr.__bindgen_anon_1.sample_period = 1;
            // IDENTIFIER first in every sample: which tracepoint it is.
            attr.sample_type = (b::PERF_SAMPLE_IDENTIFIER
                | b::PERF_SAMPLE_TID
                | b::PERF_SAMPLE_TIME
                | b::PERF_SAMPLE_CPU
                | b::PERF_SAMPLE_RAW) as u64;
            // Wake a waiting reader when a quarter of the ring is used, not
            // per sample: hot tracepoints must not cost a wakeup each.
            attr.set_watermark(1);
            attr.__bindgen_anon_2.wakeup_watermark = (self.data_size / 4).max(1) as u32;
            // read() gives {hits, lost}: an exact loss count at any time.
            attr.read_format = self.read_format;
            let fd = match perf_open(&mut attr, pid, cpu, tp) {
                Err(Error::PerfOpen { source, .. })
                    if source.raw_os_error() == Some(libc::EINVAL) && self.read_format != 0 =>
                {
                    // Before Linux 6.0: LOST records are all there is.
                    self.read_format = 0;
                    attr.read_format = 0;
                    perf_open(&mut attr, pid, cpu, tp)?
                }
                r => r?,
            };
            set_filter(&fd, tp, ev.filter.as_deref())?;
            self.ids.insert(event_id(&fd)?, i);
            match leader {
                None => {
                    leader = Some(fd.as_raw_fd());
                    self.rings
                        .push(Ring::map(&fd, page_size(), self.data_size)?);
                }
                Some(l) => set_output(&fd, l)?,
            }
            self.fds.push(EventFd {
                file: File::from(fd),
                lost_format: attr.read_format != 0,
            });
        }
        Ok(())
    }

    /// The tracepoints, in the order given when opening.
    pub fn tracepoints(&self) -> &[Tracepoint] {
        &self.tps
    }

    /// The tracepoints with their filters, in the order given when opening.
    pub fn specs(&self) -> &[EventSpec] {
        &self.specs
    }

    /// Starts (or resumes) sampling.
    pub fn enable(&mut self) -> Result<(), Error> {
        for f in &self.fds {
            ioctl_enable(&f.file, true)?;
        }
        self.enabled = true;
        Ok(())
    }

    /// Stops sampling; samples already in the rings can still be read.
    pub fn disable(&mut self) -> Result<(), Error> {
        self.enabled = false;
        for f in &self.fds {
            ioctl_enable(&f.file, false)?;
        }
        Ok(())
    }

    /// Waits up to `timeout` for a ring to fill past its wakeup mark or a
    /// traced thread to exit. Returns whether any was ready; samples below the
    /// mark are read by [`read`](Self::read) regardless.
    pub fn wait(&self, timeout: Duration) -> Result<bool, Error> {
        let mut fds: Vec<libc::pollfd> = self
            .rings
            .iter()
            .map(|r| libc::pollfd {
                fd: r.fd,
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
        // SAFETY: `fds` is a valid array of `fds.len()` pollfds for the call.
        let rc = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
        if rc < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                return Ok(false);
            }
            return Err(Error::Sys {
                op: "poll",
                source: e,
            });
        }
        Ok(rc > 0)
    }

    /// Drains every ring, appending decoded samples to `out` sorted by time.
    /// Samples of one thread (or CPU) are always in order; across threads
    /// the order holds within one call. Returns how many were appended.
    pub fn read(&mut self, out: &mut Vec<Sample>) -> Result<usize, Error> {
        let start = out.len();
        let mut stats = Stats::default();
        let mut lost_records = 0u64;
        for ring in &mut self.rings {
            let (tps, ids, scratch) = (&self.tps, &self.ids, &mut self.scratch);
            ring.drain(scratch, |rec| handle_record(tps, ids, rec, &mut stats, out));
            ring.lost_records = ring.lost_records.saturating_add(stats.lost);
            lost_records = lost_records.saturating_add(ring.lost_records);
            stats.lost = 0;
        }
        self.stats.samples += stats.samples;
        self.stats.undecodable += stats.undecodable;
        self.stats.lost = lost_records;
        if self.fds.iter().all(|f| f.lost_format) {
            // The events' own counts are exact; records only catch up later.
            let mut lost = 0u64;
            for f in &self.fds {
                lost = lost.saturating_add(read_counts(f)?.1);
            }
            self.stats.lost = lost.max(lost_records);
        }
        let n = out.len() - start;
        if self.rings.len() > 1 {
            out[start..].sort_by_key(|s| s.ts_ns);
        }
        Ok(n)
    }

    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// Samples dropped by the kernel (full rings), as of the last read.
    pub fn lost(&self) -> u64 {
        self.stats.lost
    }

    /// How many times the tracepoints fired for the target (after their
    /// filters), sampled or lost: `samples + lost + still unread`.
    pub fn hits(&self) -> Result<u64, Error> {
        let mut n = 0u64;
        for f in &self.fds {
            n = n.saturating_add(read_counts(f)?.0);
        }
        Ok(n)
    }
}

/// `(hits, lost)` of one event; lost is 0 without `PERF_FORMAT_LOST`.
fn read_counts(f: &EventFd) -> Result<(u64, u64), Error> {
    let mut b = [0u8; 16];
    let n = if f.lost_format { 16 } else { 8 };
    (&f.file)
        .read_exact(&mut b[..n])
        .map_err(|source| Error::Sys {
            op: "read perf event",
            source,
        })?;
    let v = |i: usize| u64::from_ne_bytes(b[i..i + 8].try_into().unwrap_or_default());
    Ok((v(0), v(8)))
}

/// One perf record: `(type, body after the 8-byte header)`.
fn handle_record(
    tps: &[Tracepoint],
    ids: &HashMap<u64, usize>,
    (kind, body): (u32, &[u8]),
    stats: &mut Stats,
    out: &mut Vec<Sample>,
) {
    match kind {
        b::PERF_RECORD_SAMPLE => match parse_sample(tps, ids, body) {
            Some(s) => {
                stats.samples += 1;
                out.push(s);
            }
            None => stats.undecodable += 1,
        },
        // { u64 id; u64 lost; }
        b::PERF_RECORD_LOST => stats.lost = stats.lost.saturating_add(u64_at(body, 8).unwrap_or(1)),
        // { u64 lost; }
        b::PERF_RECORD_LOST_SAMPLES => {
            stats.lost = stats.lost.saturating_add(u64_at(body, 0).unwrap_or(1))
        }
        _ => {} // THROTTLE and the like carry no samples.
    }
}

/// A sample with `IDENTIFIER | TID | TIME | CPU | RAW`, fields in the
/// kernel's order: `u64 id; u32 pid, tid; u64 time; u32 cpu, res; u32 size;
/// u8 data[size]`.
fn parse_sample(tps: &[Tracepoint], ids: &HashMap<u64, usize>, body: &[u8]) -> Option<Sample> {
    let tp = tps.get(*ids.get(&u64_at(body, 0)?)?)?;
    let pid = u32_at(body, 8)? as i32;
    let tid = u32_at(body, 12)? as i32;
    let ts_ns = u64_at(body, 16)?;
    let cpu = u32_at(body, 24)?;
    let size = u32_at(body, 32)? as usize;
    let raw = body.get(36..36usize.checked_add(size)?)?;
    let fields = tp.format.decode(raw).ok()?;
    Some(Sample {
        ts_ns,
        pid,
        tid,
        cpu,
        name: tp.label.clone(),
        fields,
    })
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_ne_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// Counts of one tracepoint without samples: the kernel only increments a
/// counter per hit, the cheap way to watch hot events.
#[derive(Debug)]
pub struct TracepointCounter {
    files: Vec<File>,
}

impl TracepointCounter {
    /// Opens the tracepoint for `target` in counting mode and enables it.
    /// `opts.ring_pages` is unused.
    pub fn open(tp: &Tracepoint, target: &Target, opts: &Options) -> Result<Self, Error> {
        let mut attr = base_attr(tp.id());
        // sample_period 0: a pure counter, no overflow, no samples.
        attr.__bindgen_anon_1.sample_period = 0;
        let mut files = Vec::new();
        for (pid, cpu) in targets(target)? {
            let fd = perf_open(&mut attr, pid, cpu, tp)?;
            set_filter(&fd, tp, opts.filter.as_deref())?;
            files.push(File::from(fd));
        }
        let c = TracepointCounter { files };
        c.enable()?;
        Ok(c)
    }

    pub fn enable(&self) -> Result<(), Error> {
        for f in &self.files {
            ioctl_enable(f, true)?;
        }
        Ok(())
    }

    pub fn disable(&self) -> Result<(), Error> {
        for f in &self.files {
            ioctl_enable(f, false)?;
        }
        Ok(())
    }

    /// The count per thread (or per CPU), in [`Target`] order.
    pub fn read_each(&self) -> Result<Vec<u64>, Error> {
        self.files
            .iter()
            .map(|mut f| {
                let mut b = [0u8; 8];
                f.read_exact(&mut b).map_err(|source| Error::Sys {
                    op: "read counter",
                    source,
                })?;
                Ok(u64::from_ne_bytes(b))
            })
            .collect()
    }

    /// The total count over all threads (or CPUs).
    pub fn read(&self) -> Result<u64, Error> {
        Ok(self.read_each()?.iter().sum())
    }
}

fn base_attr(id: u64) -> perf_event_attr {
    let mut attr = perf_event_attr {
        type_: b::PERF_TYPE_TRACEPOINT,
        size: std::mem::size_of::<perf_event_attr>() as u32,
        config: id,
        ..Default::default()
    };
    attr.set_disabled(1);
    attr.set_use_clockid(1);
    attr.clockid = libc::CLOCK_MONOTONIC;
    attr
}

fn targets(target: &Target) -> Result<Vec<(i32, i32)>, Error> {
    Ok(match target {
        Target::Threads(tids) => {
            if tids.is_empty() {
                return Err(Error::NoTargets);
            }
            tids.iter().map(|&t| (t, -1)).collect()
        }
        Target::AllCpus => online_cpus()?.into_iter().map(|c| (-1, c)).collect(),
    })
}

/// CPUs listed in `/sys/devices/system/cpu/online` (`0-3,6`).
pub fn online_cpus() -> Result<Vec<i32>, Error> {
    let path = "/sys/devices/system/cpu/online";
    let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
        path: path.into(),
        source,
    })?;
    parse_cpu_list(&text).ok_or_else(|| Error::Io {
        path: path.into(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, "bad CPU list"),
    })
}

fn parse_cpu_list(s: &str) -> Option<Vec<i32>> {
    let mut v = Vec::new();
    for part in s.trim().split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (i32, i32) = (a.parse().ok()?, b.parse().ok()?);
                if b < a || b - a > 65536 {
                    return None;
                }
                v.extend(a..=b);
            }
            None => v.push(part.parse().ok()?),
        }
    }
    Some(v)
}

fn perf_open(
    attr: &mut perf_event_attr,
    pid: i32,
    cpu: i32,
    tp: &Tracepoint,
) -> Result<OwnedFd, Error> {
    // SAFETY: `attr` is a fully initialised perf_event_attr whose `size` is
    // its own size; the kernel only reads it (and may write `size` back).
    let fd = unsafe {
        sys::perf_event_open(attr, pid, cpu, -1, sys::bindings::PERF_FLAG_FD_CLOEXEC as _)
    };
    if fd < 0 {
        let source = std::io::Error::last_os_error();
        let who = if pid >= 0 {
            format!("thread {pid}")
        } else {
            format!("CPU {cpu}")
        };
        return Err(match source.raw_os_error() {
            Some(libc::EACCES) | Some(libc::EPERM) => Error::PerfPermission {
                tracepoint: tp.label.to_string(),
                source,
            },
            Some(libc::ESRCH) => Error::NoSuchThread(pid),
            _ => Error::PerfOpen {
                tracepoint: tp.label.to_string(),
                who,
                source,
            },
        });
    }
    // SAFETY: perf_event_open returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn set_filter(fd: &impl AsRawFd, tp: &Tracepoint, filter: Option<&str>) -> Result<(), Error> {
    let Some(filter) = filter else { return Ok(()) };
    let err = |source| Error::Filter {
        tracepoint: tp.label.to_string(),
        filter: filter.to_string(),
        source,
    };
    let c = std::ffi::CString::new(filter)
        .map_err(|_| err(std::io::Error::from_raw_os_error(libc::EINVAL)))?;
    // SAFETY: `c` is a NUL-terminated string that outlives the call; the
    // kernel copies it and does not write through the pointer.
    let rc = unsafe { sys::ioctls::SET_FILTER(fd.as_raw_fd(), c.as_ptr() as *mut _) };
    if rc < 0 {
        return Err(err(std::io::Error::last_os_error()));
    }
    Ok(())
}

/// The kernel's id for the event, as `PERF_SAMPLE_IDENTIFIER` reports it.
fn event_id(fd: &OwnedFd) -> Result<u64, Error> {
    let mut id = 0u64;
    // SAFETY: PERF_EVENT_IOC_ID writes one u64 through the pointer, which
    // points at `id` for the duration of the call.
    let rc = unsafe { sys::ioctls::ID(fd.as_raw_fd(), &mut id) };
    if rc < 0 {
        return Err(Error::Sys {
            op: "PERF_EVENT_IOC_ID",
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(id)
}

/// Sends `fd`'s samples to the ring mapped from `leader` (same thread or
/// CPU), so one ring per thread serves every tracepoint.
fn set_output(fd: &OwnedFd, leader: RawFd) -> Result<(), Error> {
    // SAFETY: both are perf event descriptors we hold open; the ioctl takes
    // the target descriptor as an integer.
    let rc = unsafe { sys::ioctls::SET_OUTPUT(fd.as_raw_fd(), leader) };
    if rc < 0 {
        return Err(Error::Sys {
            op: "PERF_EVENT_IOC_SET_OUTPUT",
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}

fn ioctl_enable(fd: &impl AsRawFd, on: bool) -> Result<(), Error> {
    // SAFETY: ENABLE/DISABLE take an integer flag (0: this event only) and
    // touch no memory of ours.
    let rc = unsafe {
        if on {
            sys::ioctls::ENABLE(fd.as_raw_fd(), 0)
        } else {
            sys::ioctls::DISABLE(fd.as_raw_fd(), 0)
        }
    };
    if rc < 0 {
        return Err(Error::Sys {
            op: if on { "enable" } else { "disable" },
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}

fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if p > 0 { p as usize } else { 4096 }
}

/// One mmap'd perf ring: a control page, then `data_size` bytes of records.
#[derive(Debug)]
struct Ring {
    /// The descriptor it was mapped from (owned by the reader's `fds`).
    fd: RawFd,
    /// Sum of `PERF_RECORD_LOST*` records seen.
    lost_records: u64,
    base: *mut u8,
    map_len: usize,
    data: *const u8,
    data_size: usize,
}

// SAFETY: the mapping belongs to this Ring alone (no aliases are handed out),
// so moving it to another thread is as safe as moving the fd.
unsafe impl Send for Ring {}

impl Ring {
    fn map(fd: &OwnedFd, page: usize, data_size: usize) -> Result<Ring, Error> {
        let map_len = page + data_size;
        // SAFETY: mapping a perf fd with its documented layout (1 + 2^n
        // pages, shared, writable so data_tail can be written); the kernel
        // validates the size.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                map_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(Error::Sys {
                op: "mmap perf ring",
                source: std::io::Error::last_os_error(),
            });
        }
        let base = base as *mut u8;
        let meta = base as *const b::perf_event_mmap_page;
        // SAFETY: the first page of the mapping is the perf_event_mmap_page;
        // data_offset/data_size are set by the kernel before mmap returns.
        let (off, size) = unsafe { ((*meta).data_offset as usize, (*meta).data_size as usize) };
        // Kernels before 4.1 leave them 0: data then starts at the next page.
        let (off, size) = if size == 0 {
            (page, data_size)
        } else {
            (off, size)
        };
        if off + size > map_len || !size.is_power_of_two() {
            // SAFETY: base/map_len are the mapping made above, unused elsewhere.
            unsafe { libc::munmap(base as *mut _, map_len) };
            return Err(Error::Sys {
                op: "mmap perf ring",
                source: std::io::Error::new(std::io::ErrorKind::InvalidData, "bad ring layout"),
            });
        }
        Ok(Ring {
            fd: fd.as_raw_fd(),
            lost_records: 0,
            base,
            map_len,
            // SAFETY: off + size <= map_len, checked above.
            data: unsafe { base.add(off) },
            data_size: size,
        })
    }

    fn head_tail(&self) -> (&AtomicU64, &AtomicU64) {
        let meta = self.base as *mut b::perf_event_mmap_page;
        // SAFETY: data_head/data_tail are aligned u64s in the control page,
        // which lives as long as self. The kernel writes data_head and reads
        // data_tail concurrently, so both are accessed only atomically.
        unsafe {
            (
                AtomicU64::from_ptr(std::ptr::addr_of_mut!((*meta).data_head)),
                AtomicU64::from_ptr(std::ptr::addr_of_mut!((*meta).data_tail)),
            )
        }
    }

    /// Copies `len` bytes at ring position `pos` (wrapping) into `out`.
    fn copy_out(&self, pos: u64, len: usize, out: &mut Vec<u8>) {
        out.clear();
        let len = len.min(self.data_size);
        let start = (pos as usize) & (self.data_size - 1);
        let first = len.min(self.data_size - start);
        out.reserve(len);
        // SAFETY: start + first <= data_size and len - first <= data_size are
        // within the data area. The bytes lie between tail and head, which the
        // kernel does not write until we advance data_tail past them.
        unsafe {
            let dst = out.as_mut_ptr();
            std::ptr::copy_nonoverlapping(self.data.add(start), dst, first);
            std::ptr::copy_nonoverlapping(self.data, dst.add(first), len - first);
            out.set_len(len);
        }
    }

    /// Hands each complete record to `f`, then frees its space for the kernel.
    fn drain(&mut self, scratch: &mut Vec<u8>, mut f: impl FnMut((u32, &[u8]))) {
        let (head_a, tail_a) = self.head_tail();
        // Acquire pairs with the kernel's store of data_head: the record bytes
        // before head are visible once head is.
        let head = head_a.load(Ordering::Acquire);
        let mut tail = tail_a.load(Ordering::Relaxed);
        while head.wrapping_sub(tail) >= 8 {
            self.copy_out(tail, 8, scratch);
            let kind = u32::from_ne_bytes([scratch[0], scratch[1], scratch[2], scratch[3]]);
            let size = u16::from_ne_bytes([scratch[6], scratch[7]]) as u64;
            if size < 8 || head.wrapping_sub(tail) < size {
                // Corrupt or partial: skip everything the kernel has written
                // so the ring can make progress.
                tail = head;
                break;
            }
            self.copy_out(tail + 8, size as usize - 8, scratch);
            f((kind, scratch));
            tail = tail.wrapping_add(size);
        }
        let (_, tail_a) = self.head_tail();
        // Release: our reads of the records happen before the kernel may
        // overwrite them.
        tail_a.store(tail, Ordering::Release);
    }
}

impl Drop for Ring {
    fn drop(&mut self) {
        // SAFETY: base/map_len are this Ring's own mapping; no references into
        // it outlive self.
        unsafe { libc::munmap(self.base as *mut _, self.map_len) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists() {
        assert_eq!(parse_cpu_list("0-1\n"), Some(vec![0, 1]));
        assert_eq!(parse_cpu_list("0,2-4,7"), Some(vec![0, 2, 3, 4, 7]));
        assert_eq!(parse_cpu_list("0"), Some(vec![0]));
        for bad in ["x", "3-1", "0-", "0-99999999"] {
            assert_eq!(parse_cpu_list(bad), None, "{bad}");
        }
    }

    fn tp() -> Tracepoint {
        let format = EventFormat::parse(include_str!(
            "../tests/formats/syscalls_sys_enter_write.format"
        ))
        .unwrap();
        Tracepoint {
            name: "syscalls:sys_enter_write".parse().unwrap(),
            label: "syscalls:sys_enter_write".into(),
            format: Arc::new(format),
        }
    }

    #[test]
    fn sample_records() {
        let tps = [tp()];
        let ids = HashMap::from([(77u64, 0usize)]);
        let mut raw = vec![0u8; 40];
        raw[16..24].copy_from_slice(&1u64.to_ne_bytes());
        raw[32..40].copy_from_slice(&7u64.to_ne_bytes());
        let mut body = Vec::new();
        body.extend_from_slice(&77u64.to_ne_bytes());
        body.extend_from_slice(&10u32.to_ne_bytes());
        body.extend_from_slice(&11u32.to_ne_bytes());
        body.extend_from_slice(&123_456u64.to_ne_bytes());
        body.extend_from_slice(&1u32.to_ne_bytes());
        body.extend_from_slice(&0u32.to_ne_bytes());
        body.extend_from_slice(&(raw.len() as u32 + 4).to_ne_bytes()); // padded
        body.extend_from_slice(&raw);
        body.extend_from_slice(&[0; 4]);
        let (mut stats, mut out) = (Stats::default(), Vec::new());
        let mut handle = |kind, body: &[u8], stats: &mut Stats| {
            handle_record(&tps, &ids, (kind, body), stats, &mut out)
        };
        handle(b::PERF_RECORD_SAMPLE, &body, &mut stats);
        // Truncated: counted as undecodable, not lost silently, not a panic.
        for n in 0..body.len() - 4 {
            handle(b::PERF_RECORD_SAMPLE, &body[..n], &mut stats);
        }
        assert_eq!(stats.undecodable as usize, body.len() - 4);
        // An id that is none of ours: the same.
        let mut other = body.clone();
        other[0] = 78;
        handle(b::PERF_RECORD_SAMPLE, &other, &mut stats);
        assert_eq!(stats.undecodable as usize, body.len() - 4 + 1);
        // Lost records: { id, lost } and { lost }.
        let mut lost = 5u64.to_ne_bytes().to_vec();
        lost.extend_from_slice(&3u64.to_ne_bytes());
        handle(b::PERF_RECORD_LOST, &lost, &mut stats);
        handle(b::PERF_RECORD_LOST_SAMPLES, &lost, &mut stats);
        assert_eq!(stats.lost, 3 + 5);
        assert_eq!(out.len(), 1);
        let s = &out[0];
        assert_eq!((s.pid, s.tid, s.ts_ns, s.cpu), (10, 11, 123_456, 1));
        assert_eq!(s.field("count"), Some(&FieldValue::U64(7)));
        assert_eq!(s.field("fd"), Some(&FieldValue::U64(1)));
        assert_eq!(&*s.name, "syscalls:sys_enter_write");
    }

    #[test]
    fn junk_records_never_panic() {
        let tps = [tp()];
        let ids = HashMap::from([(0u64, 0usize), (u64::MAX, 0)]);
        let (mut stats, mut out) = (Stats::default(), Vec::new());
        let mut x = 0x1234_5678_9abc_def1u64;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let len = (x % 120) as usize;
            let body: Vec<u8> = (0..len)
                .map(|i| (x >> (i % 8 * 8)) as u8 ^ i as u8)
                .collect();
            let kind = [b::PERF_RECORD_SAMPLE, b::PERF_RECORD_LOST, 0, 99][(x >> 40) as usize % 4];
            handle_record(&tps, &ids, (kind, &body), &mut stats, &mut out);
        }
        assert_eq!(stats.samples as usize, out.len());
    }
}
