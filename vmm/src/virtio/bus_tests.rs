//! Tests of virtio-pci devices sitting on the PCI bus, accessed only through
//! the bus front ends (ECAM, CF8/CFC, MMIO window), plus property tests
//! that random guest register traffic never panics.

use std::io::Read;
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use proptest::prelude::*;
use vm_memory::{Bytes, GuestAddress};

use crate::device::BusDevice;
use crate::layout;
use crate::pci::msix::tests::FakeSink;
use crate::pci::{PciBdf, PciBus, PciConfigIo, PciConfigMmio, PciMmioWindow};
use crate::virtio::pci::tests::memory;
use crate::virtio::pci::{VIRTIO_PCI_CAP_COMMON_CFG, VIRTIO_PCI_CAP_NOTIFY_CFG, VirtioPciDevice};
use crate::virtio::test_utils::TestQueue;
use crate::virtio::{
    Console, Rng, STATUS_ACKNOWLEDGE, STATUS_DRIVER, STATUS_DRIVER_OK, STATUS_FEATURES_OK,
    VIRTIO_F_VERSION_1,
};

struct Machine {
    bus: Arc<PciBus>,
    io: PciConfigIo,
    ecam: PciConfigMmio,
    w32: PciMmioWindow,
    w64: PciMmioWindow,
    console: PciBdf,
    rng: PciBdf,
    host: UnixStream,
    mem: vm_memory::GuestMemoryMmap<()>,
    sinks: Vec<Arc<FakeSink>>,
}

fn machine() -> Machine {
    let mem = memory();
    let bus = Arc::new(PciBus::new());
    let (console, host) = Console::new().unwrap();
    let s1 = Arc::new(FakeSink::default());
    let s2 = Arc::new(FakeSink::default());
    let c = VirtioPciDevice::new(Box::new(console), mem.clone(), s1.clone()).unwrap();
    let r = VirtioPciDevice::new(Box::new(Rng::new(false)), mem.clone(), s2.clone()).unwrap();
    let console = bus.add_device(Arc::new(Mutex::new(c))).unwrap();
    let rng = bus.add_device(Arc::new(Mutex::new(r))).unwrap();
    Machine {
        io: PciConfigIo::new(bus.clone()),
        ecam: PciConfigMmio::new(bus.clone()),
        w32: PciMmioWindow::new(bus.clone()),
        w64: PciMmioWindow::new(bus.clone()),
        bus,
        console,
        rng,
        host,
        mem,
        sinks: vec![s1, s2],
    }
}

impl Machine {
    fn cfg_read(&mut self, bdf: PciBdf, off: u64, len: usize) -> u64 {
        let mut d = vec![0u8; len];
        let a = (u64::from(bdf.device) << 15) | off;
        self.ecam.read(layout::ECAM_START, a, &mut d);
        le(&d)
    }

    fn cfg_write(&mut self, bdf: PciBdf, off: u64, len: usize, v: u64) {
        let a = (u64::from(bdf.device) << 15) | off;
        self.ecam
            .write(layout::ECAM_START, a, &v.to_le_bytes()[..len]);
    }

    fn mmio_read(&mut self, addr: u64, len: usize) -> u64 {
        let mut d = vec![0u8; len];
        self.w64
            .read(layout::MMIO64_START, addr - layout::MMIO64_START, &mut d);
        le(&d)
    }

    fn mmio_write(&mut self, addr: u64, len: usize, v: u64) {
        self.w64.write(
            layout::MMIO64_START,
            addr - layout::MMIO64_START,
            &v.to_le_bytes()[..len],
        );
    }

    fn bar0(&mut self, bdf: PciBdf) -> u64 {
        (self.cfg_read(bdf, 0x10, 4) & !0xf) | (self.cfg_read(bdf, 0x14, 4) << 32)
    }

    /// Find a vendor capability of `cfg_type`: (bar offset, cap offset).
    fn virtio_cap(&mut self, bdf: PciBdf, cfg_type: u8) -> (u64, u64) {
        let mut p = self.cfg_read(bdf, 0x34, 1);
        while p != 0 {
            let id = self.cfg_read(bdf, p, 1);
            if id == 9 && self.cfg_read(bdf, p + 3, 1) == u64::from(cfg_type) {
                return (self.cfg_read(bdf, p + 8, 4), p);
            }
            p = self.cfg_read(bdf, p + 1, 1);
        }
        panic!("capability {cfg_type} not found");
    }
}

