//! A safe layer over QEMU's TCG plugin API version 4 (QEMU 9.2 to 10.x), for
//! x86-64 system emulation.
//!
//! The probe logic implements [`Hooks`] and calls [`install`] from its
//! `qemu_plugin_install` (see [`export_plugin!`](crate::export_plugin)).
//! From then on:
//!
//! - **Instrumentation** is decided per instruction when QEMU translates a
//!   block ([`Hooks::instrument`]) and compiled into that block's host code.
//!   Changing it means making QEMU translate everything again:
//!   [`request_reinstrument`] does that from any thread (see "Doorbell").
//! - **Exec callbacks** run on the vCPU thread, before the instruction,
//!   with the registers readable ([`Vcpu`]). They run concurrently on
//!   several vCPUs under multi-threaded TCG; never block in one: a blocked
//!   vCPU stalls every exclusive section (code flushes, resets, `stop`).
//! - **Sampling** ([`set_sampling`], [`arm_sample`]): QEMU's queued work
//!   on the vCPU's thread, between two blocks; where that is unavailable,
//!   a conditional call at the doorbell's `iretq` and `hlt`.
//! - **No panic crosses into QEMU**: every callback QEMU makes into this
//!   crate catches unwinding and counts it ([`caught_panics`]).
//!
//! # Doorbell
//!
//! `qemu_plugin_reset` (flush all code, drop every callback, call us back to
//! register them again) works only from a vCPU thread: from any other
//! thread QEMU unregisters the callbacks synchronously while vCPUs still
//! run the old code, and never flushes it. So a request from another thread
//! sets a per-vCPU scoreboard word, the doorbell, and the next vCPU that
//! runs a doorbell block calls `qemu_plugin_reset` itself. Doorbell blocks
//! are those holding an instruction every kernel runs often: `iretq`,
//! `sysretq`, `swapgs` (every interrupt and system call from or to user
//! space, every timer tick of a busy vCPU) and `hlt` (every time a vCPU goes
//! idle). Each gets one inline load and compare of the doorbell word per
//! execution, and a call only while it rings. Under multi-threaded TCG the
//! vCPU idle/resume callbacks answer too, and a halted vCPU is woken to do
//! it (see `kick_halted_vcpus`). Under single-threaded TCG (vmprobe's
//! default, `-accel tcg,thread=single`) QEMU 10.0 calls neither idle nor
//! resume callbacks (only `qemu_wait_io_event`, which the round-robin
//! thread does not use, calls them), so a fully idle guest answers at its
//! next interrupt: see the crate's measurements (README of the example).

mod callbacks;
mod vcpu;
mod wake;

pub use qemu_plugin_sys::{qemu_info_t, qemu_plugin_id_t};
pub use vcpu::{Reg, Vcpu};

use qemu_plugin_sys::{
    QEMU_PLUGIN_VERSION, qemu_plugin_num_vcpus, qemu_plugin_register_atexit_cb,
    qemu_plugin_register_flush_cb, qemu_plugin_register_vcpu_exit_cb,
    qemu_plugin_register_vcpu_idle_cb, qemu_plugin_register_vcpu_init_cb,
    qemu_plugin_register_vcpu_resume_cb, qemu_plugin_register_vcpu_tb_trans_cb, qemu_plugin_reset,
    qemu_plugin_scoreboard, qemu_plugin_scoreboard_new, qemu_plugin_u64,
};
use std::cell::{Cell, UnsafeCell};
use std::collections::HashMap;
use std::ffi::{CStr, c_char, c_int};
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use vcpu::VcpuState;

/// The plugin API version this crate is built for: the value of the
/// `qemu_plugin_version` symbol a plugin must export.
pub const PLUGIN_API_VERSION: c_int = QEMU_PLUGIN_VERSION as c_int;

