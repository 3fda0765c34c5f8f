//! Preprocessing tokens of header lines, and the logical lines of a
//! header (comments out, continued lines joined).

use std::rc::Rc;

/// A preprocessing token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Kind {
    Ident,
    Number,
    /// A character or string literal, quotes included.
    Literal,
    Punct,
}

#[derive(Clone, Debug)]
pub(super) struct PTok {
    pub(super) kind: Kind,
    pub(super) text: String,
    /// Whitespace before it (for `#` stringification and `(` after a name).
    pub(super) space: bool,
    /// Macros not to expand again in this token (C's hide set).
    pub(super) hide: Rc<Vec<String>>,
}

const PUNCTS: &[&str] = &[
    "...", "<<=", ">>=", "##", "<<", ">>", "<=", ">=", "==", "!=", "&&", "||", "->", "++", "--",
    "+=", "-=", "*=", "/=", "%=", "&=", "|=", "^=",
];

pub(super) fn tokenize(s: &str) -> Vec<PTok> {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    let mut space = false;
    let hide = Rc::new(Vec::new());
    while i < b.len() {
        let c = b[i];
        if c.is_ascii_whitespace() {
            space = true;
            i += 1;
            continue;
        }
        let start = i;
        let kind = if c.is_ascii_alphabetic() || c == b'_' {
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
                i += 1;
            }
            // `L'x'`, `u"x"`, `u8"x"`: an encoding prefix of a literal.
            if matches!(&s[start..i], "L" | "u" | "U" | "u8")
                && let Some(&q @ (b'\'' | b'"')) = b.get(i)
            {
                i += 1;
                while i < b.len() && b[i] != q {
                    i += if b[i] == b'\\' { 2 } else { 1 };
                }
                i = (i + 1).min(b.len());
                Kind::Literal
            } else {
                Kind::Ident
            }
        } else if c.is_ascii_digit() || (c == b'.' && b.get(i + 1).is_some_and(u8::is_ascii_digit))
        {
            // A pp-number: digits, letters, '.', and a sign after an exponent.
            i += 1;
            while i < b.len() {
                let d = b[i];
                let sign =
                    (d == b'+' || d == b'-') && matches!(b[i - 1], b'e' | b'E' | b'p' | b'P');
                if !(sign || d.is_ascii_alphanumeric() || d == b'_' || d == b'.') {
                    break;
                }
                i += 1;
            }
            Kind::Number
        } else if c == b'"' || c == b'\'' {
            i += 1;
            while i < b.len() && b[i] != c {
                i += if b[i] == b'\\' { 2 } else { 1 };
            }
            i = (i + 1).min(b.len());
            Kind::Literal
        } else {
            let p = PUNCTS
                .iter()
                .find(|p| b[i..].starts_with(p.as_bytes()))
                .map_or(1, |p| p.len());
            // One character, at a char boundary (headers may hold UTF-8).
            let mut n = p;
            while !s.is_char_boundary(i + n) {
                n += 1;
            }
            i += n;
            Kind::Punct
        };
        out.push(PTok {
            kind,
            text: s[start..i].to_string(),
            space,
            hide: hide.clone(),
        });
        space = false;
    }
    out
}

/// The text with comments replaced by a space and continued lines joined;
/// each logical line with its first physical line number.
pub(super) fn logical_lines(src: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut cur_line = 1;
    let mut line = 1;
    let mut in_comment = false;
    let b = src.as_bytes();
    let mut i = 0;
    let mut lit: Option<u8> = None;
    while i < b.len() {
        let c = b[i];
        if c == b'\\' && b.get(i + 1) == Some(&b'\n') {
            i += 2;
            line += 1;
            continue;
        }
        if c == b'\n' {
            line += 1;
            i += 1;
            lit = None;
            if !in_comment {
                out.push((cur_line, std::mem::take(&mut cur)));
                cur_line = line;
            }
            continue;
        }
        if in_comment {
            if b[i..].starts_with(b"*/") {
                in_comment = false;
                i += 2;
            } else {
                i += 1;
            }
            continue;
        }
        if let Some(q) = lit {
            if c == b'\\' && i + 1 < b.len() {
                cur.push(c as char);
                i += 1;
            } else if c == q {
                lit = None;
            }
        } else if b[i..].starts_with(b"/*") {
            in_comment = true;
            cur.push(' ');
            i += 2;
            continue;
        } else if b[i..].starts_with(b"//") {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
            continue;
        } else if c == b'"' || c == b'\'' {
            lit = Some(c);
        }
        // Whole UTF-8 sequences are copied byte by byte into a String.
        let ch_len = src[i..].chars().next().map_or(1, char::len_utf8);
        cur.push_str(&src[i..i + ch_len]);
        i += ch_len;
    }
    if !cur.is_empty() {
        out.push((cur_line, cur));
    }
    out
}

pub(super) fn number(v: &str) -> PTok {
    PTok {
        kind: Kind::Number,
        text: v.into(),
        space: true,
        hide: Rc::new(Vec::new()),
    }
}

pub(super) fn punct(v: &str) -> PTok {
    PTok {
        kind: Kind::Punct,
        text: v.into(),
        space: false,
        hide: Rc::new(Vec::new()),
    }
}
