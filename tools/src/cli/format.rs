//! `bcsim format`: create or extend image files and write a new filesystem on them.

use std::path::PathBuf;

use clap::{ArgAction, ArgMatches, Args};
use serde_json::json;

use bcsim::exit;
use bcsim::images::{ImageSpec, format_images};
use fs_core::error::{ErrCode, Error};
use fs_core::format::FormatReport;
use fs_core::opts::{OptContext, OptId, Options, parse_opts};
use fs_core::sb::DataAllowed;
use fs_core::size::{format_size, parse_size};
use fs_core::uuid::Uuid;

use super::out::out;
use super::{CmdResult, print_json};

/// Format image files (one per device) as a new filesystem
///
/// Per-device flags (--size, --bucket-size, --durability, --label, --data-allowed) apply to the images that
/// follow them on the command line, until given again, as with `bcachefs format`:
///
///   bcsim format --size 1T --label hdd.a a.img --label hdd.b b.img --size 256G --label ssd.n0 c.img
///
/// Missing image files are created sparse (--size is then required); existing files are resized
/// to --size when it is given. An image that already holds a bcsim filesystem is refused without
/// -f. Every check runs before any file is touched.
#[derive(Args)]
#[command(verbatim_doc_comment)]
pub struct FormatArgs {
    /// Size of the following images (e.g. 1T, 512G); creates or resizes the file [per device]
    #[arg(long, value_name = "SIZE", action = ArgAction::Append)]
    size: Vec<String>,
    /// Bucket size of the following devices, a power of two (default: from the device size) [per device]
    #[arg(long, value_name = "SIZE", action = ArgAction::Append)]
    bucket_size: Vec<String>,
    /// Durability of the following devices: how many replicas a copy there counts as (0-4) [per device]
    #[arg(long, value_name = "N", action = ArgAction::Append)]
    durability: Vec<String>,
    /// Label of the following devices, e.g. ssd.nvme0; its groups (ssd) are usable as targets [per device]
    #[arg(long, value_name = "LABEL", action = ArgAction::Append)]
    label: Vec<String>,
    /// What the following devices may hold: a subset of journal,btree,user (default all).
    /// A device without btree never gets btree nodes, even when allocation falls back from
    /// metadata_target to every device [per device]
    #[arg(long = "data-allowed", alias = "data_allowed", value_name = "TYPES", action = ArgAction::Append)]
    data_allowed: Vec<String>,
    /// Btree node size (default 256k)
    #[arg(long, value_name = "SIZE")]
    btree_node_size: Option<String>,
    /// Replicas of metadata, journal and btree nodes (1-4, default 1)
    #[arg(long, value_name = "N")]
    metadata_replicas: Option<String>,
    /// Replicas of user data (1-4, default 1)
    #[arg(long, value_name = "N")]
    data_replicas: Option<String>,
    /// Label group for metadata, e.g. ssd (default: foreground target, else any device)
    #[arg(long, value_name = "TARGET")]
    metadata_target: Option<String>,
    /// Label group for foreground writes (default: any device)
    #[arg(long, value_name = "TARGET")]
    foreground_target: Option<String>,
    /// Any other format-time options, as name=value,name (e.g. errors=continue,behavior=v1.37.5)
    #[arg(short = 'o', long = "options", value_name = "OPTS")]
    options: Option<String>,
    /// Filesystem UUID (default: random); the same UUID gives identical images
    #[arg(short = 'U', long, value_name = "UUID")]
    uuid: Option<String>,
    /// Format even if an image already holds a bcsim filesystem
    #[arg(short = 'f', long)]
    force: bool,
    /// Print what was formatted as JSON
    #[arg(long)]
    json: bool,
    /// Image files or block devices, one per member device
    #[arg(required = true, value_name = "IMAGE")]
    images: Vec<PathBuf>,
}

/// For each image, the last value of a per-device flag given before it on the command line.
fn per_device(m: &ArgMatches, id: &str, image_at: &[usize]) -> Result<Vec<Option<String>>, Error> {
    let given: Vec<(usize, String)> = match (m.indices_of(id), m.get_many::<String>(id)) {
        (Some(at), Some(values)) => at.zip(values.cloned()).collect(),
        _ => Vec::new(),
    };
    if let (Some((at, _)), Some(&last_image)) = (given.last(), image_at.last())
        && *at > last_image
    {
        return Err(Error::new(
            ErrCode::InvalidArgument,
            format!("--{} after the last image applies to no device", id.replace('_', "-")),
        ));
    }
    Ok(image_at
        .iter()
        .map(|&img| given.iter().rev().find(|(at, _)| *at < img).map(|(_, v)| v.clone()))
        .collect())
}

