//! `bcsim dump` and `bcsim undump`: the metadata of an image set in one compressed file, to
//! share a set that reproduces a problem without its data (`bcachefs dump` does this with qcow2
//! files).
//!
//! What is kept of each image: the blocks of its superblock copies, of its journal buckets, and
//! of every node-sized slot that begins with a btree node header of this filesystem, reachable
//! or not (a stale node is evidence too); only blocks that hold something. Everything else
//! (file data) reads back as zeros. Holes of the sparse images are never read.
//!
//! The file is gzip. Inside: a line `bcsim-dump 1`, a line of JSON (the uuid, and per image its
//! name and size), then per image its runs of kept blocks, each `offset: u64 LE, len: u32 LE`
//! and the bytes, ended by an offset of `u64::MAX`.

use std::collections::HashSet;
use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use flate2::Compression;
use flate2::read::GzDecoder;
use flate2::write::GzEncoder;
use fs_core::bkey::ptr::SECTOR_BYTES;
use fs_core::bpos::BtreeId;
use fs_core::btree::node::{BTREE_NODE_SALT, peek_header};
use fs_core::error::{ErrCode, Error, Result, io_error};
use fs_core::sb::{DeviceSet, SB_MAX_BYTES, SB_OFFSET_0, backup_offset, fs_magic};
use serde_json::json;

use crate::images::open_device_set;

const MAGIC_LINE: &str = "bcsim-dump 1";
/// Blocks are kept or dropped whole.
const BLOCK: u64 = 4096;
/// Bounds on what an undump believes: a header line, image count and size.
const MAX_HEADER_BYTES: u64 = 1 << 20;
const MAX_IMAGES: usize = 64;
const MAX_IMAGE_BYTES: u64 = 1 << 52;
const END: u64 = u64::MAX;
/// The longest run a dump writes (its length field is 32 bits) and the most an undump reads
/// into memory at once, whatever a run's length says.
const RUN_BYTES: usize = 1 << 20;

/// What a dump wrote.
#[derive(Debug)]
pub struct DumpReport {
    pub images: usize,
    /// Metadata bytes kept, before compression.
    pub kept_bytes: u64,
    /// Size of the dump file.
    pub file_bytes: u64,
}

/// The data extents of `file` from `from` on, as `[start, end)`: holes are skipped without being
/// read.
fn data_extents(file: &File, size: u64) -> Result<Vec<(u64, u64)>> {
    use rustix::fs::{SeekFrom, seek};
    let mut out = Vec::new();
    let mut at = 0u64;
    while at < size {
        let start = match seek(file, SeekFrom::Data(at)) {
            Ok(s) => s,
            // No data after `at`.
            Err(rustix::io::Errno::NXIO) => break,
            Err(e) => {
                return Err(io_error(
                    std::io::Error::from(e),
                    ErrCode::IoRead,
                    "cannot find the data of an image",
                ));
            }
        };
        let end = seek(file, SeekFrom::Hole(start))
            .map_err(|e| {
                io_error(std::io::Error::from(e), ErrCode::IoRead, "cannot find the holes of an image")
            })?
            .min(size);
        if end <= start {
            break;
        }
        out.push((start, end));
        at = end;
    }
    Ok(out)
}

/// Copies image `src` to `dst` (replaced) as a sparse file of the same size: only the data
/// extents are read and written, so a copy of a 2 TiB image holding megabytes takes
/// milliseconds.
pub fn copy_image(src: &Path, dst: &Path) -> Result<()> {
    use std::os::unix::fs::FileExt;
    let name = |p: &Path| p.display().to_string();
    let from =
        File::open(src).map_err(|e| io_error(e, ErrCode::IoRead, "cannot open image").path(name(src)))?;
    let size =
        from.metadata().map_err(|e| io_error(e, ErrCode::IoRead, "cannot stat image").path(name(src)))?.len();
    let to = File::create(dst)
        .map_err(|e| io_error(e, ErrCode::IoWrite, "cannot create image").path(name(dst)))?;
    to.set_len(size).map_err(|e| io_error(e, ErrCode::IoWrite, "cannot size image").path(name(dst)))?;
    let mut buf = vec![0u8; 1 << 20];
    for (start, end) in data_extents(&from, size)? {
        let mut at = start;
        while at < end {
            let n = usize::try_from(end - at).unwrap_or(usize::MAX).min(buf.len());
            let chunk = buf.get_mut(..n).ok_or_else(|| Error::internal("copy buffer"))?;
            from.read_exact_at(chunk, at)
                .map_err(|e| io_error(e, ErrCode::IoRead, "cannot read image").path(name(src)))?;
            to.write_all_at(chunk, at)
                .map_err(|e| io_error(e, ErrCode::IoWrite, "cannot write image").path(name(dst)))?;
            at += n as u64;
        }
    }
    Ok(())
}

