//! The command line: every verb, its flags and an example for `--help`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Default reconciler URL when neither `--server` nor `CIS490_SERVER` is given.
pub const DEFAULT_SERVER: &str = "http://127.0.0.1:8787";
/// Environment variable that names the reconciler.
pub const SERVER_ENV: &str = "CIS490_SERVER";
/// Environment variable that carries the operator token for operator verbs.
pub const OPERATOR_TOKEN_ENV: &str = "CIS490_OPERATOR_TOKEN";

/// cis490ctl: operate a cis490 training fleet (jobs, workers, artifacts, the manifest).
#[derive(Debug, Parser)]
#[command(
    name = "cis490ctl",
    version,
    about,
    after_help = "Examples:\n  cis490ctl get jobs --status running\n  cis490ctl describe job 3fa9\n  cis490ctl --server http://pi.lab:8787 status\n  cis490ctl --server https://pi.lab:8787 --ca-file ca.pem status\n\nOperator verbs (cancel, hold, release, requeue, reload, apply, diff, cordon,\nuncordon, drain, delete) need CIS490_OPERATOR_TOKEN set to the reconciler's operator token."
)]
pub struct Cli {
    /// The reconciler's URL (https:// when it serves TLS), or several servers of one fleet
    /// separated by commas (the next is tried when one cannot be reached); default: the
    /// current context's server, else http://127.0.0.1:8787.
    #[arg(long, global = true, env = SERVER_ENV)]
    pub server: Option<String>,

    /// The client config file (contexts); default ~/.config/cis490/config.toml
    /// ($XDG_CONFIG_HOME/cis490/config.toml when set).
    #[arg(long, global = true, value_name = "FILE", env = crate::client_config::CONFIG_ENV)]
    pub config: Option<PathBuf>,

    /// Use this context of the config file instead of its current_context.
    #[arg(long, global = true, value_name = "NAME")]
    pub context: Option<String>,

    /// Trust the CA certificates in this PEM file, e.g. the ca.pem made by
    /// `cis490-reconciler certs init` (besides the public roots).
    #[arg(long, global = true, value_name = "FILE", env = cis490_api::tls::CA_FILE_ENV)]
    pub ca_file: Option<PathBuf>,

    /// Present this client certificate (PEM) to the server; not needed for any cis490ctl
    /// verb, but accepted by a server that protects reads.
    #[arg(long, global = true, value_name = "FILE", env = cis490_api::tls::CERT_FILE_ENV)]
    pub cert_file: Option<PathBuf>,

    /// The private key (PEM) of --cert-file.
    #[arg(long, global = true, value_name = "FILE", env = cis490_api::tls::KEY_FILE_ENV)]
    pub key_file: Option<PathBuf>,

    #[command(subcommand)]
    pub command: Command,
}

/// How a listing is printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// A table that fits the terminal (the default).
    Table,
    /// The table with more columns.
    Wide,
    /// The full objects as JSON.
    Json,
    /// The full objects as YAML.
    Yaml,
    /// One `kind/id` per line, for scripts.
    Name,
}

