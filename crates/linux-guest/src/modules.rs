//! Loaded kernel modules and their functions, as the guest kernel itself
//! knows them: the `modules` list of `struct module`, each with its own
//! kallsyms (`core_kallsyms`: an `Elf64_Sym` table whose values the
//! module loader has already relocated, and its string table). Nothing is
//! read from a host copy of the module: its load address is the guest's.

use crate::layout::ModuleLayout;
use crate::*;

/// Modules walked at most (a 6.1 distribution kernel ships about 4,000).
const MAX_MODULES: usize = 8_192;
/// Symbols read of one module at most (xfs has about 5,000).
const MAX_SYMBOLS: u64 = 1 << 18;
/// A module's string table read at most.
const MAX_STRTAB: u64 = 16 << 20;
/// `KSYM_NAME_LEN` of 6.1: no kallsyms name is longer.
const KSYM_NAME_LEN: u64 = 512;
/// `sizeof(Elf64_Sym)`.
const SYM_SIZE: u64 = 24;
/// `MODULE_STATE_UNFORMED`: still being loaded, its symbols not set yet.
const STATE_UNFORMED: u32 = 3;
const STT_FUNC: u8 = 2;
/// Bytes asked of guest memory in one read.
const CHUNK: usize = 4096;

/// A module the guest has loaded: where its `struct module` is, and its name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoadedModule {
    pub addr: u64,
    pub name: String,
}

impl GuestKernel {
    fn module_layout(&self) -> Result<ModuleLayout, GuestError> {
        self.layout.module.ok_or(GuestError::Missing(
            "kernel module functions",
            ".BTF with struct module and a `modules` symbol",
        ))
    }

    /// Where the guest has a module's symbols ready and its code in place
    /// but has not run its init yet: `do_init_module(mod)`, whose first
    /// argument is the new module. A breakpoint there sees every module
    /// loaded from then on.
    pub fn module_load_hook(&self) -> Option<u64> {
        self.layout.module.and(self.kaddr("do_init_module"))
    }

    /// Where the guest frees a module (its removal, or a load that
    /// failed): `free_module(mod)`, while its code is still in place. The
    /// addresses armed in it must be disarmed there: its memory goes back
    /// to the allocator, and another module may be loaded at them.
    pub fn module_unload_hook(&self) -> Option<u64> {
        self.layout.module.and(self.kaddr("free_module"))
    }

    /// The modules on the guest's `modules` list, without those still
    /// being loaded (their symbols are not set; the load hook sees them).
    pub fn loaded_modules(
        &self,
        mem: &mut dyn GuestMemory,
    ) -> Result<Vec<LoadedModule>, GuestError> {
        let l = self.module_layout()?;
        let head = l.head.wrapping_add(self.slide);
        let mut out = Vec::new();
        let mut next = read_u64(mem, head)?;
        for _ in 0..MAX_MODULES {
            if next == head {
                return Ok(out);
            }
            if !is_kernel_address(next) {
                return Err(GuestError::Corrupt(format!(
                    "module list entry {next:#x} is not a kernel address"
                )));
            }
            let module = next.wrapping_sub(l.list);
            next = read_u64(mem, next)?;
            if read_u32(mem, module.wrapping_add(l.state))? == STATE_UNFORMED {
                continue;
            }
            out.push(LoadedModule {
                addr: module,
                name: self.module_name(mem, module)?,
            });
        }
        Err(GuestError::Corrupt(format!(
            "the module list does not end within {MAX_MODULES} entries"
        )))
    }

    /// The name of the module whose `struct module` is at `module`.
    pub fn module_name(
        &self,
        mem: &mut dyn GuestMemory,
        module: u64,
    ) -> Result<String, GuestError> {
        let l = self.module_layout()?;
        let mut name = vec![0u8; l.name_len as usize];
        mem.read(module.wrapping_add(l.name), &mut name)?;
        let end = name.iter().position(|&b| b == 0).unwrap_or(name.len());
        Ok(String::from_utf8_lossy(&name[..end]).into_owned())
    }

