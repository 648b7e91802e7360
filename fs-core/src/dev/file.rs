//! [`FileDevice`]: an image file or a real block device (e.g. `/dev/loop0`) through positioned I/O.
//!
//! Positioned reads and writes (`pread`/`pwrite`) carry their own offset, so threads share one
//! open file through `&self` without a lock and without a shared cursor to race on.

use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Seek, SeekFrom};
use std::os::unix::fs::{FileExt, FileTypeExt};
use std::path::Path;

use super::{BlockDevice, check_range};
use crate::error::{ErrCode, Error, Result, io_error};

/// An image file or block device opened for positioned I/O.
#[derive(Debug)]
pub struct FileDevice {
    file: File,
    name: String,
    size_bytes: u64,
    writable: bool,
    is_block_device: bool,
}

/// What `path` is, checked before opening: on Linux `File::open` succeeds on a directory, and the
/// user deserves "is a directory" rather than a confusing read error later.
fn probe(path: &Path, name: &str) -> Result<std::fs::Metadata> {
    let meta = std::fs::metadata(path).map_err(|e| {
        if e.kind() == ErrorKind::NotFound {
            Error::new(ErrCode::Enoent, "no such file").path(name).source(e)
        } else {
            io_error(e, ErrCode::IoRead, "cannot inspect image").path(name)
        }
    })?;
    if meta.is_dir() {
        return Err(Error::new(ErrCode::Eisdir, "is a directory, not an image file").path(name));
    }
    let file_type = meta.file_type();
    if !file_type.is_file() && !file_type.is_block_device() {
        return Err(Error::new(
            ErrCode::InvalidArgument,
            "not a regular file or block device: cannot hold a filesystem image",
        )
        .path(name));
    }
    Ok(meta)
}

/// The size of an open block device: its metadata says 0, but seeking to the end gives the size
/// (this works for loop devices and disks alike).
fn block_device_size(file: &File, name: &str) -> Result<u64> {
    let mut handle = file;
    handle
        .seek(SeekFrom::End(0))
        .map_err(|e| io_error(e, ErrCode::IoRead, "cannot find block device size").path(name))
}

impl FileDevice {
    /// Opens an existing image or block device, read-write when `writable`.
    ///
    /// Missing: `Enoent`. A directory: `Eisdir`. Neither file nor block device: `InvalidArgument`.
    /// Any other OS failure: `IoRead` with the OS error as cause.
    pub fn open(path: &Path, writable: bool) -> Result<FileDevice> {
        let name = path.display().to_string();
        probe(path, &name)?;
        let file = OpenOptions::new()
            .read(true)
            .write(writable)
            .open(path)
            .map_err(|e| io_error(e, ErrCode::IoRead, "cannot open image").path(&name))?;
        FileDevice::from_open_file(file, name, writable)
    }

    /// Opens `path` read-write as a device of at least `size_bytes`, creating or growing a
    /// regular file as needed.
    ///
    /// A missing file is created sparse; a smaller file is extended sparse (its data kept); a
    /// larger file keeps its length, and `size()` then reports that real length so that callers
    /// decide how much of it to use. A block device is used as it is: if it is smaller than
    /// `size_bytes` the result is `DeviceTooSmall`.
    pub fn create_or_extend(path: &Path, size_bytes: u64) -> Result<FileDevice> {
        let name = path.display().to_string();
        let is_block_device = match probe(path, &name) {
            Ok(meta) => meta.file_type().is_block_device(),
            Err(e) if e.code() == ErrCode::Enoent => false,
            Err(e) => return Err(e),
        };
        if is_block_device {
            let dev = FileDevice::open(path, true)?;
            if dev.size_bytes < size_bytes {
                return Err(Error::new(
                    ErrCode::DeviceTooSmall,
                    format!("block device holds {} bytes, {size_bytes} needed", dev.size_bytes),
                )
                .path(name));
            }
            return Ok(dev);
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(|e| io_error(e, ErrCode::IoWrite, "cannot create image").path(&name))?;
        let len_bytes = file
            .metadata()
            .map_err(|e| io_error(e, ErrCode::IoRead, "cannot inspect image").path(&name))?
            .len();
        if len_bytes < size_bytes {
            // set_len on a regular file extends it with a hole: no blocks are allocated, so even
            // a terabyte-sized image costs nothing until it is written.
            file.set_len(size_bytes).map_err(|e| {
                io_error(e, ErrCode::IoWrite, format!("cannot extend image to {size_bytes} bytes"))
                    .path(&name)
            })?;
        }
        FileDevice::from_open_file(file, name, true)
    }

    fn from_open_file(file: File, name: String, writable: bool) -> Result<FileDevice> {
        let meta =
            file.metadata().map_err(|e| io_error(e, ErrCode::IoRead, "cannot inspect image").path(&name))?;
        let is_block_device = meta.file_type().is_block_device();
        let size_bytes = if is_block_device { block_device_size(&file, &name)? } else { meta.len() };
        // bcsim reads whole nodes, whole journal buckets, or single blocks far apart (the first
        // block of each journal bucket): readahead never helps, and in the holes of a sparse
        // image it fills the page cache with zeros, which made the journal read of an 8-member
        // set of 1 TiB images take seconds. Advice only: a refusal changes nothing.
        let _ = rustix::fs::fadvise(&file, 0, None, rustix::fs::Advice::Random);
        Ok(FileDevice { file, name, size_bytes, writable, is_block_device })
    }

    /// True when the device is a block device (e.g. a loop device) rather than an image file.
    pub fn is_block_device(&self) -> bool {
        self.is_block_device
    }

    /// True when the device was opened read-write.
    pub fn is_writable(&self) -> bool {
        self.writable
    }
}

impl BlockDevice for FileDevice {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        check_range(&self.name, offset, buf.len(), self.size_bytes, ErrCode::IoRead)?;
        self.file.read_exact_at(buf, offset).map_err(|e| {
            // The range was checked against the size at open, so a short read means the file
            // shrank underneath us: say that, rather than a bare "unexpected end of file".
            let msg = if e.kind() == ErrorKind::UnexpectedEof {
                format!(
                    "read past end of file: offset {offset}, length {}, device size {} at open \
                     (was the image truncated?)",
                    buf.len(),
                    self.size_bytes
                )
            } else {
                format!("read of {} bytes failed", buf.len())
            };
            Error::new(ErrCode::IoRead, msg).path(&self.name).offset(offset).source(e)
        })
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> Result<()> {
        if !self.writable {
            return Err(Error::new(ErrCode::IoWrite, "device opened read-only")
                .path(&self.name)
                .offset(offset));
        }
        check_range(&self.name, offset, buf.len(), self.size_bytes, ErrCode::IoWrite)?;
        self.file.write_all_at(buf, offset).map_err(|e| {
            Error::new(ErrCode::IoWrite, format!("write of {} bytes failed", buf.len()))
                .path(&self.name)
                .offset(offset)
                .source(e)
        })
    }

