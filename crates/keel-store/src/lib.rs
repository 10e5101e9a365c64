//! The event store of every Keel service: an append-only `events` table in the service's own
//! PostgreSQL schema, a cqrs-es [`PersistedEventRepository`](cqrs_es::persist::PersistedEventRepository)
//! on it, the outbox [`relay`] that carries committed events to JetStream in commit order, and the
//! [`projection`] runner that turns a stream back into tables.
//!
//! Start from [`Database::connect`] (a service's own schema and pool) and, for a service with
//! aggregates, [`Store::open`] on it (the event store in that schema).

pub mod audit;
mod batch;
#[cfg(feature = "testing")]
pub mod contract;
pub mod envelope;
pub mod error;
pub mod metadata;
pub mod projection;
pub mod relay;
pub mod repository;
pub mod rls;
#[cfg(feature = "testing")]
pub mod testing;
pub mod wakeup;
pub mod watch;

use std::str::FromStr;
use std::time::Duration;

use cqrs_es::persist::PersistedEventStore;
use cqrs_es::{Aggregate, CqrsFramework};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};

pub use error::{Error, Result};
pub use metadata::Metadata;
pub use repository::{EventRepository, GroupCommit};

/// The cqrs-es framework of an aggregate stored in Keel's event store.
pub type Framework<A> = CqrsFramework<A, PersistedEventStore<EventRepository, A>>;

/// The longest any statement of a service may run: a runaway query fails instead of holding a
/// connection (and the locks it took) for ever.
pub const STATEMENT_TIMEOUT: &str = "30s";

/// One service's database: a connection pool whose `search_path` is the service's own schema.
/// A service without aggregates (the timeline) uses only this: no `events` table.
#[derive(Clone, Debug)]
pub struct Database {
    pool: PgPool,
    options: PgConnectOptions,
    schema: String,
}

impl Database {
    /// Connects to `database_url` with at most `max_connections`, creating `schema` if needed.
    pub async fn connect(database_url: &str, schema: &str, max_connections: u32) -> Result<Self> {
        validate_schema(schema)?;
        let base = PgConnectOptions::from_str(database_url)?;
        // Create the schema on a plain connection first: search_path may not name it yet.
        {
            let pool = PgPoolOptions::new()
                .max_connections(1)
                .connect_with(base.clone())
                .await?;
            create_schema(&pool, schema).await?;
            pool.close().await;
        }
        let options = base.options([("search_path", schema), ("statement_timeout", STATEMENT_TIMEOUT)]);
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options.clone())
            .await?;
        Ok(Self {
            pool,
            options,
            schema: schema.to_owned(),
        })
    }

    /// Runs the service's own `migrator` in this schema (see [`migrate`]).
    pub async fn migrate(&self, migrator: sqlx::migrate::Migrator) -> Result<()> {
        migrate(&self.pool, migrator).await
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    pub fn connect_options(&self) -> &PgConnectOptions {
        &self.options
    }

    pub fn schema(&self) -> &str {
        &self.schema
    }
}

/// One service's event store: the append-only `events` table (with snapshots and the relay's
/// checkpoints) in the service's [`Database`].
#[derive(Clone, Debug)]
pub struct Store {
    pool: PgPool,
    options: PgConnectOptions,
    schema: String,
    service: String,
}

impl Store {
    /// Connects to `database_url`, creates `schema` if needed and migrates it. `service` names the
    /// producer in the CloudEvents `source` and in subjects (`keel/<service>`).
    pub async fn connect(database_url: &str, schema: &str, service: &str) -> Result<Self> {
        Self::connect_with(database_url, schema, service, 16).await
    }

    pub async fn connect_with(
        database_url: &str,
        schema: &str,
        service: &str,
        max_connections: u32,
    ) -> Result<Self> {
        let db = Database::connect(database_url, schema, max_connections).await?;
        Self::open(&db, service).await
    }

    /// The event store in `db`'s schema (its tables are created or migrated). `service` names
    /// the producer in the CloudEvents `source` and in subjects (`keel/<service>`).
    pub async fn open(db: &Database, service: &str) -> Result<Self> {
        db.migrate(sqlx::migrate!("./migrations")).await?;
        migrate(db.pool(), audit::migrator()).await?;
        Ok(Self {
            pool: db.pool.clone(),
            options: db.options.clone(),
            schema: db.schema.clone(),
            service: service.to_owned(),
        })
    }

    /// `db`'s schema as a store without migrating it (the audit relay of a schema that may
    /// have no `events`).
    pub(crate) fn on(db: &Database, service: &str) -> Self {
        Self {
            pool: db.pool.clone(),
            options: db.options.clone(),
            schema: db.schema.clone(),
            service: service.to_owned(),
        }
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Options of a connection to this store's schema, for callers that need a session of their
    /// own outside the pool (the relay's lock).
    pub fn connect_options(&self) -> &PgConnectOptions {
        &self.options
    }

    pub fn schema(&self) -> &str {
        &self.schema
    }

    pub fn service(&self) -> &str {
        &self.service
    }

    pub fn repository(&self) -> EventRepository {
        EventRepository::new(self.pool.clone())
    }

    /// An event-sourced cqrs-es framework for aggregate `A` (state rebuilt from its events).
    pub fn framework<A: Aggregate>(&self, services: A::Services) -> Framework<A> {
        CqrsFramework::new(
            PersistedEventStore::new_event_store(self.repository()),
            vec![],
            services,
        )
    }

    /// As [`Store::framework`], with a snapshot every `snapshot_size` events.
    pub fn snapshot_framework<A: Aggregate>(
        &self,
        services: A::Services,
        snapshot_size: usize,
    ) -> Framework<A> {
        CqrsFramework::new(
            PersistedEventStore::new_snapshot_store(self.repository(), snapshot_size),
            vec![],
            services,
        )
    }
}

/// Runs `migrator` in the store's schema. A service adds its own tables with its own migrator
/// (versions distinct from keel-store's); each tolerates the other's entries in `_sqlx_migrations`.
pub async fn migrate(pool: &PgPool, mut migrator: sqlx::migrate::Migrator) -> Result<()> {
    // sqlx serialises concurrent migrators of one database with an advisory lock.
    migrator.set_ignore_missing(true);
    migrator.run(pool).await?;
    Ok(())
}

fn validate_schema(schema: &str) -> Result<()> {
    let mut chars = schema.chars();
    let ok = schema.len() <= 63
        && chars.next().is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidSchema(schema.to_owned()))
    }
}

async fn create_schema(pool: &PgPool, schema: &str) -> Result<()> {
    // Concurrent starters may race on CREATE SCHEMA IF NOT EXISTS (unique violation on the catalog).
    match sqlx::query(&format!("CREATE SCHEMA IF NOT EXISTS {schema}"))
        .execute(pool)
        .await
    {
        Ok(_) => Ok(()),
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("23505") => Ok(()),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_names_are_plain_identifiers() {
        assert!(validate_schema("tenant").is_ok());
        assert!(validate_schema("test_ab12").is_ok());
        assert!(validate_schema("Tenant").is_err());
        assert!(validate_schema("a;drop table x").is_err());
        assert!(validate_schema("").is_err());
        assert!(validate_schema(&"a".repeat(64)).is_err());
    }
}
