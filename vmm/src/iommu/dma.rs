//! [`Dma`] handles: [`IommuDma`] for an endpoint behind the virtio-iommu,
//! [`PassthroughDma`] for a device outside it. Both audit every access.
//!
//! `IommuDma` holds the IOMMU tables' read lock from translation until the
//! copy is done and the access recorded, so an UNMAP (which takes the write
//! lock) completes only after every DMA that could still use the mapping:
//! once the guest sees its UNMAP acknowledged, no device touches the page
//! through that IOVA again, and the audit sequence numbers say so.

use std::cell::RefCell;
use std::sync::Arc;

use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

use super::audit::{Audit, DeviceCounters, DmaAccess, GpaRanges};
use super::domain::{Segments, WalkFault};
use super::{FaultEvent, IommuState, MAP_F_READ, MAP_F_WRITE, need_flags};
use crate::dma::{Access, Dma, DmaFault, DmaTag, FaultReason};

thread_local! {
    /// Scratch translation buffer, so accesses do not allocate.
    static SEGMENTS: RefCell<Segments> = RefCell::new(Segments::new());
}

/// Check that every piece is guest RAM.
fn in_ram(mem: &GuestMemoryMmap<()>, segs: &[(u64, u64)]) -> Result<(), WalkFault> {
    for &(gpa, len) in segs {
        let ok = usize::try_from(len)
            .is_ok_and(|l| GuestMemoryBackend::check_range(mem, GuestAddress(gpa), l));
        if !ok {
            return Err(WalkFault {
                reason: FaultReason::OutsideRam,
                address: gpa,
            });
        }
    }
    Ok(())
}

