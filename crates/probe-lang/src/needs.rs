//! What each block needs of the place its probe fires, with where: a
//! backend that lacks a capability rejects the program before anything
//! boots, pointing at the expression that needs it (as gdbstub's optional
//! extensions are known up front rather than failing at the first use).

use crate::BlockId;
use crate::ast::{Access, Ast, Expr, ExprKind, Stmt, StmtKind};
use crate::diag::Span;
use crate::visit::{self, Visitor};

/// A capability a block may need beyond the kernel's symbols.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Need {
    /// The registers or memory of the vCPU the probe fired on: `argN`,
    /// `retval`, `reg()`, `comm`, `pid`, `kstack`, `str()`, `*p`, kernel
    /// struct members.
    GuestState,
    /// Guest-physical memory, for page walks in another address space:
    /// `vtop`, `str_as`, `buf_as`, `uint_as`.
    PhysicalMemory,
    /// Reading the map `what` (`@name`): a backend that runs some blocks
    /// apart from others checks that a read still sees the writes before it.
    MapRead,
    /// Writing the map `what` (`@name`).
    MapWrite,
}

/// One use of a capability.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NeedUse {
    pub need: Need,
    pub block: BlockId,
    pub span: Span,
    /// What needs it, as written (`arg0`, `vtop()`, ...).
    pub what: String,
}

const STATE_IDENTS: &[&str] = &[
    "arg0", "arg1", "arg2", "arg3", "arg4", "arg5", "retval", "comm", "pid", "tid", "cgroup",
    "curtask", "kstack", "ustack",
];
const STATE_CALLS: &[&str] = &["str", "buf", "reg", "kstack", "ustack", "cgroup_path"];
const PHYSICAL_CALLS: &[&str] = &["vtop", "str_as", "buf_as", "uint_as"];

/// Every use of a capability in the program's blocks, in source order.
pub fn needs(ast: &Ast) -> Vec<NeedUse> {
    let mut out = Vec::new();
    for (i, probe) in ast.probes.iter().enumerate() {
        let mut w = Walker {
            block: BlockId(i as u32),
            out: &mut out,
        };
        visit::walk_block(&mut w, probe);
    }
    out
}

struct Walker<'a> {
    block: BlockId,
    out: &'a mut Vec<NeedUse>,
}

impl Walker<'_> {
    fn note(&mut self, need: Need, span: Span, what: impl Into<String>) {
        self.out.push(NeedUse {
            need,
            block: self.block,
            span,
            what: what.into(),
        });
    }
}

impl Visitor for Walker<'_> {
    fn visit_stmt(&mut self, s: &Stmt) {
        if let StmtKind::MapAssign {
            name, name_span, ..
        }
        | StmtKind::MapUpdate {
            name, name_span, ..
        } = &s.kind
        {
            self.note(Need::MapWrite, *name_span, format!("@{name}"));
        }
        // join() reads the array and its strings in guest memory.
        if let StmtKind::Call {
            name, name_span, ..
        } = &s.kind
            && name == "join"
        {
            self.note(Need::GuestState, *name_span, "join()");
        }
        visit::walk_stmt(self, s);
    }

    /// Notes what `e` needs itself, then what its operands need.
    fn visit_expr(&mut self, e: &Expr) {
        match &e.kind {
            ExprKind::Ident(name) if STATE_IDENTS.contains(&name.as_str()) => {
                self.note(Need::GuestState, e.span, name.clone())
            }
            ExprKind::Map { name, .. } => self.note(Need::MapRead, e.span, format!("@{name}")),
            ExprKind::Call { name, .. } => {
                if PHYSICAL_CALLS.contains(&name.as_str()) {
                    self.note(Need::PhysicalMemory, e.span, format!("{name}()"));
                } else if STATE_CALLS.contains(&name.as_str()) {
                    self.note(Need::GuestState, e.span, format!("{name}()"));
                }
            }
            ExprKind::Deref(_) => self.note(Need::GuestState, e.span, "*"),
            // `args.NAME` of a VMM or host event is the event's field,
            // not guest state; everything else reads registers or memory
            // (a struct place only when something loads from it).
            ExprKind::Member { name, access, .. }
                if !matches!(access, Access::ProbeArg | Access::Place | Access::Const(_)) =>
            {
                self.note(Need::GuestState, e.span, name.clone())
            }
            ExprKind::Index { access, .. } if !matches!(access, Access::Place) => {
                self.note(Need::GuestState, e.span, "[]")
            }
            _ => {}
        }
        visit::walk_expr(self, e);
    }
}
/// Whether a block reads its tracepoint's `args` (`args.NAME`, `args->NAME`).
pub(crate) fn reads_args(block: &crate::ast::ProbeBlock) -> bool {
    reads_builtin(block, "args")
}

/// Whether the block (predicate included) names the builtin `name`.
pub(crate) fn reads_builtin(block: &crate::ast::ProbeBlock, name: &str) -> bool {
    struct Named<'n>(&'n str, bool);
    impl Visitor for Named<'_> {
        fn visit_expr(&mut self, e: &Expr) {
            if matches!(&e.kind, ExprKind::Ident(n) if n == self.0) {
                self.1 = true;
            }
            visit::walk_expr(self, e);
        }
    }
    let mut a = Named(name, false);
    visit::walk_block(&mut a, block);
    a.1
}
