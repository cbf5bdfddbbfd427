//! Reconciling the manifest on PostgreSQL: the planner's `actual`, applying a plan (each
//! job re-checked under its row lock), and the manifest status.

use std::collections::BTreeMap;

use cis490_api::{JobSpec, ManifestError, ManifestStatus, PlanSummary};

use super::rows::{from_json, i_insert_job, i_job_row, i_write_spec, to_json};
use super::tx::PgTx;
use crate::plan::{changed_fields, ActualJob, Plan};
use crate::policy::HostPolicy;
use crate::queue::events::kind;
use crate::queue::rows::{from_ms, JobRow};
use crate::queue::transitions::{self, Job};
use crate::queue::{ManifestSource, QueueError};

pub(crate) fn i_actual(tx: &mut PgTx<'_>) -> Result<Vec<ActualJob>, QueueError> {
    tx.db
        .query("SELECT spec, status, tombstoned FROM jobs", &[])?
        .iter()
        .map(|r| {
            let spec: String = r.try_get(0)?;
            let status: String = r.try_get(1)?;
            Ok(ActualJob {
                spec: from_json("job spec", &spec)?,
                status: status.parse().map_err(QueueError::corrupt)?,
                tombstoned: r.try_get(2)?,
            })
        })
        .collect()
}

/// SQLite's `apply::i_apply`, with each job's row locked before it is judged.
pub(crate) fn i_apply(
    tx: &mut PgTx<'_>,
    plan: &Plan,
    hosts: &[HostPolicy],
    source: &ManifestSource,
) -> Result<PlanSummary, QueueError> {
    // One apply at a time (two servers reloading one manifest): the manifest row is the
    // lock, taken first so that applies never interleave their job locks.
    tx.db
        .execute("SELECT 1 FROM manifest WHERE id = 1 FOR UPDATE", &[])?;
    let mut changed = false;
    let mut creates: Vec<&JobSpec> = plan.create.iter().collect();
    creates.sort_by_key(|s| (std::cmp::Reverse(s.priority), s.manifest_order));
    for spec in creates {
        if i_insert_job(tx, spec)? {
            tx.event(
                Some(&spec.id),
                None,
                kind::CREATED,
                format!("created from the manifest ({} {})", spec.model, spec.mode),
            );
            changed = true;
        } else if let Some(row) = i_job_row(tx, &spec.id, true)? {
            changed |= i_update_if_allowed(tx, &row, spec)?;
        }
    }
    for (spec, _) in &plan.update {
        if let Some(row) = i_job_row(tx, &spec.id, true)? {
            changed |= i_update_if_allowed(tx, &row, spec)?;
        }
    }
    for spec in &plan.revive {
        let Some(row) = i_job_row(tx, &spec.id, true)? else {
            continue;
        };
        let job = Job::of(&row)?;
        let differs = !changed_fields(&row.spec, spec).is_empty();
        let Some(revival) = transitions::revive(&job, differs) else {
            changed |= i_update_if_allowed(tx, &row, spec)?;
            continue;
        };
        tx.db.execute(
            "UPDATE jobs SET tombstoned = FALSE, updated_at = $2 WHERE id = $1",
            &[&spec.id.as_str(), &tx.now],
        )?;
        if revival.write_spec {
            i_write_spec(tx, spec)?;
        }
        tx.emit(&spec.id, revival.event);
        changed = true;
    }
    for id in &plan.tombstone {
        let Some(row) = i_job_row(tx, id, true)? else {
            continue;
        };
        let Some(event) = transitions::tombstone(&Job::of(&row)?) else {
            continue;
        };
        tx.db.execute(
            "UPDATE jobs SET tombstoned = TRUE, updated_at = $2 WHERE id = $1",
            &[&id.as_str(), &tx.now],
        )?;
        tx.emit(id, event);
        changed = true;
    }
    changed |= i_replace_hosts(tx, hosts)?;

    let generation: i64 = tx
        .db
        .query_one("SELECT generation FROM manifest WHERE id = 1", &[])?
        .try_get(0)?;
    let generation = if changed { generation + 1 } else { generation };
    let warnings = to_json(&source.warnings)?;
    tx.db.execute(
        "UPDATE manifest SET path = $1, sha256 = $2, generation = $3, last_applied_at = $4, \
         last_errors = '[]', last_error_at = NULL, warnings = $5 WHERE id = 1",
        &[
            &source.path,
            &source.sha256,
            &generation,
            &tx.now,
            &warnings,
        ],
    )?;
    let mut summary = plan.summary();
    summary.applied = true;
    summary.generation = generation.max(0) as u64;
    summary.warnings = source.warnings.clone();
    Ok(summary)
}

