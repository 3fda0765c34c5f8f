//! The `extern "C"` functions QEMU calls. Each one catches any panic (an
//! unwind into QEMU's C frames would be undefined behaviour) and counts it.

use super::vcpu::{Overrides, Reg, Vcpu};
use super::{
    ARMED, Entry, IDLE_CALLBACKS_SEEN, IN_RESET, ON_VCPU_THREAD, PANICS, Plugin, REQUESTED,
    RESET_PENDING, RESETS, RING_RESET, SAMPLING, Slot, WAKE_QUEUED, plugin, register_callbacks,
    start_reset, wake,
};
use qemu_plugin_sys::{
    qemu_plugin_cb_flags, qemu_plugin_cond, qemu_plugin_id_t, qemu_plugin_insn,
    qemu_plugin_insn_data, qemu_plugin_insn_size, qemu_plugin_insn_vaddr, qemu_plugin_num_vcpus,
    qemu_plugin_register_vcpu_insn_exec_cb, qemu_plugin_register_vcpu_insn_exec_cond_cb,
    qemu_plugin_scoreboard_find, qemu_plugin_tb, qemu_plugin_tb_get_insn, qemu_plugin_tb_n_insns,
};
use std::cell::Cell;
use std::ffi::{c_uint, c_void};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::Ordering;

/// Runs a callback body; a panic ends it and is counted.
fn guard(f: impl FnOnce()) {
    if catch_unwind(AssertUnwindSafe(f)).is_err() {
        PANICS.fetch_add(1, Ordering::Relaxed);
    }
}

/// Gives `f` the vCPU `index`'s [`Vcpu`]. Skipped for a vCPU we have no slot
/// for, or if a callback for it is already running on this thread (that
/// cannot happen with QEMU 10.0; the check keeps two `&mut` from aliasing).
fn with_vcpu(p: &Plugin, index: c_uint, overrides: Overrides, f: impl FnOnce(&mut Vcpu<'_>)) {
    let index = running_vcpu(p, index);
    let Some(slot) = p.slots.get(index as usize) else {
        return;
    };
    if slot.busy.replace(true) {
        return;
    }
    struct Release<'a>(&'a Cell<bool>);
    impl Drop for Release<'_> {
        fn drop(&mut self) {
            self.0.set(false);
        }
    }
    let _release = Release(&slot.busy);
    // SAFETY: we are on the thread running vCPU `index` (every caller is a
    // QEMU callback for that vCPU), and `busy` shows no other reference to
    // its state exists.
    let state = unsafe { &mut *slot.state.get() };
    let mut vcpu = Vcpu {
        index,
        state,
        overrides,
    };
    f(&mut vcpu);
}

/// The vCPU this thread runs: by QEMU's `current_cpu` where it is known
/// (see `wake::current_cpu`), else the index QEMU passed.
fn running_vcpu(p: &Plugin, passed: c_uint) -> c_uint {
    let cpu = wake::current_cpu();
    if cpu.is_null() {
        return passed;
    }
    p.slots
        .iter()
        .position(|s| s.cpu.load(Ordering::Acquire) == cpu)
        .map_or(passed, |i| i as c_uint)
}

/// Points the vCPU's slot at its scoreboard words (QEMU must have counted
/// the vCPU already: `qemu_plugin_scoreboard_find` asserts it).
fn refresh_words(p: &Plugin, index: c_uint, slot: &Slot) {
    // SAFETY: plain reads of QEMU's vCPU count and scoreboard layout.
    let ptr = unsafe {
        if index >= qemu_plugin_num_vcpus().max(0) as c_uint {
            return;
        }
        qemu_plugin_scoreboard_find(p.score.0, index)
    };
    slot.words.store(ptr.cast(), Ordering::Release);
}

