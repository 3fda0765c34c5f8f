//! `vmprobe list [-v] [PATTERN]`: every probe a script can name, without
//! booting: kernel functions (from the image's symbols), QEMU's trace events
//! (from the QEMU binary), the guest's syscall tracepoints (from the image's
//! syscall metadata), the host's tracepoints (from tracefs) and the
//! kinds that take parameters (interval, profile, watchpoint), as
//! `bpftrace -l` lists probes. `-v` adds parameters and fields, as
//! `bpftrace -lv` does.

use crate::GuestArgs;
use crate::kernel::{guest_image, load_kernel, load_symbols};
use anyhow::{Result, bail};
use kernel_image::glob;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// Probe kinds whose names are patterns of parameters, not a catalogue.
const PARAMETRIC: [&str; 8] = [
    "BEGIN",
    "END",
    "interval:s:N",
    "interval:ms:N",
    "interval:us:N",
    "interval:hz:N",
    "profile:hz:N",
    "watchpoint:ADDR:LEN:r|w|rw",
];

/// What a listing pattern selects: one kind (`kprobe:vfs_*`) or every kind
/// (`vfs_*`, matched against the name after the kind).
struct Selection<'a> {
    kind: Option<&'a str>,
    name: &'a str,
}

impl<'a> Selection<'a> {
    fn parse(pattern: Option<&'a str>) -> Self {
        let pattern = pattern.unwrap_or("*");
        for kind in [
            "kprobe",
            "kfunc",
            "kretfunc",
            "vmm",
            "host:tracepoint",
            "host:t",
            "tracepoint",
            "t",
            "interval",
            "profile",
            "watchpoint",
        ] {
            if let Some(name) = pattern.strip_prefix(kind).and_then(|r| r.strip_prefix(':')) {
                let kind = match kind {
                    "t" => "tracepoint",
                    "host:t" => "host:tracepoint",
                    k => k,
                };
                return Selection {
                    kind: Some(kind),
                    name,
                };
            }
        }
        Selection {
            kind: None,
            name: pattern,
        }
    }

    fn wants(&self, kind: &str) -> bool {
        self.kind.is_none_or(|k| k == kind)
    }
}

pub fn list(pattern: Option<&str>, verbose: bool, args: &GuestArgs, qemu: &Path) -> Result<()> {
    let sel = Selection::parse(pattern);
    let mut out = std::io::stdout().lock();
    let mut emit = |text: String| out.write_all(text.as_bytes()).is_ok();
    if let Some(p) = pattern
        && let Some((kind, rest)) = p.split_once(':')
        && matches!(kind, "uprobe" | "u" | "uretprobe" | "ur")
    {
        list_uprobes(kind, rest, args, &mut emit)?;
        return Ok(());
    }
    if let Some(p) = pattern
        && let Some(rest) = p.strip_prefix("usdt:").or_else(|| p.strip_prefix("U:"))
    {
        list_usdt(rest, args, &mut emit)?;
        return Ok(());
    }
    if sel.wants("kprobe") && !list_kprobes(&sel, verbose, args, &mut emit)? {
        return Ok(()); // stdout closed (e.g. piped into head)
    }
    for kind in ["kfunc", "kretfunc"] {
        if sel.kind == Some(kind) && !list_kfuncs(kind, &sel, verbose, args, &mut emit)? {
            return Ok(());
        }
    }
    if sel.wants("vmm") && !list_vmm(&sel, verbose, qemu, &mut emit) {
        return Ok(());
    }
    if sel.wants("tracepoint") && !list_guest_tracepoints(&sel, verbose, args, &mut emit)? {
        return Ok(());
    }
    if sel.wants("host:tracepoint") && !list_tracepoints(&sel, verbose, &mut emit) {
        return Ok(());
    }
    for probe in PARAMETRIC {
        let (kind, rest) = probe.split_once(':').unwrap_or((probe, ""));
        let matched = match sel.kind {
            Some(k) => k == kind && glob(sel.name, rest),
            None => glob(sel.name, probe),
        };
        if matched && !emit(format!("{probe}\n")) {
            break;
        }
    }
    Ok(())
}

