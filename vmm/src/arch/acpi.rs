//! ACPI tables for a HW-reduced x86 machine: RSDP → XSDT → {FADT, MADT,
//! MCFG, VIOT}, with the DSDT reached through FADT.X_DSDT.
//!
//! The tables are built as one blob that starts with the RSDP at
//! [`ACPI_START`] (inside the e820-reserved low area, which is backed by the
//! low RAM memslot) and must fit in [`ACPI_MAX_SIZE`]. The VMM passes the
//! returned RSDP address in `boot_params.acpi_rsdp_addr` (or PVH
//! `rsdp_paddr`); the RSDP is also on a 16-byte boundary inside
//! 0xE0000–0xFFFFF, where Linux scans for it as a fallback.
//!
//! `acpi_tables` 0.2.1 supplies the RSDP, XSDT, FADT and MCFG builders, the
//! generic `Sdt` byte table and the AML objects of the DSDT. The MADT is
//! built by hand on `Sdt` (the crate has no interrupt-source-override or
//! local-APIC-NMI structures), and so is the VIOT (the crate writes header
//! revision 1, while QEMU/Cloud Hypervisor/crosvm emit revision 0).
//!
//! Power management (HW-reduced ACPI, ACPI 6.5 §4.8.3.7): to power off, Linux
//! writes `WAK_STS` to SLEEP_STATUS_REG, then
//! `(SLP_TYP << 2) | SLP_EN` to SLEEP_CONTROL_REG, taking SLP_TYP from the
//! DSDT's `\_S5_` package; see [`sleep_control_is_poweroff`]. To reboot it
//! writes [`ACPI_RESET_VALUE`] to RESET_REG.

use acpi_tables::aml;
use acpi_tables::fadt::{FADTBuilder, Flags};
use acpi_tables::gas::{AccessSize, AddressSpace as GasSpace, GAS};
use acpi_tables::mcfg::MCFG;
use acpi_tables::rsdp::Rsdp;
use acpi_tables::sdt::Sdt;
use acpi_tables::xsdt::XSDT;
use acpi_tables::{Aml, AmlSink};
use vm_memory::{Bytes, GuestAddress, GuestMemoryError, GuestMemoryMmap};

use crate::layout::{
    ACPI_MAX_SIZE, ACPI_RESET_PORT, ACPI_RESET_VALUE, ACPI_SLEEP_CONTROL_PORT,
    ACPI_SLEEP_STATUS_PORT, ACPI_START, APIC_START, COM1_IRQ, COM1_PORT, ECAM_SIZE, ECAM_START,
    IOAPIC_START, MMIO32_SIZE, MMIO32_START, MMIO64_SIZE, MMIO64_START, PCI_CONFIG_IO_PORT,
    PCI_CONFIG_IO_SIZE, PCI_INTX_GSI_BASE,
};

/// OEM ID in every table header and the RSDP.
pub const OEM_ID: [u8; 6] = *b"NETMEM";
/// OEM table ID in every table header.
pub const OEM_TABLE_ID: [u8; 8] = *b"NETMEMLB";
/// OEM revision in every table header.
pub const OEM_REVISION: u32 = 1;
/// FADT "Hypervisor Vendor Identity" (offset 268).
pub const HYPERVISOR_VENDOR_ID: [u8; 8] = *b"NETMEMLB";

/// SLP_TYP of S5 (soft off), as the DSDT `\_S5_` package declares it.
pub const S5_SLP_TYP: u8 = 5;
/// Position of SLP_TYP in the HW-reduced sleep control register (bits 4:2).
pub const SLP_TYP_SHIFT: u8 = 2;
/// Mask of SLP_TYP in the sleep control register.
pub const SLP_TYP_MASK: u8 = 0x7 << SLP_TYP_SHIFT;
/// SLP_EN bit of the sleep control register.
pub const SLP_EN: u8 = 1 << 5;
/// WAK_STS bit of the sleep status register (Linux writes it before sleeping).
pub const WAK_STS: u8 = 1 << 7;
/// The exact byte Linux writes to SLEEP_CONTROL_REG to power off (0x34).
pub const SLEEP_CONTROL_POWEROFF: u8 = (S5_SLP_TYP << SLP_TYP_SHIFT) | SLP_EN;

/// FADT IAPC_BOOT_ARCH: no VGA (bit 2), no CMOS RTC (bit 5). The 8042 bit
/// (bit 1) is clear, so Linux does not probe an i8042; set it if the VMM ever
/// emulates one. MSI is supported (bit 3 clear).
pub const IAPC_BOOT_ARCH: u16 = (1 << 2) | (1 << 5);

/// MADT flags: PCAT_COMPAT, the in-kernel KVM irqchip has dual 8259s (Linux
/// ignores them under HW-reduced ACPI and routes legacy IRQs via the IOAPIC).
pub const MADT_FLAGS: u32 = 1;
/// MADT revision (ACPI 6.2+ layout; `online capable` bit meaningful).
pub const MADT_REVISION: u8 = 5;
/// DSDT revision 2: 64-bit AML integers.
pub const DSDT_REVISION: u8 = 2;
/// VIOT revision as emitted by QEMU / Cloud Hypervisor / crosvm.
pub const VIOT_REVISION: u8 = 0;
/// Offset of the first VIOT node (the virtio-pci IOMMU node).
pub const VIOT_NODE_OFFSET: u16 = 48;
/// Every table starts on this alignment inside the ACPI area.
pub const TABLE_ALIGN: u64 = 16;

/// A PCI function that gets a DSDT `Device(name) { _ADR }` under `\_SB.PCI0`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PciSlotInfo {
    /// Bus/device/function (bus must be 0).
    pub bdf: u16,
    /// ACPI NameSeg: 4 chars of `A-Z0-9_`, not starting with a digit, e.g. "IOMU".
    pub name: String,
}

