//! What fhirflight knows of FHIR R4 itself, shipped with the crate (never fetched at run time):
//! the resource types, their top-level elements, the type model FHIRPath reads, and the rule a type name from outside must pass before it names anything.
//!
//! A resource type name from a server, a manifest, a folder, the configuration or SQL becomes a
//! table name and a folder of the snapshot store, so [`check_type_name`] admits only the shape
//! of a resource type name (`^[A-Z][A-Za-z]{0,63}$`): no separator, dot or other character that
//! could make a path. It does not insist on [`RESOURCE_TYPES`], since servers of other FHIR
//! versions and custom types are served too.

mod elements;
mod model;
mod resource_types;

pub use elements::ELEMENTS;
pub use model::TYPES;
pub use resource_types::RESOURCE_TYPES;

use crate::error::quoted;
use crate::{Error, Result};

/// The longest resource type name accepted (the longest of R4 has 33 letters).
pub const MAX_TYPE_NAME_LEN: usize = 64;

/// Whether `name` is an R4 resource type (`Patient`; not `patient`, nor the abstract
/// `DomainResource`).
pub fn is_resource_type(name: &str) -> bool {
    RESOURCE_TYPES.binary_search(&name).is_ok()
}

/// The top-level element of the R4 resource type `resource_type` that `name` spells, ignoring
/// ASCII case (`birthdate` -> `birthDate`; choice elements expanded: `valueQuantity`), or `None`
/// (also for a type that is not R4's).
pub fn element(resource_type: &str, name: &str) -> Option<&'static str> {
    let i = ELEMENTS
        .binary_search_by(|(t, _)| t.cmp(&resource_type))
        .ok()?;
    let elements = ELEMENTS[i].1;
    match elements.binary_search(&name) {
        Ok(j) => Some(elements[j]),
        Err(_) => elements
            .iter()
            .copied()
            .find(|e| e.eq_ignore_ascii_case(name)),
    }
}

/// A type of the R4 model, or a backbone element (`Patient.contact`), as FHIRPath sees it.
#[derive(Debug)]
pub struct TypeNode {
    /// The type name, or the path of a backbone element.
    pub key: &'static str,
    /// The type name (`BackboneElement` for a backbone element).
    pub name: &'static str,
    /// The index in [`TYPES`] of the parent type.
    pub parent: Option<u16>,
    /// The elements, sorted by name (choice elements expanded), with the index of their type.
    pub elements: &'static [(&'static str, u16)],
}

/// The index in [`TYPES`] of the type or backbone element `key`.
pub fn type_index(key: &str) -> Option<u16> {
    TYPES
        .binary_search_by(|t| t.key.cmp(key))
        .ok()
        .map(|i| i as u16)
}

/// The type of element `name` of the type at `ty` in [`TYPES`].
pub fn element_type(ty: u16, name: &str) -> Option<u16> {
    let elements = TYPES[usize::from(ty)].elements;
    let i = elements.binary_search_by(|(e, _)| e.cmp(&name)).ok()?;
    Some(elements[i].1)
}

/// Whether the type at `ty` is `name` or derives from it (`Age` is a `Quantity`).
pub fn derives_from(ty: u16, name: &str) -> bool {
    let mut at = Some(ty);
    // The chain is short (Resource is at most four levels up); the bound keeps a cycle harmless.
    for _ in 0..16 {
        let Some(t) = at else { return false };
        let node = &TYPES[usize::from(t)];
        if node.name == name {
            return true;
        }
        at = node.parent;
    }
    false
}

