#!/usr/bin/env bash
# Checks docker/ on a machine without Docker (not part of CI): what can be checked of the
# compose lab without a Docker engine. From the repository root:
#
#   docker/check.sh            static checks + Prosody, coturn and three nodes on loopback
#   docker/check.sh --netns    also the compose topology rebuilt with network namespaces
#                              (root): the same scripts, NAT routers, the VPN and a ping
#
# Needs bash, python3 with PyYAML, cargo, prosody, coturn; shellcheck and luac if present.
# RINGLET_BIN=path skips the build. Everything started is stopped by PID on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
netns=false
[ "${1:-}" = --netns ] && netns=true

pids=()
namespaces=()
tmp=$(mktemp -d /tmp/ringlet-docker-check.XXXXXX)
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  for ns in "${namespaces[@]}"; do ip netns del "$ns" 2>/dev/null || true; done
  rm -rf "$tmp"
}
trap cleanup EXIT
ok() { echo "check: ok    $*"; }
skip() { echo "check: SKIP  $*"; }
die() {
  echo "check: FAIL  $*" >&2
  exit 1
}
free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
# wait_for SECONDS COMMAND...: runs COMMAND every 0.2 s until it succeeds.
wait_for() {
  local deadline=$((SECONDS + $1))
  shift
  until "$@" >/dev/null 2>&1; do
    [ "$SECONDS" -lt "$deadline" ] || return 1
    sleep 0.2
  done
}

# --- 1. shell scripts -----------------------------------------------------------------------
scripts=(docker/setup.sh docker/router.sh docker/coturn.sh docker/prosody/entrypoint.sh docker/check.sh)
for s in "${scripts[@]}"; do bash -n "$s"; done
sh -n docker/entrypoint.sh
ok "shell syntax (bash -n, sh -n)"
if command -v shellcheck >/dev/null; then
  shellcheck "${scripts[@]}" docker/entrypoint.sh
  ok "shellcheck"
else
  skip "shellcheck is not installed (apt-get install shellcheck)"
fi

# --- 2. compose file ------------------------------------------------------------------------
python3 docker/check_compose.py
ok "compose.yaml parses; services, networks, volumes, addresses and lab settings agree"

