//! `cis490-reconciler tokens issue|revoke|list`: per-worker tokens, for labs without PKI.
//!
//! Each works on the server's queue database directly, also while servers run: the state
//! directory's `queue.db` (SQLite WAL), or the PostgreSQL database of `--database` (every
//! server on it sees the change). The server looks every presented token up, so an issued
//! token works and a revoked one is refused from the next request on. On SQLite, run them
//! as the user the server runs as, so a `queue.db` they create stays writable for it.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use chrono::{DateTime, Utc};
use cis490_api::WorkerName;

use crate::queue::{JobQueue, PgQueue, Queue, QueueConfig};
use crate::server::config::{env, parse_database, Database, FileConfig, DEFAULT_STATE_DIR};

/// Arguments of `tokens`.
#[derive(Debug, clap::Args)]
pub struct TokensArgs {
    #[command(subcommand)]
    pub command: TokensCommand,
    /// The server's state directory, holding queue.db [env: CIS490_STATE_DIR]
    /// [default: state_dir of --config, else /var/lib/cis490]
    #[arg(long, value_name = "DIR", global = true)]
    pub state_dir: Option<PathBuf>,
    /// The server's TOML config file, to read its state_dir and database
    #[arg(long, value_name = "FILE", global = true)]
    pub config: Option<PathBuf>,
    /// The queue's database, as `serve --database` takes it: postgres://USER@HOST/DB for
    /// servers on PostgreSQL [env: CIS490_DATABASE]
    /// [default: database of --config, else sqlite:STATE_DIR/queue.db]
    #[arg(long, value_name = "URL", global = true)]
    pub database: Option<String>,
}

#[derive(Debug, clap::Subcommand)]
pub enum TokensCommand {
    /// Print a new token bound to worker NAME (only on stdout, only now); it replaces the
    /// name's previous token. Give it to that agent in a root-only file (worker_token_file).
    Issue {
        /// The worker name the token acts as (the agent's --name).
        name: String,
    },
    /// Delete worker NAME's token: the server refuses it from its next request on.
    Revoke {
        /// The worker name whose token goes.
        name: String,
    },
    /// The workers that have a token, and when each was issued (never the tokens).
    List {
        /// Output format.
        #[arg(short = 'o', long = "output", value_enum, default_value_t = ListFormat::Table)]
        output: ListFormat,
    },
}

/// How `tokens list` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ListFormat {
    Table,
    Json,
}

/// Flag, then CIS490_STATE_DIR, then the config file's `state_dir`, then the default.
fn state_dir(args: &TokensArgs) -> anyhow::Result<PathBuf> {
    if let Some(dir) = &args.state_dir {
        return Ok(dir.clone());
    }
    if let Some(dir) = std::env::var_os(env::STATE_DIR).filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(dir));
    }
    if let Some(path) = &args.config {
        if let Some(dir) = FileConfig::load(path)?.state_dir {
            return Ok(dir);
        }
    }
    Ok(PathBuf::from(DEFAULT_STATE_DIR))
}

/// Flag, then CIS490_DATABASE, then the config file's `database`; None: the state dir's
/// SQLite file.
fn database(args: &TokensArgs) -> anyhow::Result<Option<Database>> {
    let url = match &args.database {
        Some(url) => Some(url.clone()),
        None => match std::env::var(env::DATABASE)
            .ok()
            .filter(|v| !v.trim().is_empty())
        {
            Some(url) => Some(url),
            None => match &args.config {
                Some(path) => FileConfig::load(path)?.database,
                None => None,
            },
        },
    };
    Ok(url.map(|u| parse_database(&u)).transpose()?)
}

fn open_queue(args: &TokensArgs) -> anyhow::Result<Box<dyn JobQueue>> {
    match database(args)? {
        Some(Database::Postgres(url)) => Ok(Box::new(
            PgQueue::open(&url, QueueConfig::default())
                .context("opening the queue database on PostgreSQL")?,
        )),
        Some(Database::Sqlite(path)) => Ok(Box::new(open_sqlite(&path)?)),
        None => {
            let dir = state_dir(args)?;
            if !dir.is_dir() {
                bail!(
                    "the state directory {} does not exist: pass the server's --state-dir (or                      set {} or --config with its state_dir), or --database for a server on                      PostgreSQL",
                    dir.display(),
                    env::STATE_DIR
                );
            }
            Ok(Box::new(open_sqlite(&dir.join("queue.db"))?))
        }
    }
}

