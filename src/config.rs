//! The TOML configuration: parsing, defaults, validation and path resolution.
//!
//! Unknown keys are errors (a typo must not silently fall back to a default). Relative paths
//! resolve against the directory of the config file.

use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ringlet_xmpp::connect::TlsMode;
use ringlet_xmpp::BareJid;
use serde::Deserialize;

use crate::vpn::address::{Cidr4, DEFAULT_SUBNET};

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config {path} is not valid: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config {path}: {key}: {message}")]
    Invalid {
        path: PathBuf,
        key: &'static str,
        message: String,
    },
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    node: NodeSection,
    xmpp: XmppSection,
    overlay: OverlaySection,
    #[serde(default)]
    relay: RelaySection,
    #[serde(default)]
    udp: UdpSection,
    #[serde(default)]
    stun: StunSection,
    #[serde(default)]
    group: GroupSection,
    #[serde(default)]
    vpn: VpnSection,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct VpnSection {
    enabled: bool,
    device: String,
    address: Option<String>,
    subnet: Option<String>,
    mtu: Option<u32>,
}

impl Default for VpnSection {
    fn default() -> Self {
        Self {
            enabled: false,
            device: "ringlet0".into(),
            address: None,
            subnet: None,
            mtu: None,
        }
    }
}

/// The `[vpn]` section, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VpnConfig {
    pub device: String,
    /// A fixed address; `None`: derived from the NodeId inside `subnet`.
    pub address: Option<Cidr4>,
    pub subnet: Cidr4,
    /// `None`: from the underlay's MTU.
    pub mtu: Option<u32>,
}

/// The smallest and largest TUN MTU accepted: IPv4's minimum datagram, and the largest packet
/// a direct path carries (with its channel byte); anything larger would take the XMPP relay.
pub const VPN_MTU_RANGE: std::ops::RangeInclusive<u32> = 576..=(crate::link::MAX_DIRECT_PAYLOAD as u32 - 1);

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct GroupSection {
    cert: PathBuf,
    crl: PathBuf,
}

