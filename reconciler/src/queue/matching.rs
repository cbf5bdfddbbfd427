//! Matching jobs to workers, and the claim.
//!
//! A claim walks pending jobs in queue order (priority, then the prefer_cuda preference,
//! then manifest order) through an index, with the cheap constraints (status, tombstone,
//! require_cuda, VRAM, RAM) in SQL and the rest (allowed_hosts, host policy, node_selector,
//! cores and GPUs (`placement.rs`), prefer_cuda deferral) in Rust. It stops at the first job that fits, so a claim costs an index seek
//! plus the jobs it has to skip, not a scan of the queue.

use std::collections::HashMap;

use cis490_api::{Capability, ClaimResponse, Constraints, JobId, Lease, WorkerName};
use rand::Rng;
use rusqlite::{params, OptionalExtension};

use super::events::i_emit;
use super::failures;
use super::nodes::{self, WorkerRow};
use super::placement::{placement_reasons, Placement};
use super::rows::i_existing_job;
use super::transitions::{self, Job};
use super::{worker_names, QueueError, Tx};
use crate::policy::HostPolicy;

/// CUDA jobs can run here: CUDA reported and at least one GPU to hand out.
pub(crate) fn has_cuda(cap: &Capability) -> bool {
    cap.cuda && !cap.gpus.is_empty()
}

/// Formats GiB without noise: 24 -> "24", 7.5 -> "7.5".
fn gib(x: f64) -> String {
    let rounded = (x * 10.0).round() / 10.0;
    format!("{rounded}")
}

/// Why a worker does not take a job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Reason {
    pub text: String,
    /// True when it lasts until the job, the worker's hardware or the manifest's host
    /// policy changes (no CUDA, too little RAM in all, not in allowed_hosts, host policy);
    /// false when it passes as jobs end (a GPU in use, RAM reserved, a busy worker).
    pub lasting: bool,
}

impl Reason {
    pub(crate) fn lasting(text: impl Into<String>) -> Reason {
        Reason {
            text: text.into(),
            lasting: true,
        }
    }

    pub(crate) fn passing(text: impl Into<String>) -> Reason {
        Reason {
            text: text.into(),
            lasting: false,
        }
    }
}

/// Why `worker` (with `cap`, its last report or claim, and `policy`) cannot take a job of
/// `model` with `c` now, empty when it can. The same rules the agent applies to a claimed
/// job (`agent/src/slots.rs`), so the server never hands out a job the agent must give
/// back: a GPU job needs a listed GPU; one without `min_vram_gib` needs a GPU no job holds
/// any part of. Does not look at cordon, freshness, load or prefer_cuda. Lasting reasons
/// are judged from what `cap` lists (a busy GPU a claim leaves out is not seen).
pub(crate) fn fit_reasons(
    model: &str,
    c: &Constraints,
    worker: &str,
    cap: &Capability,
    policy: Option<&HostPolicy>,
) -> Vec<Reason> {
    let mut reasons = Vec::new();
    let needs_gpu = c.require_cuda || c.min_vram_gib > 0.0;
    if c.require_cuda && !cap.cuda {
        reasons.push(Reason::lasting("no CUDA"));
    } else if needs_gpu && cap.cuda && cap.gpus.is_empty() {
        reasons.push(Reason::passing("no free GPU (all in use)"));
    } else if c.require_cuda && c.min_vram_gib <= 0.0 && !cap.has_whole_gpu() {
        reasons.push(Reason::passing(
            "no whole GPU free (jobs sharing by VRAM hold part of each; a CUDA job \
             without min_vram_gib needs a GPU to itself)",
        ));
    }
    if c.min_vram_gib > 0.0 && !(cap.cuda && cap.gpus.is_empty()) {
        let best = cap.max_gpu_allocatable_gib();
        if best < c.min_vram_gib {
            let text = format!(
                "{} GiB VRAM < {} GiB required",
                gib(best),
                gib(c.min_vram_gib)
            );
            let largest = cap
                .gpus
                .iter()
                .map(|g| g.vram_total_mib as f64 / cis490_api::node::MIB_PER_GIB)
                .fold(0.0, f64::max);
            reasons.push(if largest < c.min_vram_gib {
                Reason::lasting(text)
            } else {
                Reason::passing(format!("{text} (the rest is in use)"))
            });
        }
    }
    if c.min_ram_gib > 0.0 {
        let ram = cap.ram_allocatable_gib();
        if ram < c.min_ram_gib {
            let text = format!("{} GiB RAM < {} GiB required", gib(ram), gib(c.min_ram_gib));
            let total = cap.ram_total_mib as f64 / cis490_api::node::MIB_PER_GIB;
            reasons.push(if total < c.min_ram_gib {
                Reason::lasting(text)
            } else {
                Reason::passing(format!("{text} (the rest is reserved)"))
            });
        }
    }
    if !c.allowed_hosts.is_empty() && !c.allowed_hosts.iter().any(|h| h == worker) {
        reasons.push(Reason::lasting("not in allowed_hosts"));
    }
    if let Some(why) = policy.and_then(|p| p.denies_model(model)) {
        reasons.push(Reason::lasting(why));
    }
    reasons.extend(placement_reasons(c, cap, policy));
    reasons
}