/// How a single result (status, version, diff) is printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DataFormat {
    /// Human-readable text (the default).
    Text,
    Json,
    Yaml,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// List jobs, workers, artifacts or events.
    #[command(
        after_help = "Examples:\n  cis490ctl get jobs\n  cis490ctl get jobs --status failed -o wide\n  cis490ctl get jobs -l team=vision -o json\n  cis490ctl get jobs -w\n  cis490ctl get workers\n  cis490ctl get artifacts -o yaml"
    )]
    Get(GetArgs),
    /// Show everything about one job or worker, with its events.
    #[command(
        after_help = "Examples:\n  cis490ctl describe job 3fa9c1\n  cis490ctl describe worker gpu-box\n  cis490ctl describe job 3fa9c1 -o json"
    )]
    Describe(DescribeArgs),
    /// The leaderboard of completed jobs: the hyper keys that vary and the metrics each
    /// trainer wrote to metrics.json.
    #[command(
        after_help = "Examples:\n  cis490ctl results gbt --sort -accuracy\n  cis490ctl results --mode oracle --sort -val_accuracy --top 5\n  cis490ctl results gbt --group-by hyper.learning_rate --sort -accuracy\n  cis490ctl results gbt --columns id,hyper.learning_rate,accuracy -o csv > runs.csv\n\nColumns and sort keys: a metric (accuracy, or metrics.accuracy), hyper.KEY, or one of\nid, model, mode, seed, worker, attempt, duration, finished, artifact. A leading - sorts\ndescending; rows without the value come last."
    )]
    Results(ResultsArgs),
    /// Block until jobs complete; fail at once when one fails or is cancelled.
    #[command(
        after_help = "Examples:\n  cis490ctl wait 3fa9c1 77be02\n  cis490ctl wait 3fa9c1 --for running --timeout 2m"
    )]
    Wait(WaitArgs),
    /// Print a job's log: the whole log of its current (or latest) attempt, as the server
    /// keeps it; -f follows it as it grows.
    ///
    /// The server keeps each attempt's log up to its `max_log_bytes_per_attempt` (16 MiB
    /// by default); a longer log keeps its first half and its latest part, with one
    /// "[... truncated: N bytes dropped ...]" line between them.
    #[command(
        after_help = "Examples:\n  cis490ctl logs 3fa9c1\n  cis490ctl logs -f 3fa9c1\n  cis490ctl logs 3fa9c1 --tail 20\n  cis490ctl logs 3fa9c1 --previous\n  cis490ctl logs 3fa9c1 --attempt 1"
    )]
    Logs(LogsArgs),
    /// Cancel jobs (operator). A running job stops at its next heartbeat. Each ID needs at
    /// least 4 hex digits.
    #[command(
        after_help = "Examples:\n  CIS490_OPERATOR_TOKEN=... cis490ctl cancel 3fa9c1 77be02"
    )]
    Cancel(CancelArgs),
    /// Put failed, cancelled or completed jobs back in the queue (operator). Each ID needs
    /// at least 4 hex digits.
    #[command(
        after_help = "Examples:\n  cis490ctl requeue 3fa9c1\n  cis490ctl requeue --status failed"
    )]
    Requeue(RequeueArgs),
    /// Hold pending jobs (operator): they stay in the queue with their history, but no
    /// worker claims them until `release`. A held job still takes manifest updates and can
    /// be cancelled; `requeue` refuses it. Each ID needs at least 4 hex digits.
    #[command(
        after_help = "Examples:\n  cis490ctl hold 3fa9c1\n  cis490ctl get jobs --status held\n  cis490ctl release 3fa9c1"
    )]
    Hold(HoldArgs),
    /// Make held jobs pending again (operator); a job that is not held is refused (409).
    #[command(after_help = "Examples:\n  cis490ctl release 3fa9c1 77be02")]
    Release(HoldArgs),
    /// Re-read the manifest on the server and apply it now (operator).
    #[command(after_help = "Examples:\n  cis490ctl reload\n  cis490ctl reload -o json")]
    Reload(ReloadArgs),
    /// Write FILE as the server's manifest and apply it (operator), like `kubectl apply
    /// -f`: the server validates it first (an invalid one changes nothing), cis490ctl
    /// shows the diff, asks before writing when stdin is a terminal (-y skips it), and the
    /// server writes it atomically beside its manifest and reconciles. Without -f: the same
    /// as `reload`. Needs a server with `allow_manifest_writes` (the default) and write
    /// access to its manifest's directory.
    #[command(
        after_help = "Examples:\n  cis490ctl apply -f etc/training_manifest.toml\n  cis490ctl apply -f new.toml --dry-run\n  cis490ctl apply -f new.toml -y -o json\n  cis490ctl apply"
    )]
    Apply(ApplyArgs),
    /// Show what reloading FILE would create, update, tombstone and revive (operator).
    #[command(
        after_help = "Examples:\n  cis490ctl diff -f etc/training_manifest.toml\n\nOutput lines:\n  + create    abc123def456 gbt/realistic\n  ~ update    abc123def456 gbt/realistic (priority)\n  - tombstone abc123def456 gbt/realistic\n  ^ revive    abc123def456 gbt/realistic"
    )]
    Diff(DiffArgs),
    /// Forget workers that are gone (operator), like `kubectl delete node`. A worker that
    /// holds a job's lease is refused (drain it first); an agent still running under the
    /// name registers again at its next report. Its tokens stay (`cis490-reconciler tokens
    /// revoke` takes them).
    #[command(
        after_help = "Examples:\n  cis490ctl delete worker old-box\n  cis490ctl delete node lab-2 lab-3"
    )]
    Delete(DeleteArgs),
    /// Stop new jobs going to a worker (operator).
    #[command(after_help = "Examples:\n  cis490ctl cordon gpu-box")]
    Cordon(NodeArgs),
    /// Let a cordoned worker take new jobs again (operator).
    #[command(after_help = "Examples:\n  cis490ctl uncordon gpu-box")]
    Uncordon(NodeArgs),
    /// Cordon a worker and let its running jobs finish (operator).
    #[command(after_help = "Examples:\n  cis490ctl drain gpu-box")]
    Drain(NodeArgs),
    /// One-screen summary: jobs per status, workers, manifest.
    #[command(after_help = "Examples:\n  cis490ctl status\n  cis490ctl status -o json")]
    Status(StatusArgs),
    /// Download an artifact (by artifact or job ID prefix) and verify its sha256. A job
    /// gives its own artifact; an artifact ID gives those bytes, whichever jobs made them.
    #[command(
        after_help = "Examples:\n  cis490ctl pull 3fa9c1\n  cis490ctl pull 3fa9c1 -o model.tar.zst"
    )]
    Pull(PullArgs),
    /// Print a shell completion script.
    #[command(
        after_help = "Examples:\n  cis490ctl completion bash > /etc/bash_completion.d/cis490ctl\n  cis490ctl completion zsh > \"${fpath[1]}/_cis490ctl\"\n  cis490ctl completion fish > ~/.config/fish/completions/cis490ctl.fish"
    )]
    Completion(CompletionArgs),
    /// Show or switch the contexts of the client config file (kubeconfig style).
    ///
    /// The file (~/.config/cis490/config.toml, or --config / CIS490_CONFIG) holds
    /// `current_context = "NAME"` and `[contexts.NAME]` tables with `server`,
    /// `operator_token_file`, `ca_file`, `cert_file` and `key_file` (relative paths from
    /// the file's directory). --server, --ca-file, --cert-file, --key-file and their
    /// environment variables, and CIS490_OPERATOR_TOKEN, win over the context.
    #[command(
        after_help = "Examples:\n  cis490ctl config get-contexts\n  cis490ctl config use-context lab\n  cis490ctl config current-context\n  cis490ctl --context dev get jobs"
    )]
    Config(ConfigArgs),
    /// Print the client's and the server's versions.
    #[command(after_help = "Examples:\n  cis490ctl version\n  cis490ctl version --client")]
    Version(VersionArgs),
}

