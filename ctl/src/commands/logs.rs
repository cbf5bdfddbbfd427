//! `logs JOB [--attempt N | --previous] [--tail N] [-f]`: an attempt's whole log, read by
//! offset from `GET /v1/job/{id}/log`, so `-f` follows it without gaps. Jobs run by agents
//! from before log streaming (or a server without the route) show the log tail their
//! heartbeats carried, as before.

use std::collections::VecDeque;
use std::time::Duration;

use anyhow::Context;
use cis490_api::{Client, ClientError, IdPrefix, JobView, LogPage, LogQuery};

use super::{events_head, follow_events, Ctx};
use crate::cli::LogsArgs;
use crate::output::print;
use crate::resolve::parse_prefix;

/// Heartbeats refresh the tail without an event, so `-f` re-reads the job at least this
/// often; any event wakes it sooner.
const REFRESH: Duration = Duration::from_secs(5);
/// How often `-f` asks for more of a running attempt's log once it has read all there is.
const LOG_POLL: Duration = Duration::from_millis(500);

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
    let prefix = parse_prefix(&args.job)?;
    let query = LogQuery {
        attempt: args.attempt,
        offset: Some(0),
        limit: Some(1),
    };
    let first = match client.job_log(&prefix, &query).await {
        Ok(page) => page,
        Err(e) if route_missing(&e) => return tail_only(ctx, args).await,
        Err(e) => return Err(e).with_context(|| format!("reading the log of job {}", args.job)),
    };
    let id = parse_prefix(first.job_id.as_str())?;
    if first.attempts.is_empty() && args.attempt.is_none() && !args.previous {
        // An agent from before log streaming sends only a tail: show that, if there is one.
        let job = client
            .job(&id)
            .await
            .with_context(|| format!("reading job {}", args.job))?;
        if !current_tail(&job).is_empty() {
            return tail_only(ctx, args).await;
        }
    }
    let attempt = if args.previous {
        Some(previous_attempt(&first)?)
    } else {
        first.attempt
    };
    let mut follower = Follower {
        client: &client,
        id,
        attempt,
        // Default: the job's log through its retries. A chosen attempt: only that one.
        whole_job: args.attempt.is_none() && !args.previous,
        offset: 0,
    };
    let mut printed = match args.tail {
        Some(lines) => follower.print_last_lines(lines).await?,
        None => follower.print_available().await?,
    };
    if !args.follow {
        if !printed.any {
            let what = match attempt {
                Some(n) => format!(
                    "attempt {n} of job {} has no output yet",
                    first.job_id.short()
                ),
                None => format!("job {} has no output yet", first.job_id.short()),
            };
            eprintln!("{what} (status {})", printed.last.job_status);
        }
        return Ok(());
    }
    loop {
        if printed.last.finished {
            if !follower.whole_job || printed.last.job_status.is_terminal() {
                let which = follower
                    .attempt
                    .map_or_else(String::new, |n| format!(" (attempt {n})"));
                eprintln!(
                    "job {} {}{which}",
                    printed.last.job_id.short(),
                    printed.last.job_status
                );
                return Ok(());
            }
            follower.next_attempt().await?;
        }
        tokio::time::sleep(LOG_POLL).await;
        printed = follower.print_available().await?;
    }
}

/// A server from before `GET /v1/job/{id}/log` answers 404 for the route itself, not for
/// the job ("no job matches ...").
fn route_missing(e: &ClientError) -> bool {
    match e {
        ClientError::Api { status, api, .. } => {
            status.as_u16() == 404 && !api.message.starts_with("no job")
        }
        _ => false,
    }
}

/// The attempt before the one the server shows by default (the current or latest).
fn previous_attempt(page: &LogPage) -> anyhow::Result<u32> {
    let latest = page.attempt.unwrap_or(0);
    page.attempts
        .iter()
        .copied()
        .filter(|a| *a < latest)
        .max()
        .ok_or_else(|| {
            anyhow::anyhow!(
                "job {} has no log of an attempt before attempt {latest} (attempts with a log: {})",
                page.job_id.short(),
                if page.attempts.is_empty() {
                    "none".to_string()
                } else {
                    page.attempts
                        .iter()
                        .map(u32::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                }
            )
        })
}

/// What one round of reading printed.
struct Printed {
    any: bool,
    last: LogPage,
}

/// Reads one attempt's log from where it left off.
struct Follower<'c> {
    client: &'c Client,
    id: IdPrefix,
    attempt: Option<u32>,
    whole_job: bool,
    offset: u64,
}

impl Follower<'_> {
    async fn page(&self) -> anyhow::Result<LogPage> {
        let query = LogQuery {
            attempt: self.attempt,
            offset: Some(self.offset),
            limit: None,
        };
        self.client
            .job_log(&self.id, &query)
            .await
            .with_context(|| format!("reading the log of job {}", self.id))
    }

    /// Every page there is now, printed as it comes.
    async fn print_available(&mut self) -> anyhow::Result<Printed> {
        let mut any = false;
        loop {
            let page = self.page().await?;
            if self.attempt.is_none() {
                self.attempt = page.attempt;
            }
            if !page.text.is_empty() {
                print(&page.text)?;
                any = true;
            }
            let moved = page.next_offset > self.offset;
            self.offset = page.next_offset;
            if !moved || self.offset >= page.size {
                return Ok(Printed { any, last: page });
            }
        }
    }

    /// Reads the log there is now and prints only its last `lines` lines.
    async fn print_last_lines(&mut self, lines: usize) -> anyhow::Result<Printed> {
        let mut kept: VecDeque<String> = VecDeque::with_capacity(lines.min(4096) + 1);
        let mut partial = String::new();
        loop {
            let page = self.page().await?;
            if self.attempt.is_none() {
                self.attempt = page.attempt;
            }
            partial.push_str(&page.text);
            while let Some(nl) = partial.find('\n') {
                let line: String = partial.drain(..=nl).collect();
                kept.push_back(line);
                if kept.len() > lines {
                    kept.pop_front();
                }
            }
            let moved = page.next_offset > self.offset;
            self.offset = page.next_offset;
            if !moved || self.offset >= page.size {
                if !partial.is_empty() {
                    kept.push_back(std::mem::take(&mut partial));
                    if kept.len() > lines {
                        kept.pop_front();
                    }
                }
                let text: String = kept.into_iter().collect();
                print(&text)?;
                return Ok(Printed {
                    any: !text.is_empty(),
                    last: page,
                });
            }
        }
    }

    /// The attempt followed is over but the job goes on: waits until the server's
    /// current attempt moves on (a retry), or the same attempt number is leased again.
    async fn next_attempt(&mut self) -> anyhow::Result<()> {
        let probe = LogQuery {
            attempt: None,
            offset: Some(0),
            limit: Some(1),
        };
        loop {
            let page = self
                .client
                .job_log(&self.id, &probe)
                .await
                .with_context(|| format!("reading the log of job {}", self.id))?;
            if page.job_status.is_terminal() {
                return Ok(());
            }
            if page.attempt != self.attempt && page.attempt.is_some() {
                if let Some(n) = page.attempt {
                    eprintln!("--- attempt {n} ---");
                }
                self.attempt = page.attempt;
                self.offset = 0;
                return Ok(());
            }
            if !page.finished {
                // The same attempt number leased again: its log goes on where it was.
                return Ok(());
            }
            tokio::time::sleep(LOG_POLL).await;
        }
    }
}

/// The log tail the job's heartbeats carried (agents and servers from before log
/// streaming).
async fn tail_only(ctx: &Ctx, args: &LogsArgs) -> anyhow::Result<()> {
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
