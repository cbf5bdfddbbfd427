//! The manifest model: parse, validate and expand `etc/training_manifest.toml`.
//!
//! The file is the operator's whole control surface (design.md, "The manifest"): `version`,
//! `[defaults]`, `[[hosts]]`, `[models.NAME]` and `[[jobs]]` with `matrix` expansion. Parsing
//! is strict (unknown keys are errors) and collects every error it can, each with file, line
//! and column, so an operator fixes a manifest in one pass, before saving it (`check`) or
//! when the server refuses to reload it.

mod build;
mod job_id;
mod node;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use cis490_api::{JobSpec, ManifestError, RetryPolicy};
use sha2::{Digest, Sha256};

pub use cis490_api::Hyper;
pub use job_id::job_id;

/// The only manifest version this build reads.
pub const SUPPORTED_VERSION: u32 = 1;
/// `[defaults] max_attempts` when the file does not say.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 3;
/// `[defaults] stale_after_s` (lease length) when the file does not say: three missed
/// 30-second heartbeats.
pub const DEFAULT_STALE_AFTER_S: u64 = 90;

/// A validated manifest with every job expanded (matrix applied, defaults filled in).
#[derive(Debug, Clone, PartialEq)]
pub struct Manifest {
    /// Always `SUPPORTED_VERSION` (any other is an error).
    pub version: u32,
    pub defaults: Defaults,
    /// `[[hosts]]` in file order; names are unique.
    pub hosts: Vec<crate::policy::HostPolicy>,
    /// `[models.NAME]` by name.
    pub models: BTreeMap<String, ModelDef>,
    /// In expansion order; `manifest_order` is the index in this list.
    pub jobs: Vec<JobSpec>,
}

/// `[defaults]`: what a job gets when neither it nor its model says otherwise.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Defaults {
    /// Attempts before a job fails for good (at least 1).
    pub max_attempts: u32,
    /// Lease length in seconds (at least 1).
    pub stale_after_s: u64,
    /// The trainer argv for models that name none.
    pub command: Option<Vec<String>>,
    /// From `retries_on_failure`.
    pub retry: RetryPolicy,
    /// Higher runs first.
    pub priority: i32,
    /// Wall-clock limit of an attempt, for jobs and models that set none.
    pub timeout_s: Option<u64>,
    /// Worker labels every job needs; a job's own `node_selector` wins per key.
    pub node_selector: BTreeMap<String, String>,
}

impl Default for Defaults {
    fn default() -> Self {
        Self {
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            stale_after_s: DEFAULT_STALE_AFTER_S,
            command: None,
            retry: RetryPolicy::default(),
            priority: 0,
            timeout_s: None,
            node_selector: BTreeMap::new(),
        }
    }
}

/// `[models.NAME]`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ModelDef {
    /// The trainer argv; None falls back to `[defaults] command`.
    pub command: Option<Vec<String>>,
    /// Hyperparameter schema (key -> type). None accepts any keys; `Some` (even empty)
    /// rejects keys it does not list and values of the wrong type.
    pub hyper: Option<BTreeMap<String, HyperType>>,
    /// Wall-clock limit of an attempt for this model's jobs (a job's own wins).
    pub timeout_s: Option<u64>,
    /// Environment for this model's trainers (a job's `env` wins per key).
    pub env: BTreeMap<String, String>,
}

/// The type a hyperparameter schema declares for one key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HyperType {
    /// `"int"`: a TOML integer.
    Int,
    /// `"float"`: a TOML float; integers are accepted too (and kept as written, so `1` and `1.0` stay different IDs).
    Float,
    /// `"string"`.
    String,
    /// `"bool"`.
    Bool,
}

impl HyperType {
    /// The name used in the manifest.
    pub fn as_str(self) -> &'static str {
        match self {
            HyperType::Int => "int",
            HyperType::Float => "float",
            HyperType::String => "string",
            HyperType::Bool => "bool",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        match s {
            "int" => Some(HyperType::Int),
            "float" => Some(HyperType::Float),
            "string" => Some(HyperType::String),
            "bool" => Some(HyperType::Bool),
            _ => None,
        }
    }
}

