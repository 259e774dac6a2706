//! `read_package`: a `.tgz` file → [`Package`], never unpacked to disk.
//!
//! Invariants: the file is read once (capped at `Limits::max_bytes`), hashed, and handed
//! to `stream` as a slice; a `Package` exists only if the archive passed every check
//! of `stream`, package.json parsed (`manifest`) and every diffed resource is
//! well-formed JSON (`index`).

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

use sha2::{Digest, Sha256};

use super::index::{self, Resource};
use super::manifest;
use super::stream::scan;
use super::{IgError, Limits, display_name};

/// A parsed IG package. Root resources are listed in `resources`; the bodies of
/// StructureDefinitions, ValueSets, CodeSystems and SearchParameters are kept (checked
/// raw JSON, see [`Resource::body`]) because `diff` needs them.
#[derive(Debug, Clone)]
pub struct Package {
    pub id: String,
    pub version: semver::Version,
    pub fhir_versions: Vec<String>,
    pub dependencies: BTreeMap<String, String>,
    pub package_type: Option<String>,
    pub canonical: Option<String>,
    /// sha256 of the `.tgz` file bytes, lowercase hex.
    pub sha256: String,
    pub file_name: String,
    /// Root resources (files directly in `package/`), sorted by file name.
    pub resources: Vec<Resource>,
    /// Root resources per resourceType.
    pub counts: BTreeMap<String, usize>,
    /// `example/` resources per resourceType (sniffed, not parsed).
    pub example_counts: BTreeMap<String, usize>,
    /// `.index.json` index-version used, `None` when the index was built from the files.
    pub index_version: Option<u32>,
    /// Tar entries and uncompressed bytes, for the record and the limits.
    pub entries: usize,
    pub uncompressed_bytes: u64,
}

impl Package {
    /// The FHIR releases (major.minor, e.g. "4.0") the package is for: what must match
    /// between an installed IG and its replacement.
    pub fn fhir_releases(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .fhir_versions
            .iter()
            .map(|s| s.splitn(3, '.').take(2).collect::<Vec<_>>().join("."))
            .collect();
        v.sort();
        v.dedup();
        v
    }
}

/// Read and validate the package at `path` within `limits`.
pub fn read_package(path: &Path, limits: &Limits) -> Result<Package, IgError> {
    let file = display_name(path);
    let bytes = read_file(path, &file, limits)?;
    let sha256 = hex::encode(Sha256::digest(&bytes));
    let scan = scan(&bytes, limits, &file)?;
    let manifest_bytes = scan
        .package_json
        .ok_or_else(|| IgError::MissingManifest { file: file.clone() })?;
    let m = manifest::parse(&manifest_bytes).map_err(|detail| IgError::BadManifest {
        file: file.clone(),
        detail,
    })?;
    let built =
        index::build(scan.index_json.as_deref(), scan.root).map_err(|(entry, detail)| {
            IgError::BadResource {
                file: file.clone(),
                entry: format!("package/{entry}"),
                detail,
            }
        })?;
    let mut counts = BTreeMap::new();
    for r in &built.resources {
        *counts.entry(r.resource_type.clone()).or_insert(0) += 1;
    }
    Ok(Package {
        id: m.id,
        version: m.version,
        fhir_versions: m.fhir_versions,
        dependencies: m.dependencies,
        package_type: m.package_type,
        canonical: m.canonical,
        sha256,
        file_name: file,
        resources: built.resources,
        counts,
        example_counts: scan.example_counts,
        index_version: built.index_version,
        entries: scan.entries,
        uncompressed_bytes: scan.uncompressed,
    })
}

/// The compressed file is read whole: it is hashed anyway, and a slice lets the gzip
/// decoder report exactly how much input it consumed (how truncation is told apart).
fn read_file(path: &Path, file: &str, limits: &Limits) -> Result<Vec<u8>, IgError> {
    let io_err = |source| IgError::Io {
        file: file.to_string(),
        source,
    };
    let f = std::fs::File::open(path).map_err(io_err)?;
    let mut bytes = Vec::new();
    // Compressed bytes never exceed uncompressed ones for a sane archive.
    f.take(limits.max_bytes.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(io_err)?;
    if bytes.len() as u64 > limits.max_bytes {
        return Err(IgError::TooLarge {
            file: file.to_string(),
            limit: limits.max_bytes,
        });
    }
    if bytes.len() < 2 || bytes[0] != 0x1f || bytes[1] != 0x8b {
        return Err(IgError::NotGzip {
            file: file.to_string(),
        });
    }
    Ok(bytes)
}
