//! The claim on PostgreSQL: walk claimable jobs in queue order, take the first this worker
//! may run, lease it. The matching rules are the shared ones (`matching::hard_reasons`,
//! `any_cuda_could_run`, `waited_long_at`, `failures::waited_for_others`,
//! `transitions::grant_lease`); only the walk is this backend's.
//!
//! Concurrency: the walk reads without locks, and a job that fits is then locked with
//! `SELECT ... FOR UPDATE SKIP LOCKED`, re-checked (still pending, still in the manifest,
//! still fits) and leased. A job another claim holds is skipped, not waited for, so claims
//! from many workers and servers run side by side and each job is leased once. Locking in
//! the walk itself (`FOR UPDATE SKIP LOCKED` on the walk's query) would also lock every
//! job stepped over until this claim commits, hiding jobs this worker cannot run from the
//! workers that can.

use std::collections::{BTreeSet, HashMap};

use cis490_api::{Capability, ClaimResponse, JobId, Lease, WorkerName};

use super::failures::i_pending_failed_on;
use super::nodes::{i_host_policy, i_leased_jobs_of, i_worker_rows};
use super::rows::{job_from_row, JOB_COLUMNS};
use super::tx::PgTx;
use crate::policy::HostPolicy;
use crate::queue::failures::left_to_others;
use crate::queue::matching::{
    any_cuda_could_run, hard_reasons, has_cuda, new_token, waited_long_at, CudaAlternative,
    Schedulability,
};
use crate::queue::rows::JobRow;
use crate::queue::transitions::{self, Job};
use crate::queue::QueueError;

/// How many jobs each round of the walk reads: first a few (what nearly every claim
/// needs), then more, then the rest. With a LIMIT the planner walks the claim index from
/// its head; without one it plans for every pending job (a scan and a sort of the whole
/// queue per claim).
const WALK_ROUNDS: [i64; 3] = [64, 4096, i64::MAX];

/// The claim: records the node status, picks the best job `worker` may run, leases it.
pub(crate) fn i_claim(
    tx: &mut PgTx<'_>,
    worker: &WorkerName,
    cap: &Capability,
) -> Result<Option<ClaimResponse>, QueueError> {
    crate::queue::worker_names::i_upsert_worker(tx, worker, cap)?;
    let Some(flags) = tx.db.query_opt(
        "SELECT cordoned, draining FROM workers WHERE name = $1",
        &[&worker.as_str()],
    )?
    else {
        return Err(QueueError::corrupt(format!(
            "worker {worker} vanished inside its claim"
        )));
    };
    let (cordoned, draining): (bool, bool) = (flags.try_get(0)?, flags.try_get(1)?);
    let policy = i_host_policy(tx, worker.as_str())?;
    let me = Schedulability {
        name: worker.as_str(),
        cordoned,
        draining,
    };
    if i_worker_blocked(tx, me, policy.as_ref())?.is_some() {
        return Ok(None);
    }
    if policy
        .as_ref()
        .is_some_and(|p| p.deny_jobs.iter().any(|m| m == "*"))
    {
        return Ok(None);
    }
    let Some(row) = i_pick(tx, worker.as_str(), cap, policy.as_ref())? else {
        return Ok(None);
    };
    i_lease(tx, row, worker).map(Some)
}

/// SQLite's `matching::i_worker_blocked`: cordon, drain, or host max_concurrent.
pub(crate) fn i_worker_blocked(
    tx: &mut PgTx<'_>,
    worker: Schedulability<'_>,
    policy: Option<&HostPolicy>,
) -> Result<Option<String>, QueueError> {
    if worker.draining {
        return Ok(Some("draining".to_string()));
    }
    if worker.cordoned {
        return Ok(Some("cordoned".to_string()));
    }
    if let Some(max) = policy.and_then(|p| p.max_concurrent) {
        let held = i_leased_jobs_of(tx, worker.name)?.len();
        if held >= max as usize {
            return Ok(Some(format!("at max_concurrent {max}")));
        }
    }
    Ok(None)
}

