#!/bin/sh
# Entrypoint of the ringlet image: with RINGLET_GATEWAY set (the compose lab's peers), the
# default route goes through that address, the peer's NAT router; then `ringlet ARGS`
# (by default: up -c /etc/ringlet/ringlet.toml).
set -eu
if [ -n "${RINGLET_GATEWAY:-}" ]; then
  ip route replace default via "$RINGLET_GATEWAY"
  echo "entrypoint: default route via $RINGLET_GATEWAY" >&2
fi
exec ringlet "$@"
