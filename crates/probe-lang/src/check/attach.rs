//! Attach points: the text of each (`kprobe:vfs_read+4`, `interval:ms:100`)
//! parsed into a [`ProbeSpec`], and what a block's attach points allow
//! (`argN` in kprobes, `retval` in kretprobes), before its body is checked.

use crate::ast::Ast;
use crate::diag::Reporter;
use crate::lexer::parse_int;
use crate::{KernelTypes, KprobeTarget, ProbeSpec, RateUnit, UprobeTarget, WatchAddr, WatchMode};

/// The attach points of one probe block.
pub(super) struct BlockAttach {
    /// The ones that parsed, in source order.
    pub(super) specs: Vec<ProbeSpec>,
    /// Every one is a kprobe (`argN` is allowed).
    pub(super) all_kprobe: bool,
    /// Every one is a kretprobe (`retval` is allowed).
    pub(super) all_kretprobe: bool,
    /// Every one is a kretfunc (`retval` is allowed, typed).
    pub(super) all_kretfunc: bool,
}

/// Parses every block's attach points, reporting those that do not parse
/// and a second `BEGIN` or `END`. Returns (spec, index of the AST probe
/// block) in source order, and each block's [`BlockAttach`].
#[allow(clippy::type_complexity)]
pub(super) fn resolve(
    ast: &Ast,
    r: &mut Reporter<'_>,
    types: Option<&dyn KernelTypes>,
) -> (
    Vec<(ProbeSpec, usize)>,
    Vec<Option<String>>,
    Vec<BlockAttach>,
) {
    let mut probes = Vec::new();
    let mut guests = Vec::new();
    let mut blocks = Vec::new();
    let (mut begins, mut ends) = (0, 0);
    for (bi, block) in ast.probes.iter().enumerate() {
        let mut all_k = true;
        let mut all_kr = true;
        let mut all_krf = true;
        let mut specs = Vec::new();
        for (text, span) in &block.attach {
            let (guest, text) = split_guest(text);
            match parse_probe(text).and_then(|spec| per_guest(guest, spec)) {
                Ok(spec) => {
                    // bpftrace 0.17 allows one of each.
                    let n = match spec {
                        ProbeSpec::Begin => &mut begins,
                        ProbeSpec::End => &mut ends,
                        _ => &mut 0,
                    };
                    *n += 1;
                    if *n == 2 {
                        r.error(*span, format!("More than one {text} probe defined"));
                    }
                    if let Some(why) = types.and_then(|t| unknown_syscall(t, &spec)) {
                        r.error(*span, why);
                    }
                    if let Err(why) = kfunc_prototype(types, &spec) {
                        r.error(*span, why);
                    }
                    if let Err(why) = guest_event(types, &spec) {
                        r.error(*span, why);
                    }
                    all_k &= spec.is_entry();
                    all_kr &= spec.is_return();
                    all_krf &= matches!(spec, ProbeSpec::Kretfunc { .. });
                    specs.push(spec.clone());
                    probes.push((spec, bi));
                    guests.push(guest.map(str::to_string));
                }
                Err(m) => r.error(*span, m),
            }
        }
        blocks.push(BlockAttach {
            specs,
            all_kprobe: all_k,
            all_kretprobe: all_kr,
            all_kretfunc: all_krf && !block.attach.is_empty(),
        });
    }
    (probes, guests, blocks)
}

/// Every probe kind's spelling (and short name): a first segment that is
/// none of these names a guest (`vm1:kprobe:F`).
const KINDS: &[&str] = &[
    "BEGIN",
    "END",
    "kprobe",
    "k",
    "kretprobe",
    "kr",
    "kfunc",
    "f",
    "kretfunc",
    "fr",
    "interval",
    "i",
    "profile",
    "p",
    "watchpoint",
    "w",
    "vmm",
    "host",
    "tracepoint",
    "t",
    "uprobe",
    "u",
    "uretprobe",
    "ur",
    "usdt",
    "U",
    "software",
    "s",
    "hardware",
    "h",
    "rawtracepoint",
    "rt",
    "iter",
    "fentry",
    "fexit",
];

