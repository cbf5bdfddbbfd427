//! Workers (nodes) on PostgreSQL: node reports as upserts, one agent per name, freshness
//! and host policies. The rules of node reports and one agent per name are
//! `queue/worker_names.rs`, over [`NodeRows`].

use cis490_api::{Capability, JobId, WorkerName, WorkerView};
use postgres::Row;

use super::rows::from_json;
use super::tx::PgTx;
use crate::policy::HostPolicy;
use crate::queue::nodes::WorkerRow;
use crate::queue::worker_names::{Holder, NodeRows};
use crate::queue::QueueError;

pub(crate) const WORKER_COLUMNS: &str =
    "name, capability, first_seen, last_seen, cordoned, draining";

pub(crate) fn decode(r: &Row) -> Result<WorkerRow, QueueError> {
    let name: String = r.try_get(0)?;
    let cap: String = r.try_get(1)?;
    let capability = from_json(&format!("capability of worker {name}"), &cap)?;
    Ok(WorkerRow {
        capability,
        first_seen: r.try_get(2)?,
        last_seen: r.try_get(3)?,
        cordoned: r.try_get(4)?,
        draining: r.try_get(5)?,
        name,
    })
}

pub(crate) fn i_worker_row(tx: &mut PgTx<'_>, name: &str) -> Result<Option<WorkerRow>, QueueError> {
    let sql = format!("SELECT {WORKER_COLUMNS} FROM workers WHERE name = $1");
    tx.db
        .query_opt(&sql, &[&name])?
        .map(|r| decode(&r))
        .transpose()
}

pub(crate) fn i_worker_rows(tx: &mut PgTx<'_>) -> Result<Vec<WorkerRow>, QueueError> {
    let sql = format!("SELECT {WORKER_COLUMNS} FROM workers ORDER BY name");
    tx.db.query(&sql, &[])?.iter().map(decode).collect()
}

/// The manifest's policy for `worker`, if it has a `[[hosts]]` entry.
pub(crate) fn i_host_policy(
    tx: &mut PgTx<'_>,
    worker: &str,
) -> Result<Option<HostPolicy>, QueueError> {
    let row = tx
        .db
        .query_opt("SELECT policy FROM hosts WHERE name = $1", &[&worker])?;
    row.map(|r| {
        let json: String = r.try_get(0)?;
        from_json(&format!("host policy of {worker}"), &json)
    })
    .transpose()
}

/// Jobs the worker holds (claimed or running).
pub(crate) fn i_leased_jobs_of(tx: &mut PgTx<'_>, worker: &str) -> Result<Vec<JobId>, QueueError> {
    tx.db
        .query(
            "SELECT id FROM jobs WHERE worker = $1 AND status IN ('claimed', 'running') \
             ORDER BY id",
            &[&worker],
        )?
        .iter()
        .map(|r| {
            let id: String = r.try_get(0)?;
            JobId::parse(&id).map_err(QueueError::corrupt)
        })
        .collect()
}

/// Marks a worker seen now (heartbeats), if it is known.
pub(crate) fn i_touch_worker(tx: &mut PgTx<'_>, worker: &str) -> Result<(), QueueError> {
    tx.db.execute(
        "UPDATE workers SET last_seen = $2 WHERE name = $1",
        &[&worker, &tx.now],
    )?;
    Ok(())
}

