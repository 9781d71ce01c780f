-- Prosody of the compose lab (docker/compose.yaml): the config lab/src/prosody.rs renders for
-- the NAT-lab demo (examples/demo/natlab.rs), with the lab's address plan: c2s on the public
-- host 203.0.113.2:5222, XEP-0215 advertising coturn (STUN only) on both public addresses for
-- RFC 5780, a shared roster so the three friends see each other at once. Plaintext c2s with no
-- certificate, as in the lab: never expose this server outside the lab. The lab's
-- `daemonize = false` and `legacy_ssl_ports = { }` are left out: Prosody 0.12 reports them as
-- deprecated (`prosodyctl check config`), and -F and the empty default do the same.
--
-- ENV_NAME reads the environment variable NAME (Prosody 0.12's config loader); the defaults
-- are the compose values. docker/check.sh runs this very file on loopback by setting them.
local state = ENV_LAB_STATE or "/var/lib/prosody"
local public_ip = ENV_LAB_PUBLIC_IP or "203.0.113.2"
local public_ip2 = ENV_LAB_PUBLIC_IP2 or "203.0.113.3"
local c2s_port = tonumber(ENV_LAB_C2S_PORT or "5222")
local stun_port = tonumber(ENV_LAB_STUN_PORT or "3478")

run_as_root = true
pidfile = state .. "/prosody.pid"
data_path = state .. "/data"
admin_socket = state .. "/admin.sock"
certificates = state .. "/certs"
log = { info = ENV_LAB_LOG or "*console" }
interfaces = { public_ip }
c2s_ports = { c2s_port }
c2s_direct_tls_ports = { }
s2s_ports = { }
authentication = "internal_hashed"
c2s_require_encryption = false
allow_unencrypted_plain_auth = false
network_settings = { nagle = false }
modules_enabled = { "roster"; "saslauth"; "disco"; "ping"; "presence"; "external_services"; "posix"; "smacks"; "groups" }
modules_disabled = { "offline"; "tls"; "s2s" }
external_services = {
	{ type = "stun"; transport = "udp"; host = public_ip; port = stun_port },
	{ type = "stun"; transport = "udp"; host = public_ip2; port = stun_port },
}
groups_file = ENV_LAB_GROUPS_FILE or "/etc/prosody/ringlet-groups.txt"
VirtualHost "lab.demo"
