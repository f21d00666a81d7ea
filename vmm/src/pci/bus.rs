//! The root bus (segment 0, bus 0), its host bridge, and the bus-facing
//! front ends: CF8/CFC config ports, ECAM and the BAR windows.

use std::sync::{Arc, Mutex, PoisonError, RwLock};

use super::configuration::{
    BAR0_REG, COMMAND_MEMORY_SPACE, COMMAND_OFFSET, NUM_BARS, PciConfiguration, PciHeader,
};
use super::{PciBdf, PciDevice, PciError, lock};
use crate::device::BusDevice;
use crate::layout;

/// Device slots on bus 0.
pub const PCI_SLOTS: usize = 32;
/// Host bridge identity (Intel vendor so Linux's type-1 sanity check passes
/// even without ACPI; class 0x060000 = host bridge).
pub const HOST_BRIDGE_VENDOR_ID: u16 = 0x8086;
pub const HOST_BRIDGE_DEVICE_ID: u16 = 0x0d57;
pub const HOST_BRIDGE_CLASS: u32 = 0x06_00_00;

/// Shared handle to a PCI function.
pub type SharedPciDevice = Arc<Mutex<dyn PciDevice>>;

/// The host bridge at 00:00.0: a header and nothing else.
pub struct PciRoot {
    config: PciConfiguration,
}

impl PciRoot {
    pub fn new() -> Self {
        PciRoot {
            config: PciConfiguration::new(&PciHeader {
                vendor_id: HOST_BRIDGE_VENDOR_ID,
                device_id: HOST_BRIDGE_DEVICE_ID,
                revision_id: 0,
                class_code: HOST_BRIDGE_CLASS,
                subsystem_vendor_id: 0,
                subsystem_id: 0,
            }),
        }
    }
}

impl Default for PciRoot {
    fn default() -> Self {
        Self::new()
    }
}

impl PciDevice for PciRoot {
    fn config_read(&mut self, reg: usize) -> u32 {
        self.config.read_reg(reg)
    }

    fn config_write(&mut self, reg: usize, offset: usize, data: &[u8]) {
        self.config.write_reg(reg, offset, data);
    }

    fn bar_read(&mut self, _bar: usize, _offset: u64, data: &mut [u8]) {
        data.fill(0xff);
    }

    fn bar_write(&mut self, _bar: usize, _offset: u64, _data: &[u8]) {}

    fn decode_bar(&self, _addr: u64, _len: u64) -> Option<(usize, u64)> {
        None
    }

    fn reset(&mut self) {
        self.config.reset();
    }
}

#[derive(Clone, Copy, Debug)]
struct Window {
    name: &'static str,
    next: u64,
    end: u64,
}

impl Window {
    fn allocate(&mut self, size: u64) -> Option<u64> {
        let addr = self.next.checked_next_multiple_of(size)?;
        let end = addr.checked_add(size)?;
        if end > self.end {
            return None;
        }
        self.next = end;
        Some(addr)
    }
}

/// Bump allocator for default BAR addresses inside the two MMIO windows.
/// 64-bit BARs go to the 64-bit window (falling back to the 32-bit one),
/// 32-bit BARs to the 32-bit window; every BAR is naturally aligned.
#[derive(Clone, Debug)]
pub struct BarAllocator {
    mmio32: Window,
    mmio64: Window,
}

impl BarAllocator {
    /// Windows as `(start, size)`.
    pub fn new(mmio32: (u64, u64), mmio64: (u64, u64)) -> Self {
        let w = |name, (start, size): (u64, u64)| Window {
            name,
            next: start,
            end: start.saturating_add(size),
        };
        BarAllocator {
            mmio32: w("MMIO32", mmio32),
            mmio64: w("MMIO64", mmio64),
        }
    }

    /// Allocate `size` bytes (a power of two).
    pub fn allocate(&mut self, size: u64, is64: bool) -> Result<u64, PciError> {
        if !size.is_power_of_two() {
            return Err(PciError::InvalidBar {
                index: 0,
                reason: "size not a power of two",
            });
        }
        if is64 && let Some(a) = self.mmio64.allocate(size) {
            return Ok(a);
        }
        self.mmio32
            .allocate(size)
            .ok_or(PciError::BarSpaceExhausted {
                size,
                window: if is64 {
                    self.mmio64.name
                } else {
                    self.mmio32.name
                },
            })
    }
}

