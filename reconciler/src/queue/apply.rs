//! Reconciling the manifest: the planner's `actual`, applying a plan, and the manifest
//! status. Each `i_*` runs inside the caller's transaction.

use std::collections::BTreeMap;

use cis490_api::{JobSpec, ManifestError, ManifestStatus, PlanSummary};
use rusqlite::params;

use super::events::{i_emit, i_event, kind};
use super::rows::{from_ms, i_insert_job, i_job_row, i_write_spec, JobRow};
use super::transitions::{self, Job};
use super::{QueueError, Tx};
use crate::plan::{changed_fields, ActualJob, Plan};
use crate::policy::HostPolicy;

/// Every job as the planner compares it. In the table's own order: `plan` sorts by ID
/// itself, and walking the ID index instead looked up every row at random (the table
/// outgrows the page cache at 100,000 jobs).
pub(crate) fn i_actual(tx: &mut Tx<'_>) -> Result<Vec<ActualJob>, QueueError> {
    let mut stmt = tx
        .db
        .prepare_cached("SELECT spec, status, tombstoned FROM jobs")?;
    let rows = stmt.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, bool>(2)?,
        ))
    })?;
    rows.map(|r| {
        let (spec, status, tombstoned) = r?;
        Ok(ActualJob {
            spec: serde_json::from_str(&spec)
                .map_err(|e| QueueError::corrupt(format!("job spec: {e}")))?,
            status: status.parse().map_err(QueueError::corrupt)?,
            tombstoned,
        })
    })
    .collect()
}

/// Applies `plan`, re-checking each job against its current row. Returns the summary with
/// `applied = true` and the (possibly unchanged) generation.
pub(crate) fn i_apply(
    tx: &mut Tx<'_>,
    plan: &Plan,
    hosts: &[HostPolicy],
    source: &super::ManifestSource,
) -> Result<PlanSummary, QueueError> {
    let mut changed = false;
    // In queue order, not the plan's ID order: the queue and claim indexes (and
    // `jobs_listing`) lead with priority and manifest order, so new jobs then append to
    // them instead of landing all over each one (a first apply of 100,000 jobs dirtied
    // pages of every index at random).
    let mut creates: Vec<&JobSpec> = plan.create.iter().collect();
    creates.sort_by_key(|s| (std::cmp::Reverse(s.priority), s.manifest_order));
    for spec in creates {
        // The insert is the re-check: it writes nothing when the job exists.
        if i_insert_job(tx, spec)? {
            i_event(
                tx,
                Some(&spec.id),
                None,
                kind::CREATED,
                format!("created from the manifest ({} {})", spec.model, spec.mode),
            )?;
            changed = true;
        } else if let Some(row) = i_job_row(tx, &spec.id)? {
            // Created by an apply since planning: treat as an update of that job.
            changed |= i_update_if_allowed(tx, &row, spec)?;
        }
    }
    for (spec, _) in &plan.update {
        if let Some(row) = i_job_row(tx, &spec.id)? {
            changed |= i_update_if_allowed(tx, &row, spec)?;
        }
    }
    for spec in &plan.revive {
        let Some(row) = i_job_row(tx, &spec.id)? else {
            continue;
        };
        let job = Job::of(&row)?;
        let differs = !changed_fields(&row.spec, spec).is_empty();
        let Some(revival) = transitions::revive(&job, differs) else {
            changed |= i_update_if_allowed(tx, &row, spec)?;
            continue;
        };
        tx.db
            .prepare_cached("UPDATE jobs SET tombstoned = 0, updated_at = ?2 WHERE id = ?1")?
            .execute(params![spec.id.as_str(), tx.now])?;
        if revival.write_spec {
            i_write_spec(tx, spec)?;
        }
        i_emit(tx, &spec.id, revival.event)?;
        changed = true;
    }
    for id in &plan.tombstone {
        let Some(row) = i_job_row(tx, id)? else {
            continue;
        };
        let Some(event) = transitions::tombstone(&Job::of(&row)?) else {
            continue;
        };
        tx.db
            .prepare_cached("UPDATE jobs SET tombstoned = 1, updated_at = ?2 WHERE id = ?1")?
            .execute(params![id.as_str(), tx.now])?;
        i_emit(tx, id, event)?;
        changed = true;
    }
    changed |= i_replace_hosts(tx, hosts)?;

    let generation: i64 =
        tx.db
            .query_row("SELECT generation FROM manifest WHERE id = 1", [], |r| {
                r.get(0)
            })?;
    let generation = if changed { generation + 1 } else { generation };
    let warnings =
        serde_json::to_string(&source.warnings).map_err(|e| QueueError::corrupt(e.to_string()))?;
    tx.db.execute(
        "UPDATE manifest SET path = ?1, sha256 = ?2, generation = ?3, last_applied_at = ?4, \
         last_errors = '[]', last_error_at = NULL, warnings = ?5 WHERE id = 1",
        params![source.path, source.sha256, generation, tx.now, warnings],
    )?;
    let mut summary = plan.summary();
    summary.applied = true;
    summary.generation = generation.max(0) as u64;
    summary.warnings = source.warnings.clone();
    Ok(summary)
}

