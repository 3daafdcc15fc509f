//! Serving patient data safely, operated: what errors tell clients (and the log), the export
//! budget of each user, the gRPC health service and the Prometheus metrics.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use arrow_flight::Ticket;
use fhirflight::catalog::{self, Freshness};
use fhirflight::demo::{DemoServer, Faults};
use fhirflight::flight::{ExportRate, FhirExportControl};
use tempfile::TempDir;
use tokio::net::TcpListener;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use super::fhir::{PATIENTS, catalog_over, demo_config};
use super::*;
use crate::bulk::logs_of;

/// Catalog `fhir` over a demo server, served by `configure(server)`.
struct Ops {
    demo: DemoServer,
    server: RunningServer,
    cache: TempDir,
}

async fn ops(configure: impl FnOnce(FlightSqlServer) -> FlightSqlServer) -> Ops {
    let cache = tempfile::tempdir().unwrap();
    let demo = DemoServer::start(demo_config()).await.unwrap();
    let ctx = SessionContext::new_with_config(
        SessionConfig::new().with_default_catalog_and_schema("fhir", catalog::DEFAULT_SCHEMA),
    );
    let fhir = catalog_over(&demo, &cache, Freshness::Never).await;
    ctx.register_catalog("fhir", Arc::new(fhir));
    let control = FhirExportControl::from_session(&ctx);
    let server = FlightSqlServer::new(ctx)
        .with_users(users())
        .with_export_control(Arc::new(control));
    Ops {
        demo,
        server: start(configure(server)).await,
        cache,
    }
}

/// A client logged in as `user`, and its bearer token.
async fn login_as(server: &RunningServer, user: &str) -> (FlightSqlServiceClient<Channel>, String) {
    let mut client = FlightSqlServiceClient::new(channel(server).await);
    client.handshake(user, PASSWORD).await.unwrap();
    let token = client.token().unwrap().clone();
    (client, token)
}

/// Runs `sql` through the raw Flight client (GetFlightInfo, then DoGet to the end): the rows,
/// or the status of the first call that failed.
async fn run(server: &RunningServer, token: &str, sql: &str) -> Result<usize, Status> {
    let mut client = FlightServiceClient::new(channel(server).await);
    let bearer: tonic::metadata::MetadataValue<_> = format!("Bearer {token}").parse().unwrap();
    let command = CommandStatementQuery {
        query: sql.into(),
        transaction_id: None,
    };
    let mut request =
        tonic::Request::new(FlightDescriptor::new_cmd(command.as_any().encode_to_vec()));
    request
        .metadata_mut()
        .insert("authorization", bearer.clone());
    let info = client.get_flight_info(request).await?.into_inner();
    let ticket: Ticket = info.endpoint[0].ticket.clone().unwrap();
    let mut request = tonic::Request::new(ticket);
    request.metadata_mut().insert("authorization", bearer);
    let data = client.do_get(request).await?.into_inner();
    let data = data.map_err(arrow_flight::error::FlightError::from);
    let batches: Vec<RecordBatch> =
        arrow_flight::decode::FlightRecordBatchStream::new_from_flight_data(data)
            .try_collect()
            .await
            .map_err(|e| match e {
                arrow_flight::error::FlightError::Tonic(status) => *status,
                other => panic!("{other}"),
            })?;
    Ok(batches.iter().map(RecordBatch::num_rows).sum())
}

/// The error id a client's message ends with.
fn error_id(status: &Status) -> String {
    let message = status.message();
    let start = message.rfind("[error id ").expect("an error id") + "[error id ".len();
    message[start..].trim_end_matches(']').to_owned()
}

/// Every file under `dir` whose name ends with `suffix`.
fn files_under(dir: &Path, suffix: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            found.extend(files_under(&path, suffix));
        } else if path.to_string_lossy().ends_with(suffix) {
            found.push(path);
        }
    }
    found
}

