//! The superblock: what a device holds about the filesystem it belongs to.
//!
//! Two copies per device (one at byte 4096, one at the end), each checksummed; the newest valid
//! copy wins and a damaged copy is reported and rewritten by the next superblock write. The byte
//! layout is in `docs/FORMAT.md`; the offsets below are the same table in code.
//!
//! ```text
//! header (80 bytes)
//!   0  csum        u32  crc32c of bytes [4, bytes)
//!   4  bytes       u32  length of this copy, header included, a multiple of 8
//!   8  signature   [8]  "bcsimSB\0"
//!  16  magic       u64  fs_magic(uuid, SB_MAGIC_SALT)
//!  24  version     u16  FORMAT_VERSION
//!  26  dev_idx     u16  this device's slot in the member table
//!  28  nr_devices  u16  member table slots
//!  30  flags       u16  bit 0: clean; bit 1: errors recorded, a full fsck is needed
//!  32  uuid        [16] filesystem uuid
//!  48  seq         u64  bumped on every superblock write
//!  56  offset_0    u64  byte offset of copy 0
//!  64  offset_1    u64  byte offset of copy 1
//!  72  nr_fields   u32
//!  76  reserved    u32  zero
//! fields, each: type u16, reserved u16, bytes u32 (8-byte field header included), payload
//! ```

mod fields;
mod io;
mod set;

pub use fields::{
    CleanRoot, CleanSection, DataAllowed, ErrorCount, JournalBuckets, MAX_DURABILITY, Member, MemberState,
    label_in_target,
};
pub use io::{DamagedCopy, SbRead, read_super, read_super_at, write_super};
pub use set::{DeviceSet, MemberDevice};

use crate::encode::{Reader, Writer};
use crate::error::{ErrCode, Error, Result};
use crate::opts::Options;
use crate::uuid::Uuid;

/// The on-disk format version; bumped on any change to any on-disk structure.
pub const FORMAT_VERSION: u16 = 2;

pub const SB_SIGNATURE: [u8; 8] = *b"bcsimSB\0";
/// Salt for the superblock magic; journal entries and btree nodes get salts of their own.
pub const SB_MAGIC_SALT: u64 = 0x6263_7369_6d5f_7362; // "bcsim_sb"

/// Byte offset of superblock copy 0. The 4 KiB before it stay free for a partition table.
pub const SB_OFFSET_0: u64 = 4096;
/// The most bytes one superblock copy may take: copy 0 ends before 64 KiB.
pub const SB_MAX_BYTES: u64 = 60 << 10;
/// Bytes at the start of a device that buckets may not use.
pub const SB_START_RESERVED: u64 = SB_OFFSET_0 + SB_MAX_BYTES;
/// The most member slots a filesystem has.
pub const MAX_DEVICES: usize = 64;

pub const HEADER_BYTES: usize = 80;
const OFF_CSUM: usize = 0;
const OFF_BYTES: usize = OFF_CSUM + 4;
const OFF_SIGNATURE: usize = OFF_BYTES + 4;
const OFF_MAGIC: usize = OFF_SIGNATURE + 8;
const OFF_VERSION: usize = OFF_MAGIC + 8;
const OFF_DEV_IDX: usize = OFF_VERSION + 2;
const OFF_NR_DEVICES: usize = OFF_DEV_IDX + 2;
const OFF_FLAGS: usize = OFF_NR_DEVICES + 2;
const OFF_UUID: usize = OFF_FLAGS + 2;
const OFF_SEQ: usize = OFF_UUID + 16;
const OFF_OFFSET_0: usize = OFF_SEQ + 8;
const OFF_OFFSET_1: usize = OFF_OFFSET_0 + 8;
const OFF_NR_FIELDS: usize = OFF_OFFSET_1 + 8;
const OFF_FIELDS: usize = OFF_NR_FIELDS + 8;
const _: () = assert!(OFF_FIELDS == HEADER_BYTES);

const FLAG_CLEAN: u16 = 1 << 0;
const FLAG_NEEDS_FSCK: u16 = 1 << 1;

