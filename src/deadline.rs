//! Deadline arithmetic for one exchange.
//!
//! Owns the budget model: `total` runs from the moment the filter sees the
//! request headers until the response headers leave; `response` bounds the
//! upstream's answer once the request is fully received. Never reads a clock:
//! callers pass times in, so every rule is testable to the millisecond.

use crate::policy::{Millis, TimeoutClass};

/// Where an exchange is, as far as its deadline cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// The client is still sending the request (headers seen, body not done).
    ReceivingRequest,
    /// The request is complete; waiting for the upstream's response headers.
    AwaitingResponse,
    /// Response headers have left (or a local reply was sent): no deadline.
    Responded,
}

/// What a passed deadline means for the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeadlineHit {
    /// `total` passed while the client was still sending: 408 `request_timeout`.
    RequestTimeout,
    /// The upstream did not answer in time: 504 `upstream_timeout`.
    UpstreamTimeout,
}

impl DeadlineHit {
    pub fn as_str(self) -> &'static str {
        match self {
            DeadlineHit::RequestTimeout => "request_timeout",
            DeadlineHit::UpstreamTimeout => "upstream_timeout",
        }
    }
}

/// The budget of one exchange, fixed when its headers arrive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deadline {
    started_ms: u64,
    total: Millis,
    response: Millis,
}

impl Deadline {
    pub fn start(class: &TimeoutClass, now_ms: u64) -> Deadline {
        Deadline {
            started_ms: now_ms,
            total: class.total,
            response: class.response,
        }
    }

    /// As `start`, with both bounds cut down to `cap` where it is shorter:
    /// an outbound call that inherited what is left of its caller's budget.
    pub fn start_capped(class: &TimeoutClass, now_ms: u64, cap: Option<Millis>) -> Deadline {
        let mut deadline = Deadline::start(class, now_ms);
        if let Some(cap) = cap {
            deadline.total = deadline.total.min(cap);
            deadline.response = deadline.response.min(cap);
        }
        deadline
    }

    /// The time at which the whole exchange must be over.
    pub fn total_deadline_ms(&self) -> u64 {
        self.started_ms.saturating_add(self.total.as_ms())
    }

    /// Time left of `total` at `now_ms`.
    pub fn remaining(&self, now_ms: u64) -> Millis {
        Millis(self.total_deadline_ms().saturating_sub(now_ms))
    }

    /// The upstream's budget when the request completes at `now_ms`:
    /// `min(response, total - elapsed)`, never below 1 ms (0 would mean
    /// "no timeout" to Envoy's router).
    pub fn upstream_budget(&self, now_ms: u64) -> Millis {
        Millis(self.response.min(self.remaining(now_ms)).as_ms().max(1))
    }

    /// When the upgrade of a WebSocket must have been answered: the class
    /// bounds the upgrade only, never the established connection.
    pub fn upgrade_deadline_ms(&self) -> u64 {
        self.started_ms.saturating_add(self.response.as_ms())
    }

    /// What a deadline timer firing in `phase` means; `None` when the
    /// exchange is already answered and the timer is stale.
    pub fn hit_in(phase: Phase) -> Option<DeadlineHit> {
        match phase {
            Phase::ReceivingRequest => Some(DeadlineHit::RequestTimeout),
            Phase::AwaitingResponse => Some(DeadlineHit::UpstreamTimeout),
            Phase::Responded => None,
        }
    }
}

/// Formats a millisecond count for a header value, without allocating.
pub fn header_value(ms: Millis) -> Decimal {
    Decimal::of(ms.as_ms())
}

/// A u64 in decimal, written on the stack (the router's timeout header is
/// set on every request: no allocation, no formatting machinery).
#[derive(Clone, Copy)]
pub struct Decimal {
    digits: [u8; 20],
    start: usize,
}

