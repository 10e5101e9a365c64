//! Input validation at the edge: every check names the field it rejects.

use std::fmt;

/// A rejected field and why; becomes INVALID_ARGUMENT.
#[derive(Debug, PartialEq, Eq)]
pub struct Invalid {
    pub field: &'static str,
    pub reason: String,
}

impl std::error::Error for Invalid {}

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.reason)
    }
}

pub type Check = Result<(), Invalid>;

fn invalid(field: &'static str, reason: impl Into<String>) -> Invalid {
    Invalid {
        field,
        reason: reason.into(),
    }
}

pub fn name(field: &'static str, value: &str) -> Check {
    let n = value.trim().chars().count();
    if n == 0 {
        return Err(invalid(field, "must not be empty"));
    }
    if value.chars().count() > 100 {
        return Err(invalid(field, "must be at most 100 characters"));
    }
    if value.chars().any(char::is_control) {
        return Err(invalid(field, "must not contain control characters"));
    }
    Ok(())
}

/// A DNS label: 3-40 of [a-z0-9-], starting with a letter, not ending with '-'.
pub fn slug(field: &'static str, value: &str) -> Check {
    let ok = (3..=40).contains(&value.len())
        && value.starts_with(|c: char| c.is_ascii_lowercase())
        && !value.ends_with('-')
        && value
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if ok {
        Ok(())
    } else {
        Err(invalid(
            field,
            "must be 3-40 of [a-z0-9-], start with a letter and not end with '-'",
        ))
    }
}

/// A pragmatic e-mail check (RFC 5321 lengths, one '@', a dotted domain). Returns the
/// normalised (trimmed, lower-cased domain) address.
pub fn email(field: &'static str, value: &str) -> Result<String, Invalid> {
    let v = value.trim();
    let bad = || invalid(field, "must be an e-mail address like name@example.com");
    if v.is_empty() || v.len() > 254 {
        return Err(bad());
    }
    let (local, domain) = v.rsplit_once('@').ok_or_else(bad)?;
    let local_ok = !local.is_empty()
        && local.len() <= 64
        && !local.contains('@')
        && local
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "!#$%&'*+/=?^_`{|}~.-".contains(c));
    let domain_ok = domain.contains('.')
        && domain.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        });
    if local_ok && domain_ok {
        Ok(format!("{local}@{}", domain.to_ascii_lowercase()))
    } else {
        Err(bad())
    }
}

/// Idempotency keys and other client ids: 1-128 of [A-Za-z0-9_-].
pub fn token(field: &'static str, value: &str) -> Check {
    let ok = (1..=128).contains(&value.len())
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if ok {
        Ok(())
    } else {
        Err(invalid(field, "must be 1-128 of [A-Za-z0-9_-]"))
    }
}

pub fn reason(field: &'static str, value: &str) -> Check {
    if value.trim().is_empty() {
        return Err(invalid(field, "must not be empty"));
    }
    if value.chars().count() > 500 {
        return Err(invalid(field, "must be at most 500 characters"));
    }
    Ok(())
}

/// Page sizes: 0 means `default`, otherwise 1..=max.
pub fn page_size(field: &'static str, value: u32, default: u32, max: u32) -> Result<u32, Invalid> {
    match value {
        0 => Ok(default),
        v if v <= max => Ok(v),
        _ => Err(invalid(field, format!("must be at most {max}"))),
    }
}

pub fn account_name(field: &'static str, value: &str) -> Check {
    let ok = (1..=64).contains(&value.len())
        && value
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if ok {
        Ok(())
    } else {
        Err(invalid(field, "must be 1-64 of [a-z0-9-]"))
    }
}

pub fn scopes(field: &'static str, values: &[String]) -> Check {
    if values.len() > 32 {
        return Err(invalid(field, "at most 32 scopes"));
    }
    match values
        .iter()
        .find(|s| !keel_auth::scopes::ALL.contains(&s.as_str()))
    {
        Some(s) => Err(invalid(field, format!("unknown scope {s:?}"))),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(name("name", "Acme Corp").is_ok());
        assert_eq!(name("name", "  ").unwrap_err().field, "name");
        assert!(name("name", &"x".repeat(10_240)).is_err());
        assert!(name("name", "a\u{0}b").is_err());
    }

    #[test]
    fn slugs() {
        assert!(slug("slug", "acme-42").is_ok());
        for bad in ["ab", "Acme", "1acme", "acme-", "ac_me", "a".repeat(41).as_str()] {
            assert!(slug("slug", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn emails() {
        assert_eq!(
            email("owner_email", " Alice@Example.COM ").unwrap(),
            "Alice@example.com"
        );
        for bad in [
            "",
            "alice",
            "alice@",
            "@example.com",
            "a@b",
            "a b@example.com",
            "a@@example.com",
            "a@-x.com",
        ] {
            assert_eq!(
                email("owner_email", bad).unwrap_err().field,
                "owner_email",
                "{bad}"
            );
        }
    }

    #[test]
    fn page_sizes() {
        assert_eq!(page_size("page.page_size", 0, 50, 500), Ok(50));
        assert_eq!(page_size("page.page_size", 500, 50, 500), Ok(500));
        assert!(page_size("page.page_size", 1_000_000, 50, 500).is_err());
    }
}
