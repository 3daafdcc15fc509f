//! An export converted on the cluster ([`Cluster::export`]): the coordinator kicks the export
//! off and polls it, and the executors each fetch one of its files and convert it, writing
//! straight to the tables' location ([`ConvertExec`]); the coordinator then merges the parts'
//! columns, has the parts that disagree converted again, and commits each type once.

use std::fmt;
use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch, StringArray, UInt64Array};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::runtime_env::RuntimeEnv;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::coalesce_partitions::CoalescePartitionsExec;
use datafusion::physical_plan::execution_plan::{
    Boundedness, ChildrenPropertiesMode, EmissionType, ReplaceChildrenOptions,
};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{DisplayAs, DisplayFormatType, ExecutionPlan, PlanProperties};
use datafusion::prelude::SessionConfig;
use futures::TryStreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::{Cluster, ClusterExec, FhirCodec};
use crate::bulk::{ExportProgress, OutputFile, download_given};
use crate::catalog::{FetchRequest, FhirCatalog, only_child};
use crate::http::redact_url;
use crate::snapshot::{ConvertedPart, PartTask, SnapshotManifest, raw_dir};
use crate::{Error, Result};

/// Files converted by one job of the cluster at most: each job's tasks get the token as fresh
/// as the coordinator's cache has it. A job that runs longer than the token lives fails its
/// later downloads with the server's 401 (not handled yet: a job's token is not renewed).
const FILES_PER_JOB: usize = 64;

/// One task of a [`ConvertExec`]: a file of an export and what to make of it.
#[derive(Clone, Serialize, Deserialize)]
pub(crate) struct FileTask {
    /// The file of the manifest; none in a second pass, which reads the raw file where the
    /// first put it.
    file: Option<OutputFile>,
    /// Whether a file whose lines are not its `count`, twice, fails (the coordinator's
    /// [`ClientOptions::with_strict_counts`](crate::bulk::ClientOptions::with_strict_counts)).
    strict_counts: bool,
    /// The bearer token for the file, when it needs one: short-lived (the coordinator's, as its
    /// cache keeps it fresh), and never in `Debug`, logs or `EXPLAIN`.
    token: Option<String>,
    /// How to convert it, and where the files go.
    part: PartTask,
}

impl fmt::Debug for FileTask {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FileTask")
            .field("url", &self.file.as_ref().map(|f| redact_url(&f.url)))
            .field("token", &self.token.as_ref().map(|_| "***"))
            .field("part", &self.part)
            .finish()
    }
}

/// The conversion of an export's files on the cluster's executors: over a table of the tasks
/// (a [`FileTask`] as JSON per row, one row per partition: Ballista gives each of its tasks
/// the partitions it owns of the plan's leaf, and a table of rows is a leaf it knows how to
/// split), each row's file is fetched (first pass) and converted on the executor that runs it
/// ([`PartTask::run`]), answering one row: the task's number and what it made, as JSON, for
/// the coordinator to merge.
#[derive(Debug)]
pub(crate) struct ConvertExec {
    tasks: Arc<dyn ExecutionPlan>,
    properties: Arc<PlanProperties>,
}

impl ConvertExec {
    /// The conversion of `tasks`, a partition each.
    fn of(tasks: &[FileTask]) -> Result<Self> {
        let schema = tasks_schema();
        let partitions = tasks
            .iter()
            .enumerate()
            .map(|(n, task)| {
                let json = serde_json::to_string(task)
                    .map_err(|e| Error::snapshot(format!("a conversion task: {e}")))?;
                let columns: Vec<ArrayRef> = vec![
                    Arc::new(UInt64Array::from(vec![n as u64])),
                    Arc::new(StringArray::from(vec![json])),
                ];
                Ok(vec![RecordBatch::try_new(Arc::clone(&schema), columns)?])
            })
            .collect::<Result<Vec<_>>>()?;
        let table = MemorySourceConfig::try_new_exec(&partitions, schema, None)?;
        Ok(Self::new(table))
    }

    /// The conversion of the tasks `input` yields (the rows of [`tasks_schema`]).
    pub(crate) fn new(tasks: Arc<dyn ExecutionPlan>) -> Self {
        let properties = PlanProperties::new(
            EquivalenceProperties::new(tasks_schema()),
            tasks.properties().output_partitioning().clone(),
            EmissionType::Incremental,
            Boundedness::Bounded,
        );
        Self {
            tasks,
            properties: Arc::new(properties),
        }
    }
}

