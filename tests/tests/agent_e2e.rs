//! Black-box tests of `cis490-agent run` against the real `cis490-reconciler serve`, with
//! small shell trainers written by each test (Unix: the trainers are `sh` scripts and the
//! checks look at process groups).
#![cfg(unix)]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use cis490_api::{Client, IdPrefix, JobFilter, JobStatus, JobView, WorkerName};
use cis490_tests::{bin, sha256_file, wait_until, ChildGuard, Reconciler};

const OPERATOR_TOKEN: &str = "e2e-operator-token";
/// Generous: the machine is shared and noisy; every wait is a poll that ends early.
const WAIT: Duration = Duration::from_secs(60);

/// A reconciler with its manifest, and the agents a test starts, in one temp dir.
struct Fleet {
    dir: tempfile::TempDir,
    rt: tokio::runtime::Runtime,
    server: Option<Reconciler>,
    /// The server's URL; stays valid while the server is down between restarts.
    url: String,
    client: Client,
    agents: Vec<ChildGuard>,
}

impl Fleet {
    /// Writes `manifest` (TOML) and `train.sh`, starts the server.
    fn start(manifest: &str, trainer: &str) -> Fleet {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("work")).unwrap();
        std::fs::create_dir_all(dir.path().join("server-state")).unwrap();
        std::fs::write(dir.path().join("manifest.toml"), manifest).unwrap();
        std::fs::write(dir.path().join("work/train.sh"), trainer).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let mut fleet = Fleet {
            client: Client::new("http://127.0.0.1:9").unwrap(),
            dir,
            rt,
            server: None,
            url: String::new(),
            agents: Vec::new(),
        };
        fleet.start_server("127.0.0.1:0");
        fleet
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn start_server(&mut self, listen: &str) {
        let manifest = self.path("manifest.toml");
        let state = self.path("server-state");
        let log = self.path(&format!("server-{}.log", self.agents.len()));
        let server = Reconciler::start_on(
            listen,
            &[
                "--manifest",
                manifest.to_str().unwrap(),
                "--state-dir",
                state.to_str().unwrap(),
            ],
            &[("CIS490_OPERATOR_TOKEN", OPERATOR_TOKEN)],
            &log,
        )
        .unwrap();
        self.client = Client::new(&server.url)
            .unwrap()
            .with_operator_token(Some(OPERATOR_TOKEN.into()));
        self.url = server.url.clone();
        self.server = Some(server);
    }

    /// Starts `cis490-agent run` named `name` with extra flags; its stderr goes to
    /// `<name>.log`.
    fn start_agent(&mut self, name: &str, extra: &[&str]) -> usize {
        let url = self.url.clone();
        let mut cmd = Command::new(bin("cis490-agent").unwrap());
        cmd.arg("run")
            .args(["--server", &url, "--name", name])
            .arg("--work-dir")
            .arg(self.path("work"))
            .arg("--state-dir")
            .arg(self.path(&format!("agent-{name}")))
            .args(extra);
        // Fast defaults, unless the test sets the flag itself.
        for (flag, value) in [
            ("--heartbeat-s", "1"),
            ("--grace-s", "2"),
            ("--claim-wait-s", "2"),
        ] {
            if !extra.contains(&flag) {
                cmd.args([flag, value]);
            }
        }
        cmd.env_remove("CIS490_SERVER")
            .env_remove("CIS490_WORKER_TOKEN")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(self.path(&format!("{name}.log"))).unwrap());
        self.agents.push(ChildGuard::spawn(name, cmd).unwrap());
        self.agents.len() - 1
    }

    fn agent_log(&self, name: &str) -> String {
        std::fs::read_to_string(self.path(&format!("{name}.log"))).unwrap_or_default()
    }

    fn jobs(&self) -> Vec<JobView> {
        self.rt
            .block_on(self.client.jobs(&JobFilter::default()))
            .unwrap_or_default()
    }

    fn job(&self, id: &cis490_api::JobId) -> JobView {
        let prefix = IdPrefix::parse(id.as_str()).unwrap();
        self.rt.block_on(self.client.job(&prefix)).unwrap()
    }

    /// Waits until the manifest's jobs are in the queue and returns them.
    fn wait_jobs(&self, n: usize) -> Vec<JobView> {
        wait_until(WAIT, &format!("{n} jobs in the queue"), || {
            let jobs = self.jobs();
            (jobs.len() == n).then_some(jobs)
        })
        .unwrap()
    }

    /// Waits until job `id` is in `status`, and returns it.
    fn wait_status(&self, id: &cis490_api::JobId, status: JobStatus) -> JobView {
        let what = format!("job {} to be {status}", id.short());
        wait_until(WAIT, &what, || {
            let job = self.job(id);
            (job.status == status).then_some(job)
        })
        .unwrap_or_else(|e| panic!("{e}; last seen: {:?}", self.job(id).status))
    }
}

