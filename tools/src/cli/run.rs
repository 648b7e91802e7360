//! `bcsim run`: run a seeded workload on a filesystem, then crash or unmount cleanly.

use std::path::PathBuf;
use std::sync::Arc;

use clap::Args;
use serde_json::json;

use bcsim::exit;
use bcsim::files::Files;
use bcsim::images::open_image;
use bcsim::recovery::{mount, parse_mount_opts};
use bcsim::workload::{Op, generate, run_op};
use fs_core::dev::{CrashMode, FaultyDevice, SharedDevice};
use fs_core::error::{ErrCode, Error};
use fs_core::sb::DeviceSet;

use super::{CmdResult, print_json};

/// Run a seeded file workload, then crash or unmount cleanly
///
/// Mounts (recovering if needed), then runs --ops operations generated from --seed: create
/// files and directories, write and overwrite 16 KiB chunks, truncate, unlink, rename, fsync.
/// With --crash-after K the run stops dead after K operations, as a power cut would: writes
/// that were not flushed never reach the images (each image sits behind a write cache that the
/// crash drops). Otherwise it unmounts cleanly.
#[derive(Args)]
pub struct RunArgs {
    /// Operations to run
    #[arg(long, value_name = "N", default_value_t = 1000)]
    ops: usize,
    /// Workload seed: the same seed gives the same operations
    #[arg(long, value_name = "S", default_value_t = 1)]
    seed: u64,
    /// Crash after K operations instead of unmounting
    #[arg(long, value_name = "K", conflicts_with = "clean")]
    crash_after: Option<usize>,
    /// Unmount cleanly at the end (the default)
    #[arg(long)]
    clean: bool,
    /// Mount options
    #[arg(short = 'o', long = "options", value_name = "OPTS", default_value = "")]
    options: String,
    /// Print a summary as JSON
    #[arg(long)]
    json: bool,
    /// Image files of one filesystem
    #[arg(required = true, value_name = "IMAGE")]
    images: Vec<PathBuf>,
}

pub fn run(args: RunArgs) -> CmdResult {
    if args.crash_after.is_some_and(|k| k > args.ops) {
        return Err(Error::new(ErrCode::InvalidArgument, "--crash-after is larger than --ops"));
    }
    let mopts = parse_mount_opts(&args.options)?;
    let caches: Vec<Arc<FaultyDevice>> = args
        .images
        .iter()
        .map(|p| open_image(p, true).map(|d| Arc::new(FaultyDevice::new(d, args.seed))))
        .collect::<Result<_, _>>()?;
    let set = DeviceSet::open(caches.iter().map(|c| c.clone() as SharedDevice).collect())?;
    for c in &caches {
        c.set_volatile_cache(true);
    }
    let mounted = mount(set, &mopts)?;
    let mut fs = mounted.fs;
    let mut files = Files::new(&mut fs)?;
    let ops = generate(args.seed, args.ops);
    let stop = args.crash_after.unwrap_or(args.ops);
    let mut fsynced = 0;
    for (i, op) in ops.iter().take(stop).enumerate() {
        run_op(&mut fs, &mut files, op)
            .map_err(|e| e.prefix(format_args!("operation {} ({op:?})", i + 1)))?;
        if *op == Op::Fsync {
            fsynced = i + 1;
        }
    }
    let crashed = args.crash_after.is_some();
    let mut lost = 0;
    if crashed {
        drop(files);
        drop(fs);
        for c in &caches {
            lost += c.crash(CrashMode::DropUnflushed)?.lost_writes;
        }
    } else {
        fs.unmount()?;
        for c in &caches {
            c.set_volatile_cache(false);
        }
    }
    if args.json {
        print_json(&json!({
            "seed": args.seed, "ops_run": stop, "last_fsync_after_op": fsynced,
            "crashed": crashed, "unflushed_writes_lost": lost,
        }));
    } else if crashed {
        println!(
            "ran {stop} of {} operations (seed {}), last fsync after operation {fsynced}; crashed: {lost} unflushed writes lost",
            args.ops, args.seed
        );
    } else {
        println!("ran {stop} operations (seed {}); unmounted cleanly", args.seed);
    }
    Ok(exit::OK)
}
