//! When timer probes (`interval`, `profile`) fire, one schedule for every
//! backend: each timer is due a period after it started, and a timer that
//! fires late is moved to its next period after now, so periods missed
//! while the guest (or vmprobe) was slow are skipped, not replayed in a
//! burst, as bpftrace's timers, which do not queue.

use crate::TimerProbe;
use std::time::Duration;

/// Timer probes with the host-monotonic time each is next due at.
#[derive(Clone, Debug, Default)]
pub struct TimerSchedule {
    timers: Vec<(TimerProbe, u64)>,
}

impl TimerSchedule {
    /// The timers, each first due one period after `now_ns`.
    pub fn new(timers: Vec<TimerProbe>, now_ns: u64) -> TimerSchedule {
        let mut s = TimerSchedule {
            timers: timers.into_iter().map(|t| (t, 0)).collect(),
        };
        s.restart(now_ns);
        s
    }

    /// Starts every timer again at `now_ns` (when probing begins).
    pub fn restart(&mut self, now_ns: u64) {
        for (t, due) in &mut self.timers {
            *due = now_ns.saturating_add(t.period_ns.max(1));
        }
    }

    pub fn is_empty(&self) -> bool {
        self.timers.is_empty()
    }

    /// When the next timer is due.
    pub fn next_due(&self) -> Option<u64> {
        self.timers.iter().map(|(_, due)| *due).min()
    }

    /// How long to wait from `now_ns` for the next timer, at most `max`.
    pub fn wait(&self, now_ns: u64, max: Duration) -> Duration {
        self.next_due().map_or(max, |due| {
            Duration::from_nanos(due.saturating_sub(now_ns)).min(max)
        })
    }

    /// The timers due at `now_ns`, in order, each moved to its first due
    /// time after `now_ns`.
    pub fn take_due(&mut self, now_ns: u64) -> Vec<TimerProbe> {
        let mut fired = Vec::new();
        for (timer, due) in &mut self.timers {
            if *due > now_ns {
                continue;
            }
            let period = timer.period_ns.max(1);
            let missed = (now_ns - *due) / period;
            *due = due.saturating_add((missed + 1).saturating_mul(period));
            fired.push(timer.clone());
        }
        fired
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use probe_lang::BlockId;

    fn timer(period_ns: u64, block: u32) -> TimerProbe {
        TimerProbe {
            period_ns,
            every_vcpu: false,
            block: BlockId(block),
            probe: format!("interval:ns:{period_ns}").into(),
        }
    }

    #[test]
    fn a_timer_fires_once_per_period_and_skips_what_it_missed() {
        let mut s = TimerSchedule::new(vec![timer(100, 0), timer(250, 1)], 1_000);
        assert_eq!(s.next_due(), Some(1_100));
        assert!(s.take_due(1_099).is_empty());
        let fired: Vec<BlockId> = s.take_due(1_100).iter().map(|t| t.block).collect();
        assert_eq!(fired, [BlockId(0)]);
        assert_eq!(s.next_due(), Some(1_200));
        // Late by 3.5 periods: each timer fires once, and its next time is
        // the first period boundary after now.
        let fired: Vec<BlockId> = s.take_due(1_550).iter().map(|t| t.block).collect();
        assert_eq!(fired, [BlockId(0), BlockId(1)]);
        assert_eq!(s.next_due(), Some(1_600));
        assert!(s.take_due(1_599).is_empty());
        assert_eq!(
            s.wait(1_590, Duration::from_secs(1)),
            Duration::from_nanos(10)
        );
        assert_eq!(
            s.wait(1_590, Duration::from_nanos(4)),
            Duration::from_nanos(4)
        );
    }

    #[test]
    fn restart_counts_from_the_new_start_and_no_timer_waits_the_maximum() {
        let mut s = TimerSchedule::new(vec![timer(0, 0)], 0);
        // A zero period is one nanosecond: never a busy loop on one instant.
        assert_eq!(s.next_due(), Some(1));
        s.restart(u64::MAX - 1);
        assert_eq!(s.next_due(), Some(u64::MAX));
        let empty = TimerSchedule::default();
        assert!(empty.is_empty());
        assert_eq!(
            empty.wait(5, Duration::from_millis(20)),
            Duration::from_millis(20)
        );
    }
}
