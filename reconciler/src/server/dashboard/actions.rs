//! Operator actions from the dashboard's forms: cancel, requeue, hold and release a job;
//! cordon, uncordon and drain a worker. Each POST must come from a browser signed in
//! with the operator token and carry that session's CSRF token, else it is 403 and
//! changes nothing; then it calls the operator route's own handler and goes back to the
//! page it came from.

use axum::extract::rejection::FormRejection;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use serde::Deserialize;

use super::super::error::ApiFailure;
use super::super::extract::ApiPath;
use super::super::{hold, operator, AppState};
use super::layout::error_page;
use super::session::Session;

#[derive(Debug, Deserialize)]
pub struct ActionForm {
    #[serde(default)]
    csrf: String,
}

fn csrf_of(form: Result<Form<ActionForm>, FormRejection>) -> String {
    form.map(|f| f.0.csrf).unwrap_or_default()
}

pub async fn job_action(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiPath((id, action)): ApiPath<(String, String)>,
    form: Result<Form<ActionForm>, FormRejection>,
) -> Response {
    let session = Session::of(&headers, &state);
    let done = async {
        session.check_operator_post(&csrf_of(form), &state)?;
        let (s, path) = (State(state.clone()), ApiPath(id));
        let answer = match action.as_str() {
            "cancel" => operator::cancel(s, path).await?,
            "requeue" => operator::requeue(s, path).await?,
            "hold" => hold::hold(s, path).await?,
            "release" => hold::release(s, path).await?,
            other => {
                return Err(ApiFailure::not_found(format!("no job action {other}")));
            }
        };
        Ok(Redirect::to(&format!("/ui/job/{}", answer.0.id)).into_response())
    };
    done.await
        .unwrap_or_else(|f| error_page(&f, &session, &state))
}

pub async fn worker_action(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiPath((name, action)): ApiPath<(String, String)>,
    form: Result<Form<ActionForm>, FormRejection>,
) -> Response {
    let session = Session::of(&headers, &state);
    let done = async {
        session.check_operator_post(&csrf_of(form), &state)?;
        let (s, path) = (State(state.clone()), ApiPath(name));
        let _worker = match action.as_str() {
            "cordon" => operator::cordon(s, path).await?,
            "uncordon" => operator::uncordon(s, path).await?,
            "drain" => operator::drain(s, path).await?,
            other => {
                return Err(ApiFailure::not_found(format!("no worker action {other}")));
            }
        };
        Ok(Redirect::to("/ui/workers").into_response())
    };
    done.await
        .unwrap_or_else(|f| error_page(&f, &session, &state))
}
