//! Random sequences of node allocations, frees, discards, option changes and emergency
//! read-only, on the real allocator, node allocator and wait list (wired to real live options
//! and health, as a mount wires them), against a model of which parked requests must wake and
//! which of those must then be able to proceed.
//!
//! Parked requests are polled, not slept on: a wait with a zero timeout on the manual clock
//! returns at once, with the reason if something newer than the request's ticket concerns it.
//! Invariants after every step, for every parked request:
//! - it wakes exactly when the model says something concerning it happened since it parked
//!   (a free or discard on its devices, an options change, emergency read-only except in
//!   v1.37.5);
//! - woken, its retry succeeds exactly when enough devices have a free bucket for the replica
//!   count its profile uses: the one it was built with in v1.37.5 and v1.39 (pinned in the node
//!   allocator), the live one in fixed;
//! - after emergency read-only, no v1.39 or fixed request stays parked.

// A failed unwrap or index in a test is that test failing, with its message.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use std::time::Duration;

use allocator::{
    Allocator, BtreeNodeAlloc, Clock, NodeRequestSpec, RewindBuffer, Ticket, WaitList, Wake, Watermark,
};
use common::{dev, member};
use fs_core::bkey::ExtentPtr;
use fs_core::error::{ErrCode, Error};
use fs_core::health::FsHealth;
use fs_core::opts::{Behavior, LiveOpts, OptId, OptValue, Options};
use fs_core::sync::Arc;
use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed, TestRunner};

/// One node per bucket: no partly used open bucket, so a device can serve iff it has a free
/// bucket (at the interior-updates watermark, which keeps no reserve).
const BUCKET: u32 = 64 << 10;
const NODE: u64 = BUCKET as u64;
const DEVS: usize = 3;
/// Buckets per device: the first holds the superblock, the second the journal.
const NBUCKETS: u64 = 6;

#[derive(Clone, Debug)]
enum Op {
    /// A btree update asks for one node; refused, it parks.
    Alloc,
    /// The node allocated `i`-th (mod the live ones) is freed: its buckets go to need_discard.
    Free(usize),
    /// Every need_discard bucket is discarded, each device's parked requests woken.
    Discard,
    SetReplicas(u8),
    EmergencyRo,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => Just(Op::Alloc),
        3 => any::<usize>().prop_map(Op::Free),
        2 => Just(Op::Discard),
        2 => (1u8..=3).prop_map(Op::SetReplicas),
        1 => Just(Op::EmergencyRo),
    ]
}

struct Parked {
    ticket: Ticket,
    /// The request as built (what v1.37.5 and v1.39 keep).
    built: NodeRequestSpec,
    /// Model: something concerning it happened since its ticket.
    woken: bool,
}

struct World {
    behavior: Behavior,
    alloc: Arc<Allocator>,
    nodes: BtreeNodeAlloc,
    live: Arc<LiveOpts>,
    health: Arc<FsHealth>,
    waits: Arc<WaitList>,
    live_nodes: Vec<Vec<ExtentPtr>>,
    parked: Vec<Parked>,
    ro: bool,
    seq: u64,
}

impl World {
    fn new(behavior: Behavior) -> World {
        let inits = (0..DEVS).map(|i| dev(i as u8, member(NBUCKETS, BUCKET, 1, 1, ""), 1..2)).collect();
        let alloc = Arc::new(Allocator::new(inits, NODE).unwrap());
        let mut opts = Options::default();
        opts.set(OptId::BtreeNodeSize, OptValue::U64(NODE)).unwrap();
        opts.set(OptId::MetadataReplicas, OptValue::U64(2)).unwrap();
        let live = Arc::new(LiveOpts::new(opts));
        let health = Arc::new(FsHealth::new());
        let waits = WaitList::wired(&live, &health, DEVS, Clock::Manual);
        let nodes = BtreeNodeAlloc::new(alloc.clone(), live.clone()).unwrap();
        nodes.set_watermark(Watermark::InteriorUpdates);
        World {
            behavior,
            alloc,
            nodes,
            live,
            health,
            waits,
            live_nodes: Vec::new(),
            parked: Vec::new(),
            ro: false,
            seq: 1,
        }
    }

    /// Devices with a free bucket now.
    fn devs_with_free(&self) -> usize {
        (0..DEVS as u8).filter(|&d| self.alloc.dev_usage(d).unwrap().free > 0).count()
    }

