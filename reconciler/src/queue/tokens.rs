//! Per-worker tokens: a random secret bound to one worker name, for labs without PKI.
//!
//! `cis490-reconciler tokens issue NAME` makes one and prints it once; the queue keeps only
//! its sha256 (with when it was made), so a copy of `queue.db` proves no worker. Issuing
//! again for a name replaces (rotates) its token; `revoke` deletes it. The server looks a
//! presented token up on every worker request, with no cache, so a revoke made by the CLI
//! while the server runs is refused from the next request on: the lookup is one SELECT
//! through the `token_sha256` UNIQUE index, on a read connection of its own (file
//! databases) that never waits for the writer.

use chrono::{DateTime, Utc};
use cis490_api::WorkerName;
use rand::Rng;
use rusqlite::{params, OptionalExtension};
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::events::{i_event, kind};
use super::rows::from_ms;
use super::{Queue, QueueError};

/// Every per-worker token starts with this, so a token in a log or a file is recognisable
/// and a bearer that lacks it needs no lookup.
pub const TOKEN_PREFIX: &str = "cis490w_";

/// Random bytes in a token (hex-encoded after the prefix).
const TOKEN_BYTES: usize = 32;

/// A token just issued: the only time its text exists outside the agent's host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuedToken {
    pub name: WorkerName,
    pub token: String,
    /// When the token it replaced was issued (None: the name had no token).
    pub replaced: Option<DateTime<Utc>>,
}

/// One worker's token as `tokens list` shows it (never the token).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WorkerTokenInfo {
    pub name: WorkerName,
    pub created_at: DateTime<Utc>,
}

/// The stored form of a token.
pub(crate) fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

pub(crate) fn new_token() -> String {
    // ThreadRng is a CSPRNG seeded from the OS.
    let bytes: [u8; TOKEN_BYTES] = rand::rng().random();
    format!("{TOKEN_PREFIX}{}", hex::encode(bytes))
}

/// True when the queue database at `path` holds per-worker tokens; false when it does not
/// exist yet or predates them. Read-only: `serve` asks before it opens the queue.
pub fn tokens_issued_in(path: &std::path::Path) -> Result<bool, QueueError> {
    if !path.exists() {
        return Ok(false);
    }
    let db =
        rusqlite::Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    db.busy_timeout(std::time::Duration::from_secs(10))?;
    let has_table: bool = db.query_row(
        "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'worker_tokens')",
        [],
        |r| r.get(0),
    )?;
    if !has_table {
        return Ok(false);
    }
    Ok(
        db.query_row("SELECT EXISTS (SELECT 1 FROM worker_tokens)", [], |r| {
            r.get(0)
        })?,
    )
}

/// Makes a fresh token for `name`, replacing the one it had.
pub(super) fn issue(queue: &Queue, name: &WorkerName) -> Result<IssuedToken, QueueError> {
    let token = new_token();
    let hash = token_hash(&token);
    queue.write(|tx| {
        let replaced: Option<i64> = tx
            .db
            .prepare_cached("SELECT created_at FROM worker_tokens WHERE name = ?1")?
            .query_row([name.as_str()], |r| r.get(0))
            .optional()?;
        tx.db
            .prepare_cached(
                "INSERT INTO worker_tokens (name, token_sha256, created_at) \
                 VALUES (?1, ?2, ?3) ON CONFLICT (name) DO UPDATE SET \
                 token_sha256 = excluded.token_sha256, created_at = excluded.created_at",
            )?
            .execute(params![name.as_str(), hash, tx.now])?;
        let message = match replaced {
            Some(at) => format!(
                "a new worker token was issued for {name}; the one issued at {} no longer \
                 works",
                from_ms(at).to_rfc3339()
            ),
            None => format!("a worker token was issued for {name}"),
        };
        i_event(
            tx,
            None,
            Some(name.as_str()),
            kind::WORKER_TOKEN_ISSUED,
            message,
        )?;
        Ok(IssuedToken {
            name: name.clone(),
            token: token.clone(),
            replaced: replaced.map(from_ms),
        })
    })
}

