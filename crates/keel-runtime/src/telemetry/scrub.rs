//! Redaction of secrets and personal data from log lines before they are written.
//!
//! Scrubbing happens on the formatted text rather than on field values so that nothing escapes
//! it: not a `Debug` impl that prints a token, not an error message quoting a URL with a password.

use std::borrow::Cow;
use std::io;
use std::sync::LazyLock;

use regex::{Captures, Regex};
use tracing_subscriber::fmt::MakeWriter;

/// Names of keys whose values are secrets, matched anywhere in the key (`db_password`,
/// `X-Api-Key`, `client_secret`, ...).
const SECRET_KEY: &str = r"[A-Za-z0-9_.-]*(?:password|passwd|secret|token|api[_-]?key|authorization|private[_-]?key)[A-Za-z0-9_.-]*";

struct Patterns {
    url_userinfo: Regex,
    key_value: Regex,
    bearer: Regex,
    jwt: Regex,
    email: Regex,
    secret_key: Regex,
}

/// `None` only if a pattern failed to compile, which the tests rule out; scrubbing then fails
/// closed (see [`scrub`]).
static PATTERNS: LazyLock<Option<Patterns>> = LazyLock::new(|| match Patterns::compile() {
    Ok(p) => Some(p),
    Err(e) => {
        eprintln!("keel-runtime: log scrubbing patterns do not compile: {e}");
        None
    }
});

impl Patterns {
    fn compile() -> Result<Patterns, regex::Error> {
        let value = [
            // `authorization: Bearer abc`: the scheme and the credential together.
            r"(?:bearer|basic)\s+[^\s\x22'\\,;&]+",
            // `\"password\":\"x\"`: JSON text embedded in a JSON string.
            r"\\\x22(?:[^\x22\\]|\\[^\x22])*\\\x22",
            r"\x22(?:[^\x22\\]|\\.)*\x22",
            r"'[^']*'",
            // Bare values; never starting with `:` so `module::token::fn` paths are left alone.
            r"[^\s\x22'\\,;&})=:][^\s\x22'\\,;&})]*",
        ]
        .join("|");
        Ok(Patterns {
            url_userinfo: Regex::new(r#"(?P<pre>\b[A-Za-z][A-Za-z0-9+.-]*://[^\s:@/"'\\]*):[^\s@/"'\\]+@"#)?,
            key_value: Regex::new(&format!(
                r#"(?i)(?P<key>\\?"{SECRET_KEY}\\?"|'{SECRET_KEY}'|{SECRET_KEY})(?P<sep>\s*[:=]\s*)(?P<value>{value})"#
            ))?,
            bearer: Regex::new(r#"(?i)\bbearer\s+[^\s"'\\,;]+"#)?,
            jwt: Regex::new(r"eyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")?,
            email: Regex::new(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b")?,
            secret_key: Regex::new(&format!("^(?i:{SECRET_KEY})$"))?,
        })
    }
}

/// Whether a setting or field named `key` holds a secret (`password`, `api_key`, ...).
pub fn is_secret_key(key: &str) -> bool {
    PATTERNS.as_ref().is_none_or(|p| p.secret_key.is_match(key))
}

/// Redacts secrets and e-mail addresses from one formatted log line (or any text).
///
/// Borrowed when nothing needed redacting. Idempotent: scrubbing scrubbed text changes nothing.
pub fn scrub(line: &str) -> Cow<'_, str> {
    let Some(p) = PATTERNS.as_ref() else {
        let redacted = "[redacted: log scrubber unavailable]";
        return if line.ends_with('\n') {
            Cow::Owned(format!("{redacted}\n"))
        } else {
            Cow::Borrowed(redacted)
        };
    };
    let mut out = Cow::Borrowed(line);
    let mut apply = |f: &dyn Fn(&str) -> Cow<'_, str>| {
        if let Cow::Owned(s) = f(&out) {
            out = Cow::Owned(s);
        }
    };
    // Userinfo first, so `user:pass@host.com` is not half-taken for an e-mail address.
    apply(&|s| p.url_userinfo.replace_all(s, "${pre}:[redacted]@"));
    apply(&|s| p.key_value.replace_all(s, redact_value));
    apply(&|s| p.bearer.replace_all(s, "Bearer [redacted]"));
    apply(&|s| p.jwt.replace_all(s, "[jwt]"));
    apply(&|s| p.email.replace_all(s, "[email]"));
    out
}

fn redact_value(c: &Captures<'_>) -> String {
    let value = &c["value"];
    let redacted = if value.starts_with("\\\"") {
        r#"\"[redacted]\""#
    } else if value.starts_with('"') {
        r#""[redacted]""#
    } else if value.starts_with('\'') {
        "'[redacted]'"
    } else {
        "[redacted]"
    };
    format!("{}{}{redacted}", &c["key"], &c["sep"])
}

/// A [`MakeWriter`] that scrubs every line (see [`scrub`]) before handing it to `inner`.
#[derive(Clone, Debug)]
pub struct ScrubbingWriter<M> {
    inner: M,
}

impl<M> ScrubbingWriter<M> {
    /// Wraps `inner`, e.g. `ScrubbingWriter::new(std::io::stderr)`.
    pub fn new(inner: M) -> Self {
        ScrubbingWriter { inner }
    }
}

impl<'a, M: MakeWriter<'a>> MakeWriter<'a> for ScrubbingWriter<M> {
    type Writer = ScrubbingLineWriter<M::Writer>;

