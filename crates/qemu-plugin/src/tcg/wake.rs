//! Waking a vCPU thread from another thread, so that it starts a reset at
//! once even when the guest is idle.
//!
//! The plugin API has no way to do this. Under single-threaded TCG
//! (vmprobe's default) a halted vCPU runs no block until its next
//! interrupt, and QEMU 10.0 calls no idle or resume callback there, so an
//! idle guest answers the doorbell only at its next timer tick: 100-400 ms
//! measured on the default guest (NOHZ idle), against 2-7 ms on a busy one.
//!
//! QEMU's own way is `async_run_on_cpu`: queue work for a vCPU, which runs
//! it on that vCPU's thread (waking it if halted) with `current_cpu` set,
//! exactly the context `qemu_plugin_reset` needs. It is not plugin API, but
//! QEMU builds that export every symbol (Debian's, built with modules and
//! `-rdynamic`) resolve it; its signature has been the same since QEMU 2.7
//! (still in 10.1). So it is looked up at run time with `dlsym`, only for the
//! plugin API versions checked against the source (4: QEMU 9.2-10.0, 5:
//! 10.1), and the doorbell stays the fallback when it is absent.
//! [`set_immediate_wake(false)`](super::set_immediate_wake) turns it off (to
//! measure the doorbell alone).

use std::ffi::{c_char, c_int, c_void};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

/// `void (*run_on_cpu_func)(CPUState *cpu, run_on_cpu_data data)`: the union
/// `run_on_cpu_data` is 8 bytes of INTEGER class, passed like a `u64`.
pub(super) type WorkFn = unsafe extern "C" fn(cpu: *mut c_void, data: u64);
/// `void async_run_on_cpu(CPUState *cpu, run_on_cpu_func func, run_on_cpu_data data)`.
type AsyncRunOnCpu = unsafe extern "C" fn(cpu: *mut c_void, func: WorkFn, data: u64);
/// `CPUState *qemu_get_cpu(int index)`.
type GetCpu = unsafe extern "C" fn(index: c_int) -> *mut c_void;

unsafe extern "C" {
    fn dlsym(handle: *mut c_void, symbol: *const c_char) -> *mut c_void;
}

/// glibc's `RTLD_DEFAULT`: search the global scope (the QEMU executable).
const RTLD_DEFAULT: *mut c_void = std::ptr::null_mut();

pub(super) struct Wake {
    run: AsyncRunOnCpu,
    get_cpu: GetCpu,
}

static WAKE: OnceLock<Option<Wake>> = OnceLock::new();

/// Looks the functions up (once, at install).
pub(super) fn init(plugin_api_version: c_int) {
    WAKE.get_or_init(|| {
        if !(4..=5).contains(&plugin_api_version) {
            return None;
        }
        // SAFETY: dlsym with NUL-terminated names; a non-null result is the
        // address of QEMU's function of that name, whose C signature the
        // types above spell out (checked against QEMU 10.0 and 10.1).
        unsafe {
            let run = dlsym(RTLD_DEFAULT, c"async_run_on_cpu".as_ptr());
            let get_cpu = dlsym(RTLD_DEFAULT, c"qemu_get_cpu".as_ptr());
            if run.is_null() || get_cpu.is_null() {
                return None;
            }
            Some(Wake {
                run: std::mem::transmute::<*mut c_void, AsyncRunOnCpu>(run),
                get_cpu: std::mem::transmute::<*mut c_void, GetCpu>(get_cpu),
            })
        }
    });
}

pub(super) fn available() -> bool {
    ENABLED.load(Ordering::Relaxed) && matches!(WAKE.get(), Some(Some(_)))
}

pub(super) static ENABLED: AtomicBool = AtomicBool::new(true);

/// QEMU's `CPUState` of vCPU `index`. Call on that vCPU's thread in
/// vcpu_init (QEMU holds its big lock there, as `qemu_get_cpu` expects).
pub(super) fn cpu_state(index: u32) -> *mut c_void {
    match WAKE.get() {
        // SAFETY: QEMU's qemu_get_cpu, called under its big lock.
        Some(Some(w)) => unsafe { (w.get_cpu)(index as c_int) },
        _ => std::ptr::null_mut(),
    }
}

/// Queues `work(cpu, data)` to run on `cpu`'s thread soon, between two
/// blocks (or at once if it is halted: it wakes). False if waking is
/// unavailable.
pub(super) fn queue(cpu: *mut c_void, work: WorkFn, data: u64) -> bool {
    match WAKE.get() {
        Some(Some(w)) if !cpu.is_null() && ENABLED.load(Ordering::Relaxed) => {
            // SAFETY: `cpu` is a CPUState QEMU gave us for a vCPU that is up
            // (vCPUs are not unplugged in the guests we run); QEMU's
            // async_run_on_cpu is made to be called from any thread; `work`
            // lives in this library, which QEMU never unloads (we never
            // uninstall).
            unsafe { (w.run)(cpu, work, data) };
            true
        }
        _ => false,
    }
}

thread_local! {
    /// This thread's `current_cpu` (QEMU's thread-local `CPUState *` of the
    /// vCPU the thread is running), looked up once per thread; null where
    /// QEMU does not export it.
    static CURRENT_CPU: std::cell::Cell<Option<*const *mut c_void>> =
        const { std::cell::Cell::new(None) };
}

/// QEMU's `CPUState` of the vCPU this thread runs now, or null. Why it is
/// needed: QEMU 10.0 passes callbacks the index of the vCPU that
/// *translated* a block whenever TCG is single-threaded (its
/// `gen_cpu_index` takes "not parallel" for "one vCPU"), and under
/// single-threaded TCG every vCPU runs the same translated code, so with
/// two vCPUs the index a callback gets is often the other one's.
pub(super) fn current_cpu() -> *mut c_void {
    let slot = CURRENT_CPU.with(|c| match c.get() {
        Some(p) => p,
        None => {
            // SAFETY: dlsym with a NUL-terminated name; for a thread-local
            // symbol glibc returns the calling thread's instance.
            let p = unsafe { dlsym(RTLD_DEFAULT, c"current_cpu".as_ptr()) } as *const *mut c_void;
            c.set(Some(p));
            p
        }
    });
    if slot.is_null() {
        return std::ptr::null_mut();
    }
    // SAFETY: `slot` is this thread's `current_cpu`, a pointer-sized
    // thread-local QEMU sets before running a vCPU; only this thread writes it.
    unsafe { slot.read() }
}
