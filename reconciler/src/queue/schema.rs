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
    // 2: the claim indexes hold only claimable jobs (partial) and every column the claim
    // query filters on (covering), so a claim that skips jobs this worker cannot run
    // (pinned to other hosts, needing CUDA or more RAM) skips them inside the index
    // instead of looking each one up in the table. Profile at 50,000 jobs: the table
    // lookups of skipped rows were the largest cost of a claim.
    r#"
DROP INDEX jobs_claim_cuda;
DROP INDEX jobs_claim_cpu;
CREATE INDEX jobs_claim_cuda ON jobs
    (priority DESC, prefer_cuda DESC, manifest_order, id, require_cuda, min_vram_gib,
     min_ram_gib, model, allowed_hosts, pending_since)
    WHERE status = 'pending' AND tombstoned = 0;
CREATE INDEX jobs_claim_cpu ON jobs
    (priority DESC, prefer_cuda ASC, manifest_order, id, require_cuda, min_vram_gib,
     min_ram_gib, model, allowed_hosts, pending_since)
    WHERE status = 'pending' AND tombstoned = 0;
"#,
    // 3: claims skip nothing they cannot take. Profile at 100,000 jobs: jobs pinned by
    // `allowed_hosts` (8 of 64 agents may take them) piled up at the head of the queue
    // order and every other agent stepped over them on every claim. Now the shared claim
    // indexes hold only unpinned jobs, and pinned jobs have their own indexes, led by
    // their host list: a claim walks the shared index and, for each distinct host list
    // that names the worker, that list's part of the pinned index, and takes the best of
    // the first job each walk finds (`matching::i_pick`). One entry per pinned job (a
    // table of (host, job) pairs would write one per allowed host). The CPU indexes
    // leave out `require_cuda` jobs, which a CPU worker never takes.
    // The partial indexes' conditions nest to the right on purpose: SQLite treats a
    // column that such a condition fixes to a constant (status, tombstoned) as held by
    // the index only when the `AND`s nest that way, and otherwise looks up every row the
    // claim steps over in the table.
    // `jobs_lease` and `jobs_worker` become partial on leased jobs (the sweep and
    // `max_concurrent` only look for those), so an apply writes no entries to them and a
    // claim one instead of two.
    r#"
DROP INDEX jobs_claim_cuda;
DROP INDEX jobs_claim_cpu;
CREATE INDEX jobs_claim_cuda ON jobs
    (priority DESC, prefer_cuda DESC, manifest_order, id, require_cuda, min_vram_gib,
     min_ram_gib, model, allowed_hosts, pending_since)
    WHERE status = 'pending' AND (tombstoned = 0 AND allowed_hosts = '[]');
CREATE INDEX jobs_claim_cpu ON jobs
    (priority DESC, prefer_cuda ASC, manifest_order, id, require_cuda, min_vram_gib,
     min_ram_gib, model, allowed_hosts, pending_since)
    WHERE status = 'pending' AND (tombstoned = 0 AND (allowed_hosts = '[]' AND require_cuda = 0));
CREATE INDEX jobs_pinned_cuda ON jobs
    (allowed_hosts, priority DESC, prefer_cuda DESC, manifest_order, id, require_cuda,
     min_vram_gib, min_ram_gib, model, pending_since)
    WHERE status = 'pending' AND (tombstoned = 0 AND allowed_hosts <> '[]');
CREATE INDEX jobs_pinned_cpu ON jobs
    (allowed_hosts, priority DESC, prefer_cuda ASC, manifest_order, id, require_cuda,
     min_vram_gib, min_ram_gib, model, pending_since)
    WHERE status = 'pending' AND (tombstoned = 0 AND (allowed_hosts <> '[]' AND require_cuda = 0));
DROP INDEX jobs_lease;
CREATE INDEX jobs_lease ON jobs (lease_expires_at) WHERE lease_token IS NOT NULL;
DROP INDEX jobs_worker;
CREATE INDEX jobs_worker ON jobs (worker, status) WHERE status IN ('claimed', 'running');
"#,
    // 4: per-worker tokens (`cis490-reconciler tokens issue NAME`). Only the token's sha256
    // is kept; its UNIQUE index is what every request with a per-worker token looks up.
    r#"
CREATE TABLE worker_tokens (
    name          TEXT PRIMARY KEY NOT NULL,
    token_sha256  TEXT NOT NULL UNIQUE,
    created_at    INTEGER NOT NULL          -- ms since the epoch
) STRICT;
"#,
    // 5: one agent per name: the agent process (instance) that holds each worker name. NULL
    // when no agent that sends an instance ID holds it (old agents, or one that signed off).
    r#"
ALTER TABLE workers ADD COLUMN instance_id TEXT;
ALTER TABLE workers ADD COLUMN instance_pid INTEGER;
"#,
    // 6: every upload the store accepted, under the lease it was made with, so a completion
    // can name only an artifact its own lease uploaded.
    r#"
