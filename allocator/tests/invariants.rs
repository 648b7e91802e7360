//! A seeded random mix of allocator operations keeps every invariant after every step: bucket
//! states, counts and index keys agree with the committed alloc keys; no bucket or node slot is
//! handed out twice while live; replicas sit on distinct devices and reach the requested
//! durability, target devices first; gens change only by discard; a failed request changes
//! nothing and fails with the right error class. Replay one seed with `BCSIM_SEED=n`.

// A failed unwrap or index in a test is that test failing, with its message.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use allocator::{
    AllocRequest, AllocatedBucket, Allocator, BtreeNodeAlloc, BucketState, PENDING_SEQ, Watermark,
    nr_btree_reserve, reserved_buckets,
};
use common::{Model, dev, member, seeds};
use fs_core::bkey::DataType;
use fs_core::bpos::BtreeId;
use fs_core::btree::{NodeAllocator, NodeLocation};
use fs_core::error::ErrCode;
use fs_core::rng::Rng;
use fs_core::sb::MemberState;

const SEEDS: u64 = 200;
const STEPS: usize = 300;
const NODE_SIZE: u64 = 16 << 10;
const NODE_SECTORS: u32 = (NODE_SIZE / 512) as u32;
const LABELS: &[&str] = &["ssd.a", "ssd.b", "hdd.x", "hdd.y", ""];
const TARGETS: &[&str] = &["", "ssd", "hdd", "ssd.a", "hdd.y", "nvme"];
const DATA_TYPES: &[DataType] =
    &[DataType::User, DataType::Btree, DataType::Cached, DataType::Parity, DataType::Stripe];

/// What the test knows about a device independently of the allocator.
struct DevSpec {
    dev: u8,
    nbuckets: u64,
    bucket_size: u64,
    data_buckets: u64,
    durability: u8,
    rw: bool,
    label: String,
}

impl DevSpec {
    fn in_target(&self, target: &str) -> bool {
        !target.is_empty()
            && (self.label == target || self.label.strip_prefix(target).is_some_and(|r| r.starts_with('.')))
    }

    fn reserved(&self, wm: Watermark) -> u64 {
        reserved_buckets(wm, self.nbuckets, nr_btree_reserve(self.bucket_size, NODE_SIZE))
    }

    fn could_ever_serve(&self, wm: Watermark) -> bool {
        self.rw && self.durability > 0 && self.data_buckets > self.reserved(wm)
    }
}

/// A plain bucket handed out and not yet released or emptied.
#[derive(Clone, Copy, Debug)]
struct Live {
    data_type: DataType,
    bucket_gen: u8,
    sectors: u32,
}

#[derive(Default)]
struct Outcomes {
    ok: u64,
    insufficient: u64,
    blocked: u64,
    node_ok: u64,
    node_blocked: u64,
    discards: u64,
    reused_after_discard: u64,
}

struct Sim {
    rng: Rng,
    alloc: Arc<Allocator>,
    nodes: BtreeNodeAlloc,
    model: Model,
    specs: Vec<DevSpec>,
    journal_seq: u64,
    live: BTreeMap<(u8, u64), Live>,
    live_nodes: Vec<NodeLocation>,
    /// Live node slots as (dev, sector offset).
    live_slots: BTreeSet<(u8, u64)>,
    /// Btree buckets in which a node was freed as written since the bucket was opened.
    node_bucket_written: BTreeSet<(u8, u64)>,
    /// Expected gen per bucket: 0 until discarded.
    gens: BTreeMap<(u8, u64), u8>,
    /// Buckets discarded at least once: a later allocation of one is a reuse.
    discarded: BTreeSet<(u8, u64)>,
    out: Outcomes,
}

type Check = Result<(), String>;

fn ensure(cond: bool, msg: impl FnOnce() -> String) -> Check {
    if cond { Ok(()) } else { Err(msg()) }
}

