//! Black-box tests of `cis490ctl` against a real `cis490-reconciler serve`: every verb's
//! output in each format, prefix resolution, operator-token handling, `diff -f`,
//! `get jobs -w` and `pull`. A fake worker (the typed client) drives jobs through their
//! states.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use cis490_api::{
    Capability, ClaimRequest, ClaimResponse, Client, CompleteRequest, FailRequest,
    HeartbeatRequest, JobFilter, JobStatus, JobView, WorkerName,
};
use cis490_tests::{bin, sha256_file, wait_until, ChildGuard, Reconciler};

const TOKEN: &str = "e2e-operator-token";
const WAIT: Duration = Duration::from_secs(30);

/// Models and modes of the manifest: 2 models x 2 modes x 5 seeds = 20 jobs, enough that
/// two IDs share a first hex digit (there are only 16), for the ambiguous-prefix case.
fn manifest_text(seeds: &[i64], extra_mode: Option<&str>) -> String {
    let mut text = String::from(
        "version = 1\n\n[defaults]\nmax_attempts = 2\nstale_after_s = 90\ncommand = [\"python3\", \"trainer.py\"]\n\n",
    );
    // Seed outermost and the extra mode last, so dropping the last seed or adding the mode
    // leaves every other entry's manifest order (which a reload would update) as it was.
    let entry = |text: &mut String, model: &str, mode: &str, seed: i64| {
        text.push_str(&format!(
            "[[jobs]]\nmodel = \"{model}\"\nmode = \"{mode}\"\nseed = {seed}\nlabels = {{ team = \"{model}-team\" }}\n\n"
        ));
    };
    for seed in seeds {
        for model in ["gbt", "mlp"] {
            for mode in ["realistic", "oracle"] {
                entry(&mut text, model, mode, *seed);
            }
        }
    }
    if let Some(mode) = extra_mode {
        for seed in seeds {
            for model in ["gbt", "mlp"] {
                entry(&mut text, model, mode, *seed);
            }
        }
    }
    text
}

/// A reconciler with a manifest, plus what the tests need to talk to it.
struct Fleet {
    _dir: tempfile::TempDir,
    dir: PathBuf,
    manifest: PathBuf,
    server: Reconciler,
    rt: tokio::runtime::Runtime,
    client: Client,
}

impl Fleet {
    fn start() -> Self {
        Self::start_with_config("")
    }

    /// Starts the server with `config` as its `--config` file.
    fn start_with_config(config: &str) -> Self {
        Self::start_prepared(config, |_| {})
    }

    /// Starts the server after `prepare` has written into its (not yet created) state dir.
    fn start_prepared(config: &str, prepare: impl FnOnce(&std::path::Path)) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        // The manifest has a folder of its own: the server watches it, and the tests write
        // other manifests (for diff) beside the working directory, not in it.
        std::fs::create_dir(root.join("etc")).unwrap();
        let manifest = root.join("etc").join("training_manifest.toml");
        std::fs::write(&manifest, manifest_text(&[1, 2, 3, 4, 5], None)).unwrap();
        let state = root.join("state");
        prepare(&state);
        let config_file = root.join("reconciler.toml");
        std::fs::write(&config_file, config).unwrap();
        let server = Reconciler::start(
            &[
                "--manifest",
                manifest.to_str().unwrap(),
                "--state-dir",
                state.to_str().unwrap(),
                "--config",
                config_file.to_str().unwrap(),
            ],
            &[("CIS490_OPERATOR_TOKEN", TOKEN)],
            &root.join("reconciler.log"),
        )
        .unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        // The test's own client reads with the operator token (for `protect_reads`).
        let client = Client::new(&server.url)
            .unwrap()
            .with_operator_token(Some(TOKEN.to_string()));
        let fleet = Self {
            _dir: dir,
            dir: root,
            manifest,
            server,
            rt,
            client,
        };
        wait_until(WAIT, "the manifest's 20 jobs", || {
            (fleet.jobs().len() == 20).then_some(())
        })
        .unwrap();
        fleet
    }

    fn jobs(&self) -> Vec<JobView> {
        self.rt
            .block_on(self.client.jobs(&JobFilter::default()))
            .unwrap_or_default()
    }

    fn job(&self, id: &cis490_api::JobId) -> JobView {
        let prefix = cis490_api::IdPrefix::parse(id.as_str()).unwrap();
        self.rt.block_on(self.client.job(&prefix)).unwrap()
    }

    /// Runs cis490ctl against this server, with or without the operator token.
    fn ctl(&self, args: &[&str], token: bool) -> Output {
        let mut cmd = Command::new(bin("cis490ctl").unwrap());
        cmd.arg("--server")
            .arg(&self.server.url)
            .args(args)
            .env_remove("CIS490_SERVER")
            .env_remove("CIS490_OPERATOR_TOKEN")
            .current_dir(&self.dir);
        if token {
            cmd.env("CIS490_OPERATOR_TOKEN", TOKEN);
        }
        cmd.output().unwrap()
    }

    /// Runs cis490ctl and insists on success; returns stdout.
    fn ok(&self, args: &[&str], token: bool) -> String {
        let out = self.ctl(args, token);
        assert!(
            out.status.success(),
            "cis490ctl {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    fn worker(&self, name: &str) -> FakeWorker<'_> {
        let name = WorkerName::parse(name).unwrap();
        let capability = Capability {
            hostname: name.to_string(),
            os: "linux".into(),
            arch: "x86_64".into(),
            cores: 8,
            ram_total_mib: 32 * 1024,
            ram_available_mib: 30 * 1024,
            ram_allocatable_mib: 30 * 1024,
            agent_version: "0.1.0-e2e".into(),
            max_concurrent: 4,
            ..Capability::default()
        };
        self.rt
            .block_on(self.client.report_node(&name, &capability))
            .unwrap();
        FakeWorker {
            fleet: self,
            name,
            capability,
        }
    }
}

