//! PCI identity, BAR layout and the BAR0 register file of the gve device.
//!
//! Every fact cites the 7.3 driver file it comes from
//! (`drivers/net/ethernet/google/gve/`). BAR0 registers are big-endian
//! (`ioread32be`/`iowrite32be`/`iowrite16be`, gve_adminq.c, gve_main.c).

/// PCI vendor id of Google (gve.h `PCI_VENDOR_ID_GOOGLE`).
pub const PCI_VENDOR_ID_GOOGLE: u16 = 0x1ae0;
/// gVNIC device id, the only entry of gve_main.c `gve_id_table`.
pub const PCI_DEV_ID_GVNIC: u16 = 0x0042;
/// Subsystem id documented in gve.rst (not matched by the driver).
pub const PCI_SUBSYSTEM_ID_GVNIC: u16 = 0x0058;
/// Class code: network controller, Ethernet (gve.rst: "0x200").
pub const PCI_CLASS_ETHERNET: u32 = 0x02_00_00;
/// Revision >= 1 selects the base/length/driver_status admin-queue
/// interface; 0 the legacy PFN interface (gve_adminq.c `gve_adminq_alloc`,
/// `gve_adminq_release`).
pub const DEFAULT_REVISION: u8 = 0x01;

/// BAR holding the register file (gve.h `GVE_REGISTER_BAR`).
pub const REGISTER_BAR: usize = 0;
/// BAR holding the MSI-X table and PBA (gve.rst "Bar1 - MSI-X vector table").
pub const MSIX_BAR: usize = 1;
/// BAR holding the doorbells (gve.h `GVE_DOORBELL_BAR`).
pub const DOORBELL_BAR: usize = 2;

/// Size of BAR0 (only 0x2a bytes are defined).
pub const REGISTER_BAR_SIZE: u64 = 0x1000;
/// Size of BAR2: 1024 32-bit doorbells.
pub const DOORBELL_BAR_SIZE: u64 = 0x1000;
/// Offset of the MSI-X table inside BAR1.
pub const MSIX_TABLE_OFFSET: u64 = 0;
/// Offset of the PBA inside BAR1.
pub const MSIX_PBA_OFFSET: u64 = 0x2000;
/// Size of BAR1 (table up to 512 vectors, then the PBA).
pub const MSIX_BAR_SIZE: u64 = 0x4000;

// ---- BAR0 register offsets: gve_register.h `struct gve_registers` ----
/// `__be32 device_status` (device → driver status bits).
pub const REG_DEVICE_STATUS: u64 = 0x00;
/// `__be32 driver_status` (driver → device command bits, revision >= 1).
pub const REG_DRIVER_STATUS: u64 = 0x04;
/// `__be32 max_tx_queues`, read once in gve_main.c `gve_probe`.
pub const REG_MAX_TX_QUEUES: u64 = 0x08;
/// `__be32 max_rx_queues`, read once in gve_main.c `gve_probe`.
pub const REG_MAX_RX_QUEUES: u64 = 0x0c;
/// `__be32 adminq_pfn` (revision 0): AQ bus address / PAGE_SIZE, 0 = reset.
pub const REG_ADMINQ_PFN: u64 = 0x10;
/// `__be32 adminq_doorbell`: free-running producer count.
pub const REG_ADMINQ_DOORBELL: u64 = 0x14;
/// `__be32 adminq_event_counter`: free-running completion count.
pub const REG_ADMINQ_EVENT_COUNTER: u64 = 0x18;
/// `u8 driver_version` after `u8 reserved[3]`; written byte by byte with
/// "GVE-1.0.0\n" (gve_main.c `gve_write_version`).
pub const REG_DRIVER_VERSION: u64 = 0x1f;
/// `__be32 adminq_base_address_hi` (revision >= 1).
pub const REG_ADMINQ_BASE_HI: u64 = 0x20;
/// `__be32 adminq_base_address_lo` (revision >= 1).
pub const REG_ADMINQ_BASE_LO: u64 = 0x24;
/// `__be16 adminq_length` (revision >= 1), written with `iowrite16be`.
pub const REG_ADMINQ_LENGTH: u64 = 0x28;

