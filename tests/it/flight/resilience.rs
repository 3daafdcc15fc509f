//! The server keeps serving whatever its clients do: bad input gets clear statuses, a client that
//! disconnects stops its query, deep statements are answered or refused, a query busy on every
//! core leaves the server answering, shutdown stops running statements after the grace, and a
//! dropped GetFlightInfo drops its planning.

use std::sync::{Arc, Mutex};

use arrow::array::AsArray;
use arrow_flight::flight_service_client::FlightServiceClient;
use arrow_flight::sql::{CommandStatementQuery, ProstMessageExt};
use arrow_flight::{FlightDescriptor, HandshakeRequest};
use base64::Engine;
use datafusion::catalog::SchemaProvider;
use datafusion::catalog::streaming::StreamingTable;
use datafusion::common::TableReference;
use fhirflight::flight::{FlightSqlServer, RunningServer};
use futures::{StreamExt, TryStreamExt};
use prost::Message;
use tokio::sync::oneshot;
use tonic::Code;

use super::{
    DropSignal, Endless, USER, Unreachable, channel, fhir_context, login, number_schema, query,
    start, statement_status, users,
};

#[tokio::test]
async fn bad_input_gets_clear_statuses_and_the_server_keeps_serving() {
    let ctx = fhir_context();
    // A table whose FHIR server is down: bind a port, then close it.
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!(
        "http://{}/fhir/Observation/$export",
        closed.local_addr().unwrap()
    );
    drop(closed);
    let remote = Unreachable {
        schema: number_schema(),
        url,
    };
    let remote = StreamingTable::try_new(number_schema(), vec![Arc::new(remote)]).unwrap();
    ctx.register_table(
        TableReference::full("fhir", "r4", "Observation"),
        Arc::new(remote),
    )
    .unwrap();
    let server = start(FlightSqlServer::new(ctx).with_users(users())).await;
    // Logged in before the wrong password below makes this address wait.
    let mut client = login(&server).await;

    // Wrong password.
    let mut raw = FlightServiceClient::new(channel(&server).await);
    let basic = base64::prelude::BASE64_STANDARD.encode(format!("{USER}:nope"));
    let mut request = tonic::Request::new(futures::stream::iter([HandshakeRequest::default()]));
    request
        .metadata_mut()
        .insert("authorization", format!("Basic {basic}").parse().unwrap());
    let err = raw.handshake(request).await.expect_err("wrong password");
    assert_eq!(err.code(), Code::Unauthenticated);
    assert!(
        err.message()
            .starts_with("unauthenticated: invalid username or password [error id "),
        "{err}"
    );

    // No token.
    let err = statement_status(&server, None, "SELECT 1").await;
    assert_eq!(err.code(), Code::Unauthenticated);
    assert!(
        err.message().contains("no credentials"),
        "{}",
        err.message()
    );
    // A forged token.
    let err = statement_status(&server, Some("not.a.token"), "SELECT 1").await;
    assert_eq!(err.code(), Code::Unauthenticated);
    assert!(
        err.message().contains("invalid bearer token"),
        "{}",
        err.message()
    );

    let token = client.token().unwrap().clone();
    // Malformed SQL.
    let err = statement_status(&server, Some(&token), "SELEC id FROM Patient").await;
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("SELEC"), "{}", err.message());
    // An unknown table.
    let err = statement_status(&server, Some(&token), "SELECT * FROM Encounter").await;
    assert_eq!(err.code(), Code::NotFound);
    assert!(
        err.message()
            .contains("table 'fhir.r4.Encounter' not found"),
        "{}",
        err.message()
    );
    // An unknown column.
    let err = statement_status(&server, Some(&token), "SELECT shoeSize FROM Patient").await;
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("shoeSize"), "{}", err.message());
    // A write.
    let err = statement_status(&server, Some(&token), "DROP TABLE Patient").await;
    assert_eq!(err.code(), Code::InvalidArgument);

    // The FHIR server behind a table is down: the error comes while streaming.
    let info = client
        .execute("SELECT n FROM Observation".into(), None)
        .await
        .unwrap();
    let ticket = info.endpoint[0].ticket.clone().unwrap();
    let err = client
        .do_get(ticket)
        .await
        .unwrap()
        .try_collect::<Vec<_>>()
        .await
        .unwrap_err();
    let arrow_flight::error::FlightError::Tonic(status) = err else {
        panic!("{err:?}")
    };
    assert_eq!(status.code(), Code::Unavailable);
    assert!(
        status.message().starts_with("could not connect: "),
        "{}",
        status.message()
    );

    // Still serving.
    let table = query(&mut client, "SELECT count(*) AS n FROM Patient").await;
    assert!(table.contains("| 3 |"), "{table}");
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_client_that_disconnects_stops_its_query() {
    let ctx = fhir_context();
    let (dropped, was_dropped) = oneshot::channel();
    let endless = Endless {
        schema: number_schema(),
        dropped: Mutex::new(Some(dropped)),
    };
    let endless = StreamingTable::try_new(number_schema(), vec![Arc::new(endless)])
        .unwrap()
        .with_infinite_table(true);
    ctx.register_table(
        TableReference::full("fhir", "r4", "Numbers"),
        Arc::new(endless),
    )
    .unwrap();
    let server = start(FlightSqlServer::new(ctx).with_users(users())).await;

    let mut client = login(&server).await;
    let info = client
        .execute("SELECT n FROM Numbers".into(), None)
        .await
        .unwrap();
    let ticket = info.endpoint[0].ticket.clone().unwrap();
    let mut stream = client.do_get(ticket).await.unwrap();
    let first = stream.next().await.unwrap().unwrap();
    assert_eq!(
        first
            .column(0)
            .as_primitive::<arrow::datatypes::Int64Type>()
            .value(0),
        0
    );
    drop(stream);
    drop(client);
    // The producer is dropped once the server sees the stream reset (bounded wait: a hang
    // would mean the query kept running).
    tokio::time::timeout(std::time::Duration::from_secs(30), was_dropped)
        .await
        .expect("the query stops when its client goes away")
        .unwrap();
    server.shutdown().await.unwrap();
}

