//! Workers (nodes) on PostgreSQL: node reports as upserts, one agent per name, freshness
//! and host policies. The rules of one agent per name are SQLite's `nodes.rs`, step by step.

use cis490_api::{AgentInstance, Capability, JobId, WorkerName};
use postgres::Row;

use super::rows::from_json;
use super::tx::PgTx;
use crate::policy::HostPolicy;
use crate::queue::events::kind;
use crate::queue::nodes::WorkerRow;
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

/// Records `cap` as the worker's node status and marks it seen now; see SQLite's
/// `nodes::i_upsert_worker` for the rules (first report: `NodeRegistered`; one agent per
/// name). The worker's row stays locked until the transaction ends, so two claims of one
/// worker (and their `max_concurrent` counts) take turns.
pub(crate) fn i_upsert_worker(
    tx: &mut PgTx<'_>,
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
        // Locks the row (if any) before the name is judged.
        tx.db.execute(
            "SELECT 1 FROM workers WHERE name = $1 FOR UPDATE",
            &[&worker.as_str()],
        )?;
        if instance.stopping {
            return i_sign_off(tx, worker, instance);
        }
        i_take_name(tx, worker, instance)?;
    }
    let json = super::rows::to_json(cap)?;
    let (instance_id, instance_pid) = match &cap.instance {
        Some(i) => (Some(i.id.as_str()), i.pid.map(i64::from)),
        None => (None, None),
    };
    // `xmax = 0` only on a row this statement inserted.
    let inserted: bool = tx
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
            &[
                &worker.as_str(),
                &json,
                &tx.now,
                &instance_id,
                &instance_pid,
            ],
        )?
        .try_get(0)?;
    if inserted {
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
        tx.event(None, Some(worker.as_str()), kind::NODE_REGISTERED, message);
    }
    Ok(())
}

struct Holder {
    id: String,
    pid: Option<i64>,
    last_seen: i64,
}

fn i_holder(tx: &mut PgTx<'_>, worker: &WorkerName) -> Result<Option<Holder>, QueueError> {
    let row = tx.db.query_opt(
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

fn i_describe_holder(tx: &mut PgTx<'_>, worker: &WorkerName, holder: &Holder) -> String {
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

fn i_take_name(
    tx: &mut PgTx<'_>,
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
        tx.event(
            None,
            Some(worker.as_str()),
            kind::INSTANCE_REPLACED,
            format!(
                "agent instance {} took worker name {worker} over from its own previous life \
                 on the same state dir ({who})",
                instance.id
            ),
        );
        return Ok(());
    }
    let stale_ms = i64::try_from(tx.config.node_stale_after_s)
        .unwrap_or(i64::MAX / 1000)
        .saturating_mul(1000);
    let seen_ago_s = tx.now.saturating_sub(holder.last_seen).max(0) / 1000;
    let fresh_until = holder.last_seen.saturating_add(stale_ms);
    let latest: Option<i64> = tx
        .db
        .query_one(
            "SELECT MAX(lease_expires_at) FROM jobs \
             WHERE worker = $1 AND status IN ('claimed', 'running')",
            &[&worker.as_str()],
        )?
        .try_get(0)?;
    let lease_until = latest.filter(|&at| at > tx.now);
    let frees_at = fresh_until.max(lease_until.unwrap_or(i64::MIN));
    let who = i_describe_holder(tx, worker, &holder);
    if frees_at >= tx.now {
        let frees_in_s = (frees_at - tx.now + 999) / 1000;
        let why = match lease_until {
            Some(at) if at >= fresh_until => format!(
                "it holds a lease until {}",
                crate::queue::rows::from_ms(at).to_rfc3339()
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
    tx.event(
        None,
        Some(worker.as_str()),
        kind::INSTANCE_REPLACED,
        format!(
            "agent instance {}{pid} took worker name {worker} over from {who}, last seen \
             {seen_ago_s} s ago",
            instance.id
        ),
    );
    Ok(())
}

fn i_sign_off(
    tx: &mut PgTx<'_>,
    worker: &WorkerName,
    instance: &AgentInstance,
) -> Result<(), QueueError> {
    let freed = tx.db.execute(
        "UPDATE workers SET instance_id = NULL, instance_pid = NULL \
         WHERE name = $1 AND instance_id = $2",
        &[&worker.as_str(), &instance.id],
    )?;
    if freed > 0 {
        tx.event(
            None,
            Some(worker.as_str()),
            kind::INSTANCE_STOPPED,
            format!(
                "agent instance {} of {worker} stopped; the name is free",
                instance.id
            ),
        );
    }
    Ok(())
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
