//! From probe specs (names, patterns, addresses) to guest addresses.

use crate::{Error, Result};
use kernel_image::KernelSymbols;
use probe_lang::{BlockId, KprobeTarget, ProbeSpec, Program, WatchAddr, WatchMode};
use std::sync::Arc;

/// Wildcards may attach to at most this many functions (kfunc wildcards
/// are expanded, and limited, when compiling).
pub const WILDCARD_LIMIT: usize = probe_lang::WILDCARD_LIMIT;

/// A probe that fires on a host timer: `interval` runs its block once per
/// period, `profile` once per vCPU per period with that vCPU's registers.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct TimerProbe {
    pub period_ns: u64,
    pub every_vcpu: bool,
    pub block: BlockId,
    pub probe: Arc<str>,
}

/// A data watchpoint and the block it runs.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct WatchProbe {
    pub addr: u64,
    pub len: u64,
    pub mode: WatchMode,
    pub block: BlockId,
    pub probe: Arc<str>,
}

/// One probe address (a function entry, an offset into one, a raw
/// address) and the handlers that run when it is hit.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct ProbeSite {
    /// Run-time (slid) guest virtual address.
    pub addr: u64,
    pub func: Arc<str>,
    /// Blocks run at entry (`kprobe`), with their probe names.
    pub handlers: Vec<(BlockId, Arc<str>)>,
    /// Blocks run when the call made at this entry returns (`kretprobe`).
    pub ret_handlers: Vec<(BlockId, Arc<str>)>,
    /// Bytes from the start of the function (`kprobe:F+OFFSET`); 0 at an
    /// entry or an absolute address. Arming checks that a non-zero offset
    /// falls on an instruction boundary.
    pub offset: u64,
    /// Length of the instruction at `addr` if it is one the engine may skip
    /// instead of single-stepping (set when arming, from guest memory).
    pub skippable: Option<Skip>,
    /// The return handlers read the entry's argument registers (`kretfunc`'s
    /// `args`): the backend captures them at the entry with the call.
    #[serde(default)]
    pub entry_args: bool,
    /// A user address (uprobes): which file each probe here belongs to.
    /// The address is a virtual address of every process, so a hit runs a
    /// probe's handlers only where the current task maps that file there.
    #[serde(default)]
    pub user: Vec<UserFile>,
    /// A guest tracepoint's call (not a syscall's): how a hit's record is
    /// had (slid). A hit whose emulated code does not fire runs nothing.
    #[serde(default)]
    pub event: Option<Arc<kernel_tracepoints::EventRecipe>>,
    /// A function of a kernel module (not in the image): the modules that
    /// define it. The site's own address (0) is never armed; where such a
    /// module is loaded, the function's address in it is
    /// ([`ProbeSite::module_addrs`]).
    #[serde(default)]
    pub modules: Vec<Arc<str>>,
}

/// A uprobe's file: its guest path and the offset in it of the probed
/// instruction, which the current task's mapping at the hit must match.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct UserFile {
    pub probe: Arc<str>,
    pub path: Arc<str>,
    pub file_offset: u64,
    /// A PIE executable or shared library: the site's address is no
    /// run-time address; the backend serves the file offset at each
    /// process's own address for it ([`ProbeSite::relocatable`]).
    #[serde(default)]
    pub relocatable: bool,
}

/// Function symbols of the user files a program's uprobes name, for
/// `ustack` frames: by guest path, each file's functions by address
/// (start, size, name), placed at their link addresses (executables linked
/// at a fixed address only, as uprobes are).
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct UserSymbols {
    files: Vec<(Arc<str>, Vec<UserFunction>)>,
    /// Position-independent files: their executable segments (file offset,
    /// length, link address), which place a frame by its offset in the
    /// file, each process having loaded the file at its own address.
    #[serde(default)]
    relocatable: Vec<(Arc<str>, Vec<ExecSegment>)>,
}

