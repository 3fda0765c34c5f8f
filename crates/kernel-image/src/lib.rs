//! Kernel symbol addresses from the kernel image alone, with no help from the guest.
//!
//! Distribution kernels ship a stub System.map, so the symbols come from the kallsyms tables
//! the kernel carries in its own `.rodata` (the docs of the private `kallsyms` module, in
//! `src/kallsyms.rs`, describe the table layout and how the tables are found in a stripped
//! image).
//!
//! Accepted inputs, detected by content: a bzImage (xz, gzip or zstd payload), an ELF vmlinux
//! (`.symtab` when present, otherwise its kallsyms tables), and System.map or `/proc/kallsyms`
//! text. [`KernelSymbols::load`] can cache the result keyed by the input's SHA-256.
//!
//! [`KernelSections`] gives other crates raw ELF sections of the image (`.BTF`, the ORC
//! tables), decompressed once and cached the same way.
//!
//! [`detect_slide`] finds the KASLR slide of a running guest by matching [`TextSample`]s of the
//! image's `.text` against guest memory.

//!
//! With the default feature `images` off, only the symbol table itself is built
//! ([`KernelSymbols`], deserialised from another process): no decompression, ELF or hashing
//! code is linked (vmprobe's QEMU plugin looks symbols up but never reads an image).

#![forbid(unsafe_code)]
#[cfg(feature = "images")]
mod cache;
#[cfg(feature = "images")]
mod image;
#[cfg(feature = "images")]
mod kallsyms;
#[cfg(feature = "images")]
pub mod ld_cache;
#[cfg(feature = "images")]
pub mod mcount;
#[cfg(feature = "images")]
pub mod modules;
#[cfg(feature = "images")]
pub mod sdt;
#[cfg(feature = "images")]
mod sections;
#[cfg(feature = "images")]
mod syscalls;
#[cfg(feature = "images")]
mod user_elf;

#[cfg(feature = "images")]
pub use sections::{KernelSections, Section};
#[cfg(feature = "images")]
pub use syscalls::{Syscall, SyscallParam, load_syscalls, parse_syscalls};
#[cfg(feature = "images")]
pub use user_elf::{MAX_USER_ELF, UserElf, UserElfError, UserSymbol};

#[cfg(feature = "images")]
use std::path::Path;
use std::path::PathBuf;

/// One kernel symbol.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Symbol {
    pub name: String,
    /// Link-time address (add the KASLR slide for a running guest).
    pub addr: u64,
    /// nm-style type character: `T`/`t` text, `D`/`d` data, `A` absolute (per-cpu), ...
    pub kind: char,
}

/// A few bytes of the image's .text at link-time addresses, for finding the KASLR slide in a
/// running guest.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TextSample {
    pub addr: u64,
    pub bytes: Vec<u8>,
}

/// Errors: one-line messages naming the file and the problem.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not a Linux kernel image (no bzImage header, ELF or symbol map)")]
    NotKernel { path: PathBuf },
    #[error("{path}: unsupported kernel image: {what}")]
    Unsupported { path: PathBuf, what: String },
    #[error("{path}: {format} payload could not be decompressed: {message}")]
    Decompress {
        path: PathBuf,
        format: &'static str,
        message: String,
    },
    #[error("{path}: bad ELF file: {message}")]
    Elf { path: PathBuf, message: String },
    #[error("{path}: kallsyms tables not found in .rodata: {what}")]
    KallsymsNotFound { path: PathBuf, what: &'static str },
    #[error("{path}:{line}: bad symbol map: {message}")]
    SymbolMap {
        path: PathBuf,
        line: usize,
        message: String,
    },
    #[error("{path}: no symbols: {what}")]
    NoSymbols { path: PathBuf, what: &'static str },
}

#[cfg(feature = "images")]
impl Error {
    fn from_fail(path: &Path, f: image::Fail) -> Error {
        let path = path.to_path_buf();
        match f {
            image::Fail::NotKernel => Error::NotKernel { path },
            image::Fail::Unsupported(what) => Error::Unsupported { path, what },
            image::Fail::Decompress(format, message) => Error::Decompress {
                path,
                format,
                message,
            },
            image::Fail::Elf(message) => Error::Elf { path, message },
            image::Fail::Kallsyms(what) => Error::KallsymsNotFound { path, what },
            image::Fail::Map(line, message) => Error::SymbolMap {
                path,
                line,
                message,
            },
            image::Fail::NoSymbols(what) => Error::NoSymbols { path, what },
        }
    }
}

/// Kernel symbols sorted by address, with a name index.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct KernelSymbols {
    /// Sorted by address; aliases keep their original (kallsyms) order.
    symbols: Vec<Symbol>,
    /// Indices into `symbols`, sorted by name then index (so the first match is the first alias).
    by_name: Vec<u32>,
    /// `[start, end)` of the kernel text, when known.
    text_range: Option<(u64, u64)>,
    samples: Vec<TextSample>,
}