# --- 3. the Dockerfile's Rust toolchain -----------------------------------------------------
want=$(sed -n 's/^ARG RUST_VERSION=//p' docker/Dockerfile)
cargo tree --locked -p ringlet -e normal,build --prefix none --format '{p}' >"$tmp/deps.txt"
need=$(cargo metadata --locked --format-version 1 | python3 -c '
import json, sys
deps = set()
for line in open(sys.argv[1]):
    parts = line.split()
    if len(parts) >= 2:
        deps.add((parts[0], parts[1].lstrip("v")))
meta = json.load(sys.stdin)
versions = [p["rust_version"] for p in meta["packages"]
            if p.get("rust_version") and (p["name"], p["version"]) in deps]
print(max(versions, key=lambda v: tuple(int(x) for x in v.split("."))))
' "$tmp/deps.txt")
python3 -c 'import sys; v = lambda s: (tuple(int(x) for x in s.split(".")) + (0, 0))[:3]; sys.exit(v(sys.argv[1]) < v(sys.argv[2]))' \
  "$want" "$need" || die "Dockerfile RUST_VERSION $want < $need, which Cargo.lock's dependencies need"
ok "Dockerfile RUST_VERSION $want >= $need (the newest rust-version in ringlet's locked dependencies)"

# --- 4. Prosody -----------------------------------------------------------------------------
if command -v luac >/dev/null; then
  luac -p docker/prosody/prosody.cfg.lua
  ok "luac -p prosody.cfg.lua"
fi
c2s_port=$(free_port)
stun_port=$(free_port)
export PROSODY_CONFIG=$PWD/docker/prosody/prosody.cfg.lua LAB_GROUPS_FILE=$PWD/docker/prosody/groups.txt
export LAB_PUBLIC_IP=127.0.0.1 LAB_PUBLIC_IP2=127.0.0.2 LAB_C2S_PORT=$c2s_port LAB_STUN_PORT=$stun_port
mkdir -p "$tmp/prosody"
LAB_STATE=$tmp/prosody prosodyctl --config "$PROSODY_CONFIG" check config >"$tmp/prosody-check.log" 2>&1 ||
  die "prosodyctl check config: $(cat "$tmp/prosody-check.log")"
ok "prosodyctl check config"
LAB_STATE=$tmp/prosody bash docker/prosody/entrypoint.sh >"$tmp/prosody.log" 2>&1 &
pids+=($!)
wait_for 15 grep -q "Activated service 'c2s' on \[127.0.0.1\]:$c2s_port" "$tmp/prosody.log" ||
  die "prosody did not start: $(cat "$tmp/prosody.log")"
grep -q "Groups loaded successfully" "$tmp/prosody.log" || die "the shared roster did not load"
ok "prosody entrypoint on loopback: 3 accounts registered, shared roster loaded, c2s on :$c2s_port"

# --- 5. coturn ------------------------------------------------------------------------------
stun_answers() { # HOST PORT
  python3 - "$1" "$2" <<'PY'
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(0.5)
s.sendto(bytes([0, 1, 0, 0, 0x21, 0x12, 0xA4, 0x42]) + bytes([0x5A] * 12), (sys.argv[1], int(sys.argv[2])))
data = s.recv(512)
sys.exit(0 if data[:2] == bytes([1, 1]) else 1)
PY
}
mkdir -p "$tmp/coturn"
LAB_STATE=$tmp/coturn LAB_LOG=$tmp/coturn/coturn.log bash docker/coturn.sh >/dev/null 2>&1 &
pids+=($!)
if ! wait_for 10 stun_answers 127.0.0.1 "$stun_port" || ! wait_for 5 stun_answers 127.0.0.2 "$stun_port"; then
  die "coturn does not answer STUN: $(cat "$tmp/coturn/coturn.log" 2>/dev/null)"
fi
ok "coturn.sh on loopback answers STUN on both addresses"

# --- 6. setup.sh and the member configs -----------------------------------------------------
if [ -z "${RINGLET_BIN:-}" ]; then
  cargo build --quiet --bin ringlet
  RINGLET_BIN=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')/debug/ringlet
fi
export RINGLET=$RINGLET_BIN
RINGLET=$RINGLET_BIN bash docker/setup.sh "$tmp/compose-homes" 2>"$tmp/setup.log" >/dev/null ||
  die "setup.sh: $(cat "$tmp/setup.log")"
ids1=""
for name in alice bob carol; do
  home=$tmp/compose-homes/$name
  ids1+=$("$RINGLET" id -c "$home/ringlet.toml" | awk '$1 == "node-id" { print $2 }')" "
  # Captured first: `grep -q` would close the pipe early and ringlet's println! would panic.
  show=$("$RINGLET" group show -c "$home/ringlet.toml")
  grep -q "^user  *$name@lab.demo$" <<<"$show" || die "$name's certificate is not for $name@lab.demo"
  [ "$(stat -c %a "$home/node.key")" = 600 ] || die "$name's node.key is not 0600"
done
RINGLET=$RINGLET_BIN bash docker/setup.sh "$tmp/compose-homes" 2>>"$tmp/setup.log" >/dev/null
ids2=""
for name in alice bob carol; do
  ids2+=$("$RINGLET" id -c "$tmp/compose-homes/$name/ringlet.toml" | awk '$1 == "node-id" { print $2 }')" "
done
[ "$ids1" = "$ids2" ] || die "a second setup.sh run changed the NodeIds"
ok "setup.sh: the compose configs load (ringlet id), certificates match (group show); a rerun keeps the keys"

# --- 7. three nodes on loopback, configs from setup.sh ----------------------------------------
status_ok() { # CONFIG: online, both friends seen, the two STUN services from XEP-0215
  "$RINGLET" status --json -c "$1" | python3 -c '
import json, sys
s = json.load(sys.stdin)
stun = {(x["host"], x["port"]) for x in s["services"] if x["source"] == "xep-0215" and x["kind"] == "stun"}
ok = s["state"] == "online" and len(s["peers"]) == 2 and stun == {("127.0.0.1", int(sys.argv[1])), ("127.0.0.2", int(sys.argv[1]))}
sys.exit(0 if ok else 1)
' "$stun_port"
}
LAB_SERVER=127.0.0.1:$c2s_port LAB_VPN=false bash docker/setup.sh "$tmp/loopback" 2>>"$tmp/setup.log" >/dev/null
for name in alice bob carol; do
  "$RINGLET" up -c "$tmp/loopback/$name/ringlet.toml" 2>"$tmp/loopback/$name.log" &
  pids+=($!)
done
for name in alice bob carol; do
  wait_for 30 status_ok "$tmp/loopback/$name/ringlet.toml" ||
    die "$name did not come online with both friends and the XEP-0215 STUN services: $(cat "$tmp/loopback/$name.log")"
done
"$RINGLET" ping -n 2 -c "$tmp/loopback/alice/ringlet.toml" carol@lab.demo >"$tmp/ping.log" ||
  die "ringlet ping alice → carol: $(cat "$tmp/ping.log")"
ok "loopback: alice, bob, carol log in to this Prosody, see each other, get both STUN servers over XEP-0215; ping ok"

"$netns" || {
  echo "check: done (the NAT topology: docker/check.sh --netns, as root)"
  exit 0
}

# --- 8. the compose topology in network namespaces (root) -----------------------------------
[ "$(id -u)" -eq 0 ] || die "--netns needs root"
p="dk$$"
mkns() {
  ip netns add "$p-$1"
  namespaces+=("$p-$1")
  ip -n "$p-$1" link set lo up
}
# Runs COMMAND in namespace NAME. Not for background processes: `in_ns … &` is a subshell,
# and its PID is not the process's; those call `ip netns exec` directly (it execs).
in_ns() { # NAME COMMAND...
  local ns=$1
  shift
  ip netns exec "$p-$ns" "$@"
}
mkns inet
ip -n "$p-inet" link add br0 type bridge
ip -n "$p-inet" link set br0 up
plug() { # NS PORT ADDRESS: a veth from the internet bridge into NS with ADDRESS/24
  mkns "$1"
  ip -n "$p-inet" link add "$2" type veth peer name eth0 netns "$p-$1"
  ip -n "$p-inet" link set "$2" master br0 up
  ip -n "$p-$1" addr add "$3/24" dev eth0
  ip -n "$p-$1" link set eth0 up
}
plug pub pub 203.0.113.2
# The compose values: no LAB_* overrides except where state and logs go.
unset PROSODY_CONFIG LAB_PUBLIC_IP LAB_PUBLIC_IP2 LAB_C2S_PORT LAB_STUN_PORT
mkdir -p "$tmp/ns-prosody" "$tmp/ns-coturn"
ip netns exec "$p-pub" env PROSODY_CONFIG="$PWD/docker/prosody/prosody.cfg.lua" LAB_STATE="$tmp/ns-prosody" \
  bash docker/prosody/entrypoint.sh >"$tmp/ns-prosody.log" 2>&1 &
pids+=($!)
wait_for 15 grep -q "Activated service 'c2s' on \[203.0.113.2\]:5222" "$tmp/ns-prosody.log" ||
  die "prosody in the namespace: $(cat "$tmp/ns-prosody.log")"
ip netns exec "$p-pub" env LAB_STATE="$tmp/ns-coturn" LAB_LOG="$tmp/ns-coturn/coturn.log" bash docker/coturn.sh >/dev/null 2>&1 &
pids+=($!)
wait_for 10 in_ns pub bash -c "$(declare -f stun_answers); stun_answers 203.0.113.2 3478 && stun_answers 203.0.113.3 3478" ||
  die "coturn in the namespace"
ok "netns: the public host (prosody entrypoint added 203.0.113.3; coturn answers on both)"

# Routers and peers as compose.yaml has them: name, NAT, index (WAN .10+i, LAN 10.(i+1).0.0/24).
peers=(alice:full:0 bob:port-restricted:1 carol:symmetric:2)
for entry in "${peers[@]}"; do
  IFS=: read -r name nat i <<<"$entry"
  plug "r-$name" "r$i" "203.0.113.$((10 + i))"
  mkns "$name"
  ip -n "$p-r-$name" link add lan type veth peer name eth0 netns "$p-$name"
  ip -n "$p-r-$name" addr add "10.$((i + 1)).0.1/24" dev lan
  ip -n "$p-r-$name" link set lan up
  ip -n "$p-$name" addr add "10.$((i + 1)).0.2/24" dev eth0
  ip -n "$p-$name" link set eth0 up
  in_ns "r-$name" sysctl -qw net.ipv4.ip_forward=1
  ip netns exec "$p-r-$name" env NAT="$nat" PEER_IP="10.$((i + 1)).0.2" READY_FILE="$tmp/r-$name.ready" \
    bash docker/router.sh >"$tmp/r-$name.log" 2>&1 &
  pids+=($!)
  wait_for 10 test -f "$tmp/r-$name.ready" || die "router $name: $(cat "$tmp/r-$name.log")"
done
ok "netns: routers up with router.sh (full, port-restricted, symmetric)"

RINGLET=$RINGLET_BIN bash docker/setup.sh "$tmp/ns-homes" 2>>"$tmp/setup.log" >/dev/null
bindir=$(dirname "$RINGLET_BIN")
for entry in "${peers[@]}"; do
  IFS=: read -r name nat i <<<"$entry"
  ip netns exec "$p-$name" env PATH="$bindir:$PATH" RINGLET_GATEWAY="10.$((i + 1)).0.1" \
    sh docker/entrypoint.sh up -c "$tmp/ns-homes/$name/ringlet.toml" >/dev/null 2>"$tmp/ns-$name.log" &
  pids+=($!)
done
vpn_ready() { # CONFIG: online, both friends with VPN addresses
  "$RINGLET" status --json -c "$1" | python3 -c '
import json, sys
s = json.load(sys.stdin)
sys.exit(0 if s["state"] == "online" and s["vpn"] and len(s["peers"]) == 2
         and all(p["vpn_address"] for p in s["peers"]) else 1)'
}
for entry in "${peers[@]}"; do
  name=${entry%%:*}
  wait_for 60 vpn_ready "$tmp/ns-homes/$name/ringlet.toml" ||
    die "$name did not get online with both friends' VPN addresses: $(tail -20 "$tmp/ns-$name.log")"
done
for entry in "${peers[@]}"; do
  name=${entry%%:*}
  python3 - "$name" "$("$RINGLET" status --json -c "$tmp/ns-homes/$name/ringlet.toml")" <<'PY'
import json, sys
name, s = sys.argv[1], json.loads(sys.argv[2])
print("check:       %-6s %-15s reflexive %s nat %s" % (name, s["vpn"]["address"], s["reflexive"], s["nat"]))
for p in s["peers"]:
    print("check:         -> %-16s %-7s %s" % (p["jid"].split("/")[0], p["path"], p["vpn_address"]))
PY
done
carol_vpn=$("$RINGLET" status --json -c "$tmp/ns-homes/carol/ringlet.toml" |
  python3 -c 'import json, sys; print(json.load(sys.stdin)["vpn"]["address"].split("/")[0])')
in_ns alice ping -c 3 -i 0.3 -W 3 "$carol_vpn" >"$tmp/vpn-ping.log" ||
  die "VPN ping alice → carol ($carol_vpn): $(cat "$tmp/vpn-ping.log")"
ok "netns: alice pings carol's VPN address $carol_vpn across full cone → symmetric NAT"
echo "check: done"
