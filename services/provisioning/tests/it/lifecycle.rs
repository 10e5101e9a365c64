use std::time::Duration;

use keel_e2e::mesh::Part;
use keel_proto::v1 as pb;
use keel_store::testing::eventually;

use crate::harness::{Mesh, by_id, slug};

/// Connects as the tenant's own role (password from the provisioning service's store).
async fn as_tenant(mesh: &Mesh, t: &pb::Tenant) -> sqlx::PgConnection {
    use sqlx::Connection;
    let names = mesh.names(t);
    let master = keel_auth::MasterKey::from_setting(Some(keel_e2e::TEST_MASTER_KEY)).unwrap();
    let wrapped: Vec<u8> = sqlx::query_scalar(&format!(
        "SELECT password_wrapped FROM test_{}_p.tenant_credentials WHERE tenant_id = $1",
        mesh.token
    ))
    .bind(&t.id)
    .fetch_one(&mesh.pool)
    .await
    .unwrap();
    let password = String::from_utf8(master.unwrap(&wrapped).unwrap()).unwrap();
    let url: sqlx::postgres::PgConnectOptions = keel_store::testing::database_url().parse().unwrap();
    sqlx::PgConnection::connect_with(&url.username(&names.role).password(&password))
        .await
        .unwrap()
}

/// Exactly one run per lifecycle event did each thing once, whichever replica drove it.
async fn assert_driven_once(mesh: &Mesh, tenant: &str) {
    assert_eq!(
        mesh.run_events(tenant, "ProvisioningStarted").await,
        1,
        "{tenant}"
    );
    assert_eq!(
        mesh.run_events(tenant, "ProvisioningCompleted").await,
        1,
        "{tenant}"
    );
    assert_eq!(mesh.doubled_attempts(tenant).await, 0, "{tenant}");
    assert_eq!(mesh.tenant_events(tenant, "LicenseIssued").await, 1, "{tenant}");
    assert_eq!(mesh.tenant_events(tenant, "TenantActivated").await, 1, "{tenant}");
}