/// A worker played by the test through the typed client.
struct FakeWorker<'a> {
    fleet: &'a Fleet,
    name: WorkerName,
    capability: Capability,
}

impl FakeWorker<'_> {
    fn claim(&self) -> ClaimResponse {
        let req = ClaimRequest {
            worker: self.name.clone(),
            capability: self.capability.clone(),
        };
        self.fleet
            .rt
            .block_on(self.fleet.client.claim(&req, None))
            .unwrap()
            .expect("a claimable job")
    }

    fn heartbeat(&self, claim: &ClaimResponse, log: &str) {
        let req = HeartbeatRequest {
            worker: self.name.clone(),
            lease: claim.lease.clone(),
            log_tail: Some(log.to_string()),
            log: None,
            progress: None,
        };
        self.fleet
            .rt
            .block_on(self.fleet.client.heartbeat(&claim.job.id, &req))
            .unwrap();
    }

    /// Uploads `bytes` as the job's artifact and completes it; returns the artifact ID.
    fn complete(&self, claim: &ClaimResponse, bytes: Vec<u8>) -> cis490_api::ArtifactId {
        use sha2::Digest;
        let sha = hex::encode(sha2::Sha256::digest(&bytes));
        let up = self
            .fleet
            .rt
            .block_on(self.fleet.client.upload(
                &claim.job.id,
                &self.name,
                &claim.lease,
                &sha,
                reqwest::Body::from(bytes),
            ))
            .unwrap();
        let req = CompleteRequest {
            worker: self.name.clone(),
            lease: claim.lease.clone(),
            artifact_id: Some(up.artifact_id.clone()),
            upload: None,
            report: Default::default(),
        };
        self.fleet
            .rt
            .block_on(self.fleet.client.complete(&claim.job.id, &req))
            .unwrap();
        up.artifact_id
    }

    fn fail(&self, claim: &ClaimResponse, reason: &str, code: i32) {
        let req = FailRequest {
            worker: self.name.clone(),
            lease: claim.lease.clone(),
            reason: reason.to_string(),
            exit_code: Some(code),
            log_tail: Some("Traceback (most recent call last):\nValueError: boom\n".into()),
            retryable: false,
            cause: Default::default(),
            report: Default::default(),
        };
        self.fleet
            .rt
            .block_on(self.fleet.client.fail(&claim.job.id, &req))
            .unwrap();
    }
}

