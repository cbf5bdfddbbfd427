//! Validation and expansion: from the parsed tree to a `Manifest`, collecting every error.

use std::collections::{BTreeMap, BTreeSet};

use cis490_api::{Constraints, Hyper, JobSpec, RetryPolicy, WorkerName};
use serde_json::Value;

use super::node::{self, find, Diagnostics, Entry, Kind, Node};
use super::{job_id, Defaults, HyperType, Manifest, ManifestErrors, ModelDef, SUPPORTED_VERSION};
use crate::policy::HostPolicy;
use crate::store::{MAX_GROUP_NAME_LEN, MAX_NAME_LEN};

mod job_extras;
use job_extras::{want_count, want_env, want_node_selector, want_timeout};

pub(super) const TOP_KEYS: &[&str] = &["version", "defaults", "hosts", "models", "jobs"];
pub(super) const DEFAULTS_KEYS: &[&str] = &[
    "max_attempts",
    "stale_after_s",
    "command",
    "retries_on_failure",
    "priority",
    "timeout_s",
    "node_selector",
];
pub(super) const HOST_KEYS: &[&str] = &[
    "name",
    "allow_jobs",
    "deny_jobs",
    "max_concurrent",
    "labels",
];
pub(super) const MODEL_KEYS: &[&str] = &["command", "hyper", "timeout_s", "env"];
/// The fields of a `[[jobs]]` entry; a `matrix` may vary any of them.
pub(super) const JOB_FIELDS: &[&str] = &[
    "model",
    "mode",
    "hyper",
    "split_recipe",
    "train_hosts",
    "seed",
    "require_cuda",
    "prefer_cuda",
    "min_vram_gib",
    "min_ram_gib",
    "allowed_hosts",
    "priority",
    "max_attempts",
    "stale_after_s",
    "retries_on_failure",
    "labels",
    "timeout_s",
    "env",
    "node_selector",
    "cores",
    "gpus",
];
/// More jobs than this from one `[[jobs]]` entry is surely a mistake in its matrix.
const MAX_JOBS_PER_ENTRY: usize = 10_000;

/// Builds the manifest, or every error found.
pub(crate) fn build(
    text: &str,
    path: &str,
    max_jobs: usize,
) -> Result<(Manifest, Vec<String>), ManifestErrors> {
    let mut d = Diagnostics::new(path.to_string(), text);
    let doc = match toml_edit::ImDocument::parse(text) {
        Ok(doc) => doc,
        Err(err) => {
            let at = err.span().map_or(0, |span| span.start);
            let message = match one_line(err.message()) {
                // toml_edit says nothing about some characters (a lone carriage return).
                m if m.is_empty() => unexplained_parse_error(text, at),
                m => m,
            };
            d.error(at, message);
            return Err(ManifestErrors(d.finish().0));
        }
    };
    let root = node::from_table_like(doc.as_table(), 0);
    // The node tree owns copies of everything it needs; toml_edit's document (every key,
    // value, span and decor) is the larger of the two, so it goes before the jobs are built.
    drop(doc);
    let entries = root.entries().unwrap_or(&[]);
    check_keys(&mut d, entries, TOP_KEYS, "at the top level");

    let version = read_version(&mut d, entries);
    let defaults = find(entries, "defaults")
        .map(|e| read_defaults(&mut d, e))
        .unwrap_or_default();
    let hosts = find(entries, "hosts")
        .map(|e| read_hosts(&mut d, e))
        .unwrap_or_default();
    let models = find(entries, "models")
        .map(|e| read_models(&mut d, e))
        .unwrap_or_default();
    let context = JobContext {
        defaults: &defaults,
        models: &models,
        host_names: hosts.iter().map(|h| h.name.clone()).collect(),
    };
    let jobs = find(entries, "jobs")
        .map(|e| read_jobs(&mut d, e, &context, max_jobs))
        .unwrap_or_default();
    if let Some(hosts_entry) = find(entries, "hosts") {
        let known: BTreeSet<&str> = models
            .keys()
            .map(String::as_str)
            .chain(jobs.iter().map(|j| j.model.as_str()))
            .collect();
        warn_unknown_policy_models(&mut d, hosts_entry, &known);
    }

    let (errors, warnings) = d.finish();
    if !errors.is_empty() {
        return Err(ManifestErrors(errors));
    }
    Ok((
        Manifest {
            version,
            defaults,
            hosts,
            models,
            jobs,
        },
        warnings,
    ))
}

