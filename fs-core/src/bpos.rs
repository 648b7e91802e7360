//! Key positions and btree ids: the coordinates every error, key and node uses.

use std::fmt;

/// A key position, ordered as bcachefs orders `struct bpos`: inode, then offset, then snapshot.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Bpos {
    pub inode: u64,
    pub offset: u64,
    pub snapshot: u32,
}

impl Bpos {
    pub const MIN: Bpos = Bpos { inode: 0, offset: 0, snapshot: 0 };
    pub const MAX: Bpos = Bpos { inode: u64::MAX, offset: u64::MAX, snapshot: u32::MAX };

    pub const fn new(inode: u64, offset: u64, snapshot: u32) -> Self {
        Bpos { inode, offset, snapshot }
    }

    /// The next position in key order; `POS_MAX` stays `POS_MAX`.
    pub const fn successor(self) -> Bpos {
        if self.snapshot < u32::MAX {
            return Bpos { snapshot: self.snapshot + 1, ..self };
        }
        if self.offset < u64::MAX {
            return Bpos { inode: self.inode, offset: self.offset + 1, snapshot: 0 };
        }
        if self.inode < u64::MAX {
            return Bpos { inode: self.inode + 1, offset: 0, snapshot: 0 };
        }
        Bpos::MAX
    }

    /// The previous position in key order; `POS_MIN` stays `POS_MIN`.
    pub const fn predecessor(self) -> Bpos {
        if self.snapshot > 0 {
            return Bpos { snapshot: self.snapshot - 1, ..self };
        }
        if self.offset > 0 {
            return Bpos { inode: self.inode, offset: self.offset - 1, snapshot: u32::MAX };
        }
        if self.inode > 0 {
            return Bpos { inode: self.inode - 1, offset: u64::MAX, snapshot: u32::MAX };
        }
        Bpos::MIN
    }

    /// Parses `inode:offset[:snapshot]`, `POS_MIN` or `POS_MAX`.
    pub fn parse(s: &str) -> Option<Bpos> {
        match s {
            "POS_MIN" | "min" => return Some(Bpos::MIN),
            "POS_MAX" | "max" => return Some(Bpos::MAX),
            _ => {}
        }
        let mut parts = s.split(':');
        let inode = parts.next()?.parse().ok()?;
        let offset = parts.next().map_or(Some(0), |p| p.parse().ok())?;
        let snapshot =
            parts.next().map_or(Some(0), |p| if p == "U32_MAX" { Some(u32::MAX) } else { p.parse().ok() })?;
        if parts.next().is_some() {
            return None;
        }
        Some(Bpos { inode, offset, snapshot })
    }
}

impl fmt::Display for Bpos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Bpos::MIN => f.write_str("POS_MIN"),
            Bpos::MAX => f.write_str("POS_MAX"),
            Bpos { inode, offset, snapshot } => write!(f, "{inode}:{offset}:{snapshot}"),
        }
    }
}

crate::ids::stable_ids! {
    /// Btree ids with bcachefs's stable numbers; an id is never renumbered.
    pub enum BtreeId {
        Extents = 0, "extents";
        Inodes = 1, "inodes";
        Dirents = 2, "dirents";
        Xattrs = 3, "xattrs";
        Alloc = 4, "alloc";
        Quotas = 5, "quotas";
        Stripes = 6, "stripes";
        Reflink = 7, "reflink";
        Subvolumes = 8, "subvolumes";
        Snapshots = 9, "snapshots";
        Lru = 10, "lru";
        Freespace = 11, "freespace";
        NeedDiscard = 12, "need_discard";
        Backpointers = 13, "backpointers";
        BucketGens = 14, "bucket_gens";
        SnapshotTrees = 15, "snapshot_trees";
        DeletedInodes = 16, "deleted_inodes";
        LoggedOps = 17, "logged_ops";
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The on-disk id of every btree maps back to itself and names are unique.
    #[test]
    fn btree_ids_round_trip() {
        for &id in BtreeId::ALL {
            assert_eq!(BtreeId::from_u8(id as u8), Some(id));
            assert_eq!(BtreeId::from_name(id.name()), Some(id));
        }
        assert_eq!(BtreeId::from_u8(200), None);
    }

    /// Positions order by inode, then offset, then snapshot, as bkey_cmp does.
    #[test]
    fn bpos_order() {
        assert!(Bpos::new(1, 0, 0) > Bpos::new(0, u64::MAX, u32::MAX));
        assert!(Bpos::new(1, 2, 0) > Bpos::new(1, 1, u32::MAX));
        assert!(Bpos::new(1, 1, 1) > Bpos::new(1, 1, 0));
        assert_eq!(Bpos::MAX.to_string(), "POS_MAX");
        assert_eq!(Bpos::new(1, 2, 3).to_string(), "1:2:3");
    }

    /// successor and predecessor step by one position, carry across fields and stop at the ends.
    #[test]
    fn successor_predecessor_and_parse() {
        for p in [
            Bpos::new(1, 2, 3),
            Bpos::new(1, 2, u32::MAX),
            Bpos::new(1, u64::MAX, u32::MAX),
            Bpos::new(0, 0, 1),
        ] {
            assert!(p.successor() > p);
            assert_eq!(p.successor().predecessor(), p);
        }
        assert_eq!(Bpos::MAX.successor(), Bpos::MAX);
        assert_eq!(Bpos::MIN.predecessor(), Bpos::MIN);
        assert_eq!(Bpos::parse("1:2:3"), Some(Bpos::new(1, 2, 3)));
        assert_eq!(Bpos::parse("7"), Some(Bpos::new(7, 0, 0)));
        assert_eq!(Bpos::parse("POS_MAX"), Some(Bpos::MAX));
        assert_eq!(Bpos::parse("1:x"), None);
        assert_eq!(Bpos::parse("1:2:3:4"), None);
    }
}
