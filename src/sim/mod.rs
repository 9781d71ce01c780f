//! The deterministic simulator: thousands of real [`crate::overlay::Ring`] cores in one
//! process, on a virtual clock with a seeded RNG, a latency model, losses, churn and NAT
//! classes. Same seed, same run. `ringlet-sim` and the simulation tests drive it.
//!
//! - [`world`]: the event loop, latency model and simulated link layer;
//! - [`scenario`]: the named scenarios and the report they produce;
//! - [`baseline`]: the ideal Symphony ring the results are compared with.
//!
//! Debugging aids: `SIM_DEBUG=1` prints the count of inconsistent nodes every 10 virtual
//! seconds while a scenario waits for consistency (and the nodes when few remain);
//! `SIM_TRACE=1` adds each one's linking state and the route its seek would take.
#![allow(clippy::disallowed_methods)] // the virtual clock's epoch is one real Instant

pub mod baseline;
mod debug;
pub mod queue;
pub mod revoke;
pub mod scenario;
pub mod world;

pub use scenario::{run, Options, Report};
