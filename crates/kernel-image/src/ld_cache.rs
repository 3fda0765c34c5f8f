//! glibc's `/etc/ld.so.cache` (the "glibc-ld.so.cache1.1" format that
//! ldconfig writes since glibc 2.32): read as bcc reads it for bpftrace's
//! library names (`uprobe:libc:f`), and written for a guest root without
//! running ldconfig (whose `-r` needs chroot, so root).

use object::Endianness;
use object::elf;
use object::read::elf::{Dyn, ElfFile64, FileHeader, ProgramHeader};
use std::path::{Path, PathBuf};

const MAGIC: &[u8; 20] = b"glibc-ld.so.cache1.1";
/// The old format's magic, which a cache may start with (both formats in
/// one file, the new one after the old entries).
const OLD_MAGIC: &[u8; 11] = b"ld.so-1.7.0";
const HEADER: usize = 48;
const ENTRY: usize = 24;
const OLD_ENTRY: usize = 12;
/// `FLAG_ELF_LIBC6 | FLAG_X8664_LIB64`: what ld.so accepts on x86-64.
pub const FLAGS_X86_64_LIBC6: i32 = 0x0303;
const FLAG_TYPE_MASK: i32 = 0x00ff;
const TYPE_ELF_LIBC6: i32 = 0x0003;
const FLAG_ABI_MASK: i32 = 0xff00;
/// The 64-bit ABIs bcc's `match_so_flags` takes for a 64-bit bpftrace.
const ABIS_64: [i32; 6] = [0x0100, 0x0200, 0x0300, 0x0400, 0x0500, 0x0a00];
/// Largest cache read (a system's is well under 1 MiB).
const MAX_CACHE: u64 = 64 << 20;

#[derive(Debug, thiserror::Error)]
pub enum LdCacheError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not a glibc ld.so.cache: {why}")]
    Format { path: PathBuf, why: String },
}

/// One library of the cache: its name (a soname), its path, its flags.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LdCacheEntry {
    pub name: String,
    pub path: String,
    pub flags: i32,
}

impl LdCacheEntry {
    /// bcc's `match_so_flags` for a 64-bit process: an ELF libc6 library
    /// of a 64-bit ABI.
    pub fn is_64bit_libc6(&self) -> bool {
        self.flags & FLAG_TYPE_MASK == TYPE_ELF_LIBC6
            && ABIS_64.contains(&(self.flags & FLAG_ABI_MASK))
    }
}

/// The entries of the cache at `path`, in the file's order.
pub fn read_ld_cache(path: &Path) -> Result<Vec<LdCacheEntry>, LdCacheError> {
    let io = |source| LdCacheError::Io {
        path: path.to_path_buf(),
        source,
    };
    let len = std::fs::metadata(path).map_err(io)?.len();
    if len > MAX_CACHE {
        return Err(LdCacheError::Format {
            path: path.to_path_buf(),
            why: format!("larger than {MAX_CACHE} bytes"),
        });
    }
    let bytes = std::fs::read(path).map_err(io)?;
    parse_ld_cache(&bytes).map_err(|why| LdCacheError::Format {
        path: path.to_path_buf(),
        why,
    })
}