fn i_update_if_allowed(
    tx: &mut PgTx<'_>,
    row: &JobRow,
    spec: &JobSpec,
) -> Result<bool, QueueError> {
    let job = Job::of(row)?;
    if job.state.status().is_leased() {
        return Ok(false);
    }
    let changes = changed_fields(&row.spec, spec);
    let Some(event) = transitions::update_spec(&job, &changes) else {
        return Ok(false);
    };
    i_write_spec(tx, spec)?;
    tx.emit(&spec.id, event);
    Ok(true)
}

fn i_replace_hosts(tx: &mut PgTx<'_>, hosts: &[HostPolicy]) -> Result<bool, QueueError> {
    let mut stored: BTreeMap<String, String> = BTreeMap::new();
    for r in tx.db.query("SELECT name, policy FROM hosts", &[])? {
        stored.insert(r.try_get(0)?, r.try_get(1)?);
    }
    let mut wanted: BTreeMap<String, String> = BTreeMap::new();
    for h in hosts {
        wanted.insert(h.name.clone(), to_json(h)?);
    }
    if stored == wanted {
        return Ok(false);
    }
    tx.db.execute("DELETE FROM hosts", &[])?;
    for (name, policy) in &wanted {
        tx.db.execute(
            "INSERT INTO hosts (name, policy) VALUES ($1, $2)",
            &[name, policy],
        )?;
    }
    Ok(true)
}

pub(crate) fn i_record_manifest_errors(
    tx: &mut PgTx<'_>,
    path: &str,
    errors: &[ManifestError],
) -> Result<(), QueueError> {
    let json = to_json(&errors)?;
    tx.db.execute(
        "UPDATE manifest SET path = $1, last_errors = $2, last_error_at = $3 WHERE id = 1",
        &[&path, &json, &tx.now],
    )?;
    Ok(())
}

pub(crate) fn i_manifest_status(tx: &mut PgTx<'_>) -> Result<ManifestStatus, QueueError> {
    let r = tx.db.query_one(
        "SELECT path, sha256, generation, last_applied_at, last_errors, last_error_at, \
         warnings FROM manifest WHERE id = 1",
        &[],
    )?;
    let generation: i64 = r.try_get(2)?;
    let applied: Option<i64> = r.try_get(3)?;
    let errors: String = r.try_get(4)?;
    let error_at: Option<i64> = r.try_get(5)?;
    let warnings: String = r.try_get(6)?;
    Ok(ManifestStatus {
        path: r.try_get(0)?,
        sha256: r.try_get(1)?,
        generation: generation.max(0) as u64,
        last_applied_at: applied.map(from_ms),
        last_errors: from_json("manifest errors", &errors)?,
        last_error_at: error_at.map(from_ms),
        warnings: from_json("manifest warnings", &warnings)?,
    })
}

pub(crate) fn i_host_policies(tx: &mut PgTx<'_>) -> Result<Vec<HostPolicy>, QueueError> {
    tx.db
        .query("SELECT policy FROM hosts ORDER BY name", &[])?
        .iter()
        .map(|r| from_json("host policy", &r.try_get::<_, String>(0)?))
        .collect()
}
