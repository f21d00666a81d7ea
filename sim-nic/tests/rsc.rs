//! Receive-side coalescing (HW-GRO / RSC) the way gve_rx_dqo.c consumes it:
//! `rsc` and `rsc_seg_len` on the end-of-packet completion, headers of the
//! first segment with the IP length rewritten, the payload of every merged
//! segment in order.

use std::time::Duration;

use proptest::prelude::*;
use sim_nic::adminq::ptype;
use sim_nic::desc::COMPL_TYPE_PKT;
use sim_nic::packet::{self, L3, L4, build, parse};
use sim_nic::testing::{FakeDriver, RxPacket, poll_all, test_config};
use sim_nic::{GveConfig, HostPort, Wire, WireOptions};

const MAC_A: [u8; 6] = [2, 0, 0, 0, 0, 0xa];
const MAC_B: [u8; 6] = [2, 0, 0, 0, 0, 0xb];
const MEM: usize = 32 << 20;
const ACK: u8 = 0x10;
const PSH: u8 = 0x08;
const FIN: u8 = 0x01;

fn cfg(n: &str, m: u8) -> GveConfig {
    GveConfig {
        drop_bad_rx_checksum: false,
        rx_hold: Duration::from_secs(60),
        ..test_config(n, m)
    }
}

fn pair(b_rsc: bool, hsplit: bool) -> (FakeDriver, FakeDriver, Wire) {
    let (mut a, pa) = FakeDriver::new(cfg("a", 0xa), MEM);
    let (mut b, pb) = FakeDriver::new(cfg("b", 0xb), MEM);
    let w = Wire::connect(pa, pb, WireOptions::default()).unwrap();
    a.probe().unwrap();
    b.probe().unwrap();
    a.up(1, hsplit).unwrap();
    b.enable_rsc = b_rsc;
    b.up(1, hsplit).unwrap();
    (a, b, w)
}

/// B behind a host port (frames injected directly), one queue.
fn host_nic(rsc: bool, hsplit: bool, post_max: u32) -> (FakeDriver, Wire, HostPort) {
    let (mut b, pb) = FakeDriver::new(cfg("b", 0xb), MEM);
    let (w, host) = Wire::connect_host(pb, WireOptions::default()).unwrap();
    b.probe().unwrap();
    b.enable_rsc = rsc;
    b.rx_post_max = post_max;
    b.up(1, hsplit).unwrap();
    (b, w, host)
}

/// A TCP segment of flow `flow` (0: IPv4, 1: IPv4 other ports, 2: IPv6)
/// with ACK number `ack`, correct checksums.
fn seg(flow: u8, seq: u32, ack: u32, flags: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = match flow {
        2 => build::tcp6(
            MAC_B, MAC_A, [1; 16], [2; 16], 3000, 80, seq, flags, payload,
        ),
        _ => build::tcp4(
            MAC_B,
            MAC_A,
            [10, 0, 0, 1],
            [10, 0, 0, 2],
            1000 + u16::from(flow),
            2000,
            seq,
            flags,
            payload,
        ),
    };
    let t = tcp_off(&f);
    f[t + 8..t + 12].copy_from_slice(&ack.to_be_bytes());
    assert!(packet::fill_l4_checksum(&mut f));
    f
}

fn tcp_off(f: &[u8]) -> usize {
    match parse(f).l4 {
        L4::Tcp { off, .. } => off,
        l4 => panic!("not TCP: {l4:?}"),
    }
}

fn corrupt(f: &mut [u8]) {
    let t = tcp_off(f);
    f[t + 16] ^= 0x5a;
}

/// Inject `frames`, then run B and its driver until `want` frames reached
/// the queue (or give up), returning the packets.
fn deliver(b: &mut FakeDriver, host: &HostPort, frames: &[Vec<u8>]) -> Vec<RxPacket> {
    let before = b.handle.stats().rx_frames;
    for f in frames {
        assert!(host.send(f.clone()));
    }
    let mut got = Vec::new();
    for _ in 0..2000 {
        b.handle.poll();
        got.extend(b.poll_rx(0));
        if b.handle.stats().rx_frames - before >= frames.len() as u64 {
            b.handle.poll();
            got.extend(b.poll_rx(0));
            break;
        }
    }
    got
}