/// What is wrong at `at` when the TOML parser gives no message.
fn unexplained_parse_error(text: &str, at: usize) -> String {
    let here = text.get(at..).and_then(|rest| rest.chars().next());
    // The parser may point just past the character it stumbled on.
    let before = text.get(..at).and_then(|head| head.chars().next_back());
    let control = [here, before]
        .into_iter()
        .flatten()
        .find(|c| c.is_control() && !matches!(c, '\n' | '\t'));
    match control.or(here) {
        Some(c) if c.is_control() => format!(
            "TOML does not allow the control character {} here (only tabs and line breaks; \
             a carriage return must be followed by a line feed)",
            c.escape_unicode()
        ),
        Some(c) => format!("TOML cannot read {c:?} here"),
        None => "the file ends where TOML expects more".to_string(),
    }
}

/// toml_edit's messages span lines ("invalid array\nexpected `]`"); errors are one line.
fn one_line(message: &str) -> String {
    message
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(": ")
}

fn read_version(d: &mut Diagnostics, entries: &[Entry]) -> u32 {
    let Some(entry) = find(entries, "version") else {
        d.error(
            0,
            format!(
                "missing `version = {SUPPORTED_VERSION}`: every manifest declares its version \
                 (so an empty or truncated file is an error, not \"no jobs\")"
            ),
        );
        return SUPPORTED_VERSION;
    };
    match &entry.value.kind {
        Kind::Int(v) if *v == i64::from(SUPPORTED_VERSION) => SUPPORTED_VERSION,
        Kind::Int(v) => {
            d.error(
                entry.value.at,
                format!(
                    "unsupported manifest version {v} (this build reads version {SUPPORTED_VERSION})"
                ),
            );
            SUPPORTED_VERSION
        }
        other => {
            type_error(d, entry, "an integer", other);
            SUPPORTED_VERSION
        }
    }
}

// ---------------------------------------------------------------------------------------
// Sections

fn read_defaults(d: &mut Diagnostics, entry: &Entry) -> Defaults {
    let mut defaults = Defaults::default();
    let Some(entries) = want_table(d, entry) else {
        return defaults;
    };
    check_keys(d, entries, DEFAULTS_KEYS, "in [defaults]");
    if let Some(e) = find(entries, "max_attempts") {
        defaults.max_attempts = want_u32(d, e, 1).unwrap_or(defaults.max_attempts);
    }
    if let Some(e) = find(entries, "stale_after_s") {
        defaults.stale_after_s = want_u64(d, e, 1).unwrap_or(defaults.stale_after_s);
    }
    if let Some(e) = find(entries, "command") {
        defaults.command = want_command(d, e);
    }
    if let Some(e) = find(entries, "retries_on_failure") {
        defaults.retry.retries_on_failure = want_u32(d, e, 0).unwrap_or(0);
    }
    if let Some(e) = find(entries, "priority") {
        defaults.priority = want_i32(d, e).unwrap_or(0);
    }
    if let Some(e) = find(entries, "timeout_s") {
        defaults.timeout_s = want_timeout(d, e);
    }
    if let Some(e) = find(entries, "node_selector") {
        defaults.node_selector = want_node_selector(d, e).unwrap_or_default();
    }
    defaults
}

fn read_hosts(d: &mut Diagnostics, entry: &Entry) -> Vec<HostPolicy> {
    let Some(items) = want_array_of_tables(d, entry, "[[hosts]]") else {
        return Vec::new();
    };
    let mut hosts: Vec<HostPolicy> = Vec::new();
    let mut first_seen: BTreeMap<String, usize> = BTreeMap::new();
    for (item, entries) in items {
        check_keys(d, entries, HOST_KEYS, "in [[hosts]]");
        let mut host = HostPolicy::default();
        match find(entries, "name") {
            None => d.error(item.at, "[[hosts]] entry has no `name`"),
            Some(e) => {
                if let Some(name) = want_str(d, e) {
                    if let Err(err) = WorkerName::parse(&name) {
                        d.error(e.value.at, format!("host `name`: {err}"));
                    } else if let Some(first) = first_seen.get(&name) {
                        let first = d.location(*first);
                        d.error(
                            e.value.at,
                            format!("host `{name}` is listed twice (first at {first})"),
                        );
                    } else {
                        first_seen.insert(name.clone(), e.value.at);
                    }
                    host.name = name;
                }
            }
        }
        if let Some(e) = find(entries, "allow_jobs") {
            host.allow_jobs = want_str_list(d, e).unwrap_or_default();
        }
        if let Some(e) = find(entries, "deny_jobs") {
            host.deny_jobs = want_str_list(d, e).unwrap_or_default();
        }
        if let Some(e) = find(entries, "max_concurrent") {
            // At least 1: a host that should take no jobs says deny_jobs = ["*"].
            host.max_concurrent = want_u32(d, e, 1);
        }
        if let Some(e) = find(entries, "labels") {
            host.labels = want_labels(d, e).unwrap_or_default();
        }
        hosts.push(host);
    }
    hosts
}

