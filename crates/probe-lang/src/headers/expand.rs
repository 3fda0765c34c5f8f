//! Macro expansion, with C's hide sets, `#`, `##`, `__VA_ARGS__`, and in
//! an `#if` `defined` and the `__has_*` tests.

use super::tokens::{Kind, PTok, number, punct, tokenize};
use super::{MAX_EXPANSIONS, Reader, Stop};
use std::collections::VecDeque;
use std::rc::Rc;

impl Reader<'_> {
    /// Macro-expands `input` (in an `#if`: `defined` and `__has_*` too).
    pub(super) fn expand(&mut self, input: Vec<PTok>, in_if: bool) -> Result<Vec<PTok>, Stop> {
        let mut q: VecDeque<PTok> = input.into();
        let mut out = Vec::new();
        let mut steps = 0;
        while let Some(t) = q.pop_front() {
            if t.kind != Kind::Ident {
                out.push(t);
                continue;
            }
            if in_if && t.text == "defined" {
                let paren = q.front().is_some_and(|n| n.text == "(");
                if paren {
                    q.pop_front();
                }
                let n = q.pop_front().ok_or("defined without a name")?;
                if paren && q.pop_front().is_none_or(|c| c.text != ")") {
                    return Err("defined( without ')'".into());
                }
                let v = if self.defs.contains_key(&n.text) {
                    "1"
                } else {
                    "0"
                };
                out.push(number(v));
                continue;
            }
            if in_if && t.text.starts_with("__has_") && q.front().is_some_and(|n| n.text == "(") {
                let args = take_args(&mut q)?;
                let v = if t.text == "__has_include" || t.text == "__has_include_next" {
                    let arg: Vec<PTok> = args.into_iter().flatten().collect();
                    let (name, quoted) = self.include_name(&arg)?;
                    self.find(&name, quoted, None, None)?.is_some()
                } else {
                    false
                };
                out.push(number(if v { "1" } else { "0" }));
                continue;
            }
            let Some(def) = self.defs.get(&t.text) else {
                out.push(t);
                continue;
            };
            if t.hide.contains(&t.text) {
                out.push(t);
                continue;
            }
            steps += 1;
            if steps > MAX_EXPANSIONS {
                return Err(format!("more than {MAX_EXPANSIONS} macro expansions"));
            }
            let def = def.clone();
            let mut hide = (*t.hide).clone();
            hide.push(t.text.clone());
            let hide = Rc::new(hide);
            let body = match &def.params {
                None => def.body.clone(),
                Some(params) => {
                    if q.front().is_none_or(|n| n.text != "(") {
                        out.push(t);
                        continue;
                    }
                    let mut args = take_args(&mut q)?;
                    if def.variadic && args.len() > params.len() {
                        // The rest, commas included, is __VA_ARGS__.
                        let tail: Vec<Vec<PTok>> = args.split_off(params.len() - 1);
                        let mut joined = Vec::new();
                        for (i, a) in tail.into_iter().enumerate() {
                            if i > 0 {
                                joined.push(punct(","));
                            }
                            joined.extend(a);
                        }
                        args.push(joined);
                    }
                    if params.is_empty() && args.len() == 1 && args[0].is_empty() {
                        args.clear();
                    }
                    while args.len() < params.len() {
                        args.push(Vec::new());
                    }
                    if args.len() != params.len() {
                        return Err(format!(
                            "macro '{}' takes {} arguments, given {}",
                            t.text,
                            params.len(),
                            args.len()
                        ));
                    }
                    self.substitute(&def.body, params, &args, in_if)?
                }
            };
            for mut b in body.into_iter().rev() {
                let mut h = (*b.hide).clone();
                h.extend(hide.iter().cloned());
                b.hide = Rc::new(h);
                q.push_front(b);
            }
        }
        Ok(out)
    }

    /// A function-like macro's body with its arguments in place.
    fn substitute(
        &mut self,
        body: &[PTok],
        params: &[String],
        args: &[Vec<PTok>],
        in_if: bool,
    ) -> Result<Vec<PTok>, Stop> {
        let param = |t: &PTok| {
            (t.kind == Kind::Ident)
                .then(|| params.iter().position(|p| *p == t.text))
                .flatten()
        };
        let mut out: Vec<PTok> = Vec::new();
        let mut i = 0;
        while i < body.len() {
            let t = &body[i];
            if t.text == "#"
                && let Some(p) = body.get(i + 1).and_then(param)
            {
                let s: String = args[p]
                    .iter()
                    .enumerate()
                    .map(|(k, a)| {
                        if k > 0 && a.space {
                            format!(" {}", a.text)
                        } else {
                            a.text.clone()
                        }
                    })
                    .collect();
                out.push(PTok {
                    kind: Kind::Literal,
                    text: format!("{s:?}"),
                    space: t.space,
                    hide: Rc::new(Vec::new()),
                });
                i += 2;
                continue;
            }
            let pasted = body.get(i + 1).is_some_and(|n| n.text == "##")
                || (i > 0 && body[i - 1].text == "##");
            match param(t) {
                Some(p) if pasted => out.extend(args[p].iter().cloned()),
                Some(p) => {
                    let e = self.expand(args[p].clone(), in_if)?;
                    out.extend(e);
                }
                None => out.push(t.clone()),
            }
            i += 1;
        }
        // `a ## b`: one token from the spellings of both.
        let mut res: Vec<PTok> = Vec::new();
        let mut k = 0;
        while k < out.len() {
            if out[k].text == "##" && !res.is_empty() && k + 1 < out.len() {
                let left = res.pop().expect("checked");
                let text = format!("{}{}", left.text, out[k + 1].text);
                let mut toks = tokenize(&text);
                if let Some(f) = toks.first_mut() {
                    f.space = left.space;
                }
                res.extend(toks);
                k += 2;
                continue;
            }
            if out[k].text == "##" {
                k += 1;
                continue;
            }
            res.push(out[k].clone());
            k += 1;
        }
        Ok(res)
    }
}

/// The arguments of a call whose `(` is next in `q`, split at top-level
/// commas; the `)` is consumed.
fn take_args(q: &mut VecDeque<PTok>) -> Result<Vec<Vec<PTok>>, Stop> {
    q.pop_front();
    let mut args = vec![Vec::new()];
    let mut depth = 0;
    loop {
        let t = q.pop_front().ok_or("a macro call without ')'")?;
        match t.text.as_str() {
            "(" => depth += 1,
            ")" if depth == 0 => return Ok(args),
            ")" => depth -= 1,
            "," if depth == 0 => {
                args.push(Vec::new());
                continue;
            }
            _ => {}
        }
        args.last_mut().expect("never empty").push(t);
    }
}
