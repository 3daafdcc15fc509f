//! [`ExportGate`]: who may start exports upstream, decided by the caller of a statement.
//!
//! The catalog knows nothing of users. A caller that does (the Flight SQL server, per user)
//! runs a statement's future inside [`with_export_gate`], and the catalog asks that gate at the
//! one place where an export is kicked off, under the same lock that makes exports shared: a
//! statement answered from fresh snapshots, or one that joins an export already running, never
//! asks. Without a gate, every export may start.

use std::fmt;
use std::future::Future;
use std::sync::Arc;

use crate::Result;

/// Decides whether the exports a statement needs may start upstream.
///
/// ```
/// use std::sync::Arc;
/// use fhirflight::catalog::{ExportGate, with_export_gate};
/// use fhirflight::{Error, Result};
///
/// /// Never lets an export start: statements read what the snapshots hold.
/// #[derive(Debug)]
/// struct SnapshotsOnly;
///
/// impl ExportGate for SnapshotsOnly {
///     fn admit(&self, exports: usize) -> Result<()> {
///         Err(Error::ResourceExhausted {
///             message: format!("{exports} export(s) refused: this session reads snapshots only"),
///         })
///     }
/// }
///
/// # async fn run(ctx: datafusion::prelude::SessionContext) -> datafusion::error::Result<()> {
/// let gate: Arc<dyn ExportGate> = Arc::new(SnapshotsOnly);
/// let df = with_export_gate(gate, fhirflight::catalog::sql(&ctx, "SELECT * FROM Patient")).await?;
/// # Ok(()) }
/// ```
pub trait ExportGate: Send + Sync + fmt::Debug {
    /// Called once before `exports` (one or more) exports start for a statement, a refresh or
    /// a table function, all or none: `Ok` lets them start (count them now), an error refuses
    /// them and fails the statement with it ([`Error::ResourceExhausted`](crate::Error) says
    /// "later").
    fn admit(&self, exports: usize) -> Result<()>;
}

tokio::task_local! {
    static GATE: Arc<dyn ExportGate>;
}

/// Runs `statement` (a [`sql`](super::sql) call, a refresh, a whole Flight call) with `gate`
/// asked before any export it would start. Table functions that export when executed
/// (`fhir_refresh`) keep the gate of the future that made their stream.
pub async fn with_export_gate<F: Future>(gate: Arc<dyn ExportGate>, statement: F) -> F::Output {
    GATE.scope(gate, statement).await
}

/// The gate of the running statement, if its caller set one.
pub(crate) fn current() -> Option<Arc<dyn ExportGate>> {
    GATE.try_with(Arc::clone).ok()
}

/// Asks the running statement's gate, if any, to let `exports` exports start.
pub(super) fn admit(exports: usize) -> Result<()> {
    match current() {
        Some(gate) if exports > 0 => gate.admit(exports),
        _ => Ok(()),
    }
}

/// `future` under `gate` when there is one (to carry a statement's gate into a later task).
pub(crate) async fn carried<F: Future>(gate: Option<Arc<dyn ExportGate>>, future: F) -> F::Output {
    match gate {
        Some(gate) => with_export_gate(gate, future).await,
        None => future.await,
    }
}
