//! Pass 2: recursive-descent parser producing the [`Ast`].
//!
//! Binary operators use precedence climbing with C precedence. Inside a
//! predicate `/.../` a bare `/` ends the predicate, so division there needs
//! parentheses (as in bpftrace). The first error aborts parsing.

use crate::ast::*;
use crate::diag::Span;
use crate::lexer::{LexError, Lexer, Tok, Token};

/// Nesting limit so hostile input can't overflow the stack.
const MAX_DEPTH: usize = 128;

pub type ParseError = LexError;

pub fn parse(src: &str) -> Result<Ast, ParseError> {
    let mut p = Parser {
        lx: Lexer::new(src),
        peeked: None,
        depth: 0,
        last_end: 0,
    };
    let mut probes = Vec::new();
    while !p.lx.at_eof()? {
        probes.push(p.probe_block()?);
    }
    if probes.is_empty() {
        return Err(LexError {
            span: Span::new(0, 0),
            message: "expected at least one probe".into(),
        });
    }
    Ok(Ast { probes })
}

struct Parser<'s> {
    lx: Lexer<'s>,
    peeked: Option<Token>,
    depth: usize,
    last_end: u32,
}

fn err<T>(span: Span, msg: impl Into<String>) -> Result<T, ParseError> {
    Err(LexError {
        span,
        message: msg.into(),
    })
}

fn describe(t: &Tok) -> String {
    match t {
        Tok::Ident(s) => format!("'{s}'"),
        Tok::Map(s) => format!("'@{s}'"),
        Tok::Var(s) => format!("'${s}'"),
        Tok::Int(v) => format!("integer {v}"),
        Tok::Str(_) => "string".into(),
        Tok::Punct(p) => format!("'{p}'"),
        Tok::Eof => "end of input".into(),
    }
}

