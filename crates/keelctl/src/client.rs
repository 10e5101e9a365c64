//! Connecting to the services and authenticating: a bearer access token given as is, or an API
//! key (the bootstrap operator key included) traded for one with the tenant service's
//! `ExchangeApiKey`. The same token is then sent to every service (tenant, timeline, billing).

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use keel_proto::v1 as pb;
use keel_proto::v1::license_service_client::LicenseServiceClient;
use keel_proto::v1::tenant_service_client::TenantServiceClient;
use keel_proto::v1::token_service_client::TokenServiceClient;
use keel_runtime::Tls;
use tonic::codegen::InterceptedService;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::{Channel, Endpoint};

/// Where `just up` leaves the generated bootstrap operator key.
const BOOTSTRAP_TOKEN_FILE: &str = ".keel/bootstrap-token";
/// Where `just up` leaves the local CA certificate.
pub const LOCAL_CA_FILE: &str = ".keel/tls/ca.pem";

#[derive(Args, Clone, Debug)]
pub struct ConnectionArgs {
    /// gRPC address of the tenant service.
    #[arg(
        long,
        global = true,
        env = "KEEL_TENANT_ADDR",
        default_value = "https://127.0.0.1:50051"
    )]
    pub addr: String,
    /// gRPC address of the timeline service (`timeline`, `obs`).
    #[arg(
        long,
        global = true,
        env = "KEEL_TIMELINE_ADDR",
        default_value = "https://127.0.0.1:50054"
    )]
    pub timeline_addr: String,
    /// gRPC address of the provisioning service (`audit creds`).
    #[arg(
        long,
        global = true,
        env = "KEEL_PROVISIONING_ADDR",
        default_value = "https://127.0.0.1:50052"
    )]
    pub provisioning_addr: String,
    /// gRPC address of the billing meter (`billing`).
    #[arg(
        long,
        global = true,
        env = "KEEL_BILLING_ADDR",
        default_value = "https://127.0.0.1:50053"
    )]
    pub billing_addr: String,
    /// CA certificate (PEM) the services' certificates must chain to. Default: the local CA
    /// `just up` made, .keel/tls/ca.pem in the current directory.
    #[arg(long, global = true, env = "KEEL_TLS_CA", value_name = "PEM")]
    pub ca: Option<std::path::PathBuf>,
    /// Talk plaintext (http:// addresses) to a mesh started with KEEL_TLS_INSECURE=true.
    #[arg(long, global = true, env = "KEEL_TLS_INSECURE", value_parser = clap::builder::FalseyValueParser::new())]
    pub insecure: bool,
    /// Bearer access token (JWT). Takes precedence over --api-key.
    #[arg(long, global = true, env = "KEEL_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// API key to exchange for an access token. Falls back to KEEL_BOOTSTRAP_TOKEN, then to the
    /// file .keel/bootstrap-token in the current directory.
    #[arg(long, global = true, env = "KEEL_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
}

/// The trace this invocation starts: every call carries it as `traceparent`, so one command's
/// calls, and everything they cause across the mesh, are one trace.
static TRACEPARENT: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(keel_runtime::telemetry::new_traceparent);

/// The trace id of this invocation (`--trace` prints it).
pub fn trace_id() -> String {
    keel_runtime::telemetry::parse_traceparent(&TRACEPARENT)
        .map(|(trace, _)| trace)
        .unwrap_or_default()
}

/// Adds `authorization: Bearer <token>` and the invocation's `traceparent` to every call.
#[derive(Clone)]
pub struct Bearer(Option<MetadataValue<Ascii>>);

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        if let Ok(tp) = TRACEPARENT.parse() {
            req.metadata_mut().insert("traceparent", tp);
        }
        Ok(req)
    }
}

enum Credential {
    Token(String),
    ApiKey(String),
}

pub type Authed = InterceptedService<Channel, Bearer>;

/// The three gRPC clients of the tenant service, authenticated.
pub struct Clients {
    pub tenants: TenantServiceClient<Authed>,
    pub tokens: TokenServiceClient<Authed>,
    pub licenses: LicenseServiceClient<Authed>,
}

impl Clients {
    pub async fn connect(args: &ConnectionArgs) -> anyhow::Result<Self> {
        let mut session = Session::open(args).await?;
        let channel = session.tenant_channel().await?;
        let bearer = session.bearer.clone();
        Ok(Self {
            tenants: TenantServiceClient::with_interceptor(channel.clone(), bearer.clone()),
            tokens: TokenServiceClient::with_interceptor(channel.clone(), bearer.clone()),
            licenses: LicenseServiceClient::with_interceptor(channel, bearer),
        })
    }
}

