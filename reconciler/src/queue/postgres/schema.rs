//! The PostgreSQL schema: numbered migrations recorded in `schema_migrations`, applied in
//! order. Never edit a shipped migration: append a new one. Its own history, not SQLite's:
//! migration 1 is the SQLite schema as of its migration 13, in PostgreSQL's types (BIGINT
//! for integers and times in ms since the epoch, BOOLEAN flags, JSON kept as TEXT so that
//! both backends store the same bytes). Job IDs and worker names compare bytewise
//! (`COLLATE "C"`), as SQLite compares them, whatever the database's locale: listings
//! page in the same order on both backends.

use crate::queue::QueueError;

/// Migration N (1-based) is `MIGRATIONS[N - 1]`.
const MIGRATIONS: &[&str] = &[
    // 1: everything the SQLite queue has after its migration 13.
    r#"
CREATE TABLE jobs (
    id               TEXT COLLATE "C" PRIMARY KEY,
    spec             TEXT NOT NULL,
    status           TEXT NOT NULL,
    tombstoned       BOOLEAN NOT NULL DEFAULT FALSE,
    priority         BIGINT NOT NULL,
    manifest_order   BIGINT NOT NULL,
    model            TEXT NOT NULL,
    mode             TEXT NOT NULL,
    require_cuda     BOOLEAN NOT NULL,
    prefer_cuda      BOOLEAN NOT NULL,
    min_vram_gib     DOUBLE PRECISION NOT NULL,
    min_ram_gib      DOUBLE PRECISION NOT NULL,
    allowed_hosts    TEXT NOT NULL,
    placement        TEXT NOT NULL DEFAULT '{}',
    worker           TEXT,
    attempts         BIGINT NOT NULL DEFAULT 0,
    lease_attempt    BIGINT,
    lease_token      TEXT,
    lease_expires_at BIGINT,
    trainer_failures BIGINT NOT NULL DEFAULT 0,
    lease_expiries   BIGINT NOT NULL DEFAULT 0,
    host_failures    BIGINT NOT NULL DEFAULT 0,
    artifact_id      TEXT,
    error_reason     TEXT,
    error_exit_code  BIGINT,
    error_log_tail   TEXT,
    log_tail         TEXT,
    created_at       BIGINT NOT NULL,
    updated_at       BIGINT NOT NULL,
    pending_since    BIGINT NOT NULL,
    started_at       BIGINT,
    finished_at      BIGINT
);
-- The claim walks: claimable jobs only, in the queue order of a CUDA worker (prefer_cuda
-- first within a priority) and of a CPU worker (prefer_cuda last, no require_cuda jobs).
CREATE INDEX jobs_claim_cuda ON jobs (priority DESC, prefer_cuda DESC, manifest_order, id)
    WHERE status = 'pending' AND NOT tombstoned;
CREATE INDEX jobs_claim_cpu ON jobs (priority DESC, prefer_cuda ASC, manifest_order, id)
    WHERE status = 'pending' AND NOT tombstoned AND NOT require_cuda;
CREATE INDEX jobs_listing ON jobs (priority DESC, manifest_order, id);
CREATE INDEX jobs_lease ON jobs (lease_expires_at) WHERE lease_token IS NOT NULL;
CREATE INDEX jobs_worker ON jobs (worker, status) WHERE status IN ('claimed', 'running');
CREATE INDEX jobs_status ON jobs (status, tombstoned);

CREATE TABLE workers (
    name             TEXT COLLATE "C" PRIMARY KEY,
    capability       TEXT NOT NULL,
    first_seen       BIGINT NOT NULL,
    last_seen        BIGINT NOT NULL,
    cordoned         BOOLEAN NOT NULL DEFAULT FALSE,
    draining         BOOLEAN NOT NULL DEFAULT FALSE,
    instance_id      TEXT,
    instance_pid     BIGINT,
    host_problem     TEXT,
    host_problem_job TEXT,
    host_problem_at  BIGINT
);

CREATE TABLE hosts (
    name    TEXT PRIMARY KEY,
    policy  TEXT NOT NULL
);

-- `seq` comes from `event_seq`, never from a sequence: a sequence hands out numbers in the
-- order transactions ask, not the order they commit, so a reader could pass a number whose
-- transaction commits later (migration 2 numbers committed events, `sequencer.rs`).
CREATE TABLE events (
    seq     BIGINT PRIMARY KEY,
    at      BIGINT NOT NULL,
    job_id  TEXT,
    worker  TEXT,
    kind    TEXT NOT NULL,
    message TEXT NOT NULL
);
CREATE INDEX events_job ON events (job_id, seq);
CREATE TABLE event_seq (
    id  INTEGER PRIMARY KEY CHECK (id = 1),
    n   BIGINT NOT NULL
);
INSERT INTO event_seq (id, n) VALUES (1, 0);

CREATE TABLE manifest (
    id              INTEGER PRIMARY KEY CHECK (id = 1),
    path            TEXT NOT NULL DEFAULT '',
    sha256          TEXT,
    generation      BIGINT NOT NULL DEFAULT 0,
    last_applied_at BIGINT,
    last_errors     TEXT NOT NULL DEFAULT '[]',
    last_error_at   BIGINT,
    warnings        TEXT NOT NULL DEFAULT '[]'
);
INSERT INTO manifest (id) VALUES (1);

CREATE TABLE worker_tokens (
    name          TEXT PRIMARY KEY,
    token_sha256  TEXT NOT NULL UNIQUE,
    created_at    BIGINT NOT NULL
);

-- `id` keeps the order uploads were recorded in (SQLite's rowid).
CREATE TABLE uploads (
    id           BIGSERIAL PRIMARY KEY,
    job_id       TEXT NOT NULL,
    attempt      BIGINT NOT NULL,
    lease_token  TEXT NOT NULL,
    artifact_id  TEXT NOT NULL,
    worker       TEXT NOT NULL,
    size_bytes   BIGINT NOT NULL,
    at           BIGINT NOT NULL,
    UNIQUE (job_id, lease_token, artifact_id)
);
CREATE INDEX uploads_artifact ON uploads (artifact_id);
CREATE INDEX uploads_attempt ON uploads (job_id, attempt, artifact_id);

CREATE TABLE job_logs (
    job_id       TEXT NOT NULL,
    attempt      BIGINT NOT NULL,
    worker       TEXT NOT NULL,
    lease_token  TEXT NOT NULL,
    source_next  BIGINT NOT NULL,
    size         BIGINT NOT NULL,
    kept_bytes   BIGINT NOT NULL,
    dropped      BIGINT NOT NULL,
    updated_at   BIGINT NOT NULL,
    PRIMARY KEY (job_id, attempt)
);
CREATE TABLE job_log_chunks (
    job_id   TEXT NOT NULL,
    attempt  BIGINT NOT NULL,
    start    BIGINT NOT NULL,
    data     BYTEA NOT NULL,
    PRIMARY KEY (job_id, attempt, start)
);
CREATE TABLE job_worker_failures (
    job_id            TEXT NOT NULL,
    worker            TEXT NOT NULL,
    trainer_failures  BIGINT NOT NULL DEFAULT 0,
    host_failures     BIGINT NOT NULL DEFAULT 0,
    last_reason       TEXT NOT NULL,
    at                BIGINT NOT NULL,
    PRIMARY KEY (job_id, worker)
);
CREATE INDEX job_worker_failures_worker ON job_worker_failures (worker, job_id);

CREATE TABLE attempt_results (
    job_id       TEXT NOT NULL,
    attempt      BIGINT NOT NULL,
    lease_token  TEXT NOT NULL,
    worker       TEXT NOT NULL,
    outcome      TEXT,
    progress     TEXT,
    series       TEXT NOT NULL DEFAULT '[]',
    metrics      TEXT,
    warnings     TEXT NOT NULL DEFAULT '[]',
    artifact_id  TEXT,
    started_at   BIGINT,
    finished_at  BIGINT,
    PRIMARY KEY (job_id, lease_token)
);
"#,
    // 2: events are written unnumbered and numbered afterwards in the order they became
    // visible (`sequencer.rs`), so event writers no longer queue on the counter's row lock
    // through their commits. `id` is the order of insertion, `seq` the number readers see.
    r#"
ALTER TABLE events DROP CONSTRAINT events_pkey;
ALTER TABLE events ALTER COLUMN seq DROP NOT NULL;
ALTER TABLE events ADD COLUMN id BIGSERIAL PRIMARY KEY;
CREATE UNIQUE INDEX events_seq ON events (seq);
CREATE INDEX events_unnumbered ON events (id) WHERE seq IS NULL;
"#,
    // 3: job listings page by a cursor in queue order, `(-priority, manifest_order, id)`:
    // an index in exactly that order lets a page start at its cursor and stop at its limit.
    r#"
CREATE INDEX jobs_listing_cursor ON jobs ((-priority), manifest_order, id);
"#,
    // 4: the artifact index (SQLite's migration 14): one row per stored byte sequence.
    r#"
CREATE TABLE artifacts (
    artifact_id  TEXT PRIMARY KEY,
    size_bytes   BIGINT NOT NULL,
    job_id       TEXT NOT NULL,
    attempt      BIGINT,
    model        TEXT NOT NULL,
    mode         TEXT NOT NULL,
    worker       TEXT NOT NULL,
    stored_at    BIGINT NOT NULL
);
"#,
    // 5: keys the servers of one database share (SQLite's migration 15).
    r#"
CREATE TABLE secrets (
    name   TEXT PRIMARY KEY,
    value  BYTEA NOT NULL
);
"#,
];

/// Any constant: the advisory lock that lets one server at a time migrate a database.
const MIGRATION_LOCK: i64 = 0x0c15_4900;

/// Brings the database to the newest schema, each migration in its own transaction. Several
/// servers starting on one database take turns (an advisory lock per transaction).
pub(crate) fn migrate(client: &mut postgres::Client) -> Result<(), QueueError> {
    client.batch_execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations (\
             version BIGINT PRIMARY KEY, \
             applied_at TIMESTAMPTZ NOT NULL DEFAULT now())",
    )?;
    loop {
        let mut tx = client.transaction()?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])?;
        let current: i64 = tx
            .query_one(
                "SELECT COALESCE(MAX(version), 0) FROM schema_migrations",
                &[],
            )?
            .try_get(0)?;
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
        tx.batch_execute(sql)?;
        let next = i64::try_from(current + 1).unwrap_or(i64::MAX);
        tx.execute(
            "INSERT INTO schema_migrations (version) VALUES ($1)",
            &[&next],
        )?;
        tx.commit()?;
    }
}
