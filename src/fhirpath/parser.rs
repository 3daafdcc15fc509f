//! Lexer and precedence-climbing parser: expression text -> [`Expr`].

use crate::{Error, Result};

/// A compiled expression node.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Expr {
    /// The focus: `$this`, or the input of a path that starts with a member name.
    This,
    /// An empty collection, `{}`.
    Empty,
    Bool(bool),
    Int(i64),
    Dec(f64),
    Str(Box<str>),
    /// `%name`: an external constant.
    Constant(Box<str>),
    /// `%rowIndex`.
    RowIndex,
    /// `base.name`; a leading upper-case name may also be the resource type (`Patient.name`).
    Member(Box<Expr>, Box<str>),
    /// `base[index]`.
    Index(Box<Expr>, Box<Expr>),
    /// `base.f(args)`.
    Call(Box<Expr>, Func, Vec<Expr>),
    Binary(BinOp, Box<Expr>, Box<Expr>),
    Neg(Box<Expr>),
}

/// Binary operators, lowest precedence first in [`BinOp::precedence`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BinOp {
    Implies,
    Or,
    Xor,
    And,
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    Union,
    Add,
    Sub,
    Concat,
    Mul,
    Div,
}

impl BinOp {
    fn precedence(self) -> u8 {
        match self {
            BinOp::Implies => 1,
            BinOp::Or | BinOp::Xor => 2,
            BinOp::And => 3,
            BinOp::Eq | BinOp::Ne => 5,
            BinOp::Lt | BinOp::Le | BinOp::Gt | BinOp::Ge => 6,
            BinOp::Union => 7,
            BinOp::Add | BinOp::Sub | BinOp::Concat => 9,
            BinOp::Mul | BinOp::Div => 10,
        }
    }
}

/// The functions this subset knows; a type argument (`ofType(Quantity)`) is resolved at compile time.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Func {
    Where,
    Exists,
    Empty,
    First,
    Last,
    Count,
    Not,
    Join,
    OfType(Box<str>),
    Extension,
    ResourceKey,
    ReferenceKey(Option<Box<str>>),
    LowBoundary,
    HighBoundary,
}

impl Func {
    /// Resolves a function name and checks its arguments; `pos` is for errors.
    fn resolve(name: &str, args: &mut Vec<Expr>, pos: usize, src: &str) -> Result<Func> {
        let arity = |min: usize, max: usize| {
            if (min..=max).contains(&args.len()) {
                Ok(())
            } else {
                Err(syntax(
                    src,
                    pos,
                    &format!(
                        "{name}() takes {min} to {max} arguments, got {}",
                        args.len()
                    ),
                ))
            }
        };
        let func = match name {
            "where" => arity(1, 1).map(|_| Func::Where)?,
            "exists" => arity(0, 1).map(|_| Func::Exists)?,
            "empty" => arity(0, 0).map(|_| Func::Empty)?,
            "first" => arity(0, 0).map(|_| Func::First)?,
            "last" => arity(0, 0).map(|_| Func::Last)?,
            "count" => arity(0, 0).map(|_| Func::Count)?,
            "not" => arity(0, 0).map(|_| Func::Not)?,
            "join" => arity(0, 1).map(|_| Func::Join)?,
            "extension" => arity(1, 1).map(|_| Func::Extension)?,
            "getResourceKey" => arity(0, 0).map(|_| Func::ResourceKey)?,
            "lowBoundary" => arity(0, 1).map(|_| Func::LowBoundary)?,
            "highBoundary" => arity(0, 1).map(|_| Func::HighBoundary)?,
            "ofType" => {
                arity(1, 1)?;
                Func::OfType(type_name(args.pop(), name, pos, src)?)
            }
            "getReferenceKey" => {
                arity(0, 1)?;
                Func::ReferenceKey(match args.pop() {
                    Some(arg) => Some(type_name(Some(arg), name, pos, src)?),
                    None => None,
                })
            }
            _ => return Err(syntax(src, pos, &format!("unknown function {name}()"))),
        };
        Ok(func)
    }
}

/// The name of a type specifier argument (`Quantity`, `FHIR.Quantity`).
fn type_name(arg: Option<Expr>, func: &str, pos: usize, src: &str) -> Result<Box<str>> {
    match arg {
        Some(Expr::Member(base, name)) if matches!(*base, Expr::This | Expr::Member(..)) => {
            Ok(name)
        }
        _ => Err(syntax(src, pos, &format!("{func}() expects a type name"))),
    }
}

