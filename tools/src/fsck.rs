//! fsck: the recovery passes with checking and repair, plus the cross-checks that need the
//! whole metadata. Exit codes follow fsck(8): 0 clean, 1 errors corrected, 4 errors left.
//!
//! `-n` recovers in memory only (journal keys as an overlay over read-only btrees) and writes
//! nothing, so the images stay byte-identical. `-y` and `-p` mount for real (journal replay
//! writes), fix what they may (`-p`: only errors bcachefs marks `FSCK_AUTOFIX`), record error
//! counts in the superblock by their stable ids, and unmount cleanly.
//!
//! Checks, in recovery-pass order: journal consistency (from journal read), check_topology
//! (every node of every btree read and validated; levels tile the key space),
//! check_allocations (alloc keys against the buckets extents and btree nodes use),
//! check_alloc_info (freespace and need_discard against alloc keys), check_dirents (dirents
//! pointing at missing inodes), check_nlinks (inode link counts).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use fs_core::bkey::alloc::bucket_pos;
use fs_core::bkey::ptr::SECTOR_BYTES;
use fs_core::bkey::{AllocV4, Bkey, DataType, Dirent, Extent, Inode, KeyType};
use fs_core::bpos::{Bpos, BtreeId};
use fs_core::btree::{Btrees, KeyOverlay};
use fs_core::error::{ErrCode, Error, Result};
use fs_core::fsck_err::{FsckErr, FsckFlags};
use fs_core::recovery_pass::RecoveryPass;
use fs_core::sb::DeviceSet;

use crate::recovery::{MountOpts, mount, open_read_only};

/// What fsck may change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FixMode {
    /// `-n`: check only, write nothing.
    No,
    /// `-y`: fix everything fixable.
    Yes,
    /// `-p`: fix what is safe to fix without asking (`FSCK_AUTOFIX`).
    Preen,
}

#[derive(Clone, Debug)]
pub struct FsckOpts {
    pub mode: FixMode,
    /// `-f`: check a clean filesystem too (otherwise a clean one gets only the quick checks).
    pub force: bool,
    pub mount: MountOpts,
}

/// One error found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub err: FsckErr,
    pub msg: String,
    pub fixed: bool,
}

#[derive(Clone, Debug, Default)]
pub struct FsckReport {
    pub problems: Vec<Problem>,
    pub log: Vec<String>,
    /// The full checks ran (not skipped as clean).
    pub checked: bool,
}

impl FsckReport {
    /// fsck(8) exit code: 0 clean, 1 all errors corrected, 4 errors left uncorrected.
    pub fn exit_code(&self) -> u8 {
        if self.problems.is_empty() {
            crate::exit::OK
        } else if self.problems.iter().all(|p| p.fixed) {
            crate::exit::ERRORS_CORRECTED
        } else {
            crate::exit::ERRORS_UNCORRECTED
        }
    }
}

impl FsckReport {
    /// The report as e2fsck-style text: one line per problem, then a summary naming `images`;
    /// with `verbose` the recovery log and passes first.
    pub fn text(&self, images: &str, verbose: bool) -> String {
        let mut out = String::new();
        if verbose {
            for line in &self.log {
                out.push_str(line);
                out.push('\n');
            }
        }
        for p in &self.problems {
            let what = if p.fixed { "fixed" } else { "not fixed" };
            out.push_str(&format!("{}: {} ({what})\n", p.err.name(), p.msg));
        }
        let fixed = self.problems.iter().filter(|p| p.fixed).count();
        out.push_str(&format!(
            "{images}: {} errors found, {fixed} fixed{}\n",
            self.problems.len(),
            if self.checked { "" } else { " (clean, quick check only)" }
        ));
        out
    }
}

/// A finding and, if it can be repaired, the updates that repair it.
struct Finding {
    err: FsckErr,
    msg: String,
    fix: Option<Vec<(BtreeId, Bkey)>>,
}