/// The texts of [`fit_reasons`]: empty when `worker` can take the job now.
pub(crate) fn hard_reasons(
    model: &str,
    c: &Constraints,
    worker: &str,
    cap: &Capability,
    policy: Option<&HostPolicy>,
) -> Vec<String> {
    fit_reasons(model, c, worker, cap, policy)
        .into_iter()
        .map(|r| r.text)
        .collect()
}

/// A Ready CUDA worker that could take prefer_cuda jobs instead of a CPU worker.
pub(crate) struct CudaAlternative {
    row: WorkerRow,
    policy: Option<HostPolicy>,
}

impl CudaAlternative {
    /// A Ready, schedulable CUDA worker (the caller checked) and its host policy.
    pub(crate) fn new(row: WorkerRow, policy: Option<HostPolicy>) -> Self {
        CudaAlternative { row, policy }
    }
}

/// Ready (fresh), schedulable CUDA workers other than `except`.
pub(crate) fn i_cuda_alternatives(
    tx: &Tx<'_>,
    except: &str,
) -> Result<Vec<CudaAlternative>, QueueError> {
    let mut out = Vec::new();
    for row in nodes::i_worker_rows(tx)? {
        if row.name != except && row.is_fresh(tx) && row.schedulable() && has_cuda(&row.capability)
        {
            let policy = nodes::i_host_policy(tx, &row.name)?;
            out.push(CudaAlternative { row, policy });
        }
    }
    Ok(out)
}

/// True once a job has been pending for `prefer_cuda_wait_s`: from then on any worker that
/// can run it may take it.
pub(crate) fn waited_long(tx: &Tx<'_>, pending_since: i64) -> bool {
    waited_long_at(tx.now, tx.config, pending_since)
}

/// [`waited_long`] at `now` (ms), for backends without a SQLite `Tx`.
pub(crate) fn waited_long_at(now: i64, config: &super::QueueConfig, pending_since: i64) -> bool {
    let wait_ms = i64::try_from(config.prefer_cuda_wait_s)
        .unwrap_or(i64::MAX / 1000)
        .saturating_mul(1000);
    now.saturating_sub(pending_since) >= wait_ms
}

/// True when some Ready CUDA worker could run a job of `model` with `c`. A CUDA worker's
/// capability is its last report; a busy one still counts (it gets the job when it frees
/// up, which is what "prefer" means).
pub(crate) fn any_cuda_could_run(
    model: &str,
    c: &Constraints,
    alternatives: &[CudaAlternative],
) -> bool {
    alternatives.iter().any(|alt| {
        hard_reasons(
            model,
            c,
            &alt.row.name,
            &alt.row.capability,
            alt.policy.as_ref(),
        )
        .is_empty()
    })
}

/// A worker's schedulability: what `i_worker_blocked` looks at.
pub(crate) struct Schedulability<'a> {
    pub name: &'a str,
    pub cordoned: bool,
    pub draining: bool,
}

impl<'a> From<&'a WorkerRow> for Schedulability<'a> {
    fn from(row: &'a WorkerRow) -> Self {
        Schedulability {
            name: &row.name,
            cordoned: row.cordoned,
            draining: row.draining,
        }
    }
}

