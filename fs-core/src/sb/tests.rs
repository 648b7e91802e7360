//! Superblock encode/decode and damage handling: every copy decodes to what was encoded, and
//! every kind of damage is a typed error or a reported copy, never a panic.

use std::sync::Arc;

use proptest::prelude::*;

use super::*;
use crate::bpos::BtreeId;
use crate::dev::{BlockDevice, MemDevice, SharedDevice};
use crate::format::{DeviceSpec, format};
use crate::opts::{OPTIONS, OptFlags, OptType, OptValue};

const GIB: u64 = 1 << 30;

fn mem(name: &str, size: u64) -> SharedDevice {
    Arc::new(MemDevice::new(name, size))
}

fn formatted(n: usize, size: u64) -> (Vec<SharedDevice>, Uuid) {
    let devs: Vec<SharedDevice> = (0..n).map(|i| mem(&format!("mem{i}"), size)).collect();
    let specs: Vec<DeviceSpec> = devs.iter().cloned().map(DeviceSpec::new).collect();
    let report = format(&specs, &Options::default(), None).unwrap();
    (devs, report.uuid)
}

fn flip(dev: &dyn BlockDevice, offset: u64, mask: u8) {
    let mut b = [0u8; 1];
    dev.read_at(&mut b, offset).unwrap();
    b[0] ^= mask;
    dev.write_at(&b, offset).unwrap();
}

fn arb_label() -> impl Strategy<Value = String> {
    prop_oneof![Just(String::new()), "[a-z][a-z0-9_-]{0,6}(\\.[a-z0-9]{1,6}){0,2}"]
}

fn arb_member() -> impl Strategy<Value = Member> {
    (any::<[u8; 16]>(), 12u32..=30, 0u32..4, 100u64..1 << 30, 0u8..=4, 0u8..4, arb_label()).prop_map(
        |(uuid, shift, first, extra, durability, state, label)| Member {
            uuid: Uuid(if uuid == [0; 16] { [1; 16] } else { uuid }),
            nbuckets: u64::from(first) + extra,
            bucket_size: 1 << shift,
            first_bucket: first,
            durability,
            state: [MemberState::Rw, MemberState::Ro, MemberState::Failed, MemberState::Spare]
                [state as usize],
            label,
            freespace_initialized_to: None,
            data_allowed: Default::default(),
        },
    )
}

/// Random valid values for every filesystem option.
fn arb_options() -> impl Strategy<Value = Options> {
    let fs: Vec<_> = OPTIONS.iter().filter(|d| d.flags.contains(OptFlags::FS)).collect();
    proptest::collection::vec(any::<u64>(), fs.len()).prop_flat_map(move |seeds| {
        let mut opts = Options::default();
        for (d, seed) in fs.iter().zip(seeds) {
            let v = match d.ty {
                OptType::Bool => OptValue::U64(seed % 2),
                OptType::U64 { min, max } => OptValue::U64(min + seed % (max - min + 1)),
                OptType::Size { min, max, .. } => {
                    let steps = u64::from(max.trailing_zeros() - min.trailing_zeros()) + 1;
                    OptValue::U64(min << (seed % steps))
                }
                OptType::Enum(names) => OptValue::U64(seed % names.len() as u64),
                OptType::Target | OptType::Label => {
                    OptValue::Str(["", "ssd", "hdd.big", "nvme-0.a_b"][(seed % 4) as usize].to_owned())
                }
            };
            opts.set(d.id, v).unwrap();
        }
        Just(opts)
    })
}

fn arb_sb() -> impl Strategy<Value = Superblock> {
    (
        proptest::collection::vec(arb_member(), 1..8),
        arb_options(),
        any::<u64>(),
        proptest::option::of((
            any::<u64>(),
            proptest::collection::vec(
                (0usize..18, 0u8..=3, proptest::collection::vec(any::<u8>(), 0..40)),
                0..5,
            ),
        )),
        proptest::collection::vec((any::<u16>(), any::<u64>(), any::<u64>()), 0..6),
        any::<[u8; 16]>(),
        (0u64..4, 1u64..50),
    )
        .prop_map(|(members, opts, seq, clean, errors, uuid, (jstart, jlen))| {
            let own = &members[0];
            let start =
                u64::from(own.first_bucket) + jstart.min(own.nbuckets - u64::from(own.first_bucket) - 1);
            let end = (start + jlen).min(own.nbuckets);
            Superblock {
                version: FORMAT_VERSION,
                uuid: Uuid(uuid),
                dev_idx: 0,
                seq,
                offsets: [SB_OFFSET_0, 1 << 40],
                members,
                opts,
                journal: JournalBuckets { ranges: std::iter::once(start..end).collect() },
                clean: clean.map(|(journal_seq, roots)| CleanSection {
                    journal_seq,
                    roots: roots
                        .into_iter()
                        .map(|(b, level, key)| CleanRoot { btree: BtreeId::ALL[b], level, key })
                        .collect(),
                }),
                errors: errors
                    .into_iter()
                    .map(|(id, count, last_time_secs)| ErrorCount { id, count, last_time_secs })
                    .collect(),
                // Both values of the flag, drawn from a field already random.
                needs_fsck: seq % 2 == 1,
            }
        })
}

