//! Type-0 configuration header that devices embed.
//!
//! The space is 4 KiB (1024 dwords, ECAM extended space). Every byte has a
//! writable mask: a guest write changes only the writable bits, so BAR sizing
//! (write all-ones, read back the size mask) falls out of the masks without
//! special cases, and read-only fields (ids, capability list, BAR type bits)
//! can't be changed by the guest.

use super::PciError;

/// Number of BAR registers in a type-0 header.
pub const NUM_BARS: usize = 6;
/// Dwords in the (extended) configuration space of one function.
pub const CONFIG_SPACE_DWORDS: usize = 1024;
/// Size of the conventional (non-extended) configuration space in bytes.
pub const CONFIG_SPACE_LEGACY_SIZE: usize = 256;

pub const VENDOR_ID_OFFSET: usize = 0x00;
pub const DEVICE_ID_OFFSET: usize = 0x02;
pub const COMMAND_OFFSET: usize = 0x04;
pub const STATUS_OFFSET: usize = 0x06;
pub const REVISION_OFFSET: usize = 0x08;
pub const CACHE_LINE_SIZE_OFFSET: usize = 0x0c;
pub const LATENCY_TIMER_OFFSET: usize = 0x0d;
pub const HEADER_TYPE_OFFSET: usize = 0x0e;
pub const BAR0_OFFSET: usize = 0x10;
/// Dword index of BAR 0.
pub const BAR0_REG: usize = BAR0_OFFSET / 4;
pub const SUBSYSTEM_VENDOR_ID_OFFSET: usize = 0x2c;
pub const SUBSYSTEM_ID_OFFSET: usize = 0x2e;
pub const CAPABILITY_POINTER_OFFSET: usize = 0x34;
pub const INTERRUPT_LINE_OFFSET: usize = 0x3c;
/// First byte available to capabilities.
pub const FIRST_CAPABILITY_OFFSET: usize = 0x40;

pub const COMMAND_IO_SPACE: u16 = 1 << 0;
pub const COMMAND_MEMORY_SPACE: u16 = 1 << 1;
pub const COMMAND_BUS_MASTER: u16 = 1 << 2;
pub const COMMAND_PARITY_ERROR_RESPONSE: u16 = 1 << 6;
pub const COMMAND_SERR: u16 = 1 << 8;
pub const COMMAND_INTX_DISABLE: u16 = 1 << 10;
/// Command bits the guest may change.
const COMMAND_WRITABLE: u16 = COMMAND_IO_SPACE
    | COMMAND_MEMORY_SPACE
    | COMMAND_BUS_MASTER
    | COMMAND_PARITY_ERROR_RESPONSE
    | COMMAND_SERR
    | COMMAND_INTX_DISABLE;
pub const STATUS_CAPABILITIES_LIST: u16 = 1 << 4;

/// Memory BAR low-dword type bits.
const BAR_MEM_TYPE_64: u32 = 0b10 << 1;
const BAR_MEM_PREFETCHABLE: u32 = 1 << 3;
const BAR_MEM_ADDRESS_MASK: u32 = !0xf;

/// Identity of a function, written into the read-only header fields.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PciHeader {
    pub vendor_id: u16,
    pub device_id: u16,
    pub revision_id: u8,
    /// Class code, sub-class and programming interface: `0xCCSSPP`.
    pub class_code: u32,
    pub subsystem_vendor_id: u16,
    pub subsystem_id: u16,
}

/// Kind of a memory BAR (I/O BARs are not supported by the lab).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BarKind {
    Memory32 {
        prefetchable: bool,
    },
    /// Occupies BAR `index` and `index + 1`.
    Memory64 {
        prefetchable: bool,
    },
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum BarSlot {
    #[default]
    Unused,
    Memory {
        size: u64,
        is64: bool,
    },
    /// Upper dword of the 64-bit BAR in the previous slot.
    Upper,
}

/// Configuration space of one type-0 function.
#[derive(Clone, Debug)]
pub struct PciConfiguration {
    regs: Box<[u32; CONFIG_SPACE_DWORDS]>,
    wmask: Box<[u32; CONFIG_SPACE_DWORDS]>,
    bars: [BarSlot; NUM_BARS],
    last_capability: Option<usize>,
    next_capability: usize,
}

