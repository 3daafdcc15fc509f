//! `FhirTable`: one resource type of one snapshot, scanned with DataFusion's Parquet reader
//! under a [`FhirScanExec`] that tells `EXPLAIN` which snapshot and export filters it reads.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use async_trait::async_trait;
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::Statistics;
use datafusion::common::config::ConfigOptions;
use datafusion::common::stats::Precision;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::{
    ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl,
};
use datafusion::error::Result as DfResult;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown, TableType};
use datafusion::physical_expr::{PhysicalExpr, PhysicalSortExpr};
use datafusion::physical_plan::execution_plan::{
    CardinalityEffect, ChildrenPropertiesMode, ReplaceChildrenOptions,
};
use datafusion::physical_plan::filter_pushdown::{
    ChildPushdownResult, FilterDescription, FilterPushdownPhase, FilterPushdownPropagation,
};
use datafusion::physical_plan::projection::ProjectionExec;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    ChildStats, DisplayAs, DisplayFormatType, ExecutionPlan, PlanProperties,
    SortOrderPushdownResult, StatisticsArgs,
};
use futures::StreamExt;

use crate::ndjson::TableMode;
use crate::snapshot::{Lease, Snapshot, mode_key};

/// A table over the Parquet files of one snapshot of one resource type, or of a view over it.
///
/// Scans reuse DataFusion's Parquet data source: projection and limit are pushed into the
/// reader, and filters prune row groups with their statistics (they stay `Inexact`, DataFusion
/// applies them again). Row counts come from the snapshot's manifest. In `EXPLAIN`, a
/// [`FhirScanExec`] names the snapshot and the filters pushed into its export, above the
/// `DataSourceExec` that lists the files, `<Type>/<snapshot>/<mode>/part-<n>.parquet`.
#[derive(Debug)]
pub struct FhirTable {
    snapshot: Snapshot,
    mode: String,
    schema: SchemaRef,
    listing: ListingTable,
    /// The local folder the files' paths start with and the Delta table at the tables' location
    /// that holds them below it, where other machines read them.
    location: Option<(PathBuf, url::Url)>,
}

impl FhirTable {
    /// The table of `mode` of `snapshot`, which must have it, with the snapshot's own columns.
    pub fn try_new(snapshot: Snapshot, mode: &TableMode) -> crate::Result<Self> {
        let schema = snapshot.schema(&mode_key(mode))?;
        Self::try_new_with_schema(snapshot, mode, schema)
    }

    /// The table of `mode` of `snapshot` with the columns of `schema`: the snapshot's own (with
    /// their types), and others, which read as null.
    pub(crate) fn try_new_with_schema(
        snapshot: Snapshot,
        mode: &TableMode,
        schema: SchemaRef,
    ) -> crate::Result<Self> {
        let mode = mode_key(mode);
        let listing = listing_table(&snapshot, &mode, Arc::clone(&schema))
            .map_err(|e| crate::Error::snapshot_with(snapshot.dir().display().to_string(), e))?;
        Ok(Self {
            snapshot,
            mode,
            schema,
            listing,
            location: None,
        })
    }

    /// This table, whose files other machines read in the Delta table at `location`
    /// ([`SnapshotStore::table_location`](crate::snapshot::SnapshotStore::table_location)).
    pub(crate) fn with_location(self, location: Option<url::Url>) -> Self {
        let root = self.snapshot.table_root(&self.mode);
        Self {
            location: location.map(|location| (root, location)),
            ..self
        }
    }

    /// The Parquet copy of a view over `snapshot` (`listing`, in `root`, the view's Delta
    /// table's folder, also at `location`): its mode is `views/<key>`, and its row count unknown.
    pub(crate) fn view(
        snapshot: Snapshot,
        key: &str,
        listing: ListingTable,
        location: Option<(PathBuf, url::Url)>,
    ) -> Self {
        Self {
            snapshot,
            mode: format!("views/{key}"),
            schema: listing.schema(),
            listing,
            location,
        }
    }

    /// The snapshot this table reads.
    pub fn snapshot(&self) -> &Snapshot {
        &self.snapshot
    }

    /// The snapshot table read (`flattened`, `nested`, see [`mode_key`]; `views/<key>` for a
    /// view's copy).
    pub fn mode(&self) -> &str {
        &self.mode
    }
}

