//! The plugin as one of the engine's backends: the guest never stops for
//! a probe. vmprobe renders what the plugin's handlers printed, runs
//! `interval` blocks and the VMM/host layers itself, and at the end takes
//! back everything the plugin held.

use crate::client::PluginClient;
use crate::home::HomeMaps;
use linux_guest::GuestKernel;
use plugin_protocol::{FromPlugin, TracedEvent};
use probe_engine::event_context::EventContext;
use probe_engine::layers::{FINAL_SYNC, LayerSet};
use probe_engine::record::{EventSink, RecordedEvent, UnfinishedCall, field_value};
use probe_engine::{Backend, BackendError, EndReason, Finished, monotonic_ns};
use probe_lang::check::AggKind;
use probe_plan::{ProbeSite, TimerProbe, TimerSchedule};
use probe_runtime::{Cell, Flow, MapBackend, MapOp, MapStore, Origin, OutputEvent, Runtime};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use trace_formats::{Layer, Value as FieldValue};

/// How long the run loop waits for the plugin before polling for the end
/// of the run.
const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// How often, at least, vmprobe keeps a copy of the plugin's maps, so that
/// a QEMU that dies mid-run still leaves what its probes counted.
const SNAPSHOT_INTERVAL: Duration = Duration::from_millis(500);

/// A copy takes at most 1/SNAPSHOT_SHARE of the run's time in vmprobe
/// (large maps are copied less often).
const SNAPSHOT_SHARE: u64 = 50;

/// How long a copy may take before it is given up on.
const SNAPSHOT_WAIT: Duration = Duration::from_secs(1);

/// With a stall timeout: after this long with no word from the plugin,
/// vmprobe pings it (an idle program sends nothing, a stopped QEMU answers
/// nothing), and waits this long for the answer.
const PING_AFTER: Duration = Duration::from_secs(1);
const PING_WAIT: Duration = Duration::from_secs(1);
/// Silence after which vmprobe says the QEMU seems stopped (or half the
/// stall timeout, if that is shorter).
const STALL_NOTICE: Duration = Duration::from_secs(10);

pub struct PluginBackend {
    name: Arc<str>,
    client: PluginClient,
    kernel: Arc<GuestKernel>,
    /// Probe sites as sent (their functions name recorded events).
    sites: Vec<ProbeSite>,
    /// `interval` probes: run in vmprobe, with their next due time.
    timers: TimerSchedule,
    layers: LayerSet,
    recorder: Option<Box<dyn EventSink>>,
    started: bool,
    /// Handler errors vmprobe met serving the plugin (failed map requests).
    home_errors: Vec<(String, String, u64)>,
    /// The plugin's maps as last copied, and when (monotonic ns).
    snapshot: Option<(MapStore, u64)>,
    next_snapshot_ns: u64,
    /// The last copy, for readers while the run goes on (`--metrics`).
    live_maps: Arc<probe_engine::LiveMaps>,
    /// The plugin's counts as last copied with the maps.
    live_stats: Arc<probe_engine::LiveStats>,
    /// How long the plugin may stay silent before the run ends (`None`: no
    /// limit; a QEMU vmprobe launched is watched through its process).
    stall_timeout: Option<Duration>,
    /// When the plugin last answered or sent anything (monotonic ns).
    heard_ns: u64,
    stall_reported: bool,
}

impl PluginBackend {
    pub(crate) fn new(
        name: &str,
        client: PluginClient,
        kernel: Arc<GuestKernel>,
        sites: Vec<ProbeSite>,
        timers: Vec<TimerProbe>,
    ) -> Self {
        PluginBackend {
            name: name.into(),
            client,
            kernel,
            sites,
            timers: TimerSchedule::new(timers, monotonic_ns()),
            layers: LayerSet::default(),
            recorder: None,
            started: false,
            home_errors: Vec::new(),
            snapshot: None,
            next_snapshot_ns: 0,
            live_maps: Arc::default(),
            live_stats: Arc::default(),
            stall_timeout: None,
            heard_ns: monotonic_ns(),
            stall_reported: false,
        }
    }

