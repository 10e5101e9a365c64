//! Prices per tier, as configuration (`KEEL_BILLING_PRICES_FILE`, JSON; the defaults below
//! otherwise), and the cost of a month's usage at them. Low and mid are billed on usage: base
//! fee plus unit prices per billed unit. High and business are billed on committed resources:
//! the committed monthly amount, with usage compared to the commitment (overage is alerted, not
//! charged). All amounts are decimals.

use std::collections::BTreeMap;
use std::str::FromStr;

use rust_decimal::{Decimal, RoundingStrategy};
use serde::{Deserialize, Serialize};

/// How a meter's stored unit becomes its billed unit: (billed unit, stored units per billed unit).
pub fn billed_unit(meter: &str) -> Option<(&'static str, Decimal)> {
    Some(match meter {
        "data_volume_bytes" => ("GB", Decimal::from(1_000_000_000u64)),
        "cpu_core_seconds" => ("core·hours", Decimal::from(3600)),
        "ram_gb_seconds" => ("GB·hours", Decimal::from(3600)),
        "api_requests" => ("requests", Decimal::ONE),
        _ => return None,
    })
}

/// The meters a bill is made of.
pub const BILLED: [&str; 4] = [
    "data_volume_bytes",
    "cpu_core_seconds",
    "ram_gb_seconds",
    "api_requests",
];

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TierPrices {
    /// Usage tiers: the monthly base fee. Committed tiers: the committed monthly amount.
    pub base_fee: Decimal,
    /// Usage tiers: price per billed unit, by meter.
    #[serde(default)]
    pub unit_prices: BTreeMap<String, Decimal>,
    /// Committed tiers: quantity committed per month in billed units, by meter.
    #[serde(default)]
    pub commitments: BTreeMap<String, Decimal>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PriceTable {
    pub currency: String,
    pub tiers: BTreeMap<String, TierPrices>,
}

fn d(s: &str) -> Decimal {
    Decimal::from_str(s).unwrap_or_default()
}

impl Default for PriceTable {
    fn default() -> Self {
        let usage = |base: &str, gb: &str, core_h: &str, gb_h: &str, req: &str| TierPrices {
            base_fee: d(base),
            unit_prices: BTreeMap::from([
                ("data_volume_bytes".into(), d(gb)),
                ("cpu_core_seconds".into(), d(core_h)),
                ("ram_gb_seconds".into(), d(gb_h)),
                ("api_requests".into(), d(req)),
            ]),
            commitments: BTreeMap::new(),
        };
        let committed = |fee: &str, gb: &str, core_h: &str, gb_h: &str, req: &str| TierPrices {
            base_fee: d(fee),
            unit_prices: BTreeMap::new(),
            commitments: BTreeMap::from([
                ("data_volume_bytes".into(), d(gb)),
                ("cpu_core_seconds".into(), d(core_h)),
                ("ram_gb_seconds".into(), d(gb_h)),
                ("api_requests".into(), d(req)),
            ]),
        };
        Self {
            currency: "USD".into(),
            tiers: BTreeMap::from([
                ("low".into(), usage("29", "0.09", "0.045", "0.006", "0.000002")),
                ("mid".into(), usage("199", "0.08", "0.04", "0.005", "0.0000015")),
                (
                    "high".into(),
                    committed("2500", "5000", "20000", "80000", "500000000"),
                ),
                (
                    "business".into(),
                    committed("12000", "50000", "150000", "600000", "5000000000"),
                ),
            ]),
        }
    }
}

impl PriceTable {
    /// Reads a table from JSON and checks it: every tier priced, no negative amounts.
    pub fn from_json(text: &str) -> anyhow::Result<Self> {
        let t: PriceTable = serde_json::from_str(text)?;
        t.check()?;
        Ok(t)
    }

    pub fn check(&self) -> anyhow::Result<()> {
        for tier in ["low", "mid", "high", "business"] {
            let p = self
                .tiers
                .get(tier)
                .ok_or_else(|| anyhow::anyhow!("prices: tier {tier} is missing"))?;
            let all = std::iter::once(&p.base_fee)
                .chain(p.unit_prices.values())
                .chain(p.commitments.values());
            if all.into_iter().any(|v| v.is_sign_negative()) {
                anyhow::bail!("prices: tier {tier} has a negative amount");
            }
        }
        Ok(())
    }
}

/// One line of an estimate.
#[derive(Clone, Debug, PartialEq)]
pub struct Line {
    pub meter: String,
    pub quantity: Decimal,
    pub unit: &'static str,
    pub unit_price: Decimal,
    pub amount: Decimal,
    pub committed: Option<Decimal>,
    pub over: bool,
}

/// The cost of `usage` (stored units, by meter) for a tenant of `tier` with `committed` pricing.
pub fn estimate(
    prices: &TierPrices,
    committed: bool,
    usage: &BTreeMap<String, Decimal>,
) -> (Vec<Line>, Decimal) {
    let mut total = prices.base_fee;
    let mut lines = Vec::new();
    for meter in BILLED {
        let Some((unit, per)) = billed_unit(meter) else {
            continue;
        };
        let quantity = (usage.get(meter).copied().unwrap_or_default() / per)
            .round_dp(6)
            .normalize();
        if committed {
            let c = prices.commitments.get(meter).copied().unwrap_or_default();
            lines.push(Line {
                meter: meter.into(),
                quantity,
                unit,
                unit_price: Decimal::ZERO,
                amount: Decimal::ZERO,
                committed: Some(c),
                over: quantity > c,
            });
        } else {
            let price = prices.unit_prices.get(meter).copied().unwrap_or_default();
            let amount = money(quantity * price);
            total += amount;
            lines.push(Line {
                meter: meter.into(),
                quantity,
                unit,
                unit_price: price,
                amount,
                committed: None,
                over: false,
            });
        }
    }
    (lines, money(total))
}

/// Cents, half away from zero (as invoices round).
fn money(v: Decimal) -> Decimal {
    v.round_dp_with_strategy(2, RoundingStrategy::MidpointAwayFromZero)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_tiers_pay_base_fee_plus_billed_units() {
        let t = PriceTable::default();
        let usage = BTreeMap::from([
            ("data_volume_bytes".to_owned(), d("2500000000")), // 2.5 GB
            ("cpu_core_seconds".to_owned(), d("7200")),        // 2 core·hours
            ("api_requests".to_owned(), d("1000000")),
        ]);
        let (lines, total) = estimate(&t.tiers["low"], false, &usage);
        let by: BTreeMap<&str, &Line> = lines.iter().map(|l| (l.meter.as_str(), l)).collect();
        assert_eq!(by["data_volume_bytes"].quantity, d("2.5"));
        assert_eq!(
            by["data_volume_bytes"].amount,
            d("0.23"),
            "0.225, half away from zero"
        );
        assert_eq!(by["cpu_core_seconds"].amount, d("0.09"));
        assert_eq!(by["api_requests"].amount, d("2"));
        assert_eq!(total, d("29") + d("0.23") + d("0.09") + d("2"));
    }

    #[test]
    fn committed_tiers_pay_the_commitment_and_flag_overage() {
        let t = PriceTable::default();
        let usage = BTreeMap::from([("cpu_core_seconds".to_owned(), d("72000036000"))]);
        let (lines, total) = estimate(&t.tiers["high"], true, &usage);
        let cpu = lines.iter().find(|l| l.meter == "cpu_core_seconds").unwrap();
        assert!(cpu.over);
        assert_eq!(cpu.amount, Decimal::ZERO);
        assert!(!lines.iter().find(|l| l.meter == "api_requests").unwrap().over);
        assert_eq!(total, d("2500"));
    }

    #[test]
    fn a_table_from_configuration_is_checked() {
        let good = serde_json::to_string(&PriceTable::default()).unwrap();
        assert!(PriceTable::from_json(&good).is_ok());
        assert!(PriceTable::from_json(r#"{"currency":"USD","tiers":{}}"#).is_err());
        let negative = good.replace("\"29\"", "\"-29\"");
        assert!(PriceTable::from_json(&negative).is_err());
    }
}
