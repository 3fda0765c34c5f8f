//! Locating and decoding the kallsyms tables inside a (stripped) kernel image.
//!
//! # Layout
//!
//! `scripts/kallsyms.c` emits these tables into `.rodata`, each label aligned to 8 bytes
//! (`.balign 8` on 64-bit). Linux 6.1 (this crate's reference) emits, in this order:
//!
//! ```text
//! kallsyms_offsets        s32[num_syms]
//! kallsyms_relative_base  u64
//! kallsyms_num_syms       u32
//! kallsyms_names          per symbol: length (1 byte, or 2 bytes when the first has bit 0x80:
//!                         (b0 & 0x7f) | (b1 << 7)), then `length` token indices
//! kallsyms_markers        u32[(num_syms + 255) / 256]: byte offset in names of every 256th entry
//! kallsyms_token_table    256 NUL-terminated strings
//! kallsyms_token_index    u16[256]: offset of each token in token_table
//! ```
//!
//! 6.2 inserts `kallsyms_seqs_of_names` (3 bytes per symbol) after the markers, and 6.4 moves
//! offsets and relative_base after the token index. Both variants are accepted.
//!
//! Expanding a name's tokens gives the type character (`T`, `t`, `D`, ...) followed by the name.
//! Addresses (kernel/kallsyms.c, `CONFIG_KALLSYMS_BASE_RELATIVE`): with
//! `KALLSYMS_ABSOLUTE_PERCPU` (x86_64 SMP) a non-negative offset is an absolute value (per-cpu
//! variables) and a negative one means `relative_base - 1 - offset`; without it every offset is
//! an unsigned displacement from `relative_base`. Only the absolute-percpu scheme produces
//! negative offsets, so that is how the scheme is told apart.
//!
//! # Search strategy
//!
//! Nothing is named in a stripped image, so the tables are found by their shape:
//!
//! 1. Every character used in some symbol name keeps a single-character token at the index equal
//!    to its value (kallsyms.c only reuses unused slots for compressed tokens). Digits are always
//!    used, so the token table contains `"0\0" "1\0" ... "9\0"` as tokens 48..57. Each occurrence
//!    of that byte string is a candidate.
//! 2. From a candidate, walk forward over tokens 58..255; the token index follows (aligned).
//!    Its entry 48 locates the table start, and every one of its 256 entries must point just
//!    past the previous token's NUL, which rules out chance matches.
//! 3. Walking back from the token table in 8-byte steps, a `num_syms` candidate is a small u32
//!    followed by 4 zero padding bytes. Decoding that many name entries must end (after
//!    alignment) exactly at markers that agree with the decoded entry offsets, and those markers
//!    (plus `seqs_of_names` on 6.2+) must end exactly at the token table.
//! 4. The offsets and relative base sit right before `num_syms` (<= 6.3) or right after the
//!    token index (6.4+). Accept the layout whose relative base is a high-half kernel address
//!    and whose decoded addresses are sorted ascending, as kallsyms.c sorts them.
//!
//! Every read is bounds-checked; failures name the table that was not found.

use crate::Symbol;

/// Alignment of each kallsyms table on 64-bit kernels.
const ALIGN: u64 = 8;
/// Longest token we accept; real tokens are a few characters, KSYM_NAME_LEN is 512.
const MAX_TOKEN_LEN: usize = 512;
/// Upper bound on the symbol count, to keep garbage from driving huge loops or allocations.
const MAX_SYMS: u32 = 16 << 20;
/// How far before the token table the names may start.
const MAX_NAMES_SPAN: usize = 256 << 20;
const DIGIT_TOKENS: &[u8] = b"0\x001\x002\x003\x004\x005\x006\x007\x008\x009\x00";

/// Why the tables could not be decoded: names the missing piece.
pub(crate) type Why = &'static str;

struct TokenTable {
    /// Offset of the table in the searched data.
    start: usize,
    /// Offset of `kallsyms_token_index`.
    index_start: usize,
    /// Byte range of each token in the searched data.
    tokens: Vec<(usize, usize)>,
}

struct Names {
    start: usize,
    count: usize,
    /// Offset in the searched data of `kallsyms_num_syms`.
    num_syms_at: usize,
}

