//! The real thing: FHIR catalogs over demo Bulk Data servers, served with [`FhirExportControl`].

use std::time::Duration;

use fhirflight::bulk::{BulkClient, ClientOptions};
use fhirflight::catalog::{self, BulkSource, CatalogOptions, FhirCatalog, Freshness};
use fhirflight::demo::{DemoConfig, DemoServer, generate};
use fhirflight::flight::FhirExportControl;
use fhirflight::flight::proto::{AddViewRequest, AddViewResult};
use fhirflight::smart::{SigningKey, SmartConfig};
use tempfile::TempDir;

use super::*;

const SEED: u64 = 42;
pub(super) const PATIENTS: usize = 12;

pub(super) async fn catalog_over(
    server: &DemoServer,
    cache: &TempDir,
    freshness: Freshness,
) -> FhirCatalog {
    let creds = server.credentials();
    let key = SigningKey::from_jwk(creds.rs384().private_jwk(), None).unwrap();
    let options = ClientOptions::default()
        .with_retry_after_bounds(Duration::from_millis(1), Duration::from_millis(100))
        .with_retry_budget(0);
    let client = BulkClient::try_new(
        server.base_url(),
        Some(SmartConfig::new(creds.client_id(), key)),
        options,
    )
    .await
    .unwrap();
    let options = CatalogOptions::default()
        .with_cache_dir(cache.path())
        .with_freshness(freshness);
    FhirCatalog::try_new(Arc::new(BulkSource::new(client)), options)
        .await
        .unwrap()
}

/// Catalog `fhir` over a demo server of `config` (the default catalog) and catalog `other`
/// over a second demo server (seed 7, 5 patients), served as `fhirflight serve` does.
struct Fixture {
    demo: DemoServer,
    other: DemoServer,
    server: RunningServer,
    _cache: TempDir,
}

async fn fixture(config: DemoConfig) -> Fixture {
    fixture_with(config, Freshness::Never).await
}

async fn fixture_with(config: DemoConfig, freshness: Freshness) -> Fixture {
    let cache = tempfile::tempdir().unwrap();
    let demo = DemoServer::start(config).await.unwrap();
    let other = DemoServer::start(DemoConfig::default().with_seed(7).with_patients(5))
        .await
        .unwrap();
    let ctx = SessionContext::new_with_config(
        SessionConfig::new()
            .with_information_schema(true)
            .with_default_catalog_and_schema("fhir", catalog::DEFAULT_SCHEMA),
    );
    let fhir = catalog_over(&demo, &cache, freshness).await;
    ctx.register_catalog("fhir", Arc::new(fhir));
    let second = catalog_over(&other, &cache, freshness).await;
    ctx.register_catalog("other", Arc::new(second));
    let control = FhirExportControl::from_session(&ctx);
    let server = FlightSqlServer::new(ctx)
        .with_users(users())
        .with_export_control(Arc::new(control));
    Fixture {
        demo,
        other,
        server: start(server).await,
        _cache: cache,
    }
}

pub(super) fn demo_config() -> DemoConfig {
    DemoConfig::default()
        .with_seed(SEED)
        .with_patients(PATIENTS)
}

/// How many resources of `resource_type` the demo population of `seed`/`patients` has.
fn population_count(seed: u64, patients: usize, resource_type: &str) -> usize {
    generate(seed, patients).resources(resource_type).len()
}

async fn exports(client: &mut FlightSqlServiceClient<Channel>) -> Vec<ExportStatus> {
    let listed = action(client, "ListExports", vec![]).await.unwrap();
    ListExportsResult::decode(&listed[..]).unwrap().exports
}

async fn tables(
    client: &mut FlightSqlServiceClient<Channel>,
    catalog: &str,
) -> (Vec<String>, Vec<SchemaRef>) {
    let info = client
        .get_tables(CommandGetTables {
            catalog: Some(catalog.into()),
            db_schema_filter_pattern: None,
            table_name_filter_pattern: None,
            table_types: vec![],
            include_schema: true,
        })
        .await
        .unwrap();
    let batches = fetch(client, info).await;
    let schemas = batches[0]
        .column_by_name("table_schema")
        .unwrap()
        .as_binary::<i32>();
    let schemas = (0..schemas.len())
        .map(|i| Arc::new(try_schema_from_ipc_buffer(schemas.value(i)).unwrap()))
        .collect();
    (strings(&batches[0], "table_name"), schemas)
}

