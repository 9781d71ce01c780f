#!/usr/bin/env bash
# Entrypoint of the lab's Prosody container (the lab's "public host"): gives the container its
# second public address (coturn shares this network namespace and answers RFC 5780 requests
# on both, as in the NAT lab), registers the lab's accounts (prosodyctl works while the server
# is stopped) and runs Prosody in the foreground. docker/check.sh runs it on loopback.
set -euo pipefail
config=${PROSODY_CONFIG:-/etc/prosody/prosody.cfg.lua}
public_ip=${LAB_PUBLIC_IP:-203.0.113.2}
public_ip2=${LAB_PUBLIC_IP2:-203.0.113.3}
domain=${LAB_DOMAIN:-lab.demo}
password=${LAB_PASSWORD:-demo-password}
read -r -a users <<< "${LAB_USERS:-alice bob carol}"

# Already local (a restarted container, or loopback in check.sh): nothing to add.
if ! ip route get "$public_ip2" | grep -q '^local '; then
  dev=$(ip -o -4 addr show | awk -v ip="$public_ip/" 'index($4, ip) == 1 { print $2; exit }')
  if [ -z "$dev" ]; then
    echo "prosody-lab: no interface has $public_ip" >&2
    exit 1
  fi
  ip addr add "$public_ip2/24" dev "$dev"
  echo "prosody-lab: added $public_ip2 to $dev (the second STUN address)" >&2
fi
state=${LAB_STATE:-/var/lib/prosody}
mkdir -p "$state/data" "$state/certs"
for user in "${users[@]}"; do
  prosodyctl --config "$config" register "$user" "$domain" "$password"
  echo "prosody-lab: registered $user@$domain" >&2
done
exec prosody -F --config "$config"
