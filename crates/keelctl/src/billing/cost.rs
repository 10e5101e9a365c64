//! `billing estimate` (EstimateCost) and `billing reconcile` (Reconcile, operator).

use keel_proto::v1 as pb;
use serde::Serialize;

use super::{Api, call, difference};
use crate::client::ConnectionArgs;
use crate::output::{self, Format, Table, key_values, or_dash};

#[derive(Serialize)]
struct EstimateView {
    tenant_id: String,
    tier: String,
    month: String,
    currency: String,
    /// Low and mid: the monthly base fee; high and business: the committed monthly amount.
    base_fee: String,
    /// Billed on committed resources (overage alerted, not charged).
    committed: bool,
    lines: Vec<LineView>,
    total: String,
}

#[derive(Serialize)]
struct LineView {
    meter: String,
    quantity: String,
    unit: String,
    unit_price: String,
    amount: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    committed: String,
    over_commitment: bool,
}

pub async fn estimate(
    tenant: &str,
    month: String,
    conn: &ConnectionArgs,
    format: Format,
) -> anyhow::Result<()> {
    let mut api = Api::connect(conn).await?;
    let tenant_id = api.tenant_id(tenant).await?;
    let e = api
        .meters
        .estimate_cost(call(pb::EstimateCostRequest { tenant_id, month }))
        .await?
        .into_inner();
    let view = EstimateView {
        tenant_id: e.tenant_id,
        tier: e.tier,
        month: e.month,
        currency: e.currency,
        base_fee: e.base_fee,
        committed: e.committed,
        total: e.total,
        lines: e
            .lines
            .into_iter()
            .map(|l| LineView {
                meter: l.meter,
                quantity: l.quantity,
                unit: l.unit,
                unit_price: l.unit_price,
                amount: l.amount,
                committed: l.committed,
                over_commitment: l.over_commitment,
            })
            .collect(),
    };
    if format == Format::Json {
        return output::print_json(&view);
    }
    let fee = if view.committed {
        "committed amount"
    } else {
        "base fee"
    };
    let mut text = key_values(&[
        ("tenant", view.tenant_id.clone()),
        ("tier", or_dash(Some(&view.tier))),
        ("month", or_dash(Some(&view.month))),
        (
            fee,
            format!("{} {}", view.base_fee, view.currency).trim().to_owned(),
        ),
    ]);
    text.push('\n');
    let mut header = vec!["meter", "quantity", "unit", "unit price", "amount"];
    if view.committed {
        header.extend(["committed", "over"]);
    }
    let mut table = Table::new(&header);
    for l in &view.lines {
        let mut row = vec![
            l.meter.clone(),
            l.quantity.clone(),
            or_dash(Some(&l.unit)),
            or_dash(Some(&l.unit_price)),
            l.amount.clone(),
        ];
        if view.committed {
            row.push(or_dash(Some(&l.committed)));
            row.push(if l.over_commitment { "yes" } else { "no" }.into());
        }
        table.row(row);
    }
    text.push_str(&table.render());
    text.push('\n');
    text.push_str(&key_values(&[(
        "total",
        format!("{} {}", view.total, view.currency).trim().to_owned(),
    )]));
    output::emit(&text)?;
    if view.lines.iter().any(|l| l.over_commitment) {
        eprintln!("usage passed the commitment: alerted, not charged");
    }
    Ok(())
}

#[derive(Serialize)]
struct ReconcileView {
    month: String,
    rows: Vec<RowView>,
    /// Rows where something recorded was not exported, or not acknowledged.
    differences: usize,
}

#[derive(Serialize)]
struct RowView {
    tenant_id: String,
    meter: String,
    recorded: u64,
    exported: u64,
    acknowledged: u64,
    /// recorded − exported.
    not_exported: u64,
    /// exported − acknowledged.
    not_acknowledged: u64,
    recorded_quantity: String,
    exported_quantity: String,
    /// recorded_quantity − exported_quantity.
    quantity_difference: String,
    /// Record ids recorded but not (yet) exported, as the service lists them (up to 100).
    missing: Vec<String>,
}

impl RowView {
    fn differs(&self) -> bool {
        self.not_exported > 0 || self.not_acknowledged > 0 || !is_zero(&self.quantity_difference)
    }
}

fn is_zero(d: &str) -> bool {
    d == "0"
}

pub async fn reconcile(
    month: String,
    tenant: Option<&str>,
    conn: &ConnectionArgs,
    format: Format,
) -> anyhow::Result<()> {
    let mut api = Api::connect(conn).await?;
    let tenant_id = match tenant {
        Some(t) => api.tenant_id(t).await?,
        None => String::new(),
    };
    let resp = api
        .meters
        .reconcile(call(pb::ReconcileRequest { month, tenant_id }))
        .await?
        .into_inner();
    let rows: Vec<RowView> = resp
        .rows
        .into_iter()
        .map(|r| RowView {
            not_exported: r.recorded.saturating_sub(r.exported),
            not_acknowledged: r.exported.saturating_sub(r.acknowledged),
            quantity_difference: difference(&r.recorded_quantity, &r.exported_quantity),
            tenant_id: r.tenant_id,
            meter: r.meter,
            recorded: r.recorded,
            exported: r.exported,
            acknowledged: r.acknowledged,
            recorded_quantity: r.recorded_quantity,
            exported_quantity: r.exported_quantity,
            missing: r.missing,
        })
        .collect();
    let view = ReconcileView {
        month: resp.month,
        differences: rows.iter().filter(|r| r.differs()).count(),
        rows,
    };
    if format == Format::Json {
        return output::print_json(&view);
    }
    let mut table = Table::new(&[
        "tenant",
        "meter",
        "recorded",
        "exported",
        "acknowledged",
        "not exported",
        "not acked",
        "recorded qty",
        "exported qty",
        "qty diff",
    ]);
    for r in &view.rows {
        table.row(vec![
            r.tenant_id.clone(),
            r.meter.clone(),
            r.recorded.to_string(),
            r.exported.to_string(),
            r.acknowledged.to_string(),
            r.not_exported.to_string(),
            r.not_acknowledged.to_string(),
            or_dash(Some(&r.recorded_quantity)),
            or_dash(Some(&r.exported_quantity)),
            r.quantity_difference.clone(),
        ]);
    }
    output::emit(&table.render())?;
    for r in view.rows.iter().filter(|r| !r.missing.is_empty()) {
        eprintln!(
            "not exported ({} {}): {}",
            r.tenant_id,
            r.meter,
            r.missing.join(" ")
        );
    }
    eprintln!(
        "{}: {} tenant/meter rows, {} with differences",
        view.month,
        view.rows.len(),
        view.differences
    );
    Ok(())
}