fn syntax(src: &str, pos: usize, msg: &str) -> Error {
    Error::FhirPath {
        expr: src.to_owned(),
        pos: Some(pos),
        msg: msg.to_owned(),
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    Str(String),
    Int(i64),
    Dec(f64),
    Ext(String),
    This,
    Op(&'static str),
    Eof,
}

struct Lexer<'s> {
    src: &'s str,
    pos: usize,
}

const OPS: [&str; 20] = [
    "<=", ">=", "!=", "(", ")", "[", "]", "{", "}", ".", ",", "=", "<", ">", "+", "-", "*", "/",
    "|", "&",
];

impl Lexer<'_> {
    /// The next token and its start offset.
    fn next(&mut self) -> Result<(Tok, usize)> {
        let bytes = self.src.as_bytes();
        while self.pos < bytes.len() && bytes[self.pos].is_ascii_whitespace() {
            self.pos += 1;
        }
        let start = self.pos;
        let Some(&c) = bytes.get(start) else {
            return Ok((Tok::Eof, start));
        };
        let rest = &self.src[start..];
        let tok = if c == b'\'' || c == b'`' {
            Tok::Str(self.quoted(c)?).with_quote(c)
        } else if c.is_ascii_digit() {
            let len = rest
                .find(|ch: char| !ch.is_ascii_digit())
                .unwrap_or(rest.len());
            let frac = rest[len..]
                .strip_prefix('.')
                .filter(|f| f.starts_with(|ch: char| ch.is_ascii_digit()));
            match frac {
                Some(f) => {
                    let flen = f.find(|ch: char| !ch.is_ascii_digit()).unwrap_or(f.len());
                    self.pos += len + 1 + flen;
                    Tok::Dec(
                        rest[..len + 1 + flen]
                            .parse()
                            .map_err(|_| syntax(self.src, start, "bad number"))?,
                    )
                }
                None => {
                    self.pos += len;
                    Tok::Int(
                        rest[..len]
                            .parse()
                            .map_err(|_| syntax(self.src, start, "integer too large"))?,
                    )
                }
            }
        } else if c.is_ascii_alphabetic() || c == b'_' {
            let len = ident_len(rest);
            self.pos += len;
            Tok::Ident(rest[..len].to_owned())
        } else if c == b'%' || c == b'$' {
            self.pos += 1;
            let name = match bytes.get(self.pos) {
                Some(b'`') => self.quoted(b'`')?,
                _ => {
                    let len = ident_len(&self.src[self.pos..]);
                    self.pos += len;
                    self.src[self.pos - len..self.pos].to_owned()
                }
            };
            match (c, name.as_str()) {
                (b'%', "") => {
                    return Err(syntax(self.src, start, "expected a constant name after %"));
                }
                (b'%', _) => Tok::Ext(name),
                (_, "this") => Tok::This,
                _ => {
                    return Err(syntax(
                        self.src,
                        start,
                        &format!("unsupported variable ${name}"),
                    ));
                }
            }
        } else if let Some(op) = OPS.iter().find(|op| rest.starts_with(**op)) {
            self.pos += op.len();
            Tok::Op(op)
        } else {
            return Err(syntax(
                self.src,
                start,
                &format!(
                    "unexpected character {:?}",
                    rest.chars().next().unwrap_or(' ')
                ),
            ));
        };
        Ok((tok, start))
    }

    /// A `'string'` or `` `identifier` `` with FHIRPath escapes; `pos` is at the opening quote.
    fn quoted(&mut self, quote: u8) -> Result<String> {
        let start = self.pos;
        let mut out = String::new();
        let mut chars = self.src[start + 1..].char_indices();
        while let Some((i, ch)) = chars.next() {
            match ch {
                '\\' => {
                    let (_, esc) = chars
                        .next()
                        .ok_or_else(|| syntax(self.src, start, "unterminated string"))?;
                    match esc {
                        'n' => out.push('\n'),
                        'r' => out.push('\r'),
                        't' => out.push('\t'),
                        'f' => out.push('\u{c}'),
                        'u' => {
                            let hex: String = chars.by_ref().take(4).map(|(_, h)| h).collect();
                            let code = u32::from_str_radix(&hex, 16).ok().and_then(char::from_u32);
                            out.push(
                                code.ok_or_else(|| syntax(self.src, start, "bad \\u escape"))?,
                            );
                        }
                        other => out.push(other),
                    }
                }
                ch if ch as u32 == quote as u32 => {
                    self.pos = start + 1 + i + 1;
                    return Ok(out);
                }
                ch => out.push(ch),
            }
        }
        Err(syntax(self.src, start, "unterminated string"))
    }
}

