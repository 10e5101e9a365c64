//! The timeline table: monthly range partitions on `ts` (plus a default partition), row-level
//! security by tenant, indexes for the query shapes.

use chrono::{Datelike, NaiveDate, Utc};
use sqlx::PgConnection;

use crate::error::{Error, Result};

/// Table names are generated here; refuse anything else before it reaches SQL.
pub fn check_name(name: &str) -> Result<()> {
    let ok = name.len() <= 40
        && name.starts_with("timeline_")
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(Error::Internal(format!("bad table name {name:?}")))
    }
}

pub async fn create_table(conn: &mut PgConnection, name: &str) -> Result<()> {
    check_name(name)?;
    let statements = [
        format!(
            "CREATE TABLE IF NOT EXISTS {name} (
                seq           bigint      NOT NULL DEFAULT nextval('timeline_seq'),
                tx_id         xid8        NOT NULL DEFAULT pg_current_xact_id(),
                event_id      uuid        NOT NULL,
                ts            timestamptz NOT NULL,
                tenant_id     text        NOT NULL,
                project_id    text        NOT NULL,
                kind          text        NOT NULL,
                actor         text        NOT NULL,
                resource_type text        NOT NULL,
                resource_id   text        NOT NULL,
                trace_id      text        NOT NULL,
                result        text        NOT NULL,
                digest        text        NOT NULL,
                details       jsonb       NOT NULL,
                stored        jsonb       NOT NULL,
                source        text        NOT NULL,
                PRIMARY KEY (tenant_id, ts, event_id)
            ) PARTITION BY RANGE (ts)"
        ),
        format!("CREATE TABLE IF NOT EXISTS {name}_default PARTITION OF {name} DEFAULT"),
        format!(
            "CREATE INDEX IF NOT EXISTS {name}_resource ON {name} (tenant_id, resource_type, resource_id, ts DESC)"
        ),
        format!("CREATE INDEX IF NOT EXISTS {name}_trace ON {name} (tenant_id, trace_id)"),
        format!("CREATE INDEX IF NOT EXISTS {name}_kind ON {name} (tenant_id, kind, ts DESC)"),
        format!("CREATE INDEX IF NOT EXISTS {name}_event ON {name} (tenant_id, event_id)"),
        format!("CREATE INDEX IF NOT EXISTS {name}_tail ON {name} (tx_id, seq)"),
        format!("ALTER TABLE {name} ENABLE ROW LEVEL SECURITY"),
        format!("DROP POLICY IF EXISTS tenant_isolation ON {name}"),
        format!(
            "CREATE POLICY tenant_isolation ON {name} USING (tenant_id = current_setting('keel.tenant_id', true))"
        ),
        format!("GRANT SELECT ON {name} TO keel_timeline_reader"),
    ];
    for sql in statements {
        sqlx::query(&sql).execute(&mut *conn).await?;
    }
    ensure_partitions(conn, name, -1, 2).await
}

fn month_start(year: i32, month: u32) -> NaiveDate {
    NaiveDate::from_ymd_opt(year, month, 1).unwrap_or_default()
}

fn add_months(d: NaiveDate, n: i32) -> NaiveDate {
    let total = d.year() * 12 + d.month0() as i32 + n;
    month_start(total.div_euclid(12), total.rem_euclid(12) as u32 + 1)
}

/// Creates the monthly partitions from `before` months ago to `ahead` months ahead. A month
/// whose rows already sit in the default partition is left there (logged).
pub async fn ensure_partitions(conn: &mut PgConnection, name: &str, before: i32, ahead: i32) -> Result<()> {
    check_name(name)?;
    let now = Utc::now().date_naive();
    let this = month_start(now.year(), now.month());
    for i in before..=ahead {
        let from = add_months(this, i);
        let to = add_months(from, 1);
        let part = format!("{name}_p{}", from.format("%Y%m"));
        let sql = format!(
            "CREATE TABLE IF NOT EXISTS {part} PARTITION OF {name} FOR VALUES FROM ('{from}') TO ('{to}')"
        );
        if let Err(e) = sqlx::query(&sql).execute(&mut *conn).await {
            tracing::warn!(partition = %part, error = %e, "partition not created; rows stay in the default partition");
        }
    }
    Ok(())
}

/// Partitions (with their upper bound) whose every row is older than `cutoff`.
pub async fn partitions_before(
    conn: &mut PgConnection,
    name: &str,
    cutoff: chrono::DateTime<Utc>,
) -> Result<Vec<String>> {
    check_name(name)?;
    let rows: Vec<(String,)> = sqlx::query_as(
        "SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid JOIN pg_class p ON p.oid = i.inhparent \
         JOIN pg_namespace n ON n.oid = p.relnamespace WHERE p.relname = $1 AND n.nspname = current_schema() AND c.relname ~ '_p[0-9]{6}$'",
    )
    .bind(name)
    .fetch_all(&mut *conn)
    .await?;
    let mut out = Vec::new();
    for (part,) in rows {
        let Some(ym) = part.rsplit("_p").next() else {
            continue;
        };
        let (Ok(y), Ok(m)) = (ym[..4].parse::<i32>(), ym[4..].parse::<u32>()) else {
            continue;
        };
        let upper = add_months(month_start(y, m), 1);
        if upper
            .and_hms_opt(0, 0, 0)
            .map(|t| t.and_utc())
            .is_some_and(|u| u <= cutoff)
        {
            out.push(part);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn months_wrap_years() {
        assert_eq!(add_months(month_start(2026, 12), 1), month_start(2027, 1));
        assert_eq!(add_months(month_start(2026, 1), -1), month_start(2025, 12));
        assert_eq!(add_months(month_start(2026, 11), 14), month_start(2028, 1));
    }

    #[test]
    fn names_are_checked() {
        assert!(check_name("timeline_events_g1").is_ok());
        assert!(check_name("timeline_x; drop table y").is_err());
        assert!(check_name("users").is_err());
    }
}
