//! Draining an instance before it goes away, and what its load balancer sees.
//!
//! Owns the instance-wide drain state in shared data (`eg.drain`: once set it stays
//! for the life of the process, every worker follows it), when each open WebSocket is
//! closed during a drain, and the health and drain documents. Never closes anything
//! itself and never reads a clock: the host layer hands in the time and carries the
//! closes out.

use crate::json;
use crate::shared_store::{SharedStore, StoreError};

/// Shared-data key of the drain state: `"<started ms>|<period ms>"`; absent = serving.
pub const DRAIN_KEY: &str = "eg.drain";

/// A drain in progress: every open WebSocket is closed between `started_ms` and
/// `started_ms + period_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DrainState {
    pub started_ms: u64,
    pub period_ms: u64,
}

impl DrainState {
    pub fn ends_ms(&self) -> u64 {
        self.started_ms.saturating_add(self.period_ms)
    }

    fn encode(&self) -> Vec<u8> {
        format!("{}|{}", self.started_ms, self.period_ms).into_bytes()
    }

    fn decode(bytes: &[u8]) -> Option<DrainState> {
        let (started, period) = std::str::from_utf8(bytes).ok()?.split_once('|')?;
        Some(DrainState {
            started_ms: started.parse().ok()?,
            period_ms: period.parse().ok()?,
        })
    }
}

/// Starts draining the instance at `now_ms` over `period_ms`. Idempotent: if a drain
/// has begun already, that one stands and is returned.
pub fn start<S: SharedStore + ?Sized>(
    store: &S,
    now_ms: u64,
    period_ms: u64,
) -> Result<DrainState, StoreError> {
    let state = DrainState {
        started_ms: now_ms,
        period_ms,
    };
    if store.create_if_absent(DRAIN_KEY, &state.encode())? {
        return Ok(state);
    }
    read(store)?.ok_or(StoreError::Corrupt)
}

/// The drain in progress, if any.
pub fn read<S: SharedStore + ?Sized>(store: &S) -> Result<Option<DrainState>, StoreError> {
    match store.get(DRAIN_KEY)? {
        None => Ok(None),
        Some((value, _)) => DrainState::decode(&value)
            .map(Some)
            .ok_or(StoreError::Corrupt),
    }
}

/// When to close each of the `n` connections a worker holds as it learns of the drain
/// at `now_ms`: spread evenly over what is left of the period (the middle of `n` equal
/// parts, so none in the first instant and the last before the end); all at `now_ms`
/// if the period is already over.
pub fn close_times(state: &DrainState, n: usize, now_ms: u64) -> Vec<u64> {
    let from = now_ms.max(state.started_ms);
    let window = state.ends_ms().saturating_sub(from);
    let n64 = u64::try_from(n).unwrap_or(u64::MAX);
    (0..n64)
        .map(|i| {
            let offset = u128::from(window) * u128::from(2 * i + 1) / u128::from(2 * n64).max(1);
            from.saturating_add(u64::try_from(offset).unwrap_or(u64::MAX))
        })
        .collect()
}

/// Live figures for the health and drain documents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InstanceView {
    pub websocket_active: u64,
    pub websocket_limit: Option<u32>,
    pub drain: Option<DrainState>,
    pub now_ms: u64,
}

/// The health endpoint's status: 200 while serving, 503 once draining.
pub fn health_status(view: &InstanceView) -> u32 {
    if view.drain.is_some() {
        503
    } else {
        200
    }
}

/// `{"status":"serving","websocket":{"active":N,"limit":M}}`, or `"draining"` with the
/// drain's times.
pub fn health_body(view: &InstanceView) -> String {
    json::object(|doc| {
        doc.str(
            "status",
            if view.drain.is_some() {
                "draining"
            } else {
                "serving"
            },
        );
        doc.obj("websocket", |w| {
            w.num("active", view.websocket_active)
                .opt_num("limit", view.websocket_limit.map(u64::from));
        });
        if let Some(drain) = &view.drain {
            doc.obj("drain", |d| drain_fields(d, drain, view.now_ms));
        }
    })
}

