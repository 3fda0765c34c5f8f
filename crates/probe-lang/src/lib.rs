//! probe-lang: the vmprobe script language, a bpftrace-compatible language.
//!
//! The passes are kept apart as in bpftrace:
//!
//! 1. [`lexer`]: source -> tokens with byte spans (attach points are lexed
//!    on request, since `kprobe:vfs_*+4` is not made of ordinary tokens);
//! 2. [`parser`]: tokens -> [`ast::Ast`] (every node has a span);
//! 3. [`check`]: semantic check: attach points -> [`ProbeSpec`], expression
//!    types, builtins, calls, printf formats, consistent map key/value types;
//! 4. [`ir`]: lowering to a resolved tree IR (maps/variables/strings/formats
//!    as indices, builtins as enum variants, operators with signedness);
//!
//! Between 3 and 4, `consts` reports what constants prove wrong; after 4,
//! [`needs`] lists what each block needs of the place its probe fires.
//! Both walk the AST with the read-only visitor in `visit`.
//!
//! The crate compiles only: running the result (the [`Executable`]) is
//! `probe-runtime`'s job, and printing its output `probe-output`'s, as
//! bpftrace keeps its passes, its runtime and its output apart.
//!
//! [`compile`] runs passes 1-4; errors are [`Diagnostics`] rendered like
//! rustc. [`compile_with_types`] does the same with the guest kernel's types
//! ([`types::KernelTypes`], e.g. from BTF) for `args.NAME`, struct casts,
//! member access, `sizeof`/`offsetof` and a typed `curtask`.

#![forbid(unsafe_code)]
pub mod ast;
pub mod check;
mod consts;
pub mod diag;
pub mod filter;
pub mod format;
pub mod headers;
pub mod ir;
mod key_names;
mod kfunc_wild;
pub mod lexer;
mod lower;
pub mod needs;
pub mod parser;
mod pid_filter;
pub mod preprocess;
mod probe_spec;
pub mod types;
mod usdt;
pub mod value;
mod visit;

pub use check::{TraceSite, TraceType};
pub use diag::{Diagnostic, Diagnostics, Span};
pub use filter::FieldCondition;
pub use kfunc_wild::WILDCARD_LIMIT;
pub use probe_spec::*;
pub use types::{
    FieldType, KernelTypes, MemberInfo, Param, Prototype, SyscallDecl, TypeInfo, TypeRef,
};
pub use value::Value;

use diag::Reporter;

/// Index of a probe block (predicate + body) in the program.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct BlockId(pub u32);

/// What running a program needs and nothing more: the attach points, the
/// block of each, and the lowered IR. Serialisable, so that a backend in
/// another process (vmprobe's QEMU plugin) runs exactly the program vmprobe
/// compiled, with no compiler or kernel types of its own.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Executable {
    pub probes: Vec<ProbeSpec>,
    pub probe_blocks: Vec<BlockId>,
    /// The guest each probe is armed in (`vm1:kprobe:F`); `None`: every
    /// guest. Empty when no probe names one.
    #[serde(default)]
    pub probe_guests: Vec<Option<String>>,
    pub ir: ir::Ir,
    /// How each guest tracepoint other than a syscall's is served, found
    /// in the image before booting ([`Program::bind_guest_events`]).
    #[serde(default)]
    pub guest_events: Vec<kernel_tracepoints::EventRecipe>,
    /// The kprobe and kretprobe functions that are not in the image but in
    /// kernel modules, with the modules that define each
    /// ([`Program::bind_module_functions`]): armed where such a module is
    /// loaded.
    #[serde(default)]
    pub module_functions: Vec<(String, Vec<std::sync::Arc<str>>)>,
}

impl Executable {
    /// The modules defining kernel function `name`, when the image does
    /// not ([`Program::bind_module_functions`]).
    pub fn modules_of(&self, name: &str) -> Option<&[std::sync::Arc<str>]> {
        self.module_functions
            .iter()
            .find(|(f, _)| f == name)
            .map(|(_, m)| m.as_slice())
    }

    /// Whether probe `probe_index` is armed in guest `guest`.
    pub fn armed_in(&self, probe_index: usize, guest: &str) -> bool {
        match self.probe_guests.get(probe_index) {
            Some(Some(g)) => g == guest,
            _ => true,
        }
    }