// ---- gve_register.h `enum gve_device_status_flags` ----
/// Device asks the driver for a reset (handled by gve_main.c
/// `gve_handle_status` → `gve_reset(priv, false)`).
pub const DEVICE_STATUS_RESET_MASK: u32 = 1 << 1;
/// Link up; read by gve_main.c `gve_service_task` and
/// `gve_turnup_and_check_status`.
pub const DEVICE_STATUS_LINK_STATUS_MASK: u32 = 1 << 2;
/// Device asks for a stats report (gve_main.c `gve_handle_status`).
pub const DEVICE_STATUS_REPORT_STATS_MASK: u32 = 1 << 3;
/// Reset completed (polled by gve_adminq.c `gve_adminq_release`, rev >= 1).
pub const DEVICE_STATUS_DEVICE_IS_RESET: u32 = 1 << 4;

// ---- gve_register.h `enum gve_driver_status_flags` ----
/// Admin queue configured, start (gve_adminq.c `gve_adminq_alloc`).
pub const DRIVER_STATUS_RUN_MASK: u32 = 1 << 0;
/// Reset request (gve_adminq.c `gve_adminq_release`).
pub const DRIVER_STATUS_RESET_MASK: u32 = 1 << 1;

/// Guest page size used by revision 0 (`adminq_bus_addr / PAGE_SIZE`,
/// x86-64).
pub const GUEST_PAGE_SIZE: u64 = 4096;
/// The driver's admin queue size (gve.h `GVE_ADMINQ_BUFFER_SIZE`).
pub const ADMINQ_BUFFER_SIZE: u64 = 4096;
/// Size of one admin queue command (gve_adminq.h `union gve_adminq_command`).
pub const ADMINQ_CMD_SIZE: u64 = 64;

/// Minimum MSI-X vectors the driver accepts (gve.h `GVE_MIN_MSIX`).
pub const GVE_MIN_MSIX: u16 = 3;

// ---- BAR2 doorbell layout (device-chosen indices; the driver writes
// `db_bar2[index]`, gve_dqo.h `gve_write_irq_doorbell_dqo`,
// `gve_tx_put_doorbell_dqo`, gve_rx_dqo.c `gve_rx_write_doorbell_dqo`) ----
/// Number of 32-bit doorbells in BAR2.
pub const NUM_DOORBELLS: u32 = (DOORBELL_BAR_SIZE / 4) as u32;
/// IRQ doorbell of notification block `b` is at index `IRQ_DB_BASE + b`.
pub const IRQ_DB_BASE: u32 = 0;
/// TX queue `q`'s doorbell is at index `TX_DB_BASE + q`.
pub const TX_DB_BASE: u32 = 256;
/// RX queue `q`'s buffer-queue doorbell is at index `RX_DB_BASE + q`.
pub const RX_DB_BASE: u32 = 512;
/// Largest number of queues per direction this layout supports.
pub const MAX_QUEUES: u16 = 128;

// ---- gve_dqo.h IRQ doorbell bits ----
/// Enable (re-arm) the block's interrupt.
pub const ITR_ENABLE_BIT_DQO: u32 = 1 << 0;
/// Clear pending bit; defined but never written by the driver.
pub const ITR_CLEAR_PBA_BIT_DQO: u32 = 1 << 1;
/// ITR index field (bits 4:3); 3 = `GVE_ITR_NO_UPDATE_DQO >> 3`.
pub const ITR_INDEX_SHIFT: u32 = 3;
/// ITR index meaning "keep the current interval".
pub const ITR_INDEX_NO_UPDATE: u32 = 3;
/// `GVE_ITR_INTERVAL_DQO_SHIFT`.
pub const ITR_INTERVAL_SHIFT: u32 = 5;
/// `GVE_ITR_INTERVAL_DQO_MASK` (12 bits, 2 µs units).
pub const ITR_INTERVAL_MASK: u32 = (1 << 12) - 1;
