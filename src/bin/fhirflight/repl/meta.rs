//! The shell's meta commands, with a backslash as in datafusion-cli and psql. None of them
//! exports: tables and columns are what browsing knows (`information_schema`), exports and
//! snapshots what the session's catalogs hold.

use std::sync::Arc;
use std::time::SystemTime;

use datafusion::arrow::array::{ArrayRef, RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use fhirflight::catalog::{ExportState, FhirCatalog};
use fhirflight::size::display_rounded;
use fhirflight::snapshot::list_cache;
use fhirflight::{Error, Result};

use super::{Flow, Shell};
use crate::cache::age;

/// A meta command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Meta {
    /// `\d`: the tables of every catalog.
    Tables,
    /// `\d NAME`: a table's columns (`[catalog.][schema.]table`).
    Describe(String),
    /// `\exports`: the session's running and recent exports.
    Exports,
    /// `\snapshots`: the committed snapshots of the session's sources.
    Snapshots,
    /// `\?`: the list of meta commands.
    Help,
    /// `\q`: leave the shell.
    Quit,
}

/// What `\?` prints.
pub(crate) const HELP: &str = "\
SQL statements end with `;` (a statement may span lines). Meta commands, on a line of their own:
  \\d              list tables (resource types, views) of every catalog
  \\d NAME         describe a table's columns (no export: a type without a snapshot says so)
  \\exports        exports of this session, running and recent
  \\snapshots      snapshots in the cache of this session's sources
  \\?              this help
  \\q              quit (also Ctrl-D)
Tab completes table and column names. Ctrl-C cancels the running statement: the export it
waited for runs on and commits its snapshot.";

impl Meta {
    /// Parses a line that starts with `\`.
    pub(crate) fn parse(line: &str) -> Result<Self> {
        let mut words = line.split_whitespace();
        let command = words.next().unwrap_or_default();
        let argument = words.next();
        let meta = match (command, argument) {
            ("\\d", None) => Meta::Tables,
            ("\\d", Some(name)) => Meta::Describe(name.to_owned()),
            ("\\exports", _) => Meta::Exports,
            ("\\snapshots", _) => Meta::Snapshots,
            ("\\?", _) => Meta::Help,
            ("\\q", _) => Meta::Quit,
            _ => {
                return Err(Error::invalid_request(format!(
                    "`{line}` is no meta command; \\? lists them"
                )));
            }
        };
        let extra = match meta {
            Meta::Describe(_) => words.next(),
            _ => argument,
        };
        match extra {
            Some(extra) => Err(Error::invalid_request(format!(
                "`{line}`: unexpected `{extra}`; \\? lists the meta commands"
            ))),
            None => Ok(meta),
        }
    }
}

impl Shell {
    /// Runs a meta command.
    pub(super) async fn meta(&self, meta: Meta) -> Result<Flow> {
        match meta {
            Meta::Tables => {
                let (schema, batches) = self.browse(TABLES_QUERY).await?;
                self.show(schema, batches).await
            }
            Meta::Describe(name) => {
                let (schema, batches) = self.browse(&columns_query(&name)?).await?;
                if batches.iter().any(|b| b.num_rows() > 0) {
                    return self.show(schema, batches).await;
                }
                let table = name
                    .rsplit('.')
                    .next()
                    .unwrap_or_default()
                    .trim_matches('"');
                let catalogs = FhirCatalog::all_in(self.ctx());
                if !catalogs
                    .iter()
                    .any(|(_, c)| c.resource_type(table).is_some())
                {
                    return Err(Error::not_found("table", name));
                }
                // Its columns come from its snapshot: browsing does not export to learn them.
                println!(
                    "{name}: not exported yet; a statement that reads it exports it, then \\d shows its columns"
                );
                Ok(Flow::Continue)
            }
            Meta::Exports => {
                let mut rows = Vec::new();
                for (name, catalog) in FhirCatalog::all_in(self.ctx()) {
                    for export in catalog.exports() {
                        let p = &export.progress;
                        let state = match &export.state {
                            ExportState::Running => p.phase.to_string(),
                            ExportState::Done => "done".to_owned(),
                            ExportState::Failed(e) => format!("failed: {e}"),
                            ExportState::Cancelled => "cancelled".to_owned(),
                        };
                        let started = SystemTime::now()
                            .duration_since(export.started)
                            .unwrap_or_default();
                        rows.push([
                            name.clone(),
                            export.id.to_string(),
                            export.request.types.join(","),
                            state,
                            format!("{}/{}", p.files, p.files_total),
                            display_rounded(p.bytes),
                            format!("{} ago", age(started)),
                        ]);
                    }
                }
                let columns = [
                    "catalog",
                    "id",
                    "types",
                    "state",
                    "files",
                    "downloaded",
                    "started",
                ];
                self.show_text(&columns, rows).await
            }
            Meta::Snapshots => {
                let mut rows = Vec::new();
                for (name, catalog) in FhirCatalog::all_in(self.ctx()) {
                    let dir = catalog.store().dir();
                    let Some(root) = dir.parent() else { continue };
                    let sources = list_cache(root)?;
                    for snapshot in sources
                        .iter()
                        .filter(|s| s.dir == dir)
                        .flat_map(|s| &s.snapshots)
                    {
                        rows.push([
                            name.clone(),
                            snapshot.name.clone(),
                            snapshot.resources.to_string(),
                            display_rounded(snapshot.bytes()),
                            age(snapshot.age()),
                            snapshot.transaction_time.clone(),
                        ]);
                    }
                }
                let columns = [
                    "catalog",
                    "table",
                    "rows",
                    "size",
                    "age",
                    "transaction_time",
                ];
                self.show_text(&columns, rows).await
            }
            Meta::Help => {
                println!("{HELP}");
                Ok(Flow::Continue)
            }
            Meta::Quit => Ok(Flow::Quit),
        }
    }

