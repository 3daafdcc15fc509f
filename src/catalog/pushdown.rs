//! Filter pushdown into the export itself.
//!
//! Tables are resolved (and exported) while a statement is planned, before DataFusion hands any
//! filter to a table, so [`super::sql`] reads the filters from the SQL text first: in every
//! `SELECT`, the top-level `AND` conjuncts of `WHERE` of the form `column op 'literal'` whose
//! column belongs to a FHIR table referenced exactly once in the statement. Of those:
//!
//! * `"meta_lastUpdated" >= 't'` (or `>`) becomes `_since`: `t` minus two days, since SQL compares
//!   the `lastUpdated` text, whose UTC offset may be anything.
//! * `column = 'value'` on a column of [`SEARCH_PARAMS`] becomes `_typeFilter`, all such
//!   conjuncts of a type joined in one query: `Observation?code=8867-4&status=final`.
//!
//! What reaches the server depends on the catalog's [`PushdownMode`]: `auto` (the default) pushes a
//! search parameter only when the server declares both it (the type's `searchParam`) and
//! `_typeFilter` (see [`Capabilities`](super::Capabilities)), and asks the server only when a
//! statement needs an export and has such a filter; `on` pushes every one; `off` none (nor
//! `_since`). `_since`, which the Bulk Data spec requires of every server, is pushed by `auto`.
//! A server that accepts a filter it does not implement (returning no resources) could make a
//! wrong answer; one that ignores it cannot: DataFusion applies every filter again on the
//! snapshot. A filtered export is kept as its own snapshot
//! (`<Type>@<filters>-<hash>`, see [`Pushdown::snapshot_name`]), used only by statements with the
//! same pushdown; a fresh full snapshot is always preferred and needs no export. `EXPLAIN` shows
//! what the scanned snapshot's export was restricted by (`FhirScanExec: ..., pushed=[...]`).

use std::collections::HashMap;
use std::ops::ControlFlow;
use std::time::{Duration, UNIX_EPOCH};

use datafusion::common::{ResolvedTableReference, TableReference};
use datafusion::sql::parser::{CopyToSource, Statement};
use datafusion::sql::planner::object_name_to_table_reference;
use datafusion::sql::sqlparser::ast::{
    BinaryOperator, Expr, ObjectName, Query, Select, SetExpr, TableFactor, Value, Visit, Visitor,
};

/// Columns whose equality becomes `_typeFilter`: (resource type or `*`, flattened column, search
/// parameter). All are token parameters that the demo server evaluates too; a token search
/// matches any coding, a superset of `coding[0]`, which is all pushdown needs.
pub const SEARCH_PARAMS: &[(&str, &str, &str)] = &[
    ("*", "id", "_id"),
    ("Patient", "gender", "gender"),
    ("Observation", "code_coding_0_code", "code"),
    ("Observation", "category_0_coding_0_code", "category"),
    ("Observation", "status", "status"),
    ("Condition", "code_coding_0_code", "code"),
    (
        "Condition",
        "clinicalStatus_coding_0_code",
        "clinical-status",
    ),
    (
        "Condition",
        "verificationStatus_coding_0_code",
        "verification-status",
    ),
    ("Condition", "category_0_coding_0_code", "category"),
    ("Encounter", "status", "status"),
    ("Encounter", "class_code", "class"),
    ("Procedure", "code_coding_0_code", "code"),
    ("Procedure", "status", "status"),
    ("MedicationRequest", "status", "status"),
    ("MedicationRequest", "intent", "intent"),
    (
        "MedicationRequest",
        "medicationCodeableConcept_coding_0_code",
        "code",
    ),
    ("Immunization", "vaccineCode_coding_0_code", "vaccine-code"),
    ("Immunization", "status", "status"),
    ("DiagnosticReport", "code_coding_0_code", "code"),
    ("DiagnosticReport", "status", "status"),
];

/// The column compared with `_since`.
const LAST_UPDATED: &str = "meta_lastUpdated";

