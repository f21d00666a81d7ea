//! Test doubles: a Vec-backed guest memory with identity IOVAs behind the
//! [`Dma`] trait, an MSI sink that records vectors, and a fake gve driver
//! that drives a [`GveDevice`] the way the Linux driver does. Used by the
//! crate's tests, the fuzz target and anyone who needs a NIC without a VM.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use vmm::device::{MsiMessage, MsiSink};
use vmm::dma::{Access, Dma, DmaFault, DmaTag, FaultReason};
use vmm::pci::PciDevice;
use vmm::pci::configuration::{COMMAND_BUS_MASTER, COMMAND_MEMORY_SPACE};
use vmm::pci::msix::MSIX_CTRL_ENABLE;

use crate::adminq::{self, Command, CreateRxQueue, CreateTxQueue, RawCommand, encode};
use crate::desc::{
    COMPL_TYPE_DESC, COMPL_TYPE_PKT, RX_BUF_THRESH, RxBufDesc, RxCompl, TxCompl, TxDesc,
    parse_tx_compl,
};
use crate::device::{GveConfig, GveDevice, NicHandle};
use crate::regs::*;
use crate::wire::{NicPort, lock};

/// Base IOVA of a [`FakeMemory`] (nothing lives at 0).
pub const FAKE_MEM_BASE: u64 = 0x1000_0000;

#[derive(Clone, Copy, Debug)]
struct Mapping {
    start: u64,
    end: u64,
    writable: bool,
}

/// Per-tag access counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TagStats {
    pub reads: u64,
    pub writes: u64,
    pub bytes: u64,
}

/// Guest memory with identity IOVAs. The device may only touch mapped
/// ranges (with the mapping's permission); everything else is a
/// [`DmaFault`], recorded.
pub struct FakeMemory {
    endpoint: u16,
    base: u64,
    mem: Mutex<Vec<u8>>,
    maps: Mutex<Vec<Mapping>>,
    faults: Mutex<Vec<DmaFault>>,
    tags: Mutex<BTreeMap<String, TagStats>>,
    log: Mutex<Option<Vec<DmaRecord>>>,
    /// `(alias, target, len)`: IOVAs `[alias, alias + len)` reach the
    /// same memory as `[target, target + len)` (a second mapping of the
    /// same pages, as an IOMMU domain has for a dmabuf bound twice).
    aliases: Mutex<Vec<(u64, u64, u64)>>,
}

/// One device access, recorded when [`FakeMemory::record`] is on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DmaRecord {
    pub access: Access,
    pub iova: u64,
    pub len: u64,
    pub tag: String,
}

impl FakeMemory {
    pub fn new(size: usize) -> Arc<Self> {
        Arc::new(FakeMemory {
            endpoint: 0x18,
            base: FAKE_MEM_BASE,
            mem: Mutex::new(vec![0; size]),
            maps: Mutex::new(Vec::new()),
            faults: Mutex::new(Vec::new()),
            tags: Mutex::new(BTreeMap::new()),
            log: Mutex::new(None),
            aliases: Mutex::new(Vec::new()),
        })
    }

    pub fn base(&self) -> u64 {
        self.base
    }

    pub fn size(&self) -> u64 {
        lock(&self.mem).len() as u64
    }

    /// Let the device access `[iova, iova + len)`.
    pub fn map(&self, iova: u64, len: u64, writable: bool) {
        lock(&self.maps).push(Mapping {
            start: iova,
            end: iova.saturating_add(len),
            writable,
        });
    }

    /// Revoke every mapping overlapping `[iova, iova + len)` (whole
    /// mappings are removed).
    pub fn unmap(&self, iova: u64, len: u64) {
        let end = iova.saturating_add(len);
        lock(&self.maps).retain(|m| m.end <= iova || m.start >= end);
    }

    pub fn unmap_all(&self) {
        lock(&self.maps).clear();
    }

    /// Make `[alias, alias + len)` a second IOVA range for the memory at
    /// `[target, target + len)` (with the target's permissions).
    pub fn alias(&self, alias: u64, target: u64, len: u64) {
        lock(&self.aliases).push((alias, target, len));
    }

    /// The target IOVA of an access entirely inside an alias range.
    fn resolve_alias(&self, iova: u64, len: usize) -> u64 {
        let len = len as u64;
        lock(&self.aliases)
            .iter()
            .find(|&&(a, _, n)| a <= iova && iova.saturating_add(len) <= a.saturating_add(n))
            .map_or(iova, |&(a, t, _)| t + (iova - a))
    }

    fn check(&self, iova: u64, len: usize, access: Access, tag: DmaTag) -> Result<usize, DmaFault> {
        let target = self.resolve_alias(iova, len);
        self.check_direct(target, len, access, tag)
            .map_err(|mut f| {
                f.iova = iova;
                f
            })
    }

