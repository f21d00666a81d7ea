//! The DMA audit trail: what every device did to guest memory, and how the
//! IOMMU's address spaces changed, in one sequence space.
//!
//! - Per-device counters (reads, writes, bytes, faults) are always kept.
//! - Full records go into a bounded ring (oldest overwritten first); the
//!   verifier streams them with a cursor ([`Audit::drain_since`]).
//! - Refused accesses of IOMMU endpoints also go to a separate fault list.
//!
//! Sequence numbers are assigned under the ring's lock and, for IOMMU
//! events, while the IOMMU tables are locked (read for DMA, write for
//! MAP/UNMAP/ATTACH/DETACH), so the order of sequence numbers is the order
//! in which accesses and table changes took effect: a DMA with a sequence
//! number above an UNMAP's used the tables after that UNMAP.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::dma::{Access, DmaFault, DmaTag, FaultReason};
use crate::pci::{PciBdf, lock};

/// Ring capacity when none is configured.
pub const DEFAULT_AUDIT_CAPACITY: usize = 1 << 20;
/// Faults kept in the fault list (later ones are only counted).
pub const DEFAULT_MAX_FAULTS: usize = 1 << 16;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditConfig {
    /// Records kept in the ring (at least 1).
    pub capacity: usize,
    /// Faults kept in the fault list.
    pub max_faults: usize,
    /// Whether full records are kept (counters are kept regardless).
    pub record: bool,
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig {
            capacity: DEFAULT_AUDIT_CAPACITY,
            max_faults: DEFAULT_MAX_FAULTS,
            record: true,
        }
    }
}

/// Guest-physical pieces an access touched: `[(gpa, len)]`. One piece (the
/// common case) is stored inline.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GpaRanges {
    None,
    One([(u64, u64); 1]),
    Many(Box<[(u64, u64)]>),
}

impl GpaRanges {
    pub fn from_slice(s: &[(u64, u64)]) -> Self {
        match s {
            [] => GpaRanges::None,
            [one] => GpaRanges::One([*one]),
            many => GpaRanges::Many(many.into()),
        }
    }

    pub fn as_slice(&self) -> &[(u64, u64)] {
        match self {
            GpaRanges::None => &[],
            GpaRanges::One(a) => a,
            GpaRanges::Many(b) => b,
        }
    }
}

impl serde::Serialize for GpaRanges {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.as_slice().serialize(s)
    }
}

/// One device access to guest memory (allowed or refused).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct DmaAccess {
    /// Endpoint (PCI BDF) that issued it.
    pub device: u16,
    pub iova: u64,
    pub len: u64,
    pub access: Access,
    pub tag: DmaTag,
    /// Guest-physical pieces (empty when refused).
    pub gpa: GpaRanges,
    /// The IOMMU domain whose tables translated (or refused) the access;
    /// `None` for identity translation (passthrough device, bypass domain,
    /// global bypass) and for an endpoint attached to no domain.
    pub domain: Option<u32>,
    /// `None` if the access went through.
    pub fault: Option<FaultReason>,
}

impl DmaAccess {
    pub fn ok(&self) -> bool {
        self.fault.is_none()
    }
}

/// A mapping added to or removed from a domain.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct MapEvent {
    pub domain: u32,
    pub iova: u64,
    pub gpa: u64,
    pub size: u64,
    pub flags: u32,
}

/// Something the audit trail records.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum AuditEvent {
    Dma(DmaAccess),
    Map(MapEvent),
    /// A mapping went away: UNMAP, or its domain ceased to exist (last
    /// endpoint detached, device reset).
    Unmap(MapEvent),
    Attach {
        endpoint: u16,
        domain: u32,
        bypass: bool,
    },
    Detach {
        endpoint: u16,
        domain: u32,
    },
    /// The global bypass flag (config `bypass`) changed.
    Bypass {
        enabled: bool,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct AuditRecord {
    pub seq: u64,
    #[serde(flatten)]
    pub event: AuditEvent,
}

/// Records returned by [`Audit::drain_since`].
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct AuditBatch {
    pub records: Vec<AuditRecord>,
    /// Cursor for the next call.
    pub next: u64,
    /// Records at or after the cursor that were overwritten before being
    /// read (the ring wrapped).
    pub lost: u64,
}

/// Live counters of one device.
#[derive(Debug, Default)]
pub struct DeviceCounters {
    pub reads: AtomicU64,
    pub writes: AtomicU64,
    pub bytes: AtomicU64,
    pub faults: AtomicU64,
}

impl DeviceCounters {
    pub fn snapshot(&self) -> DeviceStats {
        DeviceStats {
            reads: self.reads.load(Ordering::Relaxed),
            writes: self.writes.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
            faults: self.faults.load(Ordering::Relaxed),
        }
    }
}

/// A snapshot of [`DeviceCounters`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DeviceStats {
    /// Allowed reads (accesses, not bytes).
    pub reads: u64,
    /// Allowed writes.
    pub writes: u64,
    /// Bytes moved by allowed accesses.
    pub bytes: u64,
    /// Refused accesses.
    pub faults: u64,
}

