//! The guest kernel's syscalls as its `syscalls:*` tracepoints describe them, read from the
//! image: names, parameter types and names, and numbers.
//!
//! Where the declarations come from: the kernel's own syscall metadata, the `struct
//! syscall_metadata` that every `SYSCALL_DEFINEn` emits (`__syscall_meta_NAME`, listed between
//! `__start_syscalls_metadata` and `__stop_syscalls_metadata`), whose `types`/`args` strings are
//! exactly what tracefs prints in `syscalls/sys_enter_NAME/format`. The alternative, BTF
//! prototypes of `__do_sys_NAME`/`__se_sys_NAME`, is not reliable: those are `static inline`
//! and usually inlined into `__x64_sys_NAME`, so Debian's 6.1 image has BTF for 103
//! `__do_sys_` and no `__se_sys_` functions against 579 `__x64_sys_` ones (and `__se_sys_`
//! would give every parameter as `long`).
//!
//! The metadata's `syscall_nr` is filled in at boot (it is -1 in the image), so numbers come
//! from the x86-64 `sys_call_table` instead: the index whose entry is `__x64_sys_NAME`.
//!
//! The image is untrusted: every pointer is checked against the sections read, strings and
//! counts are bounded, and a malformed entry is skipped, never a panic.

use std::path::Path;

use crate::{Error, KernelSections, KernelSymbols, Section};

/// One parameter: its C type as tracefs prints it (`const char *`) and its name.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SyscallParam {
    pub ty: String,
    pub name: String,
}

/// One syscall of the image.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Syscall {
    /// Without the `sys_` prefix: `openat`.
    pub name: String,
    /// Its x86-64 number, if `sys_call_table` has `__x64_sys_NAME`.
    pub nr: Option<u32>,
    pub params: Vec<SyscallParam>,
}

const SECTIONS: &[&str] = &[".rodata", ".data", ".init.data"];
/// More than any kernel has (6.1: about 450 with metadata).
const MAX_SYSCALLS: usize = 2048;
const MAX_STR: usize = 128;
/// `struct syscall_metadata` in 6.1 (x86-64): name, syscall_nr, nb_args, types, args.
const META_LEN: usize = 32;

/// The syscalls of the image at `path` (bzImage or vmlinux), with `symbols` its symbols.
/// Empty when the image has no syscall metadata (no `CONFIG_FTRACE_SYSCALLS`).
pub fn load_syscalls(
    path: &Path,
    symbols: &KernelSymbols,
    cache_dir: Option<&Path>,
) -> Result<Vec<Syscall>, Error> {
    let secs = KernelSections::load(path, SECTIONS, cache_dir)?;
    let sections: Vec<&Section> = SECTIONS.iter().filter_map(|n| secs.get(n)).collect();
    Ok(parse_syscalls(&sections, symbols))
}

