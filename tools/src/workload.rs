//! Seeded workloads over the file layer, with a model that says what the filesystem must
//! contain afterwards.
//!
//! Operations are generated against the model so each is valid when it runs: create a file or
//! directory, write (or overwrite) a chunk, truncate, unlink, rename, fsync. Transactions are
//! atomic and the journal is ordered, so after a crash the filesystem must equal the model
//! after some prefix of the operations that ends at or after the last fsync.

use std::collections::{BTreeMap, BTreeSet};

use fs_core::error::{ErrCode, Error, Result};
use fs_core::rng::Rng;

use crate::files::{Files, ROOT_INO, chunk_data};
use crate::fs::Fs;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    Mkdir { path: String },
    Create { path: String },
    Write { path: String, chunk: u64, seed: u64 },
    Truncate { path: String, chunks: u64 },
    Unlink { path: String },
    Rename { from: String, to: String },
    Fsync,
}

/// What the filesystem holds: directories, and files with their chunks' data seeds.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Model {
    pub dirs: BTreeSet<String>,
    pub files: BTreeMap<String, BTreeMap<u64, u64>>,
}

fn parent(path: &str) -> &str {
    path.rsplit_once('/').map_or("", |(p, _)| p)
}

fn name(path: &str) -> &str {
    path.rsplit_once('/').map_or(path, |(_, n)| n)
}

impl Model {
    pub fn apply(&mut self, op: &Op) {
        match op {
            Op::Mkdir { path } => {
                self.dirs.insert(path.clone());
            }
            Op::Create { path } => {
                self.files.insert(path.clone(), BTreeMap::new());
            }
            Op::Write { path, chunk, seed } => {
                if let Some(f) = self.files.get_mut(path) {
                    f.insert(*chunk, *seed);
                }
            }
            Op::Truncate { path, chunks } => {
                if let Some(f) = self.files.get_mut(path) {
                    f.retain(|c, _| c < chunks);
                }
            }
            Op::Unlink { path } => {
                self.files.remove(path);
            }
            Op::Rename { from, to } => {
                if let Some(f) = self.files.remove(from) {
                    self.files.insert(to.clone(), f);
                }
            }
            Op::Fsync => {}
        }
    }
}

/// Generates `n` operations from `seed`, each valid on the model as it stands.
pub fn generate(seed: u64, n: usize) -> Vec<Op> {
    let mut rng = Rng::new(seed);
    let mut model = Model::default();
    let mut names = SortedNames::default();
    let mut ops = Vec::with_capacity(n);
    let mut counter = 0u64;
    while ops.len() < n {
        // A directory, the root first, in the model's order; then a file likewise (`pick`).
        let d = rng.below(1 + model.dirs.len() as u64) as usize;
        let dir = d.checked_sub(1).and_then(|d| model.dirs.iter().nth(d)).cloned().unwrap_or_default();
        let has_files = names.len > 0;
        counter += 1;
        let op = match rng.below(100) {
            0..=7 if model.dirs.len() < 8 => Op::Mkdir { path: format!("{dir}/d{counter}") },
            0..=19 => Op::Create { path: format!("{dir}/f{counter}") },
            20..=64 if has_files => {
                Op::Write { path: names.pick(&mut rng), chunk: rng.below(6), seed: rng.next_u64() }
            }
            65..=71 if has_files => Op::Truncate { path: names.pick(&mut rng), chunks: rng.below(4) },
            72..=79 if has_files => Op::Unlink { path: names.pick(&mut rng) },
            80..=87 if has_files => {
                Op::Rename { from: names.pick(&mut rng), to: format!("{dir}/r{counter}") }
            }
            _ => Op::Fsync,
        };
        model.apply(&op);
        names.apply(&op);
        ops.push(op);
    }
    ops
}

/// Names per block of [`SortedNames`] before a block is split.
const NAME_BLOCK: usize = 512;

/// The model's file names in sorted order, so that the generator can take the `i`-th as
/// `model.files.keys()` yields it without collecting every name for every operation (which
/// made a workload of n operations cost n² name copies). Sorted blocks of up to
/// `2 * NAME_BLOCK` names, none empty: an insert or remove moves names within one block, and
/// finding the `i`-th walks the block lengths.
#[derive(Debug, Default)]
struct SortedNames {
    blocks: Vec<Vec<String>>,
    len: usize,
}

