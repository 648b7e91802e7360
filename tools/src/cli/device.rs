//! `bcsim device`: offline changes to one member device.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use serde_json::json;

use bcsim::exit;
use fs_core::size::{format_size, parse_size};

use super::out::outln;
use super::{CmdResult, print_json};

/// Change a member device offline
#[derive(Args)]
pub struct DeviceArgs {
    #[command(subcommand)]
    command: DeviceCommand,
}

#[derive(Subcommand)]
enum DeviceCommand {
    Resize(ResizeArgs),
}

/// Grow a member device offline: the image file grows, and the new buckets are free
///
/// As 'bcachefs device resize' does on an unmounted filesystem: the member's bucket count
/// follows the new size, and the next mount writes the freespace keys of the new buckets.
/// Shrinking is not supported. This is the workaround for a metadata device that has run out
/// of buckets (bcachefs #1108).
#[derive(Args)]
struct ResizeArgs {
    /// Print what was done as JSON
    #[arg(long)]
    json: bool,
    /// The member's image file (or block device, already grown)
    #[arg(value_name = "IMAGE")]
    image: PathBuf,
    /// The new size, e.g. 200G
    #[arg(value_name = "SIZE")]
    size: String,
}

pub fn run(args: DeviceArgs) -> CmdResult {
    match args.command {
        DeviceCommand::Resize(a) => resize(a),
    }
}

fn resize(args: ResizeArgs) -> CmdResult {
    let size = parse_size(&args.size).map_err(|e| e.prefix("SIZE"))?;
    let r = bcsim::device::resize(&args.image, size)?;
    if args.json {
        print_json(&json!({
            "dev": r.dev,
            "old_nbuckets": r.old_nbuckets,
            "new_nbuckets": r.new_nbuckets,
            "bucket_size": r.bucket_size,
            "size": r.size,
        }));
    } else {
        outln!(
            "{}: member {} resized to {}: {} -> {} buckets of {}; the new buckets are free, and the next mount writes their freespace keys",
            args.image.display(),
            r.dev,
            format_size(r.size),
            r.old_nbuckets,
            r.new_nbuckets,
            format_size(u64::from(r.bucket_size))
        );
    }
    Ok(exit::OK)
}