/// The rows of a [`ConvertExec`]'s input and its output: `task` (its number) and `json` (a
/// [`FileTask`], or the [`ConvertedPart`] it made).
fn tasks_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("task", DataType::UInt64, false),
        Field::new("json", DataType::Utf8, false),
    ]))
}

/// Each row of `batch`: its task number and JSON.
fn rows(batch: &RecordBatch) -> Result<Vec<(u64, &str)>> {
    let numbers = batch.column(0).as_any().downcast_ref::<UInt64Array>();
    let texts = batch.column(1).as_any().downcast_ref::<StringArray>();
    let (Some(numbers), Some(texts)) = (numbers, texts) else {
        return Err(Error::snapshot("conversion rows of another shape"));
    };
    Ok(numbers
        .values()
        .iter()
        .copied()
        .zip(texts.iter().flatten())
        .collect())
}

impl DisplayAs for ConvertExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let files = self
            .tasks
            .properties()
            .output_partitioning()
            .partition_count();
        write!(f, "ConvertExec: files={files}")
    }
}

impl ExecutionPlan for ConvertExec {
    fn name(&self) -> &str {
        "ConvertExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.tasks]
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
        _options: ReplaceChildrenOptions,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        Ok(Arc::new(Self::new(only_child("ConvertExec", children)?)))
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

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> DfResult<SendableRecordBatchStream> {
        let tasks = self.tasks.execute(partition, context)?;
        let converted = tasks.and_then(|batch| async move {
            let mut numbers = Vec::new();
            let mut parts = Vec::new();
            let external = |e: Error| DataFusionError::External(Box::new(e));
            let tasks = rows(&batch)
                .map_err(external)?
                .into_iter()
                .map(|(n, json)| Ok((n, serde_json::from_str::<FileTask>(json)?)))
                .collect::<std::result::Result<Vec<_>, serde_json::Error>>()
                .map_err(|e| DataFusionError::Internal(format!("a conversion task: {e}")))?;
            for (n, task) in tasks {
                let part = convert(task).await.map_err(external)?;
                let json = serde_json::to_string(&part)
                    .map_err(|e| DataFusionError::Internal(format!("a converted part: {e}")))?;
                numbers.push(n);
                parts.push(json);
            }
            let columns: Vec<ArrayRef> = vec![
                Arc::new(UInt64Array::from(numbers)),
                Arc::new(StringArray::from(parts)),
            ];
            Ok(RecordBatch::try_new(tasks_schema(), columns)?)
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            tasks_schema(),
            converted,
        )))
    }
}

/// Runs `task` on this machine: the file fetched into a private folder of the temporary
/// directory (first pass), converted and put at the tables' location, the folder removed.
async fn convert(task: FileTask) -> Result<ConvertedPart> {
    let work = tempfile::Builder::new()
        .prefix("fhirflight-convert-")
        .tempdir()
        .map_err(|e| Error::io(std::env::temp_dir(), e))?;
    let (downloaded, warning) = match &task.file {
        Some(file) => {
            let path = raw_dir(work.path()).join(task.part.raw_name());
            let token = task.token.as_deref().map(Arc::from);
            let counts = (file.count, task.strict_counts);
            let (done, warning) = download_given(file, token, counts, &path).await?;
            ((done.lines, done.bytes), warning)
        }
        None => ((0, 0), None),
    };
    let part = tokio::task::spawn_blocking(move || task.part.run(work.path(), downloaded))
        .await
        .map_err(|e| Error::snapshot(format!("a conversion task panicked: {e}")))??;
    Ok(part.with_warnings(warning))
}

