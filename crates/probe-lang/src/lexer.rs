//! Pass 1: lexer. Turns source bytes into [`Token`]s with spans.
//!
//! Like bpftrace's flex scanner, lexing is slightly context dependent: an
//! attach point such as `kprobe:vfs_*+0x10` is not a sequence of ordinary
//! tokens (`*` and `+` would be operators), so the parser asks for it
//! explicitly with [`Lexer::attach_point`] when it expects one.

use std::collections::VecDeque;

use crate::diag::Span;

/// An object-like macro (from the preprocessor's `#define`): its
/// replacement text and where it was defined.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Macro {
    pub value: String,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Tok {
    Ident(String),
    /// `@name` (name may be empty: `@`).
    Map(String),
    /// `$name`.
    Var(String),
    Int(u64),
    Str(String),
    /// Punctuation / operator, e.g. `"<<="`... stored as its text.
    Punct(&'static str),
    Eof,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Token {
    pub tok: Tok,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LexError {
    pub span: Span,
    pub message: String,
}

// Longest first so that maximal munch works with a simple prefix scan.
const PUNCTS: &[&str] = &[
    "<<=", ">>=", "++", "--", "+=", "-=", "*=", "/=", "%=", "&=", "|=", "^=", "<<", ">>", "<=",
    ">=", "==", "->", "!=", "&&", "||", "+", "-", "*", "/", "%", "&", "|", "^", "~", "!", "<", ">",
    "=", "(", ")", "{", "}", "[", "]", ",", ";", "?", ":", ".",
];

/// How deeply macros may expand inside macros (C forbids recursion; this
/// bounds chains such as `#define A B` / `#define B C` ...).
const MAX_MACRO_DEPTH: usize = 16;

pub struct Lexer<'s> {
    src: &'s str,
    pos: usize,
    /// `#define`d macros: name, value, and the byte at which an `#undef`
    /// ended it (from the preprocessor).
    macros: &'s [(String, Macro, Option<usize>)],
    /// Tokens of a macro expansion not yet returned.
    pending: VecDeque<Token>,
    /// In a macro's value: the macros being expanded (not expanded again,
    /// as in C) and the offset of the use in the file (which decides which
    /// macros are in force).
    expanding: Vec<String>,
    use_at: Option<usize>,
}

impl<'s> Lexer<'s> {
    /// A first line starting with `#!` at byte 0 (`#!/usr/bin/env vmprobe`)
    /// is skipped, as bpftrace does, so scripts can be executables. Its
    /// newline is kept, so later spans (byte offsets into `src`) still give
    /// the right line numbers.
    pub fn new(src: &'s str) -> Self {
        let pos = if src.starts_with("#!") {
            src.find('\n').unwrap_or(src.len())
        } else {
            0
        };
        Lexer {
            src,
            pos,
            macros: &[],
            pending: VecDeque::new(),
            expanding: Vec::new(),
            use_at: None,
        }
    }

    /// A lexer that expands the object-like macros the preprocessor found.
    pub fn with_macros(src: &'s str, macros: &'s [(String, Macro, Option<usize>)]) -> Self {
        Lexer {
            macros,
            ..Lexer::new(src)
        }
    }

    /// The macro `name` in force at byte `at` (defined before it and not
    /// yet `#undef`ed), unless it is being expanded.
    fn macro_at(&self, name: &str, at: usize) -> Option<&'s Macro> {
        if self.expanding.iter().any(|n| n == name) {
            return None;
        }
        self.macros
            .iter()
            .find(|(n, m, until)| {
                n == name && (m.span.start as usize) <= at && until.is_none_or(|u| at < u)
            })
            .map(|(_, m, _)| m)
    }

    /// The tokens of `m`'s value, all carrying the span of its use.
    fn expand(&self, name: &str, m: &Macro, span: Span) -> Result<Vec<Token>, LexError> {
        if self.expanding.len() >= MAX_MACRO_DEPTH {
            return Err(LexError {
                span,
                message: format!("macro '{name}' expands more than {MAX_MACRO_DEPTH} levels deep"),
            });
        }
        let mut inner = Lexer::with_macros(&m.value, self.macros);
        inner.expanding = self.expanding.clone();
        inner.expanding.push(name.to_string());
        inner.use_at = Some(self.use_at.unwrap_or(span.start as usize));
        let mut out = Vec::new();
        loop {
            let t = inner.next_token().map_err(|e| LexError {
                span,
                message: format!("in macro '{name}': {}", e.message),
            })?;
            if t.tok == Tok::Eof {
                return Ok(out);
            }
            out.push(Token { tok: t.tok, span });
        }
    }

    fn bytes(&self) -> &'s [u8] {
        self.src.as_bytes()
    }

    /// Skips whitespace and comments.
    fn skip_trivia(&mut self) -> Result<(), LexError> {
        let b = self.bytes();
        loop {
            while self.pos < b.len() && b[self.pos].is_ascii_whitespace() {
                self.pos += 1;
            }
            if b[self.pos..].starts_with(b"//") {
                while self.pos < b.len() && b[self.pos] != b'\n' {
                    self.pos += 1;
                }
            } else if b[self.pos..].starts_with(b"/*") {
                let start = self.pos;
                match self.src[self.pos + 2..].find("*/") {
                    Some(i) => self.pos += 2 + i + 2,
                    None => {
                        return Err(LexError {
                            span: Span::new(start, start + 2),
                            message: "unterminated comment".into(),
                        });
                    }
                }
            } else {
                return Ok(());
            }
        }
    }

    /// True when only whitespace/comments remain.
    pub fn at_eof(&mut self) -> Result<bool, LexError> {
        if !self.pending.is_empty() {
            return Ok(false);
        }
        self.skip_trivia()?;
        Ok(self.pos >= self.src.len())
    }

    /// Reads one raw attach point (`kprobe:foo*+0x10`, `BEGIN`): everything
    /// up to whitespace, `,`, `{` or `/`.
    pub fn attach_point(&mut self) -> Result<(String, Span), LexError> {
        self.skip_trivia()?;
        let start = self.pos;
        let b = self.bytes();
        // A uprobe's (usdt probe's) second field is a path: `/` there is
        // not a predicate.
        let path_kind = ["uprobe:", "u:", "uretprobe:", "ur:", "usdt:", "U:"]
            .iter()
            .any(|k| b[start..].starts_with(k.as_bytes()));
        let mut colons = 0;
        while self.pos < b.len() {
            let c = b[self.pos];
            colons += usize::from(c == b':');
            let in_path = path_kind && colons == 1;
            if c.is_ascii_whitespace() || matches!(c, b',' | b'{') || (c == b'/' && !in_path) {
                break;
            }
            self.pos += 1;
        }
        // Stop on a char boundary even for non-ASCII garbage.
        while !self.src.is_char_boundary(self.pos) {
            self.pos += 1;
        }
        Ok((
            self.src[start..self.pos].to_string(),
            Span::new(start, self.pos),
        ))
    }

    /// Next ordinary token, macros expanded.
    pub fn next_token(&mut self) -> Result<Token, LexError> {
        loop {
            if let Some(t) = self.pending.pop_front() {
                return Ok(t);
            }
            let t = self.raw_token()?;
            if let Tok::Ident(name) = &t.tok
                && let Some(m) = self.macro_at(name, self.use_at.unwrap_or(t.span.start as usize))
            {
                let toks = self.expand(name, m, t.span)?;
                self.pending.extend(toks);
                continue;
            }
            return Ok(t);
        }
    }

    fn raw_token(&mut self) -> Result<Token, LexError> {
        self.skip_trivia()?;
        let b = self.bytes();
        let start = self.pos;
        if start >= b.len() {
            return Ok(Token {
                tok: Tok::Eof,
                span: Span::new(start, start),
            });
        }
        let c = b[start];
        let ident_end = |mut p: usize| {
            while p < b.len() && (b[p].is_ascii_alphanumeric() || b[p] == b'_') {
                p += 1;
            }
            p
        };
        let tok = if c.is_ascii_alphabetic() || c == b'_' {
            self.pos = ident_end(start);
            Tok::Ident(self.src[start..self.pos].to_string())
        } else if c == b'$' && b.get(start + 1) == Some(&b'#') {
            // `$#`: the number of positional parameters.
            self.pos = start + 2;
            Tok::Var("#".into())
        } else if c == b'@' || c == b'$' {
            self.pos = ident_end(start + 1);
            let name = self.src[start + 1..self.pos].to_string();
            if c == b'@' {
                Tok::Map(name)
            } else if name.is_empty() {
                return Err(self.err(start, start + 1, "expected variable name after '$'"));
            } else {
                Tok::Var(name)
            }
        } else if c.is_ascii_digit() {
            self.pos = ident_end(start);
            let text = &self.src[start..self.pos];
            Tok::Int(parse_int(text).map_err(|why| {
                self.err(
                    start,
                    self.pos,
                    format!("invalid integer literal '{text}': {why}"),
                )
            })?)
        } else if c == b'"' {
            Tok::Str(self.string(start)?)
        } else if let Some(p) = PUNCTS.iter().find(|p| b[start..].starts_with(p.as_bytes())) {
            self.pos += p.len();
            Tok::Punct(p)
        } else {
            let ch = self.src[start..].chars().next().unwrap_or('?');
            return Err(self.err(
                start,
                start + ch.len_utf8(),
                format!("unexpected character '{}'", ch.escape_debug()),
            ));
        };
        Ok(Token {
            tok,
            span: Span::new(start, self.pos),
        })
    }

    fn err(&self, s: usize, e: usize, m: impl Into<String>) -> LexError {
        LexError {
            span: Span::new(s, e),
            message: m.into(),
        }
    }

    fn string(&mut self, start: usize) -> Result<String, LexError> {
        let mut out = String::new();
        let mut chars = self.src[start + 1..].char_indices();
        while let Some((i, ch)) = chars.next() {
            let at = start + 1 + i;
            match ch {
                '"' => {
                    self.pos = at + 1;
                    return Ok(out);
                }
                '\n' => break,
                '\\' => {
                    let (_, e) = chars
                        .next()
                        .ok_or_else(|| self.err(start, at + 1, "unterminated string"))?;
                    out.push(match e {
                        'n' => '\n',
                        't' => '\t',
                        'r' => '\r',
                        '"' => '"',
                        '\\' => '\\',
                        '0' => '\0',
                        'x' => {
                            // `\xNN`: one or two hex digits.
                            let mut v = 0u32;
                            let mut n = 0;
                            while n < 2 {
                                match chars.clone().next() {
                                    Some((_, d)) if d.is_ascii_hexdigit() => {
                                        v = v * 16 + d.to_digit(16).unwrap_or(0);
                                        chars.next();
                                        n += 1;
                                    }
                                    _ => break,
                                }
                            }
                            if n == 0 {
                                return Err(self.err(at, at + 2, "\\x needs hex digits"));
                            }
                            char::from_u32(v).unwrap_or('?')
                        }
                        _ => {
                            return Err(self.err(
                                at,
                                at + 1 + e.len_utf8(),
                                format!("unknown escape sequence '\\{e}'"),
                            ));
                        }
                    });
                }
                c => out.push(c),
            }
        }
        Err(self.err(start, start + 1, "unterminated string"))
    }
}