/// [`load_syscalls`] over sections already read.
pub fn parse_syscalls(sections: &[&Section], symbols: &KernelSymbols) -> Vec<Syscall> {
    let mem = Mem(sections);
    let (Some(start), Some(stop)) = (
        symbols.lookup("__start_syscalls_metadata"),
        symbols.lookup("__stop_syscalls_metadata"),
    ) else {
        return Vec::new();
    };
    let count = (stop.addr.saturating_sub(start.addr) / 8) as usize;
    let table = syscall_table(&mem, symbols);
    let mut out: Vec<Syscall> = Vec::new();
    for i in 0..count.min(MAX_SYSCALLS) {
        let Some(meta) = mem.u64(start.addr + 8 * i as u64) else {
            continue;
        };
        let Some(sc) = read_meta(&mem, meta) else {
            continue;
        };
        if out.iter().any(|s| s.name == sc.0) {
            continue;
        }
        let nr = symbols
            .lookup(&format!("__x64_sys_{}", sc.0))
            .and_then(|f| table.iter().position(|&e| e == f.addr))
            .map(|n| n as u32);
        out.push(Syscall {
            name: sc.0,
            nr,
            params: sc.1,
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

type Meta = (String, Vec<SyscallParam>);

fn read_meta(mem: &Mem<'_>, meta: u64) -> Option<Meta> {
    let raw = mem.bytes(meta, META_LEN)?;
    let word = |o: usize| u64::from_le_bytes(raw[o..o + 8].try_into().expect("8 bytes"));
    let name = mem.str(word(0))?;
    let name = name.strip_prefix("sys_")?.to_string();
    let nb = i32::from_le_bytes(raw[12..16].try_into().expect("4 bytes"));
    if !(0..=6).contains(&nb) {
        return None;
    }
    let mut params = Vec::new();
    for i in 0..nb as u64 {
        let ty = mem.str(mem.u64(word(16).checked_add(8 * i)?)?)?;
        let name = mem.str(mem.u64(word(24).checked_add(8 * i)?)?)?;
        params.push(SyscallParam { ty, name });
    }
    Some((name, params))
}

/// The entries of the x86-64 `sys_call_table` (function addresses), up to the next symbol.
fn syscall_table(mem: &Mem<'_>, symbols: &KernelSymbols) -> Vec<u64> {
    let Some(t) = symbols.lookup("sys_call_table") else {
        return Vec::new();
    };
    let end = symbols
        .iter()
        .map(|s| s.addr)
        .find(|&a| a > t.addr)
        .unwrap_or(u64::MAX);
    let n = (end.saturating_sub(t.addr) / 8).min(MAX_SYSCALLS as u64);
    (0..n).map_while(|i| mem.u64(t.addr + 8 * i)).collect()
}

/// Link-time addresses over the sections read.
struct Mem<'a>(&'a [&'a Section]);

impl Mem<'_> {
    fn bytes(&self, addr: u64, len: usize) -> Option<&[u8]> {
        self.0.iter().find_map(|s| {
            let off = usize::try_from(addr.checked_sub(s.addr)?).ok()?;
            s.data.get(off..off.checked_add(len)?)
        })
    }
    fn u64(&self, addr: u64) -> Option<u64> {
        Some(u64::from_le_bytes(self.bytes(addr, 8)?.try_into().ok()?))
    }
    /// A NUL-terminated printable string of at most [`MAX_STR`] bytes.
    fn str(&self, addr: u64) -> Option<String> {
        let s = self.0.iter().find_map(|s| {
            let off = usize::try_from(addr.checked_sub(s.addr)?).ok()?;
            let rest = s.data.get(off..)?;
            Some(&rest[..rest.len().min(MAX_STR + 1)])
        })?;
        let end = s.iter().position(|&b| b == 0)?;
        let s = std::str::from_utf8(&s[..end]).ok()?;
        (!s.is_empty() && s.chars().all(|c| c.is_ascii_graphic() || c == ' '))
            .then(|| s.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sym(name: &str, addr: u64) -> crate::Symbol {
        crate::Symbol {
            name: name.into(),
            addr,
            kind: 'd',
        }
    }

    /// A hand-built image: one good syscall, one with a wild pointer, one with too many args.
    #[test]
    fn metadata_and_numbers() {
        let base = 0x1000u64;
        let mut d = vec![0u8; 0x400];
        let put = |d: &mut Vec<u8>, at: u64, v: u64| {
            let o = (at - base) as usize;
            d[o..o + 8].copy_from_slice(&v.to_le_bytes());
        };
        let put_str = |d: &mut Vec<u8>, at: u64, s: &str| {
            let o = (at - base) as usize;
            d[o..o + s.len()].copy_from_slice(s.as_bytes());
        };
        // Strings.
        put_str(&mut d, 0x1200, "sys_close");
        put_str(&mut d, 0x1210, "unsigned int");
        put_str(&mut d, 0x1220, "fd");
        put_str(&mut d, 0x1230, "sys_bad");
        // Pointer arrays.
        put(&mut d, 0x1300, 0x1210);
        put(&mut d, 0x1308, 0x1220);
        // Metadata: close (1 arg), bad (types pointer wild), huge nb_args.
        put(&mut d, 0x1100, 0x1200);
        d[0x10c..0x110].copy_from_slice(&1i32.to_le_bytes());
        put(&mut d, 0x1110, 0x1300);
        put(&mut d, 0x1118, 0x1308);
        put(&mut d, 0x1140, 0x1230);
        d[0x14c..0x150].copy_from_slice(&1i32.to_le_bytes());
        put(&mut d, 0x1150, 0xdead_0000);
        put(&mut d, 0x1158, 0x1308);
        put(&mut d, 0x1180, 0x1200);
        d[0x18c..0x190].copy_from_slice(&99i32.to_le_bytes());
        // The list, and the table: close is number 3.
        put(&mut d, 0x1000, 0x1100);
        put(&mut d, 0x1008, 0x1140);
        put(&mut d, 0x1010, 0x1180);
        put(&mut d, 0x1018, 0xffff_ffff_ffff_0000);
        for i in 0..4 {
            put(&mut d, 0x1380 + 8 * i, if i == 3 { 0x9000 } else { 0x9100 });
        }
        let symbols = KernelSymbols::from_symbols(vec![
            sym("__start_syscalls_metadata", 0x1000),
            sym("__stop_syscalls_metadata", 0x1020),
            sym("sys_call_table", 0x1380),
            sym("after_table", 0x13a0),
            crate::Symbol {
                name: "__x64_sys_close".into(),
                addr: 0x9000,
                kind: 't',
            },
        ]);
        let sec = Section {
            addr: base,
            data: d,
        };
        let got = parse_syscalls(&[&sec], &symbols);
        assert_eq!(
            got,
            vec![Syscall {
                name: "close".into(),
                nr: Some(3),
                params: vec![SyscallParam {
                    ty: "unsigned int".into(),
                    name: "fd".into()
                }],
            }]
        );
        // No metadata symbols: nothing, no error.
        assert!(parse_syscalls(&[&sec], &KernelSymbols::from_symbols(vec![])).is_empty());
    }
}
