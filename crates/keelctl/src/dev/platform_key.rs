//! Provisioning's own platform key for the local mesh: made once with the bootstrap key, kept
//! in `.keel/provisioning-key`, re-made when it no longer exchanges (revoked, or another
//! database).

use std::path::Path;

use anyhow::Context as _;
use keel_proto::v1 as pb;
use keel_proto::v1::token_service_client::TokenServiceClient;

/// Where the key is kept (0600).
pub const KEY_FILE: &str = ".keel/provisioning-key";

/// The key provisioning runs with: the kept one if it still exchanges, else a new platform
/// account `sa_pf-provisioning-<unix seconds>` holding `keel_tenancy::client::SCOPES_NEEDED`.
pub async fn ensure(tls: &keel_runtime::Tls, tenant_url: &str, bootstrap: &str) -> anyhow::Result<String> {
    let channel = tls
        .endpoint(tenant_url, "tenant address")?
        .connect()
        .await
        .with_context(|| format!("connecting to the tenant service at {tenant_url}"))?;
    let mut tokens = TokenServiceClient::new(channel.clone());
    let exchange = |key: String| pb::ExchangeApiKeyRequest {
        api_key: key,
        scopes: vec![],
    };
    if let Ok(kept) = std::fs::read_to_string(KEY_FILE) {
        let kept = kept.trim().to_owned();
        if tokens.exchange_api_key(exchange(kept.clone())).await.is_ok() {
            return Ok(kept);
        }
    }
    let operator = tokens
        .exchange_api_key(exchange(bootstrap.to_owned()))
        .await
        .context("exchanging the bootstrap key (KEEL_BOOTSTRAP_TOKEN) to make provisioning's key")?
        .into_inner()
        .token;
    let mut request = tonic::Request::new(pb::CreateOperatorKeyRequest {
        name: format!("provisioning-{}", chrono::Utc::now().timestamp()),
        scopes: keel_tenancy::client::SCOPES_NEEDED
            .iter()
            .map(|s| (*s).to_owned())
            .collect(),
    });
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {operator}").parse()?);
    let created = tokens
        .create_operator_key(request)
        .await
        .context("creating provisioning's platform key")?
        .into_inner();
    if let Some(dir) = Path::new(KEY_FILE).parent() {
        std::fs::create_dir_all(dir)?;
    }
    keel_runtime::nats::authority::write_private(Path::new(KEY_FILE), &created.api_key)?;
    println!(
        "[dev] provisioning runs as {} ({}), key in {KEY_FILE}",
        created.account_id,
        keel_tenancy::client::SCOPES_NEEDED.join(" ")
    );
    Ok(created.api_key)
}
