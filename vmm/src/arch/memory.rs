//! Guest RAM regions and the e820 map the guest is told about.
//!
//! RAM starts at guest physical 0 and runs up to `min(ram, MEM_32BIT_GAP_START)`;
//! whatever does not fit below the 32-bit hole continues at 4 GiB. The low
//! region therefore has a memslot behind [EBDA_START, 1 MiB), where the ACPI
//! tables live, even though e820 reports that range as reserved.

use vm_memory::{GuestAddress, GuestMemoryMmap};

use crate::layout::{
    EBDA_START, ECAM_SIZE, ECAM_START, FOUR_GIB, HIGH_RAM_START, MEM_32BIT_GAP_START, MMIO64_START,
};

/// Guest pages are 4 KiB; RAM sizes must be a multiple of this.
pub const PAGE_SIZE: u64 = 0x1000;

/// Smallest RAM the machine accepts: the low MiB (boot data, ACPI tables)
/// must be backed by memory.
pub const MIN_RAM_BYTES: u64 = HIGH_RAM_START;

/// Largest RAM the machine accepts: RAM above 4 GiB must stay below the
/// 64-bit PCI MMIO window.
pub const MAX_RAM_BYTES: u64 = MEM_32BIT_GAP_START + (MMIO64_START - FOUR_GIB);

#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    #[error("guest RAM size {0:#x} is not a multiple of 4 KiB")]
    Unaligned(u64),
    #[error("guest RAM size {size:#x} is outside [{min:#x}, {max:#x}]")]
    OutOfRange { size: u64, min: u64, max: u64 },
    #[error("guest RAM size {0:#x} does not fit the host address space")]
    TooLargeForHost(u64),
    #[error("cannot map guest RAM")]
    Mmap(#[source] vm_memory::mmap::FromRangesError),
}

/// Kind of an e820 range (arch/x86/include/uapi/asm/e820.h numbering via
/// [`E820Kind::e820_type`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum E820Kind {
    Ram,
    Reserved,
}

impl E820Kind {
    /// The numeric e820 type for `boot_params.e820_table` / PVH memmap
    /// (1 = RAM, 2 = reserved).
    pub fn e820_type(self) -> u32 {
        match self {
            E820Kind::Ram => 1,
            E820Kind::Reserved => 2,
        }
    }
}

/// One e820 range: `[addr, addr + size)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct E820Entry {
    pub addr: u64,
    pub size: u64,
    pub kind: E820Kind,
}

impl E820Entry {
    /// One past the last byte of the range.
    pub fn end(&self) -> u64 {
        self.addr + self.size
    }
}

/// Bytes of RAM placed below the 32-bit hole, and above 4 GiB.
fn split(ram_bytes: u64) -> (u64, u64) {
    let low = ram_bytes.min(MEM_32BIT_GAP_START);
    (low, ram_bytes - low)
}

/// The guest RAM regions (start, length) for `ram_bytes` of RAM: one from 0
/// up to the 32-bit hole, and one from 4 GiB for the rest, if any.
pub fn ram_regions(ram_bytes: u64) -> Vec<(GuestAddress, usize)> {
    let (low, high) = split(ram_bytes);
    let mut regions = Vec::with_capacity(2);
    if low > 0 {
        regions.push((GuestAddress(0), low as usize));
    }
    if high > 0 {
        regions.push((GuestAddress(FOUR_GIB), high as usize));
    }
    regions
}

/// Check that `ram_bytes` is a RAM size the machine layout supports.
pub fn validate_ram_size(ram_bytes: u64) -> Result<(), MemoryError> {
    if !ram_bytes.is_multiple_of(PAGE_SIZE) {
        return Err(MemoryError::Unaligned(ram_bytes));
    }
    if !(MIN_RAM_BYTES..=MAX_RAM_BYTES).contains(&ram_bytes) {
        return Err(MemoryError::OutOfRange {
            size: ram_bytes,
            min: MIN_RAM_BYTES,
            max: MAX_RAM_BYTES,
        });
    }
    if usize::try_from(ram_bytes).is_err() {
        return Err(MemoryError::TooLargeForHost(ram_bytes));
    }
    Ok(())
}

