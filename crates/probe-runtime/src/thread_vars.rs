//! `self->` variables: DTrace's thread-locals, one set per guest thread.
//!
//! A thread is its guest and its thread id (`tid`); the idle tasks, which
//! all have tid 0, are told apart by vCPU (each vCPU has its own). One
//! table serves every vCPU (inside QEMU, every vCPU thread's interpreter
//! shares it), so a call that sleeps and wakes on another vCPU still finds
//! the value its entry set.
//!
//! Bounded as DTrace's dynamic variables: a thread's entry goes when all
//! its variables are zero again (assigning 0 or `""`, or `delete`), and at
//! most [`DEFAULT_THREAD_LIMIT`] threads hold values; past that a new
//! thread's assignment is dropped (the interpreter counts it).

use probe_lang::value::Value;
use rustc_hash::FxHashMap;

/// Threads that may hold `self->` values at once (about 3 MB at one
/// integer variable each).
pub const DEFAULT_THREAD_LIMIT: usize = 65_536;

/// The key of an idle task: tid 0 on every vCPU, so keyed by vCPU (tids
/// stay below 2^22, `PID_MAX_LIMIT`).
const IDLE: u64 = 1 << 63;

/// The key of the thread a probe fired in.
pub fn thread_key(tid: u64, vcpu: u32) -> u64 {
    if tid == 0 { IDLE | vcpu as u64 } else { tid }
}

/// One guest's threads: thread key to its values by slot.
type Threads = FxHashMap<u64, Box<[Option<Value>]>>;

/// Every thread's `self->` values, by guest then thread key, by slot.
#[derive(Debug)]
pub struct ThreadVars {
    guests: Vec<(Box<str>, Threads)>,
    held: usize,
    limit: usize,
}

impl Default for ThreadVars {
    fn default() -> Self {
        ThreadVars::new()
    }
}

impl ThreadVars {
    pub fn new() -> ThreadVars {
        ThreadVars {
            guests: Vec::new(),
            held: 0,
            limit: DEFAULT_THREAD_LIMIT,
        }
    }

    pub fn set_limit(&mut self, threads: usize) {
        self.limit = threads;
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Threads holding at least one value.
    pub fn threads(&self) -> usize {
        self.held
    }

    fn guest(&self, guest: &str) -> Option<&Threads> {
        // Few guests: a linear search.
        self.guests
            .iter()
            .find(|(g, _)| &**g == guest)
            .map(|(_, t)| t)
    }

    /// The value of `slot` for a thread; `None` when unset.
    pub fn get(&self, guest: &str, thread: u64, slot: u16) -> Option<Value> {
        self.guest(guest)?.get(&thread)?.get(slot as usize)?.clone()
    }

    /// Sets (`Some`) or clears (`None`) a thread's `slot` of `slots`.
    /// `false` when the value was dropped: the table holds `limit` threads
    /// and this one is new.
    pub fn set(
        &mut self,
        guest: &str,
        thread: u64,
        slot: u16,
        slots: usize,
        value: Option<Value>,
    ) -> bool {
        let i = match self.guests.iter().position(|(g, _)| &**g == guest) {
            Some(i) => i,
            None if value.is_none() => return true,
            None => {
                self.guests.push((guest.into(), FxHashMap::default()));
                self.guests.len() - 1
            }
        };
        let table = &mut self.guests[i].1;
        match (table.get_mut(&thread), value) {
            (Some(vals), v) => {
                if let Some(cell) = vals.get_mut(slot as usize) {
                    *cell = v;
                }
                if vals.iter().all(Option::is_none) {
                    table.remove(&thread);
                    self.held -= 1;
                }
                true
            }
            (None, None) => true,
            (None, Some(_)) if self.held >= self.limit => false,
            (None, Some(v)) => {
                let mut vals = vec![None; slots.max(slot as usize + 1)].into_boxed_slice();
                vals[slot as usize] = Some(v);
                table.insert(thread, vals);
                self.held += 1;
                true
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_per_guest_and_thread() {
        let mut t = ThreadVars::new();
        assert!(t.set("vm0", 7, 0, 2, Some(Value::Int(1))));
        assert!(t.set("vm1", 7, 0, 2, Some(Value::Int(2))));
        assert!(t.set("vm0", 8, 1, 2, Some(Value::Int(3))));
        assert_eq!(t.get("vm0", 7, 0), Some(Value::Int(1)));
        assert_eq!(t.get("vm1", 7, 0), Some(Value::Int(2)));
        assert_eq!(t.get("vm0", 8, 0), None);
        assert_eq!(t.get("vm0", 8, 1), Some(Value::Int(3)));
        assert_eq!(t.get("vm2", 8, 1), None);
        assert_eq!(t.threads(), 3);
    }

    #[test]
    fn a_thread_whose_values_are_all_cleared_is_gone() {
        let mut t = ThreadVars::new();
        t.set("vm0", 7, 0, 2, Some(Value::Int(1)));
        t.set("vm0", 7, 1, 2, Some(Value::Int(1)));
        t.set("vm0", 7, 0, 2, None);
        assert_eq!(t.threads(), 1);
        t.set("vm0", 7, 1, 2, None);
        assert_eq!(t.threads(), 0);
        // Clearing what is not there holds nothing.
        t.set("vm0", 9, 1, 2, None);
        t.set("vm5", 9, 1, 2, None);
        assert_eq!(t.threads(), 0);
    }

    #[test]
    fn past_the_limit_new_threads_are_dropped_known_ones_go_on() {
        let mut t = ThreadVars::new();
        t.set_limit(2);
        assert!(t.set("vm0", 1, 0, 1, Some(Value::Int(1))));
        assert!(t.set("vm0", 2, 0, 1, Some(Value::Int(1))));
        assert!(!t.set("vm0", 3, 0, 1, Some(Value::Int(1))));
        assert_eq!(t.get("vm0", 3, 0), None);
        assert!(t.set("vm0", 2, 0, 1, Some(Value::Int(5))));
        assert_eq!(t.get("vm0", 2, 0), Some(Value::Int(5)));
        // A thread that clears makes room.
        t.set("vm0", 1, 0, 1, None);
        assert!(t.set("vm0", 3, 0, 1, Some(Value::Int(1))));
        assert_eq!(t.threads(), 2);
    }

    #[test]
    fn idle_tasks_are_apart_per_vcpu() {
        assert_ne!(thread_key(0, 0), thread_key(0, 1));
        assert_eq!(thread_key(42, 0), thread_key(42, 1));
        assert_ne!(thread_key(0, 1), 1);
    }
}