impl Tok {
    /// A back-quoted name is an identifier, not a string.
    fn with_quote(self, quote: u8) -> Tok {
        match (self, quote) {
            (Tok::Str(s), b'`') => Tok::Ident(s),
            (tok, _) => tok,
        }
    }
}

fn ident_len(s: &str) -> usize {
    s.find(|ch: char| !(ch.is_ascii_alphanumeric() || ch == '_'))
        .unwrap_or(s.len())
}

/// The longest expression text accepted (a view column is a line or two; 64 KiB is generous).
pub(crate) const MAX_LEN: usize = 64 * 1024;

/// The deepest expression tree accepted. Evaluation recurses once per level, on whatever stack
/// the caller has, so the bound is checked while parsing, before a deep tree exists.
pub(crate) const MAX_DEPTH: usize = 256;

/// Parses a whole expression.
pub(crate) fn parse(src: &str) -> Result<Expr> {
    if src.len() > MAX_LEN {
        let shown: String = src.chars().take(40).collect();
        return Err(Error::FhirPath {
            expr: format!("{shown}..."),
            pos: None,
            msg: format!("{} bytes, more than the {MAX_LEN} allowed", src.len()),
        });
    }
    let mut p = Parser {
        lex: Lexer { src, pos: 0 },
        tok: Tok::Eof,
        at: 0,
        open: 0,
    };
    p.bump()?;
    let (expr, _) = p.expr(0)?;
    match p.tok {
        Tok::Eof => Ok(expr),
        _ => Err(syntax(src, p.at, "unexpected token")),
    }
}

struct Parser<'s> {
    lex: Lexer<'s>,
    tok: Tok,
    at: usize,
    /// Calls of [`Parser::expr`] and [`Parser::unary`] under way: the parser's own recursion,
    /// bounded before it descends (a node's depth is only known on the way back).
    open: usize,
}

