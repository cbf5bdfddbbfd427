//! `version`: the client's version and, unless `--client`, the server's.

use anyhow::Context;
use serde::{Deserialize, Serialize};

use super::Ctx;
use crate::cli::{DataFormat, VersionArgs};
use crate::output::{print, to_json, to_yaml};

/// What `version -o json|yaml` prints.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Versions {
    pub client_version: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server: Option<String>,
}

pub async fn run(ctx: &Ctx, args: &VersionArgs) -> anyhow::Result<()> {
    let mut versions = Versions {
        client_version: cis490_api::VERSION.to_string(),
        server_version: None,
        server: None,
    };
    if args.output == DataFormat::Text {
        print(&format!("Client Version: {}\n", versions.client_version))?;
    }
    if !args.client {
        let health = ctx
            .client()?
            .health()
            .await
            .context("asking the server for its version")?;
        versions.server_version = Some(health.version);
        versions.server = Some(ctx.server.clone());
    }
    match args.output {
        DataFormat::Text => match &versions.server_version {
            Some(v) => print(&format!("Server Version: {v} ({})\n", ctx.server)),
            None => Ok(()),
        },
        DataFormat::Json => print(&to_json(&versions)?),
        DataFormat::Yaml => print(&to_yaml(&versions)?),
    }
}
