//! `ringlet-sim --nodes N --seed S --scenario NAME [--json]`: runs the real ring cores in the
//! deterministic simulator and prints a results table (or one JSON object).

use anyhow::{bail, Result};
use clap::Parser;
use ringlet::sim::{run, Options};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const SCENARIOS: &[&str] = &[
    "steady",
    "churn",
    "crash20",
    "partition-merge",
    "broadcast",
    "revocation",
];

#[derive(Parser)]
#[command(about = "Simulate a ringlet ring of N nodes on a virtual clock")]
struct Args {
    #[arg(long, default_value_t = 1000)]
    nodes: usize,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// steady, churn, crash20, partition-merge or broadcast
    #[arg(long, default_value = "steady")]
    scenario: String,
    /// Fraction of nodes behind symmetric NATs (they link to each other through tunnels).
    #[arg(long, default_value_t = 0.1)]
    symmetric: f64,
    /// Fraction of nodes with UDP blocked (leaves: XMPP relay links only, never routing).
    #[arg(long, default_value_t = 0.02)]
    leaves: f64,
    /// Message loss probability per link hop.
    #[arg(long, default_value_t = 0.0)]
    loss: f64,
    /// App messages and DHT gets to measure.
    #[arg(long, default_value_t = 2000)]
    samples: usize,
    /// DHT read quorum: answers that end a read once values are found (a majority always does).
    #[arg(long, default_value_t = 3)]
    dht_quorum: u8,
    /// DHT replica points per key (1–8); a get asks all of them at once.
    #[arg(long, default_value_t = ringlet::overlay::dht::Config::default().points)]
    dht_points: u8,
    /// Joins per second while the ring forms (at least a 30 s window).
    #[arg(long, default_value_t = 200)]
    join_rate: u32,
    /// Route without lookahead (links do not tell each other whom they link to).
    #[arg(long)]
    no_lookahead: bool,
    #[arg(long)]
    json: bool,
}

fn main() -> Result<()> {
    let args = Args::parse();
    if !SCENARIOS.contains(&args.scenario.as_str()) {
        bail!(
            "unknown scenario {:?}; one of {}",
            args.scenario,
            SCENARIOS.join(", ")
        );
    }
    if !(1..=8).contains(&args.dht_points) {
        bail!("--dht-points must be 1 to 8");
    }
    if args.join_rate == 0 {
        bail!("--join-rate must be at least 1");
    }
    if args.nodes < 2 {
        bail!("--nodes must be at least 2");
    }
    if !(0.0..=1.0).contains(&args.symmetric) || !(0.0..1.0).contains(&args.loss) {
        bail!("--symmetric must be in [0, 1] and --loss in [0, 1)");
    }
    if !(0.0..=1.0).contains(&args.leaves) || args.leaves + args.symmetric > 1.0 {
        bail!("--leaves must be in [0, 1] and --leaves + --symmetric at most 1");
    }
    let mut opts = Options::new(args.nodes, args.seed, &args.scenario);
    opts.symmetric = args.symmetric;
    opts.leaves = args.leaves;
    opts.loss = args.loss;
    opts.samples = args.samples;
    opts.dht_quorum = args.dht_quorum;
    opts.dht_points = args.dht_points;
    opts.lookahead = !args.no_lookahead;
    opts.join_window = Options::join_window(args.nodes, args.join_rate);
    let report = run(&opts);
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
        return Ok(());
    }
    let value = serde_json::to_value(&report)?;
    println!("{:<28} value", "metric");
    if let Some(map) = value.as_object() {
        for (k, v) in map {
            match v.as_object() {
                Some(inner) => {
                    for (ik, iv) in inner {
                        println!("{:<28} {iv}", format!("{k}.{ik}"));
                    }
                }
                None => println!("{k:<28} {v}"),
            }
        }
    }
    Ok(())
}
