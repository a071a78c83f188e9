//! The rate governor: requests/min and tokens/min budgets for **all** workers together, so a
//! fleet never stampedes the API. The embedding provider has one, the answering model another.
//!
//! Each budget is a token bucket holding at most one second's worth (a fleet starts at the
//! sustained rate rather than bursting a minute's budget at once) and refilling continuously.
//! A request larger than the bucket waits for a full bucket and leaves it in debt, which later
//! requests wait out, so the long-run rate holds for any request size. In distributed mode the
//! buckets live in Redis (one atomic Lua script, clock from the Redis server, keys under
//! `[cache] key_prefix`); without `[cache] url`, or while Redis is unreachable, a local bucket
//! takes over (and the outage is logged once). A budget of 0 is unlimited.

use std::hash::{BuildHasher, RandomState};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use crate::cache::redis::RedisLink;
use crate::config::{CacheSettings, EmbedderSettings};

/// Checks both buckets with the server's clock; takes from both only if both allow, otherwise
/// returns the milliseconds to wait. Mirrors [`Bucket`].
const SCRIPT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local per = {tonumber(ARGV[1]), tonumber(ARGV[2])}
local cost = {1, tonumber(ARGV[3])}
local state = {}
local wait = 0
for i = 1, 2 do
  if per[i] > 0 then
    local cap = math.max(per[i] / 60, 1)
    local rate = per[i] / 60000
    local v = redis.call('HMGET', KEYS[i], 'level', 'at')
    local level = tonumber(v[1]) or cap
    local at = tonumber(v[2]) or now
    level = math.min(cap, level + math.max(0, now - at) * rate)
    local need = math.min(cost[i], cap)
    if level < need then wait = math.max(wait, math.ceil((need - level) / rate)) end
    state[i] = {level = level, cap = cap, rate = rate}
  end
end
if wait > 0 then return wait end
for i = 1, 2 do
  local s = state[i]
  if s then
    local level = s.level - cost[i]
    redis.call('HSET', KEYS[i], 'level', tostring(level), 'at', tostring(now))
    redis.call('PEXPIRE', KEYS[i], math.ceil((s.cap - level) / s.rate) + 1000)
  end
end
return 0
";

/// [`Governor::new`]'s `what` for the embedding provider.
pub const EMBEDDING: &str = "embedding";
/// [`Governor::new`]'s `what` for the answering model.
pub const LLM: &str = "LLM";

/// Per-minute budgets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budgets {
    /// Requests per minute (0 = unlimited).
    pub requests_per_minute: u64,
    /// Tokens per minute (0 = unlimited).
    pub tokens_per_minute: u64,
}

/// One token bucket (the local twin of the Lua script's).
#[derive(Debug, Clone)]
struct Bucket {
    capacity: f64,
    per_ms: f64,
    level: f64,
    at: Instant,
}

impl Bucket {
    fn new(per_minute: u64, now: Instant) -> Option<Self> {
        let per_minute = per_minute as f64;
        let capacity = (per_minute / 60.0).max(1.0);
        (per_minute > 0.0).then_some(Self { capacity, per_ms: per_minute / 60_000.0, level: capacity, at: now })
    }

    fn refill(&mut self, now: Instant) {
        let elapsed_ms = now.saturating_duration_since(self.at).as_secs_f64() * 1000.0;
        self.level = (self.level + elapsed_ms * self.per_ms).min(self.capacity);
        self.at = now;
    }

    /// Time until `cost` may be taken.
    fn wait(&self, cost: f64) -> Duration {
        let need = cost.min(self.capacity);
        if self.level >= need {
            Duration::ZERO
        } else {
            Duration::from_secs_f64((need - self.level) / self.per_ms / 1000.0)
        }
    }
}

/// Local buckets: embedded mode, and the fallback while Redis is down.
#[derive(Debug)]
struct Local {
    requests: Option<Bucket>,
    tokens: Option<Bucket>,
}

impl Local {
    fn try_take(&mut self, tokens: u64, now: Instant) -> Result<(), Duration> {
        let mut wait = Duration::ZERO;
        for (bucket, cost) in [(&mut self.requests, 1.0), (&mut self.tokens, tokens as f64)] {
            if let Some(b) = bucket {
                b.refill(now);
                wait = wait.max(b.wait(cost));
            }
        }
        if !wait.is_zero() {
            return Err(wait);
        }
        for (bucket, cost) in [(&mut self.requests, 1.0), (&mut self.tokens, tokens as f64)] {
            if let Some(b) = bucket {
                b.level -= cost;
            }
        }
        Ok(())
    }
}

/// The shared buckets in Redis.
struct Shared {
    link: RedisLink,
    keys: [String; 2],
    script: redis::Script,
    degraded: AtomicBool,
}

/// Requests/min and tokens/min for every worker sharing a Redis prefix, or for this process.
pub struct Governor {
    budgets: Budgets,
    /// What the budget is for, in log lines (`embedding`, `LLM`).
    what: &'static str,
    /// The same, as the label of the rate-limit wait metric (`embedding`, `llm`).
    metric: &'static str,
    local: Mutex<Local>,
    shared: Option<Shared>,
}

