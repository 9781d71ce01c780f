//! The `ringlet` command line: `up` runs a node (in the foreground, or detached with
//! `--daemon`), `down` stops it, `status`, `ping`, `dht` and `netcheck` ask it, `config check`
//! and `group …` work on files.
//!
//! Exit codes: 0 success, 1 the node failed (login refused, server unreachable, …) or is not
//! running, 2 the configuration or the command line is wrong.

mod cli;

/// mimalloc: the VPN's data path allocates a buffer or two per packet, hundreds of thousands a
/// second, where glibc's allocator took ~10 % of the machine's CPU in profiles.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{ArgAction, Parser, Subcommand};
use ringlet::config::Config;
use ringlet::control;
use ringlet::node::status::Status;

#[derive(Parser)]
#[command(
    name = "ringlet",
    version,
    about = "A private P2P overlay built from XMPP accounts"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// More log output (-v debug, -vv trace)
    #[arg(short, long, global = true, action = ArgAction::Count)]
    verbose: u8,
    /// Only warnings and errors
    #[arg(short, long, global = true)]
    quiet: bool,
}

#[derive(Subcommand)]
enum Command {
    /// Run a node: in the foreground until SIGINT, SIGTERM or `ringlet down`, or detached.
    /// Several `-c` run several overlays in this process, sharing one UDP socket
    Up {
        #[arg(short, long, default_value = "ringlet.toml")]
        config: Vec<PathBuf>,
        /// Run in the background (output to a log file beside the control socket); return
        /// once the node is online
        #[arg(long)]
        daemon: bool,
        /// Where to write the node's PID [default: beside the control socket, `.pid`]
        #[arg(long)]
        pid_file: Option<PathBuf>,
    },
    /// Stop the running node (it leaves the overlay first)
    Down {
        #[arg(short, long, default_value = "ringlet.toml")]
        config: PathBuf,
    },
    /// Show the STUN services, reflexive addresses and NAT behaviour, and what they mean
    Netcheck {
        #[arg(short, long, default_value = "ringlet.toml")]
        config: PathBuf,
    },
    /// Check the configuration, node key and group certificate without starting
    Config {
        #[command(subcommand)]
        op: ConfigOp,
    },
    /// Ping a member over the overlay (its current path: direct UDP or the XMPP relay)
    Ping {
        #[arg(short, long, default_value = "ringlet.toml")]
        config: PathBuf,
        /// The member: its NodeId (40 hex digits), its VPN IPv4 address, or its JID
        node: String,
        /// How many pings
        #[arg(short = 'n', long, default_value_t = 3)]
        count: u32,
    },
    /// Store, look up or remove values in the ring's DHT (through the running node)
    Dht {
        #[arg(short, long, default_value = "ringlet.toml")]
        config: PathBuf,
        #[command(subcommand)]
        op: DhtOp,
    },
    /// Print this node's id and public key (what `group sign --node-key` takes)
    Id {
        #[arg(short, long, default_value = "ringlet.toml")]
        config: PathBuf,
    },
    /// Group certificates: create a group, admit members, install a certificate
    Group {
        #[command(subcommand)]
        op: cli::group::GroupOp,
    },
    /// Show the status of the running node
    Status {
        #[arg(short, long, default_value = "ringlet.toml")]
        config: PathBuf,
        /// Print JSON instead of a table
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum ConfigOp {
    /// Everything `up` would refuse: the file, the key, the certificate, the VPN's needs
    Check {
        #[arg(short, long, default_value = "ringlet.toml")]
        config: PathBuf,
    },
}

#[derive(Subcommand)]
enum DhtOp {
    /// Store VALUE (UTF-8, at most 1 KiB) under KEY; the node keeps it alive while it runs
    Put {
        key: String,
        value: String,
        /// Seconds the value lives unless renewed
        #[arg(long, default_value_t = ringlet::node::dht::DEFAULT_LEASE_S)]
        lease: u32,
    },
    /// Print every value stored under KEY, one per line
    Get { key: String },
    /// Remove VALUE from KEY
    Remove { key: String, value: String },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.verbose, cli.quiet);
    let config_path = match &cli.command {
        Command::Group { .. } => None,
        Command::Up { config, .. } => config.first().cloned(),
        Command::Down { config }
        | Command::Netcheck { config }
        | Command::Config {
            op: ConfigOp::Check { config },
        }
        | Command::Id { config }
        | Command::Status { config, .. }
        | Command::Ping { config, .. }
        | Command::Dht { config, .. } => Some(config.clone()),
    };
    let Some(config_path) = config_path else {
        let Command::Group { op } = cli.command else {
            unreachable!("only group commands run without a config")
        };
        return exit_with(cli::group::run(op));
    };
    let config = match Config::load(&config_path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    // `up` may name more overlays to run beside the first, in one process.
    let mut up_configs = vec![config.clone()];
    if let Command::Up { config: paths, .. } = &cli.command {
        for path in &paths[1..] {
            match Config::load(path) {
                Ok(c) => up_configs.push(c),
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(2);
                }
            }
        }
        if let Err(e) = cli::up::check_together(&up_configs) {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    }
    match &cli.command {
        Command::Id { .. } => return exit_with(cli::group::id(&config)),
        Command::Config { .. } => {
            return match cli::check::run(&config) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::from(2)
                }
            }
        }
        _ => {}
    }
    let mut flags: Vec<&str> = vec!["-v"; cli.verbose.into()];
    if cli.quiet {
        flags.push("--quiet");
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Up { daemon: true, .. } => cli::daemon::start(&up_configs, &flags).await,
            Command::Up { pid_file, .. } => cli::up::run(up_configs, pid_file).await,
            Command::Down { .. } => cli::daemon::stop(&config).await,
            Command::Netcheck { .. } => cli::netcheck::run(&config).await,
            Command::Status { json, .. } => status(config, json).await,
            Command::Ping { node, count, .. } => ping(config, &node, count).await,
            Command::Dht { op, .. } => dht(config, op).await,
            Command::Id { .. } | Command::Group { .. } | Command::Config { .. } => {
                unreachable!("handled without a runtime")
            }
        }
    });
    exit_with(result)
}