fn manifest(defaults_extra: &str, jobs: &str) -> String {
    format!(
        "version = 1\n\n[defaults]\nmax_attempts = 3\nstale_after_s = 60\ncommand = [\"sh\", \"train.sh\"]\n{defaults_extra}\n\n[models.m]\nhyper = {{ lr = \"float\" }}\n\n{jobs}"
    )
}

/// Whether a process exists and is not a zombie.
fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit(')')
            .next()
            .is_some_and(|rest| rest.trim_start().starts_with('Z')),
        Err(_) if Path::new("/proc/self").exists() => false,
        Err(_) => Command::new("kill")
            .args(["-0", &pid.to_string()])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success()),
    }
}

/// A trainer that ignores SIGTERM, starts a child, writes both pids to
/// `work/pids-<job id>`, and waits forever.
const STUBBORN: &str = "#!/bin/sh\ntrap '' TERM\nsleep 300 &\necho \"$$ $!\" > \"pids-$CIS490_JOB_ID\"\necho running\nwait\n";

fn trainer_pids(fleet: &Fleet, id: &cis490_api::JobId) -> (i32, i32) {
    let path = fleet.path(&format!("work/pids-{id}"));
    wait_until(WAIT, "the trainer to write its pids", || {
        let text = std::fs::read_to_string(&path).ok()?;
        let mut it = text.split_whitespace().map(|p| p.parse::<i32>().ok());
        Some((it.next()??, it.next()??))
    })
    .unwrap()
}

#[test]
fn job_completes_and_its_artifact_matches_the_trainers_output() {
    let trainer = "#!/bin/sh\nset -e\necho \"args: $*\" > \"$CIS490_OUTPUT_DIR/model.txt\"\necho \"$CIS490_MODEL $CIS490_MODE seed=$CIS490_SEED attempt=$CIS490_ATTEMPT\" >> \"$CIS490_OUTPUT_DIR/model.txt\"\nmkdir \"$CIS490_OUTPUT_DIR/sub\"\nhead -c 100000 /dev/urandom > \"$CIS490_OUTPUT_DIR/sub/weights.bin\"\ncp \"$CIS490_OUTPUT_DIR/sub/weights.bin\" \"weights-$CIS490_JOB_ID.bin\"\necho trained\n";
    let mut fleet = Fleet::start(
        &manifest(
            "",
            "[[jobs]]\nmodel = \"m\"\nmode = \"ok\"\nseed = 5\nhyper = { lr = 0.25 }\n",
        ),
        trainer,
    );
    let id = fleet.wait_jobs(1)[0].id.clone();
    fleet.start_agent("solo", &[]);
    let job = fleet.wait_status(&id, JobStatus::Completed);
    assert_eq!(job.worker.as_ref().map(WorkerName::as_str), Some("solo"));
    let artifact = job.artifact_id.expect("a completed job has an artifact");

    // Download the bundle: its sha256 is the artifact ID, its files are the trainer's.
    let bundle = fleet.path("bundle.tar.zst");
    let bytes = fleet
        .rt
        .block_on(async {
            let resp = fleet.client.download(&artifact).await?;
            Ok::<_, anyhow::Error>(resp.bytes().await?)
        })
        .unwrap();
    std::fs::write(&bundle, &bytes).unwrap();
    assert_eq!(sha256_file(&bundle).unwrap(), artifact.as_str());
    let out = fleet.path("unpacked");
    cis490_agent::pack::unpack(&bundle, &out).unwrap();
    let model = std::fs::read_to_string(out.join("model.txt")).unwrap();
    assert_eq!(model, "args: --lr 0.25\nm ok seed=5 attempt=1\n");
    assert_eq!(
        std::fs::read(out.join("sub/weights.bin")).unwrap(),
        std::fs::read(fleet.path(&format!("work/weights-{id}.bin"))).unwrap()
    );
}

