//! Validated identifiers. Every ID that crosses a process boundary is parsed into one of
//! these once, at the edge, so nothing downstream touches the disk or the database with an
//! unchecked string.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Why a string is not a valid identifier.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// A sha256 must be exactly 64 lowercase hex digits.
    #[error("{what} must be 64 lowercase hex digits, got {got:?}")]
    NotSha256 { what: &'static str, got: String },
    /// An ID prefix must be 1 to 64 lowercase hex digits.
    #[error("ID prefix must be 1 to 64 hex digits, got {0:?}")]
    BadPrefix(String),
    /// A worker name is 1 to 128 characters of `[A-Za-z0-9_.-]`, starting with a letter or digit.
    #[error("worker name must be 1 to 128 characters of [A-Za-z0-9_.-] starting with a letter or digit, got {0:?}")]
    BadWorkerName(String),
}

/// How many hex digits a short ID shows, like git's abbreviated hashes.
pub const SHORT_ID_LEN: usize = 12;

/// The longest worker name [`WorkerName::parse`] accepts.
pub const MAX_WORKER_NAME_LEN: usize = 128;

/// What [`JobId::parse`] and [`ArtifactId::parse`] accept, as a regular expression (upper
/// case is accepted and lowered).
pub const SHA256_PATTERN: &str = "^[0-9a-fA-F]{64}$";
/// What [`IdPrefix::parse`] accepts.
pub const ID_PREFIX_PATTERN: &str = "^[0-9a-fA-F]{1,64}$";
/// What [`WorkerName::parse`] accepts (at most [`MAX_WORKER_NAME_LEN`] characters).
pub const WORKER_NAME_PATTERN: &str = "^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$";