/// Worker-level reasons it takes nothing now (all passing): cordon, drain, or host
/// max_concurrent.
pub(crate) fn i_worker_blocked(
    tx: &Tx<'_>,
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
        let held = nodes::i_leased_jobs_of(tx, worker.name)?.len();
        if held >= max as usize {
            return Ok(Some(format!("at max_concurrent {max}")));
        }
    }
    Ok(None)
}

/// One walk of the claim: claimable jobs in queue order through one partial index,
/// with the cheap constraints in SQL. The shared walk (`jobs_claim_*`) holds only jobs no
/// host list pins; each pinned walk (`jobs_pinned_*`, `?6` = one host list as stored)
/// holds the jobs pinned to exactly that list (schema migration 3). A CPU worker's
/// indexes leave out `require_cuda` jobs. So a claim only steps over jobs this worker may
/// not run for RAM, VRAM, its host policy or a prefer_cuda deferral, never over other
/// hosts' pinned jobs or CUDA-only jobs.
/// `?1`: the worker's best GPU's allocatable VRAM (GiB), `?2`: its allocatable RAM (GiB),
/// `?3`: models the host policy denies (JSON list, `[]` = none), `?4`: models it allows
/// (`[]` = all), `?5`: whether a GPU is free whole (else a `require_cuda` job without
/// `min_vram_gib` does not fit: the agent gives such a job a GPU to itself). (`+?6`, not
/// `?6`: with `column = ?6` SQLite marks the statement to be compiled again whenever ?6
/// is bound anew, which rusqlite's statement cache does on every use, and compiling costs
/// more than the claim.)
macro_rules! claim_query {
    ($index:literal, $which:literal, $prefer:literal) => {
        concat!(
            "SELECT id, model, prefer_cuda, allowed_hosts, pending_since, require_cuda, \
             min_vram_gib, min_ram_gib, priority, manifest_order, placement FROM jobs INDEXED BY ",
            $index,
            " WHERE status = 'pending' AND tombstoned = 0 AND ",
            $which,
            " AND min_vram_gib <= ?1 AND min_ram_gib <= ?2 \
               AND (?5 OR require_cuda = 0 OR min_vram_gib > 0) \
               AND (?3 = '[]' OR NOT EXISTS (SELECT 1 FROM json_each(?3) WHERE value = jobs.model)) \
               AND (?4 = '[]' OR EXISTS (SELECT 1 FROM json_each(?4) WHERE value = jobs.model)) \
             ORDER BY priority DESC, prefer_cuda ",
            $prefer,
            ", manifest_order, id"
        )
    };
}

/// Queue order for a CUDA worker: prefer_cuda jobs first within a priority.
pub(crate) const CLAIM_CUDA: &str = claim_query!("jobs_claim_cuda", "allowed_hosts = '[]'", "DESC");
/// Queue order for a non-CUDA worker: prefer_cuda jobs last within a priority; never a
/// `require_cuda` job.
pub(crate) const CLAIM_CPU: &str = claim_query!(
    "jobs_claim_cpu",
    "allowed_hosts = '[]' AND require_cuda = 0",
    "ASC"
);
/// [`CLAIM_CUDA`] over the jobs pinned to the host list `?6`.
pub(crate) const CLAIM_PINNED_CUDA: &str = claim_query!(
    "jobs_pinned_cuda",
    "allowed_hosts <> '[]' AND allowed_hosts = +?6",
    "DESC"
);
/// [`CLAIM_CPU`] over the jobs pinned to the host list `?6`.
pub(crate) const CLAIM_PINNED_CPU: &str = claim_query!(
    "jobs_pinned_cpu",
    "allowed_hosts <> '[]' AND require_cuda = 0 AND allowed_hosts = +?6",
    "ASC"
);
/// The next host list (as stored) after `?1` that pins a claimable job, in index order:
/// one seek per list, so a claim finds the lists that name its worker without reading
/// the pinned jobs. (It still visits every distinct list: a manifest that pins each job
/// to a list of its own would make each claim cost one seek per pinned job.)
pub(crate) const NEXT_PIN_LIST_CUDA: &str =
    "SELECT allowed_hosts FROM jobs INDEXED BY jobs_pinned_cuda \
     WHERE status = 'pending' AND tombstoned = 0 AND allowed_hosts <> '[]' \
     AND allowed_hosts > +?1 ORDER BY allowed_hosts LIMIT 1";
