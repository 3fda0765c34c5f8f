//! Which kernel module defines a function, from a kernel's module files
//! (`lib/modules/VERSION/kernel/**/*.ko`): what lets a kprobe name a
//! function that is not in the image before its module is loaded. Only
//! names come from here; a module's run-time addresses come from the
//! guest's own symbol table of the loaded module.

use object::{Object, ObjectSection, ObjectSymbol, SymbolKind};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Module files read at most (a 6.1 distribution kernel ships about 4,000).
const MAX_MODULE_FILES: usize = 32_768;
/// Largest module file read (the largest of Debian's 6.1 is about 12 MB).
const MAX_MODULE_FILE: u64 = 256 << 20;
/// First line of the cache file; a changed format invalidates old ones.
const MAGIC: &str = "vmprobe-module-functions 1";

#[derive(Debug, thiserror::Error)]
pub enum ModulesError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The functions of a kernel's modules: by function name, the modules
/// (as the kernel names them: the file's stem with `-` as `_`) that
/// define one of that name.
#[derive(Clone, Debug, Default)]
pub struct ModuleFunctions {
    by_name: HashMap<String, Vec<Arc<str>>>,
}

impl ModuleFunctions {
    /// The modules defining function `name`, in the order of their paths.
    pub fn modules_of(&self, name: &str) -> &[Arc<str>] {
        self.by_name.get(name).map(Vec::as_slice).unwrap_or(&[])
    }

    /// The functions whose names match `pattern` (`*`, `?`, as
    /// [`crate::KernelSymbols::matching`]), with their modules, by name.
    pub fn matching(&self, pattern: &str) -> Vec<(&str, &[Arc<str>])> {
        let mut found: Vec<(&str, &[Arc<str>])> = self
            .by_name
            .iter()
            .filter(|(name, _)| crate::glob(pattern, name))
            .map(|(name, modules)| (name.as_str(), modules.as_slice()))
            .collect();
        found.sort_unstable_by_key(|(name, _)| *name);
        found
    }

    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }

    /// The functions of the module files below `dir` (compressed files,
    /// `.ko.xz` and the like, are not read). A file that is no ELF
    /// object is skipped.
    pub fn from_dir(dir: &Path) -> Result<ModuleFunctions, ModulesError> {
        let mut files = module_files(dir)?;
        files.sort();
        let mut out = ModuleFunctions::default();
        for path in files {
            let Ok(bytes) = std::fs::read(&path) else {
                continue;
            };
            let module: Arc<str> = module_name(&path).into();
            for name in functions_of(&bytes) {
                out.by_name.entry(name).or_default().push(module.clone());
            }
        }
        Ok(out)
    }

    /// [`ModuleFunctions::from_dir`], kept in `cache` (a file) for the next
    /// run: reading every module of a distribution kernel takes seconds.
    /// The cache names `dir` and its files' sizes and times; any change
    /// reads the files again.
    pub fn from_dir_cached(dir: &Path, cache: &Path) -> Result<ModuleFunctions, ModulesError> {
        let stamp = dir_stamp(dir)?;
        if let Some(found) = std::fs::read_to_string(cache)
            .ok()
            .and_then(|t| parse_cache(&t, &stamp))
        {
            return Ok(found);
        }
        let built = ModuleFunctions::from_dir(dir)?;
        // A cache that cannot be written costs the next run time, nothing more.
        let tmp = cache.with_extension("tmp");
        if std::fs::write(&tmp, built.to_cache(&stamp)).is_ok() {
            let _ = std::fs::rename(&tmp, cache);
        }
        Ok(built)
    }

    fn to_cache(&self, stamp: &str) -> String {
        let mut names: Vec<_> = self.by_name.iter().collect();
        names.sort();
        let mut s = format!("{MAGIC}\n{stamp}\n");
        for (name, modules) in names {
            s.push_str(name);
            for m in modules {
                s.push(' ');
                s.push_str(m);
            }
            s.push('\n');
        }
        s
    }
}

fn parse_cache(text: &str, stamp: &str) -> Option<ModuleFunctions> {
    let mut lines = text.lines();
    if lines.next()? != MAGIC || lines.next()? != stamp {
        return None;
    }
    let mut interned: HashMap<&str, Arc<str>> = HashMap::new();
    let mut out = ModuleFunctions::default();
    for line in lines {
        let mut words = line.split(' ');
        let name = words.next()?;
        let modules: Vec<Arc<str>> = words
            .map(|m| interned.entry(m).or_insert_with(|| m.into()).clone())
            .collect();
        if modules.is_empty() {
            return None;
        }
        out.by_name.insert(name.to_string(), modules);
    }
    Some(out)
}

/// What identifies the module files as they are: the directory, how many
/// files, and a hash of their names, sizes and modification times.
fn dir_stamp(dir: &Path) -> Result<String, ModulesError> {
    let mut files = module_files(dir)?;
    files.sort();
    // FNV-1a: a cache key, nothing to defend against.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut mix = |bytes: &[u8]| {
        for &b in bytes {
            h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    };
    for f in &files {
        mix(f.as_os_str().as_encoded_bytes());
        if let Ok(meta) = f.metadata() {
            mix(&meta.len().to_le_bytes());
            let mtime = meta
                .modified()
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_nanos());
            mix(&mtime.to_le_bytes());
        }
    }
    Ok(format!("{} {} {h:016x}", dir.display(), files.len()))
}

