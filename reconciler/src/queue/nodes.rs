//! Workers (nodes): their last reported capability, freshness, cordon and drain, and the
//! host policy the manifest gives them.

use cis490_api::{Capability, HostProblem, JobId, NodeState, WorkerName, WorkerView};
use rusqlite::{params, OptionalExtension};

use super::events::i_event;
use super::rows::from_ms;
use super::worker_names::{Holder, NodeRows};
use super::{QueueError, Tx};
use crate::policy::HostPolicy;

/// A worker row.
#[derive(Debug, Clone)]
pub(crate) struct WorkerRow {
    pub name: String,
    pub capability: Capability,
    pub first_seen: i64,
    pub last_seen: i64,
    pub cordoned: bool,
    pub draining: bool,
}

impl WorkerRow {
    /// Seen within `node_stale_after_s` of the transaction's now.
    pub(crate) fn is_fresh(&self, tx: &Tx<'_>) -> bool {
        self.is_fresh_at(tx.now, tx.config)
    }

    /// [`WorkerRow::is_fresh`] at `now` (ms), for backends without a SQLite `Tx`.
    pub(crate) fn is_fresh_at(&self, now: i64, config: &super::QueueConfig) -> bool {
        let stale_ms = i64::try_from(config.node_stale_after_s)
            .unwrap_or(i64::MAX / 1000)
            .saturating_mul(1000);
        now.saturating_sub(self.last_seen) <= stale_ms
    }

    /// Takes new jobs at all (cordon and drain both stop new jobs).
    pub(crate) fn schedulable(&self) -> bool {
        !self.cordoned && !self.draining
    }
}

type RawWorker = (String, String, i64, i64, bool, bool);

fn decode(
    (name, cap, first_seen, last_seen, cordoned, draining): RawWorker,
) -> Result<WorkerRow, QueueError> {
    let capability = serde_json::from_str(&cap)
        .map_err(|e| QueueError::corrupt(format!("capability of worker {name}: {e}")))?;
    Ok(WorkerRow {
        name,
        capability,
        first_seen,
        last_seen,
        cordoned,
        draining,
    })
}

const WORKER_COLUMNS: &str = "name, capability, first_seen, last_seen, cordoned, draining";

fn raw(r: &rusqlite::Row<'_>) -> rusqlite::Result<RawWorker> {
    Ok((
        r.get(0)?,
        r.get(1)?,
        r.get(2)?,
        r.get(3)?,
        r.get(4)?,
        r.get(5)?,
    ))
}

pub(crate) fn i_worker_row(tx: &Tx<'_>, name: &str) -> Result<Option<WorkerRow>, QueueError> {
    let sql = format!("SELECT {WORKER_COLUMNS} FROM workers WHERE name = ?1");
    let found = tx
        .db
        .prepare_cached(&sql)?
        .query_row([name], raw)
        .optional()?;
    found.map(decode).transpose()
}

pub(crate) fn i_worker_rows(tx: &Tx<'_>) -> Result<Vec<WorkerRow>, QueueError> {
    let sql = format!("SELECT {WORKER_COLUMNS} FROM workers ORDER BY name");
    let mut stmt = tx.db.prepare_cached(&sql)?;
    let rows = stmt.query_map([], raw)?;
    rows.map(|r| decode(r?)).collect()
}

/// Up to `limit` workers named after `after`, by name.
pub(crate) fn i_worker_rows_after(
    tx: &Tx<'_>,
    after: &str,
    limit: usize,
) -> Result<Vec<WorkerRow>, QueueError> {
    let sql =
        format!("SELECT {WORKER_COLUMNS} FROM workers WHERE name > ?1 ORDER BY name LIMIT ?2");
    let mut stmt = tx.db.prepare_cached(&sql)?;
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let rows = stmt.query_map(params![after, limit], raw)?;
    rows.map(|r| decode(r?)).collect()
}

