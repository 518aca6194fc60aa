//! Every metric the gateway records, named once.

/// Calls refused for missing or bad credentials, by reason.
pub const AUTH_FAILURES: &str = "zentra_gateway_auth_failures_total";
/// Calls refused for an insufficient role.
pub const PERMISSION_DENIED: &str = "zentra_gateway_permission_denied_total";
/// Calls refused by the rate limiter, by route and by the budget that was spent.
pub const RATE_LIMITED: &str = "zentra_gateway_rate_limited_total";
/// Limit checks that found Redis unreachable, by policy applied.
pub const RATE_LIMIT_UNAVAILABLE: &str = "zentra_gateway_rate_limit_unavailable_total";
/// Forwarded calls that could not reach their service, by upstream.
pub const UPSTREAM_ERRORS: &str = "zentra_gateway_upstream_errors_total";

/// Registers descriptions with the metrics recorder.
pub fn describe() {
    metrics::describe_counter!(AUTH_FAILURES, "calls refused as UNAUTHENTICATED, by reason");
    metrics::describe_counter!(
        PERMISSION_DENIED,
        "calls refused as PERMISSION_DENIED, by route"
    );
    metrics::describe_counter!(
        RATE_LIMITED,
        "calls refused as RESOURCE_EXHAUSTED by the rate limiter, by route and budget (address, caller, route)"
    );
    metrics::describe_counter!(
        RATE_LIMIT_UNAVAILABLE,
        "rate-limit checks that could not reach Redis, by the policy applied"
    );
    metrics::describe_counter!(
        UPSTREAM_ERRORS,
        "forwarded calls whose service was unreachable, by upstream"
    );
}
