//! What to export: level and parameters, and their two encodings (GET query, POST `Parameters`).

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use url::Url;

use crate::smart::join;
use crate::{Error, Result};

/// Which resources an export covers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ExportLevel {
    /// Everything on the server: `[base]/$export`.
    System,
    /// All patients and their compartments: `[base]/Patient/$export`.
    Patient,
    /// The members of one Group and their compartments: `[base]/Group/{id}/$export`.
    Group(String),
}

impl std::str::FromStr for ExportLevel {
    type Err = ParseExportLevelError;

    /// `system`, `patient` or `group:<id>`.
    fn from_str(text: &str) -> std::result::Result<Self, Self::Err> {
        match text {
            "system" => Ok(ExportLevel::System),
            "patient" => Ok(ExportLevel::Patient),
            _ => match text.strip_prefix("group:") {
                Some(id) if !id.is_empty() => Ok(ExportLevel::Group(id.to_owned())),
                _ => Err(ParseExportLevelError(text.to_owned())),
            },
        }
    }
}

/// A text that is none of `system`, `patient` and `group:<id>` ([`ExportLevel`]'s `FromStr`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParseExportLevelError(String);

impl std::fmt::Display for ParseExportLevelError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "`{}`: expected system, patient or group:<id>", self.0)
    }
}

impl std::error::Error for ParseExportLevelError {}

/// How the kick-off request is sent.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum KickoffMethod {
    /// GET, unless a parameter needs POST (`patient`).
    #[default]
    Auto,
    /// GET with query parameters.
    Get,
    /// POST with a FHIR `Parameters` body.
    Post,
}

/// A Bulk Data `$export` request.
///
/// ```
/// use fhirflight::bulk::{ExportLevel, ExportRequest};
/// let request = ExportRequest::new(ExportLevel::Patient)
///     .with_types(["Patient", "Observation"])
///     .with_since("2024-01-01T00:00:00Z")
///     .with_type_filters(["Observation?category=laboratory"]);
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportRequest {
    /// System, patient or group level.
    pub level: ExportLevel,
    /// `_type`: resource types to export (empty: all the server offers).
    pub types: Vec<String>,
    /// `_since`: only resources changed after this FHIR instant.
    pub since: Option<String>,
    /// `_until`: only resources changed up to this FHIR instant.
    pub until: Option<String>,
    /// `_typeFilter`: FHIR search queries such as `MedicationRequest?status=active` (repeatable).
    pub type_filters: Vec<String>,
    /// `_elements`: element names (`Patient.name` or `name`) to keep.
    pub elements: Vec<String>,
    /// `patient`: references (`Patient/123`) to limit a patient or group export to (POST only).
    pub patients: Vec<String>,
    /// `includeAssociatedData`: e.g. `LatestProvenanceResources`.
    pub include_associated_data: Vec<String>,
    /// `_outputFormat`: `application/fhir+ndjson` when unset (the server's default).
    pub output_format: Option<String>,
    /// GET, POST or chosen by the parameters.
    pub method: KickoffMethod,
    /// `allowPartialManifests`: the server may list files while the export still runs, and the
    /// client downloads them at once (Bulk Data v3).
    #[serde(default)]
    pub allow_partial_manifests: bool,
}

impl ExportRequest {
    /// An export of everything at `level`, sent the way its parameters suit.
    pub fn new(level: ExportLevel) -> Self {
        Self {
            level,
            types: Vec::new(),
            since: None,
            until: None,
            type_filters: Vec::new(),
            elements: Vec::new(),
            patients: Vec::new(),
            include_associated_data: Vec::new(),
            output_format: None,
            method: KickoffMethod::Auto,
            allow_partial_manifests: false,
        }
    }

    /// Sets `_type`.
    pub fn with_types<S: Into<String>>(self, types: impl IntoIterator<Item = S>) -> Self {
        Self {
            types: types.into_iter().map(Into::into).collect(),
            ..self
        }
    }

    /// Sets `_since`.
    pub fn with_since(self, since: impl Into<String>) -> Self {
        Self {
            since: Some(since.into()),
            ..self
        }
    }

    /// Sets `_until`.
    pub fn with_until(self, until: impl Into<String>) -> Self {
        Self {
            until: Some(until.into()),
            ..self
        }
    }

    /// Sets `_typeFilter`.
    pub fn with_type_filters<S: Into<String>>(self, filters: impl IntoIterator<Item = S>) -> Self {
        Self {
            type_filters: filters.into_iter().map(Into::into).collect(),
            ..self
        }
    }

