//! A service's own typed settings: a `serde` struct read from its `KEEL_<SERVICE>_*` variables
//! (`KEEL_PROVISIONING_GITOPS_DIR` → field `gitops_dir`), shown by `--print-config` with secrets
//! redacted. A variable the struct does not name is an error at start, so a typo cannot pass
//! silently (use `#[serde(deny_unknown_fields, default)]`).

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::config::{Config, env_prefix};
use crate::error::{Error, Result};

/// What a service's settings struct must be: deserialisable from its variables, printable, and
/// complete with defaults when none is set.
pub trait Settings: Serialize + DeserializeOwned + Default + Send + Sync + 'static {}

impl<T: Serialize + DeserializeOwned + Default + Send + Sync + 'static> Settings for T {}

/// No settings of its own.
#[derive(Clone, Debug, Default, Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoSettings {}

impl Config {
    /// The service's typed settings from its `KEEL_<SERVICE>_*` variables.
    pub fn settings<S: Settings>(&self) -> Result<S> {
        let vars = self
            .extra
            .iter()
            .map(|(k, v)| (k.to_ascii_uppercase(), v.clone()));
        envy::from_iter::<_, S>(vars).map_err(|e| {
            let reason = e.to_string();
            // envy names the field; give the variable's name back.
            let field = reason.split('`').nth(1).unwrap_or_default().to_owned();
            let value = match self.extra.get(&field) {
                Some(_) if crate::telemetry::is_secret_key(&field) => "[redacted]".to_owned(),
                Some(v) => crate::telemetry::scrub(v).into_owned(),
                None => String::new(),
            };
            let name = if field.is_empty() {
                format!("{}*", env_prefix(&self.service))
            } else {
                format!("{}{}", env_prefix(&self.service), field.to_ascii_uppercase())
            };
            Error::Config { name, value, reason }
        })
    }
}

/// `settings` as JSON with the values of secret-looking keys replaced and URLs scrubbed.
pub fn redacted_json<S: Serialize>(settings: &S) -> serde_json::Value {
    fn walk(v: &mut serde_json::Value) {
        match v {
            serde_json::Value::Object(map) => {
                for (k, v) in map.iter_mut() {
                    if crate::telemetry::is_secret_key(k) && !v.is_null() {
                        *v = serde_json::Value::String("[redacted]".into());
                    } else {
                        walk(v);
                    }
                }
            }
            serde_json::Value::String(s) => *s = crate::telemetry::scrub(s).into_owned(),
            serde_json::Value::Array(items) => items.iter_mut().for_each(walk),
            _ => {}
        }
    }
    let mut v = serde_json::to_value(settings).unwrap_or(serde_json::Value::Null);
    walk(&mut v);
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ConfigOrPrint;

    #[derive(Debug, Default, Serialize, serde::Deserialize, PartialEq)]
    #[serde(deny_unknown_fields, default)]
    struct Demo {
        gitops_dir: String,
        concurrency: usize,
        api_key: Option<String>,
    }

    fn config(vars: &[(&str, &str)]) -> Config {
        let vars = vars.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned()));
        match Config::from_vars("provisioning", ["keel-provisioning".to_owned()], vars).unwrap() {
            ConfigOrPrint::Run(c) | ConfigOrPrint::Print(c) => c,
        }
    }

    #[test]
    fn typed_settings_parse_and_typos_are_named() {
        let c = config(&[
            ("KEEL_PROVISIONING_GITOPS_DIR", "/srv/gitops"),
            ("KEEL_PROVISIONING_CONCURRENCY", "8"),
            ("KEEL_PROVISIONING_API_KEY", "sekrit"),
            ("KEEL_TENANT_GITOPS_DIR", "ignored: another service's"),
        ]);
        let s: Demo = c.settings().unwrap();
        assert_eq!(
            s,
            Demo {
                gitops_dir: "/srv/gitops".into(),
                concurrency: 8,
                api_key: Some("sekrit".into())
            }
        );
        let shown = redacted_json(&s).to_string();
        assert!(
            !shown.contains("sekrit") && shown.contains("/srv/gitops"),
            "{shown}"
        );

        let typo = config(&[("KEEL_PROVISIONING_CONCURENCY", "8")]);
        let e = typo.settings::<Demo>().unwrap_err().to_string();
        assert!(e.contains("KEEL_PROVISIONING_CONCURENCY=\"8\""), "{e}");
        let bad = config(&[("KEEL_PROVISIONING_CONCURRENCY", "many")]);
        assert!(bad.settings::<Demo>().is_err());
        assert_eq!(config(&[]).settings::<Demo>().unwrap(), Demo::default());
    }
}
