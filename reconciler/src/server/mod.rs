//! The HTTP API (axum) and the background loops of `serve`.
//!
//! [`Server::build`] reads the TLS files, opens the queue and the artifact store (running
//! the store's repair scan), reconciles the manifest once and starts watching it;
//! [`Server::run`] serves on a listener it is given (tests bind `127.0.0.1:0`), plain HTTP or
//! TLS ([`listen`]), until the shutdown future resolves, with the watch loop, the periodic
//! resync and the sweeper running beside it under one `select!` that fails loudly if any of
//! them stops.

pub mod auth;
pub mod claim_handoff;
pub mod config;
pub mod dashboard;
pub mod delete_worker;
pub mod error;
pub mod extract;
pub mod hold;
pub mod identity;
pub mod leader;
pub mod limits;
pub mod listen;
pub mod logs;
pub mod manifest_write;
pub mod meta;
pub mod operator;
pub mod read;
pub mod reconcile;
pub mod results;
pub mod routes;
pub mod sweeper;
pub mod telemetry;
pub mod tls;
pub mod watch;
pub mod worker;

use std::future::Future;
use std::sync::Arc;

use tokio::net::TcpListener;

use crate::queue::postgres::leader::LeaderLock;
use crate::queue::{PgQueue, Queue, QueueError, SharedQueue};
use crate::store::{ArtifactStore, FsBlobs, QueueIndex, RecoveryReport, StoreError};
use config::Database;
use leader::Leadership;

pub use config::{Secret, SecurityPosture, ServerConfig, TlsSettings};
pub use error::ApiFailure;
pub use limits::RequestCaps;
pub use listen::ConnectionOptions;
pub use reconcile::{ReconcileError, Reconciler, Trigger};

/// What every handler can reach. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub queue: SharedQueue,
    pub store: ArtifactStore,
    pub config: Arc<ServerConfig>,
    pub reconciler: Arc<Reconciler>,
    /// Becomes true when shutdown begins: long-polls answer at once.
    pub shutdown: tokio::sync::watch::Receiver<bool>,
    /// TLS, client certificates and what `--insecure` exposes (`GET /v1/health`).
    pub posture: Arc<SecurityPosture>,
    /// Caps on uploads and long-polls, and the listener's counters.
    pub budgets: Arc<limits::Budgets>,
    /// Counters and histograms for `/metrics`.
    pub telemetry: Arc<telemetry::Telemetry>,
    /// The dashboard's secret for CSRF tokens, new at every start (signing in again after a
    /// restart is the price of keeping no secret on disk).
    pub dashboard_key: Arc<dashboard::session::SessionKey>,
}

/// Runs a queue call on the blocking pool (rusqlite blocks).
pub(crate) async fn blocking<T, F>(f: F) -> Result<T, ApiFailure>
where
    F: FnOnce() -> Result<T, QueueError> + Send + 'static,
    T: Send + 'static,
{
    Ok(tokio::task::spawn_blocking(f).await??)
}

