//! The example trainer (`etc/examples/trainer.py`) honours the trainer contract: it trains
//! from the CIS490_* environment and `--key value` hyperparameters, writes model.json and
//! a flat metrics.json to CIS490_OUTPUT_DIR and a progress line per step to
//! CIS490_PROGRESS_FILE, and fails clearly on a bad hyperparameter.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

use cis490_tests::workspace_root;

fn run_trainer(model: &str, out: &std::path::Path, args: &[&str]) -> std::process::Output {
    let spec = out.with_extension("spec.json");
    std::fs::write(&spec, r#"{"split_recipe": "holdout-25"}"#).unwrap();
    Command::new("python3")
        .arg(workspace_root().join("etc/examples/trainer.py"))
        .args(args)
        .env("CIS490_MODEL", model)
        .env("CIS490_MODE", "oracle")
        .env("CIS490_SEED", "7")
        .env("CIS490_OUTPUT_DIR", out)
        .env("CIS490_JOB_SPEC", &spec)
        .env("CIS490_PROGRESS_FILE", out.with_extension("progress.jsonl"))
        .output()
        .expect("python3 must be installed (.ci/run installs it)")
}

#[test]
fn trains_both_models_and_writes_metrics_that_reflect_the_inputs() {
    let dir = tempfile::tempdir().unwrap();
    for (model, args, steps) in [
        ("gbt", vec!["--n_estimators", "20", "--max_depth", "2"], 20),
        ("mlp", vec!["--hidden", "4", "--epochs", "5"], 5),
    ] {
        let out = dir.path().join(model);
        let res = run_trainer(model, &out, &args);
        assert!(
            res.status.success(),
            "{model}: {}",
            String::from_utf8_lossy(&res.stderr)
        );
        let metrics: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("metrics.json")).unwrap())
                .unwrap();
        assert_eq!(metrics["model"], model);
        assert_eq!(metrics["seed"], 7);
        assert_eq!(metrics["split_recipe"], "holdout-25");
        let acc = metrics["accuracy"].as_f64().unwrap();
        assert!(acc > 0.6, "{model} learned nothing: accuracy {acc}");
        assert!(out.join("model.json").exists());
        // The agent's own parser takes the metrics as they are: flat, numbers and strings.
        let text = std::fs::read(out.join("metrics.json")).unwrap();
        cis490_api::results::parse_flat(&text, cis490_api::results::MAX_METRICS_BYTES)
            .unwrap_or_else(|e| panic!("{model}: metrics.json {e}"));
        // One progress line per round or epoch, the loss going down.
        let progress = std::fs::read_to_string(out.with_extension("progress.jsonl")).unwrap();
        let points: Vec<cis490_api::Metrics> = progress
            .lines()
            .map(|l| cis490_api::results::parse_flat(l.as_bytes(), 4096).unwrap())
            .collect();
        assert_eq!(points.len(), steps, "{model}");
        let last = points.last().unwrap();
        assert_eq!(
            (last["step"].as_f64(), last["of"].as_f64()),
            (Some(steps as f64), Some(steps as f64))
        );
        let loss = |p: &cis490_api::Metrics| p["loss"].as_f64().unwrap();
        assert!(loss(last) < loss(&points[0]), "{model}: {progress}");
    }
}

#[test]
fn bad_hyperparameter_fails_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let res = run_trainer("gbt", &dir.path().join("o"), &["--learning_rate", "-0.1"]);
    assert!(!res.status.success());
    let stderr = String::from_utf8_lossy(&res.stderr);
    assert!(
        stderr.contains("learning_rate must be in (0, 10]"),
        "{stderr}"
    );
}
