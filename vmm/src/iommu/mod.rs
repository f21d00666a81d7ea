//! The IOMMU model shared by the virtio-iommu device (which changes it on the
//! guest's requests) and every device DMA handle (which translates through
//! it): domains with their mappings, endpoints, the global bypass flag, the
//! audit trail and the queue of fault events for the guest.
//!
//! Nothing here knows about KVM or virtqueues; the request parsing lives in
//! [`crate::virtio::iommu`]. Rules follow virtio 1.2 §5.13:
//! - MAP: flags must be known (`S_INVAL`); `virt_start`, `phys_start` and
//!   `virt_end + 1` aligned to the granule and the range inside
//!   `input_range` (`S_RANGE`); unknown domain `S_NOENT`; bypass domain or
//!   overlap with a mapping or a reserved region `S_INVAL`.
//! - UNMAP removes every mapping inside the range; if it would split one it
//!   fails with `S_RANGE` and removes nothing.
//! - A domain exists while endpoints are attached to it; when the last one
//!   leaves, its mappings are gone.
//! - Translation: an attached endpoint uses its domain (identity for a
//!   bypass domain); an unattached one is identity-mapped if `bypass` is set
//!   and refused ([`FaultReason::NoDomain`]) otherwise. Permissions are
//!   enforced (a write needs `MAP_F_WRITE`, a read `MAP_F_READ`).

pub mod audit;
pub mod dma;
pub mod domain;
pub mod memory;

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

pub use audit::{
    Audit, AuditBatch, AuditConfig, AuditEvent, AuditRecord, DeviceStats, DmaAccess, DmaReport,
    GpaRanges, MapEvent,
};
pub use dma::{IommuDma, PassthroughDma};
pub use domain::{MAP_F_ALL, MAP_F_MMIO, MAP_F_READ, MAP_F_WRITE, Mapping, Segments};
pub use memory::EndpointMemory;

use crate::dma::{Access, FaultReason};
use crate::layout::{MSI_RANGE_END, MSI_RANGE_START};
use crate::pci::lock;
use domain::{AddressSpace, WalkFault};

/// Smallest page the IOMMU maps (the granule: lowest bit of the mask).
pub const PAGE_SIZE_4K: u64 = 0x1000;
/// 2 MiB pages, advertised so Linux maps large buffers with few requests.
pub const PAGE_SIZE_2M: u64 = 0x20_0000;

/// virtio-iommu request status codes (virtio 1.2 §5.13.6).
pub mod status {
    pub const OK: u8 = 0;
    pub const IOERR: u8 = 1;
    pub const UNSUPP: u8 = 2;
    pub const DEVERR: u8 = 3;
    pub const INVAL: u8 = 4;
    pub const RANGE: u8 = 5;
    pub const NOENT: u8 = 6;
    pub const FAULT: u8 = 7;
    pub const NOMEM: u8 = 8;
}

/// virtio-iommu fault event reasons and flags (virtio 1.2 §5.13.6.7).
pub mod fault {
    pub const R_UNKNOWN: u8 = 0;
    pub const R_DOMAIN: u8 = 1;
    pub const R_MAPPING: u8 = 2;
    pub const F_READ: u32 = 1 << 0;
    pub const F_WRITE: u32 = 1 << 1;
    pub const F_ADDRESS: u32 = 1 << 8;
}

/// Why a request was refused; each maps to one status code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum IommuError {
    #[error("unsupported request")]
    Unsupported,
    #[error("invalid parameters")]
    Invalid,
    #[error("out-of-range parameters")]
    Range,
    #[error("no such endpoint or domain")]
    NoEntry,
    #[error("insufficient resources")]
    NoMemory,
}

impl IommuError {
    /// The virtio-iommu status code.
    pub fn status(self) -> u8 {
        match self {
            IommuError::Unsupported => status::UNSUPP,
            IommuError::Invalid => status::INVAL,
            IommuError::Range => status::RANGE,
            IommuError::NoEntry => status::NOENT,
            IommuError::NoMemory => status::NOMEM,
        }
    }
}

/// Kind of a reserved IOVA region (PROBE RESV_MEM subtype).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReservedKind {
    Reserved = 0,
    Msi = 1,
}

/// An IOVA region endpoints cannot map, reported by PROBE.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReservedRegion {
    pub start: u64,
    /// Inclusive.
    pub end: u64,
    pub kind: ReservedKind,
}

