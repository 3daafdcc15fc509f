//! A deterministic synthetic FHIR R4 population shaped like Synthea output.
//!
//! Every patient gets a life of encounters (wellness visits, symptoms, emergencies, admissions), and
//! each encounter the resources Synthea would write for it: vital signs and labs, conditions,
//! prescriptions, procedures, immunizations, a Claim and a wide ExplanationOfBenefit. A patient's
//! record comes from its own random stream seeded by `(seed, patient number)`, so the same seed and
//! count give byte-identical NDJSON on every machine. Resources are kept as serialized NDJSON lines:
//! a gigabyte population costs about a gigabyte of memory, not a tree of `Value`s.

use std::io::Write;
use std::sync::{Arc, Mutex, Weak};

use serde_json::{Value, json};

use super::time::{civil_from_days, format_instant};

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

/// "Now" of every generated population: clinical history ends here and `meta.lastUpdated` values lie
/// before it, so output never depends on the wall clock.
const POPULATION_END_MS: i64 = 1_735_689_600_000; // 2025-01-01T00:00:00Z
const DAY_MS: i64 = 86_400_000;
const YEAR_MS: i64 = 365 * DAY_MS + DAY_MS / 4;

/// One stored resource: its identity, the patient whose compartment it is in, and its JSON line.
#[derive(Debug, Clone, PartialEq)]
pub struct Resource {
    resource_type: Arc<str>,
    id: Arc<str>,
    patient: Option<Arc<str>>,
    last_updated: i64,
    json: Arc<str>,
}

impl Resource {
    /// Parses a resource and reads what the server needs to know about it.
    ///
    /// `meta.lastUpdated` is set to `last_updated` (milliseconds since the epoch).
    pub(crate) fn from_value(mut value: Value, last_updated: i64) -> crate::Result<Self> {
        let field = |name: &str| {
            value
                .get(name)
                .and_then(Value::as_str)
                .map(Arc::<str>::from)
        };
        let bad = |what: &str| crate::Error::config(format!("demo resource without {what}"));
        let resource_type = field("resourceType").ok_or_else(|| bad("resourceType"))?;
        let id = field("id").ok_or_else(|| bad("id"))?;
        let patient = if &*resource_type == "Patient" {
            Some(Arc::clone(&id))
        } else {
            patient_of(&value)
        };
        let object = value.as_object_mut().ok_or_else(|| bad("a JSON object"))?;
        let meta = object.entry("meta").or_insert_with(|| json!({}));
        if let Some(meta) = meta.as_object_mut() {
            meta.insert("lastUpdated".into(), format_instant(last_updated).into());
        }
        Ok(Self {
            resource_type,
            id,
            patient,
            last_updated,
            json: value.to_string().into(),
        })
    }

    /// The resource type.
    pub fn resource_type(&self) -> &str {
        &self.resource_type
    }

    /// The logical id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The id of the patient whose compartment holds this resource (a Patient's own id).
    pub fn patient_id(&self) -> Option<&str> {
        self.patient.as_deref()
    }

    /// `meta.lastUpdated` in milliseconds since the Unix epoch.
    pub fn last_updated(&self) -> i64 {
        self.last_updated
    }

    /// The resource as one line of JSON (no newline).
    pub fn json(&self) -> &str {
        &self.json
    }

    pub(crate) fn json_arc(&self) -> Arc<str> {
        Arc::clone(&self.json)
    }
}

/// The patient a resource belongs to, from the references Synthea's types use.
fn patient_of(value: &Value) -> Option<Arc<str>> {
    ["subject", "patient", "beneficiary"]
        .iter()
        .find_map(|field| {
            let reference = value.get(field)?.get("reference")?.as_str()?;
            reference.strip_prefix("Patient/").map(Arc::from)
        })
}

/// A generated population: every resource of every type, as NDJSON lines.
#[derive(Debug, Clone, PartialEq)]
pub struct Population {
    types: Vec<(Arc<str>, Vec<Arc<Resource>>)>,
}

impl Population {
    /// The resource types present, in export order.
    pub fn resource_types(&self) -> impl Iterator<Item = &str> {
        self.types.iter().map(|(t, _)| &**t)
    }