#[derive(Debug, Args)]
pub struct GetArgs {
    #[command(subcommand)]
    pub resource: GetResource,
}

#[derive(Debug, Subcommand)]
pub enum GetResource {
    /// List jobs.
    #[command(
        visible_aliases = ["job", "j"],
        after_help = "Examples:\n  cis490ctl get jobs\n  cis490ctl get jobs --model gbt --status pending\n  cis490ctl get jobs -A -o name\n  cis490ctl get jobs -w\n  cis490ctl get jobs -l team=vision,gpu!=none -l '!legacy'\n  cis490ctl get job 3fa9c1 -o yaml"
    )]
    Jobs(GetJobsArgs),
    /// List workers (nodes).
    #[command(
        visible_aliases = ["worker", "nodes", "node"],
        after_help = "Examples:\n  cis490ctl get workers\n  cis490ctl get nodes -o wide\n  cis490ctl get workers -w"
    )]
    Workers(GetWorkersArgs),
    /// List stored artifacts: one row per job and attempt that uploaded them (jobs that
    /// made identical bytes share an artifact ID); `-o name` lists each artifact once.
    #[command(
        visible_aliases = ["artifact", "models"],
        after_help = "Examples:\n  cis490ctl get artifacts\n  cis490ctl get artifacts -o json\n  cis490ctl get artifacts -o name"
    )]
    Artifacts(ListArgs),
    /// The event log, oldest first (filtered on the server); -w then follows it.
    #[command(
        visible_aliases = ["event", "ev"],
        after_help = "Examples:\n  cis490ctl get events\n  cis490ctl get events --job 3fa9c1\n  cis490ctl get events --worker gpu-box -w\n  cis490ctl get events -o json"
    )]
    Events(GetEventsArgs),
}