impl Parser<'_> {
    fn bump(&mut self) -> Result<Tok> {
        let (tok, at) = self.lex.next()?;
        self.at = at;
        Ok(std::mem::replace(&mut self.tok, tok))
    }

    fn expect(&mut self, op: &str) -> Result<()> {
        match self.tok {
            Tok::Op(o) if o == op => self.bump().map(drop),
            _ => Err(self.error(&format!("expected '{op}'"))),
        }
    }

    fn error(&self, msg: &str) -> Error {
        syntax(self.lex.src, self.at, msg)
    }

    fn binop(&self) -> Option<BinOp> {
        Some(match &self.tok {
            Tok::Op(op) => match *op {
                "=" => BinOp::Eq,
                "!=" => BinOp::Ne,
                "<" => BinOp::Lt,
                "<=" => BinOp::Le,
                ">" => BinOp::Gt,
                ">=" => BinOp::Ge,
                "|" => BinOp::Union,
                "+" => BinOp::Add,
                "-" => BinOp::Sub,
                "&" => BinOp::Concat,
                "*" => BinOp::Mul,
                "/" => BinOp::Div,
                _ => return None,
            },
            Tok::Ident(word) => match word.as_str() {
                "and" => BinOp::And,
                "or" => BinOp::Or,
                "xor" => BinOp::Xor,
                "implies" => BinOp::Implies,
                _ => return None,
            },
            _ => return None,
        })
    }

    /// The depth of a node over children of depth `below`, or an error past [`MAX_DEPTH`].
    fn deeper(&self, below: usize) -> Result<usize> {
        if below < MAX_DEPTH {
            Ok(below + 1)
        } else {
            Err(self.too_deep())
        }
    }

    fn too_deep(&self) -> Error {
        self.error(&format!("nested more than {MAX_DEPTH} levels deep"))
    }

    // Each parsing function returns the node with its depth, so that neither the parser's
    // recursion nor a left-deep chain (`1+1+...`, `a.b.c...`) can grow past MAX_DEPTH.

    /// Runs `parse` one recursion level down, or fails past [`MAX_DEPTH`] levels.
    fn descend<T>(&mut self, parse: impl FnOnce(&mut Self) -> Result<T>) -> Result<T> {
        self.open += 1;
        let result = match self.open {
            open if open > MAX_DEPTH => Err(self.too_deep()),
            _ => parse(self),
        };
        self.open -= 1;
        result
    }

    /// Precedence climbing over binary operators binding tighter than `min`.
    fn expr(&mut self, min: u8) -> Result<(Expr, usize)> {
        self.descend(|p| {
            let (mut lhs, mut depth) = p.unary()?;
            while let Some(op) = p.binop().filter(|op| op.precedence() > min) {
                p.bump()?;
                let (rhs, rhs_depth) = p.expr(op.precedence())?;
                depth = p.deeper(depth.max(rhs_depth))?;
                lhs = Expr::Binary(op, Box::new(lhs), Box::new(rhs));
            }
            Ok((lhs, depth))
        })
    }

    fn unary(&mut self) -> Result<(Expr, usize)> {
        self.descend(Self::unary_here)
    }

    fn unary_here(&mut self) -> Result<(Expr, usize)> {
        match self.tok {
            Tok::Op("-") => {
                self.bump()?;
                let (operand, depth) = self.unary()?;
                Ok(match operand {
                    Expr::Int(i) => (Expr::Int(-i), depth),
                    Expr::Dec(d) => (Expr::Dec(-d), depth),
                    e => (Expr::Neg(Box::new(e)), self.deeper(depth)?),
                })
            }
            Tok::Op("+") => {
                self.bump()?;
                self.unary()
            }
            _ => {
                let term = self.term()?;
                self.postfix(term)
            }
        }
    }

    fn term(&mut self) -> Result<(Expr, usize)> {
        let at = self.at;
        Ok(match self.bump()? {
            Tok::Int(i) => (Expr::Int(i), 1),
            Tok::Dec(d) => (Expr::Dec(d), 1),
            Tok::Str(s) => (Expr::Str(s.into()), 1),
            Tok::This => (Expr::This, 1),
            Tok::Ext(name) if name == "rowIndex" => (Expr::RowIndex, 1),
            Tok::Ext(name) => (Expr::Constant(name.into()), 1),
            Tok::Ident(name) if name == "true" || name == "false" => {
                (Expr::Bool(name == "true"), 1)
            }
            Tok::Ident(name) => self.member_or_call((Expr::This, 1), name, at)?,
            Tok::Op("(") => {
                let (inner, depth) = self.expr(0)?;
                self.expect(")")?;
                // Parentheses add no node, but the parser recursed for them.
                (inner, self.deeper(depth)?)
            }
            Tok::Op("{") => {
                self.expect("}")?;
                (Expr::Empty, 1)
            }
            _ => return Err(syntax(self.lex.src, at, "expected an expression")),
        })
    }

    fn postfix(&mut self, mut node: (Expr, usize)) -> Result<(Expr, usize)> {
        loop {
            match self.tok {
                Tok::Op(".") => {
                    self.bump()?;
                    let at = self.at;
                    match self.bump()? {
                        Tok::Ident(name) => node = self.member_or_call(node, name, at)?,
                        _ => return Err(syntax(self.lex.src, at, "expected a name after '.'")),
                    }
                }
                Tok::Op("[") => {
                    self.bump()?;
                    let (index, index_depth) = self.expr(0)?;
                    self.expect("]")?;
                    let (base, depth) = node;
                    node = (
                        Expr::Index(Box::new(base), Box::new(index)),
                        self.deeper(depth.max(index_depth))?,
                    );
                }
                _ => return Ok(node),
            }
        }
    }

    fn member_or_call(
        &mut self,
        (base, base_depth): (Expr, usize),
        name: String,
        at: usize,
    ) -> Result<(Expr, usize)> {
        if self.tok != Tok::Op("(") {
            let depth = self.deeper(base_depth)?;
            return Ok((Expr::Member(Box::new(base), name.into()), depth));
        }
        self.bump()?;
        let (mut args, mut depth) = (Vec::new(), base_depth);
        if self.tok != Tok::Op(")") {
            loop {
                let (arg, arg_depth) = self.expr(0)?;
                args.push(arg);
                depth = depth.max(arg_depth);
                if self.tok != Tok::Op(",") {
                    break;
                }
                self.bump()?;
            }
        }
        self.expect(")")?;
        let depth = self.deeper(depth)?;
        let func = Func::resolve(&name, &mut args, at, self.lex.src)?;
        Ok((Expr::Call(Box::new(base), func, args), depth))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(base: Expr, name: &str) -> Expr {
        Expr::Member(Box::new(base), name.into())
    }

    #[test]
    fn parses_paths_indexers_and_precedence() {
        let e = parse("name[0].family = 'x' and active").unwrap();
        let family = member(
            Expr::Index(Box::new(member(Expr::This, "name")), Box::new(Expr::Int(0))),
            "family",
        );
        let eq = Expr::Binary(BinOp::Eq, Box::new(family), Box::new(Expr::Str("x".into())));
        assert_eq!(
            e,
            Expr::Binary(
                BinOp::And,
                Box::new(eq),
                Box::new(member(Expr::This, "active"))
            )
        );
        let e = parse("1 + 2 * 3").unwrap();
        let mul = Expr::Binary(BinOp::Mul, Box::new(Expr::Int(2)), Box::new(Expr::Int(3)));
        assert_eq!(
            e,
            Expr::Binary(BinOp::Add, Box::new(Expr::Int(1)), Box::new(mul))
        );
    }

    #[test]
    fn resolves_type_arguments() {
        let e = parse("value.ofType(Quantity).value").unwrap();
        let call = Expr::Call(
            Box::new(member(Expr::This, "value")),
            Func::OfType("Quantity".into()),
            vec![],
        );
        assert_eq!(e, member(call, "value"));
        assert!(matches!(
            parse("getReferenceKey()").unwrap(),
            Expr::Call(_, Func::ReferenceKey(None), _)
        ));
    }

    #[test]
    fn literals_and_escapes() {
        assert_eq!(parse(r"'it\'s'").unwrap(), Expr::Str("it's".into()));
        assert_eq!(parse("-1.50").unwrap(), Expr::Dec(-1.5));
        assert_eq!(parse("%rowIndex").unwrap(), Expr::RowIndex);
        assert_eq!(parse("%`a-b`").unwrap(), Expr::Constant("a-b".into()));
        assert_eq!(parse("`div`").unwrap(), member(Expr::This, "div"));
    }

    #[test]
    fn errors_carry_the_position() {
        let msg = |src: &str| parse(src).unwrap_err().to_string();
        assert!(msg("@@").contains("position 0"), "{}", msg("@@"));
        assert!(
            msg("name.foo()").contains("position 5: unknown function foo()"),
            "{}",
            msg("name.foo()")
        );
        assert!(
            msg("name.where(").contains("position 11"),
            "{}",
            msg("name.where(")
        );
        assert!(msg("'abc").contains("unterminated string"));
        assert!(msg("a b").contains("position 2: unexpected token"));
    }

    #[test]
    fn depth_and_length_are_bounded_before_the_tree_exists() {
        let chain = |n: usize, op: &str| vec!["1"; n].join(op);
        assert!(parse(&chain(MAX_DEPTH, " + ")).is_ok());
        for deep in [
            chain(MAX_DEPTH + 1, "+"),
            chain(MAX_DEPTH + 1, " and "),
            vec!["a"; MAX_DEPTH + 1].join("."),
            format!(
                "{}1{}",
                "(".repeat(MAX_DEPTH + 1),
                ")".repeat(MAX_DEPTH + 1)
            ),
            format!("{}x", "-".repeat(MAX_DEPTH + 1)),
            format!("{}1{}", "a.where(".repeat(MAX_DEPTH), ")".repeat(MAX_DEPTH)),
        ] {
            let err = parse(&deep).unwrap_err().to_string();
            assert!(err.contains("nested more than 256 levels"), "{err}");
        }
        // Opening without closing fails on the way down, before the parser's stack is deep.
        for open in ["(", "-", "a.where(", "a["] {
            let err = parse(&open.repeat(MAX_LEN / open.len()))
                .unwrap_err()
                .to_string();
            assert!(err.contains("nested more than"), "{open}: {err}");
        }
        // 100,000 terms (the reported abort) fail on the way, long before the text's end.
        let err = parse(&chain(MAX_LEN / 2 - 1, "+")).unwrap_err().to_string();
        assert!(err.contains("nested more than"), "{err}");
        let err = parse(&chain(100_000, "+")).unwrap_err().to_string();
        assert!(
            err.contains("199999 bytes, more than the 65536 allowed"),
            "{err}"
        );
        assert!(err.len() < 200, "the whole text is not echoed: {err}");
    }
}
