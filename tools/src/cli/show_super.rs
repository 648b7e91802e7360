//! `bcsim show-super`: print what a device's superblock says.

use std::path::PathBuf;

use clap::Args;

use bcsim::exit;
use bcsim::images::{open_device_set, read_image_super};
use bcsim::report::{Field, SuperReport};
use fs_core::error::{ErrCode, Error};

use super::out::out;
use super::{CmdResult, print_json};

/// Print an image's superblock
///
/// Shows identity, members, options, journal buckets, clean state and fsck error counts. A
/// damaged superblock copy is reported and the other copy is shown.
///
/// Several images are first checked to belong to one filesystem (same UUID, no member twice),
/// then each is shown. With --json, one image gives an object and several give an array.
#[derive(Args)]
pub struct ShowSuperArgs {
    /// Sections to show, comma-separated: members, options, journal, clean, errors, or all
    #[arg(short = 'f', long = "fields", value_name = "FIELDS", default_value = "all")]
    fields: String,
    /// Print JSON instead of text
    #[arg(long)]
    json: bool,
    /// Image files or block devices of one filesystem
    #[arg(required = true, value_name = "IMAGE")]
    images: Vec<PathBuf>,
}

pub fn run(args: ShowSuperArgs) -> CmdResult {
    let fields = Field::parse_list(&args.fields).map_err(|m| Error::new(ErrCode::InvalidArgument, m))?;
    let reads = if let [one] = args.images.as_slice() {
        vec![(one.display().to_string(), read_image_super(one)?)]
    } else {
        open_device_set(&args.images, false)?;
        args.images
            .iter()
            .map(|p| read_image_super(p).map(|r| (p.display().to_string(), r)))
            .collect::<Result<Vec<_>, _>>()?
    };
    let reports: Vec<SuperReport<'_>> = reads
        .iter()
        .map(|(name, r)| SuperReport { device: name, sb: &r.sb, copy_offset: r.offset, damaged: &r.damaged })
        .collect();
    if args.json {
        let values: Vec<_> = reports.iter().map(|r| r.json(&fields)).collect();
        match values.as_slice() {
            [one] => print_json(one),
            _ => print_json(&serde_json::Value::Array(values)),
        }
    } else {
        let texts: Vec<String> = reports.iter().map(|r| r.text(&fields)).collect();
        out!("{}", texts.join("\n"));
    }
    Ok(exit::OK)
}
