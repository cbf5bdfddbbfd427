//! Label selectors, kubectl style: `team=a,gpu!=none,priority,!legacy`. Every term must
//! hold (AND); `-l` given several times is one selector with all their terms.

use std::collections::BTreeMap;
use std::fmt;

/// One term of a selector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LabelTerm {
    /// `key=value` (or `key==value`): the label is present with this value.
    Equals(String, String),
    /// `key!=value`: the label is absent or has another value (as in Kubernetes).
    NotEquals(String, String),
    /// `key`: the label is present, any value.
    Exists(String),
    /// `!key`: the label is absent.
    Absent(String),
}

impl LabelTerm {
    fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        match self {
            LabelTerm::Equals(k, v) => labels.get(k) == Some(v),
            LabelTerm::NotEquals(k, v) => labels.get(k) != Some(v),
            LabelTerm::Exists(k) => labels.contains_key(k),
            LabelTerm::Absent(k) => !labels.contains_key(k),
        }
    }
}

/// A parsed selector: the AND of its terms (none: everything matches).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LabelSelector {
    pub terms: Vec<LabelTerm>,
}

/// A selector term that is not one of the four forms; names the term.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "label selector term {term:?} {why} (expected key=value, key!=value, key or !key, \
     separated by commas)"
)]
pub struct BadSelector {
    pub term: String,
    pub why: &'static str,
}

/// A label key or value: non-empty, no whitespace, none of `=!,`.
fn valid_word(word: &str) -> bool {
    !word.is_empty()
        && !word
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || matches!(c, '=' | '!' | ','))
}

impl LabelSelector {
    /// Parses `team=a,gpu!=none`; surrounding spaces of a term are ignored. An empty text
    /// selects everything; an empty term between commas is refused.
    pub fn parse(text: &str) -> Result<Self, BadSelector> {
        let mut terms = Vec::new();
        if text.trim().is_empty() {
            return Ok(Self { terms });
        }
        for raw in text.split(',') {
            let term = raw.trim();
            let bad = |why| BadSelector {
                term: term.to_string(),
                why,
            };
            let parsed = if let Some((k, v)) = term.split_once("!=") {
                LabelTerm::NotEquals(k.to_string(), v.to_string())
            } else if let Some((k, v)) = term.split_once("==") {
                LabelTerm::Equals(k.to_string(), v.to_string())
            } else if let Some((k, v)) = term.split_once('=') {
                LabelTerm::Equals(k.to_string(), v.to_string())
            } else if let Some(k) = term.strip_prefix('!') {
                LabelTerm::Absent(k.to_string())
            } else {
                LabelTerm::Exists(term.to_string())
            };
            let words: Vec<&String> = match &parsed {
                LabelTerm::Equals(k, v) | LabelTerm::NotEquals(k, v) => vec![k, v],
                LabelTerm::Exists(k) | LabelTerm::Absent(k) => vec![k],
            };
            if term.is_empty() {
                return Err(bad("is empty"));
            }
            if !words.iter().all(|w| valid_word(w)) {
                return Err(bad(
                    "has an empty or invalid key or value (no spaces, `=`, `!` or `,` inside)",
                ));
            }
            terms.push(parsed);
        }
        Ok(Self { terms })
    }

    /// True when every term holds for `labels`.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.terms.iter().all(|t| t.matches(labels))
    }
}

impl fmt::Display for LabelSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let terms: Vec<String> = self
            .terms
            .iter()
            .map(|t| match t {
                LabelTerm::Equals(k, v) => format!("{k}={v}"),
                LabelTerm::NotEquals(k, v) => format!("{k}!={v}"),
                LabelTerm::Exists(k) => k.clone(),
                LabelTerm::Absent(k) => format!("!{k}"),
            })
            .collect();
        f.write_str(&terms.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn every_form_parses_and_round_trips() {
        let sel = LabelSelector::parse(" team=a , gpu!=none,prio,!legacy,zone==eu").unwrap();
        assert_eq!(
            sel.terms,
            [
                LabelTerm::Equals("team".into(), "a".into()),
                LabelTerm::NotEquals("gpu".into(), "none".into()),
                LabelTerm::Exists("prio".into()),
                LabelTerm::Absent("legacy".into()),
                LabelTerm::Equals("zone".into(), "eu".into()),
            ]
        );
        assert_eq!(sel.to_string(), "team=a,gpu!=none,prio,!legacy,zone=eu");
        assert_eq!(LabelSelector::parse(&sel.to_string()).unwrap(), sel);
        assert!(LabelSelector::parse("").unwrap().terms.is_empty());
    }

    #[test]
    fn terms_and_together_and_not_equals_matches_an_absent_label() {
        let sel = LabelSelector::parse("team=a,gpu!=none").unwrap();
        assert!(sel.matches(&labels(&[("team", "a"), ("gpu", "small")])));
        assert!(sel.matches(&labels(&[("team", "a")])), "absent is != none");
        assert!(!sel.matches(&labels(&[("team", "a"), ("gpu", "none")])));
        assert!(!sel.matches(&labels(&[("team", "b"), ("gpu", "small")])));
        let sel = LabelSelector::parse("prio,!legacy").unwrap();
        assert!(sel.matches(&labels(&[("prio", "")])));
        assert!(!sel.matches(&labels(&[("prio", "1"), ("legacy", "y")])));
        assert!(LabelSelector::default().matches(&labels(&[])));
    }

    #[test]
    fn a_bad_term_is_named() {
        for (text, term) in [
            ("team=a,,gpu=b", ""),
            ("=a", "=a"),
            ("team=", "team="),
            ("team=a b", "team=a b"),
            ("!", "!"),
            ("a=b=c", "a=b=c"),
            ("team!=a,x!=", "x!="),
        ] {
            let err = LabelSelector::parse(text).unwrap_err();
            assert_eq!(err.term, term, "{text}");
            assert!(err.to_string().contains(&format!("{term:?}")), "{err}");
        }
    }
}
