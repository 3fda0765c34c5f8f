//! The guest's kernel as vmprobe reads it before anything boots: the
//! default guest's images, the kernel's symbols, types and unwind tables,
//! and a program compiled and checked against them.

use crate::GuestArgs;
use anyhow::{Context, Result};
use kernel_image::{KernelSections, KernelSymbols};
use linux_guest::GuestKernel;
use qemu_guest::GuestImage;
use std::sync::Arc;

pub fn guest_build() -> Result<GuestImage> {
    let cache = qemu_guest::cache_dir();
    let image =
        qemu_guest::build_default_guest(&cache, &mut |step| eprintln!("vmprobe: guest: {step}"))
            .context("building the default guest")?;
    eprintln!("vmprobe: guest: kernel {}", image.kernel.display());
    eprintln!("vmprobe: guest: initrd {}", image.initrd.display());
    Ok(image)
}

/// The user's images, else the default guest, built on first use.
pub(crate) fn guest_image(args: &GuestArgs) -> Result<GuestImage> {
    let mut image = match &args.kernel {
        Some(kernel) => {
            let default = qemu_guest::default_guest(&qemu_guest::cache_dir());
            let initrd = match (&args.initrd, default) {
                (Some(initrd), _) => initrd.clone(),
                (None, Some(d)) => d.initrd,
                (None, None) => guest_build()?.initrd,
            };
            GuestImage {
                kernel: kernel.clone(),
                initrd,
                append: qemu_guest::DEFAULT_APPEND.to_string(),
                version: "custom".into(),
            }
        }
        None => match qemu_guest::default_guest(&qemu_guest::cache_dir()) {
            Some(image) => image,
            None => {
                progress!("vmprobe: preparing the default guest (first use)");
                guest_build()?
            }
        },
    };
    if let Some(append) = &args.append {
        image.append = append.clone();
    }
    Ok(image)
}

/// The default guest, built on first use.
pub fn default_image() -> Result<GuestImage> {
    guest_image(&GuestArgs::default())
}

/// Symbols from the image itself, cached.
pub fn load_image_symbols(image: &GuestImage) -> Result<KernelSymbols> {
    load_symbols(&GuestArgs::default(), image)
}

/// What vmprobe reads from a guest kernel image: symbols, plus the sections
/// behind types and stacks (absent from System.map-style symbol files).
pub struct KernelInfo {
    pub symbols: Arc<KernelSymbols>,
    /// Parsed once (BTF, ORC); each guest takes it with its own slide.
    pub guest: GuestKernel,
    /// The image, for what only some programs need of it (syscalls).
    image: std::path::PathBuf,
    /// The guest's syscalls, read when a program first names a guest
    /// tracepoint (three more sections of the image).
    syscalls: std::sync::OnceLock<Vec<(String, probe_lang::SyscallDecl)>>,
    /// What kfunc wildcards expand to, read when a program first has one.
    kfuncs: std::sync::OnceLock<Vec<String>>,
}

impl KernelInfo {
    /// The guest's syscalls as its `syscalls:*` tracepoints declare them,
    /// sorted by name; empty if the image has no syscall metadata.
    pub fn syscalls(&self) -> &[(String, probe_lang::SyscallDecl)] {
        self.syscalls
            .get_or_init(|| syscall_decls(&self.image, &self.symbols))
    }

    /// The functions a kfunc wildcard expands to, sorted: those ftrace can
    /// trace (the image's mcount table, as the guest's
    /// `available_filter_functions`; every function symbol without one)
    /// with a BTF prototype a kfunc can serve.
    pub fn kfuncs(&self) -> &[String] {
        self.kfuncs.get_or_init(|| {
            let Some(btf) = self.guest.btf() else {
                return Vec::new();
            };
            let types = probe_engine::BtfTypes::new(btf);
            let traceable = traceable_functions(&self.image, &self.symbols)
                .unwrap_or_else(|| self.symbols.matching("*"));
            let mut names: Vec<String> = traceable
                .into_iter()
                .filter(|s| {
                    probe_lang::KernelTypes::function(&types, &s.name)
                        .is_some_and(|p| probe_lang::types::kfunc_servable(&types, &p))
                })
                .map(|s| s.name.clone())
                .collect();
            names.sort_unstable();
            names.dedup();
            names
        })
    }
}

