//! The timeline domain, pure: what a timeline row is, how events and audit records become rows,
//! filters and the query language.

pub mod filter;
pub mod query;
pub mod row;

pub use filter::{Filter, TimeRange};
pub use row::TimelineRow;