fn header(table: &str) -> Vec<String> {
    table
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

/// The table row that starts with `first`, split on whitespace.
fn row(table: &str, first: &str) -> Vec<String> {
    table
        .lines()
        .find(|l| l.starts_with(first))
        .unwrap_or_else(|| panic!("no row starting with {first} in\n{table}"))
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

#[test]
fn get_jobs_in_every_format_and_with_filters() {
    let fleet = Fleet::start();
    let jobs = fleet.jobs();
    let one = &jobs[0];

    let table = fleet.ok(&["get", "jobs"], false);
    assert_eq!(
        header(&table),
        ["ID", "MODEL", "MODE", "STATUS", "WORKER", "ATTEMPTS", "PROGRESS", "AGE"]
    );
    assert_eq!(table.lines().count(), 21, "{table}");
    let r = row(&table, one.id.short());
    assert_eq!(
        r[1..5],
        [one.model.as_str(), one.mode.as_str(), "pending", "<none>"]
    );
    assert_eq!(r[5], format!("0/{}", one.max_attempts));

    let wide = fleet.ok(&["get", "jobs", "-o", "wide"], false);
    assert_eq!(header(&wide)[8..], ["CONSTRAINTS", "LEASE", "ARTIFACT"]);

    let json = fleet.ok(&["get", "jobs", "-o", "json"], false);
    let parsed: Vec<serde_json::Value> = serde_json::from_str(&json).unwrap();
    assert_eq!(parsed.len(), 20);
    for key in [
        "id",
        "model",
        "mode",
        "status",
        "worker",
        "attempts",
        "max_attempts",
        "artifact_id",
        "error",
        "tombstoned",
    ] {
        assert!(
            parsed[0].get(key).is_some(),
            "JSON lacks {key}: {}",
            parsed[0]
        );
    }
    let typed: Vec<JobView> = serde_json::from_str(&json).unwrap();
    let ids: BTreeSet<_> = typed.iter().map(|j| j.id.clone()).collect();
    assert_eq!(ids, jobs.iter().map(|j| j.id.clone()).collect());

    let yaml = fleet.ok(&["get", "job", "-o", "yaml"], false);
    let typed: Vec<JobView> = serde_yaml_ng::from_str(&yaml).unwrap();
    assert_eq!(typed.len(), 20);

    let names = fleet.ok(&["get", "j", "-o", "name"], false);
    assert_eq!(names.lines().count(), 20);
    assert!(names.contains(&format!("job/{}\n", one.id)), "{names}");
    // Fetched 7 at a time (three pages), the listing is the same, in the same order.
    let paged = fleet.ok(&["get", "j", "-o", "name", "--chunk-size", "7"], false);
    assert_eq!(paged, names);
    let out = fleet.ctl(&["get", "jobs", "--chunk-size", "0"], false);
    assert_eq!(
        out.status.code(),
        Some(1),
        "a page of no jobs is a usage error"
    );

    let gbt = fleet.ok(&["get", "jobs", "--model", "gbt", "-o", "name"], false);
    assert_eq!(gbt.lines().count(), 10, "{gbt}");
    let team = fleet.ok(&["get", "jobs", "-l", "team=mlp-team", "-o", "name"], false);
    assert_eq!(team.lines().count(), 10, "{team}");
    let running = fleet.ok(&["get", "jobs", "--status", "running", "-o", "json"], false);
    assert_eq!(
        serde_json::from_str::<Vec<JobView>>(&running)
            .unwrap()
            .len(),
        0
    );
}

#[test]
fn prefixes_resolve_like_git_and_ambiguous_ones_list_candidates() {
    let fleet = Fleet::start();
    let jobs = fleet.jobs();
    let one = &jobs[0];
    let text = fleet.ok(&["describe", "job", &one.id.as_str()[..8]], false);
    assert!(
        text.contains(&format!("ID:             {}", one.id)),
        "{text}"
    );
    assert!(text.contains("Status:         pending"), "{text}");
    assert!(text.contains("Why Not Running:"), "{text}");
    assert!(text.contains("Events:"), "{text}");

    // 20 IDs over 16 hex digits: some first digit is shared.
    let mut by_first: std::collections::BTreeMap<char, Vec<&JobView>> = Default::default();
    for j in &jobs {
        by_first
            .entry(j.id.as_str().chars().next().unwrap())
            .or_default()
            .push(j);
    }
    let (digit, shared) = by_first.iter().find(|(_, v)| v.len() > 1).unwrap();
    let out = fleet.ctl(&["describe", "job", &digit.to_string()], false);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    for j in shared {
        assert!(err.contains(j.id.short()), "{err} lacks {}", j.id.short());
    }
    let out = fleet.ctl(&["describe", "job", "not-hex"], false);
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn cancel_and_requeue_need_the_token_and_change_the_job() {
    let fleet = Fleet::start();
    let job = fleet.jobs()[0].clone();
    let prefix = &job.id.as_str()[..10];

    for verb in ["cancel", "requeue"] {
        let out = fleet.ctl(&[verb, prefix], false);
        assert_eq!(out.status.code(), Some(1));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("CIS490_OPERATOR_TOKEN"), "{err}");
    }
    assert_eq!(fleet.job(&job.id).status, JobStatus::Pending);

    let out = fleet.ok(&["cancel", prefix], true);
    assert_eq!(out, format!("job/{} cancelled\n", job.id.short()));
    assert_eq!(fleet.job(&job.id).status, JobStatus::Cancelled);

    let out = fleet.ok(&["requeue", prefix], true);
    assert_eq!(out, format!("job/{} requeued (pending)\n", job.id.short()));
    assert_eq!(fleet.job(&job.id).status, JobStatus::Pending);

    // A wrong token is refused by the server with the same advice.
    let mut cmd = Command::new(bin("cis490ctl").unwrap());
    let out = cmd
        .args(["--server", &fleet.server.url, "cancel", prefix])
        .env("CIS490_OPERATOR_TOKEN", "wrong")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("CIS490_OPERATOR_TOKEN"));
    assert_eq!(fleet.job(&job.id).status, JobStatus::Pending);

    // Issue 13, point 9: a verb that changes a job takes no prefix shorter than 4 hex
    // digits (one digit matches some job of 16 almost surely), from cis490ctl or the API.
    for verb in ["cancel", "requeue"] {
        let out = fleet.ctl(&[verb, &job.id.as_str()[..1]], true);
        assert_eq!(out.status.code(), Some(1), "{verb}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("at least 4 hex digits"), "{err}");
    }
    let short = cis490_api::IdPrefix::parse(&job.id.as_str()[..3]).unwrap();
    let refused = fleet.rt.block_on(fleet.client.cancel(&short)).unwrap_err();
    assert!(
        refused.to_string().contains("at least 4 hex digits"),
        "{refused}"
    );
    assert_eq!(fleet.job(&job.id).status, JobStatus::Pending);

    // A refusal says what was tried, in the right tense: not "cancelled job X: cannot
    // cancel".
    fleet.ok(&["cancel", prefix], true);
    let out = fleet.ctl(&["cancel", prefix], true);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("cancelling job {prefix}: cannot cancel")),
        "{err}"
    );
    assert!(!err.contains("cancelled job"), "{err}");
}

#[test]
fn requeue_status_failed_requeues_every_failed_job() {
    let fleet = Fleet::start();
    let worker = fleet.worker("cpu-1");
    let a = worker.claim();
    let b = worker.claim();
    worker.fail(&a, "trainer exited with status 3", 3);
    worker.fail(&b, "trainer exited with status 3", 3);
    let failed = fleet.ok(&["get", "jobs", "--status", "failed", "-o", "name"], false);
    assert_eq!(failed.lines().count(), 2, "{failed}");

    let out = fleet.ok(&["requeue", "--status", "failed"], true);
    assert_eq!(out.lines().count(), 2, "{out}");
    for c in [&a, &b] {
        assert_eq!(fleet.job(&c.job.id).status, JobStatus::Pending);
    }
    let out = fleet.ok(&["requeue", "--status", "failed"], true);
    assert_eq!(out, "no failed jobs to requeue\n");
}