impl Default for GroupSection {
    fn default() -> Self {
        Self {
            cert: "group.cert".into(),
            crl: "group.crl".into(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct NodeSection {
    key_file: PathBuf,
    control_socket: PathBuf,
}

impl Default for NodeSection {
    fn default() -> Self {
        Self {
            key_file: "node.key".into(),
            control_socket: "ringlet.sock".into(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct XmppSection {
    jid: String,
    password: Option<String>,
    password_file: Option<PathBuf>,
    server: Option<String>,
    #[serde(default = "default_tls")]
    tls: String,
    ca_file: Option<PathBuf>,
    #[serde(default = "default_login_timeout")]
    login_timeout_s: u64,
}

fn default_tls() -> String {
    "starttls".into()
}

fn default_login_timeout() -> u64 {
    10
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct OverlaySection {
    name: String,
    #[serde(default)]
    friends: Vec<String>,
    #[serde(default = "default_seek_interval")]
    seek_interval_s: f64,
}

fn default_seek_interval() -> f64 {
    10.0
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RelaySection {
    stanza_budget: usize,
    max_datagram: usize,
    peer_timeout_s: u64,
}

impl Default for RelaySection {
    fn default() -> Self {
        let d = ringlet_xmpp::relay::Config::default();
        Self {
            stanza_budget: d.stanza_budget,
            max_datagram: d.max_datagram,
            peer_timeout_s: d.peer_timeout.as_secs(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct UdpSection {
    enabled: bool,
    bind: String,
}

impl Default for UdpSection {
    fn default() -> Self {
        Self {
            enabled: true,
            bind: "0.0.0.0:0".into(),
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct StunSection {
    servers: Vec<String>,
}

/// A validated configuration with absolute paths.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it was read from (absolute).
    pub path: PathBuf,
    pub key_file: PathBuf,
    pub control_socket: PathBuf,
    pub jid: BareJid,
    pub password: String,
    pub server: Option<String>,
    pub tls: TlsMode,
    pub ca_file: Option<PathBuf>,
    pub login_timeout: Duration,
    pub overlay: String,
    pub friends: Vec<BareJid>,
    pub seek_interval: Duration,
    pub relay: ringlet_xmpp::relay::Config,
    /// False: no UDP at all, every path is the XMPP relay.
    pub udp_enabled: bool,
    pub udp_bind: SocketAddr,
    pub stun_servers: Vec<String>,
    /// This node's member certificate (`ringlet group join` installs it).
    pub group_cert: PathBuf,
    /// The revocations this node knows of.
    pub group_crl: PathBuf,
    /// `None`: the VPN is off.
    pub vpn: Option<VpnConfig>,
}

/// The largest stanza budget accepted: well under the 256 KiB servers allow by default.
pub const MAX_STANZA_BUDGET: usize = 200 * 1024;

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.into(),
            source,
        })?;
        let abs = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
        Self::parse(&text, &abs)
    }

    /// Validates config text; relative paths resolve against `path`'s directory.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let file: File = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.into(),
            message: e.to_string(),
        })?;
        let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let resolve = |p: &Path| {
            if p.is_absolute() {
                p.to_path_buf()
            } else {
                dir.join(p)
            }
        };
        let invalid = |key: &'static str, message: String| ConfigError::Invalid {
            path: path.into(),
            key,
            message,
        };

        let jid = parse_bare(&file.xmpp.jid).map_err(|m| invalid("xmpp.jid", m))?;
        let password = match (&file.xmpp.password, &file.xmpp.password_file) {
            (Some(p), None) => p.clone(),
            (None, Some(f)) => {
                let f = resolve(f);
                let text = fs::read_to_string(&f).map_err(|e| {
                    invalid("xmpp.password_file", format!("cannot read {}: {e}", f.display()))
                })?;
                text.trim_end_matches(['\r', '\n']).to_owned()
            }
            (Some(_), Some(_)) => {
                return Err(invalid(
                    "xmpp.password",
                    "set password or password_file, not both".into(),
                ))
            }
            (None, None) => return Err(invalid("xmpp.password", "missing (or set password_file)".into())),
        };
        if password.is_empty() {
            return Err(invalid("xmpp.password", "is empty".into()));
        }
        let tls = match file.xmpp.tls.as_str() {
            "starttls" => TlsMode::StartTls,
            "direct" => TlsMode::Direct,
            "plain" => TlsMode::Plain,
            other => {
                return Err(invalid(
                    "xmpp.tls",
                    format!("'{other}' is not one of starttls, direct, plain"),
                ))
            }
        };
        if let Some(server) = &file.xmpp.server {
            check_host_port(server).map_err(|m| invalid("xmpp.server", m))?;
        }
        if file.xmpp.login_timeout_s == 0 {
            return Err(invalid("xmpp.login_timeout_s", "must be at least 1".into()));
        }
        let name = file.overlay.name.trim();
        if name.is_empty() || name.len() > 256 {
            return Err(invalid("overlay.name", "must be 1 to 256 characters".into()));
        }
        let friends = file
            .overlay
            .friends
            .iter()
            .map(|f| parse_bare(f).map_err(|m| invalid("overlay.friends", format!("'{f}': {m}"))))
            .collect::<Result<Vec<_>, _>>()?;
        if !(0.5..=3600.0).contains(&file.overlay.seek_interval_s) {
            return Err(invalid(
                "overlay.seek_interval_s",
                "must be between 0.5 and 3600".into(),
            ));
        }
        let r = &file.relay;
        if !(1024..=MAX_STANZA_BUDGET).contains(&r.stanza_budget) {
            return Err(invalid(
                "relay.stanza_budget",
                format!("must be between 1024 and {MAX_STANZA_BUDGET}"),
            ));
        }
        if !(1..=16 * 1024 * 1024).contains(&r.max_datagram) {
            return Err(invalid(
                "relay.max_datagram",
                "must be between 1 and 16 MiB".into(),
            ));
        }
        if !(1..=3600).contains(&r.peer_timeout_s) {
            return Err(invalid(
                "relay.peer_timeout_s",
                "must be between 1 and 3600".into(),
            ));
        }
        let relay = ringlet_xmpp::relay::Config {
            stanza_budget: r.stanza_budget,
            max_datagram: r.max_datagram,
            peer_timeout: Duration::from_secs(r.peer_timeout_s),
            ..ringlet_xmpp::relay::Config::default()
        };
        let udp_bind = file
            .udp
            .bind
            .parse()
            .map_err(|_| invalid("udp.bind", format!("'{}' is not ip:port", file.udp.bind)))?;
        for s in &file.stun.servers {
            check_host_port(s).map_err(|m| invalid("stun.servers", format!("'{s}': {m}")))?;
        }
        let vpn = if file.vpn.enabled {
            Some(vpn_config(&file.vpn).map_err(|(key, m)| invalid(key, m))?)
        } else {
            None
        };
        Ok(Config {
            path: path.into(),
            key_file: resolve(&file.node.key_file),
            control_socket: resolve(&file.node.control_socket),
            jid,
            password,
            server: file.xmpp.server.clone(),
            tls,
            ca_file: file.xmpp.ca_file.as_deref().map(resolve),
            login_timeout: Duration::from_secs(file.xmpp.login_timeout_s),
            overlay: name.to_owned(),
            friends,
            seek_interval: Duration::from_secs_f64(file.overlay.seek_interval_s),
            relay,
            udp_enabled: file.udp.enabled,
            udp_bind,
            stun_servers: file.stun.servers.clone(),
            group_cert: resolve(&file.group.cert),
            group_crl: resolve(&file.group.crl),
            vpn,
        })
    }
}

fn vpn_config(v: &VpnSection) -> Result<VpnConfig, (&'static str, String)> {
    ringlet_tun::validate_name(&v.device).map_err(|e| ("vpn.device", e.to_string()))?;
    let address = match &v.address {
        Some(a) => Some(
            a.parse::<Cidr4>()
                .and_then(Cidr4::usable)
                .map_err(|e| ("vpn.address", e.to_string()))?,
        ),
        None => None,
    };
    let subnet = match (&v.subnet, address) {
        (Some(s), _) => s.parse::<Cidr4>().map_err(|e| ("vpn.subnet", e.to_string()))?,
        (None, Some(a)) => a,
        (None, None) => DEFAULT_SUBNET.parse().expect("the default subnet parses"),
    };
    if let Some(a) = address {
        if a.prefix != subnet.prefix || !subnet.contains(a.addr) {
            return Err(("vpn.address", format!("{a} is not inside vpn.subnet {subnet}")));
        }
    }
    if let Some(mtu) = v.mtu {
        if !VPN_MTU_RANGE.contains(&mtu) {
            return Err((
                "vpn.mtu",
                format!(
                    "must be between {} and {} (larger packets fit no direct path and would all take \
                     the XMPP relay)",
                    VPN_MTU_RANGE.start(),
                    VPN_MTU_RANGE.end()
                ),
            ));
        }
    }
    Ok(VpnConfig {
        device: v.device.clone(),
        address,
        subnet,
        mtu: v.mtu,
    })
}

fn parse_bare(s: &str) -> Result<BareJid, String> {
    let jid = BareJid::new(s).map_err(|e| format!("not a bare JID ({e})"))?;
    if jid.node().is_none() {
        return Err("needs a user part (user@domain)".into());
    }
    Ok(jid)
}

fn check_host_port(s: &str) -> Result<(), String> {
    let (host, port) = s.rsplit_once(':').ok_or("must be host:port")?;
    if host.is_empty() || port.parse::<u16>().map_or(true, |p| p == 0) {
        return Err("must be host:port with a port from 1 to 65535".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
[xmpp]
jid = "alice@example.org"
password = "secret"
[overlay]
name = "friends"
friends = ["bob@example.org"]
"#;

    #[test]
    fn minimal_config_gets_documented_defaults() {
        let c = Config::parse(MINIMAL, Path::new("/etc/ringlet/ringlet.toml")).unwrap();
        assert_eq!(c.key_file, Path::new("/etc/ringlet/node.key"));
        assert_eq!(c.control_socket, Path::new("/etc/ringlet/ringlet.sock"));
        assert_eq!(c.tls, TlsMode::StartTls);
        assert_eq!(c.server, None);
        assert_eq!(c.login_timeout, Duration::from_secs(10));
        assert_eq!(c.relay.stanza_budget, 16 * 1024);
        assert_eq!(c.udp_bind, "0.0.0.0:0".parse().unwrap());
        assert_eq!(c.friends.len(), 1);
        assert!(c.stun_servers.is_empty());
        assert_eq!(c.vpn, None);
    }

    #[test]
    fn vpn_section_defaults_derive_the_address_and_bad_values_name_their_key() {
        let on = format!("{MINIMAL}\n[vpn]\nenabled = true\n");
        let v = Config::parse(&on, Path::new("/x/c.toml")).unwrap().vpn.unwrap();
        assert_eq!(
            (v.device.as_str(), v.address, v.subnet.to_string()),
            ("ringlet0", None, "10.77.0.0/16".into())
        );
        let fixed = Config::parse(
            &format!("{on}address = \"10.9.0.5/24\"\n"),
            Path::new("/x/c.toml"),
        )
        .unwrap();
        assert_eq!(fixed.vpn.unwrap().subnet.to_string(), "10.9.0.5/24");
        let largest = Config::parse(&format!("{on}mtu = 1399\n"), Path::new("/x/c.toml")).unwrap();
        assert_eq!(largest.vpn.unwrap().mtu, Some(1399));
        for (extra, key) in [
            ("device = \"a/b\"", "vpn.device"),
            ("address = \"10.9.0.0/24\"", "vpn.address"),
            ("address = \"10.9.0.5\"", "vpn.address"),
            (
                "address = \"10.9.0.5/24\"\nsubnet = \"10.8.0.0/24\"",
                "vpn.address",
            ),
            ("subnet = \"10.8.0.0/31\"", "vpn.subnet"),
            ("mtu = 100", "vpn.mtu"),
            ("mtu = 1400", "vpn.mtu"),
            ("mtu = 9000", "vpn.mtu"),
        ] {
            assert!(
                err(&format!("{on}{extra}\n")).contains(key),
                "{extra}: {}",
                err(&format!("{on}{extra}\n"))
            );
        }
    }

    fn err(text: &str) -> String {
        Config::parse(text, Path::new("/x/c.toml"))
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn bad_configs_are_refused_with_the_key_named() {
        assert!(err(&MINIMAL.replace("friends = [", "frends = [")).contains("unknown field"));
        assert!(err(&MINIMAL.replace("alice@example.org", "alice@example.org/res")).contains("xmpp.jid"));
        assert!(err(&MINIMAL.replace("alice@example.org", "example.org")).contains("xmpp.jid"));
        assert!(err(&MINIMAL.replace("password = \"secret\"", "")).contains("xmpp.password"));
        assert!(err(&format!("{MINIMAL}\n[relay]\nstanza_budget = 300000\n")).contains("relay.stanza_budget"));
        assert!(
            err(&MINIMAL.replace("[overlay]", "[overlay]\nseek_interval_s = 0")).contains("seek_interval_s")
        );
        assert!(
            err(&MINIMAL.replace("password = \"secret\"", "password = \"s\"\ntls = \"none\""))
                .contains("xmpp.tls")
        );
        assert!(
            err(&MINIMAL.replace("password = \"secret\"", "password = \"s\"\nserver = \"host\""))
                .contains("xmpp.server")
        );
        assert!(err(&MINIMAL.replace("\"bob@example.org\"", "\"not a jid@@\"")).contains("overlay.friends"));
        assert!(err("not toml [").contains("not valid"));
    }

    #[test]
    fn password_file_is_read_and_trimmed() {
        let dir = std::env::temp_dir().join(format!("ringlet-config-test-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("pw"), "hunter2\n").unwrap();
        let text = MINIMAL.replace("password = \"secret\"", "password_file = \"pw\"");
        let c = Config::parse(&text, &dir.join("c.toml")).unwrap();
        assert_eq!(c.password, "hunter2");
        fs::remove_dir_all(dir).unwrap();
    }
}
