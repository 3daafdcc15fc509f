//! Prometheus metrics of a Flight SQL server, served as text (exposition format 0.0.4) on
//! `GET /metrics` of a listener of their own ([`FlightSqlServer::with_metrics`]).
//!
//! What they are: the [module docs](super#metrics).
//!
//! [`FlightSqlServer::with_metrics`]: super::FlightSqlServer::with_metrics

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use datafusion::execution::memory_pool::{MemoryLimit, MemoryPool};
use tonic::Code;

use super::actions::ExportControl;
use super::limits::StatementSlots;
use super::proto::ExportState;

/// The gRPC codes, by number (`Code as usize`).
const CODES: usize = 17;

/// The counters the server's calls move.
#[derive(Debug, Default)]
pub(crate) struct Metrics {
    statements: [AtomicU64; CODES],
    rows: AtomicU64,
    bytes: AtomicU64,
    logins_failed: AtomicU64,
}

impl Metrics {
    /// A statement ended with `code`.
    pub(crate) fn statement_ended(&self, code: Code) {
        self.statements[code as usize % CODES].fetch_add(1, Ordering::Relaxed);
    }

    /// A DoGet sent `rows` rows in `bytes` bytes.
    pub(crate) fn returned(&self, rows: u64, bytes: u64) {
        self.rows.fetch_add(rows, Ordering::Relaxed);
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    pub(crate) fn login_failed(&self) {
        self.logins_failed.fetch_add(1, Ordering::Relaxed);
    }
}

/// What a scrape reads: the counters and the server's live state.
#[derive(Debug, Clone)]
pub(crate) struct Scrape {
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) slots: Arc<StatementSlots>,
    pub(crate) exports: Option<Arc<dyn ExportControl>>,
    pub(crate) memory: Arc<dyn MemoryPool>,
}

/// The HTTP service of the metrics listener: `GET /metrics`.
pub(crate) fn router(scrape: Scrape) -> axum::Router {
    axum::Router::new()
        .route("/metrics", axum::routing::get(metrics))
        .with_state(scrape)
}

async fn metrics(State(scrape): State<Scrape>) -> impl IntoResponse {
    (
        [(CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        scrape.render().await,
    )
}

impl Scrape {
    /// The exposition text of every metric.
    async fn render(&self) -> String {
        let mut out = Exposition::default();
        let m = &self.metrics;
        out.family(
            "fhirflight_statements_total",
            "counter",
            "Statements ended, by gRPC code.",
        );
        for (code, count) in m.statements.iter().enumerate() {
            let count = count.load(Ordering::Relaxed);
            let code = Code::from_i32(code as i32);
            // Every code seen, and OK always (so rates start at zero).
            if count > 0 || code == Code::Ok {
                out.sample(
                    "fhirflight_statements_total",
                    &[("code", &code_name(code))],
                    count,
                );
            }
        }
        out.family(
            "fhirflight_statements_running",
            "gauge",
            "Statements planning or streaming.",
        );
        out.sample("fhirflight_statements_running", &[], self.slots.running());
        let counters = [
            (
                "fhirflight_rows_returned_total",
                "Rows sent by DoGet.",
                &m.rows,
            ),
            (
                "fhirflight_bytes_returned_total",
                "Arrow IPC bytes sent by DoGet.",
                &m.bytes,
            ),
            (
                "fhirflight_logins_failed_total",
                "Handshakes with a wrong name or password.",
                &m.logins_failed,
            ),
        ];
        for (name, help, value) in counters {
            out.family(name, "counter", help);
            out.sample(name, &[], value.load(Ordering::Relaxed));
        }
        if let Some(exports) = &self.exports {
            self.render_exports(exports.as_ref(), &mut out).await;
        }
        out.family(
            "fhirflight_memory_pool_reserved_bytes",
            "gauge",
            "Bytes reserved in the session's memory pool.",
        );
        out.sample(
            "fhirflight_memory_pool_reserved_bytes",
            &[],
            self.memory.reserved(),
        );
        if let MemoryLimit::Finite(limit) = self.memory.memory_limit() {
            out.family(
                "fhirflight_memory_pool_limit_bytes",
                "gauge",
                "The session's memory pool limit.",
            );
            out.sample("fhirflight_memory_pool_limit_bytes", &[], limit);
        }
        out.0
    }

    /// Exports by state and snapshot ages; a catalog that cannot be listed is logged and left
    /// out (a scrape never fails for it).
    async fn render_exports(&self, exports: &dyn ExportControl, out: &mut Exposition) {
        const STATES: [ExportState; 5] = [
            ExportState::Running,
            ExportState::Downloading,
            ExportState::Completed,
            ExportState::Failed,
            ExportState::Cancelled,
        ];
        let listed = exports.exports().await.unwrap_or_else(|e| {
            tracing::warn!("metrics: listing exports: {e}");
            Vec::new()
        });
        out.family(
            "fhirflight_exports",
            "gauge",
            "Exports the catalogs list (running and recently finished), by state.",
        );
        for state in STATES {
            let count = listed.iter().filter(|e| e.state() == state).count();
            let name = format!("{state:?}").to_lowercase();
            out.sample("fhirflight_exports", &[("state", &name)], count);
        }
        let snapshots = exports.snapshots().await.unwrap_or_else(|e| {
            tracing::warn!("metrics: listing snapshots: {e}");
            Vec::new()
        });
        out.family(
            "fhirflight_snapshot_age_seconds",
            "gauge",
            "Age of each table's committed snapshot.",
        );
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        for snapshot in snapshots {
            let age = (now_ms - snapshot.created_at_ms).max(0) as f64 / 1000.0;
            let labels = [
                ("catalog", snapshot.catalog.as_str()),
                ("table", snapshot.resource_type.as_str()),
            ];
            out.sample("fhirflight_snapshot_age_seconds", &labels, age);
        }
    }
}

/// The canonical name of a gRPC code (`INVALID_ARGUMENT`), as gRPC tools print it.
fn code_name(code: Code) -> String {
    let camel = format!("{code:?}");
    let mut name = String::with_capacity(camel.len() + 4);
    for (i, c) in camel.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            name.push('_');
        }
        name.push(c.to_ascii_uppercase());
    }
    name
}

/// Prometheus text being written.
#[derive(Default)]
struct Exposition(String);

impl Exposition {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
        self.0.push_str(name);
        if !labels.is_empty() {
            let labels: Vec<String> = labels
                .iter()
                .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
                .collect();
            let _ = write!(self.0, "{{{}}}", labels.join(","));
        }
        let _ = writeln!(self.0, " {value}");
    }
}

/// A label value escaped as the text format asks (`\`, `"` and newlines).
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_named_as_grpc_names_them() {
        assert_eq!(code_name(Code::Ok), "OK");
        assert_eq!(code_name(Code::InvalidArgument), "INVALID_ARGUMENT");
        assert_eq!(code_name(Code::ResourceExhausted), "RESOURCE_EXHAUSTED");
    }

    #[test]
    fn samples_follow_the_text_format() {
        let mut out = Exposition::default();
        out.family("x_total", "counter", "Xs.");
        out.sample("x_total", &[("table", "a\"b\\c\nd")], 3);
        assert_eq!(
            out.0,
            "# HELP x_total Xs.\n# TYPE x_total counter\nx_total{table=\"a\\\"b\\\\c\\nd\"} 3\n"
        );
    }
}
