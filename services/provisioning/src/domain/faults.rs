//! Fault injection for tests and drills: `KEEL_PROVISIONING_FAULTS="database:2,manifests:permanent"`
//! makes a named step fail its first N attempts, or every attempt. `step:permanent-after` lets
//! the step do its work and then fail permanently (a failed step that left things behind, for
//! compensation to find); `step:crash` exits the process after the step's first side effect and
//! before its outcome is recorded. `step.undo:N` and `step.undo:permanent` make undoing the step
//! fail.

use std::collections::HashMap;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Fail the first N attempts (transiently), then succeed.
    Times(u32),
    /// Fail every attempt, permanently.
    Permanent,
    /// Do the work, then fail permanently.
    PermanentAfter,
    /// Exit the process after the first attempt's work, before its outcome is recorded.
    Crash,
}

/// What happens after a step's side effect.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum After {
    /// Report a permanent failure with this message.
    Fail(String),
    /// Exit at once, as a crash would.
    Crash,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Faults(HashMap<String, Fault>);

impl Faults {
    pub fn parse(spec: &str) -> Result<Self, String> {
        let mut map = HashMap::new();
        for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (step, how) = part.split_once(':').ok_or_else(|| {
                format!("fault {part:?}: expected step:N, step:permanent, step:permanent-after or step:crash")
            })?;
            let fault = match how {
                "permanent" => Fault::Permanent,
                "permanent-after" => Fault::PermanentAfter,
                "crash" => Fault::Crash,
                n => Fault::Times(
                    n.parse()
                        .map_err(|_| format!("fault {part:?}: {n:?} is not a count"))?,
                ),
            };
            map.insert(step.to_owned(), fault);
        }
        Ok(Self(map))
    }

    /// The injected failure for `attempt` (1-based) of `step` before its side effect, if any:
    /// (message, permanent).
    pub fn check(&self, step: &str, attempt: u32) -> Option<(String, bool)> {
        match self.0.get(step)? {
            Fault::Permanent => Some((format!("injected permanent fault in {step}"), true)),
            Fault::Times(n) if attempt <= *n => Some((
                format!("injected fault in {step} (attempt {attempt} of {n})"),
                false,
            )),
            Fault::Times(_) | Fault::PermanentAfter | Fault::Crash => None,
        }
    }

    /// What to do after the side effect of `attempt` of `step`, if anything.
    pub fn after(&self, step: &str, attempt: u32) -> Option<After> {
        match self.0.get(step)? {
            Fault::PermanentAfter => Some(After::Fail(format!(
                "injected permanent fault in {step} after its work"
            ))),
            Fault::Crash if attempt == 1 => Some(After::Crash),
            _ => None,
        }
    }

    /// The injected failure for `attempt` (1-based) of undoing `step`, if any.
    pub fn check_undo(&self, step: &str, attempt: u32) -> Option<String> {
        self.check(&format!("{step}.undo"), attempt).map(|(m, _)| m)
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

    #[test]
    fn faults_after_the_work_and_of_undoing() {
        let f =
            Faults::parse("database:crash,quotas:permanent-after,manifests.undo:2,messaging.undo:permanent")
                .unwrap();
        assert_eq!(f.check("database", 1), None);
        assert_eq!(f.after("database", 1), Some(After::Crash));
        // The crash is the first attempt's only: the resumed run goes on.
        assert_eq!(f.after("database", 2), None);
        assert_eq!(f.check("quotas", 1), None);
        assert!(matches!(f.after("quotas", 3), Some(After::Fail(_))));
        assert!(f.check_undo("manifests", 2).is_some());
        assert!(f.check_undo("manifests", 3).is_none());
        assert!(f.check_undo("messaging", 40).is_some());
        assert!(f.check_undo("quotas", 1).is_none());
        assert_eq!(f.after("messaging", 1), None);
    }
}