impl PciConfiguration {
    pub fn new(header: &PciHeader) -> Self {
        let mut c = PciConfiguration {
            regs: Box::new([0; CONFIG_SPACE_DWORDS]),
            wmask: Box::new([0; CONFIG_SPACE_DWORDS]),
            bars: [BarSlot::Unused; NUM_BARS],
            last_capability: None,
            next_capability: FIRST_CAPABILITY_OFFSET,
        };
        c.write_u16(VENDOR_ID_OFFSET, header.vendor_id);
        c.write_u16(DEVICE_ID_OFFSET, header.device_id);
        c.write_u8(REVISION_OFFSET, header.revision_id);
        c.write_u8(REVISION_OFFSET + 1, header.class_code as u8);
        c.write_u8(REVISION_OFFSET + 2, (header.class_code >> 8) as u8);
        c.write_u8(REVISION_OFFSET + 3, (header.class_code >> 16) as u8);
        c.write_u8(HEADER_TYPE_OFFSET, 0);
        c.write_u16(SUBSYSTEM_VENDOR_ID_OFFSET, header.subsystem_vendor_id);
        c.write_u16(SUBSYSTEM_ID_OFFSET, header.subsystem_id);
        c.set_writable_mask(COMMAND_OFFSET, &COMMAND_WRITABLE.to_le_bytes());
        c.set_writable_mask(CACHE_LINE_SIZE_OFFSET, &[0xff, 0xff]);
        c.set_writable_mask(INTERRUPT_LINE_OFFSET, &[0xff]);
        c
    }

    /// Declare memory BAR `index` of `size` bytes (a power of two, at least
    /// 16; at most 2 GiB for a 32-bit BAR).
    pub fn add_bar(&mut self, index: usize, size: u64, kind: BarKind) -> Result<(), PciError> {
        let bad = |reason| Err(PciError::InvalidBar { index, reason });
        let is64 = matches!(kind, BarKind::Memory64 { .. });
        let prefetchable = match kind {
            BarKind::Memory32 { prefetchable } | BarKind::Memory64 { prefetchable } => prefetchable,
        };
        if index >= NUM_BARS || (is64 && index + 1 >= NUM_BARS) {
            return bad("index out of range");
        }
        if size < 16 || !size.is_power_of_two() {
            return bad("size must be a power of two of at least 16 bytes");
        }
        if !is64 && size > 1 << 31 {
            return bad("32-bit BAR larger than 2 GiB");
        }
        if self.bars[index] != BarSlot::Unused || (is64 && self.bars[index + 1] != BarSlot::Unused)
        {
            return bad("BAR already in use");
        }
        let mask = !(size - 1);
        let mut low = 0;
        if is64 {
            low |= BAR_MEM_TYPE_64;
        }
        if prefetchable {
            low |= BAR_MEM_PREFETCHABLE;
        }
        let reg = BAR0_REG + index;
        self.regs[reg] = low;
        self.wmask[reg] = (mask as u32) & BAR_MEM_ADDRESS_MASK;
        self.bars[index] = BarSlot::Memory { size, is64 };
        if is64 {
            self.regs[reg + 1] = 0;
            self.wmask[reg + 1] = (mask >> 32) as u32;
            self.bars[index + 1] = BarSlot::Upper;
        }
        Ok(())
    }

    /// Size of memory BAR `index`, if declared (`None` for upper halves).
    pub fn bar_size(&self, index: usize) -> Option<u64> {
        match self.bars.get(index)? {
            BarSlot::Memory { size, .. } => Some(*size),
            _ => None,
        }
    }

    /// Address currently programmed in memory BAR `index`.
    pub fn bar_address(&self, index: usize) -> Option<u64> {
        let reg = BAR0_REG + index;
        match self.bars.get(index)? {
            BarSlot::Memory { is64, .. } => {
                let low = u64::from(self.regs[reg] & BAR_MEM_ADDRESS_MASK);
                let high = if *is64 {
                    u64::from(self.regs[reg + 1])
                } else {
                    0
                };
                Some((high << 32) | low)
            }
            _ => None,
        }
    }

