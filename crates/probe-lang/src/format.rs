//! printf format strings: parsed once at check time, rendered by the
//! [`crate::printer::Printer`].
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

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Format {
    pub pieces: Vec<Piece>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Piece {
    Lit(String),
    Spec(Spec),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Conv {
    Signed,
    Unsigned,
    HexLower,
    HexUpper,
    Str,
    Char,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Flags {
    pub left: bool,
    pub zero: bool,
    pub plus: bool,
    pub space: bool,
    pub alt: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
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
                let s = match arg {
                    Some(Value::Str(s)) => &s[..],
                    _ => "",
                };
                let s = match self.precision {
                    Some(p) => s.char_indices().nth(p).map_or(s, |(i, _)| &s[..i]),
                    None => s,
                };
                return pad(out, "", s, self.width, self.flags.left, false);
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
            Conv::Unsigned | Conv::HexLower | Conv::HexUpper => {
                let n = if self.long { v } else { v as u32 as u64 };
                let s = match self.conv {
                    Conv::Unsigned => n.to_string(),
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
                    f.write_char(match s.conv {
                        Conv::Signed => 'd',
                        Conv::Unsigned => 'u',
                        Conv::HexLower => 'x',
                        Conv::HexUpper => 'X',
                        Conv::Str => 's',
                        Conv::Char => 'c',
                    })?;
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
}
