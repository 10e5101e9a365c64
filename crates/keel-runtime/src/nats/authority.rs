//! Keel's NATS trust chain (decentralized JWT auth): an **operator** signs two **accounts**,
//! SYS (the server's own) and KEEL (every Keel subject and stream); the KEEL account names a
//! **signing key** that signs **user** JWTs with the permissions given (`keel_bus::acl` says
//! which). The server
//! knows only the operator and the two account JWTs, so a new user — a service, a test, a
//! tenant's audit reader — needs no server reload.
//!
//! [`Authority`] holds all four keys (the operator's tooling: `keelctl nats init|creds`, the
//! tests). [`UserSigner`] holds only the account's signing key and the account's public key:
//! what provisioning needs to issue a tenant's audit credentials.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use nats_io_jwt::{
    Account, KeyPair, Operator, OperatorLimits, Permission, SigningKeys, StringList, SystemAccount, Token,
    User,
};

use super::{Credentials, inbox_prefix};

/// Allow / deny lists for publish and subscribe, written into a user JWT.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Permissions {
    pub publish: Vec<String>,
    pub publish_deny: Vec<String>,
    pub subscribe: Vec<String>,
}

impl Permissions {
    /// Everything in the account.
    pub fn admin() -> Self {
        Self {
            publish: vec![">".into()],
            publish_deny: vec![],
            subscribe: vec![">".into()],
        }
    }
}

/// A trust-chain file could not be read, parsed or written.
#[derive(Debug, thiserror::Error)]
#[error("NATS authority: {0}")]
pub struct AuthorityError(String);

type Result<T> = std::result::Result<T, AuthorityError>;

fn fail(what: impl std::fmt::Display) -> AuthorityError {
    AuthorityError(what.to_string())
}

/// Where the local trust chain lives: `KEEL_NATS_HOME`, else `~/.local/state/keel/nats` — one
/// per machine user, since one Keel NATS serves every checkout on the machine.
pub fn default_home() -> PathBuf {
    if let Some(dir) = std::env::var_os("KEEL_NATS_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    let state = std::env::var_os("XDG_STATE_HOME")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/tmp".into())).join(".local/state")
        });
    state.join("keel/nats")
}

/// The operator, both accounts and the user-signing key.
pub struct Authority {
    operator: KeyPair,
    system: KeyPair,
    account: KeyPair,
    signer: KeyPair,
}

/// Issues user credentials for the KEEL account, and nothing else.
pub struct UserSigner {
    account: String,
    key: KeyPair,
}

const SEEDS: [&str; 4] = ["operator.nk", "sys.nk", "keel.nk", "signer.nk"];

impl Authority {
    pub fn generate() -> Self {
        Self {
            operator: KeyPair::new_operator(),
            system: KeyPair::new_account(),
            account: KeyPair::new_account(),
            signer: KeyPair::new_account(),
        }
    }

    /// Loads the keys kept in `dir` (see [`Authority::create_in`]).
    pub fn load(dir: &Path) -> Result<Self> {
        let read = |name: &str| -> Result<KeyPair> {
            let path = dir.join(name);
            let seed =
                std::fs::read_to_string(&path).map_err(|e| fail(format!("{}: {e}", path.display())))?;
            KeyPair::from_seed(seed.trim()).map_err(|e| fail(format!("{}: {e}", path.display())))
        };
        Ok(Self {
            operator: read(SEEDS[0])?,
            system: read(SEEDS[1])?,
            account: read(SEEDS[2])?,
            signer: read(SEEDS[3])?,
        })
    }

    /// Loads the keys in `dir`, generating them (files 0600 in a 0700 directory) when absent.
    pub fn load_or_create(dir: &Path) -> Result<Self> {
        if dir.join(SEEDS[0]).exists() {
            return Self::load(dir);
        }
        let authority = Self::generate();
        create_private_dir(dir)?;
        let seeds = [
            &authority.operator,
            &authority.system,
            &authority.account,
            &authority.signer,
        ];
        for (name, key) in SEEDS.iter().zip(seeds) {
            let seed = key.seed().map_err(fail)?;
            write_private(&dir.join(name), &seed)?;
        }
        Ok(authority)
    }