    /// Program BAR `index` directly (host side, e.g. the BAR allocator).
    /// The address must be aligned to the BAR size and fit the BAR type.
    pub fn set_bar_address(&mut self, index: usize, addr: u64) -> Result<(), PciError> {
        let (size, is64) = match self.bars.get(index) {
            Some(BarSlot::Memory { size, is64 }) => (*size, *is64),
            _ => {
                return Err(PciError::InvalidBar {
                    index,
                    reason: "not a memory BAR",
                });
            }
        };
        if addr & (size - 1) != 0 || (!is64 && addr > u64::from(u32::MAX)) {
            return Err(PciError::InvalidBar {
                index,
                reason: "address misaligned or out of range",
            });
        }
        let reg = BAR0_REG + index;
        self.regs[reg] =
            (self.regs[reg] & !BAR_MEM_ADDRESS_MASK) | (addr as u32 & BAR_MEM_ADDRESS_MASK);
        if is64 {
            self.regs[reg + 1] = (addr >> 32) as u32;
        }
        Ok(())
    }

    /// Which BAR decodes `[addr, addr + len)` right now: only when Memory
    /// Space Enable is set, and only if the access lies wholly inside it.
    pub fn decode_bar(&self, addr: u64, len: u64) -> Option<(usize, u64)> {
        if !self.memory_space_enabled() {
            return None;
        }
        let end = addr.checked_add(len)?;
        (0..NUM_BARS).find_map(|i| {
            let size = self.bar_size(i)?;
            let base = self.bar_address(i)?;
            // An unprogrammed BAR (address 0) never decodes.
            if base == 0 {
                return None;
            }
            let bar_end = base.checked_add(size)?;
            (addr >= base && end <= bar_end).then(|| (i, addr - base))
        })
    }

    /// Append a capability. `body[0]` is the capability ID; `body[1]` (the
    /// next pointer) is filled in here. All bytes start read-only; use
    /// [`set_writable_mask`](Self::set_writable_mask) for writable fields.
    /// Returns the capability's byte offset.
    pub fn add_capability(&mut self, body: &[u8]) -> Result<usize, PciError> {
        let len = body.len();
        let offset = self.next_capability.next_multiple_of(4);
        if len < 2 || offset + len > CONFIG_SPACE_LEGACY_SIZE {
            return Err(PciError::CapabilitySpaceFull { len });
        }
        for (i, b) in body.iter().enumerate() {
            self.write_u8(offset + i, *b);
        }
        self.write_u8(offset + 1, 0);
        match self.last_capability {
            Some(prev) => self.write_u8(prev + 1, offset as u8),
            None => self.write_u8(CAPABILITY_POINTER_OFFSET, offset as u8),
        }
        let status = self.read_u16(STATUS_OFFSET) | STATUS_CAPABILITIES_LIST;
        self.write_u16(STATUS_OFFSET, status);
        self.last_capability = Some(offset);
        self.next_capability = offset + len;
        Ok(offset)
    }

    /// Make the bits set in `mask` writable by the guest, starting at byte
    /// `offset`. Bytes beyond the configuration space are ignored.
    pub fn set_writable_mask(&mut self, offset: usize, mask: &[u8]) {
        for (i, m) in mask.iter().enumerate() {
            let Some(b) = offset.checked_add(i) else {
                return;
            };
            if let Some(w) = self.wmask.get_mut(b / 4) {
                let shift = 8 * (b % 4);
                *w = (*w & !(0xff << shift)) | (u32::from(*m) << shift);
            }
        }
    }

    /// Guest read of dword `reg`; all-ones beyond the space.
    pub fn read_reg(&self, reg: usize) -> u32 {
        self.regs.get(reg).copied().unwrap_or(u32::MAX)
    }

    /// Guest write of 1, 2 or 4 bytes at byte `offset` of dword `reg`. Only
    /// writable bits change; malformed accesses are dropped. Returns whether
    /// the access was well-formed.
    pub fn write_reg(&mut self, reg: usize, offset: usize, data: &[u8]) -> bool {
        if reg >= CONFIG_SPACE_DWORDS
            || !matches!(data.len(), 1 | 2 | 4)
            || offset >= 4
            || offset + data.len() > 4
        {
            return false;
        }
        let mut value = self.regs[reg];
        let mask = self.wmask[reg];
        for (i, b) in data.iter().enumerate() {
            let shift = 8 * (offset + i);
            let m = (mask >> shift) & 0xff;
            let old = (value >> shift) & 0xff;
            let new = (old & !m) | (u32::from(*b) & m);
            value = (value & !(0xff << shift)) | (new << shift);
        }
        self.regs[reg] = value;
        true
    }