/// `GUEST:PROBE` -> (Some(GUEST), PROBE) when the first segment is not a
/// probe kind; otherwise the text as it is.
pub fn split_guest(text: &str) -> (Option<&str>, &str) {
    match text.split_once(':') {
        Some((first, rest))
            if !KINDS.contains(&first)
                && !first.is_empty()
                && first
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
                && rest
                    .split_once(':')
                    .is_some_and(|(kind, _)| KINDS.contains(&kind)) =>
        {
            (Some(first), rest)
        }
        _ => (None, text),
    }
}

/// A guest prefix is for probes that fire in a guest's kernel at a place
/// each guest arms for itself.
fn per_guest(guest: Option<&str>, spec: ProbeSpec) -> Result<ProbeSpec, String> {
    let Some(g) = guest else {
        return Ok(spec);
    };
    match spec {
        ProbeSpec::Kprobe { .. }
        | ProbeSpec::Kretprobe { .. }
        | ProbeSpec::Kfunc { .. }
        | ProbeSpec::Kretfunc { .. }
        | ProbeSpec::GuestTracepoint { .. } => Ok(spec),
        other => Err(format!(
            "{g}:{}: a guest prefix applies to kprobe, kretprobe, kfunc, kretfunc and guest tracepoint probes only",
            other.name()
        )),
    }
}

/// Why a guest syscall tracepoint names no syscall of the guest's, when
/// the types know the guest's syscalls (wildcards are matched later,
/// against the kernel's symbols).
fn unknown_syscall(types: &dyn KernelTypes, spec: &ProbeSpec) -> Option<String> {
    let (sys, _) = spec.syscall_event()?;
    if !types.knows_syscalls() || sys.contains(['*', '?']) || types.syscall(sys).is_some() {
        return None;
    }
    let ProbeSpec::GuestTracepoint { system, event } = spec else {
        return None;
    };
    Some(format!(
        "guest tracepoint {system}:{event}: the guest kernel has no syscall '{sys}' with tracepoints (see `vmprobe list 'tracepoint:syscalls:*'`)"
    ))
}

/// Why a guest tracepoint other than a syscall's cannot be served: the
/// types say whether this kernel has it and can be emulated there.
fn guest_event(types: Option<&dyn KernelTypes>, spec: &ProbeSpec) -> Result<(), String> {
    let ProbeSpec::GuestTracepoint { system, event } = spec else {
        return Ok(());
    };
    if spec.syscall_event().is_some() || spec.raw_syscall_event().is_some() {
        return Ok(());
    }
    let name = format!("guest tracepoint {system}:{event}");
    // A wildcard is expanded before checking: one still here matched nothing.
    if event.contains(['*', '?']) {
        return Err(format!(
            "{name}: no tracepoint of the guest kernel matches (see `vmprobe list 'tracepoint:{system}:*'`)"
        ));
    }
    match types.and_then(|t| t.guest_event(system, event)) {
        Some(Ok(_)) => Ok(()),
        Some(Err(why)) => Err(format!("{name}: {why}")),
        None => Err(format!(
            "{name} needs the guest kernel's image (its jump table and BTF), which this compilation does not have"
        )),
    }
}

/// SysV x86-64 passes the first six integer or pointer parameters in
/// registers; a `kfunc`'s `args` are read from them.
const REGISTER_PARAMS: usize = 6;