/// `n` copies of `term` joined by `op`.
fn chain(n: usize, term: &str, op: &str) -> String {
    vec![term; n].join(op)
}

#[tokio::test]
async fn deep_statements_are_answered_or_refused_and_the_server_keeps_serving() {
    let server = start(FlightSqlServer::new(fhir_context()).with_users(users())).await;
    let mut client = login(&server).await;
    // The chains BI tools generate, which aborted the process: answered.
    let sum = format!("SELECT {} AS n", chain(2_000, "1", " + "));
    assert!(query(&mut client, &sum).await.contains("| 2000 |"));
    let or = format!(
        "SELECT count(*) AS n FROM Patient WHERE {}",
        chain(2_000, "id = 'pat-1'", " OR ")
    );
    assert!(query(&mut client, &or).await.contains("| 1 |"));
    let union = format!(
        "SELECT count(*) AS n FROM ({})",
        chain(3_000, "SELECT 1", " UNION ALL ")
    );
    assert!(query(&mut client, &union).await.contains("| 3000 |"));
    // Deeper than the bound: refused before parsing, with what to do.
    let token = client.token().unwrap().clone();
    let deep = format!(
        "SELECT {}",
        chain(fhirflight::catalog::MAX_STATEMENT_DEPTH + 2, "1", "+")
    );
    let err = statement_status(&server, Some(&token), &deep).await;
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().contains("nested more than"),
        "{}",
        err.message()
    );
    let deep = chain(100_000, "SELECT 1", " UNION ALL ");
    let err = statement_status(&server, Some(&token), &deep).await;
    assert_eq!(err.code(), Code::InvalidArgument);
    // Still serving.
    assert!(
        query(&mut client, "SELECT count(*) AS n FROM Patient")
            .await
            .contains("| 3 |")
    );
    server.shutdown().await.unwrap();
}

/// A server with a query runtime of its own and a shutdown grace of 100 ms, and a client whose
/// DoGet of `sql` (a cross join that would run for days) runs in a task, started.
async fn running_heavy_query(
    sql: &str,
) -> (
    RunningServer,
    fhirflight::catalog::QueryRuntime,
    tokio::task::JoinHandle<()>,
) {
    let queries = fhirflight::catalog::QueryRuntime::try_default().unwrap();
    let server = FlightSqlServer::new(fhir_context())
        .with_users(users())
        .with_query_runtime(queries.clone())
        .with_shutdown_grace(std::time::Duration::from_millis(100));
    let server = start(server).await;
    let mut client = login(&server).await;
    let info = client.execute(sql.into(), None).await.unwrap();
    let ticket = info.endpoint[0].ticket.clone().unwrap();
    let running = tokio::spawn(async move {
        if let Ok(stream) = client.do_get(ticket).await {
            let _ = stream.try_collect::<Vec<_>>().await;
        }
    });
    crate::until("the heavy query runs", || queries.active_tasks() > 0).await;
    (server, queries, running)
}

