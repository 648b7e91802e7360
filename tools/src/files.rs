//! A small file layer over transactions, for workloads: directories, regular files, data
//! written to data buckets on `data_replicas` devices, overwrite, truncate, unlink, rename,
//! fsync.
//!
//! Files are written in whole chunks of [`CHUNK_SECTORS`]; chunk `c` of inode `i` is the extent
//! at `i:(c+1)*CHUNK_SECTORS` of that size, so extents never partly overlap. Each operation is
//! one transaction (inode, dirent and extent keys together), so after a crash an operation is
//! there whole or not at all; the buckets' sector counts follow it ([`Fs::commit_with_sectors`]).
//! The exception is unlinking a file with more extents than one transaction carries: the name
//! goes in one, the data in more, and an interrupted deletion is finished on the next attach
//! ([`Files::delete_dead_inodes`]).

use allocator::{AllocRequest, AllocatedBucket, Watermark};
use fs_core::bkey::fs::{DT_DIR, DT_REG, S_IFDIR, S_IFREG};
use fs_core::bkey::ptr::SECTOR_BYTES;
use fs_core::bkey::{Bkey, DataType, Dirent, Extent, ExtentPtr, Inode, KeyType};
use fs_core::bpos::{Bpos, BtreeId};
use fs_core::error::{ErrCode, Error, Result};
use fs_core::opts::OptId;

use std::collections::BTreeSet;

use crate::fs::Fs;
use crate::fs::trans::{alloc_update_bytes, update_bytes};

/// Inode number of the root directory (bcachefs's `BCACHEFS_ROOT_INO`).
pub const ROOT_INO: u64 = 4096;
/// Sectors per chunk: 16 KiB.
pub const CHUNK_SECTORS: u32 = 32;
pub const CHUNK_BYTES: usize = CHUNK_SECTORS as usize * SECTOR_BYTES as usize;

fn inode_pos(inum: u64) -> Bpos {
    Bpos::new(0, inum, 0)
}

/// The deleted_inodes key of an inode being deleted: its data goes in several transactions,
/// and whoever finds the key (the next mount, if not this unlink) finishes the job.
/// Keyed as the inode is, in its own btree.
fn deleted_pos(inum: u64) -> Bpos {
    inode_pos(inum)
}

pub(crate) fn dirent_pos(dir: u64, name: &str) -> Bpos {
    Bpos::new(dir, Dirent::name_hash(name), 0)
}

fn extent_pos(inum: u64, chunk: u64) -> Bpos {
    Bpos::new(inum, (chunk + 1) * u64::from(CHUNK_SECTORS), 0)
}

