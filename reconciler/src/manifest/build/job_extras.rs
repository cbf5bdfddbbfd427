//! The job fields that shape how a job runs rather than what it is: `timeout_s`, `env`,
//! `node_selector`, `cores` and `gpus`. None of them is part of the job's ID.

use std::collections::BTreeMap;

use super::{want_labels, want_str, want_table, want_u32, want_u64, Diagnostics, Entry};

/// The environment variables the agent sets itself; a manifest may not set them.
const AGENT_ENV: &str = "CIS490_";
/// Set by the agent to the GPU it hands the job.
const GPU_ENV: &str = "CUDA_VISIBLE_DEVICES";

/// `timeout_s`: a whole number of seconds, at least 1.
pub(super) fn want_timeout(d: &mut Diagnostics, entry: &Entry) -> Option<u64> {
    want_u64(d, entry, 1)
}

/// `cores` or `gpus`: how many the job holds while it runs (0 = none).
pub(super) fn want_count(d: &mut Diagnostics, entry: &Entry) -> Option<u32> {
    want_u32(d, entry, 0)
}

/// `node_selector`: a table of string values, keys and values as worker labels take them.
pub(super) fn want_node_selector(
    d: &mut Diagnostics,
    entry: &Entry,
) -> Option<BTreeMap<String, String>> {
    let selector = want_labels(d, entry)?;
    let mut ok = true;
    for e in entry.value.entries().unwrap_or(&[]) {
        if e.key.is_empty() {
            d.error(e.key_at, "a node_selector key must not be empty");
            ok = false;
        }
    }
    ok.then_some(selector)
}

/// `env`: a table of string values whose keys are environment variable names the trainer
/// can be given (not the agent's own `CIS490_*` nor `CUDA_VISIBLE_DEVICES`).
pub(super) fn want_env(d: &mut Diagnostics, entry: &Entry) -> Option<BTreeMap<String, String>> {
    let entries = want_table(d, entry)?;
    let mut env = BTreeMap::new();
    let mut ok = true;
    for e in entries {
        if let Some(problem) = env_name_problem(&e.key) {
            d.error(e.key_at, format!("env {:?}: {problem}", e.key));
            ok = false;
            continue;
        }
        let Some(value) = want_str(d, e) else {
            ok = false;
            continue;
        };
        if value.contains('\0') {
            d.error(
                e.value.at,
                format!("env `{}` must not hold a NUL character", e.key),
            );
            ok = false;
            continue;
        }
        env.insert(e.key.clone(), value);
    }
    ok.then_some(env)
}

/// Why `name` cannot be set in the trainer's environment, or None.
fn env_name_problem(name: &str) -> Option<String> {
    let valid = name
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if !valid {
        return Some(
            "not an environment variable name: use letters, digits and '_', not starting with a digit"
                .to_string(),
        );
    }
    if name.to_ascii_uppercase().starts_with(AGENT_ENV) {
        return Some(format!(
            "the agent sets the {AGENT_ENV}* variables itself (the trainer contract); pick another name"
        ));
    }
    if name == GPU_ENV {
        return Some(format!(
            "the agent sets {GPU_ENV} to the GPU it gives the job; ask for GPUs with `gpus` or `require_cuda`"
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::env_name_problem;

    #[test]
    fn env_names() {
        for good in ["OMP_NUM_THREADS", "_x", "a1"] {
            assert_eq!(env_name_problem(good), None, "{good}");
        }
        for bad in [
            "",
            "1A",
            "A-B",
            "A B",
            "CIS490_JOB_ID",
            "cis490_x",
            "CUDA_VISIBLE_DEVICES",
        ] {
            assert!(env_name_problem(bad).is_some(), "{bad}");
        }
    }
}
