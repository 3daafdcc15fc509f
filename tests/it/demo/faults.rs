//! The faults a demo server injects on demand ([`fhirflight::demo::Faults`]), as a client sees
//! them on the wire.

use fhirflight::demo::Faults;
use reqwest::Client;
use serde_json::Value;

use super::{download, get, kickoff, manifest_of, ndjson, outputs_of, server, token};

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