/// An executable segment of a file: file offset, length, link address.
pub type ExecSegment = (u64, u64, u64);

/// A user function: start address, size, name.
pub type UserFunction = (u64, u64, String);

impl UserSymbols {
    /// Adds `path`'s functions (any order).
    pub fn add(&mut self, path: &str, mut functions: Vec<UserFunction>) {
        functions.sort_by_key(|f| f.0);
        self.files.push((path.into(), functions));
    }

    /// `path` is position-independent, with these executable segments
    /// (file offset, length, link address).
    pub fn set_relocatable(&mut self, path: &str, segments: Vec<ExecSegment>) {
        self.relocatable.push((path.into(), segments));
    }

    /// The function of `path` at run-time address `addr`, which the task
    /// maps from `file_offset` in the file: a position-independent file's
    /// frame placed by its offset, another's by its address.
    pub fn symbolize_mapped(
        &self,
        path: &str,
        addr: u64,
        file_offset: u64,
    ) -> Option<(String, u64)> {
        let link = match self.relocatable.iter().find(|(p, _)| &**p == path) {
            Some((_, segments)) => segments
                .iter()
                .find(|(off, len, _)| file_offset >= *off && file_offset - off < *len)
                .map(|(off, _, vaddr)| vaddr + (file_offset - off))?,
            None => addr,
        };
        self.symbolize(path, link)
    }

    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }

    /// Whether `path`'s symbols are known.
    pub fn knows(&self, path: &str) -> bool {
        self.files.iter().any(|(p, _)| &**p == path)
    }

    /// The function of `path` holding `addr`, and the offset into it.
    pub fn symbolize(&self, path: &str, addr: u64) -> Option<(String, u64)> {
        let (_, funcs) = self.files.iter().find(|(p, _)| &**p == path)?;
        let i = funcs.partition_point(|f| f.0 <= addr);
        let (start, size, name) = funcs[..i].last()?;
        let off = addr - start;
        (off < (*size).max(1)).then(|| (name.clone(), off))
    }
}

impl ProbeSite {
    /// A site in user space: served only where its file is mapped.
    pub fn is_user(&self) -> bool {
        !self.user.is_empty()
    }

    /// A user site whose probes are all in position-independent files: its
    /// own address is a link-time one, never armed; each process's
    /// run-time address for it is ([`ProbeSite::at`]).
    pub fn relocatable(&self) -> bool {
        self.is_user() && self.user.iter().all(|u| u.relocatable)
    }

    /// The probes served here, each once: an error arming or serving the
    /// site is each of theirs.
    pub fn probe_names(&self) -> Vec<Arc<str>> {
        let mut names: Vec<Arc<str>> = if self.is_user() {
            self.user.iter().map(|u| u.probe.clone()).collect()
        } else {
            let all = self.handlers.iter().chain(&self.ret_handlers);
            all.map(|(_, p)| p.clone()).collect()
        };
        names.dedup();
        names
    }

    /// A kernel module function's site, armed only where its module is.
    pub fn in_module(&self) -> bool {
        !self.modules.is_empty()
    }

    /// A site whose own address is never armed: its run-time addresses
    /// come from the guest as it runs (a process's mapping of a
    /// position-independent file, a module's load).
    pub fn deferred(&self) -> bool {
        self.relocatable() || self.in_module()
    }

    /// Where a module function's site is in loaded module `module`, whose
    /// functions (`functions`: name, run-time address) the guest's own
    /// symbol table of it gives; nothing for another module.
    pub fn module_addrs(&self, module: &str, functions: &[(String, u64)]) -> Vec<u64> {
        if !self.modules.iter().any(|m| &**m == module) {
            return Vec::new();
        }
        functions
            .iter()
            .filter(|(name, _)| *name == *self.func)
            .map(|(_, addr)| addr.wrapping_add(self.offset))
            .collect()
    }