fn drain_fields(d: &mut json::Obj<'_>, drain: &DrainState, now_ms: u64) {
    d.num("started_ms", drain.started_ms)
        .num("period_ms", drain.period_ms)
        .num("ends_ms", drain.ends_ms())
        .num("remaining_ms", drain.ends_ms().saturating_sub(now_ms));
}

/// The answer to `POST <status.path>/drain` (202).
pub fn drain_body(view: &InstanceView, drain: &DrainState) -> String {
    json::object(|doc| {
        doc.str("status", "draining");
        doc.obj("drain", |d| drain_fields(d, drain, view.now_ms));
        doc.obj("websocket", |w| {
            w.num("active", view.websocket_active)
                .opt_num("limit", view.websocket_limit.map(u64::from));
        });
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shared_store::MemoryStore;
    use serde_json::Value;

    #[test]
    fn no_drain_until_started_then_the_first_start_stands() {
        let store = MemoryStore::new();
        assert_eq!(read(&store).unwrap(), None);
        let first = start(&store, 1_000, 30_000).unwrap();
        assert_eq!(
            first,
            DrainState {
                started_ms: 1_000,
                period_ms: 30_000
            }
        );
        // A second POST (another worker, a retried hook) does not restart it.
        assert_eq!(start(&store, 5_000, 10_000).unwrap(), first);
        assert_eq!(read(&store).unwrap(), Some(first));
    }

    #[test]
    fn a_corrupt_state_is_an_error_not_serving() {
        let store = MemoryStore::new();
        store.set(DRAIN_KEY, b"nonsense", 0).unwrap();
        assert_eq!(read(&store), Err(StoreError::Corrupt));
    }

    #[test]
    fn closes_are_spread_evenly_and_all_within_the_period() {
        let state = DrainState {
            started_ms: 10_000,
            period_ms: 30_000,
        };
        let times = close_times(&state, 3, 10_000);
        assert_eq!(times, vec![15_000, 25_000, 35_000]);
        let times = close_times(&state, 100, 10_000);
        assert!(times.windows(2).all(|w| w[0] <= w[1]));
        assert!(
            *times.first().unwrap() > 10_000,
            "none in the first instant"
        );
        assert!(*times.last().unwrap() < 40_000);
        // Learned late: spread over what is left.
        assert_eq!(close_times(&state, 2, 30_000), vec![32_500, 37_500]);
        // Learned after the end: now.
        assert_eq!(close_times(&state, 2, 50_000), vec![50_000, 50_000]);
        assert!(close_times(&state, 0, 10_000).is_empty());
    }

    #[test]
    fn health_is_200_serving_then_503_draining() {
        let mut view = InstanceView {
            websocket_active: 3,
            websocket_limit: Some(10),
            drain: None,
            now_ms: 1_000,
        };
        assert_eq!(health_status(&view), 200);
        let doc: Value = serde_json::from_str(&health_body(&view)).unwrap();
        assert_eq!(
            doc,
            serde_json::json!({"status": "serving", "websocket": {"active": 3, "limit": 10}})
        );
        view.drain = Some(DrainState {
            started_ms: 1_000,
            period_ms: 30_000,
        });
        view.now_ms = 11_000;
        assert_eq!(health_status(&view), 503);
        let doc: Value = serde_json::from_str(&health_body(&view)).unwrap();
        assert_eq!(doc["status"], "draining");
        assert_eq!(doc["drain"]["remaining_ms"], 20_000);
        assert_eq!(doc["drain"]["ends_ms"], 31_000);
    }

    #[test]
    fn no_limit_is_null_and_the_drain_document_carries_the_state() {
        let drain = DrainState {
            started_ms: 0,
            period_ms: 5_000,
        };
        let view = InstanceView {
            websocket_active: 0,
            websocket_limit: None,
            drain: Some(drain),
            now_ms: 0,
        };
        let doc: Value = serde_json::from_str(&drain_body(&view, &drain)).unwrap();
        assert_eq!(doc["status"], "draining");
        assert_eq!(doc["websocket"]["limit"], Value::Null);
        assert_eq!(doc["drain"]["period_ms"], 5_000);
    }
}
