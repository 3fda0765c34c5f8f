//! On-disk cache of decoded symbols, keyed by the SHA-256 of the input file.
//!
//! Format (text, one record per line; the version line invalidates old caches):
//!
//! ```text
//! vmprobe-kernel-symbols 1
//! key <sha256 hex>
//! text <start hex> <end hex>        | text none
//! sample <addr hex> <bytes hex>     (0..n lines)
//! symbols <count>
//! <addr hex> <kind> <name>          (count lines, address order)
//! end
//! ```
//!
//! Anything unexpected makes the reader return None, so the caller rebuilds the cache.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::{KernelSymbols, Symbol, TextSample};

const MAGIC: &str = "vmprobe-kernel-symbols 1";

pub(crate) fn key(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    let mut s = String::with_capacity(64);
    for b in digest {
        let _ = write!(s, "{b:02x}");
    }
    s
}

fn file_for(dir: &Path, key: &str) -> PathBuf {
    dir.join(format!("{key}.ksyms"))
}

pub(crate) fn read(dir: &Path, key: &str) -> Option<KernelSymbols> {
    let text = std::fs::read_to_string(file_for(dir, key)).ok()?;
    parse(&text, key)
}

fn hex_bytes(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

pub(crate) fn parse(text: &str, key: &str) -> Option<KernelSymbols> {
    let mut lines = text.lines();
    if lines.next()? != MAGIC {
        return None;
    }
    if lines.next()?.strip_prefix("key ")? != key {
        return None;
    }
    let text_range = match lines.next()?.strip_prefix("text ")? {
        "none" => None,
        r => {
            let (a, b) = r.split_once(' ')?;
            Some((
                u64::from_str_radix(a, 16).ok()?,
                u64::from_str_radix(b, 16).ok()?,
            ))
        }
    };
    let mut samples = Vec::new();
    let count = loop {
        let line = lines.next()?;
        if let Some(rest) = line.strip_prefix("sample ") {
            let (a, b) = rest.split_once(' ')?;
            samples.push(TextSample {
                addr: u64::from_str_radix(a, 16).ok()?,
                bytes: hex_bytes(b)?,
            });
        } else {
            break line.strip_prefix("symbols ")?.parse::<usize>().ok()?;
        }
    };
    // Don't trust the count for the allocation: bound it by the remaining text.
    let mut symbols = Vec::with_capacity(count.min(text.len() / 4));
    for _ in 0..count {
        let line = lines.next()?;
        let (a, rest) = line.split_once(' ')?;
        let (k, name) = rest.split_once(' ')?;
        let mut kc = k.chars();
        let (Some(kind), None) = (kc.next(), kc.next()) else {
            return None;
        };
        let addr = u64::from_str_radix(a, 16).ok()?;
        if symbols.last().is_some_and(|s: &Symbol| s.addr > addr) || name.is_empty() {
            return None;
        }
        symbols.push(Symbol {
            name: name.to_string(),
            addr,
            kind,
        });
    }
    if lines.next()? != "end" || lines.next().is_some() || symbols.is_empty() {
        return None;
    }
    Some(KernelSymbols::new(symbols, text_range, samples))
}

pub(crate) fn render(key: &str, ks: &KernelSymbols) -> String {
    let mut s = String::with_capacity(ks.symbols.len() * 40 + 1024);
    let _ = writeln!(s, "{MAGIC}\nkey {key}");
    match ks.text_range {
        Some((a, b)) => {
            let _ = writeln!(s, "text {a:x} {b:x}");
        }
        None => s.push_str("text none\n"),
    }
    for smp in &ks.samples {
        let _ = write!(s, "sample {:x} ", smp.addr);
        for b in &smp.bytes {
            let _ = write!(s, "{b:02x}");
        }
        s.push('\n');
    }
    let _ = writeln!(s, "symbols {}", ks.symbols.len());
    for sym in &ks.symbols {
        let _ = writeln!(s, "{:016x} {} {}", sym.addr, sym.kind, sym.name);
    }
    s.push_str("end\n");
    s
}

/// Writes atomically: a unique temp file in the same directory, then rename.
pub(crate) fn write(dir: &Path, key: &str, ks: &KernelSymbols) -> std::io::Result<()> {
    // Names with whitespace or newlines would not round-trip; skip caching rather than corrupt.
    if ks
        .symbols
        .iter()
        .any(|s| s.name.contains(char::is_whitespace) || s.kind.is_whitespace())
    {
        return Ok(());
    }
    write_atomically(dir, key, &file_for(dir, key), render(key, ks).as_bytes())
}

/// Writes `bytes` to `dest` atomically: a temp file unique to this process
/// and moment in the same directory, synced, then renamed over `dest`, so
/// that a reader never sees a half-written cache file.
pub(crate) fn write_atomically(
    dir: &Path,
    key: &str,
    dest: &Path,
    bytes: &[u8],
) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let tmp = dir.join(format!(".{key}.{}.{nanos}.tmp", std::process::id()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, dest)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}
