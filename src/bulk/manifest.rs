//! The complete-status manifest of an export, and the contents of its `deleted` files.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use url::Url;

use crate::http::{has_secrets, redact_url};
use crate::{Error, Result};

/// The manifest a server returns when an export is complete (Bulk Data v2 "Response - Complete
/// Status"). With paged manifests (`link` rel=`next`), the client merges all pages into one.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    /// The server's time when the export snapshot was taken: the next `_since`.
    pub transaction_time: String,
    /// The kick-off request URL.
    pub request: String,
    /// Whether file URLs need the bearer token.
    #[serde(default)]
    pub requires_access_token: bool,
    /// The data files.
    #[serde(default)]
    pub output: Vec<OutputFile>,
    /// Files of Bundles listing resources deleted since `_since`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deleted: Vec<OutputFile>,
    /// Files of OperationOutcomes for what could not be exported.
    #[serde(default)]
    pub error: Vec<OutputFile>,
    /// Server-specific extensions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extension: Option<Value>,
    /// Links of a paged manifest (`next` points at the following page).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub link: Vec<ManifestLink>,
}

/// One file of a manifest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutputFile {
    /// The resource type of every line (`Bundle` in `deleted`, `OperationOutcome` in `error`).
    #[serde(rename = "type")]
    pub resource_type: String,
    /// Where to download it.
    #[serde(with = "url_string")]
    pub url: Url,
    /// The number of resources in it, when the server says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
}

/// A link of a paged manifest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestLink {
    /// The link relation (`next`).
    pub relation: String,
    /// The page URL.
    #[serde(with = "url_string")]
    pub url: Url,
}

/// A resource a `deleted` file says is gone.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct DeletedResource {
    /// Its type, e.g. `Patient`.
    pub resource_type: String,
    /// Its id.
    pub id: String,
}

impl Manifest {
    /// Parses a manifest served at `url`.
    pub fn parse(json: &[u8], url: &Url) -> Result<Self> {
        serde_json::from_slice(json)
            .map_err(|e| Error::protocol_with(redact_url(url), "bad manifest", e))
    }

    /// The manifest as it may be stored: every file and page URL without the secrets of its
    /// query (a presigned URL's signature) and user info, as errors show it
    /// ([`Manifest::is_whole`] tells whether anything was taken).
    pub(crate) fn without_secrets(&self) -> Manifest {
        let redact = |url: &Url| Url::parse(&redact_url(url)).unwrap_or_else(|_| url.clone());
        let mut manifest = self.clone();
        let files = manifest.output.iter_mut().chain(&mut manifest.deleted);
        for file in files.chain(&mut manifest.error) {
            file.url = redact(&file.url);
        }
        for link in &mut manifest.link {
            link.url = redact(&link.url);
        }
        manifest
    }

    /// Whether every URL is whole, so that the files can be downloaded from this manifest: no
    /// URL had a secret for [`Manifest::without_secrets`] to take.
    pub(crate) fn is_whole(&self) -> bool {
        let files = self.output.iter().chain(&self.deleted).chain(&self.error);
        !files
            .map(|f| &f.url)
            .chain(self.link.iter().map(|l| &l.url))
            .any(has_secrets)
    }

    /// The next page of a paged manifest.
    pub fn next_page(&self) -> Option<&Url> {
        self.link
            .iter()
            .find(|l| l.relation == "next")
            .map(|l| &l.url)
    }
}

