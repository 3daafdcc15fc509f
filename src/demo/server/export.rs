//! `$export` on the demo server: kick-off parameters (GET query or POST `Parameters`), strict
//! validation, selecting the resources of a job, the manifest, and output file bodies.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use serde_json::{Map, Value, json};

use super::{Faults, HOSTILE_TYPES, KickoffLevel, Outcome};
use crate::demo::generate::Resource;
use crate::r4::is_resource_type;
use crate::time::{format_instant, parse_instant};

/// Types outside the Patient compartment among those the demo holds.
const NOT_IN_PATIENT_COMPARTMENT: [&str; 3] = ["Organization", "Practitioner", "Group"];

/// The `_outputFormat` values the spec requires servers to accept.
const OUTPUT_FORMATS: [&str; 3] = ["application/fhir+ndjson", "application/ndjson", "ndjson"];

/// `_typeFilter` search parameters the demo evaluates: (type or `*`, parameter, element).
const SEARCH_PARAMS: [(&str, &str, &str); 27] = [
    ("*", "_id", "id"),
    ("Patient", "gender", "gender"),
    ("Observation", "code", "code"),
    ("Observation", "category", "category"),
    ("Observation", "status", "status"),
    ("Condition", "code", "code"),
    ("Condition", "clinical-status", "clinicalStatus"),
    ("Condition", "verification-status", "verificationStatus"),
    ("Condition", "category", "category"),
    ("Encounter", "class", "class"),
    ("Encounter", "type", "type"),
    ("Encounter", "status", "status"),
    ("MedicationRequest", "code", "medicationCodeableConcept"),
    ("MedicationRequest", "status", "status"),
    ("MedicationRequest", "intent", "intent"),
    ("Procedure", "code", "code"),
    ("Procedure", "status", "status"),
    ("Immunization", "vaccine-code", "vaccineCode"),
    ("Immunization", "status", "status"),
    ("AllergyIntolerance", "clinical-status", "clinicalStatus"),
    ("AllergyIntolerance", "category", "category"),
    ("AllergyIntolerance", "criticality", "criticality"),
    ("DiagnosticReport", "code", "code"),
    ("DiagnosticReport", "category", "category"),
    ("DiagnosticReport", "status", "status"),
    ("Claim", "status", "status"),
    ("ExplanationOfBenefit", "status", "status"),
];

/// A validated kick-off request.
#[derive(Debug)]
pub(crate) struct ExportRequest {
    pub(crate) level: KickoffLevel,
    /// `_type`, or `None` for every type the token may read.
    pub(crate) types: Option<Vec<String>>,
    since: Option<i64>,
    until: Option<i64>,
    filters: Vec<TypeFilter>,
    /// `_elements`: (type it applies to, or every type; element name).
    elements: Vec<(Option<String>, String)>,
    patients: Option<Vec<String>>,
    /// `allowPartialManifests=true`: the job's manifest pages are released while it runs.
    pub(crate) partial_manifests: bool,
}

/// One `_typeFilter` query: every parameter must match (AND), any value of one parameter may (OR).
#[derive(Debug)]
struct TypeFilter {
    resource_type: String,
    params: Vec<(&'static str, Vec<String>)>,
}

impl TypeFilter {
    fn parse(text: &str) -> Result<Self, Outcome> {
        let (resource_type, query) = text.split_once('?').ok_or_else(|| {
            Outcome::invalid(format!(
                "_typeFilter `{text}` must look like `Type?param=value`"
            ))
        })?;
        if !is_resource_type(resource_type) {
            return Err(Outcome::invalid(format!(
                "_typeFilter `{text}`: `{resource_type}` is not a resource type"
            )));
        }
        let mut params = Vec::new();
        for (name, value) in url::form_urlencoded::parse(query.as_bytes()) {
            let element = SEARCH_PARAMS
                .iter()
                .find(|(t, n, _)| (*t == "*" || *t == resource_type) && *n == name)
                .map(|(_, _, element)| *element)
                .ok_or_else(|| {
                    Outcome::invalid(format!(
                        "_typeFilter `{text}`: search parameter `{name}` is not supported for {resource_type} \
                         (supported: {})",
                        supported_params(resource_type)
                    ))
                })?;
            params.push((element, value.split(',').map(str::to_owned).collect()));
        }
        if params.is_empty() {
            return Err(Outcome::invalid(format!(
                "_typeFilter `{text}` has no search parameters"
            )));
        }
        Ok(Self {
            resource_type: resource_type.to_owned(),
            params,
        })
    }

