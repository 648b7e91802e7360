//! Btree node allocation: the allocator's answer to the btree's [`NodeAllocator`].
//!
//! Buckets are larger than nodes, so each device has at most one open btree bucket from which
//! node-sized slots are handed out in order; a full bucket is closed and the next node on that
//! device opens a new one (data type `btree`). A node takes one slot on each of enough distinct
//! devices to reach `metadata_replicas` durability, target devices first (see `placement`). A
//! slot in use adds `btree_node_size / 512` sectors to its bucket, so the alloc keys record it.
//!
//! Slots are never reused within a bucket: a slot given back lowers the sector count, and the
//! bucket becomes free again only by emptying. If it empties with no node in it ever freed as
//! written (every slot came back through `release_unused`), nothing durable points into it and
//! it goes straight back to free with its gen unchanged; otherwise it goes to `need_discard`.

use std::collections::BTreeMap;

use fs_core::bkey::DataType;
use fs_core::bkey::ptr::{ExtentPtr, SECTOR_BYTES};
use fs_core::bpos::BtreeId;
use fs_core::btree::{NodeAllocator, NodeLocation};
use fs_core::error::{ErrCode, Error, Result};
use fs_core::opts::{LiveOpts, OptId, Options};
use fs_core::sync::thread::{self, ThreadId};
use fs_core::sync::{Arc, Mutex};

use crate::alloc::{Allocator, Inner, inconsistent};
use crate::device::{Device, PENDING_SEQ};
use crate::placement::{Candidate, place};
use crate::watermark::Watermark;

/// A device's bucket that btree nodes are being placed in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct OpenBtreeBucket {
    bucket: u64,
    bucket_gen: u8,
    next_slot: u64,
    nr_slots: u64,
}

/// What a btree update's node reservation asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeRequestSpec {
    pub replicas: u8,
    /// `metadata_target`, else `foreground_target`; empty: any device.
    pub target: String,
}

struct NodeState {
    watermark: Watermark,
    open: BTreeMap<u8, OpenBtreeBucket>,
    /// A request built once and kept by the thread retrying it ([`BtreeNodeAlloc::pin_request`]).
    pinned: Option<(ThreadId, NodeRequestSpec)>,
}

impl NodeState {
    /// The request the calling thread allocates with: the one it pinned, else `live`.
    fn request_of_this_thread(&self, live: NodeRequestSpec) -> NodeRequestSpec {
        match &self.pinned {
            Some((t, spec)) if *t == thread::current().id() => spec.clone(),
            _ => live,
        }
    }
}

/// Btree node allocation on top of an [`Allocator`].
///
/// The replica count and target are read from the live options at every allocation, never
/// copied: a change made on a running mount applies to the next node.
///
/// Lock order: the options (read and released first), this allocator's state, then the bucket
/// allocator's; nothing takes them the other way round.
pub struct BtreeNodeAlloc {
    alloc: Arc<Allocator>,
    opts: Arc<LiveOpts>,
    state: Mutex<NodeState>,
}

impl BtreeNodeAlloc {
    /// Node allocation for the filesystem whose live options are `opts`: `metadata_replicas`
    /// replicas on `metadata_target` (falling back to `foreground_target`), nodes of the
    /// allocator's `btree_node_size`, which must be the options' (a mismatch is a bug).
    pub fn new(alloc: Arc<Allocator>, opts: Arc<LiveOpts>) -> Result<BtreeNodeAlloc> {
        let node_size = opts.with(Options::btree_node_size);
        if node_size != alloc.btree_node_size() {
            return Err(Error::new(
                ErrCode::Internal,
                format!(
                    "btree_node_size {node_size} differs from the allocator's {}",
                    alloc.btree_node_size()
                ),
            ));
        }
        Ok(BtreeNodeAlloc {
            alloc,
            opts,
            state: Mutex::new(NodeState { watermark: Watermark::Btree, open: BTreeMap::new(), pinned: None }),
        })
    }