#[test]
fn diff_lists_creates_and_tombstones_without_changing_the_queue() {
    let fleet = Fleet::start();
    let before = fleet.jobs();
    // Seeds 1-4 plus a new mode: seed 5 jobs go (4 of them), 2 models x 4 seeds arrive.
    let changed = fleet.dir.join("changed.toml");
    std::fs::write(&changed, manifest_text(&[1, 2, 3, 4], Some("ideal"))).unwrap();

    let out = fleet.ctl(&["diff", "-f", changed.to_str().unwrap()], false);
    assert_eq!(out.status.code(), Some(1), "diff is an operator verb");

    // An error in the local file is reported against the local file, not the server's.
    let broken = fleet.dir.join("broken.toml");
    std::fs::write(
        &broken,
        "version = 1\n[[jobs]]\nmodel = \"gbt\"\nmdoe = \"x\"\n",
    )
    .unwrap();
    let out = fleet.ctl(&["diff", "-f", broken.to_str().unwrap()], true);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("{}:4:1", broken.display())),
        "{stderr}"
    );
    assert!(!stderr.contains("training_manifest.toml"), "{stderr}");

    let text = fleet.ok(&["diff", "-f", changed.to_str().unwrap()], true);
    let creates: Vec<&str> = text.lines().filter(|l| l.starts_with("+ create")).collect();
    let tombstones: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("- tombstone"))
        .collect();
    assert_eq!(creates.len(), 8, "{text}");
    assert!(creates.iter().all(|l| l.ends_with("/ideal")), "{text}");
    assert_eq!(tombstones.len(), 4, "{text}");
    assert!(
        !text
            .lines()
            .any(|l| l.starts_with("~ ") || l.starts_with("^ ")),
        "{text}"
    );
    assert!(
        text.contains("8 to create, 0 to update, 4 to tombstone, 0 to revive, 16 unchanged"),
        "{text}"
    );

    // Exactly the seed-5 jobs are tombstoned: check by ID.
    let plan: cis490_api::PlanSummary = serde_json::from_str(&fleet.ok(
        &["diff", "-f", changed.to_str().unwrap(), "-o", "json"],
        true,
    ))
    .unwrap();
    let gone: BTreeSet<_> = plan.tombstone.iter().map(|e| e.id.clone()).collect();
    let detail: Vec<JobView> = before
        .iter()
        .map(|j| fleet.job(&j.id))
        .filter(|j| j.seed == 5)
        .collect();
    let expected: BTreeSet<_> = detail.iter().map(|j| j.id.clone()).collect();
    assert_eq!(gone, expected);
    let yaml = fleet.ok(
        &["diff", "-f", changed.to_str().unwrap(), "-o", "yaml"],
        true,
    );
    let from_yaml: cis490_api::PlanSummary = serde_yaml_ng::from_str(&yaml).unwrap();
    assert_eq!(from_yaml, plan);

    // The queue did not change.
    let after = fleet.jobs();
    assert_eq!(after, before);
}

