//! Two NICs cabled back to back, driven by the fake driver: probe, up, TCP
//! with header split, TSO, completions, interrupts, reset.

use std::time::Duration;

use sim_nic::adminq::{self, encode};
use sim_nic::desc::{COMPL_TYPE_DESC, COMPL_TYPE_PKT};
use sim_nic::packet::{self, build};
use sim_nic::pcap::read_pcap;
use sim_nic::regs::*;
use sim_nic::testing::{FakeDriver, poll_all, test_config, wait_for};
use sim_nic::{GveConfig, Wire, WireOptions};

const MAC_A: [u8; 6] = [2, 0, 0, 0, 0, 0xa];
const MAC_B: [u8; 6] = [2, 0, 0, 0, 0, 0xb];
const MEM: usize = 32 << 20;

fn pair(cfg: impl Fn(&str, u8) -> GveConfig, opts: WireOptions) -> (FakeDriver, FakeDriver, Wire) {
    let (mut a, pa) = FakeDriver::new(cfg("a", 0xa), MEM);
    let (mut b, pb) = FakeDriver::new(cfg("b", 0xb), MEM);
    let w = Wire::connect(pa, pb, opts).unwrap();
    a.probe().unwrap();
    b.probe().unwrap();
    (a, b, w)
}

#[test]
fn probe_sequence_and_registers() {
    let (mut d, _port) = FakeDriver::new(test_config("p", 1), MEM);
    // Identity as gve_main.c / gve.rst expect.
    use vmm::pci::PciDevice;
    assert_eq!(d.dev.config_read(0), 0x0042_1ae0);
    assert_eq!(d.dev.config_read(2) >> 8, 0x02_00_00);
    assert_eq!(d.dev.config_read(2) & 0xff, 1);
    assert_eq!(d.reg_read(REG_MAX_TX_QUEUES), 4);
    d.probe().unwrap();
    assert_eq!(d.reg_read(REG_ADMINQ_EVENT_COUNTER), d.prod);
    // DESCRIBE_DEVICE: DQO_RDA present, MAC, MTU.
    let desc = &d.description;
    assert_eq!(&desc[24..30], &[2, 0, 0, 0, 0, 1]);
    assert_eq!(u16::from_be_bytes([desc[16], desc[17]]), 1500);
    let opts = adminq::parse_options(desc).unwrap();
    let dqo = opts
        .iter()
        .find(|o| o.0 == adminq::DEV_OPT_ID_DQO_RDA)
        .unwrap();
    let mask = u32::from_be_bytes(dqo.2[0..4].try_into().unwrap());
    assert_ne!(mask & adminq::SUP_BUFFER_SIZES_MASK, 0);
    assert_ne!(mask & adminq::SUP_FLOW_STEERING_MASK, 0);
    // IRQ doorbell indices written, distinct.
    let idx: Vec<u32> = (0..d.num_ntfy).map(|b| d.irq_db_index(b)).collect();
    assert_eq!(idx, (0..8).collect::<Vec<_>>());
    // Link is up only when cabled.
    assert_eq!(
        d.reg_read(REG_DEVICE_STATUS) & DEVICE_STATUS_LINK_STATUS_MASK,
        0
    );
    // Unknown opcode → UNIMPLEMENTED; QPL registration → UNIMPLEMENTED.
    let mut raw = [0u8; 64];
    raw[0..4].copy_from_slice(&0x77u32.to_be_bytes());
    assert_eq!(d.adminq_batch(&[raw])[0], adminq::STATUS_UNIMPLEMENTED);
    raw[0..4].copy_from_slice(&adminq::OP_REGISTER_PAGE_LIST.to_be_bytes());
    assert_eq!(d.adminq_batch(&[raw])[0], adminq::STATUS_UNIMPLEMENTED);
    // Second CONFIGURE_DEVICE_RESOURCES in the wrong state.
    let e = d
        .adminq(encode::configure_device_resources(0, 1, d.irq_dbs, 8, 64))
        .unwrap_err();
    assert_eq!(e.status, adminq::STATUS_FAILED_PRECONDITION);
    // Link speed.
    let ls = d.alloc(8, 8, true);
    d.adminq(encode::report_link_speed(ls)).unwrap();
    assert_eq!(d.mem.read(ls, 8), 100_000u64.to_be_bytes());
    // Teardown and reset handshake; the event counter restarts at 0.
    d.teardown().unwrap();
    assert_eq!(d.reg_read(REG_ADMINQ_EVENT_COUNTER), 0);
    assert!(d.reg_read(REG_DEVICE_STATUS) & DEVICE_STATUS_DEVICE_IS_RESET != 0);
    // Reset recovery: probe again (without DESCRIBE in the real driver).
    d.probe().unwrap();
    assert_eq!(
        d.reg_read(REG_DEVICE_STATUS) & DEVICE_STATUS_DEVICE_IS_RESET,
        0
    );
    assert!(d.handle.stats().resets >= 1);
}

