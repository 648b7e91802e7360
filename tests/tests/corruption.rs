//! Corruption campaign: seeded images damaged the way disks and bugs damage them, each case
//! checked against the repair contract:
//! - `fsck -n` writes nothing, and reports the damage (an fsck error id, or the replica it read
//!   around);
//! - `fsck -y` exits 0, 1 or 4, never 8;
//! - a second `fsck -n` then exits 0 (4 only with a stated reason: none is allowed yet);
//! - a read-write mount works after the repair;
//! - no panic, no hang (every case has a time budget).
//!
//! Each case draws a base filesystem (1 to 3 devices, `metadata_replicas` 1 or 2, a seeded file
//! workload with write-backs, then a clean unmount or a crash) and one damage, named below.
//!
//! `BCSIM_CORRUPTION_CASES=N` (default 24, the fixed part the README's test command runs) and
//! `BCSIM_CORRUPTION_SEED=S` (default 1107) choose the cases; case `i` uses seed `S + i`. A
//! failure prints the command that replays that one case. The full campaign is
//! `BCSIM_CORRUPTION_CASES=300 cargo test --release -p bcsim-tests --test corruption`.

// A failed unwrap or index in a test is that test failing, with its message.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::sync::Arc;
use std::sync::mpsc;
use std::time::Duration;

use bcsim::files::Files;
use bcsim::fs::Fs;
use bcsim::fsck::{FixMode, FsckOpts, FsckReport, fsck};
use bcsim::images::format_devices;
use bcsim::recovery::journal::{journal_devices, journal_read_opts};
use bcsim::recovery::{MountOpts, mount, open_view};
use bcsim::workload::{generate, run_op};
use fs_core::bpos::BtreeId;
use fs_core::btree::{BtreeConfig, NodeInfo};
use fs_core::dev::{BlockDevice, MemDevice, SharedDevice};
use fs_core::format::DeviceSpec;
use fs_core::opts::{OptId, OptValue, Options};
use fs_core::rng::Rng;
use fs_core::sb::DeviceSet;

const DEV_BYTES: u64 = 48 << 20;
const NODE_SIZE: u64 = 16 << 10;
const BUCKET: u64 = 256 << 10;
/// A case that takes longer than this hangs.
const CASE_BUDGET: Duration = Duration::from_secs(120);

/// The ways a case damages its images.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Damage {
    /// One byte of one superblock copy flipped.
    SbCopyByte,
    /// One byte of a node header flipped, on one replica.
    NodeByteOneReplica,
    /// A node zeroed on one replica.
    NodeZeroOneReplica,
    /// A node zeroed on every replica.
    NodeZeroAllReplicas,
    /// Two nodes' contents swapped, on one replica each.
    NodesSwapped,
    /// One copy of a journal entry to replay, not the newest, zeroed (after a crash).
    JournalCopyZeroed,
    /// One byte of one copy of a journal entry to replay, not the newest, flipped.
    JournalCopyByte,
    /// Every copy of a journal entry to replay, not the newest, zeroed.
    JournalEntryZeroed,
    /// Every journal bucket zeroed (after a crash).
    JournalLost,
}

const ALL: &[Damage] = &[
    Damage::SbCopyByte,
    Damage::NodeByteOneReplica,
    Damage::NodeZeroOneReplica,
    Damage::NodeZeroAllReplicas,
    Damage::NodesSwapped,
    Damage::JournalCopyZeroed,
    Damage::JournalCopyByte,
    Damage::JournalEntryZeroed,
    Damage::JournalLost,
];

impl Damage {
    fn needs_crash(self) -> bool {
        matches!(
            self,
            Damage::JournalCopyZeroed
                | Damage::JournalCopyByte
                | Damage::JournalEntryZeroed
                | Damage::JournalLost
        )
    }
}

/// A base filesystem and its damage, all drawn from `seed`.
#[derive(Debug)]
struct Case {
    seed: u64,
    nr_devs: u64,
    replicas: u64,
    ops: usize,
    crash: bool,
    damage: Damage,
}