    fn check_direct(
        &self,
        iova: u64,
        len: usize,
        access: Access,
        tag: DmaTag,
    ) -> Result<usize, DmaFault> {
        let fault = |reason| DmaFault {
            endpoint: self.endpoint,
            iova,
            len: len as u64,
            access,
            reason,
            tag: tag.to_string(),
        };
        let end = iova
            .checked_add(len as u64)
            .filter(|_| len > 0)
            .ok_or_else(|| fault(FaultReason::BadRange))?;
        let maps = lock(&self.maps);
        let mut pos = iova;
        while pos < end {
            let Some(m) = maps
                .iter()
                .filter(|m| m.start <= pos && pos < m.end)
                .max_by_key(|m| m.end)
            else {
                return Err(fault(FaultReason::Unmapped));
            };
            if access == Access::Write && !m.writable {
                return Err(fault(FaultReason::Permission));
            }
            pos = m.end;
        }
        let size = lock(&self.mem).len() as u64;
        if iova < self.base || end > self.base + size {
            return Err(fault(FaultReason::OutsideRam));
        }
        Ok((iova - self.base) as usize)
    }

    /// Start (or restart) recording every successful device access.
    pub fn record(&self) {
        *lock(&self.log) = Some(Vec::new());
    }

    /// The accesses recorded since [`record`](Self::record).
    pub fn recorded(&self) -> Vec<DmaRecord> {
        lock(&self.log).clone().unwrap_or_default()
    }

    fn account(&self, iova: u64, tag: DmaTag, access: Access, n: usize) {
        if let Some(l) = lock(&self.log).as_mut() {
            l.push(DmaRecord {
                access,
                iova,
                len: n as u64,
                tag: tag.to_string(),
            });
        }
        let mut t = lock(&self.tags);
        let e = t.entry(tag.to_string()).or_default();
        match access {
            Access::Read => e.reads += 1,
            Access::Write => e.writes += 1,
        }
        e.bytes += n as u64;
    }

    /// CPU (driver) read, unchecked except for bounds.
    pub fn read(&self, iova: u64, len: usize) -> Vec<u8> {
        let m = lock(&self.mem);
        let off = iova.saturating_sub(self.base) as usize;
        m.get(off..off + len)
            .map(<[u8]>::to_vec)
            .unwrap_or_default()
    }

    /// CPU (driver) write.
    pub fn write(&self, iova: u64, data: &[u8]) {
        let mut m = lock(&self.mem);
        let off = iova.saturating_sub(self.base) as usize;
        if let Some(s) = m.get_mut(off..off + data.len()) {
            s.copy_from_slice(data);
        }
    }

    /// Device accesses refused so far.
    pub fn faults(&self) -> Vec<DmaFault> {
        lock(&self.faults).clone()
    }

    /// Device accesses by tag.
    pub fn tag_stats(&self) -> BTreeMap<String, TagStats> {
        lock(&self.tags).clone()
    }
}

impl Dma for FakeMemory {
    fn endpoint(&self) -> u16 {
        self.endpoint
    }

    fn alias_iova(&self, iova: u64, len: u64) -> Option<u64> {
        lock(&self.aliases)
            .iter()
            .find(|&&(_, t, n)| t <= iova && iova.saturating_add(len) <= t.saturating_add(n))
            .map(|&(a, t, _)| a + (iova - t))
    }

    fn read(&self, iova: u64, buf: &mut [u8], tag: DmaTag) -> Result<(), DmaFault> {
        match self.check(iova, buf.len(), Access::Read, tag) {
            Ok(off) => {
                buf.copy_from_slice(&lock(&self.mem)[off..off + buf.len()]);
                self.account(iova, tag, Access::Read, buf.len());
                Ok(())
            }
            Err(f) => {
                lock(&self.faults).push(f.clone());
                Err(f)
            }
        }
    }

    fn write(&self, iova: u64, data: &[u8], tag: DmaTag) -> Result<(), DmaFault> {
        match self.check(iova, data.len(), Access::Write, tag) {
            Ok(off) => {
                lock(&self.mem)[off..off + data.len()].copy_from_slice(data);
                self.account(iova, tag, Access::Write, data.len());
                Ok(())
            }
            Err(f) => {
                lock(&self.faults).push(f.clone());
                Err(f)
            }
        }
    }
}

/// Records every MSI route change and trigger.
#[derive(Default)]
pub struct RecordingMsiSink {
    routes: Mutex<HashMap<u16, MsiMessage>>,
    triggers: Mutex<Vec<u16>>,
}

impl RecordingMsiSink {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Vectors triggered so far, in order.
    pub fn triggers(&self) -> Vec<u16> {
        lock(&self.triggers).clone()
    }

    pub fn count(&self, vector: u16) -> usize {
        lock(&self.triggers)
            .iter()
            .filter(|v| **v == vector)
            .count()
    }

    pub fn take(&self) -> Vec<u16> {
        std::mem::take(&mut *lock(&self.triggers))
    }
}

impl MsiSink for RecordingMsiSink {
    fn set_route(&self, vector: u16, msg: Option<MsiMessage>) {
        let mut r = lock(&self.routes);
        match msg {
            Some(m) => r.insert(vector, m),
            None => r.remove(&vector),
        };
    }

