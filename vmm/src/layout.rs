//! Guest physical and port address map of the lab machine (x86_64).
//!
//! One place owns every address the VMM, the ACPI tables and the devices agree
//! on. Values follow the x86 boot protocol (Documentation/arch/x86/boot.rst)
//! and the layout conventions described in ../shared/docs/vmm-anchors.md §1.2.

/// GDT used for the boot vCPU state.
pub const BOOT_GDT_START: u64 = 0x500;
/// IDT (empty) used for the boot vCPU state.
pub const BOOT_IDT_START: u64 = 0x520;
/// PVH `hvm_start_info` structure (Xen docs/misc/pvh.pandoc).
pub const PVH_INFO_START: u64 = 0x6000;
/// PVH module list (one entry: the initramfs).
pub const PVH_MODLIST_START: u64 = 0x6040;
/// PVH memory map entries.
pub const PVH_MEMMAP_START: u64 = 0x7000;
/// Linux `boot_params` ("zero page").
pub const ZERO_PAGE_START: u64 = 0x7000;
/// Initial stack pointer for the boot vCPU.
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// Identity-mapped page tables (PML4, PDPTE, PDE) for the 64-bit entry.
pub const PML4_START: u64 = 0x9000;
pub const PDPTE_START: u64 = 0xa000;
pub const PDE_START: u64 = 0xb000;
/// Kernel command line and its maximum size.
pub const CMDLINE_START: u64 = 0x20000;
pub const CMDLINE_MAX_SIZE: usize = 0x10000;
/// Top of usable low memory; [EBDA_START, 1 MiB) is reserved in e820.
pub const EBDA_START: u64 = 0x9fc00;
/// ACPI tables live here (RSDP first), inside the reserved low area.
pub const ACPI_START: u64 = 0xe0000;
pub const ACPI_MAX_SIZE: u64 = 0x20000;
/// Start of "high" RAM where the kernel is loaded.
pub const HIGH_RAM_START: u64 = 0x10_0000;

/// 32-bit PCI MMIO window for BARs (inside the below-4 GiB hole).
pub const MMIO32_START: u64 = 0xc000_0000;
pub const MMIO32_SIZE: u64 = 0x2000_0000;
/// PCI Express ECAM (MMCONFIG) for segment 0, bus 0 only (1 MiB per bus).
pub const ECAM_START: u64 = 0xe000_0000;
pub const ECAM_SIZE: u64 = 0x10_0000;
/// Start of the below-4 GiB hole: RAM stops here and resumes at 4 GiB.
pub const MEM_32BIT_GAP_START: u64 = MMIO32_START;
pub const FOUR_GIB: u64 = 0x1_0000_0000;
/// IOAPIC and local APIC (fixed by the architecture / MADT).
pub const IOAPIC_START: u64 = 0xfec0_0000;
pub const APIC_START: u64 = 0xfee0_0000;
/// KVM's TSS (3 pages) and identity map page (KVM_SET_TSS_ADDR docs).
pub const KVM_IDENTITY_MAP_START: u64 = 0xfffb_c000;
pub const KVM_TSS_START: u64 = 0xfffb_d000;
/// 64-bit PCI MMIO window for BARs, far above any RAM the lab allocates.
pub const MMIO64_START: u64 = 0x10_0000_0000;
pub const MMIO64_SIZE: u64 = 0x10_0000_0000;

/// MSI address window (LAPIC); reported by virtio-iommu PROBE as reserved.
pub const MSI_RANGE_START: u64 = 0xfee0_0000;
pub const MSI_RANGE_END: u64 = 0xfeef_ffff;

/// Legacy COM1 (8250 UART) ports and ISA IRQ.
pub const COM1_PORT: u16 = 0x3f8;
pub const COM1_IRQ: u32 = 4;
/// PCI configuration mechanism #1 ports (0xcf8 address, 0xcfc–0xcff data).
pub const PCI_CONFIG_IO_PORT: u16 = 0xcf8;
pub const PCI_CONFIG_IO_SIZE: u64 = 8;
/// HW-reduced ACPI sleep control / status and reset registers (FADT GAS, I/O space).
pub const ACPI_SLEEP_CONTROL_PORT: u16 = 0x600;
pub const ACPI_SLEEP_STATUS_PORT: u16 = 0x601;
pub const ACPI_RESET_PORT: u16 = 0x602;
/// Value the guest writes to the reset register to reboot (FADT RESET_VALUE).
pub const ACPI_RESET_VALUE: u8 = 0x1;
/// Lab debug port: the guest writes a byte here to stamp boot progress.
pub const DEBUG_PORT: u16 = 0x80;

/// Number of IOAPIC pins (GSIs 0..24 are legacy/IOAPIC routes).
pub const IOAPIC_PINS: u32 = 24;
/// First GSI used for MSI routes.
pub const MSI_GSI_START: u32 = 24;
/// Last GSI the lab allocates (KVM's routing table is 4096 entries max).
pub const MSI_GSI_END: u32 = 4095;

/// First of the four GSIs (16–19, level/active-low) the DSDT `_PRT` routes
/// PCI INTA–INTD to (swizzled by slot). Devices here use MSI-X; this only
/// gives an interrupt pin a defined route.
pub const PCI_INTX_GSI_BASE: u32 = 16;