#[test]
fn watch_prints_a_line_when_a_job_changes() {
    let fleet = Fleet::start();
    let mut cmd = Command::new(bin("cis490ctl").unwrap());
    cmd.args(["--server", &fleet.server.url, "get", "jobs", "-w"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut watcher = ChildGuard::spawn("cis490ctl get jobs -w", cmd).unwrap();
    let stdout = watcher.child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut seen: Vec<String> = Vec::new();
    let collect = |seen: &mut Vec<String>| {
        while let Ok(l) = rx.try_recv() {
            seen.push(l);
        }
    };
    wait_until(WAIT, "the first listing (header + 20 rows)", || {
        collect(&mut seen);
        (seen.len() >= 21).then_some(())
    })
    .unwrap();
    let listed = seen.len();

    let worker = fleet.worker("cpu-1");
    let claim = worker.claim();
    let short = claim.job.id.short().to_string();
    wait_until(WAIT, "a watch line for the claimed job", || {
        collect(&mut seen);
        seen[listed..]
            .iter()
            .any(|l| l.starts_with(&short) && l.contains("claimed") && l.contains("cpu-1"))
            .then_some(())
    })
    .unwrap();
    worker.heartbeat(&claim, "epoch 1\n");
    wait_until(WAIT, "a watch line for the running job", || {
        collect(&mut seen);
        seen[listed..]
            .iter()
            .any(|l| l.starts_with(&short) && l.contains("running"))
            .then_some(())
    })
    .unwrap();
    // Unchanged jobs are not repeated.
    assert!(
        seen[listed..].iter().all(|l| l.starts_with(&short)),
        "{:?}",
        &seen[listed..]
    );
}

#[test]
fn workers_describe_cordon_and_logs() {
    let fleet = Fleet::start();
    let worker = fleet.worker("cpu-1");
    let claim = worker.claim();
    worker.heartbeat(&claim, "loading data\nepoch 1 loss 0.5\n");

    let table = fleet.ok(&["get", "workers"], false);
    assert_eq!(
        header(&table),
        [
            "NAME",
            "STATUS",
            "CUDA",
            "GPUS",
            "VRAM",
            "RAM",
            "RUNNING",
            "LAST-SEEN",
            "VERSION"
        ]
    );
    let r = row(&table, "cpu-1");
    assert_eq!(r[1..7], ["Ready", "no", "0", "0", "32Gi", "1"]);
    assert_eq!(r[8], "0.1.0-e2e");
    let json = fleet.ok(&["get", "nodes", "-o", "json"], false);
    let workers: Vec<cis490_api::WorkerView> = serde_json::from_str(&json).unwrap();
    assert_eq!(workers.len(), 1);
    assert_eq!(workers[0].running_jobs, vec![claim.job.id.clone()]);
    let yaml = fleet.ok(&["get", "workers", "-o", "yaml"], false);
    let workers: Vec<cis490_api::WorkerView> = serde_yaml_ng::from_str(&yaml).unwrap();
    assert_eq!(workers[0].name.as_str(), "cpu-1");
    let wide = fleet.ok(&["get", "workers", "-o", "wide"], false);
    assert!(wide.contains("linux/x86_64"), "{wide}");

    let text = fleet.ok(&["describe", "worker", "cpu-1"], false);
    assert!(text.contains("State:          Ready"), "{text}");
    assert!(text.contains("Cores:         8"), "{text}");
    assert!(text.contains(claim.job.id.short()), "{text}");
    let events = text.split("Events:").nth(1).unwrap_or_default();
    assert!(events.contains("Claimed"), "{text}");

    let text = fleet.ok(&["describe", "job", claim.job.id.short()], false);
    assert!(text.contains("Status:         running"), "{text}");
    assert!(text.contains("Lease Holder:   cpu-1"), "{text}");

    let logs = fleet.ok(&["logs", claim.job.id.short()], false);
    assert_eq!(logs, "loading data\nepoch 1 loss 0.5\n");

    let out = fleet.ctl(&["cordon", "cpu-1"], false);
    assert_eq!(out.status.code(), Some(1));
    let out = fleet.ok(&["cordon", "cpu-1"], true);
    assert!(out.starts_with("worker/cpu-1 cordoned"), "{out}");
    let table = fleet.ok(&["get", "workers"], false);
    assert_eq!(row(&table, "cpu-1")[1], "Cordoned");
    let out = fleet.ok(&["uncordon", "cpu-1"], true);
    assert!(out.starts_with("worker/cpu-1 uncordoned"), "{out}");
    let out = fleet.ok(&["drain", "cpu-1"], true);
    assert!(out.starts_with("worker/cpu-1 draining"), "{out}");
    let table = fleet.ok(&["get", "workers"], false);
    assert_eq!(row(&table, "cpu-1")[1], "Draining");
}

#[test]
fn pull_writes_a_file_whose_sha256_matches_and_artifacts_are_listed() {
    let fleet = Fleet::start();
    let worker = fleet.worker("cpu-1");
    let claim = worker.claim();
    worker.heartbeat(&claim, "training\n");
    let bytes: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let artifact = worker.complete(&claim, bytes);

    let table = fleet.ok(&["get", "artifacts"], false);
    assert_eq!(
        header(&table),
        ["ARTIFACT", "JOB", "ATTEMPT", "MODEL", "MODE", "SIZE", "WORKER", "RECEIVED"]
    );
    let r = row(&table, artifact.short());
    assert_eq!(
        r[1..5],
        [
            claim.job.id.short(),
            "1",
            claim.job.model.as_str(),
            claim.job.mode.as_str()
        ]
    );
    assert_eq!(r[6], "cpu-1");
    let json = fleet.ok(&["get", "artifacts", "-o", "json"], false);
    let list: Vec<cis490_api::ArtifactView> = serde_json::from_str(&json).unwrap();
    assert_eq!(list[0].artifact_id, artifact);
    let yaml = fleet.ok(&["get", "artifacts", "-o", "yaml"], false);
    let list: Vec<cis490_api::ArtifactView> = serde_yaml_ng::from_str(&yaml).unwrap();
    assert_eq!(list[0].size_bytes, 200_000);

    // By artifact prefix, to a chosen file.
    let out_file = fleet.dir.join("bundle.tar.zst");
    let text = fleet.ok(
        &[
            "pull",
            &artifact.as_str()[..10],
            "-o",
            out_file.to_str().unwrap(),
        ],
        false,
    );
    assert!(text.contains("sha256 verified"), "{text}");
    assert_eq!(sha256_file(&out_file).unwrap(), artifact.as_str());
    // By job prefix, to the default name (after the job) in the working directory.
    fleet.ok(&["pull", claim.job.id.short()], false);
    let default: PathBuf = fleet.dir.join(format!(
        "{}_{}_{}.tar.zst",
        claim.job.model,
        claim.job.mode,
        claim.job.id.short()
    ));
    assert_eq!(sha256_file(&default).unwrap(), artifact.as_str());

    let text = fleet.ok(&["describe", "job", claim.job.id.short()], false);
    assert!(
        text.contains(&format!("Artifact:       {artifact}")),
        "{text}"
    );
}

#[test]
fn wait_exits_0_on_completion_and_at_once_with_the_reason_on_failure() {
    let fleet = Fleet::start();
    let worker = fleet.worker("cpu-1");
    let good = worker.claim();
    let bad = worker.claim();

    let mut cmd = Command::new(bin("cis490ctl").unwrap());
    cmd.args([
        "--server",
        &fleet.server.url,
        "wait",
        good.job.id.short(),
        "--timeout",
        "60s",
    ])
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut waiter = ChildGuard::spawn("cis490ctl wait", cmd).unwrap();
    worker.heartbeat(&good, "epoch 1\n");
    worker.complete(&good, b"model bytes".to_vec());
    let status = waiter.wait_exit(WAIT).unwrap();
    assert!(status.success());

    let mut cmd = Command::new(bin("cis490ctl").unwrap());
    cmd.args([
        "--server",
        &fleet.server.url,
        "wait",
        good.job.id.short(),
        bad.job.id.short(),
        "--timeout",
        "10m",
    ])
    .stdout(Stdio::null())
    .stderr(Stdio::piped());
    let mut waiter = ChildGuard::spawn("cis490ctl wait", cmd).unwrap();
    worker.fail(&bad, "trainer exited with status 3", 3);
    let status = waiter.wait_exit(WAIT).unwrap();
    assert_eq!(status.code(), Some(1));
    let mut err = String::new();
    std::io::Read::read_to_string(&mut waiter.child.stderr.take().unwrap(), &mut err).unwrap();
    assert!(
        err.contains(bad.job.id.short()) && err.contains("failed"),
        "{err}"
    );
    assert!(err.contains("exit code 3"), "{err}");

    let out = fleet.ctl(&["wait", bad.job.id.short(), "--for", "finished"], false);
    assert!(out.status.success());
    let text = fleet.ok(&["describe", "job", bad.job.id.short()], false);
    assert!(text.contains("Exit Code:  3"), "{text}");
    assert!(text.contains("ValueError: boom"), "{text}");
    let logs = fleet.ok(&["logs", bad.job.id.short()], false);
    assert!(logs.contains("ValueError: boom"), "{logs}");
}

#[test]
fn status_version_and_reload() {
    let fleet = Fleet::start();
    let text = fleet.ok(&["status"], false);
    assert!(text.contains("Jobs:        20 total: 20 pending"), "{text}");
    assert!(text.contains("Workers:     0/0 Ready"), "{text}");
    assert!(text.contains("Last Error:  <none>"), "{text}");
    let json = fleet.ok(&["status", "-o", "json"], false);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["jobs"]["pending"], 20);
    let generation = v["manifest"]["generation"].as_u64().unwrap();
    assert!(generation >= 1);
    let yaml = fleet.ok(&["status", "-o", "yaml"], false);
    let y: serde_json::Value = serde_yaml_ng::from_str(&yaml).unwrap();
    assert_eq!(y, v);

    let text = fleet.ok(&["version"], false);
    assert!(text.contains("Client Version: "), "{text}");
    assert!(
        text.contains(&format!("Server Version: {}", cis490_api::VERSION)),
        "{text}"
    );
    let json = fleet.ok(&["version", "-o", "json"], false);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["server_version"], cis490_api::VERSION);

    // A reload of the changed file applies it: the new jobs appear.
    std::fs::write(
        &fleet.manifest,
        manifest_text(&[1, 2, 3, 4, 5], Some("ideal")),
    )
    .unwrap();
    let out = fleet.ctl(&["reload"], false);
    assert_eq!(out.status.code(), Some(1));
    let text = fleet.ok(&["apply"], true);
    assert!(text.contains("applied:"), "{text}");
    wait_until(WAIT, "30 jobs after the reload", || {
        (fleet.jobs().len() == 30).then_some(())
    })
    .unwrap();
    // A broken manifest: reload fails with the server's message, the status shows it.
    std::fs::write(&fleet.manifest, "version = 1\n[[jobs]]\nmodel = 3\n").unwrap();
    let out = fleet.ctl(&["reload"], true);
    assert_eq!(out.status.code(), Some(1));
    let text = fleet.ok(&["status"], false);
    assert!(!text.contains("Last Error:  <none>"), "{text}");
}