    /// The probes of a user site at a position-independent file's offset
    /// `start + (file_offset - pgoff)` within a mapping of `path` at
    /// [start, end) from file offset `pgoff`: the run-time addresses a
    /// process mapping it that way runs them at.
    pub fn run_time_addrs(&self, path: &str, start: u64, end: u64, pgoff: u64) -> Vec<u64> {
        self.user
            .iter()
            .filter(|u| u.relocatable && &*u.path == path && u.file_offset >= pgoff)
            .map(|u| start.wrapping_add(u.file_offset - pgoff))
            .filter(|&a| a >= start && a < end)
            .collect()
    }

    /// This site served at run-time address `addr` (a process's own for a
    /// position-independent file): the same probes, checked at each hit
    /// against the file the task maps there.
    pub fn at(&self, addr: u64) -> ProbeSite {
        ProbeSite {
            addr,
            // A module function at its address is a kernel site like any.
            modules: Vec::new(),
            ..self.clone()
        }
    }

    /// The handlers of a user site whose file is `path` with the probed
    /// instruction at `file_offset` (what the current task maps at the
    /// site's address); every handler for a kernel site.
    pub fn handlers_for(
        &self,
        returning: bool,
        mapped: Option<(&str, u64)>,
    ) -> Vec<(BlockId, Arc<str>)> {
        let all = if returning {
            &self.ret_handlers
        } else {
            &self.handlers
        };
        if !self.is_user() {
            return all.clone();
        }
        let Some((path, offset)) = mapped else {
            return Vec::new();
        };
        all.iter()
            .filter(|(_, probe)| {
                self.user
                    .iter()
                    .any(|u| u.probe == *probe && &*u.path == path && u.file_offset == offset)
            })
            .cloned()
            .collect()
    }
}

/// How a hit may move the pc past the instruction at a probe site instead of
/// single-stepping it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Skip {
    /// A no-op the guest never rewrites: skip this many bytes.
    Stable(u8),
    /// A no-op the guest may rewrite: skip this many bytes after re-reading them.
    Verify(u8),
}

/// Resolves every kprobe in `program` against `symbols`, shifted by the
/// KASLR `slide`. Several probes on one address share one site.
pub fn resolve_probes(
    program: &Program,
    symbols: &KernelSymbols,
    slide: u64,
) -> Result<Vec<ProbeSite>> {
    resolve_sites(program, symbols, slide, None).map_err(|(_, e)| e)
}

/// [`resolve_probes`] for the guest named `guest`: without the probes that
/// name another guest (`vm1:kprobe:F` is armed in vm1 only), so the others
/// never stop for them.
pub fn resolve_probes_for(
    program: &Program,
    symbols: &KernelSymbols,
    slide: u64,
    guest: &str,
) -> Result<Vec<ProbeSite>> {
    resolve_sites(program, symbols, slide, Some(guest)).map_err(|(_, e)| e)
}

/// [`resolve_probes`], with the index (into [`Program::probes`]) of the
/// probe an error is about, so that it can be shown at its line:column.
pub fn resolve_probes_at(
    program: &Program,
    symbols: &KernelSymbols,
    slide: u64,
) -> std::result::Result<Vec<ProbeSite>, (usize, Error)> {
    resolve_sites(program, symbols, slide, None)
}

