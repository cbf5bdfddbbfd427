//! The web dashboard under `/ui/`, served by the reconciler itself on the API's port, with
//! its TLS and its read protection: overview, jobs, job detail, workers, results and
//! manifest pages, rendered on the server from maud templates (checked at compile time),
//! charts as server-made SVG, and one small script (`live.js`) that keeps a page live
//! over server-sent events. Every page reads through the same handlers as the JSON routes
//! (`read`, `logs`, `results`), and every operator action calls the operator route's own
//! handler, so the dashboard holds no query of its own but the list of model names.
//!
//! The pages are not in the OpenAPI document: they answer HTML, for people.

pub mod actions;
pub mod job;
pub mod jobs;
pub mod layout;
pub mod live;
pub mod manifest;
pub mod overview;
pub mod results;
pub mod session;
pub mod signin;
pub mod svg;
pub mod workers;

#[cfg(test)]
mod tests;

use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::response::{Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use maud::Markup;

use super::error::ApiFailure;
use super::identity::ClientCertName;
use super::AppState;
use layout::{Nav, Page};
use session::Session;

/// The dashboard's routes. They are HTML for browsers, not API routes, so they are
/// registered with plain `.route` and left out of the OpenAPI document on purpose.
#[allow(clippy::disallowed_methods)]
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/", get(to_overview))
        .route("/ui", get(to_overview))
        .route("/ui/", get(overview::page))
        .route("/ui/jobs", get(jobs::page))
        .route("/ui/job/{id}", get(job::page))
        .route("/ui/job/{id}/artifact", get(job::artifact))
        .route("/ui/job/{id}/{action}", post(actions::job_action))
        .route("/ui/workers", get(workers::page))
        .route("/ui/worker/{name}/{action}", post(actions::worker_action))
        .route("/ui/results", get(results::page))
        .route("/ui/manifest", get(manifest::page))
        .route("/ui/live", get(live_stream))
        .route("/ui/signin", get(signin::form).post(signin::sign_in))
        .route("/ui/signout", post(signin::sign_out))
        .route("/ui/static/dashboard.css", get(css))
        .route("/ui/static/live.js", get(js))
}

async fn to_overview() -> Redirect {
    Redirect::to("/ui/")
}

async fn css() -> Response {
    layout::asset("text/css; charset=utf-8", layout::CSS)
}

async fn js() -> Response {
    layout::asset("text/javascript; charset=utf-8", layout::JS)
}

/// The live stream reads like a page: only for whoever may read.
async fn live_stream(State(state): State<AppState>, _viewer: Viewer) -> Response {
    live::live(State(state)).await
}

/// A browser allowed to read, with its session; a request that may not read is answered
/// the sign-in page (401 or 403) instead.
pub struct Viewer {
    pub session: Session,
    pub csrf: Option<String>,
    state: AppState,
}

impl FromRequestParts<AppState> for Viewer {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Response> {
        let session = Session::of(&parts.headers, state);
        let client_cert = parts.extensions.get::<ClientCertName>().cloned();
        match session.check_read(client_cert.as_ref(), state).await {
            Ok(()) => Ok(Viewer {
                csrf: session.csrf(state),
                session,
                state: state.clone(),
            }),
            Err(failure) => Err(signin::refused(state, &session, &failure, parts.uri.path())),
        }
    }
}

impl Viewer {
    /// A page of this viewer's that follows the stream's ticks too (see [`live::TICK`]).
    pub fn following_page(&self, title: impl Into<String>, main: Markup) -> Response {
        let page = Page {
            title: title.into(),
            nav: Nav::Jobs,
            session: &self.session,
            csrf: self.csrf.clone(),
            controls: None,
            main,
            live: true,
            follow: true,
        };
        layout::respond(StatusCode::OK, page.render())
    }

    /// A page of this viewer's.
    pub fn page(
        &self,
        title: impl Into<String>,
        nav: Nav,
        controls: Option<Markup>,
        main: Markup,
    ) -> Response {
        let page = Page {
            title: title.into(),
            nav,
            session: &self.session,
            csrf: self.csrf.clone(),
            controls,
            main,
            live: true,
            follow: false,
        };
        layout::respond(StatusCode::OK, page.render())
    }

    /// The error page of a failed read.
    pub fn fail(&self, failure: &ApiFailure) -> Response {
        layout::error_page(failure, &self.session, &self.state)
    }

    /// Answers the page `render` makes, or the error page of its failure.
    pub fn answer(&self, made: Result<Response, ApiFailure>) -> Response {
        made.unwrap_or_else(|f| self.fail(&f))
    }
}

/// A form or query field as given: an empty field is no field.
pub fn given(field: &Option<String>) -> Option<String> {
    field
        .as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}
