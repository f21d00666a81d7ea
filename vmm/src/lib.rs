//! netmem-lab's virtual machine monitor: guest memory, kernel boot, buses,
//! PCI with ECAM and MSI-X, ACPI, virtio-pci devices and the engines that run
//! a machine on host KVM or nested inside an L1 guest.

pub mod arch;
pub mod boot;
pub mod bus;
pub mod device;
pub mod devices;
pub mod dma;
pub mod engine;
pub mod iommu;
pub mod irq;
pub mod layout;
pub mod machine;
pub mod pci;
pub mod power;
pub mod serial;
pub mod vcpu;
pub mod virtio;