    pub fn allocator(&self) -> &Arc<Allocator> {
        &self.alloc
    }

    /// The replica count the next node gets: the live `metadata_replicas`.
    pub fn metadata_replicas(&self) -> u8 {
        u8::try_from(self.opts.u64(OptId::MetadataReplicas)).unwrap_or(u8::MAX)
    }

    /// Where the next node goes: the live `metadata_target`, else `foreground_target`.
    pub fn metadata_target(&self) -> String {
        self.opts.with(|o| o.metadata_target().to_owned())
    }

    /// The request a btree update built now would make, from the live options.
    pub fn request_now(&self) -> NodeRequestSpec {
        NodeRequestSpec { replicas: self.metadata_replicas(), target: self.metadata_target() }
    }

    /// Keeps `spec` as this thread's request until unpinned (`None`): its allocations use it
    /// instead of the live options. This is how v1.37.5 and v1.39 behave, whose blocked btree
    /// update keeps the replica count it was built with however long it waits; other threads
    /// allocate from the live options meanwhile.
    pub fn pin_request(&self, spec: Option<NodeRequestSpec>) {
        let me = thread::current().id();
        let mut st = self.state.lock();
        match spec {
            Some(spec) => st.pinned = Some((me, spec)),
            None => {
                if st.pinned.as_ref().is_some_and(|(t, _)| *t == me) {
                    st.pinned = None;
                }
            }
        }
    }

    /// The request this thread's next allocation makes: its pinned one, else the live options'.
    pub fn request_now_for_this_thread(&self) -> NodeRequestSpec {
        let live = self.request_now();
        self.state.lock().request_of_this_thread(live)
    }

    /// The devices a request could place a replica on: those of its target, or every device
    /// for no target, with a durability above 0. A waiter on them wakes when one frees buckets.
    pub fn request_devs(&self, spec: &NodeRequestSpec) -> Vec<u8> {
        let inner = self.alloc.lock();
        let in_target: Vec<u8> = inner
            .devs
            .values()
            .filter(|d| d.durability() > 0 && d.member.in_target(&spec.target))
            .map(|d| d.dev)
            .collect();
        if in_target.is_empty() || spec.target.is_empty() {
            inner.devs.values().filter(|d| d.durability() > 0).map(|d| d.dev).collect()
        } else {
            in_target
        }
    }

    /// The live options node allocation reads.
    pub fn options(&self) -> &Arc<LiveOpts> {
        &self.opts
    }

    pub fn watermark(&self) -> Watermark {
        self.state.lock().watermark
    }

    /// Journal replay allocates at `reclaim`, interior updates at `interior_updates`.
    pub fn set_watermark(&self, watermark: Watermark) {
        self.state.lock().watermark = watermark;
    }

    /// Forgets the open btree buckets (after the allocator was replaced: they may no longer be
    /// what it says they are).
    pub fn reset_open_buckets(&self) {
        self.state.lock().open.clear();
    }

    /// The open btree buckets as `(dev, bucket, next_slot)`, for reports and tests.
    pub fn open_buckets(&self) -> Vec<(u8, u64, u64)> {
        self.state.lock().open.iter().map(|(&dev, ob)| (dev, ob.bucket, ob.next_slot)).collect()
    }

    /// Allocates `nr` node locations, all or nothing: if any fails, every slot and bucket this
    /// call took is given back exactly as it was and the error returned. Errors:
    /// `insufficient_devices` (the devices can never give the durability) or
    /// `bucket_alloc_blocked` (they could, but not now: wait and retry).
    pub fn try_alloc_nodes(&self, nr: usize) -> Result<Vec<NodeLocation>> {
        let live = self.request_now();
        let mut st = self.state.lock();
        let NodeRequestSpec { replicas, target } = st.request_of_this_thread(live);
        check_replicas(replicas)?;
        let NodeState { watermark, open, .. } = &mut *st;
        let req = NodeRequest { replicas, target: &target, watermark: *watermark };
        let saved_open = open.clone();
        let mut inner = self.alloc.lock();
        let result = inner
            .atomically(|inner| (0..nr).map(|_| alloc_node(inner, open, &req)).collect::<Result<Vec<_>>>());
        if result.is_err() {
            *open = saved_open;
        }
        result
    }

