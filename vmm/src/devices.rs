//! The machine's device set: the PCI root complex with its front ends (CF8,
//! ECAM, BAR windows) and the virtio functions — the agent's console, a
//! virtio-rng behind the virtio-iommu, and the virtio-iommu itself — plus
//! the IOMMU model and DMA audit trail they share.

use std::collections::BTreeMap;
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};

use vm_memory::GuestMemoryMmap;

use crate::arch::acpi::{PciSlotInfo, ViotConfig};
use crate::bus::Bus;
use crate::device::MsiSink;
use crate::dma::{Access, Dma, DmaFault};
use crate::iommu::{Audit, AuditConfig, DmaReport, IommuConfig, IommuDma, IommuState};
use crate::irq::IrqRouter;
use crate::layout::*;
use crate::pci::bus::SharedPciDevice;
use crate::pci::{PciBdf, PciBus, PciConfigIo, PciConfigMmio, PciMmioWindow};
use crate::virtio::{Console, Rng, VirtioDevice, VirtioIommu, VirtioPciDevice};

/// PCI slots of the fixed devices (00:SS.0).
pub const CONSOLE_SLOT: u8 = 1;
pub const RNG_SLOT: u8 = 2;
/// The virtio-iommu; its BDF is the VIOT's IOMMU node.
pub const IOMMU_SLOT: u8 = 3;

/// Audit tag of DMA issued through [`Devices::dma_probe`].
pub const TAG_PROBE: &str = "probe";

/// Why [`Devices::dma_probe`] did not go through.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DmaProbeError {
    #[error("no IOMMU endpoint at {0}")]
    NoDevice(PciBdf),
    #[error(transparent)]
    Fault(#[from] DmaFault),
}

pub struct Devices {
    pci: Arc<PciBus>,
    agent_host: UnixStream,
    slots: Vec<PciSlotInfo>,
    iommu: Arc<IommuState>,
    iommu_bdf: u16,
    /// DMA handles of the devices behind the IOMMU, by BDF.
    dma: BTreeMap<u16, Arc<IommuDma>>,
    mem: GuestMemoryMmap<()>,
    router: Arc<IrqRouter>,
}

fn add_virtio(
    pci: &PciBus,
    router: &Arc<IrqRouter>,
    mem: &GuestMemoryMmap<()>,
    slot: u8,
    dev: Box<dyn VirtioDevice>,
    dma: Option<Arc<IommuDma>>,
) -> Result<u16, String> {
    let nvec = VirtioPciDevice::msix_vectors(dev.as_ref());
    let msi: Arc<dyn MsiSink> = router.msi_group(nvec).map_err(|e| e.to_string())?;
    let mut d = VirtioPciDevice::new(dev, mem.clone(), msi).map_err(|e| e.to_string())?;
    if let Some(dma) = dma {
        d.set_iommu(dma);
    }
    let bdf = pci
        .add_device_at(slot, Arc::new(Mutex::new(d)))
        .map_err(|e| e.to_string())?;
    Ok(bdf.to_u16())
}

impl Devices {
    pub fn build(
        mem: &GuestMemoryMmap<()>,
        router: &Arc<IrqRouter>,
        pio: &mut Bus,
        mmio: &mut Bus,
    ) -> Result<Devices, String> {
        let pci = Arc::new(PciBus::new());
        let audit = Arc::new(Audit::new(AuditConfig::default()));
        let iommu = IommuState::new(IommuConfig::default(), audit)
            .map_err(|e| format!("virtio-iommu: {e}"))?;
        let mut dma = BTreeMap::new();
        let (console, agent_host) = Console::new().map_err(|e| format!("virtio-console: {e}"))?;
        let mut slots = Vec::new();
        // The console (agent channel) stays outside the IOMMU.
        let bdf = add_virtio(&pci, router, mem, CONSOLE_SLOT, Box::new(console), None)?;
        slots.push(PciSlotInfo {
            bdf,
            name: "VCON".into(),
        });
        let rng_bdf = PciBdf::new(0, RNG_SLOT, 0).to_u16();
        let rng_dma = Arc::new(IommuDma::new(mem.clone(), &iommu, rng_bdf));
        let bdf = add_virtio(
            &pci,
            router,
            mem,
            RNG_SLOT,
            Box::new(Rng::new(true)),
            Some(rng_dma.clone()),
        )?;
        debug_assert_eq!(bdf, rng_bdf);
        dma.insert(bdf, rng_dma);
        slots.push(PciSlotInfo {
            bdf,
            name: "VRNG".into(),
        });
        let iommu_bdf = add_virtio(
            &pci,
            router,
            mem,
            IOMMU_SLOT,
            Box::new(VirtioIommu::new(iommu.clone())),
            None,
        )?;
        slots.push(PciSlotInfo {
            bdf: iommu_bdf,
            name: "VIOM".into(),
        });

        let e = |e: crate::bus::BusError| e.to_string();
        pio.insert(
            Arc::new(Mutex::new(PciConfigIo::new(pci.clone()))),
            u64::from(PCI_CONFIG_IO_PORT),
            PCI_CONFIG_IO_SIZE,
        )
        .map_err(e)?;
        mmio.insert(
            Arc::new(Mutex::new(PciConfigMmio::new(pci.clone()))),
            ECAM_START,
            ECAM_SIZE,
        )
        .map_err(e)?;
        mmio.insert(
            Arc::new(Mutex::new(PciMmioWindow::new(pci.clone()))),
            MMIO32_START,
            MMIO32_SIZE,
        )
        .map_err(e)?;
        mmio.insert(
            Arc::new(Mutex::new(PciMmioWindow::new(pci.clone()))),
            MMIO64_START,
            MMIO64_SIZE,
        )
        .map_err(e)?;
        Ok(Devices {
            pci,
            agent_host,
            slots,
            iommu,
            iommu_bdf,
            dma,
            mem: mem.clone(),
            router: router.clone(),
        })
    }

