//! Arrow Flight SQL service over a DataFusion session (the FHIR catalog in `fhirflight serve`).
//!
//! What clients get:
//! - SQL statements and prepared statements (`$1` or `?` placeholders, parameters bound with
//!   DoPut); every result is streamed batch by batch as DataFusion produces it, and a client that
//!   disconnects stops its query. Prepared-statement handles and tickets are self-contained
//!   [`proto::StatementHandle`] messages (the SQL and the bound values): the server keeps no
//!   per-statement state, so handles never leak or expire.
//! - Metadata with real values: GetSqlInfo (every key of the spec), catalogs, schemas, tables
//!   (with Arrow schemas on request), table types, XDBC type info; key listings are empty.
//! - Authentication: HTTP Basic on the Handshake (only there) returns a signed bearer token;
//!   users have salted Argon2id password hashes and a [`Role`] (see [`Users`]); failed logins
//!   are logged and make their address wait. Anonymous access only when asked for and only on a
//!   loopback address. TLS from PEM files. Graceful shutdown.
//! - Limits: statements at once (over all users and per user), a query timeout, a memory pool
//!   (the session's), connections at once, an idle timeout, and exports each user may start
//!   upstream per period ([`ExportRate`]; see the `with_*` setters).
//! - Operation: the standard `grpc.health.v1.Health` service on the same port, without
//!   credentials (SERVING while up, NOT_SERVING once shutdown starts), and Prometheus
//!   [metrics](self#metrics) on a listener of their own ([`FlightSqlServer::with_metrics`]).
//! - Statements go through [`crate::catalog::sql`]: ONE export per statement for all the FHIR
//!   tables it reads. They are planned and run on a [`QueryRuntime`] of their own, so a statement
//!   busy on every core leaves logins, other statements and shutdown answered, and a client
//!   that drops GetFlightInfo or DoGet stops its statement (and drops its wait on the export).
//!   Browsing (GetTables, GetDbSchemas...) never exports.
//! - Custom actions `ListExports`, `ListSnapshots`, `RefreshTable`, `CancelExport`, `AddView`
//!   (messages in [`proto`]), answered by an [`ExportControl`] ([`FhirExportControl`] over the
//!   session's FHIR catalogs).
//!
//! Errors become gRPC statuses in one place: malformed SQL `INVALID_ARGUMENT`, an unknown table
//! `NOT_FOUND`, bad credentials `UNAUTHENTICATED`, an unreachable FHIR server `UNAVAILABLE`, an
//! export budget spent `RESOURCE_EXHAUSTED`. A client's message never carries this server's
//! file paths or the FHIR server's URLs: it says what failed (the HTTP status and the server's
//! OperationOutcome text, the table, the SQL error, the bad NDJSON line) and carries an error id
//! that finds the whole error in the server log.
//!
//! # Metrics
//!
//! They hold counts and ages only, never patient data, SQL text or user names:
//!
//! | metric | type | what |
//! | --- | --- | --- |
//! | `fhirflight_statements_total{code}` | counter | statements ended, by gRPC code (`OK`, `INVALID_ARGUMENT`, `RESOURCE_EXHAUSTED`...): once each, by an error planning it (GetFlightInfo, CreatePreparedStatement) or by the end of its DoGet (`CANCELLED` when the client left) |
//! | `fhirflight_statements_running` | gauge | statements holding a slot (planning or streaming) |
//! | `fhirflight_rows_returned_total`, `fhirflight_bytes_returned_total` | counter | rows and Arrow IPC bytes sent by DoGet |
//! | `fhirflight_logins_failed_total` | counter | Handshakes with a wrong name or password |
//! | `fhirflight_exports{state}` | gauge | exports the catalogs list (running and recently finished), by state |
//! | `fhirflight_snapshot_age_seconds{catalog,table}` | gauge | age of each table's committed snapshot |
//! | `fhirflight_memory_pool_reserved_bytes`, `fhirflight_memory_pool_limit_bytes` | gauge | the session's memory pool (the limit only when it has one) |
//!
//! ```no_run
//! # async fn run() -> fhirflight::Result<()> {
//! use datafusion::prelude::SessionContext;
//! use fhirflight::flight::{FlightSqlServer, Role, Users};
//!
//! let users = Users::from_file("/etc/fhirflight/users")?
//!     .with_user("alice", "wonderland", Role::Read)?;
//! let server = FlightSqlServer::new(SessionContext::new())
//!     .with_users(users)
//!     .bind("127.0.0.1:50051")
//!     .await?;
//! println!("listening on {}", server.local_addr());
//! server.shutdown().await
//! # }
//! ```