#[test]
fn trainer_exit_3_fails_the_job_with_the_code_and_last_stderr_line() {
    let trainer =
        "#!/bin/sh\necho 'loading data'\necho 'KeyError: column \"label\" not found' >&2\nexit 3\n";
    let mut fleet = Fleet::start(
        &manifest("", "[[jobs]]\nmodel = \"m\"\nmode = \"bad\"\nseed = 1\n"),
        trainer,
    );
    let id = fleet.wait_jobs(1)[0].id.clone();
    fleet.start_agent("failing", &[]);
    let job = fleet.wait_status(&id, JobStatus::Failed);
    let error = job.error.expect("a failed job carries its error");
    assert_eq!(error.exit_code, Some(3));
    let tail = error.log_tail.or(job.log_tail).unwrap_or_default();
    assert!(
        tail.contains("KeyError: column \"label\" not found"),
        "log tail: {tail:?}"
    );
    assert!(error.reason.contains("3"), "reason: {}", error.reason);
}

#[test]
fn cancelled_jobs_trainer_and_its_child_are_stopped() {
    let mut fleet = Fleet::start(
        &manifest("", "[[jobs]]\nmodel = \"m\"\nmode = \"long\"\nseed = 1\n"),
        STUBBORN,
    );
    let id = fleet.wait_jobs(1)[0].id.clone();
    fleet.start_agent("canceller", &[]);
    let (leader, child) = trainer_pids(&fleet, &id);
    // The log tail rides on heartbeats, so a running job's output is visible.
    wait_until(WAIT, "the running job's log tail", || {
        let job = fleet.job(&id);
        (job.status == JobStatus::Running
            && job
                .log_tail
                .as_deref()
                .is_some_and(|t| t.contains("running")))
        .then_some(())
    })
    .unwrap();
    assert!(alive(leader) && alive(child));
    let prefix = IdPrefix::parse(id.short()).unwrap();
    fleet.rt.block_on(fleet.client.cancel(&prefix)).unwrap();
    // The trainer ignores SIGTERM: only the SIGKILL after the 2 s grace ends it.
    wait_until(WAIT, "trainer and child to be gone", || {
        (!alive(leader) && !alive(child)).then_some(())
    })
    .unwrap();
    assert_eq!(fleet.job(&id).status, JobStatus::Cancelled);
    assert!(
        fleet.agents[0].child.try_wait().unwrap().is_none(),
        "agent died"
    );
}

