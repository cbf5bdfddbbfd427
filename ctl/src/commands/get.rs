//! `get jobs|workers|artifacts`: kubectl-style listings, and `get jobs -w`.

use std::collections::BTreeMap;

use anyhow::Context;
use chrono::{DateTime, Utc};
use cis490_api::{ArtifactView, Constraints, JobFilter, JobView, WorkerView};

use super::{events_head, follow_events, Ctx, EVENTS_WAIT};
use crate::cli::{GetJobsArgs, GetWorkersArgs, ListArgs, OutputFormat};
use crate::output::{
    age, human_bytes, mib_as_gib, or_none, print, to_json, to_yaml, Cell, Column, Paint, Table,
    Terminal,
};

/// `get jobs`
pub async fn jobs(ctx: &Ctx, args: &GetJobsArgs) -> anyhow::Result<()> {
    if let Some(id) = &args.id {
        return super::get_one::job(ctx, id, args.output).await;
    }
    let client = ctx.client()?;
    let filter = JobFilter {
        status: args.status,
        model: args.model.clone(),
        mode: None,
        worker: args.worker.clone(),
        label: selector(&args.selector)?,
        all: args.all,
        limit: Some(args.chunk_size),
        after: None,
    };
    // Take the event position before listing, so no change between the two is missed.
    let since = if args.watch {
        Some(events_head(&client).await?)
    } else {
        None
    };
    let list = client.jobs(&filter).await.context("listing jobs")?;
    let now = Utc::now();
    let table = jobs_table(&list, args.output == OutputFormat::Wide, now);
    let widths = table.widths(ctx.term.width);
    if list.is_empty() && is_table(args.output) && !args.watch {
        eprintln!("No jobs found.");
        return Ok(());
    }
    print(&render_jobs(&list, args.output, &table, ctx.term)?)?;
    let Some(mut since) = since else {
        return Ok(());
    };
    let mut known: BTreeMap<String, JobView> =
        list.into_iter().map(|j| (j.id.to_string(), j)).collect();
    loop {
        let page = follow_events(&client, since, EVENTS_WAIT).await?;
        since = page.next.max(since);
        if !page.events.iter().any(|e| e.job_id.is_some()) {
            continue;
        }
        let fresh = client.jobs(&filter).await.context("listing jobs")?;
        let changed = changed_jobs(&mut known, fresh);
        if changed.is_empty() {
            continue;
        }
        let text = match args.output {
            OutputFormat::Table | OutputFormat::Wide => {
                let rows = jobs_table(&changed, args.output == OutputFormat::Wide, Utc::now());
                // Keep the first listing's columns, widening where a new row needs it.
                let fitted: Vec<usize> = rows
                    .widths(ctx.term.width)
                    .iter()
                    .zip(&widths)
                    .map(|(new, old)| *new.max(old))
                    .collect();
                rows.render_rows(&fitted, ctx.term)
            }
            // One document per change, like `kubectl get -w -o json`.
            other => render_jobs(&changed, other, &table, ctx.term)?,
        };
        print(&text)?;
    }
}

/// The `-l` flags as one selector (all their terms ANDed), checked before any request.
fn selector(flags: &[String]) -> anyhow::Result<Option<String>> {
    if flags.is_empty() {
        return Ok(None);
    }
    let joined = flags.join(",");
    cis490_api::LabelSelector::parse(&joined)?;
    Ok(Some(joined))
}

/// An empty table prints no header, only a note on stderr, like kubectl.
fn is_table(format: OutputFormat) -> bool {
    matches!(format, OutputFormat::Table | OutputFormat::Wide)
}

/// Jobs that are new or whose status, worker or attempts changed; updates `known`.
pub fn changed_jobs(known: &mut BTreeMap<String, JobView>, fresh: Vec<JobView>) -> Vec<JobView> {
    let mut changed = Vec::new();
    for job in fresh {
        let key = job.id.to_string();
        let differs = known.get(&key).is_none_or(|old| {
            old.status != job.status
                || old.worker != job.worker
                || old.attempts != job.attempts
                || old.tombstoned != job.tombstoned
        });
        if differs {
            changed.push(job.clone());
        }
        known.insert(key, job);
    }
    changed
}

