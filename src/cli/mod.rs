//! Subcommands of the `ringlet` binary that do not talk to a running node.

pub mod group;
