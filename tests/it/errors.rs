//! Errors as users meet them: a token endpoint that refuses the client and a table that does not
//! exist reach a Flight SQL client with the code of their kind; the command line prints a
//! whole error, each cause once.

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use arrow_flight::FlightDescriptor;
use arrow_flight::flight_service_client::FlightServiceClient;
use arrow_flight::sql::{CommandStatementQuery, ProstMessageExt};
use axum::Router;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use datafusion::prelude::{SessionConfig, SessionContext};
use fhirflight::Error;
use fhirflight::bulk::{BulkClient, ClientOptions};
use fhirflight::catalog::{self, BulkSource, CatalogOptions, FhirCatalog};
use fhirflight::flight::{FlightSqlServer, RunningServer};
use fhirflight::smart::SmartConfig;
use prost::Message;
use serde_json::json;
use tonic::Code;
use tonic::transport::Endpoint;
use url::Url;

use crate::smart::{serve, test_key};

/// What the token endpoint of [`fhir_server`] says to the client.
const REFUSAL: &str = "the client's key is not registered";

/// A FHIR server listing `Patient` whose token endpoint issues `tokens` tokens (each stale at
/// once, so that every request asks for a new one), then refuses the client (HTTP 401,
/// `invalid_client`). Returns the FHIR base and the token endpoint.
async fn fhir_server(tokens: usize) -> (Url, Url) {
    let issued = Arc::new(AtomicUsize::new(0));
    let token = post(move || {
        let issued = Arc::clone(&issued);
        async move {
            if issued.fetch_add(1, Ordering::SeqCst) < tokens {
                let token = json!({"access_token": "t", "token_type": "bearer", "expires_in": 0});
                return axum::Json(token).into_response();
            }
            let refusal = json!({"error": "invalid_client", "error_description": REFUSAL});
            (StatusCode::UNAUTHORIZED, axum::Json(refusal)).into_response()
        }
    });
    let metadata = get(|| async {
        axum::Json(json!({
            "resourceType": "CapabilityStatement",
            "rest": [{"mode": "server", "resource": [{"type": "Patient"}]}]
        }))
    });
    let origin = serve(
        Router::new()
            .route("/auth/token", token)
            .route("/fhir/metadata", metadata),
    )
    .await;
    (
        origin.join("fhir/").unwrap(),
        origin.join("auth/token").unwrap(),
    )
}

/// A client of `base` that asks `token_endpoint` for its tokens, without retries.
async fn client(base: &Url, token_endpoint: &Url) -> fhirflight::Result<BulkClient> {
    let smart =
        SmartConfig::new("fhirflight-test", test_key()).with_token_endpoint(token_endpoint.clone());
    BulkClient::try_new(
        base.clone(),
        Some(smart),
        ClientOptions::default().with_retry_budget(0),
    )
    .await
}

/// A Flight SQL server (anonymous, on loopback) whose catalog `fhir` is `base`'s.
async fn flight_server(
    base: &Url,
    token_endpoint: &Url,
    cache: &tempfile::TempDir,
) -> RunningServer {
    let client = client(base, token_endpoint).await.unwrap();
    let options = CatalogOptions::default().with_cache_dir(cache.path());
    let fhir = FhirCatalog::try_new(Arc::new(BulkSource::new(client)), options)
        .await
        .unwrap();
    let ctx = SessionContext::new_with_config(
        SessionConfig::new().with_default_catalog_and_schema("fhir", catalog::DEFAULT_SCHEMA),
    );
    ctx.register_catalog("fhir", Arc::new(fhir));
    catalog::register_functions(&ctx, CatalogOptions::default());
    FlightSqlServer::new(ctx)
        .with_anonymous(true)
        .bind("127.0.0.1:0")
        .await
        .unwrap()
}

/// The status a Flight SQL client gets for `sql`.
async fn query_status(server: &RunningServer, sql: &str) -> tonic::Status {
    let channel = Endpoint::new(format!("http://{}", server.local_addr()))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let command = CommandStatementQuery {
        query: sql.into(),
        transaction_id: None,
    };
    let descriptor = FlightDescriptor::new_cmd(command.as_any().encode_to_vec());
    match FlightServiceClient::new(channel)
        .get_flight_info(descriptor)
        .await
    {
        Ok(info) => panic!("{sql}: answered {info:?}"),
        Err(status) => status,
    }
}

#[tokio::test]
async fn a_refused_token_request_keeps_the_servers_answer_as_its_source() {
    let (base, token_endpoint) = fhir_server(0).await;
    let err = client(&base, &token_endpoint)
        .await
        .unwrap()
        .resource_types()
        .await
        .unwrap_err();
    let Error::Token {
        source: Some(source),
        ..
    } = &err
    else {
        panic!("{err:?}")
    };
    let Some(Error::Http {
        status: 401,
        message,
        ..
    }) = source.downcast_ref::<Error>()
    else {
        panic!("{source:?}")
    };
    assert_eq!(message, &format!("invalid_client: {REFUSAL}"));
    let text = err.to_string();
    assert!(
        text.starts_with("SMART auth: token request failed: POST http://"),
        "{text}"
    );
    assert_eq!(text.matches(REFUSAL).count(), 1, "{text}");
}