/// Updates a job's spec unless it is leased or already equal. True when it changed.
fn i_update_if_allowed(
    tx: &mut Tx<'_>,
    row: &JobRow,
    spec: &cis490_api::JobSpec,
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
    i_emit(tx, &spec.id, event)?;
    Ok(true)
}

/// Replaces the host policies; true when they differ from what was stored.
fn i_replace_hosts(tx: &Tx<'_>, hosts: &[HostPolicy]) -> Result<bool, QueueError> {
    let mut stored: BTreeMap<String, String> = BTreeMap::new();
    {
        let mut stmt = tx.db.prepare_cached("SELECT name, policy FROM hosts")?;
        for r in stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))? {
            let (name, policy) = r?;
            stored.insert(name, policy);
        }
    }
    let mut wanted: BTreeMap<String, String> = BTreeMap::new();
    for h in hosts {
        let json = serde_json::to_string(h).map_err(|e| QueueError::corrupt(e.to_string()))?;
        wanted.insert(h.name.clone(), json);
    }
    if stored == wanted {
        return Ok(false);
    }
    tx.db.execute("DELETE FROM hosts", [])?;
    for (name, policy) in &wanted {
        tx.db
            .prepare_cached("INSERT INTO hosts (name, policy) VALUES (?1, ?2)")?
            .execute(params![name, policy])?;
    }
    Ok(true)
}

pub(crate) fn i_record_manifest_errors(
    tx: &mut Tx<'_>,
    path: &str,
    errors: &[ManifestError],
) -> Result<(), QueueError> {
    let json = serde_json::to_string(errors).map_err(|e| QueueError::corrupt(e.to_string()))?;
    tx.db.execute(
        "UPDATE manifest SET path = ?1, last_errors = ?2, last_error_at = ?3 WHERE id = 1",
        params![path, json, tx.now],
    )?;
    Ok(())
}

pub(crate) fn i_manifest_status(tx: &mut Tx<'_>) -> Result<ManifestStatus, QueueError> {
    type Raw = (
        String,
        Option<String>,
        i64,
        Option<i64>,
        String,
        Option<i64>,
        String,
    );
    let raw: Raw = tx.db.query_row(
        "SELECT path, sha256, generation, last_applied_at, last_errors, last_error_at, \
         warnings FROM manifest WHERE id = 1",
        [],
        |r| {
            Ok((
                r.get(0)?,
                r.get(1)?,
                r.get(2)?,
                r.get(3)?,
                r.get(4)?,
                r.get(5)?,
                r.get(6)?,
            ))
        },
    )?;
    let (path, sha256, generation, applied, errors, error_at, warnings) = raw;
    Ok(ManifestStatus {
        path,
        sha256,
        generation: generation.max(0) as u64,
        last_applied_at: applied.map(from_ms),
        last_errors: serde_json::from_str(&errors)
            .map_err(|e| QueueError::corrupt(format!("manifest errors: {e}")))?,
        last_error_at: error_at.map(from_ms),
        warnings: serde_json::from_str(&warnings)
            .map_err(|e| QueueError::corrupt(format!("manifest warnings: {e}")))?,
    })
}
