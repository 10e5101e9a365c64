//! `keel-timeline`: the timeline indexer binary (gRPC 50054, HTTP 8084).

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let rt = keel_runtime::Service::from_env("timeline")?;
    keel_timeline::app::run(rt).await
}