fn open_sqlite(db: &Path) -> anyhow::Result<Queue> {
    Queue::open(db, QueueConfig::default())
        .with_context(|| format!("opening the queue database {}", db.display()))
}

fn worker_name(text: &str) -> anyhow::Result<WorkerName> {
    WorkerName::parse(text).with_context(|| format!("invalid worker name {text:?}"))
}

/// Runs `tokens ...`; returns the process exit code.
pub fn run(args: TokensArgs) -> anyhow::Result<i32> {
    let queue = open_queue(&args)?;
    let mut out = std::io::stdout().lock();
    let mut err = std::io::stderr().lock();
    match &args.command {
        TokensCommand::Issue { name } => {
            let name = worker_name(name)?;
            let issued = queue.issue_worker_token(&name)?;
            writeln!(out, "{}", issued.token).context("writing the token to stdout")?;
            out.flush().context("writing the token to stdout")?;
            match issued.replaced {
                Some(at) => writeln!(
                    err,
                    "rotated the worker token of {name}: the one issued at {} no longer works",
                    at.to_rfc3339()
                )?,
                None => writeln!(err, "issued a worker token for {name}")?,
            }
            writeln!(
                err,
                "put it in a file only root and the agent's user can read, and name it as \
                 worker_token_file in the agent's config (install-agent.sh --token-file does)"
            )?;
            Ok(0)
        }
        TokensCommand::Revoke { name } => {
            let name = worker_name(name)?;
            match queue.revoke_worker_token(&name)? {
                Some(at) => {
                    writeln!(
                        out,
                        "revoked the worker token of {name} (issued {}); the server refuses it \
                         from its next request",
                        at.to_rfc3339()
                    )?;
                    Ok(0)
                }
                None => {
                    writeln!(
                        err,
                        "worker {name} has no token; `cis490-reconciler tokens list` shows those \
                         that do"
                    )?;
                    Ok(1)
                }
            }
        }
        TokensCommand::List { output } => {
            let tokens = queue.worker_tokens()?;
            let text = match output {
                ListFormat::Json => {
                    let mut json =
                        serde_json::to_string_pretty(&tokens).context("rendering as JSON")?;
                    json.push('\n');
                    json
                }
                ListFormat::Table => {
                    render_table(tokens.iter().map(|t| (&t.name, t.created_at)), Utc::now())
                }
            };
            out.write_all(text.as_bytes())
                .context("writing to stdout")?;
            Ok(0)
        }
    }
}

fn render_table<'a>(
    rows: impl Iterator<Item = (&'a WorkerName, DateTime<Utc>)>,
    now: DateTime<Utc>,
) -> String {
    let rows: Vec<(String, String, String)> = rows
        .map(|(name, created)| {
            let age = (now - created).num_seconds().max(0);
            (
                name.to_string(),
                created.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                human_age(age),
            )
        })
        .collect();
    if rows.is_empty() {
        return "no per-worker tokens (cis490-reconciler tokens issue NAME makes one)\n".into();
    }
    let width = rows
        .iter()
        .map(|r| r.0.len())
        .max()
        .unwrap_or(0)
        .max("NAME".len());
    let mut out = format!("{:<width$}  {:<20}  AGE\n", "NAME", "CREATED");
    for (name, created, age) in rows {
        out.push_str(&format!("{name:<width$}  {created:<20}  {age}\n"));
    }
    out
}

fn human_age(seconds: i64) -> String {
    match seconds {
        s if s < 120 => format!("{s}s"),
        s if s < 2 * 3600 => format!("{}m", s / 60),
        s if s < 2 * 86400 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86400),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_shows_names_and_times_aligned() {
        let now = DateTime::parse_from_rfc3339("2025-01-02T00:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let a = WorkerName::parse("gpu-box-1").unwrap();
        let b = WorkerName::parse("pi").unwrap();
        let text = render_table(
            [
                (&a, now - chrono::TimeDelta::hours(30)),
                (&b, now - chrono::TimeDelta::seconds(5)),
            ]
            .into_iter(),
            now,
        );
        assert_eq!(
            text,
            "NAME       CREATED               AGE\n\
             gpu-box-1  2024-12-31T18:00:00Z  30h\n\
             pi         2025-01-01T23:59:55Z  5s\n"
        );
        assert!(render_table(std::iter::empty(), now).contains("tokens issue"));
    }
}