/// Which metadata a dump keeps.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Keep {
    /// Every superblock copy, journal bucket and node-headed slot, reachable or not: a stale
    /// node or a reclaimed entry is evidence too.
    #[default]
    All,
    /// What a mount reads: the superblock copies, the journal buckets holding an entry the read
    /// keeps (`last_seq` on, including those past the replay range), and the nodes the btrees
    /// reach. A set after long churn shrinks to a fraction; its mounts and fscks behave the
    /// same, while `list-journal -a` and scans for lost nodes see less. The set must open.
    Live,
}

/// What [`Keep::Live`] keeps beside the superblocks, as (device, bucket) and (device, byte
/// offset) pairs.
struct LiveMetadata {
    journal_buckets: HashSet<(usize, u64)>,
    nodes: HashSet<(usize, u64)>,
}

fn live_metadata(paths: &[PathBuf]) -> Result<LiveMetadata> {
    let set = open_device_set(paths, false)?;
    let jr = crate::list_journal::read(&set, false)?;
    let mut journal_buckets = HashSet::new();
    for (ring, jdev) in jr.rings.iter().zip(crate::recovery::journal::journal_devices(&set)) {
        for (&seq, &bucket) in ring.bucket_seqs.iter().zip(&jdev.buckets) {
            if seq >= jr.last_seq {
                journal_buckets.insert((usize::from(ring.dev), bucket));
            }
        }
    }
    let refuse = |e: Error| e.prefix("dump --live-only: the set does not open");
    let mut view = crate::recovery::open_view(set, &crate::recovery::MountOpts::default()).map_err(refuse)?;
    let mut nodes = HashSet::new();
    for &btree in BtreeId::ALL {
        for n in view.nodes(btree).map_err(refuse)? {
            nodes.extend(n.ptrs.iter().map(|p| (usize::from(p.dev), p.offset * SECTOR_BYTES)));
        }
    }
    Ok(LiveMetadata { journal_buckets, nodes })
}

/// Whether the block at `off` of member `dev` is metadata by place: a superblock copy or a
/// journal bucket (with `live`, one holding entries a mount reads).
fn metadata_by_place(set: &DeviceSet, live: Option<&LiveMetadata>, dev: usize, size: u64, off: u64) -> bool {
    let sb_copy = |at: u64| off + BLOCK > at && off < at + SB_MAX_BYTES;
    if sb_copy(SB_OFFSET_0) || sb_copy(backup_offset(size)) {
        return true;
    }
    let (Some(m), Some(member)) = (set.device(dev), set.sb.members.get(dev)) else { return false };
    let bucket_size = u64::from(member.bucket_size);
    if bucket_size == 0 {
        return false;
    }
    let bucket = off / bucket_size;
    match live {
        Some(l) => l.journal_buckets.contains(&(dev, bucket)),
        None => m.sb.journal.ranges.iter().any(|r| r.contains(&bucket)),
    }
}

