//! `GET /v1/watch`: the store's change stream as NDJSON, with bookmarks.

use std::collections::BTreeSet;
use std::convert::Infallible;
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::response::Response;
use bytes::Bytes;
use futures::StreamExt;
use http::{HeaderValue, Uri, header};
use kappa_store::{StoreError, WatchEvent, WatchStream};
use kappa_types::Kind;
use serde_json::json;
use tokio::time::{Instant, Interval, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use crate::error::ApiError;
use crate::extract::Params;
use crate::state::ApiState;

/// The shortest bookmark period honoured.
const MIN_BOOKMARK_INTERVAL: Duration = Duration::from_millis(10);

/// The content type of every streaming endpoint: one JSON document per line.
pub(crate) const NDJSON: &str = "application/x-ndjson";

/// Parses `kinds=functions,httptriggers` (plurals or kind names); empty means every kind.
fn parse_kinds(value: Option<&str>) -> Result<BTreeSet<Kind>, ApiError> {
    let mut kinds = BTreeSet::new();
    for part in value
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
    {
        let kind = part.parse::<Kind>().map_err(|_| {
            ApiError::invalid(
                "kinds",
                format!(
                    "unknown kind {part:?}: expected a comma-separated list of {}",
                    Kind::ALL.map(Kind::plural).join(", ")
                ),
            )
        })?;
        kinds.insert(kind);
    }
    Ok(kinds)
}

/// An NDJSON response around `body`.
pub(crate) fn ndjson_response(body: Body) -> Response {
    let mut response = Response::new(body);
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(NDJSON));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

/// One NDJSON line.
pub(crate) fn line(value: &serde_json::Value) -> Bytes {
    let mut bytes = serde_json::to_vec(value).unwrap_or_default();
    bytes.push(b'\n');
    Bytes::from(bytes)
}

fn bookmark(resource_version: u64) -> Bytes {
    line(&json!({"type": "Bookmark", "resourceVersion": resource_version.to_string()}))
}

fn event_line(event: &WatchEvent) -> Bytes {
    if event.object.kind == Kind::Secret {
        let mut object = event.object.value.clone();
        crate::redact::redact(&mut object);
        return line(&json!({"type": event.event_type, "object": object}));
    }
    line(&json!({"type": event.event_type, "object": event.object.value}))
}

fn error_line(error: &ApiError) -> Bytes {
    line(&json!({"type": "Error", "error": error.body().error}))
}

pub(crate) async fn watch(State(state): State<ApiState>, uri: Uri) -> Result<Response, ApiError> {
    let params = Params::parse(&uri, &["kinds", "resourceVersion"])?;
    let kinds = parse_kinds(params.get("kinds"))?;
    let requested = params.number("resourceVersion")?;
    let current = state.store.current_version().await?;
    let since = match requested {
        None => current,
        Some(n) if n > current => {
            return Err(ApiError::Gone(format!(
                "resource version {n} is newer than the store's ({current}): list again"
            )));
        }
        Some(n) => n,
    };
    // Watch every kind and filter here: seeing every event's version tells when the replay
    // has reached `current` (the catch-up bookmark) and keeps bookmarks current even when the
    // watched kinds are quiet.
    let mut events = state.store.watch(&[], Some(since));
    let mut first = None;
    if since < current {
        // Versions since+1..=current are recorded (or gone), so the first item comes at once:
        // wait for it so that a too-old version is a 410, not a broken stream.
        match events.next().await {
            Some(Ok(event)) => first = Some(event),
            Some(Err(e @ StoreError::Gone { .. })) => return Err(e.into()),
            Some(Err(e)) => return Err(e.into()),
            None => {
                return Err(ApiError::Internal(
                    "the store's watch ended before it began".into(),
                ));
            }
        }
    }
    tracing::debug!(?kinds, since, current, "watch started");
    // A zero period would make `interval_at` panic.
    let period = state.bookmark_interval.max(MIN_BOOKMARK_INTERVAL);
    let mut interval = tokio::time::interval_at(Instant::now() + period, period);
    interval.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let watcher = Watcher {
        events,
        kinds,
        first,
        last_seen: since,
        catch_up_at: current,
        caught_up: false,
        interval,
        shutdown: state.shutdown.clone(),
        done: false,
    };
    let body = futures::stream::unfold(watcher, |mut w| async move {
        let next = w.next_line().await?;
        Some((Ok::<_, Infallible>(next), w))
    });
    Ok(ndjson_response(Body::from_stream(body)))
}

/// The state of one watch response.
struct Watcher {
    events: WatchStream,
    kinds: BTreeSet<Kind>,
    /// An event already taken from `events` (to detect Gone) but not yet sent.
    first: Option<WatchEvent>,
    /// The highest resource version seen (sent or filtered out).
    last_seen: u64,
    /// The store's version when the watch started: once `last_seen` reaches it, the replay
    /// is over and a bookmark says so.
    catch_up_at: u64,
    caught_up: bool,
    interval: Interval,
    shutdown: CancellationToken,
    done: bool,
}

impl Watcher {
    /// The next line to send, or `None` to end the response.
    async fn next_line(&mut self) -> Option<Bytes> {
        loop {
            if self.done {
                return None;
            }
            if !self.caught_up && self.last_seen >= self.catch_up_at {
                self.caught_up = true;
                return Some(bookmark(self.last_seen));
            }
            let item = match self.first.take() {
                Some(event) => Some(Ok(event)),
                None => {
                    tokio::select! {
                        _ = self.shutdown.cancelled() => return None,
                        _ = self.interval.tick() => return Some(bookmark(self.last_seen)),
                        item = self.events.next() => item,
                    }
                }
            };
            match item {
                Some(Ok(event)) => {
                    self.last_seen = self.last_seen.max(event.object.resource_version);
                    let wanted = if self.kinds.is_empty() {
                        // "Every kind" is every resource kind: invocation records only when
                        // asked for by name.
                        event.object.kind != Kind::Invocation
                    } else {
                        self.kinds.contains(&event.object.kind)
                    };
                    if wanted {
                        return Some(event_line(&event));
                    }
                }
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "watch stream failed");
                    self.done = true;
                    return Some(error_line(&ApiError::from(e)));
                }
                None => return None,
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn kinds_parse() {
        let k = parse_kinds(Some("functions, HttpTrigger")).unwrap();
        assert_eq!(
            k.into_iter().collect::<Vec<_>>(),
            vec![Kind::Function, Kind::HttpTrigger]
        );
        assert!(parse_kinds(None).unwrap().is_empty());
        assert_eq!(
            parse_kinds(Some("pods")).unwrap_err().field(),
            Some("kinds")
        );
    }
}
