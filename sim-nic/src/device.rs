//! The gve PCI function: configuration space, BAR0 registers, BAR1 MSI-X,
//! BAR2 doorbells, reset, notification blocks, and the worker that moves
//! packets between the rings and the wire.
//!
//! Locking: one mutex (`Shared::state`) covers all device state; every DMA
//! happens while it is held, so once an MMIO write that destroys a queue or
//! resets the device returns, the device never touches the revoked memory
//! again. Lock order is state → msix; BAR1/config accesses take only msix.
//! The wire's locks are leaves: a NIC never takes another NIC's state lock.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use vmm::device::MsiSink;
use vmm::dma::{Dma, DmaTag};
use vmm::pci::PciDevice;
use vmm::pci::configuration::{BarKind, PciConfiguration, PciHeader};
use vmm::pci::msix::{MSIX_CTRL_ENABLE, MSIX_CTRL_FUNCTION_MASK, MsixConfig};

use crate::adminq::{
    DeviceDescription, SUP_BUFFER_SIZES_MASK, SUP_FLOW_STEERING_MASK, SUP_JUMBO_FRAMES_MASK,
    SUP_MODIFY_RING_MASK, SUP_RSS_CONFIG_MASK,
};
use crate::faults::NicFault;
use crate::regs::*;
use crate::rss::{FlowTable, RssConfig};
use crate::rx::RxQueue;
use crate::stats::{Counters, NicStats, Refusal, RefusalKind, RefusalLog};
use crate::tx::TxQueue;
use crate::wire::{NicPort, PortShared, Signal, lock};

/// Static configuration of one emulated NIC.
#[derive(Clone, Debug)]
pub struct GveConfig {
    /// Used in logs and thread names.
    pub name: String,
    pub mac: [u8; 6],
    /// Queues per direction the device supports (`max_tx_queues`,
    /// `max_rx_queues`); MSI-X vectors = 2 · num_queues + 1.
    pub num_queues: u16,
    /// DESCRIBE_DEVICE `default_num_queues` (0 = use all).
    pub default_num_queues: u16,
    /// DESCRIBE_DEVICE `mtu` (also the initial MTU).
    pub mtu: u16,
    /// Advertise JUMBO_FRAMES with this max MTU. The driver then also
    /// starts with this MTU (gve_main.c `gve_init_priv`: `mtu = max_mtu`).
    pub jumbo_max_mtu: Option<u16>,
    /// Default ring sizes (powers of two).
    pub tx_ring_size: u16,
    pub rx_ring_size: u16,
    /// Advertise MODIFY_RING with these (min, max) ring sizes.
    pub ring_size_range: Option<(u16, u16)>,
    /// BUFFER_SIZES `packet_buffer_size`: largest RX buffer (2048 or 4096).
    pub packet_buffer_size: u16,
    /// BUFFER_SIZES `header_buffer_size` (0 disables header split).
    pub header_buffer_size: u16,
    /// FLOW_STEERING `max_flow_rules` (0 disables the option).
    pub max_flow_rules: u32,
    /// Advertise RSS_CONFIG (device-held RSS, QUERY_RSS) instead of letting
    /// the driver cache the RSS configuration.
    pub rss_config_option: bool,
    /// REPORT_LINK_SPEED answer, Mb/s.
    pub link_speed_mbps: u64,
    /// PCI revision (>= 1: base/length admin-queue interface).
    pub revision: u8,
    /// Frames an inbox holds before the sender is back-pressured.
    pub inbox_frames: usize,
    /// Frames waiting per RX queue for buffers.
    pub rx_pending_frames: usize,
    /// How long a frame may wait for RX buffers before it is dropped.
    pub rx_hold: Duration,
    /// Drop frames whose L3/L4 checksum is wrong (instead of flagging them).
    pub drop_bad_rx_checksum: bool,
    /// Receive-side coalescing (HW-GRO/RSC) on queues created with
    /// `enable_rsc` (false: the device never coalesces).
    pub rx_coalescing: bool,
    /// Run a worker thread (false: the owner calls `NicHandle::poll`).
    pub spawn_worker: bool,
    /// Do the work a doorbell asks for on the thread that rang it (the
    /// vCPU's), and the cabled peer's receive work too, instead of waking
    /// worker threads: a hand-off costs milliseconds under a nested engine.
    /// The worker still runs timed work (wire delays, back-pressure, link).
    pub inline_doorbells: bool,
    /// How often the NIC RX stats in the driver's stats report are
    /// refreshed (when they changed).
    pub stats_refresh: Duration,
    /// Test fault `dma-foreign-iova` (see [`crate::NicFault`]): from this
    /// TX payload read on (counting from 0), read payload through another
    /// IOVA of the NIC's domain mapping the same bytes, when one exists.
    pub dma_foreign_iova: Option<u64>,
    /// Test fault `tx-completion-delay`: TX completions written this long
    /// after their packet went out.
    pub tx_completion_delay: Option<Duration>,
    /// Test fault `rx-starve`: (frames received normally first, frames
    /// then dropped as if no buffer was posted).
    pub rx_starve: Option<(u64, u64)>,
    /// Test fault `reset-request`: after this many TX packets the device
    /// asks for a reset, once.
    pub reset_request_after: Option<u64>,
    /// Test fault `dma-fault`: one payload DMA of one queue refused.
    pub dma_fault: Option<DmaFaultAt>,
}

/// Where the `dma-fault` test fault strikes (see [`crate::NicFault::DmaFault`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DmaFaultAt {
    pub dir: crate::faults::QueueDir,
    pub queue: u16,
    /// Payload DMAs of that queue done normally first.
    pub after: u64,
}