#[test]
fn tcp_back_to_back_with_header_split() {
    let (mut a, mut b, _w) = pair(test_config, WireOptions::default());
    a.up(4, true).unwrap();
    b.up(4, true).unwrap();
    assert_ne!(
        a.reg_read(REG_DEVICE_STATUS) & DEVICE_STATUS_LINK_STATUS_MASK,
        0
    );
    let payload: Vec<u8> = (0..1000u32).map(|i| (i * 7) as u8).collect();
    let mut frame = build::tcp4(
        MAC_B,
        MAC_A,
        [10, 0, 0, 1],
        [10, 0, 0, 2],
        40000,
        5201,
        1,
        0x18,
        &payload,
    );
    let good = frame.clone();
    // Checksum offload: the driver leaves a garbage checksum.
    frame[50] = 0xde;
    frame[51] = 0xad;
    a.sink.take();
    b.mem.record();
    let (h, p) = frame.split_at(54);
    let tag = a.send(0, &[h, p], true, None);
    poll_all(&[&a.handle, &b.handle]);
    // TX completion with the generation bit, and an interrupt on vector 0.
    let c = a.reap_tx(0);
    assert!(
        c.iter()
            .any(|c| c.ctype == COMPL_TYPE_PKT && c.value == tag && c.generation)
    );
    assert!(a.sink.triggers().contains(&a.tx_vector(0)));
    assert!(a.tx[0].as_ref().unwrap().outstanding.is_empty());
    // Find the packet on B (RSS picks the queue).
    let mut got = Vec::new();
    for q in 0..4 {
        for p in b.poll_rx(q) {
            got.push((q, p));
        }
    }
    assert_eq!(got.len(), 1, "{:?}", b.handle.stats());
    let (q, pkt) = &got[0];
    assert!(b.sink.triggers().contains(&b.rx_vector(*q)));
    let c = pkt.compls[0];
    assert!(c.split_header && c.header_len == 54 && !c.header_buffer_overflow);
    assert!(c.end_of_packet && c.l3_l4_processed && !c.csum_l4_err && !c.csum_ip_err);
    assert_eq!(c.packet_type, adminq::ptype::IPV4_TCP);
    assert_ne!(c.hash, 0);
    assert_eq!(pkt.header, good[..54]);
    assert_eq!(pkt.payload, payload);
    assert_eq!(pkt.frame(), good);
    // devmem RX layout: the payload went to the posted data buffer, the
    // headers to that buffer's header buffer, each with its own tag.
    let r = b.rx[*q as usize].as_ref().unwrap();
    let id = usize::from(c.buf_id);
    let hdr_at = r.hdr_base + u64::from(r.hbs) * id as u64;
    let rec = b.mem.recorded();
    let w = |tag: &str| {
        rec.iter()
            .filter(|x| x.tag == tag)
            .map(|x| (x.iova, x.len))
            .collect::<Vec<_>>()
    };
    assert_eq!(w("rx-buf"), vec![(r.bufs[id], 1000)]);
    assert_eq!(w("rx-hdr"), vec![(hdr_at, 54)]);
    assert!(rec.iter().all(|x| x.access == vmm::dma::Access::Read
        || ["rx-buf", "rx-hdr", "completion", "stats"].contains(&x.tag.as_str())));
    let st = b.handle.stats();
    assert_eq!((st.rx_frames, st.rx_hsplit), (1, 1));
    assert_eq!(a.handle.stats().tx_csum_offloads, 1);
    // DMA tags used.
    let tags = b.mem.tag_stats();
    assert!(tags["rx-hdr"].writes == 1 && tags["rx-buf"].writes == 1);
    assert!(a.mem.tag_stats()["tx-payload"].reads == 2);
    assert!(a.mem.faults().is_empty() && b.mem.faults().is_empty());
    assert!(a.handle.refusals().is_empty(), "{:?}", a.handle.refusals());
    assert!(b.handle.refusals().is_empty(), "{:?}", b.handle.refusals());
}