/// An integer literal as bpftrace 0.17 reads one: decimal or `0x` hex,
/// `_` between digits ignored (`1_000_000`), an optional C suffix (`u`,
/// `l`, `ul`, `ll`, `ull`, any case), and integer scientific notation
/// `Ce<E>` (`1e6`) whose coefficient is one digit and exponent at most 16.
pub fn parse_int(text: &str) -> Result<u64, String> {
    let n: String = text.chars().filter(|&c| c != '_').collect();
    let lower = n.to_ascii_lowercase();
    if let Some(hex) = lower.strip_prefix("0x") {
        let digits = hex.trim_end_matches(['u', 'l']);
        suffix(&hex[digits.len()..])?;
        return u64::from_str_radix(digits, 16).map_err(|_| "not a hex number".to_string());
    }
    if let Some((coeff, exp)) = lower.split_once('e') {
        let c: u64 = coeff
            .parse()
            .map_err(|_| "the coefficient of a scientific literal is not a number".to_string())?;
        let e: u32 = exp
            .parse()
            .map_err(|_| "the exponent of a scientific literal is not a number".to_string())?;
        if c > 9 {
            return Err("the coefficient of a scientific literal must be 0 to 9".into());
        }
        if e > 16 {
            return Err("the exponent of a scientific literal must be at most 16".into());
        }
        return Ok(c * 10u64.pow(e));
    }
    let digits = lower.trim_end_matches(['u', 'l']);
    suffix(&lower[digits.len()..])?;
    digits.parse().map_err(|_| "not a number".to_string())
}