    fn matches(&self, resource: &Value) -> bool {
        self.params.iter().all(|(element, values)| {
            let mut tokens = Vec::new();
            collect_tokens(resource.get(*element), &mut tokens);
            values.iter().any(|wanted| {
                let (system, code) = match wanted.split_once('|') {
                    Some((s, c)) => (Some(s), c),
                    None => (None, wanted.as_str()),
                };
                tokens.iter().any(|(s, c)| {
                    system
                        .is_none_or(|system| system.is_empty() && s.is_none() || *s == Some(system))
                        && (code.is_empty() || *c == code)
                })
            })
        })
    }
}

fn supported_params(resource_type: &str) -> String {
    search_params(resource_type).collect::<Vec<_>>().join(", ")
}

/// The `_typeFilter` search parameters of `resource_type` (the CapabilityStatement declares them).
pub(super) fn search_params(resource_type: &str) -> impl Iterator<Item = &'static str> {
    SEARCH_PARAMS
        .iter()
        .filter(move |(t, _, _)| *t == "*" || *t == resource_type)
        .map(|(_, n, _)| *n)
}

/// (system, code) pairs of a code, Coding, CodeableConcept or a list of them.
fn collect_tokens<'a>(value: Option<&'a Value>, out: &mut Vec<(Option<&'a str>, &'a str)>) {
    match value {
        Some(Value::String(code)) => out.push((None, code)),
        Some(Value::Array(items)) => items
            .iter()
            .for_each(|item| collect_tokens(Some(item), out)),
        Some(Value::Object(object)) => {
            if let Some(Value::String(code)) = object.get("code") {
                out.push((object.get("system").and_then(Value::as_str), code));
            }
            collect_tokens(object.get("coding"), out);
        }
        _ => {}
    }
}

/// The parameters of a kick-off as (name, value) text pairs, from a query string or a `Parameters`.
pub(crate) type Params = Vec<(String, String)>;

/// Reads a POST body: a FHIR `Parameters` resource.
pub(crate) fn params_from_body(body: &[u8]) -> Result<Params, Outcome> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| Outcome::invalid(format!("the kick-off body is not JSON: {e}")))?;
    if value["resourceType"] != "Parameters" {
        return Err(Outcome::invalid(
            "the kick-off body must be a FHIR Parameters resource",
        ));
    }
    let mut params = Vec::new();
    for parameter in value["parameter"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
    {
        let name = parameter["name"]
            .as_str()
            .ok_or_else(|| Outcome::invalid("a parameter without `name`"))?;
        let value = match name {
            "patient" => parameter
                .pointer("/valueReference/reference")
                .and_then(Value::as_str),
            "_since" | "_until" => ["valueInstant", "valueDateTime", "valueString"]
                .iter()
                .find_map(|field| parameter[field].as_str()),
            "allowPartialManifests" => parameter["valueBoolean"]
                .as_bool()
                .map(|b| if b { "true" } else { "false" }),
            _ => parameter["valueString"].as_str(),
        };
        let value = value.ok_or_else(|| {
            let expected = match name {
                "patient" => "valueReference",
                "_since" | "_until" => "valueInstant",
                "allowPartialManifests" => "valueBoolean",
                _ => "valueString",
            };
            Outcome::invalid(format!("parameter `{name}` needs a {expected}"))
        })?;
        params.push((name.to_owned(), value.to_owned()));
    }
    Ok(params)
}