#[tokio::test]
async fn a_query_busy_on_every_core_leaves_the_server_answering() {
    let (server, queries, running) = running_heavy_query(
        "SELECT count(*) FROM generate_series(1, 100000) a, generate_series(1, 100000) b, \
         generate_series(1, 100000) c",
    )
    .await;
    // Logins and small statements are answered meanwhile (a bounded wait: a hang fails).
    let small = async {
        let mut client = login(&server).await;
        query(&mut client, "SELECT 1 AS one").await
    };
    let answered = tokio::time::timeout(std::time::Duration::from_secs(60), small)
        .await
        .expect("a small query is answered while the heavy one runs");
    assert!(answered.contains("| 1   |"), "{answered}");
    // The client goes away: its query stops, and burns no more CPU.
    running.abort();
    let _ = running.await;
    crate::until("the heavy query stops", || queries.active_tasks() == 0).await;
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn shutdown_stops_running_statements_after_the_grace() {
    let (server, queries, running) = running_heavy_query(
        "SELECT count(*) FROM generate_series(1, 100000) a, generate_series(1, 100000) b",
    )
    .await;
    // Without the grace, shutdown would wait for the query: hours.
    tokio::time::timeout(std::time::Duration::from_secs(60), server.shutdown())
        .await
        .expect("shutdown ends after its grace")
        .unwrap();
    crate::until("the query is stopped", || queries.active_tasks() == 0).await;
    running.abort();
}

/// A schema whose table `t` takes forever to resolve (like a table waiting for its export),
/// reporting when it starts and when its resolution is dropped.
#[derive(Debug)]
struct Hanging {
    entered: Mutex<Option<oneshot::Sender<()>>>,
    dropped: Mutex<Option<oneshot::Sender<()>>>,
}

#[async_trait::async_trait]
impl SchemaProvider for Hanging {
    fn table_names(&self) -> Vec<String> {
        vec!["t".into()]
    }

    async fn table(
        &self,
        _name: &str,
    ) -> datafusion::error::Result<Option<Arc<dyn datafusion::catalog::TableProvider>>> {
        let _signal = DropSignal(self.dropped.lock().unwrap().take());
        if let Some(entered) = self.entered.lock().unwrap().take() {
            let _ = entered.send(());
        }
        std::future::pending().await
    }

    fn table_exist(&self, name: &str) -> bool {
        name == "t"
    }
}

/// Planning runs in the RPC's own task: a client that drops GetFlightInfo drops the planning
/// (and with it a wait on an export), nothing is left running detached.
#[tokio::test]
async fn a_dropped_get_flight_info_drops_its_planning() {
    let ctx = fhir_context();
    let (entered, was_entered) = oneshot::channel();
    let (dropped, was_dropped) = oneshot::channel();
    let hanging = Hanging {
        entered: Mutex::new(Some(entered)),
        dropped: Mutex::new(Some(dropped)),
    };
    ctx.catalog("fhir")
        .unwrap()
        .register_schema("slow", Arc::new(hanging))
        .unwrap();
    let server = start(FlightSqlServer::new(ctx).with_users(users())).await;
    let token = login(&server).await.token().unwrap().clone();
    let channel = channel(&server).await;
    let call = tokio::spawn(async move {
        let mut raw = FlightServiceClient::new(channel);
        let command = CommandStatementQuery {
            query: "SELECT * FROM fhir.slow.t".into(),
            transaction_id: None,
        };
        let mut request =
            tonic::Request::new(FlightDescriptor::new_cmd(command.as_any().encode_to_vec()));
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
        raw.get_flight_info(request).await
    });
    was_entered.await.unwrap();
    call.abort();
    tokio::time::timeout(std::time::Duration::from_secs(30), was_dropped)
        .await
        .expect("the planning is dropped with the call")
        .unwrap();
    server.shutdown().await.unwrap();
}