#[test]
fn tso_64k_into_mss_segments() {
    let (mut a, mut b, _w) = pair(test_config, WireOptions::default());
    a.up(1, true).unwrap();
    // Per-segment delivery: B's queue without HW-GRO (tests/rsc.rs covers
    // the coalesced path).
    b.enable_rsc = false;
    b.up(1, true).unwrap();
    let payload: Vec<u8> = (0..65_000u32).map(|i| (i % 251) as u8).collect();
    let pkt = build::tcp4(
        MAC_B,
        MAC_A,
        [10, 0, 0, 1],
        [10, 0, 0, 2],
        1,
        2,
        1000,
        0x18,
        &payload,
    );
    let (h, p) = pkt.split_at(54);
    // Spread the payload over several buffers (one > 16 KiB: split by the
    // driver into several descriptors).
    let (p1, rest) = p.split_at(20_000);
    let (p2, p3) = rest.split_at(30_000);
    let tag = a.send(0, &[h, p1, p2, p3], true, Some((1448, 54)));
    poll_all(&[&a.handle, &b.handle]);
    assert!(
        a.reap_tx(0)
            .iter()
            .any(|c| c.ctype == COMPL_TYPE_PKT && c.value == tag)
    );
    let mut got = Vec::new();
    for _ in 0..10 {
        got.extend(b.poll_rx(0));
        poll_all(&[&a.handle, &b.handle]);
    }
    assert_eq!(got.len(), 65_000usize.div_ceil(1448));
    let mut data = Vec::new();
    for (i, s) in got.iter().enumerate() {
        let f = s.frame();
        assert!(f.len() <= 1514);
        let c = s.last();
        assert!(c.l3_l4_processed && !c.csum_l4_err && !c.csum_ip_err);
        let seq = u32::from_be_bytes(f[38..42].try_into().unwrap());
        assert_eq!(seq, 1000 + 1448 * i as u32);
        assert_eq!(u16::from_be_bytes([f[18], f[19]]), 0x1234 + i as u16);
        data.extend_from_slice(&s.payload);
    }
    assert_eq!(data, payload);
    assert_eq!(a.handle.stats().tx_tso_packets, 1);
}

