//! Progress of exports and the log, both on standard error: a line per running export on a
//! terminal (drawn by indicatif), the phases as log lines otherwise. Log lines are written with
//! the progress lines lifted ([`LogWriter`]), so they never break one.

use std::io::Write;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use datafusion::prelude::SessionContext;
use fhirflight::bulk::{ExportPhase, ExportProgress};
use fhirflight::catalog::{ExportState, FetchPhase, FetchProgress, FhirCatalog};
use fhirflight::warning::Warning;
use futures::FutureExt;
use futures::future::{BoxFuture, Shared};
use indicatif::{HumanBytes, HumanCount, HumanDuration, MultiProgress, ProgressBar, ProgressStyle};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Every progress line of the process. Its target is standard error, which indicatif leaves
/// undrawn when it is not a terminal; `--quiet` hides it.
pub(crate) fn bars() -> &'static MultiProgress {
    static BARS: OnceLock<MultiProgress> = OnceLock::new();
    BARS.get_or_init(MultiProgress::new)
}

/// Standard error for the log: each line is written with the progress lines lifted and drawn
/// again below it (the log writes a whole event at once).
#[derive(Debug, Clone, Copy)]
pub(crate) struct LogWriter;

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        bars().suspend(|| std::io::stderr().write_all(buf))?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

/// The lines of the running exports of every FHIR catalog of a session (`fhir` and each
/// `[servers.<name>]`), drawn until [`ExportsReport::finish`].
pub(crate) struct ExportsReport {
    stop: CancellationToken,
    task: Shared<BoxFuture<'static, ()>>,
}

impl ExportsReport {
    pub(crate) fn start(ctx: SessionContext) -> Self {
        let stop = CancellationToken::new();
        let task = tokio::spawn(report_exports(ctx, stop.clone()));
        ExportsReport {
            stop,
            task: task.map(drop).boxed().shared(),
        }
    }

    /// Clears the lines and prints the exports' warnings; the next calls wait for the first.
    pub(crate) async fn finish(&self) {
        self.stop.cancel();
        self.task.clone().await
    }
}

/// Shows the running exports of `ctx`'s FHIR catalogs until `stop`, then prints the warnings of
/// those that finished meanwhile (a shell's earlier statements printed theirs).
async fn report_exports(ctx: SessionContext, stop: CancellationToken) {
    let catalogs = FhirCatalog::all_in(&ctx);
    let finished_before: std::collections::HashSet<(String, u64)> = catalogs
        .iter()
        .flat_map(|(name, catalog)| catalog.exports().into_iter().map(move |e| (name, e)))
        .filter(|(_, e)| e.state != ExportState::Running)
        .map(|(name, e)| (name.clone(), e.id))
        .collect();
    let mut lines = std::collections::HashMap::new();
    let mut tick = tokio::time::interval(Duration::from_millis(150));
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tick.tick() => {}
        }
        let running: Vec<_> = catalogs
            .iter()
            .flat_map(|(name, catalog)| catalog.exports().into_iter().map(move |e| (name, e)))
            .filter(|(_, e)| e.state == ExportState::Running)
            .collect();
        lines.retain(|key: &(String, u64), _| {
            running.iter().any(|(n, e)| (*n, e.id) == (&key.0, key.1))
        });
        for (name, export) in running {
            lines
                .entry((name.clone(), export.id))
                .or_insert_with(|| {
                    ExportLine::new(format!("{name} {}", export.request.types.join(",")))
                })
                .update(&export.progress);
        }
    }
    drop(lines);
    for (name, catalog) in &catalogs {
        for export in catalog.exports() {
            if !finished_before.contains(&(name.clone(), export.id)) {
                print_warnings(&export.warnings);
            }
        }
    }
}

/// Shows the progress of `fhirflight export` until its sender is dropped.
pub(crate) async fn report_progress(mut updates: watch::Receiver<ExportProgress>) {
    let mut line = ExportLine::new("export".to_owned());
    while updates.changed().await.is_ok() {
        let progress = FetchProgress::from(&*updates.borrow_and_update());
        line.update(&progress);
    }
}