    fn flush(&self) -> Result<()> {
        // Nothing was written through a read-only handle, so there is nothing to make durable.
        if !self.writable {
            return Ok(());
        }
        // sync_all rather than sync_data: an image extended by set_len needs its new length
        // durable too, or a crash could leave written blocks beyond the recorded end.
        self.file
            .sync_all()
            .map_err(|e| Error::new(ErrCode::IoFlush, "fsync failed").path(&self.name).source(e))
    }

    /// Punches a hole (`fallocate(PUNCH_HOLE | KEEP_SIZE)`): an image file gives the space
    /// back and reads zeros there; a block device discards or zeroes the range.
    fn discard(&self, offset: u64, len: u64) -> Result<()> {
        if !self.writable {
            return Err(Error::new(ErrCode::IoWrite, "device opened read-only")
                .path(&self.name)
                .offset(offset));
        }
        check_range(
            &self.name,
            offset,
            usize::try_from(len).unwrap_or(usize::MAX),
            self.size_bytes,
            ErrCode::IoWrite,
        )?;
        let flags = rustix::fs::FallocateFlags::PUNCH_HOLE | rustix::fs::FallocateFlags::KEEP_SIZE;
        rustix::fs::fallocate(&self.file, flags, offset, len).map_err(|e| {
            Error::new(ErrCode::IoWrite, format!("discard of {len} bytes failed"))
                .path(&self.name)
                .offset(offset)
                .source(std::io::Error::from(e))
        })
    }

    fn size(&self) -> u64 {
        self.size_bytes
    }

    fn name(&self) -> &str {
        &self.name
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    /// A discarded range reads back as zeros, gives its blocks back to the host filesystem,
    /// and leaves the bytes around it alone.
    #[test]
    fn discard_punches_a_hole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("img");
        let dev = FileDevice::create_or_extend(&path, 4 << 20).unwrap();
        dev.write_at(&vec![7u8; 3 << 20], 0).unwrap();
        dev.flush().unwrap();
        let before = std::fs::metadata(&path).unwrap().blocks();
        dev.discard(1 << 20, 1 << 20).unwrap();
        dev.flush().unwrap();
        let after = std::fs::metadata(&path).unwrap().blocks();
        assert!(after < before, "no blocks given back: {before} -> {after}");
        let mut buf = vec![1u8; 3 << 20];
        dev.read_at(&mut buf, 0).unwrap();
        assert!(buf[..1 << 20].iter().all(|&b| b == 7));
        assert!(buf[1 << 20..2 << 20].iter().all(|&b| b == 0));
        assert!(buf[2 << 20..].iter().all(|&b| b == 7));
        assert_eq!(dev.discard(4 << 20, 1).unwrap_err().code(), ErrCode::IoWrite);
        let ro = FileDevice::open(&path, false).unwrap();
        assert_eq!(ro.discard(0, 4096).unwrap_err().code(), ErrCode::IoWrite);
    }