impl KernelSymbols {
    /// Loads from a bzImage, vmlinux ELF, System.map or kallsyms dump. With `cache_dir`, results
    /// are cached keyed by the SHA-256 of the input file, so the second load skips
    /// decompression. Cache problems never fail the load: a bad cache is rebuilt, and a cache
    /// that cannot be written is skipped.
    #[cfg(feature = "images")]
    pub fn load(path: &Path, cache_dir: Option<&Path>) -> Result<KernelSymbols, Error> {
        let bytes = std::fs::read(path).map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let key = cache_dir.map(|_| cache::key(&bytes));
        if let (Some(dir), Some(key)) = (cache_dir, key.as_deref())
            && let Some(ks) = cache::read(dir, key)
        {
            return Ok(ks);
        }
        let decoded = image::decode_any(&bytes).map_err(|f| Error::from_fail(path, f))?;
        drop(bytes);
        let samples = decoded
            .text
            .as_ref()
            .map(|t| choose_samples(&decoded.symbols, t))
            .unwrap_or_default();
        let ks = KernelSymbols::new(decoded.symbols, decoded.text_range, samples);
        if ks.symbols.is_empty() {
            return Err(Error::NoSymbols {
                path: path.to_path_buf(),
                what: "the symbol table is empty",
            });
        }
        if let (Some(dir), Some(key)) = (cache_dir, key.as_deref()) {
            let _ = cache::write(dir, key, &ks);
        }
        Ok(ks)
    }

    /// A table of these symbols (in any order), with no text range or samples: for symbols
    /// that come from elsewhere than an image, and for tests.
    pub fn from_symbols(symbols: Vec<Symbol>) -> KernelSymbols {
        KernelSymbols::new(symbols, None, Vec::new())
    }

    /// Builds the table from symbols in any order (sorted stably by address here).
    fn new(
        mut symbols: Vec<Symbol>,
        text_range: Option<(u64, u64)>,
        samples: Vec<TextSample>,
    ) -> KernelSymbols {
        symbols.sort_by_key(|s| s.addr);
        // Keep indices representable; no real kernel comes near this.
        symbols.truncate(u32::MAX as usize);
        let mut by_name: Vec<u32> = (0..symbols.len() as u32).collect();
        by_name.sort_by(|&a, &b| symbols[a as usize].name.cmp(&symbols[b as usize].name));
        KernelSymbols {
            symbols,
            by_name,
            text_range,
            samples,
        }
    }

    /// The first symbol (lowest address, then table order) with exactly this name.
    pub fn lookup(&self, name: &str) -> Option<&Symbol> {
        let i = self
            .by_name
            .partition_point(|&i| self.symbols[i as usize].name.as_str() < name);
        let s = &self.symbols[*self.by_name.get(i)? as usize];
        (s.name == name).then_some(s)
    }

    /// The symbol containing `addr` (the last one at or below it; the first alias at that
    /// address, as the kernel reports) and the offset into it. None below the first symbol or
    /// past the last one.
    pub fn symbolize(&self, addr: u64) -> Option<(&Symbol, u64)> {
        let last = self.symbols.last()?;
        if addr > last.addr {
            return None;
        }
        let i = self.symbols.partition_point(|s| s.addr <= addr);
        let at = self.symbols.get(i.checked_sub(1)?)?.addr;
        let first = self.symbols.partition_point(|s| s.addr < at);
        let s = &self.symbols[first];
        Some((s, addr - s.addr))
    }

    /// Text symbols (`t`/`T`) whose names match `glob` (`*` any run, `?` one character), in
    /// address order.
    pub fn matching(&self, glob: &str) -> Vec<&Symbol> {
        let pat: Vec<char> = glob.chars().collect();
        self.symbols
            .iter()
            .filter(|s| matches!(s.kind, 't' | 'T') && glob_match(&pat, &s.name))
            .collect()
    }