/// Writes the metadata of the images of one filesystem into `out`, as much as `keep` says.
pub fn dump(paths: &[PathBuf], out: &Path, keep: Keep) -> Result<DumpReport> {
    let live = match keep {
        Keep::All => None,
        Keep::Live => Some(live_metadata(paths)?),
    };
    let set = open_device_set(paths, false)?;
    let magic = fs_magic(&set.sb.uuid, BTREE_NODE_SALT);
    let node_size = set.sb.opts.btree_node_size().max(BLOCK);
    let mut images = Vec::new();
    for p in paths {
        let dev = usize::from(crate::images::read_image_super(p)?.sb.dev_idx);
        images.push((dev, p.clone()));
    }
    images.sort_by_key(|(dev, _)| *dev);
    let create = |e| io_error(e, ErrCode::IoWrite, "cannot write the dump").path(out.display().to_string());
    let file = File::create(out).map_err(create)?;
    let mut w = GzEncoder::new(BufWriter::new(file), Compression::default());
    let header = json!({
        "uuid": set.sb.uuid.to_string(),
        "images": images.iter().map(|(dev, p)| json!({
            "name": p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
            "dev": dev,
            "size": std::fs::metadata(p).map(|md| md.len()).unwrap_or(0),
        })).collect::<Vec<_>>(),
    });
    writeln!(w, "{MAGIC_LINE}\n{header}").map_err(create)?;
    let mut kept_bytes = 0u64;
    let mut buf = vec![0u8; BLOCK as usize];
    for (dev, path) in &images {
        let name = path.display().to_string();
        let read_err = |e| io_error(e, ErrCode::IoRead, "cannot read image").path(name.clone());
        let f = File::open(path).map_err(read_err)?;
        let size = f.metadata().map_err(read_err)?.len();
        let mut slot: Option<(u64, bool)> = None;
        for (start, end) in data_extents(&f, size).map_err(|e| e.path(name.clone()))? {
            let mut off = start - start % BLOCK;
            let mut run: Option<(u64, Vec<u8>)> = None;
            while off < end {
                use std::os::unix::fs::FileExt;
                let n = BLOCK.min(size - off) as usize;
                let b = buf.get_mut(..n).unwrap_or_default();
                f.read_exact_at(b, off).map_err(read_err)?;
                let slot_start = off - off % node_size;
                let is_node = match slot {
                    Some((s, node)) if s == slot_start => node,
                    _ => {
                        let node = if slot_start == off {
                            peek_header(b, magic).is_some()
                        } else {
                            let mut head = vec![0u8; 512];
                            f.read_exact_at(&mut head, slot_start).is_ok()
                                && peek_header(&head, magic).is_some()
                        };
                        slot = Some((slot_start, node));
                        node
                    }
                };
                let node_kept =
                    is_node && live.as_ref().is_none_or(|l| l.nodes.contains(&(*dev, slot_start)));
                let keep = (node_kept || metadata_by_place(&set, live.as_ref(), *dev, size, off))
                    && b.iter().any(|&x| x != 0);
                if keep {
                    kept_bytes += n as u64;
                    match &mut run {
                        Some((_, bytes)) => bytes.extend_from_slice(b),
                        None => run = Some((off, b.to_vec())),
                    }
                }
                if !keep || run.as_ref().is_some_and(|(_, bytes)| bytes.len() >= RUN_BYTES) {
                    if let Some(r) = run.take() {
                        write_run(&mut w, r).map_err(create)?;
                    }
                }
                off += n as u64;
            }
            if let Some(r) = run.take() {
                write_run(&mut w, r).map_err(create)?;
            }
        }
        w.write_all(&END.to_le_bytes()).map_err(create)?;
    }
    let inner = w.finish().map_err(create)?;
    let file = inner.into_inner().map_err(|e| create(e.into_error()))?;
    file.sync_all().map_err(create)?;
    let file_bytes = file.metadata().map_err(create)?.len();
    Ok(DumpReport { images: images.len(), kept_bytes, file_bytes })
}

fn write_run(w: &mut impl Write, (off, bytes): (u64, Vec<u8>)) -> std::io::Result<()> {
    let len = u32::try_from(bytes.len()).map_err(|_| std::io::Error::other("a run longer than 4 GiB"))?;
    w.write_all(&off.to_le_bytes())?;
    w.write_all(&len.to_le_bytes())?;
    w.write_all(&bytes)
}

