#!/usr/bin/env bash
# Creates the compose lab's group: a CA (`ringlet group init`), and for each member a home
# directory OUT/NAME with ringlet.toml, node.key (`ringlet id` creates it) and group.cert
# (`ringlet group sign`, then `ringlet group join`): what examples/demo does for each friend
# with member_home, done with the commands people run on their own machines. The configs are
# the demo's: plaintext XMPP to the lab's Prosody, overlay "lab", the VPN on.
#
#   setup.sh OUT        (compose runs it in the `setup` service with OUT=/out)
#
# Idempotent: an existing CA and node keys are kept (NodeIds stay the same across runs);
# configs and certificates are written again. Environment (defaults are the compose lab's):
#   RINGLET        the ringlet binary                  (ringlet)
#   LAB_MEMBERS    member names, also XMPP user names  (alice bob carol)
#   LAB_DOMAIN     XMPP domain                         (lab.demo)
#   LAB_PASSWORD   every member's XMPP password        (demo-password)
#   LAB_SERVER     Prosody's c2s address               (203.0.113.2:5222)
#   LAB_VPN        true or false                       (true)
set -euo pipefail
out=${1:?usage: setup.sh OUT}
ringlet=${RINGLET:-ringlet}
read -r -a members <<< "${LAB_MEMBERS:-alice bob carol}"
domain=${LAB_DOMAIN:-lab.demo}
password=${LAB_PASSWORD:-demo-password}
server=${LAB_SERVER:-203.0.113.2:5222}
vpn=${LAB_VPN:-true}

ca="$out/ca/lab.ca.key"
mkdir -p "$out/ca"
if [ -e "$ca" ]; then
  echo "setup: keeping the group CA $ca" >&2
else
  "$ringlet" group init lab --ca "$ca"
fi

friends=""
for name in "${members[@]}"; do
  friends+="${friends:+, }\"$name@$domain\""
done

for name in "${members[@]}"; do
  home="$out/$name"
  mkdir -p "$home"
  (
    umask 077
    cat > "$home/ringlet.toml" <<TOML
# Written by docker/setup.sh for the compose lab (docker/README.md).
[xmpp]
jid = "$name@$domain"
password = "$password"
server = "$server"
# The lab's Prosody has no certificate (as in the NAT lab): never use "plain" on a real network.
tls = "plain"

[overlay]
name = "lab"
friends = [$friends]

[vpn]
enabled = $vpn
TOML
  )
  node_key=$("$ringlet" id -c "$home/ringlet.toml" | awk '$1 == "node-key" { print $2 }')
  if [ -z "$node_key" ]; then
    echo "setup: \`ringlet id\` printed no node-key for $name" >&2
    exit 1
  fi
  "$ringlet" group sign --ca "$ca" --node-key "$node_key" --user "$name@$domain" \
    --expires 365 --out "$home/member.cert"
  "$ringlet" group join -c "$home/ringlet.toml" "$home/member.cert"
  rm -f "$home/member.cert"
done
echo "setup: group 'lab' with ${members[*]} in $out" >&2