/// A host policy naming a model that no `[models]` entry declares and no job uses is
/// probably a typo; it is harmless, so only a warning.
fn warn_unknown_policy_models(d: &mut Diagnostics, hosts: &Entry, known: &BTreeSet<&str>) {
    let Kind::Array(items) = &hosts.value.kind else {
        return;
    };
    for item in items {
        for e in item.entries().unwrap_or(&[]) {
            if e.key != "allow_jobs" && e.key != "deny_jobs" {
                continue;
            }
            let Kind::Array(names) = &e.value.kind else {
                continue;
            };
            for name in names {
                if let Kind::Str(model) = &name.kind {
                    if model != "*" && !known.contains(model.as_str()) {
                        d.warning(
                            name.at,
                            format!(
                                "{} names model `{model}`, which no [models] entry declares and no job uses",
                                e.key
                            ),
                        );
                    }
                }
            }
        }
    }
}

fn read_models(d: &mut Diagnostics, entry: &Entry) -> BTreeMap<String, ModelDef> {
    let mut models = BTreeMap::new();
    let Some(entries) = want_table(d, entry) else {
        return models;
    };
    for model in entries {
        check_name(d, model.key_at, "model name", &model.key);
        let Some(fields) = want_table(d, model) else {
            continue;
        };
        let context = format!("in [models.{}]", model.key);
        check_keys(d, fields, MODEL_KEYS, &context);
        let mut def = ModelDef::default();
        if let Some(e) = find(fields, "command") {
            def.command = want_command(d, e);
        }
        if let Some(e) = find(fields, "hyper") {
            def.hyper = Some(read_schema(d, e));
        }
        if let Some(e) = find(fields, "timeout_s") {
            def.timeout_s = want_timeout(d, e);
        }
        if let Some(e) = find(fields, "env") {
            def.env = want_env(d, e).unwrap_or_default();
        }
        models.insert(model.key.clone(), def);
    }
    models
}

fn read_schema(d: &mut Diagnostics, entry: &Entry) -> BTreeMap<String, HyperType> {
    let mut schema = BTreeMap::new();
    let Some(entries) = want_table(d, entry) else {
        return schema;
    };
    for e in entries {
        let Some(name) = want_str(d, e) else {
            continue;
        };
        match HyperType::parse(&name) {
            Some(ty) => {
                schema.insert(e.key.clone(), ty);
            }
            None => d.error(
                e.value.at,
                format!(
                    "hyper type of `{}` must be one of \"int\", \"float\", \"string\", \"bool\", found {name:?}",
                    e.key
                ),
            ),
        }
    }
    schema
}

// ---------------------------------------------------------------------------------------
// Jobs

struct JobContext<'a> {
    defaults: &'a Defaults,
    models: &'a BTreeMap<String, ModelDef>,
    host_names: BTreeSet<String>,
}

fn read_jobs(
    d: &mut Diagnostics,
    entry: &Entry,
    context: &JobContext,
    max_jobs: usize,
) -> Vec<JobSpec> {
    let Some(items) = want_array_of_tables(d, entry, "[[jobs]]") else {
        return Vec::new();
    };
    // The specs and the position of the entry each came from, side by side: the specs'
    // list becomes the manifest's jobs where it lies (a 100k-job manifest's specs are not
    // moved into a second list, nor their IDs copied into a map to find duplicates).
    let mut specs: Vec<JobSpec> = Vec::new();
    let mut entry_at: Vec<usize> = Vec::new();
    let mut over_limit = false;
    for (item, entries) in items {
        let mut allowed: Vec<&str> = JOB_FIELDS.to_vec();
        allowed.push("matrix");
        check_keys(d, entries, &allowed, "in [[jobs]]");
        if over_limit {
            continue;
        }
        let instances = expand(d, entries);
        if specs.len() + instances.len() > max_jobs {
            d.error(
                item.at,
                format!(
                    "with this entry the manifest makes more than {max_jobs} jobs ({} before it, \
                     {} from it); raise `max_manifest_jobs` in the server's config (`check \
                     --max-jobs`) if that many is meant",
                    specs.len(),
                    instances.len()
                ),
            );
            over_limit = true;
            specs = Vec::new();
            entry_at = Vec::new();
            continue;
        }
        for instance in instances {
            if let Some(spec) = job_spec(d, item.at, &instance, context) {
                specs.push(spec);
                entry_at.push(item.at);
            }
        }
    }

    // Of each set of jobs with one ID the first in file order stays; the others are errors.
    let mut by_id: Vec<usize> = (0..specs.len()).collect();
    by_id.sort_by(|&a, &b| specs[a].id.cmp(&specs[b].id));
    // (repeat, first) pairs, reported in file order.
    let mut repeats: Vec<(usize, usize)> = Vec::new();
    for (k, pair) in by_id.windows(2).enumerate() {
        let &[previous, dup] = pair else { continue };
        if specs[previous].id == specs[dup].id {
            let first = by_id[by_id[..=k].partition_point(|&i| specs[i].id < specs[dup].id)];
            repeats.push((dup, first));
        }
    }
    repeats.sort_unstable();
    let mut repeat = vec![false; specs.len()];
    for (dup, first) in repeats {
        let (at, first_at) = (entry_at[dup], entry_at[first]);
        let message = if first_at == at {
            format!(
                "duplicate job {}: this entry's matrix yields the same job twice",
                specs[dup].id.short()
            )
        } else {
            format!(
                "duplicate job {}: same model, mode, hyper, split_recipe, train_hosts and seed as the job at {}",
                specs[dup].id.short(),
                d.location(first_at)
            )
        };
        d.error(at, message);
        repeat[dup] = true;
    }
    drop(by_id);
    let mut index = 0;
    specs.retain(|_| {
        index += 1;
        !repeat[index - 1]
    });
    for (order, spec) in specs.iter_mut().enumerate() {
        spec.manifest_order = order as u64;
    }
    specs
}