/// The integer suffixes C (and so bpftrace) accepts.
fn suffix(s: &str) -> Result<(), String> {
    match s {
        "" | "u" | "l" | "ul" | "ll" | "ull" => Ok(()),
        _ => Err(format!("unknown suffix '{s}'")),
    }
}

/// Lexes everything (used by tests and `dump`).
pub fn tokenize(src: &str) -> Result<Vec<Token>, LexError> {
    let mut lx = Lexer::new(src);
    let mut out = Vec::new();
    loop {
        let t = lx.next_token()?;
        let eof = t.tok == Tok::Eof;
        out.push(t);
        if eof {
            return Ok(out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toks(s: &str) -> Vec<Tok> {
        tokenize(s).unwrap().into_iter().map(|t| t.tok).collect()
    }

    #[test]
    fn basic_tokens() {
        assert_eq!(
            toks("@m[$x, 0x1f] <<= \"a\\n\\\"\" // c\n /* x */ 10"),
            vec![
                Tok::Map("m".into()),
                Tok::Punct("["),
                Tok::Var("x".into()),
                Tok::Punct(","),
                Tok::Int(31),
                Tok::Punct("]"),
                Tok::Punct("<<="),
                Tok::Str("a\n\"".into()),
                Tok::Int(10),
                Tok::Eof
            ]
        );
    }

    #[test]
    fn a_shebang_line_is_skipped_only_at_byte_0() {
        let t = tokenize("#!/usr/bin/env vmprobe\nBEGIN").unwrap();
        assert_eq!(t[0].tok, Tok::Ident("BEGIN".into()));
        // Spans stay offsets into the whole source, shebang included.
        assert_eq!(t[0].span, Span::new(23, 28));
        assert_eq!(toks("#!/usr/bin/bpftrace"), vec![Tok::Eof]);
        // Anywhere else `#` is still an error.
        assert!(tokenize(" #!/usr/bin/bpftrace\nBEGIN").is_err());
        assert!(tokenize("BEGIN\n#!/usr/bin/bpftrace").is_err());
        assert!(tokenize("# comment\nBEGIN").is_err());
    }

    #[test]
    fn spans_and_errors() {
        let t = tokenize("  abc").unwrap();
        assert_eq!(t[0].span, Span::new(2, 5));
        assert!(tokenize("\"abc").is_err());
        assert!(tokenize("/* x").is_err());
        assert!(tokenize("12ab").is_err());
        assert!(tokenize("#").is_err());
        assert!(tokenize("\"\\q\"").is_err());
    }

    #[test]
    fn attach_points() {
        let mut lx = Lexer::new("  kprobe:vfs_*+0x10,BEGIN/");
        assert_eq!(lx.attach_point().unwrap().0, "kprobe:vfs_*+0x10");
        assert_eq!(lx.next_token().unwrap().tok, Tok::Punct(","));
        assert_eq!(lx.attach_point().unwrap().0, "BEGIN");
        let mut lx = Lexer::new("uprobe:/bin/x:f/arg0/ ur:/a/b:g,u:/c:0x10 {");
        assert_eq!(lx.attach_point().unwrap().0, "uprobe:/bin/x:f");
        lx.pos += "/arg0/".len();
        assert_eq!(lx.attach_point().unwrap().0, "ur:/a/b:g");
        lx.pos += 1;
        assert_eq!(lx.attach_point().unwrap().0, "u:/c:0x10");
    }

    #[test]
    fn integer_literals_as_bpftrace_reads_them() {
        assert_eq!(
            toks("1e6 1_000_000 0x1f 0xE 5e0 10u 10ULL 0x10ul")[..8],
            [
                Tok::Int(1_000_000),
                Tok::Int(1_000_000),
                Tok::Int(31),
                Tok::Int(14),
                Tok::Int(5),
                Tok::Int(10),
                Tok::Int(10),
                Tok::Int(16)
            ]
        );
        assert_eq!(parse_int("9e16"), Ok(90_000_000_000_000_000));
        let e = |s: &str| tokenize(s).unwrap_err().message;
        assert!(
            e("10e3").contains("coefficient of a scientific literal must be 0 to 9"),
            "{}",
            e("10e3")
        );
        assert!(e("1e17").contains("at most 16"));
        assert!(e("1e").contains("exponent"));
        assert!(e("12ab").contains("invalid integer literal '12ab'"));
        assert!(e("1lu").contains("unknown suffix 'lu'"));
    }

    #[test]
    fn the_parameter_count() {
        assert_eq!(
            toks("$# $1"),
            vec![Tok::Var("#".into()), Tok::Var("1".into()), Tok::Eof]
        );
    }
}
