//! What the demo and the VPN benchmark share: finding the `ringlet` binary, setting up a
//! member's home (config, key, certificate) and asking a node for its status.

use std::path::{Path, PathBuf};

use anyhow::Context;
use ringlet::node::status::Status;

/// The `ringlet` binary: `RINGLET_BIN`, else beside this example's target directory.
pub fn ringlet_bin() -> anyhow::Result<PathBuf> {
    if let Ok(p) = std::env::var("RINGLET_BIN") {
        return Ok(p.into());
    }
    // target/<profile>/examples/<example> → target/<profile>/ringlet
    let exe = std::env::current_exe()?;
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .map(|d| d.join("ringlet"))
        .context("cannot locate target dir")?;
    anyhow::ensure!(
        bin.exists(),
        "{} not found; build it with `cargo build [--release] --bin ringlet`",
        bin.display()
    );
    Ok(bin)
}

/// Sets up a member's home `dir/name`: its config file (`config` text) and a node key with a
/// certificate for `jid` signed by the group's CA (what `ringlet group sign` / `join` do when
/// people run them on their own machines). Returns (home, config path).
pub fn member_home(
    dir: &Path,
    name: &str,
    jid: &str,
    config: &str,
    group_ca: &ringlet::secure::cert::Ca,
) -> anyhow::Result<(PathBuf, PathBuf)> {
    let home = dir.join(name);
    std::fs::create_dir_all(&home)?;
    let config_file = home.join("ringlet.toml");
    std::fs::write(&config_file, config)?;
    let unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    ringlet::secure::admin::provision(
        group_ca,
        &home.join("node.key"),
        &home.join("group.cert"),
        &jid.parse()?,
        unix,
    )?;
    Ok((home, config_file))
}

pub async fn status(socket: &Path) -> Option<Status> {
    let v = ringlet::control::request(socket, "status").await.ok()?;
    serde_json::from_value(v).ok()
}

/// A member with the VPN on in the NAT lab: its home under `dir/name` (account `jid` on the lab
/// server at the public address, overlay `lab`, `friends` as JIDs) and `ringlet up` running in
/// namespace `ns`, stderr to `home/ringlet.log`. Returns (home, log, process).
pub fn start_vpn_member(
    ns: &ringlet_lab::Netns,
    bin: &Path,
    dir: &Path,
    name: &str,
    (jid, password): (&str, &str),
    friends: &[String],
    group_ca: &ringlet::secure::cert::Ca,
) -> anyhow::Result<(PathBuf, PathBuf, ringlet_lab::ChildGuard)> {
    let friends: Vec<String> = friends.iter().map(|f| format!("\"{f}\"")).collect();
    let server = ringlet_lab::natlab::PUBLIC_IP;
    let config = format!(
        "[xmpp]\njid = \"{jid}\"\npassword = \"{password}\"\nserver = \"{server}:5222\"\n\
         tls = \"plain\"\n\n[overlay]\nname = \"lab\"\nfriends = [{}]\n\n[vpn]\nenabled = true\n",
        friends.join(", ")
    );
    let (home, config) = member_home(dir, name, jid, &config, group_ca)?;
    let log = home.join("ringlet.log");
    let mut cmd = ns.command(&bin.to_string_lossy());
    cmd.args(["up", "--config"])
        .arg(&config)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log)?);
    let process = ringlet_lab::ChildGuard::spawn(&format!("ringlet {name}"), &mut cmd)?;
    Ok((home, log, process))
}
