//! Pairing calls with their returns (`kretprobe`), as a state machine that
//! knows nothing of how a backend gets told of an entry or a return.
//!
//! At a function's entry the return address is on top of the stack. The
//! backend instruments that address (a breakpoint, or an instruction
//! callback) and the call is remembered under (return address, stack
//! pointer right after the return). Kernel stacks are per task, so the pair
//! tells nested and concurrent calls apart, also when a task returns on
//! another vCPU than it entered on. A return address stays instrumented
//! while some call awaits it.

use std::collections::HashMap;

/// Calls in flight whose return is awaited, at most. A guest that recurses
/// deeply or blocks many tasks in a probed function must not grow vmprobe's
/// memory without bound; calls past the limit are counted as missed.
pub const MAX_PENDING_RETURNS: usize = 4096;

/// A call seen at entry whose return is awaited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PendingCall {
    /// The probe site (an index the backend chose) the call entered at.
    pub site: usize,
    pub entry_ns: u64,
    /// The vCPU the call entered on.
    pub vcpu: u32,
    /// The argument registers at entry (rdi, rsi, rdx, rcx, r8, r9), when
    /// the site's return handlers read them (`kretfunc`'s `args`); zeroes
    /// otherwise. Kept with the call, so they pair as the call does: per
    /// task stack, whichever vCPU the return comes on.
    pub args: [u64; 6],
    /// The task the call ran in, when the entry read it for a recording
    /// that puts calls on guest-thread tracks (the return is the same
    /// task's, so it need not be read again).
    pub thread: Option<GuestThread>,
}

/// The guest task an event ran in, as a recording names it: its process
/// (`pid`, the tgid), its thread (`tid`) and its name (`comm`, up to 16
/// bytes, NUL-padded).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct GuestThread {
    pub pid: u32,
    pub tid: u32,
    pub comm: [u8; 16],
}

impl GuestThread {
    /// `comm` up to its NUL.
    pub fn comm(&self) -> std::borrow::Cow<'_, str> {
        let end = self.comm.iter().position(|&b| b == 0).unwrap_or(16);
        String::from_utf8_lossy(&self.comm[..end])
    }
}

/// What an entry asks of the backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Entered {
    /// Tracked; the return address is already instrumented.
    Tracked,
    /// Tracked, and the return address must now be instrumented; if the
    /// backend cannot, it calls [`ReturnTracker::abandon`].
    NewReturnAddress(u64),
    /// Too many calls in flight: not tracked (a missed return).
    Full,
}

/// What a hit at a return address was.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Returned {
    /// The return of a tracked call; with `last`, no other call awaits this
    /// address, which may be uninstrumented.
    Call { call: PendingCall, last: bool },
    /// Another call returning to the same place (one that started before
    /// attaching, or an untracked one): not ours.
    Stray,
}

#[derive(Default)]
pub struct ReturnTracker {
    /// Keyed by (return address, stack pointer after the return, owner):
    /// the owner tells apart user stacks of two address spaces (0 for
    /// kernel calls, whose stacks are all in one).
    pending: HashMap<(u64, u64, u64), PendingCall>,
    /// Return addresses instrumented, and how many pending calls use each.
    users: HashMap<u64, usize>,
    /// Calls whose return could not be tracked.
    pub missed: u64,
}

impl ReturnTracker {
    pub fn new() -> ReturnTracker {
        ReturnTracker::default()
    }

    /// A call entered with return address `ret` on top of the stack at
    /// `rsp`.
    pub fn enter(&mut self, ret: u64, rsp: u64, call: PendingCall) -> Entered {
        self.enter_owned(ret, rsp, 0, call)
    }

    /// [`ReturnTracker::enter`] for a call of `owner` (a guest thread:
    /// user stacks of different processes may share addresses).
    pub fn enter_owned(&mut self, ret: u64, rsp: u64, owner: u64, call: PendingCall) -> Entered {
        let key = (ret, rsp.wrapping_add(8), owner);
        if let Some(pending) = self.pending.get_mut(&key) {
            // The same frame again: the earlier call never came back (the
            // task died, or its return was missed). Replace it.
            *pending = call;
            return Entered::Tracked;
        }
        if self.pending.len() >= MAX_PENDING_RETURNS {
            self.missed += 1;
            return Entered::Full;
        }
        self.pending.insert(key, call);
        let users = self.users.entry(ret).or_insert(0);
        *users += 1;
        if *users == 1 {
            Entered::NewReturnAddress(ret)
        } else {
            Entered::Tracked
        }
    }

    /// The backend could not instrument the return address of the call
    /// just entered at (`ret`, `rsp`): forget it, as a missed return.
    pub fn abandon(&mut self, ret: u64, rsp: u64) {
        self.abandon_owned(ret, rsp, 0)
    }

    /// [`ReturnTracker::abandon`] of a call of `owner`.
    pub fn abandon_owned(&mut self, ret: u64, rsp: u64, owner: u64) {
        if self
            .pending
            .remove(&(ret, rsp.wrapping_add(8), owner))
            .is_some()
        {
            self.release(ret);
        }
        self.missed += 1;
    }

    /// Whether `pc` is an instrumented return address.
    pub fn is_return_address(&self, pc: u64) -> bool {
        self.users.contains_key(&pc)
    }

