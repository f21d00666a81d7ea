//! Entry points for `cargo fuzz` (fuzz/fuzz_targets/gve_parsers.rs) and the
//! deterministic fuzz smoke test: arbitrary bytes drive the admin queue,
//! the descriptor rings, the registers, the doorbells and the wire. The
//! device must never panic, and a driver-initiated reset must always bring
//! it back to a working state.

use crate::adminq::{Command, RawCommand};
use crate::desc::{RxBufDesc, RxCompl, TxDesc, parse_tx_compl};
use crate::device::GveConfig;
use crate::packet::{self, build};
use crate::regs::*;
use crate::testing::{FakeDriver, poll_all};
use crate::wire::{Wire, WireOptions};
use vmm::pci::PciDevice;

/// Pure parsers on raw bytes: must never panic.
pub fn parsers(data: &[u8]) {
    let mut slot: RawCommand = [0; 64];
    let n = data.len().min(64);
    slot[..n].copy_from_slice(&data[..n]);
    let _ = Command::parse(&slot);
    let _ = crate::adminq::FlowRuleCmd::parse(data);
    let _ = crate::adminq::parse_options(data);
    let mut d = [0u8; 16];
    d[..data.len().min(16)].copy_from_slice(&data[..data.len().min(16)]);
    let _ = TxDesc::parse(&d);
    let mut c = [0u8; 8];
    c[..data.len().min(8)].copy_from_slice(&data[..data.len().min(8)]);
    let _ = parse_tx_compl(&c);
    let _ = RxBufDesc::parse(data);
    let mut r = [0u8; 32];
    r[..data.len().min(32)].copy_from_slice(&data[..data.len().min(32)]);
    let _ = RxCompl::parse(&r);
    let p = packet::parse(data);
    let _ = packet::verify_checksums(data, &p);
    let _ = packet::flow_key(data, &p);
    let mut f = data.to_vec();
    let _ = packet::fill_l4_checksum(&mut f);
    if let Some(&m) = data.first() {
        let mss = u16::from(m).max(1) * 8;
        let hl = data.get(1).copied().unwrap_or(54) as usize;
        let total = data.len().saturating_sub(hl) as u32;
        let _ = packet::tso_segment(data, hl, mss, total);
    }
    let _ = crate::pcap::read_pcap(data);
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn u8(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }
    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_le_bytes([self.u8()?, self.u8()?]))
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes([
            self.u8()?,
            self.u8()?,
            self.u8()?,
            self.u8()?,
        ]))
    }
    fn bytes(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Some(a)
    }
}

fn fuzz_config() -> GveConfig {
    GveConfig {
        name: "fuzz".into(),
        num_queues: 2,
        tx_ring_size: 64,
        rx_ring_size: 64,
        ring_size_range: Some((64, 128)),
        spawn_worker: false,
        inbox_frames: 64,
        rx_pending_frames: 16,
        ..GveConfig::default()
    }
}

