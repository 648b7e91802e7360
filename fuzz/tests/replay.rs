//! Every committed input of every fuzz target, replayed on each test run: the seed corpora
//! (`corpus/<target>/`) and the inputs that once made a target fail (`regressions/<target>/`,
//! each also a named test below). A campaign (docs/FUZZING.md) grows neither by itself: what it
//! finds is fixed, and the input committed as a regression.
//!
//! `cargo test -p bcsim-fuzz --test replay -- --ignored regenerate_seed_corpora` rebuilds the
//! seed corpora from a filesystem bcsim formats and writes to.

// A failed unwrap or index in a test is that test failing, with its message.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::path::{Path, PathBuf};

use bcsim_fuzz::{TARGETS, target};

fn dir(kind: &str, name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(kind).join(name)
}

fn inputs(kind: &str, name: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = match std::fs::read_dir(dir(kind, name)) {
        Ok(rd) => rd.map(|e| e.unwrap().path()).filter(|p| p.is_file()).collect(),
        Err(_) => Vec::new(),
    };
    files.sort();
    files
}

/// Runs `name` on each file, naming the file that fails.
fn replay(kind: &str, name: &str) -> usize {
    let t = target(name).unwrap();
    let files = inputs(kind, name);
    for f in &files {
        let data = std::fs::read(f).unwrap();
        let run = std::panic::catch_unwind(|| (t.run)(&data));
        assert!(run.is_ok(), "target {name} fails on {}", f.display());
    }
    files.len()
}

/// Each target has a seed corpus to start a campaign from, and every input of it and of its
/// regressions runs to its end.
#[test]
fn every_committed_input_replays() {
    for t in TARGETS {
        let seeds = replay("corpus", t.name);
        assert!(seeds > 0, "target {} has no seed corpus", t.name);
        replay("regressions", t.name);
    }
}

/// A target refuses damage instead of panicking: every seed cut short at each length, and
/// with each byte of its first 128 flipped, still runs to its end. (The fuzzer goes much
/// further; this keeps the cheap cases in every test run.)
#[test]
fn truncated_and_flipped_seeds_are_refused_cleanly() {
    for t in TARGETS {
        for f in inputs("corpus", t.name) {
            let data = std::fs::read(&f).unwrap();
            let step = (data.len() / 64).max(1);
            for len in (0..data.len()).step_by(step) {
                (t.run)(&data[..len]);
            }
            for i in 0..data.len().min(128) {
                let mut d = data.clone();
                d[i] ^= 0xff;
                (t.run)(&d);
            }
        }
    }
}