    /// The functions of the module at `module` that `wanted` takes, with
    /// their run-time addresses, from the module's own symbol table.
    pub fn module_functions(
        &self,
        mem: &mut dyn GuestMemory,
        module: u64,
        wanted: &dyn Fn(&str) -> bool,
    ) -> Result<Vec<(String, u64)>, GuestError> {
        let l = self.module_layout()?;
        let symtab = read_u64(mem, module.wrapping_add(l.symtab))?;
        let count = u64::from(read_u32(mem, module.wrapping_add(l.num_symtab))?);
        let strtab = read_u64(mem, module.wrapping_add(l.strtab))?;
        if count > MAX_SYMBOLS {
            return Err(GuestError::Corrupt(format!(
                "module at {module:#x} claims {count} symbols"
            )));
        }
        let table = read_bulk(mem, symtab, count * SYM_SIZE)?;
        let syms: Vec<(u64, u64)> = table
            .chunks_exact(SYM_SIZE as usize)
            .filter(|s| s[4] & 0xf == STT_FUNC)
            .map(|s| {
                let name = u64::from(u32::from_le_bytes(s[0..4].try_into().expect("4 bytes")));
                let value = u64::from_le_bytes(s[8..16].try_into().expect("8 bytes"));
                (name, value)
            })
            .collect();
        let Some(last) = syms.iter().map(|(n, _)| *n).max() else {
            return Ok(Vec::new());
        };
        // The loader packs the names one after another: none starts past
        // the last symbol's, and none is longer than kallsyms allows.
        let len = (last + KSYM_NAME_LEN).min(MAX_STRTAB);
        let strings = read_bulk_partial(mem, strtab, len)?;
        let mut out = Vec::new();
        for (name_off, value) in syms {
            let Some(rest) = strings.get(name_off as usize..) else {
                continue;
            };
            let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
            let Ok(name) = std::str::from_utf8(&rest[..end]) else {
                continue;
            };
            if wanted(name) {
                out.push((name.to_string(), value));
            }
        }
        Ok(out)
    }
}

/// `len` bytes at `addr`, read a page-sized piece at a time.
fn read_bulk(mem: &mut dyn GuestMemory, addr: u64, len: u64) -> Result<Vec<u8>, GuestError> {
    let mut out = vec![0u8; len as usize];
    for (i, piece) in out.chunks_mut(CHUNK).enumerate() {
        mem.read(addr.wrapping_add((i * CHUNK) as u64), piece)?;
    }
    Ok(out)
}

