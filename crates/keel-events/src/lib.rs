//! `keel-events`: what travels on Keel's bus.
//!
//! Start from [`Envelope`], the CloudEvents 1.0 envelope of every event: build one with
//! [`Envelope::builder`], read one with [`Envelope::parse`] (which names the field at fault in
//! its [`ParseError`]). [`subjects`] names the NATS subjects of the Keel streams, [`catalog`]
//! lists every event type with the JSON Schema of its data, and [`canonical`] gives the canonical
//! JSON that [`Envelope::digest`] hashes.
//!
//! ```
//! use keel_events::{Envelope, subjects};
//!
//! let event = Envelope::builder("tenant", "TenantSuspended", 1)
//!     .tenant("acme")
//!     .actor("user:42")
//!     .aggregate("tenant", "acme", 3)
//!     .data(serde_json::json!({"reason": "payment overdue"}))
//!     .build()?;
//! assert_eq!(event.event_type, "keel.tenant.TenantSuspended.v1");
//! assert_eq!(event.nats_subject(""), subjects::event("", "acme", "tenant", "TenantSuspended"));
//! assert_eq!(Envelope::parse(&event.to_json_bytes())?, event);
//! # Ok::<(), keel_events::ParseError>(())
//! ```

pub mod canonical;
pub mod catalog;
pub mod envelope;
pub mod error;
pub mod subjects;

pub use envelope::{Envelope, EnvelopeBuilder};
pub use error::{ParseError, Result};
