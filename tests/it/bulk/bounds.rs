//! Bounds on what a server may send (issue "Serving patient data safely", item 4): a gzip bomb
//! as the status response, an endless file, a gzip bomb as a file, and blank lines, each a
//! fault of the demo server. A bound ends the export with an error naming its key, keeps no
//! partial file, and holds the process to the bound, not to what the server sends.

use fhirflight::Error;
use fhirflight::demo::{DemoConfig, Faults};

use super::{demo, downloaded, expected, options, try_export};

/// The error's text, which must name the bound's key.
fn refused(result: fhirflight::Result<fhirflight::bulk::ExportOutcome>) -> String {
    let err = result.unwrap_err();
    assert!(matches!(err, Error::Protocol { .. }), "{err}");
    err.to_string()
}

/// The size of the largest file left in `dir`: a refused body's part is removed, and the
/// parts of downloads stopped beside it (kept for a resume) are within the bounds too.
fn largest_file(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .max()
        .unwrap_or(0)
}

#[tokio::test]
async fn a_gzip_bomb_status_response_stops_at_the_response_bound() {
    let server = demo(DemoConfig::default()).await;
    server.set_faults(Faults {
        bomb_manifest: Some(8 << 20),
        ..Faults::default()
    });
    let dir = tempfile::tempdir().unwrap();
    let options = options().with_max_response_bytes(1 << 20);
    let err = refused(try_export(&server, options, dir.path()).await);
    assert!(
        err.ends_with(": response larger than 1 MiB (limits.max_response_bytes)"),
        "{err}"
    );

    // The same response is valid JSON: within a larger bound the export goes through.
    let dir = tempfile::tempdir().unwrap();
    let options = super::options().with_max_response_bytes(16 << 20);
    let outcome = try_export(&server, options, dir.path()).await.unwrap();
    assert_eq!(downloaded(&outcome, "Patient"), expected("Patient"));
}

#[tokio::test]
async fn an_endless_file_stops_at_the_file_and_export_bounds() {
    let server = demo(DemoConfig::default()).await;
    server.set_faults(Faults {
        endless_files: true,
        ..Faults::default()
    });
    let dir = tempfile::tempdir().unwrap();
    let options = options().with_max_file_bytes(256 << 10);
    let err = refused(try_export(&server, options, dir.path()).await);
    assert!(
        err.ends_with(
            ": the file is larger than 256 KiB (limits.max_file_bytes); the download was stopped"
        ),
        "{err}"
    );
    assert!(largest_file(dir.path()) <= 256 << 10);

    let dir = tempfile::tempdir().unwrap();
    let options = super::options().with_max_export_bytes(512 << 10);
    let err = refused(try_export(&server, options, dir.path()).await);
    assert!(
        err.ends_with(
            ": the export is larger than 512 KiB (limits.max_export_bytes); the download was stopped"
        ),
        "{err}"
    );
}

#[tokio::test]
async fn a_gzip_bomb_file_stops_at_the_ratio_and_plain_gzip_passes() {
    let server = demo(DemoConfig::default()).await;
    // Gzip as servers send it: inflated here, and the same resources.
    let dir = tempfile::tempdir().unwrap();
    let outcome = try_export(&server, options(), dir.path()).await.unwrap();
    assert_eq!(downloaded(&outcome, "Condition"), expected("Condition"));
    let gzip = server.stats().gzip_downloads;
    assert!(gzip >= 2, "{gzip} downloads served gzip");

    server.set_faults(Faults {
        bomb_files: Some(256 << 20),
        ..Faults::default()
    });
    let dir = tempfile::tempdir().unwrap();
    let err = refused(try_export(&server, options(), dir.path()).await);
    assert!(
        err.ends_with(
            ": gzip body inflated more than 200 times its size (limits.max_gzip_ratio); the \
             download was stopped"
        ),
        "{err}"
    );
    assert!(largest_file(dir.path()) <= 2 << 20);
}

#[tokio::test]
async fn blank_lines_are_not_resources() {
    let server = demo(DemoConfig::default()).await;
    server.set_faults(Faults {
        blank_lines: true,
        ..Faults::default()
    });
    let dir = tempfile::tempdir().unwrap();
    // Strict counts: a line count that took blank lines for resources would fail.
    let options = options().with_strict_counts(true);
    let outcome = try_export(&server, options, dir.path()).await.unwrap();
    assert!(outcome.warnings.is_empty(), "{:?}", outcome.warnings);
    let patients = downloaded(&outcome, "Patient");
    assert!(patients.contains("\n \r\n"), "the blank lines were served");
    let resources: Vec<&str> = patients.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(resources.join("\n") + "\n", expected("Patient"));
    let lines: u64 = outcome
        .files
        .iter()
        .filter(|f| f.resource_type == "Patient")
        .map(|f| f.lines)
        .sum();
    assert_eq!(lines, resources.len() as u64);
}
