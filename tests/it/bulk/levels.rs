//! Exports at every level (system, Patient, Group), by GET and by POST, with RS384 and ES384
//! keys: every parameter reaches the server, and `_since` exports bring changes and deletions.

use fhirflight::bulk::{ExportLevel, ExportPhase, ExportRequest, KickoffMethod};
use fhirflight::demo::{DemoConfig, KickoffLevel, generate};
use serde_json::{Value, json};

use super::{PATIENTS, SEED, client, demo, downloaded, es384_jwks, expected, export, ids, rs384};

#[tokio::test]
async fn system_export_by_get_with_rs384_downloads_everything_and_cleans_up() {
    let server = demo(DemoConfig::default().with_page_size(7).with_status_polls(2)).await;
    let client = client(&server, rs384(&server)).await;
    let dir = tempfile::tempdir().unwrap();
    let request =
        ExportRequest::new(ExportLevel::System).with_types(["Patient", "Observation", "Condition"]);
    let (outcome, progress) = export(&client, &request, dir.path()).await;

    for ty in ["Patient", "Observation", "Condition"] {
        assert_eq!(
            downloaded(&outcome, ty),
            expected(ty),
            "{ty}: the NDJSON exactly as served"
        );
    }
    // Files are named by type and index, match the manifest's counts, and are split at the page size.
    let observations: Vec<_> = outcome
        .files
        .iter()
        .filter(|f| f.resource_type == "Observation")
        .collect();
    assert!(observations.len() > 1);
    for (n, file) in observations.iter().enumerate() {
        assert_eq!(
            file.path,
            dir.path().join(format!("Observation.{n}.ndjson"))
        );
        assert!(file.lines <= 7 && file.bytes == std::fs::metadata(&file.path).unwrap().len());
    }
    for (file, listed) in outcome.files.iter().zip(&outcome.manifest.output) {
        assert_eq!(Some(file.lines), listed.count);
    }
    assert!(outcome.manifest.requires_access_token);
    assert!(outcome.deleted.is_empty() && outcome.warnings.is_empty());

    let saved: Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("manifest.json")).unwrap()).unwrap();
    assert_eq!(
        saved["transactionTime"],
        outcome.manifest.transaction_time.as_str()
    );
    assert!(
        !dir.path().join(".fhirflight-job.json").exists(),
        "job state removed after the DELETE"
    );
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "no temporary files: {leftovers:?}");

    assert_eq!(progress.phase, ExportPhase::Done);
    assert_eq!(
        (progress.files_done, progress.files_total),
        (outcome.files.len(), outcome.files.len())
    );
    assert_eq!(
        progress.bytes_downloaded,
        outcome.files.iter().map(|f| f.bytes).sum::<u64>()
    );
    assert_eq!(
        progress.status_polls, 2,
        "two 'in progress' answers before the manifest"
    );
    assert!(progress.server_progress.is_some(), "X-Progress reported");

    let stats = server.stats();
    assert_eq!(stats.kickoffs.len(), 1);
    assert_eq!(
        (
            stats.kickoffs[0].method.as_str(),
            stats.kickoffs[0].level.clone()
        ),
        ("GET", KickoffLevel::System)
    );
    assert_eq!(
        stats.kickoffs[0].types,
        ["Patient", "Observation", "Condition"]
    );
    assert_eq!(stats.downloads, outcome.files.len());
    assert_eq!(
        stats.gzip_downloads, stats.downloads,
        "gzip asked for and decoded"
    );
    assert_eq!(stats.deletes, 1);
    assert_eq!(stats.tokens_issued, 1, "one token shared by every request");
    assert_eq!(stats.unauthorized, 0);
}

#[tokio::test]
async fn patient_and_group_exports_by_post_with_es384_from_a_jwks() {
    let server = demo(DemoConfig::default()).await;
    let client = client(&server, es384_jwks(&server)).await;
    let group = generate(SEED, PATIENTS).group_ids()[0].to_string();

    let patient = ExportRequest::new(ExportLevel::Patient)
        .with_types(["Patient"])
        .with_method(KickoffMethod::Post);
    let dir = tempfile::tempdir().unwrap();
    let (outcome, _) = export(&client, &patient, dir.path()).await;
    assert_eq!(downloaded(&outcome, "Patient"), expected("Patient"));

    let by_group = ExportRequest::new(ExportLevel::Group(group.clone())).with_types(["Patient"]);
    let dir = tempfile::tempdir().unwrap();
    let (outcome, _) = export(
        &client,
        &by_group.clone().with_method(KickoffMethod::Post),
        dir.path(),
    )
    .await;
    let members = ids(&downloaded(&outcome, "Patient"));
    assert!(!members.is_empty() && members.len() <= PATIENTS);
    let dir = tempfile::tempdir().unwrap();
    let (by_get, _) = export(&client, &by_group, dir.path()).await;
    assert_eq!(
        ids(&downloaded(&by_get, "Patient")),
        members,
        "GET and POST agree"
    );

    let stats = server.stats();
    let seen: Vec<(KickoffLevel, &str)> = stats
        .kickoffs
        .iter()
        .map(|k| (k.level.clone(), k.method.as_str()))
        .collect();
    assert_eq!(
        seen,
        [
            (KickoffLevel::Patient, "POST"),
            (KickoffLevel::Group(group.clone()), "POST"),
            (KickoffLevel::Group(group), "GET")
        ]
    );
    assert_eq!(stats.deletes, 3);
}

