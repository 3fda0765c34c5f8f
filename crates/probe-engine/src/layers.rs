//! Events from the other layers of a VM, on the guest probes' clock: QEMU's
//! own trace events (the VMM layer, `vmm:EVENT`) and host kernel
//! tracepoints on the VM's vCPU threads (the host layer,
//! `tracepoint:SYS:EVENT`). Both are switched on for the run only and
//! delivered to the guest's session thread, which runs their handlers
//! between stops. Their handlers see the event's fields, not the guest:
//! the guest is running when they fire.

use host_tracepoints::{Options, Target, Tracefs, Tracepoint, TracepointReader};
use qemu_vmm::{FollowConfig, LogFollower, Qmp};
use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

/// A field of a layer event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LayerValue {
    Int(u64),
    Str(String),
}

/// One event of the VMM or host layer.
#[derive(Clone, Debug)]
pub struct LayerEvent {
    /// Host CLOCK_MONOTONIC ns (converted from QEMU's wall-clock stamp, or
    /// perf's CLOCK_MONOTONIC sample time).
    pub ts_ns: u64,
    /// The vCPU whose thread emitted it, when it was a vCPU thread.
    pub vcpu: Option<u32>,
    /// The probe it matches: `vmm:NAME` or `tracepoint:SYS:NAME`.
    pub probe: String,
    pub fields: Vec<(String, LayerValue)>,
}

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

/// Something that yields layer events without blocking.
pub trait LayerSource: Send {
    /// Waits (briefly) until every event emitted before now can be drained:
    /// called at each guest stop, so that events older than the stop run
    /// their handlers first and handlers see the layers in causal order.
    fn sync(&mut self) {}
    /// Appends the events that arrived since the last call.
    fn drain(&mut self, out: &mut Vec<LayerEvent>);
    /// Switches the events off; returns a one-line summary (counts, drops).
    fn finish(&mut self) -> String;
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
            catalogue: qemu_vmm::catalogue::Catalogue::installed().map(std::sync::Arc::new),
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
    fn sync(&mut self) {
        // QEMU flushes a trace line before the vCPU goes on, so a stop
        // comes after the lines of everything the guest did before it.
        if let Some(f) = &self.follower {
            let _ = f.sync(Duration::from_millis(100));
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

/// Host kernel tracepoints on one VM's vCPU threads (perf_event_open).
pub struct HostSource {
    reader: TracepointReader,
    vcpu_of_tid: HashMap<i32, u32>,
    samples: Vec<host_tracepoints::Sample>,
}

impl HostSource {
    /// Opens `tracepoints` (`sys:event`) on the vCPU threads of the QEMU
    /// process `qemu_pid` (threads named `CPU N/KVM` or `CPU N/TCG`).
    pub fn start(qemu_pid: u32, tracepoints: &[String]) -> Result<Self, LayerError> {
        let vcpu_of_tid = vcpu_threads(qemu_pid);
        let tids: Vec<i32> = vcpu_of_tid.keys().copied().collect();
        let tracefs = Tracefs::open()?;
        let specs = tracepoints
            .iter()
            .map(|t| {
                Ok(host_tracepoints::EventSpec {
                    tracepoint: Tracepoint::resolve(&tracefs, t)?,
                    filter: None,
                })
            })
            .collect::<Result<Vec<_>, host_tracepoints::Error>>()?;
        let mut reader = TracepointReader::open_many(
            &specs,
            &Target::Threads(tids),
            Options::default().ring_pages,
        )?;
        reader.enable()?;
        Ok(HostSource {
            reader,
            vcpu_of_tid,
            samples: Vec::new(),
        })
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
                probe: format!("tracepoint:{}", s.name),
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