impl Machine {
    /// Drive `bdf` to DRIVER_OK through the bus with MSI-X on and queue `i`
    /// at `queues[i]` (TestQueue layout), vector `i + 1`. Returns the BAR.
    fn bring_up(&mut self, bdf: PciBdf, queues: &[TestQueue<'_>]) -> u64 {
        let bar = self.bar0(bdf);
        let (common, _) = self.virtio_cap(bdf, VIRTIO_PCI_CAP_COMMON_CFG);
        let c = bar + common;
        let msix = self.cfg_read(bdf, 0x34, 1);
        self.cfg_write(bdf, msix + 2, 2, 0x8000);
        let table = bar + (self.cfg_read(bdf, msix + 4, 4) & !7);
        for v in 0..=queues.len() as u64 {
            self.mmio_write(table + 16 * v, 8, 0xfee0_0000);
            self.mmio_write(table + 16 * v + 8, 4, 0x40 + v);
            self.mmio_write(table + 16 * v + 12, 4, 0);
        }
        self.mmio_write(c + 0x14, 1, u64::from(STATUS_ACKNOWLEDGE | STATUS_DRIVER));
        self.mmio_write(c + 0x08, 4, 1);
        self.mmio_write(c + 0x0c, 4, 1 << (VIRTIO_F_VERSION_1 - 32));
        let s = STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK;
        self.mmio_write(c + 0x14, 1, u64::from(s));
        for (i, q) in queues.iter().enumerate() {
            self.mmio_write(c + 0x16, 2, i as u64);
            self.mmio_write(c + 0x18, 2, u64::from(q.size));
            self.mmio_write(c + 0x1a, 2, i as u64 + 1);
            self.mmio_write(c + 0x20, 8, q.desc);
            self.mmio_write(c + 0x28, 8, q.avail);
            self.mmio_write(c + 0x30, 8, q.used);
            self.mmio_write(c + 0x1c, 2, 1);
        }
        self.mmio_write(c + 0x14, 1, u64::from(s | STATUS_DRIVER_OK));
        assert_eq!(self.mmio_read(c + 0x14, 1), u64::from(s | STATUS_DRIVER_OK));
        bar
    }
}

fn le(d: &[u8]) -> u64 {
    d.iter().rev().fold(0, |a, b| (a << 8) | u64::from(*b))
}

fn wait_for(mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    f()
}

#[test]
fn enumerate_and_drive_console_through_the_bus() {
    let mut m = machine();
    assert_eq!(m.console, PciBdf::new(0, 1, 0));
    assert_eq!(m.rng, PciBdf::new(0, 2, 0));
    // CF8/CFC sees the same functions.
    m.io.write(0xcf8, 0, &(0x8000_0000u32 | (1 << 11)).to_le_bytes());
    let mut d = [0u8; 4];
    m.io.read(0xcf8, 4, &mut d);
    assert_eq!(u32::from_le_bytes(d), 0x1043_1af4);
    m.io.write(0xcf8, 0, &(0x8000_0000u32 | (2 << 11)).to_le_bytes());
    m.io.read(0xcf8, 4, &mut d);
    assert_eq!(u32::from_le_bytes(d), 0x1044_1af4);
    assert_eq!(m.cfg_read(PciBdf::new(0, 3, 0), 0, 4), 0xffff_ffff);

    // BARs were pre-assigned, naturally aligned, in the 64-bit window.
    let bar_c = m.bar0(m.console);
    let bar_r = m.bar0(m.rng);
    assert_eq!(bar_c, layout::MMIO64_START);
    assert_eq!(bar_r, layout::MMIO64_START + 0x8000);

    // Move the console's BAR like Linux would (decode off, size, program).
    let con = m.console;
    let cmd = m.cfg_read(con, 4, 2);
    m.cfg_write(con, 4, 2, cmd & !2);
    m.cfg_write(con, 0x10, 4, 0xffff_ffff);
    m.cfg_write(con, 0x14, 4, 0xffff_ffff);
    assert_eq!(m.cfg_read(con, 0x10, 4), 0xffff_8004);
    let new_bar = layout::MMIO64_START + 0x10_0000;
    m.cfg_write(con, 0x10, 4, new_bar & 0xffff_ffff);
    m.cfg_write(con, 0x14, 4, new_bar >> 32);
    m.cfg_write(con, 4, 2, cmd | 2 | 4);
    assert_eq!(m.bar0(con), new_bar);

    let (common, _) = m.virtio_cap(con, VIRTIO_PCI_CAP_COMMON_CFG);
    let (notify, ncap) = m.virtio_cap(con, VIRTIO_PCI_CAP_NOTIFY_CFG);
    let mult = m.cfg_read(con, ncap + 16, 4);
    let c = new_bar + common;
    // Old address is dead; new one answers num_queues = 2.
    assert_eq!(m.mmio_read(bar_c + common + 0x12, 2), 0xffff);
    assert_eq!(m.mmio_read(c + 0x12, 2), 2);

    // Enable MSI-X (cap is first) and unmask vectors 0..3.
    let msix = m.cfg_read(con, 0x34, 1);
    assert_eq!(m.cfg_read(con, msix, 1), 0x11);
    m.cfg_write(con, msix + 2, 2, 0x8000);
    let table = new_bar + (m.cfg_read(con, msix + 4, 4) & !7);
    for v in 0..3u64 {
        m.mmio_write(table + 16 * v, 8, 0xfee0_0000);
        m.mmio_write(table + 16 * v + 8, 4, 0x40 + v);
        m.mmio_write(table + 16 * v + 12, 4, 0);
    }

    // Negotiate and set up both queues.
    m.mmio_write(c + 0x14, 1, u64::from(STATUS_ACKNOWLEDGE | STATUS_DRIVER));
    m.mmio_write(c + 0x08, 4, 1);
    m.mmio_write(c + 0x0c, 4, 1 << (VIRTIO_F_VERSION_1 - 32));
    let s = STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK;
    m.mmio_write(c + 0x14, 1, u64::from(s));
    assert_eq!(m.mmio_read(c + 0x14, 1), u64::from(s));
    let mem = m.mem.clone();
    let rxq = TestQueue::new(&mem, 0x1000, 32);
    let txq = TestQueue::new(&mem, 0x4000, 32);
    for (i, q) in [&rxq, &txq].into_iter().enumerate() {
        m.mmio_write(c + 0x16, 2, i as u64);
        m.mmio_write(c + 0x18, 2, 32);
        m.mmio_write(c + 0x1a, 2, i as u64 + 1);
        assert_eq!(m.mmio_read(c + 0x1a, 2), i as u64 + 1);
        m.mmio_write(c + 0x20, 8, q.desc);
        m.mmio_write(c + 0x28, 8, q.avail);
        m.mmio_write(c + 0x30, 8, q.used);
        m.mmio_write(c + 0x1c, 2, 1);
    }
    m.mmio_write(c + 0x14, 1, u64::from(s | STATUS_DRIVER_OK));
    assert_eq!(m.mmio_read(c + 0x14, 1), u64::from(s | STATUS_DRIVER_OK));

    // Guest → host.
    mem.write_slice(b"agent ready\n", GuestAddress(0x10000))
        .unwrap();
    txq.add_chain(0, &[(0x10000, 12, 0)]);
    // notify_off of queue 1 (still selected).
    let off = m.mmio_read(c + 0x1e, 2) * mult;
    m.mmio_write(new_bar + notify + off, 2, 1);
    m.host
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut buf = [0u8; 12];
    m.host.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"agent ready\n");
    assert!(wait_for(|| txq.used_idx() == 1));
    assert!(wait_for(|| m.sinks[0].triggers(2) == 1));
    assert_eq!(m.sinks[1].triggers(2), 0);