/// Validates kick-off parameters. `lenient` (`Prefer: handling=lenient`) ignores unknown ones.
pub(crate) fn parse_request(
    level: KickoffLevel,
    params: &Params,
    post: bool,
    lenient: bool,
) -> Result<ExportRequest, Outcome> {
    let mut request = ExportRequest {
        level,
        types: None,
        since: None,
        until: None,
        filters: Vec::new(),
        elements: Vec::new(),
        patients: None,
        partial_manifests: false,
    };
    let instant = |name: &str, value: &str| {
        parse_instant(value).ok_or_else(|| {
            Outcome::invalid(format!(
                "{name} `{value}` is not a FHIR instant (e.g. 2024-01-01T00:00:00Z)"
            ))
        })
    };
    let mut seen = HashSet::new();
    for (name, value) in params {
        let repeatable = matches!(
            name.as_str(),
            "_typeFilter" | "patient" | "_type" | "_elements"
        );
        if !repeatable && !seen.insert(name.as_str()) {
            return Err(Outcome::invalid(format!(
                "parameter `{name}` given more than once"
            )));
        }
        match name.as_str() {
            "_outputFormat" if OUTPUT_FORMATS.contains(&value.as_str()) => {}
            "_outputFormat" => {
                return Err(Outcome::invalid(format!(
                    "_outputFormat `{value}` is not supported (use {})",
                    OUTPUT_FORMATS.join(", ")
                )));
            }
            "_since" => request.since = Some(instant(name, value)?),
            "_until" => request.until = Some(instant(name, value)?),
            "_type" => {
                let types = request.types.get_or_insert_with(Vec::new);
                for ty in value.split(',').map(str::trim) {
                    if !is_resource_type(ty) {
                        return Err(Outcome::invalid(format!(
                            "_type: `{ty}` is not a FHIR R4 resource type"
                        )));
                    }
                    if !types.iter().any(|t| t == ty) {
                        types.push(ty.to_owned());
                    }
                }
            }
            "_typeFilter" => request.filters.push(TypeFilter::parse(value)?),
            "_elements" => {
                for element in value.split(',').map(str::trim) {
                    let (ty, name) = match element.split_once('.') {
                        Some((ty, name)) if is_resource_type(ty) => (Some(ty.to_owned()), name),
                        _ => (None, element),
                    };
                    let simple = name.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
                        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
                    if !simple {
                        return Err(Outcome::invalid(format!(
                            "_elements `{element}`: only top-level elements (`Type.element` or `element`) are supported"
                        )));
                    }
                    request.elements.push((ty, name.to_owned()));
                }
            }
            "patient" if !post => {
                return Err(Outcome::invalid(
                    "the `patient` parameter is only supported in a POST kick-off",
                ));
            }
            "patient" if request.level == KickoffLevel::System => {
                return Err(Outcome::invalid(
                    "the `patient` parameter applies to patient and group level exports",
                ));
            }
            "patient" => {
                let id = value
                    .strip_prefix("Patient/")
                    .filter(|id| !id.is_empty() && !id.contains('/'))
                    .ok_or_else(|| {
                        Outcome::invalid(format!(
                            "patient reference `{value}` must look like `Patient/id`"
                        ))
                    })?;
                request
                    .patients
                    .get_or_insert_with(Vec::new)
                    .push(id.to_owned());
            }
            "allowPartialManifests" => {
                request.partial_manifests = match value.as_str() {
                    "true" => true,
                    "false" => false,
                    _ => {
                        return Err(Outcome::invalid(format!(
                            "allowPartialManifests `{value}` is not a boolean"
                        )));
                    }
                }
            }
            "includeAssociatedData" => {
                // The demo holds no Provenance: supported values add nothing; others are refused.
                for v in value.split(',') {
                    if !matches!(
                        v,
                        "LatestProvenanceResources" | "RelevantProvenanceResources"
                    ) {
                        return Err(Outcome::invalid(format!(
                            "includeAssociatedData value `{v}` is not supported"
                        )));
                    }
                }
            }
            _ if lenient => {
                tracing::debug!(%name, "demo server ignores an unknown kick-off parameter")
            }
            _ => {
                return Err(Outcome::invalid(format!(
                    "unknown kick-off parameter `{name}` (send `Prefer: handling=lenient` to have it ignored)"
                )));
            }
        }
    }
    if let (Some(since), Some(until)) = (request.since, request.until)
        && until < since
    {
        return Err(Outcome::invalid("_until is before _since"));
    }
    if request.level != KickoffLevel::System
        && let Some(ty) = request
            .types
            .iter()
            .flatten()
            .find(|t| NOT_IN_PATIENT_COMPARTMENT.contains(&t.as_str()))
    {
        return Err(Outcome::invalid(format!(
            "_type {ty} is not in the Patient compartment, export it at system level"
        )));
    }
    if let Some(types) = &request.types
        && let Some(filter) = request
            .filters
            .iter()
            .find(|f| !types.contains(&f.resource_type))
    {
        return Err(Outcome::invalid(format!(
            "_typeFilter names {} which is not among the requested _type",
            filter.resource_type
        )));
    }
    Ok(request)
}