/// The walk's query: claimable jobs in the queue order of a CUDA (`$7`) or other worker,
/// with the cheap constraints in SQL. `$1` VRAM and `$2` RAM (GiB) the worker can give,
/// `$3` whether a GPU is free whole, `$4` the worker's name (jobs pinned by allowed_hosts
/// to lists without it are left out), `$5` models its host policy denies, `$6` models it
/// allows (empty: all). LIMIT and OFFSET are written into the text: a prepared statement's
/// generic plan does not know a LIMIT parameter and plans a sort of every pending job.
fn walk_sql(cuda: bool, limit: i64, offset: i64) -> String {
    format!(
        "SELECT id, pending_since, {JOB_COLUMNS} FROM jobs \
         WHERE status = 'pending' AND NOT tombstoned{} \
         AND min_vram_gib <= $1 AND min_ram_gib <= $2 \
         AND ($3 OR NOT require_cuda OR min_vram_gib > 0) \
         AND (allowed_hosts = '[]' OR allowed_hosts::jsonb ? $4) \
         AND NOT (model = ANY($5)) AND (cardinality($6::text[]) = 0 OR model = ANY($6)) \
         ORDER BY priority DESC, prefer_cuda {}, manifest_order, id{}",
        if cuda { "" } else { " AND NOT require_cuda" },
        if cuda { "DESC" } else { "ASC" },
        match (limit, offset) {
            (i64::MAX, offset) => format!(" OFFSET {offset}"),
            (limit, offset) => format!(" LIMIT {limit} OFFSET {offset}"),
        },
    )
}

/// What the walk learnt so far (prefer_cuda deferrals, this worker's failed jobs).
struct Walk<'a> {
    worker: &'a str,
    cap: &'a Capability,
    policy: Option<&'a HostPolicy>,
    cuda: bool,
    alternatives: Option<Vec<CudaAlternative>>,
    cuda_could_run: HashMap<String, bool>,
    failed_here: BTreeSet<String>,
    /// The first job this worker failed on that it may take when nothing else fits.
    fallback: Option<JobId>,
}

impl Walk<'_> {
    fn fits(&mut self, tx: &mut PgTx<'_>, job: &JobRow) -> Result<bool, QueueError> {
        let c = &job.spec.constraints;
        let model = &job.spec.model;
        if !hard_reasons(model, c, self.worker, self.cap, self.policy).is_empty() {
            return Ok(false);
        }
        if c.prefer_cuda && !self.cuda && !waited_long_at(tx.now, tx.config, job.pending_since) {
            if self.alternatives.is_none() {
                self.alternatives = Some(i_cuda_alternatives(tx, self.worker)?);
            }
            let alts = self.alternatives.as_deref().unwrap_or_default();
            let key = format!("{model}|{}", super::rows::to_json(c)?);
            let defer = *self
                .cuda_could_run
                .entry(key)
                .or_insert_with(|| any_cuda_could_run(model, c, alts));
            if defer {
                return Ok(false);
            }
        }
        let id = job.spec.id.as_str();
        if self.failed_here.contains(id) {
            let left = left_to_others(tx, id, self.worker, model, c, job.pending_since)?;
            if !left && self.fallback.is_none() {
                self.fallback = Some(job.spec.id.clone());
            }
            return Ok(false);
        }
        Ok(true)
    }
}

/// Ready, schedulable CUDA workers other than `except`, with their host policies.
pub(crate) fn i_cuda_alternatives(
    tx: &mut PgTx<'_>,
    except: &str,
) -> Result<Vec<CudaAlternative>, QueueError> {
    let mut out = Vec::new();
    for row in i_worker_rows(tx)? {
        if row.name != except
            && row.is_fresh_at(tx.now, tx.config)
            && row.schedulable()
            && has_cuda(&row.capability)
        {
            let policy = i_host_policy(tx, &row.name)?;
            out.push(CudaAlternative::new(row, policy));
        }
    }
    Ok(out)
}

