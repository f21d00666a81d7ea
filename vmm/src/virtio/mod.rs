//! Virtio devices and the virtio-pci (modern) transport.
//!
//! A device implements [`VirtioDevice`]; the transport
//! ([`pci::VirtioPciDevice`]) owns it, runs feature negotiation and queue
//! setup from the guest's register writes and, at DRIVER_OK, hands the
//! device its queues (each with the EventFd the guest's notifications are
//! written to) and a [`VirtioInterrupt`]. Devices do their work on their own
//! worker thread so the vCPU thread never blocks on device I/O.

pub mod console;
pub mod iommu;
pub mod pci;
pub mod rng;
mod worker;

#[cfg(test)]
mod bus_tests;

use std::sync::Arc;

use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

pub use crate::iommu::EndpointMemory;
pub use console::Console;
pub use iommu::VirtioIommu;
pub use pci::VirtioPciDevice;
pub use rng::Rng;
pub use virtio_queue::Queue;

/// "No MSI-X vector" in `config_msix_vector` / `queue_msix_vector`.
pub const VIRTIO_MSI_NO_VECTOR: u16 = 0xffff;

/// Feature bit numbers the transport cares about (virtio 1.2 §6).
pub const VIRTIO_F_INDIRECT_DESC: u32 = 28;
pub const VIRTIO_F_EVENT_IDX: u32 = 29;
pub const VIRTIO_F_VERSION_1: u32 = virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
pub const VIRTIO_F_ACCESS_PLATFORM: u32 = virtio_bindings::virtio_config::VIRTIO_F_ACCESS_PLATFORM;

/// Device status bits (virtio 1.2 §2.1).
pub const STATUS_ACKNOWLEDGE: u8 = 1;
pub const STATUS_DRIVER: u8 = 2;
pub const STATUS_DRIVER_OK: u8 = 4;
pub const STATUS_FEATURES_OK: u8 = 8;
pub const STATUS_DEVICE_NEEDS_RESET: u8 = 0x40;
pub const STATUS_FAILED: u8 = 0x80;

/// Interrupt delivery from a device to the driver, implemented by the
/// transport (MSI-X vectors and the ISR byte for virtio-pci).
pub trait VirtioInterrupt: Send + Sync {
    /// The device added buffers to the used ring of `queue_index`.
    fn signal_used_queue(&self, queue_index: u16);
    /// The device changed its configuration space.
    fn signal_config_change(&self);
}

/// Why a device could not be activated.
#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    #[error("device expects {expected} queues, transport gave {got}")]
    QueueCount { expected: usize, got: usize },
    #[error("device is already active")]
    AlreadyActive,
    #[error("device cannot work behind an IOMMU")]
    PlatformUnsupported,
    #[error("device I/O setup failed")]
    Io(#[from] std::io::Error),
}

/// A virtio device behind any transport.
pub trait VirtioDevice: Send {
    /// Virtio device ID (virtio 1.2 §5), e.g. 3 for console.
    fn device_type(&self) -> u32;
    /// Maximum size of each queue (powers of two); the queue count is the
    /// length of this slice.
    fn queue_max_sizes(&self) -> &[u16];
    /// Device feature bits. The transport adds `VIRTIO_F_VERSION_1` (and
    /// `VIRTIO_F_ACCESS_PLATFORM` if [`access_platform`](Self::access_platform)).
    fn features(&self) -> u64;
    /// Whether the device sits behind an IOMMU and so must offer
    /// `VIRTIO_F_ACCESS_PLATFORM`.
    fn access_platform(&self) -> bool {
        false
    }
    /// The driver's accepted features, told once FEATURES_OK is accepted.
    fn ack_features(&mut self, _features: u64) {}
    /// Read device configuration space at `offset` (bytes past the end read
    /// as zero).
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Write device configuration space (read-only or out-of-range bytes
    /// are ignored).
    fn write_config(&mut self, offset: u64, data: &[u8]);
    /// Start the device. `queues[i]` is queue `i` with the EventFd that
    /// receives the guest's notifications for it; a queue the driver did not
    /// enable has `ready() == false` and must not be used. Memory is guest
    /// physical memory.
    fn activate(
        &mut self,
        mem: GuestMemoryMmap<()>,
        queues: Vec<(Queue, EventFd)>,
        interrupt: Arc<dyn VirtioInterrupt>,
    ) -> Result<(), ActivateError>;
    /// Start the device behind an IOMMU: the driver negotiated
    /// `VIRTIO_F_ACCESS_PLATFORM` and the transport sits on an IOMMU
    /// endpoint. Every ring and buffer address is an IOVA, translated (and
    /// audited) through `mem` on each access. Devices that cannot do this
    /// keep the default, which refuses.
    fn activate_platform(
        &mut self,
        mem: EndpointMemory,
        queues: Vec<(Queue, EventFd)>,
        interrupt: Arc<dyn VirtioInterrupt>,
    ) -> Result<(), ActivateError> {
        let _ = (mem, queues, interrupt);
        Err(ActivateError::PlatformUnsupported)
    }
    /// Stop the device (joining its worker) and return to the pre-activation
    /// state. Returns false if the device cannot be re-activated.
    fn reset(&mut self) -> bool;
}

/// Driver-side split-ring builder for tests: descriptor table at `base`,
/// avail ring at `base + 0x1000`, used ring at `base + 0x2000`.
#[cfg(test)]
pub(crate) mod test_utils {
    use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