    fn make_writer(&'a self) -> Self::Writer {
        ScrubbingLineWriter::new(self.inner.make_writer())
    }

    fn make_writer_for(&'a self, meta: &tracing::Metadata<'_>) -> Self::Writer {
        ScrubbingLineWriter::new(self.inner.make_writer_for(meta))
    }
}

/// Buffers writes and passes only whole, scrubbed lines on; a trailing partial line is scrubbed
/// and written on flush or drop.
#[derive(Debug)]
pub struct ScrubbingLineWriter<W: io::Write> {
    inner: W,
    pending: Vec<u8>,
}

impl<W: io::Write> ScrubbingLineWriter<W> {
    fn new(inner: W) -> Self {
        ScrubbingLineWriter {
            inner,
            pending: Vec::new(),
        }
    }

    fn emit(&mut self, upto: usize) -> io::Result<()> {
        let chunk: Vec<u8> = self.pending.drain(..upto).collect();
        let text = String::from_utf8_lossy(&chunk);
        self.inner.write_all(scrub(&text).as_bytes())
    }
}

impl<W: io::Write> io::Write for ScrubbingLineWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.pending.extend_from_slice(buf);
        if let Some(last_newline) = self.pending.iter().rposition(|&b| b == b'\n') {
            self.emit(last_newline + 1)?;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        if !self.pending.is_empty() {
            self.emit(self.pending.len())?;
        }
        self.inner.flush()
    }
}

