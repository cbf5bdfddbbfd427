//! `logs JOB [-f]`: the log tail the worker last reported; `-f` keeps printing new output.

use std::time::Duration;

use anyhow::Context;
use cis490_api::JobView;

use super::{events_head, follow_events, Ctx};
use crate::cli::LogsArgs;
use crate::output::print;
use crate::resolve::parse_prefix;

/// Heartbeats refresh the tail without an event, so `-f` re-reads the job at least this
/// often; any event wakes it sooner.
const REFRESH: Duration = Duration::from_secs(5);

/// The job's latest output: the heartbeat tail, or the tail kept with its failure.
pub fn current_tail(job: &JobView) -> String {
    job.log_tail
        .clone()
        .filter(|t| !t.is_empty())
        .or_else(|| job.error.as_ref().and_then(|e| e.log_tail.clone()))
        .unwrap_or_default()
}

/// What `new` adds after `old`. Both are tails of the same growing output, so `new` may
/// have dropped `old`'s beginning: find the longest end of `old` that starts `new`.
pub fn new_output<'a>(old: &str, new: &'a str) -> &'a str {
    if old.is_empty() {
        return new;
    }
    if let Some(rest) = new.strip_prefix(old) {
        return rest;
    }
    let longest = old.len().min(new.len());
    for k in (1..=longest).rev() {
        if new.is_char_boundary(k) && old.ends_with(&new[..k]) {
            return &new[k..];
        }
    }
    new
}

pub async fn run(ctx: &Ctx, args: &LogsArgs) -> anyhow::Result<()> {
    let client = ctx.client()?;
    // Take the event position first, so a change right after the first read still wakes us.
    let mut since = if args.follow {
        events_head(&client).await?
    } else {
        0
    };
    let job = client
        .job(&parse_prefix(&args.job)?)
        .await
        .with_context(|| format!("reading job {}", args.job))?;
    let mut shown = current_tail(&job);
    if shown.is_empty() && !args.follow {
        eprintln!(
            "job {} has no output yet (status {})",
            job.id.short(),
            job.status
        );
        return Ok(());
    }
    print(&shown)?;
    if !args.follow || job.status.is_terminal() {
        return Ok(());
    }
    let full = parse_prefix(job.id.as_str())?;
    loop {
        let page = follow_events(&client, since, REFRESH).await?;
        since = page.next.max(since);
        let job = client
            .job(&full)
            .await
            .with_context(|| format!("reading job {}", full))?;
        let tail = current_tail(&job);
        print(new_output(&shown, &tail))?;
        shown = tail;
        if job.status.is_terminal() {
            eprintln!("job {} {}", job.id.short(), job.status);
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_output_after_growth_and_sliding() {
        assert_eq!(new_output("", "abc"), "abc");
        assert_eq!(new_output("line1\n", "line1\nline2\n"), "line2\n");
        // The tail slid: its start was dropped, its end overlaps the old end.
        assert_eq!(new_output("l1\nl2\nl3\n", "l2\nl3\nl4\n"), "l4\n");
        assert_eq!(new_output("same", "same"), "");
        // No overlap at all: everything is new.
        assert_eq!(new_output("aaa", "bbb"), "bbb");
    }

    #[test]
    fn tail_falls_back_to_the_failure_log() {
        let job = crate::output::samples::job('b', cis490_api::JobStatus::Failed);
        assert!(current_tail(&job).contains("ValueError"));
    }
}
