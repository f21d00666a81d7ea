//! Guest-controlled garbage: random ring operations, raw descriptors and
//! admin commands never panic, never touch unmapped memory (the fake
//! memory refuses it) and never leave the device unrecoverable.

use proptest::prelude::*;
use sim_nic::adminq::{self, encode};
use sim_nic::desc::TxDesc;
use sim_nic::packet::build;
use sim_nic::regs::*;
use sim_nic::testing::{FakeDriver, poll_all, test_config};
use sim_nic::{RefusalKind, Wire, WireOptions};
use vmm::dma::FaultReason;

const MEM: usize = 8 << 20;

fn small() -> sim_nic::GveConfig {
    sim_nic::GveConfig {
        num_queues: 2,
        tx_ring_size: 64,
        rx_ring_size: 64,
        ..test_config("r", 1)
    }
}

#[derive(Clone, Debug)]
enum Op {
    TxDoorbell(u8, u32),
    RxDoorbell(u8, u32),
    IrqDoorbell(u8, u32),
    TxDesc(u8, u8, [u8; 16]),
    TxGoodPacket(u8, u16),
    RxDesc(u8, u8, u16, u64, u64),
    RawDoorbell(u16, u32),
    Frame(Vec<u8>),
    Admin([u8; 64]),
    Reg(u8, u32),
    Poll,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (any::<u8>(), any::<u32>()).prop_map(|(q, v)| Op::TxDoorbell(q, v)),
        (any::<u8>(), any::<u32>()).prop_map(|(q, v)| Op::RxDoorbell(q, v)),
        (any::<u8>(), any::<u32>()).prop_map(|(q, v)| Op::IrqDoorbell(q, v)),
        (any::<u8>(), any::<u8>(), any::<[u8; 16]>()).prop_map(|(q, s, d)| Op::TxDesc(q, s, d)),
        (any::<u8>(), 1u16..3000).prop_map(|(q, n)| Op::TxGoodPacket(q, n)),
        (
            any::<u8>(),
            any::<u8>(),
            any::<u16>(),
            any::<u64>(),
            any::<u64>()
        )
            .prop_map(|(q, s, id, a, h)| Op::RxDesc(q, s, id, a, h)),
        (any::<u16>(), any::<u32>()).prop_map(|(o, v)| Op::RawDoorbell(o, v)),
        proptest::collection::vec(any::<u8>(), 0..1600).prop_map(Op::Frame),
        any::<[u8; 32]>().prop_map(|h| {
            let mut a = [0u8; 64];
            a[..32].copy_from_slice(&h);
            a[0..3].fill(0);
            a[3] %= 0x14;
            Op::Admin(a)
        }),
        (any::<u8>(), any::<u32>()).prop_map(|(o, v)| Op::Reg(o, v)),
        Just(Op::Poll),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn random_ring_operations(ops in proptest::collection::vec(op(), 1..60)) {
        let (mut d, port) = FakeDriver::new(small(), MEM);
        let (_w, host) = Wire::connect_host(port, WireOptions::default()).unwrap();
        d.probe().unwrap();
        d.up(2, true).unwrap();
        let base = d.mem.base();
        for op in ops {
            match op {
                Op::TxDoorbell(q, v) => {
                    let i = TX_DB_BASE + u32::from(q % 3);
                    d.doorbell(i, v % 80);
                }
                Op::RxDoorbell(q, v) => d.doorbell(RX_DB_BASE + u32::from(q % 3), v % 80),
                Op::IrqDoorbell(q, v) => d.doorbell(u32::from(q % 10), v),
                Op::TxDesc(q, slot, mut raw) => {
                    if let Some(t) = d.tx[usize::from(q % 2)].as_ref() {
                        // Half the time, point the buffer into mapped memory.
                        if raw[0] & 1 == 0 {
                            let a = base + u64::from(u32::from_le_bytes([raw[1], raw[2], raw[3], 0]));
                            raw[0..8].copy_from_slice(&a.to_le_bytes());
                        }
                        let at = t.ring + u64::from(u32::from(slot) % t.size) * 16;
                        d.mem.write(at, &raw);
                    }
                }
                Op::TxGoodPacket(q, n) => {
                    let q = u32::from(q % 2);
                    if d.tx_free_slots(q) > 8 {
                        let f = build::tcp4([1; 6], [2; 6], [1; 4], [2; 4], 1, 2, 0, 0x10, &vec![7; usize::from(n)]);
                        let tso = (f.len() > 1514).then_some((1448, 54));
                        d.send(q, &[&f], true, tso);
                    }
                }
                Op::RxDesc(q, slot, id, a, h) => {
                    if let Some(x) = d.rx[usize::from(q % 2)].as_ref() {
                        let mut raw = [0u8; 32];
                        raw[0..2].copy_from_slice(&id.to_le_bytes());
                        let a = if a & 1 == 0 { base + (a >> 40) } else { a };
                        raw[8..16].copy_from_slice(&a.to_le_bytes());
                        raw[16..24].copy_from_slice(&h.to_le_bytes());
                        d.mem.write(x.bufq + u64::from(u32::from(slot) % x.size) * 32, &raw);
                    }
                }
                Op::RawDoorbell(o, v) => d.dev_bar_write(DOORBELL_BAR, u64::from(o), &v.to_le_bytes()),
                Op::Frame(f) => { host.send(f); }
                Op::Admin(cmd) => { d.adminq_batch(&[cmd]); }
                Op::Reg(o, v) => {
                    // Keep the admin queue itself alive (a reset is fine).
                    let off = u64::from(o % 0x30) & !3;
                    if off != REG_ADMINQ_BASE_LO && off != REG_ADMINQ_BASE_HI {
                        d.reg_write(off, v);
                    }
                }
                Op::Poll => {
                    poll_all(&[&d.handle]);
                    for q in 0..2 { d.reap_tx(q); d.poll_rx(q); d.rearm(q); }
                    while host.try_recv().is_some() {}
                }
            }
        }
        poll_all(&[&d.handle]);
        // Every refused DMA was to memory the driver never mapped for that
        // access (the fake memory enforces it); nothing else faults.
        for f in d.mem.faults() {
            prop_assert!(matches!(f.reason, FaultReason::Unmapped | FaultReason::Permission | FaultReason::OutsideRam | FaultReason::BadRange));
        }
        // The device recovers through a reset.
        d.tx.iter_mut().for_each(|t| *t = None);
        d.rx.iter_mut().for_each(|x| *x = None);
        d.reset().unwrap();
        d.probe().unwrap();
        d.up(2, false).unwrap();
        while host.try_recv().is_some() {}
        let f = build::udp4([1; 6], [2; 6], [1; 4], [2; 4], 1, 2, b"ok");
        d.send(1, &[&f], false, None);
        poll_all(&[&d.handle]);
        prop_assert_eq!(host.try_recv(), Some(f));
    }