    pub fn agent_host_end(&self) -> std::io::Result<UnixStream> {
        self.agent_host.try_clone()
    }

    pub fn acpi_slots(&self) -> Vec<PciSlotInfo> {
        self.slots.clone()
    }

    /// Put another PCI function behind the virtio-iommu at 00:`slot`.0
    /// (e.g. a sim-nic, which is wired from a crate above `vmm`): registers
    /// the endpoint, builds its audited DMA handle and an MSI sink of
    /// `msix_vectors` vectors, and lets `make` build the function. Call it
    /// before the ACPI tables are written, so the VIOT lists the endpoint.
    pub fn add_iommu_function(
        &mut self,
        slot: u8,
        name: &str,
        msix_vectors: u16,
        make: impl FnOnce(Arc<dyn Dma>, Arc<dyn MsiSink>) -> Result<SharedPciDevice, String>,
    ) -> Result<u16, String> {
        let bdf = PciBdf::new(0, slot, 0).to_u16();
        if self.pci.device(PciBdf::from_u16(bdf)).is_some() {
            return Err(format!("PCI slot {slot} is already in use"));
        }
        let msi: Arc<dyn MsiSink> = self
            .router
            .msi_group(msix_vectors)
            .map_err(|e| e.to_string())?;
        let dma = Arc::new(IommuDma::new(self.mem.clone(), &self.iommu, bdf));
        let dev = make(dma.clone(), msi)?;
        let got = self
            .pci
            .add_device_at(slot, dev)
            .map_err(|e| e.to_string())?
            .to_u16();
        debug_assert_eq!(got, bdf);
        self.dma.insert(bdf, dma);
        self.slots.push(PciSlotInfo {
            bdf,
            name: name.to_string(),
        });
        Ok(bdf)
    }

    /// The virtio-iommu and every endpoint registered with it.
    pub fn viot(&self) -> Option<ViotConfig> {
        Some(ViotConfig {
            iommu_bdf: self.iommu_bdf,
            endpoints: self.iommu.endpoints(),
        })
    }

    /// The IOMMU model (domains, translation, audit trail).
    pub fn iommu(&self) -> &Arc<IommuState> {
        &self.iommu
    }

    /// The DMA audit trail (stream it with `drain_since`).
    pub fn audit(&self) -> &Arc<Audit> {
        self.iommu.audit()
    }

    /// The DMA handle of the IOMMU endpoint at `bdf`.
    pub fn iommu_dma(&self, bdf: u16) -> Option<&Arc<IommuDma>> {
        self.dma.get(&bdf)
    }

    /// Per-device DMA counters, IOMMU faults and fault-event counts.
    pub fn dma_report(&self) -> DmaReport {
        self.iommu.report()
    }

    /// Test hook: make the device at `bdf` issue a DMA of `len` bytes at
    /// `iova` through its endpoint — translated, permission- and
    /// RAM-checked, audited (tag [`TAG_PROBE`]) and, if refused, reported
    /// to the guest as a fault event, like any device access. No data moves.
    pub fn dma_probe(
        &self,
        bdf: u16,
        iova: u64,
        len: u64,
        access: Access,
    ) -> Result<(), DmaProbeError> {
        let dma = self
            .dma
            .get(&bdf)
            .ok_or(DmaProbeError::NoDevice(PciBdf::from_u16(bdf)))?;
        Ok(dma.probe(iova, len, access, TAG_PROBE)?)
    }

    pub fn pci(&self) -> &Arc<PciBus> {
        &self.pci
    }

    /// Stop device worker threads (reset every function).
    pub fn shutdown(&self) {
        let r = self.dma_report();
        tracing::info!(
            by_device = ?r.by_device,
            iommu_faults = r.iommu_faults.len(),
            fault_events_sent = r.fault_events_sent,
            fault_events_dropped = r.fault_events_dropped,
            audit_records = r.audit_next_seq,
            "DMA report at shutdown"
        );
        self.pci.reset();
    }
}