    pub fn account_public_key(&self) -> String {
        self.account.public_key()
    }

    pub fn operator_jwt(&self) -> String {
        let claims = Operator {
            system_account: Some(SystemAccount(self.system.public_key())),
            ..Default::default()
        };
        Token::new(self.operator.public_key())
            .name("keel")
            .claims(claims)
            .sign(&self.operator)
    }

    fn account_jwt(&self, name: &str, key: &KeyPair, jetstream: bool, signing: Option<&KeyPair>) -> String {
        let unlimited = if jetstream { -1 } else { 0 };
        let claims = Account {
            limits: Some(OperatorLimits {
                mem_storage: unlimited,
                disk_storage: unlimited,
                streams: unlimited,
                consumer: unlimited,
                wildcards: true,
                ..Default::default()
            }),
            signing_keys: signing.map(SigningKeys::from),
            ..Default::default()
        };
        Token::new(key.public_key())
            .name(name)
            .claims(claims)
            .sign(&self.operator)
    }

    /// The server configuration: the trust chain (JWTs given), JetStream under `store_dir`.
    fn server_config(
        host: &str,
        port: u16,
        store_dir: &Path,
        operator_jwt: &Path,
        accounts: &[(String, String)],
    ) -> String {
        let sys = &accounts[0].0;
        let preload: String = accounts
            .iter()
            .map(|(key, jwt)| format!("  {key}: {jwt:?}\n"))
            .collect();
        format!(
            "# Keel's own NATS: decentralized JWT auth. Generated by `keelctl nats init`; rerun it rather than edit.\n\
             host: {host}\nport: {port}\nserver_name: keel\n\
             # 1 MiB envelopes (keel-events' limit) plus headers.\nmax_payload: 2MB\nmax_connections: 10000\n\
             # A CONNECT carries the user JWT, whose permissions can run to a few KiB.\nmax_control_line: 65536\n\
             jetstream {{\n  store_dir: {store:?}\n  max_memory_store: 268435456\n  max_file_store: 21474836480\n}}\n\
             operator: {op:?}\nsystem_account: {sys}\nresolver: MEMORY\nresolver_preload: {{\n{preload}}}\n",
            store = store_dir.display().to_string(),
            op = operator_jwt.display().to_string(),
        )
    }

    /// Writes `operator.jwt`, the account JWTs (each once: they are kept, so the configuration
    /// only changes when its settings do) and `server.conf` into `dir`; returns the config path.
    pub fn write_server_files(&self, dir: &Path, host: &str, port: u16) -> Result<PathBuf> {
        let keep = |name: &str, make: &dyn Fn() -> String| -> Result<String> {
            let path = dir.join(name);
            if let Ok(jwt) = std::fs::read_to_string(&path)
                && !jwt.trim().is_empty()
            {
                return Ok(jwt.trim().to_owned());
            }
            let jwt = make();
            write_private(&path, &jwt)?;
            Ok(jwt)
        };
        keep("operator.jwt", &|| self.operator_jwt())?;
        let sys = keep("sys.jwt", &|| self.account_jwt("SYS", &self.system, false, None))?;
        let keel = keep("keel.jwt", &|| {
            self.account_jwt("KEEL", &self.account, true, Some(&self.signer))
        })?;
        let accounts = [(self.system.public_key(), sys), (self.account.public_key(), keel)];
        let conf = dir.join("server.conf");
        let text = Self::server_config(host, port, dir, &dir.join("operator.jwt"), &accounts);
        if std::fs::read_to_string(&conf).ok().as_deref() != Some(text.as_str()) {
            write_private(&conf, &text)?;
        }
        Ok(conf)
    }

    /// The user-signing key alone, for a service that issues credentials (provisioning).
    pub fn signer(&self) -> Result<UserSigner> {
        let seed = self.signer.seed().map_err(fail)?;
        Ok(UserSigner {
            account: self.account.public_key(),
            key: KeyPair::from_seed(&seed).map_err(fail)?,
        })
    }

    /// Credentials named `name` with the permissions `perms` makes of the user's inbox prefix,
    /// valid for `ttl` (forever when `None`).
    pub fn user(
        &self,
        name: &str,
        perms: impl FnOnce(&str) -> Permissions,
        ttl: Option<Duration>,
    ) -> Credentials {
        issue(&self.account.public_key(), &self.signer, name, perms, ttl)
    }
}

