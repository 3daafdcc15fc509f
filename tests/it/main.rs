//! Integration tests: one binary, a module per area.

// The tests' helpers fail the test where it stands, like the tests themselves.
#![allow(clippy::unwrap_used)]

mod bulk;
mod catalog;
mod catalog_views;
mod cli;
mod cluster;
mod demo;
mod errors;
mod flight;
mod hostile;
mod hostile_data;
mod idents;
mod ndjson;
mod readme;
mod s3;
mod smart;
mod snapshot;
mod view;

/// The rows of `batch` as `|`-joined cell strings.
fn row_strings(batch: &arrow::array::RecordBatch) -> impl Iterator<Item = String> + '_ {
    (0..batch.num_rows()).map(|row| {
        let cells: Vec<String> = batch
            .columns()
            .iter()
            .map(|c| arrow::util::display::array_value_to_string(c, row).unwrap())
            .collect();
        cells.join("|")
    })
}

/// The Python of the checks against pandas and pyarrow: `FHIRFLIGHT_PYTHON`, else `.venv/bin/python`
/// in the repository (`scripts/test.sh` makes one from `tests/python/requirements.txt`); `None`
/// when absent, and the test says it skipped.
fn python() -> Option<std::path::PathBuf> {
    let python = std::env::var_os("FHIRFLIGHT_PYTHON").map_or_else(
        || std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python"),
        std::path::PathBuf::from,
    );
    python.exists().then_some(python)
}

/// Waits until `done()` holds, checking every few milliseconds; fails after 30 s, naming `what`,
/// so that a regression fails the test instead of hanging the run.
async fn until(what: &str, mut done: impl FnMut() -> bool) {
    let wait = async {
        while !done() {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(30), wait)
        .await
        .unwrap_or_else(|_| panic!("still waiting after 30 s for {what}"));
}

/// A Flight SQL server over `ctx` and a client logged in to it as `alice`.
struct FlightFixture {
    server: fhirflight::flight::RunningServer,
    client: arrow_flight::sql::client::FlightSqlServiceClient<tonic::transport::Channel>,
}

impl FlightFixture {
    async fn over(ctx: datafusion::prelude::SessionContext) -> Self {
        use fhirflight::flight::{FlightSqlServer, Users};
        let server = FlightSqlServer::new(ctx)
            .with_users(
                Users::new()
                    .with_user("alice", "wonderland", fhirflight::flight::Role::Admin)
                    .unwrap(),
            )
            .bind("127.0.0.1:0")
            .await
            .unwrap();
        let channel = tonic::transport::Endpoint::new(format!("http://{}", server.local_addr()))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut client = arrow_flight::sql::client::FlightSqlServiceClient::new(channel);
        client.handshake("alice", "wonderland").await.unwrap();
        Self { server, client }
    }

    /// The rows of `sql` as `|`-joined lines.
    async fn query(&mut self, sql: &str) -> String {
        let info = self.client.execute(sql.to_owned(), None).await.unwrap();
        self.fetch(info).await.1.join("\n")
    }

    /// The header and rows of a statement's endpoints, `|`-joined.
    async fn fetch(&mut self, info: arrow_flight::FlightInfo) -> (String, Vec<String>) {
        use futures::TryStreamExt;
        let header = info
            .clone()
            .try_decode_schema()
            .unwrap()
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect::<Vec<_>>()
            .join("|");
        let mut rows = Vec::new();
        for endpoint in info.endpoint {
            let stream = self.client.do_get(endpoint.ticket.unwrap()).await.unwrap();
            for batch in stream.try_collect::<Vec<_>>().await.unwrap() {
                rows.extend(row_strings(&batch));
            }
        }
        (header, rows)
    }
}
