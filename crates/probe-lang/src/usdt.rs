//! A usdt probe's arguments: its note gives each as `SIZE@OPERAND` in the
//! assembler's syntax (`-4@%edi`, `8@-16(%rbp)`, `4@$5`,
//! `8@8(%rsp,%rdx,4)`; a negative size is signed), where the compiler left
//! the value at the probe's `nop`, not in the ABI's argument registers. In
//! a usdt block, `argN` is rewritten at bind time into the IR that reads
//! that operand ([`Expr::Reg`], [`Expr::Deref`] of the process's memory,
//! [`Expr::Cast`] to the size): no new IR, so every backend serves it as it
//! serves `reg("bp")` and `*(int64*)addr`.

use crate::ir::{Block, Expr, KeyExpr, Op2, ReadAsKind, Stmt};
use std::sync::Arc;

/// Where an argument is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Operand {
    /// A register (the GDB stub's 64-bit name).
    Reg(&'static str),
    Imm(i64),
    /// `disp(base, index, scale)`: memory of the process.
    Mem {
        disp: i64,
        base: Option<&'static str>,
        index: Option<(&'static str, u8)>,
    },
}

/// One argument: its size in bytes (1, 2, 4, 8), signedness and operand.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Arg {
    pub size: u8,
    pub signed: bool,
    pub operand: Operand,
}

/// The arguments of a note's argument string, each parsed or why not (an
/// argument that is never read need not be servable).
pub fn parse_args(args: &str) -> Vec<Result<Arg, String>> {
    args.split_whitespace().map(parse_arg).collect()
}

/// `SIZE@OPERAND`.
pub fn parse_arg(text: &str) -> Result<Arg, String> {
    let (size, operand) = text
        .split_once('@')
        .ok_or_else(|| format!("'{text}' has no SIZE@ prefix"))?;
    let size: i8 = size
        .parse()
        .map_err(|_| format!("'{text}': size '{size}' is not a number"))?;
    if !matches!(size.unsigned_abs(), 1 | 2 | 4 | 8) {
        return Err(format!("'{text}': size {size} is not 1, 2, 4 or 8 bytes"));
    }
    let operand = if let Some(imm) = operand.strip_prefix('$') {
        Operand::Imm(parse_num(imm).ok_or_else(|| {
            format!(
                "'{text}': immediate '{imm}' is not a number (a symbol's address is not served)"
            )
        })?)
    } else if operand.starts_with('%') {
        Operand::Reg(register(operand).map_err(|why| format!("'{text}': {why}"))?)
    } else {
        memory(operand).map_err(|why| format!("'{text}': {why}"))?
    };
    Ok(Arg {
        size: size.unsigned_abs(),
        signed: size < 0,
        operand,
    })
}

fn parse_num(s: &str) -> Option<i64> {
    let (neg, digits) = match s.strip_prefix('-') {
        Some(d) => (true, d),
        None => (false, s.strip_prefix('+').unwrap_or(s)),
    };
    let v = match digits.strip_prefix("0x") {
        Some(h) => u64::from_str_radix(h, 16).ok()? as i64,
        None => digits.parse::<u64>().ok()? as i64,
    };
    Some(if neg { v.wrapping_neg() } else { v })
}

/// `disp(base[,index[,scale]])` or `(base...)`.
fn memory(op: &str) -> Result<Operand, String> {
    let (disp, rest) = op
        .split_once('(')
        .ok_or_else(|| format!("operand '{op}' is no register, immediate or memory"))?;
    let inner = rest
        .strip_suffix(')')
        .ok_or_else(|| format!("operand '{op}' has no closing ')'"))?;
    let disp = if disp.is_empty() {
        0
    } else {
        parse_num(disp).ok_or_else(|| {
            format!("displacement '{disp}' is not a number (a symbol's address is not served)")
        })?
    };
    let mut parts = inner.split(',').map(str::trim);
    let base = match parts.next() {
        Some("") | None => None,
        Some(r) => Some(register(r)?),
    };
    let index = match parts.next() {
        None => None,
        Some(r) => {
            let scale = match parts.next() {
                None => 1,
                Some(s) => match s.parse::<u8>() {
                    Ok(n @ (1 | 2 | 4 | 8)) => n,
                    _ => return Err(format!("scale '{s}' is not 1, 2, 4 or 8")),
                },
            };
            Some((register(r)?, scale))
        }
    };
    if parts.next().is_some() {
        return Err(format!(
            "operand '{op}' has more than base, index and scale"
        ));
    }
    if base == Some("rip") || index.is_some_and(|(r, _)| r == "rip") {
        return Err("an address relative to %rip is not served".into());
    }
    Ok(Operand::Mem { disp, base, index })
}

