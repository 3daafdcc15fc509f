//! SQL statements: read-only planning, `$1`/`?` placeholders, bound parameters, and the
//! self-contained handle that carries them between calls.

use std::io::Cursor;
use std::ops::ControlFlow;
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::error::ArrowError;
use arrow::ipc::reader::StreamReader;
use arrow::ipc::writer::StreamWriter;
use datafusion::common::{ParamValues, ScalarValue};
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::logical_expr::LogicalPlan;
use datafusion::prelude::{DataFrame, SessionContext};
use datafusion::sql::parser::Statement as DfStatement;
use datafusion::sql::sqlparser::ast::{
    Expr, Query, SetExpr, Statement as SqlStatement, Value, visit_expressions,
    visit_expressions_mut,
};
use prost::Message;

use super::proto::StatementHandle;
use crate::catalog::{self, Freshness};
use crate::{Error, Result};

impl StatementHandle {
    /// A handle for `sql` with nothing bound.
    pub(crate) fn new(sql: impl Into<String>) -> Self {
        Self {
            sql: sql.into(),
            parameters: Default::default(),
        }
    }

    /// Decodes a handle or ticket that this server handed out.
    pub(crate) fn decode_handle(bytes: &[u8]) -> Result<Self> {
        Self::decode(bytes)
            .map_err(|e| Error::invalid_request_with("not a statement handle from this server", e))
    }

    /// This handle with `batch` (one row) bound as the parameter values; an empty batch unbinds.
    pub(crate) fn bind(self, batch: Option<RecordBatch>) -> Result<Self> {
        let parameters = match batch {
            None => Vec::new(),
            Some(b) if b.num_rows() == 0 => Vec::new(),
            Some(b) if b.num_rows() > 1 => {
                return Err(Error::invalid_request(format!(
                    "{} parameter rows bound; a query takes one row of parameters",
                    b.num_rows()
                )));
            }
            Some(b) => {
                ipc_bytes(&b).map_err(|e| Error::invalid_request_with("encoding parameters", e))?
            }
        };
        Ok(Self { parameters, ..self })
    }

    /// The bound values, in placeholder order (`$1` first).
    fn parameter_values(&self) -> Result<Option<Vec<ScalarValue>>> {
        if self.parameters.is_empty() {
            return Ok(None);
        }
        let invalid = |e: ArrowError| Error::invalid_request_with("bound parameters", e);
        let mut reader =
            StreamReader::try_new(Cursor::new(&self.parameters[..]), None).map_err(invalid)?;
        let batch = reader
            .next()
            .transpose()
            .map_err(invalid)?
            .ok_or_else(|| Error::invalid_request("bound parameters: no row"))?;
        batch
            .columns()
            .iter()
            .map(|column| {
                ScalarValue::try_from_array(column, 0)
                    .map_err(|e| Error::invalid_request_with("bound parameters", e))
            })
            .collect::<Result<_>>()
            .map(Some)
    }

    /// Plans the statement with its bound values substituted (exporting what it reads, see
    /// [`plan_sql`]).
    pub(crate) async fn plan(
        &self,
        ctx: &SessionContext,
        freshness: Option<Freshness>,
    ) -> DfResult<DataFrame> {
        let df = plan_sql(ctx, &self.sql, freshness).await?;
        match self
            .parameter_values()
            .map_err(|e| DataFusionError::External(Box::new(e)))?
        {
            Some(values) => df.with_param_values(ParamValues::from(values)),
            None => Ok(df),
        }
    }

    /// Plans the statement for DoGet, to be run with `execute_stream`: it reads the current
    /// snapshots (freshness `never`), normally those its GetFlightInfo brought up to date: no
    /// second export with freshness `always`. A snapshot committed in between (another query, a
    /// refresh) is read instead, and its schema may differ from the FlightInfo's. A ticket never
    /// planned exports what has no snapshot.
    pub(crate) async fn plan_run(&self, ctx: &SessionContext) -> DfResult<DataFrame> {
        self.plan(ctx, Some(Freshness::Never)).await
    }
}