impl Default for BarAllocator {
    fn default() -> Self {
        BarAllocator::new(
            (layout::MMIO32_START, layout::MMIO32_SIZE),
            (layout::MMIO64_START, layout::MMIO64_SIZE),
        )
    }
}

/// Bus 0 of segment 0: up to 32 single-function devices, slot 0 being the
/// host bridge. Shared (as `Arc<PciBus>`) by the config-space front ends and
/// the BAR windows.
pub struct PciBus {
    slots: RwLock<Vec<Option<SharedPciDevice>>>,
    allocator: Mutex<BarAllocator>,
}

impl PciBus {
    /// A bus with the host bridge at 00:00.0 and BARs allocated from the
    /// layout's MMIO32/MMIO64 windows.
    pub fn new() -> Self {
        Self::with_allocator(BarAllocator::default())
    }

    pub fn with_allocator(allocator: BarAllocator) -> Self {
        let mut slots: Vec<Option<SharedPciDevice>> = vec![None; PCI_SLOTS];
        slots[0] = Some(Arc::new(Mutex::new(PciRoot::new())));
        PciBus {
            slots: RwLock::new(slots),
            allocator: Mutex::new(allocator),
        }
    }

    /// Add `dev` in the first free slot. Its BARs get default addresses
    /// (programmed into its config space, Memory Space Enable set) so the
    /// guest can keep them.
    pub fn add_device(&self, dev: SharedPciDevice) -> Result<PciBdf, PciError> {
        let slot = {
            let slots = self.slots.read().unwrap_or_else(PoisonError::into_inner);
            slots
                .iter()
                .position(Option::is_none)
                .ok_or(PciError::NoFreeSlot)?
        };
        self.add_device_at(slot as u8, dev)
    }

    /// Add `dev` at device number `slot` (1..32).
    pub fn add_device_at(&self, slot: u8, dev: SharedPciDevice) -> Result<PciBdf, PciError> {
        let idx = usize::from(slot);
        {
            let slots = self.slots.read().unwrap_or_else(PoisonError::into_inner);
            if slots.get(idx).is_none_or(Option::is_some) {
                return Err(PciError::SlotInUse(slot));
            }
        }
        {
            let mut alloc = lock(&self.allocator);
            assign_bars(&mut *lock(&dev), &mut alloc)?;
        }
        let mut slots = self.slots.write().unwrap_or_else(PoisonError::into_inner);
        match slots.get_mut(idx) {
            Some(s @ None) => *s = Some(dev),
            _ => return Err(PciError::SlotInUse(slot)),
        }
        Ok(PciBdf::new(0, slot, 0))
    }

    /// The function at `bdf`, if present.
    pub fn device(&self, bdf: PciBdf) -> Option<SharedPciDevice> {
        if bdf.bus != 0 || bdf.function != 0 {
            return None;
        }
        let slots = self.slots.read().unwrap_or_else(PoisonError::into_inner);
        slots.get(usize::from(bdf.device))?.clone()
    }

    /// All present functions, host bridge included.
    pub fn devices(&self) -> Vec<(PciBdf, SharedPciDevice)> {
        let slots = self.slots.read().unwrap_or_else(PoisonError::into_inner);
        slots
            .iter()
            .enumerate()
            .filter_map(|(i, d)| Some((PciBdf::new(0, i as u8, 0), d.clone()?)))
            .collect()
    }

    /// Read config dword `reg` of `bdf`; absent functions read all-ones.
    pub fn config_read(&self, bdf: PciBdf, reg: usize) -> u32 {
        match self.device(bdf) {
            Some(d) => lock(&d).config_read(reg),
            None => u32::MAX,
        }
    }

    /// Write config bytes; writes to absent functions are dropped.
    pub fn config_write(&self, bdf: PciBdf, reg: usize, offset: usize, data: &[u8]) {
        if !matches!(data.len(), 1 | 2 | 4) || offset >= 4 || offset + data.len() > 4 {
            return;
        }
        if let Some(d) = self.device(bdf) {
            lock(&d).config_write(reg, offset, data);
        }
    }

