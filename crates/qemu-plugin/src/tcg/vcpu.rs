//! The current vCPU inside a callback: its registers (by gdb name or by
//! [`Reg`]) and guest-virtual memory.
//!
//! QEMU reads registers through its gdbstub tables (`gdb_read_register`) into
//! a glib `GByteArray`, always for `current_cpu`, the vCPU the calling thread
//! runs. So everything here is valid only on a vCPU thread, inside a callback
//! QEMU made for that vCPU; the [`Vcpu`] type exists only there.

use qemu_plugin_sys::{
    GArray, GByteArray, qemu_plugin_get_registers, qemu_plugin_read_memory_vaddr,
    qemu_plugin_read_register, qemu_plugin_reg_descriptor, qemu_plugin_register,
};
use std::collections::HashMap;
use std::ffi::{CStr, c_char, c_int, c_uint};
use std::ptr::NonNull;

// glib, resolved at load time against the QEMU executable's libglib (QEMU
// opens plugins with every symbol bound immediately). Not linked: the plugin
// must use QEMU's own glib, the one that allocated these arrays.
unsafe extern "C" {
    fn g_byte_array_new() -> *mut GByteArray;
    fn g_byte_array_set_size(array: *mut GByteArray, length: c_uint) -> *mut GByteArray;
    fn g_array_free(array: *mut GArray, free_segment: c_int) -> *mut c_char;
}

/// glib's TRUE, for `gboolean` arguments (an `int`, not a C `bool`).
const GTRUE: c_int = 1;

macro_rules! regs {
    ($($variant:ident = $name:literal,)*) => {
        /// x86-64 registers as QEMU's gdbstub names them (gdb-xml/i386-64bit.xml),
        /// for the fast path [`Vcpu::reg_id`].
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum Reg {
            $($variant,)*
        }

        impl Reg {
            pub const ALL: &'static [Reg] = &[$(Reg::$variant,)*];

            /// The gdb name (`"rax"`, `"k_gs_base"`, ...).
            pub fn name(self) -> &'static str {
                match self {
                    $(Reg::$variant => $name,)*
                }
            }

            pub fn from_name(name: &str) -> Option<Reg> {
                match name {
                    $($name => Some(Reg::$variant),)*
                    _ => None,
                }
            }
        }
    };
}

regs! {
    Rax = "rax", Rbx = "rbx", Rcx = "rcx", Rdx = "rdx",
    Rsi = "rsi", Rdi = "rdi", Rbp = "rbp", Rsp = "rsp",
    R8 = "r8", R9 = "r9", R10 = "r10", R11 = "r11",
    R12 = "r12", R13 = "r13", R14 = "r14", R15 = "r15",
    Rip = "rip", Eflags = "eflags",
    Cs = "cs", Ss = "ss", Ds = "ds", Es = "es", Fs = "fs", Gs = "gs",
    FsBase = "fs_base", GsBase = "gs_base", KGsBase = "k_gs_base",
    Cr0 = "cr0", Cr2 = "cr2", Cr3 = "cr3", Cr4 = "cr4", Cr8 = "cr8", Efer = "efer",
}

const NREGS: usize = Reg::ALL.len();

/// A register handle: QEMU's opaque pointer, in fact the gdb register number
/// plus one, the same for every vCPU of one CPU model.
#[derive(Clone, Copy)]
struct Handle(NonNull<qemu_plugin_register>);

/// The register handles of one vCPU, by [`Reg`] and by name.
struct RegTable {
    by_id: [Option<Handle>; NREGS],
    /// Every register QEMU lists (also st0.., xmm0.., mxcsr), for
    /// [`Vcpu::reg`] with names outside [`Reg`].
    by_name: HashMap<String, Handle>,
}