/// Why the server could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The state directory could not be created.
    #[error("cannot create the state directory {path}: {source}")]
    StateDir {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// The manifest file is missing (or is not a file): watching its directory would watch
    /// the wrong place, and there is nothing to reconcile.
    #[error(
        "the manifest {path} does not exist or is not a file: create it (see \
         etc/training_manifest.toml.example) or pass --manifest with the right path"
    )]
    NoManifest { path: String },
    /// Another server holds the state dir.
    #[error(transparent)]
    Locked(#[from] cis490_api::state_lock::StateLockError),
    /// The queue database could not be opened.
    #[error("cannot open the queue database: {0}")]
    Queue(#[from] QueueError),
    /// The artifact store could not be opened or repaired.
    #[error("artifact store: {0}")]
    Store(#[from] StoreError),
    /// The start-up reconcile failed for a reason other than an invalid manifest.
    #[error("start-up reconcile failed: {0}")]
    Reconcile(ReconcileError),
    /// The TLS files are unusable.
    #[error("TLS: {0}")]
    Tls(#[from] tls::TlsError),
    /// The listener's address could not be read.
    #[error("reading the listening address: {0}")]
    Listener(std::io::Error),
    /// A background loop ended, which it never should.
    #[error("background loop {0} stopped")]
    LoopStopped(&'static str),
}

/// A built server, ready to [`Server::run`].
pub struct Server {
    state: AppState,
    stop: tokio::sync::watch::Sender<bool>,
    watch: Option<watch::ManifestWatch>,
    recovery: RecoveryReport,
    state_lock: cis490_api::state_lock::StateLock,
    tls: Option<tokio_rustls::TlsAcceptor>,
    connections: ConnectionOptions,
}

impl Server {
    /// Opens the queue and store, repairs the store, reconciles the manifest once (an
    /// invalid manifest is recorded and the server starts with the last good state), and
    /// starts watching the manifest's directory.
    pub async fn build(config: ServerConfig) -> Result<Server, ServerError> {
        let config = Arc::new(config);
        if !config.manifest.is_file() {
            return Err(ServerError::NoManifest {
                path: config.manifest.display().to_string(),
            });
        }
        // First: a bad certificate path is a configuration error, found before any state
        // is touched.
        let tls = match &config.tls {
            Some(settings) => Some(tokio_rustls::TlsAcceptor::from(tls::server_config(
                settings,
            )?)),
            None => None,
        };
        std::fs::create_dir_all(&config.state_dir).map_err(|source| ServerError::StateDir {
            path: config.state_dir.display().to_string(),
            source,
        })?;
        // Before anything touches the store: its repair scan would delete the in-flight
        // uploads of a server already running on this dir.
        let state_lock = cis490_api::state_lock::StateLock::acquire(
            &config.state_dir,
            "server.lock",
            "cis490-reconciler",
        )?;
        let database = config.database.clone();
        let sqlite_file = config.database_path();
        let queue_config = config.queue.clone();
        let clock = Arc::clone(&config.clock);
        // Blocking: the sync PostgreSQL client must not run on an async runtime thread.
        let (queue, leadership): (SharedQueue, Leadership) =
            tokio::task::spawn_blocking(move || match (database, sqlite_file) {
                (Some(Database::Postgres(url)), _) => {
                    let queue = PgQueue::open_with_clock(&url, queue_config, clock)?;
                    let lock = LeaderLock::new(&url)?;
                    let leadership = Leadership::campaign(lock, leader::CAMPAIGN_INTERVAL);
                    Ok((Arc::new(queue) as SharedQueue, leadership))
                }
                (_, Some(path)) => Queue::open_with_clock(&path, queue_config, clock)
                    .map(|q| (Arc::new(q) as SharedQueue, Leadership::sole())),
                (_, None) => Err(QueueError::corrupt("no database configured")),
            })
            .await
            .map_err(|e| ServerError::Queue(QueueError::Io(std::io::Error::other(e))))??;
        let store_root = config.store_root();
        let max_upload = config.max_upload_bytes;
        let index = Arc::new(QueueIndex(queue.clone()));
        let (store, recovery) = tokio::task::spawn_blocking(move || {
            let blobs = FsBlobs::open(&store_root, max_upload)?;
            let store = ArtifactStore::new(Arc::new(blobs), index);
            let report = store.recover()?;
            Ok::<_, StoreError>((store, report))
        })
        .await
        .map_err(|e| {
            ServerError::Store(StoreError::Io {
                context: "opening the store".into(),
                source: std::io::Error::other(e),
            })
        })??;

        let reconciler = Reconciler::new(
            queue.clone(),
            config.manifest.clone(),
            config.max_manifest_jobs,
            leadership,
        );
        // Watch before the first read, so an edit racing the start-up reconcile is seen.
        let watch = if config.watch {
            match watch::ManifestWatch::start(&config.manifest) {
                Ok(w) => Some(w),
                Err(e) => {
                    tracing::warn!(error = %e, manifest = %config.manifest.display(), "cannot watch the manifest's directory; changes are picked up by the periodic resync and POST /v1/manifest/reload");
                    None
                }
            }
        } else {
            None
        };
        match reconciler.reconcile(Trigger::Startup).await {
            Ok(_) | Err(ReconcileError::Invalid(_)) => {}
            Err(e) => return Err(ServerError::Reconcile(e)),
        }
        let (stop, shutdown) = tokio::sync::watch::channel(false);
        // Whether the address is exposed is known once `run` has the listener.
        let posture = Arc::new(SecurityPosture::of(&config, &config.listen, false));
        let connections = config.connections;
        let telemetry = Arc::new(telemetry::Telemetry::new(reconciler.reconciles()));
        Ok(Server {
            state: AppState {
                queue,
                store,
                telemetry,
                reconciler,
                shutdown,
                posture,
                budgets: Arc::new(limits::Budgets::new(config.caps)),
                dashboard_key: Arc::new(dashboard::session::SessionKey::random()),
                config,
            },
            stop,
            watch,
            recovery,
            state_lock,
            tls,
            connections,
        })
    }

    pub fn queue(&self) -> &SharedQueue {
        &self.state.queue
    }

    pub fn store(&self) -> &ArtifactStore {
        &self.state.store
    }

    /// What the store's start-up scan repaired.
    pub fn recovery(&self) -> &RecoveryReport {
        &self.recovery
    }

    /// Replaces the connection limits of the config (timeouts, the connection cap).
    pub fn with_connection_options(mut self, options: ConnectionOptions) -> Self {
        self.connections = options;
        self
    }

    /// Whether [`Server::run`] speaks TLS.
    pub fn tls(&self) -> bool {
        self.tls.is_some()
    }

    /// The API router (for tests that drive it without a socket).
    pub fn router(&self) -> axum::Router {
        routes::router(self.state.clone())
    }

    /// Serves on `listener` (TLS when the config has certificates) until `shutdown`
    /// resolves; in-flight requests finish (waiting claims and event polls answer at once),
    /// then the loops stop and the database closes. What `--insecure` exposes on the bound
    /// address is logged as warnings first and reported by `GET /v1/health`.
    pub async fn run<F>(self, listener: TcpListener, shutdown: F) -> Result<(), ServerError>
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let Server {
            mut state,
            stop,
            watch,
            state_lock,
            tls,
            connections,
            ..
        } = self;
        let addr = listener.local_addr().map_err(ServerError::Listener)?;
        let posture =
            SecurityPosture::of(&state.config, &addr.to_string(), !addr.ip().is_loopback());
        for warning in &posture.warnings {
            tracing::warn!("{warning}");
        }
        state.posture = Arc::new(posture);
        let app = routes::router(state.clone());
        let traffic = Arc::clone(&state.budgets.traffic);
        let serve = listen::serve(listener, tls, app, connections, traffic, async move {
            shutdown.await;
            tracing::info!("shutting down: finishing in-flight requests");
            let _ = stop.send(true);
        });
        let config = Arc::clone(&state.config);
        let watch_loop = async {
            match watch {
                Some(w) => {
                    w.run(Arc::clone(&state.reconciler), config.watch_debounce)
                        .await
                }
                None => std::future::pending().await,
            }
        };
        let result = tokio::select! {
            () = serve => Ok(()),
            _ = watch_loop => Err(ServerError::LoopStopped("manifest watch")),
            _ = watch::resync(Arc::clone(&state.reconciler), config.resync_interval) => {
                Err(ServerError::LoopStopped("manifest resync"))
            }
            _ = sweeper::run(
                state.queue.clone(),
                Arc::clone(&state.telemetry),
                state.reconciler.leadership().clone(),
                config.sweep_interval,
            ) => {
                Err(ServerError::LoopStopped("sweeper"))
            }
            _ = leader::reconcile_on_takeover(Arc::clone(&state.reconciler)) => {
                Err(ServerError::LoopStopped("leader campaign"))
            }
        };
        tracing::info!("stopped");
        drop(state_lock);
        result
    }
}