impl SortedNames {
    /// Keeps the names in step with [`Model::apply`] of the same operation.
    fn apply(&mut self, op: &Op) {
        match op {
            Op::Create { path } => self.insert(path.clone()),
            Op::Unlink { path } => {
                self.remove(path);
            }
            Op::Rename { from, to } => {
                if self.remove(from) {
                    self.insert(to.clone());
                }
            }
            Op::Mkdir { .. } | Op::Write { .. } | Op::Truncate { .. } | Op::Fsync => {}
        }
    }

    /// The block that holds `name`, or would: the first whose last name is not below it.
    fn block_of(&self, name: &str) -> usize {
        self.blocks.partition_point(|b| b.last().is_some_and(|last| last.as_str() < name))
    }

    fn insert(&mut self, name: String) {
        let at = self.block_of(&name).min(self.blocks.len().saturating_sub(1));
        let Some(block) = self.blocks.get_mut(at) else {
            self.blocks.push(vec![name]);
            self.len += 1;
            return;
        };
        let Err(i) = block.binary_search(&name) else { return };
        block.insert(i, name);
        self.len += 1;
        if block.len() > 2 * NAME_BLOCK {
            let tail = block.split_off(NAME_BLOCK);
            self.blocks.insert(at + 1, tail);
        }
    }

    /// True if `name` was there.
    fn remove(&mut self, name: &str) -> bool {
        let at = self.block_of(name);
        let Some(block) = self.blocks.get_mut(at) else { return false };
        let Ok(i) = block.binary_search_by(|n| n.as_str().cmp(name)) else { return false };
        block.remove(i);
        if block.is_empty() {
            self.blocks.remove(at);
        }
        self.len -= 1;
        true
    }

    fn get(&self, mut i: usize) -> Option<&String> {
        for block in &self.blocks {
            match block.get(i) {
                Some(name) => return Some(name),
                None => i -= block.len(),
            }
        }
        None
    }

    /// A name drawn as `Rng::choose` draws from the sorted names; the caller checks there is
    /// one.
    fn pick(&self, rng: &mut Rng) -> String {
        self.get(rng.below(self.len as u64) as usize).cloned().unwrap_or_default()
    }
}

/// Resolves a path ("" is the root) to an inode number.
pub fn resolve(fs: &mut Fs, path: &str) -> Result<u64> {
    let mut inum = ROOT_INO;
    for part in path.split('/').filter(|p| !p.is_empty()) {
        inum = Files::lookup(fs, inum, part)?
            .ok_or_else(|| Error::new(ErrCode::Enoent, format!("{path}: '{part}' not found")))?;
    }
    Ok(inum)
}

/// Runs one operation.
pub fn run_op(fs: &mut Fs, files: &mut Files, op: &Op) -> Result<()> {
    match op {
        Op::Mkdir { path } | Op::Create { path } => {
            let dir = resolve(fs, parent(path))?;
            files.create(fs, dir, name(path), matches!(op, Op::Mkdir { .. }))?;
        }
        Op::Write { path, chunk, seed } => {
            let inum = resolve(fs, path)?;
            files.write(fs, inum, *chunk, *seed)?;
        }
        Op::Truncate { path, chunks } => {
            let inum = resolve(fs, path)?;
            files.truncate(fs, inum, *chunks)?;
        }
        Op::Unlink { path } => {
            let dir = resolve(fs, parent(path))?;
            files.unlink(fs, dir, name(path))?;
        }
        Op::Rename { from, to } => {
            let (d1, d2) = (resolve(fs, parent(from))?, resolve(fs, parent(to))?);
            files.rename(fs, d1, name(from), d2, name(to))?;
        }
        Op::Fsync => {
            fs.fsync()?;
        }
    }
    Ok(())
}

/// Reads the whole tree back as a model, checking every chunk's data against its checksum.
/// Data seeds cannot be read back, so chunks carry the seed `0` here; compare with
/// [`matches_model`].
fn walk(
    fs: &mut Fs,
    dir: u64,
    path: &str,
    out: &mut Model,
    data: &mut BTreeMap<String, BTreeMap<u64, Vec<u8>>>,
) -> Result<()> {
    for (n, inum, is_dir) in Files::readdir(fs, dir)? {
        let p = format!("{path}/{n}");
        if is_dir {
            out.dirs.insert(p.clone());
            walk(fs, inum, &p, out, data)?;
        } else {
            let inode = Files::inode(fs, inum)?.ok_or_else(|| {
                Error::new(ErrCode::Enoent, format!("{p}: dirent points at missing inode {inum}"))
            })?;
            let chunks = inode.size.div_ceil(crate::files::CHUNK_BYTES as u64);
            let mut f = BTreeMap::new();
            let mut d = BTreeMap::new();
            for c in 0..chunks {
                if let Some(bytes) = Files::read(fs, inum, c)? {
                    f.insert(c, 0);
                    d.insert(c, bytes);
                }
            }
            out.files.insert(p.clone(), f);
            data.insert(p, d);
        }
    }
    Ok(())
}