/// Which file of a job a line belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FileKind {
    Output,
    Deleted,
    Error,
}

/// One file of a finished job: its lines, kept until the job is deleted.
#[derive(Debug)]
pub(crate) struct JobFile {
    pub(crate) kind: FileKind,
    pub(crate) resource_type: String,
    pub(crate) lines: Vec<Arc<str>>,
    pub(crate) len: u64,
    /// Whether the download-break fault already hit this file.
    pub(crate) broken: AtomicBool,
    /// Whether a download of it was started.
    pub(crate) fetched: AtomicBool,
    /// Added to its line count in the manifest ([`Faults::count_off_by_one`]).
    count_error: u64,
}

impl JobFile {
    fn new(kind: FileKind, resource_type: &str, lines: Vec<Arc<str>>) -> Self {
        let mut file = Self {
            kind,
            resource_type: resource_type.to_owned(),
            lines: Vec::new(),
            len: 0,
            broken: AtomicBool::new(false),
            fetched: AtomicBool::new(false),
            count_error: 0,
        };
        file.set_lines(lines);
        file
    }

    fn set_lines(&mut self, lines: Vec<Arc<str>>) {
        self.len = lines.iter().map(|l| l.len() as u64 + 1).sum();
        self.lines = lines;
    }

    /// What the manifest's `count` says: its resources (blank lines are none), off by the
    /// count fault.
    fn count(&self) -> u64 {
        let resources = self.lines.iter().filter(|l| !l.trim().is_empty()).count();
        resources as u64 + self.count_error
    }

    /// Claims the one break this file gets under the `break_download_after` fault.
    pub(crate) fn take_break(&self) -> bool {
        !self.broken.swap(true, Ordering::SeqCst)
    }

    /// The bytes `start..end` of the file, in chunks of about `CHUNK` bytes.
    pub(crate) fn chunks(
        self: &Arc<Self>,
        start: u64,
        end: u64,
    ) -> impl Iterator<Item = Bytes> + use<> {
        const CHUNK: usize = 64 * 1024;
        let file = Arc::clone(self);
        let mut line = 0;
        let mut line_start = 0u64;
        let mut pos = start;
        std::iter::from_fn(move || {
            let mut chunk = Vec::with_capacity(CHUNK);
            while pos < end && chunk.len() < CHUNK {
                // Advance to the line holding `pos`.
                while line_start + (file.lines[line].len() as u64) < pos {
                    line_start += file.lines[line].len() as u64 + 1;
                    line += 1;
                }
                let text = file.lines[line].as_bytes();
                let offset = (pos - line_start) as usize;
                let available = (text.len() + 1 - offset) as u64;
                let take = available
                    .min(end - pos)
                    .min((CHUNK - chunk.len()).max(1) as u64) as usize;
                let piece_end = offset + take;
                chunk.extend_from_slice(&text[offset..piece_end.min(text.len())]);
                if piece_end > text.len() {
                    chunk.push(b'\n');
                }
                pos += take as u64;
            }
            (!chunk.is_empty()).then(|| Bytes::from(chunk))
        })
    }
}