mod actions;
mod audit;
mod auth;
mod control;
mod limits;
mod metadata;
mod metrics;
mod service;
mod statement;
mod status;
mod users;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arrow_flight::flight_service_server::FlightServiceServer;
use datafusion::prelude::SessionContext;
use tokio::net::{TcpListener, ToSocketAddrs};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::{Identity, Server, ServerTlsConfig};

pub use actions::ExportControl;
pub use audit::AuditLog;
pub use control::FhirExportControl;
pub use limits::ExportRate;
pub use users::{Role, Users};

use crate::catalog::QueryRuntime;
use crate::{Error, Result};
use limits::Limits;
use metrics::Metrics;

/// fhirflight's own protobuf messages (`proto/fhirflight.proto`): statement handles and the
/// custom actions' requests and results.
pub mod proto {
    include!(concat!(env!("OUT_DIR"), "/fhirflight.v1.rs"));
}

/// A Flight SQL server over a DataFusion [`SessionContext`], configured with consuming
/// `with_*` setters and started with [`serve`](Self::serve) or [`bind`](Self::bind).
pub struct FlightSqlServer {
    ctx: SessionContext,
    users: Users,
    anonymous: bool,
    tls: Option<(PathBuf, PathBuf)>,
    exports: Option<Arc<dyn ExportControl>>,
    token_ttl: Duration,
    queries: Option<QueryRuntime>,
    shutdown_grace: Duration,
    limits: Limits,
    audit: Option<AuditLog>,
    metrics: Option<TcpListener>,
}

impl std::fmt::Debug for FlightSqlServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FlightSqlServer")
            .field("session_id", &self.ctx.session_id())
            .field("users", &self.users)
            .field("anonymous", &self.anonymous)
            .field("tls", &self.tls)
            .field("exports", &self.exports)
            .field("token_ttl", &self.token_ttl)
            .field("queries", &self.queries)
            .field("shutdown_grace", &self.shutdown_grace)
            .field("limits", &self.limits)
            .field("audit", &self.audit)
            .field(
                "metrics",
                &self.metrics.as_ref().map(|l| l.local_addr().ok()),
            )
            .finish()
    }
}

impl FlightSqlServer {
    /// A server for the tables of `ctx`, with no users yet.
    pub fn new(ctx: SessionContext) -> Self {
        Self {
            ctx,
            users: Users::new(),
            anonymous: false,
            tls: None,
            exports: None,
            token_ttl: Duration::from_secs(3600),
            queries: None,
            shutdown_grace: Duration::from_secs(10),
            limits: Limits::default(),
            audit: None,
            metrics: None,
        }
    }

    /// Records every statement, action and login in `audit` (see [`AuditLog`]).
    pub fn with_audit_log(self, audit: AuditLog) -> Self {
        Self {
            audit: Some(audit),
            ..self
        }
    }

    /// The users who may connect (HTTP Basic on the Handshake, then a bearer token).
    pub fn with_users(self, users: Users) -> Self {
        Self { users, ..self }
    }

    /// Lets clients in without credentials. Refused when the listen address is not loopback.
    pub fn with_anonymous(self, anonymous: bool) -> Self {
        Self { anonymous, ..self }
    }

