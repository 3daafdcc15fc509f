//! Identifiers as FHIR users write them: unquoted names match case-insensitively and keep their
//! case, as in DuckDB; quoted names match exactly.
//!
//! DataFusion folds unquoted identifiers to lower case, while FHIR columns are camelCase
//! (`birthDate`, `meta_lastUpdated`): `SELECT birthDate FROM Patient` would look for `birthdate`.
//! Keeping the case instead (`enable_ident_normalization = false`) makes matching case-sensitive,
//! which is no better. [`super::sql`] therefore rewrites the parsed statement before DataFusion
//! plans it, in two steps:
//!
//! 1. [`resolve_tables`], before the statement's FHIR tables are exported: every unquoted part of a
//!    table name (catalog, schema, table) becomes the one name of the catalogs, schemas, tables
//!    (`SchemaProvider::table_names`, no table is resolved) or CTEs that it equals
//!    case-insensitively, quoted, so DataFusion takes it as it is. CTE names are definitions:
//!    they are quoted as written (`WITH Recent AS ...` names `Recent`).
//! 2. [`resolve_columns`], once the tables are up to date: every unquoted identifier that refers
//!    to a column (`Expr::Identifier`, `Expr::CompoundIdentifier`, `USING`, `* EXCLUDE`, ...)
//!    becomes the one column, alias or struct field it equals case-insensitively, quoted. The
//!    names come from the schemas of the referenced tables (resolved as DataFusion will, once: see
//!    [`super::schema::Scope`]), and from the statement itself: table and column aliases, CTEs,
//!    `SELECT` aliases (quoted as written, so they keep their case).
//!
//! Names are looked up scope by scope, as SQL binds them: the relations of the `FROM` of the
//! identifier's own `SELECT` first, then those of the enclosing queries (correlated subqueries).
//! `SELECT` aliases are seen by `GROUP BY` and `HAVING` after the columns and by `ORDER BY` before
//! them (as PostgreSQL and DuckDB do), so `SELECT gender AS Gender ... GROUP BY gender` is no
//! conflict. Two names of one scope that differ only by case make an unquoted reference to them
//! an error naming both (`column reference "a" is ambiguous: A, a`); a quoted one picks one.
//!
//! What is left as written, for DataFusion to fold and report: identifiers that name nothing known
//! (DataFusion then says which column is missing), and those of relations whose columns are not
//! known before planning (table functions, `UNNEST` without column aliases): DataFusion names
//! their columns in lower case. Function names, keywords, option names and `SET`/`SHOW` variables
//! are never touched. Struct fields (`meta.lastUpdated` in the nested mode) match
//! case-insensitively too, against the fields of every referenced table.

use std::collections::{HashMap, HashSet};
use std::ops::ControlFlow;
use std::sync::Arc;

use arrow::datatypes::DataType;
use datafusion::common::{ResolvedTableReference, TableReference};
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::context::SessionState;
use datafusion::sql::parser::{CopyToSource, Statement};
use datafusion::sql::planner::object_name_to_table_reference;
use datafusion::sql::sqlparser::ast::{
    AccessExpr, ExcludeSelectItem, Expr, GroupByExpr, Ident, JoinConstraint, JoinOperator,
    ObjectName, ObjectNamePart, OrderBy, OrderByKind, Query, RenameSelectItem, Select, SelectItem,
    SelectItemQualifiedWildcardKind, SetExpr, Statement as SqlStatement, TableAlias, TableFactor,
    TableObject, TableWithJoins, Visit, VisitMut, Visitor, VisitorMut, WildcardAdditionalOptions,
};

/// Step 1: rewrites the unquoted parts of the table names of `statement` to the catalog, schema,
/// table or CTE they name case-insensitively, and quotes CTE names as written.
pub(super) fn resolve_tables(state: &SessionState, statement: &mut Statement) -> DfResult<()> {
    let mut tables = TableNames {
        state,
        ctes: Index::default(),
    };
    tables.statement(statement)
}

/// Step 2: rewrites the unquoted identifiers of `statement` that name columns, aliases or struct
/// fields to the name they equal case-insensitively, and quotes aliases as written. Resolves the
/// tables the statement references (as DataFusion's planning will: run it in the same
/// [`super::schema::Scope`], which keeps what FHIR tables resolved to).
pub(super) async fn resolve_columns(
    state: &SessionState,
    statement: &mut Statement,
) -> DfResult<()> {
    let options = state.config().options();
    let normalize = options.sql_parser.enable_ident_normalization;
    let (default_catalog, default_schema) = (
        options.catalog.default_catalog.clone(),
        options.catalog.default_schema.clone(),
    );
    let mut tables = HashMap::new();
    let mut fields = Index::default();
    for reference in state.resolve_table_references(statement)? {
        let resolved = reference.resolve(&default_catalog, &default_schema);
        if tables.contains_key(&resolved) {
            continue;
        }
        // As `SessionState::statement_to_plan`: an unknown schema is left to the planner.
        let Ok(schema) = state.schema_for_ref(resolved.clone()) else {
            continue;
        };
        let Some(table) = schema.table(&resolved.table).await? else {
            continue;
        };
        let schema = table.schema();
        for field in schema.fields() {
            nested_fields(field.data_type(), &mut fields);
        }
        let names = schema.fields().iter().map(|f| f.name().clone());
        tables.insert(resolved, Columns::of(names));
    }
    let mut defined = Index::default();
    let _ = statement_visit(statement, &mut Definitions(&mut defined));
    let mut resolver = Resolver {
        normalize,
        default_catalog,
        default_schema,
        tables,
        fields,
        defined,
        ctes: Vec::new(),
    };
    resolver.statement(statement)
}

/// Names by their ASCII lower case (as DataFusion folds them), each with its distinct spellings.
#[derive(Debug, Default)]
struct Index(HashMap<String, Vec<String>>);

impl Index {
    fn add(&mut self, name: &str) {
        let spellings = self.0.entry(name.to_ascii_lowercase()).or_default();
        if !spellings.iter().any(|s| s == name) {
            spellings.push(name.to_owned());
        }
    }

    /// The spellings of `key`, a lower-case name.
    fn get(&self, key: &str) -> &[String] {
        self.0.get(key).map_or(&[], Vec::as_slice)
    }
}

/// The columns of a relation, in order, and indexed.
#[derive(Debug, Default)]
struct Columns {
    names: Vec<String>,
    index: Index,
}

impl Columns {
    fn of(names: impl IntoIterator<Item = String>) -> Arc<Self> {
        let mut columns = Self::default();
        for name in names {
            columns.index.add(&name);
            columns.names.push(name);
        }
        Arc::new(columns)
    }
}

/// Adds the names of the struct fields within `data_type` (at any depth, through lists and maps).
fn nested_fields(data_type: &DataType, index: &mut Index) {
    match data_type {
        DataType::Struct(fields) => {
            for field in fields {
                index.add(field.name());
                nested_fields(field.data_type(), index);
            }
        }
        DataType::List(f)
        | DataType::LargeList(f)
        | DataType::ListView(f)
        | DataType::LargeListView(f)
        | DataType::FixedSizeList(f, _)
        | DataType::Map(f, _) => nested_fields(f.data_type(), index),
        _ => {}
    }
}

/// `ident` as the (quoted) name `spelling`, when it is unquoted.
fn set(ident: &mut Ident, spelling: &str) {
    if ident.quote_style.is_none() {
        ident.value = spelling.to_owned();
        ident.quote_style = Some('"');
    }
}