/// Allocate (anonymous mmap) the guest RAM laid out by [`ram_regions`].
pub fn create_guest_memory(ram_bytes: u64) -> Result<GuestMemoryMmap<()>, MemoryError> {
    validate_ram_size(ram_bytes)?;
    GuestMemoryMmap::from_ranges(&ram_regions(ram_bytes)).map_err(MemoryError::Mmap)
}

/// The e820 map for `ram_bytes` of RAM, sorted by address, no overlaps:
/// RAM [0, EBDA_START), reserved [EBDA_START, 1 MiB) (EBDA, ACPI tables),
/// RAM [1 MiB, top of low RAM), reserved ECAM, RAM above 4 GiB.
///
/// Everything between the top of low RAM and 4 GiB that is not ECAM is left
/// out, so Linux sees the gap it can use for 32-bit PCI BARs.
pub fn e820_map(ram_bytes: u64) -> Vec<E820Entry> {
    let (low, high) = split(ram_bytes);
    let mut map = Vec::with_capacity(5);
    let mut push = |addr: u64, end: u64, kind: E820Kind| {
        if end > addr {
            map.push(E820Entry {
                addr,
                size: end - addr,
                kind,
            });
        }
    };
    push(0, low.min(EBDA_START), E820Kind::Ram);
    push(EBDA_START, HIGH_RAM_START, E820Kind::Reserved);
    push(HIGH_RAM_START, low, E820Kind::Ram);
    push(ECAM_START, ECAM_START + ECAM_SIZE, E820Kind::Reserved);
    push(FOUR_GIB, FOUR_GIB + high, E820Kind::Ram);
    map.sort_by_key(|e| e.addr);
    map
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{Bytes, GuestMemoryBackend, GuestMemoryRegion};

    const MIB: u64 = 1 << 20;
    const GIB: u64 = 1 << 30;

    fn ram(addr: u64, size: u64) -> E820Entry {
        E820Entry {
            addr,
            size,
            kind: E820Kind::Ram,
        }
    }

    fn reserved(addr: u64, size: u64) -> E820Entry {
        E820Entry {
            addr,
            size,
            kind: E820Kind::Reserved,
        }
    }

    fn check_well_formed(map: &[E820Entry]) {
        for w in map.windows(2) {
            assert!(w[0].addr < w[1].addr, "not sorted: {map:x?}");
            assert!(w[0].end() <= w[1].addr, "overlap: {map:x?}");
        }
        for e in map {
            assert!(e.size > 0);
        }
        // The 32-bit hole for BARs is never RAM.
        for e in map.iter().filter(|e| e.kind == E820Kind::Ram) {
            assert!(e.end() <= MEM_32BIT_GAP_START || e.addr >= FOUR_GIB);
        }
    }

    fn ram_total(map: &[E820Entry]) -> u64 {
        map.iter()
            .filter(|e| e.kind == E820Kind::Ram)
            .map(|e| e.size)
            .sum()
    }

    #[test]
    fn regions_small_ram_is_one_region() {
        assert_eq!(
            ram_regions(256 * MIB),
            vec![(GuestAddress(0), (256 * MIB) as usize)]
        );
    }

    #[test]
    fn regions_split_at_the_32bit_hole() {
        let r = ram_regions(5 * GIB);
        assert_eq!(
            r,
            vec![
                (GuestAddress(0), MEM_32BIT_GAP_START as usize),
                (
                    GuestAddress(FOUR_GIB),
                    (5 * GIB - MEM_32BIT_GAP_START) as usize
                ),
            ]
        );
        let total: usize = r.iter().map(|(_, l)| l).sum();
        assert_eq!(total as u64, 5 * GIB);
        // Exactly at the hole: still one region.
        assert_eq!(ram_regions(MEM_32BIT_GAP_START).len(), 1);
    }

    #[test]
    fn e820_2g() {
        let map = e820_map(2 * GIB);
        check_well_formed(&map);
        assert_eq!(
            map,
            vec![
                ram(0, EBDA_START),
                reserved(EBDA_START, HIGH_RAM_START - EBDA_START),
                ram(HIGH_RAM_START, 2 * GIB - HIGH_RAM_START),
                reserved(ECAM_START, ECAM_SIZE),
            ]
        );
        // RAM lost to the EBDA/ACPI reservation only.
        assert_eq!(ram_total(&map), 2 * GIB - (HIGH_RAM_START - EBDA_START));
    }

    #[test]
    fn e820_256m() {
        let map = e820_map(256 * MIB);
        check_well_formed(&map);
        assert_eq!(map.len(), 4);
        assert_eq!(map[2], ram(HIGH_RAM_START, 255 * MIB));
        // Gap between top of RAM and ECAM.
        assert!(map[2].end() < map[3].addr);
    }

    #[test]
    fn e820_5g() {
        let map = e820_map(5 * GIB);
        check_well_formed(&map);
        assert_eq!(
            map,
            vec![
                ram(0, EBDA_START),
                reserved(EBDA_START, HIGH_RAM_START - EBDA_START),
                ram(HIGH_RAM_START, MEM_32BIT_GAP_START - HIGH_RAM_START),
                reserved(ECAM_START, ECAM_SIZE),
                ram(FOUR_GIB, 5 * GIB - MEM_32BIT_GAP_START),
            ]
        );
        // The hole below ECAM (32-bit MMIO window) is a gap, not RAM.
        assert!(map[2].end() <= crate::layout::MMIO32_START);
        assert!(map[3].addr >= crate::layout::MMIO32_START + crate::layout::MMIO32_SIZE);
    }

    #[test]
    fn e820_reserved_low_area_is_backed_by_a_memslot() {
        for size in [2 * MIB, 256 * MIB, 2 * GIB, 5 * GIB] {
            let regions = ram_regions(size);
            let (start, len) = regions[0];
            assert_eq!(start, GuestAddress(0));
            assert!(len as u64 >= HIGH_RAM_START);
            // ACPI tables live inside the reserved e820 range.
            let map = e820_map(size);
            let res = map[1];
            assert_eq!(res.kind, E820Kind::Reserved);
            assert!(res.addr <= crate::layout::ACPI_START);
            assert!(crate::layout::ACPI_START + crate::layout::ACPI_MAX_SIZE <= res.end());
        }
    }

    #[test]
    fn e820_types() {
        assert_eq!(E820Kind::Ram.e820_type(), 1);
        assert_eq!(E820Kind::Reserved.e820_type(), 2);
    }

    #[test]
    fn validate_sizes() {
        assert!(validate_ram_size(2 * MIB).is_ok());
        assert!(validate_ram_size(5 * GIB).is_ok());
        assert!(matches!(
            validate_ram_size(2 * MIB + 1),
            Err(MemoryError::Unaligned(_))
        ));
        assert!(matches!(
            validate_ram_size(512 * 1024),
            Err(MemoryError::OutOfRange { .. })
        ));
        assert!(matches!(
            validate_ram_size(MAX_RAM_BYTES + PAGE_SIZE),
            Err(MemoryError::OutOfRange { .. })
        ));
    }

    #[test]
    fn create_memory_small() {
        let mem = create_guest_memory(2 * MIB).unwrap();
        assert_eq!(mem.num_regions(), 1);
        let r = mem.iter().next().unwrap();
        assert_eq!(r.start_addr(), GuestAddress(0));
        assert_eq!(r.len(), 2 * MIB);
        // ACPI area is writable.
        mem.write_obj(0xa5u8, GuestAddress(crate::layout::ACPI_START))
            .unwrap();
        assert_eq!(
            mem.read_obj::<u8>(GuestAddress(crate::layout::ACPI_START))
                .unwrap(),
            0xa5
        );
    }

    #[test]
    fn create_memory_above_4g() {
        // Anonymous mappings are lazily backed: this does not commit 5 GiB.
        let mem = create_guest_memory(5 * GIB).unwrap();
        assert_eq!(mem.num_regions(), 2);
        let starts: Vec<_> = mem.iter().map(|r| r.start_addr().0).collect();
        assert_eq!(starts, vec![0, FOUR_GIB]);
        mem.write_obj(0x5au8, GuestAddress(FOUR_GIB + 0x1000))
            .unwrap();
        assert!(mem.write_obj(0u8, GuestAddress(ECAM_START)).is_err());
    }
}