#[test]
fn descriptor_completions_keep_the_ring_moving() {
    let (mut a, mut b, _w) = pair(test_config, WireOptions::default());
    a.up(1, false).unwrap();
    b.up(1, false).unwrap();
    let mut received = 0;
    let mut descs = 0;
    // Many more packets than ring slots: only DESC completions let the
    // driver reuse the ring.
    for i in 0..2000u32 {
        while a.tx_free_slots(0) < 8 {
            poll_all(&[&a.handle, &b.handle]);
            for c in a.reap_tx(0) {
                descs += usize::from(c.ctype == COMPL_TYPE_DESC);
            }
            received += b.poll_rx(0).len();
            a.rearm(0);
        }
        let f = build::udp4(
            MAC_B,
            MAC_A,
            [1, 1, 1, 1],
            [2, 2, 2, 2],
            7,
            9,
            &i.to_be_bytes(),
        );
        a.send(0, &[&f], false, None);
    }
    for _ in 0..20 {
        poll_all(&[&a.handle, &b.handle]);
        for c in a.reap_tx(0) {
            descs += usize::from(c.ctype == COMPL_TYPE_DESC);
        }
        received += b.poll_rx(0).len();
    }
    assert_eq!(received, 2000, "{:?}", b.handle.stats());
    assert!(descs >= 2000 * 2 / 32 - 1, "{descs}");
    assert!(a.tx[0].as_ref().unwrap().outstanding.is_empty());
}

#[test]
fn irq_auto_mask_and_refire_on_enable() {
    let (mut a, mut b, _w) = pair(test_config, WireOptions::default());
    a.up(1, false).unwrap();
    b.up(1, false).unwrap();
    let v = a.tx_vector(0);
    a.sink.take();
    let f = build::udp4(MAC_B, MAC_A, [1; 4], [2; 4], 1, 2, b"x");
    a.send(0, &[&f], false, None);
    poll_all(&[&a.handle, &b.handle]);
    assert_eq!(a.sink.count(v), 1);
    // Masked now: more completions do not interrupt...
    a.send(0, &[&f], false, None);
    poll_all(&[&a.handle, &b.handle]);
    assert_eq!(a.sink.count(v), 1);
    // ...until the driver re-enables: then it fires at once.
    a.rearm(0);
    assert_eq!(a.sink.count(v), 2);
    // Re-enable with nothing pending: no interrupt.
    a.rearm(0);
    assert_eq!(a.sink.count(v), 2);
}

#[test]
fn queue_restart_and_flow_steering() {
    let (mut a, mut b, _w) = pair(test_config, WireOptions::default());
    a.up(4, true).unwrap();
    b.up(4, true).unwrap();
    // Flow rule on B: TCP to port 5201 → queue 2.
    let mut rule = adminq::FlowRule {
        flow_type: 0,
        action: 2,
        ..Default::default()
    };
    rule.key.ports = [0, 0, 0x14, 0x51];
    rule.mask.ports = [0, 0, 0xff, 0xff];
    let inner = b.alloc(92, 64, false);
    b.mem.write(
        inner,
        &encode::flow_rule_cmd(adminq::FLOW_RULE_CFG_ADD, 5, Some(&rule)),
    );
    b.adminq(encode::extended(
        adminq::EXT_OP_CONFIGURE_FLOW_RULE,
        92,
        inner,
    ))
    .unwrap();
    // Adding the same location again: ALREADY_EXISTS.
    assert_eq!(
        b.adminq(encode::extended(
            adminq::EXT_OP_CONFIGURE_FLOW_RULE,
            92,
            inner
        ))
        .unwrap_err()
        .status,
        adminq::STATUS_ALREADY_EXISTS
    );
    // Query ids / rules / stats.
    let qa = b.alloc(4096, 4096, true);
    b.adminq(encode::query_flow_rules(adminq::FLOW_RULE_QUERY_IDS, 0, qa))
        .unwrap();
    let r = b.mem.read(qa, 20);
    assert_eq!(
        &r[0..16],
        &[0, 0, 0, 1, 0, 0, 0, 128, 0, 0, 0, 1, 0, 0, 0, 20]
    );
    assert_eq!(&r[16..20], &[0, 0, 0, 5]);
    b.adminq(encode::query_flow_rules(adminq::FLOW_RULE_QUERY_IDS, 6, qa))
        .unwrap();
    assert_eq!(&b.mem.read(qa + 8, 8), &[0, 0, 0, 0, 0, 0, 0, 16]);
    b.adminq(encode::query_flow_rules(
        adminq::FLOW_RULE_QUERY_RULES,
        0,
        qa,
    ))
    .unwrap();
    let r = b.mem.read(qa, 16 + 88);
    assert_eq!(adminq::FlowRule::parse(&r[20..]), rule);
    for sport in 1000..1010u16 {
        let f = build::tcp4(
            MAC_B,
            MAC_A,
            [10, 0, 0, 1],
            [10, 0, 0, 2],
            sport,
            5201,
            0,
            0x10,
            b"steer",
        );
        a.send(0, &[&f], false, None);
    }
    poll_all(&[&a.handle, &b.handle]);
    assert_eq!(b.poll_rx(2).len(), 10);
    assert_eq!(b.handle.stats().rx_flow_steered, 10);
    // Restart queue 2 (devmem bind path): packets keep landing there.
    b.restart_rx(2).unwrap();
    let f = build::tcp4(
        MAC_B,
        MAC_A,
        [10, 0, 0, 1],
        [10, 0, 0, 2],
        1,
        5201,
        0,
        0x10,
        b"after",
    );
    a.send(0, &[&f], false, None);
    poll_all(&[&a.handle, &b.handle]);
    let got = b.poll_rx(2);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].payload, b"after");
    // Delete; unknown location → NOT_FOUND.
    b.mem.write(
        inner,
        &encode::flow_rule_cmd(adminq::FLOW_RULE_CFG_DEL, 5, None),
    );
    b.adminq(encode::extended(
        adminq::EXT_OP_CONFIGURE_FLOW_RULE,
        92,
        inner,
    ))
    .unwrap();
    assert_eq!(
        b.adminq(encode::extended(
            adminq::EXT_OP_CONFIGURE_FLOW_RULE,
            92,
            inner
        ))
        .unwrap_err()
        .status,
        adminq::STATUS_NOT_FOUND
    );
    b.down().unwrap();
    a.down().unwrap();
}