    /// Block run when probe `probe_index` (an index into `probes`) fires.
    pub fn block_of(&self, probe_index: usize) -> BlockId {
        self.probe_blocks[probe_index]
    }
}

/// A compiled script: its [`Executable`] plus what the front end keeps for
/// checks before attaching and for dumps (the AST, the uses of `kaddr`,
/// `reg` and `trace`, the source).
#[derive(Debug)]
pub struct Program {
    exec: std::sync::Arc<Executable>,
    ast: ast::Ast,
    /// Every `kaddr("sym")` / `reg("name")` argument with its span.
    kaddrs: Vec<(String, Span)>,
    regs: Vec<(String, Span)>,
    /// Every `trace()` / `snapshot()` call with its span.
    recording: Vec<(String, Span)>,
    needs: Vec<needs::NeedUse>,
    source: String,
    source_name: String,
    /// Probes vmprobe added (the exit of `-p`'s process), last in
    /// [`Program::probes`].
    added_probes: usize,
}

impl Program {
    /// The probes the program's text names, as bpftrace counts them in
    /// `Attaching N probes...`: without those vmprobe added for `-p`.
    pub fn written_probe_count(&self) -> usize {
        self.exec.probes.len() - self.added_probes
    }

    /// What each block needs of the place its probe fires (guest state,
    /// physical memory), with where.
    pub fn needs(&self) -> &[needs::NeedUse] {
        &self.needs
    }

    /// An error at each use `unsupported` names a reason for: how a backend
    /// refuses, before anything attaches, what it cannot serve.
    pub fn check_needs(
        &self,
        unsupported: impl Fn(&needs::NeedUse) -> Option<String>,
    ) -> Result<(), Diagnostics> {
        let mut r = Reporter::new(&self.source, &self.source_name);
        for n in &self.needs {
            if let Some(why) = unsupported(n) {
                r.error(n.span, why);
            }
        }
        r.finish()
    }

    /// An error at each of the spans given (a probe's attach point, say)
    /// with its message, rendered as compile errors are; `Ok` for none.
    pub fn errors_at(&self, errors: &[(Span, String)]) -> Result<(), Diagnostics> {
        let mut r = Reporter::new(&self.source, &self.source_name);
        for (span, msg) in errors {
            r.error(*span, msg.clone());
        }
        r.finish()
    }

    /// Places every uprobe: `resolve(path, target)` gives its locations in
    /// the ELF (one for a uprobe; a usdt probe's each, with its argument
    /// string), or why not; each failure is an error at its attach point.
    /// In a block of usdt probes, `argN` is then rewritten to read the
    /// operand the note gives ([`usdt`]).
    /// Runs before the program is shared (the [`Executable`] is copied if
    /// it already was).
    pub fn bind_uprobes(
        &mut self,
        mut resolve: impl FnMut(&str, &UprobeTarget) -> Result<Vec<UserAddr>, String>,
    ) -> Result<(), Diagnostics> {
        let spans = self.probe_spans();
        let span = |i: usize| spans.get(i).copied().unwrap_or_default();
        let mut errors = Vec::new();
        let exec = std::sync::Arc::make_mut(&mut self.exec);
        for (i, spec) in exec.probes.iter_mut().enumerate() {
            if let ProbeSpec::Uprobe {
                path,
                target,
                resolved,
                also,
                ..
            } = spec
            {
                match resolve(path, target) {
                    Ok(mut at) if !at.is_empty() => {
                        *resolved = Some(at.remove(0));
                        *also = at;
                    }
                    Ok(_) => errors.push((span(i), format!("{}: no location", spec.name()))),
                    Err(why) => errors.push((span(i), why)),
                }
            }
        }
        if errors.is_empty() {
            errors = usdt_args(exec, &span);
        }
        self.errors_at(&errors)
    }

