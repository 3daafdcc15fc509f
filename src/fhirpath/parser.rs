//! Lexer and precedence-climbing parser: expression text -> [`Expr`].

use super::value::{CalendarUnit, Quantity, Temporal};
use crate::{Error, Result};

/// A compiled expression node.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Expr {
    /// The focus: `$this`, or the input of a path that starts with a member name.
    This,
    /// `$index`, the position of the item in the function iterating.
    IndexVar,
    /// `$total`, the accumulator of `aggregate`.
    Total,
    /// An empty collection, `{}`.
    Empty,
    Bool(bool),
    Int(i64),
    Dec(f64),
    Str(Box<str>),
    /// `@2014-01-25`, `@2014-01-25T14:30`, `@T14:30`.
    Temporal(Temporal),
    /// `4 'mg'`, `1 year`.
    Quantity(Box<Quantity>),
    /// `%name`: a variable of the environment or an external constant.
    Env(Box<str>),
    /// `base.name`; a leading upper-case name may also be the resource type (`Patient.name`).
    Member(Box<Expr>, Box<str>),
    /// `base[index]`.
    Index(Box<Expr>, Box<Expr>),
    /// `base.f(args)`.
    Call(Box<Expr>, Func, Vec<Expr>),
    Binary(BinOp, Box<Expr>, Box<Expr>),
    Neg(Box<Expr>),
    /// `base is Type`.
    Is(Box<Expr>, Box<str>),
    /// `base as Type`.
    As(Box<Expr>, Box<str>),
    /// A type specifier given to `ofType`, `is`, `as`: `Quantity`, `FHIR.code`, `System.String`.
    TypeName(Box<str>),
}

/// Binary operators, lowest precedence first in [`BinOp::precedence`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BinOp {
    Implies,
    Or,
    Xor,
    And,
    In,
    Contains,
    Eq,
    Ne,
    Equiv,
    NotEquiv,
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
    IntDiv,
    Mod,
}

/// The precedence of `is` and `as`: between `|` and `+`.
const TYPE_OP: u8 = 8;

impl BinOp {
    fn precedence(self) -> u8 {
        match self {
            BinOp::Implies => 1,
            BinOp::Or | BinOp::Xor => 2,
            BinOp::And => 3,
            BinOp::In | BinOp::Contains => 4,
            BinOp::Eq | BinOp::Ne | BinOp::Equiv | BinOp::NotEquiv => 5,
            BinOp::Lt | BinOp::Le | BinOp::Gt | BinOp::Ge => 6,
            BinOp::Union => 7,
            BinOp::Add | BinOp::Sub | BinOp::Concat => 9,
            BinOp::Mul | BinOp::Div | BinOp::IntDiv | BinOp::Mod => 10,
        }
    }
}

/// Declares the function library: the name, the variant and the number of arguments.
macro_rules! functions {
    ($($name:literal => $variant:ident($min:literal, $max:literal),)*) => {
        /// The functions of the library (resolved at compile time; arguments are checked then).
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub(crate) enum Func {
            $($variant,)*
        }

        impl Func {
            /// The function named `name` with its minimum and maximum argument counts.
            fn lookup(name: &str) -> Option<(Func, usize, usize)> {
                Some(match name {
                    $($name => (Func::$variant, $min, $max),)*
                    _ => return None,
                })
            }

            /// The function's name, for errors.
            pub(crate) fn name(self) -> &'static str {
                match self {
                    $(Func::$variant => $name,)*
                }
            }
        }
    };
}

