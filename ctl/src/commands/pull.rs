//! `pull ARTIFACT-or-JOB [-o FILE]`: download a bundle with a progress bar, verifying its
//! sha256 (the artifact ID) while writing; a mismatch leaves no file behind.
//!
//! An artifact ID (or prefix) names bytes: several jobs that produced the same bytes share
//! one ID, and pulling it downloads those bytes (no ambiguity). A job ID (or prefix) names
//! that job's own artifact, the one its completed attempt reported, and the file is named
//! after the job.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use cis490_api::{ArtifactId, ArtifactView, Client, ClientError, IdPrefix, JobView};
use futures_util::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use reqwest::StatusCode;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use super::Ctx;
use crate::cli::PullArgs;
use crate::errors::describe_client_error;
use crate::output::{human_bytes, print};
use crate::resolve::{parse_prefix, resolve, ResolveError};

/// What `pull` downloads, what the file is called by default, and how it is reported.
#[derive(Debug, Clone, PartialEq)]
struct Target {
    artifact_id: ArtifactId,
    /// From the listing; the download's Content-Length wins.
    size_bytes: u64,
    default_name: PathBuf,
    /// "artifact/3fa9c1d2e4f5 (gbt/realistic)" or "job/aa12... artifact/3fa9... (gbt/oracle)".
    label: String,
}

/// The stored byte sequences whose ID starts with `prefix`, with the rows of the jobs
/// that uploaded each.
fn artifacts_matching<'a>(
    prefix: &IdPrefix,
    listing: &'a [ArtifactView],
) -> BTreeMap<&'a ArtifactId, Vec<&'a ArtifactView>> {
    let mut out: BTreeMap<&ArtifactId, Vec<&ArtifactView>> = BTreeMap::new();
    for row in listing {
        if row.artifact_id.as_str().starts_with(prefix.as_str()) {
            out.entry(&row.artifact_id).or_default().push(row);
        }
    }
    out
}

/// "gbt/realistic" when every row agrees, else "3 jobs: gbt/realistic, mlp/oracle".
fn describe_rows(rows: &[&ArtifactView]) -> String {
    let mut pairs: Vec<String> = rows
        .iter()
        .map(|a| format!("{}/{}", a.model, a.mode))
        .collect();
    pairs.sort();
    pairs.dedup();
    if pairs.len() == 1 {
        return pairs.remove(0);
    }
    format!("{} jobs: {}", rows.len(), pairs.join(", "))
}

/// The bytes `id` names: the file is named after their (model, mode) when every job that
/// uploaded them agrees on it, else after the artifact ID alone.
fn artifact_target(id: &ArtifactId, rows: &[&ArtifactView]) -> Target {
    let first = rows.first();
    let same_pair =
        first.is_some_and(|f| rows.iter().all(|a| a.model == f.model && a.mode == f.mode));
    let default_name = match first.filter(|_| same_pair) {
        Some(f) => file_name(Some((&f.model, &f.mode)), id.short()),
        None => file_name(None, id.short()),
    };
    Target {
        artifact_id: id.clone(),
        size_bytes: first.map_or(0, |f| f.size_bytes),
        default_name,
        label: format!("artifact/{} ({})", id.short(), describe_rows(rows)),
    }
}

/// Job `job`'s own artifact (what its completed attempt reported), named after the job.
fn job_target(job: &JobView, listing: &[ArtifactView]) -> anyhow::Result<Target> {
    let Some(artifact_id) = job.artifact_id.clone() else {
        bail!(
            "job {} has no artifact (status {})",
            job.id.short(),
            job.status
        );
    };
    let size_bytes = listing
        .iter()
        .find(|a| a.artifact_id == artifact_id)
        .map_or(0, |a| a.size_bytes);
    Ok(Target {
        default_name: file_name(Some((&job.model, &job.mode)), job.id.short()),
        label: format!(
            "job/{} artifact/{} ({}/{})",
            job.id.short(),
            artifact_id.short(),
            job.model,
            job.mode
        ),
        artifact_id,
        size_bytes,
    })
}

