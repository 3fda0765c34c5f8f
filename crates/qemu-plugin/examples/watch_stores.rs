//! A write watchpoint made of memory callbacks, to measure what a
//! plugin-side watchpoint would cost against the gdbstub's (issue 13 asks
//! to measure both before choosing). Built on the raw plugin API: the
//! `tcg` layer has no memory callbacks because vmprobe serves watchpoints
//! through the stub.
//!
//! ```text
//! -plugin libwatch_stores.so,addr=0xA,len=N,out=FILE
//! ```
//!
//! Every instruction of every block gets a callback on its stores (QEMU
//! calls it only for instructions that write memory); a store that
//! overlaps `[addr, addr + len)` is a hit. At exit it writes `hits N` and
//! `stores N` (all stores seen) to `out`.

use qemu_plugin_sys::{
    qemu_info_t, qemu_plugin_cb_flags, qemu_plugin_id_t, qemu_plugin_mem_rw,
    qemu_plugin_mem_size_shift, qemu_plugin_meminfo_t, qemu_plugin_register_atexit_cb,
    qemu_plugin_register_vcpu_mem_cb, qemu_plugin_register_vcpu_tb_trans_cb, qemu_plugin_tb,
    qemu_plugin_tb_get_insn, qemu_plugin_tb_n_insns,
};
use std::ffi::{c_uint, c_void};
use std::path::PathBuf;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

vmprobe_qemu_plugin::export_plugin!(install);

struct Watch {
    addr: u64,
    len: u64,
    out: PathBuf,
    hits: AtomicU64,
    stores: AtomicU64,
}

static WATCH: OnceLock<Watch> = OnceLock::new();

fn parse(args: &[String]) -> Result<Watch, String> {
    let (mut addr, mut len, mut out) = (None, 8, None);
    for a in args {
        match a.split_once('=') {
            Some(("addr", v)) => {
                let hex = v.trim_start_matches("0x");
                addr = Some(u64::from_str_radix(hex, 16).map_err(|e| format!("addr={v}: {e}"))?);
            }
            Some(("len", v)) => len = v.parse().map_err(|e| format!("len={v}: {e}"))?,
            Some(("out", v)) => out = Some(PathBuf::from(v)),
            _ => return Err(format!("unknown argument '{a}'")),
        }
    }
    Ok(Watch {
        addr: addr.ok_or("addr= is required")?,
        len,
        out: out.ok_or("out= is required")?,
        hits: AtomicU64::new(0),
        stores: AtomicU64::new(0),
    })
}

unsafe extern "C" fn on_store(
    _vcpu: c_uint,
    info: qemu_plugin_meminfo_t,
    vaddr: u64,
    _userdata: *mut c_void,
) {
    if let Some(w) = WATCH.get() {
        w.stores.fetch_add(1, Ordering::Relaxed);
        // SAFETY: `info` is the meminfo QEMU passed to this callback.
        let size = 1u64 << unsafe { qemu_plugin_mem_size_shift(info) };
        if vaddr < w.addr.saturating_add(w.len) && vaddr.saturating_add(size) > w.addr {
            w.hits.fetch_add(1, Ordering::Relaxed);
        }
    }
}

unsafe extern "C" fn tb_trans(_id: qemu_plugin_id_t, tb: *mut qemu_plugin_tb) {
    // SAFETY: `tb` and its insn handles are valid during this callback;
    // the callback is a plain function that never unwinds (no panics in it).
    unsafe {
        for i in 0..qemu_plugin_tb_n_insns(tb) {
            let insn = qemu_plugin_tb_get_insn(tb, i);
            if !insn.is_null() {
                qemu_plugin_register_vcpu_mem_cb(
                    insn,
                    Some(on_store),
                    qemu_plugin_cb_flags::QEMU_PLUGIN_CB_NO_REGS,
                    qemu_plugin_mem_rw::QEMU_PLUGIN_MEM_W,
                    std::ptr::null_mut(),
                );
            }
        }
    }
}

unsafe extern "C" fn at_exit(_id: qemu_plugin_id_t, _userdata: *mut c_void) {
    if let Some(w) = WATCH.get() {
        let text = format!(
            "hits {}\nstores {}\n",
            w.hits.load(Ordering::Relaxed),
            w.stores.load(Ordering::Relaxed)
        );
        let _ = std::fs::write(&w.out, text);
    }
}

fn install(id: qemu_plugin_id_t, _info: &qemu_info_t, args: &[String]) -> Result<(), String> {
    WATCH
        .set(parse(args)?)
        .map_err(|_| "installed twice".to_string())?;
    // SAFETY: this plugin's id; the callbacks have QEMU's signatures.
    unsafe {
        qemu_plugin_register_vcpu_tb_trans_cb(id, Some(tb_trans));
        qemu_plugin_register_atexit_cb(id, Some(at_exit), std::ptr::null_mut());
    }
    Ok(())
}
