//! `ringlet config check`: everything `ringlet up` would refuse, found without starting —
//! the config file, the node key, the group certificate (this key, this account, valid now,
//! not revoked) and, with the VPN on, the TUN device's prerequisites. Prints a summary.

use std::path::Path;

use ringlet::config::Config;
use ringlet::identity::NodeKey;
use ringlet::node::membership;
use ringlet::secure::files;

/// What is wrong; the command exits 2 with it.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error(
        "no node key at {0} (`ringlet id` creates one; then ask your group's admin for a \
         certificate)"
    )]
    NoKey(String),
    #[error("node key {path}: {reason}")]
    BadKey { path: String, reason: String },
    #[error(transparent)]
    Membership(#[from] membership::MembershipError),
    #[error("the VPN needs /dev/net/tun, which this system does not have (load the `tun` module)")]
    NoTun,
}

/// Checks `config` (already parsed) and prints what it found.
pub fn run(config: &Config) -> Result<(), CheckError> {
    let key_path = config.key_file.display().to_string();
    if !config.key_file.exists() {
        return Err(CheckError::NoKey(key_path));
    }
    let (key, _) = NodeKey::load_or_create(&config.key_file).map_err(|e| CheckError::BadKey {
        path: key_path.clone(),
        reason: e.to_string(),
    })?;
    membership::security(config, &key)?;
    let cert = files::read_cert(&config.group_cert).map_err(|e| membership::MembershipError::Missing {
        path: config.group_cert.display().to_string(),
        reason: e.to_string(),
    })?;
    if config.vpn.is_some() && !Path::new("/dev/net/tun").exists() {
        return Err(CheckError::NoTun);
    }
    println!("config     {}: ok", config.path.display());
    let server = config.server.as_deref().unwrap_or("from DNS SRV");
    println!("account    {} (server {server}, tls {})", config.jid, config.tls);
    println!("overlay    {} ({} friends)", config.overlay, config.friends.len());
    println!("node       {} (key {key_path})", key.node_id());
    println!(
        "group      {} (certificate serial {}, expires {} unix)",
        cert.group, cert.serial, cert.expires
    );
    match config.udp_enabled {
        true => println!("udp        {}", config.udp_bind),
        false => println!("udp        off (every path is the XMPP relay)"),
    }
    if let Some(vpn) = &config.vpn {
        let address = vpn
            .address
            .map_or(format!("derived in {}", vpn.subnet), |a| a.to_string());
        let mtu = vpn.mtu.map_or("from the underlay".to_owned(), |m| m.to_string());
        println!("vpn        {} {address} (mtu {mtu})", vpn.device);
        // SAFETY: geteuid has no preconditions and cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!(
                "warning: the VPN needs root or CAP_NET_ADMIN to create {}",
                vpn.device
            );
        }
    }
    println!("control    {}", config.control_socket.display());
    Ok(())
}
