//! `keel-timeline`: the timeline indexer binary (gRPC 50054, HTTP 8084).

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let (rt, settings) = keel_runtime::Service::from_env_with::<keel_timeline::app::Settings>("timeline")?;
    keel_timeline::app::run(rt, settings).await
}