pub(super) unsafe extern "C" fn vcpu_init(_id: qemu_plugin_id_t, index: c_uint) {
    guard(|| {
        ON_VCPU_THREAD.set(true);
        let Some(p) = plugin() else { return };
        if let Some(slot) = p.slots.get(index as usize) {
            refresh_words(p, index, slot);
            slot.cpu.store(wake::cpu_state(index), Ordering::Release);
            with_vcpu(p, index, Overrides::default(), |v| v.state.init());
        }
        p.hooks.vcpu_init(index);
        // A request made before any vCPU was up rang no doorbell.
        start_reset(p);
    });
}

/// Work queued by `ring_doorbells` (see `wake`): runs on a vCPU thread with
/// QEMU's current_cpu set, where a reset may start.
pub(super) unsafe extern "C" fn wake_work(_cpu: *mut c_void, _data: u64) {
    guard(|| {
        ON_VCPU_THREAD.set(true);
        WAKE_QUEUED.store(false, Ordering::SeqCst);
        if let Some(p) = plugin() {
            start_reset(p);
        }
    });
}

/// A sample queued by `arm` (see `wake`): runs on the vCPU's thread between
/// two blocks, where QEMU's copy of the registers is exact, or right after
/// a halted vCPU woke (its registers are those it halted with).
pub(super) unsafe extern "C" fn sample_work(_cpu: *mut c_void, vcpu: u64) {
    guard(|| {
        ON_VCPU_THREAD.set(true);
        let Some(p) = plugin() else { return };
        let index = vcpu as c_uint;
        let Some((_, sample)) = p.slots.get(index as usize).and_then(Slot::words) else {
            return;
        };
        if sample.swap(0, Ordering::SeqCst) & ARMED != 0 && SAMPLING.load(Ordering::Relaxed) {
            with_vcpu(p, index, Overrides::default(), |v| {
                p.hooks.on_sample(v, false)
            });
        }
    });
}

pub(super) unsafe extern "C" fn vcpu_exit(_id: qemu_plugin_id_t, _index: c_uint) {
    // Registered only for an instant, to wake halted vCPUs (kick_halted_vcpus).
}

pub(super) unsafe extern "C" fn vcpu_idle(_id: qemu_plugin_id_t, _index: c_uint) {
    guard(|| {
        ON_VCPU_THREAD.set(true);
        IDLE_CALLBACKS_SEEN.store(true, Ordering::Relaxed);
        // No reset from here: QEMU calls this just before the vCPU waits, and
        // the wake-up our reset's queued work sends would come before that
        // wait and be lost. The `hlt` block's doorbell answered already.
    });
}

pub(super) unsafe extern "C" fn vcpu_resume(_id: qemu_plugin_id_t, index: c_uint) {
    guard(|| {
        ON_VCPU_THREAD.set(true);
        IDLE_CALLBACKS_SEEN.store(true, Ordering::Relaxed);
        let Some(p) = plugin() else { return };
        let Some((doorbell, sample)) = p.slots.get(index as usize).and_then(Slot::words) else {
            return;
        };
        // Here QEMU processes queued work right after us: a reset starts at once.
        if doorbell.swap(0, Ordering::SeqCst) & RING_RESET != 0 {
            start_reset(p);
        }
        if SAMPLING.load(Ordering::Relaxed) && sample.swap(0, Ordering::SeqCst) & ARMED != 0 {
            // Before the interrupt that woke it is delivered: `env` holds the
            // halted registers, `rip` past the `hlt`.
            with_vcpu(p, index, Overrides::default(), |v| {
                p.hooks.on_sample(v, true)
            });
        }
    });
}

/// Instructions whose blocks carry the doorbell.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Landmark {
    Iretq,
    Sysretq,
    Swapgs,
    Hlt,
}

impl Landmark {
    /// The callback's userdata: the kind in the low 2 bits, the address of
    /// the next instruction (for `hlt`) above them, 4-aligned away.
    fn userdata(self, next_pc: u64) -> u64 {
        let kind = match self {
            Landmark::Iretq => 0,
            Landmark::Sysretq => 1,
            Landmark::Swapgs => 2,
            Landmark::Hlt => 3,
        };
        (next_pc << 2) | kind
    }