/// The files the manifest lists, each by its path: an incremental refresh's table holds files
/// of earlier snapshots' folders, and a folder may hold files its snapshot no longer does.
fn listing_table(snapshot: &Snapshot, mode: &str, schema: SchemaRef) -> DfResult<ListingTable> {
    let root = snapshot.table_root(mode);
    let files = snapshot.table(mode).map_or(&[][..], |t| &t.files[..]);
    let urls = files
        .iter()
        .map(|f| ListingTableUrl::parse(root.join(&f.path).display().to_string()))
        .collect::<DfResult<Vec<_>>>()?;
    let options =
        ListingOptions::new(Arc::new(ParquetFormat::default())).with_file_extension(".parquet");
    let config = ListingTableConfig::new_with_multi_paths(urls)
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
        let input = self.listing.scan(state, projection, filters, limit).await?;
        let scan = FhirScanExec::new(input, &self.snapshot).with_location(self.location.clone());
        Ok(Arc::new(scan))
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

/// The scan of a [`FhirTable`]: its Parquet scan (the one child) as it is, with what `EXPLAIN`
/// should tell about it, for example
///
/// ```text
/// FhirScanExec: type=Observation, snapshot=20240101120000000-1a2b3c4d, pushed=[_typeFilter=Observation?code=8867-4]
///   DataSourceExec: file_groups={...}, projection=[...], file_type=parquet, predicate=...
/// ```
///
/// `pushed` lists the filters the snapshot's export was restricted by (`_typeFilter`, `_since`),
/// empty for a full snapshot. The node is transparent to the optimizer: statistics, limits,
/// projections, sort and filter pushdown (including dynamic filters) reach the Parquet scan, and
/// file scans are repartitioned below it. While it or one of its streams lives, it holds the
/// snapshot's [`Lease`], so a filtered snapshot it reads is not evicted.
#[derive(Debug, Clone)]
pub struct FhirScanExec {
    input: Arc<dyn ExecutionPlan>,
    properties: Arc<PlanProperties>,
    resource_type: String,
    snapshot: String,
    pushed: Vec<String>,
    lease: Option<Lease>,
    /// The local folder the scanned files' paths start with, and the Delta table at the tables'
    /// location that holds the same files, for a cluster's executors ([`FhirTable`]).
    #[cfg_attr(
        not(feature = "cluster"),
        expect(dead_code, reason = "read by the cluster's physical optimizer rule")
    )]
    location: Option<(PathBuf, url::Url)>,
}

impl FhirScanExec {
    /// The scan `input` of `snapshot`.
    pub fn new(input: Arc<dyn ExecutionPlan>, snapshot: &Snapshot) -> Self {
        let manifest = snapshot.manifest();
        Self {
            properties: Arc::clone(input.properties()),
            input,
            resource_type: manifest.resource_type.clone(),
            snapshot: manifest.snapshot.clone(),
            pushed: manifest.pushdown.clone(),
            lease: snapshot.lease().cloned(),
            location: None,
        }
    }

    /// The scan `input` of the snapshot `snapshot` of `resource_type`, restricted by `pushed`,
    /// as it arrives on another machine: without the snapshot's lease, which its planner holds.
    #[cfg(feature = "cluster")]
    pub(crate) fn received(
        input: Arc<dyn ExecutionPlan>,
        resource_type: String,
        snapshot: String,
        pushed: Vec<String>,
    ) -> Self {
        Self {
            properties: Arc::clone(input.properties()),
            input,
            resource_type,
            snapshot,
            pushed,
            lease: None,
            location: None,
        }
    }

    /// This scan, whose files are also in `location`: the local folder their paths start
    /// with, and the table at the tables' location holding the same paths below it.
    pub(crate) fn with_location(self, location: Option<(PathBuf, url::Url)>) -> Self {
        Self { location, ..self }
    }

    /// The resource type scanned.
    pub fn resource_type(&self) -> &str {
        &self.resource_type
    }

    /// The id of the snapshot scanned.
    pub fn snapshot_id(&self) -> &str {
        &self.snapshot
    }

    /// The Parquet scan below this node.
    #[cfg(feature = "cluster")]
    pub(crate) fn input(&self) -> &Arc<dyn ExecutionPlan> {
        &self.input
    }

    /// The local folder the scanned paths start with and the Delta table at the tables'
    /// location that holds the same files, when there is one.
    #[cfg(feature = "cluster")]
    pub(crate) fn location(&self) -> Option<&(PathBuf, url::Url)> {
        self.location.as_ref()
    }

    /// The filters pushed into the export of the snapshot read (`_typeFilter=...`, `_since=...`).
    pub fn pushed(&self) -> &[String] {
        &self.pushed
    }

    /// This node over another input (same snapshot).
    pub(crate) fn with_input(&self, input: Arc<dyn ExecutionPlan>) -> Arc<dyn ExecutionPlan> {
        Arc::new(Self {
            properties: Arc::clone(input.properties()),
            input,
            ..self.clone()
        })
    }
}

