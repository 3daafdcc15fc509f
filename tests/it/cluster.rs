//! Statements on a Ballista cluster in this process: a scheduler and two executors on 127.0.0.1
//! port 0, each on a runtime of its own (stopping that runtime is the executor's death), and a
//! catalog over the demo Bulk Data server registered both in a session of one process and in a
//! session of the cluster. Every statement answers the same in both; `EXPLAIN` shows the plan
//! sent to the cluster; effects run in the coordinator; a dead executor's work goes to the other;
//! a dead scheduler is a clear error. The cluster of processes, on S3, is in `s3.rs`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use datafusion::execution::runtime_env::RuntimeEnv;
use datafusion::prelude::{SessionConfig, SessionContext};
use fhirflight::bulk::ClientOptions;
use fhirflight::catalog::{self, BulkSource, CatalogOptions, FhirCatalog, Freshness};
use fhirflight::cluster::{
    Cluster, ExecutorOptions, SchedulerOptions, serve_executor, serve_scheduler,
};
use fhirflight::demo::{DemoConfig, DemoServer};
use fhirflight::view::ViewDefinition;
use serde_json::json;
use tokio::runtime::Runtime;

/// A scheduler and executors, each on a tokio runtime of its own.
pub(crate) struct LocalCluster {
    pub(crate) cluster: Cluster,
    scheduler: Option<Runtime>,
    executors: Vec<Option<Runtime>>,
}

impl LocalCluster {
    pub(crate) fn start(executors: usize) -> Self {
        let (scheduler, address) = spawn(|listener| async move {
            let options = SchedulerOptions::default().with_executor_timeout(Duration::from_secs(4));
            serve_scheduler(listener, options).await
        });
        let cluster = Cluster::new(&format!("df://{address}")).unwrap();
        let executors = (0..executors)
            .map(|_| {
                let options = ExecutorOptions::new(cluster.clone())
                    .with_task_slots(2)
                    .with_memory_limit(Some(64 << 20));
                Some(spawn(move |listener| serve_executor(listener, options)).0)
            })
            .collect();
        Self {
            cluster,
            scheduler: Some(scheduler),
            executors,
        }
    }

    /// Stops executor `n` as its machine's death would: its tasks and its results are gone.
    fn kill_executor(&mut self, n: usize) {
        if let Some(runtime) = self.executors[n].take() {
            runtime.shutdown_background();
        }
    }

    fn kill_scheduler(&mut self) {
        if let Some(runtime) = self.scheduler.take() {
            runtime.shutdown_background();
        }
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        for n in 0..self.executors.len() {
            self.kill_executor(n);
        }
        self.kill_scheduler();
    }
}

/// A runtime of its own running `serve` on a listener on 127.0.0.1 port 0, and that address.
fn spawn<F>(
    serve: impl FnOnce(tokio::net::TcpListener) -> F + Send + 'static,
) -> (Runtime, SocketAddr)
where
    F: Future<Output = fhirflight::Result<()>> + Send + 'static,
{
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let address = listener.local_addr().unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    runtime.spawn(async move {
        let listener = tokio::net::TcpListener::from_std(listener).unwrap();
        if let Err(e) = serve(listener).await {
            eprintln!("a cluster process failed: {e}");
        }
    });
    (runtime, address)
}

fn patient_names() -> ViewDefinition {
    ViewDefinition::from_json(&json!({
        "resourceType": "ViewDefinition", "name": "patient_names", "resource": "Patient",
        "select": [
            {"column": [{"name": "id", "path": "getResourceKey()", "type": "id"},
                        {"name": "gender", "path": "gender", "type": "code"}]},
            {"forEach": "name", "column": [{"name": "family", "path": "family", "type": "string"}]}
        ]
    }))
    .unwrap()
}

/// `fhir` as `src` of `ctx`, with the catalog's functions.
fn register(ctx: &SessionContext, fhir: &FhirCatalog, options: &CatalogOptions) {
    ctx.register_catalog("src", Arc::new(fhir.clone()));
    catalog::register_functions(ctx, options.clone());
}