    /// All symbols in address order.
    pub fn iter(&self) -> impl Iterator<Item = &Symbol> {
        self.symbols.iter()
    }

    pub fn len(&self) -> usize {
        self.symbols.len()
    }

    pub fn is_empty(&self) -> bool {
        self.symbols.is_empty()
    }

    /// True for code symbols: `t`/`T`, and weak symbols (`W`/`w`) inside the kernel text.
    pub fn is_text(&self, sym: &Symbol) -> bool {
        match sym.kind {
            't' | 'T' => true,
            'w' | 'W' => self
                .text_range
                .is_some_and(|(a, b)| (a..b).contains(&sym.addr)),
            _ => false,
        }
    }

    /// `.text` samples for [`detect_slide`]; empty when loaded from a System.map.
    pub fn text_samples(&self) -> &[TextSample] {
        &self.samples
    }
}

/// Whether `name` matches `pattern` (`*` any run, `?` one character), as
/// [`KernelSymbols::matching`] matches; for listing other kinds of names
/// the same way.
pub fn glob(pattern: &str, name: &str) -> bool {
    glob_match(&pattern.chars().collect::<Vec<_>>(), name)
}

/// Iterative glob match with single-star backtracking (linear-ish, no recursion blowup).
fn glob_match(pat: &[char], name: &str) -> bool {
    let s: Vec<char> = name.chars().collect();
    let (mut p, mut i) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while i < s.len() {
        if p < pat.len() && (pat[p] == '?' || pat[p] == s[i]) {
            p += 1;
            i += 1;
        } else if p < pat.len() && pat[p] == '*' {
            star = Some((p, i));
            p += 1;
        } else if let Some((sp, si)) = star {
            p = sp + 1;
            i = si + 1;
            star = Some((sp, si + 1));
        } else {
            return false;
        }
    }
    pat[p..].iter().all(|&c| c == '*')
}

#[cfg(feature = "images")]
const SAMPLE_COUNT: usize = 8;
#[cfg(feature = "images")]
const SAMPLE_LEN: usize = 48;
/// endbr64 (4 bytes) + the 5-byte `call __fentry__` that ftrace turns into a nop at boot.
#[cfg(feature = "images")]
const SAMPLE_SKIP: u64 = 9;

/// Picks up to 8 samples from ordinary global functions spread over `.text`, skipping the
/// boot-patched prologue. Functions must be long enough that the window stays inside them.
#[cfg(feature = "images")]
fn choose_samples(symbols: &[Symbol], text: &image::TextSection) -> Vec<TextSample> {
    let text_end = text.addr.saturating_add(text.data.len() as u64);
    // Sample ordinary C code only: .text ends with noinstr, sched, lock, entry and thunk
    // sections (asm, boot-patched), so stop at the first of those markers; skip the head code
    // at the very start too when .text is large enough to spare it.
    let end = [
        "__noinstr_text_start",
        "__sched_text_start",
        "__entry_text_start",
    ]
    .iter()
    .filter_map(|n| symbols.iter().find(|s| s.name == *n))
    .map(|s| s.addr)
    .filter(|a| (text.addr..text_end).contains(a))
    .min()
    .unwrap_or(text_end);
    let head_skip = if end - text.addr > 8 << 20 {
        1 << 20
    } else {
        0
    };
    let start = text.addr + head_skip;
    if end <= start {
        return Vec::new();
    }
    let region = (end - start) / SAMPLE_COUNT as u64;
    let funcs: Vec<&Symbol> = symbols
        .iter()
        .filter(|s| (start..end).contains(&s.addr))
        .collect();
    let mut out = Vec::new();
    for r in 0..SAMPLE_COUNT as u64 {
        let lo = start + r * region;
        let from = funcs.partition_point(|s| s.addr < lo);
        // Bounded scan of candidates within this region.
        for (k, s) in funcs.iter().enumerate().skip(from).take(50_000) {
            if s.addr >= lo + region {
                break;
            }
            // Ordinary global C functions only: head/entry code and `_`-prefixed internals
            // (thunks, stubs, asm) are likelier to be patched or special-cased at boot.
            if s.kind != 'T'
                || s.name.starts_with('_')
                || s.name.contains("entry")
                || s.name.contains("startup")
            {
                continue;
            }
            let next = funcs[k + 1..]
                .iter()
                .find(|n| n.addr > s.addr)
                .map_or(end, |n| n.addr);
            // Room for the window plus some slack, so the function's tail (returns, which
            // boot may patch) stays out of the window.
            if next - s.addr < SAMPLE_SKIP + SAMPLE_LEN as u64 + 32 {
                continue;
            }
            let off = (s.addr - text.addr + SAMPLE_SKIP) as usize;
            let Some(bytes) = text.data.get(off..off.saturating_add(SAMPLE_LEN)) else {
                continue;
            };
            let mut seen = [false; 256];
            bytes.iter().for_each(|&b| seen[b as usize] = true);
            if seen.iter().filter(|&&x| x).count() < 16 {
                continue; // padding or tables, not code worth matching
            }
            out.push(TextSample {
                addr: s.addr.wrapping_add(SAMPLE_SKIP),
                bytes: bytes.to_vec(),
            });
            break;
        }
    }
    out
}

