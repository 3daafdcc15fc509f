//! The demo Bulk Data server: configuration, HTTP routes, faults and statistics.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use url::Url;

use super::auth::{DEMO_CLIENT_ID, DemoCredentials, Grant, RegisteredClient, TokenStore};
use super::export::{self, Deletion, ExportRequest, FileKind, JobFile, Snapshot};
use super::generate::{self, Resource};
use super::time::now_ms;
use super::tls::{TlsIdentity, TlsListener};
use crate::{Error, Result};

/// How a demo server is set up. Consuming `with_*` setters.
///
/// ```
/// use std::time::Duration;
/// use fhirflight::demo::DemoConfig;
///
/// let config = DemoConfig::default().with_patients(5).with_page_size(100).with_token_lifetime(Duration::from_secs(2));
/// assert_eq!(config.patients(), 5);
/// ```
#[derive(Debug, Clone)]
pub struct DemoConfig {
    patients: usize,
    seed: u64,
    page_size: usize,
    manifest_page_size: usize,
    token_lifetime: Duration,
    require_auth: bool,
    status_polls: u32,
    retry_after: Duration,
    clients: Vec<(String, Value)>,
    tls: Option<TlsIdentity>,
}

impl Default for DemoConfig {
    /// 100 patients, seed 42, 5000 resources per file, 5-minute tokens, auth required, one
    /// in-progress status response (`Retry-After: 0`) before the manifest.
    fn default() -> Self {
        Self {
            patients: 100,
            seed: 42,
            page_size: 5000,
            manifest_page_size: usize::MAX,
            token_lifetime: Duration::from_secs(300),
            require_auth: true,
            status_polls: 1,
            retry_after: Duration::ZERO,
            clients: Vec::new(),
            tls: None,
        }
    }
}

impl DemoConfig {
    /// Number of generated patients.
    pub fn with_patients(self, patients: usize) -> Self {
        Self { patients, ..self }
    }

    /// Seed of the generator.
    pub fn with_seed(self, seed: u64) -> Self {
        Self { seed, ..self }
    }

    /// Resources per output file (at least 1).
    pub fn with_page_size(self, page_size: usize) -> Self {
        Self {
            page_size: page_size.max(1),
            ..self
        }
    }

    /// Files listed per manifest page (default: all on one page). With fewer, the complete
    /// manifest is split into pages linked by `link` rel=`next`, as servers with huge exports do.
    pub fn with_manifest_page_size(self, files: usize) -> Self {
        Self {
            manifest_page_size: files.max(1),
            ..self
        }
    }

    /// Lifetime of issued access tokens.
    pub fn with_token_lifetime(self, token_lifetime: Duration) -> Self {
        Self {
            token_lifetime,
            ..self
        }
    }

    /// Whether every FHIR call and file download needs a bearer token (the default), or the server
    /// is open.
    pub fn with_require_auth(self, require_auth: bool) -> Self {
        Self {
            require_auth,
            ..self
        }
    }

    /// How many status polls answer 202 (in progress) before the manifest.
    pub fn with_status_polls(self, status_polls: u32) -> Self {
        Self {
            status_polls,
            ..self
        }
    }

    /// The `Retry-After` sent with in-progress status responses (whole seconds).
    pub fn with_retry_after(self, retry_after: Duration) -> Self {
        Self {
            retry_after,
            ..self
        }
    }

    /// Registers another client by its public JWKS (JSON), next to the built-in demo client.
    pub fn with_client(mut self, client_id: impl Into<String>, jwks: Value) -> Self {
        self.clients.push((client_id.into(), jwks));
        self
    }

    /// Serves HTTPS with this certificate chain and private key (both PEM) instead of plain
    /// HTTP. With a certificate from a private certificate authority, this is the server a
    /// hospital network puts in front of its FHIR API (see `tests/fixtures/tls/`).
    pub fn with_tls(self, cert_chain_pem: impl Into<String>, key_pem: impl Into<String>) -> Self {
        Self {
            tls: Some(TlsIdentity {
                cert_chain_pem: cert_chain_pem.into(),
                key_pem: key_pem.into(),
            }),
            ..self
        }
    }

    /// Number of generated patients.
    pub fn patients(&self) -> usize {
        self.patients
    }

    /// Seed of the generator.
    pub fn seed(&self) -> u64 {
        self.seed
    }
}

/// Faults the server injects, for tests of the client's resilience. Counters count down per request.
#[derive(Debug, Clone, Default)]
pub struct Faults {
    /// Kick-offs answered 503 with an OperationOutcome of code `transient`.
    pub kickoff_transient: u32,
    /// Kick-offs answered 429 (`Retry-After: 0`).
    pub kickoff_429: u32,
    /// Status polls answered 503 with an OperationOutcome of code `transient`.
    pub status_transient: u32,
    /// Status polls answered 429 (`Retry-After: 0`).
    pub status_429: u32,
    /// Cut the connection after this many body bytes, on the first download of each file.
    pub break_download_after: Option<usize>,
    /// Add an OperationOutcome file to the manifest's `error[]` (jobs kicked off while set).
    pub error_file: bool,
    /// Cut the first line of the first output file in half (jobs kicked off while set).
    pub malformed_line: bool,
    /// Ignore `Range` headers (always 200 with the whole file) and advertise no `Accept-Ranges`.
    pub no_range: bool,
    /// File downloads that revoke the bearer token they carry and answer 401, as if it had
    /// expired mid-export.
    pub download_token_revoked: u32,
    /// Wait this long before each body chunk (64 KiB) of a download: a slow network.
    pub download_chunk_delay: Option<Duration>,
    /// Behave like a hostile server: list [`HOSTILE_TYPES`] in the CapabilityStatement, and add
    /// an output file of each to the manifest (jobs kicked off while set), trying to make the
    /// client write outside its folders.
    pub hostile_type_names: bool,
    /// Put parts of jobs kicked off while set on another origin (presigned storage URLs).
    pub foreign_origin: Option<ForeignOrigin>,
}

