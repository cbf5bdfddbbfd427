//! `explain(job)`: why a pending job is not running, like HTCondor's
//! `condor_q -better-analyze`.

use std::collections::{BTreeMap, BTreeSet};

use std::collections::HashMap;

use cis490_api::{Constraints, Explain, JobId, JobStatus, WorkerFit, WorkerName};
use rusqlite::params;

use super::failures;
use super::matching::{
    any_cuda_could_run, fit_reasons, has_cuda, i_cuda_alternatives, i_worker_blocked,
    waited_long_at, CudaAlternative,
};
use super::nodes::{i_host_policy, i_leased_jobs_of, i_worker_rows, WorkerRow};
use super::placement::Placement;
use super::rows::{i_existing_job, JobRow};
use super::rule_reads::RuleReads;
use super::{QueueError, Tx};
use crate::policy::HostPolicy;

/// "42s", "5m", "3h", "2d": how long ago, for humans.
pub(crate) fn ago(ms: i64) -> String {
    let s = (ms / 1000).max(0);
    match s {
        0..=119 => format!("{s}s"),
        120..=7199 => format!("{}m", s / 60),
        7200..=172_799 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86_400),
    }
}

/// One known worker as explain sees it.
pub(crate) struct Known {
    pub(crate) row: WorkerRow,
    pub(crate) policy: Option<HostPolicy>,
}

/// What `explain` reads, in one transaction of a backend; the rules that turn it into
/// reasons and a summary are below, the same for every backend.
pub(crate) trait ExplainReads: RuleReads {
    /// Pending jobs not tombstoned.
    fn pending_total(&mut self) -> Result<u64, QueueError>;
    /// Why `w` takes no job now (cordoned, draining, flagged), if it does not.
    fn blocked(
        &mut self,
        w: &WorkerRow,
        policy: Option<&HostPolicy>,
    ) -> Result<Option<String>, QueueError>;
    /// How many jobs `worker` holds a lease on.
    fn leases_held(&mut self, worker: &str) -> Result<usize, QueueError>;
    fn cuda_alternatives(&mut self, worker: &str) -> Result<Vec<CudaAlternative>, QueueError>;
    /// The pending jobs ahead of `row` in queue order: (those that some worker of `able`
    /// can run, those none of them ever can). With no able worker every job ahead counts,
    /// as nothing is known to separate them.
    fn jobs_ahead(&mut self, row: &JobRow, able: &[&Known]) -> Result<(u64, u64), QueueError>;
}

/// Why the job of `row` (job `id`) is where it is, from what `reads` sees.
pub(crate) fn explain(
    reads: &mut impl ExplainReads,
    id: &JobId,
    row: &JobRow,
) -> Result<Explain, QueueError> {
    let pending_total = reads.pending_total()?;
    if row.status != JobStatus::Pending || row.tombstoned {
        return Ok(Explain {
            job_id: id.clone(),
            queue_position: None,
            pending_total,
            never_runnable_ahead: 0,
            workers: Vec::new(),
            summary: not_pending_summary(row),
        });
    }
    let mut known = Vec::new();
    for w in reads.workers()? {
        let policy = reads.host_policy(&w.name)?;
        known.push(Known { row: w, policy });
    }
    let mut workers = Vec::new();
    // The workers that can run it some time: the jobs ahead that compete for them are the
    // ones that hold it back.
    let mut able: Vec<&Known> = Vec::new();
    for k in &known {
        let fit = worker_fit(reads, row, k)?;
        if fit.lasting_reasons == 0 {
            able.push(k);
        }
        workers.push(fit);
    }
    let (ahead, never_ahead) = reads.jobs_ahead(row, &able)?;
    let position = ahead + 1;
    let summary = pending_summary(&workers, position, pending_total, never_ahead);
    Ok(Explain {
        job_id: id.clone(),
        queue_position: Some(position),
        pending_total,
        never_runnable_ahead: never_ahead,
        workers,
        summary,
    })
}

