//! A user-space ELF as uprobes need it: its function symbols, and where
//! each virtual address of its code is in the file. Read from a host copy
//! of the guest's file; only the file's bytes are read.
//!
//! An executable linked at a fixed address (`ET_EXEC`, e.g. `cc -static`)
//! runs its code at the addresses its symbols give; a position-independent
//! file (`ET_DYN`: PIE executables, shared libraries) is placed per process
//! at load time ([`UserElf::relocatable`]), so a uprobe in one is found
//! through its file offset in each process's mappings.

use object::elf;
use object::read::elf::{ElfFile64, FileHeader, ProgramHeader};
use object::{Endianness, Object, ObjectSymbol, SymbolKind};
use std::path::{Path, PathBuf};

/// Largest ELF read (a guest's binaries are far smaller; this bounds what
/// a wrong path makes vmprobe read into memory).
pub const MAX_USER_ELF: u64 = 1 << 30;

#[derive(Debug, thiserror::Error)]
pub enum UserElfError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: larger than {MAX_USER_ELF} bytes")]
    TooLarge { path: PathBuf },
    #[error("{path}: not a 64-bit x86 ELF file: {why}")]
    NotElf { path: PathBuf, why: String },
}

/// A function symbol of a user ELF.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserSymbol {
    pub name: String,
    pub addr: u64,
    pub size: u64,
}

/// A loadable segment: `memsz` bytes at `vaddr`, of which `filesz` come
/// from `offset` in the file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Segment {
    vaddr: u64,
    memsz: u64,
    offset: u64,
    filesz: u64,
    exec: bool,
}

/// What a uprobe reads of its ELF.
#[derive(Clone, Debug)]
pub struct UserElf {
    path: PathBuf,
    /// Function symbols, sorted by address, one per address.
    functions: Vec<UserSymbol>,
    segments: Vec<Segment>,
    bytes: Vec<u8>,
    /// `ET_DYN`: placed per process at load time.
    relocatable: bool,
}

impl UserElf {
    /// Reads the ELF at `path` (a host copy of the guest's file).
    pub fn load(path: &Path) -> Result<UserElf, UserElfError> {
        let io = |source| UserElfError::Io {
            path: path.to_path_buf(),
            source,
        };
        let len = std::fs::metadata(path).map_err(io)?.len();
        if len > MAX_USER_ELF {
            return Err(UserElfError::TooLarge {
                path: path.to_path_buf(),
            });
        }
        let bytes = std::fs::read(path).map_err(io)?;
        UserElf::parse(path, bytes)
    }

    /// [`UserElf::load`] of bytes already read; `path` names them in errors.
    pub fn parse(path: &Path, bytes: Vec<u8>) -> Result<UserElf, UserElfError> {
        let not_elf = |why: String| UserElfError::NotElf {
            path: path.to_path_buf(),
            why,
        };
        let file = ElfFile64::<Endianness>::parse(&*bytes).map_err(|e| not_elf(e.to_string()))?;
        let endian = file.endian();
        let header = file.elf_header();
        if header.e_machine(endian) != elf::EM_X86_64 {
            return Err(not_elf(format!("machine {}", header.e_machine(endian))));
        }
        let relocatable = match header.e_type(endian) {
            elf::ET_EXEC => false,
            elf::ET_DYN => true,
            t => return Err(not_elf(format!("ELF type {t}, not an executable"))),
        };
        let segments = header
            .program_headers(endian, &*bytes)
            .map_err(|e| not_elf(e.to_string()))?
            .iter()
            .filter(|p| p.p_type(endian) == elf::PT_LOAD)
            .map(|p| Segment {
                vaddr: p.p_vaddr(endian),
                memsz: p.p_memsz(endian),
                offset: p.p_offset(endian),
                filesz: p.p_filesz(endian),
                exec: p.p_flags(endian) & elf::PF_X != 0,
            })
            .collect();
        let mut functions: Vec<UserSymbol> = file
            .symbols()
            .chain(file.dynamic_symbols())
            .filter(|s| s.kind() == SymbolKind::Text && s.is_definition() && s.address() != 0)
            .filter_map(|s| {
                Some(UserSymbol {
                    name: s.name().ok()?.to_string(),
                    addr: s.address(),
                    size: s.size(),
                })
            })
            .filter(|s| !s.name.is_empty())
            .collect();
        functions.sort_by(|a, b| a.addr.cmp(&b.addr).then(a.name.cmp(&b.name)));
        functions.dedup_by(|a, b| a.name == b.name && a.addr == b.addr);
        drop(file);
        Ok(UserElf {
            path: path.to_path_buf(),
            functions,
            segments,
            bytes,
            relocatable,
        })
    }