/// The rows of `sql`, sorted, or its error's text.
async fn answer(ctx: &SessionContext, sql: &str) -> Result<Vec<String>, String> {
    let batches = match catalog::sql(ctx, sql).await {
        Ok(df) => df.collect().await,
        Err(e) => Err(e),
    };
    let batches = batches.map_err(|e| e.to_string())?;
    let mut rows: Vec<String> = batches.iter().flat_map(crate::row_strings).collect();
    rows.sort();
    Ok(rows)
}

/// Statements of the catalog's tests: scans, filters pushed into the export, aggregates,
/// joins, sorts with limits, unions, a view and a window.
const STATEMENTS: &[&str] = &[
    "SELECT count(*) AS n FROM src.fhir.patient",
    "SELECT gender, count(*) AS n FROM src.fhir.patient GROUP BY gender",
    "SELECT id, birthDate FROM src.fhir.patient ORDER BY birthDate DESC, id LIMIT 5",
    "SELECT p.gender, count(*) AS n FROM src.fhir.patient p \
     JOIN src.fhir.condition c ON c.subject_reference = concat('Patient/', p.id) GROUP BY p.gender",
    "SELECT count(*) AS n FROM src.fhir.observation WHERE code_coding_0_code = '8867-4'",
    "SELECT code_coding_0_code, count(*) AS n, avg(valueQuantity_value) AS mean \
     FROM src.fhir.observation GROUP BY code_coding_0_code",
    "SELECT count(*) AS n FROM (SELECT id FROM src.fhir.patient UNION ALL SELECT id FROM src.fhir.condition)",
    "SELECT family, count(*) AS n FROM src.fhir.patient_names GROUP BY family",
    "SELECT id, row_number() OVER (PARTITION BY gender ORDER BY id) AS r FROM src.fhir.patient",
    "SELECT p.id FROM src.fhir.patient p WHERE EXISTS \
     (SELECT 1 FROM src.fhir.condition c WHERE c.subject_reference = concat('Patient/', p.id))",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statements_on_a_cluster_answer_as_in_one_process_and_survive_a_dead_executor() {
    let mut local_cluster = LocalCluster::start(2);
    let server = DemoServer::start(DemoConfig::default().with_seed(5).with_patients(30))
        .await
        .unwrap();
    let cache = tempfile::tempdir().unwrap();
    let client = server
        .client(
            ClientOptions::default()
                .with_retry_after_bounds(Duration::from_millis(1), Duration::from_millis(20)),
        )
        .await
        .unwrap();
    let options = CatalogOptions::default()
        .with_cache_dir(cache.path())
        .with_freshness(Freshness::Never)
        .with_view(patient_names());
    let fhir = FhirCatalog::try_new(Arc::new(BulkSource::new(client)), options.clone())
        .await
        .unwrap();
    let one = SessionContext::new_with_config(SessionConfig::new().with_information_schema(true));
    register(&one, &fhir, &options);
    let config = SessionConfig::new().with_information_schema(true);
    let on_cluster = local_cluster
        .cluster
        .session(config, Arc::new(RuntimeEnv::default()));
    register(&on_cluster, &fhir, &options);

    for sql in STATEMENTS {
        let expected = answer(&one, sql).await.unwrap();
        assert!(!expected.is_empty(), "{sql}");
        assert_eq!(answer(&on_cluster, sql).await.unwrap(), expected, "{sql}");
    }

    // The plan goes to the cluster whole, the snapshot's scan in it.
    let plan = answer(
        &on_cluster,
        "EXPLAIN SELECT gender, count(*) FROM src.fhir.patient GROUP BY gender",
    )
    .await
    .unwrap()
    .join("\n");
    let scheduler = local_cluster.cluster.scheduler().to_owned();
    assert!(
        plan.contains(&format!("ClusterExec: scheduler={scheduler}")),
        "{plan}"
    );
    assert!(plan.contains("FhirScanExec: type=Patient"), "{plan}");

    // Over Flight SQL, the rows stream from the cluster to the client.
    let mut flight = crate::FlightFixture::over(on_cluster.clone()).await;
    let by_gender =
        "SELECT gender, count(*) AS n FROM src.fhir.patient GROUP BY gender ORDER BY gender";
    let expected = answer(&one, by_gender).await.unwrap();
    assert_eq!(flight.query(by_gender).await, expected.join("\n"));
    let plan = flight.query(&format!("EXPLAIN {by_gender}")).await;
    assert!(plan.contains("ClusterExec: scheduler="), "{plan}");

    // An incremental refresh runs in the coordinator; the cluster reads the merged snapshot.
    server.upsert(json!({"resourceType": "Patient", "id": "new-one", "gender": "unknown"}));
    let refreshed = answer(
        &on_cluster,
        "SELECT changed FROM fhir_refresh('src', 'Patient')",
    )
    .await
    .unwrap();
    assert_eq!(refreshed, ["1"]);
    let count = "SELECT count(*) AS n FROM src.fhir.patient";
    assert_eq!(answer(&on_cluster, count).await.unwrap(), ["31"]);
    assert_eq!(answer(&one, count).await.unwrap(), ["31"]);

    // One executor dies: the other takes every task.
    local_cluster.kill_executor(0);
    for sql in &STATEMENTS[..4] {
        let expected = answer(&one, sql).await.unwrap();
        assert_eq!(answer(&on_cluster, sql).await.unwrap(), expected, "{sql}");
    }

    // The scheduler dies: statements fail and say where; the session of one process still answers.
    local_cluster.kill_scheduler();
    // (A bare count(*) is answered from the snapshot's row count, here.)
    let read = "SELECT count(*) AS n FROM src.fhir.patient WHERE gender IS NOT NULL";
    let err = answer(&on_cluster, read).await.unwrap_err();
    assert!(
        err.contains(&format!("the cluster at {scheduler}")),
        "{err}"
    );
    assert_eq!(answer(&one, count).await.unwrap(), ["31"]);
}

#[tokio::test]
async fn a_cluster_url_is_checked() {
    assert_eq!(
        Cluster::new("df://scheduler:6000").unwrap().scheduler(),
        "http://scheduler:6000"
    );
    for bad in [
        "scheduler:50050",
        "grpc://host:1",
        "df://host:1/path",
        "df://",
    ] {
        let err = Cluster::new(bad).unwrap_err().to_string();
        assert!(err.contains(&format!("--cluster {bad}")), "{err}");
    }
    let err = Cluster::new("df://user:secret@host:1")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("without user or password") && !err.contains("secret"),
        "{err}"
    );
}