/// The reader of a dump's content (after the gzip layer): its header, then each image's runs.
/// It believes nothing it reads: names, counts, sizes and runs are checked before use, and
/// no length read makes it allocate more than [`RUN_BYTES`].
pub struct DumpReader<R> {
    r: R,
    /// The dump's name, for errors.
    name: String,
}

impl<R: BufRead> DumpReader<R> {
    pub fn new(r: R, name: impl Into<String>) -> DumpReader<R> {
        DumpReader { r, name: name.into() }
    }

    fn bad(&self, why: String) -> Error {
        Error::new(ErrCode::InvalidDump, format!("not a bcsim dump: {why}")).path(self.name.clone())
    }

    fn line(&mut self) -> Result<String> {
        let mut line = String::new();
        match self.r.by_ref().take(MAX_HEADER_BYTES).read_line(&mut line) {
            Ok(_) => Ok(line),
            Err(e) => Err(self.bad(format!("header unreadable ({e})"))),
        }
    }

    /// The header: each image's file name and size, in member order.
    pub fn header(&mut self) -> Result<Vec<(String, u64)>> {
        if self.line()?.trim_end() != MAGIC_LINE {
            return Err(self.bad("no 'bcsim-dump 1' line".to_owned()));
        }
        let line = self.line()?;
        let header: serde_json::Value =
            serde_json::from_str(&line).map_err(|e| self.bad(format!("header: {e}")))?;
        let list = header
            .get("images")
            .and_then(|v| v.as_array())
            .ok_or_else(|| self.bad("no image list".to_owned()))?;
        if list.len() > MAX_IMAGES {
            return Err(self.bad(format!("{} images", list.len())));
        }
        let mut images = Vec::new();
        for img in list {
            let n = img.get("name").and_then(|v| v.as_str()).unwrap_or_default();
            let size = img.get("size").and_then(serde_json::Value::as_u64).unwrap_or(0);
            let plain = !n.is_empty() && n != "." && n != ".." && !n.contains('/') && !n.contains('\0');
            if !plain || size == 0 || size > MAX_IMAGE_BYTES {
                return Err(self.bad(format!("image entry {img}")));
            }
            images.push((n.to_owned(), size));
        }
        Ok(images)
    }

    fn read(&mut self, buf: &mut [u8]) -> Result<()> {
        match self.r.read_exact(buf) {
            Ok(()) => Ok(()),
            Err(e) => Err(self.bad(format!("truncated ({e})"))),
        }
    }

    /// The next image's runs, handed to `write` as (offset, bytes), in pieces of at most
    /// [`RUN_BYTES`], each within the image's `size`.
    pub fn runs(&mut self, size: u64, write: &mut dyn FnMut(u64, &[u8]) -> Result<()>) -> Result<()> {
        let mut buf = Vec::new();
        loop {
            let mut off = [0u8; 8];
            self.read(&mut off)?;
            let off = u64::from_le_bytes(off);
            if off == END {
                return Ok(());
            }
            let mut len = [0u8; 4];
            self.read(&mut len)?;
            let len = u64::from(u32::from_le_bytes(len));
            if off.checked_add(len).is_none_or(|e| e > size) {
                return Err(self.bad(format!("a run at {off} of {len} bytes past the image's {size}")));
            }
            let mut at = off;
            while at < off + len {
                let n = (off + len - at).min(RUN_BYTES as u64) as usize;
                buf.resize(n, 0);
                self.read(&mut buf)?;
                write(at, &buf)?;
                at += n as u64;
            }
        }
    }
}