/// One `[[jobs]]` entry as the entries of each job it stands for: itself, or with a
/// `matrix`, one per combination of its lists. Axes are taken in sorted key order, the last
/// varying fastest, values in the order written, so expansion is deterministic and does not
/// depend on how the matrix's keys are ordered in the file.
fn expand(d: &mut Diagnostics, entries: &[Entry]) -> Vec<Vec<Entry>> {
    let base: Vec<Entry> = entries
        .iter()
        .filter(|e| e.key != "matrix")
        .cloned()
        .collect();
    let Some(matrix) = find(entries, "matrix") else {
        return vec![base];
    };
    let Some(matrix_entries) = matrix.value.entries() else {
        type_error(
            d,
            matrix,
            "a table of lists, e.g. matrix = { seed = [1, 2, 3] }",
            &matrix.value.kind,
        );
        return vec![base];
    };
    let base_hyper: Vec<String> = find(&base, "hyper")
        .and_then(|e| e.value.entries())
        .map(|hs| hs.iter().map(|h| h.key.clone()).collect())
        .unwrap_or_default();

    // Flatten `hyper = { lr = [...] }` (or dotted `hyper.lr = [...]`) into `hyper.lr`.
    let mut flat: Vec<(String, &Entry)> = Vec::new();
    for e in matrix_entries {
        if e.key == "hyper" {
            match e.value.entries() {
                Some(subs) => flat.extend(subs.iter().map(|s| (format!("hyper.{}", s.key), s))),
                None => type_error(d, e, "a table of lists", &e.value.kind),
            }
        } else {
            flat.push((e.key.clone(), e));
        }
    }

    let mut axes: Vec<(String, &[Node])> = Vec::new();
    let mut ok = true;
    for (field, e) in flat {
        if let Some(name) = field.strip_prefix("hyper.") {
            if name.is_empty() {
                d.error(e.key_at, "matrix key `hyper.` names no hyperparameter");
                ok = false;
                continue;
            }
            if base_hyper.iter().any(|h| h == name) {
                d.error(
                    e.key_at,
                    format!(
                        "`hyper.{name}` is set both in the job's hyper and in its matrix; keep one"
                    ),
                );
                ok = false;
            }
        } else if !JOB_FIELDS.contains(&field.as_str()) || field == "hyper" {
            let mut expected: Vec<&str> = JOB_FIELDS
                .iter()
                .copied()
                .filter(|f| *f != "hyper")
                .collect();
            expected.push("hyper.NAME");
            unknown_key(d, e.key_at, &field, &expected, "in matrix");
            ok = false;
            continue;
        } else if find(&base, &field).is_some() {
            d.error(
                e.key_at,
                format!("`{field}` is set both in the job and in its matrix; keep one"),
            );
            ok = false;
        }
        if axes.iter().any(|(f, _)| *f == field) {
            d.error(e.key_at, format!("matrix key `{field}` is given twice"));
            ok = false;
            continue;
        }
        match &e.value.kind {
            Kind::Array(values) if !values.is_empty() => axes.push((field, values)),
            Kind::Array(_) => {
                d.error(
                    e.value.at,
                    format!("matrix list `{field}` is empty: the job would expand to nothing"),
                );
                ok = false;
            }
            other => {
                type_error(d, e, "a list of values to expand over", other);
                ok = false;
            }
        }
    }
    if !ok {
        return Vec::new();
    }
    axes.sort_by(|a, b| a.0.cmp(&b.0));
    let total = axes
        .iter()
        .try_fold(1usize, |n, (_, values)| n.checked_mul(values.len()));
    if total.is_none_or(|n| n > MAX_JOBS_PER_ENTRY) {
        d.error(
            matrix.key_at,
            format!("matrix expands to more than {MAX_JOBS_PER_ENTRY} jobs"),
        );
        return Vec::new();
    }

    let mut combos: Vec<Vec<(&str, &Node)>> = vec![Vec::new()];
    for (field, values) in &axes {
        combos = combos
            .into_iter()
            .flat_map(|combo| {
                values.iter().map(move |v| {
                    let mut next = combo.clone();
                    next.push((field.as_str(), v));
                    next
                })
            })
            .collect();
    }
    combos
        .into_iter()
        .map(|combo| instantiate(&base, matrix.key_at, &combo))
        .collect()
}

