//! The faults a demo server injects on demand ([`fhirflight::demo::Faults`]), as a client sees
//! them on the wire.

use fhirflight::demo::{DemoConfig, Faults};
use reqwest::Client;
use serde_json::Value;

use super::{download, get, kickoff, manifest_of, ndjson, now, outputs_of, server, start, token};

#[tokio::test]
async fn injected_faults() {
    let server = server().await;
    let token = token(&server).await;
    server.set_faults(Faults {
        kickoff_429: 1,
        kickoff_transient: 1,
        ..Faults::default()
    });
    let throttled = kickoff(&server, &token, "$export?_type=Patient").await;
    assert_eq!(throttled.status(), 429);
    assert_eq!(throttled.headers()["retry-after"], "0");
    let transient = kickoff(&server, &token, "$export?_type=Patient").await;
    assert_eq!(transient.status(), 503);
    assert_eq!(
        transient.json::<Value>().await.unwrap()["issue"][0]["code"],
        "transient"
    );
    let accepted = kickoff(&server, &token, "$export?_type=Patient").await;
    let status_url = accepted.headers()["content-location"]
        .to_str()
        .unwrap()
        .to_owned();

    server.set_faults(Faults {
        status_429: 1,
        status_transient: 1,
        ..Faults::default()
    });
    let client = Client::new();
    assert_eq!(get(&token, &status_url).await.status(), 429);
    let transient = get(&token, &status_url).await;
    assert_eq!(transient.status(), 503);
    assert_eq!(
        transient.json::<Value>().await.unwrap()["issue"][0]["code"],
        "transient"
    );

    server.set_faults(Faults {
        error_file: true,
        malformed_line: true,
        ..Faults::default()
    });
    let manifest = manifest_of(&server, &token, "$export?_type=Patient").await;
    let errors = outputs_of(&token, &manifest, "error").await;
    assert_eq!(
        serde_json::from_str::<Value>(errors.trim_end()).unwrap()["resourceType"],
        "OperationOutcome"
    );
    server.set_faults(Faults {
        break_download_after: Some(100),
        ..Faults::default()
    });
    let file = manifest["output"][0]["url"].as_str().unwrap();
    let broken = get(&token, file).await;
    assert_eq!(broken.status(), 200);
    assert!(broken.bytes().await.is_err(), "the first download breaks");
    let whole = download(&token, file).await;
    let expected = ndjson("Patient");
    assert_eq!(whole.lines().count(), expected.lines().count());
    assert!(serde_json::from_str::<Value>(whole.lines().next().unwrap()).is_err());
    assert_eq!(
        whole.lines().skip(1).collect::<Vec<_>>(),
        expected.lines().skip(1).collect::<Vec<_>>()
    );

    server.set_faults(Faults {
        no_range: true,
        ..Faults::default()
    });
    let ignored = client
        .get(file)
        .bearer_auth(&token)
        .header("Range", "bytes=10-")
        .send()
        .await
        .unwrap();
    assert_eq!(ignored.status(), 200);
    assert!(ignored.headers().get("accept-ranges").is_none());
}

/// The faults of issue 14 as a client sees them: a stuck job with `Retry-After` as an epoch
/// time, expired files once, a count off by one, a failed type, partial manifests.
#[tokio::test]
async fn real_server_faults_on_the_wire() {
    let server = server().await;
    let token = token(&server).await;
    server.set_faults(Faults {
        status_stuck: true,
        retry_after_epoch: Some(5),
        files_gone_once: true,
        ..Faults::default()
    });
    let accepted = kickoff(&server, &token, "$export?_type=Patient").await;
    let status_url = accepted.headers()["content-location"]
        .to_str()
        .unwrap()
        .to_owned();
    for _ in 0..3 {
        let polled = get(&token, &status_url).await;
        assert_eq!(polled.status(), 202);
        assert_eq!(polled.headers()["x-progress"], "in progress");
        let at: u64 = polled.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!((now() + 4..=now() + 5).contains(&at), "{at}");
    }
    server.set_faults(Faults::default());
    // The job's files are made in the background: poll until they are.
    let done = loop {
        let polled = get(&token, &status_url).await;
        if polled.status() != 202 {
            break polled;
        }
    };
    assert_eq!(done.status(), 200);
    let manifest: Value = done.json().await.unwrap();
    let file = manifest["output"][0]["url"].as_str().unwrap();
    assert_eq!(get(&token, file).await.status(), 410, "expired");
    // The fault cleared itself; the next job also lists a count off by one and a failed type.
    server.set_faults(Faults {
        count_off_by_one: true,
        failed_type: Some("Condition".into()),
        ..Faults::default()
    });
    let manifest = manifest_of(&server, &token, "$export?_type=Patient,Condition").await;
    let output = manifest["output"].as_array().unwrap();
    assert!(output.iter().all(|f| f["type"] == "Patient"), "{output:?}");
    assert_eq!(output[0]["count"], ndjson("Patient").lines().count() + 1);
    let errors = outputs_of(&token, &manifest, "error").await;
    let outcome: Value = serde_json::from_str(errors.trim_end()).unwrap();
    assert_eq!(outcome["issue"][0]["expression"][0], "Condition");
    assert_eq!(
        download(&token, output[0]["url"].as_str().unwrap()).await,
        ndjson("Patient")
    );
}

/// With `allowPartialManifests`, in-progress answers carry the manifest of the files ready so
/// far, linking on to released pages only.
#[tokio::test]
async fn partial_manifests_while_the_job_runs() {
    let server = start(
        DemoConfig::default()
            .with_page_size(2)
            .with_manifest_page_size(1)
            .with_status_polls(1),
    )
    .await;
    let token = token(&server).await;
    let accepted = kickoff(
        &server,
        &token,
        "$export?_type=Patient&allowPartialManifests=true",
    )
    .await;
    let status_url = accepted.headers()["content-location"]
        .to_str()
        .unwrap()
        .to_owned();
    // Pages are released one per poll; the job waits for the files of released pages.
    let mut polled = get(&token, &status_url).await;
    while polled.status() == 202 && polled.content_length() == Some(0) {
        polled = get(&token, &status_url).await;
    }
    assert_eq!(polled.status(), 202, "in progress, with a partial manifest");
    let partial: Value = polled.json().await.unwrap();
    assert_eq!(
        partial["output"].as_array().unwrap().len(),
        1,
        "one file a page"
    );
    assert!(partial["output"][0]["count"].is_number());
    let first = partial["output"][0]["url"].as_str().unwrap().to_owned();
    assert_eq!(get(&token, &first).await.status(), 200);
    assert_eq!(server.stats().downloads_while_running, 1);
}
