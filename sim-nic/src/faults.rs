//! Data-driven wire faults with a deterministic RNG, and their counters.

use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// TX payload reads a NIC does normally before `dma-foreign-iova` starts.
pub const DEFAULT_FOREIGN_IOVA_AFTER: u64 = 64;

/// Default of `tx-completion-delay` (ms).
pub const DEFAULT_TX_COMPLETION_DELAY_MS: u64 = 50;
/// Defaults of `rx-starve`: frames received normally first, then frames
/// starved.
pub const DEFAULT_RX_STARVE_AFTER: u64 = 64;
pub const DEFAULT_RX_STARVE_FRAMES: u64 = 256;
/// Default of `reset-request`: TX packets before the device asks for a
/// reset.
pub const DEFAULT_RESET_REQUEST_AFTER: u64 = 256;
/// Default of `dma-fault`: payload DMAs of the queue done normally first.
pub const DEFAULT_DMA_FAULT_AFTER: u64 = 64;

/// `dma-fault:tx|rx:any`: the fault strikes the `after`-th payload DMA of
/// whichever queue in that direction (counted over all of them): flows
/// land on queues by RSS and XPS, which a schedule cannot know.
pub const ANY_QUEUE: u16 = u16::MAX;

/// Direction of a queue a NIC fault names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QueueDir {
    Tx,
    Rx,
}

impl QueueDir {
    fn as_str(self) -> &'static str {
        match self {
            QueueDir::Tx => "tx",
            QueueDir::Rx => "rx",
        }
    }
}

/// A test-only misbehaviour of the device itself (not of a wire): to prove
/// the verifier sees what a buggy NIC would do, and to drive the stock
/// driver through its error paths. Written as a string (the number
/// arguments are optional; defaults in this module's constants):
///
/// - `dma-foreign-iova[:N]`
/// - `tx-completion-delay[:MS]`
/// - `rx-starve[:AFTER[:FRAMES]]`
/// - `reset-request[:N]`
/// - `dma-fault:tx:Q[:N]`, `dma-fault:rx:Q[:N]`
///
/// Set at creation (`NicFault::apply` on the [`crate::GveConfig`]) or while
/// the device runs (`NicHandle::set_faults`, which replaces the setting);
/// the `after` counts start with the setting, and each fault strikes once
/// (or in its one window) per setting, driver resets notwithstanding.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum NicFault {
    /// From the `after`-th TX payload read on (counting from 0), read the
    /// payload through another IOVA that the NIC's own IOMMU domain maps to
    /// the same guest-physical bytes, when there is one (a dmabuf bound
    /// twice on the NIC gives such aliases): the NIC reads a dmabuf page
    /// through an IOVA of another binding. Counted in
    /// `NicStats::tx_foreign_iova_reads`.
    DmaForeignIova { after: u64 },
    /// Every TX completion (descriptor and packet completions alike, in
    /// order) is written `ms` milliseconds after the packet went out
    /// (a slow completion path: the driver's ring fills and its queue
    /// stops until completions arrive; below gve's 5 s TX watchdog, no
    /// timeout). Counted in `NicStats::tx_completions_delayed`.
    TxCompletionDelay { ms: u64 },
    /// After `after` frames steered to RX queues, the next `frames` frames
    /// find no posted buffer: each is dropped as a queue without buffers
    /// drops it (`rx_no_buffers`, and the queue's RX_NO_BUFFERS_POSTED /
    /// RX_QUEUE_DROP_CNT in the driver's stats report) without waiting
    /// for buffers. Counted in `NicStats::rx_starved`.
    RxStarve { after: u64, frames: u64 },
    /// After `after` TX packets the device asks the driver for a reset
    /// once (device_status RESET bit and the management interrupt, as the
    /// device does when a queue breaks); the driver's reset path
    /// (gve_handle_reset) rebuilds everything. Counted in
    /// `NicStats::reset_requests`.
    ResetRequest { after: u64 },
    /// The `after`-th payload DMA (counting from 0) of queue `queue` in
    /// direction `dir` is refused as an IOMMU fault would be, once: a TX
    /// payload read drops that packet and completes it (the data never
    /// reaches the wire), an RX buffer write returns the buffer with
    /// `rx_error` (the driver drops the packet). Counted in
    /// `NicStats::injected_dma_faults` (and tx_dma_faults/rx_dma_faults).
    DmaFault {
        dir: QueueDir,
        queue: u16,
        after: u64,
    },
}