impl UserSigner {
    /// `{"account": "A…", "seed": "SA…"}`, the file provisioning reads.
    pub fn to_file(&self) -> String {
        serde_json::json!({ "account": self.account, "seed": self.key.seed().unwrap_or_default() })
            .to_string()
    }

    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| fail(format!("{}: {e}", path.display())))?;
        let v: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| fail(format!("{}: {e}", path.display())))?;
        let field = |k: &str| v.get(k).and_then(|s| s.as_str()).map(str::to_owned);
        let (Some(account), Some(seed)) = (field("account"), field("seed")) else {
            return Err(fail(format!(
                "{}: needs \"account\" and \"seed\"",
                path.display()
            )));
        };
        let key = KeyPair::from_seed(&seed).map_err(|e| fail(format!("{}: {e}", path.display())))?;
        Ok(Self { account, key })
    }

    /// See [`Authority::user`].
    pub fn issue(
        &self,
        name: &str,
        perms: impl FnOnce(&str) -> Permissions,
        ttl: Option<Duration>,
    ) -> Credentials {
        issue(&self.account, &self.key, name, perms, ttl)
    }
}

fn list(items: Vec<String>) -> Option<StringList> {
    (!items.is_empty()).then_some(StringList(items))
}

fn issue(
    account: &str,
    signer: &KeyPair,
    name: &str,
    perms: impl FnOnce(&str) -> Permissions,
    ttl: Option<Duration>,
) -> Credentials {
    let user = KeyPair::new_user();
    let perms = perms(&inbox_prefix(&user.public_key()));
    let claims = User {
        issuer_account: Some(account.to_owned()),
        pub_: Some(Permission {
            allow: list(perms.publish),
            deny: list(perms.publish_deny),
        }),
        sub: Some(Permission {
            allow: list(perms.subscribe),
            deny: None,
        }),
        bearer_token: false,
        ..Default::default()
    };
    let mut token = Token::new(user.public_key()).name(name).claims(claims);
    if let Some(ttl) = ttl {
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        token = token.expires((now + ttl).as_secs() as i64);
    }
    let jwt = token.sign(signer);
    Credentials::new(jwt, user.seed().unwrap_or_default())
}

fn create_private_dir(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| fail(format!("{}: {e}", dir.display())))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| fail(format!("{}: {e}", dir.display())))?;
    }
    Ok(())
}

/// Writes `contents` to `path` readable by the owner only, atomically (temp file + rename).
pub fn write_private(path: &Path, contents: &str) -> Result<()> {
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let io = |e: std::io::Error| fail(format!("{}: {e}", path.display()));
    {
        use std::io::Write;
        let mut f = options.open(&tmp).map_err(io)?;
        f.write_all(contents.as_bytes()).map_err(io)?;
    }
    std::fs::rename(&tmp, path).map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_survive_a_reload_and_users_carry_the_account() {
        let dir = std::env::temp_dir().join(format!("keel-authority-{}", uuid::Uuid::new_v4().simple()));
        let a = Authority::load_or_create(&dir).expect("create");
        let b = Authority::load_or_create(&dir).expect("reload");
        assert_eq!(a.account_public_key(), b.account_public_key());
        let creds = b.user(
            "tenant",
            |inbox| Permissions {
                publish: vec!["t1.keel.evt.*.tenant.>".into()],
                subscribe: vec![format!("{inbox}.>")],
                ..Default::default()
            },
            None,
        );
        let body = creds.jwt.split('.').nth(1).expect("claims part");
        let claims: serde_json::Value = serde_json::from_slice(
            &data_encoding::BASE64URL_NOPAD
                .decode(body.as_bytes())
                .expect("base64url"),
        )
        .expect("json");
        assert_eq!(claims["nats"]["issuer_account"], a.account_public_key());
        assert_eq!(claims["sub"], creds.public_key().expect("key"));
        let allow = claims["nats"]["pub"]["allow"].as_array().expect("allow list");
        assert!(allow.iter().any(|s| s == "t1.keel.evt.*.tenant.>"));
        let _ = std::fs::remove_dir_all(dir);
    }
}
