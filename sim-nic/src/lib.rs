//! gve-compatible DQO-RDA NIC model, wires, fault hooks, pcap (no KVM inside).
//!
//! [`GveDevice`] is a PCI function the stock Linux `gve` driver binds to and
//! runs in the DQO-RDA queue format (header split, RSS, flow steering,
//! TSO/checksum offload). Every DMA goes through the [`vmm::dma::Dma`]
//! handle it is given. Frames leave through a [`NicPort`], which a
//! [`Wire`] cables to another NIC, to itself or to a [`HostPort`].
//!
//! The device-side protocol is written down in `docs/gve-device-spec.md`.

pub mod admin;
pub mod adminq;
pub mod desc;
pub mod device;
pub mod faults;
pub mod fuzz;
pub mod packet;
pub mod pcap;
pub mod regs;
pub mod rss;
pub mod rx;
pub mod stats;
pub mod testing;
pub mod tx;
pub mod wire;

pub use device::{GveConfig, GveDevice, GveError, NicHandle};
pub use faults::{FaultCounters, FaultDirection, LinkWindow, WireFaults};
pub use stats::{NicStats, Refusal, RefusalKind};
pub use wire::{HostPort, NicPort, Wire, WireError, WireOptions};
