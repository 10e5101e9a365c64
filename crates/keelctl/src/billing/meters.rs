//! `billing meters` (ListMeters) and `billing meters create` (CreateMeter, operator).

use clap::{Args, Subcommand, ValueEnum};
use keel_proto::v1 as pb;
use serde::Serialize;

use super::{Api, call, name_arg};
use crate::client::ConnectionArgs;
use crate::output::{self, Format, Table, key_values, or_dash};

#[derive(Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct MetersArgs {
    #[command(subcommand)]
    command: Option<MetersCommand>,
}

#[derive(Subcommand)]
enum MetersCommand {
    /// Define a custom meter, or redefine one as a new version (operator). The same definition
    /// again changes nothing.
    Create {
        /// 1-64 of [a-z0-9_], starting with a letter; not a built-in meter's name.
        #[arg(value_name = "NAME", value_parser = name_arg)]
        name: String,
        /// How the events' values combine in a window.
        #[arg(long, value_enum)]
        aggregation: AggregationArg,
        /// Properties usage is grouped by (repeatable, or comma-separated).
        #[arg(long, value_delimiter = ',', value_parser = name_arg)]
        group_by: Vec<String>,
        /// The unit of the values (`jobs`, `GB`), up to 32 characters.
        #[arg(long, default_value = "")]
        unit: String,
        #[arg(long, default_value = "")]
        description: String,
        /// unique-count: the property whose distinct values are counted.
        #[arg(long, value_parser = name_arg, required_if_eq("aggregation", "unique-count"))]
        value_property: Option<String>,
    },
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum AggregationArg {
    Sum,
    Count,
    Max,
    UniqueCount,
    Latest,
}

impl From<AggregationArg> for pb::Aggregation {
    fn from(a: AggregationArg) -> Self {
        match a {
            AggregationArg::Sum => pb::Aggregation::Sum,
            AggregationArg::Count => pb::Aggregation::Count,
            AggregationArg::Max => pb::Aggregation::Max,
            AggregationArg::UniqueCount => pb::Aggregation::UniqueCount,
            AggregationArg::Latest => pb::Aggregation::Latest,
        }
    }
}

/// `AGGREGATION_UNIQUE_COUNT` → `unique_count`.
pub fn aggregation_name(value: i32) -> String {
    match pb::Aggregation::try_from(value) {
        Ok(a) => a.as_str_name().trim_start_matches("AGGREGATION_").to_lowercase(),
        Err(_) => format!("unknown({value})"),
    }
}

#[derive(Serialize)]
struct MeterView {
    name: String,
    aggregation: String,
    unit: String,
    group_by: Vec<String>,
    #[serde(skip_serializing_if = "String::is_empty")]
    value_property: String,
    version: u32,
    builtin: bool,
    description: String,
}

impl From<pb::Meter> for MeterView {
    fn from(m: pb::Meter) -> Self {
        Self {
            aggregation: aggregation_name(m.aggregation),
            name: m.name,
            unit: m.unit,
            group_by: m.group_by,
            value_property: m.value_property,
            version: m.version,
            builtin: m.builtin,
            description: m.description,
        }
    }
}

#[derive(Serialize)]
struct MeterList {
    meters: Vec<MeterView>,
}

pub async fn run(args: MetersArgs, conn: &ConnectionArgs, format: Format) -> anyhow::Result<()> {
    let mut api = Api::connect(conn).await?;
    match args.command {
        None => {
            let resp = api
                .meters
                .list_meters(call(pb::ListMetersRequest {}))
                .await?
                .into_inner();
            let list = MeterList {
                meters: resp.meters.into_iter().map(MeterView::from).collect(),
            };
            if format == Format::Json {
                return output::print_json(&list);
            }
            let mut table = Table::new(&[
                "name",
                "aggregation",
                "unit",
                "group by",
                "version",
                "builtin",
                "description",
            ]);
            for m in list.meters {
                table.row(vec![
                    m.name,
                    m.aggregation,
                    or_dash(Some(&m.unit)),
                    or_dash(Some(&m.group_by.join(","))),
                    m.version.to_string(),
                    if m.builtin { "yes" } else { "no" }.into(),
                    m.description,
                ]);
            }
            output::emit(&table.render())
        }
        Some(MetersCommand::Create {
            name,
            aggregation,
            group_by,
            unit,
            description,
            value_property,
        }) => {
            let meter = api
                .meters
                .create_meter(call(pb::CreateMeterRequest {
                    name,
                    description,
                    aggregation: pb::Aggregation::from(aggregation) as i32,
                    group_by,
                    unit,
                    value_property: value_property.unwrap_or_default(),
                }))
                .await?
                .into_inner();
            let m = MeterView::from(meter);
            if format == Format::Json {
                return output::print_json(&m);
            }
            let mut pairs = vec![
                ("name", m.name),
                ("aggregation", m.aggregation),
                ("unit", or_dash(Some(&m.unit))),
                ("group by", or_dash(Some(&m.group_by.join(",")))),
            ];
            if !m.value_property.is_empty() {
                pairs.push(("value property", m.value_property));
            }
            pairs.push(("version", m.version.to_string()));
            pairs.push(("description", m.description));
            output::emit(&key_values(&pairs))
        }
    }
}