/// `ident`, a definition (an alias, a CTE, a new table), keeps its case: quoted as written.
fn define(ident: &mut Ident) {
    if ident.quote_style.is_none() {
        ident.quote_style = Some('"');
    }
}

fn ambiguous(what: &str, name: &str, spellings: &[String]) -> DataFusionError {
    let mut spellings = spellings.to_vec();
    spellings.sort();
    DataFusionError::Plan(format!(
        "{what} reference \"{name}\" is ambiguous: {}",
        spellings.join(", ")
    ))
}

/// The one spelling among `spellings`, none, or an ambiguity error.
fn one<'s>(what: &str, name: &str, spellings: &'s [String]) -> DfResult<Option<&'s String>> {
    match spellings {
        [] => Ok(None),
        [one] => Ok(Some(one)),
        many => Err(ambiguous(what, name, many)),
    }
}

/// Runs `visitor` over the SQL statements and queries of `statement`.
fn statement_visit<V: Visitor>(statement: &Statement, visitor: &mut V) -> ControlFlow<V::Break> {
    match statement {
        Statement::Statement(s) => s.visit(visitor),
        Statement::Explain(e) => statement_visit(&e.statement, visitor),
        Statement::CopyTo(c) => match &c.source {
            CopyToSource::Query(q) => q.visit(visitor),
            CopyToSource::Relation(_) => ControlFlow::Continue(()),
        },
        _ => ControlFlow::Continue(()),
    }
}

/// The identifiers of `name`; `None` when a part is not one.
fn parts_mut(name: &mut ObjectName) -> Option<Vec<&mut Ident>> {
    name.0
        .iter_mut()
        .map(|part| match part {
            ObjectNamePart::Identifier(ident) => Some(ident),
            _ => None,
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Step 1: table names.

struct TableNames<'s> {
    state: &'s SessionState,
    /// The CTE names of the statement (as written: they are quoted).
    ctes: Index,
}

impl TableNames<'_> {
    fn statement(&mut self, statement: &mut Statement) -> DfResult<()> {
        match statement {
            Statement::Statement(s) => {
                let _ = s.visit(&mut CteNames(&mut self.ctes));
                self.sql_statement(s)?;
                as_result(s.visit(self))
            }
            Statement::Explain(e) => self.statement(&mut e.statement),
            Statement::CopyTo(c) => match &mut c.source {
                CopyToSource::Query(q) => {
                    let _ = q.visit(&mut CteNames(&mut self.ctes));
                    as_result(q.visit(self))
                }
                CopyToSource::Relation(name) => self.relation(name, false),
            },
            Statement::CreateExternalTable(c) => self.relation(&mut c.name, true),
            _ => Ok(()),
        }
    }

    /// The table names a statement holds outside of its queries.
    fn sql_statement(&mut self, statement: &mut SqlStatement) -> DfResult<()> {
        match statement {
            SqlStatement::Explain { statement, .. } => self.sql_statement(statement),
            SqlStatement::CreateView(view) => self.relation(&mut view.name, true),
            SqlStatement::CreateTable(table) => self.relation(&mut table.name, true),
            SqlStatement::Drop { names, .. } => {
                names.iter_mut().try_for_each(|n| self.relation(n, false))
            }
            SqlStatement::ShowColumns { show_options, .. } => {
                match show_options
                    .show_in
                    .as_mut()
                    .and_then(|s| s.parent_name.as_mut())
                {
                    Some(name) => self.relation(name, false),
                    None => Ok(()),
                }
            }
            SqlStatement::ExplainTable { table_name, .. } => self.relation(table_name, false),
            SqlStatement::ShowCreate { obj_name, .. } => self.relation(obj_name, false),
            SqlStatement::Insert(insert) => match &mut insert.table {
                TableObject::TableName(name) => self.relation(name, false),
                _ => Ok(()),
            },
            _ => Ok(()),
        }
    }

    /// Rewrites the unquoted parts of the table name `name`; a `definition` (a table or view
    /// being created) that names nothing yet keeps its case.
    fn relation(&self, name: &mut ObjectName, definition: bool) -> DfResult<()> {
        let Some(mut parts) = parts_mut(name) else {
            return Ok(());
        };
        let options = self.state.config().options();
        let (default_catalog, default_schema) = (
            options.catalog.default_catalog.as_str(),
            options.catalog.default_schema.as_str(),
        );
        match parts.as_mut_slice() {
            [table] => {
                if table.quote_style.is_none() {
                    let key = table.value.to_ascii_lowercase();
                    if let Some(cte) = one("table", &table.value, self.ctes.get(&key))? {
                        set(table, cte);
                        return Ok(());
                    }
                }
                self.table(default_catalog, default_schema, table, definition)
            }
            [schema, table] => match self.schema(default_catalog, schema)? {
                Some(schema) => self.table(default_catalog, &schema, table, definition),
                None => Ok(()),
            },
            [catalog, schema, table] => {
                let Some(catalog) = self.catalog(catalog)? else {
                    return Ok(());
                };
                match self.schema(&catalog, schema)? {
                    Some(schema) => self.table(&catalog, &schema, table, definition),
                    None => Ok(()),
                }
            }
            _ => Ok(()),
        }
    }

    /// The catalog `ident` names (rewriting it), if any.
    fn catalog(&self, ident: &mut Ident) -> DfResult<Option<String>> {
        if ident.quote_style.is_some() {
            return Ok(Some(ident.value.clone()));
        }
        let names = self.state.catalog_list().catalog_names();
        pick("catalog", ident, names)
    }

    /// The schema of `catalog` that `ident` names (rewriting it), if any.
    fn schema(&self, catalog: &str, ident: &mut Ident) -> DfResult<Option<String>> {
        if ident.quote_style.is_some() {
            return Ok(Some(ident.value.clone()));
        }
        let Some(provider) = self.state.catalog_list().catalog(catalog) else {
            return Ok(None);
        };
        let mut names = provider.schema_names();
        if self.state.config().information_schema() {
            names.push("information_schema".to_owned());
        }
        pick("schema", ident, names)
    }

    fn table(
        &self,
        catalog: &str,
        schema: &str,
        ident: &mut Ident,
        definition: bool,
    ) -> DfResult<()> {
        if ident.quote_style.is_some() {
            return Ok(());
        }
        let names = self
            .state
            .schema_for_ref(TableReference::full(catalog, schema, ""))
            .map(|s| s.table_names())
            .unwrap_or_default();
        if pick("table", ident, names)?.is_none() && definition {
            define(ident);
        }
        Ok(())
    }
}

/// Rewrites the unquoted `ident` to the one of `names` it equals case-insensitively.
fn pick(what: &str, ident: &mut Ident, names: Vec<String>) -> DfResult<Option<String>> {
    let mut matching: Vec<String> = names
        .into_iter()
        .filter(|n| n.eq_ignore_ascii_case(&ident.value))
        .collect();
    matching.dedup();
    match one(what, &ident.value, &matching)? {
        Some(name) => {
            set(ident, name);
            Ok(Some(name.clone()))
        }
        None => Ok(None),
    }
}

fn as_result(flow: ControlFlow<DataFusionError>) -> DfResult<()> {
    match flow {
        ControlFlow::Break(e) => Err(e),
        ControlFlow::Continue(()) => Ok(()),
    }
}

impl VisitorMut for TableNames<'_> {
    type Break = DataFusionError;

    fn pre_visit_table_factor(&mut self, factor: &mut TableFactor) -> ControlFlow<Self::Break> {
        // With arguments, the name is a table function's.
        if let TableFactor::Table {
            name, args: None, ..
        } = factor
            && let Err(e) = self.relation(name, false)
        {
            return ControlFlow::Break(e);
        }
        ControlFlow::Continue(())
    }
}

