//! Checks of row-level security as a service's reader role sees it: each check opens its own
//! transaction as the role (with `keel.tenant_id` set, or not at all), reads, and rolls back. The
//! pool's search path names the service's schema.

use sqlx::PgPool;

async fn as_reader(pool: &PgPool, role: &str, tenant: Option<&str>, sql: &str, bind: Option<&str>) -> i64 {
    let mut tx = pool.begin().await.expect("transaction");
    sqlx::query(&format!("SET LOCAL ROLE {role}"))
        .execute(&mut *tx)
        .await
        .expect("SET ROLE");
    if let Some(t) = tenant {
        sqlx::query("SELECT set_config('keel.tenant_id', $1, true)")
            .bind(t)
            .execute(&mut *tx)
            .await
            .expect("set_config");
    }
    let mut q = sqlx::query_scalar::<_, i64>(sql);
    if let Some(b) = bind {
        q = q.bind(b.to_owned());
    }
    let n = q
        .fetch_one(&mut *tx)
        .await
        .unwrap_or_else(|e| panic!("{sql} as {role}: {e}"));
    tx.rollback().await.expect("rollback");
    n
}

/// Rows of `table` with `tenant_id = of` that `role` sees with `keel.tenant_id` = `as_tenant`
/// (`None`: not set).
pub async fn visible(pool: &PgPool, role: &str, table: &str, as_tenant: Option<&str>, of: &str) -> i64 {
    let sql = format!("SELECT count(*) FROM {table} WHERE tenant_id = $1");
    as_reader(pool, role, as_tenant, &sql, Some(of)).await
}

/// Every row of `table` that `role` sees with `keel.tenant_id` = `as_tenant`, asking for all.
pub async fn visible_all(pool: &PgPool, role: &str, table: &str, as_tenant: Option<&str>) -> i64 {
    as_reader(
        pool,
        role,
        as_tenant,
        &format!("SELECT count(*) FROM {table}"),
        None,
    )
    .await
}

/// Rows of `table` with `tenant_id = of`, as the pool's own login (the owner: no RLS).
pub async fn owned(pool: &PgPool, table: &str, of: &str) -> i64 {
    sqlx::query_scalar(&format!("SELECT count(*) FROM {table} WHERE tenant_id = $1"))
        .bind(of)
        .fetch_one(pool)
        .await
        .unwrap_or_else(|e| panic!("{table}: {e}"))
}

/// Asserts, for one table holding rows of tenants `a` and `b`: the reader sees `a`'s rows (all
/// of them, and only them) with `a` set, none of `b`'s, and nothing with no tenant set.
pub async fn assert_isolated(pool: &PgPool, role: &str, table: &str, a: &str, b: &str) {
    let (own_a, own_b) = (owned(pool, table, a).await, owned(pool, table, b).await);
    assert!(
        own_a > 0 && own_b > 0,
        "{table}: the test needs rows of both tenants ({own_a}, {own_b})"
    );
    assert_eq!(
        visible(pool, role, table, Some(a), b).await,
        0,
        "{table}: B's rows leaked to A"
    );
    assert_eq!(
        visible(pool, role, table, Some(b), a).await,
        0,
        "{table}: A's rows leaked to B"
    );
    assert_eq!(
        visible(pool, role, table, Some(a), a).await,
        own_a,
        "{table}: A's own rows"
    );
    assert_eq!(
        visible_all(pool, role, table, Some(a)).await,
        own_a,
        "{table}: A sees only A's rows"
    );
    assert_eq!(
        visible_all(pool, role, table, None).await,
        0,
        "{table}: rows with no tenant set"
    );
    assert_eq!(
        visible_all(pool, role, table, Some("*")).await,
        0,
        "{table}: rows for tenant *"
    );
}

/// Tables of the pool's schema with a `tenant_id` column that lack row-level security, the
/// `tenant_isolation` policy or `role`'s SELECT grant: a new tenant table must not slip by.
pub async fn unprotected_tables(pool: &PgPool, role: &str) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT c.relname::text FROM pg_class c \
         JOIN pg_namespace n ON n.oid = c.relnamespace \
         JOIN pg_attribute a ON a.attrelid = c.oid AND a.attname = 'tenant_id' AND NOT a.attisdropped \
         WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'p') \
         AND NOT (c.relrowsecurity \
             AND EXISTS (SELECT 1 FROM pg_policy p WHERE p.polrelid = c.oid AND p.polname = 'tenant_isolation') \
             AND has_table_privilege($1, c.oid, 'SELECT')) \
         ORDER BY 1",
    )
    .bind(role)
    .fetch_all(pool)
    .await
    .expect("catalog")
}

/// Whether `role`, with `tenant` set, may run `sql` at all (readers may not write, nor read
/// a table they were not granted).
pub async fn permitted(pool: &PgPool, role: &str, tenant: &str, sql: &str) -> bool {
    let mut tx = pool.begin().await.expect("transaction");
    sqlx::query(&format!("SET LOCAL ROLE {role}"))
        .execute(&mut *tx)
        .await
        .expect("SET ROLE");
    sqlx::query("SELECT set_config('keel.tenant_id', $1, true)")
        .bind(tenant)
        .execute(&mut *tx)
        .await
        .expect("set_config");
    let done = sqlx::query(sql).execute(&mut *tx).await;
    let _ = tx.rollback().await;
    match done {
        Ok(_) => true,
        Err(sqlx::Error::Database(db)) if db.code().as_deref() == Some("42501") => false,
        Err(e) => panic!("{sql} as {role}: {e}"),
    }
}