impl NicFault {
    /// Switch the fault on in a device configuration (in force from the
    /// device's creation).
    pub fn apply(&self, cfg: &mut crate::GveConfig) {
        match *self {
            NicFault::DmaForeignIova { after } => cfg.dma_foreign_iova = Some(after),
            NicFault::TxCompletionDelay { ms } => {
                cfg.tx_completion_delay = Some(Duration::from_millis(ms))
            }
            NicFault::RxStarve { after, frames } => cfg.rx_starve = Some((after, frames)),
            NicFault::ResetRequest { after } => cfg.reset_request_after = Some(after),
            NicFault::DmaFault { dir, queue, after } => {
                cfg.dma_fault = Some(crate::device::DmaFaultAt { dir, queue, after })
            }
        }
    }

    /// The name without arguments (`rx-starve`).
    pub fn kind(&self) -> &'static str {
        match self {
            NicFault::DmaForeignIova { .. } => "dma-foreign-iova",
            NicFault::TxCompletionDelay { .. } => "tx-completion-delay",
            NicFault::RxStarve { .. } => "rx-starve",
            NicFault::ResetRequest { .. } => "reset-request",
            NicFault::DmaFault { .. } => "dma-fault",
        }
    }
}

impl fmt::Display for NicFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            NicFault::DmaForeignIova { after } if after == DEFAULT_FOREIGN_IOVA_AFTER => {
                f.write_str("dma-foreign-iova")
            }
            NicFault::DmaForeignIova { after } => write!(f, "dma-foreign-iova:{after}"),
            NicFault::TxCompletionDelay { ms } => write!(f, "tx-completion-delay:{ms}"),
            NicFault::RxStarve { after, frames } => write!(f, "rx-starve:{after}:{frames}"),
            NicFault::ResetRequest { after } => write!(f, "reset-request:{after}"),
            NicFault::DmaFault { dir, queue, after } if queue == ANY_QUEUE => {
                write!(f, "dma-fault:{}:any:{after}", dir.as_str())
            }
            NicFault::DmaFault { dir, queue, after } => {
                write!(f, "dma-fault:{}:{queue}:{after}", dir.as_str())
            }
        }
    }
}

/// What `from_str` knows, for its error message.
const KNOWN_NIC_FAULTS: &str = "dma-foreign-iova[:N], tx-completion-delay[:MS], rx-starve[:AFTER[:FRAMES]], reset-request[:N], dma-fault:tx|rx:QUEUE|any[:N]";

impl FromStr for NicFault {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let mut parts = s.split(':');
        let name = parts.next().unwrap_or_default();
        let args: Vec<&str> = parts.collect();
        let num = |i: usize, default: Option<u64>, what: &str| -> Result<u64, String> {
            match (args.get(i), default) {
                (Some(a), _) => a
                    .parse()
                    .map_err(|_| format!("{s}: expected a number of {what}, not {a:?}")),
                (None, Some(d)) => Ok(d),
                (None, None) => Err(format!("{s}: missing the {what}")),
            }
        };
        let at_most = |n: usize| -> Result<(), String> {
            if args.len() > n {
                Err(format!("{s}: too many arguments"))
            } else {
                Ok(())
            }
        };
        match name {
            "dma-foreign-iova" => {
                at_most(1)?;
                Ok(NicFault::DmaForeignIova {
                    after: num(0, Some(DEFAULT_FOREIGN_IOVA_AFTER), "payload reads")?,
                })
            }
            "tx-completion-delay" => {
                at_most(1)?;
                Ok(NicFault::TxCompletionDelay {
                    ms: num(0, Some(DEFAULT_TX_COMPLETION_DELAY_MS), "milliseconds")?,
                })
            }
            "rx-starve" => {
                at_most(2)?;
                Ok(NicFault::RxStarve {
                    after: num(0, Some(DEFAULT_RX_STARVE_AFTER), "frames before")?,
                    frames: num(1, Some(DEFAULT_RX_STARVE_FRAMES), "frames starved")?,
                })
            }
            "reset-request" => {
                at_most(1)?;
                Ok(NicFault::ResetRequest {
                    after: num(0, Some(DEFAULT_RESET_REQUEST_AFTER), "TX packets")?,
                })
            }
            "dma-fault" => {
                at_most(3)?;
                let dir = match args.first().copied() {
                    Some("tx") => QueueDir::Tx,
                    Some("rx") => QueueDir::Rx,
                    _ => {
                        return Err(format!(
                            "{s}: expected dma-fault:tx:QUEUE or dma-fault:rx:QUEUE"
                        ));
                    }
                };
                let queue = if args.get(1).copied() == Some("any") {
                    ANY_QUEUE
                } else {
                    let q = num(1, None, "queue")?;
                    u16::try_from(q)
                        .ok()
                        .filter(|q| *q != ANY_QUEUE)
                        .ok_or_else(|| format!("{s}: queue {q} out of range"))?
                };
                Ok(NicFault::DmaFault {
                    dir,
                    queue,
                    after: num(2, Some(DEFAULT_DMA_FAULT_AFTER), "payload DMAs before")?,
                })
            }
            _ => Err(format!(
                "unknown NIC fault {s:?} (known: {KNOWN_NIC_FAULTS})"
            )),
        }
    }
}

