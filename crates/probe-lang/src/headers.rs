//! The integer macros an `#include`d C header defines, as bpftrace gets
//! them: bpftrace hands the program's `#include`s to clang and takes every
//! macro of the translation unit (`AF_INET` from `<sys/socket.h>` is
//! `PF_INET`, which is `2`). Types come from the guest's BTF here, so only
//! the macros matter: this is a C preprocessor for headers that keeps
//! `#define`s and follows `#include`, `#include_next`, `#if`/`#ifdef`/
//! `#ifndef`/`#elif`/`#else`/`#endif` (with `defined`, function-like macros,
//! `#` and `##`), and ignores declarations.
//!
//! Headers are found as clang finds them with bpftrace's flags: in the
//! search directories in order (the binary gives the host's; `"file"` first
//! next to the including header). The predefined macros are clang's for
//! x86-64 Linux in C mode plus bpftrace's `-D`s, less clang's `__has_*`
//! feature tests (we do not have clang's tables): those are undefined and
//! a call of one in `#if` is 0, as for a compiler without them. Integer
//! arithmetic in `#if` is 128-bit signed, which differs from C's
//! `intmax_t`/`uintmax_t` only in mixed-sign corner cases.
//!
//! A header that is not found is noted and skipped (clang's own headers,
//! `<stddef.h>` for one, are not in the host's directories); any other
//! problem (`#error`, an `#if` that does not evaluate, a bound) stops the
//! reading and is noted. Either way what was defined so far is kept, and the
//! notes are reported when the program then uses an identifier that stays
//! unknown.
//!
//! Only object-like macros whose whole expansion is an integer constant
//! expression are handed to the program, as their value, computed as
//! bpftrace computes the expanded text (64-bit, not C's `int`: `(1<<31)`
//! is 2147483648, where C makes it negative). Enumerators declared in
//! headers (`SOCK_STREAM` of `enum __socket_type`) are not read: only
//! the guest kernel's enums (from BTF) are.

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;

/// Nested `#include`s followed at most (GCC's limit is 200).
pub const MAX_DEPTH: usize = 200;
/// Header files read at most for one program.
pub const MAX_FILES: usize = 2000;
/// Bytes of headers read at most for one program.
pub const MAX_BYTES: usize = 64 << 20;
/// Macro replacements at most in one expansion.
const MAX_EXPANSIONS: usize = 100_000;

type ReadFn = dyn Fn(&Path) -> std::io::Result<String> + Send + Sync;

/// Where `#include` looks and how a file is read (the binary gives the
/// host's file system; tests give files of their own).
#[derive(Clone)]
pub struct HeaderSearch {
    /// Searched in order for `<file>` (and after the includer's directory
    /// for `"file"`).
    pub dirs: Vec<PathBuf>,
    /// Reads a file; `ErrorKind::NotFound` means there is none.
    pub read: Arc<ReadFn>,
}

impl std::fmt::Debug for HeaderSearch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HeaderSearch")
            .field("dirs", &self.dirs)
            .finish_non_exhaustive()
    }
}

impl HeaderSearch {
    /// bpftrace 0.17's `-isystem` directories for x86-64.
    pub fn host_dirs() -> Vec<PathBuf> {
        [
            "/usr/local/include",
            "/usr/include",
            "/usr/include/x86_64-linux-gnu",
        ]
        .iter()
        .map(PathBuf::from)
        .collect()
    }
}

/// What reading the program's `#include`s gave.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HeaderMacros {
    /// Integer macros: name and value.
    pub ints: Vec<(String, i128)>,
    /// Other object-like macros, with the header that defined them.
    pub others: HashMap<String, String>,
    /// Headers not found, and problems that stopped the reading.
    pub notes: Vec<String>,
}

/// A preprocessing token.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Kind {
    Ident,
    Number,
    /// A character or string literal, quotes included.
    Literal,
    Punct,
}

#[derive(Clone, Debug)]
struct PTok {
    kind: Kind,
    text: String,
    /// Whitespace before it (for `#` stringification and `(` after a name).
    space: bool,
    /// Macros not to expand again in this token (C's hide set).
    hide: Rc<Vec<String>>,
}

#[derive(Clone, Debug)]
struct Def {
    params: Option<Vec<String>>,
    variadic: bool,
    body: Vec<PTok>,
    file: Rc<str>,
}

const PUNCTS: &[&str] = &[
    "...", "<<=", ">>=", "##", "<<", ">>", "<=", ">=", "==", "!=", "&&", "||", "->", "++", "--",
    "+=", "-=", "*=", "/=", "%=", "&=", "|=", "^=",
];

