//! Running one attempt of a job: a fresh directory, the trainer's argv (never a shell) with
//! the hyperparameters appended, the trainer contract's environment, output to a log file,
//! and stopping the trainer's whole process tree.
//!
//! The trainer contract (README, "Trainer contract"): argv plus `--key value` per hyper key;
//! env CIS490_JOB_ID, CIS490_MODEL, CIS490_MODE, CIS490_SEED, CIS490_ATTEMPT,
//! CIS490_OUTPUT_DIR (what is in it at exit 0 is the artifact), CIS490_JOB_SPEC,
//! CIS490_PROGRESS_FILE (JSON lines of live progress, read by `progress`), and
//! CUDA_VISIBLE_DEVICES with a GPU; `$CIS490_OUTPUT_DIR/metrics.json` holds the final
//! metrics (read by `metrics_file`). Neither file can fail a job.

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use cis490_api::{Hyper, JobId, JobSpec, Lease};

use crate::leftover_trainers::TrainerRecord;

/// How much of the trainer's log goes with heartbeats and failures.
pub const LOG_TAIL_BYTES: u64 = 4096;

/// Why a trainer could not be started.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The manifest gave the job no command.
    #[error("the job has an empty command")]
    EmptyCommand,
    /// The attempt directory, log or spec file could not be written.
    #[error("preparing {path}: {source}")]
    Prepare {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The OS refused to start the trainer (not found, not executable, ...).
    #[error("cannot start trainer {program:?}: {source}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
}

/// One attempt's directory: `output/` (the artifact), `trainer.log`, `job.json`.
#[derive(Debug, Clone)]
pub struct Attempt {
    pub dir: PathBuf,
    pub output_dir: PathBuf,
    pub log_path: PathBuf,
    pub spec_path: PathBuf,
}

impl Attempt {
    /// Creates a fresh `<state_dir>/jobs/<short id>-attempt<N>` (anything there before is
    /// removed) and writes the job spec as JSON.
    pub fn prepare(state_dir: &Path, spec: &JobSpec, lease: &Lease) -> Result<Self, RunError> {
        let dir =
            state_dir
                .join("jobs")
                .join(format!("{}-attempt{}", spec.id.short(), lease.attempt));
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| RunError::Prepare { path, source }
        };
        if dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(io(&dir))?;
        }
        let output_dir = dir.join("output");
        std::fs::create_dir_all(&output_dir).map_err(io(&output_dir))?;
        let spec_path = dir.join("job.json");
        let json = serde_json::to_vec_pretty(spec).map_err(|e| RunError::Prepare {
            path: spec_path.clone(),
            source: std::io::Error::other(e),
        })?;
        std::fs::write(&spec_path, json).map_err(io(&spec_path))?;
        Ok(Self {
            log_path: dir.join("trainer.log"),
            dir,
            output_dir,
            spec_path,
        })
    }

    /// `$CIS490_PROGRESS_FILE`: beside `output/`, so it is not part of the artifact.
    pub fn progress_path(&self) -> PathBuf {
        self.dir.join(crate::progress::PROGRESS_FILE_NAME)
    }

    /// The last `LOG_TAIL_BYTES` of the trainer's log.
    pub fn log_tail(&self) -> Option<String> {
        log_tail(&self.log_path, LOG_TAIL_BYTES)
    }
}