struct Hdr {
    v4: bool,
    ip: usize,
    tcp: usize,
    end: usize,
}

fn hdr(f: &[u8]) -> Result<Hdr, String> {
    let p = parse(f);
    let (v4, ip) = match p.l3 {
        L3::Ipv4 { off, .. } => (true, off),
        L3::Ipv6 { off, .. } => (false, off),
        L3::None => return Err("not IP".into()),
    };
    match p.l4 {
        L4::Tcp { off, hdr_len } => Ok(Hdr {
            v4,
            ip,
            tcp: off,
            end: off + hdr_len,
        }),
        l4 => Err(format!("not TCP: {l4:?}")),
    }
}

fn be16(f: &[u8], o: usize) -> usize {
    usize::from(u16::from_be_bytes([f[o], f[o + 1]]))
}

fn be32(f: &[u8], o: usize) -> u32 {
    u32::from_be_bytes(f[o..o + 4].try_into().unwrap())
}

/// Walk the delivered packets against the frames sent (in order, one
/// queue; `valid[i]`: frame i had correct checksums) and check every rule
/// of a coalesced packet. Returns how many frames each packet was made of.
fn verify(sent: &[Vec<u8>], valid: &[bool], got: &[RxPacket]) -> Result<Vec<usize>, String> {
    let mut groups = Vec::new();
    let mut i = 0;
    for (n, pkt) in got.iter().enumerate() {
        let f = pkt.frame();
        let last = pkt.last();
        if !last.end_of_packet {
            return Err(format!("packet {n}: no end_of_packet"));
        }
        if pkt.compls[..pkt.compls.len() - 1].iter().any(|c| c.rsc) {
            return Err(format!("packet {n}: rsc on a non-EOP completion"));
        }
        if !last.rsc {
            let Some(s) = sent.get(i) else {
                return Err(format!("packet {n}: more delivered than sent"));
            };
            if &f != s {
                return Err(format!("packet {n}: differs from frame {i}"));
            }
            if valid[i] == (last.csum_l4_err || last.csum_ip_err) {
                return Err(format!("packet {n}: checksum flags wrong"));
            }
            groups.push(1);
            i += 1;
            continue;
        }
        // A coalesced packet.
        let h = hdr(&f)?;
        let seg_len = usize::from(last.rsc_seg_len);
        let data = &f[h.end..];
        if seg_len == 0 || data.is_empty() {
            return Err(format!("packet {n}: rsc_seg_len {seg_len}"));
        }
        if !last.l3_l4_processed || last.csum_ip_err || last.csum_l4_err {
            return Err(format!(
                "packet {n}: rsc packet without validated checksums"
            ));
        }
        let want_pt = if h.v4 {
            ptype::IPV4_TCP
        } else {
            ptype::IPV6_TCP
        };
        if last.packet_type != want_pt {
            return Err(format!("packet {n}: packet type {}", last.packet_type));
        }
        let first = sent.get(i).ok_or("rsc packet past the end")?;
        let fh = hdr(first)?;
        if (fh.v4, fh.ip, fh.tcp, fh.end) != (h.v4, h.ip, h.tcp, h.end) {
            return Err(format!("packet {n}: header layout differs from frame {i}"));
        }
        if h.v4 && (h.tcp - h.ip != 20 || be16(first, h.ip + 6) & 0x3fff != 0) {
            return Err(format!("packet {n}: IPv4 options or fragment merged"));
        }
        if !h.v4 && h.tcp - h.ip != 40 {
            return Err(format!("packet {n}: IPv6 extension headers merged"));
        }
        let mut payload = Vec::new();
        let mut k = 0;
        let mut next_seq = be32(first, h.tcp + 4);
        let mut last_flags = 0;
        while payload.len() < data.len() {
            let j = i + k;
            let s = sent.get(j).ok_or("rsc packet longer than what was sent")?;
            let sh = hdr(s)?;
            if sh.end != h.end || sh.tcp != h.tcp {
                return Err(format!("packet {n}: frame {j} header length differs"));
            }
            if !valid[j] {
                return Err(format!("packet {n}: frame {j} had a bad checksum"));
            }
            // Same MAC header, addresses, ports, ACK, window, options.
            let same = |a: usize, b: usize| first[a..b] == s[a..b];
            let ip_same = if h.v4 {
                same(0, h.ip + 2) && same(h.ip + 6, h.ip + 10) && same(h.ip + 12, h.tcp)
            } else {
                same(0, h.ip + 4) && same(h.ip + 6, h.tcp)
            };
            if !ip_same
                || !same(h.tcp, h.tcp + 4)
                || !same(h.tcp + 8, h.tcp + 13)
                || !same(h.tcp + 14, h.tcp + 16)
                || !same(h.tcp + 18, h.end)
            {
                return Err(format!("packet {n}: frame {j} is another flow/ack/window"));
            }
            if be32(s, h.tcp + 4) != next_seq {
                return Err(format!("packet {n}: frame {j} not contiguous"));
            }
            let sp = &s[sh.end..];
            if sp.is_empty() || sp.len() > seg_len {
                return Err(format!("packet {n}: frame {j} payload {}", sp.len()));
            }
            let fl = s[h.tcp + 13];
            payload.extend_from_slice(sp);
            next_seq = next_seq.wrapping_add(sp.len() as u32);
            last_flags = fl;
            k += 1;
            let is_last = payload.len() >= data.len();
            if !is_last && (sp.len() != seg_len || fl != ACK) {
                return Err(format!("packet {n}: frame {j} ends a merge in the middle"));
            }
            if is_last && fl != ACK && fl != ACK | PSH {
                return Err(format!("packet {n}: last frame {j} flags {fl:#x}"));
            }
        }
        if k < 2 {
            return Err(format!("packet {n}: rsc set on a single segment"));
        }
        if payload != data {
            return Err(format!(
                "packet {n}: payload differs from frames {i}..{}",
                i + k
            ));
        }
        if seg_len != first.len() - h.end {
            return Err(format!("packet {n}: rsc_seg_len {seg_len} is not the MSS"));
        }
        // Headers: the first segment's, IP length rewritten, PSH from the last.
        let ip_len = f.len() - h.ip;
        if ip_len > 65535 {
            return Err(format!("packet {n}: {ip_len} bytes of IP packet"));
        }
        if h.v4 {
            if be16(&f, h.ip + 2) != ip_len {
                return Err(format!("packet {n}: tot_len {}", be16(&f, h.ip + 2)));
            }
            if packet::checksum(&f[h.ip..h.tcp]) != 0 {
                return Err(format!("packet {n}: bad IPv4 header checksum"));
            }
        } else if be16(&f, h.ip + 4) != ip_len - 40 {
            return Err(format!("packet {n}: payload_len {}", be16(&f, h.ip + 4)));
        }
        let mut want = first[..h.end].to_vec();
        let mut have = f[..h.end].to_vec();
        want[h.tcp + 13] |= last_flags & PSH;
        let var: &[usize] = if h.v4 {
            &[h.ip + 2, h.ip + 3, h.ip + 10, h.ip + 11]
        } else {
            &[h.ip + 4, h.ip + 5]
        };
        for &o in var {
            want[o] = 0;
            have[o] = 0;
        }
        if want != have {
            return Err(format!("packet {n}: headers are not frame {i}'s"));
        }
        // What gve_rx_complete_rsc computes: gso_segs from the payload.
        if data.len().div_ceil(seg_len) != k {
            return Err(format!("packet {n}: gso_segs would not be {k}"));
        }
        groups.push(k);
        i += k;
    }
    if i != sent.len() {
        return Err(format!("{} of {} frames delivered", i, sent.len()));
    }
    Ok(groups)
}

