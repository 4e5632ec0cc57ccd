//! Waiting on conditions, never on fixed sleeps.

use anyhow::{Result, anyhow};
use std::time::{Duration, Instant};

/// How often a condition is polled.
pub const POLL: Duration = Duration::from_millis(50);

/// Polls `check` every 50 ms until it returns `Ok`, and returns that value.
///
/// `check` returns `Err` with what it observed while the condition does not hold yet; after
/// `timeout` the wait fails with `desc` and the last observation. One attempt that hangs (a
/// stopped node, say) is cut off when the deadline passes.
///
/// ```no_run
/// # async fn t(node: &gateway_tests::Node) -> anyhow::Result<()> {
/// use gateway_tests::wait_for;
/// use std::time::Duration;
/// let status = wait_for("node 1 leads", Duration::from_secs(30), || async {
///     let s = node.status().await?;
///     anyhow::ensure!(s.role == "leader", "role is {}", s.role);
///     Ok(s)
/// })
/// .await?;
/// # let _ = status; Ok(()) }
/// ```
pub async fn wait_for<T>(
    desc: &str,
    timeout: Duration,
    mut check: impl AsyncFnMut() -> Result<T>,
) -> Result<T> {
    let start = Instant::now();
    let deadline = start + timeout;
    let mut attempts = 0u64;
    loop {
        attempts += 1;
        let left = deadline.saturating_duration_since(Instant::now());
        let last = match tokio::time::timeout(left.max(POLL), check()).await {
            Ok(Ok(v)) => return Ok(v),
            Ok(Err(e)) => e,
            Err(_) => anyhow!("the check itself did not finish before the deadline"),
        };
        if Instant::now() >= deadline {
            let last = format!("{last:#}");
            return Err(anyhow!(
                "timed out after {:.1}s ({attempts} attempts) waiting for: {desc}\n  last observed: {last}",
                start.elapsed().as_secs_f64()
            ));
        }
        tokio::time::sleep(POLL).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn returns_the_value_once_the_condition_holds() {
        let mut calls = 0;
        let v = wait_for("three calls", Duration::from_secs(10), || {
            calls += 1;
            let n = calls;
            async move {
                if n >= 3 {
                    Ok(n)
                } else {
                    Err(anyhow!("only {n} calls"))
                }
            }
        })
        .await
        .unwrap();
        assert_eq!(v, 3);
    }

    #[tokio::test]
    async fn fails_with_the_description_and_the_last_observation() {
        let e = wait_for(
            "the moon to turn blue",
            Duration::from_millis(200),
            || async { Err::<(), _>(anyhow!("still grey")) },
        )
        .await
        .unwrap_err();
        let e = format!("{e:#}");
        assert!(
            e.contains("the moon to turn blue") && e.contains("still grey"),
            "{e}"
        );
    }

    #[tokio::test]
    async fn a_hanging_check_is_cut_off_at_the_deadline() {
        let start = Instant::now();
        let e = wait_for("a hanging check", Duration::from_millis(300), || async {
            std::future::pending::<Result<()>>().await
        })
        .await
        .unwrap_err();
        assert!(start.elapsed() < Duration::from_secs(5));
        assert!(format!("{e:#}").contains("did not finish"), "{e:#}");
    }
}
