//! The timeline indexer: every tenant's timeline, projected from KEEL_EVENTS and KEEL_AUDIT into
//! a time-partitioned, row-level-secured table; queried, traced, tailed live, kept for the
//! tenant's retention (or for ever under legal hold), rebuilt on demand by a resumable job that
//! swaps only an identical table in ([`rebuild`]).
//!
//! Start from [`app::run`]; the read side is [`store::TimelineStore`], the write side
//! [`projection::TimelineProjection`].

pub mod api;
pub mod app;
pub mod domain;
pub mod error;
pub mod indexer;
pub mod projection;
pub mod rebuild;
pub mod store;
pub mod tails;
