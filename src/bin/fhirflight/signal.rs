//! Signals: the end of `serve` and `demo-server`, and what an interrupted process leaves.

use fhirflight::{Error, Result};

/// Ctrl-C, or SIGTERM on Unix (a service manager, a test harness). The handlers are installed
/// when this is called, not when the future is first polled: a signal that comes right after
/// the server announces itself stops it gracefully instead of killing it.
pub(crate) fn shutdown_signal() -> Result<impl Future<Output = ()>> {
    let failed = |e: std::io::Error| Error::config_with("waiting for a shutdown signal", e);
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).map_err(failed)?;
        let mut interrupt = signal(SignalKind::interrupt()).map_err(failed)?;
        Ok(async move {
            tokio::select! {
                _ = interrupt.recv() => {}
                _ = term.recv() => {}
            }
        })
    }
    #[cfg(not(unix))]
    {
        let _ = failed;
        Ok(async {
            let _ = tokio::signal::ctrl_c().await;
        })
    }
}

/// Ctrl-C.
pub(crate) async fn ctrl_c() -> Result<()> {
    tokio::signal::ctrl_c()
        .await
        .map_err(|e| Error::config_with("waiting for Ctrl-C", e))
}

/// Installs the Ctrl-C handler of [`tokio::signal::ctrl_c`] now, which no longer ends the
/// process: the interactive shell reads Ctrl-C itself.
pub(crate) fn catch_ctrl_c() {
    use futures::FutureExt as _;
    // The first poll installs the handler for the life of the process.
    let _ = tokio::signal::ctrl_c().now_or_never();
}

/// Stops the snapshot writes in progress and waits (10 s at most) until their writers have
/// removed what they had written: a process that exits on a signal leaves no half-written
/// folder. Exports keep their jobs and downloads for the next run.
pub(crate) async fn stop_snapshot_writes() {
    fhirflight::snapshot::stop_writes();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while fhirflight::snapshot::writes_in_progress() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}
