//! `wait JOB...`: block until the jobs meet a condition, following the event log. Unlike
//! `kubectl wait`, a job that fails or is cancelled ends the wait at once with its reason.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use cis490_api::{Client, JobStatus, JobView};

use super::{events_head, follow_events, Ctx, EVENTS_WAIT};
use crate::cli::{WaitArgs, WaitFor};
use crate::output::print;
use crate::resolve::parse_prefix;

/// Where a set of jobs stands with respect to the condition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Every job meets the condition.
    Met,
    /// Some job can no longer meet it; the sentence says which and why.
    Broken(String),
    /// Still waiting on these jobs (short IDs with their status).
    Waiting(Vec<String>),
}

/// Why `job` can never meet `cond`, if that is so.
fn broken(job: &JobView, cond: WaitFor) -> Option<String> {
    if cond == WaitFor::Finished {
        return None;
    }
    let short = job.id.short();
    match job.status {
        JobStatus::Failed => {
            let detail = match &job.error {
                Some(e) => match e.exit_code {
                    Some(code) => format!(": {} (exit code {code})", e.reason),
                    None => format!(": {}", e.reason),
                },
                None => String::new(),
            };
            Some(format!(
                "job {short} failed after {}/{} attempts{detail}",
                job.attempts, job.max_attempts
            ))
        }
        JobStatus::Cancelled => Some(format!("job {short} was cancelled")),
        JobStatus::Pending if job.tombstoned => Some(format!(
            "job {short} was removed from the manifest (tombstoned) and will not run"
        )),
        _ => None,
    }
}

fn met(job: &JobView, cond: WaitFor) -> bool {
    match cond {
        WaitFor::Completed => job.status == JobStatus::Completed,
        WaitFor::Running => job.status.is_leased() || job.status == JobStatus::Completed,
        WaitFor::Finished => job.status.is_terminal(),
    }
}

/// The verdict for all jobs: broken wins over waiting, waiting over met.
pub fn verdict<'a>(jobs: impl IntoIterator<Item = &'a JobView>, cond: WaitFor) -> Verdict {
    let mut waiting = Vec::new();
    for job in jobs {
        if let Some(why) = broken(job, cond) {
            return Verdict::Broken(why);
        }
        if !met(job, cond) {
            waiting.push(format!("{} ({})", job.id.short(), job.status));
        }
    }
    if waiting.is_empty() {
        Verdict::Met
    } else {
        Verdict::Waiting(waiting)
    }
}

fn condition_name(cond: WaitFor) -> &'static str {
    match cond {
        WaitFor::Completed => "completed",
        WaitFor::Running => "running",
        WaitFor::Finished => "finished",
    }
}

async fn fetch(client: &Client, id: &str) -> anyhow::Result<JobView> {
    client
        .job(&parse_prefix(id)?)
        .await
        .with_context(|| format!("reading job {id}"))
}

pub async fn run(ctx: &Ctx, args: &WaitArgs) -> anyhow::Result<()> {
    let client = ctx.client()?;
    let deadline = Instant::now() + args.timeout;
    let mut since = events_head(&client).await?;
    let mut jobs: BTreeMap<String, JobView> = BTreeMap::new();
    for typed in &args.jobs {
        let job = fetch(&client, typed).await?;
        jobs.insert(job.id.to_string(), job);
    }
    loop {
        match verdict(jobs.values(), args.wait_for) {
            Verdict::Met => {
                let lines: String = jobs
                    .values()
                    .map(|j| format!("job/{} condition met ({})\n", j.id.short(), j.status))
                    .collect();
                return print(&lines);
            }
            Verdict::Broken(why) => bail!("{why}"),
            Verdict::Waiting(pending) => {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    bail!(
                        "timed out after {} waiting for jobs to be {}: still waiting on {}",
                        crate::output::human_duration(
                            chrono::TimeDelta::from_std(args.timeout).unwrap_or_default()
                        ),
                        condition_name(args.wait_for),
                        pending.join(", ")
                    );
                }
                // Whole seconds on the wire; never ask for 0 s while time is left.
                let wait = Duration::from_secs(left.as_secs().max(1)).min(EVENTS_WAIT);
                let page = follow_events(&client, since, wait).await?;
                since = page.next.max(since);
                let touched: BTreeSet<String> = page
                    .events
                    .iter()
                    .filter_map(|e| e.job_id.as_ref().map(|id| id.to_string()))
                    .filter(|id| jobs.contains_key(id))
                    .collect();
                for id in touched {
                    let job = fetch(&client, &id).await?;
                    if jobs.get(&id).is_some_and(|old| old.status != job.status) {
                        eprintln!("job/{} {}", job.id.short(), job.status);
                    }
                    jobs.insert(id, job);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::samples::job;

    #[test]
    fn all_completed_is_met() {
        let jobs = [
            job('a', JobStatus::Completed),
            job('b', JobStatus::Completed),
        ];
        assert_eq!(verdict(&jobs, WaitFor::Completed), Verdict::Met);
    }

    #[test]
    fn one_failure_breaks_the_wait_with_its_reason_even_while_others_run() {
        let jobs = [job('a', JobStatus::Running), job('b', JobStatus::Failed)];
        match verdict(&jobs, WaitFor::Completed) {
            Verdict::Broken(why) => {
                assert!(why.contains("bbbbbbbbbbbb failed"), "{why}");
                assert!(
                    why.contains("trainer exited with status 3 (exit code 3)"),
                    "{why}"
                );
            }
            other => panic!("expected Broken, got {other:?}"),
        }
    }

    #[test]
    fn cancelled_and_tombstoned_break_the_wait() {
        let jobs = [job('a', JobStatus::Cancelled)];
        assert!(
            matches!(verdict(&jobs, WaitFor::Completed), Verdict::Broken(w) if w.contains("cancelled"))
        );
        let mut t = job('a', JobStatus::Pending);
        t.tombstoned = true;
        assert!(
            matches!(verdict([&t], WaitFor::Completed), Verdict::Broken(w) if w.contains("tombstoned"))
        );
    }

    #[test]
    fn waiting_lists_the_unfinished_jobs() {
        let jobs = [job('a', JobStatus::Completed), job('b', JobStatus::Pending)];
        assert_eq!(
            verdict(&jobs, WaitFor::Completed),
            Verdict::Waiting(vec!["bbbbbbbbbbbb (pending)".into()])
        );
    }

    #[test]
    fn other_conditions() {
        let jobs = [job('a', JobStatus::Running), job('b', JobStatus::Completed)];
        assert_eq!(verdict(&jobs, WaitFor::Running), Verdict::Met);
        let jobs = [job('a', JobStatus::Failed), job('b', JobStatus::Cancelled)];
        assert_eq!(verdict(&jobs, WaitFor::Finished), Verdict::Met);
    }
}
