//! bpftrace's `-p PID` for a guest: every block on a probe that fires in a
//! guest task's context gets `pid == PID &&` in front of its predicate, so
//! the checker, the IR and both backends see an ordinary predicate.

use crate::ast::{Ast, BinOp, Expr, ExprKind, ProbeBlock, Stmt, StmtKind, Type};
use crate::check;
use crate::diag::Span;
use crate::probe_spec::ProbeSpec;

/// Whether a probe fires in a guest task's context, so that `pid` is the
/// task it interrupted. BEGIN, END, `interval` (one vCPU, whatever runs),
/// `vmm:` and `host:` events are not, and an attach point that does not
/// parse is left for the checker to report.
fn in_guest_task(text: &str) -> bool {
    match check::parse_probe(check::split_guest(text).1) {
        Ok(spec) => matches!(
            spec,
            ProbeSpec::Kprobe { .. }
                | ProbeSpec::Kretprobe { .. }
                | ProbeSpec::Kfunc { .. }
                | ProbeSpec::Kretfunc { .. }
                | ProbeSpec::Profile { .. }
                | ProbeSpec::Watchpoint { .. }
                | ProbeSpec::GuestTracepoint { .. }
                | ProbeSpec::Uprobe { .. }
        ),
        Err(_) => false,
    }
}

/// ANDs `pid == pid` into the predicate of every block on guest-task
/// probes; a block that mixes them with others (`BEGIN, kprobe:f`) is split
/// in two, the filtered part first. With any block filtered, the program
/// also ends when the process does, as bpftrace's does: a last block,
/// `kprobe:taskstats_exit /pid == PID && group_dead/ { exit(); }`. Returns
/// how many blocks it added (each of one attach point).
pub fn apply(ast: &mut Ast, pid: u64) -> usize {
    let blocks = std::mem::take(&mut ast.probes);
    let mut first = None;
    for b in blocks {
        let (task, other): (Vec<_>, Vec<_>) = b
            .attach
            .iter()
            .cloned()
            .partition(|(t, _)| in_guest_task(t));
        if task.is_empty() {
            ast.probes.push(b);
            continue;
        }
        let span = task[0].1;
        first.get_or_insert(span);
        let expr = at(span);
        let is_pid = is_pid(span, pid);
        let predicate = Some(match b.predicate.clone() {
            Some(p) => expr(ExprKind::Binary(
                BinOp::LogAnd,
                Box::new(is_pid),
                Box::new(p),
            )),
            None => is_pid,
        });
        ast.probes.push(ProbeBlock {
            attach: task,
            predicate,
            body: b.body.clone(),
        });
        if !other.is_empty() {
            ast.probes.push(ProbeBlock {
                attach: other,
                predicate: b.predicate,
                body: b.body,
            });
        }
    }
    match first {
        Some(span) => {
            ast.probes.push(exit_with(span, pid));
            1
        }
        None => 0,
    }
}

/// An expression node at `span` (the user's first filtered attach point,
/// so that anything said of the added code points into the program).
fn at(span: Span) -> impl Fn(ExprKind) -> Expr {
    move |kind| Expr {
        kind,
        span,
        ty: Type::Unknown,
    }
}

/// `pid == PID`.
fn is_pid(span: Span, pid: u64) -> Expr {
    let expr = at(span);
    expr(ExprKind::Binary(
        BinOp::Eq,
        Box::new(expr(ExprKind::Ident("pid".into()))),
        Box::new(expr(ExprKind::Int(pid))),
    ))
}

/// The block that ends the run when PID exits. `taskstats_exit(tsk,
/// group_dead)` is called in `do_exit` for every exiting thread, in its
/// context, with `group_dead` set for the last of the thread group: the
/// process is gone, whichever thread was the last (the leader's own exit
/// would miss threads that outlive it). `group_dead` is an `int`, so only
/// arg1's low 32 bits count.
fn exit_with(span: Span, pid: u64) -> ProbeBlock {
    let expr = at(span);
    let group_dead = expr(ExprKind::Binary(
        BinOp::Ne,
        Box::new(expr(ExprKind::Binary(
            BinOp::And,
            Box::new(expr(ExprKind::Ident("arg1".into()))),
            Box::new(expr(ExprKind::Int(0xffff_ffff))),
        ))),
        Box::new(expr(ExprKind::Int(0))),
    ));
    ProbeBlock {
        attach: vec![("kprobe:taskstats_exit".into(), span)],
        predicate: Some(expr(ExprKind::Binary(
            BinOp::LogAnd,
            Box::new(is_pid(span, pid)),
            Box::new(group_dead),
        ))),
        body: vec![Stmt {
            kind: StmtKind::Call {
                name: "exit".into(),
                name_span: span,
                args: Vec::new(),
            },
            span,
        }],
    }
}

#[cfg(test)]
mod tests {
    use crate::{Options, compile_with};

    fn dump(source: &str, pid: Option<u64>) -> String {
        let options = Options {
            pid,
            ..Default::default()
        };
        compile_with(source, "t", None, &options).unwrap().dump()
    }

    #[test]
    fn guest_task_blocks_get_the_pid_and_others_do_not() {
        let source = "BEGIN { @b = 1; } kprobe:vfs_read /arg0 > 1/ { @r = count(); } \
                      tracepoint:syscalls:sys_enter_write { @w = count(); } \
                      interval:s:1 { @i = count(); } END { @e = 1; }";
        let with = dump(source, Some(42));
        // The same program with the predicates written out.
        let written = dump(
            "BEGIN { @b = 1; } kprobe:vfs_read /pid == 42 && arg0 > 1/ { @r = count(); } \
             tracepoint:syscalls:sys_enter_write /pid == 42/ { @w = count(); } \
             interval:s:1 { @i = count(); } END { @e = 1; } \
             kprobe:taskstats_exit /pid == 42 && (arg1 & 0xffffffff) != 0/ { exit(); }",
            None,
        );
        assert_eq!(with, written);
        assert_ne!(with, dump(source, None));
        let options = Options {
            pid: Some(42),
            ..Default::default()
        };
        let program = compile_with(source, "t", None, &options).unwrap();
        assert_eq!(program.written_probe_count(), 5);
        assert_eq!(program.probes().len(), 6);
    }

    #[test]
    fn a_program_of_no_guest_task_probe_is_unchanged() {
        let source = "BEGIN { @b = 1; } interval:s:1 { exit(); }";
        assert_eq!(dump(source, Some(3)), dump(source, None));
    }

    #[test]
    fn a_mixed_block_is_split_with_the_filtered_part_first() {
        let with = dump("BEGIN, kprobe:vfs_read { @ = count(); }", Some(7));
        let written = dump(
            "kprobe:vfs_read /pid == 7/ { @ = count(); } BEGIN { @ = count(); } \
             kprobe:taskstats_exit /pid == 7 && (arg1 & 0xffffffff) != 0/ { exit(); }",
            None,
        );
        assert_eq!(with, written);
    }
}
