//! `SELECT *` over one table, planned without a projection.
//!
//! DataFusion 55's SQL planner spends time quadratic in the length of a select list: its `UNNEST`
//! rewrite compares each expression's display name with those of all the expressions before it,
//! and the projection's schema and the optimizer look each column up by a linear scan. Real FHIR
//! types are wide (Synthea's Provenance flattens to 6,249 columns), and `SELECT *` on them took
//! seconds to plan, `EXPLAIN` alone as long. Yet `SELECT *` over one table needs no projection: the
//! table's columns, in order, are its output. [`plan`] therefore has DataFusion plan the statement
//! with a select list of one constant instead of `*`, so that `FROM`, `WHERE`, `LIMIT`, `OFFSET`
//! and `EXPLAIN` keep DataFusion's meaning and errors, and takes that projection away. Anything
//! that reads the select list (`DISTINCT`, `GROUP BY`, `ORDER BY`, joins, other items) is left to
//! DataFusion as written. The upstream fix and its reproducer are in `docs/upstream/`.

use std::sync::Arc;

use datafusion::error::Result as DfResult;
use datafusion::execution::context::SessionState;
use datafusion::logical_expr::{Expr, LogicalPlan, PlanType, Projection, ToStringifiedPlan};
use datafusion::sql::parser::Statement;
use datafusion::sql::sqlparser::ast::{
    Expr as SqlExpr, GroupByExpr, LimitClause, Query, Select, SelectItem, SetExpr,
    Statement as SqlStatement, TableFactor, Value, WildcardAdditionalOptions,
};

/// The plan of `statement` when it is a `SELECT *` over one table (maybe under `EXPLAIN`),
/// planned as the module docs say; `None` for every other statement.
pub(super) async fn plan(
    state: &SessionState,
    statement: &Statement,
) -> DfResult<Option<LogicalPlan>> {
    let mut narrow = statement.clone();
    let query = match &mut narrow {
        Statement::Explain(explain) => match explain.statement.as_mut() {
            Statement::Statement(s) => s.as_mut(),
            _ => return Ok(None),
        },
        Statement::Statement(s) => s.as_mut(),
        _ => return Ok(None),
    };
    let SqlStatement::Query(query) = query else {
        return Ok(None);
    };
    let Some(select) = star_over_one_table(query) else {
        return Ok(None);
    };
    select.projection = vec![SelectItem::UnnamedExpr(SqlExpr::value(Value::Number(
        "1".into(),
        false,
    )))];
    Ok(match state.statement_to_plan(narrow).await? {
        LogicalPlan::Explain(mut explain) => without_constant(&explain.plan).map(|plan| {
            explain.stringified_plans = vec![plan.to_stringified(PlanType::InitialLogicalPlan)];
            explain.plan = Arc::new(plan);
            LogicalPlan::Explain(explain)
        }),
        LogicalPlan::Analyze(mut analyze) => without_constant(&analyze.input).map(|plan| {
            analyze.input = Arc::new(plan);
            LogicalPlan::Analyze(analyze)
        }),
        plan => without_constant(&plan),
    })
}

/// The `SELECT` of `query` when it is `SELECT * FROM table [WHERE ...]` with at most a `LIMIT`
/// and an `OFFSET` around it: nothing that reads the select list.
fn star_over_one_table(query: &mut Query) -> Option<&mut Select> {
    let plain_limit = match &query.limit_clause {
        None | Some(LimitClause::OffsetCommaLimit { .. }) => true,
        Some(LimitClause::LimitOffset { limit_by, .. }) => limit_by.is_empty(),
    };
    let plain_query = query.with.is_none()
        && query.order_by.is_none()
        && plain_limit
        && query.fetch.is_none()
        && query.locks.is_empty()
        && query.for_clause.is_none()
        && query.settings.is_none()
        && query.format_clause.is_none()
        && query.pipe_operators.is_empty();
    let SetExpr::Select(select) = query.body.as_mut() else {
        return None;
    };
    let star = matches!(
        select.projection.as_slice(),
        [SelectItem::Wildcard(options)] if *options == WildcardAdditionalOptions::default()
    );
    let one_table = matches!(
        select.from.as_slice(),
        [from] if from.joins.is_empty() && matches!(from.relation, TableFactor::Table { args: None, .. })
    );
    let no_grouping =
        matches!(&select.group_by, GroupByExpr::Expressions(e, m) if e.is_empty() && m.is_empty());
    let plain_select = select.distinct.is_none()
        && select.select_modifiers.is_none()
        && select.top.is_none()
        && select.exclude.is_none()
        && select.into.is_none()
        && select.lateral_views.is_empty()
        && select.prewhere.is_none()
        && select.connect_by.is_empty()
        && no_grouping
        && select.cluster_by.is_empty()
        && select.distribute_by.is_empty()
        && select.sort_by.is_empty()
        && select.having.is_none()
        && select.named_window.is_empty()
        && select.qualify.is_none()
        && select.value_table_mode.is_none();
    (plain_query && star && one_table && plain_select).then_some(select.as_mut())
}

/// `plan` (`Projection: 1` over the table, maybe under a `Limit`) without the projection; `None`
/// for a table without columns (DataFusion's own `*` decides what that means).
fn without_constant(plan: &LogicalPlan) -> Option<LogicalPlan> {
    let input = |plan: &LogicalPlan| match plan {
        LogicalPlan::Projection(Projection { expr, input, .. })
            if matches!(expr.as_slice(), [Expr::Literal(..)])
                && !input.schema().fields().is_empty() =>
        {
            Some(Arc::clone(input))
        }
        _ => None,
    };
    match plan {
        LogicalPlan::Limit(limit) => {
            let mut limit = limit.clone();
            limit.input = input(&limit.input)?;
            Some(LogicalPlan::Limit(limit))
        }
        plan => input(plan).map(Arc::unwrap_or_clone),
    }
}
