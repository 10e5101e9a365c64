//! Retention per tier (the tenant service's entitlements): days of timeline kept.

/// Retention when a tenant's tier is not known (yet).
pub const DEFAULT_RETENTION_DAYS: i32 = 180;

pub fn retention_days(tier: &str) -> i32 {
    match tier {
        "low" => 30,
        "mid" => 90,
        "high" => 180,
        "business" => 365,
        _ => DEFAULT_RETENTION_DAYS,
    }
}

/// The longest retention of any tier: partitions older than this can only hold legal holds.
pub const MAX_RETENTION_DAYS: i32 = 365;