impl Sim {
    fn new(seed: u64) -> Sim {
        let mut rng = Rng::new(seed);
        let nr_devs = rng.range(3..6) as u8;
        let mut inits = Vec::new();
        let mut specs = Vec::new();
        for d in 0..nr_devs {
            let nbuckets = rng.range(40..97);
            let bucket_size: u32 = if rng.chance(0.5) { 64 << 10 } else { 128 << 10 };
            let first_bucket = rng.range(1..3) as u32;
            let journal_nr = rng.range(2..7);
            let journal = u64::from(first_bucket)..u64::from(first_bucket) + journal_nr;
            let durability = *rng.choose(&[0u8, 1, 1, 1, 2]).unwrap();
            let label = *rng.choose(LABELS).unwrap();
            let mut m = member(nbuckets, bucket_size, first_bucket, durability, label);
            if rng.chance(0.15) {
                m.state = MemberState::Ro;
            }
            specs.push(DevSpec {
                dev: d,
                nbuckets,
                bucket_size: u64::from(bucket_size),
                data_buckets: nbuckets - u64::from(first_bucket) - journal_nr,
                durability,
                rw: m.state == MemberState::Rw,
                label: label.to_owned(),
            });
            inits.push(dev(d, m, journal));
        }
        let alloc = Arc::new(Allocator::new(inits, NODE_SIZE).unwrap());
        let model = Model::synced(&alloc);
        let nodes = common::node_alloc(alloc.clone(), 1, "");
        Sim {
            rng,
            alloc,
            nodes,
            model,
            specs,
            journal_seq: 1,
            live: BTreeMap::new(),
            live_nodes: Vec::new(),
            live_slots: BTreeSet::new(),
            node_bucket_written: BTreeSet::new(),
            gens: BTreeMap::new(),
            discarded: BTreeSet::new(),
            out: Outcomes::default(),
        }
    }

    fn spec(&self, dev: u8) -> &DevSpec {
        self.specs.iter().find(|s| s.dev == dev).unwrap()
    }

    fn state(&self, dev: u8, bucket: u64) -> Result<BucketState, String> {
        self.alloc.bucket(dev, bucket).ok_or_else(|| format!("dev {dev} bucket {bucket} missing"))
    }

    fn gen_of(&self, dev: u8, bucket: u64) -> u8 {
        self.gens.get(&(dev, bucket)).copied().unwrap_or(0)
    }

    /// Every bucket's state and the open btree buckets: what a failed operation must not change.
    fn snapshot(&self) -> (Vec<BucketState>, Vec<(u8, u64, u64)>) {
        let mut states = Vec::new();
        for s in &self.specs {
            states.extend((0..s.nbuckets).map(|b| self.alloc.bucket(s.dev, b).unwrap()));
        }
        (states, self.nodes.open_buckets())
    }

    fn unchanged(&self, before: &(Vec<BucketState>, Vec<(u8, u64, u64)>), what: &str) -> Check {
        ensure(self.alloc.pending_updates() == 0, || format!("failed {what} left alloc-key updates"))?;
        ensure(self.snapshot() == *before, || format!("failed {what} changed bucket state"))
    }

    fn step(&mut self) -> Check {
        self.journal_seq += 1;
        match self.rng.below(100) {
            0..25 => self.alloc_buckets(),
            25..45 => self.add_sectors(),
            45..50 => self.bad_add_sectors(),
            50..55 => self.release(),
            55..65 => self.discard(),
            65..80 => self.alloc_nodes(),
            80..88 => self.give_back_node(false),
            _ => self.give_back_node(true),
        }?;
        self.model.sync(&self.alloc)?;
        self.check_shadow()
    }