#[derive(Debug, Args)]
pub struct GetWorkersArgs {
    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
    /// After the listing, print a worker's line whenever it changes (state, cordon,
    /// running jobs, host problem, agent version), until Ctrl-C.
    #[arg(short = 'w', long = "watch")]
    pub watch: bool,
}

#[derive(Debug, Args)]
pub struct GetEventsArgs {
    /// Output format (`-o wide` adds the sequence number and the time).
    #[arg(short = 'o', long = "output", value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
    /// Only the events of this job (ID or unique prefix).
    #[arg(long, value_name = "JOB")]
    pub job: Option<String>,
    /// Only the events that name this worker.
    #[arg(long, value_name = "NAME")]
    pub worker: Option<String>,
    /// After the log, print each new event as it happens, until Ctrl-C.
    #[arg(short = 'w', long = "watch")]
    pub watch: bool,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
}

#[derive(Debug, Args)]
pub struct GetJobsArgs {
    /// One job: its ID or a unique prefix (`-o json|yaml` prints the job itself, with its
    /// events, not a list).
    #[arg(value_name = "JOB", conflicts_with_all = ["status", "model", "worker", "selector", "all", "watch"])]
    pub id: Option<String>,
    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
    /// Only jobs in this status (pending, held, claimed, running, completed, failed,
    /// cancelled).
    #[arg(long)]
    pub status: Option<cis490_api::JobStatus>,
    /// Only jobs of this model.
    #[arg(long)]
    pub model: Option<String>,
    /// Only jobs held (or last run) by this worker.
    #[arg(long)]
    pub worker: Option<String>,
    /// Label selector, kubectl style: `key=value`, `key!=value` (an absent label counts
    /// as different), `key` (present) or `!key` (absent), comma-separated; every term must
    /// hold, and -l given several times adds terms.
    #[arg(short = 'l', long = "selector", value_name = "SELECTOR", action = clap::ArgAction::Append)]
    pub selector: Vec<String>,
    /// Include tombstoned jobs (removed from the manifest).
    #[arg(short = 'A', long = "all")]
    pub all: bool,
    /// After the listing, print a line whenever a job changes, until Ctrl-C.
    #[arg(short = 'w', long = "watch")]
    pub watch: bool,
    /// Jobs asked for per request: the listing is fetched page by page (at most 1000 a
    /// page), so a large queue never needs one huge answer.
    #[arg(long, value_name = "N", default_value_t = cis490_api::DEFAULT_PAGE_LIMIT,
          value_parser = clap::value_parser!(u32).range(1..=i64::from(cis490_api::MAX_PAGE_LIMIT)))]
    pub chunk_size: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ResultsFormat {
    Table,
    Wide,
    Json,
    Yaml,
    /// Comma-separated, one header line (pandas.read_csv, Python's csv module).
    Csv,
}