impl Default for GveConfig {
    fn default() -> Self {
        GveConfig {
            name: "gve".into(),
            mac: [0x02, 0x00, 0x00, 0x00, 0x00, 0x01],
            num_queues: 4,
            default_num_queues: 0,
            mtu: 1500,
            jumbo_max_mtu: None,
            tx_ring_size: 512,
            rx_ring_size: 1024,
            ring_size_range: Some((64, 4096)),
            packet_buffer_size: 2048,
            header_buffer_size: 256,
            max_flow_rules: 128,
            rss_config_option: false,
            link_speed_mbps: 100_000,
            revision: DEFAULT_REVISION,
            inbox_frames: 4096,
            rx_pending_frames: 1024,
            rx_hold: Duration::from_millis(200),
            drop_bad_rx_checksum: true,
            rx_coalescing: true,
            spawn_worker: true,
            inline_doorbells: true,
            stats_refresh: Duration::from_secs(1),
            dma_foreign_iova: None,
            tx_completion_delay: None,
            rx_starve: None,
            reset_request_after: None,
            dma_fault: None,
        }
    }
}

/// Invalid configuration.
#[derive(Debug, thiserror::Error)]
pub enum GveError {
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("PCI setup failed: {0}")]
    Pci(#[from] vmm::pci::PciError),
    #[error("cannot start the worker thread: {0}")]
    Thread(std::io::Error),
}

impl GveConfig {
    /// MSI-X vectors of the function: one notification block per TX and
    /// per RX queue plus the management vector (odd table size, as
    /// gve_adminq.c `gve_set_num_ntfy_blks` uses `(n - 1) & ~1` blocks).
    pub fn msix_vectors(&self) -> u16 {
        2 * self.num_queues + 1
    }

    pub fn min_ring(&self) -> u16 {
        self.ring_size_range
            .map_or(self.tx_ring_size.min(self.rx_ring_size), |r| r.0)
    }

    pub fn max_ring(&self) -> u16 {
        self.ring_size_range
            .map_or(self.tx_ring_size.max(self.rx_ring_size), |r| r.1)
    }

    /// Largest MTU the device carries.
    pub fn max_mtu(&self) -> u16 {
        self.jumbo_max_mtu.unwrap_or(self.mtu).max(self.mtu)
    }

    /// Largest frame (without FCS) accepted: MTU + Ethernet + two VLAN tags.
    pub fn max_frame(&self) -> usize {
        usize::from(self.max_mtu()) + 14 + 8
    }

    fn validate(&self) -> Result<(), GveError> {
        let bad = |m: String| Err(GveError::Config(m));
        if self.num_queues == 0 || self.num_queues > MAX_QUEUES {
            return bad(format!(
                "num_queues {} not in 1..={MAX_QUEUES}",
                self.num_queues
            ));
        }
        for (n, v) in [
            ("tx_ring_size", self.tx_ring_size),
            ("rx_ring_size", self.rx_ring_size),
        ] {
            if v < 64 || !v.is_power_of_two() || v > 4096 {
                return bad(format!("{n} {v} must be a power of two in 64..=4096"));
            }
        }
        if let Some((lo, hi)) = self.ring_size_range
            && (lo < 64 || hi > 4096 || lo > hi || !lo.is_power_of_two() || !hi.is_power_of_two())
        {
            return bad(format!("ring_size_range ({lo}, {hi}) invalid"));
        }
        if self.mtu < 68 || self.max_mtu() > 9216 {
            return bad(format!(
                "mtu {} / max {} out of range",
                self.mtu,
                self.max_mtu()
            ));
        }
        if !matches!(self.packet_buffer_size, 2048 | 4096) {
            return bad(format!(
                "packet_buffer_size {} not 2048/4096",
                self.packet_buffer_size
            ));
        }
        if self.header_buffer_size != 0 && !(64..=1023).contains(&self.header_buffer_size) {
            return bad(format!(
                "header_buffer_size {} not 0 or 64..=1023",
                self.header_buffer_size
            ));
        }
        Ok(())
    }

    /// What DESCRIBE_DEVICE answers.
    pub fn description(&self) -> DeviceDescription {
        let mut features = SUP_BUFFER_SIZES_MASK;
        if self.max_flow_rules > 0 {
            features |= SUP_FLOW_STEERING_MASK;
        }
        if self.jumbo_max_mtu.is_some() {
            features |= SUP_JUMBO_FRAMES_MASK;
        }
        if self.ring_size_range.is_some() {
            features |= SUP_MODIFY_RING_MASK;
        }
        if self.rss_config_option {
            features |= SUP_RSS_CONFIG_MASK;
        }
        DeviceDescription {
            max_registered_pages: 0,
            tx_queue_entries: self.tx_ring_size,
            rx_queue_entries: self.rx_ring_size,
            default_num_queues: self.default_num_queues,
            mtu: self.mtu,
            counters: self.num_counters(),
            mac: self.mac,
            features,
            packet_buffer_size: self.packet_buffer_size,
            header_buffer_size: self.header_buffer_size,
            max_flow_rules: self.max_flow_rules,
            jumbo_max_mtu: self.jumbo_max_mtu,
            modify_ring: self.ring_size_range.map(|(lo, hi)| (hi, hi, lo, lo)),
            rss_config: self
                .rss_config_option
                .then_some((crate::adminq::RSS_KEY_SIZE, crate::adminq::RSS_LUT_SIZE)),
        }
    }

    /// Event counters advertised (never written in DQO, but the driver reads
    /// `counter_array[counter_index]` for `ethtool -S`).
    pub fn num_counters(&self) -> u16 {
        2 * self.num_queues
    }
}

