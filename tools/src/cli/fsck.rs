//! `bcsim fsck`: check and repair, with fsck(8) flags and exit codes.

use std::path::PathBuf;

use clap::Args;
use serde_json::json;

use bcsim::fsck::{FixMode, FsckOpts, fsck};
use bcsim::images::open_device_set;
use bcsim::recovery::progress::Progress;
use bcsim::recovery::{MountOpts, parse_mount_opts};

use super::out::out;
use super::{CmdResult, print_json};

/// Check a filesystem and repair it
///
/// Runs recovery (journal replay) and the fsck passes: btree topology and node validation,
/// alloc keys against extent and btree pointers, freespace/need_discard against alloc keys,
/// dirents pointing at missing inodes, inode link counts.
///
/// -n checks without writing anything (the journal is replayed in memory only); -y fixes every
/// error it can; -p fixes only what is safe without asking. Without -n/-y/-p, -n is assumed.
///
/// Exit codes (fsck(8)): 0 no errors, 1 errors corrected, 4 errors left uncorrected,
/// 8 operational error, 16 usage error.
#[derive(Args)]
#[command(group = clap::ArgGroup::new("mode").args(["no", "yes", "preen"]))]
pub struct FsckArgs {
    /// Check only; write nothing
    #[arg(short = 'n')]
    no: bool,
    /// Fix every error that can be fixed
    #[arg(short = 'y')]
    yes: bool,
    /// Preen: fix only errors that are safe to fix automatically
    #[arg(short = 'p', short_alias = 'a')]
    preen: bool,
    /// Check even a cleanly unmounted filesystem fully
    #[arg(short = 'f')]
    force: bool,
    /// Print the recovery log and each pass
    #[arg(short = 'v')]
    verbose: bool,
    /// Mount options, e.g. degraded
    #[arg(short = 'o', long = "options", value_name = "OPTS", default_value = "")]
    options: String,
    /// Print the result as JSON
    #[arg(long)]
    json: bool,
    /// Image files of one filesystem
    #[arg(required = true, value_name = "IMAGE")]
    images: Vec<PathBuf>,
}

pub fn run(args: FsckArgs) -> CmdResult {
    let mode = if args.yes {
        FixMode::Yes
    } else if args.preen {
        FixMode::Preen
    } else {
        FixMode::No
    };
    let o = FsckOpts {
        mode,
        force: args.force,
        mount: MountOpts { progress: Progress::stderr(), ..parse_mount_opts(&args.options)? },
    };
    let set = open_device_set(&args.images, mode != FixMode::No)?;
    if mode == FixMode::No {
        if bcsim::control::is_mounted(set.sb.uuid) {
            eprintln!(
                "bcsim: warning: filesystem {} is mounted: fsck -n reads what is on disk, which the mount may be changing",
                set.sb.uuid
            );
        }
    } else {
        bcsim::control::refuse_if_mounted(set.sb.uuid, "fsck with repairs")?;
    }
    let report = fsck(set, &o)?;
    let code = report.exit_code();
    if args.json {
        print_json(&json!({
            "exit_code": code,
            "checked": report.checked,
            "problems": report.problems.iter().map(|p| json!({
                "id": p.err.id(), "name": p.err.name(), "message": p.msg, "fixed": p.fixed,
            })).collect::<Vec<_>>(),
            "log": report.log,
        }));
        return Ok(code);
    }
    let names: Vec<String> = args.images.iter().map(|p| p.display().to_string()).collect();
    out!("{}", report.text(&names.join(" "), args.verbose));
    Ok(code)
}