/// Quotes CTE names as written and collects them.
struct CteNames<'a>(&'a mut Index);

impl VisitorMut for CteNames<'_> {
    type Break = ();

    fn pre_visit_query(&mut self, query: &mut Query) -> ControlFlow<()> {
        for cte in query.with.iter_mut().flat_map(|w| &mut w.cte_tables) {
            define(&mut cte.alias.name);
            self.0.add(&cte.alias.name.value);
        }
        ControlFlow::Continue(())
    }
}

// ---------------------------------------------------------------------------------------------
// Step 2: columns.

/// Collects the names the statement defines (aliases, CTE columns), for references the scopes do
/// not explain.
struct Definitions<'a>(&'a mut Index);

impl Visitor for Definitions<'_> {
    type Break = ();

    fn pre_visit_query(&mut self, query: &Query) -> ControlFlow<()> {
        for cte in query.with.iter().flat_map(|w| &w.cte_tables) {
            self.alias(&cte.alias);
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_select(&mut self, select: &Select) -> ControlFlow<()> {
        for item in &select.projection {
            match item {
                SelectItem::ExprWithAlias { alias, .. } => self.0.add(&alias.value),
                SelectItem::ExprWithAliases { aliases, .. } => {
                    aliases.iter().for_each(|a| self.0.add(&a.value))
                }
                _ => {}
            }
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_table_factor(&mut self, factor: &TableFactor) -> ControlFlow<()> {
        if let Some(alias) = factor_alias(factor) {
            self.alias(alias);
        }
        ControlFlow::Continue(())
    }
}

impl Definitions<'_> {
    fn alias(&mut self, alias: &TableAlias) {
        self.0.add(&alias.name.value);
        alias.columns.iter().for_each(|c| self.0.add(&c.name.value));
    }
}

fn factor_alias(factor: &TableFactor) -> Option<&TableAlias> {
    match factor {
        TableFactor::Table { alias, .. }
        | TableFactor::Derived { alias, .. }
        | TableFactor::TableFunction { alias, .. }
        | TableFactor::Function { alias, .. }
        | TableFactor::UNNEST { alias, .. }
        | TableFactor::NestedJoin { alias, .. } => alias.as_ref(),
        _ => None,
    }
}

/// A relation of a `FROM`.
#[derive(Debug)]
struct Rel {
    /// How a column reference qualifies it: `[alias]`, `[catalog, schema, table]`, `[cte]`.
    qualifier: Vec<String>,
    /// `None` when not known before planning (table functions, ...).
    columns: Option<Arc<Columns>>,
}

/// The names a `SELECT` sees.
#[derive(Debug)]
struct Scope<'p> {
    rels: Vec<Rel>,
    /// A relation's columns are not known: names not found are left to DataFusion.
    unknown: bool,
    /// The `SELECT` aliases (for `GROUP BY`, `HAVING`, `ORDER BY`).
    aliases: Index,
    /// The enclosing query's scope.
    parent: Option<&'p Scope<'p>>,
}

impl<'p> Scope<'p> {
    fn new(parent: Option<&'p Scope<'p>>) -> Self {
        Self {
            rels: Vec::new(),
            unknown: false,
            aliases: Index::default(),
            parent,
        }
    }

    fn add(&mut self, rel: Rel) {
        self.unknown |= rel.columns.is_none();
        self.rels.push(rel);
    }

    /// The distinct spellings of column `key` among this scope's relations.
    fn columns(&self, key: &str) -> Vec<String> {
        let mut found: Vec<String> = Vec::new();
        for columns in self.rels.iter().filter_map(|r| r.columns.as_ref()) {
            for spelling in columns.index.get(key) {
                if !found.contains(spelling) {
                    found.push(spelling.clone());
                }
            }
        }
        found
    }
}

/// Where an identifier is, which decides whether `SELECT` aliases are seen, and first or last.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// `SELECT` list, `WHERE`, `ON`, ...: columns only.
    Input,
    /// `GROUP BY`, `HAVING`, `QUALIFY`: columns, then aliases.
    Grouping,
    /// `ORDER BY`: aliases, then columns.
    Ordering,
}

struct Resolver {
    normalize: bool,
    default_catalog: String,
    default_schema: String,
    /// The columns of every table the statement references.
    tables: HashMap<ResolvedTableReference, Arc<Columns>>,
    /// The struct fields of those tables.
    fields: Index,
    /// The aliases and CTE columns the statement defines.
    defined: Index,
    /// The CTEs in scope (innermost last), with their columns when known.
    ctes: Vec<(String, Option<Arc<Columns>>)>,
}

impl Resolver {
    fn statement(&mut self, statement: &mut Statement) -> DfResult<()> {
        match statement {
            Statement::Statement(s) => self.sql_statement(s),
            Statement::Explain(e) => self.statement(&mut e.statement),
            Statement::CopyTo(c) => match &mut c.source {
                CopyToSource::Query(q) => self.query(q, None).map(|_| ()),
                CopyToSource::Relation(_) => Ok(()),
            },
            _ => Ok(()),
        }
    }

    fn sql_statement(&mut self, statement: &mut SqlStatement) -> DfResult<()> {
        match statement {
            SqlStatement::Query(q) => self.query(q, None).map(|_| ()),
            SqlStatement::Explain { statement, .. } => self.sql_statement(statement),
            SqlStatement::CreateView(view) => {
                view.columns.iter_mut().for_each(|c| define(&mut c.name));
                self.query(&mut view.query, None).map(|_| ())
            }
            SqlStatement::CreateTable(table) => {
                table.columns.iter_mut().for_each(|c| define(&mut c.name));
                match &mut table.query {
                    Some(q) => self.query(q, None).map(|_| ()),
                    None => Ok(()),
                }
            }
            SqlStatement::Insert(insert) => {
                if let TableObject::TableName(name) = &insert.table {
                    let rel = self.table_rel(name);
                    let mut scope = Scope::new(None);
                    scope.add(rel);
                    for column in &mut insert.columns {
                        if let Some(mut parts) = parts_mut(column)
                            && let [ident] = parts.as_mut_slice()
                        {
                            self.column(ident, &scope, Kind::Input)?;
                        }
                    }
                }
                match &mut insert.source {
                    Some(q) => self.query(q, None).map(|_| ()),
                    None => Ok(()),
                }
            }
            _ => Ok(()),
        }
    }

    /// Resolves `query` (its CTEs, body, `ORDER BY`) within `parent`; returns its columns.
    fn query(
        &mut self,
        query: &mut Query,
        parent: Option<&Scope<'_>>,
    ) -> DfResult<Option<Arc<Columns>>> {
        let depth = self.ctes.len();
        let result = self.query_in(query, parent);
        self.ctes.truncate(depth);
        result
    }

