//! `keel-tenant`: the tenant service binary (gRPC 50051, HTTP 8081).

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let (rt, settings) = keel_runtime::Service::from_env_with::<keel_tenant::app::Settings>("tenant")?;
    keel_tenant::app::run(rt, settings).await
}
