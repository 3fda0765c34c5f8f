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
    let is_wild = |text: &str| {
        matches!(
            check::parse_probe(check::split_guest(text).1),
            Ok(ProbeSpec::Kfunc { function } | ProbeSpec::Kretfunc { function })
                if function.contains(['*', '?'])
        )
    };
    if !ast
        .probes
        .iter()
        .flat_map(|b| &b.attach)
        .any(|(t, _)| is_wild(t))
    {
        return;
    }
    let names = types.kfunc_names();
    let blocks = std::mem::take(&mut ast.probes);
    for b in blocks {
        if !b.attach.iter().any(|(t, _)| is_wild(t)) {
            ast.probes.push(b);
            continue;
        }
        let typed = needs::reads_args(&b) || needs::reads_builtin(&b, "retval");
        let mut attach: Vec<(String, Span)> = Vec::new();
        let mut unmatched = Vec::new();
        for (text, span) in &b.attach {
            let (guest, bare) = check::split_guest(text);
            let (kind, pattern) = match check::parse_probe(bare) {
                Ok(ProbeSpec::Kfunc { function }) if is_wild(text) => ("kfunc", function),
                Ok(ProbeSpec::Kretfunc { function }) if is_wild(text) => ("kretfunc", function),
                _ => {
                    attach.push((text.clone(), *span));
                    continue;
                }
            };
            let found: Vec<&String> = names.iter().filter(|n| glob(&pattern, n)).collect();
            if found.is_empty() {
                unmatched.push((text.clone(), *span));
                continue;
            }
            if found.len() > WILDCARD_LIMIT {
                r.error(
                    *span,
                    format!(
                        "{text}: matches {} functions; at most {WILDCARD_LIMIT} can be probed at once",
                        found.len()
                    ),
                );
            }
            if typed && let Some(why) = mixed_params(types, &found) {
                r.error(
                    *span,
                    format!("{text}: Probe has attach points with mixed arguments ({why})"),
                );
            }
            let prefix = guest.map(|g| format!("{g}:")).unwrap_or_default();
            attach.extend(
                found
                    .into_iter()
                    .map(|f| (format!("{prefix}{kind}:{f}"), *span)),
            );
        }
        if attach.is_empty() {
            attach = unmatched;
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
            (event.contains(['*', '?'])).then(|| format!("{system}:{event}"))
        }
        _ => None,
    };
    if !ast
        .probes
        .iter()
        .flat_map(|b| &b.attach)
        .any(|(t, _)| pattern(t).is_some())
    {
        return;
    }
    let names = types.guest_event_names();
    let blocks = std::mem::take(&mut ast.probes);
    for b in blocks {
        if !b.attach.iter().any(|(t, _)| pattern(t).is_some()) {
            ast.probes.push(b);
            continue;
        }
        let typed = needs::reads_args(&b);
        let mut attach: Vec<(String, Span)> = Vec::new();
        for (text, span) in &b.attach {
            let Some(p) = pattern(text) else {
                attach.push((text.clone(), *span));
                continue;
            };
            let found: Vec<&String> = names.iter().filter(|n| glob(&p, n)).collect();
            if found.is_empty() {
                attach.push((text.clone(), *span));
                continue;
            }
            if found.len() > WILDCARD_LIMIT {
                r.error(
                    *span,
                    format!(
                        "{text}: matches {} tracepoints; at most {WILDCARD_LIMIT} can be probed at once",
                        found.len()
                    ),
                );
            }
            let prefix = check::split_guest(text)
                .0
                .map(|g| format!("{g}:"))
                .unwrap_or_default();
            attach.extend(
                found
                    .into_iter()
                    .map(|e| (format!("{prefix}tracepoint:{e}"), *span)),
            );
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
