#!/usr/bin/env bash
# The demo: as root, a NAT lab of five friends behind different NATs with the VPN on (the
# connectivity matrix and a ping across the VPN); otherwise three nodes on loopback.
# Installs what it needs on Debian/Ubuntu (as root), builds, runs, cleans up.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v prosody >/dev/null || missing+=(prosody lua-unbound)
if [ "$(id -u)" -eq 0 ]; then
  command -v turnserver >/dev/null || missing+=(coturn)
  command -v ip >/dev/null || missing+=(iproute2)
  command -v iptables >/dev/null || missing+=(iptables)
  command -v ping >/dev/null || missing+=(iputils-ping)
fi
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