/// The wire frames of a TSO send, for `verify`.
fn tso_frames(pkt: &[u8], mss: u16) -> Vec<Vec<u8>> {
    packet::tso_segment(pkt, 54, mss, (pkt.len() - 54) as u32).unwrap()
}

fn tso_send(a: &mut FakeDriver, b: &mut FakeDriver, payload: &[u8]) -> (Vec<u8>, Vec<RxPacket>) {
    let pkt = build::tcp4(
        MAC_B,
        MAC_A,
        [10, 0, 0, 1],
        [10, 0, 0, 2],
        1,
        2,
        1000,
        0x18,
        payload,
    );
    let (h, p) = pkt.split_at(54);
    let (p1, p2) = p.split_at(20_000);
    let tag = a.send(0, &[h, p1, p2], true, Some((1448, 54)));
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
    (pkt, got)
}

#[test]
fn tso_64k_arrives_as_one_coalesced_packet() {
    for hsplit in [true, false] {
        let (mut a, mut b, _w) = pair(true, hsplit);
        let payload: Vec<u8> = (0..64_000u32).map(|i| (i % 253) as u8).collect();
        let (pkt, got) = tso_send(&mut a, &mut b, &payload);
        assert_eq!(got.len(), 1, "hsplit {hsplit}: {:?}", b.handle.stats());
        let p = &got[0];
        let c = p.last();
        assert!(c.rsc && c.end_of_packet, "{c:?}");
        assert_eq!(c.rsc_seg_len, 1448);
        assert!(c.l3_l4_processed && !c.csum_ip_err && !c.csum_l4_err);
        assert_eq!(c.packet_type, ptype::IPV4_TCP);
        // One completion per 2 KiB buffer; with header split the headers
        // are in the first completion's header buffer.
        let data_len = if hsplit { 64_000 } else { 64_054 };
        assert_eq!(p.compls.len(), usize::div_ceil(data_len, 2048));
        assert!(
            p.compls[..p.compls.len() - 1]
                .iter()
                .all(|c| !c.end_of_packet && !c.rsc)
        );
        if hsplit {
            let c0 = p.compls[0];
            assert!(c0.split_header && c0.header_len == 54 && !c0.header_buffer_overflow);
            assert_eq!(p.header.len(), 54);
            assert!(p.compls[1..].iter().all(|c| !c.split_header));
        } else {
            assert!(p.header.is_empty() && !p.compls[0].split_header);
        }
        let f = p.frame();
        assert_eq!(f.len(), 64_054);
        assert_eq!(&f[54..], &payload[..]);
        assert_eq!(u16::from_be_bytes([f[16], f[17]]), 64_040, "tot_len");
        assert_eq!(packet::checksum(&f[14..34]), 0, "IPv4 header checksum");
        assert_eq!(u32::from_be_bytes(f[38..42].try_into().unwrap()), 1000);
        assert_eq!(f[47], 0x18, "PSH of the last segment");
        // The gso_segs gve_rx_complete_rsc computes.
        assert_eq!(64_000usize.div_ceil(1448), 45);
        let frames = tso_frames(&pkt, 1448);
        assert_eq!(frames.len(), 45);
        assert_eq!(verify(&frames, &[true; 45], &got), Ok(vec![45]));
        let st = b.handle.stats();
        assert_eq!((st.rx_rsc_packets, st.rx_rsc_segments), (1, 45));
        assert_eq!(st.rx_frames, 45);
        assert_eq!(
            st.rx_bytes,
            frames.iter().map(|f| f.len() as u64).sum::<u64>()
        );
        // Serialized with the other counters (the JSON stats use the same
        // Serialize derive).
        let v = toml::Value::try_from(st).unwrap();
        assert_eq!(v["rx_rsc_packets"].as_integer(), Some(1));
        assert_eq!(v["rx_rsc_segments"].as_integer(), Some(45));
        assert!(b.handle.refusals().is_empty(), "{:?}", b.handle.refusals());
        assert!(b.mem.faults().is_empty());
    }
}

