//! Upstream health: one probe per cluster per interval for the whole Envoy
//! instance, results shared by every worker.
//!
//! Owns the shared record of each cluster (`eg.hc.<cluster>`), the claim that
//! makes exactly one worker probe a cluster per interval, and the threshold
//! state machine. Never dispatches a probe or reads a clock itself.

use std::fmt;

use crate::shared_store::{SharedStore, StoreError};

/// The shared state of one cluster, as stored in shared data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HealthRecord {
    /// No worker may start a probe before this time (epoch ms).
    pub next_probe_ms: u64,
    pub healthy: bool,
    pub consecutive_failures: u32,
    pub consecutive_successes: u32,
    /// Probes started, for the status endpoint and tests.
    pub probes: u64,
}

impl HealthRecord {
    /// A cluster is presumed healthy until probes say otherwise.
    pub const INITIAL: HealthRecord = HealthRecord {
        next_probe_ms: 0,
        healthy: true,
        consecutive_failures: 0,
        consecutive_successes: 0,
        probes: 0,
    };

    fn encode(&self) -> Vec<u8> {
        format!(
            "{}|{}|{}|{}|{}",
            self.next_probe_ms,
            u8::from(self.healthy),
            self.consecutive_failures,
            self.consecutive_successes,
            self.probes
        )
        .into_bytes()
    }

    fn decode(bytes: &[u8]) -> Option<HealthRecord> {
        let text = std::str::from_utf8(bytes).ok()?;
        let mut parts = text.split('|');
        let record = HealthRecord {
            next_probe_ms: parts.next()?.parse().ok()?,
            healthy: parts.next()? == "1",
            consecutive_failures: parts.next()?.parse().ok()?,
            consecutive_successes: parts.next()?.parse().ok()?,
            probes: parts.next()?.parse().ok()?,
        };
        parts.next().is_none().then_some(record)
    }
}

/// Thresholds from the policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Thresholds {
    pub unhealthy: u32,
    pub healthy: u32,
}

/// A change of state, reported only to the worker whose write made it, so it
/// is logged once for the whole instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    BecameHealthy,
    BecameUnhealthy,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HealthError {
    Store(StoreError),
    /// The record holds something this version cannot read.
    Corrupt(String),
    Contention,
}

impl fmt::Display for HealthError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HealthError::Store(e) => write!(f, "shared data: {e}"),
            HealthError::Corrupt(key) => write!(f, "unreadable health record in {key}"),
            HealthError::Contention => write!(f, "too many concurrent updates"),
        }
    }
}

impl From<StoreError> for HealthError {
    fn from(e: StoreError) -> Self {
        HealthError::Store(e)
    }
}

const MAX_CAS_ATTEMPTS: usize = 32;

pub fn key(cluster: &str) -> String {
    format!("eg.hc.{cluster}")
}

/// Creates the record of each cluster that has none yet. Called by every
/// worker on configure; see `shared_store` for why keys are created up front.
pub fn ensure_records<S: SharedStore>(store: &S, clusters: &[&str]) -> Result<(), HealthError> {
    for cluster in clusters {
        store.create_if_absent(&key(cluster), &HealthRecord::INITIAL.encode())?;
    }
    Ok(())
}

pub fn read<S: SharedStore>(store: &S, cluster: &str) -> Result<HealthRecord, HealthError> {
    let key = key(cluster);
    match store.get(&key)? {
        Some((bytes, _)) => HealthRecord::decode(&bytes).ok_or(HealthError::Corrupt(key)),
        None => Ok(HealthRecord::INITIAL),
    }
}