    /// Names the modules of the kprobe and kretprobe functions that the
    /// image lacks: `lookup(name or pattern)` gives the module functions
    /// it names (and not the image's), each with the modules that define
    /// it; nothing leaves an unknown name unknown, for the resolver.
    pub fn bind_module_functions(
        &mut self,
        mut lookup: impl FnMut(&str) -> Vec<(String, Vec<std::sync::Arc<str>>)>,
    ) {
        let mut found: Vec<(String, Vec<std::sync::Arc<str>>)> = Vec::new();
        for spec in &self.exec.probes {
            let name = match spec {
                ProbeSpec::Kprobe {
                    target: KprobeTarget::Function(f),
                    ..
                }
                | ProbeSpec::Kretprobe { function: f } => f,
                _ => continue,
            };
            for (function, modules) in lookup(name) {
                if !modules.is_empty() && !found.iter().any(|(f, _)| *f == function) {
                    found.push((function, modules));
                }
            }
        }
        if !found.is_empty() {
            std::sync::Arc::make_mut(&mut self.exec).module_functions = found;
        }
    }

    /// Finds how each guest tracepoint other than a syscall's is served:
    /// `find(system, event)` gives its recipe, or why not; each failure is
    /// an error at its attach point.
    pub fn bind_guest_events(
        &mut self,
        mut find: impl FnMut(&str, &str) -> Result<kernel_tracepoints::EventRecipe, String>,
    ) -> Result<(), Diagnostics> {
        let spans = self.probe_spans();
        let mut errors = Vec::new();
        let mut found = Vec::new();
        for (i, spec) in self.exec.probes.iter().enumerate() {
            let ProbeSpec::GuestTracepoint { system, event } = spec else {
                continue;
            };
            if spec.syscall_event().is_some() || spec.raw_syscall_event().is_some() {
                continue;
            }
            if found
                .iter()
                .any(|r: &kernel_tracepoints::EventRecipe| &r.system == system && &r.event == event)
            {
                continue;
            }
            match find(system, event) {
                Ok(recipe) => found.push(recipe),
                Err(why) => errors.push((spans.get(i).copied().unwrap_or_default(), why)),
            }
        }
        if !found.is_empty() {
            std::sync::Arc::make_mut(&mut self.exec).guest_events = found;
        }
        self.errors_at(&errors)
    }

    /// How guest tracepoint `system:event` is served, once bound.
    pub fn guest_event(
        &self,
        system: &str,
        event: &str,
    ) -> Option<&kernel_tracepoints::EventRecipe> {
        self.exec
            .guest_events
            .iter()
            .find(|r| r.system == system && r.event == event)
    }

    /// The span of each attach point, in the order of [`Program::probes`].
    pub fn probe_spans(&self) -> Vec<Span> {
        self.ast
            .probes
            .iter()
            .flat_map(|b| b.attach.iter().map(|(_, span)| *span))
            .collect()
    }
    /// Every attach point, in source order; several may share one block.
    pub fn probes(&self) -> &[ProbeSpec] {
        &self.exec.probes
    }

    /// Whether probe `index` is armed in guest `guest` (`vm1:kprobe:F` only
    /// in vm1).
    pub fn armed_in(&self, index: usize, guest: &str) -> bool {
        self.exec.armed_in(index, guest)
    }

    /// Every guest a probe names (`vm1:` of `vm1:kprobe:F`) must be one of
    /// the run's `guests`: otherwise an error at that attach point, before
    /// anything boots.
    pub fn check_guests(&self, guests: &[&str]) -> Result<(), Diagnostics> {
        let spans = self.probe_spans();
        let errors: Vec<(Span, String)> = self
            .exec
            .probe_guests
            .iter()
            .enumerate()
            .filter_map(|(i, g)| {
                let g = g.as_deref()?;
                (!guests.contains(&g)).then(|| {
                    (
                        spans.get(i).copied().unwrap_or_default(),
                        format!(
                            "{g}:{}: no guest named '{g}' in this run (guests: {})",
                            self.exec.probes[i].name(),
                            guests.join(", ")
                        ),
                    )
                })
            })
            .collect();
        self.errors_at(&errors)
    }

    /// What a runtime runs: shared, and serialisable for other processes.
    pub fn executable(&self) -> &std::sync::Arc<Executable> {
        &self.exec
    }