    /// Serves TLS with a PEM certificate chain and private key, read when the server starts.
    pub fn with_tls(self, cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Self {
        Self {
            tls: Some((cert.into(), key.into())),
            ..self
        }
    }

    /// Answers the export actions and GetTables schemas through `exports` (the FHIR catalog).
    pub fn with_export_control(self, exports: Arc<dyn ExportControl>) -> Self {
        Self {
            exports: Some(exports),
            ..self
        }
    }

    /// How long a bearer token from the Handshake stays valid (one hour by default).
    pub fn with_token_ttl(self, token_ttl: Duration) -> Self {
        Self { token_ttl, ..self }
    }

    /// Plans and runs statements on `queries` (by default a runtime of its own with a thread per
    /// core, made when serving starts).
    pub fn with_query_runtime(self, queries: QueryRuntime) -> Self {
        Self {
            queries: Some(queries),
            ..self
        }
    }

    /// How long running calls may go on after shutdown was asked for (10 s by default); then
    /// they are stopped, their statements cancelled.
    pub fn with_shutdown_grace(self, shutdown_grace: Duration) -> Self {
        Self {
            shutdown_grace,
            ..self
        }
    }

    /// Statements that may run at once, over all users (default 8 per core). One more is
    /// refused with `RESOURCE_EXHAUSTED`. A statement counts while GetFlightInfo plans it (which
    /// may wait for an export) and while DoGet streams its results.
    pub fn with_max_statements(self, max: usize) -> Self {
        let limits = Limits {
            max_statements: max.max(1),
            ..self.limits
        };
        Self { limits, ..self }
    }

    /// Statements one user may run at once (default 2 per core; anonymous callers count as one
    /// user). One more is refused with `RESOURCE_EXHAUSTED`.
    pub fn with_max_statements_per_user(self, max: usize) -> Self {
        let limits = Limits {
            max_statements_per_user: max.max(1),
            ..self.limits
        };
        Self { limits, ..self }
    }

    /// How long each call of a statement may take: planning it (with the wait for its export)
    /// in GetFlightInfo, running it and streaming its results in DoGet. Past it, the statement
    /// is stopped and the client gets `DEADLINE_EXCEEDED`; an export it waited for runs on.
    /// Default: none.
    pub fn with_query_timeout(self, timeout: Option<Duration>) -> Self {
        let limits = Limits {
            query_timeout: timeout,
            ..self.limits
        };
        Self { limits, ..self }
    }

    /// Connections open at once (default 512); one more is closed as soon as it is accepted.
    pub fn with_max_connections(self, max: usize) -> Self {
        let limits = Limits {
            max_connections: max.max(1),
            ..self.limits
        };
        Self { limits, ..self }
    }

    /// How long a connection may stay silent before it is closed (default 2 min). The server
    /// pings every 30 s and clients answer, so a live client is never closed; a socket opened
    /// and left (or a client gone without a word) is.
    pub fn with_idle_timeout(self, idle_timeout: Duration) -> Self {
        let limits = Limits {
            idle_timeout,
            ..self.limits
        };
        Self { limits, ..self }
    }

    /// Exports each user may START upstream per period (default [`ExportRate::default`],
    /// `10/15m`; anonymous callers count as one user). A statement or `RefreshTable` that would
    /// start one more is refused with `RESOURCE_EXHAUSTED`, saying when the next may start;
    /// statements on fresh snapshots, or joining an export already running, are not counted.
    ///
    /// ```
    /// # use fhirflight::flight::{ExportRate, FlightSqlServer};
    /// let server = FlightSqlServer::new(datafusion::prelude::SessionContext::new())
    ///     .with_exports_per_user("4/1h".parse::<ExportRate>().unwrap());
    /// ```
    pub fn with_exports_per_user(self, rate: ExportRate) -> Self {
        let limits = Limits {
            exports_per_user: rate,
            ..self.limits
        };
        Self { limits, ..self }
    }

    /// Serves Prometheus metrics (text format 0.0.4) on `GET /metrics` of `listener` while the
    /// server runs: statements by gRPC code, statements running, rows and bytes returned,
    /// failed logins, exports by state, snapshot ages, the memory pool (see the table in
    /// [metrics](crate::flight#metrics)). They hold counts and ages, no patient data, SQL or user
    /// names, and the listener asks for no credentials: bind it where your scraper reaches it.
    ///
    /// ```no_run
    /// # async fn run() -> fhirflight::Result<()> {
    /// # use fhirflight::flight::FlightSqlServer;
    /// let metrics = tokio::net::TcpListener::bind("127.0.0.1:9464")
    ///     .await
    ///     .map_err(|e| fhirflight::Error::io("metrics listen address", e))?;
    /// let server = FlightSqlServer::new(datafusion::prelude::SessionContext::new())
    ///     .with_anonymous(true)
    ///     .with_metrics(metrics)
    ///     .bind("127.0.0.1:50051")
    ///     .await?;
    /// # server.shutdown().await
    /// # }
    /// ```
    pub fn with_metrics(self, listener: TcpListener) -> Self {
        Self {
            metrics: Some(listener),
            ..self
        }
    }

    /// Serves on `listener` until `shutdown` completes, then lets running calls finish for the
    /// [shutdown grace](Self::with_shutdown_grace) at most.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<()> {
        self.start(listener, shutdown)?.await
    }