    /// Ends the run once the plugin has not answered for `timeout` (and
    /// says so, earlier, on stderr): for a VM vmprobe did not launch, whose
    /// QEMU it cannot watch otherwise.
    pub fn set_stall_timeout(&mut self, timeout: Option<Duration>) {
        self.stall_timeout = timeout;
    }

    /// The plugin answered or sent something.
    fn heard(&mut self) {
        let now = monotonic_ns();
        if self.stall_reported {
            eprintln!(
                "vmprobe: {}: the plugin answers again after {:.1} s",
                self.name,
                (now - self.heard_ns) as f64 / 1e9
            );
            self.stall_reported = false;
        }
        self.heard_ns = now;
    }

    /// With a stall timeout: pings a plugin that has been silent, reports a
    /// silence that lasts, and ends the run at the timeout.
    fn check_liveness(&mut self) -> Option<EndReason> {
        let limit = self.stall_timeout?;
        let silent = Duration::from_nanos(monotonic_ns().saturating_sub(self.heard_ns));
        if silent >= PING_AFTER {
            match self.client.ping_within(PING_WAIT) {
                Ok(()) => self.heard(),
                Err(crate::Error::Timeout(_)) => {}
                Err(e) => return Some(EndReason::TargetGone(format!("the plugin: {e}"))),
            }
        }
        let quiet = Duration::from_nanos(monotonic_ns().saturating_sub(self.heard_ns));
        let notice = STALL_NOTICE.min(limit / 2);
        if quiet >= notice && !self.stall_reported {
            eprintln!(
                "vmprobe: {}: no reply from the plugin for {:.0} s; is QEMU stopped? \
                 waiting up to {:.0} s (--stall-timeout)",
                self.name,
                notice.as_secs_f64(),
                limit.as_secs_f64()
            );
            self.stall_reported = true;
        }
        (quiet >= limit).then(|| {
            EndReason::TargetGone(format!(
                "no reply from the plugin for {:.0} s (--stall-timeout)",
                limit.as_secs_f64()
            ))
        })
    }

    /// Adds a source of VMM or host events (served in vmprobe).
    pub fn add_layer(
        &mut self,
        source: Box<dyn probe_engine::layers::LayerSource>,
        handlers: &std::collections::HashMap<String, Vec<(probe_lang::BlockId, Arc<str>)>>,
    ) {
        self.layers.add(source, handlers);
    }

    pub fn plugin_version(&self) -> &str {
        &self.client.plugin_version
    }

    /// What a message of the plugin means for the run.
    fn handle(&mut self, runtime: &Mutex<Runtime>, m: FromPlugin) -> Flow {
        match m {
            FromPlugin::Output(batch) => {
                let mut rt = lock(runtime);
                for p in batch {
                    self.render(&mut rt, p.ts_ns, p.vcpu, p.event);
                }
                Flow::Continue
            }
            FromPlugin::Traced(events) => {
                if let Some(sink) = self.recorder.as_mut() {
                    for e in &events {
                        record(sink.as_mut(), &self.name, &self.sites, e);
                    }
                }
                Flow::Continue
            }
            FromPlugin::Exit => Flow::Exit,
            // Answers to requests no longer waited for.
            _ => Flow::Continue,
        }
    }

    /// Runs the `interval` blocks that are due, in vmprobe, with maps
    /// through [`HomeMaps`].
    fn fire_timers(&mut self, runtime: &Mutex<Runtime>) -> Flow {
        let now = monotonic_ns();
        let mut flow = Flow::Continue;
        for timer in self.timers.take_due(now) {
            let (block, probe) = (timer.block, timer.probe);
            let mut ctx = EventContext::new(&self.name, now, "", Some(&self.kernel));
            ctx.probe = &probe;
            let mut rt = lock(runtime);
            if let Flow::Exit = run_home(
                &mut rt,
                &mut self.client,
                &mut self.home_errors,
                block,
                &mut ctx,
            ) {
                flow = Flow::Exit;
            }
        }
        flow
    }