fn image_specs(args: &FormatArgs, m: &ArgMatches) -> Result<Vec<ImageSpec>, Error> {
    let image_at: Vec<usize> = m.indices_of("images").map(Iterator::collect).unwrap_or_default();
    let sizes = per_device(m, "size", &image_at)?;
    let buckets = per_device(m, "bucket_size", &image_at)?;
    let durability = per_device(m, "durability", &image_at)?;
    let labels = per_device(m, "label", &image_at)?;
    let allowed = per_device(m, "data_allowed", &image_at)?;
    let mut specs = Vec::with_capacity(args.images.len());
    for (i, path) in args.images.iter().enumerate() {
        let mut spec = ImageSpec::new(path.clone());
        let at = |v: &Vec<Option<String>>| v.get(i).cloned().flatten();
        if let Some(s) = at(&sizes) {
            spec.size = Some(parse_size(&s).map_err(|e| e.prefix("--size"))?);
        }
        if let Some(b) = at(&buckets) {
            spec.bucket_size = Some(OptId::BucketSize.desc().parse(&b)?.as_u64());
        }
        if let Some(d) = at(&durability) {
            spec.durability = OptId::Durability.desc().parse(&d)?.as_u64() as u8;
        }
        if let Some(l) = at(&labels) {
            spec.label = OptId::Label.desc().parse(&l)?.as_str().to_owned();
        }
        if let Some(a) = at(&allowed) {
            spec.data_allowed = DataAllowed::parse(&a).map_err(|e| e.prefix("--data-allowed"))?;
        }
        specs.push(spec);
    }
    Ok(specs)
}

fn options(args: &FormatArgs) -> Result<Options, Error> {
    let mut opts = Options::default();
    if let Some(text) = &args.options {
        for p in parse_opts(text, OptContext::Format)? {
            opts.set(p.id, p.value)?;
        }
    }
    let flags = [
        (OptId::BtreeNodeSize, &args.btree_node_size),
        (OptId::MetadataReplicas, &args.metadata_replicas),
        (OptId::DataReplicas, &args.data_replicas),
        (OptId::MetadataTarget, &args.metadata_target),
        (OptId::ForegroundTarget, &args.foreground_target),
    ];
    for (id, value) in flags {
        if let Some(text) = value {
            opts.set_text(id, text)?;
        }
    }
    Ok(opts)
}

pub fn run(args: FormatArgs, m: &ArgMatches) -> CmdResult {
    let specs = image_specs(&args, m)?;
    let opts = options(&args)?;
    let uuid = args.uuid.as_deref().map(Uuid::parse).transpose()?;
    let report = format_images(&specs, &opts, uuid, args.force)?;
    if args.json {
        print_json(&report_json(&report));
    } else {
        out!("{}", report_text(&report));
    }
    Ok(exit::OK)
}

pub fn report_text(r: &FormatReport) -> String {
    let mut s = format!("Formatted bcsim filesystem {} on {} device(s):\n", r.uuid, r.devices.len());
    for d in &r.devices {
        let m = &d.member;
        s.push_str(&format!(
            "  dev {:<2} {:<24} label {:<12} durability {}  {} x {} buckets (first {}), journal {} buckets{}\n",
            d.dev_idx,
            d.name,
            if m.label.is_empty() { "-" } else { &m.label },
            m.durability,
            m.nbuckets,
            format_size(u64::from(m.bucket_size)),
            m.first_bucket,
            d.journal.nr(),
            if m.data_allowed.is_all() { String::new() } else { format!(", data_allowed {}", m.data_allowed.names()) },
        ));
    }
    s
}

pub fn report_json(r: &FormatReport) -> serde_json::Value {
    json!({
        "uuid": r.uuid.to_string(),
        "devices": r.devices.iter().map(|d| json!({
            "dev_idx": d.dev_idx,
            "image": d.name,
            "member": bcsim::report::member_json(&d.member),
            "journal_buckets": d.journal.nr(),
        })).collect::<Vec<_>>(),
    })
}
