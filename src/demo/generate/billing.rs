//! The Claim and the (wide) ExplanationOfBenefit of an encounter, from what it [`Billed`].

use std::sync::Arc;

use serde_json::{Value, json};

use super::YEAR_MS;
use super::clinical::Billed;
use super::datatypes::{coding, concept, date_time, meta, money, reference, referenced};
use super::patient::PatientLife;

impl PatientLife<'_> {
    pub(super) fn claims(&mut self, encounter: &Arc<str>, start: i64, end: i64, billed: &[Billed]) {
        let claim_id = self.rng.uuid();
        let total: f64 = billed.iter().map(|b| b.charge).sum();
        let diagnoses: Vec<&Arc<str>> =
            billed.iter().filter_map(|b| b.diagnosis.as_ref()).collect();
        let items: Vec<Value> = billed
            .iter()
            .enumerate()
            .map(|(i, b)| {
                let mut item = json!({ "sequence": i + 1 });
                if b.diagnosis.is_some() {
                    item["diagnosisSequence"] = json!([1]);
                }
                item["productOrService"] = b.code.clone();
                if i == 0 {
                    item["encounter"] = json!([reference("Encounter", encounter)]);
                } else if b.charge > 0.0 {
                    item["net"] = money(b.charge);
                }
                item
            })
            .collect();
        let provider = referenced(
            "Organization",
            &self.provider.org_id,
            &self.provider.org_name,
        );
        let period = json!({ "start": date_time(start), "end": date_time(end) });
        let diagnosis: Vec<Value> = diagnoses
            .iter()
            .enumerate()
            .map(|(i, d)| json!({ "sequence": i + 1, "diagnosisReference": reference("Condition", d) }))
            .collect();
        let updated = self.updated(end);
        let mut claim = json!({
            "resourceType": "Claim", "id": &*claim_id, "meta": meta(updated),
            "status": "active",
            "type": { "coding": [{ "system": "http://terminology.hl7.org/CodeSystem/claim-type", "code": "institutional" }] },
            "use": "claim",
            "patient": { "reference": format!("Patient/{}", self.id), "display": self.name },
            "billablePeriod": period,
            "created": date_time(end),
            "provider": provider,
            "priority": { "coding": [{ "system": "http://terminology.hl7.org/CodeSystem/processpriority", "code": "normal" }] },
        });
        if !diagnosis.is_empty() {
            claim["diagnosis"] = json!(diagnosis);
        }
        claim["insurance"] =
            json!([{ "sequence": 1, "focal": true, "coverage": { "display": self.insurer } }]);
        claim["item"] = json!(items);
        claim["total"] = money(total);
        self.push(&claim_id, updated, claim);

        let eob_id = self.rng.uuid();
        let practitioner = reference("Practitioner", &self.provider.practitioner_id);
        let adjudication = |code: &str, display: &str, amount: Option<f64>| {
            let mut a = json!({ "category": { "coding": [coding("https://bluebutton.cms.gov/resources/codesystem/adjudication",
                &format!("https://bluebutton.cms.gov/resources/variables/{code}"), display)] } });
            if let Some(amount) = amount {
                a["amount"] = money(amount);
            }
            a
        };
        let coinsurance = self.rng.unit() * 0.3;
        let eob_items: Vec<Value> = billed
            .iter()
            .enumerate()
            .map(|(i, b)| {
                let mut item = json!({ "sequence": i + 1 });
                if b.diagnosis.is_some() {
                    item["diagnosisSequence"] = json!([1]);
                }
                item["category"] = json!({ "coding": [coding("https://bluebutton.cms.gov/resources/variables/line_cms_type_srvc_cd", "1", "Medical care")] });
                item["productOrService"] = b.code.clone();
                item["servicedPeriod"] = period.clone();
                item["locationCodeableConcept"] = json!({ "coding": [coding("http://terminology.hl7.org/CodeSystem/ex-serviceplace", "21", "Inpatient Hospital")] });
                if i == 0 {
                    item["encounter"] = json!([reference("Encounter", encounter)]);
                }
                if b.charge > 0.0 {
                    // Products of decimals: values like 28.104000000000003, as in Synthea.
                    let paid = b.charge * (1.0 - coinsurance);
                    item["net"] = money(b.charge);
                    item["adjudication"] = json!([
                        adjudication("line_coinsrnc_amt", "Line Beneficiary Coinsurance Amount", Some(b.charge * coinsurance)),
                        adjudication("line_prvdr_pmt_amt", "Line Provider Payment Amount", Some(paid)),
                        adjudication("line_sbmtd_chrg_amt", "Line Submitted Charge Amount", Some(b.charge)),
                        adjudication("line_alowd_chrg_amt", "Line Allowed Charge Amount", Some(b.charge)),
                        json!({ "category": { "coding": [coding("https://bluebutton.cms.gov/resources/codesystem/adjudication",
                            "https://bluebutton.cms.gov/resources/variables/line_bene_ptb_ddctbl_amt", "Line Beneficiary Part B Deductible Amount")] },
                            "amount": { "value": 0, "currency": "USD" } }),
                        adjudication("line_prcsg_ind_cd", "Line Processing Indicator Code", None),
                    ]);
                }
                item
            })
            .collect();
        let updated = self.updated(end);
        let mut eob = json!({
            "resourceType": "ExplanationOfBenefit", "id": &*eob_id, "meta": meta(updated),
            "contained": [
                { "resourceType": "ServiceRequest", "id": "referral", "status": "completed", "intent": "order",
                  "subject": self.subject(), "requester": practitioner, "performer": [practitioner] },
                { "resourceType": "Coverage", "id": "coverage", "status": "active", "type": { "text": self.insurer },
                  "beneficiary": self.subject(), "payor": [{ "display": self.insurer }] }],
            "identifier": [
                { "system": "https://bluebutton.cms.gov/resources/variables/clm_id", "value": &*claim_id },
                { "system": "https://bluebutton.cms.gov/resources/identifier/claim-group", "value": "99999999999" }],
            "status": "active",
            "type": { "coding": [{ "system": "http://terminology.hl7.org/CodeSystem/claim-type", "code": "institutional" }] },
            "use": "claim",
            "patient": self.subject(),
            "billablePeriod": { "start": date_time(end), "end": date_time(end + YEAR_MS) },
            "created": date_time(end),
            "insurer": { "display": self.insurer },
            "provider": practitioner,
            "referral": { "reference": "#referral" },
            "claim": reference("Claim", &claim_id),
            "outcome": "complete",
            "careTeam": [{ "sequence": 1, "provider": practitioner,
                "role": { "coding": [coding("http://terminology.hl7.org/CodeSystem/claimcareteamrole", "primary", "Primary Care Practitioner")] } }],
        });
        if !diagnoses.is_empty() {
            eob["diagnosis"] = json!(diagnoses.iter().enumerate().map(|(i, d)| json!({ "sequence": i + 1,
                "diagnosisReference": reference("Condition", d),
                "type": [{ "coding": [{ "system": "http://terminology.hl7.org/CodeSystem/ex-diagnosistype", "code": "principal" }] }] })).collect::<Vec<_>>());
        }
        eob["insurance"] = json!([{ "focal": true, "coverage": { "reference": "#coverage", "display": self.insurer } }]);
        eob["item"] = json!(eob_items);
        eob["total"] = json!([{ "category": concept("http://terminology.hl7.org/CodeSystem/adjudication", "submitted", "Submitted Amount"), "amount": money(total) }]);
        eob["payment"] = json!({ "amount": money(total * (1.0 - coinsurance)) });
        self.push(&eob_id, updated, eob);
    }
}