impl DisplayAs for FhirScanExec {
    fn fmt_as(&self, t: DisplayFormatType, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let pushed = self.pushed.join(", ");
        match t {
            DisplayFormatType::TreeRender => write!(
                f,
                "type={}\nsnapshot={}\npushed=[{pushed}]",
                self.resource_type, self.snapshot
            ),
            _ => write!(
                f,
                "FhirScanExec: type={}, snapshot={}, pushed=[{pushed}]",
                self.resource_type, self.snapshot
            ),
        }
    }
}

/// The one child of the plan node `name` among `children`, which `replace_children` got: an
/// internal error when there are more or none.
pub(crate) fn only_child(
    name: &str,
    mut children: Vec<Arc<dyn ExecutionPlan>>,
) -> DfResult<Arc<dyn ExecutionPlan>> {
    match children.len() {
        1 => Ok(children.swap_remove(0)),
        n => Err(datafusion::error::DataFusionError::Internal(format!(
            "{name} has one child, got {n}"
        ))),
    }
}

impl ExecutionPlan for FhirScanExec {
    fn name(&self) -> &str {
        "FhirScanExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> DfResult<TreeNodeRecursion>,
    ) -> DfResult<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn replace_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
        options: ReplaceChildrenOptions,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let input = only_child("FhirScanExec", children)?;
        Ok(match options.children_properties {
            ChildrenPropertiesMode::Keep => Arc::new(Self {
                input,
                ..Self::clone(&self)
            }),
            ChildrenPropertiesMode::Recompute => self.with_input(input),
        })
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        self.replace_children(
            children,
            ReplaceChildrenOptions::new(ChildrenPropertiesMode::Recompute),
        )
    }

    fn maintains_input_order(&self) -> Vec<bool> {
        vec![true]
    }

    /// File scans are repartitioned below this node, not by a repartition above the scan.
    fn benefits_from_input_partitioning(&self) -> Vec<bool> {
        vec![false]
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> DfResult<SendableRecordBatchStream> {
        let stream = self.input.execute(partition, context)?;
        let Some(lease) = self.lease.clone() else {
            return Ok(stream);
        };
        let schema = stream.schema();
        // The stream holds the lease until it is dropped.
        let stream = stream.map(move |batch| {
            let _ = &lease;
            batch
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(schema, stream)))
    }

    fn child_stats_requests(&self, partition: Option<usize>) -> Vec<ChildStats> {
        vec![ChildStats::At(partition)]
    }

    fn statistics_from_inputs(
        &self,
        input_stats: &[Arc<Statistics>],
        _args: &StatisticsArgs,
    ) -> DfResult<Arc<Statistics>> {
        Ok(Arc::clone(&input_stats[0]))
    }

    fn supports_limit_pushdown(&self) -> bool {
        true
    }

    fn cardinality_effect(&self) -> CardinalityEffect {
        CardinalityEffect::Equal
    }

    fn try_swapping_with_projection(
        &self,
        projection: &ProjectionExec,
    ) -> DfResult<Option<Arc<dyn ExecutionPlan>>> {
        Ok(self
            .input
            .try_swapping_with_projection(projection)?
            .map(|input| self.with_input(input)))
    }

    fn gather_filters_for_pushdown(
        &self,
        _phase: FilterPushdownPhase,
        parent_filters: Vec<Arc<dyn PhysicalExpr>>,
        _config: &ConfigOptions,
    ) -> DfResult<FilterDescription> {
        FilterDescription::from_children(parent_filters, &self.children())
    }

    fn handle_child_pushdown_result(
        &self,
        _phase: FilterPushdownPhase,
        child_pushdown_result: ChildPushdownResult,
        _config: &ConfigOptions,
    ) -> DfResult<FilterPushdownPropagation<Arc<dyn ExecutionPlan>>> {
        Ok(FilterPushdownPropagation::if_all(child_pushdown_result))
    }

    fn try_pushdown_sort(
        &self,
        order: &[PhysicalSortExpr],
    ) -> DfResult<SortOrderPushdownResult<Arc<dyn ExecutionPlan>>> {
        Ok(match self.input.try_pushdown_sort(order)? {
            SortOrderPushdownResult::Exact { inner } => SortOrderPushdownResult::Exact {
                inner: self.with_input(inner),
            },
            SortOrderPushdownResult::Inexact { inner } => SortOrderPushdownResult::Inexact {
                inner: self.with_input(inner),
            },
            SortOrderPushdownResult::Unsupported => SortOrderPushdownResult::Unsupported,
        })
    }

    fn with_preserve_order(&self, preserve_order: bool) -> Option<Arc<dyn ExecutionPlan>> {
        self.input
            .with_preserve_order(preserve_order)
            .map(|input| self.with_input(input))
    }
}

/// Converts a crate error for DataFusion (the one place where that happens).
pub(crate) fn to_datafusion(e: crate::Error) -> datafusion::error::DataFusionError {
    datafusion::error::DataFusionError::External(Box::new(e))
}