#[tokio::test]
async fn every_parameter_reaches_the_server_by_get_and_by_post() {
    let server = demo(DemoConfig::default()).await;
    let client = client(&server, rs384(&server)).await;
    let request = ExportRequest::new(ExportLevel::Patient)
        .with_types(["Patient", "Observation"])
        .with_since("2000-01-01T00:00:00Z")
        .with_until("2100-01-01T00:00:00Z")
        .with_type_filters(["Observation?status=final", "Patient?gender=female"])
        .with_elements(["id", "status"])
        .with_include_associated_data(["LatestProvenanceResources"])
        .with_output_format("application/fhir+ndjson");
    for method in [KickoffMethod::Get, KickoffMethod::Post] {
        let dir = tempfile::tempdir().unwrap();
        let (outcome, _) = export(&client, &request.clone().with_method(method), dir.path()).await;
        let observations = downloaded(&outcome, "Observation");
        assert!(!observations.is_empty());
        for line in observations.lines() {
            let resource: Value = serde_json::from_str(line).unwrap();
            assert_eq!(resource["status"], "final", "_typeFilter applied");
            assert!(resource.get("code").is_none(), "_elements applied");
        }
        let patients = downloaded(&outcome, "Patient");
        assert!(
            !patients.is_empty() && patients.lines().all(|l| !l.contains("\"gender\":\"male\"")),
            "the second _typeFilter applied"
        );
    }
    let stats = server.stats();
    let expected: Vec<(String, String)> = [
        ("_outputFormat", "application/fhir+ndjson"),
        ("_type", "Patient,Observation"),
        ("_since", "2000-01-01T00:00:00Z"),
        ("_until", "2100-01-01T00:00:00Z"),
        ("_elements", "id,status"),
        ("_typeFilter", "Observation?status=final"),
        ("_typeFilter", "Patient?gender=female"),
        ("includeAssociatedData", "LatestProvenanceResources"),
    ]
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .into();
    for (kickoff, method) in stats.kickoffs.iter().zip(["GET", "POST"]) {
        assert_eq!(kickoff.method, method);
        assert_eq!(kickoff.params, expected, "{method}");
    }
}

#[tokio::test]
async fn patient_parameter_is_sent_by_post() {
    let server = demo(DemoConfig::default()).await;
    let client = client(&server, rs384(&server)).await;
    let population = generate(SEED, PATIENTS);
    let first = population.resources("Patient")[0].id().to_string();
    let request = ExportRequest::new(ExportLevel::Patient)
        .with_types(["Patient"])
        .with_patients([first.clone()]);
    let dir = tempfile::tempdir().unwrap();
    let (outcome, _) = export(&client, &request, dir.path()).await;
    assert_eq!(ids(&downloaded(&outcome, "Patient")), [first.as_str()]);
    let kickoff = &server.stats().kickoffs[0];
    assert_eq!(kickoff.method, "POST");
    assert!(
        kickoff
            .params
            .contains(&("patient".to_string(), format!("Patient/{first}"))),
        "{:?}",
        kickoff.params
    );
}

#[tokio::test]
async fn since_exports_report_changes_and_deletions() {
    let server = demo(DemoConfig::default()).await;
    let client = client(&server, rs384(&server)).await;
    let request = ExportRequest::new(ExportLevel::System).with_types(["Patient"]);
    let dir = tempfile::tempdir().unwrap();
    let (full, _) = export(&client, &request, dir.path()).await;
    let patients = ids(&downloaded(&full, "Patient"));

    server.delete("Patient", &patients[0]);
    server.upsert(json!({"resourceType": "Patient", "id": patients[1], "active": false}));
    let since = request
        .clone()
        .with_since(full.manifest.transaction_time.clone());
    let (delta, _) = export(&client, &since, dir.path()).await;
    assert_eq!(ids(&downloaded(&delta, "Patient")), [patients[1].clone()]);
    let deleted: Vec<(&str, &str)> = delta
        .deleted
        .iter()
        .map(|d| (d.resource_type.as_str(), d.id.as_str()))
        .collect();
    assert_eq!(deleted, [("Patient", patients[0].as_str())]);
    assert_eq!(delta.manifest.deleted.len(), 1);
    assert!(dir.path().join("deleted.0.ndjson").exists());
    // The earlier export's files were cleared: only the delta is in the folder.
    assert!(!dir.path().join("Patient.1.ndjson").exists());
}