/// Rebuilds the seed corpora (`seed-*`): a superblock, journal entries, btree nodes and key
/// values of a small filesystem after a seeded file workload, and request lines of the control
/// protocol.
#[test]
#[ignore = "rewrites the committed seed corpora"]
fn regenerate_seed_corpora() {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use bcsim::files::Files;
    use bcsim::fs::Fs;
    use fs_core::bkey::KeyType;
    use fs_core::btree::BtreeConfig;
    use fs_core::btree::node::{BTREE_NODE_SALT, peek_header};
    use fs_core::dev::{BlockDevice, MemDevice, SharedDevice};
    use fs_core::format::{DeviceSpec, format};
    use fs_core::opts::{OptId, OptValue, Options};
    use fs_core::sb::{DeviceSet, SB_MAX_BYTES, SB_OFFSET_0, fs_magic};
    use journal::format::{JSET_SALT, JsetEntry, JsetRead, decode_jset};

    const NODE: usize = 4096;
    const PER_TARGET: usize = 6;
    let dev = Arc::new(MemDevice::new("mem0", 64 << 20));
    let mut opts = Options::default();
    opts.set(OptId::BtreeNodeSize, OptValue::U64(NODE as u64)).unwrap();
    let report =
        format(&[DeviceSpec { bucket_size: Some(256 << 10), ..DeviceSpec::new(dev.clone()) }], &opts, None)
            .unwrap();
    let set = DeviceSet::open(vec![dev.clone() as SharedDevice]).unwrap();
    let mut fs = Fs::open(set, true, BtreeConfig::default()).unwrap();
    let mut files = Files::new(&mut fs).unwrap();
    for op in bcsim::workload::generate(7, 80) {
        bcsim::workload::run_op(&mut fs, &mut files, &op).unwrap();
    }
    fs.reclaim().unwrap();
    for op in bcsim::workload::generate(8, 20) {
        bcsim::workload::run_op(&mut fs, &mut files, &op).unwrap();
    }
    fs.fsync().unwrap();
    drop(files);
    std::mem::forget(fs); // a crash: the journal keeps the newest updates

    let mut seeds: BTreeMap<&str, Vec<Vec<u8>>> = BTreeMap::new();
    let mut add = |name: &'static str, bytes: Vec<u8>| {
        let v = seeds.entry(name).or_default();
        if v.len() < PER_TARGET && !v.contains(&bytes) {
            v.push(bytes);
        }
    };
    let mut image = vec![0u8; dev.size() as usize];
    dev.read_at(&mut image, 0).unwrap();
    let sb = &image[SB_OFFSET_0 as usize..(SB_OFFSET_0 + SB_MAX_BYTES) as usize];
    let sb_bytes = u32::from_le_bytes(sb[4..8].try_into().unwrap()) as usize;
    add("superblock", sb[..sb_bytes].to_vec());

    let node_magic = fs_magic(&report.uuid, BTREE_NODE_SALT);
    let jset_magic = fs_magic(&report.uuid, JSET_SALT);
    for off in (0..image.len()).step_by(512) {
        let at = &image[off..];
        if off % NODE == 0 && peek_header(at, node_magic).is_some() {
            // The node up to its last non-zero byte, whole sectors.
            let node = &at[..NODE];
            let used = node.iter().rposition(|&b| b != 0).map_or(0, |i| (i + 1).next_multiple_of(512));
            add("btree_node", node[..used].to_vec());
        }
        if let Ok(JsetRead::Good { jset, bytes, .. }) = decode_jset(at, jset_magic) {
            add("jset", at[..bytes as usize].to_vec());
            for entry in jset.entries {
                match entry {
                    JsetEntry::BtreeKeys { keys, .. } => {
                        for k in keys.iter() {
                            let name = match k.ty {
                                KeyType::AllocV4 => "alloc_v4",
                                KeyType::Inode => "inode",
                                KeyType::Dirent => "dirent",
                                KeyType::Extent => "extent",
                                KeyType::BtreePtrV2 => "btree_ptr_v2",
                                _ => continue,
                            };
                            add(name, k.val.to_vec());
                        }
                    }
                    JsetEntry::BtreeRoot { ptr, .. } => add("btree_ptr_v2", ptr.encode()),
                    _ => {}
                }
            }
        }
    }
    // A dump of the image, its content after the gzip layer: whole, and cut after its first
    // runs (a campaign grows long inputs from short ones faster than the other way).
    let tmp = tempfile::tempdir().unwrap();
    let img = tmp.path().join("mem0.img");
    std::fs::write(&img, &image).unwrap();
    let dumped = tmp.path().join("mem0.dump");
    bcsim::dump::dump(&[img], &dumped, bcsim::dump::Keep::All).unwrap();
    let mut content = Vec::new();
    std::io::Read::read_to_end(
        &mut flate2::read::GzDecoder::new(std::fs::File::open(&dumped).unwrap()),
        &mut content,
    )
    .unwrap();
    for cut in [1024, 8192, content.len()] {
        add("dump", content[..cut.min(content.len())].to_vec());
    }

    for line in [
        "status",
        "show",
        "set metadata_replicas=1",
        "set data_replicas=2,foreground_target=ssd",
        "set allocator_stuck_timeout=30",
        "umount",
    ] {
        add("control_request", line.as_bytes().to_vec());
    }

    for t in TARGETS {
        // The seeds only: what campaigns found (`found-*`) stays.
        let d = dir("corpus", t.name);
        std::fs::create_dir_all(&d).unwrap();
        for old in inputs("corpus", t.name) {
            if old.file_name().is_some_and(|n| n.to_string_lossy().starts_with("seed-")) {
                std::fs::remove_file(old).unwrap();
            }
        }
        let got = seeds.get(t.name).map_or(&[][..], Vec::as_slice);
        assert!(!got.is_empty(), "no seed found for {}", t.name);
        for (i, bytes) in got.iter().enumerate() {
            std::fs::write(d.join(format!("seed-{i}")), bytes).unwrap();
        }
    }
}

/// Runs `target` on one committed regression input.
fn regression(name: &str, file: &str) {
    let data = std::fs::read(dir("regressions", name).join(file)).unwrap();
    (target(name).unwrap().run)(&data);
}

/// A bset whose key count claims billions of keys: the decoder reserved room for all of them
/// before reading the first and aborted on the allocation. It must reserve no more than the
/// bset's bytes can hold, and refuse the bset when the keys run out.
#[test]
fn btree_node_nr_keys_beyond_the_bset() {
    regression("btree_node", "nr-keys-beyond-the-bset");
}