impl RegTable {
    /// Must run on a vCPU thread: `qemu_plugin_get_registers` lists the
    /// registers of `current_cpu`.
    fn load() -> RegTable {
        let mut table = RegTable {
            by_id: [None; NREGS],
            by_name: HashMap::new(),
        };
        // SAFETY: we are on a vCPU thread (the only callers are vCPU callbacks),
        // where QEMU's current_cpu is set; the call allocates a new GArray that
        // we own.
        let array = unsafe { qemu_plugin_get_registers() };
        if array.is_null() {
            return table;
        }
        // SAFETY: `array` is a live GArray of `qemu_plugin_reg_descriptor`
        // (QEMU built it with that element size), `len` elements long.
        let descriptors = unsafe {
            let a = &*array;
            if a.data.is_null() {
                &[][..]
            } else {
                std::slice::from_raw_parts(
                    a.data.cast::<qemu_plugin_reg_descriptor>(),
                    a.len as usize,
                )
            }
        };
        for d in descriptors {
            let (Some(handle), false) = (NonNull::new(d.handle), d.name.is_null()) else {
                continue;
            };
            // SAFETY: QEMU's register names are interned, NUL-terminated C
            // strings that live as long as QEMU.
            let name = unsafe { CStr::from_ptr(d.name) }.to_string_lossy();
            if let Some(r) = Reg::from_name(&name) {
                table.by_id[r as usize] = Some(Handle(handle));
            }
            table.by_name.insert(name.into_owned(), Handle(handle));
        }
        // SAFETY: we own `array` (see above); TRUE frees its element storage
        // too. The names are interned by QEMU and not freed with it.
        unsafe { g_array_free(array, GTRUE) };
        table
    }
}

/// Per-vCPU state that lives across callbacks, touched only from the thread
/// that runs this vCPU (see `Slot` in mod.rs).
#[derive(Default)]
pub(super) struct VcpuState {
    regs: Option<RegTable>,
    /// One glib array per vCPU for every register and memory read, so that a
    /// read never allocates (glib keeps its capacity when shrunk to 0).
    buf: Option<NonNull<GByteArray>>,
}

impl VcpuState {
    /// Loads the register handles: in vcpu_init, or lazily at first use.
    pub(super) fn init(&mut self) {
        if self.regs.is_none() {
            self.regs = Some(RegTable::load());
        }
        self.buffer();
    }

    fn buffer(&mut self) -> Option<NonNull<GByteArray>> {
        if self.buf.is_none() {
            // SAFETY: plain glib allocation; the array lives as long as QEMU
            // (it is never freed: the vCPU can run until the process exits).
            self.buf = NonNull::new(unsafe { g_byte_array_new() });
        }
        self.buf
    }

    fn table(&mut self) -> &RegTable {
        self.regs.get_or_insert_with(RegTable::load)
    }

    fn read(&mut self, h: Handle) -> Option<u64> {
        let buf = self.buffer()?.as_ptr();
        // SAFETY: `buf` is our live GByteArray; QEMU's read_register appends
        // to it, so it is emptied first (keeping its allocation). `h` came
        // from qemu_plugin_get_registers and we are on this vCPU's thread.
        let n = unsafe {
            g_byte_array_set_size(buf, 0);
            qemu_plugin_read_register(h.0.as_ptr(), buf)
        };
        if n <= 0 {
            return None;
        }
        // SAFETY: after a successful read `buf` holds `len` (≥ n) valid bytes.
        let bytes = unsafe {
            let b = &*buf;
            std::slice::from_raw_parts(b.data, (b.len as usize).min(n as usize))
        };
        let mut v = [0u8; 8];
        let k = bytes.len().min(8);
        v[..k].copy_from_slice(&bytes[..k]);
        Some(u64::from_le_bytes(v))
    }
}

/// Values the callback knows better than QEMU's `env` (which holds a stale
/// `rip` in the middle of a block): at most a handful per callback.
#[derive(Clone, Copy, Default)]
pub(super) struct Overrides {
    regs: [(u8, u64); 5],
    len: u8,
}

impl Overrides {
    pub(super) fn set(&mut self, r: Reg, v: u64) {
        let n = self.len as usize;
        if let Some(slot) = self.regs[..n].iter_mut().find(|(id, _)| *id == r as u8) {
            slot.1 = v;
        } else if n < self.regs.len() {
            self.regs[n] = (r as u8, v);
            self.len += 1;
        }
    }

    fn get(&self, r: Reg) -> Option<u64> {
        self.regs[..self.len as usize]
            .iter()
            .find(|(id, _)| *id == r as u8)
            .map(|&(_, v)| v)
    }
}