    fn trigger(&self, vector: u16) -> bool {
        lock(&self.triggers).push(vector);
        lock(&self.routes).contains_key(&vector)
    }
}

/// A TX queue as the fake driver sees it.
pub struct FakeTx {
    pub ring: u64,
    pub comp: u64,
    pub qres: u64,
    pub size: u32,
    pub tail: u32,
    pub db_index: u32,
    pub comp_head: u32,
    pub cur_gen: bool,
    pub hw_head: u32,
    last_re: u32,
    next_tag: u16,
    /// Completion tags handed out and not completed, with their buffers.
    pub outstanding: HashMap<u16, Vec<(u64, u64)>>,
}

/// A received packet reassembled from its completions.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RxPacket {
    pub header: Vec<u8>,
    pub payload: Vec<u8>,
    pub compls: Vec<RxCompl>,
}

impl RxPacket {
    /// Header and payload bytes together: the frame as received.
    pub fn frame(&self) -> Vec<u8> {
        let mut f = self.header.clone();
        f.extend_from_slice(&self.payload);
        f
    }

    pub fn last(&self) -> RxCompl {
        self.compls.last().copied().unwrap_or_default()
    }
}

/// An RX queue as the fake driver sees it.
pub struct FakeRx {
    pub bufq: u64,
    pub complq: u64,
    pub qres: u64,
    pub size: u32,
    pub tail: u32,
    pub db_index: u32,
    pub comp_head: u32,
    pub cur_gen: bool,
    pub pbs: u32,
    pub hbs: u32,
    pub hdr_base: u64,
    /// Payload buffer address of each buffer id.
    pub bufs: Vec<u64>,
    /// Buffer ids not posted.
    free: VecDeque<u16>,
    partial: Option<RxPacket>,
    /// Buffers completed with rx_error.
    pub errors: u64,
}

/// Drives a [`GveDevice`] like gve_main.c / gve_adminq.c / gve_*_dqo.c.
pub struct FakeDriver {
    pub dev: GveDevice,
    pub handle: NicHandle,
    pub mem: Arc<FakeMemory>,
    pub sink: Arc<RecordingMsiSink>,
    next: u64,
    pub aq: u64,
    pub prod: u32,
    pub num_ntfy: u32,
    pub irq_dbs: u64,
    pub description: Vec<u8>,
    pub tx: Vec<Option<FakeTx>>,
    pub rx: Vec<Option<FakeRx>>,
    pub ring_size_tx: u32,
    pub ring_size_rx: u32,
    pub header_split: bool,
    /// `enable_rsc` of the RX queues created from now on (the driver sets
    /// it from NETIF_F_GRO_HW, on by default in DQO mode).
    pub enable_rsc: bool,
    /// At most this many RX buffers outstanding per queue (tests of buffer
    /// shortage; `u32::MAX`: as many as the ring holds). When it limits
    /// posting, the doorbell is rung after every posting round instead of
    /// every `RX_BUF_THRESH` buffers.
    pub rx_post_max: u32,
    /// RX queue count the RSS LUT was last configured for.
    pub rss_queues: u32,
    pub header_buf_size: u16,
    pub packet_buf_size: u16,
    /// The stats report buffer (8 + 16·E bytes).
    pub stats: (u64, u64),
}

/// An admin command the device answered with something else than PASSED.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AqError {
    pub what: String,
    pub status: u32,
}

impl std::fmt::Display for AqError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.what, adminq::Status(self.status))
    }
}

impl std::error::Error for AqError {}

impl FakeDriver {
    /// A device with `cfg` over `mem_size` bytes of fake memory; PCI
    /// memory decoding, bus mastering and MSI-X (all vectors unmasked) on.
    pub fn new(cfg: GveConfig, mem_size: usize) -> (FakeDriver, NicPort) {
        let mem = FakeMemory::new(mem_size);
        let sink = RecordingMsiSink::new();
        let (mut dev, port) =
            GveDevice::new(cfg, mem.clone(), sink.clone()).unwrap_or_else(|e| panic!("{e}"));
        let handle = dev.handle();
        dev.config_write(
            1,
            0,
            &(COMMAND_MEMORY_SPACE | COMMAND_BUS_MASTER).to_le_bytes(),
        );
        let nvec = dev.msix_vectors();
        for v in 0..u64::from(nvec) {
            let e = v * 16;
            dev.bar_write(MSIX_BAR, e, &0xfee0_0000u32.to_le_bytes());
            dev.bar_write(MSIX_BAR, e + 4, &0u32.to_le_bytes());
            dev.bar_write(MSIX_BAR, e + 8, &(0x40 + v as u32).to_le_bytes());
            dev.bar_write(MSIX_BAR, e + 12, &0u32.to_le_bytes());
        }
        // Message control is at capability + 2; the MSI-X capability is
        // the first one (0x40).
        dev.config_write(0x40 / 4, 2, &MSIX_CTRL_ENABLE.to_le_bytes());
        let base = mem.base();
        let d = FakeDriver {
            dev,
            handle,
            mem,
            sink,
            next: base + 0x1000,
            aq: 0,
            prod: 0,
            num_ntfy: 0,
            irq_dbs: 0,
            description: Vec::new(),
            tx: Vec::new(),
            rx: Vec::new(),
            ring_size_tx: 0,
            ring_size_rx: 0,
            header_split: false,
            enable_rsc: true,
            rx_post_max: u32::MAX,
            rss_queues: 0,
            header_buf_size: 0,
            packet_buf_size: 2048,
            stats: (0, 0),
        };
        (d, port)
    }