/// Where copy 1 goes on a device of `size_bytes`: the last `SB_MAX_BYTES` before the size
/// rounded down to 4 KiB.
pub fn backup_offset(size_bytes: u64) -> u64 {
    (size_bytes & !4095).saturating_sub(SB_MAX_BYTES)
}

/// A magic number derived from the filesystem uuid: a block written by another filesystem, or by
/// an earlier format of this device, does not carry this one's magic.
pub fn fs_magic(uuid: &Uuid, salt: u64) -> u64 {
    uuid.low_u64() ^ salt
}

/// A decoded superblock copy.
#[derive(Clone, Debug, PartialEq)]
pub struct Superblock {
    pub version: u16,
    pub uuid: Uuid,
    pub dev_idx: u16,
    pub seq: u64,
    /// Byte offsets of the two copies on this device.
    pub offsets: [u64; 2],
    /// Member table, indexed by device index; a slot with a nil uuid is unused.
    pub members: Vec<Member>,
    /// Filesystem options as persisted (every `FS` option).
    pub opts: Options,
    /// This device's journal buckets.
    pub journal: JournalBuckets,
    /// Present when the filesystem was unmounted cleanly.
    pub clean: Option<CleanSection>,
    /// Fsck error counts by stable id.
    pub errors: Vec<ErrorCount>,
    /// Errors were recorded that a full fsck has not repaired since (a mount that wrote short
    /// of the replica count, emergency read-only, problems a mount left): fsck checks the
    /// filesystem even when it is clean, as e2fsck does one "with errors".
    pub needs_fsck: bool,
}

impl Superblock {
    pub fn is_clean(&self) -> bool {
        self.clean.is_some()
    }

    /// Adds `n` occurrences of fsck error `err` to the persisted counts, by its stable id.
    pub fn count_error(&mut self, err: crate::fsck_err::FsckErr, n: u64) {
        if n == 0 {
            return;
        }
        let now =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        match self.errors.iter_mut().find(|e| e.id == err.id()) {
            Some(e) => {
                e.count += n;
                e.last_time_secs = now;
            }
            None => self.errors.push(ErrorCount { id: err.id(), count: n, last_time_secs: now }),
        }
    }

    /// This device's own member entry.
    pub fn member(&self) -> Option<&Member> {
        self.members.get(usize::from(self.dev_idx))
    }

    /// Encodes the superblock. Fails with `ENOSPC_sb` if it would not fit its reserved area.
    pub fn encode(&self) -> Result<Vec<u8>> {
        let mut w = Writer::with_capacity(4096);
        w.u32(0); // csum, filled last
        w.u32(0); // bytes, filled last
        w.bytes(&SB_SIGNATURE);
        w.u64(fs_magic(&self.uuid, SB_MAGIC_SALT));
        w.u16(self.version);
        w.u16(self.dev_idx);
        w.u16(u16::try_from(self.members.len()).map_err(|_| too_many_members(self.members.len()))?);
        w.u16(
            if self.clean.is_some() { FLAG_CLEAN } else { 0 }
                | if self.needs_fsck { FLAG_NEEDS_FSCK } else { 0 },
        );
        w.bytes(&self.uuid.0);
        w.u64(self.seq);
        w.u64(self.offsets[0]);
        w.u64(self.offsets[1]);
        let nr_fields = 4 + u32::from(self.clean.is_some());
        w.u32(nr_fields);
        w.u32(0);
        fields::encode_members(&mut w, &self.members);
        fields::encode_options(&mut w, &self.opts);
        fields::encode_journal(&mut w, &self.journal);
        if let Some(clean) = &self.clean {
            fields::encode_clean(&mut w, clean);
        }
        fields::encode_errors(&mut w, &self.errors);
        let bytes = w.len();
        if bytes as u64 > SB_MAX_BYTES {
            return Err(Error::new(
                ErrCode::EnospcSb,
                format!("superblock needs {bytes} bytes, more than the {SB_MAX_BYTES} reserved for it"),
            ));
        }
        let mut out = w.into_vec();
        if let Some(dst) = out.get_mut(OFF_BYTES..OFF_BYTES + 4) {
            dst.copy_from_slice(&(bytes as u32).to_le_bytes());
        }
        let csum = crc32c::crc32c(out.get(OFF_BYTES..).unwrap_or_default());
        if let Some(dst) = out.get_mut(OFF_CSUM..OFF_CSUM + 4) {
            dst.copy_from_slice(&csum.to_le_bytes());
        }
        Ok(out)
    }

