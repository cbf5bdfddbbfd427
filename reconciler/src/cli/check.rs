//! `cis490-reconciler check FILE [-o table|json]`: validate a manifest and print its
//! expanded jobs, like `nomad job validate`. Exit 0 when valid; 1 with every error on stderr
//! as `FILE:LINE:COL: message`, one per line.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use cis490_api::{Hyper, JobSpec};
use serde::Serialize;

use crate::manifest::{self, LoadedManifest};

/// Arguments of `check`.
#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    /// The manifest to validate.
    pub file: PathBuf,
    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
    /// Most jobs the manifest may make (the server's `max_manifest_jobs`).
    #[arg(long, value_name = "N", default_value_t = manifest::DEFAULT_MAX_MANIFEST_JOBS)]
    pub max_jobs: usize,
}

/// How `check` prints the expanded jobs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    /// Aligned columns with a header and a summary line.
    Table,
    /// A JSON list with one flat object per job.
    Json,
}

/// Validates the manifest and prints its jobs. Returns the process exit code.
pub fn run(args: CheckArgs) -> anyhow::Result<i32> {
    let loaded = match manifest::load_manifest(&args.file, args.max_jobs) {
        Ok(loaded) => loaded,
        Err(errors) => {
            let mut stderr = std::io::stderr().lock();
            for error in &errors.0 {
                writeln!(stderr, "{}", manifest::format_error(error))?;
            }
            return Ok(1);
        }
    };
    let mut stderr = std::io::stderr().lock();
    for warning in &loaded.warnings {
        writeln!(stderr, "warning: {warning}")?;
    }
    let text = render(&loaded, args.output)?;
    std::io::stdout()
        .lock()
        .write_all(text.as_bytes())
        .context("writing to stdout")?;
    Ok(0)
}

/// What `check` prints on stdout for a valid manifest.
pub(crate) fn render(loaded: &LoadedManifest, output: OutputFormat) -> anyhow::Result<String> {
    Ok(match output {
        OutputFormat::Table => render_table(loaded),
        OutputFormat::Json => {
            let jobs: Vec<CheckedJob> = loaded.manifest.jobs.iter().map(CheckedJob::from).collect();
            let mut json = serde_json::to_string_pretty(&jobs).context("rendering jobs as JSON")?;
            json.push('\n');
            json
        }
    })
}

/// One job of `check -o json`: identity and constraints flat, for `jq` and scripts.
#[derive(Debug, Serialize)]
struct CheckedJob<'a> {
    id: &'a str,
    short_id: &'a str,
    model: &'a str,
    mode: &'a str,
    hyper: &'a Hyper,
    split_recipe: Option<&'a str>,
    train_hosts: &'a [String],
    seed: i64,
    require_cuda: bool,
    prefer_cuda: bool,
    min_vram_gib: f64,
    min_ram_gib: f64,
    allowed_hosts: &'a [String],
    node_selector: &'a BTreeMap<String, String>,
    cores: u32,
    gpus: u32,
    timeout_s: Option<u64>,
    env: &'a BTreeMap<String, String>,
    priority: i32,
    max_attempts: u32,
    stale_after_s: u64,
    retries_on_failure: u32,
    command: &'a [String],
    labels: &'a BTreeMap<String, String>,
    manifest_order: u64,
}

impl<'a> From<&'a JobSpec> for CheckedJob<'a> {
    fn from(job: &'a JobSpec) -> Self {
        Self {
            id: job.id.as_str(),
            short_id: job.id.short(),
            model: &job.model,
            mode: &job.mode,
            hyper: &job.hyper,
            split_recipe: job.split_recipe.as_deref(),
            train_hosts: &job.train_hosts,
            seed: job.seed,
            require_cuda: job.constraints.require_cuda,
            prefer_cuda: job.constraints.prefer_cuda,
            min_vram_gib: job.constraints.min_vram_gib,
            min_ram_gib: job.constraints.min_ram_gib,
            allowed_hosts: &job.constraints.allowed_hosts,
            node_selector: &job.constraints.node_selector,
            cores: job.constraints.cores,
            gpus: job.constraints.gpus,
            timeout_s: job.timeout_s,
            env: &job.env,
            priority: job.priority,
            max_attempts: job.max_attempts,
            stale_after_s: job.stale_after_s,
            retries_on_failure: job.retry.retries_on_failure,
            command: &job.command,
            labels: &job.labels,
            manifest_order: job.manifest_order,
        }
    }
}

