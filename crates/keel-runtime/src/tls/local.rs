//! The local development CA (rcgen): `ca.pem` + `ca-key.pem` and, per service, `<service>.pem` +
//! `<service>-key.pem`, valid for `localhost`, `127.0.0.1`, `::1` and the service's name, for
//! both server and client authentication. `keelctl tls init` (run by `just up`) and the tests
//! make them; production brings its own CA and certificates through the same settings.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
    KeyPair, KeyUsagePurpose,
};

use crate::error::{Error, Result};

/// The CA certificate's file name (what clients trust).
pub const CA_CERT: &str = "ca.pem";
/// The CA key's file name (only `keelctl tls init` reads it).
pub const CA_KEY: &str = "ca-key.pem";
/// Every service of the mesh, by the name its configuration uses.
pub const SERVICES: &[&str] = &[
    "tenant",
    "provisioning",
    "billing",
    "timeline",
    "evidence",
    "scheduler",
    "evaluator",
];
/// How long generated certificates are valid.
const VALID_DAYS: i64 = 825;
/// How long [`ensure`] waits for another process making the same directory.
const LOCK_WAIT: Duration = Duration::from_secs(20);

pub fn cert_file(service: &str) -> String {
    format!("{service}.pem")
}

pub fn key_file(service: &str) -> String {
    format!("{service}-key.pem")
}

fn fail(what: impl std::fmt::Display) -> Error {
    Error::Tls(format!("local CA: {what}"))
}

/// The CA's fixed parameters: re-created to sign with a stored key (the issuer's name and key
/// identifier come from these and the key, so they match the stored certificate).
fn ca_params() -> Result<CertificateParams> {
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(fail)?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "Keel local development");
    dn.push(DnType::CommonName, "Keel local CA");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.not_before = time_from_now(-1);
    params.not_after = time_from_now(VALID_DAYS * 2);
    Ok(params)
}

fn time_from_now(days: i64) -> time::OffsetDateTime {
    time::OffsetDateTime::now_utc() + time::Duration::days(days)
}

fn leaf_params(name: &str) -> Result<CertificateParams> {
    let sans = vec![
        name.to_owned(),
        format!("keel-{name}"),
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        "::1".to_owned(),
    ];
    let mut params = CertificateParams::new(sans).map_err(fail)?;
    params
        .distinguished_name
        .push(DnType::CommonName, format!("keel-{name}"));
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    params.not_before = time_from_now(-1);
    params.not_after = time_from_now(VALID_DAYS);
    Ok(params)
}

fn write(path: &Path, contents: &str, private: bool) -> Result<()> {
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(if private { 0o600 } else { 0o644 });
    }
    let io = |e: std::io::Error| fail(format!("{}: {e}", path.display()));
    let mut f = options.open(&tmp).map_err(io)?;
    f.write_all(contents.as_bytes()).map_err(io)?;
    f.sync_all().map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

/// Held while one process writes a directory; removed on drop. A lock older than the wait is
/// taken to be left by a crashed process.
struct Lock(PathBuf);

impl Lock {
    fn take(dir: &Path) -> Result<Lock> {
        let path = dir.join(".lock");
        let deadline = Instant::now() + LOCK_WAIT;
        loop {
            match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)
            {
                Ok(_) => return Ok(Lock(path)),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    let stale = std::fs::metadata(&path)
                        .and_then(|m| m.modified())
                        .ok()
                        .and_then(|t| SystemTime::now().duration_since(t).ok())
                        .is_some_and(|age| age > LOCK_WAIT);
                    if stale {
                        let _ = std::fs::remove_file(&path);
                    } else if Instant::now() > deadline {
                        return Err(fail(format!("{} is held by another process", path.display())));
                    } else {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                }
                Err(e) => return Err(fail(format!("{}: {e}", path.display()))),
            }
        }
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// What [`ensure`] did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Made {
    /// Whether a new CA was created.
    pub ca: bool,
    /// Services whose certificate was issued now.
    pub issued: Vec<String>,
}

/// Makes sure `dir` holds a CA and a certificate for each of `services`, creating only what is
/// missing (a certificate without its key, or the reverse, is re-issued). Safe to call from
/// several processes at once. Keys are written 0600.
pub fn ensure(dir: &Path, services: &[&str]) -> Result<Made> {
    std::fs::create_dir_all(dir).map_err(|e| fail(format!("{}: {e}", dir.display())))?;
    let _lock = Lock::take(dir)?;
    let mut made = Made::default();
    let (ca_cert, ca_key) = (dir.join(CA_CERT), dir.join(CA_KEY));
    let key = if ca_cert.exists() && ca_key.exists() {
        let pem = std::fs::read_to_string(&ca_key).map_err(|e| fail(format!("{}: {e}", ca_key.display())))?;
        KeyPair::from_pem(&pem).map_err(|e| fail(format!("{}: {e}", ca_key.display())))?
    } else {
        let key = KeyPair::generate().map_err(fail)?;
        let cert = ca_params()?.self_signed(&key).map_err(fail)?;
        write(&ca_key, &key.serialize_pem(), true)?;
        write(&ca_cert, &cert.pem(), false)?;
        made.ca = true;
        key
    };
    let issuer = Issuer::new(ca_params()?, key);
    for name in services {
        let (cert, key) = (dir.join(cert_file(name)), dir.join(key_file(name)));
        if !made.ca && cert.exists() && key.exists() {
            continue;
        }
        let leaf_key = KeyPair::generate().map_err(fail)?;
        let leaf = leaf_params(name)?.signed_by(&leaf_key, &issuer).map_err(fail)?;
        write(&key, &leaf_key.serialize_pem(), true)?;
        write(&cert, &leaf.pem(), false)?;
        made.issued.push((*name).to_owned());
    }
    Ok(made)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn makes_only_what_is_missing_and_keys_stay_private() {
        let dir = std::env::temp_dir().join(format!("keel-local-ca-{}", uuid::Uuid::new_v4()));
        let first = ensure(&dir, &["tenant", "timeline"]).unwrap();
        assert!(first.ca);
        assert_eq!(first.issued, ["tenant", "timeline"]);
        let ca = std::fs::read(dir.join(CA_CERT)).unwrap();
        let again = ensure(&dir, &["tenant", "timeline", "billing"]).unwrap();
        assert_eq!(
            again,
            Made {
                ca: false,
                issued: vec!["billing".into()]
            }
        );
        assert_eq!(std::fs::read(dir.join(CA_CERT)).unwrap(), ca, "the CA is kept");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.join(key_file("billing")))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        // A certificate issued by the re-created issuer chains to the stored CA.
        let tls = crate::tls::Tls::load(
            &dir.join(CA_CERT),
            Some((&dir.join(cert_file("billing")), &dir.join(key_file("billing")))),
        )
        .unwrap();
        assert!(tls.is_on());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
