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
    /// The default guest: its own programs (guest path, host copy), and
    /// the host copy of its root (the glibc userland, /etc, the ld cache).
    Default {
        programs: Vec<(String, PathBuf)>,
        root: Option<PathBuf>,
    },
}

/// Symlinks followed at most resolving one guest path (the kernel's
/// `MAXSYMLINKS`).
const MAX_LINKS: usize = 40;

impl GuestFiles {
    pub fn new(root: Option<&Path>) -> GuestFiles {
        match root {
            Some(r) => GuestFiles::Root(r.to_path_buf()),
            None => {
                let cache = qemu_guest::cache_dir();
                GuestFiles::Default {
                    programs: qemu_guest::default_guest_files(&cache),
                    root: qemu_guest::default_guest_root(&cache),
                }
            }
        }
    }

    /// The host directory standing for the guest's `/`, if any.
    fn root(&self) -> Option<&Path> {
        match self {
            GuestFiles::Root(r) => Some(r),
            GuestFiles::Default { root, .. } => root.as_deref(),
        }
    }

    /// The guest's users (uid, name) from its `/etc/passwd` on the host,
    /// in file order (`username` takes the first of a uid, as bpftrace
    /// does); `None` without a root or a passwd file.
    pub fn users(&self) -> Option<Vec<(u64, String)>> {
        // A passwd file is small; a larger one is not read whole.
        const MAX_PASSWD: u64 = 16 << 20;
        let path = self.root()?.join("etc/passwd");
        let file = std::fs::File::open(path).ok()?;
        let mut text = String::new();
        std::io::Read::read_to_string(&mut std::io::Read::take(file, MAX_PASSWD), &mut text)
            .ok()?;
        Some(parse_passwd(&text))
    }

    /// The guest's ld cache on the host (`DIR/etc/ld.so.cache`).
    pub fn ld_cache(&self) -> Result<PathBuf, String> {
        match self.root() {
            Some(r) => Ok(r.join("etc/ld.so.cache")),
            None => Err(
                "the default guest has no ld cache on this host (build it: vmprobe guest build), or give --guest-root DIR"
                    .into(),
            ),
        }
    }

    /// bpftrace 0.17's library name `name` (`libc`): a name starting with
    /// `lib` is looked up in the guest's ld cache without that prefix, as
    /// bcc's `bcc_procutils_which_so("c")` does (bpftrace's
    /// `AttachPointParser::uprobe_parser`); bpftrace takes any other name
    /// as a relative path, which has no meaning in the guest.
    pub fn library(&self, name: &str) -> Result<String, String> {
        let Some(short) = name.strip_prefix("lib").filter(|s| !s.is_empty()) else {
            return Err(format!(
                "{name}: give the file's absolute path in the guest, or a library name starting with 'lib' (bpftrace's uprobe:libc:FUNC)"
            ));
        };
        let cache = self.ld_cache()?;
        let entries = kernel_image::ld_cache::read_ld_cache(&cache).map_err(|e| e.to_string())?;
        kernel_image::ld_cache::which_so(&entries, short)
            .map(str::to_string)
            .ok_or_else(|| {
                format!(
                    "{name}: no library {name}.so* in the guest's ld cache {}",
                    cache.display()
                )
            })
    }

    /// Guest path `path` with its symlinks resolved inside the guest's
    /// root, as the guest kernel names the file a process maps (a
    /// uprobe's file is the one the path leads to, as bpftrace's is).
    pub fn canonical(&self, path: &str) -> String {
        if let GuestFiles::Default { programs, .. } = self
            && programs.iter().any(|(g, _)| g == path)
        {
            return path.to_string();
        }
        match self.root() {
            Some(root) => resolve_in(root, path).unwrap_or_else(|| path.to_string()),
            None => path.to_string(),
        }
    }

    /// The host copy of guest file `path`, or why there is none.
    pub fn host_copy(&self, path: &str) -> Result<PathBuf, String> {
        let under = |root: &Path| {
            let host = root.join(self.canonical(path).trim_start_matches('/'));
            host.is_file().then_some(host)
        };
        match self {
            GuestFiles::Root(root) => under(root).ok_or_else(|| {
                format!(
                    "{path}: no such file under --guest-root {} ({})",
                    root.display(),
                    root.join(path.trim_start_matches('/')).display()
                )
            }),
            GuestFiles::Default { programs, root } => programs
                .iter()
                .find(|(g, _)| g == path)
                .map(|(_, h)| h.clone())
                .or_else(|| root.as_deref().and_then(under))
                .ok_or_else(|| {
                    let known: Vec<&str> = programs.iter().map(|(g, _)| g.as_str()).collect();
                    format!(
                        "{path}: vmprobe has no host copy of this guest file; give --guest-root DIR (the guest's files on the host). The default guest's are: {}",
                        if known.is_empty() {
                            "none (build it: vmprobe guest build)".to_string()
                        } else {
                            format!(
                                "{}, and its glibc userland (bash, getent, the libraries of /lib/x86_64-linux-gnu)",
                                known.join(", ")
                            )
                        }
                    )
                }),
        }
    }
}

