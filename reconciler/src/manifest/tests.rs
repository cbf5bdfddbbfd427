//! Unit tests of the manifest model: every error kind with its position, defaults, matrix
//! expansion and job identity.

use super::*;
use cis490_api::JobId;
use proptest::prelude::*;
use serde_json::json;
use std::collections::BTreeSet;

const PATH: &str = "m.toml";

/// Lines 1-4: a version and a gbt model with a schema.
const PRELUDE: &str = r#"version = 1
[models.gbt]
command = ["train"]
hyper = { lr = "float", depth = "int", name = "string", flag = "bool" }
"#;

fn parse(text: &str) -> Result<LoadedManifest, ManifestErrors> {
    parse_manifest(text, Path::new(PATH))
}

fn ok(text: &str) -> LoadedManifest {
    match parse(text) {
        Ok(loaded) => loaded,
        Err(errors) => panic!("expected a valid manifest, got:\n{errors}"),
    }
}

fn errors(text: &str) -> Vec<ManifestError> {
    match parse(text) {
        Ok(_) => panic!("expected errors, the manifest was accepted:\n{text}"),
        Err(errors) => errors.0,
    }
}

/// Asserts that the only error is on `line` and its message contains `needle`.
fn assert_one_error(text: &str, line: u32, needle: &str) -> ManifestError {
    let errs = errors(text);
    assert_eq!(errs.len(), 1, "expected exactly one error, got {errs:#?}");
    let e = errs[0].clone();
    assert_eq!(e.path, PATH);
    assert_eq!(e.line, Some(line), "wrong line for {e:?}");
    assert!(e.column.is_some());
    assert!(
        e.message.contains(needle),
        "message {:?} lacks {needle:?}",
        e.message
    );
    e
}

fn with_prelude(rest: &str) -> String {
    format!("{PRELUDE}{rest}")
}

fn ids(loaded: &LoadedManifest) -> Vec<JobId> {
    loaded.manifest.jobs.iter().map(|j| j.id.clone()).collect()
}

// ---------------------------------------------------------------------------------------
// Valid manifests and defaults

#[test]
fn defaults_fill_in_what_a_job_leaves_out() {
    let loaded = ok(&with_prelude(
        r#"[[jobs]]
model = "gbt"
mode = "oracle"
"#,
    ));
    let m = &loaded.manifest;
    assert_eq!(m.version, 1);
    assert_eq!(m.defaults, Defaults::default());
    let job = &m.jobs[0];
    assert_eq!(job.max_attempts, 3);
    assert_eq!(job.stale_after_s, 90);
    assert_eq!(job.retry.retries_on_failure, 0);
    assert_eq!(job.priority, 0);
    assert_eq!(job.seed, 0);
    assert_eq!(job.split_recipe, None);
    assert!(job.hyper.is_empty());
    assert_eq!(job.constraints, cis490_api::Constraints::default());
    assert_eq!(job.command, vec!["train".to_string()]);
    assert_eq!(job.manifest_order, 0);
    assert_eq!(
        job.id,
        job_id("gbt", "oracle", &Hyper::new(), None, &[], 0),
        "the ID is computed from the identity fields"
    );
    assert!(loaded.warnings.is_empty());
    assert_eq!(loaded.sha256.len(), 64);
    assert_eq!(loaded.path, Path::new(PATH));
}

