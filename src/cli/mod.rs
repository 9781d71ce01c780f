//! Subcommands of the `ringlet` binary beyond `status`, `ping` and `dht`.

pub mod check;
pub mod daemon;
pub mod group;
pub mod groupd;
pub mod netcheck;
pub mod up;