    /// What each map's keys are named after where every write of the map
    /// uses the same builtin or scratch variable there (`@w[guest, $fd]`:
    /// `guest`, `fd`); `None` for any other key.
    pub fn map_key_names(&self) -> std::collections::BTreeMap<String, Vec<Option<String>>> {
        key_names::key_names(&self.ast)
    }

    /// The lowered IR.
    pub fn ir(&self) -> &ir::Ir {
        &self.exec.ir
    }

    /// Block run when probe `probe_index` (an index into [`probes`]) fires.
    ///
    /// [`probes`]: Program::probes
    pub fn block_of(&self, probe_index: usize) -> BlockId {
        self.exec.block_of(probe_index)
    }

    /// Kernel symbols named in `kaddr("...")` calls (each once, in source
    /// order), so the engine can resolve them before attaching.
    pub fn kaddr_symbols(&self) -> Vec<String> {
        unique(&self.kaddrs)
    }

    /// Register names used with `reg("...")` (each once, in source order).
    pub fn register_names(&self) -> Vec<String> {
        unique(&self.regs)
    }

    /// Checks every `kaddr("sym")` before attaching: an unknown symbol is a
    /// diagnostic at the call's argument, like a compile error.
    pub fn check_kaddrs(&self, exists: impl Fn(&str) -> bool) -> Result<(), Diagnostics> {
        self.check_names(&self.kaddrs, exists, "unknown kernel symbol")
    }

    /// Checks every `reg("name")` against the target's register names.
    pub fn check_registers(&self, exists: impl Fn(&str) -> bool) -> Result<(), Diagnostics> {
        self.check_names(&self.regs, exists, "unknown register")
    }

    fn check_names(
        &self,
        uses: &[(String, Span)],
        exists: impl Fn(&str) -> bool,
        what: &str,
    ) -> Result<(), Diagnostics> {
        let mut r = Reporter::new(&self.source, &self.source_name);
        for (name, span) in uses {
            if !exists(name) {
                r.error(*span, format!("{what} '{name}'"));
            }
        }
        r.finish()
    }

    /// Whether any block calls the builtin `name` (`ksym`, say), as a
    /// statement or in an expression.
    pub fn calls(&self, name: &str) -> bool {
        struct Finder<'a> {
            name: &'a str,
            found: bool,
        }
        impl visit::Visitor for Finder<'_> {
            fn visit_stmt(&mut self, s: &ast::Stmt) {
                if matches!(&s.kind, ast::StmtKind::Call { name, .. } if name == self.name) {
                    self.found = true;
                }
                visit::walk_stmt(self, s);
            }
            fn visit_expr(&mut self, e: &ast::Expr) {
                if matches!(&e.kind, ast::ExprKind::Call { name, .. } if name == self.name) {
                    self.found = true;
                }
                visit::walk_expr(self, e);
            }
        }
        let mut f = Finder { name, found: false };
        self.ast
            .probes
            .iter()
            .for_each(|b| visit::walk_block(&mut f, b));
        f.found
    }

    /// Whether the script calls `trace()`: then `vmprobe record` writes
    /// only the events it traces, not every probe hit.
    pub fn uses_trace(&self) -> bool {
        self.recording.iter().any(|(n, _)| n == "trace")
    }

    /// The field layouts of the `trace(name = ...)` call sites.
    pub fn trace_sites(&self) -> &[TraceSite] {
        &self.exec.ir.traces
    }

    /// `trace()` and `snapshot()` write to a trace, which only `vmprobe
    /// record` has: elsewhere each call is an error at its position, before
    /// anything attaches (as bpftrace reports errors before attaching).
    pub fn check_not_recording(&self, command: &str) -> Result<(), Diagnostics> {
        self.check_recording_only(command, &[])
    }

    /// As [`Self::check_not_recording`], except for the calls named in
    /// `allowed` (`trace`, for a run that exports what it traces).
    pub fn check_recording_only(&self, command: &str, allowed: &[&str]) -> Result<(), Diagnostics> {
        let mut r = Reporter::new(&self.source, &self.source_name);
        for (name, span) in self
            .recording
            .iter()
            .filter(|(n, _)| !allowed.contains(&&**n))
        {
            r.error(
                *span,
                format!("{name}() writes to a trace, which `vmprobe {command}` does not make; use `vmprobe record`"),
            );
        }
        r.finish()
    }

    /// Number of blocks.
    pub fn block_count(&self) -> usize {
        self.exec.ir.blocks.len()
    }

    /// Names of the maps the script uses (with `@`), sorted.
    pub fn map_names(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .exec
            .ir
            .maps
            .iter()
            .map(|m| format!("@{}", m.name))
            .collect();
        v.sort();
        v
    }

    /// AST and IR in readable text, for `-d`.
    pub fn dump(&self) -> String {
        let mut s = String::from("probes\n");
        for (i, (p, b)) in self
            .exec
            .probes
            .iter()
            .zip(&self.exec.probe_blocks)
            .enumerate()
        {
            let guest = match self.exec.probe_guests.get(i) {
                Some(Some(g)) => format!("{g}:"),
                _ => String::new(),
            };
            s.push_str(&format!(" {guest}{} -> block {}\n", p.name(), b.0));
        }
        s.push_str(&self.ast.dump());
        s.push_str(&self.exec.ir.dump());
        s
    }
}

