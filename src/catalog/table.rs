//! `FhirTable`: one resource type of one snapshot, scanned with DataFusion's Parquet reader.

use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use async_trait::async_trait;
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::Statistics;
use datafusion::common::stats::Precision;
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::{
    ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl,
};
use datafusion::error::Result as DfResult;
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown, TableType};
use datafusion::physical_plan::ExecutionPlan;

use crate::ndjson::TableMode;
use crate::snapshot::{Snapshot, mode_key};

/// A table over the Parquet files of one snapshot of one resource type.
///
/// Scans reuse DataFusion's Parquet data source: projection and limit are pushed into the
/// reader, and filters prune row groups with their statistics (they stay `Inexact`, DataFusion
/// applies them again). Row counts come from the snapshot's manifest. In `EXPLAIN`, the
/// `DataSourceExec` lists the files, `<Type>/<snapshot>/<mode>/part-<n>.parquet`.
#[derive(Debug)]
pub struct FhirTable {
    snapshot: Snapshot,
    mode: String,
    schema: SchemaRef,
    listing: ListingTable,
}

impl FhirTable {
    /// The table of `mode` of `snapshot`, which must have it.
    pub fn try_new(snapshot: Snapshot, mode: &TableMode) -> crate::Result<Self> {
        let mode = mode_key(mode);
        let schema = snapshot.schema(&mode)?;
        let listing = listing_table(&snapshot, &mode, Arc::clone(&schema))
            .map_err(|e| crate::Error::Snapshot(format!("{}: {e}", snapshot.dir().display())))?;
        Ok(Self {
            snapshot,
            mode,
            schema,
            listing,
        })
    }

    /// The snapshot this table reads.
    pub fn snapshot(&self) -> &Snapshot {
        &self.snapshot
    }

    /// The snapshot table read (`flattened`, `nested`, see [`mode_key`]).
    pub fn mode(&self) -> &str {
        &self.mode
    }
}

fn listing_table(snapshot: &Snapshot, mode: &str, schema: SchemaRef) -> DfResult<ListingTable> {
    let dir = snapshot.table_dir(mode);
    let url = ListingTableUrl::parse(format!("{}/", dir.display()))?;
    let options =
        ListingOptions::new(Arc::new(ParquetFormat::default())).with_file_extension(".parquet");
    let config = ListingTableConfig::new(url)
        .with_listing_options(options)
        .with_schema(schema);
    ListingTable::try_new(config)
}

#[async_trait]
impl TableProvider for FhirTable {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        self.listing.scan(state, projection, filters, limit).await
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> DfResult<Vec<TableProviderFilterPushDown>> {
        Ok(vec![TableProviderFilterPushDown::Inexact; filters.len()])
    }

    fn statistics(&self) -> Option<Statistics> {
        let table = self.snapshot.table(&self.mode)?;
        let mut stats = Statistics::new_unknown(&self.schema);
        stats.num_rows = Precision::Exact(table.rows as usize);
        stats.total_byte_size = Precision::Inexact(table.bytes as usize);
        Some(stats)
    }
}

/// Converts a crate error for DataFusion (the one place where that happens).
pub(crate) fn to_datafusion(e: crate::Error) -> datafusion::error::DataFusionError {
    datafusion::error::DataFusionError::External(Box::new(e))
}