/// The virtio-iommu and the endpoints it translates (VIOT).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ViotConfig {
    /// BDF of the virtio-iommu PCI function (segment 0).
    pub iommu_bdf: u16,
    /// BDFs of the translated endpoints; each becomes one PCI-range node with
    /// `endpoint_start = bdf`, so endpoint IDs seen by the device are BDFs.
    pub endpoints: Vec<u16>,
}

/// What the tables describe.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AcpiConfig {
    /// vCPUs, APIC IDs 0..num_cpus.
    pub num_cpus: u8,
    /// Optional `_ADR` devices in the DSDT (may be empty).
    pub pci_devices: Vec<PciSlotInfo>,
    /// VIOT table, when a virtio-iommu is present.
    pub viot: Option<ViotConfig>,
}

#[derive(Debug, thiserror::Error)]
pub enum AcpiError {
    #[error("the MADT needs at least one CPU")]
    NoCpus,
    #[error("{0} CPUs leave no APIC ID for the IOAPIC")]
    TooManyCpus(u8),
    #[error(
        "invalid ACPI device name {0:?}: need 4 chars of A-Z, 0-9, _ not starting with a digit"
    )]
    InvalidDeviceName(String),
    #[error("duplicate DSDT device {0:?}")]
    DuplicateDevice(String),
    #[error("PCI device {bdf:#06x} is not on bus 0, the only bus of the host bridge")]
    NotOnBus0 { bdf: u16 },
    #[error("VIOT endpoint {0:#06x} is listed twice or is the IOMMU itself")]
    InvalidViotEndpoint(u16),
    #[error("too many VIOT endpoints: {0}")]
    TooManyViotEndpoints(usize),
    #[error("ACPI tables need {size:#x} bytes, the ACPI area has {max:#x}")]
    TooLarge { size: u64, max: u64 },
    #[error("cannot write the ACPI tables to guest memory")]
    GuestMemory(#[source] GuestMemoryError),
}

/// Where one table landed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableInfo {
    pub signature: [u8; 4],
    pub addr: GuestAddress,
    pub len: usize,
}

/// The tables as one blob to copy to `base` (RSDP first).
#[derive(Clone, Debug)]
pub struct AcpiTables {
    pub base: GuestAddress,
    pub bytes: Vec<u8>,
    /// Address of the RSDP (== `base`).
    pub rsdp: GuestAddress,
    /// Every SDT with its address (not the RSDP), in placement order.
    pub tables: Vec<TableInfo>,
}

/// True if `value`, written to SLEEP_CONTROL_REG, requests S5 (power off).
pub fn sleep_control_is_poweroff(value: u8) -> bool {
    value & SLP_EN != 0 && (value & SLP_TYP_MASK) >> SLP_TYP_SHIFT == S5_SLP_TYP
}

/// The IOAPIC's ID in the MADT: the first ID above the CPUs' APIC IDs.
pub fn ioapic_id(num_cpus: u8) -> u8 {
    num_cpus
}

/// GSI of PCI INTx `pin` (0 = INTA … 3 = INTD) of `slot` in the DSDT `_PRT`:
/// the usual swizzle over GSIs 16–19 (level-triggered, active low). Our
/// devices use MSI-X; this is only so that a device with an interrupt pin
/// gets a defined route.
pub fn pci_intx_gsi(slot: u8, pin: u8) -> u32 {
    PCI_INTX_GSI_BASE + ((u32::from(slot) + u32::from(pin)) % 4)
}

/// Build the tables for `cfg` and write them to guest memory at
/// [`ACPI_START`]. Returns the RSDP address.
pub fn create_acpi_tables(
    mem: &GuestMemoryMmap<()>,
    cfg: &AcpiConfig,
) -> Result<GuestAddress, AcpiError> {
    let tables = build_acpi_tables(cfg)?;
    mem.write_slice(&tables.bytes, tables.base)
        .map_err(AcpiError::GuestMemory)?;
    tracing::debug!(
        rsdp = format_args!("{:#x}", tables.rsdp.0),
        size = tables.bytes.len(),
        "ACPI tables written"
    );
    Ok(tables.rsdp)
}

/// Build the tables for `cfg` as they will sit at [`ACPI_START`], without
/// touching guest memory.
pub fn build_acpi_tables(cfg: &AcpiConfig) -> Result<AcpiTables, AcpiError> {
    if cfg.num_cpus == 0 {
        return Err(AcpiError::NoCpus);
    }
    if cfg.num_cpus == u8::MAX {
        return Err(AcpiError::TooManyCpus(cfg.num_cpus));
    }
    let mut blob = Blob::new(ACPI_START);
    // RSDP first; its XSDT pointer is patched in at the end.
    let rsdp_addr = blob.reserve(Rsdp::len());

    let dsdt = dsdt(cfg)?;
    let dsdt_addr = blob.push(&dsdt);
    let fadt_addr = blob.push(&fadt(dsdt_addr));
    let madt_addr = blob.push(&madt(cfg.num_cpus));
    let mcfg_addr = blob.push(&mcfg());
    let mut xsdt_entries = vec![fadt_addr, madt_addr, mcfg_addr];
    if let Some(v) = &cfg.viot {
        xsdt_entries.push(blob.push(&viot(v)?));
    }
    let mut xsdt = XSDT::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    for e in &xsdt_entries {
        xsdt.add_entry(*e);
    }
    let xsdt_addr = blob.push(&to_bytes(&xsdt));
    blob.write_at(rsdp_addr, &to_bytes(&Rsdp::new(OEM_ID, xsdt_addr)));

    let size = blob.bytes.len() as u64;
    if size > ACPI_MAX_SIZE {
        return Err(AcpiError::TooLarge {
            size,
            max: ACPI_MAX_SIZE,
        });
    }
    Ok(AcpiTables {
        base: GuestAddress(ACPI_START),
        rsdp: GuestAddress(rsdp_addr),
        tables: blob.tables,
        bytes: blob.bytes,
    })
}