    /// Bytes written at an offset read back identical, through a reopen as well.
    #[test]
    fn round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("img");
        let dev = FileDevice::create_or_extend(&path, 1 << 20).unwrap();
        assert_eq!(dev.size(), 1 << 20);
        assert!(!dev.is_block_device());
        let data: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        dev.write_at(&data, 4097).unwrap();
        dev.flush().unwrap();
        let mut back = vec![0u8; data.len()];
        dev.read_at(&mut back, 4097).unwrap();
        assert_eq!(back, data);
        drop(dev);

        let dev = FileDevice::open(&path, false).unwrap();
        let mut back = vec![0u8; data.len()];
        dev.read_at(&mut back, 4097).unwrap();
        assert_eq!(back, data);
        assert_eq!(dev.name(), path.display().to_string());
    }

    /// A 1 TiB image is created as a hole: almost no blocks allocated, and its far end works.
    #[test]
    fn sparse_terabyte_image() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big");
        let size_bytes = 1u64 << 40;
        let dev = FileDevice::create_or_extend(&path, size_bytes).unwrap();
        assert_eq!(dev.size(), size_bytes);
        dev.write_at(b"tail", size_bytes - 4).unwrap();
        let mut back = [0u8; 4];
        dev.read_at(&mut back, size_bytes - 4).unwrap();
        assert_eq!(&back, b"tail");
        let blocks = std::fs::metadata(&path).unwrap().blocks();
        // 512-byte blocks: a filesystem may allocate a block or a few around the tail write.
        assert!(blocks < 1024, "1 TiB image allocated {blocks} blocks");
    }

    /// Extending keeps what the file already held; a larger file keeps its real length.
    #[test]
    fn extend_keeps_data_and_larger_keeps_length() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("img");
        std::fs::write(&path, b"existing data").unwrap();
        let dev = FileDevice::create_or_extend(&path, 8192).unwrap();
        assert_eq!(dev.size(), 8192);
        let mut back = [0u8; 13];
        dev.read_at(&mut back, 0).unwrap();
        assert_eq!(&back, b"existing data");
        let mut tail = [0xffu8; 16];
        dev.read_at(&mut tail, 8192 - 16).unwrap();
        assert_eq!(tail, [0u8; 16]);
        drop(dev);

        let dev = FileDevice::create_or_extend(&path, 100).unwrap();
        assert_eq!(dev.size(), 8192);
    }

    /// A directory is refused with `Eisdir` naming the path, not opened.
    #[test]
    fn directory_is_eisdir() {
        let dir = tempfile::tempdir().unwrap();
        let e = FileDevice::open(dir.path(), false).unwrap_err();
        assert_eq!(e.code(), ErrCode::Eisdir, "{e}");
        assert_eq!(e.context().path.as_deref(), Some(&*dir.path().display().to_string()));
        let e = FileDevice::create_or_extend(dir.path(), 4096).unwrap_err();
        assert_eq!(e.code(), ErrCode::Eisdir, "{e}");
    }

    /// A missing image is `Enoent` naming the path.
    #[test]
    fn missing_is_enoent() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nope");
        let e = FileDevice::open(&path, true).unwrap_err();
        assert_eq!(e.code(), ErrCode::Enoent, "{e}");
        assert!(e.to_string().contains("nope: no such file"), "{e}");
    }

    /// Reading past the end is `IoRead` with the offset in context and the sizes in the message.
    #[test]
    fn read_past_end_is_ioread() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("img");
        let dev = FileDevice::create_or_extend(&path, 4096).unwrap();
        let mut buf = [0u8; 512];
        let e = dev.read_at(&mut buf, 4000).unwrap_err();
        assert_eq!(e.code(), ErrCode::IoRead, "{e}");
        assert_eq!(e.context().offset, Some(4000));
        assert!(e.message().contains("read past end of device"), "{e}");
        assert!(e.message().contains("device size 4096"), "{e}");
        let e = dev.read_at(&mut buf, u64::MAX).unwrap_err();
        assert_eq!(e.code(), ErrCode::IoRead, "{e}");
    }

    /// A device opened read-only refuses writes with `IoWrite` saying so, and the file is unchanged.
    #[test]
    fn write_on_read_only_fails() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("img");
        std::fs::write(&path, [7u8; 1024]).unwrap();
        let dev = FileDevice::open(&path, false).unwrap();
        assert!(!dev.is_writable());
        let e = dev.write_at(&[1, 2, 3], 0).unwrap_err();
        assert_eq!(e.code(), ErrCode::IoWrite, "{e}");
        assert!(e.message().contains("read-only"), "{e}");
        assert_eq!(std::fs::read(&path).unwrap(), vec![7u8; 1024]);
        dev.flush().unwrap();
    }

    /// A write past the end of a writable image is refused rather than growing the file.
    #[test]
    fn write_past_end_is_iowrite() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("img");
        let dev = FileDevice::create_or_extend(&path, 4096).unwrap();
        let e = dev.write_at(&[0u8; 2], 4095).unwrap_err();
        assert_eq!(e.code(), ErrCode::IoWrite, "{e}");
        assert_eq!(e.context().offset, Some(4095));
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 4096);
    }
}
