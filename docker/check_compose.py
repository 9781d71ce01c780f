"""Static cross-checks of docker/compose.yaml against itself, the lab's files and the
Dockerfiles (docker/check.sh runs it). Exits 1 with one line per problem."""
import ipaddress
import os
import re
import sys

import yaml

here = os.path.dirname(os.path.abspath(__file__))
problems = []


def need(cond, msg):
    if not cond:
        problems.append(msg)


with open(os.path.join(here, "compose.yaml")) as f:
    compose = yaml.safe_load(f)
services = compose["services"]
networks = compose.get("networks", {})
volumes = compose.get("volumes", {})

subnets = {}
for name, net in networks.items():
    if name == "internet":
        need(net.get("internal") is True, "network internet is not internal (traffic could leave the lab)")
    else:  # a LAN: internal would drop routed packets (br_netfilter); no host masquerading
        need(not net.get("internal"), f"network {name}: a router's LAN cannot be internal")
        need(net.get("driver_opts", {}).get("com.docker.network.bridge.enable_ip_masquerade") == "false",
             f"network {name}: the host must not masquerade it")
    cfg = net["ipam"]["config"][0]
    subnet = ipaddress.ip_network(cfg["subnet"])
    ip_range = ipaddress.ip_network(cfg["ip_range"])
    gateway = ipaddress.ip_address(cfg["gateway"])
    need(ip_range.subnet_of(subnet), f"network {name}: ip_range outside the subnet")
    need(gateway in subnet, f"network {name}: gateway outside the subnet")
    subnets[name] = (subnet, ip_range, gateway)

addr = {}  # (service, network) -> address
seen = {}
for sname, s in services.items():
    nets = s.get("networks", {})
    for nname, ncfg in nets.items():
        need(nname in networks, f"{sname}: unknown network {nname}")
        if nname not in subnets:
            continue
        ip = ipaddress.ip_address(ncfg["ipv4_address"])
        subnet, ip_range, gateway = subnets[nname]
        need(ip in subnet, f"{sname}: {ip} is not in {nname} {subnet}")
        need(ip not in ip_range, f"{sname}: {ip} is in the dynamic range of {nname}")
        need(ip != gateway, f"{sname}: {ip} is Docker's gateway on {nname}")
        need(ip not in seen, f"{sname}: {ip} is also {seen.get(ip)}'s")
        seen[ip] = sname
        addr[(sname, nname)] = ip
    mode = s.get("network_mode", "")
    if mode.startswith("service:"):
        need(mode[8:] in services, f"{sname}: network_mode names unknown service {mode[8:]}")
        need("networks" not in s, f"{sname}: network_mode and networks together")
    for dep in s.get("depends_on", {}):
        need(dep in services, f"{sname}: depends on unknown service {dep}")
    for v in s.get("volumes", []):
        src = v.split(":")[0]
        if src.startswith("."):
            need(os.path.exists(os.path.join(here, src)), f"{sname}: bind mount {src} missing")
        else:
            need(src in volumes, f"{sname}: unknown volume {src}")
    build = s.get("build")
    if build:
        ctx = os.path.normpath(os.path.join(here, build["context"]))
        dockerfile = os.path.join(ctx, build.get("dockerfile", "Dockerfile"))
        need(os.path.isfile(dockerfile), f"{sname}: no Dockerfile {dockerfile}")
        text = open(dockerfile).read() if os.path.isfile(dockerfile) else ""
        if "target" in build:
            need(re.search(rf"^FROM \S+ AS {re.escape(build['target'])}$", text, re.M),
                 f"{sname}: {dockerfile} has no stage {build['target']}")
        for src in re.findall(r"^COPY (?!--from)(\S+) ", text, re.M):
            if src != ".":
                need(os.path.exists(os.path.join(ctx, src)), f"{sname}: COPY source {src} missing")

