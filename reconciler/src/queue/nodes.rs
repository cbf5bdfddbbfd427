//! Workers (nodes): their last reported capability, freshness, cordon and drain, and the
//! host policy the manifest gives them.

use cis490_api::{
    AgentInstance, Capability, HostProblem, JobId, NodeState, WorkerName, WorkerView,
};
use rusqlite::{params, OptionalExtension};

use super::events::{i_event, kind};
use super::rows::from_ms;
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

/// Records `cap` as the worker's node status and marks it seen now. The first report of a
/// worker appends a `NodeRegistered` event.
///
/// One agent per name: a report (or claim) that carries an instance ID different from the
/// one holding the name is refused with `NameInUse` while the holder is live (seen within
/// `node_stale_after_s`, or holding a lease that has not expired), and takes the name over
/// once it is not. A report from the holder marked `stopping` frees the name at once.
/// Reports without an instance (agents older than instance IDs) are not checked.
pub(crate) fn i_upsert_worker(
    tx: &mut Tx<'_>,
    worker: &WorkerName,
    cap: &Capability,
) -> Result<(), QueueError> {
    if let Some(instance) = &cap.instance {
        if let Some(problem) = std::iter::once(instance.id.as_str())
            .chain(instance.replaces.as_deref())
            .find_map(AgentInstance::id_problem)
        {
            return Err(QueueError::BadRequest { message: problem });
        }
        if instance.stopping {
            return i_sign_off(tx, worker, instance);
        }
        i_take_name(tx, worker, instance)?;
    }
    let json = serde_json::to_string(cap).map_err(|e| QueueError::corrupt(e.to_string()))?;
    let (instance_id, instance_pid) = match &cap.instance {
        Some(i) => (Some(i.id.as_str()), i.pid),
        None => (None, None),
    };
    let updated = tx
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
            tx.now,
            instance_id,
            instance_pid
        ])?;
    if updated == 0 {
        tx.db
            .prepare_cached(
                "INSERT INTO workers (name, capability, first_seen, last_seen, instance_id, \
                 instance_pid) VALUES (?1, ?2, ?3, ?3, ?4, ?5)",
            )?
            .execute(params![
                worker.as_str(),
                json,
                tx.now,
                instance_id,
                instance_pid
            ])?;
        let gpus = if cap.gpus.is_empty() {
            "no GPU".to_string()
        } else {
            cap.gpus
                .iter()
                .map(|g| format!("{} ({} MiB)", g.name, g.vram_total_mib))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let message = format!(
            "node {worker} registered: {} cores, {} MiB RAM, {gpus}{}",
            cap.cores,
            cap.ram_total_mib,
            if cap.cuda { ", CUDA" } else { "" }
        );
        i_event(
            tx,
            None,
            Some(worker.as_str()),
            kind::NODE_REGISTERED,
            message,
        )?;
    }
    Ok(())
}

/// The agent process holding a name, as stored.
struct Holder {
    id: String,
    pid: Option<u32>,
    last_seen: i64,
}

