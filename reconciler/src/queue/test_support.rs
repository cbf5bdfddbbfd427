//! Builders shared by the planner's and the queue's tests.

use std::collections::BTreeMap;
use std::sync::Arc;

use cis490_api::{Capability, Constraints, Gpu, JobId, JobSpec, RetryPolicy, WorkerName};
use sha2::{Digest, Sha256};

use super::{JobQueue, ManualClock, Queue, QueueConfig};

/// A clock the test moves by hand.
pub(crate) fn manual_clock() -> Arc<ManualClock> {
    Arc::default()
}

/// A queue in memory on `clock`.
pub(crate) fn queue_on(clock: &Arc<ManualClock>, config: QueueConfig) -> Queue {
    Queue::open_in_memory_with_clock(config, clock.clone()).expect("an in-memory queue opens")
}

/// A job ID made by hashing `seed` (tests only need IDs to be unique and valid).
pub(crate) fn id_of(seed: &str) -> JobId {
    let digest = Sha256::digest(seed.as_bytes());
    JobId::parse(&hex::encode(digest)).expect("sha256 hex is a valid job ID")
}

/// A plain job: model gbt, no constraints, 3 attempts, 90 s lease.
pub(crate) fn spec(name: &str) -> JobSpec {
    JobSpec {
        id: id_of(name),
        model: "gbt".to_string(),
        mode: "realistic".to_string(),
        hyper: BTreeMap::new(),
        split_recipe: None,
        train_hosts: Vec::new(),
        seed: 0,
        constraints: Constraints::default(),
        priority: 0,
        max_attempts: 3,
        stale_after_s: 90,
        retry: RetryPolicy::default(),
        command: vec!["train".to_string()],
        labels: BTreeMap::new(),
        timeout_s: None,
        env: BTreeMap::new(),
        manifest_order: 0,
    }
}

/// `n` plain jobs named `{prefix}{i}` with manifest_order i.
pub(crate) fn specs(prefix: &str, n: usize) -> Vec<JobSpec> {
    (0..n)
        .map(|i| JobSpec {
            manifest_order: i as u64,
            ..spec(&format!("{prefix}{i}"))
        })
        .collect()
}

pub(crate) fn worker(name: &str) -> WorkerName {
    WorkerName::parse(name).expect("valid worker name")
}

/// A CPU-only host with `ram_gib` GiB allocatable.
pub(crate) fn cpu(ram_gib: u64) -> Capability {
    Capability {
        hostname: "cpu".to_string(),
        cores: 8,
        ram_total_mib: ram_gib * 1024,
        ram_available_mib: ram_gib * 1024,
        ram_allocatable_mib: ram_gib * 1024,
        max_concurrent: 1,
        ..Capability::default()
    }
}

/// A CUDA host with one GPU of `vram_gib` GiB and 64 GiB RAM.
pub(crate) fn gpu(vram_gib: u64) -> Capability {
    Capability {
        hostname: "gpu".to_string(),
        cuda: true,
        gpus: vec![Gpu {
            index: 0,
            name: "RTX".to_string(),
            uuid: None,
            vram_total_mib: vram_gib * 1024,
            vram_free_mib: vram_gib * 1024,
            vram_allocatable_mib: vram_gib * 1024,
            vram_allocated_mib: 0,
        }],
        ..cpu(64)
    }
}

/// The backend a queue test runs on (tests that only use [`JobQueue`] run on both, see
/// [`on_both_backends`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Backend {
    /// An in-memory SQLite queue.
    Sqlite,
    /// A fresh database on the PostgreSQL server `CIS490_TEST_POSTGRES` names, dropped
    /// when the test's queue is.
    Postgres,
}

/// The env var naming the PostgreSQL server the postgres variants of the queue tests use,
/// as a URL of a database to connect to first (`postgresql://user@%2Ftmp%2Fdir/postgres`).
pub(crate) const POSTGRES_URL_VAR: &str = "CIS490_TEST_POSTGRES";
/// With it set to 1, a postgres variant without a server fails instead of skipping (CI).
pub(crate) const REQUIRE_POSTGRES_VAR: &str = "CIS490_REQUIRE_POSTGRES";

/// The PostgreSQL server for tests, or None (printing why) when the test should skip.
pub(crate) fn postgres_url() -> Option<String> {
    match std::env::var(POSTGRES_URL_VAR) {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            assert!(
                std::env::var(REQUIRE_POSTGRES_VAR).as_deref() != Ok("1"),
                "{REQUIRE_POSTGRES_VAR}=1 but {POSTGRES_URL_VAR} is not set: start a server \
                 with `eval \"$(.ci/postgres.sh start)\"`"
            );
            eprintln!(
                "skipped: the postgres variant needs a server ({POSTGRES_URL_VAR}=postgresql://...; \
                 `eval \"$(.ci/postgres.sh start)\"` starts a private one)"
            );
            None
        }
    }
}

