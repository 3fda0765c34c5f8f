//! `kfunc:`/`kretfunc:` wildcards (`kfunc:vfs_read*`), expanded before
//! checking into the functions they match, as bpftrace expands them before
//! attaching: each is then an ordinary kfunc, typed by its own prototype.

use crate::ast::{Ast, ProbeBlock};
use crate::diag::{Reporter, Span};
use crate::types::KernelTypes;
use crate::{ProbeSpec, check, needs};

/// A wildcard may attach to at most this many functions: every site is a
/// breakpoint that costs a stop on each hit, and QEMU keeps them in a list.
pub const WILDCARD_LIMIT: usize = 512;

/// One kind of wildcard attach point: what it matches, and how.
struct Wildcards<'a> {
    /// The pattern an attach point's text is, and the kind its matches are
    /// spelled with (`kfunc`, `tracepoint`); `None`: not this wildcard.
    pattern: &'a dyn Fn(&str) -> Option<(&'static str, String)>,
    /// Every name a pattern may match.
    names: Vec<String>,
    /// `functions`, `tracepoints`: for the limit's message.
    what: &'static str,
    /// Whether a block is compiled once per match (it reads what differs
    /// between them).
    typed: &'a dyn Fn(&ProbeBlock) -> bool,
    /// An error about one wildcard's matches, if any (besides the limit).
    check: &'a dyn Fn(&str, &[&String]) -> Option<String>,
    /// A wildcard matching nothing is dropped when another attach point of
    /// its block remains (kprobe wildcards are); else it is kept for the
    /// checker to report.
    drop_unmatched: bool,
}

/// Replaces each attach point `w.pattern` recognises by the names it
/// matches, in every block.
fn expand_with(ast: &mut Ast, w: &Wildcards<'_>, r: &mut Reporter) {
    let blocks = std::mem::take(&mut ast.probes);
    for b in blocks {
        if !b.attach.iter().any(|(t, _)| (w.pattern)(t).is_some()) {
            ast.probes.push(b);
            continue;
        }
        let typed = (w.typed)(&b);
        let mut attach: Vec<(String, Span)> = Vec::new();
        let mut unmatched = Vec::new();
        for (text, span) in &b.attach {
            let Some((kind, pattern)) = (w.pattern)(text) else {
                attach.push((text.clone(), *span));
                continue;
            };
            let found: Vec<&String> = w.names.iter().filter(|n| glob(&pattern, n)).collect();
            if found.is_empty() {
                unmatched.push((text.clone(), *span));
                continue;
            }
            if found.len() > WILDCARD_LIMIT {
                r.error(
                    *span,
                    format!(
                        "{text}: matches {} {}; at most {WILDCARD_LIMIT} can be probed at once",
                        found.len(),
                        w.what
                    ),
                );
            }
            if typed && let Some(why) = (w.check)(text, &found) {
                r.error(*span, why);
            }
            let prefix = check::split_guest(text)
                .0
                .map(|g| format!("{g}:"))
                .unwrap_or_default();
            attach.extend(
                found
                    .into_iter()
                    .map(|f| (format!("{prefix}{kind}:{f}"), *span)),
            );
        }
        if attach.is_empty() || !w.drop_unmatched {
            attach.extend(unmatched);
        }
        if typed && attach.len() > 1 {
            for a in attach {
                ast.probes.push(ProbeBlock {
                    attach: vec![a],
                    predicate: b.predicate.clone(),
                    body: b.body.clone(),
                });
            }
        } else {
            ast.probes.push(ProbeBlock { attach, ..b });
        }
    }
}