    /// Dispatch a memory read at guest-physical `addr` to the BAR that
    /// decodes it now. Returns false (and fills all-ones) if none does.
    pub fn mmio_read(&self, addr: u64, data: &mut [u8]) -> bool {
        let slots = self.slots.read().unwrap_or_else(PoisonError::into_inner);
        for d in slots.iter().flatten() {
            let mut d = lock(d);
            if let Some((bar, off)) = d.decode_bar(addr, data.len() as u64) {
                d.bar_read(bar, off, data);
                return true;
            }
        }
        data.fill(0xff);
        false
    }

    /// Dispatch a memory write; returns false if no BAR decodes `addr`.
    pub fn mmio_write(&self, addr: u64, data: &[u8]) -> bool {
        let slots = self.slots.read().unwrap_or_else(PoisonError::into_inner);
        for d in slots.iter().flatten() {
            let mut d = lock(d);
            if let Some((bar, off)) = d.decode_bar(addr, data.len() as u64) {
                d.bar_write(bar, off, data);
                return true;
            }
        }
        false
    }

    /// Reset every function (as on a platform reset) and re-enable memory
    /// decoding for functions with BARs, as firmware would.
    pub fn reset(&self) {
        for (_, d) in self.devices() {
            let mut d = lock(&d);
            d.reset();
            if has_bars(&mut *d) {
                enable_memory(&mut *d);
            }
        }
    }
}

impl Default for PciBus {
    fn default() -> Self {
        Self::new()
    }
}

fn read_bar_mask(dev: &mut dyn PciDevice, reg: usize) -> u32 {
    let orig = dev.config_read(reg);
    dev.config_write(reg, 0, &u32::MAX.to_le_bytes());
    let mask = dev.config_read(reg);
    dev.config_write(reg, 0, &orig.to_le_bytes());
    mask
}

fn has_bars(dev: &mut dyn PciDevice) -> bool {
    (0..NUM_BARS).any(|i| dev.config_read(BAR0_REG + i) != 0)
}

fn enable_memory(dev: &mut dyn PciDevice) {
    let cmd = (dev.config_read(COMMAND_OFFSET / 4) as u16) | COMMAND_MEMORY_SPACE;
    dev.config_write(COMMAND_OFFSET / 4, 0, &cmd.to_le_bytes());
}

/// Size each BAR through config space (like firmware), give it an address
/// and turn on memory decoding. I/O BARs are left unassigned.
fn assign_bars(dev: &mut dyn PciDevice, alloc: &mut BarAllocator) -> Result<(), PciError> {
    let mut assigned = false;
    let mut i = 0;
    while i < NUM_BARS {
        let reg = BAR0_REG + i;
        let low = read_bar_mask(dev, reg);
        if low == 0 || low & 1 != 0 {
            i += 1;
            continue;
        }
        let is64 = (low >> 1) & 3 == 2;
        if is64 && i + 1 >= NUM_BARS {
            return Err(PciError::InvalidBar {
                index: i,
                reason: "64-bit BAR in the last slot",
            });
        }
        let high = if is64 {
            u64::from(read_bar_mask(dev, reg + 1))
        } else {
            0xffff_ffff
        };
        let mask = (high << 32) | u64::from(low & !0xf);
        let size = (!mask).wrapping_add(1);
        if size == 0 || !size.is_power_of_two() {
            return Err(PciError::InvalidBar {
                index: i,
                reason: "inconsistent size mask",
            });
        }
        let addr = alloc.allocate(size, is64)?;
        dev.config_write(reg, 0, &(addr as u32).to_le_bytes());
        if is64 {
            dev.config_write(reg + 1, 0, &((addr >> 32) as u32).to_le_bytes());
        }
        assigned = true;
        i += if is64 { 2 } else { 1 };
    }
    if assigned {
        enable_memory(dev);
    }
    Ok(())
}

/// Config mechanism #1: address latch at 0xcf8, data at 0xcfc..0xcff.
/// Register at `PCI_CONFIG_IO_PORT` with length `PCI_CONFIG_IO_SIZE`.
pub struct PciConfigIo {
    bus: Arc<PciBus>,
    address: u32,
}

impl PciConfigIo {
    pub fn new(bus: Arc<PciBus>) -> Self {
        PciConfigIo { bus, address: 0 }
    }