impl NodeRows for PgTx<'_> {
    fn lock_worker(&mut self, worker: &WorkerName) -> Result<(), QueueError> {
        // The row (if any) stays locked until the transaction ends, so two reports or
        // claims of one worker (and their `max_concurrent` counts) take turns.
        self.db.execute(
            "SELECT 1 FROM workers WHERE name = $1 FOR UPDATE",
            &[&worker.as_str()],
        )?;
        Ok(())
    }

    fn holder(&mut self, worker: &WorkerName) -> Result<Option<Holder>, QueueError> {
        let row = self.db.query_opt(
            "SELECT instance_id, instance_pid, last_seen FROM workers WHERE name = $1",
            &[&worker.as_str()],
        )?;
        let Some(r) = row else { return Ok(None) };
        let id: Option<String> = r.try_get(0)?;
        Ok(match id {
            Some(id) => Some(Holder {
                id,
                pid: r.try_get(1)?,
                last_seen: r.try_get(2)?,
            }),
            None => None,
        })
    }

    fn latest_lease_expiry(&mut self, worker: &WorkerName) -> Result<Option<i64>, QueueError> {
        Ok(self
            .db
            .query_one(
                "SELECT MAX(lease_expires_at) FROM jobs \
                 WHERE worker = $1 AND status IN ('claimed', 'running')",
                &[&worker.as_str()],
            )?
            .try_get(0)?)
    }

    fn worker_row(&mut self, name: &str) -> Result<Option<WorkerRow>, QueueError> {
        i_worker_row(self, name)
    }

    fn worker_view(&mut self, name: &WorkerName) -> Result<WorkerView, QueueError> {
        super::workers::i_worker_view(self, name)
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
        self.db.execute(
            "UPDATE workers SET cordoned = $2, draining = $3 WHERE name = $1",
            &[&name.as_str(), &cordoned, &draining],
        )?;
        Ok(())
    }

    fn delete_worker_row(&mut self, name: &WorkerName) -> Result<(), QueueError> {
        self.db
            .execute("DELETE FROM workers WHERE name = $1", &[&name.as_str()])?;
        Ok(())
    }

    fn free_name(&mut self, worker: &WorkerName, instance_id: &str) -> Result<bool, QueueError> {
        let freed = self.db.execute(
            "UPDATE workers SET instance_id = NULL, instance_pid = NULL \
             WHERE name = $1 AND instance_id = $2",
            &[&worker.as_str(), &instance_id],
        )?;
        Ok(freed > 0)
    }

    fn store_report(&mut self, worker: &WorkerName, cap: &Capability) -> Result<bool, QueueError> {
        let json = super::rows::to_json(cap)?;
        let (instance_id, instance_pid) = match &cap.instance {
            Some(i) => (Some(i.id.as_str()), i.pid.map(i64::from)),
            None => (None, None),
        };
        let now = self.now;
        // `xmax = 0` only on a row this statement inserted.
        Ok(self
            .db
            .query_one(
                "INSERT INTO workers (name, capability, first_seen, last_seen, instance_id, \
                 instance_pid) VALUES ($1, $2, $3, $3, $4, $5) \
                 ON CONFLICT (name) DO UPDATE SET capability = EXCLUDED.capability, \
                 last_seen = EXCLUDED.last_seen, \
                 instance_id = COALESCE(EXCLUDED.instance_id, workers.instance_id), \
                 instance_pid = CASE WHEN EXCLUDED.instance_id IS NULL THEN workers.instance_pid \
                                ELSE EXCLUDED.instance_pid END \
                 RETURNING (xmax = 0)",
                &[&worker.as_str(), &json, &now, &instance_id, &instance_pid],
            )?
            .try_get(0)?)
    }

    fn worker_event(
        &mut self,
        worker: &WorkerName,
        kind: &str,
        message: String,
    ) -> Result<(), QueueError> {
        self.event(None, Some(worker.as_str()), kind, message);
        Ok(())
    }
}

/// Flags `worker`'s host: a trainer of `job` could not start there.
pub(crate) fn i_flag_host_problem(
    tx: &mut PgTx<'_>,
    worker: &str,
    job: &JobId,
    reason: &str,
) -> Result<(), QueueError> {
    tx.db.execute(
        "UPDATE workers SET host_problem = $2, host_problem_job = $3, host_problem_at = $4 \
         WHERE name = $1",
        &[&worker, &reason, &job.as_str(), &tx.now],
    )?;
    Ok(())
}

/// The worker completed a job: its host works again.
pub(crate) fn i_clear_host_problem(tx: &mut PgTx<'_>, worker: &str) -> Result<(), QueueError> {
    tx.db.execute(
        "UPDATE workers SET host_problem = NULL, host_problem_job = NULL, \
         host_problem_at = NULL WHERE name = $1 AND host_problem IS NOT NULL",
        &[&worker],
    )?;
    Ok(())
}