#[derive(Debug, Args)]
pub struct ResultsArgs {
    /// Only this model's jobs.
    #[arg(value_name = "MODEL")]
    pub model: Option<String>,
    /// Only this mode's jobs.
    #[arg(long)]
    pub mode: Option<String>,
    /// Only jobs with this label (`key=value`).
    #[arg(short = 'l', long = "selector", value_name = "KEY=VALUE")]
    pub selector: Option<String>,
    /// Order by a metric, a hyper key (hyper.KEY) or a field; `-` first for descending.
    #[arg(long, value_name = "KEY", allow_hyphen_values = true)]
    pub sort: Option<String>,
    /// Only the first N rows (or groups).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub top: Option<u32>,
    /// The columns to show, comma-separated (default: ID, the hyper keys that vary, the
    /// metrics, the duration). With --group-by: the metrics to aggregate.
    #[arg(long, value_name = "KEY,...", value_delimiter = ',')]
    pub columns: Option<Vec<String>>,
    /// Aggregate over the rows that share these keys (e.g. hyper.learning_rate, over
    /// seeds): the mean, sample standard deviation and count of each metric.
    #[arg(long, value_name = "KEY,...", value_delimiter = ',')]
    pub group_by: Vec<String>,
    /// One row per completed attempt (re-runs after a requeue), not one per job.
    #[arg(long)]
    pub attempts: bool,
    #[arg(short = 'o', long = "output", value_enum, default_value_t = ResultsFormat::Table)]
    pub output: ResultsFormat,
}

#[derive(Debug, Args)]
pub struct DescribeArgs {
    #[command(subcommand)]
    pub resource: DescribeResource,
}

#[derive(Debug, Subcommand)]
pub enum DescribeResource {
    /// Describe a job by ID prefix.
    #[command(
        visible_aliases = ["jobs", "j"],
        after_help = "Examples:\n  cis490ctl describe job 3fa9c1\n  cis490ctl describe job 3fa9c1 -o json"
    )]
    Job {
        /// Job ID or unique prefix.
        id: String,
        /// Output format: the text view, or the whole view (job with events, explain) as
        /// JSON or YAML.
        #[arg(short = 'o', long = "output", value_enum, default_value_t = DataFormat::Text)]
        output: DataFormat,
    },
    /// Describe a worker by name.
    #[command(
        visible_aliases = ["workers", "node", "nodes"],
        after_help = "Examples:\n  cis490ctl describe worker gpu-box\n  cis490ctl describe worker gpu-box -o yaml"
    )]
    Worker {
        /// Worker name.
        name: String,
        /// Output format: the text view, or the whole view (worker, its jobs, its latest
        /// events) as JSON or YAML.
        #[arg(short = 'o', long = "output", value_enum, default_value_t = DataFormat::Text)]
        output: DataFormat,
    },
}

/// The condition `wait` waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum WaitFor {
    /// Every job completed (fails at once when one fails or is cancelled).
    Completed,
    /// Every job started (claimed, running or completed).
    Running,
    /// Every job reached a final state, whatever it is.
    Finished,
}

#[derive(Debug, Args)]
pub struct WaitArgs {
    /// Job IDs or unique prefixes.
    #[arg(required = true, value_name = "JOB")]
    pub jobs: Vec<String>,
    /// The condition to wait for.
    #[arg(long = "for", value_enum, default_value_t = WaitFor::Completed)]
    pub wait_for: WaitFor,
    /// Give up after this long (e.g. 30s, 10m, 2h; a bare number is seconds).
    #[arg(long, default_value = "10m", value_parser = parse_duration)]
    pub timeout: std::time::Duration,
}

#[derive(Debug, Args)]
pub struct LogsArgs {
    /// Job ID or unique prefix.
    #[arg(value_name = "JOB")]
    pub job: String,
    /// Keep printing new output, without gaps, until the job finishes (through its
    /// retries); with --attempt or --previous, until that attempt ends.
    #[arg(short = 'f', long = "follow")]
    pub follow: bool,
    /// The log of this attempt (1 is the first) instead of the current or latest one.
    #[arg(long, value_name = "N", conflicts_with = "previous")]
    pub attempt: Option<u32>,
    /// The log of the attempt before the current or latest one (after a retry: the one
    /// that failed).
    #[arg(short = 'p', long)]
    pub previous: bool,
    /// Only the last N lines (then, with -f, what follows).
    #[arg(long, value_name = "N")]
    pub tail: Option<usize>,
}

