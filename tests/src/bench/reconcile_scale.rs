//! Figure 4: reconcile at scale. A 100,000-job manifest: first apply, a no-op reload, a
//! one-job edit, and peak RSS.
//!
//! Each reload is what the server does: read the file, parse and validate it, `actual()`,
//! `plan`, `apply` (one durable transaction), holding what the server holds when. It runs
//! in a child process (this binary's hidden `reconcile-child` command, with the server's
//! allocator) so that its peak RSS is its own, not the harness's.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use cis490_reconciler::manifest::load_manifest;
use cis490_reconciler::queue::{JobQueue, Queue, QueueConfig};
use cis490_reconciler::server::reconcile::{plan_against, Planned};
use serde::{Deserialize, Serialize};

use super::workload::manifest_text;
use super::{Ctx, Row};

/// Jobs per `[[jobs]]` entry (a matrix of seeds), as a lab writes sweeps.
pub const SEEDS_PER_ENTRY: usize = 10;

/// What the child measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReconcileTimes {
    pub jobs: usize,
    pub manifest_bytes: u64,
    pub first_apply_s: f64,
    pub noop_reload_s: f64,
    pub one_job_edit_s: f64,
    /// Of the three reloads, the time spent reading + parsing the file (s).
    pub parse_s: [f64; 3],
    /// ... in `actual()` + `plan` (s).
    pub plan_s: [f64; 3],
    /// ... in `apply` (s).
    pub apply_s: [f64; 3],
    pub peak_rss_mib: f64,
    /// Peak RSS after the first reload's parse, after its plan, after its apply (MiB):
    /// where the peak comes from.
    pub peak_rss_by_phase_mib: [f64; 3],
}

/// One reload: (parse, plan, apply) times; fails unless the plan changed `expect_changes`
/// jobs.
fn reload(
    queue: &Queue,
    path: &Path,
    expect_changes: usize,
    peaks: &mut [f64; 3],
) -> anyhow::Result<[Duration; 3]> {
    let peak = || super::proc_stats::peak_rss_mib(std::process::id()).unwrap_or(0.0);
    let t0 = Instant::now();
    let loaded = load_manifest(path, cis490_reconciler::manifest::DEFAULT_MAX_MANIFEST_JOBS)
        .map_err(anyhow::Error::msg)?;
    let t1 = Instant::now();
    peaks[0] = peak();
    // The server's own planning step (`server/reconcile.rs`), so the peak measured is the
    // one the server has.
    let Planned {
        plan: p,
        hosts,
        source,
    } = plan_against(queue, loaded, path.display().to_string())?;
    let t2 = Instant::now();
    peaks[1] = peak();
    queue.apply(&p, &hosts, &source)?;
    let t3 = Instant::now();
    peaks[2] = peak();
    let changes = p.create.len() + p.update.len() + p.tombstone.len() + p.revive.len();
    if changes != expect_changes {
        bail!("the reload changed {changes} jobs, expected {expect_changes}");
    }
    Ok([t1 - t0, t2 - t1, t3 - t2])
}

/// The child's work: prints one JSON line of [`ReconcileTimes`].
pub fn child_main(jobs: usize, dir: &Path) -> anyhow::Result<()> {
    let path = dir.join("training_manifest.toml");
    let edited = dir.join("edited.toml");
    std::fs::write(&path, manifest_text(jobs, SEEDS_PER_ENTRY, &["true"], 0))?;
    std::fs::write(&edited, manifest_text(jobs, SEEDS_PER_ENTRY, &["true"], 1))?;
    let manifest_bytes = std::fs::metadata(&path)?.len();
    let queue = Queue::open(&dir.join("queue.db"), QueueConfig::default())?;
    let mut peaks = [0.0; 3];
    let first = reload(&queue, &path, jobs, &mut peaks)?;
    let peak_rss_by_phase_mib = peaks;
    let noop = reload(&queue, &path, 0, &mut peaks)?;
    // The editor's save: the file is replaced by rename, as the watcher sees it.
    std::fs::rename(&edited, &path)?;
    let edit = reload(&queue, &path, 1, &mut peaks)?;
    let sum = |d: &[Duration; 3]| d.iter().map(Duration::as_secs_f64).sum::<f64>();
    let times = ReconcileTimes {
        jobs,
        manifest_bytes,
        first_apply_s: sum(&first),
        noop_reload_s: sum(&noop),
        one_job_edit_s: sum(&edit),
        parse_s: [first[0], noop[0], edit[0]].map(|d| d.as_secs_f64()),
        plan_s: [first[1], noop[1], edit[1]].map(|d| d.as_secs_f64()),
        apply_s: [first[2], noop[2], edit[2]].map(|d| d.as_secs_f64()),
        peak_rss_mib: super::proc_stats::peak_rss_mib(std::process::id())?,
        peak_rss_by_phase_mib,
    };
    println!("{}", serde_json::to_string(&times)?);
    Ok(())
}

/// Runs the child for `jobs` jobs in a fresh directory.
pub fn measure(ctx: &Ctx, jobs: usize) -> anyhow::Result<ReconcileTimes> {
    let dir: PathBuf = ctx.dir(&format!("reconcile-{jobs}"))?;
    let exe = std::env::current_exe().context("locating cis490-bench")?;
    let out = Command::new(exe)
        .arg("reconcile-child")
        .arg(jobs.to_string())
        .arg(&dir)
        .output()
        .context("running the reconcile child")?;
    if !out.status.success() {
        bail!(
            "reconcile child failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .last()
        .context("reconcile child printed nothing")?;
    serde_json::from_str(line).context("parsing the reconcile child's answer")
}

pub fn run(ctx: &Ctx) -> Vec<Row> {
    let jobs = ctx.size(100_000, 5_000);
    let label = |what: &str| format!("4. reconcile {jobs} jobs: {what}");
    match measure(ctx, jobs) {
        Ok(t) => vec![
            Row::measured(
                ctx,
                &label("first apply"),
                "<= 3 s",
                t.first_apply_s,
                "s",
                t.first_apply_s <= 3.0,
            ),
            Row::measured(
                ctx,
                &label("no-op reload"),
                "<= 1 s",
                t.noop_reload_s,
                "s",
                t.noop_reload_s <= 1.0,
            ),
            Row::measured(
                ctx,
                &label("one-job edit"),
                "<= 1 s",
                t.one_job_edit_s,
                "s",
                t.one_job_edit_s <= 1.0,
            ),
            Row::measured(
                ctx,
                &label("peak RSS"),
                "<= 300 MiB",
                t.peak_rss_mib,
                "MiB",
                t.peak_rss_mib <= 300.0,
            ),
        ],
        Err(e) => vec![Row::error(&label("first apply"), "<= 3 s", &e)],
    }
}
