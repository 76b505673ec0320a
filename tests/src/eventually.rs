//! Waiting for a condition that becomes true asynchronously (a reload applied,
//! a metric recorded, a port opened), keeping what was last seen so a failed
//! wait can say what it saw.
//!
//! ```ignore
//! use meshgate_e2e::prelude::*;
//!
//! cfg.write("vs.yaml", &reviews_to("v2"))?;
//! assert_eventually!(Duration::from_secs(10), version_of(&gw, 80, "/", "x").await, |v| v == "v2", "after the edit");
//! // on timeout, at this line: assert_eventually: `|v| v == "v2"` did not hold within 10s;
//! // last value seen: "v1"; after the edit
//! ```

use std::future::Future;
use std::time::Duration;

/// How often [`poll_until`] probes again.
pub const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// Probes every [`POLL_INTERVAL`] until `accept` holds for the probed value
/// (`Ok(value)`) or `deadline` has passed (`Err(last value)`). The probe runs
/// at least once, and once more after the deadline is reached, as a
/// readiness-style wait does.
pub async fn poll_until<T, F, Fut, A>(deadline: Duration, mut probe: F, mut accept: A) -> Result<T, T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = T>,
    A: FnMut(&T) -> bool,
{
    let end = tokio::time::Instant::now() + deadline;
    loop {
        let value = probe().await;
        if accept(&value) {
            return Ok(value);
        }
        if tokio::time::Instant::now() > end {
            return Err(value);
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// `assert_eventually!(deadline, probe, accept [, format args...])`: evaluates
/// the (async) expression `probe` anew every [`POLL_INTERVAL`] until
/// `accept(&value)` holds, and yields that value. If `deadline` passes first it
/// panics with the deadline, the condition, the last value seen (`{:?}`) and
/// the optional message (format arguments, evaluated only on failure, may
/// `.await`). A `Result` probe yields a `#[must_use]` value: write
/// `let _ = assert_eventually!(...)` where the accepted value is not needed.
///
/// ```ignore
/// let v = assert_eventually!(Duration::from_secs(10), version_of(&gw, 80, "/", "x").await, |v| v == "v2");
/// let _ = assert_eventually!(
///     Duration::from_secs(10),
///     get(at, "/").send().await.map(|r| r.status),
///     |r| r.is_err(),
///     "new connections are refused while draining"
/// );
/// ```
#[macro_export]
macro_rules! assert_eventually {
    ($deadline:expr, $probe:expr, $accept:expr $(,)?) => {{
        let deadline: ::std::time::Duration = $deadline;
        match $crate::eventually::poll_until(deadline, || async { $probe }, $accept).await {
            ::std::result::Result::Ok(value) => value,
            ::std::result::Result::Err(last) => {
                $crate::eventually::failed(::std::stringify!($accept), deadline, &last, ::std::option::Option::None)
            }
        }
    }};
    ($deadline:expr, $probe:expr, $accept:expr, $($arg:tt)+) => {{
        let deadline: ::std::time::Duration = $deadline;
        match $crate::eventually::poll_until(deadline, || async { $probe }, $accept).await {
            ::std::result::Result::Ok(value) => value,
            ::std::result::Result::Err(last) => $crate::eventually::failed(
                ::std::stringify!($accept),
                deadline,
                &last,
                ::std::option::Option::Some(::std::format!($($arg)+)),
            ),
        }
    }};
}

/// The panic of a failed [`assert_eventually!`], reported at the macro's call site.
#[doc(hidden)]
#[track_caller]
pub fn failed<T: std::fmt::Debug>(condition: &str, deadline: Duration, last: &T, message: Option<String>) -> ! {
    match message {
        Some(message) => panic!(
            "assert_eventually: `{condition}` did not hold within {deadline:?}; last value seen: {last:?}; {message}"
        ),
        None => panic!("assert_eventually: `{condition}` did not hold within {deadline:?}; last value seen: {last:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[tokio::test]
    async fn poll_until_returns_the_first_accepted_value() {
        let polls = AtomicU32::new(0);
        let got =
            poll_until(Duration::from_secs(5), || async { polls.fetch_add(1, Ordering::SeqCst) + 1 }, |n| *n >= 3)
                .await;
        assert_eq!(got, Ok(3));
        assert_eq!(polls.load(Ordering::SeqCst), 3, "no probe after the value is accepted");
    }

    #[tokio::test]
    async fn poll_until_gives_the_last_value_at_the_deadline() {
        let polls = AtomicU32::new(0);
        let got =
            poll_until(Duration::from_millis(100), || async { polls.fetch_add(1, Ordering::SeqCst) }, |_| false).await;
        let last = got.unwrap_err();
        assert_eq!(last + 1, polls.load(Ordering::SeqCst), "the value of the last probe");
        assert!(last >= 2, "probed repeatedly until the deadline: {last}");
    }

    #[tokio::test]
    async fn the_macro_yields_the_accepted_value() {
        let polls = AtomicU32::new(0);
        let version = || async { if polls.fetch_add(1, Ordering::SeqCst) < 2 { "v1" } else { "v2" }.to_string() };
        let v = assert_eventually!(Duration::from_secs(5), version().await, |v| v == "v2", "after the edit");
        assert_eq!(v, "v2");
        let n = assert_eventually!(Duration::from_secs(5), polls.load(Ordering::SeqCst), |n| *n >= 3);
        assert_eq!(n, 3);
    }

    #[tokio::test]
    async fn the_macro_panics_with_the_last_value_and_the_message() {
        let failed = tokio::spawn(async {
            let attempt = "not yet";
            assert_eventually!(
                Duration::from_millis(100),
                async { format!("status {}", 503) }.await,
                |s| s == "status 200",
                "the route is {attempt}",
            );
        })
        .await
        .expect_err("the assertion fails");
        let payload = failed.into_panic();
        let message = payload
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
            .expect("a formatted panic message");
        assert!(message.contains(r#"last value seen: "status 503""#), "{message}");
        assert!(message.contains("the route is not yet"), "{message}");
        assert!(message.contains("100ms"), "the deadline: {message}");
        assert!(message.contains(r#"s == "status 200""#), "the condition: {message}");
    }
}
