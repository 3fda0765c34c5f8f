//! Pass 3: semantic check. Resolves attach points into [`ProbeSpec`]s,
//! fills in expression types, and validates builtins, calls, printf formats,
//! scratch variables and map usage (one aggregation kind and one key
//! signature per map). Nothing runs unless this pass reports no errors.
//!
//! One `Checker` walks the tree; its methods are split by concern, as
//! bpftrace splits its passes: this file holds the entry point, the two
//! walks and the state they share; `attach` the attach points, `stmt`
//! statements and variables, `maps` map declarations and uses, `expr`
//! expressions, `calls` builtins and functions, `printf` format strings,
//! `trace` `trace()`/`snapshot()`, and `types`, `access` and `args` the
//! guest kernel's types.

use crate::ProbeSpec;
use crate::ast::*;
use crate::diag::{Reporter, Span};
use crate::types::KernelTypes;
use rustc_hash::FxHashMap;

mod access;
mod args;
mod attach;
mod calls;
mod expr;
mod maps;
mod printf;
mod stmt;
mod trace;
mod types;

pub use attach::{MIN_PERIOD_NS, parse_probe, split_guest};
pub use calls::{BUF_MAX, KSTACK_MAX, STR_LEN_LIMIT, STR_MAX, register_name};
pub use maps::{AggKind, HIST_BUCKETS, LhistParams, MapDecl};
pub use trace::{TraceSite, TraceType};

/// What the check found, for lowering and for the checks before attaching.
pub struct Checked {
    pub maps: Vec<MapDecl>,
    pub map_index: FxHashMap<String, usize>,
    /// (spec, index of the AST probe block), source order.
    pub probes: Vec<(ProbeSpec, usize)>,
    /// The guest each of `probes` names (`vm1:kprobe:F`), if any.
    pub probe_guests: Vec<Option<String>>,
    /// Scratch variable slots per block.
    pub scratch: Vec<FxHashMap<String, (u16, Type)>>,
    /// Symbol names given to `kaddr()`, so the engine can resolve them
    /// before attaching.
    pub kaddrs: Vec<(String, Span)>,
    /// Element types of each `Type::Tuple(i)`.
    pub tuples: Vec<Vec<Type>>,
    /// Register names given to `reg()`, so the engine can check them
    /// against the stub's register set before attaching.
    pub regs: Vec<(String, Span)>,
    /// Thread-local variables (`self->name`): name and type, by slot.
    pub self_vars: Vec<(String, Type)>,
    /// The field layout of each `trace(name = expr, ...)` call site.
    pub traces: Vec<TraceSite>,
    /// Every `trace()` / `snapshot()` call (`"trace"` or `"snapshot"`),
    /// which only `vmprobe record` can serve.
    pub recording: Vec<(String, Span)>,
    /// The integer size in bytes of each `bswap()` call's argument, by the
    /// call's span.
    pub bswaps: FxHashMap<(u32, u32), u8>,
}

/// Integers (and pointers, which are addresses) agree with each other;
/// other types only with themselves.
fn same_shape(a: Type, b: Type) -> bool {
    a.is_int() && b.is_int() || a == b
}

/// The state of one walk over the program.
struct Checker<'a, 's> {
    r: &'a mut Reporter<'s>,
    maps: Vec<MapDecl>,
    map_index: FxHashMap<String, usize>,
    /// Current block's scratch variables.
    vars: FxHashMap<String, (u16, Type)>,
    /// What the current block's attach points allow.
    all_kprobe: bool,
    all_kretprobe: bool,
    all_kretfunc: bool,
    loops: usize,
    kaddrs: Vec<(String, Span)>,
    tuples: Vec<Vec<Type>>,
    regs: Vec<(String, Span)>,
    /// The map whose assignment's value is being checked: reading it there
    /// before any declaration (`@x = @x + 1`) reads an unsigned 0, as in
    /// bpftrace 0.17.
    assigning: Option<String>,
    /// Guest kernel types, when the caller has them (BTF).
    types: Option<&'a dyn KernelTypes>,
    /// The current block's attach points.
    specs: Vec<ProbeSpec>,
    traces: Vec<TraceSite>,
    recording: Vec<(String, Span)>,
    /// Thread-local variables of the whole program: slot and type.
    self_vars: FxHashMap<String, (u16, Type)>,
    /// The first pass, which only discovers declarations.
    discovering: bool,
    /// What the program's `#include`s could not give.
    headers: crate::preprocess::HeaderNotes,
    /// The integer size of the current block's scratch variables, from
    /// their first assignment (as bpftrace types a variable).
    var_sizes: FxHashMap<String, u8>,
    bswaps: FxHashMap<(u32, u32), u8>,
    /// The run knows the guest's users (`username`).
    users: bool,
}