#[derive(Debug, Args)]
pub struct CancelArgs {
    /// Job IDs or unique prefixes.
    #[arg(required = true, value_name = "JOB")]
    pub jobs: Vec<String>,
}

#[derive(Debug, Args)]
pub struct DeleteArgs {
    #[command(subcommand)]
    pub resource: DeleteResource,
}

#[derive(Debug, Subcommand)]
pub enum DeleteResource {
    /// Forget workers by name.
    #[command(
        visible_aliases = ["workers", "node", "nodes"],
        after_help = "Examples:\n  cis490ctl delete worker old-box"
    )]
    Worker {
        /// Worker names.
        #[arg(required = true, value_name = "NAME")]
        names: Vec<String>,
    },
}

#[derive(Debug, Args)]
pub struct ConfigArgs {
    #[command(subcommand)]
    pub action: ConfigAction,
}

#[derive(Debug, Subcommand)]
pub enum ConfigAction {
    /// List the contexts; `*` marks the current one.
    #[command(
        after_help = "Examples:\n  cis490ctl config get-contexts\n  cis490ctl config get-contexts -o name"
    )]
    GetContexts {
        /// Output format.
        #[arg(short = 'o', long = "output", value_enum, default_value_t = OutputFormat::Table)]
        output: OutputFormat,
    },
    /// Print the current context's name.
    #[command(after_help = "Examples:\n  cis490ctl config current-context")]
    CurrentContext,
    /// Make NAME the current context (rewrites only the file's current_context line).
    #[command(after_help = "Examples:\n  cis490ctl config use-context lab")]
    UseContext {
        /// A context of the config file.
        name: String,
    },
}

#[derive(Debug, Args)]
pub struct HoldArgs {
    /// Job IDs or unique prefixes.
    #[arg(required = true, value_name = "JOB")]
    pub jobs: Vec<String>,
}

#[derive(Debug, Args)]
pub struct RequeueArgs {
    /// Job IDs or unique prefixes.
    #[arg(value_name = "JOB", required_unless_present = "status")]
    pub jobs: Vec<String>,
    /// Requeue every job in this status (failed, cancelled or completed).
    #[arg(long, conflicts_with = "jobs")]
    pub status: Option<cis490_api::JobStatus>,
}

#[derive(Debug, Args)]
pub struct ReloadArgs {
    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, default_value_t = DataFormat::Text)]
    pub output: DataFormat,
}

#[derive(Debug, Args)]
pub struct ApplyArgs {
    /// The manifest to write on the server; without it, `apply` reloads the server's own.
    #[arg(short = 'f', long = "filename", value_name = "FILE")]
    pub file: Option<PathBuf>,
    /// Only show what applying FILE would change (the same as `diff -f FILE`).
    #[arg(long, requires = "file")]
    pub dry_run: bool,
    /// Do not ask before writing (cis490ctl asks only when stdin is a terminal).
    #[arg(short = 'y', long, requires = "file")]
    pub yes: bool,
    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, default_value_t = DataFormat::Text)]
    pub output: DataFormat,
}

#[derive(Debug, Args)]
pub struct DiffArgs {
    /// The manifest to compare with what the queue holds.
    #[arg(short = 'f', long = "filename", value_name = "FILE")]
    pub file: PathBuf,
    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, default_value_t = DataFormat::Text)]
    pub output: DataFormat,
}

#[derive(Debug, Args)]
pub struct NodeArgs {
    /// Worker name.
    #[arg(value_name = "NODE")]
    pub name: String,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, default_value_t = DataFormat::Text)]
    pub output: DataFormat,
}

