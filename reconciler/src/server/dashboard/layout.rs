//! The frame every dashboard page shares (navigation, sign-in state, the live region), the
//! stylesheet and the script that keeps a page live, and an error page.
//!
//! maud escapes every value spliced into a template, so a model name, a hyper value or a
//! log line holding `<script>` is shown as text; `PreEscaped` is used only for the
//! server's own SVG markup (whose text is escaped where it is made, in `svg.rs`).

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use maud::{html, Markup, DOCTYPE};

use super::super::error::ApiFailure;
use super::super::AppState;
use super::session::Session;

/// The stylesheet, served at `/ui/static/dashboard.css`.
pub const CSS: &str = include_str!("dashboard.css");

/// The live-update script, served at `/ui/static/live.js`. Pages work without it.
pub const JS: &str = include_str!("live.js");

/// Which navigation entry a page is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Nav {
    Overview,
    Jobs,
    Workers,
    Results,
    Manifest,
    SignIn,
}

const NAV: [(Nav, &str, &str); 5] = [
    (Nav::Overview, "/ui/", "Overview"),
    (Nav::Jobs, "/ui/jobs", "Jobs"),
    (Nav::Workers, "/ui/workers", "Workers"),
    (Nav::Results, "/ui/results", "Results"),
    (Nav::Manifest, "/ui/manifest", "Manifest"),
];

/// A whole page: `controls` (forms a live update must not reset) above the live region
/// `main`, which the script replaces with the server's newer rendering on each change.
pub struct Page<'a> {
    pub title: String,
    pub nav: Nav,
    pub session: &'a Session,
    pub csrf: Option<String>,
    pub controls: Option<Markup>,
    pub main: Markup,
    /// Whether the script refreshes `main` on changes of the queue.
    pub live: bool,
    /// Whether it also refreshes on the stream's ticks (a running job's log and progress).
    pub follow: bool,
}

impl Page<'_> {
    pub fn render(self) -> Markup {
        html! {
            (DOCTYPE)
            html lang="en" {
                head {
                    meta charset="utf-8";
                    meta name="viewport" content="width=device-width, initial-scale=1";
                    title { (self.title) " · cis490" }
                    link rel="stylesheet" href="/ui/static/dashboard.css";
                    script src="/ui/static/live.js" defer {}
                }
                body {
                    header {
                        a.brand href="/ui/" { "cis490 fleet" }
                        nav {
                            @for (nav, href, label) in NAV {
                                a href=(href) class=[(nav == self.nav).then_some("here")] { (label) }
                            }
                        }
                        div.who {
                            @if self.session.operator {
                                span.badge.operator { "operator" }
                            } @else if self.session.signed_in() {
                                span.badge { "reader" }
                            }
                            @if let Some(csrf) = &self.csrf {
                                form.inline method="post" action="/ui/signout" {
                                    input type="hidden" name="csrf" value=(csrf);
                                    button type="submit" { "Sign out" }
                                }
                            } @else {
                                a href="/ui/signin" { "Sign in" }
                            }
                        }
                    }
                    @if let Some(controls) = self.controls {
                        section.controls { (controls) }
                    }
                    main #main data-live=[self.live.then_some("1")] data-follow=[self.follow.then_some("1")] { (self.main) }
                    footer { "cis490 " (cis490_api::VERSION) span #live-state {} }
                }
            }
        }
    }
}

/// An HTML answer: the page with `status`, never cached (it shows live state), and a
/// content security policy that runs only the server's own script and style.
pub fn respond(status: StatusCode, markup: Markup) -> Response {
    (
        status,
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                 object-src 'none'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
            ),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "same-origin"),
        ],
        markup.into_string(),
    )
        .into_response()
}

/// The page of an API failure: its status, code and message.
pub fn error_page(failure: &ApiFailure, session: &Session, state: &AppState) -> Response {
    let page = Page {
        title: format!("{} {}", failure.status.as_u16(), failure.code),
        nav: Nav::Overview,
        session,
        csrf: session.csrf(state),
        controls: None,
        main: html! {
            h1 { (failure.status.as_u16()) " " (failure.status.canonical_reason().unwrap_or("")) }
            p.error { code { (failure.code) } ": " (failure.message) }
            p { a href="/ui/" { "Back to the overview" } }
        },
        live: false,
        follow: false,
    };
    respond(failure.status, page.render())
}

/// A job status as a coloured label.
pub fn status_badge(status: &str) -> Markup {
    html! { span class={ "status " (status) } { (status) } }
}

/// A time as the tables show it: UTC, to the second.
pub fn time(t: &chrono::DateTime<chrono::Utc>) -> Markup {
    html! { time datetime=(t.to_rfc3339()) { (t.format("%Y-%m-%d %H:%M:%S")) } }
}

/// A static asset with a day of caching (a new version is a new binary).
pub fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "public, max-age=86400"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        body,
    )
        .into_response()
}
