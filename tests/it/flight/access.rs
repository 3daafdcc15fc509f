//! Who gets in and how: anonymous access only when asked and only on loopback, and TLS with
//! certificate files.

use arrow_flight::FlightDescriptor;
use arrow_flight::flight_service_client::FlightServiceClient;
use arrow_flight::sql::client::FlightSqlServiceClient;
use base64::Engine;
use fhirflight::flight::FlightSqlServer;
use tonic::Code;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};

use super::{PASSWORD, USER, channel, fhir_context, query, start, users};

#[tokio::test]
async fn anonymous_access_only_when_asked_and_on_loopback() {
    let server = start(FlightSqlServer::new(fhir_context()).with_anonymous(true)).await;
    let mut client = FlightSqlServiceClient::new(channel(&server).await);
    let table = query(&mut client, "SELECT count(*) AS n FROM Condition").await;
    assert!(table.contains("| 4 |"), "{table}");
    server.shutdown().await.unwrap();

    // Refused when binding (before anything is announced), and 0.0.0.0 is never listened on.
    let err = FlightSqlServer::new(fhir_context())
        .with_anonymous(true)
        .bind("0.0.0.0:0")
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("only allowed on a loopback address"),
        "{err}"
    );

    let err = FlightSqlServer::new(fhir_context())
        .bind("127.0.0.1:0")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("no users configured"), "{err}");
    let err = FlightSqlServer::new(fhir_context())
        .with_users(users())
        .with_tls("no/such/cert.pem", "no/such/key.pem")
        .bind("127.0.0.1:0")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("no/such/cert.pem"), "{err}");
}

#[tokio::test]
async fn tls_with_certificate_files() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tls");
    let server = FlightSqlServer::new(fhir_context())
        .with_users(users())
        .with_tls(format!("{dir}/server.pem"), format!("{dir}/server.key"));
    let server = start(server).await;
    let ca = std::fs::read_to_string(format!("{dir}/ca.pem")).unwrap();
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca))
        .domain_name("localhost");
    let channel = Endpoint::new(format!("https://localhost:{}", server.local_addr().port()))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = FlightSqlServiceClient::new(channel);
    client.handshake(USER, PASSWORD).await.unwrap();
    let table = query(
        &mut client,
        "SELECT name_0_family FROM Patient WHERE id = 'pat-2'",
    )
    .await;
    assert!(table.contains("| Turing        |"), "{table}");

    // A plaintext client cannot talk to it.
    let plain = Endpoint::new(format!("http://{}", server.local_addr()))
        .unwrap()
        .connect()
        .await;
    if let Ok(plain) = plain {
        let mut client = FlightSqlServiceClient::new(plain);
        assert!(client.handshake(USER, PASSWORD).await.is_err());
    }
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn basic_credentials_only_on_the_handshake_and_failed_logins_wait() {
    let server = start(FlightSqlServer::new(fhir_context()).with_users(users())).await;
    let basic = base64::prelude::BASE64_STANDARD.encode(format!("{USER}:{PASSWORD}"));
    let mut raw = FlightServiceClient::new(channel(&server).await);
    let mut request = tonic::Request::new(FlightDescriptor::new_cmd(b"x".to_vec()));
    request
        .metadata_mut()
        .insert("authorization", format!("Basic {basic}").parse().unwrap());
    let err = raw.get_flight_info(request).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    assert!(err.message().contains("on the Handshake only"), "{err}");

    // A wrong password, then the right one from the same address: it must wait.
    let mut client = FlightSqlServiceClient::new(channel(&server).await);
    let wrong = client
        .handshake(USER, "guess")
        .await
        .unwrap_err()
        .to_string();
    assert!(wrong.contains("invalid username or password"), "{wrong}");
    let waiting = client
        .handshake(USER, PASSWORD)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        waiting.contains("too many failed logins from this address"),
        "{waiting}"
    );
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn every_statement_and_login_is_audited() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let audit = fhirflight::flight::AuditLog::to_file(&path).unwrap();
    let server = start(
        FlightSqlServer::new(fhir_context())
            .with_users(users())
            .with_audit_log(audit),
    )
    .await;
    let mut alice = super::login(&server).await;
    let mut client = FlightSqlServiceClient::new(channel(&server).await);
    assert!(client.handshake(USER, "guess").await.is_err());
    let table = query(
        &mut alice,
        "SELECT count(*) AS n FROM Condition WHERE id <> 'x'",
    )
    .await;
    assert!(table.contains("| 4 |"), "{table}");

    let records = || -> Vec<serde_json::Value> {
        std::fs::read_to_string(&path)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    crate::until("the DoGet record", || records().len() == 4).await;
    let records = records();
    let calls: Vec<(&str, &str, &str)> = records
        .iter()
        .map(|r| {
            let text = |k: &str| r[k].as_str().unwrap_or_default();
            (text("call"), text("user"), text("outcome"))
        })
        .collect();
    assert_eq!(
        calls,
        [
            ("Handshake", USER, "ok"),
            (
                "Handshake",
                USER,
                "Unauthenticated: invalid username or password"
            ),
            ("GetFlightInfo", USER, "ok"),
            ("DoGet", USER, "ok"),
        ]
    );
    let get = &records[3];
    assert_eq!(
        get["statement"],
        "SELECT count(*) AS n FROM Condition WHERE id <> 'x'"
    );
    assert_eq!(get["tables"], serde_json::json!(["fhir.r4.Condition"]));
    assert_eq!(get["rows"], 1);
    assert!(get["bytes"].as_u64().unwrap() > 0);
    assert!(get["client"].as_str().unwrap().starts_with("127.0.0.1:"));
    assert!(get["time"].as_str().unwrap().ends_with('Z'));
    server.shutdown().await.unwrap();
}