/// `path` resolved component by component below `root` (the guest's `/`),
/// following symlinks there (absolute ones from `root`); `None` past
/// [`MAX_LINKS`] links.
fn resolve_in(root: &Path, path: &str) -> Option<String> {
    let mut todo: Vec<String> = path
        .split('/')
        .filter(|c| !c.is_empty())
        .rev()
        .map(str::to_string)
        .collect();
    let mut done: Vec<String> = Vec::new();
    let mut links = 0;
    while let Some(c) = todo.pop() {
        match c.as_str() {
            "." => continue,
            ".." => {
                done.pop();
                continue;
            }
            _ => {}
        }
        let host = root.join(done.join("/")).join(&c);
        match std::fs::read_link(&host) {
            Ok(target) => {
                links += 1;
                if links > MAX_LINKS {
                    return None;
                }
                let target = target.to_string_lossy().into_owned();
                if target.starts_with('/') {
                    done.clear();
                }
                todo.extend(
                    target
                        .split('/')
                        .filter(|c| !c.is_empty())
                        .rev()
                        .map(str::to_string),
                );
            }
            Err(_) => done.push(c),
        }
    }
    Some(format!("/{}", done.join("/")))
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
    let mut elves: HashMap<String, Result<(String, UserElf), String>> = HashMap::new();
    program.bind_uprobes(|path, target| {
        let (file, elf) = elves
            .entry(path.to_string())
            .or_insert_with(|| {
                // bpftrace's library names are the ld cache's; then the
                // path the guest kernel names the file by.
                let guest = if path.starts_with('/') {
                    path.to_string()
                } else {
                    files.library(path)?
                };
                let file = files.canonical(&guest);
                let host = files.host_copy(&file)?;
                Ok((file, UserElf::load(&host).map_err(|e| e.to_string())?))
            })
            .as_ref()
            .map_err(Clone::clone)?;
        if let UprobeTarget::Usdt { provider, name } = target {
            return usdt_locations(elf, file, provider.as_deref(), name);
        }
        let mut at = place(elf, file, target)?;
        at.file = file.clone();
        Ok(vec![at])
    })?;
    let mut symbols = UserSymbols::default();
    for (file, elf) in elves.values().flatten() {
        if !symbols.knows(file) {
            let funcs = elf
                .functions()
                .iter()
                .map(|f| (f.addr, f.size, f.name.clone()))
                .collect();
            symbols.add(file, funcs);
            if elf.relocatable() {
                symbols.set_relocatable(file, elf.exec_segments());
            }
        }
    }
    if let Ok(mut s) = SYMBOLS.lock() {
        *s = Some(Arc::new(symbols));
    }
    Ok(())
}

