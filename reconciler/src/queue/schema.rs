//! Schema migrations, applied in order from the version recorded in `schema_version`.
//! Never edit a shipped migration: append a new one.

use rusqlite::{Connection, OptionalExtension, TransactionBehavior};

use super::QueueError;

/// Migration N (1-based) is `MIGRATIONS[N - 1]`.
const MIGRATIONS: &[&str] = &[
    // 1: jobs, workers, hosts, events, manifest status.
    r#"
CREATE TABLE jobs (
    id               TEXT PRIMARY KEY NOT NULL,
    spec             TEXT NOT NULL,          -- JobSpec as JSON
    status           TEXT NOT NULL,
    tombstoned       INTEGER NOT NULL DEFAULT 0,
    -- copies of spec fields that claims filter and order by
    priority         INTEGER NOT NULL,
    manifest_order   INTEGER NOT NULL,
    model            TEXT NOT NULL,
    mode             TEXT NOT NULL,
    require_cuda     INTEGER NOT NULL,
    prefer_cuda      INTEGER NOT NULL,
    min_vram_gib     REAL NOT NULL,
    min_ram_gib      REAL NOT NULL,
    allowed_hosts    TEXT NOT NULL,          -- JSON list; '[]' when any host may run it
    -- the lease and its holder
    worker           TEXT,
    attempts         INTEGER NOT NULL DEFAULT 0,  -- attempts used toward max_attempts
    lease_attempt    INTEGER,
    lease_token      TEXT,
    lease_expires_at INTEGER,                -- ms since the epoch
    trainer_failures INTEGER NOT NULL DEFAULT 0,
    lease_expiries   INTEGER NOT NULL DEFAULT 0,
    -- outcome
    artifact_id      TEXT,
    error_reason     TEXT,
    error_exit_code  INTEGER,
    error_log_tail   TEXT,
    log_tail         TEXT,
    -- times, ms since the epoch
    created_at       INTEGER NOT NULL,
    updated_at       INTEGER NOT NULL,
    pending_since    INTEGER NOT NULL,
    started_at       INTEGER,
    finished_at      INTEGER
) STRICT;
-- Queue order for each kind of worker: a CUDA worker sees prefer_cuda jobs first within a
-- priority, a non-CUDA worker sees them last. The claim query walks one of these.
CREATE INDEX jobs_claim_cuda ON jobs
    (status, tombstoned, priority DESC, prefer_cuda DESC, manifest_order, id);
CREATE INDEX jobs_claim_cpu ON jobs
    (status, tombstoned, priority DESC, prefer_cuda ASC, manifest_order, id);
CREATE INDEX jobs_queue ON jobs (status, tombstoned, priority DESC, manifest_order, id);
CREATE INDEX jobs_worker ON jobs (worker, status);
CREATE INDEX jobs_lease ON jobs (status, lease_expires_at);

CREATE TABLE workers (
    name        TEXT PRIMARY KEY NOT NULL,
    capability  TEXT NOT NULL,               -- Capability as JSON (last report)
    first_seen  INTEGER NOT NULL,
    last_seen   INTEGER NOT NULL,
    cordoned    INTEGER NOT NULL DEFAULT 0,
    draining    INTEGER NOT NULL DEFAULT 0
) STRICT;

CREATE TABLE hosts (
    name    TEXT PRIMARY KEY NOT NULL,
    policy  TEXT NOT NULL                    -- HostPolicy as JSON
) STRICT;

-- Kept forever: a job's history is part of the job.
CREATE TABLE events (
    seq     INTEGER PRIMARY KEY AUTOINCREMENT,
    at      INTEGER NOT NULL,
    job_id  TEXT,
    worker  TEXT,
    kind    TEXT NOT NULL,
    message TEXT NOT NULL
) STRICT;
CREATE INDEX events_job ON events (job_id, seq);

CREATE TABLE manifest (
    id              INTEGER PRIMARY KEY CHECK (id = 1),
    path            TEXT NOT NULL DEFAULT '',
    sha256          TEXT,
    generation      INTEGER NOT NULL DEFAULT 0,
    last_applied_at INTEGER,
    last_errors     TEXT NOT NULL DEFAULT '[]',
    last_error_at   INTEGER,
    warnings        TEXT NOT NULL DEFAULT '[]'
) STRICT;
INSERT INTO manifest (id) VALUES (1);
"#,
];

/// Brings the database to the newest schema, each migration in its own transaction.
pub(crate) fn migrate(conn: &mut Connection) -> Result<(), QueueError> {
    conn.execute_batch("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")?;
    loop {
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let current: i64 = tx
            .query_row("SELECT version FROM schema_version", [], |r| r.get(0))
            .optional()?
            .unwrap_or(0);
        let current = usize::try_from(current)
            .map_err(|_| QueueError::corrupt(format!("schema version {current}")))?;
        if current > MIGRATIONS.len() {
            return Err(QueueError::corrupt(format!(
                "database schema version {current} is newer than this program ({}); upgrade \
                 cis490-reconciler",
                MIGRATIONS.len()
            )));
        }
        let Some(sql) = MIGRATIONS.get(current) else {
            return Ok(());
        };
        tx.execute_batch(sql)?;
        tx.execute("DELETE FROM schema_version", [])?;
        tx.execute(
            "INSERT INTO schema_version (version) VALUES (?1)",
            [current as i64 + 1],
        )?;
        tx.commit()?;
    }
}

/// The newest schema version this build knows.
#[cfg(test)]
pub(crate) fn latest_version() -> usize {
    MIGRATIONS.len()
}
