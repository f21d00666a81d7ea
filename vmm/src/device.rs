//! The narrow traits every emulated device implements, with no knowledge of KVM.

use std::sync::{Arc, Mutex};

/// A device on the port-I/O or MMIO bus. `base` is the start of the range the
/// device was registered at and `offset` the offset of the access inside it.
/// Accesses are 1, 2, 4 or 8 bytes; a device fills `data` on read and must
/// tolerate any value on write (the guest controls it).
pub trait BusDevice: Send {
    fn read(&mut self, base: u64, offset: u64, data: &mut [u8]);
    fn write(&mut self, base: u64, offset: u64, data: &[u8]);
}

/// Shared handle to a bus device.
pub type SharedDevice = Arc<Mutex<dyn BusDevice>>;

/// An MSI message as programmed by the guest (address + data).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MsiMessage {
    pub address: u64,
    pub data: u32,
}

/// Interrupt delivery for one device's MSI/MSI-X vectors. Implemented by the
/// VMM on top of KVM GSI routes and irqfds; devices only see this trait.
pub trait MsiSink: Send + Sync {
    /// Install, change or (with `None`) remove the route of `vector`.
    /// Masked vectors are removed; the device keeps the pending bit itself.
    fn set_route(&self, vector: u16, msg: Option<MsiMessage>);
    /// Fire `vector` now. Returns false if the vector has no route.
    fn trigger(&self, vector: u16) -> bool;
}

/// A legacy (edge) interrupt line, e.g. the UART's IRQ 4.
pub trait IrqLine: Send + Sync {
    fn trigger(&self);
}