/// Restores the images of dump `file` into `dir` (created if needed); refuses to replace an
/// existing file. Returns the images written, in member order.
pub fn undump(file: &Path, dir: &Path) -> Result<Vec<PathBuf>> {
    let name = file.display().to_string();
    let f = File::open(file)
        .map_err(|e| io_error(e, ErrCode::IoRead, "cannot open the dump").path(name.clone()))?;
    let mut r = DumpReader::new(BufReader::new(GzDecoder::new(f)), name);
    let images: Vec<(PathBuf, u64)> = r.header()?.into_iter().map(|(n, size)| (dir.join(n), size)).collect();
    std::fs::create_dir_all(dir).map_err(|e| {
        io_error(e, ErrCode::IoWrite, "cannot create directory").path(dir.display().to_string())
    })?;
    for (path, _) in &images {
        if path.exists() {
            return Err(Error::new(ErrCode::FsExists, "already exists: undump replaces nothing")
                .path(path.display().to_string()));
        }
    }
    // A dump that turns out damaged half way leaves nothing behind: the images it made go.
    let mut made: Vec<&Path> = Vec::new();
    let result = images.iter().try_for_each(|(path, size)| {
        made.push(path);
        restore_image(&mut r, path, *size)
    });
    if let Err(e) = result {
        for p in made {
            let _ = std::fs::remove_file(p);
        }
        return Err(e);
    }
    Ok(images.into_iter().map(|(p, _)| p).collect())
}

/// Writes one image of a dump from `r`: a sparse file of `size` bytes, then its runs.
fn restore_image(r: &mut DumpReader<impl BufRead>, path: &Path, size: u64) -> Result<()> {
    use std::os::unix::fs::FileExt;
    let pname = path.display().to_string();
    let werr = |e| io_error(e, ErrCode::IoWrite, "cannot write image").path(pname.clone());
    let out = File::create(path).map_err(werr)?;
    out.set_len(size).map_err(werr)?;
    r.runs(size, &mut |off, bytes| out.write_all_at(bytes, off).map_err(werr))?;
    out.sync_all().map_err(werr)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A dump's content with one image of `size` bytes and the given runs.
    fn content(size: u64, runs: Vec<(u64, Vec<u8>)>) -> Vec<u8> {
        let mut out =
            format!("{MAGIC_LINE}\n{}\n", json!({"images": [{"name": "a.img", "size": size}]})).into_bytes();
        for run in runs {
            write_run(&mut out, run).unwrap();
        }
        out.extend_from_slice(&END.to_le_bytes());
        out
    }

    /// The pieces a reader hands out for the one image of `data`, or its error.
    fn pieces(data: &[u8]) -> Result<Vec<(u64, Vec<u8>)>> {
        let mut r = DumpReader::new(data, "test");
        let images = r.header()?;
        assert_eq!(images.len(), 1);
        let mut got = Vec::new();
        r.runs(images[0].1, &mut |off, bytes| {
            got.push((off, bytes.to_vec()));
            Ok(())
        })?;
        Ok(got)
    }

    /// A run is read in pieces of at most `RUN_BYTES`, in order and complete: what a run's
    /// length claims never sizes a buffer.
    #[test]
    fn a_long_run_is_read_in_bounded_pieces() {
        let run: Vec<u8> = (0..(5 * RUN_BYTES / 2)).map(|i| (i % 251) as u8).collect();
        let got = pieces(&content(16 << 20, vec![(4096, run.clone())])).unwrap();
        assert_eq!(got.len(), 3);
        assert!(got.iter().all(|(_, b)| b.len() <= RUN_BYTES));
        assert!(got.windows(2).all(|w| w[0].0 + w[0].1.len() as u64 == w[1].0), "contiguous");
        assert_eq!(got[0].0, 4096);
        assert_eq!(got.iter().flat_map(|(_, b)| b.iter().copied()).collect::<Vec<u8>>(), run);
    }

    /// A run claiming 4 GiB that the input does not hold is refused as truncated once the
    /// bytes run out, after handing out only what was there.
    #[test]
    fn a_run_longer_than_the_input_is_refused() {
        let mut data = content(1 << 40, vec![(0, vec![7u8; 16])]);
        // The run's length field (after the two header lines and the 8-byte offset).
        let at = data.iter().rposition(|&b| b == b'\n').unwrap() + 1 + 8;
        data[at..at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        let e = pieces(&data).unwrap_err();
        assert!(e.to_string().contains("truncated"), "{e}");
    }
}
