//! The deterministic simulator: thousands of real [`crate::overlay::Ring`] cores in one
//! process, on a virtual clock with a seeded RNG, a latency model, losses, churn and NAT
//! classes. Same seed, same run. `ringlet-sim` and the simulation tests drive it.
//!
//! - [`world`]: the event loop, latency model and simulated link layer;
//! - [`scenario`]: the named scenarios and the report they produce.
#![allow(clippy::disallowed_methods)] // the virtual clock's epoch is one real Instant

pub mod baseline;
pub mod scenario;
pub mod world;

pub use scenario::{run, Options, Report};