impl TryFrom<String> for NicFault {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl From<NicFault> for String {
    fn from(f: NicFault) -> String {
        f.to_string()
    }
}

/// Which direction of a wire the faults apply to.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FaultDirection {
    #[default]
    Both,
    AToB,
    BToA,
}

/// A scheduled link outage, relative to the moment the wire was connected.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkWindow {
    pub at_ms: u64,
    pub duration_ms: u64,
}

/// Fault configuration of one wire. Probabilities are per eligible frame in
/// `[0, 1]`; all randomness comes from `seed`, so a run is reproducible for
/// a given frame sequence.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WireFaults {
    pub seed: u64,
    pub drop: f64,
    pub corrupt: f64,
    pub duplicate: f64,
    pub reorder: f64,
    /// Fixed extra latency for every frame.
    pub delay_us: u64,
    /// Extra uniform latency in `[0, jitter_us]` per frame.
    pub jitter_us: u64,
    /// How long a frame chosen for reordering is held back.
    pub reorder_hold_us: u64,
    pub direction: FaultDirection,
    /// Frames passed untouched before faults start (e.g. to let a TCP
    /// handshake through).
    pub skip_first: u64,
    /// Only frames at least this long are eligible.
    pub min_len: usize,
    /// Stop injecting after this many faults.
    pub max_faults: Option<u64>,
    /// Link outages.
    pub link_down: Vec<LinkWindow>,
}

impl Default for WireFaults {
    fn default() -> Self {
        WireFaults {
            seed: 0,
            drop: 0.0,
            corrupt: 0.0,
            duplicate: 0.0,
            reorder: 0.0,
            delay_us: 0,
            jitter_us: 0,
            reorder_hold_us: 1000,
            direction: FaultDirection::Both,
            skip_first: 0,
            min_len: 0,
            max_faults: None,
            link_down: Vec::new(),
        }
    }
}

impl WireFaults {
    /// No fault at all.
    pub fn none() -> Self {
        WireFaults::default()
    }

    pub fn is_none(&self) -> bool {
        self.drop <= 0.0
            && self.corrupt <= 0.0
            && self.duplicate <= 0.0
            && self.reorder <= 0.0
            && self.delay_us == 0
            && self.jitter_us == 0
            && self.link_down.is_empty()
    }

    /// Probabilities are finite and in `[0, 1]`.
    pub fn validate(&self) -> Result<(), String> {
        for (name, p) in [
            ("drop", self.drop),
            ("corrupt", self.corrupt),
            ("duplicate", self.duplicate),
            ("reorder", self.reorder),
        ] {
            if !p.is_finite() || !(0.0..=1.0).contains(&p) {
                return Err(format!("{name} = {p}: a probability must be in [0, 1]"));
            }
        }
        Ok(())
    }

