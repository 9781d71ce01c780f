//! `ringlet id` and `ringlet group init | sign | join | revoke | show`: the node's identity and the
//! group's certificates, handled offline (no running node needed).

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Subcommand;
use ringlet::config::Config;
use ringlet::groups::{self, Published};
use ringlet::identity::NodeKey;
use ringlet::node::membership::unix_now;
use ringlet::secure::revocation::{Revocation, Target};
use ringlet::secure::{admin, files};

#[derive(Subcommand)]
pub enum GroupOp {
    /// Create a group: a new CA key, kept by whoever admits members
    Init {
        name: String,
        /// Where to write the CA key (default: NAME.ca.key in this directory)
        #[arg(long)]
        ca: Option<PathBuf>,
    },
    /// Issue a member certificate for a node key and its user's JID
    Sign {
        /// The group's CA key file (default: the only *.ca.key in this directory)
        #[arg(long)]
        ca: Option<PathBuf>,
        /// The node's public key, as `ringlet id` prints it on that node
        #[arg(long)]
        node_key: String,
        /// The user's bare JID, the account the node logs in with
        #[arg(long)]
        user: String,
        /// Days of validity (`365`, `90d`) or a date (`2027-06-30`)
        #[arg(long, default_value = "365")]
        expires: String,
        /// Write the certificate here instead of standard output
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Install this node's member certificate (checked against the node key and JID)
    Join {
        #[arg(short, long, default_value = "ringlet.toml")]
        config: PathBuf,
        /// The certificate file `group sign` wrote
        cert: PathBuf,
    },
    /// Revoke a user (all their nodes), one certificate or one node key, signed with the CA key;
    /// prints the revocation and, with --config, has that node publish it to the group (or, when
    /// it is not running, adds it to its revocation list)
    Revoke {
        /// The group's CA key file (default: the only *.ca.key in this directory)
        #[arg(long)]
        ca: Option<PathBuf>,
        /// A user's bare JID: every node of theirs
        #[arg(long, conflicts_with_all = ["serial", "node_key"])]
        user: Option<String>,
        /// One certificate, by the serial `group show` prints (16 hex digits)
        #[arg(long, conflicts_with = "node_key")]
        serial: Option<String>,
        /// One node, by the public key `ringlet id` prints
        #[arg(long)]
        node_key: Option<String>,
        #[arg(short, long)]
        config: Option<PathBuf>,
    },
    /// Run the group service beside this node: web pages to create groups, approve join
    /// requests and revoke members (on localhost and the node's VPN address), with its state
    /// in SQLite
    Serve {
        /// The administrator's node config (its VPN address is served, revocations go to it)
        #[arg(short, long, default_value = "ringlet.toml")]
        config: PathBuf,
        /// The service's database (default: groups.db beside the config)
        #[arg(long)]
        db: Option<PathBuf>,
        /// TCP port on localhost and on the VPN address (0: any free port)
        #[arg(long, default_value_t = 8377)]
        port: u16,
    },
    /// Ask a group's administrator to admit this node (over XMPP, to their group service);
    /// waits for the decision and installs the certificate
    Request {
        #[arg(short, long, default_value = "ringlet.toml")]
        config: PathBuf,
        /// The administrator's bare JID (their group service logs in with it)
        #[arg(long)]
        admin: String,
        /// The group's name
        #[arg(long)]
        group: String,
        /// Seconds to wait for the decision
        #[arg(long, default_value_t = 600)]
        wait: u64,
    },
    /// Show the installed certificate
    Show {
        #[arg(short, long, default_value = "ringlet.toml")]
        config: PathBuf,
    },
}

/// Prints the node's id and public key (creating the key on first use).
pub fn id(config: &Config) -> anyhow::Result<()> {
    let (key, created) = NodeKey::load_or_create(&config.key_file)?;
    if created {
        eprintln!("created node key {}", config.key_file.display());
    }
    println!("node-id    {}", key.node_id());
    println!("node-key   {}", hex::encode(key.public_bytes()));
    println!("jid        {}", config.jid);
    Ok(())
}

pub fn run(op: GroupOp) -> anyhow::Result<()> {
    match op {
        GroupOp::Init { name, ca } => {
            let path = ca.unwrap_or_else(|| PathBuf::from(format!("{name}.ca.key")));
            let ca = admin::init(&name, &path)?;
            println!("group      {}", ca.group());
            println!("ca-key     {}", hex::encode(ca.public()));
            eprintln!(
                "CA key written to {} (keep it secret; it admits members)",
                path.display()
            );
        }
        GroupOp::Sign {
            ca,
            node_key,
            user,
            expires,
            out,
        } => {
            let ca_path = match ca {
                Some(p) => p,
                None => only_ca_key_here()?,
            };
            let ca = files::read_ca(&ca_path)?;
            let now = unix_now();
            let expires = admin::parse_expiry(&expires, now)?;
            let cert = admin::sign(&ca, &node_key, &user, expires, now)?;
            let text = files::cert_to_text(&cert);
            match out {
                Some(path) => {
                    files::replace_file(&path, &text)?;
                    eprintln!(
                        "certificate for {} (node {}) written to {}",
                        cert.user,
                        cert.node_id(),
                        path.display()
                    );
                }
                None => print!("{text}"),
            }
        }
        GroupOp::Join { config, cert } => {
            let config = Config::load(&config)?;
            let (key, _) = NodeKey::load_or_create(&config.key_file)?;
            let text =
                std::fs::read_to_string(&cert).with_context(|| format!("cannot read {}", cert.display()))?;
            let cert = admin::join(
                &text,
                &key.public_bytes(),
                &config.jid,
                &config.group_cert,
                unix_now(),
            )?;
            println!(
                "joined group '{}' as {} (certificate {:016x})",
                cert.group, cert.user, cert.serial
            );
        }
        GroupOp::Revoke {
            ca,
            user,
            serial,
            node_key,
            config,
        } => {
            let ca_path = match ca {
                Some(p) => p,
                None => only_ca_key_here()?,
            };
            let ca = files::read_ca(&ca_path)?;
            let target = revocation_target(user, serial, node_key)?;
            let rev = Revocation::sign(&ca, target, unix_now());
            if let Some(config) = config {
                publish(&Config::load(&config)?, &rev)?;
            }
            print!("{}", rev.to_line());
        }
        GroupOp::Serve { config, db, port } => super::groupd::serve(config, db, port)?,
        GroupOp::Request {
            config,
            admin,
            group,
            wait,
        } => super::groupd::request(&config, &admin, &group, wait)?,
        GroupOp::Show { config } => {
            let config = Config::load(&config)?;
            let cert = files::read_cert(&config.group_cert)
                .with_context(|| format!("no certificate installed at {}", config.group_cert.display()))?;
            println!("group      {}", cert.group);
            println!("ca-key     {}", hex::encode(cert.ca));
            println!("user       {}", cert.user);
            println!("node-id    {}", cert.node_id());
            println!("serial     {:016x}", cert.serial);
            let left = cert.expires.saturating_sub(unix_now()) / 86_400;
            println!("expires    in {left} days (unix {})", cert.expires);
        }
    }
    Ok(())
}

/// Hands a revocation to the node of `config` and says what became of it.
fn publish(config: &Config, rev: &Revocation) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    match runtime.block_on(groups::publish(config, rev))? {
        Published::ByNode { outcome } => {
            eprintln!("published by the running node ({outcome}); members close their links to it now");
        }
        Published::ToFile { added, revocations } => eprintln!(
            "no node running: {} {} (now {revocations} revocations); members learn it when the node next links to them",
            if added { "added to" } else { "already in" },
            config.group_crl.display(),
        ),
    }
    Ok(())
}