functions! {
    "empty" => Empty(0, 0),
    "exists" => Exists(0, 1),
    "all" => All(1, 1),
    "allTrue" => AllTrue(0, 0),
    "anyTrue" => AnyTrue(0, 0),
    "allFalse" => AllFalse(0, 0),
    "anyFalse" => AnyFalse(0, 0),
    "subsetOf" => SubsetOf(1, 1),
    "supersetOf" => SupersetOf(1, 1),
    "count" => Count(0, 0),
    "distinct" => Distinct(0, 0),
    "isDistinct" => IsDistinct(0, 0),
    "where" => Where(1, 1),
    "select" => Select(1, 1),
    "repeat" => Repeat(1, 1),
    "ofType" => OfType(1, 1),
    "single" => Single(0, 0),
    "first" => First(0, 0),
    "last" => Last(0, 0),
    "tail" => Tail(0, 0),
    "skip" => Skip(1, 1),
    "take" => Take(1, 1),
    "intersect" => Intersect(1, 1),
    "exclude" => Exclude(1, 1),
    "union" => Union(1, 1),
    "combine" => Combine(1, 1),
    "iif" => Iif(2, 3),
    "toBoolean" => ToBoolean(0, 0),
    "convertsToBoolean" => ConvertsToBoolean(0, 0),
    "toInteger" => ToInteger(0, 0),
    "convertsToInteger" => ConvertsToInteger(0, 0),
    "toDecimal" => ToDecimal(0, 0),
    "convertsToDecimal" => ConvertsToDecimal(0, 0),
    "toString" => ToStringFn(0, 0),
    "convertsToString" => ConvertsToString(0, 0),
    "toDate" => ToDate(0, 0),
    "convertsToDate" => ConvertsToDate(0, 0),
    "toDateTime" => ToDateTime(0, 0),
    "convertsToDateTime" => ConvertsToDateTime(0, 0),
    "toTime" => ToTime(0, 0),
    "convertsToTime" => ConvertsToTime(0, 0),
    "toQuantity" => ToQuantity(0, 1),
    "convertsToQuantity" => ConvertsToQuantity(0, 1),
    "indexOf" => IndexOf(1, 1),
    "lastIndexOf" => LastIndexOf(1, 1),
    "substring" => Substring(1, 2),
    "startsWith" => StartsWith(1, 1),
    "endsWith" => EndsWith(1, 1),
    "contains" => ContainsStr(1, 1),
    "upper" => Upper(0, 0),
    "lower" => Lower(0, 0),
    "replace" => Replace(2, 2),
    "matches" => Matches(1, 1),
    "matchesFull" => MatchesFull(1, 1),
    "replaceMatches" => ReplaceMatches(2, 2),
    "length" => Length(0, 0),
    "toChars" => ToChars(0, 0),
    "trim" => Trim(0, 0),
    "split" => Split(1, 1),
    "join" => Join(0, 1),
    "encode" => Encode(1, 1),
    "decode" => Decode(1, 1),
    "escape" => Escape(1, 1),
    "unescape" => Unescape(1, 1),
    "abs" => Abs(0, 0),
    "ceiling" => Ceiling(0, 0),
    "exp" => Exp(0, 0),
    "floor" => Floor(0, 0),
    "ln" => Ln(0, 0),
    "log" => Log(1, 1),
    "power" => Power(1, 1),
    "round" => Round(0, 1),
    "sqrt" => Sqrt(0, 0),
    "truncate" => Truncate(0, 0),
    "children" => Children(0, 0),
    "descendants" => Descendants(0, 0),
    "trace" => Trace(1, 2),
    "now" => Now(0, 0),
    "timeOfDay" => TimeOfDay(0, 0),
    "today" => Today(0, 0),
    "not" => Not(0, 0),
    "aggregate" => Aggregate(1, 2),
    "defineVariable" => DefineVariable(1, 2),
    "is" => IsFn(1, 1),
    "type" => TypeFn(0, 0),
    "as" => AsFn(1, 1),
    "sort" => Sort(0, 8),
    "extension" => Extension(1, 1),
    "hasValue" => HasValue(0, 0),
    "getValue" => GetValue(0, 0),
    "conformsTo" => ConformsTo(1, 1),
    "comparable" => Comparable(1, 1),
    "precision" => Precision(0, 0),
    "lowBoundary" => LowBoundary(0, 1),
    "highBoundary" => HighBoundary(0, 1),
    "getResourceKey" => ResourceKey(0, 0),
    "getReferenceKey" => ReferenceKey(0, 1),
}

impl Func {
    /// Resolves a function name and checks its arguments; `pos` is for errors. A type argument
    /// (`ofType(Quantity)`) becomes an [`Expr::TypeName`].
    fn resolve(name: &str, args: &mut [Expr], pos: usize, src: &str) -> Result<Func> {
        let Some((func, min, max)) = Func::lookup(name) else {
            return Err(syntax(src, pos, &format!("unknown function {name}()")));
        };
        if !(min..=max).contains(&args.len()) {
            let takes = match (min, max) {
                (a, b) if a == b => format!("{a}"),
                (a, b) => format!("{a} to {b}"),
            };
            let msg = format!("{name}() takes {takes} arguments, got {}", args.len());
            return Err(syntax(src, pos, &msg));
        }
        if matches!(
            func,
            Func::OfType | Func::IsFn | Func::AsFn | Func::ReferenceKey
        ) && let Some(arg) = args.first_mut()
        {
            let ty = type_name(arg)
                .ok_or_else(|| syntax(src, pos, &format!("{name}() expects a type name")))?;
            *arg = Expr::TypeName(ty.into());
        }
        Ok(func)
    }
}