/// Admin-queue ring as configured by the driver.
#[derive(Clone, Copy, Debug)]
pub(crate) struct AqRing {
    pub base: u64,
    pub slots: u32,
}

/// CONFIGURE_DEVICE_RESOURCES state.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Resources {
    pub num_counters: u32,
    pub num_irq_dbs: u32,
    pub msix_base_idx: u32,
}

/// One notification block: auto-masked after each interrupt, re-armed by
/// the driver's IRQ doorbell write (gve_main.c `gve_intr_dqo`: "Interrupts
/// are automatically masked"; `gve_napi_poll_dqo`: another interrupt is
/// raised on re-enable if an event came in since the last one).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct IrqBlock {
    pub armed: bool,
    pub pending: bool,
    pub itr_us: u32,
}

/// Everything behind the state lock.
pub(crate) struct NicState {
    pub device_status: u32,
    pub driver_status: u32,
    pub adminq_pfn: u32,
    pub adminq_base_hi: u32,
    pub adminq_base_lo: u32,
    pub adminq_length: u16,
    pub event_counter: u32,
    pub driver_version: Vec<u8>,
    pub aq: Option<AqRing>,
    pub res: Option<Resources>,
    pub blocks: Vec<IrqBlock>,
    pub tx: Vec<Option<TxQueue>>,
    pub rx: Vec<Option<RxQueue>>,
    pub rss: RssConfig,
    pub flows: FlowTable,
    pub stats_report: Option<(u64, u64)>,
    /// When the NIC part of the stats report was last written.
    pub stats_written: Option<Instant>,
    /// NIC stats changed since then.
    pub stats_dirty: bool,
    pub driver_info: Option<Vec<u8>>,
    /// Frames produced by TX but not yet accepted by the wire.
    pub tx_backlog: VecDeque<Vec<u8>>,
    pub refusals: RefusalLog,
    /// Link forced down by the owner (`NicHandle::set_link`).
    pub link_forced_down: bool,
    /// Test faults' progress (they survive resets: each strikes once per
    /// device lifetime, or in its one window).
    pub faults: FaultProgress,
}

/// The test faults in force (from [`GveConfig`] at creation, replaced by
/// `NicHandle::set_faults`) and how far they have got. Behind the state
/// lock: the decision points read it in the locked device operation they
/// run in anyway, and a replacement is atomic for them.
#[derive(Debug, Default)]
pub(crate) struct FaultProgress {
    pub active: ActiveFaults,
    /// Frames steered to an RX queue (for `rx-starve`).
    pub rx_frames_seen: u64,
    /// `reset-request` has struck.
    pub reset_requested: bool,
    /// TX packets finished (for `reset-request`).
    pub tx_packets_seen: u64,
    /// Payload DMAs of the `dma-fault` queue seen.
    pub dma_seen: u64,
    /// TX payload reads issued (for `dma-foreign-iova`).
    pub payload_reads: u64,
}

impl FaultProgress {
    /// `active` in force from now on, every count from zero (they survive
    /// driver resets: each fault strikes once, or in its one window, per
    /// setting).
    pub fn new(active: ActiveFaults) -> Self {
        FaultProgress {
            active,
            ..Default::default()
        }
    }
}

/// One setting of the test faults, one of each kind at most.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct ActiveFaults {
    pub dma_foreign_iova: Option<u64>,
    pub tx_completion_delay: Option<Duration>,
    pub rx_starve: Option<(u64, u64)>,
    pub reset_request_after: Option<u64>,
    pub dma_fault: Option<DmaFaultAt>,
}

impl ActiveFaults {
    pub fn from_config(cfg: &GveConfig) -> Self {
        ActiveFaults {
            dma_foreign_iova: cfg.dma_foreign_iova,
            tx_completion_delay: cfg.tx_completion_delay,
            rx_starve: cfg.rx_starve,
            reset_request_after: cfg.reset_request_after,
            dma_fault: cfg.dma_fault,
        }
    }

    /// The faults of `list` (a later fault of a kind replaces an earlier
    /// one of the same kind).
    pub fn from_list(list: &[NicFault]) -> Self {
        let mut cfg = GveConfig::default();
        for f in list {
            f.apply(&mut cfg);
        }
        ActiveFaults::from_config(&cfg)
    }

    /// The faults, as [`NicFault`]s.
    pub fn list(&self) -> Vec<NicFault> {
        let mut v = Vec::new();
        if let Some(after) = self.dma_foreign_iova {
            v.push(NicFault::DmaForeignIova { after });
        }
        if let Some(d) = self.tx_completion_delay {
            v.push(NicFault::TxCompletionDelay {
                ms: u64::try_from(d.as_millis()).unwrap_or(u64::MAX),
            });
        }
        if let Some((after, frames)) = self.rx_starve {
            v.push(NicFault::RxStarve { after, frames });
        }
        if let Some(after) = self.reset_request_after {
            v.push(NicFault::ResetRequest { after });
        }
        if let Some(DmaFaultAt { dir, queue, after }) = self.dma_fault {
            v.push(NicFault::DmaFault { dir, queue, after });
        }
        v
    }
}

impl NicState {
    fn new(cfg: &GveConfig) -> Self {
        let q = usize::from(cfg.num_queues);
        NicState {
            device_status: 0,
            driver_status: 0,
            adminq_pfn: 0,
            adminq_base_hi: 0,
            adminq_base_lo: 0,
            adminq_length: 0,
            event_counter: 0,
            driver_version: Vec::new(),
            aq: None,
            res: None,
            blocks: Vec::new(),
            tx: (0..q).map(|_| None).collect(),
            rx: (0..q).map(|_| None).collect(),
            rss: RssConfig::for_queues(cfg.num_queues),
            flows: FlowTable::default(),
            stats_report: None,
            stats_written: None,
            stats_dirty: false,
            driver_info: None,
            tx_backlog: VecDeque::new(),
            refusals: RefusalLog::default(),
            link_forced_down: false,
            faults: FaultProgress::new(ActiveFaults::from_config(cfg)),
        }
    }
}

