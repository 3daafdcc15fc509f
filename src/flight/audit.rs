//! The audit trail: one JSON line per statement, action and login, as systems serving PHI keep
//! (the HIPAA audit-control expectation).
//!
//! Each [`AuditRecord`] says when, who (user, client address), what (the call, the statement
//! text or the action's request, the tables read), how much (rows and bytes returned), how long
//! and how it ended (`ok`, or the gRPC code and message; `cancelled` when the client left).
//! Statements are recorded with their text, literals included: the audit log holds what was
//! asked, so keep it where patient data may be kept.

use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use arrow_flight::FlightData;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::logical_expr::LogicalPlan;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::prelude::SessionContext;
use futures::{Stream, StreamExt, TryStreamExt};
use serde::Serialize;
use tonic::{Code, Status};

use super::auth::Caller;
use super::metrics::Metrics;
use crate::{Error, Result};

/// Where audit records go: a file (appended to, created readable by its owner only) or any
/// writer, one JSON object per line.
///
/// ```no_run
/// # fn main() -> fhirflight::Result<()> {
/// use fhirflight::flight::{AuditLog, FlightSqlServer};
/// let audit = AuditLog::to_file("/var/log/fhirflight/audit.jsonl")?;
/// let server = FlightSqlServer::new(datafusion::prelude::SessionContext::new())
///     .with_audit_log(audit);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct AuditLog(Arc<Mutex<Box<dyn Write + Send>>>);

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AuditLog")
    }
}

impl AuditLog {
    /// Appends to the file at `path` (created with mode 0600 on Unix).
    pub fn to_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let mut options = std::fs::OpenOptions::new();
        options.append(true).create(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let file = options.open(path).map_err(|e| Error::io(path, e))?;
        Ok(Self::to_writer(file))
    }

    /// Writes to `writer` (standard error, a buffer in a test).
    pub fn to_writer(writer: impl Write + Send + 'static) -> Self {
        Self(Arc::new(Mutex::new(Box::new(writer))))
    }

    /// Writes `record` as one line. A failing audit log is logged, never fails the call.
    pub(crate) fn record(&self, record: &AuditRecord) {
        let mut line = serde_json::to_vec(record).unwrap_or_default();
        line.push(b'\n');
        let mut writer = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Err(e) = writer.write_all(&line).and_then(|()| writer.flush()) {
            tracing::error!("writing the audit log failed: {e}");
        }
    }
}

/// One audited call.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct AuditRecord {
    /// When it ended (RFC 3339, UTC).
    time: String,
    /// The user (empty for an anonymous caller or a failed login's unknown user).
    user: String,
    /// The client's address.
    client: Option<String>,
    /// `Handshake`, `GetFlightInfo`, `DoGet`, `CreatePreparedStatement` or an action's name.
    call: &'static str,
    /// The statement text, or the action's request.
    #[serde(skip_serializing_if = "Option::is_none")]
    statement: Option<String>,
    /// The tables the statement reads.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tables: Vec<String>,
    /// Rows and bytes (Arrow IPC) returned, for DoGet.
    #[serde(skip_serializing_if = "Option::is_none")]
    rows: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    bytes: Option<u64>,
    duration_ms: u64,
    /// `ok`, `cancelled`, or `<gRPC code>: <message>`.
    outcome: String,
}

impl AuditRecord {
    /// A record of `call` by `caller` from `client`; outcome `ok` until told otherwise.
    pub(crate) fn new(
        call: &'static str,
        caller: Option<&Caller>,
        client: Option<SocketAddr>,
    ) -> Self {
        Self {
            time: String::new(),
            user: caller.map(Caller::name).unwrap_or_default().to_owned(),
            client: client.map(|c| c.to_string()),
            call,
            statement: None,
            tables: Vec::new(),
            rows: None,
            bytes: None,
            duration_ms: 0,
            outcome: "ok".into(),
        }
    }

    /// A failed login of `user` from `client`.
    pub(crate) fn failed_login(user: &str, client: Option<SocketAddr>, reason: &str) -> Self {
        Self {
            user: user.to_owned(),
            outcome: format!("Unauthenticated: {reason}"),
            ..Self::new("Handshake", None, client)
        }
        .ended(Instant::now())
    }

    /// The record of a call started at `started` and ending now.
    pub(crate) fn ended(self, started: Instant) -> Self {
        Self {
            time: crate::time::rfc3339(SystemTime::now()),
            duration_ms: started.elapsed().as_millis() as u64,
            ..self
        }
    }