/// The functions ftrace can trace, from the image's mcount table (what the
/// guest's `available_filter_functions` lists); `None` when the image has
/// no such table or it cannot be read.
pub fn traceable_functions<'s>(
    image: &std::path::Path,
    symbols: &'s KernelSymbols,
) -> Option<Vec<&'s kernel_image::Symbol>> {
    let cache = qemu_guest::cache_dir().join("sections");
    let sections = KernelSections::load(image, &kernel_image::mcount::SECTIONS, Some(&cache));
    kernel_image::mcount::traceable(&sections.ok()?, symbols)
}

/// The image's syscalls (see [`KernelInfo::syscalls`]); an unreadable image
/// has none (its symbols were read, so this is not expected).
pub fn syscall_decls(
    image: &std::path::Path,
    symbols: &KernelSymbols,
) -> Vec<(String, probe_lang::SyscallDecl)> {
    let cache = qemu_guest::cache_dir().join("sections");
    let _ = std::fs::create_dir_all(&cache);
    let all = match kernel_image::load_syscalls(image, symbols, Some(&cache)) {
        Ok(all) => all,
        Err(e) => {
            eprintln!("vmprobe: the guest's syscalls not read: {e}");
            Vec::new()
        }
    };
    all.into_iter()
        .map(|s| {
            let decl = probe_lang::SyscallDecl {
                nr: s.nr,
                params: s.params.into_iter().map(|p| (p.ty, p.name)).collect(),
            };
            (s.name, decl)
        })
        .collect()
}

pub fn load_kernel(symbols: KernelSymbols, image: &std::path::Path) -> KernelInfo {
    let cache = qemu_guest::cache_dir().join("sections");
    let _ = std::fs::create_dir_all(&cache);
    // Types and stacks are extras: an image without them still probes.
    let sections = KernelSections::load(image, &linux_guest::SECTIONS, Some(&cache)).ok();
    let symbols = Arc::new(symbols);
    let guest = GuestKernel::from_image_sections(symbols.clone(), 0, sections.as_ref());
    KernelInfo {
        symbols,
        guest,
        image: image.to_path_buf(),
        syscalls: std::sync::OnceLock::new(),
        kfuncs: std::sync::OnceLock::new(),
    }
}

/// Compiles with the kernel's BTF as the type provider, when the image has it.
pub fn compile_typed(
    source: &str,
    source_name: &str,
    kernel: &KernelInfo,
    options: &probe_lang::Options,
    guest_root: Option<&std::path::Path>,
) -> Result<probe_lang::Program, probe_lang::Diagnostics> {
    let points = probe_lang::attach_points(source);
    let guest_tracepoints = points
        .iter()
        .any(|p| matches!(p, probe_lang::ProbeSpec::GuestTracepoint { .. }));
    let kfunc_wildcards = points.iter().any(|p| {
        matches!(p, probe_lang::ProbeSpec::Kfunc { function } | probe_lang::ProbeSpec::Kretfunc { function }
            if function.contains(['*', '?']))
    });
    let events = guest_events(kernel, &points);
    let types = kernel.guest.btf().map(|btf| {
        let mut t = probe_engine::LayerTypes::new(probe_engine::BtfTypes::new(btf));
        if guest_tracepoints {
            t = t
                .with_syscalls(kernel.syscalls())
                .with_guest_events(&events);
        }
        if kfunc_wildcards {
            t = t.with_kfuncs(kernel.kfuncs());
        }
        t
    });
    // `#include`s: the caller's search (the guest kernel's headers, see
    // script::program_headers), else the host's.
    let mut options = options.clone();
    options
        .headers
        .get_or_insert_with(crate::script::host_headers);
    let files = crate::uprobe::GuestFiles::new(guest_root);
    if options.users.is_none() && source.contains("username") {
        options.users = files.users();
    }
    let mut program = probe_lang::compile_with(
        source,
        source_name,
        types.as_ref().map(|t| t as &dyn probe_lang::KernelTypes),
        &options,
    )?;
    crate::uprobe::bind(&mut program, &files)?;
    if let Some(modules) = module_functions(kernel, &points) {
        program.bind_module_functions(|name| module_functions_named(kernel, &modules, name));
    }
    program.bind_guest_events(|system, event| {
        events
            .iter()
            .find(|(s, e, _)| s == system && e == event)
            .map(|(_, _, found)| found.clone())
            .unwrap_or_else(|| Err("not looked up in the image".into()))
    })?;
    Ok(program)
}