    pub(crate) fn applies(&self, a_to_b: bool) -> bool {
        match self.direction {
            FaultDirection::Both => true,
            FaultDirection::AToB => a_to_b,
            FaultDirection::BToA => !a_to_b,
        }
    }
}

/// What the wire injected (snapshot).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct FaultCounters {
    /// Frames handed to the wire.
    pub frames: u64,
    /// Frames placed in a receiver's queue (duplicates count twice).
    pub delivered: u64,
    pub dropped: u64,
    pub corrupted: u64,
    pub duplicated: u64,
    pub reordered: u64,
    pub delayed: u64,
    /// Frames lost because the link was down.
    pub link_down_drops: u64,
    pub link_downs: u64,
    pub link_ups: u64,
}

#[derive(Default)]
pub(crate) struct AtomicFaultCounters {
    pub frames: AtomicU64,
    pub delivered: AtomicU64,
    pub dropped: AtomicU64,
    pub corrupted: AtomicU64,
    pub duplicated: AtomicU64,
    pub reordered: AtomicU64,
    pub delayed: AtomicU64,
    pub link_down_drops: AtomicU64,
    pub link_downs: AtomicU64,
    pub link_ups: AtomicU64,
}

impl AtomicFaultCounters {
    pub fn inc(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> FaultCounters {
        let l = |c: &AtomicU64| c.load(Ordering::Relaxed);
        FaultCounters {
            frames: l(&self.frames),
            delivered: l(&self.delivered),
            dropped: l(&self.dropped),
            corrupted: l(&self.corrupted),
            duplicated: l(&self.duplicated),
            reordered: l(&self.reordered),
            delayed: l(&self.delayed),
            link_down_drops: l(&self.link_down_drops),
            link_downs: l(&self.link_downs),
            link_ups: l(&self.link_ups),
        }
    }
}

/// SplitMix64: small, fast, deterministic.
#[derive(Clone, Debug)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in [0, n) (0 when n == 0).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next_u64() % n }
    }
}

/// Per-direction fault state.
pub(crate) struct FaultState {
    cfg: WireFaults,
    active: bool,
    rng: SplitMix64,
    seen: u64,
    injected: u64,
}

impl FaultState {
    pub fn new(cfg: &WireFaults, a_to_b: bool) -> Self {
        let salt = if a_to_b { 0xa2b } else { 0xb2a };
        FaultState {
            active: cfg.applies(a_to_b),
            rng: SplitMix64::new(cfg.seed ^ salt),
            cfg: cfg.clone(),
            seen: 0,
            injected: 0,
        }
    }

    fn roll(&mut self, p: f64) -> bool {
        if p <= 0.0 {
            return false;
        }
        if self.cfg.max_faults.is_some_and(|m| self.injected >= m) {
            return false;
        }
        let hit = self.rng.next_f64() < p;
        if hit {
            self.injected += 1;
        }
        hit
    }

