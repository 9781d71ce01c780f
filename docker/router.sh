#!/usr/bin/env bash
# A home router of the compose lab: installs the iptables rules of lab/src/natlab/nat.rs for
# NAT (full, restricted, port-restricted, symmetric or udp-blocked) between its WAN (the
# interface with an address in 203.0.113.0/24) and its peer's LAN, then idles until stopped.
# Needs CAP_NET_ADMIN and net.ipv4.ip_forward=1 (compose sets both).
set -euo pipefail
nat=${NAT:?set NAT to full, restricted, port-restricted, symmetric or udp-blocked}
peer_ip=${PEER_IP:?set PEER_IP to the LAN address of the peer}
wan_net=${WAN_NET:-203.0.113.}
ready=${READY_FILE:-/run/router-ready}

wan=$(ip -o -4 addr show | awk -v net="$wan_net" 'index($4, net) == 1 { print $2; exit }')
if [ -z "$wan" ]; then
  echo "router: no interface has an address in ${wan_net}0/24" >&2
  exit 1
fi
if [ "$(cat /proc/sys/net/ipv4/ip_forward)" != 1 ]; then
  echo "router: net.ipv4.ip_forward is off (compose: sysctls net.ipv4.ip_forward=1)" >&2
  exit 1
fi
# The router's only way out is its WAN: a default route Docker gave it (via the host's bridge
# on the LAN) would let the lab reach the real Internet.
while ip route del default 2>/dev/null; do
  echo "router: removed a default route" >&2
done
ipt() {
  echo "router: iptables $*" >&2
  iptables "$@"
}

case $nat in
  symmetric) ipt -t nat -A POSTROUTING -o "$wan" -j MASQUERADE --random-fully ;;
  full | restricted | port-restricted | udp-blocked) ipt -t nat -A POSTROUTING -o "$wan" -j MASQUERADE ;;
  *)
    echo "router: unknown NAT type '$nat'" >&2
    exit 1
    ;;
esac
case $nat in
  full)
    # Every inbound UDP packet reaches the peer on the same port (MASQUERADE keeps ports).
    ipt -t nat -A PREROUTING -i "$wan" -p udp -j DNAT --to-destination "$peer_ip"
    ;;
  restricted)
    # Remember every IP the peer sent UDP to; admit new inbound UDP only from those.
    ipt -A FORWARD -o "$wan" -p udp -m recent --name contacted --set --rdest
    ipt -t nat -A PREROUTING -i "$wan" -p udp -m recent --name contacted --rcheck --rsource \
      -j DNAT --to-destination "$peer_ip"
    ;;
esac
# Unsolicited inbound packets must not create conntrack entries on the router itself: one
# would make MASQUERADE pick another port for the peer's flow (REFERENCE.md, NAT lab).
ipt -A INPUT -i "$wan" -m conntrack --ctstate NEW -j DROP
if [ "$nat" = udp-blocked ]; then
  ipt -A FORWARD -p udp -j DROP
fi
echo "router: $nat NAT for $peer_ip on $wan" >&2
touch "$ready"
sleep infinity &
sleeper=$!
trap 'kill "$sleeper"; exit 0' TERM INT
wait