#[tokio::test]
async fn clients_read_what_failed_without_urls_or_paths_and_the_log_has_it_all() {
    let ops = ops(|server| server).await;
    let (mut client, token) = login_as(&ops.server, USER).await;
    let upstream = ops.demo.base_url();
    let host = format!(
        "{}:{}",
        upstream.host_str().unwrap(),
        upstream.port().unwrap()
    );
    let cache = ops.cache.path().to_string_lossy().into_owned();

    // (a) The FHIR server refuses the kick-off: its status and OperationOutcome, not its URL.
    ops.demo.set_faults(Faults {
        refused_types: vec!["Condition".into()],
        ..Faults::default()
    });
    let (refused, logs) = logs_of(run(&ops.server, &token, "SELECT count(*) FROM Condition")).await;
    let refused = refused.unwrap_err();
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    let told = refused.message();
    assert!(
        told.contains("HTTP 400") && told.contains("this server cannot export Condition"),
        "{told}"
    );
    assert!(!told.contains(&host) && !told.contains("http://"), "{told}");
    let id = error_id(&refused);
    let logged = logs
        .lines()
        .find(|l| l.contains(&id))
        .unwrap_or_else(|| panic!("no log line with {id}: {logs}"));
    assert!(
        logged.contains(&format!("{upstream}")) || logged.contains(&host),
        "the log has the URL: {logged}"
    );
    assert!(
        logged.contains("this server cannot export Condition"),
        "{logged}"
    );
    // ListExports tells the failure the same way.
    let failed =
        super::fhir::wait_for_export(&mut client, |e| e.state() == ExportState::Failed).await;
    assert!(failed.error.contains("HTTP 400"), "{failed:?}");
    assert!(
        !failed.error.contains(&host) && !failed.error.contains("http://"),
        "{failed:?}"
    );

    // (b) A snapshot file gone from the cache: the OS's words, not the path.
    ops.demo.set_faults(Faults::default());
    assert_eq!(
        run(&ops.server, &token, "SELECT id FROM Patient")
            .await
            .unwrap(),
        PATIENTS
    );
    let parquet = files_under(ops.cache.path(), ".parquet");
    assert!(
        !parquet.is_empty(),
        "the Patient snapshot has Parquet files"
    );
    for file in &parquet {
        std::fs::remove_file(file).unwrap();
    }
    let (gone, logs) = logs_of(run(&ops.server, &token, "SELECT id FROM Patient")).await;
    let gone = gone.unwrap_err();
    let told = gone.message();
    assert_eq!(gone.code(), Code::Internal);
    assert!(
        told.starts_with("a local file operation failed: No such file or directory"),
        "{told}"
    );
    assert!(!told.contains(&cache), "{told}");
    assert!(!told.contains(".parquet"), "{told}");
    let id = error_id(&gone);
    let logged = logs
        .lines()
        .find(|l| l.contains(&id))
        .unwrap_or_else(|| panic!("no log line with {id}: {logs}"));
    assert!(logged.contains(&cache), "the log has the path: {logged}");
    ops.server.shutdown().await.unwrap();
}

#[tokio::test]
async fn each_user_may_start_so_many_exports_and_fresh_tables_are_free() {
    let per_hour = ExportRate::new(2, Duration::from_secs(3600));
    let ops = ops(|server| server.with_exports_per_user(per_hour)).await;
    let (mut alice, alice_token) = login_as(&ops.server, USER).await;
    let (_, carol_token) = login_as(&ops.server, READER).await;
    let kickoffs = || ops.demo.stats().kickoffs.len();

    // Two exports: alice's budget.
    for sql in ["SELECT id FROM Patient", "SELECT id FROM Condition"] {
        run(&ops.server, &alice_token, sql).await.unwrap();
    }
    assert_eq!(kickoffs(), 2);
    // Fresh snapshots (freshness `never`) start nothing and cost nothing.
    for _ in 0..3 {
        let rows = run(&ops.server, &alice_token, "SELECT id FROM Patient").await;
        assert_eq!(rows.unwrap(), PATIENTS);
    }
    // A third export is refused, saying when the next may start.
    let refused = run(&ops.server, &alice_token, "SELECT id FROM Observation")
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(
        refused
            .message()
            .contains("you started 2 exports upstream within 1h (this server's limit is 2/1h per user): the next may start in 36"),
        "{}",
        refused.message()
    );
    // A refresh starts an export too.
    let body = RefreshTableRequest {
        table: "Patient".into(),
    }
    .encode_to_vec();
    let refresh = action(&mut alice, "RefreshTable", body).await.unwrap_err();
    assert_eq!(refresh.code(), Code::ResourceExhausted, "{refresh:?}");
    assert_eq!(kickoffs(), 2, "nothing was kicked off for alice");

    // Another user has a budget of their own.
    let rows = run(&ops.server, &carol_token, "SELECT id FROM Observation").await;
    assert!(rows.unwrap() > 0);
    assert_eq!(kickoffs(), 3);
    ops.server.shutdown().await.unwrap();
}