/// A hyperparameter value as an argv word: strings bare, bools `true`/`false`, numbers as
/// written, arrays and tables as JSON. `null` means "leave the flag out".
fn hyper_word(value: &serde_json::Value) -> Option<String> {
    match value {
        serde_json::Value::Null => None,
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Bool(b) => Some(b.to_string()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        other => Some(other.to_string()),
    }
}

/// The trainer's argv: the job's command, then `--key value` per hyperparameter (sorted by
/// key, as `Hyper` is).
pub fn trainer_argv(command: &[String], hyper: &Hyper) -> Result<Vec<String>, RunError> {
    if command.first().is_none_or(|p| p.is_empty()) {
        return Err(RunError::EmptyCommand);
    }
    let mut argv = command.to_vec();
    for (key, value) in hyper {
        if let Some(word) = hyper_word(value) {
            argv.push(format!("--{key}"));
            argv.push(word);
        }
    }
    Ok(argv)
}

/// The trainer contract's environment (design.md).
pub fn trainer_env(
    spec: &JobSpec,
    lease: &Lease,
    attempt: &Attempt,
    gpus: &[u32],
) -> Vec<(String, String)> {
    // The manifest's `env` first: the contract's variables below are set after it (the
    // manifest may not name them, and they would win if it did).
    let mut env: Vec<(String, String)> = spec
        .env
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    env.extend([
        ("CIS490_JOB_ID".to_string(), spec.id.to_string()),
        ("CIS490_MODEL".to_string(), spec.model.clone()),
        ("CIS490_MODE".to_string(), spec.mode.clone()),
        ("CIS490_SEED".to_string(), spec.seed.to_string()),
        ("CIS490_ATTEMPT".to_string(), lease.attempt.to_string()),
        (
            "CIS490_OUTPUT_DIR".to_string(),
            attempt.output_dir.display().to_string(),
        ),
        (
            "CIS490_JOB_SPEC".to_string(),
            attempt.spec_path.display().to_string(),
        ),
        (
            "CIS490_PROGRESS_FILE".to_string(),
            attempt.progress_path().display().to_string(),
        ),
    ]);
    if !gpus.is_empty() {
        let list: Vec<String> = gpus.iter().map(u32::to_string).collect();
        env.push(("CUDA_VISIBLE_DEVICES".to_string(), list.join(",")));
    }
    env
}

/// A program named by a relative path (`./train.sh`, `scripts/run.py`) is found in the work
/// dir, whatever the agent's own current directory is; bare names go through PATH.
fn resolve_program(program: &str, work_dir: &Path) -> PathBuf {
    let p = Path::new(program);
    let has_separator = program.contains('/') || (cfg!(windows) && program.contains('\\'));
    if p.is_relative() && has_separator {
        work_dir.join(p)
    } else {
        p.to_path_buf()
    }
}

/// How trainers are started: watched by the agent's trainer guard (or, when it could not
/// start, through the parent-death shim) and with a record of each group (see
/// `trainer_guard`, `exec_trainer` and `leftover_trainers`), or (tests) plainly.
#[derive(Debug, Clone, Default)]
pub struct Launch {
    /// What ends the trainers when the agent dies.
    pub death: DiesWithAgent,
    /// Where each running trainer's process group is recorded.
    pub records: Option<PathBuf>,
}

/// How a trainer is made to die with its agent.
#[derive(Debug, Clone, Default)]
pub enum DiesWithAgent {
    /// The guard ends every trainer's group when the agent dies.
    Guard(std::sync::Arc<crate::trainer_guard::TrainerGuard>),
    /// The agent's own executable: on Linux trainers are started through its
    /// `__exec-trainer` parent-death shim.
    Shim(PathBuf),
    /// Nothing (tests, or an agent that cannot find its own executable).
    #[default]
    Not,
}

/// The program as the OS would find it: a path with a separator as it is, a bare name
/// through PATH. Checked before the shim starts, so a missing or non-executable trainer is
/// the same clear spawn error with the shim as without it.
#[cfg(unix)]
fn find_program(program: &Path) -> std::io::Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let executable = |p: &Path| {
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if program.components().count() > 1 || program.is_absolute() {
        return if executable(program) {
            Ok(program.to_path_buf())
        } else if program.exists() {
            Err(std::io::Error::from(nix::errno::Errno::EACCES))
        } else {
            Err(std::io::Error::from(nix::errno::Errno::ENOENT))
        };
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| executable(candidate))
        .ok_or_else(|| std::io::Error::from(nix::errno::Errno::ENOENT))
}

/// A running trainer: the leader of its own process group on Unix.
#[derive(Debug)]
pub struct Trainer {
    child: tokio::process::Child,
    pid: u32,
    status: Option<ExitStatus>,
    record: Option<TrainerRecord>,
    /// Told when the group is gone.
    guard: Option<std::sync::Arc<crate::trainer_guard::TrainerGuard>>,
}

impl Trainer {
    /// Starts `argv` in `work_dir` with `env` added, stdout and stderr appended to `log`.
    pub fn spawn(
        argv: &[String],
        env: &[(String, String)],
        work_dir: &Path,
        log: &Path,
        launch: &Launch,
    ) -> Result<Self, RunError> {
        let (program, args) = argv.split_first().ok_or(RunError::EmptyCommand)?;
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .map_err(|source| RunError::Prepare {
                path: log.to_path_buf(),
                source,
            })?;
        let err_file = log_file.try_clone().map_err(|source| RunError::Prepare {
            path: log.to_path_buf(),
            source,
        })?;
        let spawn_error = |source| RunError::Spawn {
            program: program.clone(),
            source,
        };
        let program_path = resolve_program(program, work_dir);
        let mut cmd = match &launch.death {
            #[cfg(target_os = "linux")]
            DiesWithAgent::Shim(shim) => {
                let resolved = find_program(&program_path).map_err(spawn_error)?;
                let mut cmd = tokio::process::Command::new(shim);
                cmd.args(crate::exec_trainer::shim_args(
                    std::process::id(),
                    &resolved,
                    args,
                ));
                cmd
            }
            _ => {
                let mut cmd = tokio::process::Command::new(program_path);
                cmd.args(args);
                cmd
            }
        };
        cmd.current_dir(work_dir)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::from(log_file))
            .stderr(Stdio::from(err_file));
        #[cfg(unix)]
        cmd.process_group(0);
        let child = cmd.spawn().map_err(spawn_error)?;
        let pid = child.id().unwrap_or(0);
        let guard = match &launch.death {
            DiesWithAgent::Guard(guard) if pid > 1 => Some(std::sync::Arc::clone(guard)),
            _ => None,
        };
        if let Some(guard) = &guard {
            guard.watch(pid);
        }
        let job = env
            .iter()
            .find(|(k, _)| k == "CIS490_JOB_ID")
            .and_then(|(_, v)| JobId::parse(v).ok());
        let record = match (&launch.records, job) {
            (Some(dir), Some(job)) if pid > 0 => match TrainerRecord::write(dir, pid, &job) {
                Ok(r) => Some(r),
                Err(e) => {
                    tracing::warn!(dir = %dir.display(), "cannot record the trainer's process group: {e}");
                    None
                }
            },
            _ => None,
        };
        Ok(Self {
            child,
            pid,
            status: None,
            record,
            guard,
        })
    }

    /// The trainer's pid (and process group id on Unix).
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Waits for the trainer to exit, then kills anything it left in its process group.
    /// Cancel-safe: may be used in `select!`.
    pub async fn wait(&mut self) -> std::io::Result<ExitStatus> {
        if let Some(status) = self.status {
            return Ok(status);
        }
        let status = self.child.wait().await?;
        self.status = Some(status);
        kill_tree(self.pid, true);
        self.forget_group();
        Ok(status)
    }

    /// Stops the trainer's whole tree: SIGTERM to the group, SIGKILL after `grace` to
    /// whatever is left (on Windows, `taskkill /T /F` at once).
    pub async fn stop(&mut self, grace: Duration) -> Option<ExitStatus> {
        kill_tree(self.pid, false);
        let deadline = tokio::time::Instant::now() + grace;
        let status = match tokio::time::timeout_at(deadline, self.child.wait()).await {
            Ok(Ok(status)) => Some(status),
            _ => None,
        };
        // Children may outlive the leader; give them what is left of the grace period.
        while group_alive(self.pid) && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        kill_tree(self.pid, true);
        let status = match status {
            Some(s) => Some(s),
            None => self.child.wait().await.ok(),
        };
        self.status = status;
        self.forget_group();
        status
    }

    /// The group is gone: its record goes too.
    fn forget_group(&mut self) {
        if let Some(record) = self.record.take() {
            record.remove();
        }
        if let Some(guard) = self.guard.take() {
            guard.forget(self.pid);
        }
    }
}