impl Governor {
    /// A governor with `budgets` for `what` (`embedding`, `LLM`), shared through Redis if
    /// `cache.url` is set. Buckets are per `what` and `model`, so workers of different models do
    /// not share a budget.
    pub fn new(budgets: Budgets, what: &'static str, model: &str, cache: &CacheSettings) -> Self {
        let now = Instant::now();
        let local = Local {
            requests: Bucket::new(budgets.requests_per_minute, now),
            tokens: Bucket::new(budgets.tokens_per_minute, now),
        };
        let shared = cache.url.as_ref().map(|url| Shared {
            link: RedisLink::new(url, Duration::from_millis(cache.timeout_ms.max(1))),
            // One hash tag, so both keys share a Redis Cluster slot (a script may only touch one).
            keys: ["requests", "tokens"].map(|b| {
                // (The embedding keys kept their original name, so a rolling upgrade shares them.)
                let scope = if what == EMBEDDING { "embed" } else { "llm" };
                format!("{}{scope}-governor:{{{model}}}:{b}", cache.key_prefix)
            }),
            script: redis::Script::new(SCRIPT),
            degraded: AtomicBool::new(false),
        });
        let metric = if what == EMBEDDING { "embedding" } else { "llm" };
        Self { budgets, what, metric, local: Mutex::new(local), shared }
    }

    /// The governor of `[embedder]` budgets and `[cache]`.
    pub fn from_settings(embedder: &EmbedderSettings, cache: &CacheSettings) -> Self {
        let budgets = Budgets {
            requests_per_minute: embedder.requests_per_minute,
            tokens_per_minute: embedder.tokens_per_minute,
        };
        Self::new(budgets, EMBEDDING, &embedder.model, cache)
    }

    /// Waits until one request of `tokens` tokens fits both budgets, and takes it.
    pub async fn acquire(&self, tokens: u64) {
        if self.budgets.requests_per_minute == 0 && self.budgets.tokens_per_minute == 0 {
            return;
        }
        loop {
            let wait = match &self.shared {
                Some(shared) => match shared.try_take(self.budgets, tokens, self.what).await {
                    Ok(wait) => wait,
                    Err(()) => self.try_local(tokens),
                },
                None => self.try_local(tokens),
            };
            if wait.is_zero() {
                return;
            }
            // A little jitter so workers waiting for the same refill do not all ask at once.
            let jitter = Duration::from_millis(RandomState::new().hash_one(0u8) % (wait.as_millis() as u64 / 10 + 2));
            crate::telemetry::metrics::RATE_LIMIT_WAIT
                .with_label_values(&[self.metric])
                .inc_by((wait + jitter).as_secs_f64());
            tokio::time::sleep(wait + jitter).await;
        }
    }

    fn try_local(&self, tokens: u64) -> Duration {
        let mut local = self.local.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        local.try_take(tokens, Instant::now()).err().unwrap_or(Duration::ZERO)
    }
}

impl Shared {
    /// The wait the shared buckets ask for, or `Err` if Redis cannot answer (use local ones).
    async fn try_take(&self, budgets: Budgets, tokens: u64, what: &str) -> Result<Duration, ()> {
        let mut manager = match self.link.manager().await {
            Ok(manager) => manager,
            Err(reason) => {
                if let Some(reason) = reason {
                    self.degrade(&reason, what);
                }
                return Err(());
            }
        };
        let mut call = self.script.prepare_invoke();
        call.key(&self.keys[0])
            .key(&self.keys[1])
            .arg(budgets.requests_per_minute)
            .arg(budgets.tokens_per_minute)
            .arg(tokens);
        match tokio::time::timeout(self.link.timeout(), call.invoke_async::<u64>(&mut manager)).await {
            Ok(Ok(wait_ms)) => {
                if self.degraded.swap(false, Ordering::Relaxed) {
                    tracing::info!("redis is back: the {what} rate budget is shared again");
                }
                Ok(Duration::from_millis(wait_ms))
            }
            Ok(Err(error)) => {
                self.degrade(&error, what);
                Err(())
            }
            Err(_) => {
                self.degrade(&"timed out", what);
                Err(())
            }
        }
    }

    fn degrade(&self, error: &dyn std::fmt::Display, what: &str) {
        if !self.degraded.swap(true, Ordering::Relaxed) {
            tracing::warn!(%error, "redis unavailable: the {what} rate budget is enforced per worker until it is back");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn local(rpm: u64, tpm: u64) -> Governor {
        Governor::new(
            Budgets { requests_per_minute: rpm, tokens_per_minute: tpm },
            EMBEDDING,
            "m",
            &CacheSettings::default(),
        )
    }

    #[tokio::test(start_paused = true)]
    async fn requests_per_minute_hold_after_a_one_second_burst() {
        let governor = local(600, 0);
        let start = Instant::now();
        for _ in 0..30 {
            governor.acquire(0).await;
        }
        // 10 at once (one second's worth), then 10 per second: the 30th at about 2 s.
        let elapsed = start.elapsed();
        assert!(elapsed >= Duration::from_secs(2) && elapsed < Duration::from_millis(2500), "{elapsed:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn tokens_per_minute_hold_and_an_oversized_request_goes_into_debt() {
        let governor = local(0, 6_000); // 100 tokens/s, bucket of 100
        let start = Instant::now();
        governor.acquire(100).await;
        assert!(start.elapsed() < Duration::from_millis(10));
        // Bigger than the bucket: waits for a full bucket (1 s), then leaves 400 tokens of debt.
        governor.acquire(500).await;
        let after_big = start.elapsed();
        assert!(after_big >= Duration::from_secs(1) && after_big < Duration::from_millis(1200), "{after_big:?}");
        governor.acquire(50).await;
        // The debt (400) and the request (50) take 4.5 s more at 100 tokens/s.
        let elapsed = start.elapsed();
        assert!(elapsed >= Duration::from_millis(5500) && elapsed < Duration::from_millis(6200), "{elapsed:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn zero_budgets_are_unlimited() {
        let governor = local(0, 0);
        let start = Instant::now();
        for _ in 0..10_000 {
            governor.acquire(1_000_000).await;
        }
        assert_eq!(start.elapsed(), Duration::ZERO);
    }
}
