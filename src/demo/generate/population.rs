//! What a generator makes: [`Population`], every [`Resource`] of every type as one NDJSON line
//! each, and the [`Builder`] that serialises each resource once, as it is made (reusing one
//! buffer), and files it under its type.

use std::io::Write;
use std::sync::Arc;

use serde_json::{Value, json};

use super::GENERATED_TYPES;
use crate::time::format_instant;

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
    pub(super) types: Vec<(Arc<str>, Vec<Arc<Resource>>)>,
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

/// Collects resources per type.
pub(super) struct Builder {
    pub(super) types: Vec<(Arc<str>, Vec<Arc<Resource>>)>,
    /// Serialization buffer, reused: growing a fresh String per resource costs more than the JSON.
    pub(super) buffer: Vec<u8>,
}

impl Builder {
    /// A builder of [`GENERATED_TYPES`] and the `extra` types, in that order.
    pub(super) fn new(extra: &[&str]) -> Self {
        let types = GENERATED_TYPES
            .iter()
            .chain(extra)
            .map(|t| (Arc::from(*t), Vec::new()))
            .collect();
        Self {
            types,
            buffer: Vec::new(),
        }
    }

    /// Stores `value`, whose `meta` (first after `id`) gets `lastUpdated`.
    pub(super) fn push(
        &mut self,
        id: &Arc<str>,
        patient: Option<&Arc<str>>,
        last_updated: i64,
        value: Value,
    ) {
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