/// The files under `dir` whose names end with one of `suffixes`.
pub(crate) fn files_ending(dir: &std::path::Path, suffixes: &[&str]) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if suffixes.iter().any(|s| path.to_string_lossy().ends_with(s)) {
                found.push(path);
            }
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_export_converted_on_the_cluster_is_committed_at_the_location_for_every_machine() {
    let local_cluster = LocalCluster::start(2);
    // Small files: several parts per type, whose columns differ.
    let server = DemoServer::start(
        DemoConfig::default()
            .with_seed(7)
            .with_patients(4)
            .with_page_size(25),
    )
    .await
    .unwrap();
    let client_options = || {
        ClientOptions::default()
            .with_retry_after_bounds(Duration::from_millis(1), Duration::from_millis(20))
    };
    let location = tempfile::tempdir().unwrap();
    let location_url = url::Url::from_directory_path(location.path()).unwrap();
    // A catalog of `cache`, at the shared location when `shared`.
    let catalog = |cache: &std::path::Path, shared: bool| {
        let mut options = CatalogOptions::default()
            .with_cache_dir(cache)
            .with_freshness(Freshness::Never)
            .with_view(patient_names());
        if shared {
            options = options.with_table_location(location_url.clone());
        }
        let server = &server;
        async move {
            let client = server.client(client_options()).await.unwrap();
            let source = Arc::new(BulkSource::new(client));
            let fhir = FhirCatalog::try_new(source, options.clone()).await.unwrap();
            (fhir, options)
        }
    };

    // The coordinator: the export's files are fetched and converted by the executors.
    let coordinator_cache = tempfile::tempdir().unwrap();
    let (coordinator, _) = catalog(coordinator_cache.path(), true).await;
    let types: Vec<String> = ["Patient", "Condition", "Observation"]
        .map(String::from)
        .to_vec();
    let committed = local_cluster
        .cluster
        .export(&coordinator, &types)
        .await
        .unwrap();
    let stats = server.stats();
    assert_eq!(stats.kickoffs.len(), 1);
    assert_eq!(stats.deletes, 1, "the job is deleted once converted");
    assert_eq!(stats.unauthorized, 0, "each file's token was good");
    // The executors got the coordinator's token (the demo's live 5 minutes), no key to get one.
    assert_eq!(stats.tokens_issued, 1);
    let files: usize = committed.iter().map(|m| m.raw.len()).sum();
    assert_eq!(
        stats.downloads, files,
        "each file fetched once, by an executor"
    );
    assert!(files > types.len(), "several files per type: {files}");
    let mut merged = 0;
    for manifest in &committed {
        let table = &manifest.tables["flattened"];
        assert_eq!(
            table.rows,
            manifest.resources(),
            "{}",
            manifest.resource_type
        );
        assert!(table.delta_version.is_some(), "{}", manifest.resource_type);
        merged += table
            .files
            .iter()
            .filter(|f| f.path.ends_with("-merged.parquet"))
            .count();
    }
    // This population's files disagree: one is converted again against its table's columns.
    assert_eq!(merged, 1);
    // No resource passed through the coordinator.
    let held = files_ending(
        coordinator_cache.path(),
        &[".parquet", ".ndjson", ".ndjson.gz"],
    );
    assert!(held.is_empty(), "{held:?}");

    // Another machine with the location adopts the snapshots (no export) and answers as a
    // process that exported and converted them itself.
    let other_cache = tempfile::tempdir().unwrap();
    let (other, options) = catalog(other_cache.path(), true).await;
    let adopted = SessionContext::new();
    register(&adopted, &other, &options);
    let alone_cache = tempfile::tempdir().unwrap();
    let (alone, options) = catalog(alone_cache.path(), false).await;
    let one = SessionContext::new();
    register(&one, &alone, &options);
    // Sums of floats in another order differ in their last digits.
    let statements = STATEMENTS.iter().map(|sql| {
        sql.replace(
            "avg(valueQuantity_value)",
            "round(avg(valueQuantity_value), 9)",
        )
    });
    let mut answers = Vec::new();
    for sql in statements {
        answers.push((answer(&adopted, &sql).await.unwrap(), sql));
    }
    assert_eq!(
        server.stats().kickoffs.len(),
        1,
        "the other machine adopted"
    );
    for (rows, sql) in answers {
        assert_eq!(rows, answer(&one, &sql).await.unwrap(), "{sql}");
    }
    // The same columns, of the same types, in the same order.
    for table in ["patient", "condition", "observation"] {
        let sql = format!("SELECT * FROM src.fhir.{table} LIMIT 0");
        let schema = |ctx: &SessionContext| {
            let (ctx, sql) = (ctx.clone(), sql.clone());
            async move {
                let df = catalog::sql(&ctx, &sql).await.unwrap();
                let schema = df.schema().as_arrow().clone();
                let fields = schema.fields().iter();
                fields
                    .map(|f| format!("{} {}", f.name(), f.data_type()))
                    .collect::<Vec<_>>()
            }
        };
        assert_eq!(schema(&adopted).await, schema(&one).await, "{table}");
    }
}
