//! keel-billing: exact usage metering. Usage events arrive over gRPC (`RecordUsage`) and NATS
//! (`keel.usage.<tenant>`), are checked and stored once each by (tenant, source, id) in the
//! statement that claims that key, and are aggregated into hourly windows per tenant, meter and
//! group; each closed window is a `UsageRecorded` event (a usage record), and a late event
//! records a `UsageCorrected` with the value before and after. Raw events keep valid and
//! recorded time, so usage can be read as it was known at any recorded time.

pub mod alerts;
pub mod api;
pub mod app;
pub mod domain;
pub mod export;
pub mod ingest;
pub mod prices;
pub mod store;
pub mod tenants;
pub mod watch;
pub mod windows;
