//! Black-box tests of cis490ctl's operator tools (issue 13) against the real server:
//! hold / release, `get job ID`, `describe -o json|yaml`, `get events`, multi-term label
//! selectors, `delete worker`, `apply -f` and client config contexts.
#![cfg(unix)]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::process::{Output, Stdio};
use std::sync::mpsc;

use cis490_api::{Capability, ClaimRequest, Event, JobStatus, JobView, WorkerName};
use cis490_tests::fleet::{Fleet, WAIT};
use cis490_tests::{wait_until, ChildGuard};

/// Two jobs of model gbt, labelled, a lease of 90 s.
const MANIFEST: &str = r#"version = 1

[defaults]
max_attempts = 2
stale_after_s = 90
command = ["python3", "trainer.py"]

[[jobs]]
model = "gbt"
mode = "realistic"
seed = 1
labels = { team = "a", gpu = "none" }

[[jobs]]
model = "gbt"
mode = "oracle"
seed = 2
labels = { team = "a", gpu = "small" }

[[jobs]]
model = "mlp"
mode = "realistic"
seed = 3
labels = { team = "b", gpu = "small" }
"#;

fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "cis490ctl failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn refused(out: Output) -> String {
    assert!(
        !out.status.success(),
        "cis490ctl should have failed: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8(out.stderr).unwrap()
}

fn capability(name: &str) -> Capability {
    Capability {
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
    }
}

/// One claim by worker `name`: the job's ID, or None when nothing is claimable.
fn claim(fleet: &Fleet, name: &str) -> Option<cis490_api::ClaimResponse> {
    let req = ClaimRequest {
        worker: WorkerName::parse(name).unwrap(),
        capability: capability(name),
    };
    fleet.rt.block_on(fleet.client.claim(&req, None)).unwrap()
}

fn start() -> (Fleet, Vec<JobView>) {
    let fleet = Fleet::start(MANIFEST).unwrap();
    let mut jobs = fleet.wait_jobs(3).unwrap();
    jobs.sort_by_key(|j| j.mode.clone() + &j.model);
    (fleet, jobs)
}

#[test]
fn hold_keeps_a_job_unclaimable_until_release() {
    let (fleet, jobs) = start();
    let held = jobs.iter().find(|j| j.model == "mlp").unwrap();
    let short = held.id.short();

    let out = ok(fleet.ctl(&["hold", short]).unwrap());
    assert_eq!(out.trim(), format!("job/{short} held"));
    let listing = ok(fleet
        .ctl(&["get", "jobs", "--status", "held", "-o", "name"])
        .unwrap());
    assert_eq!(listing.trim(), format!("job/{}", held.id));
    let described = ok(fleet.ctl(&["describe", "job", short]).unwrap());
    assert!(described.contains("held by an operator"), "{described}");
    let status = ok(fleet.ctl(&["status"]).unwrap());
    assert!(status.contains("held"), "{status}");

    // The two other jobs are claimed; the held one never is.
    let mut claimed = Vec::new();
    while let Some(c) = claim(&fleet, "w1") {
        claimed.push(c.job.id);
    }
    assert_eq!(claimed.len(), 2);
    assert!(!claimed.contains(&held.id), "the held job was claimed");

    // requeue refuses a held job, and names release.
    let err = refused(fleet.ctl(&["requeue", short]).unwrap());
    assert!(err.contains("cis490ctl release"), "{err}");
    // release of a job that is not held: a clear 409.
    let err = refused(fleet.ctl(&["release", claimed[0].short()]).unwrap());
    assert!(err.contains("only held jobs can be released"), "{err}");

    let out = ok(fleet.ctl(&["release", short]).unwrap());
    assert_eq!(out.trim(), format!("job/{short} released (pending)"));
    let c = claim(&fleet, "w1").expect("the released job is claimable");
    assert_eq!(c.job.id, held.id);
    assert_eq!(fleet.job(&held.id).unwrap().status, JobStatus::Claimed);
}