/// Another origin that reaches the same demo server, such as `http://localhost:PORT/` for one
/// listening on `127.0.0.1:PORT`: where [`Faults::foreign_origin`] puts a job's status URL,
/// manifest pages or files, as servers that hand out presigned storage URLs do. Requests that come
/// through it are recorded in [`DemoStats::foreign_requests`].
#[derive(Debug, Clone)]
pub struct ForeignOrigin {
    /// The origin (`scheme://host:port/`).
    pub url: Url,
    /// The status URL (`Content-Location`) is there.
    pub status: bool,
    /// The manifest's `next` links are there.
    pub pages: bool,
    /// The output, deleted and error files are there.
    pub files: bool,
    /// Requests there need the bearer token too; else whoever has the URL gets in.
    pub requires_auth: bool,
}

/// A request that came through [`Faults::foreign_origin`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForeignRequest {
    /// `GET`, `DELETE`.
    pub method: String,
    /// The URL path, e.g. `/files/{job}/0.ndjson`.
    pub path: String,
    /// Whether it carried an `Authorization` header.
    pub authorization: bool,
}

/// The path-like resource types of the `hostile_type_names` fault.
pub const HOSTILE_TYPES: [&str; 2] = ["../../../victim", "Patient/../x"];

/// Export level of a kick-off.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KickoffLevel {
    /// `/$export`
    System,
    /// `/Patient/$export`
    Patient,
    /// `/Group/{id}/$export`
    Group(String),
}

/// One kick-off request as the server saw it.
#[derive(Debug, Clone)]
pub struct KickoffRecord {
    /// The export level.
    pub level: KickoffLevel,
    /// `GET` or `POST`.
    pub method: String,
    /// `_type` values (split at commas), empty when not given.
    pub types: Vec<String>,
    /// Every parameter as (name, value) text, from the query or the `Parameters` body.
    pub params: Vec<(String, String)>,
    /// The HTTP status answered.
    pub status: u16,
}

/// What the server has been asked so far.
#[derive(Debug, Clone, Default)]
pub struct DemoStats {
    /// Every kick-off, accepted or not.
    pub kickoffs: Vec<KickoffRecord>,
    /// Status polls (any answer).
    pub status_polls: usize,
    /// Requests for manifest pages after the first (any answer).
    pub manifest_pages: usize,
    /// Output file downloads started (any answer).
    pub downloads: usize,
    /// Downloads served gzip-compressed (the client sent `Accept-Encoding: gzip`).
    pub gzip_downloads: usize,
    /// DELETE requests on status URLs.
    pub deletes: usize,
    /// Token requests (any answer).
    pub token_requests: usize,
    /// Access tokens issued.
    pub tokens_issued: usize,
    /// Requests refused for a missing, unknown or expired bearer token.
    pub unauthorized: usize,
    /// Requests that came through [`Faults::foreign_origin`], in order.
    pub foreign_requests: Vec<ForeignRequest>,
}

/// An OperationOutcome error response.
#[derive(Debug)]
pub(crate) struct Outcome {
    status: StatusCode,
    code: &'static str,
    diagnostics: String,
    retry_after: bool,
}

impl Outcome {
    pub(crate) fn new(
        status: StatusCode,
        code: &'static str,
        diagnostics: impl Into<String>,
    ) -> Self {
        Self {
            status,
            code,
            diagnostics: diagnostics.into(),
            retry_after: false,
        }
    }

    /// 400 with issue code `invalid`.
    pub(crate) fn invalid(diagnostics: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid", diagnostics)
    }

    fn not_found(diagnostics: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not-found", diagnostics)
    }

    fn throttled() -> Self {
        Self {
            retry_after: true,
            ..Self::new(
                StatusCode::TOO_MANY_REQUESTS,
                "throttled",
                "demo fault: too many requests",
            )
        }
    }

    fn transient() -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "transient",
            "demo fault: temporarily unavailable, retry",
        )
    }

    #[cfg(test)]
    pub(crate) fn diagnostics(&self) -> &str {
        &self.diagnostics
    }
}

impl IntoResponse for Outcome {
    fn into_response(self) -> Response {
        let body = json!({ "resourceType": "OperationOutcome",
            "issue": [{ "severity": "error", "code": self.code, "diagnostics": self.diagnostics }] });
        let mut response = (self.status, fhir_json(&body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            let challenge = HeaderValue::from_static("Bearer error=\"invalid_token\"");
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, challenge);
        }
        if self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("0"));
        }
        response
    }
}

/// A JSON body with `Content-Type: application/fhir+json`.
fn fhir_json(value: &Value) -> impl IntoResponse + use<> {
    (
        [(header::CONTENT_TYPE, "application/fhir+json")],
        value.to_string(),
    )
}

/// The mutable data a server serves: the generated population plus `upsert`s and `delete`s.
#[derive(Debug)]
struct Store {
    types: Vec<(Arc<str>, Vec<Arc<Resource>>)>,
    deleted: Vec<Deletion>,
    /// Last `lastUpdated` handed out: changes get strictly increasing times.
    clock: i64,
}

impl Store {
    fn tick(&mut self) -> i64 {
        self.clock = now_ms().max(self.clock + 1);
        self.clock
    }

    fn resources_mut(&mut self, resource_type: &str) -> &mut Vec<Arc<Resource>> {
        if let Some(i) = self.types.iter().position(|(t, _)| &**t == resource_type) {
            return &mut self.types[i].1;
        }
        self.types.push((resource_type.into(), Vec::new()));
        &mut self.types.last_mut().expect("just pushed").1
    }
}