/// State shared by the PCI front end, the worker and handles.
pub(crate) struct Shared {
    pub cfg: GveConfig,
    pub dma: Arc<dyn Dma>,
    pub msix: Mutex<MsixConfig>,
    pub state: Mutex<NicState>,
    pub port: Arc<PortShared>,
    pub counters: Counters,
    pub bus_master: AtomicBool,
    pub shutdown: AtomicBool,
}

/// Device state plus the shared context, for one locked operation.
pub(crate) struct Dev<'a> {
    pub sh: &'a Shared,
    pub st: &'a mut NicState,
}

impl Dev<'_> {
    pub fn refuse(&mut self, kind: RefusalKind, detail: String) {
        Counters::inc(&self.sh.counters.refusals);
        self.st.refusals.push(kind, detail);
    }

    /// DMA read through the IOMMU; a fault is logged and returns false.
    pub fn dma_read(&mut self, iova: u64, buf: &mut [u8], tag: DmaTag) -> bool {
        if buf.is_empty() {
            return true;
        }
        if !self.sh.bus_master.load(Ordering::SeqCst) {
            self.refuse(
                RefusalKind::BusMaster,
                format!("{tag} read {iova:#x} without bus master"),
            );
            return false;
        }
        match self.sh.dma.read(iova, buf, tag) {
            Ok(()) => true,
            Err(f) => {
                self.refuse(RefusalKind::DmaFault, f.to_string());
                false
            }
        }
    }

    /// DMA write through the IOMMU; a fault is logged and returns false.
    pub fn dma_write(&mut self, iova: u64, data: &[u8], tag: DmaTag) -> bool {
        if data.is_empty() {
            return true;
        }
        if !self.sh.bus_master.load(Ordering::SeqCst) {
            self.refuse(
                RefusalKind::BusMaster,
                format!("{tag} write {iova:#x} without bus master"),
            );
            return false;
        }
        match self.sh.dma.write(iova, data, tag) {
            Ok(()) => true,
            Err(f) => {
                self.refuse(RefusalKind::DmaFault, f.to_string());
                false
            }
        }
    }

    /// MSI-X vector of notification block `b`.
    fn block_vector(&self, b: u32) -> Option<u16> {
        let res = self.st.res?;
        u16::try_from(res.msix_base_idx.checked_add(b)?).ok()
    }

    /// Management vector: last when the blocks start at 0, first otherwise
    /// (gve_adminq.c comment above `gve_adminq_configure_device_resources`).
    fn mgmt_vector(&self) -> Option<u16> {
        let res = self.st.res?;
        let v = if res.msix_base_idx == 0 {
            res.num_irq_dbs
        } else {
            0
        };
        u16::try_from(v).ok()
    }

    /// An event (completion written) for notification block `b`.
    pub fn notify_block(&mut self, b: u32) {
        let Some(block) = self.st.blocks.get_mut(b as usize) else {
            return;
        };
        if !block.armed {
            block.pending = true;
            return;
        }
        block.armed = false;
        block.pending = false;
        if let Some(v) = self.block_vector(b) {
            tracing::trace!(nic = %self.sh.cfg.name, block = b, vector = v, "irq");
            Counters::inc(&self.sh.counters.irqs);
            lock(&self.sh.msix).notify(v);
        }
    }

    pub fn notify_mgmt(&mut self) {
        if let Some(v) = self.mgmt_vector() {
            Counters::inc(&self.sh.counters.mgmt_irqs);
            lock(&self.sh.msix).notify(v);
        }
    }

    /// The `dma-fault` test fault: whether this payload DMA of queue `q`
    /// in `dir` is the one to refuse (then logged as a refused DMA).
    pub fn injected_dma_fault(
        &mut self,
        dir: crate::faults::QueueDir,
        q: usize,
        what: &str,
    ) -> bool {
        let Some(at) = self.st.faults.active.dma_fault else {
            return false;
        };
        if at.dir != dir || (at.queue != crate::faults::ANY_QUEUE && usize::from(at.queue) != q) {
            return false;
        }
        let n = self.st.faults.dma_seen;
        self.st.faults.dma_seen += 1;
        if n != at.after {
            return false;
        }
        Counters::inc(&self.sh.counters.injected_dma_faults);
        tracing::warn!(nic = %self.sh.cfg.name, q, "test fault dma-fault: {what} refused");
        self.refuse(
            RefusalKind::DmaFault,
            format!("test fault dma-fault: {what} of queue {q} refused"),
        );
        true
    }

    /// Ask the driver for a reset (device_status RESET + management IRQ).
    pub fn request_reset(&mut self, why: &str) {
        if self.st.device_status & DEVICE_STATUS_RESET_MASK == 0 {
            tracing::warn!(nic = %self.sh.cfg.name, "device requests a reset: {why}");
            Counters::inc(&self.sh.counters.reset_requests);
            self.st.device_status |= DEVICE_STATUS_RESET_MASK;
            self.notify_mgmt();
        }
    }

    pub fn link_up(&self) -> bool {
        self.sh.port.link_up.load(Ordering::SeqCst) && !self.st.link_forced_down
    }

    fn device_status(&self) -> u32 {
        let mut s = self.st.device_status;
        if self.link_up() {
            s |= DEVICE_STATUS_LINK_STATUS_MASK;
        }
        s
    }

    /// Everything the driver configured is forgotten; the admin queue is
    /// released and `adminq_event_counter` restarts at 0
    /// (gve_adminq.c `gve_adminq_alloc` restarts `adminq_prod_cnt` at 0).
    pub fn device_reset(&mut self) {
        let st = &mut *self.st;
        st.aq = None;
        st.res = None;
        st.blocks.clear();
        st.tx.iter_mut().for_each(|q| *q = None);
        st.rx.iter_mut().for_each(|q| *q = None);
        st.rss = RssConfig::for_queues(self.sh.cfg.num_queues);
        st.flows = FlowTable::default();
        st.stats_report = None;
        st.stats_written = None;
        st.event_counter = 0;
        st.adminq_pfn = 0;
        st.driver_status = 0;
        st.tx_backlog.clear();
        st.device_status &= !(DEVICE_STATUS_RESET_MASK | DEVICE_STATUS_REPORT_STATS_MASK);
        st.device_status |= DEVICE_STATUS_DEVICE_IS_RESET;
        Counters::inc(&self.sh.counters.resets);
    }

    fn start_aq(&mut self, base: u64, len: u64) {
        if self.st.aq.is_some() || self.st.res.is_some() {
            // A device found running when a new admin queue is set up
            // (kexec, crash): treat it as an implicit reset.
            self.device_reset();
        }
        let slots = (len / ADMINQ_CMD_SIZE).clamp(1, 4096);
        // Round down to a power of two (the ring index is `count & mask`).
        let slots = 1u64 << (63 - slots.leading_zeros());
        self.st.aq = Some(AqRing {
            base,
            slots: slots as u32,
        });
        self.st.device_status &= !DEVICE_STATUS_DEVICE_IS_RESET;
    }

    /// BAR0 32-bit register read (big-endian value).
    fn reg_read32(&self, off: u64) -> u32 {
        let st = &self.st;
        match off {
            REG_DEVICE_STATUS => self.device_status(),
            REG_DRIVER_STATUS => st.driver_status,
            REG_MAX_TX_QUEUES | REG_MAX_RX_QUEUES => u32::from(self.sh.cfg.num_queues),
            REG_ADMINQ_PFN => st.adminq_pfn,
            REG_ADMINQ_DOORBELL => 0,
            REG_ADMINQ_EVENT_COUNTER => st.event_counter,
            REG_ADMINQ_BASE_HI => st.adminq_base_hi,
            REG_ADMINQ_BASE_LO => st.adminq_base_lo,
            REG_ADMINQ_LENGTH => u32::from(st.adminq_length) << 16,
            _ => 0,
        }
    }

    pub fn bar0_read(&mut self, offset: u64, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            let o = offset.saturating_add(i as u64);
            *b = if o < REGISTER_BAR_SIZE {
                self.reg_read32(o & !3).to_be_bytes()[(o & 3) as usize]
            } else {
                0
            };
        }
    }

    pub fn bar0_write(&mut self, offset: u64, data: &[u8]) {
        match (offset, data.len()) {
            (REG_DRIVER_VERSION, 1) => {
                // "GVE-1.0.0\n" one byte at a time; keep a bounded line.
                let c = data[0];
                if c == b'\n' || self.st.driver_version.len() >= 64 {
                    let v = String::from_utf8_lossy(&self.st.driver_version).into_owned();
                    tracing::info!(nic = %self.sh.cfg.name, "driver version {v:?}");
                    self.st.driver_version.clear();
                }
                if c != b'\n' {
                    self.st.driver_version.push(c);
                }
            }
            (REG_ADMINQ_LENGTH, 2) => {
                self.st.adminq_length = u16::from_be_bytes([data[0], data[1]]);
            }
            (off, 4) if off % 4 == 0 => {
                let v = u32::from_be_bytes([data[0], data[1], data[2], data[3]]);
                self.reg_write32(off, v);
            }
            (off, len) => self.refuse(
                RefusalKind::Register,
                format!("BAR0 write of {len} bytes at {off:#x}"),
            ),
        }
    }

    fn reg_write32(&mut self, off: u64, v: u32) {
        let rev1 = self.sh.cfg.revision >= 1;
        match off {
            REG_DRIVER_STATUS if rev1 => {
                self.st.driver_status = v;
                if v & DRIVER_STATUS_RESET_MASK != 0 {
                    self.device_reset();
                } else if v & DRIVER_STATUS_RUN_MASK != 0 {
                    let base = (u64::from(self.st.adminq_base_hi) << 32)
                        | u64::from(self.st.adminq_base_lo);
                    let len = u64::from(self.st.adminq_length);
                    if len < ADMINQ_CMD_SIZE {
                        self.refuse(
                            RefusalKind::AdminQueue,
                            format!("RUN with admin queue length {len}"),
                        );
                        return;
                    }
                    self.start_aq(base, len);
                }
            }
            REG_ADMINQ_PFN if !rev1 => {
                if v == 0 {
                    self.device_reset();
                } else {
                    self.start_aq(u64::from(v) * GUEST_PAGE_SIZE, ADMINQ_BUFFER_SIZE);
                    self.st.adminq_pfn = v;
                }
            }
            REG_ADMINQ_BASE_HI if rev1 => self.st.adminq_base_hi = v,
            REG_ADMINQ_BASE_LO if rev1 => self.st.adminq_base_lo = v,
            REG_ADMINQ_LENGTH if rev1 => self.st.adminq_length = (v >> 16) as u16,
            REG_ADMINQ_DOORBELL => self.aq_doorbell(v),
            _ => self.refuse(
                RefusalKind::Register,
                format!(
                    "BAR0 write {v:#x} to {off:#x} (revision {})",
                    self.sh.cfg.revision
                ),
            ),
        }
    }

    /// BAR2 doorbell write (little-endian 32-bit, gve_dqo.h `iowrite32`).
    pub fn bar2_write(&mut self, offset: u64, data: &[u8]) {
        if data.len() != 4 || !offset.is_multiple_of(4) || offset >= DOORBELL_BAR_SIZE {
            self.refuse(
                RefusalKind::Doorbell,
                format!("BAR2 write of {} bytes at {offset:#x}", data.len()),
            );
            return;
        }
        let index = (offset / 4) as u32;
        let v = u32::from_le_bytes([data[0], data[1], data[2], data[3]]);
        let nblocks = self.st.blocks.len() as u32;
        let nq = u32::from(self.sh.cfg.num_queues);
        if (IRQ_DB_BASE..IRQ_DB_BASE + nblocks).contains(&index) {
            self.irq_doorbell(index - IRQ_DB_BASE, v);
        } else if (TX_DB_BASE..TX_DB_BASE + nq).contains(&index) {
            self.tx_doorbell((index - TX_DB_BASE) as usize, v);
        } else if (RX_DB_BASE..RX_DB_BASE + nq).contains(&index) {
            self.rx_doorbell((index - RX_DB_BASE) as usize, v);
        } else {
            self.refuse(
                RefusalKind::Doorbell,
                format!("doorbell {index} is not assigned (value {v:#x})"),
            );
        }
    }

    /// gve_dqo.h: bit 0 enable, bits 4:3 ITR index (3 = no update), bits
    /// 16:5 interval in 2 µs units.
    fn irq_doorbell(&mut self, b: u32, v: u32) {
        let Some(block) = self.st.blocks.get_mut(b as usize) else {
            return;
        };
        if (v >> ITR_INDEX_SHIFT) & 3 != ITR_INDEX_NO_UPDATE {
            block.itr_us = ((v >> ITR_INTERVAL_SHIFT) & ITR_INTERVAL_MASK) * 2;
        }
        if v & ITR_CLEAR_PBA_BIT_DQO != 0 {
            block.pending = false;
        }
        if v & ITR_ENABLE_BIT_DQO == 0 {
            block.armed = false;
            return;
        }
        block.armed = true;
        if block.pending {
            self.notify_block(b);
        }
    }

    fn tx_doorbell(&mut self, q: usize, v: u32) {
        let ok = match self.st.tx.get_mut(q).and_then(Option::as_mut) {
            Some(t) if v < t.size => {
                t.tail = v;
                true
            }
            Some(t) => {
                let n = t.size;
                self.refuse(
                    RefusalKind::Doorbell,
                    format!("TX{q} doorbell {v} >= ring size {n}"),
                );
                false
            }
            None => {
                self.refuse(
                    RefusalKind::Doorbell,
                    format!("TX{q} doorbell {v}: no such queue"),
                );
                false
            }
        };
        if ok {
            tracing::trace!(nic = %self.sh.cfg.name, q, tail = v, "tx doorbell");
            self.sh.port.owner.notify();
        }
    }

    fn rx_doorbell(&mut self, q: usize, v: u32) {
        let ok = match self.st.rx.get_mut(q).and_then(Option::as_mut) {
            Some(r) if v < r.buf_size => {
                r.buf_tail = v;
                true
            }
            Some(r) => {
                let n = r.buf_size;
                self.refuse(
                    RefusalKind::Doorbell,
                    format!("RX{q} doorbell {v} >= ring size {n}"),
                );
                false
            }
            None => {
                self.refuse(
                    RefusalKind::Doorbell,
                    format!("RX{q} doorbell {v}: no such queue"),
                );
                false
            }
        };
        if ok {
            self.sh.port.owner.notify();
        }
    }
}