impl Finding {
    fn new(err: FsckErr, msg: String, fix: Option<Vec<(BtreeId, Bkey)>>) -> Self {
        Finding { err, msg, fix }
    }
}

/// Runs fsck on `set`.
pub fn fsck(set: DeviceSet, o: &FsckOpts) -> Result<FsckReport> {
    match o.mode {
        FixMode::No => check_only(set, o),
        FixMode::Yes | FixMode::Preen => check_and_fix(set, o),
    }
}

/// The errors journal read counted, as problems (`fixed` once recovery has dealt with them).
fn journal_problems(counts: &[(FsckErr, u64)], fixed: bool) -> Vec<Problem> {
    counts
        .iter()
        .filter(|(_, n)| *n > 0)
        .map(|&(err, n)| Problem { err, msg: format!("journal: {} ({n}x)", err.name()), fixed })
        .collect()
}

fn check_only(set: DeviceSet, o: &FsckOpts) -> Result<FsckReport> {
    let mut view = open_read_only(set, &o.mount)?;
    let mut report = FsckReport { log: std::mem::take(&mut view.log), ..FsckReport::default() };
    report.problems = journal_problems(view.journal.as_ref().map_or(&[][..], |j| &j.fsck_errors), false);
    if view.keys.is_none() && !o.force {
        report.log.push("filesystem is clean; use -f to check it anyway".to_owned());
        return Ok(report);
    }
    report.checked = true;
    let overlay = view.keys.as_ref().map(|k| k as &dyn KeyOverlay);
    let findings = run_checks(&view.set, &mut view.btrees, overlay, &mut report.log)?;
    report.problems.extend(findings.into_iter().map(|f| Problem { err: f.err, msg: f.msg, fixed: false }));
    Ok(report)
}

fn check_and_fix(set: DeviceSet, o: &FsckOpts) -> Result<FsckReport> {
    let was_clean = set.sb.is_clean();
    let mut mounted = mount(set, &o.mount)?;
    let mut report = FsckReport { log: std::mem::take(&mut mounted.log), ..FsckReport::default() };
    report.problems = journal_problems(&mounted.fsck_errors, true);
    report.problems.extend(mounted.alloc_repairs.iter().cloned());
    let mut fs = mounted.fs;
    if was_clean && !o.force {
        report.log.push("filesystem is clean; use -f to check it anyway".to_owned());
        fs.unmount()?;
        return Ok(report);
    }
    report.checked = true;
    let findings = run_checks(&fs.set, &mut fs.btrees, None, &mut report.log)?;
    let mut fixes = Vec::new();
    for f in findings {
        let allowed = o.mode == FixMode::Yes || f.err.flags().contains(FsckFlags::AUTOFIX);
        let fixed = match f.fix {
            Some(updates) if allowed => {
                fixes.extend(updates);
                true
            }
            _ => false,
        };
        report.problems.push(Problem { err: f.err, msg: f.msg, fixed });
    }
    if !fixes.is_empty() {
        fs.commit_repairs(fixes)?;
    }
    for p in &report.problems {
        fs.set.sb.count_error(p.err, 1);
    }
    fs.unmount()?;
    Ok(report)
}

fn scan(t: &mut Btrees, overlay: Option<&dyn KeyOverlay>, btree: BtreeId) -> Result<Vec<Bkey>> {
    let mut out = Vec::new();
    t.for_each_key(btree, overlay, |k| {
        out.push(k.to_key());
        Ok(())
    })?;
    Ok(out)
}

fn run_checks(
    set: &DeviceSet,
    t: &mut Btrees,
    ov: Option<&dyn KeyOverlay>,
    log: &mut Vec<String>,
) -> Result<Vec<Finding>> {
    let mut findings = Vec::new();
    log.push(format!("starting {}", RecoveryPass::CheckTopology.name()));
    let nodes = check_topology(t, &mut findings)?;
    log.push(format!("starting {}", RecoveryPass::CheckAllocations.name()));
    let alloc = check_allocations(set, t, ov, &nodes, &mut findings)?;
    log.push(format!("starting {}", RecoveryPass::CheckAllocInfo.name()));
    check_alloc_info(t, ov, &alloc, &mut findings)?;
    log.push(format!("starting {}", RecoveryPass::CheckDirents.name()));
    let inodes = check_dirents(t, ov, &mut findings)?;
    log.push(format!("starting {}", RecoveryPass::CheckNlinks.name()));
    check_nlinks(t, ov, &inodes, &mut findings)?;
    Ok(findings)
}