/// Locks `id` for this claim when no other claim holds it and it is still claimable and
/// still fits (it may have changed since the walk read it).
fn i_try_lock(
    tx: &mut PgTx<'_>,
    id: &JobId,
    walk: &Walk<'_>,
) -> Result<Option<JobRow>, QueueError> {
    let sql = format!(
        "SELECT {JOB_COLUMNS} FROM jobs WHERE id = $1 AND status = 'pending' \
         AND NOT tombstoned FOR UPDATE SKIP LOCKED"
    );
    let Some(r) = tx.db.query_opt(&sql, &[&id.as_str()])? else {
        return Ok(None);
    };
    let row = job_from_row(&r, 0)?;
    let fits = hard_reasons(
        &row.spec.model,
        &row.spec.constraints,
        walk.worker,
        walk.cap,
        walk.policy,
    )
    .is_empty();
    Ok(fits.then_some(row))
}

/// The best pending job for this worker, locked, if any.
fn i_pick(
    tx: &mut PgTx<'_>,
    worker: &str,
    cap: &Capability,
    policy: Option<&HostPolicy>,
) -> Result<Option<JobRow>, QueueError> {
    let cuda = has_cuda(cap);
    let denied: Vec<String> = policy.map(|p| p.deny_jobs.clone()).unwrap_or_default();
    let allowed: Vec<String> = match policy {
        Some(p) if !p.allow_jobs.iter().any(|m| m == "*") => p.allow_jobs.clone(),
        _ => Vec::new(),
    };
    let (vram, ram) = (cap.max_gpu_allocatable_gib(), cap.ram_allocatable_gib());
    let whole_gpu = cap.has_whole_gpu();
    let mut walk = Walk {
        worker,
        cap,
        policy,
        cuda,
        alternatives: None,
        cuda_could_run: HashMap::new(),
        failed_here: i_pending_failed_on(tx, worker)?,
        fallback: None,
    };
    // Rounds after the first skip the rows read before by OFFSET. Jobs other claims took
    // meanwhile shift the rest forward, so a later round may step over a few jobs: they
    // stay pending for the next claim, and a skipped job is only ever passed over, never
    // taken twice (the lock decides that).
    let mut seen: i64 = 0;
    for limit in WALK_ROUNDS {
        let sql = walk_sql(cuda, limit, seen);
        let params: [&(dyn postgres::types::ToSql + Sync); 6] =
            [&vram, &ram, &whole_gpu, &worker, &denied, &allowed];
        // The first round's text is always the same: prepared once per connection.
        let batch = if seen == 0 {
            tx.db.query(&sql, &params)?
        } else {
            tx.db.query_uncached(&sql, &params)?
        };
        let got = batch.len();
        seen = seen.saturating_add(i64::try_from(got).unwrap_or(i64::MAX));
        for r in &batch {
            let job = job_from_row(r, 2)?;
            if !walk.fits(tx, &job)? {
                continue;
            }
            if let Some(locked) = i_try_lock(tx, &job.spec.id, &walk)? {
                return Ok(Some(locked));
            }
        }
        if i64::try_from(got).unwrap_or(i64::MAX) < limit {
            break;
        }
    }
    match walk.fallback.take() {
        Some(id) => i_try_lock(tx, &id, &walk),
        None => Ok(None),
    }
}

/// Leases the locked pending job `row` to `worker`: one more attempt, a new token.
fn i_lease(
    tx: &mut PgTx<'_>,
    row: JobRow,
    worker: &WorkerName,
) -> Result<ClaimResponse, QueueError> {
    let grant = transitions::grant_lease(&Job::of(&row)?, worker, tx.now)?;
    let id = row.spec.id.clone();
    let attempt = grant.attempt;
    let token = new_token();
    tx.db.execute(
        "UPDATE jobs SET status = 'claimed', worker = $2, attempts = $3, lease_attempt = $3, \
         lease_token = $4, lease_expires_at = $5, updated_at = $6, started_at = NULL, \
         finished_at = NULL WHERE id = $1",
        &[
            &id.as_str(),
            &worker.as_str(),
            &i64::from(attempt),
            &token,
            &grant.expires_at,
            &tx.now,
        ],
    )?;
    tx.emit(&id, grant.event);
    Ok(ClaimResponse {
        job: row.spec,
        lease: Lease { attempt, token },
    })
}