fn tokenize(s: &str) -> Vec<PTok> {
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
fn logical_lines(src: &str) -> Vec<(usize, String)> {
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

/// One open conditional of a header.
struct Cond {
    taking: bool,
    /// Some group of this conditional was taken already.
    done: bool,
    outer: bool,
}

struct Reader<'a> {
    search: &'a HeaderSearch,
    defs: HashMap<String, Def>,
    files: usize,
    bytes: usize,
    cache: HashMap<PathBuf, Rc<str>>,
    notes: Vec<String>,
}

/// Why reading stopped.
type Stop = String;

/// A header found: its path, the index of the search directory it is in
/// (for `#include_next`), and its text.
type Found = (PathBuf, Option<usize>, Rc<str>);

/// Predefined as clang 14 for x86_64-linux-gnu in C mode, with bpftrace's
/// `-D`s when BTF is there.
const PREDEFINED: &[(&str, &str)] = &[
    ("__STDC__", "1"),
    ("__STDC_VERSION__", "201710L"),
    ("__STDC_HOSTED__", "1"),
    ("__GNUC__", "4"),
    ("__GNUC_MINOR__", "2"),
    ("__GNUC_PATCHLEVEL__", "1"),
    ("__GNUC_STDC_INLINE__", "1"),
    ("__clang__", "1"),
    ("__clang_major__", "14"),
    ("__clang_minor__", "0"),
    ("__clang_patchlevel__", "6"),
    ("__x86_64__", "1"),
    ("__x86_64", "1"),
    ("__amd64__", "1"),
    ("__amd64", "1"),
    ("__linux__", "1"),
    ("__linux", "1"),
    ("linux", "1"),
    ("__unix__", "1"),
    ("__unix", "1"),
    ("unix", "1"),
    ("__gnu_linux__", "1"),
    ("__ELF__", "1"),
    ("__LP64__", "1"),
    ("_LP64", "1"),
    ("__CHAR_BIT__", "8"),
    ("__SIZEOF_INT__", "4"),
    ("__SIZEOF_LONG__", "8"),
    ("__SIZEOF_LONG_LONG__", "8"),
    ("__SIZEOF_SHORT__", "2"),
    ("__SIZEOF_POINTER__", "8"),
    ("__SIZEOF_SIZE_T__", "8"),
    ("__SIZEOF_WCHAR_T__", "4"),
    ("__SIZEOF_FLOAT__", "4"),
    ("__SIZEOF_DOUBLE__", "8"),
    ("__SIZEOF_LONG_DOUBLE__", "16"),
    ("__SIZEOF_INT128__", "16"),
    ("__INT_MAX__", "2147483647"),
    ("__LONG_MAX__", "9223372036854775807L"),
    ("__LONG_LONG_MAX__", "9223372036854775807LL"),
    ("__SCHAR_MAX__", "127"),
    ("__SHRT_MAX__", "32767"),
    ("__WCHAR_MAX__", "2147483647"),
    ("__ORDER_LITTLE_ENDIAN__", "1234"),
    ("__ORDER_BIG_ENDIAN__", "4321"),
    ("__ORDER_PDP_ENDIAN__", "3412"),
    ("__BYTE_ORDER__", "__ORDER_LITTLE_ENDIAN__"),
    ("__LITTLE_ENDIAN__", "1"),
    ("__OPTIMIZE__", "1"),
    ("__NO_INLINE__", "1"),
    ("__USER_LABEL_PREFIX__", ""),
    ("__FLT_EVAL_METHOD__", "0"),
    ("__SSE__", "1"),
    ("__SSE2__", "1"),
    ("__MMX__", "1"),
    ("BPFTRACE_HAVE_BTF", "1"),
    ("_LINUX_TYPES_H", "1"),
    ("__CLANG_WORKAROUNDS_H", "1"),
];

/// The headers of one program, read as its `#include`s come: one
/// translation unit, so what an earlier header (or the program's own
/// `#define`) defines holds in a later one.
pub struct HeaderReader<'a> {
    r: Reader<'a>,
    stopped: bool,
}

const BUILTIN: &str = "<built-in>";
const PROGRAM: &str = "<program>";

impl<'a> HeaderReader<'a> {
    pub fn new(search: &'a HeaderSearch) -> Self {
        let mut r = Reader {
            search,
            defs: HashMap::new(),
            files: 0,
            bytes: 0,
            cache: HashMap::new(),
            notes: Vec::new(),
        };
        let builtin: Rc<str> = Rc::from(BUILTIN);
        for (n, v) in PREDEFINED {
            r.defs.insert(
                n.to_string(),
                Def {
                    params: None,
                    variadic: false,
                    body: tokenize(v),
                    file: builtin.clone(),
                },
            );
        }
        HeaderReader { r, stopped: false }
    }

