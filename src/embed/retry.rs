//! The one retry helper: exponential backoff with jitter (backon), a cap per delay, a deadline
//! for the whole call, and the server's `Retry-After` winning over our own schedule.

use std::future::Future;
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use tokio::time::Instant;

use super::EmbedError;
use crate::config::EmbedderSettings;
use crate::telemetry::metrics;

/// How a failing call is retried.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// First delay (doubled per attempt, plus up to 100 % jitter).
    pub initial: Duration,
    /// Longest delay before jitter.
    pub max: Duration,
    /// Time after the first attempt when no further attempt starts.
    pub max_elapsed: Duration,
    /// Which model service retries (`embedding`, `llm`): the label of its retry metric.
    pub service: &'static str,
}

impl RetryPolicy {
    /// The policy of `[embedder]`.
    pub fn from_settings(settings: &EmbedderSettings) -> Self {
        Self {
            initial: Duration::from_millis(settings.initial_backoff_ms),
            max: Duration::from_millis(settings.max_backoff_ms),
            max_elapsed: Duration::from_secs(settings.max_elapsed_secs),
            service: "embedding",
        }
    }

    /// Runs `attempt` until it succeeds, fails with a non-retryable error, or the next attempt
    /// would start after the deadline. A server-given delay replaces our own, but never extends
    /// the deadline: waiting longer than allowed gives up (the caller requeues) instead.
    ///
    /// # Errors
    /// The non-retryable error, or the last retryable one with a note that retries ran out.
    pub async fn run<T, F, Fut>(&self, attempt: F) -> Result<T, EmbedError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, EmbedError>>,
    {
        let started = Instant::now();
        let max_elapsed = self.max_elapsed;
        let backoff = ExponentialBuilder::new()
            .with_min_delay(self.initial)
            .with_max_delay(self.max)
            .with_jitter()
            .without_max_times();
        let result = attempt
            .retry(backoff)
            .sleep(tokio::time::sleep)
            .when(EmbedError::is_retryable)
            .adjust(|error, ours| {
                let delay = error.retry_after().or(ours)?;
                (started.elapsed() + delay <= max_elapsed).then_some(delay)
            })
            .notify(|error, delay| {
                let cause = if matches!(error, EmbedError::RateLimited { .. }) { "rate_limited" } else { "transient" };
                metrics::MODEL_RETRIES.with_label_values(&[self.service, cause]).inc();
                if self.service == "embedding" {
                    metrics::EMBED_REQUESTS.with_label_values(&["retry"]).inc();
                }
                let service = self.service;
                tracing::warn!(service, %error, delay_ms = delay.as_millis() as u64, "model request failed; retrying");
            })
            .await;
        result.map_err(|error| match error {
            EmbedError::RateLimited { .. } | EmbedError::Transient { .. } => EmbedError::transient(format!(
                "{error} (gave up retrying after {:.1} s; [embedder] max_elapsed_secs = {})",
                started.elapsed().as_secs_f64(),
                max_elapsed.as_secs()
            )),
            other => other,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(1),
            max_elapsed: Duration::from_secs(10),
            service: "embedding",
        }
    }

    #[tokio::test(start_paused = true)]
    async fn retries_transient_errors_with_growing_delays_until_success() {
        let attempts = Mutex::new(Vec::new());
        let start = Instant::now();
        let result = policy()
            .run(|| {
                let n = {
                    let mut a = attempts.lock().expect("lock");
                    a.push(start.elapsed());
                    a.len()
                };
                async move { if n < 4 { Err(EmbedError::transient("HTTP 500")) } else { Ok(n) } }
            })
            .await;
        assert_eq!(result, Ok(4));
        let at = attempts.into_inner().expect("lock");
        let gaps: Vec<Duration> = at.windows(2).map(|w| w[1] - w[0]).collect();
        // Delay k is 100 ms·2^k plus up to 100 % jitter, capped at 1 s before jitter.
        for (k, gap) in gaps.iter().enumerate() {
            let base = Duration::from_millis(100 * (1 << k)).min(Duration::from_secs(1));
            assert!(*gap >= base && *gap <= base * 2, "gap {k} = {gap:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_server_given_delay_wins_over_the_backoff() {
        let calls = Mutex::new(0);
        let start = Instant::now();
        let result = policy()
            .run(|| {
                let n = {
                    let mut c = calls.lock().expect("lock");
                    *c += 1;
                    *c
                };
                async move {
                    if n == 1 {
                        Err(EmbedError::RateLimited { retry_after: Some(Duration::from_secs(7)) })
                    } else {
                        Ok(())
                    }
                }
            })
            .await;
        assert_eq!(result, Ok(()));
        assert_eq!(start.elapsed(), Duration::from_secs(7));
    }

    #[tokio::test(start_paused = true)]
    async fn gives_up_at_the_deadline_and_stops_at_permanent_errors() {
        let start = Instant::now();
        let result: Result<(), _> = policy().run(|| async { Err(EmbedError::transient("HTTP 503")) }).await;
        let Err(EmbedError::Transient { reason, .. }) = result else { panic!("must give up transiently: {result:?}") };
        assert!(reason.contains("gave up retrying"), "{reason}");
        assert!(start.elapsed() <= Duration::from_secs(10));
        // A delay beyond the deadline is not waited for at all.
        let start = Instant::now();
        let far = || async { Err::<(), _>(EmbedError::RateLimited { retry_after: Some(Duration::from_secs(60)) }) };
        assert!(policy().run(far).await.is_err());
        assert_eq!(start.elapsed(), Duration::ZERO);
        let calls = Mutex::new(0);
        let permanent: Result<(), _> = policy()
            .run(|| {
                *calls.lock().expect("lock") += 1;
                async { Err(EmbedError::permanent("embedding_auth", "bad key")) }
            })
            .await;
        assert!(matches!(permanent, Err(EmbedError::Permanent { code: "embedding_auth", .. })));
        assert_eq!(calls.into_inner().expect("lock"), 1);
    }
}
