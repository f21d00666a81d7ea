//! Feature coverage: legacy revision 0, loopback and host ports, link
//! changes, IPv6 TSO, jumbo frames over several buffers, header-buffer
//! overflow, bad checksums, RSS spreading and QUERY_RSS.

use std::time::Duration;

use sim_nic::adminq::{self, encode};
use sim_nic::packet::{self, build};
use sim_nic::regs::*;
use sim_nic::rss::{DEFAULT_RSS_KEY, toeplitz};
use sim_nic::testing::{FakeDriver, poll_all, test_config, wait_for};
use sim_nic::{GveConfig, LinkWindow, Wire, WireFaults, WireOptions};

const MEM: usize = 32 << 20;
const A: [u8; 6] = [2, 0, 0, 0, 0, 0xa];
const B: [u8; 6] = [2, 0, 0, 0, 0, 0xb];

fn host_nic(cfg: GveConfig) -> (FakeDriver, Wire, sim_nic::HostPort) {
    let (mut d, port) = FakeDriver::new(cfg, MEM);
    let (w, h) = Wire::connect_host(port, WireOptions::default()).unwrap();
    d.probe().unwrap();
    (d, w, h)
}

#[test]
fn revision_zero_uses_the_pfn_interface() {
    let cfg = GveConfig {
        revision: 0,
        ..test_config("r0", 1)
    };
    let (mut d, _port) = FakeDriver::new(cfg, MEM);
    d.aq = d.alloc(4096, 4096, true);
    let pfn = (d.aq / 4096) as u32;
    d.reg_write(REG_ADMINQ_PFN, pfn);
    assert_eq!(d.reg_read(REG_ADMINQ_PFN), pfn);
    let desc = d.alloc(4096, 4096, true);
    d.adminq(encode::describe_device(desc, 4096)).unwrap();
    // Revision-1 registers are refused on a revision-0 device.
    d.reg_write(REG_DRIVER_STATUS, DRIVER_STATUS_RESET_MASK);
    assert_eq!(d.reg_read(REG_ADMINQ_PFN), pfn);
    // Reset: write 0, the PFN reads back 0 and the counter restarts.
    d.reg_write(REG_ADMINQ_PFN, 0);
    assert_eq!(d.reg_read(REG_ADMINQ_PFN), 0);
    assert_eq!(d.reg_read(REG_ADMINQ_EVENT_COUNTER), 0);
}

#[test]
fn loopback_wire_and_link_changes() {
    let (mut d, port) = FakeDriver::new(test_config("lo", 1), MEM);
    let w = Wire::loopback(port, WireOptions::default()).unwrap();
    d.probe().unwrap();
    d.up(2, false).unwrap();
    let f = build::udp4(A, A, [1; 4], [1; 4], 5, 6, b"to myself");
    d.send(0, &[&f], true, None);
    poll_all(&[&d.handle]);
    let got: Vec<_> = (0..2).flat_map(|q| d.poll_rx(q)).collect();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].frame(), f);
    // Link down: device_status loses LINK and the management vector fires.
    d.sink.take();
    w.set_link(false);
    poll_all(&[&d.handle]);
    assert_eq!(
        d.reg_read(REG_DEVICE_STATUS) & DEVICE_STATUS_LINK_STATUS_MASK,
        0
    );
    assert_eq!(d.sink.take(), vec![d.mgmt_vector()]);
    d.send(0, &[&f], false, None);
    poll_all(&[&d.handle]);
    assert_eq!(d.handle.stats().tx_no_link, 1);
    w.set_link(true);
    poll_all(&[&d.handle]);
    assert_ne!(
        d.reg_read(REG_DEVICE_STATUS) & DEVICE_STATUS_LINK_STATUS_MASK,
        0
    );
    assert_eq!(d.sink.take(), vec![d.mgmt_vector()]);
    // Owner-forced link down.
    d.handle.set_link(false);
    assert_eq!(
        d.reg_read(REG_DEVICE_STATUS) & DEVICE_STATUS_LINK_STATUS_MASK,
        0
    );
    d.handle.set_link(true);
    assert!(d.handle.link_up());
    // Unplugging drops the link too.
    drop(w);
    assert_eq!(
        d.reg_read(REG_DEVICE_STATUS) & DEVICE_STATUS_LINK_STATUS_MASK,
        0
    );
}