/// Why a `kfunc:F`/`kretfunc:F` cannot be served with typed `args`: F has no
/// BTF prototype, or a parameter that is not in an entry register (past the
/// sixth, or a struct or union passed by value). Checked for every
/// parameter, used or not, since `kretfunc` captures them all at entry.
fn kfunc_prototype(types: Option<&dyn KernelTypes>, spec: &ProbeSpec) -> Result<(), String> {
    let (ProbeSpec::Kfunc { function } | ProbeSpec::Kretfunc { function }) = spec else {
        return Ok(());
    };
    let name = spec.name();
    let Some(types) = types else {
        return Err(format!(
            "{name} needs the guest kernel's type information (BTF), which this compilation does not have"
        ));
    };
    // A wildcard is expanded before checking (`expand_kfuncs`): one still
    // here matched nothing.
    if function.contains(['*', '?']) {
        return Err(format!(
            "{name}: no function matches '{function}' (a kfunc wildcard matches the functions ftrace can trace that have a BTF prototype: see `vmprobe list 'kfunc:*'`)"
        ));
    }
    let Some(proto) = types.function(function) else {
        return Err(format!(
            "{name}: the guest kernel's BTF has no function '{function}' (no such function, or one without a prototype: see `vmprobe list 'kfunc:*'`; kprobe: probes any function with untyped arg0..arg5)"
        ));
    };
    for (i, p) in proto.params.iter().enumerate() {
        let by_value = matches!(
            types.info(p.ty),
            crate::types::TypeInfo::Struct { .. } | crate::types::TypeInfo::Union { .. }
        );
        if by_value {
            return Err(format!(
                "{name}: parameter '{}' is a '{}' passed by value, which is not supported",
                p.name,
                types.type_name(p.ty)
            ));
        }
        if i >= REGISTER_PARAMS {
            return Err(format!(
                "{name}: parameter '{}' (parameter {}) is passed on the stack; only the first {REGISTER_PARAMS} parameters (in registers) are supported",
                p.name,
                i + 1
            ));
        }
    }
    Ok(())
}

/// The shortest period of `interval` and `profile` probes (100 kHz).
/// bpftrace's are perf events on the kernel's cpu-clock, which refuses
/// higher rates (`profile:hz:1000000`: "Invalid argument") and stretches
/// shorter periods to 10 us; here every firing stops the guest.
pub const MIN_PERIOD_NS: u64 = 10_000;