/// What the operator means by `typed`: the bytes of an artifact ID prefix, or the artifact
/// of a job ID prefix. A prefix that matches both (or several byte sequences) is refused
/// with the candidates.
async fn find(client: &Client, typed: &str) -> anyhow::Result<Target> {
    let prefix = parse_prefix(typed)?;
    let listing = client.artifacts().await.context("listing artifacts")?;
    let artifacts = artifacts_matching(&prefix, &listing);
    let job = match client.job(&prefix).await {
        Ok(job) => Some(job),
        Err(ClientError::Api { status, .. }) if status == StatusCode::NOT_FOUND => None,
        Err(e @ ClientError::Api { status, .. }) if status == StatusCode::CONFLICT => {
            if artifacts.is_empty() {
                return Err(e.into());
            }
            bail!(
                "ID prefix {prefix} is ambiguous: it matches {} artifact(s) and several jobs ({}); \
                 type more digits",
                artifacts.len(),
                describe_client_error(&e)
            )
        }
        Err(e) => {
            return Err(e).with_context(|| format!("looking for a job with ID prefix {prefix}"))
        }
    };
    decide(&prefix, &artifacts, job.as_ref(), &listing)
}

fn decide(
    prefix: &IdPrefix,
    artifacts: &BTreeMap<&ArtifactId, Vec<&ArtifactView>>,
    job: Option<&JobView>,
    listing: &[ArtifactView],
) -> anyhow::Result<Target> {
    match (artifacts.len(), job) {
        (0, Some(job)) => job_target(job, listing),
        (1, None) => {
            let (id, rows) = artifacts.iter().next().context("one artifact matched")?;
            Ok(artifact_target(id, rows))
        }
        (0, None) => bail!("no artifact or job matches ID prefix {prefix}"),
        (_, job) => {
            let mut candidates: Vec<(String, String)> = artifacts
                .iter()
                .map(|(id, rows)| {
                    (
                        id.as_str().to_string(),
                        format!("artifact, {}", describe_rows(rows)),
                    )
                })
                .collect();
            if let Some(job) = job {
                candidates.push((
                    job.id.as_str().to_string(),
                    format!("job, {}/{}", job.model, job.mode),
                ));
            }
            let err = resolve(
                "artifact or job",
                prefix,
                &candidates,
                |c| c.0.as_str(),
                |c| c.1.clone(),
            )
            .err()
            .unwrap_or(ResolveError::NotFound {
                kind: "artifact or job",
                prefix: prefix.to_string(),
            });
            Err(err.into())
        }
    }
}

