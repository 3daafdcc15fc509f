//! What the generator draws from: given and family names, streets, cities, races, the
//! conditions a patient may have (with their usual medication) and the kinds of encounter.

pub(super) const GIVEN_MALE: [&str; 12] = [
    "Abram", "Otis", "Jeffery", "Carlos", "Hung", "Malik", "Kenneth", "Ruben", "Tyrell", "Jon",
    "Elias", "Dewey",
];
pub(super) const GIVEN_FEMALE: [&str; 12] = [
    "Lettie", "Darlena", "Maria", "Shanice", "Mei", "Ana", "Kathryn", "Noelia", "Ivy", "Rosa",
    "Yuko", "Beth",
];
pub(super) const FAMILY: [&str; 16] = [
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
pub(super) const STREETS: [&str; 10] = [
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
pub(super) const CITIES: [(&str, &str, f64, f64); 8] = [
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
pub(super) const RACES: [(&str, &str); 5] = [
    ("2106-3", "White"),
    ("2054-5", "Black or African American"),
    ("2028-9", "Asian"),
    ("1002-5", "American Indian or Alaska Native"),
    ("2131-1", "Other"),
];

/// (SNOMED code, display, is chronic, RxNorm code and display of its usual medication)
pub(super) const CONDITIONS: [(&str, &str, bool, &str, &str); 10] = [
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
pub(super) const ENCOUNTER_KINDS: [(&str, &str, &str, &str, i64); 4] = [
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
