//! The manifest page: the file the server reconciles, with line numbers, each line an
//! error names marked, and the status `GET /v1/manifest` answers (generation, sha256, the
//! last reload's errors).

use axum::extract::State;
use axum::response::Response;
use cis490_api::ManifestStatus;
use maud::{html, Markup};

use super::super::{read, AppState};
use super::layout::{time, Nav};
use super::overview::file_name;
use super::Viewer;

/// The most of the file the page shows.
const MAX_SHOWN_BYTES: u64 = 2 * 1024 * 1024;

pub async fn page(State(state): State<AppState>, viewer: Viewer) -> Response {
    let made = async {
        let status = read::manifest(State(state.clone())).await?.0;
        let text = read_manifest(&state).await;
        Ok(viewer.page(
            "Manifest",
            Nav::Manifest,
            None,
            render(&status, text.as_deref()),
        ))
    };
    viewer.answer(made.await)
}

/// The file's text (at most [`MAX_SHOWN_BYTES`]), or None when it cannot be read.
async fn read_manifest(state: &AppState) -> Option<String> {
    use tokio::io::AsyncReadExt;
    let file = tokio::fs::File::open(&state.config.manifest).await.ok()?;
    let mut bytes = Vec::new();
    file.take(MAX_SHOWN_BYTES)
        .read_to_end(&mut bytes)
        .await
        .ok()?;
    Some(String::from_utf8_lossy(&bytes).into_owned())
}

pub fn render(status: &ManifestStatus, text: Option<&str>) -> Markup {
    let bad: Vec<u32> = status.last_errors.iter().filter_map(|e| e.line).collect();
    html! {
        h1 { "Manifest " span.mono { (file_name(&status.path)) } }
        dl.kv {
            dt { "Generation" } dd { (status.generation) }
            dt { "Last applied" } dd { @match &status.last_applied_at { Some(t) => (time(t)), None => "never" } }
            dt { "sha256 applied" } dd.mono { (status.sha256.as_deref().unwrap_or("<none>")) }
        }
        @if !status.last_errors.is_empty() {
            h2 { "Errors of the last reload" }
            p.muted { "Nothing changed: the last good state stays until the file is fixed." }
            ul #manifest-errors { @for e in &status.last_errors {
                li.error {
                    @if let Some(line) = e.line { a href={ "#L" (line) } { (file_name(&e.path)) ":" (line) @if let Some(c) = e.column { ":" (c) } } }
                    @else { (file_name(&e.path)) }
                    ": " (e.message)
                }
            } }
        }
        h2 { "The file" }
        @match text {
            Some(text) => {
                pre.manifest #manifest-text { @for (i, line) in text.lines().enumerate() {
                    @let n = i as u32 + 1;
                    span id={ "L" (n) } class=[bad.contains(&n).then_some("bad")] { (format!("{n:>4}  ")) (line) "\n" }
                } }
            }
            None => p.error { "The file cannot be read." },
        }
    }
}