/// What the probe logic implements. Every method is called from a vCPU
/// thread unless said otherwise; a panic in any of them is caught, counted
/// ([`caught_panics`]) and otherwise ignored.
pub trait Hooks: Send + Sync + 'static {
    /// At translation time, for each instruction of a block being
    /// translated: `Some(userdata)` to get [`on_insn`](Hooks::on_insn) (with
    /// registers readable) every time it executes. Asked again for every
    /// block after a reinstrumentation, and whenever QEMU retranslates a
    /// block for its own reasons (self-modifying code, a full code cache),
    /// so the answer must depend only on state that changes together with a
    /// [`request_reinstrument`].
    fn instrument(&self, vaddr: u64) -> Option<u64>;

    /// The instrumented instruction with `userdata` is about to execute on
    /// this vCPU (QEMU guarantees it is dispatched, not that it completes).
    fn on_insn(&self, vcpu: &mut Vcpu<'_>, userdata: u64);

    /// A sample armed with [`arm_sample`] is due. Taken between two blocks
    /// (QEMU's queued work, which also wakes a halted vCPU: its registers
    /// are then those it halted with, `rip` past its `hlt`), or, where
    /// waking is unavailable, at the vCPU's next `iretq` (with the
    /// interrupted context from the interrupt frame: `resumed`) or `hlt`.
    fn on_sample(&self, vcpu: &mut Vcpu<'_>, resumed: bool);

    /// After a reinstrumentation requested with [`request_reinstrument`]
    /// took effect: all translated code was flushed and
    /// every callback registered again. Runs on a vCPU thread inside QEMU's
    /// exclusive section (every vCPU stopped): keep it short and never wait
    /// for a vCPU in it.
    fn reinstrumented(&self) {}

    /// Whether any block needs [`instrument`](Hooks::instrument) asked at
    /// all. While this is false and a vCPU can be woken from another thread
    /// (see `wake`), the next reset leaves QEMU with no translation
    /// callback, so the guest runs exactly the code it would run without
    /// the plugin; a [`request_reinstrument`] made when it turns true
    /// translates everything again. Like `instrument`, the answer must
    /// change only together with a `request_reinstrument`.
    fn active(&self) -> bool {
        true
    }

    /// A vCPU came up (its index). Its registers are readable from here on.
    fn vcpu_init(&self, _vcpu_index: u32) {}

    /// QEMU is exiting (from its `atexit` handler, on the main thread, after
    /// the last vCPU callback). The place to write results.
    fn at_exit(&self) {}
}

/// What QEMU told the plugin at install time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InstallInfo {
    /// `"x86_64"`.
    pub target: String,
    /// Plugin API versions this QEMU supports (QEMU 10.0: 2 to 4).
    pub version_min: i32,
    pub version_cur: i32,
    /// vCPUs at boot, and at most (with hotplug).
    pub vcpus: u32,
    pub max_vcpus: u32,
}

/// Scoreboard words per vCPU: QEMU's inline conditions read them from the
/// translated code; any thread writes them.
#[repr(C)]
struct ScoreWords {
    /// Non-zero: a landmark instruction calls back (`RING_RESET`: a
    /// reinstrumentation waits for a vCPU to start it; `RING_SAMPLE`: a
    /// sample is due and no queued work will take it).
    doorbell: u64,
    /// `ARMED`: a sample is due.
    sample: u64,
}

const ARMED: u64 = 1;
const RING_RESET: u64 = 1;
const RING_SAMPLE: u64 = 2;

/// One vCPU: its scoreboard words and its own state.
struct Slot {
    /// This vCPU's `ScoreWords` in QEMU's scoreboard, set when the vCPU comes
    /// up and refreshed at every code flush (the scoreboard moves only when
    /// it grows past 16 vCPUs, with a flush). Null: not up yet.
    words: AtomicPtr<ScoreWords>,
    /// QEMU's CPUState, for waking the vCPU (see `wake`); null if unknown.
    cpu: AtomicPtr<std::ffi::c_void>,
    /// Set while a callback for this vCPU runs, so that a re-entrant call
    /// can never alias `state`.
    busy: Cell<bool>,
    state: UnsafeCell<VcpuState>,
}