/// The 64-bit register (the stub's name) of `%NAME` in any width; the
/// value is cast to the argument's size. High-byte registers are refused.
fn register(name: &str) -> Result<&'static str, String> {
    let r = name
        .strip_prefix('%')
        .ok_or_else(|| format!("'{name}' is not a register"))?;
    const LEGACY: [(&str, [&str; 4]); 8] = [
        ("rax", ["rax", "eax", "ax", "al"]),
        ("rbx", ["rbx", "ebx", "bx", "bl"]),
        ("rcx", ["rcx", "ecx", "cx", "cl"]),
        ("rdx", ["rdx", "edx", "dx", "dl"]),
        ("rsi", ["rsi", "esi", "si", "sil"]),
        ("rdi", ["rdi", "edi", "di", "dil"]),
        ("rbp", ["rbp", "ebp", "bp", "bpl"]),
        ("rsp", ["rsp", "esp", "sp", "spl"]),
    ];
    const NUMBERED: [&str; 8] = ["r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15"];
    if let Some((full, _)) = LEGACY.iter().find(|(_, names)| names.contains(&r)) {
        return Ok(full);
    }
    if let Some(n) = NUMBERED.iter().find(|n| {
        r.strip_prefix(**n)
            .is_some_and(|s| matches!(s, "" | "d" | "w" | "b"))
    }) {
        return Ok(n);
    }
    if r == "rip" {
        return Ok("rip");
    }
    if matches!(r, "ah" | "bh" | "ch" | "dh") {
        return Err(format!("high-byte register '{name}' is not served"));
    }
    Err(format!("register '{name}' is not served"))
}

/// The IR reading `arg` at the probe; `intern` gives a string's index.
pub fn arg_expr(arg: &Arg, intern: &mut dyn FnMut(&str) -> u32) -> Expr {
    let cast = |e: Expr| Expr::Cast {
        size: arg.size,
        signed: arg.signed,
        e: Box::new(e),
    };
    match &arg.operand {
        Operand::Reg(r) => cast(Expr::Reg(intern(r))),
        Operand::Imm(v) => cast(Expr::Const(*v as u64)),
        Operand::Mem { disp, base, index } => {
            let add = |a: Expr, b: Expr| Expr::Binary(Op2::Add, Box::new(a), Box::new(b));
            let mut ptr = Expr::Const(*disp as u64);
            if let Some(b) = base {
                ptr = add(Expr::Reg(intern(b)), ptr);
            }
            if let Some((i, scale)) = index {
                let scaled = Expr::Binary(
                    Op2::Mul,
                    Box::new(Expr::Reg(intern(i))),
                    Box::new(Expr::Const(u64::from(*scale))),
                );
                ptr = add(ptr, scaled);
            }
            Expr::Deref {
                size: arg.size,
                signed: arg.signed,
                ptr: Box::new(ptr),
            }
        }
    }
}