/// True if the filesystem holds exactly what `model` says, data included.
pub fn matches_model(fs: &mut Fs, model: &Model) -> Result<bool> {
    let mut seen = Model::default();
    let mut data = BTreeMap::new();
    walk(fs, ROOT_INO, "", &mut seen, &mut data)?;
    if seen.dirs != model.dirs || seen.files.len() != model.files.len() {
        return Ok(false);
    }
    for (path, chunks) in &model.files {
        let Some(got) = data.get(path) else { return Ok(false) };
        if got.len() != chunks.len() {
            return Ok(false);
        }
        for (c, seed) in chunks {
            if got.get(c) != Some(&chunk_data(*seed, *c)) {
                return Ok(false);
            }
        }
    }
    Ok(true)
}

/// Which prefix lengths (number of operations applied) the filesystem matches, among
/// `from..=to`.
pub fn matching_prefixes(fs: &mut Fs, ops: &[Op], from: usize, to: usize) -> Result<Vec<usize>> {
    let mut model = Model::default();
    for op in ops.iter().take(from) {
        model.apply(op);
    }
    let mut out = Vec::new();
    for n in from..=to.min(ops.len()) {
        if n > from {
            if let Some(op) = ops.get(n - 1) {
                model.apply(op);
            }
        }
        if matches_model(fs, &model)? {
            out.push(n);
        }
    }
    Ok(out)
}

/// What [`run_on_images`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunReport {
    /// The directory the workload ran in: `/` on a filesystem it has not run on, else the
    /// first free `/run<N>`.
    pub dir: String,
    pub ops_run: usize,
    /// Operations done when the last fsync returned.
    pub last_fsync_after: usize,
    pub crashed: bool,
    pub unflushed_writes_lost: u64,
    pub mount_log: Vec<String>,
}

/// The directory a workload runs in when the filesystem already holds a name it would create at
/// the top (a workload ran there before): the first free `/run<N>`, made now. `None`: the top.
fn own_dir(fs: &mut Fs, files: &mut Files, work: &[Op]) -> Result<Option<String>> {
    let top = |op: &Op| -> Option<String> {
        let path = match op {
            Op::Mkdir { path } | Op::Create { path } => path,
            _ => return None,
        };
        path.split('/').find(|p| !p.is_empty()).map(str::to_owned)
    };
    let mut collides = false;
    for name in work.iter().filter_map(top) {
        if Files::lookup(fs, crate::files::ROOT_INO, &name)?.is_some() {
            collides = true;
            break;
        }
    }
    if !collides {
        return Ok(None);
    }
    for n in 1u64.. {
        let name = format!("run{n}");
        if Files::lookup(fs, crate::files::ROOT_INO, &name)?.is_none() {
            files.create(fs, crate::files::ROOT_INO, &name, true)?;
            return Ok(Some(format!("/{name}")));
        }
    }
    Ok(None)
}

/// `op` with its paths moved under directory `dir`.
fn under(dir: &str, op: &Op) -> Op {
    let p = |path: &str| format!("{dir}{path}");
    match op {
        Op::Mkdir { path } => Op::Mkdir { path: p(path) },
        Op::Create { path } => Op::Create { path: p(path) },
        Op::Write { path, chunk, seed } => Op::Write { path: p(path), chunk: *chunk, seed: *seed },
        Op::Truncate { path, chunks } => Op::Truncate { path: p(path), chunks: *chunks },
        Op::Unlink { path } => Op::Unlink { path: p(path) },
        Op::Rename { from, to } => Op::Rename { from: p(from), to: p(to) },
        Op::Fsync => Op::Fsync,
    }
}