impl Case {
    fn draw(seed: u64) -> Case {
        let mut rng = Rng::new(seed);
        let damage = ALL[rng.below(ALL.len() as u64) as usize];
        let nr_devs = 1 + rng.below(3);
        // Damage to one replica needs a second one.
        let one_replica = matches!(
            damage,
            Damage::NodeByteOneReplica
                | Damage::NodeZeroOneReplica
                | Damage::JournalCopyZeroed
                | Damage::JournalCopyByte
        );
        let nr_devs = if one_replica { nr_devs.max(2) } else { nr_devs };
        let replicas = if one_replica { 2 } else { 1 + rng.below(nr_devs.min(2)) };
        let crash = damage.needs_crash() || rng.below(2) == 0;
        Case { seed, nr_devs, replicas, ops: 150 + rng.below(250) as usize, crash, damage }
    }

    fn replay_command(&self) -> String {
        format!(
            "BCSIM_CORRUPTION_SEED={} BCSIM_CORRUPTION_CASES=1 cargo test --release -p bcsim-tests --test corruption",
            self.seed
        )
    }
}

fn set(devs: &[Arc<MemDevice>]) -> DeviceSet {
    DeviceSet::open(devs.iter().map(|d| d.clone() as SharedDevice).collect()).unwrap()
}

fn snapshot(devs: &[Arc<MemDevice>]) -> Vec<Vec<u8>> {
    devs.iter()
        .map(|d| {
            let mut buf = vec![0u8; DEV_BYTES as usize];
            d.read_at(&mut buf, 0).unwrap();
            buf
        })
        .collect()
}

/// Formats and fills the base filesystem; leaves it cleanly unmounted or crashed.
fn base(c: &Case) -> Vec<Arc<MemDevice>> {
    let devs: Vec<Arc<MemDevice>> =
        (0..c.nr_devs).map(|i| Arc::new(MemDevice::new(format!("dev{i}"), DEV_BYTES))).collect();
    let mut opts = Options::default();
    opts.set(OptId::MetadataReplicas, OptValue::U64(c.replicas)).unwrap();
    opts.set(OptId::BtreeNodeSize, OptValue::U64(NODE_SIZE)).unwrap();
    let specs: Vec<DeviceSpec> = devs
        .iter()
        .map(|d| DeviceSpec { bucket_size: Some(BUCKET), ..DeviceSpec::new(d.clone() as SharedDevice) })
        .collect();
    format_devices(&specs, &opts, None).unwrap();
    let mut fs = Fs::open(set(&devs), true, BtreeConfig { cache_nodes: 64, ..Default::default() }).unwrap();
    let mut files = Files::new(&mut fs).unwrap();
    for (i, op) in generate(c.seed, c.ops).iter().enumerate() {
        run_op(&mut fs, &mut files, op).unwrap();
        if i % 40 == 39 {
            fs.write_back().unwrap();
        }
    }
    fs.fsync().unwrap();
    drop(files);
    if c.crash {
        drop(fs);
    } else {
        fs.unmount().unwrap();
    }
    devs
}

/// Every node reachable from the roots, as the images hold them.
fn nodes(devs: &[Arc<MemDevice>]) -> Vec<NodeInfo> {
    let mut view = open_view(set(devs), &MountOpts::default()).unwrap();
    BtreeId::ALL.iter().flat_map(|&b| view.nodes(b).unwrap()).filter(|n| !n.ptrs.is_empty()).collect()
}

fn write(devs: &[Arc<MemDevice>], dev: u8, offset: u64, bytes: &[u8]) {
    devs[usize::from(dev)].write_at(bytes, offset).unwrap();
}

fn flip(devs: &[Arc<MemDevice>], dev: u8, offset: u64) {
    let mut b = [0u8];
    devs[usize::from(dev)].read_at(&mut b, offset).unwrap();
    b[0] ^= 0x5a;
    write(devs, dev, offset, &b);
}