/// Whether any attach point of the program is one `pattern` recognises.
fn any_wild(ast: &Ast, pattern: &dyn Fn(&str) -> Option<(&'static str, String)>) -> bool {
    ast.probes
        .iter()
        .flat_map(|b| &b.attach)
        .any(|(t, _)| pattern(t).is_some())
}

/// Replaces each kfunc wildcard by the functions of
/// [`KernelTypes::kfunc_names`] it matches. A block that reads `args` or
/// `retval` on one becomes one block per attach point, so that each
/// function's are typed by its own prototype; as bpftrace 0.17 (which keeps
/// one `args` layout per block), the matches must then have the same
/// parameter names. A wildcard matching nothing is dropped when another
/// attach point of its block remains (as kprobe wildcards are), and left
/// for the checker to report otherwise.
pub(crate) fn expand(ast: &mut Ast, types: Option<&dyn KernelTypes>, r: &mut Reporter) {
    let Some(types) = types else { return };
    let pattern = |text: &str| match check::parse_probe(check::split_guest(text).1) {
        Ok(ProbeSpec::Kfunc { function }) if function.contains(['*', '?']) => {
            Some(("kfunc", function))
        }
        Ok(ProbeSpec::Kretfunc { function }) if function.contains(['*', '?']) => {
            Some(("kretfunc", function))
        }
        _ => None,
    };
    if !any_wild(ast, &pattern) {
        return;
    }
    let typed = |b: &ProbeBlock| needs::reads_args(b) || needs::reads_builtin(b, "retval");
    let check = |text: &str, found: &[&String]| {
        mixed_params(types, found)
            .map(|why| format!("{text}: Probe has attach points with mixed arguments ({why})"))
    };
    let w = Wildcards {
        pattern: &pattern,
        names: types.kfunc_names(),
        what: "functions",
        typed: &typed,
        check: &check,
        drop_unmatched: true,
    };
    expand_with(ast, &w, r);
}

/// Replaces each guest tracepoint wildcard other than a syscall one
/// (`tracepoint:sched:sched*`) by the events of
/// [`KernelTypes::guest_event_names`] it matches, as bpftrace expands
/// tracepoint wildcards. A block that reads `args` becomes one block per
/// event, each typed by its own record. A wildcard matching nothing is
/// left for the checker to report.
pub(crate) fn expand_guest_events(
    ast: &mut Ast,
    types: Option<&dyn KernelTypes>,
    r: &mut Reporter,
) {
    let Some(types) = types else { return };
    let pattern = |text: &str| match check::parse_probe(check::split_guest(text).1) {
        Ok(spec @ ProbeSpec::GuestTracepoint { .. })
            if spec.syscall_event().is_none() && spec.raw_syscall_event().is_none() =>
        {
            let ProbeSpec::GuestTracepoint { system, event } = spec else {
                return None;
            };
            (event.contains(['*', '?'])).then(|| ("tracepoint", format!("{system}:{event}")))
        }
        _ => None,
    };
    if !any_wild(ast, &pattern) {
        return;
    }
    let w = Wildcards {
        pattern: &pattern,
        names: types.guest_event_names(),
        what: "tracepoints",
        typed: &|b| needs::reads_args(b),
        check: &|_, _| None,
        drop_unmatched: false,
    };
    expand_with(ast, &w, r);
}

/// The first two of `functions` whose parameter names differ, as
/// `f(a, b) and g(c)`.
fn mixed_params(types: &dyn KernelTypes, functions: &[&String]) -> Option<String> {
    let params = |f: &str| -> Vec<String> {
        types
            .function(f)
            .map(|p| p.params.into_iter().map(|p| p.name).collect())
            .unwrap_or_default()
    };
    let first = params(functions.first()?);
    let other = functions.iter().find(|f| params(f) != first)?;
    Some(format!(
        "{}({}) and {other}({})",
        functions[0],
        first.join(", "),
        params(other).join(", ")
    ))
}

/// `*` (any run) and `?` (any one character), as kprobe wildcards match.
fn glob(pattern: &str, name: &str) -> bool {
    let (p, n): (Vec<char>, Vec<char>) = (pattern.chars().collect(), name.chars().collect());
    // Greedy with backtracking to the last `*`.
    let (mut i, mut j, mut star, mut mark) = (0, 0, None, 0);
    while j < n.len() {
        if i < p.len() && (p[i] == '?' || p[i] == n[j]) {
            i += 1;
            j += 1;
        } else if i < p.len() && p[i] == '*' {
            star = Some(i);
            mark = j;
            i += 1;
        } else if let Some(s) = star {
            i = s + 1;
            mark += 1;
            j = mark;
        } else {
            return false;
        }
    }
    p[i..].iter().all(|&c| c == '*')
}

#[cfg(test)]
mod tests {
    use super::glob;

    #[test]
    fn globs_match_as_kprobe_wildcards() {
        for (p, n, hit) in [
            ("vfs_read*", "vfs_read", true),
            ("vfs_read*", "vfs_readv", true),
            ("vfs_read*", "vfs_write", false),
            ("vfs_rea?", "vfs_read", true),
            ("vfs_rea?", "vfs_readv", false),
            ("*_read", "vfs_read", true),
            ("*a*d*", "vfs_read", true),
            ("*", "", true),
            ("x", "", false),
        ] {
            assert_eq!(glob(p, n), hit, "{p} {n}");
        }
    }
}