/// The entries of one matrix combination: the job's own entries plus the chosen values
/// (which carry the positions of the values in the matrix, so errors point there).
fn instantiate(base: &[Entry], matrix_at: usize, combo: &[(&str, &Node)]) -> Vec<Entry> {
    let mut entries = base.to_vec();
    let mut hyper_overrides = Vec::new();
    for (field, value) in combo {
        let entry = |key: &str| Entry {
            key: key.to_string(),
            key_at: value.at,
            value: (*value).clone(),
        };
        match field.strip_prefix("hyper.") {
            Some(name) => hyper_overrides.push(entry(name)),
            None => entries.push(entry(field)),
        }
    }
    if hyper_overrides.is_empty() {
        return entries;
    }
    match entries.iter_mut().find(|e| e.key == "hyper") {
        Some(hyper) => {
            if let Kind::Table(hs) = &mut hyper.value.kind {
                hs.extend(hyper_overrides);
            }
        }
        None => entries.push(Entry {
            key: "hyper".into(),
            key_at: matrix_at,
            value: Node {
                at: matrix_at,
                kind: Kind::Table(hyper_overrides),
            },
        }),
    }
    entries
}

/// One expanded job, or None after recording what is wrong with it.
fn job_spec(
    d: &mut Diagnostics,
    job_at: usize,
    entries: &[Entry],
    context: &JobContext,
) -> Option<JobSpec> {
    let errors_before = d.errors.len();
    let defaults = context.defaults;

    let model_entry = find(entries, "model");
    let model = match model_entry {
        None => {
            d.error(job_at, "[[jobs]] entry has no `model`");
            None
        }
        Some(e) => want_str(d, e).filter(|m| check_name(d, e.value.at, "`model`", m)),
    };
    let mode = match find(entries, "mode") {
        None => {
            d.error(job_at, "[[jobs]] entry has no `mode`");
            None
        }
        Some(e) => want_str(d, e).filter(|m| check_name(d, e.value.at, "`mode`", m)),
    };

    if let (Some(model), Some(mode), Some(e)) = (&model, &mode, find(entries, "mode")) {
        let group = model.len() + 1 + mode.len();
        if group > MAX_GROUP_NAME_LEN {
            d.error(
                e.value.at,
                format!(
                    "`model` and `mode` name the artifact directory `<model>_<mode>`, here {group} bytes; \
                     the most is {MAX_GROUP_NAME_LEN}: shorten one of them"
                ),
            );
        }
    }

    let model_def = model.as_ref().and_then(|m| context.models.get(m));
    let command = match (&model, model_entry) {
        (Some(model), Some(e)) => {
            let command = model_def
                .and_then(|def| def.command.clone())
                .or_else(|| defaults.command.clone());
            if command.is_none() {
                d.error(
                    e.value.at,
                    format!(
                        "model `{model}` has no trainer command: give [models.{model}] a `command` or set `command` in [defaults]"
                    ),
                );
            } else if model_def.is_none() {
                d.undeclared_model(model, e.value.at);
            }
            command
        }
        _ => None,
    };

    let schema = model_def.and_then(|def| def.hyper.as_ref());
    let hyper = match find(entries, "hyper") {
        Some(e) => read_hyper(d, e, model.as_deref().unwrap_or("?"), schema),
        None => Hyper::new(),
    };
    let split_recipe = find(entries, "split_recipe").and_then(|e| {
        let s = want_str(d, e)?;
        if s.is_empty() {
            d.error(
                e.value.at,
                "`split_recipe` must not be empty (leave it out for none)",
            );
        }
        Some(s)
    });
    let mut train_hosts = find(entries, "train_hosts")
        .and_then(|e| want_str_list(d, e))
        .unwrap_or_default();
    // A set: the same hosts in any order (or repeated) are the same job.
    train_hosts.sort();
    train_hosts.dedup();
    let seed = find(entries, "seed")
        .and_then(|e| want_int(d, e))
        .unwrap_or(0);

    let allowed_hosts = match find(entries, "allowed_hosts") {
        Some(e) => {
            let hosts = want_str_list(d, e).unwrap_or_default();
            if let Kind::Array(items) = &e.value.kind {
                for (host, item) in hosts.iter().zip(items) {
                    if !context.host_names.contains(host) {
                        d.warning(
                            item.at,
                            format!(
                                "allowed_hosts entry `{host}` is not named by any [[hosts]] entry"
                            ),
                        );
                    }
                }
            }
            hosts
        }
        None => Vec::new(),
    };
    let mut node_selector = defaults.node_selector.clone();
    if let Some(own) = find(entries, "node_selector").and_then(|e| want_node_selector(d, e)) {
        node_selector.extend(own);
    }
    let count = |d: &mut Diagnostics, key: &str| {
        find(entries, key)
            .and_then(|e| want_count(d, e))
            .unwrap_or(0)
    };
    let constraints = Constraints {
        require_cuda: bool_field(d, entries, "require_cuda"),
        prefer_cuda: bool_field(d, entries, "prefer_cuda"),
        min_vram_gib: gib_field(d, entries, "min_vram_gib"),
        min_ram_gib: gib_field(d, entries, "min_ram_gib"),
        allowed_hosts,
        node_selector,
        cores: count(d, "cores"),
        gpus: count(d, "gpus"),
    };
    let timeout_s = match find(entries, "timeout_s") {
        Some(e) => want_timeout(d, e),
        None => model_def
            .and_then(|def| def.timeout_s)
            .or(defaults.timeout_s),
    };
    let mut env = model_def.map(|def| def.env.clone()).unwrap_or_default();
    if let Some(own) = find(entries, "env").and_then(|e| want_env(d, e)) {
        env.extend(own);
    }
    let priority = find(entries, "priority")
        .and_then(|e| want_i32(d, e))
        .unwrap_or(defaults.priority);
    let max_attempts = find(entries, "max_attempts")
        .and_then(|e| want_u32(d, e, 1))
        .unwrap_or(defaults.max_attempts);
    let stale_after_s = find(entries, "stale_after_s")
        .and_then(|e| want_u64(d, e, 1))
        .unwrap_or(defaults.stale_after_s);
    let retry = match find(entries, "retries_on_failure") {
        Some(e) => RetryPolicy {
            retries_on_failure: want_u32(d, e, 0).unwrap_or(0),
        },
        None => defaults.retry.clone(),
    };
    let labels = find(entries, "labels")
        .and_then(|e| want_labels(d, e))
        .unwrap_or_default();

    if d.errors.len() != errors_before {
        return None;
    }
    let (model, mode, command) = (model?, mode?, command?);
    Some(JobSpec {
        id: job_id(
            &model,
            &mode,
            &hyper,
            split_recipe.as_deref(),
            &train_hosts,
            seed,
        ),
        model,
        mode,
        hyper,
        split_recipe,
        train_hosts,
        seed,
        constraints,
        priority,
        max_attempts,
        stale_after_s,
        retry,
        command,
        labels,
        timeout_s,
        env,
        manifest_order: 0,
    })
}