/// Tables being laid out back to back from `base`.
struct Blob {
    base: u64,
    bytes: Vec<u8>,
    tables: Vec<TableInfo>,
}

impl Blob {
    fn new(base: u64) -> Self {
        Self {
            base,
            bytes: Vec::new(),
            tables: Vec::new(),
        }
    }

    fn align(&mut self) {
        let len = (self.bytes.len() as u64).next_multiple_of(TABLE_ALIGN);
        self.bytes.resize(len as usize, 0);
    }

    /// Reserve `len` zero bytes; returns their guest address.
    fn reserve(&mut self, len: usize) -> u64 {
        self.align();
        let addr = self.base + self.bytes.len() as u64;
        self.bytes.resize(self.bytes.len() + len, 0);
        addr
    }

    /// Append an SDT; returns its guest address.
    fn push(&mut self, table: &[u8]) -> u64 {
        let addr = self.reserve(0);
        self.bytes.extend_from_slice(table);
        let mut signature = [0u8; 4];
        signature.copy_from_slice(&table[..4]);
        self.tables.push(TableInfo {
            signature,
            addr: GuestAddress(addr),
            len: table.len(),
        });
        addr
    }

    fn write_at(&mut self, addr: u64, data: &[u8]) {
        let off = (addr - self.base) as usize;
        self.bytes[off..off + data.len()].copy_from_slice(data);
    }
}

fn to_bytes(aml: &dyn Aml) -> Vec<u8> {
    let mut v = Vec::new();
    aml.to_aml_bytes(&mut v);
    v
}

fn new_sdt(signature: [u8; 4], len: u32, revision: u8) -> Sdt {
    Sdt::new(signature, len, revision, OEM_ID, OEM_TABLE_ID, OEM_REVISION)
}

fn io_gas(port: u16) -> GAS {
    GAS::new(
        GasSpace::SystemIo,
        8,
        0,
        AccessSize::ByteAccess,
        port.into(),
    )
}

/// FADT revision 6 (276 bytes), HW-reduced.
fn fadt(dsdt_addr: u64) -> Vec<u8> {
    let mut b = FADTBuilder::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION)
        .dsdt_64(dsdt_addr)
        .flag(Flags::HwReducedAcpi)
        .flag(Flags::ResetRegSup)
        // No fixed-feature buttons (there are none in HW-reduced mode).
        .flag(Flags::PwrButton)
        .flag(Flags::SlpButton);
    b.reset_reg = io_gas(ACPI_RESET_PORT);
    b.reset_value = ACPI_RESET_VALUE;
    b.sleep_control_reg = io_gas(ACPI_SLEEP_CONTROL_PORT);
    b.sleep_status_reg = io_gas(ACPI_SLEEP_STATUS_PORT);
    b.iapc_boot_arch = IAPC_BOOT_ARCH.into();
    b.hypervisor_vendor_identity = u64::from_le_bytes(HYPERVISOR_VENDOR_ID).into();
    to_bytes(&b.finalize())
}

/// MADT interrupt structure types (ACPI 6.5 §5.2.12).
const MADT_LOCAL_APIC: u8 = 0;
const MADT_IO_APIC: u8 = 1;
const MADT_INT_SRC_OVERRIDE: u8 = 2;
const MADT_LOCAL_APIC_NMI: u8 = 4;
/// MPS INTI flags: polarity active high (bits 1:0 = 01), trigger edge (bits 3:2 = 01).
const MPS_INTI_EDGE_HIGH: u16 = 0x5;

fn madt(num_cpus: u8) -> Vec<u8> {
    let mut t = new_sdt(*b"APIC", 44, MADT_REVISION);
    t.write_u32(36, APIC_START as u32);
    t.write_u32(40, MADT_FLAGS);
    for cpu in 0..num_cpus {
        // Processor Local APIC: UID = APIC ID = cpu index, flags = Enabled.
        t.append_slice(&[MADT_LOCAL_APIC, 8, cpu, cpu, 1, 0, 0, 0]);
    }
    let mut ioapic = vec![MADT_IO_APIC, 12, ioapic_id(num_cpus), 0];
    ioapic.extend_from_slice(&(IOAPIC_START as u32).to_le_bytes());
    ioapic.extend_from_slice(&0u32.to_le_bytes()); // GSI base
    t.append_slice(&ioapic);
    // ISA IRQ0 (PIT) → GSI 2, flags conform to the bus; COM1 IRQ4 → GSI 4 edge/high.
    for (irq, gsi, flags) in [
        (0u8, 2u32, 0u16),
        (COM1_IRQ as u8, COM1_IRQ, MPS_INTI_EDGE_HIGH),
    ] {
        let mut iso = vec![MADT_INT_SRC_OVERRIDE, 10, 0, irq];
        iso.extend_from_slice(&gsi.to_le_bytes());
        iso.extend_from_slice(&flags.to_le_bytes());
        t.append_slice(&iso);
    }
    // Local APIC NMI on LINT1 for all processors (UID 0xff).
    t.append_slice(&[MADT_LOCAL_APIC_NMI, 6, 0xff, 0, 0, 1]);
    t.as_slice().to_vec()
}

fn mcfg() -> Vec<u8> {
    let mut m = MCFG::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    m.add_ecam(ECAM_START, 0, 0, 0);
    to_bytes(&m)
}

