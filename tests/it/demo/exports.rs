//! `$export` on the demo server: kick-off validation, exports at every level by GET and POST
//! matching the generator, `_since` with upserts and deletions, `_typeFilter` and `_elements`,
//! paged manifests that link every file, and the generator's determinism.

use fhirflight::demo::{DemoConfig, DemoServer, Faults, KickoffLevel, generate};
use reqwest::Client;
use serde_json::{Value, json};

use crate::bulk::ids;

use super::{
    PATIENTS, SEED, download, get, kickoff, manifest, manifest_of, ndjson, outcome_text, outputs,
    outputs_of, server, start, token, url,
};

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