    /// The kind, and the next instruction's address (its top two bits are
    /// those of a canonical kernel address: all ones).
    fn from_userdata(u: u64) -> (Landmark, u64) {
        let kind = match u & 3 {
            0 => Landmark::Iretq,
            1 => Landmark::Sysretq,
            2 => Landmark::Swapgs,
            _ => Landmark::Hlt,
        };
        (kind, (u >> 2) | (0b11 << 62))
    }
}

/// Exact encodings as the kernel emits them (no prefixes but REX.W).
pub(super) fn classify(bytes: &[u8]) -> Option<Landmark> {
    match bytes {
        [0x48, 0xcf] => Some(Landmark::Iretq),
        [0x48, 0x0f, 0x07] => Some(Landmark::Sysretq),
        [0x0f, 0x01, 0xf8] => Some(Landmark::Swapgs),
        [0xf4] => Some(Landmark::Hlt),
        _ => None,
    }
}

fn landmark(insn: *mut qemu_plugin_insn) -> Option<Landmark> {
    let mut bytes = [0u8; 3];
    // SAFETY: `insn` is a live handle inside the translation callback; the
    // copy is bounded by our buffer's length.
    let got = unsafe {
        let size = qemu_plugin_insn_size(insn);
        if size > bytes.len() {
            return None;
        }
        qemu_plugin_insn_data(insn, bytes.as_mut_ptr().cast(), size)
    };
    classify(&bytes[..got.min(bytes.len())])
}

pub(super) unsafe extern "C" fn tb_trans(_id: qemu_plugin_id_t, tb: *mut qemu_plugin_tb) {
    guard(|| {
        ON_VCPU_THREAD.set(true);
        if let Some(p) = plugin() {
            translate(p, tb);
        }
    });
}

fn translate(p: &Plugin, tb: *mut qemu_plugin_tb) {
    // SAFETY: `tb` and the insn handles it yields are valid for the
    // duration of this translation callback, which is where we use them
    // (this holds for every qemu_plugin_tb_*/insn_* call below).
    let n = unsafe { qemu_plugin_tb_n_insns(tb) };
    for i in 0..n {
        // SAFETY: see above; i < n.
        let insn = unsafe { qemu_plugin_tb_get_insn(tb, i) };
        if insn.is_null() {
            continue;
        }
        // SAFETY: see above.
        let (vaddr, size) = unsafe { (qemu_plugin_insn_vaddr(insn), qemu_plugin_insn_size(insn)) };
        if let Some(mark) = landmark(insn) {
            // The doorbell (and, where waking is unavailable, a due
            // sample): a conditional call right before the instruction,
            // where the registers are exact.
            let entry = entry(p, vaddr, mark.userdata(vaddr + size as u64));
            // SAFETY: a live insn handle; the scoreboard entry is ours and
            // outlives the block; `entry` stays allocated until the next
            // code flush, after which no block refers to it.
            unsafe {
                qemu_plugin_register_vcpu_insn_exec_cond_cb(
                    insn,
                    Some(on_landmark),
                    qemu_plugin_cb_flags::QEMU_PLUGIN_CB_R_REGS,
                    qemu_plugin_cond::QEMU_PLUGIN_COND_NE,
                    p.score
                        .entry(std::mem::offset_of!(super::ScoreWords, doorbell)),
                    0,
                    entry as *mut c_void,
                );
            }
        }
        // A panic in the probe logic loses only this instruction's probe,
        // not the block's doorbell.
        let wanted = match catch_unwind(AssertUnwindSafe(|| p.hooks.instrument(vaddr))) {
            Ok(w) => w,
            Err(_) => {
                PANICS.fetch_add(1, Ordering::Relaxed);
                None
            }
        };
        if let Some(userdata) = wanted {
            let entry = entry(p, vaddr, userdata);
            // SAFETY: a live insn handle; `entry` stays allocated until the
            // next code flush, after which no block refers to it.
            unsafe {
                qemu_plugin_register_vcpu_insn_exec_cb(
                    insn,
                    Some(on_insn),
                    qemu_plugin_cb_flags::QEMU_PLUGIN_CB_R_REGS,
                    entry as *mut c_void,
                );
            }
        }
    }
}

