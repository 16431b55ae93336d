//! Bounded waits on a condition, in place of sleeps.

use std::future::Future;
use std::time::Duration;

/// How often the async variants poll (tokio time, so paused-clock tests advance through it).
const ASYNC_INTERVAL: Duration = Duration::from_millis(10);
/// How often [`eventually_blocking`] polls (its checks usually run processes or requests).
const BLOCKING_INTERVAL: Duration = Duration::from_millis(50);

/// What a check returns: `bool` (holds or not) or `Option<T>` (the value once it holds).
pub trait Ready {
    /// What the wait returns once the check holds.
    type Output;
    /// `Some` once the condition holds.
    fn ready(self) -> Option<Self::Output>;
}

impl Ready for bool {
    type Output = ();
    fn ready(self) -> Option<()> {
        self.then_some(())
    }
}

impl<T> Ready for Option<T> {
    type Output = T;
    fn ready(self) -> Option<T> {
        self
    }
}

fn timed_out(limit: Duration, what: &str) -> ! {
    panic!("timed out after {limit:?} waiting for {what}")
}

/// Polls the synchronous `check` on the tokio clock until it holds, and returns its value;
/// panics (failing the test) after `limit`.
pub async fn eventually<R: Ready>(
    limit: Duration,
    what: &str,
    mut check: impl FnMut() -> R,
) -> R::Output {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(v) = check().ready() {
            return v;
        }
        if tokio::time::Instant::now() >= deadline {
            timed_out(limit, what);
        }
        tokio::time::sleep(ASYNC_INTERVAL).await;
    }
}

/// [`eventually`] with an async check.
pub async fn eventually_async<R, F, Fut>(limit: Duration, what: &str, mut check: F) -> R::Output
where
    R: Ready,
    F: FnMut() -> Fut,
    Fut: Future<Output = R>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(v) = check().await.ready() {
            return v;
        }
        if tokio::time::Instant::now() >= deadline {
            timed_out(limit, what);
        }
        tokio::time::sleep(ASYNC_INTERVAL).await;
    }
}

/// [`eventually`] for tests without a runtime: blocks the thread between checks.
pub fn eventually_blocking<R: Ready>(
    limit: Duration,
    what: &str,
    mut check: impl FnMut() -> R,
) -> R::Output {
    let deadline = std::time::Instant::now() + limit;
    loop {
        if let Some(v) = check().ready() {
            return v;
        }
        if std::time::Instant::now() >= deadline {
            timed_out(limit, what);
        }
        std::thread::sleep(BLOCKING_INTERVAL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn returns_the_value_once_ready() {
        let mut n = 0;
        let got = eventually(Duration::from_secs(1), "n to reach 3", || {
            n += 1;
            (n >= 3).then_some(n)
        })
        .await;
        assert_eq!(got, 3);
        let mut m = 0;
        eventually_async(Duration::from_secs(1), "m to reach 2", || {
            m += 1;
            let v = m;
            async move { v >= 2 }
        })
        .await;
        assert_eq!(
            eventually_blocking(Duration::from_secs(1), "now", || Some(7)),
            7
        );
    }

    #[tokio::test(start_paused = true)]
    #[should_panic(expected = "timed out after 1s waiting for never")]
    async fn fails_after_the_limit() {
        eventually(Duration::from_secs(1), "never", || false).await;
    }
}
