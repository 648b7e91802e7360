//! Watermarks and the per-device bucket reserves they leave untouched (`bch2_dev_buckets_reserved`).
//!
//! A request at a higher watermark may dig deeper into a device's free buckets: ordinary writes
//! stop while buckets remain for copygc, btree updates and journal reclaim, so the work that
//! frees space can always get the few buckets it needs.

use std::fmt;

/// How deep into the reserves a request may go, lowest first (`enum bch_watermark`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Watermark {
    Stripe,
    Normal,
    Copygc,
    Btree,
    BtreeCopygc,
    Reclaim,
    InteriorUpdates,
}

impl Watermark {
    pub const ALL: &'static [Watermark] = &[
        Watermark::Stripe,
        Watermark::Normal,
        Watermark::Copygc,
        Watermark::Btree,
        Watermark::BtreeCopygc,
        Watermark::Reclaim,
        Watermark::InteriorUpdates,
    ];

    /// bcachefs's name for the watermark.
    pub const fn name(self) -> &'static str {
        match self {
            Watermark::Stripe => "stripe",
            Watermark::Normal => "normal",
            Watermark::Copygc => "copygc",
            Watermark::Btree => "btree",
            Watermark::BtreeCopygc => "btree_copygc",
            Watermark::Reclaim => "reclaim",
            Watermark::InteriorUpdates => "interior_updates",
        }
    }
}

impl fmt::Display for Watermark {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Btree nodes one btree update may need at most (`BTREE_NODE_RESERVE`): the btree reserve
/// holds enough buckets for this many nodes.
pub const BTREE_NODE_RESERVE: u64 = 28;

/// Buckets per device held back for btree nodes (`ca->nr_btree_reserve`):
/// `ceil(28 / (bucket_size / btree_node_size))`. A node larger than a bucket counts as one node
/// per bucket, so the reserve never divides by zero.
pub fn nr_btree_reserve(bucket_size_bytes: u64, btree_node_size_bytes: u64) -> u64 {
    let nodes_per_bucket = bucket_size_bytes.checked_div(btree_node_size_bytes).unwrap_or(0).max(1);
    BTREE_NODE_RESERVE.div_ceil(nodes_per_bucket)
}

/// Buckets of a device of `nbuckets` buckets that a request at `watermark` must leave free.
///
/// Each watermark adds to the one above it (the kernel's switch falls through):
/// btree `nbr`, copygc `2*nbr`, normal `(nbuckets >> 6) + 2*nbr`, stripe `2*(nbuckets >> 6) + 2*nbr`,
/// and nothing at `btree_copygc`, `reclaim` and `interior_updates`.
pub fn reserved_buckets(watermark: Watermark, nbuckets: u64, nr_btree_reserve: u64) -> u64 {
    let sixty_fourth = nbuckets >> 6;
    match watermark {
        Watermark::Stripe => {
            sixty_fourth.saturating_mul(2).saturating_add(nr_btree_reserve.saturating_mul(2))
        }
        Watermark::Normal => sixty_fourth.saturating_add(nr_btree_reserve.saturating_mul(2)),
        Watermark::Copygc => nr_btree_reserve.saturating_mul(2),
        Watermark::Btree => nr_btree_reserve,
        Watermark::BtreeCopygc | Watermark::Reclaim | Watermark::InteriorUpdates => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The #1108 device (41522 buckets of 4 MiB, 256 KiB nodes): btree reserve 2, and the
    /// reserve per watermark as bcachefs computes it. vde had 1 free bucket: nothing at the
    /// btree watermark (1 - 2), one bucket at reclaim.
    #[test]
    fn issue_1108_reserves() {
        let nbr = nr_btree_reserve(4 << 20, 256 << 10);
        assert_eq!(nbr, 2);
        let nbuckets = 41_522;
        assert_eq!(nbuckets >> 6, 648);
        let got: Vec<(Watermark, u64)> =
            Watermark::ALL.iter().map(|&w| (w, reserved_buckets(w, nbuckets, nbr))).collect();
        assert_eq!(
            got,
            vec![
                (Watermark::Stripe, 1300),
                (Watermark::Normal, 652),
                (Watermark::Copygc, 4),
                (Watermark::Btree, 2),
                (Watermark::BtreeCopygc, 0),
                (Watermark::Reclaim, 0),
                (Watermark::InteriorUpdates, 0),
            ]
        );
        let free_on_vde = 1u64;
        assert_eq!(free_on_vde.saturating_sub(reserved_buckets(Watermark::Btree, nbuckets, nbr)), 0);
        assert_eq!(free_on_vde.saturating_sub(reserved_buckets(Watermark::Reclaim, nbuckets, nbr)), 1);
    }

    /// Reserves never grow as the watermark rises, and the btree reserve rounds up.
    #[test]
    fn reserves_shrink_with_watermark_and_round_up() {
        for nbuckets in [0u64, 63, 64, 1000, 262_144] {
            for nbr in [0u64, 1, 7] {
                let r: Vec<u64> =
                    Watermark::ALL.iter().map(|&w| reserved_buckets(w, nbuckets, nbr)).collect();
                assert!(r.windows(2).all(|p| p[0] >= p[1]), "{nbuckets} {nbr}: {r:?}");
            }
        }
        assert_eq!(nr_btree_reserve(1 << 20, 256 << 10), 7);
        assert_eq!(nr_btree_reserve(256 << 10, 32 << 10), 4);
        assert_eq!(nr_btree_reserve(128 << 10, 256 << 10), 28);
        assert_eq!(nr_btree_reserve(4096, 0), 28);
    }
}