    /// Decodes and validates one copy. `buf` may run past the copy's end (a whole reserved
    /// area); only `bytes` of it are checked and read.
    pub fn decode(buf: &[u8]) -> Result<Superblock> {
        let mut h = Reader::new(buf, "superblock header", ErrCode::InvalidSbLayout);
        let stored_csum = h.u32()?;
        let bytes = h.u32()?;
        let signature: [u8; 8] = h.array()?;
        if signature != SB_SIGNATURE {
            return Err(Error::new(ErrCode::InvalidSbMagic, "not a bcsim superblock (no signature)"));
        }
        if (bytes as usize) < HEADER_BYTES || u64::from(bytes) > SB_MAX_BYTES || bytes % 8 != 0 {
            return Err(Error::new(ErrCode::InvalidSbLayout, format!("superblock length {bytes} invalid")));
        }
        let Some(body) = buf.get(..bytes as usize) else {
            return Err(Error::new(
                ErrCode::InvalidSbLayout,
                format!("superblock says {bytes} bytes but only {} were read", buf.len()),
            ));
        };
        let computed = crc32c::crc32c(body.get(OFF_BYTES..).unwrap_or_default());
        if computed != stored_csum {
            return Err(Error::new(ErrCode::InvalidSbCsum, "superblock checksum mismatch")
                .csum(computed, stored_csum));
        }
        let mut r = Reader::new(body, "superblock", ErrCode::InvalidSbLayout);
        r.skip(OFF_MAGIC)?;
        let magic = r.u64()?;
        let version = r.u16()?;
        if version != FORMAT_VERSION {
            return Err(Error::new(
                ErrCode::InvalidSbVersion,
                if version < FORMAT_VERSION {
                    format!(
                        "image of format version {version}, older than this bcsim's {FORMAT_VERSION} (version 2 made \
                         alloc info sparse): reformat it, or read it with the bcsim that wrote it"
                    )
                } else {
                    format!(
                        "image of format version {version}, newer than this bcsim's {FORMAT_VERSION}: use a newer bcsim"
                    )
                },
            ));
        }
        let dev_idx = r.u16()?;
        let nr_devices = r.u16()?;
        let flags = r.u16()?;
        let uuid = Uuid(r.array()?);
        if magic != fs_magic(&uuid, SB_MAGIC_SALT) {
            return Err(Error::new(ErrCode::InvalidSbMagic, "superblock magic does not match its uuid"));
        }
        let seq = r.u64()?;
        let offsets = [r.u64()?, r.u64()?];
        let nr_fields = r.u32()?;
        r.skip(4)?;
        if usize::from(nr_devices) > MAX_DEVICES || dev_idx >= nr_devices {
            return Err(Error::new(
                ErrCode::InvalidSbMembers,
                format!("device index {dev_idx} with {nr_devices} member slots (at most {MAX_DEVICES})"),
            ));
        }
        let decoded = fields::decode_fields(&mut r, nr_fields, nr_devices, dev_idx)?;
        if (flags & FLAG_CLEAN != 0) != decoded.clean.is_some() {
            return Err(Error::new(ErrCode::InvalidSbClean, "clean flag and clean section disagree"));
        }
        Ok(Superblock {
            version,
            uuid,
            dev_idx,
            seq,
            offsets,
            members: decoded.members,
            opts: decoded.opts,
            journal: decoded.journal,
            clean: decoded.clean,
            errors: decoded.errors,
            needs_fsck: flags & FLAG_NEEDS_FSCK != 0,
        })
    }
}

fn too_many_members(n: usize) -> Error {
    Error::new(ErrCode::InvalidSbMembers, format!("{n} members, at most {MAX_DEVICES}"))
}

#[cfg(test)]
mod tests;
