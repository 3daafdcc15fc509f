//! A deterministic synthetic FHIR R4 population shaped like Synthea output.
//!
//! Every patient gets a life of encounters (wellness visits, symptoms, emergencies, admissions), and
//! each encounter the resources Synthea would write for it: vital signs and labs, conditions,
//! prescriptions, procedures, immunizations, a Claim and a wide ExplanationOfBenefit. A patient's
//! record comes from its own random stream seeded by `(seed, patient number)`, so the same seed and
//! count give byte-identical NDJSON on every machine. Resources are kept as serialized NDJSON lines:
//! a gigabyte population costs about a gigabyte of memory, not a tree of `Value`s.
//!
//! [`generate_with`] adds what a default population leaves out: a wide Provenance per patient
//! ([`GenerateOptions::with_provenance_targets`]) for testing and benchmarking wide tables.
//!
//! This file runs a population ([`generate`], [`shared`]); the rest is split by job:
//!
//! - [`population`]: what comes out ([`Population`], [`Resource`]) and the builder that
//!   serialises each resource once, as it is made;
//! - [`rng`]: the random stream (fixed forever, so output never changes with a dependency);
//! - [`patient`]: one patient's life: the Patient, allergies, and the encounters in time order;
//! - [`clinical`]: what an encounter writes (Encounter, Condition, MedicationRequest,
//!   Immunization, Procedure, Observation, DiagnosticReport);
//! - [`billing`]: the Claim and ExplanationOfBenefit of an encounter;
//! - [`administrative`]: Organizations, Practitioners and the Groups of patients;
//! - [`datatypes`]: FHIR datatypes (Coding, CodeableConcept, Reference, Money, dates) and code
//!   systems; [`tables`]: the names, places, conditions and encounter kinds drawn from.

mod administrative;
mod billing;
mod clinical;
mod datatypes;
mod patient;
mod population;
mod rng;
mod tables;

use std::sync::{Arc, Mutex, Weak};

pub use population::{Population, Resource};

use administrative::{Cohorts, Provider};
use patient::{PatientLife, provenance};
use population::Builder;
use rng::Rng;

/// The resource types the generator writes, in export order.
pub(crate) const GENERATED_TYPES: [&str; 14] = [
    "Patient",
    "Encounter",
    "Condition",
    "Observation",
    "MedicationRequest",
    "Procedure",
    "Immunization",
    "AllergyIntolerance",
    "DiagnosticReport",
    "Claim",
    "ExplanationOfBenefit",
    "Organization",
    "Practitioner",
    "Group",
];

/// The most targets [`GenerateOptions::with_provenance_targets`] takes: the catalog's default
/// width bound (50,000 columns) is near.
pub const MAX_PROVENANCE_TARGETS: usize = 40_000;

/// What a population holds besides the records of [`generate`] (its default).
///
/// ```
/// use fhirflight::demo::{GenerateOptions, generate_with};
///
/// let population = generate_with(7, 2, GenerateOptions::default().with_provenance_targets(1_000));
/// assert_eq!(population.resources("Provenance").len(), 2);
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct GenerateOptions {
    provenance_targets: usize,
}

impl GenerateOptions {
    /// Adds one Provenance per patient, as Synthea writes one per record, with `targets` targets
    /// (at most [`MAX_PROVENANCE_TARGETS`]): references to the patient's resources in export
    /// order, a record with fewer resources targeted again from its start. Each target is a
    /// flattened column (`target_0_reference`, ...), so the type is as wide as real ones
    /// (Synthea's Provenance has thousands). 0, the default, writes no Provenance.
    pub fn with_provenance_targets(self, targets: usize) -> Self {
        Self {
            provenance_targets: targets.min(MAX_PROVENANCE_TARGETS),
        }
    }
}

/// "Now" of every generated population: clinical history ends here and `meta.lastUpdated` values lie
/// before it, so output never depends on the wall clock.
const POPULATION_END_MS: i64 = 1_735_689_600_000; // 2025-01-01T00:00:00Z
const DAY_MS: i64 = 86_400_000;
const YEAR_MS: i64 = 365 * DAY_MS + DAY_MS / 4;