fn read_hyper(
    d: &mut Diagnostics,
    entry: &Entry,
    model: &str,
    schema: Option<&BTreeMap<String, HyperType>>,
) -> Hyper {
    let mut hyper = Hyper::new();
    let Some(entries) = want_table(d, entry) else {
        return hyper;
    };
    for e in entries {
        // An integer given for a `float` key is that float: `1` and `1.0` are one job.
        let mut as_float = None;
        if !is_flag_name(&e.key) {
            d.error(
                e.key_at,
                format!(
                    "hyper key {:?} cannot be passed to the trainer as --{} VALUE: use letters, digits, '_', '-' and '.', starting with a letter, digit or '_'",
                    e.key, e.key
                ),
            );
            continue;
        }
        if let Some(schema) = schema {
            let Some(ty) = schema.get(&e.key) else {
                let known: Vec<&str> = schema.keys().map(String::as_str).collect();
                let hint = if known.is_empty() {
                    "it declares none".to_string()
                } else {
                    format!("expected one of: {}", known.join(", "))
                };
                d.error(
                    e.key_at,
                    format!(
                        "hyper key `{}` is not in model {model}'s schema ({hint}{})",
                        e.key,
                        suggestion(&e.key, &known)
                    ),
                );
                continue;
            };
            let fits = matches!(
                (ty, &e.value.kind),
                (HyperType::Int, Kind::Int(_))
                    | (HyperType::Float, Kind::Float(_) | Kind::Int(_))
                    | (HyperType::String, Kind::Str(_))
                    | (HyperType::Bool, Kind::Bool(_))
            );
            if !fits {
                d.error(
                    e.value.at,
                    format!(
                        "hyper `{}` of model {model} must be {} per its schema, found {}",
                        e.key,
                        ty.as_str(),
                        e.value.kind.type_name()
                    ),
                );
                continue;
            }
            if let (HyperType::Float, Kind::Int(i)) = (ty, &e.value.kind) {
                as_float = serde_json::Number::from_f64(*i as f64).map(Value::Number);
            }
        }
        if let Some(value) = as_float.or_else(|| hyper_value(d, &e.key, &e.value)) {
            hyper.insert(e.key.clone(), value);
        }
    }
    hyper
}