    /// The resources of one type (empty for a type the population does not hold).
    pub fn resources(&self, resource_type: &str) -> &[Arc<Resource>] {
        self.types
            .iter()
            .find(|(t, _)| &**t == resource_type)
            .map_or(&[], |(_, r)| r)
    }

    /// Writes the resources of one type as NDJSON, exactly as the demo server's unfiltered export does.
    pub fn write_ndjson(&self, resource_type: &str, mut out: impl Write) -> std::io::Result<()> {
        for resource in self.resources(resource_type) {
            out.write_all(resource.json().as_bytes())?;
            out.write_all(b"\n")?;
        }
        Ok(())
    }

    /// Ids of the Group resources (cohorts of patients usable for group-level export).
    pub fn group_ids(&self) -> Vec<&str> {
        self.resources("Group").iter().map(|g| g.id()).collect()
    }

    /// NDJSON size of the whole population in bytes.
    pub fn ndjson_bytes(&self) -> u64 {
        self.types
            .iter()
            .flat_map(|(_, r)| r)
            .map(|r| r.json.len() as u64 + 1)
            .sum()
    }

    pub(crate) fn into_types(self) -> Vec<(Arc<str>, Vec<Arc<Resource>>)> {
        self.types
    }
}

/// Generates `patients` patients and everything around them from `seed`.
///
/// Same arguments, same bytes. Organizations, Practitioners and three Groups (`all-patients`,
/// `diabetes`, `seniors`) come with them. About 0.4 MB of NDJSON per patient.
pub fn generate(seed: u64, patients: usize) -> Population {
    let mut out = Builder::new();
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
                    let (mut out, mut cohorts) = (Builder::new(), Cohorts::default());
                    for n in first..(first + per_thread).min(patients) {
                        let mut rng =
                            Rng::new(seed ^ (n as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
                        let provider = &providers[rng.below(providers.len())];
                        PatientLife::generate(&mut rng, provider, &mut out, &mut cohorts);
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

/// SplitMix64: tiny, fast, and fixed forever (unlike `StdRng`, whose algorithm may change).
#[derive(Debug)]
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        let mut rng = Rng(seed);
        rng.next();
        rng
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (((self.next() >> 32) * n as u64) >> 32) as usize
    }

    fn range(&mut self, lo: i64, hi: i64) -> i64 {
        lo + (self.next() % (hi - lo) as u64) as i64
    }

    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }

    /// A version-4-shaped UUID.
    fn uuid(&mut self) -> Arc<str> {
        let (a, b) = (self.next(), self.next());
        format!(
            "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
            a >> 32,
            (a >> 16) & 0xffff,
            a & 0xfff,
            0x8000 | (b >> 48) & 0x3fff,
            b & 0xffff_ffff_ffff
        )
        .into()
    }
}

/// Collects resources per type.
struct Builder {
    types: Vec<(Arc<str>, Vec<Arc<Resource>>)>,
    /// Serialization buffer, reused: growing a fresh String per resource costs more than the JSON.
    buffer: Vec<u8>,
}

impl Builder {
    fn new() -> Self {
        let types = GENERATED_TYPES
            .iter()
            .map(|t| (Arc::from(*t), Vec::new()))
            .collect();
        Self {
            types,
            buffer: Vec::new(),
        }
    }

    /// Stores `value`, whose `meta` (first after `id`) gets `lastUpdated`.
    fn push(&mut self, id: &Arc<str>, patient: Option<&Arc<str>>, last_updated: i64, value: Value) {
        let resource_type = value["resourceType"]
            .as_str()
            .expect("generated resourceType");
        self.buffer.clear();
        serde_json::to_writer(&mut self.buffer, &value).expect("serializing to memory");
        let json = std::str::from_utf8(&self.buffer).expect("serde_json writes UTF-8");
        let (resource_type, resources) = self
            .types
            .iter_mut()
            .find(|(t, _)| &**t == resource_type)
            .expect("generated type");
        resources.push(Arc::new(Resource {
            resource_type: Arc::clone(resource_type),
            id: Arc::clone(id),
            patient: patient.cloned(),
            last_updated,
            json: json.into(),
        }));
    }
}

fn meta(last_updated: i64) -> Value {
    json!({ "lastUpdated": format_instant(last_updated) })
}

/// A Synthea-style local date-time (`1985-06-18T17:30:49-05:00`).
fn date_time(ms: i64) -> String {
    let local = ms - 5 * 3_600_000;
    let (days, rem) = (local.div_euclid(DAY_MS), local.rem_euclid(DAY_MS) / 1000);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}-05:00",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

fn date(ms: i64) -> String {
    let (y, m, d) = civil_from_days((ms - 5 * 3_600_000).div_euclid(DAY_MS));
    format!("{y:04}-{m:02}-{d:02}")
}

fn coding(system: &str, code: &str, display: &str) -> Value {
    json!({ "system": system, "code": code, "display": display })
}

fn concept(system: &str, code: &str, display: &str) -> Value {
    json!({ "coding": [coding(system, code, display)], "text": display })
}

fn reference(resource_type: &str, id: &str) -> Value {
    json!({ "reference": format!("{resource_type}/{id}") })
}

fn referenced(resource_type: &str, id: &str, display: &str) -> Value {
    json!({ "reference": format!("{resource_type}/{id}"), "display": display })
}

fn money(value: f64) -> Value {
    json!({ "value": value, "currency": "USD" })
}

const SNOMED: &str = "http://snomed.info/sct";
const LOINC: &str = "http://loinc.org";
const UCUM: &str = "http://unitsofmeasure.org";

const GIVEN_MALE: [&str; 12] = [
    "Abram", "Otis", "Jeffery", "Carlos", "Hung", "Malik", "Kenneth", "Ruben", "Tyrell", "Jon",
    "Elias", "Dewey",
];
const GIVEN_FEMALE: [&str; 12] = [
    "Lettie", "Darlena", "Maria", "Shanice", "Mei", "Ana", "Kathryn", "Noelia", "Ivy", "Rosa",
    "Yuko", "Beth",
];
const FAMILY: [&str; 16] = [
    "Lemke",
    "Ortiz",
    "Boyle",
    "Christiansen",
    "Nguyen",
    "Okafor",
    "Schmidt",
    "Haley",
    "Rempel",
    "Kuhn",
    "Abbott",
    "Gusikowski",
    "Marquez",
    "Olson",
    "Fay",
    "Wunsch",
];
const STREETS: [&str; 10] = [
    "Nikolaus Gate",
    "Hospital Road",
    "Kemmer Lane",
    "Rau Park",
    "Wolf Way",
    "Boyer Course",
    "Mills Port",
    "Lind Rapid",
    "Hills Ramp",
    "Collier Ville",
];
/// (city, postal code, latitude, longitude)
const CITIES: [(&str, &str, f64, f64); 8] = [
    ("Boston", "02108", 42.3601, -71.0589),
    ("Easthampton", "01027", 42.2668, -72.6690),
    ("Worcester", "01608", 42.2626, -71.8023),
    ("Springfield", "01103", 42.1015, -72.5898),
    ("Leominster", "01453", 42.5251, -71.7598),
    ("Lowell", "01852", 42.6334, -71.3162),
    ("Cambridge", "02139", 42.3736, -71.1097),
    ("Holyoke", "01040", 42.2043, -72.6162),
];
/// (OMB race code, display, ethnicity code, ethnicity display)
const RACES: [(&str, &str); 5] = [
    ("2106-3", "White"),
    ("2054-5", "Black or African American"),
    ("2028-9", "Asian"),
    ("1002-5", "American Indian or Alaska Native"),
    ("2131-1", "Other"),
];

/// A hospital and its practitioner.
struct Provider {
    org_id: Arc<str>,
    org_name: String,
    practitioner_id: Arc<str>,
    practitioner_name: String,
}

impl Provider {
    fn new(rng: &mut Rng, n: usize, out: &mut Builder) -> Self {
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
struct Cohorts {
    all: Vec<Arc<str>>,
    diabetes: Vec<Arc<str>>,
    seniors: Vec<Arc<str>>,
}

impl Cohorts {
    fn write(&self, out: &mut Builder) {
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

/// (SNOMED code, display, is chronic, RxNorm code and display of its usual medication)
const CONDITIONS: [(&str, &str, bool, &str, &str); 10] = [
    (
        "44054006",
        "Diabetes mellitus type 2 (disorder)",
        true,
        "860975",
        "24 HR Metformin hydrochloride 500 MG Extended Release Oral Tablet",
    ),
    (
        "38341003",
        "Hypertension (disorder)",
        true,
        "314076",
        "lisinopril 10 MG Oral Tablet",
    ),
    (
        "195662009",
        "Acute viral pharyngitis (disorder)",
        false,
        "313782",
        "Acetaminophen 325 MG Oral Tablet",
    ),
    (
        "10509002",
        "Acute bronchitis (disorder)",
        false,
        "1043400",
        "Acetaminophen 21.7 MG/ML / Dextromethorphan Hydrobromide 1 MG/ML Oral Solution",
    ),
    (
        "40055000",
        "Chronic sinusitis (disorder)",
        true,
        "308182",
        "Amoxicillin 250 MG Oral Capsule",
    ),
    (
        "444814009",
        "Viral sinusitis (disorder)",
        false,
        "313782",
        "Acetaminophen 325 MG Oral Tablet",
    ),
    (
        "162864005",
        "Body mass index 30+ - obesity (finding)",
        true,
        "",
        "",
    ),
    ("15777000", "Prediabetes", true, "", ""),
    (
        "55822004",
        "Hyperlipidemia",
        true,
        "316672",
        "Simvastatin 10 MG Oral Tablet",
    ),
    (
        "36971009",
        "Sinusitis (disorder)",
        false,
        "308182",
        "Amoxicillin 250 MG Oral Capsule",
    ),
];

/// (code, display, class code, class display, minutes)
const ENCOUNTER_KINDS: [(&str, &str, &str, &str, i64); 4] = [
    (
        "162673000",
        "General examination of patient (procedure)",
        "AMB",
        "ambulatory",
        15,
    ),
    (
        "185345009",
        "Encounter for symptom",
        "AMB",
        "ambulatory",
        15,
    ),
    (
        "50849002",
        "Emergency room admission (procedure)",
        "EMER",
        "emergency",
        120,
    ),
    (
        "32485007",
        "Hospital admission",
        "IMP",
        "inpatient",
        2 * 24 * 60,
    ),
];

/// One patient's record being written.
struct PatientLife<'a> {
    rng: &'a mut Rng,
    provider: &'a Provider,
    out: &'a mut Builder,
    id: Arc<str>,
    name: String,
    insurer: &'static str,
    active_conditions: Vec<(Arc<str>, usize)>,
    has_diabetes: bool,
}

/// The clinical event an encounter produced, for its Claim and ExplanationOfBenefit.
struct Billed {
    code: Value,
    charge: f64,
    diagnosis: Option<Arc<str>>,
}

impl<'a> PatientLife<'a> {
    fn generate(
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
    fn updated(&mut self, at: i64) -> i64 {
        (at + self.rng.range(60_000, 3 * DAY_MS)).min(POPULATION_END_MS - 1000)
    }

    fn subject(&self) -> Value {
        reference("Patient", &self.id)
    }

    fn push(&mut self, id: &Arc<str>, updated: i64, value: Value) {
        let patient = Arc::clone(&self.id);
        self.out.push(id, Some(&patient), updated, value);
    }

    fn patient(
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

    fn allergy(&mut self, birth: i64) {
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

    fn encounter(&mut self, kind: usize, start: i64, birth: i64) {
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
    fn condition(
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

    fn medication(
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

    fn immunization(&mut self, encounter: &Arc<str>, at: i64) -> Billed {
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

    fn procedure(&mut self, encounter: &Arc<str>, start: i64, end: i64, kind: usize) -> Billed {
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

    fn observation(
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

    fn vital_signs(&mut self, encounter: &Arc<str>, at: i64, birth: i64) {
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

    fn lipid_panel(&mut self, encounter: &Arc<str>, at: i64) {
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

    fn claims(&mut self, encounter: &Arc<str>, start: i64, end: i64, billed: &[Billed]) {
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

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

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