#[test]
fn get_one_job_in_every_format_and_describe_as_data() {
    let (fleet, jobs) = start();
    let job = &jobs[0];
    let short = job.id.short();

    let table = ok(fleet.ctl(&["get", "job", short]).unwrap());
    assert_eq!(table.lines().count(), 2, "{table}");
    assert!(table.lines().nth(1).unwrap().starts_with(short), "{table}");
    let wide = ok(fleet.ctl(&["get", "job", short, "-o", "wide"]).unwrap());
    assert!(
        wide.lines().next().unwrap().contains("CONSTRAINTS"),
        "{wide}"
    );
    let name = ok(fleet.ctl(&["get", "job", short, "-o", "name"]).unwrap());
    assert_eq!(name.trim(), format!("job/{}", job.id));
    // JSON and YAML: the job itself (not a list), with its events.
    let json: JobView = serde_json::from_str(&ok(fleet
        .ctl(&["get", "job", short, "-o", "json"])
        .unwrap()))
    .unwrap();
    assert_eq!(json.id, job.id);
    assert_eq!(json.events[0].kind, "Created");
    let yaml: JobView = serde_yaml_ng::from_str(&ok(fleet
        .ctl(&["get", "job", short, "-o", "yaml"])
        .unwrap()))
    .unwrap();
    assert_eq!(yaml.id, job.id);
    let err = refused(fleet.ctl(&["get", "job", "ffffffff"]).unwrap());
    assert!(err.contains("not found") || err.contains("no job"), "{err}");

    let described: serde_json::Value = serde_json::from_str(&ok(fleet
        .ctl(&["describe", "job", short, "-o", "json"])
        .unwrap()))
    .unwrap();
    assert_eq!(described["job"]["id"], job.id.as_str());
    assert!(described["explain"]["summary"].is_string(), "{described}");

    claim(&fleet, "w1").unwrap();
    let described: serde_yaml_ng::Value = serde_yaml_ng::from_str(&ok(fleet
        .ctl(&["describe", "worker", "w1", "-o", "yaml"])
        .unwrap()))
    .unwrap();
    assert_eq!(described["worker"]["name"].as_str(), Some("w1"));
    assert_eq!(described["jobs"].as_sequence().unwrap().len(), 1);
    let kinds: Vec<&str> = described["events"]
        .as_sequence()
        .unwrap()
        .iter()
        .filter_map(|e| e["kind"].as_str())
        .collect();
    assert!(kinds.contains(&"Claimed"), "{kinds:?}");
}

