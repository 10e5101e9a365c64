//! `keelctl billing …`: usage metering in the billing meter (`keel-billing`). Record usage
//! events (`record`, for operators and collectors), read a tenant's usage (`usage`) and the
//! estimated cost of a month (`estimate`), list and define meters (`meters`), and reconcile a
//! month's usage records with what was exported (`reconcile`, operator).
//!
//! The access token comes from the tenant service as for every command and is sent to the
//! billing meter (`--billing-addr`): `usage:write` to record, `billing:read` to read a tenant's
//! usage; operators may do everything.

mod cost;
mod meters;
mod usage;

use std::time::Duration;

use chrono::{DateTime, Datelike, TimeZone, Utc};
use clap::{Subcommand, ValueEnum};
use keel_proto::v1 as pb;
use keel_proto::v1::meter_service_client::MeterServiceClient;

use crate::client::{self, Authed, ConnectionArgs, Session};
use crate::output::Format;
use crate::timeline::view;

/// Unary calls give up after this long.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Subcommand)]
pub enum BillingCommand {
    /// A tenant's usage of one meter per hour, day or month (UTC). Default period: the current
    /// month so far.
    Usage(usage::UsageArgs),
    /// The estimated cost of a tenant's usage in a month at its tier's prices (default: the
    /// current month, live so far).
    Estimate {
        /// Tenant id or slug (a slug is looked up in the tenant service: needs tenant:read).
        #[arg(long, value_parser = tenant_arg)]
        tenant: String,
        /// The month, `YYYY-MM` (UTC).
        #[arg(long, value_name = "YYYY-MM", value_parser = month_arg)]
        month: Option<String>,
    },
    /// The meters usage can name: the platform's own and the custom ones; `meters create`
    /// defines one (operator).
    Meters(meters::MetersArgs),
    /// Per tenant and meter, a month's usage records as recorded, exported to the billing queue
    /// and acknowledged by it, with the differences (operator).
    Reconcile {
        /// The month, `YYYY-MM` (UTC).
        #[arg(long, value_name = "YYYY-MM", value_parser = month_arg)]
        month: String,
        /// Only this tenant (id, or slug: looked up in the tenant service).
        #[arg(long, value_parser = tenant_arg)]
        tenant: Option<String>,
    },
    /// Send usage events: one from flags, or many from a JSON file (CloudEvents, as on
    /// `keel.usage.<tenant>`). Counted once by (tenant, source, id), however often sent.
    Record(usage::RecordArgs),
}

#[derive(Clone, Copy, Debug, Default, ValueEnum)]
pub enum GranularityArg {
    #[default]
    Hour,
    Day,
    Month,
}

impl From<GranularityArg> for pb::Granularity {
    fn from(g: GranularityArg) -> Self {
        match g {
            GranularityArg::Hour => pb::Granularity::Hour,
            GranularityArg::Day => pb::Granularity::Day,
            GranularityArg::Month => pb::Granularity::Month,
        }
    }
}

/// The billing meter, authenticated, and the session that can still reach the tenant service
/// to turn a slug into a tenant id.
pub struct Api {
    pub meters: MeterServiceClient<Authed>,
    session: Session,
}

impl Api {
    pub async fn connect(conn: &ConnectionArgs) -> anyhow::Result<Self> {
        let session = Session::open(conn).await?;
        let channel = client::billing_channel(conn).await?;
        Ok(Self {
            meters: MeterServiceClient::with_interceptor(channel, session.bearer.clone()),
            session,
        })
    }

    pub async fn tenant_id(&mut self, tenant: &str) -> anyhow::Result<String> {
        self.session.tenant_id(tenant).await
    }
}

/// A unary request that gives up after [`CALL_TIMEOUT`] (sent as `grpc-timeout`).
fn call<T>(message: T) -> tonic::Request<T> {
    let mut req = tonic::Request::new(message);
    req.set_timeout(CALL_TIMEOUT);
    req
}

pub async fn run(cmd: BillingCommand, conn: &ConnectionArgs, format: Format) -> anyhow::Result<()> {
    match cmd {
        BillingCommand::Usage(args) => usage::usage(args, conn, format).await,
        BillingCommand::Record(args) => usage::record(args, conn, format).await,
        BillingCommand::Meters(args) => meters::run(args, conn, format).await,
        BillingCommand::Estimate { tenant, month } => {
            cost::estimate(&tenant, month.unwrap_or_default(), conn, format).await
        }
        BillingCommand::Reconcile { month, tenant } => {
            cost::reconcile(month, tenant.as_deref(), conn, format).await
        }
    }
}