/// A kicked-off export.
#[derive(Debug)]
struct Job {
    /// Set when the job's files are ready: the files and the manifest's pages.
    output: OnceLock<(Vec<Arc<JobFile>>, Vec<Value>)>,
    polls: AtomicU32,
}

#[derive(Debug)]
struct ServerState {
    config: DemoConfig,
    origin: Url,
    token_endpoint: Url,
    credentials: DemoCredentials,
    clients: Vec<RegisteredClient>,
    store: RwLock<Store>,
    tokens: Mutex<TokenStore>,
    jobs: Mutex<HashMap<String, Arc<Job>>>,
    next_job: AtomicU64,
    stats: Mutex<DemoStats>,
    faults: Mutex<Faults>,
}

type Shared = Arc<ServerState>;

/// The embedded demo FHIR Bulk Data server (SMART Backend Services, `$export` at all levels).
///
/// Listens on 127.0.0.1; stops on [`shutdown`](Self::shutdown) or when dropped.
#[derive(Debug)]
pub struct DemoServer {
    state: Shared,
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl DemoServer {
    /// Generates the population and serves it on `127.0.0.1`, port chosen by the system.
    pub async fn start(config: DemoConfig) -> Result<Self> {
        Self::bind(SocketAddr::from(([127, 0, 0, 1], 0)), config).await
    }

    /// Generates the population and serves it on `addr`.
    pub async fn bind(addr: SocketAddr, config: DemoConfig) -> Result<Self> {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| Error::config_with(format!("demo server cannot listen on {addr}"), e))?;
        let local = listener
            .local_addr()
            .map_err(|e| Error::config_with("demo server address", e))?;
        let acceptor = config.tls.as_ref().map(TlsIdentity::acceptor).transpose()?;
        let scheme = if acceptor.is_some() { "https" } else { "http" };
        let origin = Url::parse(&format!("{scheme}://{local}/"))
            .map_err(|e| Error::config_with("demo server origin", e))?;
        let token_endpoint = origin.join("auth/token").expect("static path");
        let credentials = DemoCredentials::new(token_endpoint.clone());
        let mut clients = vec![RegisteredClient::new(
            DEMO_CLIENT_ID.to_owned(),
            &credentials.public_jwks(),
        )?];
        for (client_id, jwks) in &config.clients {
            clients.push(RegisteredClient::new(client_id.clone(), jwks)?);
        }
        let (seed, patients) = (config.seed, config.patients);
        let population = tokio::task::spawn_blocking(move || generate::shared(seed, patients))
            .await
            .map_err(|e| Error::config_with("demo population generation failed", e))?;
        let store = Store {
            types: Arc::unwrap_or_clone(population).into_types(),
            deleted: Vec::new(),
            clock: 0,
        };
        let state = Arc::new(ServerState {
            config,
            origin,
            token_endpoint,
            credentials,
            clients,
            store: RwLock::new(store),
            tokens: Mutex::default(),
            jobs: Mutex::default(),
            next_job: AtomicU64::new(1),
            stats: Mutex::default(),
            faults: Mutex::default(),
        });
        let (stop, stopped) = oneshot::channel::<()>();
        let app = router(Arc::clone(&state));
        let stopped = async {
            let _ = stopped.await;
        };
        let task = match acceptor {
            None => spawn_serve(listener, app, stopped),
            Some(acceptor) => {
                let listener = TlsListener::new(listener, acceptor)
                    .map_err(|e| Error::config_with("demo server address", e))?;
                spawn_serve(listener, app, stopped)
            }
        };
        tracing::info!(base = %state.origin.join("fhir").expect("static"), "demo Bulk Data server listening");
        Ok(Self {
            state,
            addr: local,
            stop: Some(stop),
            task: Some(task),
        })
    }

    /// The FHIR base URL, e.g. `http://127.0.0.1:PORT/fhir`.
    pub fn base_url(&self) -> Url {
        self.state.origin.join("fhir").expect("static path")
    }

    /// The socket address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The registered demo client: id, RS384 and ES384 private keys, token endpoint.
    pub fn credentials(&self) -> &DemoCredentials {
        &self.state.credentials
    }

    /// What the server has been asked so far.
    pub fn stats(&self) -> DemoStats {
        self.state.stats.lock().expect("stats").clone()
    }

    /// Replaces the injected faults (counters start over).
    pub fn set_faults(&self, faults: Faults) {
        *self.state.faults.lock().expect("faults") = faults;
    }

    /// Creates or replaces a resource; its `meta.lastUpdated` becomes now (strictly later than any
    /// earlier change), so `_since` exports see it.
    ///
    /// # Panics
    /// If `resource` has no string `resourceType` and `id`, or the type is not a FHIR R4 type.
    pub fn upsert(&self, resource: Value) {
        let mut store = self.state.store.write().expect("store");
        let at = store.tick();
        let resource =
            Resource::from_value(resource, at).expect("upsert needs resourceType and id");
        assert!(
            crate::r4::is_resource_type(resource.resource_type()),
            "upsert: not a FHIR R4 resource type"
        );
        let resources = store.resources_mut(resource.resource_type());
        match resources.iter().position(|r| r.id() == resource.id()) {
            Some(i) => resources[i] = Arc::new(resource),
            None => resources.push(Arc::new(resource)),
        }
    }