/// `cis490ctl ARGS` in the background, its stdout lines collected as they come.
struct Follower {
    _process: ChildGuard,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Follower {
    fn start(fleet: &Fleet, args: &[&str]) -> Self {
        let mut cmd = fleet.ctl_command(args).unwrap();
        cmd.stdout(Stdio::piped()).stderr(Stdio::null());
        let mut process = ChildGuard::spawn("cis490ctl follower", cmd).unwrap();
        let stdout = process.child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self {
            _process: process,
            lines,
            seen: Vec::new(),
        }
    }

    /// Waits for `n` lines in all, and returns them.
    fn wait_lines(&mut self, n: usize, what: &str) -> Vec<String> {
        wait_until(WAIT, what, || {
            while let Ok(l) = self.lines.try_recv() {
                self.seen.push(l);
            }
            (self.seen.len() >= n).then(|| self.seen.clone())
        })
        .unwrap_or_else(|e| panic!("{e:#}; seen {:?}", self.seen))
    }

    /// Waits for a line after the first `from` that contains `text`.
    fn wait_for(&mut self, from: usize, text: &str) -> String {
        wait_until(WAIT, text, || {
            while let Ok(l) = self.lines.try_recv() {
                self.seen.push(l);
            }
            self.seen
                .get(from..)?
                .iter()
                .find(|l| l.contains(text))
                .cloned()
        })
        .unwrap_or_else(|e| panic!("{e:#}; seen {:?}", self.seen))
    }
}

#[test]
fn get_events_filters_by_job_and_worker_on_the_server_and_follows() {
    let (fleet, jobs) = start();
    let c = claim(&fleet, "w1").unwrap();
    let other = jobs.iter().find(|j| j.id != c.job.id).unwrap();
    let short = c.job.id.short();

    let of_job: Vec<Event> = serde_json::from_str(&ok(fleet
        .ctl(&["get", "events", "--job", short, "-o", "json"])
        .unwrap()))
    .unwrap();
    let kinds: Vec<&str> = of_job.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(kinds, ["Created", "Claimed"]);
    let of_worker: Vec<Event> = serde_json::from_str(&ok(fleet
        .ctl(&["get", "events", "--worker", "w1", "-o", "json"])
        .unwrap()))
    .unwrap();
    assert!(!of_worker.is_empty());
    assert!(of_worker
        .iter()
        .all(|e| e.worker.as_ref().map(|w| w.as_str()) == Some("w1")));
    let all: Vec<Event> =
        serde_json::from_str(&ok(fleet.ctl(&["get", "events", "-o", "json"]).unwrap())).unwrap();
    assert!(all.len() > of_job.len() + 1, "{all:?}");
    let table = ok(fleet.ctl(&["get", "events", "--job", short]).unwrap());
    assert_eq!(
        table
            .lines()
            .next()
            .unwrap()
            .split_whitespace()
            .collect::<Vec<_>>(),
        ["AGE", "KIND", "JOB", "WORKER", "MESSAGE"]
    );
    assert_eq!(table.lines().count(), 3, "{table}");

    // A bad filter is the server's 400, named.
    let err = refused(
        fleet
            .ctl(&["get", "events", "--worker", "bad name!"])
            .unwrap(),
    );
    assert!(err.contains("worker"), "{err}");

    // -w: a new event of the job is printed; the other job's is not.
    let mut follower = Follower::start(&fleet, &["get", "events", "--job", short, "-w"]);
    let listed = follower
        .wait_lines(3, "the job's two events and the header")
        .len();
    ok(fleet.ctl(&["hold", other.id.short()]).unwrap());
    ok(fleet.ctl(&["cancel", short]).unwrap());
    let line = follower.wait_for(listed, "Cancelled");
    assert!(line.contains(short), "{line}");
    assert!(
        !follower.seen.iter().any(|l| l.contains("Held")),
        "another job's event was printed: {:?}",
        follower.seen
    );
}

#[test]
fn get_workers_watch_prints_a_line_when_a_worker_changes() {
    let (fleet, _) = start();
    claim(&fleet, "w1").unwrap();
    let mut follower = Follower::start(&fleet, &["get", "workers", "-w"]);
    let listed = follower.wait_lines(2, "the header and worker w1").len();
    ok(fleet.ctl(&["cordon", "w1"]).unwrap());
    let line = follower.wait_for(listed, "Cordoned");
    assert!(line.starts_with("w1"), "{line}");
}

#[test]
fn label_selectors_with_several_terms_and_not_equals() {
    let (fleet, jobs) = start();
    let names = |args: &[&str]| -> Vec<String> {
        let mut all = vec!["get", "jobs", "-o", "name"];
        all.extend_from_slice(args);
        let mut out: Vec<String> = ok(fleet.ctl(&all).unwrap())
            .lines()
            .map(str::to_string)
            .collect();
        out.sort();
        out
    };
    let expect = |pick: &dyn Fn(&JobView) -> bool| -> Vec<String> {
        let mut out: Vec<String> = jobs
            .iter()
            .filter(|j| pick(j))
            .map(|j| format!("job/{}", j.id))
            .collect();
        out.sort();
        out
    };
    let label = |j: &JobView, k: &str| j.labels.get(k).cloned().unwrap_or_default();
    assert_eq!(
        names(&["-l", "team=a,gpu!=none"]),
        expect(&|j| label(j, "team") == "a" && label(j, "gpu") != "none")
    );
    // Repeated -l ANDs.
    assert_eq!(
        names(&["-l", "gpu=small", "-l", "team!=a"]),
        expect(&|j| label(j, "gpu") == "small" && label(j, "team") != "a")
    );
    assert_eq!(names(&["-l", "!gpu"]), Vec::<String>::new());

    // A bad term: cis490ctl names it before asking, and the server's 400 names it too.
    let err = refused(fleet.ctl(&["get", "jobs", "-l", "team=a,gpu="]).unwrap());
    assert!(err.contains("\"gpu=\""), "{err}");
    let filter = cis490_api::JobFilter {
        label: Some("team=a,=x".into()),
        ..cis490_api::JobFilter::default()
    };
    let err = fleet.rt.block_on(fleet.client.jobs(&filter)).unwrap_err();
    assert_eq!(err.code(), Some("bad_request"), "{err}");
    assert!(err.to_string().contains("\"=x\""), "{err}");
}

#[test]
fn delete_worker_forgets_a_worker_without_leases_and_refuses_one_with() {
    let (fleet, _) = start();
    let c = claim(&fleet, "busy").unwrap();
    let req = ClaimRequest {
        worker: WorkerName::parse("idle").unwrap(),
        capability: capability("idle"),
    };
    fleet
        .rt
        .block_on(fleet.client.report_node(&req.worker, &req.capability))
        .unwrap();

    let err = refused(fleet.ctl(&["delete", "worker", "busy"]).unwrap());
    assert!(err.contains("holds the lease"), "{err}");
    assert!(err.contains(c.job.id.short()), "{err}");

    let out = ok(fleet.ctl(&["delete", "node", "idle"]).unwrap());
    assert_eq!(out.trim(), "worker/idle deleted");
    let names = ok(fleet.ctl(&["get", "workers", "-o", "name"]).unwrap());
    assert_eq!(names.trim(), "worker/busy");
    let err = refused(fleet.ctl(&["delete", "worker", "idle"]).unwrap());
    assert!(
        err.contains("not found") || err.contains("no worker"),
        "{err}"
    );

    // Without the operator token: refused before any request.
    let mut cmd = fleet.ctl_command(&["delete", "worker", "busy"]).unwrap();
    cmd.env_remove("CIS490_OPERATOR_TOKEN");
    let err = refused(cmd.output().unwrap());
    assert!(err.contains("CIS490_OPERATOR_TOKEN"), "{err}");
}

#[test]
fn apply_writes_a_valid_manifest_and_applies_it_and_refuses_an_invalid_one() {
    let (fleet, _) = start();
    let manifest = fleet.path("manifest.toml");
    let grown = format!("{MANIFEST}\n[[jobs]]\nmodel = \"mlp\"\nmode = \"oracle\"\nseed = 4\n");
    let file = fleet.path("work/new.toml");
    std::fs::write(&file, &grown).unwrap();
    let file_arg = file.to_str().unwrap();

    // --dry-run: the diff, nothing written.
    let dry = ok(fleet.ctl(&["apply", "-f", file_arg, "--dry-run"]).unwrap());
    assert!(dry.contains("+ create"), "{dry}");
    assert_eq!(std::fs::read_to_string(&manifest).unwrap(), MANIFEST);
    assert_eq!(fleet.jobs().len(), 3);

    // stdin is not a terminal: no prompt, written and applied.
    let out = ok(fleet.ctl(&["apply", "-f", file_arg]).unwrap());
    assert!(out.contains("+ create"), "{out}");
    assert!(out.contains("manifest written and applied"), "{out}");
    assert_eq!(std::fs::read_to_string(&manifest).unwrap(), grown);
    assert_eq!(fleet.jobs().len(), 4, "applied before the answer");
    let leftovers: Vec<_> = std::fs::read_dir(fleet.dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // An invalid manifest: its errors, and the server's file stays as it was.
    std::fs::write(&file, "version = 1\n[[jobs]]\nmodel = 3\n").unwrap();
    let err = refused(fleet.ctl(&["apply", "-f", file_arg, "-y"]).unwrap());
    assert!(err.contains("new.toml"), "{err}");
    assert_eq!(std::fs::read_to_string(&manifest).unwrap(), grown);
    // The route itself validates too (a client that skips the diff).
    let put = fleet.rt.block_on(
        fleet
            .client
            .put_manifest("version = 1\n[[jobs]]\nmodel = 3\n".into(), "x.toml"),
    );
    assert_eq!(put.unwrap_err().code(), Some("invalid_manifest"));
    assert_eq!(std::fs::read_to_string(&manifest).unwrap(), grown);
}

#[test]
fn apply_is_refused_when_the_server_disallows_manifest_writes() {
    let mut fleet = Fleet::prepare(MANIFEST).unwrap();
    let config = fleet.path("server.toml");
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str("allow_manifest_writes = false\n");
    std::fs::write(&config, text).unwrap();
    fleet.start_server("127.0.0.1:0").unwrap();
    fleet.wait_jobs(3).unwrap();
    let file = fleet.path("work/new.toml");
    std::fs::write(&file, MANIFEST.replace("seed = 3", "seed = 30")).unwrap();
    let err = refused(
        fleet
            .ctl(&["apply", "-f", file.to_str().unwrap(), "-y"])
            .unwrap(),
    );
    assert!(err.contains("allow_manifest_writes"), "{err}");
    assert_eq!(
        std::fs::read_to_string(fleet.path("manifest.toml")).unwrap(),
        MANIFEST
    );
    // diff and reload still work.
    ok(fleet.ctl(&["diff", "-f", file.to_str().unwrap()]).unwrap());
    ok(fleet.ctl(&["apply"]).unwrap());
}

#[test]
fn contexts_of_the_client_config_file_and_flags_and_env_win() {
    let (fleet, jobs) = start();
    let url = fleet.url().unwrap();
    let dir = fleet.path("work/config");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("lab.token"),
        format!("{}\n", cis490_tests::fleet::OPERATOR_TOKEN),
    )
    .unwrap();
    let config = dir.join("config.toml");
    std::fs::write(
        &config,
        format!(
            "# two fleets\ncurrent_context = \"gone\"\n\n[contexts.gone]\nserver = \"http://127.0.0.1:9\"\n\n[contexts.lab]\nserver = \"{url}\"\noperator_token_file = \"lab.token\"\n"
        ),
    )
    .unwrap();
    // Only the config file says where the server is and what the token is.
    let ctl = |args: &[&str], envs: &[(&str, &str)]| {
        let mut cmd = fleet.ctl_command(args).unwrap();
        cmd.env_remove("CIS490_SERVER")
            .env_remove("CIS490_OPERATOR_TOKEN")
            .env("CIS490_CONFIG", &config);
        for (k, v) in envs {
            cmd.env(k, v);
        }
        cmd.output().unwrap()
    };

    let listed = ok(ctl(&["config", "get-contexts"], &[]));
    let rows: Vec<Vec<&str>> = listed
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(rows[0], ["CURRENT", "NAME", "SERVER", "CA"]);
    assert_eq!(rows[1][..2], ["*", "gone"]);
    assert_eq!(rows[2][..2], ["lab", url.as_str()]);
    assert_eq!(ok(ctl(&["config", "current-context"], &[])).trim(), "gone");
    refused(ctl(&["get", "jobs"], &[]));
    // --context picks another one for one command.
    ok(ctl(&["--context", "lab", "get", "jobs"], &[]));

    let err = refused(ctl(&["config", "use-context", "nope"], &[]));
    assert!(err.contains("lab"), "{err}");
    assert_eq!(
        ok(ctl(&["config", "use-context", "lab"], &[])).trim(),
        "Switched to context \"lab\"."
    );
    let text = std::fs::read_to_string(&config).unwrap();
    assert!(
        text.starts_with("# two fleets\ncurrent_context = \"lab\"\n"),
        "{text}"
    );
    assert_eq!(ok(ctl(&["config", "current-context"], &[])).trim(), "lab");

    // The context's server and operator token file are used.
    let names = ok(ctl(&["get", "jobs", "-o", "name"], &[]));
    assert_eq!(names.lines().count(), 3, "{names}");
    let short = jobs[0].id.short();
    ok(ctl(&["hold", short], &[]));
    // Flags and environment variables win over the context.
    refused(ctl(&["--server", "http://127.0.0.1:9", "get", "jobs"], &[]));
    refused(ctl(
        &["get", "jobs"],
        &[("CIS490_SERVER", "http://127.0.0.1:9")],
    ));
    let err = refused(ctl(
        &["release", short],
        &[("CIS490_OPERATOR_TOKEN", "wrong")],
    ));
    assert!(
        err.contains("403") || err.to_lowercase().contains("forbidden"),
        "{err}"
    );
    ok(ctl(&["release", short], &[]));
}