/// Deletes `name`'s token; answers when it had been issued, or None when it had none.
pub(super) fn revoke(
    queue: &Queue,
    name: &WorkerName,
) -> Result<Option<DateTime<Utc>>, QueueError> {
    queue.write(|tx| {
        let created: Option<i64> = tx
            .db
            .prepare_cached("DELETE FROM worker_tokens WHERE name = ?1 RETURNING created_at")?
            .query_row([name.as_str()], |r| r.get(0))
            .optional()?;
        if created.is_some() {
            i_event(
                tx,
                None,
                Some(name.as_str()),
                kind::WORKER_TOKEN_REVOKED,
                format!("the worker token of {name} was revoked"),
            )?;
        }
        Ok(created.map(from_ms))
    })
}

/// Every worker that has a token, by name.
pub(super) fn list(queue: &Queue) -> Result<Vec<WorkerTokenInfo>, QueueError> {
    queue.read(|tx| {
        let mut stmt = tx
            .db
            .prepare_cached("SELECT name, created_at FROM worker_tokens ORDER BY name")?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
        rows.map(|r| {
            let (name, created) = r?;
            Ok(WorkerTokenInfo {
                name: WorkerName::parse(&name).map_err(QueueError::corrupt)?,
                created_at: from_ms(created),
            })
        })
        .collect()
    })
}

/// The worker a presented per-worker token belongs to, if it is one.
pub(super) fn worker_for(queue: &Queue, token: &str) -> Result<Option<WorkerName>, QueueError> {
    if !token.starts_with(TOKEN_PREFIX) {
        return Ok(None);
    }
    let hash = token_hash(token);
    let name: Option<String> = queue.auth_read(|db| {
        db.prepare_cached("SELECT name FROM worker_tokens WHERE token_sha256 = ?1")?
            .query_row([hash.as_str()], |r| r.get(0))
            .optional()
    })?;
    name.map(|n| WorkerName::parse(&n).map_err(QueueError::corrupt))
        .transpose()
}