/// The callback data of instruction `vaddr`, kept until the next flush.
fn entry(p: &Plugin, vaddr: u64, userdata: u64) -> *const Entry {
    let mut entries = p.entries.lock().unwrap_or_else(|e| e.into_inner());
    let e = entries
        .entry((vaddr, userdata))
        .or_insert_with(|| Box::new(Entry { vaddr, userdata }));
    &**e as *const Entry
}

unsafe extern "C" fn on_insn(index: c_uint, userdata: *mut c_void) {
    guard(|| {
        let Some(p) = plugin() else { return };
        // SAFETY: `userdata` is an `Entry` from `translate`, alive until the
        // next flush; this block cannot run after that flush.
        let entry = unsafe { &*(userdata as *const Entry) };
        with_vcpu(p, index, Overrides::default(), |v| {
            // QEMU's rip is stale inside a block (TCG writes it back
            // lazily), and the block may not be the one translated at
            // `entry.vaddr`: see `run_time_pc`.
            let env = v.reg_id(Reg::Rip);
            v.overrides.set(Reg::Rip, run_time_pc(entry.vaddr, env));
            p.hooks.on_insn(v, entry.userdata)
        });
    });
}

/// The address the instruction translated at `vaddr` runs at now. x86
/// system emulation translates position-independent blocks (QEMU's
/// `CF_PCREL`), found by physical address: a user page that two processes
/// map at different addresses (a shared library's code) runs one block
/// in both, translated at the first one's address. Its instructions are
/// at the same offsets in the page, so the two addresses differ by whole
/// pages; QEMU's `rip` (`env`), written back lazily, is the real address
/// of this instruction or of one before it in the block (less than a page
/// before), so rounding the difference up to a page gives the shift.
/// Kernel addresses are the same in every address space.
fn run_time_pc(vaddr: u64, env: Option<u64>) -> u64 {
    const PAGE: u64 = 4096;
    match env {
        Some(env) if vaddr < 0x8000_0000_0000_0000 && env < 0x8000_0000_0000_0000 => {
            let shift = env.wrapping_sub(vaddr).wrapping_add(PAGE - 1) & !(PAGE - 1);
            vaddr.wrapping_add(shift)
        }
        _ => vaddr,
    }
}

/// Before a landmark instruction, when its vCPU's doorbell word is set: a
/// reset waits to start, or a sample is due and no queued work took it.
unsafe extern "C" fn on_landmark(index: c_uint, userdata: *mut c_void) {
    guard(|| {
        let Some(p) = plugin() else { return };
        // SAFETY: `userdata` is an `Entry` from `translate`, alive until the
        // next flush; this block cannot run after that flush.
        let entry = unsafe { &*(userdata as *const Entry) };
        let index = running_vcpu(p, index);
        let Some((doorbell, sample)) = p.slots.get(index as usize).and_then(Slot::words) else {
            return;
        };
        if doorbell.swap(0, Ordering::SeqCst) & RING_RESET != 0 {
            start_reset(p);
        }
        if !SAMPLING.load(Ordering::Relaxed) || sample.swap(0, Ordering::SeqCst) & ARMED == 0 {
            return;
        }
        let (mark, next_pc) = Landmark::from_userdata(entry.userdata);
        let mut overrides = Overrides::default();
        overrides.set(Reg::Rip, entry.vaddr);
        with_vcpu(p, index, overrides, |v| match mark {
            Landmark::Iretq => {
                // The interrupted context: its registers are restored, and
                // the frame on the stack holds the rest.
                use_interrupt_frame(v);
                p.hooks.on_sample(v, true)
            }
            Landmark::Hlt => {
                // Idle: sampled where it will resume, as a halted vCPU is.
                v.overrides.set(Reg::Rip, next_pc);
                p.hooks.on_sample(v, false)
            }
            Landmark::Sysretq | Landmark::Swapgs => p.hooks.on_sample(v, false),
        });
    });
}

