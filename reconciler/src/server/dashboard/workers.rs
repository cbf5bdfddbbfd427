//! The workers page: each worker's state (Ready or not, cordoned, draining), what it can
//! do, each GPU's VRAM allocated against its total, the jobs it runs, and for a signed-in
//! operator cordon, uncordon and drain.

use axum::extract::State;
use axum::response::Response;
use cis490_api::{Gpu, WorkerView};
use maud::{html, Markup};

use super::super::AppState;
use super::layout::{time, Nav};
use super::overview::all_workers;
use super::Viewer;

pub async fn page(State(state): State<AppState>, viewer: Viewer) -> Response {
    let made = async {
        let workers = all_workers(&state).await?;
        let csrf = viewer.csrf.as_deref().filter(|_| viewer.session.operator);
        Ok(viewer.page("Workers", Nav::Workers, None, render(&workers, csrf)))
    };
    viewer.answer(made.await)
}

fn gib(mib: u64) -> String {
    format!("{:.1}", mib as f64 / 1024.0)
}

/// A GPU's VRAM allocated to jobs against its total, as a bar.
fn vram(gpu: &Gpu) -> Markup {
    let share = if gpu.vram_total_mib > 0 {
        (gpu.vram_allocated_mib as f64 / gpu.vram_total_mib as f64).clamp(0.0, 1.0)
    } else {
        0.0
    };
    html! {
        div.gpu {
            "GPU " (gpu.index) " " (gpu.name) ": " (gib(gpu.vram_allocated_mib)) " of " (gib(gpu.vram_total_mib)) " GiB allocated"
            div.bar title={ (format!("{:.0}", share * 100.0)) "%" } {
                span style={ "width:" (format!("{:.1}", share * 100.0)) "%" } {}
            }
        }
    }
}

fn state_text(w: &WorkerView) -> String {
    let mut text = if w.ready { "Ready" } else { "NotReady" }.to_string();
    if w.draining {
        text.push_str(",Draining");
    } else if w.cordoned {
        text.push_str(",SchedulingDisabled");
    }
    text
}

pub fn render(workers: &[WorkerView], operator_csrf: Option<&str>) -> Markup {
    html! {
        h1 { "Workers" }
        @if workers.is_empty() {
            p.muted { "No worker has reported yet." }
        }
        table #workers {
            thead { tr { th { "Name" } th { "State" } th { "Capability" } th { "GPUs" } th { "Running" } th { "Last seen" } @if operator_csrf.is_some() { th { "Actions" } } } }
            tbody { @for w in workers {
                @let c = &w.capability;
                tr data-worker=(w.name) {
                    td { (w.name) @for (k, v) in &w.labels { br; span.muted { (k) "=" (v) } } }
                    td.state { (state_text(w))
                        @if let Some(problem) = &w.host_problem { br; span.error { "HostProblem: " (problem.reason) } } }
                    td { (c.os) "/" (c.arch) ", " (c.cores) " cores, " (gib(c.ram_total_mib)) " GiB RAM"
                        @if c.cuda { ", CUDA" @if let Some(v) = &c.cuda_version { " " (v) } } }
                    td { @for gpu in &c.gpus { (vram(gpu)) } @if c.gpus.is_empty() { span.muted { "none" } } }
                    td { @for id in &w.running_jobs { a.mono href={ "/ui/job/" (id) } { (id.short()) } " " } }
                    td { (time(&w.last_seen)) }
                    @if let Some(csrf) = operator_csrf {
                        td { @for verb in ["cordon", "uncordon", "drain"] {
                            form.inline method="post" action={ "/ui/worker/" (w.name) "/" (verb) } {
                                input type="hidden" name="csrf" value=(csrf);
                                button type="submit" { (verb) }
                            }
                        } }
                    }
                }
            } }
        }
    }
}
