//! Budgets that follow the request: what an outbound call inherits from the
//! request that caused it.
//!
//! Owns reading the caller's remaining budget from the headers a service
//! forwards on its outbound call (`x-envoy-expected-rq-timeout-ms`, the
//! header Envoy gave the service; or gRPC's `grpc-timeout`) and the rule
//! that bounds the call: `min(destination class, inherited budget)`,
//! counted from when the egress filter sees the call (never comparing
//! clocks across hosts). A budget that is already spent refuses the call.
//! Never reads a clock or a header map itself: callers pass values in.

use crate::deadline::Deadline;
use crate::policy::{Direction, Millis, TimeoutClass};

/// Why an inherited-budget header was ignored (the call then gets its
/// class's budget, as if nothing had been forwarded).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ignored {
    NotANumber,
}

/// What the caller's forwarded headers say about its budget.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Inherited {
    /// Nothing forwarded (or nothing readable): the class alone bounds the call.
    #[default]
    None,
    /// The caller has this much left.
    Remaining(Millis),
    /// The caller's budget is already spent (0 or negative forwarded).
    Spent,
}

/// `x-envoy-expected-rq-timeout-ms`: whole milliseconds. Envoy never sends
/// 0 (it omits the header for requests without a timeout), so 0 — or the
/// negative result of a service subtracting its own elapsed time — means
/// the caller's budget ran out.
pub fn parse_expected_timeout(value: &[u8]) -> Result<Inherited, Ignored> {
    let text = std::str::from_utf8(value)
        .map_err(|_| Ignored::NotANumber)?
        .trim();
    if let Some(digits) = text.strip_prefix('-') {
        return if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
            Ok(Inherited::Spent)
        } else {
            Err(Ignored::NotANumber)
        };
    }
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Ignored::NotANumber);
    }
    // More digits than u64 holds is a budget beyond any class.
    let ms = text.parse::<u64>().unwrap_or(u64::MAX);
    Ok(if ms == 0 {
        Inherited::Spent
    } else {
        Inherited::Remaining(Millis(ms))
    })
}

/// `grpc-timeout`: 1 to 8 digits and a unit (`H`, `M`, `S`, `m`, `u`, `n`),
/// rounded up to whole milliseconds (a 500 µs budget is not spent).
pub fn parse_grpc_timeout(value: &[u8]) -> Result<Inherited, Ignored> {
    let (unit, digits) = value.split_last().ok_or(Ignored::NotANumber)?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return Err(Ignored::NotANumber);
    }
    let n: u64 = std::str::from_utf8(digits)
        .ok()
        .and_then(|t| t.parse().ok())
        .ok_or(Ignored::NotANumber)?;
    let ms = match unit {
        b'H' => n.saturating_mul(3_600_000),
        b'M' => n.saturating_mul(60_000),
        b'S' => n.saturating_mul(1_000),
        b'm' => n,
        b'u' => n.div_ceil(1_000),
        b'n' => n.div_ceil(1_000_000),
        _ => return Err(Ignored::NotANumber),
    };
    Ok(if ms == 0 {
        Inherited::Spent
    } else {
        Inherited::Remaining(Millis(ms))
    })
}

/// Both headers forwarded: the tighter one counts.
pub fn tighter(a: Inherited, b: Inherited) -> Inherited {
    match (a, b) {
        (Inherited::Spent, _) | (_, Inherited::Spent) => Inherited::Spent,
        (Inherited::None, other) | (other, Inherited::None) => other,
        (Inherited::Remaining(x), Inherited::Remaining(y)) => Inherited::Remaining(x.min(y)),
    }
}

/// What to do with an outbound call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallBudget {
    /// Nothing inherited: the destination's class alone.
    Class,
    /// The class, cut down to what the caller has left where that is
    /// shorter (see `Deadline::start_capped`).
    Capped(Millis),
    /// Refuse it at once: 504 `upstream_timeout`, the upstream never sees it.
    Spent,
}

/// The budget of a request: on egress `min(class, inherited)`; on ingress
/// the class alone (a client cannot change its deadline, not even down).
pub fn for_request(direction: Direction, inherited: Inherited) -> CallBudget {
    match direction {
        Direction::Ingress => CallBudget::Class,
        Direction::Egress => bound(inherited),
    }
}

/// The deadline of a request whose headers `now_ms` brought: its class,
/// capped on egress by the budget the caller forwarded; `None` when that
/// budget is already spent (refuse the call).
pub fn deadline_for(
    direction: Direction,
    class: &TimeoutClass,
    inherited: Inherited,
    now_ms: u64,
) -> Option<Deadline> {
    match for_request(direction, inherited) {
        CallBudget::Class => Some(Deadline::start(class, now_ms)),
        CallBudget::Capped(left) => Some(Deadline::start_capped(class, now_ms, Some(left))),
        CallBudget::Spent => None,
    }
}

/// The `grpc-timeout` an egress call carries on: the call's budget, when
/// the caller sent one (the callee's gRPC deadline is then the call's, not
/// the caller's). Ingress leaves it alone.
pub fn grpc_timeout_for(direction: Direction, sent: bool, budget: Millis) -> Option<String> {
    (direction == Direction::Egress && sent).then(|| grpc_timeout_value(budget))
}