    /// Deletes a resource (a no-op when absent); `_since` exports list it in `deleted[]`.
    pub fn delete(&self, resource_type: &str, id: &str) {
        let mut store = self.state.store.write().expect("store");
        let at = store.tick();
        let resources = store.resources_mut(resource_type);
        if let Some(i) = resources.iter().position(|r| r.id() == id) {
            let removed = resources.remove(i);
            let patient = removed.patient_id().map(Arc::from);
            let (resource_type, id) = (resource_type.into(), id.into());
            store.deleted.push(Deletion {
                resource_type,
                id,
                patient,
                at,
            });
        }
    }

    /// Stops accepting connections and waits for open ones to finish (at most a few seconds).
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(mut task) = self.task.take()
            && tokio::time::timeout(Duration::from_secs(5), &mut task)
                .await
                .is_err()
        {
            task.abort();
        }
    }
}

impl Drop for DemoServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Serves `app` on `listener` until `stopped` resolves.
fn spawn_serve<L>(
    listener: L,
    app: Router,
    stopped: impl Future<Output = ()> + Send + 'static,
) -> JoinHandle<()>
where
    L: axum::serve::Listener,
    L::Addr: std::fmt::Debug,
{
    tokio::spawn(async move {
        let serve = axum::serve(listener, app).with_graceful_shutdown(stopped);
        if let Err(e) = serve.await {
            tracing::warn!("demo server stopped: {e}");
        }
    })
}

fn router(state: Shared) -> Router {
    Router::new()
        .route("/fhir/metadata", get(metadata))
        .route(
            "/fhir/.well-known/smart-configuration",
            get(smart_configuration),
        )
        .route("/auth/token", post(token))
        .route("/fhir/$export", get(system_export).post(system_export))
        .route(
            "/fhir/Patient/$export",
            get(patient_export).post(patient_export),
        )
        .route(
            "/fhir/Group/{id}/$export",
            get(group_export).post(group_export),
        )
        .route("/jobs/{id}", get(status).delete(cancel))
        .route("/jobs/{id}/manifest/{page}", get(manifest_page))
        .route("/files/{job}/{file}", get(download))
        .method_not_allowed_fallback(|method: Method, uri: axum::http::Uri| async move {
            let message = format!("{method} is not supported on {}", uri.path());
            Outcome::new(StatusCode::METHOD_NOT_ALLOWED, "not-supported", message)
        })
        .fallback(|method: Method, uri: axum::http::Uri| async move {
            Outcome::not_found(format!("no route for {method} {}", uri.path()))
        })
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(&state),
            record_foreign,
        ))
        .with_state(state)
}

/// Records the requests that come through [`Faults::foreign_origin`].
async fn record_foreign(
    State(state): State<Shared>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if state.foreign_origin(request.headers()).is_some() {
        let record = ForeignRequest {
            method: request.method().to_string(),
            path: request.uri().path().to_owned(),
            authorization: request.headers().contains_key(header::AUTHORIZATION),
        };
        state.stats().foreign_requests.push(record);
    }
    next.run(request).await
}

impl ServerState {
    fn stats(&self) -> std::sync::MutexGuard<'_, DemoStats> {
        self.stats.lock().expect("stats")
    }

    /// Whether the request came through [`Faults::foreign_origin`]: `Some(requires_auth)` if so.
    /// Told by `Host` (the demo speaks HTTP/1.1 only); as with a presigned URL, whoever has the
    /// URL gets through.
    fn foreign_origin(&self, headers: &HeaderMap) -> Option<bool> {
        let faults = self.faults.lock().expect("faults");
        let foreign = faults.foreign_origin.as_ref()?;
        let host = headers.get(header::HOST)?.to_str().ok()?;
        let authority = &foreign.url[url::Position::BeforeHost..url::Position::AfterPort];
        (host == authority).then_some(foreign.requires_auth)
    }

    /// The grant of the request's bearer token (everything, on an open server or an open
    /// foreign origin).
    fn authorize(&self, headers: &HeaderMap) -> Result<Option<Grant>, Outcome> {
        if !self.config.require_auth || self.foreign_origin(headers) == Some(false) {
            return Ok(None);
        }
        let result = match bearer(headers) {
            None => Err("this server requires a bearer token (SMART Backend Services)"),
            Some(token) => self.tokens.lock().expect("tokens").check(token),
        };
        result.map(Some).map_err(|why| {
            self.stats().unauthorized += 1;
            Outcome::new(StatusCode::UNAUTHORIZED, "login", why)
        })
    }

    /// A 429 or a transient 503 while the fault counters `which` picks (429s, transients) last.
    fn refuse_if(
        &self,
        which: impl FnOnce(&mut Faults) -> (&mut u32, &mut u32),
    ) -> Result<(), Outcome> {
        let mut faults = self.faults.lock().expect("faults");
        let (throttled, transient) = which(&mut faults);
        if take(throttled) {
            return Err(Outcome::throttled());
        }
        if take(transient) {
            return Err(Outcome::transient());
        }
        Ok(())
    }

    fn job(&self, id: &str) -> Result<Arc<Job>, Outcome> {
        let jobs = self.jobs.lock().expect("jobs");
        jobs.get(id).cloned().ok_or_else(|| {
            Outcome::not_found(format!(
                "no export job `{id}` (finished jobs are gone once deleted)"
            ))
        })
    }
}

/// Counts a fault counter down; whether it was still running.
fn take(counter: &mut u32) -> bool {
    let running = *counter > 0;
    *counter -= u32::from(running);
    running
}

/// The bearer token of a request's `Authorization` header.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let token = value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))?;
    Some(token.trim())
}