    /// Reads `#include <name>` (`"name"` when `quoted`). After a problem
    /// that stopped the reading, later includes are not read.
    pub fn include(&mut self, name: &str, quoted: bool) {
        if self.stopped {
            return;
        }
        if let Err(stop) = self.r.include(name, quoted, None, None, 0) {
            let (o, c) = if quoted { ('"', '"') } else { ('<', '>') };
            self.r.notes.push(format!("#include {o}{name}{c}: {stop}"));
            self.stopped = true;
        }
    }

    /// The program's own `#define NAME VALUE`, which headers after it see.
    pub fn define(&mut self, name: &str, value: &str) {
        self.r.defs.insert(
            name.to_string(),
            Def {
                params: None,
                variadic: false,
                body: tokenize(value),
                file: Rc::from(PROGRAM),
            },
        );
    }

    /// The program's own `#undef NAME`.
    pub fn undef(&mut self, name: &str) {
        self.r.defs.remove(name);
    }

    /// The macros the headers define now (the program's own left out).
    pub fn macros(&mut self) -> HeaderMacros {
        let mut out = HeaderMacros {
            notes: self.r.notes.clone(),
            ..Default::default()
        };
        let mut names: Vec<String> = self
            .r
            .defs
            .iter()
            .filter(|(_, d)| d.params.is_none() && !matches!(&*d.file, BUILTIN | PROGRAM))
            .map(|(n, _)| n.clone())
            .collect();
        names.sort();
        for name in names {
            let toks = vec![PTok {
                kind: Kind::Ident,
                text: name.clone(),
                space: false,
                hide: Rc::new(Vec::new()),
            }];
            let value = self
                .r
                .expand(toks, false)
                .ok()
                .and_then(|t| Eval::new(&t, false).whole());
            match value {
                Some(v) => out.ints.push((name, v)),
                None => {
                    let file = self.r.defs[&name].file.to_string();
                    out.others.insert(name, file);
                }
            }
        }
        out
    }
}

/// Reads `includes` (each `(name, quoted)`, in order) and what they include.
pub fn read(search: &HeaderSearch, includes: &[(String, bool)]) -> HeaderMacros {
    let mut r = HeaderReader::new(search);
    for (name, quoted) in includes {
        r.include(name, *quoted);
    }
    r.macros()
}