    fn query_in(
        &mut self,
        query: &mut Query,
        parent: Option<&Scope<'_>>,
    ) -> DfResult<Option<Arc<Columns>>> {
        if let Some(with) = &mut query.with {
            let recursive = with.recursive;
            for cte in &mut with.cte_tables {
                cte.alias
                    .columns
                    .iter_mut()
                    .for_each(|c| define(&mut c.name));
                let declared = (!cte.alias.columns.is_empty())
                    .then(|| Columns::of(cte.alias.columns.iter().map(|c| c.name.value.clone())));
                let name = cte.alias.name.value.clone();
                if recursive {
                    self.ctes.push((name.clone(), declared.clone()));
                }
                let output = self.query(&mut cte.query, parent)?;
                let columns = declared.or(output);
                match self.ctes.last_mut() {
                    Some(last) if recursive => last.1 = columns,
                    _ => self.ctes.push((name, columns)),
                }
            }
        }
        let output = self.set_expr(&mut query.body, parent, query.order_by.as_mut())?;
        let scope = Scope::new(parent);
        if let Some(limit) = &mut query.limit_clause {
            self.walk(limit, &scope, Kind::Input)?;
        }
        if let Some(fetch) = &mut query.fetch {
            self.walk(fetch, &scope, Kind::Input)?;
        }
        Ok(output)
    }

    fn set_expr(
        &mut self,
        body: &mut SetExpr,
        parent: Option<&Scope<'_>>,
        order_by: Option<&mut OrderBy>,
    ) -> DfResult<Option<Arc<Columns>>> {
        let output = match body {
            SetExpr::Select(select) => return self.select(select, parent, order_by),
            SetExpr::Query(q) => self.query(q, parent)?,
            SetExpr::SetOperation { left, right, .. } => {
                let output = self.set_expr(left, parent, None)?;
                self.set_expr(right, parent, None)?;
                output
            }
            SetExpr::Values(values) => {
                self.walk(values, &Scope::new(parent), Kind::Input)?;
                let width = values.rows.first().map_or(0, |r| r.content.len());
                Some(Columns::of((1..=width).map(|i| format!("column{i}"))))
            }
            other => {
                self.walk(other, &Scope::new(parent), Kind::Input)?;
                None
            }
        };
        // `ORDER BY` of a set operation sees its output columns.
        if let Some(order_by) = order_by {
            let mut scope = Scope::new(parent);
            if let Some(columns) = &output {
                columns.names.iter().for_each(|n| scope.aliases.add(n));
            }
            scope.add(Rel {
                qualifier: Vec::new(),
                columns: output.clone(),
            });
            self.order_by(order_by, &scope)?;
        }
        Ok(output)
    }

    fn order_by(&mut self, order_by: &mut OrderBy, scope: &Scope<'_>) -> DfResult<()> {
        if let OrderByKind::Expressions(exprs) = &mut order_by.kind {
            for e in exprs {
                self.expr(&mut e.expr, scope, Kind::Ordering)?;
            }
        }
        Ok(())
    }

    fn select(
        &mut self,
        select: &mut Select,
        parent: Option<&Scope<'_>>,
        order_by: Option<&mut OrderBy>,
    ) -> DfResult<Option<Arc<Columns>>> {
        let mut scope = Scope::new(parent);
        for from in &mut select.from {
            self.table_with_joins(from, &mut scope, parent)?;
        }
        for from in &mut select.from {
            self.constraints(from, &scope)?;
        }
        for item in &mut select.projection {
            match item {
                SelectItem::ExprWithAlias { alias, .. } => {
                    define(alias);
                    scope.aliases.add(&alias.value);
                }
                SelectItem::ExprWithAliases { aliases, .. } => {
                    for alias in aliases {
                        define(alias);
                        scope.aliases.add(&alias.value);
                    }
                }
                _ => {}
            }
        }
        let mut output = Some(Vec::new());
        for item in &mut select.projection {
            match item {
                SelectItem::UnnamedExpr(e) => {
                    // An expression that is no column has a name DataFusion makes up: it can
                    // only be referred to quoted, as DataFusion prints it.
                    if let Some(name) = self.expr(e, &scope, Kind::Input)?
                        && let Some(output) = &mut output
                    {
                        output.push(name);
                    }
                }
                SelectItem::ExprWithAlias { expr, alias } => {
                    self.expr(expr, &scope, Kind::Input)?;
                    if let Some(output) = &mut output {
                        output.push(alias.value.clone());
                    }
                }
                SelectItem::ExprWithAliases { expr, aliases } => {
                    self.expr(expr, &scope, Kind::Input)?;
                    if let Some(output) = &mut output {
                        output.extend(aliases.iter().map(|a| a.value.clone()));
                    }
                }
                SelectItem::Wildcard(options) => {
                    let rels: Vec<&Rel> = scope.rels.iter().collect();
                    let columns = self.wildcard(&rels, options, &scope)?;
                    extend(&mut output, columns);
                }
                SelectItem::QualifiedWildcard(kind, options) => {
                    let columns = match kind {
                        SelectItemQualifiedWildcardKind::ObjectName(name) => {
                            match parts_mut(name) {
                                Some(mut parts) => {
                                    let rels = qualified(&scope, &mut parts)?;
                                    self.wildcard(&rels, options, &scope)?
                                }
                                None => None,
                            }
                        }
                        SelectItemQualifiedWildcardKind::Expr(e) => {
                            self.expr(e, &scope, Kind::Input)?;
                            None
                        }
                    };
                    extend(&mut output, columns);
                }
            }
        }
        if let Some(selection) = &mut select.selection {
            self.expr(selection, &scope, Kind::Input)?;
        }
        if let GroupByExpr::Expressions(exprs, _) = &mut select.group_by {
            for e in exprs {
                self.expr(e, &scope, Kind::Grouping)?;
            }
        }
        for e in [&mut select.having, &mut select.qualify]
            .into_iter()
            .flatten()
        {
            self.expr(e, &scope, Kind::Grouping)?;
        }
        // The rest (DISTINCT ON, named windows, ...) sees the columns.
        let projection = std::mem::take(&mut select.projection);
        let from = std::mem::take(&mut select.from);
        let selection = select.selection.take();
        let group_by = std::mem::replace(
            &mut select.group_by,
            GroupByExpr::Expressions(Vec::new(), Vec::new()),
        );
        let having = select.having.take();
        let qualify = select.qualify.take();
        let rest = self.walk(select, &scope, Kind::Input);
        select.projection = projection;
        select.from = from;
        select.selection = selection;
        select.group_by = group_by;
        select.having = having;
        select.qualify = qualify;
        rest?;
        if let Some(order_by) = order_by {
            self.order_by(order_by, &scope)?;
        }
        Ok(output.map(Columns::of))
    }