    #[test]
    fn raw_admin_commands(cmds in proptest::collection::vec(any::<[u8; 32]>(), 1..20)) {
        let (mut d, _port) = FakeDriver::new(small(), MEM);
        d.probe().unwrap();
        for c in cmds {
            let mut slot = [0u8; 64];
            slot[..32].copy_from_slice(&c);
            slot[32..].copy_from_slice(&c);
            slot[0..3].fill(0);
            slot[3] %= 0x14;
            if slot[3] == 0x13 { slot[3] = 0xff; }
            let st = d.adminq_batch(&[slot])[0];
            // Always answered, with a status the driver knows.
            prop_assert_ne!(st, adminq::STATUS_UNSET);
            prop_assert!(st == adminq::STATUS_PASSED || st >= adminq::STATUS_ABORTED);
            prop_assert_eq!(d.reg_read(REG_ADMINQ_EVENT_COUNTER), d.prod);
        }
    }

    #[test]
    fn raw_parsers(data in proptest::collection::vec(any::<u8>(), 0..300)) {
        sim_nic::fuzz::parsers(&data);
    }
}

trait BarWrite {
    fn dev_bar_write(&mut self, bar: usize, off: u64, data: &[u8]);
}

impl BarWrite for FakeDriver {
    fn dev_bar_write(&mut self, bar: usize, off: u64, data: &[u8]) {
        use vmm::pci::PciDevice;
        self.dev.bar_write(bar, off, data);
    }
}