/// A deleted resource, remembered for `deleted[]` of later `_since` exports.
#[derive(Debug, Clone)]
pub(crate) struct Deletion {
    pub(crate) resource_type: Arc<str>,
    pub(crate) id: Arc<str>,
    pub(crate) patient: Option<Arc<str>>,
    pub(crate) at: i64,
}

/// What a job selects from the store, snapshotted at kick-off.
#[derive(Debug)]
pub(crate) struct Snapshot {
    pub(crate) types: Vec<(Arc<str>, Vec<Arc<Resource>>)>,
    /// (type, id, patient, deletion time)
    pub(crate) deleted: Vec<Deletion>,
    /// Members of the group exported, for a group-level export.
    pub(crate) group_members: Option<HashSet<String>>,
}

/// Runs a job: selects and filters resources, splits them into files, writes the manifest.
pub(crate) fn run(
    request: &ExportRequest,
    snapshot: Snapshot,
    readable: impl Fn(&str) -> bool,
    page_size: usize,
    faults: &Faults,
) -> Vec<JobFile> {
    let patients: Option<HashSet<&str>> = match (&request.patients, &snapshot.group_members) {
        (Some(ids), Some(members)) => Some(
            ids.iter()
                .map(String::as_str)
                .filter(|id| members.contains(*id))
                .collect(),
        ),
        (Some(ids), None) => Some(ids.iter().map(String::as_str).collect()),
        (None, Some(members)) => Some(members.iter().map(String::as_str).collect()),
        (None, None) => None,
    };
    let compartment_only = request.level != KickoffLevel::System;
    let in_scope = |resource_type: &str, patient: Option<&str>, updated: i64| {
        (!compartment_only || patient.is_some())
            && patients
                .as_ref()
                .is_none_or(|set| patient.is_some_and(|p| set.contains(p)))
            && request.since.is_none_or(|since| updated > since)
            && request.until.is_none_or(|until| updated <= until)
            && request
                .types
                .as_ref()
                .map_or(readable(resource_type), |types| {
                    types.iter().any(|t| t == resource_type)
                })
    };
    let mut files = Vec::new();
    let mut stored_types: Vec<&str> = snapshot.types.iter().map(|(t, _)| &**t).collect();
    if let Some(types) = &request.types {
        stored_types.sort_by_key(|t| types.iter().position(|r| r == t));
    }
    for resource_type in stored_types {
        let resources = &snapshot
            .types
            .iter()
            .find(|(t, _)| &**t == resource_type)
            .expect("listed")
            .1;
        let filters: Vec<&TypeFilter> = request
            .filters
            .iter()
            .filter(|f| f.resource_type == resource_type && !faults.filters_ignored)
            .collect();
        // The over-filtering fault: a filtered type gets nothing.
        let overfiltered = faults.filters_overfilter
            && request
                .filters
                .iter()
                .any(|f| f.resource_type == resource_type);
        let elements: Vec<&str> = request
            .elements
            .iter()
            .filter(|(t, _)| t.as_deref().is_none_or(|t| t == resource_type))
            .map(|(_, e)| e.as_str())
            .collect();
        let mut lines = Vec::new();
        for resource in resources.iter().filter(|_| !overfiltered) {
            if !in_scope(
                resource_type,
                resource.patient_id(),
                resource.last_updated(),
            ) {
                continue;
            }
            if filters.is_empty() && elements.is_empty() {
                lines.push(resource.json_arc());
                continue;
            }
            let value: Value =
                serde_json::from_str(resource.json()).expect("stored resources are JSON");
            if !filters.is_empty() && !filters.iter().any(|f| f.matches(&value)) {
                continue;
            }
            lines.push(if elements.is_empty() {
                resource.json_arc()
            } else {
                subset(value, &elements).into()
            });
        }
        for page in lines.chunks(page_size.max(1)) {
            files.push(JobFile::new(FileKind::Output, resource_type, page.to_vec()));
        }
    }
    if faults.malformed_line
        && let Some(file) = files.first_mut()
    {
        // Same line count, one line cut short: the client must report file and line.
        let mut lines = file.lines.clone();
        lines[0] = lines[0][..lines[0].len() / 2].into();
        file.set_lines(lines);
    }
    if faults.blank_lines {
        let blank: Arc<str> = " \r".into();
        for file in files.iter_mut().filter(|f| f.kind == FileKind::Output) {
            let lines = file
                .lines
                .iter()
                .flat_map(|l| [Arc::clone(l), Arc::clone(&blank)]);
            file.set_lines(lines.collect());
        }
    }
    if let Some(failed) = &faults.failed_type {
        files.retain(|f| f.resource_type != *failed);
    }
    if faults.count_off_by_one
        && let Some(file) = files.first_mut()
    {
        file.count_error = 1;
    }
    if faults.hostile_type_names {
        let lines = files.first().map(|f| f.lines.clone()).unwrap_or_default();
        for resource_type in HOSTILE_TYPES {
            files.push(JobFile::new(FileKind::Output, resource_type, lines.clone()));
        }
    }
    if request.since.is_some() {
        let deleted: Vec<Arc<str>> = snapshot
            .deleted
            .iter()
            .filter(|d| in_scope(&d.resource_type, d.patient.as_deref(), d.at))
            .map(|d| {
                json!({ "resourceType": "Bundle", "type": "transaction", "meta": { "lastUpdated": format_instant(d.at) },
                    "entry": [{ "request": { "method": "DELETE", "url": format!("{}/{}", d.resource_type, d.id) } }] })
                .to_string()
                .into()
            })
            .collect();
        for page in deleted.chunks(page_size.max(1)) {
            files.push(JobFile::new(FileKind::Deleted, "Bundle", page.to_vec()));
        }
        if faults.duplicate_tombstones && !deleted.is_empty() {
            files.push(JobFile::new(FileKind::Deleted, "Bundle", deleted));
        }
    }
    if let Some(failed) = &faults.failed_type {
        let outcome = json!({ "resourceType": "OperationOutcome", "issue": [{ "severity": "error", "code": "exception",
            "diagnostics": format!("demo fault: the {failed} resources could not be exported"), "expression": [failed] }] });
        files.push(JobFile::new(
            FileKind::Error,
            "OperationOutcome",
            vec![outcome.to_string().into()],
        ));
    }
    if faults.error_file {
        let outcome = json!({ "resourceType": "OperationOutcome", "issue": [{ "severity": "error", "code": "processing",
            "diagnostics": "demo fault: some resources could not be exported" }] });
        files.push(JobFile::new(
            FileKind::Error,
            "OperationOutcome",
            vec![outcome.to_string().into()],
        ));
    }
    files
}