/// How much earlier than the SQL bound `_since` is: `lastUpdated` texts carry offsets from
/// -12:00 to +14:00 and SQL compares them as text.
const SINCE_MARGIN: Duration = Duration::from_secs(2 * 86_400);

/// Which filters a catalog pushes into its exports (per server: `pushdown = "auto" | "on" |
/// "off"`, `--pushdown`): `_since` on `meta_lastUpdated`, and `_typeFilter` for equality on the
/// columns of [`SEARCH_PARAMS`](super::SEARCH_PARAMS).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PushdownMode {
    /// `_since`, and the search parameters the server declares along with `_typeFilter`.
    #[default]
    Auto,
    /// Every filter that can be pushed, declared or not.
    On,
    /// None: every export is a full one.
    Off,
}

impl std::str::FromStr for PushdownMode {
    type Err = crate::Error;

    /// `auto`, `on` or `off`.
    fn from_str(s: &str) -> crate::Result<Self> {
        match s {
            "auto" => Ok(Self::Auto),
            "on" => Ok(Self::On),
            "off" => Ok(Self::Off),
            _ => Err(crate::Error::config(format!(
                "pushdown {s:?}: expected auto, on or off"
            ))),
        }
    }
}

/// What an export of one resource type is restricted to.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Pushdown {
    /// `_since`: only resources changed after this instant.
    pub since: Option<String>,
    /// One `_typeFilter` query (`Type?param=value&...`, its parameters ANDed).
    pub type_filter: Option<String>,
}

impl Pushdown {
    /// True when nothing is pushed (a full export).
    pub fn is_empty(&self) -> bool {
        self.since.is_none() && self.type_filter.is_none()
    }

    /// The pushdown of `conjuncts` (all on a table of `resource_type`), with only the search
    /// parameters `supported` admits; the ones that cannot be pushed are left to DataFusion.
    pub(crate) fn from_conjuncts(
        resource_type: &str,
        conjuncts: &[Conjunct],
        supported: &dyn Fn(&str) -> bool,
    ) -> Self {
        let mut since: Option<u64> = None;
        let mut params: Vec<String> = Vec::new();
        for c in conjuncts {
            if c.column.eq_ignore_ascii_case(LAST_UPDATED) && c.op != Op::Eq {
                let Ok(nanos) =
                    arrow::compute::kernels::cast_utils::string_to_timestamp_nanos(&c.value)
                else {
                    continue;
                };
                let ms = (nanos / 1_000_000).max(0) as u64;
                since = Some(since.map_or(ms, |s| s.max(ms)));
                continue;
            }
            // In a token search a comma means "or", '|' splits system and code, '$' and '\\'
            // are separators and escapes: the server would not match such a value literally,
            // so it is left to DataFusion.
            if c.op != Op::Eq || c.value.contains([',', '|', '$', '\\']) {
                continue;
            }
            let param = SEARCH_PARAMS.iter().find(|(t, column, _)| {
                (*t == "*" || *t == resource_type) && column.eq_ignore_ascii_case(&c.column)
            });
            if let Some((_, _, param)) = param.filter(|(_, _, p)| supported(p)) {
                let value: String =
                    url::form_urlencoded::byte_serialize(c.value.as_bytes()).collect();
                let param = format!("{param}={value}");
                if !params.contains(&param) {
                    params.push(param);
                }
            }
        }
        params.sort();
        Self {
            since: since.map(|ms| {
                let t = UNIX_EPOCH + Duration::from_millis(ms);
                crate::snapshot::rfc3339(t.checked_sub(SINCE_MARGIN).unwrap_or(UNIX_EPOCH))
            }),
            type_filter: (!params.is_empty())
                .then(|| format!("{resource_type}?{}", params.join("&"))),
        }
    }

