//! Formatting: turning a set of devices into a new, empty, clean filesystem.
//!
//! Format lays out each device (superblock copies, buckets, journal buckets), builds the member
//! table, checks the options against the devices (replica counts, targets) and writes both
//! superblock copies everywhere. It works on any [`BlockDevice`](crate::dev::BlockDevice);
//! creating image files is the caller's business.

use crate::dev::SharedDevice;
use crate::error::{ErrCode, Error, Result};
use crate::opts::{OptId, Options};
use crate::rng::Rng;
use crate::sb::{
    CleanSection, DataAllowed, JournalBuckets, MAX_DEVICES, Member, MemberState, SB_OFFSET_0,
    SB_START_RESERVED, Superblock, backup_offset, read_super, write_super,
};
use crate::size::format_size;
use crate::uuid::Uuid;

/// A device must have at least this many buckets beyond the superblock and journal.
pub const MIN_DATA_BUCKETS: u64 = 64;
pub const MIN_JOURNAL_BUCKETS: u64 = 8;
pub const MAX_JOURNAL_BUCKETS: u64 = 8192;
/// Automatic bucket sizes stop growing here.
pub const MAX_AUTO_BUCKET_SIZE: u64 = 4 << 20;

/// One device to format and its per-device settings.
#[derive(Clone, Debug)]
pub struct DeviceSpec {
    pub dev: SharedDevice,
    /// Bucket size in bytes; `None` picks one from the device size.
    pub bucket_size: Option<u64>,
    pub durability: u8,
    pub label: String,
    /// What the device may hold; without `journal` it gets no journal buckets.
    pub data_allowed: DataAllowed,
    /// Journal bytes wanted at least, beyond bcachefs's rule (still within its caps and half
    /// the device): image sets built to hold a very long journal ask for it. `None`: the rule.
    pub journal_bytes: Option<u64>,
}

impl DeviceSpec {
    pub fn new(dev: SharedDevice) -> Self {
        DeviceSpec {
            dev,
            bucket_size: None,
            durability: 1,
            label: String::new(),
            data_allowed: DataAllowed::all(),
            journal_bytes: None,
        }
    }
}

/// What format wrote to one device.
#[derive(Clone, Debug)]
pub struct FormattedDevice {
    pub name: String,
    pub dev_idx: u16,
    pub member: Member,
    pub journal: JournalBuckets,
}

#[derive(Clone, Debug)]
pub struct FormatReport {
    pub uuid: Uuid,
    pub devices: Vec<FormattedDevice>,
}

/// The uuid of the bcsim filesystem already on `dev`, if a valid superblock copy is there.
pub fn existing_fs(dev: &SharedDevice) -> Option<Uuid> {
    read_super(dev.as_ref()).ok().map(|r| r.sb.uuid)
}

/// Bucket size for a device of `size_bytes` when none is given: about 2^18 buckets, at least
/// one btree node, at most 4 MiB (so a 1 TiB device gets 4 MiB buckets, as in #1108).
pub fn auto_bucket_size(size_bytes: u64, btree_node_size: u64) -> u64 {
    let x = size_bytes >> 18;
    let pow2 = if x == 0 { 0 } else { 1u64 << (63 - x.leading_zeros()) };
    pow2.clamp(btree_node_size, MAX_AUTO_BUCKET_SIZE.max(btree_node_size))
}

/// The journal should hold at least this much per device, however small the buckets.
pub const MIN_JOURNAL_BYTES: u64 = 1 << 20;

/// A device's journal never holds more than this (2^24 sectors), as in bcachefs.
pub const MAX_JOURNAL_BYTES: u64 = 8 << 30;