    fn alloc_buckets(&mut self) -> Check {
        let req = AllocRequest {
            nr_replicas: self.rng.range(1..4) as u8,
            target: (*self.rng.choose(TARGETS).unwrap()).to_owned(),
            data_type: *self.rng.choose(DATA_TYPES).unwrap(),
            watermark: *self.rng.choose(Watermark::ALL).unwrap(),
        };
        let usage: BTreeMap<u8, u64> = self
            .specs
            .iter()
            .map(|s| (s.dev, self.alloc.dev_usage(s.dev).unwrap().available(req.watermark)))
            .collect();
        let want = u32::from(req.nr_replicas);
        let ever: u32 = self
            .specs
            .iter()
            .filter(|s| s.could_ever_serve(req.watermark))
            .map(|s| u32::from(s.durability))
            .sum();
        let now: u32 = self
            .specs
            .iter()
            .filter(|s| s.could_ever_serve(req.watermark) && usage[&s.dev] > 0)
            .map(|s| u32::from(s.durability))
            .sum();
        let before = self.snapshot();
        match self.alloc.alloc_buckets(&req) {
            Ok(got) => {
                ensure(now >= want, || format!("{req:?} succeeded with durability {now} available"))?;
                self.check_placement(
                    &got.iter().map(|b| b.dev).collect::<Vec<_>>(),
                    &req.target,
                    want,
                    &usage,
                )?;
                for b in got {
                    self.took_bucket(b, req.data_type)?;
                }
                self.out.ok += 1;
            }
            Err(e) => {
                self.unchanged(&before, "bucket allocation")?;
                let expect = if ever < want { ErrCode::InsufficientDevices } else { ErrCode::FreelistEmpty };
                ensure(now < want && e.code() == expect, || format!("{req:?}: {e}, expected {expect}"))?;
                if expect == ErrCode::InsufficientDevices {
                    self.out.insufficient += 1;
                } else {
                    self.out.blocked += 1;
                }
            }
        }
        Ok(())
    }

    /// Distinct devices, enough durability and no more than needed, target devices first.
    fn check_placement(&self, devs: &[u8], target: &str, want: u32, avail: &BTreeMap<u8, u64>) -> Check {
        let distinct: BTreeSet<u8> = devs.iter().copied().collect();
        ensure(distinct.len() == devs.len(), || format!("replicas share a device: {devs:?}"))?;
        let durability: Vec<u32> = devs.iter().map(|&d| u32::from(self.spec(d).durability)).collect();
        let sum: u32 = durability.iter().sum();
        ensure(sum >= want, || format!("durability {sum} < {want} on {devs:?}"))?;
        ensure(sum - durability.last().unwrap() < want, || format!("more replicas than needed: {devs:?}"))?;
        ensure(durability.iter().all(|&d| d > 0), || format!("durability-0 device used: {devs:?}"))?;
        ensure(devs.iter().all(|&d| self.spec(d).rw), || format!("non-rw device used: {devs:?}"))?;
        if devs.iter().any(|&d| !self.spec(d).in_target(target)) {
            let skipped = self.specs.iter().find(|s| {
                s.in_target(target) && s.rw && s.durability > 0 && avail[&s.dev] > 0 && !devs.contains(&s.dev)
            });
            ensure(skipped.is_none(), || format!("target {target} device skipped: {devs:?}"))?;
        }
        Ok(())
    }

    fn took_bucket(&mut self, b: AllocatedBucket, data_type: DataType) -> Check {
        let key = (b.dev, b.bucket);
        ensure(!self.live.contains_key(&key), || format!("{b:?} handed out twice"))?;
        ensure(
            !self.live_slots.iter().any(|&(d, off)| d == b.dev && self.slot_bucket(d, off) == b.bucket),
            || format!("{b:?} holds live node slots"),
        )?;
        ensure(b.bucket_gen == self.gen_of(b.dev, b.bucket), || {
            format!("{b:?}: gen changed without discard")
        })?;
        let st = self.state(b.dev, b.bucket)?;
        ensure(st.data_type == data_type && st.dirty_sectors == 0, || format!("{b:?} is {st:?}"))?;
        if self.discarded.contains(&key) {
            self.out.reused_after_discard += 1;
        }
        self.live.insert(key, Live { data_type, bucket_gen: b.bucket_gen, sectors: 0 });
        Ok(())
    }

    fn pick_live(&mut self) -> Option<((u8, u64), Live)> {
        let keys: Vec<_> = self.live.keys().copied().collect();
        let k = *self.rng.choose(&keys)?;
        Some((k, self.live[&k]))
    }