async fn metadata(State(state): State<Shared>) -> impl IntoResponse {
    let base = state.origin.join("fhir").expect("static");
    let store = state.store.read().expect("store");
    let mut resources: Vec<Value> = store
        .types
        .iter()
        .map(|(ty, _)| {
            let mut resource = json!({ "type": &**ty });
            let definition = match &**ty {
                "Patient" => Some("patient-export"),
                "Group" => Some("group-export"),
                _ => None,
            };
            if let Some(definition) = definition {
                resource["operation"] = json!([{ "name": "export",
                    "definition": format!("http://hl7.org/fhir/uv/bulkdata/OperationDefinition/{definition}") }]);
            }
            resource
        })
        .collect();
    if state.faults.lock().expect("faults").hostile_type_names {
        resources.extend(HOSTILE_TYPES.map(|t| json!({ "type": t })));
    }
    let mut rest = json!({ "mode": "server" });
    if state.config.require_auth {
        rest["security"] = json!({
            "extension": [{ "url": "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris",
                "extension": [{ "url": "token", "valueUri": state.token_endpoint.as_str() }] }],
            "service": [{ "coding": [{ "system": "http://terminology.hl7.org/CodeSystem/restful-security-service",
                "code": "SMART-on-FHIR" }] }],
        });
    }
    rest["resource"] = json!(resources);
    rest["operation"] = json!([{ "name": "export", "definition": "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/export" }]);
    fhir_json(&json!({
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": "2025-01-01",
        "kind": "instance",
        "instantiates": ["http://hl7.org/fhir/uv/bulkdata/CapabilityStatement/bulk-data"],
        "software": { "name": "fhirflight demo server", "version": env!("CARGO_PKG_VERSION") },
        "implementation": { "description": "fhirflight embedded demo Bulk Data server", "url": base.as_str() },
        "fhirVersion": "4.0.1",
        "format": ["application/fhir+json"],
        "rest": [rest],
    }))
}

async fn smart_configuration(State(state): State<Shared>) -> Response {
    if !state.config.require_auth {
        return Outcome::not_found("this demo server is open: no SMART authorization")
            .into_response();
    }
    axum::Json(json!({
        "token_endpoint": state.token_endpoint.as_str(),
        "token_endpoint_auth_methods_supported": ["private_key_jwt"],
        "token_endpoint_auth_signing_alg_values_supported": ["RS384", "ES384"],
        "grant_types_supported": ["client_credentials"],
        "scopes_supported": ["system/*.read", "system/*.rs"],
        "capabilities": ["client-confidential-asymmetric", "permission-v1", "permission-v2"],
    }))
    .into_response()
}

async fn token(State(state): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    state.stats().token_requests += 1;
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let result = if !content_type.starts_with("application/x-www-form-urlencoded") {
        Err(super::auth::OAuthError {
            error: "invalid_request",
            description: "the token request must be application/x-www-form-urlencoded".into(),
        })
    } else {
        let form: HashMap<String, String> =
            url::form_urlencoded::parse(&body).into_owned().collect();
        let lifetime = state.config.token_lifetime;
        state.tokens.lock().expect("tokens").token_request(
            &form,
            &state.clients,
            &state.token_endpoint,
            lifetime,
        )
    };
    let no_store = [
        (header::CACHE_CONTROL, "no-store"),
        (header::PRAGMA, "no-cache"),
    ];
    match result {
        Ok(body) => {
            state.stats().tokens_issued += 1;
            (no_store, axum::Json(body)).into_response()
        }
        Err(e) => {
            let status = StatusCode::from_u16(e.status()).expect("400 or 401");
            (status, no_store, axum::Json(e.body())).into_response()
        }
    }
}

async fn system_export(
    state: State<Shared>,
    method: Method,
    headers: HeaderMap,
    query: RawQuery,
    body: Bytes,
) -> Response {
    kickoff(state, KickoffLevel::System, method, headers, query, body).await
}

async fn patient_export(
    state: State<Shared>,
    method: Method,
    headers: HeaderMap,
    query: RawQuery,
    body: Bytes,
) -> Response {
    kickoff(state, KickoffLevel::Patient, method, headers, query, body).await
}

async fn group_export(
    state: State<Shared>,
    Path(id): Path<String>,
    method: Method,
    headers: HeaderMap,
    query: RawQuery,
    body: Bytes,
) -> Response {
    kickoff(state, KickoffLevel::Group(id), method, headers, query, body).await
}

