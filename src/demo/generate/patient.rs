//! One patient's life ([`PatientLife`]): birth, a time-ordered series of encounters (each
//! written by [`super::clinical`] and billed by [`super::billing`]), maybe an allergy, and
//! finally the Patient resource itself, shaped by what happened (age, conditions, death).

use std::sync::Arc;

use serde_json::{Value, json};

use super::administrative::{Cohorts, Provider};
use super::datatypes::{SNOMED, coding, concept, date, date_time, meta, reference, referenced};
use super::population::{Builder, Resource};
use super::rng::Rng;
use super::tables::{CITIES, FAMILY, GIVEN_FEMALE, GIVEN_MALE, RACES, STREETS};
use super::{DAY_MS, POPULATION_END_MS, YEAR_MS};

/// One patient's record being written.
pub(super) struct PatientLife<'a> {
    pub(super) rng: &'a mut Rng,
    pub(super) provider: &'a Provider,
    pub(super) out: &'a mut Builder,
    pub(super) id: Arc<str>,
    pub(super) name: String,
    pub(super) insurer: &'static str,
    pub(super) active_conditions: Vec<(Arc<str>, usize)>,
    pub(super) has_diabetes: bool,
}

impl<'a> PatientLife<'a> {
    pub(super) fn generate(
        rng: &'a mut Rng,
        provider: &'a Provider,
        out: &'a mut Builder,
        cohorts: &mut Cohorts,
    ) {
        let id = rng.uuid();
        let female = rng.chance(0.5);
        let age_years = rng.range(0, 95);
        let birth = POPULATION_END_MS
            - age_years * YEAR_MS
            - rng.range(0, 365) * DAY_MS
            - rng.range(0, DAY_MS);
        let encounters = 3 + age_years / 2 + rng.range(0, 12);
        let given = *rng.pick(if female { &GIVEN_FEMALE } else { &GIVEN_MALE });
        let family = *rng.pick(&FAMILY);
        let prefix = if age_years < 18 {
            ""
        } else if female {
            "Mrs. "
        } else {
            "Mr. "
        };
        let insurer = *rng.pick(&[
            "Medicaid",
            "Medicare",
            "Blue Cross Blue Shield",
            "Aetna",
            "NO_INSURANCE",
        ]);
        let mut life = PatientLife {
            rng,
            provider,
            out,
            id: Arc::clone(&id),
            name: format!("{prefix}{given} {family}"),
            insurer,
            active_conditions: Vec::new(),
            has_diabetes: false,
        };
        let span = POPULATION_END_MS - birth;
        let mut times: Vec<i64> = (0..encounters)
            .map(|_| birth + life.rng.range(DAY_MS, span.max(2 * DAY_MS)))
            .collect();
        times.sort_unstable();
        if life.rng.chance(0.3) {
            life.allergy(birth);
        }
        let mut last = birth;
        for (i, start) in times.into_iter().enumerate() {
            let kind = if i % 3 == 0 {
                0
            } else {
                [1, 1, 1, 1, 2, 3][life.rng.below(6)]
            };
            life.encounter(kind, start, birth);
            last = start;
        }
        life.patient(female, given, family, birth, age_years, last);
        cohorts.all.push(Arc::clone(&id));
        if life.has_diabetes {
            cohorts.diabetes.push(Arc::clone(&id));
        }
        if age_years >= 65 {
            cohorts.seniors.push(id);
        }
    }

    /// `meta.lastUpdated` of something recorded at `at`: a little later, never after the end.
    pub(super) fn updated(&mut self, at: i64) -> i64 {
        (at + self.rng.range(60_000, 3 * DAY_MS)).min(POPULATION_END_MS - 1000)
    }

    pub(super) fn subject(&self) -> Value {
        reference("Patient", &self.id)
    }

    pub(super) fn push(&mut self, id: &Arc<str>, updated: i64, value: Value) {
        let patient = Arc::clone(&self.id);
        self.out.push(id, Some(&patient), updated, value);
    }

