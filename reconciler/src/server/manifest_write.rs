//! Operator route `PUT /v1/manifest` (`cis490ctl apply -f`): validate a manifest, write it
//! over the server's manifest file atomically, and reconcile it.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use cis490_api::{ApiError, PlanSummary};

use super::error::ApiFailure;
use super::extract::{ApiQuery, ApiText};
use super::operator::DiffQuery;
use super::reconcile::Trigger;
use super::AppState;

/// Two applies never interleave their write and their reconcile: the plan answered is the
/// one of the text that request wrote.
static APPLY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Replace the manifest with the text in the body, then reconcile it.
///
/// The text is validated first: an invalid manifest is refused (422, every error with its
/// line and column) and the file is left as it was. A valid one is written atomically (a
/// temporary file in the manifest's directory, fsync, rename over the manifest, fsync of
/// the directory), so the server needs write access to that directory. Refused with 403
/// `manifest_writes_disabled` when the server's `allow_manifest_writes` is false.
#[utoipa::path(put, path = "/v1/manifest", params(DiffQuery),
    request_body(content = String, content_type = "text/plain", description = "A whole manifest (TOML)"),
    responses(
        (status = 200, description = "The manifest was written and applied: the plan", body = PlanSummary),
        (status = 400, description = "A `file` name of more than 255 characters or with control characters", body = ApiError),
        (status = 403, description = "`manifest_writes_disabled`: the server does not allow manifest writes", body = ApiError),
        (status = 422, description = "`invalid_manifest`: every error with its line and column; nothing written", body = ApiError),
        (status = 500, description = "`manifest_write_failed`: the file could not be written; nothing changed", body = ApiError),
    ))]
pub async fn put_manifest(
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<DiffQuery>,
    ApiText(text): ApiText,
) -> Result<Json<PlanSummary>, ApiFailure> {
    if !state.config.allow_manifest_writes {
        return Err(ApiFailure::new(
            StatusCode::FORBIDDEN,
            "manifest_writes_disabled",
            "this server does not allow manifest writes (allow_manifest_writes = false); \
             edit the manifest where it is managed, then `cis490ctl reload`",
        ));
    }
    let name = query.file.unwrap_or_else(|| "manifest".into());
    if name.chars().count() > 255 || name.chars().any(char::is_control) {
        return Err(ApiFailure::bad_request(
            "`file` must be at most 255 characters, with no control characters",
        ));
    }
    let _turn = APPLY.lock().await;
    let reconciler = state.reconciler.clone();
    let path = reconciler.manifest_path().to_path_buf();
    tokio::task::spawn_blocking(move || -> Result<(), ApiFailure> {
        reconciler.diff_blocking(&text, &name)?;
        write_atomically(&path, text.as_bytes()).map_err(|e| {
            ApiFailure::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "manifest_write_failed",
                format!(
                    "could not write the manifest {}: {e}; nothing changed (the server needs \
                     write access to the manifest's directory)",
                    path.display()
                ),
            )
        })
    })
    .await??;
    let summary = state.reconciler.reconcile(Trigger::ApplyRoute).await?;
    tracing::info!(
        generation = summary.generation,
        "manifest replaced by operator"
    );
    Ok(Json(summary))
}

/// Writes `bytes` over `path` so that a reader (or a crash) sees the old file or the new
/// one, never part of either: a temporary file in the same directory, synced, renamed over
/// `path`, then the directory synced so the rename itself is durable. The new file keeps
/// the old one's permissions.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "manifest".into());
    let tmp = dir.join(format!(".{file_name}.apply-{}.tmp", std::process::id()));
    let written = (|| {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(bytes)?;
        if let Ok(old) = std::fs::metadata(path) {
            file.set_permissions(old.permissions())?;
        }
        file.sync_all()?;
        drop(file);
        std::fs::rename(&tmp, path)?;
        sync_dir(&dir)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

#[cfg(unix)]
fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// Windows cannot open a directory to sync it; its rename is durable once it returns.
#[cfg(not(unix))]
fn sync_dir(_dir: &Path) -> std::io::Result<()> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_the_file_keeps_its_mode_and_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("training_manifest.toml");
        std::fs::write(&path, "old").unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        }
        write_atomically(&path, b"new text").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "new text");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o640);
        }
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["training_manifest.toml"]);
    }

    #[test]
    fn a_directory_that_cannot_be_written_fails_and_keeps_the_old_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing").join("manifest.toml");
        assert!(write_atomically(&path, b"x").is_err());
        assert!(!path.exists());
    }
}