/// Drive a probed, up device with an operation stream decoded from `data`,
/// then check that reset + probe + up + one packet still works. Returns
/// the device's counters from before that reset (what the input did).
pub fn admin_and_descriptors(data: &[u8]) -> crate::NicStats {
    parsers(data);
    let (mut d, port) = FakeDriver::new(fuzz_config(), 4 << 20);
    let Ok((_wire, host)) = Wire::connect_host(port, WireOptions::default()) else {
        return crate::NicStats::default();
    };
    if d.probe().is_err() || d.up(2, true).is_err() {
        panic!("clean probe failed");
    }
    let mut r = Reader(data);
    let mut ops = 0;
    while let Some(op) = r.u8() {
        ops += 1;
        if ops > 64 {
            break;
        }
        match op % 10 {
            0 => {
                // Raw admin command into the next slot.
                let Some(b) = r.bytes(64) else { break };
                let mut slot = [0u8; 64];
                slot.copy_from_slice(b);
                d.adminq_batch(&[slot]);
            }
            1 => {
                // Raw TX descriptors at the tail, then a doorbell.
                let Some(q) = r.u8() else { break };
                let Some(n) = r.u8() else { break };
                let q = usize::from(q % 2);
                for _ in 0..(n % 8) {
                    let Some(b) = r.bytes(16) else { break };
                    if let Some(t) = d.tx[q].as_mut() {
                        d.mem.write(t.ring + u64::from(t.tail) * 16, b);
                        t.tail = (t.tail + 1) & (t.size - 1);
                    }
                }
                if let Some(t) = d.tx[q].as_ref() {
                    let (db, tail) = (t.db_index, t.tail);
                    d.doorbell(db, tail);
                }
            }
            2 => {
                // Raw RX buffer descriptor and doorbell value.
                let Some(q) = r.u8() else { break };
                let Some(b) = r.bytes(32) else { break };
                let Some(v) = r.u32() else { break };
                let q = usize::from(q % 2);
                if let Some(x) = d.rx[q].as_ref() {
                    let slot = v & (x.size - 1);
                    d.mem.write(x.bufq + u64::from(slot) * 32, b);
                    let db = x.db_index;
                    d.doorbell(db, v % 128);
                }
            }
            3 => {
                // Register write of any width at any offset.
                let Some(off) = r.u8() else { break };
                let Some(w) = r.u8() else { break };
                let Some(b) = r.bytes(usize::from(w % 4) + 1) else {
                    break;
                };
                d.dev.bar_write(REGISTER_BAR, u64::from(off % 0x30), b);
            }
            4 => {
                // Raw doorbell.
                let Some(off) = r.u16() else { break };
                let Some(v) = r.u32() else { break };
                d.dev
                    .bar_write(DOORBELL_BAR, u64::from(off) % 0x1004, &v.to_le_bytes());
            }
            5 => {
                // Raw frame from the wire.
                let Some(n) = r.u16() else { break };
                let n = usize::from(n) % 2048;
                let Some(b) = r.bytes(n.min(r.0.len())) else {
                    break;
                };
                host.send(b.to_vec());
            }
            6 => {
                // A well-formed TCP frame from the wire, maybe corrupted.
                let Some(x) = r.u8() else { break };
                let mut f = build::tcp4(
                    [2, 0, 0, 0, 0, 1],
                    [2, 0, 0, 0, 0, 9],
                    [10, 0, 0, 9],
                    [10, 0, 0, 1],
                    u16::from(x),
                    80,
                    0,
                    0x10,
                    &vec![x; usize::from(x) * 9],
                );
                if x & 1 == 1 {
                    let i = usize::from(x) % f.len();
                    f[i] ^= x;
                }
                host.send(f);
            }
            7 => {
                // A valid packet through the fake driver.
                let Some(x) = r.u8() else { break };
                if d.tx[0].is_some() && d.tx_free_slots(0) > 8 {
                    let f = build::udp4([2; 6], [4; 6], [1; 4], [2; 4], 1, 2, &[x; 100]);
                    d.send(0, &[&f], x & 1 == 1, None);
                }
            }
            8 => {
                // Register reads and BAR reads of odd widths.
                let Some(off) = r.u16() else { break };
                let mut b = [0u8; 3];
                d.dev.bar_read(REGISTER_BAR, u64::from(off), &mut b);
                d.dev.bar_read(DOORBELL_BAR, u64::from(off), &mut b);
                d.dev.bar_read(MSIX_BAR, u64::from(off), &mut b);
            }
            _ => {
                poll_all(&[&d.handle]);
                for q in 0..2 {
                    d.reap_tx(q);
                    d.poll_rx(q);
                    d.rearm(q);
                }
                while host.try_recv().is_some() {}
            }
        }
    }
    poll_all(&[&d.handle]);
    let stats = d.handle.stats();
    // Whatever happened, a reset brings the device back.
    d.tx.iter_mut().for_each(|t| *t = None);
    d.rx.iter_mut().for_each(|x| *x = None);
    d.reset().expect("reset handshake");
    d.probe().expect("probe after reset");
    d.up(2, true).expect("up after reset");
    while host.try_recv().is_some() {}
    let f = build::udp4([2; 6], [4; 6], [1; 4], [2; 4], 1, 2, b"alive");
    d.send(0, &[&f], true, None);
    poll_all(&[&d.handle]);
    let got = host.try_recv().expect("frame after reset");
    assert_eq!(&got[got.len() - 5..], b"alive");
    let _ = d.dev.config_read(0);
    stats
}