fn unique(uses: &[(String, Span)]) -> Vec<String> {
    let mut v: Vec<String> = Vec::new();
    for (n, _) in uses {
        if !v.contains(n) {
            v.push(n.clone());
        }
    }
    v
}

/// The attach points of a program, parsed but not type-checked: lets a
/// caller choose the types to compile it with (a program of host and VMM
/// events needs no kernel image). Attach points that do not parse are left
/// out; compiling reports them.
pub fn attach_points(source: &str) -> Vec<ProbeSpec> {
    let Ok(ast) = parser::parse(source) else {
        return Vec::new();
    };
    ast.probes
        .iter()
        .flat_map(|b| &b.attach)
        .filter_map(|(text, _)| check::parse_probe(check::split_guest(text).1).ok())
        .collect()
}

/// Runs every pass up to IR, without kernel types: `args`, struct casts,
/// `sizeof(struct ..)` and `offsetof` are errors naming the missing BTF.
pub fn compile(source: &str, source_name: &str) -> Result<Program, Diagnostics> {
    compile_with_types(source, source_name, None)
}

/// Runs every pass up to IR with the guest kernel's types (BTF), which type
/// `args.NAME` from function prototypes, `curtask` as `struct task_struct
/// *`, struct casts, member access, `sizeof` and `offsetof`.
pub fn compile_with_types(
    source: &str,
    source_name: &str,
    types: Option<&dyn KernelTypes>,
) -> Result<Program, Diagnostics> {
    compile_with(source, source_name, types, &Options::default())
}

/// A block on several guest tracepoints becomes one block per tracepoint,
/// as bpftrace compiles one program per attach point: `args.filename` is
/// the second argument of `openat` but the first of `open`, so each needs
/// its own access. A wildcard (`sys_enter_exec*`) in a block that reads
/// `args` becomes its syscalls, when the guest's syscalls are known.
fn split_guest_tracepoints(ast: &mut ast::Ast, types: Option<&dyn KernelTypes>) {
    let names = types.map(|t| t.syscall_names()).unwrap_or_default();
    // `tracepoint:syscalls:sys_enter_NAME` per matching syscall, or the
    // attach point itself.
    let expand = |text: &str, span: Span, uses_args: bool| -> Option<Vec<(String, Span)>> {
        let spec = check::parse_probe(text).ok()?;
        let (sys, exit) = spec.syscall_event()?;
        if !sys.contains(['*', '?']) || !uses_args || names.is_empty() {
            return Some(vec![(text.to_string(), span)]);
        }
        let kind = if exit { "sys_exit_" } else { "sys_enter_" };
        let found: Vec<(String, Span)> = names
            .iter()
            .filter(|n| lower::wildcard_match(sys, n))
            .map(|n| (format!("tracepoint:syscalls:{kind}{n}"), span))
            .collect();
        // No match: left for the checker to report as it does.
        if found.is_empty() {
            Some(vec![(text.to_string(), span)])
        } else {
            Some(found)
        }
    };
    let blocks = std::mem::take(&mut ast.probes);
    for b in blocks {
        let uses_args = needs::reads_args(&b);
        let expanded: Option<Vec<Vec<(String, Span)>>> = b
            .attach
            .iter()
            .map(|(t, s)| expand(t, *s, uses_args))
            .collect();
        match expanded {
            Some(all) if all.iter().map(Vec::len).sum::<usize>() > 1 => {
                for a in all.into_iter().flatten() {
                    ast.probes.push(ast::ProbeBlock {
                        attach: vec![a],
                        predicate: b.predicate.clone(),
                        body: b.body.clone(),
                    });
                }
            }
            _ => ast.probes.push(b),
        }
    }
}