/// Static properties of the IOMMU (the device's config space).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IommuConfig {
    /// Page sizes; the lowest set bit is the mapping granule.
    pub page_size_mask: u64,
    /// IOVAs that can be mapped (inclusive).
    pub input_range: (u64, u64),
    /// Domain IDs (inclusive).
    pub domain_range: (u32, u32),
    /// Bytes of PROBE properties.
    pub probe_size: u32,
    /// Initial (and system-reset) value of the global bypass flag.
    pub bypass: bool,
    /// Reserved regions of every endpoint (the MSI doorbell on x86).
    pub reserved: Vec<ReservedRegion>,
    /// Domains that may exist at once (more: `S_NOMEM`).
    pub max_domains: usize,
    /// Mappings per domain (more: `S_NOMEM`).
    pub max_mappings: usize,
    /// Fault events waiting for the device worker (more are dropped).
    pub max_pending_events: usize,
}

impl Default for IommuConfig {
    fn default() -> Self {
        IommuConfig {
            page_size_mask: PAGE_SIZE_4K | PAGE_SIZE_2M,
            input_range: (0, (1 << 48) - 1),
            domain_range: (0, u32::MAX),
            probe_size: 512,
            bypass: true,
            reserved: vec![ReservedRegion {
                start: MSI_RANGE_START,
                end: MSI_RANGE_END,
                kind: ReservedKind::Msi,
            }],
            max_domains: 1 << 16,
            max_mappings: 1 << 22,
            max_pending_events: 1024,
        }
    }
}

impl IommuConfig {
    /// Mapping granule in bytes (at least 1).
    pub fn granule(&self) -> u64 {
        1u64 << self.page_size_mask.trailing_zeros().min(63)
    }
}

/// A fault to report on the event queue (`struct virtio_iommu_fault`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FaultEvent {
    pub reason: u8,
    pub flags: u32,
    pub endpoint: u32,
    pub address: u64,
}

impl FaultEvent {
    /// The event for a refused access of `endpoint` at `address`.
    pub fn new(endpoint: u16, reason: &FaultReason, access: Access, address: u64) -> Self {
        let reason = match reason {
            FaultReason::NoDomain => fault::R_DOMAIN,
            FaultReason::Unmapped | FaultReason::Permission => fault::R_MAPPING,
            FaultReason::OutsideRam | FaultReason::BadRange => fault::R_UNKNOWN,
        };
        let dir = match access {
            Access::Read => fault::F_READ,
            Access::Write => fault::F_WRITE,
        };
        FaultEvent {
            reason,
            flags: dir | fault::F_ADDRESS,
            endpoint: u32::from(endpoint),
            address,
        }
    }

    /// Wire format (24 bytes, little endian, reserved fields zero).
    pub fn to_bytes(&self) -> [u8; 24] {
        let mut b = [0u8; 24];
        b[0] = self.reason;
        b[4..8].copy_from_slice(&self.flags.to_le_bytes());
        b[8..12].copy_from_slice(&self.endpoint.to_le_bytes());
        b[16..24].copy_from_slice(&self.address.to_le_bytes());
        b
    }
}

struct Domain {
    bypass: bool,
    space: AddressSpace,
    endpoints: BTreeSet<u16>,
}

/// The translation tables, behind one read-mostly lock.
pub(crate) struct Tables {
    bypass: bool,
    /// Registered endpoints → the domain they are attached to.
    endpoints: BTreeMap<u16, Option<u32>>,
    domains: HashMap<u32, Domain>,
}

impl Tables {
    /// Translate `[iova, iova + len)` of `endpoint` for an access needing
    /// `need` (MAP_F_* bits) into `out`. Also returns the domain whose
    /// tables were (or would have been) used: `None` when the access is
    /// identity-mapped (bypass domain, or unattached with global bypass) or
    /// refused for want of a domain.
    pub(crate) fn translate_into(
        &self,
        endpoint: u16,
        iova: u64,
        len: u64,
        need: u32,
        out: &mut Segments,
    ) -> (Option<u32>, Result<(), WalkFault>) {
        out.clear();
        let attached = self.endpoints.get(&endpoint).copied().flatten();
        let domain = attached.and_then(|d| self.domains.get(&d).map(|dom| (d, dom)));
        let paged = domain.filter(|(_, dom)| !dom.bypass).map(|(d, _)| d);
        let Some(last) = len.checked_sub(1).and_then(|l| iova.checked_add(l)) else {
            return (
                paged,
                Err(WalkFault {
                    reason: FaultReason::BadRange,
                    address: iova,
                }),
            );
        };
        let r = match domain {
            Some((_, d)) if d.bypass => {
                out.push(iova, len);
                Ok(())
            }
            Some((_, d)) => d.space.walk(iova, last, need, out),
            None if self.bypass => {
                out.push(iova, len);
                Ok(())
            }
            None => Err(WalkFault {
                reason: FaultReason::NoDomain,
                address: iova,
            }),
        };
        (paged, r)
    }