#[test]
fn sigterm_to_the_agent_releases_its_job_and_stops_the_trainer() {
    let mut fleet = Fleet::start(
        &manifest("", "[[jobs]]\nmodel = \"m\"\nmode = \"long\"\nseed = 2\n"),
        STUBBORN,
    );
    let id = fleet.wait_jobs(1)[0].id.clone();
    let agent = fleet.start_agent("stopping", &[]);
    let (leader, child) = trainer_pids(&fleet, &id);
    let running = fleet.wait_status(&id, JobStatus::Running);
    fleet.agents[agent].signal("TERM").unwrap();
    let status = fleet.agents[agent]
        .wait_exit(Duration::from_secs(30))
        .unwrap();
    assert!(
        status.success(),
        "agent exit: {status:?}\n{}",
        fleet.agent_log("stopping")
    );
    // SIGKILL was sent before the agent exited; the processes are gone a moment later.
    wait_until(WAIT, "the trainer tree to be gone", || {
        (!alive(leader) && !alive(child)).then_some(())
    })
    .unwrap();
    let job = fleet.job(&id);
    assert_eq!(job.status, JobStatus::Pending, "{job:?}");
    // Released, not failed: the attempt is not used up.
    assert!(
        job.attempts <= running.attempts,
        "{} > {}",
        job.attempts,
        running.attempts
    );
    assert!(fleet.jobs().iter().all(|j| !j.status.is_leased()));
}

#[test]
fn cuda_jobs_go_only_to_an_agent_advertising_a_gpu() {
    let trainer = "#!/bin/sh\necho \"$CIS490_MODE cuda=${CUDA_VISIBLE_DEVICES:-none}\" > \"$CIS490_OUTPUT_DIR/o.txt\"\n";
    let jobs = "[[jobs]]\nmodel = \"m\"\nmode = \"gpu\"\nseed = 1\nrequire_cuda = true\nmin_vram_gib = 16\n\n[[jobs]]\nmodel = \"m\"\nmode = \"cpu\"\nseed = 1\n";
    let mut fleet = Fleet::start(&manifest("", jobs), trainer);
    let all = fleet.wait_jobs(2);
    let gpu_job = all.iter().find(|j| j.mode == "gpu").unwrap().id.clone();
    let cpu_job = all.iter().find(|j| j.mode == "cpu").unwrap().id.clone();
    fleet.start_agent("cpu-only", &["--advertise", "cuda=false"]);
    fleet.wait_status(&cpu_job, JobStatus::Completed);
    // The CPU agent keeps claiming: wait until it has finished its job and reported itself
    // idle, then check the GPU job was left alone.
    wait_until(WAIT, "the cpu agent to finish its job", || {
        fleet
            .agent_log("cpu-only")
            .contains("job ended")
            .then_some(())
    })
    .unwrap();
    wait_until(WAIT, "the cpu agent to report node status again", || {
        let w = fleet.rt.block_on(fleet.client.workers()).ok()?;
        w.iter()
            .any(|w| w.name.as_str() == "cpu-only" && w.running_jobs.is_empty())
            .then_some(())
    })
    .unwrap();
    assert_eq!(fleet.job(&gpu_job).status, JobStatus::Pending);
    fleet.start_agent("gpu-box", &["--advertise", "cuda=true,vram_gib=24"]);
    let job = fleet.wait_status(&gpu_job, JobStatus::Completed);
    assert_eq!(job.worker.as_ref().map(WorkerName::as_str), Some("gpu-box"));
    assert!(!fleet.agent_log("cpu-only").contains(gpu_job.short()));
}

#[test]
fn two_agents_with_two_slots_each_run_every_one_of_20_jobs_once() {
    let trainer = "#!/bin/sh\necho \"$CIS490_JOB_ID\" >> runs.log\nsleep 0.2\necho ok > \"$CIS490_OUTPUT_DIR/o.txt\"\n";
    let seeds: Vec<String> = (1..=20).map(|s| s.to_string()).collect();
    let jobs = format!(
        "[[jobs]]\nmodel = \"m\"\nmode = \"many\"\nmatrix = {{ seed = [{}] }}\n",
        seeds.join(", ")
    );
    let mut fleet = Fleet::start(&manifest("", &jobs), trainer);
    let all = fleet.wait_jobs(20);
    fleet.start_agent("a1", &["--max-concurrent", "2"]);
    fleet.start_agent("a2", &["--max-concurrent", "2"]);
    wait_until(WAIT * 3, "all 20 jobs completed", || {
        let jobs = fleet.jobs();
        jobs.iter()
            .all(|j| j.status == JobStatus::Completed)
            .then_some(())
    })
    .unwrap();
    let runs = std::fs::read_to_string(fleet.path("work/runs.log")).unwrap();
    let lines: Vec<&str> = runs.lines().collect();
    let distinct: BTreeSet<&str> = lines.iter().copied().collect();
    assert_eq!(lines.len(), 20, "some job ran twice:\n{runs}");
    let expected: BTreeSet<&str> = all.iter().map(|j| j.id.as_str()).collect();
    assert_eq!(distinct, expected);
    assert!(fleet.jobs().iter().all(|j| j.attempts == 1));
}