proptest! {
    /// Any valid superblock decodes to exactly what was encoded.
    #[test]
    fn encode_decode_round_trip(sb in arb_sb()) {
        let bytes = sb.encode().unwrap();
        prop_assert_eq!(bytes.len() % 8, 0);
        prop_assert_eq!(Superblock::decode(&bytes).unwrap(), sb.clone());
        // Trailing bytes after the copy (the rest of the reserved area) are ignored.
        let mut padded = bytes.clone();
        padded.extend_from_slice(&[0xa5; 100]);
        prop_assert_eq!(Superblock::decode(&padded).unwrap(), sb);
    }

    /// Arbitrary bytes never panic the decoder, with or without a valid signature prefix.
    #[test]
    fn garbage_never_panics(mut bytes in proptest::collection::vec(any::<u8>(), 0..600), sig in any::<bool>()) {
        if sig && bytes.len() >= 16 {
            bytes[8..16].copy_from_slice(&SB_SIGNATURE);
        }
        prop_assert!(Superblock::decode(&bytes).is_err());
    }
}

/// A flip of any single bit anywhere in an encoded superblock is detected: decode fails with a
/// typed superblock error, never succeeds and never panics.
#[test]
fn every_bit_flip_is_detected() {
    let (devs, _) = formatted(3, GIB);
    let bytes = read_super(devs[1].as_ref()).unwrap().sb.encode().unwrap();
    for i in 0..bytes.len() {
        for bit in 0..8 {
            let mut b = bytes.clone();
            b[i] ^= 1 << bit;
            let e = Superblock::decode(&b).expect_err("flipped superblock decoded");
            assert!(e.matches(ErrCode::InvalidSb), "byte {i} bit {bit}: {e}");
        }
    }
}

/// Damage to one copy is reported and the other copy is used; the next superblock write heals it.
#[test]
fn one_damaged_copy_is_reported_and_healed() {
    for copy in 0..2 {
        let (devs, uuid) = formatted(2, GIB);
        let dev = devs[0].as_ref();
        let offset = read_super(dev).unwrap().sb.offsets[copy];
        flip(dev, offset + 40, 0x10);
        let r = read_super(dev).unwrap();
        assert_eq!(r.sb.uuid, uuid);
        assert_eq!(r.damaged.len(), 1, "copy {copy}");
        assert_eq!(r.damaged[0].offset, offset);
        assert_eq!(r.damaged[0].error.code(), ErrCode::InvalidSbCsum);
        // The error carries both sides of the check, and they differ.
        let c = r.damaged[0].error.context().csum.expect("checksum mismatch without got/expected");
        assert_ne!(c.got, c.expected);

        let mut set = DeviceSet::open(devs.clone()).unwrap();
        assert_eq!(set.device(0).unwrap().damaged.len(), 1);
        set.write_super().unwrap();
        let r = read_super(dev).unwrap();
        assert!(r.damaged.is_empty(), "copy {copy} not healed: {:?}", r.damaged);
        assert_eq!(r.sb.seq, 2);
    }
}

/// Both copies damaged: a typed error that names both copies, never a panic.
#[test]
fn both_copies_damaged_is_an_error() {
    let (devs, _) = formatted(1, GIB);
    let dev = devs[0].as_ref();
    let offsets = read_super(dev).unwrap().sb.offsets;
    flip(dev, offsets[0] + 100, 1);
    flip(dev, offsets[1] + 100, 1);
    let e = read_super(dev).unwrap_err();
    assert_eq!(e.code(), ErrCode::NoValidSuperblock);
    let msg = e.to_string();
    assert!(msg.contains(&format!("copy at byte {}", offsets[0])), "{msg}");
    assert!(msg.contains(&format!("copy at byte {}", offsets[1])), "{msg}");
    assert!(msg.contains("mem0"), "{msg}");
}