#[test]
fn enable_rsc_off_means_no_coalescing_and_recreate_honours_the_flag() {
    let (mut a, mut b, _w) = pair(false, true);
    let payload: Vec<u8> = (0..64_000u32).map(|i| (i % 249) as u8).collect();
    let (_, got) = tso_send(&mut a, &mut b, &payload);
    assert_eq!(got.len(), 45);
    assert!(got.iter().all(|p| p.compls.iter().all(|c| !c.rsc)));
    let data: Vec<u8> = got.iter().flat_map(|p| p.payload.clone()).collect();
    assert_eq!(data, payload);
    let st = b.handle.stats();
    assert_eq!((st.rx_rsc_packets, st.rx_rsc_segments), (0, 0));
    // ethtool -K gro-hw on: gve_adjust_config re-creates the queues.
    b.enable_rsc = true;
    b.restart_rx(0).unwrap();
    let (_, got) = tso_send(&mut a, &mut b, &payload);
    assert_eq!(got.len(), 1);
    assert!(got[0].last().rsc);
    // And off again.
    b.enable_rsc = false;
    b.restart_rx(0).unwrap();
    let (_, got) = tso_send(&mut a, &mut b, &payload);
    assert_eq!(got.len(), 45);
    // The device-level switch overrides enable_rsc.
    let (mut a, pa) = FakeDriver::new(cfg("a", 0xa), MEM);
    let off = GveConfig {
        rx_coalescing: false,
        ..cfg("b", 0xb)
    };
    let (mut b, pb) = FakeDriver::new(off, MEM);
    let _w = Wire::connect(pa, pb, WireOptions::default()).unwrap();
    a.probe().unwrap();
    b.probe().unwrap();
    a.up(1, true).unwrap();
    b.up(1, true).unwrap();
    let (_, got) = tso_send(&mut a, &mut b, &payload);
    assert_eq!(got.len(), 45);
}