# The lab's plan: the public host, one router and one peer per member.
env = services["prosody"]["environment"]
public = ipaddress.ip_address(env["LAB_PUBLIC_IP"])
need(addr.get(("prosody", "internet")) == public, "prosody's address is not LAB_PUBLIC_IP")
need(ipaddress.ip_address(env["LAB_PUBLIC_IP2"]) in subnets["internet"][0]
     and ipaddress.ip_address(env["LAB_PUBLIC_IP2"]) not in subnets["internet"][1]
     and ipaddress.ip_address(env["LAB_PUBLIC_IP2"]) not in seen,
     "LAB_PUBLIC_IP2 must be a free fixed address of the internet network")
need(services["coturn"]["environment"] == env, "coturn and prosody disagree on the lab env")
need(services["coturn"].get("network_mode") == "service:prosody", "coturn must share prosody's namespace")
users = env["LAB_USERS"].split()
setup = services["setup"]["environment"]
need(setup["LAB_MEMBERS"].split() == users, "setup LAB_MEMBERS != prosody LAB_USERS")
need(setup["LAB_DOMAIN"] == env["LAB_DOMAIN"], "setup and prosody disagree on the domain")
need(setup["LAB_PASSWORD"] == env["LAB_PASSWORD"], "setup and prosody disagree on the password")
need(setup["LAB_SERVER"] == f"{public}:5222", "setup LAB_SERVER is not prosody's c2s address")
groups = [l.strip() for l in open(os.path.join(here, "prosody", "groups.txt")) if l.strip() and not l.startswith("[")]
need(groups == [f"{u}@{env['LAB_DOMAIN']}" for u in users], "prosody/groups.txt != LAB_USERS")
cfg = open(os.path.join(here, "prosody", "prosody.cfg.lua")).read()
need(f'VirtualHost "{env["LAB_DOMAIN"]}"' in cfg, "prosody.cfg.lua has another VirtualHost")
need(f'ENV_LAB_PUBLIC_IP or "{public}"' in cfg, "prosody.cfg.lua's default address differs")

nat_types = {"full", "restricted", "port-restricted", "symmetric", "udp-blocked"}
for user in users:
    peer, router, lan = services.get(user), services.get(f"router-{user}"), f"lan-{user}"
    need(peer is not None and router is not None, f"{user}: no peer or no router service")
    if peer is None or router is None:
        continue
    need(list(peer["networks"]) == [lan], f"{user}: must be on {lan} only")
    need(set(router["networks"]) == {"internet", lan}, f"router-{user}: must be on internet and {lan}")
    need(router["environment"]["NAT"] in nat_types, f"router-{user}: unknown NAT type")
    need(ipaddress.ip_address(router["environment"]["PEER_IP"]) == addr.get((user, lan)),
         f"router-{user}: PEER_IP is not {user}'s address")
    need(ipaddress.ip_address(peer["environment"]["RINGLET_GATEWAY"]) == addr.get((f"router-{user}", lan)),
         f"{user}: RINGLET_GATEWAY is not its router's LAN address")
    need(router.get("sysctls", {}).get("net.ipv4.ip_forward") == 1, f"router-{user}: no ip_forward")
    need("NET_ADMIN" in router.get("cap_add", []), f"router-{user}: no NET_ADMIN")
    need("NET_ADMIN" in peer.get("cap_add", []), f"{user}: no NET_ADMIN (TUN)")
    need("/dev/net/tun:/dev/net/tun" in peer.get("devices", []), f"{user}: no /dev/net/tun")
    need(f"{user}-home:/etc/ringlet" in peer.get("volumes", []), f"{user}: home volume not at /etc/ringlet")
    need(f"{user}-home:/out/{user}" in services["setup"]["volumes"], f"setup does not write {user}'s home")
    deps = peer.get("depends_on", {})
    need(deps.get("setup", {}).get("condition") == "service_completed_successfully", f"{user}: not after setup")
    need(deps.get(f"router-{user}", {}).get("condition") == "service_healthy", f"{user}: not after its router")
    need("coturn" in deps, f"{user}: not after coturn (and so prosody)")

for p in problems:
    print(f"compose: {p}")
print(f"compose: {len(services)} services, {len(networks)} networks, {len(volumes)} volumes; "
      f"{len(problems)} problems")
sys.exit(1 if problems else 0)
