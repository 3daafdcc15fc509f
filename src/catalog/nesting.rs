//! The nesting bound of SQL statements, checked on the tokens before anything parses or plans.
//!
//! A left-deep chain (`1+1+...`, `a OR b OR ...`, `SELECT ... UNION ALL SELECT ...`, a join of
//! many tables) parses without recursion but becomes a tree as deep as it is long, and
//! DataFusion's planner, optimizer and expression evaluation recurse over that tree. Past a few
//! thousand levels that overflows a thread's stack, which aborts the whole process: every user
//! of a server, not just the statement's. So the depth a statement would reach is estimated
//! from its tokens, iteratively, and a statement beyond [`MAX_STATEMENT_DEPTH`] is refused with
//! a planning error (Flight: `INVALID_ARGUMENT`). Statements are then planned and run on
//! threads whose stack holds that depth (see [`super::QueryRuntime`]).

use datafusion::error::{DataFusionError, Result};
use datafusion::sql::sqlparser::dialect::Dialect;
use datafusion::sql::sqlparser::keywords::Keyword;
use datafusion::sql::sqlparser::tokenizer::{Token, Tokenizer};

/// The deepest statement accepted, as estimated from its tokens: far beyond what people write and
/// beyond the chains BI tools generate (a 2,000-term `OR`, a 3,000-arm `UNION ALL`), well within
/// what [`super::QueryRuntime`]'s threads can plan and run.
pub const MAX_STATEMENT_DEPTH: usize = 5_000;

/// One level of brackets (or of `CASE ... END`) open at this point of the statement.
#[derive(Debug, Default)]
struct Level {
    /// Set operations and joins so far: each nests everything before it.
    chain: usize,
    /// Operators of the expression under way: each nests the operators before it.
    operators: usize,
    /// Whether this level is in a `FROM` list, where commas are joins.
    from: bool,
}

/// Refuses `sql` when it would nest deeper than `max` levels (see the [module docs](self)).
/// The estimate errs high: every binary operator of an expression, every set operation or join
/// and every bracket counts a level, while commas and clause keywords start a new expression.
/// Text that does not tokenize is left to the parser, which reports it better.
pub(crate) fn check(sql: &str, dialect: &dyn Dialect, max: usize) -> Result<()> {
    let Ok(tokens) = Tokenizer::new(dialect, sql).tokenize() else {
        return Ok(());
    };
    let mut levels = vec![Level::default()];
    // The depth of everything open, kept as a sum so each token costs O(1).
    let (mut depth, mut deepest) = (0usize, 0usize);
    for token in &tokens {
        let top = levels.len() - 1;
        match token {
            Token::LParen | Token::LBracket | Token::LBrace => {
                levels.push(Level::default());
                depth += 1;
            }
            Token::Word(w) if w.keyword == Keyword::CASE => {
                levels.push(Level::default());
                depth += 1;
            }
            Token::RParen | Token::RBracket | Token::RBrace if top > 0 => {
                let level = levels.pop().unwrap_or_default();
                depth -= 1 + level.chain + level.operators;
            }
            Token::Word(w) if w.keyword == Keyword::END && top > 0 => {
                let level = levels.pop().unwrap_or_default();
                depth -= 1 + level.chain + level.operators;
            }
            Token::Comma if levels[top].from => {
                depth = depth - levels[top].operators + 1;
                levels[top].operators = 0;
                levels[top].chain += 1;
            }
            Token::Comma => {
                depth -= levels[top].operators;
                levels[top].operators = 0;
            }
            Token::Word(w) => {
                use Keyword::*;
                let level = &mut levels[top];
                match w.keyword {
                    UNION | EXCEPT | INTERSECT | MINUS | JOIN => {
                        depth += 1;
                        level.chain += 1;
                    }
                    AND | OR | XOR | LIKE | ILIKE | SIMILAR | IS | IN | BETWEEN => {
                        depth += 1;
                        level.operators += 1;
                    }
                    SELECT | FROM | WHERE | GROUP | HAVING | ORDER | LIMIT | OFFSET | ON
                    | USING | WHEN | THEN | ELSE | QUALIFY | WINDOW | PARTITION | VALUES => {
                        depth -= level.operators;
                        level.operators = 0;
                        level.from = w.keyword == FROM;
                    }
                    _ => {}
                }
            }
            token if is_operator(token) => {
                depth += 1;
                levels[top].operators += 1;
            }
            _ => {}
        }
        deepest = deepest.max(depth);
        if deepest > max {
            return Err(DataFusionError::Plan(format!(
                "statement nested more than {max} levels deep (long chains of operators, \
                 UNION or JOIN count a level each): split it, or use IN (...) for long OR lists"
            )));
        }
    }
    Ok(())
}

