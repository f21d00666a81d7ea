//! The DMA API every emulated device uses to reach guest memory.
//!
//! A device never holds guest RAM directly: it gets a [`Dma`] handle for its
//! own endpoint (PCI BDF). Behind it, the virtio-iommu's domain tables
//! translate each IOVA range, enforce the mapping's permissions, and append the
//! access to the audit trail; a refused access is a [`DmaFault`], recorded and
//! reported to the guest, never a panic.
//!
//! Implementations: [`crate::iommu::IommuDma`] (an endpoint behind the
//! virtio-iommu) and [`crate::iommu::PassthroughDma`] (a device outside it,
//! addresses are guest-physical; still audited). Virtio devices behind the
//! IOMMU see the same translation as a `vm_memory::GuestMemory`, through
//! [`crate::iommu::EndpointMemory`].

use std::fmt;

/// Direction of a DMA as seen from the device.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Access {
    /// The device reads guest memory (e.g. TX payload, descriptors).
    Read,
    /// The device writes guest memory (e.g. RX buffers, completions).
    Write,
}

/// What a device says an access is for (`aq`, `tx-desc`, `tx-payload`,
/// `rx-buf`, `rx-hdr`, `completion`, `vring`, …); recorded in the audit trail.
pub type DmaTag = &'static str;

/// Why an access was refused.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FaultReason {
    /// No mapping covers (part of) the range.
    Unmapped,
    /// A mapping covers it but lacks the needed permission.
    Permission,
    /// The endpoint is attached to no domain and bypass is off.
    NoDomain,
    /// The translated address is outside guest RAM.
    OutsideRam,
    /// Length zero or address arithmetic overflow.
    BadRange,
}

/// A refused DMA.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DmaFault {
    pub endpoint: u16,
    pub iova: u64,
    pub len: u64,
    pub access: Access,
    pub reason: FaultReason,
    pub tag: String,
}

impl fmt::Display for DmaFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "DMA fault: endpoint {:02x}:{:02x}.{} {:?} {:#x}+{:#x} ({}) refused: {:?}",
            self.endpoint >> 8,
            (self.endpoint >> 3) & 0x1f,
            self.endpoint & 7,
            self.access,
            self.iova,
            self.len,
            self.tag,
            self.reason
        )
    }
}

impl std::error::Error for DmaFault {}

/// A device's handle on guest memory through its IOMMU endpoint.
pub trait Dma: Send + Sync {
    /// The endpoint (PCI BDF) this handle issues DMA as.
    fn endpoint(&self) -> u16;
    /// Device reads `buf.len()` bytes at `iova`.
    fn read(&self, iova: u64, buf: &mut [u8], tag: DmaTag) -> Result<(), DmaFault>;
    /// Device writes `data` at `iova`.
    fn write(&self, iova: u64, data: &[u8], tag: DmaTag) -> Result<(), DmaFault>;
    /// Another IOVA of this endpoint that reaches the same guest-physical
    /// bytes as `[iova, iova + len)` through a different mapping, if any.
    /// Only test faults use it (sim-nic `dma-foreign-iova`); handles
    /// without address translation have none.
    fn alias_iova(&self, iova: u64, len: u64) -> Option<u64> {
        let _ = (iova, len);
        None
    }
}