/// An access token for every service, and the tenant service's channel once it is needed
/// (to exchange an API key, or later to look a tenant up).
pub struct Session {
    pub bearer: Bearer,
    addr: String,
    tls: Tls,
    tenant: Option<Channel>,
}

impl Session {
    pub async fn open(args: &ConnectionArgs) -> anyhow::Result<Self> {
        // Credentials are looked up before any connection, so their absence is reported as such.
        let given = match non_empty(args.token.as_deref()) {
            Some(token) => Credential::Token(token.to_owned()),
            None => Credential::ApiKey(api_key(args.api_key.as_deref())?),
        };
        let mut session = Self {
            bearer: Bearer(None),
            addr: args.addr.clone(),
            tls: tls(args)?,
            tenant: None,
        };
        let token = match given {
            Credential::Token(token) => token,
            Credential::ApiKey(key) => exchange(session.tenant_channel().await?, &key).await?,
        };
        let header: MetadataValue<Ascii> = format!("Bearer {token}")
            .parse()
            .map_err(|_| anyhow::anyhow!("the access token contains characters not allowed in a header"))?;
        session.bearer = Bearer(Some(header));
        Ok(session)
    }

    /// The tenant service, connected on first use.
    pub async fn tenant_channel(&mut self) -> anyhow::Result<Channel> {
        if let Some(channel) = &self.tenant {
            return Ok(channel.clone());
        }
        let endpoint = endpoint(&self.tls, &self.addr, "--addr")?.timeout(Duration::from_secs(30));
        let channel = connect(endpoint, "tenant service", &self.addr).await?;
        self.tenant = Some(channel.clone());
        Ok(channel)
    }

    /// `tenant` as a tenant id: what looks like a slug is looked up in the tenant service.
    pub async fn tenant_id(&mut self, tenant: &str) -> anyhow::Result<String> {
        if !is_slug(tenant) {
            return Ok(tenant.to_owned());
        }
        let channel = self.tenant_channel().await?;
        let mut tenants = TenantServiceClient::with_interceptor(channel, self.bearer.clone());
        let found = tenants
            .get_tenant(pb::GetTenantRequest {
                tenant: Some(tenant_ref(tenant)),
            })
            .await?;
        Ok(found.into_inner().id)
    }
}

/// The timeline service. No per-channel request timeout (a tail streams for as long as the user
/// wants; unary calls set their own); HTTP/2 pings notice a server that went away mid-tail.
pub async fn timeline_channel(conn: &ConnectionArgs) -> anyhow::Result<Channel> {
    let addr = &conn.timeline_addr;
    let endpoint = endpoint(&tls(conn)?, addr, "--timeline-addr")?
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(20));
    connect(endpoint, "timeline service", addr).await
}

/// The provisioning service.
pub async fn provisioning_channel(conn: &ConnectionArgs) -> anyhow::Result<Channel> {
    let addr = &conn.provisioning_addr;
    let endpoint = endpoint(&tls(conn)?, addr, "--provisioning-addr")?.timeout(Duration::from_secs(30));
    connect(endpoint, "provisioning service", addr).await
}

/// The billing meter.
pub async fn billing_channel(conn: &ConnectionArgs) -> anyhow::Result<Channel> {
    let addr = &conn.billing_addr;
    let endpoint = endpoint(&tls(conn)?, addr, "--billing-addr")?.timeout(Duration::from_secs(30));
    connect(endpoint, "billing meter", addr).await
}

/// `--insecure`: plaintext; else the CA of `--ca`, else the local one `just up` made.
fn tls(args: &ConnectionArgs) -> anyhow::Result<Tls> {
    if args.insecure {
        return Ok(Tls::insecure());
    }
    let ca = match &args.ca {
        Some(path) => path.clone(),
        None if Path::new(LOCAL_CA_FILE).is_file() => LOCAL_CA_FILE.into(),
        None => bail!(
            "no CA certificate to check the services against: pass --ca <PEM> (KEEL_TLS_CA), \
             run from the checkout where `just up` wrote {LOCAL_CA_FILE}, or --insecure for a \
             plaintext mesh"
        ),
    };
    Tls::client_of(&ca).map_err(|e| anyhow::anyhow!("--ca: {e}"))
}

fn endpoint(tls: &Tls, addr: &str, flag: &str) -> anyhow::Result<Endpoint> {
    Ok(tls
        .endpoint(addr, flag)
        .map_err(|e| tonic::Status::invalid_argument(e.to_string()))?
        .connect_timeout(Duration::from_secs(5)))
}

