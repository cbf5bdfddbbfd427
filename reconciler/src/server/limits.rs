//! Bounded work per request: caps on concurrent uploads and long-polls, and how a request
//! refused before its handler is answered without reading its body.
//!
//! Long-polls have two budgets, so that read-only (or unauthenticated) `GET
//! /v1/events?wait=` can never take what workers need: event waits and claim waits. A
//! long-poll that would wait beyond its budget is answered 429 `too_many_long_polls` at
//! once, with `Retry-After`; one that need not wait (events are there, a job is claimable)
//! is answered as always. Worker calls that do not wait (heartbeat, complete, fail, node
//! status) take no budget at all. An upload beyond `max_concurrent_uploads` is answered
//! 503 `busy` from its headers.

use std::sync::Arc;
use std::time::Duration;

use axum::body::HttpBody;
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::error::ApiFailure;
use super::listen::{ConnectionReads, Traffic};
use super::AppState;

/// How much of a refused request's body the server reads at most: enough for any small
/// client's request to be consumed (so it reads the answer instead of a reset connection),
/// never the gigabytes a hostile one announces.
pub const REFUSED_BODY_READ_BYTES: u64 = 64 * 1024;

/// How long reading those bytes may take at most.
const REFUSED_BODY_READ_TIME: Duration = Duration::from_secs(5);

/// Event-log reads (`GET /v1/events`) at the database at once.
pub const EVENT_READS_AT_ONCE: usize = 2;

/// The shortest `Retry-After` of an answer at a cap.
pub const RETRY_AFTER: Duration = Duration::from_secs(5);

/// `Retry-After` of one answer at a cap: [`RETRY_AFTER`] to twice that, at random, so that
/// clients refused together (a burst of polls) do not all come back in the same second.
pub fn retry_after() -> Duration {
    use rand::Rng;
    RETRY_AFTER + Duration::from_secs(rand::rng().random_range(0..=RETRY_AFTER.as_secs()))
}

/// Caps on work in flight. Defaults are sized for a Raspberry Pi.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestCaps {
    /// Uploads streaming at once (`max_concurrent_uploads`).
    pub uploads: usize,
    /// `GET /v1/events?wait=` waiting at once (`max_event_waits`).
    pub event_waits: usize,
    /// `POST /v1/job/claim?wait=` waiting at once (`max_claim_waits`).
    pub claim_waits: usize,
}

impl Default for RequestCaps {
    fn default() -> Self {
        Self {
            uploads: 4,
            event_waits: 64,
            claim_waits: 256,
        }
    }
}

/// The caps at work, and what the listener counts.
#[derive(Debug)]
pub struct Budgets {
    caps: RequestCaps,
    uploads: Arc<Semaphore>,
    event_waits: Arc<Semaphore>,
    claim_waits: Arc<Semaphore>,
    /// Turns at the database for event-log reads (see [`Budgets::event_read_turn`]).
    event_reads: Arc<Semaphore>,
    /// Bytes read and connections, from the accept loop (for `/metrics`).
    pub traffic: Arc<Traffic>,
}

impl Budgets {
    pub fn new(caps: RequestCaps) -> Self {
        Self {
            caps,
            uploads: Arc::new(Semaphore::new(caps.uploads)),
            event_waits: Arc::new(Semaphore::new(caps.event_waits)),
            claim_waits: Arc::new(Semaphore::new(caps.claim_waits)),
            event_reads: Arc::new(Semaphore::new(EVENT_READS_AT_ONCE)),
            traffic: Arc::new(Traffic::default()),
        }
    }

    /// Waits for one of [`EVENT_READS_AT_ONCE`] turns to read the event log. Reads share
    /// the queue's one connection (and the blocking pool) with the workers' calls: a crowd
    /// of followers catching up at once (each a page of up to 1,000 events) then queues
    /// here, cheaply, instead of in front of a worker's claim.
    pub async fn event_read_turn(&self) -> Option<OwnedSemaphorePermit> {
        Arc::clone(&self.event_reads).acquire_owned().await.ok()
    }

    /// A place for one waiting `GET /v1/events`, or the 429 that says there is none.
    pub fn event_wait(&self) -> Result<OwnedSemaphorePermit, ApiFailure> {
        Arc::clone(&self.event_waits)
            .try_acquire_owned()
            .map_err(|_| {
                ApiFailure::too_many_long_polls(
                    format!(
                        "{} event long-polls are waiting already (max_event_waits): poll again \
                         after Retry-After, or without ?wait=",
                        self.caps.event_waits
                    ),
                    retry_after(),
                )
            })
    }

    /// A place for one waiting claim, or the 429 that says there is none.
    pub fn claim_wait(&self) -> Result<OwnedSemaphorePermit, ApiFailure> {
        Arc::clone(&self.claim_waits)
            .try_acquire_owned()
            .map_err(|_| {
                ApiFailure::too_many_long_polls(
                    format!(
                        "{} claims are waiting already (max_claim_waits): claim again after \
                         Retry-After",
                        self.caps.claim_waits
                    ),
                    retry_after(),
                )
            })
    }