/// The vCPU a callback runs for. Exists only during that callback, on that
/// vCPU's thread.
pub struct Vcpu<'a> {
    pub(super) index: u32,
    pub(super) state: &'a mut VcpuState,
    pub(super) overrides: Overrides,
}

impl Vcpu<'_> {
    pub fn index(&self) -> u32 {
        self.index
    }

    /// A register by its gdb name (`rax`.., `rip`, `eflags`, `cs`..,
    /// `fs_base`, `gs_base`, `k_gs_base`, `cr0`, `cr2`, `cr3`, `cr4`, `cr8`,
    /// `efer`, also `xmm0`.. and `st0`.., truncated to their low 8 bytes),
    /// little-endian, zero-extended to 64 bits. `None` if QEMU lists no such
    /// register.
    ///
    /// Inside [`Hooks::on_insn`](super::Hooks::on_insn) `rip` is the
    /// instrumented instruction's address; inside `on_sample` it is the
    /// block's. The arithmetic flags in `eflags` are unreliable inside a
    /// block: TCG computes them lazily and QEMU does not fold them in.
    pub fn reg(&mut self, name: &str) -> Option<u64> {
        if let Some(r) = Reg::from_name(name) {
            return self.reg_id(r);
        }
        let h = *self.state.table().by_name.get(name)?;
        self.state.read(h)
    }

    /// A register by [`Reg`]: no name lookup.
    pub fn reg_id(&mut self, r: Reg) -> Option<u64> {
        if let Some(v) = self.overrides.get(r) {
            return Some(v);
        }
        let h = self.state.table().by_id[r as usize]?;
        self.state.read(h)
    }

    /// Reads guest-virtual memory through this vCPU's current page tables
    /// (its CR3 and paging mode), as a debugger would. False if any byte is
    /// unmapped; `buf` is then unspecified. Memory this very block wrote
    /// before the callback may not be visible yet (QEMU's caveat).
    pub fn read_memory(&mut self, vaddr: u64, buf: &mut [u8]) -> bool {
        if buf.is_empty() {
            return true;
        }
        let Some(ba) = self.state.buffer() else {
            return false;
        };
        let ba = ba.as_ptr();
        // SAFETY: `ba` is our live GByteArray, which QEMU resizes to
        // `buf.len()` and fills; we are on this vCPU's thread (current_cpu).
        let ok = unsafe { qemu_plugin_read_memory_vaddr(vaddr, ba, buf.len()) };
        if !ok {
            return false;
        }
        // SAFETY: after success the array holds `len` ≥ buf.len() bytes.
        let got = unsafe {
            let b = &*ba;
            if (b.len as usize) < buf.len() || b.data.is_null() {
                return false;
            }
            std::slice::from_raw_parts(b.data, buf.len())
        };
        buf.copy_from_slice(got);
        true
    }

    pub(super) fn read_u64s<const N: usize>(&mut self, vaddr: u64) -> Option<[u64; N]> {
        let mut bytes = [0u8; 64];
        let bytes = &mut bytes[..N * 8];
        if !self.read_memory(vaddr, bytes) {
            return None;
        }
        let mut out = [0u64; N];
        for (o, c) in out.iter_mut().zip(bytes.chunks_exact(8)) {
            *o = u64::from_le_bytes(c.try_into().ok()?);
        }
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_are_gdbs() {
        for &r in Reg::ALL {
            assert_eq!(Reg::from_name(r.name()), Some(r));
        }
        assert_eq!(Reg::from_name("k_gs_base"), Some(Reg::KGsBase));
        assert_eq!(Reg::from_name("orig_rax"), None);
        assert_eq!(NREGS, 33);
    }

    #[test]
    fn overrides_replace_and_stay_bounded() {
        let mut o = Overrides::default();
        o.set(Reg::Rip, 1);
        o.set(Reg::Rip, 2);
        assert_eq!(o.get(Reg::Rip), Some(2));
        assert_eq!(o.get(Reg::Rsp), None);
        for (i, &r) in Reg::ALL.iter().enumerate() {
            o.set(r, i as u64);
        }
        assert_eq!(o.len, 5);
        assert_eq!(o.get(Reg::Rip), Some(Reg::Rip as u64));
    }
}