fn u16_at(data: &[u8], off: usize) -> Option<u16> {
    let b = data.get(off..off.checked_add(2)?)?;
    Some(u16::from_le_bytes([b[0], b[1]]))
}

fn u32_at(data: &[u8], off: usize) -> Option<u32> {
    let b = data.get(off..off.checked_add(4)?)?;
    Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

fn u64_at(data: &[u8], off: usize) -> Option<u64> {
    let b = data.get(off..off.checked_add(8)?)?;
    let mut a = [0u8; 8];
    a.copy_from_slice(b);
    Some(u64::from_le_bytes(a))
}

/// Rounds data offset `off` up so that `base + off` is aligned (alignment is by address).
fn align_up(base: u64, off: usize) -> Option<usize> {
    let addr = base.checked_add(off as u64)?;
    let pad = (ALIGN - addr % ALIGN) % ALIGN;
    off.checked_add(pad as usize)
}

fn is_aligned(base: u64, off: usize) -> bool {
    base.wrapping_add(off as u64).is_multiple_of(ALIGN)
}

/// Length in bytes of the NUL-terminated string at `off` (not counting the NUL).
fn cstr_len(data: &[u8], off: usize) -> Option<usize> {
    let end = data.len().min(off.checked_add(MAX_TOKEN_LEN + 1)?);
    memchr::memchr(0, data.get(off..end)?)
}

/// Validates a token table whose token 48 ("0") starts at `digit0`.
fn token_table_at(data: &[u8], base: u64, digit0: usize) -> Option<TokenTable> {
    // Walk tokens 48..=255 to find the end of the table.
    let mut pos = digit0;
    for _ in 48..256 {
        pos = pos.checked_add(cstr_len(data, pos)? + 1)?;
    }
    // The index label is aligned; also accept an unaligned index in case a kernel drops that.
    let mut candidates = vec![align_up(base, pos)?];
    if candidates[0] != pos {
        candidates.push(pos);
    }
    for index_start in candidates {
        if let Some(t) = check_token_index(data, digit0, pos, index_start) {
            return Some(t);
        }
    }
    None
}

fn check_token_index(
    data: &[u8],
    digit0: usize,
    table_end: usize,
    index_start: usize,
) -> Option<TokenTable> {
    let mut index = [0usize; 256];
    for (i, slot) in index.iter_mut().enumerate() {
        *slot = u16_at(data, index_start + 2 * i)? as usize;
    }
    if index[0] != 0 {
        return None;
    }
    let start = digit0.checked_sub(index[48])?;
    let mut tokens = Vec::with_capacity(256);
    let mut expect = start;
    for &off in &index {
        let s = start.checked_add(off)?;
        if s != expect {
            return None;
        }
        let len = cstr_len(data, s)?;
        tokens.push((s, s + len));
        expect = s + len + 1;
    }
    if expect != table_end {
        return None;
    }
    Some(TokenTable {
        start,
        index_start,
        tokens,
    })
}

/// Reads the length prefix of a names entry at `pos`: (token count, header size).
fn entry_len(data: &[u8], pos: usize) -> Option<(usize, usize)> {
    let b0 = *data.get(pos)?;
    if b0 & 0x80 != 0 {
        let b1 = *data.get(pos + 1)?;
        Some((((b0 & 0x7f) as usize) | ((b1 as usize) << 7), 2))
    } else {
        Some((b0 as usize, 1))
    }
}

/// Walks `count` names entries starting at `start` without going past `limit`.
/// Returns the end offset and the offsets (relative to `start`) of every 256th entry.
/// `budget` caps the total entries walked over all candidates, so crafted input can't make
/// the candidate search quadratic.
fn walk_names(
    data: &[u8],
    start: usize,
    count: usize,
    limit: usize,
    budget: &mut usize,
) -> Option<(usize, Vec<u32>)> {
    *budget = budget.checked_sub(count)?;
    let mut markers = Vec::with_capacity(count.div_ceil(256));
    let mut pos = start;
    for i in 0..count {
        if i % 256 == 0 {
            markers.push(u32::try_from(pos - start).ok()?);
        }
        let (len, hdr) = entry_len(data, pos)?;
        if len == 0 {
            return None; // every entry holds at least the type character
        }
        pos = pos.checked_add(hdr + len)?;
        if pos > limit {
            return None;
        }
    }
    Some((pos, markers))
}

/// Finds num_syms/names/markers ending at the token table.
fn find_names(data: &[u8], base: u64, tt: &TokenTable) -> Option<Names> {
    let t = tt.start;
    let lowest = t.saturating_sub(MAX_NAMES_SPAN);
    // First aligned position at or below t - 8.
    let mut x = t.checked_sub(8)?;
    x -= (base.wrapping_add(x as u64) % ALIGN) as usize;
    let mut budget = 4 * MAX_SYMS as usize;
    loop {
        if let Some(n) = names_at(data, base, t, x, &mut budget) {
            return Some(n);
        }
        if x < lowest + 8 {
            return None;
        }
        x -= 8;
    }
}

fn names_at(data: &[u8], base: u64, t: usize, x: usize, budget: &mut usize) -> Option<Names> {
    let n = u32_at(data, x)?;
    if n == 0 || n > MAX_SYMS || u32_at(data, x + 4)? != 0 {
        return None;
    }
    let n = n as usize;
    let names_start = x + 8;
    let nmarkers = n.div_ceil(256);
    // Cheap size check before decoding: >= 2 bytes per entry plus markers.
    if t.checked_sub(names_start)? < 2 * n + 4 * nmarkers {
        return None;
    }
    let (names_end, offs) = walk_names(data, names_start, n, t, budget)?;
    let markers_start = align_up(base, names_end)?;
    for (i, &want) in offs.iter().enumerate() {
        if u32_at(data, markers_start + 4 * i)? != want {
            return None;
        }
    }
    let after_markers = align_up(base, markers_start + 4 * nmarkers)?;
    // 6.1: token table right after the markers; 6.2+: seqs_of_names (3 bytes each) in between.
    let ok = after_markers == t || align_up(base, after_markers + 3 * n)? == t;
    ok.then_some(Names {
        start: names_start,
        count: n,
        num_syms_at: x,
    })
}

/// Decodes `count` offsets at `off` against the relative base at `base_at`; None unless the
/// result is a plausible sorted address table.
fn decode_addrs(data: &[u8], off: usize, base_at: usize, count: usize) -> Option<Vec<u64>> {
    let relative_base = u64_at(data, base_at)?;
    // A 64-bit kernel lives in the canonical upper half.
    if relative_base >> 47 != 0x1ffff {
        return None;
    }
    let raw = data.get(off..off.checked_add(count.checked_mul(4)?)?)?;
    let offsets: Vec<i32> = raw
        .chunks_exact(4)
        .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    let absolute_percpu = offsets.iter().any(|&o| o < 0);
    let addrs: Vec<u64> = offsets
        .iter()
        .map(|&o| {
            if !absolute_percpu {
                relative_base.wrapping_add(o as u32 as u64)
            } else if o >= 0 {
                o as u64
            } else {
                relative_base.wrapping_sub(1).wrapping_sub(o as i64 as u64)
            }
        })
        .collect();
    if addrs.windows(2).any(|w| w[0] > w[1]) {
        return None;
    }
    // The relative base is the lowest non-absolute address, so some symbol must sit on it.
    if !addrs.contains(&relative_base) {
        return None;
    }
    Some(addrs)
}

fn find_addrs(data: &[u8], base: u64, tt: &TokenTable, names: &Names) -> Option<Vec<u64>> {
    let n = names.count;
    let offsets_span = align_up(0, 4 * n)?; // 8-aligned size of the offsets table
    // <= 6.3: offsets, relative_base, num_syms.
    if let Some(base_at) = names.num_syms_at.checked_sub(8)
        && let Some(off) = base_at.checked_sub(offsets_span)
        && let Some(a) = decode_addrs(data, off, base_at, n)
    {
        return Some(a);
    }
    // 6.4+: token_index, offsets, relative_base.
    let off = align_up(base, tt.index_start + 512)?;
    let base_at = align_up(base, off + 4 * n)?;
    decode_addrs(data, off, base_at, n)
}

fn expand(data: &[u8], tt: &TokenTable, names: &Names, addrs: &[u64]) -> Option<Vec<Symbol>> {
    let mut out = Vec::with_capacity(names.count);
    let mut pos = names.start;
    let mut buf = Vec::with_capacity(128);
    for &addr in addrs.iter().take(names.count) {
        let (len, hdr) = entry_len(data, pos)?;
        let toks = data.get(pos + hdr..pos + hdr + len)?;
        pos += hdr + len;
        buf.clear();
        for &t in toks {
            let (s, e) = tt.tokens[t as usize];
            buf.extend_from_slice(data.get(s..e)?);
        }
        let (&kind, name) = buf.split_first()?;
        out.push(Symbol {
            name: String::from_utf8_lossy(name).into_owned(),
            addr,
            kind: kind as char,
        });
    }
    Some(out)
}

/// Finds and decodes the kallsyms tables in `data`, which is loaded at address `base`
/// (used only for alignment). Symbols come back in table order (sorted by address).
pub(crate) fn decode(data: &[u8], base: u64) -> Result<Vec<Symbol>, Why> {
    let mut why: Why = "no token table (digit tokens \"0\"..\"9\" not found)";
    for digit0 in memchr::memmem::find_iter(data, DIGIT_TOKENS) {
        let Some(tt) = token_table_at(data, base, digit0) else {
            continue;
        };
        if !is_aligned(base, tt.start) {
            continue;
        }
        why = "kallsyms_names/kallsyms_markers not found before the token table";
        let Some(names) = find_names(data, base, &tt) else {
            continue;
        };
        why = "kallsyms_offsets/kallsyms_relative_base not found (or addresses not sorted)";
        let Some(addrs) = find_addrs(data, base, &tt, &names) else {
            continue;
        };
        why = "kallsyms_names could not be expanded";
        if let Some(syms) = expand(data, &tt, &names, &addrs) {
            return Ok(syms);
        }
    }
    Err(why)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Builds a 6.1-layout kallsyms blob (base address 0) for `syms` (must be sorted).
    /// Tokens: every byte value is its own single-char token, except that a few unused
    /// slots get multi-char tokens, as kallsyms.c does.
    pub(crate) fn build_blob(syms: &[(u64, char, &str)], layout_64: bool, big: bool) -> Vec<u8> {
        let mut tokens: Vec<Vec<u8>> = (0..256u16).map(|i| vec![i as u8]).collect();
        // Slot 0 can't be a 1-char token ("\0"), give it a compressed token, like kallsyms.c.
        tokens[0] = b"_t".to_vec();
        tokens[1] = b"sys_".to_vec();
        tokens[2] = b"".to_vec(); // empty token: must still be handled
        let encode = |kind: char, name: &str| -> Vec<u8> {
            let full = format!("{kind}{name}");
            let mut out = Vec::new();
            let b = full.as_bytes();
            let mut i = 0;
            while i < b.len() {
                if b[i..].starts_with(b"sys_") {
                    out.push(1);
                    i += 4;
                } else if b[i..].starts_with(b"_t") {
                    out.push(0);
                    i += 2;
                } else {
                    out.push(b[i]);
                    i += 1;
                }
            }
            out
        };
        let pad = |v: &mut Vec<u8>| {
            while !v.len().is_multiple_of(8) {
                v.push(0);
            }
        };
        let relative_base = syms
            .iter()
            .map(|s| s.0)
            .filter(|&a| a >= 0xffff_8000_0000_0000)
            .min()
            .unwrap();
        let mut offsets = Vec::new();
        for &(a, _, _) in syms {
            let o: i32 = if a < 0x1_0000_0000 {
                a as i32
            } else {
                (relative_base as i64 - a as i64 - 1) as i32
            };
            offsets.extend_from_slice(&o.to_le_bytes());
        }
        pad(&mut offsets);
        let mut names = Vec::new();
        let mut markers = Vec::new();
        for (i, &(_, k, n)) in syms.iter().enumerate() {
            if i % 256 == 0 {
                markers.extend_from_slice(&(names.len() as u32).to_le_bytes());
            }
            let e = encode(k, n);
            if big && (e.len() >= 0x80 || i % 3 == 0) {
                names.push(0x80 | (e.len() & 0x7f) as u8);
                names.push((e.len() >> 7) as u8);
            } else {
                names.push(e.len() as u8);
            }
            names.extend_from_slice(&e);
        }
        let mut tt = Vec::new();
        let mut index = Vec::new();
        for t in &tokens {
            index.extend_from_slice(&(tt.len() as u16).to_le_bytes());
            tt.extend_from_slice(t);
            tt.push(0);
        }
        let mut blob = vec![0xaau8; 24]; // unrelated leading data
        let mut head = Vec::new();
        head.extend_from_slice(&offsets);
        head.extend_from_slice(&relative_base.to_le_bytes());
        let mut mid = Vec::new();
        mid.extend_from_slice(&(syms.len() as u32).to_le_bytes());
        pad(&mut mid);
        mid.extend_from_slice(&names);
        pad(&mut mid);
        mid.extend_from_slice(&markers);
        pad(&mut mid);
        if layout_64 {
            mid.extend(std::iter::repeat_n(0u8, 3 * syms.len()));
            pad(&mut mid);
        }
        mid.extend_from_slice(&tt);
        pad(&mut mid);
        mid.extend_from_slice(&index);
        pad(&mut mid);
        if layout_64 {
            blob.extend_from_slice(&mid);
            blob.extend_from_slice(&head);
        } else {
            blob.extend_from_slice(&head);
            blob.extend_from_slice(&mid);
        }
        blob.extend_from_slice(&[0x55; 13]);
        blob
    }

    pub(crate) fn sample_syms(n: usize) -> Vec<(u64, char, String)> {
        let mut v = vec![
            (0u64, 'A', "fixed_percpu_data".to_string()),
            (0x1000, 'A', "cpu_number".to_string()),
            (0xffff_ffff_8100_0000, 'T', "_text".to_string()),
            (0xffff_ffff_8100_0000, 'T', "startup_64".to_string()),
        ];
        for i in 0..n {
            let kind = if i % 2 == 0 { 'T' } else { 't' };
            v.push((
                0xffff_ffff_8100_1000 + 0x100 * i as u64,
                kind,
                format!("x64_sys_fn{i}_text{}", "x".repeat(i % 50)),
            ));
        }
        v.push((0xffff_ffff_8200_0000, 'D', "some_data".to_string()));
        v
    }

    fn check(layout_64: bool, big: bool, n: usize) {
        let owned = sample_syms(n);
        let syms: Vec<(u64, char, &str)> =
            owned.iter().map(|(a, k, s)| (*a, *k, s.as_str())).collect();
        let blob = build_blob(&syms, layout_64, big);
        let got = decode(&blob, 0).expect("decode");
        assert_eq!(got.len(), syms.len());
        for (g, w) in got.iter().zip(&syms) {
            assert_eq!((g.addr, g.kind, g.name.as_str()), (w.0, w.1, w.2));
        }
    }

    #[test]
    fn decodes_61_layout() {
        check(false, false, 1000);
    }

    #[test]
    fn decodes_64_layout() {
        check(true, false, 700);
    }

    #[test]
    fn decodes_big_symbol_lengths() {
        check(false, true, 300);
    }

    #[test]
    fn small_table() {
        check(false, false, 3);
    }

    #[test]
    fn truncated_and_garbage_give_errors() {
        let owned = sample_syms(600);
        let syms: Vec<(u64, char, &str)> =
            owned.iter().map(|(a, k, s)| (*a, *k, s.as_str())).collect();
        let blob = build_blob(&syms, false, false);
        // Every truncation point must fail cleanly or decode (never panic).
        for cut in (0..blob.len()).step_by(97) {
            let _ = decode(&blob[..cut], 0);
            let _ = decode(&blob[cut..], 0);
        }
        // Corrupt a marker: must not decode garbage.
        let mut bad = blob.clone();
        let digits = memchr::memmem::find(&bad, DIGIT_TOKENS).unwrap();
        // Flip bytes across the names/markers region.
        for b in bad[digits - 40..digits - 8].iter_mut() {
            *b ^= 0x5a;
        }
        assert!(decode(&bad, 0).is_err());
        assert!(decode(b"", 0).is_err());
        assert!(decode(DIGIT_TOKENS, 0).is_err());
        let junk: Vec<u8> = (0..100_000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        assert!(decode(&junk, 0).is_err());
    }
}