#[tokio::test]
async fn create_to_active_with_every_resource_and_tenant_isolated_roles() {
    // Two processes of every service (tenant, provisioning, timeline) on the same requests:
    // one run each, driven by one provisioning replica; calls spread over both tenants.
    let mut mesh = Mesh::build(&[], true, true).await;
    let a = mesh.create(&slug()).await;
    let b = mesh.create(&slug()).await;
    mesh.wait_status(&a.id, pb::TenantStatus::Active, Duration::from_secs(60))
        .await;
    mesh.wait_status(&b.id, pb::TenantStatus::Active, Duration::from_secs(60))
        .await;
    assert_eq!(mesh.resources(&a).await, [true; 6]);

    // The tenant's role can use its schema and cannot read another tenant's.
    let mut conn = as_tenant(&mesh, &a).await;
    sqlx::query("CREATE TABLE notes (id int primary key, body text)")
        .execute(&mut conn)
        .await
        .unwrap();
    sqlx::query("INSERT INTO notes VALUES (1, 'hello')")
        .execute(&mut conn)
        .await
        .unwrap();
    let body: String = sqlx::query_scalar("SELECT body FROM notes")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(body, "hello");
    let mut other = as_tenant(&mesh, &b).await;
    sqlx::query("CREATE TABLE secrets (v text)")
        .execute(&mut other)
        .await
        .unwrap();
    let err = sqlx::query(&format!("SELECT * FROM {}.secrets", mesh.names(&b).schema))
        .execute(&mut conn)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("permission denied"), "{err}");

    // Each step, with its attempts and timings.
    let status = mesh
        .provisioning()
        .await
        .get_status(pb::GetProvisioningStatusRequest {
            tenant_id: a.id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status.status, "completed");
    let names: Vec<&str> = status.steps.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "begin",
            "database",
            "messaging",
            "quotas",
            "manifests",
            "license",
            "activate"
        ]
    );
    assert!(
        status
            .steps
            .iter()
            .all(|s| s.status == "succeeded" && s.attempts == 1 && s.started_at.is_some())
    );

    for t in [&a, &b] {
        assert_driven_once(&mesh, &t.id).await;
    }
    // The two timeline replicas share one durable: each event is in the timeline once.
    let schema = mesh.e2e.schema(Part::Timeline);
    for t in [&a, &b] {
        keel_store::testing::eventually("the tenant's history in the timeline", Duration::from_secs(30), || async {
            let table: String = sqlx::query_scalar(&format!("SELECT live_table FROM {schema}.timeline_state WHERE id = 1"))
                .fetch_one(&mesh.pool)
                .await
                .ok()?;
            let kinds: Vec<String> = sqlx::query_scalar(&format!(
                "SELECT kind FROM {schema}.{table} WHERE tenant_id = $1 AND kind IN ('tenant.TenantCreated', 'tenant.TenantActivated')"
            ))
            .bind(&t.id)
            .fetch_all(&mesh.pool)
            .await
            .ok()?;
            (kinds.len() >= 2).then_some(kinds)
        })
        .await;
        let table: String = sqlx::query_scalar(&format!(
            "SELECT live_table FROM {schema}.timeline_state WHERE id = 1"
        ))
        .fetch_one(&mesh.pool)
        .await
        .unwrap();
        let activated: i64 = sqlx::query_scalar(&format!(
            "SELECT count(*) FROM {schema}.{table} WHERE tenant_id = $1 AND kind = 'tenant.TenantActivated'"
        ))
        .bind(&t.id)
        .fetch_one(&mesh.pool)
        .await
        .unwrap();
        assert_eq!(activated, 1, "{}", t.id);
    }
    // Both tenant processes answered calls (the mesh's clients and provisioning's).
    for part in [Part::Tenant, Part::TenantReplica] {
        let (code, metrics) = mesh.e2e.proc(part).http_get("/metrics").await.unwrap();
        assert_eq!(code, 200);
        let served: f64 = metrics
            .lines()
            .filter(|l| l.starts_with("keel_requests_total{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        assert!(served > 0.0, "{part:?} served no request");
    }
    for part in [
        Part::Tenant,
        Part::TenantReplica,
        Part::Provisioning,
        Part::ProvisioningReplica,
        Part::Timeline,
        Part::TimelineReplica,
    ] {
        assert!(mesh.e2e.proc_mut(part).exited().is_none(), "{part:?} died");
    }

    // The trace from the create call to ACTIVE is checked across the mesh in tests/it/trace.rs.
    mesh.cleanup().await;
}

#[tokio::test]
async fn deletion_removes_every_resource_and_reports_it() {
    let mesh = Mesh::start("", false).await;
    let t = mesh.create(&slug()).await;
    mesh.wait_status(&t.id, pb::TenantStatus::Active, Duration::from_secs(60))
        .await;
    assert_eq!(mesh.resources(&t).await, [true; 6]);
    mesh.tenants()
        .await
        .delete_tenant(pb::DeleteTenantRequest {
            tenant: Some(by_id(&t.id)),
        })
        .await
        .unwrap();
    mesh.wait_status(&t.id, pb::TenantStatus::Deleted, Duration::from_secs(60))
        .await;
    assert_eq!(mesh.resources(&t).await, [false; 6]);
    let run = mesh
        .provisioning()
        .await
        .get_status(pb::GetProvisioningStatusRequest {
            tenant_id: t.id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((run.kind.as_str(), run.status.as_str()), ("delete", "completed"));
    let removed = run.removed.join(" ");
    for what in ["schema", "role", ".yaml"] {
        assert!(
            removed.contains(what) || removed.to_lowercase().contains(what),
            "{what} not reported as removed: {removed}"
        );
    }
    mesh.cleanup().await;
}

#[tokio::test]
async fn suspension_blocks_credentials_and_reactivation_restores_them_and_tier_change_reapplies() {
    let mesh = Mesh::start("", false).await;
    let t = mesh.create(&slug()).await;
    mesh.wait_status(&t.id, pb::TenantStatus::Active, Duration::from_secs(60))
        .await;
    let mut api = mesh.tenants().await;
    api.suspend_tenant(pb::SuspendTenantRequest {
        tenant: Some(by_id(&t.id)),
        reason: "unpaid".into(),
    })
    .await
    .unwrap();
    let role = mesh.names(&t).role;
    let can_login = |pool: sqlx::PgPool, role: String| async move {
        sqlx::query_scalar::<_, bool>("SELECT rolcanlogin FROM pg_roles WHERE rolname = $1")
            .bind(role)
            .fetch_one(&pool)
            .await
            .unwrap()
    };
    eventually("role blocked", Duration::from_secs(30), || async {
        (!can_login(mesh.pool.clone(), role.clone()).await).then_some(())
    })
    .await;
    // The manifest step runs after the role step: wait for it too, never read it once.
    let helm_path = mesh.names(&t).manifest_dir.join("helmrelease.yaml");
    eventually("helmrelease scaled to zero", Duration::from_secs(30), || {
        let helm_path = helm_path.clone();
        async move {
            let helm = std::fs::read_to_string(&helm_path).ok()?;
            helm.contains("replicaCount: 0").then_some(())
        }
    })
    .await;
    api.reactivate_tenant(pb::ReactivateTenantRequest {
        tenant: Some(by_id(&t.id)),
    })
    .await
    .unwrap();
    eventually("role restored", Duration::from_secs(30), || async {
        can_login(mesh.pool.clone(), role.clone()).await.then_some(())
    })
    .await;
    api.change_tier(pb::ChangeTierRequest {
        tenant: Some(by_id(&t.id)),
        tier: pb::Tier::Business as i32,
    })
    .await
    .unwrap();
    let key = mesh.names(&t).redis_key;
    let mut redis = mesh.redis.clone();
    eventually("quotas re-applied for business", Duration::from_secs(30), || {
        let mut redis = redis.clone();
        let key = key.clone();
        async move {
            let tier: Option<String> = redis::cmd("HGET")
                .arg(&key)
                .arg("tier")
                .query_async(&mut redis)
                .await
                .ok()?;
            (tier.as_deref() == Some("business")).then_some(())
        }
    })
    .await;
    let _ = redis::cmd("PING").query_async::<String>(&mut redis).await;
    mesh.cleanup().await;
}

#[tokio::test]
async fn fifty_tenants_created_at_once_all_become_active_each_provisioned_once_by_two_replicas() {
    let mesh = Mesh::replicated(&[]).await;
    let mut handles = Vec::new();
    for _ in 0..50 {
        let mut api = mesh.tenants().await;
        let s = slug();
        handles.push(tokio::spawn(async move {
            api.create_tenant(pb::CreateTenantRequest {
                name: format!("Tenant {s}"),
                slug: s.clone(),
                tier: pb::Tier::Low as i32,
                owner_email: format!("o@{s}.example"),
                request_id: format!("req-{s}"),
            })
            .await
            .unwrap()
            .into_inner()
        }));
    }
    let mut tenants = Vec::new();
    for h in handles {
        tenants.push(h.await.unwrap());
    }
    for t in &tenants {
        mesh.wait_status(&t.id, pb::TenantStatus::Active, Duration::from_secs(180))
            .await;
    }
    for t in &tenants {
        mesh.wait_run(&t.id, "completed", Duration::from_secs(30)).await;
        assert_driven_once(&mesh, &t.id).await;
    }
    mesh.cleanup().await;
}