/// `exprs[k]` (an argument as the `k`th set of locations keeps it) chosen
/// by the hit's pc (`rip`, string `rip`): the last set is the default,
/// each other one is taken where the pc's offset in its page is one of
/// its locations'.
pub fn choose_by_pc(rip: u32, sets: &[(String, Vec<u64>)], mut exprs: Vec<Expr>) -> Expr {
    let mut chosen = exprs.pop().expect("one set at least");
    for ((_, pcs), e) in sets.iter().zip(exprs).rev() {
        let page_offset = || {
            Expr::Binary(
                Op2::And,
                Box::new(Expr::Reg(rip)),
                Box::new(Expr::Const(0xfff)),
            )
        };
        let at = pcs
            .iter()
            .map(|pc| {
                Expr::Binary(
                    Op2::Eq,
                    Box::new(page_offset()),
                    Box::new(Expr::Const(pc & 0xfff)),
                )
            })
            .reduce(|a, b| Expr::LogOr(Box::new(a), Box::new(b)))
            .expect("a set has a location");
        chosen = Expr::Ternary(Box::new(at), Box::new(e), Box::new(chosen));
    }
    chosen
}

/// Calls `f` on every expression of the block, children before parents.
pub fn each_expr_mut(block: &mut Block, f: &mut dyn FnMut(&mut Expr)) {
    if let Some(p) = &mut block.predicate {
        expr_mut(p, f);
    }
    stmts_mut(&mut block.body, f);
}

fn stmts_mut(stmts: &mut [Stmt], f: &mut dyn FnMut(&mut Expr)) {
    for s in stmts {
        stmt_mut(s, f);
    }
}

fn key_mut(k: &mut KeyExpr, f: &mut dyn FnMut(&mut Expr)) {
    match k {
        KeyExpr::None => {}
        KeyExpr::Single(e) => expr_mut(e, f),
        KeyExpr::Multi(es) => es.iter_mut().for_each(|e| expr_mut(e, f)),
    }
}

fn stmt_mut(s: &mut Stmt, f: &mut dyn FnMut(&mut Expr)) {
    match s {
        Stmt::Agg { key, arg, .. } => {
            key_mut(key, f);
            if let Some(a) = arg {
                expr_mut(a, f);
            }
        }
        Stmt::Printf { args, .. } => args.iter_mut().for_each(|e| expr_mut(e, f)),
        Stmt::Print { top, div, .. } => {
            for e in [top, div].into_iter().flatten() {
                expr_mut(e, f);
            }
        }
        Stmt::MapSet { key, value, .. } | Stmt::MapUpdate { key, value, .. } => {
            key_mut(key, f);
            expr_mut(value, f);
        }
        Stmt::Delete { key, .. } => key_mut(key, f),
        Stmt::Unroll(_, body) => stmts_mut(body, f),
        Stmt::While { cond, body } => {
            expr_mut(cond, f);
            stmts_mut(body, f);
        }
        Stmt::PrintValue(e, _) | Stmt::Set(_, e) | Stmt::SelfSet(_, e) => expr_mut(e, f),
        Stmt::If { cond, then, els } => {
            expr_mut(cond, f);
            stmts_mut(then, f);
            stmts_mut(els, f);
        }
        Stmt::Trace { fields, .. } => fields.iter_mut().for_each(|(_, _, e)| expr_mut(e, f)),
        Stmt::Clear(_)
        | Stmt::Zero(_)
        | Stmt::Time(_)
        | Stmt::Break
        | Stmt::Continue
        | Stmt::Exit
        | Stmt::SelfDelete(_)
        | Stmt::TraceProbe
        | Stmt::Snapshot => {}
    }
}

