//! The machine's device set: the PCI root complex with its front ends (CF8,
//! ECAM, BAR windows) and the virtio functions — the agent's console and a
//! virtio-rng.

use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};

use vm_memory::GuestMemoryMmap;

use crate::arch::acpi::{PciSlotInfo, ViotConfig};
use crate::bus::Bus;
use crate::device::MsiSink;
use crate::irq::IrqRouter;
use crate::layout::*;
use crate::pci::{PciBus, PciConfigIo, PciConfigMmio, PciMmioWindow};
use crate::virtio::{Console, Rng, VirtioDevice, VirtioPciDevice};

/// PCI slots of the fixed devices (00:SS.0).
pub const CONSOLE_SLOT: u8 = 1;
pub const RNG_SLOT: u8 = 2;

pub struct Devices {
    pci: Arc<PciBus>,
    agent_host: UnixStream,
    slots: Vec<PciSlotInfo>,
}

fn add_virtio(
    pci: &PciBus,
    router: &Arc<IrqRouter>,
    mem: &GuestMemoryMmap<()>,
    slot: u8,
    dev: Box<dyn VirtioDevice>,
) -> Result<u16, String> {
    let nvec = VirtioPciDevice::msix_vectors(dev.as_ref());
    let msi: Arc<dyn MsiSink> = router.msi_group(nvec).map_err(|e| e.to_string())?;
    let d = VirtioPciDevice::new(dev, mem.clone(), msi).map_err(|e| e.to_string())?;
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
        let (console, agent_host) = Console::new().map_err(|e| format!("virtio-console: {e}"))?;
        let mut slots = Vec::new();
        let bdf = add_virtio(&pci, router, mem, CONSOLE_SLOT, Box::new(console))?;
        slots.push(PciSlotInfo {
            bdf,
            name: "VCON".into(),
        });
        let bdf = add_virtio(&pci, router, mem, RNG_SLOT, Box::new(Rng::new(false)))?;
        slots.push(PciSlotInfo {
            bdf,
            name: "VRNG".into(),
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
        })
    }

    pub fn agent_host_end(&self) -> std::io::Result<UnixStream> {
        self.agent_host.try_clone()
    }

    pub fn acpi_slots(&self) -> Vec<PciSlotInfo> {
        self.slots.clone()
    }

    pub fn viot(&self) -> Option<ViotConfig> {
        None
    }

    pub fn pci(&self) -> &Arc<PciBus> {
        &self.pci
    }

    /// Stop device worker threads (reset every function).
    pub fn shutdown(&self) {
        self.pci.reset();
    }
}
