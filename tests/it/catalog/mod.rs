//! The DataFusion catalog over sources that need no server: an in-memory source that counts
//! its exports, and local folders (including `../shared/data/synthea-100`); then over the demo
//! Bulk Data server ([`demo_server`]).
//!
//! This file holds the shared setup ([`MemorySource`], a few resources, a session over a catalog,
//! the rows of a statement, the scan lines of an `EXPLAIN`); the tests are grouped by topic:
//! [`exports`] (when the catalog exports and when not), [`explain`] (what `EXPLAIN` shows, filters
//! pushed into the export), [`folders`] (local folders, Synthea), [`over_flight`] (the same over
//! Flight SQL), [`eviction`] (filtered snapshots kept within bounds), [`wide`] (`SELECT *` on
//! thousands of columns) and [`demo_server`].

mod demo_server;
mod eviction;
mod explain;
mod exports;
mod folders;
mod over_flight;
mod real_servers;
mod wide;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use datafusion::prelude::SessionContext;
use fhirflight::catalog::{
    self, Capabilities, CatalogOptions, ExportState, FetchOutcome, FetchProgress, FetchRequest,
    FetchedFile, FhirCatalog, FhirSource, Freshness,
};
use serde_json::{Value, json};
use tokio::sync::{Semaphore, watch};

/// A source holding resources in memory; every fetch is recorded. `transactionTime` is a
/// generation number, so `_since` returns what changed after it, and deletions as tombstones.
#[derive(Debug, Default)]
struct MemorySource {
    state: Mutex<MemoryState>,
    /// When set, each fetch waits for a permit (to hold an export in flight).
    gate: Option<Semaphore>,
}

#[derive(Debug, Default)]
struct MemoryState {
    generation: u64,
    /// (type, id) -> (generation of last change, resource or None when deleted)
    resources: BTreeMap<(String, String), (u64, Option<Value>)>,
    fetches: Vec<FetchRequest>,
    /// The next fetch first hands over a file of another export, then starts over (as a Bulk
    /// Data fetch does when its files expired).
    restart_once: bool,
}

impl MemorySource {
    fn gated() -> Self {
        Self {
            gate: Some(Semaphore::new(0)),
            ..Self::default()
        }
    }

    fn upsert(&self, resource: Value) {
        let mut s = self.state.lock().unwrap();
        s.generation += 1;
        let key = (
            resource["resourceType"].as_str().unwrap().to_owned(),
            resource["id"].as_str().unwrap().to_owned(),
        );
        let generation = s.generation;
        s.resources.insert(key, (generation, Some(resource)));
    }

    fn delete(&self, resource_type: &str, id: &str) {
        let mut s = self.state.lock().unwrap();
        s.generation += 1;
        let generation = s.generation;
        s.resources
            .insert((resource_type.into(), id.into()), (generation, None));
    }

    fn fetches(&self) -> Vec<FetchRequest> {
        self.state.lock().unwrap().fetches.clone()
    }
}

#[async_trait]
impl FhirSource for MemorySource {
    fn location(&self) -> &str {
        "memory://test"
    }

    /// Declares its types, and every search of [`catalog::SEARCH_PARAMS`] with `_typeFilter`.
    async fn capabilities(&self) -> fhirflight::Result<Capabilities> {
        let types = ["Condition", "Observation", "Patient"];
        let search_params = types
            .iter()
            .map(|t| {
                let params = catalog::SEARCH_PARAMS
                    .iter()
                    .filter(|(of, _, _)| *of == "*" || of == t)
                    .map(|(_, _, param)| param.to_string());
                (t.to_string(), params.collect())
            })
            .collect();
        Ok(Capabilities {
            resource_types: types.map(String::from).to_vec(),
            search_params,
            type_filter: true,
        })
    }