/// A manifest that parsed and validated, with what the operator should know about it.
#[derive(Debug, Clone, PartialEq)]
pub struct LoadedManifest {
    /// The validated, expanded manifest.
    pub manifest: Manifest,
    /// Each as `FILE:LINE:COL: message` (e.g. an `allowed_hosts` entry no `[[hosts]]` names).
    pub warnings: Vec<String>,
    /// sha256 (hex) of the manifest text.
    pub sha256: String,
    /// The file it came from (as given to `parse_manifest`/`load_manifest`).
    pub path: PathBuf,
}

/// All errors found (not just the first), each with path, line, column and message, in
/// file order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestErrors(pub Vec<ManifestError>);

impl fmt::Display for ManifestErrors {
    /// One error per line, `FILE:LINE:COL: message`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, error) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            f.write_str(&format_error(error))?;
        }
        Ok(())
    }
}

impl std::error::Error for ManifestErrors {}

/// `FILE:LINE:COL: message`, or `FILE: message` when the error has no position.
pub fn format_error(error: &ManifestError) -> String {
    match (error.line, error.column) {
        (Some(line), Some(column)) => {
            format!("{}:{line}:{column}: {}", error.path, error.message)
        }
        (Some(line), None) => format!("{}:{line}: {}", error.path, error.message),
        _ => format!("{}: {}", error.path, error.message),
    }
}

/// Most jobs a manifest may make unless the server's `max_manifest_jobs` (or `check
/// --max-jobs`) says otherwise: a typo in a matrix must not make millions.
pub const DEFAULT_MAX_MANIFEST_JOBS: usize = 100_000;

/// Parses and validates manifest `text` with at most [`DEFAULT_MAX_MANIFEST_JOBS`] jobs;
/// `path` only names the file in messages.
pub fn parse_manifest(text: &str, path: &Path) -> Result<LoadedManifest, ManifestErrors> {
    parse_manifest_with_limit(text, path, DEFAULT_MAX_MANIFEST_JOBS)
}

/// [`parse_manifest`] with at most `max_jobs` jobs: the `[[jobs]]` entry that would make
/// more is an error, and no entry after it is expanded, so validation holds at most one
/// entry's jobs beyond the limit.
pub fn parse_manifest_with_limit(
    text: &str,
    path: &Path,
    max_jobs: usize,
) -> Result<LoadedManifest, ManifestErrors> {
    let (manifest, warnings) = build::build(text, &path.display().to_string(), max_jobs)?;
    Ok(LoadedManifest {
        manifest,
        warnings,
        sha256: hex::encode(Sha256::digest(text.as_bytes())),
        path: path.to_path_buf(),
    })
}

/// Reads and parses the manifest at `path`, with at most `max_jobs` jobs. A read error is
/// one error without a position.
pub fn load_manifest(path: &Path, max_jobs: usize) -> Result<LoadedManifest, ManifestErrors> {
    let text = read_manifest_text(path)?;
    parse_manifest_with_limit(&text, path, max_jobs)
}

/// Reads the manifest's text. A read error is one error without a position; bytes that are
/// not UTF-8 are one error at the first of them.
pub fn read_manifest_text(path: &Path) -> Result<String, ManifestErrors> {
    match std::fs::read(path) {
        Ok(bytes) => manifest_text(bytes, path),
        Err(err) => Err(ManifestErrors(vec![ManifestError {
            path: path.display().to_string(),
            line: None,
            column: None,
            message: format!("cannot read manifest: {err}"),
        }])),
    }
}

/// The manifest's bytes as text, or one error at the first byte that is not UTF-8.
pub fn manifest_text(bytes: Vec<u8>, path: &Path) -> Result<String, ManifestErrors> {
    String::from_utf8(bytes).map_err(|err| {
        let bad = err.utf8_error();
        let bytes = err.as_bytes();
        let valid = std::str::from_utf8(&bytes[..bad.valid_up_to()]).unwrap_or_default();
        let byte = bytes.get(bad.valid_up_to()).copied().unwrap_or_default();
        let mut d = node::Diagnostics::new(path.display().to_string(), valid);
        d.error(
            valid.len(),
            format!("the manifest is not UTF-8 text: byte 0x{byte:02x} here; TOML files are UTF-8 (re-save it as UTF-8)"),
        );
        ManifestErrors(d.finish().0)
    })
}

#[cfg(test)]
mod fuzz;
#[cfg(test)]
mod jobspec_tests;
#[cfg(test)]
mod tests;
