//! [`Distribute`], the last physical optimizer rule of a cluster session, and [`ClusterExec`],
//! the node that runs a plan on the cluster and streams its rows back.

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use ballista_core::execution_plans::execute_physical_plan;
use ballista_core::extension::SessionConfigExt;
use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::datasource::listing::PartitionedFile;
use datafusion::datasource::physical_plan::FileScanConfig;
use datafusion::datasource::source::DataSourceExec;
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::object_store::ObjectStoreUrl;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::execution_plan::{
    Boundedness, ChildrenPropertiesMode, EmissionType, ReplaceChildrenOptions,
};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PlanProperties,
};
use datafusion_proto::physical_plan::AsExecutionPlan;
use datafusion_proto::protobuf::PhysicalPlanNode;
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path as StorePath;
use url::Url;

use super::FhirCodec;
use crate::catalog::{FhirScanExec, only_child};

/// Sends every statement that reads files (FHIR tables, views' Parquet) to the cluster, as one
/// [`ClusterExec`] over its whole plan, once DataFusion's rules have shaped it. A plan that
/// cannot travel (an effect such as `fhir_refresh`, `information_schema`) or reads no file
/// (`SELECT 1`) runs here, as in a session of one process.
#[derive(Debug)]
pub(super) struct Distribute {
    pub(super) scheduler: String,
    pub(super) codec: Arc<FhirCodec>,
}

impl PhysicalOptimizerRule for Distribute {
    fn optimize(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        _config: &ConfigOptions,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        if plan.is::<ClusterExec>() || !reads_files(&plan)? {
            return Ok(plan);
        }
        let remote = relocate(Arc::clone(&plan))?;
        if let Err(e) = PhysicalPlanNode::try_from_physical_plan(Arc::clone(&remote), &*self.codec)
        {
            tracing::info!("the statement runs in this process, not on the cluster: {e}");
            return Ok(plan);
        }
        Ok(Arc::new(ClusterExec::new(
            self.scheduler.clone(),
            remote,
            Arc::clone(&self.codec),
        )))
    }