#[test]
fn job_survives_the_server_being_killed_and_restarted_mid_job() {
    // The trainer runs until the test creates `work/go`.
    let trainer = "#!/bin/sh\nwhile [ ! -e go ]; do sleep 0.1; done\necho survived > \"$CIS490_OUTPUT_DIR/o.txt\"\n";
    let mut fleet = Fleet::start(
        &manifest(
            "",
            "[[jobs]]\nmodel = \"m\"\nmode = \"restart\"\nseed = 1\n",
        ),
        trainer,
    );
    let id = fleet.wait_jobs(1)[0].id.clone();
    fleet.start_agent("steady", &[]);
    fleet.wait_status(&id, JobStatus::Running);
    let addr = fleet.server.as_ref().unwrap().addr().to_string();
    fleet.server.take().unwrap().process.kill_now();
    wait_until(WAIT, "the agent to notice the server is gone", || {
        fleet
            .agent_log("steady")
            .contains("heartbeat failed")
            .then_some(())
    })
    .unwrap();
    fleet.start_server(&addr);
    std::fs::write(fleet.path("work/go"), b"").unwrap();
    let job = fleet.wait_status(&id, JobStatus::Completed);
    assert!(job.artifact_id.is_some());
    assert_eq!(job.attempts, 1);
}

#[test]
fn a_second_sigint_kills_the_trainers_and_exits_at_once() {
    let mut fleet = Fleet::start(
        &manifest("", "[[jobs]]\nmodel = \"m\"\nmode = \"long\"\nseed = 3\n"),
        STUBBORN,
    );
    let id = fleet.wait_jobs(1)[0].id.clone();
    // A grace period far longer than the wait below: only the second SIGINT can end it.
    let agent = fleet.start_agent("impatient", &["--grace-s", "600"]);
    let (leader, child) = trainer_pids(&fleet, &id);
    fleet.wait_status(&id, JobStatus::Running);
    fleet.agents[agent].signal("INT").unwrap();
    wait_until(WAIT, "the agent to start shutting down", || {
        fleet
            .agent_log("impatient")
            .contains("shutting down")
            .then_some(())
    })
    .unwrap();
    fleet.agents[agent].signal("INT").unwrap();
    let status = fleet.agents[agent]
        .wait_exit(Duration::from_secs(30))
        .unwrap();
    assert!(!status.success());
    wait_until(WAIT, "trainer and child to be gone", || {
        (!alive(leader) && !alive(child)).then_some(())
    })
    .unwrap();
}

#[test]
fn agent_started_before_the_server_waits_for_it_then_runs_the_job() {
    let trainer = "#!/bin/sh\necho late > \"$CIS490_OUTPUT_DIR/o.txt\"\n";
    let mut fleet = Fleet::start(
        &manifest("", "[[jobs]]\nmodel = \"m\"\nmode = \"late\"\nseed = 1\n"),
        trainer,
    );
    let id = fleet.wait_jobs(1)[0].id.clone();
    let addr = fleet.server.as_ref().unwrap().addr().to_string();
    fleet.server.take().unwrap().process.kill_now();
    fleet.start_agent("early", &[]);
    wait_until(WAIT, "the agent to find no server", || {
        fleet
            .agent_log("early")
            .contains("cannot report node status")
            .then_some(())
    })
    .unwrap();
    fleet.start_server(&addr);
    let job = fleet.wait_status(&id, JobStatus::Completed);
    assert_eq!(job.worker.as_ref().map(WorkerName::as_str), Some("early"));
}

