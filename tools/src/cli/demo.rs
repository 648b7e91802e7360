//! `bcsim demo`: the main job on an embedded default.

use std::path::PathBuf;

use clap::Args;

use bcsim::exit;
use bcsim::images::{ImageSpec, format_images, read_image_super};
use bcsim::report::{Field, SuperReport};
use fs_core::error::{ErrCode, Error, io_error};
use fs_core::opts::{OptId, Options};

use super::CmdResult;

/// Format the default 8-device set and show it (the main job)
///
/// Formats six 1 TiB disks labelled hdd.* and two 256 GiB disks labelled ssd.*, with
/// metadata_replicas=2 on the ssd group as in bcachefs issues #1107 and #1108, as sparse image
/// files in a temporary directory, and shows the superblock of the first ssd.
#[derive(Args)]
pub struct DemoArgs {
    /// Keep the images in this directory instead of a temporary one removed afterwards
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
}

const TIB: u64 = 1 << 40;
const GIB: u64 = 1 << 30;

/// The default set: (file name, size, label).
fn default_set() -> Vec<(String, u64, String)> {
    let hdds = (0..6).map(|i| (format!("hdd{i}.img"), TIB, format!("hdd.hdd{i}")));
    let ssds = (0..2).map(|i| (format!("nvme{i}.img"), 256 * GIB, format!("ssd.nvme{i}")));
    hdds.chain(ssds).collect()
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

fn run_in(dir: &std::path::Path) -> CmdResult {
    let specs: Vec<ImageSpec> = default_set()
        .into_iter()
        .map(|(name, size, label)| {
            let mut s = ImageSpec::new(dir.join(name));
            s.size = Some(size);
            s.label = label;
            s
        })
        .collect();
    let mut opts = Options::default();
    opts.set_text(OptId::MetadataReplicas, "2")?;
    opts.set_text(OptId::MetadataTarget, "ssd")?;
    let report = format_images(&specs, &opts, None, true)?;
    println!("bcsim demo: images in {}", dir.display());
    print!("{}", super::format::report_text(&report));
    let first_ssd = specs
        .iter()
        .find(|s| s.label.starts_with("ssd"))
        .ok_or_else(|| Error::new(ErrCode::InvalidArgument, "default set has no ssd"))?;
    let read = read_image_super(&first_ssd.path)?;
    let name = first_ssd.path.display().to_string();
    let sr = SuperReport { device: &name, sb: &read.sb, copy_offset: read.offset, damaged: &read.damaged };
    println!();
    print!("{}", sr.text(&[Field::Options, Field::Journal, Field::Clean, Field::Errors]));
    Ok(exit::OK)
}