    /// A PIE executable or a shared library (`ET_DYN`): each process maps
    /// it where its loader chooses, so its code is at a run-time address
    /// of each process's own, not at its symbols' addresses.
    pub fn relocatable(&self) -> bool {
        self.relocatable
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Function symbols, by address.
    pub fn functions(&self) -> &[UserSymbol] {
        &self.functions
    }

    /// The function named `name`.
    pub fn lookup(&self, name: &str) -> Option<&UserSymbol> {
        self.functions.iter().find(|s| s.name == name)
    }

    /// The function covering `addr`, and the offset into it.
    pub fn symbolize(&self, addr: u64) -> Option<(&UserSymbol, u64)> {
        let i = self.functions.partition_point(|s| s.addr <= addr);
        let s = self.functions[..i].last()?;
        let off = addr - s.addr;
        (off < s.size.max(1)).then_some((s, off))
    }

    /// The file offset of the code at virtual address `addr`, if an
    /// executable segment holds it (from the file, not zero-filled).
    pub fn file_offset(&self, addr: u64) -> Option<u64> {
        self.segments
            .iter()
            .filter(|s| s.exec)
            .find(|s| addr >= s.vaddr && addr - s.vaddr < s.filesz.min(s.memsz))
            .map(|s| s.offset + (addr - s.vaddr))
    }

    /// The executable segments' file bytes: (file offset, length, virtual
    /// address), for placing a file offset of a relocatable file's code.
    pub fn exec_segments(&self) -> Vec<(u64, u64, u64)> {
        self.segments
            .iter()
            .filter(|s| s.exec)
            .map(|s| (s.offset, s.filesz.min(s.memsz), s.vaddr))
            .collect()
    }

    /// The file's USDT probes (`.note.stapsdt`), in note order.
    pub fn sdt_probes(&self) -> Result<Vec<crate::sdt::SdtProbe>, crate::sdt::SdtError> {
        crate::sdt::sdt_probes(&self.bytes)
    }

    /// `len` bytes of the file's code at virtual address `addr` (fewer at
    /// the end of its segment).
    pub fn code(&self, addr: u64, len: usize) -> Option<&[u8]> {
        let start = usize::try_from(self.file_offset(addr)?).ok()?;
        let seg = self
            .segments
            .iter()
            .find(|s| s.exec && addr >= s.vaddr && addr - s.vaddr < s.filesz)?;
        let seg_end = usize::try_from(seg.offset + seg.filesz).ok()?;
        let end = start.saturating_add(len).min(seg_end).min(self.bytes.len());
        self.bytes.get(start..end)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use object::write::{Object as WObject, StandardSection, Symbol as WSym, SymbolSection};
    use object::{Architecture, BinaryFormat, SymbolFlags, SymbolScope};

    #[test]
    fn relocatable_and_garbage_files_are_typed_errors() {
        let p = Path::new("x");
        let e = UserElf::parse(p, b"not an elf".to_vec()).unwrap_err();
        assert!(matches!(e, UserElfError::NotElf { .. }), "{e}");
        // An object file (ET_REL) is no executable.
        let mut obj = WObject::new(BinaryFormat::Elf, Architecture::X86_64, Endianness::Little);
        let text = obj.section_id(StandardSection::Text);
        let off = obj.append_section_data(text, &[0xc3], 1);
        obj.add_symbol(WSym {
            name: b"f".to_vec(),
            value: off,
            size: 1,
            kind: SymbolKind::Text,
            scope: SymbolScope::Linkage,
            weak: false,
            section: SymbolSection::Section(text),
            flags: SymbolFlags::None,
        });
        let e = UserElf::parse(p, obj.write().unwrap()).unwrap_err();
        assert!(e.to_string().contains("not an executable"), "{e}");
        // Truncations of a valid header never panic.
        let bytes = std::fs::read("/proc/self/exe").unwrap();
        for n in [0, 4, 16, 63, 64, 200, 4096] {
            let _ = UserElf::parse(p, bytes[..n.min(bytes.len())].to_vec());
        }
    }

    #[test]
    fn a_static_executable_places_its_functions() {
        // cc -static gives ET_EXEC where a C compiler is installed (the
        // default guest's programs need one too); skip quietly without.
        let dir = tempfile_dir();
        let src = dir.join("t.c");
        let bin = dir.join("t");
        std::fs::write(
            &src,
            "__attribute__((noipa)) int twice(int x) { return 2 * x; }\n\
             int main(int c, char **v) { (void)v; return twice(c) == 2 ? 0 : 1; }\n",
        )
        .unwrap();
        let Ok(status) = std::process::Command::new("cc")
            .args(["-static", "-O2", "-o"])
            .arg(&bin)
            .arg(&src)
            .status()
        else {
            return;
        };
        assert!(status.success());
        let elf = UserElf::load(&bin).unwrap();
        let twice = elf.lookup("twice").expect("twice").clone();
        assert!(twice.size > 0);
        assert_eq!(elf.symbolize(twice.addr + 1).unwrap().0.name, "twice");
        let off = elf.file_offset(twice.addr).expect("in a segment");
        let bytes = std::fs::read(&bin).unwrap();
        assert_eq!(
            elf.code(twice.addr, 4).unwrap(),
            &bytes[off as usize..off as usize + 4]
        );
        assert!(elf.file_offset(0x10).is_none());
        assert!(!elf.relocatable());
        // A PIE is placed per process: its functions are at file offsets.
        let pie = dir.join("pie");
        let ok = std::process::Command::new("cc")
            .args(["-fPIE", "-pie", "-O2", "-o"])
            .arg(&pie)
            .arg(&src)
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            let elf = UserElf::load(&pie).unwrap();
            assert!(elf.relocatable());
            let twice = elf.lookup("twice").expect("twice");
            let off = elf.file_offset(twice.addr).expect("in a segment") as usize;
            let bytes = std::fs::read(&pie).unwrap();
            assert_eq!(elf.code(twice.addr, 4).unwrap(), &bytes[off..off + 4]);
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn tempfile_dir() -> PathBuf {
        let d = std::env::temp_dir().join(format!("user-elf-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }
}