/// Why worker `k` does not take the pending job `row` now: lasting reasons first (its
/// hardware, allowed_hosts, host policy), then passing ones (not Ready, cordoned or
/// draining, every slot busy, a GPU or RAM in use, a prefer_cuda deferral).
fn worker_fit(
    reads: &mut impl ExplainReads,
    row: &JobRow,
    k: &Known,
) -> Result<WorkerFit, QueueError> {
    let spec = &row.spec;
    let w = &k.row;
    let policy = k.policy.as_ref();
    let (now, prefer_cuda_wait_s, retry_elsewhere_wait_s) = {
        let config = reads.queue_config();
        (
            reads.now_ms(),
            config.prefer_cuda_wait_s,
            config.retry_elsewhere_wait_s,
        )
    };
    let mut lasting = Vec::new();
    let mut passing = Vec::new();
    if !w.is_fresh_at(now, reads.queue_config()) {
        passing.push(format!(
            "not Ready (last seen {} ago)",
            ago(now - w.last_seen)
        ));
    }
    match reads.blocked(w, policy)? {
        Some(blocked) => passing.push(blocked),
        None => {
            let held = reads.leases_held(&w.name)?;
            let slots = w.capability.max_concurrent.max(1) as usize;
            if held >= slots {
                passing.push(format!("busy: all {slots} slots hold jobs"));
            }
        }
    }
    for reason in fit_reasons(
        &spec.model,
        &spec.constraints,
        &w.name,
        &w.capability,
        policy,
    ) {
        if reason.lasting {
            lasting.push(reason.text);
        } else {
            passing.push(reason.text);
        }
    }
    if lasting.is_empty()
        && passing.is_empty()
        && spec.constraints.prefer_cuda
        && !has_cuda(&w.capability)
    {
        let alternatives = reads.cuda_alternatives(&w.name)?;
        if !waited_long_at(now, reads.queue_config(), row.pending_since)
            && any_cuda_could_run(&spec.model, &spec.constraints, &alternatives)
        {
            let waited = (now - row.pending_since).max(0) / 1000;
            passing.push(format!(
                "prefer_cuda: left to a Ready CUDA worker (waited {waited}s of \
                 {prefer_cuda_wait_s}s)"
            ));
        }
    }
    if lasting.is_empty()
        && passing.is_empty()
        && failures::left_to_others(
            reads,
            row.spec.id.as_str(),
            &w.name,
            &spec.model,
            &spec.constraints,
            row.pending_since,
        )?
    {
        let waited = (now - row.pending_since).max(0) / 1000;
        passing.push(format!(
            "failed it before: left to a Ready worker that has not tried it (waited {waited}s \
             of {retry_elsewhere_wait_s}s)"
        ));
    }
    let lasting_reasons = lasting.len();
    lasting.extend(passing);
    Ok(WorkerFit {
        worker: WorkerName::parse(&w.name).map_err(QueueError::corrupt)?,
        reasons: lasting,
        lasting_reasons,
    })
}

pub(crate) fn i_explain(tx: &mut Tx<'_>, id: &JobId) -> Result<Explain, QueueError> {
    let row = i_existing_job(tx, id)?;
    explain(&mut &*tx, id, &row)
}

impl RuleReads for &Tx<'_> {
    fn workers(&mut self) -> Result<Vec<WorkerRow>, QueueError> {
        i_worker_rows(self)
    }

    fn host_policy(&mut self, worker: &str) -> Result<Option<HostPolicy>, QueueError> {
        i_host_policy(self, worker)
    }

    fn failed_workers(&mut self, job: &str) -> Result<BTreeSet<String>, QueueError> {
        failures::i_failed_workers(self, job)
    }
}