/// Everything the report needs about DMA.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct DmaReport {
    /// Keyed by `0000:BB:DD.F`.
    pub by_device: BTreeMap<String, DeviceStats>,
    /// Refused accesses of IOMMU endpoints, oldest first (bounded).
    pub iommu_faults: Vec<DmaFault>,
    /// Faults not kept in `iommu_faults` because the list was full.
    pub iommu_faults_dropped: u64,
    /// Fault events delivered on the virtio-iommu event queue.
    pub fault_events_sent: u64,
    /// Fault events dropped (no event buffer, or the driver not ready).
    pub fault_events_dropped: u64,
    /// Sequence number the next audit record will get.
    pub audit_next_seq: u64,
    /// Records overwritten because the ring was full.
    pub audit_overwritten: u64,
}

struct Ring {
    buf: VecDeque<AuditRecord>,
    next_seq: u64,
    overwritten: u64,
}

/// The audit trail shared by the IOMMU and every DMA handle.
pub struct Audit {
    capacity: usize,
    max_faults: usize,
    record: AtomicBool,
    ring: Mutex<Ring>,
    devices: Mutex<BTreeMap<u16, Arc<DeviceCounters>>>,
    faults: Mutex<Vec<DmaFault>>,
    faults_dropped: AtomicU64,
}

impl Default for Audit {
    fn default() -> Self {
        Self::new(AuditConfig::default())
    }
}

