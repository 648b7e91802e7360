//! `bcsim dump` and `bcsim undump`: an image set's metadata in one file, and back.

use std::path::PathBuf;

use clap::Args;

use bcsim::dump::{Keep, dump, undump};
use bcsim::exit;

use super::CmdResult;
use super::out::outln;

/// Write the metadata of an image set into one compressed file, to share it
///
/// Keeps the superblock copies, the journal buckets and every btree node found (reachable or
/// not) of each image given; file data is left out and reads back as zeros after `undump`.
/// With --live-only, only what a mount reads. Holes of sparse images are skipped without being
/// read. Missing members are left out. Never writes to the images.
#[derive(Args)]
pub struct DumpArgs {
    /// The dump file to write (gzip)
    #[arg(short = 'o', value_name = "FILE", required = true)]
    out: PathBuf,
    /// Keep only what a mount reads: the journal buckets holding entries from last_seq on and
    /// the nodes the btrees reach (stale nodes and reclaimed journal entries read back as
    /// zeros). The set must open; mounts and fscks of the restored set behave the same.
    #[arg(long)]
    live_only: bool,
    /// Image files of one filesystem
    #[arg(required = true, value_name = "IMAGE")]
    images: Vec<PathBuf>,
}

/// Restore the image files of a dump made by `bcsim dump`
///
/// Writes each image of the dump, at its size, as a sparse file in DIR: metadata as it was
/// dumped, zeros elsewhere. Replaces no existing file.
#[derive(Args)]
pub struct UndumpArgs {
    /// The dump file
    #[arg(value_name = "FILE")]
    file: PathBuf,
    /// Directory to write the images into (created if needed)
    #[arg(long, value_name = "DIR", required = true)]
    dir: PathBuf,
}

pub fn run_dump(args: DumpArgs) -> CmdResult {
    let keep = if args.live_only { Keep::Live } else { Keep::All };
    let r = dump(&args.images, &args.out, keep)?;
    outln!(
        "{}: {} images, {} bytes of metadata in {} bytes",
        args.out.display(),
        r.images,
        r.kept_bytes,
        r.file_bytes
    );
    Ok(exit::OK)
}

pub fn run_undump(args: UndumpArgs) -> CmdResult {
    for p in undump(&args.file, &args.dir)? {
        outln!("{}", p.display());
    }
    Ok(exit::OK)
}
