//! Distributed rate limiting: GCRA buckets decided atomically in Redis by one script call, on
//! Redis's clock, so every gateway instance draws on the same budget. A call spends from up to
//! three buckets at once (its client address, its caller across routes, its caller on its
//! route) and is allowed only if every one has room, in one round trip.

use std::{net::IpAddr, time::Duration};

use deadpool_redis::{Pool, Runtime};
use futures::{FutureExt as _, future::BoxFuture};
use zentra_runtime::ops::DependencyProbe;

use crate::{
    config::{Limit, RateLimitSettings, UnavailablePolicy},
    metric_names,
};

/// GCRA over every key: a bucket stores the theoretical arrival time (TAT) of its next call in
/// microseconds, and a call fits while it would not push the TAT more than `burst` intervals
/// past now. ARGV holds `interval, burst` per key. All buckets are checked before any is spent.
/// Returns `{1, 0, 0}` when allowed, `{0, retry_after_ms, index}` naming the first full bucket.
const GCRA: &str = r"
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local next_tats = {}
for i, key in ipairs(KEYS) do
  local interval = tonumber(ARGV[2 * i - 1])
  local burst = tonumber(ARGV[2 * i])
  local tat = tonumber(redis.call('GET', key) or now)
  if tat < now then tat = now end
  local next_tat = tat + interval
  local tolerance = interval * burst
  if next_tat - now > tolerance then
    return {0, math.ceil((next_tat - tolerance - now) / 1000), i}
  end
  next_tats[i] = next_tat
end
for i, key in ipairs(KEYS) do
  redis.call('SET', key, string.format('%d', next_tats[i]), 'PX', math.ceil((next_tats[i] - now) / 1000) + 1)
end
return {1, 0, 0}
";

/// Which budget a bucket is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Budget {
    /// One client address, credentials right or wrong.
    Address,
    /// One caller, every route together.
    Caller,
    /// One caller on one route.
    Route,
}

impl Budget {
    /// As in metrics and messages.
    pub fn label(self) -> &'static str {
        match self {
            Self::Address => "address",
            Self::Caller => "caller",
            Self::Route => "route",
        }
    }
}

/// A call over a limit: which one, and when to try again.
#[derive(Debug, Clone, PartialEq)]
pub struct Limited {
    /// When a call would be allowed again.
    pub retry_after: Duration,
    /// The budget that is spent.
    pub budget: Budget,
    /// Its limit.
    pub limit: Limit,
}

/// What the limiter decided about one call.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Go ahead.
    Allowed,
    /// Over a limit.
    Limited(Limited),
    /// Redis did not answer and the policy is to refuse.
    Refused,
}

/// Who is calling what, as far as the limiter cares.
#[derive(Debug, Clone, Copy)]
pub struct Call<'a> {
    /// The client's address, when known.
    pub address: Option<IpAddr>,
    /// The authenticated caller; `None` when its credentials were wrong or missing.
    pub caller: Option<&'a str>,
    /// The RPC path.
    pub route: &'a str,
    /// An operator or admin action (fails closed by default when Redis is away).
    pub action: bool,
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

    /// The buckets a call spends from.
    fn buckets(&self, call: &Call<'_>) -> Vec<(String, Limit, Budget)> {
        let prefix = &self.settings.key_prefix;
        let mut buckets = Vec::with_capacity(3);
        if let Some(address) = call.address {
            buckets.push((
                format!("{prefix}rl:addr:{address}"),
                self.settings.per_address,
                Budget::Address,
            ));
        }
        if let Some(caller) = call.caller {
            buckets.push((
                format!("{prefix}rl:caller:{caller}"),
                self.settings.per_caller,
                Budget::Caller,
            ));
            buckets.push((
                format!("{prefix}rl:{caller}:{}", call.route),
                self.limit_of(call.route),
                Budget::Route,
            ));
        }
        buckets
    }

    /// Decides one call.
    pub async fn check(&self, call: Call<'_>) -> Decision {
        if !self.settings.enabled {
            return Decision::Allowed;
        }
        let buckets = self.buckets(&call);
        if buckets.is_empty() {
            return Decision::Allowed;
        }
        let attempt = async {
            let mut connection = self.pool.get().await.map_err(|error| error.to_string())?;
            let mut invocation = self.script.prepare_invoke();
            for (key, limit, _) in &buckets {
                let interval_us = (1_000_000.0 / limit.per_second).ceil().max(1.0) as u64;
                invocation.key(key).arg(interval_us).arg(limit.burst);
            }
            invocation
                .invoke_async::<(i64, i64, i64)>(&mut connection)
                .await
                .map_err(|error| error.to_string())
        };
        match tokio::time::timeout(self.settings.timeout, attempt).await {
            Ok(Ok((1, _, _))) => Decision::Allowed,
            Ok(Ok((_, retry_after_ms, index))) => {
                let (_, limit, budget) = usize::try_from(index - 1)
                    .ok()
                    .and_then(|index| buckets.get(index))
                    .cloned()
                    .unwrap_or_else(|| (String::new(), self.limit_of(call.route), Budget::Route));
                metrics::counter!(
                    metric_names::RATE_LIMITED,
                    "route" => call.route.to_owned(),
                    "budget" => budget.label()
                )
                .increment(1);
                Decision::Limited(Limited {
                    retry_after: Duration::from_millis(retry_after_ms.max(1) as u64),
                    budget,
                    limit,
                })
            }
            Ok(Err(error)) => self.unavailable(&error, call.action),
            Err(_) => self.unavailable(
                &format!("no answer within {:?}", self.settings.timeout),
                call.action,
            ),
        }
    }

    fn unavailable(&self, error: &str, action: bool) -> Decision {
        let policy = if action {
            self.settings.when_unavailable_for_actions
        } else {
            self.settings.when_unavailable
        };
        metrics::counter!(
            metric_names::RATE_LIMIT_UNAVAILABLE,
            "policy" => match policy {
                UnavailablePolicy::FailOpen => "fail_open",
                UnavailablePolicy::FailClosed => "fail_closed",
            }
        )
        .increment(1);
        tracing::warn!(%error, ?policy, action, "rate limiter cannot reach redis");
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