fn resolve_sites(
    program: &Program,
    symbols: &KernelSymbols,
    slide: u64,
    guest: Option<&str>,
) -> std::result::Result<Vec<ProbeSite>, (usize, Error)> {
    let mut sites: Vec<ProbeSite> = Vec::new();
    for (index, spec) in program.probes().iter().enumerate() {
        if guest.is_some_and(|g| !program.armed_in(index, g)) {
            continue;
        }
        let block = program.block_of(index);
        let on_return = spec.is_return()
            || matches!(spec, ProbeSpec::Kretfunc { .. })
            || spec.syscall_event().is_some_and(|(_, exit)| exit);
        let user_file_of = |at: &probe_lang::UserAddr| {
            Some((
                Arc::<str>::from(at.file.as_str()),
                at.file_offset,
                at.relocatable,
            ))
        };
        // The user file of the next site `add` makes (a usdt probe's each).
        let user_file = std::cell::Cell::new(match spec {
            ProbeSpec::Uprobe {
                resolved: Some(at), ..
            } => user_file_of(at),
            _ => None,
        });
        let mut add = |addr: u64, offset: u64, func: &str, probe: String, modules: &[Arc<str>]| {
            let probe: Arc<str> = probe.into();
            // Module sites have no address yet: one per function and offset.
            let same = |s: &ProbeSite| {
                s.addr == addr
                    && s.modules == modules
                    && (modules.is_empty() || (&*s.func == func && s.offset == offset))
            };
            let site = match sites.iter_mut().position(|s| same(s)) {
                Some(i) => &mut sites[i],
                None => {
                    sites.push(ProbeSite {
                        addr,
                        offset,
                        func: func.into(),
                        handlers: Vec::new(),
                        ret_handlers: Vec::new(),
                        skippable: None,
                        entry_args: false,
                        user: Vec::new(),
                        event: None,
                        modules: modules.to_vec(),
                    });
                    sites.last_mut().expect("just pushed")
                }
            };
            if let Some((path, file_offset, relocatable)) = user_file.take() {
                site.user.push(UserFile {
                    probe: probe.clone(),
                    path,
                    file_offset,
                    relocatable,
                });
            }
            if on_return {
                site.entry_args |= matches!(spec, ProbeSpec::Kretfunc { .. });
                site.ret_handlers.push((block, probe));
            } else {
                site.handlers.push((block, probe));
            }
        };
        let mut one = || -> Result<()> {
            match spec {
                ProbeSpec::Begin
                | ProbeSpec::End
                | ProbeSpec::Interval { .. }
                | ProbeSpec::Profile { .. }
                | ProbeSpec::Watchpoint { .. }
                | ProbeSpec::Vmm { .. }
                | ProbeSpec::HostTracepoint { .. } => {}
                ProbeSpec::Uprobe { resolved, also, .. } => {
                    let at = resolved
                        .as_ref()
                        .ok_or_else(|| Error::UnboundUprobe { probe: spec.name() })?;
                    add(at.vaddr, 0, &at.func, spec.name(), &[]);
                    for at in also {
                        user_file.set(user_file_of(at));
                        add(at.vaddr, 0, &at.func, spec.name(), &[]);
                    }
                }
                // A guest syscall tracepoint is a kprobe (sys_enter_) or a
                // kretprobe (sys_exit_) on the syscall's `__x64_sys_NAME`,
                // under the tracepoint's own name (`probe`).
                // raw_syscalls: a breakpoint at the entry of the function
                // every syscall passes (`ProbeSpec::raw_syscall_function`).
                ProbeSpec::GuestTracepoint { .. } if spec.raw_syscall_event().is_some() => {
                    let exit = spec.raw_syscall_event().expect("checked");
                    let function = ProbeSpec::raw_syscall_function(exit);
                    let sym = symbols
                        .lookup(function)
                        .filter(|s| symbols.is_text(s))
                        .ok_or_else(|| Error::UnknownSymbol {
                            probe: spec.name(),
                            name: function.to_string(),
                        })?;
                    add(sym.addr.wrapping_add(slide), 0, &sym.name, spec.name(), &[]);
                }
                // Any other guest tracepoint: a breakpoint at each of its
                // static branches, whose hits are served by emulation.
                ProbeSpec::GuestTracepoint { system, event } if spec.syscall_event().is_none() => {
                    let recipe = program
                        .guest_event(system, event)
                        .ok_or_else(|| Error::UnboundEvent { probe: spec.name() })?;
                    // Each site gets its recipe below, once `add` is done.
                    for site in &recipe.sites {
                        add(
                            site.code.wrapping_add(slide),
                            0,
                            &site.func,
                            spec.name(),
                            &[],
                        );
                    }
                }
                ProbeSpec::GuestTracepoint { system, event } => {
                    let (sys, exit) = spec.syscall_event().ok_or_else(|| Error::UnknownSymbol {
                        probe: spec.name(),
                        name: format!("{system}:{event}"),
                    })?;
                    let kind = if exit { "sys_exit_" } else { "sys_enter_" };
                    let pattern = ProbeSpec::syscall_function(sys);
                    let syms: Vec<_> = if sys.contains(['*', '?']) {
                        // Only syscalls with tracepoints: those with metadata
                        // (`__x64_sys_ni_syscall` has none), when the symbols
                        // include data (they do with CONFIG_KALLSYMS_ALL).
                        let meta = symbols.lookup("__start_syscalls_metadata").is_some();
                        symbols
                            .matching(&pattern)
                            .into_iter()
                            .filter(|s| {
                                let n = s.name.strip_prefix("__x64_sys_").unwrap_or(&s.name);
                                // SYSCALL_DEFINEn(openat) names it `__syscall_meta__openat`.
                                !meta || symbols.lookup(&format!("__syscall_meta__{n}")).is_some()
                            })
                            .collect()
                    } else {
                        symbols
                            .lookup(&pattern)
                            .filter(|s| symbols.is_text(s))
                            .into_iter()
                            .collect()
                    };
                    if syms.is_empty() {
                        return Err(Error::UnknownSymbol {
                            probe: spec.name(),
                            name: pattern,
                        });
                    }
                    if syms.len() > WILDCARD_LIMIT {
                        return Err(Error::TooManyMatches {
                            probe: spec.name(),
                            pattern,
                            count: syms.len(),
                            limit: WILDCARD_LIMIT,
                        });
                    }
                    for sym in syms {
                        let name = sym.name.strip_prefix("__x64_sys_").unwrap_or(&sym.name);
                        add(
                            sym.addr.wrapping_add(slide),
                            0,
                            &sym.name,
                            format!("tracepoint:{system}:{kind}{name}"),
                            &[],
                        );
                    }
                }
                // A kfunc is a breakpoint at the function's entry, a kretfunc
                // at its return, as kprobe and kretprobe are; the checker has
                // already typed their args from the BTF prototype.
                ProbeSpec::Kfunc { function } | ProbeSpec::Kretfunc { function } => {
                    let probe = spec.name();
                    let sym = symbols
                        .lookup(function)
                        .filter(|s| symbols.is_text(s))
                        .ok_or_else(|| Error::UnknownSymbol {
                            probe: probe.clone(),
                            name: function.clone(),
                        })?;
                    add(sym.addr.wrapping_add(slide), 0, &sym.name, probe, &[]);
                }
                ProbeSpec::Kprobe {
                    target: KprobeTarget::Address(addr),
                    offset,
                } => {
                    let addr = addr.wrapping_add(*offset);
                    let func = symbols
                        .symbolize(addr.wrapping_sub(slide))
                        .map(|(s, off)| {
                            if off == 0 {
                                s.name.clone()
                            } else {
                                format!("{}+{off}", s.name)
                            }
                        })
                        .unwrap_or_else(|| format!("{addr:#x}"));
                    add(addr, 0, &func, format!("kprobe:{addr:#x}"), &[]);
                }
                ProbeSpec::Kprobe {
                    target: KprobeTarget::Function(_),
                    ..
                }
                | ProbeSpec::Kretprobe { .. } => {
                    let (kind, pattern, offset) = match spec {
                        ProbeSpec::Kprobe {
                            target: KprobeTarget::Function(p),
                            offset,
                        } => ("kprobe", p, offset),
                        ProbeSpec::Kretprobe { function } => ("kretprobe", function, &0),
                        _ => unreachable!("matched above"),
                    };
                    let suffix = if *offset == 0 {
                        String::new()
                    } else {
                        format!("+{offset}")
                    };
                    if pattern.contains(['*', '?']) {
                        let matches = symbols.matching(pattern);
                        // And the module functions it names, placed where
                        // their modules are loaded.
                        let in_modules = module_matches(program, pattern);
                        let count = matches.len() + in_modules.len();
                        let probe = format!("{kind}:{pattern}{suffix}");
                        // A block on several attach points attaches what
                        // matches (dcsnoop.bt names `lookup_fast` and
                        // `lookup_fast.constprop.*`, one per kernel build).
                        if count == 0 && sibling_matches(program, symbols, index) {
                            return Ok(());
                        }
                        if count == 0 {
                            return Err(Error::NoMatch {
                                probe,
                                pattern: pattern.clone(),
                            });
                        }
                        if count > WILDCARD_LIMIT {
                            return Err(Error::TooManyMatches {
                                probe,
                                pattern: pattern.clone(),
                                count,
                                limit: WILDCARD_LIMIT,
                            });
                        }
                        for (function, modules) in in_modules {
                            let probe = format!("{kind}:{function}{suffix}");
                            add(0, *offset, function, probe, modules);
                        }
                        for sym in matches {
                            let probe = format!("{kind}:{}{suffix}", sym.name);
                            within_function(symbols, sym, *offset, &probe)?;
                            add(
                                sym.addr.wrapping_add(slide).wrapping_add(*offset),
                                *offset,
                                &sym.name,
                                probe,
                                &[],
                            );
                        }
                    } else {
                        let probe = format!("{kind}:{pattern}{suffix}");
                        let sym = symbols.lookup(pattern).filter(|s| symbols.is_text(s));
                        // Not in the image but in a module: placed when the
                        // guest has it loaded (its offset checked there).
                        let modules = program.executable().modules_of(pattern);
                        if let (None, Some(modules)) = (sym, modules) {
                            add(0, *offset, pattern, probe, modules);
                            return Ok(());
                        }
                        let sym = sym.ok_or_else(|| Error::UnknownSymbol {
                            probe: probe.clone(),
                            name: pattern.clone(),
                        })?;
                        within_function(symbols, sym, *offset, &probe)?;
                        add(
                            sym.addr.wrapping_add(slide).wrapping_add(*offset),
                            *offset,
                            &sym.name,
                            probe,
                            &[],
                        );
                    }
                }
            }
            Ok(())
        };
        one().map_err(|e| (index, e))?;
    }
    for recipe in &program.executable().guest_events {
        let slid = Arc::new(recipe.slid(slide));
        for site in sites.iter_mut() {
            if slid.sites.iter().any(|s| s.code == site.addr) {
                site.event = Some(slid.clone());
            }
        }
    }
    Ok(sites)
}

