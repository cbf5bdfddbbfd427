//! Reads of jobs on PostgreSQL: resolving an ID prefix, one job's view, counts per status,
//! and the paged listing in queue order.

use std::collections::BTreeMap;

use cis490_api::{IdPrefix, JobFilter, JobId, JobStatus, JobView, Page, SHORT_ID_LEN};

use super::events::i_job_events;
use super::results::{i_completed_metrics, i_current_progress};
use super::rows::{i_existing_job, job_from_row, JOB_COLUMNS};
use super::tx::PgTx;
use crate::queue::listing::{label_selector, JobCursor};
use crate::queue::QueueError;

pub(crate) fn i_resolve(tx: &mut PgTx<'_>, prefix: &IdPrefix) -> Result<JobId, QueueError> {
    // Every ID is lowercase hex, so "prefix" <= id < "prefix" + 'g' is the prefix match
    // (in the C collation the primary key is compared with).
    let upper = format!("{}g", prefix.as_str());
    let ids: Vec<String> = tx
        .db
        .query(
            "SELECT id FROM jobs WHERE id COLLATE \"C\" >= $1 AND id COLLATE \"C\" < $2 \
             ORDER BY id COLLATE \"C\" LIMIT 6",
            &[&prefix.as_str(), &upper],
        )?
        .iter()
        .map(|r| Ok(r.try_get(0)?))
        .collect::<Result<_, QueueError>>()?;
    match ids.as_slice() {
        [] => Err(QueueError::NotFound {
            what: "job",
            key: prefix.to_string(),
        }),
        [one] => JobId::parse(one).map_err(QueueError::corrupt),
        many => Err(QueueError::Ambiguous {
            prefix: prefix.to_string(),
            candidates: many
                .iter()
                .map(|id| id.chars().take(SHORT_ID_LEN).collect())
                .collect(),
        }),
    }
}

pub(crate) fn i_job_view(
    tx: &mut PgTx<'_>,
    id: &JobId,
    with_events: bool,
) -> Result<JobView, QueueError> {
    let row = i_existing_job(tx, id)?;
    let mut view = row.view()?;
    view.progress = i_current_progress(tx, &row)?;
    view.metrics = i_completed_metrics(tx, &row)?;
    if with_events {
        view.events = i_job_events(tx, id)?;
    }
    Ok(view)
}

fn every_status() -> BTreeMap<String, u64> {
    JobStatus::ALL
        .iter()
        .map(|s| (s.as_str().to_string(), 0))
        .collect()
}

/// Live jobs per status (a tombstoned job that is claimed or running is live), and how
/// many tombstoned jobs are not.
pub(crate) fn i_live_counts(tx: &mut PgTx<'_>) -> Result<(BTreeMap<String, u64>, u64), QueueError> {
    let mut out = every_status();
    let mut tombstoned = 0u64;
    for r in tx.db.query(
        "SELECT status, tombstoned AND status NOT IN ('claimed', 'running'), COUNT(*) \
         FROM jobs GROUP BY 1, 2",
        &[],
    )? {
        let status: String = r.try_get(0)?;
        let dead: bool = r.try_get(1)?;
        let n = r.try_get::<_, i64>(2)?.max(0) as u64;
        if dead {
            tombstoned += n;
        } else {
            *out.entry(status).or_default() += n;
        }
    }
    Ok((out, tombstoned))
}

pub(crate) fn i_counts(tx: &mut PgTx<'_>) -> Result<BTreeMap<String, u64>, QueueError> {
    let mut out = every_status();
    for r in tx
        .db
        .query("SELECT status, COUNT(*) FROM jobs GROUP BY status", &[])?
    {
        let status: String = r.try_get(0)?;
        out.insert(status, r.try_get::<_, i64>(1)?.max(0) as u64);
    }
    Ok(out)
}

/// How many jobs each round of a listing reads past the page's cursor: a page and one
/// more (all an unfiltered listing needs), then more, then the rest (label filters,
/// checked here, may skip many). With a LIMIT the planner walks `jobs_listing_cursor` from
/// the cursor; without one it would sort every job per page.
fn listing_rounds(want: usize) -> [i64; 3] {
    [i64::try_from(want).unwrap_or(i64::MAX), 4096, i64::MAX]
}

/// Up to `limit` jobs that match `filter`, in queue order, after `after`.
pub(crate) fn i_jobs_page(
    tx: &mut PgTx<'_>,
    filter: &JobFilter,
    after: Option<&JobCursor>,
    limit: usize,
) -> Result<Page<JobView>, QueueError> {
    let label = label_selector(filter)?;
    let status = filter.status.map(|s| s.as_str());
    // The cursor as one row comparison in queue order: (-priority, manifest_order, id).
    // Without one, a cursor before every job (no priority negates to i64::MIN).
    let (neg_priority, order, id) = match after {
        Some(c) => (-c.priority, c.manifest_order, c.id.as_str()),
        None => (i64::MIN, i64::MIN, ""),
    };
    // LIMIT and OFFSET in the text: a generic plan would not know them (see `walk_sql`).
    let sql = |limit: i64, offset: i64| {
        let bound = match limit {
            i64::MAX => format!("OFFSET {offset}"),
            limit => format!("LIMIT {limit} OFFSET {offset}"),
        };
        format!(
            "SELECT {JOB_COLUMNS} FROM jobs \
             WHERE (-priority, manifest_order, id) > ($2, $3, $1) \
             AND ($4::text IS NULL OR status = $4) AND ($5::text IS NULL OR model = $5) \
             AND ($6::text IS NULL OR mode = $6) AND ($7::text IS NULL OR worker = $7) \
             AND ($8 OR NOT tombstoned OR status IN ('claimed', 'running')) \
             ORDER BY (-priority), manifest_order, id {bound}"
        )
    };
    let want = limit + 1;
    let mut items: Vec<(JobCursor, JobView)> = Vec::new();
    // One snapshot (a read transaction): OFFSET resumes exactly where a round stopped.
    let mut seen: i64 = 0;
    'pages: for round in listing_rounds(want) {
        let params: [&(dyn postgres::types::ToSql + Sync); 8] = [
            &id,
            &neg_priority,
            &order,
            &status,
            &filter.model,
            &filter.mode,
            &filter.worker,
            &filter.all,
        ];
        // The first round's text depends on the page size only: prepared once.
        let batch = if seen == 0 {
            tx.db.query(&sql(round, seen), &params)?
        } else {
            tx.db.query_uncached(&sql(round, seen), &params)?
        };
        let got = i64::try_from(batch.len()).unwrap_or(i64::MAX);
        seen = seen.saturating_add(got);
        for r in &batch {
            let job = job_from_row(r, 0)?;
            if let Some(selector) = &label {
                if !selector.matches(&job.spec.labels) {
                    continue;
                }
            }
            let mut view = job.view()?;
            view.progress = i_current_progress(tx, &job)?;
            items.push((JobCursor::of(&job.spec), view));
            if items.len() >= want {
                break 'pages;
            }
        }
        if got < round {
            break;
        }
    }
    let next = if items.len() > limit {
        items.truncate(limit);
        items.last().map(|(cursor, _)| cursor.encode())
    } else {
        None
    };
    Ok(Page {
        items: items.into_iter().map(|(_, view)| view).collect(),
        next,
    })
}