/// Reads every node of every btree; each level must tile the key space from POS_MIN to
/// POS_MAX. Returns the nodes for the allocation check.
fn check_topology(t: &mut Btrees, findings: &mut Vec<Finding>) -> Result<Vec<fs_core::btree::NodeInfo>> {
    let mut all = Vec::new();
    for &btree in BtreeId::ALL {
        let infos = match t.node_infos(btree) {
            Ok(i) => i,
            Err(e) if e.matches(ErrCode::Eio) => {
                findings.push(Finding::new(FsckErr::BtreeNodeReadError, format!("btree {btree}: {e}"), None));
                continue;
            }
            Err(e) => return Err(e),
        };
        let max_level = infos.iter().map(|n| n.level).max().unwrap_or(0);
        for level in 0..=max_level {
            let mut at: Vec<_> = infos.iter().filter(|n| n.level == level).collect();
            if at.is_empty() {
                continue;
            }
            at.sort_by_key(|n| n.min_key);
            let mut expect = Bpos::MIN;
            for n in &at {
                if n.min_key != expect {
                    findings.push(Finding::new(
                        FsckErr::BtreeNodeTopologyBadMinKey,
                        format!(
                            "btree {btree} level {level}: node {}..{} should start at {expect}",
                            n.min_key, n.max_key
                        ),
                        None,
                    ));
                }
                expect = n.max_key.successor();
            }
            if at.last().is_some_and(|n| n.max_key != Bpos::MAX) {
                findings.push(Finding::new(
                    FsckErr::BtreeNodeTopologyBadMaxKey,
                    format!("btree {btree} level {level}: last node does not end at POS_MAX"),
                    None,
                ));
            }
        }
        for line in t.take_log() {
            findings.push(Finding::new(FsckErr::BtreeNodeReadError, line, None));
        }
        all.extend(infos);
    }
    Ok(all)
}

/// What the metadata says a bucket should hold.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Usage {
    data_type: Option<DataType>,
    sectors: u32,
    max_ptr_gen: Option<u8>,
}

fn add_use(
    uses: &mut HashMap<(u8, u64), Usage>,
    key: (u8, u64),
    dt: DataType,
    sectors: u32,
    ptr_gen: Option<u8>,
) -> Option<String> {
    let u = uses.entry(key).or_default();
    let clash = u
        .data_type
        .filter(|&t| t != dt)
        .map(|t| format!("bucket {}:{} holds both {t} and {dt}", key.0, key.1));
    u.data_type = Some(dt);
    u.sectors = u.sectors.saturating_add(sectors);
    u.max_ptr_gen = match (u.max_ptr_gen, ptr_gen) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    };
    clash
}

/// `a` holding `dt` with `sectors`, flags kept consistent (NEED_DISCARD and NEED_INC_GEN exactly
/// when the bucket is need_discard, as the allocator writes them).
fn retyped(a: AllocV4, dt: DataType, sectors: u32) -> AllocV4 {
    let need_discard = fs_core::bkey::alloc::ALLOC_NEED_DISCARD;
    let inc_gen = fs_core::bkey::alloc::ALLOC_NEED_INC_GEN;
    let flags = if dt == DataType::NeedDiscard {
        need_discard | inc_gen
    } else {
        a.flags & !(need_discard | inc_gen)
    };
    AllocV4 { data_type: dt, dirty_sectors: sectors, flags, ..a }
}