#[test]
fn scheduled_link_outage() {
    // Nothing here depends on when the test thread runs: the outage is
    // scheduled only after both drivers are up, and every assertion is on
    // counters that only grow (the wire's transitions, the transitions
    // each device noticed, the management interrupts it raised, one per
    // transition) or on the final state.
    let cfg = |n: &str, m: u8| GveConfig {
        spawn_worker: true,
        ..test_config(n, m)
    };
    let (mut a, pa) = FakeDriver::new(cfg("a", 1), MEM);
    let (mut b, pb) = FakeDriver::new(cfg("b", 2), MEM);
    let w = Wire::connect(pa, pb, WireOptions::default()).unwrap();
    a.probe().unwrap();
    b.probe().unwrap();
    let link =
        |d: &mut FakeDriver| d.reg_read(REG_DEVICE_STATUS) & DEVICE_STATUS_LINK_STATUS_MASK != 0;
    assert!(link(&mut a) && link(&mut b));
    let (ia, ib) = (a.sink.count(a.mgmt_vector()), b.sink.count(b.mgmt_vector()));
    assert_eq!((w.counters().link_downs, w.counters().link_ups), (0, 0));
    w.set_faults(WireFaults {
        link_down: vec![LinkWindow {
            at_ms: 50,
            duration_ms: 100,
        }],
        ..Default::default()
    })
    .unwrap();
    assert!(wait_for(Duration::from_secs(10), || {
        let c = w.counters();
        (c.link_downs, c.link_ups) == (1, 1)
    }));
    // Each device noticed exactly one down and two up transitions (the
    // cable plugged in, then the end of the outage), however close
    // together its worker saw them, and raised an interrupt for each
    // transition of the outage (the driver had set its vector up by then).
    for (d, i0) in [(&mut a, ia), (&mut b, ib)] {
        let done = wait_for(Duration::from_secs(10), || {
            let s = d.handle.stats();
            (s.link_downs, s.link_ups) == (1, 2) && d.sink.count(d.mgmt_vector()) >= i0 + 2
        });
        let s = d.handle.stats();
        assert!(
            done,
            "{} link_downs {} link_ups {} mgmt irqs {} (before {i0})",
            d.handle.name(),
            s.link_downs,
            s.link_ups,
            d.sink.count(d.mgmt_vector())
        );
        assert!(link(d));
    }
    let c = w.counters();
    assert_eq!((c.link_downs, c.link_ups), (1, 1));
}

#[test]
fn host_port_tso_v6_and_rss_hash() {
    let (mut d, _w, host) = host_nic(test_config("h", 1));
    d.up(4, true).unwrap();
    let payload: Vec<u8> = (0..20_000u32).map(|i| (i / 3) as u8).collect();
    let src = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
    let dst = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];
    let pkt = build::tcp6(B, A, src, dst, 33000, 9000, 7, 0x18, &payload);
    let (h, p) = pkt.split_at(74);
    d.send(2, &[h, p], true, Some((1428, 74)));
    poll_all(&[&d.handle]);
    let mut data = Vec::new();
    let mut n = 0;
    while let Some(f) = host.try_recv() {
        let pp = packet::parse(&f);
        let c = packet::verify_checksums(&f, &pp);
        assert!(c.l3_l4_processed && !c.l4_err);
        assert_eq!(u16::from_be_bytes([f[18], f[19]]) as usize, f.len() - 54);
        data.extend_from_slice(&f[74..]);
        n += 1;
    }
    assert_eq!(n, 20_000usize.div_ceil(1428));
    assert_eq!(data, payload);
    // RX: the reported hash is the Toeplitz hash of the 4-tuple and the
    // queue is LUT[hash % 128] = hash % 128 % 4 (driver default LUT).
    let f = build::tcp6(A, B, dst, src, 9000, 33000, 1, 0x10, b"back");
    host.send(f);
    poll_all(&[&d.handle]);
    let mut input = dst.to_vec();
    input.extend_from_slice(&src);
    input.extend_from_slice(&9000u16.to_be_bytes());
    input.extend_from_slice(&33000u16.to_be_bytes());
    let hash = toeplitz(&DEFAULT_RSS_KEY, &input);
    let q = (hash % 128 % 4) as u32;
    let got = d.poll_rx(q);
    assert_eq!(got.len(), 1, "expected on queue {q}");
    assert_eq!(got[0].last().hash, hash);
    assert_eq!(got[0].last().packet_type, adminq::ptype::IPV6_TCP);
    assert_eq!(got[0].header.len(), 74);
}