/// The module functions bound to `program` that `pattern` matches.
fn module_matches<'p>(program: &'p Program, pattern: &str) -> Vec<(&'p str, &'p [Arc<str>])> {
    let bound = &program.executable().module_functions;
    bound
        .iter()
        .filter(|(f, _)| kernel_image::glob(pattern, f))
        .map(|(f, m)| (f.as_str(), m.as_slice()))
        .collect()
}

/// Whether another attach point of probe `index`'s block resolves to a
/// kernel function (or is not a kernel function probe at all).
fn sibling_matches(program: &Program, symbols: &KernelSymbols, index: usize) -> bool {
    let block = program.block_of(index);
    program.probes().iter().enumerate().any(|(j, spec)| {
        if j == index || program.block_of(j) != block {
            return false;
        }
        match spec {
            ProbeSpec::Kprobe {
                target: KprobeTarget::Function(p),
                ..
            }
            | ProbeSpec::Kretprobe { function: p } => {
                if p.contains(['*', '?']) {
                    !symbols.matching(p).is_empty() || !module_matches(program, p).is_empty()
                } else {
                    symbols.lookup(p).is_some_and(|s| symbols.is_text(s))
                        || program.executable().modules_of(p).is_some()
                }
            }
            _ => true,
        }
    })
}

