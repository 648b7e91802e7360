//! `bcsim list-journal` on a crashed filesystem: it lists what recovery would replay, in seq
//! order, each flag selects what it says, --json agrees with the text, -a shows what replay
//! skips, bad flags are usage errors (16), and the images are never written.

// A failed unwrap or index in a test is that test failing, with its message.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use std::path::Path;

use common::{Out, bcsim, fails};

fn ok(args: &[&str], dir: &Path) -> Out {
    let out = bcsim(args, dir);
    assert_eq!(out.code, 0, "bcsim {args:?}: {}", out.stderr);
    assert!(!out.stderr.contains("panicked"), "{}", out.stderr);
    out
}

/// `list-journal FLAGS a.img b.img`.
fn lj(flags: &[&str], dir: &Path) -> Out {
    ok(&[&["list-journal"], flags, &["a.img", "b.img"]].concat(), dir)
}

/// Two images left by a crash after 250 of 300 operations: an unclean journal to list.
fn crashed() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    ok(&["format", "--size", "256M", "a.img", "b.img"], d.path());
    ok(&["run", "--ops", "300", "--seed", "5", "--crash-after", "250", "a.img", "b.img"], d.path());
    d
}

/// A header line parsed: seq, last_seq, flush, the rest (copies and status).
#[derive(Debug, Clone, PartialEq)]
struct Header {
    seq: u64,
    last_seq: u64,
    flush: bool,
    rest: String,
}

fn header(line: &str) -> Option<Header> {
    let rest = line.strip_prefix("journal entry seq ")?;
    let f: Vec<&str> = rest.splitn(5, ' ').collect();
    assert_eq!((f[1], f.len()), ("last_seq", 5), "malformed header: {line}");
    assert!(f[3] == "flush" || f[3] == "noflush", "{line}");
    Some(Header {
        seq: f[0].parse().unwrap(),
        last_seq: f[2].parse().unwrap(),
        flush: f[3] == "flush",
        rest: f[4].into(),
    })
}

fn headers(out: &Out) -> Vec<Header> {
    out.stdout.lines().filter_map(header).collect()
}

fn seqs(out: &Out) -> Vec<u64> {
    headers(out).iter().map(|h| h.seq).collect()
}

/// Key lines are the only lines indented four spaces.
fn key_lines(out: &Out) -> usize {
    out.stdout.lines().filter(|l| l.starts_with("    ")).count()
}

fn json(out: &Out) -> Vec<serde_json::Value> {
    serde_json::from_str::<serde_json::Value>(&out.stdout).unwrap().as_array().unwrap().clone()
}

/// The default listing is the replay range: strictly increasing seqs from the replay end's
/// last_seq to the replay end, as the read's own log line (on stderr) says, with keys.
#[test]
fn default_lists_the_replay_range_in_seq_order() {
    let d = crashed();
    let out = lj(&[], d.path());
    let hs = headers(&out);
    assert!(hs.len() > 5, "{}", out.stdout);
    assert!(hs.windows(2).all(|w| w[0].seq < w[1].seq), "{hs:?}");
    let (first, last) = (hs.first().unwrap(), hs.last().unwrap());
    assert!(last.flush, "the replay end is a flush entry");
    assert_eq!(first.seq, last.last_seq.max(1), "the range starts at the replay end's last_seq");
    assert!(hs.iter().all(|h| h.last_seq <= h.seq && h.last_seq <= last.last_seq), "{hs:?}");
    assert!(
        out.stderr.contains(&format!("journal read done, replaying entries {}-{}", first.seq, last.seq)),
        "{}",
        out.stderr
    );
    // Every copy is dev:bucket:offset, and nothing here is marked as not replayed.
    for h in &hs {
        let copies = h.rest.strip_prefix("on ").unwrap();
        assert!(
            copies
                .split(", ")
                .all(|c| c.split(':').count() == 3 && c.split(':').all(|n| n.parse::<u64>().is_ok())),
            "{h:?}"
        );
    }
    assert!(key_lines(&out) > hs.len(), "{}", out.stdout);
    assert!(out.stdout.contains("  btree_keys btree=inodes level=0\n"), "{}", out.stdout);
    assert!(out.stdout.contains("  btree_root btree="), "{}", out.stdout);
}