/// [`NEXT_PIN_LIST_CUDA`] among jobs a CPU worker may take.
pub(crate) const NEXT_PIN_LIST_CPU: &str =
    "SELECT allowed_hosts FROM jobs INDEXED BY jobs_pinned_cpu \
     WHERE status = 'pending' AND tombstoned = 0 AND allowed_hosts <> '[]' \
     AND require_cuda = 0 AND allowed_hosts > +?1 ORDER BY allowed_hosts LIMIT 1";

/// One candidate as the claim query returns it.
#[derive(Clone)]
struct Candidate {
    id: String,
    model: String,
    prefer_cuda: bool,
    allowed_hosts: String,
    pending_since: i64,
    require_cuda: bool,
    min_vram_gib: f64,
    min_ram_gib: f64,
    priority: i64,
    manifest_order: i64,
    placement: String,
}

impl Candidate {
    fn read(r: &rusqlite::Row<'_>) -> rusqlite::Result<Candidate> {
        Ok(Candidate {
            id: r.get(0)?,
            model: r.get(1)?,
            prefer_cuda: r.get(2)?,
            allowed_hosts: r.get(3)?,
            pending_since: r.get(4)?,
            require_cuda: r.get(5)?,
            min_vram_gib: r.get(6)?,
            min_ram_gib: r.get(7)?,
            priority: r.get(8)?,
            manifest_order: r.get(9)?,
            placement: r.get(10)?,
        })
    }

    /// Where the candidate stands in the queue order of a CUDA (`cuda`) or other worker:
    /// smaller comes first, exactly as the claim indexes order jobs.
    fn queue_key(&self, cuda: bool) -> (std::cmp::Reverse<i64>, bool, i64, &str) {
        let prefer_last = if cuda {
            !self.prefer_cuda
        } else {
            self.prefer_cuda
        };
        (
            std::cmp::Reverse(self.priority),
            prefer_last,
            self.manifest_order,
            self.id.as_str(),
        )
    }

    fn constraints(&self) -> Result<Constraints, QueueError> {
        let allowed_hosts = if self.allowed_hosts == "[]" {
            Vec::new()
        } else {
            serde_json::from_str(&self.allowed_hosts)
                .map_err(|e| QueueError::corrupt(format!("allowed_hosts of {}: {e}", self.id)))?
        };
        let mut c = Constraints {
            require_cuda: self.require_cuda,
            prefer_cuda: self.prefer_cuda,
            min_vram_gib: self.min_vram_gib,
            min_ram_gib: self.min_ram_gib,
            allowed_hosts,
            ..Constraints::default()
        };
        Placement::from_column(&self.placement, &self.id)?.apply(&mut c);
        Ok(c)
    }
}