pub(crate) fn render_jobs(
    list: &[JobView],
    format: OutputFormat,
    table: &Table,
    term: Terminal,
) -> anyhow::Result<String> {
    Ok(match format {
        OutputFormat::Table | OutputFormat::Wide => table.render(term),
        OutputFormat::Json => to_json(list)?,
        OutputFormat::Yaml => to_yaml(list)?,
        OutputFormat::Name => list.iter().map(|j| format!("job/{}\n", j.id)).collect(),
    })
}

/// A job's STATUS cell: the status, marked when tombstoned.
fn status_cell(job: &JobView) -> Cell {
    let text = if job.tombstoned {
        format!("{} (tombstoned)", job.status)
    } else {
        job.status.to_string()
    };
    Cell::painted(text, Paint::for_status(job.status))
}

/// The constraints in one short cell: `cuda,vram>=8Gi,ram>=16Gi,hosts=a|b`.
pub fn constraints_summary(c: &Constraints) -> String {
    let terms = c.terms();
    if terms.is_empty() {
        "<none>".to_string()
    } else {
        terms.join(",")
    }
}

/// How long the current lease has been held (leased jobs only).
fn lease_age(job: &JobView, now: DateTime<Utc>) -> String {
    match (job.status.is_leased(), job.started_at) {
        (true, Some(t)) => age(t, now),
        _ => "<none>".to_string(),
    }
}

/// A running job's PROGRESS cell (`7/20 loss=0.31`) from its latest progress point.
fn progress_cell(job: &JobView, wide: bool) -> Cell {
    match &job.progress {
        Some(point) => Cell::from(cis490_api::results::progress_summary(
            point,
            if wide { 6 } else { 2 },
        )),
        None => Cell::from("<none>"),
    }
}

/// ID, MODEL, MODE, STATUS, WORKER, ATTEMPTS, PROGRESS, AGE (+ CONSTRAINTS, LEASE,
/// ARTIFACT when wide).
pub fn jobs_table(list: &[JobView], wide: bool, now: DateTime<Utc>) -> Table {
    let mut columns = vec![
        Column::fixed("ID"),
        Column::flex("MODEL"),
        Column::flex("MODE"),
        Column::fixed("STATUS"),
        Column::flex("WORKER"),
        Column::fixed("ATTEMPTS"),
        Column::flex("PROGRESS"),
        Column::fixed("AGE"),
    ];
    if wide {
        columns.push(Column::flex("CONSTRAINTS"));
        columns.push(Column::fixed("LEASE"));
        columns.push(Column::fixed("ARTIFACT"));
    }
    let mut table = Table::new(columns);
    for job in list {
        let mut row = vec![
            Cell::from(job.id.short()),
            Cell::from(job.model.as_str()),
            Cell::from(job.mode.as_str()),
            status_cell(job),
            Cell::from(or_none(job.worker.as_ref())),
            Cell::from(format!("{}/{}", job.attempts, job.max_attempts)),
            progress_cell(job, wide),
            Cell::from(age(job.created_at, now)),
        ];
        if wide {
            row.push(Cell::from(constraints_summary(&job.constraints)));
            row.push(Cell::from(lease_age(job, now)));
            row.push(Cell::from(or_none(
                job.artifact_id.as_ref().map(|a| a.short().to_string()),
            )));
        }
        table.push(row);
    }
    table
}

/// `get workers`
pub async fn workers(ctx: &Ctx, args: &GetWorkersArgs) -> anyhow::Result<()> {
    if args.watch {
        return super::watch_workers::run(ctx, args.output).await;
    }
    let list = ctx.client()?.workers().await.context("listing workers")?;
    if list.is_empty() && is_table(args.output) {
        eprintln!("No workers found.");
        return Ok(());
    }
    print(&render_workers(&list, args.output, ctx.term)?)
}

/// The workers in `format`.
pub(crate) fn render_workers(
    list: &[WorkerView],
    format: OutputFormat,
    term: Terminal,
) -> anyhow::Result<String> {
    Ok(match format {
        OutputFormat::Table | OutputFormat::Wide => {
            workers_table(list, format == OutputFormat::Wide, Utc::now()).render(term)
        }
        OutputFormat::Json => to_json(list)?,
        OutputFormat::Yaml => to_yaml(list)?,
        OutputFormat::Name => list
            .iter()
            .map(|w| format!("worker/{}\n", w.name))
            .collect(),
    })
}

