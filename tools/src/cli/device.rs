//! `bcsim device`: offline changes to member devices (resize, add).

use std::path::PathBuf;

use clap::{Args, Subcommand};
use serde_json::json;

use bcsim::exit;
use bcsim::images::ImageSpec;
use fs_core::opts::OptId;
use fs_core::size::{format_size, parse_size};

use super::out::outln;
use super::{CmdResult, print_json};

/// Change member devices of an unmounted filesystem (resize, add)
#[derive(Args)]
pub struct DeviceArgs {
    #[command(subcommand)]
    command: DeviceCommand,
}

#[derive(Subcommand)]
enum DeviceCommand {
    Resize(ResizeArgs),
    Add(AddArgs),
}

/// Add a member device to an unmounted filesystem
///
/// As 'bcachefs device add' on an unmounted filesystem: the new image is laid out as format
/// lays out a device (created sparse with --size if missing), and every member's superblock
/// lists it. The next mount writes its alloc and freespace keys. A temporary metadata device
/// is the workaround upstream suggests for a metadata target that has run out of buckets
/// (bcachefs #1108): add one labelled ssd.tmp, mount, then move metadata back and remove it.
#[derive(Args)]
struct AddArgs {
    /// The image files of the filesystem's members, all of them
    #[arg(long = "fs", value_name = "IMAGE", required = true, num_args = 1..)]
    fs: Vec<PathBuf>,
    /// Size of the new image (creates or resizes the file)
    #[arg(long, value_name = "SIZE")]
    size: Option<String>,
    /// Bucket size of the new device (default: from its size)
    #[arg(long, value_name = "SIZE")]
    bucket_size: Option<String>,
    /// Durability of the new device (0-4, default 1)
    #[arg(long, value_name = "N")]
    durability: Option<String>,
    /// Label of the new device, e.g. ssd.tmp
    #[arg(long, value_name = "LABEL")]
    label: Option<String>,
    /// What the new device may hold: a subset of journal,btree,user (default all)
    #[arg(long = "data-allowed", alias = "data_allowed", value_name = "TYPES")]
    data_allowed: Option<String>,
    /// Add the image even if it holds a bcsim filesystem
    #[arg(short = 'f', long)]
    force: bool,
    /// Print what was done as JSON
    #[arg(long)]
    json: bool,
    /// The new device's image file
    #[arg(value_name = "IMAGE")]
    image: PathBuf,
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
        DeviceCommand::Add(a) => add(a),
    }
}

fn add(args: AddArgs) -> CmdResult {
    let mut spec = ImageSpec::new(args.image.clone());
    if let Some(s) = &args.size {
        spec.size = Some(parse_size(s).map_err(|e| e.prefix("--size"))?);
    }
    if let Some(b) = &args.bucket_size {
        spec.bucket_size = Some(OptId::BucketSize.desc().parse(b)?.as_u64());
    }
    if let Some(d) = &args.durability {
        spec.durability = u8::try_from(OptId::Durability.desc().parse(d)?.as_u64()).unwrap_or(u8::MAX);
    }
    if let Some(l) = &args.label {
        spec.label = OptId::Label.desc().parse(l)?.as_str().to_owned();
    }
    if let Some(a) = &args.data_allowed {
        spec.data_allowed = fs_core::sb::DataAllowed::parse(a).map_err(|e| e.prefix("--data-allowed"))?;
    }
    let a = bcsim::device::add(&spec, &args.fs, args.force)?;
    if args.json {
        print_json(&json!({
            "dev": a.dev,
            "nbuckets": a.nbuckets,
            "bucket_size": a.bucket_size,
            "label": a.label,
        }));
    } else {
        outln!(
            "{}: added as member {}: {} buckets of {}{}; the next mount writes its alloc and freespace keys",
            args.image.display(),
            a.dev,
            a.nbuckets,
            format_size(u64::from(a.bucket_size)),
            if a.label.is_empty() { String::new() } else { format!(", label {}", a.label) }
        );
    }
    Ok(exit::OK)
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
