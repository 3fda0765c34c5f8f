//! printf format strings: parsed once at check time, rendered when output
//! is printed (`probe-output`).
//!
//! Matches bpftrace 0.17 text output: without an `l`/`ll` length modifier the
//! integer conversions `%d %u %x %X` use the low 32 bits (bpftrace hands the
//! 64-bit value to C `printf`), so `printf("%x", -1)` prints `ffffffff`.
//! `%i` is accepted as `%d` (bpftrace 0.17 does not recognise `%i`).
//!
//! Another bpftrace 0.17 quirk reproduced here: `%%` becomes `%` only
//! *before* the last conversion; the text after it (or the whole format if
//! there is none) is printed verbatim, so `printf("%d%%\n", 1)` prints
//! `1%%` while `printf("%%|%d\n", 1)` prints `%|1`.

use crate::value::Value;
use std::fmt::Write;

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Format {
    pub pieces: Vec<Piece>,
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Piece {
    Lit(String),
    Spec(Spec),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Conv {
    Signed,
    Unsigned,
    HexLower,
    HexUpper,
    Str,
    Char,
    /// `%r`: a `buf()` value, non-printable bytes as `\xNN`.
    Buf,
    Octal,
    /// `%p`: `0x`-prefixed hex of all 64 bits, `(nil)` for 0 (glibc).
    Pointer,
}

impl Conv {
    pub fn letter(self) -> char {
        match self {
            Conv::Signed => 'd',
            Conv::Unsigned => 'u',
            Conv::HexLower => 'x',
            Conv::HexUpper => 'X',
            Conv::Str => 's',
            Conv::Char => 'c',
            Conv::Buf => 'r',
            Conv::Octal => 'o',
            Conv::Pointer => 'p',
        }
    }
}

/// bpftrace's rendering of a `kstack`: a newline, then each frame on its
/// own line indented by `indent` spaces (8 in printf, 4 as a map key).
pub fn stack_text(frames: &[std::sync::Arc<str>], indent: usize) -> String {
    let mut s = String::from("\n");
    for f in frames {
        s.extend(std::iter::repeat_n(' ', indent));
        s.push_str(f);
        s.push('\n');
    }
    s
}

/// bpftrace's rendering of a buffer: printable ASCII as is, other bytes
/// as `\xNN` (lower-case hex).
pub fn escape_buf(b: &[u8], out: &mut String) {
    for &c in b {
        if (0x20..0x7f).contains(&c) {
            out.push(c as char);
        } else {
            let _ = write!(out, "\\x{c:02x}");
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct Flags {
    pub left: bool,
    pub zero: bool,
    pub plus: bool,
    pub space: bool,
    pub alt: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Spec {
    pub flags: Flags,
    pub width: usize,
    pub precision: Option<usize>,
    /// `l` or `ll` given: use all 64 bits.
    pub long: bool,
    pub conv: Conv,
}

/// Caps width/precision so a script can't make us allocate gigabytes.
const MAX_WIDTH: usize = 4096;

impl Format {
    pub fn parse(fmt: &str) -> Result<Format, String> {
        let mut pieces = Vec::new();
        let mut lit = String::new();
        // The same literal text with `%%` kept, for the trailing piece.
        let mut raw = String::new();
        let mut it = fmt.chars().peekable();
        while let Some(c) = it.next() {
            if c != '%' {
                lit.push(c);
                raw.push(c);
                continue;
            }
            if it.peek() == Some(&'%') {
                it.next();
                lit.push('%');
                raw.push_str("%%");
                continue;
            }
            let mut text = String::from("%");
            let mut flags = Flags::default();
            while let Some(&f) = it.peek() {
                match f {
                    '-' => flags.left = true,
                    '0' => flags.zero = true,
                    '+' => flags.plus = true,
                    ' ' => flags.space = true,
                    '#' => flags.alt = true,
                    _ => break,
                }
                text.push(f);
                it.next();
            }
            let number = |it: &mut std::iter::Peekable<std::str::Chars>, text: &mut String| {
                let mut n = 0usize;
                while let Some(&d) = it.peek().filter(|d| d.is_ascii_digit()) {
                    n = n
                        .saturating_mul(10)
                        .saturating_add(d as usize - '0' as usize);
                    text.push(d);
                    it.next();
                }
                n
            };
            let width = number(&mut it, &mut text);
            let precision = if it.peek() == Some(&'.') {
                text.push('.');
                it.next();
                Some(number(&mut it, &mut text))
            } else {
                None
            };
            if width > MAX_WIDTH || precision.unwrap_or(0) > MAX_WIDTH {
                return Err(format!("printf: width or precision too large in '{text}'"));
            }
            let mut long = false;
            while it.peek() == Some(&'l') {
                long = true;
                text.push('l');
                it.next();
            }
            let Some(cc) = it.next() else {
                return Err(format!("printf: incomplete format specifier '{text}'"));
            };
            text.push(cc);
            let conv = match cc {
                'd' | 'i' => Conv::Signed,
                'u' => Conv::Unsigned,
                'x' => Conv::HexLower,
                'X' => Conv::HexUpper,
                's' if !long => Conv::Str,
                'c' if !long => Conv::Char,
                'r' if !long => Conv::Buf,
                'o' => Conv::Octal,
                'p' if !long => Conv::Pointer,
                _ => return Err(format!("printf: invalid format specifier '{text}'")),
            };
            if !lit.is_empty() {
                pieces.push(Piece::Lit(std::mem::take(&mut lit)));
            }
            raw.clear();
            pieces.push(Piece::Spec(Spec {
                flags,
                width,
                precision,
                long,
                conv,
            }));
        }
        if !raw.is_empty() {
            pieces.push(Piece::Lit(raw));
        }
        Ok(Format { pieces })
    }

    pub fn specs(&self) -> impl Iterator<Item = &Spec> {
        self.pieces.iter().filter_map(|p| match p {
            Piece::Spec(s) => Some(s),
            Piece::Lit(_) => None,
        })
    }

    /// Renders with `args` (already type checked; mismatches render as 0/"").
    pub fn render(&self, args: &[Value], out: &mut String) {
        let mut args = args.iter();
        for p in &self.pieces {
            match p {
                Piece::Lit(s) => out.push_str(s),
                Piece::Spec(spec) => spec.render(args.next(), out),
            }
        }
    }
}

impl Spec {
    fn render(&self, arg: Option<&Value>, out: &mut String) {
        let v = match arg {
            Some(Value::Int(v)) => *v,
            _ => 0,
        };
        let (sign, mut digits) = match self.conv {
            Conv::Str => {
                let stack;
                let s = match arg {
                    Some(Value::Str(s)) => &s[..],
                    Some(Value::Stack(frames)) => {
                        stack = stack_text(frames, 8);
                        &stack[..]
                    }
                    _ => "",
                };
                let s = match self.precision {
                    Some(p) => s.char_indices().nth(p).map_or(s, |(i, _)| &s[..i]),
                    None => s,
                };
                return pad(out, "", s, self.width, self.flags.left, false);
            }
            Conv::Buf => {
                let mut s = String::new();
                if let Some(Value::Buf(b)) = arg {
                    escape_buf(b, &mut s);
                }
                return pad(out, "", &s, self.width, self.flags.left, false);
            }
            Conv::Char => {
                let mut b = [0u8; 4];
                let c = (v as u8) as char;
                return pad(
                    out,
                    "",
                    c.encode_utf8(&mut b),
                    self.width,
                    self.flags.left,
                    false,
                );
            }
            Conv::Signed => {
                let n = if self.long {
                    v as i64
                } else {
                    v as u32 as i32 as i64
                };
                let sign = if n < 0 {
                    "-"
                } else if self.flags.plus {
                    "+"
                } else if self.flags.space {
                    " "
                } else {
                    ""
                };
                (sign, n.unsigned_abs().to_string())
            }
            Conv::Pointer => {
                let s = if v == 0 {
                    "(nil)".to_string()
                } else {
                    format!("{v:#x}")
                };
                return pad(out, "", &s, self.width, self.flags.left, false);
            }
            Conv::Unsigned | Conv::HexLower | Conv::HexUpper | Conv::Octal => {
                let n = if self.long { v } else { v as u32 as u64 };
                let s = match self.conv {
                    Conv::Unsigned => n.to_string(),
                    Conv::Octal => format!("{n:o}"),
                    Conv::HexLower => format!("{n:x}"),
                    _ => format!("{n:X}"),
                };
                let prefix = match (self.flags.alt && n != 0, self.conv) {
                    (true, Conv::HexLower) => "0x",
                    (true, Conv::HexUpper) => "0X",
                    _ => "",
                };
                (prefix, s)
            }
        };
        if let Some(p) = self.precision {
            // C: precision is the minimum digit count; `%.0d` of 0 is empty.
            if p == 0 && digits == "0" {
                digits.clear();
            }
            while digits.len() < p {
                digits.insert(0, '0');
            }
        }
        let zero = self.flags.zero && !self.flags.left && self.precision.is_none();
        pad(out, sign, &digits, self.width, self.flags.left, zero)
    }
}

fn pad(out: &mut String, sign: &str, body: &str, width: usize, left: bool, zero: bool) {
    let len = sign.len() + body.chars().count();
    let fill = width.saturating_sub(len);
    if left {
        out.push_str(sign);
        out.push_str(body);
        out.extend(std::iter::repeat_n(' ', fill));
    } else if zero {
        out.push_str(sign);
        out.extend(std::iter::repeat_n('0', fill));
        out.push_str(body);
    } else {
        out.extend(std::iter::repeat_n(' ', fill));
        out.push_str(sign);
        out.push_str(body);
    }
}

/// `strftime` for `time(fmt)`, in UTC (the guest's wall clock is not
/// known; bpftrace would use the host's local time zone). Supports the
/// common conversions; unknown ones are copied through.
pub fn strftime(fmt: &str, unix_secs: u64) -> String {
    const DAYS: [&str; 7] = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"];
    const LDAYS: [&str; 7] = [
        "Sunday",
        "Monday",
        "Tuesday",
        "Wednesday",
        "Thursday",
        "Friday",
        "Saturday",
    ];
    const MONS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    const LMONS: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    let days = unix_secs / 86400;
    let secs = unix_secs % 86400;
    let (h, mi, sec) = (secs / 3600, secs / 60 % 60, secs % 60);
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy_mar = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy_mar + 2) / 153;
    let d = doy_mar - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let cum = [0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334];
    let yday = cum[(m - 1) as usize] + d + i64::from(leap && m > 2);
    let wday = ((days + 4) % 7) as usize;
    let mut out = String::new();
    let mut it = fmt.chars();
    while let Some(c) = it.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let _ = match it.next() {
            Some('Y') => write!(out, "{y}"),
            Some('y') => write!(out, "{:02}", y.rem_euclid(100)),
            Some('m') => write!(out, "{m:02}"),
            Some('d') => write!(out, "{d:02}"),
            Some('e') => write!(out, "{d:2}"),
            Some('H') => write!(out, "{h:02}"),
            Some('I') => write!(out, "{:02}", (h + 11) % 12 + 1),
            Some('M') => write!(out, "{mi:02}"),
            Some('S') => write!(out, "{sec:02}"),
            Some('j') => write!(out, "{yday:03}"),
            Some('a') => write!(out, "{}", DAYS[wday]),
            Some('A') => write!(out, "{}", LDAYS[wday]),
            Some('b') | Some('h') => write!(out, "{}", MONS[(m - 1) as usize]),
            Some('B') => write!(out, "{}", LMONS[(m - 1) as usize]),
            Some('p') => write!(out, "{}", if h < 12 { "AM" } else { "PM" }),
            Some('T') => write!(out, "{h:02}:{mi:02}:{sec:02}"),
            Some('R') => write!(out, "{h:02}:{mi:02}"),
            Some('D') => write!(out, "{m:02}/{d:02}/{:02}", y.rem_euclid(100)),
            Some('F') => write!(out, "{y}-{m:02}-{d:02}"),
            Some('s') => write!(out, "{unix_secs}"),
            Some('Z') => write!(out, "UTC"),
            Some('z') => write!(out, "+0000"),
            Some('n') => {
                out.push('\n');
                Ok(())
            }
            Some('t') => {
                out.push('\t');
                Ok(())
            }
            Some('%') => write!(out, "%"),
            Some(o) => write!(out, "%{o}"),
            None => write!(out, "%"),
        };
    }
    out
}

impl std::fmt::Display for Format {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let last = self.pieces.len().saturating_sub(1);
        for (i, p) in self.pieces.iter().enumerate() {
            match p {
                Piece::Lit(s) if i == last => f.write_str(s)?,
                Piece::Lit(s) => f.write_str(&s.replace('%', "%%"))?,
                Piece::Spec(s) => {
                    f.write_char('%')?;
                    for (on, c) in [
                        (s.flags.left, '-'),
                        (s.flags.zero, '0'),
                        (s.flags.plus, '+'),
                        (s.flags.space, ' '),
                        (s.flags.alt, '#'),
                    ] {
                        if on {
                            f.write_char(c)?;
                        }
                    }
                    if s.width > 0 {
                        write!(f, "{}", s.width)?;
                    }
                    if let Some(p) = s.precision {
                        write!(f, ".{p}")?;
                    }
                    if s.long {
                        f.write_char('l')?;
                    }
                    f.write_char(s.conv.letter())?;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(fmt: &str, args: &[Value]) -> String {
        let mut s = String::new();
        Format::parse(fmt).unwrap().render(args, &mut s);
        s
    }

    fn i(v: i64) -> Value {
        Value::Int(v as u64)
    }

    fn s(v: &str) -> Value {
        Value::Str(v.into())
    }

    // Expected strings captured from bpftrace 0.17 on this host, e.g.
    // `bpftrace -e 'BEGIN { printf("%d|%u|%x|...\n", 5000000000, ...); exit(); }'`.
    #[test]
    fn matches_bpftrace_017() {
        assert_eq!(render("%c|%%|%d\n", &[i(65), i(1)]), "A|%|1\n");
        assert_eq!(
            render(
                "%d|%u|%x|%ld|%lx|%lu|%llx|%5x|%-8X|%c|%lld|%lX\n",
                &[
                    i(5000000000),
                    i(5000000000),
                    i(5000000000),
                    i(5000000000),
                    i(5000000000),
                    i(-1),
                    i(-1),
                    i(255),
                    i(255),
                    i(0x141),
                    i(-2),
                    i(255)
                ]
            ),
            "705032704|705032704|2a05f200|5000000000|12a05f200|18446744073709551615|ffffffffffffffff|   ff|FF      |A|-2|FF\n"
        );
        assert_eq!(
            render(
                "%d%%|%5s|%-5d|%x|%u|%d\n",
                &[i(1), s("abcdefg"), i(-3), i(-1), i(-1), i(-1)]
            ),
            "1%|abcdefg|-3   |ffffffff|4294967295|-1\n"
        );
        assert_eq!(render("%X|\n", &[i(255)]), "FF|\n");
        assert_eq!(render("%d%%\n", &[i(1)]), "1%%\n");
        assert_eq!(render("abc%%\n", &[]), "abc%%\n");
        assert_eq!(render("a%%b%d\n", &[i(1)]), "a%b1\n");
        assert_eq!(render("%d%%%%\n", &[i(1)]), "1%%%%\n");
        assert_eq!(render("%s|%c\n", &[s("ab"), i(66)]), "ab|B\n");
    }

    #[test]
    fn widths_and_flags() {
        assert_eq!(
            render(
                "%-10s|%5d|%08x|%u|%i",
                &[s("ab"), i(42), i(255), i(7), i(-3)]
            ),
            "ab        |   42|000000ff|7|-3"
        );
        assert_eq!(
            render("%05d|%-5d|%.3s|%#x", &[i(-42), i(7), s("abcdef"), i(255)]),
            "-0042|7    |abc|0xff"
        );
    }

    #[test]
    fn parse_errors() {
        assert!(Format::parse("%q").is_err());
        assert!(Format::parse("abc %").is_err());
        assert!(Format::parse("%ls").is_err());
        assert!(Format::parse("%99999999999d").is_err());
        assert_eq!(Format::parse("a%%b").unwrap().specs().count(), 0);
    }

    // Expected strings from GNU `date -u -d @N +FORMAT`.
    #[test]
    fn strftime_matches_gnu_date() {
        let f1 = "%Y-%m-%d %H:%M:%S|%a %b %j %y %p %%";
        let f2 = "%A %B %e %I %T %D %F %R %s %Z %z";
        assert_eq!(
            strftime(f1, 1795000000),
            "2026-11-18 11:06:40|Wed Nov 322 26 AM %"
        );
        assert_eq!(
            strftime(f1, 951782400),
            "2000-02-29 00:00:00|Tue Feb 060 00 AM %"
        );
        assert_eq!(
            strftime(f2, 1795000000),
            "Wednesday November 18 11 11:06:40 11/18/26 2026-11-18 11:06 1795000000 UTC +0000"
        );
        assert_eq!(
            strftime(f2, 951782400),
            "Tuesday February 29 12 00:00:00 02/29/00 2000-02-29 00:00 951782400 UTC +0000"
        );
        assert_eq!(strftime("%q%", 0), "%q%");
    }

    // From `bpftrace -e 'BEGIN { printf("%p|%p|%o|...") }'` (tests/golden/printf_conv).
    #[test]
    fn pointer_octal_buf() {
        assert_eq!(
            render("%p|%p|%o|%lo|", &[i(255), i(0), i(8), i(64)]),
            "0xff|(nil)|10|100|"
        );
        let b = Value::Buf(std::sync::Arc::from(vec![b'a', 0, 0x7f, b'"']));
        assert_eq!(render("%r|", &[b]), "a\\x00\\x7f\"|");
    }
}
