//! `explain(job)` on PostgreSQL: the rules are `queue::explain`'s; this file gives them
//! the rows they read ([`ExplainReads`]).

use std::collections::{BTreeSet, HashMap};

use cis490_api::{Constraints, Explain, JobId};

use super::failures::i_failed_workers;
use super::matching::{i_cuda_alternatives, i_worker_blocked};
use super::nodes::{i_host_policy, i_leased_jobs_of, i_worker_rows};
use super::rows::i_existing_job;
use super::tx::PgTx;
use crate::policy::HostPolicy;
use crate::queue::explain::{explain, ExplainReads, Known};
use crate::queue::matching::{fit_reasons, CudaAlternative};
use crate::queue::nodes::WorkerRow;
use crate::queue::rows::JobRow;
use crate::queue::rule_reads::RuleReads;
use crate::queue::QueueError;

pub(crate) fn i_explain(tx: &mut PgTx<'_>, id: &JobId) -> Result<Explain, QueueError> {
    let row = i_existing_job(tx, id)?;
    explain(tx, id, &row)
}

impl RuleReads for PgTx<'_> {
    fn workers(&mut self) -> Result<Vec<WorkerRow>, QueueError> {
        i_worker_rows(self)
    }

    fn host_policy(&mut self, worker: &str) -> Result<Option<HostPolicy>, QueueError> {
        i_host_policy(self, worker)
    }

    fn failed_workers(&mut self, job: &str) -> Result<BTreeSet<String>, QueueError> {
        i_failed_workers(self, job)
    }
}

impl ExplainReads for PgTx<'_> {
    fn pending_total(&mut self) -> Result<u64, QueueError> {
        let n: i64 = self
            .db
            .query_one(
                "SELECT COUNT(*) FROM jobs WHERE status = 'pending' AND NOT tombstoned",
                &[],
            )?
            .try_get(0)?;
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

/// SQLite's `explain::i_jobs_ahead`: the pending jobs ahead of `row` that some worker of
/// `able` can run, and those none of them ever can.
fn i_jobs_ahead(
    tx: &mut PgTx<'_>,
    row: &JobRow,
    able: &[&Known],
) -> Result<(u64, u64), QueueError> {
    let spec = &row.spec;
    let priority = i64::from(spec.priority);
    let order = i64::try_from(spec.manifest_order).unwrap_or(i64::MAX);
    let ahead_of = "status = 'pending' AND NOT tombstoned AND \
         (priority > $1 OR (priority = $1 AND (manifest_order < $2 OR \
          (manifest_order = $2 AND id < $3))))";
    if able.is_empty() {
        let ahead: i64 = tx
            .db
            .query_one(
                &format!("SELECT COUNT(*) FROM jobs WHERE {ahead_of}"),
                &[&priority, &order, &spec.id.as_str()],
            )?
            .try_get(0)?;
        return Ok((ahead.max(0) as u64, 0));
    }
    // The whole spec of each job ahead (alike ones decided once): its constraints are
    // what the claim columns hold.
    let rows = tx.db.query(
        &format!("SELECT model, spec FROM jobs WHERE {ahead_of}"),
        &[&priority, &order, &spec.id.as_str()],
    )?;
    let mut competes: HashMap<String, bool> = HashMap::new();
    let (mut ahead, mut never) = (0u64, 0u64);
    for r in &rows {
        let model: String = r.try_get(0)?;
        let text: String = r.try_get(1)?;
        let job: cis490_api::JobSpec = super::rows::from_json("job spec", &text)?;
        let c: &Constraints = &job.constraints;
        let key = format!("{model}|{}", super::rows::to_json(c)?);
        let runs = *competes.entry(key).or_insert_with(|| {
            able.iter().any(|k| {
                fit_reasons(&model, c, &k.row.name, &k.row.capability, k.policy.as_ref())
                    .iter()
                    .all(|reason| !reason.lasting)
            })
        });
        if runs {
            ahead += 1;
        } else {
            never += 1;
        }
    }
    Ok((ahead, never))
}
