//! The demo Bulk Data server driven by hand with reqwest: SMART Backend Services, kick-off
//! validation, whole exports at every level, gzip, Range, faults, and the generator's determinism.

use std::io::Read;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fhirflight::demo::{DemoConfig, DemoKey, DemoServer, Faults, KickoffLevel, generate};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::{Client, StatusCode};
use serde_json::{Value, json};

use crate::bulk::ids;

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

#[tokio::test]
async fn discovery_documents() {
    let server = server().await;
    let smart: Value = reqwest::get(url(&server, ".well-known/smart-configuration"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        smart["token_endpoint"],
        server.credentials().token_endpoint().as_str()
    );
    assert_eq!(
        smart["token_endpoint_auth_signing_alg_values_supported"],
        json!(["RS384", "ES384"])
    );
    let capability: Value = reqwest::get(url(&server, "metadata"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(capability["resourceType"], "CapabilityStatement");
    let oauth = &capability["rest"][0]["security"]["extension"][0];
    assert_eq!(
        oauth["url"],
        "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris"
    );
    assert_eq!(
        oauth["extension"][0]["valueUri"],
        server.credentials().token_endpoint().as_str()
    );
    let patient = capability["rest"][0]["resource"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["type"] == "Patient")
        .unwrap();
    assert_eq!(patient["operation"][0]["name"], "export");

    let open = start(DemoConfig::default().with_require_auth(false)).await;
    let capability: Value = reqwest::get(url(&open, "metadata"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(capability["rest"][0].get("security").is_none());
    assert_eq!(
        reqwest::get(url(&open, ".well-known/smart-configuration"))
            .await
            .unwrap()
            .status(),
        404
    );
}

#[tokio::test]
async fn tokens_for_rs384_and_es384_assertions() {
    let server = server().await;
    for key in [server.credentials().rs384(), server.credentials().es384()] {
        let response = token_request(
            &server,
            &assertion(&server, key, json!({})),
            "system/Patient.rs system/Observation.read",
        )
        .await;
        assert_eq!(response.status(), 200, "{}", key.alg());
        assert_eq!(response.headers()["cache-control"], "no-store");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["token_type"], "bearer");
        assert_eq!(body["expires_in"], 300);
        assert_eq!(body["scope"], "system/Patient.rs system/Observation.read");
    }
    assert_eq!(server.stats().tokens_issued, 2);
    assert!(!format!("{:?}", server.credentials()).contains("PRIVATE"));
    assert!(!format!("{server:?}").contains("PRIVATE"));

    // Another registered client: its own id, keys given as a public JWKS.
    let jwks = server.credentials().public_jwks();
    let other = start(DemoConfig::default().with_client("second-client", jwks)).await;
    let claims = json!({ "iss": "second-client", "sub": "second-client" });
    let response = token_request(
        &other,
        &assertion(&other, other.credentials().es384(), claims),
        "system/*.rs",
    )
    .await;
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn bad_assertions_rejected() {
    let server = server().await;
    let rs = server.credentials().rs384();
    let reused = assertion(&server, rs, json!({ "jti": "once" }));
    assert_eq!(
        token_request(&server, &reused, "system/*.read")
            .await
            .status(),
        200
    );
    let cases = [
        (
            reused,
            "system/*.read",
            401,
            "invalid_client",
            "already used",
        ),
        (
            assertion(&server, rs, json!({ "aud": "https://elsewhere/token" })),
            "system/*.read",
            401,
            "invalid_client",
            "aud",
        ),
        (
            assertion(&server, rs, json!({ "exp": now() - 120 })),
            "system/*.read",
            401,
            "invalid_client",
            "expired",
        ),
        (
            assertion(&server, rs, json!({ "exp": now() + 3600 })),
            "system/*.read",
            401,
            "invalid_client",
            "at most 300",
        ),
        (
            assertion(&server, rs, json!({ "iss": "someone", "sub": "someone" })),
            "system/*.read",
            401,
            "invalid_client",
            "not registered",
        ),
        (
            assertion(&server, rs, json!({ "sub": "other" })),
            "system/*.read",
            401,
            "invalid_client",
            "sub",
        ),
        (
            assertion(&server, rs, json!({})),
            "user/*.read",
            400,
            "invalid_scope",
            "user/*.read",
        ),
        (
            "not.a.jwt".to_owned(),
            "system/*.read",
            401,
            "invalid_client",
            "not a JWT",
        ),
    ];
    for (assertion, scope, status, error, needle) in cases {
        let response = token_request(&server, &assertion, scope).await;
        assert_eq!(response.status(), status, "{needle}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"], error, "{body}");
        assert!(
            body["error_description"].as_str().unwrap().contains(needle),
            "{body}"
        );
    }
    // Signed by the ES384 key but claiming the RS384 key's kid.
    let es = server.credentials().es384();
    let mut header = Header::new(Algorithm::ES384);
    header.kid = Some(rs.kid().to_owned());
    let claims = json!({ "iss": "fhirflight-demo", "sub": "fhirflight-demo", "aud": server.credentials().token_endpoint().as_str(),
        "exp": now() + 60, "jti": "forged" });
    let forged = jsonwebtoken::encode(
        &header,
        &claims,
        &EncodingKey::from_ec_pem(es.private_pem().as_bytes()).unwrap(),
    )
    .unwrap();
    assert_eq!(
        token_request(&server, &forged, "system/*.read")
            .await
            .status(),
        401
    );

    let wrong_grant = Client::new()
        .post(server.credentials().token_endpoint().clone())
        .form(&[("grant_type", "password"), ("scope", "system/*.read")])
        .send()
        .await
        .unwrap();
    assert_eq!(wrong_grant.status(), 400);
    assert_eq!(
        wrong_grant.json::<Value>().await.unwrap()["error"],
        "unsupported_grant_type"
    );
}

#[tokio::test]
async fn protected_calls_need_a_valid_token() {
    let server = server().await;
    let no_token = Client::new()
        .get(url(&server, "$export"))
        .header("Accept", "application/fhir+json")
        .header("Prefer", "respond-async")
        .send()
        .await
        .unwrap();
    assert_eq!(no_token.status(), 401);
    assert!(
        no_token.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .starts_with("Bearer")
    );
    assert!(outcome_text(no_token).await.contains("bearer token"));
    let bad = kickoff(&server, "made-up", "$export").await;
    assert_eq!(bad.status(), 401);
    assert!(outcome_text(bad).await.contains("not valid"));

    let expiring = start(DemoConfig::default().with_token_lifetime(Duration::ZERO)).await;
    let token = token(&expiring).await;
    let expired = kickoff(&expiring, &token, "$export").await;
    assert_eq!(expired.status(), 401);
    assert!(outcome_text(expired).await.contains("expired"));

    // A token scoped to Patient cannot export Observation.
    let response = token_request(
        &server,
        &assertion(&server, server.credentials().es384(), json!({})),
        "system/Patient.rs",
    )
    .await;
    let patient_only = response.json::<Value>().await.unwrap()["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let forbidden = kickoff(&server, &patient_only, "$export?_type=Observation").await;
    assert_eq!(forbidden.status(), 403);
    let manifest = manifest(
        &patient_only,
        kickoff(&server, &patient_only, "$export").await,
    )
    .await;
    let types: Vec<&str> = manifest["output"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["type"].as_str().unwrap())
        .collect();
    assert_eq!(types, ["Patient"]);

    // Files need the token too.
    let file = manifest["output"][0]["url"].as_str().unwrap();
    assert_eq!(reqwest::get(file).await.unwrap().status(), 401);
    assert_eq!(server.stats().unauthorized, 3);
}

#[tokio::test]
async fn kickoff_validation_errors() {
    let server = server().await;
    let token = token(&server).await;
    let client = Client::new();
    let no_accept = client
        .get(url(&server, "$export"))
        .bearer_auth(&token)
        .header("Prefer", "respond-async")
        .send()
        .await
        .unwrap();
    assert_eq!(no_accept.status(), 400);
    assert!(outcome_text(no_accept).await.contains("Accept"));
    let no_prefer = client
        .get(url(&server, "$export"))
        .bearer_auth(&token)
        .header("Accept", "application/fhir+json")
        .send()
        .await
        .unwrap();
    assert_eq!(no_prefer.status(), 400);
    assert!(outcome_text(no_prefer).await.contains("respond-async"));
    for (query, needle) in [
        ("$export?_count=10", "unknown kick-off parameter `_count`"),
        ("$export?_type=Patiens", "Patiens"),
        ("$export?_since=yesterday", "not a FHIR instant"),
        ("$export?_outputFormat=text/csv", "_outputFormat"),
        (
            "$export?_typeFilter=Observation%3Fvalue-quantity%3D5",
            "value-quantity",
        ),
        ("$export?_elements=name.given", "top-level"),
        ("Patient/$export?patient=Patient/1", "POST"),
        ("Patient/$export?_type=Organization", "compartment"),
    ] {
        let response = kickoff(&server, &token, query).await;
        assert_eq!(response.status(), 400, "{query}");
        let text = outcome_text(response).await;
        assert!(text.contains(needle), "{query}: {text}");
    }
    let put = client.put(url(&server, "$export")).send().await.unwrap();
    assert_eq!(put.status(), 405);
    assert!(outcome_text(put).await.contains("PUT is not supported"));
    let missing_group = kickoff(&server, &token, "Group/nope/$export").await;
    assert_eq!(missing_group.status(), 404);
    let bad_post = client
        .post(url(&server, "$export"))
        .bearer_auth(&token)
        .header("Accept", "application/fhir+json")
        .header("Prefer", "respond-async")
        .header("Content-Type", "application/fhir+json")
        .body(r#"{"resourceType":"Bundle"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(bad_post.status(), 400);
    assert!(outcome_text(bad_post).await.contains("Parameters"));
    let lenient = client
        .get(url(&server, "$export?_count=10"))
        .bearer_auth(&token)
        .header("Accept", "application/fhir+json")
        .header("Prefer", "respond-async, handling=lenient")
        .send()
        .await
        .unwrap();
    assert_eq!(lenient.status(), 202);
    let stats = server.stats();
    assert_eq!(stats.kickoffs.len(), 13);
    assert_eq!(
        stats.kickoffs.iter().filter(|k| k.status == 400).count(),
        11
    );
}

#[tokio::test]
async fn system_export_by_get_matches_the_generator() {
    let server = start(DemoConfig::default().with_page_size(40)).await;
    let token = token(&server).await;
    let response = kickoff(
        &server,
        &token,
        "$export?_type=Observation,Patient&_outputFormat=application/fhir%2Bndjson",
    )
    .await;
    let manifest = manifest(&token, response).await;
    assert_eq!(manifest["requiresAccessToken"], true);
    assert!(manifest["request"].as_str().unwrap().ends_with(
        "/fhir/$export?_type=Observation,Patient&_outputFormat=application/fhir%2Bndjson"
    ));
    assert!(manifest["transactionTime"].as_str().unwrap().ends_with('Z'));
    assert_eq!(manifest["deleted"], json!([]));
    assert_eq!(manifest["error"], json!([]));
    let observations = ndjson("Observation").lines().count();
    assert_eq!(
        manifest["output"].as_array().unwrap().len(),
        observations.div_ceil(40) + 1
    );
    let outputs = outputs(&token, &manifest, "output").await;
    assert_eq!(
        outputs,
        [
            ("Observation".to_owned(), ndjson("Observation")),
            ("Patient".to_owned(), ndjson("Patient"))
        ]
    );

    let stats = server.stats();
    let kickoff = &stats.kickoffs[0];
    assert_eq!(
        (
            kickoff.level.clone(),
            kickoff.method.as_str(),
            kickoff.status
        ),
        (KickoffLevel::System, "GET", 202)
    );
    assert_eq!(kickoff.types, ["Observation", "Patient"]);
    // One 202 at least (the configured poll), then the manifest.
    assert!(stats.status_polls >= 2);
    assert_eq!(
        stats.downloads,
        manifest["output"].as_array().unwrap().len()
    );

    // Without _type: every generated type.
    let everything = manifest_of(&server, &token, "$export").await;
    let mut types: Vec<&str> = everything["output"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["type"].as_str().unwrap())
        .collect();
    types.dedup();
    assert_eq!(types.len(), 14);
}

async fn manifest_of(server: &DemoServer, token: &str, query: &str) -> Value {
    manifest(token, kickoff(server, token, query).await).await
}

async fn post_kickoff(
    server: &DemoServer,
    token: &str,
    path: &str,
    parameters: Value,
) -> reqwest::Response {
    Client::new()
        .post(url(server, path))
        .bearer_auth(token)
        .header("Accept", "application/fhir+json")
        .header("Prefer", "respond-async")
        .header("Content-Type", "application/fhir+json")
        .body(json!({ "resourceType": "Parameters", "parameter": parameters }).to_string())
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn patient_and_group_exports_by_post() {
    let server = server().await;
    let token = token(&server).await;
    let population = generate(SEED, PATIENTS);
    let patients = population.resources("Patient");
    let chosen = [patients[0].id(), patients[2].id()];
    let parameters = json!([
        { "name": "_type", "valueString": "Patient,Condition" },
        { "name": "patient", "valueReference": { "reference": format!("Patient/{}", chosen[0]) } },
        { "name": "patient", "valueReference": { "reference": format!("Patient/{}", chosen[1]) } },
    ]);
    let manifest = manifest(
        &token,
        post_kickoff(&server, &token, "Patient/$export", parameters).await,
    )
    .await;
    assert!(
        manifest["request"]
            .as_str()
            .unwrap()
            .ends_with("/fhir/Patient/$export")
    );
    let outputs = outputs(&token, &manifest, "output").await;
    assert_eq!(ids(&outputs[0].1), chosen);
    let expected_conditions: Vec<&str> = population
        .resources("Condition")
        .iter()
        .filter(|c| chosen.contains(&c.patient_id().unwrap()))
        .map(|c| c.id())
        .collect();
    assert_eq!(ids(&outputs[1].1), expected_conditions);
    let record = &server.stats().kickoffs[0];
    assert_eq!(record.method, "POST");
    assert_eq!(
        record.params.iter().filter(|(n, _)| n == "patient").count(),
        2
    );

    // Group level: the members of Group/all-patients and their compartments, nothing else.
    let group = manifest_of(&server, &token, "Group/all-patients/$export").await;
    let types: Vec<&str> = group["output"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["type"].as_str().unwrap())
        .collect();
    assert!(
        types.contains(&"Encounter")
            && !types.contains(&"Organization")
            && !types.contains(&"Group")
    );
    let seniors = manifest_of(&server, &token, "Group/seniors/$export?_type=Patient").await;
    let senior_ids: Vec<String> = match seniors["output"].as_array().unwrap().first() {
        Some(entry) => ids(&download(&token, entry["url"].as_str().unwrap()).await),
        None => Vec::new(),
    };
    let group_json: Value = serde_json::from_str(population.resources("Group")[2].json()).unwrap();
    let members: Vec<String> = group_json["member"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            m["entity"]["reference"]
                .as_str()
                .unwrap()
                .trim_start_matches("Patient/")
                .to_owned()
        })
        .collect();
    assert_eq!(senior_ids, members);
    assert_eq!(
        server.stats().kickoffs[2].level,
        KickoffLevel::Group("seniors".into())
    );
}

#[tokio::test]
async fn since_sees_upserts_and_deletions() {
    let server = server().await;
    let token = token(&server).await;
    let population = generate(SEED, PATIENTS);
    let first = manifest_of(&server, &token, "$export?_type=Patient").await;
    let since = first["transactionTime"].as_str().unwrap().to_owned();
    let nothing = manifest_of(
        &server,
        &token,
        &format!("$export?_type=Patient,Condition&_since={since}"),
    )
    .await;
    assert_eq!(nothing["output"], json!([]));

    let mut patient: Value =
        serde_json::from_str(population.resources("Patient")[1].json()).unwrap();
    patient["gender"] = "other".into();
    server.upsert(patient);
    let condition = population.resources("Condition")[0].id().to_owned();
    server.delete("Condition", &condition);
    let changed = manifest_of(
        &server,
        &token,
        &format!("$export?_type=Patient,Condition&_since={since}"),
    )
    .await;
    let changed_outputs = outputs(&token, &changed, "output").await;
    assert_eq!(changed_outputs.len(), 1);
    let updated: Value = serde_json::from_str(changed_outputs[0].1.trim_end()).unwrap();
    assert_eq!(updated["gender"], "other");
    assert!(updated["meta"]["lastUpdated"].as_str().unwrap() > since.as_str());
    let deleted = outputs_of(&token, &changed, "deleted").await;
    let bundle: Value = serde_json::from_str(deleted.trim_end()).unwrap();
    assert_eq!(bundle["type"], "transaction");
    assert_eq!(
        bundle["entry"][0]["request"],
        json!({ "method": "DELETE", "url": format!("Condition/{condition}") })
    );
    // Without _since the deletion is simply absent.
    let all = outputs(
        &token,
        &manifest_of(&server, &token, "$export?_type=Condition").await,
        "output",
    )
    .await;
    assert!(!ids(&all[0].1).contains(&condition));
    // _until before the change excludes it.
    let until = manifest_of(
        &server,
        &token,
        &format!("$export?_type=Patient&_since=2000-01-01T00:00:00Z&_until={since}"),
    )
    .await;
    let old = outputs(&token, &until, "output").await;
    assert!(!old[0].1.contains("\"gender\":\"other\""));
}

async fn outputs_of(token: &str, manifest: &Value, section: &str) -> String {
    outputs(token, manifest, section)
        .await
        .into_iter()
        .map(|(_, text)| text)
        .collect()
}

#[tokio::test]
async fn type_filter_and_elements() {
    let server = server().await;
    let token = token(&server).await;
    let query = "$export?_type=Observation,Patient\
        &_typeFilter=Observation%3Fcode%3Dhttp://loinc.org%7C8302-2,29463-7\
        &_typeFilter=Patient%3Fgender%3Dfemale\
        &_elements=Observation.valueQuantity,Patient.gender";
    let manifest = manifest_of(&server, &token, query).await;
    let outputs = outputs(&token, &manifest, "output").await;
    let population = generate(SEED, PATIENTS);
    let heights_and_weights = population
        .resources("Observation")
        .iter()
        .filter(|o| {
            o.json().contains("\"code\":\"8302-2\"") || o.json().contains("\"code\":\"29463-7\"")
        })
        .count();
    let observations: Vec<Value> = outputs[0]
        .1
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(observations.len(), heights_and_weights);
    for observation in &observations {
        let keys: Vec<&str> = observation
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(keys, ["resourceType", "id", "meta", "valueQuantity"]);
        assert_eq!(observation["meta"]["tag"][0]["code"], "SUBSETTED");
    }
    let females = population
        .resources("Patient")
        .iter()
        .filter(|p| p.json().contains("\"gender\":\"female\""))
        .count();
    let patients: Vec<Value> = outputs
        .get(1)
        .map(|o| {
            o.1.lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(patients.len(), females);
    assert!(
        patients
            .iter()
            .all(|p| p["gender"] == "female" && p.get("name").is_none())
    );
}

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

#[tokio::test]
async fn generator_is_deterministic() {
    let a = generate(3, 5);
    let b = generate(3, 5);
    assert_eq!(a, b);
    let c = generate(4, 5);
    for ty in a.resource_types() {
        let (mut x, mut y) = (Vec::new(), Vec::new());
        a.write_ndjson(ty, &mut x).unwrap();
        b.write_ndjson(ty, &mut y).unwrap();
        assert_eq!(x, y, "{ty}");
    }
    assert_ne!(
        a.resources("Patient")[0].json(),
        c.resources("Patient")[0].json()
    );
}

#[tokio::test]
async fn paged_manifests_link_every_file() {
    let server = start(
        DemoConfig::default()
            .with_page_size(5)
            .with_manifest_page_size(3),
    )
    .await;
    let token = token(&server).await;
    server.set_faults(Faults {
        error_file: true,
        ..Faults::default()
    });
    let first = manifest_of(&server, &token, "$export?_type=Patient,Condition").await;
    let mut pages = vec![first];
    while let Some(next) = pages.last().unwrap()["link"][0]["url"].as_str() {
        assert_eq!(pages.last().unwrap()["link"][0]["relation"], "next");
        let page: Value = get(&token, next).await.json().await.unwrap();
        pages.push(page);
    }
    let files = |page: &Value| {
        ["output", "deleted", "error"]
            .iter()
            .map(|s| page[s].as_array().unwrap().len())
            .sum::<usize>()
    };
    let expected_outputs = ndjson("Patient").lines().count().div_ceil(5)
        + ndjson("Condition").lines().count().div_ceil(5);
    let total = expected_outputs + 1;
    assert_eq!(pages.len(), total.div_ceil(3));
    assert!(
        pages
            .iter()
            .all(|p| files(p) <= 3 && p["transactionTime"] == pages[0]["transactionTime"])
    );
    assert_eq!(pages.iter().map(files).sum::<usize>(), total);
    assert_eq!(pages.last().unwrap()["error"].as_array().unwrap().len(), 1);
    let mut merged = pages[0].clone();
    merged["output"] = pages
        .iter()
        .flat_map(|p| p["output"].as_array().unwrap().clone())
        .collect();
    assert_eq!(
        outputs(&token, &merged, "output").await,
        [
            ("Patient".to_owned(), ndjson("Patient")),
            ("Condition".to_owned(), ndjson("Condition"))
        ]
    );
    assert_eq!(server.stats().manifest_pages, pages.len() - 1);

    // Pages need the token, and only pages that exist are served.
    let second = pages[0]["link"][0]["url"].as_str().unwrap();
    assert_eq!(reqwest::get(second).await.unwrap().status(), 401);
    let past_the_end = second.replace("manifest/1", &format!("manifest/{}", pages.len()));
    let missing = get(&token, past_the_end).await;
    assert_eq!(missing.status(), 404);
    assert!(outcome_text(missing).await.contains("no manifest page"));
}
