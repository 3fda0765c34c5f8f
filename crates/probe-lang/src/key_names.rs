//! What each map's keys are named after, as written: a key that is a
//! builtin (`guest`, `comm`, `pid`) or a scratch variable (`$fd`) in
//! every write of the map is named after it. Exporters label keys so.

use crate::ast::{Ast, ExprKind, Stmt, StmtKind};
use crate::visit::{self, Visitor};
use std::collections::BTreeMap;

/// Per map (name without `@`), each key position's name, `None` where
/// the writes disagree or the key is any other expression.
pub(crate) fn key_names(ast: &Ast) -> BTreeMap<String, Vec<Option<String>>> {
    let mut w = Walker::default();
    for probe in &ast.probes {
        visit::walk_block(&mut w, probe);
    }
    w.names
}

#[derive(Default)]
struct Walker {
    names: BTreeMap<String, Vec<Option<String>>>,
}

impl Visitor for Walker {
    fn visit_stmt(&mut self, s: &Stmt) {
        if let StmtKind::MapAssign { name, keys, .. } | StmtKind::MapUpdate { name, keys, .. } =
            &s.kind
        {
            let these: Vec<Option<String>> = keys
                .iter()
                .map(|k| match &k.kind {
                    ExprKind::Ident(n) | ExprKind::Var(n) => Some(n.clone()),
                    _ => None,
                })
                .collect();
            match self.names.get_mut(name) {
                None => {
                    self.names.insert(name.clone(), these);
                }
                Some(seen) => {
                    for (i, n) in these.into_iter().enumerate() {
                        if let Some(s) = seen.get_mut(i)
                            && *s != n
                        {
                            *s = None;
                        }
                    }
                }
            }
        }
        visit::walk_stmt(self, s);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn keys_are_named_after_builtins_and_variables_written_every_time() {
        let p = crate::compile(
            "kprobe:f { $fd = arg0; @w[guest, comm, $fd] = count(); @x[arg1 + 1] = count(); \
             @m[pid] = 1; }\n kprobe:g { $fd = 1; @w[guest, func, $fd] = count(); @m[pid] = 2; @s = count(); }",
            "t",
        )
        .unwrap();
        let n = p.map_key_names();
        let s = |v: &str| Some(v.to_string());
        assert_eq!(n["w"], vec![s("guest"), None, s("fd")]);
        assert_eq!(n["x"], vec![None]);
        assert_eq!(n["m"], vec![s("pid")]);
        assert_eq!(n["s"], Vec::<Option<String>>::new());
    }
}
