//! The billing domain, without I/O: meters, usage events and their checks, windows.

pub mod meter;
pub mod usage;
pub mod watch;
pub mod window;
