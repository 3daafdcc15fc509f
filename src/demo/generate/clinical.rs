//! What an encounter writes for its patient: the Encounter, the Condition it treats, a
//! MedicationRequest, an Immunization, a Procedure, vital signs and labs (Observation,
//! DiagnosticReport); each billable event is returned as [`Billed`] for [`super::billing`].

use std::sync::Arc;

use serde_json::{Value, json};

use super::datatypes::{
    LOINC, SNOMED, UCUM, coding, concept, date_time, meta, reference, referenced,
};
use super::patient::PatientLife;
use super::tables::{CONDITIONS, ENCOUNTER_KINDS};
use super::{DAY_MS, POPULATION_END_MS, YEAR_MS};
use crate::time::format_instant;

/// The clinical event an encounter produced, for its Claim and ExplanationOfBenefit.
pub(super) struct Billed {
    pub(super) code: Value,
    pub(super) charge: f64,
    pub(super) diagnosis: Option<Arc<str>>,
}

impl PatientLife<'_> {
    pub(super) fn encounter(&mut self, kind: usize, start: i64, birth: i64) {
        let (code, display, class, _, minutes) = ENCOUNTER_KINDS[kind];
        let end = start + minutes * 60_000;
        let encounter_id = self.rng.uuid();
        let mut billed = vec![Billed {
            code: concept(SNOMED, code, display),
            charge: 129.16,
            diagnosis: None,
        }];

        let reason = match kind {
            0 => None,
            1 | 2 => Some(self.condition(&encounter_id, start, false)),
            _ => Some(self.condition(&encounter_id, start, true)),
        };
        if let Some((condition_id, index)) = &reason {
            let (_, condition_display, _, _, _) = CONDITIONS[*index];
            billed.push(Billed {
                code: concept(SNOMED, CONDITIONS[*index].0, condition_display),
                charge: 0.0,
                diagnosis: Some(Arc::clone(condition_id)),
            });
            if !CONDITIONS[*index].3.is_empty() && self.rng.chance(0.7) {
                billed.push(self.medication(&encounter_id, start, *index, condition_id));
            }
        }
        if kind == 0 {
            self.vital_signs(&encounter_id, start, birth);
            if self.rng.chance(0.35) {
                self.lipid_panel(&encounter_id, start);
            }
            if self.rng.chance(0.6) {
                billed.push(self.immunization(&encounter_id, start));
            }
        }
        if kind != 1 || self.rng.chance(0.3) {
            billed.push(self.procedure(&encounter_id, start, end, kind));
        }

        let updated = self.updated(end);
        let practitioner = referenced(
            "Practitioner",
            &self.provider.practitioner_id,
            &self.provider.practitioner_name,
        );
        let mut value = json!({
            "resourceType": "Encounter", "id": &*encounter_id, "meta": meta(updated),
            "status": "finished",
            "class": { "system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": class },
            "type": [concept(SNOMED, code, display)],
            "subject": { "reference": format!("Patient/{}", self.id), "display": self.name },
            "participant": [{
                "type": [concept("http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "PPRF", "primary performer")],
                "period": { "start": date_time(start), "end": date_time(end) },
                "individual": practitioner }],
            "period": { "start": date_time(start), "end": date_time(end) },
        });
        if let Some((_, index)) = reason {
            let (code, display, ..) = CONDITIONS[index];
            value["reasonCode"] = json!([{ "coding": [coding(SNOMED, code, display)] }]);
        }
        value["serviceProvider"] = referenced(
            "Organization",
            &self.provider.org_id,
            &self.provider.org_name,
        );
        self.push(&encounter_id, updated, value);
        self.claims(&encounter_id, start, end, &billed);
    }

    /// A new condition, or a visit for one already active; returns its id and table index.
    pub(super) fn condition(
        &mut self,
        encounter: &Arc<str>,
        at: i64,
        chronic_only: bool,
    ) -> (Arc<str>, usize) {
        if !self.active_conditions.is_empty() && self.rng.chance(0.4) {
            let (id, index) = self.rng.pick(&self.active_conditions);
            return (Arc::clone(id), *index);
        }
        let index = loop {
            let i = self.rng.below(CONDITIONS.len());
            if !chronic_only || CONDITIONS[i].2 {
                break i;
            }
        };
        let (code, display, chronic, ..) = CONDITIONS[index];
        let id = self.rng.uuid();
        let resolved = (!chronic)
            .then(|| at + self.rng.range(3, 30) * DAY_MS)
            .filter(|t| *t < POPULATION_END_MS);
        let updated = self.updated(resolved.unwrap_or(at));
        let mut value = json!({
            "resourceType": "Condition", "id": &*id, "meta": meta(updated),
            "clinicalStatus": { "coding": [{ "system": "http://terminology.hl7.org/CodeSystem/condition-clinical",
                "code": if resolved.is_some() { "resolved" } else { "active" } }] },
            "verificationStatus": { "coding": [{ "system": "http://terminology.hl7.org/CodeSystem/condition-ver-status", "code": "confirmed" }] },
            "category": [{ "coding": [coding("http://terminology.hl7.org/CodeSystem/condition-category", "encounter-diagnosis", "Encounter Diagnosis")] }],
            "code": concept(SNOMED, code, display),
            "subject": self.subject(),
            "encounter": reference("Encounter", encounter),
            "onsetDateTime": date_time(at),
            "recordedDate": date_time(at),
        });
        if let Some(resolved) = resolved {
            value["abatementDateTime"] = date_time(resolved).into();
        } else {
            self.active_conditions.push((Arc::clone(&id), index));
        }
        self.has_diabetes |= code == "44054006";
        self.push(&id, updated, value);
        (id, index)
    }

    pub(super) fn medication(
        &mut self,
        encounter: &Arc<str>,
        at: i64,
        index: usize,
        reason: &Arc<str>,
    ) -> Billed {
        let (_, _, chronic, code, display) = CONDITIONS[index];
        let id = self.rng.uuid();
        let updated = self.updated(at);
        let mut value = json!({
            "resourceType": "MedicationRequest", "id": &*id, "meta": meta(updated),
            "status": if chronic { "active" } else { "stopped" },
            "intent": "order",
            "medicationCodeableConcept": concept("http://www.nlm.nih.gov/research/umls/rxnorm", code, display),
            "subject": self.subject(),
            "encounter": reference("Encounter", encounter),
            "authoredOn": date_time(at),
            "requester": referenced("Practitioner", &self.provider.practitioner_id, &self.provider.practitioner_name),
            "reasonReference": [reference("Condition", reason)],
        });
        if chronic {
            value["dosageInstruction"] = json!([{ "sequence": 1, "timing": { "repeat": { "frequency": 1, "period": 1, "periodUnit": "d" } },
                "asNeededBoolean": false,
                "doseAndRate": [{ "type": concept("http://terminology.hl7.org/CodeSystem/dose-rate-type", "ordered", "Ordered"),
                    "doseQuantity": { "value": 1.0 } }] }]);
        }
        self.push(&id, updated, value);
        let charge = (self.rng.range(500, 40_000) as f64) / 100.0;
        Billed {
            code: concept("http://www.nlm.nih.gov/research/umls/rxnorm", code, display),
            charge,
            diagnosis: None,
        }
    }

    pub(super) fn immunization(&mut self, encounter: &Arc<str>, at: i64) -> Billed {
        let id = self.rng.uuid();
        let (code, display) = *self.rng.pick(&[
            ("140", "Influenza, seasonal, injectable, preservative free"),
            ("113", "Td (adult) preservative free"),
            ("133", "Pneumococcal conjugate PCV 13"),
            ("08", "Hep B, adolescent or pediatric"),
        ]);
        let updated = self.updated(at);
        let value = json!({
            "resourceType": "Immunization", "id": &*id, "meta": meta(updated),
            "status": "completed",
            "vaccineCode": concept("http://hl7.org/fhir/sid/cvx", code, display),
            "patient": self.subject(),
            "encounter": reference("Encounter", encounter),
            "occurrenceDateTime": date_time(at),
            "primarySource": true,
        });
        self.push(&id, updated, value);
        Billed {
            code: concept("http://hl7.org/fhir/sid/cvx", code, display),
            charge: 140.52,
            diagnosis: None,
        }
    }

    pub(super) fn procedure(
        &mut self,
        encounter: &Arc<str>,
        start: i64,
        end: i64,
        kind: usize,
    ) -> Billed {
        let id = self.rng.uuid();
        let (code, display) = *self.rng.pick(match kind {
            0 => &[
                ("430193006", "Medication Reconciliation (procedure)"),
                (
                    "710824005",
                    "Assessment of health and social care needs (procedure)",
                ),
            ][..],
            3 => &[
                ("387607004", "Construction of diverting colostomy"),
                ("127783003", "Spirometry (procedure)"),
            ][..],
            _ => &[
                (
                    "23426006",
                    "Measurement of respiratory function (procedure)",
                ),
                ("117015009", "Throat culture (procedure)"),
                ("76601001", "Intramuscular injection"),
            ][..],
        });
        let updated = self.updated(end);
        let value = json!({
            "resourceType": "Procedure", "id": &*id, "meta": meta(updated),
            "status": "completed",
            "code": concept(SNOMED, code, display),
            "subject": self.subject(),
            "encounter": reference("Encounter", encounter),
            "performedPeriod": { "start": date_time(start), "end": date_time(end) },
        });
        self.push(&id, updated, value);
        let charge = (self.rng.range(5_000, 900_000) as f64) / 100.0;
        Billed {
            code: concept(SNOMED, code, display),
            charge,
            diagnosis: None,
        }
    }

    pub(super) fn observation(
        &mut self,
        encounter: &Arc<str>,
        at: i64,
        category: &str,
        code: &str,
        display: &str,
        value: (&str, Value),
    ) -> Arc<str> {
        let id = self.rng.uuid();
        let updated = self.updated(at);
        let mut resource = json!({
            "resourceType": "Observation", "id": &*id, "meta": meta(updated),
            "status": "final",
            "category": [{ "coding": [coding("http://terminology.hl7.org/CodeSystem/observation-category", category, category)] }],
            "code": concept(LOINC, code, display),
            "subject": self.subject(),
            "encounter": reference("Encounter", encounter),
            "effectiveDateTime": date_time(at),
            "issued": format_instant(at + 825),
        });
        resource[value.0] = value.1;
        self.push(&id, updated, resource);
        id
    }

    pub(super) fn vital_signs(&mut self, encounter: &Arc<str>, at: i64, birth: i64) {
        let age = ((at - birth) / YEAR_MS) as f64;
        let quantity = |value: Value, unit: &str| json!({ "value": value, "unit": unit, "system": UCUM, "code": unit });
        // Heights and weights keep one decimal place, but a round value stays an integer (as in Synthea).
        let height = ((50.0 + age.min(18.0) * 6.5 + self.rng.unit() * 20.0) * 10.0).round() / 10.0;
        let weight = ((3.5 + age.min(20.0) * 3.6 + self.rng.unit() * 30.0) * 10.0).round() / 10.0;
        let number = |x: f64| {
            if x.fract() == 0.0 {
                json!(x as i64)
            } else {
                json!(x)
            }
        };
        self.observation(
            encounter,
            at,
            "vital-signs",
            "8302-2",
            "Body Height",
            ("valueQuantity", quantity(number(height), "cm")),
        );
        self.observation(
            encounter,
            at,
            "vital-signs",
            "29463-7",
            "Body Weight",
            ("valueQuantity", quantity(number(weight), "kg")),
        );
        let bmi = weight / (height / 100.0).powi(2);
        self.observation(
            encounter,
            at,
            "vital-signs",
            "39156-5",
            "Body Mass Index",
            ("valueQuantity", quantity(json!(bmi), "kg/m2")),
        );
        let (diastolic, systolic) = (self.rng.range(60, 95), self.rng.range(100, 160));
        let component = |code: &str, display: &str, value: i64| json!({ "code": concept(LOINC, code, display), "valueQuantity": quantity(json!(value), "mm[Hg]") });
        let id = self.rng.uuid();
        let updated = self.updated(at);
        let value = json!({
            "resourceType": "Observation", "id": &*id, "meta": meta(updated),
            "status": "final",
            "category": [{ "coding": [coding("http://terminology.hl7.org/CodeSystem/observation-category", "vital-signs", "vital-signs")] }],
            "code": concept(LOINC, "85354-9", "Blood Pressure"),
            "subject": self.subject(),
            "encounter": reference("Encounter", encounter),
            "effectiveDateTime": date_time(at),
            "issued": format_instant(at + 825),
            "component": [component("8462-4", "Diastolic Blood Pressure", diastolic), component("8480-6", "Systolic Blood Pressure", systolic)],
        });
        self.push(&id, updated, value);
        let heart_rate = self.rng.range(55, 100);
        self.observation(
            encounter,
            at,
            "vital-signs",
            "8867-4",
            "Heart rate",
            ("valueQuantity", quantity(json!(heart_rate), "/min")),
        );
        let respiration = self.rng.range(12, 20);
        self.observation(
            encounter,
            at,
            "vital-signs",
            "9279-1",
            "Respiratory rate",
            ("valueQuantity", quantity(json!(respiration), "/min")),
        );
        if age >= 18.0 {
            let (code, display) = *self.rng.pick(&[
                ("266919005", "Never smoker"),
                ("8517006", "Former smoker"),
                ("449868002", "Smokes tobacco daily"),
            ]);
            self.observation(
                encounter,
                at,
                "survey",
                "72166-2",
                "Tobacco smoking status NHIS",
                ("valueCodeableConcept", concept(SNOMED, code, display)),
            );
            if self.rng.chance(0.15) {
                let orientation = *self.rng.pick(&["heterosexual", "homosexual", "bisexual"]);
                self.observation(
                    encounter,
                    at,
                    "social-history",
                    "76690-7",
                    "Sexual orientation",
                    ("valueString", orientation.into()),
                );
            }
        }
    }

    pub(super) fn lipid_panel(&mut self, encounter: &Arc<str>, at: i64) {
        let mut results = Vec::new();
        for (code, display, lo, hi) in [
            ("2093-3", "Total Cholesterol", 150.0, 280.0),
            ("2571-8", "Triglycerides", 50.0, 300.0),
            (
                "18262-6",
                "Low Density Lipoprotein Cholesterol",
                60.0,
                190.0,
            ),
            ("2085-9", "High Density Lipoprotein Cholesterol", 25.0, 90.0),
        ] {
            // Full f64 precision, as Synthea writes lab values (16-17 significant digits).
            let value = lo + self.rng.unit() * (hi - lo);
            let quantity =
                json!({ "value": value, "unit": "mg/dL", "system": UCUM, "code": "mg/dL" });
            let id = self.observation(
                encounter,
                at,
                "laboratory",
                code,
                display,
                ("valueQuantity", quantity),
            );
            results.push(referenced("Observation", &id, display));
        }
        let id = self.rng.uuid();
        let updated = self.updated(at);
        let value = json!({
            "resourceType": "DiagnosticReport", "id": &*id, "meta": meta(updated),
            "status": "final",
            "category": [{ "coding": [coding("http://terminology.hl7.org/CodeSystem/v2-0074", "LAB", "Laboratory")] }],
            "code": concept(LOINC, "57698-3", "Lipid Panel"),
            "subject": self.subject(),
            "encounter": reference("Encounter", encounter),
            "effectiveDateTime": date_time(at),
            "issued": format_instant(at + 825),
            "result": results,
        });
        self.push(&id, updated, value);
    }
}