/// At an `iretq`, the interrupted context's rip, cs, rflags, rsp and ss are
/// the five words at rsp (its other registers are already restored).
fn use_interrupt_frame(v: &mut Vcpu<'_>) {
    let Some(rsp) = v.reg_id(Reg::Rsp) else {
        return;
    };
    let Some(frame) = v.read_u64s::<5>(rsp) else {
        return;
    };
    for (r, &value) in [Reg::Rip, Reg::Cs, Reg::Eflags, Reg::Rsp, Reg::Ss]
        .iter()
        .zip(&frame)
    {
        v.overrides.set(*r, value);
    }
}

pub(super) unsafe extern "C" fn flush(_id: qemu_plugin_id_t) {
    guard(|| {
        let Some(p) = plugin() else { return };
        // No block is left that points to an entry (QEMU flushes inside an
        // exclusive section, so no translation is under way either).
        p.entries.lock().unwrap_or_else(|e| e.into_inner()).clear();
        // A scoreboard that grew (past 16 vCPUs) moved, with this flush.
        for (i, slot) in p.slots.iter().enumerate() {
            if !slot.words.load(Ordering::Acquire).is_null() {
                refresh_words(p, i as c_uint, slot);
            }
        }
    });
}

/// QEMU's reset is done: the code is flushed, our callbacks are gone. Runs
/// on the vCPU thread that asked, in the exclusive section.
pub(super) unsafe extern "C" fn reset_done(id: qemu_plugin_id_t) {
    guard(|| {
        register_callbacks(id);
        let Some(p) = plugin() else { return };
        // Doorbells first, then the request: a request that comes in between
        // keeps its doorbell, and one that comes before is satisfied by this
        // reset (no block is translated before we return).
        for slot in p.slots.iter() {
            if let Some((doorbell, _)) = slot.words() {
                doorbell.fetch_and(!RING_RESET, Ordering::SeqCst);
            }
        }
        REQUESTED.store(false, Ordering::SeqCst);
        RESETS.fetch_add(1, Ordering::Relaxed);
        RESET_PENDING.store(false, Ordering::SeqCst);
        // QEMU still counts the reset as under way until we return, so a
        // request from `reinstrumented` rings the doorbell instead.
        struct Leave;
        impl Drop for Leave {
            fn drop(&mut self) {
                IN_RESET.set(false);
            }
        }
        IN_RESET.set(true);
        let _leave = Leave;
        p.hooks.reinstrumented();
    });
}

pub(super) unsafe extern "C" fn at_exit(_id: qemu_plugin_id_t, _userdata: *mut c_void) {
    guard(|| {
        if let Some(p) = plugin() {
            p.hooks.at_exit();
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn landmarks_are_exact_encodings() {
        assert_eq!(classify(&[0x48, 0xcf]), Some(Landmark::Iretq));
        assert_eq!(classify(&[0x48, 0x0f, 0x07]), Some(Landmark::Sysretq));
        assert_eq!(classify(&[0x0f, 0x01, 0xf8]), Some(Landmark::Swapgs));
        assert_eq!(classify(&[0xf4]), Some(Landmark::Hlt));
        // iret (32-bit), sysret (32-bit), rdtscp, and a longer insn starting with F4's byte.
        assert_eq!(classify(&[0xcf]), None);
        assert_eq!(classify(&[0x0f, 0x07]), None);
        assert_eq!(classify(&[0x0f, 0x01, 0xf9]), None);
        assert_eq!(classify(&[]), None);
    }
}
