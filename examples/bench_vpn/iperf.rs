//! One iperf3 measurement between two lab peers: a one-off server (`iperf3 -s -1`) on the
//! receiving peer, the client (`-J`, JSON) on the sending peer, both bounded in time and owned
//! by guards. Around the run it samples what tells the systems apart: the CPU time of each
//! VPN daemon and the bytes the public host received (a relayed path shows up there).

use std::net::Ipv4Addr;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use ringlet_lab::{ChildGuard, Netns};
use serde_json::Value;

/// How long a run waits for the rest of the machine to be quiet (then it runs anyway and its
/// sample is marked).
pub const QUIET_WAIT_S: u32 = 600;

/// The port of every iperf3 server (and of the raw path's port forward).
pub const PORT: u16 = 5201;

/// What to run.
#[derive(Debug, Clone, Copy)]
pub enum Test {
    Tcp,
    /// UDP at this offered rate (Mbit/s), datagrams of `UDP_LEN` bytes.
    Udp(u32),
}

/// UDP payload per datagram: fits every system's MTU (ringlet 1299, n2n 1400, tinc 1500),
/// so no system fragments.
pub const UDP_LEN: u32 = 1200;

impl Test {
    pub fn label(&self) -> String {
        match self {
            Test::Tcp => "TCP".into(),
            Test::Udp(rate) => format!("UDP {rate}M"),
        }
    }
}

/// The outcome of one run.
#[derive(Debug, Clone)]
pub struct Sample {
    /// Received throughput, Mbit/s.
    pub mbps: f64,
    /// TCP retransmissions, or UDP loss in percent.
    pub loss: f64,
    /// Bytes the public host received during the run, per byte the receiver got.
    pub via_public: f64,
    /// CPU% of the whole machine in the second before the run (other users' load).
    pub background: f64,
    /// Packets dropped where a VPN can drop them, during the run.
    pub drops: Drops,
    /// CPU% of the whole machine (all cores: 200 % on two), kernel work included.
    pub machine: f64,
    /// CPU% (of one core) of each daemon named in the [`Daemons`] list, in order.
    pub cpu: Vec<f64>,
}

/// Processes whose CPU time is sampled: (label, PID).
pub type Daemons = Vec<(String, u32)>;

/// Where and how long to measure: the sender, the receiver and the public host of the lab.
pub struct Bench<'a> {
    pub client: &'a Netns,
    pub server: &'a Netns,
    pub public: &'a Netns,
    /// Seconds per run (after a one-second omitted warm-up).
    pub secs: u32,
    /// For iperf3's JSON output.
    pub dir: &'a Path,
    /// Before each run, wait (up to [`QUIET_WAIT_S`]) until the machine's CPU use from everything else is
    /// at most this (percent of all cores: 200 on two): the machine may be shared.
    pub quiet: f64,
}