fn exit_with(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // The chain, leaving out causes a message already quotes.
            let mut msg = e.to_string();
            for cause in e.chain().skip(1) {
                let c = cause.to_string();
                if !msg.contains(&c) {
                    msg = format!("{msg}: {c}");
                }
            }
            eprintln!("error: {msg}");
            ExitCode::from(1)
        }
    }
}

fn init_logging(verbose: u8, quiet: bool) {
    let level = match (quiet, verbose) {
        (true, _) => "warn",
        (false, 0) => "info",
        (false, 1) => "debug",
        (false, _) => "trace",
    };
    let default = format!("ringlet={level},ringlet_xmpp={level},warn");
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .init();
}

/// The NodeId of the member `who` names: a NodeId as is, else a VPN address or a (bare or
/// full) JID looked up in the running node's status.
async fn resolve_member(config: &Config, who: &str) -> anyhow::Result<String> {
    if who.parse::<ringlet::NodeId>().is_ok() {
        return Ok(who.to_owned());
    }
    let by_ip = who.parse::<std::net::Ipv4Addr>().is_ok();
    anyhow::ensure!(
        by_ip || who.contains('@'),
        "{who:?} is neither a NodeId (40 hex digits), a VPN IPv4 address nor a JID"
    );
    let v = control::request(&config.control_socket, "status").await?;
    let status: Status = serde_json::from_value(v).context("unexpected status answer")?;
    let found = status.peers.iter().find(|p| {
        if by_ip {
            p.vpn_address.as_deref() == Some(who)
        } else {
            p.jid == who || p.jid.split('/').next() == Some(who)
        }
    });
    match found {
        Some(p) => Ok(p.node_id.clone()),
        None if by_ip && status.vpn.is_none() => {
            anyhow::bail!("the VPN is off on this node: no member has a VPN address")
        }
        None if by_ip => anyhow::bail!("no online member holds VPN address {who} (see `ringlet status`)"),
        None => anyhow::bail!("no online member with JID {who} (see `ringlet status`)"),
    }
}

async fn ping(config: Config, who: &str, count: u32) -> anyhow::Result<()> {
    let node = &resolve_member(&config, who).await?;
    let mut answered = 0;
    for i in 0..count.max(1) {
        if i > 0 {
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
        match control::request_for(&config.control_socket, "ping", Some(node)).await {
            Ok(v) => {
                let r: ringlet::node::PingReply =
                    serde_json::from_value(v).context("unexpected ping answer")?;
                answered += 1;
                println!(
                    "reply from {} via {} {}: {:.2} ms",
                    &r.node_id[..12],
                    r.path,
                    r.remote,
                    r.rtt_ms
                );
            }
            Err(control::ControlError::Refused(why)) => println!("no reply: {why}"),
            Err(e) => return Err(e.into()),
        }
    }
    anyhow::ensure!(answered > 0, "no answer from {node}");
    Ok(())
}

async fn dht(config: Config, op: DhtOp) -> anyhow::Result<()> {
    let (cmd, args) = match op {
        DhtOp::Put { key, value, lease } => (
            "dht-put",
            control::Args {
                key: Some(key),
                value: Some(value),
                lease_s: Some(lease),
                ..Default::default()
            },
        ),
        DhtOp::Get { key } => (
            "dht-get",
            control::Args {
                key: Some(key),
                ..Default::default()
            },
        ),
        DhtOp::Remove { key, value } => (
            "dht-remove",
            control::Args {
                key: Some(key),
                value: Some(value),
                ..Default::default()
            },
        ),
    };
    let result = control::request_with(&config.control_socket, cmd, args).await?;
    if cmd == "dht-get" {
        let values = result["values"].as_array().context("unexpected DHT answer")?;
        for v in values {
            println!("{}", v.as_str().unwrap_or_default());
        }
        if values.is_empty() {
            eprintln!("(no values)");
        }
    }
    Ok(())
}

async fn status(config: Config, json: bool) -> anyhow::Result<()> {
    let value = control::request(&config.control_socket, "status").await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&value)?);
        return Ok(());
    }
    let status: Status = serde_json::from_value(value).context("unexpected status format")?;
    print!("{}", render(&status));
    Ok(())
}