/// Each location of usdt probe `provider:name` (any provider for `None`)
/// in `elf` (the guest's `path`), as a uprobe at its `nop`. A probe with a
/// semaphore is refused: it fires only while its counter in the process
/// is non-zero, and raising that counter (as bpftrace does) would be a
/// write to guest memory.
fn usdt_locations(
    elf: &UserElf,
    path: &str,
    provider: Option<&str>,
    name: &str,
) -> Result<Vec<UserAddr>, String> {
    let host = elf.path().display();
    let probes = elf
        .sdt_probes()
        .map_err(|e| format!("{path} ({host}): {e}"))?;
    let spelled = match provider {
        Some(p) => format!("usdt:{path}:{p}:{name}"),
        None => format!("usdt:{path}:{name}"),
    };
    let found: Vec<_> = probes
        .iter()
        .filter(|p| p.name == name && provider.is_none_or(|want| p.provider == want))
        .collect();
    if found.is_empty() {
        return Err(format!(
            "{path} ({host}) has no usdt probe {}{name} (`vmprobe list 'usdt:{path}:*'` lists {})",
            provider.map(|p| format!("{p}:")).unwrap_or_default(),
            if probes.is_empty() {
                "none: the file has no .note.stapsdt"
            } else {
                "them"
            }
        ));
    }
    if let Some(p) = found.iter().find(|p| p.semaphore != 0) {
        return Err(format!(
            "{spelled}: the probe has a semaphore (at {:#x}): it fires only while a tracer raises that counter in the process, a write to guest memory that vmprobe never makes",
            p.semaphore
        ));
    }
    let providers: std::collections::BTreeSet<&str> =
        found.iter().map(|p| p.provider.as_str()).collect();
    if providers.len() > 1 {
        return Err(format!(
            "{spelled}: several providers have a probe '{name}' ({}); name one (usdt:{path}:PROVIDER:{name})",
            providers.into_iter().collect::<Vec<_>>().join(", ")
        ));
    }
    found
        .iter()
        .map(|p| {
            let mut at = place(elf, path, &UprobeTarget::Address(p.pc))?;
            at.usdt_args = Some(p.args.clone());
            Ok(at)
        })
        .collect()
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
        UprobeTarget::SymbolOffset(name, off) => {
            // As FUNC alone, found or refused with the same words.
            place(elf, path, &UprobeTarget::Symbol(name.clone()))?;
            let sym = elf.lookup(name).expect("placed above");
            // Inside FUNC, as bpftrace requires (its size from the ELF).
            if *off >= sym.size {
                return Err(format!(
                    "{path}: offset {off} is past the end of '{name}' ({} bytes)",
                    sym.size
                ));
            }
            check_boundary(elf, sym.addr, *off, path)?;
            (sym.addr + off, format!("{name}+{off}"))
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
        UprobeTarget::Usdt { .. } => {
            return Err(format!("{path}: a usdt probe is placed from its notes"));
        }
    };
    let file_offset = elf.file_offset(vaddr).ok_or_else(|| {
        format!("{path} ({host}): {vaddr:#x} is not in an executable segment of the file")
    })?;
    Ok(UserAddr {
        vaddr,
        file_offset,
        func,
        relocatable: elf.relocatable(),
        file: path.to_string(),
        usdt_args: None,
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
        modules: Vec::new(),
    };
    probe_engine::boundary::check_instruction_boundary(&site, |addr, len| {
        elf.code(addr, len)
            .map(<[u8]>::to_vec)
            .ok_or_else(|| "not in the file".to_string())
    })
    .map_err(|e| e.to_string())
}

/// (uid, name) of each well-formed `name:password:uid:...` line of a
/// passwd file.
fn parse_passwd(text: &str) -> Vec<(u64, String)> {
    text.lines()
        .filter_map(|l| {
            let mut f = l.split(':');
            let name = f.next()?;
            let uid = f.nth(1)?.parse().ok()?;
            (!name.is_empty()).then(|| (uid, name.to_string()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwd_lines_give_uids_and_names_and_others_are_skipped() {
        let text = "root:x:0:0:root:/root:/bin/sh\n# comment\nbad\nnobody:x:65534:65534::/:/bin/false\nx:x:notanumber:0::/:\n";
        assert_eq!(
            parse_passwd(text),
            vec![(0, "root".to_string()), (65534, "nobody".to_string())]
        );
    }

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
        let default = GuestFiles::Default {
            programs: vec![("/bin/a".into(), "/nonexistent/a".into())],
            root: None,
        };
        let e = default.host_copy("/bin/b").unwrap_err();
        assert!(e.contains("--guest-root") && e.contains("/bin/a"), "{e}");
        assert!(default.library("libc").unwrap_err().contains("ld cache"));
        assert!(
            default
                .library("c")
                .unwrap_err()
                .contains("starting with 'lib'")
        );
    }

    #[test]
    fn guest_paths_resolve_their_symlinks_inside_the_root_and_libraries_through_its_cache() {
        let dir = tempfile::tempdir().unwrap();
        let r = dir.path();
        for d in ["lib/x86_64-linux-gnu", "lib64", "usr", "etc"] {
            std::fs::create_dir_all(r.join(d)).unwrap();
        }
        std::fs::write(r.join("lib/x86_64-linux-gnu/libtinfo.so.6.4"), b"x").unwrap();
        let link = |target: &str, at: &str| std::os::unix::fs::symlink(target, r.join(at)).unwrap();
        link("libtinfo.so.6.4", "lib/x86_64-linux-gnu/libtinfo.so.6");
        link("/lib/x86_64-linux-gnu/libtinfo.so.6", "lib64/t");
        link("../lib", "usr/lib");
        link("/loop", "loop");
        let files = GuestFiles::Root(r.to_path_buf());
        assert_eq!(
            files.canonical("/lib64/t"),
            "/lib/x86_64-linux-gnu/libtinfo.so.6.4"
        );
        assert_eq!(
            files.canonical("/usr/lib/x86_64-linux-gnu/libtinfo.so.6"),
            "/lib/x86_64-linux-gnu/libtinfo.so.6.4"
        );
        assert_eq!(files.canonical("/loop/x"), "/loop/x");
        assert!(files.host_copy("/lib64/t").is_ok());
        let e = files.library("libtinfo").unwrap_err();
        assert!(e.contains("etc/ld.so.cache"), "{e}");
        let cache = kernel_image::ld_cache::write_ld_cache(&[(
            "libtinfo.so.6".into(),
            "/lib/x86_64-linux-gnu/libtinfo.so.6".into(),
        )]);
        std::fs::write(r.join("etc/ld.so.cache"), cache).unwrap();
        assert_eq!(
            files.library("libtinfo").unwrap(),
            "/lib/x86_64-linux-gnu/libtinfo.so.6"
        );
        let e = files.library("libssl").unwrap_err();
        assert!(
            e.starts_with("libssl: no library libssl.so* in the guest's ld cache "),
            "{e}"
        );
    }
}