/// `F+OFFSET` must stay inside F, as bpftrace requires: the symbol that
/// covers the address is F itself.
fn within_function(
    symbols: &KernelSymbols,
    sym: &kernel_image::Symbol,
    offset: u64,
    probe: &str,
) -> Result<()> {
    if offset == 0 {
        return Ok(());
    }
    let outside = || Error::OffsetOutside {
        probe: probe.to_string(),
        offset,
    };
    let at = sym.addr.checked_add(offset).ok_or_else(outside)?;
    match symbols.symbolize(at) {
        Some((covering, _)) if covering.addr == sym.addr => Ok(()),
        _ => Err(outside()),
    }
}

/// The program's `interval` and `profile` probes.
pub fn resolve_timers(program: &Program) -> Vec<TimerProbe> {
    let mut out = Vec::new();
    for (index, spec) in program.probes().iter().enumerate() {
        let (unit, value, every_vcpu) = match spec {
            ProbeSpec::Interval { unit, value } => (unit, value, false),
            ProbeSpec::Profile { unit, value } => (unit, value, true),
            _ => continue,
        };
        out.push(TimerProbe {
            period_ns: unit.period_ns(*value),
            every_vcpu,
            block: program.block_of(index),
            probe: spec.name().into(),
        });
    }
    out
}