/// Every claim asks this, so it reads only the instance columns; the host name for a
/// refusal's message is looked up by [`i_describe_holder`] only when there is one.
fn i_holder(tx: &Tx<'_>, worker: &WorkerName) -> Result<Option<Holder>, QueueError> {
    let row: Option<(Option<String>, Option<u32>, i64)> = tx
        .db
        .prepare_cached("SELECT instance_id, instance_pid, last_seen FROM workers WHERE name = ?1")?
        .query_row([worker.as_str()], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .optional()?;
    Ok(row.and_then(|(id, pid, last_seen)| id.map(|id| Holder { id, pid, last_seen })))
}

/// Latest expiry of the leases `worker` holds, when any is still running.
fn i_latest_lease_expiry(tx: &Tx<'_>, worker: &WorkerName) -> Result<Option<i64>, QueueError> {
    // Named: without statistics SQLite would rather walk every claimed job in `jobs_queue`.
    Ok(tx
        .db
        .prepare_cached(
            "SELECT MAX(lease_expires_at) FROM jobs INDEXED BY jobs_worker \
             WHERE worker = ?1 AND status IN ('claimed', 'running')",
        )?
        .query_row([worker.as_str()], |r| r.get(0))?)
}

/// Refuses `instance` the name while another live instance holds it; records a takeover
/// from a stale one.
fn i_take_name(
    tx: &mut Tx<'_>,
    worker: &WorkerName,
    instance: &AgentInstance,
) -> Result<(), QueueError> {
    let Some(holder) = i_holder(tx, worker)? else {
        return Ok(());
    };
    if holder.id == instance.id {
        return Ok(());
    }
    if instance.replaces.as_deref() == Some(holder.id.as_str()) {
        let who = i_describe_holder(tx, worker, &holder);
        return i_event(
            tx,
            None,
            Some(worker.as_str()),
            kind::INSTANCE_REPLACED,
            format!(
                "agent instance {} took worker name {worker} over from its own previous life \
                 on the same state dir ({who})",
                instance.id
            ),
        );
    }
    let stale_ms = i64::try_from(tx.config.node_stale_after_s)
        .unwrap_or(i64::MAX / 1000)
        .saturating_mul(1000);
    let seen_ago_s = tx.now.saturating_sub(holder.last_seen).max(0) / 1000;
    let fresh_until = holder.last_seen.saturating_add(stale_ms);
    let lease_until = i_latest_lease_expiry(tx, worker)?.filter(|&at| at > tx.now);
    let frees_at = fresh_until.max(lease_until.unwrap_or(i64::MIN));
    let who = i_describe_holder(tx, worker, &holder);
    if frees_at >= tx.now {
        let frees_in_s = (frees_at - tx.now + 999) / 1000;
        let why = match lease_until {
            Some(at) if at >= fresh_until => format!(
                "it holds a lease until {}",
                super::rows::from_ms(at).to_rfc3339()
            ),
            _ => format!(
                "a worker counts as live for node_stale_after_s = {} s after it was last seen",
                tx.config.node_stale_after_s
            ),
        };
        return Err(QueueError::NameInUse {
            worker: worker.to_string(),
            message: format!(
                "another agent ({who}) holds worker name {worker}; it was seen {seen_ago_s} s \
                 ago, so the name frees in {frees_in_s} s if it has stopped ({why}); stop it or \
                 give this agent another --name"
            ),
        });
    }
    let pid = instance
        .pid
        .map_or_else(String::new, |p| format!(", pid {p}"));
    i_event(
        tx,
        None,
        Some(worker.as_str()),
        kind::INSTANCE_REPLACED,
        format!(
            "agent instance {}{pid} took worker name {worker} over from {who}, last seen \
             {seen_ago_s} s ago",
            instance.id
        ),
    )
}

/// "instance ID, pid N on host H", as far as known.
fn i_describe_holder(tx: &Tx<'_>, worker: &WorkerName, holder: &Holder) -> String {
    let mut who = format!("instance {}", holder.id);
    if let Some(pid) = holder.pid {
        who.push_str(&format!(", pid {pid}"));
    }
    let host = i_worker_row(tx, worker.as_str())
        .ok()
        .flatten()
        .map(|row| row.capability.hostname)
        .filter(|h| !h.is_empty());
    if let Some(host) = host {
        who.push_str(&format!(" on host {host}"));
    }
    who
}

/// The holder's last report: the name is free from now on. A stopping report from any
/// other instance changes nothing.
fn i_sign_off(
    tx: &mut Tx<'_>,
    worker: &WorkerName,
    instance: &AgentInstance,
) -> Result<(), QueueError> {
    let freed = tx
        .db
        .prepare_cached(
            "UPDATE workers SET instance_id = NULL, instance_pid = NULL \
             WHERE name = ?1 AND instance_id = ?2",
        )?
        .execute(params![worker.as_str(), instance.id])?;
    if freed > 0 {
        i_event(
            tx,
            None,
            Some(worker.as_str()),
            kind::INSTANCE_STOPPED,
            format!(
                "agent instance {} of {worker} stopped; the name is free",
                instance.id
            ),
        )?;
    }
    Ok(())
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

/// What an operator does to a worker's schedulability.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Schedulable {
    Cordon,
    Uncordon,
    Drain,
}

pub(crate) fn i_set_schedulable(
    tx: &mut Tx<'_>,
    name: &WorkerName,
    to: Schedulable,
) -> Result<WorkerView, QueueError> {
    let row = i_worker_row(tx, name.as_str())?.ok_or_else(|| QueueError::NotFound {
        what: "worker",
        key: name.to_string(),
    })?;
    let (cordoned, draining, event, message) = match to {
        Schedulable::Cordon => (
            true,
            false,
            kind::CORDONED,
            format!("node {name} cordoned: no new jobs"),
        ),
        Schedulable::Uncordon => (
            false,
            false,
            kind::UNCORDONED,
            format!("node {name} uncordoned: takes new jobs again"),
        ),
        Schedulable::Drain => (
            true,
            true,
            kind::DRAINING,
            format!("node {name} draining: no new jobs, running jobs finish"),
        ),
    };
    if (row.cordoned, row.draining) != (cordoned, draining) {
        tx.db
            .prepare_cached("UPDATE workers SET cordoned = ?2, draining = ?3 WHERE name = ?1")?
            .execute(params![name.as_str(), cordoned, draining])?;
        i_event(tx, None, Some(name.as_str()), event, message)?;
    }
    i_worker_view(tx, name)
}