impl Shared {
    pub fn with<R>(&self, f: impl FnOnce(&mut Dev<'_>) -> R) -> R {
        let mut st = lock(&self.state);
        let mut d = Dev {
            sh: self,
            st: &mut st,
        };
        f(&mut d)
    }

    /// One round of device work: link events, RX, TX. Returns whether
    /// work is left (call again) and when to look again at the latest.
    pub fn poll(&self) -> (bool, Option<Duration>) {
        // One management interrupt per link transition the port saw since
        // the last look (a quick down-up pair gives two).
        let c = &self.counters;
        let downs = self.port.link_downs.load(Ordering::SeqCst);
        let ups = self.port.link_ups.load(Ordering::SeqCst);
        let new = downs.saturating_sub(c.link_downs.swap(downs, Ordering::SeqCst))
            + ups.saturating_sub(c.link_ups.swap(ups, Ordering::SeqCst));
        if new > 0 {
            self.with(|d| {
                for _ in 0..new {
                    d.notify_mgmt();
                }
            });
        }
        if !self.bus_master.load(Ordering::SeqCst) {
            // No DMA without bus mastering: frames wait in the inbox (the
            // sender is back-pressured) until the driver enables it.
            return (false, None);
        }
        self.with(|d| {
            let now = Instant::now();
            let (rx_more, rx_wake) = d.rx_poll(now);
            let tx_more = d.tx_poll();
            let compl_wake = d.tx_flush_delayed(now);
            d.write_nic_stats(now);
            let mut wake = match (rx_wake, compl_wake) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            if !d.st.tx_backlog.is_empty() {
                // Retry the wire soon even if nobody wakes us.
                let retry = Duration::from_millis(1);
                wake = Some(wake.map_or(retry, |w| w.min(retry)));
            }
            (rx_more || tx_more, wake)
        })
    }
}

/// Bound on inline rounds per doorbell, so a guest that keeps the rings
/// full cannot hold its vCPU in the device forever (the worker goes on).
const INLINE_ROUNDS: usize = 64;

impl Shared {
    /// Doorbell work on the caller's thread: this NIC until idle, then the
    /// peer's receive side (the frames just put into its inbox). Never holds
    /// two NIC locks at once.
    fn run_inline(&self) {
        let mut idle = false;
        for _ in 0..INLINE_ROUNDS {
            if !self.poll().0 {
                idle = true;
                break;
            }
        }
        if !idle {
            self.port.owner.notify();
        }
        self.port.run_peer_inline();
    }
}

fn worker_loop(sh: Arc<Shared>) {
    while !sh.shutdown.load(Ordering::SeqCst) {
        let (more, wake) = sh.poll();
        if more {
            continue;
        }
        sh.port
            .owner
            .wait(Some(wake.unwrap_or(Duration::from_millis(100))));
        tracing::trace!(nic = %sh.cfg.name, "worker wakes");
    }
}

/// A cloneable handle on a NIC for its owner (the VMM, scenarios, tests):
/// counters, the refusal log, link control, polling and shutdown.
#[derive(Clone)]
pub struct NicHandle {
    sh: Arc<Shared>,
    worker: Arc<Mutex<Option<JoinHandle<()>>>>,
}

impl NicHandle {
    pub fn name(&self) -> &str {
        &self.sh.cfg.name
    }