pub(crate) fn check(
    ast: &mut Ast,
    r: &mut Reporter<'_>,
    types: Option<&dyn KernelTypes>,
    users: bool,
) -> Checked {
    let (probes, probe_guests, blocks) = attach::resolve(ast, r, types);

    // Pass A discovers map declarations wherever they are in the script (a
    // map may be read in a block that comes before its assignment); pass B
    // re-walks with the complete table and is the one that reports errors.
    let mut scratch = Vec::new();
    let mut maps = Vec::new();
    let mut map_index = FxHashMap::default();
    let mut kaddrs = Vec::new();
    let mut tuples = Vec::new();
    let mut regs = Vec::new();
    let mut traces = Vec::new();
    let mut recording = Vec::new();
    let mut self_vars = FxHashMap::default();
    let mut bswaps = FxHashMap::default();
    for pass in 0..2 {
        let mut tmp = Reporter::new(r.source, r.name);
        let rep = if pass == 0 { &mut tmp } else { &mut *r };
        let mut c = Checker {
            r: rep,
            maps: std::mem::take(&mut maps),
            map_index: std::mem::take(&mut map_index),
            vars: FxHashMap::default(),
            all_kprobe: false,
            all_kretprobe: false,
            all_kretfunc: false,
            loops: 0,
            kaddrs: Vec::new(),
            tuples: std::mem::take(&mut tuples),
            regs: Vec::new(),
            assigning: None,
            types,
            specs: Vec::new(),
            traces: Vec::new(),
            recording: Vec::new(),
            self_vars: std::mem::take(&mut self_vars),
            discovering: pass == 0,
            headers: ast.headers.clone(),
            var_sizes: FxHashMap::default(),
            bswaps: FxHashMap::default(),
            users,
        };
        scratch.clear();
        for (block, attach) in ast.probes.iter_mut().zip(&blocks) {
            c.vars.clear();
            c.var_sizes.clear();
            c.specs.clone_from(&attach.specs);
            c.all_kprobe = attach.all_kprobe;
            c.all_kretprobe = attach.all_kretprobe;
            c.all_kretfunc = attach.all_kretfunc;
            if let Some(p) = &mut block.predicate {
                c.expr(p);
                c.want_int(p, "predicate");
            }
            c.stmts(&mut block.body);
            scratch.push(std::mem::take(&mut c.vars));
        }
        maps = c.maps;
        map_index = c.map_index;
        kaddrs = c.kaddrs;
        tuples = c.tuples;
        regs = c.regs;
        traces = c.traces;
        recording = c.recording;
        self_vars = c.self_vars;
        bswaps = c.bswaps;
    }
    let mut self_vars: Vec<(String, (u16, Type))> = self_vars.into_iter().collect();
    self_vars.sort_by_key(|(_, (slot, _))| *slot);
    Checked {
        maps,
        map_index,
        probes,
        probe_guests,
        scratch,
        kaddrs,
        tuples,
        regs,
        traces,
        recording,
        self_vars: self_vars.into_iter().map(|(n, (_, t))| (n, t)).collect(),
        bswaps,
    }
}

impl Checker<'_, '_> {
    /// Reports `e` unless it is an integer (or already in error).
    fn want_int(&mut self, e: &Expr, what: &str) {
        if !e.ty.is_int() && e.ty != Type::Unknown {
            self.r.error(
                e.span,
                format!("{what} must be an integer, found {}", e.ty.name()),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parser::parse;

    fn checked(src: &str) -> (Ast, Checked, usize) {
        let mut ast = parse(src).unwrap();
        let mut r = Reporter::new(src, "t");
        let c = check(&mut ast, &mut r, None, false);
        let n = r.diags.len();
        (ast, c, n)
    }

    #[test]
    fn types_and_maps() {
        let (ast, c, errs) = checked(
            "kprobe:f { $a = arg0 + 1; $b = -1 * 2; @s[func, 1] = sum($b); @u = sum($a); }",
        );
        assert_eq!(errs, 0);
        let ty = |i: usize| match &ast.probes[0].body[i].kind {
            StmtKind::VarAssign { value, .. } => value.ty,
            _ => unreachable!(),
        };
        // Mixed signedness is unsigned (C conversions); literals are signed.
        assert_eq!(ty(0), Type::UNSIGNED);
        assert_eq!(ty(1), Type::SIGNED);
        let s = &c.maps[c.map_index["s"]];
        assert_eq!(
            (s.kind, s.keys.clone(), s.signed),
            (AggKind::Sum, vec![Type::Str, Type::SIGNED], true)
        );
        assert!(!c.maps[c.map_index["u"]].signed);
        assert_eq!(c.scratch[0].len(), 2);
    }

    #[test]
    fn error_count_is_not_doubled_by_two_passes() {
        let (_, _, errs) = checked("kprobe:f { $x = nope; @m = count(); @m = sum(1); }");
        assert_eq!(errs, 2);
    }
}
