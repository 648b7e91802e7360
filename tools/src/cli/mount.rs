//! `bcsim mount`: recover a filesystem, print the recovery log, unmount cleanly.

use std::path::PathBuf;

use clap::Args;
use serde_json::json;

use bcsim::exit;
use bcsim::images::open_device_set;
use bcsim::recovery::progress::Progress;
use bcsim::recovery::{MountOpts, mount, parse_mount_opts};

use super::out::{self, outln};
use super::{CmdResult, print_json};

/// Mount (recover) a filesystem, print the recovery log, unmount cleanly
///
/// Reads the superblocks; after an unclean shutdown reads the journal of every device, sorts
/// its keys, runs the recovery passes and replays the journal; then writes everything back and
/// records a clean shutdown. The log lines follow bcachefs's dmesg output.
#[derive(Args)]
pub struct MountArgs {
    /// Mount options, e.g. degraded,fsck,errors=ro,behavior=v1.37.5
    #[arg(short = 'o', long = "options", value_name = "OPTS", default_value = "")]
    options: String,
    /// Print the log, what recovery found and repaired, and a summary as JSON
    #[arg(long)]
    json: bool,
    /// Image files of one filesystem
    #[arg(required = true, value_name = "IMAGE")]
    images: Vec<PathBuf>,
}

pub fn run(args: MountArgs) -> CmdResult {
    let failed_log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let mopts = MountOpts {
        progress: Progress::stderr(),
        failed_log: Some(failed_log.clone()),
        ..parse_mount_opts(&args.options)?
    };
    let set = open_device_set(&args.images, true)?;
    let mounted = match mount(set, &mopts) {
        Ok(m) => m,
        Err(e) => {
            // The log up to the failure, as dmesg shows it before the error.
            if let Ok(lines) = failed_log.lock() {
                out::lines(lines.iter());
            }
            return Err(e);
        }
    };
    let (log, replayed, read, kept) =
        (mounted.log.clone(), mounted.replayed, mounted.journal_keys_read, mounted.journal_keys_kept);
    let problems: Vec<_> = mounted
        .problems
        .iter()
        .map(|p| json!({ "id": p.err.id(), "name": p.err.name(), "message": p.msg, "fixed": p.fixed }))
        .collect();
    mounted.fs.unmount()?;
    if args.json {
        print_json(&json!({
            "log": log,
            "problems": problems,
            "replayed": replayed.map(|(a, b)| json!([a, b])),
            "journal_keys_read": read,
            "journal_keys_kept": kept,
            "clean_unmount": true,
        }));
    } else {
        out::lines(&log);
        outln!("clean shutdown complete");
    }
    Ok(exit::OK)
}