/// [`read_ld_cache`] of bytes: the new format, alone or after the old one
/// (as bcc's `load_ld_cache` finds it).
pub fn parse_ld_cache(bytes: &[u8]) -> Result<Vec<LdCacheEntry>, String> {
    let u32_at = |b: &[u8], at: usize| -> Result<u32, String> {
        b.get(at..at + 4)
            .map(|s| u32::from_le_bytes(s.try_into().expect("4 bytes")))
            .ok_or_else(|| format!("truncated at byte {at}"))
    };
    let mut new = bytes;
    if bytes.starts_with(OLD_MAGIC) {
        // The old header: magic, then the entry count; entries of 12 bytes.
        let n = u32_at(bytes, OLD_MAGIC.len() + 1)? as usize;
        let end = (16usize.saturating_add(n.saturating_mul(OLD_ENTRY)) + 7) & !7;
        new = bytes
            .get(end..)
            .ok_or("old-format entries run past the end")?;
    }
    if !new.starts_with(MAGIC) {
        return Err("no glibc-ld.so.cache1.1 header".into());
    }
    let n = u32_at(new, 20)? as usize;
    if n.saturating_mul(ENTRY) > new.len() {
        return Err(format!("{n} entries do not fit in {} bytes", new.len()));
    }
    let cstr = |at: u32| -> Result<String, String> {
        let rest = new
            .get(at as usize..)
            .ok_or_else(|| format!("string offset {at} past the end"))?;
        let end = rest
            .iter()
            .position(|&b| b == 0)
            .ok_or_else(|| format!("string at {at} has no NUL"))?;
        Ok(String::from_utf8_lossy(&rest[..end]).into_owned())
    };
    (0..n)
        .map(|i| {
            let at = HEADER + i * ENTRY;
            Ok(LdCacheEntry {
                flags: u32_at(new, at)? as i32,
                name: cstr(u32_at(new, at + 4)?)?,
                path: cstr(u32_at(new, at + 8)?)?,
            })
        })
        .collect()
}

/// A library as bcc's `bcc_procutils_which_so(NAME, 0)` finds it (what
/// bpftrace 0.17 does with `uprobe:libNAME:f`): the first entry, in the
/// cache's order, whose name starts with `lib` NAME `.so` and whose flags
/// are a 64-bit libc6 library's.
pub fn which_so<'a>(entries: &'a [LdCacheEntry], name: &str) -> Option<&'a str> {
    let prefix = format!("lib{name}.so");
    entries
        .iter()
        .find(|e| e.name.starts_with(&prefix) && e.is_64bit_libc6())
        .map(|e| e.path.as_str())
}

/// glibc's `_dl_cache_libcmp`: names compared with runs of digits as
/// numbers (`libc.so.10` after `libc.so.9`).
pub fn libcmp(a: &str, b: &str) -> std::cmp::Ordering {
    use std::cmp::Ordering;
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let (mut i, mut j) = (0, 0);
    let number = |s: &[u8], k: &mut usize| -> u64 {
        let mut v = 0u64;
        while *k < s.len() && s[*k].is_ascii_digit() {
            v = v.saturating_mul(10).saturating_add(u64::from(s[*k] - b'0'));
            *k += 1;
        }
        v
    };
    while i < a.len() {
        let (ca, cb) = (a[i], b.get(j).copied().unwrap_or(0));
        if ca.is_ascii_digit() {
            if !cb.is_ascii_digit() {
                return Ordering::Greater;
            }
            let (va, vb) = (number(a, &mut i), number(b, &mut j));
            if va != vb {
                return va.cmp(&vb);
            }
        } else if cb.is_ascii_digit() {
            return Ordering::Less;
        } else if ca != cb {
            return ca.cmp(&cb);
        } else {
            i += 1;
            j += 1;
        }
    }
    if j < b.len() {
        Ordering::Less
    } else {
        Ordering::Equal
    }
}

/// A cache of `entries` (name, path), all x86-64 libc6 libraries, as
/// ldconfig writes it: sorted by name in descending [`libcmp`] order (ld.so
/// binary-searches it so), strings after the entries, offsets from the
/// start of the file.
pub fn write_ld_cache(entries: &[(String, String)]) -> Vec<u8> {
    let mut sorted: Vec<&(String, String)> = entries.iter().collect();
    sorted.sort_by(|a, b| libcmp(&b.0, &a.0));
    let strings_at = HEADER + sorted.len() * ENTRY;
    let mut strings: Vec<u8> = Vec::new();
    let mut table = Vec::with_capacity(sorted.len() * ENTRY);
    for (name, path) in &sorted {
        let key = (strings_at + strings.len()) as u32;
        strings.extend(name.as_bytes().iter().chain([&0]));
        let value = (strings_at + strings.len()) as u32;
        strings.extend(path.as_bytes().iter().chain([&0]));
        table.extend(FLAGS_X86_64_LIBC6.to_le_bytes());
        table.extend(key.to_le_bytes());
        table.extend(value.to_le_bytes());
        table.extend([0u8; 4 + 8]); // osversion (unused), hwcap
    }
    let mut out = Vec::with_capacity(strings_at + strings.len());
    out.extend(MAGIC);
    out.extend((sorted.len() as u32).to_le_bytes());
    out.extend((strings.len() as u32).to_le_bytes());
    // Flags: little-endian (cache_file_new_flags_endian_little); no
    // extensions; unused words.
    out.extend([2u8, 0, 0, 0]);
    out.extend([0u8; 16]);
    out.extend(table);
    out.extend(strings);
    out
}