#[test]
fn doorbell_past_ring_and_bad_buffers_are_refused() {
    let (mut d, port) = FakeDriver::new(small(), MEM);
    let (_w, host) = Wire::connect_host(port, WireOptions::default()).unwrap();
    d.probe().unwrap();
    d.up(2, true).unwrap();
    d.doorbell(TX_DB_BASE, 64);
    d.doorbell(RX_DB_BASE + 1, 1000);
    d.doorbell(900, 1);
    let kinds = d.handle.refusal_counts();
    assert!(
        kinds
            .iter()
            .any(|(k, n)| *k == RefusalKind::Doorbell && *n == 3),
        "{kinds:?}"
    );
    // A TX packet whose buffer is unmapped: dropped, but its tag completes.
    let tag = d.send_addrs(0, &[(0xdead_0000, 100)], false, None);
    poll_all(&[&d.handle]);
    let c = d.reap_tx(0);
    assert!(c.iter().any(|c| c.value == tag));
    assert_eq!(d.handle.stats().tx_dma_faults, 1);
    assert!(host.try_recv().is_none());
    // Unknown dtype: packet dropped, tag still completed, queue keeps going.
    {
        let t = d.tx[0].as_mut().unwrap();
        let bad = TxDesc::Unknown(0x1f).encode();
        d.mem.write(t.ring + u64::from(t.tail) * 16, &bad);
        t.tail = (t.tail + 1) & (t.size - 1);
    }
    let f = build::udp4([1; 6], [2; 6], [1; 4], [2; 4], 1, 2, b"next");
    let tag = d.send(0, &[&f], false, None);
    poll_all(&[&d.handle]);
    assert!(d.reap_tx(0).iter().any(|c| c.value == tag));
    assert_eq!(d.handle.stats().tx_bad_packets, 1);
    assert_eq!(
        host.try_recv(),
        None,
        "the bad packet swallowed the good one's descriptors"
    );
    let tag = d.send(0, &[&f], false, None);
    poll_all(&[&d.handle]);
    assert!(d.reap_tx(0).iter().any(|c| c.value == tag));
    assert_eq!(host.try_recv(), Some(f));
    // RX buffers pointing at unmapped memory (posted descriptors are only
    // fetched when a frame arrives): completions with rx_error.
    {
        let x = d.rx[0].as_ref().unwrap();
        for slot in 0..x.size - 1 {
            let at = x.bufq + u64::from(slot) * 32 + 8;
            d.mem.write(at, &0x10u64.to_le_bytes());
        }
    }
    // Steer everything to queue 0 with a flow-less frame (LUT[0] = 0).
    let arp = vec![0xffu8; 600];
    host.send(arp.clone());
    poll_all(&[&d.handle]);
    assert!(d.poll_rx(0).is_empty());
    assert_eq!(d.rx[0].as_ref().unwrap().errors, 1);
    assert_eq!(d.handle.stats().rx_errors, 1);
    // Device-requested reset when a ring faults.
    let cmd = encode::destroy_tx_queue(1);
    d.adminq(cmd).unwrap();
    d.mem.unmap_all();
    let f = build::udp4([1; 6], [2; 6], [1; 4], [2; 4], 1, 2, b"x");
    host.send(f);
    d.doorbell(TX_DB_BASE, 5);
    poll_all(&[&d.handle]);
    assert_ne!(d.reg_read(REG_DEVICE_STATUS) & DEVICE_STATUS_RESET_MASK, 0);
    assert!(d.sink.triggers().contains(&d.mgmt_vector()));
}