impl Cluster {
    /// Exports `types` of `catalog`'s Bulk Data server and converts them on this cluster, into
    /// the flattened tables of the catalog's mode at its tables' location
    /// ([`CatalogOptions::with_table_location`](crate::catalog::CatalogOptions::with_table_location),
    /// which the executors must reach): this process kicks the export off and polls it, each
    /// executor fetches files of it (with a short-lived token when the manifest says so) and
    /// converts them, and this process merges their columns and commits each type once, as a
    /// version of its Delta table and a snapshot that every machine with that location adopts
    /// ([`SnapshotStore::adopt`](crate::snapshot::SnapshotStore::adopt); the catalog does when
    /// a statement needs the type). No resource passes through this process. Returns the
    /// manifests committed.
    ///
    /// A full export only: an incremental refresh, `_typeFilter`s and the nested mode run in
    /// one process. The server's `error` files (OperationOutcomes, no resources) are read here,
    /// as warnings of the types they concern.
    pub async fn export(
        &self,
        catalog: &FhirCatalog,
        types: &[String],
    ) -> Result<Vec<SnapshotManifest>> {
        let exporter = catalog.exporter();
        let types = catalog.known_types(types)?;
        let request = FetchRequest {
            types: types.clone(),
            ..FetchRequest::default()
        };
        let (client, export) = exporter.source.bulk_export(&request).ok_or_else(|| {
            Error::config("a conversion on a cluster exports from a Bulk Data server, not a folder")
        })?;
        let (mode, options) = (exporter.options.mode(), exporter.options.decode_options());
        let store = &exporter.store;
        let snapshots = types
            .iter()
            .map(|t| store.begin_distributed(t, mode, &options))
            .collect::<Result<Vec<_>>>()?;
        let (progress, _) = watch::channel(ExportProgress::default());
        // The error files' OperationOutcomes are read here: small, and no resource.
        let errors = tempfile::tempdir().map_err(|e| Error::io(std::env::temp_dir(), e))?;
        let (status_url, manifest, files, warnings) = client
            .export_manifest(&export, errors.path(), &progress)
            .await?;
        let converted = async {
            // The first pass: a task per data file, numbered per type as a snapshot's raw files.
            let mut first = Vec::new();
            let mut counts = vec![0usize; types.len()];
            for file in &files {
                let Some(t) = types.iter().position(|t| *t == file.file.resource_type) else {
                    tracing::warn!(
                        "{}: a file of type {}, which was not asked for: skipped",
                        redact_url(&file.file.url),
                        file.file.resource_type
                    );
                    continue;
                };
                first.push((t, file, snapshots[t].task(counts[t])));
                counts[t] += 1;
            }
            let mut parts: Vec<Vec<ConvertedPart>> = vec![Vec::new(); types.len()];
            for wave in first.chunks(FILES_PER_JOB) {
                let mut tasks = Vec::with_capacity(wave.len());
                for (_, file, part) in wave {
                    tasks.push(FileTask {
                        file: Some(file.file.clone()),
                        strict_counts: client.strict_counts(),
                        token: client.file_token(file).await?.map(|t| t.to_string()),
                        part: part.clone(),
                    });
                }
                let done = self.run(tasks).await?;
                for (n, part) in done {
                    parts[wave[n].0].push(part);
                }
            }
            // The second pass: the parts whose columns disagree with their table's merged ones.
            let mut again = Vec::new();
            for (t, snapshot) in snapshots.iter().enumerate() {
                let (columns, disagreeing) = snapshot.merge(&parts[t]);
                for n in disagreeing {
                    let part = snapshot.task(n).against(&columns);
                    again.push((t, n, part));
                }
            }
            for wave in again.chunks(FILES_PER_JOB) {
                let tasks = wave.iter().map(|(_, _, part)| FileTask {
                    file: None,
                    strict_counts: false,
                    token: None,
                    part: part.clone(),
                });
                for (i, redone) in self.run(tasks.collect()).await? {
                    let (t, n, _) = &wave[i];
                    let at = parts[*t].iter().position(|p| p.n == *n);
                    let first = parts[*t].swap_remove(at.expect("a part of the first pass"));
                    parts[*t].push(first.converted_again(redone));
                }
            }
            let mut committed = Vec::new();
            for ((t, snapshot), parts) in snapshots.into_iter().enumerate().zip(parts) {
                let concerns = warnings.iter().filter(|w| w.concerns(&types[t]));
                let base = SnapshotManifest {
                    source: exporter.source.location().to_owned(),
                    request: manifest.request.clone(),
                    transaction_time: manifest.transaction_time.clone(),
                    warnings: concerns.cloned().collect(),
                    ..SnapshotManifest::default()
                };
                let id = snapshot.id().to_owned();
                let done = tokio::task::spawn_blocking(move || snapshot.commit(parts, base))
                    .await
                    .map_err(|e| Error::snapshot(format!("committing {id} panicked: {e}")))??;
                committed.push(done);
            }
            Ok::<_, Error>(committed)
        };
        let converted = converted.await;
        // Its files are converted, or the conversion failed past the cluster's retries.
        if let Err(e) = client.delete_job(&status_url).await {
            tracing::warn!("deleting the export job failed: {e}");
        }
        converted
    }