    /// Sets `_elements`.
    pub fn with_elements<S: Into<String>>(self, elements: impl IntoIterator<Item = S>) -> Self {
        Self {
            elements: elements.into_iter().map(Into::into).collect(),
            ..self
        }
    }

    /// Sets `patient` (`Patient/123` or a bare id), which makes the kick-off a POST.
    pub fn with_patients<S: Into<String>>(self, patients: impl IntoIterator<Item = S>) -> Self {
        Self {
            patients: patients.into_iter().map(Into::into).collect(),
            ..self
        }
    }

    /// Sets `includeAssociatedData`.
    pub fn with_include_associated_data<S: Into<String>>(
        self,
        values: impl IntoIterator<Item = S>,
    ) -> Self {
        Self {
            include_associated_data: values.into_iter().map(Into::into).collect(),
            ..self
        }
    }

    /// Sets `_outputFormat`.
    pub fn with_output_format(self, format: impl Into<String>) -> Self {
        Self {
            output_format: Some(format.into()),
            ..self
        }
    }

    /// Sets the kick-off method.
    pub fn with_method(self, method: KickoffMethod) -> Self {
        Self { method, ..self }
    }

    /// Sets `allowPartialManifests`: the server may hand out files while the export runs (in
    /// manifests of "in progress" status responses, linked by `next`), and
    /// [`export_to_dir`](super::BulkClient::export_to_dir) starts downloading them at once. A
    /// server that does not know the parameter may refuse the kick-off.
    ///
    /// ```
    /// use fhirflight::bulk::{ExportLevel, ExportRequest};
    /// let request = ExportRequest::new(ExportLevel::System).with_allow_partial_manifests(true);
    /// let url = request.kickoff_url(&"https://fhir.example/r4/".parse().unwrap()).unwrap();
    /// assert_eq!(url.query(), Some("allowPartialManifests=true"));
    /// ```
    pub fn with_allow_partial_manifests(self, allow: bool) -> Self {
        Self {
            allow_partial_manifests: allow,
            ..self
        }
    }

    /// Whether the kick-off is a POST.
    pub fn uses_post(&self) -> bool {
        match self.method {
            KickoffMethod::Auto => !self.patients.is_empty(),
            KickoffMethod::Get => false,
            KickoffMethod::Post => true,
        }
    }

    /// The kick-off URL under the FHIR base, with the query when sent by GET.
    pub fn kickoff_url(&self, base: &Url) -> Result<Url> {
        let path = match &self.level {
            ExportLevel::System => "$export".to_string(),
            ExportLevel::Patient => "Patient/$export".to_string(),
            ExportLevel::Group(id) => format!("Group/{}/$export", encode_segment(id)),
        };
        let mut url = join(base, &path)?;
        if !self.uses_post() {
            if !self.patients.is_empty() {
                return Err(Error::config(
                    "the `patient` parameter needs a POST kick-off",
                ));
            }
            let params = self.parameters();
            if !params.is_empty() {
                url.query_pairs_mut()
                    .extend_pairs(params.iter().map(|(k, v)| (*k, v.as_str())));
            }
        }
        Ok(url)
    }

    /// The POST body: a FHIR `Parameters` resource, one entry per value (v2 style).
    pub fn parameters_resource(&self) -> Value {
        let mut parameter: Vec<Value> = self
            .parameters()
            .into_iter()
            .map(|(name, value)| match name {
                "_since" | "_until" => json!({"name": name, "valueInstant": value}),
                "allowPartialManifests" => json!({"name": name, "valueBoolean": value == "true"}),
                _ => json!({"name": name, "valueString": value}),
            })
            .collect();
        for patient in &self.patients {
            let reference = if patient.contains('/') {
                patient.clone()
            } else {
                format!("Patient/{patient}")
            };
            parameter.push(json!({"name": "patient", "valueReference": {"reference": reference}}));
        }
        json!({"resourceType": "Parameters", "parameter": parameter})
    }

    /// Name/value pairs shared by both encodings (`patient` is POST-only and not among them).
    fn parameters(&self) -> Vec<(&'static str, String)> {
        let mut params = Vec::new();
        if let Some(format) = &self.output_format {
            params.push(("_outputFormat", format.clone()));
        }
        if !self.types.is_empty() {
            params.push(("_type", self.types.join(",")));
        }
        if let Some(since) = &self.since {
            params.push(("_since", since.clone()));
        }
        if let Some(until) = &self.until {
            params.push(("_until", until.clone()));
        }
        if !self.elements.is_empty() {
            params.push(("_elements", self.elements.join(",")));
        }
        params.extend(self.type_filters.iter().map(|f| ("_typeFilter", f.clone())));
        if !self.include_associated_data.is_empty() {
            params.push((
                "includeAssociatedData",
                self.include_associated_data.join(","),
            ));
        }
        if self.allow_partial_manifests {
            params.push(("allowPartialManifests", "true".into()));
        }
        params
    }
}