/// What ldconfig would put in the cache for the libraries of `dirs` (guest
/// paths, searched in order) under the guest root `root`: for each ELF
/// shared object named `lib*.so*` or `ld-*.so*` (a file or a symlink to
/// one inside the root), its soname, at `DIR/SONAME` where that name
/// exists; the first directory giving a soname wins.
pub fn ld_cache_entries(root: &Path, dirs: &[&str]) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for dir in dirs {
        let host = root.join(dir.trim_start_matches('/'));
        let Ok(list) = std::fs::read_dir(&host) else {
            continue;
        };
        let mut names: Vec<String> = list
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| (n.starts_with("lib") || n.starts_with("ld-")) && n.contains(".so"))
            .collect();
        names.sort();
        for name in names {
            let Some(soname) = std::fs::read(host.join(&name))
                .ok()
                .and_then(|b| soname(&b))
            else {
                continue;
            };
            let exists = host.join(&soname).symlink_metadata().is_ok();
            if exists && !out.iter().any(|(n, _)| *n == soname) {
                let path = format!("{}/{soname}", dir.trim_end_matches('/'));
                out.push((soname, path));
            }
        }
    }
    out
}

/// The `DT_SONAME` of a 64-bit x86 ELF shared object.
fn soname(bytes: &[u8]) -> Option<String> {
    let file = ElfFile64::<Endianness>::parse(bytes).ok()?;
    let endian = file.endian();
    let header = file.elf_header();
    if header.e_type(endian) != elf::ET_DYN || header.e_machine(endian) != elf::EM_X86_64 {
        return None;
    }
    let phdrs = header.program_headers(endian, bytes).ok()?;
    let dynamic = phdrs.iter().find(|p| p.p_type(endian) == elf::PT_DYNAMIC)?;
    let dyns = dynamic.dynamic(endian, bytes).ok()??;
    let (mut strtab, mut name) = (None, None);
    for d in dyns {
        match d.tag32(endian) {
            Some(elf::DT_STRTAB) => strtab = Some(d.d_val(endian)),
            Some(elf::DT_SONAME) => name = Some(d.d_val(endian)),
            _ => {}
        }
    }
    // DT_STRTAB is a virtual address: its file offset through the segments.
    let (strtab, name) = (strtab?, name?);
    let seg = phdrs.iter().find(|p| {
        p.p_type(endian) == elf::PT_LOAD
            && strtab >= p.p_vaddr(endian)
            && strtab < p.p_vaddr(endian) + p.p_filesz(endian)
    })?;
    let at = usize::try_from(strtab - seg.p_vaddr(endian) + seg.p_offset(endian) + name).ok()?;
    let rest = bytes.get(at..)?;
    let end = rest.iter().position(|&b| b == 0)?;
    let s = std::str::from_utf8(&rest[..end]).ok()?;
    (!s.is_empty() && !s.contains('/')).then(|| s.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    /// The host's own cache against `ldconfig -p` (glibc reading it): the
    /// same libraries in the same order, sorted as ld.so's binary search
    /// needs, and `libc` resolved as bcc resolves it.
    #[test]
    fn the_hosts_cache_reads_as_ldconfig_prints_it() {
        let path = Path::new("/etc/ld.so.cache");
        let Ok(out) = Command::new("ldconfig").arg("-p").output() else {
            return;
        };
        if !path.is_file() || !out.status.success() {
            return;
        }
        let entries = read_ld_cache(path).unwrap();
        let printed = ldconfig_p(&String::from_utf8_lossy(&out.stdout));
        let mine: Vec<(String, String)> = entries
            .iter()
            .map(|e| (e.name.clone(), e.path.clone()))
            .collect();
        assert_eq!(mine, printed);
        for w in entries.windows(2) {
            assert_ne!(libcmp(&w[0].name, &w[1].name), std::cmp::Ordering::Less);
        }
        let libc = which_so(&entries, "libc_not_there");
        assert_eq!(libc, None);
        if let Some(e) = entries
            .iter()
            .find(|e| e.name == "libc.so.6" && e.is_64bit_libc6())
        {
            assert_eq!(which_so(&entries, "c"), Some(e.path.as_str()));
        }
    }

    /// `ldconfig -p`'s lines: `\tNAME (FLAGS) => PATH`.
    fn ldconfig_p(text: &str) -> Vec<(String, String)> {
        text.lines()
            .skip(1)
            .filter_map(|l| {
                let (left, path) = l.trim().split_once(" => ")?;
                let name = left.split(" (").next()?;
                Some((name.to_string(), path.to_string()))
            })
            .collect()
    }

    /// A cache written here reads back, and glibc's own ldconfig prints it.
    #[test]
    fn a_written_cache_is_what_ldconfig_reads() {
        let entries = vec![
            (
                "libc.so.6".to_string(),
                "/lib/x86_64-linux-gnu/libc.so.6".to_string(),
            ),
            (
                "libtinfo.so.6".into(),
                "/lib/x86_64-linux-gnu/libtinfo.so.6".into(),
            ),
            ("libm.so.10".into(), "/lib/m10".into()),
            ("libm.so.9".into(), "/lib/m9".into()),
            (
                "ld-linux-x86-64.so.2".into(),
                "/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2".into(),
            ),
        ];
        let bytes = write_ld_cache(&entries);
        let back = parse_ld_cache(&bytes).unwrap();
        assert_eq!(back.len(), entries.len());
        let names: Vec<&str> = back.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "libtinfo.so.6",
                "libm.so.10",
                "libm.so.9",
                "libc.so.6",
                "ld-linux-x86-64.so.2"
            ]
        );
        assert_eq!(which_so(&back, "m"), Some("/lib/m10"));
        let dir = std::env::temp_dir().join(format!("ld-cache-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("ld.so.cache");
        std::fs::write(&file, &bytes).unwrap();
        if let Ok(out) = Command::new("ldconfig")
            .arg("-p")
            .arg("-C")
            .arg(&file)
            .output()
        {
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(out.status.success(), "{text}");
            assert!(text.starts_with("5 libs found in cache"), "{text}");
            let printed = ldconfig_p(&text);
            let mine: Vec<(String, String)> = back
                .iter()
                .map(|e| (e.name.clone(), e.path.clone()))
                .collect();
            assert_eq!(printed, mine);
            assert!(text.contains("libc.so.6 (libc6,x86-64) => /lib/x86_64-linux-gnu/libc.so.6"));
        }
        let _ = std::fs::remove_dir_all(&dir);
        assert!(parse_ld_cache(b"garbage").is_err());
        assert!(parse_ld_cache(&bytes[..60]).is_err());
    }

    /// The host's libraries give the sonames ldconfig gave them.
    #[test]
    fn sonames_of_the_hosts_libraries() {
        let Ok(entries) = read_ld_cache(Path::new("/etc/ld.so.cache")) else {
            return;
        };
        let found = ld_cache_entries(Path::new("/"), &["/lib/x86_64-linux-gnu"]);
        for name in ["libc.so.6", "ld-linux-x86-64.so.2", "libm.so.6"] {
            let cached = entries.iter().find(|e| e.name == name);
            let mine = found.iter().find(|(n, _)| n == name);
            if let Some(c) = cached {
                assert_eq!(mine.map(|m| m.1.as_str()), Some(c.path.as_str()), "{name}");
            }
        }
    }
}