async fn connect(endpoint: Endpoint, service: &str, addr: &str) -> anyhow::Result<Channel> {
    endpoint.connect().await.map_err(|e| {
        let mut msg = format!("cannot reach the {service} at {addr}: {e}");
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            // hyper and tonic repeat their inner error in their own message.
            let text = s.to_string();
            if !msg.contains(&text) {
                msg.push_str(&format!(": {text}"));
            }
            source = s.source();
        }
        tonic::Status::unavailable(msg).into()
    })
}

/// `--api-key`, else `KEEL_BOOTSTRAP_TOKEN`, else `.keel/bootstrap-token`.
fn api_key(flag: Option<&str>) -> anyhow::Result<String> {
    if let Some(key) = non_empty(flag) {
        return Ok(key.to_owned());
    }
    if let Ok(key) = std::env::var("KEEL_BOOTSTRAP_TOKEN")
        && let Some(key) = non_empty(Some(&key))
    {
        return Ok(key.to_owned());
    }
    let file = Path::new(BOOTSTRAP_TOKEN_FILE);
    if file.exists() {
        let key = std::fs::read_to_string(file).with_context(|| format!("reading {BOOTSTRAP_TOKEN_FILE}"))?;
        if let Some(key) = non_empty(Some(&key)) {
            return Ok(key.to_owned());
        }
    }
    bail!(
        "no credentials: pass --token (KEEL_TOKEN) or --api-key (KEEL_API_KEY), or run where {BOOTSTRAP_TOKEN_FILE} exists"
    )
}

async fn exchange(channel: Channel, api_key: &str) -> Result<String, tonic::Status> {
    let mut tokens = TokenServiceClient::with_interceptor(channel, Bearer(None));
    let token = tokens
        .exchange_api_key(pb::ExchangeApiKeyRequest {
            api_key: api_key.to_owned(),
            scopes: Vec::new(),
        })
        .await?
        .into_inner();
    Ok(token.token)
}

fn non_empty(s: Option<&str>) -> Option<&str> {
    s.map(str::trim).filter(|s| !s.is_empty())
}

/// Names a tenant by slug when `s` looks like one (`^[a-z][a-z0-9-]{2,39}$` and not a UUID),
/// else by id.
pub fn tenant_ref(s: &str) -> pb::TenantRef {
    let r = if is_slug(s) {
        pb::tenant_ref::Ref::Slug(s.to_owned())
    } else {
        pb::tenant_ref::Ref::Id(s.to_owned())
    };
    pb::TenantRef { r#ref: Some(r) }
}

pub fn is_slug(s: &str) -> bool {
    let mut chars = s.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_lowercase());
    first_ok
        && (3..=40).contains(&s.len())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && uuid::Uuid::try_parse(s).is_err()
}

/// The canonical gRPC name of a status code (`NOT_FOUND`), as in the gRPC spec.
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "CANCELLED",
        Unknown => "UNKNOWN",
        InvalidArgument => "INVALID_ARGUMENT",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        NotFound => "NOT_FOUND",
        AlreadyExists => "ALREADY_EXISTS",
        PermissionDenied => "PERMISSION_DENIED",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        FailedPrecondition => "FAILED_PRECONDITION",
        Aborted => "ABORTED",
        OutOfRange => "OUT_OF_RANGE",
        Unimplemented => "UNIMPLEMENTED",
        Internal => "INTERNAL",
        Unavailable => "UNAVAILABLE",
        DataLoss => "DATA_LOSS",
        Unauthenticated => "UNAUTHENTICATED",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn is_slug_ref(s: &str) -> bool {
        matches!(tenant_ref(s).r#ref, Some(pb::tenant_ref::Ref::Slug(_)))
    }

    #[test]
    fn slugs_and_ids_are_told_apart() {
        assert!(is_slug_ref("acme"));
        assert!(is_slug_ref("acme-corp-2"));
        assert!(!is_slug_ref("ab"), "too short");
        assert!(!is_slug_ref(&"a".repeat(41)), "too long");
        assert!(!is_slug_ref("Acme"));
        assert!(!is_slug_ref("1acme"));
        assert!(!is_slug_ref("0192f0c0-aaaa-7bbb-8ccc-dddddddddddd"));
        // Starts with a letter and fits the slug pattern, but is a UUID: an id.
        assert!(!is_slug_ref("a192f0c0-aaaa-7bbb-8ccc-dddddddddddd"));
        assert!(!is_slug_ref("acmé"));
    }
}