/// Run `frames` through a fresh B and return the merge groups.
fn groups_of(frames: &[Vec<u8>], valid: &[bool], hsplit: bool) -> Vec<usize> {
    let (mut b, _w, host) = host_nic(true, hsplit, u32::MAX);
    let got = deliver(&mut b, &host, frames);
    let g = verify(frames, valid, &got).unwrap_or_else(|e| panic!("{e}"));
    let st = b.handle.stats();
    let merged: Vec<usize> = g.iter().copied().filter(|&k| k >= 2).collect();
    assert_eq!(st.rx_rsc_packets, merged.len() as u64);
    assert_eq!(st.rx_rsc_segments, merged.iter().sum::<usize>() as u64);
    g
}

#[test]
fn non_mergeable_sequences_are_not_merged() {
    let d = |n: usize, x: u8| vec![x; n];
    let m = 1000u32;
    for hsplit in [true, false] {
        let g = |frames: &[Vec<u8>]| groups_of(frames, &vec![true; frames.len()], hsplit);
        // Baseline: four in a row merge.
        let run: Vec<Vec<u8>> = (0..4)
            .map(|i| seg(0, i * m, 7, ACK, &d(1000, i as u8)))
            .collect();
        assert_eq!(g(&run), [4]);
        // A gap in the sequence.
        let f = vec![
            seg(0, 0, 7, ACK, &d(1000, 1)),
            seg(0, m, 7, ACK, &d(1000, 2)),
            seg(0, 2 * m + 1, 7, ACK, &d(1000, 3)),
            seg(0, 3 * m + 1, 7, ACK, &d(1000, 4)),
        ];
        assert_eq!(g(&f), [2, 2]);
        // A different ACK number.
        let f = vec![
            seg(0, 0, 7, ACK, &d(1000, 1)),
            seg(0, m, 7, ACK, &d(1000, 2)),
            seg(0, 2 * m, 8, ACK, &d(1000, 3)),
            seg(0, 3 * m, 8, ACK, &d(1000, 4)),
        ];
        assert_eq!(g(&f), [2, 2]);
        // FIN in the middle.
        let f = vec![
            seg(0, 0, 7, ACK, &d(1000, 1)),
            seg(0, m, 7, ACK, &d(1000, 2)),
            seg(0, 2 * m, 7, ACK | FIN, &d(1000, 3)),
            seg(0, 3 * m, 7, ACK, &d(1000, 4)),
            seg(0, 4 * m, 7, ACK, &d(1000, 5)),
        ];
        assert_eq!(g(&f), [2, 1, 2]);
        // PSH ends a merge (it is merged as the last segment).
        let f = vec![
            seg(0, 0, 7, ACK, &d(1000, 1)),
            seg(0, m, 7, ACK | PSH, &d(1000, 2)),
            seg(0, 2 * m, 7, ACK, &d(1000, 3)),
            seg(0, 3 * m, 7, ACK, &d(1000, 4)),
        ];
        assert_eq!(g(&f), [2, 2]);
        // A short segment ends a merge; a longer one cannot follow.
        let f = vec![
            seg(0, 0, 7, ACK, &d(1000, 1)),
            seg(0, m, 7, ACK, &d(1000, 2)),
            seg(0, 2 * m, 7, ACK, &d(500, 3)),
            seg(0, 2 * m + 500, 7, ACK, &d(1000, 4)),
            seg(0, 3 * m + 500, 7, ACK, &d(1200, 5)),
        ];
        assert_eq!(g(&f), [3, 1, 1]);
        // A segment longer than the first one is not merged.
        let f = vec![
            seg(0, 0, 7, ACK, &d(1100, 1)),
            seg(0, 1100, 7, ACK, &d(1100, 2)),
            seg(0, 2200, 7, ACK, &d(1101, 3)),
        ];
        assert_eq!(g(&f), [2, 1]);
        // Without header split a coalesced packet must span more than one
        // buffer: a single-buffer one may take the driver's copybreak path
        // (linear skb), where gve_rx_complete_rsc would compute gso_segs 0.
        let f = vec![
            seg(0, 0, 7, ACK, &d(500, 1)),
            seg(0, 500, 7, ACK, &d(500, 2)),
        ];
        assert_eq!(g(&f), if hsplit { vec![2] } else { vec![1, 1] });
        // A pure ACK (no payload) between data segments.
        let f = vec![
            seg(0, 0, 7, ACK, &d(1000, 1)),
            seg(0, m, 7, ACK, &[]),
            seg(0, m, 7, ACK, &d(1000, 3)),
            seg(0, 2 * m, 7, ACK, &d(1000, 4)),
        ];
        assert_eq!(g(&f), [1, 1, 2]);
        // Another flow in between (other port), and SYN/RST/URG/ECE/CWR.
        let f = vec![
            seg(0, 0, 7, ACK, &d(1000, 1)),
            seg(1, m, 7, ACK, &d(1000, 2)),
            seg(0, m, 7, ACK, &d(1000, 3)),
            seg(0, 2 * m, 7, ACK | 0x20, &d(1000, 4)),
            seg(0, 3 * m, 7, ACK | 0x40, &d(1000, 5)),
            seg(0, 4 * m, 7, ACK | 0x80, &d(1000, 6)),
            seg(0, 5 * m, 7, 0x04, &d(1000, 7)),
            seg(0, 6 * m, 7, 0x02, &d(1000, 8)),
        ];
        assert_eq!(g(&f), [1; 8]);
        // A different window.
        let mut f = run.clone();
        for s in &mut f[2..] {
            let t = tcp_off(s);
            s[t + 14] = 0x10;
            assert!(packet::fill_l4_checksum(s));
        }
        assert_eq!(g(&f), [2, 2]);
        // Different TCP options (timestamps) are not merged.
        let ts = |seq: u32, tsval: u8| {
            let mut s = seg(0, seq, 7, ACK, &d(1000, 9));
            let t = tcp_off(&s);
            // NOP NOP TS(10): data offset 8 words.
            let opt = [1, 1, 8, 10, 0, 0, 0, tsval, 0, 0, 0, 1];
            s.splice(t + 20..t + 20, opt);
            s[t + 12] = 0x80;
            let tot = (s.len() - 14) as u16;
            s[16..18].copy_from_slice(&tot.to_be_bytes());
            packet::fill_ipv4_checksum(&mut s, 14, 20);
            assert!(packet::fill_l4_checksum(&mut s));
            s
        };
        let f = vec![ts(0, 1), ts(m, 1), ts(2 * m, 2), ts(3 * m, 2)];
        assert_eq!(g(&f), [2, 2]);
        // A bad TCP checksum: delivered on its own, flagged; the rest intact.
        let mut f: Vec<Vec<u8>> = (0..5)
            .map(|i| seg(0, i * m, 7, ACK, &d(1000, i as u8)))
            .collect();
        corrupt(&mut f[2]);
        let valid = [true, true, false, true, true];
        assert_eq!(groups_of(&f, &valid, hsplit), [2, 1, 2]);
        // IPv6 works too.
        let f: Vec<Vec<u8>> = (0..5)
            .map(|i| seg(2, i * m, 7, ACK, &d(1000, 0x60 + i as u8)))
            .collect();
        assert_eq!(g(&f), [5]);
    }
}

