//! Quotas enforced across the mesh: suspending a tenant makes provisioning write the flag into
//! its quota hash, and every service that verifies tokens (here the tenant service and the
//! timeline) refuses the tenant's calls within seconds, then serves them again after
//! reactivation; the limits every service applies are the hash's, not the token's tier claim.

use std::time::{Duration, Instant};

use keel_e2e::Bearer;
use keel_e2e::mesh::{Mesh, Part, Tenants};
use keel_proto::v1 as pb;
use keel_proto::v1::timeline_service_client::TimelineServiceClient;
use keel_store::testing::eventually;
use tonic::codegen::InterceptedService;
use tonic::transport::Channel;
use tonic::{Code, Status};
use tonic_types::StatusExt;

type Timeline = TimelineServiceClient<InterceptedService<Channel, Bearer>>;

fn by_id(id: &str) -> Option<pb::TenantRef> {
    Some(pb::TenantRef {
        r#ref: Some(pb::tenant_ref::Ref::Id(id.to_owned())),
    })
}

fn is_suspension(status: &Status) -> bool {
    status.code() == Code::FailedPrecondition
        && status.message().ends_with("is suspended")
        && status
            .get_details_error_info()
            .is_some_and(|info| info.reason == "TENANT_SUSPENDED")
}

/// The tenant's calls to both services: `Ok` or the status they answered.
async fn calls(tenants: &Tenants, timeline: &Timeline, id: &str) -> [Result<(), Status>; 2] {
    let get = tenants
        .clone()
        .get_tenant(pb::GetTenantRequest { tenant: by_id(id) })
        .await
        .map(|_| ());
    let query = timeline
        .clone()
        .query_timeline(pb::QueryTimelineRequest {
            tenant_id: id.to_owned(),
            query: String::new(),
            ..Default::default()
        })
        .await
        .map(|_| ());
    [get, query]
}

/// Polls until `done` holds for the tenant service's answer and the timeline's, recording when
/// each first did and when the hash's `suspended` first read `flag`; panics after `within`.
async fn until_both(
    mesh: &Mesh,
    (tenants, timeline): (&Tenants, &Timeline),
    id: &str,
    flag: &str,
    within: Duration,
    done: impl Fn(&Result<(), Status>) -> bool,
) -> [Duration; 3] {
    let mut redis = redis::Client::open(keel_store::testing::redis_url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let start = Instant::now();
    let mut seen: [Option<Duration>; 3] = [None; 3];
    loop {
        let written: Option<String> = redis::cmd("HGET")
            .arg(mesh.quota_key(id))
            .arg("suspended")
            .query_async(&mut redis)
            .await
            .unwrap();
        if seen[0].is_none() && written.as_deref() == Some(flag) {
            seen[0] = Some(start.elapsed());
        }
        let answers = calls(tenants, timeline, id).await;
        for (i, answer) in answers.iter().enumerate() {
            if seen[i + 1].is_none() && done(answer) {
                seen[i + 1] = Some(start.elapsed());
            }
        }
        if let [Some(a), Some(b), Some(c)] = seen {
            return [a, b, c];
        }
        assert!(
            start.elapsed() < within,
            "not both within {within:?}: hash {written:?}, answers {answers:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_suspended_tenant_is_refused_by_every_service_within_seconds_and_served_after_reactivation() {
    let mesh = Mesh::builder().provisioning(&[]).timeline(&[]).start().await;
    let slug = format!("q{}", &uuid::Uuid::new_v4().simple().to_string()[..10]);
    let t = mesh.create_tenant(&slug, pb::Tier::Mid).await;
    eventually("the tenant ACTIVE", Duration::from_secs(90), || async {
        let got = mesh
            .tenants()
            .get_tenant(pb::GetTenantRequest { tenant: by_id(&t.id) })
            .await
            .ok()?
            .into_inner();
        (got.status == pb::TenantStatus::Active as i32).then_some(())
    })
    .await;
    let token = mesh
        .tokens()
        .issue_token(pb::IssueTokenRequest {
            tenant_id: t.id.clone(),
            subject: "member".into(),
            scopes: vec!["tenant:read".into(), "timeline:read".into()],
            ttl_seconds: 600,
        })
        .await
        .unwrap()
        .into_inner()
        .token;
    let tenants = mesh.tenants_as(&token);
    let timeline = TimelineServiceClient::with_interceptor(
        mesh.proc(Part::Timeline).channel().await.unwrap(),
        Bearer(Some(token.clone())),
    );
    let clients = (&tenants, &timeline);
    let [get, query] = calls(&tenants, &timeline, &t.id).await;
    get.expect("an active tenant reads itself");
    query.expect("an active tenant reads its timeline");

    mesh.tenants()
        .suspend_tenant(pb::SuspendTenantRequest {
            tenant: by_id(&t.id),
            reason: "unpaid".into(),
        })
        .await
        .unwrap();
    let [written, tenant_refused, timeline_refused] =
        until_both(&mesh, clients, &t.id, "1", Duration::from_secs(60), |a| {
            a.as_ref().is_err_and(is_suspension)
        })
        .await;
    for (service, refused) in [("tenant", tenant_refused), ("timeline", timeline_refused)] {
        let after_hash = refused.saturating_sub(written);
        assert!(
            after_hash <= keel_auth::quota::DEFAULT_TTL + Duration::from_secs(1),
            "{service} refused {after_hash:?} after the hash said suspended"
        );
    }
    println!(
        "suspension: hash written after {written:?}; refused by tenant after {tenant_refused:?}, \
         by timeline after {timeline_refused:?}"
    );
    // Operators are no tenant's: the suspended tenant stays manageable.
    mesh.tenants()
        .get_tenant(pb::GetTenantRequest { tenant: by_id(&t.id) })
        .await
        .expect("the operator reads the suspended tenant");

    mesh.tenants()
        .reactivate_tenant(pb::ReactivateTenantRequest { tenant: by_id(&t.id) })
        .await
        .unwrap();
    let [written, tenant_ok, timeline_ok] =
        until_both(&mesh, clients, &t.id, "0", Duration::from_secs(60), Result::is_ok).await;
    println!(
        "reactivation: hash written after {written:?}; served by tenant after {tenant_ok:?}, \
         by timeline after {timeline_ok:?}"
    );

    // The limits are the hash's: a burst of one, whatever the token's tier (mid: 100/s, 200).
    let mut redis = redis::Client::open(keel_store::testing::redis_url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    redis::pipe()
        .hset(mesh.quota_key(&t.id), "rate_per_second", "1")
        .ignore()
        .hset(mesh.quota_key(&t.id), "burst", "1")
        .ignore()
        .query_async::<()>(&mut redis)
        .await
        .unwrap();
    eventually(
        "the hash's tiny limit applied",
        Duration::from_secs(10),
        || async {
            let [get, query] = calls(&tenants, &timeline, &t.id).await;
            let exhausted =
                |r: &Result<(), Status>| r.as_ref().is_err_and(|s| s.code() == Code::ResourceExhausted);
            (exhausted(&get) || exhausted(&query)).then_some(())
        },
    )
    .await;
    mesh.cleanup().await;
}
