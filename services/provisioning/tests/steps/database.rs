//! The database step: a schema and a login role per tenant, usable by that tenant only.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use keel_provisioning::steps::{self, StepContext, credentials};
use keel_store::testing::eventually;
use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::{Connection, PgPool};
use tokio::sync::Mutex;

use crate::world::World;

/// Connects as the tenant's role with the password the step stored.
async fn connect_as(w: &World, ctx: &StepContext) -> Result<PgConnection, sqlx::Error> {
    let (role, password) = credentials(&w.sys, &ctx.tenant_id)
        .await
        .expect("read credentials")
        .expect("credentials stored");
    assert_eq!(role, ctx.names.role);
    let options = PgConnectOptions::from_str(&w.sys.database_url)?
        .username(&role)
        .password(&password);
    PgConnection::connect_with(&options).await
}

fn sql_state(e: &sqlx::Error) -> String {
    match e {
        sqlx::Error::Database(db) => db.code().map(|c| c.into_owned()).unwrap_or_default(),
        other => format!("not a database error: {other}"),
    }
}

async fn exec(conn: &mut PgConnection, sql: &str) -> Result<(), sqlx::Error> {
    sqlx::raw_sql(sql).execute(&mut *conn).await.map(|_| ())
}

/// The role's SCRAM verifier as the server keeps it: changes whenever the password is set.
async fn verifier(pg: &PgPool, role: &str) -> Option<String> {
    sqlx::query_scalar("SELECT rolpassword FROM pg_authid WHERE rolname = $1")
        .bind(role)
        .fetch_optional(pg)
        .await
        .expect("read pg_authid")
        .flatten()
}

async fn leftovers(pg: &PgPool, ctx: &StepContext) -> (i64, i64) {
    sqlx::query_as(
        "SELECT (SELECT count(*) FROM pg_namespace WHERE nspname = $1), \
                (SELECT count(*) FROM pg_roles WHERE rolname = $2)",
    )
    .bind(&ctx.names.schema)
    .bind(&ctx.names.role)
    .fetch_one(pg)
    .await
    .expect("query the catalogs")
}

