#!/usr/bin/env bash
# coturn of the compose lab: STUN only, on both public addresses with the alternate port for
# RFC 5780 NAT behaviour discovery: the arguments NatLab::start_coturn (lab/src/natlab/mod.rs)
# uses. It shares the Prosody container's network namespace, which owns both addresses.
set -euo pipefail
public_ip=${LAB_PUBLIC_IP:-203.0.113.2}
public_ip2=${LAB_PUBLIC_IP2:-203.0.113.3}
port=${LAB_STUN_PORT:-3478}
state=${LAB_STATE:-/var/lib/coturn}
mkdir -p "$state"
exec turnserver -n --stun-only --no-tls --no-dtls --no-cli --simple-log \
  -L "$public_ip" -L "$public_ip2" \
  --listening-port "$port" --alt-listening-port "$((port + 1))" \
  --log-file "${LAB_LOG:-stdout}" --pidfile "$state/coturn.pid" --userdb "$state/turndb"
