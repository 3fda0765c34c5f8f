//! Pass 0: the C preprocessor lines bpftrace's tools carry.
//!
//! bpftrace hands `#` lines to clang with `-DBPFTRACE_HAVE_BTF` when the
//! kernel has BTF, so `#include`s declare types and `#define`s make macros.
//! Here the types always come from the guest's BTF and `BPFTRACE_HAVE_BTF`
//! is always defined; an `#include` brings the integer macros of the header
//! (`AF_INET` from `<sys/socket.h>`, read by [`crate::headers`] when the
//! caller gives a [`HeaderSearch`]), in force from the `#include` on.
//! `#ifdef`/`#ifndef`/`#else`/`#endif` choose lines, `#define NAME [value]`
//! and `#undef NAME` manage object-like macros, which the lexer expands.
//! Unlike bpftrace (whose conditionals only govern the C lines), program
//! text in a group that is not taken is skipped too, as C would.
//!
//! The output has the input's length: directive lines and skipped lines
//! become spaces (newlines kept), so every later span is still a byte
//! offset into the original file and line:column stay right.

use crate::diag::Span;
use crate::headers::{HeaderReader, HeaderSearch};
use crate::lexer::{LexError, Macro};
use std::collections::HashMap;

/// Defined before the program, as bpftrace defines it when BTF is there.
pub const HAVE_BTF: &str = "BPFTRACE_HAVE_BTF";

#[derive(Debug, PartialEq, Eq)]
pub struct Preprocessed {
    /// The source with directives and skipped groups blanked.
    pub text: String,
    /// The macros defined at the end of the file (a macro is in force from
    /// its `#define` on; the lexer checks that, by span).
    pub macros: Vec<(String, Macro, Option<usize>)>,
    /// What the `#include`s left unusable, for messages.
    pub headers: HeaderNotes,
}

/// Why a name the program uses may be missing although it `#include`s a
/// header: headers not found or not read to the end, and header macros
/// that are not integer constants (with their header).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HeaderNotes {
    pub notes: Vec<String>,
    pub others: HashMap<String, String>,
}

/// The header reader of one program and the integer values it handed over.
struct Headers<'a> {
    reader: HeaderReader<'a>,
    given: HashMap<String, i128>,
    notes: HeaderNotes,
}

/// One open `#ifdef`/`#ifndef`: where it is, whether its lines are taken,
/// whether the group around it is taken, and whether `#else` was seen.
struct Cond {
    span: Span,
    taking: bool,
    outer: bool,
    seen_else: bool,
}

pub fn preprocess(src: &str) -> Result<Preprocessed, LexError> {
    preprocess_with(src, None)
}

/// [`preprocess`], with `#include`s read from `search`.
pub fn preprocess_with(src: &str, search: Option<&HeaderSearch>) -> Result<Preprocessed, LexError> {
    let mut headers = search.map(|s| Headers {
        reader: HeaderReader::new(s),
        given: HashMap::new(),
        notes: HeaderNotes::default(),
    });
    let mut out = src.as_bytes().to_vec();
    let mut conds: Vec<Cond> = Vec::new();
    // Every macro with the byte range in which it is defined.
    let mut defined: Vec<(String, Macro, Option<usize>)> = vec![(
        HAVE_BTF.to_string(),
        Macro {
            value: "1".into(),
            span: Span::new(0, 0),
        },
        None,
    )];
    let mut in_comment = false;
    let mut line_start = 0;
    while line_start < src.len() {
        let line_end = src[line_start..]
            .find('\n')
            .map_or(src.len(), |i| line_start + i);
        let line = &src[line_start..line_end];
        let taking = conds.last().is_none_or(|c| c.taking);
        let trimmed = line.trim_start_matches([' ', '\t']);
        let shebang = line_start == 0 && line.starts_with("#!");
        if !in_comment && trimmed.starts_with('#') && !shebang {
            let at = line_start + (line.len() - trimmed.len());
            directive(
                src,
                at,
                line_end,
                taking,
                &mut conds,
                &mut defined,
                &mut headers,
            )?;
            blank(&mut out, line_start, line_end);
        } else {
            if !taking {
                blank(&mut out, line_start, line_end);
            }
            in_comment = ends_in_comment(line, in_comment);
        }
        line_start = line_end + 1;
    }
    if let Some(c) = conds.last() {
        return Err(LexError {
            span: c.span,
            message: "this conditional has no #endif".into(),
        });
    }
    // Only whole ASCII lines (and whole lines of any text) were blanked.
    let text = String::from_utf8(out).map_err(|_| LexError {
        span: Span::new(0, 0),
        message: "the preprocessed program is not UTF-8".into(),
    })?;
    Ok(Preprocessed {
        text,
        macros: defined,
        headers: headers.map(|h| h.notes).unwrap_or_default(),
    })
}