    pub(super) fn patient(
        &mut self,
        female: bool,
        given: &str,
        family: &str,
        birth: i64,
        age: i64,
        last: i64,
    ) {
        let rng = &mut *self.rng;
        let (race, race_display) = *rng.pick(&RACES);
        let hispanic = rng.chance(0.15);
        let (ethnicity, ethnicity_display) = if hispanic {
            ("2135-2", "Hispanic or Latino")
        } else {
            ("2186-5", "Not Hispanic or Latino")
        };
        let omb = "urn:oid:2.16.840.1.113883.6.238";
        let (city, zip, lat, lon) = *rng.pick(&CITIES);
        let (birth_city, _, _, _) = *rng.pick(&CITIES);
        let dalys = rng.unit() * 3.0;
        let mut extension = vec![
            json!({ "url": "http://hl7.org/fhir/us/core/StructureDefinition/us-core-race", "extension": [
                { "url": "ombCategory", "valueCoding": { "system": omb, "code": race, "display": race_display } },
                { "url": "text", "valueString": race_display }] }),
            json!({ "url": "http://hl7.org/fhir/us/core/StructureDefinition/us-core-ethnicity", "extension": [
                { "url": "ombCategory", "valueCoding": { "system": omb, "code": ethnicity, "display": ethnicity_display } },
                { "url": "text", "valueString": ethnicity_display }] }),
            json!({ "url": "http://hl7.org/fhir/StructureDefinition/patient-mothersMaidenName",
                "valueString": format!("{} {}", rng.pick(&GIVEN_FEMALE), rng.pick(&FAMILY)) }),
            json!({ "url": "http://hl7.org/fhir/us/core/StructureDefinition/us-core-birthsex", "valueCode": if female { "F" } else { "M" } }),
            json!({ "url": "http://hl7.org/fhir/StructureDefinition/patient-birthPlace",
                "valueAddress": { "city": birth_city, "state": "Massachusetts", "country": "US" } }),
            json!({ "url": "http://synthetichealth.github.io/synthea/disability-adjusted-life-years", "valueDecimal": dalys }),
            json!({ "url": "http://synthetichealth.github.io/synthea/quality-adjusted-life-years", "valueDecimal": age as f64 - dalys }),
        ];
        if rng.chance(0.1) {
            extension.truncate(5);
        }
        let id_type = |code: &str, display: &str| json!({ "coding": [coding("http://terminology.hl7.org/CodeSystem/v2-0203", code, display)], "text": display });
        let mut identifier = vec![
            json!({ "system": "https://github.com/synthetichealth/synthea", "value": &*self.id }),
            json!({ "type": id_type("MR", "Medical Record Number"), "system": "http://hospital.smarthealthit.org", "value": &*self.id }),
            json!({ "type": id_type("SS", "Social Security Number"), "system": "http://hl7.org/fhir/sid/us-ssn",
                "value": format!("999-{:02}-{:04}", rng.range(10, 99), rng.range(0, 9999)) }),
        ];
        if age >= 16 {
            identifier.push(json!({ "type": id_type("DL", "Driver's License"), "system": "urn:oid:2.16.840.1.113883.4.3.25",
                "value": format!("S999{:05}", rng.range(0, 99_999)) }));
        }
        if age >= 18 && rng.chance(0.7) {
            identifier.push(json!({ "type": id_type("PPN", "Passport Number"),
                "system": "http://standardhealthrecord.org/fhir/StructureDefinition/passportNumber",
                "value": format!("X{:08}X", rng.range(0, 99_999_999)) }));
        }
        let married = age >= 20 && rng.chance(0.55);
        let mut name = vec![json!({ "use": "official", "family": family, "given": [given] })];
        if rng.chance(0.4) {
            name[0]["given"].as_array_mut().expect("given").push(
                rng.pick(if female { &GIVEN_FEMALE } else { &GIVEN_MALE })
                    .to_string()
                    .into(),
            );
        }
        if age >= 18 {
            name[0]["prefix"] = json!([if female {
                if married { "Mrs." } else { "Ms." }
            } else {
                "Mr."
            }]);
        }
        if female && married {
            name.push(json!({ "use": "maiden", "family": rng.pick(&FAMILY), "given": [given], "prefix": ["Ms."] }));
        }
        let mut patient = json!({
            "resourceType": "Patient", "id": &*self.id, "meta": meta(0),
            "text": { "status": "generated", "div": format!("<div xmlns=\"http://www.w3.org/1999/xhtml\">Generated by fhirflight demo. Patient {given} {family}</div>") },
            "extension": extension,
            "identifier": identifier,
            "name": name,
            "telecom": [{ "system": "phone", "value": format!("555-{:03}-{:04}", rng.range(100, 999), rng.range(0, 9999)), "use": "home" }],
            "gender": if female { "female" } else { "male" },
            "birthDate": date(birth),
        });
        let object = patient.as_object_mut().expect("object");
        if rng.chance(0.3) {
            object.insert("_birthDate".into(), json!({ "extension": [
                { "url": "http://hl7.org/fhir/StructureDefinition/patient-birthTime", "valueDateTime": date_time(birth) }] }));
        }
        if age > 80 && rng.chance(0.3) {
            object.insert("deceasedDateTime".into(), date_time(last + DAY_MS).into());
        }
        object.insert("address".into(), json!([{
            "extension": [{ "url": "http://hl7.org/fhir/StructureDefinition/geolocation", "extension": [
                { "url": "latitude", "valueDecimal": lat + (rng.unit() - 0.5) * 0.1 },
                { "url": "longitude", "valueDecimal": lon + (rng.unit() - 0.5) * 0.1 }] }],
            "line": [format!("{} {}", rng.range(1, 999), rng.pick(&STREETS))],
            "city": city, "state": "Massachusetts", "postalCode": zip, "country": "US" }]));
        let status = if married { "M" } else { "S" };
        object.insert("maritalStatus".into(), json!({
            "coding": [coding("http://terminology.hl7.org/CodeSystem/v3-MaritalStatus", status, status)], "text": status }));
        if rng.chance(0.03) {
            object.insert("multipleBirthInteger".into(), json!(rng.range(2, 4)));
        } else {
            object.insert("multipleBirthBoolean".into(), false.into());
        }
        let (lang, lang_display) = if rng.chance(0.85) {
            ("en-US", "English")
        } else {
            ("es", "Spanish")
        };
        object.insert(
            "communication".into(),
            json!([{ "language": concept("urn:ietf:bcp:47", lang, lang_display) }]),
        );
        let updated = self.updated(last);
        object.insert("meta".into(), meta(updated));
        let id = Arc::clone(&self.id);
        self.push(&id, updated, patient);
    }