    /// Decode the latched address: (bdf, dword register) if enabled.
    fn target(&self) -> Option<(PciBdf, usize)> {
        if self.address & 0x8000_0000 == 0 {
            return None;
        }
        let bus = (self.address >> 16) as u8;
        let dev = (self.address >> 11) as u8;
        let func = (self.address >> 8) as u8;
        // Register number in bits 7:2; extended bits 27:24 are ignored.
        let reg = ((self.address >> 2) & 0x3f) as usize;
        Some((PciBdf::new(bus, dev, func), reg))
    }
}

impl BusDevice for PciConfigIo {
    fn read(&mut self, _base: u64, offset: u64, data: &mut [u8]) {
        let len = data.len() as u64;
        let value = match offset {
            0..=3 if offset + len <= 4 => Some((self.address, offset)),
            4..=7 if offset - 4 + len <= 4 => self
                .target()
                .map(|(bdf, reg)| (self.bus.config_read(bdf, reg), offset - 4)),
            _ => None,
        };
        match value {
            Some((v, shift)) => {
                for (i, b) in data.iter_mut().enumerate() {
                    *b = (v >> (8 * (shift as usize + i))) as u8;
                }
            }
            None => data.fill(0xff),
        }
    }

    fn write(&mut self, _base: u64, offset: u64, data: &[u8]) {
        match offset {
            // Only full dword writes latch the address (Linux probes with a
            // byte write to 0xcfb that must not disturb it).
            0 if data.len() == 4 => {
                self.address = u32::from_le_bytes([data[0], data[1], data[2], data[3]]) & !3;
            }
            4..=7 if offset - 4 + data.len() as u64 <= 4 => {
                if let Some((bdf, reg)) = self.target() {
                    self.bus.config_write(bdf, reg, (offset - 4) as usize, data);
                }
            }
            _ => {}
        }
    }
}

/// ECAM (MMCONFIG): `bus << 20 | dev << 15 | fn << 12 | reg`. Register at
/// `ECAM_START` with length `ECAM_SIZE`.
pub struct PciConfigMmio {
    bus: Arc<PciBus>,
}

impl PciConfigMmio {
    pub fn new(bus: Arc<PciBus>) -> Self {
        PciConfigMmio { bus }
    }

    fn decode(offset: u64, len: usize) -> Option<(PciBdf, usize, usize)> {
        let sub = (offset & 3) as usize;
        if !matches!(len, 1 | 2 | 4) || sub + len > 4 {
            return None;
        }
        let bus = u8::try_from(offset >> 20).ok()?;
        let dev = ((offset >> 15) & 0x1f) as u8;
        let func = ((offset >> 12) & 7) as u8;
        let reg = ((offset & 0xfff) >> 2) as usize;
        Some((PciBdf::new(bus, dev, func), reg, sub))
    }
}

impl BusDevice for PciConfigMmio {
    fn read(&mut self, _base: u64, offset: u64, data: &mut [u8]) {
        match Self::decode(offset, data.len()) {
            Some((bdf, reg, sub)) => {
                let v = self.bus.config_read(bdf, reg);
                for (i, b) in data.iter_mut().enumerate() {
                    *b = (v >> (8 * (sub + i))) as u8;
                }
            }
            None => data.fill(0xff),
        }
    }

    fn write(&mut self, _base: u64, offset: u64, data: &[u8]) {
        if let Some((bdf, reg, sub)) = Self::decode(offset, data.len()) {
            self.bus.config_write(bdf, reg, sub, data);
        }
    }
}

/// One BAR window (MMIO32 or MMIO64): forwards each access to the function
/// whose BAR currently contains it, decoded from config space at access
/// time, so the guest may move BARs freely. Register one per window.
pub struct PciMmioWindow {
    bus: Arc<PciBus>,
}

impl PciMmioWindow {
    pub fn new(bus: Arc<PciBus>) -> Self {
        PciMmioWindow { bus }
    }
}

impl BusDevice for PciMmioWindow {
    fn read(&mut self, base: u64, offset: u64, data: &mut [u8]) {
        match base.checked_add(offset) {
            Some(addr) => {
                self.bus.mmio_read(addr, data);
            }
            None => data.fill(0xff),
        }
    }

