//! gve-compatible DQO-RDA NIC model, wires, fault hooks, pcap (no KVM inside).
//!
//! [`GveDevice`] is a PCI function the stock Linux `gve` driver binds to and
//! runs in the DQO-RDA queue format (header split, RSS, flow steering,
//! TSO/checksum offload). Every DMA goes through the [`vmm::dma::Dma`]
//! handle it is given. Frames leave through a [`NicPort`], which a
//! [`Wire`] cables to another NIC, to itself or to a [`HostPort`].
//!
//! The device-side protocol is written down in `docs/gve-device-spec.md`.
//!
//! # Wiring it into a machine
//!
//! ```no_run
//! use std::sync::Arc;
//! use sim_nic::{GveConfig, GveDevice, Wire, WireFaults, WireOptions};
//! # fn dma_for(_bdf: u16) -> Arc<dyn vmm::dma::Dma> { unimplemented!() }
//! # fn msi_for(_bdf: u16, _vectors: u16) -> Arc<dyn vmm::device::MsiSink> { unimplemented!() }
//! let cfg_a = GveConfig { name: "nic0".into(), mac: [2, 0, 0, 0, 0, 1], ..GveConfig::default() };
//! let cfg_b = GveConfig { name: "nic1".into(), mac: [2, 0, 0, 0, 0, 2], ..GveConfig::default() };
//! // Size each function's MSI sink for `cfg.msix_vectors()` (2·queues + 1).
//! let (a, port_a) = GveDevice::new(cfg_a.clone(), dma_for(0x18), msi_for(0x18, cfg_a.msix_vectors()))?;
//! let (b, port_b) = GveDevice::new(cfg_b.clone(), dma_for(0x20), msi_for(0x20, cfg_b.msix_vectors()))?;
//! let (stats_a, stats_b) = (a.handle(), b.handle());
//! // `a` and `b` go on the PCI bus as `Arc<Mutex<dyn PciDevice>>`.
//! let wire = Wire::connect(port_a, port_b, WireOptions {
//!     pcap: Some("nic0-nic1.pcap".into()),
//!     faults: WireFaults::none(),
//! })?;
//! // … run the guest …
//! println!("{:?} {:?} {:?}", stats_a.stats(), stats_b.stats(), wire.counters());
//! stats_a.shutdown(); // joins the worker thread (dropping the device does too)
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Each NIC runs one worker thread that moves packets between its rings and
//! the wire; MMIO handlers only record doorbells (admin commands run in the
//! MMIO write itself). `MsiSink::trigger` is called with the device's state
//! lock held, so it must not call back into the device or take the PCI
//! bus lock. Because `sim-nic` depends on the `vmm` library, the wiring has
//! to live in a crate above both (the CLI or `scenarios`), not in `vmm`.

pub mod admin;
pub mod adminq;
pub mod desc;
pub mod device;
pub mod faults;
pub mod fuzz;
pub mod packet;
pub mod pcap;
pub mod regs;
pub mod rsc;
pub mod rss;
pub mod rx;
pub mod stats;
pub mod testing;
pub mod tx;
pub mod wire;

pub use device::{DmaFaultAt, GveConfig, GveDevice, GveError, NicHandle};
pub use faults::{FaultCounters, FaultDirection, LinkWindow, NicFault, QueueDir, WireFaults};
pub use stats::{NicStats, Refusal, RefusalKind};
pub use wire::{HostPort, NicPort, Wire, WireError, WireOptions};