    /// The columns of `*` over `rels`, resolving its `EXCLUDE`/`EXCEPT`/`RENAME`/`REPLACE`.
    fn wildcard(
        &mut self,
        rels: &[&Rel],
        options: &mut WildcardAdditionalOptions,
        scope: &Scope<'_>,
    ) -> DfResult<Option<Vec<String>>> {
        let mut excluded: Vec<&mut Ident> = Vec::new();
        match &mut options.opt_exclude {
            Some(ExcludeSelectItem::Single(name)) => {
                excluded.extend(parts_mut(name).into_iter().flatten())
            }
            Some(ExcludeSelectItem::Multiple(names)) => {
                for name in names {
                    excluded.extend(parts_mut(name).into_iter().flatten());
                }
            }
            None => {}
        }
        if let Some(except) = &mut options.opt_except {
            excluded.push(&mut except.first_element);
            excluded.extend(except.additional_elements.iter_mut());
        }
        let mut excluded_names = Vec::new();
        for ident in excluded {
            self.column(ident, scope, Kind::Input)?;
            excluded_names.push(ident.value.clone());
        }
        let mut renamed: Vec<(String, String)> = Vec::new();
        let renames = match &mut options.opt_rename {
            Some(RenameSelectItem::Single(one)) => std::slice::from_mut(one),
            Some(RenameSelectItem::Multiple(many)) => many.as_mut_slice(),
            None => &mut [],
        };
        for rename in renames {
            self.column(&mut rename.ident, scope, Kind::Input)?;
            define(&mut rename.alias);
            renamed.push((rename.ident.value.clone(), rename.alias.value.clone()));
        }
        if let Some(replace) = &mut options.opt_replace {
            for element in &mut replace.items {
                self.expr(&mut element.expr, scope, Kind::Input)?;
                self.column(&mut element.column_name, scope, Kind::Input)?;
            }
        }
        let mut names = Vec::new();
        for rel in rels {
            let Some(columns) = &rel.columns else {
                return Ok(None);
            };
            for name in &columns.names {
                if excluded_names.iter().any(|e| e.eq_ignore_ascii_case(name)) {
                    continue;
                }
                let name = renamed
                    .iter()
                    .find(|(from, _)| from.eq_ignore_ascii_case(name))
                    .map_or(name, |(_, to)| to);
                names.push(name.clone());
            }
        }
        Ok(Some(names))
    }

    fn table_with_joins(
        &mut self,
        from: &mut TableWithJoins,
        scope: &mut Scope<'_>,
        parent: Option<&Scope<'_>>,
    ) -> DfResult<()> {
        self.factor(&mut from.relation, scope, parent)?;
        for join in &mut from.joins {
            self.factor(&mut join.relation, scope, parent)?;
        }
        Ok(())
    }

