//! `bcsim demo`: the main job on an embedded default.

use std::path::PathBuf;

use clap::Args;

use bcsim::fsck::{FixMode, FsckOpts, fsck};
use bcsim::images::{ImageSpec, format_images, open_device_set};
use bcsim::recovery::{MountOpts, mount};
use bcsim::repro::{eight_member_layout, eight_member_options};
use bcsim::workload::run_on_images;
use fs_core::error::{ErrCode, io_error};

use super::CmdResult;
use super::out::{self, out, outln};

/// Format, run, crash, recover, check; then bcachefs #1107 and #1108 in each profile
///
/// Formats six 1 TiB disks labelled hdd.* and two 256 GiB disks labelled ssd.*, with
/// metadata_replicas=2 on the ssd group as in bcachefs issues #1107 and #1108, as sparse image
/// files in a temporary directory; runs a seeded file workload and crashes it part way (only
/// flushed writes survive); mounts, which recovers from the journal; runs fsck; and prints the
/// recovery log and a summary. Then builds the #1107 and #1108 image sets (as `bcsim repro`,
/// #1108 scaled down 16 times) and mounts each in the v1.37.5, v1.39 and fixed profiles, one
/// verdict line per profile; v1.37.5's mount stuck on the allocator is stopped once it has
/// printed its stuck report (the kernel waits there for ever).
#[derive(Args)]
pub struct DemoArgs {
    /// Keep the images in this directory instead of a temporary one removed afterwards
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
}

pub fn run(args: DemoArgs) -> CmdResult {
    let (dir, temporary) = match args.dir {
        Some(d) => (d, false),
        None => (std::env::temp_dir().join(format!("bcsim-demo-{}", std::process::id())), true),
    };
    std::fs::create_dir_all(&dir).map_err(|e| {
        io_error(e, ErrCode::IoWrite, "cannot create demo directory").path(dir.display().to_string())
    })?;
    let result = run_in(&dir);
    if temporary {
        let _ = std::fs::remove_dir_all(&dir);
    }
    result
}

/// The demo workload: operations, seed, and where it crashes.
const OPS: usize = 3000;
const SEED: u64 = 1;
const CRASH_AFTER: usize = 2450;

fn run_in(dir: &std::path::Path) -> CmdResult {
    let specs: Vec<ImageSpec> = eight_member_layout()
        .into_iter()
        .map(|(name, size, label)| {
            let mut s = ImageSpec::new(dir.join(name));
            s.size = Some(size);
            s.label = label;
            s
        })
        .collect();
    let opts = eight_member_options()?;
    let report = format_images(&specs, &opts, None, true)?;
    outln!("bcsim demo: images in {}", dir.display());
    out!("{}", super::format::report_text(&report));
    let paths: Vec<PathBuf> = specs.iter().map(|s| s.path.clone()).collect();

    let run = run_on_images(&paths, OPS, SEED, Some(CRASH_AFTER), &MountOpts::default())?;
    outln!(
        "\nworkload: ran {} of {OPS} operations (seed {SEED}), last fsync after operation {}, then crashed ({} unflushed writes lost)",
        run.ops_run,
        run.last_fsync_after,
        run.unflushed_writes_lost
    );

    outln!("\nmount (recovery log):");
    let mounted = mount(open_device_set(&paths, true)?, &MountOpts::default())?;
    out::lines(mounted.log.iter().map(|line| format!("  {line}")));
    let replayed = mounted.replayed;
    let kept = mounted.journal_keys_kept;
    mounted.fs.unmount()?;

    outln!("\nfsck -fn:");
    let check = FsckOpts { mode: FixMode::No, force: true, mount: MountOpts::default() };
    let names = "hdd0..5.img nvme0..1.img";
    let fsck_report = fsck(open_device_set(&paths, false)?, &check)?;
    out!("{}", fsck_report.text(names, false));
    outln!(
        "\nsummary: crash after {} operations, fsynced through {}; recovery replayed journal entries {} ({kept} keys); fsck: {}",
        run.ops_run,
        run.last_fsync_after,
        replayed.map_or_else(|| "none".to_owned(), |(a, b)| format!("{a}-{b}")),
        if fsck_report.problems.is_empty() {
            "clean".to_owned()
        } else {
            format!("{} errors", fsck_report.problems.len())
        }
    );
    super::demo_issues::run(dir)?;
    Ok(fsck_report.exit_code())
}