    pub fn stats(&self) -> NicStats {
        self.sh.counters.snapshot()
    }

    /// The most recent refusals (at most `stats::REFUSAL_LOG_LEN`).
    pub fn refusals(&self) -> Vec<Refusal> {
        lock(&self.sh.state)
            .refusals
            .recent
            .iter()
            .cloned()
            .collect()
    }

    /// Total refusals by kind.
    pub fn refusal_counts(&self) -> Vec<(RefusalKind, u64)> {
        lock(&self.sh.state)
            .refusals
            .by_kind
            .iter()
            .map(|(k, v)| (*k, *v))
            .collect()
    }

    /// Do device work on the caller's thread until idle (for
    /// `spawn_worker: false`); returns the number of rounds run.
    pub fn poll(&self) -> usize {
        for i in 0..10_000 {
            let (more, _) = self.sh.poll();
            if !more {
                return i + 1;
            }
        }
        10_000
    }

    /// Ask the driver to reset the device (device_status RESET bit and the
    /// management interrupt).
    pub fn request_reset(&self) {
        self.sh.with(|d| d.request_reset("requested by the owner"));
    }

    /// Force the link down (or release the force). The driver sees the
    /// change through device_status and the management interrupt.
    pub fn set_link(&self, up: bool) {
        self.sh.with(|d| {
            if d.st.link_forced_down == up {
                d.st.link_forced_down = !up;
                d.notify_mgmt();
            }
        });
    }