/// The data of chunk `chunk` written with `seed`: reproducible, so a reader can check it.
pub fn chunk_data(seed: u64, chunk: u64) -> Vec<u8> {
    let mut rng = fs_core::rng::Rng::new(seed ^ chunk.wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let mut buf = vec![0u8; CHUNK_BYTES];
    rng.fill_bytes(&mut buf);
    buf
}

/// Where data goes next: one bucket per replica, filled chunk by chunk.
struct OpenData {
    buckets: Vec<AllocatedBucket>,
    next_sector: u64,
}

pub struct Files {
    next_inum: u64,
    open: Option<OpenData>,
}

impl Files {
    /// The file layer of `fs`, creating the root directory on a new filesystem.
    pub fn new(fs: &mut Fs) -> Result<Files> {
        let last = fs.last_until(BtreeId::Inodes, Bpos::MAX)?;
        let mut files = Files { next_inum: last.as_ref().map_or(ROOT_INO, |k| k.pos.offset) + 1, open: None };
        if fs.get(BtreeId::Inodes, inode_pos(ROOT_INO))?.is_none() {
            let root = Inode { mode: S_IFDIR | 0o755, nlink: 2, parent: ROOT_INO, ..Inode::default() };
            fs.commit(BtreeId::Inodes, [Bkey::new(inode_pos(ROOT_INO), KeyType::Inode, root.encode())])?;
            files.next_inum = files.next_inum.max(ROOT_INO + 1);
        }
        Self::delete_dead_inodes(fs)?;
        Ok(files)
    }

    /// Finishes the deletions an earlier unlink began and did not end (a crash, an error):
    /// every inode the deleted_inodes btree lists loses its data and goes. bcachefs runs this
    /// as its delete_dead_inodes recovery pass; here the file layer runs it when it attaches.
    /// Returns how many inodes it deleted.
    pub fn delete_dead_inodes(fs: &mut Fs) -> Result<usize> {
        let dead = fs.list(BtreeId::DeletedInodes, Bpos::MIN, Bpos::MAX)?;
        for k in &dead {
            let extents = Self::extents(fs, k.pos.offset)?;
            Self::delete_inode(fs, k.pos.offset, &extents)?;
        }
        Ok(dead.len())
    }

    /// Every extent of `inum`.
    fn extents(fs: &mut Fs, inum: u64) -> Result<Vec<Bkey>> {
        fs.list(BtreeId::Extents, Bpos::new(inum, 0, 0), Bpos::new(inum, u64::MAX, u32::MAX))
    }

    /// Deletes an unlinked inode's `extents` (all it has), as many transactions as they need,
    /// then the inode and its deleted_inodes key together. A transaction carries the alloc keys
    /// of the buckets its whiteouts empty, so a batch ends when those would not fit beside them.
    fn delete_inode(fs: &mut Fs, inum: u64, extents: &[Bkey]) -> Result<()> {
        let capacity = fs.transaction_capacity();
        let mut batch: Vec<(BtreeId, Bkey)> = Vec::new();
        let mut freed: Vec<(Vec<ExtentPtr>, u32)> = Vec::new();
        let mut buckets: BTreeSet<(u8, u64)> = BTreeSet::new();
        let mut bytes = 0;
        for k in extents {
            let ptrs = Extent::decode(&k.val)?.ptrs;
            let whiteout = (BtreeId::Extents, Bkey::whiteout(k.pos));
            let mut more = buckets.clone();
            more.extend(ptrs.iter().map(|p| (p.dev, p.byte_offset() / fs.bucket_size(p.dev))));
            let need = bytes + update_bytes(&whiteout);
            if !batch.is_empty() && need + alloc_update_bytes(more.len()) > capacity {
                fs.commit_with_sectors(std::mem::take(&mut batch), &dropped(&std::mem::take(&mut freed)))?;
                buckets.clear();
                bytes = 0;
                more = ptrs.iter().map(|p| (p.dev, p.byte_offset() / fs.bucket_size(p.dev))).collect();
            }
            bytes += update_bytes(&whiteout);
            buckets = more;
            batch.push(whiteout);
            freed.push((ptrs, k.size));
        }
        if !batch.is_empty() {
            fs.commit_with_sectors(batch, &dropped(&freed))?;
        }
        fs.commit_updates(vec![
            (BtreeId::Inodes, Bkey::whiteout(inode_pos(inum))),
            (BtreeId::DeletedInodes, Bkey::whiteout(deleted_pos(inum))),
        ])?;
        Ok(())
    }

    pub fn inode(fs: &mut Fs, inum: u64) -> Result<Option<Inode>> {
        fs.get(BtreeId::Inodes, inode_pos(inum))?.map(|k| Inode::decode(&k.val)).transpose()
    }

    fn inode_or_enoent(fs: &mut Fs, inum: u64) -> Result<Inode> {
        Self::inode(fs, inum)?
            .ok_or_else(|| Error::new(ErrCode::Enoent, format!("inode {inum} does not exist")))
    }

    pub fn lookup(fs: &mut Fs, dir: u64, name: &str) -> Result<Option<u64>> {
        let Some(k) = fs.get(BtreeId::Dirents, dirent_pos(dir, name))? else { return Ok(None) };
        let d = Dirent::decode(&k.val)?;
        Ok((d.name == name).then_some(d.target))
    }

    /// Entries of directory `dir`: (name, inum, is_dir).
    pub fn readdir(fs: &mut Fs, dir: u64) -> Result<Vec<(String, u64, bool)>> {
        let keys = fs.list(BtreeId::Dirents, Bpos::new(dir, 0, 0), Bpos::new(dir, u64::MAX, u32::MAX))?;
        keys.iter().map(|k| Dirent::decode(&k.val).map(|d| (d.name, d.target, d.d_type == DT_DIR))).collect()
    }

    /// Creates `name` in `dir`.
    pub fn create(&mut self, fs: &mut Fs, dir: u64, name: &str, is_dir: bool) -> Result<u64> {
        let mut parent = Self::inode_or_enoent(fs, dir)?;
        if fs.get(BtreeId::Dirents, dirent_pos(dir, name))?.is_some() {
            return Err(Error::new(
                ErrCode::Eexist,
                format!("'{name}' exists in directory {dir} (or its name hash does)"),
            ));
        }
        let inum = self.next_inum;
        let inode = if is_dir {
            Inode { mode: S_IFDIR | 0o755, nlink: 2, parent: dir, ..Inode::default() }
        } else {
            Inode { mode: S_IFREG | 0o644, nlink: 1, parent: dir, ..Inode::default() }
        };
        let dirent =
            Dirent { target: inum, d_type: if is_dir { DT_DIR } else { DT_REG }, name: name.to_owned() };
        let mut updates = vec![
            (BtreeId::Inodes, Bkey::new(inode_pos(inum), KeyType::Inode, inode.encode())),
            (BtreeId::Dirents, Bkey::new(dirent_pos(dir, name), KeyType::Dirent, dirent.encode())),
        ];
        if is_dir {
            parent.nlink += 1;
            updates.push((BtreeId::Inodes, Bkey::new(inode_pos(dir), KeyType::Inode, parent.encode())));
        }
        fs.commit_updates(updates)?;
        self.next_inum += 1;
        Ok(inum)
    }

    /// Sectors for one chunk on `data_replicas` devices: the pointers, filled from open buckets.
    fn alloc_chunk(&mut self, fs: &mut Fs) -> Result<Vec<ExtentPtr>> {
        let bucket_sectors = |fs: &Fs, dev: u8| {
            fs.set().sb.members.get(usize::from(dev)).map_or(0, |m| u64::from(m.bucket_size) / SECTOR_BYTES)
        };
        // The open buckets must still be ours: an overwrite can empty one (it then becomes
        // need_discard) while it is open, and nothing may be written to it after that.
        let still_ours = |fs: &Fs, b: &AllocatedBucket| {
            fs.alloc().and_then(|a| a.bucket(b.dev, b.bucket)).is_some_and(|s| {
                s.bucket_gen == b.bucket_gen && matches!(s.data_type, DataType::User | DataType::Free)
            })
        };
        let full = match &self.open {
            Some(o) => o.buckets.iter().any(|b| {
                o.next_sector + u64::from(CHUNK_SECTORS) > bucket_sectors(fs, b.dev) || !still_ours(fs, b)
            }),
            None => true,
        };
        if full {
            let alloc = fs
                .alloc()
                .cloned()
                .ok_or_else(|| Error::new(ErrCode::Erofs, "filesystem opened read-only"))?;
            let req = AllocRequest {
                nr_replicas: u8::try_from(fs.opts().u64(OptId::DataReplicas)).unwrap_or(u8::MAX),
                target: fs.opts().with(|o| o.str(OptId::ForegroundTarget).to_owned()),
                data_type: DataType::User,
                watermark: Watermark::Normal,
            };
            // No bucket free now: discard what was emptied so far, then try once more. The
            // retry does not depend on this thread's round freeing anything: a discard worker
            // may have freed the buckets between the refusal and the round.
            let buckets = match alloc.alloc_buckets(&req) {
                Err(e) if e.matches(ErrCode::FreelistEmpty) => {
                    fs.wait_on_allocator()?;
                    alloc.alloc_buckets(&req)?
                }
                r => r?,
            };
            self.open = Some(OpenData { buckets, next_sector: 0 });
        }
        let o =
            self.open.as_mut().ok_or_else(|| Error::new(ErrCode::BucketAccounting, "no open data bucket"))?;
        let ptrs = o
            .buckets
            .iter()
            .map(|b| ExtentPtr {
                dev: b.dev,
                bucket_gen: b.bucket_gen,
                offset: b.bucket * bucket_sectors(fs, b.dev) + o.next_sector,
            })
            .collect();
        o.next_sector += u64::from(CHUNK_SECTORS);
        Ok(ptrs)
    }

    /// Writes chunk `chunk` of `inum` with data from `seed`: data first, on every replica,
    /// then one transaction with the extent, the inode's new size and the bucket accounting.
    pub fn write(&mut self, fs: &mut Fs, inum: u64, chunk: u64, seed: u64) -> Result<()> {
        let mut inode = Self::inode_or_enoent(fs, inum)?;
        if inode.is_dir() {
            return Err(Error::new(ErrCode::Eisdir, format!("inode {inum} is a directory")));
        }
        let data = chunk_data(seed, chunk);
        let ptrs = self.alloc_chunk(fs)?;
        for p in &ptrs {
            let dev = fs
                .device(p.dev)
                .ok_or_else(|| Error::new(ErrCode::InsufficientDevices, "data device missing").dev(p.dev))?;
            dev.write_at(&data, p.byte_offset())?;
        }
        let old = fs.get(BtreeId::Extents, extent_pos(inum, chunk))?;
        let old_ptrs = match &old {
            Some(old) => Extent::decode(&old.val)?.ptrs,
            None => {
                inode.sectors += u64::from(CHUNK_SECTORS);
                Vec::new()
            }
        };
        inode.size = inode.size.max((chunk + 1) * CHUNK_BYTES as u64);
        let new = Extent { crc32c: crc32c::crc32c(&data), ptrs };
        let mut extent = Bkey::new(extent_pos(inum, chunk), KeyType::Extent, new.encode());
        extent.size = CHUNK_SECTORS;
        let updates = vec![
            (BtreeId::Extents, extent),
            (BtreeId::Inodes, Bkey::new(inode_pos(inum), KeyType::Inode, inode.encode())),
        ];
        let sectors = i64::from(CHUNK_SECTORS);
        fs.commit_with_sectors(updates, &[(&new.ptrs, sectors), (&old_ptrs, -sectors)])?;
        Ok(())
    }

    /// Appends up to `buckets` whole buckets of zeros to `inum`, one replica each, on devices
    /// of `target` at `watermark`: cold data as a bulk copy or copygc leaves it, one extent per
    /// bucket. The data is written as a device discard (the range then reads as zeros) and the
    /// extents carry the zeros' checksum, so reads check it as any other data. Each
    /// transaction carries up to `per_trans` extents with the inode and the buckets' accounting.
    ///
    /// Stops early when no device of the target can give a bucket at `watermark` (a bucket
    /// placed elsewhere is given back); returns how many buckets it filled.
    pub fn write_cold(
        &mut self,
        fs: &mut Fs,
        inum: u64,
        target: &str,
        watermark: Watermark,
        buckets: u64,
        per_trans: usize,
    ) -> Result<u64> {
        let alloc =
            fs.alloc().cloned().ok_or_else(|| Error::new(ErrCode::Erofs, "filesystem opened read-only"))?;
        let req =
            AllocRequest { nr_replicas: 1, target: target.to_owned(), data_type: DataType::User, watermark };
        let mut inode = Self::inode_or_enoent(fs, inum)?;
        let mut done = 0u64;
        while done < buckets {
            let mut updates = Vec::new();
            let mut added = Vec::new();
            let mut full = false;
            while added.len() < per_trans.max(1) && done + (added.len() as u64) < buckets {
                let got = match alloc.alloc_buckets(&req) {
                    Ok(got) => got,
                    Err(e) if e.matches(ErrCode::FreelistEmpty) => {
                        full = true;
                        break;
                    }
                    Err(e) => return Err(e),
                };
                let Some(&b) = got.first() else { break };
                let in_target =
                    fs.set().sb.members.get(usize::from(b.dev)).is_some_and(|m| m.in_target(target));
                if !in_target {
                    for g in &got {
                        alloc.release_bucket(g.dev, g.bucket)?;
                    }
                    full = true;
                    break;
                }
                let bucket_bytes = fs.bucket_size(b.dev);
                let sectors = u32::try_from(bucket_bytes / SECTOR_BYTES).map_err(|_| {
                    Error::new(ErrCode::InvalidArgument, "bucket too large for one extent").dev(b.dev)
                })?;
                let dev = fs.device(b.dev).ok_or_else(|| {
                    Error::new(ErrCode::InsufficientDevices, "data device missing").dev(b.dev)
                })?;
                dev.discard(b.bucket * bucket_bytes, bucket_bytes)?;
                let end = inode.sectors + u64::from(sectors);
                let ptr =
                    ExtentPtr { dev: b.dev, bucket_gen: b.bucket_gen, offset: b.bucket * u64::from(sectors) };
                let e = Extent { crc32c: zeros_crc32c(bucket_bytes), ptrs: vec![ptr] };
                let mut key = Bkey::new(Bpos::new(inum, end, 0), KeyType::Extent, e.encode());
                key.size = sectors;
                inode.sectors = end;
                inode.size = end * SECTOR_BYTES;
                updates.push((BtreeId::Extents, key));
                added.push((e.ptrs, i64::from(sectors)));
            }
            if added.is_empty() {
                break;
            }
            updates.push((BtreeId::Inodes, Bkey::new(inode_pos(inum), KeyType::Inode, inode.encode())));
            let sectors: Vec<(&[ExtentPtr], i64)> = added.iter().map(|(p, n)| (p.as_slice(), *n)).collect();
            if let Err(e) = fs.commit_with_sectors(updates, &sectors) {
                // Not committed: the buckets go back, unwritten.
                for (ptrs, _) in &added {
                    for p in ptrs {
                        alloc.release_bucket(p.dev, p.offset / (fs.bucket_size(p.dev) / SECTOR_BYTES))?;
                    }
                }
                return Err(e);
            }
            done += added.len() as u64;
            if full {
                break;
            }
        }
        Ok(done)
    }

    /// Sets the modification time of `inum` (a `touch`): one inode update, nothing else.
    pub fn touch(fs: &mut Fs, inum: u64, mtime_ns: u64) -> Result<()> {
        let mut inode = Self::inode_or_enoent(fs, inum)?;
        inode.mtime_ns = mtime_ns;
        fs.commit_updates(vec![(
            BtreeId::Inodes,
            Bkey::new(inode_pos(inum), KeyType::Inode, inode.encode()),
        )])?;
        Ok(())
    }

    /// Reads chunk `chunk` of `inum` from the first replica whose data matches its checksum.
    pub fn read(fs: &mut Fs, inum: u64, chunk: u64) -> Result<Option<Vec<u8>>> {
        let Some(k) = fs.get(BtreeId::Extents, extent_pos(inum, chunk))? else { return Ok(None) };
        let e = Extent::decode(&k.val)?;
        let mut buf = vec![0u8; CHUNK_BYTES];
        let mut first_err = None;
        for p in &e.ptrs {
            let Some(dev) = fs.device(p.dev) else { continue };
            match dev.read_at(&mut buf, p.byte_offset()) {
                Ok(()) => {
                    let got = crc32c::crc32c(&buf);
                    if got == e.crc32c {
                        return Ok(Some(buf));
                    }
                    first_err.get_or_insert_with(|| {
                        Error::new(ErrCode::Eio, "data checksum mismatch")
                            .dev(p.dev)
                            .pos(k.pos)
                            .csum(got, e.crc32c)
                    });
                }
                Err(err) => {
                    first_err.get_or_insert(err);
                }
            }
        }
        Err(first_err.unwrap_or_else(|| {
            Error::new(ErrCode::InsufficientDevices, "no replica of the data present").pos(k.pos)
        }))
    }

    /// Shrinks `inum` to `chunks` chunks: extents past it are deleted and their sectors freed.
    pub fn truncate(&mut self, fs: &mut Fs, inum: u64, chunks: u64) -> Result<()> {
        let mut inode = Self::inode_or_enoent(fs, inum)?;
        let start = Bpos::new(inum, (chunks + 1) * u64::from(CHUNK_SECTORS), 0);
        let gone = fs.list(BtreeId::Extents, start, Bpos::new(inum, u64::MAX, u32::MAX))?;
        let mut updates = Vec::with_capacity(gone.len() + 1);
        let mut freed = Vec::with_capacity(gone.len());
        for k in &gone {
            freed.push((Extent::decode(&k.val)?.ptrs, k.size));
            updates.push((BtreeId::Extents, Bkey::whiteout(k.pos)));
            inode.sectors = inode.sectors.saturating_sub(u64::from(k.size));
        }
        inode.size = inode.size.min(chunks * CHUNK_BYTES as u64);
        updates.push((BtreeId::Inodes, Bkey::new(inode_pos(inum), KeyType::Inode, inode.encode())));
        fs.commit_with_sectors(updates, &dropped(&freed))?;
        Ok(())
    }

    /// Removes `name` from `dir`; the inode goes with its last link (and its data with it).
    /// Directories must be empty. Data too large for one transaction is deleted after the name
    /// goes, the inode listed in the deleted_inodes btree meanwhile.
    pub fn unlink(&mut self, fs: &mut Fs, dir: u64, name: &str) -> Result<()> {
        let target = Self::lookup(fs, dir, name)?
            .ok_or_else(|| Error::new(ErrCode::Enoent, format!("'{name}' not in directory {dir}")))?;
        let mut inode = Self::inode_or_enoent(fs, target)?;
        let mut updates = vec![(BtreeId::Dirents, Bkey::whiteout(dirent_pos(dir, name)))];
        let mut freed = Vec::new();
        if inode.is_dir() {
            if !Self::readdir(fs, target)?.is_empty() {
                return Err(Error::new(ErrCode::Einval, format!("directory '{name}' is not empty")));
            }
            let mut parent = Self::inode_or_enoent(fs, dir)?;
            parent.nlink = parent.nlink.saturating_sub(1);
            updates.push((BtreeId::Inodes, Bkey::new(inode_pos(dir), KeyType::Inode, parent.encode())));
            updates.push((BtreeId::Inodes, Bkey::whiteout(inode_pos(target))));
        } else if inode.nlink <= 1 {
            let extents = Self::extents(fs, target)?;
            let mut all = updates.clone();
            all.extend(extents.iter().map(|k| (BtreeId::Extents, Bkey::whiteout(k.pos))));
            all.push((BtreeId::Inodes, Bkey::whiteout(inode_pos(target))));
            if !fs.fits_one_transaction(&all) {
                // Too much data for one transaction: the name goes now, with the inode listed
                // as dead (link count 0), and the data in as many transactions as it needs.
                inode.nlink = 0;
                updates.push((BtreeId::Inodes, Bkey::new(inode_pos(target), KeyType::Inode, inode.encode())));
                updates
                    .push((BtreeId::DeletedInodes, Bkey::new(deleted_pos(target), KeyType::Set, Vec::new())));
                fs.commit_updates(updates)?;
                return Self::delete_inode(fs, target, &extents);
            }
            for k in &extents {
                freed.push((Extent::decode(&k.val)?.ptrs, k.size));
            }
            updates = all;
        } else {
            inode.nlink -= 1;
            updates.push((BtreeId::Inodes, Bkey::new(inode_pos(target), KeyType::Inode, inode.encode())));
        }
        fs.commit_with_sectors(updates, &dropped(&freed))?;
        Ok(())
    }

    /// Moves `name` in `dir` to `new_name` in `new_dir`; the target must not exist.
    pub fn rename(&mut self, fs: &mut Fs, dir: u64, name: &str, new_dir: u64, new_name: &str) -> Result<()> {
        let target = Self::lookup(fs, dir, name)?
            .ok_or_else(|| Error::new(ErrCode::Enoent, format!("'{name}' not in directory {dir}")))?;
        if fs.get(BtreeId::Dirents, dirent_pos(new_dir, new_name))?.is_some() {
            return Err(Error::new(ErrCode::Eexist, format!("'{new_name}' exists in directory {new_dir}")));
        }
        let mut inode = Self::inode_or_enoent(fs, target)?;
        let d_type = if inode.is_dir() { DT_DIR } else { DT_REG };
        let dirent = Dirent { target, d_type, name: new_name.to_owned() };
        let mut updates = vec![
            (BtreeId::Dirents, Bkey::whiteout(dirent_pos(dir, name))),
            (BtreeId::Dirents, Bkey::new(dirent_pos(new_dir, new_name), KeyType::Dirent, dirent.encode())),
        ];
        if inode.is_dir() && dir != new_dir {
            let mut from = Self::inode_or_enoent(fs, dir)?;
            let mut to = Self::inode_or_enoent(fs, new_dir)?;
            from.nlink = from.nlink.saturating_sub(1);
            to.nlink += 1;
            inode.parent = new_dir;
            updates.push((BtreeId::Inodes, Bkey::new(inode_pos(dir), KeyType::Inode, from.encode())));
            updates.push((BtreeId::Inodes, Bkey::new(inode_pos(new_dir), KeyType::Inode, to.encode())));
            updates.push((BtreeId::Inodes, Bkey::new(inode_pos(target), KeyType::Inode, inode.encode())));
        }
        fs.commit_updates(updates)?;
        Ok(())
    }
}

/// The sector changes of dropping whole-chunk extents with these pointers.
/// The accounting of extents deleted: each `(pointers, sectors)` gives its sectors back.
fn dropped(freed: &[(Vec<ExtentPtr>, u32)]) -> Vec<(&[ExtentPtr], i64)> {
    freed.iter().map(|(ptrs, sectors)| (ptrs.as_slice(), -i64::from(*sectors))).collect()
}

/// The crc32c of `len` zero bytes, computed a MiB at a time.
fn zeros_crc32c(len: u64) -> u32 {
    const PIECE: usize = 1 << 20;
    let zeros = vec![0u8; PIECE.min(usize::try_from(len).unwrap_or(PIECE))];
    let mut crc = 0;
    let mut left = len;
    while left > 0 {
        let n = usize::try_from(left).unwrap_or(PIECE).min(zeros.len());
        crc = crc32c::crc32c_append(crc, zeros.get(..n).unwrap_or_default());
        left -= n as u64;
    }
    crc
}
