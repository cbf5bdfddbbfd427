//! Host policy from the manifest's `[[hosts]]`: which models a worker may train, and how
//! many jobs it may hold. Shared by the manifest model (which builds it) and the queue
//! (which matches claims against it).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// One `[[hosts]]` entry. A worker with no entry follows the defaults (all models allowed).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostPolicy {
    pub name: String,
    /// Model names this host may train; `*` allows all. Empty means all.
    #[serde(default)]
    pub allow_jobs: Vec<String>,
    /// Model names this host must not train; `*` denies all. Wins over allow.
    #[serde(default)]
    pub deny_jobs: Vec<String>,
    /// The most jobs the server hands this host at once (None: the agent's own limit).
    #[serde(default)]
    pub max_concurrent: Option<u32>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

impl HostPolicy {
    /// Why this host may not train `model`, or None when it may.
    pub fn denies_model(&self, model: &str) -> Option<String> {
        let listed = |list: &[String]| list.iter().any(|m| m == "*" || m == model);
        if listed(&self.deny_jobs) {
            return Some(format!("host policy denies {model}"));
        }
        if !self.allow_jobs.is_empty() && !listed(&self.allow_jobs) {
            return Some(format!(
                "host policy allows only {}",
                self.allow_jobs.join(", ")
            ));
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(allow: &[&str], deny: &[&str]) -> HostPolicy {
        HostPolicy {
            name: "h".into(),
            allow_jobs: allow.iter().map(|s| s.to_string()).collect(),
            deny_jobs: deny.iter().map(|s| s.to_string()).collect(),
            ..HostPolicy::default()
        }
    }

    #[test]
    fn empty_allow_list_allows_everything() {
        assert_eq!(host(&[], &[]).denies_model("gbt"), None);
    }

    #[test]
    fn allow_list_and_wildcard() {
        assert_eq!(host(&["gbt", "mlp"], &[]).denies_model("mlp"), None);
        assert!(host(&["gbt"], &[]).denies_model("mlp").is_some());
        assert_eq!(host(&["*"], &[]).denies_model("anything"), None);
    }

    #[test]
    fn deny_wins_over_allow() {
        let why = host(&["*"], &["gbt"]).denies_model("gbt").unwrap();
        assert_eq!(why, "host policy denies gbt");
        assert!(host(&[], &["*"]).denies_model("mlp").is_some());
    }
}