/// The name of a type specifier argument (`Quantity`, `FHIR.Quantity`).
fn type_name(arg: &Expr) -> Option<String> {
    match arg {
        Expr::Member(base, name) => match &**base {
            Expr::This => Some(name.to_string()),
            Expr::Member(b, ns) if matches!(**b, Expr::This) => Some(format!("{ns}.{name}")),
            _ => None,
        },
        Expr::TypeName(name) => Some(name.to_string()),
        _ => None,
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
    Temporal(Temporal),
    Ext(String),
    This,
    IndexVar,
    Total,
    Op(&'static str),
    Eof,
}

struct Lexer<'s> {
    src: &'s str,
    pos: usize,
}

const OPS: [&str; 23] = [
    "<=", ">=", "!=", "!~", "(", ")", "[", "]", "{", "}", ".", ",", "=", "<", ">", "+", "-", "*",
    "/", "|", "&", "~", "@",
];

impl Lexer<'_> {
    /// The next token and its start offset.
    fn next(&mut self) -> Result<(Tok, usize)> {
        let bytes = self.src.as_bytes();
        loop {
            while self.pos < bytes.len() && bytes[self.pos].is_ascii_whitespace() {
                self.pos += 1;
            }
            let rest = &self.src[self.pos..];
            if rest.starts_with("//") {
                self.pos += rest.find('\n').unwrap_or(rest.len());
            } else if let Some(comment) = rest.strip_prefix("/*") {
                let end = comment
                    .find("*/")
                    .ok_or_else(|| syntax(self.src, self.pos, "unterminated comment"))?;
                self.pos += end + 4;
            } else {
                break;
            }
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
                (_, "index") => Tok::IndexVar,
                (_, "total") => Tok::Total,
                _ => {
                    return Err(syntax(
                        self.src,
                        start,
                        &format!("unsupported variable ${name}"),
                    ));
                }
            }
        } else if c == b'@' {
            // A date, dateTime or time literal runs to the first character none of them holds.
            // A `.` belongs to it only before a digit (`@2014.is(Date)` calls a function).
            let b = rest.as_bytes();
            let mut len = 1;
            while len < b.len()
                && (b[len].is_ascii_digit()
                    || b"-:TZ+".contains(&b[len])
                    || (b[len] == b'.' && b.get(len + 1).is_some_and(u8::is_ascii_digit)))
            {
                len += 1;
            }
            self.pos += len;
            let text = &rest[1..len];
            let parsed = match text.strip_prefix('T') {
                Some(time) => Temporal::parse(time, true),
                // `@2015T` is a DateTime of year precision.
                None => match text.strip_suffix('T') {
                    Some(date) => Temporal::parse(date, false)
                        .map(|t| t.with_kind(super::value::TemporalKind::DateTime)),
                    None => Temporal::parse(text, false),
                },
            };
            Tok::Temporal(parsed.ok_or_else(|| {
                syntax(
                    self.src,
                    start,
                    &format!("invalid date/time literal @{text}"),
                )
            })?)
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
                "~" => BinOp::Equiv,
                "!~" => BinOp::NotEquiv,
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
                "in" => BinOp::In,
                "contains" => BinOp::Contains,
                "div" => BinOp::IntDiv,
                "mod" => BinOp::Mod,
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
            loop {
                if let Tok::Ident(word) = &p.tok
                    && (word == "is" || word == "as")
                    && TYPE_OP > min
                {
                    let is = word == "is";
                    p.bump()?;
                    let ty = p.type_specifier()?;
                    depth = p.deeper(depth)?;
                    lhs = match is {
                        true => Expr::Is(Box::new(lhs), ty.into()),
                        false => Expr::As(Box::new(lhs), ty.into()),
                    };
                    continue;
                }
                let Some(op) = p.binop().filter(|op| op.precedence() > min) else {
                    break;
                };
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

    /// `Name` or `Namespace.Name` after `is` / `as`.
    fn type_specifier(&mut self) -> Result<String> {
        let at = self.at;
        let Tok::Ident(mut name) = self.bump()? else {
            return Err(syntax(self.lex.src, at, "expected a type name"));
        };
        if self.tok == Tok::Op(".") {
            self.bump()?;
            match self.bump()? {
                Tok::Ident(inner) => name = format!("{name}.{inner}"),
                _ => return Err(syntax(self.lex.src, at, "expected a type name")),
            }
        }
        Ok(name)
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
            Tok::Int(i) => self.quantity(i as f64, Expr::Int(i))?,
            Tok::Dec(d) => self.quantity(d, Expr::Dec(d))?,
            Tok::Str(s) => (Expr::Str(s.into()), 1),
            Tok::Temporal(t) => (Expr::Temporal(t), 1),
            Tok::This => (Expr::This, 1),
            Tok::IndexVar => (Expr::IndexVar, 1),
            Tok::Total => (Expr::Total, 1),
            Tok::Ext(name) => (Expr::Env(name.into()), 1),
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

    /// A number, or a quantity when a unit follows (`4 'mg'`, `1 year`).
    fn quantity(&mut self, value: f64, number: Expr) -> Result<(Expr, usize)> {
        let unit = match &self.tok {
            Tok::Str(unit) => unit.clone(),
            Tok::Ident(word) if CalendarUnit::from_keyword(word).is_some() => word.clone(),
            _ => return Ok((number, 1)),
        };
        self.bump()?;
        Ok((Expr::Quantity(Box::new(Quantity::new(value, &unit))), 1))
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
            Func::OfType,
            vec![Expr::TypeName("Quantity".into())],
        );
        assert_eq!(e, member(call, "value"));
        assert!(matches!(
            parse("getReferenceKey()").unwrap(),
            Expr::Call(_, Func::ReferenceKey, args) if args.is_empty()
        ));
    }

    #[test]
    fn literals_and_escapes() {
        assert_eq!(parse(r"'it\'s'").unwrap(), Expr::Str("it's".into()));
        assert_eq!(parse("-1.50").unwrap(), Expr::Dec(-1.5));
        assert_eq!(parse("%rowIndex").unwrap(), Expr::Env("rowIndex".into()));
        assert_eq!(parse("%`a-b`").unwrap(), Expr::Env("a-b".into()));
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
