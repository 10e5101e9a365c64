//! keel-billing against the real servers: the binary on port 0 in a test mesh (tenant for
//! tokens), PostgreSQL, Keel's NATS.

mod harness;

mod aggregation;
mod estimate;
mod export;
mod ingest;
mod isolation;
mod watch;
