//! What one statement, one user and one connection may take: statement caps answer
//! RESOURCE_EXHAUSTED, a statement past the query timeout DEADLINE_EXCEEDED, connections beyond
//! the cap and silent sockets are closed, while live clients keep being served.

use std::time::Duration;

use arrow_flight::flight_service_client::FlightServiceClient;
use arrow_flight::sql::client::FlightSqlServiceClient;
use arrow_flight::sql::{CommandStatementQuery, ProstMessageExt};
use arrow_flight::{FlightDescriptor, FlightInfo};
use datafusion::prelude::SessionContext;
use fhirflight::config::{Config, PrimarySource, SessionBuilder};
use fhirflight::flight::{FlightSqlServer, RunningServer};
use futures::StreamExt;
use prost::Message;
use tokio::io::AsyncReadExt;
use tonic::transport::Channel;
use tonic::{Code, Status};

use super::{channel, login, query, start, users};

/// Rows enough to keep a statement busy for as long as a test needs.
const ENDLESS: &str = "SELECT * FROM generate_series(1, 1000000000000)";

/// GetFlightInfo for `sql` as the logged-in `client`, keeping the gRPC status.
async fn flight_info(
    client: &FlightSqlServiceClient<Channel>,
    server: &RunningServer,
    sql: &str,
) -> Result<FlightInfo, Status> {
    let mut raw = FlightServiceClient::new(channel(server).await);
    let command = CommandStatementQuery {
        query: sql.into(),
        transaction_id: None,
    };
    let mut request =
        tonic::Request::new(FlightDescriptor::new_cmd(command.as_any().encode_to_vec()));
    let bearer = format!("Bearer {}", client.token().unwrap());
    request
        .metadata_mut()
        .insert("authorization", bearer.parse().unwrap());
    raw.get_flight_info(request)
        .await
        .map(tonic::Response::into_inner)
}

/// Retries `attempt` until it is true, for at most 10 s: the server notices a client gone on
/// its own time.
async fn eventually(mut attempt: impl AsyncFnMut() -> bool) {
    for _ in 0..1000 {
        if attempt().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("never happened within 10 s");
}

/// Reads `socket` until the server closes it; the bytes it sent before.
async fn closed(mut socket: tokio::net::TcpStream) -> usize {
    let (mut buf, mut sent) = ([0u8; 256], 0);
    loop {
        match socket.read(&mut buf).await {
            Ok(0) | Err(_) => return sent,
            Ok(n) => sent += n,
        }
    }
}

#[tokio::test]
async fn statement_caps_refuse_the_next_statement_until_one_ends() {
    let server = start(
        FlightSqlServer::new(SessionContext::new())
            .with_users(users())
            .with_max_statements_per_user(1),
    )
    .await;
    let mut alice = login(&server).await;
    let info = alice.execute(ENDLESS.into(), None).await.unwrap();
    let ticket = info.endpoint[0].ticket.clone().unwrap();
    let mut running = alice.do_get(ticket).await.unwrap();
    assert!(
        running.next().await.unwrap().is_ok(),
        "the first batch comes"
    );

    let refused = flight_info(&alice, &server, "SELECT 1").await.unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(
        refused.message().contains("your limit of 1 statements"),
        "{refused:?}"
    );

    drop(running);
    eventually(async || flight_info(&alice, &server, "SELECT 1").await.is_ok()).await;
    assert!(
        query(&mut alice, "SELECT 1 AS one")
            .await
            .contains("| 1   |")
    );
}

#[tokio::test]
async fn a_statement_past_the_query_timeout_is_stopped_and_the_server_answers() {
    let server = start(
        FlightSqlServer::new(SessionContext::new())
            .with_users(users())
            .with_query_timeout(Some(Duration::from_millis(300))),
    )
    .await;
    let mut alice = login(&server).await;
    let info = alice
        .execute(
            "SELECT count(*) FROM generate_series(1, 1000000000000)".into(),
            None,
        )
        .await
        .unwrap();
    let ticket = info.endpoint[0].ticket.clone().unwrap();
    let mut results = alice.do_get(ticket).await.unwrap();
    let ended = results.next().await.unwrap().unwrap_err().to_string();
    assert!(
        ended.contains("Deadline expired") && ended.contains("query timeout (0.3 s)"),
        "{ended}"
    );
    assert!(
        query(&mut alice, "SELECT 2 AS two")
            .await
            .contains("| 2   |")
    );
}

#[tokio::test]
async fn a_statement_over_the_memory_limit_fails_and_the_server_answers() {
    let folder = tempfile::tempdir().unwrap();
    let session = SessionBuilder::new(Config::default())
        .with_source(PrimarySource::Folder(folder.path().to_owned()))
        .with_memory_limit(Some(64 << 20))
        .build()
        .await
        .unwrap();
    let server = start(FlightSqlServer::new(session.context().clone()).with_users(users())).await;
    let mut alice = login(&server).await;
    // About 1 GB of text in one aggregate, which cannot spill.
    let hog = "SELECT length(string_agg(repeat('x', 1000), ',')) FROM generate_series(1, 1000000)";
    let info = alice.execute(hog.into(), None).await.unwrap();
    let ticket = info.endpoint[0].ticket.clone().unwrap();
    let mut results = alice.do_get(ticket).await.unwrap();
    let failed = results.next().await.unwrap().unwrap_err().to_string();
    assert!(
        failed.contains("Some resource has been exhausted")
            && failed.contains("Resources exhausted")
            && failed.contains("pool_size: 64.0 MB"),
        "{failed}"
    );
    assert!(
        query(&mut alice, "SELECT 3 AS three")
            .await
            .contains("| 3     |")
    );
}

#[tokio::test]
async fn silent_sockets_and_connections_beyond_the_cap_are_closed_live_clients_stay() {
    let server = start(
        FlightSqlServer::new(SessionContext::new())
            .with_users(users())
            .with_max_connections(2)
            .with_idle_timeout(Duration::from_millis(400)),
    )
    .await;
    let addr = server.local_addr();

    // A live client idle for longer than the idle timeout: it answers the server's pings.
    let mut alice = login(&server).await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert!(
        query(&mut alice, "SELECT 1 AS one")
            .await
            .contains("| 1   |")
    );

    // A socket that never speaks is closed by the server (after its HTTP/2 settings).
    let silent = tokio::net::TcpStream::connect(addr).await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), closed(silent))
        .await
        .expect("the server closes a silent socket");

    // With alice's connection and a second socket open, a third one is closed at once, before
    // the server says anything.
    let _second = tokio::net::TcpStream::connect(addr).await.unwrap();
    let third = tokio::net::TcpStream::connect(addr).await.unwrap();
    let sent = tokio::time::timeout(Duration::from_secs(10), closed(third))
        .await
        .expect("the server closes a connection over the cap");
    assert_eq!(sent, 0, "nothing served over the cap");
    assert!(
        query(&mut alice, "SELECT 2 AS two")
            .await
            .contains("| 2   |")
    );
}
