//! Per-worker tokens on PostgreSQL: only each token's sha256 is stored, as in SQLite's
//! `tokens.rs` (whose token format and hash these share).

use chrono::{DateTime, Utc};
use cis490_api::WorkerName;

use super::PgQueue;
use crate::queue::events::kind;
use crate::queue::rows::from_ms;
use crate::queue::tokens::{new_token, token_hash, IssuedToken, WorkerTokenInfo, TOKEN_PREFIX};
use crate::queue::QueueError;

pub(super) fn issue(queue: &PgQueue, name: &WorkerName) -> Result<IssuedToken, QueueError> {
    let token = new_token();
    let hash = token_hash(&token);
    queue.write(|tx| {
        let replaced: Option<i64> = match tx.db.query_opt(
            "SELECT created_at FROM worker_tokens WHERE name = $1 FOR UPDATE",
            &[&name.as_str()],
        )? {
            Some(r) => Some(r.try_get(0)?),
            None => None,
        };
        tx.db.execute(
            "INSERT INTO worker_tokens (name, token_sha256, created_at) VALUES ($1, $2, $3) \
             ON CONFLICT (name) DO UPDATE SET token_sha256 = EXCLUDED.token_sha256, \
             created_at = EXCLUDED.created_at",
            &[&name.as_str(), &hash, &tx.now],
        )?;
        let message = match replaced {
            Some(at) => format!(
                "a new worker token was issued for {name}; the one issued at {} no longer \
                 works",
                from_ms(at).to_rfc3339()
            ),
            None => format!("a worker token was issued for {name}"),
        };
        tx.event(
            None,
            Some(name.as_str()),
            kind::WORKER_TOKEN_ISSUED,
            message,
        );
        Ok(IssuedToken {
            name: name.clone(),
            token: token.clone(),
            replaced: replaced.map(from_ms),
        })
    })
}

pub(super) fn revoke(
    queue: &PgQueue,
    name: &WorkerName,
) -> Result<Option<DateTime<Utc>>, QueueError> {
    queue.write(|tx| {
        let created: Option<i64> = match tx.db.query_opt(
            "DELETE FROM worker_tokens WHERE name = $1 RETURNING created_at",
            &[&name.as_str()],
        )? {
            Some(r) => Some(r.try_get(0)?),
            None => None,
        };
        if created.is_some() {
            tx.event(
                None,
                Some(name.as_str()),
                kind::WORKER_TOKEN_REVOKED,
                format!("the worker token of {name} was revoked"),
            );
        }
        Ok(created.map(from_ms))
    })
}

pub(super) fn list(queue: &PgQueue) -> Result<Vec<WorkerTokenInfo>, QueueError> {
    queue.read(|tx| {
        tx.db
            .query(
                "SELECT name, created_at FROM worker_tokens ORDER BY name",
                &[],
            )?
            .iter()
            .map(|r| {
                let name: String = r.try_get(0)?;
                Ok(WorkerTokenInfo {
                    name: WorkerName::parse(&name).map_err(QueueError::corrupt)?,
                    created_at: from_ms(r.try_get(1)?),
                })
            })
            .collect()
    })
}

pub(super) fn worker_for(queue: &PgQueue, token: &str) -> Result<Option<WorkerName>, QueueError> {
    if !token.starts_with(TOKEN_PREFIX) {
        return Ok(None);
    }
    let hash = token_hash(token);
    let name: Option<String> = queue.read(|tx| {
        match tx.db.query_opt(
            "SELECT name FROM worker_tokens WHERE token_sha256 = $1",
            &[&hash],
        )? {
            Some(r) => Ok(Some(r.try_get(0)?)),
            None => Ok(None),
        }
    })?;
    name.map(|n| WorkerName::parse(&n).map_err(QueueError::corrupt))
        .transpose()
}

pub(super) fn any_issued(queue: &PgQueue) -> Result<bool, QueueError> {
    queue.read(|tx| {
        Ok(tx
            .db
            .query_one("SELECT EXISTS (SELECT 1 FROM worker_tokens)", &[])?
            .try_get(0)?)
    })
}