fn revocation_target(
    user: Option<String>,
    serial: Option<String>,
    node_key: Option<String>,
) -> anyhow::Result<Target> {
    Ok(match (user, serial, node_key) {
        (Some(user), None, None) => {
            let jid: ringlet_xmpp::BareJid = user
                .parse()
                .map_err(|_| anyhow::anyhow!("--user: '{user}' is not a bare JID"))?;
            anyhow::ensure!(jid.node().is_some(), "--user: '{user}' has no local part");
            Target::User(jid.to_string())
        }
        (None, Some(serial), None) => Target::Serial(
            u64::from_str_radix(serial.trim(), 16)
                .map_err(|_| anyhow::anyhow!("--serial: expected 16 hex digits, as `group show` prints"))?,
        ),
        (None, None, Some(key)) => {
            let mut k = [0u8; 32];
            hex::decode_to_slice(key.trim(), &mut k)
                .map_err(|_| anyhow::anyhow!("--node-key: expected 64 hex digits, as `ringlet id` prints"))?;
            Target::NodeKey(k)
        }
        _ => anyhow::bail!("name what to revoke: one of --user, --serial, --node-key"),
    })
}

fn only_ca_key_here() -> anyhow::Result<PathBuf> {
    let keys: Vec<PathBuf> = std::fs::read_dir(Path::new("."))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.to_string_lossy().ends_with(".ca.key"))
        .collect();
    match keys.as_slice() {
        [one] => Ok(one.clone()),
        [] => anyhow::bail!("no *.ca.key in this directory; pass --ca FILE"),
        _ => anyhow::bail!("several *.ca.key files here; pass --ca FILE"),
    }
}
