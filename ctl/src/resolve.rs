//! ID prefixes like git: any unique prefix names an object; an ambiguous one lists the
//! candidates. Jobs are resolved by the server (`GET /v1/job/{prefix}` answers 409
//! `ambiguous_id` with the candidates); artifacts are resolved here from the listing.

use cis490_api::{IdPrefix, SHORT_ID_LEN};

/// Why a prefix names no single object.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResolveError {
    /// Not 1 to 64 hex digits.
    #[error("{0:?} is not an ID prefix (expected 1 to 64 hex digits, like 3fa9c1)")]
    NotHex(String),
    /// Nothing starts with the prefix.
    #[error("no {kind} matches ID prefix {prefix}")]
    NotFound { kind: &'static str, prefix: String },
    /// More than one object starts with the prefix.
    #[error("ID prefix {prefix} is ambiguous: it matches {} {kind}s: {}; type more digits", candidates.len(), candidates.join(", "))]
    Ambiguous {
        kind: &'static str,
        prefix: String,
        /// `short-id (what it is)` per match.
        candidates: Vec<String>,
    },
}

/// Parses what the operator typed as an ID prefix.
pub fn parse_prefix(text: &str) -> Result<IdPrefix, ResolveError> {
    IdPrefix::parse(text.trim()).map_err(|_| ResolveError::NotHex(text.to_string()))
}

/// Finds the one item whose full ID starts with `prefix`. `describe` names an item in the
/// candidate list of an ambiguous prefix.
pub fn resolve<'a, T>(
    kind: &'static str,
    prefix: &IdPrefix,
    items: &'a [T],
    id_of: impl Fn(&T) -> &str,
    describe: impl Fn(&T) -> String,
) -> Result<&'a T, ResolveError> {
    let matches: Vec<&T> = items
        .iter()
        .filter(|item| id_of(item).starts_with(prefix.as_str()))
        .collect();
    match matches.as_slice() {
        [one] => Ok(one),
        [] => Err(ResolveError::NotFound {
            kind,
            prefix: prefix.to_string(),
        }),
        many => {
            let mut candidates: Vec<String> = many
                .iter()
                .map(|item| {
                    let id = id_of(item);
                    let short = &id[..id.len().min(SHORT_ID_LEN)];
                    format!("{short} ({})", describe(item))
                })
                .collect();
            candidates.sort();
            Err(ResolveError::Ambiguous {
                kind,
                prefix: prefix.to_string(),
                candidates,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ITEMS: [(&str, &str); 3] = [
        (
            "abc1230000000000000000000000000000000000000000000000000000000000",
            "gbt/realistic",
        ),
        (
            "abc4560000000000000000000000000000000000000000000000000000000000",
            "mlp/realistic",
        ),
        (
            "ffff000000000000000000000000000000000000000000000000000000000000",
            "gbt/ideal",
        ),
    ];

    fn run(prefix: &str) -> Result<&'static str, ResolveError> {
        let p = parse_prefix(prefix)?;
        resolve("artifact", &p, &ITEMS, |i| i.0, |i| i.1.to_string()).map(|i| i.1)
    }

    #[test]
    fn unique_prefix_resolves() {
        assert_eq!(run("abc1"), Ok("gbt/realistic"));
        assert_eq!(run("F"), Ok("gbt/ideal"));
        assert_eq!(run(ITEMS[1].0), Ok("mlp/realistic"));
    }

    #[test]
    fn ambiguous_prefix_lists_candidates() {
        let err = run("abc").unwrap_err();
        let text = err.to_string();
        assert!(
            matches!(&err, ResolveError::Ambiguous { candidates, .. } if candidates.len() == 2)
        );
        assert!(text.contains("abc123000000 (gbt/realistic)"), "{text}");
        assert!(text.contains("abc456000000 (mlp/realistic)"), "{text}");
        assert!(text.contains("ambiguous"), "{text}");
    }

    #[test]
    fn missing_and_malformed_prefixes() {
        assert!(matches!(run("0"), Err(ResolveError::NotFound { .. })));
        assert!(matches!(run("xyz"), Err(ResolveError::NotHex(_))));
        assert!(matches!(run(""), Err(ResolveError::NotHex(_))));
    }
}