impl Decimal {
    pub fn of(mut n: u64) -> Decimal {
        let mut digits = [b'0'; 20];
        let mut start = digits.len();
        loop {
            start -= 1;
            // n % 10 < 10: the cast is exact.
            digits[start] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        Decimal { digits, start }
    }

    pub fn as_str(&self) -> &str {
        // Only ASCII digits are ever written.
        std::str::from_utf8(&self.digits[self.start..]).unwrap_or("0")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn class(total: u64, response: u64) -> TimeoutClass {
        TimeoutClass {
            name: "c".into(),
            total: Millis(total),
            response: Millis(response),
        }
    }

    #[test]
    fn budget_for_a_request_complete_with_its_headers_is_the_response_budget() {
        let d = Deadline::start(&class(120_000, 55_000), 1_000);
        assert_eq!(d.upstream_budget(1_000), Millis(55_000));
    }

    #[test]
    fn budget_shrinks_once_the_upload_eats_into_total() {
        let d = Deadline::start(&class(120_000, 55_000), 0);
        assert_eq!(d.upstream_budget(60_000), Millis(55_000));
        assert_eq!(d.upstream_budget(65_000), Millis(55_000));
        assert_eq!(d.upstream_budget(100_000), Millis(20_000));
    }

    #[test]
    fn budget_never_reaches_zero() {
        let d = Deadline::start(&class(1_000, 1_000), 0);
        assert_eq!(d.upstream_budget(1_000), Millis(1));
        assert_eq!(d.upstream_budget(50_000), Millis(1));
    }

    #[test]
    fn single_duration_class_means_total_equals_response() {
        let d = Deadline::start(&class(30_000, 30_000), 500);
        assert_eq!(d.total_deadline_ms(), 30_500);
        assert_eq!(d.upstream_budget(10_500), Millis(20_000));
        assert_eq!(d.remaining(30_600), Millis(0));
    }

    #[test]
    fn a_cap_shortens_both_bounds_and_never_lengthens_them() {
        let d = Deadline::start_capped(&class(10_000, 10_000), 0, Some(Millis(1_200)));
        assert_eq!(d.upstream_budget(0), Millis(1_200));
        assert_eq!(d.total_deadline_ms(), 1_200);
        let d = Deadline::start_capped(&class(120_000, 55_000), 0, Some(Millis(70_000)));
        assert_eq!(
            (d.upstream_budget(0), d.total_deadline_ms()),
            (Millis(55_000), 70_000)
        );
        let d = Deadline::start_capped(&class(5_000, 5_000), 0, Some(Millis(60_000)));
        assert_eq!(d, Deadline::start(&class(5_000, 5_000), 0));
        assert_eq!(
            Deadline::start_capped(&class(5_000, 5_000), 7, None),
            Deadline::start(&class(5_000, 5_000), 7)
        );
    }

    #[test]
    fn upgrade_is_bounded_by_response() {
        let d = Deadline::start(&class(120_000, 5_000), 100);
        assert_eq!(d.upgrade_deadline_ms(), 5_100);
    }

    #[test]
    fn hit_depends_on_phase() {
        assert_eq!(
            Deadline::hit_in(Phase::ReceivingRequest),
            Some(DeadlineHit::RequestTimeout)
        );
        assert_eq!(
            Deadline::hit_in(Phase::AwaitingResponse),
            Some(DeadlineHit::UpstreamTimeout)
        );
        assert_eq!(Deadline::hit_in(Phase::Responded), None);
    }

    #[test]
    fn saturates_instead_of_overflowing() {
        let d = Deadline::start(&class(u64::MAX, u64::MAX), u64::MAX - 1);
        assert_eq!(d.total_deadline_ms(), u64::MAX);
    }

    #[test]
    fn hits_are_named_as_their_metrics_and_error_codes() {
        assert_eq!(DeadlineHit::RequestTimeout.as_str(), "request_timeout");
        assert_eq!(DeadlineHit::UpstreamTimeout.as_str(), "upstream_timeout");
    }

    #[test]
    fn header_value_is_the_decimal_milliseconds() {
        assert_eq!(header_value(Millis(55_000)).as_str(), "55000");
        assert_eq!(header_value(Millis(1)).as_str(), "1");
        assert_eq!(header_value(Millis(0)).as_str(), "0");
        assert_eq!(header_value(Millis(10)).as_str(), "10");
        assert_eq!(Decimal::of(u64::MAX).as_str(), u64::MAX.to_string());
        for n in [
            9,
            99,
            100,
            101,
            4_294_967_295,
            4_294_967_296,
            1_000_000_000_000,
        ] {
            assert_eq!(Decimal::of(n).as_str(), n.to_string());
        }
    }
}
