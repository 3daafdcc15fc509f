//! The one warnings model: what an export or a conversion finished despite.
//!
//! A [`Warning`] is recorded wherever a run goes on past something a user should know of: the
//! server's OperationOutcomes in the manifest's `error[]` files, a file whose line count differs
//! from the manifest's advisory `count`, skipped NDJSON lines, resources too wide for a flattened
//! table. Every part reports the same
//! values: the export's outcome, the snapshot's manifest (`warnings`), the Flight action
//! `ListExports` and the CLI, which prints each as `warning: <Display>`.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize};

/// What a warning is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum WarningKind {
    /// The server reported an OperationOutcome (the manifest's `error[]` files): some resources
    /// of the type were not exported.
    ServerError,
    /// A downloaded file has another number of resources than the manifest's `count` (which the
    /// specification makes advisory); the file was taken as downloaded.
    CountMismatch,
    /// NDJSON lines that are not resources of the file's type were skipped.
    SkippedLines,
    /// A file was not read (its type could not be told, or is not a resource type name).
    SkippedFile,
    /// A condition of the client's own, such as a server's wait longer than allowed.
    Client,
    /// Resources had more flattened paths than a table may have columns
    /// ([`FlattenOptions::with_max_columns`](crate::ndjson::FlattenOptions::with_max_columns)):
    /// the paths beyond are JSON text in one column, `_overflow`.
    WideResources,
}

impl WarningKind {
    /// The kind's name as serialized: `server-error`, `count-mismatch`, `skipped-lines`,
    /// `skipped-file`, `client`, `wide-resources`.
    pub fn as_str(self) -> &'static str {
        match self {
            WarningKind::ServerError => "server-error",
            WarningKind::CountMismatch => "count-mismatch",
            WarningKind::SkippedLines => "skipped-lines",
            WarningKind::SkippedFile => "skipped-file",
            WarningKind::Client => "client",
            WarningKind::WideResources => "wide-resources",
        }
    }
}

impl fmt::Display for WarningKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Something a run finished despite.
///
/// ```
/// use fhirflight::warning::{Warning, WarningKind};
/// let warning = Warning::new(WarningKind::ServerError, "Observation: too many resources")
///     .with_resource_type("Observation");
/// assert_eq!(
///     warning.to_string(),
///     "Observation: server-error: Observation: too many resources"
/// );
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct Warning {
    /// What it is about.
    pub kind: WarningKind,
    /// The resource type it concerns, when one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_type: Option<String>,
    /// What happened and where: file and line, a URL without secrets, the server's text.
    pub message: String,
    /// How many occurrences it stands for (skipped lines: all of them, while `message` names
    /// the first few).
    #[serde(default = "one")]
    pub count: u64,
}

fn one() -> u64 {
    1
}

impl Warning {
    /// A warning of `kind` that stands for one occurrence.
    pub fn new(kind: WarningKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            resource_type: None,
            message: message.into(),
            count: 1,
        }
    }

    /// The resource type it concerns.
    pub fn with_resource_type(self, resource_type: impl Into<String>) -> Self {
        Self {
            resource_type: Some(resource_type.into()),
            ..self
        }
    }

    /// The number of occurrences it stands for.
    pub fn with_count(self, count: u64) -> Self {
        Self { count, ..self }
    }

    /// Whether it concerns `resource_type` (or no type in particular).
    pub fn concerns(&self, resource_type: &str) -> bool {
        self.resource_type
            .as_deref()
            .is_none_or(|t| t == resource_type)
    }
}

impl fmt::Display for Warning {
    /// `<Type>: <kind>: <message>`, without the type when it has none, and with `(N times)`
    /// when it stands for more than one occurrence.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(t) = &self.resource_type {
            write!(f, "{t}: ")?;
        }
        write!(f, "{}: {}", self.kind, self.message)?;
        if self.count > 1 {
            write!(f, " ({} times)", self.count)?;
        }
        Ok(())
    }
}

/// Reads a list of warnings, or the plain texts of manifests written before warnings had kinds
/// (kept as [`WarningKind::ServerError`]: the server's texts were all they held first).
pub(crate) fn deserialize_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Warning>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Entry {
        Warning(Warning),
        Text(String),
    }
    let entries = Vec::<Entry>::deserialize(d)?;
    Ok(entries
        .into_iter()
        .map(|e| match e {
            Entry::Warning(w) => w,
            Entry::Text(text) => Warning::new(WarningKind::ServerError, text),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_reads_old_texts() {
        let warning = Warning::new(WarningKind::SkippedLines, "p.ndjson:3: not JSON")
            .with_resource_type("Patient")
            .with_count(12);
        let json = serde_json::to_string(&warning).unwrap();
        assert_eq!(
            json,
            r#"{"kind":"skipped-lines","resourceType":"Patient","message":"p.ndjson:3: not JSON","count":12}"#
        );
        assert_eq!(serde_json::from_str::<Warning>(&json).unwrap(), warning);
        assert_eq!(
            warning.to_string(),
            "Patient: skipped-lines: p.ndjson:3: not JSON (12 times)"
        );

        #[derive(Deserialize)]
        struct Holder {
            #[serde(deserialize_with = "deserialize_list")]
            warnings: Vec<Warning>,
        }
        let old: Holder =
            serde_json::from_str(&format!(r#"{{"warnings": ["the server failed", {json}]}}"#))
                .unwrap();
        assert_eq!(
            old.warnings,
            [
                Warning::new(WarningKind::ServerError, "the server failed"),
                warning
            ]
        );
    }

    #[test]
    fn concerns_its_type_or_all() {
        let general = Warning::new(WarningKind::Client, "x");
        let typed = general.clone().with_resource_type("Patient");
        assert!(general.concerns("Observation") && typed.concerns("Patient"));
        assert!(!typed.concerns("Observation"));
    }
}
