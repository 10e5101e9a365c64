//! A validated timeline filter: what QueryTimeline and TailTimeline match rows against.

use chrono::{DateTime, Duration, Utc};

/// A rejected filter field; becomes INVALID_ARGUMENT naming the field.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct Invalid {
    pub field: String,
    pub reason: String,
}

pub fn invalid(field: &str, reason: impl Into<String>) -> Invalid {
    Invalid {
        field: field.to_owned(),
        reason: reason.into(),
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KindPattern {
    Exact(String),
    /// `tenant.*` → every kind starting `tenant.`
    Prefix(String),
}

impl KindPattern {
    pub fn parse(field: &str, s: &str) -> Result<Self, Invalid> {
        let (body, prefix) = match s.strip_suffix('*') {
            Some(b) => (b, true),
            None => (s, false),
        };
        let ok = !s.is_empty()
            && s.len() <= 128
            && body
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
        if !ok {
            return Err(invalid(
                field,
                format!("{s:?} is not a kind pattern like tenant.* or tenant.TenantCreated"),
            ));
        }
        Ok(if prefix {
            KindPattern::Prefix(body.to_owned())
        } else {
            KindPattern::Exact(body.to_owned())
        })
    }

    /// As a SQL LIKE pattern (the body has no LIKE metacharacters but `_`, which is escaped).
    pub fn like(&self) -> String {
        match self {
            KindPattern::Exact(k) => k.replace('_', "\\_"),
            KindPattern::Prefix(k) => format!("{}%", k.replace('_', "\\_")),
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Filter {
    /// Groups AND'ed, patterns in a group OR'ed (the request filter and the query are one group each).
    pub kind_groups: Vec<Vec<KindPattern>>,
    pub resource_type: Option<String>,
    pub resource_id: Option<String>,
    pub project: Option<String>,
    pub actor: Option<String>,
    pub trace_id: Option<String>,
    pub result: Option<String>,
    pub text: Option<String>,
}

fn set(slot: &mut Option<String>, field: &str, value: String) -> Result<(), Invalid> {
    match slot {
        Some(existing) if *existing != value => Err(invalid(field, "given twice with different values")),
        _ => {
            *slot = Some(value);
            Ok(())
        }
    }
}

impl Filter {
    pub fn add_kinds(&mut self, field: &str, kinds: &[String]) -> Result<(), Invalid> {
        if kinds.len() > 20 {
            return Err(invalid(field, "at most 20 kinds"));
        }
        if !kinds.is_empty() {
            let group = kinds
                .iter()
                .map(|k| KindPattern::parse(field, k))
                .collect::<Result<Vec<_>, _>>()?;
            self.kind_groups.push(group);
        }
        Ok(())
    }

    pub fn set_resource(&mut self, field: &str, value: &str) -> Result<(), Invalid> {
        if value.is_empty() || value.len() > 256 || value.chars().any(char::is_whitespace) {
            return Err(invalid(
                field,
                "must be <type>/<id> or <type>, at most 256 characters",
            ));
        }
        let (t, id) = match value.split_once('/') {
            Some((t, id)) if !t.is_empty() && !id.is_empty() => (t, Some(id)),
            None => (value, None),
            _ => return Err(invalid(field, "must be <type>/<id> or <type>")),
        };
        set(&mut self.resource_type, field, t.to_owned())?;
        if let Some(id) = id {
            set(&mut self.resource_id, field, id.to_owned())?;
        }
        Ok(())
    }

    pub fn set_project(&mut self, field: &str, value: &str) -> Result<(), Invalid> {
        if value.is_empty() || value.len() > 128 || value.chars().any(char::is_whitespace) {
            return Err(invalid(field, "must be 1-128 characters without spaces"));
        }
        set(&mut self.project, field, value.to_owned())
    }

    pub fn set_actor(&mut self, field: &str, value: &str) -> Result<(), Invalid> {
        let ok = value == "system"
            || ["user:", "service:"].iter().any(|p| {
                value.strip_prefix(p).is_some_and(|rest| {
                    !rest.is_empty() && rest.len() <= 128 && !rest.contains(char::is_whitespace)
                })
            });
        if !ok {
            return Err(invalid(field, "must be user:<id>, service:<name> or system"));
        }
        set(&mut self.actor, field, value.to_owned())
    }

    pub fn set_trace(&mut self, field: &str, value: &str) -> Result<(), Invalid> {
        if value.len() != 32
            || !value
                .chars()
                .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c))
        {
            return Err(invalid(field, "must be a trace id: 32 lower-case hex digits"));
        }
        set(&mut self.trace_id, field, value.to_owned())
    }

    pub fn set_result(&mut self, field: &str, value: &str) -> Result<(), Invalid> {
        if !["success", "failure", "denied"].contains(&value) {
            return Err(invalid(field, "must be success, failure or denied"));
        }
        set(&mut self.result, field, value.to_owned())
    }

    pub fn set_text(&mut self, field: &str, value: &str) -> Result<(), Invalid> {
        let n = value.chars().count();
        if n == 0 || n > 200 {
            return Err(invalid(field, "must be 1-200 characters"));
        }
        set(&mut self.text, field, value.to_owned())
    }
}

/// A validated time range: `from` ≤ `to`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimeRange {
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
}

impl TimeRange {
    pub const MAX_LAST_DAYS: i64 = 3660;

    /// From `from`/`to` or `last`; without any, everything up to now.
    pub fn new(
        from: Option<DateTime<Utc>>,
        to: Option<DateTime<Utc>>,
        last: Option<Duration>,
        now: DateTime<Utc>,
    ) -> Result<Self, Invalid> {
        if let Some(last) = last {
            if from.is_some() || to.is_some() {
                return Err(invalid("last", "give either last or from/to, not both"));
            }
            if last <= Duration::zero() || last > Duration::days(Self::MAX_LAST_DAYS) {
                return Err(invalid("last", "must be positive and at most 10 years"));
            }
            return Ok(Self {
                from: now - last,
                to: now,
            });
        }
        let from = from.unwrap_or(DateTime::<Utc>::UNIX_EPOCH);
        let to = to.unwrap_or(now + Duration::minutes(5));
        if to < from {
            return Err(invalid("to", "must not be before from"));
        }
        Ok(Self { from, to })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kind_patterns() {
        assert_eq!(
            KindPattern::parse("k", "tenant.*").unwrap(),
            KindPattern::Prefix("tenant.".into())
        );
        assert_eq!(
            KindPattern::parse("k", "tenant.TenantCreated").unwrap().like(),
            "tenant.TenantCreated"
        );
        assert_eq!(
            KindPattern::parse("k", "legal_hold.*").unwrap().like(),
            "legal\\_hold.%"
        );
        assert!(KindPattern::parse("k", "a%b").is_err());
        assert!(KindPattern::parse("k", "").is_err());
    }

    #[test]
    fn conflicting_values_are_refused() {
        let mut f = Filter::default();
        f.set_actor("filter.actor", "user:alice").unwrap();
        f.set_actor("query", "user:alice").unwrap();
        assert_eq!(f.set_actor("query", "user:bob").unwrap_err().field, "query");
    }

    #[test]
    fn field_checks_name_the_field() {
        let mut f = Filter::default();
        assert_eq!(
            f.set_trace("filter.trace_id", "xyz").unwrap_err().field,
            "filter.trace_id"
        );
        assert_eq!(
            f.set_result("filter.result", "ok").unwrap_err().field,
            "filter.result"
        );
        assert!(f.set_resource("filter.resource", "tenant/acme").is_ok());
        assert_eq!(
            (f.resource_type.as_deref(), f.resource_id.as_deref()),
            (Some("tenant"), Some("acme"))
        );
        assert!(f.set_text("filter.text", &"x".repeat(201)).is_err());
    }

    #[test]
    fn time_ranges() {
        let now = Utc::now();
        let r = TimeRange::new(None, None, Some(Duration::hours(1)), now).unwrap();
        assert_eq!(r.to - r.from, Duration::hours(1));
        assert_eq!(
            TimeRange::new(Some(now), Some(now - Duration::seconds(1)), None, now)
                .unwrap_err()
                .field,
            "to"
        );
        assert_eq!(
            TimeRange::new(Some(now), None, Some(Duration::hours(1)), now)
                .unwrap_err()
                .field,
            "last"
        );
    }
}