/// The claim: records the node status, picks the best job `worker` may run, leases it.
pub(crate) fn i_claim(
    tx: &mut Tx<'_>,
    worker: &WorkerName,
    cap: &Capability,
) -> Result<Option<ClaimResponse>, QueueError> {
    worker_names::i_upsert_worker(tx, worker, cap)?;
    // Only the flags: the worker's row also holds its capability as JSON, which the claim
    // has in hand (decoding it again was 6% of a claim's instructions).
    let Some((cordoned, draining)) = tx
        .db
        .prepare_cached("SELECT cordoned, draining FROM workers WHERE name = ?1")?
        .query_row([worker.as_str()], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?
    else {
        return Err(QueueError::corrupt(format!(
            "worker {worker} vanished inside its claim"
        )));
    };
    let policy = nodes::i_host_policy(tx, worker.as_str())?;
    let me = Schedulability {
        name: worker.as_str(),
        cordoned,
        draining,
    };
    if i_worker_blocked(tx, me, policy.as_ref())?.is_some() {
        return Ok(None);
    }
    let Some(id) = i_pick(tx, worker.as_str(), cap, policy.as_ref())? else {
        return Ok(None);
    };
    i_lease(tx, &id, worker).map(Some)
}

/// The host policy as the claim query's JSON lists: (denied models, allowed models or `[]`
/// for all). A `*` in deny_jobs is handled before the query (nothing matches).
pub(crate) fn policy_lists(policy: Option<&HostPolicy>) -> (String, String) {
    let Some(p) = policy else {
        return ("[]".to_string(), "[]".to_string());
    };
    let json = |v: &[String]| serde_json::to_string(v).unwrap_or_else(|_| "[]".to_string());
    let allowed = if p.allow_jobs.iter().any(|m| m == "*") {
        "[]".to_string()
    } else {
        json(&p.allow_jobs)
    };
    (json(&p.deny_jobs), allowed)
}

/// The best pending job for this worker, if any: the first job it may take from the
/// shared walk and from the walk of each host list that names it, whichever comes first
/// in queue order (each walk is in queue order, so the first fit of the best walk is the
/// first fit of all of them).
fn i_pick(
    tx: &Tx<'_>,
    worker: &str,
    cap: &Capability,
    policy: Option<&HostPolicy>,
) -> Result<Option<JobId>, QueueError> {
    if policy.is_some_and(|p| p.deny_jobs.iter().any(|m| m == "*")) {
        return Ok(None);
    }
    let cuda = has_cuda(cap);
    let (denied, allowed) = policy_lists(policy);
    let (vram, ram) = (cap.max_gpu_allocatable_gib(), cap.ram_allocatable_gib());
    let whole_gpu = cap.has_whole_gpu();
    let mut fit = FirstFit {
        tx,
        worker,
        cap,
        policy,
        cuda,
        alternatives: None,
        cuda_could_run: HashMap::new(),
        failed_here: failures::i_pending_failed_on(tx, worker)?,
        fallback: None,
    };
    let shared = if cuda { CLAIM_CUDA } else { CLAIM_CPU };
    let mut best = fit.walk(shared, params![vram, ram, denied, allowed, whole_gpu])?;
    let pinned = if cuda {
        CLAIM_PINNED_CUDA
    } else {
        CLAIM_PINNED_CPU
    };
    for list in i_pin_lists_naming(tx, worker, cuda)? {
        let Some(found) = fit.walk(pinned, params![vram, ram, denied, allowed, whole_gpu, list])?
        else {
            continue;
        };
        if best
            .as_ref()
            .is_none_or(|b| found.queue_key(cuda) < b.queue_key(cuda))
        {
            best = Some(found);
        }
    }
    // A job this worker failed on only when nothing else fits (and no other worker is
    // waiting to try it).
    best.or(fit.fallback)
        .map(|c| JobId::parse(&c.id).map_err(QueueError::corrupt))
        .transpose()
}

/// The host lists (as stored) that pin a job this worker may claim and name it.
fn i_pin_lists_naming(tx: &Tx<'_>, worker: &str, cuda: bool) -> Result<Vec<String>, QueueError> {
    let mut next = tx.db.prepare_cached(if cuda {
        NEXT_PIN_LIST_CUDA
    } else {
        NEXT_PIN_LIST_CPU
    })?;
    let mut naming = Vec::new();
    // Every stored list is a JSON array, so it sorts after "".
    let mut after = String::new();
    while let Some(list) = next
        .query_row([&after], |r| r.get::<_, String>(0))
        .optional()?
    {
        let hosts: Vec<String> = serde_json::from_str(&list)
            .map_err(|e| QueueError::corrupt(format!("allowed_hosts {list}: {e}")))?;
        if hosts.iter().any(|h| h == worker) {
            naming.push(list.clone());
        }
        after = list;
    }
    Ok(naming)
}

/// Finds the first job a worker may take in one walk; remembers what it learnt about
/// prefer_cuda deferrals across the walks of one claim.
struct FirstFit<'a, 't> {
    tx: &'a Tx<'t>,
    worker: &'a str,
    cap: &'a Capability,
    policy: Option<&'a HostPolicy>,
    cuda: bool,
    alternatives: Option<Vec<CudaAlternative>>,
    /// Whether a CUDA worker could run jobs with these needs, per distinct needs: a CPU
    /// worker may skip many prefer_cuda jobs that all look alike.
    cuda_could_run: HashMap<String, bool>,
    /// Pending jobs that failed on this worker before (usually none): taken only after
    /// every other fit, and not while another Ready worker that could run them has not
    /// tried yet (for `retry_elsewhere_wait_s`).
    failed_here: std::collections::BTreeSet<String>,
    /// The first such job that fits, in queue order over all walks.
    fallback: Option<Candidate>,
}

impl FirstFit<'_, '_> {
    fn walk(
        &mut self,
        sql: &str,
        params: &[&dyn rusqlite::ToSql],
    ) -> Result<Option<Candidate>, QueueError> {
        let mut stmt = self.tx.db.prepare_cached(sql)?;
        let mut rows = stmt.query(params)?;
        while let Some(r) = rows.next()? {
            let cand = Candidate::read(r)?;
            if self.fits(&cand)? {
                return Ok(Some(cand));
            }
        }
        Ok(None)
    }

    fn fits(&mut self, cand: &Candidate) -> Result<bool, QueueError> {
        let constraints = cand.constraints()?;
        // The query filtered these already; checked again so that the SQL and
        // `hard_reasons` (which explain uses) can never disagree silently.
        if !hard_reasons(
            &cand.model,
            &constraints,
            self.worker,
            self.cap,
            self.policy,
        )
        .is_empty()
        {
            return Ok(false);
        }
        if cand.prefer_cuda && !self.cuda && !waited_long(self.tx, cand.pending_since) {
            let alts = match &self.alternatives {
                Some(a) => a,
                None => self
                    .alternatives
                    .insert(i_cuda_alternatives(self.tx, self.worker)?),
            };
            let key = format!(
                "{}|{}|{}|{}|{}|{}",
                cand.model,
                cand.require_cuda,
                cand.min_vram_gib,
                cand.min_ram_gib,
                cand.allowed_hosts,
                cand.placement
            );
            let defer = *self
                .cuda_could_run
                .entry(key)
                .or_insert_with(|| any_cuda_could_run(&cand.model, &constraints, alts));
            if defer {
                return Ok(false);
            }
        }
        if self.failed_here.contains(&cand.id) {
            let left = failures::left_to_others(
                &mut { self.tx },
                &cand.id,
                self.worker,
                &cand.model,
                &constraints,
                cand.pending_since,
            )?;
            if !left {
                let better = self
                    .fallback
                    .as_ref()
                    .is_none_or(|f| cand.queue_key(self.cuda) < f.queue_key(self.cuda));
                if better {
                    self.fallback = Some(cand.clone());
                }
            }
            return Ok(false);
        }
        Ok(true)
    }
}

/// A fresh lease token: 128 random bits as hex.
pub(crate) fn new_token() -> String {
    let bytes: [u8; 16] = rand::rng().random();
    hex::encode(bytes)
}

/// Leases the pending job `id` to `worker`: one more attempt, a new token.
pub(crate) fn i_lease(
    tx: &mut Tx<'_>,
    id: &JobId,
    worker: &WorkerName,
) -> Result<ClaimResponse, QueueError> {
    let job = i_existing_job(tx, id)?;
    let grant = transitions::grant_lease(&Job::of(&job)?, worker, tx.now)?;
    let attempt = grant.attempt;
    let token = new_token();
    let changed = tx
        .db
        .prepare_cached(
            "UPDATE jobs SET status = 'claimed', worker = ?2, attempts = ?3, lease_attempt = ?3, \
             lease_token = ?4, lease_expires_at = ?5, updated_at = ?6, started_at = NULL, \
             finished_at = NULL \
             WHERE id = ?1 AND status = 'pending' AND tombstoned = 0",
        )?
        .execute(params![
            id.as_str(),
            worker.as_str(),
            attempt,
            token,
            grant.expires_at,
            tx.now
        ])?;
    if changed != 1 {
        return Err(QueueError::InvalidState {
            message: format!("job {} is no longer pending", id.short()),
        });
    }
    i_emit(tx, id, grant.event)?;
    Ok(ClaimResponse {
        job: job.spec,
        lease: Lease { attempt, token },
    })
}