/// The resources a `deleted` Bundle lists: its entries' `request.url` (`Type/id`, possibly
/// absolute or with `_history/vid`).
pub fn deleted_resources(bundle: &Value) -> Vec<DeletedResource> {
    let entries = bundle["entry"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    entries
        .iter()
        .filter(|entry| {
            entry["request"]["method"]
                .as_str()
                .is_none_or(|m| m.eq_ignore_ascii_case("DELETE"))
        })
        .filter_map(|entry| {
            let url = entry["request"]["url"].as_str()?;
            let path = url.split(['?', '#']).next()?;
            let mut segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
            if let Some(history) = segments.iter().position(|s| *s == "_history") {
                segments.truncate(history);
            }
            let [.., resource_type, id] = segments.as_slice() else {
                return None;
            };
            Some(DeletedResource {
                resource_type: resource_type.to_string(),
                id: id.to_string(),
            })
        })
        .collect()
}

mod url_string {
    use serde::{Deserialize, Deserializer, Serializer, de::Error};
    use url::Url;

    pub(super) fn serialize<S: Serializer>(url: &Url, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(url.as_str())
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Url, D::Error> {
        let text = String::deserialize(d)?;
        Url::parse(&text).map_err(|e| D::Error::custom(format!("bad URL {text:?}: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parses_a_complete_manifest() {
        let text = json!({
            "transactionTime": "2024-03-01T10:00:00.000Z",
            "request": "https://fhir.example/$export?_type=Patient,Observation",
            "requiresAccessToken": true,
            "output": [
                {"type": "Patient", "url": "https://files.example/p1.ndjson", "count": 10},
                {"type": "Observation", "url": "https://files.example/o1.ndjson"}
            ],
            "deleted": [{"type": "Bundle", "url": "https://files.example/del.ndjson"}],
            "error": [{"type": "OperationOutcome", "url": "https://files.example/err.ndjson"}],
            "extension": {"https://example/ext": 1},
            "link": [{"relation": "next", "url": "https://fhir.example/manifest?page=2"}]
        });
        let url = Url::parse("https://fhir.example/status/1").unwrap();
        let manifest = Manifest::parse(text.to_string().as_bytes(), &url).unwrap();
        assert_eq!(manifest.transaction_time, "2024-03-01T10:00:00.000Z");
        assert!(manifest.requires_access_token);
        assert_eq!(manifest.output[0].resource_type, "Patient");
        assert_eq!(manifest.output[0].count, Some(10));
        assert_eq!(manifest.output[1].count, None);
        assert_eq!(
            manifest.deleted[0].url.as_str(),
            "https://files.example/del.ndjson"
        );
        assert_eq!(manifest.error[0].resource_type, "OperationOutcome");
        assert_eq!(manifest.extension, Some(json!({"https://example/ext": 1})));
        assert_eq!(
            manifest.next_page().unwrap().as_str(),
            "https://fhir.example/manifest?page=2"
        );
        // Round trip keeps the spec's field names.
        let back: Value = serde_json::to_value(&manifest).unwrap();
        assert_eq!(back, text);
    }

    #[test]
    fn minimal_manifest_and_bad_one() {
        let url = Url::parse("https://fhir.example/status/1").unwrap();
        let manifest = Manifest::parse(
            br#"{"transactionTime":"t","request":"r","output":[],"error":[]}"#,
            &url,
        )
        .unwrap();
        assert!(
            !manifest.requires_access_token
                && manifest.output.is_empty()
                && manifest.next_page().is_none()
        );
        let err = Manifest::parse(
            br#"{"transactionTime":"t","request":"r","output":[{"type":"P","url":"x"}]}"#,
            &url,
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.starts_with("https://fhir.example/status/1: bad manifest: bad URL \"x\""),
            "{err}"
        );
    }

    #[test]
    fn deleted_bundle_entries_become_type_and_id() {
        let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
            {"request": {"method": "DELETE", "url": "Patient/123"}},
            {"request": {"method": "DELETE", "url": "https://fhir.example/r4/Observation/o-9/_history/3"}},
            {"request": {"method": "PUT", "url": "Patient/5"}},
            {"request": {"method": "DELETE"}}
        ]});
        assert_eq!(
            deleted_resources(&bundle),
            [
                DeletedResource {
                    resource_type: "Patient".into(),
                    id: "123".into()
                },
                DeletedResource {
                    resource_type: "Observation".into(),
                    id: "o-9".into()
                },
            ]
        );
    }
}