impl ExplainReads for &Tx<'_> {
    fn pending_total(&mut self) -> Result<u64, QueueError> {
        let n: i64 = self.db.query_row(
            "SELECT COUNT(*) FROM jobs WHERE status = 'pending' AND tombstoned = 0",
            [],
            |r| r.get(0),
        )?;
        Ok(n.max(0) as u64)
    }

    fn blocked(
        &mut self,
        w: &WorkerRow,
        policy: Option<&HostPolicy>,
    ) -> Result<Option<String>, QueueError> {
        i_worker_blocked(self, w.into(), policy)
    }

    fn leases_held(&mut self, worker: &str) -> Result<usize, QueueError> {
        Ok(i_leased_jobs_of(self, worker)?.len())
    }

    fn cuda_alternatives(&mut self, worker: &str) -> Result<Vec<CudaAlternative>, QueueError> {
        i_cuda_alternatives(self, worker)
    }

    fn jobs_ahead(&mut self, row: &JobRow, able: &[&Known]) -> Result<(u64, u64), QueueError> {
        i_jobs_ahead(self, row, able)
    }
}

/// What a job ahead asks for, as its claim columns hold it: model, require_cuda,
/// prefer_cuda, VRAM and RAM (as bits), allowed_hosts and placement (as stored).
type Needs = (String, bool, bool, u64, u64, String, String);

/// [`ExplainReads::jobs_ahead`] on SQLite: the claim columns of the jobs ahead.
fn i_jobs_ahead(tx: &Tx<'_>, row: &JobRow, able: &[&Known]) -> Result<(u64, u64), QueueError> {
    let spec = &row.spec;
    let order = i64::try_from(spec.manifest_order).unwrap_or(i64::MAX);
    let ahead_of = "status = 'pending' AND tombstoned = 0 AND \
         (priority > ?1 OR (priority = ?1 AND (manifest_order < ?2 OR \
          (manifest_order = ?2 AND id < ?3))))";
    if able.is_empty() {
        let ahead: i64 = tx.db.query_row(
            &format!("SELECT COUNT(*) FROM jobs WHERE {ahead_of}"),
            params![spec.priority, order, row.spec.id.as_str()],
            |r| r.get(0),
        )?;
        return Ok((ahead.max(0) as u64, 0));
    }
    let mut stmt = tx.db.prepare(&format!(
        "SELECT model, require_cuda, prefer_cuda, min_vram_gib, min_ram_gib, allowed_hosts, \
         placement FROM jobs WHERE {ahead_of}"
    ))?;
    let mut rows = stmt.query(params![spec.priority, order, row.spec.id.as_str()])?;
    // Jobs ahead are often alike (a matrix): decide once per distinct needs.
    let mut competes: HashMap<Needs, bool> = HashMap::new();
    let (mut ahead, mut never) = (0u64, 0u64);
    while let Some(r) = rows.next()? {
        let (model, require_cuda, prefer_cuda, vram, ram, hosts, placement): (
            String,
            bool,
            bool,
            f64,
            f64,
            String,
            String,
        ) = (
            r.get(0)?,
            r.get(1)?,
            r.get(2)?,
            r.get(3)?,
            r.get(4)?,
            r.get(5)?,
            r.get(6)?,
        );
        let key = (
            model,
            require_cuda,
            prefer_cuda,
            vram.to_bits(),
            ram.to_bits(),
            hosts,
            placement,
        );
        let runs = match competes.get(&key) {
            Some(runs) => *runs,
            None => {
                let allowed_hosts = if key.5 == "[]" {
                    Vec::new()
                } else {
                    serde_json::from_str(&key.5)
                        .map_err(|e| QueueError::corrupt(format!("allowed_hosts {}: {e}", key.5)))?
                };
                let mut c = Constraints {
                    require_cuda,
                    prefer_cuda,
                    min_vram_gib: vram,
                    min_ram_gib: ram,
                    allowed_hosts,
                    ..Constraints::default()
                };
                Placement::from_column(&key.6, &key.0)?.apply(&mut c);
                let runs = able.iter().any(|k| {
                    fit_reasons(
                        &key.0,
                        &c,
                        &k.row.name,
                        &k.row.capability,
                        k.policy.as_ref(),
                    )
                    .iter()
                    .all(|reason| !reason.lasting)
                });
                competes.insert(key, runs);
                runs
            }
        };
        if runs {
            ahead += 1;
        } else {
            never += 1;
        }
    }
    Ok((ahead, never))
}

