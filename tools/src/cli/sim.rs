//! `bcsim sim`: the seeded fault swarm, and the merge of its shards.

use std::path::PathBuf;
use std::time::Instant;

use clap::Args;

use bcsim::exit;
use bcsim::sim::{Shard, SimReport, run_seeds, shard_seeds};
use fs_core::error::{ErrCode, Error, io_error};

use super::out::outln;
use super::{CmdResult, print_json};

/// Run the seeded fault swarm, or merge the results of its shards
///
/// Each seed draws a filesystem of 1 to 4 in-memory devices (replica counts, behaviour profile)
/// and a file workload with fsyncs, and runs it in rounds that end in a crash: unflushed writes
/// land, tear or vanish; some rounds see write errors (and in half of those, read errors from
/// the mount on), run-time option changes, a power cut in the middle of an operation, or bits
/// of stored data flipping, or a bad sector (reads of 4 KiB failing until a write covers
/// them), and where every replica has another a device may stop answering, or die for writes
/// in the middle of a round and be taken out at the crash, and come back later as it was when
/// it went (the filesystem runs degraded while it is away). Odd seeds write btree nodes back
/// every 64 keys of a journal replay, as a recovery of millions of keys does every million.
/// After each crash the filesystem
/// must mount, hold every fsynced operation, match its allocator to its btrees, and check
/// clean after fsck -y repairs injected damage; damage may fail a mount or a read only with an
/// error. Panics and seeds past their budget are failures. Each failure prints
/// `bcsim sim --seeds S..S`, which replays it exactly.
///
/// To spread a campaign over machines, give each the same --seeds and its own --shard I/N
/// with --out, then `bcsim sim --merge results/*.json`; docs/CAMPAIGNS.md has examples for
/// Slurm, Kubernetes and GNU parallel.
///
/// Exit status: 0 when every seed passed, 4 when some failed, 8 on an error of the run itself.
#[derive(Args)]
pub struct SimArgs {
    /// Seeds to run, inclusive: A..B (or one seed, S)
    #[arg(long, value_name = "A..B", required_unless_present = "merge", value_parser = parse_seeds)]
    seeds: Option<(u64, u64)>,
    /// Run only the seeds whose offset in the range is I modulo N
    #[arg(long, value_name = "I/N", conflicts_with = "merge")]
    shard: Option<String>,
    /// Worker threads
    #[arg(long, value_name = "T", default_value_t = 2)]
    threads: usize,
    /// Print the report as JSON (with every seed's result)
    #[arg(long)]
    json: bool,
    /// Also write the JSON report to FILE (what --merge reads)
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
    /// Merge these JSON reports (of shards of one campaign) instead of running seeds
    #[arg(long, value_name = "FILE", num_args = 1.., conflicts_with = "seeds")]
    merge: Vec<PathBuf>,
}

fn parse_seeds(s: &str) -> Result<(u64, u64), String> {
    let bad = || format!("'{s}' is not a seed range: expected A..B (inclusive) or one seed");
    let (a, b) = s.split_once("..").unwrap_or((s, s));
    let (a, b) = (a.parse::<u64>().map_err(|_| bad())?, b.parse::<u64>().map_err(|_| bad())?);
    if a > b || b == u64::MAX {
        return Err(bad());
    }
    Ok((a, b))
}

pub fn run(args: SimArgs) -> CmdResult {
    let started = Instant::now();
    let report = if args.merge.is_empty() {
        let (a, b) =
            args.seeds.ok_or_else(|| Error::new(ErrCode::InvalidArgument, "--seeds A..B is required"))?;
        let shard = args.shard.as_deref().map(str::parse::<Shard>).transpose()?;
        let seeds = shard_seeds(a..b + 1, shard);
        let last = std::sync::Mutex::new(Instant::now());
        let results = run_seeds(&seeds, args.threads, &|done, total| {
            let Ok(mut last) = last.lock() else { return };
            if last.elapsed().as_secs() >= 10 {
                *last = Instant::now();
                eprintln!("sim: {}%, done {done}/{total} seeds", done * 100 / total.max(1));
            }
        });
        SimReport { results }
    } else {
        let parts = args
            .merge
            .iter()
            .map(|p| {
                let text = std::fs::read_to_string(p).map_err(|e| {
                    io_error(e, ErrCode::IoRead, "cannot read sim report").path(p.display().to_string())
                })?;
                let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| {
                    Error::new(ErrCode::InvalidArgument, format!("not a sim report: {e}"))
                        .path(p.display().to_string())
                })?;
                SimReport::from_json(&v).map_err(|e| e.path(p.display().to_string()))
            })
            .collect::<Result<Vec<_>, Error>>()?;
        SimReport::merge(parts)?
    };
    let secs = started.elapsed().as_secs_f64();
    let json = report.to_json();
    if let Some(out) = &args.out {
        std::fs::write(out, format!("{json}\n")).map_err(|e| {
            io_error(e, ErrCode::IoWrite, "cannot write sim report").path(out.display().to_string())
        })?;
    }
    if args.json {
        print_json(&json);
    } else {
        let failed = report.failures().count();
        let n = report.results.len();
        if args.merge.is_empty() {
            outln!(
                "sim: {n} seeds in {secs:.2}s ({:.1} seeds/s, {} threads): {} crashes ({} power cuts), {} EIO rounds ({} with reads), {} operations, {} bits flipped, {} bad sectors, {} devices vanished ({} came back), {} died for writes, {} damage reports",
                n as f64 / secs.max(1e-9),
                args.threads,
                report.total(|r| r.crashes),
                report.total(|r| r.power_cuts),
                report.total(|r| r.eio_rounds),
                report.total(|r| r.read_eio_rounds),
                report.total(|r| r.ops_run),
                report.total(|r| r.bits_flipped),
                report.total(|r| r.bad_sectors),
                report.total(|r| r.vanished),
                report.total(|r| r.returned),
                report.total(|r| r.write_dead),
                report.total(|r| r.reported)
            );
        } else {
            outln!("sim: merged {} reports: {n} seeds", args.merge.len());
        }
        for r in report.failures() {
            outln!(
                "FAILED seed {} ({} devices, {} profile): {}\n  replay: bcsim sim --seeds {}..{}",
                r.seed,
                r.devices,
                r.profile,
                r.failure.as_deref().unwrap_or(""),
                r.seed,
                r.seed
            );
        }
        outln!("failures: {failed}");
    }
    Ok(if report.failures().next().is_none() { exit::OK } else { exit::ERRORS_UNCORRECTED })
}
