//! Reading and writing nodes on the member devices.
//!
//! A node is written to every replica in its pointer. A read tries the replicas in order and
//! takes the first that reads and validates; every copy that failed (I/O error, bad checksum,
//! wrong node) is reported, and only when no copy is good is the read an error: a transient
//! failure or one bad copy is not corruption.

use crate::bkey::ExtentPtr;
use crate::bkey::ptr::SECTOR_BYTES;
use crate::btree::node::{Expected, Node, decode_node};
use crate::dev::SharedDevice;
use crate::error::{ErrCode, Error, Result};

/// A replica that could not be used, and why.
#[derive(Debug)]
pub struct BadCopy {
    pub dev: u8,
    pub error: Error,
}

pub struct NodeIo {
    devices: Vec<Option<SharedDevice>>,
    magic: u64,
    node_size: u64,
}

impl NodeIo {
    /// `devices` is indexed by device index; `None` where a member is missing.
    pub fn new(devices: Vec<Option<SharedDevice>>, magic: u64, node_size: u64) -> Self {
        NodeIo { devices, magic, node_size }
    }

    pub fn node_size(&self) -> u64 {
        self.node_size
    }

    pub fn magic(&self) -> u64 {
        self.magic
    }

    fn device(&self, dev: u8) -> Result<&SharedDevice> {
        self.devices
            .get(usize::from(dev))
            .and_then(Option::as_ref)
            .ok_or_else(|| Error::new(ErrCode::InsufficientDevices, "device not present").dev(dev))
    }

    /// Reads the node `ptrs` point at from every replica and keeps the one whose valid bsets
    /// reach furthest; replicas that failed, or end earlier (a damaged or stale tail), are
    /// reported. Reading past a bad replica this way means one bad copy never loses keys.
    pub fn read_node(
        &self,
        ptrs: &[ExtentPtr],
        exp: &Expected,
        blacklisted: &dyn Fn(u64) -> bool,
    ) -> Result<(Node, Vec<BadCopy>)> {
        let mut bad = Vec::new();
        let mut best: Option<(Node, u8)> = None;
        let mut lengths_differ = false;
        let mut buf = vec![0u8; self.node_size as usize];
        for p in ptrs {
            let result = self.device(p.dev).and_then(|d| {
                d.read_at(&mut buf, p.byte_offset())?;
                decode_node(&buf, self.magic, exp, blacklisted)
            });
            match result {
                // Every good copy holds at least what the pointer says; one may hold more (a
                // bset whose write reached one replica before a crash). That is not damage:
                // the longer copy is used and its extra bsets are replayed or blacklisted.
                Ok(node) => {
                    if best.as_ref().is_some_and(|(b, _)| b.sectors_written != node.sectors_written) {
                        lengths_differ = true;
                    }
                    if best.as_ref().is_none_or(|(b, _)| node.sectors_written > b.sectors_written) {
                        best = Some((node, p.dev));
                    }
                }
                Err(e) => bad.push(BadCopy { dev: p.dev, error: e.dev(p.dev).offset(p.byte_offset()) }),
            }
        }
        if let Some((mut node, _)) = best {
            node.ptrs = ptrs.to_vec();
            // As bcachefs does: replicas that differ, or a bad one, get the node rewritten (as
            // does a blacklisted bset, which the decode marked).
            node.needs_rewrite |= lengths_differ || !bad.is_empty();
            return Ok((node, bad));
        }
        let nr = bad.len();
        let mut copies = bad.into_iter();
        // Keep the first copy's error as the cause; the others are in the count.
        match copies.next() {
            Some(first) if nr > 1 => Err(first.error.prefix(format_args!("all {nr} replicas bad, first"))),
            Some(first) => Err(first.error),
            None => Err(Error::new(ErrCode::BtreeNodeReadErr, "btree pointer has no replicas")
                .btree(exp.btree)
                .level(exp.level)
                .pos(exp.max_key)),
        }
    }

    /// Writes `bytes` at `offset_bytes` into the node on every replica.
    pub fn write(&self, ptrs: &[ExtentPtr], offset_bytes: u64, bytes: &[u8]) -> Result<()> {
        for p in ptrs {
            let at = p.byte_offset().saturating_add(offset_bytes);
            self.device(p.dev)?.write_at(bytes, at).map_err(|e| e.dev(p.dev))?;
        }
        Ok(())
    }

    /// Flushes every present device.
    pub fn flush(&self) -> Result<()> {
        for d in self.devices.iter().flatten() {
            d.flush()?;
        }
        Ok(())
    }

    pub fn sectors_per_node(&self) -> u32 {
        (self.node_size / SECTOR_BYTES) as u32
    }
}