/// `uprobe:PATH:PATTERN`: the function symbols of the guest's file PATH,
/// read from its host copy, as bpftrace lists an ELF's.
fn list_uprobes(
    kind: &str,
    rest: &str,
    args: &GuestArgs,
    emit: &mut dyn FnMut(String) -> bool,
) -> Result<()> {
    let kind = if kind.starts_with("uret") || kind == "ur" {
        "uretprobe"
    } else {
        "uprobe"
    };
    let Some((path, pattern)) = rest.rsplit_once(':').filter(|(p, _)| !p.is_empty()) else {
        bail!("{kind}: name the guest file: '{kind}:PATH:*' (e.g. '{kind}:/bin/busybox:*')");
    };
    let (path, host, elf) = guest_elf(path, args)?;
    if elf.functions().is_empty() {
        eprintln!(
            "vmprobe: {path} ({}) has no symbol table (stripped)",
            host.display()
        );
    }
    let mut names: Vec<&str> = elf
        .functions()
        .iter()
        .map(|f| f.name.as_str())
        .filter(|n| glob(pattern, n))
        .collect();
    names.sort_unstable();
    names.dedup();
    for name in names {
        if !emit(format!("{kind}:{path}:{name}\n")) {
            break;
        }
    }
    Ok(())
}

/// The guest's file `path` (or library name, listed as bpftrace lists it:
/// under its path): its guest path, host copy and ELF.
fn guest_elf(
    path: &str,
    args: &GuestArgs,
) -> Result<(String, std::path::PathBuf, kernel_image::UserElf)> {
    let files = crate::uprobe::GuestFiles::new(args.guest_root.as_deref());
    let path = if path.starts_with('/') {
        path.to_string()
    } else {
        files.library(path).map_err(anyhow::Error::msg)?
    };
    let host = files.host_copy(&path).map_err(anyhow::Error::msg)?;
    let elf = kernel_image::UserElf::load(&host)?;
    Ok((path, host, elf))
}

/// `usdt:PATH:PATTERN` (a probe name, or `PROVIDER:NAME`): the USDT probes
/// of the guest's file PATH as bpftrace 0.17 lists them,
/// `usdt:PATH:PROVIDER:NAME`, sorted, each once.
fn list_usdt(rest: &str, args: &GuestArgs, emit: &mut dyn FnMut(String) -> bool) -> Result<()> {
    let Some((path, pattern)) = rest.split_once(':').filter(|(p, _)| !p.is_empty()) else {
        bail!("usdt: name the guest file: 'usdt:PATH:*' (e.g. 'usdt:/bin/vmprobe-usdt:*')");
    };
    let (path, host, elf) = guest_elf(path, args)?;
    let probes = elf
        .sdt_probes()
        .map_err(|e| anyhow::anyhow!("{path} ({}): {e}", host.display()))?;
    let mut names: Vec<String> = probes
        .iter()
        .filter(|p| match pattern.split_once(':') {
            Some((prov, name)) => glob(prov, &p.provider) && glob(name, &p.name),
            None => glob(pattern, &p.name),
        })
        .map(|p| format!("usdt:{path}:{}:{}\n", p.provider, p.name))
        .collect();
    names.sort_unstable();
    names.dedup();
    for name in names {
        if !emit(name) {
            break;
        }
    }
    Ok(())
}