    /// Host-side byte read (no masking); 0xff beyond the space.
    pub fn read_u8(&self, offset: usize) -> u8 {
        match self.regs.get(offset / 4) {
            Some(r) => (r >> (8 * (offset % 4))) as u8,
            None => 0xff,
        }
    }

    pub fn read_u16(&self, offset: usize) -> u16 {
        u16::from_le_bytes([self.read_u8(offset), self.read_u8(offset.saturating_add(1))])
    }

    pub fn read_u32(&self, offset: usize) -> u32 {
        let b = |i: usize| self.read_u8(offset.saturating_add(i));
        u32::from_le_bytes([b(0), b(1), b(2), b(3)])
    }

    /// Host-side byte write, bypassing the writable mask.
    pub fn write_u8(&mut self, offset: usize, v: u8) {
        if let Some(r) = self.regs.get_mut(offset / 4) {
            let shift = 8 * (offset % 4);
            *r = (*r & !(0xff << shift)) | (u32::from(v) << shift);
        }
    }

    pub fn write_u16(&mut self, offset: usize, v: u16) {
        for (i, b) in v.to_le_bytes().into_iter().enumerate() {
            self.write_u8(offset.saturating_add(i), b);
        }
    }

    pub fn write_u32(&mut self, offset: usize, v: u32) {
        for (i, b) in v.to_le_bytes().into_iter().enumerate() {
            self.write_u8(offset.saturating_add(i), b);
        }
    }

    pub fn command(&self) -> u16 {
        self.read_u16(COMMAND_OFFSET)
    }

    pub fn memory_space_enabled(&self) -> bool {
        self.command() & COMMAND_MEMORY_SPACE != 0
    }

    pub fn bus_master_enabled(&self) -> bool {
        self.command() & COMMAND_BUS_MASTER != 0
    }

