//! `bcsim run`: run a seeded workload on a filesystem, then crash or unmount cleanly.

use std::path::PathBuf;

use clap::Args;
use serde_json::json;

use bcsim::exit;
use bcsim::recovery::parse_mount_opts;
use bcsim::workload::run_on_images;

use super::out::outln;
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
    let mopts = parse_mount_opts(&args.options)?;
    let r = run_on_images(&args.images, args.ops, args.seed, args.crash_after, &mopts)?;
    if args.json {
        print_json(&json!({
            "seed": args.seed, "dir": r.dir, "ops_run": r.ops_run, "last_fsync_after_op": r.last_fsync_after,
            "crashed": r.crashed, "unflushed_writes_lost": r.unflushed_writes_lost,
        }));
    } else if r.crashed {
        outln!(
            "ran {} of {} operations (seed {}) in {}, last fsync after operation {}; crashed: {} unflushed writes lost",
            r.ops_run,
            args.ops,
            args.seed,
            r.dir,
            r.last_fsync_after,
            r.unflushed_writes_lost
        );
    } else {
        outln!("ran {} operations (seed {}) in {}; unmounted cleanly", r.ops_run, args.seed, r.dir);
    }
    Ok(exit::OK)
}
