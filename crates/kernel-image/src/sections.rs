//! Raw ELF sections of a kernel image (`.BTF`, `.orc_unwind`, ...) for the crates that parse
//! them, so a bzImage is decompressed once and, with a cache directory, once per image.
//!
//! Cache files are `<dir>/<sha256 of the input>.<section name>.sec`:
//!
//! ```text
//! "vmprobe-section 1\n"   magic (the version invalidates old caches)
//! u64 LE address           link-time address; u64::MAX with length u64::MAX = section absent
//! u64 LE length
//! [u8; 32]                 SHA-256 of the data (catches truncated or corrupted files)
//! data
//! ```
//!
//! Anything unexpected in a cache file makes it a miss; the sections are then decoded again.

use std::path::{Path, PathBuf};

use object::{Object, ObjectSection};
use sha2::{Digest, Sha256};

use crate::{Error, cache, image};

const MAGIC: &[u8] = b"vmprobe-section 1\n";
const ABSENT: u64 = u64::MAX;

/// One section: its link-time address and contents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Section {
    pub addr: u64,
    pub data: Vec<u8>,
}

/// The requested sections of one kernel image.
#[derive(Debug, Clone)]
pub struct KernelSections {
    /// SHA-256 (hex) of the input file, for caches derived from these sections.
    key: String,
    /// (name, section); None for a section the image does not have.
    sections: Vec<(String, Option<Section>)>,
}

impl KernelSections {
    /// Reads the named sections of a bzImage (xz, gzip or zstd payload), a compressed vmlinux
    /// or an ELF vmlinux. Sections the image lacks are absent, not errors. With `cache_dir`,
    /// sections are cached keyed by the SHA-256 of the input file; cache problems never fail
    /// the load.
    pub fn load(
        path: &Path,
        names: &[&str],
        cache_dir: Option<&Path>,
    ) -> Result<KernelSections, Error> {
        let bytes = std::fs::read(path).map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let key = cache::key(&bytes);
        if let Some(dir) = cache_dir {
            let cached: Option<Vec<_>> = names
                .iter()
                .map(|n| Some((n.to_string(), read_cached(dir, &key, n)?)))
                .collect();
            if let Some(sections) = cached {
                return Ok(KernelSections { key, sections });
            }
        }
        let elf = image::elf_bytes(&bytes).map_err(|f| Error::from_fail(path, f))?;
        let file = object::File::parse(&*elf).map_err(|e| Error::Elf {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        let mut sections = Vec::with_capacity(names.len());
        for &name in names {
            let sec = match file.section_by_name(name) {
                Some(s) => Some(Section {
                    addr: s.address(),
                    data: s
                        .data()
                        .map_err(|e| Error::Elf {
                            path: path.to_path_buf(),
                            message: format!("section {name}: {e}"),
                        })?
                        .to_vec(),
                }),
                None => None,
            };
            sections.push((name.to_string(), sec));
        }
        if let Some(dir) = cache_dir {
            for (name, sec) in &sections {
                let _ = write_cached(dir, &key, name, sec.as_ref());
            }
        }
        Ok(KernelSections { key, sections })
    }

    /// Sections given as they are (tests of the crates that parse them).
    #[cfg(test)]
    pub(crate) fn from_sections(sections: Vec<(String, Option<Section>)>) -> KernelSections {
        KernelSections {
            key: String::new(),
            sections,
        }
    }

    /// The named section, if it was requested and the image has it.
    pub fn get(&self, name: &str) -> Option<&Section> {
        self.sections
            .iter()
            .find(|(n, _)| n == name)
            .and_then(|(_, s)| s.as_ref())
    }

    /// SHA-256 (hex) of the image file: a key for caches of data derived from it.
    pub fn image_key(&self) -> &str {
        &self.key
    }
}

/// Only plain names make file names; others are never cached.
fn file_for(dir: &Path, key: &str, name: &str) -> Option<PathBuf> {
    let plain = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'));
    plain.then(|| dir.join(format!("{key}.{}.sec", name.trim_start_matches('.'))))
}

/// Some(None) for a cached "absent", None for a miss.
fn read_cached(dir: &Path, key: &str, name: &str) -> Option<Option<Section>> {
    let bytes = std::fs::read(file_for(dir, key, name)?).ok()?;
    parse_cached(&bytes)
}

fn parse_cached(bytes: &[u8]) -> Option<Option<Section>> {
    let rest = bytes.strip_prefix(MAGIC)?;
    let u64_at = |o: usize| -> Option<u64> {
        Some(u64::from_le_bytes(rest.get(o..o + 8)?.try_into().ok()?))
    };
    let (addr, len) = (u64_at(0)?, u64_at(8)?);
    let sum = rest.get(16..48)?;
    let data = rest.get(48..)?;
    if checksum(addr, len, data).as_slice() != sum {
        return None;
    }
    if addr == ABSENT && len == ABSENT {
        return data.is_empty().then_some(None);
    }
    if data.len() as u64 != len {
        return None;
    }
    Some(Some(Section {
        addr,
        data: data.to_vec(),
    }))
}

/// Covers the address and length too, so no flipped bit yields a wrong section.
fn checksum(addr: u64, len: u64, data: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(addr.to_le_bytes());
    h.update(len.to_le_bytes());
    h.update(data);
    h.finalize().into()
}

fn render_cached(sec: Option<&Section>) -> Vec<u8> {
    let (addr, len, data) = match sec {
        Some(s) => (s.addr, s.data.len() as u64, &s.data[..]),
        None => (ABSENT, ABSENT, &[][..]),
    };
    let mut out = Vec::with_capacity(MAGIC.len() + 48 + data.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&addr.to_le_bytes());
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&checksum(addr, len, data));
    out.extend_from_slice(data);
    out
}

/// Writes atomically (temp file in the same directory, then rename), like the symbol cache.
fn write_cached(dir: &Path, key: &str, name: &str, sec: Option<&Section>) -> std::io::Result<()> {
    let Some(dest) = file_for(dir, key, name) else {
        return Ok(());
    };
    crate::cache::write_atomically(dir, key, &dest, &render_cached(sec))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_format_roundtrip_and_corruption() {
        let s = Section {
            addr: 0xffffffff82000000,
            data: (0..1000u32).map(|i| i as u8).collect(),
        };
        let good = render_cached(Some(&s));
        assert_eq!(parse_cached(&good), Some(Some(s.clone())));
        assert_eq!(parse_cached(&render_cached(None)), Some(None));
        // Every truncation and every single-byte change is a miss, never a wrong section.
        for cut in 0..good.len() {
            assert_eq!(parse_cached(&good[..cut]), None, "cut at {cut}");
        }
        for i in 0..good.len() {
            let mut bad = good.clone();
            bad[i] ^= 0x40;
            assert_eq!(parse_cached(&bad), None, "flip at {i}");
        }
        let mut long = good.clone();
        long.push(0);
        assert_eq!(parse_cached(&long), None);
    }

    #[test]
    fn odd_names_are_not_cached() {
        let d = Path::new("/nonexistent");
        assert!(file_for(d, "k", ".BTF").is_some());
        assert!(file_for(d, "k", "../x").is_none());
        assert!(file_for(d, "k", "a/b").is_none());
        assert!(file_for(d, "k", "").is_none());
    }
}
