//! `keel-provisioning`: the provisioning service binary (gRPC 50052, HTTP 8082).

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let rt = keel_runtime::Service::from_env("provisioning")?;
    keel_provisioning::app::run(rt).await
}