#[test]
fn threaded_workers_with_pcap_and_faults() {
    let dir = tempfile::tempdir().unwrap();
    let pcap = dir.path().join("wire.pcap");
    let cfg = |n: &str, m: u8| GveConfig {
        spawn_worker: true,
        ..test_config(n, m)
    };
    let opts = WireOptions {
        pcap: Some(pcap.clone()),
        faults: sim_nic::WireFaults {
            seed: 3,
            duplicate: 0.2,
            ..Default::default()
        },
    };
    let (mut a, mut b, w) = pair(cfg, opts);
    a.up(2, true).unwrap();
    b.up(2, true).unwrap();
    let n = 50;
    for i in 0..n {
        let f = build::tcp4(
            MAC_B,
            MAC_A,
            [10, 0, 0, 1],
            [10, 0, 0, 2],
            3000,
            80,
            i,
            0x10,
            &[i as u8; 300],
        );
        a.send(i % 2, &[&f], false, None);
    }
    let mut got = 0;
    assert!(
        wait_for(Duration::from_secs(5), || {
            got += b.poll_rx(0).len() + b.poll_rx(1).len();
            got as u64 == u64::from(n) + w.counters().duplicated
        }),
        "got {got}, {:?}",
        w.counters()
    );
    w.flush_pcap();
    let recs = read_pcap(&std::fs::read(&pcap).unwrap()).unwrap();
    assert_eq!(recs.len() as u64, w.counters().delivered);
    assert!(
        recs.iter()
            .all(|r| r.data.len() == 354 && r.orig_len == 354)
    );
    let p = packet::parse(&recs[0].data);
    assert_eq!(p.split_offset(), Some(54));
    a.handle.shutdown();
    b.handle.shutdown();
}

