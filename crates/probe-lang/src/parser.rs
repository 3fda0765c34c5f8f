//! Pass 2: recursive-descent parser producing the [`Ast`].
//!
//! Long file: one recursive-descent parser for one grammar; its rules call
//! each other (statements, expressions, attach points), and read best in
//! the order of the grammar rather than spread over files.
//!
//! Binary operators use precedence climbing with C precedence. Inside a
//! predicate `/.../` a bare `/` ends the predicate, so division there needs
//! parentheses (as in bpftrace). The first error aborts parsing.

use crate::ast::*;
use crate::diag::Span;
use crate::lexer::{LexError, Lexer, Tok, Token};

/// The deepest nesting accepted: the blocks and parser frames around an
/// expression plus the height of its tree (a leaf is 1). Every later pass
/// (checker, lowering, interpreter, dumps, drop) recurses along the tree,
/// so this bounds their stack as well as the parser's: in an unoptimised
/// build the deepest accepted scripts need at most about 720 KiB
/// (`tests/nesting.rs` runs them all on a 1 MiB stack).
pub const MAX_NESTING: usize = 64;

pub type ParseError = LexError;

pub fn parse(src: &str) -> Result<Ast, ParseError> {
    parse_with(src, &[], None)
}

/// Parses after the preprocessor pass, with the positional parameters
/// (`$1`.., `$#`) a run was given and where `#include`s are read.
pub fn parse_with(
    src: &str,
    params: &[String],
    headers: Option<&crate::headers::HeaderSearch>,
) -> Result<Ast, ParseError> {
    let pre = crate::preprocess::preprocess_with(src, headers)?;
    let mut p = Parser {
        lx: Lexer::with_macros(&pre.text, &pre.macros),
        peeked: None,
        depth: 0,
        last_end: 0,
        params,
        in_str: false,
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
    Ok(Ast {
        probes,
        headers: pre.headers,
    })
}

/// A parsed expression and the height of its tree (a leaf is 1), kept as
/// the tree grows so that its depth is bounded without walking it.
struct Node {
    e: Expr,
    h: usize,
}

fn too_deep(what: &str) -> String {
    format!("{what} nested too deeply (more than {MAX_NESTING} levels)")
}

struct Parser<'s> {
    lx: Lexer<'s>,
    peeked: Option<Token>,
    depth: usize,
    last_end: u32,
    /// Positional parameters, `$1` first.
    params: &'s [String],
    /// Parsing the arguments of `str()`, where `$N` is the parameter's text.
    in_str: bool,
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
        Ok(self.eat_at(p)?.is_some())
    }

    /// Like `eat`, giving the token's span.
    fn eat_at(&mut self, p: &str) -> Result<Option<Span>, ParseError> {
        if self.is_punct(p)? {
            Ok(Some(self.bump()?.span))
        } else {
            Ok(None)
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
            Some(e.e)
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
        self.enter("blocks")?;
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

    /// One level deeper into blocks (`what`) or expressions.
    fn enter(&mut self, what: &str) -> Result<(), ParseError> {
        self.depth += 1;
        if self.depth > MAX_NESTING {
            let end = self.last_end as usize;
            return err(Span::new(end, end), too_deep(what));
        }
        Ok(())
    }

    /// A node over children at most `below` high, at the current depth;
    /// `at` is where the error points when that is too deep.
    fn node(&self, kind: ExprKind, span: Span, below: usize, at: Span) -> Result<Node, ParseError> {
        let h = below + 1;
        if self.depth + h > MAX_NESTING {
            return err(at, too_deep("expression"));
        }
        Ok(Node {
            e: Expr {
                kind,
                span,
                ty: Type::Unknown,
            },
            h,
        })
    }

    // Statements and primaries are split into one function per form: in an
    // unoptimised build a function's frame holds every arm's temporaries,
    // and these recurse once per nesting level.
    fn stmt(&mut self) -> Result<Stmt, ParseError> {
        let t = self.bump()?;
        let start = t.span;
        let kind = match t.tok {
            Tok::Ident(ref name) if name == "self" && self.is_punct("->")? => {
                self.self_assign(start)?
            }
            Tok::Ident(ref name) if name == "if" => self.if_stmt()?,
            Tok::Ident(ref name) if name == "unroll" => self.unroll_stmt()?,
            Tok::Ident(ref name) if name == "while" => {
                self.expect("(")?;
                let cond = self.expr()?.e;
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
                let (args, _) = self.args(")")?;
                StmtKind::Call {
                    name,
                    name_span: start,
                    args,
                }
            }
            Tok::Map(name) => self.map_stmt(name, start)?,
            Tok::Var(name) => {
                let var = Expr {
                    kind: ExprKind::Var(name.clone()),
                    span: start,
                    ty: Type::Unknown,
                };
                let value = self.assigned(var)?;
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

    /// `self->x = v` (or `op=`), after `self`.
    fn self_assign(&mut self, start: Span) -> Result<StmtKind, ParseError> {
        let var = self.self_var(start)?;
        let ExprKind::SelfVar(name) = &var.kind else {
            unreachable!("self_var builds a SelfVar")
        };
        let name = name.clone();
        let value = self.assigned(var)?;
        Ok(StmtKind::SelfAssign { name, value })
    }

    /// The value assigned to the variable `var`: after `=`, the expression;
    /// `var op= v` is `var = var op v`.
    fn assigned(&mut self, var: Expr) -> Result<Expr, ParseError> {
        Ok(match self.assign_op()? {
            None => self.expr()?.e,
            Some((op, v)) => {
                let span = var.span.to(v.e.span);
                let kind = ExprKind::Binary(op, Box::new(var), Box::new(v.e));
                self.node(kind, span, v.h, span)?.e
            }
        })
    }

    /// `if (c) { ... } [else if ... | else { ... }]`, after `if`.
    fn if_stmt(&mut self) -> Result<StmtKind, ParseError> {
        self.expect("(")?;
        let cond = self.expr()?.e;
        self.expect(")")?;
        let then = self.block()?;
        let els = if matches!(&self.peek()?.tok, Tok::Ident(s) if s == "else") {
            self.bump()?;
            if matches!(&self.peek()?.tok, Tok::Ident(s) if s == "if") {
                self.enter("blocks")?;
                let s = vec![self.stmt()?];
                self.depth -= 1;
                s
            } else {
                self.block()?
            }
        } else {
            Vec::new()
        };
        Ok(StmtKind::If { cond, then, els })
    }

    /// `unroll (N) { ... }`, after `unroll`.
    fn unroll_stmt(&mut self) -> Result<StmtKind, ParseError> {
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
        Ok(StmtKind::Unroll { count, body })
    }

    /// `@m[keys] = v` or `@m[keys] op= v`, after `@m`.
    fn map_stmt(&mut self, name: String, start: Span) -> Result<StmtKind, ParseError> {
        let (keys, _) = self.map_keys()?;
        let name_span = Span::new(start.start as usize, self.last_end as usize);
        Ok(match self.assign_op()? {
            None => StmtKind::MapAssign {
                name,
                name_span: start,
                keys,
                value: self.expr()?.e,
            },
            Some((op, value)) => StmtKind::MapUpdate {
                name,
                name_span,
                keys,
                op,
                value: value.e,
            },
        })
    }

    /// True when `tok` (just taken) is `self` and `->` follows: a thread-local
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
    fn assign_op(&mut self) -> Result<Option<(BinOp, Node)>, ParseError> {
        use BinOp::*;
        let t = self.bump()?;
        let Tok::Punct(p) = t.tok else {
            return err(t.span, format!("expected '=', found {}", describe(&t.tok)));
        };
        let one = |op| {
            Ok(Some((
                op,
                Node {
                    e: Expr {
                        kind: ExprKind::Int(1),
                        span: t.span,
                        ty: Type::Unknown,
                    },
                    h: 1,
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

    /// Comma-separated expressions up to `close` (consumed), and the
    /// height of the highest. Empty allowed.
    fn args(&mut self, close: &str) -> Result<(Vec<Expr>, usize), ParseError> {
        let mut v = Vec::new();
        let mut h = 0;
        if self.eat(close)? {
            return Ok((v, h));
        }
        loop {
            let a = self.expr()?;
            h = h.max(a.h);
            v.push(a.e);
            if self.eat(close)? {
                return Ok((v, h));
            }
            self.expect(",")?;
        }
    }

    fn expr(&mut self) -> Result<Node, ParseError> {
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
            let e = self.expr()?.e;
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
                    value: self.expr()?.e,
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

    fn expr_nodiv(&mut self, no_div: bool) -> Result<Node, ParseError> {
        self.enter("expression")?;
        let c = self.binary(0, no_div)?;
        let r = match self.eat_at("?")? {
            Some(at) => self.ternary(c, at, no_div)?,
            None => c,
        };
        self.depth -= 1;
        Ok(r)
    }

    /// `c ? a : b`, after `?` (at `at`).
    fn ternary(&mut self, c: Node, at: Span, no_div: bool) -> Result<Node, ParseError> {
        let a = self.expr_nodiv(no_div)?;
        self.expect(":")?;
        let b = self.expr_nodiv(no_div)?;
        let span = c.e.span.to(b.e.span);
        let below = c.h.max(a.h).max(b.h);
        let kind = ExprKind::Ternary(Box::new(c.e), Box::new(a.e), Box::new(b.e));
        self.node(kind, span, below, at)
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
    /// A chain such as `1 + 1 + ... + 1` is built here in a loop: its
    /// height is checked at each link, as no recursion bounds it.
    fn binary(&mut self, min_prec: u8, no_div: bool) -> Result<Node, ParseError> {
        let mut lhs = self.unary()?;
        while let Some((op, prec)) = self.peek_binop(no_div)? {
            if prec < min_prec {
                break;
            }
            let at = self.bump()?.span;
            self.enter("expression")?;
            let rhs = self.binary(prec + 1, no_div)?;
            self.depth -= 1;
            let span = lhs.e.span.to(rhs.e.span);
            let below = lhs.h.max(rhs.h);
            let kind = ExprKind::Binary(op, Box::new(lhs.e), Box::new(rhs.e));
            lhs = self.node(kind, span, below, at)?;
        }
        Ok(lhs)
    }

    fn unary(&mut self) -> Result<Node, ParseError> {
        // `None`: `*`, a dereference.
        let op = match self.peek()?.tok {
            Tok::Punct("-") => Some(UnOp::Neg),
            Tok::Punct("!") => Some(UnOp::Not),
            Tok::Punct("~") => Some(UnOp::BitNot),
            Tok::Punct("*") => None,
            _ => return self.primary(),
        };
        let t = self.bump()?;
        self.enter("expression")?;
        let e = self.unary()?;
        self.depth -= 1;
        let span = t.span.to(e.e.span);
        let kind = match op {
            Some(op) => ExprKind::Unary(op, Box::new(e.e)),
            None => ExprKind::Deref(Box::new(e.e)),
        };
        self.node(kind, span, e.h, t.span)
    }

    fn primary(&mut self) -> Result<Node, ParseError> {
        let t = self.bump()?;
        let span = t.span;
        if self.at_self_var(&t.tok)? {
            let var = self.self_var(span)?;
            return self.postfix(Node { e: var, h: 1 });
        }
        let n = match t.tok {
            Tok::Int(v) => self.node(ExprKind::Int(v), span, 0, span)?,
            Tok::Str(s) => self.node(ExprKind::Str(s), span, 0, span)?,
            Tok::Var(v) if v == "#" || v.bytes().all(|b| b.is_ascii_digit()) => {
                let kind = self.positional(&v, span)?;
                self.node(kind, span, 0, span)?
            }
            Tok::Var(v) => self.node(ExprKind::Var(v), span, 0, span)?,
            Tok::Map(name) => self.map_expr(name, span)?,
            Tok::Ident(name) => self.ident_expr(name, span)?,
            // A cast or a parenthesised expression or tuple.
            Tok::Punct("(") => return self.paren(span),
            other => {
                return err(
                    span,
                    format!("expected expression, found {}", describe(&other)),
                );
            }
        };
        self.postfix(n)
    }

    /// `@m` or `@m[keys]`, after `@m` (at `span`).
    fn map_expr(&mut self, name: String, span: Span) -> Result<Node, ParseError> {
        let (keys, below) = self.map_keys()?;
        let span = Span::new(span.start as usize, self.last_end as usize);
        self.node(ExprKind::Map { name, keys }, span, below, span)
    }

    /// `[keys]` after a map's name, if there, and the highest key's height.
    fn map_keys(&mut self) -> Result<(Vec<Expr>, usize), ParseError> {
        match self.eat("[")? {
            true => self.args("]"),
            false => Ok((Vec::new(), 0)),
        }
    }

    /// A builtin's name, a call, `sizeof(...)` or `offsetof(...)`, after
    /// the name (at `span`).
    fn ident_expr(&mut self, name: String, span: Span) -> Result<Node, ParseError> {
        if !self.eat("(")? {
            return self.node(ExprKind::Ident(name), span, 0, span);
        }
        if name == "offsetof" || (name == "sizeof" && self.peek_aggregate()?) {
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
            let span = Span::new(span.start as usize, self.last_end as usize);
            return self.node(kind, span, 0, span);
        }
        let was_in_str = std::mem::replace(&mut self.in_str, name == "str");
        let parsed = self.args(")");
        self.in_str = was_in_str;
        let (mut args, below) = parsed?;
        let span = Span::new(span.start as usize, self.last_end as usize);
        // `str($1)` is the parameter's text itself.
        if name == "str" && args.len() == 1 && matches!(args[0].kind, ExprKind::Str(_)) {
            let arg = args.remove(0);
            return self.node(arg.kind, span, 0, span);
        }
        self.node(ExprKind::Call { name, args }, span, below, span)
    }

    /// `$#` or `$N`, as bpftrace: the parameter's text inside `str()`, else
    /// its number; an unset parameter is `""` or 0.
    fn positional(&mut self, v: &str, span: Span) -> Result<ExprKind, ParseError> {
        if v == "#" {
            return Ok(ExprKind::Int(self.params.len() as u64));
        }
        let n: usize = v.parse().unwrap_or(usize::MAX);
        if n == 0 {
            return err(
                span,
                format!("${v} is not a valid parameter (they start at $1)"),
            );
        }
        let text = self.params.get(n - 1).map(String::as_str);
        if self.in_str {
            return Ok(ExprKind::Str(text.unwrap_or("").to_string()));
        }
        let Some(text) = text else {
            return Ok(ExprKind::Int(0));
        };
        let (negative, digits) = match text.strip_prefix('-') {
            Some(d) => (true, d),
            None => (false, text),
        };
        match crate::lexer::parse_int(digits) {
            Ok(v) if !negative => Ok(ExprKind::Int(v)),
            Ok(v) if v <= 1 << 63 => Ok(ExprKind::Int(v.wrapping_neg())),
            _ => err(
                span,
                format!("${n} used numerically but given \"{text}\"; try str(${n})"),
            ),
        }
    }

    /// After `(` (at `span`): an integer cast `(uint32 *)e`, a struct
    /// pointer cast `(struct s *)e`, a tuple, or an expression in
    /// parentheses (where division is allowed again).
    fn paren(&mut self, span: Span) -> Result<Node, ParseError> {
        if self.peek_type_name()? {
            return self.int_cast(span);
        }
        if self.peek_aggregate()? {
            return self.struct_cast(span);
        }
        let mut e = self.expr()?;
        if self.eat(",")? {
            let (rest, below) = self.args(")")?;
            let below = below.max(e.h);
            let mut elems = vec![e.e];
            elems.extend(rest);
            let span = Span::new(span.start as usize, self.last_end as usize);
            let tuple = self.node(ExprKind::Tuple(elems), span, below, span)?;
            return self.postfix(tuple);
        }
        let close = self.expect(")")?;
        e.e.span = span.to(close);
        self.postfix(e)
    }

    /// `(uint32)e` or `(uint32 *)e`, after `(` (at `span`).
    fn int_cast(&mut self, span: Span) -> Result<Node, ParseError> {
        let Tok::Ident(tn) = self.bump()?.tok else {
            unreachable!("peeked a type name")
        };
        let &(_, size, signed) = INT_TYPES
            .iter()
            .find(|t| t.0 == tn)
            .expect("peeked a type name");
        let ptr = self.eat("*")?;
        let close = self.expect(")")?;
        let e = self.cast_operand()?;
        let span = span.to(close).to(e.e.span);
        let kind = ExprKind::Cast {
            size,
            signed,
            ptr,
            expr: Box::new(e.e),
        };
        self.node(kind, span, e.h, close)
    }

    /// `(struct s *)e`, after `(` (at `span`).
    fn struct_cast(&mut self, span: Span) -> Result<Node, ParseError> {
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
        let e = self.cast_operand()?;
        let span = span.to(e.e.span);
        let kind = ExprKind::KCast {
            ty,
            ptr,
            expr: Box::new(e.e),
        };
        self.node(kind, span, e.h, close)
    }

    /// The operand of a cast, one level deeper.
    fn cast_operand(&mut self) -> Result<Node, ParseError> {
        self.enter("expression")?;
        let e = self.unary()?;
        self.depth -= 1;
        Ok(e)
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
    /// struct members `.name` / `->name`, and indexing `[i]`. A chain such
    /// as `a->b->c...` is built here in a loop: its height is checked at
    /// each link, as no recursion bounds it.
    fn postfix(&mut self, mut e: Node) -> Result<Node, ParseError> {
        loop {
            if let Some(at) = self.eat_at("[")? {
                self.enter("expression")?;
                let index = self.expr()?;
                self.depth -= 1;
                self.expect("]")?;
                let span = Span::new(e.e.span.start as usize, self.last_end as usize);
                let kind = ExprKind::Index {
                    base: Box::new(e.e),
                    index: Box::new(index.e),
                    elem_size: 0,
                    access: Access::Unresolved,
                };
                e = self.node(kind, span, e.h.max(index.h), at)?;
                continue;
            }
            let (arrow, at) = if let Some(at) = self.eat_at(".")? {
                (false, at)
            } else if let Some(at) = self.eat_at("->")? {
                (true, at)
            } else {
                break;
            };
            let t = self.bump()?;
            let span = e.e.span.to(t.span);
            let kind = match t.tok {
                Tok::Int(n) if !arrow => {
                    ExprKind::Field(Box::new(e.e), n.min(u32::MAX as u64) as u32)
                }
                Tok::Ident(name) => ExprKind::Member {
                    base: Box::new(e.e),
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
            e = self.node(kind, span, e.h, at)?;
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

    #[test]
    fn positional_parameters_as_bpftrace() {
        let params = ["7".to_string(), "abc".to_string(), "-2".to_string()];
        let expr = |src: &str| {
            let ast = parse_with(&format!("BEGIN {{ @x = {src}; }}"), &params, None).unwrap();
            match &ast.probes[0].body[0].kind {
                StmtKind::MapAssign { value, .. } => value.kind.clone(),
                other => panic!("{other:?}"),
            }
        };
        let int = |src: &str| match expr(src) {
            ExprKind::Int(v) => v,
            other => panic!("{other:?}"),
        };
        let str_arg = |src: &str| match expr(src) {
            ExprKind::Str(s) => s,
            other => panic!("{other:?}"),
        };
        assert_eq!(int("$1"), 7);
        assert_eq!(int("$#"), 3);
        assert_eq!(int("$3"), 2u64.wrapping_neg());
        // Unset: 0, or "" in str().
        assert_eq!(int("$9"), 0);
        assert_eq!(str_arg("str($2)"), "abc");
        assert_eq!(str_arg("str($1)"), "7");
        assert_eq!(str_arg("str($9)"), "");
        let e = parse_with("BEGIN { @x = $2; }", &params, None).unwrap_err();
        assert_eq!(
            e.message,
            "$2 used numerically but given \"abc\"; try str($2)"
        );
        assert_eq!(e.span.start, 13);
        let e = parse_with("BEGIN { @x = $0; }", &params, None).unwrap_err();
        assert!(e.message.contains("not a valid parameter"));
    }
}
