//! Access tokens over an export's life: renewed ahead of expiry, a token refused mid-download
//! replaced once, and open servers that need none.

use std::time::Duration;

use fhirflight::Error;
use fhirflight::bulk::{BulkClient, ClientOptions, ExportLevel, ExportProgress, ExportRequest};
use fhirflight::demo::{DemoConfig, Faults};
use tokio::sync::watch;

use super::{demo, downloaded, expected, export, options, rs384};

#[tokio::test]
async fn short_lived_tokens_are_renewed_ahead_of_expiry() {
    let config = DemoConfig::default()
        .with_token_lifetime(Duration::from_secs(1))
        .with_status_polls(3);
    let server = demo(config.with_retry_after(Duration::from_secs(1))).await;
    // Honour the server's one-second Retry-After, so the export outlives several tokens.
    let options = ClientOptions::default()
        .with_retry_after_bounds(Duration::from_millis(1), Duration::from_secs(1));
    let client = BulkClient::try_new(server.base_url(), Some(rs384(&server)), options)
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (outcome, _) = export(
        &client,
        &ExportRequest::new(ExportLevel::System).with_types(["Patient"]),
        dir.path(),
    )
    .await;
    assert_eq!(downloaded(&outcome, "Patient"), expected("Patient"));
    let stats = server.stats();
    assert!(
        stats.tokens_issued >= 3,
        "renewed: {} tokens",
        stats.tokens_issued
    );
    assert_eq!(stats.unauthorized, 0, "never sent an expired token");
}

/// A token that stops working mid-download (revoked, expired early) is replaced once per request;
/// a second 401 for the same request is final.
#[tokio::test]
async fn a_token_refused_mid_download_is_refreshed_once() {
    let server = demo(DemoConfig::default().with_page_size(5)).await;
    server.set_faults(Faults {
        download_token_revoked: 1,
        ..Faults::default()
    });
    let client = BulkClient::try_new(
        server.base_url(),
        Some(rs384(&server)),
        options().with_parallel_downloads(1),
    )
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let request = ExportRequest::new(ExportLevel::System).with_types(["Patient", "Condition"]);
    let (outcome, _) = export(&client, &request, dir.path()).await;
    for ty in ["Patient", "Condition"] {
        assert_eq!(downloaded(&outcome, ty), expected(ty), "{ty}");
    }
    let stats = server.stats();
    assert_eq!((stats.unauthorized, stats.tokens_issued), (1, 2));
    assert_eq!(stats.downloads, outcome.files.len() + 1);
    assert_eq!(stats.deletes, 1, "the DELETE used the fresh token");

    server.set_faults(Faults {
        download_token_revoked: 2,
        ..Faults::default()
    });
    let dir = tempfile::tempdir().unwrap();
    let (progress, _) = watch::channel(ExportProgress::default());
    let err = client
        .export_to_dir(&request, dir.path(), &progress)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::Http { status: 401, message, .. } if message.contains("not valid")),
        "{err}"
    );
    // A 401 is final: the job is deleted (the DELETE refreshing the token once more).
    let stats = server.stats();
    assert_eq!((stats.unauthorized, stats.tokens_issued), (4, 4));
    assert_eq!(
        stats.deletes, 3,
        "the first, then one refused and one with a fresh token"
    );
    assert!(!dir.path().join(".fhirflight-job.json").exists());
}

#[tokio::test]
async fn open_servers_need_no_auth() {
    let server = demo(DemoConfig::default().with_require_auth(false)).await;
    let client = BulkClient::try_new(server.base_url(), None, options())
        .await
        .unwrap();
    let types = client.resource_types().await.unwrap();
    assert!(
        types.iter().any(|t| t == "Patient") && types.iter().any(|t| t == "Observation"),
        "{types:?}"
    );
    let dir = tempfile::tempdir().unwrap();
    let (outcome, _) = export(
        &client,
        &ExportRequest::new(ExportLevel::System).with_types(["Condition"]),
        dir.path(),
    )
    .await;
    assert!(!outcome.manifest.requires_access_token);
    assert_eq!(downloaded(&outcome, "Condition"), expected("Condition"));
    assert_eq!(server.stats().token_requests, 0);
}
