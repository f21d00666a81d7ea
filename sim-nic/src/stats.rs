//! Device counters and the log of refused guest input.

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

macro_rules! counters {
    ($( $(#[$m:meta])* $name:ident ),* $(,)?) => {
        /// Snapshot of a NIC's counters.
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
        pub struct NicStats {
            $( $(#[$m])* pub $name: u64, )*
        }

        #[derive(Default)]
        pub(crate) struct Counters {
            $( pub $name: AtomicU64, )*
        }

        impl Counters {
            pub fn snapshot(&self) -> NicStats {
                NicStats { $( $name: self.$name.load(Ordering::Relaxed), )* }
            }
        }
    };
}

counters! {
    /// Admin commands executed.
    aq_commands,
    /// Admin commands answered with a status other than PASSED.
    aq_errors,
    /// Driver-initiated device resets completed.
    resets,
    /// Resets the device requested (RESET bit in device_status).
    reset_requests,
    /// Packets taken from TX rings (one per completion tag).
    tx_packets,
    /// Bytes read from TX buffers.
    tx_bytes,
    /// Frames put on the wire (after TSO).
    tx_frames,
    tx_tso_packets,
    tx_csum_offloads,
    /// Packets dropped because their descriptors were malformed.
    tx_bad_packets,
    /// TX buffer reads refused by the IOMMU.
    tx_dma_faults,
    /// TX payload reads the `dma-foreign-iova` test fault sent through
    /// another IOVA mapping the same bytes.
    tx_foreign_iova_reads,
    /// Packets whose completions the `tx-completion-delay` test fault held
    /// back.
    tx_completions_delayed,
    /// Frames the `rx-starve` test fault dropped (also in `rx_no_buffers`).
    rx_starved,
    /// DMAs the `dma-fault` test fault refused.
    injected_dma_faults,
    /// Frames lost because there was no cable or the link was down.
    tx_no_link,
    /// Times TX stopped because the peer's inbox was full.
    tx_backpressure,
    /// Frames delivered to RX queues.
    rx_frames,
    rx_bytes,
    /// Frames header-split.
    rx_hsplit,
    /// Coalesced (HW-GRO/RSC) packets delivered: one completion chain with
    /// `rsc` set, made of two or more frames.
    rx_rsc_packets,
    /// Frames that went into coalesced packets (also in `rx_frames`).
    rx_rsc_segments,
    /// Frames dropped: no RX queue to deliver to (or device not running).
    rx_no_queue,
    /// Frames dropped: the RX queue had no buffers for too long.
    rx_no_buffers,
    /// Frames dropped: bad L3/L4 checksum.
    rx_bad_checksum,
    /// Frames dropped: longer than the device accepts.
    rx_oversize,
    /// RX buffer or header writes refused by the IOMMU.
    rx_dma_faults,
    /// Completions returned with rx_error (bad buffer descriptors).
    rx_errors,
    /// Frames steered by a flow rule.
    rx_flow_steered,
    /// MSI-X messages requested for notification blocks.
    irqs,
    /// Management interrupts requested.
    mgmt_irqs,
    /// Link transitions of the cable (wire link down, cable unplugged) the
    /// device has noticed (each also raises a management interrupt when
    /// the driver has set one up). Owner-forced changes
    /// (`NicHandle::set_link`) are not counted here.
    link_downs,
    /// Link transitions to up (cable plugged, wire link back up).
    link_ups,
    /// Guest inputs refused (see `NicHandle::refusals`).
    refusals,
}

impl Counters {
    pub fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }
    pub fn inc(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }
}

/// What kind of guest input was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RefusalKind {
    /// Unknown register, bad access width, write to a read-only register.
    Register,
    /// Admin-queue protocol violation (doorbell jump, AQ not set up, …).
    AdminQueue,
    /// An admin command answered with an error status.
    AdminCommand,
    /// Doorbell index unassigned or value past the ring size.
    Doorbell,
    /// Malformed TX descriptors or packets.
    TxDescriptor,
    /// Malformed RX buffer descriptors.
    RxDescriptor,
    /// A DMA the IOMMU refused.
    DmaFault,
    /// DMA attempted with bus mastering disabled.
    BusMaster,
}

impl fmt::Display for RefusalKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            RefusalKind::Register => "register",
            RefusalKind::AdminQueue => "admin-queue",
            RefusalKind::AdminCommand => "admin-command",
            RefusalKind::Doorbell => "doorbell",
            RefusalKind::TxDescriptor => "tx-descriptor",
            RefusalKind::RxDescriptor => "rx-descriptor",
            RefusalKind::DmaFault => "dma-fault",
            RefusalKind::BusMaster => "bus-master",
        };
        f.write_str(s)
    }
}

/// One refused input.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Refusal {
    /// Sequence number (total refusals before this one).
    pub seq: u64,
    pub kind: RefusalKind,
    pub detail: String,
}

/// How many refusals are kept verbatim.
pub const REFUSAL_LOG_LEN: usize = 256;

#[derive(Default)]
pub(crate) struct RefusalLog {
    pub total: u64,
    pub by_kind: BTreeMap<RefusalKind, u64>,
    pub recent: VecDeque<Refusal>,
}

impl RefusalLog {
    pub fn push(&mut self, kind: RefusalKind, detail: String) {
        tracing::debug!(%kind, "refused: {detail}");
        if self.recent.len() == REFUSAL_LOG_LEN {
            self.recent.pop_front();
        }
        self.recent.push_back(Refusal {
            seq: self.total,
            kind,
            detail,
        });
        self.total += 1;
        *self.by_kind.entry(kind).or_default() += 1;
    }
}