    /// Decide the fate of `frame`: the copies to deliver with their extra
    /// latency (empty = dropped).
    pub fn apply(
        &mut self,
        mut frame: Vec<u8>,
        c: &AtomicFaultCounters,
    ) -> Vec<(Vec<u8>, Duration)> {
        self.seen += 1;
        let eligible =
            self.active && self.seen > self.cfg.skip_first && frame.len() >= self.cfg.min_len;
        if !eligible {
            return vec![(frame, Duration::ZERO)];
        }
        if self.roll(self.cfg.drop) {
            AtomicFaultCounters::inc(&c.dropped);
            return Vec::new();
        }
        if self.roll(self.cfg.corrupt) && !frame.is_empty() {
            let lo = if frame.len() > 14 { 14 } else { 0 };
            let i = lo + self.rng.below((frame.len() - lo) as u64) as usize;
            let bit = self.rng.below(8) as u8;
            if let Some(b) = frame.get_mut(i) {
                *b ^= 1 << bit;
            }
            AtomicFaultCounters::inc(&c.corrupted);
        }
        let mut delay = Duration::from_micros(self.cfg.delay_us);
        if self.cfg.jitter_us > 0 {
            delay += Duration::from_micros(self.rng.below(self.cfg.jitter_us + 1));
        }
        if self.roll(self.cfg.reorder) {
            delay += Duration::from_micros(self.cfg.reorder_hold_us.max(1));
            AtomicFaultCounters::inc(&c.reordered);
        }
        if !delay.is_zero() {
            AtomicFaultCounters::inc(&c.delayed);
        }
        if self.roll(self.cfg.duplicate) {
            AtomicFaultCounters::inc(&c.duplicated);
            return vec![(frame.clone(), delay), (frame, delay)];
        }
        vec![(frame, delay)]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_and_counted() {
        let cfg = WireFaults {
            seed: 42,
            drop: 0.1,
            corrupt: 0.1,
            duplicate: 0.1,
            reorder: 0.1,
            ..Default::default()
        };
        let run = || {
            let c = AtomicFaultCounters::default();
            let mut s = FaultState::new(&cfg, true);
            let out: Vec<usize> = (0..1000)
                .map(|i| s.apply(vec![i as u8; 64], &c).len())
                .collect();
            (out, c.snapshot())
        };
        let (a, ca) = run();
        let (b, cb) = run();
        assert_eq!(a, b);
        assert_eq!(ca, cb);
        assert!(ca.dropped > 50 && ca.dropped < 150, "{ca:?}");
        assert!(ca.duplicated > 0 && ca.corrupted > 0 && ca.reordered > 0);
        let total: usize = a.iter().sum();
        assert_eq!(total as u64, 1000 - ca.dropped + ca.duplicated);
    }

    #[test]
    fn direction_skip_and_budget() {
        let cfg = WireFaults {
            drop: 1.0,
            direction: FaultDirection::AToB,
            skip_first: 3,
            max_faults: Some(2),
            ..Default::default()
        };
        let c = AtomicFaultCounters::default();
        let mut ba = FaultState::new(&cfg, false);
        assert_eq!(ba.apply(vec![0; 10], &c).len(), 1);
        let mut ab = FaultState::new(&cfg, true);
        let kept: Vec<usize> = (0..8).map(|_| ab.apply(vec![0; 10], &c).len()).collect();
        assert_eq!(kept, vec![1, 1, 1, 0, 0, 1, 1, 1]);
    }

    #[test]
    fn faults_parse_from_toml() {
        let f: WireFaults = toml::from_str(
            "seed = 7\ndrop = 0.01\ndirection = \"a-to-b\"\n[[link_down]]\nat_ms = 100\nduration_ms = 50\n",
        )
        .unwrap();
        assert_eq!(f.seed, 7);
        assert_eq!(f.direction, FaultDirection::AToB);
        assert_eq!(
            f.link_down,
            vec![LinkWindow {
                at_ms: 100,
                duration_ms: 50
            }]
        );
        assert!(toml::from_str::<WireFaults>("bogus = 1").is_err());
    }
}

#[cfg(test)]
mod nic_fault_tests {
    use super::*;