    fn add_sectors(&mut self) -> Check {
        let Some(((dev, bucket), live)) = self.pick_live() else { return Ok(()) };
        let max = self.spec(dev).bucket_size as u32 / 512;
        let grow = live.sectors == 0 || (live.sectors < max && self.rng.chance(0.6));
        let delta: i64 = if grow {
            self.rng.range(1..u64::from(max - live.sectors) + 1) as i64
        } else {
            -(self.rng.range(1..u64::from(live.sectors) + 1) as i64)
        };
        self.alloc
            .add_sectors(dev, bucket, live.data_type, delta, self.journal_seq)
            .map_err(|e| format!("add_sectors {delta} to {dev}:{bucket}: {e}"))?;
        let sectors = (i64::from(live.sectors) + delta) as u32;
        let st = self.state(dev, bucket)?;
        if sectors == 0 {
            self.live.remove(&(dev, bucket));
            ensure(st.data_type == DataType::NeedDiscard && st.journal_seq_empty == self.journal_seq, || {
                format!("emptied {dev}:{bucket} is {st:?}, not need_discard at {}", self.journal_seq)
            })
        } else {
            self.live.insert((dev, bucket), Live { sectors, ..live });
            ensure(st.dirty_sectors == sectors && st.data_type == live.data_type, || {
                format!("{dev}:{bucket} is {st:?}, expected {sectors} sectors")
            })
        }
    }

    /// Accounting that contradicts the bucket fails with an fsck-class error and changes nothing.
    fn bad_add_sectors(&mut self) -> Check {
        let seq = self.journal_seq;
        let (dev, bucket, data_type, delta) = match (self.pick_live(), self.rng.below(3)) {
            (Some(((d, b), live)), 0) => {
                let other = DATA_TYPES.iter().copied().find(|t| *t != live.data_type).unwrap();
                (d, b, other, 1)
            }
            (Some(((d, b), live)), 1) => (d, b, live.data_type, -(i64::from(live.sectors) + 1)),
            (Some(((d, b), live)), _) => (d, b, live.data_type, i64::from(u32::MAX)),
            (None, _) => {
                let s = &self.specs[0];
                (s.dev, s.nbuckets + 5, DataType::User, 8)
            }
        };
        let before = self.snapshot();
        let r = self.alloc.add_sectors(dev, bucket, data_type, delta, seq);
        self.unchanged(&before, "add_sectors")?;
        match r {
            Err(e) if e.code() == ErrCode::BucketAccounting => Ok(()),
            other => Err(format!("bad add_sectors {dev}:{bucket} {data_type} {delta}: {other:?}")),
        }
    }

    fn release(&mut self) -> Check {
        let Some(((dev, bucket), live)) = self.pick_live() else { return Ok(()) };
        let before = self.snapshot();
        let r = self.alloc.release_bucket(dev, bucket);
        if live.sectors > 0 {
            self.unchanged(&before, "release")?;
            return ensure(r.as_ref().is_err_and(|e| e.code() == ErrCode::BucketAccounting), || {
                format!("release of {dev}:{bucket} holding data: {r:?}")
            });
        }
        r.map_err(|e| format!("release {dev}:{bucket}: {e}"))?;
        self.live.remove(&(dev, bucket));
        let st = self.state(dev, bucket)?;
        ensure(st.data_type == DataType::Free && st.bucket_gen == live.bucket_gen, || {
            format!("released unwritten {dev}:{bucket} is {st:?}")
        })
    }

    fn discard(&mut self) -> Check {
        let pending: Vec<_> = self.model.need_discard.iter().copied().collect();
        let Some(pos) = self.rng.choose(&pending).copied() else {
            // Nothing needs a discard: discarding any bucket must fail and change nothing.
            let s = &self.specs[0];
            let before = self.snapshot();
            let r = self.alloc.discard(s.dev, s.nbuckets - 1);
            self.unchanged(&before, "discard")?;
            return ensure(r.as_ref().is_err_and(|e| e.code() == ErrCode::BucketAccounting), || {
                format!("discard: {r:?}")
            });
        };
        let (dev, bucket) = (pos.inode as u8, pos.offset);
        self.alloc.discard(dev, bucket).map_err(|e| format!("discard {dev}:{bucket}: {e}"))?;
        let st = self.state(dev, bucket)?;
        let expect = self.gen_of(dev, bucket).wrapping_add(1);
        ensure(st.data_type == DataType::Free && st.bucket_gen == expect, || {
            format!("discarded {dev}:{bucket} is {st:?}, expected gen {expect}")
        })?;
        self.gens.insert((dev, bucket), expect);
        self.discarded.insert((dev, bucket));
        self.out.discards += 1;
        Ok(())
    }

    fn slot_bucket(&self, dev: u8, offset: u64) -> u64 {
        offset * 512 / self.spec(dev).bucket_size
    }

