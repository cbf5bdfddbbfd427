//! The client config file, kubeconfig style: named contexts (server, operator token file,
//! CA, client certificate and key) and the current one. Flags and environment variables
//! still win over the context.
//!
//! ```toml
//! current_context = "lab"
//!
//! [contexts.lab]
//! server = "https://pi.lab:8787"
//! operator_token_file = "lab.token"   # relative paths: from this file's directory
//! ca_file = "ca.pem"
//!
//! [contexts.dev]
//! server = "http://127.0.0.1:8787"
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};

/// Environment variable naming the config file.
pub const CONFIG_ENV: &str = "CIS490_CONFIG";

/// The whole file.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ClientConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_context: Option<String>,
    #[serde(default)]
    pub contexts: BTreeMap<String, ContextConfig>,
}

/// One context: where a fleet is and how to talk to it.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ContextConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server: Option<String>,
    /// A file holding the operator token (used when CIS490_OPERATOR_TOKEN is unset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operator_token_file: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_file: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
}

/// Where the config file is: `--config`, else `CIS490_CONFIG`, else
/// `$XDG_CONFIG_HOME/cis490/config.toml`, else `~/.config/cis490/config.toml`. The bool is
/// true when it was named explicitly (then it must exist).
pub fn config_path(flag: Option<&Path>) -> Option<(PathBuf, bool)> {
    if let Some(p) = flag {
        return Some((p.to_path_buf(), true));
    }
    if let Some(p) = std::env::var_os(CONFIG_ENV).filter(|p| !p.is_empty()) {
        return Some((PathBuf::from(p), true));
    }
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .or_else(|| home().map(|h| h.join(".config")))?;
    Some((base.join("cis490").join("config.toml"), false))
}

fn home() -> Option<PathBuf> {
    std::env::var_os("HOME")
        .or_else(|| std::env::var_os("USERPROFILE"))
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
}

/// Reads the config file; a default file that does not exist is an empty config.
pub fn load(path: &Path, explicit: bool) -> anyhow::Result<ClientConfig> {
    if !explicit && !path.exists() {
        return Ok(ClientConfig::default());
    }
    Ok(cis490_api::config_file::load_toml(path)?)
}

impl ClientConfig {
    /// The current context, with its paths made absolute against `base` (the config file's
    /// directory) and `~/` expanded. None when no context is current; an error when the
    /// current one does not exist.
    pub fn current(&self, base: &Path) -> anyhow::Result<Option<(String, ContextConfig)>> {
        let Some(name) = &self.current_context else {
            return Ok(None);
        };
        let ctx = self.contexts.get(name).with_context(|| {
            format!(
                "current_context {name:?} is not one of the contexts ({})",
                self.names()
            )
        })?;
        let fix = |p: &Option<PathBuf>| p.as_deref().map(|p| resolve_path(base, p));
        Ok(Some((
            name.clone(),
            ContextConfig {
                server: ctx.server.clone(),
                operator_token_file: fix(&ctx.operator_token_file),
                ca_file: fix(&ctx.ca_file),
                cert_file: fix(&ctx.cert_file),
                key_file: fix(&ctx.key_file),
            },
        )))
    }

    fn names(&self) -> String {
        if self.contexts.is_empty() {
            "none defined".to_string()
        } else {
            self.contexts.keys().cloned().collect::<Vec<_>>().join(", ")
        }
    }
}

/// `~/x` from the home directory, a relative path from `base`, an absolute one as it is.
fn resolve_path(base: &Path, p: &Path) -> PathBuf {
    if let Ok(rest) = p.strip_prefix("~") {
        if let Some(h) = home() {
            return h.join(rest);
        }
    }
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    }
}

/// The text of `text` with `current_context` set to `name`: the top-level line is
/// replaced (or one is added first), so comments and layout stay as they were.
pub fn with_current_context(text: &str, name: &str) -> String {
    let line = format!("current_context = {}", toml_string(name));
    let mut out = Vec::new();
    let mut replaced = false;
    let mut in_table = false;
    for l in text.lines() {
        let trimmed = l.trim_start();
        if trimmed.starts_with('[') {
            in_table = true;
        }
        let is_key = trimmed
            .strip_prefix("current_context")
            .is_some_and(|rest| rest.trim_start().starts_with('='));
        if !in_table && !replaced && is_key {
            out.push(line.clone());
            replaced = true;
        } else {
            out.push(l.to_string());
        }
    }
    if !replaced {
        out.insert(0, line);
    }
    let mut text = out.join("\n");
    text.push('\n');
    text
}

/// A TOML basic string.
fn toml_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "# my fleets\ncurrent_context = \"dev\"\n\n[contexts.dev]\nserver = \"http://127.0.0.1:8787\"\n\n[contexts.lab]\nserver = \"https://pi.lab:8787\"\noperator_token_file = \"lab.token\"\nca_file = \"/etc/cis490/ca.pem\"\n";

    #[test]
    fn the_current_context_resolves_relative_paths_from_the_file() {
        let config: ClientConfig = toml::from_str(TEXT).unwrap();
        let (name, dev) = config
            .current(Path::new("/home/me/.config/cis490"))
            .unwrap()
            .unwrap();
        assert_eq!(name, "dev");
        assert_eq!(dev.server.as_deref(), Some("http://127.0.0.1:8787"));
        let lab_text = with_current_context(TEXT, "lab");
        let config: ClientConfig = toml::from_str(&lab_text).unwrap();
        let (_, lab) = config.current(Path::new("/cfg")).unwrap().unwrap();
        assert_eq!(
            lab.operator_token_file,
            Some(PathBuf::from("/cfg/lab.token"))
        );
        assert_eq!(lab.ca_file, Some(PathBuf::from("/etc/cis490/ca.pem")));
        assert!(
            lab_text.starts_with("# my fleets\n"),
            "comments stay: {lab_text}"
        );
    }

    #[test]
    fn use_context_adds_the_key_when_absent_and_never_touches_tables() {
        let text = "[contexts.a]\nserver = \"x\"\ncurrent_context = \"not me\"\n";
        let new = with_current_context(text, "a");
        assert!(new.starts_with("current_context = \"a\"\n"), "{new}");
        assert!(new.contains("current_context = \"not me\""), "{new}");
        assert_eq!(
            with_current_context("", "q\"x"),
            "current_context = \"q\\\"x\"\n"
        );
    }

    #[test]
    fn an_unknown_current_context_is_named() {
        let config: ClientConfig =
            toml::from_str("current_context = \"gone\"\n[contexts.a]\n").unwrap();
        let err = config.current(Path::new("/")).unwrap_err().to_string();
        assert!(err.contains("\"gone\"") && err.contains("a"), "{err}");
    }
}
