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
use tonic::Status;

use super::auth::Caller;
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

/// The record of a DoGet while its results stream: counts rows and bytes, and is written when
/// the stream ends or is dropped (`cancelled` if the client left first).
#[derive(Debug)]
pub(crate) struct StreamAudit {
    log: AuditLog,
    record: AuditRecord,
    started: Instant,
    pub(crate) rows: Arc<AtomicU64>,
    bytes: u64,
    ended: bool,
}

impl StreamAudit {
    pub(crate) fn new(log: AuditLog, record: AuditRecord, started: Instant) -> Self {
        Self {
            log,
            record,
            started,
            rows: Arc::default(),
            bytes: 0,
            ended: false,
        }
    }

    /// Counts a chunk of the response, or its end with an error.
    pub(crate) fn observe(&mut self, item: &std::result::Result<FlightData, Status>) {
        match item {
            Ok(data) => self.bytes += (data.data_header.len() + data.data_body.len()) as u64,
            Err(status) => {
                self.record.outcome = outcome(status);
                self.ended = true;
            }
        }
    }

    /// The stream ended normally.
    pub(crate) fn finish(&mut self) {
        self.ended = true;
    }
}

impl Drop for StreamAudit {
    fn drop(&mut self) {
        let mut record = self.record.clone().ended(self.started);
        if !self.ended {
            record.outcome = "cancelled".into();
        }
        record.rows = Some(self.rows.load(Ordering::Relaxed));
        record.bytes = Some(self.bytes);
        self.log.record(&record);
    }
}

/// `stream` with its rows counted into `audit` and the response it becomes ([`audited`]).
pub(crate) fn counting_rows(
    stream: SendableRecordBatchStream,
    audit: &StreamAudit,
) -> SendableRecordBatchStream {
    let rows = Arc::clone(&audit.rows);
    let schema = stream.schema();
    let counted = stream.inspect_ok(move |batch| {
        rows.fetch_add(batch.num_rows() as u64, Ordering::Relaxed);
    });
    Box::pin(RecordBatchStreamAdapter::new(schema, counted))
}

/// `response`, audited by `audit`: its bytes counted, its end (or drop) recorded.
pub(crate) fn audited<S>(
    response: S,
    audit: StreamAudit,
) -> impl Stream<Item = S::Item> + Send + use<S>
where
    S: Stream<Item = std::result::Result<FlightData, Status>> + Send + Unpin + 'static,
{
    futures::stream::unfold((response, audit), |(mut response, mut audit)| async move {
        match response.next().await {
            Some(item) => {
                audit.observe(&item);
                Some((item, (response, audit)))
            }
            None => {
                audit.finish();
                None
            }
        }
    })
}
