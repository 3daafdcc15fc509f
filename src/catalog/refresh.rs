//! `fhir_refresh`: refresh FHIR tables from SQL.

use std::sync::Arc;

use arrow::array::{
    ArrayRef, ListArray, ListBuilder, RecordBatch, StringArray, StringBuilder, UInt64Array,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use async_trait::async_trait;
use datafusion::catalog::{Session, TableFunctionArgs, TableFunctionImpl, TableProvider};
use datafusion::common::{ScalarValue, plan_err};
use datafusion::error::Result as DfResult;
use datafusion::logical_expr::{Expr, TableType};
use datafusion::physical_plan::ExecutionPlan;

use super::effect::{Effect, FhirEffectExec};
use super::{FhirCatalog, to_datafusion};
use crate::snapshot::{Snapshot, SnapshotManifest};

/// `SELECT * FROM fhir_refresh('<catalog>' [, 'Patient,Condition'])` exports the types again
/// (all of the catalog's types that have a snapshot when none are given), incrementally when the
/// catalog allows it, and returns one row per type: `resource_type`, `resources`, `changed`,
/// `deleted`, `transaction_time`, `snapshot`, `warnings` (what the export and conversion of the type
/// finished despite, as text: the server's OperationOutcomes, skipped lines). The arguments and types are checked when the
/// statement is planned, and the types to refresh chosen then; the refresh runs when it is
/// executed: `EXPLAIN` exports nothing and shows
/// `FhirEffectExec: action=refresh, catalog=<catalog>, types=[<Type>, ...]`.
#[derive(Debug)]
pub struct RefreshFunction;

impl TableFunctionImpl for RefreshFunction {
    fn call_with_args(&self, args: TableFunctionArgs) -> DfResult<Arc<dyn TableProvider>> {
        let strings: Vec<String> = args
            .exprs()
            .iter()
            .map(|e| match e {
                Expr::Literal(ScalarValue::Utf8(Some(s)) | ScalarValue::Utf8View(Some(s)), _) => {
                    Ok(s.clone())
                }
                other => plan_err!("fhir_refresh takes string literals, got {other}"),
            })
            .collect::<DfResult<_>>()?;
        let Some((name, rest)) = strings.split_first() else {
            return plan_err!("fhir_refresh('<catalog>' [, '<Type>,<Type>'])");
        };
        let Some(catalog) = args.session().catalog_list().catalog(name) else {
            return plan_err!("fhir_refresh: no catalog {name}");
        };
        let Some(catalog) = catalog.downcast_ref::<FhirCatalog>() else {
            return plan_err!("fhir_refresh: {name} is not a FHIR catalog");
        };
        let names: Vec<String> = rest
            .iter()
            .flat_map(|s| s.split(','))
            .map(|t| t.trim().to_owned())
            .filter(|t| !t.is_empty())
            .collect();
        let types = if names.is_empty() {
            catalog
                .snapshots()
                .map_err(to_datafusion)?
                .iter()
                .map(|s| s.manifest().resource_type.clone())
                .collect()
        } else {
            catalog.known_types(&names).map_err(to_datafusion)?
        };
        Ok(Arc::new(RefreshTable {
            name: name.clone(),
            catalog: catalog.clone(),
            types,
        }))
    }
}

/// The refresh of `types` (resolved resource types) of the catalog registered as `name`.
#[derive(Debug)]
struct RefreshTable {
    name: String,
    catalog: FhirCatalog,
    types: Vec<String>,
}

fn refresh_schema() -> SchemaRef {
    let utf8 = |n: &str| Field::new(n, DataType::Utf8, false);
    let count = |n: &str| Field::new(n, DataType::UInt64, false);
    Arc::new(Schema::new(vec![
        utf8("resource_type"),
        count("resources"),
        count("changed"),
        count("deleted"),
        utf8("transaction_time"),
        utf8("snapshot"),
        Field::new(
            "warnings",
            DataType::List(Arc::new(Field::new_list_field(DataType::Utf8, false))),
            false,
        ),
    ]))
}

/// One row per refreshed snapshot.
fn refresh_batch(snapshots: &[Snapshot]) -> DfResult<RecordBatch> {
    let manifests: Vec<_> = snapshots.iter().map(|s| s.manifest()).collect();
    let strings = |f: &dyn Fn(&SnapshotManifest) -> String| -> ArrayRef {
        Arc::new(StringArray::from_iter_values(
            manifests.iter().map(|m| f(m)),
        ))
    };
    let counts = |f: &dyn Fn(&SnapshotManifest) -> u64| -> ArrayRef {
        Arc::new(UInt64Array::from_iter_values(
            manifests.iter().map(|m| f(m)),
        ))
    };
    Ok(RecordBatch::try_new(
        refresh_schema(),
        vec![
            strings(&|m| m.resource_type.clone()),
            counts(&|m| m.resources()),
            counts(&|m| m.incremental.as_ref().map_or(m.resources(), |i| i.changed)),
            counts(&|m| m.incremental.as_ref().map_or(0, |i| i.deleted.len() as u64)),
            strings(&|m| m.transaction_time.clone()),
            strings(&|m| m.snapshot.clone()),
            Arc::new(warning_lists(&manifests)),
        ],
    )?)
}

/// Each manifest's warnings as a list of texts.
fn warning_lists(manifests: &[&SnapshotManifest]) -> ListArray {
    let values = StringBuilder::new();
    let mut lists =
        ListBuilder::new(values).with_field(Arc::new(Field::new_list_field(DataType::Utf8, false)));
    for m in manifests {
        for w in &m.warnings {
            lists.values().append_value(w.to_string());
        }
        lists.append(true);
    }
    lists.finish()
}

#[async_trait]
impl TableProvider for RefreshTable {
    fn schema(&self) -> SchemaRef {
        refresh_schema()
    }

    fn table_type(&self) -> TableType {
        TableType::Temporary
    }

    async fn scan(
        &self,
        _state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let (catalog, types) = (self.catalog.clone(), self.types.clone());
        let effect: Effect = Arc::new(move || {
            let (catalog, types) = (catalog.clone(), types.clone());
            Box::pin(async move {
                let snapshots = catalog.refresh(&types).await.map_err(to_datafusion)?;
                refresh_batch(&snapshots)
            })
        });
        let details = vec![
            ("catalog", self.name.clone()),
            ("types", format!("[{}]", self.types.join(", "))),
        ];
        let plan =
            FhirEffectExec::try_new("refresh", details, &refresh_schema(), projection, effect)?;
        Ok(Arc::new(plan))
    }
}