impl Reader<'_> {
    /// Finds `name`: next to `from` for a quoted name, then in the search
    /// directories (after directory `after`, for `#include_next`).
    fn find(
        &mut self,
        name: &str,
        quoted: bool,
        from: Option<&Path>,
        after: Option<usize>,
    ) -> Result<Option<Found>, Stop> {
        let mut candidates: Vec<(PathBuf, Option<usize>)> = Vec::new();
        if quoted && after.is_none() {
            match from.and_then(Path::parent) {
                Some(dir) => candidates.push((dir.join(name), None)),
                None => candidates.push((PathBuf::from(name), None)),
            }
        }
        let first = after.map_or(0, |a| a + 1);
        for (i, d) in self.search.dirs.iter().enumerate().skip(first) {
            candidates.push((d.join(name), Some(i)));
        }
        for (path, dir) in candidates {
            if let Some(text) = self.cache.get(&path) {
                return Ok(Some((path, dir, text.clone())));
            }
            match (self.search.read)(&path) {
                Ok(text) => {
                    self.files += 1;
                    self.bytes += text.len();
                    if self.files > MAX_FILES || self.bytes > MAX_BYTES {
                        return Err(format!(
                            "more than {MAX_FILES} header files or {} MiB of them",
                            MAX_BYTES >> 20
                        ));
                    }
                    let text: Rc<str> = Rc::from(text);
                    self.cache.insert(path.clone(), text.clone());
                    return Ok(Some((path, dir, text)));
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::NotFound | std::io::ErrorKind::IsADirectory
                    ) => {}
                Err(e) => return Err(format!("{}: {e}", path.display())),
            }
        }
        Ok(None)
    }

    fn include(
        &mut self,
        name: &str,
        quoted: bool,
        from: Option<&Path>,
        after: Option<usize>,
        depth: usize,
    ) -> Result<(), Stop> {
        if depth >= MAX_DEPTH {
            return Err(format!("#include nested more than {MAX_DEPTH} deep"));
        }
        let Some((path, dir, text)) = self.find(name, quoted, from, after)? else {
            let (o, c) = if quoted { ('"', '"') } else { ('<', '>') };
            let note = format!(
                "{o}{name}{c} was not found in {}",
                self.search
                    .dirs
                    .iter()
                    .map(|d| d.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            if !self.notes.contains(&note) {
                self.notes.push(note);
            }
            return Ok(());
        };
        self.file(&path, dir, &text, depth)
    }

    /// Runs the directives of one header.
    fn file(
        &mut self,
        path: &Path,
        dir: Option<usize>,
        text: &str,
        depth: usize,
    ) -> Result<(), Stop> {
        let file: Rc<str> = Rc::from(path.display().to_string());
        let mut conds: Vec<Cond> = Vec::new();
        for (line_no, line) in logical_lines(text) {
            let at = || format!("{}:{line_no}", path.display());
            let t = line.trim_start();
            let Some(rest) = t.strip_prefix('#') else {
                continue;
            };
            let toks = tokenize(rest);
            let Some(first) = toks.first() else {
                continue;
            };
            let args = &toks[1..];
            let taking = conds.last().is_none_or(|c| c.taking);
            match first.text.as_str() {
                "ifdef" | "ifndef" => {
                    let yes = taking && {
                        let n = args.first().map(|t| t.text.as_str()).unwrap_or("");
                        self.defs.contains_key(n) == (first.text == "ifdef")
                    };
                    conds.push(Cond {
                        taking: yes,
                        done: yes,
                        outer: taking,
                    });
                }
                "if" => {
                    let yes =
                        taking && self.condition(args).map_err(|e| format!("{}: {e}", at()))?;
                    conds.push(Cond {
                        taking: yes,
                        done: yes,
                        outer: taking,
                    });
                }
                "elif" => {
                    let Some(c) = conds.last() else {
                        return Err(format!("{}: #elif without #if", at()));
                    };
                    let (outer, done) = (c.outer, c.done);
                    let yes = outer
                        && !done
                        && self.condition(args).map_err(|e| format!("{}: {e}", at()))?;
                    let c = conds.last_mut().expect("checked above");
                    c.taking = yes;
                    c.done |= yes;
                }
                "else" => {
                    let Some(c) = conds.last_mut() else {
                        return Err(format!("{}: #else without #if", at()));
                    };
                    c.taking = c.outer && !c.done;
                    c.done = true;
                }
                "endif" if conds.pop().is_none() => {
                    return Err(format!("{}: #endif without #if", at()));
                }
                "endif" => {}
                _ if !taking => {}
                "define" => self
                    .define(args, &file)
                    .map_err(|e| format!("{}: {e}", at()))?,
                "undef" => {
                    if let Some(n) = args.first() {
                        self.defs.remove(&n.text);
                    }
                }
                "include" | "include_next" => {
                    let (name, quoted) = self
                        .include_name(args)
                        .map_err(|e| format!("{}: {e}", at()))?;
                    let next = first.text == "include_next";
                    self.include(
                        &name,
                        quoted,
                        Some(path),
                        if next { dir } else { None },
                        depth + 1,
                    )?;
                }
                "error" => {
                    return Err(format!("{}: #error{}", at(), &rest.trim_start()[5..]));
                }
                // #pragma, #warning, #line, #ident: nothing for macros.
                _ => {}
            }
        }
        if !conds.is_empty() {
            return Err(format!("{}: a conditional has no #endif", path.display()));
        }
        Ok(())
    }

    /// `<name>` or `"name"`, also from a macro.
    fn include_name(&mut self, args: &[PTok]) -> Result<(String, bool), Stop> {
        let toks = match args.first() {
            Some(t) if t.kind == Kind::Ident => self.expand(args.to_vec(), false)?,
            _ => args.to_vec(),
        };
        match toks.first().map(|t| t.text.as_str()) {
            Some("<") => {
                let mut name = String::new();
                for t in &toks[1..] {
                    if t.text == ">" {
                        return Ok((name, false));
                    }
                    name.push_str(&t.text);
                }
                Err("#include <name> has no '>'".into())
            }
            Some(s) if s.len() >= 2 && s.starts_with('"') && s.ends_with('"') => {
                Ok((s[1..s.len() - 1].to_string(), true))
            }
            _ => Err("#include needs <FILE> or \"FILE\"".into()),
        }
    }

    fn define(&mut self, args: &[PTok], file: &Rc<str>) -> Result<(), Stop> {
        let Some(name) = args.first().filter(|t| t.kind == Kind::Ident) else {
            return Err("#define needs a macro name".into());
        };
        let mut rest = &args[1..];
        let mut params = None;
        let mut variadic = false;
        if rest.first().is_some_and(|t| t.text == "(" && !t.space) {
            let mut ps = Vec::new();
            let mut i = 1;
            loop {
                match rest.get(i).map(|t| t.text.as_str()) {
                    Some(")") => break,
                    Some(",") => {}
                    Some("...") => {
                        variadic = true;
                        ps.push("__VA_ARGS__".to_string());
                    }
                    Some(_) if rest[i].kind == Kind::Ident => ps.push(rest[i].text.clone()),
                    _ => return Err(format!("bad parameter list of macro '{}'", name.text)),
                }
                i += 1;
            }
            params = Some(ps);
            rest = &rest[i + 1..];
        }
        self.defs.insert(
            name.text.clone(),
            Def {
                params,
                variadic,
                body: rest.to_vec(),
                file: file.clone(),
            },
        );
        Ok(())
    }

    /// The value of an `#if`/`#elif` condition.
    fn condition(&mut self, args: &[PTok]) -> Result<bool, Stop> {
        let toks = self.expand(args.to_vec(), true)?;
        let text = || {
            args.iter()
                .map(|t| t.text.as_str())
                .collect::<Vec<_>>()
                .join(" ")
        };
        match Eval::new(&toks, true).whole() {
            Some(v) => Ok(v != 0),
            None => Err(format!("cannot evaluate #if {}", text())),
        }
    }

    /// Macro-expands `input` (in an `#if`: `defined` and `__has_*` too).
    fn expand(&mut self, input: Vec<PTok>, in_if: bool) -> Result<Vec<PTok>, Stop> {
        let mut q: VecDeque<PTok> = input.into();
        let mut out = Vec::new();
        let mut steps = 0;
        while let Some(t) = q.pop_front() {
            if t.kind != Kind::Ident {
                out.push(t);
                continue;
            }
            if in_if && t.text == "defined" {
                let paren = q.front().is_some_and(|n| n.text == "(");
                if paren {
                    q.pop_front();
                }
                let n = q.pop_front().ok_or("defined without a name")?;
                if paren && q.pop_front().is_none_or(|c| c.text != ")") {
                    return Err("defined( without ')'".into());
                }
                let v = if self.defs.contains_key(&n.text) {
                    "1"
                } else {
                    "0"
                };
                out.push(number(v));
                continue;
            }
            if in_if && t.text.starts_with("__has_") && q.front().is_some_and(|n| n.text == "(") {
                let args = take_args(&mut q)?;
                let v = if t.text == "__has_include" || t.text == "__has_include_next" {
                    let arg: Vec<PTok> = args.into_iter().flatten().collect();
                    let (name, quoted) = self.include_name(&arg)?;
                    self.find(&name, quoted, None, None)?.is_some()
                } else {
                    false
                };
                out.push(number(if v { "1" } else { "0" }));
                continue;
            }
            let Some(def) = self.defs.get(&t.text) else {
                out.push(t);
                continue;
            };
            if t.hide.contains(&t.text) {
                out.push(t);
                continue;
            }
            steps += 1;
            if steps > MAX_EXPANSIONS {
                return Err(format!("more than {MAX_EXPANSIONS} macro expansions"));
            }
            let def = def.clone();
            let mut hide = (*t.hide).clone();
            hide.push(t.text.clone());
            let hide = Rc::new(hide);
            let body = match &def.params {
                None => def.body.clone(),
                Some(params) => {
                    if q.front().is_none_or(|n| n.text != "(") {
                        out.push(t);
                        continue;
                    }
                    let mut args = take_args(&mut q)?;
                    if def.variadic && args.len() > params.len() {
                        // The rest, commas included, is __VA_ARGS__.
                        let tail: Vec<Vec<PTok>> = args.split_off(params.len() - 1);
                        let mut joined = Vec::new();
                        for (i, a) in tail.into_iter().enumerate() {
                            if i > 0 {
                                joined.push(punct(","));
                            }
                            joined.extend(a);
                        }
                        args.push(joined);
                    }
                    if params.is_empty() && args.len() == 1 && args[0].is_empty() {
                        args.clear();
                    }
                    while args.len() < params.len() {
                        args.push(Vec::new());
                    }
                    if args.len() != params.len() {
                        return Err(format!(
                            "macro '{}' takes {} arguments, given {}",
                            t.text,
                            params.len(),
                            args.len()
                        ));
                    }
                    self.substitute(&def.body, params, &args, in_if)?
                }
            };
            for mut b in body.into_iter().rev() {
                let mut h = (*b.hide).clone();
                h.extend(hide.iter().cloned());
                b.hide = Rc::new(h);
                q.push_front(b);
            }
        }
        Ok(out)
    }

    /// A function-like macro's body with its arguments in place.
    fn substitute(
        &mut self,
        body: &[PTok],
        params: &[String],
        args: &[Vec<PTok>],
        in_if: bool,
    ) -> Result<Vec<PTok>, Stop> {
        let param = |t: &PTok| {
            (t.kind == Kind::Ident)
                .then(|| params.iter().position(|p| *p == t.text))
                .flatten()
        };
        let mut out: Vec<PTok> = Vec::new();
        let mut i = 0;
        while i < body.len() {
            let t = &body[i];
            if t.text == "#"
                && let Some(p) = body.get(i + 1).and_then(param)
            {
                let s: String = args[p]
                    .iter()
                    .enumerate()
                    .map(|(k, a)| {
                        if k > 0 && a.space {
                            format!(" {}", a.text)
                        } else {
                            a.text.clone()
                        }
                    })
                    .collect();
                out.push(PTok {
                    kind: Kind::Literal,
                    text: format!("{s:?}"),
                    space: t.space,
                    hide: Rc::new(Vec::new()),
                });
                i += 2;
                continue;
            }
            let pasted = body.get(i + 1).is_some_and(|n| n.text == "##")
                || (i > 0 && body[i - 1].text == "##");
            match param(t) {
                Some(p) if pasted => out.extend(args[p].iter().cloned()),
                Some(p) => {
                    let e = self.expand(args[p].clone(), in_if)?;
                    out.extend(e);
                }
                None => out.push(t.clone()),
            }
            i += 1;
        }
        // `a ## b`: one token from the spellings of both.
        let mut res: Vec<PTok> = Vec::new();
        let mut k = 0;
        while k < out.len() {
            if out[k].text == "##" && !res.is_empty() && k + 1 < out.len() {
                let left = res.pop().expect("checked");
                let text = format!("{}{}", left.text, out[k + 1].text);
                let mut toks = tokenize(&text);
                if let Some(f) = toks.first_mut() {
                    f.space = left.space;
                }
                res.extend(toks);
                k += 2;
                continue;
            }
            if out[k].text == "##" {
                k += 1;
                continue;
            }
            res.push(out[k].clone());
            k += 1;
        }
        Ok(res)
    }
}

fn number(v: &str) -> PTok {
    PTok {
        kind: Kind::Number,
        text: v.into(),
        space: true,
        hide: Rc::new(Vec::new()),
    }
}

fn punct(v: &str) -> PTok {
    PTok {
        kind: Kind::Punct,
        text: v.into(),
        space: false,
        hide: Rc::new(Vec::new()),
    }
}

/// The arguments of a call whose `(` is next in `q`, split at top-level
/// commas; the `)` is consumed.
fn take_args(q: &mut VecDeque<PTok>) -> Result<Vec<Vec<PTok>>, Stop> {
    q.pop_front();
    let mut args = vec![Vec::new()];
    let mut depth = 0;
    loop {
        let t = q.pop_front().ok_or("a macro call without ')'")?;
        match t.text.as_str() {
            "(" => depth += 1,
            ")" if depth == 0 => return Ok(args),
            ")" => depth -= 1,
            "," if depth == 0 => {
                args.push(Vec::new());
                continue;
            }
            _ => {}
        }
        args.last_mut().expect("never empty").push(t);
    }
}

/// A C integer literal: decimal, octal, hex or binary with `u`/`l` suffixes.
fn int_literal(s: &str) -> Option<i128> {
    let t = s.trim_end_matches(['u', 'U', 'l', 'L']);
    let (digits, radix) = if let Some(h) = t.strip_prefix("0x").or(t.strip_prefix("0X")) {
        (h, 16)
    } else if let Some(b) = t.strip_prefix("0b").or(t.strip_prefix("0B")) {
        (b, 2)
    } else if t.len() > 1 && t.starts_with('0') {
        (&t[1..], 8)
    } else {
        (t, 10)
    };
    let v = u64::from_str_radix(digits, radix).ok()?;
    Some(v as i128)
}

/// A character literal's value (`'a'`, `'\n'`, `'\0'`, `'\x41'`).
fn char_literal(s: &str) -> Option<i128> {
    let s = s.trim_start_matches(['L', 'u', 'U', '8']);
    let inner = s.strip_prefix('\'')?.strip_suffix('\'')?;
    let b = inner.as_bytes();
    match b {
        [c] => Some(*c as i128),
        [b'\\', rest @ ..] => match rest {
            [b'n'] => Some(10),
            [b't'] => Some(9),
            [b'r'] => Some(13),
            [b'\\'] => Some(92),
            [b'\''] => Some(39),
            [b'"'] => Some(34),
            [b'x', h @ ..] => i128::from_str_radix(std::str::from_utf8(h).ok()?, 16).ok(),
            o if o.iter().all(|d| (b'0'..=b'7').contains(d)) && !o.is_empty() => {
                i128::from_str_radix(std::str::from_utf8(o).ok()?, 8).ok()
            }
            _ => None,
        },
        _ => None,
    }
}

/// A constant expression over tokens: `?:`, the binary operators of C,
/// unary `+ - ! ~`, parentheses. In an `#if`, a name left after expansion
/// is 0 (as in C); elsewhere it makes the expression not constant.
struct Eval<'t> {
    toks: &'t [PTok],
    pos: usize,
    in_if: bool,
}

