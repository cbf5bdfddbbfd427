//! One file per verb; `run` dispatches the parsed command line to it.

use anyhow::Context;
use cis490_api::client::EventsFilter;
use cis490_api::{Client, ClientTls};

use crate::cli::{Cli, Command, GetResource, OPERATOR_TOKEN_ENV};
use crate::errors::MissingToken;
use crate::output::Terminal;

pub mod apply;
pub mod cancel;
pub mod completion;
pub mod config;
pub mod cordon;
pub mod delete;
pub mod describe;
pub mod diff;
pub mod events;
pub mod get;
pub mod get_one;
pub mod hold;
pub mod logs;
pub mod pull;
pub mod reload;
pub mod requeue;
pub mod results;
pub mod status;
pub mod version;
pub mod wait;
pub mod watch_workers;

/// What every verb needs: where the server is, how to trust it, the operator token, and the
/// terminal.
#[derive(Debug, Clone)]
pub struct Ctx {
    pub server: String,
    pub term: Terminal,
    tls: ClientTls,
    operator_token: Option<String>,
}

impl Ctx {
    /// Reads the environment (operator token, else the context's token file) and the
    /// terminal.
    pub fn from_connection(conn: config::Connection) -> anyhow::Result<Self> {
        let mut ctx = Self::from_env(conn.server, conn.tls);
        if ctx.operator_token.is_none() {
            if let Some(file) = &conn.operator_token_file {
                let token = cis490_api::config_file::read_text(file)?;
                ctx.operator_token = Some(token.trim().to_string()).filter(|t| !t.is_empty());
            }
        }
        Ok(ctx)
    }

    /// Reads the environment (operator token) and the terminal.
    pub fn from_env(server: String, tls: ClientTls) -> Self {
        Self {
            server,
            term: Terminal::detect(),
            tls,
            operator_token: std::env::var(OPERATOR_TOKEN_ENV)
                .ok()
                .filter(|t| !t.trim().is_empty()),
        }
    }

    /// A client for read-only verbs. It carries the operator token when one is set, for
    /// servers that protect reads.
    pub fn client(&self) -> anyhow::Result<Client> {
        Ok(Client::builder(&self.server)
            .tls(self.tls.clone())
            .build()?
            .with_operator_token(self.operator_token.clone()))
    }

    /// A client for operator verbs. Fails before any request when the token is missing.
    pub fn operator(&self, verb: &'static str) -> anyhow::Result<Client> {
        if self.operator_token.is_none() {
            return Err(MissingToken { verb }.into());
        }
        self.client()
    }
}

/// Runs one parsed command line.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    if let Command::Config(args) = &cli.command {
        return config::run(&cli, &args.action, Terminal::detect());
    }
    let ctx = Ctx::from_connection(config::connection(&cli)?)?;
    match cli.command {
        Command::Get(args) => match args.resource {
            GetResource::Jobs(a) => get::jobs(&ctx, &a).await,
            GetResource::Workers(a) => get::workers(&ctx, &a).await,
            GetResource::Artifacts(a) => get::artifacts(&ctx, &a).await,
            GetResource::Events(a) => events::run(&ctx, &a).await,
        },
        Command::Describe(args) => describe::run(&ctx, &args).await,
        Command::Results(args) => results::run(&ctx, &args).await,
        Command::Wait(args) => wait::run(&ctx, &args).await,
        Command::Logs(args) => logs::run(&ctx, &args).await,
        Command::Cancel(args) => cancel::run(&ctx, &args).await,
        Command::Requeue(args) => requeue::run(&ctx, &args).await,
        Command::Hold(args) => hold::hold(&ctx, &args).await,
        Command::Release(args) => hold::release(&ctx, &args).await,
        Command::Reload(args) => reload::run(&ctx, &args).await,
        Command::Apply(args) => apply::run(&ctx, &args).await,
        Command::Diff(args) => diff::run(&ctx, &args).await,
        Command::Cordon(args) => {
            cordon::run(&ctx, &args, cis490_api::client::NodeAction::Cordon).await
        }
        Command::Uncordon(args) => {
            cordon::run(&ctx, &args, cis490_api::client::NodeAction::Uncordon).await
        }
        Command::Drain(args) => {
            cordon::run(&ctx, &args, cis490_api::client::NodeAction::Drain).await
        }
        Command::Delete(args) => delete::run(&ctx, &args).await,
        Command::Status(args) => status::run(&ctx, &args).await,
        Command::Pull(args) => pull::run(&ctx, &args).await,
        Command::Completion(args) => completion::run(&args),
        Command::Config(_) => Ok(()),
        Command::Version(args) => version::run(&ctx, &args).await,
    }
}

/// How long one long-poll of `/v1/events` waits for something to happen.
pub const EVENTS_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// When a server at its long-poll cap sends no `Retry-After`.
const BUSY_PAUSE: std::time::Duration = std::time::Duration::from_secs(1);

