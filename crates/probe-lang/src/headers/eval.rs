//! Integer constant expressions over preprocessing tokens.

use super::tokens::{Kind, PTok};

/// A C integer literal: decimal, octal, hex or binary with `u`/`l` suffixes.
fn int_literal(s: &str) -> Option<i128> {
    let t = s.trim_end_matches(['u', 'U', 'l', 'L']);
    let (digits, radix) = if let Some(h) = t.strip_prefix("0x").or(t.strip_prefix("0X")) {
        (h, 16)
    } else if let Some(b) = t.strip_prefix("0b").or(t.strip_prefix("0B")) {
        (b, 2)
    } else if t.len() > 1 && t.starts_with('0') {
        (&t[1..], 8)
    } else {
        (t, 10)
    };
    let v = u64::from_str_radix(digits, radix).ok()?;
    Some(v as i128)
}

/// A character literal's value (`'a'`, `'\n'`, `'\0'`, `'\x41'`).
fn char_literal(s: &str) -> Option<i128> {
    let s = s.trim_start_matches(['L', 'u', 'U', '8']);
    let inner = s.strip_prefix('\'')?.strip_suffix('\'')?;
    let b = inner.as_bytes();
    match b {
        [c] => Some(*c as i128),
        [b'\\', rest @ ..] => match rest {
            [b'n'] => Some(10),
            [b't'] => Some(9),
            [b'r'] => Some(13),
            [b'\\'] => Some(92),
            [b'\''] => Some(39),
            [b'"'] => Some(34),
            [b'x', h @ ..] => i128::from_str_radix(std::str::from_utf8(h).ok()?, 16).ok(),
            o if o.iter().all(|d| (b'0'..=b'7').contains(d)) && !o.is_empty() => {
                i128::from_str_radix(std::str::from_utf8(o).ok()?, 8).ok()
            }
            _ => None,
        },
        _ => None,
    }
}

/// A constant expression over tokens: `?:`, the binary operators of C,
/// unary `+ - ! ~`, parentheses. In an `#if`, a name left after expansion
/// is 0 (as in C); elsewhere it makes the expression not constant.
pub(super) struct Eval<'t> {
    toks: &'t [PTok],
    pos: usize,
    in_if: bool,
}

impl<'t> Eval<'t> {
    pub(super) fn new(toks: &'t [PTok], in_if: bool) -> Self {
        Eval {
            toks,
            pos: 0,
            in_if,
        }
    }

    /// The value, if the tokens are exactly one expression.
    pub(super) fn whole(mut self) -> Option<i128> {
        if self.toks.is_empty() {
            return None;
        }
        let v = self.ternary()?;
        (self.pos == self.toks.len()).then_some(v)
    }

    fn peek(&self) -> Option<&str> {
        self.toks.get(self.pos).map(|t| t.text.as_str())
    }

    fn eat(&mut self, p: &str) -> bool {
        if self.peek() == Some(p) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn ternary(&mut self) -> Option<i128> {
        let c = self.binary(0)?;
        if self.eat("?") {
            let a = self.ternary()?;
            if !self.eat(":") {
                return None;
            }
            let b = self.ternary()?;
            return Some(if c != 0 { a } else { b });
        }
        Some(c)
    }

    fn binary(&mut self, min: u8) -> Option<i128> {
        const OPS: &[(&str, u8)] = &[
            ("||", 1),
            ("&&", 2),
            ("|", 3),
            ("^", 4),
            ("&", 5),
            ("==", 6),
            ("!=", 6),
            ("<", 7),
            (">", 7),
            ("<=", 7),
            (">=", 7),
            ("<<", 8),
            (">>", 8),
            ("+", 9),
            ("-", 9),
            ("*", 10),
            ("/", 10),
            ("%", 10),
        ];
        let mut l = self.unary()?;
        loop {
            let Some(&(op, prec)) = self.peek().and_then(|p| OPS.iter().find(|(o, _)| *o == p))
            else {
                return Some(l);
            };
            if prec < min.max(1) {
                return Some(l);
            }
            self.pos += 1;
            let r = self.binary(prec + 1)?;
            l = match op {
                "||" => (l != 0 || r != 0) as i128,
                "&&" => (l != 0 && r != 0) as i128,
                "|" => l | r,
                "^" => l ^ r,
                "&" => l & r,
                "==" => (l == r) as i128,
                "!=" => (l != r) as i128,
                "<" => (l < r) as i128,
                ">" => (l > r) as i128,
                "<=" => (l <= r) as i128,
                ">=" => (l >= r) as i128,
                "<<" => l.checked_shl(u32::try_from(r).ok().filter(|s| *s < 64)?)?,
                ">>" => l.checked_shr(u32::try_from(r).ok().filter(|s| *s < 64)?)?,
                "+" => l.checked_add(r)?,
                "-" => l.checked_sub(r)?,
                "*" => l.checked_mul(r)?,
                "/" => l.checked_div(r)?,
                _ => l.checked_rem(r)?,
            };
        }
    }

    fn unary(&mut self) -> Option<i128> {
        let t = self.toks.get(self.pos)?;
        self.pos += 1;
        match (t.kind.clone(), t.text.as_str()) {
            (Kind::Punct, "-") => self.unary()?.checked_neg(),
            (Kind::Punct, "+") => self.unary(),
            (Kind::Punct, "!") => Some((self.unary()? == 0) as i128),
            (Kind::Punct, "~") => Some(!self.unary()?),
            (Kind::Punct, "(") => {
                let v = self.ternary()?;
                self.eat(")").then_some(v)
            }
            (Kind::Number, s) => int_literal(s),
            (Kind::Literal, s) if s.ends_with('\'') => char_literal(s),
            (Kind::Ident, _) if self.in_if => Some(0),
            _ => None,
        }
    }
}