/// A queue for a test, on either backend; derefs to the trait.
pub(crate) struct TestQueue {
    queue: Option<Box<dyn JobQueue>>,
    database: Option<TestDatabase>,
    /// The postgres variant's database, for a second queue (server) on it.
    pub(crate) url: Option<String>,
}

impl std::ops::Deref for TestQueue {
    type Target = dyn JobQueue;
    fn deref(&self) -> &(dyn JobQueue + 'static) {
        match &self.queue {
            Some(q) => q.as_ref(),
            None => unreachable!("the queue is only taken in drop"),
        }
    }
}

impl Drop for TestQueue {
    fn drop(&mut self) {
        // The queue's connections close before its database is dropped.
        self.queue.take();
        self.database.take();
    }
}

/// A fresh PostgreSQL database for a test that needs more than one queue on it (a leader
/// lock, a second server), dropped with it.
pub(crate) struct ScratchDatabase {
    _database: TestDatabase,
    url: String,
}

impl ScratchDatabase {
    pub(crate) fn url(&self) -> &str {
        &self.url
    }
}

/// A [`ScratchDatabase`], or None (printing why) when the test should skip.
pub(crate) fn postgres_database() -> Option<ScratchDatabase> {
    let admin = postgres_url()?;
    let (database, url) = TestDatabase::create(&admin);
    Some(ScratchDatabase {
        _database: database,
        url,
    })
}

/// A database made for one test (`cis490_test_<random>`), dropped with it.
struct TestDatabase {
    admin_url: String,
    name: String,
}

impl TestDatabase {
    fn create(admin_url: &str) -> (TestDatabase, String) {
        let name = format!("cis490_test_{}", hex::encode(rand::random::<[u8; 8]>()));
        let mut admin =
            postgres::Client::connect(admin_url, postgres::NoTls).expect("the test server answers");
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .expect("a test database can be made");
        // The URL's path is the database: the admin URL with the new name instead.
        let (base, rest) = match admin_url.split_once('?') {
            Some((base, query)) => (base, format!("?{query}")),
            None => (admin_url, String::new()),
        };
        let base = base.rsplit_once('/').map_or(base, |(b, _)| b);
        let url = format!("{base}/{name}{rest}");
        (
            TestDatabase {
                admin_url: admin_url.to_string(),
                name,
            },
            url,
        )
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let dropped =
            postgres::Client::connect(&self.admin_url, postgres::NoTls).and_then(|mut admin| {
                admin.batch_execute(&format!("DROP DATABASE {} WITH (FORCE)", self.name))
            });
        if let Err(e) = dropped {
            eprintln!("could not drop test database {}: {e}", self.name);
        }
    }
}

impl Backend {
    /// A queue on this backend with the default config and its own manual clock.
    pub(crate) fn queue(self) -> TestQueue {
        self.queue_on(&manual_clock(), QueueConfig::default())
    }

    /// A queue on this backend on `clock`. The postgres variant's caller checked
    /// [`postgres_url`] (the macro does).
    pub(crate) fn queue_on(self, clock: &Arc<ManualClock>, config: QueueConfig) -> TestQueue {
        match self {
            Backend::Sqlite => TestQueue {
                queue: Some(Box::new(queue_on(clock, config))),
                database: None,
                url: None,
            },
            Backend::Postgres => {
                let admin = postgres_url().expect("the caller checked for a server");
                let (database, url) = TestDatabase::create(&admin);
                let queue = super::PgQueue::open_with_clock(&url, config, clock.clone())
                    .expect("a queue opens on the test database");
                TestQueue {
                    queue: Some(Box::new(queue)),
                    database: Some(database),
                    url: Some(url),
                }
            }
        }
    }
}

/// Instantiates each named `fn name(b: Backend)` twice, as `name::sqlite` and
/// `name::postgres` (which skips, saying why, without a server; see [`postgres_url`]).
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[test]
                fn sqlite() {
                    super::$name($crate::queue::test_support::Backend::Sqlite);
                }

                #[test]
                fn postgres() {
                    if $crate::queue::test_support::postgres_url().is_some() {
                        super::$name($crate::queue::test_support::Backend::Postgres);
                    }
                }
            }
        )*
    };
}
pub(crate) use on_both_backends;