    /// Allocate `len` bytes (aligned to `align`) and map them for the device.
    pub fn alloc(&mut self, len: u64, align: u64, writable: bool) -> u64 {
        let a = self.next.next_multiple_of(align.max(1));
        self.next = a + len.max(1);
        assert!(
            self.next <= self.mem.base() + self.mem.size(),
            "fake memory exhausted"
        );
        self.mem.map(a, len.max(1), writable);
        a
    }

    pub fn reg_read(&mut self, off: u64) -> u32 {
        let mut b = [0u8; 4];
        self.dev.bar_read(REGISTER_BAR, off, &mut b);
        u32::from_be_bytes(b)
    }

    pub fn reg_write(&mut self, off: u64, v: u32) {
        self.dev.bar_write(REGISTER_BAR, off, &v.to_be_bytes());
    }

    pub fn doorbell(&mut self, index: u32, v: u32) {
        self.dev
            .bar_write(DOORBELL_BAR, u64::from(index) * 4, &v.to_le_bytes());
    }

    /// Issue commands as one batch; returns each slot's status.
    pub fn adminq_batch(&mut self, cmds: &[RawCommand]) -> Vec<u32> {
        let start = self.prod;
        for c in cmds {
            let slot = self.aq + u64::from(self.prod & 63) * 64;
            self.mem.write(slot, c);
            self.prod = self.prod.wrapping_add(1);
        }
        let prod = self.prod;
        self.reg_write(REG_ADMINQ_DOORBELL, prod);
        let ev = self.reg_read(REG_ADMINQ_EVENT_COUNTER);
        if ev != prod {
            return vec![0; cmds.len()];
        }
        (0..cmds.len() as u32)
            .map(|i| {
                let slot = self.aq + u64::from(start.wrapping_add(i) & 63) * 64;
                let b = self.mem.read(slot + 4, 4);
                u32::from_be_bytes([b[0], b[1], b[2], b[3]])
            })
            .collect()
    }

    /// Issue one command; Ok if it PASSED.
    pub fn adminq(&mut self, cmd: RawCommand) -> Result<(), AqError> {
        let s = self.adminq_batch(&[cmd])[0];
        if s == adminq::STATUS_PASSED {
            Ok(())
        } else {
            Err(AqError {
                what: Command::parse(&cmd).name().to_string(),
                status: s,
            })
        }
    }

    /// Probe like gve_probe → gve_init_priv → gve_setup_device_resources.
    pub fn probe(&mut self) -> Result<(), AqError> {
        for c in b"GVE-1.0.0\n" {
            self.dev.bar_write(REGISTER_BAR, REG_DRIVER_VERSION, &[*c]);
        }
        let max_tx = self.reg_read(REG_MAX_TX_QUEUES);
        let max_rx = self.reg_read(REG_MAX_RX_QUEUES);
        assert_eq!(max_tx, max_rx);
        self.aq = self.alloc(4096, 4096, true);
        self.prod = 0;
        self.dev
            .bar_write(REGISTER_BAR, REG_ADMINQ_LENGTH, &4096u16.to_be_bytes());
        let aq = self.aq;
        self.reg_write(REG_ADMINQ_BASE_HI, (aq >> 32) as u32);
        self.reg_write(REG_ADMINQ_BASE_LO, aq as u32);
        self.reg_write(REG_DRIVER_STATUS, DRIVER_STATUS_RUN_MASK);
        let info = self.alloc(adminq::DRIVER_INFO_LEN as u64, 4096, false);
        let mut di = vec![0u8; adminq::DRIVER_INFO_LEN];
        di[0] = 1;
        di[48..48 + 11].copy_from_slice(b"7.3.4-cloud");
        self.mem.write(info, &di);
        self.adminq(encode::verify_driver_compatibility(
            info,
            adminq::DRIVER_INFO_LEN as u64,
        ))?;
        let desc = self.alloc(4096, 4096, true);
        self.adminq(encode::describe_device(desc, 4096))?;
        self.description = self.mem.read(desc, 4096);
        let d = &self.description;
        let be16 = |o: usize| u16::from_be_bytes([d[o], d[o + 1]]);
        self.ring_size_tx = u32::from(be16(10));
        self.ring_size_rx = u32::from(be16(12));
        let opts = adminq::parse_options(d).expect("options parse");
        assert!(opts.iter().any(|o| o.0 == adminq::DEV_OPT_ID_DQO_RDA));
        for (id, _, p) in &opts {
            if *id == adminq::DEV_OPT_ID_BUFFER_SIZES {
                self.packet_buf_size = u16::from_be_bytes([p[4], p[5]]);
                self.header_buf_size = u16::from_be_bytes([p[6], p[7]]);
            }
        }
        // gve_set_num_ntfy_blks: (vectors - 1) & ~1
        self.num_ntfy = (u32::from(self.dev.msix_vectors()) - 1) & !1;
        let counters = u32::from(be16(18));
        let ca = self.alloc(u64::from(counters) * 4, 4096, true);
        self.irq_dbs = self.alloc(u64::from(self.num_ntfy) * 64, 4096, true);
        let irq_dbs = self.irq_dbs;
        let num_ntfy = self.num_ntfy;
        self.adminq(encode::configure_device_resources(
            ca, counters, irq_dbs, num_ntfy, 64,
        ))?;
        let pm = self.alloc(adminq::PTYPE_MAP_LEN, 4096, true);
        self.adminq(encode::get_ptype_map(pm))?;
        self.configure_rss(max_rx)?;
        // (6 + 0)·max_tx + (2 + 4)·max_rx entries (gve_alloc_stats_report).
        let len = 8 + 16 * (6 * u64::from(max_tx) + 6 * u64::from(max_rx));
        let stats = self.alloc(len, 4096, true);
        self.stats = (stats, len);
        self.adminq(encode::report_stats(len, stats, 20000))?;
        self.tx = (0..max_tx).map(|_| None).collect();
        self.rx = (0..max_rx).map(|_| None).collect();
        Ok(())
    }