    /// Resolves the `ON` and `USING` of the joins of `from`, which see all of the `FROM`.
    fn constraints(&mut self, from: &mut TableWithJoins, scope: &Scope<'_>) -> DfResult<()> {
        if let TableFactor::NestedJoin {
            table_with_joins, ..
        } = &mut from.relation
        {
            self.constraints(table_with_joins, scope)?;
        }
        for join in &mut from.joins {
            if let TableFactor::NestedJoin {
                table_with_joins, ..
            } = &mut join.relation
            {
                self.constraints(table_with_joins, scope)?;
            }
            let constraint = match &mut join.join_operator {
                JoinOperator::Join(c)
                | JoinOperator::Inner(c)
                | JoinOperator::Left(c)
                | JoinOperator::LeftOuter(c)
                | JoinOperator::Right(c)
                | JoinOperator::RightOuter(c)
                | JoinOperator::FullOuter(c)
                | JoinOperator::CrossJoin(c)
                | JoinOperator::Semi(c)
                | JoinOperator::LeftSemi(c)
                | JoinOperator::RightSemi(c)
                | JoinOperator::Anti(c)
                | JoinOperator::LeftAnti(c)
                | JoinOperator::RightAnti(c)
                | JoinOperator::StraightJoin(c) => c,
                JoinOperator::AsOf {
                    match_condition,
                    constraint,
                } => {
                    self.expr(match_condition, scope, Kind::Input)?;
                    constraint
                }
                _ => continue,
            };
            match constraint {
                JoinConstraint::On(e) => {
                    self.expr(e, scope, Kind::Input)?;
                }
                JoinConstraint::Using(names) => {
                    for name in names {
                        if let Some(mut parts) = parts_mut(name)
                            && let [ident] = parts.as_mut_slice()
                        {
                            self.column(ident, scope, Kind::Input)?;
                        }
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Adds the relation `factor` to `scope` (its subqueries see `parent`; `LATERAL` ones and
    /// `UNNEST` see the relations before them too).
    fn factor(
        &mut self,
        factor: &mut TableFactor,
        scope: &mut Scope<'_>,
        parent: Option<&Scope<'_>>,
    ) -> DfResult<()> {
        let rel = match factor {
            TableFactor::Table {
                name,
                alias,
                args: None,
                ..
            } => {
                let rel = self.table_rel(name);
                aliased(rel, alias.as_mut())
            }
            TableFactor::Table {
                args: Some(args),
                alias,
                ..
            } => {
                self.walk(args, scope, Kind::Input)?;
                aliased(no_columns(), alias.as_mut())
            }
            TableFactor::Derived {
                lateral,
                subquery,
                alias,
                ..
            } => {
                let columns = if *lateral {
                    self.query(subquery, Some(scope))?
                } else {
                    self.query(subquery, parent)?
                };
                let rel = Rel {
                    qualifier: Vec::new(),
                    columns,
                };
                aliased(rel, alias.as_mut())
            }
            TableFactor::NestedJoin {
                table_with_joins,
                alias,
            } => {
                let before = scope.rels.len();
                self.table_with_joins(table_with_joins, scope, parent)?;
                let Some(alias) = alias else {
                    return Ok(());
                };
                let mut names = Some(Vec::new());
                for rel in &scope.rels[before..] {
                    extend(&mut names, rel.columns.as_ref().map(|c| c.names.clone()));
                }
                let rel = Rel {
                    qualifier: Vec::new(),
                    columns: names.map(Columns::of),
                };
                aliased(rel, Some(alias))
            }
            TableFactor::UNNEST {
                alias, array_exprs, ..
            } => {
                for e in array_exprs {
                    self.expr(e, scope, Kind::Input)?;
                }
                aliased(no_columns(), alias.as_mut())
            }
            TableFactor::Function { args, alias, .. } => {
                self.walk(args, scope, Kind::Input)?;
                aliased(no_columns(), alias.as_mut())
            }
            TableFactor::TableFunction { expr, alias } => {
                self.expr(expr, scope, Kind::Input)?;
                aliased(no_columns(), alias.as_mut())
            }
            other => {
                self.walk(other, scope, Kind::Input)?;
                no_columns()
            }
        };
        scope.add(rel);
        Ok(())
    }

    /// The relation of the table or CTE `name`.
    fn table_rel(&self, name: &ObjectName) -> Rel {
        if let [ObjectNamePart::Identifier(ident)] = name.0.as_slice()
            && let Some((cte, columns)) =
                self.ctes.iter().rev().find(|(cte, _)| cte == &ident.value)
        {
            return Rel {
                qualifier: vec![cte.clone()],
                columns: columns.clone(),
            };
        }
        let Ok(reference) = object_name_to_table_reference(name.clone(), self.normalize) else {
            return no_columns();
        };
        let resolved = reference.resolve(&self.default_catalog, &self.default_schema);
        Rel {
            columns: self.tables.get(&resolved).cloned(),
            qualifier: vec![
                resolved.catalog.to_string(),
                resolved.schema.to_string(),
                resolved.table.to_string(),
            ],
        }
    }

    /// Resolves the identifiers of `node` (expressions and the queries within them).
    fn walk<N: VisitMut + ?Sized>(
        &mut self,
        node: &mut N,
        scope: &Scope<'_>,
        kind: Kind,
    ) -> DfResult<()> {
        let mut walk = Walk {
            resolver: self,
            scope,
            kind,
            within_query: 0,
            done: HashSet::new(),
        };
        as_result(node.visit(&mut walk))
    }

    /// Resolves `expr`; returns the name of the column it is, when it is one.
    fn expr(&mut self, expr: &mut Expr, scope: &Scope<'_>, kind: Kind) -> DfResult<Option<String>> {
        match expr {
            Expr::Identifier(ident) => {
                self.column(ident, scope, kind)?;
                Ok(Some(self.output_name(ident)))
            }
            Expr::CompoundIdentifier(idents) => self.compound(idents, scope, kind),
            _ => {
                self.walk(expr, scope, kind)?;
                Ok(None)
            }
        }
    }

    /// The name DataFusion gives the column `ident` (as resolved).
    fn output_name(&self, ident: &Ident) -> String {
        match ident.quote_style {
            None if self.normalize => ident.value.to_ascii_lowercase(),
            _ => ident.value.clone(),
        }
    }

    /// Resolves the unquoted `ident`, a column or alias, scope by scope (see the module docs).
    fn column(&self, ident: &mut Ident, scope: &Scope<'_>, kind: Kind) -> DfResult<()> {
        if ident.quote_style.is_some() {
            return Ok(());
        }
        let key = ident.value.to_ascii_lowercase();
        let mut level = Some(scope);
        let mut innermost = true;
        while let Some(s) = level {
            let columns = s.columns(&key);
            let aliases = s.aliases.get(&key);
            let groups: [&[String]; 2] = match (innermost, kind) {
                (true, Kind::Grouping) => [&columns, aliases],
                (true, Kind::Ordering) => [aliases, &columns],
                _ => [&columns, &[]],
            };
            for group in groups {
                if let Some(name) = one("column", &ident.value, group)? {
                    set(ident, name);
                    return Ok(());
                }
            }
            if s.unknown {
                return Ok(());
            }
            level = s.parent;
            innermost = false;
        }
        // Not in any scope seen: a name of the statement, when there is only one such.
        let mut found: Vec<&String> = self.defined.get(&key).iter().collect();
        for columns in self.tables.values() {
            for spelling in columns.index.get(&key) {
                if !found.contains(&spelling) {
                    found.push(spelling);
                }
            }
        }
        if let [name] = found.as_slice() {
            let name = (*name).clone();
            set(ident, &name);
        }
        Ok(())
    }

    /// A struct field: the one field of the statement's tables it equals case-insensitively.
    fn field(&self, ident: &mut Ident) {
        if ident.quote_style.is_none()
            && let [name] = self.fields.get(&ident.value.to_ascii_lowercase())
        {
            let name = name.clone();
            set(ident, &name);
        }
    }

    /// Resolves `a.b.c`: a qualifier (alias, table, `schema.table`, ...) and a column, then struct
    /// fields; or a column and struct fields. Returns the column's name when the reference is a
    /// qualified column.
    fn compound(
        &self,
        idents: &mut [Ident],
        scope: &Scope<'_>,
        kind: Kind,
    ) -> DfResult<Option<String>> {
        let n = idents.len();
        let mut level = Some(scope);
        while let Some(s) = level {
            for k in (1..n.min(4)).rev() {
                let (head, tail) = idents.split_at_mut(k);
                let mut qualifier: Vec<&mut Ident> = head.iter_mut().collect();
                let rels = qualified(s, &mut qualifier)?;
                if rels.is_empty() {
                    continue;
                }
                let (column, fields) = tail.split_at_mut(1);
                let column = &mut column[0];
                if column.quote_style.is_none() {
                    let key = column.value.to_ascii_lowercase();
                    let mut found: Vec<String> = Vec::new();
                    for columns in rels.iter().filter_map(|r| r.columns.as_ref()) {
                        for spelling in columns.index.get(&key) {
                            if !found.contains(spelling) {
                                found.push(spelling.clone());
                            }
                        }
                    }
                    if let Some(name) = one("column", &column.value, &found)? {
                        set(column, name);
                    }
                }
                for field in fields {
                    self.field(field);
                }
                return Ok((k + 1 == n).then(|| self.output_name(&idents[k])));
            }
            level = s.parent;
        }
        self.column(&mut idents[0], scope, kind)?;
        for field in &mut idents[1..] {
            self.field(field);
        }
        Ok(None)
    }
}

/// `rel` under `alias` (quoted as written; its column list renames the first columns).
fn aliased(rel: Rel, alias: Option<&mut TableAlias>) -> Rel {
    let Some(alias) = alias else {
        return rel;
    };
    define(&mut alias.name);
    alias.columns.iter_mut().for_each(|c| define(&mut c.name));
    let columns = if alias.columns.is_empty() {
        rel.columns
    } else {
        let renamed = alias.columns.iter().map(|c| c.name.value.clone());
        let rest = rel
            .columns
            .iter()
            .flat_map(|c| c.names.iter().skip(alias.columns.len()).cloned());
        Some(Columns::of(renamed.chain(rest).collect::<Vec<_>>()))
    };
    Rel {
        qualifier: vec![alias.name.value.clone()],
        columns,
    }
}

fn no_columns() -> Rel {
    Rel {
        qualifier: Vec::new(),
        columns: None,
    }
}

fn extend(output: &mut Option<Vec<String>>, columns: Option<Vec<String>>) {
    match (output.as_mut(), columns) {
        (Some(output), Some(columns)) => output.extend(columns),
        _ => *output = None,
    }
}

/// The relations of `scope` (this level only) that `qualifier` names, rewriting its unquoted
/// parts to their spelling; an error when it names relations spelled differently.
fn qualified<'s>(scope: &'s Scope<'_>, qualifier: &mut [&mut Ident]) -> DfResult<Vec<&'s Rel>> {
    let k = qualifier.len();
    let rels: Vec<&Rel> = scope
        .rels
        .iter()
        .filter(|r| {
            r.qualifier.len() >= k
                && r.qualifier[r.qualifier.len() - k..]
                    .iter()
                    .zip(qualifier.iter())
                    .all(|(name, ident)| match ident.quote_style {
                        Some(_) => name == &ident.value,
                        None => name.eq_ignore_ascii_case(&ident.value),
                    })
        })
        .collect();
    let mut spellings: Vec<&[String]> = rels
        .iter()
        .map(|r| &r.qualifier[r.qualifier.len() - k..])
        .collect();
    spellings.dedup();
    if spellings.len() > 1 {
        let written: Vec<&str> = qualifier.iter().map(|i| i.value.as_str()).collect();
        let spelled: Vec<String> = spellings.iter().map(|s| s.join(".")).collect();
        return Err(ambiguous("table", &written.join("."), &spelled));
    }
    if let Some(spelling) = spellings.first() {
        for (ident, name) in qualifier.iter_mut().zip(spelling.iter()) {
            set(ident, name);
        }
    }
    Ok(rels)
}

/// Resolves the identifiers of expressions; a query within them is resolved as a whole, with
/// the walk's scope as its parent.
struct Walk<'r, 's, 'p> {
    resolver: &'r mut Resolver,
    scope: &'s Scope<'p>,
    kind: Kind,
    /// Inside a query already resolved.
    within_query: usize,
    /// Expressions already resolved as parts of a field access.
    done: HashSet<*const Expr>,
}

impl VisitorMut for Walk<'_, '_, '_> {
    type Break = DataFusionError;

    fn pre_visit_query(&mut self, query: &mut Query) -> ControlFlow<Self::Break> {
        if self.within_query == 0
            && let Err(e) = self.resolver.query(query, Some(self.scope))
        {
            return ControlFlow::Break(e);
        }
        self.within_query += 1;
        ControlFlow::Continue(())
    }

    fn post_visit_query(&mut self, _query: &mut Query) -> ControlFlow<Self::Break> {
        self.within_query -= 1;
        ControlFlow::Continue(())
    }

    fn pre_visit_expr(&mut self, expr: &mut Expr) -> ControlFlow<Self::Break> {
        if self.within_query > 0 || self.done.contains(&(expr as *const Expr)) {
            return ControlFlow::Continue(());
        }
        let result = match expr {
            Expr::Identifier(ident) => self.resolver.column(ident, self.scope, self.kind),
            Expr::CompoundIdentifier(idents) => self
                .resolver
                .compound(idents, self.scope, self.kind)
                .map(|_| ()),
            Expr::CompoundFieldAccess { root, access_chain } => {
                self.field_access(root, access_chain)
            }
            _ => Ok(()),
        };
        match result {
            Ok(()) => ControlFlow::Continue(()),
            Err(e) => ControlFlow::Break(e),
        }
    }
}

impl Walk<'_, '_, '_> {
    /// `a.b['x'].c`: DataFusion reads the root and the leading `.name`s as one compound
    /// identifier.
    fn field_access(&mut self, root: &mut Expr, chain: &mut [AccessExpr]) -> DfResult<()> {
        let lead = chain
            .iter()
            .take_while(|a| matches!(a, AccessExpr::Dot(Expr::Identifier(_))))
            .count();
        let mut idents = match &*root {
            Expr::Identifier(ident) => vec![ident.clone()],
            Expr::CompoundIdentifier(idents) => idents.clone(),
            _ => return Ok(()),
        };
        if lead == 0 {
            return Ok(());
        }
        let root_len = idents.len();
        idents.extend(chain[..lead].iter().filter_map(|a| match a {
            AccessExpr::Dot(Expr::Identifier(ident)) => Some(ident.clone()),
            _ => None,
        }));
        self.resolver.compound(&mut idents, self.scope, self.kind)?;
        let mut resolved = idents.into_iter();
        match root {
            Expr::Identifier(ident) => {
                if let Some(r) = resolved.next() {
                    *ident = r;
                }
            }
            Expr::CompoundIdentifier(root_idents) => {
                root_idents.clear();
                root_idents.extend(resolved.by_ref().take(root_len));
            }
            _ => {}
        }
        self.done.insert(root as *const Expr);
        for (access, ident) in chain[..lead].iter_mut().zip(resolved) {
            if let AccessExpr::Dot(e) = access {
                *e = Expr::Identifier(ident);
                self.done.insert(e as *const Expr);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{Int64Array, RecordBatch, StringArray, StructArray};
    use arrow::datatypes::{DataType, Field, Fields, Schema};
    use datafusion::datasource::MemTable;
    use datafusion::prelude::{SessionConfig, SessionContext};

    use crate::catalog::sql;

    /// `Patient` (`id`, `gender`, `birthDate`, `meta` {`lastUpdated`}) and `Condition` (`id`,
    /// `subject_reference`, `onsetDateTime`) in memory, with `information_schema`.
    fn context() -> SessionContext {
        let ctx =
            SessionContext::new_with_config(SessionConfig::new().with_information_schema(true));
        let meta = Fields::from(vec![Field::new("lastUpdated", DataType::Utf8, true)]);
        let patient = RecordBatch::try_new(
            Arc::new(Schema::new(vec![
                Field::new("id", DataType::Utf8, false),
                Field::new("gender", DataType::Utf8, true),
                Field::new("birthDate", DataType::Utf8, true),
                Field::new("meta", DataType::Struct(meta.clone()), true),
            ])),
            vec![
                Arc::new(StringArray::from(vec!["p1", "p2", "p3"])),
                Arc::new(StringArray::from(vec!["female", "male", "female"])),
                Arc::new(StringArray::from(vec![
                    "1980-05-17",
                    "1955-11-02",
                    "2001-01-30",
                ])),
                Arc::new(StructArray::new(
                    meta,
                    vec![Arc::new(StringArray::from(vec!["2024", "2025", "2026"]))],
                    None,
                )),
            ],
        )
        .unwrap();
        let condition = RecordBatch::try_new(
            Arc::new(Schema::new(vec![
                Field::new("id", DataType::Utf8, false),
                Field::new("subject_reference", DataType::Utf8, true),
                Field::new("onsetDateTime", DataType::Utf8, true),
            ])),
            vec![
                Arc::new(StringArray::from(vec!["c1", "c2", "c3"])),
                Arc::new(StringArray::from(vec![
                    "Patient/p1",
                    "Patient/p1",
                    "Patient/p2",
                ])),
                Arc::new(StringArray::from(vec!["2020", "2021", "2022"])),
            ],
        )
        .unwrap();
        for (name, batch) in [("Patient", patient), ("Condition", condition)] {
            let table = MemTable::try_new(batch.schema(), vec![vec![batch]]).unwrap();
            let name = datafusion::common::TableReference::bare(name);
            ctx.register_table(name, Arc::new(table)).unwrap();
        }
        ctx
    }

    /// The header and rows of `query`, `|`-joined.
    async fn rows(ctx: &SessionContext, query: &str) -> Vec<String> {
        let df = sql(ctx, query)
            .await
            .unwrap_or_else(|e| panic!("{query}: {e}"));
        let header = df
            .schema()
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect::<Vec<_>>()
            .join("|");
        let batches = df.collect().await.unwrap();
        let mut lines = vec![header];
        for batch in &batches {
            for row in 0..batch.num_rows() {
                let cells: Vec<String> = batch
                    .columns()
                    .iter()
                    .map(|c| arrow::util::display::array_value_to_string(c, row).unwrap())
                    .collect();
                lines.push(cells.join("|"));
            }
        }
        lines
    }

    async fn error(ctx: &SessionContext, query: &str) -> String {
        match sql(ctx, query).await {
            Ok(df) => match df.collect().await {
                Ok(_) => panic!("{query}: no error"),
                Err(e) => e.to_string(),
            },
            Err(e) => e.to_string(),
        }
    }

    #[tokio::test]
    async fn unquoted_names_match_any_case_and_quoted_ones_exactly() {
        let ctx = context();
        let expected = ["id|birthDate", "p1|1980-05-17"];
        for query in [
            "SELECT id, birthDate FROM Patient WHERE id = 'p1'",
            "SELECT ID, birthdate FROM patient WHERE Id = 'p1'",
            "SELECT id, BIRTHDATE FROM PATIENT WHERE id = 'p1'",
            "SELECT \"id\", \"birthDate\" FROM \"Patient\" WHERE id = 'p1'",
            "SELECT p.id, P.BirthDate FROM Patient p WHERE P.ID = 'p1'",
            "SELECT patient.id, PATIENT.birthdate FROM Patient WHERE patient.id = 'p1'",
        ] {
            assert_eq!(rows(&ctx, query).await, expected, "{query}");
        }
        let err = error(&ctx, "SELECT \"birthdate\" FROM Patient").await;
        assert!(err.contains("birthdate"), "{err}");
        let err = error(&ctx, "SELECT birthDay FROM Patient").await;
        assert!(err.contains("birthday"), "{err}");
    }

    #[tokio::test]
    async fn aliases_keep_their_case_and_clauses_see_them() {
        let ctx = context();
        assert_eq!(
            rows(
                &ctx,
                "SELECT P.Gender AS Sex, count(*) AS N FROM Patient AS P \
                 JOIN Condition c ON C.Subject_Reference = concat('Patient/', p.ID) \
                 WHERE c.onsetdatetime >= '2020' GROUP BY p.GENDER HAVING n > 0 ORDER BY sex"
            )
            .await,
            ["Sex|N", "female|2", "male|1"]
        );
        // An alias spelled like its column: GROUP BY takes the column, ORDER BY the alias.
        assert_eq!(
            rows(
                &ctx,
                "SELECT gender AS Gender, count(*) AS n FROM Patient GROUP BY gender ORDER BY GENDER"
            )
            .await,
            ["Gender|n", "female|2", "male|1"]
        );
        assert_eq!(
            rows(
                &ctx,
                "SELECT count(*) AS n FROM Patient JOIN Condition USING (ID)"
            )
            .await,
            ["n", "0"]
        );
    }

    #[tokio::test]
    async fn ctes_subqueries_and_views_follow_the_same_rule() {
        let ctx = context();
        assert_eq!(
            rows(
                &ctx,
                "WITH Born AS (SELECT ID, BirthDate AS Born FROM patient) \
                 SELECT born.id, BORN FROM born WHERE born > '1960' ORDER BY Id"
            )
            .await,
            ["id|Born", "p1|1980-05-17", "p3|2001-01-30"]
        );
        assert_eq!(
            rows(
                &ctx,
                "SELECT id FROM Patient p WHERE EXISTS \
                 (SELECT 1 FROM Condition c WHERE c.subject_reference = 'Patient/' || P.Id \
                 AND ONSETDATETIME > '2021') ORDER BY ID"
            )
            .await,
            ["id", "p2"]
        );
        assert_eq!(
            rows(
                &ctx,
                "SELECT * FROM (SELECT birthdate FROM Patient) WHERE BIRTHDATE < '1960'"
            )
            .await,
            ["birthDate", "1955-11-02"]
        );
        sql(
            &ctx,
            "CREATE VIEW Women AS SELECT Id, BirthDate FROM Patient WHERE gender = 'female'",
        )
        .await
        .unwrap();
        assert_eq!(
            rows(&ctx, "SELECT ID, birthdate FROM WOMEN ORDER BY id").await,
            ["id|birthDate", "p1|1980-05-17", "p3|2001-01-30"]
        );
        assert_eq!(
            rows(
                &ctx,
                "SELECT * EXCLUDE (BIRTHDATE, META) FROM patient WHERE id = 'p2'"
            )
            .await,
            ["id|gender", "p2|male"]
        );
    }

    #[tokio::test]
    async fn set_operations_windows_wildcards_ddl_and_dml() {
        let ctx = context();
        assert_eq!(
            rows(
                &ctx,
                "SELECT id AS Ref FROM Patient WHERE GENDER = 'male' \
                 UNION ALL SELECT ID FROM condition WHERE Id = 'c3' ORDER BY REF"
            )
            .await,
            ["Ref", "c3", "p2"]
        );
        assert_eq!(
            rows(
                &ctx,
                "SELECT ID, row_number() OVER (PARTITION BY Gender ORDER BY BIRTHDATE) AS Rn \
                 FROM patient ORDER BY rn, id"
            )
            .await,
            ["id|Rn", "p1|1", "p2|1", "p3|2"]
        );
        assert_eq!(
            rows(
                &ctx,
                "SELECT P.* EXCLUDE (META) FROM patient p WHERE p.id = 'p3'"
            )
            .await,
            ["id|gender|birthDate", "p3|female|2001-01-30"]
        );
        let plan = rows(&ctx, "EXPLAIN SELECT birthdate FROM PATIENT").await;
        assert!(plan.iter().any(|l| l.contains("birthDate")), "{plan:?}");
        sql(&ctx, "CREATE TABLE Notes (PatientId VARCHAR, Note VARCHAR)")
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        sql(
            &ctx,
            "INSERT INTO notes (patientid, NOTE) VALUES ('p1', 'x')",
        )
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
        assert_eq!(
            rows(
                &ctx,
                "SELECT n.PATIENTID, note, BirthDate FROM NOTES n JOIN patient p \
                 ON p.id = n.patientId"
            )
            .await,
            ["PatientId|Note|birthDate", "p1|x|1980-05-17"]
        );
        sql(&ctx, "DROP TABLE NOTES").await.unwrap();
        let err = error(&ctx, "SELECT * FROM notes").await;
        assert!(err.contains("notes"), "{err}");
    }

    #[tokio::test]
    async fn names_differing_only_by_case_are_ambiguous_unquoted() {
        let ctx = context();
        let err = error(&ctx, "SELECT a FROM (SELECT 1 AS a, 2 AS \"A\")").await;
        assert!(
            err.contains("column reference \"a\" is ambiguous: A, a"),
            "{err}"
        );
        assert_eq!(
            rows(&ctx, "SELECT \"A\" FROM (SELECT 1 AS a, 2 AS \"A\")").await,
            ["A", "2"]
        );
        let err = error(
            &ctx,
            "WITH t AS (SELECT 1 AS \"birthDate\", 2 AS \"birthdate\") SELECT BIRTHDATE FROM t",
        )
        .await;
        assert!(err.contains("birthDate, birthdate"), "{err}");
        let err = error(
            &ctx,
            "SELECT p.id FROM Patient p JOIN Condition \"P\" ON true",
        )
        .await;
        assert!(
            err.contains("table reference \"p\" is ambiguous: P, p"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn struct_fields_match_any_case() {
        let ctx = context();
        assert_eq!(
            rows(
                &ctx,
                "SELECT p.META.LASTUPDATED AS t FROM Patient p WHERE id = 'p1'"
            )
            .await,
            ["t", "2024"]
        );
        assert_eq!(
            rows(
                &ctx,
                "SELECT meta.lastupdated AS t FROM Patient WHERE id = 'p2'"
            )
            .await,
            ["t", "2025"]
        );
    }

    #[tokio::test]
    async fn browsing_settings_and_functions_are_untouched() {
        let ctx = context();
        assert_eq!(
            rows(
                &ctx,
                "SELECT TABLE_NAME FROM INFORMATION_SCHEMA.TABLES \
                 WHERE TABLE_SCHEMA = 'public' ORDER BY Table_Name"
            )
            .await,
            ["table_name", "Condition", "Patient"]
        );
        let columns = rows(&ctx, "SHOW COLUMNS FROM patient").await;
        assert!(
            columns.iter().any(|r| r.contains("|birthDate|")),
            "{columns:?}"
        );
        sql(&ctx, "SET datafusion.execution.batch_size = 7")
            .await
            .unwrap();
        assert_eq!(
            rows(&ctx, "SHOW datafusion.execution.batch_size").await,
            ["name|value", "datafusion.execution.batch_size|7"]
        );
        assert_eq!(
            rows(
                &ctx,
                "SELECT COUNT(*) AS n, UPPER(MAX(Gender)) AS g FROM Patient"
            )
            .await,
            ["n|g", "3|MALE"]
        );
        assert_eq!(
            rows(
                &ctx,
                "SELECT Value FROM generate_series(1, 2) ORDER BY VALUE"
            )
            .await,
            ["value", "1", "2"]
        );
        let _ = Int64Array::from(vec![1]);
    }
}