    pub(crate) fn with_statement(self, statement: impl Into<String>) -> Self {
        Self {
            statement: Some(statement.into()),
            ..self
        }
    }

    pub(crate) fn with_tables(self, tables: Vec<String>) -> Self {
        Self { tables, ..self }
    }

    /// The outcome of `result`: `ok`, or the status's code and message.
    pub(crate) fn with_outcome<T>(self, result: &std::result::Result<T, Status>) -> Self {
        match result {
            Ok(_) => self,
            Err(status) => Self {
                outcome: outcome(status),
                ..self
            },
        }
    }
}

fn outcome(status: &Status) -> String {
    format!("{:?}: {}", status.code(), status.message())
}

/// The tables `plan` scans, in full (`fhir.fhir.Patient`: names resolved against `ctx`'s
/// default catalog and schema), sorted.
pub(crate) fn tables(plan: &LogicalPlan, ctx: &SessionContext) -> Vec<String> {
    let state = ctx.state();
    let defaults = &state.config_options().catalog;
    let mut tables = Vec::new();
    let _ = plan.apply_with_subqueries(|node| {
        if let LogicalPlan::TableScan(scan) = node {
            let name = scan.table_name.clone();
            let full = name.resolve(&defaults.default_catalog, &defaults.default_schema);
            tables.push(full.to_string());
        }
        Ok(TreeNodeRecursion::Continue)
    });
    tables.sort();
    tables.dedup();
    tables
}

/// What a DoGet returns, counted while its results stream and reported once, when the stream
/// ends (before the client can see the end) or is dropped: to the [`Metrics`] always, to the
/// audit log when there is one (`cancelled` if the client left first).
#[derive(Debug)]
pub(crate) struct StreamTally {
    metrics: Arc<Metrics>,
    audit: Option<(AuditLog, AuditRecord)>,
    started: Instant,
    rows: Arc<AtomicU64>,
    bytes: u64,
    reported: bool,
}

impl StreamTally {
    pub(crate) fn new(
        metrics: Arc<Metrics>,
        audit: Option<(AuditLog, AuditRecord)>,
        started: Instant,
    ) -> Self {
        Self {
            metrics,
            audit,
            started,
            rows: Arc::default(),
            bytes: 0,
            reported: false,
        }
    }

    /// Counts a chunk of the response; an error ends it (the client gets no more).
    fn observe(&mut self, item: &std::result::Result<FlightData, Status>) {
        match item {
            Ok(data) => self.bytes += (data.data_header.len() + data.data_body.len()) as u64,
            Err(status) => self.report(status.code(), outcome(status)),
        }
    }

    /// Reports how the stream ended, the first time only.
    fn report(&mut self, code: Code, outcome: String) {
        if std::mem::replace(&mut self.reported, true) {
            return;
        }
        let rows = self.rows.load(Ordering::Relaxed);
        self.metrics.statement_ended(code);
        self.metrics.returned(rows, self.bytes);
        if let Some((log, record)) = self.audit.take() {
            let record = AuditRecord {
                rows: Some(rows),
                bytes: Some(self.bytes),
                outcome,
                ..record.ended(self.started)
            };
            log.record(&record);
        }
    }
}

impl Drop for StreamTally {
    fn drop(&mut self) {
        self.report(Code::Cancelled, "cancelled".into());
    }
}

/// `stream` with its rows counted into `tally` (see [`tallied`]).
pub(crate) fn counting_rows(
    stream: SendableRecordBatchStream,
    tally: &StreamTally,
) -> SendableRecordBatchStream {
    let rows = Arc::clone(&tally.rows);
    let schema = stream.schema();
    let counted = stream.inspect_ok(move |batch| {
        rows.fetch_add(batch.num_rows() as u64, Ordering::Relaxed);
    });
    Box::pin(RecordBatchStreamAdapter::new(schema, counted))
}

/// `response`, counted by `tally`: its bytes counted, its end (or drop) reported.
pub(crate) fn tallied<S>(
    response: S,
    tally: StreamTally,
) -> impl Stream<Item = S::Item> + Send + use<S>
where
    S: Stream<Item = std::result::Result<FlightData, Status>> + Send + Unpin + 'static,
{
    futures::stream::unfold((response, tally), |(mut response, mut tally)| async move {
        match response.next().await {
            Some(item) => {
                tally.observe(&item);
                Some((item, (response, tally)))
            }
            None => {
                tally.report(Code::Ok, "ok".into());
                None
            }
        }
    })
}