    /// A hit at return address `pc`, with stack pointer `rsp` (after the
    /// `ret` popped the return address).
    pub fn returned(&mut self, pc: u64, rsp: u64) -> Returned {
        self.returned_owned(pc, rsp, 0)
    }

    /// [`ReturnTracker::returned`] in `owner`.
    pub fn returned_owned(&mut self, pc: u64, rsp: u64, owner: u64) -> Returned {
        match self.pending.remove(&(pc, rsp, owner)) {
            Some(call) => Returned::Call {
                call,
                last: self.release(pc),
            },
            None => Returned::Stray,
        }
    }

    /// One call less awaits `ret`; whether it was the last.
    fn release(&mut self, ret: u64) -> bool {
        match self.users.get_mut(&ret) {
            Some(n) if *n > 1 => {
                *n -= 1;
                false
            }
            Some(_) => {
                self.users.remove(&ret);
                true
            }
            None => false,
        }
    }

    /// Calls still awaiting their return, oldest first.
    pub fn pending(&self) -> Vec<PendingCall> {
        let mut calls: Vec<PendingCall> = self.pending.values().copied().collect();
        calls.sort_by_key(|c| c.entry_ns);
        calls
    }

    /// Every instrumented return address, forgetting them all (at detach).
    pub fn drain_return_addresses(&mut self) -> Vec<u64> {
        self.pending.clear();
        self.users.drain().map(|(a, _)| a).collect()
    }

    /// Instrumented return addresses.
    pub fn return_addresses(&self) -> impl Iterator<Item = u64> + '_ {
        self.users.keys().copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(site: usize, entry_ns: u64) -> PendingCall {
        PendingCall {
            site,
            entry_ns,
            vcpu: 0,
            args: [site as u64; 6],
            thread: None,
        }
    }

    #[test]
    fn user_calls_pair_by_their_owner() {
        let mut t = ReturnTracker::new();
        // Two processes at the same return address and stack pointer.
        assert_eq!(
            t.enter_owned(0x401000, 0x7ffe_0000, 1, call(0, 1)),
            Entered::NewReturnAddress(0x401000)
        );
        assert_eq!(
            t.enter_owned(0x401000, 0x7ffe_0000, 2, call(0, 2)),
            Entered::Tracked
        );
        assert_eq!(t.returned_owned(0x401000, 0x7ffe_0008, 3), Returned::Stray);
        assert_eq!(
            t.returned_owned(0x401000, 0x7ffe_0008, 2),
            Returned::Call {
                call: call(0, 2),
                last: false
            }
        );
        assert_eq!(
            t.returned_owned(0x401000, 0x7ffe_0008, 1),
            Returned::Call {
                call: call(0, 1),
                last: true
            }
        );
    }

    #[test]
    fn nested_and_concurrent_calls_pair_by_stack_pointer() {
        let mut t = ReturnTracker::new();
        // Task A calls f, which recurses; task B (another stack) calls f
        // from the same call site.
        assert_eq!(
            t.enter(0x100, 0x1000, call(0, 1)),
            Entered::NewReturnAddress(0x100)
        );
        assert_eq!(
            t.enter(0x200, 0x0f00, call(0, 2)),
            Entered::NewReturnAddress(0x200)
        );
        assert_eq!(t.enter(0x100, 0x5000, call(0, 3)), Entered::Tracked);
        // B returns first (rsp after `ret` is 8 above the entry's).
        assert_eq!(
            t.returned(0x100, 0x5008),
            Returned::Call {
                call: call(0, 3),
                last: false
            }
        );
        assert_eq!(t.returned(0x100, 0x5008), Returned::Stray);
        assert_eq!(
            t.returned(0x200, 0x0f08),
            Returned::Call {
                call: call(0, 2),
                last: true
            }
        );
        assert!(!t.is_return_address(0x200));
        assert_eq!(
            t.returned(0x100, 0x1008),
            Returned::Call {
                call: call(0, 1),
                last: true
            }
        );
        assert!(t.pending().is_empty());
        assert_eq!(t.return_addresses().count(), 0);
    }

    #[test]
    fn a_frame_entered_twice_replaces_the_lost_call() {
        let mut t = ReturnTracker::new();
        t.enter(0x100, 0x1000, call(0, 1));
        assert_eq!(t.enter(0x100, 0x1000, call(1, 2)), Entered::Tracked);
        assert_eq!(t.pending(), vec![call(1, 2)]);
        assert_eq!(
            t.returned(0x100, 0x1008),
            Returned::Call {
                call: call(1, 2),
                last: true
            }
        );
    }

    #[test]
    fn calls_past_the_limit_are_missed_and_abandoned_ones_forgotten() {
        let mut t = ReturnTracker::new();
        for i in 0..MAX_PENDING_RETURNS as u64 {
            assert_ne!(
                t.enter(0x100, 0x10_0000 + 16 * i, call(0, i)),
                Entered::Full
            );
        }
        assert_eq!(t.enter(0x100, 0x9000_0000, call(0, 0)), Entered::Full);
        assert_eq!(t.missed, 1);
        let mut t = ReturnTracker::new();
        assert_eq!(
            t.enter(0xdead, 0x1000, call(0, 1)),
            Entered::NewReturnAddress(0xdead)
        );
        t.abandon(0xdead, 0x1000);
        assert!(!t.is_return_address(0xdead));
        assert!(t.pending().is_empty());
        assert_eq!(t.missed, 1);
    }
}