#[tokio::test]
async fn a_refused_token_request_is_unavailable_to_a_flight_client() {
    // The catalog asks nothing when made: the export's token request, the first, is refused.
    let (base, token_endpoint) = fhir_server(0).await;
    let cache = tempfile::tempdir().unwrap();
    let server = flight_server(&base, &token_endpoint, &cache).await;
    let status = query_status(&server, "SELECT count(*) FROM Patient").await;
    assert_eq!(status.code(), Code::Unavailable, "{status}");
    // The refusal, without the token endpoint's URL (the server log has it).
    assert!(
        status
            .message()
            .starts_with("SMART auth: no access token: upstream POST: HTTP 401: "),
        "{}",
        status.message()
    );
    assert!(status.message().contains(REFUSAL), "{}", status.message());
    assert!(!status.message().contains("http"), "{}", status.message());
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_missing_table_or_catalog_is_not_found_before_any_export() {
    let (base, token_endpoint) = fhir_server(1).await;
    let cache = tempfile::tempdir().unwrap();
    let server = flight_server(&base, &token_endpoint, &cache).await;
    for (sql, table) in [
        ("SELECT * FROM Nope", "'fhir.fhir.nope'"),
        (
            "SELECT * FROM nowhere.fhir.Patient",
            "'nowhere.fhir.patient'",
        ),
        (
            "SELECT p.id FROM Patient p JOIN fhir.other.Patient q ON p.id = q.id",
            "'fhir.other.patient'",
        ),
        ("EXPLAIN SELECT * FROM Nope", "'fhir.fhir.nope'"),
    ] {
        let status = query_status(&server, sql).await;
        assert_eq!(status.code(), Code::NotFound, "{sql}: {status}");
        assert!(
            status
                .message()
                .contains(&format!("table {table} not found")),
            "{sql}: {}",
            status.message()
        );
    }
    // A table function is not a table.
    let status = query_status(&server, "SELECT * FROM fhir_refresh('nowhere')").await;
    assert_ne!(status.code(), Code::NotFound, "{status}");
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn the_command_line_prints_the_whole_error_once() {
    let (base, token_endpoint) = fhir_server(0).await;
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("key.pem");
    std::fs::write(
        &key,
        include_str!("../../src/smart/testdata/ec384-sec1.pem"),
    )
    .unwrap();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_fhirflight"))
            .args(["sql", "--cache-dir"])
            .arg(dir.path().join("cache"))
            .args(["--server", base.as_str(), "--client-id", "fhirflight-test"])
            .args(["--token-endpoint", token_endpoint.as_str(), "--key-file"])
            .arg(&key)
            .arg("SELECT count(*) FROM Patient")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let error = stderr
        .lines()
        .find(|l| l.starts_with("error: "))
        .unwrap_or_else(|| panic!("{stderr}"));
    assert!(
        error.starts_with("error: SMART auth: token request failed: POST http://"),
        "{stderr}"
    );
    assert!(error.contains(": HTTP 401: invalid_client: "), "{stderr}");
    assert_eq!(stderr.matches(REFUSAL).count(), 1, "{stderr}");
}

#[tokio::test]
async fn a_mistyped_table_or_column_names_the_closest() {
    use fhirflight::config::{Config, PrimarySource, SessionBuilder};
    let folder = tempfile::tempdir().unwrap();
    let patient = json!({"resourceType": "Patient", "id": "p1", "gender": "female",
        "birthDate": "1970-01-01", "active": true, "language": "en",
        "name": [{"family": "Chalmers", "given": ["Peter", "James"]}]});
    std::fs::write(folder.path().join("Patient.ndjson"), patient.to_string()).unwrap();
    let session = SessionBuilder::new(Config::default())
        .with_source(PrimarySource::Folder(folder.path().to_owned()))
        .with_catalog_options(CatalogOptions::default().with_cache_dir(folder.path().join("cache")))
        .build()
        .await
        .unwrap();
    let ctx = session.context();
    let error =
        |sql: &'static str| async move { catalog::sql(ctx, sql).await.unwrap_err().to_string() };
    let err = error("SELECT * FROM patinet").await;
    assert!(
        err.ends_with("table 'fhir.fhir.patinet' not found: did you mean Patient?"),
        "{err}"
    );
    let err = error("SELECT * FROM Nothing").await;
    assert!(
        err.ends_with("table 'fhir.fhir.nothing' not found"),
        "{err}"
    );
    // 9 columns: the 5 closest are named, not all of them.
    let err = error("SELECT name_0_givn_0 FROM Patient").await;
    assert!(
        err.ends_with(
            "No field named name_0_givn_0. The closest of the 9 columns in scope: \"Patient\".name_0_given_0, \
             \"Patient\".name_0_given_1, \"Patient\".name_0_family, \"Patient\".active, \
             \"Patient\".language"
        ),
        "{err}"
    );
}

#[test]
fn a_key_file_is_named_by_its_setting_and_each_prefix_comes_once() {
    let dir = tempfile::tempdir().unwrap();
    let public_only = dir.path().join("public.jwk.json");
    std::fs::write(&public_only, r#"{"kty":"RSA","n":"AQAB","e":"AQAB"}"#).unwrap();
    let missing = dir.path().join("missing.pem");
    for (key, expected) in [
        (
            &missing,
            format!(
                "error: configuration: FHIR server: --key-file / key_file: {}: No such file or directory",
                missing.display()
            ),
        ),
        (
            &public_only,
            format!(
                "error: configuration: FHIR server: --key-file / key_file: SMART auth: {}: JWK: ",
                public_only.display()
            ),
        ),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_fhirflight"))
            .args([
                "sql",
                "--server",
                "https://127.0.0.1:1/fhir",
                "--client-id",
                "c",
            ])
            .arg("--key-file")
            .arg(key)
            .arg("--cache-dir")
            .arg(dir.path().join("cache"))
            .arg("SELECT 1")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(stderr.contains(&expected), "{stderr}");
        assert_eq!(
            stderr.matches("SMART auth:").count(),
            usize::from(key == &public_only)
        );
    }
}