/// Applies the case's damage; returns what was done, for the report, or `None` when the base
/// offers nothing to damage that way (the case is then skipped).
fn damage(c: &Case, devs: &[Arc<MemDevice>], rng: &mut Rng) -> Option<String> {
    let pick = |rng: &mut Rng, n: usize| rng.below(n as u64) as usize;
    match c.damage {
        Damage::SbCopyByte => {
            let dev = pick(rng, devs.len());
            let s = set(devs);
            let copy = pick(rng, 2);
            let at = s.device(dev)?.sb.offsets[copy] + 8 + rng.below(200);
            flip(devs, dev as u8, at);
            Some(format!("dev {dev} superblock copy {copy}: byte {at} flipped"))
        }
        Damage::NodeByteOneReplica | Damage::NodeZeroOneReplica | Damage::NodeZeroAllReplicas => {
            let all = nodes(devs);
            let n = all.get(pick(rng, all.len().max(1)))?;
            let replicas: Vec<_> = if c.damage == Damage::NodeZeroAllReplicas {
                n.ptrs.clone()
            } else {
                vec![n.ptrs[pick(rng, n.ptrs.len())]]
            };
            for p in &replicas {
                if c.damage == Damage::NodeByteOneReplica {
                    // Inside the checksummed header (past its checksum field).
                    flip(devs, p.dev, p.byte_offset() + 4 + rng.below(84));
                } else {
                    write(devs, p.dev, p.byte_offset(), &[0u8; 4096]);
                }
            }
            Some(format!(
                "{:?} btree {} level {} {}..{} at {:?}",
                c.damage, n.btree, n.level, n.min_key, n.max_key, replicas
            ))
        }
        Damage::NodesSwapped => {
            let all = nodes(devs);
            if all.len() < 2 {
                return None;
            }
            let (a, b) = (&all[pick(rng, all.len())], &all[pick(rng, all.len())]);
            if a.seq == b.seq {
                return None;
            }
            let (pa, pb) = (a.ptrs[0], b.ptrs[0]);
            let mut ba = vec![0u8; NODE_SIZE as usize];
            let mut bb = vec![0u8; NODE_SIZE as usize];
            devs[usize::from(pa.dev)].read_at(&mut ba, pa.byte_offset()).unwrap();
            devs[usize::from(pb.dev)].read_at(&mut bb, pb.byte_offset()).unwrap();
            write(devs, pa.dev, pa.byte_offset(), &bb);
            write(devs, pb.dev, pb.byte_offset(), &ba);
            Some(format!(
                "nodes {} {}..{} and {} {}..{} swapped",
                a.btree, a.min_key, a.max_key, b.btree, b.min_key, b.max_key
            ))
        }
        Damage::JournalCopyZeroed | Damage::JournalCopyByte | Damage::JournalEntryZeroed => {
            let s = set(devs);
            let read = journal::read::read_journal(&journal_devices(&s), &journal_read_opts(&s, 4096, false))
                .ok()?;
            // Not the newest entry: losing the newest entries looks exactly like a crash before
            // they were written, on any filesystem; only an entry with a later one can be missed.
            let older = read.entries.len().checked_sub(1).filter(|&n| n > 0)?;
            let e = read.entries.get(pick(rng, older))?;
            let copies: Vec<_> = match c.damage {
                Damage::JournalEntryZeroed => e.ptrs.clone(),
                _ => vec![e.ptrs[pick(rng, e.ptrs.len())]],
            };
            for p in &copies {
                if c.damage == Damage::JournalCopyByte {
                    flip(devs, p.dev, p.offset + 8 + rng.below(48));
                } else {
                    write(devs, p.dev, p.offset, &[0u8; 4096]);
                }
            }
            Some(format!(
                "{:?} seq {} ({} to replay) at {:?}",
                c.damage,
                e.jset.seq,
                read.entries.len(),
                copies
            ))
        }
        Damage::JournalLost => {
            let s = set(devs);
            for (i, m) in s.devices.iter().enumerate() {
                let Some(m) = m else { continue };
                for b in m.sb.journal.buckets() {
                    write(devs, i as u8, b * BUCKET, &vec![0u8; BUCKET as usize]);
                }
            }
            Some("every journal bucket zeroed".to_owned())
        }
    }
}