    /// CONFIGURE_RSS with the default LUT `i % nq` (gve_init_rss_config).
    pub fn configure_rss(&mut self, nq: u32) -> Result<(), AqError> {
        self.rss_queues = nq;
        let key = self.alloc(40, 64, false);
        self.mem.write(key, &crate::rss::DEFAULT_RSS_KEY);
        let lut = self.alloc(128 * 4, 64, false);
        let l: Vec<u8> = (0..128u32)
            .flat_map(|i| (i % nq.max(1)).to_be_bytes())
            .collect();
        self.mem.write(lut, &l);
        self.adminq(encode::configure_rss(&adminq::ConfigureRss {
            hash_types: 0x00d2,
            hash_alg: 1,
            hash_key_size: 40,
            hash_lut_size: 128,
            hash_key_addr: key,
            hash_lut_addr: lut,
        }))
    }

    /// The IRQ doorbell index the device assigned to block `b`.
    pub fn irq_db_index(&self, b: u32) -> u32 {
        let v = self.mem.read(self.irq_dbs + u64::from(b) * 64, 4);
        u32::from_be_bytes([v[0], v[1], v[2], v[3]])
    }

    /// MSI-X vector of TX queue `q` / RX queue `q`.
    pub fn tx_vector(&self, q: u32) -> u16 {
        q as u16
    }
    pub fn rx_vector(&self, q: u32) -> u16 {
        (self.num_ntfy / 2 + q) as u16
    }
    pub fn mgmt_vector(&self) -> u16 {
        self.num_ntfy as u16
    }

    /// Create TX queue `q` (single command).
    pub fn tx_create_cmd(&mut self, q: u32) -> RawCommand {
        let size = self.ring_size_tx;
        let ring = self.alloc(u64::from(size) * 16, 4096, false);
        let comp = self.alloc(u64::from(size) * 8, 4096, true);
        let qres = self.alloc(64, 4096, true);
        self.tx[q as usize] = Some(FakeTx {
            ring,
            comp,
            qres,
            size,
            tail: 0,
            db_index: 0,
            comp_head: 0,
            cur_gen: false,
            hw_head: 0,
            last_re: 0,
            next_tag: 0,
            outstanding: HashMap::new(),
        });
        encode::create_tx_queue(&CreateTxQueue {
            queue_id: q,
            queue_resources_addr: qres,
            tx_ring_addr: ring,
            queue_page_list_id: adminq::RAW_ADDRESSING_QPL_ID,
            ntfy_id: q,
            tx_comp_ring_addr: comp,
            tx_ring_size: size as u16,
            tx_comp_ring_size: size as u16,
        })
    }

    pub fn rx_create_cmd(&mut self, q: u32) -> RawCommand {
        let size = self.ring_size_rx;
        let pbs = u32::from(self.packet_buf_size);
        let hbs = if self.header_split {
            u32::from(self.header_buf_size)
        } else {
            0
        };
        let bufq = self.alloc(u64::from(size) * 32, 4096, false);
        let complq = self.alloc(u64::from(size) * 32, 4096, true);
        let qres = self.alloc(64, 4096, true);
        let hdr_base = if hbs > 0 {
            self.alloc(u64::from(hbs) * u64::from(size), 4096, true)
        } else {
            0
        };
        let bufs: Vec<u64> = (0..size)
            .map(|_| self.alloc(u64::from(pbs), 2048, true))
            .collect();
        self.rx[q as usize] = Some(FakeRx {
            bufq,
            complq,
            qres,
            size,
            tail: 0,
            db_index: 0,
            comp_head: 0,
            cur_gen: false,
            pbs,
            hbs,
            hdr_base,
            bufs,
            free: (0..size as u16).collect(),
            partial: None,
            errors: 0,
        });
        encode::create_rx_queue(&CreateRxQueue {
            queue_id: q,
            index: 0,
            ntfy_id: self.num_ntfy / 2 + q,
            queue_resources_addr: qres,
            rx_desc_ring_addr: complq,
            rx_data_ring_addr: bufq,
            queue_page_list_id: adminq::RAW_ADDRESSING_QPL_ID,
            rx_ring_size: size as u16,
            packet_buffer_size: pbs as u16,
            rx_buff_ring_size: size as u16,
            enable_rsc: u8::from(self.enable_rsc),
            header_buffer_size: hbs as u16,
        })
    }