#[test]
fn ipv6_coalesced_packet_layout() {
    let (mut b, _w, host) = host_nic(true, true, u32::MAX);
    let f: Vec<Vec<u8>> = (0..3u32)
        .map(|i| {
            seg(
                2,
                5 + i * 1200,
                9,
                if i == 2 { ACK | PSH } else { ACK },
                &[i as u8; 1200],
            )
        })
        .collect();
    let got = deliver(&mut b, &host, &f);
    assert_eq!(got.len(), 1);
    let p = &got[0];
    assert!(p.last().rsc);
    assert_eq!(p.last().rsc_seg_len, 1200);
    assert_eq!(p.last().packet_type, ptype::IPV6_TCP);
    assert_eq!(p.header.len(), 74);
    let fr = p.frame();
    assert_eq!(u16::from_be_bytes([fr[18], fr[19]]) as usize, 20 + 3600);
    assert_eq!(fr[54 + 13], ACK | PSH);
}

#[test]
fn buffer_shortage_loses_nothing() {
    for hsplit in [true, false] {
        // No buffers posted at first.
        let (mut b, _w, host) = host_nic(true, hsplit, 0);
        let payload: Vec<u8> = (0..64_000u32).map(|i| (i % 241) as u8).collect();
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
        let frames = tso_frames(&pkt, 1448);
        for f in &frames {
            assert!(host.send(f.clone()));
        }
        b.handle.poll();
        assert!(b.poll_rx(0).is_empty());
        assert_eq!(b.handle.stats().rx_frames, 0);
        // Then only 5 buffers outstanding at a time.
        b.rx_post_max = 5;
        b.post_rx(0);
        let mut got = Vec::new();
        for _ in 0..1000 {
            b.handle.poll();
            got.extend(b.poll_rx(0));
            if b.handle.stats().rx_frames == frames.len() as u64 {
                // Reposting rings the doorbell, which delivers inline.
                got.extend(b.poll_rx(0));
                break;
            }
        }
        let g = verify(&frames, &vec![true; frames.len()], &got).unwrap_or_else(|e| panic!("{e}"));
        assert!(got.iter().all(|p| p.compls.len() <= 5));
        // Merged fewer (as many as 5 buffers hold), not none.
        assert!(g.len() <= 9, "{g:?}");
        let data: Vec<u8> = got.iter().flat_map(|p| p.frame()[54..].to_vec()).collect();
        assert_eq!(data, payload);
        let st = b.handle.stats();
        assert_eq!((st.rx_no_buffers, st.rx_bad_checksum), (0, 0));
        assert_eq!(
            st.rx_rsc_segments,
            g.iter().filter(|&&k| k >= 2).sum::<usize>() as u64
        );
    }
}