#[derive(Debug, Args)]
pub struct PullArgs {
    /// Artifact ID or job ID (or a unique prefix of either).
    #[arg(value_name = "ARTIFACT-OR-JOB")]
    pub id: String,
    /// Where to write the bundle (default here: MODEL_MODE_JOB.tar.zst for a job,
    /// MODEL_MODE_ARTIFACT.tar.zst for an artifact, ARTIFACT.tar.zst when jobs of several
    /// models or modes produced its bytes).
    #[arg(short = 'o', long = "output", value_name = "FILE")]
    pub output: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct CompletionArgs {
    /// The shell to generate the script for.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

#[derive(Debug, Args)]
pub struct VersionArgs {
    /// Only the client's version; do not ask the server.
    #[arg(long)]
    pub client: bool,
    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, default_value_t = DataFormat::Text)]
    pub output: DataFormat,
}

/// Parses `30s`, `10m`, `2h`, `1d` or a bare number of seconds.
pub fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{text:?} is not a duration like 30s, 10m or 2h"))?;
    let secs = match unit {
        "" | "s" => n,
        "m" => n.saturating_mul(60),
        "h" => n.saturating_mul(3600),
        "d" => n.saturating_mul(86_400),
        _ => return Err(format!("{text:?} is not a duration like 30s, 10m or 2h")),
    };
    Ok(std::time::Duration::from_secs(secs))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;
    use std::time::Duration;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn every_verb_has_an_example() {
        fn check(cmd: &clap::Command, path: &str) {
            for sub in cmd.get_subcommands() {
                let name = format!("{path} {}", sub.get_name());
                if sub.get_name() == "help" {
                    continue;
                }
                let help = sub
                    .get_after_help()
                    .map(|h| h.to_string())
                    .unwrap_or_default();
                assert!(
                    help.contains("Examples:") && help.contains("cis490ctl"),
                    "{name} has no example in its --help"
                );
                check(sub, &name);
            }
        }
        check(&Cli::command(), "cis490ctl");
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_duration("45"), Ok(Duration::from_secs(45)));
        assert!(parse_duration("10x").is_err());
        assert!(parse_duration("m").is_err());
    }

    #[test]
    fn get_one_job_and_describe_output_parse() {
        let cli = Cli::try_parse_from(["cis490ctl", "get", "job", "3fa9", "-o", "json"]).unwrap();
        let Command::Get(GetArgs {
            resource: GetResource::Jobs(args),
        }) = cli.command
        else {
            panic!("not get jobs");
        };
        assert_eq!(args.id.as_deref(), Some("3fa9"));
        assert_eq!(args.output, OutputFormat::Json);
        // One job takes no listing filters.
        assert!(
            Cli::try_parse_from(["cis490ctl", "get", "job", "3fa9", "--status", "held"]).is_err()
        );
        for words in [
            &["cis490ctl", "describe", "job", "3fa9", "-o", "yaml"][..],
            &["cis490ctl", "describe", "worker", "gpu-box", "-o", "json"],
        ] {
            Cli::try_parse_from(words).unwrap();
        }
    }

    #[test]
    fn aliases_parse() {
        for words in [
            &["cis490ctl", "get", "job"][..],
            &["cis490ctl", "get", "j", "-o", "json"],
            &["cis490ctl", "get", "nodes", "-o", "wide"],
            &["cis490ctl", "apply"],
            &["cis490ctl", "apply", "-f", "m.toml", "--dry-run"],
            &["cis490ctl", "apply", "-f", "m.toml", "-y", "-o", "json"],
            &["cis490ctl", "requeue", "--status", "failed"],
        ] {
            Cli::try_parse_from(words).unwrap();
        }
        assert!(Cli::try_parse_from(["cis490ctl", "requeue"]).is_err());
        assert!(Cli::try_parse_from(["cis490ctl", "apply", "--dry-run"]).is_err());
        assert!(Cli::try_parse_from(["cis490ctl", "get", "jobs", "--status", "done"]).is_err());
    }
}