/// Prints each warning on standard error as `warning: <warning>`, whatever the log level.
pub(crate) fn print_warnings(warnings: &[Warning]) {
    for warning in warnings {
        bars().suspend(|| eprintln!("warning: {warning}"));
    }
}

/// One export's progress line, removed when dropped. Where the lines are not drawn, each new
/// phase is logged instead.
struct ExportLine {
    label: String,
    bar: ProgressBar,
    phase: Option<FetchPhase>,
    /// The counts and time when the phase began: rates and the ETA measure this run's work
    /// only, not the files a resumed export found already there.
    start: Start,
    since: Instant,
}

impl ExportLine {
    fn new(label: String) -> Self {
        let bar = bars().add(ProgressBar::new_spinner().with_style(
            ProgressStyle::with_template("{spinner} {elapsed} {msg}").expect("a valid template"),
        ));
        if !bars().is_hidden() {
            bar.enable_steady_tick(Duration::from_millis(120));
        }
        ExportLine {
            label,
            bar,
            phase: None,
            start: Start::default(),
            since: Instant::now(),
        }
    }

    fn update(&mut self, progress: &FetchProgress) {
        if self.phase != Some(progress.phase) {
            self.phase = Some(progress.phase);
            self.start = Start {
                files: progress.files,
                bytes: progress.bytes,
                rows: progress.rows_converted,
            };
            self.since = Instant::now();
            if bars().is_hidden() {
                tracing::info!("{}: {}", self.label, progress.phase);
            }
        }
        self.bar.set_message(line(
            &self.label,
            progress,
            self.start,
            self.since.elapsed(),
        ));
    }
}

impl Drop for ExportLine {
    fn drop(&mut self) {
        self.bar.finish_and_clear();
        bars().remove(&self.bar);
    }
}

/// Counts when a phase began.
#[derive(Debug, Clone, Copy, Default)]
struct Start {
    files: u64,
    bytes: u64,
    rows: u64,
}

/// The text of an export's line: the phase and what moves in it, `elapsed` after the phase
/// began at `start`. A bar or percentage shows only in the phase it measures (the server's
/// `X-Progress` while waiting, files while downloading), so none outlives its phase. Manifests
/// carry no sizes: bytes are a count and a rate, the ETA comes from files; the conversion counts
/// resources, whose total nobody knows beforehand.
fn line(label: &str, p: &FetchProgress, start: Start, elapsed: Duration) -> String {
    let what = match p.phase {
        FetchPhase::Starting => "starting".to_owned(),
        FetchPhase::Reading => format!("reading {} files, {}", p.files, HumanBytes(p.bytes)),
        FetchPhase::Export(ExportPhase::KickOff) => "kicking off the export".to_owned(),
        FetchPhase::Export(ExportPhase::Waiting) => match p.percent {
            Some(percent) => format!("waiting for the server: {percent:.0}%"),
            None => "waiting for the server".to_owned(),
        },
        FetchPhase::Export(ExportPhase::Downloading) => format!(
            "downloading {}, {}{}{}",
            counted(p.files, p.files_total, "files"),
            HumanBytes(p.bytes),
            per_second(p.bytes.saturating_sub(start.bytes), elapsed)
                .map(|rate| format!(", {}/s", HumanBytes(rate)))
                .unwrap_or_default(),
            eta(p.files, p.files_total, start.files, elapsed),
        ),
        FetchPhase::Export(ExportPhase::CleaningUp) => "deleting the job on the server".to_owned(),
        FetchPhase::Export(ExportPhase::Done) => "downloaded".to_owned(),
        FetchPhase::Converting => format!(
            "converting {} resources{}",
            HumanCount(p.rows_converted),
            per_second(p.rows_converted.saturating_sub(start.rows), elapsed)
                .map(|rate| format!(", {}/s", HumanCount(rate)))
                .unwrap_or_default(),
        ),
    };
    format!("{label}: {what}")
}