    fn read_db_index(&self, qres: u64) -> u32 {
        let v = self.mem.read(qres, 4);
        u32::from_be_bytes([v[0], v[1], v[2], v[3]])
    }

    /// Interface up (gve_open): batch-create `nq` TX then RX queues, post
    /// RX buffers, enable every block's interrupt.
    pub fn up(&mut self, nq: u32, header_split: bool) -> Result<(), AqError> {
        self.header_split = header_split;
        if nq != self.rss_queues {
            // gve_adjust_queues → gve_init_rss_config with the new count.
            self.configure_rss(nq)?;
        }
        let cmds: Vec<RawCommand> = (0..nq).map(|q| self.tx_create_cmd(q)).collect();
        self.batch_ok(&cmds, "CREATE_TX_QUEUE")?;
        let cmds: Vec<RawCommand> = (0..nq).map(|q| self.rx_create_cmd(q)).collect();
        self.batch_ok(&cmds, "CREATE_RX_QUEUE")?;
        for q in 0..nq as usize {
            let qres = self.tx[q].as_ref().map_or(0, |t| t.qres);
            let db = self.read_db_index(qres);
            if let Some(t) = self.tx[q].as_mut() {
                t.db_index = db;
            }
            self.rx_started(q as u32);
        }
        for q in 0..nq {
            let itr = 1 | ((50 / 2) << 5);
            let i = self.irq_db_index(q);
            self.doorbell(i, itr);
            let i = self.irq_db_index(self.num_ntfy / 2 + q);
            self.doorbell(i, 1 | ((20 / 2) << 5));
        }
        Ok(())
    }

    fn rx_started(&mut self, q: u32) {
        let qres = self.rx[q as usize].as_ref().map_or(0, |r| r.qres);
        let db = self.read_db_index(qres);
        if let Some(r) = self.rx[q as usize].as_mut() {
            r.db_index = db;
        }
        self.post_rx(q);
    }

    fn batch_ok(&mut self, cmds: &[RawCommand], what: &str) -> Result<(), AqError> {
        match self
            .adminq_batch(cmds)
            .into_iter()
            .find(|s| *s != adminq::STATUS_PASSED)
        {
            None => Ok(()),
            Some(status) => Err(AqError {
                what: what.into(),
                status,
            }),
        }
    }

    /// Interface down: destroy all TX then all RX queues.
    pub fn down(&mut self) -> Result<(), AqError> {
        let txs: Vec<RawCommand> = (0..self.tx.len() as u32)
            .filter(|q| self.tx[*q as usize].is_some())
            .map(encode::destroy_tx_queue)
            .collect();
        self.batch_ok(&txs, "DESTROY_TX_QUEUE")?;
        let rxs: Vec<RawCommand> = (0..self.rx.len() as u32)
            .filter(|q| self.rx[*q as usize].is_some())
            .map(encode::destroy_rx_queue)
            .collect();
        self.batch_ok(&rxs, "DESTROY_RX_QUEUE")?;
        self.tx.iter_mut().for_each(|t| *t = None);
        self.rx.iter_mut().for_each(|r| *r = None);
        Ok(())
    }

    /// Queue-management restart of RX queue `q` (gve_rx_queue_stop +
    /// gve_rx_queue_start): destroy, new rings, create, post.
    pub fn restart_rx(&mut self, q: u32) -> Result<(), AqError> {
        self.adminq(encode::destroy_rx_queue(q))?;
        self.rx[q as usize] = None;
        let c = self.rx_create_cmd(q);
        self.adminq(c)?;
        self.rx_started(q);
        for b in 0..self.num_ntfy {
            let i = self.irq_db_index(b);
            self.doorbell(i, 1 | (3 << 3));
        }
        Ok(())
    }

    /// Teardown + reset handshake (gve_teardown_priv_resources →
    /// gve_adminq_release, revision 1).
    pub fn teardown(&mut self) -> Result<(), AqError> {
        self.adminq(encode::report_stats(0, 0, 20000))?;
        self.adminq(encode::deconfigure_device_resources())?;
        self.reset()
    }