/// The samples of a Prometheus text exposition, by `name{labels}`.
fn samples(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (name, value) = l.rsplit_once(' ').unwrap();
            (name.to_owned(), value.parse().unwrap())
        })
        .collect()
}

#[tokio::test]
async fn metrics_count_statements_rows_logins_exports_and_snapshot_ages() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let metrics_url = format!("http://{}/metrics", listener.local_addr().unwrap());
    let ops = ops(|server| server.with_metrics(listener)).await;
    let (_, token) = login_as(&ops.server, USER).await;

    for _ in 0..2 {
        let rows = run(&ops.server, &token, "SELECT id FROM Patient").await;
        assert_eq!(rows.unwrap(), PATIENTS);
    }
    let bad = run(&ops.server, &token, "SELEC nonsense")
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);
    let mut stranger = FlightSqlServiceClient::new(channel(&ops.server).await);
    assert!(stranger.handshake(USER, "guess").await.is_err());

    let response = reqwest::get(&metrics_url).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    let text = response.text().await.unwrap();
    let m = samples(&text);
    let value = |name: &str| {
        *m.get(name)
            .unwrap_or_else(|| panic!("no {name} in\n{text}"))
    };
    assert_eq!(value(r#"fhirflight_statements_total{code="OK"}"#), 2.0);
    assert_eq!(
        value(r#"fhirflight_statements_total{code="INVALID_ARGUMENT"}"#),
        1.0
    );
    assert_eq!(value("fhirflight_statements_running"), 0.0);
    assert_eq!(
        value("fhirflight_rows_returned_total"),
        2.0 * PATIENTS as f64
    );
    assert!(value("fhirflight_bytes_returned_total") > 0.0, "{text}");
    assert_eq!(value("fhirflight_logins_failed_total"), 1.0);
    assert_eq!(value(r#"fhirflight_exports{state="completed"}"#), 1.0);
    assert_eq!(value(r#"fhirflight_exports{state="failed"}"#), 0.0);
    let age = value(r#"fhirflight_snapshot_age_seconds{catalog="fhir",table="Patient"}"#);
    assert!((0.0..60.0).contains(&age), "{age}");
    assert_eq!(value("fhirflight_memory_pool_reserved_bytes"), 0.0);
    assert!(!text.contains("pat-"), "no patient data in metrics");
    ops.server.shutdown().await.unwrap();
}

#[tokio::test]
async fn health_is_served_without_credentials_and_goes_not_serving_on_shutdown() {
    let server = start(
        FlightSqlServer::new(fhir_context())
            .with_users(users())
            .with_shutdown_grace(Duration::from_secs(30)),
    )
    .await;
    let mut health = HealthClient::new(channel(&server).await);
    let check = |service: &str| HealthCheckRequest {
        service: service.into(),
    };
    for service in ["", "arrow.flight.protocol.FlightService"] {
        let status = health.check(check(service)).await.unwrap().into_inner();
        assert_eq!(status.status(), ServingStatus::Serving, "{service:?}");
    }
    let mut watch = health.watch(check("")).await.unwrap().into_inner();
    let first = watch.message().await.unwrap().unwrap();
    assert_eq!(first.status(), ServingStatus::Serving);

    let stopping = tokio::spawn(server.shutdown());
    let next = watch.message().await.unwrap().unwrap();
    assert_eq!(next.status(), ServingStatus::NotServing);
    assert!(
        watch.message().await.unwrap().is_none(),
        "the watch ends, so it does not hold the shutdown"
    );
    // Well within the grace: the watch did not hold it.
    tokio::time::timeout(Duration::from_secs(10), stopping)
        .await
        .expect("shutdown without waiting for the grace")
        .unwrap()
        .unwrap();
}