CREATE TABLE uploads (
    job_id       TEXT NOT NULL,
    attempt      INTEGER NOT NULL,
    lease_token  TEXT NOT NULL,
    artifact_id  TEXT NOT NULL,
    worker       TEXT NOT NULL,
    size_bytes   INTEGER NOT NULL,
    at           INTEGER NOT NULL           -- ms since the epoch
) STRICT;
CREATE INDEX uploads_lease ON uploads (job_id, lease_token);
CREATE INDEX uploads_artifact ON uploads (artifact_id);
"#,
    // 7: the artifact listing is the uploads table, so each job completed before uploads
    // were recorded gets the row of its artifact (under its last attempt; an empty lease
    // token, which no lease has). Without it a job whose bytes another job had stored first
    // would be missing from the listing.
    r#"
INSERT INTO uploads (job_id, attempt, lease_token, artifact_id, worker, size_bytes, at)
SELECT id, attempts, '', artifact_id, COALESCE(worker, ''), 0, COALESCE(finished_at, updated_at)
FROM jobs
WHERE artifact_id IS NOT NULL
  AND NOT EXISTS (SELECT 1 FROM uploads u WHERE u.job_id = jobs.id AND u.artifact_id = jobs.artifact_id);
"#,
    // 8: paged listings. `jobs_listing` is the queue order `GET /v1/jobs` pages through
    // (none of its columns changes when a job's state does, so claims write nothing to
    // it). An upload repeated under one lease is kept once (`uploads_once`, whose prefix
    // also serves the per-lease lookups `uploads_lease` did), and `uploads_attempt` finds
    // the first upload of each (job, attempt, artifact) for the artifact listing.
    r#"
CREATE INDEX jobs_listing ON jobs (priority DESC, manifest_order, id);
DELETE FROM uploads WHERE rowid NOT IN
    (SELECT MIN(rowid) FROM uploads GROUP BY job_id, lease_token, artifact_id);
CREATE UNIQUE INDEX uploads_once ON uploads (job_id, lease_token, artifact_id);
DROP INDEX uploads_lease;
CREATE INDEX uploads_attempt ON uploads (job_id, attempt, artifact_id);
"#,
    // 9: each attempt's whole log, streamed by the agent under its lease (`logs.rs`), and
    // which workers a job failed on (a retry prefers another host; a failure of the host
    // itself flags the worker and does not use an attempt).
    // `job_logs` holds one row per (job, attempt): the lease whose stream is being
    // appended, how much of that lease's log file is in (`source_next`), the log's length
    // as kept (`size`, the offset space readers page by) and the bytes kept and dropped.
    // `job_log_chunks` holds the kept text, in pieces addressed by their start offset.
    r#"
CREATE TABLE job_logs (
    job_id       TEXT NOT NULL,
    attempt      INTEGER NOT NULL,
    worker       TEXT NOT NULL,
    lease_token  TEXT NOT NULL,
    source_next  INTEGER NOT NULL,
    size         INTEGER NOT NULL,
    kept_bytes   INTEGER NOT NULL,
    dropped      INTEGER NOT NULL,
    updated_at   INTEGER NOT NULL,           -- ms since the epoch
    PRIMARY KEY (job_id, attempt)
) STRICT;
CREATE TABLE job_log_chunks (
    job_id   TEXT NOT NULL,
    attempt  INTEGER NOT NULL,
    start    INTEGER NOT NULL,
    data     BLOB NOT NULL,                  -- UTF-8 text
    PRIMARY KEY (job_id, attempt, start)
) STRICT, WITHOUT ROWID;
CREATE TABLE job_worker_failures (
    job_id            TEXT NOT NULL,
    worker            TEXT NOT NULL,
    trainer_failures  INTEGER NOT NULL DEFAULT 0,
    host_failures     INTEGER NOT NULL DEFAULT 0,
    last_reason       TEXT NOT NULL,
    at                INTEGER NOT NULL,      -- ms since the epoch
    PRIMARY KEY (job_id, worker)
) STRICT, WITHOUT ROWID;
CREATE INDEX job_worker_failures_worker ON job_worker_failures (worker, job_id);
ALTER TABLE jobs ADD COLUMN host_failures INTEGER NOT NULL DEFAULT 0;
ALTER TABLE workers ADD COLUMN host_problem TEXT;
ALTER TABLE workers ADD COLUMN host_problem_job TEXT;
ALTER TABLE workers ADD COLUMN host_problem_at INTEGER;
"#,
    // 10: training results per attempt (one row per lease: an attempt number repeats after a
    // lease is handed back or the job requeued), written only for attempts that report
    // something: the latest progress point and the series (heartbeats append while it
    // runs; the agent's history replaces it at the end), the final metrics, the trainer's
    // file warnings, and how the attempt ended. A completion writes its row in the
    // transaction that completes the job, so the row's `finished_at` is the job's: that is
    // how the results listing finds the attempt that completed a job (jobs completed
    // without a report, and before this table, are listed from the job alone). One b-tree
    // (WITHOUT ROWID, no other index): claims never touch the table, and a heartbeat or a
    // completion that reports writes one entry.
    r#"
