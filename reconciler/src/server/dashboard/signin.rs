//! Sign in (a token typed into a form becomes the session cookie) and sign out.
//!
//! The sign-in form needs no CSRF token of its own: it carries the secret itself, so a
//! forged one could only sign a browser in with a token its forger already holds.

use axum::extract::{Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Form;
use maud::html;
use serde::Deserialize;

use super::super::error::ApiFailure;
use super::super::AppState;
use super::layout::{respond, Nav, Page};
use super::session::{self, Session};

#[derive(Debug, Deserialize)]
pub struct NextQuery {
    #[serde(default)]
    next: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct SignInForm {
    #[serde(default)]
    token: String,
    #[serde(default)]
    next: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct SignOutForm {
    #[serde(default)]
    csrf: String,
}

/// Where to go after signing in: a dashboard path only (never another site).
fn after_sign_in(next: Option<&str>) -> &str {
    match next {
        Some(path) if path.starts_with("/ui/") && !path.contains("//") && !path.contains('\\') => {
            path
        }
        _ => "/ui/",
    }
}

fn render(
    state: &AppState,
    session: &Session,
    status: StatusCode,
    message: Option<&str>,
    next: &str,
) -> Response {
    let page = Page {
        title: "Sign in".into(),
        nav: Nav::SignIn,
        session,
        csrf: session.csrf(state),
        controls: None,
        main: html! {
            h1 { "Sign in" }
            @if let Some(message) = message {
                p.error #signin-error { (message) }
            }
            p.muted {
                "Paste the operator token (" code { "CIS490_OPERATOR_TOKEN" } ") to act on jobs \
                 and workers, or any worker token to read a server whose reads are protected. \
                 It is kept in a cookie this browser's scripts cannot read, until you sign out."
            }
            form method="post" action="/ui/signin" {
                input type="hidden" name="next" value=(next);
                label { "Token " input #token type="password" name="token" autocomplete="off" required; }
                " "
                button #signin type="submit" { "Sign in" }
            }
        },
        live: false,
        follow: false,
    };
    respond(status, page.render())
}

/// The page a request that may not read gets: the sign-in form with why.
pub fn refused(state: &AppState, session: &Session, failure: &ApiFailure, path: &str) -> Response {
    let status = if failure.status == StatusCode::UNAUTHORIZED {
        StatusCode::UNAUTHORIZED
    } else {
        StatusCode::FORBIDDEN
    };
    let message = if session.signed_in() {
        "The token this browser signed in with is not valid here: sign in again."
    } else {
        "This server's reads need a token: sign in."
    };
    render(
        state,
        session,
        status,
        Some(message),
        after_sign_in(Some(path)),
    )
}

pub async fn form(
    State(state): State<AppState>,
    headers: axum::http::HeaderMap,
    Query(q): Query<NextQuery>,
) -> Response {
    let session = Session::of(&headers, &state);
    render(
        &state,
        &session,
        StatusCode::OK,
        None,
        after_sign_in(q.next.as_deref()),
    )
}

pub async fn sign_in(
    State(state): State<AppState>,
    headers: axum::http::HeaderMap,
    Form(form): Form<SignInForm>,
) -> Response {
    let token = form.token.trim();
    let next = after_sign_in(form.next.as_deref()).to_string();
    if token.is_empty() || !session::token_is_valid(token, &state).await {
        let session = Session::of(&headers, &state);
        return render(
            &state,
            &session,
            StatusCode::FORBIDDEN,
            Some("That token is not valid on this server."),
            &next,
        );
    }
    (
        StatusCode::SEE_OTHER,
        [
            (
                header::SET_COOKIE,
                session::sign_in_cookie(token, state.posture.tls),
            ),
            (header::LOCATION, next),
        ],
    )
        .into_response()
}

pub async fn sign_out(
    State(state): State<AppState>,
    headers: axum::http::HeaderMap,
    form: Result<Form<SignOutForm>, axum::extract::rejection::FormRejection>,
) -> Response {
    let session = Session::of(&headers, &state);
    let csrf = form.map(|f| f.0.csrf).unwrap_or_default();
    if !session.csrf_matches(&csrf, &state) {
        return super::layout::error_page(
            &ApiFailure::forbidden("the form's CSRF token is missing or wrong"),
            &session,
            &state,
        );
    }
    (
        StatusCode::SEE_OTHER,
        [
            (
                header::SET_COOKIE,
                session::sign_out_cookie(state.posture.tls),
            ),
            (header::LOCATION, "/ui/".to_string()),
        ],
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::after_sign_in;

    #[test]
    fn sign_in_goes_back_to_dashboard_paths_only() {
        assert_eq!(
            after_sign_in(Some("/ui/jobs?status=failed")),
            "/ui/jobs?status=failed"
        );
        for bad in [
            "https://evil.example/",
            "//evil.example/ui/",
            "/ui//x",
            "/v1/jobs",
            "/ui\\x",
        ] {
            assert_eq!(after_sign_in(Some(bad)), "/ui/", "{bad}");
        }
        assert_eq!(after_sign_in(None), "/ui/");
    }
}
