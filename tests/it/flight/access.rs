//! Who gets in and how: anonymous access only when asked and only on loopback, and TLS with
//! certificate files.

use arrow_flight::sql::client::FlightSqlServiceClient;
use fhirflight::flight::FlightSqlServer;
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
