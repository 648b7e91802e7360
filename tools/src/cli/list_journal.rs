//! `bcsim list-journal`: print the journal entries recovery would replay, or all of them.

use std::path::PathBuf;

use clap::Args;

use bcsim::exit;
use bcsim::images::open_device_set;
use bcsim::list_journal::{
    Filter, SeqRange, blacklist_text, header_text, item_text, listed_json, read, select,
};
use fs_core::error::{ErrCode, Error};

use super::{CmdResult, out, parse_btree, print_json};

/// List journal entries, like `bcachefs list_journal`
///
/// Reads the journal of every image given the way a mount would, and prints the entries it
/// would replay (last_seq..=replay_end, blacklisted seqs left out) in seq order: a header per
/// entry (seq, last_seq, flush or noflush, each copy as dev:bucket:byte offset), then its
/// btree_keys, btree_root, blacklist and overwrite entries, keys indented under them.
/// Blacklist ranges print inclusive (A-B).
///
/// Filters apply in this order: -a, -s, -F, -b, then -n keeps the newest of what is left.
/// The read's log lines (bad copies, "journal bucket seqs not monotonic", ...) always go to
/// stderr, also with --json, so stdout stays one JSON array. Missing member images are
/// tolerated: the read is degraded and a note says so. Never writes to the images.
#[derive(Args)]
pub struct ListJournalArgs {
    /// All entries found on disk, also those not replayed (below last_seq, past replay_end,
    /// blacklisted); their header says why
    #[arg(short = 'a', long = "all")]
    all: bool,
    /// Only the last N entries (after the other filters)
    #[arg(short = 'n', long = "nr-entries", value_name = "N")]
    nr: Option<usize>,
    /// Only this seq or inclusive range: SEQ, A..B or A..
    #[arg(short = 's', long = "seq", value_name = "SEQ[..SEQ]")]
    seq: Option<String>,
    /// Only entries with keys in this btree, and of those only this btree's keys and root
    #[arg(short = 'b', long = "btree", value_name = "NAME")]
    btree: Option<String>,
    /// Print the blacklisted seq ranges first (text only: in JSON each entry has a "status")
    #[arg(short = 'B', long = "blacklisted")]
    blacklisted: bool,
    /// Only flush entries
    #[arg(short = 'F', long = "flush-only")]
    flush_only: bool,
    /// Only the entry headers
    #[arg(short = 'H', long = "headers-only")]
    headers_only: bool,
    /// Print one JSON array of entries instead of text
    #[arg(long)]
    json: bool,
    /// Image files of one filesystem (missing members are tolerated: degraded read)
    #[arg(required = true, value_name = "IMAGE")]
    images: Vec<PathBuf>,
}

fn usage(msg: &str) -> Error {
    Error::new(ErrCode::InvalidArgument, msg)
}

/// Checks and converts the flags, before any image is opened.
fn filter(args: &ListJournalArgs) -> Result<Filter, Error> {
    if args.nr == Some(0) {
        return Err(usage("-n must be at least 1"));
    }
    // One array of entries has no place for the ranges, and a flag that silently does nothing
    // would mislead: refuse the combination instead.
    if args.blacklisted && args.json {
        return Err(usage("-B prints text: with --json, use -a and each entry's \"status\""));
    }
    Ok(Filter {
        all: args.all,
        nr: args.nr,
        seqs: args.seq.as_deref().map(SeqRange::parse).transpose()?,
        flush_only: args.flush_only,
        btree: args.btree.as_deref().map(parse_btree).transpose()?,
    })
}

pub fn run(args: ListJournalArgs) -> CmdResult {
    let f = filter(&args)?;
    let set = open_device_set(&args.images, false)?;
    let missing = set.missing();
    if !missing.is_empty() {
        let list: Vec<String> = missing.iter().map(u16::to_string).collect();
        eprintln!(
            "note: member device(s) {} not given: listing what the present devices hold",
            list.join(", ")
        );
    }
    let jr = read(&set, f.all)?;
    for line in &jr.log {
        eprintln!("{line}");
    }
    let listed = select(&jr, &f);
    if args.json {
        print_json(&serde_json::Value::Array(
            listed.iter().map(|l| listed_json(l, args.headers_only)).collect(),
        ));
        return Ok(exit::OK);
    }
    if args.blacklisted {
        out::lines(blacklist_text(&jr));
    }
    for l in &listed {
        if !out::is_open() {
            break;
        }
        out::outln!("{}", header_text(l));
        if !args.headers_only {
            out::lines(l.items.iter().flat_map(|e| item_text(e)));
        }
    }
    Ok(exit::OK)
}