/// `--tenant`: a slug, or a tenant id (1-64 of `[A-Za-z0-9_-]`).
fn tenant_arg(s: &str) -> Result<String, String> {
    if client::is_slug(s) || keel_events::subjects::is_valid_token(s) {
        Ok(s.to_owned())
    } else {
        Err("must be a tenant slug or id (1-64 of [A-Za-z0-9_-])".into())
    }
}

/// `--month`: `YYYY-MM`, a real month.
fn month_arg(s: &str) -> Result<String, String> {
    month_start(s)
        .map(|_| s.to_owned())
        .ok_or_else(|| format!("expected a month as YYYY-MM (2026-11), got {s:?}"))
}

/// The first instant of `YYYY-MM` (UTC).
fn month_start(s: &str) -> Option<DateTime<Utc>> {
    let (y, m) = s.split_once('-')?;
    if y.len() != 4 || m.len() != 2 || !(y.bytes().chain(m.bytes())).all(|b| b.is_ascii_digit()) {
        return None;
    }
    Utc.with_ymd_and_hms(y.parse().ok()?, m.parse().ok()?, 1, 0, 0, 0)
        .single()
}

/// The first instant of the month `t` falls in.
fn month_of(t: DateTime<Utc>) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(t.year(), t.month(), 1, 0, 0, 0)
        .single()
        .unwrap_or(t)
}

/// `--meter` and property names: 1-64 of `[a-z0-9_]`, starting with a letter.
fn name_arg(s: &str) -> Result<String, String> {
    let mut chars = s.chars();
    let ok = s.len() <= 64
        && chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if ok {
        Ok(s.to_owned())
    } else {
        Err("must be 1-64 of [a-z0-9_], starting with a letter".into())
    }
}

fn to_chrono(t: &prost_types::Timestamp) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp(t.seconds, u32::try_from(t.nanos).ok()?)
}

fn to_proto(t: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: t.timestamp(),
        nanos: i32::try_from(t.timestamp_subsec_nanos()).unwrap_or(0),
    }
}

/// `--time`, `--from`, `--to`, `--as-of`: RFC 3339.
fn time_arg(s: &str) -> Result<DateTime<Utc>, String> {
    view::parse_time(s).and_then(|t| to_chrono(&t).ok_or_else(|| "out of range".into()))
}

/// A decimal as the service takes it: digits with an optional sign and fraction, no exponent.
fn decimal(s: &str) -> Option<rust_decimal::Decimal> {
    let digits = s.strip_prefix('-').unwrap_or(s);
    let (int, frac) = digits.split_once('.').unwrap_or((digits, "0"));
    let plain =
        !int.is_empty() && !frac.is_empty() && int.bytes().chain(frac.bytes()).all(|b| b.is_ascii_digit());
    if !plain {
        return None;
    }
    s.parse().ok()
}

/// `a - b` of two decimals from the service, or `?` when either is not one.
fn difference(a: &str, b: &str) -> String {
    let zero = |s: &str| {
        if s.is_empty() {
            "0".to_owned()
        } else {
            s.to_owned()
        }
    };
    match (decimal(&zero(a)), decimal(&zero(b))) {
        (Some(a), Some(b)) => (a - b).normalize().to_string(),
        _ => "?".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn months_are_real_and_written_yyyy_mm() {
        assert_eq!(
            month_start("2026-11").map(|t| t.to_rfc3339()).as_deref(),
            Some("2026-11-01T00:00:00+00:00")
        );
        for bad in [
            "2026-13",
            "2026-00",
            "26-11",
            "2026-1",
            "2026/11",
            "2026-11-01",
            "",
            "abcd-ef",
        ] {
            assert!(month_arg(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn decimals_are_plain_and_differences_exact() {
        assert!(decimal("12.5").is_some() && decimal("-3").is_some() && decimal("0.000001").is_some());
        for bad in ["NaN", "1e3", "1.", ".5", "", "-", "1,5", "inf", "+1"] {
            assert!(decimal(bad).is_none(), "{bad}");
        }
        assert_eq!(difference("10.5", "0.25"), "10.25");
        assert_eq!(difference("3", ""), "3");
        assert_eq!(difference("3", "3.000"), "0");
        assert_eq!(difference("x", "1"), "?");
    }

    #[test]
    fn tenants_are_slugs_or_ids_never_wildcards() {
        assert!(tenant_arg("acme").is_ok());
        assert!(tenant_arg("0192f0c0-aaaa-7bbb-8ccc-dddddddddddd").is_ok());
        for bad in ["*", ">", "a.b", "a b", ""] {
            assert!(tenant_arg(bad).is_err(), "{bad}");
        }
    }
}