/// Whether `token` is an operator between two operands (or a cast, `x::int::text`), each of
/// which nests what comes before it.
fn is_operator(token: &Token) -> bool {
    use Token::*;
    matches!(
        token,
        DoubleEq
            | Eq
            | Neq
            | Lt
            | Gt
            | LtEq
            | GtEq
            | Spaceship
            | Plus
            | Minus
            | Mul
            | Div
            | DuckIntDiv
            | Mod
            | StringConcat
            | DoubleColon
            | Ampersand
            | Pipe
            | Caret
            | ShiftLeft
            | ShiftRight
            | Tilde
            | TildeAsterisk
            | ExclamationMarkTilde
            | ExclamationMarkTildeAsterisk
            | DoubleTilde
            | DoubleTildeAsterisk
            | ExclamationMarkDoubleTilde
            | ExclamationMarkDoubleTildeAsterisk
            | Arrow
            | LongArrow
            | HashArrow
            | HashLongArrow
            | AtArrow
            | ArrowAt
            | CustomBinaryOperator(_)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::sql::sqlparser::dialect::GenericDialect;

    fn depth_ok(sql: &str, max: usize) -> bool {
        check(sql, &GenericDialect {}, max).is_ok()
    }

    fn chain(n: usize, term: &str, op: &str) -> String {
        vec![term; n].join(op)
    }

    #[test]
    fn chains_count_a_level_per_link() {
        let sum = format!("SELECT {}", chain(100, "1", " + "));
        assert!(depth_ok(&sum, 100));
        assert!(!depth_ok(&sum, 98));
        let or = format!("SELECT * FROM t WHERE {}", chain(100, "a = 1", " OR "));
        assert!(!depth_ok(&or, 150));
        assert!(depth_ok(&or, 200));
        let union = chain(100, "SELECT 1", " UNION ALL ");
        assert!(depth_ok(&union, 100));
        assert!(!depth_ok(&union, 98));
        let joins = format!("SELECT * FROM t0{}", " JOIN t ON t.a = t0.a".repeat(100));
        assert!(!depth_ok(&joins, 99));
        let commas = format!("SELECT * FROM {}", chain(100, "t", ", "));
        assert!(!depth_ok(&commas, 98));
        let cases = format!(
            "SELECT {}1{}",
            "CASE WHEN a THEN ".repeat(100),
            " END".repeat(100)
        );
        assert!(!depth_ok(&cases, 99));
    }

    #[test]
    fn flat_lists_do_not_nest() {
        let columns = format!("SELECT {} FROM t", chain(10_000, "a + b", ", "));
        assert!(depth_ok(&columns, 10));
        let in_list = format!("SELECT * FROM t WHERE a IN ({})", chain(10_000, "1", ", "));
        assert!(depth_ok(&in_list, 10));
        let case = format!(
            "SELECT CASE {} END FROM t",
            chain(10_000, "WHEN a = 1 THEN b + 1", " ")
        );
        assert!(depth_ok(&case, 10));
        let values = format!("VALUES {}", chain(10_000, "(1, 2 + 3)", ", "));
        assert!(depth_ok(&values, 10));
        let clauses = "SELECT a + b FROM t WHERE c = 1 AND d = 2 GROUP BY a + b ORDER BY 1";
        assert!(depth_ok(clauses, 4));
    }

    #[test]
    fn closing_brackets_give_their_levels_back() {
        let nested = format!("SELECT {} FROM t", chain(1_000, "(a + b + c)", ", "));
        assert!(depth_ok(&nested, 4));
        // Unbalanced text is the parser's to report.
        assert!(depth_ok("SELECT ))) + 1", 10));
        assert!(depth_ok("SELECT 'unterminated", 10));
    }

    #[test]
    fn the_error_says_what_to_do() {
        let err = check(&chain(10, "SELECT 1", " UNION "), &GenericDialect {}, 5)
            .unwrap_err()
            .to_string();
        assert!(err.contains("nested more than 5 levels deep"), "{err}");
        assert!(err.contains("UNION"), "{err}");
    }
}