    /// An event the plugin printed, into vmprobe's output: a map the
    /// plugin printed gets vmprobe's own part of it added (what `interval`
    /// blocks aggregated), a map the plugin cleared is cleared here too.
    fn render(&mut self, rt: &mut Runtime, ts: u64, vcpu: u32, event: OutputEvent) {
        match event {
            OutputEvent::Map {
                map,
                entries,
                top,
                div,
            } if rt.maps().cells(map).any(|(_, c)| !is_empty_cell(c)) => {
                let entries = match self.client.maps() {
                    Ok(mut all) => {
                        all.merge(rt.maps());
                        MapBackend::entries(&mut all, map)
                    }
                    Err(e) => {
                        self.home_errors.push(("print".into(), e.to_string(), 1));
                        entries
                    }
                };
                rt.emit(
                    ts,
                    OutputEvent::Map {
                        map,
                        entries,
                        top,
                        div,
                    },
                );
            }
            OutputEvent::MapOp { map, op } => match op {
                MapOp::Clear => MapBackend::clear(rt.maps_mut(), map),
                MapOp::Zero => MapBackend::zero(rt.maps_mut(), map),
                // The plugin turns prints into maps before sending them.
                MapOp::Print { .. } => {}
            },
            e => {
                let origin = Origin {
                    guest: &self.name,
                    vcpu: Some(vcpu),
                    probe: None,
                };
                rt.emit_from(ts, &origin, e)
            }
        }
    }

    /// Copies the plugin's maps when the last copy is old enough. A failed
    /// copy is not an error: the run loop notices a plugin that went away.
    fn keep_snapshot(&mut self) {
        let now = monotonic_ns();
        if now < self.next_snapshot_ns {
            return;
        }
        let every = SNAPSHOT_INTERVAL.as_nanos() as u64;
        // Never long: the run loop must go on polling (a stopped QEMU
        // answers nothing, and vmprobe must notice it).
        match self.client.maps_within(SNAPSHOT_WAIT) {
            Ok((store, stats)) => {
                self.heard();
                let done = monotonic_ns();
                let took = done - now;
                self.live_maps.publish(&store);
                publish_stats(&self.live_stats, &stats);
                self.snapshot = Some((store, done));
                self.next_snapshot_ns = done + every.max(took * SNAPSHOT_SHARE);
            }
            Err(_) => self.next_snapshot_ns = monotonic_ns() + every,
        }
    }

    fn serve_layers(&mut self, runtime: &Mutex<Runtime>, sync: Option<Duration>) -> Flow {
        if self.layers.is_empty() {
            return Flow::Continue;
        }
        let recorder = self.recorder.as_deref_mut();
        let (client, errors) = (&mut self.client, &mut self.home_errors);
        // Their handlers see the maps the plugin holds, as interval blocks do.
        self.layers
            .serve_with(
                runtime,
                sync,
                Some(&self.kernel),
                &self.name,
                recorder,
                &mut |ctx, runtime, blocks| {
                    let mut flow = Flow::Continue;
                    for (block, probe) in blocks {
                        ctx.probe = probe;
                        let mut rt = lock(runtime);
                        if let Flow::Exit = run_home(&mut rt, client, errors, *block, ctx) {
                            flow = Flow::Exit;
                        }
                    }
                    flow
                },
            )
            .0
    }
}

/// Runs one block in vmprobe against the maps the plugin holds (through
/// [`HomeMaps`]); a failed request to the plugin counts as the probe's
/// error.
fn run_home(
    rt: &mut Runtime,
    client: &mut PluginClient,
    errors: &mut Vec<(String, String, u64)>,
    block: probe_lang::BlockId,
    ctx: &mut EventContext<'_>,
) -> Flow {
    let mut home = std::mem::replace(rt.maps_mut(), MapStore::new(&[], &[]));
    let (flow, failed) = {
        let mut maps = HomeMaps::new(&mut home, client);
        let flow = rt.run_with_maps(block, ctx, &mut maps);
        (flow, maps.failed)
    };
    *rt.maps_mut() = home;
    if let Some(why) = failed {
        errors.push((ctx.probe.to_string(), why, 1));
    }
    flow
}