#[test]
fn capability_self_test_prints_json_and_refuses_a_missing_work_dir() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(bin("cis490-agent").unwrap())
        .args([
            "capability",
            "-o",
            "json",
            "--advertise",
            "cuda=true,vram_gib=24,ram_gib=8",
        ])
        .arg("--work-dir")
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cap: cis490_api::Capability = serde_json::from_slice(&out.stdout).unwrap();
    assert!(cap.cuda);
    assert_eq!(cap.gpus.len(), 1);
    assert_eq!(cap.gpus[0].vram_allocatable_mib, 24 * 1024);
    assert_eq!(cap.ram_allocatable_mib, 8 * 1024);
    assert_eq!(cap.agent_version, cis490_api::VERSION);

    let missing = dir.path().join("no-such-dir");
    let out = Command::new(bin("cis490-agent").unwrap())
        .arg("capability")
        .arg("--work-dir")
        .arg(&missing)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("work dir") && stderr.contains("no-such-dir"),
        "{stderr}"
    );

    // VRAM for no GPU is refused; more RAM than the host has is said, and still advertised.
    let capability = |advertise: &str| {
        Command::new(bin("cis490-agent").unwrap())
            .args(["capability", "-o", "json", "--advertise", advertise])
            .arg("--work-dir")
            .arg(dir.path())
            .output()
            .unwrap()
    };
    let out = capability("cuda=false,vram_gib=8");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("vram_gib=8") && stderr.contains("no GPU"),
        "{stderr}"
    );
    let out = capability("ram_gib=99999");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("ram_gib=99999 is more than this host's"),
        "{stderr}"
    );
}

#[test]
fn the_example_trainer_runs_through_the_agent_with_its_hyperparameters() {
    let trainer = cis490_tests::workspace_root().join("etc/examples/trainer.py");
    let manifest = format!(
        "version = 1\n\n[defaults]\nmax_attempts = 1\nstale_after_s = 60\ncommand = [\"python3\", {:?}]\n\n\
         [models.gbt]\nhyper = {{ n_estimators = \"int\", max_depth = \"int\", learning_rate = \"float\" }}\n\n\
         [[jobs]]\nmodel = \"gbt\"\nmode = \"oracle\"\nseed = 4\nsplit_recipe = \"by_subject\"\n\
         hyper = {{ n_estimators = 5, max_depth = 2, learning_rate = 0.3 }}\n",
        trainer.display().to_string()
    );
    let mut fleet = Fleet::start(&manifest, "");
    let id = fleet.wait_jobs(1)[0].id.clone();
    fleet.start_agent("example", &[]);
    let job = fleet.wait_status(&id, JobStatus::Completed);
    let artifact = job.artifact_id.expect("artifact");
    let bytes = fleet
        .rt
        .block_on(async {
            let resp = fleet.client.download(&artifact).await?;
            Ok::<_, anyhow::Error>(resp.bytes().await?)
        })
        .unwrap();
    let bundle = fleet.path("example.tar.zst");
    std::fs::write(&bundle, &bytes).unwrap();
    let out = fleet.path("example-out");
    cis490_agent::pack::unpack(&bundle, &out).unwrap();
    let run: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("run.json")).unwrap()).unwrap();
    assert_eq!(run["hyper"]["n_estimators"], 5);
    assert_eq!(run["hyper"]["max_depth"], 2);
    let metrics: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("metrics.json")).unwrap()).unwrap();
    assert_eq!(metrics["seed"], 4);
    assert_eq!(metrics["split_recipe"], "by_subject");
    assert!(out.join("model.json").exists());
}