// SAFETY: `busy` and `state` are touched only by the thread that runs this
// vCPU, inside a callback QEMU made for it (QEMU runs one vCPU's callbacks
// one at a time, on the thread that runs the vCPU); `words` is atomic.
unsafe impl Sync for Slot {}
// SAFETY: the raw pointers in `state` (register handles, a glib array) are
// QEMU and glib objects with no thread affinity; which thread may use them
// is governed by the Sync rule above.
unsafe impl Send for Slot {}

impl Slot {
    fn words(&self) -> Option<(&AtomicU64, &AtomicU64)> {
        let p = self.words.load(Ordering::Acquire);
        if p.is_null() {
            return None;
        }
        // SAFETY: `p` points into QEMU's scoreboard storage, 8-aligned and
        // alive while QEMU runs (refreshed if it moves, see `words`). The
        // translated code only reads these words; every writer goes through
        // atomics.
        unsafe {
            Some((
                AtomicU64::from_ptr(&raw mut (*p).doorbell),
                AtomicU64::from_ptr(&raw mut (*p).sample),
            ))
        }
    }
}

/// QEMU's scoreboard handle. Only ever passed back to QEMU.
struct Scoreboard(*mut qemu_plugin_scoreboard);
// SAFETY: an opaque handle QEMU accepts from any thread (its functions lock
// or only compute addresses).
unsafe impl Send for Scoreboard {}
// SAFETY: as for Send: we never dereference it.
unsafe impl Sync for Scoreboard {}

impl Scoreboard {
    fn entry(&self, offset: usize) -> qemu_plugin_u64 {
        qemu_plugin_u64 {
            score: self.0,
            offset,
        }
    }
}

/// One instrumented instruction: what its exec callback's userdata points to.
struct Entry {
    vaddr: u64,
    userdata: u64,
}

struct Plugin {
    id: qemu_plugin_id_t,
    hooks: &'static dyn Hooks,
    score: Scoreboard,
    slots: Box<[Slot]>,
    /// Entries the translated code points to, kept until the next code
    /// flush (no block can run them after it). Boxed so a pointer stays put
    /// while the map grows; keyed so a block translated again reuses them.
    entries: Mutex<HashMap<(u64, u64), Box<Entry>>>,
}

static PLUGIN: OnceLock<Plugin> = OnceLock::new();
static PANICS: AtomicU64 = AtomicU64::new(0);
static RESETS: AtomicU64 = AtomicU64::new(0);
/// A reinstrumentation is wanted and no reset since has satisfied it.
static REQUESTED: AtomicBool = AtomicBool::new(false);
/// `qemu_plugin_reset` was called and its callback has not run yet: QEMU
/// drops a second reset meanwhile (and would never call its callback).
static RESET_PENDING: AtomicBool = AtomicBool::new(false);
static SAMPLING: AtomicBool = AtomicBool::new(false);
/// QEMU called an idle or resume callback: multi-threaded TCG, where waking
/// a halted vCPU makes it call the resume callback.
static IDLE_CALLBACKS_SEEN: AtomicBool = AtomicBool::new(false);
/// A wake-up (`wake::queue`) is queued and has not run yet: one is enough.
static WAKE_QUEUED: AtomicBool = AtomicBool::new(false);
/// The translation callback is registered (see [`Hooks::active`]).
static TRANSLATING: AtomicBool = AtomicBool::new(false);

thread_local! {
    /// This thread runs vCPUs (marked in vCPU-context callbacks): it may call
    /// `qemu_plugin_reset` directly.
    static ON_VCPU_THREAD: Cell<bool> = const { Cell::new(false) };
    /// Inside our reset callback, where QEMU would drop another reset.
    static IN_RESET: Cell<bool> = const { Cell::new(false) };
}

fn plugin() -> Option<&'static Plugin> {
    PLUGIN.get()
}