fn record(sink: &mut dyn EventSink, guest: &str, sites: &[ProbeSite], e: &TracedEvent) {
    if e.snapshot {
        sink.snapshot();
        return;
    }
    let func = sites.get(e.site as usize).map_or("", |s| &s.func);
    let fields: Vec<(&str, FieldValue<'_>)> = e
        .fields
        .iter()
        .map(|(n, v)| (n.as_str(), field_value(v)))
        .collect();
    sink.event(&RecordedEvent {
        guest,
        ts_ns: e.ts_ns,
        vcpu: Some(e.vcpu),
        layer: Layer::Guest,
        probe: &e.probe,
        func,
        entry_ns: e.entry_ns,
        site: e.trace_site,
        fields: &fields,
        thread: e.thread,
    });
}

/// A scalar count map's untouched `0`, which every store holds.
fn is_empty_cell(c: &Cell) -> bool {
    matches!(c, Cell::Num { a: 0, b: 0 })
}

fn lock(runtime: &Mutex<Runtime>) -> MutexGuard<'_, Runtime> {
    runtime.lock().unwrap_or_else(|e| e.into_inner())
}

impl Backend for PluginBackend {
    fn kind(&self) -> &'static str {
        "plugin"
    }

    fn kernel(&self) -> Option<&Arc<GuestKernel>> {
        Some(&self.kernel)
    }

    fn set_recorder(&mut self, sink: Box<dyn EventSink>, _every_hit: bool) {
        // What the plugin records was fixed when it was attached.
        self.recorder = Some(sink);
    }

    fn start(&mut self, runtime: &Mutex<Runtime>) -> Result<(), BackendError> {
        let (values, start_ns) = {
            let mut rt = lock(runtime);
            // The value maps go to the plugin, which owns them from here.
            let is_value = |d: &probe_lang::check::MapDecl| d.kind == AggKind::Value;
            let values = rt.maps().only(is_value);
            rt.maps_mut().clear_where(is_value);
            (values, monotonic_ns())
        };
        let threads = self.recorder.as_ref().is_some_and(|r| r.wants_threads());
        self.client.start(values, start_ns, threads)?;
        self.started = true;
        self.timers.restart(monotonic_ns());
        Ok(())
    }

    fn run(
        &mut self,
        runtime: &Mutex<Runtime>,
        poll: &mut dyn FnMut() -> Option<EndReason>,
    ) -> EndReason {
        loop {
            if let Some(reason) = poll() {
                let _ = self.serve_layers(runtime, Some(FINAL_SYNC));
                return reason;
            }
            if let Flow::Exit = self.fire_timers(runtime) {
                return EndReason::ScriptExit;
            }
            if let Flow::Exit = self.serve_layers(runtime, None) {
                return EndReason::ScriptExit;
            }
            self.keep_snapshot();
            if let Some(end) = self.check_liveness() {
                return end;
            }
            let now = monotonic_ns();
            let wait = self.timers.wait(now, POLL_INTERVAL);
            match self.client.next_event(wait) {
                Ok(None) => {}
                Ok(Some(m)) => {
                    self.heard();
                    if let Flow::Exit = self.handle(runtime, m) {
                        return EndReason::ScriptExit;
                    }
                }
                Err(e) => return EndReason::TargetGone(format!("the plugin: {e}")),
            }
        }
    }

    fn live_stats(&self) -> Option<Arc<probe_engine::LiveStats>> {
        Some(self.live_stats.clone())
    }

    fn live_maps(&self) -> Option<Arc<probe_engine::LiveMaps>> {
        Some(self.live_maps.clone())
    }

    fn finish(mut self: Box<Self>, runtime: Option<&Mutex<Runtime>>, gone: bool) -> Finished {
        let layer_summaries = self.layers.finish();
        let mut finished = Finished {
            layer_summaries,
            ..Finished::default()
        };
        let detached = match gone {
            true => None,
            false => match self.client.detach() {
                Ok(d) => Some(d),
                Err(e) => {
                    finished.detach_error = Some(e.to_string());
                    None
                }
            },
        };
        let Some(detached) = detached else {
            // The maps as last copied: what the probes had counted, short
            // of the last moments.
            finished.stats_line = "the plugin went away before detaching".into();
            finished.caveat = Some(match (self.snapshot.take(), runtime) {
                (Some((store, at)), Some(rt)) => {
                    let mut rt = lock(rt);
                    rt.maps_mut().merge(&store);
                    self.live_maps.withdraw();
                    rt.interpreter_mut().add_errors(&self.home_errors);
                    format!(
                        "the plugin went away before detaching; its maps are as copied {} ms before the end",
                        monotonic_ns().saturating_sub(at) / 1_000_000
                    )
                }
                _ => "the plugin went away before detaching, before any copy of its maps".into(),
            });
            return finished;
        };
        // Output the plugin printed before it detached.
        while let Ok(Some(m)) = self.client.next_event(Duration::ZERO) {
            if let Some(rt) = runtime {
                self.handle(rt, m);
            }
        }
        if let Some(rt) = runtime {
            let mut rt = lock(rt);
            rt.maps_mut().merge(&detached.store);
            self.live_maps.withdraw();
            rt.interpreter_mut().add_errors(&detached.errors);
            rt.interpreter_mut().add_errors(&self.home_errors);
        }
        if let Some(mut sink) = self.recorder.take() {
            for (vcpu, site, entry_ns, thread) in &detached.unfinished {
                sink.unfinished_call(&UnfinishedCall {
                    guest: &self.name,
                    vcpu: *vcpu,
                    func: self.sites.get(*site as usize).map_or("", |s| &s.func),
                    entry_ns: *entry_ns,
                    thread: *thread,
                });
            }
        }
        let s = &detached.stats;
        publish_stats(&self.live_stats, s);
        let mean_us = if s.hits + s.returns + s.samples == 0 {
            0.0
        } else {
            s.service_ns_sum as f64 / (s.hits + s.returns + s.samples) as f64 / 1e3
        };
        finished.stats_line = format!(
            "{} hits, {} returns, {} missed returns, {} samples, {} lost events, \
             service time per hit inside QEMU: mean {mean_us:.2} us, median under {:.2} us, \
             max {:.1} us, {} reinstrumentations, {} panics caught, {}",
            s.hits,
            s.returns,
            s.missed_returns,
            s.samples,
            s.lost_events,
            s.service_ns_median().unwrap_or(0) as f64 / 1e3,
            s.service_ns_max as f64 / 1e3,
            s.reinstrumentations,
            s.caught_panics,
            if s.idle_untranslated {
                "detached: QEMU translates without the plugin"
            } else {
                "detached: the plugin still sees every translation"
            },
        );
        finished.lost_events = s.lost_events;
        if s.lost_events > 0 {
            // As bpftrace reports events its ring could not hold.
            eprintln!("vmprobe: {}: Lost {} events", self.name, s.lost_events);
        }
        finished
    }
}

/// The plugin's counts as `--metrics` shows a backend's: every hit (entries,
/// returns, samples), events lost, and each quarter-octave bucket of
/// service times in the histogram bucket of its largest time, so that each
/// `le` still bounds what is under it.
fn publish_stats(live: &probe_engine::LiveStats, s: &plugin_protocol::PluginStats) {
    let service = s
        .service_ns_hist
        .iter()
        .enumerate()
        .map(|(i, &n)| (plugin_protocol::service_bucket_end(i) - 1, n));
    live.publish(
        s.hits + s.returns + s.samples,
        s.lost_events,
        service,
        s.service_ns_sum,
    );
}