    pub(super) fn allergy(&mut self, birth: i64) {
        let id = self.rng.uuid();
        let recorded = birth + self.rng.range(DAY_MS, 5 * YEAR_MS);
        let (code, display, category) = *self.rng.pick(&[
            ("419474003", "Allergy to mould", "environment"),
            ("232347008", "Dander (animal) allergy", "environment"),
            ("91935009", "Allergy to peanuts", "food"),
            ("300913006", "Shellfish allergy", "food"),
        ]);
        let updated = self.updated(recorded);
        let value = json!({
            "resourceType": "AllergyIntolerance", "id": &*id, "meta": meta(updated),
            "clinicalStatus": { "coding": [{ "system": "http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical", "code": "active" }] },
            "verificationStatus": { "coding": [{ "system": "http://terminology.hl7.org/CodeSystem/allergyintolerance-verification", "code": "confirmed" }] },
            "type": "allergy", "category": [category],
            "criticality": if self.rng.chance(0.7) { "low" } else { "high" },
            "code": concept(SNOMED, code, display),
            "patient": self.subject(),
            "recordedDate": date_time(recorded),
        });
        self.push(&id, updated, value);
    }
}

/// The Provenance of a patient's record (Synthea writes one per patient): `targets` references to
/// the resources the record wrote since each type held `written[i]` resources, in export order and
/// round again when there are fewer, recorded by the patient's provider.
pub(super) fn provenance(
    rng: &mut Rng,
    provider: &Provider,
    out: &mut Builder,
    written: &[usize],
    targets: usize,
) {
    let record: Vec<(&str, &Resource)> = out
        .types
        .iter()
        .zip(written)
        .flat_map(|((t, resources), &from)| resources[from..].iter().map(|r| (&**t, &**r)))
        .collect();
    let Some(patient) = record.iter().find_map(|(_, r)| r.patient_id()) else {
        return;
    };
    let patient = Arc::<str>::from(patient);
    let updated = record
        .iter()
        .map(|(_, r)| r.last_updated())
        .max()
        .unwrap_or(0);
    let target: Vec<Value> = record
        .iter()
        .cycle()
        .take(targets)
        .map(|(t, r)| reference(t, r.id()))
        .collect();
    let role = |code: &str, display: &str| json!({ "coding": [coding("http://terminology.hl7.org/CodeSystem/provenance-participant-type", code, display)], "text": display });
    let id = rng.uuid();
    let value = json!({
        "resourceType": "Provenance", "id": &*id, "meta": meta(updated),
        "target": target,
        "recorded": date_time(updated),
        "agent": [
            { "type": role("author", "Author"),
              "who": referenced("Practitioner", &provider.practitioner_id, &provider.practitioner_name),
              "onBehalfOf": referenced("Organization", &provider.org_id, &provider.org_name) },
            { "type": role("transmitter", "Transmitter"),
              "who": referenced("Organization", &provider.org_id, &provider.org_name) },
        ],
    });
    out.push(&id, Some(&patient), updated, value);
}
