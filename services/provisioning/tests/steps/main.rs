//! Integration tests of the provisioning steps against the real systems they act on:
//! PostgreSQL, NATS JetStream, Redis and the disk (plus the Kubernetes schemas for the
//! manifests). Each test owns a schema, a bus namespace, a resource prefix and a gitops dir.

mod database;
mod manifests;
mod messaging;
mod quotas;
mod world;