/// Kernel functions; with `-v`, their parameters from BTF. False once
/// stdout is closed.
fn list_kprobes(
    sel: &Selection,
    verbose: bool,
    args: &GuestArgs,
    emit: &mut dyn FnMut(String) -> bool,
) -> Result<bool> {
    let image = guest_image(args)?;
    let symbols = load_symbols(args, &image)?;
    // Sections (BTF) are loaded only for -v.
    let (symbols, guest) = if verbose {
        let k = load_kernel(symbols, &image.kernel);
        (k.symbols, Some(k.guest))
    } else {
        (Arc::new(symbols), None)
    };
    let types = guest
        .as_ref()
        .and_then(|g| g.btf())
        .map(probe_engine::BtfTypes::new);
    if verbose && types.is_none() {
        bail!("the kernel image has no BTF: -v cannot show function parameters");
    }
    // The traceable functions, as the guest's available_filter_functions
    // (bpftrace -l's source); every function symbol when the image has no
    // mcount table.
    let traceable = crate::kernel::traceable_functions(&image.kernel, &symbols);
    let functions: Vec<&kernel_image::Symbol> = match traceable {
        Some(t) => t.into_iter().filter(|s| glob(sel.name, &s.name)).collect(),
        None => {
            eprintln!(
                "vmprobe: {}: no mcount table: listing every function symbol, not only those ftrace can trace",
                image.kernel.display()
            );
            symbols.matching(sel.name)
        }
    };
    let mut seen = std::collections::HashSet::new();
    for sym in functions.into_iter().filter(|s| seen.insert(&s.name)) {
        let mut text = format!("kprobe:{}\n", sym.name);
        if let Some(t) = &types
            && let Some(proto) = probe_lang::KernelTypes::function(t, &sym.name)
        {
            for line in probe_lang::types::prototype_lines(t, &proto) {
                text.push_str(&line);
                text.push('\n');
            }
        }
        if !emit(text) {
            return Ok(false);
        }
    }
    Ok(true)
}

/// `kfunc:`/`kretfunc:` (asked for by kind only, as `bpftrace -l` lists
/// them only when asked): traceable kernel functions with a BTF prototype
/// whose parameters are all in entry registers, as `kfunc:vmlinux:F`; with `-v`,
/// the parameters and `retval` typed as bpftrace 0.17 prints them.
fn list_kfuncs(
    kind: &str,
    sel: &Selection,
    verbose: bool,
    args: &GuestArgs,
    emit: &mut dyn FnMut(String) -> bool,
) -> Result<bool> {
    let image = guest_image(args)?;
    let symbols = load_symbols(args, &image)?;
    let k = load_kernel(symbols, &image.kernel);
    let Some(btf) = k.guest.btf() else {
        bail!("the kernel image has no BTF: there are no {kind} probes");
    };
    let types = probe_engine::BtfTypes::new(btf);
    // bpftrace's `kfunc:vmlinux:F` and plain `kfunc:F` both select F.
    let pattern = sel.name.strip_prefix("vmlinux:").unwrap_or(sel.name);
    // What a kfunc wildcard would match (traceable, sorted, deduplicated).
    let names = k.kfuncs().iter().filter(|n| glob(pattern, n));
    for name in names {
        let Some(proto) = probe_lang::KernelTypes::function(&types, name) else {
            continue;
        };
        let mut text = format!("{kind}:vmlinux:{name}\n");
        if verbose {
            for line in probe_lang::types::prototype_lines(&types, &proto) {
                text.push_str(&line);
                text.push('\n');
            }
            if !matches!(
                probe_lang::KernelTypes::info(&types, proto.ret),
                probe_lang::TypeInfo::Void
            ) {
                text.push_str(&format!(
                    "    {} retval\n",
                    probe_lang::KernelTypes::type_name(&types, proto.ret)
                ));
            }
        }
        if !emit(text) {
            return Ok(false);
        }
    }
    Ok(true)
}

/// QEMU's trace events, as the binary lists them; with `-v`, each event's
/// arguments from its declaration (the installed `trace-events-all`).
fn list_vmm(
    sel: &Selection,
    verbose: bool,
    qemu: &Path,
    emit: &mut dyn FnMut(String) -> bool,
) -> bool {
    let events = match qemu_vmm::trace::list_events_from_binary(qemu, Duration::from_secs(30)) {
        Ok(events) => events,
        Err(e) => {
            // Only a listing of everything goes on without QEMU.
            eprintln!("vmprobe: vmm events not listed: {e}");
            return true;
        }
    };
    let catalogue = verbose
        .then(qemu_vmm::catalogue::Catalogue::installed)
        .flatten();
    for event in events.iter().filter(|e| glob(sel.name, e)) {
        let mut text = format!("vmm:{event}\n");
        if let Some(decl) = catalogue.as_ref().and_then(|c| c.get(event)) {
            for (ty, name) in &decl.args {
                text.push_str(&format!("    {ty} {name}\n"));
            }
        }
        if !emit(text) {
            return false;
        }
    }
    true
}