    /// Gives back node locations that were never written, all or nothing.
    pub fn try_release_unused(&self, nodes: &[NodeLocation]) -> Result<()> {
        // Unwritten, but their bucket may also hold freed written nodes: if it empties, it waits
        // for the update that publishes the frees, as a freed node does.
        self.give_back(nodes.iter().flat_map(|n| n.ptrs.iter()), PENDING_SEQ, false)
    }

    /// Frees a written node's slots, all or nothing; a bucket this empties goes to `need_discard`
    /// with `journal_seq_empty = journal_seq`.
    pub fn try_free_node(&self, ptrs: &[ExtentPtr], journal_seq: u64) -> Result<()> {
        self.give_back(ptrs.iter(), journal_seq, true)
    }

    fn give_back<'a>(
        &self,
        ptrs: impl Iterator<Item = &'a ExtentPtr>,
        journal_seq: u64,
        written: bool,
    ) -> Result<()> {
        let mut st = self.state.lock();
        let mut inner = self.alloc.lock();
        let node_size = inner.btree_node_size;
        let node_sectors = node_sectors(node_size)?;
        inner.atomically(|inner| {
            for ptr in ptrs {
                let bucket = slot_bucket(inner, ptr, node_size)?;
                inner.change_sectors(
                    ptr.dev,
                    bucket,
                    DataType::Btree,
                    -node_sectors,
                    journal_seq,
                    written,
                )?;
            }
            Ok(())
        })?;
        // A bucket that emptied is free or need_discard now: it must not hand out more slots.
        st.open.retain(|dev, ob| inner.devs.get(dev).is_some_and(|d| still_open(d, ob)));
        Ok(())
    }
}

impl NodeAllocator for BtreeNodeAlloc {
    fn alloc_nodes(&self, nr: usize, btree: BtreeId, level: u8) -> Result<Vec<NodeLocation>> {
        self.try_alloc_nodes(nr).map_err(|e| e.btree(btree).level(level))
    }

    fn release_unused(&self, nodes: Vec<NodeLocation>) -> Result<()> {
        self.try_release_unused(&nodes).map_err(|e| e.prefix("releasing unused btree nodes"))
    }

    /// The bucket a freed node empties waits for the update that makes the node unreachable:
    /// its `journal_seq_empty` is [`PENDING_SEQ`] until that update takes its keys and stamps
    /// its own seq (see `Allocator::take_updates_at`).
    fn free_node(&self, ptrs: &[ExtentPtr]) -> Result<()> {
        self.try_free_node(ptrs, PENDING_SEQ).map_err(|e| e.prefix("freeing a btree node"))
    }
}

struct NodeRequest<'a> {
    replicas: u8,
    target: &'a str,
    watermark: Watermark,
}

fn check_replicas(nr: u8) -> Result<()> {
    if nr == 0 {
        return Err(Error::internal("metadata_replicas of 0 (the option table allows 1..=4)"));
    }
    Ok(())
}

fn node_sectors(node_size: u64) -> Result<i64> {
    i64::try_from(node_size / SECTOR_BYTES)
        .ok()
        .filter(|s| *s > 0 && node_size % SECTOR_BYTES == 0)
        .ok_or_else(|| Error::new(ErrCode::InvalidArgument, format!("btree_node_size {node_size} invalid")))
}

/// True if `ob` can still hand out a slot: the bucket is still the btree bucket it opened.
fn still_open(d: &Device, ob: &OpenBtreeBucket) -> bool {
    ob.next_slot < ob.nr_slots
        && d.bucket(ob.bucket)
            .is_some_and(|b| b.data_type == DataType::Btree && b.bucket_gen == ob.bucket_gen)
}