#[test]
fn protected_reads_need_the_operator_token() {
    let fleet = Fleet::start_with_config("protect_reads = true\n");
    let out = fleet.ctl(&["get", "jobs"], false);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("CIS490_OPERATOR_TOKEN"), "{err}");
    let table = fleet.ok(&["get", "jobs"], true);
    assert_eq!(table.lines().count(), 21, "{table}");
}

#[test]
fn more_formats_names_wide_rows_reload_and_version_yaml() {
    let fleet = Fleet::start();
    let worker = fleet.worker("cpu-1");
    let claim = worker.claim();
    worker.heartbeat(&claim, "epoch 1\n");

    let wide = fleet.ok(&["get", "jobs", "-o", "wide"], false);
    let r = row(&wide, claim.job.id.short());
    assert_eq!(r[3..6], ["running", "cpu-1", "1/2"], "{wide}");
    assert_eq!(r[6], "<none>", "no progress reported: {wide}");
    assert_eq!(r[8], "<none>", "no constraints: {wide}");
    assert_eq!(r[10], "<none>", "no artifact yet: {wide}");

    let names = fleet.ok(&["get", "workers", "-o", "name"], false);
    assert_eq!(names, "worker/cpu-1\n");
    let artifact = worker.complete(&claim, b"bundle".to_vec());
    let names = fleet.ok(&["get", "artifacts", "-o", "name"], false);
    assert_eq!(names, format!("artifact/{artifact}\n"));

    let json = fleet.ok(&["reload", "-o", "json"], true);
    let plan: cis490_api::PlanSummary = serde_json::from_str(&json).unwrap();
    assert!(plan.applied);
    assert_eq!(plan.keep, 20);
    assert!(plan.create.is_empty() && plan.tombstone.is_empty());
    let yaml = fleet.ok(&["apply", "-o", "yaml"], true);
    let again: cis490_api::PlanSummary = serde_yaml_ng::from_str(&yaml).unwrap();
    assert_eq!(again.keep, 20);

    let yaml = fleet.ok(&["version", "-o", "yaml"], false);
    let v: serde_json::Value = serde_yaml_ng::from_str(&yaml).unwrap();
    assert_eq!(v["client_version"], cis490_api::VERSION);
    assert_eq!(v["server_version"], cis490_api::VERSION);
    assert_eq!(v["server"], fleet.server.url.as_str());
}

#[test]
fn tombstoned_jobs_show_only_with_all_and_diff_revives_them() {
    let fleet = Fleet::start();
    std::fs::write(&fleet.manifest, manifest_text(&[1, 2, 3, 4], None)).unwrap();
    fleet.ok(&["reload"], true);
    wait_until(WAIT, "16 live jobs after dropping seed 5", || {
        (fleet.jobs().len() == 16).then_some(())
    })
    .unwrap();
    let names = fleet.ok(&["get", "jobs", "-o", "name"], false);
    assert_eq!(names.lines().count(), 16, "{names}");
    let all = fleet.ok(&["get", "jobs", "-A"], false);
    assert_eq!(all.lines().count(), 21, "{all}");
    assert_eq!(
        all.lines().filter(|l| l.contains("(tombstoned)")).count(),
        4,
        "{all}"
    );
    let json = fleet.ok(&["get", "jobs", "--all", "-o", "json"], false);
    let jobs: Vec<JobView> = serde_json::from_str(&json).unwrap();
    assert_eq!(jobs.iter().filter(|j| j.tombstoned).count(), 4);

    // Putting seed 5 back would revive exactly those four.
    let back = fleet.dir.join("back.toml");
    std::fs::write(&back, manifest_text(&[1, 2, 3, 4, 5], None)).unwrap();
    let text = fleet.ok(&["diff", "-f", back.to_str().unwrap()], true);
    let revived: BTreeSet<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("^ revive    "))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    let tombstoned: BTreeSet<&str> = jobs
        .iter()
        .filter(|j| j.tombstoned)
        .map(|j| j.id.short())
        .collect();
    assert_eq!(revived, tombstoned, "{text}");
}

