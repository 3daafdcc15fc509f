//! `fhir_snapshot`: read an earlier export of a type, a version of its Delta table.

use std::sync::Arc;

use datafusion::catalog::{TableFunctionArgs, TableFunctionImpl, TableProvider};
use datafusion::common::{ScalarValue, plan_err};
use datafusion::error::Result as DfResult;
use datafusion::logical_expr::Expr;

use super::{FhirCatalog, to_datafusion};
use crate::snapshot::{mode_key, open_version};

/// `SELECT * FROM fhir_snapshot('<catalog>', '<Type>', <version>)` reads the type's table as
/// the export that made Delta version `<version>` left it (`fhirflight cache history` lists the
/// versions with their exports), in the catalog's mode. It never exports: an earlier version is
/// what it was. A version whose files were removed (superseded snapshots go once nobody reads
/// them) fails, naming the missing file.
#[derive(Debug)]
pub struct SnapshotFunction;

impl TableFunctionImpl for SnapshotFunction {
    fn call_with_args(&self, args: TableFunctionArgs) -> DfResult<Arc<dyn TableProvider>> {
        let usage = "fhir_snapshot('<catalog>', '<Type>', <version>)";
        let (name, table, version) = match args.exprs() {
            [catalog, table, version] => (text(catalog), text(table), number(version)),
            _ => return plan_err!("{usage}"),
        };
        let (Some(name), Some(table), Some(version)) = (name, table, version) else {
            return plan_err!("{usage}: two string literals and a version number");
        };
        let Some(catalog) = args.session().catalog_list().catalog(&name) else {
            return plan_err!("fhir_snapshot: no catalog {name}");
        };
        let Some(catalog) = catalog.downcast_ref::<FhirCatalog>() else {
            return plan_err!("fhir_snapshot: {name} is not a FHIR catalog");
        };
        let Some(resource_type) = catalog.resource_type(&table) else {
            return plan_err!("fhir_snapshot: {table} is not a table of {name}");
        };
        let mode = mode_key(&catalog.exporter.options.mode);
        let table = catalog
            .store()
            .table_url(&resource_type, &mode)
            .map_err(to_datafusion)?;
        open_version(&table, version, args.session()).map_err(to_datafusion)
    }
}

fn text(expr: &Expr) -> Option<String> {
    match expr {
        Expr::Literal(ScalarValue::Utf8(Some(s)) | ScalarValue::Utf8View(Some(s)), _) => {
            Some(s.clone())
        }
        _ => None,
    }
}

fn number(expr: &Expr) -> Option<u64> {
    match expr {
        Expr::Literal(ScalarValue::Int64(Some(n)), _) => u64::try_from(*n).ok(),
        _ => None,
    }
}