/// `[####----] 3/8 files`, or `3 files` while the total is unknown.
fn counted(done: u64, total: u64, what: &str) -> String {
    const WIDTH: u64 = 20;
    if total == 0 {
        return format!("{done} {what}");
    }
    let filled = (done.min(total) * WIDTH / total) as usize;
    format!(
        "[{}{}] {done}/{total} {what}",
        "#".repeat(filled),
        "-".repeat(WIDTH as usize - filled)
    )
}

/// How long a phase runs before its rates and ETA show: sooner they are noise.
const SETTLED: Duration = Duration::from_secs(1);

/// The pace of `moved` over `elapsed`, once the phase has settled.
fn per_second(moved: u64, elapsed: Duration) -> Option<u64> {
    (elapsed >= SETTLED).then(|| (moved as f64 / elapsed.as_secs_f64()) as u64)
}

/// `, ETA 20 seconds` at the pace since the phase began, once something was done in it.
fn eta(done: u64, total: u64, start: u64, elapsed: Duration) -> String {
    let moved = done.saturating_sub(start);
    if moved == 0 || done >= total || elapsed < SETTLED {
        return String::new();
    }
    let left = elapsed.mul_f64((total - done) as f64 / moved as f64);
    format!(", ETA {}", HumanDuration(left))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(phase: FetchPhase) -> FetchProgress {
        FetchProgress {
            phase,
            ..FetchProgress::default()
        }
    }

    #[test]
    fn downloading_shows_files_of_the_manifest_bytes_rate_and_an_eta_from_files() {
        let p = FetchProgress {
            files_total: 8,
            files: 4,
            bytes: 3 << 20,
            // A stale percentage of the waiting phase.
            percent: Some(40.0),
            ..at(FetchPhase::Export(ExportPhase::Downloading))
        };
        // A resumed export found 2 files (1 MiB) already there: 2 files in 10 s, 4 to go.
        let start = Start {
            files: 2,
            bytes: 1 << 20,
            rows: 0,
        };
        assert_eq!(
            line("fhir Patient", &p, start, Duration::from_secs(10)),
            "fhir Patient: downloading [##########----------] 4/8 files, 3.00 MiB, 204.80 KiB/s, ETA 20 seconds"
        );
        // At once: no rate or ETA yet.
        assert_eq!(
            line("export", &p, start, Duration::ZERO),
            "export: downloading [##########----------] 4/8 files, 3.00 MiB"
        );
        // Before the manifest: a count without a bar.
        let early = FetchProgress {
            files_total: 0,
            ..p
        };
        assert_eq!(
            line("export", &early, start, Duration::ZERO),
            "export: downloading 4 files, 3.00 MiB"
        );
    }

    #[test]
    fn a_percentage_shows_only_in_the_phase_it_measures() {
        let waiting = FetchProgress {
            percent: Some(40.0),
            ..at(FetchPhase::Export(ExportPhase::Waiting))
        };
        let start = Start::default();
        assert_eq!(
            line("export", &waiting, start, Duration::ZERO),
            "export: waiting for the server: 40%"
        );
        // The conversion: neither the waiting percentage nor the downloads' bar.
        let converting = FetchProgress {
            percent: Some(40.0),
            files_total: 8,
            files: 8,
            rows_converted: 120_000,
            ..at(FetchPhase::Converting)
        };
        let from = Start {
            rows: 20_000,
            ..start
        };
        assert_eq!(
            line("fhir Condition", &converting, from, Duration::from_secs(4)),
            "fhir Condition: converting 120,000 resources, 25,000/s"
        );
        let reading = FetchProgress {
            percent: Some(100.0),
            files: 3,
            bytes: 2048,
            ..at(FetchPhase::Reading)
        };
        assert_eq!(
            line("fhir Patient", &reading, start, Duration::ZERO),
            "fhir Patient: reading 3 files, 2.00 KiB"
        );
    }
}
