//! Input formats: bzImage (decompression of its payload), ELF vmlinux, and symbol-map text.

use std::io::Read;

use object::{Object, ObjectSection, ObjectSymbol, SectionKind, SymbolKind, SymbolSection};

use crate::{Symbol, kallsyms};

/// Decompressed kernels are ~65 MB; refuse to inflate beyond this (guards decompression bombs).
const MAX_DECOMPRESSED: u64 = 1 << 30;

const XZ_MAGIC: &[u8] = b"\xfd7zXZ\x00";
const GZIP_MAGIC: &[u8] = b"\x1f\x8b\x08";
const ZSTD_MAGIC: &[u8] = b"\x28\xb5\x2f\xfd";

/// What went wrong, without the path (the caller adds it).
#[derive(Debug)]
pub(crate) enum Fail {
    NotKernel,
    Unsupported(String),
    Decompress(&'static str, String),
    Elf(String),
    Kallsyms(&'static str),
    Map(usize, String),
    NoSymbols(&'static str),
}

/// A decoded input: symbols in address order, plus .text contents when the input had them.
pub(crate) struct Decoded {
    pub symbols: Vec<Symbol>,
    pub text: Option<TextSection>,
    /// Text address range, from the .text section or `_stext`/`_etext`.
    pub text_range: Option<(u64, u64)>,
}

pub(crate) struct TextSection {
    pub addr: u64,
    pub data: Vec<u8>,
}

pub(crate) fn decode_any(bytes: &[u8]) -> Result<Decoded, Fail> {
    if bytes.starts_with(b"\x7fELF") {
        return decode_elf(bytes);
    }
    if is_bzimage(bytes) {
        let elf = decompress_bzimage(bytes)?;
        return decode_elf(&elf);
    }
    if looks_like_map(bytes) {
        return parse_map(bytes);
    }
    // A bare compressed vmlinux (e.g. vmlinux.xz).
    if let Some(kind) = compression_at(bytes) {
        let elf = decompress(kind, bytes)?;
        if elf.starts_with(b"\x7fELF") {
            return decode_elf(&elf);
        }
    }
    Err(Fail::NotKernel)
}

/// The ELF inside any accepted kernel image: the input itself, or its decompressed payload.
pub(crate) fn elf_bytes(bytes: &[u8]) -> Result<std::borrow::Cow<'_, [u8]>, Fail> {
    if bytes.starts_with(b"\x7fELF") {
        return Ok(bytes.into());
    }
    if is_bzimage(bytes) {
        return Ok(decompress_bzimage(bytes)?.into());
    }
    if let Some(kind) = compression_at(bytes) {
        let elf = decompress(kind, bytes)?;
        if elf.starts_with(b"\x7fELF") {
            return Ok(elf.into());
        }
    }
    Err(Fail::NotKernel)
}

fn is_bzimage(b: &[u8]) -> bool {
    b.get(0x1fe..0x200) == Some(&[0x55, 0xaa][..]) && b.get(0x202..0x206) == Some(&b"HdrS"[..])
}

#[derive(Clone, Copy)]
enum Compression {
    Xz,
    Gzip,
    Zstd,
}

fn compression_at(b: &[u8]) -> Option<Compression> {
    if b.starts_with(XZ_MAGIC) {
        Some(Compression::Xz)
    } else if b.starts_with(GZIP_MAGIC) {
        Some(Compression::Gzip)
    } else if b.starts_with(ZSTD_MAGIC) {
        Some(Compression::Zstd)
    } else {
        None
    }
}

fn name_of(c: Compression) -> &'static str {
    match c {
        Compression::Xz => "xz",
        Compression::Gzip => "gzip",
        Compression::Zstd => "zstd",
    }
}

fn decompress(kind: Compression, data: &[u8]) -> Result<Vec<u8>, Fail> {
    let err = |e: std::io::Error| Fail::Decompress(name_of(kind), e.to_string());
    let mut out = Vec::new();
    // Single-stream decoders: the kernel appends a 4-byte size after the stream.
    let reader: Box<dyn Read + '_> = match kind {
        Compression::Xz => return decompress_xz(data),
        Compression::Gzip => Box::new(flate2::read::GzDecoder::new(data)),
        Compression::Zstd => {
            let mut d = zstd::stream::read::Decoder::new(data).map_err(err)?;
            // Kernel images use --ultra -22, whose window exceeds the default limit.
            d.window_log_max(31).map_err(err)?;
            Box::new(d.single_frame())
        }
    };
    reader
        .take(MAX_DECOMPRESSED + 1)
        .read_to_end(&mut out)
        .map_err(err)?;
    if out.len() as u64 > MAX_DECOMPRESSED {
        return Err(Fail::Decompress(
            name_of(kind),
            "output larger than 1 GiB".into(),
        ));
    }
    Ok(out)
}