fn expr_mut(e: &mut Expr, f: &mut dyn FnMut(&mut Expr)) {
    match e {
        Expr::Const(_)
        | Expr::Str(_)
        | Expr::Scratch(_)
        | Expr::SelfVar(_)
        | Expr::Builtin(_)
        | Expr::Len(_)
        | Expr::Kaddr(_)
        | Expr::Reg(_)
        | Expr::Kstack(_)
        | Expr::Ustack(_)
        | Expr::ProbeArg(_) => {}
        Expr::MapRead { key, .. } | Expr::HasKey { key, .. } => key_mut(key, f),
        Expr::Unary(_, a)
        | Expr::Cast { e: a, .. }
        | Expr::Deref { ptr: a, .. }
        | Expr::Join { ptr: a, .. }
        | Expr::Ksym(a)
        | Expr::Usym(a)
        | Expr::Username(a)
        | Expr::CgroupPath { id: a, .. }
        | Expr::Field(a, _)
        | Expr::Strftime(_, a)
        | Expr::Bswap { e: a, .. } => expr_mut(a, f),
        Expr::Binary(_, a, b)
        | Expr::LogAnd(a, b)
        | Expr::LogOr(a, b)
        | Expr::Vtop(a, b)
        | Expr::BufRead { ptr: a, len: b } => {
            expr_mut(a, f);
            expr_mut(b, f);
        }
        Expr::Ternary(a, b, c) | Expr::Strncmp(a, b, c) => {
            expr_mut(a, f);
            expr_mut(b, f);
            expr_mut(c, f);
        }
        Expr::StrRead { ptr, len } => {
            expr_mut(ptr, f);
            if let Some(l) = len {
                expr_mut(l, f);
            }
        }
        Expr::Ntop(a, b) => {
            if let Some(a) = a {
                expr_mut(a, f);
            }
            expr_mut(b, f);
        }
        Expr::Tuple(es) => es.iter_mut().for_each(|e| expr_mut(e, f)),
        Expr::ReadAs { task, addr, kind } => {
            expr_mut(task, f);
            expr_mut(addr, f);
            match kind {
                ReadAsKind::Str(Some(l)) | ReadAsKind::Buf(l) => expr_mut(l, f),
                ReadAsKind::Str(None) | ReadAsKind::Uint(_) => {}
            }
        }
    }
    f(e);
}

/// Index of `s` in the string table, added if new.
pub fn intern(strings: &mut Vec<Arc<str>>, s: &str) -> u32 {
    match strings.iter().position(|x| &**x == s) {
        Some(i) => i as u32,
        None => {
            strings.push(Arc::from(s));
            (strings.len() - 1) as u32
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operands_parse_as_the_assembler_writes_them() {
        let a = |t: &str| parse_arg(t).unwrap();
        assert_eq!(
            a("-4@%edi"),
            Arg {
                size: 4,
                signed: true,
                operand: Operand::Reg("rdi")
            }
        );
        assert_eq!(a("8@%r15d").operand, Operand::Reg("r15"));
        assert_eq!(a("1@%sil").operand, Operand::Reg("rsi"));
        assert_eq!(a("4@$5").operand, Operand::Imm(5));
        assert_eq!(a("-4@$-1").operand, Operand::Imm(-1));
        assert_eq!(
            a("8@-16(%rbp)").operand,
            Operand::Mem {
                disp: -16,
                base: Some("rbp"),
                index: None
            }
        );
        assert_eq!(
            a("8@8(%rsp,%rdx,4)").operand,
            Operand::Mem {
                disp: 8,
                base: Some("rsp"),
                index: Some(("rdx", 4))
            }
        );
        assert_eq!(
            a("2@(%rax)").operand,
            Operand::Mem {
                disp: 0,
                base: Some("rax"),
                index: None
            }
        );
        let args = parse_args("-8@%rbx -8@-56(%rbp)");
        assert_eq!(args.len(), 2);
        assert!(args.iter().all(Result::is_ok));
        for (bad, why) in [
            ("%edi", "SIZE@"),
            ("3@%edi", "not 1, 2, 4 or 8"),
            ("x@%edi", "not a number"),
            ("4@%ah", "high-byte"),
            ("4@%xmm0", "not served"),
            ("8@foo(%rip)", "symbol"),
            ("8@8(%rip)", "%rip"),
            ("4@$sym", "immediate"),
            ("8@8(%rsp,%rdx,3)", "scale"),
            ("8@8(%rsp", "closing"),
            ("8@foo", "no register"),
        ] {
            let e = parse_arg(bad).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn memory_operands_read_base_plus_index_times_scale_plus_disp() {
        let mut strings = Vec::new();
        let e = arg_expr(&parse_arg("-4@8(%rsp,%rdx,4)").unwrap(), &mut |s| {
            intern(&mut strings, s)
        });
        let dump = format!("{e:?}");
        assert!(dump.starts_with("Deref { size: 4, signed: true"), "{dump}");
        assert_eq!(strings, [Arc::from("rsp"), Arc::from("rdx")]);
    }
}
