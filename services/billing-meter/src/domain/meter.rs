//! Meters: what a usage event counts towards and how its values combine. The platform's own
//! dimensions are built in; custom meters are defined by operators and versioned as events
//! (`keel.billing.MeterDefined.v1`, one aggregate per meter).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};

/// How a meter combines its events' values in a window.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Aggregation {
    Sum,
    Count,
    Max,
    UniqueCount,
    Latest,
}

impl Aggregation {
    pub fn as_str(self) -> &'static str {
        match self {
            Aggregation::Sum => "SUM",
            Aggregation::Count => "COUNT",
            Aggregation::Max => "MAX",
            Aggregation::UniqueCount => "UNIQUE_COUNT",
            Aggregation::Latest => "LATEST",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "SUM" => Aggregation::Sum,
            "COUNT" => Aggregation::Count,
            "MAX" => Aggregation::Max,
            "UNIQUE_COUNT" => Aggregation::UniqueCount,
            "LATEST" => Aggregation::Latest,
            _ => return None,
        })
    }
}

/// A meter as usage is checked and aggregated against it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MeterDef {
    pub name: String,
    pub description: String,
    pub aggregation: Aggregation,
    pub group_by: Vec<String>,
    pub unit: String,
    /// UNIQUE_COUNT: the property whose distinct values are counted.
    pub value_property: Option<String>,
    pub version: u32,
    pub builtin: bool,
}

/// The platform's own dimensions, billed on low and mid tiers.
pub fn builtin() -> Vec<MeterDef> {
    let sum = |name: &str, unit: &str, description: &str| MeterDef {
        name: name.into(),
        description: description.into(),
        aggregation: Aggregation::Sum,
        group_by: vec![],
        unit: unit.into(),
        value_property: None,
        version: 1,
        builtin: true,
    };
    vec![
        sum(
            "data_volume_bytes",
            "bytes",
            "Tenant data received and sent (billed per GB)",
        ),
        sum("cpu_core_seconds", "core·s", "CPU used (billed per core·hour)"),
        sum("ram_gb_seconds", "GB·s", "Memory held (billed per GB·hour)"),
        sum("api_requests", "requests", "API calls handled by the mesh"),
    ]
}

