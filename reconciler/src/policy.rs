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

/// How the policies `new` differ from `old`, by host name (sorted): added, removed, and
/// changed with the keys that change.
pub fn host_changes(old: &[HostPolicy], new: &[HostPolicy]) -> Vec<cis490_api::HostChange> {
    use std::collections::BTreeMap;
    let by_name = |hosts: &[HostPolicy]| -> BTreeMap<String, HostPolicy> {
        hosts.iter().map(|h| (h.name.clone(), h.clone())).collect()
    };
    let (old, new) = (by_name(old), by_name(new));
    let change = |name: &str, change: &str, fields: Vec<String>| cis490_api::HostChange {
        name: name.to_string(),
        change: change.to_string(),
        fields,
    };
    let mut out = Vec::new();
    for (name, was) in &old {
        match new.get(name) {
            None => out.push(change(name, "remove", Vec::new())),
            Some(now) => {
                let mut fields = Vec::new();
                for (key, differs) in [
                    ("allow_jobs", was.allow_jobs != now.allow_jobs),
                    ("deny_jobs", was.deny_jobs != now.deny_jobs),
                    ("max_concurrent", was.max_concurrent != now.max_concurrent),
                    ("labels", was.labels != now.labels),
                ] {
                    if differs {
                        fields.push(key.to_string());
                    }
                }
                if !fields.is_empty() {
                    out.push(change(name, "update", fields));
                }
            }
        }
    }
    for name in new.keys().filter(|n| !old.contains_key(*n)) {
        out.push(change(name, "add", Vec::new()));
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
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
