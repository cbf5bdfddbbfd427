//! Node reports and one agent per worker name, written once over [`NodeRows`] (SQLite's
//! rows in `nodes.rs`, PostgreSQL's in `postgres/nodes.rs`; the operator's actions on a
//! worker over the same rows are `worker_ops.rs`).
//!
//! A report records the worker's capability and marks it seen now; the first report of a
//! worker appends a `NodeRegistered` event. A report (or claim) that carries an instance
//! ID different from the one holding the name is refused with `NameInUse` while the holder
//! is live (seen within `node_stale_after_s`, or holding a lease that has not expired), and
//! takes the name over once it is not. A report from the holder marked `stopping` frees the
//! name at once. Reports without an instance (agents older than instance IDs) are not
//! checked.

use cis490_api::{AgentInstance, Capability, JobId, WorkerName, WorkerView};

use super::events::kind;
use super::nodes::WorkerRow;
use super::tx::TxContext;
use super::QueueError;

/// The agent process holding a name, as stored.
#[derive(Debug, Clone)]
pub(crate) struct Holder {
    pub id: String,
    pub pid: Option<i64>,
    pub last_seen: i64,
}

/// The worker rows a node report reads and writes, in one transaction of one backend.
pub(crate) trait NodeRows: TxContext {
    /// Takes the worker's row lock for the rest of the transaction where the database
    /// locks rows (so the name is judged and written by one report at a time).
    fn lock_worker(&mut self, worker: &WorkerName) -> Result<(), QueueError>;
    /// The instance holding the name; every claim asks, so only the instance columns.
    fn holder(&mut self, worker: &WorkerName) -> Result<Option<Holder>, QueueError>;
    /// Latest expiry of the leases `worker` holds on claimed or running jobs.
    fn latest_lease_expiry(&mut self, worker: &WorkerName) -> Result<Option<i64>, QueueError>;
    fn worker_row(&mut self, name: &str) -> Result<Option<WorkerRow>, QueueError>;
    /// The worker as the API shows it, or NotFound.
    fn worker_view(&mut self, name: &WorkerName) -> Result<WorkerView, QueueError>;
    /// The jobs whose lease `name` holds.
    fn leased_jobs_of(&mut self, name: &str) -> Result<Vec<JobId>, QueueError>;
    fn set_schedulable_flags(
        &mut self,
        name: &WorkerName,
        cordoned: bool,
        draining: bool,
    ) -> Result<(), QueueError>;
    fn delete_worker_row(&mut self, name: &WorkerName) -> Result<(), QueueError>;
    /// The host name the worker last reported, if any.
    fn reported_hostname(&mut self, worker: &WorkerName) -> Option<String> {
        self.worker_row(worker.as_str())
            .ok()
            .flatten()
            .map(|row| row.capability.hostname)
    }
    /// Frees the name when `instance_id` holds it; whether it did.
    fn free_name(&mut self, worker: &WorkerName, instance_id: &str) -> Result<bool, QueueError>;
    /// Stores `cap`, seen now (the instance columns only where `cap` names an instance);
    /// whether the row is new.
    fn store_report(&mut self, worker: &WorkerName, cap: &Capability) -> Result<bool, QueueError>;
    /// Appends a worker event.
    fn worker_event(
        &mut self,
        worker: &WorkerName,
        kind: &str,
        message: String,
    ) -> Result<(), QueueError>;
}

/// Records `cap` as the worker's node status (see the module docs).
pub(crate) fn i_upsert_worker<T: NodeRows + ?Sized>(
    tx: &mut T,
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
        tx.lock_worker(worker)?;
        if instance.stopping {
            return sign_off(tx, worker, instance);
        }
        take_name(tx, worker, instance)?;
    }
    if tx.store_report(worker, cap)? {
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
        tx.worker_event(worker, kind::NODE_REGISTERED, message)?;
    }
    Ok(())
}

/// Refuses `instance` the name while another live instance holds it; records a takeover
/// from a stale one.
fn take_name<T: NodeRows + ?Sized>(
    tx: &mut T,
    worker: &WorkerName,
    instance: &AgentInstance,
) -> Result<(), QueueError> {
    let Some(holder) = tx.holder(worker)? else {
        return Ok(());
    };
    if holder.id == instance.id {
        return Ok(());
    }
    if instance.replaces.as_deref() == Some(holder.id.as_str()) {
        let who = describe_holder(tx, worker, &holder);
        return tx.worker_event(
            worker,
            kind::INSTANCE_REPLACED,
            format!(
                "agent instance {} took worker name {worker} over from its own previous life \
                 on the same state dir ({who})",
                instance.id
            ),
        );
    }
    let now = tx.now_ms();
    let stale_after_s = tx.queue_config().node_stale_after_s;
    let stale_ms = i64::try_from(stale_after_s)
        .unwrap_or(i64::MAX / 1000)
        .saturating_mul(1000);
    let seen_ago_s = now.saturating_sub(holder.last_seen).max(0) / 1000;
    let fresh_until = holder.last_seen.saturating_add(stale_ms);
    let lease_until = tx.latest_lease_expiry(worker)?.filter(|&at| at > now);
    let frees_at = fresh_until.max(lease_until.unwrap_or(i64::MIN));
    let who = describe_holder(tx, worker, &holder);
    if frees_at >= now {
        let frees_in_s = (frees_at - now + 999) / 1000;
        let why = match lease_until {
            Some(at) if at >= fresh_until => format!(
                "it holds a lease until {}",
                super::rows::from_ms(at).to_rfc3339()
            ),
            _ => format!(
                "a worker counts as live for node_stale_after_s = {stale_after_s} s after it \
                 was last seen"
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
    tx.worker_event(
        worker,
        kind::INSTANCE_REPLACED,
        format!(
            "agent instance {}{pid} took worker name {worker} over from {who}, last seen \
             {seen_ago_s} s ago",
            instance.id
        ),
    )
}

/// "instance ID, pid N on host H", as far as known.
fn describe_holder<T: NodeRows + ?Sized>(
    tx: &mut T,
    worker: &WorkerName,
    holder: &Holder,
) -> String {
    let mut who = format!("instance {}", holder.id);
    if let Some(pid) = holder.pid {
        who.push_str(&format!(", pid {pid}"));
    }
    if let Some(host) = tx.reported_hostname(worker).filter(|h| !h.is_empty()) {
        who.push_str(&format!(" on host {host}"));
    }
    who
}

/// The holder's last report: the name is free from now on. A stopping report from any
/// other instance changes nothing.
fn sign_off<T: NodeRows + ?Sized>(
    tx: &mut T,
    worker: &WorkerName,
    instance: &AgentInstance,
) -> Result<(), QueueError> {
    if tx.free_name(worker, &instance.id)? {
        tx.worker_event(
            worker,
            kind::INSTANCE_STOPPED,
            format!(
                "agent instance {} of {worker} stopped; the name is free",
                instance.id
            ),
        )?;
    }
    Ok(())
}