impl Parser<'_> {
    fn peek(&mut self) -> Result<&Token, ParseError> {
        if self.peeked.is_none() {
            self.peeked = Some(self.lx.next_token()?);
        }
        Ok(self.peeked.as_ref().expect("just filled"))
    }

    fn bump(&mut self) -> Result<Token, ParseError> {
        self.peek()?;
        let t = self.peeked.take().expect("peeked");
        self.last_end = t.span.end;
        Ok(t)
    }

    fn is_punct(&mut self, p: &str) -> Result<bool, ParseError> {
        Ok(matches!(&self.peek()?.tok, Tok::Punct(q) if *q == p))
    }

    fn eat(&mut self, p: &str) -> Result<bool, ParseError> {
        if self.is_punct(p)? {
            self.bump()?;
            Ok(true)
        } else {
            Ok(false)
        }
    }

    fn expect(&mut self, p: &str) -> Result<Span, ParseError> {
        let t = self.bump()?;
        match &t.tok {
            Tok::Punct(q) if *q == p => Ok(t.span),
            other => err(t.span, format!("expected '{p}', found {}", describe(other))),
        }
    }

    fn probe_block(&mut self) -> Result<ProbeBlock, ParseError> {
        let mut attach = Vec::new();
        loop {
            let (text, span) = self.lx.attach_point()?;
            if text.is_empty() {
                let t = self.bump()?;
                return err(
                    t.span,
                    format!("expected probe name, found {}", describe(&t.tok)),
                );
            }
            attach.push((text, span));
            if !self.eat(",")? {
                break;
            }
        }
        let predicate = if self.eat("/")? {
            let e = self.expr_nodiv(true)?;
            self.expect("/")?;
            Some(e)
        } else {
            None
        };
        let body = self.block()?;
        Ok(ProbeBlock {
            attach,
            predicate,
            body,
        })
    }

    fn block(&mut self) -> Result<Vec<Stmt>, ParseError> {
        self.expect("{")?;
        self.enter()?;
        let mut stmts = Vec::new();
        loop {
            if self.eat("}")? {
                break;
            }
            if self.eat(";")? {
                continue;
            }
            let st = self.stmt()?;
            let is_if = matches!(
                st.kind,
                StmtKind::If { .. } | StmtKind::Unroll { .. } | StmtKind::While { .. }
            );
            stmts.push(st);
            // Statements are `;`-separated; the last one may omit it.
            if !is_if && !self.eat(";")? && !self.is_punct("}")? {
                let t = self.bump()?;
                return err(
                    t.span,
                    format!("expected ';' or '}}', found {}", describe(&t.tok)),
                );
            }
        }
        self.depth -= 1;
        Ok(stmts)
    }

    fn enter(&mut self) -> Result<(), ParseError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            let end = self.last_end as usize;
            return err(Span::new(end, end), "nesting too deep");
        }
        Ok(())
    }

    fn stmt(&mut self) -> Result<Stmt, ParseError> {
        let t = self.bump()?;
        let start = t.span;
        if self.at_self_var(&t.tok)? {
            let var = self.self_var(start)?;
            let ExprKind::SelfVar(name) = &var.kind else {
                unreachable!("self_var builds a SelfVar")
            };
            let name = name.clone();
            let value = match self.assign_op()? {
                None => self.expr()?,
                // `self->x op= v` is `self->x = self->x op v`.
                Some((op, v)) => {
                    let span = var.span.to(v.span);
                    Expr {
                        kind: ExprKind::Binary(op, Box::new(var), Box::new(v)),
                        span,
                        ty: Type::Unknown,
                    }
                }
            };
            return Ok(Stmt {
                kind: StmtKind::SelfAssign { name, value },
                span: Span::new(start.start as usize, self.last_end as usize),
            });
        }
        let kind = match t.tok {
            Tok::Ident(ref name) if name == "if" => {
                self.expect("(")?;
                let cond = self.expr()?;
                self.expect(")")?;
                let then = self.block()?;
                let els = if matches!(&self.peek()?.tok, Tok::Ident(s) if s == "else") {
                    self.bump()?;
                    if matches!(&self.peek()?.tok, Tok::Ident(s) if s == "if") {
                        self.enter()?;
                        let s = vec![self.stmt()?];
                        self.depth -= 1;
                        s
                    } else {
                        self.block()?
                    }
                } else {
                    Vec::new()
                };
                StmtKind::If { cond, then, els }
            }
            Tok::Ident(ref name) if name == "unroll" => {
                self.expect("(")?;
                let n = self.bump()?;
                let Tok::Int(count) = n.tok else {
                    return err(n.span, "unroll needs an integer literal count");
                };
                if !(1..=100).contains(&count) {
                    return err(n.span, "unroll count must be between 1 and 100");
                }
                self.expect(")")?;
                let body = self.block()?;
                StmtKind::Unroll { count, body }
            }
            Tok::Ident(ref name) if name == "while" => {
                self.expect("(")?;
                let cond = self.expr()?;
                self.expect(")")?;
                let body = self.block()?;
                StmtKind::While { cond, body }
            }
            Tok::Ident(ref name) if name == "break" => StmtKind::Break,
            Tok::Ident(ref name) if name == "continue" => StmtKind::Continue,
            Tok::Ident(ref name) if name == "trace" => {
                self.expect("(")?;
                StmtKind::Trace {
                    fields: self.trace_args()?,
                    site: None,
                }
            }
            Tok::Ident(name) => {
                self.expect("(")?;
                let args = self.args(")")?;
                StmtKind::Call {
                    name,
                    name_span: start,
                    args,
                }
            }
            Tok::Map(name) => {
                let keys = if self.eat("[")? {
                    self.args("]")?
                } else {
                    Vec::new()
                };
                let name_span = Span::new(start.start as usize, self.last_end as usize);
                match self.assign_op()? {
                    None => StmtKind::MapAssign {
                        name,
                        name_span: start,
                        keys,
                        value: self.expr()?,
                    },
                    Some((op, value)) => StmtKind::MapUpdate {
                        name,
                        name_span,
                        keys,
                        op,
                        value,
                    },
                }
            }
            Tok::Var(name) => {
                let value = match self.assign_op()? {
                    None => self.expr()?,
                    // `$x op= v` is `$x = $x op v`.
                    Some((op, v)) => {
                        let span = start.to(v.span);
                        let var = Expr {
                            kind: ExprKind::Var(name.clone()),
                            span: start,
                            ty: Type::Unknown,
                        };
                        Expr {
                            kind: ExprKind::Binary(op, Box::new(var), Box::new(v)),
                            span,
                            ty: Type::Unknown,
                        }
                    }
                };
                StmtKind::VarAssign { name, value }
            }
            other => {
                return err(
                    start,
                    format!("expected statement, found {}", describe(&other)),
                );
            }
        };
        Ok(Stmt {
            kind,
            span: Span::new(start.start as usize, self.last_end as usize),
        })
    }

    /// True when `tok` (just taken) is `self` and `->` follows: a per-vCPU
    /// variable rather than an identifier.
    fn at_self_var(&mut self, tok: &Tok) -> Result<bool, ParseError> {
        Ok(matches!(tok, Tok::Ident(n) if n == "self") && self.is_punct("->")?)
    }

    /// `->NAME` after `self` (at `start`): the variable expression.
    fn self_var(&mut self, start: Span) -> Result<Expr, ParseError> {
        self.expect("->")?;
        let t = self.bump()?;
        let Tok::Ident(name) = t.tok else {
            return err(
                t.span,
                format!(
                    "expected a variable name after 'self->', found {}",
                    describe(&t.tok)
                ),
            );
        };
        Ok(Expr {
            kind: ExprKind::SelfVar(name),
            span: start.to(t.span),
            ty: Type::Unknown,
        })
    }

    /// After an lvalue: `=` (None), or `op=` / `++` / `--` with the
    /// right-hand side (`++` is `+= 1`).
    fn assign_op(&mut self) -> Result<Option<(BinOp, Expr)>, ParseError> {
        use BinOp::*;
        let t = self.bump()?;
        let Tok::Punct(p) = t.tok else {
            return err(t.span, format!("expected '=', found {}", describe(&t.tok)));
        };
        let one = |op| {
            Ok(Some((
                op,
                Expr {
                    kind: ExprKind::Int(1),
                    span: t.span,
                    ty: Type::Unknown,
                },
            )))
        };
        let op = match p {
            "=" => return Ok(None),
            "++" => return one(Add),
            "--" => return one(Sub),
            "+=" => Add,
            "-=" => Sub,
            "*=" => Mul,
            "/=" => Div,
            "%=" => Mod,
            "&=" => And,
            "|=" => Or,
            "^=" => Xor,
            "<<=" => Shl,
            ">>=" => Shr,
            _ => return err(t.span, format!("expected '=', found '{p}'")),
        };
        Ok(Some((op, self.expr()?)))
    }

    /// True if the next token names an integer type (a cast follows `(`).
    fn peek_type_name(&mut self) -> Result<bool, ParseError> {
        Ok(matches!(&self.peek()?.tok, Tok::Ident(n) if INT_TYPES.iter().any(|t| t.0 == n)))
    }

    /// Comma-separated expressions up to `close` (consumed). Empty allowed.
    fn args(&mut self, close: &str) -> Result<Vec<Expr>, ParseError> {
        let mut v = Vec::new();
        if self.eat(close)? {
            return Ok(v);
        }
        loop {
            v.push(self.expr()?);
            if self.eat(close)? {
                return Ok(v);
            }
            self.expect(",")?;
        }
    }

    fn expr(&mut self) -> Result<Expr, ParseError> {
        self.expr_nodiv(false)
    }

    /// `trace(...)` arguments up to `)`: `name = expr` or a bare `expr`
    /// (kept, so that the checker can say where a name is missing).
    fn trace_args(&mut self) -> Result<Vec<TraceArg>, ParseError> {
        let mut v = Vec::new();
        if self.eat(")")? {
            return Ok(v);
        }
        loop {
            let e = self.expr()?;
            let arg = if self.is_punct("=")? {
                let eq = self.bump()?.span;
                let ExprKind::Ident(name) = e.kind else {
                    return err(
                        eq,
                        "a trace() field name must be a plain name, as in trace(fd = arg0)",
                    );
                };
                TraceArg {
                    name: Some((name, e.span)),
                    value: self.expr()?,
                }
            } else {
                TraceArg {
                    name: None,
                    value: e,
                }
            };
            v.push(arg);
            if self.eat(")")? {
                return Ok(v);
            }
            self.expect(",")?;
        }
    }

    fn expr_nodiv(&mut self, no_div: bool) -> Result<Expr, ParseError> {
        self.enter()?;
        let c = self.binary(0, no_div)?;
        let r = if self.eat("?")? {
            let a = self.expr_nodiv(no_div)?;
            self.expect(":")?;
            let b = self.expr_nodiv(no_div)?;
            let span = c.span.to(b.span);
            Expr {
                kind: ExprKind::Ternary(Box::new(c), Box::new(a), Box::new(b)),
                span,
                ty: Type::Unknown,
            }
        } else {
            c
        };
        self.depth -= 1;
        Ok(r)
    }

    fn peek_binop(&mut self, no_div: bool) -> Result<Option<(BinOp, u8)>, ParseError> {
        use BinOp::*;
        let Tok::Punct(p) = self.peek()?.tok else {
            return Ok(None);
        };
        Ok(Some(match p {
            "||" => (LogOr, 1),
            "&&" => (LogAnd, 2),
            "|" => (Or, 3),
            "^" => (Xor, 4),
            "&" => (And, 5),
            "==" => (Eq, 6),
            "!=" => (Ne, 6),
            "<" => (Lt, 7),
            "<=" => (Le, 7),
            ">" => (Gt, 7),
            ">=" => (Ge, 7),
            "<<" => (Shl, 8),
            ">>" => (Shr, 8),
            "+" => (Add, 9),
            "-" => (Sub, 9),
            "*" => (Mul, 10),
            "/" if !no_div => (Div, 10),
            "%" => (Mod, 10),
            _ => return Ok(None),
        }))
    }

    /// Precedence climbing; all binary operators are left associative.
    fn binary(&mut self, min_prec: u8, no_div: bool) -> Result<Expr, ParseError> {
        let mut lhs = self.unary()?;
        while let Some((op, prec)) = self.peek_binop(no_div)? {
            if prec < min_prec {
                break;
            }
            self.bump()?;
            self.enter()?;
            let rhs = self.binary(prec + 1, no_div)?;
            self.depth -= 1;
            let span = lhs.span.to(rhs.span);
            lhs = Expr {
                kind: ExprKind::Binary(op, Box::new(lhs), Box::new(rhs)),
                span,
                ty: Type::Unknown,
            };
        }
        Ok(lhs)
    }

    fn unary(&mut self) -> Result<Expr, ParseError> {
        // `None`: `*`, a dereference.
        let op = match self.peek()?.tok {
            Tok::Punct("-") => Some(UnOp::Neg),
            Tok::Punct("!") => Some(UnOp::Not),
            Tok::Punct("~") => Some(UnOp::BitNot),
            Tok::Punct("*") => None,
            _ => return self.primary(),
        };
        let t = self.bump()?;
        self.enter()?;
        let e = Box::new(self.unary()?);
        self.depth -= 1;
        let span = t.span.to(e.span);
        Ok(Expr {
            kind: match op {
                Some(op) => ExprKind::Unary(op, e),
                None => ExprKind::Deref(e),
            },
            span,
            ty: Type::Unknown,
        })
    }

    fn primary(&mut self) -> Result<Expr, ParseError> {
        let t = self.bump()?;
        let mut span = t.span;
        if self.at_self_var(&t.tok)? {
            let var = self.self_var(span)?;
            return self.postfix(var);
        }
        let kind = match t.tok {
            Tok::Int(v) => ExprKind::Int(v),
            Tok::Str(s) => ExprKind::Str(s),
            Tok::Var(v) => ExprKind::Var(v),
            Tok::Map(name) => {
                let keys = if self.eat("[")? {
                    self.args("]")?
                } else {
                    Vec::new()
                };
                span = Span::new(span.start as usize, self.last_end as usize);
                ExprKind::Map { name, keys }
            }
            Tok::Ident(name)
                if (name == "sizeof" || name == "offsetof") && self.is_punct("(")? =>
            {
                self.bump()?;
                if name == "offsetof" || self.peek_aggregate()? {
                    let (ty, _) = self.type_name()?;
                    let kind = if name == "sizeof" {
                        ExprKind::SizeofType(ty)
                    } else {
                        self.expect(",")?;
                        let mut path = Vec::new();
                        loop {
                            let t = self.bump()?;
                            let Tok::Ident(m) = t.tok else {
                                return err(
                                    t.span,
                                    format!("expected a member name, found {}", describe(&t.tok)),
                                );
                            };
                            path.push(m);
                            if !self.eat(".")? {
                                break;
                            }
                        }
                        ExprKind::Offsetof(ty, path)
                    };
                    self.expect(")")?;
                    span = Span::new(span.start as usize, self.last_end as usize);
                    kind
                } else {
                    let args = self.args(")")?;
                    span = Span::new(span.start as usize, self.last_end as usize);
                    ExprKind::Call { name, args }
                }
            }
            Tok::Ident(name) => {
                if self.eat("(")? {
                    let args = self.args(")")?;
                    span = Span::new(span.start as usize, self.last_end as usize);
                    ExprKind::Call { name, args }
                } else {
                    ExprKind::Ident(name)
                }
            }
            Tok::Punct("(") if self.peek_type_name()? => {
                let Tok::Ident(tn) = self.bump()?.tok else {
                    unreachable!("peeked a type name")
                };
                let &(_, size, signed) = INT_TYPES
                    .iter()
                    .find(|t| t.0 == tn)
                    .expect("peeked a type name");
                let ptr = self.eat("*")?;
                let close = self.expect(")")?;
                self.enter()?;
                let e = self.unary()?;
                self.depth -= 1;
                let span = span.to(close).to(e.span);
                return Ok(Expr {
                    kind: ExprKind::Cast {
                        size,
                        signed,
                        ptr,
                        expr: Box::new(e),
                    },
                    span,
                    ty: Type::Unknown,
                });
            }
            Tok::Punct("(") => {
                if self.peek_aggregate()? {
                    let (ty, _) = self.type_name()?;
                    let mut ptr = 0u8;
                    while self.eat("*")? {
                        ptr = ptr.saturating_add(1);
                    }
                    let close = self.expect(")")?;
                    if ptr == 0 {
                        return err(
                            span.to(close),
                            format!(
                                "cannot cast to '{ty}': only pointers to structs can be cast to, e.g. ({ty} *)"
                            ),
                        );
                    }
                    self.enter()?;
                    let e = self.unary()?;
                    self.depth -= 1;
                    let span = span.to(e.span);
                    return Ok(Expr {
                        kind: ExprKind::KCast {
                            ty,
                            ptr,
                            expr: Box::new(e),
                        },
                        span,
                        ty: Type::Unknown,
                    });
                }
                // Division is allowed again inside parentheses.
                let mut e = self.expr()?;
                if self.eat(",")? {
                    let mut elems = vec![e];
                    elems.extend(self.args(")")?);
                    let span = Span::new(span.start as usize, self.last_end as usize);
                    return self.postfix(Expr {
                        kind: ExprKind::Tuple(elems),
                        span,
                        ty: Type::Unknown,
                    });
                }
                let close = self.expect(")")?;
                e.span = span.to(close);
                return self.postfix(e);
            }
            other => {
                return err(
                    span,
                    format!("expected expression, found {}", describe(&other)),
                );
            }
        };
        self.postfix(Expr {
            kind,
            span,
            ty: Type::Unknown,
        })
    }

    /// True if the next token is `struct`, `union` or `enum`.
    fn peek_aggregate(&mut self) -> Result<bool, ParseError> {
        Ok(
            matches!(&self.peek()?.tok, Tok::Ident(k) if matches!(k.as_str(), "struct" | "union" | "enum")),
        )
    }

    /// `struct NAME` (or union/enum): the C name and its span.
    fn type_name(&mut self) -> Result<(String, Span), ParseError> {
        let k = self.bump()?;
        let Tok::Ident(kw) = k.tok else {
            return err(
                k.span,
                format!("expected 'struct', found {}", describe(&k.tok)),
            );
        };
        if !matches!(kw.as_str(), "struct" | "union" | "enum") {
            return err(
                k.span,
                format!("expected 'struct', 'union' or 'enum', found '{kw}'"),
            );
        }
        let t = self.bump()?;
        let Tok::Ident(n) = t.tok else {
            return err(
                t.span,
                format!("expected a type name, found {}", describe(&t.tok)),
            );
        };
        Ok((format!("{kw} {n}"), k.span.to(t.span)))
    }

    /// Postfix operators after a primary expression: tuple fields `.N`,
    /// struct members `.name` / `->name`, and indexing `[i]`.
    fn postfix(&mut self, mut e: Expr) -> Result<Expr, ParseError> {
        loop {
            if self.eat("[")? {
                self.enter()?;
                let index = self.expr()?;
                self.depth -= 1;
                self.expect("]")?;
                let span = Span::new(e.span.start as usize, self.last_end as usize);
                e = Expr {
                    kind: ExprKind::Index {
                        base: Box::new(e),
                        index: Box::new(index),
                        elem_size: 0,
                        access: Access::Unresolved,
                    },
                    span,
                    ty: Type::Unknown,
                };
                continue;
            }
            let arrow = if self.eat(".")? {
                false
            } else if self.eat("->")? {
                true
            } else {
                break;
            };
            let t = self.bump()?;
            let span = e.span.to(t.span);
            let kind = match t.tok {
                Tok::Int(n) if !arrow => {
                    ExprKind::Field(Box::new(e), n.min(u32::MAX as u64) as u32)
                }
                Tok::Ident(name) => ExprKind::Member {
                    base: Box::new(e),
                    name,
                    arrow,
                    offset: 0,
                    access: Access::Unresolved,
                },
                other => {
                    return err(
                        t.span,
                        format!(
                            "expected a field name or tuple index after '{}', found {}",
                            if arrow { "->" } else { "." },
                            describe(&other)
                        ),
                    );
                }
            };
            e = Expr {
                kind,
                span,
                ty: Type::Unknown,
            };
        }
        Ok(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(src: &str) -> Vec<Stmt> {
        parse(src).unwrap().probes.remove(0).body
    }

    fn expr_of(src: &str) -> Expr {
        let s = format!("BEGIN {{ $x = {src}; }}");
        match body(&s).remove(0).kind {
            StmtKind::VarAssign { value, .. } => value,
            _ => unreachable!(),
        }
    }

    fn sexpr(e: &Expr) -> String {
        match &e.kind {
            ExprKind::Int(v) => v.to_string(),
            ExprKind::Ident(v) => v.clone(),
            ExprKind::Unary(op, a) => format!("({op:?} {})", sexpr(a)),
            ExprKind::Binary(op, a, b) => format!("({} {} {})", op.symbol(), sexpr(a), sexpr(b)),
            ExprKind::Ternary(c, a, b) => format!("(? {} {} {})", sexpr(c), sexpr(a), sexpr(b)),
            other => format!("{other:?}"),
        }
    }

    #[test]
    fn precedence() {
        assert_eq!(sexpr(&expr_of("1 + 2 * 3")), "(+ 1 (* 2 3))");
        assert_eq!(sexpr(&expr_of("1 - 2 - 3")), "(- (- 1 2) 3)");
        assert_eq!(
            sexpr(&expr_of("1 | 2 ^ 3 & 4 == 5 < 6 << 7")),
            "(| 1 (^ 2 (& 3 (== 4 (< 5 (<< 6 7))))))"
        );
        assert_eq!(
            sexpr(&expr_of("a || b && c ? 1 : 2")),
            "(? (|| a (&& b c)) 1 2)"
        );
        assert_eq!(
            sexpr(&expr_of("-~!1 * (2 + 3)")),
            "(* (Neg (BitNot (Not 1))) (+ 2 3))"
        );
    }

    #[test]
    fn spans() {
        let e = expr_of("arg0 + 12");
        assert_eq!(e.span, Span::new(13, 22));
    }

    #[test]
    fn probes_and_predicate() {
        let ast = parse("kprobe:a,kprobe:b* /arg0 > 1 && (arg1 / 2) == 3/ { @c = count() } END {}")
            .unwrap();
        assert_eq!(ast.probes.len(), 2);
        assert_eq!(ast.probes[0].attach.len(), 2);
        assert!(ast.probes[0].predicate.is_some());
        assert_eq!(ast.probes[1].attach[0].0, "END");
    }

    #[test]
    fn statements() {
        let b = body(
            "BEGIN { @m[1, \"a\"] = count(); printf(\"%d\\n\", 1); if (1) { exit() } else if (2) { $x = 1 } else { clear(@m) } delete(@m[1, \"a\"]) }",
        );
        assert_eq!(b.len(), 4);
        assert!(matches!(&b[0].kind, StmtKind::MapAssign { keys, .. } if keys.len() == 2));
        assert!(matches!(&b[2].kind, StmtKind::If { els, .. } if els.len() == 1));
    }

    #[test]
    fn errors_have_positions() {
        let e = parse("BEGIN { @x = ; }").unwrap_err();
        assert_eq!(e.span.start, 13);
        assert!(e.message.contains("expected expression"));
        assert!(parse("BEGIN { exit() exit() }").is_err());
        assert!(parse("").is_err());
        assert!(parse("BEGIN").is_err());
        let deep = format!("BEGIN {{ $x = {}1; }}", "(".repeat(10_000));
        assert!(parse(&deep).is_err());
    }
}