/// liblzma's reader rejects the 4-byte size the kernel build appends after the stream, so
/// drive the stream by hand and stop at its end.
fn decompress_xz(data: &[u8]) -> Result<Vec<u8>, Fail> {
    use xz2::stream::{Action, Status, Stream};
    let err = |m: String| Fail::Decompress("xz", m);
    let mut s = Stream::new_stream_decoder(u64::MAX, 0).map_err(|e| err(e.to_string()))?;
    let mut out: Vec<u8> = Vec::with_capacity(data.len().saturating_mul(8).min(128 << 20));
    let mut input = data;
    loop {
        if out.len() == out.capacity() {
            if out.len() as u64 >= MAX_DECOMPRESSED {
                return Err(err("output larger than 1 GiB".into()));
            }
            out.reserve(out.len().max(1 << 20));
        }
        let (in0, out0) = (s.total_in(), out.len());
        let action = if input.is_empty() {
            Action::Finish
        } else {
            Action::Run
        };
        let status = s
            .process_vec(input, &mut out, action)
            .map_err(|e| err(e.to_string()))?;
        let used = usize::try_from(s.total_in() - in0).unwrap_or(usize::MAX);
        input = input.get(used..).unwrap_or_default();
        match status {
            Status::StreamEnd => return Ok(out),
            _ if used == 0 && out.len() == out0 && out.len() < out.capacity() => {
                return Err(err("truncated stream".into()));
            }
            _ => {}
        }
    }
}

/// Decompresses a bzImage payload, located through the boot protocol header
/// (`payload_offset`/`payload_length`, protocol >= 2.08), or by scanning for a known magic.
fn decompress_bzimage(b: &[u8]) -> Result<Vec<u8>, Fail> {
    let setup_sects = match b.get(0x1f1).copied() {
        Some(0) | None => 4,
        Some(n) => n as usize,
    };
    let version = b
        .get(0x206..0x208)
        .map(|v| u16::from_le_bytes([v[0], v[1]]))
        .unwrap_or(0);
    let rd32 = |o: usize| {
        b.get(o..o + 4)
            .map(|v| u32::from_le_bytes([v[0], v[1], v[2], v[3]]) as usize)
    };
    let mut last_err = None;
    if version >= 0x208
        && let (Some(off), Some(len)) = (rd32(0x248), rd32(0x24c))
        && let Some(start) = ((setup_sects + 1) * 512).checked_add(off)
        && let Some(payload) = start.checked_add(len).and_then(|end| b.get(start..end))
    {
        match compression_at(payload) {
            Some(kind) => match decompress(kind, payload) {
                Ok(elf) => return Ok(elf),
                Err(e) => last_err = Some(e),
            },
            None => {
                let magic: Vec<String> =
                    payload.iter().take(4).map(|x| format!("{x:02x}")).collect();
                last_err = Some(Fail::Unsupported(format!(
                    "payload compression with magic {} (supported: xz, gzip, zstd)",
                    magic.join(" ")
                )));
            }
        }
    }
    // Fallback: scan for a compressed stream that inflates to an ELF.
    for (magic, kind) in [
        (XZ_MAGIC, Compression::Xz),
        (ZSTD_MAGIC, Compression::Zstd),
        (GZIP_MAGIC, Compression::Gzip),
    ] {
        for pos in memchr::memmem::find_iter(b, magic).take(8) {
            match decompress(kind, &b[pos..]) {
                Ok(elf) if elf.starts_with(b"\x7fELF") => return Ok(elf),
                Ok(_) => {}
                Err(e) => last_err = last_err.or(Some(e)),
            }
        }
    }
    Err(last_err.unwrap_or(Fail::Unsupported(
        "no xz, gzip or zstd payload in the bzImage".into(),
    )))
}

fn decode_elf(bytes: &[u8]) -> Result<Decoded, Fail> {
    let file = object::File::parse(bytes).map_err(|e| Fail::Elf(e.to_string()))?;
    let text_sec = file.section_by_name(".text");
    let text = text_sec.as_ref().and_then(|s| {
        Some(TextSection {
            addr: s.address(),
            data: s.data().ok()?.to_vec(),
        })
    });
    let text_range = text_sec
        .as_ref()
        .map(|s| (s.address(), s.address().saturating_add(s.size())));

    let mut symbols = symtab_symbols(&file);
    if symbols.is_empty() {
        symbols = kallsyms_symbols(&file)?;
    }
    // Stable: aliases keep their table order.
    symbols.sort_by_key(|s| s.addr);
    Ok(Decoded {
        symbols,
        text,
        text_range,
    })
}

