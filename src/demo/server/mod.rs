//! The demo Bulk Data server: its state, the listener and the routes. Each job of a real server
//! has a file of its own:
//!
//! - [`config`]: [`DemoConfig`], how a server is set up;
//! - [`discovery`]: the CapabilityStatement and the SMART configuration;
//! - [`token`]: the token endpoint and the bearer-token check of every other route;
//! - [`kickoff`]: `$export` kick-offs at the three levels, turned into jobs by [`export`];
//! - [`export`]: kick-off parameters, strict validation, the resources of a job, the manifest;
//! - [`status`]: the status URL of a job (polling, manifest pages, `DELETE`);
//! - [`files`]: output file downloads (`Range`, gzip);
//! - [`faults`]: [`Faults`], the ways a real server misbehaves, and the foreign origin;
//! - [`stats`]: [`DemoStats`], what the server has been asked;
//! - [`outcome`]: the OperationOutcome error responses every route answers with.
//!
//! This file holds what every route shares ([`ServerState`]: the store, the jobs, the tokens,
//! the faults, the statistics), [`DemoServer`] (start, stop, change the data) and the router.

mod config;
mod discovery;
mod export;
mod faults;
mod files;
mod kickoff;
mod outcome;
mod stats;
mod status;
mod token;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::Duration;

use axum::Router;
use axum::http::{Method, StatusCode};
use axum::routing::{get, post};
use serde_json::Value;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use url::Url;

pub use config::DemoConfig;
pub use faults::{Faults, ForeignOrigin, HOSTILE_TYPES, presigned};
pub use kickoff::KickoffLevel;
pub(crate) use outcome::Outcome;
pub use stats::{DemoStats, ForeignRequest, KickoffRecord};

use super::auth::{DEMO_CLIENT_ID, DemoCredentials, RegisteredClient, TokenStore};
use super::generate::{self, Resource};
use super::tls::{TlsIdentity, TlsListener};
use crate::bulk::{BulkClient, ClientOptions};
use crate::smart::{SigningKey, SmartConfig};
use crate::time::now_ms;
use crate::{Error, Result};
use export::{Deletion, JobFile};

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
    /// The kick-off asked for `allowPartialManifests`: pages are released while the job runs.
    partial_manifests: bool,
    /// Manifest pages released so far (with `partial_manifests`; all once complete).
    released: AtomicUsize,
    /// Whether the status URL has answered with the complete manifest.
    complete: AtomicBool,
    /// The files answer 410 Gone ([`Faults::files_gone_once`]).
    files_gone: bool,
}

/// What every route of one server shares.
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

/// The state as axum's handlers hold it.
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

    /// The name of its population ([`DemoConfig::source_name`]), stable across runs.
    pub fn source_name(&self) -> String {
        self.state.config.source_name()
    }

    /// The socket address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The registered demo client: id, RS384 and ES384 private keys, token endpoint.
    pub fn credentials(&self) -> &DemoCredentials {
        &self.state.credentials
    }

    /// A Bulk Data client of this server, authenticated as the registered demo client (its
    /// RS384 key), with `options`.
    ///
    /// ```
    /// # async fn run() -> fhirflight::Result<()> {
    /// use fhirflight::bulk::ClientOptions;
    /// use fhirflight::demo::{DemoConfig, DemoServer};
    /// let server = DemoServer::start(DemoConfig::default().with_patients(2)).await?;
    /// let client = server.client(ClientOptions::default()).await?;
    /// assert!(client.resource_types().await?.contains(&"Patient".to_owned()));
    /// # Ok(())
    /// # }
    /// # tokio::runtime::Runtime::new().unwrap().block_on(run()).unwrap();
    /// ```
    pub async fn client(&self, options: ClientOptions) -> Result<BulkClient> {
        let creds = self.credentials();
        let key = SigningKey::from_jwk(creds.rs384().private_jwk(), None)?;
        let auth = SmartConfig::new(creds.client_id(), key);
        BulkClient::try_new(self.base_url(), Some(auth), options).await
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
        .route("/fhir/metadata", get(discovery::metadata))
        .route(
            "/fhir/.well-known/smart-configuration",
            get(discovery::smart_configuration),
        )
        .route("/auth/token", post(token::token))
        .route(
            "/fhir/$export",
            get(kickoff::system_export).post(kickoff::system_export),
        )
        .route(
            "/fhir/Patient/$export",
            get(kickoff::patient_export).post(kickoff::patient_export),
        )
        .route(
            "/fhir/Group/{id}/$export",
            get(kickoff::group_export).post(kickoff::group_export),
        )
        .route("/jobs/{id}", get(status::status).delete(status::cancel))
        .route("/jobs/{id}/manifest/{page}", get(status::manifest_page))
        .route("/files/{job}/{file}", get(files::download))
        .method_not_allowed_fallback(|method: Method, uri: axum::http::Uri| async move {
            let message = format!("{method} is not supported on {}", uri.path());
            Outcome::new(StatusCode::METHOD_NOT_ALLOWED, "not-supported", message)
        })
        .fallback(|method: Method, uri: axum::http::Uri| async move {
            Outcome::not_found(format!("no route for {method} {}", uri.path()))
        })
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(&state),
            faults::record_foreign,
        ))
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(&state),
            stats::count_request,
        ))
        .with_state(state)
}

impl ServerState {
    fn stats(&self) -> std::sync::MutexGuard<'_, DemoStats> {
        self.stats.lock().expect("stats")
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