    /// Another IOVA of `endpoint`'s domain that maps `[iova, iova + len)`
    /// to the same guest-physical bytes (readable), through a mapping that
    /// does not itself contain `iova`; the lowest such IOVA. `None` if the
    /// range does not translate to one contiguous guest-physical piece, or
    /// no other mapping covers it. A linear scan of the domain: meant for
    /// test faults, not for the DMA path.
    pub(crate) fn alias(&self, endpoint: u16, iova: u64, len: u64) -> Option<u64> {
        let d = self.endpoints.get(&endpoint).copied().flatten()?;
        let dom = self.domains.get(&d).filter(|dom| !dom.bypass)?;
        let last = iova.checked_add(len.checked_sub(1)?)?;
        let mut segs = Segments::new();
        dom.space.walk(iova, last, MAP_F_READ, &mut segs).ok()?;
        let &[(gpa, n)] = segs.as_slice() else {
            return None;
        };
        debug_assert_eq!(n, len);
        let gpa_last = gpa.checked_add(len - 1)?;
        dom.space
            .iter()
            .filter(|m| !(m.iova <= iova && iova <= m.last))
            .filter(|m| m.flags & MAP_F_READ != 0)
            .find(|m| m.gpa <= gpa && gpa_last - m.gpa <= m.last - m.iova)
            .map(|m| m.iova + (gpa - m.gpa))
    }
}

/// Pending fault events for the virtio-iommu worker.
struct FaultEvents {
    pending: Mutex<VecDeque<FaultEvent>>,
    evt: EventFd,
    active: AtomicBool,
    sent: AtomicU64,
    dropped: AtomicU64,
}

/// The IOMMU: tables, audit trail and fault events.
pub struct IommuState {
    config: IommuConfig,
    tables: RwLock<Tables>,
    audit: Arc<Audit>,
    events: FaultEvents,
}

/// `MAP_F_*` bits an access needs.
pub fn need_flags(access: Access) -> u32 {
    match access {
        Access::Read => MAP_F_READ,
        Access::Write => MAP_F_WRITE,
    }
}

impl IommuState {
    pub fn new(config: IommuConfig, audit: Arc<Audit>) -> std::io::Result<Arc<Self>> {
        Ok(Arc::new(IommuState {
            tables: RwLock::new(Tables {
                bypass: config.bypass,
                endpoints: BTreeMap::new(),
                domains: HashMap::new(),
            }),
            config,
            audit,
            events: FaultEvents {
                pending: Mutex::default(),
                evt: EventFd::new(EFD_NONBLOCK)?,
                active: AtomicBool::new(false),
                sent: AtomicU64::new(0),
                dropped: AtomicU64::new(0),
            },
        }))
    }

    pub fn config(&self) -> &IommuConfig {
        &self.config
    }

    pub fn audit(&self) -> &Arc<Audit> {
        &self.audit
    }