fn render(s: &Status) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(out, "node      {}", s.node_id);
    let _ = writeln!(out, "jid       {}", s.jid.as_deref().unwrap_or("-"));
    let _ = writeln!(
        out,
        "overlay   {} ({}, up {:.0} s)",
        s.overlay, s.state, s.uptime_s
    );
    if let Some(nat) = s.nat.clone() {
        let nat: ringlet::reach::nat::NatInfo = serde_json::from_value(nat).unwrap_or_default();
        let reflexive = match s.reflexive.is_empty() {
            true => String::new(),
            false => format!(" (reflexive {})", s.reflexive.join(" ")),
        };
        let _ = writeln!(out, "nat       {}{reflexive}", nat.label());
    }
    for svc in &s.services {
        let _ = writeln!(out, "service   {}", svc.describe());
    }
    let short = |id: &Option<String>| {
        id.as_deref()
            .map_or("-".to_owned(), |i| i[..12.min(i.len())].to_owned())
    };
    let agreed = match s.ring.consistent {
        Some(true) => ", neighbours agree",
        Some(false) => ", neighbours do not agree yet",
        None => "",
    };
    let leaf = match (s.ring.links, s.ring.leaf_links) {
        (_, 0) => String::new(),
        (0, n) => format!(", a leaf: {n} relay links"),
        (_, n) => format!(", {n} leaves"),
    };
    let _ = writeln!(
        out,
        "ring      left {}  right {}  ({} links, ~{} nodes{agreed}{leaf})",
        short(&s.ring.left),
        short(&s.ring.right),
        s.ring.links,
        s.ring.size_estimate.map_or("?".to_owned(), |n| n.to_string()),
    );
    if let Some(vpn) = &s.vpn {
        let _ = writeln!(
            out,
            "vpn       {} {} {} (mtu {})",
            vpn.device, vpn.address, vpn.address6, vpn.mtu
        );
    }
    let _ = writeln!(out, "peers     {}", s.peers.len());
    if !s.peers.is_empty() {
        let w = s.peers.iter().map(|p| p.jid.len()).max().unwrap_or(3).max(3);
        let _ = writeln!(
            out,
            "  {:<12}  {:<w$}  {:<15}  {:<6}  {:>9}  {:<9}  {:>17}  {:>7}",
            "NODE", "JID", "VPN", "PATH", "RTT", "NAT", "BYTES IN/OUT", "SINCE"
        );
        for p in &s.peers {
            let rtt = p
                .rtt_ms
                .map(|r| format!("{r:.1} ms"))
                .unwrap_or_else(|| "-".into());
            let node = &p.node_id[..12.min(p.node_id.len())];
            let via = p
                .via
                .as_deref()
                .map(|v| format!("  via {}", &v[..12.min(v.len())]))
                .unwrap_or_default();
            let bytes = format!("{}/{}", human_bytes(p.bytes_in), human_bytes(p.bytes_out));
            let _ = writeln!(
                out,
                "  {node:<12}  {:<w$}  {:<15}  {:<6}  {rtt:>9}  {:<9}  {bytes:>17}  {:>5.0} s{via}",
                p.jid,
                p.vpn_address.as_deref().unwrap_or("-"),
                p.path,
                p.nat.as_deref().unwrap_or("-"),
                p.since_s
            );
        }
    }
    out
}

/// `1.5 MB`-style sizes for the status table.
fn human_bytes(n: u64) -> String {
    match n {
        0..1_000 => format!("{n} B"),
        1_000..1_000_000 => format!("{:.1} kB", n as f64 / 1e3),
        1_000_000..1_000_000_000 => format!("{:.1} MB", n as f64 / 1e6),
        _ => format!("{:.1} GB", n as f64 / 1e9),
    }
}
