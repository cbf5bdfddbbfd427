//! Every error the API answers, mapped to a status and a JSON `{"error", "message"}` body in
//! this one place (after axum's `examples/error-handling`).

use std::time::Duration;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use cis490_api::ApiError;

use crate::queue::QueueError;
use crate::store::StoreError;

use super::reconcile::ReconcileError;

/// An error answer: status, stable code, human message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiFailure {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// Sent as `Retry-After` (whole seconds, at least 1): when a cap may have room again.
    pub retry_after: Option<Duration>,
}

impl ApiFailure {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    /// 503 `busy`: a cap on work in flight is reached (uploads); try again after
    /// `retry_after`.
    pub fn busy(message: impl Into<String>, retry_after: Duration) -> Self {
        Self {
            retry_after: Some(retry_after),
            ..Self::new(StatusCode::SERVICE_UNAVAILABLE, "busy", message)
        }
    }

    /// 429 `too_many_long_polls`: a long-poll budget is spent; poll again after
    /// `retry_after`.
    pub fn too_many_long_polls(message: impl Into<String>, retry_after: Duration) -> Self {
        Self {
            retry_after: Some(retry_after),
            ..Self::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_long_polls",
                message,
            )
        }
    }

    /// 400 `bad_request`.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    /// 401 `unauthorized`: no credentials were sent.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    /// 403 `forbidden`: wrong credentials, or the route is disabled by configuration.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    /// 404 `not_found`.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    /// 413 `payload_too_large`.
    pub fn too_large(message: impl Into<String>) -> Self {
        Self::new(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", message)
    }

    /// 500 `internal`. The detail is logged; the answer names only what failed.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
    }
}

impl IntoResponse for ApiFailure {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::error!(code = self.code, message = %self.message, "request failed");
        } else {
            tracing::debug!(status = %self.status, code = self.code, message = %self.message, "request refused");
        }
        let body = ApiError {
            error: self.code.to_string(),
            message: self.message,
        };
        let mut response = (self.status, Json(body)).into_response();
        if let Some(after) = self.retry_after {
            let seconds = after.as_secs_f64().ceil().max(1.0) as u64;
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

impl From<QueueError> for ApiFailure {
    /// By the error's API code, so a new queue variant maps through its `code()`.
    fn from(err: QueueError) -> Self {
        let code = err.code();
        let status = match code {
            "not_found" => StatusCode::NOT_FOUND,
            "ambiguous_id"
            | "lease_lost"
            | "invalid_state"
            | "conflict"
            | "name_in_use"
            | "artifact_not_uploaded"
            | "artifact_required" => StatusCode::CONFLICT,
            "bad_request" => StatusCode::BAD_REQUEST,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiFailure::new(status, code, err.to_string())
    }
}

impl From<StoreError> for ApiFailure {
    fn from(err: StoreError) -> Self {
        let message = err.to_string();
        match err {
            StoreError::TooLarge { .. } => ApiFailure::too_large(message),
            StoreError::ShaMismatch { .. } => {
                ApiFailure::new(StatusCode::UNPROCESSABLE_ENTITY, "sha_mismatch", message)
            }
            StoreError::BodyRead(_) => ApiFailure::bad_request(message),
            StoreError::NotFound(_) | StoreError::NotHeld(_) => ApiFailure::not_found(message),
            StoreError::Index(queue) => queue.into(),
            // The detail names the server's files: it goes to the log, not to the client.
            StoreError::Io { .. } => {
                tracing::error!(error = %message, "artifact store failed");
                ApiFailure::internal(
                    "the artifact store failed to read or write a file; the server's log has \
                     the detail",
                )
            }
        }
    }
}

impl From<ReconcileError> for ApiFailure {
    fn from(err: ReconcileError) -> Self {
        match err {
            ReconcileError::Invalid(errors) => ApiFailure::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_manifest",
                format!("the manifest is invalid; nothing changed:\n{errors}"),
            ),
            ReconcileError::Queue(q) => q.into(),
            ReconcileError::Join(message) => ApiFailure::internal(message),
        }
    }
}

/// A blocking task that panicked or was cancelled.
impl From<tokio::task::JoinError> for ApiFailure {
    fn from(err: tokio::task::JoinError) -> Self {
        ApiFailure::internal(format!("a background task failed: {err}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_errors_map_to_the_contract_statuses() {
        let cases = [
            (
                QueueError::NotFound {
                    what: "job",
                    key: "abc".into(),
                },
                StatusCode::NOT_FOUND,
                "not_found",
            ),
            (
                QueueError::Ambiguous {
                    prefix: "ab".into(),
                    candidates: vec!["ab1".into(), "ab2".into()],
                },
                StatusCode::CONFLICT,
                "ambiguous_id",
            ),
            (
                QueueError::LeaseLost {
                    id: "abc".into(),
                    reason: "expired".into(),
                },
                StatusCode::CONFLICT,
                "lease_lost",
            ),
            (
                QueueError::InvalidState {
                    message: "cannot requeue".into(),
                },
                StatusCode::CONFLICT,
                "invalid_state",
            ),
            (
                QueueError::NameInUse {
                    worker: "gpu-1".into(),
                    message: "another agent holds worker name gpu-1".into(),
                },
                StatusCode::CONFLICT,
                "name_in_use",
            ),
            (
                QueueError::ArtifactNotUploaded {
                    message: "not uploaded".into(),
                },
                StatusCode::CONFLICT,
                "artifact_not_uploaded",
            ),
            (
                QueueError::ArtifactRequired {
                    message: "complete with it".into(),
                },
                StatusCode::CONFLICT,
                "artifact_required",
            ),
            (
                QueueError::Corrupt("x".into()),
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
            ),
        ];
        for (err, status, code) in cases {
            let failure = ApiFailure::from(err);
            assert_eq!((failure.status, failure.code), (status, code));
        }
    }

    #[test]
    fn answers_at_a_cap_carry_retry_after_in_whole_seconds() {
        let response = ApiFailure::busy("full", Duration::from_millis(2500)).into_response();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()[header::RETRY_AFTER], "3");
        let response =
            ApiFailure::too_many_long_polls("full", Duration::from_millis(10)).into_response();
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(response.headers()[header::RETRY_AFTER], "1");
        let response = ApiFailure::not_found("x").into_response();
        assert!(response.headers().get(header::RETRY_AFTER).is_none());
    }

    #[test]
    fn store_io_errors_answer_without_the_server_path() {
        let f = ApiFailure::from(StoreError::Io {
            context: "creating /srv/cis490/state/models/blobs/ab".into(),
            source: std::io::Error::other("disk full"),
        });
        assert_eq!(
            (f.status, f.code),
            (StatusCode::INTERNAL_SERVER_ERROR, "internal")
        );
        assert!(!f.message.contains("/srv"), "{}", f.message);
        assert!(f.message.contains("artifact store"), "{}", f.message);
    }

    #[test]
    fn store_errors_map_to_413_and_422() {
        let f = ApiFailure::from(StoreError::TooLarge { limit: 1 });
        assert_eq!(f.status, StatusCode::PAYLOAD_TOO_LARGE);
        let f = ApiFailure::from(StoreError::ShaMismatch {
            expected: "a".into(),
            actual: "b".into(),
        });
        assert_eq!(
            (f.status, f.code),
            (StatusCode::UNPROCESSABLE_ENTITY, "sha_mismatch")
        );
    }
}