    fn alloc_nodes(&mut self) -> Check {
        let replicas = self.rng.range(1..4) as u8;
        let target = *self.rng.choose(TARGETS).unwrap();
        let wm = *self.rng.choose(Watermark::ALL).unwrap();
        common::set_replicas(&self.nodes, replicas).map_err(|e| e.to_string())?;
        common::set_target(&self.nodes, target);
        self.nodes.set_watermark(wm);
        let nr = self.rng.range(1..4) as usize;
        let ever: u32 =
            self.specs.iter().filter(|s| s.could_ever_serve(wm)).map(|s| u32::from(s.durability)).sum();
        let before = self.snapshot();
        match NodeAllocator::alloc_nodes(&self.nodes, nr, BtreeId::Extents, 0) {
            Ok(locs) => {
                ensure(locs.len() == nr, || format!("{} of {nr} nodes", locs.len()))?;
                for loc in locs {
                    let devs: Vec<u8> = loc.ptrs.iter().map(|p| p.dev).collect();
                    let durability: u32 = devs.iter().map(|&d| u32::from(self.spec(d).durability)).sum();
                    let distinct: BTreeSet<u8> = devs.iter().copied().collect();
                    ensure(distinct.len() == devs.len() && durability >= u32::from(replicas), || {
                        format!("node {loc:?}: durability {durability} for {replicas} replicas")
                    })?;
                    for p in &loc.ptrs {
                        ensure(self.live_slots.insert((p.dev, p.offset)), || {
                            format!("slot {p:?} handed out twice")
                        })?;
                        let bucket = self.slot_bucket(p.dev, p.offset);
                        ensure(!self.live.contains_key(&(p.dev, bucket)), || {
                            format!("slot {p:?} in a live bucket")
                        })?;
                        ensure(p.bucket_gen == self.gen_of(p.dev, bucket), || {
                            format!("slot {p:?}: wrong gen")
                        })?;
                        ensure((p.offset * 512 % self.spec(p.dev).bucket_size) % NODE_SIZE == 0, || {
                            format!("slot {p:?} not node-aligned")
                        })?;
                    }
                    self.live_nodes.push(loc);
                }
                self.out.node_ok += 1;
            }
            Err(e) => {
                self.unchanged(&before, "node allocation")?;
                let expect = if ever < u32::from(replicas) {
                    ErrCode::InsufficientDevices
                } else {
                    ErrCode::BucketAllocBlocked
                };
                ensure(e.code() == expect, || format!("node alloc: {e}, expected {expect}"))?;
                ensure(e.context().btree == Some(BtreeId::Extents), || {
                    format!("node alloc error lacks btree: {e}")
                })?;
                if expect == ErrCode::BucketAllocBlocked {
                    ensure(e.matches(ErrCode::OperationBlocked), || format!("{e} is not operation_blocked"))?;
                    self.out.node_blocked += 1;
                }
            }
        }
        Ok(())
    }

    fn give_back_node(&mut self, written: bool) -> Check {
        if self.live_nodes.is_empty() {
            return Ok(());
        }
        let i = self.rng.below(self.live_nodes.len() as u64) as usize;
        let node = self.live_nodes.swap_remove(i);
        let buckets: BTreeSet<(u8, u64)> =
            node.ptrs.iter().map(|p| (p.dev, self.slot_bucket(p.dev, p.offset))).collect();
        for p in &node.ptrs {
            self.live_slots.remove(&(p.dev, p.offset));
        }
        if written {
            self.node_bucket_written.extend(buckets.iter().copied());
            self.nodes.try_free_node(&node.ptrs, self.journal_seq)
        } else {
            NodeAllocator::release_unused(&self.nodes, vec![node])
        }
        .map_err(|e| format!("giving back a node: {e}"))?;
        for (dev, bucket) in buckets {
            if self.live_slots.iter().any(|&(d, off)| d == dev && self.slot_bucket(d, off) == bucket) {
                continue;
            }
            // The bucket emptied: need_discard if a node in it was freed as written, else free.
            let st = self.state(dev, bucket)?;
            let was_written = self.node_bucket_written.remove(&(dev, bucket));
            // Emptied by this free: its seq. Emptied by releasing an unwritten node beside a
            // written one freed earlier: pending until an update publishes the frees.
            let want_seq = if written { self.journal_seq } else { PENDING_SEQ };
            let ok = if was_written {
                st.data_type == DataType::NeedDiscard && st.journal_seq_empty == want_seq
            } else {
                st.data_type == DataType::Free && st.bucket_gen == self.gen_of(dev, bucket)
            };
            ensure(ok, || format!("emptied btree bucket {dev}:{bucket} (written {was_written}) is {st:?}"))?;
        }
        Ok(())
    }

