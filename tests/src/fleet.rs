//! A whole fleet for end-to-end tests: one `cis490-reconciler serve`, any number of
//! `cis490-agent run` processes and `cis490ctl` runs, all in one temp dir that is cleaned
//! up (processes included) when the [`Fleet`] is dropped.
//!
//! Layout of the temp dir: `manifest.toml`, `server.toml` (short sweep and resync
//! periods), `state/` (the server's state: `queue.db`, `models/`), `work/` (the agents'
//! working directory, where trainers run), `agent-<name>/` (each agent's state) and
//! `<name>.log` (each process's stderr); with [`Fleet::enable_tls`], `tls/` (the lab CA,
//! the server's certificate and one client certificate per agent, made by
//! `cis490-reconciler certs`). With `CIS490_FLEET_POSTGRES=1` the server's queue is a
//! fresh PostgreSQL database instead of `state/queue.db` (dropped with the fleet).

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use anyhow::{bail, Context};
use cis490_api::{Client, ClientTls, IdPrefix, JobFilter, JobId, JobStatus, JobView, Lease};

use crate::scratch_postgres::{ScratchPostgres, POSTGRES_URL_VAR};
use crate::{bin, command_dying_with_parent, wait_until, workspace_root, ChildGuard, Reconciler};

/// The operator token every fleet's server is given.
pub const OPERATOR_TOKEN: &str = "fleet-e2e-operator-token";
/// The worker token every fleet's server and agents share.
pub const WORKER_TOKEN: &str = "fleet-e2e-worker-token";
/// Generous: the machine is shared and noisy; every wait is a poll that ends early.
pub const WAIT: Duration = Duration::from_secs(90);

/// A running agent of a [`Fleet`].
pub struct FleetAgent {
    pub name: String,
    pub process: ChildGuard,
}

/// A reconciler, its agents and their files, in one temp dir.
pub struct Fleet {
    pub dir: tempfile::TempDir,
    pub rt: tokio::runtime::Runtime,
    pub server: Option<Reconciler>,
    /// A client with the operator and worker tokens, pointed at the current server.
    pub client: Client,
    pub agents: Vec<FleetAgent>,
    /// Whether the server (and every agent) gets the shared [`WORKER_TOKEN`]; tests of
    /// per-worker tokens turn it off before starting the server.
    pub shared_worker_token: bool,
    server_starts: usize,
    /// Serve HTTPS with client certificates (see [`Fleet::enable_tls`]).
    tls: bool,
    /// The servers `ctl` talks to when not the fleet's own (see [`Fleet::use_servers`]).
    servers_override: Option<String>,
    /// The fleet server's queue on PostgreSQL (see [`FLEET_POSTGRES_VAR`]); None: SQLite.
    pub postgres: Option<ScratchPostgres>,
}

/// Set to `1` to run every [`Fleet`]'s server on a fresh PostgreSQL database (on the server
/// `CIS490_TEST_POSTGRES` names) instead of SQLite: CI runs some fleet tests both ways.
pub const FLEET_POSTGRES_VAR: &str = "CIS490_FLEET_POSTGRES";

impl Fleet {
    /// Writes `manifest` and a server config, and starts the server on `127.0.0.1:0`.
    pub fn start(manifest: &str) -> anyhow::Result<Fleet> {
        let mut fleet = Fleet::prepare(manifest)?;
        fleet.start_server("127.0.0.1:0")?;
        Ok(fleet)
    }