/// Attach point text -> ProbeSpec.
pub fn parse_probe(text: &str) -> Result<ProbeSpec, String> {
    match text {
        "BEGIN" => return Ok(ProbeSpec::Begin),
        "END" => return Ok(ProbeSpec::End),
        _ => {}
    }
    let Some((kind, rest)) = text.split_once(':') else {
        return Err(format!("invalid probe '{text}'"));
    };
    let valid_name = |n: &str| {
        !n.is_empty()
            && n.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '*' | '?'))
    };
    match kind {
        "kprobe" | "k" => {
            let (target, off) = match rest.split_once('+') {
                Some((t, o)) => {
                    let off = parse_int(o)
                        .ok()
                        .ok_or_else(|| format!("invalid probe offset '{o}'"))?;
                    (t, off)
                }
                None => (rest, 0),
            };
            if target.starts_with("0x") {
                let a = parse_int(target)
                    .ok()
                    .ok_or_else(|| format!("invalid address '{target}'"))?;
                return Ok(ProbeSpec::Kprobe {
                    target: KprobeTarget::Address(a),
                    offset: off,
                });
            }
            if !valid_name(target) {
                return Err(format!("invalid kprobe function name '{target}'"));
            }
            if off != 0 && target.contains(['*', '?']) {
                return Err("an offset cannot be combined with a wildcard".into());
            }
            Ok(ProbeSpec::Kprobe {
                target: KprobeTarget::Function(target.to_string()),
                offset: off,
            })
        }
        "kretprobe" | "kr" => {
            if !valid_name(rest) {
                return Err(format!("invalid kretprobe function name '{rest}'"));
            }
            Ok(ProbeSpec::Kretprobe {
                function: rest.to_string(),
            })
        }
        "kfunc" | "f" | "kretfunc" | "fr" => {
            let full = if matches!(kind, "kfunc" | "f") {
                "kfunc"
            } else {
                "kretfunc"
            };
            // bpftrace's `kfunc[:mod]:fn`: the kernel itself is `vmlinux`.
            let function = match rest.split_once(':') {
                Some(("vmlinux", f)) => f,
                Some((module, _)) => {
                    return Err(format!(
                        "{full}: module '{module}' is not supported (only the kernel itself, vmlinux, has BTF here)"
                    ));
                }
                None => rest,
            };
            if !valid_name(function) {
                return Err(format!("invalid {full} function name '{function}'"));
            }
            let function = function.to_string();
            Ok(if full == "kfunc" {
                ProbeSpec::Kfunc { function }
            } else {
                ProbeSpec::Kretfunc { function }
            })
        }
        "interval" | "i" | "profile" | "p" => {
            let full = if kind.len() == 1 {
                if kind == "i" { "interval" } else { "profile" }
            } else {
                kind
            };
            let Some((unit, n)) = rest.split_once(':') else {
                return Err(format!(
                    "{full} probes take a unit and a count, e.g. '{full}:ms:100'"
                ));
            };
            let unit = match unit {
                "s" => RateUnit::S,
                "ms" => RateUnit::Ms,
                "us" => RateUnit::Us,
                "hz" => RateUnit::Hz,
                _ => {
                    return Err(format!(
                        "invalid {full} unit '{unit}' (expected s, ms, us or hz)"
                    ));
                }
            };
            let value = match parse_int(n).ok() {
                Some(v) if v > 0 => v,
                _ => return Err(format!("invalid {full} count '{n}' (a positive integer)")),
            };
            if unit.period_ns(value) < MIN_PERIOD_NS {
                return Err(format!(
                    "{full}:{}:{value} fires more than 100000 times a second, the limit \
                     (as in bpftrace, whose perf events the kernel refuses above 100000 Hz \
                     and runs at most every 10 us)",
                    unit.name()
                ));
            }
            Ok(if full == "interval" {
                ProbeSpec::Interval { unit, value }
            } else {
                ProbeSpec::Profile { unit, value }
            })
        }
        "watchpoint" | "w" => {
            let parts: Vec<&str> = rest.split(':').collect();
            let [addr, len, mode] = parts[..] else {
                return Err(
                    "watchpoint probes look like 'watchpoint:ADDR:LEN:MODE', e.g. 'watchpoint:0xffffffff81000000:8:w' or 'watchpoint:jiffies_64:8:w'"
                        .into(),
                );
            };
            let addr = if addr.starts_with(|c: char| c.is_ascii_digit()) {
                WatchAddr::Address(
                    parse_int(addr)
                        .ok()
                        .ok_or_else(|| format!("invalid watchpoint address '{addr}'"))?,
                )
            } else {
                let (name, offset) = match addr.split_once('+') {
                    Some((n, o)) => (
                        n,
                        parse_int(o)
                            .ok()
                            .ok_or_else(|| format!("invalid watchpoint offset '{o}'"))?,
                    ),
                    None => (addr, 0),
                };
                if !valid_name(name) || name.contains(['*', '?']) {
                    return Err(format!("invalid watchpoint address or symbol '{addr}'"));
                }
                WatchAddr::Symbol {
                    name: name.to_string(),
                    offset,
                }
            };
            let len = match parse_int(len).ok() {
                Some(l @ (1 | 2 | 4 | 8)) => l as u8,
                _ => return Err(format!("invalid watchpoint length '{len}' (1, 2, 4 or 8)")),
            };
            let mode = match mode {
                "r" => WatchMode::Read,
                "w" => WatchMode::Write,
                "rw" | "wr" => WatchMode::ReadWrite,
                _ => return Err(format!("invalid watchpoint mode '{mode}' (r, w or rw)")),
            };
            Ok(ProbeSpec::Watchpoint { addr, len, mode })
        }
        "vmm" => {
            if !valid_name(rest) || rest.contains(['*', '?']) {
                return Err(format!("invalid vmm event name '{rest}'"));
            }
            Ok(ProbeSpec::Vmm {
                event: rest.to_string(),
            })
        }
        "host" => {
            let Some((kind, rest)) = rest.split_once(':') else {
                return Err(format!(
                    "invalid host probe '{text}' (host:tracepoint:SYSTEM:EVENT, e.g. 'host:tracepoint:kvm:kvm_exit')"
                ));
            };
            if !matches!(kind, "tracepoint" | "t") {
                return Err(format!(
                    "unknown host probe type '{kind}' (supported: host:tracepoint:SYSTEM:EVENT)"
                ));
            }
            let (system, event) = tracepoint_name(rest, "host:tracepoint", "kvm:kvm_exit")?;
            Ok(ProbeSpec::HostTracepoint { system, event })
        }
        "tracepoint" | "t" => {
            let (system, event) = tracepoint_name(rest, "tracepoint", "syscalls:sys_enter_openat")?;
            guest_tracepoint(&system, &event)?;
            Ok(ProbeSpec::GuestTracepoint { system, event })
        }
        "uprobe" | "u" | "uretprobe" | "ur" => uprobe(rest, matches!(kind, "uretprobe" | "ur")),
        "usdt" | "U" => usdt(rest),
        "software" | "s" | "hardware" | "h" | "rawtracepoint" | "rt" | "iter" => Err(format!(
            "probe type '{kind}' is not supported (supported: BEGIN, END, kprobe, kretprobe, kfunc, kretfunc, uprobe, uretprobe, usdt, interval, profile, watchpoint, vmm, tracepoint, host:tracepoint)"
        )),
        "fentry" | "fexit" => Err(format!(
            "unknown probe type '{kind}' (bpftrace 0.17 and vmprobe spell it {}:)",
            if kind == "fentry" {
                "kfunc"
            } else {
                "kretfunc"
            }
        )),
        _ => Err(format!("unknown probe type '{kind}'")),
    }
}

