//! `pull ARTIFACT-or-JOB [-o FILE]`: download a bundle with a progress bar, verifying its
//! sha256 (the artifact ID) while writing; a mismatch leaves no file behind.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use cis490_api::{ArtifactId, ArtifactView, Client};
use futures_util::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use super::Ctx;
use crate::cli::PullArgs;
use crate::output::{human_bytes, print};
use crate::resolve::{parse_prefix, resolve, ResolveError};

/// The artifact an operator means: an artifact ID prefix first, else a job's artifact.
async fn find(client: &Client, typed: &str) -> anyhow::Result<ArtifactView> {
    let prefix = parse_prefix(typed)?;
    let artifacts = client.artifacts().await.context("listing artifacts")?;
    match resolve(
        "artifact",
        &prefix,
        &artifacts,
        |a| a.artifact_id.as_str(),
        |a| format!("{}/{}", a.model, a.mode),
    ) {
        Ok(found) => return Ok(found.clone()),
        Err(ResolveError::NotFound { .. }) => {}
        Err(other) => return Err(other.into()),
    }
    let job = client
        .job(&prefix)
        .await
        .with_context(|| format!("no artifact matches {typed}; looking for a job"))?;
    let Some(artifact_id) = job.artifact_id else {
        bail!(
            "job {} has no artifact (status {})",
            job.id.short(),
            job.status
        );
    };
    artifacts
        .into_iter()
        .find(|a| a.artifact_id == artifact_id)
        .with_context(|| {
            format!(
                "job {} names artifact {} but the server does not list it",
                job.id.short(),
                artifact_id.short()
            )
        })
}

/// Where the bundle goes when `-o` is not given.
pub fn default_file_name(a: &ArtifactView) -> PathBuf {
    let safe = |s: &str| -> String {
        s.chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                    c
                } else {
                    '_'
                }
            })
            .collect()
    };
    PathBuf::from(format!(
        "{}_{}_{}.tar.zst",
        safe(&a.model),
        safe(&a.mode),
        a.artifact_id.short()
    ))
}

fn partial_path(dest: &Path) -> PathBuf {
    let mut name = dest
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(format!(".partial-{}", std::process::id()));
    dest.with_file_name(name)
}

pub async fn run(ctx: &Ctx, args: &PullArgs) -> anyhow::Result<()> {
    let client = ctx.client()?;
    let artifact = find(&client, &args.id).await?;
    let dest = args
        .output
        .clone()
        .unwrap_or_else(|| default_file_name(&artifact));
    let partial = partial_path(&dest);
    // Ctrl-C must not leave a partial file behind either.
    let result = tokio::select! {
        r = download(&client, &artifact.artifact_id, artifact.size_bytes, &partial) => r,
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted; nothing was written")),
    };
    let size = match result {
        Ok(size) => size,
        Err(e) => {
            let _ = tokio::fs::remove_file(&partial).await;
            return Err(e);
        }
    };
    tokio::fs::rename(&partial, &dest)
        .await
        .with_context(|| format!("moving the download to {}", dest.display()))?;
    print(&format!(
        "artifact/{} ({}/{}) -> {} ({}, sha256 verified)\n",
        artifact.artifact_id.short(),
        artifact.model,
        artifact.mode,
        dest.display(),
        human_bytes(size)
    ))
}

/// Streams the bundle into `path`, hashing as it goes; fails when the hash is not the ID.
async fn download(
    client: &Client,
    id: &ArtifactId,
    expected_size: u64,
    path: &Path,
) -> anyhow::Result<u64> {
    let resp = client
        .download(id)
        .await
        .with_context(|| format!("downloading artifact {}", id.short()))?;
    let total = resp.content_length().unwrap_or(expected_size);
    let bar = ProgressBar::new(total);
    if let Ok(style) = ProgressStyle::with_template(
        "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(id.short().to_string());
    let mut file = tokio::fs::File::create(path)
        .await
        .with_context(|| format!("creating {}", path.display()))?;
    let mut hasher = Sha256::new();
    let mut written: u64 = 0;
    let mut stream = resp.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.with_context(|| format!("downloading artifact {}", id.short()))?;
        hasher.update(&chunk);
        file.write_all(&chunk)
            .await
            .with_context(|| format!("writing {}", path.display()))?;
        written += chunk.len() as u64;
        bar.set_position(written);
    }
    file.sync_all()
        .await
        .with_context(|| format!("flushing {}", path.display()))?;
    bar.finish_and_clear();
    let got = hex::encode(hasher.finalize());
    if got != id.as_str() {
        bail!(
            "downloaded bytes do not match artifact {}: their sha256 is {got}; nothing was written",
            id.as_str()
        );
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::samples::{id, now};
    use cis490_api::JobId;

    #[test]
    fn default_name_is_model_mode_short_id_and_path_safe() {
        let a = ArtifactView {
            artifact_id: ArtifactId::parse(&id('e')).unwrap(),
            job_id: JobId::parse(&id('a')).unwrap(),
            model: "gbt/../x".into(),
            mode: "realistic".into(),
            worker: "w".into(),
            size_bytes: 1,
            received_at: now(),
        };
        assert_eq!(
            default_file_name(&a),
            PathBuf::from("gbt_.._x_realistic_eeeeeeeeeeee.tar.zst")
        );
        assert_eq!(
            partial_path(Path::new("/tmp/out.tar.zst")),
            PathBuf::from(format!("/tmp/out.tar.zst.partial-{}", std::process::id()))
        );
    }
}