fn ipc_bytes(batch: &RecordBatch) -> std::result::Result<Vec<u8>, arrow::error::ArrowError> {
    let mut writer = StreamWriter::try_new(Vec::new(), &batch.schema())?;
    writer.write(batch)?;
    writer.into_inner()
}

/// Parses and plans one read-only SQL statement through [`crate::catalog::sql`]: ONE export
/// per FHIR catalog for all the tables it reads, in the caller's task (a client that goes away
/// drops the planning and with it its wait on the export). `?` placeholders become `$1`, `$2`...
/// in the order they appear in the text. `freshness` overrides the catalogs' own.
pub(crate) async fn plan_sql(
    ctx: &SessionContext,
    sql: &str,
    freshness: Option<Freshness>,
) -> DfResult<DataFrame> {
    let mut statement = catalog::parse_statement(&ctx.state(), sql)?;
    // Checked before anything runs: `catalog::sql` executes DDL while planning it.
    if !read_only(&statement) {
        return Err(DataFusionError::Plan(format!(
            "only queries are served (SELECT, EXPLAIN, SHOW), not: {sql}"
        )));
    }
    if let DfStatement::Statement(s) = &mut statement {
        number_question_marks(s);
    }
    catalog::sql_statement(ctx, statement, freshness).await
}

/// Whether `statement` only reads: a query (without `SELECT INTO`), `EXPLAIN` of one, `SHOW`.
fn read_only(statement: &DfStatement) -> bool {
    fn query(q: &Query) -> bool {
        let ctes = q.with.iter().flat_map(|w| &w.cte_tables);
        set_expr(&q.body) && ctes.into_iter().all(|cte| query(&cte.query))
    }
    fn set_expr(e: &SetExpr) -> bool {
        match e {
            SetExpr::Select(s) => s.into.is_none(),
            SetExpr::Query(q) => query(q),
            SetExpr::SetOperation { left, right, .. } => set_expr(left) && set_expr(right),
            SetExpr::Values(_) | SetExpr::Table(_) => true,
            _ => false,
        }
    }
    fn sql_statement(s: &SqlStatement) -> bool {
        match s {
            SqlStatement::Query(q) => query(q),
            SqlStatement::Explain { statement, .. } => sql_statement(statement),
            SqlStatement::ShowTables { .. }
            | SqlStatement::ShowColumns { .. }
            | SqlStatement::ShowCreate { .. }
            | SqlStatement::ExplainTable { .. }
            | SqlStatement::ShowVariable { .. }
            | SqlStatement::ShowFunctions { .. } => true,
            _ => false,
        }
    }
    match statement {
        DfStatement::Statement(s) => sql_statement(s),
        DfStatement::Explain(e) => read_only(&e.statement),
        _ => false,
    }
}

/// Rewrites anonymous `?` placeholders (JDBC, ODBC) to DataFusion's positional `$n`, numbered in
/// the order they appear in the text.
fn number_question_marks(statement: &mut SqlStatement) {
    let mut positions = Vec::new();
    let _ = visit_expressions(statement, |expr| {
        if let Expr::Value(v) = expr
            && matches!(&v.value, Value::Placeholder(p) if p == "?")
        {
            positions.push((v.span.start.line, v.span.start.column));
        }
        ControlFlow::<()>::Continue(())
    });
    let mut sorted = positions.clone();
    sorted.sort_unstable();
    let mut visited = positions.into_iter();
    let _ = visit_expressions_mut(statement, |expr| {
        if let Expr::Value(v) = expr
            && let Value::Placeholder(p) = &mut v.value
            && p == "?"
            && let Some(position) = visited.next()
        {
            let index = sorted.binary_search(&position).unwrap_or_default();
            *p = format!("${}", index + 1);
        }
        ControlFlow::<()>::Continue(())
    });
}