/// Both NICs send to each other at once through tiny inboxes: the
/// backpressure path must neither deadlock nor lose frames. Workers only
/// (no inline doorbell work, which drains the peer's inbox at once and so
/// rarely lets it fill).
#[test]
fn bidirectional_backpressure_no_deadlock_no_loss() {
    let cfg = |n: &str, m: u8| GveConfig {
        spawn_worker: true,
        inline_doorbells: false,
        inbox_frames: 8,
        rx_pending_frames: 4,
        rx_hold: Duration::from_secs(30),
        ..test_config(n, m)
    };
    let (mut a, mut b, w) = pair(cfg, WireOptions::default());
    a.up(1, false).unwrap();
    b.up(1, false).unwrap();
    const N: u32 = 3000;
    let run = |mut d: FakeDriver, dst: [u8; 6], src: [u8; 6]| {
        std::thread::spawn(move || {
            let mut sent = 0u32;
            let mut got = Vec::new();
            let deadline = std::time::Instant::now() + Duration::from_secs(60);
            while (sent < N || got.len() < N as usize) && std::time::Instant::now() < deadline {
                while sent < N && d.tx_free_slots(0) > 8 {
                    let f = build::udp4(dst, src, [1; 4], [2; 4], 1, 2, &sent.to_be_bytes());
                    d.send(0, &[&f], false, None);
                    sent += 1;
                }
                d.reap_tx(0);
                for p in d.poll_rx(0) {
                    got.push(u32::from_be_bytes(p.payload[42..46].try_into().unwrap()));
                }
                d.rearm(0);
                d.rearm(d.num_ntfy / 2);
                std::thread::yield_now();
            }
            (d, got)
        })
    };
    let ta = run(a, MAC_B, MAC_A);
    let tb = run(b, MAC_A, MAC_B);
    let (a, got_a) = ta.join().unwrap();
    let (b, got_b) = tb.join().unwrap();
    assert_eq!(got_a, (0..N).collect::<Vec<_>>(), "{:?}", a.handle.stats());
    assert_eq!(got_b, (0..N).collect::<Vec<_>>(), "{:?}", b.handle.stats());
    assert!(a.handle.stats().tx_backpressure > 0 || b.handle.stats().tx_backpressure > 0);
    assert_eq!(w.counters().delivered, 2 * u64::from(N));
}