/// Installs the hooks: registers the vCPU, translation, flush and exit
/// callbacks. Call it from `qemu_plugin_install` (QEMU's main thread, before
/// any vCPU exists), once per process.
///
/// Fails (and registers nothing) if QEMU is not an x86-64 system emulator
/// with plugin API 4 or later, or if called twice.
pub fn install(
    id: qemu_plugin_id_t,
    info: &qemu_info_t,
    hooks: &'static dyn Hooks,
) -> Result<InstallInfo, String> {
    let target = if info.target_name.is_null() {
        String::new()
    } else {
        // SAFETY: a NUL-terminated string owned by QEMU.
        unsafe { CStr::from_ptr(info.target_name) }
            .to_string_lossy()
            .into_owned()
    };
    if !info.system_emulation {
        return Err("vmprobe's plugin needs system emulation (qemu-system-*)".into());
    }
    if target != "x86_64" {
        return Err(format!(
            "vmprobe's plugin instruments x86_64 guests, not {target}"
        ));
    }
    if info.version.cur < PLUGIN_API_VERSION {
        return Err(format!(
            "QEMU's plugin API is version {}, vmprobe needs {PLUGIN_API_VERSION}",
            info.version.cur
        ));
    }
    // SAFETY: system_emulation is true, so the `system` member is the one
    // QEMU filled in.
    let (vcpus, max_vcpus) = unsafe {
        let s = info.__bindgen_anon_1.system;
        (s.smp_vcpus.max(1) as u32, s.max_vcpus.max(1) as u32)
    };
    wake::init(info.version.cur);
    let out = InstallInfo {
        target,
        version_min: info.version.min,
        version_cur: info.version.cur,
        vcpus,
        max_vcpus: max_vcpus.max(vcpus),
    };
    // SAFETY: allocates a zeroed scoreboard with one element per vCPU;
    // QEMU grows it with the vCPU count.
    let score = unsafe { qemu_plugin_scoreboard_new(std::mem::size_of::<ScoreWords>()) };
    if score.is_null() {
        return Err("QEMU could not allocate a scoreboard".into());
    }
    let slots = (0..out.max_vcpus)
        .map(|_| Slot {
            words: AtomicPtr::new(std::ptr::null_mut()),
            cpu: AtomicPtr::new(std::ptr::null_mut()),
            busy: Cell::new(false),
            state: UnsafeCell::new(VcpuState::default()),
        })
        .collect();
    let plugin = Plugin {
        id,
        hooks,
        score: Scoreboard(score),
        slots,
        entries: Mutex::new(HashMap::new()),
    };
    PLUGIN
        .set(plugin)
        .map_err(|_| "the plugin is already installed".to_string())?;
    register_callbacks(id);
    Ok(out)
}

/// Every callback the plugin has while installed: at install, and again in
/// the reset callback (a reset unregisters all of them).
///
/// The translation callback only while the hooks are active, or while a
/// request from another thread can reach a vCPU through nothing but the
/// doorbell blocks the translator makes. Without it QEMU translates guest
/// code as it would with no plugin loaded (its translator skips every
/// plugin step when no plugin wants translations), which is what makes an
/// idle plugin cost nothing measurable on the guest.
fn register_callbacks(id: qemu_plugin_id_t) {
    let translate = !wake::available() || plugin().is_none_or(|p| p.hooks.active());
    TRANSLATING.store(translate, Ordering::SeqCst);
    // SAFETY: `id` is this plugin's id and the functions are `extern "C"`
    // trampolines with QEMU's signatures that never unwind.
    unsafe {
        qemu_plugin_register_vcpu_init_cb(id, Some(callbacks::vcpu_init));
        if translate {
            qemu_plugin_register_vcpu_tb_trans_cb(id, Some(callbacks::tb_trans));
        }
        qemu_plugin_register_vcpu_idle_cb(id, Some(callbacks::vcpu_idle));
        qemu_plugin_register_vcpu_resume_cb(id, Some(callbacks::vcpu_resume));
        qemu_plugin_register_flush_cb(id, Some(callbacks::flush));
        qemu_plugin_register_atexit_cb(id, Some(callbacks::at_exit), std::ptr::null_mut());
    }
}

/// From any thread: flush all translated code and register every callback
/// again, so that [`Hooks::instrument`] is asked again for every block;
/// [`Hooks::reinstrumented`] says when it took effect. Requests coalesce:
/// several before it takes effect give one reset.
pub fn request_reinstrument() {
    let Some(p) = plugin() else { return };
    REQUESTED.store(true, Ordering::SeqCst);
    if ON_VCPU_THREAD.get() && !IN_RESET.get() {
        start_reset(p);
    } else {
        ring_doorbells(p);
    }
}

