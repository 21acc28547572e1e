//! `GET /v1/sessions/{id}/events`: the session log as JSON pages, or as a
//! live SSE stream (`Accept: text/event-stream`) with `id:` = seq that
//! resumes from `Last-Event-ID` and delivers every later event exactly once.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;

use agentrt_engine::Engine;
use agentrt_types::{Event, SessionId};
use axum::extract::State;
use axum::http::{header, HeaderMap};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::stream::{self, Stream};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::auth::TenantSession;
use crate::extract::QueryArgs;
use crate::{ApiError, AppState};

const DEFAULT_LIMIT: usize = 100;
const MAX_LIMIT: usize = 1000;
/// Events read from the store at a time while a stream catches up.
const CATCH_UP_PAGE: usize = 500;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventsQuery {
    after: Option<u64>,
    limit: Option<usize>,
}

pub async fn events(
    State(s): State<AppState>,
    TenantSession(id, _): TenantSession,
    QueryArgs(q): QueryArgs<EventsQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let wants_sse = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).is_some_and(|a| a.contains("text/event-stream"));
    let limit = q.limit.unwrap_or(DEFAULT_LIMIT);
    if limit == 0 || limit > MAX_LIMIT {
        return Err(ApiError::bad_request("invalid_query", format!("limit must be between 1 and {MAX_LIMIT}")));
    }
    if !wants_sse {
        let events = s.engine.read_events(&id, q.after.unwrap_or(0), limit).await?;
        let next_after = events.last().map(|e| e.seq()).or(q.after);
        return Ok(Json(json!({"events": events, "next_after": next_after})).into_response());
    }
    let last_event_id = match headers.get("last-event-id") {
        None => None,
        Some(v) => Some(
            v.to_str()
                .ok()
                .and_then(|t| t.trim().parse::<u64>().ok())
                .ok_or_else(|| ApiError::bad_request("invalid_header", "Last-Event-ID must be an event seq (a number)"))?,
        ),
    };
    let after = last_event_id.or(q.after).unwrap_or(0);
    // Subscribe before the first read so nothing appended in between is missed.
    let rx = s.engine.subscribe(&id);
    s.engine.get_session(&id).await?;
    s.engine.metrics().sse_clients.inc();
    let stream = EventStream { engine: s.engine.clone(), id, last: after, backlog: VecDeque::new(), rx, shutdown: s.shutdown.clone() };
    let sse = Sse::new(stream.into_stream()).keep_alive(KeepAlive::new().interval(s.heartbeat).text("heartbeat"));
    Ok(sse.into_response())
}

struct EventStream {
    engine: Engine,
    id: SessionId,
    /// Seq of the last event sent.
    last: u64,
    backlog: VecDeque<Event>,
    rx: broadcast::Receiver<Arc<Event>>,
    shutdown: CancellationToken,
}

impl Drop for EventStream {
    fn drop(&mut self) {
        self.engine.metrics().sse_clients.dec();
    }
}

impl EventStream {
    fn into_stream(self) -> impl Stream<Item = Result<SseEvent, Infallible>> {
        stream::unfold(self, |mut st| async move {
            let event = st.next().await?;
            let sse = SseEvent::default()
                .id(event.seq().to_string())
                .event(event.body.data.kind())
                .json_data(&event)
                .expect("events always serialize");
            Some((Ok(sse), st))
        })
    }

    /// The next event in seq order, or `None` when the stream should end.
    async fn next(&mut self) -> Option<Event> {
        loop {
            if let Some(e) = self.backlog.pop_front() {
                if e.seq() == self.last + 1 {
                    self.last = e.seq();
                    return Some(e);
                }
                continue;
            }
            match self.engine.read_events(&self.id, self.last, CATCH_UP_PAGE).await {
                Ok(page) if !page.is_empty() => {
                    self.backlog.extend(page);
                    continue;
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(session = %self.id, error = %e, "event stream read failed; closing stream");
                    return None;
                }
            }
            loop {
                let received = tokio::select! {
                    r = self.rx.recv() => r,
                    _ = self.shutdown.cancelled() => return None,
                };
                match received {
                    Ok(e) if e.seq() == self.last + 1 => {
                        self.last = e.seq();
                        return Some((*e).clone());
                    }
                    // Already sent: keep waiting.
                    Ok(e) if e.seq() <= self.last => continue,
                    // A gap, or this reader lagged: re-read from the store.
                    Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => break,
                    Err(broadcast::error::RecvError::Closed) => return None,
                }
            }
        }
    }
}
