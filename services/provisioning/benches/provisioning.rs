//! `cargo bench -p keel-provisioning --bench provisioning`: time from CreateTenant to ACTIVE,
//! p50/p95, for tenants created one at a time and for 50 created at once. Prints, asserts nothing.
//!
//! Runs the real release binaries of keel-tenant and keel-provisioning on one bus namespace
//! against the local PostgreSQL, NATS and Redis; ACTIVE is observed by polling GetTenant every
//! 5 ms, so each figure includes up to 5 ms of polling granularity.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use keel_e2e::{Bearer, ServiceProc};
use keel_proto::v1 as pb;
use keel_proto::v1::tenant_service_client::TenantServiceClient;
use keel_proto::v1::token_service_client::TokenServiceClient;
use tonic::codegen::InterceptedService;
use tonic::transport::Channel;

type Tenants = TenantServiceClient<InterceptedService<Channel, Bearer>>;

fn pct(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    v.get(((v.len() as f64 - 1.0) * p).round() as usize)
        .copied()
        .unwrap_or_default()
}

async fn create_and_wait(api: &mut Tenants, slug: String) -> anyhow::Result<Duration> {
    let start = Instant::now();
    let t = api
        .create_tenant(pb::CreateTenantRequest {
            name: format!("Bench {slug}"),
            slug: slug.clone(),
            tier: pb::Tier::Mid as i32,
            owner_email: format!("owner@{slug}.example"),
            request_id: format!("bench-{slug}"),
        })
        .await?
        .into_inner();
    let deadline = start + Duration::from_secs(120);
    loop {
        let got = api
            .get_tenant(pb::GetTenantRequest {
                tenant: Some(pb::TenantRef {
                    r#ref: Some(pb::tenant_ref::Ref::Id(t.id.clone())),
                }),
            })
            .await?;
        match pb::TenantStatus::try_from(got.get_ref().status) {
            Ok(pb::TenantStatus::Active) => return Ok(start.elapsed()),
            Ok(pb::TenantStatus::Failed) => anyhow::bail!("{slug} failed: {}", got.get_ref().status_reason),
            _ if Instant::now() > deadline => anyhow::bail!("{slug} not ACTIVE after 120 s"),
            _ => tokio::time::sleep(Duration::from_millis(5)).await,
        }
    }
}

fn slug() -> String {
    format!("b{}", &uuid::Uuid::new_v4().simple().to_string()[..10])
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let token = keel_store::testing::unique_token();
    let bootstrap = format!("boot-{}", uuid::Uuid::new_v4());
    let gitops = std::env::temp_dir().join(format!("keel-bench-gitops-{token}"));
    let tenant_bin = keel_e2e::binary("keel-tenant")?;
    let prov_bin = keel_e2e::binary("keel-provisioning")?;
    let quiet = ("KEEL_LOG".to_owned(), "warn".to_owned());
    let mut tenant = ServiceProc::start(
        &tenant_bin,
        "tenant",
        &format!("bench_{token}_t"),
        &token,
        &HashMap::from([
            ("KEEL_BOOTSTRAP_TOKEN".to_owned(), bootstrap.clone()),
            quiet.clone(),
        ]),
    )
    .await?;
    let env = HashMap::from([
        ("KEEL_BOOTSTRAP_TOKEN".to_owned(), bootstrap.clone()),
        ("KEEL_TENANT_ADDR".to_owned(), tenant.grpc_url()),
        (
            "KEEL_JWKS_URL".to_owned(),
            format!("{}/.well-known/jwks.json", tenant.http_url()),
        ),
        (
            "KEEL_PROVISIONING_GITOPS_DIR".to_owned(),
            gitops.display().to_string(),
        ),
        ("KEEL_RESOURCE_PREFIX".to_owned(), format!("{token}_")),
        quiet,
    ]);
    let mut prov = ServiceProc::start(
        Path::new(&prov_bin),
        "provisioning",
        &format!("bench_{token}_p"),
        &token,
        &env,
    )
    .await?;
    let channel = tenant.channel().await?;
    let operator = TokenServiceClient::new(channel.clone())
        .exchange_api_key(pb::ExchangeApiKeyRequest {
            api_key: bootstrap,
            scopes: vec![],
        })
        .await?
        .into_inner()
        .token;
    let mut api: Tenants = TenantServiceClient::with_interceptor(channel, Bearer(Some(operator)));
    println!("keel-provisioning bench (release binaries; ACTIVE polled every 5 ms)");

    // Warm-up: first connections, JWKS fetch, prepared statements.
    create_and_wait(&mut api, slug()).await?;
    let mut one = Vec::new();
    for _ in 0..10 {
        one.push(create_and_wait(&mut api, slug()).await?);
    }
    println!(
        "1 tenant at a time (n=10): p50 {:.0} ms, p95 {:.0} ms",
        pct(&mut one, 0.5).as_secs_f64() * 1e3,
        pct(&mut one, 0.95).as_secs_f64() * 1e3
    );

    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let mut api = api.clone();
        tasks.push(tokio::spawn(
            async move { create_and_wait(&mut api, slug()).await },
        ));
    }
    let mut fifty = Vec::new();
    for t in tasks {
        fifty.push(t.await??);
    }
    let all = start.elapsed();
    println!(
        "50 tenants at once: p50 {:.0} ms, p95 {:.0} ms, all 50 ACTIVE after {:.0} ms (target p95 < 2000 ms)",
        pct(&mut fifty, 0.5).as_secs_f64() * 1e3,
        pct(&mut fifty, 0.95).as_secs_f64() * 1e3,
        all.as_secs_f64() * 1e3
    );

    let _ = prov.terminate().await;
    let _ = tenant.terminate().await;
    let _ = std::fs::remove_dir_all(&gitops);
    keel_e2e::drop_everything(&token).await?;
    Ok(())
}
