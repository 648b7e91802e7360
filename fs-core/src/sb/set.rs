//! A device set: the images given for one filesystem, checked to belong together.

use super::io::{DamagedCopy, read_super, write_super};
use super::{MemberState, Superblock};
use crate::dev::SharedDevice;
use crate::error::{ErrCode, Error, Result};

/// One member device that was given, with what its own superblock says.
#[derive(Debug)]
pub struct MemberDevice {
    pub dev: SharedDevice,
    /// This device's superblock as read (its dev_idx, copy offsets and journal buckets are its own).
    pub sb: Superblock,
    pub damaged: Vec<DamagedCopy>,
}

/// The devices of one filesystem, indexed by device index; `None` where a member was not given.
#[derive(Debug)]
pub struct DeviceSet {
    /// The newest superblock among the devices: the filesystem-wide view (members, options,
    /// clean section, error counts).
    pub sb: Superblock,
    pub devices: Vec<Option<MemberDevice>>,
}

impl DeviceSet {
    /// Reads every device's superblock and checks they form one filesystem: same uuid, no
    /// member given twice, each device's uuid the one the member table has for its slot.
    pub fn open(devs: Vec<SharedDevice>) -> Result<DeviceSet> {
        if devs.is_empty() {
            return Err(Error::new(ErrCode::InvalidArgument, "no devices given"));
        }
        let mut read = Vec::with_capacity(devs.len());
        for dev in devs {
            let r = read_super(dev.as_ref())?;
            read.push(MemberDevice { dev, sb: r.sb, damaged: r.damaged });
        }
        // The first device names the filesystem; the newest superblock of that filesystem is
        // the filesystem-wide view.
        let first = read.first().map(|m| (m.sb.uuid, m.dev.name().to_owned()));
        let Some((uuid, first_name)) = first else {
            return Err(Error::new(ErrCode::InvalidArgument, "no devices given"));
        };
        if let Some(odd) = read.iter().find(|m| m.sb.uuid != uuid) {
            return Err(Error::new(
                ErrCode::FsUuidMismatch,
                format!("belongs to filesystem {}, but {first_name} belongs to {uuid}", odd.sb.uuid),
            )
            .path(odd.dev.name()));
        }
        let newest = read.iter().map(|m| &m.sb).max_by_key(|sb| sb.seq).cloned();
        let sb = newest.ok_or_else(|| Error::new(ErrCode::InvalidArgument, "no devices given"))?;
        let mut devices: Vec<Option<MemberDevice>> = (0..sb.members.len()).map(|_| None).collect();
        for m in read {
            check_member(&sb, &m, &devices)?;
            let idx = usize::from(m.sb.dev_idx);
            if let Some(slot) = devices.get_mut(idx) {
                *slot = Some(m);
            }
        }
        Ok(DeviceSet { sb, devices })
    }

    /// Device indexes of members (in use, not spare) that were not given.
    pub fn missing(&self) -> Vec<u16> {
        self.sb
            .members
            .iter()
            .enumerate()
            .filter(|(i, m)| !m.is_unused() && m.state != MemberState::Spare && self.device(*i).is_none())
            .filter_map(|(i, _)| u16::try_from(i).ok())
            .collect()
    }

    /// Fails with `device_missing` naming every absent member unless `degraded` allows it.
    pub fn require_all(&self, degraded: bool) -> Result<()> {
        let missing = self.missing();
        if missing.is_empty() || degraded {
            return Ok(());
        }
        let list: Vec<String> = missing.iter().map(u16::to_string).collect();
        Err(Error::new(
            ErrCode::DeviceMissing,
            format!(
                "member device(s) {} of {} not given: give every image, or mount with -o degraded",
                list.join(", "),
                self.sb.members.iter().filter(|m| !m.is_unused()).count()
            ),
        ))
    }

    pub fn device(&self, idx: usize) -> Option<&MemberDevice> {
        self.devices.get(idx).and_then(Option::as_ref)
    }

    pub fn present(&self) -> impl Iterator<Item = &MemberDevice> {
        self.devices.iter().flatten()
    }

    /// Writes the filesystem-wide superblock to every present device with seq bumped; each
    /// device keeps its own index, copy offsets and journal buckets.
    pub fn write_super(&mut self) -> Result<()> {
        self.sb.seq += 1;
        for m in self.devices.iter_mut().flatten() {
            let mut sb = self.sb.clone();
            sb.dev_idx = m.sb.dev_idx;
            sb.offsets = m.sb.offsets;
            sb.journal = m.sb.journal.clone();
            write_super(m.dev.as_ref(), &sb).map_err(|e| e.or_path(m.dev.name()))?;
            m.sb = sb;
            m.damaged.clear();
        }
        Ok(())
    }
}

fn check_member(fs: &Superblock, m: &MemberDevice, seen: &[Option<MemberDevice>]) -> Result<()> {
    let name = m.dev.name();
    let idx = usize::from(m.sb.dev_idx);
    if let Some(prev) = seen.get(idx).and_then(Option::as_ref) {
        return Err(Error::new(
            ErrCode::DeviceDuplicate,
            format!("is member {idx}, and so is {}: the same device given twice?", prev.dev.name()),
        )
        .path(name));
    }
    match (fs.members.get(idx), m.sb.member()) {
        (Some(expected), Some(own)) if expected.uuid == own.uuid && !expected.is_unused() => Ok(()),
        _ => Err(Error::new(
            ErrCode::InvalidSbMembers,
            format!("member {idx} is not in the filesystem's member table (removed device?)"),
        )
        .path(name)),
    }
}