/// Reads, changes and writes a record under CAS, retrying on conflicts.
/// `change` returns `None` to leave the record as it is.
fn update<S, T>(
    store: &S,
    cluster: &str,
    mut change: impl FnMut(&mut HealthRecord) -> Option<T>,
) -> Result<Option<T>, HealthError>
where
    S: SharedStore,
{
    let key = key(cluster);
    for _ in 0..MAX_CAS_ATTEMPTS {
        let (mut record, cas) = match store.get(&key)? {
            Some((bytes, cas)) => (
                HealthRecord::decode(&bytes).ok_or_else(|| HealthError::Corrupt(key.clone()))?,
                cas,
            ),
            None => return Err(HealthError::Store(StoreError::MissingKey)),
        };
        let Some(outcome) = change(&mut record) else {
            return Ok(None);
        };
        match store.set(&key, &record.encode(), cas) {
            Ok(()) => return Ok(Some(outcome)),
            Err(StoreError::CasMismatch) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(HealthError::Contention)
}

/// Claims the probe of `cluster` due at `now_ms`. `true` for exactly one
/// caller per interval across all workers: that one dispatches the probe.
pub fn claim_probe<S: SharedStore>(
    store: &S,
    cluster: &str,
    now_ms: u64,
    interval_ms: u64,
) -> Result<bool, HealthError> {
    let claimed = update(store, cluster, |record| {
        if now_ms < record.next_probe_ms {
            return None;
        }
        // The next probe is due one interval after this one was due, so tick
        // lateness does not add up; after a stall, one interval from now.
        let after_due = record.next_probe_ms.saturating_add(interval_ms);
        record.next_probe_ms = if record.next_probe_ms != 0 && after_due > now_ms {
            after_due
        } else {
            now_ms.saturating_add(interval_ms)
        };
        record.probes = record.probes.saturating_add(1);
        Some(())
    })?;
    Ok(claimed.is_some())
}

/// Records a probe's outcome; returns the state change it caused, if any.
pub fn record_probe<S: SharedStore>(
    store: &S,
    cluster: &str,
    success: bool,
    thresholds: Thresholds,
) -> Result<Option<Transition>, HealthError> {
    let outcome = update(store, cluster, |record| {
        let was_healthy = record.healthy;
        if success {
            record.consecutive_successes = record.consecutive_successes.saturating_add(1);
            record.consecutive_failures = 0;
            if !record.healthy && record.consecutive_successes >= thresholds.healthy {
                record.healthy = true;
            }
        } else {
            record.consecutive_failures = record.consecutive_failures.saturating_add(1);
            record.consecutive_successes = 0;
            if record.healthy && record.consecutive_failures >= thresholds.unhealthy {
                record.healthy = false;
            }
        }
        Some(match (was_healthy, record.healthy) {
            (false, true) => Some(Transition::BecameHealthy),
            (true, false) => Some(Transition::BecameUnhealthy),
            _ => None,
        })
    })?;
    Ok(outcome.flatten())
}

/// A probe's HTTP status counts as healthy when it is 2xx.
pub fn is_healthy_status(status: Option<u32>) -> bool {
    matches!(status, Some(200..=299))
}

/// How much later than its own timeout a probe's answer may be handled before
/// it tells more about this process than about the cluster.
pub const LATE_ANSWER_SLACK_MS: u64 = 1_000;

/// Whether a failed probe, sent at `sent_ms` with `timeout_ms`, is handled so
/// late (at `now_ms`) that this process must have been paused meanwhile
/// (`SIGSTOP`, a frozen VM, heavy swapping): Envoy ends a call at its timeout,
/// so an answer handled more than [`LATE_ANSWER_SLACK_MS`] after that waited
/// for the process, and its timeout says nothing about the cluster. Such a
/// failure is not counted; the next probe, an interval later, decides.
pub fn answered_after_a_pause(sent_ms: u64, now_ms: u64, timeout_ms: u64) -> bool {
    now_ms.saturating_sub(sent_ms) > timeout_ms.saturating_add(LATE_ANSWER_SLACK_MS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shared_store::MemoryStore;

    #[test]
    fn a_failure_handled_long_after_its_timeout_came_from_a_pause() {
        let (sent, timeout) = (10_000, 2_000);
        assert!(!answered_after_a_pause(sent, sent, timeout));
        assert!(
            !answered_after_a_pause(sent, sent + timeout, timeout),
            "timed out on time"
        );
        assert!(
            !answered_after_a_pause(sent, sent + timeout + LATE_ANSWER_SLACK_MS, timeout),
            "within the slack"
        );
        assert!(answered_after_a_pause(
            sent,
            sent + timeout + LATE_ANSWER_SLACK_MS + 1,
            timeout
        ));
        assert!(
            answered_after_a_pause(sent, sent + 30_000, timeout),
            "paused 28 s"
        );
        assert!(
            !answered_after_a_pause(sent, sent - 5_000, timeout),
            "clock went back"
        );
        assert_eq!(LATE_ANSWER_SLACK_MS, 1_000);
    }

    const T: Thresholds = Thresholds {
        unhealthy: 3,
        healthy: 1,
    };

    fn store_with(cluster: &str) -> MemoryStore {
        let store = MemoryStore::new();
        ensure_records(&store, &[cluster]).unwrap();
        store
    }

    #[test]
    fn record_round_trips() {
        let r = HealthRecord {
            next_probe_ms: 1_700_000_000_000,
            healthy: false,
            consecutive_failures: 4,
            consecutive_successes: 0,
            probes: 99,
        };
        assert_eq!(HealthRecord::decode(&r.encode()), Some(r));
        assert_eq!(HealthRecord::decode(b"1|1|0"), None);
        assert_eq!(HealthRecord::decode(b"1|1|0|0|0|extra"), None);
    }

    #[test]
    fn ensure_records_keeps_existing_state() {
        let store = store_with("a");
        record_probe(
            &store,
            "a",
            false,
            Thresholds {
                unhealthy: 1,
                healthy: 1,
            },
        )
        .unwrap();
        ensure_records(&store, &["a"]).unwrap();
        assert!(!read(&store, "a").unwrap().healthy);
    }

    #[test]
    fn one_claim_per_interval_whatever_the_number_of_workers() {
        let store = store_with("a");
        let claims = (0..8)
            .filter(|_| claim_probe(&store, "a", 1_000, 10_000).unwrap())
            .count();
        assert_eq!(claims, 1);
        assert!(!claim_probe(&store, "a", 10_999, 10_000).unwrap());
        assert!(claim_probe(&store, "a", 11_000, 10_000).unwrap());
        assert_eq!(read(&store, "a").unwrap().probes, 2);
    }

    #[test]
    fn late_claims_do_not_drift() {
        let store = store_with("a");
        assert!(claim_probe(&store, "a", 1_000, 1_000).unwrap());
        // Each claim comes a 50 ms tick late; the schedule stays on the grid.
        assert!(claim_probe(&store, "a", 2_050, 1_000).unwrap());
        assert!(!claim_probe(&store, "a", 2_990, 1_000).unwrap());
        assert!(claim_probe(&store, "a", 3_000, 1_000).unwrap());
        // After a long stall the next probe is one interval from now.
        assert!(claim_probe(&store, "a", 10_000, 1_000).unwrap());
        assert!(!claim_probe(&store, "a", 10_999, 1_000).unwrap());
    }

    #[test]
    fn claim_survives_a_concurrent_write() {
        let store = store_with("a");
        store.bump(&key("a"));
        assert!(claim_probe(&store, "a", 1_000, 10_000).unwrap());
    }

    #[test]
    fn becomes_unhealthy_after_the_threshold_and_says_so_once() {
        let store = store_with("a");
        assert_eq!(record_probe(&store, "a", false, T).unwrap(), None);
        assert_eq!(record_probe(&store, "a", false, T).unwrap(), None);
        assert_eq!(
            record_probe(&store, "a", false, T).unwrap(),
            Some(Transition::BecameUnhealthy)
        );
        assert_eq!(record_probe(&store, "a", false, T).unwrap(), None);
        assert!(!read(&store, "a").unwrap().healthy);
    }

    #[test]
    fn recovers_after_healthy_threshold() {
        let store = store_with("a");
        let t = Thresholds {
            unhealthy: 1,
            healthy: 2,
        };
        record_probe(&store, "a", false, t).unwrap();
        assert_eq!(record_probe(&store, "a", true, t).unwrap(), None);
        assert_eq!(
            record_probe(&store, "a", true, t).unwrap(),
            Some(Transition::BecameHealthy)
        );
    }

    #[test]
    fn a_success_resets_the_failure_streak() {
        let store = store_with("a");
        record_probe(&store, "a", false, T).unwrap();
        record_probe(&store, "a", false, T).unwrap();
        record_probe(&store, "a", true, T).unwrap();
        record_probe(&store, "a", false, T).unwrap();
        assert!(read(&store, "a").unwrap().healthy);
    }

    #[test]
    fn status_classification() {
        assert!(is_healthy_status(Some(200)));
        assert!(is_healthy_status(Some(204)));
        assert!(!is_healthy_status(Some(503)));
        assert!(!is_healthy_status(None));
    }

    #[test]
    fn each_cluster_has_its_own_record() {
        assert_eq!(key("course_service"), "eg.hc.course_service");
        let store = MemoryStore::new();
        ensure_records(&store, &["a", "b"]).unwrap();
        let once = Thresholds {
            unhealthy: 1,
            healthy: 1,
        };
        record_probe(&store, "a", false, once).unwrap();
        assert!(!read(&store, "a").unwrap().healthy);
        assert!(read(&store, "b").unwrap().healthy);
    }

    #[test]
    fn a_probe_claimed_exactly_one_interval_late_is_not_claimed_twice() {
        let store = store_with("a");
        assert!(claim_probe(&store, "a", 1_000, 1_000).unwrap());
        // Due at 2 000, claimed at 3 000: the next is due one interval from now.
        assert!(claim_probe(&store, "a", 3_000, 1_000).unwrap());
        assert!(!claim_probe(&store, "a", 3_000, 1_000).unwrap());
        assert!(claim_probe(&store, "a", 4_000, 1_000).unwrap());
    }

    #[test]
    fn errors_say_what_went_wrong() {
        assert_eq!(
            HealthError::Corrupt("eg.hc.a".into()).to_string(),
            "unreadable health record in eg.hc.a"
        );
        assert_eq!(
            HealthError::Contention.to_string(),
            "too many concurrent updates"
        );
    }
}