    /// Like [`Fleet::start`] without starting the server.
    pub fn prepare(manifest: &str) -> anyhow::Result<Fleet> {
        let dir = tempfile::Builder::new().prefix("cis490-fleet-").tempdir()?;
        std::fs::create_dir_all(dir.path().join("work"))?;
        std::fs::create_dir_all(dir.path().join("state"))?;
        std::fs::write(dir.path().join("manifest.toml"), manifest)?;
        std::fs::write(
            dir.path().join("server.toml"),
            "sweep_interval_s = 1\nresync_interval_s = 5\nnode_stale_after_s = 30\n",
        )?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let postgres = if std::env::var(FLEET_POSTGRES_VAR).as_deref() == Ok("1") {
            let admin = std::env::var(POSTGRES_URL_VAR)
                .with_context(|| format!("{FLEET_POSTGRES_VAR}=1 needs {POSTGRES_URL_VAR}"))?;
            // The temp dir's random name tells the fleets of one test binary apart.
            let tag: String = dir
                .path()
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or("fleet")
                .chars()
                .filter(char::is_ascii_alphanumeric)
                .collect::<String>()
                .to_ascii_lowercase();
            Some(ScratchPostgres::create_on(&admin, &tag)?)
        } else {
            None
        };
        Ok(Fleet {
            postgres,
            client: Client::new("http://127.0.0.1:9")?,
            dir,
            rt,
            server: None,
            agents: Vec::new(),
            shared_worker_token: true,
            server_starts: 0,
            tls: false,
            servers_override: None,
        })
    }

    /// Runs `cis490-reconciler ARGS` to completion (e.g. `certs init`).
    pub fn reconciler_command(&self, args: &[&str]) -> anyhow::Result<Output> {
        Command::new(bin("cis490-reconciler")?)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .context("running cis490-reconciler")
    }

