//! `ringlet group serve`: the group service (web pages, join requests) beside this node.

use std::path::PathBuf;

use anyhow::Context;
use ringlet::config::Config;
use ringlet::groups::{self, ServeOptions};

/// Serves until Ctrl-C or SIGTERM.
pub fn serve(config: PathBuf, db: Option<PathBuf>, port: u16) -> anyhow::Result<()> {
    let node = Config::load(&config)?;
    let db = db.unwrap_or_else(|| node.path.with_file_name("groups.db"));
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    runtime.block_on(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let mut sigterm = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
        let opts = ServeOptions {
            db: db.clone(),
            port,
            node: Some(node),
        };
        let started = groups::serve(opts, Box::new(ringlet::node::membership::unix_now)).await?;
        eprintln!(
            "group service on http://{}/ (database {})",
            started.local,
            db.display()
        );
        if let Some(secret) = &started.first_secret {
            eprintln!(
                "administrator login secret: {secret} (kept in {}; log in at /login)",
                started.secret_file.display()
            );
        }
        started
            .run_until(async {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = sigterm.recv() => {}
                }
            })
            .await;
        eprintln!("group service stopped");
        anyhow::Ok(())
    })
}

/// Asks `admin`'s group service to admit this node; exits once the certificate is installed.
pub fn request(config: &std::path::Path, admin: &str, group: &str, wait_s: u64) -> anyhow::Result<()> {
    let config = Config::load(config)?;
    let admin: ringlet_xmpp::BareJid = admin
        .parse()
        .map_err(|_| anyhow::anyhow!("--admin: '{admin}' is not a bare JID"))?;
    anyhow::ensure!(admin.node().is_some(), "--admin: '{admin}' has no local part");
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    let wait = std::time::Duration::from_secs(wait_s);
    let cert = runtime.block_on(groups::xmpp::request(&config, &admin, group, wait, |step| {
        eprintln!("{step}")
    }))?;
    println!(
        "joined group '{}' as {} (certificate {:016x}, installed at {}); start the node with `ringlet up`",
        cert.group,
        cert.user,
        cert.serial,
        config.group_cert.display()
    );
    Ok(())
}