/// What a run adds to the program's text.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Positional parameters: `$1` is the first.
    pub params: Vec<String>,
    /// Bytes a string holds, NUL included (BPFTRACE_STRLEN); `None`: 64.
    pub str_len: Option<u64>,
    /// Where `#include`s are read; `None`: they bring no macros.
    pub headers: Option<headers::HeaderSearch>,
    /// bpftrace's `-p PID`: blocks on probes that fire in a guest task
    /// fire only for this tgid, as if their predicate began `pid == PID &&`.
    pub pid: Option<u64>,
    /// The guest's users (uid, name) from its /etc/passwd: `username`
    /// names the current uid with them (`None`: `username` is an error).
    pub users: Option<Vec<(u64, String)>>,
}

/// [`compile_with_types`] with a run's [`Options`].
pub fn compile_with(
    source: &str,
    source_name: &str,
    types: Option<&dyn KernelTypes>,
    options: &Options,
) -> Result<Program, Diagnostics> {
    let mut r = Reporter::new(source, source_name);
    let mut ast = match parser::parse_with(source, &options.params, options.headers.as_ref()) {
        Ok(a) => a,
        Err(e) => {
            r.error(e.span, e.message);
            return Err(r.finish().expect_err("one error"));
        }
    };
    kfunc_wild::expand(&mut ast, types, &mut r);
    kfunc_wild::expand_guest_events(&mut ast, types, &mut r);
    split_guest_tracepoints(&mut ast, types);
    let added_blocks = match options.pid {
        Some(pid) => pid_filter::apply(&mut ast, pid),
        None => 0,
    };
    let checked = check::check(&mut ast, &mut r, types, options.users.is_some());
    consts::check(&ast, &mut r);
    r.finish()?;
    let mut ir = lower::lower(&ast, &checked);
    if let Some(n) = options.str_len {
        ir.str_len = n.clamp(1, check::STR_LEN_LIMIT);
    }
    if let Some(users) = &options.users {
        ir.users = users.iter().map(|(u, n)| (*u, n.as_str().into())).collect();
    }
    let needs = needs::needs(&ast);
    let (probes, probe_blocks) = checked
        .probes
        .iter()
        .map(|(p, b)| (p.clone(), BlockId(*b as u32)))
        .unzip();
    let probe_guests = if checked.probe_guests.iter().any(Option::is_some) {
        checked.probe_guests.clone()
    } else {
        Vec::new()
    };
    Ok(Program {
        exec: std::sync::Arc::new(Executable {
            probes,
            probe_blocks,
            probe_guests,
            ir,
            guest_events: Vec::new(),
            module_functions: Vec::new(),
        }),
        ast,
        kaddrs: checked.kaddrs,
        regs: checked.regs,
        recording: checked.recording,
        needs,
        source: source.to_string(),
        source_name: source_name.to_string(),
        // Each added block has one attach point.
        added_probes: added_blocks,
    })
}

