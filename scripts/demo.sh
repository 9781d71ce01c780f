#!/usr/bin/env bash
# The demo: a Prosody and three ringlet nodes on loopback, with their status.
# Installs what it needs on Debian/Ubuntu (as root), builds, runs, cleans up.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v prosody >/dev/null || missing+=(prosody lua-unbound)
command -v cargo >/dev/null || { echo "demo: cargo (Rust) is required: https://rustup.rs" >&2; exit 1; }
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "demo: needs ${missing[*]}; run as root to install them, or: apt-get install ${missing[*]}" >&2
    exit 1
  fi
  echo "demo: installing ${missing[*]}" >&2
  DEBIAN_FRONTEND=noninteractive apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

echo "demo: building (first build takes a few minutes)" >&2
cargo build --quiet --bin ringlet --example demo
exec ./target/debug/examples/demo