    fn name(&self) -> &str {
        "fhirflight_distribute"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

/// Whether `plan` scans files.
fn reads_files(plan: &Arc<dyn ExecutionPlan>) -> Result<bool> {
    plan.exists(|node| {
        Ok(node.downcast_ref::<DataSourceExec>().is_some_and(|scan| {
            scan.data_source()
                .downcast_ref::<FileScanConfig>()
                .is_some()
        }))
    })
}

/// `plan` with the files of every [`FhirScanExec`] whose table is also at the tables' location
/// read there, where every executor reaches them, rather than in this machine's cache folder.
fn relocate(plan: Arc<dyn ExecutionPlan>) -> Result<Arc<dyn ExecutionPlan>> {
    plan.transform_up(|node| {
        let Some(scan) = node.downcast_ref::<FhirScanExec>() else {
            return Ok(Transformed::no(node));
        };
        let Some((root, location)) = scan.location() else {
            return Ok(Transformed::no(node));
        };
        let input = Arc::clone(scan.input()).transform_up(|below| {
            let Some(files) = below
                .downcast_ref::<DataSourceExec>()
                .and_then(|s| s.data_source().downcast_ref::<FileScanConfig>())
            else {
                return Ok(Transformed::no(below));
            };
            let moved = moved_files(files, root, location)?;
            Ok(Transformed::yes(
                DataSourceExec::from_data_source(moved) as _
            ))
        })?;
        Ok(Transformed::yes(scan.with_input(input.data)))
    })
    .map(|t| t.data)
}

/// `files` (under the local folder `root`) read from the same paths under `location`.
fn moved_files(files: &FileScanConfig, root: &Path, location: &Url) -> Result<FileScanConfig> {
    let local = StorePath::from_absolute_path(root)
        .map_err(|e| DataFusionError::Internal(format!("{}: {e}", root.display())))?;
    let (store, base) = match location.scheme() {
        "file" => (ObjectStoreUrl::local_filesystem(), location.path()),
        scheme => (
            ObjectStoreUrl::parse(format!(
                "{scheme}://{}",
                location.host_str().unwrap_or_default()
            ))?,
            location.path(),
        ),
    };
    let base = StorePath::from_url_path(base)
        .map_err(|e| DataFusionError::Internal(format!("{location}: {e}")))?;
    let mut moved = files.clone();
    moved.object_store_url = store;
    for group in &mut moved.file_groups {
        *group = group
            .iter()
            .map(|file| {
                let rest = file
                    .object_meta
                    .location
                    .prefix_match(&local)
                    .ok_or_else(|| {
                        DataFusionError::Internal(format!(
                            "{} is not in {}",
                            file.object_meta.location,
                            root.display()
                        ))
                    })?;
                let mut file: PartitionedFile = file.clone();
                file.object_meta.location = base.parts().chain(rest).collect();
                Ok(file)
            })
            .collect::<Result<_>>()?;
    }
    Ok(moved)
}

/// A statement's plan, run by the cluster's executors: [`execute`](ExecutionPlan::execute)
/// submits it to the scheduler (with the session's settings) and streams the rows of its last
/// stage back from the executors. The plan, its one child, is what `EXPLAIN` shows below it;
/// while the rows stream, it is held here, and with it the leases of the filtered snapshots it
/// reads.
#[derive(Debug)]
pub struct ClusterExec {
    scheduler: String,
    input: Arc<dyn ExecutionPlan>,
    codec: Arc<FhirCodec>,
    properties: Arc<PlanProperties>,
}

impl ClusterExec {
    pub(super) fn new(
        scheduler: String,
        input: Arc<dyn ExecutionPlan>,
        codec: Arc<FhirCodec>,
    ) -> Self {
        let properties = PlanProperties::new(
            EquivalenceProperties::new(input.schema()),
            Partitioning::UnknownPartitioning(1),
            EmissionType::Incremental,
            Boundedness::Bounded,
        );
        Self {
            scheduler,
            input,
            codec,
            properties: Arc::new(properties),
        }
    }
}

impl DisplayAs for ClusterExec {
    fn fmt_as(&self, t: DisplayFormatType, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match t {
            DisplayFormatType::TreeRender => write!(f, "scheduler={}", self.scheduler),
            _ => write!(f, "ClusterExec: scheduler={}", self.scheduler),
        }
    }
}

impl ExecutionPlan for ClusterExec {
    fn name(&self) -> &str {
        "ClusterExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn replace_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
        _options: ReplaceChildrenOptions,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        Ok(Arc::new(Self::new(
            self.scheduler.clone(),
            only_child("ClusterExec", children)?,
            Arc::clone(&self.codec),
        )))
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        self.replace_children(
            children,
            ReplaceChildrenOptions::new(ChildrenPropertiesMode::Recompute),
        )
    }

    /// The child runs on the cluster, not below this node in this process.
    fn benefits_from_input_partitioning(&self) -> Vec<bool> {
        vec![false]
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        if partition != 0 {
            return Err(DataFusionError::Internal(format!(
                "ClusterExec has one partition, got partition {partition}"
            )));
        }
        let (scheduler, plan) = (self.scheduler.clone(), Arc::clone(&self.input));
        let codec = Arc::clone(&self.codec);
        let config = context.session_config().clone();
        let session = context.session_id();
        let submitted = async move {
            let ballista = config.ballista_config();
            let rows = execute_physical_plan::<PhysicalPlanNode>(
                scheduler.clone(),
                &ballista,
                Arc::clone(&plan),
                &*codec,
                session,
                config,
            )
            .await
            .map_err(|e| DataFusionError::Execution(format!("the cluster at {scheduler}: {e}")))?;
            // The plan (and its scans' leases) lives as long as its rows stream.
            Ok::<_, DataFusionError>(rows.map(move |batch| {
                let _ = &plan;
                batch
            }))
        };
        let stream = futures::stream::once(submitted).try_flatten();
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            self.schema(),
            stream,
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::datatypes::Schema;
    use datafusion::datasource::physical_plan::{FileScanConfigBuilder, ParquetSource};

    fn files(paths: &[&str]) -> FileScanConfig {
        let schema = Arc::new(Schema::empty());
        let source = Arc::new(ParquetSource::new(schema));
        let files = paths.iter().map(|p| PartitionedFile::new(*p, 10)).collect();
        FileScanConfigBuilder::new(ObjectStoreUrl::local_filesystem(), source)
            .with_file_group(files)
            .build()
    }

    #[test]
    fn files_move_to_the_same_paths_at_the_location() {
        let local = files(&["/cache/src-1/Patient/flattened/s1/part-0.parquet"]);
        let root = Path::new("/cache/src-1/Patient/flattened");
        let s3 = Url::parse("s3://bucket/tables/src-1/Patient/flattened/").unwrap();
        let moved = moved_files(&local, root, &s3).unwrap();
        assert_eq!(moved.object_store_url.as_str(), "s3://bucket/");
        let path = moved.file_groups[0].files()[0]
            .object_meta
            .location
            .to_string();
        assert_eq!(path, "tables/src-1/Patient/flattened/s1/part-0.parquet");

        let shared = Url::parse("file:///mnt/tables/src-1/Patient/flattened/").unwrap();
        let moved = moved_files(&local, root, &shared).unwrap();
        assert_eq!(moved.object_store_url, ObjectStoreUrl::local_filesystem());
        let path = moved.file_groups[0].files()[0]
            .object_meta
            .location
            .to_string();
        assert_eq!(path, "mnt/tables/src-1/Patient/flattened/s1/part-0.parquet");

        let elsewhere = files(&["/other/part-0.parquet"]);
        let err = moved_files(&elsewhere, root, &s3).unwrap_err().to_string();
        assert!(
            err.contains("is not in /cache/src-1/Patient/flattened"),
            "{err}"
        );
    }
}