/// The parameters a plan expects, `$1` first, typed where DataFusion could infer the type
/// (`Null` otherwise: any value is accepted).
pub(crate) fn parameter_schema(plan: &LogicalPlan) -> DfResult<SchemaRef> {
    let mut parameters: Vec<_> = plan
        .get_parameter_fields()?
        .into_iter()
        .map(|(id, field)| {
            let position = id
                .trim_start_matches('$')
                .parse::<usize>()
                .unwrap_or(usize::MAX);
            let data_type = field.map_or(DataType::Null, |f| f.data_type().clone());
            (position, Field::new(id, data_type, true))
        })
        .collect();
    parameters.sort_by(|a, b| (a.0, a.1.name()).cmp(&(b.0, b.1.name())));
    Ok(Arc::new(Schema::new(
        parameters.into_iter().map(|(_, f)| f).collect::<Vec<_>>(),
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int64Array, StringArray};
    use datafusion::sql::sqlparser::dialect::GenericDialect;
    use datafusion::sql::sqlparser::parser::Parser;

    #[test]
    fn question_marks_are_numbered_in_text_order() {
        let sql = "SELECT ? FROM t WHERE a = ? AND b IN (SELECT c FROM u WHERE d > ?) LIMIT ?";
        let mut statement = Parser::parse_sql(&GenericDialect {}, sql)
            .unwrap()
            .remove(0);
        number_question_marks(&mut statement);
        assert_eq!(
            statement.to_string(),
            "SELECT $1 FROM t WHERE a = $2 AND b IN (SELECT c FROM u WHERE d > $3) LIMIT $4"
        );
    }

    #[tokio::test]
    async fn bound_handles_round_trip() {
        let ctx = SessionContext::new();
        let handle = StatementHandle::new("SELECT ? AS n, ? AS s");
        let plan = handle.plan(&ctx, None).await.unwrap();
        let params = parameter_schema(plan.logical_plan()).unwrap();
        assert_eq!(
            params
                .fields()
                .iter()
                .map(|f| f.name().as_str())
                .collect::<Vec<_>>(),
            ["$1", "$2"]
        );

        let schema = Arc::new(Schema::new(vec![
            Field::new("a", DataType::Int64, false),
            Field::new("b", DataType::Utf8, false),
        ]));
        let row = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Int64Array::from(vec![7])),
                Arc::new(StringArray::from(vec!["x"])),
            ],
        )
        .unwrap();
        let bound = handle.bind(Some(row.clone())).unwrap();
        let bytes = bound.encode_to_vec();
        let decoded = StatementHandle::decode_handle(&bytes).unwrap();
        let batches = decoded
            .plan(&ctx, None)
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        let pretty = arrow::util::pretty::pretty_format_batches(&batches)
            .unwrap()
            .to_string();
        assert!(pretty.contains("| 7 | x |"), "{pretty}");

        let two_rows = row.slice(0, 1);
        let two_rows =
            arrow::compute::concat_batches(&two_rows.schema(), [&two_rows, &two_rows]).unwrap();
        let err = StatementHandle::new("SELECT $1")
            .bind(Some(two_rows))
            .unwrap_err();
        assert!(err.to_string().contains("2 parameter rows"), "{err}");
    }

    #[tokio::test]
    async fn writes_are_refused_before_they_run() {
        let ctx = SessionContext::new();
        for sql in [
            "CREATE TABLE x (a INT)",
            "SELECT 1 AS a INTO x",
            "WITH w AS (SELECT 1) SELECT * INTO x FROM w",
            "EXPLAIN CREATE TABLE x (a INT)",
            "COPY (SELECT 1) TO 'x.csv'",
            "SET datafusion.execution.batch_size = 1",
        ] {
            let err = plan_sql(&ctx, sql, None).await.unwrap_err();
            assert!(
                err.to_string().contains("only queries are served"),
                "{sql}: {err}"
            );
        }
        assert!(ctx.table_exist("x").is_ok_and(|exists| !exists));
        for sql in [
            "SELECT 1",
            "EXPLAIN SELECT 1",
            "WITH w AS (SELECT 1 AS a) SELECT a FROM w UNION ALL VALUES (2)",
        ] {
            plan_sql(&ctx, sql, None).await.unwrap();
        }
    }
}
