//! The package's resource list: from `.index.json` (index-version 1 or 2) or built from
//! the root files when the index is absent or of an unknown version.
//!
//! Invariants: every [`Resource`] names a file that is really in the package root (index
//! entries for missing files are dropped, files missing from the index are parsed), and
//! the resource types the diff needs always carry their parsed body, whatever the index
//! says, so a lying index cannot hide a profile's content.

use serde::Deserialize;
use serde_json::Value;

/// Resource types whose bodies `diff` compares.
const KEPT: [&str; 4] = [
    "StructureDefinition",
    "ValueSet",
    "CodeSystem",
    "SearchParameter",
];

/// One root resource, as the spec's index describes it (plus its body for [`KEPT`] types).
#[derive(Debug, Clone, PartialEq)]
pub struct Resource {
    /// File name relative to `package/`.
    pub file: String,
    pub resource_type: String,
    pub id: Option<String>,
    pub url: Option<String>,
    pub version: Option<String>,
    pub kind: Option<String>,
    /// StructureDefinition.type (the constrained type), when the resource has one.
    pub sd_type: Option<String>,
    /// Raw JSON of StructureDefinitions, ValueSets, CodeSystems and SearchParameters,
    /// already checked to be well-formed. Kept as bytes, parsed by [`Resource::json`]
    /// when `diff` needs it: building a `Value` tree for 6 MiB of snapshots doubled the
    /// cost of `ig inspect`, which never looks at them.
    pub body: Option<Vec<u8>>,
}

impl Resource {
    /// The parsed body (for the diffed types; `None` for the others).
    pub fn json(&self) -> Option<Value> {
        self.body
            .as_deref()
            .and_then(|b| serde_json::from_slice(b).ok())
    }
}

/// The spec's index entry; each field is present only if the resource has that string.
#[derive(Deserialize, Default)]
struct Header {
    filename: Option<String>,
    #[serde(rename = "resourceType")]
    resource_type: Option<String>,
    id: Option<String>,
    url: Option<String>,
    version: Option<String>,
    kind: Option<String>,
    #[serde(rename = "type")]
    sd_type: Option<Value>,
}

#[derive(Deserialize)]
struct IndexFile {
    #[serde(rename = "index-version")]
    index_version: Option<u32>,
    #[serde(default)]
    files: Vec<Header>,
}

#[derive(Debug)]
pub(crate) struct Built {
    pub resources: Vec<Resource>,
    pub index_version: Option<u32>,
}

/// Combine the root index (if any) with the root files. Errors are (entry, cause).
pub(crate) fn build(
    index: Option<&[u8]>,
    root: Vec<(String, Vec<u8>)>,
) -> Result<Built, (String, String)> {
    let mut by_file = std::collections::HashMap::new();
    let mut index_version = None;
    if let Some(bytes) = index {
        let parsed: IndexFile = serde_json::from_slice(bytes)
            .map_err(|e| (".index.json".to_string(), format!("invalid JSON: {e}")))?;
        // Unknown versions are rebuilt, as the spec asks; 1 and 2 share the entry shape.
        if matches!(parsed.index_version, Some(1 | 2)) {
            index_version = parsed.index_version;
            for h in parsed.files {
                if let Some(f) = h.filename.clone() {
                    by_file.insert(f, h);
                }
            }
        }
    }
    let mut resources = Vec::with_capacity(root.len());
    for (file, bytes) in root {
        let indexed = by_file.remove(&file);
        let wanted = indexed
            .as_ref()
            .and_then(|h| h.resource_type.as_deref())
            .map(|t| KEPT.contains(&t));
        let (header, body) = match (indexed, wanted) {
            // The index says it is a type we don't compare: trust it and skip parsing.
            (Some(h), Some(false)) => (h, None),
            // Otherwise read the header from the body itself: that checks the whole
            // document is well-formed JSON without building it, and a lying index
            // cannot rename a profile.
            _ => match serde_json::from_slice::<Header>(&bytes) {
                Ok(header) => {
                    let keep = header
                        .resource_type
                        .as_deref()
                        .is_some_and(|t| KEPT.contains(&t));
                    (header, keep.then_some(bytes))
                }
                // Well-formed but not an object (IG Publisher extras): no resource.
                Err(e) if e.is_data() && bytes.trim_ascii_start().first() != Some(&b'{') => {
                    continue;
                }
                Err(e) => return Err((file, format!("invalid JSON: {e}"))),
            },
        };
        let Some(resource_type) = header.resource_type else {
            // A root JSON file that is no resource (IG Publisher extras): not counted.
            continue;
        };
        let sd_type = match header.sd_type {
            Some(Value::String(s)) => Some(s),
            _ => None,
        };
        resources.push(Resource {
            file,
            resource_type,
            id: header.id,
            url: header.url,
            version: header.version,
            kind: header.kind,
            sd_type,
            body,
        });
    }
    resources.sort_by(|a, b| a.file.cmp(&b.file));
    Ok(Built {
        resources,
        index_version,
    })
}

#[cfg(test)]
mod unit {
    use super::*;

    fn sd(url: &str) -> Vec<u8> {
        format!(r#"{{"resourceType":"StructureDefinition","id":"p","url":"{url}","kind":"resource","type":"Patient"}}"#)
            .into_bytes()
    }

    #[test]
    fn builds_without_index_and_keeps_bodies() {
        let b = build(
            None,
            vec![("StructureDefinition-p.json".into(), sd("http://x/p"))],
        )
        .unwrap();
        assert_eq!(b.index_version, None);
        let r = &b.resources[0];
        assert_eq!(
            (
                r.resource_type.as_str(),
                r.url.as_deref(),
                r.sd_type.as_deref()
            ),
            ("StructureDefinition", Some("http://x/p"), Some("Patient"))
        );
        assert_eq!(
            r.json()
                .and_then(|j| j["id"].as_str().map(str::to_string))
                .as_deref(),
            Some("p")
        );
    }

    #[test]
    fn uses_index_v1_and_v2_but_parses_kept_types() {
        for v in [1, 2] {
            let idx = format!(
                r#"{{"index-version":{v},"files":[{{"filename":"CapabilityStatement-c.json","resourceType":"CapabilityStatement","id":"c"}},
                {{"filename":"StructureDefinition-p.json","resourceType":"StructureDefinition","url":"http://lie"}}]}}"#
            );
            let root = vec![
                (
                    "CapabilityStatement-c.json".to_string(),
                    b"not even json".to_vec(),
                ),
                ("StructureDefinition-p.json".to_string(), sd("http://x/p")),
            ];
            let b = build(Some(idx.as_bytes()), root).unwrap();
            assert_eq!(b.index_version, Some(v));
            assert_eq!(
                b.resources[0].id.as_deref(),
                Some("c"),
                "index trusted for skipped types"
            );
            assert_eq!(
                b.resources[1].url.as_deref(),
                Some("http://x/p"),
                "body wins for kept types"
            );
        }
    }

    #[test]
    fn unknown_index_version_is_rebuilt_and_bad_json_named() {
        let b = build(
            Some(br#"{"index-version":9,"files":[]}"#),
            vec![("StructureDefinition-p.json".into(), sd("u"))],
        )
        .unwrap();
        assert_eq!(b.index_version, None);
        let e = build(None, vec![("x.json".into(), b"{".to_vec())]).unwrap_err();
        assert_eq!(e.0, "x.json");
        assert!(e.1.contains("invalid JSON"));
    }
}