impl NodeRows for Tx<'_> {
    fn lock_worker(&mut self, _worker: &WorkerName) -> Result<(), QueueError> {
        // SQLite's write transaction excludes every other writer already.
        Ok(())
    }

    fn holder(&mut self, worker: &WorkerName) -> Result<Option<Holder>, QueueError> {
        let row: Option<(Option<String>, Option<i64>, i64)> = self
            .db
            .prepare_cached(
                "SELECT instance_id, instance_pid, last_seen FROM workers WHERE name = ?1",
            )?
            .query_row([worker.as_str()], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .optional()?;
        Ok(row.and_then(|(id, pid, last_seen)| id.map(|id| Holder { id, pid, last_seen })))
    }

    fn latest_lease_expiry(&mut self, worker: &WorkerName) -> Result<Option<i64>, QueueError> {
        // Named: without statistics SQLite would rather walk every claimed job in
        // `jobs_queue`.
        Ok(self
            .db
            .prepare_cached(
                "SELECT MAX(lease_expires_at) FROM jobs INDEXED BY jobs_worker \
                 WHERE worker = ?1 AND status IN ('claimed', 'running')",
            )?
            .query_row([worker.as_str()], |r| r.get(0))?)
    }

    fn worker_row(&mut self, name: &str) -> Result<Option<WorkerRow>, QueueError> {
        i_worker_row(self, name)
    }

    fn worker_view(&mut self, name: &WorkerName) -> Result<WorkerView, QueueError> {
        i_worker_view(self, name)
    }

    fn leased_jobs_of(&mut self, name: &str) -> Result<Vec<JobId>, QueueError> {
        i_leased_jobs_of(self, name)
    }

    fn set_schedulable_flags(
        &mut self,
        name: &WorkerName,
        cordoned: bool,
        draining: bool,
    ) -> Result<(), QueueError> {
        self.db
            .prepare_cached("UPDATE workers SET cordoned = ?2, draining = ?3 WHERE name = ?1")?
            .execute(params![name.as_str(), cordoned, draining])?;
        Ok(())
    }

    fn delete_worker_row(&mut self, name: &WorkerName) -> Result<(), QueueError> {
        self.db
            .prepare_cached("DELETE FROM workers WHERE name = ?1")?
            .execute(params![name.as_str()])?;
        Ok(())
    }

    fn free_name(&mut self, worker: &WorkerName, instance_id: &str) -> Result<bool, QueueError> {
        let freed = self
            .db
            .prepare_cached(
                "UPDATE workers SET instance_id = NULL, instance_pid = NULL \
                 WHERE name = ?1 AND instance_id = ?2",
            )?
            .execute(params![worker.as_str(), instance_id])?;
        Ok(freed > 0)
    }

    fn store_report(&mut self, worker: &WorkerName, cap: &Capability) -> Result<bool, QueueError> {
        let json = serde_json::to_string(cap).map_err(|e| QueueError::corrupt(e.to_string()))?;
        let (instance_id, instance_pid) = match &cap.instance {
            Some(i) => (Some(i.id.as_str()), i.pid),
            None => (None, None),
        };
        let updated = self
            .db
            .prepare_cached(
                "UPDATE workers SET capability = ?2, last_seen = ?3, \
                 instance_id = COALESCE(?4, instance_id), \
                 instance_pid = CASE WHEN ?4 IS NULL THEN instance_pid ELSE ?5 END \
                 WHERE name = ?1",
            )?
            .execute(params![
                worker.as_str(),
                json,
                self.now,
                instance_id,
                instance_pid
            ])?;
        if updated > 0 {
            return Ok(false);
        }
        self.db
            .prepare_cached(
                "INSERT INTO workers (name, capability, first_seen, last_seen, instance_id, \
                 instance_pid) VALUES (?1, ?2, ?3, ?3, ?4, ?5)",
            )?
            .execute(params![
                worker.as_str(),
                json,
                self.now,
                instance_id,
                instance_pid
            ])?;
        Ok(true)
    }

    fn worker_event(
        &mut self,
        worker: &WorkerName,
        kind: &str,
        message: String,
    ) -> Result<(), QueueError> {
        i_event(self, None, Some(worker.as_str()), kind, message)
    }
}

/// Marks a worker seen now (heartbeats), if it is known.
pub(crate) fn i_touch_worker(tx: &Tx<'_>, worker: &str) -> Result<(), QueueError> {
    tx.db
        .prepare_cached("UPDATE workers SET last_seen = ?2 WHERE name = ?1")?
        .execute(params![worker, tx.now])?;
    Ok(())
}

/// Jobs the worker holds (claimed or running).
pub(crate) fn i_leased_jobs_of(tx: &Tx<'_>, worker: &str) -> Result<Vec<JobId>, QueueError> {
    // Named: without statistics SQLite would rather walk every claimed job in `jobs_queue`.
    let mut stmt = tx.db.prepare_cached(
        "SELECT id FROM jobs INDEXED BY jobs_worker \
         WHERE worker = ?1 AND status IN ('claimed', 'running') ORDER BY id",
    )?;
    let ids = stmt.query_map([worker], |r| r.get::<_, String>(0))?;
    ids.map(|id| JobId::parse(&id?).map_err(QueueError::corrupt))
        .collect()
}

