#!/usr/bin/env bash
# The test command: lints (incl. the sans-IO bans in clippy.toml), then every test, then a
# check that the fuzz targets (fuzz/, run with cargo-fuzz on nightly) still build. After a
# dependency change, refresh their lock file: (cd fuzz && cargo check).
# Needs prosody and lua-unbound installed; the federation tests need root (netns).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --locked
cargo check --manifest-path fuzz/Cargo.toml --locked --quiet