    pub(crate) const F_NEXT: u16 = 1;
    pub(crate) const F_WRITE: u16 = 2;

    pub(crate) struct TestQueue<'a> {
        mem: &'a GuestMemoryMmap<()>,
        pub desc: u64,
        pub avail: u64,
        pub used: u64,
        pub size: u16,
    }

    impl<'a> TestQueue<'a> {
        /// Rings at `base` (zeroed).
        pub fn new(mem: &'a GuestMemoryMmap<()>, base: u64, size: u16) -> Self {
            mem.write_slice(&[0u8; 0x3000], GuestAddress(base)).unwrap();
            Self::attach(mem, base, size)
        }

        /// A view of rings already at `base` (not zeroed).
        pub fn attach(mem: &'a GuestMemoryMmap<()>, base: u64, size: u16) -> Self {
            TestQueue {
                mem,
                desc: base,
                avail: base + 0x1000,
                used: base + 0x2000,
                size,
            }
        }

        /// Write descriptors `(addr, len, flags)` at table indices
        /// `first..`, chained with NEXT, and publish `first` as a head.
        pub fn add_chain(&self, first: u16, descs: &[(u64, u32, u16)]) {
            for (i, &(addr, len, flags)) in descs.iter().enumerate() {
                let idx = first + i as u16;
                let last = i + 1 == descs.len();
                let flags = if last { flags } else { flags | F_NEXT };
                let next = if last { 0 } else { idx + 1 };
                let a = self.desc + 16 * u64::from(idx);
                self.mem.write_obj(addr, GuestAddress(a)).unwrap();
                self.mem.write_obj(len, GuestAddress(a + 8)).unwrap();
                self.mem.write_obj(flags, GuestAddress(a + 12)).unwrap();
                self.mem.write_obj(next, GuestAddress(a + 14)).unwrap();
            }
            self.publish(first);
        }

        /// Put `head` in the avail ring and bump avail idx.
        pub fn publish(&self, head: u16) {
            let idx: u16 = self.mem.read_obj(GuestAddress(self.avail + 2)).unwrap();
            let slot = self.avail + 4 + 2 * u64::from(idx % self.size);
            self.mem.write_obj(head, GuestAddress(slot)).unwrap();
            self.mem
                .write_obj(idx.wrapping_add(1), GuestAddress(self.avail + 2))
                .unwrap();
        }

        pub fn used_idx(&self) -> u16 {
            self.mem.read_obj(GuestAddress(self.used + 2)).unwrap()
        }

        /// (id, len) of used element `i`.
        pub fn used_elem(&self, i: u16) -> (u32, u32) {
            let a = self.used + 4 + 8 * u64::from(i % self.size);
            (
                self.mem.read_obj(GuestAddress(a)).unwrap(),
                self.mem.read_obj(GuestAddress(a + 4)).unwrap(),
            )
        }
    }
}
