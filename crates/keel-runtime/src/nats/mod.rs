//! Connecting to Keel's NATS, which runs decentralized JWT auth: every client presents a
//! credentials file (a user JWT signed for the KEEL account, and the user's nkey seed), and
//! receives replies on an inbox of its own, `_INBOX.<user public key>.>`, the only inbox its
//! permissions let it subscribe to — so no user reads another's replies.

pub mod authority;

use std::path::Path;
use std::time::Duration;

use crate::error::Error;
use crate::telemetry;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const JWT_BEGIN: &str = "-----BEGIN NATS USER JWT-----";
const JWT_END: &str = "------END NATS USER JWT------";
const SEED_BEGIN: &str = "-----BEGIN USER NKEY SEED-----";
const SEED_END: &str = "------END USER NKEY SEED------";

/// The contents of a NATS credentials file.
#[derive(Clone)]
pub struct Credentials {
    pub jwt: String,
    seed: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("user", &self.public_key().unwrap_or_default())
            .finish_non_exhaustive()
    }
}

impl Credentials {
    pub fn new(jwt: String, seed: String) -> Self {
        Self { jwt, seed }
    }

    /// Parses the standard decorated format (`nsc`'s and `keelctl nats creds`').
    pub fn parse(text: &str) -> Result<Self, String> {
        let block = |begin: &str, end: &str| -> Option<String> {
            let start = text.find(begin)? + begin.len();
            let stop = text[start..].find(end)? + start;
            let value = text[start..stop].trim();
            (!value.is_empty()).then(|| value.to_owned())
        };
        let jwt = block(JWT_BEGIN, JWT_END).ok_or("no user JWT block")?;
        let seed = block(SEED_BEGIN, SEED_END).ok_or("no user nkey seed block")?;
        let creds = Self { jwt, seed };
        creds.public_key()?;
        Ok(creds)
    }

    pub fn load(path: &Path) -> Result<Self, Error> {
        let bad = |reason: String| Error::Config {
            name: "KEEL_NATS_CREDS".into(),
            value: path.display().to_string(),
            reason,
        };
        let text = std::fs::read_to_string(path)
            .map_err(|e| bad(format!("cannot read the credentials file: {e}")))?;
        Self::parse(&text).map_err(bad)
    }

    /// The user's public key (`U…`), from the seed.
    pub fn public_key(&self) -> Result<String, String> {
        nkeys::KeyPair::from_seed(&self.seed)
            .map(|k| k.public_key())
            .map_err(|e| format!("invalid user nkey seed: {e}"))
    }

    /// Where this user's replies arrive.
    pub fn inbox_prefix(&self) -> Result<String, String> {
        self.public_key().map(|k| inbox_prefix(&k))
    }

    /// The decorated file format NATS clients read.
    pub fn to_file(&self) -> String {
        format!(
            "{JWT_BEGIN}\n{}\n{JWT_END}\n\n************************* IMPORTANT *************************\n\
             NKEY Seed printed below can be used to sign and prove identity.\n\
             NKEYs are sensitive and should be treated as secrets.\n\n{SEED_BEGIN}\n{}\n{SEED_END}\n\n\
             *************************************************************\n",
            self.jwt, self.seed
        )
    }
}

/// The inbox prefix of the user with public key `user`.
pub fn inbox_prefix(user: &str) -> String {
    format!("_INBOX.{user}")
}

/// Connects to `url` as `name`, with the credentials file `creds` when given (Keel's NATS
/// refuses a connection without one).
pub async fn connect(url: &str, creds: Option<&Path>, name: &str) -> Result<async_nats::Client, Error> {
    let creds = creds.map(Credentials::load).transpose()?;
    connect_with(url, creds.as_ref(), name).await
}

/// [`connect`] with credentials already in memory.
pub async fn connect_with(
    url: &str,
    creds: Option<&Credentials>,
    name: &str,
) -> Result<async_nats::Client, Error> {
    let fail = |e: String| Error::Connect {
        dependency: "nats",
        message: format!("{}: {}", telemetry::scrub(url), telemetry::scrub(&e)),
    };
    let mut options = async_nats::ConnectOptions::new()
        .name(name)
        .connection_timeout(CONNECT_TIMEOUT)
        .max_reconnects(None);
    if let Some(creds) = creds {
        options = options
            .credentials(&creds.to_file())
            .map_err(|e| fail(e.to_string()))?
            .custom_inbox_prefix(creds.inbox_prefix().map_err(fail)?);
    }
    options.connect(url).await.map_err(|e| fail(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_the_file_format() {
        let key = nkeys::KeyPair::new_user();
        let seed = key.seed().expect("seed");
        let creds = Credentials::new("eyJ.a.b".into(), seed);
        let parsed = Credentials::parse(&creds.to_file()).expect("parse");
        assert_eq!(parsed.jwt, "eyJ.a.b");
        assert_eq!(parsed.public_key().expect("key"), key.public_key());
        assert_eq!(
            parsed.inbox_prefix().expect("inbox"),
            format!("_INBOX.{}", key.public_key())
        );
        assert!(
            !format!("{parsed:?}").contains(&creds.seed),
            "Debug never shows the seed"
        );
    }

    #[test]
    fn refuses_files_without_both_blocks_or_with_a_bad_seed() {
        assert!(Credentials::parse("").is_err());
        assert!(Credentials::parse(&format!("{JWT_BEGIN}\nx\n{JWT_END}\n")).is_err());
        let bad = Credentials::new("x".into(), "SUNOTASEED".into()).to_file();
        assert!(Credentials::parse(&bad).unwrap_err().contains("seed"));
    }
}
