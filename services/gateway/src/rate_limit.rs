//! Distributed rate limiting: GCRA per caller and route, decided atomically in Redis by one
//! script call, on Redis's clock, so every gateway instance draws on the same budget.

use std::time::Duration;

use deadpool_redis::{Pool, Runtime};
use futures::{FutureExt as _, future::BoxFuture};
use zentra_runtime::ops::DependencyProbe;

use crate::{
    config::{Limit, RateLimitSettings, UnavailablePolicy},
    metric_names,
};

/// GCRA: the bucket stores the theoretical arrival time (TAT) of the next call in microseconds.
/// A call is allowed while it would not push the TAT more than `burst` intervals past now.
/// Returns `{1, 0}` when allowed, `{0, retry_after_ms}` when not.
const GCRA: &str = r"
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local next_tat = tat + interval
local tolerance = interval * burst
if next_tat - now > tolerance then
  return {0, math.ceil((next_tat - tolerance - now) / 1000)}
end
redis.call('SET', KEYS[1], string.format('%d', next_tat), 'PX', math.ceil((next_tat - now) / 1000) + 1)
return {1, 0}
";

/// What the limiter decided about one call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Go ahead.
    Allowed,
    /// Over the limit: try again after this long.
    Limited {
        /// When a call would be allowed again.
        retry_after: Duration,
    },
    /// Redis did not answer and the policy is to refuse.
    Refused,
}

/// The limiter; cheap to clone.
#[derive(Clone)]
pub struct RateLimiter {
    pool: Pool,
    script: redis::Script,
    settings: RateLimitSettings,
}

impl RateLimiter {
    /// Builds the pool (connections open on first use, so a missing Redis does not stop start-up).
    pub fn new(settings: RateLimitSettings) -> anyhow::Result<Self> {
        let mut config = deadpool_redis::Config::from_url(settings.redis_url.expose());
        config.pool = Some(deadpool_redis::PoolConfig {
            max_size: 32,
            timeouts: deadpool_redis::Timeouts {
                wait: Some(settings.timeout),
                create: Some(settings.timeout),
                recycle: Some(settings.timeout),
            },
            ..Default::default()
        });
        let pool = config.create_pool(Some(Runtime::Tokio1))?;
        Ok(Self {
            pool,
            script: redis::Script::new(GCRA),
            settings,
        })
    }

    /// The limit that applies to `route`.
    pub fn limit_of(&self, route: &str) -> Limit {
        self.settings
            .routes
            .get(route)
            .copied()
            .unwrap_or(self.settings.default)
    }

    /// Decides one call of `caller` on `route`.
    pub async fn check(&self, caller: &str, route: &str) -> Decision {
        if !self.settings.enabled {
            return Decision::Allowed;
        }
        let limit = self.limit_of(route);
        let interval_us = (1_000_000.0 / limit.per_second).ceil().max(1.0) as u64;
        let key = format!("{}rl:{caller}:{route}", self.settings.key_prefix);
        let call = async {
            let mut connection = self.pool.get().await.map_err(|error| error.to_string())?;
            self.script
                .key(&key)
                .arg(interval_us)
                .arg(limit.burst)
                .invoke_async::<(i64, i64)>(&mut connection)
                .await
                .map_err(|error| error.to_string())
        };
        match tokio::time::timeout(self.settings.timeout, call).await {
            Ok(Ok((1, _))) => Decision::Allowed,
            Ok(Ok((_, retry_after_ms))) => {
                metrics::counter!(metric_names::RATE_LIMITED, "route" => route.to_owned())
                    .increment(1);
                Decision::Limited {
                    retry_after: Duration::from_millis(retry_after_ms.max(1) as u64),
                }
            }
            Ok(Err(error)) => self.unavailable(&error),
            Err(_) => self.unavailable(&format!("no answer within {:?}", self.settings.timeout)),
        }
    }

    fn unavailable(&self, error: &str) -> Decision {
        let policy = self.settings.when_unavailable;
        metrics::counter!(
            metric_names::RATE_LIMIT_UNAVAILABLE,
            "policy" => match policy {
                UnavailablePolicy::FailOpen => "fail_open",
                UnavailablePolicy::FailClosed => "fail_closed",
            }
        )
        .increment(1);
        tracing::warn!(%error, ?policy, "rate limiter cannot reach redis");
        match policy {
            UnavailablePolicy::FailOpen => Decision::Allowed,
            UnavailablePolicy::FailClosed => Decision::Refused,
        }
    }
}

/// Redis in the gateway's health summary.
pub struct RedisProbe(pub Pool);

impl DependencyProbe for RedisProbe {
    fn name(&self) -> &'static str {
        "redis"
    }

    fn probe(&self) -> BoxFuture<'_, Result<(), String>> {
        async move {
            let mut connection = self.0.get().await.map_err(|error| error.to_string())?;
            redis::cmd("PING")
                .query_async::<String>(&mut connection)
                .await
                .map(drop)
                .map_err(|error| error.to_string())
        }
        .boxed()
    }
}

impl RateLimiter {
    /// A health probe over the limiter's pool.
    pub fn probe(&self) -> RedisProbe {
        RedisProbe(self.pool.clone())
    }
}