/// On a vCPU thread: start the reset a request is waiting for, unless one
/// is already under way.
fn start_reset(p: &Plugin) {
    if REQUESTED.load(Ordering::SeqCst) && !RESET_PENDING.swap(true, Ordering::SeqCst) {
        // SAFETY: on a vCPU thread (QEMU's current_cpu is set), so QEMU
        // flushes the code and unregisters our callbacks in an exclusive
        // section, then calls `callbacks::reset_done`; the callback is a
        // non-unwinding trampoline.
        unsafe { qemu_plugin_reset(p.id, Some(callbacks::reset_done)) };
    }
}

fn ring_doorbells(p: &Plugin) {
    for slot in p.slots.iter() {
        if let Some((doorbell, _)) = slot.words() {
            doorbell.fetch_or(RING_RESET, Ordering::SeqCst);
        }
    }
    // One vCPU thread doing the reset is enough: its exclusive section
    // stops them all.
    let first = p
        .slots
        .iter()
        .map(|s| s.cpu.load(Ordering::Acquire))
        .find(|c| !c.is_null());
    if let Some(cpu) = first {
        if WAKE_QUEUED.swap(true, Ordering::SeqCst) {
            return;
        }
        if wake::queue(cpu, callbacks::wake_work, 0) {
            return;
        }
        WAKE_QUEUED.store(false, Ordering::SeqCst);
    }
    if IDLE_CALLBACKS_SEEN.load(Ordering::Relaxed) {
        kick_halted_vcpus(p);
    }
}

/// Whether a request from another thread wakes a vCPU at once (QEMU's
/// `async_run_on_cpu` was found: see `wake`), rather than waiting for the
/// next doorbell block.
pub fn immediate_wake() -> bool {
    wake::available()
}

/// Off: requests from other threads wait for a doorbell block (or, under
/// multi-threaded TCG, the resume callback), using the plugin API alone.
/// Call it before the first request: while the plugin is idle with no
/// translation callback, only the wake-up can reach a vCPU.
pub fn set_immediate_wake(on: bool) {
    wake::ENABLED.store(on, Ordering::Relaxed);
}

/// Whether QEMU calls the translation callback now: false while the hooks
/// are idle and a wake-up can start the next reset (see [`Hooks::active`]).
pub fn translating() -> bool {
    TRANSLATING.load(Ordering::SeqCst)
}

/// Under multi-threaded TCG, a halted vCPU runs no block until an interrupt
/// comes. Setting a global callback that nothing had registered makes QEMU
/// queue work on every vCPU (it updates each vCPU's event mask with
/// `async_run_on_cpu`), which wakes a halted one: it then calls the resume
/// callback, which answers the doorbell, and halts again. The vCPU exit
/// callback is one nobody else uses; it is removed again at once. QEMU
/// allows registering from any thread (it takes its plugin lock).
fn kick_halted_vcpus(p: &Plugin) {
    // SAFETY: this plugin's id; the callback is a non-unwinding trampoline;
    // `None` unregisters it again.
    unsafe {
        qemu_plugin_register_vcpu_exit_cb(p.id, Some(callbacks::vcpu_exit));
        qemu_plugin_register_vcpu_exit_cb(p.id, None);
    }
}

/// Sampling on or off: while off, [`arm_sample`] is ignored. Sampling
/// instruments nothing: a sample is QEMU's queued work on the vCPU's own
/// thread, run between two blocks, or, where that is unavailable, a
/// conditional callback on the `iretq` and `hlt` instructions the doorbell
/// already instruments. (A conditional callback on every block, the plugin
/// API's own way, corrupted a two-vCPU guest under single-threaded TCG in
/// QEMU 10.0.2: Oopses within seconds, whether or not a sample was ever
/// armed.)
pub fn set_sampling(on: bool) {
    SAMPLING.store(on, Ordering::SeqCst);
}