/// Generates `patients` patients and everything around them from `seed`.
///
/// Same arguments, same bytes. Organizations, Practitioners and three Groups (`all-patients`,
/// `diabetes`, `seniors`) come with them. About 0.4 MB of NDJSON per patient.
pub fn generate(seed: u64, patients: usize) -> Population {
    generate_with(seed, patients, GenerateOptions::default())
}

/// [`generate`] with what `options` adds; the default options give the same bytes as [`generate`].
pub fn generate_with(seed: u64, patients: usize, options: GenerateOptions) -> Population {
    let targets = options.provenance_targets;
    let extra: &[&str] = if targets > 0 { &["Provenance"] } else { &[] };
    let mut out = Builder::new(extra);
    let mut rng = Rng::new(seed);
    let providers: Vec<Provider> = (0..3 + patients / 8)
        .map(|i| Provider::new(&mut rng, i, &mut out))
        .collect();
    // Patients are independent: contiguous ranges on all cores, joined in patient order, give the
    // same bytes as one thread.
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let per_thread = patients.div_ceil(threads).max(1);
    let parts: Vec<(Builder, Cohorts)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..patients)
            .step_by(per_thread)
            .map(|first| {
                let providers = &providers;
                scope.spawn(move || {
                    let (mut out, mut cohorts) = (Builder::new(extra), Cohorts::default());
                    for n in first..(first + per_thread).min(patients) {
                        let mut rng = Rng::for_patient(seed, n);
                        let provider = &providers[rng.below(providers.len())];
                        let written: Vec<usize> = out.types.iter().map(|(_, r)| r.len()).collect();
                        PatientLife::generate(&mut rng, provider, &mut out, &mut cohorts);
                        if targets > 0 {
                            provenance(&mut rng, provider, &mut out, &written, targets);
                        }
                    }
                    (out, cohorts)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("generator thread"))
            .collect()
    });
    let mut cohorts = Cohorts::default();
    for (part, part_cohorts) in parts {
        for ((_, all), (_, more)) in out.types.iter_mut().zip(part.types) {
            all.extend(more);
        }
        cohorts.all.extend(part_cohorts.all);
        cohorts.diabetes.extend(part_cohorts.diabetes);
        cohorts.seniors.extend(part_cohorts.seniors);
    }
    cohorts.write(&mut out);
    Population { types: out.types }
}

