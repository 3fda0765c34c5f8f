//! The plugin's socket: one vmprobe at a time, on a Unix socket only the
//! QEMU's user can reach. A session attaches a program, streams its output
//! and answers map requests; when it detaches, or its vmprobe goes away
//! (the socket closes), every callback goes and the VM runs on as if the
//! plugin were not there.

use super::run::Run;
use super::shards::{clear_everywhere, merged};
use super::{Plugin, VcpuWork};
use crate::tcg;
use plugin_protocol::{
    Detached, FromPlugin, MAX_READ, PROTOCOL_VERSION, ProtocolError, RecordMode, ToPlugin,
    read_message, write_message,
};
use probe_runtime::{MapBackend, MapOp, OutputEvent};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, channel};
use std::time::{Duration, Instant};

/// How often the rings are drained into the socket.
const DRAIN_EVERY: Duration = Duration::from_millis(2);
/// How long a reinstrumentation may take to reach a vCPU before a request
/// waiting on it fails (a paused VM never answers).
const REINSTRUMENT_TIMEOUT: Duration = Duration::from_secs(10);

/// What the session thread waits on: vmprobe's messages (from a reader
/// thread, so that a frame is never cut by a timeout) and answers of the
/// vCPU threads.
pub(crate) enum Event {
    Message(ToPlugin),
    Vcpu(FromPlugin),
    Closed(Option<ProtocolError>),
}

/// Binds the socket: a stale socket file from an earlier QEMU is replaced,
/// anything else at the path is an error; the socket is its owner's only.
pub(crate) fn listen(path: &Path) -> Result<UnixListener, String> {
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        use std::os::unix::fs::FileTypeExt;
        if !meta.file_type().is_socket() {
            return Err(format!("{}: exists and is not a socket", path.display()));
        }
        std::fs::remove_file(path).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    let listener = UnixListener::bind(path).map_err(|e| format!("{}: {e}", path.display()))?;
    // Connecting to a Unix socket needs write permission on it.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(listener)
}

/// Accepts vmprobes, one session at a time; another that connects
/// meanwhile is told so and closed.
pub(crate) fn accept(listener: UnixListener, plugin: &'static Plugin) {
    let busy = Arc::new(AtomicBool::new(false));
    for conn in listener.incoming() {
        let Ok(mut conn) = conn else { continue };
        if busy.swap(true, Ordering::AcqRel) {
            let _ = write_message(
                &mut conn,
                &FromPlugin::Error {
                    id: 0,
                    message: "another vmprobe is attached to this VM".into(),
                },
            );
            continue;
        }
        let session = Session::new(plugin, conn, busy.clone());
        let spawned = std::thread::Builder::new()
            .name("vmprobe-session".into())
            .spawn(move || session.serve());
        if spawned.is_err() {
            busy.store(false, Ordering::Release);
        }
    }
}

/// A request waiting for a reinstrumentation to take effect.
struct Waiting {
    id: u64,
    generation: u64,
    since: Instant,
    then: AfterReinstrument,
}

enum AfterReinstrument {
    Started,
    Detached,
}

struct Session {
    plugin: &'static Plugin,
    conn: UnixStream,
    events: Receiver<Event>,
    sender: Sender<Event>,
    waiting: Option<Waiting>,
    exit_sent: bool,
    /// Next due time of each `profile` sampler.
    next_sample: Vec<Instant>,
    hello: bool,
    /// Held while this session owns the plugin.
    busy: Arc<AtomicBool>,
    /// Detached: the plugin is free, possibly already another session's.
    over: bool,
}

impl Session {
    fn new(plugin: &'static Plugin, conn: UnixStream, busy: Arc<AtomicBool>) -> Session {
        let (sender, events) = channel();
        Session {
            plugin,
            conn,
            events,
            sender,
            waiting: None,
            exit_sent: false,
            next_sample: Vec::new(),
            hello: false,
            busy,
            over: false,
        }
    }