/// The functions of the kernel's modules, when a kprobe or kretprobe
/// names a function the image lacks, or a wildcard, and the kernel is the
/// default guest's (whose module files vmprobe has). Their addresses come
/// from the guest once a module is loaded; this only says which module
/// has the name.
fn module_functions(
    kernel: &KernelInfo,
    points: &[probe_lang::ProbeSpec],
) -> Option<kernel_image::modules::ModuleFunctions> {
    use probe_lang::{KprobeTarget, ProbeSpec};
    let wanted = points.iter().any(|p| match p {
        ProbeSpec::Kprobe {
            target: KprobeTarget::Function(f),
            ..
        }
        | ProbeSpec::Kretprobe { function: f } => f.contains(['*', '?']) || !in_image(kernel, f),
        _ => false,
    });
    if !wanted {
        return None;
    }
    let cache = qemu_guest::cache_dir();
    let default = qemu_guest::default_guest(&cache)?;
    if !same_file(&default.kernel, &kernel.image) {
        return None;
    }
    let (dir, index) = qemu_guest::default_guest_modules(&cache)?;
    kernel_image::modules::ModuleFunctions::from_dir_cached(&dir, &index).ok()
}

/// Whether the image has `name` as a function.
fn in_image(kernel: &KernelInfo, name: &str) -> bool {
    kernel
        .symbols
        .lookup(name)
        .is_some_and(|s| kernel.symbols.is_text(s))
}

/// The module functions (not the image's) that a kprobe's name or
/// pattern names, with their modules.
fn module_functions_named(
    kernel: &KernelInfo,
    modules: &kernel_image::modules::ModuleFunctions,
    pattern: &str,
) -> Vec<(String, Vec<Arc<str>>)> {
    if !pattern.contains(['*', '?']) {
        let of = modules.modules_of(pattern);
        return match of.is_empty() || in_image(kernel, pattern) {
            true => Vec::new(),
            false => vec![(pattern.to_string(), of.to_vec())],
        };
    }
    modules
        .matching(pattern)
        .into_iter()
        .filter(|(name, _)| !in_image(kernel, name))
        .map(|(name, of)| (name.to_string(), of.to_vec()))
        .collect()
}

/// `with(finder, events)` over the image's tracepoints other than the
/// syscalls' (which their metadata lists): what `vmprobe list` shows. None
/// when the image's sections or BTF cannot be read.
pub fn other_guest_events<T: Default>(
    image: &std::path::Path,
    symbols: &KernelSymbols,
    with: impl FnOnce(&kernel_tracepoints::EventFinder, &[(String, String)]) -> T,
) -> T {
    let cache = qemu_guest::cache_dir().join("sections");
    let mut names = kernel_tracepoints::SECTIONS.to_vec();
    names.push(".BTF");
    let Ok(sections) = KernelSections::load(image, &names, Some(&cache)) else {
        return T::default();
    };
    let Some(btf) = sections
        .get(".BTF")
        .and_then(|b| kernel_btf::Btf::parse(&b.data).ok())
    else {
        return T::default();
    };
    let finder = kernel_tracepoints::EventFinder::new(symbols, &sections, &btf);
    let all: Vec<(String, String)> = finder
        .events()
        .into_iter()
        .filter(|(system, _)| system != "syscalls" && system != "raw_syscalls")
        .collect();
    with(&finder, &all)
}

