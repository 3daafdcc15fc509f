//! The Bulk Data export client end to end: against the demo server (levels, methods, parameters,
//! faults, resume, cancel, parts of a job on another origin) and against small mocks for what the
//! demo does not do (redirects to another origin or to plain http, paged manifests, open files).
//!
//! This file holds the shared setup (a demo server, SMART configurations, a client, one export,
//! what was downloaded and what the population holds); the tests are grouped by topic:
//! [`levels`] (levels, methods, parameters, `_since`), [`faults`] (a server that misbehaves),
//! [`bounds`] (a server that sends too much: gzip bombs, endless files; blank lines),
//! [`limits`] (time limits, a server that is down or not needed),
//! [`tokens`] (renewal, a token refused mid-download, open servers), [`resume`] (restarts,
//! failed downloads, paged and partial manifests, interrupts, cancel), [`mock`] (what the demo server does not do),
//! [`origins`] (parts of a job on another origin) and [`transport`] (TLS, plain http, proxies).

mod bounds;
mod faults;
mod levels;
mod limits;
mod mock;
mod origins;
mod resume;
mod tokens;
mod transport;

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fhirflight::bulk::{
    BulkClient, ClientOptions, ExportLevel, ExportOutcome, ExportProgress, ExportRequest,
};
use fhirflight::demo::{DemoConfig, DemoServer, Faults, ForeignOrigin, generate};
use fhirflight::smart::{SigningKey, SmartConfig};
use serde_json::Value;
use tokio::sync::watch;
use url::Url;

const SEED: u64 = 7;
const PATIENTS: usize = 4;

/// Fast waits: Retry-After and backoff clamped to a few milliseconds.
fn options() -> ClientOptions {
    ClientOptions::default()
        .with_retry_after_bounds(Duration::from_millis(1), Duration::from_millis(20))
}

async fn demo(config: DemoConfig) -> DemoServer {
    DemoServer::start(config.with_seed(SEED).with_patients(PATIENTS))
        .await
        .unwrap()
}

fn rs384(server: &DemoServer) -> SmartConfig {
    let creds = server.credentials();
    let key = SigningKey::from_pem(creds.rs384().private_pem())
        .unwrap()
        .with_kid(creds.rs384().kid());
    SmartConfig::new(creds.client_id(), key)
}

fn es384_jwks(server: &DemoServer) -> SmartConfig {
    let creds = server.credentials();
    let key = SigningKey::from_jwk(&creds.private_jwks(), Some(creds.es384().kid())).unwrap();
    assert_eq!(key.alg(), "ES384");
    SmartConfig::new(creds.client_id(), key)
}

async fn client(server: &DemoServer, auth: SmartConfig) -> BulkClient {
    BulkClient::try_new(server.base_url(), Some(auth), options())
        .await
        .unwrap()
}

async fn export(
    client: &BulkClient,
    request: &ExportRequest,
    dir: &Path,
) -> (ExportOutcome, ExportProgress) {
    let (progress, watcher) = watch::channel(ExportProgress::default());
    let outcome = client.export_to_dir(request, dir, &progress).await.unwrap();
    let last = watcher.borrow().clone();
    (outcome, last)
}

/// The NDJSON of all downloaded files of `resource_type`, in order.
fn downloaded(outcome: &ExportOutcome, resource_type: &str) -> String {
    outcome
        .files
        .iter()
        .filter(|f| f.resource_type == resource_type)
        .map(|f| std::fs::read_to_string(&f.path).unwrap())
        .collect()
}

/// What the demo population holds for `resource_type`, as NDJSON.
fn expected(resource_type: &str) -> String {
    let mut out = Vec::new();
    generate(SEED, PATIENTS)
        .write_ndjson(resource_type, &mut out)
        .unwrap();
    String::from_utf8(out).unwrap()
}

/// The `id` of every line of an NDJSON text.
pub(crate) fn ids(ndjson: &str) -> Vec<String> {
    ndjson
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect()
}

/// A demo server (files of 3 resources, manifest pages of 2 files) that puts the parts of each
/// job `foreign` picks on `http://localhost:PORT/`: the same listener under another host name,
/// so another origin serving the same content.
async fn foreign_demo(
    config: DemoConfig,
    foreign: impl FnOnce(Url) -> ForeignOrigin,
) -> DemoServer {
    let server = demo(config.with_page_size(3).with_manifest_page_size(2)).await;
    let url = Url::parse(&format!("http://localhost:{}/", server.local_addr().port())).unwrap();
    server.set_faults(Faults {
        foreign_origin: Some(foreign(url)),
        ..Faults::default()
    });
    server
}

/// A Patient and Condition export from `server` into `dir`.
async fn try_export(
    server: &DemoServer,
    options: ClientOptions,
    dir: &Path,
) -> fhirflight::Result<ExportOutcome> {
    let client = BulkClient::try_new(server.base_url(), Some(rs384(server)), options).await?;
    let request = ExportRequest::new(ExportLevel::System).with_types(["Patient", "Condition"]);
    let (progress, _) = watch::channel(ExportProgress::default());
    client.export_to_dir(&request, dir, &progress).await
}

/// The text of what `run` logs on this thread (debug and up).
pub(crate) async fn logs_of<F: Future>(run: F) -> (F::Output, String) {
    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for Buffer {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().write(bytes)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let buffer = Buffer::default();
    let writer = buffer.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::DEBUG)
        .finish();
    let output = {
        let _guard = tracing::subscriber::set_default(subscriber);
        run.await
    };
    let logs = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
    (output, logs)
}
