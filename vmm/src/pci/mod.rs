//! PCI: configuration space, the root bus with its host bridge, the config
//! access mechanisms (CF8/CFC ports and ECAM), BAR dispatch inside the MMIO
//! windows, and MSI-X.
//!
//! Devices implement [`PciDevice`] and know nothing about KVM or the bus they
//! sit on. The VMM builds one [`PciBus`], adds devices to it (which assigns a
//! slot and programs default BAR addresses, like firmware would) and registers
//! the bus's [`BusDevice`](crate::device::BusDevice) front ends:
//! [`PciConfigIo`] at `PCI_CONFIG_IO_PORT`, [`PciConfigMmio`] at `ECAM_START`
//! and one [`PciMmioWindow`] per BAR window (`MMIO32_*`, `MMIO64_*`).

pub mod bus;
pub mod configuration;
pub mod msix;

use std::fmt;
use std::sync::{Mutex, MutexGuard, PoisonError};

pub use bus::{BarAllocator, PciBus, PciConfigIo, PciConfigMmio, PciMmioWindow, PciRoot};
pub use configuration::{BarKind, PciConfiguration, PciHeader};
pub use msix::MsixConfig;

/// A PCI function as seen from the bus. Register accesses are already
/// decoded: `reg` is the dword index in the 4 KiB (extended) configuration
/// space, `offset` the byte inside that dword (`offset + data.len() <= 4`).
/// Every value comes from the guest and must be validated by the device.
pub trait PciDevice: Send {
    /// Read configuration dword `reg` (0..1024). Out-of-range reads return
    /// all-ones.
    fn config_read(&mut self, reg: usize) -> u32;
    /// Write `data` (1, 2 or 4 bytes) at byte `offset` of dword `reg`.
    fn config_write(&mut self, reg: usize, offset: usize, data: &[u8]);
    /// Read from memory BAR `bar` at `offset` inside the BAR.
    fn bar_read(&mut self, bar: usize, offset: u64, data: &mut [u8]);
    /// Write to memory BAR `bar` at `offset` inside the BAR.
    fn bar_write(&mut self, bar: usize, offset: u64, data: &[u8]);
    /// If the function currently decodes the guest-physical range
    /// `[addr, addr + len)` entirely inside one of its memory BARs (as
    /// programmed in configuration space, with Memory Space Enable set),
    /// return that BAR's index and the offset of `addr` inside it.
    fn decode_bar(&self, addr: u64, len: u64) -> Option<(usize, u64)>;
    /// Function-level reset: device state back to power-on. BAR addresses
    /// are kept (there is no firmware to re-assign them).
    fn reset(&mut self);
}

/// Bus/device/function address of a PCI function on segment 0.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PciBdf {
    pub bus: u8,
    pub device: u8,
    pub function: u8,
}

impl PciBdf {
    /// Build a BDF; `device` is truncated to 5 bits and `function` to 3.
    pub fn new(bus: u8, device: u8, function: u8) -> Self {
        PciBdf {
            bus,
            device: device & 0x1f,
            function: function & 0x7,
        }
    }

    /// The 16-bit routing ID (`bus << 8 | device << 3 | function`), which is
    /// also the virtio-iommu endpoint ID used in the VIOT.
    pub fn to_u16(self) -> u16 {
        (u16::from(self.bus) << 8)
            | (u16::from(self.device & 0x1f) << 3)
            | u16::from(self.function & 7)
    }

    pub fn from_u16(v: u16) -> Self {
        PciBdf::new((v >> 8) as u8, ((v >> 3) & 0x1f) as u8, (v & 7) as u8)
    }
}

impl fmt::Display for PciBdf {
    /// Linux sysfs form, segment 0: `0000:00:03.0`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "0000:{:02x}:{:02x}.{:x}",
            self.bus, self.device, self.function
        )
    }
}

/// Errors building the PCI topology (never caused by guest accesses).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PciError {
    #[error("no free device slot on PCI bus 0")]
    NoFreeSlot,
    #[error("PCI slot {0} is out of range or already in use")]
    SlotInUse(u8),
    #[error("invalid BAR {index}: {reason}")]
    InvalidBar { index: usize, reason: &'static str },
    #[error("no room for a {size:#x}-byte BAR in the {window} window")]
    BarSpaceExhausted { size: u64, window: &'static str },
    #[error("capability of {len} bytes does not fit in configuration space")]
    CapabilitySpaceFull { len: usize },
}

/// Lock a mutex, ignoring poisoning: device state stays usable even if a
/// thread panicked while holding the lock (a panic is a bug we log, not a
/// reason to take the whole VM down from another thread).
pub(crate) fn lock<T: ?Sized>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bdf_round_trip_and_display() {
        let b = PciBdf::new(0, 3, 0);
        assert_eq!(b.to_u16(), 0x18);
        assert_eq!(PciBdf::from_u16(0x18), b);
        assert_eq!(b.to_string(), "0000:00:03.0");
        let b = PciBdf::new(0x12, 0x3f, 0xf);
        assert_eq!(b.device, 0x1f);
        assert_eq!(b.function, 7);
        assert_eq!(PciBdf::from_u16(b.to_u16()), b);
    }
}