/// `_elements`: keeps the mandatory elements and the listed ones, and tags the resource SUBSETTED.
fn subset(value: Value, elements: &[&str]) -> String {
    let Value::Object(object) = value else {
        return value.to_string();
    };
    let mut kept: Map<String, Value> = object
        .into_iter()
        .filter(|(k, _)| {
            matches!(k.as_str(), "resourceType" | "id" | "meta") || elements.contains(&k.as_str())
        })
        .collect();
    let meta = kept.entry("meta").or_insert_with(|| json!({}));
    if let Some(meta) = meta.as_object_mut() {
        let tag = json!({ "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue", "code": "SUBSETTED" });
        if let Some(tags) = meta
            .entry("tag")
            .or_insert_with(|| json!([]))
            .as_array_mut()
        {
            tags.push(tag);
        }
    }
    Value::Object(kept).to_string()
}

/// The completion manifest of a job, as pages of at most `page_entries` files each (output,
/// then deleted, then error files), every page but the last linking to the next (`link`
/// rel=`next`). A job without files has one empty page.
pub(crate) fn manifest_pages(
    request_url: &str,
    transaction_time: i64,
    requires_token: bool,
    files: &[JobFile],
    page_entries: usize,
    file_url: impl Fn(usize) -> String,
    page_url: impl Fn(usize) -> String,
) -> Vec<Value> {
    let entries: Vec<(FileKind, Value)> = files
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let entry = json!({ "type": f.resource_type, "url": file_url(i), "count": f.count() });
            (f.kind, entry)
        })
        .collect();
    let chunks: Vec<&[(FileKind, Value)]> = if entries.is_empty() {
        vec![&[]]
    } else {
        entries.chunks(page_entries.max(1)).collect()
    };
    let last = chunks.len() - 1;
    chunks
        .into_iter()
        .enumerate()
        .map(|(n, chunk)| {
            let of = |kind: FileKind| -> Vec<&Value> {
                chunk
                    .iter()
                    .filter(|(k, _)| *k == kind)
                    .map(|(_, e)| e)
                    .collect()
            };
            let mut page = json!({
                "transactionTime": format_instant(transaction_time),
                "request": request_url,
                "requiresAccessToken": requires_token,
                "output": of(FileKind::Output),
                "deleted": of(FileKind::Deleted),
                "error": of(FileKind::Error),
            });
            if n < last {
                page["link"] = json!([{ "relation": "next", "url": page_url(n + 1) }]);
            }
            page
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> Params {
        pairs
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn type_filter_tokens() {
        let filter =
            TypeFilter::parse("Observation?code=http://loinc.org|8302-2,29463-7&status=final")
                .unwrap();
        let obs = json!({"resourceType": "Observation", "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "8302-2"}]}});
        assert!(filter.matches(&obs));
        let other = json!({"status": "final", "code": {"coding": [{"system": "http://x", "code": "8302-2"}]}});
        assert!(!filter.matches(&other));
        assert!(
            TypeFilter::parse("Observation?value-quantity=5")
                .unwrap_err()
                .diagnostics()
                .contains("not supported")
        );
        assert!(TypeFilter::parse("Observation").is_err());
    }

    #[test]
    fn validation() {
        let ok = parse_request(
            KickoffLevel::System,
            &params(&[
                ("_type", "Patient,Observation"),
                ("_since", "2024-01-01T00:00:00Z"),
            ]),
            false,
            false,
        )
        .unwrap();
        assert_eq!(ok.types.unwrap(), ["Patient", "Observation"]);
        for bad in [
            params(&[("_type", "Patiens")]),
            params(&[("_since", "2024-01-01")]),
            params(&[("_outputFormat", "text/csv")]),
            params(&[("_count", "5")]),
            params(&[("_elements", "name.given")]),
            params(&[("_type", "Patient"), ("_typeFilter", "Observation?code=1")]),
        ] {
            assert!(
                parse_request(KickoffLevel::System, &bad, false, false).is_err(),
                "{bad:?}"
            );
        }
        assert!(
            parse_request(
                KickoffLevel::System,
                &params(&[("_count", "5")]),
                false,
                true
            )
            .is_ok()
        );
        assert!(
            parse_request(
                KickoffLevel::Patient,
                &params(&[("patient", "Patient/1")]),
                false,
                false
            )
            .is_err()
        );
        assert!(
            parse_request(
                KickoffLevel::Patient,
                &params(&[("patient", "Patient/1")]),
                true,
                false
            )
            .is_ok()
        );
        assert!(
            parse_request(
                KickoffLevel::Patient,
                &params(&[("_type", "Organization")]),
                false,
                false
            )
            .is_err()
        );
    }

    #[test]
    fn chunks_cover_ranges() {
        let file = Arc::new(JobFile::new(
            FileKind::Output,
            "X",
            vec!["abc".into(), "".into(), "defgh".into()],
        ));
        let all: Vec<u8> = file.chunks(0, file.len).flatten().collect();
        assert_eq!(all, b"abc\n\ndefgh\n");
        for start in 0..file.len {
            for end in start..=file.len {
                let part: Vec<u8> = file.chunks(start, end).flatten().collect();
                assert_eq!(part, &all[start as usize..end as usize], "{start}..{end}");
            }
        }
    }

    #[test]
    fn elements_subset() {
        let out = subset(
            json!({"resourceType": "Patient", "id": "1", "gender": "male", "name": []}),
            &["gender"],
        );
        let v: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["gender"], "male");
        assert!(v.get("name").is_none());
        assert_eq!(v["meta"]["tag"][0]["code"], "SUBSETTED");
    }
}