/// KASLR slides are multiples of 2 MiB within 1 GiB.
const SLIDE_STEP: u64 = 2 << 20;
const SLIDE_MAX: u64 = 1 << 30;

fn similarity(a: &[u8], b: &[u8]) -> (usize, usize) {
    let same = a.iter().zip(b).filter(|(x, y)| x == y).count();
    (same, a.len())
}

/// Finds the KASLR slide: tries every 2 MiB-aligned slide in 0..1 GiB, reading guest virtual
/// memory through `read` (None for unmapped memory), and returns the first slide where the
/// samples match. Boot-time patching (alternatives, static calls, relocated immediates) is
/// tolerated: a sample matches when >= 75% of its bytes are equal, and a slide is accepted when
/// at least 4 samples (all of them, if fewer are given) match and >= 75% of all sampled bytes
/// agree. Only the first sample is read at each slide until it matches. Returns Some(0) for a
/// kernel booted with nokaslr.
pub fn detect_slide(
    samples: &[TextSample],
    mut read: impl FnMut(u64, usize) -> Option<Vec<u8>>,
) -> Option<u64> {
    let found = try_detect_slide(samples, |addr, len| {
        Ok::<_, std::convert::Infallible>(read(addr, len))
    });
    match found {
        Ok(slide) => slide,
    }
}

/// [`detect_slide`] with reads that can fail: an error (the stub went
/// silent, the user interrupted, a deadline passed) ends the search at
/// once, where `Ok(None)` (unmapped memory) only rules out one slide.
pub fn try_detect_slide<E>(
    samples: &[TextSample],
    mut read: impl FnMut(u64, usize) -> Result<Option<Vec<u8>>, E>,
) -> Result<Option<u64>, E> {
    let usable: Vec<&TextSample> = samples.iter().filter(|s| s.bytes.len() >= 4).collect();
    let Some((first, rest)) = usable.split_first() else {
        return Ok(None);
    };
    let need = usable.len().min(4);
    let matches = |got: &Option<Vec<u8>>, want: &[u8]| -> Option<(usize, usize)> {
        let got = got.as_ref()?;
        if got.len() < want.len() {
            return None;
        }
        let (same, total) = similarity(want, got);
        Some((same, total))
    };
    let good = |(same, total): (usize, usize)| same * 4 >= total * 3;
    let mut slide = 0;
    while slide < SLIDE_MAX {
        let got = match first.addr.checked_add(slide) {
            Some(a) => read(a, first.bytes.len())?,
            None => None,
        };
        let hit = matches(&got, &first.bytes).filter(|&m| good(m));
        if let Some((mut same, mut total)) = hit {
            let mut matched = 1;
            for s in rest {
                let got = match s.addr.checked_add(slide) {
                    Some(a) => read(a, s.bytes.len())?,
                    None => None,
                };
                let (sm, t) = matches(&got, &s.bytes).unwrap_or((0, s.bytes.len()));
                if good((sm, t)) {
                    matched += 1;
                }
                same += sm;
                total += t;
            }
            if matched >= need && good((same, total)) {
                return Ok(Some(slide));
            }
        }
        slide += SLIDE_STEP;
    }
    Ok(None)
}

#[cfg(all(test, feature = "images"))]
mod tests;

/// Entry points for the fuzz targets in `fuzz/` (not a stable API).
#[cfg(feature = "images")]
#[doc(hidden)]
pub mod fuzzing {
    /// The kallsyms finder over bytes as if loaded at `base`. Must never panic.
    pub fn find_kallsyms(data: &[u8], base: u64) -> usize {
        crate::kallsyms::decode(data, base).map_or(0, |s| s.len())
    }
}
