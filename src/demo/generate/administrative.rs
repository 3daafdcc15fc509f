//! Resources outside any patient's compartment: a [`Provider`] (an Organization and its
//! Practitioner) and the [`Cohorts`] written as Group resources (`all-patients`, `diabetes`,
//! `seniors`).

use std::sync::Arc;

use serde_json::{Value, json};

use super::datatypes::{concept, meta, reference};
use super::population::Builder;
use super::rng::Rng;
use super::tables::{CITIES, FAMILY, GIVEN_FEMALE, GIVEN_MALE, STREETS};
use super::{DAY_MS, POPULATION_END_MS};

/// A hospital and its practitioner.
pub(super) struct Provider {
    pub(super) org_id: Arc<str>,
    pub(super) org_name: String,
    pub(super) practitioner_id: Arc<str>,
    pub(super) practitioner_name: String,
}

impl Provider {
    pub(super) fn new(rng: &mut Rng, n: usize, out: &mut Builder) -> Self {
        let (org_id, practitioner_id) = (rng.uuid(), rng.uuid());
        let (city, zip, _, _) = *rng.pick(&CITIES);
        let org_name = format!(
            "{} {}",
            city.to_uppercase(),
            rng.pick(&[
                "MEDICAL CENTER",
                "HOSPITAL",
                "HEALTH CARE",
                "FAMILY PRACTICE"
            ])
        );
        let line = format!(
            "{} {}",
            rng.range(1, 999),
            rng.pick(&STREETS).to_uppercase()
        );
        let address = json!([{ "line": [line], "city": city.to_uppercase(), "state": "MA", "postalCode": zip, "country": "US" }]);
        let utilization = |rng: &mut Rng, kind: &str| json!({ "url": format!("http://synthetichealth.github.io/synthea/utilization-{kind}-extension"), "valueInteger": rng.range(0, 500) });
        let updated = POPULATION_END_MS - rng.range(30, 400) * DAY_MS;
        out.push(&org_id, None, updated, json!({
            "resourceType": "Organization", "id": &*org_id, "meta": meta(updated),
            "extension": [utilization(rng, "encounters"), utilization(rng, "procedures"), utilization(rng, "labs"), utilization(rng, "prescriptions")],
            "identifier": [{ "system": "https://github.com/synthetichealth/synthea", "value": &*org_id }],
            "active": true,
            "type": [concept("http://terminology.hl7.org/CodeSystem/organization-type", "prov", "Healthcare Provider")],
            "name": org_name,
            "telecom": [{ "system": "phone", "value": format!("978{:07}", rng.range(0, 9_999_999)) }],
            "address": address,
        }));
        let female = rng.chance(0.5);
        let given = *rng.pick(if female { &GIVEN_FEMALE } else { &GIVEN_MALE });
        let family = *rng.pick(&FAMILY);
        out.push(&practitioner_id, None, updated, json!({
            "resourceType": "Practitioner", "id": &*practitioner_id, "meta": meta(updated),
            "extension": [utilization(rng, "encounters")],
            "identifier": [{ "system": "http://hl7.org/fhir/sid/us-npi", "value": format!("{:010}", 9_999_000_000u64 + n as u64) }],
            "active": true,
            "name": [{ "family": family, "given": [given], "prefix": ["Dr."] }],
            "telecom": [{ "system": "email", "value": format!("{given}.{family}@example.com"), "use": "work" }],
            "address": address,
            "gender": if female { "female" } else { "male" },
        }));
        Self {
            org_id,
            org_name,
            practitioner_id,
            practitioner_name: format!("Dr. {given} {family}"),
        }
    }
}

/// Patients in each Group.
#[derive(Default)]
pub(super) struct Cohorts {
    pub(super) all: Vec<Arc<str>>,
    pub(super) diabetes: Vec<Arc<str>>,
    pub(super) seniors: Vec<Arc<str>>,
}

impl Cohorts {
    pub(super) fn write(&self, out: &mut Builder) {
        let updated = POPULATION_END_MS - DAY_MS;
        for (id, name, members) in [
            ("all-patients", "All patients", &self.all),
            ("diabetes", "Patients with diabetes", &self.diabetes),
            ("seniors", "Patients aged 65 or more", &self.seniors),
        ] {
            let id: Arc<str> = id.into();
            let member: Vec<Value> = members
                .iter()
                .map(|p| json!({ "entity": reference("Patient", p) }))
                .collect();
            out.push(
                &id,
                None,
                updated,
                json!({
                    "resourceType": "Group", "id": &*id, "meta": meta(updated),
                    "identifier": [{ "system": "urn:fhirflight:demo:group", "value": &*id }],
                    "active": true, "type": "person", "actual": true, "name": name,
                    "quantity": member.len(), "member": member,
                }),
            );
        }
    }
}
