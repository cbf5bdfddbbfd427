//! The run-time job fields: `timeout_s`, `env`, `node_selector`, `cores` and `gpus`: where
//! each may be set, which level wins, that none is part of the job's ID, and the errors
//! (with line and column) for bad values.

use super::*;

const PATH: &str = "m.toml";

fn parse(text: &str) -> Result<LoadedManifest, ManifestErrors> {
    parse_manifest(text, Path::new(PATH))
}

fn jobs(text: &str) -> Vec<JobSpec> {
    match parse(text) {
        Ok(loaded) => loaded.manifest.jobs,
        Err(errors) => panic!("expected a valid manifest, got:\n{errors}"),
    }
}

/// The only error: (line, column, message).
fn one_error(text: &str) -> (u32, u32, String) {
    let errors = match parse(text) {
        Ok(_) => panic!("expected an error, the manifest was accepted:\n{text}"),
        Err(errors) => errors.0,
    };
    assert_eq!(errors.len(), 1, "{errors:#?}");
    let e = &errors[0];
    (
        e.line.unwrap_or_default(),
        e.column.unwrap_or_default(),
        e.message.clone(),
    )
}

const HEAD: &str = "version = 1\n[defaults]\ncommand = [\"t\"]\n";

fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn timeout_s_comes_from_the_job_then_the_model_then_the_defaults() {
    let text = "version = 1\n[defaults]\ncommand = [\"t\"]\ntimeout_s = 100\n\
                [models.slow]\ntimeout_s = 50\n[models.plain]\n\
                [[jobs]]\nmodel = \"slow\"\nmode = \"a\"\ntimeout_s = 10\n\
                [[jobs]]\nmodel = \"slow\"\nmode = \"b\"\n\
                [[jobs]]\nmodel = \"plain\"\nmode = \"c\"\n";
    let limits: Vec<Option<u64>> = jobs(text).iter().map(|j| j.timeout_s).collect();
    assert_eq!(limits, [Some(10), Some(50), Some(100)]);
    let none = jobs(&format!("{HEAD}[[jobs]]\nmodel = \"m\"\nmode = \"a\"\n"));
    assert_eq!(none[0].timeout_s, None);
}

#[test]
fn the_run_time_fields_are_not_part_of_the_id() {
    let plain = jobs(&format!("{HEAD}[[jobs]]\nmodel = \"m\"\nmode = \"a\"\n"));
    let dressed = jobs(&format!(
        "{HEAD}[[jobs]]\nmodel = \"m\"\nmode = \"a\"\ntimeout_s = 5\nenv = {{ A = \"1\" }}\n\
         node_selector = {{ gpu = \"x\" }}\ncores = 2\ngpus = 1\n"
    ));
    assert_eq!(plain[0].id, dressed[0].id);
    assert_eq!(dressed[0].timeout_s, Some(5));
    assert_eq!(dressed[0].env, map(&[("A", "1")]));
    let c = &dressed[0].constraints;
    assert_eq!(c.node_selector, map(&[("gpu", "x")]));
    assert_eq!((c.cores, c.gpus), (2, 1));
    let changed = crate::plan::changed_fields(&plain[0], &dressed[0]);
    assert_eq!(changed, ["constraints", "timeout_s", "env"]);
}

#[test]
fn a_matrix_takes_the_run_time_fields_like_other_non_identity_fields() {
    let text = format!(
        "{HEAD}[[jobs]]\nmodel = \"m\"\nmode = \"a\"\nmatrix = {{ seed = [1, 2], timeout_s = [5] }}\n"
    );
    let limits: Vec<(i64, Option<u64>)> =
        jobs(&text).iter().map(|j| (j.seed, j.timeout_s)).collect();
    assert_eq!(limits, [(1, Some(5)), (2, Some(5))]);
    // Like priority: two limits for one job are that job twice (it is not identity).
    let twice =
        format!("{HEAD}[[jobs]]\nmodel = \"m\"\nmode = \"a\"\nmatrix = {{ timeout_s = [5, 9] }}\n");
    let (line, _, message) = one_error(&twice);
    assert_eq!(line, 4);
    assert!(message.contains("yields the same job twice"), "{message}");
}

#[test]
fn env_merges_the_models_and_the_jobs_per_key() {
    let text =
        "version = 1\n[models.m]\ncommand = [\"t\"]\nenv = { A = \"model\", B = \"model\" }\n\
                [[jobs]]\nmodel = \"m\"\nmode = \"a\"\nenv = { B = \"job\", C = \"job\" }\n";
    assert_eq!(
        jobs(text)[0].env,
        map(&[("A", "model"), ("B", "job"), ("C", "job")])
    );
}

#[test]
fn node_selector_merges_the_defaults_and_the_jobs_per_key() {
    let text = "version = 1\n[defaults]\ncommand = [\"t\"]\nnode_selector = { room = \"a\", os = \"linux\" }\n\
                [[jobs]]\nmodel = \"m\"\nmode = \"a\"\nnode_selector = { room = \"b\" }\n";
    assert_eq!(
        jobs(text)[0].constraints.node_selector,
        map(&[("os", "linux"), ("room", "b")])
    );
}

#[test]
fn bad_values_are_errors_at_the_value() {
    let job = |line: &str| format!("{HEAD}[[jobs]]\nmodel = \"m\"\nmode = \"a\"\n{line}\n");
    let cases: &[(&str, u32, u32, &str)] = &[
        ("timeout_s = 0", 7, 13, "`timeout_s` must be between 1 and"),
        (
            "timeout_s = \"1h\"",
            7,
            13,
            "`timeout_s` must be an integer, found string",
        ),
        ("cores = -1", 7, 9, "`cores` must be between 0 and"),
        ("gpus = 1.5", 7, 8, "`gpus` must be an integer, found float"),
        (
            "node_selector = { gpu = 4090 }",
            7,
            25,
            "`gpu` must be a string, found integer",
        ),
        (
            "node_selector = [\"gpu\"]",
            7,
            17,
            "`node_selector` must be a table",
        ),
        (
            "env = { \"1X\" = \"v\" }",
            7,
            9,
            "not an environment variable name",
        ),
        (
            "env = { CIS490_JOB_ID = \"x\" }",
            7,
            9,
            "the agent sets the CIS490_* variables itself",
        ),
        (
            "env = { CUDA_VISIBLE_DEVICES = \"0\" }",
            7,
            9,
            "ask for GPUs with `gpus`",
        ),
        (
            "env = { N = 4 }",
            7,
            13,
            "`N` must be a string, found integer",
        ),
        (
            "env = { N = \"a\\u0000b\" }",
            7,
            13,
            "must not hold a NUL character",
        ),
        ("timeout = 3", 7, 1, "did you mean `timeout_s`?"),
    ];
    for (line, want_line, want_column, needle) in cases {
        let (l, c, message) = one_error(&job(line));
        assert!(message.contains(needle), "{line}: {message}");
        assert_eq!((l, c), (*want_line, *want_column), "{line}: {message}");
    }
    let (l, _, message) =
        one_error("version = 1\n[models.m]\ncommand = [\"t\"]\nenv = { \"A-B\" = \"x\" }\n");
    assert_eq!(l, 4);
    assert!(message.contains("env \"A-B\""), "{message}");
    let (l, _, message) = one_error("version = 1\n[defaults]\ntimeout_s = -5\n");
    assert_eq!(l, 3);
    assert!(message.contains("timeout_s"), "{message}");
}