    /// Makes a lab CA and a server certificate for localhost and 127.0.0.1 in `tls/` with
    /// `cis490-reconciler certs init` (unless `tls/ca.pem` exists), and from the next server
    /// start on serves HTTPS with client certificates required on worker routes. Agents
    /// started afterwards get their own certificate (`certs issue-agent NAME`); the fleet's
    /// client and `ctl` trust the CA.
    pub fn enable_tls(&mut self) -> anyhow::Result<()> {
        if !self.tls_path("ca.pem").exists() {
            let dir = self.tls_path("");
            let out = self.reconciler_command(&[
                "certs",
                "init",
                "--dir",
                path_str(&dir)?,
                "--san",
                "localhost",
                "--san",
                "127.0.0.1",
            ])?;
            if !out.status.success() {
                bail!(
                    "certs init failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
        self.tls = true;
        Ok(())
    }

    /// A file in the fleet's certificate folder `tls/`.
    pub fn tls_path(&self, file: &str) -> PathBuf {
        self.path("tls").join(file)
    }

    /// Makes agent `name`'s client certificate (`certs issue-agent`) unless it exists, and
    /// returns its certificate and key files.
    pub fn agent_certificate(&self, name: &str) -> anyhow::Result<(PathBuf, PathBuf)> {
        let cert = self.tls_path(&format!("{name}.pem"));
        let key = self.tls_path(&format!("{name}-key.pem"));
        if !cert.exists() {
            let dir = self.tls_path("");
            let out =
                self.reconciler_command(&["certs", "issue-agent", name, "--dir", path_str(&dir)?])?;
            if !out.status.success() {
                bail!(
                    "certs issue-agent {name} failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
        Ok((cert, key))
    }

    /// The TLS files a client of this fleet uses: the lab CA (when TLS is on), and agent
    /// `identity`'s certificate when given.
    pub fn client_tls(&self, identity: Option<&str>) -> anyhow::Result<ClientTls> {
        if !self.tls {
            return Ok(ClientTls::default());
        }
        let mut tls = ClientTls {
            ca_file: Some(self.tls_path("ca.pem")),
            ..ClientTls::default()
        };
        if let Some(name) = identity {
            let (cert, key) = self.agent_certificate(name)?;
            tls.cert_file = Some(cert);
            tls.key_file = Some(key);
        }
        Ok(tls)
    }

    /// A path inside the fleet's temp dir.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// Writes a file into the agents' working dir (a trainer script, a flag file).
    pub fn write_work_file(&self, rel: &str, text: &str) -> anyhow::Result<()> {
        let path = self.path("work").join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))
    }

    /// Copies `etc/examples/trainer.py` into the working dir, where the example manifest's
    /// command (`python3 etc/examples/trainer.py`) finds it.
    pub fn copy_example_trainer(&self) -> anyhow::Result<()> {
        let text = std::fs::read_to_string(workspace_root().join("etc/examples/trainer.py"))?;
        self.write_work_file("etc/examples/trainer.py", &text)
    }

    /// Replaces the manifest the way editors save: a temp file renamed over it.
    pub fn write_manifest(&self, text: &str) -> anyhow::Result<()> {
        let tmp = self.path(".manifest.toml.swp");
        std::fs::write(&tmp, text)?;
        std::fs::rename(&tmp, self.path("manifest.toml"))?;
        Ok(())
    }

    /// Starts (or restarts) the server on `listen`, with `extra` args (e.g. `--insecure`).
    pub fn start_server_with(&mut self, listen: &str, extra: &[&str]) -> anyhow::Result<()> {
        let paths = self.server_paths("state");
        let log = self.path(&format!("server-{}.log", self.server_starts));
        self.server_starts += 1;
        let mut args = server_args(&paths)?;
        let tls_args = [
            ("--tls-cert-file", self.tls_path("server.pem")),
            ("--tls-key-file", self.tls_path("server-key.pem")),
            ("--client-ca-file", self.tls_path("ca.pem")),
        ];
        if self.tls {
            for (flag, path) in &tls_args {
                args.push(flag);
                args.push(path_str(path)?);
            }
        }
        if let Some(db) = &self.postgres {
            args.push("--database");
            args.push(db.url.as_str());
        }
        args.extend_from_slice(extra);
        let mut envs = vec![
            ("CIS490_OPERATOR_TOKEN", OPERATOR_TOKEN),
            ("RUST_LOG", "info"),
        ];
        if self.shared_worker_token {
            envs.push(("CIS490_WORKER_TOKEN", WORKER_TOKEN));
        }
        let server = Reconciler::start_on(listen, &args, &envs, &log)?;
        self.client = Client::builder(&server.url)
            .tls(self.client_tls(None)?)
            .build()?
            .with_operator_token(Some(OPERATOR_TOKEN.into()))
            .with_worker_token(self.shared_worker_token.then(|| WORKER_TOKEN.into()));
        self.server = Some(server);
        Ok(())
    }

    /// The manifest, state dir and config file of a server with state dir `state_rel`.
    fn server_paths(&self, state_rel: &str) -> [PathBuf; 3] {
        [
            self.path("manifest.toml"),
            self.path(state_rel),
            self.path("server.toml"),
        ]
    }

    /// Starts one more server beside the fleet's own, on `127.0.0.1:0` with its own state
    /// dir `state_rel` (e.g. a second server on the same PostgreSQL database: give the
    /// same `--database` and `--store-dir` in `extra`). The caller owns it.
    pub fn start_another_server(
        &self,
        state_rel: &str,
        extra: &[&str],
    ) -> anyhow::Result<Reconciler> {
        let paths = self.server_paths(state_rel);
        std::fs::create_dir_all(&paths[1])?;
        let mut args = server_args(&paths)?;
        args.extend_from_slice(extra);
        let log = self.path(&format!("server-{state_rel}.log"));
        Reconciler::start_on(
            "127.0.0.1:0",
            &args,
            &[
                ("CIS490_OPERATOR_TOKEN", OPERATOR_TOKEN),
                ("CIS490_WORKER_TOKEN", WORKER_TOKEN),
                ("RUST_LOG", "info"),
            ],
            &log,
        )
    }

    /// Points the fleet's client (and `ctl`) at `servers`, a comma-separated list.
    pub fn use_servers(&mut self, servers: &str) -> anyhow::Result<()> {
        self.client = Client::builder(servers)
            .tls(self.client_tls(None)?)
            .build()?
            .with_operator_token(Some(OPERATOR_TOKEN.into()))
            .with_worker_token(self.shared_worker_token.then(|| WORKER_TOKEN.into()));
        self.servers_override = Some(servers.to_string());
        Ok(())
    }

    /// Starts (or restarts) the server on `listen`.
    pub fn start_server(&mut self, listen: &str) -> anyhow::Result<()> {
        self.start_server_with(listen, &[])
    }

    /// The current server's URL.
    pub fn url(&self) -> anyhow::Result<String> {
        Ok(self
            .server
            .as_ref()
            .context("no server running")?
            .url
            .clone())
    }

    /// The `cis490-agent run` command for agent `name` against `server_url`, with quick
    /// test timings and `extra` flags.
    pub fn agent_command(
        &self,
        name: &str,
        server_url: &str,
        extra: &[&str],
    ) -> anyhow::Result<Command> {
        self.agent_command_via(&[], name, server_url, extra)
    }

    /// Like [`Fleet::agent_command`], run through `wrapper` (e.g. `ip netns exec NS`).
    pub fn agent_command_via(
        &self,
        wrapper: &[&str],
        name: &str,
        server_url: &str,
        extra: &[&str],
    ) -> anyhow::Result<Command> {
        self.agent_command_in(wrapper, name, server_url, &self.path("work"), extra)
    }

    /// Like [`Fleet::agent_command_via`], with `work_dir` as the agent's working dir
    /// instead of the fleet's `work/`.
    pub fn agent_command_in(
        &self,
        wrapper: &[&str],
        name: &str,
        server_url: &str,
        work_dir: &Path,
        extra: &[&str],
    ) -> anyhow::Result<Command> {
        let agent = bin("cis490-agent")?;
        let mut cmd = match wrapper.split_first() {
            Some((program, args)) => {
                let mut cmd = command_dying_with_parent(program);
                cmd.args(args).arg(agent);
                cmd
            }
            None => command_dying_with_parent(agent),
        };
        cmd.arg("run")
            .args(["--server", server_url, "--name", name])
            .arg("--work-dir")
            .arg(work_dir)
            .arg("--state-dir")
            .arg(self.path(&format!("agent-{name}")))
            .args([
                "--heartbeat-s",
                "1",
                "--grace-s",
                "2",
                "--claim-wait-s",
                "2",
            ])
            .args(extra);
        let tls = self.client_tls(Some(name))?;
        for (flag, path) in [
            ("--ca-file", &tls.ca_file),
            ("--cert-file", &tls.cert_file),
            ("--key-file", &tls.key_file),
        ] {
            if let Some(path) = path {
                cmd.arg(flag).arg(path);
            }
        }
        cmd.env("RUST_LOG", "info")
            .env_remove("CIS490_WORKER_TOKEN")
            .env_remove("CIS490_WORKER_TOKEN_FILE")
            .env_remove("CIS490_SERVER")
            .env_remove("CIS490_AGENT_CONFIG")
            .env_remove("CIS490_CA_FILE")
            .env_remove("CIS490_CERT_FILE")
            .env_remove("CIS490_KEY_FILE")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(self.path(&format!("{name}.log")))?);
        if self.shared_worker_token {
            cmd.env("CIS490_WORKER_TOKEN", WORKER_TOKEN);
        }
        Ok(cmd)
    }

    /// Runs `cis490-reconciler ARGS` (e.g. `tokens issue NAME --state-dir ...`) to its end.
    pub fn reconciler_cli(&self, args: &[&str]) -> anyhow::Result<Output> {
        Command::new(bin("cis490-reconciler")?)
            .args(args)
            .env_remove("CIS490_STATE_DIR")
            .stdin(Stdio::null())
            .output()
            .context("running cis490-reconciler")
    }

    /// Runs `cis490-agent ARGS` to its end against the current server (no token from the
    /// environment: pass one in `args`).
    pub fn agent_cli(&self, args: &[&str]) -> anyhow::Result<Output> {
        Command::new(bin("cis490-agent")?)
            .args(args)
            .args(["--server", &self.url()?])
            .env_remove("CIS490_WORKER_TOKEN")
            .env_remove("CIS490_WORKER_TOKEN_FILE")
            .env_remove("CIS490_SERVER")
            .env_remove("CIS490_AGENT_CONFIG")
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .output()
            .context("running cis490-agent")
    }

    /// Starts an agent `name` against the current server.
    pub fn start_agent(&mut self, name: &str, extra: &[&str]) -> anyhow::Result<()> {
        let cmd = self.agent_command(name, &self.url()?, extra)?;
        self.spawn_agent(name, cmd)
    }

    /// Starts an agent from a prepared command (e.g. wrapped in `ip netns exec`).
    pub fn spawn_agent(&mut self, name: &str, cmd: Command) -> anyhow::Result<()> {
        let process = ChildGuard::spawn(name, cmd)?;
        self.agents.push(FleetAgent {
            name: name.to_string(),
            process,
        });
        Ok(())
    }

    /// The agent called `name`.
    pub fn agent(&mut self, name: &str) -> anyhow::Result<&mut FleetAgent> {
        self.agents
            .iter_mut()
            .find(|a| a.name == name)
            .with_context(|| format!("no agent {name}"))
    }

    /// Kills agent `name` with SIGKILL (the agent alone, as when a host's agent crashes; its
    /// trainer guard then kills its trainers' groups) and reaps it.
    pub fn kill_agent(&mut self, name: &str) -> anyhow::Result<()> {
        let agent = self.agent(name)?;
        agent.process.signal("KILL")?;
        agent.process.wait_exit(Duration::from_secs(10))?;
        Ok(())
    }

    /// Checks that every agent still runs and that each of `jobs` ran to completion exactly
    /// once, as the trainers recorded in `work/runs.log` (one job ID per line, written
    /// after the output).
    pub fn assert_each_job_ran_once(&mut self, jobs: &[JobView]) {
        for agent in &mut self.agents {
            let exited = agent.process.child.try_wait().ok().flatten();
            assert!(exited.is_none(), "agent {} died: {exited:?}", agent.name);
        }
        let runs = std::fs::read_to_string(self.path("work/runs.log")).unwrap_or_default();
        let mut counts: std::collections::BTreeMap<&str, usize> = Default::default();
        for line in runs.lines() {
            *counts.entry(line.trim()).or_default() += 1;
        }
        let twice: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
        assert!(twice.is_empty(), "jobs run twice: {twice:?}");
        for job in jobs {
            assert!(counts.contains_key(job.id.as_str()), "{} never ran", job.id);
        }
        assert_eq!(counts.len(), jobs.len(), "runs of jobs not asked about");
    }

    /// What agent `name` logged so far.
    pub fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.path(&format!("{name}.log"))).unwrap_or_default()
    }

    /// Every job (empty while the server is unreachable).
    pub fn jobs(&self) -> Vec<JobView> {
        self.rt
            .block_on(self.client.jobs(&JobFilter::default()))
            .unwrap_or_default()
    }

    /// One job with its events.
    pub fn job(&self, id: &JobId) -> anyhow::Result<JobView> {
        let prefix = IdPrefix::parse(id.as_str())?;
        Ok(self.rt.block_on(self.client.job(&prefix))?)
    }

    /// Waits until the queue holds `n` jobs and returns them.
    pub fn wait_jobs(&self, n: usize) -> anyhow::Result<Vec<JobView>> {
        wait_until(WAIT, &format!("{n} jobs in the queue"), || {
            let jobs = self.jobs();
            (jobs.len() == n).then_some(jobs)
        })
    }

    /// Waits until job `id` is in `status`, and returns it.
    pub fn wait_status(&self, id: &JobId, status: JobStatus) -> anyhow::Result<JobView> {
        let what = format!("job {} to be {status}", id.short());
        wait_until(WAIT, &what, || {
            self.job(id).ok().filter(|job| job.status == status)
        })
        .with_context(|| {
            format!(
                "last seen: {:?}",
                self.job(id).map(|j| (j.status, j.worker, j.events))
            )
        })
    }

    /// Waits until at least `n` jobs are completed; returns how many were.
    pub fn wait_completed(&self, n: usize) -> anyhow::Result<usize> {
        let completed = |jobs: &[JobView]| {
            jobs.iter()
                .filter(|j| j.status == JobStatus::Completed)
                .count()
        };
        let jobs = self.wait_jobs_until(WAIT, &format!("{n} jobs completed"), |jobs| {
            completed(jobs) >= n
        })?;
        Ok(completed(&jobs))
    }

    /// Waits until `done` holds for the job list, and returns it.
    pub fn wait_jobs_until(
        &self,
        timeout: Duration,
        what: &str,
        done: impl Fn(&[JobView]) -> bool,
    ) -> anyhow::Result<Vec<JobView>> {
        wait_until(timeout, what, || {
            let jobs = self.jobs();
            (!jobs.is_empty() && done(&jobs)).then_some(jobs)
        })
        .with_context(|| {
            let summary: Vec<String> = self
                .jobs()
                .iter()
                .map(|j| format!("{} {} {:?}", j.id.short(), j.status, j.worker))
                .collect();
            format!("jobs: {summary:?}")
        })
    }

    /// Runs `cis490ctl ARGS` against the current server with the operator token (and the
    /// lab CA when TLS is on).
    pub fn ctl(&self, args: &[&str]) -> anyhow::Result<Output> {
        self.ctl_command(args)?
            .output()
            .context("running cis490ctl")
    }

    /// The server's artifact listing (`cis490ctl get artifacts -o json`): one row per
    /// recorded upload of stored bytes, then the stored bytes no upload names.
    pub fn artifacts(&self) -> anyhow::Result<Vec<cis490_api::ArtifactView>> {
        let out = self.ctl(&["get", "artifacts", "-o", "json"])?;
        anyhow::ensure!(
            out.status.success(),
            "cis490ctl get artifacts failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).context("parsing `get artifacts -o json`")
    }

    /// The `cis490ctl ARGS` command [`Fleet::ctl`] runs, to start it in the background
    /// (`logs -f`, `get -w`).
    pub fn ctl_command(&self, args: &[&str]) -> anyhow::Result<Command> {
        let mut cmd = command_dying_with_parent(bin("cis490ctl")?);
        match self.client_tls(None)?.ca_file {
            Some(ca) => cmd.env("CIS490_CA_FILE", ca),
            None => cmd.env_remove("CIS490_CA_FILE"),
        };
        let servers = match &self.servers_override {
            Some(servers) => servers.clone(),
            None => self.url()?,
        };
        cmd.args(args)
            .env("CIS490_SERVER", servers)
            .env("CIS490_OPERATOR_TOKEN", OPERATOR_TOKEN)
            .env("NO_COLOR", "1")
            // No client config file of the developer's (~/.config/cis490) applies.
            .env("XDG_CONFIG_HOME", self.dir.path())
            .env_remove("CIS490_CONFIG")
            .stdin(Stdio::null());
        Ok(cmd)
    }

    /// The artifact store's root (`<state>/models`, the server's layout).
    pub fn store_root(&self) -> PathBuf {
        self.path("state/models")
    }

    /// The lease the queue holds for job `id` now, read from the server's database (the
    /// API never shows lease tokens). Used to replay a dead agent's lease.
    pub fn current_lease(&self, id: &JobId) -> anyhow::Result<Lease> {
        if let Some(db) = &self.postgres {
            return postgres_lease(&db.url, id);
        }
        let db = rusqlite::Connection::open_with_flags(
            self.path("state/queue.db"),
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )?;
        db.busy_timeout(Duration::from_secs(10))?;
        let (attempt, token): (Option<u32>, Option<String>) = db.query_row(
            "SELECT lease_attempt, lease_token FROM jobs WHERE id = ?1",
            [id.as_str()],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )?;
        match (attempt, token) {
            (Some(attempt), Some(token)) => Ok(Lease { attempt, token }),
            _ => bail!("job {} holds no lease", id.short()),
        }
    }

    /// Kills every process started by this fleet (agents, server) and any stray one
    /// (trainers of killed agents) working inside the temp dir.
    pub fn shutdown(&mut self) {
        for agent in &mut self.agents {
            agent.process.kill_now();
        }
        if let Some(server) = self.server.as_mut() {
            server.process.kill_now();
        }
        kill_processes_under(self.dir.path());
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// [`Fleet::current_lease`] on PostgreSQL (on a thread of its own: the sync client must not
/// start its runtime inside the fleet's).
fn postgres_lease(url: &str, id: &JobId) -> anyhow::Result<Lease> {
    let (url, id) = (url.to_string(), id.clone());
    std::thread::spawn(move || -> anyhow::Result<Lease> {
        let mut db = postgres::Client::connect(&url, postgres::NoTls)?;
        let row = db.query_one(
            "SELECT lease_attempt, lease_token FROM jobs WHERE id = $1",
            &[&id.as_str()],
        )?;
        let (attempt, token): (Option<i64>, Option<String>) = (row.try_get(0)?, row.try_get(1)?);
        match (attempt, token) {
            (Some(attempt), Some(token)) => Ok(Lease {
                attempt: u32::try_from(attempt)?,
                token,
            }),
            _ => bail!("job {} holds no lease", id.short()),
        }
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the lease lookup thread panicked"))?
}

/// `serve`'s flags for [`Fleet::server_paths`].
fn server_args(paths: &[PathBuf; 3]) -> anyhow::Result<Vec<&str>> {
    let [manifest, state, config] = paths;
    Ok(vec![
        "--manifest",
        path_str(manifest)?,
        "--state-dir",
        path_str(state)?,
        "--config",
        path_str(config)?,
    ])
}

fn path_str(p: &Path) -> anyhow::Result<&str> {
    p.to_str().context("temp path is not UTF-8")
}

/// Processes (other than this one) whose working directory or command line is inside
/// `dir`: what a test started there and left behind. Linux only (reads `/proc`); elsewhere
/// empty.
pub fn processes_under(dir: &Path) -> Vec<(i32, String)> {
    let me = std::process::id();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let needle = dir.to_string_lossy().to_string();
    let mut found = Vec::new();
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == me {
            continue;
        }
        let base = entry.path();
        let cmdline = std::fs::read(base.join("cmdline"))
            .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
            .unwrap_or_default();
        let cwd = std::fs::read_link(base.join("cwd"))
            .map(|p| p.to_string_lossy().to_string())
            .unwrap_or_default();
        let zombie = std::fs::read_to_string(base.join("stat"))
            .map(|s| {
                s.rsplit(')')
                    .next()
                    .is_some_and(|r| r.trim_start().starts_with('Z'))
            })
            .unwrap_or(true);
        if !zombie && (cmdline.contains(&needle) || cwd.starts_with(&needle)) {
            if let Ok(pid) = i32::try_from(pid) {
                found.push((pid, cmdline));
            }
        }
    }
    found
}

/// SIGKILLs every process [`processes_under`] `dir` finds, one PID at a time.
pub fn kill_processes_under(dir: &Path) {
    #[cfg(unix)]
    for (pid, _) in processes_under(dir) {
        if pid > 1 {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}