const VIOT_NODE_PCI_RANGE: u8 = 1;
const VIOT_NODE_VIRTIO_PCI_IOMMU: u8 = 3;
const VIOT_PCI_RANGE_LEN: u16 = 24;
const VIOT_VIRTIO_PCI_IOMMU_LEN: u16 = 16;

fn viot(v: &ViotConfig) -> Result<Vec<u8>, AcpiError> {
    let mut seen = std::collections::BTreeSet::new();
    for &ep in &v.endpoints {
        if ep == v.iommu_bdf || !seen.insert(ep) {
            return Err(AcpiError::InvalidViotEndpoint(ep));
        }
    }
    let node_count = u16::try_from(v.endpoints.len() + 1)
        .map_err(|_| AcpiError::TooManyViotEndpoints(v.endpoints.len()))?;
    let mut t = new_sdt(*b"VIOT", u32::from(VIOT_NODE_OFFSET), VIOT_REVISION);
    t.write_u16(36, node_count);
    t.write_u16(38, VIOT_NODE_OFFSET);
    // virtio-pci IOMMU node at VIOT_NODE_OFFSET.
    let mut iommu = vec![VIOT_NODE_VIRTIO_PCI_IOMMU, 0];
    iommu.extend_from_slice(&VIOT_VIRTIO_PCI_IOMMU_LEN.to_le_bytes());
    iommu.extend_from_slice(&0u16.to_le_bytes()); // segment
    iommu.extend_from_slice(&v.iommu_bdf.to_le_bytes());
    iommu.extend_from_slice(&[0; 8]);
    t.append_slice(&iommu);
    for &ep in &v.endpoints {
        let mut n = vec![VIOT_NODE_PCI_RANGE, 0];
        n.extend_from_slice(&VIOT_PCI_RANGE_LEN.to_le_bytes());
        n.extend_from_slice(&u32::from(ep).to_le_bytes()); // endpoint_start
        n.extend_from_slice(&0u16.to_le_bytes()); // segment start
        n.extend_from_slice(&0u16.to_le_bytes()); // segment end
        n.extend_from_slice(&ep.to_le_bytes()); // BDF start
        n.extend_from_slice(&ep.to_le_bytes()); // BDF end
        n.extend_from_slice(&VIOT_NODE_OFFSET.to_le_bytes()); // output node
        n.extend_from_slice(&[0; 6]);
        t.append_slice(&n);
    }
    Ok(t.as_slice().to_vec())
}

/// Already-encoded AML.
struct RawAml(Vec<u8>);

impl Aml for RawAml {
    fn to_aml_bytes(&self, sink: &mut dyn AmlSink) {
        sink.vec(&self.0);
    }
}

fn valid_name_seg(name: &str) -> bool {
    let b = name.as_bytes();
    b.len() == 4
        && (b[0].is_ascii_uppercase() || b[0] == b'_')
        && b[1..]
            .iter()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == b'_')
}

/// `Device(NAME) { Name(_ADR, dev << 16 | fn) }` for each PCI function.
fn pci_child_devices(devs: &[PciSlotInfo]) -> Result<Vec<RawAml>, AcpiError> {
    let mut names = std::collections::BTreeSet::new();
    let mut out = Vec::with_capacity(devs.len());
    for d in devs {
        if !valid_name_seg(&d.name) {
            return Err(AcpiError::InvalidDeviceName(d.name.clone()));
        }
        if d.bdf >> 8 != 0 {
            return Err(AcpiError::NotOnBus0 { bdf: d.bdf });
        }
        if !names.insert(d.name.as_str()) {
            return Err(AcpiError::DuplicateDevice(d.name.clone()));
        }
        let adr = (u32::from((d.bdf >> 3) & 0x1f) << 16) | u32::from(d.bdf & 0x7);
        let adr = aml::Name::new("_ADR".into(), &adr);
        out.push(RawAml(to_bytes(&aml::Device::new(
            d.name.as_str().into(),
            vec![&adr],
        ))));
    }
    Ok(out)
}

/// `_PRT`: INTA–INTD of every slot on bus 0 → GSIs 16–19 (see [`pci_intx_gsi`]).
fn pci_routing_table() -> aml::PackageBuilder {
    let mut prt = aml::PackageBuilder::new();
    for slot in 0u8..32 {
        for pin in 0u8..4 {
            let addr = (u32::from(slot) << 16) | 0xffff;
            let gsi = pci_intx_gsi(slot, pin);
            prt.add_element(&aml::Package::new(vec![&addr, &pin, &0u8, &gsi]));
        }
    }
    prt
}

