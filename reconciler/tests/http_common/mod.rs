//! Shared harness of the `http_*` integration tests: a real server on `127.0.0.1:0` in this
//! process (its own temp state dir and manifest), the typed `cis490_api::Client`, builders
//! and a polling helper with a global timeout.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use cis490_api::{Capability, ClaimRequest, Client, JobStatus, WorkerName};
use cis490_reconciler::queue::{ManualClock, SharedQueue};
use cis490_reconciler::server::{
    ConnectionOptions, RequestCaps, Secret, Server, ServerConfig, ServerError,
};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub const OPERATOR_TOKEN: &str = "operator-secret";
pub const WORKER_TOKEN: &str = "worker-secret";

/// How a test wants its server.
pub struct AppOptions {
    pub operator_token: Option<&'static str>,
    pub worker_token: Option<&'static str>,
    pub max_upload_bytes: u64,
    pub manifest: String,
    pub watch: bool,
    pub sweep_interval: Duration,
    pub resync_interval: Duration,
    pub protect_reads: bool,
    /// Timeouts and the connection cap.
    pub connections: ConnectionOptions,
    /// Caps on uploads and long-polls.
    pub caps: RequestCaps,
    /// `--database` (None: SQLite in the state dir).
    pub database: Option<String>,
}

impl Default for AppOptions {
    fn default() -> Self {
        Self {
            operator_token: Some(OPERATOR_TOKEN),
            worker_token: Some(WORKER_TOKEN),
            max_upload_bytes: 1 << 20,
            manifest: jobs_manifest(1..=3),
            watch: true,
            sweep_interval: Duration::from_millis(100),
            // Long: tests that rely on the watch must not be rescued by the resync.
            resync_interval: Duration::from_secs(3600),
            protect_reads: false,
            connections: ConnectionOptions::default(),
            caps: RequestCaps::default(),
            database: None,
        }
    }
}

/// A server running in this process; stopped (and its state removed) on drop.
pub struct TestApp {
    pub url: String,
    /// Sends both tokens.
    pub client: Client,
    /// Sends no token.
    pub anon: Client,
    pub queue: SharedQueue,
    /// The queue's clock: tests move it forward instead of sleeping.
    pub clock: Arc<ManualClock>,
    pub store_root: PathBuf,
    pub manifest: PathBuf,
    pub dir: tempfile::TempDir,
    stop: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<Result<(), ServerError>>>,
}

pub async fn spawn_app(opts: AppOptions) -> TestApp {
    let dir = tempfile::tempdir().unwrap();
    let manifest = dir.path().join("manifests").join("training_manifest.toml");
    std::fs::create_dir_all(manifest.parent().unwrap()).unwrap();
    std::fs::write(&manifest, &opts.manifest).unwrap();
    let mut config = ServerConfig::new(&manifest, dir.path().join("state"));
    config.operator_token = opts.operator_token.and_then(Secret::new);
    config.worker_token = opts.worker_token.and_then(Secret::new);
    config.max_upload_bytes = opts.max_upload_bytes;
    config.watch = opts.watch;
    config.sweep_interval = opts.sweep_interval;
    config.resync_interval = opts.resync_interval;
    config.watch_debounce = Duration::from_millis(100);
    config.protect_reads = opts.protect_reads;
    config.connections = opts.connections;
    config.caps = opts.caps;
    if let Some(url) = &opts.database {
        config.database = Some(cis490_reconciler::server::config::parse_database(url).unwrap());
    }
    let clock = Arc::new(ManualClock::default());
    config.clock = clock.clone();
    let store_root = config.store_root();

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let server = Server::build(config).await.unwrap();
    let queue = server.queue().clone();
    let (stop, stopped) = oneshot::channel::<()>();
    let handle = tokio::spawn(server.run(listener, async move {
        let _ = stopped.await;
    }));
    let anon = Client::new(&url).unwrap();
    let client = anon
        .clone()
        .with_operator_token(opts.operator_token.map(str::to_string))
        .with_worker_token(opts.worker_token.map(str::to_string));
    TestApp {
        url,
        client,
        anon,
        queue,
        clock,
        store_root,
        manifest,
        dir,
        stop: Some(stop),
        handle: Some(handle),
    }
}

impl TestApp {
    /// Replaces the manifest by writing a temp file and renaming it over the old one (what
    /// editors do).
    pub fn write_manifest_by_rename(&self, text: &str) {
        let tmp = self.manifest.with_extension("toml.swp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, &self.manifest).unwrap();
    }

    /// Rewrites the manifest in place (truncate, then write).
    pub fn write_manifest_in_place(&self, text: &str) {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(&self.manifest)
            .unwrap();
        f.write_all(text.as_bytes()).unwrap();
        f.sync_all().unwrap();
    }

    /// Stops the server gracefully and waits for it.
    pub async fn shutdown(mut self) -> Result<(), ServerError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let handle = self.handle.take().unwrap();
        tokio::time::timeout(Duration::from_secs(30), handle)
            .await
            .expect("server did not stop within 30 s")
            .unwrap()
    }

    /// Files under the store's `.incoming/` (uploads in flight or left behind).
    pub fn partial_files(&self) -> Vec<PathBuf> {
        std::fs::read_dir(self.store_root.join(".incoming"))
            .map(|rd| rd.map(|e| e.unwrap().path()).collect())
            .unwrap_or_default()
    }

    pub async fn count(&self, status: JobStatus) -> u64 {
        let health = self.anon.health().await.unwrap();
        health.jobs.get(status.as_str()).copied().unwrap_or(0)
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(handle) = self.handle.take() {
            handle.abort();
        }
    }
}

/// A manifest with one gbt/realistic job per seed (none: a valid manifest with no jobs).
pub fn jobs_manifest(seeds: impl IntoIterator<Item = i64>) -> String {
    let seeds: Vec<String> = seeds.into_iter().map(|s| s.to_string()).collect();
    let header = "version = 1\n\n[defaults]\ncommand = [\"true\"]\n\n[models.gbt]\n";
    if seeds.is_empty() {
        return header.to_string();
    }
    format!(
        "{header}\n[[jobs]]\nmodel = \"gbt\"\nmode = \"realistic\"\nmatrix = {{ seed = [{}] }}\n",
        seeds.join(", ")
    )
}

/// `jobs_manifest` plus one job that needs CUDA (no CPU worker may claim it).
pub fn manifest_with_cuda_job(seeds: impl IntoIterator<Item = i64>) -> String {
    format!(
        "{}\n[[jobs]]\nmodel = \"gbt\"\nmode = \"oracle\"\nseed = 99\nrequire_cuda = true\n",
        jobs_manifest(seeds)
    )
}

pub fn worker(name: &str) -> WorkerName {
    WorkerName::parse(name).unwrap()
}

/// A CPU worker's claim.
pub fn cpu_claim(name: &str) -> ClaimRequest {
    ClaimRequest {
        worker: worker(name),
        capability: Capability {
            hostname: name.to_string(),
            os: "linux".into(),
            arch: "x86_64".into(),
            cores: 8,
            ram_total_mib: 32 * 1024,
            ram_available_mib: 32 * 1024,
            ram_allocatable_mib: 32 * 1024,
            max_concurrent: 1000,
            agent_version: "test".into(),
            ..Capability::default()
        },
    }
}

/// Polls `check` every 20 ms until it yields `Some`, failing the test after `timeout`.
pub async fn wait_for<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// sha256 hex of some bytes.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(bytes))
}