#[tokio::test]
async fn queries_export_once_per_statement_and_actions_show_it() {
    let f = fixture(demo_config()).await;
    let mut client = login(&f.server).await;

    // Browsing lists every resource type of both catalogs and exports nothing: tables
    // without a snapshot have an empty schema until a query or a refresh exports them.
    let info = client.get_catalogs().await.unwrap();
    assert_eq!(
        strings(&fetch(&mut client, info).await[0], "catalog_name"),
        ["fhir", "other"]
    );
    let (names, schemas) = tables(&mut client, "fhir").await;
    assert!(names.contains(&"Patient".to_string()), "{names:?}");
    assert!(names.contains(&"Condition".to_string()), "{names:?}");
    assert!(schemas.iter().all(|s| s.fields().is_empty()));
    let info = client
        .get_db_schemas(CommandGetDbSchemas {
            catalog: Some("other".into()),
            db_schema_filter_pattern: None,
        })
        .await
        .unwrap();
    assert_eq!(
        strings(&fetch(&mut client, info).await[0], "db_schema_name"),
        ["fhir"]
    );
    let browsed = query(
        &mut client,
        "SELECT count(*) AS n FROM information_schema.tables \
         WHERE table_catalog = 'fhir' AND table_schema = 'fhir'",
    )
    .await;
    assert!(
        browsed.contains(&format!("| {} |", names.len())),
        "{browsed}"
    );
    assert!(f.demo.stats().kickoffs.is_empty());
    assert!(f.other.stats().kickoffs.is_empty());

    // A join of two types: ONE export of both, values of the demo population.
    let patients = population_count(SEED, PATIENTS, "Patient");
    let conditions = population_count(SEED, PATIENTS, "Condition");
    let counts = query(
        &mut client,
        "SELECT (SELECT count(*) FROM patient) AS p, (SELECT count(*) FROM condition) AS c",
    )
    .await;
    assert!(
        counts.contains(&format!("| {patients} | {conditions} |")),
        "{counts}"
    );
    let kickoffs = f.demo.stats().kickoffs;
    assert_eq!(kickoffs.len(), 1, "{kickoffs:?}");
    let mut types = kickoffs[0].types.clone();
    types.sort();
    assert_eq!(types, ["Condition", "Patient"]);

    let exports = exports(&mut client).await;
    assert_eq!(exports.len(), 1);
    assert_eq!(exports[0].id, "fhir/1");
    assert_eq!(exports[0].catalog, "fhir");
    assert_eq!(exports[0].state(), ExportState::Completed);
    assert!(exports[0].files_done >= 2 && exports[0].bytes_downloaded > 0);
    assert!(exports[0].files_total >= exports[0].files_done);

    let snapshots = action(&mut client, "ListSnapshots", vec![]).await.unwrap();
    let mut snapshots = ListSnapshotsResult::decode(&snapshots[..])
        .unwrap()
        .snapshots;
    snapshots.sort_by(|a, b| a.resource_type.cmp(&b.resource_type));
    let listed: Vec<_> = snapshots
        .iter()
        .map(|s| (s.catalog.as_str(), s.resource_type.as_str(), s.rows))
        .collect();
    assert_eq!(
        listed,
        [
            ("fhir", "Condition", conditions as u64),
            ("fhir", "Patient", patients as u64)
        ]
    );

    // Now browsing knows Patient's columns, still without exporting.
    let (names, schemas) = tables(&mut client, "fhir").await;
    let patient = &schemas[names.iter().position(|n| n == "Patient").unwrap()];
    assert!(patient.field_with_name("gender").is_ok(), "{patient:?}");
    assert_eq!(f.demo.stats().kickoffs.len(), 1);

    // A prepared statement with a parameter, checked against the population.
    let females = generate(SEED, PATIENTS)
        .resources("Patient")
        .iter()
        .filter(|r| r.json().contains(r#""gender":"female""#))
        .count();
    let mut statement = client
        .prepare(
            "SELECT count(*) AS n FROM fhir.fhir.patient WHERE gender = ?".into(),
            None,
        )
        .await
        .unwrap();
    let parameters = Arc::new(statement.parameter_schema().unwrap().clone());
    let female = RecordBatch::try_new(
        parameters,
        vec![Arc::new(StringArray::from(vec!["female"]))],
    )
    .unwrap();
    statement.set_parameters(female).unwrap();
    let info = statement.execute().await.unwrap();
    let batches = fetch(&mut client, info).await;
    assert_eq!(strings(&batches[0], "n"), [females.to_string()]);
    statement.close().await.unwrap();
    assert_eq!(f.demo.stats().kickoffs.len(), 1, "the snapshot is reused");

    // The second catalog exports from its own server.
    let other = query(&mut client, "SELECT count(*) AS n FROM other.fhir.patient").await;
    assert!(
        other.contains(&format!("| {} |", population_count(7, 5, "Patient"))),
        "{other}"
    );
    assert_eq!(f.other.stats().kickoffs.len(), 1);
    assert_eq!(f.demo.stats().kickoffs.len(), 1);

    // RefreshTable exports again (incrementally) and answers when it is committed.
    let refreshed = action(
        &mut client,
        "RefreshTable",
        RefreshTableRequest {
            table: "fhir.fhir.Patient".into(),
        }
        .encode_to_vec(),
    )
    .await
    .unwrap();
    let export = RefreshTableResult::decode(&refreshed[..])
        .unwrap()
        .export
        .unwrap();
    assert_eq!(
        (export.id.as_str(), export.state(), export.resource_types),
        (
            "fhir/2",
            ExportState::Completed,
            vec!["Patient".to_string()]
        )
    );
    let kickoffs = f.demo.stats().kickoffs;
    assert!(kickoffs[1].params.iter().any(|(k, _)| k == "_since"));

    // Unknown names are NOT_FOUND, and the server keeps serving.
    for (name, body) in [
        (
            "RefreshTable",
            RefreshTableRequest {
                table: "Nope".into(),
            }
            .encode_to_vec(),
        ),
        (
            "RefreshTable",
            RefreshTableRequest {
                table: "nowhere.fhir.Patient".into(),
            }
            .encode_to_vec(),
        ),
        (
            "CancelExport",
            CancelExportRequest {
                id: "fhir/99".into(),
            }
            .encode_to_vec(),
        ),
    ] {
        let err = action(&mut client, name, body).await.unwrap_err();
        assert_eq!(err.code(), Code::NotFound, "{name}: {err}");
    }
    let err = action(&mut client, "Explode", vec![]).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let again = query(&mut client, "SELECT count(*) AS n FROM patient").await;
    assert!(again.contains(&format!("| {patients} |")), "{again}");
    f.server.shutdown().await.unwrap();
}

/// GetFlightInfo brings the snapshots up to date, DoGet reads them: with freshness
/// `always`, one export per statement, not one per call.
#[tokio::test]
async fn freshness_always_exports_once_per_statement_not_per_call() {
    let f = fixture_with(demo_config(), Freshness::Always).await;
    let mut client = login(&f.server).await;
    let patients = population_count(SEED, PATIENTS, "Patient");
    for statement in 1..=2 {
        let counted = query(&mut client, "SELECT count(*) AS n FROM patient").await;
        assert!(counted.contains(&format!("| {patients} |")), "{counted}");
        assert_eq!(f.demo.stats().kickoffs.len(), statement);
    }
    f.server.shutdown().await.unwrap();
}

/// A demo server whose exports never finish (it answers "in progress" forever).
fn endless_export() -> DemoConfig {
    demo_config()
        .with_status_polls(u32::MAX)
        .with_retry_after(Duration::from_secs(1))
}

/// Polls ListExports until `done` holds for an export (bounded: a hang is a failure).
pub(super) async fn wait_for_export(
    client: &mut FlightSqlServiceClient<Channel>,
    done: impl Fn(&ExportStatus) -> bool,
) -> ExportStatus {
    tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            if let Some(export) = exports(client).await.into_iter().find(|e| done(e)) {
                return export;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the export reaches the expected state")
}

#[tokio::test]
async fn cancel_export_action_stops_a_running_export_and_fails_its_query() {
    let f = fixture(endless_export()).await;
    let mut client = login(&f.server).await;
    let token = client.token().unwrap().clone();
    let server = &f.server;
    let waiting = statement_status(server, Some(&token), "SELECT count(*) FROM observation");
    let cancel = async {
        let running = wait_for_export(&mut client, |e| {
            e.state() == ExportState::Running && !e.progress.is_empty()
        })
        .await;
        assert_eq!(running.resource_types, ["Observation"]);
        // The FHIR server has the job (a cancel before the kick-off leaves none to delete).
        crate::until("the kick-off", || !f.demo.stats().kickoffs.is_empty()).await;
        let cancelled = action(
            &mut client,
            "CancelExport",
            CancelExportRequest {
                id: running.id.clone(),
            }
            .encode_to_vec(),
        )
        .await
        .unwrap();
        let export = CancelExportResult::decode(&cancelled[..])
            .unwrap()
            .export
            .unwrap();
        assert_eq!(export.state(), ExportState::Cancelled);
    };
    let (status, ()) = tokio::join!(waiting, cancel);
    assert_eq!(status.code(), Code::Cancelled, "{status}");
    wait_for_export(&mut client, |e| e.state() == ExportState::Cancelled).await;
    // The cancel reaches the FHIR server: its job is DELETEd.
    crate::until("the job's deletion", || f.demo.stats().deletes == 1).await;
    f.server.shutdown().await.unwrap();
}

/// A client that goes away detaches from the export its statement waited for: the export runs
/// on (an export is expensive; only CancelExport stops one).
#[tokio::test]
async fn a_dropped_get_flight_info_leaves_its_export_running() {
    let f = fixture(endless_export()).await;
    let mut client = login(&f.server).await;
    let token = client.token().unwrap().clone();
    let waiting = tokio::spawn({
        let channel = channel(&f.server).await;
        async move {
            let mut raw = FlightServiceClient::new(channel);
            let command = CommandStatementQuery {
                query: "SELECT count(*) FROM observation".into(),
                transaction_id: None,
            };
            let mut request =
                tonic::Request::new(FlightDescriptor::new_cmd(command.as_any().encode_to_vec()));
            request
                .metadata_mut()
                .insert("authorization", format!("Bearer {token}").parse().unwrap());
            raw.get_flight_info(request).await
        }
    });
    let running = wait_for_export(&mut client, |e| e.state() == ExportState::Running).await;
    // The export is past its kick-off (the FHIR server has the job) before the client leaves.
    tokio::time::timeout(Duration::from_secs(30), async {
        while f.demo.stats().kickoffs.is_empty() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the export kicks off");
    // The client gives up: its call is dropped, and the server drops the planning; the export
    // goes on polling.
    waiting.abort();
    let polls = f.demo.stats().status_polls;
    crate::until("more status polls", || {
        f.demo.stats().status_polls > polls + 2
    })
    .await;
    let still = wait_for_export(&mut client, |e| e.state() == ExportState::Running).await;
    assert_eq!(still.id, running.id);
    assert_eq!(f.demo.stats().kickoffs.len(), 1);
    assert_eq!(f.demo.stats().deletes, 0, "the job is kept");
    // A server that stops (SIGTERM of `serve`) keeps the job too, for its next start.
    f.server.shutdown().await.unwrap();
    assert_eq!(f.demo.stats().deletes, 0, "the job is kept after shutdown");
}

#[tokio::test]
async fn add_view_action_adds_a_queryable_table() {
    let f = fixture(demo_config()).await;
    let mut client = login(&f.server).await;
    let view = serde_json::json!({
        "resourceType": "ViewDefinition",
        "name": "patient_demographics",
        "resource": "Patient",
        "select": [{"column": [
            {"name": "id", "path": "id"},
            {"name": "gender", "path": "gender"}
        ]}]
    });
    let added = action(
        &mut client,
        "AddView",
        AddViewRequest {
            catalog: String::new(),
            view_definition: view.to_string(),
        }
        .encode_to_vec(),
    )
    .await
    .unwrap();
    assert_eq!(
        AddViewResult::decode(&added[..]).unwrap().table,
        "fhir.fhir.patient_demographics"
    );
    let patients = population_count(SEED, PATIENTS, "Patient");
    let counted = query(
        &mut client,
        "SELECT count(DISTINCT id) AS n FROM patient_demographics",
    )
    .await;
    assert!(counted.contains(&format!("| {patients} |")), "{counted}");

    // A malformed view and an unknown catalog are refused with the reason.
    let err = action(
        &mut client,
        "AddView",
        AddViewRequest {
            catalog: "fhir".into(),
            view_definition: r#"{"name": "v", "select": []}"#.into(),
        }
        .encode_to_vec(),
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err}");
    assert!(err.message().contains("resource"), "{err}");
    let err = action(
        &mut client,
        "AddView",
        AddViewRequest {
            catalog: "nowhere".into(),
            view_definition: view.to_string(),
        }
        .encode_to_vec(),
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err}");
    f.server.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_fhir_server_that_is_down_is_unavailable_and_the_server_keeps_serving() {
    let f = fixture(demo_config()).await;
    let mut client = login(&f.server).await;
    let token = client.token().unwrap().clone();
    let base = f.demo.base_url();
    f.demo.shutdown().await;
    let err = statement_status(&f.server, Some(&token), "SELECT count(*) FROM patient").await;
    assert_eq!(err.code(), Code::Unavailable, "{err}");
    // What failed, not where: the server's address is in the log only.
    let address = format!("{}:{}", base.host_str().unwrap(), base.port().unwrap());
    assert!(
        err.message().starts_with("upstream GET: could not connect")
            && !err.message().contains(&address),
        "{err}"
    );
    let other = query(&mut client, "SELECT count(*) AS n FROM other.fhir.patient").await;
    assert!(
        other.contains(&format!("| {} |", population_count(7, 5, "Patient"))),
        "{other}"
    );
    f.server.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_read_user_queries_but_changes_nothing() {
    let f = fixture(demo_config()).await;
    let mut carol = FlightSqlServiceClient::new(channel(&f.server).await);
    carol.handshake(READER, PASSWORD).await.unwrap();
    let patients = population_count(SEED, PATIENTS, "Patient");
    let counted = query(&mut carol, "SELECT count(*) AS n FROM Patient").await;
    assert!(counted.contains(&format!("| {patients} |")), "{counted}");
    assert!(action(&mut carol, "ListExports", Vec::new()).await.is_ok());

    let view = r#"{"resourceType": "ViewDefinition", "name": "v", "resource": "Patient",
        "select": [{"column": [{"name": "id", "path": "id"}]}]}"#;
    let add = AddViewRequest {
        catalog: String::new(),
        view_definition: view.into(),
    };
    let refresh = RefreshTableRequest {
        table: "Patient".into(),
    };
    for (name, body) in [
        ("AddView", add.encode_to_vec()),
        ("RefreshTable", refresh.encode_to_vec()),
    ] {
        let err = action(&mut carol, name, body).await.unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied, "{err}");
        assert!(
            err.message().contains(&format!(
                "{name} needs the admin role; carol has the read role"
            )),
            "{err}"
        );
    }
    let token = carol.token().unwrap().clone();
    for sql in [
        "SELECT * FROM fhir_refresh('fhir', 'Patient')",
        "SELECT * FROM fhir_add_view('fhir', '{}')",
    ] {
        let err = statement_status(&f.server, Some(&token), sql).await;
        assert_eq!(err.code(), Code::PermissionDenied, "{sql}: {err}");
    }
    assert_eq!(
        f.demo.stats().kickoffs.len(),
        1,
        "only the first query exported"
    );
    f.server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_exports_command_lists_a_servers_exports_without_the_proto() {
    let f = fixture(demo_config()).await;
    let mut client = login(&f.server).await;
    query(&mut client, "SELECT count(*) FROM Patient").await;
    let exports = |format: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_fhirflight"))
            .args(["exports", "--user", USER, "--format", format, "--connect"])
            .arg(format!("grpc://{}", f.server.local_addr()))
            .env("FHIRFLIGHT_PASSWORD", PASSWORD)
            .output()
            .unwrap()
    };
    let out = tokio::task::block_in_place(|| exports("json"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let export = &listed[0];
    assert_eq!(
        (&export["id"], &export["state"], &export["resourceTypes"]),
        (
            &serde_json::json!("fhir/1"),
            &serde_json::json!("completed"),
            &serde_json::json!(["Patient"])
        )
    );
    assert!(export["filesDone"].as_u64().unwrap() >= 1, "{export}");
    let out = tokio::task::block_in_place(|| exports("table"));
    let table = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = table.lines().collect();
    assert!(
        lines[0].starts_with("ID ") && lines[0].ends_with(" TYPES"),
        "{table}"
    );
    assert!(
        lines[1].starts_with("fhir/1 ")
            && lines[1].contains(" completed ")
            && lines[1].ends_with(" Patient"),
        "{table}"
    );
    // A wrong password is refused, saying so.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_fhirflight"))
        .args(["exports", "--user", USER, "--connect"])
        .arg(format!("grpc://{}", f.server.local_addr()))
        .env("FHIRFLIGHT_PASSWORD", "not it")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("login refused"), "{stderr}");
}