async fn kickoff(
    State(state): State<Shared>,
    level: KickoffLevel,
    method: Method,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> Response {
    let post = method == Method::POST;
    let params = if post {
        export::params_from_body(&body)
    } else {
        Ok(
            url::form_urlencoded::parse(query.as_deref().unwrap_or_default().as_bytes())
                .into_owned()
                .collect(),
        )
    };
    let recorded = params.as_ref().cloned().unwrap_or_default();
    let mut record = KickoffRecord {
        level: level.clone(),
        method: method.to_string(),
        types: recorded
            .iter()
            .filter(|(n, _)| n == "_type")
            .flat_map(|(_, v)| v.split(',').map(|t| t.trim().to_owned()))
            .collect(),
        params: recorded,
        status: 0,
    };
    let response = match accept_kickoff(&state, level, post, &headers, query.as_deref(), params) {
        Ok(response) => response,
        Err(outcome) => outcome.into_response(),
    };
    record.status = response.status().as_u16();
    state.stats().kickoffs.push(record);
    response
}

fn accept_kickoff(
    state: &Shared,
    level: KickoffLevel,
    post: bool,
    headers: &HeaderMap,
    query: Option<&str>,
    params: Result<export::Params, Outcome>,
) -> Result<Response, Outcome> {
    let grant = state.authorize(headers)?;
    state.refuse_if(|f| (&mut f.kickoff_429, &mut f.kickoff_transient))?;
    let header_text = |name: header::HeaderName| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
    };
    let accept = header_text(header::ACCEPT);
    if !accept
        .split(',')
        .any(|a| a.split(';').next().unwrap_or_default().trim() == "application/fhir+json")
    {
        return Err(Outcome::invalid(format!(
            "kick-off requires `Accept: application/fhir+json`, got `{accept}`"
        )));
    }
    let prefer: Vec<String> = headers
        .get_all("prefer")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|p| p.trim().replace(' ', ""))
        .collect();
    if !prefer.iter().any(|p| p == "respond-async") {
        return Err(Outcome::invalid(
            "kick-off requires `Prefer: respond-async`",
        ));
    }
    let lenient = prefer.iter().any(|p| p == "handling=lenient");
    if post {
        let content_type = header_text(header::CONTENT_TYPE);
        let media = content_type.split(';').next().unwrap_or_default().trim();
        if !matches!(media, "application/fhir+json" | "application/json") {
            return Err(Outcome::invalid(format!(
                "a POST kick-off needs `Content-Type: application/fhir+json`, got `{content_type}`"
            )));
        }
    }
    let request = export::parse_request(level, &params?, post, lenient)?;
    let readable = |ty: &str| grant.as_ref().is_none_or(|g| g.can_read(ty));
    if let Some(ty) = request.types.iter().flatten().find(|ty| !readable(ty)) {
        return Err(Outcome::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!("the access token's scopes do not allow reading {ty}"),
        ));
    }
    let (snapshot, transaction_time) = snapshot(state, &request)?;

    let id = format!(
        "{:016x}",
        state.next_job.fetch_add(1, Ordering::Relaxed) ^ rand::random::<u64>() << 16
    );
    let job = Arc::new(Job {
        output: OnceLock::new(),
        polls: AtomicU32::new(0),
    });
    state
        .jobs
        .lock()
        .expect("jobs")
        .insert(id.clone(), Arc::clone(&job));
    let path = match &request.level {
        KickoffLevel::System => "fhir/$export".to_owned(),
        KickoffLevel::Patient => "fhir/Patient/$export".to_owned(),
        KickoffLevel::Group(group) => format!("fhir/Group/{group}/$export"),
    };
    let mut request_url = state.origin.join(&path).expect("valid path");
    request_url.set_query(query.filter(|_| !post));
    let faults = state.faults.lock().expect("faults").clone();
    let (page_size, requires_token) = (state.config.page_size, state.config.require_auth);
    let manifest_page_size = state.config.manifest_page_size;
    // Each part of the job on the server's own origin, or the foreign one the fault names.
    let served_at = |foreign_part: fn(&ForeignOrigin) -> bool, path: String| {
        let origin = match &faults.foreign_origin {
            Some(foreign) if foreign_part(foreign) => &foreign.url,
            _ => &state.origin,
        };
        origin.join(&path).expect("valid path")
    };
    let file_base = served_at(|f| f.files, format!("files/{id}/"));
    let location = served_at(|f| f.status, format!("jobs/{id}"));
    let pages = served_at(|f| f.pages, format!("jobs/{id}/manifest/"));
    tokio::task::spawn_blocking(move || {
        let files = export::run(
            &request,
            snapshot,
            |ty| grant.as_ref().is_none_or(|g| g.can_read(ty)),
            page_size,
            &faults,
        );
        let pages = export::manifest_pages(
            request_url.as_str(),
            transaction_time,
            requires_token,
            &files,
            manifest_page_size,
            |i| {
                let kind = match files[i].kind {
                    FileKind::Output => "",
                    FileKind::Deleted => "deleted-",
                    FileKind::Error => "error-",
                };
                format!("{file_base}{kind}{i}.ndjson")
            },
            |page| format!("{pages}{page}"),
        );
        let _ = job
            .output
            .set((files.into_iter().map(Arc::new).collect(), pages));
    });
    let body = json!({ "resourceType": "OperationOutcome", "issue": [{ "severity": "information", "code": "informational",
        "diagnostics": format!("export job {id} accepted") }] });
    Ok((
        StatusCode::ACCEPTED,
        [(header::CONTENT_LOCATION, location.to_string())],
        fhir_json(&body),
    )
        .into_response())
}