impl<'t> Eval<'t> {
    fn new(toks: &'t [PTok], in_if: bool) -> Self {
        Eval {
            toks,
            pos: 0,
            in_if,
        }
    }

    /// The value, if the tokens are exactly one expression.
    fn whole(mut self) -> Option<i128> {
        if self.toks.is_empty() {
            return None;
        }
        let v = self.ternary()?;
        (self.pos == self.toks.len()).then_some(v)
    }

    fn peek(&self) -> Option<&str> {
        self.toks.get(self.pos).map(|t| t.text.as_str())
    }

    fn eat(&mut self, p: &str) -> bool {
        if self.peek() == Some(p) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn ternary(&mut self) -> Option<i128> {
        let c = self.binary(0)?;
        if self.eat("?") {
            let a = self.ternary()?;
            if !self.eat(":") {
                return None;
            }
            let b = self.ternary()?;
            return Some(if c != 0 { a } else { b });
        }
        Some(c)
    }

    fn binary(&mut self, min: u8) -> Option<i128> {
        const OPS: &[(&str, u8)] = &[
            ("||", 1),
            ("&&", 2),
            ("|", 3),
            ("^", 4),
            ("&", 5),
            ("==", 6),
            ("!=", 6),
            ("<", 7),
            (">", 7),
            ("<=", 7),
            (">=", 7),
            ("<<", 8),
            (">>", 8),
            ("+", 9),
            ("-", 9),
            ("*", 10),
            ("/", 10),
            ("%", 10),
        ];
        let mut l = self.unary()?;
        loop {
            let Some(&(op, prec)) = self.peek().and_then(|p| OPS.iter().find(|(o, _)| *o == p))
            else {
                return Some(l);
            };
            if prec < min.max(1) {
                return Some(l);
            }
            self.pos += 1;
            let r = self.binary(prec + 1)?;
            l = match op {
                "||" => (l != 0 || r != 0) as i128,
                "&&" => (l != 0 && r != 0) as i128,
                "|" => l | r,
                "^" => l ^ r,
                "&" => l & r,
                "==" => (l == r) as i128,
                "!=" => (l != r) as i128,
                "<" => (l < r) as i128,
                ">" => (l > r) as i128,
                "<=" => (l <= r) as i128,
                ">=" => (l >= r) as i128,
                "<<" => l.checked_shl(u32::try_from(r).ok().filter(|s| *s < 64)?)?,
                ">>" => l.checked_shr(u32::try_from(r).ok().filter(|s| *s < 64)?)?,
                "+" => l.checked_add(r)?,
                "-" => l.checked_sub(r)?,
                "*" => l.checked_mul(r)?,
                "/" => l.checked_div(r)?,
                _ => l.checked_rem(r)?,
            };
        }
    }

    fn unary(&mut self) -> Option<i128> {
        let t = self.toks.get(self.pos)?;
        self.pos += 1;
        match (t.kind.clone(), t.text.as_str()) {
            (Kind::Punct, "-") => self.unary()?.checked_neg(),
            (Kind::Punct, "+") => self.unary(),
            (Kind::Punct, "!") => Some((self.unary()? == 0) as i128),
            (Kind::Punct, "~") => Some(!self.unary()?),
            (Kind::Punct, "(") => {
                let v = self.ternary()?;
                self.eat(")").then_some(v)
            }
            (Kind::Number, s) => int_literal(s),
            (Kind::Literal, s) if s.ends_with('\'') => char_literal(s),
            (Kind::Ident, _) if self.in_if => Some(0),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A search over in-memory files.
    fn files(list: &[(&str, &str)]) -> HeaderSearch {
        let map: HashMap<PathBuf, String> = list
            .iter()
            .map(|(p, t)| (PathBuf::from(p), t.to_string()))
            .collect();
        HeaderSearch {
            dirs: vec!["/a".into(), "/b".into()],
            read: Arc::new(move |p: &Path| {
                map.get(p)
                    .cloned()
                    .ok_or_else(|| std::io::ErrorKind::NotFound.into())
            }),
        }
    }

    fn ints(m: &HeaderMacros) -> HashMap<&str, i128> {
        m.ints.iter().map(|(n, v)| (n.as_str(), *v)).collect()
    }

    #[test]
    fn integer_macros_through_nested_includes_and_other_macros() {
        let s = files(&[
            (
                "/b/sys/socket.h",
                "#ifndef _S\n#define _S 1\n#include <bits/socket.h>\n#include <stddef.h>\n#endif\n",
            ),
            (
                "/a/bits/socket.h",
                "/* families */\n#define PF_INET\t2 /* IP */\n#define AF_INET PF_INET\n\
                 #define SHIFTED (1U << 4) | \\\n  0x3\n#define NEG (-PF_INET)\n\
                 #define CAST ((int) 0)\n#define F(x) ((x) + 1)\n#define USES_F F(PF_INET)\n\
                 #define GLUE(a, b) a ## b\n#define PASTED GLUE(PF_, INET)\n#define CH 'A'\n\
                 #if L'\\0' - 1 > 0\n#define WIDE 1\n#else\n#define WIDE 2\n#endif\n",
            ),
        ]);
        let m = read(&s, &[("sys/socket.h".into(), false)]);
        let v = ints(&m);
        assert_eq!(v["AF_INET"], 2);
        assert_eq!(v["PF_INET"], 2);
        assert_eq!(v["SHIFTED"], 19);
        assert_eq!(v["NEG"], -2);
        assert_eq!(v["USES_F"], 3);
        assert_eq!(v["PASTED"], 2);
        assert_eq!(v["CH"], 65);
        assert_eq!(v["WIDE"], 2, "wchar_t is signed");
        assert_eq!(v["_S"], 1);
        assert!(!v.contains_key("CAST") && !v.contains_key("F"));
        assert_eq!(m.others["CAST"], "/a/bits/socket.h");
        // stddef.h is nowhere: noted, not fatal.
        assert_eq!(m.notes.len(), 1, "{:?}", m.notes);
        assert!(m.notes[0].starts_with("<stddef.h> was not found in /a, /b"));
    }

    #[test]
    fn conditionals_choose_definitions() {
        let s = files(&[(
            "/a/c.h",
            "#if defined(__x86_64__) && __GNUC__ >= 4\n# define A 1\n#elif 1\n# define A 2\n#else\n# define A 3\n#endif\n\
             #ifdef __has_attribute\n#define HAS 1\n#else\n#define HAS 0\n#endif\n\
             #if __has_include(<c.h>) && !__has_include(<nope.h>)\n#define INC 1\n#endif\n\
             #define USE(F) USE_ ## F\n#define USE_X 1\n#if USE(X)\n#define B 7\n#endif\n\
             #if UNDEFINED_NAME\n#define C 1\n#else\n#define C 0\n#endif\n\
             #define D 5\n#undef D\n#if 0\n#error not taken\n#if nested garbage (\n#endif\n#endif\n",
        )]);
        let m = read(&s, &[("c.h".into(), false)]);
        let v = ints(&m);
        assert_eq!(
            (v["A"], v["HAS"], v["INC"], v["B"], v["C"]),
            (1, 0, 1, 7, 0)
        );
        assert!(!v.contains_key("D"));
        assert!(m.notes.is_empty(), "{:?}", m.notes);
    }

    #[test]
    fn include_next_and_quoted_includes() {
        let s = files(&[
            (
                "/a/l.h",
                "#define FIRST 1\n#include_next <l.h>\n#include \"q.h\"\n",
            ),
            ("/b/l.h", "#define SECOND 2\n"),
            ("/a/q.h", "#define QUOTED 3\n"),
        ]);
        let v = read(&s, &[("l.h".into(), false)]);
        let v = ints(&v);
        assert_eq!((v["FIRST"], v["SECOND"], v["QUOTED"]), (1, 2, 3));
    }

    #[test]
    fn problems_stop_the_reading_with_a_note() {
        let s = files(&[
            (
                "/a/e.h",
                "#define BEFORE 1\n#include \"f.h\"\n#define AFTER 2\n",
            ),
            ("/a/f.h", "#if 1\n#error this platform is wrong\n#endif\n"),
            ("/a/loop.h", "#include <loop.h>\n"),
            ("/a/bad.h", "#if (1\n#endif\n"),
        ]);
        let m = read(&s, &[("e.h".into(), false)]);
        assert!(ints(&m).contains_key("BEFORE") && !ints(&m).contains_key("AFTER"));
        assert!(
            m.notes[0].contains("/a/f.h:2: #error this platform is wrong"),
            "{:?}",
            m.notes
        );
        let m = read(&s, &[("loop.h".into(), false)]);
        assert!(
            m.notes[0].contains("nested more than 200 deep"),
            "{:?}",
            m.notes
        );
        let m = read(&s, &[("bad.h".into(), false)]);
        assert!(
            m.notes[0].contains("/a/bad.h:1: cannot evaluate #if ( 1"),
            "{:?}",
            m.notes
        );
    }
}