#[tokio::test]
async fn a_tenant_role_uses_its_own_schema_and_nothing_else() {
    let w = World::new().await;
    let step = steps::database();
    let (acme, other) = (w.ctx("acme", "mid", false), w.ctx("other", "low", false));

    let report = step.apply(&w.sys, &acme).await.expect("apply");
    assert_eq!(report["password"], "generated", "{report}");
    assert!(step.check(&w.sys, &acme).await.expect("check"));
    let (_, password) = credentials(&w.sys, &acme.tenant_id)
        .await
        .expect("read")
        .expect("stored");
    assert!(password.len() >= 32);
    let stored: Vec<u8> = sqlx::query_scalar("SELECT password_wrapped FROM tenant_credentials")
        .fetch_one(&w.sys.pg)
        .await
        .expect("credentials row");
    assert!(
        !stored
            .windows(password.len())
            .any(|win| win == password.as_bytes()),
        "stored in clear"
    );
    let first_verifier = verifier(&w.sys.pg, &acme.names.role).await;
    assert!(
        first_verifier
            .as_deref()
            .is_some_and(|v| v.starts_with("SCRAM-SHA-256$"))
    );

    // A second apply changes nothing, the password least of all.
    let again = step.apply(&w.sys, &acme).await.expect("apply again");
    assert_eq!(again["password"], "kept", "{again}");
    assert_eq!(
        credentials(&w.sys, &acme.tenant_id)
            .await
            .expect("read")
            .map(|c| c.1),
        Some(password.clone())
    );
    assert_eq!(verifier(&w.sys.pg, &acme.names.role).await, first_verifier);
    assert!(step.check(&w.sys, &acme).await.expect("check"));

    // The role works in its schema, found through its search_path.
    let mut conn = connect_as(&w, &acme).await.expect("log in as the tenant role");
    let schema: String = sqlx::query_scalar("SELECT current_schema()")
        .fetch_one(&mut conn)
        .await
        .expect("schema");
    assert_eq!(schema, acme.names.schema);
    exec(
        &mut conn,
        "CREATE TABLE notes (id int PRIMARY KEY, body text NOT NULL)",
    )
    .await
    .expect("create");
    exec(&mut conn, "INSERT INTO notes VALUES (1, 'hello')")
        .await
        .expect("insert");
    let body: String = sqlx::query_scalar("SELECT body FROM notes WHERE id = 1")
        .fetch_one(&mut conn)
        .await
        .expect("select");
    assert_eq!(body, "hello");

    // Another tenant's data is out of reach, and so are `public` and the service's own tables.
    step.apply(&w.sys, &other).await.expect("apply the other tenant");
    let mut theirs = connect_as(&w, &other).await.expect("log in as the other role");
    exec(
        &mut theirs,
        "CREATE TABLE secrets (v text); INSERT INTO secrets VALUES ('x')",
    )
    .await
    .expect("their table");
    let peek = format!("SELECT v FROM \"{}\".secrets", other.names.schema);
    let denied = exec(&mut conn, &peek)
        .await
        .expect_err("read another tenant's table");
    assert_eq!(sql_state(&denied), "42501", "{denied}");
    let denied = exec(&mut conn, "CREATE TABLE public.intruder (id int)")
        .await
        .expect_err("create in public");
    assert_eq!(sql_state(&denied), "42501", "{denied}");
    let denied = exec(
        &mut conn,
        &format!("SELECT * FROM \"{}\".tenant_credentials", w.schema),
    )
    .await
    .expect_err("read the credentials");
    assert_eq!(sql_state(&denied), "42501", "{denied}");
    let owned: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_namespace n JOIN pg_roles r ON r.oid = n.nspowner WHERE r.rolname = $1",
    )
    .bind(&acme.names.role)
    .fetch_one(&w.sys.pg)
    .await
    .expect("owned schemas");
    assert_eq!(owned, 0, "the role owns no schema");
    theirs.close().await.ok();

    // Suspension blocks logins and ends open sessions; reactivation restores the same password.
    let suspended = StepContext {
        suspended: true,
        ..acme.clone()
    };
    step.apply(&w.sys, &suspended).await.expect("suspend");
    assert!(step.check(&w.sys, &suspended).await.expect("check"));
    assert!(!step.check(&w.sys, &acme).await.expect("check"));
    let refused = connect_as(&w, &acme).await.expect_err("a suspended role logs in");
    assert_eq!(sql_state(&refused), "28000", "{refused}");
    let open = Arc::new(Mutex::new(conn));
    eventually("the open session to end", Duration::from_secs(10), || {
        let open = open.clone();
        async move {
            let mut conn = open.lock().await;
            let alive = sqlx::query_scalar::<_, i32>("SELECT 1")
                .fetch_one(&mut *conn)
                .await;
            alive.is_err().then_some(())
        }
    })
    .await;
    step.apply(&w.sys, &acme).await.expect("reactivate");
    let mut back = connect_as(&w, &acme).await.expect("log in after reactivation");
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM notes")
        .fetch_one(&mut back)
        .await
        .expect("data kept");
    assert_eq!(n, 1);
    back.close().await.ok();
    assert_eq!(
        credentials(&w.sys, &acme.tenant_id)
            .await
            .expect("read")
            .map(|c| c.1),
        Some(password)
    );

    // Compensation removes schema, role and credentials, and a second one finds nothing.
    let removed = step.compensate(&w.sys, &acme).await.expect("compensate");
    assert_eq!(
        removed,
        vec![
            format!("schema {}", acme.names.schema),
            format!("role {}", acme.names.role),
            format!("credentials {}", acme.tenant_id),
        ]
    );
    assert!(!step.check(&w.sys, &acme).await.expect("check"));
    assert_eq!(leftovers(&w.sys.pg, &acme).await, (0, 0));
    assert_eq!(credentials(&w.sys, &acme.tenant_id).await.expect("read"), None);
    assert!(
        step.compensate(&w.sys, &acme)
            .await
            .expect("compensate again")
            .is_empty()
    );

    // The other tenant is untouched until its own compensation.
    assert!(step.check(&w.sys, &other).await.expect("check"));
    assert_eq!(
        step.compensate(&w.sys, &other).await.expect("compensate").len(),
        3
    );
    assert_eq!(leftovers(&w.sys.pg, &other).await, (0, 0));
    w.cleanup().await;
}

#[tokio::test]
async fn a_tenant_provisioned_suspended_cannot_log_in_until_reactivated() {
    let w = World::new().await;
    let step = steps::database();
    let ctx = w.ctx("sleepy", "low", true);
    assert_eq!(
        credentials(&w.sys, &ctx.tenant_id).await.expect("no table yet"),
        None
    );

    step.apply(&w.sys, &ctx).await.expect("apply");
    assert!(step.check(&w.sys, &ctx).await.expect("check"));
    let refused = connect_as(&w, &ctx).await.expect_err("log in while suspended");
    assert_eq!(sql_state(&refused), "28000", "{refused}");

    let active = StepContext {
        suspended: false,
        ..ctx.clone()
    };
    step.apply(&w.sys, &active).await.expect("reactivate");
    connect_as(&w, &active).await.expect("log in").close().await.ok();

    assert_eq!(step.compensate(&w.sys, &ctx).await.expect("compensate").len(), 3);
    assert!(
        step.compensate(&w.sys, &ctx)
            .await
            .expect("compensate again")
            .is_empty()
    );
    w.cleanup().await;
}

#[tokio::test]
async fn names_that_are_not_plain_identifiers_are_refused_permanently() {
    let w = World::new().await;
    let mut ctx = w.ctx("bad", "low", false);
    ctx.names.schema = "t_x\"; DROP SCHEMA public; --".into();
    let err = steps::database()
        .apply(&w.sys, &ctx)
        .await
        .expect_err("a bad name");
    assert!(err.is_permanent(), "{err}");
    w.cleanup().await;
}
