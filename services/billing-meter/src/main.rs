//! `keel-billing`: the billing meter binary (gRPC 50053, HTTP 8083).

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let (rt, settings) = keel_runtime::Service::from_env_with::<keel_billing::app::Settings>("billing")?;
    keel_billing::app::run(rt, settings).await
}