pub(crate) fn render_table(loaded: &LoadedManifest) -> String {
    let header = [
        "ID",
        "MODEL",
        "MODE",
        "SEED",
        "SPLIT",
        "HYPER",
        "CONSTRAINTS",
    ];
    let rows: Vec<[String; 7]> = loaded
        .manifest
        .jobs
        .iter()
        .map(|job| {
            [
                job.id.short().to_string(),
                job.model.clone(),
                job.mode.clone(),
                job.seed.to_string(),
                job.split_recipe.clone().unwrap_or_else(|| "-".into()),
                render_hyper(&job.hyper),
                render_constraints(job),
            ]
        })
        .collect();
    let mut widths = header.map(|h| h.chars().count());
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &[String]| {
        let mut text = String::new();
        for (i, (cell, width)) in cells.iter().zip(widths).enumerate() {
            text.push_str(cell);
            if i + 1 != cells.len() {
                // Padded by hand: a format width (`{cell:<width$}`) panics above 65,535,
                // and a manifest's string may be longer than that.
                let pad = width.saturating_sub(cell.chars().count());
                text.extend(std::iter::repeat_n(' ', pad + 2));
            }
        }
        out.push_str(text.trim_end());
        out.push('\n');
    };
    line(&header.map(String::from));
    for row in &rows {
        line(row);
    }
    let m = &loaded.manifest;
    out.push_str(&format!(
        "{} {}, {} {}, {} {}\n",
        m.jobs.len(),
        plural(m.jobs.len(), "job", "jobs"),
        m.hosts.len(),
        plural(m.hosts.len(), "host", "hosts"),
        m.models.len(),
        plural(m.models.len(), "model", "models"),
    ));
    out
}

fn plural<'a>(n: usize, one: &'a str, many: &'a str) -> &'a str {
    if n == 1 {
        one
    } else {
        many
    }
}

/// `key=value,...` with strings unquoted, as the trainer will see them.
fn render_hyper(hyper: &Hyper) -> String {
    if hyper.is_empty() {
        return "-".into();
    }
    hyper
        .iter()
        .map(|(k, v)| match v {
            serde_json::Value::String(s) => format!("{k}={s}"),
            other => format!("{k}={other}"),
        })
        .collect::<Vec<_>>()
        .join(",")
}

fn render_constraints(job: &JobSpec) -> String {
    let mut parts = job.constraints.terms();
    if !job.train_hosts.is_empty() {
        parts.push(format!("data={}", job.train_hosts.join("|")));
    }
    if job.priority != 0 {
        parts.push(format!("priority={}", job.priority));
    }
    if let Some(limit) = job.timeout_s {
        parts.push(format!("timeout={limit}s"));
    }
    if parts.is_empty() {
        "-".into()
    } else {
        parts.join(" ")
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    #[test]
    fn a_value_longer_than_a_format_width_renders() {
        let long = "x".repeat(70_000);
        let text = format!(
            "version = 1\n[defaults]\ncommand = [\"true\"]\n[[jobs]]\nmodel = \"gbt\"\nmode = \"m\"\n\
             hyper = {{ note = \"{long}\" }}\n[[jobs]]\nmodel = \"gbt\"\nmode = \"n\"\n"
        );
        let loaded = manifest::parse_manifest(&text, Path::new("m.toml")).unwrap();
        let table = render(&loaded, OutputFormat::Table).unwrap();
        let lines: Vec<&str> = table.lines().collect();
        assert!(lines[1].contains(&long));
        // The short row's HYPER cell is padded to the long one's width.
        let constraints_at = lines[1].chars().count() - 1;
        assert_eq!(
            lines[2].chars().count(),
            constraints_at + 1,
            "{:.80}",
            lines[2]
        );
        assert!(render(&loaded, OutputFormat::Json).unwrap().contains(&long));
    }
}