/// NAME, STATUS, CUDA, GPUS, VRAM, RAM, RUNNING, LAST-SEEN, VERSION (+ OS, CORES, GPU, TORCH,
/// LABELS).
pub fn workers_table(list: &[WorkerView], wide: bool, now: DateTime<Utc>) -> Table {
    let mut columns = vec![
        Column::flex("NAME"),
        Column::fixed("STATUS"),
        Column::flex("CUDA"),
        Column::fixed("GPUS"),
        Column::fixed("VRAM"),
        Column::fixed("RAM"),
        Column::fixed("RUNNING"),
        Column::fixed("LAST-SEEN"),
        Column::flex("VERSION"),
    ];
    if wide {
        columns.push(Column::flex("OS"));
        columns.push(Column::fixed("CORES"));
        columns.push(Column::flex("GPU"));
        columns.push(Column::flex("TORCH"));
        columns.push(Column::flex("LABELS"));
    }
    let mut table = Table::new(columns);
    for w in list {
        let cap = &w.capability;
        // Like kubectl's "Ready,SchedulingDisabled": the flag rides on the state.
        let state = match &w.host_problem {
            Some(_) => format!("{},HostProblem", w.state),
            None => w.state.to_string(),
        };
        let cuda = if cap.cuda {
            cap.cuda_version
                .clone()
                .unwrap_or_else(|| "yes".to_string())
        } else {
            "no".to_string()
        };
        let vram: u64 = cap.gpus.iter().map(|g| g.vram_total_mib).sum();
        let mut row = vec![
            Cell::from(w.name.as_str()),
            Cell::painted(state.clone(), Paint::for_node_state(&state)),
            Cell::from(cuda),
            Cell::from(cap.gpus.len().to_string()),
            Cell::from(mib_as_gib(vram)),
            Cell::from(mib_as_gib(cap.ram_total_mib)),
            Cell::from(w.running_jobs.len().to_string()),
            Cell::from(age(w.last_seen, now)),
            Cell::from(if cap.agent_version.is_empty() {
                "<unknown>".to_string()
            } else {
                cap.agent_version.clone()
            }),
        ];
        if wide {
            row.push(Cell::from(format!("{}/{}", cap.os, cap.arch)));
            row.push(Cell::from(cap.cores.to_string()));
            let gpus: Vec<&str> = cap.gpus.iter().map(|g| g.name.as_str()).collect();
            row.push(Cell::from(if gpus.is_empty() {
                "<none>".to_string()
            } else {
                gpus.join(",")
            }));
            row.push(Cell::from(or_none(cap.torch_version.as_ref())));
            let labels = if w.labels.is_empty() {
                &cap.labels
            } else {
                &w.labels
            };
            let labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
            row.push(Cell::from(if labels.is_empty() {
                "<none>".to_string()
            } else {
                labels.join(",")
            }));
        }
        table.push(row);
    }
    table
}

/// `get artifacts`
pub async fn artifacts(ctx: &Ctx, args: &ListArgs) -> anyhow::Result<()> {
    let list = ctx
        .client()?
        .artifacts()
        .await
        .context("listing artifacts")?;
    if list.is_empty() && is_table(args.output) {
        eprintln!("No artifacts found.");
        return Ok(());
    }
    let text = match args.output {
        OutputFormat::Table | OutputFormat::Wide => {
            artifacts_table(&list, Utc::now()).render(ctx.term)
        }
        OutputFormat::Json => to_json(&list)?,
        OutputFormat::Yaml => to_yaml(&list)?,
        OutputFormat::Name => artifact_names(&list),
    };
    print(&text)
}

/// `artifact/<sha256>` once per stored byte sequence (in listing order): a name is what
/// `pull` takes, and jobs that produced the same bytes share one.
pub fn artifact_names(list: &[ArtifactView]) -> String {
    let mut seen = std::collections::HashSet::new();
    list.iter()
        .filter(|a| seen.insert(&a.artifact_id))
        .map(|a| format!("artifact/{}\n", a.artifact_id))
        .collect()
}