/// The store's data as the job will see it, plus the group's members for a group export.
/// The transaction time comes from the store's clock: later changes are strictly later.
fn snapshot(state: &ServerState, request: &ExportRequest) -> Result<(Snapshot, i64), Outcome> {
    let mut store = state.store.write().expect("store");
    let group_members = match &request.level {
        KickoffLevel::Group(id) => {
            let groups = store
                .types
                .iter()
                .find(|(t, _)| &**t == "Group")
                .map(|(_, r)| r.as_slice())
                .unwrap_or_default();
            let group = groups
                .iter()
                .find(|g| g.id() == id)
                .ok_or_else(|| Outcome::not_found(format!("Group/{id} does not exist")))?;
            let value: Value = serde_json::from_str(group.json()).expect("stored JSON");
            let members = value["member"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or_default();
            let ids: HashSet<String> = members
                .iter()
                .filter_map(|m| {
                    m.pointer("/entity/reference")?
                        .as_str()?
                        .strip_prefix("Patient/")
                        .map(str::to_owned)
                })
                .collect();
            Some(ids)
        }
        _ => None,
    };
    let transaction_time = store.tick();
    Ok((
        Snapshot {
            types: store.types.clone(),
            deleted: store.deleted.clone(),
            group_members,
        },
        transaction_time,
    ))
}

async fn status(
    State(state): State<Shared>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    state.stats().status_polls += 1;
    let result = (|| -> Result<Response, Outcome> {
        state.authorize(&headers)?;
        state.refuse_if(|f| (&mut f.status_429, &mut f.status_transient))?;
        let job = state.job(&id)?;
        let polls = job.polls.fetch_add(1, Ordering::SeqCst);
        match job.output.get() {
            Some((_, pages)) if polls >= state.config.status_polls => {
                Ok(manifest_response(&pages[0]))
            }
            output => {
                let total = state.config.status_polls.max(1);
                let percent = if output.is_some() {
                    100 * polls.min(total) / total
                } else {
                    0
                };
                let headers = [
                    (
                        header::RETRY_AFTER,
                        state.config.retry_after.as_secs().to_string(),
                    ),
                    (
                        header::HeaderName::from_static("x-progress"),
                        format!("{percent}% complete"),
                    ),
                ];
                Ok((StatusCode::ACCEPTED, headers).into_response())
            }
        }
    })();
    result.unwrap_or_else(IntoResponse::into_response)
}

/// A complete manifest (or one of its pages), valid for an hour.
fn manifest_response(page: &Value) -> Response {
    let expires = httpdate::fmt_http_date(std::time::SystemTime::now() + Duration::from_secs(3600));
    ([(header::EXPIRES, expires)], axum::Json(page)).into_response()
}

/// Page `n` (from 1; page 0 is the status response) of a finished job's paged manifest.
async fn manifest_page(
    State(state): State<Shared>,
    Path((id, page)): Path<(String, usize)>,
    headers: HeaderMap,
) -> Response {
    state.stats().manifest_pages += 1;
    let result = state.authorize(&headers).and_then(|_| {
        let job = state.job(&id)?;
        job.output
            .get()
            .and_then(|(_, pages)| pages.get(page))
            .filter(|_| page > 0)
            .map(manifest_response)
            .ok_or_else(|| {
                Outcome::not_found(format!("export job `{id}` has no manifest page {page}"))
            })
    });
    result.unwrap_or_else(IntoResponse::into_response)
}

async fn cancel(
    State(state): State<Shared>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    state.stats().deletes += 1;
    let result = state.authorize(&headers).and_then(|_| {
        state
            .jobs
            .lock()
            .expect("jobs")
            .remove(&id)
            .ok_or_else(|| Outcome::not_found(format!("no export job `{id}`")))
    });
    match result {
        Ok(_) => {
            let body = json!({ "resourceType": "OperationOutcome", "issue": [{ "severity": "information",
                "code": "informational", "diagnostics": format!("export job {id} deleted") }] });
            (StatusCode::ACCEPTED, fhir_json(&body)).into_response()
        }
        Err(outcome) => outcome.into_response(),
    }
}

async fn download(
    State(state): State<Shared>,
    Path((job, file)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    state.stats().downloads += 1;
    let result = (|| {
        let revoke = take(&mut state.faults.lock().expect("faults").download_token_revoked);
        if revoke && let Some(token) = bearer(&headers) {
            state.tokens.lock().expect("tokens").revoke(token);
        }
        state.authorize(&headers)?;
        let missing = || Outcome::not_found(format!("no file `{file}` in export job `{job}`"));
        let index: usize = file
            .strip_suffix(".ndjson")
            .map(|n| {
                n.trim_start_matches("deleted-")
                    .trim_start_matches("error-")
            })
            .and_then(|n| n.parse().ok())
            .ok_or_else(missing)?;
        let output = state.job(&job)?;
        let file = output
            .output
            .get()
            .and_then(|(files, _)| files.get(index))
            .cloned()
            .ok_or_else(missing)?;
        Ok::<_, Outcome>(serve_file(&state, &file, &headers))
    })();
    result.unwrap_or_else(IntoResponse::into_response)
}

/// An output file's body: `Range` (206), gzip when accepted, and the download-break fault.
fn serve_file(state: &ServerState, file: &Arc<JobFile>, headers: &HeaderMap) -> Response {
    let faults = state.faults.lock().expect("faults").clone();
    let len = file.len;
    let range = headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .filter(|_| !faults.no_range)
        .map(|r| parse_range(r, len));
    let (status, start, end) = match range {
        None | Some(RangeRequest::Ignore) => (StatusCode::OK, 0, len),
        Some(RangeRequest::Bytes(start, end)) => (StatusCode::PARTIAL_CONTENT, start, end),
        Some(RangeRequest::Unsatisfiable) => {
            let mut response = Outcome::new(
                StatusCode::RANGE_NOT_SATISFIABLE,
                "invalid",
                format!("the file has {len} bytes"),
            )
            .into_response();
            let value = HeaderValue::from_str(&format!("bytes */{len}")).expect("ASCII");
            response.headers_mut().insert(header::CONTENT_RANGE, value);
            return response;
        }
    };
    // A range is served as is: its offsets count the identity bytes the client already holds.
    let gzip = status == StatusCode::OK
        && headers
            .get_all(header::ACCEPT_ENCODING)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|e| e.trim() == "gzip" || e.trim().starts_with("gzip;") && !e.contains("q=0"));
    let mut chunks: Box<dyn Iterator<Item = Bytes> + Send> = Box::new(file.chunks(start, end));
    if gzip {
        state.stats().gzip_downloads += 1;
        chunks = Box::new(gzip_chunks(chunks));
    }
    // The break needs bytes left to break off; a body that fits whole is served whole.
    let cut = faults
        .break_download_after
        .filter(|n| gzip || (*n as u64) < end - start)
        .filter(|_| file.take_break());
    let body = match (cut, faults.download_chunk_delay) {
        (None, Some(delay)) => {
            use futures::StreamExt;
            let slow = futures::stream::iter(chunks).then(move |chunk| async move {
                tokio::time::sleep(delay).await;
                Ok::<_, std::io::Error>(chunk)
            });
            Body::from_stream(slow)
        }
        (None, None) => {
            Body::from_stream(futures::stream::iter(chunks.map(Ok::<_, std::io::Error>)))
        }
        (Some(limit), _) => {
            use futures::StreamExt;
            let head = futures::stream::iter(truncate(chunks, limit).map(Ok));
            let reset = futures::stream::once(async {
                // Pending once first, so the connection flushes the bytes sent so far before it breaks.
                tokio::task::yield_now().await;
                Err(std::io::Error::new(
                    std::io::ErrorKind::ConnectionReset,
                    "demo fault: download broken",
                ))
            });
            Body::from_stream(head.chain(reset))
        }
    };
    let mut response = Response::new(body);
    *response.status_mut() = status;
    let out = response.headers_mut();
    out.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/fhir+ndjson"),
    );
    if !faults.no_range {
        out.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    }
    if gzip {
        out.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        out.insert(header::VARY, HeaderValue::from_static("accept-encoding"));
    } else {
        out.insert(header::CONTENT_LENGTH, HeaderValue::from(end - start));
    }
    if status == StatusCode::PARTIAL_CONTENT {
        let value = format!("bytes {start}-{}/{len}", end.saturating_sub(1));
        out.insert(
            header::CONTENT_RANGE,
            HeaderValue::from_str(&value).expect("ASCII"),
        );
    }
    response
}

