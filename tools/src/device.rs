//! Offline changes to member devices: `bcsim device resize` and `bcsim device add`.
//!
//! **Resize** grows a member to a new size, as `bcachefs device resize` does offline (the
//! workaround the #1108 reporter used). The image file grows, the member's bucket count follows
//! (up to the backup superblock copy, which moves to the new end), and its superblock is written
//! with the seq bumped, so that its member table is the newest of the set. The new buckets are
//! free: they have no alloc keys (an unused bucket has none), and the superblock records that
//! the freespace btree covers only the old ones (`freespace_initialized_to`), so the next mount's
//! `fs_freespace_init` writes the rest. Shrinking is refused, as bcachefs refuses it.

use std::path::{Path, PathBuf};

use fs_core::error::{ErrCode, Error, Result};
use fs_core::format::{existing_fs, layout_added_device};
use fs_core::sb::{backup_offset, write_super};

use crate::images::{
    ImageSpec, device_spec, display, inspect, open_device_set, open_image, planned_size, read_image_super,
    resize_file,
};

/// What a resize did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resized {
    pub dev: u16,
    pub old_nbuckets: u64,
    pub new_nbuckets: u64,
    pub bucket_size: u32,
    pub size: u64,
}

/// Grows the member on `path` to `size` bytes. The filesystem must not be mounted (its control
/// socket must not answer). Nothing is changed if any check fails.
pub fn resize(path: &Path, size: u64) -> Result<Resized> {
    let at = || display(path);
    let read = read_image_super(path)?;
    let mut sb = read.sb;
    crate::control::refuse_if_mounted(sb.uuid, "resize").map_err(|e| e.path(at()))?;
    let idx = usize::from(sb.dev_idx);
    let m = sb.members.get(idx).cloned().ok_or_else(|| {
        Error::new(ErrCode::InvalidSbMembers, format!("no member {idx} in its own superblock")).path(at())
    })?;
    let bucket_size = u64::from(m.bucket_size);
    let new_nbuckets = backup_offset(size) / bucket_size.max(1);
    if new_nbuckets < m.nbuckets {
        return Err(Error::new(
            ErrCode::InvalidArgument,
            format!(
                "{size} bytes hold {new_nbuckets} buckets, fewer than the member's {}: shrinking is not supported",
                m.nbuckets
            ),
        )
        .path(at()));
    }
    if new_nbuckets == m.nbuckets {
        return Err(Error::new(
            ErrCode::InvalidArgument,
            format!("{size} bytes hold the same {new_nbuckets} buckets: nothing to grow"),
        )
        .path(at()));
    }
    let md = std::fs::metadata(path)
        .map_err(|e| Error::new(ErrCode::Enoent, "cannot stat").path(at()).source(e))?;
    if md.file_type().is_file() && md.len() < size {
        {
            let f = std::fs::OpenOptions::new()
                .write(true)
                .open(path)
                .map_err(|e| Error::new(ErrCode::IoWrite, "cannot open for writing").path(at()).source(e))?;
            f.set_len(size).map_err(|e| {
                Error::new(ErrCode::IoWrite, format!("cannot grow the image to {size} bytes"))
                    .path(at())
                    .source(e)
            })?;
        }
    }
    let dev = open_image(path, true)?;
    if dev.size() < size {
        return Err(Error::new(
            ErrCode::InvalidArgument,
            format!("the device is {} bytes, less than {size}: grow the block device first", dev.size()),
        )
        .path(at()));
    }
    if let Some(member) = sb.members.get_mut(idx) {
        member.nbuckets = new_nbuckets;
        member.freespace_initialized_to = Some(m.freespace_initialized_to.unwrap_or(m.nbuckets));
    }
    sb.offsets[1] = backup_offset(size);
    sb.seq += 1;
    write_super(dev.as_ref(), &sb).map_err(|e| e.or_path(at()))?;
    Ok(Resized { dev: sb.dev_idx, old_nbuckets: m.nbuckets, new_nbuckets, bucket_size: m.bucket_size, size })
}

/// What an add did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Added {
    pub dev: u16,
    pub nbuckets: u64,
    pub bucket_size: u32,
    pub label: String,
}

/// Adds the image `spec` to the filesystem on `fs_images` (every member, none mounted), as
/// `bcachefs device add` does offline: the new image is laid out as format lays out a device,
/// its superblock is written, then every member's with the new member in the table. It has no
/// alloc or freespace keys yet; the next mount writes them (`fs_freespace_init`). An image
/// that already holds a bcsim filesystem is refused unless `force`.
pub fn add(spec: &ImageSpec, fs_images: &[PathBuf], force: bool) -> Result<Added> {
    let at = || display(&spec.path);
    if fs_images.iter().any(|p| p == &spec.path) {
        return Err(
            Error::new(ErrCode::InvalidArgument, "is already one of the filesystem's images").path(at())
        );
    }
    let mut set = open_device_set(fs_images, true)?;
    set.require_all(false)?;
    crate::control::refuse_if_mounted(set.sb.uuid, "device add")?;
    let existing = inspect(&spec.path)?;
    if existing.size.is_some_and(|s| s > 0) && !force {
        if let Some(old) = existing_fs(&open_image(&spec.path, false)?) {
            return Err(Error::new(
                ErrCode::FsExists,
                format!("already holds bcsim filesystem {old}: use -f to add it anyway"),
            )
            .path(at()));
        }
    }
    let size = planned_size(spec, &existing)?;
    // Rehearse on memory first: every check runs before a file changes.
    let rehearsal = device_spec(spec, std::sync::Arc::new(fs_core::dev::MemDevice::new(at(), size)));
    layout_added_device(&set.sb, &rehearsal)?;
    if !existing.block_device {
        resize_file(&spec.path, size)?;
    }
    let dev_spec = device_spec(spec, open_image(&spec.path, true)?);
    let mut new_sb = layout_added_device(&set.sb, &dev_spec)?;
    new_sb.seq = set.sb.seq + 1;
    // The new device first: until the others list it, nothing refers to it.
    write_super(dev_spec.dev.as_ref(), &new_sb).map_err(|e| e.or_path(at()))?;
    set.sb.members = new_sb.members.clone();
    set.write_super()?;
    let m = new_sb.members.last().cloned().ok_or_else(|| Error::internal("added member missing"))?;
    Ok(Added { dev: new_sb.dev_idx, nbuckets: m.nbuckets, bucket_size: m.bucket_size, label: m.label })
}