/// -n, -s, -b, -H, -F each select what they say, out of the default listing.
#[test]
fn filters_select_what_they_say() {
    let d = crashed();
    let all = seqs(&lj(&[], d.path()));
    assert!(all.len() > 8);

    let last3 = lj(&["-n", "3"], d.path());
    assert_eq!(seqs(&last3), all[all.len() - 3..].to_vec());

    let (a, b) = (all[2], all[5]);
    let range = lj(&["-s", &format!("{a}..{b}")], d.path());
    assert_eq!(seqs(&range), all.iter().copied().filter(|s| (a..=b).contains(s)).collect::<Vec<_>>());
    assert_eq!(seqs(&lj(&["-s", &a.to_string()], d.path())), vec![a]);
    assert_eq!(seqs(&lj(&["-s", &format!("{b}..")], d.path())), all[5..].to_vec());
    assert!(seqs(&lj(&["-s", "999999"], d.path())).is_empty());

    // -b: only inode entries, every jset listed has inode keys, and no other btree shows.
    let inodes = lj(&["-b", "inodes"], d.path());
    let listed = seqs(&inodes);
    assert!(!listed.is_empty() && listed.iter().all(|s| all.contains(s)));
    let entry_lines: Vec<&str> =
        inodes.stdout.lines().filter(|l| l.starts_with("  ") && !l.starts_with("    ")).collect();
    assert!(entry_lines.iter().all(|l| l.contains(" btree=inodes ")), "{entry_lines:?}");
    assert!(key_lines(&inodes) >= listed.len());
    let mut blocks = inodes.stdout.split("journal entry seq ").skip(1);
    assert!(
        blocks.all(|b| b.contains("  btree_keys btree=inodes") || b.contains("  overwrite btree=inodes"))
    );
    assert!(
        inodes
            .stdout
            .lines()
            .filter(|l| l.starts_with("    "))
            .all(|l| l.contains(" inode") || l.contains(" whiteout")),
        "{}",
        inodes.stdout
    );

    let hdr = lj(&["-H"], d.path());
    assert_eq!(seqs(&hdr), all);
    assert!(hdr.stdout.lines().all(|l| l.starts_with("journal entry seq ")), "{}", hdr.stdout);

    let flush = lj(&["-F", "-a"], d.path());
    assert!(!flush.stdout.is_empty());
    assert!(headers(&flush).iter().all(|h| h.flush) && !flush.stdout.contains("noflush"));

    // Filters compose; -n applies last.
    assert_eq!(seqs(&lj(&["-s", &format!("{a}..{b}"), "-n", "2"], d.path())), vec![all[4], all[5]]);
}

/// --json is one array with the same entries and keys as the text, -H leaves out `entries`.
#[test]
fn json_matches_the_text() {
    let d = crashed();
    for flags in [&[][..], &["-a"], &["-b", "alloc"], &["-n", "4"]] {
        let text = lj(flags, d.path());
        let v = json(&lj(&[flags, &["--json"]].concat(), d.path()));
        let hs = headers(&text);
        assert_eq!(v.len(), hs.len(), "{flags:?}");
        for (j, h) in v.iter().zip(&hs) {
            assert_eq!(
                (j["seq"].as_u64(), j["last_seq"].as_u64(), j["flush"].as_bool()),
                (Some(h.seq), Some(h.last_seq), Some(h.flush))
            );
            let copies: Vec<String> = j["copies"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| format!("{}:{}:{}", c["dev"], c["bucket"], c["offset"]))
                .collect();
            assert!(h.rest.starts_with(&format!("on {}", copies.join(", "))), "{h:?} vs {copies:?}");
        }
        let keys: usize = v
            .iter()
            .flat_map(|j| j["entries"].as_array().unwrap())
            .filter_map(|e| e["keys"].as_array())
            .map(Vec::len)
            .sum();
        assert_eq!(keys, key_lines(&text), "{flags:?}");
    }
    let v = json(&lj(&["-H", "--json"], d.path()));
    assert!(!v.is_empty() && v.iter().all(|j| j.get("entries").is_none() && j["status"] == "replayed"));
}