/// Rewrites `argN` in each block of usdt probes into the IR reading the
/// operand its note gives; the errors at the attach points: a block that
/// mixes usdt probes with others, locations whose operands differ, an
/// argument the probe lacks or vmprobe cannot read.
fn usdt_args(exec: &mut Executable, span: &dyn Fn(usize) -> Span) -> Vec<(Span, String)> {
    let mut errors = Vec::new();
    for b in 0..exec.ir.blocks.len() {
        let probes: Vec<usize> = (0..exec.probes.len())
            .filter(|&i| exec.probe_blocks[i].0 as usize == b)
            .collect();
        let is_usdt = |i: &usize| {
            matches!(
                &exec.probes[*i],
                ProbeSpec::Uprobe {
                    target: UprobeTarget::Usdt { .. },
                    ..
                }
            )
        };
        let Some(&first) = probes.iter().find(|i| is_usdt(i)) else {
            continue;
        };
        let mut used = Vec::new();
        usdt::each_expr_mut(&mut exec.ir.blocks[b], &mut |e| {
            if let ir::Expr::Builtin(ir::Builtin::Arg(n)) = e {
                used.push(*n);
            }
        });
        if used.is_empty() {
            continue;
        }
        if let Some(&other) = probes.iter().find(|i| !is_usdt(i)) {
            errors.push((
                span(other),
                format!(
                    "{}: shares a block reading argN with usdt probe {}, whose arguments are where its note says, not in the ABI's registers; give them separate blocks",
                    exec.probes[other].name(),
                    exec.probes[first].name()
                ),
            ));
            continue;
        }
        // Every location of every probe of the block: (probe, pc, args).
        let mut locations: Vec<(usize, u64, String)> = Vec::new();
        for &i in &probes {
            if let ProbeSpec::Uprobe { resolved, also, .. } = &exec.probes[i] {
                for at in resolved.iter().chain(also) {
                    locations.push((i, at.vaddr, at.usdt_args.clone().unwrap_or_default()));
                }
            }
        }
        // Locations inlined in several places may keep an argument in
        // different places: each set is chosen at the hit by the pc's
        // offset in its page, which loading never changes (a PIE or a
        // library moves by whole pages), so it must tell the sets apart.
        let mut sets: Vec<(String, Vec<u64>)> = Vec::new();
        for (_, pc, args) in &locations {
            match sets.iter_mut().find(|(a, _)| a == args) {
                Some((_, pcs)) => pcs.push(*pc),
                None => sets.push((args.clone(), vec![*pc])),
            }
        }
        let clash = locations.iter().find_map(|(i, pc, args)| {
            let other = locations
                .iter()
                .find(|(_, q, a)| a != args && q & 0xfff == pc & 0xfff)?;
            Some((*i, *pc, args, other.1, &other.2))
        });
        if let Some((i, pc, args, q, other)) = clash {
            errors.push((
                span(i),
                format!(
                    "{}: its locations keep the arguments in different places ('{args}' at {pc:#x}, '{other}' at {q:#x}) at the same offset in a page, which vmprobe tells them apart by; probe them separately by address (uprobe:PATH:0xADDR)",
                    exec.probes[i].name()
                ),
            ));
            continue;
        }
        let parsed: Vec<Vec<Result<usdt::Arg, String>>> =
            sets.iter().map(|(a, _)| usdt::parse_args(a)).collect();
        used.sort_unstable();
        used.dedup();
        let name = exec.probes[first].name();
        let mut exprs: Vec<Option<ir::Expr>> = Vec::new();
        'args: for n in used {
            let mut per_set = Vec::new();
            for ((args, _), parsed) in sets.iter().zip(&parsed) {
                match parsed.get(usize::from(n)) {
                    None => {
                        errors.push((
                            span(first),
                            format!(
                                "{name}: arg{n}: the probe has {} argument(s) ('{args}')",
                                parsed.len()
                            ),
                        ));
                        continue 'args;
                    }
                    Some(Err(why)) => {
                        errors.push((span(first), format!("{name}: arg{n} is not served: {why}")));
                        continue 'args;
                    }
                    Some(Ok(arg)) => {
                        let strings = &mut exec.ir.strings;
                        per_set.push(usdt::arg_expr(arg, &mut |s| usdt::intern(strings, s)));
                    }
                }
            }
            let rip = usdt::intern(&mut exec.ir.strings, "rip");
            let expr = usdt::choose_by_pc(rip, &sets, per_set);
            if exprs.len() <= usize::from(n) {
                exprs.resize(usize::from(n) + 1, None);
            }
            exprs[usize::from(n)] = Some(expr);
        }
        usdt::each_expr_mut(&mut exec.ir.blocks[b], &mut |e| {
            if let ir::Expr::Builtin(ir::Builtin::Arg(n)) = e
                && let Some(Some(x)) = exprs.get(usize::from(*n))
            {
                *e = x.clone();
            }
        });
    }
    errors
}