/// Files named `name` anywhere under `dir`.
fn files_named(dir: &std::path::Path, name: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(files_named(&path, name));
        } else if path.file_name().is_some_and(|n| n == name) {
            out.push(path);
        }
    }
    out
}

/// Issue 13, point 4: three jobs (two models, two modes) upload the same bytes. The store
/// keeps them once, the listing has one row per job, `-o name` names the artifact once,
/// `pull SHA256` is not ambiguous, and `pull JOB` writes that job's own artifact under
/// that job's name.
#[test]
fn identical_bytes_are_stored_once_and_each_job_pulls_its_own_artifact() {
    let fleet = Fleet::start();
    let worker = fleet.worker("cpu-1");
    let bytes = b"the same model, trained three times\n".repeat(2000);
    let claims: Vec<ClaimResponse> = (0..3).map(|_| worker.claim()).collect();
    let pairs: BTreeSet<(String, String)> = claims
        .iter()
        .map(|c| (c.job.model.clone(), c.job.mode.clone()))
        .collect();
    assert_eq!(pairs.len(), 3, "three different (model, mode) pairs");
    let artifacts: BTreeSet<_> = claims
        .iter()
        .map(|c| worker.complete(c, bytes.clone()))
        .collect();
    assert_eq!(artifacts.len(), 1);
    let artifact = artifacts.into_iter().next().unwrap();

    let bundles = files_named(&fleet.dir.join("state"), "bundle.tar.zst");
    assert_eq!(bundles.len(), 1, "the bytes are stored once: {bundles:?}");

    let json = fleet.ok(&["get", "artifacts", "-o", "json"], false);
    let list: Vec<cis490_api::ArtifactView> = serde_json::from_str(&json).unwrap();
    assert_eq!(list.len(), 3, "one row per job: {list:?}");
    for c in &claims {
        let rows: Vec<_> = list.iter().filter(|a| a.job_id == c.job.id).collect();
        assert_eq!(rows.len(), 1, "job {}: {list:?}", c.job.id.short());
        assert_eq!(rows[0].artifact_id, artifact);
        assert_eq!((&rows[0].model, &rows[0].mode), (&c.job.model, &c.job.mode));
        assert_eq!(rows[0].attempt, Some(1));
    }
    let names = fleet.ok(&["get", "artifacts", "-o", "name"], false);
    assert_eq!(names, format!("artifact/{artifact}\n"));

    // The full sha256 names these bytes, whoever uploaded them.
    let by_sha = fleet.dir.join("by-sha.tar.zst");
    let text = fleet.ok(
        &["pull", artifact.as_str(), "-o", by_sha.to_str().unwrap()],
        false,
    );
    assert!(text.contains("sha256 verified"), "{text}");
    assert_eq!(sha256_file(&by_sha).unwrap(), artifact.as_str());

    // Each job's own artifact, named after that job (the oldest first: a listing sorted
    // newest first must not answer for it).
    for c in &claims {
        let text = fleet.ok(&["pull", c.job.id.short()], false);
        let file = fleet.dir.join(format!(
            "{}_{}_{}.tar.zst",
            c.job.model,
            c.job.mode,
            c.job.id.short()
        ));
        assert!(
            file.is_file(),
            "{} missing; pull said {text}",
            file.display()
        );
        assert_eq!(sha256_file(&file).unwrap(), artifact.as_str());
        assert!(
            text.contains(&format!("job/{}", c.job.id.short())),
            "{text}"
        );
    }
}

/// A store written in the layout before content addressing (`<model>_<mode>/<sha256>/`,
/// the same bytes under two pairs) is moved into `blobs/` when the server starts: its
/// bytes are listed and pulled, and kept once.
#[test]
fn a_store_of_the_old_layout_is_migrated_at_start_up_and_still_served() {
    use sha2::Digest;
    let bytes = b"bundle written by an older server\n".repeat(100);
    let sha = hex::encode(sha2::Sha256::digest(&bytes));
    let fleet = Fleet::start_prepared("", |state| {
        for (model, mode, job) in [("gbt", "realistic", 'a'), ("mlp", "oracle", 'b')] {
            let folder = state
                .join("models")
                .join(format!("{model}_{mode}"))
                .join(&sha);
            std::fs::create_dir_all(&folder).unwrap();
            std::fs::write(folder.join("bundle.tar.zst"), &bytes).unwrap();
            let meta = serde_json::json!({
                "artifact_id": sha,
                "job_id": job.to_string().repeat(64),
                "model": model,
                "mode": mode,
                "worker": "old-box",
                "size_bytes": bytes.len(),
                "received_at": "2024-05-01T12:00:00Z",
            });
            std::fs::write(folder.join("meta.json"), meta.to_string()).unwrap();
        }
    });
    let store = fleet.dir.join("state/models");
    assert_eq!(
        files_named(&store, "bundle.tar.zst"),
        [cis490_tests::stored_bundle(&store, &sha)]
    );
    let json = fleet.ok(&["get", "artifacts", "-o", "json"], false);
    let list: Vec<cis490_api::ArtifactView> = serde_json::from_str(&json).unwrap();
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(list[0].artifact_id.as_str(), sha);
    assert_eq!(list[0].attempt, None);
    let out = fleet.dir.join("old.tar.zst");
    fleet.ok(&["pull", &sha[..12], "-o", out.to_str().unwrap()], false);
    assert_eq!(sha256_file(&out).unwrap(), sha);
}

