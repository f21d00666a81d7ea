//! The `dma-foreign-iova` test fault: from the N-th TX payload read on, the
//! NIC reads payload through another IOVA its domain maps to the same bytes
//! (here: a second "binding" of the same fake dmabuf).

use sim_nic::packet::build;
use sim_nic::testing::{DmaRecord, FakeDriver, poll_all, test_config};
use sim_nic::{GveConfig, NicFault, Wire, WireOptions};
use vmm::dma::Access;

const MAC_A: [u8; 6] = [2, 0, 0, 0, 0, 0xa];
const MAC_B: [u8; 6] = [2, 0, 0, 0, 0, 0xb];
const MEM: usize = 8 << 20;
/// Where the second binding maps the dmabuf (outside the fake memory).
const ALIAS: u64 = 0x7000_0000;
const DMABUF_LEN: u64 = 64 << 10;

struct Run {
    /// A's payload reads, in order.
    reads: Vec<DmaRecord>,
    /// Frames B received.
    got: Vec<Vec<u8>>,
    /// A's `tx_foreign_iova_reads`.
    foreign: u64,
    dmabuf: u64,
    sent: Vec<Vec<u8>>,
}

/// Send `n` frames whose bytes live in a dmabuf that is mapped twice, plus
/// one frame from ordinary memory after the fourth.
fn run(cfg_a: GveConfig, n: usize) -> Run {
    let (mut a, pa) = FakeDriver::new(cfg_a, MEM);
    let (mut b, pb) = FakeDriver::new(test_config("b", 0xb), MEM);
    let _w = Wire::connect(pa, pb, WireOptions::default()).unwrap();
    a.probe().unwrap();
    b.probe().unwrap();
    a.up(1, false).unwrap();
    b.up(1, false).unwrap();
    let dmabuf = a.alloc(DMABUF_LEN, 4096, false);
    a.mem.alias(ALIAS, dmabuf, DMABUF_LEN);
    a.mem.record();
    let mut sent = Vec::new();
    for i in 0..n {
        let body = vec![i as u8; 700];
        let f = build::udp4(MAC_B, MAC_A, [10, 0, 0, 1], [10, 0, 0, 2], 9, 9, &body);
        let at = dmabuf + 2048 * i as u64;
        a.mem.write(at, &f);
        a.send_addrs(0, &[(at, f.len() as u64)], false, None);
        sent.push(f);
        if i == 3 {
            // Ordinary memory: no alias, read where it is even when due.
            let f = build::udp4(MAC_B, MAC_A, [10, 0, 0, 1], [10, 0, 0, 2], 9, 9, b"plain");
            a.send(0, &[&f], false, None);
            sent.push(f);
        }
        poll_all(&[&a.handle, &b.handle]);
    }
    let mut got = Vec::new();
    for _ in 0..4 {
        got.extend(b.poll_rx(0).into_iter().map(|p| p.frame()));
        poll_all(&[&a.handle, &b.handle]);
    }
    let reads = a
        .mem
        .recorded()
        .into_iter()
        .filter(|r| r.tag == "tx-payload")
        .collect();
    assert!(a.mem.faults().is_empty(), "{:?}", a.mem.faults());
    Run {
        reads,
        got,
        foreign: a.handle.stats().tx_foreign_iova_reads,
        dmabuf,
        sent,
    }
}

#[test]
fn dma_foreign_iova_reads_through_the_alias_from_the_nth_read_on() {
    let mut cfg = test_config("a", 0xa);
    NicFault::DmaForeignIova { after: 2 }.apply(&mut cfg);
    let Run {
        reads,
        got,
        foreign,
        dmabuf,
        sent,
    } = run(cfg, 6);
    assert_eq!(reads.len(), 7);
    assert!(reads.iter().all(|r| r.access == Access::Read));
    let iovas: Vec<u64> = reads.iter().map(|r| r.iova).collect();
    let plain = iovas[4];
    assert!(plain < ALIAS && !(dmabuf..dmabuf + DMABUF_LEN).contains(&plain));
    assert_eq!(
        iovas,
        [
            dmabuf,
            dmabuf + 2048,
            ALIAS + 2 * 2048,
            ALIAS + 3 * 2048,
            plain,
            ALIAS + 4 * 2048,
            ALIAS + 5 * 2048,
        ],
        "reads 0 and 1 through the device's own IOVA, from read 2 on through the alias"
    );
    assert_eq!(foreign, 4);
    // Same bytes either way: the wire carries the frames unchanged.
    assert_eq!(got, sent);
}

#[test]
fn without_the_fault_every_read_uses_the_posted_iova() {
    let Run {
        reads,
        got,
        foreign,
        dmabuf,
        sent,
    } = run(test_config("a", 0xa), 6);
    assert_eq!(foreign, 0);
    let in_dmabuf: Vec<u64> = reads
        .iter()
        .map(|r| r.iova)
        .filter(|&i| i < ALIAS)
        .collect();
    assert_eq!(in_dmabuf.len(), 7);
    assert_eq!(in_dmabuf[0], dmabuf);
    assert_eq!(got, sent);
}
