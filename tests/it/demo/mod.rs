//! The demo Bulk Data server driven by hand with reqwest: SMART Backend Services, kick-off
//! validation, whole exports at every level, gzip, Range, faults, and the generator's determinism.
//!
//! This file holds the client side of the protocol, written out by hand (client assertions,
//! token requests, kick-offs, polling to the manifest, downloads); the tests are grouped as the
//! server's files are: [`smart`] (discovery, tokens, protected calls), [`exports`] (kick-off
//! validation, exports at every level, `_since`, `_typeFilter`, `_elements`, paged manifests,
//! the generator), [`files`] (gzip, `Range`, `DELETE`) and [`faults`] (injected faults).

mod exports;
mod faults;
mod files;
mod smart;

use std::time::{SystemTime, UNIX_EPOCH};

use fhirflight::demo::{DemoConfig, DemoKey, DemoServer, generate};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::{Client, StatusCode};
use serde_json::{Value, json};

const SEED: u64 = 11;
const PATIENTS: usize = 6;

async fn server() -> DemoServer {
    start(DemoConfig::default()).await
}

async fn start(config: DemoConfig) -> DemoServer {
    DemoServer::start(config.with_seed(SEED).with_patients(PATIENTS))
        .await
        .unwrap()
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A client assertion; `claims` overrides the standard claims.
fn assertion(server: &DemoServer, key: &DemoKey, claims: Value) -> String {
    let creds = server.credentials();
    let (alg, encoding) = match key.alg() {
        "RS384" => (
            Algorithm::RS384,
            EncodingKey::from_rsa_pem(key.private_pem().as_bytes()).unwrap(),
        ),
        _ => (
            Algorithm::ES384,
            EncodingKey::from_ec_pem(key.private_pem().as_bytes()).unwrap(),
        ),
    };
    let mut header = Header::new(alg);
    header.kid = Some(key.kid().to_owned());
    let mut body = json!({ "iss": creds.client_id(), "sub": creds.client_id(), "aud": creds.token_endpoint().as_str(),
        "exp": now() + 240, "jti": uuid::Uuid::new_v4().to_string() });
    body.as_object_mut()
        .unwrap()
        .extend(claims.as_object().unwrap().clone());
    jsonwebtoken::encode(&header, &body, &encoding).unwrap()
}

async fn token_request(server: &DemoServer, assertion: &str, scope: &str) -> reqwest::Response {
    Client::new()
        .post(server.credentials().token_endpoint().clone())
        .form(&[
            ("grant_type", "client_credentials"),
            (
                "client_assertion_type",
                "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            ),
            ("client_assertion", assertion),
            ("scope", scope),
        ])
        .send()
        .await
        .unwrap()
}

async fn token(server: &DemoServer) -> String {
    let response = token_request(
        server,
        &assertion(server, server.credentials().rs384(), json!({})),
        "system/*.read",
    )
    .await;
    assert_eq!(response.status(), 200);
    response.json::<Value>().await.unwrap()["access_token"]
        .as_str()
        .unwrap()
        .to_owned()
}

fn url(server: &DemoServer, path: &str) -> String {
    format!("{}/{path}", server.base_url())
}

/// A GET kick-off with the required headers.
async fn kickoff(server: &DemoServer, token: &str, path_and_query: &str) -> reqwest::Response {
    Client::new()
        .get(url(server, path_and_query))
        .bearer_auth(token)
        .header("Accept", "application/fhir+json")
        .header("Prefer", "respond-async")
        .send()
        .await
        .unwrap()
}

/// `GET url` with the bearer token.
async fn get(token: &str, url: impl reqwest::IntoUrl) -> reqwest::Response {
    Client::new()
        .get(url)
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
}

/// `DELETE url` with the bearer token.
async fn delete(token: &str, url: impl reqwest::IntoUrl) -> reqwest::Response {
    Client::new()
        .delete(url)
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
}

async fn outcome_text(response: reqwest::Response) -> String {
    assert_eq!(response.headers()["content-type"], "application/fhir+json");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["resourceType"], "OperationOutcome");
    body["issue"][0]["diagnostics"].as_str().unwrap().to_owned()
}

/// Polls a status URL to its manifest, checking the in-progress answers on the way.
async fn manifest(token: &str, kickoff: reqwest::Response) -> Value {
    assert_eq!(kickoff.status(), StatusCode::ACCEPTED);
    let status_url = kickoff.headers()["content-location"]
        .to_str()
        .unwrap()
        .to_owned();
    for _ in 0..1000 {
        let response = get(token, &status_url).await;
        match response.status() {
            StatusCode::ACCEPTED => {
                assert_eq!(response.headers()["retry-after"], "0");
                assert!(
                    response.headers()["x-progress"]
                        .to_str()
                        .unwrap()
                        .ends_with("% complete")
                );
                tokio::task::yield_now().await;
            }
            StatusCode::OK => return response.json().await.unwrap(),
            other => panic!(
                "status poll answered {other}: {}",
                response.text().await.unwrap()
            ),
        }
    }
    panic!("export never finished");
}

async fn download(token: &str, url: &str) -> String {
    let response = get(token, url).await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"],
        "application/fhir+ndjson"
    );
    response.text().await.unwrap()
}

/// Every output of a manifest, concatenated per type in manifest order.
async fn outputs(token: &str, manifest: &Value, section: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for entry in manifest[section].as_array().unwrap() {
        let text = download(token, entry["url"].as_str().unwrap()).await;
        assert_eq!(
            text.lines().count() as u64,
            entry["count"].as_u64().unwrap()
        );
        let ty = entry["type"].as_str().unwrap();
        match out.last_mut() {
            Some((last, body)) if last == ty => body.push_str(&text),
            _ => out.push((ty.to_owned(), text)),
        }
    }
    out
}

fn ndjson(ty: &str) -> String {
    let mut out = Vec::new();
    generate(SEED, PATIENTS).write_ndjson(ty, &mut out).unwrap();
    String::from_utf8(out).unwrap()
}

async fn manifest_of(server: &DemoServer, token: &str, query: &str) -> Value {
    manifest(token, kickoff(server, token, query).await).await
}

async fn outputs_of(token: &str, manifest: &Value, section: &str) -> String {
    outputs(token, manifest, section)
        .await
        .into_iter()
        .map(|(_, text)| text)
        .collect()
}