fn is_lower_hex(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn parse_sha256(what: &'static str, s: &str) -> Result<String, IdError> {
    let lower = s.to_ascii_lowercase();
    if lower.len() == 64 && is_lower_hex(&lower) {
        Ok(lower)
    } else {
        Err(IdError::NotSha256 {
            what,
            got: s.to_string(),
        })
    }
}

macro_rules! sha256_id {
    ($(#[$doc:meta])* $name:ident, $what:literal, $what_doc:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// Parses a full 64-digit hex sha256 (upper case is accepted and lowered).
            pub fn parse(s: &str) -> Result<Self, IdError> {
                parse_sha256($what, s).map(Self)
            }

            /// The full 64-digit lowercase hex form.
            pub fn as_str(&self) -> &str {
                &self.0
            }

            /// The first 12 hex digits, for tables and logs.
            pub fn short(&self) -> &str {
                &self.0[..SHORT_ID_LEN]
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, IdError> {
                Self::parse(s)
            }
        }

        impl TryFrom<String> for $name {
            type Error = IdError;
            fn try_from(s: String) -> Result<Self, IdError> {
                Self::parse(&s)
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }

        #[cfg(feature = "openapi")]
        impl utoipa::PartialSchema for $name {
            fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
                string_schema($what_doc, SHA256_PATTERN, 64, 64)
            }
        }

        #[cfg(feature = "openapi")]
        impl utoipa::ToSchema for $name {}
    };
}

/// The schema of a validated string: its real pattern and lengths, so the OpenAPI document
/// is honest and generated test inputs hit both sides of the check.
#[cfg(feature = "openapi")]
fn string_schema(
    description: &str,
    pattern: &str,
    min_length: usize,
    max_length: usize,
) -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
    use utoipa::openapi::schema::{ObjectBuilder, Type};
    ObjectBuilder::new()
        .schema_type(Type::String)
        .description(Some(description))
        .pattern(Some(pattern))
        .min_length(Some(min_length))
        .max_length(Some(max_length))
        .into()
}

sha256_id!(
    /// A job's identity: sha256 (hex) of the canonical JSON of
    /// (model, mode, hyper, split_recipe, train_hosts, seed).
    JobId,
    "job ID",
    "A job ID: the sha256 (64 hex digits) of the job's identity fields"
);

sha256_id!(
    /// An artifact's identity: sha256 (hex) of the uploaded tar.zst bytes.
    ArtifactId,
    "artifact ID",
    "An artifact ID: the sha256 (64 hex digits) of the uploaded bundle"
);

/// A possibly abbreviated job or artifact ID, as operators type it (git-style prefixes).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct IdPrefix(String);

impl IdPrefix {
    /// Parses 1 to 64 hex digits (lowered).
    pub fn parse(s: &str) -> Result<Self, IdError> {
        let lower = s.to_ascii_lowercase();
        if !lower.is_empty() && lower.len() <= 64 && is_lower_hex(&lower) {
            Ok(Self(lower))
        } else {
            Err(IdError::BadPrefix(s.to_string()))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// True when this prefix is a complete 64-digit ID.
    pub fn is_full(&self) -> bool {
        self.0.len() == 64
    }

    /// Ok when the prefix is long enough for a verb that changes a job (cancel, requeue):
    /// at least [`MIN_MUTATING_PREFIX`] digits, so a typo of one or two digits cannot pick
    /// some job by chance. The error says what to type.
    pub fn check_mutating(&self, verb: &str) -> Result<(), String> {
        if self.0.len() >= MIN_MUTATING_PREFIX {
            return Ok(());
        }
        Err(format!(
            "ID prefix {} is too short to {verb} a job: type at least {MIN_MUTATING_PREFIX} hex \
             digits of its ID (see cis490ctl get jobs), so a short prefix cannot pick the \
             wrong job",
            self.0
        ))
    }
}

/// The fewest hex digits a job ID prefix needs for a verb that changes the job.
pub const MIN_MUTATING_PREFIX: usize = 4;

impl fmt::Display for IdPrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for IdPrefix {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        Self::parse(s)
    }
}

#[cfg(feature = "openapi")]
impl utoipa::PartialSchema for IdPrefix {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        string_schema(
            "A job or artifact ID or any unique prefix of it (1 to 64 hex digits)",
            ID_PREFIX_PATTERN,
            1,
            64,
        )
    }
}

#[cfg(feature = "openapi")]
impl utoipa::ToSchema for IdPrefix {}

/// A worker (node) name: usually the host name. Safe to use in paths and URLs.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct WorkerName(String);

impl WorkerName {
    pub fn parse(s: &str) -> Result<Self, IdError> {
        let ok = s.len() <= MAX_WORKER_NAME_LEN
            && s.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
        if ok {
            Ok(Self(s.to_string()))
        } else {
            Err(IdError::BadWorkerName(s.to_string()))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for WorkerName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for WorkerName {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        Self::parse(s)
    }
}

impl TryFrom<String> for WorkerName {
    type Error = IdError;
    fn try_from(s: String) -> Result<Self, IdError> {
        Self::parse(&s)
    }
}

impl From<WorkerName> for String {
    fn from(w: WorkerName) -> String {
        w.0
    }
}

#[cfg(feature = "openapi")]
impl utoipa::PartialSchema for WorkerName {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        string_schema(
            "A worker name: 1 to 128 characters of [A-Za-z0-9_.-], starting with a letter or digit",
            WORKER_NAME_PATTERN,
            1,
            MAX_WORKER_NAME_LEN,
        )
    }
}

#[cfg(feature = "openapi")]
impl utoipa::ToSchema for WorkerName {}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn job_id_accepts_hex_and_lowers_case() {
        let id = JobId::parse(&A.to_uppercase()).unwrap();
        assert_eq!(id.as_str(), A);
        assert_eq!(id.short(), "0123456789ab");
    }

    #[test]
    fn job_id_rejects_wrong_length_and_non_hex() {
        assert!(JobId::parse(&A[..63]).is_err());
        assert!(JobId::parse(&format!("{}g", &A[..63])).is_err());
        assert!(JobId::parse("../../etc/passwd").is_err());
    }

    #[test]
    fn job_id_round_trips_through_json_and_rejects_bad_json() {
        let id = JobId::parse(A).unwrap();
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(serde_json::from_str::<JobId>(&json).unwrap(), id);
        assert!(serde_json::from_str::<JobId>("\"abc\"").is_err());
    }

    #[test]
    fn prefix_rules() {
        assert!(IdPrefix::parse("0123ab").is_ok());
        assert!(IdPrefix::parse("").is_err());
        assert!(IdPrefix::parse("xyz").is_err());
        assert!(IdPrefix::parse(A).unwrap().is_full());
    }

    /// The patterns the OpenAPI document publishes, without their anchors (which proptest's
    /// generator does not take).
    fn unanchored(pattern: &str) -> &str {
        pattern.trim_start_matches('^').trim_end_matches('$')
    }

    proptest::proptest! {
        #[test]
        fn what_the_published_patterns_match_parses(
            sha in proptest::string::string_regex(unanchored(SHA256_PATTERN)).unwrap(),
            prefix in proptest::string::string_regex(unanchored(ID_PREFIX_PATTERN)).unwrap(),
            name in proptest::string::string_regex(unanchored(WORKER_NAME_PATTERN)).unwrap(),
        ) {
            proptest::prop_assert!(JobId::parse(&sha).is_ok(), "{}", sha);
            proptest::prop_assert!(ArtifactId::parse(&sha).is_ok(), "{}", sha);
            proptest::prop_assert!(IdPrefix::parse(&prefix).is_ok(), "{}", prefix);
            proptest::prop_assert!(WorkerName::parse(&name).is_ok(), "{}", name);
        }
    }

    #[test]
    fn the_published_lengths_are_the_parsers_limits() {
        let longest = format!("a{}", "b".repeat(MAX_WORKER_NAME_LEN - 1));
        assert!(WorkerName::parse(&longest).is_ok());
        assert!(WorkerName::parse(&format!("{longest}c")).is_err());
        assert!(IdPrefix::parse(&"a".repeat(65)).is_err());
    }

    #[test]
    fn worker_names_are_path_safe() {
        assert!(WorkerName::parse("gpu-box.lab_1").is_ok());
        assert!(WorkerName::parse("").is_err());
        assert!(WorkerName::parse("a/b").is_err());
        assert!(WorkerName::parse("..").is_err());
        assert!(WorkerName::parse(".hidden").is_err());
        assert!(WorkerName::parse(&"x".repeat(129)).is_err());
    }
}
