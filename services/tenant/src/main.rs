//! `keel-tenant`: the tenant service binary (gRPC 50051, HTTP 8081).

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let rt = keel_runtime::Service::from_env("tenant")?;
    keel_tenant::app::run(rt).await
}