/// Up to three `worker (reason)` items, then how many more.
fn some_workers(items: &[(&str, &str)]) -> String {
    let mut shown: Vec<String> = items
        .iter()
        .take(3)
        .map(|(w, r)| format!("{w} ({r})"))
        .collect();
    if items.len() > 3 {
        shown.push(format!("{} more", items.len() - 3));
    }
    shown.join(", ")
}

/// The most frequent reasons, with their counts, at most three.
fn top_reasons<'a>(reasons: impl Iterator<Item = &'a String>) -> String {
    let mut tally: BTreeMap<&str, usize> = BTreeMap::new();
    for r in reasons {
        *tally.entry(r.as_str()).or_default() += 1;
    }
    let mut by_count: Vec<(&str, usize)> = tally.into_iter().collect();
    by_count.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    by_count
        .iter()
        .take(3)
        .map(|(r, n)| format!("{r} ({n})"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// One line: who can run it now, who later and why not yet, or why nobody ever can
/// (lasting reasons first, so a host policy is never hidden behind a cordon); then the
/// place in the queue.
pub(crate) fn pending_summary(
    workers: &[WorkerFit],
    position: u64,
    total: u64,
    never_ahead: u64,
) -> String {
    let mut place = format!("position {position} of {total} pending");
    if never_ahead > 0 {
        place.push_str(&format!(
            " ({never_ahead} ahead of it can never run on the workers that can run it, \
             so they do not hold it back)"
        ));
    }
    if workers.is_empty() {
        return format!("no workers known yet; {place}");
    }
    let now: Vec<&str> = workers
        .iter()
        .filter(|w| w.reasons.is_empty())
        .map(|w| w.worker.as_str())
        .collect();
    let later: Vec<(&str, &str)> = workers
        .iter()
        .filter(|w| w.lasting_reasons == 0)
        .filter_map(|w| w.reasons.first().map(|r| (w.worker.as_str(), r.as_str())))
        .collect();
    let never: Vec<&WorkerFit> = workers.iter().filter(|w| w.lasting_reasons > 0).collect();
    let never_reasons = || top_reasons(never.iter().flat_map(|w| w.lasting().iter()));
    if !now.is_empty() {
        return format!(
            "can run now on {}; {place} (it goes to the first of them to claim, unless jobs \
             ahead of it take them)",
            now.join(", ")
        );
    }
    if !later.is_empty() {
        let mut text = format!("can run later on {}", some_workers(&later));
        if !never.is_empty() {
            text.push_str(&format!(
                "; {} of {} workers never can: {}",
                never.len(),
                workers.len(),
                never_reasons()
            ));
        }
        return format!("{text}; {place}");
    }
    format!(
        "no known worker can ever run it as things are: {}; {place}",
        never_reasons()
    )
}

pub(crate) fn not_pending_summary(row: &JobRow) -> String {
    let worker = row.worker.as_deref().unwrap_or("?");
    let max = row.spec.max_attempts;
    match row.status {
        JobStatus::Pending | JobStatus::Held if row.tombstoned => {
            "tombstoned: removed from the manifest, so no worker will claim it".to_string()
        }
        JobStatus::Pending => "pending".to_string(),
        JobStatus::Held => format!(
            "held by an operator: no worker will claim it until `cis490ctl release {}`",
            row.spec.id.short()
        ),
        JobStatus::Claimed => format!(
            "claimed by {worker} (attempt {} of {max}), not started yet",
            row.attempts
        ),
        JobStatus::Running => {
            format!("running on {worker} (attempt {} of {max})", row.attempts)
        }
        JobStatus::Completed => format!("completed on {worker}"),
        JobStatus::Failed => format!(
            "failed: {}",
            row.error_reason.as_deref().unwrap_or("no reason recorded")
        ),
        JobStatus::Cancelled => "cancelled by an operator".to_string(),
    }
}
