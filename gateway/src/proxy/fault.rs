//! A route's `fault`, as Envoy's fault filter applies it before the router: each request
//! draws whether it is delayed and whether it is aborted (independently, each by its own
//! share); a delayed request waits, then is aborted or goes on to pick its upstream.

use super::local_reply::LocalReply;
use meshgate_model::snapshot::Fault;
use std::time::Duration;

/// What the draw gave one request.
pub(super) struct Injection {
    pub(super) delay: Option<Duration>,
    pub(super) abort: Option<LocalReply>,
}

/// One draw against `fault`'s shares (per million, as Envoy's `FractionalPercent`).
pub(super) fn draw(fault: &Fault) -> Injection {
    draw_with(fault, || fastrand::u32(0..1_000_000))
}

fn draw_with(fault: &Fault, mut roll: impl FnMut() -> u32) -> Injection {
    let mut hit = |per_million: u32| per_million > 0 && roll() < per_million;
    let delay =
        fault.delay.as_ref().filter(|d| hit(d.per_million)).map(|d| Duration::from_millis(u64::from(d.fixed_delay_ms)));
    let abort = fault.abort.as_ref().filter(|a| hit(a.per_million)).map(|a| LocalReply::fault_abort(a.status));
    Injection { delay, abort }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::response_flag::ResponseFlag;
    use meshgate_model::snapshot::{AbortStatus, FaultAbort, FaultDelay};

    fn fault(delay: u32, abort: u32) -> Fault {
        Fault {
            delay: Some(FaultDelay { fixed_delay_ms: 7000, per_million: delay }),
            abort: Some(FaultAbort { status: AbortStatus::Http(500), per_million: abort }),
        }
    }

    #[test]
    fn all_none_or_a_share() {
        let all = draw(&fault(1_000_000, 1_000_000));
        assert_eq!(all.delay, Some(Duration::from_secs(7)));
        let abort = all.abort.expect("aborted");
        assert_eq!(
            (abort.code, abort.flags, &abort.body[..]),
            (500, ResponseFlag::FaultInjected, &b"fault filter abort"[..])
        );
        let none = draw(&fault(0, 0));
        assert!(none.delay.is_none() && none.abort.is_none());
        // A roll below the share hits; at or above it misses.
        let d = draw_with(&fault(100_000, 100_000), || 99_999);
        assert!(d.delay.is_some() && d.abort.is_some());
        let d = draw_with(&fault(100_000, 100_000), || 100_000);
        assert!(d.delay.is_none() && d.abort.is_none());
    }

    #[test]
    fn a_grpc_abort_maps_to_http_for_other_clients() {
        let f =
            Fault { delay: None, abort: Some(FaultAbort { status: AbortStatus::Grpc(14), per_million: 1_000_000 }) };
        let abort = draw(&f).abort.unwrap();
        assert_eq!((abort.code, abort.grpc_status), (503, Some(14)));
    }
}
