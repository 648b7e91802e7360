//! Reading and writing superblock copies on a device.
//!
//! Reading tries copy 0 at its fixed offset, copy 1 where the device's end puts it, and the
//! offsets any valid copy records (the device may have grown since format). The valid copy with
//! the highest seq wins; the others that failed are reported, not fatal. Writing always writes
//! both copies, one flushed before the other, so a damaged copy is healed by the next write and
//! a crash never damages both.

use super::{HEADER_BYTES, SB_MAX_BYTES, SB_OFFSET_0, Superblock, backup_offset};
use crate::dev::BlockDevice;
use crate::error::{ErrCode, Error, Result};

/// A superblock copy that could not be used, and why.
#[derive(Debug)]
pub struct DamagedCopy {
    pub offset: u64,
    pub error: Error,
}

/// The result of reading a device's superblock.
#[derive(Debug)]
pub struct SbRead {
    pub sb: Superblock,
    /// Byte offset of the copy that won.
    pub offset: u64,
    /// Copies that were damaged or stale (older seq than the winner).
    pub damaged: Vec<DamagedCopy>,
}

/// Reads and decodes the copy at `offset`.
pub fn read_super_at(dev: &dyn BlockDevice, offset: u64) -> Result<Superblock> {
    let size = dev.size();
    if offset.saturating_add(HEADER_BYTES as u64) > size {
        return Err(Error::new(
            ErrCode::InvalidSbLayout,
            format!("no room for a superblock at byte {offset}: device is {size} bytes"),
        ));
    }
    // As bcachefs does: a first block, then the rest of what its length field claims (within
    // the reserved area), so a read never touches the unused part of the area.
    let room = SB_MAX_BYTES.min(size - offset);
    let mut buf = vec![0u8; SB_BLOCK.min(room) as usize];
    dev.read_at(&mut buf, offset)?;
    let claimed = buf.get(4..8).and_then(|b| b.try_into().ok()).map_or(0, u32::from_le_bytes);
    let want = u64::from(claimed).next_multiple_of(SB_BLOCK).min(room);
    if want > buf.len() as u64 {
        let have = buf.len();
        buf.resize(want as usize, 0);
        if let Some(rest) = buf.get_mut(have..) {
            dev.read_at(rest, offset + have as u64)?;
        }
    }
    Superblock::decode(&buf)
}

/// Superblock copies are read and written in blocks of this size; the first block read holds
/// the header and the copy's length.
const SB_BLOCK: u64 = 4096;

/// Reads every copy and picks the newest valid one. Fails with `no_valid_superblock` if none is
/// valid, and with `device_truncated` if the device is shorter than the superblock says.
pub fn read_super(dev: &dyn BlockDevice) -> Result<SbRead> {
    let size = dev.size();
    let name = dev.name().to_owned();
    if size < SB_OFFSET_0 + HEADER_BYTES as u64 {
        return Err(Error::new(
            ErrCode::NoValidSuperblock,
            format!("not a bcsim filesystem: image is only {size} bytes"),
        )
        .path(name));
    }
    let mut candidates = vec![SB_OFFSET_0, backup_offset(size)];
    let mut results: Vec<(u64, Result<Superblock>)> = Vec::new();
    let mut i = 0;
    while let Some(&offset) = candidates.get(i) {
        i += 1;
        let result = read_super_at(dev, offset);
        if let Ok(sb) = &result {
            for &o in &sb.offsets {
                if !candidates.contains(&o) {
                    candidates.push(o);
                }
            }
        }
        results.push((offset, result));
    }

    let best = results
        .iter()
        .filter_map(|(o, r)| r.as_ref().ok().map(|sb| (*o, sb.seq)))
        .max_by_key(|&(o, seq)| (seq, std::cmp::Reverse(o)));
    let Some((best_offset, best_seq)) = best else {
        return Err(no_valid_copy(&name, results));
    };
    let mut sb = None;
    let mut damaged = Vec::new();
    for (offset, result) in results {
        match result {
            Ok(s) if offset == best_offset => sb = Some(s),
            Ok(s) if s.seq == best_seq => {}
            Ok(s) => damaged.push(DamagedCopy {
                offset,
                error: Error::new(
                    ErrCode::InvalidSb,
                    format!("stale superblock copy: seq {} older than {best_seq}", s.seq),
                ),
            }),
            Err(error) => damaged.push(DamagedCopy { offset, error }),
        }
    }
    let sb =
        sb.ok_or_else(|| Error::new(ErrCode::NoValidSuperblock, "superblock vanished").path(name.clone()))?;
    // Copies only live where the winner says; a failed read at the end-derived offset of a
    // grown device is not damage.
    damaged.retain(|d| sb.offsets.contains(&d.offset));
    check_size(&sb, size, &name)?;
    Ok(SbRead { sb, offset: best_offset, damaged })
}

/// The device must be long enough for both copies and every bucket the member table gives it.
fn check_size(sb: &Superblock, size: u64, name: &str) -> Result<()> {
    let needed = sb
        .offsets
        .iter()
        .map(|o| o.saturating_add(SB_MAX_BYTES))
        .chain(sb.member().map(|m| m.bucket_bytes()))
        .max()
        .unwrap_or(0);
    if size < needed {
        return Err(Error::new(
            ErrCode::DeviceTruncated,
            format!("image is {size} bytes but its superblock says the device is at least {needed} bytes (truncated?)"),
        )
        .path(name));
    }
    Ok(())
}

fn no_valid_copy(name: &str, results: Vec<(u64, Result<Superblock>)>) -> Error {
    let errors: Vec<(u64, Error)> =
        results.into_iter().filter_map(|(offset, r)| r.err().map(|e| (offset, e))).collect();
    // Every copy of another format version: that is the one thing to say, once.
    if let Some((_, first)) = errors.first() {
        if errors.iter().all(|(_, e)| e.code() == ErrCode::InvalidSbVersion && e.message() == first.message())
        {
            return Error::new(ErrCode::InvalidSbVersion, first.message().to_owned()).path(name);
        }
    }
    let errors: Vec<Error> =
        errors.into_iter().map(|(offset, e)| e.prefix(format_args!("copy at byte {offset}"))).collect();
    let no_signature =
        errors.iter().all(|e| e.code() == ErrCode::InvalidSbMagic || e.code() == ErrCode::InvalidSbLayout)
            && errors.iter().any(|e| e.code() == ErrCode::InvalidSbMagic);
    if no_signature {
        return Error::new(ErrCode::NoValidSuperblock, "not a bcsim filesystem: no superblock found")
            .path(name);
    }
    let detail: Vec<String> = errors.iter().map(|e| e.message().to_owned()).collect();
    Error::new(ErrCode::NoValidSuperblock, format!("no valid superblock copy ({})", detail.join("; ")))
        .path(name)
}

/// Writes both copies of `sb` to `dev` (at `sb.offsets`), flushing after each: at most one copy
/// is ever in flight, so a crash or torn write can damage only one and the other stays valid.
pub fn write_super(dev: &dyn BlockDevice, sb: &Superblock) -> Result<()> {
    // Whole blocks, as the first read takes them: a rewrite covers every block a read of the
    // copy touches (and so remaps a bad sector there, as a disk does).
    let mut bytes = sb.encode()?;
    bytes.resize((bytes.len() as u64).next_multiple_of(SB_BLOCK) as usize, 0);
    for &offset in &sb.offsets {
        dev.write_at(&bytes, offset)
            .and_then(|()| dev.flush())
            .map_err(|e| e.prefix(format_args!("writing superblock copy at byte {offset}")))?;
    }
    Ok(())
}
