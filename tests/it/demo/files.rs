//! Output files and jobs: gzip when accepted, `Range` requests, and `DELETE` of the status URL
//! cancelling the job and removing its files.

use std::io::Read;

use fhirflight::demo::DemoConfig;
use reqwest::Client;

use super::{
    delete, get, kickoff, manifest, manifest_of, ndjson, outcome_text, server, start, token,
};

#[tokio::test]
async fn gzip_and_range() {
    let server = server().await;
    let token = token(&server).await;
    let manifest = manifest_of(&server, &token, "$export?_type=Patient").await;
    let file = manifest["output"][0]["url"].as_str().unwrap();
    let expected = ndjson("Patient");
    // reqwest without its gzip feature in use: ask explicitly and decode by hand.
    let client = Client::builder().no_gzip().build().unwrap();
    let gz = client
        .get(file)
        .bearer_auth(&token)
        .header("Accept-Encoding", "gzip")
        .send()
        .await
        .unwrap();
    assert_eq!(gz.headers()["content-encoding"], "gzip");
    let compressed = gz.bytes().await.unwrap();
    let mut plain = String::new();
    flate2::read::GzDecoder::new(&compressed[..])
        .read_to_string(&mut plain)
        .unwrap();
    assert_eq!(plain, expected);
    let identity = client.get(file).bearer_auth(&token).send().await.unwrap();
    assert!(identity.headers().get("content-encoding").is_none());
    assert_eq!(
        identity.headers()["content-length"],
        expected.len().to_string().as_str()
    );
    assert_eq!(identity.headers()["accept-ranges"], "bytes");

    let partial = client
        .get(file)
        .bearer_auth(&token)
        .header("Range", "bytes=100-")
        .send()
        .await
        .unwrap();
    assert_eq!(partial.status(), 206);
    assert_eq!(
        partial.headers()["content-range"],
        format!("bytes 100-{}/{}", expected.len() - 1, expected.len()).as_str()
    );
    assert_eq!(partial.text().await.unwrap(), expected[100..]);
    let middle = client
        .get(file)
        .bearer_auth(&token)
        .header("Range", "bytes=10-19")
        .send()
        .await
        .unwrap();
    assert_eq!(middle.text().await.unwrap(), expected[10..20]);
    let beyond = client
        .get(file)
        .bearer_auth(&token)
        .header("Range", format!("bytes={}-", expected.len()))
        .send()
        .await
        .unwrap();
    assert_eq!(beyond.status(), 416);
    assert_eq!(
        beyond.headers()["content-range"],
        format!("bytes */{}", expected.len()).as_str()
    );
}

#[tokio::test]
async fn delete_cancels_and_cleans_up() {
    let server = start(DemoConfig::default().with_status_polls(3)).await;
    let token = token(&server).await;
    let response = kickoff(&server, &token, "$export?_type=Patient").await;
    let status_url = response.headers()["content-location"]
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(get(&token, &status_url).await.status(), 202);
    let deleted = delete(&token, &status_url).await;
    assert_eq!(deleted.status(), 202);
    let gone = get(&token, &status_url).await;
    assert_eq!(gone.status(), 404);
    assert!(outcome_text(gone).await.contains("no export job"));
    assert_eq!(delete(&token, &status_url).await.status(), 404);

    // After completion, DELETE removes the files too.
    let response = kickoff(&server, &token, "$export?_type=Patient").await;
    let status_url = response.headers()["content-location"]
        .to_str()
        .unwrap()
        .to_owned();
    let manifest = manifest(&token, response).await;
    let file = manifest["output"][0]["url"].as_str().unwrap();
    assert_eq!(delete(&token, &status_url).await.status(), 202);
    assert_eq!(get(&token, file).await.status(), 404);
    assert_eq!(server.stats().deletes, 3);
}