#[test]
fn defaults_section_and_job_overrides() {
    let loaded = ok(r#"version = 1
[defaults]
max_attempts = 5
stale_after_s = 120
retries_on_failure = 2
priority = 3
command = ["python3", "t.py"]
[models.mlp]
[[jobs]]
model = "mlp"
mode = "a"
[[jobs]]
model = "mlp"
mode = "b"
max_attempts = 1
stale_after_s = 30
retries_on_failure = 0
priority = -1
seed = 4
split_recipe = "r"
require_cuda = true
prefer_cuda = true
min_vram_gib = 8
min_ram_gib = 1.5
labels = { team = "x" }
"#);
    let [a, b] = &loaded.manifest.jobs[..] else {
        panic!("expected two jobs")
    };
    assert_eq!(
        (
            a.max_attempts,
            a.stale_after_s,
            a.retry.retries_on_failure,
            a.priority
        ),
        (5, 120, 2, 3)
    );
    // A model with no command falls back to [defaults] command.
    assert_eq!(a.command, vec!["python3".to_string(), "t.py".to_string()]);
    assert_eq!(
        (
            b.max_attempts,
            b.stale_after_s,
            b.retry.retries_on_failure,
            b.priority
        ),
        (1, 30, 0, -1)
    );
    assert_eq!(b.seed, 4);
    assert_eq!(b.split_recipe.as_deref(), Some("r"));
    assert!(b.constraints.require_cuda && b.constraints.prefer_cuda);
    assert_eq!(b.constraints.min_vram_gib, 8.0);
    assert_eq!(b.constraints.min_ram_gib, 1.5);
    assert_eq!(b.labels.get("team").map(String::as_str), Some("x"));
    assert_eq!((a.manifest_order, b.manifest_order), (0, 1));
}

#[test]
fn hosts_become_host_policies() {
    let loaded = ok(r#"version = 1
[[hosts]]
name = "pi"
deny_jobs = ["*"]
[[hosts]]
name = "gpu-box"
allow_jobs = ["gbt", "mlp"]
max_concurrent = 2
labels = { gpu = "yes" }
"#);
    let hosts = &loaded.manifest.hosts;
    assert_eq!(hosts.len(), 2);
    assert_eq!(hosts[0].name, "pi");
    assert!(hosts[0].denies_model("gbt").is_some());
    assert_eq!(hosts[1].allow_jobs, vec!["gbt", "mlp"]);
    assert_eq!(hosts[1].max_concurrent, Some(2));
    assert_eq!(hosts[1].labels.get("gpu").map(String::as_str), Some("yes"));
    assert_eq!(hosts[0].max_concurrent, None);
}

#[test]
fn hyper_values_convert_to_json_as_written() {
    let loaded = ok(&with_prelude(
        r#"[models.free]
command = ["t"]
[[jobs]]
model = "gbt"
mode = "m"
hyper = { lr = 1, depth = 3, name = "x", flag = true }
[[jobs]]
model = "free"
mode = "m"
hyper = { when = 1979-05-27T07:32:00Z, list = [1, 2.5, "a"], f = 0.1 }
"#,
    ));
    let jobs = &loaded.manifest.jobs;
    // "float" accepts an integer, as the float it stands for.
    assert_eq!(jobs[0].hyper["lr"], json!(1.0));
    assert_eq!(jobs[0].hyper["depth"], json!(3));
    assert_eq!(jobs[0].hyper["name"], json!("x"));
    assert_eq!(jobs[0].hyper["flag"], json!(true));
    assert_eq!(jobs[1].hyper["when"], json!("1979-05-27T07:32:00Z"));
    assert_eq!(jobs[1].hyper["list"], json!([1, 2.5, "a"]));
    assert_eq!(jobs[1].hyper["f"], json!(0.1));
}

#[test]
fn train_hosts_are_sorted_and_deduplicated() {
    let loaded = ok(&with_prelude(
        r#"[[jobs]]
model = "gbt"
mode = "m"
train_hosts = ["b", "a", "b"]
[[jobs]]
model = "gbt"
mode = "n"
train_hosts = ["a", "b"]
"#,
    ));
    let jobs = &loaded.manifest.jobs;
    assert_eq!(jobs[0].train_hosts, vec!["a", "b"]);
    assert_eq!(
        jobs[0].id,
        job_id(
            "gbt",
            "m",
            &Hyper::new(),
            None,
            &["a".into(), "b".into()],
            0
        )
    );
}

#[test]
fn the_example_manifest_is_valid_and_shows_every_feature() {
    let text = include_str!("../../../etc/training_manifest.toml.example");
    let loaded = ok(text);
    let m = &loaded.manifest;
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    assert_eq!(m.jobs.len(), 14);
    assert_eq!(m.hosts.len(), 3);
    let models: BTreeSet<&str> = m.jobs.iter().map(|j| j.model.as_str()).collect();
    let modes: BTreeSet<&str> = m.jobs.iter().map(|j| j.mode.as_str()).collect();
    assert_eq!(models, BTreeSet::from(["gbt", "mlp"]));
    assert_eq!(modes, BTreeSet::from(["oracle", "realistic"]));
    let count = |f: &dyn Fn(&JobSpec) -> bool| m.jobs.iter().filter(|j| f(j)).count();
    assert!(count(&|j| j.constraints.require_cuda) > 0);
    assert!(count(&|j| j.constraints.prefer_cuda) > 0);
    assert!(count(&|j| j.constraints.min_vram_gib > 0.0) > 0);
    assert_eq!(count(&|j| !j.constraints.allowed_hosts.is_empty()), 1);
    assert_eq!(count(&|j| !j.constraints.node_selector.is_empty()), 1);
    assert_eq!(count(&|j| j.constraints.cores > 0), 1);
    assert_eq!(count(&|j| j.timeout_s == Some(600)), 1);
    assert!(count(&|j| j.timeout_s == Some(3600)) > 0);
    assert!(count(&|j| j.env.get("OMP_NUM_THREADS").is_some_and(|v| v == "4")) == 1);
    let negative_lr = |j: &JobSpec| {
        j.hyper
            .get("learning_rate")
            .and_then(serde_json::Value::as_f64)
            .is_some_and(|lr| lr < 0.0)
    };
    assert_eq!(
        count(&negative_lr),
        1,
        "exactly one job demonstrates a failure"
    );
    let trainer = vec!["python3".to_string(), "etc/examples/trainer.py".to_string()];
    assert!(m.jobs.iter().all(|j| j.command == trainer));
    // A CPU host allowed gbt and mlp can claim the jobs that need no GPU.
    let cpu = m.hosts.iter().find(|h| h.name == "cpu-box").unwrap();
    let cpu_jobs = count(&|j| {
        !j.constraints.require_cuda
            && j.constraints.min_vram_gib == 0.0
            && j.constraints.allowed_hosts.is_empty()
            && cpu.denies_model(&j.model).is_none()
    });
    assert!(cpu_jobs >= 4, "only {cpu_jobs} jobs for a CPU host");
    let pi = m.hosts.iter().find(|h| h.name == "pi").unwrap();
    assert!(m.jobs.iter().all(|j| pi.denies_model(&j.model).is_some()));
}

#[test]
fn load_manifest_reports_a_missing_file_without_a_position() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("absent.toml");
    let errs = load_manifest(&path, super::DEFAULT_MAX_MANIFEST_JOBS)
        .unwrap_err()
        .0;
    assert_eq!(errs.len(), 1);
    assert_eq!((errs[0].line, errs[0].column), (None, None));
    assert!(errs[0].message.contains("cannot read manifest"));
    assert!(format_error(&errs[0]).starts_with(&format!("{}: ", path.display())));
}

// ---------------------------------------------------------------------------------------
// Every error kind, with its position

#[test]
fn missing_version_is_an_error_at_the_top() {
    let e = assert_one_error("", 1, "missing `version = 1`");
    assert_eq!(e.column, Some(1));
    assert_one_error("[defaults]\nmax_attempts = 2\n", 1, "missing `version = 1`");
}

#[test]
fn unsupported_or_mistyped_version() {
    assert_one_error("# c\nversion = 2\n", 2, "unsupported manifest version 2");
    assert_one_error(
        "version = \"1\"\n",
        1,
        "`version` must be an integer, found string",
    );
}

#[test]
fn toml_syntax_errors_have_a_position() {
    let e = assert_one_error("version = 1\nx = [1,,]\ny = 2\n", 2, "");
    assert_eq!(e.column, Some(8));
    assert!(!e.message.contains('\n'));
    assert_one_error("version = 1\nversion = 1\n", 2, "duplicate key");
}

#[test]
fn unknown_keys_are_rejected_everywhere_with_a_suggestion() {
    assert_one_error(
        "version = 1\nverison = 1\n",
        2,
        "unknown key `verison` at the top level",
    );
    assert_one_error(
        "version = 1\n[defaults]\nmax_attempt = 2\n",
        3,
        "did you mean `max_attempts`?",
    );
    assert_one_error(
        "version = 1\n[[hosts]]\nname = \"a\"\nallow = [\"gbt\"]\n",
        4,
        "unknown key `allow` in [[hosts]]",
    );
    assert_one_error(
        "version = 1\n[models.gbt]\ncommand = [\"t\"]\nhyperparams = {}\n",
        4,
        "unknown key `hyperparams` in [models.gbt]",
    );
    let e = assert_one_error(
        &with_prelude("[[jobs]]\nmodel = \"gbt\"\nmode = \"m\"\nrequire_cdua = true\n"),
        8,
        "unknown key `require_cdua` in [[jobs]]",
    );
    assert!(e.message.contains("did you mean `require_cuda`?"));
    assert_eq!(e.column, Some(1));
}

#[test]
fn wrong_types_name_the_field_and_both_types() {
    assert_one_error(
        &with_prelude("[[jobs]]\nmodel = \"gbt\"\nmode = \"m\"\nseed = \"1\"\n"),
        8,
        "`seed` must be an integer, found string",
    );
    assert_one_error(
        &with_prelude("[[jobs]]\nmodel = \"gbt\"\nmode = \"m\"\nrequire_cuda = \"yes\"\n"),
        8,
        "`require_cuda` must be true or false, found string",
    );
    assert_one_error(
        &with_prelude("[[jobs]]\nmodel = \"gbt\"\nmode = \"m\"\nallowed_hosts = \"a\"\n"),
        8,
        "`allowed_hosts` must be a list of strings, found string",
    );
    assert_one_error(
        "version = 1\nhosts = { name = \"a\" }\n",
        2,
        "`hosts` must be an array of tables ([[hosts]])",
    );
    assert_one_error(
        "version = 1\n[defaults]\nmax_attempts = 0\n",
        3,
        "`max_attempts` must be between 1 and",
    );
}

#[test]
fn the_column_points_at_the_value() {
    let e = assert_one_error(
        &with_prelude("[[jobs]]\nmodel = \"gbt\"\nmode = \"m\"\n  seed   =  \"x\"\n"),
        8,
        "`seed`",
    );
    assert_eq!(e.column, Some(13));
}

#[test]
fn a_model_without_any_trainer_command_is_an_error() {
    assert_one_error(
        "version = 1\n[models.mlp]\n[[jobs]]\nmodel = \"mlp\"\nmode = \"m\"\n",
        4,
        "model `mlp` has no trainer command",
    );
    // Not declared at all and no default command either.
    assert_one_error(
        "version = 1\n[[jobs]]\nmode = \"m\"\nmodel = \"xgb\"\n",
        4,
        "model `xgb` has no trainer command",
    );
    assert_one_error(
        "version = 1\n[models.mlp]\ncommand = []\n",
        3,
        "`command` must name a program",
    );
}

#[test]
fn an_undeclared_model_with_a_default_command_is_only_a_warning() {
    let loaded =
        ok("version = 1\n[defaults]\ncommand = [\"t\"]\n[[jobs]]\nmodel = \"xgb\"\nmode = \"m\"\n");
    assert_eq!(loaded.manifest.jobs.len(), 1);
    assert_eq!(loaded.warnings.len(), 1);
    assert!(loaded.warnings[0].starts_with("m.toml:5:9: model `xgb` is not declared"));
}

#[test]
fn hyper_keys_must_be_in_the_schema() {
    let e = assert_one_error(
        &with_prelude("[[jobs]]\nmodel = \"gbt\"\nmode = \"m\"\n[jobs.hyper]\ndepth = 3\nlearning_rate = 0.1\n"),
        10,
        "hyper key `learning_rate` is not in model gbt's schema",
    );
    assert!(e.message.contains("expected one of: depth, flag, lr, name"));
}

#[test]
fn hyper_values_must_fit_the_schema() {
    assert_one_error(
        &with_prelude("[[jobs]]\nmodel = \"gbt\"\nmode = \"m\"\nhyper = { depth = 3.5 }\n"),
        8,
        "hyper `depth` of model gbt must be int per its schema, found float",
    );
    assert_one_error(
        &with_prelude("[[jobs]]\nmodel = \"gbt\"\nmode = \"m\"\nhyper = { flag = 1 }\n"),
        8,
        "must be bool per its schema, found integer",
    );
    assert_one_error(
        &with_prelude("[[jobs]]\nmodel = \"gbt\"\nmode = \"m\"\nhyper = { lr = nan }\n"),
        8,
        "must be a finite number",
    );
    assert_one_error(
        "version = 1\n[models.x]\ncommand = [\"t\"]\nhyper = { a = \"double\" }\n",
        4,
        "hyper type of `a` must be one of",
    );
}

#[test]
fn hyper_keys_must_work_as_trainer_flags() {
    assert_one_error(
        "version = 1\n[models.x]\ncommand = [\"t\"]\n[[jobs]]\nmodel = \"x\"\nmode = \"m\"\n[jobs.hyper]\n\"learning rate\" = 1\n",
        8,
        "cannot be passed to the trainer as --learning rate VALUE",
    );
}

#[test]
fn a_host_policy_naming_an_unknown_model_is_a_warning() {
    let loaded = ok(&with_prelude(
        "[[hosts]]\nname = \"a\"\nallow_jobs = [\"gbt\", \"*\", \"xgboost\"]\n",
    ));
    assert_eq!(loaded.warnings.len(), 1, "{:?}", loaded.warnings);
    assert!(
        loaded.warnings[0].starts_with("m.toml:7:27: allow_jobs names model `xgboost`"),
        "{:?}",
        loaded.warnings
    );
}

#[test]
fn hyper_tables_are_rejected() {
    assert_one_error(
        "version = 1\n[models.x]\ncommand = [\"t\"]\n[[jobs]]\nmodel = \"x\"\nmode = \"m\"\nhyper = { opt = { lr = 1 } }\n",
        7,
        "hyper `opt` must be a string, number, boolean or list, found table",
    );
}

#[test]
fn duplicate_jobs_name_both_places() {
    let text = with_prelude(
        "[[jobs]]\nmodel = \"gbt\"\nmode = \"m\"\nhyper = { lr = 0.1, depth = 2 }\n\
         [[jobs]]\nmode = \"m\"\nmodel = \"gbt\"\nhyper = { depth = 2, lr = 0.1 }\nprefer_cuda = true\n",
    );
    let e = assert_one_error(&text, 9, "duplicate job");
    assert!(
        e.message.contains("as the job at m.toml:5:1"),
        "{}",
        e.message
    );
    assert_one_error(
        &with_prelude("[[jobs]]\nmodel = \"gbt\"\nmode = \"m\"\nmatrix = { seed = [1, 1] }\n"),
        5,
        "matrix yields the same job twice",
    );
}

#[test]
fn every_repeat_of_a_job_names_the_first_in_file_order() {
    let entry = "[[jobs]]\nmodel = \"gbt\"\nmode = \"m\"\nseed = 1\n";
    let other = "[[jobs]]\nmodel = \"gbt\"\nmode = \"m\"\nseed = 2\n";
    let errs = errors(&with_prelude(&format!("{entry}{other}{entry}{entry}")));
    assert_eq!(errs.len(), 2, "{errs:#?}");
    assert_eq!(errs[0].line, Some(13));
    assert_eq!(errs[1].line, Some(17));
    for e in &errs {
        assert!(
            e.message.contains("as the job at m.toml:5:1"),
            "{}",
            e.message
        );
    }
}

#[test]
fn a_pinned_matrix_warns_once_per_unknown_host_not_once_per_job() {
    let loaded = ok(&with_prelude(
        "[[jobs]]\nmodel = \"gbt\"\nmode = \"m\"\nallowed_hosts = [\"a\", \"b\"]\nmatrix = { seed = [1, 2, 3] }\n",
    ));
    assert_eq!(loaded.manifest.jobs.len(), 3);
    let orders: Vec<u64> = loaded
        .manifest
        .jobs
        .iter()
        .map(|j| j.manifest_order)
        .collect();
    assert_eq!(orders, [0, 1, 2]);
    assert_eq!(loaded.warnings.len(), 2, "{:?}", loaded.warnings);
    assert!(loaded.warnings[0].contains("allowed_hosts entry `a`"));
    assert!(loaded.warnings[1].contains("allowed_hosts entry `b`"));
}

#[test]
fn negative_resources_are_errors() {
    assert_one_error(
        &with_prelude("[[jobs]]\nmodel = \"gbt\"\nmode = \"m\"\nmin_vram_gib = -8\n"),
        8,
        "`min_vram_gib` must not be negative",
    );
    assert_one_error(
        &with_prelude("[[jobs]]\nmodel = \"gbt\"\nmode = \"m\"\nmin_ram_gib = -0.5\n"),
        8,
        "`min_ram_gib` must not be negative",
    );
}

#[test]
fn model_and_mode_must_be_present_and_not_empty() {
    assert_one_error(
        &with_prelude("[[jobs]]\nmodel = \"gbt\"\nmode = \"\"\n"),
        7,
        "`mode` must not be empty",
    );
    assert_one_error(
        &with_prelude("[[jobs]]\nmodel = \"\"\nmode = \"m\"\n"),
        6,
        "`model` must not be empty",
    );
    assert_one_error(
        &with_prelude("[[jobs]]\nmode = \"m\"\n"),
        5,
        "has no `model`",
    );
    assert_one_error(
        &with_prelude("[[jobs]]\nmodel = \"gbt\"\n"),
        5,
        "has no `mode`",
    );
    assert_one_error(
        &with_prelude("[[jobs]]\nmodel = \"gbt\"\nmode = \"../x\"\n"),
        7,
        "may hold only letters",
    );
}

#[test]
fn host_errors() {
    assert_one_error(
        "version = 1\n[[hosts]]\nallow_jobs = []\n",
        2,
        "has no `name`",
    );
    assert_one_error(
        "version = 1\n[[hosts]]\nname = \"a\"\n[[hosts]]\nname = \"a\"\n",
        5,
        "host `a` is listed twice (first at m.toml:3:8)",
    );
    assert_one_error(
        "version = 1\n[[hosts]]\nname = \"a/b\"\n",
        3,
        "worker name must be",
    );
}

#[test]
fn an_allowed_host_no_hosts_entry_names_is_a_warning() {
    let loaded = ok(&with_prelude(
        "[[hosts]]\nname = \"gpu-box\"\n[[jobs]]\nmodel = \"gbt\"\nmode = \"m\"\nallowed_hosts = [\"gpu-box\", \"gpu-bx\"]\n",
    ));
    assert_eq!(loaded.manifest.jobs.len(), 1);
    assert_eq!(loaded.warnings.len(), 1, "{:?}", loaded.warnings);
    assert!(loaded.warnings[0].starts_with("m.toml:10:29: allowed_hosts entry `gpu-bx`"));
}

#[test]
fn all_errors_are_collected_in_file_order() {
    let text = "version = 1\n\
                [models.gbt]\n\
                hyper = { lr = \"float\" }\n\
                [[jobs]]\n\
                model = \"gbt\"\n\
                mode = \"m\"\n\
                hyper = { lr = \"high\" }\n\
                min_vram_gib = -1\n\
                bogus = 1\n";
    let errs = errors(text);
    let lines: Vec<Option<u32>> = errs.iter().map(|e| e.line).collect();
    assert_eq!(lines, vec![Some(5), Some(7), Some(8), Some(9)], "{errs:#?}");
    let shown = ManifestErrors(errs).to_string();
    assert_eq!(shown.lines().count(), 4);
    assert!(shown.lines().all(|l| l.starts_with("m.toml:")));
}

// ---------------------------------------------------------------------------------------
// Matrix expansion

#[test]
fn matrix_expands_to_the_cross_product_in_sorted_key_order() {
    let loaded = ok(&with_prelude(
        r#"[[jobs]]
model = "gbt"
mode = "m"
hyper = { depth = 3 }
matrix = { seed = [1, 2], "hyper.lr" = [0.1, 0.01], split_recipe = ["a", "b", "c"] }
"#,
    ));
    let jobs = &loaded.manifest.jobs;
    assert_eq!(jobs.len(), 12);
    // Axes sorted by name (hyper.lr, seed, split_recipe); the last varies fastest.
    let got: Vec<(serde_json::Value, i64, String)> = jobs
        .iter()
        .map(|j| {
            (
                j.hyper["lr"].clone(),
                j.seed,
                j.split_recipe.clone().unwrap(),
            )
        })
        .collect();
    assert_eq!(got[0], (json!(0.1), 1, "a".into()));
    assert_eq!(got[1], (json!(0.1), 1, "b".into()));
    assert_eq!(got[3], (json!(0.1), 2, "a".into()));
    assert_eq!(got[6], (json!(0.01), 1, "a".into()));
    assert_eq!(got[11], (json!(0.01), 2, "c".into()));
    assert!(jobs.iter().all(|j| j.hyper["depth"] == json!(3)));
    let orders: Vec<u64> = jobs.iter().map(|j| j.manifest_order).collect();
    assert_eq!(orders, (0..12).collect::<Vec<u64>>());

    // The order of the matrix's keys in the file does not change the expansion.
    let reordered = ok(&with_prelude(
        r#"[[jobs]]
model = "gbt"
mode = "m"
hyper = { depth = 3 }
matrix = { split_recipe = ["a", "b", "c"], "hyper.lr" = [0.1, 0.01], seed = [1, 2] }
"#,
    ));
    assert_eq!(ids(&loaded), ids(&reordered));
}

#[test]
fn matrix_hyper_keys_dotted_quoted_or_nested_are_the_same() {
    let forms = [
        "[jobs.matrix]\nhyper.lr = [0.1, 0.2]\n",
        "[jobs.matrix]\n\"hyper.lr\" = [0.1, 0.2]\n",
        "matrix = { hyper = { lr = [0.1, 0.2] } }\n",
    ];
    let expanded: Vec<Vec<JobId>> = forms
        .iter()
        .map(|form| {
            ids(&ok(&with_prelude(&format!(
                "[[jobs]]\nmodel = \"gbt\"\nmode = \"m\"\n{form}"
            ))))
        })
        .collect();
    assert_eq!(expanded[0].len(), 2);
    assert_eq!(expanded[0], expanded[1]);
    assert_eq!(expanded[0], expanded[2]);
    let plain = ok(&with_prelude(
        "[[jobs]]\nmodel = \"gbt\"\nmode = \"m\"\nhyper = { lr = 0.2 }\n",
    ));
    assert_eq!(expanded[0][1], plain.manifest.jobs[0].id);
}

#[test]
fn matrix_errors() {
    assert_one_error(
        &with_prelude("[[jobs]]\nmodel = \"gbt\"\nmode = \"m\"\nmatrix = { seed = [] }\n"),
        8,
        "matrix list `seed` is empty",
    );
    assert_one_error(
        &with_prelude(
            "[[jobs]]\nmodel = \"gbt\"\nmode = \"m\"\nseed = 1\nmatrix = { seed = [1, 2] }\n",
        ),
        9,
        "`seed` is set both in the job and in its matrix",
    );
    assert_one_error(
        &with_prelude("[[jobs]]\nmodel = \"gbt\"\nmode = \"m\"\nhyper = { lr = 0.1 }\nmatrix = { \"hyper.lr\" = [1.0] }\n"),
        9,
        "`hyper.lr` is set both",
    );
    assert_one_error(
        &with_prelude("[[jobs]]\nmodel = \"gbt\"\nmode = \"m\"\nmatrix = { sed = [1, 2] }\n"),
        8,
        "unknown key `sed` in matrix; did you mean `seed`?",
    );
    assert_one_error(
        &with_prelude("[[jobs]]\nmodel = \"gbt\"\nmode = \"m\"\nmatrix = { seed = 1 }\n"),
        8,
        "`seed` must be a list of values",
    );
    assert_one_error(
        &with_prelude("[[jobs]]\nmodel = \"gbt\"\nmode = \"m\"\nmatrix = [1]\n"),
        8,
        "`matrix` must be a table of lists",
    );
}

#[test]
fn errors_in_matrix_values_point_at_the_value_and_are_reported_once() {
    let text = with_prelude(
        "[[jobs]]\nmodel = \"gbt\"\nmode = \"m\"\nmin_ram_gib = \"x\"\n[jobs.matrix]\nseed = [1, 2, 3]\n\"hyper.depth\" = [\n  1,\n  2.5,\n]\n",
    );
    let errs = errors(&text);
    let lines: Vec<Option<u32>> = errs.iter().map(|e| e.line).collect();
    assert_eq!(lines, vec![Some(8), Some(13)], "{errs:#?}");
    assert!(errs[1].message.contains("`depth` of model gbt must be int"));
}

// ---------------------------------------------------------------------------------------
// Job identity

const TWO_JOBS: &str = r#"version = 1
[models.gbt]
command = ["t"]
[[jobs]]
model = "gbt"
mode = "realistic"
hyper = { a = 1, b = 0.5, c = "x" }
seed = 1
[[jobs]]
model = "gbt"
mode = "oracle"
seed = 2
[jobs.hyper]
a = 1
b = 0.5
"#;

#[test]
fn reordering_jobs_or_keys_keeps_every_id() {
    let original = ok(TWO_JOBS);
    let reordered = ok(r#"version = 1
[[jobs]]
seed = 2
mode = "oracle"
hyper = { b = 0.5, a = 1 }
model = "gbt"
[[jobs]]
hyper = { c = "x", b = 0.5, a = 1 }
seed = 1
model = "gbt"
mode = "realistic"
[models.gbt]
command = ["t"]
"#);
    let mut a = ids(&original);
    let mut b = ids(&reordered);
    assert_ne!(a, b, "the order of the jobs differs");
    a.sort();
    b.sort();
    assert_eq!(a, b);
}

#[test]
fn changing_one_hyper_value_changes_exactly_one_id() {
    let original = ids(&ok(TWO_JOBS));
    let changed = ids(&ok(&TWO_JOBS.replace("b = 0.5\n", "b = 0.25\n")));
    assert_eq!(original[0], changed[0]);
    assert_ne!(original[1], changed[1]);
    // Non-identity fields never change an ID.
    let constrained = ids(&ok(&TWO_JOBS.replace(
        "seed = 2\n",
        "seed = 2\nrequire_cuda = true\npriority = 9\nmax_attempts = 1\n",
    )));
    assert_eq!(original, constrained);
}

fn job_with_hyper_order(pairs: &[(String, i64)]) -> String {
    let hyper: Vec<String> = pairs.iter().map(|(k, v)| format!("{k} = {v}")).collect();
    format!(
        "version = 1\n[defaults]\ncommand = [\"t\"]\n[models.m]\n[[jobs]]\nmodel = \"m\"\nmode = \"x\"\nhyper = {{ {} }}\n",
        hyper.join(", ")
    )
}

proptest! {
    /// Writing a hyper table's keys in any order gives the same job ID.
    #[test]
    fn job_id_is_independent_of_hyper_key_order_in_the_file(
        pairs in proptest::collection::btree_map("[a-z][a-z0-9_]{0,7}", any::<i64>(), 1..8),
        shuffle in Just(()).prop_perturb(|_, mut rng| rng.random::<u64>()),
    ) {
        let sorted: Vec<(String, i64)> = pairs.into_iter().collect();
        let mut shuffled = sorted.clone();
        // A deterministic permutation chosen by the generated number.
        let mut state = shuffle;
        for i in (1..shuffled.len()).rev() {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            let j = usize::try_from(state >> 33).unwrap() % (i + 1);
            shuffled.swap(i, j);
        }
        let a = ok(&job_with_hyper_order(&sorted));
        let b = ok(&job_with_hyper_order(&shuffled));
        prop_assert_eq!(&a.manifest.jobs[0].id, &b.manifest.jobs[0].id);
        let hyper: Hyper = sorted.iter().map(|(k, v)| (k.clone(), json!(v))).collect();
        prop_assert_eq!(&a.manifest.jobs[0].id, &job_id("m", "x", &hyper, None, &[], 0));
    }
}

#[test]
fn names_the_store_cannot_take_are_refused_where_they_stand() {
    let longest = "m".repeat(crate::store::MAX_NAME_LEN);
    let too_long = "m".repeat(crate::store::MAX_NAME_LEN + 1);
    // Lines 5-7.
    let job = |model: &str, mode: &str| {
        with_prelude(&format!(
            "[[jobs]]\nmodel = \"gbt\"\nmode = \"{mode}\"\n[[jobs]]\nmodel = \"{model}\"\nmode = \"x\"\n"
        ))
    };
    let e = assert_one_error(
        &job("gbt", &too_long),
        7,
        "129 characters long; the most is 128",
    );
    assert!(
        e.message.len() < 200,
        "the message repeats the whole name: {}",
        e.message
    );
    // 128 + 1 + 128 = 257 bytes: each part fits, the directory name does not.
    // Lines 4-6.
    let undeclared = |model: &str, mode: &str| {
        format!("version = 1\n[defaults]\ncommand = [\"t\"]\n[[jobs]]\nmodel = \"{model}\"\nmode = \"{mode}\"\n")
    };
    let errs = errors(&undeclared(&longest, &longest));
    assert_eq!(errs.len(), 1, "{errs:#?}");
    assert_eq!(errs[0].line, Some(6));
    assert!(
        errs[0].message.contains("257 bytes; the most is 255"),
        "{}",
        errs[0].message
    );
    // A model name in [models] too.
    assert_one_error(
        &format!("version = 1\n[models.{too_long}]\ncommand = [\"t\"]\n"),
        2,
        "the most is 128",
    );
    // At the limits, accepted.
    let mode = "d".repeat(crate::store::MAX_GROUP_NAME_LEN - 1 - longest.len());
    ok(&undeclared(&longest, &mode));
}

#[test]
fn a_stray_carriage_return_is_named_not_an_empty_message() {
    // toml_edit gives no message for this one.
    assert_one_error(
        "version = 1\ncommand = [\r\"x\"]\n",
        2,
        "control character \\u{d}",
    );
}

/// Three entries of ten jobs each against a limit of 25: the third entry is the error, with
/// its line and the counts; up to the limit is fine.
#[test]
fn the_entry_that_takes_the_manifest_past_its_job_limit_is_the_error() {
    let entry = |mode: &str| {
        format!("[[jobs]]\nmodel = \"gbt\"\nmode = \"{mode}\"\nmatrix = {{ seed = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9] }}\n")
    };
    let text = format!("{PRELUDE}{}{}{}", entry("a"), entry("b"), entry("c"));
    let third_line = 5 + 4 + 4;
    let errs = parse_manifest_with_limit(&text, Path::new(PATH), 25)
        .unwrap_err()
        .0;
    assert_eq!(errs.len(), 1, "{errs:#?}");
    assert_eq!(errs[0].line, Some(third_line), "{errs:#?}");
    assert!(
        errs[0]
            .message
            .contains("more than 25 jobs (20 before it, 10 from it)"),
        "{}",
        errs[0].message
    );
    assert!(errs[0].message.contains("max_manifest_jobs"));
    let loaded = parse_manifest_with_limit(&text, Path::new(PATH), 30).unwrap();
    assert_eq!(loaded.manifest.jobs.len(), 30);
}

proptest! {
    /// Columns counted from the last position on the same line are those counted from the
    /// line's start, whatever order positions are asked in.
    #[test]
    fn columns_are_the_same_in_any_order(
        text in "[a-zé\n]{0,60}",
        positions in proptest::collection::vec(0usize..70, 1..20),
    ) {
        let d = node::Diagnostics::new("m.toml".into(), &text);
        for at in positions {
            let mut at = at.min(text.len());
            while !text.is_char_boundary(at) {
                at -= 1;
            }
            let line_start = text[..at].rfind('\n').map_or(0, |i| i + 1);
            let line = text[..at].matches('\n').count() + 1;
            let column = text[line_start..at].chars().count() + 1;
            prop_assert_eq!(d.line_col(at), (line as u32, column as u32));
        }
    }
}

/// `lr = 1` and `lr = 1.0` for a `float` key are one job: the same ID from either file, and
/// a matrix listing both yields a duplicate.
#[test]
fn an_integer_for_a_float_hyper_is_the_same_job_as_the_float() {
    let job = |lr: &str| {
        ok(&with_prelude(&format!(
            "[[jobs]]\nmodel = \"gbt\"\nmode = \"m\"\nhyper = {{ lr = {lr} }}\n"
        )))
        .manifest
        .jobs[0]
            .id
            .clone()
    };
    assert_eq!(job("1"), job("1.0"));
    assert_ne!(job("1"), job("2.0"));
    let errs = errors(&with_prelude(
        "[[jobs]]\nmodel = \"gbt\"\nmode = \"m\"\nmatrix = { \"hyper.lr\" = [1, 1.0] }\n",
    ));
    assert!(
        errs.iter().any(|e| e.message.contains("duplicate job")),
        "{errs:#?}"
    );
}

/// A thousand jobs of one undeclared model are one warning, at the first of them, with
/// the count; each undeclared model has its own.
#[test]
fn undeclared_models_warn_once_each_with_their_job_count() {
    let entry = |model: &str, seed: usize| {
        format!("[[jobs]]\nmodel = \"{model}\"\nmode = \"m\"\nseed = {seed}\n")
    };
    let mut text = String::from("version = 1\n[defaults]\ncommand = [\"t\"]\n");
    for seed in 0..1000 {
        text.push_str(&entry("knn", seed));
    }
    text.push_str(&entry("svm", 0));
    let loaded = ok(&text);
    assert_eq!(
        loaded.warnings.len(),
        2,
        "{:#?}",
        &loaded.warnings[..3.min(loaded.warnings.len())]
    );
    assert!(
        loaded.warnings[0]
            .starts_with("m.toml:5:9: model `knn` is not declared in [models]: its 1000 jobs"),
        "{}",
        loaded.warnings[0]
    );
    assert!(
        loaded.warnings[1].contains("model `svm`") && loaded.warnings[1].contains("its job runs")
    );
}