    /// Function-level reset of the header: decoding and bus mastering off,
    /// guest-writable scratch fields cleared. BAR addresses are kept.
    pub fn reset(&mut self) {
        self.write_u16(COMMAND_OFFSET, 0);
        self.write_u16(CACHE_LINE_SIZE_OFFSET, 0);
        self.write_u8(INTERRUPT_LINE_OFFSET, 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> PciHeader {
        PciHeader {
            vendor_id: 0x1af4,
            device_id: 0x1043,
            revision_id: 1,
            class_code: 0x078000,
            subsystem_vendor_id: 0x1af4,
            subsystem_id: 3,
        }
    }

    fn write32(c: &mut PciConfiguration, reg: usize, v: u32) {
        assert!(c.write_reg(reg, 0, &v.to_le_bytes()));
    }

    #[test]
    fn header_fields_are_read_only() {
        let mut c = PciConfiguration::new(&header());
        assert_eq!(c.read_reg(0), 0x1043_1af4);
        assert_eq!(c.read_reg(2), 0x0780_0001);
        assert_eq!(c.read_reg(0xb), 0x0003_1af4);
        write32(&mut c, 0, 0xdead_beef);
        write32(&mut c, 2, 0);
        assert_eq!(c.read_reg(0), 0x1043_1af4);
        assert_eq!(c.read_reg(2), 0x0780_0001);
        // Command: only the defined bits stick; status is read-only.
        write32(&mut c, 1, 0xffff_ffff);
        assert_eq!(c.read_reg(1), u32::from(COMMAND_WRITABLE));
        assert!(c.memory_space_enabled());
        assert_eq!(c.read_reg(CONFIG_SPACE_DWORDS), u32::MAX);
        // Malformed accesses are dropped.
        assert!(!c.write_reg(1, 3, &[0, 0]));
        assert!(!c.write_reg(1, 0, &[0, 0, 0]));
        assert!(!c.write_reg(CONFIG_SPACE_DWORDS, 0, &[0]));
    }

    #[test]
    fn bar_sizing_32_and_64() {
        let mut c = PciConfiguration::new(&header());
        c.add_bar(
            0,
            0x1000,
            BarKind::Memory32 {
                prefetchable: false,
            },
        )
        .unwrap();
        c.add_bar(2, 0x8000, BarKind::Memory64 { prefetchable: true })
            .unwrap();
        // 32-bit BAR: all-ones write returns the size mask.
        write32(&mut c, BAR0_REG, u32::MAX);
        assert_eq!(c.read_reg(BAR0_REG), 0xffff_f000);
        // 64-bit BAR: type bits stay; upper dword all writable.
        write32(&mut c, BAR0_REG + 2, u32::MAX);
        write32(&mut c, BAR0_REG + 3, u32::MAX);
        assert_eq!(c.read_reg(BAR0_REG + 2), 0xffff_8000 | 0b1100);
        assert_eq!(c.read_reg(BAR0_REG + 3), u32::MAX);
        // Unused BARs read zero even after all-ones writes.
        write32(&mut c, BAR0_REG + 1, u32::MAX);
        assert_eq!(c.read_reg(BAR0_REG + 1), 0);
        // Program addresses.
        write32(&mut c, BAR0_REG, 0xc000_1234);
        assert_eq!(c.bar_address(0), Some(0xc000_1000));
        write32(&mut c, BAR0_REG + 2, 0x0000_8000);
        write32(&mut c, BAR0_REG + 3, 0x10);
        assert_eq!(c.bar_address(2), Some(0x10_0000_8000));
        assert_eq!(c.bar_size(2), Some(0x8000));
        assert_eq!(c.bar_size(3), None);
        // Decoding needs Memory Space Enable.
        assert_eq!(c.decode_bar(0x10_0000_8010, 4), None);
        write32(&mut c, 1, u32::from(COMMAND_MEMORY_SPACE));
        assert_eq!(c.decode_bar(0x10_0000_8010, 4), Some((2, 0x10)));
        assert_eq!(c.decode_bar(0xc000_1ffc, 4), Some((0, 0xffc)));
        // Straddling the end is not decoded.
        assert_eq!(c.decode_bar(0xc000_1ffe, 4), None);
        assert_eq!(c.decode_bar(u64::MAX - 1, 4), None);
    }

    #[test]
    fn bad_bars_rejected() {
        let mut c = PciConfiguration::new(&header());
        let m32 = BarKind::Memory32 {
            prefetchable: false,
        };
        let m64 = BarKind::Memory64 {
            prefetchable: false,
        };
        assert!(c.add_bar(6, 0x1000, m32).is_err());
        assert!(c.add_bar(5, 0x1000, m64).is_err());
        assert!(c.add_bar(0, 0x1001, m32).is_err());
        assert!(c.add_bar(0, 8, m32).is_err());
        assert!(c.add_bar(0, 1 << 32, m32).is_err());
        c.add_bar(0, 0x1000, m64).unwrap();
        assert!(c.add_bar(1, 0x1000, m32).is_err());
        assert!(c.set_bar_address(0, 0x1800).is_err());
        assert!(c.set_bar_address(1, 0x1000).is_err());
        c.set_bar_address(0, 0x20_0000_1000).unwrap();
        assert_eq!(c.bar_address(0), Some(0x20_0000_1000));
    }

    #[test]
    fn capability_list_is_linked() {
        let mut c = PciConfiguration::new(&header());
        let a = c.add_capability(&[0x11, 0xaa, 1, 2, 3]).unwrap();
        let b = c.add_capability(&[0x09, 0, 16, 1]).unwrap();
        assert_eq!(a, 0x40);
        assert_eq!(b, 0x48);
        assert_eq!(c.read_u8(CAPABILITY_POINTER_OFFSET), 0x40);
        assert_ne!(c.read_u16(STATUS_OFFSET) & STATUS_CAPABILITIES_LIST, 0);
        assert_eq!(c.read_u8(a + 1), b as u8);
        assert_eq!(c.read_u8(b + 1), 0);
        // Read-only unless made writable.
        assert!(c.write_reg(a / 4, 2, &[0xff]));
        assert_eq!(c.read_u8(a + 2), 1);
        c.set_writable_mask(a + 2, &[0xf0]);
        assert!(c.write_reg(a / 4, 2, &[0xff]));
        assert_eq!(c.read_u8(a + 2), 0xf1);
        assert!(c.add_capability(&[0; 250]).is_err());
        assert!(c.add_capability(&[1]).is_err());
    }
}