/// Every `.ko` file below `dir`, bounded.
fn module_files(dir: &Path) -> Result<Vec<PathBuf>, ModulesError> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        let entries = std::fs::read_dir(&d).map_err(|source| ModulesError::Io {
            path: d.clone(),
            source,
        })?;
        for e in entries.flatten() {
            let Ok(t) = e.file_type() else { continue };
            let path = e.path();
            if t.is_dir() {
                todo.push(path);
            } else if t.is_file()
                && path.extension().is_some_and(|x| x == "ko")
                && out.len() < MAX_MODULE_FILES
                && e.metadata().is_ok_and(|m| m.len() <= MAX_MODULE_FILE)
            {
                out.push(path);
            }
        }
    }
    Ok(out)
}

/// The kernel's name of the module in file `path`: `md-mod.ko` is `md_mod`.
pub fn module_name(path: &Path) -> String {
    let stem = path.file_stem().unwrap_or_default().to_string_lossy();
    stem.replace('-', "_")
}

/// The names of the functions a module object defines in its code.
fn functions_of(bytes: &[u8]) -> Vec<String> {
    let Ok(file) = object::File::parse(bytes) else {
        return Vec::new();
    };
    file.symbols()
        .filter(|s| s.kind() == SymbolKind::Text && s.is_definition())
        .filter(|s| {
            s.section_index()
                .and_then(|i| file.section_by_index(i).ok())
                .and_then(|sec| sec.name().ok().map(|n| !n.starts_with(".init")))
                .unwrap_or(false)
        })
        .filter_map(|s| s.name().ok().filter(|n| !n.is_empty()).map(String::from))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use object::write::{Object as WriteObject, StandardSection, Symbol, SymbolSection};
    use object::{Architecture, BinaryFormat, Endianness, SymbolFlags, SymbolScope};

    /// A relocatable x86-64 object defining `funcs` in .text, as a module is.
    fn module(funcs: &[&str]) -> Vec<u8> {
        let mut obj = WriteObject::new(BinaryFormat::Elf, Architecture::X86_64, Endianness::Little);
        let text = obj.section_id(StandardSection::Text);
        for (i, f) in funcs.iter().enumerate() {
            let off = obj.append_section_data(text, &[0xc3; 16], 16);
            obj.add_symbol(Symbol {
                name: f.as_bytes().to_vec(),
                value: off,
                size: 16,
                kind: SymbolKind::Text,
                scope: if i % 2 == 0 {
                    SymbolScope::Compilation
                } else {
                    SymbolScope::Linkage
                },
                weak: false,
                section: SymbolSection::Section(text),
                flags: SymbolFlags::None,
            });
        }
        obj.write().unwrap()
    }

    #[test]
    fn names_each_function_by_the_modules_that_define_it_and_caches_them() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("fs/xfs");
        std::fs::create_dir_all(&sub).unwrap();
        std::fs::write(sub.join("xfs.ko"), module(&["xfs_file_open", "shared"])).unwrap();
        std::fs::write(
            dir.path().join("md-mod.ko"),
            module(&["md_flush_request", "shared"]),
        )
        .unwrap();
        std::fs::write(dir.path().join("junk.ko"), b"not an ELF file").unwrap();
        let cache = dir.path().join("functions.cache");
        let found = ModuleFunctions::from_dir_cached(dir.path(), &cache).unwrap();
        assert_eq!(&*found.modules_of("xfs_file_open")[0], "xfs");
        assert_eq!(&*found.modules_of("md_flush_request")[0], "md_mod");
        let shared: Vec<&str> = found.modules_of("shared").iter().map(|m| &**m).collect();
        assert_eq!(shared, ["xfs", "md_mod"]);
        assert!(found.modules_of("nope").is_empty());
        let names: Vec<&str> = found.matching("*_f*").iter().map(|(n, _)| *n).collect();
        assert_eq!(names, ["md_flush_request", "xfs_file_open"]);
        assert!(cache.is_file());
        // From the cache: the same answers.
        let again = ModuleFunctions::from_dir_cached(dir.path(), &cache).unwrap();
        assert_eq!(again.len(), found.len());
        assert_eq!(&*again.modules_of("xfs_file_open")[0], "xfs");
        // A changed file is read again.
        std::fs::write(sub.join("xfs.ko"), module(&["xfs_file_fsync"])).unwrap();
        let changed = ModuleFunctions::from_dir_cached(dir.path(), &cache).unwrap();
        assert!(changed.modules_of("xfs_file_open").is_empty());
        assert_eq!(&*changed.modules_of("xfs_file_fsync")[0], "xfs");
    }

    #[test]
    fn a_missing_directory_is_an_error_naming_it() {
        let e = ModuleFunctions::from_dir(Path::new("/nonexistent/modules")).unwrap_err();
        assert!(e.to_string().starts_with("/nonexistent/modules: "), "{e}");
    }
}