/// A uprobe's or usdt probe's PATH: the guest's absolute, canonical path
/// of the file, or a library name.
fn check_user_path(kind: &str, path: &str, target: &str) -> Result<(), String> {
    // A name without '/' is a library bpftrace finds in the ld cache
    // (`libc`: `libc.so*`), looked up in the guest's before booting.
    if !path.starts_with('/') {
        let name_ok = !path.contains('/')
            && path
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '+'));
        if !name_ok {
            return Err(format!(
                "{kind}:{path}: give the file's absolute path in the guest (e.g. '{kind}:/bin/busybox:{target}') or a library name (e.g. '{kind}:libc:{target}')"
            ));
        }
    }
    if path.contains("/../") || path.ends_with("/..") || path.contains("//") {
        return Err(format!(
            "{kind}:{path}: give the file's canonical path in the guest (no '..' or '//')"
        ));
    }
    Ok(())
}

/// `PATH:PROVIDER:NAME` or `PATH:NAME` of a usdt probe (bpftrace 0.17's
/// spellings; without PROVIDER, the name under any provider).
fn usdt(rest: &str) -> Result<ProbeSpec, String> {
    let shape = || {
        "usdt probes look like 'usdt:PATH:PROVIDER:NAME' or 'usdt:PATH:NAME', e.g. 'usdt:/bin/vmprobe-usdt:vmprobe:step'".to_string()
    };
    let mut parts = rest.splitn(3, ':');
    let path = parts.next().unwrap_or_default();
    let (provider, name) = match (parts.next(), parts.next()) {
        (Some(n), None) => (None, n),
        (Some(p), Some(n)) => (Some(p), n),
        _ => return Err(shape()),
    };
    if path.is_empty() || name.is_empty() || provider.is_some_and(str::is_empty) {
        return Err(shape());
    }
    check_user_path("usdt", path, name)?;
    let valid = |n: &str| n.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    for n in provider.iter().chain([&name]) {
        if n.contains(['*', '?']) {
            return Err(format!(
                "usdt:{rest}: wildcards in usdt probes are not supported; name the probe (`vmprobe list 'usdt:{path}:*'` lists them)"
            ));
        }
        if !valid(n) {
            return Err(format!("invalid usdt probe name '{n}'"));
        }
    }
    Ok(ProbeSpec::Uprobe {
        path: path.to_string(),
        target: UprobeTarget::Usdt {
            provider: provider.map(str::to_string),
            name: name.to_string(),
        },
        ret: false,
        resolved: None,
        also: Vec::new(),
    })
}