/// From any thread: `vcpu` calls [`Hooks::on_sample`] soon (once, however
/// many times it was armed). Ignored while sampling is off or for a vCPU
/// that is not up.
pub fn arm_sample(vcpu: u32) {
    if !SAMPLING.load(Ordering::Relaxed) {
        return;
    }
    let Some(p) = plugin() else { return };
    if let Some(slot) = p.slots.get(vcpu as usize) {
        arm(slot, vcpu);
    }
}

/// [`arm_sample`] for every vCPU.
pub fn arm_all_samples() {
    if !SAMPLING.load(Ordering::Relaxed) {
        return;
    }
    let Some(p) = plugin() else { return };
    for (i, slot) in p.slots.iter().enumerate() {
        arm(slot, i as u32);
    }
}

fn arm(slot: &Slot, vcpu: u32) {
    let Some((_, sample)) = slot.words() else {
        return;
    };
    // Queued work samples once, however often it is queued: queue it only
    // when the flag goes up.
    if sample.fetch_or(ARMED, Ordering::SeqCst) & ARMED == 0
        && !wake::queue(
            slot.cpu.load(Ordering::Acquire),
            callbacks::sample_work,
            u64::from(vcpu),
        )
        && let Some((doorbell, _)) = slot.words()
    {
        // No queued work: the vCPU's next landmark instruction samples.
        doorbell.fetch_or(RING_SAMPLE, Ordering::SeqCst);
    }
}

/// Panics caught at the FFI boundary so far (each one a callback that
/// returned early to QEMU).
pub fn caught_panics() -> u64 {
    PANICS.load(Ordering::Relaxed)
}

/// Resets (code flush plus re-registration) that took effect so far.
pub fn resets() -> u64 {
    RESETS.load(Ordering::Relaxed)
}

/// vCPUs that QEMU has brought up so far.
pub fn vcpus_up() -> u32 {
    // SAFETY: reads QEMU's vCPU count, allowed from any thread.
    (unsafe { qemu_plugin_num_vcpus() }).max(0) as u32
}

/// The plugin's arguments: QEMU passes each `name=value` of `-plugin
/// path,name=value,...` as one string, and a NULL `argv` when there are none.
///
/// # Safety
/// `argv` must be NULL or point to `argc` NUL-terminated strings (as QEMU
/// passes them to `qemu_plugin_install`).
pub unsafe fn plugin_args(argc: c_int, argv: *const *const c_char) -> Vec<String> {
    if argv.is_null() || argc <= 0 {
        return Vec::new();
    }
    // SAFETY: the caller guarantees `argc` valid entries.
    let raw = unsafe { std::slice::from_raw_parts(argv, argc as usize) };
    raw.iter()
        .filter(|p| !p.is_null())
        // SAFETY: each non-null entry is a NUL-terminated string (caller).
        .map(|&p| unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned())
        .collect()
}

/// Runs a `qemu_plugin_install` body: catches a panic (QEMU would abort on
/// an unwind), prints an error to stderr (QEMU then unloads the plugin)
/// and returns QEMU's convention, 0 for success.
///
/// # Safety
/// `info` must be NULL or the `qemu_info_t` QEMU passed to
/// `qemu_plugin_install`, during that call.
pub unsafe fn install_entry(
    id: qemu_plugin_id_t,
    info: *const qemu_info_t,
    args: &[String],
    body: fn(qemu_plugin_id_t, &qemu_info_t, &[String]) -> Result<(), String>,
) -> c_int {
    if info.is_null() {
        eprintln!("vmprobe plugin: QEMU passed no qemu_info_t");
        return 1;
    }
    // SAFETY: the caller's contract: QEMU's qemu_info_t, valid (and not
    // written) for the duration of the install call we run in.
    let info = unsafe { &*info };
    match std::panic::catch_unwind(|| body(id, info, args)) {
        Ok(Ok(())) => 0,
        Ok(Err(e)) => {
            eprintln!("vmprobe plugin: {e}");
            1
        }
        Err(_) => {
            PANICS.fetch_add(1, Ordering::Relaxed);
            eprintln!("vmprobe plugin: panic while installing");
            1
        }
    }
}