/// Alloc keys against the buckets the metadata uses. Returns the alloc state with the fixes
/// applied, for the index check.
fn check_allocations(
    set: &DeviceSet,
    t: &mut Btrees,
    ov: Option<&dyn KeyOverlay>,
    nodes: &[fs_core::btree::NodeInfo],
    findings: &mut Vec<Finding>,
) -> Result<BTreeMap<Bpos, AllocV4>> {
    let bucket_of = |dev: u8, byte: u64| {
        let bs = set.sb.members.get(usize::from(dev)).map_or(1, |m| u64::from(m.bucket_size).max(1));
        (dev, byte / bs)
    };
    let mut uses: HashMap<(u8, u64), Usage> = HashMap::new();
    for (i, m) in set.sb.members.iter().enumerate() {
        if m.is_unused() {
            continue;
        }
        let bucket_sectors = (u64::from(m.bucket_size) / SECTOR_BYTES) as u32;
        for b in 0..u64::from(m.first_bucket) {
            add_use(&mut uses, (i as u8, b), DataType::Sb, bucket_sectors, None);
        }
        for b in set.device(i).map(|d| d.sb.journal.buckets().collect::<Vec<_>>()).unwrap_or_default() {
            add_use(&mut uses, (i as u8, b), DataType::Journal, bucket_sectors, None);
        }
    }
    let node_sectors = (set.sb.opts.btree_node_size() / SECTOR_BYTES) as u32;
    for n in nodes {
        for p in &n.ptrs {
            if let Some(msg) = add_use(
                &mut uses,
                bucket_of(p.dev, p.byte_offset()),
                DataType::Btree,
                node_sectors,
                Some(p.bucket_gen),
            ) {
                findings.push(Finding::new(FsckErr::PtrBucketDataTypeMismatch, msg, None));
            }
        }
    }
    t.for_each_key(BtreeId::Extents, ov, |k| {
        if k.ty != KeyType::Extent {
            return Ok(());
        }
        let e = Extent::decode(k.val).map_err(|e| e.btree(BtreeId::Extents).pos(k.pos))?;
        for p in &e.ptrs {
            if let Some(msg) = add_use(
                &mut uses,
                bucket_of(p.dev, p.byte_offset()),
                DataType::User,
                k.size,
                Some(p.bucket_gen),
            ) {
                findings.push(Finding::new(
                    FsckErr::PtrBucketDataTypeMismatch,
                    format!("{msg} (extent {})", k.pos),
                    None,
                ));
            }
        }
        Ok(())
    })?;
    let alloc: BTreeMap<Bpos, AllocV4> = crate::fs::read_alloc_keys(t, ov)?.into_iter().collect();
    let mut fixed = alloc.clone();
    let mut keys: Vec<(u8, u64)> = uses.keys().copied().collect();
    keys.extend(alloc.keys().filter_map(|p| u8::try_from(p.inode).ok().map(|d| (d, p.offset))));
    keys.sort_unstable();
    keys.dedup();
    for (dev, bucket) in keys {
        let pos = bucket_pos(dev, bucket);
        let want = uses.get(&(dev, bucket)).copied().unwrap_or_default();
        let have = alloc.get(&pos).copied();
        let fix = |a: AllocV4| Some(vec![(BtreeId::Alloc, Bkey::new(pos, KeyType::AllocV4, a.encode()))]);
        match (have, want.data_type) {
            (None, Some(dt)) => {
                let a = retyped(AllocV4::free(want.max_ptr_gen.unwrap_or(0)), dt, want.sectors);
                findings.push(Finding::new(
                    FsckErr::PtrToMissingAllocKey,
                    format!(
                        "bucket {dev}:{bucket} in use ({dt}, {} sectors) but missing in alloc btree",
                        want.sectors
                    ),
                    fix(a),
                ));
                fixed.insert(pos, a);
            }
            (None, None) => {}
            (Some(a), Some(dt)) => {
                if want.max_ptr_gen.is_some_and(|g| g > a.bucket_gen) {
                    findings.push(Finding::new(
                        FsckErr::PtrGenNewerThanBucketGen,
                        format!("bucket {dev}:{bucket}: pointer gen newer than bucket gen {}", a.bucket_gen),
                        None,
                    ));
                }
                if a.data_type != dt || a.dirty_sectors != want.sectors {
                    let err = if a.data_type != dt {
                        FsckErr::AllocKeyDataTypeWrong
                    } else {
                        FsckErr::AllocKeyDirtySectorsWrong
                    };
                    let b = retyped(a, dt, want.sectors);
                    findings.push(Finding::new(
                        err,
                        format!(
                            "bucket {dev}:{bucket}: alloc key says {} with {} sectors, metadata says {dt} with {}",
                            a.data_type, a.dirty_sectors, want.sectors
                        ),
                        fix(b),
                    ));
                    fixed.insert(pos, b);
                }
            }
            (Some(a), None) => {
                if !matches!(a.data_type, DataType::Free | DataType::NeedDiscard) {
                    // Nothing points into it: it is empty, and was written, so it waits for discard.
                    let b = retyped(a, DataType::NeedDiscard, 0);
                    findings.push(Finding::new(
                        FsckErr::AllocKeyDataTypeWrong,
                        format!(
                            "bucket {dev}:{bucket}: alloc key says {} with {} sectors, but nothing uses it",
                            a.data_type, a.dirty_sectors
                        ),
                        fix(b),
                    ));
                    fixed.insert(pos, b);
                }
            }
        }
    }
    Ok(fixed)
}

