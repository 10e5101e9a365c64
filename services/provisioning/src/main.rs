//! `keel-provisioning`: the provisioning service binary (gRPC 50052, HTTP 8082).

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let (rt, settings) =
        keel_runtime::Service::from_env_with::<keel_provisioning::app::Settings>("provisioning")?;
    keel_provisioning::app::run(rt, settings).await
}
