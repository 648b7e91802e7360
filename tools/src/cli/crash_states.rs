//! `bcsim crash-states`: enumerate and check the crash states of a seeded workload.

use std::path::PathBuf;

use clap::Args;
use serde_json::json;

use bcsim::crash_states::{CrashOpts, StateId, dump_state, run};
use bcsim::exit;
use bcsim::recovery::progress::{Meter, Progress};
use fs_core::size::parse_size;

use super::out::outln;
use super::{CmdResult, print_json};

/// Check every state a crash could leave a seeded workload in
///
/// Runs a seeded file workload (with fsyncs) on in-memory devices, records every write and
/// flush, and enumerates the states a crash could leave: each write boundary; at the end of each
/// flush epoch, up to --reorder of the writes no flush has covered yet missing (or landed out of
/// order); and each write torn in half. Every state must pass fsck -n, mount without repair,
/// hold the operations up to some point that includes every returned fsync, and pass fsck -n
/// again after unmount. Each failure prints the command that checks that one state again.
///
/// Exit status: 0 when every state passed, 4 when some failed, 8 on an error of the run itself.
#[derive(Args)]
pub struct CrashStatesArgs {
    /// Seed of the workload, the filesystem uuid and the sampled reorderings
    #[arg(long, value_name = "S", default_value_t = 1)]
    seed: u64,
    /// Operations of the workload
    #[arg(long, value_name = "N", default_value_t = 200)]
    ops: usize,
    /// In-memory devices (metadata_replicas=2 when more than one)
    #[arg(long, value_name = "D", default_value_t = 4)]
    devices: usize,
    /// Unflushed writes that may be missing at once at an epoch's end (0: boundaries and torn
    /// writes only)
    #[arg(long, value_name = "K", default_value_t = 1)]
    reorder: usize,
    /// Size of each device
    #[arg(long, value_name = "SIZE", default_value = "32M", value_parser = parse_size_arg)]
    dev_size: u64,
    /// Check only the first N states of the enumeration
    #[arg(long, value_name = "N")]
    limit: Option<usize>,
    /// Check only this state (an id a failure printed: p<k>, t<k> or d<k>-<i>.<j>...)
    #[arg(long, value_name = "ID")]
    state: Option<String>,
    /// Write the images of the first failing state (or of --state) into DIR as mem<N>.img
    #[arg(long, value_name = "DIR")]
    dump: Option<PathBuf>,
    /// Print the result as JSON
    #[arg(long)]
    json: bool,
}

fn parse_size_arg(s: &str) -> Result<u64, String> {
    parse_size(s).map_err(|e| e.to_string())
}

pub fn run_cmd(args: CrashStatesArgs) -> CmdResult {
    let only = args.state.as_deref().map(str::parse::<StateId>).transpose()?;
    let o = CrashOpts {
        seed: args.seed,
        ops: args.ops,
        devices: args.devices,
        reorder: args.reorder,
        dev_bytes: args.dev_size,
        limit: args.limit,
        only: only.clone(),
    };
    let mut meter = Meter::new(Progress::stderr(), "crash-states", "states");
    let mut sink = Vec::new();
    let (rec, report) = run(&o, &mut |done, total| meter.tick(done, total, &mut sink))?;
    meter.finish();
    let dumped = match (&args.dump, only.as_ref().or(report.failures.first().map(|f| &f.state))) {
        (Some(dir), Some(id)) => Some((id.clone(), dump_state(&rec, id, dir)?)),
        _ => None,
    };
    if args.json {
        let failures: Vec<_> = report
            .failures
            .iter()
            .map(|f| json!({"state": f.state.to_string(), "kind": f.state.kind(), "what": f.what, "replay": f.replay}))
            .collect();
        print_json(&json!({
            "seed": o.seed, "ops": o.ops, "devices": o.devices, "reorder": o.reorder,
            "writes": report.writes, "flushes": report.flushes,
            "checked": report.checked, "prefix": report.prefix, "dropped": report.dropped, "torn": report.torn,
            "record_secs": report.record_secs, "check_secs": report.check_secs,
            "states_per_sec": report.states_per_sec(),
            "failures": failures,
            "dumped": dumped.as_ref().map(|(id, paths)| json!({
                "state": id.to_string(),
                "images": paths.iter().map(|p| p.display().to_string()).collect::<Vec<_>>(),
            })),
        }));
    } else {
        outln!(
            "crash-states: seed {}, {} operations on {} devices: {} writes and {} flushes recorded in {:.2}s",
            o.seed,
            o.ops,
            o.devices,
            report.writes,
            report.flushes,
            report.record_secs
        );
        outln!(
            "checked {} states ({} write boundaries, {} with up to {} unflushed writes missing, {} torn writes) in {:.2}s, {:.0} states/s",
            report.checked,
            report.prefix,
            report.dropped,
            o.reorder,
            report.torn,
            report.check_secs,
            report.states_per_sec()
        );
        for f in &report.failures {
            outln!("FAILED {} ({}): {}\n  replay: {}", f.state, f.state.kind(), f.what, f.replay);
        }
        if let Some((id, paths)) = &dumped {
            let names: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
            outln!("state {id} written to {}", names.join(" "));
        }
        outln!("failures: {}", report.failures.len());
    }
    Ok(if report.failures.is_empty() { exit::OK } else { exit::ERRORS_UNCORRECTED })
}