/// freespace and need_discard keys must match the alloc keys exactly.
fn check_alloc_info(
    t: &mut Btrees,
    ov: Option<&dyn KeyOverlay>,
    alloc: &BTreeMap<Bpos, AllocV4>,
    findings: &mut Vec<Finding>,
) -> Result<()> {
    let index = [
        (BtreeId::Freespace, DataType::Free, FsckErr::FreespaceKeyWrong),
        (BtreeId::NeedDiscard, DataType::NeedDiscard, FsckErr::NeedDiscardKeyWrong),
    ];
    for (btree, dt, err) in index {
        let mut have = BTreeSet::new();
        t.for_each_key(btree, ov, |k| {
            have.insert(k.pos);
            Ok(())
        })?;
        let want: BTreeSet<Bpos> = alloc.iter().filter(|(_, a)| a.data_type == dt).map(|(p, _)| *p).collect();
        for p in want.difference(&have) {
            findings.push(Finding::new(
                err,
                format!("bucket {}:{} is {dt} but has no {btree} key", p.inode, p.offset),
                Some(vec![(btree, Bkey::new(*p, KeyType::Set, Vec::new()))]),
            ));
        }
        for p in have.difference(&want) {
            findings.push(Finding::new(
                err,
                format!("{btree} key for bucket {}:{} that is not {dt}", p.inode, p.offset),
                Some(vec![(btree, Bkey::whiteout(*p))]),
            ));
        }
    }
    Ok(())
}

/// Dirents must point at inodes that exist. Returns the inodes (inum -> inode).
fn check_dirents(
    t: &mut Btrees,
    ov: Option<&dyn KeyOverlay>,
    findings: &mut Vec<Finding>,
) -> Result<BTreeMap<u64, Inode>> {
    let mut inodes = BTreeMap::new();
    for k in scan(t, ov, BtreeId::Inodes)? {
        if k.ty == KeyType::Inode {
            inodes.insert(
                k.pos.offset,
                Inode::decode(&k.val).map_err(|e| e.btree(BtreeId::Inodes).pos(k.pos))?,
            );
        }
    }
    for k in scan(t, ov, BtreeId::Dirents)? {
        let d = Dirent::decode(&k.val).map_err(|e| e.btree(BtreeId::Dirents).pos(k.pos))?;
        if !inodes.contains_key(&d.target) {
            findings.push(Finding::new(
                FsckErr::DirentToMissingInode,
                format!(
                    "dirent '{}' in directory {} points at missing inode {}",
                    d.name, k.pos.inode, d.target
                ),
                Some(vec![(BtreeId::Dirents, Bkey::whiteout(k.pos))]),
            ));
        }
    }
    Ok(inodes)
}

