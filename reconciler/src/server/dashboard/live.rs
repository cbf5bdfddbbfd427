//! `GET /ui/live`: server-sent events that tell an open page the queue changed (the same
//! commit counter `GET /v1/events?wait=` and `cis490ctl get -w` wait on), so its script
//! fetches the page again.
//!
//! Each stream holds one of the `max_event_waits` places of the read-only long-polls for
//! its whole life (429 with `Retry-After` when none is free, like a waiting event poll),
//! ends after [`STREAM_LIFETIME`] or at shutdown, and the browser connects again: a page
//! left open for a day holds one place and one connection at a time, never more.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::stream::{self, Stream};
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Instant;

use super::super::AppState;

/// How long one stream lives before the server ends it (and the browser reconnects).
pub const STREAM_LIFETIME: Duration = Duration::from_secs(300);

/// Changes closer together than this are told as one (a claim, its heartbeat and its
/// completion cost an open page one fetch).
const COALESCE: Duration = Duration::from_millis(500);

/// How often a stream says `tick`: a page that follows something the event log does not
/// record (a running job's log and progress arrive with heartbeats) fetches itself then.
pub const TICK: Duration = Duration::from_secs(2);

/// How long the browser waits before reconnecting after the stream ends.
const RECONNECT_MS: u64 = 2000;

/// What a stream carries between its events.
struct Live {
    changes: tokio::sync::watch::Receiver<u64>,
    shutdown: tokio::sync::watch::Receiver<bool>,
    deadline: Instant,
    next_tick: Instant,
    first: bool,
    /// Held until the stream is dropped: the place among the read long-polls.
    _place: OwnedSemaphorePermit,
}

pub async fn live(State(state): State<AppState>) -> Response {
    let place = match state.budgets.event_wait() {
        Ok(place) => place,
        Err(failure) => return failure.into_response(),
    };
    let mut changes = state.queue.subscribe();
    changes.borrow_and_update();
    let live = Live {
        changes,
        shutdown: state.shutdown.clone(),
        deadline: Instant::now() + STREAM_LIFETIME,
        next_tick: Instant::now() + TICK,
        first: true,
        _place: place,
    };
    Sse::new(events(live))
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}

fn events(live: Live) -> impl Stream<Item = Result<Event, Infallible>> {
    stream::unfold(live, |mut live| async move {
        if live.first {
            live.first = false;
            let hello = Event::default()
                .event("hello")
                .retry(Duration::from_millis(RECONNECT_MS))
                .data("live");
            return Some((Ok(hello), live));
        }
        if *live.shutdown.borrow() {
            return None;
        }
        tokio::select! {
            changed = live.changes.changed() => {
                changed.ok()?;
                let batch = (Instant::now() + COALESCE).min(live.deadline);
                tokio::time::sleep_until(batch).await;
                let seq = *live.changes.borrow_and_update();
                Some((Ok(Event::default().event("change").data(seq.to_string())), live))
            }
            _ = tokio::time::sleep_until(live.next_tick) => {
                live.next_tick = Instant::now() + TICK;
                Some((Ok(Event::default().event("tick").data("tick")), live))
            }
            _ = tokio::time::sleep_until(live.deadline) => None,
            _ = live.shutdown.changed() => None,
        }
    })
}