/// An image of another format version is refused with one plain sentence saying which
/// version it is and what to do, once, not once per copy; a single copy of another version
/// beside a good one is a damaged copy like any other.
#[test]
fn another_format_version_is_one_clear_error() {
    for (version, says) in
        [(FORMAT_VERSION - 1, "older than this bcsim's"), (FORMAT_VERSION + 1, "newer than")]
    {
        let (devs, _) = formatted(1, GIB);
        let dev = devs[0].as_ref();
        let mut sb = read_super(dev).unwrap().sb;
        sb.version = version;
        let bytes = sb.encode().unwrap();
        dev.write_at(&bytes, sb.offsets[1]).unwrap();
        let r = read_super(dev).unwrap();
        assert_eq!(r.damaged.len(), 1, "version {version}");
        assert_eq!(r.damaged[0].error.code(), ErrCode::InvalidSbVersion);

        dev.write_at(&bytes, sb.offsets[0]).unwrap();
        let e = read_super(dev).unwrap_err();
        assert_eq!(e.code(), ErrCode::InvalidSbVersion, "{e}");
        let msg = e.to_string();
        assert!(msg.contains(&format!("format version {version}, {says}")), "{msg}");
        assert_eq!(msg.matches("format version").count(), 1, "said more than once: {msg}");
        assert!(msg.contains("mem0") && !msg.contains('\n'), "{msg}");
    }
}

/// A copy with an older seq loses to a newer one and is reported as stale.
#[test]
fn stale_copy_loses() {
    let (devs, _) = formatted(1, GIB);
    let dev = devs[0].as_ref();
    let old = read_super(dev).unwrap().sb;
    let mut newer = old.clone();
    newer.seq = 7;
    let bytes = newer.encode().unwrap();
    dev.write_at(&bytes, old.offsets[0]).unwrap();
    let r = read_super(dev).unwrap();
    assert_eq!(r.sb.seq, 7);
    assert_eq!(r.damaged.len(), 1);
    assert!(r.damaged[0].error.to_string().contains("stale"), "{}", r.damaged[0].error);
}

/// Empty, tiny, garbage and truncated devices are typed errors naming the device.
#[test]
fn bad_devices_are_typed_errors() {
    let empty = MemDevice::new("empty", 0);
    let e = read_super(&empty).unwrap_err();
    assert_eq!(e.code(), ErrCode::NoValidSuperblock);
    assert!(e.to_string().contains("empty: not a bcsim filesystem"), "{e}");

    let garbage = MemDevice::new("garbage", 1 << 20);
    let mut rng = crate::rng::Rng::new(7);
    let mut junk = vec![0u8; 1 << 20];
    rng.fill_bytes(&mut junk);
    garbage.write_at(&junk, 0).unwrap();
    let e = read_super(&garbage).unwrap_err();
    assert!(e.to_string().contains("not a bcsim filesystem"), "{e}");

    // A formatted image cut short: copy 0 is fine but the device is shorter than it says.
    let (devs, _) = formatted(1, GIB);
    let mut head = vec![0u8; 1 << 20];
    devs[0].read_at(&mut head, 0).unwrap();
    let cut = MemDevice::new("cut", 1 << 20);
    cut.write_at(&head, 0).unwrap();
    let e = read_super(&cut).unwrap_err();
    assert_eq!(e.code(), ErrCode::DeviceTruncated);
    assert!(e.to_string().contains("truncated"), "{e}");
}

/// Images of two filesystems, or one image given twice, do not form a device set; a missing
/// member is refused unless degraded.
#[test]
fn device_set_checks() {
    let (a, _) = formatted(2, GIB);
    let (b, _) = formatted(2, GIB);
    let e = DeviceSet::open(vec![a[0].clone(), b[1].clone()]).unwrap_err();
    assert_eq!(e.code(), ErrCode::FsUuidMismatch);
    assert!(e.matches(ErrCode::DeviceSetInvalid));

    let e = DeviceSet::open(vec![a[0].clone(), a[0].clone()]).unwrap_err();
    assert_eq!(e.code(), ErrCode::DeviceDuplicate);

    let set = DeviceSet::open(vec![a[1].clone()]).unwrap();
    assert_eq!(set.missing(), vec![0]);
    assert_eq!(set.require_all(false).unwrap_err().code(), ErrCode::DeviceMissing);
    set.require_all(true).unwrap();

    let set = DeviceSet::open(a.clone()).unwrap();
    assert!(set.missing().is_empty());
    assert_eq!(set.device(1).unwrap().sb.dev_idx, 1);
}