    #[test]
    fn nic_fault_strings_round_trip() {
        let f: NicFault = "dma-foreign-iova".parse().unwrap();
        assert_eq!(f, NicFault::DmaForeignIova { after: 64 });
        assert_eq!(f.to_string(), "dma-foreign-iova");
        let f: NicFault = "dma-foreign-iova:3".parse().unwrap();
        assert_eq!(f, NicFault::DmaForeignIova { after: 3 });
        assert_eq!(f.to_string(), "dma-foreign-iova:3");
        assert!("dma-foreign-iova:x".parse::<NicFault>().is_err());
        assert!("dma-foreign-iova:1:2".parse::<NicFault>().is_err());
        assert!("dma-elsewhere".parse::<NicFault>().is_err());
        #[derive(serde::Deserialize, serde::Serialize)]
        struct T {
            faults: Vec<NicFault>,
        }
        let t: T = toml::from_str(r#"faults = ["dma-foreign-iova:0"]"#).unwrap();
        assert_eq!(t.faults, [NicFault::DmaForeignIova { after: 0 }]);
        assert_eq!(
            toml::to_string(&t).unwrap().trim(),
            r#"faults = ["dma-foreign-iova:0"]"#
        );
        assert!(toml::from_str::<T>(r#"faults = ["nope"]"#).is_err());
        let mut cfg = crate::GveConfig::default();
        assert_eq!(cfg.dma_foreign_iova, None);
        f.apply(&mut cfg);
        assert_eq!(cfg.dma_foreign_iova, Some(3));
    }
}

#[cfg(test)]
mod more_nic_fault_tests {
    use super::*;

    #[test]
    fn dma_fault_on_any_queue_parses_and_round_trips() {
        let f: NicFault = "dma-fault:rx:any:7".parse().unwrap();
        assert_eq!(
            f,
            NicFault::DmaFault {
                dir: QueueDir::Rx,
                queue: ANY_QUEUE,
                after: 7
            }
        );
        assert_eq!(f.to_string(), "dma-fault:rx:any:7");
        assert_eq!(f.to_string().parse::<NicFault>().unwrap(), f);
        assert!("dma-fault:tx:65535".parse::<NicFault>().is_err());
    }

    #[test]
    fn new_nic_faults_parse_with_defaults_and_round_trip() {
        for (text, want) in [
            (
                "tx-completion-delay",
                NicFault::TxCompletionDelay {
                    ms: DEFAULT_TX_COMPLETION_DELAY_MS,
                },
            ),
            (
                "tx-completion-delay:7",
                NicFault::TxCompletionDelay { ms: 7 },
            ),
            (
                "rx-starve",
                NicFault::RxStarve {
                    after: DEFAULT_RX_STARVE_AFTER,
                    frames: DEFAULT_RX_STARVE_FRAMES,
                },
            ),
            (
                "rx-starve:5",
                NicFault::RxStarve {
                    after: 5,
                    frames: DEFAULT_RX_STARVE_FRAMES,
                },
            ),
            (
                "rx-starve:5:9",
                NicFault::RxStarve {
                    after: 5,
                    frames: 9,
                },
            ),
            (
                "reset-request",
                NicFault::ResetRequest {
                    after: DEFAULT_RESET_REQUEST_AFTER,
                },
            ),
            ("reset-request:3", NicFault::ResetRequest { after: 3 }),
            (
                "dma-fault:tx:1",
                NicFault::DmaFault {
                    dir: QueueDir::Tx,
                    queue: 1,
                    after: DEFAULT_DMA_FAULT_AFTER,
                },
            ),
            (
                "dma-fault:rx:0:12",
                NicFault::DmaFault {
                    dir: QueueDir::Rx,
                    queue: 0,
                    after: 12,
                },
            ),
        ] {
            let f: NicFault = text.parse().unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(f, want, "{text}");
            assert_eq!(f.to_string().parse::<NicFault>().unwrap(), f, "{text}");
            assert!(text.starts_with(f.kind()));
        }
        for bad in [
            "tx-completion-delay:soon",
            "rx-starve:1:2:3",
            "dma-fault",
            "dma-fault:up:1",
            "dma-fault:tx",
            "dma-fault:rx:70000",
            "reset-request:-1",
        ] {
            assert!(bad.parse::<NicFault>().is_err(), "{bad}");
        }
        let e = "melt".parse::<NicFault>().unwrap_err();
        assert!(e.contains("rx-starve") && e.contains("dma-fault"), "{e}");
    }

    #[test]
    fn new_nic_faults_switch_on_in_the_config() {
        let mut cfg = crate::GveConfig::default();
        assert_eq!(cfg.tx_completion_delay, None);
        assert_eq!(cfg.rx_starve, None);
        assert_eq!(cfg.reset_request_after, None);
        assert_eq!(cfg.dma_fault, None);
        NicFault::TxCompletionDelay { ms: 9 }.apply(&mut cfg);
        NicFault::RxStarve {
            after: 1,
            frames: 2,
        }
        .apply(&mut cfg);
        NicFault::ResetRequest { after: 4 }.apply(&mut cfg);
        NicFault::DmaFault {
            dir: QueueDir::Rx,
            queue: 2,
            after: 3,
        }
        .apply(&mut cfg);
        assert_eq!(cfg.tx_completion_delay, Some(Duration::from_millis(9)));
        assert_eq!(cfg.rx_starve, Some((1, 2)));
        assert_eq!(cfg.reset_request_after, Some(4));
        assert_eq!(
            cfg.dma_fault,
            Some(crate::device::DmaFaultAt {
                dir: QueueDir::Rx,
                queue: 2,
                after: 3
            })
        );
    }
}