fn dsdt(cfg: &AcpiConfig) -> Result<Vec<u8>, AcpiError> {
    let children = pci_child_devices(&cfg.pci_devices)?;

    // \_SB.PCI0: the PCIe host bridge of segment 0, bus 0.
    let hid = aml::Name::new("_HID".into(), &aml::EISAName::new("PNP0A08"));
    let cid = aml::Name::new("_CID".into(), &aml::EISAName::new("PNP0A03"));
    let adr = aml::Name::new("_ADR".into(), &aml::ZERO);
    let seg = aml::Name::new("_SEG".into(), &aml::ZERO);
    let uid = aml::Name::new("_UID".into(), &aml::ZERO);
    let bbn = aml::Name::new("_BBN".into(), &aml::ZERO);
    let cca = aml::Name::new("_CCA".into(), &aml::ONE);
    let bus = aml::AddressSpace::<u16>::new_bus_number(0, 0);
    let cfg_io = aml::IO::new(
        PCI_CONFIG_IO_PORT,
        PCI_CONFIG_IO_PORT,
        1,
        PCI_CONFIG_IO_SIZE as u8,
    );
    let io_lo = aml::AddressSpace::<u16>::new_io(0x0000, PCI_CONFIG_IO_PORT - 1, None);
    let io_hi = aml::AddressSpace::<u16>::new_io(
        PCI_CONFIG_IO_PORT + PCI_CONFIG_IO_SIZE as u16,
        0xffff,
        None,
    );
    let mem32 = aml::AddressSpace::<u32>::new_memory(
        aml::AddressSpaceCacheable::NotCacheable,
        true,
        MMIO32_START as u32,
        (MMIO32_START + MMIO32_SIZE - 1) as u32,
        None,
    );
    let mem64 = aml::AddressSpace::<u64>::new_memory(
        aml::AddressSpaceCacheable::NotCacheable,
        true,
        MMIO64_START,
        MMIO64_START + MMIO64_SIZE - 1,
        None,
    );
    let crs_tpl = aml::ResourceTemplate::new(vec![&bus, &cfg_io, &io_lo, &io_hi, &mem32, &mem64]);
    let crs = aml::Name::new("_CRS".into(), &crs_tpl);
    let prt_pkg = pci_routing_table();
    let prt = aml::Name::new("_PRT".into(), &prt_pkg);
    let mut pci0_children: Vec<&dyn Aml> =
        vec![&hid, &cid, &adr, &seg, &uid, &bbn, &cca, &crs, &prt];
    pci0_children.extend(children.iter().map(|c| c as &dyn Aml));
    let pci0 = aml::Device::new("_SB_.PCI0".into(), pci0_children);

    // \_SB.MBRD: motherboard resources (ECAM, ACPI sleep/reset ports).
    let mb_hid = aml::Name::new("_HID".into(), &aml::EISAName::new("PNP0C02"));
    let mb_uid = aml::Name::new("_UID".into(), &aml::ZERO);
    let ecam = aml::Memory32Fixed::new(true, ECAM_START as u32, ECAM_SIZE as u32);
    let pm_ports = aml::IO::new(
        ACPI_SLEEP_CONTROL_PORT,
        ACPI_SLEEP_CONTROL_PORT,
        1,
        (ACPI_RESET_PORT - ACPI_SLEEP_CONTROL_PORT + 1) as u8,
    );
    let mb_crs_tpl = aml::ResourceTemplate::new(vec![&ecam, &pm_ports]);
    let mb_crs = aml::Name::new("_CRS".into(), &mb_crs_tpl);
    let mbrd = aml::Device::new("_SB_.MBRD".into(), vec![&mb_hid, &mb_uid, &mb_crs]);

    // \_SB.COM1: 16550 at 0x3f8, IRQ 4.
    let com_hid = aml::Name::new("_HID".into(), &aml::EISAName::new("PNP0501"));
    let com_uid = aml::Name::new("_UID".into(), &aml::ZERO);
    let com_irq = aml::Interrupt::new(true, true, false, false, COM1_IRQ);
    let com_io = aml::IO::new(COM1_PORT, COM1_PORT, 1, 8);
    let com_crs_tpl = aml::ResourceTemplate::new(vec![&com_irq, &com_io]);
    let com_crs = aml::Name::new("_CRS".into(), &com_crs_tpl);
    let com1 = aml::Device::new("_SB_.COM1".into(), vec![&com_hid, &com_uid, &com_crs]);

    // \_S5_: SLP_TYPa, SLP_TYPb, reserved, reserved.
    let s5_pkg = aml::Package::new(vec![&S5_SLP_TYP, &S5_SLP_TYP, &0u8, &0u8]);
    let s5 = aml::Name::new("_S5_".into(), &s5_pkg);

    let mut t = new_sdt(*b"DSDT", 36, DSDT_REVISION);
    for obj in [&pci0 as &dyn Aml, &mbrd, &com1, &s5] {
        t.append_slice(&to_bytes(obj));
    }
    Ok(t.as_slice().to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestMemoryMmap;

    fn mem() -> GuestMemoryMmap<()> {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 2 << 20)]).unwrap()
    }

    fn read(mem: &GuestMemoryMmap<()>, addr: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        mem.read_slice(&mut v, GuestAddress(addr)).unwrap();
        v
    }

    fn u16_at(b: &[u8], off: usize) -> u16 {
        u16::from_le_bytes(b[off..off + 2].try_into().unwrap())
    }
    fn u32_at(b: &[u8], off: usize) -> u32 {
        u32::from_le_bytes(b[off..off + 4].try_into().unwrap())
    }
    fn u64_at(b: &[u8], off: usize) -> u64 {
        u64::from_le_bytes(b[off..off + 8].try_into().unwrap())
    }

    fn sum(b: &[u8]) -> u8 {
        b.iter().fold(0u8, |a, x| a.wrapping_add(*x))
    }

    /// Read the SDT at `addr`, check its checksum and return its bytes.
    fn table(mem: &GuestMemoryMmap<()>, addr: u64, sig: &[u8; 4]) -> Vec<u8> {
        let hdr = read(mem, addr, 36);
        assert_eq!(&hdr[..4], sig, "signature at {addr:#x}");
        let len = u32_at(&hdr, 4) as usize;
        let t = read(mem, addr, len);
        assert_eq!(sum(&t), 0, "{} checksum", String::from_utf8_lossy(sig));
        assert!(addr >= ACPI_START && addr + len as u64 <= ACPI_START + ACPI_MAX_SIZE);
        t
    }

    fn config(viot: bool) -> AcpiConfig {
        AcpiConfig {
            num_cpus: 4,
            pci_devices: vec![
                PciSlotInfo {
                    bdf: 1 << 3,
                    name: "IOMU".into(),
                },
                PciSlotInfo {
                    bdf: 2 << 3,
                    name: "NIC0".into(),
                },
            ],
            viot: viot.then(|| ViotConfig {
                iommu_bdf: 1 << 3,
                endpoints: vec![2 << 3, 3 << 3],
            }),
        }
    }

    /// RSDP → XSDT → tables; returns (signature, bytes) for each XSDT entry.
    fn walk(mem: &GuestMemoryMmap<()>, rsdp: GuestAddress) -> Vec<(u64, Vec<u8>)> {
        assert_eq!(rsdp.0, ACPI_START);
        let r = read(mem, rsdp.0, 36);
        assert_eq!(&r[..8], b"RSD PTR ");
        assert_eq!(r[15], 2, "RSDP revision");
        assert_eq!(&r[9..15], &OEM_ID);
        assert_eq!(sum(&r[..20]), 0, "RSDP checksum");
        assert_eq!(u32_at(&r, 20), 36, "RSDP length");
        assert_eq!(sum(&r), 0, "RSDP extended checksum");
        let xsdt_addr = u64_at(&r, 24);
        let x = table(mem, xsdt_addr, b"XSDT");
        (36..x.len())
            .step_by(8)
            .map(|off| {
                let addr = u64_at(&x, off);
                let hdr = read(mem, addr, 36);
                let sig: [u8; 4] = hdr[..4].try_into().unwrap();
                (addr, table(mem, addr, &sig))
            })
            .collect()
    }

    #[test]
    fn xsdt_points_at_fadt_madt_mcfg_viot() {
        let m = mem();
        let rsdp = create_acpi_tables(&m, &config(true)).unwrap();
        let sigs: Vec<_> = walk(&m, rsdp)
            .into_iter()
            .map(|(_, t)| t[..4].to_vec())
            .collect();
        assert_eq!(
            sigs,
            vec![
                b"FACP".to_vec(),
                b"APIC".to_vec(),
                b"MCFG".to_vec(),
                b"VIOT".to_vec()
            ]
        );

        let m = mem();
        let rsdp = create_acpi_tables(&m, &config(false)).unwrap();
        let sigs: Vec<_> = walk(&m, rsdp)
            .into_iter()
            .map(|(_, t)| t[..4].to_vec())
            .collect();
        assert_eq!(
            sigs,
            vec![b"FACP".to_vec(), b"APIC".to_vec(), b"MCFG".to_vec()]
        );
    }

    #[test]
    fn all_tables_in_area_with_valid_checksums() {
        let t = build_acpi_tables(&config(true)).unwrap();
        assert_eq!(t.rsdp, GuestAddress(ACPI_START));
        assert!(t.bytes.len() as u64 <= ACPI_MAX_SIZE);
        let sigs: Vec<_> = t.tables.iter().map(|i| &i.signature).collect();
        assert_eq!(
            sigs,
            vec![b"DSDT", b"FACP", b"APIC", b"MCFG", b"VIOT", b"XSDT"]
        );
        for i in &t.tables {
            let off = (i.addr.0 - ACPI_START) as usize;
            let bytes = &t.bytes[off..off + i.len];
            assert_eq!(sum(bytes), 0);
            assert_eq!(u32_at(bytes, 4) as usize, i.len);
            assert_eq!(i.addr.0 % TABLE_ALIGN, 0);
            assert_eq!(&bytes[10..16], &OEM_ID);
            assert_eq!(&bytes[16..24], &OEM_TABLE_ID);
        }
        // Tables do not overlap.
        for w in t.tables.windows(2) {
            assert!(w[0].addr.0 + w[0].len as u64 <= w[1].addr.0);
        }
        assert!(t.tables[0].addr.0 >= ACPI_START + 36);
    }

    #[test]
    fn fadt_fields() {
        let m = mem();
        let rsdp = create_acpi_tables(&m, &config(false)).unwrap();
        let (_, f) = walk(&m, rsdp).into_iter().next().unwrap();
        assert_eq!(&f[..4], b"FACP");
        assert_eq!(f.len(), 276);
        assert_eq!(f[8], 6, "FADT revision");
        let flags = u32_at(&f, 112);
        assert_ne!(flags & (1 << 20), 0, "HW_REDUCED_ACPI");
        assert_ne!(flags & (1 << 10), 0, "RESET_REG_SUP");
        assert_ne!(flags & (1 << 4), 0, "PWR_BUTTON");
        assert_ne!(flags & (1 << 5), 0, "SLP_BUTTON");
        assert_eq!(u16_at(&f, 109), IAPC_BOOT_ARCH);
        // RESET_REG (offset 116): I/O, 8 bits, byte access, ACPI_RESET_PORT.
        assert_eq!(&f[116..120], &[1, 8, 0, 1]);
        assert_eq!(u64_at(&f, 120), u64::from(ACPI_RESET_PORT));
        assert_eq!(f[128], ACPI_RESET_VALUE);
        // SLEEP_CONTROL_REG (244) and SLEEP_STATUS_REG (256).
        assert_eq!(&f[244..248], &[1, 8, 0, 1]);
        assert_eq!(u64_at(&f, 248), u64::from(ACPI_SLEEP_CONTROL_PORT));
        assert_eq!(&f[256..260], &[1, 8, 0, 1]);
        assert_eq!(u64_at(&f, 260), u64::from(ACPI_SLEEP_STATUS_PORT));
        assert_eq!(&f[268..276], &HYPERVISOR_VENDOR_ID);
        // 32-bit DSDT pointer is 0; X_DSDT (140) points at the DSDT.
        assert_eq!(u32_at(&f, 40), 0);
        let x_dsdt = u64_at(&f, 140);
        let d = table(&m, x_dsdt, b"DSDT");
        assert_eq!(d[8], DSDT_REVISION);
        // No SCI, no PM1 blocks in HW-reduced mode.
        assert_eq!(u16_at(&f, 46), 0);
        assert_eq!(u32_at(&f, 56), 0);
    }

    #[test]
    fn madt_entries() {
        for n in [1u8, 4, 64] {
            let m = mem();
            let cfg = AcpiConfig {
                num_cpus: n,
                ..Default::default()
            };
            let rsdp = create_acpi_tables(&m, &cfg).unwrap();
            let madt = walk(&m, rsdp)
                .into_iter()
                .map(|(_, t)| t)
                .find(|t| &t[..4] == b"APIC")
                .unwrap();
            assert_eq!(madt[8], MADT_REVISION);
            assert_eq!(u32_at(&madt, 36), APIC_START as u32);
            assert_eq!(u32_at(&madt, 40), MADT_FLAGS);
            let mut off = 44;
            let mut lapics = Vec::new();
            let mut ioapics = Vec::new();
            let mut isos = Vec::new();
            let mut nmis = Vec::new();
            while off < madt.len() {
                let (ty, len) = (madt[off], madt[off + 1] as usize);
                let e = &madt[off..off + len];
                match ty {
                    0 => {
                        assert_eq!(len, 8);
                        lapics.push((e[2], e[3], u32_at(e, 4)));
                    }
                    1 => {
                        assert_eq!(len, 12);
                        ioapics.push((e[2], u32_at(e, 4), u32_at(e, 8)));
                    }
                    2 => {
                        assert_eq!(len, 10);
                        isos.push((e[2], e[3], u32_at(e, 4), u16_at(e, 8)));
                    }
                    4 => {
                        assert_eq!(len, 6);
                        nmis.push((e[2], u16_at(e, 3), e[5]));
                    }
                    t => panic!("unexpected MADT entry type {t}"),
                }
                off += len;
            }
            assert_eq!(off, madt.len());
            let want: Vec<_> = (0..n).map(|i| (i, i, 1)).collect();
            assert_eq!(lapics, want);
            assert_eq!(ioapics, vec![(n, IOAPIC_START as u32, 0)]);
            assert!(lapics.iter().all(|l| l.1 != ioapics[0].0));
            assert_eq!(isos, vec![(0, 0, 2, 0), (0, 4, 4, 0x5)]);
            assert_eq!(nmis, vec![(0xff, 0, 1)]);
        }
    }

    #[test]
    fn mcfg_entry() {
        let m = mem();
        let rsdp = create_acpi_tables(&m, &config(false)).unwrap();
        let mcfg = walk(&m, rsdp)
            .into_iter()
            .map(|(_, t)| t)
            .find(|t| &t[..4] == b"MCFG")
            .unwrap();
        assert_eq!(mcfg.len(), 36 + 8 + 16);
        assert_eq!(u64_at(&mcfg, 44), ECAM_START);
        assert_eq!(u16_at(&mcfg, 52), 0, "segment");
        assert_eq!((mcfg[54], mcfg[55]), (0, 0), "bus range");
    }

    #[test]
    fn viot_layout_one_iommu_two_endpoints() {
        let m = mem();
        let rsdp = create_acpi_tables(&m, &config(true)).unwrap();
        let v = walk(&m, rsdp)
            .into_iter()
            .map(|(_, t)| t)
            .find(|t| &t[..4] == b"VIOT")
            .unwrap();
        assert_eq!(v[8], VIOT_REVISION);
        assert_eq!(v.len(), 48 + 16 + 2 * 24);
        assert_eq!(u16_at(&v, 36), 3, "node count");
        assert_eq!(u16_at(&v, 38), 48, "node offset");
        assert_eq!(&v[40..48], &[0; 8]);
        // virtio-pci IOMMU node.
        let mut want = vec![3, 0, 16, 0, 0, 0, 0x08, 0x00];
        want.extend_from_slice(&[0; 8]);
        assert_eq!(&v[48..64], &want[..]);
        // PCI range nodes, one per endpoint.
        for (i, bdf) in [0x10u16, 0x18].into_iter().enumerate() {
            let n = &v[64 + i * 24..64 + (i + 1) * 24];
            let mut want = vec![1, 0, 24, 0];
            want.extend_from_slice(&u32::from(bdf).to_le_bytes());
            want.extend_from_slice(&[0, 0, 0, 0]); // segments 0..0
            want.extend_from_slice(&bdf.to_le_bytes());
            want.extend_from_slice(&bdf.to_le_bytes());
            want.extend_from_slice(&48u16.to_le_bytes());
            want.extend_from_slice(&[0; 6]);
            assert_eq!(n, &want[..], "endpoint {bdf:#x}");
        }
    }

    #[test]
    fn viot_rejects_bad_endpoints() {
        let mut cfg = config(true);
        cfg.viot.as_mut().unwrap().endpoints = vec![0x10, 0x10];
        assert!(matches!(
            build_acpi_tables(&cfg),
            Err(AcpiError::InvalidViotEndpoint(0x10))
        ));
        cfg.viot.as_mut().unwrap().endpoints = vec![0x08];
        assert!(matches!(
            build_acpi_tables(&cfg),
            Err(AcpiError::InvalidViotEndpoint(0x08))
        ));
    }

    fn contains(hay: &[u8], needle: &[u8]) -> bool {
        hay.windows(needle.len()).any(|w| w == needle)
    }

    fn dsdt_bytes(cfg: &AcpiConfig) -> Vec<u8> {
        let t = build_acpi_tables(cfg).unwrap();
        let i = t.tables.iter().find(|i| &i.signature == b"DSDT").unwrap();
        let off = (i.addr.0 - ACPI_START) as usize;
        t.bytes[off..off + i.len].to_vec()
    }

    #[test]
    fn dsdt_contents() {
        let d = dsdt_bytes(&config(true));
        assert_eq!(sum(&d), 0);
        // Names and objects we rely on.
        for needle in [
            &b"PCI0"[..],
            b"MBRD",
            b"COM1",
            b"_CRS",
            b"_PRT",
            b"_SEG",
            b"_BBN",
            b"_CCA",
            b"IOMU",
            b"NIC0",
        ] {
            assert!(contains(&d, needle), "{}", String::from_utf8_lossy(needle));
        }
        // Name(_S5_, Package(4) { 5, 5, 0, 0 }).
        let s5 = [
            0x08, b'_', b'S', b'5', b'_', 0x12, 8, 4, 0x0a, 5, 0x0a, 5, 0, 0,
        ];
        assert!(contains(&d, &s5));
        // EISA IDs: PNP0A08, PNP0A03, PNP0C02, PNP0501 (DWord-encoded).
        for id in [0x080a_d041u32, 0x030a_d041, 0x020c_d041, 0x0105_d041] {
            let mut n = vec![0x0c];
            n.extend_from_slice(&id.to_le_bytes());
            assert!(contains(&d, &n), "EISA id {id:#x}");
        }
        // Memory32Fixed(ReadWrite, ECAM_START, ECAM_SIZE).
        let mut m32 = vec![0x86, 9, 0, 1];
        m32.extend_from_slice(&(ECAM_START as u32).to_le_bytes());
        m32.extend_from_slice(&(ECAM_SIZE as u32).to_le_bytes());
        assert!(contains(&d, &m32));
        // IO(Decode16, 0x3f8, 0x3f8, 1, 8), IO(0xcf8,…,8), IO(0x600,…,3).
        assert!(contains(&d, &[0x47, 1, 0xf8, 3, 0xf8, 3, 1, 8]));
        assert!(contains(&d, &[0x47, 1, 0xf8, 0xc, 0xf8, 0xc, 1, 8]));
        assert!(contains(&d, &[0x47, 1, 0, 6, 0, 6, 1, 3]));
        // Interrupt(ResourceConsumer, Edge, ActiveHigh, Exclusive) { 4 }.
        assert!(contains(&d, &[0x89, 6, 0, 0x03, 1, 4, 0, 0, 0]));
        // _ADR of NIC0 (device 2, function 0) = 0x00020000.
        assert!(contains(&d, &[b'_', b'A', b'D', b'R', 0x0c, 0, 0, 2, 0]));
    }

    #[test]
    fn dsdt_device_validation() {
        let mut cfg = config(false);
        cfg.pci_devices[0].name = "nic".into();
        assert!(matches!(
            build_acpi_tables(&cfg),
            Err(AcpiError::InvalidDeviceName(_))
        ));
        let mut cfg = config(false);
        cfg.pci_devices[1].name = "IOMU".into();
        assert!(matches!(
            build_acpi_tables(&cfg),
            Err(AcpiError::DuplicateDevice(_))
        ));
        let mut cfg = config(false);
        cfg.pci_devices[1].bdf = 0x100;
        assert!(matches!(
            build_acpi_tables(&cfg),
            Err(AcpiError::NotOnBus0 { bdf: 0x100 })
        ));
    }

    #[test]
    fn config_limits() {
        let cfg = AcpiConfig::default();
        assert!(matches!(build_acpi_tables(&cfg), Err(AcpiError::NoCpus)));
        let cfg = AcpiConfig {
            num_cpus: 254,
            ..Default::default()
        };
        let t = build_acpi_tables(&cfg).unwrap();
        assert!(t.bytes.len() as u64 <= ACPI_MAX_SIZE);
        let cfg = AcpiConfig {
            num_cpus: 255,
            ..Default::default()
        };
        assert!(matches!(
            build_acpi_tables(&cfg),
            Err(AcpiError::TooManyCpus(255))
        ));
    }

    #[test]
    fn write_fails_without_memory() {
        let m = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x8_0000)]).unwrap();
        assert!(matches!(
            create_acpi_tables(&m, &config(true)),
            Err(AcpiError::GuestMemory(_))
        ));
    }

    #[test]
    fn poweroff_value() {
        assert_eq!(SLEEP_CONTROL_POWEROFF, 0x34);
        assert!(sleep_control_is_poweroff(0x34));
        assert!(!sleep_control_is_poweroff(0x14), "SLP_EN clear");
        assert!(!sleep_control_is_poweroff((3 << 2) | SLP_EN), "S3");
    }

    #[test]
    fn intx_swizzle() {
        assert_eq!(pci_intx_gsi(0, 0), 16);
        assert_eq!(pci_intx_gsi(1, 0), 17);
        assert_eq!(pci_intx_gsi(3, 1), 16);
        assert!((0..32).all(|s| (0..4).all(|p| (16..20).contains(&pci_intx_gsi(s, p)))));
    }

    /// Dumps the DSDT for a manual `iasl -d` check:
    /// `NETMEM_DUMP_DSDT=/tmp/dsdt.aml cargo test -p vmm arch::acpi::tests::dump_dsdt`.
    #[test]
    fn dump_dsdt() {
        if let Ok(path) = std::env::var("NETMEM_DUMP_DSDT") {
            let t = build_acpi_tables(&config(true)).unwrap();
            for i in &t.tables {
                let off = (i.addr.0 - ACPI_START) as usize;
                let name = String::from_utf8_lossy(&i.signature).to_lowercase();
                let p = path.replace("dsdt", &name);
                std::fs::write(p, &t.bytes[off..off + i.len]).unwrap();
            }
        }
    }
}
