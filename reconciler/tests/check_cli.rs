//! Black-box tests of `cis490-reconciler check`: the real binary on real files.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

fn example_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../etc/training_manifest.toml.example")
}

fn example_text() -> String {
    std::fs::read_to_string(example_path()).unwrap()
}

fn check(file: &Path, extra: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cis490-reconciler"))
        .arg("check")
        .arg(file)
        .args(extra)
        .output()
        .unwrap()
}

fn stdout(out: &Output) -> String {
    String::from_utf8(out.stdout.clone()).unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8(out.stderr.clone()).unwrap()
}

/// Writes `text` to a file in `dir` and returns its path.
fn write(dir: &tempfile::TempDir, name: &str, text: &str) -> PathBuf {
    let path = dir.path().join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// The jobs `check -o json` prints for `file` (which must be valid).
fn json_jobs(file: &Path) -> Vec<Value> {
    let out = check(file, &["-o", "json"]);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    match serde_json::from_str(&stdout(&out)).unwrap() {
        Value::Array(jobs) => jobs,
        other => panic!("expected a JSON list, got {other}"),
    }
}

fn json_ids(file: &Path) -> Vec<String> {
    json_jobs(file)
        .iter()
        .map(|j| j["id"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn check_prints_the_example_as_a_table_of_14_jobs() {
    let out = check(&example_path(), &[]);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 16, "header, 14 jobs, summary:\n{text}");
    let header: Vec<&str> = lines[0].split_whitespace().collect();
    assert_eq!(
        header,
        [
            "ID",
            "MODEL",
            "MODE",
            "SEED",
            "SPLIT",
            "HYPER",
            "CONSTRAINTS"
        ]
    );
    for row in &lines[1..15] {
        let cells: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(cells[0].len(), 12, "short ID in {row:?}");
        assert!(cells[0].bytes().all(|b| b.is_ascii_hexdigit()));
        assert!(["gbt", "mlp"].contains(&cells[1]), "{row:?}");
        assert!(["realistic", "oracle"].contains(&cells[2]), "{row:?}");
        // Columns are aligned: every row's MODEL starts where the header's does.
        assert_eq!(row.find(cells[1]), lines[0].find("MODEL"), "{row:?}");
    }
    assert_eq!(lines[15], "14 jobs, 3 hosts, 2 models");
    assert!(text.contains("cuda vram>=24Gi ram>=16Gi hosts=gpu-box"));
    assert!(stderr(&out).is_empty(), "no warnings: {}", stderr(&out));
}

#[test]
fn check_prints_the_example_as_json() {
    let jobs = json_jobs(&example_path());
    assert_eq!(jobs.len(), 14);
    let ids: BTreeSet<&str> = jobs.iter().map(|j| j["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), 14, "IDs are unique");
    for job in &jobs {
        let id = job["id"].as_str().unwrap();
        assert_eq!(id.len(), 64);
        assert!(id.bytes().all(|b| b.is_ascii_hexdigit()));
        assert!(job["model"].is_string() && job["mode"].is_string());
        assert!(job["hyper"].is_object());
        assert!(job["seed"].is_i64());
        assert!(job["require_cuda"].is_boolean() && job["prefer_cuda"].is_boolean());
        assert!(job["min_vram_gib"].is_number() && job["min_ram_gib"].is_number());
        assert!(job["allowed_hosts"].is_array());
    }
    let pinned: Vec<&Value> = jobs
        .iter()
        .filter(|j| !j["allowed_hosts"].as_array().unwrap().is_empty())
        .collect();
    assert_eq!(pinned.len(), 1);
    assert_eq!(pinned[0]["allowed_hosts"], serde_json::json!(["gpu-box"]));
    assert_eq!(pinned[0]["min_vram_gib"], serde_json::json!(24.0));
    assert!(jobs.iter().any(|j| j["require_cuda"] == true));
    assert!(jobs.iter().any(|j| j["prefer_cuda"] == true));
}

/// Moves every `[[jobs]]` block (with its sub-tables) into reverse order.
fn reverse_jobs(text: &str) -> String {
    let mut parts = text.split("\n[[jobs]]\n");
    let head = parts.next().unwrap().to_string();
    let mut blocks: Vec<&str> = parts.collect();
    assert!(blocks.len() >= 8, "the example has 8 [[jobs]] entries");
    blocks.reverse();
    let mut out = head;
    for block in blocks {
        out.push_str("\n[[jobs]]\n");
        out.push_str(block.trim_end());
        out.push('\n');
    }
    out
}

#[test]
fn reordering_entries_or_hyper_keys_keeps_the_ids() {
    let dir = tempfile::tempdir().unwrap();
    let text = example_text();
    let original = write(&dir, "original.toml", &text);

    let from = "hyper = { n_estimators = 30, learning_rate = 0.3, max_depth = 3 }";
    assert_eq!(text.matches(from).count(), 2);
    let reordered_text = reverse_jobs(&text).replace(
        from,
        "hyper = { max_depth = 3, learning_rate = 0.3, n_estimators = 30 }",
    );
    let reordered = write(&dir, "reordered.toml", &reordered_text);

    let a = json_ids(&original);
    let b = json_ids(&reordered);
    assert_eq!(a.len(), 14);
    assert_ne!(a, b, "the job order changed");
    let a: BTreeSet<String> = a.into_iter().collect();
    let b: BTreeSet<String> = b.into_iter().collect();
    assert_eq!(a, b);
}

#[test]
fn changing_one_hyper_value_changes_exactly_one_id() {
    let dir = tempfile::tempdir().unwrap();
    let text = example_text();
    let from = "hyper = { hidden = 8, learning_rate = 0.05, epochs = 10 }";
    assert_eq!(text.matches(from).count(), 1);
    let original = write(&dir, "original.toml", &text);
    let changed = write(
        &dir,
        "changed.toml",
        &text.replace(
            from,
            "hyper = { hidden = 9, learning_rate = 0.05, epochs = 10 }",
        ),
    );
    let a = json_ids(&original);
    let b = json_ids(&changed);
    assert_eq!(a.len(), b.len());
    let differing = a.iter().zip(&b).filter(|(x, y)| x != y).count();
    assert_eq!(differing, 1);
}

#[test]
fn a_typo_in_a_key_is_rejected_with_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let text = example_text();
    let line = text.lines().position(|l| l == "min_vram_gib = 24").unwrap() + 1;
    let path = write(
        &dir,
        "typo.toml",
        &text.replace("min_vram_gib = 24\n", "min_vram_gb = 24\n"),
    );
    let out = check(&path, &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stdout(&out).is_empty());
    let err = stderr(&out);
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "{err}");
    let expected = format!(
        "{}:{line}:1: unknown key `min_vram_gb` in [[jobs]]",
        path.display()
    );
    assert!(lines[0].starts_with(&expected), "{err}");
    assert!(lines[0].contains("did you mean `min_vram_gib`?"), "{err}");
}

#[test]
fn every_error_is_one_line_with_its_position() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        &dir,
        "bad.toml",
        "version = 1\n[models.gbt]\nhyper = { lr = \"float\" }\n[[jobs]]\nmodel = \"gbt\"\nmode = \"\"\nhyper = { lr = \"x\", depth = 3 }\nmin_ram_gib = -2\n",
    );
    let out = check(&path, &["-o", "json"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stdout(&out).is_empty());
    let err = stderr(&out);
    let positions: Vec<String> = err
        .lines()
        .map(|l| {
            let rest = l.strip_prefix(&format!("{}:", path.display())).unwrap();
            let mut fields = rest.splitn(3, ':');
            format!("{}:{}", fields.next().unwrap(), fields.next().unwrap())
        })
        .collect();
    // No trainer command (model), empty mode, lr of the wrong type, depth not in the
    // schema, negative RAM.
    assert_eq!(positions, ["5:9", "6:8", "7:16", "7:21", "8:15"], "{err}");
}

#[test]
fn warnings_go_to_stderr_and_the_manifest_is_still_valid() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        &dir,
        "warn.toml",
        "version = 1\n[defaults]\ncommand = [\"t\"]\n[models.gbt]\n[[jobs]]\nmodel = \"gbt\"\nmode = \"m\"\nallowed_hosts = [\"nowhere\"]\n",
    );
    let out = check(&path, &[]);
    assert_eq!(out.status.code(), Some(0));
    assert!(
        stdout(&out).ends_with("1 job, 0 hosts, 1 model\n"),
        "{}",
        stdout(&out)
    );
    let err = stderr(&out);
    assert!(
        err.starts_with(&format!(
            "warning: {}:8:18: allowed_hosts entry `nowhere`",
            path.display()
        )),
        "{err}"
    );
}

#[test]
fn a_missing_file_and_a_bad_output_format_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.toml");
    let out = check(&missing, &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).starts_with(&format!("{}: cannot read manifest", missing.display())));

    let out = check(&example_path(), &["-o", "yaml"]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(
        err.contains("yaml") && err.contains("table") && err.contains("json"),
        "{err}"
    );
}
