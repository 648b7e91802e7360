//! Values of the file-layer keys: inodes, directory entries and extents.
//!
//! ```text
//! inode (btree inodes, pos 0:inum:0), 40 bytes
//!  0 mode u32 (S_IFDIR 0o040000 / S_IFREG 0o100000 | permissions) | 4 nlink u32
//!  8 size u64 (bytes) | 16 sectors u64 (allocated) | 24 parent u64 (directory inum)
//! 32 mtime_ns u64
//! dirent (btree dirents, pos dir_inum:name_hash:0)
//!  0 target u64 (inum) | 8 d_type u8 | 9 name_len u8 | 10 reserved [6] | 16 name, padded to 8
//! extent (btree extents, pos inum:end_sector:0, key size = sectors)
//!  0 nr_ptrs u8 | 1 reserved [3] | 4 crc32c u32 (of the extent's data) | 8 ptrs (16 bytes each)
//! ```

use crate::bkey::ptr::{ExtentPtr, MAX_PTRS};
use crate::encode::{Reader, Writer};
use crate::error::{ErrCode, Error, Result};

pub const S_IFMT: u32 = 0o170_000;
pub const S_IFDIR: u32 = 0o040_000;
pub const S_IFREG: u32 = 0o100_000;
/// `d_type` values, as in `<dirent.h>`.
pub const DT_DIR: u8 = 4;
pub const DT_REG: u8 = 8;
pub const MAX_NAME_LEN: usize = 255;

fn invalid(what: &str, msg: impl std::fmt::Display) -> Error {
    Error::new(ErrCode::BtreeNodeReadErr, format!("{what} value invalid: {msg}"))
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Inode {
    pub mode: u32,
    pub nlink: u32,
    pub size: u64,
    pub sectors: u64,
    pub parent: u64,
    pub mtime_ns: u64,
}

impl Inode {
    pub const BYTES: usize = 40;

    pub fn is_dir(&self) -> bool {
        self.mode & S_IFMT == S_IFDIR
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::with_capacity(Self::BYTES);
        w.u32(self.mode);
        w.u32(self.nlink);
        w.u64(self.size);
        w.u64(self.sectors);
        w.u64(self.parent);
        w.u64(self.mtime_ns);
        w.into_vec()
    }

    pub fn decode(val: &[u8]) -> Result<Inode> {
        if val.len() != Self::BYTES {
            return Err(invalid("inode", format_args!("{} bytes", val.len())));
        }
        let mut r = Reader::new(val, "inode", ErrCode::BtreeNodeReadErr);
        Ok(Inode {
            mode: r.u32()?,
            nlink: r.u32()?,
            size: r.u64()?,
            sectors: r.u64()?,
            parent: r.u64()?,
            mtime_ns: r.u64()?,
        })
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dirent {
    pub target: u64,
    pub d_type: u8,
    pub name: String,
}

impl Dirent {
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::with_capacity(16 + self.name.len());
        w.u64(self.target);
        w.u8(self.d_type);
        w.u8(self.name.len().min(MAX_NAME_LEN) as u8);
        w.zeros(6);
        w.bytes(self.name.as_bytes().get(..self.name.len().min(MAX_NAME_LEN)).unwrap_or_default());
        w.pad_to(8);
        w.into_vec()
    }

    pub fn decode(val: &[u8]) -> Result<Dirent> {
        let mut r = Reader::new(val, "dirent", ErrCode::BtreeNodeReadErr);
        let target = r.u64()?;
        let d_type = r.u8()?;
        let len = usize::from(r.u8()?);
        r.skip(6)?;
        let name = std::str::from_utf8(r.take(len)?).map_err(|_| invalid("dirent", "name is not UTF-8"))?;
        if name.is_empty() || name.contains('/') || name.contains('\0') {
            return Err(invalid("dirent", format_args!("bad name {name:?}")));
        }
        Ok(Dirent { target, d_type, name: name.to_owned() })
    }

    /// Where a name lives in its directory: a 63-bit hash of the name (bit 63 clear leaves
    /// room to probe past collisions).
    pub fn name_hash(name: &str) -> u64 {
        let lo = crc32c::crc32c(name.as_bytes());
        let hi = crc32c::crc32c_append(0x9e37_79b9, name.as_bytes());
        ((u64::from(hi) << 32) | u64::from(lo)) >> 1
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Extent {
    /// crc32c of the extent's data as written.
    pub crc32c: u32,
    pub ptrs: Vec<ExtentPtr>,
}

impl Extent {
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::with_capacity(8 + 16 * self.ptrs.len());
        w.u8(self.ptrs.len() as u8);
        w.zeros(3);
        w.u32(self.crc32c);
        for p in &self.ptrs {
            p.encode(&mut w);
        }
        w.into_vec()
    }

    pub fn decode(val: &[u8]) -> Result<Extent> {
        let mut r = Reader::new(val, "extent", ErrCode::BtreeNodeReadErr);
        let nr = usize::from(r.u8()?);
        r.skip(3)?;
        let crc32c = r.u32()?;
        if nr == 0 || nr > MAX_PTRS {
            return Err(invalid("extent", format_args!("{nr} pointers")));
        }
        let ptrs = (0..nr).map(|_| ExtentPtr::decode(&mut r)).collect::<Result<Vec<_>>>()?;
        if !r.is_empty() {
            return Err(invalid("extent", "trailing bytes"));
        }
        Ok(Extent { crc32c, ptrs })
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        /// Inode, dirent and extent values decode to themselves; truncations are typed errors.
        #[test]
        fn values_round_trip(mode in any::<u32>(), nlink in any::<u32>(), size in any::<u64>(), parent in any::<u64>(),
                             name in "[a-zA-Z0-9._-]{1,40}", target in any::<u64>(), crc in any::<u32>(),
                             ptrs in prop::collection::vec(any::<(u8, u8, u64)>(), 1..=4)) {
            let i = Inode { mode, nlink, size, sectors: size / 512, parent, mtime_ns: size ^ 7 };
            prop_assert_eq!(Inode::decode(&i.encode()).unwrap(), i);
            let d = Dirent { target, d_type: DT_REG, name };
            let bytes = d.encode();
            prop_assert_eq!(bytes.len() % 8, 0);
            prop_assert_eq!(Dirent::decode(&bytes).unwrap(), d);
            let e = Extent { crc32c: crc, ptrs: ptrs.into_iter().map(|(dev, bucket_gen, offset)| ExtentPtr { dev, bucket_gen, offset }).collect() };
            let bytes = e.encode();
            prop_assert_eq!(Extent::decode(&bytes).unwrap(), e);
            for cut in 0..bytes.len() {
                prop_assert!(Extent::decode(&bytes[..cut]).is_err());
            }
        }
    }

    #[test]
    fn name_hash_is_stable_and_spread() {
        assert_eq!(Dirent::name_hash("a"), Dirent::name_hash("a"));
        assert_ne!(Dirent::name_hash("a"), Dirent::name_hash("b"));
        assert!(Dirent::name_hash("anything") < 1 << 63);
    }
}