/// After a second crash the journal holds entries replay skips and a blacklist range: -a lists
/// them with the reason, -B prints the ranges the jsets' blacklist entries carry, and no
/// blacklisted seq is ever listed as replayed.
#[test]
fn all_shows_what_replay_skips() {
    let d = crashed();
    ok(&["run", "--ops", "300", "--seed", "6", "--crash-after", "100", "a.img", "b.img"], d.path());
    let replayed = headers(&lj(&[], d.path()));
    let every = headers(&lj(&["-a"], d.path()));
    assert!(every.len() > replayed.len(), "{} vs {}", every.len(), replayed.len());
    assert!(every.windows(2).all(|w| w[0].seq < w[1].seq));
    for h in &every {
        match replayed.iter().find(|r| r.seq == h.seq) {
            Some(r) => assert_eq!(r, h),
            None => assert!(h.rest.contains("(not replayed: "), "{h:?}"),
        }
    }
    let first = replayed.first().unwrap().seq;
    assert!(every.iter().any(|h| h.seq < first && h.rest.ends_with("(not replayed: below_last_seq)")));

    // The recovery that ran before the second crash wrote a blacklist entry.
    let v = json(&lj(&["-a", "--json"], d.path()));
    let ranges: Vec<(u64, u64)> = v
        .iter()
        .flat_map(|j| j["entries"].as_array().unwrap())
        .filter(|e| e["type"] == "blacklist")
        .map(|e| (e["start"].as_u64().unwrap(), e["end"].as_u64().unwrap()))
        .collect();
    assert!(!ranges.is_empty(), "a recovered-then-crashed journal carries a blacklist entry");
    let bl = lj(&["-B", "-H"], d.path());
    for &(start, end) in &ranges {
        assert!(
            bl.stdout.contains(&format!("blacklisted journal seqs {start}-{}\n", end - 1)),
            "{}",
            bl.stdout
        );
        assert!(replayed.iter().all(|h| !(start..end).contains(&h.seq)));
        assert!(
            v.iter()
                .filter(|j| (start..end).contains(&j["seq"].as_u64().unwrap()))
                .all(|j| j["status"] == "blacklisted")
        );
    }
    assert_eq!(seqs(&bl), replayed.iter().map(|h| h.seq).collect::<Vec<_>>(), "-B adds lines, not entries");
}

fn image_crcs(dir: &Path) -> Vec<u32> {
    use std::io::Read;
    ["a.img", "b.img"]
        .iter()
        .map(|name| {
            let mut f = std::fs::File::open(dir.join(name)).unwrap();
            let mut buf = vec![0u8; 1 << 20];
            let mut crc = 0u32;
            loop {
                let n = f.read(&mut buf).unwrap();
                if n == 0 {
                    return crc;
                }
                crc = crc32c::crc32c_append(crc, &buf[..n]);
            }
        })
        .collect()
}

/// Listing writes nothing, whatever the flags; a missing member is a degraded read with a note,
/// listing the same entries here (one metadata replica: the journal the run wrote is on
/// a.img only, and nothing of b.img's is needed).
#[test]
fn listing_is_read_only_and_tolerates_a_missing_member() {
    let d = crashed();
    let before = image_crcs(d.path());
    let full = lj(&[], d.path());
    for flags in
        [&["-a"][..], &["-a", "--json"], &["-B", "-F", "-H"], &["-b", "extents", "-n", "2"], &["-s", "3..5"]]
    {
        lj(flags, d.path());
    }
    let only_a = ok(&["list-journal", "a.img"], d.path());
    assert!(only_a.stderr.contains("note: member device(s) 1 not given"), "{}", only_a.stderr);
    assert!(only_a.stderr.contains("journal read degraded: devices 1 missing"), "{}", only_a.stderr);
    assert_eq!(only_a.stdout, full.stdout);
    assert_eq!(image_crcs(d.path()), before, "list-journal changed an image");
}

/// Bad flags are usage errors (16) in one line, checked before any image is read; unreadable
/// images are operational errors (8).
#[test]
fn bad_flags_exit_16_and_bad_images_8() {
    let d = crashed();
    let run = |flags: &[&str]| bcsim(&[&["list-journal"], flags, &["a.img", "b.img"]].concat(), d.path());
    fails(&run(&["-n", "0"]), 16, "-n must be at least 1");
    fails(&run(&["-s", "x"]), 16, "invalid --seq 'x'");
    fails(&run(&["-s", "9..3"]), 16, "ends before it starts");
    fails(&run(&["-s", "..3"]), 16, "invalid --seq");
    fails(&run(&["-b", "nosuch"]), 16, "unknown btree 'nosuch'");
    fails(&run(&["-B", "--json"]), 16, "-B prints text");
    // Usage errors are found before the images are opened.
    fails(&bcsim(&["list-journal", "-n", "0", "nope.img"], d.path()), 16, "-n must be at least 1");
    assert_eq!(run(&["-n", "-1"]).code, 16);
    assert_eq!(run(&["--bogus"]).code, 16);
    assert_eq!(bcsim(&["list-journal"], d.path()).code, 16);
    fails(&bcsim(&["list-journal", "nope.img"], d.path()), 8, "nope.img: no such file");
    let out = bcsim(&["list-journal", "--help"], d.path());
    assert_eq!(out.code, 0);
    assert!(out.stdout.contains("Usage: bcsim list-journal"), "{}", out.stdout);
}