/// One long-poll of the event log for a follower (`get -w`, `wait`, `logs -f`). A server at
/// one of its caps (429 `too_many_long_polls`, 503) is not an error: this waits what its
/// `Retry-After` asks (at most `wait`) and answers an empty page, so the follower polls
/// again later instead of failing or spinning.
pub async fn follow_events(
    client: &Client,
    since: u64,
    wait: std::time::Duration,
) -> anyhow::Result<cis490_api::EventsPage> {
    follow_filtered_events(client, since, wait, &EventsFilter::default()).await
}

/// [`follow_events`] of only the events `filter` keeps (`get events -w --job/--worker`).
pub async fn follow_filtered_events(
    client: &Client,
    since: u64,
    wait: std::time::Duration,
    filter: &EventsFilter,
) -> anyhow::Result<cis490_api::EventsPage> {
    match client.events_filtered(since, wait, filter).await {
        Ok(page) => Ok(page),
        Err(e) if e.is_busy() => {
            let pause = e.retry_after().unwrap_or(BUSY_PAUSE);
            tokio::time::sleep(pause.min(wait.max(BUSY_PAUSE))).await;
            Ok(cis490_api::EventsPage {
                events: Vec::new(),
                next: since,
            })
        }
        // The server followed went away mid-wait; the client has moved on to the next of
        // its servers, which numbers events the same way (one database).
        Err(e) if e.is_unreachable() && client.server_count() > 1 => {
            eprintln!("{e}; following the event log on {}", client.base_url());
            tokio::time::sleep(FAILOVER_PAUSE).await;
            Ok(cis490_api::EventsPage {
                events: Vec::new(),
                next: since,
            })
        }
        Err(e) => Err(e).context("following the event log"),
    }
}

/// How long a follow waits after its server went away before it asks the next one.
const FAILOVER_PAUSE: std::time::Duration = std::time::Duration::from_millis(250);

/// The event sequence number to follow from: everything up to now is skipped.
pub async fn events_head(client: &Client) -> anyhow::Result<u64> {
    let mut since = 0;
    loop {
        let page = client
            .events(since, std::time::Duration::ZERO)
            .await
            .context("reading the event log")?;
        let last_seq = page.events.iter().map(|e| e.seq).max().unwrap_or(since);
        let next = page.next.max(last_seq);
        if page.events.is_empty() || next <= since {
            return Ok(next.max(since));
        }
        since = next;
    }
}

/// An operator action on jobs, in the words its messages use.
pub struct JobVerb {
    /// "cancel": what the ID must be long enough for.
    pub verb: &'static str,
    /// "cancelling": what was being tried when it failed.
    pub doing: &'static str,
    /// "cancelled": what each success line says.
    pub done: &'static str,
}

/// The typed prefix, long enough for a verb that changes a job.
fn mutating_prefix(typed: &str, verb: &JobVerb) -> anyhow::Result<cis490_api::IdPrefix> {
    let prefix = crate::resolve::parse_prefix(typed)?;
    prefix
        .check_mutating(verb.verb)
        .map_err(anyhow::Error::msg)?;
    Ok(prefix)
}

/// Applies an operator action to each typed job ID, printing `job/ID DONE` per success and
/// one error line per failure (`cancelling job ID: why`); fails (exit 1) when any failed.
pub async fn each_job<F, Fut>(ids: &[String], verb: JobVerb, action: F) -> anyhow::Result<()>
where
    F: Fn(cis490_api::IdPrefix) -> Fut,
    Fut: std::future::Future<
        Output = Result<cis490_api::JobStatusResponse, cis490_api::ClientError>,
    >,
{
    let word = verb.done;
    if let [only] = ids {
        let prefix = mutating_prefix(only, &verb)?;
        let done = action(prefix)
            .await
            .with_context(|| format!("{} job {only}", verb.doing))?;
        return crate::output::print(&done_line(&done, word));
    }
    let mut failed = 0;
    for typed in ids {
        let result = match mutating_prefix(typed, &verb) {
            Ok(prefix) => action(prefix).await.map_err(anyhow::Error::from),
            Err(e) => Err(e),
        };
        match result {
            Ok(done) => crate::output::print(&done_line(&done, word))?,
            Err(e) => {
                failed += 1;
                eprintln!(
                    "error: {} job {typed}: {}",
                    verb.doing,
                    crate::errors::one_line(&e)
                );
            }
        }
    }
    if failed > 0 {
        anyhow::bail!("{failed} of {} jobs not {word}", ids.len());
    }
    Ok(())
}

/// `job/abc123def456 requeued (pending)`; the status is left out when the word says it.
fn done_line(done: &cis490_api::JobStatusResponse, word: &str) -> String {
    if done.status.as_str() == word {
        format!("job/{} {word}\n", done.id.short())
    } else {
        format!("job/{} {word} ({})\n", done.id.short(), done.status)
    }
}
