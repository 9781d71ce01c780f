//! Subcommands of the `ringlet` binary beyond `up`, `status`, `ping` and `dht`.

pub mod check;
pub mod daemon;
pub mod group;
pub mod netcheck;