fn alloc_node(
    inner: &mut Inner,
    open: &mut BTreeMap<u8, OpenBtreeBucket>,
    req: &NodeRequest<'_>,
) -> Result<NodeLocation> {
    let node_size = inner.btree_node_size;
    let cands = inner
        .devs
        .values()
        .map(|d| {
            let fits = d.bucket_size() / node_size.max(1) > 0;
            let has_slot = open.get(&d.dev).is_some_and(|ob| still_open(d, ob));
            Candidate {
                dev: d.dev,
                durability: d.durability(),
                in_target: d.member.in_target(req.target),
                available: if fits { d.available(req.watermark) + u64::from(has_slot) } else { 0 },
                could_ever_serve: fits && d.could_ever_serve(req.watermark, DataType::Btree),
            }
        })
        .collect();
    let devs = place(cands, req.replicas).map_err(|s| {
        inner.shortfall_error(
            s,
            ErrCode::BucketAllocBlocked,
            &format!("btree node of {} replicas", req.replicas),
            req.target,
            req.watermark,
        )
    })?;
    let ptrs = devs.into_iter().map(|dev| take_slot(inner, open, dev)).collect::<Result<_>>()?;
    Ok(NodeLocation { ptrs })
}

/// Takes the next slot on `dev`, opening a new btree bucket if the device has none open.
fn take_slot(inner: &mut Inner, open: &mut BTreeMap<u8, OpenBtreeBucket>, dev: u8) -> Result<ExtentPtr> {
    let node_size = inner.btree_node_size;
    let node_sectors = node_sectors(node_size)?;
    let d = inner.device(dev)?;
    let bucket_size = d.bucket_size();
    let current = open.get(&dev).copied().filter(|ob| still_open(d, ob));
    let mut ob = match current {
        Some(ob) => ob,
        None => {
            let nr_slots = bucket_size / node_size;
            let (bucket, bucket_gen) = inner.take_free_bucket(dev, DataType::Btree)?;
            OpenBtreeBucket { bucket, bucket_gen, next_slot: 0, nr_slots }
        }
    };
    let slot = ob.next_slot;
    inner.change_sectors(dev, ob.bucket, DataType::Btree, node_sectors, 0, false)?;
    ob.next_slot += 1;
    if ob.next_slot < ob.nr_slots {
        open.insert(dev, ob);
    } else {
        open.remove(&dev);
    }
    let byte = ob
        .bucket
        .checked_mul(bucket_size)
        .and_then(|b| b.checked_add(slot.checked_mul(node_size)?))
        .ok_or_else(|| inconsistent(dev, ob.bucket, "node offset overflows"))?;
    Ok(ExtentPtr { dev, bucket_gen: ob.bucket_gen, offset: byte / SECTOR_BYTES })
}

/// The bucket a node pointer's slot is in, after checking the pointer: on a member device,
/// inside its buckets, at a slot boundary, and carrying the bucket's current gen.
fn slot_bucket(inner: &Inner, ptr: &ExtentPtr, node_size: u64) -> Result<u64> {
    let d = inner.device(ptr.dev)?;
    let bucket_size = d.bucket_size();
    let byte = ptr.offset.saturating_mul(SECTOR_BYTES);
    let bucket = byte.checked_div(bucket_size).unwrap_or(u64::MAX);
    let bad = |msg: String| inconsistent(ptr.dev, bucket, msg).offset(byte);
    if bucket >= d.nbuckets() {
        return Err(bad(format!("btree node pointer beyond the device's {} buckets", d.nbuckets())));
    }
    if byte.checked_rem(bucket_size).and_then(|within| within.checked_rem(node_size)) != Some(0) {
        return Err(bad(format!("btree node pointer not at a {node_size}-byte slot")));
    }
    let st = inner.state(ptr.dev, bucket)?;
    if st.bucket_gen != ptr.bucket_gen {
        return Err(bad(format!(
            "stale btree node pointer: gen {}, bucket gen {}",
            ptr.bucket_gen, st.bucket_gen
        )));
    }
    Ok(bucket)
}