    // Platform reset through the bus: device back to status 0, BAR kept.
    m.bus.reset();
    assert_eq!(m.bar0(con), new_bar);
    assert_eq!(m.mmio_read(c + 0x14, 1), 0);
    let _ = &m.w32;
}

#[derive(Clone, Debug)]
enum Op {
    Cf8(u64, Vec<u8>),
    Cf8Read(u64, usize),
    Ecam(u8, u64, Vec<u8>),
    EcamRead(u8, u64, usize),
    /// Write to BAR 0 of device `dev` (0 console, 1 rng) at `off`.
    Bar(u8, u64, Vec<u8>),
    BarRead(u8, u64, usize),
    Window(u64, Vec<u8>),
    Host(Vec<u8>),
}

fn access_len() -> impl Strategy<Value = usize> {
    prop_oneof![Just(1usize), Just(2), Just(4), Just(8)]
}

fn value_bytes() -> impl Strategy<Value = Vec<u8>> {
    let value = prop_oneof![
        any::<u64>(),
        0u64..0x10_0000,
        0u64..0x100,
        Just(0x1000u64),
        Just(u64::MAX),
    ];
    (value, access_len()).prop_map(|(v, n)| v.to_le_bytes()[..n].to_vec())
}

fn bar_offset() -> impl Strategy<Value = u64> {
    prop_oneof![
        3 => 0u64..0x40,
        1 => 0x1000u64..0x1004,
        1 => 0x2000u64..0x2010,
        2 => 0x3000u64..0x3010,
        1 => 0x4000u64..0x4040,
        1 => 0x5000u64..0x5010,
        1 => any::<u64>(),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        1 => (0u64..8, value_bytes()).prop_map(|(o, d)| Op::Cf8(o, d)),
        1 => (0u64..8, access_len()).prop_map(|(o, n)| Op::Cf8Read(o, n)),
        2 => (0u8..4, 0u64..0x1000, value_bytes()).prop_map(|(s, o, d)| Op::Ecam(s, o, d)),
        1 => (0u8..4, 0u64..0x1000, access_len()).prop_map(|(s, o, n)| Op::EcamRead(s, o, n)),
        4 => (0u8..2, bar_offset(), value_bytes()).prop_map(|(s, o, d)| Op::Bar(s, o, d)),
        2 => (0u8..2, bar_offset(), access_len()).prop_map(|(s, o, n)| Op::BarRead(s, o, n)),
        1 => (0u64..0x20000, value_bytes()).prop_map(|(o, d)| Op::Window(o, d)),
        1 => proptest::collection::vec(any::<u8>(), 0..64).prop_map(Op::Host),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn random_register_traffic_never_panics(ops in proptest::collection::vec(op(), 1..80)) {
        let mut m = machine();
        m.host.set_nonblocking(true).unwrap();
        let devs = [m.console, m.rng];
        for op in ops {
            match op {
                Op::Cf8(o, d) => m.io.write(0xcf8, o, &d),
                Op::Cf8Read(o, n) => {
                    let mut d = vec![0u8; n];
                    m.io.read(0xcf8, o, &mut d);
                }
                Op::Ecam(s, o, d) => {
                    m.ecam.write(layout::ECAM_START, (u64::from(s) << 15) | o, &d)
                }
                Op::EcamRead(s, o, n) => {
                    let mut d = vec![0u8; n];
                    m.ecam.read(layout::ECAM_START, (u64::from(s) << 15) | o, &mut d);
                }
                Op::Bar(s, o, d) => {
                    let dev = m.bus.device(devs[usize::from(s)]).unwrap();
                    crate::pci::lock(&dev).bar_write(0, o, &d);
                }
                Op::BarRead(s, o, n) => {
                    let dev = m.bus.device(devs[usize::from(s)]).unwrap();
                    let mut d = vec![0u8; n];
                    crate::pci::lock(&dev).bar_read(0, o, &mut d);
                }
                Op::Window(o, d) => {
                    m.w64.write(layout::MMIO64_START, o, &d);
                    let mut r = vec![0u8; d.len()];
                    m.w64.read(layout::MMIO64_START, o, &mut r);
                    m.w32.read(layout::MMIO32_START, o, &mut r);
                }
                Op::Host(d) => {
                    let _ = std::io::Write::write(&mut m.host, &d);
                    let mut r = [0u8; 256];
                    let _ = m.host.read(&mut r);
                }
            }
        }
        // Identity registers are immutable whatever the guest did.
        prop_assert_eq!(m.cfg_read(m.console, 0, 4), 0x1043_1af4);
        prop_assert_eq!(m.cfg_read(m.rng, 0, 4), 0x1044_1af4);
        prop_assert_eq!(m.cfg_read(PciBdf::new(0, 0, 0), 0, 4), 0x0d57_8086);
        // Platform reset and teardown join every worker.
        m.bus.reset();
    }
}

#[derive(Clone, Debug)]
enum RingOp {
    /// Raw bytes into the ring area.
    Mem(u64, Vec<u8>),
    /// Descriptor `idx` of queue `q`.
    Desc {
        q: usize,
        idx: u16,
        addr: u64,
        len: u32,
        flags: u16,
        next: u16,
    },
    Publish(usize, u16),
    Notify(usize),
    Host(Vec<u8>),
    HostRead,
}

/// (device index, queue index) for the three queues: console rx/tx, rng.
const RING_QUEUES: [(usize, u64); 3] = [(0, 0), (0, 1), (1, 0)];
const RING_BASES: [u64; 3] = [0x1000, 0x4000, 0x7000];
const RING_SIZE: u16 = 8;

fn ring_op() -> impl Strategy<Value = RingOp> {
    let addr = prop_oneof![
        4 => 0x10000u64..0x10_0000,
        1 => 0u64..0x10000,
        1 => any::<u64>(),
        1 => 0xf_f000u64..0x10_1000,
    ];
    let len = prop_oneof![4 => 0u32..0x2000, 1 => any::<u32>()];
    prop_oneof![
        1 => (0x1000u64..0xa000, proptest::collection::vec(any::<u8>(), 1..16))
            .prop_map(|(a, d)| RingOp::Mem(a, d)),
        6 => (0usize..3, 0u16..10, addr, len, 0u16..8, 0u16..10).prop_map(
            |(q, idx, addr, len, flags, next)| RingOp::Desc { q, idx, addr, len, flags, next }
        ),
        4 => (0usize..3, 0u16..10).prop_map(|(q, h)| RingOp::Publish(q, h)),
        3 => (0usize..3).prop_map(RingOp::Notify),
        1 => proptest::collection::vec(any::<u8>(), 1..300).prop_map(RingOp::Host),
        1 => Just(RingOp::HostRead),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn random_rings_never_panic(ops in proptest::collection::vec(ring_op(), 1..60)) {
        let mut m = machine();
        m.host.set_nonblocking(true).unwrap();
        let mem = m.mem.clone();
        let qs: Vec<TestQueue<'_>> =
            RING_BASES.iter().map(|&b| TestQueue::new(&mem, b, RING_SIZE)).collect();
        let devs = [m.console, m.rng];
        let bars = [
            m.bring_up(devs[0], &qs[0..2]),
            m.bring_up(devs[1], &qs[2..3]),
        ];
        for op in ops {
            match op {
                RingOp::Mem(a, d) => {
                    let _ = mem.write_slice(&d, GuestAddress(a));
                }
                RingOp::Desc { q, idx, addr, len, flags, next } => {
                    let a = RING_BASES[q] + 16 * u64::from(idx);
                    mem.write_obj(addr, GuestAddress(a)).unwrap();
                    mem.write_obj(len, GuestAddress(a + 8)).unwrap();
                    mem.write_obj(flags, GuestAddress(a + 12)).unwrap();
                    mem.write_obj(next, GuestAddress(a + 14)).unwrap();
                }
                RingOp::Publish(q, head) => qs[q].publish(head),
                RingOp::Notify(q) => {
                    let (d, qi) = RING_QUEUES[q];
                    m.mmio_write(bars[d] + 0x3000 + 4 * qi, 2, qi);
                }
                RingOp::Host(d) => {
                    let _ = std::io::Write::write(&mut m.host, &d);
                }
                RingOp::HostRead => {
                    let mut r = [0u8; 4096];
                    let _ = m.host.read(&mut r);
                }
            }
        }
        std::thread::sleep(Duration::from_millis(1));
        m.bus.reset();
        drop(m);
        prop_assert_eq!(
            crate::virtio::worker::PANICKED_WORKERS.load(std::sync::atomic::Ordering::SeqCst),
            0
        );
    }
}