/// Issue 13, point 8, through the binaries: a worker whose slots all hold jobs is not
/// "could run it now" in `describe job`, and says why it waits.
#[test]
fn describe_says_a_busy_worker_cannot_run_a_job_now() {
    let fleet = Fleet::start();
    let worker = fleet.worker("cpu-1");
    for _ in 0..4 {
        worker.claim();
    }
    let pending = fleet
        .jobs()
        .into_iter()
        .find(|j| j.status == JobStatus::Pending)
        .unwrap();
    let text = fleet.ok(&["describe", "job", pending.id.short()], false);
    assert!(
        text.contains("cpu-1  not now: busy: all 4 slots hold jobs"),
        "{text}"
    );
    assert!(!text.contains("could run it now"), "{text}");
    assert!(text.contains("can run later on cpu-1"), "{text}");
}

/// Issue 13, point 9: a tombstoned job that still runs stays in `get jobs` (marked), and
/// `status` counts only live jobs, with the tombstoned ones apart.
#[test]
fn a_running_tombstoned_job_stays_listed_and_status_counts_tombstoned_jobs_apart() {
    let fleet = Fleet::start();
    let worker = fleet.worker("cpu-1");
    // Seed 5's jobs come last in the manifest: the 17th claim is one of them.
    let claims: Vec<ClaimResponse> = (0..17).map(|_| worker.claim()).collect();
    let running = claims.last().unwrap();
    assert_eq!(running.job.seed, 5);
    worker.heartbeat(running, "epoch 1\n");
    std::fs::write(&fleet.manifest, manifest_text(&[1, 2, 3, 4], None)).unwrap();
    fleet.ok(&["reload"], true);
    wait_until(WAIT, "seed 5 tombstoned", || {
        let job = fleet.job(&running.job.id);
        job.tombstoned.then_some(())
    })
    .unwrap();

    let names = fleet.ok(&["get", "jobs", "-o", "name"], false);
    assert!(
        names.contains(&format!("job/{}", running.job.id)),
        "the running tombstoned job vanished:\n{names}"
    );
    assert_eq!(names.lines().count(), 17, "{names}");
    let table = fleet.ok(&["get", "jobs"], false);
    assert!(
        row(&table, running.job.id.short())
            .join(" ")
            .contains("running (tombstoned)"),
        "{table}"
    );

    let text = fleet.ok(&["status"], false);
    assert!(text.contains("Jobs:        17 total:"), "{text}");
    assert!(text.contains("3 tombstoned"), "{text}");
    let json = fleet.ok(&["status", "-o", "json"], false);
    let summary: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(summary["tombstoned"], 3, "{json}");
}

/// Issue 13, point 9: `describe worker` of a CUDA worker that did not report its CUDA
/// version says so, instead of "CUDA: <none>".
#[test]
fn describe_worker_shows_cuda_without_a_version_as_yes() {
    let fleet = Fleet::start();
    let name = WorkerName::parse("gpu-1").unwrap();
    let capability = Capability {
        hostname: "gpu-1".into(),
        cores: 8,
        ram_total_mib: 32 * 1024,
        ram_allocatable_mib: 30 * 1024,
        cuda: true,
        gpus: vec![cis490_api::Gpu {
            index: 0,
            name: "RTX".into(),
            vram_total_mib: 24 * 1024,
            vram_free_mib: 24 * 1024,
            vram_allocatable_mib: 24 * 1024,
            ..cis490_api::Gpu::default()
        }],
        ..Capability::default()
    };
    fleet
        .rt
        .block_on(fleet.client.report_node(&name, &capability))
        .unwrap();
    let text = fleet.ok(&["describe", "worker", "gpu-1"], false);
    assert!(
        text.contains("CUDA:          yes (version unknown)"),
        "{text}"
    );
}

/// Issue 13, point 9: the refusal of a lease that was handed back and replaced under the
/// same attempt number says what happened.
#[test]
fn a_replaced_lease_is_refused_with_what_happened() {
    let fleet = Fleet::start();
    let first = fleet.worker("cpu-1");
    let old = first.claim();
    let release = FailRequest {
        worker: first.name.clone(),
        lease: old.lease.clone(),
        reason: "agent shutting down".into(),
        exit_code: None,
        log_tail: None,
        retryable: true,
        cause: Default::default(),
        report: Default::default(),
    };
    fleet
        .rt
        .block_on(fleet.client.fail(&old.job.id, &release))
        .unwrap();
    let second = fleet.worker("cpu-2");
    let new = second.claim();
    assert_eq!(
        (&new.job.id, new.lease.attempt),
        (&old.job.id, old.lease.attempt)
    );
    let stale = HeartbeatRequest {
        worker: first.name.clone(),
        lease: old.lease.clone(),
        log_tail: None,
        log: None,
        progress: None,
    };
    let err = fleet
        .rt
        .block_on(fleet.client.heartbeat(&old.job.id, &stale))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("leased again, to cpu-2, under the same attempt number 1"),
        "{err}"
    );
    assert!(
        !err.contains("is not the current lease (attempt 1)"),
        "{err}"
    );
}
