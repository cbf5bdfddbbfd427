//! Training results on the real binaries: a matrix of jobs whose trainer writes metrics
//! and progress; while one runs, `get jobs` shows its progress moving; afterwards `results
//! --sort` ranks them by the metric with the varying hyper key as a column, `--group-by`
//! gives means over seeds, `-o csv` parses with Python's csv module, and a trainer that
//! writes invalid metrics still completes, with a warning event.
#![cfg(unix)]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Command, Stdio};

use cis490_api::{IdPrefix, JobStatus, JobView};
use cis490_tests::fleet::{Fleet, WAIT};
use cis490_tests::wait_until;

/// Three progress lines and a metrics.json whose accuracy follows from the learning rate
/// and the seed. Mode `slow` waits for `go1`, then `go2`, after its first two lines (the
/// test moves it on); mode `broken` writes metrics that are not a flat object.
const TRAINER: &str = r#"import argparse, json, os, time
parser = argparse.ArgumentParser()
parser.add_argument("--learning_rate", type=float, default=0.1)
args = parser.parse_args()
mode = os.environ["CIS490_MODE"]
seed = int(os.environ["CIS490_SEED"])
out = os.environ["CIS490_OUTPUT_DIR"]

def step(i, loss):
    with open(os.environ["CIS490_PROGRESS_FILE"], "a") as f:
        f.write(json.dumps({"step": i, "of": 3, "loss": loss}) + "\n")

for i in (1, 2, 3):
    step(i, round(1.0 / i, 3))
    # Bounded, so a stray trainer always ends.
    for _ in range(1200):
        if mode != "slow" or i == 3 or os.path.exists(f"go{i}"):
            break
        time.sleep(0.05)
with open(os.path.join(out, "metrics.json"), "w") as f:
    if mode == "broken":
        f.write('{"accuracy": [0.5]}')
    else:
        accuracy = round(0.5 + args.learning_rate + seed / 100, 4)
        json.dump({"accuracy": accuracy, "loss": round(1 - accuracy, 4)}, f)
"#;

const MANIFEST: &str = r#"version = 1

[defaults]
command = ["python3", "train.py"]

[models.gbt]

[[jobs]]
model = "gbt"
mode = "oracle"
matrix = { seed = [1, 2, 3], "hyper.learning_rate" = [0.1, 0.01] }

[[jobs]]
model = "gbt"
mode = "slow"
seed = 1
priority = 10

[[jobs]]
model = "gbt"
mode = "broken"
seed = 1
"#;

fn ctl_ok(fleet: &Fleet, args: &[&str]) -> String {
    let out = fleet.ctl(args).unwrap();
    assert!(
        out.status.success(),
        "cis490ctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The `get jobs` line of job `id`.
fn job_line(fleet: &Fleet, id: &str) -> Option<String> {
    ctl_ok(fleet, &["get", "jobs"])
        .lines()
        .find(|l| l.starts_with(id))
        .map(str::to_string)
}

fn by_mode<'a>(jobs: &'a [JobView], mode: &str) -> &'a JobView {
    jobs.iter().find(|j| j.mode == mode).unwrap()
}