fn blank(out: &mut [u8], start: usize, end: usize) {
    for b in &mut out[start..end] {
        if *b != b'\r' {
            *b = b' ';
        }
    }
}

/// Whether a `/* */` comment is open at the end of `line`, given whether
/// one was open at its start (strings and `//` comments are skipped).
fn ends_in_comment(line: &str, mut in_comment: bool) -> bool {
    let b = line.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if in_comment {
            if b[i..].starts_with(b"*/") {
                in_comment = false;
                i += 2;
                continue;
            }
        } else if b[i..].starts_with(b"/*") {
            in_comment = true;
            i += 2;
            continue;
        } else if b[i..].starts_with(b"//") {
            return false;
        } else if b[i] == b'"' {
            i += 1;
            while i < b.len() && b[i] != b'"' {
                i += if b[i] == b'\\' { 2 } else { 1 };
            }
        }
        i += 1;
    }
    in_comment
}

fn err(start: usize, end: usize, message: impl Into<String>) -> LexError {
    LexError {
        span: Span::new(start, end),
        message: message.into(),
    }
}

/// One directive line, `#` at `at`, the line ending at `end`.
fn directive(
    src: &str,
    at: usize,
    end: usize,
    taking: bool,
    conds: &mut Vec<Cond>,
    defined: &mut Vec<(String, Macro, Option<usize>)>,
    headers: &mut Option<Headers<'_>>,
) -> Result<(), LexError> {
    // A trailing `//` or `/* */` comment is not part of the directive.
    let mut body_end = end;
    for marker in ["//", "/*"] {
        if let Some(i) = src[at..body_end].find(marker) {
            body_end = at + i;
        }
    }
    let after_hash = &src[at + 1..body_end];
    let name_off = at + 1 + (after_hash.len() - after_hash.trim_start().len());
    let rest = &src[name_off..body_end];
    let name_len = rest
        .find(|c: char| !c.is_ascii_alphanumeric() && c != '_')
        .unwrap_or(rest.len());
    let name = &rest[..name_len];
    let args_off = name_off + name_len;
    let args = src[args_off..body_end].trim();
    let args_at =
        args_off + (src[args_off..body_end].len() - src[args_off..body_end].trim_start().len());
    let name_span = (at, name_off + name_len);
    let is_defined = |defined: &Vec<(String, Macro, Option<usize>)>, n: &str| {
        defined
            .iter()
            .any(|(d, _, until)| d == n && until.is_none())
    };
    match name {
        "ifdef" | "ifndef" => {
            let ident = single_ident(args, args_at, name_span, name)?;
            let yes = is_defined(defined, ident) == (name == "ifdef");
            conds.push(Cond {
                span: Span::new(name_span.0, name_span.1),
                taking: taking && yes,
                outer: taking,
                seen_else: false,
            });
        }
        "else" | "endif" => {
            if !args.is_empty() {
                return Err(err(
                    args_at,
                    args_at + args.len(),
                    format!("unexpected text after #{name}"),
                ));
            }
            let Some(c) = conds.last_mut() else {
                return Err(err(
                    name_span.0,
                    name_span.1,
                    format!("#{name} without #ifdef or #ifndef"),
                ));
            };
            if name == "endif" {
                conds.pop();
            } else if c.seen_else {
                return Err(err(
                    name_span.0,
                    name_span.1,
                    "a second #else for one conditional",
                ));
            } else {
                c.seen_else = true;
                c.taking = c.outer && !c.taking;
            }
        }
        // Only the directives of groups that are taken have effects.
        _ if !taking => {
            known(name, name_span)?;
        }
        "include" => {
            let ok = (args.starts_with('<') && args.ends_with('>') && args.len() > 2)
                || (args.starts_with('"') && args.ends_with('"') && args.len() > 2);
            if !ok {
                return Err(err(
                    name_span.0,
                    body_end,
                    "#include needs <FILE> or \"FILE\"",
                ));
            }
            if let Some(h) = headers {
                h.reader
                    .include(&args[1..args.len() - 1], args.starts_with('"'));
                take_header_macros(h, defined, at);
            }
        }
        "define" => {
            let ident_len = args
                .find(|c: char| !c.is_ascii_alphanumeric() && c != '_')
                .unwrap_or(args.len());
            let ident = &args[..ident_len];
            if ident.is_empty() || ident.as_bytes()[0].is_ascii_digit() {
                return Err(err(name_span.0, name_span.1, "#define needs a macro name"));
            }
            if args[ident_len..].starts_with('(') {
                return Err(err(
                    args_at,
                    args_at + args.len(),
                    format!(
                        "function-like macro '{ident}': only object-like macros (#define NAME [value]) are supported"
                    ),
                ));
            }
            undefine(defined, ident, at);
            let value = args[ident_len..].trim();
            if let Some(h) = headers {
                h.reader.define(ident, value);
                h.given.remove(ident);
            }
            defined.push((
                ident.to_string(),
                Macro {
                    value: args[ident_len..].trim().to_string(),
                    span: Span::new(args_at, args_at + ident_len),
                },
                None,
            ));
        }
        "undef" => {
            let ident = single_ident(args, args_at, name_span, name)?;
            undefine(defined, ident, at);
            if let Some(h) = headers {
                h.reader.undef(ident);
                h.given.remove(ident);
            }
        }
        _ => known(name, name_span)?,
    }
    Ok(())
}