/// [`generate`], shared by everyone in the process asking for the same population while it lives:
/// tests start many servers over the same data.
pub(crate) fn shared(seed: u64, patients: usize) -> Arc<Population> {
    type Cache = Mutex<Vec<((u64, usize), Weak<Population>)>>;
    static CACHE: Cache = Mutex::new(Vec::new());
    let mut cache = CACHE.lock().expect("population cache");
    cache.retain(|(_, weak)| weak.strong_count() > 0);
    if let Some(population) = cache
        .iter()
        .find(|(key, _)| *key == (seed, patients))
        .and_then(|(_, w)| w.upgrade())
    {
        return population;
    }
    let population = Arc::new(generate(seed, patients));
    cache.push(((seed, patients), Arc::downgrade(&population)));
    population
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use serde_json::Value;

    use super::*;
    use crate::time::format_instant;

    #[test]
    fn deterministic_and_seed_sensitive() {
        let a = generate(7, 4);
        assert_eq!(a, generate(7, 4));
        assert_ne!(
            a.resources("Patient")[0].json(),
            generate(8, 4).resources("Patient")[0].json()
        );
        let mut first = Vec::new();
        a.write_ndjson("Observation", &mut first).unwrap();
        let mut again = Vec::new();
        generate(7, 4)
            .write_ndjson("Observation", &mut again)
            .unwrap();
        assert_eq!(first, again);
    }

    #[test]
    fn each_resource_has_an_id_of_its_own() {
        let population = generate(42, 300);
        for ty in population.resource_types() {
            let resources = population.resources(ty);
            let ids: std::collections::HashSet<&str> = resources.iter().map(|r| r.id()).collect();
            assert_eq!(ids.len(), resources.len(), "{ty}");
        }
    }

    #[test]
    fn wide_provenance_is_opt_in_and_leaves_the_records_as_they_are() {
        let plain = generate(7, 3);
        assert_eq!(plain.resource_types().count(), GENERATED_TYPES.len());
        assert!(plain.resources("Provenance").is_empty());
        let wide = generate_with(
            7,
            3,
            GenerateOptions::default().with_provenance_targets(2_500),
        );
        for ty in GENERATED_TYPES {
            assert_eq!(wide.resources(ty), plain.resources(ty), "{ty}");
        }
        let ids: HashMap<String, Option<&str>> = plain
            .resource_types()
            .flat_map(|t| plain.resources(t))
            .map(|r| (format!("{}/{}", r.resource_type(), r.id()), r.patient_id()))
            .collect();
        let provenance = wide.resources("Provenance");
        assert_eq!(provenance.len(), 3);
        for p in provenance {
            let v: Value = serde_json::from_str(p.json()).unwrap();
            let targets = v["target"].as_array().unwrap();
            assert_eq!(targets.len(), 2_500);
            for target in targets {
                let reference = target["reference"].as_str().unwrap();
                assert_eq!(ids[reference], p.patient_id(), "{reference}");
            }
            assert_eq!(v["agent"][0]["type"]["coding"][0]["code"], "author");
        }
    }

    #[test]
    fn shaped_like_synthea() {
        let population = generate(42, 12);
        assert_eq!(population.resources("Patient").len(), 12);
        assert_eq!(
            population.group_ids(),
            ["all-patients", "diabetes", "seniors"]
        );
        let patients: HashMap<&str, ()> = population
            .resources("Patient")
            .iter()
            .map(|p| (p.id(), ()))
            .collect();
        for ty in GENERATED_TYPES {
            assert!(!population.resources(ty).is_empty(), "{ty}");
            for r in population.resources(ty) {
                let v: Value = serde_json::from_str(r.json()).unwrap();
                assert_eq!(v["resourceType"], ty);
                assert_eq!(v["id"], r.id());
                assert_eq!(v["meta"]["lastUpdated"], format_instant(r.last_updated()));
                assert!(r.last_updated() < POPULATION_END_MS);
                if let Some(p) = r.patient_id() {
                    assert!(patients.contains_key(p));
                }
            }
        }
        let obs: Vec<Value> = population
            .resources("Observation")
            .iter()
            .map(|r| serde_json::from_str(r.json()).unwrap())
            .collect();
        let values: Vec<&Value> = obs
            .iter()
            .filter_map(|o| o.pointer("/valueQuantity/value"))
            .collect();
        assert!(values.iter().any(|v| v.is_i64()) && values.iter().any(|v| v.is_f64()));
        assert!(obs.iter().any(|o| o.get("valueCodeableConcept").is_some()));
        assert!(
            obs.iter()
                .any(|o| o["component"].as_array().is_some_and(|c| c.len() == 2))
        );
        let patient: Value =
            serde_json::from_str(population.resources("Patient")[0].json()).unwrap();
        assert_eq!(
            patient["extension"][0]["extension"][0]["url"],
            "ombCategory"
        );
        assert!(
            patient
                .pointer("/address/0/extension/0/extension/1/valueDecimal")
                .is_some_and(Value::is_f64)
        );
        assert!(patient["identifier"].as_array().unwrap().len() >= 3);
        let eob_items = population
            .resources("ExplanationOfBenefit")
            .iter()
            .map(|r| {
                serde_json::from_str::<Value>(r.json()).unwrap()["item"]
                    .as_array()
                    .unwrap()
                    .len()
            });
        assert!(eob_items.max().unwrap() >= 3);
    }
}