    fn serve(mut self) {
        let Ok(mut reader) = self.conn.try_clone() else {
            return;
        };
        let to_session = self.sender.clone();
        std::thread::spawn(move || {
            loop {
                match read_message::<ToPlugin>(&mut reader) {
                    Ok(m) => {
                        if to_session.send(Event::Message(m)).is_err() {
                            return;
                        }
                    }
                    Err(ProtocolError::Closed) => {
                        let _ = to_session.send(Event::Closed(None));
                        return;
                    }
                    Err(e) => {
                        let _ = to_session.send(Event::Closed(Some(e)));
                        return;
                    }
                }
            }
        });
        let mut last_drain = Instant::now();
        loop {
            match self.events.recv_timeout(DRAIN_EVERY) {
                Ok(Event::Message(m)) => {
                    if !self.handle(m) {
                        break;
                    }
                }
                Ok(Event::Vcpu(answer)) => {
                    if self.send(&answer).is_err() {
                        break;
                    }
                }
                Ok(Event::Closed(why)) => {
                    if let Some(e) = why {
                        let _ = self.send(&FromPlugin::Error {
                            id: 0,
                            message: format!("closing the session: {e}"),
                        });
                    }
                    break;
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            if last_drain.elapsed() >= DRAIN_EVERY {
                last_drain = Instant::now();
                if self.tick().is_err() {
                    break;
                }
            }
            if self.over {
                return;
            }
        }
        // vmprobe went away: nothing stays instrumented.
        self.disarm();
        self.busy.store(false, Ordering::Release);
    }

    fn send(&mut self, m: &FromPlugin) -> Result<(), ProtocolError> {
        write_message(&mut self.conn, m)
    }

    fn error(&mut self, id: u64, message: impl Into<String>) -> bool {
        self.send(&FromPlugin::Error {
            id,
            message: message.into(),
        })
        .is_ok()
    }

    /// One message from vmprobe; false ends the session.
    fn handle(&mut self, m: ToPlugin) -> bool {
        if !self.hello && !matches!(m, ToPlugin::Hello { .. }) {
            self.error(0, "expected Hello first");
            return false;
        }
        let run = super::current(self.plugin);
        match m {
            ToPlugin::Hello { protocol, .. } => {
                self.hello = true;
                let sent = self.send(&FromPlugin::Hello {
                    protocol: PROTOCOL_VERSION,
                    plugin: env!("CARGO_PKG_VERSION").into(),
                    vcpus: self.plugin.vcpus(),
                });
                // vmprobe names both versions in its error; the plugin only
                // refuses to go on with another protocol.
                sent.is_ok() && protocol == PROTOCOL_VERSION
            }
            ToPlugin::DetectSlide { id, samples } => {
                self.plugin
                    .submit(VcpuWork::DetectSlide { id, samples }, self.sender.clone());
                true
            }
            ToPlugin::ReadMemory { id, addr, len } => {
                if len > MAX_READ {
                    return self.error(id, format!("reads are at most {MAX_READ} bytes"));
                }
                self.plugin
                    .submit(VcpuWork::Read { id, addr, len }, self.sender.clone());
                true
            }
            ToPlugin::Attach(a) => {
                if run.is_some() {
                    return self.error(a.id, "a program is already attached");
                }
                if a.samplers.len() > super::MAX_SAMPLERS {
                    return self.error(a.id, "at most 64 profile probes");
                }
                let id = a.id;
                let vcpus = self.plugin.vcpus();
                self.plugin.run.store(Some(Arc::new(Run::new(*a, vcpus))));
                self.send(&FromPlugin::Done { id }).is_ok()
            }
            ToPlugin::Start {
                id,
                values,
                start_ns,
                threads,
            } => {
                let Some(run) = run else {
                    return self.error(id, "nothing is attached");
                };
                self.plugin.clear_ticks();
                run.start(values, start_ns, threads);
                let now = Instant::now();
                self.next_sample = run
                    .samplers
                    .iter()
                    .map(|s| now + Duration::from_nanos(s.period_ns))
                    .collect();
                self.reinstrument(id, AfterReinstrument::Started, !run.samplers.is_empty());
                // The processes already running map position-independent
                // probed files where they do: a vCPU walks their mappings
                // (the `uprobe_mmap` hook, armed from now, sees later ones).
                if run.scan_pending.load(Ordering::Acquire) {
                    self.plugin
                        .submit(VcpuWork::ScanProcesses, self.sender.clone());
                }
                true
            }
            ToPlugin::Maps { id, .. } => {
                let Some(run) = run else {
                    return self.error(id, "nothing is attached");
                };
                let store = merged(&run.shards, &run.values);
                let stats = run.stats();
                self.send(&FromPlugin::Maps { id, store, stats }).is_ok()
            }
            ToPlugin::Clear { id, map, zero } => {
                let Some(run) = run else {
                    return self.error(id, "nothing is attached");
                };
                clear_everywhere(&run.shards, &run.values, map, zero);
                self.send(&FromPlugin::Done { id }).is_ok()
            }
            ToPlugin::ReadValue { id, map, key } => {
                let Some(run) = run else {
                    return self.error(id, "nothing is attached");
                };
                let value = {
                    let mut values = run.values.lock().unwrap_or_else(|e| e.into_inner());
                    values.contains(map, &key).then(|| values.read(map, &key))
                };
                self.send(&FromPlugin::Value { id, value }).is_ok()
            }
            ToPlugin::WriteValue { id, map, key, cell } => {
                let Some(run) = run else {
                    return self.error(id, "nothing is attached");
                };
                let stored = {
                    let mut values = run.values.lock().unwrap_or_else(|e| e.into_inner());
                    match cell {
                        Some(c) => values.set(map, key, c),
                        None => {
                            values.delete(map, &key);
                            true
                        }
                    }
                };
                if stored {
                    self.send(&FromPlugin::Done { id }).is_ok()
                } else {
                    self.error(id, "the map is full")
                }
            }
            ToPlugin::Delete { id, map, key } => {
                let Some(run) = run else {
                    return self.error(id, "nothing is attached");
                };
                for shard in run.shards.iter() {
                    let mut shard = shard.lock().unwrap_or_else(|e| e.into_inner());
                    shard.delete(map, &key);
                }
                run.values
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .delete(map, &key);
                self.send(&FromPlugin::Done { id }).is_ok()
            }
            ToPlugin::Ping { id } => self.send(&FromPlugin::Done { id }).is_ok(),
            ToPlugin::Detach { id } => {
                let Some(run) = run else {
                    return self.error(id, "nothing is attached");
                };
                run.started.store(false, Ordering::Release);
                self.reinstrument(id, AfterReinstrument::Detached, false);
                true
            }
        }
    }

    /// Asks for a reinstrumentation (sampling on or off with it) and
    /// answers request `id` once it took effect.
    fn reinstrument(&mut self, id: u64, then: AfterReinstrument, sampling: bool) {
        let generation = self.plugin.generation.load(Ordering::Acquire);
        tcg::set_sampling(sampling || self.plugin.work_pending.load(Ordering::Acquire));
        tcg::request_reinstrument();
        self.waiting = Some(Waiting {
            id,
            generation,
            since: Instant::now(),
            then,
        });
    }

    /// Every few milliseconds: output to vmprobe, samplers, waits.
    fn tick(&mut self) -> Result<(), ProtocolError> {
        if let Some(w) = &self.waiting {
            let done = self.plugin.generation.load(Ordering::Acquire) > w.generation;
            if done || w.since.elapsed() > REINSTRUMENT_TIMEOUT {
                let w = self.waiting.take().expect("checked");
                self.answer_waiting(w, done)?;
            }
        }
        let Some(run) = super::current(self.plugin) else {
            return Ok(());
        };
        self.arm_samplers(&run);
        self.flush_output(&run)?;
        if run.exit.load(Ordering::Acquire) && !self.exit_sent {
            self.exit_sent = true;
            self.send(&FromPlugin::Exit)?;
        }
        Ok(())
    }

    fn answer_waiting(&mut self, w: Waiting, done: bool) -> Result<(), ProtocolError> {
        if !done {
            return self.send(&FromPlugin::Error {
                id: w.id,
                message: format!(
                    "no vCPU took up the new instrumentation within {} s (is the VM paused?)",
                    REINSTRUMENT_TIMEOUT.as_secs()
                ),
            });
        }
        match w.then {
            AfterReinstrument::Started => self.send(&FromPlugin::Done { id: w.id }),
            AfterReinstrument::Detached => {
                let Some(run) = self.plugin.run.swap(None) else {
                    return Ok(());
                };
                // No vCPU runs a handler any more: the state is final.
                self.flush_output(&run)?;
                // Calls in flight are recorded only when every hit is: a
                // program that calls trace() records just what it traces.
                let unfinished = if run.record == RecordMode::EveryHit {
                    run.tracker
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .pending()
                        .into_iter()
                        .map(|c| (c.vcpu, c.site as u32, c.entry_ns, c.thread))
                        .collect()
                } else {
                    Vec::new()
                };
                let mut stats = run.stats();
                // The detach's reset has run: this is the plugin idle.
                stats.idle_untranslated = !tcg::translating();
                let detached = Detached {
                    id: w.id,
                    store: merged(&run.shards, &run.values),
                    errors: run.errors(),
                    unfinished,
                    stats,
                };
                // Free before the answer, so that a vmprobe attaching as
                // soon as this one has its answer finds the plugin free.
                self.over = true;
                self.busy.store(false, Ordering::Release);
                self.send(&FromPlugin::Detached(Box::new(detached)))
            }
        }
    }

    fn arm_samplers(&mut self, run: &Run) {
        if !run.started.load(Ordering::Acquire) {
            return;
        }
        let now = Instant::now();
        for (i, (due, sampler)) in self.next_sample.iter_mut().zip(&run.samplers).enumerate() {
            if *due > now {
                continue;
            }
            let period = Duration::from_nanos(sampler.period_ns.max(1));
            // Periods missed are skipped, not replayed in a burst (as
            // bpftrace's timers, which do not queue).
            while *due <= now {
                *due += period;
            }
            self.plugin.tick(i);
            tcg::arm_all_samples();
        }
    }

    /// Sends what the rings hold, with whole-map operations done here,
    /// where all the shards are.
    fn flush_output(&mut self, run: &Run) -> Result<(), ProtocolError> {
        let (mut printed, traced) = run.drain();
        for p in &mut printed {
            if let OutputEvent::MapOp { map, op } = p.event {
                match op {
                    MapOp::Print { top, div } => {
                        let mut store = merged(&run.shards, &run.values);
                        p.event = OutputEvent::Map {
                            map,
                            entries: store.entries(map),
                            top,
                            div,
                        };
                    }
                    MapOp::Clear | MapOp::Zero => {
                        // vmprobe clears its own part on seeing the event.
                        clear_everywhere(&run.shards, &run.values, map, op == MapOp::Zero);
                    }
                }
            }
        }
        // Traced events first: whoever sees a line a handler printed (and
        // asks for a flight-recorder snapshot on it, say) finds the events
        // traced before it already recorded.
        if !traced.is_empty() {
            self.send(&FromPlugin::Traced(traced))?;
        }
        if !printed.is_empty() {
            self.send(&FromPlugin::Output(printed))?;
        }
        Ok(())
    }

    /// Ends instrumentation whatever state the session left it in.
    fn disarm(&mut self) {
        if let Some(run) = self.plugin.run.swap(None) {
            run.started.store(false, Ordering::Release);
            tcg::set_sampling(false);
            tcg::request_reinstrument();
        }
    }
}