#[derive(Debug, PartialEq)]
enum RangeRequest {
    /// Serve bytes `start..end`.
    Bytes(u64, u64),
    /// A form the server may ignore (several ranges, other units): serve the whole file.
    Ignore,
    Unsatisfiable,
}

/// One `bytes=` range of RFC 9110: `a-b`, `a-` or `-suffix`.
fn parse_range(value: &str, len: u64) -> RangeRequest {
    let Some(spec) = value
        .trim()
        .strip_prefix("bytes=")
        .filter(|s| !s.contains(','))
    else {
        return RangeRequest::Ignore;
    };
    let Some((first, last)) = spec.split_once('-') else {
        return RangeRequest::Ignore;
    };
    let (first, last) = (first.trim(), last.trim());
    let parsed = match (first.parse::<u64>(), last.parse::<u64>()) {
        (Ok(a), Ok(b)) if a <= b => Some((a, (b + 1).min(len))),
        (Ok(a), Err(_)) if last.is_empty() => Some((a, len)),
        (Err(_), Ok(n)) if first.is_empty() && n > 0 => Some((len.saturating_sub(n), len)),
        _ => None,
    };
    match parsed {
        Some((start, end)) if start < len => RangeRequest::Bytes(start, end),
        Some(_) => RangeRequest::Unsatisfiable,
        None => RangeRequest::Ignore,
    }
}

/// Gzip-compresses a stream of chunks as it goes.
fn gzip_chunks(chunks: impl Iterator<Item = Bytes>) -> impl Iterator<Item = Bytes> {
    use std::io::Write;
    let mut encoder = Some(flate2::write::GzEncoder::new(
        Vec::new(),
        flate2::Compression::fast(),
    ));
    let mut chunks = chunks.fuse();
    std::iter::from_fn(move || {
        loop {
            let active = encoder.as_mut()?;
            match chunks.next() {
                Some(chunk) => {
                    active.write_all(&chunk).expect("writing to memory");
                    if active.get_ref().len() >= 32 * 1024 {
                        return Some(Bytes::from(std::mem::take(active.get_mut())));
                    }
                }
                None => {
                    return Some(Bytes::from(
                        encoder.take()?.finish().expect("writing to memory"),
                    ));
                }
            }
        }
    })
}

/// The first `limit` bytes of a stream of chunks.
fn truncate(chunks: impl Iterator<Item = Bytes>, limit: usize) -> impl Iterator<Item = Bytes> {
    let mut left = limit;
    chunks.map_while(move |chunk| {
        let take = chunk.len().min(left);
        left -= take;
        (take > 0).then(|| chunk.slice(..take))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        assert_eq!(parse_range("bytes=0-9", 100), RangeRequest::Bytes(0, 10));
        assert_eq!(parse_range("bytes=90-", 100), RangeRequest::Bytes(90, 100));
        assert_eq!(parse_range("bytes=-10", 100), RangeRequest::Bytes(90, 100));
        assert_eq!(
            parse_range("bytes=50-500", 100),
            RangeRequest::Bytes(50, 100)
        );
        assert_eq!(parse_range("bytes=100-", 100), RangeRequest::Unsatisfiable);
        assert_eq!(parse_range("bytes=0-1,5-6", 100), RangeRequest::Ignore);
        assert_eq!(parse_range("items=0-1", 100), RangeRequest::Ignore);
    }

    #[test]
    fn truncate_cuts_exactly() {
        let chunks = || vec![Bytes::from_static(b"abcd"), Bytes::from_static(b"efgh")].into_iter();
        assert_eq!(truncate(chunks(), 6).collect::<Vec<_>>(), ["abcd", "ef"]);
        assert_eq!(truncate(chunks(), 4).collect::<Vec<_>>(), ["abcd"]);
        assert_eq!(
            truncate(chunks(), 100).collect::<Vec<_>>(),
            ["abcd", "efgh"]
        );
    }

    #[test]
    fn gzip_round_trip() {
        use std::io::Read;
        let chunks = (0..100).map(|i| Bytes::from(format!("line {i}\n").repeat(200)));
        let expected: Vec<u8> = chunks.clone().flatten().collect();
        let compressed: Vec<u8> = gzip_chunks(chunks).flatten().collect();
        let mut plain = Vec::new();
        flate2::read::GzDecoder::new(&compressed[..])
            .read_to_end(&mut plain)
            .unwrap();
        assert_eq!(plain, expected);
    }
}