#[test]
fn rss_spreads_flows_and_query_rss() {
    let cfg = GveConfig {
        rss_config_option: true,
        ..test_config("rss", 1)
    };
    let (mut d, _w, host) = host_nic(cfg);
    d.up(4, false).unwrap();
    for sport in 0..200u16 {
        host.send(build::tcp4(
            A,
            B,
            [10, 0, 0, 2],
            [10, 0, 0, 1],
            10_000 + sport,
            80,
            0,
            0x10,
            b"x",
        ));
        if sport % 50 == 49 {
            poll_all(&[&d.handle]);
        }
    }
    poll_all(&[&d.handle]);
    let per_q: Vec<usize> = (0..4).map(|q| d.poll_rx(q).len()).collect();
    assert_eq!(per_q.iter().sum::<usize>(), 200);
    assert!(per_q.iter().all(|n| *n > 20), "{per_q:?}");
    // Point the whole LUT at queue 3 and read it back with QUERY_RSS.
    let lut = d.alloc(512, 64, false);
    d.mem.write(lut, &[0, 0, 0, 3].repeat(128));
    d.adminq(encode::configure_rss(&adminq::ConfigureRss {
        hash_types: 0x00d2,
        hash_alg: 1,
        hash_key_size: 0,
        hash_lut_size: 128,
        hash_key_addr: 0,
        hash_lut_addr: lut,
    }))
    .unwrap();
    let qa = d.alloc(4096, 4096, true);
    d.adminq(encode::query_rss(qa)).unwrap();
    let r = d.mem.read(qa, 8 + 40 + 512);
    assert_eq!(
        u32::from_be_bytes(r[0..4].try_into().unwrap()),
        8 + 40 + 512
    );
    assert_eq!(&r[8..48], &DEFAULT_RSS_KEY);
    assert_eq!(&r[48..52], &[0, 0, 0, 3]);
    host.send(build::tcp4(
        A,
        B,
        [10, 0, 0, 2],
        [10, 0, 0, 1],
        1,
        80,
        0,
        0x10,
        b"y",
    ));
    poll_all(&[&d.handle]);
    assert_eq!(d.poll_rx(3).len(), 1);
    // LUT entries past the queue count are refused.
    d.mem.write(lut, &[0, 0, 0, 9]);
    let e = d
        .adminq(encode::configure_rss(&adminq::ConfigureRss {
            hash_types: 0,
            hash_alg: 1,
            hash_key_size: 0,
            hash_lut_size: 128,
            hash_key_addr: 0,
            hash_lut_addr: lut,
        }))
        .unwrap_err();
    assert_eq!(e.status, adminq::STATUS_INVALID_ARGUMENT);
}

#[test]
fn jumbo_frames_span_buffers() {
    let cfg = GveConfig {
        jumbo_max_mtu: Some(9000),
        ..test_config("j", 1)
    };
    let (mut d, _w, host) = host_nic(cfg);
    let opts = adminq::parse_options(&d.description).unwrap();
    assert!(opts.iter().any(|o| o.0 == adminq::DEV_OPT_ID_JUMBO_FRAMES));
    d.up(1, false).unwrap();
    let f = build::udp4(A, B, [1; 4], [2; 4], 1, 2, &vec![0x5a; 8900]);
    host.send(f.clone());
    poll_all(&[&d.handle]);
    let got = d.poll_rx(0);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].compls.len(), f.len().div_ceil(2048));
    assert!(got[0].compls.iter().all(|c| !c.split_header));
    assert!(
        got[0].compls[..4]
            .iter()
            .all(|c| !c.end_of_packet && c.packet_len == 2048)
    );
    assert_eq!(got[0].frame(), f);
    // Bigger than the MTU allows: dropped.
    host.send(vec![0; 9100]);
    poll_all(&[&d.handle]);
    assert_eq!(d.handle.stats().rx_oversize, 1);
}