/// The message of the 504 for a call whose inherited budget is spent.
pub const SPENT_MESSAGE: &str = "the caller's budget ran out before this outbound call was made (it forwarded x-envoy-expected-rq-timeout-ms or grpc-timeout with nothing left); the call was not sent";

/// The budget of an outbound call: `min(class, inherited)`.
pub fn bound(inherited: Inherited) -> CallBudget {
    match inherited {
        Inherited::None => CallBudget::Class,
        Inherited::Spent => CallBudget::Spent,
        Inherited::Remaining(left) => CallBudget::Capped(left),
    }
}

/// `grpc-timeout` value for a budget, in milliseconds (`1200m`); the unit
/// changes to seconds or more only where 8 digits would not hold it.
pub fn grpc_timeout_value(ms: Millis) -> String {
    let ms = ms.as_ms();
    if ms < 100_000_000 {
        format!("{ms}m")
    } else {
        format!("{}S", ms.div_ceil(1_000).min(99_999_999))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expected_timeout_header() {
        assert_eq!(
            parse_expected_timeout(b"1200"),
            Ok(Inherited::Remaining(Millis(1200)))
        );
        assert_eq!(
            parse_expected_timeout(b" 30000 "),
            Ok(Inherited::Remaining(Millis(30_000)))
        );
        assert_eq!(parse_expected_timeout(b"0"), Ok(Inherited::Spent));
        assert_eq!(parse_expected_timeout(b"-15"), Ok(Inherited::Spent));
        assert_eq!(
            parse_expected_timeout(b"99999999999999999999999"),
            Ok(Inherited::Remaining(Millis(u64::MAX)))
        );
        for bad in [&b""[..], b"-", b"1.5", b"12ms", b"abc", b"\xff", b"+5"] {
            assert_eq!(parse_expected_timeout(bad), Err(Ignored::NotANumber));
        }
    }

    #[test]
    fn grpc_timeout_header() {
        let ms = |n| Ok(Inherited::Remaining(Millis(n)));
        assert_eq!(parse_grpc_timeout(b"1200m"), ms(1200));
        assert_eq!(parse_grpc_timeout(b"2S"), ms(2000));
        assert_eq!(parse_grpc_timeout(b"1M"), ms(60_000));
        assert_eq!(parse_grpc_timeout(b"1H"), ms(3_600_000));
        assert_eq!(parse_grpc_timeout(b"1500u"), ms(2));
        assert_eq!(parse_grpc_timeout(b"1n"), ms(1));
        assert_eq!(parse_grpc_timeout(b"0m"), Ok(Inherited::Spent));
        for bad in [&b""[..], b"m", b"123456789m", b"10x", b"1.5S", b"-1S"] {
            assert_eq!(parse_grpc_timeout(bad), Err(Ignored::NotANumber));
        }
    }

    #[test]
    fn the_tighter_of_two_headers_counts() {
        let r = |n| Inherited::Remaining(Millis(n));
        assert_eq!(tighter(r(5), r(3)), r(3));
        assert_eq!(tighter(Inherited::None, r(3)), r(3));
        assert_eq!(tighter(r(3), Inherited::Spent), Inherited::Spent);
        assert_eq!(tighter(Inherited::None, Inherited::None), Inherited::None);
    }

    #[test]
    fn inherited_budget_caps_the_call_or_refuses_it() {
        assert_eq!(bound(Inherited::None), CallBudget::Class);
        assert_eq!(
            bound(Inherited::Remaining(Millis(1200))),
            CallBudget::Capped(Millis(1200))
        );
        assert_eq!(bound(Inherited::Spent), CallBudget::Spent);
        assert_eq!(
            for_request(Direction::Ingress, Inherited::Spent),
            CallBudget::Class
        );
        assert_eq!(
            for_request(Direction::Egress, Inherited::Spent),
            CallBudget::Spent
        );
    }

    #[test]
    fn deadline_of_a_request() {
        let class = TimeoutClass {
            name: "external".into(),
            total: Millis(10_000),
            response: Millis(10_000),
        };
        let capped = deadline_for(
            Direction::Egress,
            &class,
            Inherited::Remaining(Millis(1200)),
            5,
        );
        assert_eq!(capped.map(|d| d.upstream_budget(5)), Some(Millis(1200)));
        let ingress = deadline_for(
            Direction::Ingress,
            &class,
            Inherited::Remaining(Millis(1200)),
            5,
        );
        assert_eq!(ingress.map(|d| d.upstream_budget(5)), Some(Millis(10_000)));
        assert_eq!(
            deadline_for(Direction::Egress, &class, Inherited::Spent, 5),
            None
        );
        assert_eq!(
            grpc_timeout_for(Direction::Egress, true, Millis(7)).as_deref(),
            Some("7m")
        );
        assert_eq!(grpc_timeout_for(Direction::Egress, false, Millis(7)), None);
        assert_eq!(grpc_timeout_for(Direction::Ingress, true, Millis(7)), None);
    }

    #[test]
    fn grpc_timeout_is_written_back_in_milliseconds() {
        assert_eq!(grpc_timeout_value(Millis(1200)), "1200m");
        assert_eq!(grpc_timeout_value(Millis(100_000_000)), "100000S");
        assert_eq!(
            parse_grpc_timeout(grpc_timeout_value(Millis(99_999_999)).as_bytes()),
            Ok(Inherited::Remaining(Millis(99_999_999)))
        );
    }
}
