//! Unit tests of the reach cores against simulated NATs, on a virtual clock.
#![allow(clippy::disallowed_methods)] // one real Instant serves as the virtual epoch

mod punch;
mod stun;