    /// In use now: (uploads, event waits, claim waits).
    pub fn in_use(&self) -> (usize, usize, usize) {
        let used = |cap: usize, s: &Semaphore| cap.saturating_sub(s.available_permits());
        (
            used(self.caps.uploads, &self.uploads),
            used(self.caps.event_waits, &self.event_waits),
            used(self.caps.claim_waits, &self.claim_waits),
        )
    }
}

/// Middleware of the worker routes (inside the worker auth) that acts on
/// `PUT /v1/model/{id}` only: holds one of the `max_concurrent_uploads` places for the
/// whole upload, its drain on a refusal included, or answers 503 `busy` from the headers.
pub async fn upload_slot(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let is_upload =
        req.method() == axum::http::Method::PUT && req.uri().path().starts_with("/v1/model/");
    if !is_upload {
        return next.run(req).await;
    }
    match Arc::clone(&state.budgets.uploads).try_acquire_owned() {
        Ok(place) => {
            let response = next.run(req).await;
            drop(place);
            response
        }
        Err(_) => {
            let failure = ApiFailure::busy(
                format!(
                    "{} uploads are streaming already (max_concurrent_uploads): upload again \
                     after Retry-After",
                    state.budgets.caps.uploads
                ),
                retry_after(),
            );
            refuse(req, failure).await
        }
    }
}

/// Answers `failure` to a request refused before its handler. A body is read only up to
/// [`REFUSED_BODY_READ_BYTES`] past the head (and for at most 5 s): a small body is
/// consumed and the connection stays open; a larger one is left unread, the answer says
/// `Connection: close` and the connection closes after it.
pub async fn refuse(req: Request, failure: ApiFailure) -> Response {
    if req.body().is_end_stream() {
        return failure.into_response();
    }
    let reads = req.extensions().get::<ConnectionReads>().cloned();
    if let Some(reads) = &reads {
        reads.cap_body(head_len(&req), REFUSED_BODY_READ_BYTES);
    }
    let body = req.into_body();
    let read_to_end = tokio::time::timeout(
        REFUSED_BODY_READ_TIME,
        read_refused_body(body, reads.as_ref()),
    )
    .await
    .unwrap_or(false);
    let mut response = failure.into_response();
    if read_to_end {
        if let Some(reads) = &reads {
            reads.uncap();
        }
    } else {
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

/// Reads and discards a refused body; true when it ended within the bound.
async fn read_refused_body(body: axum::body::Body, reads: Option<&ConnectionReads>) -> bool {
    let mut stream = body.into_data_stream();
    let mut read: u64 = 0;
    loop {
        let chunk = match reads {
            Some(reads) => tokio::select! {
                biased;
                chunk = stream.next() => chunk,
                () = reads.cap_reached() => return false,
            },
            None => stream.next().await,
        };
        match chunk {
            None => return true,
            Some(Ok(bytes)) => {
                read += bytes.len() as u64;
                if read > REFUSED_BODY_READ_BYTES {
                    return false;
                }
            }
            Some(Err(_)) => return false,
        }
    }
}

/// About how long the request's head was on the wire (`METHOD URI HTTP/1.1`, each header
/// as `name: value`, the blank line), so a refusal's bound counts only its body.
fn head_len(req: &Request) -> u64 {
    let uri = req.uri().path_and_query().map_or(1, |p| p.as_str().len());
    let request_line = req.method().as_str().len() + 1 + uri + " HTTP/1.1\r\n".len();
    let headers: usize = req
        .headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + 2 + value.len() + 2)
        .sum();
    (request_line + headers + 2) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cap_refuses_the_one_over_it_with_retry_after() {
        let budgets = Budgets::new(RequestCaps {
            uploads: 1,
            event_waits: 2,
            claim_waits: 1,
        });
        let first = budgets.event_wait().unwrap();
        let _second = budgets.event_wait().unwrap();
        let over = budgets.event_wait().unwrap_err();
        assert_eq!(over.status, axum::http::StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(over.code, "too_many_long_polls");
        let after = over.retry_after.unwrap();
        assert!(
            after >= RETRY_AFTER && after <= 2 * RETRY_AFTER,
            "{after:?}"
        );
        assert!(over.message.contains("max_event_waits"), "{}", over.message);
        // Event waits never take a claim's place.
        let claim = budgets.claim_wait().unwrap();
        assert_eq!(budgets.in_use(), (0, 2, 1));
        assert!(budgets.claim_wait().is_err());
        drop(first);
        drop(claim);
        assert!(budgets.event_wait().is_ok());
        assert!(budgets.claim_wait().is_ok());
    }

    #[test]
    fn no_long_polls_at_all_with_a_cap_of_zero() {
        let budgets = Budgets::new(RequestCaps {
            uploads: 1,
            event_waits: 0,
            claim_waits: 0,
        });
        assert!(budgets.event_wait().is_err());
        assert!(budgets.claim_wait().is_err());
    }

    #[test]
    fn the_head_length_counts_the_request_line_and_headers() {
        let req = Request::builder()
            .method("PUT")
            .uri("/v1/model/abc")
            .header("content-length", "10")
            .body(axum::body::Body::empty())
            .unwrap();
        let wire = "PUT /v1/model/abc HTTP/1.1\r\ncontent-length: 10\r\n\r\n";
        assert_eq!(head_len(&req), wire.len() as u64);
    }
}