/// The manifest's policy for `worker`, if it has a `[[hosts]]` entry.
pub(crate) fn i_host_policy(tx: &Tx<'_>, worker: &str) -> Result<Option<HostPolicy>, QueueError> {
    let json: Option<String> = tx
        .db
        .prepare_cached("SELECT policy FROM hosts WHERE name = ?1")?
        .query_row([worker], |r| r.get(0))
        .optional()?;
    json.map(|j| {
        serde_json::from_str(&j)
            .map_err(|e| QueueError::corrupt(format!("host policy of {worker}: {e}")))
    })
    .transpose()
}

/// Cordoned and draining win over staleness: an operator's decision is what they look for.
pub(crate) fn node_state(row: &WorkerRow, fresh: bool, holds_jobs: bool) -> NodeState {
    if row.draining && holds_jobs {
        NodeState::Draining
    } else if row.cordoned || row.draining {
        NodeState::Cordoned
    } else if !fresh {
        NodeState::NotReady
    } else {
        NodeState::Ready
    }
}

pub(crate) fn worker_view(tx: &Tx<'_>, row: WorkerRow) -> Result<WorkerView, QueueError> {
    let running_jobs = i_leased_jobs_of(tx, &row.name)?;
    let fresh = row.is_fresh(tx);
    let state = node_state(&row, fresh, !running_jobs.is_empty());
    let policy = i_host_policy(tx, &row.name)?;
    let labels = super::placement::worker_labels(&row.capability, policy.as_ref());
    Ok(WorkerView {
        name: WorkerName::parse(&row.name).map_err(QueueError::corrupt)?,
        state,
        ready: fresh,
        cordoned: row.cordoned || row.draining,
        // Draining while its jobs run; once they are done the drain is over and the worker
        // is only cordoned (its state says Cordoned, so must this).
        draining: row.draining && !running_jobs.is_empty(),
        capability: row.capability,
        first_seen: from_ms(row.first_seen),
        last_seen: from_ms(row.last_seen),
        running_jobs,
        host_problem: i_host_problem(tx, &row.name)?,
        labels,
    })
}

/// The worker's last host failure, if it has not completed a job since.
fn i_host_problem(tx: &Tx<'_>, name: &str) -> Result<Option<HostProblem>, QueueError> {
    let found: Option<(Option<String>, Option<String>, Option<i64>)> = tx
        .db
        .prepare_cached(
            "SELECT host_problem, host_problem_job, host_problem_at FROM workers WHERE name = ?1",
        )?
        .query_row([name], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .optional()?;
    let Some((Some(reason), Some(job), Some(at))) = found else {
        return Ok(None);
    };
    Ok(Some(HostProblem {
        reason,
        job_id: JobId::parse(&job).map_err(QueueError::corrupt)?,
        at: from_ms(at),
    }))
}

/// Flags `worker`'s host: a trainer of `job` could not start there.
pub(crate) fn i_flag_host_problem(
    tx: &Tx<'_>,
    worker: &str,
    job: &JobId,
    reason: &str,
) -> Result<(), QueueError> {
    tx.db
        .prepare_cached(
            "UPDATE workers SET host_problem = ?2, host_problem_job = ?3, host_problem_at = ?4              WHERE name = ?1",
        )?
        .execute(params![worker, reason, job.as_str(), tx.now])?;
    Ok(())
}

/// The worker completed a job: its host works again.
pub(crate) fn i_clear_host_problem(tx: &Tx<'_>, worker: &str) -> Result<(), QueueError> {
    tx.db
        .prepare_cached(
            "UPDATE workers SET host_problem = NULL, host_problem_job = NULL,              host_problem_at = NULL WHERE name = ?1 AND host_problem IS NOT NULL",
        )?
        .execute([worker])?;
    Ok(())
}

pub(crate) fn i_worker_view(tx: &mut Tx<'_>, name: &WorkerName) -> Result<WorkerView, QueueError> {
    let row = i_worker_row(tx, name.as_str())?.ok_or_else(|| QueueError::NotFound {
        what: "worker",
        key: name.to_string(),
    })?;
    worker_view(tx, row)
}

pub(crate) fn i_workers(tx: &mut Tx<'_>) -> Result<Vec<WorkerView>, QueueError> {
    i_worker_rows(tx)?
        .into_iter()
        .map(|row| worker_view(tx, row))
        .collect()
}