    /// Writes `rows` of text under `columns` as a statement's result.
    async fn show_text<const N: usize>(
        &self,
        columns: &[&str; N],
        rows: Vec<[String; N]>,
    ) -> Result<Flow> {
        let fields: Vec<Field> = columns
            .iter()
            .map(|c| Field::new(*c, DataType::Utf8, false))
            .collect();
        let schema = SchemaRef::new(Schema::new(fields));
        let arrays: Vec<ArrayRef> = (0..N)
            .map(|i| {
                Arc::new(StringArray::from_iter_values(rows.iter().map(|r| &r[i]))) as ArrayRef
            })
            .collect();
        let batch = RecordBatch::try_new(Arc::clone(&schema), arrays)?;
        self.show(schema, vec![batch]).await
    }
}

/// The browsing query of a table's columns: `name` is `table`, `schema.table` or
/// `catalog.schema.table`, matched case-insensitively as unquoted names are.
pub(crate) fn columns_query(name: &str) -> Result<String> {
    let parts: Vec<&str> = name.split('.').collect();
    if parts.len() > 3 || parts.iter().any(|p| p.is_empty()) {
        return Err(Error::invalid_request(format!(
            "{name:?}: expected TABLE, SCHEMA.TABLE or CATALOG.SCHEMA.TABLE"
        )));
    }
    let keys = ["table_catalog", "table_schema", "table_name"];
    let conditions: Vec<String> = keys[3 - parts.len()..]
        .iter()
        .zip(&parts)
        .map(|(key, part)| {
            let literal = part.trim_matches('"').replace('\'', "''");
            format!("lower({key}) = lower('{literal}')")
        })
        .collect();
    Ok(format!(
        "SELECT table_catalog, column_name, data_type, is_nullable \
         FROM information_schema.columns WHERE {} ORDER BY table_catalog, table_schema, table_name, ordinal_position",
        conditions.join(" AND ")
    ))
}

/// The browsing query of every table.
pub(crate) const TABLES_QUERY: &str = "SELECT table_catalog, table_schema, table_name, table_type \
     FROM information_schema.tables WHERE table_schema <> 'information_schema' \
     ORDER BY table_catalog, table_schema, table_name";

/// The names Tab completes: tables and their known columns.
pub(crate) const NAMES_QUERY: &str = "SELECT table_name FROM information_schema.tables \
     WHERE table_schema <> 'information_schema' \
     UNION SELECT column_name FROM information_schema.columns \
     WHERE table_schema <> 'information_schema'";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meta_commands_parse_and_wrong_ones_say_so() {
        assert_eq!(Meta::parse("\\d").unwrap(), Meta::Tables);
        assert_eq!(
            Meta::parse("\\d  Patient ").unwrap(),
            Meta::Describe("Patient".into())
        );
        assert_eq!(Meta::parse("\\exports").unwrap(), Meta::Exports);
        assert_eq!(Meta::parse("\\q").unwrap(), Meta::Quit);
        let error = Meta::parse("\\dx").unwrap_err().to_string();
        assert!(error.contains("`\\dx` is no meta command"), "{error}");
        assert!(
            Meta::parse("\\q now")
                .unwrap_err()
                .to_string()
                .contains("unexpected `now`")
        );
    }

    #[test]
    fn describing_matches_the_parts_given_and_quotes_literals() {
        let query = columns_query("fhir.Patient").unwrap();
        assert!(query.contains(
            "WHERE lower(table_schema) = lower('fhir') AND lower(table_name) = lower('Patient')"
        ));
        assert!(columns_query("it's").unwrap().contains("lower('it''s')"));
        assert!(columns_query("a.b.c.d").is_err());
        assert!(columns_query("a..b").is_err());
    }
}