/// Whether `key` works as an argparse-style `--key` flag.
fn is_flag_name(key: &str) -> bool {
    key.bytes()
        .next()
        .is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_')
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

/// A hyper value as JSON. Scalars and lists of scalars only: the trainer receives each one
/// as `--key value`, which has no form for a table.
fn hyper_value(d: &mut Diagnostics, key: &str, node: &Node) -> Option<Value> {
    match &node.kind {
        Kind::Str(s) => Some(Value::String(s.clone())),
        Kind::Int(i) => Some(Value::from(*i)),
        Kind::Bool(b) => Some(Value::Bool(*b)),
        Kind::Datetime(s) => Some(Value::String(s.clone())),
        Kind::Float(f) => match serde_json::Number::from_f64(*f) {
            Some(n) => Some(Value::Number(n)),
            None => {
                d.error(node.at, format!("hyper `{key}` must be a finite number, found {f}"));
                None
            }
        },
        Kind::Array(items) => items
            .iter()
            .map(|item| match item.kind {
                Kind::Array(_) | Kind::Table(_) => {
                    d.error(
                        item.at,
                        format!("hyper `{key}`: a list may hold only strings, numbers, booleans and datetimes"),
                    );
                    None
                }
                _ => hyper_value(d, key, item),
            })
            .collect::<Option<Vec<_>>>()
            .map(Value::Array),
        Kind::Table(_) => {
            d.error(
                node.at,
                format!("hyper `{key}` must be a string, number, boolean or list, found table (the trainer gets it as --{key} VALUE)"),
            );
            None
        }
    }
}

fn bool_field(d: &mut Diagnostics, entries: &[Entry], key: &str) -> bool {
    find(entries, key)
        .and_then(|e| want_bool(d, e))
        .unwrap_or(false)
}

fn gib_field(d: &mut Diagnostics, entries: &[Entry], key: &str) -> f64 {
    let Some(e) = find(entries, key) else {
        return 0.0;
    };
    let Some(value) = want_number(d, e) else {
        return 0.0;
    };
    if value < 0.0 {
        d.error(
            e.value.at,
            format!("`{key}` must not be negative, found {value}"),
        );
        return 0.0;
    }
    value
}

// ---------------------------------------------------------------------------------------
// Typed readers: each records an error at the value and returns None when it does not fit.

fn type_error(d: &mut Diagnostics, entry: &Entry, expected: &str, found: &Kind) {
    d.error(
        entry.value.at,
        format!(
            "`{}` must be {expected}, found {}",
            entry.key,
            found.type_name()
        ),
    );
}

fn want_table<'a>(d: &mut Diagnostics, entry: &'a Entry) -> Option<&'a [Entry]> {
    let found = entry.value.entries();
    if found.is_none() {
        type_error(d, entry, "a table", &entry.value.kind);
    }
    found
}

fn want_array_of_tables<'a>(
    d: &mut Diagnostics,
    entry: &'a Entry,
    what: &str,
) -> Option<Vec<(&'a Node, &'a [Entry])>> {
    let Kind::Array(items) = &entry.value.kind else {
        type_error(
            d,
            entry,
            &format!("an array of tables ({what})"),
            &entry.value.kind,
        );
        return None;
    };
    let mut tables = Vec::new();
    for item in items {
        match item.entries() {
            Some(entries) => tables.push((item, entries)),
            None => d.error(
                item.at,
                format!(
                    "each `{}` entry must be a table ({what}), found {}",
                    entry.key,
                    item.kind.type_name()
                ),
            ),
        }
    }
    Some(tables)
}

fn want_str(d: &mut Diagnostics, entry: &Entry) -> Option<String> {
    match &entry.value.kind {
        Kind::Str(s) => Some(s.clone()),
        other => {
            type_error(d, entry, "a string", other);
            None
        }
    }
}

fn want_bool(d: &mut Diagnostics, entry: &Entry) -> Option<bool> {
    match &entry.value.kind {
        Kind::Bool(b) => Some(*b),
        other => {
            type_error(d, entry, "true or false", other);
            None
        }
    }
}

fn want_int(d: &mut Diagnostics, entry: &Entry) -> Option<i64> {
    match &entry.value.kind {
        Kind::Int(i) => Some(*i),
        other => {
            type_error(d, entry, "an integer", other);
            None
        }
    }
}

fn want_number(d: &mut Diagnostics, entry: &Entry) -> Option<f64> {
    match &entry.value.kind {
        Kind::Int(i) => Some(*i as f64),
        Kind::Float(f) if f.is_finite() => Some(*f),
        Kind::Float(f) => {
            d.error(
                entry.value.at,
                format!("`{}` must be a finite number, found {f}", entry.key),
            );
            None
        }
        other => {
            type_error(d, entry, "a number", other);
            None
        }
    }
}