    /// The allocator agrees with the test's own record: live buckets, node slot sectors, gens.
    fn check_shadow(&self) -> Check {
        let mut slots_per_bucket: BTreeMap<(u8, u64), u32> = BTreeMap::new();
        for &(dev, off) in &self.live_slots {
            *slots_per_bucket.entry((dev, self.slot_bucket(dev, off))).or_default() += 1;
        }
        for s in &self.specs {
            for b in 0..s.nbuckets {
                let st = self.state(s.dev, b)?;
                ensure(st.bucket_gen == self.gen_of(s.dev, b), || format!("{}:{b} gen {st:?}", s.dev))?;
                if let Some(live) = self.live.get(&(s.dev, b)) {
                    ensure(st.data_type == live.data_type && st.dirty_sectors == live.sectors, || {
                        format!("live {}:{b} is {st:?}, expected {live:?}", s.dev)
                    })?;
                } else if st.data_type == DataType::Btree {
                    let slots = slots_per_bucket.get(&(s.dev, b)).copied().unwrap_or(0);
                    ensure(slots > 0 && st.dirty_sectors == slots * NODE_SECTORS, || {
                        format!("btree bucket {}:{b} is {st:?} with {slots} live slots", s.dev)
                    })?;
                }
            }
        }
        Ok(())
    }
}

fn run(seed: u64, out: &mut Outcomes) -> Check {
    let mut sim = Sim::new(seed);
    for step in 0..STEPS {
        sim.step().map_err(|e| format!("step {step}: {e}"))?;
    }
    // Everything given back and discarded, the devices are whole again.
    for node in std::mem::take(&mut sim.live_nodes) {
        sim.nodes.try_free_node(&node.ptrs, sim.journal_seq).map_err(|e| e.to_string())?;
    }
    for ((dev, bucket), live) in std::mem::take(&mut sim.live) {
        if live.sectors == 0 {
            sim.alloc.release_bucket(dev, bucket).map_err(|e| e.to_string())?;
        } else {
            sim.alloc
                .add_sectors(dev, bucket, live.data_type, -i64::from(live.sectors), 0)
                .map_err(|e| e.to_string())?;
        }
    }
    sim.model.sync(&sim.alloc)?;
    for pos in sim.model.need_discard.clone() {
        sim.alloc.discard(pos.inode as u8, pos.offset).map_err(|e| e.to_string())?;
    }
    sim.model.sync(&sim.alloc)?;
    for s in &sim.specs {
        let u = sim.alloc.dev_usage(s.dev).unwrap();
        ensure(u.free == s.data_buckets, || format!("after teardown {u:?}"))?;
    }
    let o = sim.out;
    out.ok += o.ok;
    out.insufficient += o.insufficient;
    out.blocked += o.blocked;
    out.node_ok += o.node_ok;
    out.node_blocked += o.node_blocked;
    out.discards += o.discards;
    out.reused_after_discard += o.reused_after_discard;
    Ok(())
}

#[test]
fn random_steps_keep_invariants() {
    let mut out = Outcomes::default();
    let seeds = seeds(SEEDS);
    for &seed in &seeds {
        if let Err(e) = run(seed, &mut out) {
            panic!("seed {seed}: {e} (replay with BCSIM_SEED={seed})");
        }
    }
    // The run must have exercised every outcome, or it protects less than it claims.
    if seeds.len() as u64 == SEEDS {
        assert!(out.ok > 0 && out.insufficient > 0 && out.blocked > 0, "bucket outcomes not all seen");
        assert!(out.node_ok > 0 && out.node_blocked > 0, "node outcomes not all seen");
        assert!(out.discards > 0 && out.reused_after_discard > 0, "no bucket reused after discard");
    }
}