/// Signals the trainer's process tree: SIGTERM (or SIGKILL when `force`) to its group.
#[cfg(unix)]
pub fn kill_tree(pid: u32, force: bool) {
    use nix::sys::signal::{killpg, Signal};
    use nix::unistd::Pid;
    let Ok(raw) = i32::try_from(pid) else { return };
    if raw <= 1 {
        return;
    }
    let signal = if force {
        Signal::SIGKILL
    } else {
        Signal::SIGTERM
    };
    let _ = killpg(Pid::from_raw(raw), signal);
}

/// Stops the trainer's process tree with `taskkill /T` (Windows has no process groups to
/// signal; `/F` is the only reliable way to stop a console tree from a service).
#[cfg(windows)]
pub fn kill_tree(pid: u32, _force: bool) {
    if pid == 0 {
        return;
    }
    let _ = std::process::Command::new("taskkill")
        .args(["/T", "/F", "/PID", &pid.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// True while any process of the group `pid` exists.
#[cfg(unix)]
pub fn group_alive(pid: u32) -> bool {
    use nix::unistd::Pid;
    let Ok(raw) = i32::try_from(pid) else {
        return false;
    };
    raw > 1 && nix::sys::signal::killpg(Pid::from_raw(raw), None).is_ok()
}

/// Windows: `taskkill /T` reaches the whole tree at once.
#[cfg(windows)]
pub fn group_alive(_pid: u32) -> bool {
    false
}

/// The last `max_bytes` of a file as text (lossy UTF-8, starting at a line when possible).
pub fn log_tail(path: &Path, max_bytes: u64) -> Option<String> {
    let mut file = std::fs::File::open(path).ok()?;
    let len = file.metadata().ok()?.len();
    let start = len.saturating_sub(max_bytes);
    file.seek(SeekFrom::Start(start)).ok()?;
    let mut buf = Vec::new();
    file.take(max_bytes).read_to_end(&mut buf).ok()?;
    let mut text = String::from_utf8_lossy(&buf).into_owned();
    if start > 0 {
        if let Some(nl) = text.find('\n') {
            text.drain(..=nl);
        }
    }
    Some(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use cis490_api::JobId;
    use serde_json::json;

    fn spec(command: &[&str]) -> JobSpec {
        JobSpec {
            id: JobId::parse(&"ab".repeat(32)).unwrap(),
            model: "gbt".into(),
            mode: "oracle".into(),
            hyper: Default::default(),
            split_recipe: None,
            train_hosts: vec![],
            seed: 7,
            constraints: Default::default(),
            priority: 0,
            max_attempts: 3,
            stale_after_s: 90,
            retry: Default::default(),
            command: command.iter().map(|s| s.to_string()).collect(),
            labels: Default::default(),
            timeout_s: None,
            env: Default::default(),
            manifest_order: 0,
        }
    }

    fn lease() -> Lease {
        Lease {
            attempt: 2,
            token: "t".into(),
        }
    }

    #[test]
    fn hyper_becomes_sorted_key_value_flags() {
        let mut hyper = Hyper::new();
        hyper.insert("lr".into(), json!(0.05));
        hyper.insert("depth".into(), json!(6));
        hyper.insert("early_stop".into(), json!(true));
        hyper.insert("name".into(), json!("a b"));
        hyper.insert("skip".into(), serde_json::Value::Null);
        hyper.insert("layers".into(), json!([64, 32]));
        let argv = trainer_argv(&["python3".into(), "train.py".into()], &hyper).unwrap();
        assert_eq!(
            argv,
            vec![
                "python3",
                "train.py",
                "--depth",
                "6",
                "--early_stop",
                "true",
                "--layers",
                "[64,32]",
                "--lr",
                "0.05",
                "--name",
                "a b"
            ]
        );
        assert!(matches!(
            trainer_argv(&[], &hyper),
            Err(RunError::EmptyCommand)
        ));
    }

    #[test]
    fn attempt_dir_is_fresh_and_env_follows_the_trainer_contract() {
        let state = tempfile::tempdir().unwrap();
        let spec = spec(&["true"]);
        let first = Attempt::prepare(state.path(), &spec, &lease()).unwrap();
        std::fs::write(first.output_dir.join("stale"), b"x").unwrap();
        let again = Attempt::prepare(state.path(), &spec, &lease()).unwrap();
        assert!(!again.output_dir.join("stale").exists());
        let written: JobSpec =
            serde_json::from_slice(&std::fs::read(&again.spec_path).unwrap()).unwrap();
        assert_eq!(written, spec);
        let env = trainer_env(&spec, &lease(), &again, &[1]);
        let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("CIS490_JOB_ID"), Some(spec.id.as_str()));
        assert_eq!(get("CIS490_MODEL"), Some("gbt"));
        assert_eq!(get("CIS490_MODE"), Some("oracle"));
        assert_eq!(get("CIS490_SEED"), Some("7"));
        assert_eq!(get("CIS490_ATTEMPT"), Some("2"));
        assert_eq!(
            get("CIS490_PROGRESS_FILE").map(PathBuf::from),
            Some(again.dir.join("progress.jsonl"))
        );
        assert_eq!(get("CUDA_VISIBLE_DEVICES"), Some("1"));
        assert_eq!(
            get("CIS490_OUTPUT_DIR").map(PathBuf::from),
            Some(again.output_dir.clone())
        );
        let no_gpu = trainer_env(&spec, &lease(), &again, &[]);
        assert!(!no_gpu.iter().any(|(k, _)| k == "CUDA_VISIBLE_DEVICES"));
    }

    #[test]
    fn the_manifests_env_comes_first_and_several_gpus_are_listed() {
        let state = tempfile::tempdir().unwrap();
        let mut spec = spec(&["true"]);
        spec.env = [("OMP_NUM_THREADS".to_string(), "4".to_string())].into();
        let attempt = Attempt::prepare(state.path(), &spec, &lease()).unwrap();
        let env = trainer_env(&spec, &lease(), &attempt, &[0, 2]);
        assert_eq!(env[0], ("OMP_NUM_THREADS".to_string(), "4".to_string()));
        let gpus = env.iter().find(|(k, _)| k == "CUDA_VISIBLE_DEVICES");
        assert_eq!(gpus.map(|(_, v)| v.as_str()), Some("0,2"));
    }

    #[test]
    fn log_tail_keeps_the_end_from_a_line_start() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let text: String = (0..500).map(|i| format!("line {i}\n")).collect();
        std::fs::write(&path, &text).unwrap();
        let tail = log_tail(&path, 100).unwrap();
        assert!(tail.ends_with("line 499\n"));
        assert!(tail.starts_with("line "), "{tail:?}");
        assert!(tail.len() <= 100);
        assert_eq!(log_tail(&dir.path().join("none"), 10), None);
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn trainer_sees_env_and_args_and_logs_both_streams() {
        let state = tempfile::tempdir().unwrap();
        let work = tempfile::tempdir().unwrap();
        std::fs::write(
            work.path().join("train.sh"),
            "#!/bin/sh\necho \"args:$*\"\necho \"model:$CIS490_MODEL\"\necho oops >&2\necho done > \"$CIS490_OUTPUT_DIR/out.txt\"\nexit 3\n",
        )
        .unwrap();
        let spec = spec(&["sh", "./train.sh"]);
        let attempt = Attempt::prepare(state.path(), &spec, &lease()).unwrap();
        let mut hyper = Hyper::new();
        hyper.insert("lr".into(), json!(0.1));
        let argv = trainer_argv(&spec.command, &hyper).unwrap();
        let env = trainer_env(&spec, &lease(), &attempt, &[]);
        let mut t = Trainer::spawn(
            &argv,
            &env,
            work.path(),
            &attempt.log_path,
            &Launch::default(),
        )
        .unwrap();
        let status = t.wait().await.unwrap();
        assert_eq!(status.code(), Some(3));
        let log = std::fs::read_to_string(&attempt.log_path).unwrap();
        assert!(log.contains("args:--lr 0.1"), "{log}");
        assert!(log.contains("model:gbt"), "{log}");
        assert!(attempt.log_tail().unwrap().ends_with("oops\n"));
        assert!(attempt.output_dir.join("out.txt").exists());
    }

    #[cfg(unix)]
    fn alive(pid: i32) -> bool {
        // A zombie still answers kill(0); look at /proc's state where there is one.
        if let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            return !stat
                .rsplit(')')
                .next()
                .is_some_and(|rest| rest.trim_start().starts_with('Z'));
        }
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok()
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn stop_kills_the_whole_process_group_after_grace() {
        let state = tempfile::tempdir().unwrap();
        let work = tempfile::tempdir().unwrap();
        // The trainer ignores SIGTERM and starts a child that outlives it unless killed.
        std::fs::write(
            work.path().join("train.sh"),
            "#!/bin/sh\ntrap '' TERM\nsleep 300 &\necho \"child $!\"\nwait\n",
        )
        .unwrap();
        let spec = spec(&["sh", "./train.sh"]);
        let attempt = Attempt::prepare(state.path(), &spec, &lease()).unwrap();
        let argv = trainer_argv(&spec.command, &Hyper::new()).unwrap();
        let mut t = Trainer::spawn(
            &argv,
            &[],
            work.path(),
            &attempt.log_path,
            &Launch::default(),
        )
        .unwrap();
        let child_pid: i32 = {
            let mut found = None;
            for _ in 0..500 {
                let log = std::fs::read_to_string(&attempt.log_path).unwrap_or_default();
                if let Some(p) = log.lines().find_map(|l| l.strip_prefix("child ")) {
                    found = p.trim().parse().ok();
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            found.expect("trainer printed its child's pid")
        };
        let leader = t.pid() as i32;
        assert!(alive(leader) && alive(child_pid));
        let status = t.stop(Duration::from_millis(500)).await;
        assert!(status.is_some());
        for _ in 0..250 {
            if !alive(child_pid) && !alive(leader) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(!alive(leader), "trainer {leader} survived stop");
        assert!(!alive(child_pid), "child {child_pid} survived stop");
    }
}