/// `MODEL_MODE_ID.tar.zst` with every character outside `[A-Za-z0-9._-]` made `_`, or
/// `ID.tar.zst` without a (model, mode).
fn file_name(pair: Option<(&str, &str)>, short_id: &str) -> PathBuf {
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
    match pair {
        Some((model, mode)) => {
            PathBuf::from(format!("{}_{}_{short_id}.tar.zst", safe(model), safe(mode)))
        }
        None => PathBuf::from(format!("{short_id}.tar.zst")),
    }
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
    let target = find(&client, &args.id).await?;
    let dest = args
        .output
        .clone()
        .unwrap_or_else(|| target.default_name.clone());
    let partial = partial_path(&dest);
    // Ctrl-C must not leave a partial file behind either.
    let result = tokio::select! {
        r = download(&client, &target.artifact_id, target.size_bytes, &partial) => r,
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
        "{} -> {} ({}, sha256 verified)\n",
        target.label,
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
    use crate::output::samples::{id, job, now};
    use cis490_api::{JobId, JobStatus};

    fn row(artifact: char, job: char, model: &str, mode: &str) -> ArtifactView {
        ArtifactView {
            artifact_id: ArtifactId::parse(&id(artifact)).unwrap(),
            job_id: JobId::parse(&id(job)).unwrap(),
            attempt: Some(1),
            model: model.into(),
            mode: mode.into(),
            worker: "w".into(),
            size_bytes: 7,
            received_at: now(),
        }
    }

    fn prefix(text: &str) -> IdPrefix {
        parse_prefix(text).unwrap()
    }

    #[test]
    fn file_names_are_path_safe() {
        assert_eq!(
            file_name(Some(("gbt/../x", "realistic")), "eeeeeeeeeeee"),
            PathBuf::from("gbt_.._x_realistic_eeeeeeeeeeee.tar.zst")
        );
        assert_eq!(
            file_name(None, "eeeeeeeeeeee"),
            PathBuf::from("eeeeeeeeeeee.tar.zst")
        );
        assert_eq!(
            partial_path(Path::new("/tmp/out.tar.zst")),
            PathBuf::from(format!("/tmp/out.tar.zst.partial-{}", std::process::id()))
        );
    }

    #[test]
    fn bytes_several_jobs_uploaded_are_one_artifact_not_an_ambiguity() {
        let listing = vec![
            row('e', 'a', "gbt", "realistic"),
            row('e', 'b', "mlp", "oracle"),
        ];
        let p = prefix(&id('e'));
        let found = decide(&p, &artifacts_matching(&p, &listing), None, &listing).unwrap();
        assert_eq!(found.artifact_id.as_str(), id('e'));
        // The jobs disagree on (model, mode): named after the bytes alone.
        assert_eq!(found.default_name, PathBuf::from("eeeeeeeeeeee.tar.zst"));
        assert!(
            found.label.contains("2 jobs: gbt/realistic, mlp/oracle"),
            "{}",
            found.label
        );
        // Jobs that agree: their (model, mode) in the name, as before.
        let same = vec![
            row('e', 'a', "gbt", "oracle"),
            row('e', 'b', "gbt", "oracle"),
        ];
        let found = decide(&p, &artifacts_matching(&p, &same), None, &same).unwrap();
        assert_eq!(
            found.default_name,
            PathBuf::from("gbt_oracle_eeeeeeeeeeee.tar.zst")
        );
    }

    #[test]
    fn a_job_prefix_gives_that_jobs_own_artifact_named_after_the_job() {
        // Job b's artifact is e; job a uploaded e too (and is listed first).
        let listing = vec![
            row('e', 'a', "gbt", "realistic"),
            row('e', 'b', "mlp", "oracle"),
        ];
        let mut b = job('b', JobStatus::Completed);
        b.model = "mlp".into();
        b.mode = "oracle".into();
        b.artifact_id = Some(ArtifactId::parse(&id('e')).unwrap());
        let p = prefix("bbbb");
        let found = decide(&p, &artifacts_matching(&p, &listing), Some(&b), &listing).unwrap();
        assert_eq!(found.artifact_id.as_str(), id('e'));
        assert_eq!(
            found.default_name,
            PathBuf::from("mlp_oracle_bbbbbbbbbbbb.tar.zst")
        );
        assert!(
            found
                .label
                .starts_with("job/bbbbbbbbbbbb artifact/eeeeeeeeeeee"),
            "{}",
            found.label
        );
        b.artifact_id = None;
        b.status = JobStatus::Running;
        let err = decide(&p, &artifacts_matching(&p, &listing), Some(&b), &listing).unwrap_err();
        assert!(
            err.to_string().contains("has no artifact (status running)"),
            "{err}"
        );
    }

    #[test]
    fn a_prefix_of_two_kinds_or_two_artifacts_lists_the_candidates() {
        let listing = vec![row('a', 'c', "gbt", "realistic"), row('d', 'c', "gbt", "x")];
        let mut a_job = job('a', JobStatus::Completed);
        a_job.artifact_id = Some(ArtifactId::parse(&id('d')).unwrap());
        let p = prefix("aa");
        let err = decide(
            &p,
            &artifacts_matching(&p, &listing),
            Some(&a_job),
            &listing,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("ambiguous"), "{err}");
        assert!(
            err.contains("artifact, gbt/realistic") && err.contains("job, gbt/realistic"),
            "{err}"
        );
        let none = prefix("0");
        let err = decide(&none, &artifacts_matching(&none, &listing), None, &listing).unwrap_err();
        assert!(
            err.to_string().contains("no artifact or job matches"),
            "{err}"
        );
    }
}