/// Symbols from .symtab with nm-style type letters (unstripped vmlinux).
fn symtab_symbols(file: &object::File) -> Vec<Symbol> {
    let mut out = Vec::new();
    for sym in file.symbols() {
        let Ok(name) = sym.name() else { continue };
        if name.is_empty() || matches!(sym.kind(), SymbolKind::File | SymbolKind::Section) {
            continue;
        }
        let lower = match sym.section() {
            SymbolSection::Absolute => 'a',
            SymbolSection::Section(idx) => match file.section_by_index(idx).map(|s| s.kind()) {
                Ok(SectionKind::Text) => 't',
                Ok(SectionKind::Data | SectionKind::Tls) => 'd',
                Ok(SectionKind::UninitializedData | SectionKind::UninitializedTls) => 'b',
                Ok(SectionKind::ReadOnlyData | SectionKind::ReadOnlyString) => 'r',
                _ => 'n',
            },
            _ => continue, // undefined or common: no address
        };
        let kind = if sym.is_weak() {
            if sym.kind() == SymbolKind::Data {
                'V'
            } else {
                'W'
            }
        } else if sym.is_global() {
            lower.to_ascii_uppercase()
        } else {
            lower
        };
        out.push(Symbol {
            name: name.to_string(),
            addr: sym.address(),
            kind,
        });
    }
    out
}

fn kallsyms_symbols(file: &object::File) -> Result<Vec<Symbol>, Fail> {
    let mut first_err = None;
    // .rodata first (where 6.1 puts them), then any other allocated data section.
    let mut sections: Vec<_> = file.sections().collect();
    sections.sort_by_key(|s| s.name().ok() != Some(".rodata"));
    for sec in sections {
        let is_rodata = sec.name().ok() == Some(".rodata");
        if !is_rodata
            && !matches!(
                sec.kind(),
                SectionKind::ReadOnlyData | SectionKind::Data | SectionKind::ReadOnlyString
            )
        {
            continue;
        }
        let Ok(data) = sec.data() else { continue };
        match kallsyms::decode(data, sec.address()) {
            Ok(s) => return Ok(s),
            Err(why) => {
                first_err.get_or_insert(why);
            }
        }
    }
    Err(Fail::Kallsyms(
        first_err.unwrap_or("the ELF has no .rodata section"),
    ))
}

/// `ffffffff81000000 T _text` as the first non-empty line.
fn looks_like_map(bytes: &[u8]) -> bool {
    let head = &bytes[..bytes.len().min(4096)];
    let Some(line) = head
        .split(|&c| c == b'\n')
        .find(|l| !l.iter().all(u8::is_ascii_whitespace))
    else {
        return false;
    };
    let Ok(line) = std::str::from_utf8(line) else {
        return false;
    };
    let mut it = line.split_ascii_whitespace();
    let (Some(a), Some(k), Some(_)) = (it.next(), it.next(), it.next()) else {
        return false;
    };
    (1..=16).contains(&a.len())
        && a.bytes().all(|c| c.is_ascii_hexdigit())
        && k.len() == 1
        && k.as_bytes()[0].is_ascii_alphabetic()
}