/// The header macros that an `#include` at `at` defined or changed become
/// the program's from there on (an `#undef` in a header ends one).
fn take_header_macros(
    h: &mut Headers<'_>,
    defined: &mut Vec<(String, Macro, Option<usize>)>,
    at: usize,
) {
    let now = h.reader.macros();
    let ints: HashMap<String, i128> = now.ints.into_iter().collect();
    let gone: Vec<String> = h
        .given
        .keys()
        .filter(|n| !ints.contains_key(*n))
        .cloned()
        .collect();
    for n in gone {
        undefine(defined, &n, at);
        h.given.remove(&n);
    }
    let mut names: Vec<&String> = ints.keys().collect();
    names.sort();
    for name in names {
        let v = ints[name];
        if h.given.get(name) == Some(&v) {
            continue;
        }
        // The lexer's integers are 64-bit: larger values stay unusable.
        let value = if v < 0 && v >= i64::MIN as i128 {
            format!("(-{})", v.unsigned_abs())
        } else if v >= 0 && v <= u64::MAX as i128 {
            v.to_string()
        } else {
            continue;
        };
        undefine(defined, name, at);
        defined.push((
            name.clone(),
            Macro {
                value,
                span: Span::new(at, at),
            },
            None,
        ));
        h.given.insert(name.clone(), v);
    }
    h.notes = HeaderNotes {
        notes: now.notes,
        others: now.others,
    };
}

/// Ends the range in which a macro is defined.
fn undefine(defined: &mut [(String, Macro, Option<usize>)], name: &str, at: usize) {
    for (d, _, until) in defined.iter_mut() {
        if d == name && until.is_none() {
            *until = Some(at);
        }
    }
}

fn known(name: &str, (s, e): (usize, usize)) -> Result<(), LexError> {
    match name {
        "include" | "define" | "undef" => Ok(()),
        "if" | "elif" => Err(err(
            s,
            e,
            format!("#{name} is not supported (use #ifdef NAME or #ifndef NAME)"),
        )),
        "" => Err(err(s, e, "expected a directive name after '#'")),
        _ => Err(err(
            s,
            e,
            format!(
                "unknown directive '#{name}' (known: #include, #define, #undef, #ifdef, #ifndef, #else, #endif)"
            ),
        )),
    }
}