/// The guest's tracepoints that vmprobe serves, `raw_syscalls:sys_enter`
/// and `sys_exit`, and `syscalls:sys_enter_NAME` and `syscalls:sys_exit_NAME`
/// for each syscall of the image's metadata;
/// with `-v`, their fields as the guest's tracefs declares them.
fn list_guest_tracepoints(
    sel: &Selection,
    verbose: bool,
    args: &GuestArgs,
    emit: &mut dyn FnMut(String) -> bool,
) -> Result<bool> {
    let image = guest_image(args)?;
    let symbols = load_symbols(args, &image)?;
    let syscalls = crate::kernel::syscall_decls(&image.kernel, &symbols);
    let mut events: Vec<(String, &probe_lang::SyscallDecl, bool)> = syscalls
        .iter()
        .flat_map(|(name, decl)| {
            [
                (format!("syscalls:sys_enter_{name}"), decl, false),
                (format!("syscalls:sys_exit_{name}"), decl, true),
            ]
        })
        .filter(|(e, _, _)| glob(sel.name, e))
        .collect();
    events.sort_by(|a, b| a.0.cmp(&b.0));
    // raw_syscalls, with their fields as the guest's tracefs declares them.
    for (event, fields) in [
        (
            "raw_syscalls:sys_enter",
            "    long id\n    unsigned long args[6]\n",
        ),
        ("raw_syscalls:sys_exit", "    long id\n    long ret\n"),
    ] {
        if glob(sel.name, event) {
            let fields = if verbose { fields } else { "" };
            if !emit(format!("tracepoint:{event}\n{fields}")) {
                return Ok(false);
            }
        }
    }
    // The other events, served by emulating their code: fields from BTF's
    // layout of their record.
    let others = crate::kernel::other_guest_events(&image.kernel, &symbols, |finder, all| {
        all.iter()
            .filter(|(system, event)| glob(sel.name, &format!("{system}:{event}")))
            .map(|(system, event)| {
                let fields = finder
                    .find(system, event)
                    .map(|r| {
                        r.fields
                            .iter()
                            .map(|f| format!("    {}\n", f.declaration()))
                            .collect()
                    })
                    .unwrap_or_default();
                (format!("{system}:{event}"), fields)
            })
            .collect::<Vec<(String, String)>>()
    });
    let mut all: Vec<(String, String)> = events
        .into_iter()
        .map(|(event, decl, exit)| {
            let fields = decl
                .field_lines(exit)
                .iter()
                .map(|l| format!("{l}\n"))
                .collect();
            (event, fields)
        })
        .chain(others)
        .collect();
    all.sort_by(|a, b| a.0.cmp(&b.0));
    for (event, fields) in all {
        let fields = if verbose { fields.as_str() } else { "" };
        if !emit(format!("tracepoint:{event}\n{fields}")) {
            return Ok(false);
        }
    }
    Ok(true)
}

/// The host's tracepoints; with `-v`, their fields from tracefs.
fn list_tracepoints(sel: &Selection, verbose: bool, emit: &mut dyn FnMut(String) -> bool) -> bool {
    let Some(tracefs) = host_tracepoints::Tracefs::find() else {
        eprintln!("vmprobe: host tracepoints not listed: no tracefs mounted");
        return true;
    };
    let events = match tracefs.available_events() {
        Ok(events) => events,
        Err(e) => {
            eprintln!("vmprobe: host tracepoints not listed: {e}");
            return true;
        }
    };
    for tp in events {
        if !glob(sel.name, &format!("{}:{}", tp.system, tp.event)) {
            continue;
        }
        let mut text = format!("host:tracepoint:{}:{}\n", tp.system, tp.event);
        if verbose && let Ok(format) = tracefs.format(&tp) {
            for f in format.event_fields() {
                let array = match f.layout {
                    host_tracepoints::format::Layout::Array { len } => format!("[{len}]"),
                    _ => String::new(),
                };
                text.push_str(&format!("    {} {}{array}\n", f.type_name, f.name));
            }
        }
        if !emit(text) {
            return false;
        }
    }
    true
}