#[derive(Clone, Debug)]
enum Op {
    /// One segment: flow, payload length selector, flags selector, gap,
    /// new ACK, bad checksum.
    One {
        flow: u8,
        len: u16,
        kind: u8,
        gap: bool,
        new_ack: bool,
        bad: bool,
    },
    /// `n` full-MSS ACK segments of `flow`.
    Burst { flow: u8, n: u8 },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0u8..2, 0u16..2000, 0u8..16, prop::bool::weighted(0.1),
              prop::bool::weighted(0.1), prop::bool::weighted(0.07))
            .prop_map(|(flow, len, kind, gap, new_ack, bad)| Op::One {
                flow, len, kind, gap, new_ack, bad
            }),
        1 => (0u8..2, 1u8..60).prop_map(|(flow, n)| Op::Burst { flow, n }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn random_segments_keep_every_byte_and_every_rule(
        ops in prop::collection::vec(op(), 1..40),
        v6 in any::<bool>(),
        mss in 200u16..=1448,
        hsplit in any::<bool>(),
        post_max in prop_oneof![Just(u32::MAX), 3u32..24],
    ) {
        // Flow 0 IPv4; flow 1 IPv6 or another IPv4 flow.
        let flows = [0u8, if v6 { 2 } else { 1 }];
        let mut seq = [1u32, 0xffff_f000];
        let mut ack = [100u32, 200];
        let mut frames = Vec::new();
        let mut valid = Vec::new();
        let mut per_flow = [Vec::new(), Vec::new()];
        let mut tick = 0u8;
        let mut push = |fl: usize, len: usize, flags: u8, bad: bool,
                        seq: &mut [u32; 2], ack: &[u32; 2]| {
            tick = tick.wrapping_add(1);
            let data: Vec<u8> = (0..len).map(|i| (i as u8).wrapping_mul(31) ^ tick).collect();
            let mut f = seg(flows[fl], seq[fl], ack[fl], flags, &data);
            if bad {
                corrupt(&mut f);
            }
            seq[fl] = seq[fl].wrapping_add(len as u32);
            per_flow[fl].extend_from_slice(&data);
            frames.push(f);
            valid.push(!bad);
        };
        for o in &ops {
            match *o {
                Op::One { flow, len, kind, gap, new_ack, bad } => {
                    let fl = usize::from(flow);
                    let len = match len % 4 {
                        0 | 1 => usize::from(mss),
                        2 => usize::from(len) % (usize::from(mss) + 1),
                        _ => usize::from(len / 4) % 64,
                    };
                    let flags = match kind {
                        0..=8 => ACK,
                        9 | 10 => ACK | PSH,
                        11 => ACK | FIN,
                        12 => 0x02,
                        13 => 0x04,
                        14 => ACK | 0x20,
                        _ => ACK | 0xc0,
                    };
                    if gap {
                        seq[fl] = seq[fl].wrapping_add(1 + u32::from(kind));
                    }
                    if new_ack {
                        ack[fl] = ack[fl].wrapping_add(1000);
                    }
                    push(fl, len, flags, bad, &mut seq, &ack);
                }
                Op::Burst { flow, n } => {
                    for _ in 0..n {
                        push(usize::from(flow), usize::from(mss), ACK, false, &mut seq, &ack);
                    }
                }
            }
        }
        let (mut b, _w, host) = host_nic(true, hsplit, post_max);
        let got = deliver(&mut b, &host, &frames);
        let g = verify(&frames, &valid, &got);
        prop_assert!(g.is_ok(), "{:?} {:?}", g, b.handle.stats());
        // Per flow, the delivered payload in order is what was sent.
        let mut out = [Vec::new(), Vec::new()];
        for p in &got {
            let f = p.frame();
            let h = hdr(&f).map_err(TestCaseError::fail)?;
            // Flow 0 is the one from port 1000.
            let fl = usize::from(f[h.tcp..h.tcp + 2] != 1000u16.to_be_bytes());
            out[fl].extend_from_slice(&f[h.end..]);
        }
        prop_assert_eq!(&out[0], &per_flow[0]);
        prop_assert_eq!(&out[1], &per_flow[1]);
        let st = b.handle.stats();
        prop_assert_eq!(st.rx_frames, frames.len() as u64);
        prop_assert_eq!(st.rx_no_buffers, 0);
        let g = g.unwrap_or_default();
        prop_assert_eq!(st.rx_rsc_packets, g.iter().filter(|&&k| k >= 2).count() as u64);
        prop_assert!(b.handle.refusals().is_empty());
    }
}