/// Journal buckets for a device, by bcachefs's rule: nbuckets/256, at least 8, at most 8192 and
/// at most 8 GiB worth. bcsim adds two bounds for tiny devices: at least 1 MiB worth, and never
/// more than half of the buckets left after the superblock.
pub fn journal_buckets_for(nbuckets: u64, usable: u64, bucket_size: u64) -> u64 {
    let bucket_size = bucket_size.max(1);
    let min_for_bytes = MIN_JOURNAL_BYTES.div_ceil(bucket_size);
    let max = MAX_JOURNAL_BUCKETS.min(MAX_JOURNAL_BYTES / bucket_size).max(MIN_JOURNAL_BUCKETS);
    (nbuckets >> 8).max(min_for_bytes).clamp(MIN_JOURNAL_BUCKETS, max).min(usable / 2)
}

/// [`journal_buckets_for`], raised to `bytes` worth when given, within the same caps and never
/// more than half of the usable buckets.
pub fn journal_buckets_at_least(nbuckets: u64, usable: u64, bucket_size: u64, bytes: Option<u64>) -> u64 {
    let bucket_size = bucket_size.max(1);
    let max = MAX_JOURNAL_BUCKETS.min(MAX_JOURNAL_BYTES / bucket_size);
    let wanted = bytes.map_or(0, |b| b.div_ceil(bucket_size)).min(max).min(usable / 2);
    journal_buckets_for(nbuckets, usable, bucket_size).max(wanted)
}

/// Formats `devices` as one filesystem with `opts`. `uuid` fixes the filesystem uuid (random
/// otherwise); member uuids derive from it, so a given uuid reproduces identical images.
pub fn format(devices: &[DeviceSpec], opts: &Options, uuid: Option<Uuid>) -> Result<FormatReport> {
    if devices.is_empty() || devices.len() > MAX_DEVICES {
        return Err(Error::new(
            ErrCode::InvalidArgument,
            format!("{} devices given: a filesystem has 1 to {MAX_DEVICES}", devices.len()),
        ));
    }
    if opts.btree_node_size() < opts.block_size() {
        return Err(Error::new(
            ErrCode::InvalidArgument,
            format!(
                "btree_node_size {} is smaller than block_size {}",
                format_size(opts.btree_node_size()),
                format_size(opts.block_size())
            ),
        ));
    }
    let uuid = uuid.unwrap_or_else(Uuid::random);
    let mut laid_out = Vec::with_capacity(devices.len());
    for (idx, spec) in devices.iter().enumerate() {
        laid_out.push(layout_device(spec, opts, &uuid, idx)?);
    }
    let members: Vec<Member> = laid_out.iter().map(|(m, _)| m.clone()).collect();
    check_targets(&members, opts)?;
    check_replicas(&members, opts)?;

    let mut report = FormatReport { uuid, devices: Vec::with_capacity(devices.len()) };
    for (idx, (spec, (member, journal))) in devices.iter().zip(laid_out).enumerate() {
        let dev_idx = idx as u16;
        let sb = Superblock {
            version: crate::sb::FORMAT_VERSION,
            uuid,
            dev_idx,
            seq: 1,
            offsets: [SB_OFFSET_0, backup_offset(spec.dev.size())],
            members: members.clone(),
            opts: opts.clone(),
            journal: journal.clone(),
            clean: Some(CleanSection::default()),
            errors: Vec::new(),
            needs_fsck: false,
        };
        write_super(spec.dev.as_ref(), &sb).map_err(|e| e.or_path(spec.dev.name()))?;
        report.devices.push(FormattedDevice { name: spec.dev.name().to_owned(), dev_idx, member, journal });
    }
    Ok(report)
}