/// ARTIFACT, JOB, ATTEMPT, MODEL, MODE, SIZE, WORKER, RECEIVED: one row per upload of a
/// job's attempt, so an artifact that several jobs produced has several rows.
pub fn artifacts_table(list: &[ArtifactView], now: DateTime<Utc>) -> Table {
    let mut table = Table::new(vec![
        Column::fixed("ARTIFACT"),
        Column::fixed("JOB"),
        Column::fixed("ATTEMPT"),
        Column::flex("MODEL"),
        Column::flex("MODE"),
        Column::fixed("SIZE"),
        Column::flex("WORKER"),
        Column::fixed("RECEIVED"),
    ]);
    for a in list {
        table.push(vec![
            Cell::from(a.artifact_id.short()),
            Cell::from(a.job_id.short()),
            Cell::from(or_none(a.attempt)),
            Cell::from(a.model.as_str()),
            Cell::from(a.mode.as_str()),
            Cell::from(human_bytes(a.size_bytes)),
            Cell::from(a.worker.as_str()),
            Cell::from(age(a.received_at, now)),
        ]);
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::samples::{id, job, now, worker};
    use cis490_api::*;

    #[test]
    fn jobs_table_has_the_issue_columns_and_a_row_per_job() {
        let mut running = job('a', JobStatus::Running);
        running.progress = Some(
            cis490_api::results::parse_flat(br#"{"step": 7, "of": 20, "loss": 0.31}"#, 1000)
                .unwrap(),
        );
        let list = vec![running, job('b', JobStatus::Pending)];
        let text = jobs_table(&list, false, now()).render(Terminal::plain());
        let lines: Vec<&str> = text.lines().collect();
        let header: Vec<&str> = lines[0].split_whitespace().collect();
        assert_eq!(
            header,
            ["ID", "MODEL", "MODE", "STATUS", "WORKER", "ATTEMPTS", "PROGRESS", "AGE"]
        );
        let row: Vec<&str> = lines[1].split_whitespace().collect();
        assert_eq!(
            row,
            [
                "aaaaaaaaaaaa",
                "gbt",
                "realistic",
                "running",
                "gpu-box",
                "1/3",
                "7/20",
                "loss=0.31",
                "5m"
            ]
        );
        let row: Vec<&str> = lines[2].split_whitespace().collect();
        assert_eq!(row[3], "pending");
        assert_eq!(row[4], "<none>");
        assert_eq!(row[6], "<none>", "no progress");
    }

    #[test]
    fn wide_jobs_table_adds_constraints_lease_and_artifact() {
        let list = vec![job('a', JobStatus::Running), job('c', JobStatus::Completed)];
        let text = jobs_table(&list, true, now()).render(Terminal::plain());
        let lines: Vec<&str> = text.lines().collect();
        let header: Vec<&str> = lines[0].split_whitespace().collect();
        assert_eq!(
            header,
            [
                "ID",
                "MODEL",
                "MODE",
                "STATUS",
                "WORKER",
                "ATTEMPTS",
                "PROGRESS",
                "AGE",
                "CONSTRAINTS",
                "LEASE",
                "ARTIFACT"
            ]
        );
        assert!(
            lines[1].contains("cuda,vram>=8Gi,ram>=16.5Gi,hosts=gpu-box"),
            "{}",
            lines[1]
        );
        assert!(lines[1].contains("90s"), "{}", lines[1]);
        assert!(lines[2].ends_with("eeeeeeeeeeee"), "{}", lines[2]);
    }

    #[test]
    fn tombstoned_jobs_are_marked() {
        let mut j = job('a', JobStatus::Pending);
        j.tombstoned = true;
        let text = jobs_table(&[j], false, now()).render(Terminal::plain());
        assert!(text.contains("pending (tombstoned)"), "{text}");
    }

    #[test]
    fn workers_table_columns_and_row() {
        let text = workers_table(&[worker()], false, now()).render(Terminal::plain());
        let lines: Vec<&str> = text.lines().collect();
        let header: Vec<&str> = lines[0].split_whitespace().collect();
        assert_eq!(
            header,
            [
                "NAME",
                "STATUS",
                "CUDA",
                "GPUS",
                "VRAM",
                "RAM",
                "RUNNING",
                "LAST-SEEN",
                "VERSION"
            ]
        );
        let row: Vec<&str> = lines[1].split_whitespace().collect();
        assert_eq!(
            row,
            ["gpu-box", "Ready", "12.4", "1", "24Gi", "64Gi", "1", "4s", "0.1.0"]
        );
        let wide = workers_table(&[worker()], true, now()).render(Terminal::plain());
        assert!(
            wide.contains("linux/x86_64") && wide.contains("RTX 4090"),
            "{wide}"
        );
        assert!(
            wide.lines().next().unwrap().trim_end().ends_with("LABELS")
                && wide
                    .lines()
                    .nth(1)
                    .unwrap()
                    .trim_end()
                    .ends_with("gpu=rtx-4090"),
            "{wide}"
        );
    }

    #[test]
    fn a_worker_with_a_host_problem_says_so_in_its_status() {
        let mut w = worker();
        w.host_problem = Some(cis490_api::HostProblem {
            reason: "cannot start trainer \"./train.sh\"".into(),
            job_id: JobId::parse(&id('b')).unwrap(),
            at: now(),
        });
        let text = workers_table(&[w], false, now()).render(Terminal::plain());
        let row: Vec<&str> = text.lines().nth(1).unwrap().split_whitespace().collect();
        assert_eq!(row[1], "Ready,HostProblem");
    }

    #[test]
    fn artifacts_table_columns_and_row() {
        let a = ArtifactView {
            artifact_id: ArtifactId::parse(&id('e')).unwrap(),
            job_id: JobId::parse(&id('a')).unwrap(),
            attempt: Some(2),
            model: "gbt".into(),
            mode: "realistic".into(),
            worker: "gpu-box".into(),
            size_bytes: 3 * 1024 * 1024,
            received_at: now() - chrono::TimeDelta::hours(2),
        };
        let text = artifacts_table(&[a], now()).render(Terminal::plain());
        let lines: Vec<&str> = text.lines().collect();
        let header: Vec<&str> = lines[0].split_whitespace().collect();
        assert_eq!(
            header,
            ["ARTIFACT", "JOB", "ATTEMPT", "MODEL", "MODE", "SIZE", "WORKER", "RECEIVED"]
        );
        let row: Vec<&str> = lines[1].split_whitespace().collect();
        assert_eq!(
            row,
            [
                "eeeeeeeeeeee",
                "aaaaaaaaaaaa",
                "2",
                "gbt",
                "realistic",
                "3.0Mi",
                "gpu-box",
                "120m"
            ]
        );
    }

    #[test]
    fn json_and_yaml_round_trip_the_full_objects() {
        let list = vec![
            job('a', JobStatus::Running),
            job('b', JobStatus::Failed),
            job('c', JobStatus::Completed),
        ];
        let table = jobs_table(&list, false, now());
        let json = render_jobs(&list, OutputFormat::Json, &table, Terminal::plain()).unwrap();
        let back: Vec<JobView> = serde_json::from_str(&json).unwrap();
        assert_eq!(back, list);
        let raw: serde_json::Value = serde_json::from_str(&json).unwrap();
        for key in [
            "id",
            "model",
            "mode",
            "status",
            "worker",
            "attempts",
            "max_attempts",
            "artifact_id",
            "error",
            "tombstoned",
        ] {
            assert!(raw[0].get(key).is_some(), "JSON lacks {key}");
        }
        let yaml = render_jobs(&list, OutputFormat::Yaml, &table, Terminal::plain()).unwrap();
        let back: Vec<JobView> = serde_yaml_ng::from_str(&yaml).unwrap();
        assert_eq!(back, list);
        let names = render_jobs(&list, OutputFormat::Name, &table, Terminal::plain()).unwrap();
        assert_eq!(
            names.lines().next(),
            Some(format!("job/{}", id('a')).as_str())
        );
    }

    #[test]
    fn watch_reports_only_changes() {
        let mut known = BTreeMap::new();
        let first = changed_jobs(&mut known, vec![job('a', JobStatus::Pending)]);
        assert_eq!(first.len(), 1);
        let same = changed_jobs(&mut known, vec![job('a', JobStatus::Pending)]);
        assert!(same.is_empty());
        let moved = changed_jobs(&mut known, vec![job('a', JobStatus::Running)]);
        assert_eq!(moved.len(), 1);
        assert_eq!(moved[0].status, JobStatus::Running);
    }
}