    pub(crate) fn read_tables(&self) -> RwLockReadGuard<'_, Tables> {
        self.tables.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write_tables(&self) -> RwLockWriteGuard<'_, Tables> {
        self.tables.write().unwrap_or_else(PoisonError::into_inner)
    }

    /// Make `endpoint` (a BDF) known to the IOMMU: it can then be probed
    /// and attached, and it is listed in the VIOT.
    pub fn register_endpoint(&self, endpoint: u16) {
        self.write_tables()
            .endpoints
            .entry(endpoint)
            .or_insert(None);
    }

    /// Registered endpoints, in order.
    pub fn endpoints(&self) -> Vec<u16> {
        self.read_tables().endpoints.keys().copied().collect()
    }

    /// A registered endpoint, from a request's 32-bit endpoint ID.
    fn known_endpoint(t: &Tables, endpoint: u32) -> Result<u16, IommuError> {
        u16::try_from(endpoint)
            .ok()
            .filter(|e| t.endpoints.contains_key(e))
            .ok_or(IommuError::NoEntry)
    }

    /// Whether `endpoint` is a registered endpoint (PROBE).
    pub fn has_endpoint(&self, endpoint: u32) -> bool {
        Self::known_endpoint(&self.read_tables(), endpoint).is_ok()
    }

    pub fn bypass(&self) -> bool {
        self.read_tables().bypass
    }

    /// Set the global bypass flag (config `bypass`).
    pub fn set_bypass(&self, enabled: bool) {
        let mut t = self.write_tables();
        if t.bypass != enabled {
            t.bypass = enabled;
            self.audit.record(AuditEvent::Bypass { enabled });
        }
    }

    /// The domain `endpoint` is attached to.
    pub fn domain_of(&self, endpoint: u16) -> Option<u32> {
        self.read_tables()
            .endpoints
            .get(&endpoint)
            .copied()
            .flatten()
    }

    /// Mappings of `domain` in IOVA order (`None` if it does not exist).
    pub fn mappings(&self, domain: u32) -> Option<Vec<Mapping>> {
        self.read_tables()
            .domains
            .get(&domain)
            .map(|d| d.space.iter().copied().collect())
    }

    /// Number of existing domains.
    pub fn domain_count(&self) -> usize {
        self.read_tables().domains.len()
    }

    /// Remove `endpoint` from its domain (if any); the domain ceases to
    /// exist, with its mappings, once empty.
    fn detach_locked(&self, t: &mut Tables, endpoint: u16) {
        let Some(Some(domain)) = t.endpoints.insert(endpoint, None) else {
            return;
        };
        self.audit.record(AuditEvent::Detach { endpoint, domain });
        let empty = t.domains.get_mut(&domain).is_some_and(|d| {
            d.endpoints.remove(&endpoint);
            d.endpoints.is_empty()
        });
        if empty && let Some(d) = t.domains.remove(&domain) {
            for m in d.space.iter() {
                self.audit.record(AuditEvent::Unmap(map_event(domain, m)));
            }
        }
    }

    /// ATTACH: `endpoint` joins `domain` (created if needed), leaving its
    /// previous domain first.
    pub fn attach(&self, domain: u32, endpoint: u32, bypass: bool) -> Result<(), IommuError> {
        let mut t = self.write_tables();
        let ep = Self::known_endpoint(&t, endpoint)?;
        let (lo, hi) = self.config.domain_range;
        if !(lo..=hi).contains(&domain) {
            return Err(IommuError::Range);
        }
        match t.domains.get(&domain) {
            Some(d) if d.bypass != bypass => return Err(IommuError::Invalid),
            None if t.domains.len() >= self.config.max_domains => {
                return Err(IommuError::NoMemory);
            }
            _ => {}
        }
        if t.endpoints.get(&ep).copied().flatten() == Some(domain) {
            return Ok(());
        }
        self.detach_locked(&mut t, ep);
        t.domains
            .entry(domain)
            .or_insert_with(|| Domain {
                bypass,
                space: AddressSpace::new(),
                endpoints: BTreeSet::new(),
            })
            .endpoints
            .insert(ep);
        t.endpoints.insert(ep, Some(domain));
        self.audit.record(AuditEvent::Attach {
            endpoint: ep,
            domain,
            bypass,
        });
        Ok(())
    }

    /// DETACH `endpoint` from `domain`.
    pub fn detach(&self, domain: u32, endpoint: u32) -> Result<(), IommuError> {
        let mut t = self.write_tables();
        let ep = Self::known_endpoint(&t, endpoint)?;
        if t.endpoints.get(&ep).copied().flatten() != Some(domain) {
            return Err(IommuError::Invalid);
        }
        self.detach_locked(&mut t, ep);
        Ok(())
    }

    /// MAP `[virt_start, virt_end]` → `phys_start` in `domain` with `flags`
    /// (MAP_F_* bits; the caller refuses bits whose feature was not
    /// negotiated).
    pub fn map(
        &self,
        domain: u32,
        virt_start: u64,
        virt_end: u64,
        phys_start: u64,
        flags: u32,
    ) -> Result<(), IommuError> {
        if flags & !MAP_F_ALL != 0 || virt_end < virt_start {
            return Err(IommuError::Invalid);
        }
        let g = self.config.granule();
        let aligned = virt_start.is_multiple_of(g)
            && phys_start.is_multiple_of(g)
            && virt_end.wrapping_add(1).is_multiple_of(g);
        let (in_lo, in_hi) = self.config.input_range;
        let phys_ok = phys_start.checked_add(virt_end - virt_start).is_some();
        if !aligned || virt_start < in_lo || virt_end > in_hi || !phys_ok {
            return Err(IommuError::Range);
        }
        let mut t = self.write_tables();
        let d = t.domains.get_mut(&domain).ok_or(IommuError::NoEntry)?;
        if d.bypass {
            return Err(IommuError::Invalid);
        }
        if self
            .config
            .reserved
            .iter()
            .any(|r| r.start <= virt_end && r.end >= virt_start)
        {
            return Err(IommuError::Invalid);
        }
        if d.space.len() >= self.config.max_mappings {
            return Err(IommuError::NoMemory);
        }
        let m = Mapping {
            iova: virt_start,
            last: virt_end,
            gpa: phys_start,
            flags,
        };
        d.space.insert(m).map_err(|_| IommuError::Invalid)?;
        self.audit.record(AuditEvent::Map(map_event(domain, &m)));
        Ok(())
    }

    /// UNMAP every mapping of `domain` inside `[virt_start, virt_end]`.
    pub fn unmap(&self, domain: u32, virt_start: u64, virt_end: u64) -> Result<(), IommuError> {
        if virt_end < virt_start {
            return Err(IommuError::Invalid);
        }
        let mut t = self.write_tables();
        let d = t.domains.get_mut(&domain).ok_or(IommuError::NoEntry)?;
        if d.bypass {
            return Err(IommuError::Invalid);
        }
        let removed = d
            .space
            .remove_range(virt_start, virt_end)
            .map_err(|_| IommuError::Range)?;
        for m in &removed {
            self.audit.record(AuditEvent::Unmap(map_event(domain, m)));
        }
        Ok(())
    }

    /// Device reset: every endpoint detached, every domain gone. The bypass
    /// flag is kept (virtio 1.2 §5.13.4: it survives device reset).
    pub fn reset(&self) {
        let mut t = self.write_tables();
        let attached: Vec<u16> = t
            .endpoints
            .iter()
            .filter(|(_, d)| d.is_some())
            .map(|(&e, _)| e)
            .collect();
        for ep in attached {
            self.detach_locked(&mut t, ep);
        }
        debug_assert!(t.domains.is_empty());
        t.domains.clear();
    }

    /// Translate `len` bytes at `iova` for `endpoint`: the guest-physical
    /// pieces, in order (a range may span several adjacent mappings).
    /// Neither recorded nor reported: DMA handles do that.
    pub fn translate(
        &self,
        endpoint: u16,
        iova: u64,
        len: u64,
        access: Access,
    ) -> Result<Vec<(u64, u64)>, FaultReason> {
        let mut out = Segments::new();
        self.read_tables()
            .translate_into(endpoint, iova, len, need_flags(access), &mut out)
            .1
            .map_err(|f| f.reason)?;
        Ok(out.as_slice().to_vec())
    }

    /// Another IOVA at which `endpoint`'s domain maps the guest-physical
    /// bytes `[iova, iova + len)` maps to (see the `dma-foreign-iova` NIC
    /// fault): `None` if there is none or the endpoint has no paged domain.
    pub fn alias_iova(&self, endpoint: u16, iova: u64, len: u64) -> Option<u64> {
        self.read_tables().alias(endpoint, iova, len)
    }

    // Fault events.

    /// EventFd signalled when fault events are pending.
    pub fn fault_eventfd(&self) -> &EventFd {
        &self.events.evt
    }

    /// Whether the device can deliver events (its driver is running).
    pub(crate) fn set_events_active(&self, active: bool) {
        self.events.active.store(active, Ordering::SeqCst);
        if !active {
            let n = lock(&self.events.pending).drain(..).count();
            self.events.dropped.fetch_add(n as u64, Ordering::Relaxed);
        }
    }

    /// Queue a fault event for the guest (dropped if the device is not
    /// running or too many are pending).
    pub fn report_fault(&self, ev: FaultEvent) {
        if !self.events.active.load(Ordering::SeqCst) {
            self.events.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        {
            let mut p = lock(&self.events.pending);
            if p.len() >= self.config.max_pending_events {
                self.events.dropped.fetch_add(1, Ordering::Relaxed);
                return;
            }
            p.push_back(ev);
        }
        if let Err(e) = self.events.evt.write(1) {
            tracing::debug!("cannot signal virtio-iommu fault event: {e}");
        }
    }

    /// Take every pending fault event.
    pub(crate) fn take_fault_events(&self) -> Vec<FaultEvent> {
        lock(&self.events.pending).drain(..).collect()
    }

    pub(crate) fn note_event(&self, delivered: bool) {
        let c = if delivered {
            &self.events.sent
        } else {
            &self.events.dropped
        };
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// The DMA report: audit counters and faults plus fault-event counts.
    pub fn report(&self) -> DmaReport {
        let mut r = self.audit.report();
        r.fault_events_sent = self.events.sent.load(Ordering::Relaxed);
        r.fault_events_dropped = self.events.dropped.load(Ordering::Relaxed);
        r
    }
}

fn map_event(domain: u32, m: &Mapping) -> MapEvent {
    MapEvent {
        domain,
        iova: m.iova,
        gpa: m.gpa,
        size: m.size(),
        flags: m.flags,
    }
}