/// devmem-style TX: the payload lives in a separate "dmabuf" region; the
/// device reads it only with the `tx-payload` tag, never writes it, and
/// stops touching a queue's memory once it is destroyed.
#[test]
fn netmem_tx_and_no_dma_after_destroy() {
    let (mut a, mut b, _w) = pair(test_config, WireOptions::default());
    a.up(2, true).unwrap();
    b.up(2, true).unwrap();
    // A 64 KiB "dmabuf", mapped read-only for the device.
    let dmabuf = a.alloc(64 << 10, 4096, false);
    let payload: Vec<u8> = (0..60_000u32).map(|i| (i * 13) as u8).collect();
    a.mem.write(dmabuf + 100, &payload);
    let hdr = build::tcp4(
        MAC_B,
        MAC_A,
        [10, 0, 0, 1],
        [10, 0, 0, 2],
        7,
        8,
        0,
        0x18,
        &[],
    );
    let mut hdr = hdr.clone();
    // Total length as the stack would have it for the whole TSO packet.
    let tot = (40 + payload.len()) as u16;
    hdr[16..18].copy_from_slice(&tot.to_be_bytes());
    let h = a.alloc(54, 64, false);
    a.mem.write(h, &hdr);
    a.mem.record();
    // Header in kernel memory, payload in three dmabuf chunks at odd offsets.
    a.send_addrs(
        1,
        &[
            (h, 54),
            (dmabuf + 100, 20_000),
            (dmabuf + 20_100, 20_000),
            (dmabuf + 40_100, 20_000),
        ],
        true,
        Some((1448, 54)),
    );
    poll_all(&[&a.handle, &b.handle]);
    let rec = a.mem.recorded();
    let in_dmabuf =
        |r: &sim_nic::testing::DmaRecord| r.iova >= dmabuf && r.iova < dmabuf + (64 << 10);
    assert!(
        rec.iter()
            .filter(|r| in_dmabuf(r))
            .all(|r| r.tag == "tx-payload" && r.access == vmm::dma::Access::Read)
    );
    let read: u64 = rec.iter().filter(|r| in_dmabuf(r)).map(|r| r.len).sum();
    assert_eq!(read, 60_000);
    let mut got = Vec::new();
    for _ in 0..5 {
        for q in 0..2 {
            got.extend(b.poll_rx(q));
        }
        poll_all(&[&a.handle, &b.handle]);
    }
    let data: Vec<u8> = got.iter().flat_map(|p| p.payload.clone()).collect();
    assert_eq!(data, payload);
    assert!(a.mem.faults().is_empty());

    // Post a packet but destroy the queue before the device runs: nothing
    // of that queue is touched afterwards, even once its memory is gone.
    let f = build::udp4(MAC_B, MAC_A, [1; 4], [2; 4], 1, 2, b"late");
    a.send(0, &[&f], false, None);
    a.adminq(adminq::encode::destroy_tx_queue(0)).unwrap();
    let t = a.tx[0].take().unwrap();
    a.mem.unmap(t.ring, u64::from(t.size) * 16);
    a.mem.unmap(t.comp, u64::from(t.size) * 8);
    // Same for an RX queue of B (queue restart frees the old rings).
    let old = b.rx[1]
        .as_ref()
        .map(|r| (r.bufq, r.complq, r.bufs.clone()))
        .unwrap();
    b.restart_rx(1).unwrap();
    b.mem.unmap(old.0, 256 * 32);
    b.mem.unmap(old.1, 256 * 32);
    for buf in old.2 {
        b.mem.unmap(buf, 2048);
    }
    for sport in 0..64u16 {
        let f = build::tcp4(
            MAC_B,
            MAC_A,
            [10, 0, 0, 1],
            [10, 0, 0, 2],
            sport,
            80,
            0,
            0x10,
            b"z",
        );
        a.send(1, &[&f], false, None);
    }
    poll_all(&[&a.handle, &b.handle]);
    assert!(a.mem.faults().is_empty(), "{:?}", a.mem.faults());
    assert!(b.mem.faults().is_empty(), "{:?}", b.mem.faults());
    let n: usize = (0..2).map(|q| b.poll_rx(q).len()).sum();
    assert_eq!(n, 64);
}

/// A TX doorbell does the device's work on the caller's thread, including
/// the cabled peer's receive side: no worker and no `poll` needed. Without
/// `inline_doorbells` the same doorbell leaves everything queued.
#[test]
fn inline_doorbell_reaches_the_peer_without_polling() {
    for inline in [true, false] {
        let cfg = |n: &str, m: u8| GveConfig {
            inline_doorbells: inline,
            ..test_config(n, m)
        };
        let (mut a, mut b, _w) = pair(cfg, WireOptions::default());
        a.up(1, true).unwrap();
        b.enable_rsc = false;
        b.up(1, true).unwrap();
        let payload = vec![0x5au8; 3000];
        let pkt = build::tcp4(
            MAC_B,
            MAC_A,
            [10, 0, 0, 1],
            [10, 0, 0, 2],
            1,
            2,
            7,
            0x18,
            &payload,
        );
        let (h, p) = pkt.split_at(54);
        let tag = a.send(0, &[h, p], true, Some((1448, 54)));
        let done = a
            .reap_tx(0)
            .iter()
            .any(|c| c.ctype == COMPL_TYPE_PKT && c.value == tag);
        let got = b.poll_rx(0);
        if inline {
            assert!(done, "TX completion written during the doorbell");
            assert_eq!(
                got.len(),
                3,
                "peer received the 3 segments during the doorbell"
            );
            let data: Vec<u8> = got.iter().flat_map(|s| s.payload.clone()).collect();
            assert_eq!(data, payload);
        } else {
            assert!(!done && got.is_empty(), "nothing happens until polled");
            poll_all(&[&a.handle, &b.handle]);
            assert_eq!(b.poll_rx(0).len(), 3);
        }
    }
}