/// The guest tracepoints other than syscalls' that `points` name, looked
/// up in the image: how each is served, or why it cannot be.
fn guest_events(
    kernel: &KernelInfo,
    points: &[probe_lang::ProbeSpec],
) -> Vec<probe_engine::event_types::GuestEvent> {
    let wanted: Vec<(&str, &str)> = points
        .iter()
        .filter_map(|p| match p {
            probe_lang::ProbeSpec::GuestTracepoint { system, event }
                if p.syscall_event().is_none() && p.raw_syscall_event().is_none() =>
            {
                Some((system.as_str(), event.as_str()))
            }
            _ => None,
        })
        .collect();
    if wanted.is_empty() {
        return Vec::new();
    }
    let cache = qemu_guest::cache_dir().join("sections");
    let sections = KernelSections::load(&kernel.image, &kernel_tracepoints::SECTIONS, Some(&cache))
        .map_err(|e| e.to_string());
    let finder = match (&sections, kernel.guest.btf()) {
        (Ok(sections), Some(btf)) => Ok(kernel_tracepoints::EventFinder::new(
            &kernel.symbols,
            sections,
            btf,
        )),
        (Err(e), _) => Err(format!("the image's sections could not be read: {e}")),
        (_, None) => Err("the guest kernel's image has no BTF, which serving it needs".into()),
    };
    // A wildcard names every event of the image it matches.
    let wild = |e: &str| e.contains(['*', '?']);
    let all = match (&finder, wanted.iter().any(|(_, e)| wild(e))) {
        (Ok(f), true) => f.events(),
        _ => Vec::new(),
    };
    let mut names: Vec<(String, String)> = Vec::new();
    for (system, event) in wanted {
        if wild(event) {
            names.extend(
                all.iter()
                    .filter(|(s, e)| s == system && kernel_image::glob(event, e))
                    .cloned(),
            );
        } else {
            names.push((system.to_string(), event.to_string()));
        }
    }
    names.sort();
    names.dedup();
    names
        .into_iter()
        .map(|(system, event)| {
            let found = match &finder {
                Ok(f) => f.find(&system, &event).map_err(|e| e.to_string()),
                Err(e) => Err(e.clone()),
            };
            (system, event, found)
        })
        .collect()
}

/// How `record` names and types each kernel probe's own fields: after
/// the prototypes in the image's BTF (none without BTF, or for probes that
/// do not resolve, which the run reports itself).
pub fn own_fields(
    program: &probe_lang::Program,
    kernel: &KernelInfo,
) -> probe_engine::own_fields::OwnFields {
    let sites = probe_plan::resolve_probes(program, &kernel.symbols, 0);
    match (kernel.guest.btf(), sites) {
        (Some(btf), Ok(sites)) => {
            probe_engine::own_fields::OwnFields::new(&probe_engine::BtfTypes::new(btf), &sites)
        }
        _ => Default::default(),
    }
}

/// What each probe kind's handlers can have (no guest state in BEGIN, END
/// or a VMM or host event), before booting; a backend's own lacks are
/// checked where it is chosen (`backend_plugin::check_program`).
pub fn check_capabilities(program: &probe_lang::Program) -> bool {
    match probe_engine::capabilities::check(program, &probe_engine::capabilities::Capabilities::ALL)
    {
        Ok(()) => true,
        Err(diags) => {
            eprint!("{diags}");
            false
        }
    }
}

/// Checks what the program names in the kernel (`kaddr`) before booting.
pub fn check_program(program: &probe_lang::Program, symbols: &KernelSymbols) -> Result<bool> {
    if !check_capabilities(program) {
        return Ok(false);
    }
    if let Err(diags) = program.check_kaddrs(|s| symbols.lookup(s).is_some()) {
        eprint!("{diags}");
        return Ok(false);
    }
    let resolved = probe_plan::resolve_probes_at(program, symbols, 0)
        .map(drop)
        .and_then(|()| probe_plan::resolve_watches(program, symbols, 0).map(drop));
    if let Err((index, e)) = resolved {
        let span = program
            .probe_spans()
            .get(index)
            .copied()
            .unwrap_or_default();
        match program.errors_at(&[(span, e.to_string())]) {
            Err(diags) => eprint!("{diags}"),
            Ok(()) => return Err(e.into()),
        }
        return Ok(false);
    }
    Ok(true)
}

pub(crate) fn load_symbols(args: &GuestArgs, image: &GuestImage) -> Result<KernelSymbols> {
    let path = args.symbols.as_ref().unwrap_or(&image.kernel);
    let cache = qemu_guest::cache_dir().join("symbols");
    let _ = std::fs::create_dir_all(&cache);
    KernelSymbols::load(path, Some(&cache)).with_context(|| "loading kernel symbols".to_string())
}

/// Whether two paths name one file.
pub(crate) fn same_file(a: &std::path::Path, b: &std::path::Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}