impl<W: io::Write> Drop for ScrubbingLineWriter<W> {
    fn drop(&mut self) {
        // Nowhere to report a failed log write to; losing the line is the only option.
        let _ = io::Write::flush(self);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[track_caller]
    fn check(input: &str, expected: &str) {
        assert_eq!(scrub(input), expected, "scrubbing {input:?}");
        assert_eq!(
            scrub(expected),
            expected,
            "scrubbing is idempotent for {expected:?}"
        );
    }

    #[test]
    fn patterns_compile() {
        assert!(PATTERNS.is_some());
    }

    #[test]
    fn clean_lines_are_borrowed() {
        let line = r#"{"level":"INFO","message":"tenant created","tenant_id":"t-1"}"#;
        assert!(matches!(scrub(line), Cow::Borrowed(_)));
        check(
            "keel_auth::token::jwks refreshed",
            "keel_auth::token::jwks refreshed",
        );
    }

    #[test]
    fn emails() {
        check("invite sent to alice@example.com", "invite sent to [email]");
        check(
            r#"{"email":"Bob.Smith+tag@mail.example.co.uk"}"#,
            r#"{"email":"[email]"}"#,
        );
        check("a@b.io, c_d@e-f.org", "[email], [email]");
    }

    #[test]
    fn bearer_tokens() {
        check("got Bearer abc.def-123", "got Bearer [redacted]");
        check("header bearer\tXYZ==, next", "header Bearer [redacted], next");
        check(r#"{"h":"Bearer s3cr3t"}"#, r#"{"h":"Bearer [redacted]"}"#);
    }

    #[test]
    fn jwts() {
        let jwt = "eyJhbGciOiJFZERTQSJ9.eyJzdWIiOiJ1In0.c2lnbmF0dXJl-_x";
        check(&format!("token {jwt} rejected"), "token [jwt] rejected");
        check(&format!("[{jwt}]"), "[[jwt]]");
        check("eyJhbGciOiJub25lIn0.eyJzdWIiOiJ1In0.", "[jwt]");
    }

    #[test]
    fn key_value_pairs() {
        check("login password=hunter2 ok", "login password=[redacted] ok");
        check("db_password = hunter2", "db_password = [redacted]");
        check("secret: shh, other: 1", "secret: [redacted], other: 1");
        check("PASSWD=x;API_KEY=y", "PASSWD=[redacted];API_KEY=[redacted]");
        check("apikey='a b c'", "apikey='[redacted]'");
        check(
            r#"client_secret="a \"quoted\" s""#,
            r#"client_secret="[redacted]""#,
        );
        check(
            "x-api-key: k1 private_key: k2",
            "x-api-key: [redacted] private_key: [redacted]",
        );
        check(
            "GET /cb?access_token=abc&state=1",
            "GET /cb?access_token=[redacted]&state=1",
        );
        check("Config { token: \"t\" }", "Config { token: \"[redacted]\" }");
    }

    #[test]
    fn authorization_values_are_redacted_whole() {
        check("authorization: Bearer abc", "authorization: [redacted]");
        check("Authorization=Basic dXNlcjpwYXNz", "Authorization=[redacted]");
    }

    #[test]
    fn json_fields() {
        check(
            r#"{"message":"hi","password":"hunter2","tenant_id":"t1"}"#,
            r#"{"message":"hi","password":"[redacted]","tenant_id":"t1"}"#,
        );
        check(
            r#"{"api_key": "k", "n": 1}"#,
            r#"{"api_key": "[redacted]", "n": 1}"#,
        );
        check(r#"{"token":12345}"#, r#"{"token":[redacted]}"#);
        check(
            r#"{"authorization":"Bearer eyJa.eyJb.c"}"#,
            r#"{"authorization":"[redacted]"}"#,
        );
    }

    #[test]
    fn json_embedded_in_a_json_string() {
        check(
            r#"{"message":"body {\"password\":\"hunter2\",\"user\":\"u\"}"}"#,
            r#"{"message":"body {\"password\":\"[redacted]\",\"user\":\"u\"}"}"#,
        );
        check(
            r#"{"message":"failed: password=\"hunter2\""}"#,
            r#"{"message":"failed: password=\"[redacted]\""}"#,
        );
    }

    #[test]
    fn url_userinfo() {
        check(
            "connect postgres://keel:s3cret@db:5432/keel",
            "connect postgres://keel:[redacted]@db:5432/keel",
        );
        check("redis://:pw@127.0.0.1:6379", "redis://:[redacted]@127.0.0.1:6379");
        check(
            r#"{"url":"nats://u:p@example.com:4222"}"#,
            r#"{"url":"nats://u:[redacted]@example.com:4222"}"#,
        );
        check(
            "postgres://postgres@127.0.0.1:5432/keel",
            "postgres://postgres@127.0.0.1:5432/keel",
        );
        check("https://example.com:8443/x", "https://example.com:8443/x");
    }

    #[test]
    fn secret_key_names() {
        for key in [
            "password",
            "db_password",
            "API_KEY",
            "apikey",
            "x-api-key",
            "client_secret",
        ] {
            assert!(is_secret_key(key), "{key}");
        }
        for key in ["tenant", "grpc_addr", "jwks_ttl", "user"] {
            assert!(!is_secret_key(key), "{key}");
        }
    }

    #[test]
    fn writer_scrubs_whole_lines_even_when_split_across_writes() {
        let mut out = Vec::new();
        {
            let mut w = ScrubbingLineWriter::new(&mut out);
            w.write_all(b"mail alice@exa").unwrap();
            w.write_all(b"mple.com\npassword=").unwrap();
            w.write_all(b"hunter2").unwrap();
        }
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "mail [email]\npassword=[redacted]"
        );
    }
}