/// `name` when it has the shape of a resource type name: an ASCII capital letter, then up to
/// 63 ASCII letters (`^[A-Z][A-Za-z]{0,63}$`). Anything else, a path above all, is an
/// [`Error::Config`] quoting it (escaped and cut, as it may come from a remote server).
pub fn check_type_name(name: &str) -> Result<&str> {
    let bytes = name.as_bytes();
    let valid = bytes.len() <= MAX_TYPE_NAME_LEN
        && bytes.first().is_some_and(u8::is_ascii_uppercase)
        && bytes.iter().all(u8::is_ascii_alphabetic);
    match valid {
        true => Ok(name),
        false => Err(Error::config(format!(
            "{} is not a resource type name (a capital letter, then at most {} letters)",
            quoted(name),
            MAX_TYPE_NAME_LEN - 1
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_list_is_r4s_concrete_resource_types_sorted() {
        assert_eq!(RESOURCE_TYPES.len(), 146);
        assert!(
            RESOURCE_TYPES.is_sorted_by(|a, b| a < b),
            "sorted, no duplicates"
        );
        for t in [
            "Patient",
            "ExplanationOfBenefit",
            "MedicinalProductPharmaceutical",
        ] {
            assert!(is_resource_type(t), "{t}");
        }
        for t in [
            "Resource",
            "DomainResource",
            "BackboneElement",
            "patient",
            "",
        ] {
            assert!(!is_resource_type(t), "{t}");
        }
        // Every R4 type passes the rule for names from outside.
        for t in RESOURCE_TYPES {
            check_type_name(t).unwrap();
        }
    }

    #[test]
    fn elements_are_each_types_own_with_choices_expanded() {
        assert_eq!(ELEMENTS.len(), RESOURCE_TYPES.len());
        assert!(ELEMENTS.iter().map(|(t, _)| t).eq(RESOURCE_TYPES.iter()));
        for (t, elements) in ELEMENTS {
            assert!(elements.is_sorted_by(|a, b| a < b), "{t}");
            for inherited in ["id", "meta", "implicitRules", "language"] {
                assert!(elements.contains(&inherited), "{t}.{inherited}");
            }
        }
        assert_eq!(element("Patient", "gender"), Some("gender"));
        assert_eq!(element("Patient", "BIRTHDATE"), Some("birthDate"));
        assert_eq!(
            element("Observation", "valueQuantity"),
            Some("valueQuantity")
        );
        assert_eq!(element("Observation", "value"), None);
        assert_eq!(element("Patient", "gendr"), None);
        assert_eq!(element("Patient", "status"), None);
        assert_eq!(element("NotAType", "id"), None);
    }

    #[test]
    fn the_model_knows_element_types_backbones_and_parents() {
        assert!(TYPES.is_sorted_by(|a, b| a.key < b.key));
        let patient = type_index("Patient").unwrap();
        let gender = element_type(patient, "gender").unwrap();
        assert_eq!(TYPES[usize::from(gender)].name, "code");
        assert!(derives_from(gender, "string") && !derives_from(gender, "uri"));
        let contact = element_type(patient, "contact").unwrap();
        assert_eq!(TYPES[usize::from(contact)].key, "Patient.contact");
        assert!(derives_from(contact, "BackboneElement"));
        let obs = type_index("Observation").unwrap();
        let age = element_type(obs, "valueQuantity").unwrap();
        assert!(derives_from(age, "Quantity"));
        assert!(derives_from(patient, "DomainResource") && derives_from(patient, "Resource"));
        // An element defined elsewhere points to that definition.
        let item = type_index("Questionnaire.item").unwrap();
        assert_eq!(element_type(item, "item"), Some(item));
    }

    #[test]
    fn type_names_are_a_capital_then_letters() {
        let longest = format!("A{}", "b".repeat(63));
        for name in ["Patient", "X", "MyCustomType", longest.as_str()] {
            assert_eq!(check_type_name(name).unwrap(), name);
        }
        let too_long = format!("A{}", "b".repeat(64));
        let rejected = [
            "",
            "patient",
            "Pat1ent",
            "Patient/..",
            "../../../victim",
            "Patient/../x",
            "..",
            "Patient.ndjson",
            "Patient ",
            "Patient\0",
            "Pätient",
            "Ünicode",
            "PatientＡ", // a fullwidth letter
            too_long.as_str(),
        ];
        for name in rejected {
            assert!(check_type_name(name).is_err(), "{name:?} accepted");
        }
    }

    #[test]
    fn the_error_quotes_the_name_escaped_and_cut() {
        let err = check_type_name("../../../victim").unwrap_err().to_string();
        assert_eq!(
            err,
            "configuration: \"../../../victim\" is not a resource type name \
             (a capital letter, then at most 63 letters)"
        );
        let err = check_type_name("a\nb\u{1b}[31m").unwrap_err().to_string();
        assert!(err.contains(r#""a\nb\u{1b}[31m""#), "{err}");
        let long = "x".repeat(10_000);
        let err = check_type_name(&long).unwrap_err().to_string();
        assert!(err.len() < 300, "{err}");
        assert!(err.contains("…"), "{err}");
    }
}