/// True when at least one per-worker token exists (then worker routes need a token).
pub(super) fn any_issued(queue: &Queue) -> Result<bool, QueueError> {
    queue.auth_read(|db| {
        db.prepare_cached("SELECT EXISTS (SELECT 1 FROM worker_tokens)")?
            .query_row([], |r| r.get(0))
    })
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;
    use crate::queue::test_support::{manual_clock, queue_on, worker};
    use crate::queue::JobQueue;
    use crate::queue::QueueConfig;

    fn queue() -> Queue {
        Queue::open_in_memory(QueueConfig::default()).unwrap()
    }

    #[test]
    fn an_issued_token_names_its_worker_and_is_stored_only_hashed() {
        let q = queue();
        assert!(!q.worker_tokens_exist().unwrap());
        let issued = q.issue_worker_token(&worker("gpu-1")).unwrap();
        assert!(issued.token.starts_with(TOKEN_PREFIX));
        assert_eq!(issued.token.len(), TOKEN_PREFIX.len() + 2 * TOKEN_BYTES);
        assert_eq!(issued.replaced, None);
        assert!(q.worker_tokens_exist().unwrap());
        assert_eq!(
            q.worker_for_token(&issued.token).unwrap(),
            Some(worker("gpu-1"))
        );
        assert_eq!(q.worker_for_token("cis490w_nope").unwrap(), None);
        assert_eq!(q.worker_for_token("").unwrap(), None);
        let stored: String = q
            .read(|tx| {
                Ok(tx
                    .db
                    .query_row("SELECT token_sha256 FROM worker_tokens", [], |r| r.get(0))?)
            })
            .unwrap();
        assert_ne!(stored, issued.token);
        assert!(!stored.contains(&issued.token[TOKEN_PREFIX.len()..]));
        assert_eq!(stored, token_hash(&issued.token));
    }

    #[test]
    fn issuing_again_rotates_and_revoking_refuses_at_once() {
        let clock = manual_clock();
        let q = queue_on(&clock, QueueConfig::default());
        let first = q.issue_worker_token(&worker("gpu-1")).unwrap();
        let other = q.issue_worker_token(&worker("cpu-1")).unwrap();
        clock.advance(chrono::Duration::seconds(5));
        let second = q.issue_worker_token(&worker("gpu-1")).unwrap();
        assert_ne!(first.token, second.token);
        assert!(second.replaced.is_some());
        assert_eq!(q.worker_for_token(&first.token).unwrap(), None);
        assert_eq!(
            q.worker_for_token(&second.token).unwrap(),
            Some(worker("gpu-1"))
        );
        let listed = q.worker_tokens().unwrap();
        assert_eq!(
            listed.iter().map(|t| t.name.as_str()).collect::<Vec<_>>(),
            ["cpu-1", "gpu-1"]
        );
        assert!(listed[1].created_at > listed[0].created_at);

        assert!(q.revoke_worker_token(&worker("gpu-1")).unwrap().is_some());
        assert_eq!(q.worker_for_token(&second.token).unwrap(), None);
        assert_eq!(q.revoke_worker_token(&worker("gpu-1")).unwrap(), None);
        assert_eq!(
            q.worker_for_token(&other.token).unwrap(),
            Some(worker("cpu-1"))
        );
        let kinds: Vec<String> = q
            .events_since(0, 100)
            .unwrap()
            .events
            .into_iter()
            .map(|e| e.kind)
            .collect();
        assert_eq!(
            kinds,
            [
                kind::WORKER_TOKEN_ISSUED,
                kind::WORKER_TOKEN_ISSUED,
                kind::WORKER_TOKEN_ISSUED,
                kind::WORKER_TOKEN_REVOKED
            ]
        );
    }

    #[test]
    fn serve_sees_issued_tokens_before_it_opens_the_queue() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("queue.db");
        assert!(!tokens_issued_in(&path).unwrap());
        let q = Queue::open(&path, QueueConfig::default()).unwrap();
        assert!(!tokens_issued_in(&path).unwrap());
        q.issue_worker_token(&worker("gpu-1")).unwrap();
        assert!(tokens_issued_in(&path).unwrap());
    }

    /// The lookup every request with a per-worker token makes walks the UNIQUE index: one
    /// index probe, whatever the number of tokens. Also prints what one lookup costs on a
    /// file database (its read connection) with 200 tokens issued.
    #[test]
    fn a_token_lookup_is_one_indexed_select() {
        let dir = tempfile::tempdir().unwrap();
        let q = Queue::open(&dir.path().join("queue.db"), QueueConfig::default()).unwrap();
        let mut tokens = Vec::new();
        for i in 0..200 {
            tokens.push(
                q.issue_worker_token(&worker(&format!("w{i}")))
                    .unwrap()
                    .token,
            );
        }
        let plan: Vec<String> = q
            .auth_read(|db| {
                let mut stmt = db.prepare(
                    "EXPLAIN QUERY PLAN SELECT name FROM worker_tokens WHERE token_sha256 = ?1",
                )?;
                let rows = stmt.query_map(["x"], |r| r.get::<_, String>(3))?;
                rows.collect()
            })
            .unwrap();
        assert_eq!(plan.len(), 1, "{plan:?}");
        assert!(
            plan[0].contains("USING INDEX sqlite_autoindex_worker_tokens"),
            "{plan:?}"
        );
        let started = Instant::now();
        let rounds = 2000;
        for i in 0..rounds {
            let token = &tokens[i % tokens.len()];
            assert!(q.worker_for_token(token).unwrap().is_some());
        }
        let per_lookup = started.elapsed() / rounds as u32;
        println!("one per-worker token lookup: {per_lookup:?}");
    }
}
