//! Uprobes placed before anything boots: each `uprobe:PATH:...` names a
//! guest file, read from a host copy of it (`--guest-root DIR`, else the
//! default guest's own programs), whose symbols give the address.

use kernel_image::UserElf;
use probe_lang::{ProbeSpec, UprobeTarget, UserAddr};
use probe_plan::UserSymbols;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Why uprobes are refused under KVM. QEMU's gdbstub under KVM inserts a
/// breakpoint by writing `int3` into guest memory through the stopped
/// vCPU's page tables: a user page is mostly not mapped in whatever
/// process that vCPU runs (the insertion fails), and where it is, it is
/// the file's page-cache page, shared with every process mapping the file
/// and with read() of it, and dropped with the page on reclaim.
pub const KVM_REFUSAL: &str = "uprobes are served only under TCG (--accel tcg): under KVM, QEMU's gdbstub writes int3 into the page through the current process's page tables, which fails where that process does not map the page and otherwise changes the file's shared page-cache copy";

/// Whether the program has a uprobe or uretprobe.
pub fn has_uprobes(program: &probe_lang::Program) -> bool {
    program
        .probes()
        .iter()
        .any(|p| matches!(p, ProbeSpec::Uprobe { .. }))
}

/// Where the guest's files are on the host.
pub enum GuestFiles {
    /// The guest's root filesystem, as a directory.
    Root(PathBuf),
    /// The default guest's programs: (guest path, host copy).
    Default(Vec<(String, PathBuf)>),
}

impl GuestFiles {
    pub fn new(root: Option<&Path>) -> GuestFiles {
        match root {
            Some(r) => GuestFiles::Root(r.to_path_buf()),
            None => GuestFiles::Default(qemu_guest::default_guest_files(&qemu_guest::cache_dir())),
        }
    }

    /// The host copy of guest file `path`, or why there is none.
    pub fn host_copy(&self, path: &str) -> Result<PathBuf, String> {
        match self {
            GuestFiles::Root(root) => {
                let host = root.join(path.trim_start_matches('/'));
                if host.is_file() {
                    Ok(host)
                } else {
                    Err(format!(
                        "{path}: no such file under --guest-root {} ({})",
                        root.display(),
                        host.display()
                    ))
                }
            }
            GuestFiles::Default(files) => files
                .iter()
                .find(|(g, _)| g == path)
                .map(|(_, h)| h.clone())
                .ok_or_else(|| {
                    let known: Vec<&str> = files.iter().map(|(g, _)| g.as_str()).collect();
                    format!(
                        "{path}: vmprobe has no host copy of this guest file; give --guest-root DIR (the guest's files on the host). The default guest's are: {}",
                        if known.is_empty() {
                            "none (build it: vmprobe guest build)".to_string()
                        } else {
                            known.join(", ")
                        }
                    )
                }),
        }
    }
}

/// The symbols of the files the last bound program's uprobes name, for
/// `ustack` frames; set by [`bind`], handed to each guest's session when
/// it is armed. (One program per vmprobe process.)
static SYMBOLS: std::sync::Mutex<Option<Arc<UserSymbols>>> = std::sync::Mutex::new(None);

/// What [`bind`] read of the program's user files, if it had uprobes.
pub fn symbols() -> Option<Arc<UserSymbols>> {
    SYMBOLS.lock().ok()?.clone()
}

/// Places every uprobe of `program` in its ELF; the errors are the
/// program's, at each attach point.
pub fn bind(
    program: &mut probe_lang::Program,
    files: &GuestFiles,
) -> Result<(), probe_lang::Diagnostics> {
    if !has_uprobes(program) {
        return Ok(());
    }
    let mut elves: HashMap<String, Result<UserElf, String>> = HashMap::new();
    program.bind_uprobes(|path, target| {
        let elf = elves
            .entry(path.to_string())
            .or_insert_with(|| {
                let host = files.host_copy(path)?;
                UserElf::load(&host).map_err(|e| e.to_string())
            })
            .as_ref()
            .map_err(Clone::clone)?;
        place(elf, path, target)
    })?;
    let mut symbols = UserSymbols::default();
    for (path, elf) in &elves {
        if let Ok(elf) = elf {
            let funcs = elf
                .functions()
                .iter()
                .map(|f| (f.addr, f.size, f.name.clone()))
                .collect();
            symbols.add(path, funcs);
        }
    }
    if let Ok(mut s) = SYMBOLS.lock() {
        *s = Some(Arc::new(symbols));
    }
    Ok(())
}

/// The address of `target` in `elf` (the guest's `path`).
pub fn place(elf: &UserElf, path: &str, target: &UprobeTarget) -> Result<UserAddr, String> {
    let host = elf.path().display();
    let (vaddr, func) = match target {
        UprobeTarget::Symbol(name) => {
            let sym = elf.lookup(name).ok_or_else(|| {
                if elf.functions().is_empty() {
                    format!(
                        "{path} ({host}) has no symbol table (stripped): name no function, give its address (uprobe:{path}:0xADDR)"
                    )
                } else {
                    format!(
                        "{path} ({host}) has no function '{name}' (`vmprobe list 'uprobe:{path}:*'` lists them)"
                    )
                }
            })?;
            (sym.addr, sym.name.clone())
        }
        UprobeTarget::Address(a) => {
            let func = match elf.symbolize(*a) {
                Some((s, 0)) => s.name.clone(),
                Some((s, off)) => {
                    check_boundary(elf, s.addr, off, path)?;
                    format!("{}+{off}", s.name)
                }
                None => format!("{a:#x}"),
            };
            (*a, func)
        }
    };
    let file_offset = elf.file_offset(vaddr).ok_or_else(|| {
        format!("{path} ({host}): {vaddr:#x} is not in an executable segment of the file")
    })?;
    Ok(UserAddr {
        vaddr,
        file_offset,
        func,
    })
}

/// `FUNC+OFF` (an address inside a function) must start an instruction, as
/// the file's code decodes from the function's start.
fn check_boundary(elf: &UserElf, start: u64, off: u64, path: &str) -> Result<(), String> {
    let site = probe_plan::ProbeSite {
        addr: start + off,
        func: "".into(),
        handlers: vec![(
            probe_lang::BlockId(0),
            format!("uprobe:{path}:{:#x}", start + off).into(),
        )],
        ret_handlers: Vec::new(),
        offset: off,
        skippable: None,
        entry_args: false,
        user: Vec::new(),
        event: None,
    };
    probe_engine::boundary::check_instruction_boundary(&site, |addr, len| {
        elf.code(addr, len)
            .map(<[u8]>::to_vec)
            .ok_or_else(|| "not in the file".to_string())
    })
    .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guest_files_are_found_under_a_root_or_named_with_what_is_known() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("bin")).unwrap();
        std::fs::write(dir.path().join("bin/prog"), b"x").unwrap();
        let root = GuestFiles::Root(dir.path().to_path_buf());
        assert_eq!(
            root.host_copy("/bin/prog").unwrap(),
            dir.path().join("bin/prog")
        );
        let e = root.host_copy("/bin/other").unwrap_err();
        assert!(e.contains("no such file under --guest-root"), "{e}");
        let default = GuestFiles::Default(vec![("/bin/a".into(), "/nonexistent/a".into())]);
        let e = default.host_copy("/bin/b").unwrap_err();
        assert!(e.contains("--guest-root") && e.contains("/bin/a"), "{e}");
    }
}