#[test]
fn gpu_sharing_by_vram_runs_two_declared_jobs_on_one_gpu_at_once() {
    let trainer = "#!/bin/sh\necho \"$CUDA_VISIBLE_DEVICES\" > \"gpu-$CIS490_JOB_ID\"\nwhile [ ! -e go ]; do sleep 0.05; done\necho ok > \"$CIS490_OUTPUT_DIR/o.txt\"\n";
    let jobs = "[[jobs]]\nmodel = \"m\"\nmode = \"share\"\nrequire_cuda = true\nmin_vram_gib = 10\nmatrix = { seed = [1, 2] }\n";
    let mut fleet = Fleet::start(&manifest("", jobs), trainer);
    let all = fleet.wait_jobs(2);
    fleet.start_agent(
        "shared-gpu",
        &[
            "--advertise",
            "gpus=1,vram_gib=24",
            "--gpu-sharing",
            "vram",
            "--max-concurrent",
            "2",
        ],
    );
    // Both run at once (the trainers block until `go`), each on GPU 0.
    for job in &all {
        fleet.wait_status(&job.id, JobStatus::Running);
        let gpu = wait_until(WAIT, "the trainer's GPU", || {
            std::fs::read_to_string(fleet.path(&format!("work/gpu-{}", job.id))).ok()
        })
        .unwrap();
        assert_eq!(gpu.trim(), "0");
    }
    std::fs::write(fleet.path("work/go"), b"").unwrap();
    for job in &all {
        fleet.wait_status(&job.id, JobStatus::Completed);
    }
}

/// Issue 13, point 7: under `--gpu-sharing vram`, a CUDA job without `min_vram_gib` needs a
/// GPU no job holds any part of. While a declared-VRAM job holds part of the only GPU, the
/// server must not hand the whole-GPU job to this agent (it would only refuse it and hand it
/// back, every claim, forever); once the GPU is free again the job runs.
#[test]
fn a_whole_gpu_job_waits_without_churn_while_vram_sharing_holds_part_of_the_gpu() {
    let trainer = "#!/bin/sh\nwhile [ ! -e \"go-$CIS490_MODE\" ]; do sleep 0.05; done\necho ok > \"$CIS490_OUTPUT_DIR/o.txt\"\n";
    // The declared job comes first in the manifest, so the agent's first claim takes it.
    let jobs = "[[jobs]]\nmodel = \"m\"\nmode = \"part\"\nseed = 1\nrequire_cuda = true\nmin_vram_gib = 10\n\n\
                [[jobs]]\nmodel = \"m\"\nmode = \"whole\"\nseed = 1\nrequire_cuda = true\n";
    let mut fleet = Fleet::start(&manifest("", jobs), trainer);
    let all = fleet.wait_jobs(2);
    let part = all.iter().find(|j| j.mode == "part").unwrap().id.clone();
    let whole = all.iter().find(|j| j.mode == "whole").unwrap().id.clone();
    fleet.start_agent(
        "shared-gpu",
        &[
            "--advertise",
            "gpus=1,vram_gib=24",
            "--gpu-sharing",
            "vram",
            "--max-concurrent",
            "2",
        ],
    );
    fleet.wait_status(&part, JobStatus::Running);
    // Several claim rounds (the agent asks every 2 s at most while a slot is free).
    std::thread::sleep(Duration::from_secs(7));
    let waiting = fleet.job(&whole);
    let claims = waiting
        .events
        .iter()
        .filter(|e| e.kind == "Claimed")
        .count();
    assert_eq!(
        (waiting.status, waiting.attempts, claims),
        (JobStatus::Pending, 0, 0),
        "the whole-GPU job was handed to an agent that cannot fit it: {:?}",
        waiting
            .events
            .iter()
            .map(|e| format!("{} {}", e.kind, e.message))
            .collect::<Vec<_>>()
    );
    std::fs::write(fleet.path("work/go-part"), b"").unwrap();
    fleet.wait_status(&part, JobStatus::Completed);
    fleet.wait_status(&whole, JobStatus::Running);
    std::fs::write(fleet.path("work/go-whole"), b"").unwrap();
    let done = fleet.wait_status(&whole, JobStatus::Completed);
    assert_eq!(done.attempts, 1);
}