CREATE TABLE attempt_results (
    job_id       TEXT NOT NULL,
    attempt      INTEGER NOT NULL,
    lease_token  TEXT NOT NULL,
    worker       TEXT NOT NULL,
    outcome      TEXT,                      -- NULL while running; completed, failed, released
    progress     TEXT,                      -- the latest point, JSON object
    series       TEXT NOT NULL DEFAULT '[]',
    metrics      TEXT,                      -- metrics.json, JSON object
    warnings     TEXT NOT NULL DEFAULT '[]',
    artifact_id  TEXT,
    started_at   INTEGER,                   -- ms since the epoch
    finished_at  INTEGER,
    PRIMARY KEY (job_id, lease_token)
) STRICT, WITHOUT ROWID;
"#,
    // 11: `GET /v1/events?worker=` (and `describe worker`) walk one worker's events.
    r#"
CREATE INDEX events_worker ON events (worker, seq) WHERE worker IS NOT NULL;
"#,
    // 12: what a job asks of the worker beyond the columns of migration 1, copied from its
    // spec so that a claim reads it without decoding the spec: node_selector, cores and
    // gpus as a JSON object holding only what the job asks for ('{}' for most jobs, which
    // the claim then skips without parsing). Jobs stored before have none of these. The
    // claim indexes of migration 3 are made again with it at the end, so they still cover
    // the claim (a job the walk steps over costs an index step, not a table lookup).
    r#"
ALTER TABLE jobs ADD COLUMN placement TEXT NOT NULL DEFAULT '{}';
DROP INDEX jobs_claim_cuda;
DROP INDEX jobs_claim_cpu;
DROP INDEX jobs_pinned_cuda;
DROP INDEX jobs_pinned_cpu;
CREATE INDEX jobs_claim_cuda ON jobs
    (priority DESC, prefer_cuda DESC, manifest_order, id, require_cuda, min_vram_gib,
     min_ram_gib, model, allowed_hosts, pending_since, placement)
    WHERE status = 'pending' AND (tombstoned = 0 AND allowed_hosts = '[]');
CREATE INDEX jobs_claim_cpu ON jobs
    (priority DESC, prefer_cuda ASC, manifest_order, id, require_cuda, min_vram_gib,
     min_ram_gib, model, allowed_hosts, pending_since, placement)
    WHERE status = 'pending' AND (tombstoned = 0 AND (allowed_hosts = '[]' AND require_cuda = 0));
CREATE INDEX jobs_pinned_cuda ON jobs
    (allowed_hosts, priority DESC, prefer_cuda DESC, manifest_order, id, require_cuda,
     min_vram_gib, min_ram_gib, model, pending_since, placement)
    WHERE status = 'pending' AND (tombstoned = 0 AND allowed_hosts <> '[]');
CREATE INDEX jobs_pinned_cpu ON jobs
    (allowed_hosts, priority DESC, prefer_cuda ASC, manifest_order, id, require_cuda,
     min_vram_gib, min_ram_gib, model, pending_since, placement)
    WHERE status = 'pending' AND (tombstoned = 0 AND (allowed_hosts <> '[]' AND require_cuda = 0));
"#,
    // 13: `events_worker` is gone: each group commit wrote a page of it per worker (every
    // claim, heartbeat and completion event names its worker), which cost the full cycle a
    // quarter of its rate. A worker filter walks the log by seq in bounded windows instead
    // (`events::WORKER_FILTER_WINDOW`).
    r#"
DROP INDEX events_worker;
"#,
    // 14: the artifact index (`artifact_index.rs`): one row per byte sequence the store
    // holds, with the upload that first stored it, so that servers sharing a store keep one
    // index (the database) instead of each appending to a file in the store. The store's
    // start-up scan fills it from the blobs' own metadata.
    r#"
CREATE TABLE artifacts (
    artifact_id  TEXT PRIMARY KEY NOT NULL,
    size_bytes   INTEGER NOT NULL,
    job_id       TEXT NOT NULL,
    attempt      INTEGER,
    model        TEXT NOT NULL,
    mode         TEXT NOT NULL,
    worker       TEXT NOT NULL,
    stored_at    INTEGER NOT NULL           -- ms since the epoch
) STRICT, WITHOUT ROWID;
"#,
    // 15: keys the servers of one database share: the upload receipts' (`receipts.rs`),
    // made by the first server that opens the database.
    r#"
CREATE TABLE secrets (
    name   TEXT PRIMARY KEY NOT NULL,
    value  BLOB NOT NULL
) STRICT, WITHOUT ROWID;
"#,
];

/// Brings the database to the newest schema, each migration in its own transaction.
pub(crate) fn migrate(conn: &mut Connection) -> Result<(), QueueError> {
    migrate_to(conn, MIGRATIONS.len())
}

/// Brings the database to schema version `target` (tests build older databases with it).
pub(crate) fn migrate_to(conn: &mut Connection, target: usize) -> Result<(), QueueError> {
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
        let Some(sql) = MIGRATIONS.get(current).filter(|_| current < target) else {
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