/// `PATH:SYMBOL` or `PATH:0xADDR` of a uprobe (`ret`: a uretprobe). PATH
/// is the guest's absolute path of the file, or one of bpftrace's library
/// names (`uprobe:libc:f`), found in the guest's ld cache when uprobes are
/// bound.
fn uprobe(rest: &str, ret: bool) -> Result<ProbeSpec, String> {
    let kind = if ret { "uretprobe" } else { "uprobe" };
    let Some((path, target)) = rest.rsplit_once(':') else {
        return Err(format!(
            "{kind} probes look like '{kind}:PATH:FUNCTION', e.g. '{kind}:/bin/busybox:main'"
        ));
    };
    if path.is_empty() || target.is_empty() {
        return Err(format!(
            "{kind} probes look like '{kind}:PATH:FUNCTION', e.g. '{kind}:/bin/busybox:main'"
        ));
    }
    check_user_path(kind, path, target)?;
    let target = if target.starts_with("0x") {
        if ret {
            return Err(format!(
                "{kind}:{path}:{target}: a uretprobe names a function, not an address"
            ));
        }
        UprobeTarget::Address(
            parse_int(target).map_err(|_| format!("invalid {kind} address '{target}'"))?,
        )
    } else {
        if target.contains(['*', '?']) {
            return Err(format!(
                "{kind}:{path}:{target}: wildcards in uprobe functions are not supported; name the function (`vmprobe list '{kind}:{path}:*'` lists them)"
            ));
        }
        let (name, offset) = match target.split_once('+') {
            Some((name, off)) => {
                let off = parse_int(off)
                    .map_err(|_| format!("invalid {kind} offset '{off}' in '{target}'"))?;
                if ret {
                    return Err(format!(
                        "{kind}:{path}:{target}: a uretprobe names a function, not an offset into one"
                    ));
                }
                (name, Some(off))
            }
            None => (target, None),
        };
        let valid = !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '@' | '$'));
        if !valid {
            return Err(format!("invalid {kind} function name '{name}'"));
        }
        match offset {
            Some(off) if off > 0 => UprobeTarget::SymbolOffset(name.to_string(), off),
            _ => UprobeTarget::Symbol(name.to_string()),
        }
    };
    Ok(ProbeSpec::Uprobe {
        path: path.to_string(),
        target,
        ret,
        resolved: None,
        also: Vec::new(),
    })
}

/// `SYSTEM:EVENT` of a tracepoint spelled `kind:SYSTEM:EVENT`.
fn tracepoint_name(rest: &str, kind: &str, example: &str) -> Result<(String, String), String> {
    let Some((system, event)) = rest.split_once(':') else {
        return Err(format!(
            "{kind} probes look like '{kind}:SYSTEM:EVENT', e.g. '{kind}:{example}'"
        ));
    };
    let valid = |n: &str| {
        !n.is_empty()
            && n.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '*' | '?'))
    };
    if !valid(system) || !valid(event) {
        return Err(format!("invalid {kind} '{system}:{event}'"));
    }
    Ok((system.to_string(), event.to_string()))
}

/// Which guest tracepoints can be served from outside the guest: those a
/// breakpoint on a kernel function stands in for exactly. A syscall's
/// events fire at its `__x64_sys_NAME` entry and return with its arguments
/// and return value; any other tracepoint fires somewhere inside a
/// function with values only the tracepoint's own code computes, and
/// enabling the real one would mean changing the guest.
fn guest_tracepoint(system: &str, event: &str) -> Result<(), String> {
    let name = format!("guest tracepoint {system}:{event}");
    match system {
        "syscalls" => {
            let sys = event
                .strip_prefix("sys_enter_")
                .or_else(|| event.strip_prefix("sys_exit_"));
            match sys {
                Some(s) if !s.is_empty() => Ok(()),
                _ if event.contains(['*', '?']) => Err(format!(
                    "{name}: a wildcard must keep the sys_enter_ or sys_exit_ prefix (e.g. syscalls:sys_enter_open*)"
                )),
                _ => Err(format!(
                    "{name}: no such event (syscalls:sys_enter_NAME or syscalls:sys_exit_NAME)"
                )),
            }
        }
        "raw_syscalls" => match event {
            "sys_enter" | "sys_exit" => Ok(()),
            _ => Err(format!(
                "{name}: no such event (raw_syscalls:sys_enter or raw_syscalls:sys_exit; no wildcards)"
            )),
        },
        _ if system.contains(['*', '?']) => Err(format!(
            "{name}: a wildcard in the category is not supported for guest tracepoints; name it (syscalls:)"
        )),
        // Any other event is served by emulating its own code at the
        // hit (kernel-tracepoints); whether this kernel can is checked
        // with the types (`guest_event`).
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests;
