//! The GDB-stub session as one of the engine's backends.

use crate::Session;
use linux_guest::GuestKernel;
use probe_engine::{Backend, BackendError, EndReason, EventSink, Finished};
use probe_runtime::Runtime;
use std::sync::{Arc, Mutex};

impl Backend for Session {
    fn kind(&self) -> &'static str {
        "gdb"
    }

    fn kernel(&self) -> Option<&Arc<GuestKernel>> {
        Session::kernel(self)
    }

    fn set_recorder(&mut self, sink: Box<dyn EventSink>, every_hit: bool) {
        Session::set_recorder(self, sink);
        self.set_record_every_hit(every_hit);
    }

    fn start(&mut self, _runtime: &Mutex<Runtime>) -> Result<(), BackendError> {
        Ok(self.resume()?)
    }

    fn run(
        &mut self,
        runtime: &Mutex<Runtime>,
        poll: &mut dyn FnMut() -> Option<EndReason>,
    ) -> EndReason {
        Session::run(self, runtime, poll)
    }

    fn live_stats(&self) -> Option<Arc<probe_engine::LiveStats>> {
        Some(self.live.clone())
    }

    fn finish(mut self: Box<Self>, _runtime: Option<&Mutex<Runtime>>, gone: bool) -> Finished {
        let stats_line = self.stats_line();
        drop(self.take_recorder());
        let layer_summaries = self.finish_layers();
        let detach_error = if gone {
            self.forget_target();
            None
        } else {
            self.detach().err().map(|e| e.to_string())
        };
        Finished {
            layer_summaries,
            detach_error,
            stats_line,
            caveat: None,
            lost_events: 0,
        }
    }
}

impl Session {
    fn stats_line(&self) -> String {
        let s = &self.stats;
        let h = &s.service_ns;
        format!(
            "{} hits, {} returns, {} missed returns, {} stray stops{}, service time per hit: mean {:.1} us, p50 {:.1} us, p99 {:.1} us, {} round trips in all",
            s.hits,
            s.returns,
            self.missed_returns(),
            s.stray_stops,
            if self.sites().iter().any(|s| s.is_user()) {
                format!(", {} uprobe stops in other files", s.other_files)
            } else {
                String::new()
            } + &if self.sites().iter().any(|s| s.event.is_some()) {
                format!(
                    ", {} tracepoint stops that did not fire, {} not served{}",
                    s.events_not_fired,
                    s.event_errors,
                    s.event_error
                        .as_ref()
                        .map(|e| format!(" (first: {e})"))
                        .unwrap_or_default()
                )
            } else {
                String::new()
            },
            h.mean() / 1e3,
            h.value_at_quantile(0.5) as f64 / 1e3,
            h.value_at_quantile(0.99) as f64 / 1e3,
            self.round_trips(),
        )
    }
}
