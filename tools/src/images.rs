//! Image files: opening them for reading, and creating or resizing them for format.
//!
//! Format checks everything before it changes any file: each path is inspected, an existing
//! filesystem is refused without `force`, and the whole format is first rehearsed on in-memory
//! devices of the same sizes, so a refused format leaves every image as it was. A format ends
//! with the filesystem's first mount and unmount, which write its initial alloc info.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use fs_core::dev::{FileDevice, MemDevice, SharedDevice};
use fs_core::error::{ErrCode, Error, Result, io_error};
use fs_core::format::{DeviceSpec, FormatReport, existing_fs, format};
use fs_core::opts::Options;
use fs_core::sb::{DataAllowed, DeviceSet, SbRead, read_super};
use fs_core::uuid::Uuid;

/// One image to format, with its per-device settings.
#[derive(Clone, Debug)]
pub struct ImageSpec {
    pub path: PathBuf,
    /// Size of a regular file in bytes: it is created or resized to this. `None`: keep the
    /// existing size (the file must exist).
    pub size: Option<u64>,
    pub bucket_size: Option<u64>,
    pub durability: u8,
    pub label: String,
    pub data_allowed: DataAllowed,
    /// See [`DeviceSpec::journal_bytes`].
    pub journal_bytes: Option<u64>,
}

impl ImageSpec {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        ImageSpec {
            path: path.into(),
            size: None,
            bucket_size: None,
            durability: 1,
            label: String::new(),
            data_allowed: DataAllowed::all(),
            journal_bytes: None,
        }
    }
}

pub(crate) fn display(path: &Path) -> String {
    path.display().to_string()
}

/// Opens an image file or block device.
pub fn open_image(path: &Path, writable: bool) -> Result<SharedDevice> {
    Ok(Arc::new(FileDevice::open(path, writable).map_err(|e| e.or_path(display(path)))?))
}

/// Reads an image's superblock.
pub fn read_image_super(path: &Path) -> Result<SbRead> {
    let dev = open_image(path, false)?;
    read_super(dev.as_ref()).map_err(|e| e.or_path(display(path)))
}

/// Opens images as one filesystem's device set (read-only).
pub fn open_device_set(paths: &[PathBuf], writable: bool) -> Result<DeviceSet> {
    let devs = paths.iter().map(|p| open_image(p, writable)).collect::<Result<Vec<_>>>()?;
    DeviceSet::open(devs)
}

/// What is at a path before format touches it.
pub(crate) struct Existing {
    /// Size in bytes if something is there.
    pub(crate) size: Option<u64>,
    pub(crate) block_device: bool,
}

pub(crate) fn inspect(path: &Path) -> Result<Existing> {
    match std::fs::metadata(path) {
        Ok(md) if md.is_dir() => {
            Err(Error::new(ErrCode::Eisdir, "is a directory, not an image").path(display(path)))
        }
        Ok(md) => {
            use std::os::unix::fs::FileTypeExt;
            let block_device = md.file_type().is_block_device();
            let size = if block_device { open_image(path, false)?.size() } else { md.len() };
            Ok(Existing { size: Some(size), block_device })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            Ok(Existing { size: None, block_device: false })
        }
        Err(e) => Err(io_error(e, ErrCode::IoRead, "cannot inspect image").path(display(path))),
    }
}

/// The size the device will have after format, or why there is none.
pub(crate) fn planned_size(spec: &ImageSpec, existing: &Existing) -> Result<u64> {
    let path = display(&spec.path);
    match (spec.size, existing.size, existing.block_device) {
        (Some(want), Some(have), true) if want > have => Err(Error::new(
            ErrCode::DeviceTooSmall,
            format!("block device has {have} bytes, --size asks for {want}"),
        )
        .path(path)),
        (Some(want), _, _) => Ok(want),
        (None, Some(have), _) => Ok(have),
        (None, None, _) => {
            Err(Error::new(ErrCode::InvalidArgument, "no such file: give --size to create it").path(path))
        }
    }
}

/// Formats image files. Images are created (sparse) or resized to their `size`; an image that
/// already holds a bcsim filesystem is refused unless `force`.
pub fn format_images(
    specs: &[ImageSpec],
    opts: &Options,
    uuid: Option<Uuid>,
    force: bool,
) -> Result<FormatReport> {
    let mut sizes = Vec::with_capacity(specs.len());
    for (i, spec) in specs.iter().enumerate() {
        if specs.iter().take(i).any(|s| s.path == spec.path) {
            return Err(Error::new(ErrCode::InvalidArgument, "image given twice").path(display(&spec.path)));
        }
        let existing = inspect(&spec.path)?;
        if existing.size.is_some_and(|s| s > 0) && !force {
            let dev = open_image(&spec.path, false)?;
            if let Some(old) = existing_fs(&dev) {
                return Err(Error::new(
                    ErrCode::FsExists,
                    format!("already holds bcsim filesystem {old}: use -f to format it anyway"),
                )
                .path(display(&spec.path)));
            }
        }
        sizes.push((planned_size(spec, &existing)?, existing.block_device));
    }
    // Rehearse on memory devices: every check format makes runs before a file changes.
    let uuid = uuid.unwrap_or_else(Uuid::random);
    let rehearsal: Vec<DeviceSpec> = specs
        .iter()
        .zip(&sizes)
        .map(|(spec, &(size, _))| device_spec(spec, Arc::new(MemDevice::new(display(&spec.path), size))))
        .collect();
    format(&rehearsal, opts, Some(uuid))?;
    drop(rehearsal);

    let mut devices = Vec::with_capacity(specs.len());
    for (spec, &(size, block_device)) in specs.iter().zip(&sizes) {
        if !block_device {
            resize_file(&spec.path, size)?;
        }
        devices.push(device_spec(spec, open_image(&spec.path, true)?));
    }
    format_devices(&devices, opts, Some(uuid))
}

/// Formats `devices` and initializes the new filesystem with its first mount and unmount, as
/// `bcachefs format` does: the allocator lays the devices out and writes what a filesystem
/// starts with (the superblock and journal buckets' alloc keys, one freespace key per run of
/// free buckets), and the unmount records the roots, so fsck finds a freshly formatted set
/// clean before anything else mounts it.
pub fn format_devices(devices: &[DeviceSpec], opts: &Options, uuid: Option<Uuid>) -> Result<FormatReport> {
    let report = format(devices, opts, uuid)?;
    let set = DeviceSet::open(devices.iter().map(|d| d.dev.clone()).collect())?;
    crate::fs::Fs::open(set, true, fs_core::btree::BtreeConfig::default())?.unmount()?;
    Ok(report)
}

pub(crate) fn device_spec(spec: &ImageSpec, dev: SharedDevice) -> DeviceSpec {
    DeviceSpec {
        dev,
        bucket_size: spec.bucket_size,
        durability: spec.durability,
        label: spec.label.clone(),
        data_allowed: spec.data_allowed,
        journal_bytes: spec.journal_bytes,
    }
}

/// Creates the file if needed and sets its length; growing a file leaves a hole (sparse).
pub(crate) fn resize_file(path: &Path, size: u64) -> Result<()> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(|e| io_error(e, ErrCode::IoWrite, "cannot create image").path(display(path)))?;
    file.set_len(size).map_err(|e| io_error(e, ErrCode::IoWrite, "cannot resize image").path(display(path)))
}