fn single_ident<'a>(
    args: &'a str,
    args_at: usize,
    (s, e): (usize, usize),
    what: &str,
) -> Result<&'a str, LexError> {
    let ok = !args.is_empty()
        && !args.as_bytes()[0].is_ascii_digit()
        && args.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if ok {
        Ok(args)
    } else if args.is_empty() {
        Err(err(s, e, format!("#{what} needs a macro name")))
    } else {
        Err(err(
            args_at,
            args_at + args.len(),
            format!("#{what} takes one macro name"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(src: &str) -> String {
        preprocess(src).unwrap().text
    }

    #[test]
    fn directives_and_skipped_groups_become_spaces_of_the_same_length() {
        let src = "#ifndef BPFTRACE_HAVE_BTF\n#include <linux/sched.h>\nkprobe:no {}\n#else\n#include <sys/socket.h>\n#endif\nBEGIN {}\n";
        let t = text(src);
        assert_eq!(t.len(), src.len());
        assert_eq!(t.lines().count(), src.lines().count());
        assert_eq!(t.trim(), "BEGIN {}");
        assert_eq!(t.find("BEGIN"), src.find("BEGIN"));
    }

    #[test]
    fn ifdef_else_follow_what_is_defined() {
        let t = text(
            "#ifdef BPFTRACE_HAVE_BTF\nA\n#else\nB\n#endif\n#ifdef NOPE\nC\n#else\nD\n#endif\n",
        );
        assert_eq!(t.split_whitespace().collect::<Vec<_>>(), ["A", "D"]);
        let t = text("#define X\n#ifdef X\nA\n#endif\n#undef X\n#ifdef X\nB\n#endif\n");
        assert_eq!(t.split_whitespace().collect::<Vec<_>>(), ["A"]);
        // Nested groups inside a group not taken stay skipped, #else too.
        let t = text("#ifdef NOPE\n#ifdef BPFTRACE_HAVE_BTF\nA\n#else\nB\n#endif\n#endif\nC\n");
        assert_eq!(t.split_whitespace().collect::<Vec<_>>(), ["C"]);
        // A #define in a group not taken defines nothing.
        let p = preprocess("#ifdef NOPE\n#define Y 3\n#endif\n").unwrap();
        assert!(!p.macros.iter().any(|(n, ..)| n == "Y"));
    }

    #[test]
    fn defines_carry_their_value_and_range() {
        let src = "#define N 10 // ten\n#define E\n#undef N\n";
        let p = preprocess(src).unwrap();
        let n = p.macros.iter().find(|(n, ..)| n == "N").unwrap();
        assert_eq!(n.1.value, "10");
        assert_eq!(n.2, Some(src.find("\n#undef").unwrap() + 1));
        let e = p.macros.iter().find(|(n, ..)| n == "E").unwrap();
        assert_eq!((e.1.value.as_str(), e.2), ("", None));
    }

    #[test]
    fn includes_bring_header_integer_macros_from_the_include_on() {
        use std::sync::Arc;
        let search = HeaderSearch::new(
            vec!["/i".into()],
            Arc::new(|p: &std::path::Path| match p.to_str() {
                Some("/i/s.h") => Ok("#ifdef WANT\n#define AF_INET 2\n#endif\n\
                                      #define NEG (-1)\n#define STR \"x\"\n"
                    .into()),
                _ => Err(std::io::ErrorKind::NotFound.into()),
            }),
        );
        // The program's #define is seen by the header after it.
        let src = "AF_INET\n#define WANT\n#include <s.h>\nAF_INET NEG\n#include <missing.h>\n";
        let pre = preprocess_with(src, Some(&search)).unwrap();
        let mut lx = crate::lexer::Lexer::with_macros(&pre.text, &pre.macros);
        let mut got = Vec::new();
        loop {
            let t = lx.next_token().unwrap().tok;
            if t == crate::lexer::Tok::Eof {
                break;
            }
            got.push(t);
        }
        use crate::lexer::Tok::*;
        assert_eq!(
            got,
            [
                Ident("AF_INET".into()),
                Int(2),
                Punct("("),
                Punct("-"),
                Int(1),
                Punct(")")
            ]
        );
        assert_eq!(pre.headers.others["STR"], "/i/s.h");
        assert_eq!(pre.headers.notes, ["<missing.h> was not found in /i"]);
        // Without a search, #include brings nothing (and is no error).
        let pre = preprocess(src).unwrap();
        assert!(!pre.macros.iter().any(|(n, ..)| n == "AF_INET"));
    }

    #[test]
    fn hashes_in_comments_strings_and_the_shebang_are_not_directives() {
        let src =
            "#!/usr/bin/env bpftrace\n/*\n # not a directive\n*/\nBEGIN { printf(\"#x\"); }\n";
        assert_eq!(text(src), src);
    }

    #[test]
    fn errors_point_at_the_directive() {
        let e = |src: &str| preprocess(src).unwrap_err();
        let x = e("BEGIN {}\n  #pragma once\n");
        assert!(
            x.message.contains("unknown directive '#pragma'"),
            "{}",
            x.message
        );
        assert_eq!(x.span.start, 11);
        let x = e("#ifdef A\n");
        assert_eq!(
            (x.message.as_str(), x.span.start),
            ("this conditional has no #endif", 0)
        );
        assert!(e("#endif\n").message.contains("#endif without #ifdef"));
        assert!(e("#else\n").message.contains("#else without"));
        assert!(
            e("#ifdef A\n#else\n#else\n#endif\n")
                .message
                .contains("second #else")
        );
        assert!(
            e("#if 1\n#endif\n")
                .message
                .contains("#if is not supported")
        );
        assert!(e("#define F(x) x\n").message.contains("function-like"));
        assert!(
            e("#include linux/sched.h\n")
                .message
                .contains("#include needs")
        );
        assert!(e("#ifdef\n#endif\n").message.contains("needs a macro name"));
        assert!(e("#ifdef A B\n#endif\n").message.contains("one macro name"));
        assert!(e("#\n").message.contains("expected a directive name"));
        // Unknown directives are errors even in groups not taken.
        assert!(
            e("#ifdef NOPE\n#warning x\n#endif\n")
                .message
                .contains("unknown")
        );
    }

    #[test]
    fn macros_expand_to_their_tokens_at_the_use() {
        let src = "#define N 10\n#define TWO N + N\n#define E\nTWO E N";
        let pre = preprocess(src).unwrap();
        let mut lx = crate::lexer::Lexer::with_macros(&pre.text, &pre.macros);
        let mut got = Vec::new();
        loop {
            let t = lx.next_token().unwrap();
            if t.tok == crate::lexer::Tok::Eof {
                break;
            }
            got.push((t.tok, t.span.start as usize));
        }
        let two = src.rfind("TWO").unwrap();
        let n = src.rfind('N').unwrap();
        assert_eq!(
            got,
            [
                (crate::lexer::Tok::Int(10), two),
                (crate::lexer::Tok::Punct("+"), two),
                (crate::lexer::Tok::Int(10), two),
                (crate::lexer::Tok::Int(10), n)
            ]
        );
        // In force only from the #define to the #undef; a macro naming
        // itself is not expanded again (as in C); errors name the macro.
        let src = "A\n#define A 1\nA\n#undef A\nA\n#define S S\nS\n#define B 0x\nB";
        let pre = preprocess(src).unwrap();
        let mut lx = crate::lexer::Lexer::with_macros(&pre.text, &pre.macros);
        let mut next = || lx.next_token().map(|t| t.tok);
        assert_eq!(next().unwrap(), crate::lexer::Tok::Ident("A".into()));
        assert_eq!(next().unwrap(), crate::lexer::Tok::Int(1));
        assert_eq!(next().unwrap(), crate::lexer::Tok::Ident("A".into()));
        assert_eq!(next().unwrap(), crate::lexer::Tok::Ident("S".into()));
        assert!(
            next()
                .unwrap_err()
                .message
                .starts_with("in macro 'B': invalid integer literal")
        );
    }
}
