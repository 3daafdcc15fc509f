//! `fhir_refresh`: refresh FHIR tables from SQL.

use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch, StringArray, UInt64Array};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use async_trait::async_trait;
use datafusion::catalog::{Session, TableFunctionArgs, TableFunctionImpl, TableProvider};
use datafusion::common::{ScalarValue, plan_err};
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::error::Result as DfResult;
use datafusion::logical_expr::{Expr, TableType};
use datafusion::physical_plan::ExecutionPlan;

use super::{FhirCatalog, to_datafusion};

/// `SELECT * FROM fhir_refresh('<catalog>' [, 'Patient,Condition'])` exports the types again
/// (all of the catalog's types that have a snapshot when none are given), incrementally when the
/// catalog allows it, and returns one row per type: `resource_type`, `resources`, `changed`,
/// `deleted`, `transaction_time`, `snapshot`. The refresh runs when the statement is planned.
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
        let types: Vec<String> = rest
            .iter()
            .flat_map(|s| s.split(','))
            .map(|t| t.trim().to_owned())
            .filter(|t| !t.is_empty())
            .collect();
        Ok(Arc::new(RefreshTable {
            catalog: catalog.clone(),
            types,
        }))
    }
}

#[derive(Debug)]
struct RefreshTable {
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
    ]))
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
        let types = if self.types.is_empty() {
            self.catalog
                .snapshots()
                .map_err(to_datafusion)?
                .iter()
                .map(|s| s.manifest().resource_type.clone())
                .collect()
        } else {
            self.types.clone()
        };
        let snapshots = self.catalog.refresh(&types).await.map_err(to_datafusion)?;
        let manifests: Vec<_> = snapshots.iter().map(|s| s.manifest()).collect();
        let strings = |f: &dyn Fn(&crate::snapshot::SnapshotManifest) -> String| -> ArrayRef {
            Arc::new(StringArray::from_iter_values(
                manifests.iter().map(|m| f(m)),
            ))
        };
        let counts = |f: &dyn Fn(&crate::snapshot::SnapshotManifest) -> u64| -> ArrayRef {
            Arc::new(UInt64Array::from_iter_values(
                manifests.iter().map(|m| f(m)),
            ))
        };
        let batch = RecordBatch::try_new(
            refresh_schema(),
            vec![
                strings(&|m| m.resource_type.clone()),
                counts(&|m| m.resources()),
                counts(&|m| m.incremental.as_ref().map_or(m.resources(), |i| i.changed)),
                counts(&|m| m.incremental.as_ref().map_or(0, |i| i.deleted.len() as u64)),
                strings(&|m| m.transaction_time.clone()),
                strings(&|m| m.snapshot.clone()),
            ],
        )?;
        Ok(MemorySourceConfig::try_new_exec(
            &[vec![batch]],
            refresh_schema(),
            projection.cloned(),
        )?)
    }
}