    /// The name of the snapshot holding an export of `resource_type` with this pushdown: the
    /// type itself when nothing is pushed, else `<Type>@<readable filters>-<hash>`.
    pub fn snapshot_name(&self, resource_type: &str) -> String {
        if self.is_empty() {
            return resource_type.to_owned();
        }
        use sha2::Digest;
        let text = format!("{:?}|{:?}", self.since, self.type_filter);
        let hash = sha2::Sha256::digest(text.as_bytes());
        let hex: String = hash[..4].iter().map(|b| format!("{b:02x}")).collect();
        let query = self
            .type_filter
            .as_deref()
            .and_then(|f| f.split_once('?'))
            .map(|(_, q)| q.to_owned());
        let since = self.since.as_ref().map(|s| format!("_since={s}"));
        let mut readable: String = [query, since]
            .into_iter()
            .flatten()
            .collect::<Vec<_>>()
            .join("&")
            .chars()
            .map(|c| match c {
                'a'..='z' | 'A'..='Z' | '0'..='9' | '-' | '_' | '.' | '=' => c,
                _ => '_',
            })
            .collect();
        readable.truncate(80);
        format!("{resource_type}@{readable}-{hex}")
    }
}

/// A comparison operator of a [`Conjunct`], the column on the left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Op {
    Eq,
    Gt,
    GtEq,
}

/// `column op 'value'` from a `WHERE` clause.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Conjunct {
    pub(crate) column: String,
    pub(crate) op: Op,
    pub(crate) value: String,
}

/// The tables a statement references, with how often each is referenced and the conjuncts on
/// it. A table referenced twice gets no pushdown (its two uses may want different rows).
#[derive(Debug, Default)]
pub(crate) struct Filters {
    tables: HashMap<ResolvedTableReference, (usize, Vec<Conjunct>)>,
}

impl Filters {
    /// The filters of `statement`; names resolve against the default catalog and schema.
    pub(crate) fn of(
        statement: &Statement,
        normalize: bool,
        default_catalog: &str,
        default_schema: &str,
    ) -> Self {
        let mut collector = Collector {
            normalize,
            default_catalog,
            default_schema,
            filters: Filters::default(),
        };
        collector.statement(statement);
        collector.filters
    }

    /// The conjuncts on `table`, when the statement references it exactly once.
    pub(crate) fn conjuncts(&self, table: &ResolvedTableReference) -> &[Conjunct] {
        match self.tables.get(table) {
            Some((1, conjuncts)) => conjuncts,
            _ => &[],
        }
    }
}

struct Collector<'a> {
    normalize: bool,
    default_catalog: &'a str,
    default_schema: &'a str,
    filters: Filters,
}

impl Collector<'_> {
    fn statement(&mut self, statement: &Statement) {
        match statement {
            Statement::Statement(s) => {
                let _ = s.visit(self);
            }
            Statement::Explain(e) => self.statement(&e.statement),
            Statement::CopyTo(c) => match &c.source {
                CopyToSource::Query(q) => {
                    let _ = q.visit(self);
                }
                CopyToSource::Relation(name) => {
                    let _ = self.pre_visit_relation(name);
                }
            },
            _ => {}
        }
    }

    fn resolve(&self, name: &ObjectName) -> Option<ResolvedTableReference> {
        let reference: TableReference =
            object_name_to_table_reference(name.clone(), self.normalize).ok()?;
        Some(reference.resolve(self.default_catalog, self.default_schema))
    }

    fn set_expr(&mut self, body: &SetExpr) {
        match body {
            SetExpr::Select(select) => self.select(select),
            SetExpr::SetOperation { left, right, .. } => {
                self.set_expr(left);
                self.set_expr(right);
            }
            // Nested queries are visited on their own.
            _ => {}
        }
    }

    fn select(&mut self, select: &Select) {
        let Some(selection) = &select.selection else {
            return;
        };
        // Every relation of FROM: (table, alias); `None` for anything but a named table.
        let relations: Vec<(Option<ResolvedTableReference>, Option<String>)> = select
            .from
            .iter()
            .flat_map(|t| std::iter::once(&t.relation).chain(t.joins.iter().map(|j| &j.relation)))
            .map(|factor| match factor {
                TableFactor::Table {
                    name,
                    alias,
                    args: None,
                    ..
                } => (
                    self.resolve(name),
                    alias.as_ref().map(|a| a.name.value.clone()),
                ),
                _ => (None, None),
            })
            .collect();
        let mut conjuncts = Vec::new();
        split_and(selection, &mut conjuncts);
        for expr in conjuncts {
            let Some((qualifier, conjunct)) = comparison(expr) else {
                continue;
            };
            let table = match qualifier {
                None if relations.len() == 1 => relations[0].0.as_ref(),
                None => None,
                Some(q) => {
                    let mut matching = relations.iter().filter(|(table, alias)| match alias {
                        Some(alias) => alias.eq_ignore_ascii_case(&q),
                        None => table
                            .as_ref()
                            .is_some_and(|t| t.table.eq_ignore_ascii_case(&q)),
                    });
                    match (matching.next(), matching.next()) {
                        (Some((table, _)), None) => table.as_ref(),
                        _ => None,
                    }
                }
            };
            if let Some(table) = table {
                let entry = self.filters.tables.entry(table.clone()).or_default();
                entry.1.push(conjunct);
            }
        }
    }
}