fn run_fsck(devs: &[Arc<MemDevice>], mode: FixMode) -> Result<FsckReport, String> {
    let o = FsckOpts { mode, force: true, mount: MountOpts::default() };
    fsck(set(devs), &o).map_err(|e| e.to_string())
}

/// Runs one case; `Ok(None)` when it was skipped, `Ok(Some(line))` when it passed.
fn run_case(c: &Case) -> Result<Option<String>, String> {
    let devs = base(c);
    let mut rng = Rng::new(c.seed ^ 0x00da_3a9e);
    let Some(what) = damage(c, &devs, &mut rng) else { return Ok(None) };
    let before = snapshot(&devs);

    let check = run_fsck(&devs, FixMode::No);
    if snapshot(&devs) != before {
        return Err(format!("{what}: fsck -n wrote"));
    }
    match &check {
        Ok(r) if r.problems.is_empty() => return Err(format!("{what}: fsck -n reported nothing")),
        Ok(_) => {}
        Err(e) => return Err(format!("{what}: fsck -n failed (exit 8): {e}")),
    }
    let fix = run_fsck(&devs, FixMode::Yes).map_err(|e| format!("{what}: fsck -y failed (exit 8): {e}"))?;
    let code = fix.exit_code();
    let again = run_fsck(&devs, FixMode::No).map_err(|e| format!("{what}: second fsck -n failed: {e}"))?;
    if !again.problems.is_empty() {
        return Err(format!("{what}: fsck -y exited {code}, then fsck -n found {:#?}", again.problems));
    }
    let m =
        mount(set(&devs), &MountOpts::default()).map_err(|e| format!("{what}: mount after repair: {e}"))?;
    m.fs.unmount().map_err(|e| format!("{what}: unmount after repair: {e}"))?;
    Ok(Some(format!("{what}: {} problems, fsck -y exit {code}", check.map_or(0, |r| r.problems.len()))))
}

/// Runs `c` on a thread of its own with a time budget; a panic or an overrun is a failure.
fn run_guarded(c: Case) -> Result<Option<String>, String> {
    let (tx, rx) = mpsc::channel();
    let label = format!("{c:?}");
    std::thread::spawn(move || {
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run_case(&c)));
        let _ = tx.send(r.unwrap_or_else(|p| {
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| (*s).to_owned()));
            Err(format!("panicked: {}", msg.unwrap_or_default()))
        }));
    });
    match rx.recv_timeout(CASE_BUDGET) {
        Ok(r) => r,
        Err(_) => Err(format!("{label}: no result within {CASE_BUDGET:?} (a hang)")),
    }
}

#[test]
fn corruption_campaign_keeps_the_repair_contract() {
    let env =
        |name: &str, default: u64| std::env::var(name).ok().and_then(|s| s.parse().ok()).unwrap_or(default);
    let seed = env("BCSIM_CORRUPTION_SEED", 1107);
    let cases = env("BCSIM_CORRUPTION_CASES", 24);
    eprintln!(
        "corruption campaign: seeds {seed}..{} (BCSIM_CORRUPTION_SEED, BCSIM_CORRUPTION_CASES)",
        seed + cases
    );
    let (mut passed, mut skipped, mut failures) = (0, 0, Vec::new());
    for s in seed..seed + cases {
        let c = Case::draw(s);
        let replay = c.replay_command();
        match run_guarded(c) {
            Ok(Some(line)) => {
                passed += 1;
                eprintln!("seed {s}: {line}");
            }
            Ok(None) => skipped += 1,
            Err(e) => {
                eprintln!("seed {s}: FAILED: {e}\n  replay: {replay}");
                failures.push(s);
            }
        }
    }
    eprintln!("corruption campaign: {passed} passed, {skipped} skipped, {} failed", failures.len());
    assert!(failures.is_empty(), "failed seeds {failures:?} (each prints its replay command above)");
}