/// Parses CSV with Python's csv module, as a list of dicts.
fn python_csv(text: &str) -> Vec<serde_json::Map<String, serde_json::Value>> {
    use std::io::Write;
    let mut child = Command::new("python3")
        .args([
            "-c",
            "import csv, json, sys; print(json.dumps(list(csv.DictReader(sys.stdin))))",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 must be installed");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn a_matrix_of_trainers_is_ranked_grouped_and_exported_from_the_cli() {
    let mut fleet = Fleet::start(MANIFEST).unwrap();
    fleet.write_work_file("train.py", TRAINER).unwrap();
    let jobs = fleet.wait_jobs(8).unwrap();
    let slow = by_mode(&jobs, "slow").id.clone();
    let broken = by_mode(&jobs, "broken").id.clone();
    fleet.start_agent("cpu-box", &[]).unwrap();

    // The slow job (highest priority) runs first; its progress moves in `get jobs`.
    let short = slow.short().to_string();
    let first = wait_until(WAIT, "progress 1/3 in get jobs", || {
        job_line(&fleet, &short).filter(|l| l.contains("1/3 loss=1"))
    })
    .unwrap();
    assert!(first.contains("running"), "{first}");
    fleet.write_work_file("go1", "").unwrap();
    wait_until(WAIT, "progress 2/3 in get jobs", || {
        job_line(&fleet, &short).filter(|l| l.contains("2/3 loss=0.5"))
    })
    .unwrap();
    fleet.write_work_file("go2", "").unwrap();

    let done = fleet
        .wait_jobs_until(WAIT, "every job completed", |jobs| {
            jobs.iter().all(|j| j.status == JobStatus::Completed)
        })
        .unwrap();
    assert_eq!(done.len(), 8);

    // Ranked by accuracy, best first; the learning rate is the varying column.
    let table = ctl_ok(
        &fleet,
        &["results", "gbt", "--mode", "oracle", "--sort", "-accuracy"],
    );
    let lines: Vec<&str> = table.lines().collect();
    let header: Vec<&str> = lines[0].split_whitespace().collect();
    assert_eq!(
        header,
        [
            "ID",
            "SEED",
            "learning_rate",
            "accuracy",
            "loss",
            "DURATION"
        ],
        "{table}"
    );
    let accuracies: Vec<&str> = lines[1..]
        .iter()
        .map(|l| l.split_whitespace().nth(3).unwrap())
        .collect();
    assert_eq!(
        accuracies,
        ["0.63", "0.62", "0.61", "0.54", "0.53", "0.52"],
        "{table}"
    );
    let top = ctl_ok(
        &fleet,
        &[
            "results",
            "gbt",
            "--mode",
            "oracle",
            "--sort",
            "-accuracy",
            "--top",
            "2",
        ],
    );
    assert_eq!(top.lines().count(), 3, "{top}");

    // Means over seeds.
    let grouped = ctl_ok(
        &fleet,
        &[
            "results",
            "gbt",
            "--mode",
            "oracle",
            "--group-by",
            "hyper.learning_rate",
            "--sort",
            "-accuracy",
        ],
    );
    let lines: Vec<&str> = grouped.lines().collect();
    assert_eq!(
        lines[0].split_whitespace().collect::<Vec<_>>(),
        ["learning_rate", "N", "accuracy", "loss"],
        "{grouped}"
    );
    assert!(
        lines[1].starts_with("0.1 ") && lines[1].contains("3   0.62 ± 0.01"),
        "{grouped}"
    );
    assert!(
        lines[2].starts_with("0.01 ") && lines[2].contains("3   0.53 ± 0.01"),
        "{grouped}"
    );

    // CSV that Python's csv module reads, one dict per run.
    let csv = ctl_ok(
        &fleet,
        &[
            "results", "gbt", "--mode", "oracle", "--sort", "accuracy", "-o", "csv",
        ],
    );
    let rows = python_csv(&csv);
    assert_eq!(rows.len(), 6, "{csv}");
    let first = &rows[0];
    assert_eq!(first["accuracy"], "0.52", "{csv}");
    assert_eq!(first["hyper.learning_rate"], "0.01", "{csv}");
    assert_eq!(first["seed"], "1", "{csv}");
    assert_eq!(first["id"].as_str().unwrap().len(), 64, "full IDs in CSV");
    let grouped_csv = ctl_ok(
        &fleet,
        &[
            "results",
            "--group-by",
            "hyper.learning_rate,mode",
            "-o",
            "csv",
        ],
    );
    let groups = python_csv(&grouped_csv);
    assert!(
        groups
            .iter()
            .any(|g| g["mode"] == "oracle" && g["accuracy_n"] == "3" && g["n"] == "3"),
        "{grouped_csv}"
    );

    // The broken trainer completed, without metrics, and a warning says why.
    let view = fleet.job(&broken).unwrap();
    assert_eq!(view.status, JobStatus::Completed);
    assert_eq!(view.metrics, None);
    let warning = view
        .events
        .iter()
        .find(|e| e.kind == "TrainerWarning")
        .unwrap_or_else(|| panic!("no TrainerWarning: {:?}", view.events));
    assert!(
        warning
            .message
            .contains("metrics.json is not a flat JSON object"),
        "{}",
        warning.message
    );
    let described = ctl_ok(&fleet, &["describe", "job", broken.short()]);
    assert!(described.contains("Metrics:        <none>"), "{described}");
    assert!(described.contains("TrainerWarning"), "{described}");

    // The slow job's metrics in describe, its whole series on the progress route.
    let described = ctl_ok(&fleet, &["describe", "job", slow.short()]);
    assert!(
        described.contains("Metrics:\n  accuracy: 0.61\n  loss: 0.39\n"),
        "{described}"
    );
    let progress = fleet
        .rt
        .block_on(
            fleet
                .client
                .job_progress(&IdPrefix::parse(slow.as_str()).unwrap()),
        )
        .unwrap();
    let series: Vec<String> = progress.attempts[0]
        .series
        .iter()
        .map(|p| p["step"].to_string())
        .collect();
    assert_eq!(series, ["1", "2", "3"]);
}
