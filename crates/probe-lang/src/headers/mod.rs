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

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;

mod eval;
mod expand;
mod tokens;

use eval::Eval;
use tokens::{Kind, PTok, logical_lines, tokenize};

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
    /// Read before the program's first `#include`, as clang's
    /// `-include FILE` reads them before the main file.
    pub forced: Vec<PathBuf>,
    /// Defined before any header, as `-D NAME=VALUE` (after the
    /// compiler's own predefined macros).
    pub defines: Vec<(String, String)>,
    /// Which headers these are, noted with what the reading missed (the
    /// host's only, when the guest kernel's are not known).
    pub about: Option<String>,
    /// Reads a file; `ErrorKind::NotFound` means there is none.
    pub read: Arc<ReadFn>,
}

impl std::fmt::Debug for HeaderSearch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HeaderSearch")
            .field("dirs", &self.dirs)
            .field("forced", &self.forced)
            .field("defines", &self.defines)
            .field("about", &self.about)
            .finish_non_exhaustive()
    }
}

/// bpftrace 0.17's `-D`s with kernel headers (`get_kernel_cflags`), with
/// `__TARGET_ARCH_x86` as its `ARCH=x86` gives.
pub const KERNEL_DEFINES: &[(&str, &str)] = &[
    ("__KERNEL__", "1"),
    ("__BPF_TRACING__", "1"),
    ("__HAVE_BUILTIN_BSWAP16__", "1"),
    ("__HAVE_BUILTIN_BSWAP32__", "1"),
    ("__HAVE_BUILTIN_BSWAP64__", "1"),
    ("KBUILD_MODNAME", "\"bpftrace\""),
    ("__TARGET_ARCH_x86", "1"),
];

impl HeaderSearch {
    /// A search of `dirs` only, nothing forced or defined.
    pub fn new(dirs: Vec<PathBuf>, read: Arc<ReadFn>) -> Self {
        HeaderSearch {
            dirs,
            forced: Vec::new(),
            defines: Vec::new(),
            about: None,
            read,
        }
    }

    /// The search bpftrace 0.17 makes with a kernel's headers: its `-I`
    /// directories for x86 (`ksrc` the pristine tree, `kobj` the build
    /// tree with the generated headers; the same directory for a kernel
    /// built in its tree), which clang searches before the `-isystem`
    /// host directories, `-include include/linux/kconfig.h` and
    /// [`KERNEL_DEFINES`].
    pub fn kernel(ksrc: &Path, kobj: &Path, read: Arc<ReadFn>) -> Self {
        let mut dirs = vec![
            ksrc.join("arch/x86/include"),
            kobj.join("arch/x86/include/generated"),
            ksrc.join("include"),
            kobj.join("include"),
            ksrc.join("arch/x86/include/uapi"),
            kobj.join("arch/x86/include/generated/uapi"),
            ksrc.join("include/uapi"),
            kobj.join("include/generated/uapi"),
        ];
        dirs.extend(Self::host_dirs());
        HeaderSearch {
            dirs,
            forced: vec![ksrc.join("include/linux/kconfig.h")],
            defines: KERNEL_DEFINES
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect(),
            about: None,
            read,
        }
    }

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
    /// Header files read, and their bytes (against [`MAX_FILES`] and
    /// [`MAX_BYTES`]).
    pub files: usize,
    pub bytes: usize,
}

#[derive(Clone, Debug)]
struct Def {
    params: Option<Vec<String>>,
    variadic: bool,
    body: Vec<PTok>,
    file: Rc<str>,
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
pub const PREDEFINED: &[(&str, &str)] = &[
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
    /// The forced includes were read (at the first `#include`).
    started: bool,
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
        for (n, v) in &search.defines {
            r.defs.insert(
                n.clone(),
                Def {
                    params: None,
                    variadic: false,
                    body: tokenize(v),
                    file: builtin.clone(),
                },
            );
        }
        HeaderReader {
            r,
            stopped: false,
            started: false,
        }
    }

    /// The program's first `#include` reads the forced headers first
    /// (after any `#define` of the program before it, which clang would
    /// read after them: a difference only for a program that defines a
    /// name those headers test).
    fn start(&mut self) {
        self.started = true;
        let search = self.r.search;
        if let Some(about) = &search.about {
            self.r.notes.push(about.clone());
        }
        for f in &search.forced {
            let name = f.display().to_string();
            if let Err(stop) = self.r.include(&name, true, None, None, 0) {
                self.r.notes.push(format!("-include {name}: {stop}"));
                self.stopped = true;
                return;
            }
        }
    }

    /// Reads `#include <name>` (`"name"` when `quoted`). After a problem
    /// that stopped the reading, later includes are not read.
    pub fn include(&mut self, name: &str, quoted: bool) {
        if !self.started {
            self.start();
        }
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
            files: self.r.files,
            bytes: self.r.bytes,
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
                // The guard pops the conditional (once, whichever arm runs).
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
}

#[cfg(test)]
mod tests;