    /// Replace the test faults in force by `faults` (an empty slice clears
    /// them all). Their `after` counts start from now; what an earlier
    /// setting already did stays done (completions it delayed are still
    /// written when due) and stays counted in [`NicStats`]. At most one
    /// fault of each kind is in force: a later one in `faults` replaces an
    /// earlier one of the same kind. Applied atomically with respect to the
    /// device's work.
    pub fn set_faults(&self, faults: &[NicFault]) {
        let active = ActiveFaults::from_list(faults);
        self.sh.with(|d| {
            // Completions an earlier delay holds back are due no later
            // than the new setting would make them (at once when it has no
            // delay): clearing the fault ends its effect.
            let latest = Instant::now() + active.tx_completion_delay.unwrap_or_default();
            for t in d.st.tx.iter_mut().flatten() {
                for (at, _) in t.delayed.iter_mut() {
                    *at = (*at).min(latest);
                }
            }
            d.st.faults = FaultProgress::new(active);
        });
        tracing::debug!(nic = %self.sh.cfg.name, ?faults, "NIC test faults set");
        // The worker may sleep on a deadline of the old setting.
        self.sh.port.owner.notify();
    }

    /// The test faults in force.
    pub fn faults(&self) -> Vec<NicFault> {
        self.sh.with(|d| d.st.faults.active.list())
    }

    /// Frames waiting in the inbox (not yet steered to a queue).
    pub fn inbox_len(&self) -> usize {
        self.sh.port.queued()
    }

    /// Whether the driver would see carrier.
    pub fn link_up(&self) -> bool {
        self.sh.with(|d| d.link_up())
    }

