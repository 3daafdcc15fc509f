//! Parts of a job on another origin (presigned storage URLs): files, the status URL and manifest
//! pages there are fetched without the token unless the origin is listed, and an origin that
//! demands the token fails the export saying why.

use std::time::Duration;

use fhirflight::Error;
use fhirflight::bulk::ClientOptions;
use fhirflight::demo::{DemoConfig, DemoServer, Faults, ForeignOrigin, ForeignRequest, presigned};
use url::Url;

use super::{downloaded, expected, foreign_demo, options, try_export};

/// Checks that an export brought everything, and returns the requests that came through the
/// foreign origin, after checking there were some, all to paths starting with `prefix`.
async fn exported_through_foreign(
    server: &DemoServer,
    options: ClientOptions,
    prefix: &str,
) -> Vec<ForeignRequest> {
    let dir = tempfile::tempdir().unwrap();
    let outcome = try_export(server, options, dir.path()).await.unwrap();
    assert_eq!(downloaded(&outcome, "Patient"), expected("Patient"));
    assert_eq!(downloaded(&outcome, "Condition"), expected("Condition"));
    let stats = server.stats();
    // The server's own origin demands the token and refused nothing: it got the token.
    assert_eq!((stats.kickoffs[0].status, stats.unauthorized), (202, 0));
    let seen = stats.foreign_requests;
    assert!(!seen.is_empty(), "nothing came through the foreign origin");
    assert!(seen.iter().all(|r| r.path.starts_with(prefix)), "{seen:?}");
    seen
}

#[tokio::test]
async fn files_on_another_origin_are_fetched_without_the_token() {
    let server = foreign_demo(DemoConfig::default(), |url| ForeignOrigin {
        url,
        status: false,
        pages: false,
        files: true,
        requires_auth: false,
    })
    .await;
    let seen = exported_through_foreign(&server, options(), "/files/").await;
    assert!(
        seen.iter().all(|r| r.method == "GET" && !r.authorization),
        "{seen:?}"
    );
    assert!(server.stats().status_polls > 0 && server.stats().deletes == 1);
}

#[tokio::test]
async fn a_listed_token_origin_gets_the_token() {
    let server = foreign_demo(DemoConfig::default(), |url| ForeignOrigin {
        url,
        status: false,
        pages: false,
        files: true,
        requires_auth: true,
    })
    .await;
    let origin = format!("http://localhost:{}", server.local_addr().port());
    let seen =
        exported_through_foreign(&server, options().with_token_origins([origin]), "/files/").await;
    assert!(seen.iter().all(|r| r.authorization), "{seen:?}");
}

#[tokio::test]
async fn a_status_url_on_another_origin_is_polled_and_deleted_without_the_token() {
    let server = foreign_demo(DemoConfig::default().with_status_polls(2), |url| {
        ForeignOrigin {
            url,
            status: true,
            pages: false,
            files: false,
            requires_auth: false,
        }
    })
    .await;
    let seen = exported_through_foreign(&server, options(), "/jobs/").await;
    let (delete, polls) = seen.split_last().unwrap();
    assert_eq!(delete.method, "DELETE", "{seen:?}");
    assert!(
        polls.len() >= 3 && polls.iter().all(|r| r.method == "GET"),
        "{seen:?}"
    );
    assert!(seen.iter().all(|r| !r.authorization), "{seen:?}");
}

#[tokio::test]
async fn manifest_pages_on_another_origin_are_fetched_without_the_token() {
    let server = foreign_demo(DemoConfig::default(), |url| ForeignOrigin {
        url,
        status: false,
        pages: true,
        files: false,
        requires_auth: false,
    })
    .await;
    let seen = exported_through_foreign(&server, options(), "/jobs/").await;
    assert!(seen.len() > 1, "several pages: {seen:?}");
    assert!(
        seen.iter()
            .all(|r| r.path.contains("/manifest/") && !r.authorization),
        "{seen:?}"
    );
}

#[tokio::test]
async fn another_origin_that_demands_the_token_fails_the_export_saying_why() {
    let server = foreign_demo(DemoConfig::default(), |url| ForeignOrigin {
        url,
        status: false,
        pages: false,
        files: true,
        requires_auth: true,
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let err = try_export(&server, options(), dir.path())
        .await
        .unwrap_err();
    let origin = format!("http://localhost:{}", server.local_addr().port());
    assert!(
        matches!(&err, Error::Http { status: 401, url, .. } if url.starts_with(&format!("{origin}/files/"))),
        "{err}"
    );
    let text = err.to_string();
    assert!(
        text.starts_with(&format!("GET {origin}/files/")) && text.ends_with(&format!(
            ".ndjson: HTTP 401: error (login): this server requires a bearer token (SMART Backend \
             Services) (no access token was sent: {origin} is not the FHIR server's origin; list \
             it in token_origins if it should get the token)"
        )),
        "{text}"
    );
    let seen = server.stats().foreign_requests;
    assert!(seen.iter().all(|r| !r.authorization), "{seen:?}");
}

/// The text of every file in `dir`.
fn stored_text(dir: &std::path::Path) -> String {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap_or_default())
        .collect()
}

#[tokio::test]
async fn presigned_signatures_are_never_stored_and_a_resumed_run_asks_for_them_again() {
    let presigned_files = |url| ForeignOrigin {
        url,
        status: false,
        pages: false,
        files: true,
        requires_auth: false,
    };
    let server = foreign_demo(DemoConfig::default(), presigned_files).await;
    let foreign = Url::parse(&format!("http://localhost:{}/", server.local_addr().port())).unwrap();
    let faults = |download_chunk_delay| Faults {
        foreign_origin: Some(presigned_files(foreign.clone())),
        download_chunk_delay,
        ..Faults::default()
    };
    // A run stopped once the manifest is saved and a download asked for, its downloads slowed
    // down to still be running.
    server.set_faults(faults(Some(Duration::from_secs(5))));
    let dir = tempfile::tempdir().unwrap();
    let saved = dir.path().join(".fhirflight-manifest.json");
    let export = try_export(&server, options(), dir.path());
    tokio::select! {
        _ = export => panic!("the export finished before its manifest was saved"),
        () = async {
            while !saved.exists() || server.stats().foreign_requests.is_empty() {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        } => {}
    }
    // `/files/{job}/{file}`, as the first download asked for it.
    let path = server.stats().foreign_requests[0].path.clone();
    let job = path.split('/').nth(2).unwrap();
    let query = presigned(job);
    let signature = query.split("Signature=").nth(1).unwrap();
    let saved = std::fs::read_to_string(&saved).unwrap();
    assert!(saved.contains("X-Amz-Signature=***"), "{saved}");
    assert!(!stored_text(dir.path()).contains(signature));

    // The next run cannot download from the stored URLs: it asks the job for them again.
    server.set_faults(faults(None));
    let polls = server.stats().status_polls;
    let outcome = try_export(&server, options(), dir.path()).await.unwrap();
    assert_eq!(downloaded(&outcome, "Patient"), expected("Patient"));
    assert_eq!(downloaded(&outcome, "Condition"), expected("Condition"));
    let stats = server.stats();
    assert_eq!(stats.kickoffs.len(), 1, "the job was resumed");
    assert!(stats.status_polls > polls);
    assert!(!stored_text(dir.path()).contains(signature));
    let manifest = std::fs::read_to_string(dir.path().join("manifest.json")).unwrap();
    assert!(manifest.contains("X-Amz-Signature=***"), "{manifest}");
}