fn want_int_in<T: TryFrom<i64>>(
    d: &mut Diagnostics,
    entry: &Entry,
    min: i64,
    max: i64,
) -> Option<T> {
    let value = want_int(d, entry)?;
    if value < min || value > max {
        d.error(
            entry.value.at,
            format!(
                "`{}` must be between {min} and {max}, found {value}",
                entry.key
            ),
        );
        return None;
    }
    T::try_from(value).ok()
}

fn want_u32(d: &mut Diagnostics, entry: &Entry, min: u32) -> Option<u32> {
    want_int_in(d, entry, i64::from(min), i64::from(u32::MAX))
}

fn want_u64(d: &mut Diagnostics, entry: &Entry, min: u32) -> Option<u64> {
    want_int_in(d, entry, i64::from(min), i64::MAX)
}

fn want_i32(d: &mut Diagnostics, entry: &Entry) -> Option<i32> {
    want_int_in(d, entry, i64::from(i32::MIN), i64::from(i32::MAX))
}

fn want_str_list(d: &mut Diagnostics, entry: &Entry) -> Option<Vec<String>> {
    let Kind::Array(items) = &entry.value.kind else {
        type_error(d, entry, "a list of strings", &entry.value.kind);
        return None;
    };
    let mut out = Vec::with_capacity(items.len());
    let mut ok = true;
    for item in items {
        match &item.kind {
            Kind::Str(s) => out.push(s.clone()),
            other => {
                d.error(
                    item.at,
                    format!(
                        "`{}` must be a list of strings, found a {} in it",
                        entry.key,
                        other.type_name()
                    ),
                );
                ok = false;
            }
        }
    }
    ok.then_some(out)
}

/// A trainer argv: a non-empty list of strings whose program is not empty.
fn want_command(d: &mut Diagnostics, entry: &Entry) -> Option<Vec<String>> {
    let argv = want_str_list(d, entry)?;
    if argv.first().is_none_or(|program| program.is_empty()) {
        d.error(
            entry.value.at,
            "`command` must name a program: a non-empty list like [\"python3\", \"train.py\"] (it is run without a shell)",
        );
        return None;
    }
    Some(argv)
}

fn want_labels(d: &mut Diagnostics, entry: &Entry) -> Option<BTreeMap<String, String>> {
    let entries = want_table(d, entry)?;
    let mut labels = BTreeMap::new();
    for e in entries {
        if let Some(value) = want_str(d, e) {
            labels.insert(e.key.clone(), value);
        }
    }
    Some(labels)
}

/// Model and mode names name artifact directories (`<model>_<mode>`), so they are kept
/// path-safe and within what the store takes. Returns whether `name` is fine.
fn check_name(d: &mut Diagnostics, at: usize, what: &str, name: &str) -> bool {
    if name.is_empty() {
        d.error(at, format!("{what} must not be empty"));
        return false;
    }
    if name.len() > MAX_NAME_LEN {
        d.error(
            at,
            format!(
                "{what} {} is {} characters long; the most is {MAX_NAME_LEN} (it names the artifact directory)",
                shown(name),
                name.len()
            ),
        );
        return false;
    }
    let ok = name
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_alphanumeric())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if !ok {
        d.error(
            at,
            format!("{what} {} may hold only letters, digits, '_', '.' and '-', starting with a letter or digit", shown(name)),
        );
    }
    ok
}

/// A name for a message: quoted, and cut to its first 40 characters when longer.
fn shown(name: &str) -> String {
    const SHOWN: usize = 40;
    match name.char_indices().nth(SHOWN) {
        None => format!("{name:?}"),
        Some((cut, _)) => format!(
            "{:?}... ({} characters)",
            &name[..cut],
            name.chars().count()
        ),
    }
}

fn check_keys(d: &mut Diagnostics, entries: &[Entry], allowed: &[&str], context: &str) {
    for e in entries {
        if !allowed.contains(&e.key.as_str()) {
            unknown_key(d, e.key_at, &e.key, allowed, context);
        }
    }
}

fn unknown_key(d: &mut Diagnostics, at: usize, key: &str, allowed: &[&str], context: &str) {
    d.error(
        at,
        format!(
            "unknown key `{key}` {context}{} (expected one of: {})",
            suggestion(key, allowed),
            allowed.join(", ")
        ),
    );
}

/// `; did you mean `X`?` when a known key is a small edit away.
fn suggestion(key: &str, known: &[&str]) -> String {
    known
        .iter()
        .map(|k| (edit_distance(key, k), *k))
        .filter(|(dist, k)| *dist <= 2.max(k.len() / 4) && *dist < k.len())
        .min()
        .map(|(_, k)| format!("; did you mean `{k}`?"))
        .unwrap_or_default()
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}