/// Parses System.map / /proc/kallsyms text. Module symbols (`[module]` suffix) are skipped:
/// they are not part of the kernel image and move with every module load.
fn parse_map(bytes: &[u8]) -> Result<Decoded, Fail> {
    let text = std::str::from_utf8(bytes).map_err(|e| Fail::Map(0, format!("not UTF-8: {e}")))?;
    let mut symbols = Vec::new();
    let mut modules = 0usize;
    for (i, line) in text.lines().enumerate() {
        let lineno = i + 1;
        if line.trim().is_empty() {
            continue;
        }
        if line.contains("The real System.map is in") {
            return Err(Fail::Map(
                lineno,
                "this is Debian's stub System.map; load the vmlinuz instead".into(),
            ));
        }
        let mut it = line.split_ascii_whitespace();
        let (Some(a), Some(k), Some(name)) = (it.next(), it.next(), it.next()) else {
            return Err(Fail::Map(
                lineno,
                "expected `ADDRESS TYPE NAME [MODULE]`".into(),
            ));
        };
        let rest = it.next();
        if rest.is_some_and(|m| !(m.starts_with('[') && m.ends_with(']'))) || it.next().is_some() {
            return Err(Fail::Map(lineno, "unexpected text after the name".into()));
        }
        let addr = u64::from_str_radix(a, 16)
            .map_err(|_| Fail::Map(lineno, format!("bad address {a:?}")))?;
        let mut kc = k.chars();
        let (Some(kind), None) = (kc.next(), kc.next()) else {
            return Err(Fail::Map(lineno, format!("bad symbol type {k:?}")));
        };
        if rest.is_some() {
            modules += 1;
            continue;
        }
        symbols.push(Symbol {
            name: name.to_string(),
            addr,
            kind,
        });
    }
    if symbols.is_empty() {
        return Err(Fail::NoSymbols(if modules > 0 {
            "only module symbols in the symbol map"
        } else {
            "the symbol map is empty"
        }));
    }
    if symbols.iter().all(|s| s.addr == 0) {
        return Err(Fail::NoSymbols(
            "all addresses are zero (kptr_restrict: read /proc/kallsyms as root)",
        ));
    }
    symbols.sort_by_key(|s| s.addr);
    let find = |n: &str| symbols.iter().find(|s| s.name == n).map(|s| s.addr);
    let text_range = match (find("_stext").or_else(|| find("_text")), find("_etext")) {
        (Some(a), Some(b)) if a < b => Some((a, b)),
        _ => None,
    };
    Ok(Decoded {
        symbols,
        text: None,
        text_range,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn map_parsing() {
        let m = b"ffffffff81000000 T _text\nffffffff81000000 T startup_64\n\
                  ffffffff81001000 T _stext\nffffffff81002000 t helper\n\
                  ffffffff81f00000 T _etext\nffffffffc0001000 t modfn\t[mymod]\n\n";
        assert!(looks_like_map(m));
        let d = parse_map(m).unwrap();
        assert_eq!(d.symbols.len(), 5);
        assert_eq!(d.symbols[0].name, "_text");
        assert_eq!(d.symbols[1].name, "startup_64");
        assert_eq!(d.text_range, Some((0xffffffff81001000, 0xffffffff81f00000)));
    }

    #[test]
    fn map_errors() {
        let stub = b"ffffffffffffffff B The real System.map is in the linux-image-6.1.0-56-amd64-dbg package\n";
        assert!(matches!(parse_map(stub), Err(Fail::Map(1, _))));
        assert!(matches!(
            parse_map(b"ffffffff81000000 T a\nzzzz T b\n"),
            Err(Fail::Map(2, _))
        ));
        assert!(matches!(
            parse_map(b"ffffffff81000000 T a b c\n"),
            Err(Fail::Map(1, _))
        ));
        assert!(matches!(
            parse_map(b"0000000000000000 T a\n0000000000000000 T b\n"),
            Err(Fail::NoSymbols(_))
        ));
        assert!(matches!(
            parse_map(b"ffffffffc0000000 t a\t[m]\n"),
            Err(Fail::NoSymbols(_))
        ));
        assert!(!looks_like_map(b"hello world"));
        assert!(!looks_like_map(b""));
    }

    #[test]
    fn garbage_and_truncated_inputs() {
        assert!(matches!(decode_any(b""), Err(Fail::NotKernel)));
        assert!(matches!(decode_any(b"\x7fELF\x02\x01"), Err(Fail::Elf(_))));
        assert!(decode_any(XZ_MAGIC).is_err());
        assert!(decode_any(b"\x1f\x8b\x08\x00garbage").is_err());
        assert!(decode_any(b"\x28\xb5\x2f\xfd\x00\x00").is_err());
        // A bzImage header with nonsense payload fields.
        let mut bz = vec![0u8; 0x1000];
        bz[0x1fe] = 0x55;
        bz[0x1ff] = 0xaa;
        bz[0x202..0x206].copy_from_slice(b"HdrS");
        bz[0x206] = 0x0f;
        bz[0x207] = 0x02;
        bz[0x248..0x24c].copy_from_slice(&0xffff_fff0u32.to_le_bytes());
        bz[0x24c..0x250].copy_from_slice(&0xffff_fff0u32.to_le_bytes());
        assert!(matches!(decode_any(&bz), Err(Fail::Unsupported(_))));
        // Valid header pointing at a truncated xz stream.
        bz[0x248..0x24c].copy_from_slice(&0x100u32.to_le_bytes());
        bz[0x24c..0x250].copy_from_slice(&0x10u32.to_le_bytes());
        let p = 5 * 512 + 0x100;
        bz[p..p + 6].copy_from_slice(XZ_MAGIC);
        assert!(matches!(decode_any(&bz), Err(Fail::Decompress("xz", _))));
    }

    #[test]
    fn compressed_elf_roundtrip() {
        // A minimal ELF built with object::write is overkill; check that a compressed
        // non-ELF is rejected and a compressed map is not mistaken for a kernel.
        let mut gz = Vec::new();
        {
            use std::io::Write;
            let mut e = flate2::write::GzEncoder::new(&mut gz, flate2::Compression::fast());
            e.write_all(b"not an elf").unwrap();
            e.finish().unwrap();
        }
        assert!(matches!(decode_any(&gz), Err(Fail::NotKernel)));
        let z = zstd::encode_all(&b"\x7fELFtruncated"[..], 3).unwrap();
        assert!(matches!(decode_any(&z), Err(Fail::Elf(_))));
    }
}