/// Each inode's link count must match the dirents naming it (directories: 2 plus their
/// subdirectories). An inode no dirent names is unreachable.
fn check_nlinks(
    t: &mut Btrees,
    ov: Option<&dyn KeyOverlay>,
    inodes: &BTreeMap<u64, Inode>,
    findings: &mut Vec<Finding>,
) -> Result<()> {
    // Inodes an unlink is still deleting (link count 0, listed in deleted_inodes) are named by
    // no dirent on purpose: the next mount finishes them.
    let mut dying = BTreeSet::new();
    t.for_each_key(BtreeId::DeletedInodes, ov, |k| {
        dying.insert(k.pos.offset);
        Ok(())
    })?;
    let mut links: HashMap<u64, u32> = HashMap::new();
    let mut subdirs: HashMap<u64, u32> = HashMap::new();
    for k in scan(t, ov, BtreeId::Dirents)? {
        let d = Dirent::decode(&k.val).map_err(|e| e.btree(BtreeId::Dirents).pos(k.pos))?;
        if inodes.contains_key(&d.target) {
            *links.entry(d.target).or_default() += 1;
            if d.d_type == fs_core::bkey::fs::DT_DIR {
                *subdirs.entry(k.pos.inode).or_default() += 1;
            }
        }
    }
    for (&inum, inode) in inodes {
        let named = links.get(&inum).copied().unwrap_or(0);
        if named == 0 && inode.nlink == 0 && dying.contains(&inum) {
            continue;
        }
        if named == 0 && inum != crate::files::ROOT_INO {
            findings.push(Finding::new(
                FsckErr::InodeUnreachable,
                format!("inode {inum} is not in any directory"),
                None,
            ));
            continue;
        }
        let want = if inode.is_dir() { 2 + subdirs.get(&inum).copied().unwrap_or(0) } else { named };
        if inode.nlink != want {
            let fixed = Inode { nlink: want, ..*inode };
            findings.push(Finding::new(
                FsckErr::InodeWrongNlink,
                format!("inode {inum} has link count {}, should be {want}", inode.nlink),
                Some(vec![(
                    BtreeId::Inodes,
                    Bkey::new(Bpos::new(0, inum, 0), KeyType::Inode, fixed.encode()),
                )]),
            ));
        }
    }
    Ok(())
}

/// What recovery's allocation check found: the alloc keys as they should be, the problems,
/// and the updates that fix them.
pub type AllocRepair = (BTreeMap<Bpos, AllocV4>, Vec<Problem>, Vec<(BtreeId, Bkey)>);

/// check_allocations and check_alloc_info as recovery runs them after an unclean shutdown:
/// through the journal overlay, before the allocator exists. Returns the alloc keys as they
/// should be and the updates that make the btrees say so.
///
/// bcsim journals btree-node allocations apart from the pointers to those nodes (bcachefs
/// commits both in one btree update), so after a crash a node that was allocated or freed but
/// never reached durable roots leaves a stale alloc key; this pass is what puts that right.
pub fn recovery_alloc_check(
    set: &DeviceSet,
    t: &mut Btrees,
    ov: Option<&dyn KeyOverlay>,
) -> Result<AllocRepair> {
    let mut findings = Vec::new();
    let nodes = check_topology(t, &mut findings)?;
    if let Some(f) = findings.first() {
        return Err(Error::new(ErrCode::BtreeNeedTopologyRepair, format!("{} (run fsck)", f.msg)));
    }
    let alloc = check_allocations(set, t, ov, &nodes, &mut findings)?;
    check_alloc_info(t, ov, &alloc, &mut findings)?;
    let mut fixes = Vec::new();
    let mut problems = Vec::new();
    for f in findings {
        let fixed = f.fix.is_some();
        fixes.extend(f.fix.unwrap_or_default());
        problems.push(Problem { err: f.err, msg: f.msg, fixed });
    }
    Ok((alloc, problems, fixes))
}