/// The superblock of a device added to the filesystem whose superblock is `sb` (offline
/// `device add`): the next member index, laid out as format lays out a device, marked as having
/// no alloc or freespace keys yet (`freespace_initialized_to = Some(0)`: the next mount writes
/// them). Its member table already holds the new member; the caller writes it to the new device
/// and the others.
pub fn layout_added_device(sb: &Superblock, spec: &DeviceSpec) -> Result<Superblock> {
    let idx = sb.members.len();
    if idx >= MAX_DEVICES {
        return Err(Error::new(
            ErrCode::InvalidArgument,
            format!("the filesystem has {idx} members already: at most {MAX_DEVICES}"),
        ));
    }
    let (mut member, journal) = layout_device(spec, &sb.opts, &sb.uuid, idx)?;
    member.freespace_initialized_to = Some(0);
    let mut members = sb.members.clone();
    members.push(member);
    Ok(Superblock {
        dev_idx: idx as u16,
        offsets: [SB_OFFSET_0, backup_offset(spec.dev.size())],
        members,
        journal,
        ..sb.clone()
    })
}

fn layout_device(
    spec: &DeviceSpec,
    opts: &Options,
    uuid: &Uuid,
    idx: usize,
) -> Result<(Member, JournalBuckets)> {
    let name = spec.dev.name();
    let size = spec.dev.size();
    let node = opts.btree_node_size();
    let bucket_size = match spec.bucket_size {
        None | Some(0) => auto_bucket_size(size, node),
        Some(b) => {
            OptId::BucketSize.desc().parse(&b.to_string()).map_err(|e| e.path(name))?;
            if b < node {
                return Err(Error::new(
                    ErrCode::InvalidArgument,
                    format!(
                        "bucket size {} is smaller than btree_node_size {}",
                        format_size(b),
                        format_size(node)
                    ),
                )
                .path(name));
            }
            b
        }
    };
    let bucket_size_u32 = u32::try_from(bucket_size)
        .map_err(|_| Error::new(ErrCode::InvalidArgument, "bucket size too large").path(name))?;
    let nbuckets = backup_offset(size) / bucket_size;
    let first_bucket = SB_START_RESERVED.div_ceil(bucket_size);
    let usable = nbuckets.saturating_sub(first_bucket);
    let min_usable = MIN_DATA_BUCKETS + MIN_JOURNAL_BUCKETS;
    if usable < min_usable {
        let needed = (first_bucket + min_usable) * bucket_size + SB_START_RESERVED;
        return Err(Error::new(
            ErrCode::DeviceTooSmall,
            format!(
                "device of {size} bytes is too small: {usable} usable buckets of {}, needs at least {min_usable} (about {} bytes)",
                format_size(bucket_size),
                needed
            ),
        )
        .path(name));
    }
    if spec.durability > crate::sb::MAX_DURABILITY {
        return Err(Error::new(ErrCode::InvalidArgument, format!("durability {} above 4", spec.durability))
            .path(name));
    }
    OptId::Label.desc().parse(&spec.label).map_err(|e| e.path(name))?;
    let nr_journal = if spec.data_allowed.contains(DataAllowed::JOURNAL) {
        journal_buckets_at_least(nbuckets, usable, bucket_size, spec.journal_bytes)
    } else {
        0
    };
    let mut rng = Rng::new(uuid.low_u64() ^ (idx as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let member = Member {
        uuid: Uuid::from_rng(&mut rng),
        nbuckets,
        bucket_size: bucket_size_u32,
        first_bucket: first_bucket as u32,
        durability: spec.durability,
        state: MemberState::Rw,
        data_allowed: spec.data_allowed,
        label: spec.label.clone(),
        freespace_initialized_to: None,
    };
    let journal = JournalBuckets {
        ranges: std::iter::once(first_bucket..first_bucket + nr_journal).filter(|r| !r.is_empty()).collect(),
    };
    Ok((member, journal))
}

fn check_targets(members: &[Member], opts: &Options) -> Result<()> {
    for id in [OptId::MetadataTarget, OptId::ForegroundTarget] {
        let target = opts.str(id);
        if !target.is_empty() && !members.iter().any(|m| m.in_target(target)) {
            let labels: Vec<&str> =
                members.iter().map(|m| m.label.as_str()).filter(|l| !l.is_empty()).collect();
            return Err(Error::new(
                ErrCode::InvalidArgument,
                format!(
                    "{id} '{target}' matches no device label (labels given: {})",
                    if labels.is_empty() { "none".to_owned() } else { labels.join(", ") }
                ),
            ));
        }
    }
    Ok(())
}

/// Each replica count must be reachable: the durability of the devices that may hold it adds up
/// to at least the count.
fn check_replicas(members: &[Member], opts: &Options) -> Result<()> {
    for (what, bit) in [("journal", DataAllowed::JOURNAL), ("btree", DataAllowed::BTREE)] {
        if !members.iter().any(|m| m.data_allowed.contains(bit)) {
            return Err(Error::new(
                ErrCode::InvalidArgument,
                format!("no device allows {what} data: give at least one data_allowed={what}"),
            ));
        }
    }
    let checks = [
        (OptId::MetadataReplicas, opts.metadata_replicas(), opts.metadata_target(), DataAllowed::BTREE),
        (OptId::DataReplicas, opts.data_replicas(), opts.str(OptId::ForegroundTarget), DataAllowed::USER),
    ];
    for (id, want, target, bit) in checks {
        let in_target: Vec<&Member> = members
            .iter()
            .filter(|m| (target.is_empty() || m.in_target(target)) && m.data_allowed.contains(bit))
            .collect();
        let durability: u64 = in_target.iter().map(|m| u64::from(m.durability)).sum();
        if want > durability {
            let scope = if target.is_empty() { String::new() } else { format!(" in target '{target}'") };
            return Err(Error::new(
                ErrCode::InvalidArgument,
                format!(
                    "{id}={want} but the {} device(s){scope} give only {durability} replica(s) of durability",
                    in_target.len()
                ),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::dev::MemDevice;
    use crate::opts::OptValue;

    fn specs(sizes: &[u64]) -> Vec<DeviceSpec> {
        sizes
            .iter()
            .enumerate()
            .map(|(i, &s)| DeviceSpec::new(Arc::new(MemDevice::new(format!("mem{i}"), s))))
            .collect()
    }

    /// A 1 TiB device gets 4 MiB buckets, the journal gets nbuckets/256 of them right after the
    /// superblock, and every device's superblock reads back with the same member table.
    #[test]
    fn layout_of_a_terabyte_device() {
        let devs = specs(&[1 << 40, 1 << 40]);
        let report = format(&devs, &Options::default(), None).unwrap();
        let m = &report.devices[0].member;
        assert_eq!(m.bucket_size, 4 << 20);
        // The last 60 KiB hold superblock copy 1, so the final bucket is not whole.
        assert_eq!(m.nbuckets, (1 << 18) - 1);
        assert_eq!(m.first_bucket, 1);
        assert_eq!(report.devices[0].journal.ranges, std::iter::once(1..1 + 1023).collect::<Vec<_>>());
        for (i, d) in devs.iter().enumerate() {
            let sb = read_super(d.dev.as_ref()).unwrap().sb;
            assert_eq!(sb.dev_idx as usize, i);
            assert_eq!(sb.uuid, report.uuid);
            assert!(sb.is_clean());
            assert_eq!(sb.members.len(), 2);
        }
    }

    /// The journal's size follows bcachefs's rule: nbuckets/256 between 8 buckets and the smaller
    /// of 8192 buckets and 8 GiB; bcsim's own floor of 1 MiB and half the device apply below it.
    #[test]
    fn journal_size_rule() {
        const M: u64 = 1 << 20;
        assert_eq!(journal_buckets_for(16384, 16383, 256 << 10), 64);
        assert_eq!(journal_buckets_for(1 << 22, (1 << 22) - 1, 4 * M), 2048, "8 GiB cap");
        assert_eq!(journal_buckets_for(1 << 24, (1 << 24) - 1, 512 << 10), 8192, "8192 cap");
        assert_eq!(journal_buckets_for(100, 99, 64 << 10), 16, "1 MiB floor");
        assert_eq!(journal_buckets_for(20, 19, 2 * M), 8, "8 bucket floor");
        assert_eq!(journal_buckets_for(12, 11, 2 * M), 5, "half the device");
    }

    /// A journal asked to hold more grows to that, within the rule's caps and half the device;
    /// asked for less than the rule gives, it keeps the rule's size.
    #[test]
    fn a_journal_asked_for_more_grows_within_the_caps() {
        const M: u64 = 1 << 20;
        let nvme = (262144, 262143, M);
        let at_least = |bytes| journal_buckets_at_least(nvme.0, nvme.1, nvme.2, bytes);
        assert_eq!(at_least(None), 1024, "the rule");
        assert_eq!(at_least(Some(64 * M)), 1024, "less than the rule");
        assert_eq!(at_least(Some(4096 * M + 1)), 4097);
        assert_eq!(at_least(Some(1 << 40)), 8192, "8 GiB cap");
        assert_eq!(journal_buckets_at_least(100, 99, 64 << 10, Some(1 << 30)), 49, "half the device");
    }

    /// The same uuid gives byte-identical images: fixtures and scenarios are reproducible.
    #[test]
    fn fixed_uuid_is_reproducible() {
        let uuid = Uuid([7; 16]);
        let a = specs(&[64 << 20]);
        let b = specs(&[64 << 20]);
        format(&a, &Options::default(), Some(uuid)).unwrap();
        format(&b, &Options::default(), Some(uuid)).unwrap();
        let mut x = vec![0u8; 64 << 10];
        let mut y = vec![0u8; 64 << 10];
        a[0].dev.read_at(&mut x, 0).unwrap();
        b[0].dev.read_at(&mut y, 0).unwrap();
        assert_eq!(x, y);
    }

    /// Replica counts above what the devices can give, targets naming no device, devices too
    /// small and bucket sizes that do not fit are refused before anything is written.
    #[test]
    fn bad_requests_are_refused() {
        let mut opts = Options::default();
        opts.set(OptId::MetadataReplicas, OptValue::U64(3)).unwrap();
        let devs = specs(&[GIB, GIB]);
        let e = format(&devs, &opts, None).unwrap_err();
        assert_eq!(e.code(), ErrCode::InvalidArgument);
        assert!(e.to_string().contains("metadata_replicas=3"), "{e}");
        assert!(existing_fs(&devs[0].dev).is_none(), "nothing may be written on a refused format");

        let mut opts = Options::default();
        opts.set(OptId::MetadataTarget, OptValue::Str("ssd".into())).unwrap();
        let e = format(&specs(&[GIB]), &opts, None).unwrap_err();
        assert!(e.to_string().contains("matches no device label"), "{e}");

        let e = format(&specs(&[4 << 20]), &Options::default(), None).unwrap_err();
        assert_eq!(e.code(), ErrCode::DeviceTooSmall);
        assert!(e.to_string().contains("mem0"), "{e}");

        let mut d = specs(&[GIB]);
        d[0].bucket_size = Some(128 << 10);
        let e = format(&d, &Options::default(), None).unwrap_err();
        assert!(e.to_string().contains("smaller than btree_node_size"), "{e}");
        d[0].bucket_size = Some(300 << 10);
        let e = format(&d, &Options::default(), None).unwrap_err();
        assert!(e.to_string().contains("power of two"), "{e}");
        assert_eq!(e.code().exit_class(), crate::error::ExitClass::Usage);
    }

    /// Durability adds up: one durability-2 device satisfies two replicas.
    #[test]
    fn durability_counts_toward_replicas() {
        let mut opts = Options::default();
        opts.set(OptId::MetadataReplicas, OptValue::U64(2)).unwrap();
        let mut d = specs(&[GIB]);
        d[0].durability = 2;
        format(&d, &opts, None).unwrap();
    }

    const GIB: u64 = 1 << 30;
}