    /// Runs the conversion `tasks` as one job of the cluster; returns each task's number and
    /// what it made.
    async fn run(&self, tasks: Vec<FileTask>) -> Result<Vec<(usize, ConvertedPart)>> {
        if tasks.is_empty() {
            return Ok(Vec::new());
        }
        let files = tasks.len();
        let started = std::time::Instant::now();
        // One partition of answers: the coordinator fetches each partition of a job's last
        // stage on its own (tens of milliseconds each), and a job has a partition per file.
        let plan = Arc::new(CoalescePartitionsExec::new(Arc::new(ConvertExec::of(
            &tasks,
        )?)));
        let exec = ClusterExec::new(self.scheduler.clone(), plan, Arc::new(FhirCodec::default()));
        let ctx = self.session(SessionConfig::new(), Arc::new(RuntimeEnv::default()));
        let batches: Vec<RecordBatch> = exec
            .execute(0, ctx.task_ctx())
            .map_err(Error::from)?
            .try_collect()
            .await
            .map_err(Error::from)?;
        let mut done = Vec::with_capacity(files);
        for batch in &batches {
            for (n, json) in rows(batch)? {
                let part: ConvertedPart = serde_json::from_str(json)
                    .map_err(|e| Error::snapshot(format!("a converted part: {e}")))?;
                done.push((n as usize, part));
            }
        }
        if done.len() != files {
            return Err(Error::snapshot(format!(
                "the cluster converted {} of {files} files",
                done.len()
            )));
        }
        tracing::info!(
            "{files} files converted on the cluster in {:.1} s",
            started.elapsed().as_secs_f64()
        );
        Ok(done)
    }
}

#[cfg(test)]
mod tests {
    use datafusion::physical_plan::displayable;
    use datafusion::prelude::SessionContext;
    use datafusion_proto::physical_plan::AsExecutionPlan;
    use datafusion_proto::protobuf::PhysicalPlanNode;

    use super::*;
    use crate::ndjson::{DecodeOptions, TableMode};
    use crate::snapshot::SnapshotStore;
    use url::Url;

    #[test]
    fn a_conversion_travels_with_its_tasks_and_never_shows_their_token() {
        let cache = tempfile::tempdir().unwrap();
        let location = Url::from_directory_path(cache.path().join("tables")).unwrap();
        let store = SnapshotStore::open(cache.path(), "https://ehr.example.org/fhir")
            .unwrap()
            .with_table_location(location)
            .unwrap();
        let mode = TableMode::Flattened(Default::default());
        let snapshot = store
            .begin_distributed("Patient", &mode, &DecodeOptions::default())
            .unwrap();
        let secret = "eyJ-very-secret-token";
        let tasks: Vec<FileTask> = (0..2)
            .map(|n| FileTask {
                file: Some(OutputFile {
                    resource_type: "Patient".into(),
                    url: Url::parse(&format!("https://ehr.example.org/files/{n}?sig=abc")).unwrap(),
                    count: Some(10),
                }),
                strict_counts: false,
                token: Some(secret.into()),
                part: snapshot.task(n),
            })
            .collect();
        let shown = format!("{tasks:?}");
        assert!(
            !shown.contains(secret) && !shown.contains("sig=abc"),
            "{shown}"
        );

        let plan = Arc::new(ConvertExec::of(&tasks).unwrap());
        let codec = FhirCodec::default();
        let node = PhysicalPlanNode::try_from_physical_plan(plan, &codec).unwrap();
        let ctx = SessionContext::new().task_ctx();
        let received = node.try_into_physical_plan(&ctx, &codec).unwrap();
        let text = displayable(received.as_ref()).indent(false).to_string();
        assert!(text.starts_with("ConvertExec: files=2\n"), "{text}");
        assert!(!text.contains(secret), "{text}");
        // Each partition is a task, whole.
        let tasks_there = received.children()[0].execute(1, ctx).unwrap();
        let batches: Vec<RecordBatch> =
            futures::executor::block_on(tasks_there.try_collect()).unwrap();
        let [(n, json)] = rows(&batches[0]).unwrap()[..] else {
            panic!("one task per partition");
        };
        let task: FileTask = serde_json::from_str(json).unwrap();
        assert_eq!(n, 1);
        assert_eq!(task.part, tasks[1].part);
        assert_eq!(task.token.as_deref(), Some(secret));
    }
}