impl Bench<'_> {
    /// Runs `test` from the client to `server_ip` (a one-off server is started on the
    /// receiver), sampling the CPU time of `daemons` and the drops of the sender's `device`.
    pub async fn measure(
        &self,
        server_ip: Ipv4Addr,
        device: &str,
        daemons: &Daemons,
        test: Test,
    ) -> anyhow::Result<Sample> {
        let Self {
            client,
            server,
            public,
            secs,
            dir,
            quiet,
        } = *self;
        let mut background = f64::INFINITY;
        for i in 0..QUIET_WAIT_S {
            background = machine_load(Duration::from_secs(1)).await;
            if background <= quiet {
                break;
            }
            if i % 60 == 0 {
                eprintln!("bench_vpn: the machine is busy ({background:.0}% CPU from others); waiting");
            }
        }
        let mut srv_cmd = server.command("iperf3");
        srv_cmd
            .args(["-s", "-1", "-p", &PORT.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let mut srv = ChildGuard::spawn("iperf3 server", &mut srv_cmd)?;
        wait_listening(server, &mut srv).await?;

        let out_path = dir.join("iperf3.json");
        let mut cmd = client.command("iperf3");
        cmd.args(["-c", &server_ip.to_string(), "-p", &PORT.to_string()])
            .args([
                "-t",
                &secs.to_string(),
                "-O",
                "1",
                "-J",
                "--connect-timeout",
                "3000",
            ]);
        if let Test::Udp(rate) = test {
            cmd.args(["-u", "-b", &format!("{rate}M"), "-l", &UDP_LEN.to_string()]);
        }
        cmd.stdin(Stdio::null())
            .stdout(std::fs::File::create(&out_path)?)
            .stderr(Stdio::null());
        let public_before = rx_bytes(public, "eth0")?;
        let cpu_before = cpu_ticks(daemons);
        let machine_before = machine_ticks();
        let drops_before = Drops::read(client, server, device);
        let started = Instant::now();
        let mut iperf = ChildGuard::spawn("iperf3 client", &mut cmd)?;
        let limit = Duration::from_secs(u64::from(secs) + 20);
        let status = loop {
            if let Some(status) = iperf.try_wait() {
                break status;
            }
            if started.elapsed() > limit {
                bail!(
                    "iperf3 {} to {server_ip} did not finish within {limit:?}",
                    test.label()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let wall = started.elapsed().as_secs_f64();
        let cpu_after = cpu_ticks(daemons);
        let machine_after = machine_ticks();
        let drops = Drops::read(client, server, device).since(&drops_before);
        let public_after = rx_bytes(public, "eth0")?;
        // The one-off server exits after its client; give it a moment, then the guard kills it.
        srv.wait_timeout(Duration::from_secs(2));

        let text = std::fs::read_to_string(&out_path)?;
        let json: Value = serde_json::from_str(&text)
            .with_context(|| format!("iperf3 output is not JSON ({status}): {text}"))?;
        if let Some(err) = json.get("error").and_then(Value::as_str) {
            bail!("iperf3 {} to {server_ip}: {err}", test.label());
        }
        let end = &json["end"];
        let (mbps, loss, bytes) = match test {
            Test::Tcp => {
                let r = &end["sum_received"];
                (
                    r["bits_per_second"].as_f64().context("no sum_received")? / 1e6,
                    end["sum_sent"]["retransmits"].as_f64().unwrap_or(0.0),
                    r["bytes"].as_f64().unwrap_or(0.0),
                )
            }
            Test::Udp(_) => {
                // What the server received, against what the client sent. (iperf3's own
                // `lost_percent` counts sequence gaps and exceeded 100 % here under overload.)
                let r = &end["sum_received"];
                let sent = end["sum_sent"]["bytes"].as_f64().context("no sum_sent")?;
                let got = r["bytes"].as_f64().context("no sum_received")?;
                (
                    r["bits_per_second"].as_f64().context("no sum_received")? / 1e6,
                    100.0 * (1.0 - got / sent.max(1.0)),
                    got,
                )
            }
        };
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
        let cpu = cpu_before
            .iter()
            .zip(&cpu_after)
            .map(|(a, b)| (b - a) as f64 / hz / wall * 100.0)
            .collect();
        let (busy, total) = (
            machine_after.0.saturating_sub(machine_before.0) as f64,
            machine_after.1.saturating_sub(machine_before.1) as f64,
        );
        Ok(Sample {
            background,
            drops,
            machine: busy / total.max(1.0) * 100.0 * cores(),
            mbps,
            loss,
            via_public: (public_after - public_before) as f64 / bytes.max(1.0),
            cpu,
        })
    }
}

/// Waits (≤ 5 s) until the iperf3 server listens.
async fn wait_listening(ns: &Netns, srv: &mut ChildGuard) -> anyhow::Result<()> {
    for _ in 0..100 {
        if let Some(status) = srv.try_wait() {
            bail!("iperf3 server exited at once: {status}");
        }
        let out = ns
            .command("ss")
            .args(["-Hltn", &format!("sport = :{PORT}")])
            .output()?;
        if !out.stdout.is_empty() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("the iperf3 server did not listen within 5 s")
}

/// Where packets got dropped: the sender's device queue (the daemon did not read its TUN/TAP
/// device fast enough: `tx_dropped` of the device) and the receiver's UDP socket buffers
/// (the receiving daemon did not read its socket fast enough: `RcvbufErrors`).
#[derive(Debug, Clone, Default)]
pub struct Drops {
    pub device: u64,
    pub rcvbuf: u64,
}

impl Drops {
    fn read(client: &Netns, server: &Netns, device: &str) -> Self {
        Self {
            device: link_stat(client, device, "tx", "dropped").unwrap_or(0),
            rcvbuf: snmp(server, "Udp:", "RcvbufErrors").unwrap_or(0),
        }
    }

    fn since(&self, before: &Self) -> Self {
        Self {
            device: self.device.saturating_sub(before.device),
            rcvbuf: self.rcvbuf.saturating_sub(before.rcvbuf),
        }
    }
}

/// A counter of /proc/net/snmp in `ns` (`table` e.g. "Udp:", `name` e.g. "RcvbufErrors").
fn snmp(ns: &Netns, table: &str, name: &str) -> Option<u64> {
    let out = ns.command("cat").arg("/proc/net/snmp").output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut rows = text.lines().filter(|l| l.starts_with(table));
    let (names, values) = (rows.next()?, rows.next()?);
    let at = names.split_whitespace().position(|n| n == name)?;
    values.split_whitespace().nth(at)?.parse().ok()
}

/// `ip -s` statistic `dir` ("rx"/"tx") `name` of `dev` in `ns`.
fn link_stat(ns: &Netns, dev: &str, dir: &str, name: &str) -> Option<u64> {
    let out = std::process::Command::new("ip")
        .args(["-n", ns.name(), "-s", "-j", "link", "show", "dev", dev])
        .output()
        .ok()?;
    let v: Value = serde_json::from_slice(&out.stdout).ok()?;
    v[0]["stats64"][dir][name].as_u64()
}

/// Received bytes of `dev` in `ns`.
pub fn rx_bytes(ns: &Netns, dev: &str) -> anyhow::Result<u64> {
    let out = std::process::Command::new("ip")
        .args(["-n", ns.name(), "-s", "-j", "link", "show", "dev", dev])
        .output()?;
    let v: Value = serde_json::from_slice(&out.stdout).context("ip -j link")?;
    v[0]["stats64"]["rx"]["bytes"]
        .as_u64()
        .with_context(|| format!("no rx bytes for {dev} in {}", ns.name()))
}

/// utime + stime (clock ticks) of each daemon; 0 for one that is gone.
fn cpu_ticks(daemons: &Daemons) -> Vec<u64> {
    daemons
        .iter()
        .map(|(_, pid)| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            // Fields after the parenthesised command name; utime and stime are 14 and 15.
            let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
            let f: Vec<u64> = rest
                .split_whitespace()
                .skip(11)
                .take(2)
                .filter_map(|x| x.parse().ok())
                .collect();
            f.iter().sum()
        })
        .collect()
}

/// (busy, total) jiffies of all CPUs together, from /proc/stat (busy = all but idle and
/// iowait).
fn machine_ticks() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let f: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let total: u64 = f.iter().take(8).sum();
    let idle = f.get(3).copied().unwrap_or(0) + f.get(4).copied().unwrap_or(0);
    (total - idle, total)
}

/// The machine's CPU use over `period`, in percent of all cores.
pub async fn machine_load(period: Duration) -> f64 {
    let before = machine_ticks();
    tokio::time::sleep(period).await;
    let after = machine_ticks();
    let busy = after.0.saturating_sub(before.0) as f64;
    let total = after.1.saturating_sub(before.1) as f64;
    busy / total.max(1.0) * 100.0 * cores()
}

fn cores() -> f64 {
    std::thread::available_parallelism().map_or(1.0, |n| n.get() as f64)
}

/// The MTU of `dev` in `ns`.
pub fn mtu(ns: &Netns, dev: &str) -> Option<u64> {
    let out = std::process::Command::new("ip")
        .args(["-n", ns.name(), "-j", "link", "show", "dev", dev])
        .output()
        .ok()?;
    let v: Value = serde_json::from_slice(&out.stdout).ok()?;
    v[0]["mtu"].as_u64()
}