impl Audit {
    pub fn new(config: AuditConfig) -> Self {
        Audit {
            capacity: config.capacity.max(1),
            max_faults: config.max_faults,
            record: AtomicBool::new(config.record),
            ring: Mutex::new(Ring {
                buf: VecDeque::new(),
                next_seq: 0,
                overwritten: 0,
            }),
            devices: Mutex::default(),
            faults: Mutex::default(),
            faults_dropped: AtomicU64::new(0),
        }
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Turn full records on or off (counters and the fault list stay on).
    pub fn set_recording(&self, on: bool) {
        self.record.store(on, Ordering::Relaxed);
    }

    pub fn recording(&self) -> bool {
        self.record.load(Ordering::Relaxed)
    }

    /// The counters of `device`, created on first use.
    pub fn device(&self, device: u16) -> Arc<DeviceCounters> {
        lock(&self.devices).entry(device).or_default().clone()
    }

    /// Append `event` to the ring; returns its sequence number, or `None`
    /// when recording is off.
    pub fn record(&self, event: AuditEvent) -> Option<u64> {
        if !self.recording() {
            return None;
        }
        let mut r = lock(&self.ring);
        let seq = r.next_seq;
        r.next_seq += 1;
        if r.buf.len() >= self.capacity {
            r.buf.pop_front();
            r.overwritten += 1;
        }
        r.buf.push_back(AuditRecord { seq, event });
        Some(seq)
    }

    /// Count and record one DMA of a device. `iommu` faults also go to the
    /// fault list.
    pub(crate) fn dma(&self, counters: &DeviceCounters, access: DmaAccess, iommu: bool) {
        match &access.fault {
            None => {
                let c = match access.access {
                    Access::Read => &counters.reads,
                    Access::Write => &counters.writes,
                };
                c.fetch_add(1, Ordering::Relaxed);
                counters.bytes.fetch_add(access.len, Ordering::Relaxed);
            }
            Some(reason) => {
                counters.faults.fetch_add(1, Ordering::Relaxed);
                if iommu {
                    self.push_fault(DmaFault {
                        endpoint: access.device,
                        iova: access.iova,
                        len: access.len,
                        access: access.access,
                        reason: reason.clone(),
                        tag: access.tag.to_string(),
                    });
                }
            }
        }
        self.record(AuditEvent::Dma(access));
    }

    fn push_fault(&self, f: DmaFault) {
        let mut faults = lock(&self.faults);
        if faults.len() < self.max_faults {
            faults.push(f);
        } else {
            self.faults_dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Sequence number the next record will get.
    pub fn next_seq(&self) -> u64 {
        lock(&self.ring).next_seq
    }

    /// Every record with `seq >= cursor` still in the ring (records stay in
    /// the ring until overwritten; `next` is the cursor to pass next time).
    pub fn drain_since(&self, cursor: u64) -> AuditBatch {
        self.drain_since_limit(cursor, usize::MAX)
    }

    /// Like [`drain_since`](Self::drain_since), at most `max` records.
    pub fn drain_since_limit(&self, cursor: u64, max: usize) -> AuditBatch {
        let r = lock(&self.ring);
        let first = r.next_seq - r.buf.len() as u64;
        let start = cursor.clamp(first, r.next_seq);
        let lost = start - cursor.min(start);
        let skip = (start - first) as usize;
        let records: Vec<AuditRecord> = r.buf.iter().skip(skip).take(max).cloned().collect();
        let next = start + records.len() as u64;
        AuditBatch {
            records,
            next,
            lost,
        }
    }

    /// Refused accesses of IOMMU endpoints, oldest first.
    pub fn faults(&self) -> Vec<DmaFault> {
        lock(&self.faults).clone()
    }

    /// Counters of every device that has a DMA handle.
    pub fn by_device(&self) -> BTreeMap<u16, DeviceStats> {
        lock(&self.devices)
            .iter()
            .map(|(&d, c)| (d, c.snapshot()))
            .collect()
    }

    /// The audit part of a [`DmaReport`] (fault-event counters are the
    /// IOMMU's; see [`IommuState::report`](super::IommuState::report)).
    pub fn report(&self) -> DmaReport {
        let (next, overwritten) = {
            let r = lock(&self.ring);
            (r.next_seq, r.overwritten)
        };
        DmaReport {
            by_device: self
                .by_device()
                .into_iter()
                .map(|(d, s)| (PciBdf::from_u16(d).to_string(), s))
                .collect(),
            iommu_faults: self.faults(),
            iommu_faults_dropped: self.faults_dropped.load(Ordering::Relaxed),
            fault_events_sent: 0,
            fault_events_dropped: 0,
            audit_next_seq: next,
            audit_overwritten: overwritten,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn access(device: u16, iova: u64, fault: Option<FaultReason>) -> DmaAccess {
        DmaAccess {
            device,
            iova,
            len: 8,
            access: Access::Read,
            tag: "t",
            gpa: GpaRanges::from_slice(&[(iova, 8)]),
            domain: None,
            fault,
        }
    }

    #[test]
    fn ring_wraps_and_cursor_reports_losses() {
        let a = Audit::new(AuditConfig {
            capacity: 4,
            max_faults: 2,
            record: true,
        });
        let c = a.device(0x10);
        for i in 0..6 {
            a.dma(&c, access(0x10, i, None), true);
        }
        assert_eq!(a.next_seq(), 6);
        let b = a.drain_since(0);
        assert_eq!(b.lost, 2);
        assert_eq!(b.next, 6);
        assert_eq!(
            b.records.iter().map(|r| r.seq).collect::<Vec<_>>(),
            [2, 3, 4, 5]
        );
        let b = a.drain_since_limit(3, 2);
        assert_eq!((b.lost, b.next, b.records.len()), (0, 5, 2));
        let b = a.drain_since(6);
        assert_eq!((b.lost, b.next, b.records.len()), (0, 6, 0));
        let b = a.drain_since(100);
        assert_eq!((b.lost, b.next, b.records.len()), (0, 6, 0));
        assert_eq!(a.report().audit_overwritten, 2);
        assert_eq!(c.snapshot().reads, 6);
        assert_eq!(c.snapshot().bytes, 48);
    }

    #[test]
    fn faults_are_bounded_and_counters_survive_recording_off() {
        let a = Audit::new(AuditConfig {
            capacity: 8,
            max_faults: 2,
            record: true,
        });
        let c = a.device(0x18);
        for i in 0..3 {
            a.dma(&c, access(0x18, i, Some(FaultReason::Unmapped)), true);
        }
        a.dma(&c, access(0x18, 9, Some(FaultReason::OutsideRam)), false);
        let r = a.report();
        assert_eq!(r.iommu_faults.len(), 2);
        assert_eq!(r.iommu_faults_dropped, 1);
        assert_eq!(r.by_device["0000:00:03.0"].faults, 4);
        a.set_recording(false);
        a.dma(&c, access(0x18, 0, None), true);
        assert_eq!(a.next_seq(), 4);
        assert_eq!(c.snapshot().reads, 1);
        let json = serde_json::to_value(&a.drain_since(0).records[0]).unwrap();
        assert_eq!(json["kind"], "dma");
        assert_eq!(json["seq"], 0);
        assert_eq!(json["gpa"], serde_json::json!([[0, 8]]));
        assert_eq!(json["fault"], "unmapped");
    }
}