    /// Reset handshake; returns Ok once DEVICE_IS_RESET reads back.
    pub fn reset(&mut self) -> Result<(), AqError> {
        self.reg_write(REG_DRIVER_STATUS, DRIVER_STATUS_RESET_MASK);
        for _ in 0..500 {
            if self.reg_read(REG_DEVICE_STATUS) & DEVICE_STATUS_DEVICE_IS_RESET != 0 {
                self.prod = 0;
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        Err(AqError {
            what: "reset".into(),
            status: 0,
        })
    }

    /// Post buffers like gve_rx_post_buffers_dqo: fill up to size - 1,
    /// doorbell whenever the tail is a multiple of 32.
    pub fn post_rx(&mut self, q: u32) {
        let Some(r) = self.rx[q as usize].as_mut() else {
            return;
        };
        let mask = r.size - 1;
        let mut dbs = Vec::new();
        let limited = self.rx_post_max != u32::MAX;
        let start = r.tail;
        // Outstanding buffers never exceed size - 1.
        while r.free.len() > 1 && (r.size as usize - r.free.len()) < self.rx_post_max as usize {
            let Some(id) = r.free.pop_front() else { break };
            let d = RxBufDesc {
                buf_id: id,
                buf_addr: r.bufs[usize::from(id)],
                header_buf_addr: if r.hbs > 0 {
                    r.hdr_base + u64::from(r.hbs) * u64::from(id)
                } else {
                    0
                },
            };
            self.mem.write(r.bufq + u64::from(r.tail) * 32, &d.encode());
            r.tail = (r.tail + 1) & mask;
            if r.tail % RX_BUF_THRESH == 0 {
                dbs.push((r.db_index, r.tail));
            }
        }
        if limited && r.tail != start && dbs.last().is_none_or(|d| d.1 != r.tail) {
            dbs.push((r.db_index, r.tail));
        }
        for (i, v) in dbs {
            self.doorbell(i, v);
        }
    }

    /// Send a packet made of `bufs` on TX queue `q` like gve_tx_add_skb_dqo:
    /// [TSO ctx] + general ctx + data descriptors (report_event every 32).
    /// `tso`: (mss, header_len). Returns the completion tag.
    pub fn send(&mut self, q: u32, bufs: &[&[u8]], csum: bool, tso: Option<(u16, u8)>) -> u16 {
        let mut addrs = Vec::new();
        for b in bufs {
            let a = self.alloc(b.len() as u64, 1, false);
            self.mem.write(a, b);
            addrs.push((a, b.len() as u64));
        }
        self.send_addrs(q, &addrs, csum, tso)
    }

    /// Like [`send`](Self::send) with buffers already in memory.
    pub fn send_addrs(
        &mut self,
        q: u32,
        addrs: &[(u64, u64)],
        csum: bool,
        tso: Option<(u16, u8)>,
    ) -> u16 {
        let mem = self.mem.clone();
        let t = self.tx[q as usize].as_mut().expect("TX queue not created");
        let mask = t.size - 1;
        let tag = t.next_tag;
        t.next_tag = t.next_tag.wrapping_add(1) % 0x7fff;
        let total: u64 = addrs.iter().map(|a| a.1).sum();
        let mut idx = t.tail;
        let put = |d: TxDesc, idx: &mut u32| {
            mem.write(t.ring + u64::from(*idx) * 16, &d.encode());
            *idx = (*idx + 1) & mask;
        };
        if let Some((mss, hl)) = tso {
            put(
                TxDesc::TsoCtx {
                    tso_total_len: (total - u64::from(hl)) as u32,
                    mss,
                    header_len: hl,
                    tso: true,
                },
                &mut idx,
            );
        }
        put(TxDesc::GeneralCtx, &mut idx);
        let mut pieces = Vec::new();
        for (a, l) in addrs {
            let (mut a, mut l) = (*a, *l);
            while l > 0 {
                let n = l.min(16383);
                pieces.push((a, n));
                a += n;
                l -= n;
            }
        }
        let n = pieces.len();
        for (i, (a, l)) in pieces.into_iter().enumerate() {
            put(
                TxDesc::Pkt {
                    buf_addr: a,
                    end_of_packet: i + 1 == n,
                    checksum_offload_enable: csum,
                    report_event: false,
                    compl_tag: tag,
                    buf_size: l as u16,
                },
                &mut idx,
            );
        }
        // gve_tx_update_tail: report_event on the last descriptor when 32+
        // descriptors passed since the last one.
        let last = (idx.wrapping_sub(1)) & mask;
        if (last.wrapping_sub(t.last_re) & mask) >= 32 {
            let at = t.ring + u64::from(last) * 16;
            let mut d = mem.read(at, 16);
            d[8] |= 0x80;
            mem.write(at, &d);
            t.last_re = last;
        }
        t.tail = idx;
        t.outstanding.insert(tag, addrs.to_vec());
        let (db, tail) = (t.db_index, t.tail);
        self.doorbell(db, tail);
        tag
    }

    /// Free TX descriptor slots as the driver computes them.
    pub fn tx_free_slots(&self, q: u32) -> u32 {
        self.tx[q as usize].as_ref().map_or(0, |t| {
            let used = t.tail.wrapping_sub(t.hw_head) & (t.size - 1);
            t.size - 1 - used
        })
    }

    /// Read new TX completions (gve_clean_tx_done_dqo).
    pub fn reap_tx(&mut self, q: u32) -> Vec<TxCompl> {
        let mem = self.mem.clone();
        let Some(t) = self.tx[q as usize].as_mut() else {
            return Vec::new();
        };
        let mut out = Vec::new();
        loop {
            let b = mem.read(t.comp + u64::from(t.comp_head) * 8, 8);
            let mut a = [0u8; 8];
            a.copy_from_slice(&b);
            let c = parse_tx_compl(&a);
            if c.generation == t.cur_gen {
                break;
            }
            match c.ctype {
                COMPL_TYPE_DESC => t.hw_head = u32::from(c.value),
                COMPL_TYPE_PKT => {
                    t.outstanding.remove(&c.value);
                }
                _ => {}
            }
            out.push(c);
            t.comp_head = (t.comp_head + 1) & (t.size - 1);
            if t.comp_head == 0 {
                t.cur_gen = !t.cur_gen;
            }
        }
        out
    }

    /// Read new RX completions, reassemble packets, repost buffers
    /// (gve_rx_poll_dqo).
    pub fn poll_rx(&mut self, q: u32) -> Vec<RxPacket> {
        let mem = self.mem.clone();
        let Some(r) = self.rx[q as usize].as_mut() else {
            return Vec::new();
        };
        let mut out = Vec::new();
        loop {
            let b = mem.read(r.complq + u64::from(r.comp_head) * 32, 32);
            let mut a = [0u8; 32];
            a.copy_from_slice(&b);
            let c = RxCompl::parse(&a);
            if c.generation == r.cur_gen {
                break;
            }
            r.comp_head = (r.comp_head + 1) & (r.size - 1);
            if r.comp_head == 0 {
                r.cur_gen = !r.cur_gen;
            }
            let id = usize::from(c.buf_id);
            if id >= r.bufs.len() || r.free.contains(&c.buf_id) {
                r.errors += 1;
                r.partial = None;
                continue;
            }
            r.free.push_back(c.buf_id);
            if c.rx_error {
                r.errors += 1;
                r.partial = None;
                continue;
            }
            let p = r.partial.get_or_insert_with(RxPacket::default);
            if c.split_header && c.header_len > 0 && !c.header_buffer_overflow {
                let h = mem.read(
                    r.hdr_base + u64::from(r.hbs) * id as u64,
                    usize::from(c.header_len),
                );
                p.header = h;
            }
            let data = mem.read(r.bufs[id], usize::from(c.packet_len));
            p.payload.extend_from_slice(&data);
            p.compls.push(c);
            if c.end_of_packet
                && let Some(p) = r.partial.take()
            {
                out.push(p);
            }
        }
        self.post_rx(q);
        out
    }

    /// Re-enable block `b`'s interrupt the way the end of NAPI does.
    pub fn rearm(&mut self, b: u32) {
        let i = self.irq_db_index(b);
        self.doorbell(i, 1 | (3 << 3));
    }
}

/// Run the device work of `nics` (created with `spawn_worker: false`) on
/// this thread until all of them are idle.
pub fn poll_all(nics: &[&NicHandle]) {
    for _ in 0..10_000 {
        let rounds: usize = nics.iter().map(|n| n.poll()).sum();
        if rounds == nics.len() {
            // One more pass catches frames one NIC produced for another.
            let rounds: usize = nics.iter().map(|n| n.poll()).sum();
            if rounds == nics.len() {
                return;
            }
        }
    }
}

/// Wait (threaded NICs) until `cond` holds or `timeout` passes.
pub fn wait_for(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    cond()
}

/// The NIC RX stats group `(queue, [drops, no_buffers, over_mru,
/// bad_csum])` for every queue the device wrote into the stats report, read
/// the way gve_ethtool.c does.
impl FakeDriver {
    pub fn nic_rx_stats(&self, rx_queues: usize) -> Vec<(u32, [u64; 4])> {
        let (addr, len) = self.stats;
        let entries = ((len - 8) / 16) as usize;
        let base = entries - 4 * rx_queues;
        let raw = self
            .mem
            .read(addr + 8 + 16 * base as u64, 16 * 4 * rx_queues);
        raw.chunks_exact(64)
            .filter_map(|g| {
                let name = u32::from_be_bytes(g[0..4].try_into().ok()?);
                if name == 0 {
                    return None;
                }
                let q = u32::from_be_bytes(g[4..8].try_into().ok()?);
                let v = |i: usize| {
                    u64::from_be_bytes(g[16 * i + 8..16 * i + 16].try_into().unwrap_or([0; 8]))
                };
                Some((q, [v(0), v(1), v(2), v(3)]))
            })
            .collect()
    }
}

/// A config for tests: no worker thread, small rings.
pub fn test_config(name: &str, mac_last: u8) -> GveConfig {
    GveConfig {
        stats_refresh: Duration::ZERO,
        name: name.into(),
        mac: [0x02, 0, 0, 0, 0, mac_last],
        tx_ring_size: 256,
        rx_ring_size: 256,
        spawn_worker: false,
        ..GveConfig::default()
    }
}
