//! Fault injection for tests and drills: `KEEL_PROVISIONING_FAULTS="database:2,manifests:permanent"`
//! makes a named step fail its first N attempts, or every attempt.

use std::collections::HashMap;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Fail the first N attempts (transiently), then succeed.
    Times(u32),
    /// Fail every attempt, permanently.
    Permanent,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Faults(HashMap<String, Fault>);

impl Faults {
    pub fn parse(spec: &str) -> Result<Self, String> {
        let mut map = HashMap::new();
        for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (step, how) = part
                .split_once(':')
                .ok_or_else(|| format!("fault {part:?}: expected step:N or step:permanent"))?;
            let fault = match how {
                "permanent" => Fault::Permanent,
                n => Fault::Times(
                    n.parse()
                        .map_err(|_| format!("fault {part:?}: {n:?} is not a count"))?,
                ),
            };
            map.insert(step.to_owned(), fault);
        }
        Ok(Self(map))
    }

    /// The injected failure for `attempt` (1-based) of `step`, if any: (message, permanent).
    pub fn check(&self, step: &str, attempt: u32) -> Option<(String, bool)> {
        match self.0.get(step)? {
            Fault::Permanent => Some((format!("injected permanent fault in {step}"), true)),
            Fault::Times(n) if attempt <= *n => Some((
                format!("injected fault in {step} (attempt {attempt} of {n})"),
                false,
            )),
            Fault::Times(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_counts() {
        let f = Faults::parse("database:2, manifests:permanent").unwrap();
        assert!(f.check("database", 1).is_some_and(|(_, p)| !p));
        assert!(f.check("database", 2).is_some());
        assert!(f.check("database", 3).is_none());
        assert!(f.check("manifests", 9).is_some_and(|(_, p)| p));
        assert!(f.check("quotas", 1).is_none());
        assert!(Faults::parse("database").is_err());
        assert!(Faults::parse("database:x").is_err());
        assert_eq!(Faults::parse("").unwrap(), Faults::default());
    }
}