/// A path segment with `/`, `?`, `#` and `%` escaped (a Group id is data, not a path).
fn encode_segment(segment: &str) -> String {
    url::form_urlencoded::byte_serialize(segment.as_bytes())
        .collect::<String>()
        .replace('+', "%20")
}

#[cfg(test)]
mod tests {
    #[test]
    fn levels_parse_from_their_cli_spelling() {
        use super::ExportLevel;
        assert_eq!("system".parse(), Ok(ExportLevel::System));
        assert_eq!("patient".parse(), Ok(ExportLevel::Patient));
        assert_eq!("group:g-1".parse(), Ok(ExportLevel::Group("g-1".into())));
        for bad in ["group:", "System", "", "group"] {
            let error = bad.parse::<ExportLevel>().unwrap_err();
            assert_eq!(
                error.to_string(),
                format!("`{bad}`: expected system, patient or group:<id>")
            );
        }
    }

    use super::*;

    fn base() -> Url {
        Url::parse("https://fhir.example/r4").unwrap()
    }

    #[test]
    fn get_query_carries_every_parameter() {
        let request = ExportRequest::new(ExportLevel::Group("g 1".into()))
            .with_types(["Patient", "Observation"])
            .with_since("2024-01-01T00:00:00Z")
            .with_until("2024-06-01T00:00:00+02:00")
            .with_type_filters([
                "Observation?category=laboratory&status=final",
                "Patient?active=true",
            ])
            .with_elements(["id", "code"])
            .with_include_associated_data(["LatestProvenanceResources"])
            .with_output_format("application/fhir+ndjson");
        assert!(!request.uses_post());
        let url = request.kickoff_url(&base()).unwrap();
        assert_eq!(url.path(), "/r4/Group/g%201/$export");
        let pairs: Vec<(String, String)> = url
            .query_pairs()
            .map(|(k, v)| (k.into(), v.into()))
            .collect();
        let expected = [
            ("_outputFormat", "application/fhir+ndjson"),
            ("_type", "Patient,Observation"),
            ("_since", "2024-01-01T00:00:00Z"),
            ("_until", "2024-06-01T00:00:00+02:00"),
            ("_elements", "id,code"),
            (
                "_typeFilter",
                "Observation?category=laboratory&status=final",
            ),
            ("_typeFilter", "Patient?active=true"),
            ("includeAssociatedData", "LatestProvenanceResources"),
        ];
        assert_eq!(pairs, expected.map(|(k, v)| (k.to_string(), v.to_string())));
    }

    #[test]
    fn levels_map_to_paths() {
        let base = Url::parse("https://fhir.example/r4/").unwrap();
        let path = |level| {
            ExportRequest::new(level)
                .kickoff_url(&base)
                .unwrap()
                .to_string()
        };
        assert_eq!(path(ExportLevel::System), "https://fhir.example/r4/$export");
        assert_eq!(
            path(ExportLevel::Patient),
            "https://fhir.example/r4/Patient/$export"
        );
        assert_eq!(
            path(ExportLevel::Group("abc".into())),
            "https://fhir.example/r4/Group/abc/$export"
        );
    }

    #[test]
    fn patient_parameter_makes_a_post_with_parameters_body() {
        let request = ExportRequest::new(ExportLevel::Patient)
            .with_types(["Condition"])
            .with_since("2024-01-01T00:00:00Z")
            .with_patients(["Patient/1", "2"])
            .with_allow_partial_manifests(true);
        assert!(request.uses_post());
        assert_eq!(request.kickoff_url(&base()).unwrap().query(), None);
        assert_eq!(
            request.parameters_resource(),
            json!({"resourceType": "Parameters", "parameter": [
                {"name": "_type", "valueString": "Condition"},
                {"name": "_since", "valueInstant": "2024-01-01T00:00:00Z"},
                {"name": "allowPartialManifests", "valueBoolean": true},
                {"name": "patient", "valueReference": {"reference": "Patient/1"}},
                {"name": "patient", "valueReference": {"reference": "Patient/2"}},
            ]})
        );
        let get = request.clone().with_method(KickoffMethod::Get);
        assert!(matches!(
            get.kickoff_url(&base()),
            Err(Error::Config { .. })
        ));
        assert!(
            ExportRequest::new(ExportLevel::System)
                .with_method(KickoffMethod::Post)
                .uses_post()
        );
    }
}
