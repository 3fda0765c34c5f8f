//! Events from the other layers of a VM, on the guest probes' clock: QEMU's
//! own trace events (the VMM layer, `vmm:EVENT`) and host kernel
//! tracepoints on the VM's vCPU threads (the host layer,
//! `host:tracepoint:SYS:EVENT`). Both are switched on for the run only and
//! delivered to the guest's session thread, which runs their handlers
//! between stops. Their handlers see the event's fields, not the guest:
//! the guest is running when they fire.

use crate::event_context::EventContext;
use crate::record::{EventSink, record_layer_event};
use crate::{Backend, BackendError, EndReason, Finished};
use host_tracepoints::{EventFormat, Options, Target, Tracefs, Tracepoint, TracepointReader};
use linux_guest::GuestKernel;
use probe_lang::{BlockId, FieldCondition, ProbeSpec, Program};
use probe_runtime::{Flow, Runtime};
use qemu_vmm::{FollowConfig, LogFollower, Qmp};
use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub use crate::layer_event::{LayerEvent, LayerValue};

#[derive(Debug, thiserror::Error)]
pub enum LayerError {
    #[error("QEMU monitor: {0}")]
    Qmp(#[from] qemu_vmm::Error),
    #[error("QEMU trace log: {0}")]
    Follow(String),
    #[error("host tracepoints: {0}")]
    Host(#[from] host_tracepoints::Error),
    #[error("no QEMU trace event matches '{0}' (qemu-system-x86_64 -trace help lists them)")]
    UnknownVmmEvent(String),
}

/// How long a guest stop waits for the layers to catch up: bounded, because
/// the guest stays stopped meanwhile.
pub const STOP_SYNC: Duration = Duration::from_millis(100);
/// How long the end of a run waits for the layers' last events (a loaded
/// host can leave QEMU's log follower far behind; events it has not read
/// yet would otherwise be lost).
pub const FINAL_SYNC: Duration = Duration::from_secs(10);

/// Something that yields layer events without blocking.
pub trait LayerSource: Send {
    /// Waits (at most `timeout`) until every event emitted before now can be
    /// drained: called at each guest stop, so that events older than the
    /// stop run their handlers first and handlers see the layers in causal
    /// order, and once more at the end of a run, so that none is lost.
    fn sync(&mut self, _timeout: Duration) {}
    /// Appends the events that arrived since the last call.
    fn drain(&mut self, out: &mut Vec<LayerEvent>);
    /// Switches the events off; returns a one-line summary (counts, drops).
    fn finish(&mut self) -> String;
}

/// Runs one event's blocks (a probe's handlers) with its context.
pub type RunBlocks<'r> = dyn for<'c> FnMut(&mut EventContext<'c>, &Mutex<Runtime>, &'c [(BlockId, Arc<str>)]) -> Flow
    + 'r;

/// The layer sources of one VM and the blocks of their probes: runs the
/// handlers of their events in time order.
#[derive(Default)]
pub struct LayerSet {
    sources: Vec<Box<dyn LayerSource>>,
    handlers: HashMap<String, Vec<(BlockId, Arc<str>)>>,
    events: Vec<LayerEvent>,
}

impl LayerSet {
    /// Adds a source; `handlers` maps probe names (`vmm:serial_write`,
    /// `host:tracepoint:sched:sched_switch`) to blocks.
    pub fn add(
        &mut self,
        source: Box<dyn LayerSource>,
        handlers: &HashMap<String, Vec<(BlockId, Arc<str>)>>,
    ) {
        self.sources.push(source);
        // Each source comes with the program's handlers: a VM with a VMM and
        // a host source must still run each handler once per event.
        for (name, blocks) in handlers {
            let mine = self.handlers.entry(name.clone()).or_default();
            for b in blocks {
                if !mine.contains(b) {
                    mine.push(b.clone());
                }
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.sources.is_empty()
    }

    /// Runs the handlers of the events that arrived; with `sync`, first
    /// waits for every event emitted before now (at a guest stop). After an
    /// event's handlers, the recorder gets what they `trace()`d. Returns
    /// whether a handler called `exit()`, and how many events had handlers.
    pub fn serve(
        &mut self,
        runtime: &Mutex<Runtime>,
        sync: Option<Duration>,
        kernel: Option<&GuestKernel>,
        guest: &str,
        recorder: Option<&mut (dyn EventSink + '_)>,
    ) -> (Flow, u64) {
        self.serve_with(
            runtime,
            sync,
            kernel,
            guest,
            recorder,
            &mut |ctx, rt, blocks| ctx.run_all(rt, blocks),
        )
    }

    /// [`serve`](Self::serve), with `run` running an event's blocks: a
    /// backend whose maps are held elsewhere (in QEMU) runs them against
    /// those maps.
    pub fn serve_with(
        &mut self,
        runtime: &Mutex<Runtime>,
        sync: Option<Duration>,
        kernel: Option<&GuestKernel>,
        guest: &str,
        mut recorder: Option<&mut (dyn EventSink + '_)>,
        run: &mut RunBlocks<'_>,
    ) -> (Flow, u64) {
        let mut events = std::mem::take(&mut self.events);
        for l in &mut self.sources {
            if let Some(timeout) = sync {
                l.sync(timeout);
            }
            l.drain(&mut events);
        }
        events.sort_by_key(|e| e.ts_ns);
        let (mut flow, mut served) = (Flow::Continue, 0);
        for ev in events.drain(..) {
            let Some(blocks) = self.handlers.get(&ev.probe) else {
                continue;
            };
            served += 1;
            let mut ctx = EventContext {
                vcpu: ev.vcpu.unwrap_or(0),
                fields: Some(&ev.fields),
                ..EventContext::new(guest, ev.ts_ns, &ev.probe, kernel)
            };
            if let Flow::Exit = run(&mut ctx, runtime, blocks) {
                flow = Flow::Exit;
            }
            if let Some(sink) = recorder.as_deref_mut() {
                record_layer_event(sink, guest, &ev, &ctx.traced);
            }
        }
        self.events = events;
        (flow, served)
    }

    /// Switches the sources off; one summary line each.
    pub fn finish(&mut self) -> Vec<String> {
        self.sources.iter_mut().map(|l| l.finish()).collect()
    }
}

/// QEMU trace events of one VM: enabled through QMP, read from its log.
pub struct VmmSource {
    qmp: Qmp,
    follower: Option<LogFollower>,
    events: Vec<String>,
    vcpu_of_tid: HashMap<u32, u32>,
}

impl VmmSource {
    /// Enables `events` (QEMU trace event names, patterns allowed) on the VM
    /// whose QMP socket and `-D` log file are given.
    pub fn start(
        qmp_socket: &Path,
        log_file: &Path,
        events: &[String],
    ) -> Result<Self, LayerError> {
        let mut qmp = Qmp::connect_unix_wait(qmp_socket, Duration::from_secs(5))?;
        let vcpu_of_tid = qmp
            .query_cpus_fast()?
            .into_iter()
            .map(|c| (c.thread_id, c.cpu_index))
            .collect();
        let follow = FollowConfig {
            // Fields named as in QEMU's source, where its catalogue is installed.
            catalogue: qemu_vmm::catalogue::Catalogue::installed(),
            ..FollowConfig::default()
        };
        let follower =
            LogFollower::spawn(log_file, follow).map_err(|e| LayerError::Follow(e.to_string()))?;
        for e in events {
            if qmp.trace_event_list(e)?.is_empty() {
                return Err(LayerError::UnknownVmmEvent(e.clone()));
            }
            qmp.trace_event_set_state(e, true)?;
        }
        Ok(VmmSource {
            qmp,
            follower: Some(follower),
            events: events.to_vec(),
            vcpu_of_tid,
        })
    }
}

impl LayerSource for VmmSource {
    fn sync(&mut self, timeout: Duration) {
        // QEMU flushes a trace line before the vCPU goes on, so a stop
        // comes after the lines of everything the guest did before it.
        if let Some(f) = &self.follower {
            let _ = f.sync(timeout);
        }
    }

    fn drain(&mut self, out: &mut Vec<LayerEvent>) {
        let Some(f) = &self.follower else { return };
        for ev in f.drain() {
            out.push(LayerEvent {
                ts_ns: ev.ts_ns,
                vcpu: ev.tid.and_then(|t| self.vcpu_of_tid.get(&t).copied()),
                probe: format!("vmm:{}", ev.name),
                fields: ev
                    .fields
                    .into_iter()
                    .map(|(k, v)| {
                        let v = match v {
                            qemu_vmm::FieldValue::Unsigned(u) => LayerValue::Int(u),
                            qemu_vmm::FieldValue::Signed(i) => LayerValue::Int(i as u64),
                            qemu_vmm::FieldValue::Str(s) | qemu_vmm::FieldValue::Text(s) => {
                                LayerValue::Str(s)
                            }
                        };
                        (k, v)
                    })
                    .collect(),
            });
        }
    }

    fn finish(&mut self) -> String {
        for e in &self.events {
            let _ = self.qmp.trace_event_set_state(e, false);
        }
        match self.follower.take() {
            Some(f) => {
                let s = f.stop();
                format!(
                    "vmm: {} events, {} dropped, {} unparsed lines",
                    s.delivered, s.dropped, s.skipped
                )
            }
            None => String::new(),
        }
    }
}

/// Ring pages per vCPU thread for host tracepoints (4 MiB with 4 KiB pages).
const HOST_RING_PAGES: usize = 1024;

/// Host kernel tracepoints on one VM's vCPU threads (perf_event_open).
pub struct HostSource {
    reader: TracepointReader,
    vcpu_of_tid: HashMap<i32, u32>,
    samples: Vec<host_tracepoints::Sample>,
}

impl HostSource {
    /// Opens `tracepoints` (`sys:event`) on the vCPU threads of the QEMU
    /// process `qemu_pid` (threads named `CPU N/KVM` or `CPU N/TCG`), with
    /// in-kernel filters from `conditions` (see [`host_conditions`]).
    pub fn start(
        qemu_pid: u32,
        tracepoints: &[String],
        conditions: &HashMap<String, FieldCondition>,
    ) -> Result<Self, LayerError> {
        Self::start_threads(vcpu_threads(qemu_pid), tracepoints, conditions)
    }

    /// As [`start`](Self::start), on the given vCPU threads (thread id to
    /// vCPU index, e.g. from QMP `query-cpus-fast`).
    pub fn start_threads(
        vcpu_of_tid: HashMap<i32, u32>,
        tracepoints: &[String],
        conditions: &HashMap<String, FieldCondition>,
    ) -> Result<Self, LayerError> {
        let tids: Vec<i32> = vcpu_of_tid.keys().copied().collect();
        let tracefs = Tracefs::open()?;
        let specs = tracepoints
            .iter()
            .map(|t| {
                let tracepoint = Tracepoint::resolve(&tracefs, t)?;
                let filter = conditions
                    .get(t)
                    .and_then(|c| tracefs_filter(c, tracepoint.format()));
                Ok(host_tracepoints::EventSpec { tracepoint, filter })
            })
            .collect::<Result<Vec<_>, host_tracepoints::Error>>()?;
        let target = Target::Threads(tids);
        // Hot events (a vCPU's exits) fill a ring at megabytes a second, and
        // on a loaded host vmprobe may not run for a while: rings of 4 MiB
        // per vCPU where memory may be locked (root), else the default.
        let mut reader = match TracepointReader::open_many(&specs, &target, HOST_RING_PAGES) {
            Err(host_tracepoints::Error::Sys { .. }) => {
                TracepointReader::open_many(&specs, &target, Options::default().ring_pages)?
            }
            r => r?,
        };
        reader.enable()?;
        Ok(HostSource {
            reader,
            vcpu_of_tid,
            samples: Vec::new(),
        })
    }

    /// The in-kernel filter of each tracepoint (`sys:event`), if it has one.
    pub fn filters(&self) -> Vec<(String, Option<String>)> {
        self.reader
            .specs()
            .iter()
            .map(|s| (s.tracepoint.name().to_string(), s.filter.clone()))
            .collect()
    }
}

/// Checks that the host has every tracepoint (`sys:event`), before anything
/// is attached.
pub fn check_tracepoints(tracepoints: &[String]) -> Result<(), LayerError> {
    if tracepoints.is_empty() {
        return Ok(());
    }
    let tracefs = Tracefs::open()?;
    for t in tracepoints {
        Tracepoint::resolve(&tracefs, t)?;
    }
    Ok(())
}

/// For each host tracepoint (`sys:event`) of the program, what every block
/// on it requires of the event's fields (the OR of their predicates'
/// [`FieldCondition`]s), where all of them say something. The kernel then
/// drops events no handler would accept before they cost a sample.
pub fn host_conditions(program: &Program) -> HashMap<String, FieldCondition> {
    let mut all: HashMap<String, Option<FieldCondition>> = HashMap::new();
    for (i, spec) in program.probes().iter().enumerate() {
        let ProbeSpec::HostTracepoint { system, event } = spec else {
            continue;
        };
        let c = program.field_condition(program.block_of(i));
        all.entry(format!("{system}:{event}"))
            .and_modify(|acc| {
                *acc = match (acc.take(), c.clone()) {
                    (Some(a), Some(b)) => Some(FieldCondition::Or(Box::new(a), Box::new(b))),
                    _ => None,
                }
            })
            .or_insert(c);
    }
    all.into_iter().filter_map(|(k, c)| Some((k, c?))).collect()
}

/// `c` as a tracefs filter on `format`'s fields. Only comparisons whose
/// meaning is the same in the kernel and the script are kept: unsigned
/// scalar integer fields of the event (not `common_*`), against constants
/// that fit the field. As in [`FieldCondition`], a conjunction keeps the
/// parts that qualify, a disjunction needs all of them.
pub fn tracefs_filter(c: &FieldCondition, format: &EventFormat) -> Option<String> {
    match c {
        FieldCondition::Cmp { field, op, value } => {
            let f = format.field(field)?;
            let fits = f.size >= 8 || *value < 1u64 << (8 * f.size);
            let unsigned_int = matches!(
                f.element,
                host_tracepoints::format::Element::Int { signed: false, .. }
            );
            (!f.common
                && f.layout == host_tracepoints::format::Layout::Scalar
                && unsigned_int
                && fits)
                .then(|| format!("{} {} {value}", f.name, op.symbol()))
        }
        FieldCondition::And(a, b) => match (tracefs_filter(a, format), tracefs_filter(b, format)) {
            (Some(a), Some(b)) => Some(format!("({a}) && ({b})")),
            (one, None) | (None, one) => one,
        },
        FieldCondition::Or(a, b) => Some(format!(
            "({}) || ({})",
            tracefs_filter(a, format)?,
            tracefs_filter(b, format)?
        )),
    }
}

impl LayerSource for HostSource {
    fn drain(&mut self, out: &mut Vec<LayerEvent>) {
        self.samples.clear();
        if self.reader.read(&mut self.samples).is_err() {
            return;
        }
        for s in self.samples.drain(..) {
            out.push(LayerEvent {
                ts_ns: s.ts_ns,
                vcpu: self.vcpu_of_tid.get(&s.tid).copied(),
                probe: format!("host:tracepoint:{}", s.name),
                fields: s
                    .fields
                    .iter()
                    .map(|(k, v)| {
                        let v = match v {
                            host_tracepoints::FieldValue::U64(u) => LayerValue::Int(*u),
                            host_tracepoints::FieldValue::I64(i) => LayerValue::Int(*i as u64),
                            host_tracepoints::FieldValue::Str(s) => LayerValue::Str(s.clone()),
                            other => LayerValue::Str(other.to_string()),
                        };
                        (k.to_string(), v)
                    })
                    .collect(),
            });
        }
    }

    fn finish(&mut self) -> String {
        let _ = self.reader.disable();
        let s = self.reader.stats();
        format!("host: {} samples, {} lost", s.samples, s.lost)
    }
}

/// vCPU threads of a QEMU process: thread id to vCPU index, from the
/// thread names QEMU gives them (`CPU 0/KVM`, `CPU 1/TCG`).
pub fn vcpu_threads(qemu_pid: u32) -> HashMap<i32, u32> {
    let mut out = HashMap::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{qemu_pid}/task")) else {
        return out;
    };
    for t in tasks.flatten() {
        let Some(tid) = t.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
        if let Some(n) = comm
            .trim()
            .strip_prefix("CPU ")
            .and_then(|r| r.split('/').next())
            .and_then(|n| n.parse::<u32>().ok())
        {
            out.insert(tid, n);
        }
    }
    out
}

/// A VM probed through its layers only (host tracepoints, QEMU trace
/// events): no stub, no kernel, and the guest never stops. The events come
/// from perf rings and QEMU's log, polled every few milliseconds.
pub struct LayersOnly {
    name: Arc<str>,
    layers: LayerSet,
    /// The VM's vCPU threads: the VM is gone once none of them runs.
    tids: Vec<i32>,
    recorder: Option<Box<dyn EventSink>>,
    served: u64,
}

/// How often a layers-only VM's sources are drained.
const LAYERS_POLL: Duration = Duration::from_millis(10);

impl LayersOnly {
    pub fn new(name: &str, layers: LayerSet, tids: Vec<i32>) -> Self {
        LayersOnly {
            name: name.into(),
            layers,
            tids,
            recorder: None,
            served: 0,
        }
    }

    /// The VM is gone once none of its vCPU threads runs (exited, or a
    /// zombie until the VMM's parent reaps it).
    fn gone(&self) -> bool {
        !self.tids.iter().any(|t| {
            std::fs::read_to_string(format!("/proc/{t}/task/{t}/stat")).is_ok_and(|s| {
                // `pid (comm) STATE ...`; comm may hold spaces and parens.
                s.rsplit_once(')').is_some_and(|(_, rest)| {
                    !matches!(rest.trim_start().chars().next(), Some('Z' | 'X'))
                })
            })
        })
    }

    fn serve_once(&mut self, runtime: &Mutex<Runtime>, sync: Option<Duration>) -> Flow {
        let recorder = self.recorder.as_deref_mut();
        let (flow, served) = self.layers.serve(runtime, sync, None, &self.name, recorder);
        self.served += served;
        flow
    }
}

impl Backend for LayersOnly {
    fn kind(&self) -> &'static str {
        "layers"
    }

    fn kernel(&self) -> Option<&Arc<GuestKernel>> {
        None
    }

    fn set_recorder(&mut self, sink: Box<dyn EventSink>, _every_hit: bool) {
        // Layer events are recorded only when a script traces them.
        self.recorder = Some(sink);
    }

    fn start(&mut self, _runtime: &Mutex<Runtime>) -> Result<(), BackendError> {
        Ok(())
    }

    fn run(
        &mut self,
        runtime: &Mutex<Runtime>,
        poll: &mut dyn FnMut() -> Option<EndReason>,
    ) -> EndReason {
        loop {
            // Checked before draining, so that the events up to the end
            // are served; the last pass waits for those still in flight.
            let end = if self.gone() {
                Some(EndReason::VmExited)
            } else {
                poll()
            };
            let sync = end.as_ref().map(|_| FINAL_SYNC);
            if let Flow::Exit = self.serve_once(runtime, sync) {
                return EndReason::ScriptExit;
            }
            if let Some(reason) = end {
                return reason;
            }
            std::thread::sleep(LAYERS_POLL);
        }
    }

    fn finish(mut self: Box<Self>, _runtime: Option<&Mutex<Runtime>>, _gone: bool) -> Finished {
        drop(self.recorder.take());
        Finished {
            layer_summaries: self.layers.finish(),
            detach_error: None,
            stats_line: format!("{} layer events served", self.served),
            caveat: None,
            lost_events: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn format(name: &str) -> EventFormat {
        let path = format!(
            "{}/../host-tracepoints/tests/formats/{name}.format",
            env!("CARGO_MANIFEST_DIR")
        );
        EventFormat::parse(&std::fs::read_to_string(path).unwrap()).unwrap()
    }

    fn filters(script: &str) -> HashMap<String, Option<String>> {
        let program = probe_lang::compile(script, "t").unwrap();
        let conditions = host_conditions(&program);
        ["kvm_pio", "sched_switch"]
            .into_iter()
            .map(|e| {
                let (sys, file) = match e {
                    "kvm_pio" => ("kvm", "kvm_kvm_pio"),
                    _ => ("sched", "sched_sched_switch"),
                };
                let name = format!("{sys}:{e}");
                let f = conditions
                    .get(&name)
                    .and_then(|c| tracefs_filter(c, &format(file)));
                (name, f)
            })
            .collect()
    }

    #[test]
    fn predicates_become_in_kernel_filters() {
        let f = filters(
            "host:tracepoint:kvm:kvm_pio /args.port == 0x99 && args.size <= 2/ { @ = count(); }",
        );
        assert_eq!(
            f["kvm:kvm_pio"].as_deref(),
            Some("(port == 153) && (size <= 2)")
        );
        // Two blocks on one tracepoint: either may want the event.
        let f = filters(
            "host:tracepoint:kvm:kvm_pio /args.port == 1/ { @a = count(); }
             host:tracepoint:kvm:kvm_pio /args.port > 7 || args.rw != 0/ { @b = count(); }",
        );
        assert_eq!(
            f["kvm:kvm_pio"].as_deref(),
            Some("(port == 1) || ((port > 7) || (rw != 0))")
        );
    }

    #[test]
    fn only_exact_comparisons_go_into_the_kernel() {
        // A block without a predicate wants every event.
        let f = filters(
            "host:tracepoint:kvm:kvm_pio /args.port == 1/ { @a = count(); }
             host:tracepoint:kvm:kvm_pio { @b = count(); }",
        );
        assert_eq!(f["kvm:kvm_pio"], None);
        // A constant wider than the field would be truncated by the kernel;
        // a field the event lacks would be refused: both left to the
        // handler, and the conjunction keeps the rest.
        let f = filters(
            "host:tracepoint:kvm:kvm_pio /args.port == 0x100000099 && args.nosuch == 1 && args.val == 7/ { @ = count(); }",
        );
        assert_eq!(f["kvm:kvm_pio"].as_deref(), Some("val == 7"));
        // Signed fields (prev_pid is an int) compare differently; strings
        // (prev_comm) are not integers.
        let f = filters(
            "host:tracepoint:sched:sched_switch /args.prev_pid == 5 || args.prev_comm == 1/ { @ = count(); }",
        );
        assert_eq!(f["sched:sched_switch"], None);
    }
}