/// Up to `len` bytes at `addr`: the string table may end on the last
/// mapped page before `len`, so a piece that does not read ends it (the
/// first must read).
fn read_bulk_partial(
    mem: &mut dyn GuestMemory,
    addr: u64,
    len: u64,
) -> Result<Vec<u8>, GuestError> {
    let mut out = Vec::with_capacity(len as usize);
    let mut at = 0u64;
    while at < len {
        // Pieces end on page boundaries, so that one unmapped page ends
        // the table without losing the mapped bytes before it.
        let page_left = CHUNK as u64 - (addr.wrapping_add(at) % CHUNK as u64);
        let n = page_left.min(len - at) as usize;
        let mut piece = vec![0u8; n];
        match mem.read(addr.wrapping_add(at), &mut piece) {
            Ok(()) => out.extend_from_slice(&piece),
            Err(e) if at == 0 => return Err(e),
            Err(_) => break,
        }
        at += n as u64;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Guest memory as a few regions; reads outside them fail.
    struct Regions(Vec<(u64, Vec<u8>)>);

    impl GuestMemory for Regions {
        fn read(&mut self, addr: u64, buf: &mut [u8]) -> Result<(), GuestError> {
            for (start, bytes) in &self.0 {
                if addr >= *start && addr + buf.len() as u64 <= start + bytes.len() as u64 {
                    let at = (addr - start) as usize;
                    buf.copy_from_slice(&bytes[at..at + buf.len()]);
                    return Ok(());
                }
            }
            Err(GuestError::Memory {
                addr,
                reason: "unmapped".into(),
            })
        }
    }

    const LAYOUT: ModuleLayout = ModuleLayout {
        head: 0xffff_ffff_8100_0000,
        list: 8,
        name: 24,
        name_len: 56,
        state: 0,
        symtab: 0x100,
        num_symtab: 0x108,
        strtab: 0x110,
    };

    fn kernel() -> GuestKernel {
        let layout = KernelLayout {
            module: Some(LAYOUT),
            ..KernelLayout::default()
        };
        GuestKernel::from_layout(
            Arc::new(KernelSymbols::from_symbols(Vec::new())),
            0,
            layout,
            None,
        )
    }

    fn sym(name: u32, info: u8, value: u64) -> Vec<u8> {
        let mut s = vec![0u8; 24];
        s[0..4].copy_from_slice(&name.to_le_bytes());
        s[4] = info;
        s[8..16].copy_from_slice(&value.to_le_bytes());
        s
    }

    /// One module, "xfs", at 0xffff_c000_0000_0000 with two functions and
    /// a data symbol; its string table ends where a page ends.
    fn guest(next_of_module: u64) -> Regions {
        let module = 0xffff_c000_0000_0000u64;
        let symtab = 0xffff_c000_0001_0000u64;
        let strtab = 0xffff_c000_0002_0ff0u64;
        let mut m = vec![0u8; 0x200];
        m[8..16].copy_from_slice(&next_of_module.to_le_bytes());
        m[24..27].copy_from_slice(b"xfs");
        m[0x100..0x108].copy_from_slice(&symtab.to_le_bytes());
        m[0x108..0x10c].copy_from_slice(&3u32.to_le_bytes());
        m[0x110..0x118].copy_from_slice(&strtab.to_le_bytes());
        let table = [
            sym(1, 0x02, 0xffff_ffff_c000_1000),
            sym(5, 0x01, 0xffff_ffff_c000_9000),
            sym(9, 0x12, 0xffff_ffff_c000_2000),
        ]
        .concat();
        let strings = b"\0f_a\0dat\0f_b\0\0\0\0".to_vec();
        let head = (module + 8).to_le_bytes().to_vec();
        Regions(vec![
            (LAYOUT.head, head),
            (module, m),
            (symtab, table),
            (strtab, strings),
        ])
    }

    #[test]
    fn reads_the_list_and_a_modules_own_function_addresses() {
        let k = kernel();
        let mut mem = guest(LAYOUT.head);
        let mods = k.loaded_modules(&mut mem).unwrap();
        assert_eq!(
            mods,
            vec![LoadedModule {
                addr: 0xffff_c000_0000_0000,
                name: "xfs".into()
            }]
        );
        let funcs = k
            .module_functions(&mut mem, mods[0].addr, &|_| true)
            .unwrap();
        assert_eq!(
            funcs,
            vec![
                ("f_a".to_string(), 0xffff_ffff_c000_1000),
                ("f_b".to_string(), 0xffff_ffff_c000_2000)
            ]
        );
        let only_b = k
            .module_functions(&mut mem, mods[0].addr, &|n| n == "f_b")
            .unwrap();
        assert_eq!(only_b.len(), 1);
    }

    #[test]
    fn a_cyclic_or_wild_list_is_an_error_not_a_hang() {
        let k = kernel();
        // The module's `next` points back at itself: never the head.
        let mut cyclic = guest(0xffff_c000_0000_0008);
        assert!(matches!(
            k.loaded_modules(&mut cyclic),
            Err(GuestError::Corrupt(_))
        ));
        let mut wild = guest(0x1234);
        assert!(matches!(
            k.loaded_modules(&mut wild),
            Err(GuestError::Corrupt(_))
        ));
    }

    #[test]
    fn a_huge_symbol_count_is_refused() {
        let k = kernel();
        let mut mem = guest(LAYOUT.head);
        let module = 0xffff_c000_0000_0000u64;
        let m = &mut mem.0[1].1;
        m[0x108..0x10c].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            k.module_functions(&mut mem, module, &|_| true),
            Err(GuestError::Corrupt(_))
        ));
    }
}