/// Names of meters and properties: 1..=64 of `[a-z0-9_]`, starting with a letter.
pub fn valid_name(s: &str) -> bool {
    let mut chars = s.chars();
    s.len() <= 64
        && chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

/// The largest number of group-by properties of a meter.
pub const MAX_GROUP_BY: usize = 8;

/// A definition as an operator asked for it: `Err((field, reason))` names what is wrong.
pub fn check_definition(d: &Definition) -> Result<(), (&'static str, String)> {
    if !valid_name(&d.name) {
        return Err(("name", "1-64 of [a-z0-9_], starting with a letter".into()));
    }
    if builtin().iter().any(|b| b.name == d.name) {
        return Err(("name", format!("{} is a built-in meter", d.name)));
    }
    if d.description.chars().count() > 512 {
        return Err(("description", "at most 512 characters".into()));
    }
    if d.unit.chars().count() > 32 {
        return Err(("unit", "at most 32 characters".into()));
    }
    if d.group_by.len() > MAX_GROUP_BY {
        return Err(("group_by", format!("at most {MAX_GROUP_BY} properties")));
    }
    let mut seen = std::collections::HashSet::new();
    for g in &d.group_by {
        if !valid_name(g) || !seen.insert(g) {
            return Err(("group_by", format!("{g:?} is not a property name, or repeated")));
        }
    }
    match (&d.aggregation, &d.value_property) {
        (Aggregation::UniqueCount, None) => {
            return Err((
                "value_property",
                "UNIQUE_COUNT counts the distinct values of a property: name it".into(),
            ));
        }
        (Aggregation::UniqueCount, Some(p)) if !valid_name(p) => {
            return Err(("value_property", format!("{p:?} is not a property name")));
        }
        (a, Some(_)) if *a != Aggregation::UniqueCount => {
            return Err(("value_property", "only UNIQUE_COUNT meters have one".into()));
        }
        _ => {}
    }
    Ok(())
}

/// What defines a custom meter (everything but its version).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Definition {
    pub name: String,
    pub description: String,
    pub aggregation: Aggregation,
    pub group_by: Vec<String>,
    pub unit: String,
    pub value_property: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum MeterEvent {
    MeterDefined {
        #[serde(flatten)]
        definition: Definition,
        version: u32,
        at: DateTime<Utc>,
    },
}

impl DomainEvent for MeterEvent {
    fn event_type(&self) -> String {
        "MeterDefined".into()
    }
    fn event_version(&self) -> String {
        "1".into()
    }
}

#[derive(Debug)]
pub enum MeterCommand {
    Define {
        definition: Definition,
        at: DateTime<Utc>,
    },
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum MeterError {
    #[error("{0}: {1}")]
    Invalid(&'static str, String),
}

/// One custom meter's history of definitions.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Meter {
    pub current: Option<Definition>,
    pub version: u32,
}

impl Meter {
    pub fn decide(&self, command: MeterCommand) -> Result<Vec<MeterEvent>, MeterError> {
        let MeterCommand::Define { definition, at } = command;
        check_definition(&definition).map_err(|(f, r)| MeterError::Invalid(f, r))?;
        if self.current.as_ref() == Some(&definition) {
            return Ok(vec![]);
        }
        Ok(vec![MeterEvent::MeterDefined {
            definition,
            version: self.version + 1,
            at,
        }])
    }

    /// The meter as usage is checked against it.
    pub fn def(&self) -> Option<MeterDef> {
        let d = self.current.as_ref()?;
        Some(MeterDef {
            name: d.name.clone(),
            description: d.description.clone(),
            aggregation: d.aggregation,
            group_by: d.group_by.clone(),
            unit: d.unit.clone(),
            value_property: d.value_property.clone(),
            version: self.version,
            builtin: false,
        })
    }
}

impl Aggregate for Meter {
    const TYPE: &'static str = "meter";
    type Command = MeterCommand;
    type Event = MeterEvent;
    type Error = MeterError;
    type Services = ();

    async fn handle(
        &mut self,
        command: MeterCommand,
        _: &(),
        sink: &EventSink<Self>,
    ) -> Result<(), MeterError> {
        for e in self.decide(command)? {
            sink.write(e, self).await;
        }
        Ok(())
    }

    fn apply(&mut self, event: MeterEvent) {
        let MeterEvent::MeterDefined {
            definition, version, ..
        } = event;
        self.current = Some(definition);
        self.version = version;
    }
}

/// Every meter by name: the built-in ones and `custom`.
pub fn catalog(custom: impl IntoIterator<Item = MeterDef>) -> BTreeMap<String, MeterDef> {
    builtin()
        .into_iter()
        .chain(custom)
        .map(|m| (m.name.clone(), m))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn def(name: &str, aggregation: Aggregation) -> Definition {
        Definition {
            name: name.into(),
            description: String::new(),
            aggregation,
            group_by: vec!["region".into()],
            unit: "jobs".into(),
            value_property: None,
        }
    }

    #[test]
    fn a_definition_is_versioned_and_the_same_one_again_changes_nothing() {
        let mut m = Meter::default();
        let at = Utc::now();
        for e in m
            .decide(MeterCommand::Define {
                definition: def("jobs", Aggregation::Sum),
                at,
            })
            .unwrap()
        {
            m.apply(e);
        }
        assert_eq!(m.version, 1);
        assert!(
            m.decide(MeterCommand::Define {
                definition: def("jobs", Aggregation::Sum),
                at
            })
            .unwrap()
            .is_empty()
        );
        let again = m
            .decide(MeterCommand::Define {
                definition: def("jobs", Aggregation::Max),
                at,
            })
            .unwrap();
        assert!(matches!(again[..], [MeterEvent::MeterDefined { version: 2, .. }]));
    }

    #[test]
    fn bad_definitions_name_their_field() {
        let bad = |d: Definition| check_definition(&d).unwrap_err().0;
        assert_eq!(bad(def("Jobs", Aggregation::Sum)), "name");
        assert_eq!(bad(def("api_requests", Aggregation::Sum)), "name");
        assert_eq!(bad(def("users", Aggregation::UniqueCount)), "value_property");
        let mut d = def("jobs", Aggregation::Sum);
        d.value_property = Some("user".into());
        assert_eq!(bad(d), "value_property");
        let mut d = def("jobs", Aggregation::Sum);
        d.group_by = vec!["a".into(), "a".into()];
        assert_eq!(bad(d), "group_by");
        let mut d = def("users", Aggregation::UniqueCount);
        d.value_property = Some("user".into());
        assert!(check_definition(&d).is_ok());
    }
}
