//! `bcsim list`: print a btree's keys or its node layout.

use std::path::PathBuf;

use clap::Args;

use bcsim::exit;
use bcsim::images::open_device_set;
use bcsim::recovery::{MountOpts, open_view};
use bcsim::report::{key_json, key_text, node_json, node_text};
use fs_core::bpos::Bpos;
use fs_core::error::{ErrCode, Error};

use super::{CmdResult, out, parse_btree, print_json};

/// List a btree's keys, like `bcachefs list`
///
/// Prints one key per line: position (inode:offset:snapshot), type, value. With --nodes, prints
/// the btree's nodes instead: level, key range, seq, keys, sectors written and where each
/// replica lives (dev:sector). Writes nothing: after an unclean shutdown the journal is read
/// and replayed in memory only, as `fsck -n` does.
#[derive(Args)]
pub struct ListArgs {
    /// Btree to list: extents, inodes, dirents, xattrs, alloc, freespace, need_discard, ...
    #[arg(short = 'b', long = "btree", value_name = "NAME", default_value = "extents")]
    btree: String,
    /// First position to list (inode:offset[:snapshot], POS_MIN)
    #[arg(short = 's', long, value_name = "POS", default_value = "POS_MIN")]
    start: String,
    /// Last position to list, inclusive
    #[arg(short = 'e', long, value_name = "POS", default_value = "POS_MAX")]
    end: String,
    /// Print the node layout instead of keys
    #[arg(long)]
    nodes: bool,
    /// Print JSON (one array) instead of text
    #[arg(long)]
    json: bool,
    /// Image files of one filesystem (missing members are tolerated for reading)
    #[arg(required = true, value_name = "IMAGE")]
    images: Vec<PathBuf>,
}

fn parse_pos(what: &str, s: &str) -> Result<Bpos, Error> {
    Bpos::parse(s).ok_or_else(|| {
        Error::new(
            ErrCode::InvalidArgument,
            format!("invalid {what} position '{s}': expected inode:offset[:snapshot]"),
        )
    })
}

pub fn run(args: ListArgs) -> CmdResult {
    let btree = parse_btree(&args.btree)?;
    let start = parse_pos("--start", &args.start)?;
    let end = parse_pos("--end", &args.end)?;
    if end < start {
        return Err(Error::new(
            ErrCode::InvalidArgument,
            format!(
                "invalid range --start {} --end {}: the range ends before it starts",
                args.start, args.end
            ),
        ));
    }
    let set = open_device_set(&args.images, false)?;
    let mut fs = open_view(set, &MountOpts::default())?;
    if fs.unclean() {
        eprintln!(
            "note: the filesystem was not unmounted cleanly: keys are shown with its journal replayed in memory"
        );
    }
    if args.nodes {
        let nodes = fs.nodes(btree)?;
        if args.json {
            print_json(&serde_json::Value::Array(nodes.iter().map(node_json).collect()));
        } else {
            out::lines(nodes.iter().map(node_text));
        }
    } else {
        let keys = fs.list(btree, start, end)?;
        if args.json {
            print_json(&serde_json::Value::Array(keys.iter().map(key_json).collect()));
        } else {
            out::lines(keys.iter().map(key_text));
        }
    }
    Ok(exit::OK)
}
