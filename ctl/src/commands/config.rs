//! `config get-contexts|current-context|use-context`, and how every other verb finds its
//! server, TLS files and operator token: flags and environment first, then the context.

use std::path::{Path, PathBuf};

use anyhow::Context;
use cis490_api::ClientTls;

use crate::cli::{Cli, ConfigAction, OutputFormat, DEFAULT_SERVER};
use crate::client_config::{config_path, load, with_current_context, ClientConfig, ContextConfig};
use crate::output::{or_none, print, to_json, to_yaml, Cell, Column, Table, Terminal};

/// Where a verb connects, as the flags, the environment and the config file say.
#[derive(Debug, Clone, PartialEq)]
pub struct Connection {
    pub server: String,
    pub tls: ClientTls,
    /// The context's operator token file (used when CIS490_OPERATOR_TOKEN is unset).
    pub operator_token_file: Option<PathBuf>,
}

/// The config file's path, whether it was named, and its directory (for relative paths).
fn located(cli: &Cli) -> Option<(PathBuf, bool, PathBuf)> {
    let (path, explicit) = config_path(cli.config.as_deref())?;
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf);
    Some((path, explicit, dir))
}

/// The context in effect: `--context`, else the file's current_context.
fn chosen(cli: &Cli) -> anyhow::Result<Option<(String, ContextConfig)>> {
    let Some((path, explicit, dir)) = located(cli) else {
        return Ok(None);
    };
    let mut config = load(&path, explicit || cli.context.is_some())?;
    if let Some(name) = &cli.context {
        config.current_context = Some(name.clone());
    }
    config
        .current(&dir)
        .with_context(|| format!("in {}", path.display()))
}

pub fn connection(cli: &Cli) -> anyhow::Result<Connection> {
    let ctx = chosen(cli)?.map(|(_, c)| c).unwrap_or_default();
    Ok(Connection {
        server: cli
            .server
            .clone()
            .or(ctx.server)
            .unwrap_or_else(|| DEFAULT_SERVER.to_string()),
        tls: ClientTls {
            ca_file: cli.ca_file.clone().or(ctx.ca_file),
            cert_file: cli.cert_file.clone().or(ctx.cert_file),
            key_file: cli.key_file.clone().or(ctx.key_file),
        },
        operator_token_file: ctx.operator_token_file,
    })
}

pub fn run(cli: &Cli, action: &ConfigAction, term: Terminal) -> anyhow::Result<()> {
    let (path, explicit, _) = located(cli).context(
        "no config file: set HOME (for ~/.config/cis490/config.toml), --config or CIS490_CONFIG",
    )?;
    match action {
        ConfigAction::CurrentContext => {
            let config = load(&path, explicit)?;
            match config.current_context {
                Some(name) => print(&format!("{name}\n")),
                None => anyhow::bail!("no current context is set in {}", path.display()),
            }
        }
        ConfigAction::GetContexts { output } => {
            let config = load(&path, explicit)?;
            print(&contexts_text(&config, *output, term)?)
        }
        ConfigAction::UseContext { name } => {
            let text = cis490_api::config_file::read_text(&path)?;
            let config: ClientConfig = toml::from_str(&text)
                .with_context(|| format!("invalid config file {}", path.display()))?;
            if !config.contexts.contains_key(name) {
                anyhow::bail!(
                    "no context {name:?} in {} (it has: {})",
                    path.display(),
                    config
                        .contexts
                        .keys()
                        .cloned()
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            }
            let new = with_current_context(&text, name);
            // Checked before it replaces the file: the edit never leaves a broken config.
            let check: ClientConfig = toml::from_str(&new).context("rewriting the config")?;
            if check.current_context.as_deref() != Some(name.as_str()) {
                anyhow::bail!("could not set current_context in {}", path.display());
            }
            write_replacing(&path, &new)?;
            print(&format!("Switched to context \"{name}\".\n"))
        }
    }
}

/// Writes beside the file and renames over it, so a crash keeps the old file.
fn write_replacing(path: &Path, text: &str) -> anyhow::Result<()> {
    let tmp = path.with_extension("toml.tmp");
    std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
    if let Ok(old) = std::fs::metadata(path) {
        let _ = std::fs::set_permissions(&tmp, old.permissions());
    }
    std::fs::rename(&tmp, path).with_context(|| format!("replacing {}", path.display()))
}

/// CURRENT, NAME, SERVER, CA (like `kubectl config get-contexts`).
fn contexts_text(
    config: &ClientConfig,
    format: OutputFormat,
    term: Terminal,
) -> anyhow::Result<String> {
    Ok(match format {
        OutputFormat::Json => to_json(config)?,
        OutputFormat::Yaml => to_yaml(config)?,
        OutputFormat::Name => config
            .contexts
            .keys()
            .map(|n| format!("context/{n}\n"))
            .collect(),
        OutputFormat::Table | OutputFormat::Wide => {
            let mut table = Table::new(vec![
                Column::fixed("CURRENT"),
                Column::flex("NAME"),
                Column::flex("SERVER"),
                Column::flex("CA"),
            ]);
            for (name, ctx) in &config.contexts {
                let current = config.current_context.as_deref() == Some(name.as_str());
                table.push(vec![
                    Cell::from(if current { "*" } else { "" }),
                    Cell::from(name.as_str()),
                    Cell::from(or_none(ctx.server.as_ref())),
                    Cell::from(or_none(ctx.ca_file.as_ref().map(|p| p.display()))),
                ]);
            }
            table.render(term)
        }
    })
}