/// Mounts the images, runs `ops` operations generated from `seed`, then unmounts cleanly or,
/// with `crash_after`, stops dead after that many operations: each image sits behind a write
/// cache that the crash drops, so only flushed writes reach the images, as after a power cut.
pub fn run_on_images(
    paths: &[std::path::PathBuf],
    ops: usize,
    seed: u64,
    crash_after: Option<usize>,
    mopts: &crate::recovery::MountOpts,
) -> Result<RunReport> {
    run_on_images_with(paths, ops, seed, crash_after, mopts, fs_core::btree::BtreeConfig::default(), 1)
}

/// [`run_on_images`] with btree settings (a `seq_seed` makes the nodes it writes the same every
/// run, for image sets built to be shared), doing only every `fsync_every`-th fsync of the
/// workload: the others are skipped, so each journal entry gathers that many times the keys.
pub fn run_on_images_with(
    paths: &[std::path::PathBuf],
    ops: usize,
    seed: u64,
    crash_after: Option<usize>,
    mopts: &crate::recovery::MountOpts,
    cfg: fs_core::btree::BtreeConfig,
    fsync_every: usize,
) -> Result<RunReport> {
    use fs_core::dev::{CrashMode, FaultyDevice, SharedDevice};
    use std::sync::Arc;
    if crash_after.is_some_and(|k| k > ops) {
        return Err(Error::new(ErrCode::InvalidArgument, "--crash-after is larger than --ops"));
    }
    let caches: Vec<Arc<FaultyDevice>> = paths
        .iter()
        .map(|p| crate::images::open_image(p, true).map(|d| Arc::new(FaultyDevice::new(d, seed))))
        .collect::<Result<_>>()?;
    let set = fs_core::sb::DeviceSet::open(caches.iter().map(|c| c.clone() as SharedDevice).collect())?;
    crate::control::refuse_if_mounted(set.sb.uuid, "a workload run")?;
    for c in &caches {
        c.set_volatile_cache(true);
        // Crashes are the cache's; the images are synced once, at the end.
        c.set_host_sync(false);
    }
    // Reproducible: no reclaim thread, whose timer would write at different points each run;
    // reclaim steps after every operation on a clock that advances one millisecond per
    // operation (so journal_flush_delay still acts, at the same operations every time).
    let mopts = crate::recovery::MountOpts { reclaim: crate::recovery::ReclaimMode::Manual, ..mopts.clone() };
    let mounted = crate::recovery::mount_with(set, &mopts, cfg)?;
    let mount_log = mounted.log;
    let mut fs = mounted.fs;
    let mut files = Files::new(&mut fs)?;
    let stop = crash_after.unwrap_or(ops);
    let mut last_fsync_after = 0;
    let mut work = generate(seed, ops);
    let dir = own_dir(&mut fs, &mut files, &work)?;
    if let Some(d) = &dir {
        work = work.iter().map(|op| under(d, op)).collect();
    }
    let t0 = std::time::Instant::now();
    let mut meter = crate::recovery::progress::Meter::new(mopts.progress, "workload", "operations");
    let mut fsyncs = 0usize;
    for (i, op) in work.iter().take(stop).enumerate() {
        meter.tick(i, stop, &mut Vec::new());
        let skipped = *op == Op::Fsync && {
            fsyncs += 1;
            fsyncs % fsync_every.max(1) != 0
        };
        if !skipped {
            run_op(&mut fs, &mut files, op)
                .map_err(|e| e.prefix(format_args!("operation {} ({op:?})", i + 1)))?;
            if *op == Op::Fsync {
                last_fsync_after = i + 1;
            }
        }
        fs.tick(t0 + std::time::Duration::from_millis(i as u64 + 1))?;
    }
    let mut lost = 0;
    if crash_after.is_some() {
        drop(files);
        drop(fs);
        for c in &caches {
            lost += c.crash(CrashMode::DropUnflushed)?.lost_writes;
        }
    } else {
        fs.unmount()?;
    }
    for c in &caches {
        c.sync_host()?;
    }
    Ok(RunReport {
        dir: dir.unwrap_or_else(|| "/".to_owned()),
        ops_run: stop,
        last_fsync_after,
        crashed: crash_after.is_some(),
        unflushed_writes_lost: lost,
        mount_log,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The generator as it was written first: every name collected for every operation. Seeds
    /// name committed images and recorded outputs, so the faster generator must draw the same
    /// operations from every seed.
    fn generate_by_collecting(seed: u64, n: usize) -> Vec<Op> {
        let mut rng = Rng::new(seed);
        let mut model = Model::default();
        let mut ops = Vec::with_capacity(n);
        let mut counter = 0u64;
        while ops.len() < n {
            let dirs: Vec<String> =
                std::iter::once(String::new()).chain(model.dirs.iter().cloned()).collect();
            let files: Vec<String> = model.files.keys().cloned().collect();
            let dir = rng.choose(&dirs).cloned().unwrap_or_default();
            counter += 1;
            let pick = |rng: &mut Rng| rng.choose(&files).cloned().unwrap_or_default();
            let op = match rng.below(100) {
                0..=7 if model.dirs.len() < 8 => Op::Mkdir { path: format!("{dir}/d{counter}") },
                0..=19 => Op::Create { path: format!("{dir}/f{counter}") },
                20..=64 if !files.is_empty() => {
                    Op::Write { path: pick(&mut rng), chunk: rng.below(6), seed: rng.next_u64() }
                }
                65..=71 if !files.is_empty() => Op::Truncate { path: pick(&mut rng), chunks: rng.below(4) },
                72..=79 if !files.is_empty() => Op::Unlink { path: pick(&mut rng) },
                80..=87 if !files.is_empty() => {
                    Op::Rename { from: pick(&mut rng), to: format!("{dir}/r{counter}") }
                }
                _ => Op::Fsync,
            };
            model.apply(&op);
            ops.push(op);
        }
        ops
    }

    #[test]
    fn the_generator_draws_what_collecting_every_name_drew() {
        // 20000 operations hold thousands of files: blocks split and empty.
        for seed in [0, 1, 1107, 0xdead_beef] {
            println!("seed {seed}");
            assert_eq!(generate(seed, 20000), generate_by_collecting(seed, 20000), "seed {seed}");
        }
    }

    /// A workload told to do one fsync in `n` skips the others: the last fsync it reports is
    /// the last n-th one, and the journal it leaves has fewer entries, each holding more keys.
    #[test]
    fn a_workload_doing_one_fsync_in_n_skips_the_others() {
        const SEED: u64 = 3;
        const OPS: usize = 400;
        println!("seed {SEED}");
        let fsyncs_at: Vec<usize> = generate(SEED, OPS)
            .iter()
            .enumerate()
            .filter(|(_, op)| **op == Op::Fsync)
            .map(|(i, _)| i + 1)
            .collect();
        let mut newest = Vec::new();
        for every in [1, 3] {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("a.img");
            let spec =
                crate::images::ImageSpec { size: Some(256 << 20), ..crate::images::ImageSpec::new(&path) };
            crate::images::format_images(&[spec], &fs_core::opts::Options::default(), None, false).unwrap();
            let paths = [path];
            let mopts = crate::recovery::MountOpts::default();
            let cfg = fs_core::btree::BtreeConfig::default();
            let r = run_on_images_with(&paths, OPS, SEED, Some(OPS), &mopts, cfg, every).unwrap();
            let want = fsyncs_at.iter().skip(every - 1).step_by(every).next_back().copied().unwrap();
            assert_eq!(r.last_fsync_after, want, "one fsync in {every}");
            let set = crate::images::open_device_set(&paths, true).unwrap();
            let mounted = crate::recovery::mount_with(set, &mopts, cfg).unwrap();
            newest.push(mounted.replayed.unwrap().1);
            mounted.fs.unmount().unwrap();
        }
        assert!(fsyncs_at.len() > 20, "the workload must fsync often: {}", fsyncs_at.len());
        assert!(newest[1] * 2 < newest[0], "entries with every fsync {}, one in 3 {}", newest[0], newest[1]);
    }

    #[test]
    fn sorted_names_keep_the_order_of_the_model() {
        let mut names = SortedNames::default();
        let mut model = BTreeSet::new();
        let mut rng = Rng::new(7);
        println!("seed 7");
        for _ in 0..20000 {
            let name = format!("n{}", rng.below(3000));
            if rng.below(3) == 0 {
                assert_eq!(names.remove(&name), model.remove(&name));
            } else {
                names.insert(name.clone());
                model.insert(name);
            }
            assert_eq!(names.len, model.len());
        }
        let listed: Vec<&String> = (0..names.len).filter_map(|i| names.get(i)).collect();
        assert_eq!(listed, model.iter().collect::<Vec<_>>());
        assert!(names.blocks.iter().all(|b| !b.is_empty() && b.len() <= 2 * NAME_BLOCK));
        assert!(names.blocks.len() > 1, "the test must split blocks");
    }
}