    fn write(&mut self, base: u64, offset: u64, data: &[u8]) {
        if let Some(addr) = base.checked_add(offset) {
            self.bus.mmio_write(addr, data);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pci::configuration::BarKind;

    /// A device with a 32-bit 4 KiB BAR 0 and a 64-bit 16 KiB BAR 2 backed
    /// by RAM-like storage.
    struct TestDev {
        config: PciConfiguration,
        bar0: Vec<u8>,
        bar2: Vec<u8>,
    }

    impl TestDev {
        fn new() -> Self {
            let mut config = PciConfiguration::new(&PciHeader {
                vendor_id: 0x1234,
                device_id: 0x5678,
                revision_id: 2,
                class_code: 0xff0000,
                subsystem_vendor_id: 0,
                subsystem_id: 0,
            });
            config
                .add_bar(
                    0,
                    0x1000,
                    BarKind::Memory32 {
                        prefetchable: false,
                    },
                )
                .unwrap();
            config
                .add_bar(
                    2,
                    0x4000,
                    BarKind::Memory64 {
                        prefetchable: false,
                    },
                )
                .unwrap();
            TestDev {
                config,
                bar0: vec![0; 0x1000],
                bar2: vec![0; 0x4000],
            }
        }

        fn bar(&mut self, bar: usize) -> &mut Vec<u8> {
            if bar == 0 {
                &mut self.bar0
            } else {
                &mut self.bar2
            }
        }
    }

    impl PciDevice for TestDev {
        fn config_read(&mut self, reg: usize) -> u32 {
            self.config.read_reg(reg)
        }
        fn config_write(&mut self, reg: usize, offset: usize, data: &[u8]) {
            self.config.write_reg(reg, offset, data);
        }
        fn bar_read(&mut self, bar: usize, offset: u64, data: &mut [u8]) {
            let o = offset as usize;
            data.copy_from_slice(&self.bar(bar)[o..o + data.len()]);
        }
        fn bar_write(&mut self, bar: usize, offset: u64, data: &[u8]) {
            let o = offset as usize;
            self.bar(bar)[o..o + data.len()].copy_from_slice(data);
        }
        fn decode_bar(&self, addr: u64, len: u64) -> Option<(usize, u64)> {
            self.config.decode_bar(addr, len)
        }
        fn reset(&mut self) {
            self.config.reset();
        }
    }

    fn cf8(dev: u8, reg: u8) -> [u8; 4] {
        (0x8000_0000u32 | (u32::from(dev) << 11) | u32::from(reg)).to_le_bytes()
    }

    fn io_read(io: &mut PciConfigIo, port_off: u64, len: usize) -> u32 {
        let mut d = vec![0u8; len];
        io.read(0xcf8, port_off, &mut d);
        d.iter().rev().fold(0, |acc, b| (acc << 8) | u32::from(*b))
    }

    fn ecam_read(m: &mut PciConfigMmio, dev: u64, reg: u64, len: usize) -> u32 {
        let mut d = vec![0u8; len];
        m.read(layout::ECAM_START, (dev << 15) | reg, &mut d);
        d.iter().rev().fold(0, |acc, b| (acc << 8) | u32::from(*b))
    }

    fn setup() -> (Arc<PciBus>, PciBdf) {
        let bus = Arc::new(PciBus::new());
        let bdf = bus
            .add_device(Arc::new(Mutex::new(TestDev::new())))
            .unwrap();
        (bus, bdf)
    }

    #[test]
    fn cf8_cfc_access() {
        let (bus, bdf) = setup();
        assert_eq!(bdf, PciBdf::new(0, 1, 0));
        let mut io = PciConfigIo::new(bus);
        // Linux's pci_check_type1 probe.
        io.write(0xcf8, 3, &[1]);
        io.write(0xcf8, 0, &0x8000_0000u32.to_le_bytes());
        assert_eq!(io_read(&mut io, 0, 4), 0x8000_0000);
        // Host bridge ids and class.
        assert_eq!(io_read(&mut io, 4, 4), 0x0d57_8086);
        io.write(0xcf8, 0, &cf8(0, 8));
        assert_eq!(io_read(&mut io, 4, 4) >> 8, HOST_BRIDGE_CLASS);
        // Device 1, sub-dword reads.
        io.write(0xcf8, 0, &cf8(1, 0));
        assert_eq!(io_read(&mut io, 4, 2), 0x1234);
        assert_eq!(io_read(&mut io, 6, 2), 0x5678);
        assert_eq!(io_read(&mut io, 7, 1), 0x56);
        // Misaligned beyond the data port: all-ones.
        assert_eq!(io_read(&mut io, 6, 4), u32::MAX);
        // Absent slot and function.
        io.write(0xcf8, 0, &cf8(5, 0));
        assert_eq!(io_read(&mut io, 4, 4), u32::MAX);
        io.write(
            0xcf8,
            0,
            &(0x8000_0000u32 | (1 << 11) | (1 << 8)).to_le_bytes(),
        );
        assert_eq!(io_read(&mut io, 4, 4), u32::MAX);
        // Disabled address: all-ones, writes dropped.
        io.write(0xcf8, 0, &0x0000_0800u32.to_le_bytes());
        assert_eq!(io_read(&mut io, 4, 4), u32::MAX);
        // Byte write to the command register through 0xcfd.
        io.write(0xcf8, 0, &cf8(1, 4));
        io.write(0xcf8, 4, &[0x06]);
        assert_eq!(io_read(&mut io, 4, 2), 0x06);
    }

    #[test]
    fn ecam_access() {
        let (bus, _) = setup();
        let mut m = PciConfigMmio::new(bus);
        assert_eq!(ecam_read(&mut m, 0, 0, 4), 0x0d57_8086);
        assert_eq!(ecam_read(&mut m, 1, 0, 4), 0x5678_1234);
        assert_eq!(ecam_read(&mut m, 1, 2, 2), 0x5678);
        assert_eq!(ecam_read(&mut m, 1, 8, 1), 2);
        assert_eq!(ecam_read(&mut m, 9, 0, 4), u32::MAX);
        // Function 3 of slot 1: absent.
        assert_eq!(ecam_read(&mut m, 1, 3 << 12, 4), u32::MAX);
        // Misaligned dword: all-ones.
        assert_eq!(ecam_read(&mut m, 1, 1, 4), u32::MAX);
        // Extended space of a present device reads zero.
        assert_eq!(ecam_read(&mut m, 1, 0x100, 4), 0);
        // Beyond bus 255.
        let mut d = [0u8; 4];
        m.read(0, 1 << 28, &mut d);
        assert_eq!(d, [0xff; 4]);
        // 8-byte accesses are rejected.
        let mut d = [0u8; 8];
        m.read(0, 8 << 15, &mut d);
        assert_eq!(d, [0xff; 8]);
    }

    #[test]
    fn default_bars_and_moving_them() {
        let (bus, _) = setup();
        let mut ecam = PciConfigMmio::new(bus.clone());
        let mut w32 = PciMmioWindow::new(bus.clone());
        let mut w64 = PciMmioWindow::new(bus.clone());
        // Allocated by "firmware": BAR0 in MMIO32, BAR2 in MMIO64, enabled.
        let bar0 = ecam_read(&mut ecam, 1, 0x10, 4);
        assert_eq!(u64::from(bar0), layout::MMIO32_START);
        let bar2 = u64::from(ecam_read(&mut ecam, 1, 0x18, 4))
            | (u64::from(ecam_read(&mut ecam, 1, 0x1c, 4)) << 32);
        assert_eq!(bar2 & !0xf, layout::MMIO64_START);
        assert_eq!(bar2 & 0xf, 0b0100);
        assert_eq!(ecam_read(&mut ecam, 1, 4, 2) & 2, 2);

        let (b32, b64) = (layout::MMIO32_START, layout::MMIO64_START);
        w32.write(b32, 0x10, &[1, 2, 3, 4]);
        let mut d = [0u8; 4];
        w32.read(b32, 0x10, &mut d);
        assert_eq!(d, [1, 2, 3, 4]);
        w64.write(b64, 0x3ffc, &[9, 9, 9, 9]);
        w64.read(b64, 0x3ffc, &mut d);
        assert_eq!(d, [9; 4]);
        // Straddling the BAR end: no device.
        w64.read(b64, 0x3ffe, &mut d);
        assert_eq!(d, [0xff; 4]);

        // Sizing through ECAM (decode off, like Linux).
        let ecam_write = |m: &mut PciConfigMmio, reg: u64, v: u32| {
            m.write(layout::ECAM_START, (1 << 15) | reg, &v.to_le_bytes());
        };
        ecam_write(&mut ecam, 4, 0);
        ecam_write(&mut ecam, 0x10, u32::MAX);
        assert_eq!(ecam_read(&mut ecam, 1, 0x10, 4), 0xffff_f000);
        ecam_write(&mut ecam, 0x18, u32::MAX);
        ecam_write(&mut ecam, 0x1c, u32::MAX);
        assert_eq!(ecam_read(&mut ecam, 1, 0x18, 4), 0xffff_c004);
        assert_eq!(ecam_read(&mut ecam, 1, 0x1c, 4), u32::MAX);
        // Decode is off: nothing answers at the old address.
        w32.read(b32, 0x10, &mut d);
        assert_eq!(d, [0xff; 4]);

        // Move BAR0 up 1 MiB and BAR2 to a new 64-bit address, re-enable.
        ecam_write(&mut ecam, 0x10, (b32 + 0x10_0000) as u32);
        ecam_write(&mut ecam, 0x18, 0x8000);
        ecam_write(&mut ecam, 0x1c, (b64 >> 32) as u32 + 1);
        ecam_write(&mut ecam, 4, 2);
        w32.read(b32, 0x10, &mut d);
        assert_eq!(d, [0xff; 4]);
        w32.read(b32 + 0x10_0000, 0x10, &mut d);
        assert_eq!(d, [1, 2, 3, 4]);
        let new64 = b64 + (1 << 32) + 0x8000;
        assert!(bus.mmio_read(new64 + 0x3ffc, &mut d));
        assert_eq!(d, [9; 4]);
        assert!(!bus.mmio_write(b64 + 0x3ffc, &d));
    }

    #[test]
    fn slots_and_allocator() {
        let bus = PciBus::with_allocator(BarAllocator::new((0x1000_0000, 0x2000), (0, 0)));
        // Host bridge occupies slot 0.
        assert_eq!(
            bus.add_device_at(0, Arc::new(Mutex::new(PciRoot::new()))),
            Err(PciError::SlotInUse(0))
        );
        assert_eq!(
            bus.add_device_at(32, Arc::new(Mutex::new(PciRoot::new()))),
            Err(PciError::SlotInUse(32))
        );
        // Both BARs fall back to the 32-bit window; the second device has
        // no room left.
        let bdf = bus.add_device_at(7, Arc::new(Mutex::new(TestDev::new())));
        assert!(bdf.is_err());
        let bus = PciBus::with_allocator(BarAllocator::new((0x1000_0000, 0x8000), (0, 0)));
        let bdf = bus
            .add_device_at(7, Arc::new(Mutex::new(TestDev::new())))
            .unwrap();
        assert_eq!(bdf, PciBdf::new(0, 7, 0));
        assert_eq!(bus.config_read(bdf, 4), 0x1000_0000);
        assert_eq!(bus.config_read(bdf, 6), 0x1000_4004);
        assert_eq!(bus.config_read(bdf, 7), 0);
        for _ in 2..PCI_SLOTS {
            bus.add_device(Arc::new(Mutex::new(PciRoot::new())))
                .unwrap();
        }
        assert_eq!(
            bus.add_device(Arc::new(Mutex::new(PciRoot::new()))),
            Err(PciError::NoFreeSlot)
        );
        assert_eq!(bus.devices().len(), PCI_SLOTS);
        // Malformed host-side calls are dropped, not panics.
        bus.config_write(bdf, 1, usize::MAX, &[1]);
        bus.config_write(bdf, usize::MAX, 0, &[1]);
        assert_eq!(bus.config_read(bdf, usize::MAX), u32::MAX);
        // Reset keeps BARs and re-enables decoding.
        bus.config_write(bdf, 1, 0, &[0]);
        bus.reset();
        assert_eq!(bus.config_read(bdf, 1) & 2, 2);
        assert_eq!(bus.config_read(bdf, 4), 0x1000_0000);
    }
}