    /// Checks the configuration and sets everything up (TLS files read, threads started), then
    /// returns the future that serves: a server that cannot serve fails here, before anyone is
    /// told it listens.
    fn start(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<impl Future<Output = Result<()>> + Send> {
        let local_addr = listener
            .local_addr()
            .map_err(|e| Error::io("Flight SQL listener", e))?;
        if self.anonymous && !local_addr.ip().is_loopback() {
            return Err(anonymous_off_loopback(&local_addr));
        }
        if !self.anonymous && self.users.is_empty() {
            return Err(Error::config(
                "no users configured and anonymous access not enabled: nobody could connect",
            ));
        }
        let mut builder = Server::builder()
            .http2_keepalive_interval(Some(self.limits.keepalive_interval()))
            .http2_keepalive_timeout(Some(limits::KEEPALIVE_TIMEOUT));
        if crosses_in_clear(self.tls.is_some(), !self.users.is_empty(), &local_addr) {
            tracing::warn!(
                %local_addr,
                "passwords and tokens cross the network in clear: serve TLS (--tls-cert, --tls-key) on a non-loopback address"
            );
        }
        if let Some((cert, key)) = &self.tls {
            let read = |path: &PathBuf| std::fs::read(path).map_err(|e| Error::io(path, e));
            let identity = Identity::from_pem(read(cert)?, read(key)?);
            install_crypto_provider();
            builder = builder.tls_config(ServerTlsConfig::new().identity(identity))?;
        }
        let metrics = Arc::new(Metrics::default());
        let auth = Arc::new(auth::Authenticator::new(
            self.users,
            self.anonymous,
            self.token_ttl,
            self.audit.clone(),
            Arc::clone(&metrics),
        ));
        let queries = match self.queries {
            Some(queries) => queries,
            None => QueryRuntime::try_default()?,
        };
        let service = service::FhirFlightService::new(
            self.ctx,
            queries.clone(),
            Arc::clone(&auth),
            self.exports,
            &self.limits,
            self.audit,
            metrics,
        );
        let scraping = self.metrics.map(|listener| {
            let metrics_addr = listener
                .local_addr()
                .map(|a| a.to_string())
                .unwrap_or_default();
            let router = metrics::router(service.scrape());
            async move {
                tracing::info!(%metrics_addr, "Prometheus metrics on /metrics");
                if let Err(e) = axum::serve(listener, router).await {
                    tracing::error!("the metrics listener failed: {e}");
                }
            }
        });
        let service = FlightServiceServer::new(service);
        let (mut health, health_service) = tonic_health::server::health_reporter();
        let (tls, grace) = (self.tls.is_some(), self.shutdown_grace);
        let incoming = limits::incoming(listener, &self.limits);
        Ok(async move {
            tracing::info!(%local_addr, tls, "Flight SQL server listening");
            health
                .set_serving::<FlightServiceServer<service::FhirFlightService>>()
                .await;
            // Stopped with the server (dropping the handle would leave it running).
            let scraping = scraping.map(tokio::spawn);
            let (asked, stopping) = oneshot::channel::<()>();
            let serving = builder
                .layer(auth::AuthLayer(auth))
                .add_service(health_service)
                .add_service(service)
                .serve_with_incoming_shutdown(incoming, async move {
                    shutdown.await;
                    stop_serving(&mut health).await;
                    let _ = asked.send(());
                });
            tokio::select! {
                served = serving => served?,
                () = async move {
                    if stopping.await.is_err() {
                        std::future::pending::<()>().await;
                    }
                    tokio::time::sleep(grace).await;
                } => {
                    tracing::warn!(?grace, "calls still running after the shutdown grace: cancelled");
                    queries.stop();
                }
            }
            if let Some(scraping) = scraping {
                scraping.abort();
            }
            Ok(())
        })
    }

    /// Binds `addr` (port 0 picks a free port) and serves in the background. Whatever keeps it
    /// from serving (a TLS file, anonymous access off loopback, no users) is an error here.
    pub async fn bind(self, addr: impl ToSocketAddrs) -> Result<RunningServer> {
        let failed = |e| Error::io("Flight SQL listen address", e);
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host(addr)
            .await
            .map_err(failed)?
            .collect();
        // Checked before binding, so that a refused address is never listened on, even briefly.
        if let Some(open) = addrs
            .iter()
            .find(|a| self.anonymous && !a.ip().is_loopback())
        {
            return Err(anonymous_off_loopback(open));
        }
        let listener = TcpListener::bind(&addrs[..]).await.map_err(failed)?;
        let local_addr = listener
            .local_addr()
            .map_err(|e| Error::io("Flight SQL listener", e))?;
        let (stop, stopped) = oneshot::channel::<()>();
        let serving = self.start(listener, async move {
            let _ = stopped.await;
        })?;
        let task = tokio::spawn(serving);
        Ok(RunningServer {
            local_addr,
            stop,
            task,
        })
    }
}

/// Reports NOT_SERVING for the whole server and the Flight service, then ends the health
/// watches: a load balancer watching sees NOT_SERVING and its stream end, rather than holding
/// the shutdown for its grace.
async fn stop_serving(health: &mut tonic_health::server::HealthReporter) {
    let flight =
        <FlightServiceServer<service::FhirFlightService> as tonic::server::NamedService>::NAME;
    for name in ["", flight] {
        health
            .set_service_status(name, tonic_health::ServingStatus::NotServing)
            .await;
        health.clear_service_status(name).await;
    }
}

fn anonymous_off_loopback(addr: &SocketAddr) -> Error {
    Error::config(format!(
        "anonymous access is only allowed on a loopback address, not {addr}"
    ))
}

/// A server started by [`FlightSqlServer::bind`].
#[derive(Debug)]
pub struct RunningServer {
    local_addr: SocketAddr,
    stop: oneshot::Sender<()>,
    task: JoinHandle<Result<()>>,
}

impl RunningServer {
    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops accepting calls, waits for running ones, and returns how serving ended.
    pub async fn shutdown(self) -> Result<()> {
        let _ = self.stop.send(());
        self.task
            .await
            .map_err(|e| Error::config_with("Flight SQL server task", e))?
    }
}

/// Whether passwords (and the tokens they buy) would cross a network in clear: users, no TLS,
/// and an address other hosts reach.
fn crosses_in_clear(tls: bool, users: bool, address: &SocketAddr) -> bool {
    users && !tls && !address.ip().is_loopback()
}

/// Makes ring the process's rustls provider unless one was chosen. tonic's TLS asks rustls for
/// the process default, which rustls picks alone only when one provider is compiled in, and
/// deltalake's kernel compiles aws-lc-rs beside our ring.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_in_clear_off_loopback_are_told_apart() {
        let (lan, local): (SocketAddr, SocketAddr) = (
            "10.1.2.3:50051".parse().unwrap(),
            "127.0.0.1:50051".parse().unwrap(),
        );
        assert!(crosses_in_clear(false, true, &lan));
        assert!(!crosses_in_clear(true, true, &lan), "TLS");
        assert!(
            !crosses_in_clear(false, false, &lan),
            "anonymous: no password"
        );
        assert!(!crosses_in_clear(false, true, &local), "loopback");
        assert!(!crosses_in_clear(
            false,
            true,
            &"[::1]:50051".parse().unwrap()
        ));
    }
}