/// Copy between `buf` and the guest-physical pieces `segs` (whose lengths
/// sum to `buf.len()`).
enum Copy<'a> {
    /// Device reads guest memory into the buffer.
    Read(&'a mut [u8]),
    /// Device writes the buffer to guest memory.
    Write(&'a [u8]),
    /// Translate, check and record only (a test probe).
    None,
}

fn copy(mem: &GuestMemoryMmap<()>, segs: &[(u64, u64)], op: &mut Copy<'_>) -> bool {
    let mut off = 0usize;
    for &(gpa, len) in segs {
        let len = len as usize;
        let ok = match op {
            Copy::Read(buf) => mem
                .read_slice(&mut buf[off..off + len], GuestAddress(gpa))
                .is_ok(),
            Copy::Write(data) => mem
                .write_slice(&data[off..off + len], GuestAddress(gpa))
                .is_ok(),
            Copy::None => true,
        };
        if !ok {
            return false;
        }
        off += len;
    }
    true
}

/// DMA of one endpoint through the IOMMU.
pub struct IommuDma {
    mem: GuestMemoryMmap<()>,
    iommu: Arc<IommuState>,
    endpoint: u16,
    counters: Arc<DeviceCounters>,
}

impl std::fmt::Debug for IommuDma {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IommuDma")
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

impl IommuDma {
    /// A handle for `endpoint` (its BDF), which becomes an IOMMU endpoint.
    pub fn new(mem: GuestMemoryMmap<()>, iommu: &Arc<IommuState>, endpoint: u16) -> Self {
        iommu.register_endpoint(endpoint);
        IommuDma {
            counters: iommu.audit().device(endpoint),
            mem,
            iommu: iommu.clone(),
            endpoint,
        }
    }

    pub fn iommu(&self) -> &Arc<IommuState> {
        &self.iommu
    }

    /// Guest-physical memory behind the translation.
    pub fn memory(&self) -> &GuestMemoryMmap<()> {
        &self.mem
    }

    /// Issue a DMA of `len` bytes at `iova` without moving data: translate,
    /// check permissions and RAM, record (and report a fault) exactly like
    /// a real access. A test hook.
    pub fn probe(&self, iova: u64, len: u64, access: Access, tag: DmaTag) -> Result<(), DmaFault> {
        self.run(iova, len, access, need_flags(access), tag, Copy::None)
    }

    /// Translate, check, copy and record under the tables' read lock.
    fn run(
        &self,
        iova: u64,
        len: u64,
        access: Access,
        need: u32,
        tag: DmaTag,
        mut op: Copy<'_>,
    ) -> Result<(), DmaFault> {
        let fault = SEGMENTS.with(|cell| {
            let mut segs = cell.borrow_mut();
            let tables = self.iommu.read_tables();
            let (domain, r) = tables.translate_into(self.endpoint, iova, len, need, &mut segs);
            let r = r
                .and_then(|()| in_ram(&self.mem, segs.as_slice()))
                .and_then(|()| {
                    if copy(&self.mem, segs.as_slice(), &mut op) {
                        Ok(())
                    } else {
                        Err(WalkFault {
                            reason: FaultReason::OutsideRam,
                            address: iova,
                        })
                    }
                });
            let (gpa, fault) = match r {
                Ok(()) => (GpaRanges::from_slice(segs.as_slice()), None),
                Err(f) => (GpaRanges::None, Some(f)),
            };
            self.iommu.audit().dma(
                &self.counters,
                DmaAccess {
                    device: self.endpoint,
                    iova,
                    len,
                    access,
                    tag,
                    gpa,
                    domain,
                    fault: fault.as_ref().map(|f| f.reason.clone()),
                },
                true,
            );
            drop(tables);
            fault
        });
        match fault {
            None => Ok(()),
            Some(f) => {
                self.iommu.report_fault(FaultEvent::new(
                    self.endpoint,
                    &f.reason,
                    access,
                    f.address,
                ));
                Err(DmaFault {
                    endpoint: self.endpoint,
                    iova,
                    len,
                    access,
                    reason: f.reason,
                    tag: tag.to_string(),
                })
            }
        }
    }

    /// Translate and record an access of `len` bytes needing `need`
    /// (MAP_F_* bits) without copying; on success `out` holds the
    /// guest-physical pieces. Used by [`EndpointMemory`](super::EndpointMemory),
    /// whose caller copies afterwards (without the lock).
    pub(crate) fn translate_recorded(
        &self,
        iova: u64,
        len: u64,
        access: Access,
        need: u32,
        tag: DmaTag,
        out: &mut Segments,
    ) -> Result<(), DmaFault> {
        let fault = {
            let tables = self.iommu.read_tables();
            let (domain, r) = tables.translate_into(self.endpoint, iova, len, need, out);
            let r = r.and_then(|()| in_ram(&self.mem, out.as_slice()));
            let (gpa, fault) = match r {
                Ok(()) => (GpaRanges::from_slice(out.as_slice()), None),
                Err(f) => (GpaRanges::None, Some(f)),
            };
            self.iommu.audit().dma(
                &self.counters,
                DmaAccess {
                    device: self.endpoint,
                    iova,
                    len,
                    access,
                    tag,
                    gpa,
                    domain,
                    fault: fault.as_ref().map(|f| f.reason.clone()),
                },
                true,
            );
            fault
        };
        match fault {
            None => Ok(()),
            Some(f) => {
                out.clear();
                self.iommu.report_fault(FaultEvent::new(
                    self.endpoint,
                    &f.reason,
                    access,
                    f.address,
                ));
                Err(DmaFault {
                    endpoint: self.endpoint,
                    iova,
                    len,
                    access,
                    reason: f.reason,
                    tag: tag.to_string(),
                })
            }
        }
    }

    /// Translate without recording (for `check_range`).
    pub(crate) fn translate_quiet(&self, iova: u64, len: u64, need: u32) -> bool {
        let mut segs = Segments::new();
        self.iommu
            .read_tables()
            .translate_into(self.endpoint, iova, len, need, &mut segs)
            .1
            .and_then(|()| in_ram(&self.mem, segs.as_slice()))
            .is_ok()
    }
}

impl Dma for IommuDma {
    fn endpoint(&self) -> u16 {
        self.endpoint
    }

    fn alias_iova(&self, iova: u64, len: u64) -> Option<u64> {
        self.iommu.alias_iova(self.endpoint, iova, len)
    }

    fn read(&self, iova: u64, buf: &mut [u8], tag: DmaTag) -> Result<(), DmaFault> {
        let len = buf.len() as u64;
        self.run(iova, len, Access::Read, MAP_F_READ, tag, Copy::Read(buf))
    }

    fn write(&self, iova: u64, data: &[u8], tag: DmaTag) -> Result<(), DmaFault> {
        let len = data.len() as u64;
        self.run(
            iova,
            len,
            Access::Write,
            MAP_F_WRITE,
            tag,
            Copy::Write(data),
        )
    }
}

/// DMA of a device that is not behind the IOMMU: addresses are
/// guest-physical. Still audited (its faults are counted and recorded, but
/// are not IOMMU faults).
pub struct PassthroughDma {
    mem: GuestMemoryMmap<()>,
    audit: Arc<Audit>,
    endpoint: u16,
    counters: Arc<DeviceCounters>,
}

impl PassthroughDma {
    pub fn new(mem: GuestMemoryMmap<()>, audit: &Arc<Audit>, endpoint: u16) -> Self {
        PassthroughDma {
            counters: audit.device(endpoint),
            mem,
            audit: audit.clone(),
            endpoint,
        }
    }

    fn run(
        &self,
        gpa: u64,
        len: u64,
        access: Access,
        tag: DmaTag,
        mut op: Copy<'_>,
    ) -> Result<(), DmaFault> {
        let seg = [(gpa, len)];
        let r = if len == 0 || gpa.checked_add(len - 1).is_none() {
            Err(FaultReason::BadRange)
        } else if in_ram(&self.mem, &seg).is_err() || !copy(&self.mem, &seg, &mut op) {
            Err(FaultReason::OutsideRam)
        } else {
            Ok(())
        };
        self.audit.dma(
            &self.counters,
            DmaAccess {
                device: self.endpoint,
                iova: gpa,
                len,
                access,
                tag,
                gpa: if r.is_ok() {
                    GpaRanges::One(seg)
                } else {
                    GpaRanges::None
                },
                domain: None,
                fault: r.clone().err(),
            },
            false,
        );
        r.map_err(|reason| DmaFault {
            endpoint: self.endpoint,
            iova: gpa,
            len,
            access,
            reason,
            tag: tag.to_string(),
        })
    }

    /// Like [`IommuDma::probe`].
    pub fn probe(&self, gpa: u64, len: u64, access: Access, tag: DmaTag) -> Result<(), DmaFault> {
        self.run(gpa, len, access, tag, Copy::None)
    }
}

impl Dma for PassthroughDma {
    fn endpoint(&self) -> u16 {
        self.endpoint
    }

    fn read(&self, iova: u64, buf: &mut [u8], tag: DmaTag) -> Result<(), DmaFault> {
        let len = buf.len() as u64;
        self.run(iova, len, Access::Read, tag, Copy::Read(buf))
    }

    fn write(&self, iova: u64, data: &[u8], tag: DmaTag) -> Result<(), DmaFault> {
        let len = data.len() as u64;
        self.run(iova, len, Access::Write, tag, Copy::Write(data))
    }
}