    async fn fetch(
        &self,
        request: &FetchRequest,
        dir: &Path,
        _progress: &watch::Sender<FetchProgress>,
        ready: &tokio::sync::mpsc::UnboundedSender<FetchedFile>,
    ) -> fhirflight::Result<FetchOutcome> {
        self.state.lock().unwrap().fetches.push(request.clone());
        if let Some(gate) = &self.gate {
            gate.acquire().await.unwrap().forget();
        }
        let mut s = self.state.lock().unwrap();
        let since: u64 = request.since.as_deref().map_or(0, |t| t.parse().unwrap());
        let mut outcome = FetchOutcome {
            request: format!("memory?_type={}", request.types.join(",")),
            transaction_time: s.generation.to_string(),
            restarted: std::mem::take(&mut s.restart_once),
            ..FetchOutcome::default()
        };
        if outcome.restarted {
            for t in &request.types {
                let path = dir.join(format!("{t}.stale.ndjson"));
                let stale = json!({"resourceType": t, "id": "stale"});
                std::fs::write(&path, format!("{stale}\n")).unwrap();
                let resource_type = t.clone();
                ready
                    .send(FetchedFile {
                        resource_type,
                        path,
                    })
                    .unwrap();
            }
        }
        for t in &request.types {
            let path = dir.join(format!("{t}.1.ndjson"));
            let mut text = String::new();
            for ((rt, id), (generation, resource)) in &s.resources {
                if rt != t || *generation <= since {
                    continue;
                }
                match resource {
                    Some(r) => text.push_str(&format!("{r}\n")),
                    None if since > 0 => outcome.deleted.push((rt.clone(), id.clone())),
                    None => {}
                }
            }
            std::fs::write(&path, text).unwrap();
            let file = FetchedFile {
                resource_type: t.clone(),
                path,
            };
            ready.send(file.clone()).unwrap();
            outcome.files.push(file);
        }
        Ok(outcome)
    }
}

fn patient(id: &str, gender: &str) -> Value {
    json!({"resourceType": "Patient", "id": id, "gender": gender, "birthDate": "1970-01-01"})
}

fn condition(id: &str, patient: &str, code: &str) -> Value {
    json!({"resourceType": "Condition", "id": id, "subject": {"reference": format!("Patient/{patient}")},
           "code": {"coding": [{"system": "http://snomed.info/sct", "code": code}]}})
}

fn seeded() -> Arc<MemorySource> {
    let source = Arc::new(MemorySource::default());
    source.upsert(patient("p1", "female"));
    source.upsert(patient("p2", "male"));
    source.upsert(patient("p3", "female"));
    source.upsert(condition("c1", "p1", "44054006"));
    source.upsert(condition("c2", "p1", "38341003"));
    source.upsert(condition("c3", "p2", "44054006"));
    source
}

async fn context(
    source: Arc<dyn FhirSource>,
    cache: &Path,
    freshness: Freshness,
) -> (SessionContext, FhirCatalog) {
    let options = CatalogOptions::default()
        .with_cache_dir(cache)
        .with_freshness(freshness);
    context_with(source, options).await
}

/// The catalog of `source` with `options`, as `src` of a session with the catalog's functions.
async fn context_with(
    source: Arc<dyn FhirSource>,
    options: CatalogOptions,
) -> (SessionContext, FhirCatalog) {
    let fhir = FhirCatalog::try_new(source, options.clone()).await.unwrap();
    let ctx = SessionContext::new_with_config(
        datafusion::prelude::SessionConfig::new().with_information_schema(true),
    );
    ctx.register_catalog("src", Arc::new(fhir.clone()));
    catalog::register_functions(&ctx, options);
    (ctx, fhir)
}

/// Runs `sql` through [`catalog::sql`] and returns the rows as strings, sorted.
async fn rows(ctx: &SessionContext, sql: &str) -> Vec<String> {
    let batches = catalog::sql(ctx, sql)
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    let mut out = Vec::new();
    for batch in &batches {
        out.extend(crate::row_strings(batch));
    }
    out.sort();
    out
}

/// The `FhirScanExec` line of an `EXPLAIN`, and the `DataSourceExec` line below it (operators
/// that keep the order, such as a sort pushed down, may come between).
fn scan_lines(plan: &str) -> (String, String) {
    let mut lines = plan.lines().skip_while(|l| !l.contains("FhirScanExec:"));
    let scan = lines
        .next()
        .unwrap_or_else(|| panic!("no FhirScanExec: {plan}"));
    let mut below = lines.skip_while(|l| !l.contains("DataSourceExec:"));
    let source = below
        .next()
        .unwrap_or_else(|| panic!("no scan below: {plan}"));
    (scan.trim().to_owned(), source.trim().to_owned())
}