    /// Stop and join the worker thread. Idempotent.
    pub fn shutdown(&self) {
        self.sh.shutdown.store(true, Ordering::SeqCst);
        self.sh.port.owner.notify();
        if let Some(t) = lock(&self.worker).take()
            && t.join().is_err()
        {
            tracing::error!(nic = %self.sh.cfg.name, "worker thread panicked");
        }
    }
}

/// The emulated gVNIC PCI function.
pub struct GveDevice {
    config: PciConfiguration,
    msix_cap: usize,
    handle: NicHandle,
}

impl GveDevice {
    /// Build the device. `dma` is this function's IOMMU-translated DMA
    /// handle, `msi` its MSI-X sink (size it for [`GveConfig::msix_vectors`]).
    pub fn new(
        cfg: GveConfig,
        dma: Arc<dyn Dma>,
        msi: Arc<dyn MsiSink>,
    ) -> Result<(GveDevice, NicPort), GveError> {
        cfg.validate()?;
        let mut config = PciConfiguration::new(&PciHeader {
            vendor_id: PCI_VENDOR_ID_GOOGLE,
            device_id: PCI_DEV_ID_GVNIC,
            revision_id: cfg.revision,
            class_code: PCI_CLASS_ETHERNET,
            subsystem_vendor_id: PCI_VENDOR_ID_GOOGLE,
            subsystem_id: PCI_SUBSYSTEM_ID_GVNIC,
        });
        let m32 = BarKind::Memory32 {
            prefetchable: false,
        };
        config.add_bar(REGISTER_BAR, REGISTER_BAR_SIZE, m32)?;
        config.add_bar(MSIX_BAR, MSIX_BAR_SIZE, m32)?;
        config.add_bar(DOORBELL_BAR, DOORBELL_BAR_SIZE, m32)?;
        let msix = MsixConfig::new(cfg.msix_vectors(), msi);
        let msix_cap = config.add_capability(&msix.capability(
            MSIX_BAR as u8,
            MSIX_TABLE_OFFSET as u32,
            MSIX_BAR as u8,
            MSIX_PBA_OFFSET as u32,
        ))?;
        config.set_writable_mask(
            msix_cap + 3,
            &[((MSIX_CTRL_ENABLE | MSIX_CTRL_FUNCTION_MASK) >> 8) as u8],
        );
        let signal = Arc::new(Signal::default());
        let port = PortShared::new(&cfg.name, cfg.inbox_frames, signal);
        let state = NicState::new(&cfg);
        let spawn = cfg.spawn_worker;
        let name = cfg.name.clone();
        let sh = Arc::new(Shared {
            cfg,
            dma,
            msix: Mutex::new(msix),
            state: Mutex::new(state),
            port: port.clone(),
            counters: Counters::default(),
            bus_master: AtomicBool::new(false),
            shutdown: AtomicBool::new(false),
        });
        if sh.cfg.inline_doorbells {
            let weak = Arc::downgrade(&sh);
            port.set_inline_poll(Box::new(move || {
                if let Some(sh) = weak.upgrade() {
                    let mut idle = false;
                    for _ in 0..INLINE_ROUNDS {
                        if !sh.poll().0 {
                            idle = true;
                            break;
                        }
                    }
                    if !idle {
                        sh.port.owner.notify();
                    }
                }
            }));
        }
        let worker = if spawn {
            let sh2 = sh.clone();
            Some(
                std::thread::Builder::new()
                    .name(format!("sim-nic-{name}"))
                    .spawn(move || worker_loop(sh2))
                    .map_err(GveError::Thread)?,
            )
        } else {
            None
        };
        let handle = NicHandle {
            sh,
            worker: Arc::new(Mutex::new(worker)),
        };
        Ok((
            GveDevice {
                config,
                msix_cap,
                handle,
            },
            NicPort { shared: port },
        ))
    }

    /// MSI-X vectors of this function.
    pub fn msix_vectors(&self) -> u16 {
        self.handle.sh.cfg.msix_vectors()
    }

    /// A handle that stays usable after the device moved into the bus.
    pub fn handle(&self) -> NicHandle {
        self.handle.clone()
    }

    pub fn stats(&self) -> NicStats {
        self.handle.stats()
    }

    pub fn shutdown(&self) {
        self.handle.shutdown();
    }

    fn sync_bus_master(&self) {
        self.handle
            .sh
            .bus_master
            .store(self.config.bus_master_enabled(), Ordering::SeqCst);
    }
}

impl Drop for GveDevice {
    fn drop(&mut self) {
        self.handle.shutdown();
    }
}

impl PciDevice for GveDevice {
    fn config_read(&mut self, reg: usize) -> u32 {
        self.config.read_reg(reg)
    }

    fn config_write(&mut self, reg: usize, offset: usize, data: &[u8]) {
        if !self.config.write_reg(reg, offset, data) {
            return;
        }
        if reg == self.msix_cap / 4 && offset + data.len() > 2 {
            let ctrl = self.config.read_u16(self.msix_cap + 2);
            lock(&self.handle.sh.msix).set_message_control(ctrl);
        }
        self.sync_bus_master();
    }

    fn bar_read(&mut self, bar: usize, offset: u64, data: &mut [u8]) {
        let sh = &self.handle.sh;
        match bar {
            REGISTER_BAR => sh.with(|d| d.bar0_read(offset, data)),
            MSIX_BAR => {
                let m = lock(&sh.msix);
                if offset >= MSIX_PBA_OFFSET {
                    m.read_pba(offset - MSIX_PBA_OFFSET, data);
                } else {
                    m.read_table(offset - MSIX_TABLE_OFFSET, data);
                }
            }
            // Doorbells are write-only.
            DOORBELL_BAR => data.fill(0),
            _ => data.fill(0xff),
        }
    }

    fn bar_write(&mut self, bar: usize, offset: u64, data: &[u8]) {
        let sh = &self.handle.sh;
        match bar {
            REGISTER_BAR => sh.with(|d| d.bar0_write(offset, data)),
            MSIX_BAR if offset < MSIX_PBA_OFFSET => {
                lock(&sh.msix).write_table(offset - MSIX_TABLE_OFFSET, data);
            }
            DOORBELL_BAR => {
                sh.with(|d| d.bar2_write(offset, data));
                if sh.cfg.inline_doorbells {
                    sh.run_inline();
                }
            }
            _ => {}
        }
    }

    fn decode_bar(&self, addr: u64, len: u64) -> Option<(usize, u64)> {
        self.config.decode_bar(addr, len)
    }

    fn reset(&mut self) {
        let sh = &self.handle.sh;
        sh.with(|d| {
            d.device_reset();
            d.st.device_status = 0;
            d.st.link_forced_down = false;
        });
        sh.port.clear();
        let ctrl = {
            let mut m = lock(&sh.msix);
            m.reset();
            m.message_control()
        };
        self.config.reset();
        self.config.write_u16(self.msix_cap + 2, ctrl);
        self.sync_bus_master();
    }
}