#[test]
fn header_overflow_and_bad_checksums() {
    let cfg = GveConfig {
        header_buffer_size: 64,
        ..test_config("hbo", 1)
    };
    let (mut d, _w, host) = host_nic(cfg);
    d.up(1, true).unwrap();
    // IPv6 + TCP = 74 bytes of headers > 64: unsplit, hbo.
    let f = build::tcp6(A, B, [1; 16], [2; 16], 1, 2, 0, 0x10, b"hbo!");
    host.send(f.clone());
    // A corrupted TCP payload: dropped by the device.
    let mut bad = build::tcp4(A, B, [1; 4], [2; 4], 1, 2, 0, 0x10, b"corrupt");
    *bad.last_mut().unwrap() ^= 0xff;
    host.send(bad);
    // A short non-IP frame: entirely in the header buffer.
    let arp = [[0xff; 6].as_slice(), &B, &[0x08, 0x06], &[1; 28]].concat();
    host.send(arp.clone());
    poll_all(&[&d.handle]);
    let got = d.poll_rx(0);
    assert_eq!(got.len(), 2);
    let c = got[0].compls[0];
    assert!(c.split_header && c.header_buffer_overflow && c.header_len == 0);
    assert_eq!(got[0].payload, f);
    let c = got[1].compls[0];
    assert!(c.split_header && c.header_len == 42 && c.packet_len == 0);
    assert_eq!(got[1].header, arp);
    assert_eq!(d.handle.stats().rx_bad_checksum, 1);
    // The drop shows up in the NIC part of the stats report (ethtool -S).
    poll_all(&[&d.handle]);
    assert_eq!(d.nic_rx_stats(1), vec![(0, [1, 0, 0, 1])]);
}

#[test]
fn rx_holds_frames_until_buffers_arrive() {
    let cfg = GveConfig {
        rx_ring_size: 64,
        tx_ring_size: 64,
        ..test_config("hold", 1)
    };
    let (mut d, _w, host) = host_nic(cfg);
    d.up(1, false).unwrap();
    // 63 buffers posted (doorbell at 32 only: 32 visible).
    for i in 0..50u8 {
        host.send(build::udp4(A, B, [1; 4], [2; 4], 1, 2, &[i; 10]));
    }
    poll_all(&[&d.handle]);
    // Only the 32 buffers the driver published are used; the rest wait.
    let first = d.poll_rx(0);
    assert_eq!(first.len(), 32);
    poll_all(&[&d.handle]);
    let second = d.poll_rx(0);
    assert_eq!(second.len(), 18);
    let all: Vec<u8> = first.iter().chain(&second).map(|p| p.payload[42]).collect();
    assert_eq!(all, (0..50).collect::<Vec<u8>>());
    assert_eq!(d.handle.stats().rx_no_buffers, 0);
}

/// Single-bit corruption on the wire is never delivered as a verified
/// packet: the device drops it (bad checksum) or hands it up unverified.
#[test]
fn corrupted_frames_are_never_passed_as_verified() {
    let (mut a, pa) = FakeDriver::new(test_config("a", 1), MEM);
    let (mut b, pb) = FakeDriver::new(test_config("b", 2), MEM);
    let faults = WireFaults {
        seed: 11,
        corrupt: 1.0,
        ..Default::default()
    };
    let w = Wire::connect(pa, pb, WireOptions { pcap: None, faults }).unwrap();
    a.probe().unwrap();
    b.probe().unwrap();
    a.up(1, true).unwrap();
    b.up(1, true).unwrap();
    let mut sent = Vec::new();
    for i in 0..300u32 {
        let f = build::tcp4(
            B,
            A,
            [10, 0, 0, 1],
            [10, 0, 0, 2],
            1,
            2,
            i,
            0x10,
            &[(i % 251) as u8; 200],
        );
        sent.push(f.clone());
        a.send(0, &[&f], false, None);
        if i % 32 == 31 {
            poll_all(&[&a.handle, &b.handle]);
            a.reap_tx(0);
        }
    }
    poll_all(&[&a.handle, &b.handle]);
    let got: Vec<_> = (0..4)
        .flat_map(|_| {
            poll_all(&[&a.handle, &b.handle]);
            b.poll_rx(0)
        })
        .collect();
    assert_eq!(w.counters().corrupted, 300);
    let st = b.handle.stats();
    assert_eq!(
        st.rx_bad_checksum + got.len() as u64 + st.rx_no_queue,
        300,
        "{st:?}"
    );
    assert!(st.rx_bad_checksum > 250, "{st:?}");
    for p in &got {
        let c = p.last();
        if c.l3_l4_processed && !c.csum_ip_err && !c.csum_l4_err {
            assert!(
                sent.contains(&p.frame()),
                "a corrupted frame passed as verified"
            );
        }
    }
}