/// The program's `watchpoint` probes, symbols placed with the KASLR
/// `slide`. An error carries the probe's index, for its line:column.
pub fn resolve_watches(
    program: &Program,
    symbols: &KernelSymbols,
    slide: u64,
) -> std::result::Result<Vec<WatchProbe>, (usize, Error)> {
    let mut out = Vec::new();
    for (index, spec) in program.probes().iter().enumerate() {
        let ProbeSpec::Watchpoint { addr, len, mode } = spec else {
            continue;
        };
        let addr = match addr {
            WatchAddr::Address(a) => *a,
            WatchAddr::Symbol { name, offset } => {
                let sym = symbols.lookup(name).ok_or_else(|| {
                    let probe = spec.name();
                    (
                        index,
                        Error::UnknownSymbol {
                            probe,
                            name: name.clone(),
                        },
                    )
                })?;
                sym.addr
                    .wrapping_add(slide)
                    .checked_add(*offset)
                    .ok_or_else(|| {
                        let probe = spec.name();
                        (
                            index,
                            Error::OffsetOutside {
                                probe,
                                offset: *offset,
                            },
                        )
                    })?
            }
        };
        out.push(WatchProbe {
            addr,
            len: u64::from(*len),
            mode: *mode,
            block: program.block_of(index),
            probe: spec.name().into(),
        });
    }
    Ok(out)
}

/// The program's `vmm:` and `host:tracepoint:` probes: QEMU trace event names,
/// host tracepoints (`sys:event`), and the blocks of each probe name.
#[derive(Default)]
pub struct LayerPlan {
    pub vmm_events: Vec<String>,
    pub tracepoints: Vec<String>,
    pub handlers: std::collections::HashMap<String, Vec<(BlockId, Arc<str>)>>,
}

pub fn resolve_layers(program: &Program) -> LayerPlan {
    let mut plan = LayerPlan::default();
    for (index, spec) in program.probes().iter().enumerate() {
        match spec {
            ProbeSpec::Vmm { event } => {
                if !plan.vmm_events.contains(event) {
                    plan.vmm_events.push(event.clone());
                }
            }
            ProbeSpec::HostTracepoint { system, event } => {
                let tp = format!("{system}:{event}");
                if !plan.tracepoints.contains(&tp) {
                    plan.tracepoints.push(tp);
                }
            }
            _ => continue,
        }
        let name: Arc<str> = spec.name().into();
        plan.handlers
            .entry(spec.name())
            .or_default()
            .push((program.block_of(index), name));
    }
    plan
}

#[cfg(test)]
mod tests;