    /// One attempt with `spec` pinned (v1.37.5, v1.39) or the live options (fixed); checks the
    /// outcome against the model and returns whether it succeeded.
    fn attempt(&mut self, built: &NodeRequestSpec) -> Result<bool, TestCaseError> {
        let replicas = match self.behavior {
            Behavior::Fixed => self.nodes.request_now().replicas,
            _ => built.replicas,
        };
        let can = self.devs_with_free() >= usize::from(replicas);
        if self.behavior != Behavior::Fixed {
            self.nodes.pin_request(Some(built.clone()));
        }
        let got = self.nodes.try_alloc_nodes(1);
        self.nodes.pin_request(None);
        match got {
            Ok(mut locs) => {
                prop_assert!(
                    can,
                    "allocated {replicas} replicas with {} devices free",
                    self.devs_with_free()
                );
                prop_assert_eq!(locs[0].ptrs.len(), usize::from(replicas));
                self.live_nodes.push(locs.remove(0).ptrs);
                Ok(true)
            }
            Err(e) => {
                prop_assert!(e.matches(ErrCode::BucketAllocBlocked), "{e}");
                prop_assert!(
                    !can,
                    "refused {replicas} replicas with {} devices free: {e}",
                    self.devs_with_free()
                );
                Ok(false)
            }
        }
    }

    fn step(&mut self, op: &Op) -> Result<(), TestCaseError> {
        match op {
            Op::Alloc => {
                let ticket = self.waits.ticket();
                let built = self.nodes.request_now();
                if !self.attempt(&built)? {
                    let woken = self.ro_ends_waits();
                    self.parked.push(Parked { ticket, built, woken });
                }
            }
            Op::Free(i) => {
                if !self.live_nodes.is_empty() {
                    let ptrs = self.live_nodes.remove(i % self.live_nodes.len());
                    self.seq += 1;
                    self.nodes.try_free_node(&ptrs, self.seq).unwrap();
                }
            }
            Op::Discard => {
                let freed =
                    self.alloc.discard_durable(u64::MAX - 1, RewindBuffer::PerDevice { percent: 0 }).unwrap();
                for &(d, _) in &freed {
                    self.waits.buckets_freed(d);
                }
                // Every parked request may use every device.
                if !freed.is_empty() {
                    self.parked.iter_mut().for_each(|p| p.woken = true);
                }
            }
            Op::SetReplicas(r) => {
                self.live.set(OptId::MetadataReplicas, OptValue::U64(u64::from(*r))).unwrap();
                self.parked.iter_mut().for_each(|p| p.woken = true);
            }
            Op::EmergencyRo => {
                self.health.fatal(&Error::new(ErrCode::Eio, "injected"));
                self.ro = true;
                if self.behavior != Behavior::V1_37_5 {
                    self.parked.iter_mut().for_each(|p| p.woken = true);
                }
            }
        }
        self.poll()
    }

    /// Emergency read-only happened and ends waits in this profile: a request parking now
    /// wakes at once.
    fn ro_ends_waits(&self) -> bool {
        self.ro && self.behavior != Behavior::V1_37_5
    }

    /// Polls every parked request: it must wake exactly as the model says; a woken one retries
    /// (unless emergency read-only ended it) and parks again with a new ticket if refused.
    fn poll(&mut self) -> Result<(), TestCaseError> {
        let parked = std::mem::take(&mut self.parked);
        for p in parked {
            let wake = self.waits.wait(&p.ticket, &[0, 1, 2], Duration::ZERO, self.behavior);
            prop_assert_eq!(wake != Wake::Timeout, p.woken, "woke with {:?}", wake);
            if wake == Wake::Timeout {
                self.parked.push(p);
                continue;
            }
            if wake == Wake::EmergencyRo {
                continue;
            }
            let ticket = self.waits.ticket();
            if !self.attempt(&p.built)? {
                let woken = self.ro_ends_waits();
                self.parked.push(Parked { ticket, built: p.built, woken });
            }
        }
        if self.ro && self.behavior != Behavior::V1_37_5 {
            prop_assert!(
                self.parked.is_empty(),
                "{} requests still parked after emergency read-only",
                self.parked.len()
            );
        }
        Ok(())
    }
}

/// Seeded: `BCSIM_PROPTEST_SEED=N` reruns a campaign; the seed in use is printed.
#[test]
fn parked_requests_wake_and_proceed_as_the_model_says() {
    let seed = std::env::var("BCSIM_PROPTEST_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(1108);
    eprintln!("proptest seed {seed} (BCSIM_PROPTEST_SEED to change)");
    let config =
        Config { cases: 256, rng_seed: RngSeed::Fixed(seed), failure_persistence: None, ..Config::default() };
    let behavior = prop_oneof![Just(Behavior::V1_37_5), Just(Behavior::V1_39), Just(Behavior::Fixed)];
    let case = (behavior, proptest::collection::vec(op(), 1..60));
    let mut runner = TestRunner::new(config);
    let result = runner.run(&case, |(behavior, ops)| {
        let mut w = World::new(behavior);
        for op in &ops {
            w.step(op)?;
        }
        Ok(())
    });
    if let Err(e) = result {
        panic!("proptest seed {seed}: {e}");
    }
}
