# The lab's other containers, built from docker/ (compose.yaml picks the target):
#   prosody  the XMPP server (the lab's config in prosody/), Debian's prosody 0.12
#   coturn   the STUN server (STUN only, as in the NAT lab), Debian's coturn 4.6
#   router   a home router doing NAT with iptables (router.sh)
FROM debian:bookworm-slim AS prosody
RUN apt-get update \
 && apt-get install -y --no-install-recommends prosody lua-unbound iproute2 \
 && rm -rf /var/lib/apt/lists/*
COPY prosody/prosody.cfg.lua /etc/prosody/prosody.cfg.lua
COPY prosody/groups.txt /etc/prosody/ringlet-groups.txt
COPY prosody/entrypoint.sh /usr/local/lib/ringlet-lab/prosody.sh
ENTRYPOINT ["/bin/bash", "/usr/local/lib/ringlet-lab/prosody.sh"]

FROM debian:bookworm-slim AS coturn
RUN apt-get update \
 && apt-get install -y --no-install-recommends coturn \
 && rm -rf /var/lib/apt/lists/*
COPY coturn.sh /usr/local/lib/ringlet-lab/coturn.sh
ENTRYPOINT ["/bin/bash", "/usr/local/lib/ringlet-lab/coturn.sh"]

FROM debian:bookworm-slim AS router
RUN apt-get update \
 && apt-get install -y --no-install-recommends iptables iproute2 conntrack \
 && rm -rf /var/lib/apt/lists/*
COPY router.sh /usr/local/lib/ringlet-lab/router.sh
ENTRYPOINT ["/bin/bash", "/usr/local/lib/ringlet-lab/router.sh"]