impl Visitor for Collector<'_> {
    type Break = ();

    fn pre_visit_query(&mut self, query: &Query) -> ControlFlow<()> {
        self.set_expr(&query.body);
        ControlFlow::Continue(())
    }

    fn pre_visit_relation(&mut self, relation: &ObjectName) -> ControlFlow<()> {
        if let Some(table) = self.resolve(relation) {
            self.filters.tables.entry(table).or_default().0 += 1;
        }
        ControlFlow::Continue(())
    }
}

/// The top-level `AND` operands of `expr`.
fn split_and<'e>(expr: &'e Expr, out: &mut Vec<&'e Expr>) {
    match expr {
        Expr::BinaryOp {
            left,
            op: BinaryOperator::And,
            right,
        } => {
            split_and(left, out);
            split_and(right, out);
        }
        Expr::Nested(inner) => split_and(inner, out),
        other => out.push(other),
    }
}

/// `[qualifier.]column op 'text'` (either way round), as (qualifier, conjunct).
fn comparison(expr: &Expr) -> Option<(Option<String>, Conjunct)> {
    let Expr::BinaryOp { left, op, right } = expr else {
        return None;
    };
    let column = |e: &Expr| match e {
        Expr::Identifier(c) => Some((None, c.value.clone())),
        Expr::CompoundIdentifier(parts) if parts.len() == 2 => {
            Some((Some(parts[0].value.clone()), parts[1].value.clone()))
        }
        _ => None,
    };
    let text = |e: &Expr| match e {
        Expr::Value(v) => match &v.value {
            Value::SingleQuotedString(s) => Some(s.clone()),
            _ => None,
        },
        _ => None,
    };
    let (qualified, value, op) = match (column(left), text(right), column(right), text(left)) {
        (Some(c), Some(v), _, _) => (c, v, op.clone()),
        (_, _, Some(c), Some(v)) => {
            let flipped = match op {
                BinaryOperator::Lt => BinaryOperator::Gt,
                BinaryOperator::LtEq => BinaryOperator::GtEq,
                other => other.clone(),
            };
            (c, v, flipped)
        }
        _ => return None,
    };
    let op = match op {
        BinaryOperator::Eq => Op::Eq,
        BinaryOperator::Gt => Op::Gt,
        BinaryOperator::GtEq => Op::GtEq,
        _ => return None,
    };
    let (qualifier, column) = qualified;
    Some((qualifier, Conjunct { column, op, value }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::sql::parser::DFParser;

    fn pushdowns(sql: &str) -> Vec<(String, Pushdown)> {
        let statement = DFParser::parse_sql(sql).unwrap().pop_front().unwrap();
        let filters = Filters::of(&statement, true, "src", "fhir");
        let mut out: Vec<(String, Pushdown)> = ["Patient", "Observation", "Condition"]
            .iter()
            .map(|t| {
                let table = TableReference::bare(t.to_lowercase()).resolve("src", "fhir");
                (
                    t.to_string(),
                    Pushdown::from_conjuncts(t, filters.conjuncts(&table), &|_| true),
                )
            })
            .filter(|(_, p)| !p.is_empty())
            .collect();
        out.sort();
        out
    }

    fn filter(f: &str) -> Pushdown {
        Pushdown {
            since: None,
            type_filter: Some(f.to_owned()),
        }
    }

    #[test]
    fn equalities_on_search_parameters_become_type_filters() {
        assert_eq!(
            pushdowns(
                "SELECT id FROM observation WHERE code_coding_0_code = '8867-4' AND status = 'final' AND value > 3"
            ),
            [(
                "Observation".into(),
                filter("Observation?code=8867-4&status=final")
            )]
        );
        assert_eq!(
            pushdowns("SELECT * FROM src.fhir.patient p WHERE 'male' = p.gender OR p.id = 'x'"),
            []
        );
        assert_eq!(
            pushdowns(
                "EXPLAIN SELECT count(*) FROM patient p JOIN condition c ON c.subject_reference = p.id \
                 WHERE p.gender = 'female' AND (c.code_coding_0_code = 'http://x/1 a') AND gender = 'x'"
            ),
            [
                (
                    "Condition".into(),
                    filter("Condition?code=http%3A%2F%2Fx%2F1+a")
                ),
                ("Patient".into(), filter("Patient?gender=female")),
            ]
        );
    }

    #[test]
    fn tables_used_twice_or_unknown_columns_push_nothing() {
        assert_eq!(
            pushdowns(
                "SELECT * FROM patient WHERE gender = 'male' UNION ALL SELECT * FROM patient"
            ),
            []
        );
        assert_eq!(
            pushdowns("SELECT * FROM patient WHERE name_0_family = 'X' AND gender = 'a,b'"),
            []
        );
        for value in ["http://x|1", "a$b", "a\\,b"] {
            let sql = format!("SELECT * FROM observation WHERE code_coding_0_code = '{value}'");
            assert_eq!(pushdowns(&sql), [], "{value}");
        }
    }

    #[test]
    fn only_supported_parameters_are_pushed() {
        let statement = DFParser::parse_sql(
            "SELECT id FROM observation WHERE code_coding_0_code = 'x' AND status = 'final'",
        )
        .unwrap()
        .pop_front()
        .unwrap();
        let filters = Filters::of(&statement, true, "src", "fhir");
        let table = TableReference::bare("observation").resolve("src", "fhir");
        let conjuncts = filters.conjuncts(&table);
        let code_only = Pushdown::from_conjuncts("Observation", conjuncts, &|p| p == "code");
        assert_eq!(code_only, filter("Observation?code=x"));
        assert!(Pushdown::from_conjuncts("Observation", conjuncts, &|_| false).is_empty());
        assert_eq!("auto".parse::<PushdownMode>().unwrap(), PushdownMode::Auto);
        assert_eq!("off".parse::<PushdownMode>().unwrap(), PushdownMode::Off);
        assert!("yes".parse::<PushdownMode>().is_err());
    }

    #[test]
    fn last_updated_becomes_since_with_a_margin() {
        let p = pushdowns(
            "SELECT * FROM patient WHERE \"meta_lastUpdated\" >= '2024-03-03T00:00:00Z' AND gender = 'male'",
        );
        assert_eq!(
            p,
            [(
                "Patient".into(),
                Pushdown {
                    since: Some("2024-03-01T00:00:00.000Z".into()),
                    type_filter: Some("Patient?gender=male".into()),
                }
            )]
        );
        let name = p[0].1.snapshot_name("Patient");
        assert!(
            name.starts_with("Patient@gender=male__since=2024-03-01T00_00_00.000Z-"),
            "{name}"
        );
        assert_eq!(Pushdown::default().snapshot_name("Patient"), "Patient");
    }
}
