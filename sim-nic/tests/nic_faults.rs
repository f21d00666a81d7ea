//! The device test faults a fault campaign injects (`tx-completion-delay`,
//! `rx-starve`, `reset-request`, `dma-fault`), driven by the fake driver:
//! each shows its effect, and that what the driver sees stays on paths the
//! stock gve driver has (late but ordered completions, dropped frames
//! counted as no-buffer drops, the device-requested reset handshake,
//! completed-but-lost TX packets, RX buffers returned with `rx_error`).

use std::time::{Duration, Instant};

use sim_nic::desc::COMPL_TYPE_PKT;
use sim_nic::packet::build;
use sim_nic::regs::*;
use sim_nic::testing::{FakeDriver, poll_all, test_config, wait_for};
use sim_nic::{GveConfig, NicFault, QueueDir, Wire, WireOptions};

const MEM: usize = 16 << 20;
const A: [u8; 6] = [2, 0, 0, 0, 0, 0xa];
const B: [u8; 6] = [2, 0, 0, 0, 0, 0xb];

/// Two NICs back to back, both up with one queue pair; `a` has `fault`.
fn pair(fault: Option<NicFault>, b_fault: Option<NicFault>) -> (FakeDriver, FakeDriver, Wire) {
    let mut ca = test_config("a", 0xa);
    if let Some(f) = fault {
        f.apply(&mut ca);
    }
    let mut cb: GveConfig = test_config("b", 0xb);
    if let Some(f) = b_fault {
        f.apply(&mut cb);
    }
    let (mut a, pa) = FakeDriver::new(ca, MEM);
    let (mut b, pb) = FakeDriver::new(cb, MEM);
    let w = Wire::connect(pa, pb, WireOptions::default()).unwrap();
    a.probe().unwrap();
    b.probe().unwrap();
    a.up(1, false).unwrap();
    b.up(1, false).unwrap();
    // Consume the link-up events (management interrupts).
    poll_all(&[&a.handle, &b.handle]);
    (a, b, w)
}

fn frame(i: usize) -> Vec<u8> {
    build::udp4(B, A, [10, 0, 0, 1], [10, 0, 0, 2], 9, 9, &[i as u8; 300])
}

/// Send frames `0..n` from `a` on queue 0; returns the tags.
fn send(a: &mut FakeDriver, b: &FakeDriver, n: usize) -> Vec<u16> {
    (0..n)
        .map(|i| {
            let t = a.send(0, &[&frame(i)], false, None);
            poll_all(&[&a.handle, &b.handle]);
            t
        })
        .collect()
}

fn received(b: &mut FakeDriver, a: &FakeDriver) -> Vec<Vec<u8>> {
    poll_all(&[&a.handle, &b.handle]);
    b.poll_rx(0).into_iter().map(|p| p.frame()).collect()
}

fn pkt_tags(c: &[sim_nic::desc::TxCompl]) -> Vec<u16> {
    c.iter()
        .filter(|c| c.ctype == COMPL_TYPE_PKT)
        .map(|c| c.value)
        .collect()
}

#[test]
fn tx_completion_delay_holds_completions_back_and_keeps_their_order() {
    // No assertion depends on how fast this thread runs: a completion is
    // checked against the time its own packet was handed to the device
    // (the device writes it at least `delay` after it took the packet,
    // which is after that time), however long the sends take.
    let delay = Duration::from_millis(150);
    let (mut a, mut b, _w) = pair(Some(NicFault::TxCompletionDelay { ms: 150 }), None);
    let mut sent_at = std::collections::HashMap::new();
    let mut got = Vec::new();
    let mut early = Vec::new();
    let mut reap = |a: &mut FakeDriver,
                    got: &mut Vec<_>,
                    sent_at: &std::collections::HashMap<u16, Instant>| {
        let now = Instant::now();
        for c in a.reap_tx(0) {
            if c.ctype == COMPL_TYPE_PKT
                && sent_at
                    .get(&c.value)
                    .is_none_or(|t: &Instant| now.duration_since(*t) < delay)
            {
                early.push(c.value);
            }
            got.push(c);
        }
    };
    let mut tags = Vec::new();
    a.sink.take();
    for i in 0..40 {
        let t0 = Instant::now();
        let t = a.send(0, &[&frame(i)], false, None);
        sent_at.insert(t, t0);
        tags.push(t);
        poll_all(&[&a.handle, &b.handle]);
        reap(&mut a, &mut got, &sent_at);
    }
    // The frames left at once.
    assert_eq!(received(&mut b, &a).len(), 40);
    assert!(wait_for(Duration::from_secs(10), || {
        a.handle.poll();
        reap(&mut a, &mut got, &sent_at);
        pkt_tags(&got).len() == 40
    }));
    assert!(
        early.is_empty(),
        "completions earlier than {delay:?}: {early:?}"
    );
    // In order, every tag once, and the ring head moved past all of them:
    // exactly what gve_clean_tx_done_dqo expects, only later.
    assert_eq!(pkt_tags(&got), tags);
    let t = a.tx[0].as_ref().unwrap();
    assert!(t.outstanding.is_empty());
    assert!(
        got.iter().any(|c| c.ctype != COMPL_TYPE_PKT),
        "descriptor completions too"
    );
    // The TX block's interrupt fired for them.
    assert!(a.sink.count(a.tx_vector(0)) >= 1);
    let s = a.handle.stats();
    assert_eq!(s.tx_completions_delayed, 40);
    assert_eq!(s.reset_requests, 0);
    assert!(a.handle.refusals().is_empty());
}

#[test]
fn without_the_delay_completions_are_immediate() {
    let (mut a, b, _w) = pair(None, None);
    let tags = send(&mut a, &b, 3);
    assert_eq!(pkt_tags(&a.reap_tx(0)), tags);
    assert_eq!(a.handle.stats().tx_completions_delayed, 0);
}

#[test]
fn rx_starve_drops_its_window_as_no_buffer_drops() {
    let (mut a, mut b, _w) = pair(
        None,
        Some(NicFault::RxStarve {
            after: 2,
            frames: 3,
        }),
    );
    send(&mut a, &b, 8);
    let got = received(&mut b, &a);
    assert_eq!(got, [0, 1, 5, 6, 7].map(frame).to_vec());
    let s = b.handle.stats();
    assert_eq!((s.rx_starved, s.rx_no_buffers, s.rx_frames), (3, 3, 5));
    // The driver sees them where gve_ethtool.c reads NIC drops:
    // RX_QUEUE_DROP_CNT and RX_NO_BUFFERS_POSTED of queue 0.
    poll_all(&[&b.handle]);
    assert_eq!(b.nic_rx_stats(1), vec![(0, [3, 3, 0, 0])]);
    // No error completion, no reset: frames just did not arrive.
    assert_eq!(b.rx[0].as_ref().unwrap().errors, 0);
    assert_eq!(b.reg_read(REG_DEVICE_STATUS) & DEVICE_STATUS_RESET_MASK, 0);
}

#[test]
fn reset_request_asks_once_and_the_driver_reset_path_recovers() {
    let (mut a, mut b, _w) = pair(Some(NicFault::ResetRequest { after: 2 }), None);
    a.sink.take();
    send(&mut a, &b, 2);
    assert_eq!(a.reg_read(REG_DEVICE_STATUS) & DEVICE_STATUS_RESET_MASK, 0);
    send(&mut a, &b, 1);
    // Third packet: RESET in device_status and the management interrupt
    // (gve_main.c gve_handle_status schedules the reset on that bit).
    assert_ne!(a.reg_read(REG_DEVICE_STATUS) & DEVICE_STATUS_RESET_MASK, 0);
    assert_eq!(a.sink.count(a.mgmt_vector()), 1);
    assert_eq!(a.handle.stats().reset_requests, 1);
    assert_eq!(received(&mut b, &a).len(), 3);
    // gve_handle_reset → gve_reset(priv, false): reset handshake without
    // teardown, then gve_reset_recovery (probe again, up again).
    a.reset().unwrap();
    a.probe().unwrap();
    a.up(1, false).unwrap();
    assert_eq!(a.reg_read(REG_DEVICE_STATUS) & DEVICE_STATUS_RESET_MASK, 0);
    let tags = send(&mut a, &b, 5);
    assert_eq!(pkt_tags(&a.reap_tx(0)), tags);
    assert_eq!(received(&mut b, &a), (0..5).map(frame).collect::<Vec<_>>());
    // Once per device lifetime.
    assert_eq!(a.handle.stats().reset_requests, 1);
    assert_eq!(a.reg_read(REG_DEVICE_STATUS) & DEVICE_STATUS_RESET_MASK, 0);
}

#[test]
fn dma_fault_on_a_tx_queue_loses_that_packet_but_completes_it() {
    let (mut a, mut b, _w) = pair(
        Some(NicFault::DmaFault {
            dir: QueueDir::Tx,
            queue: 0,
            after: 1,
        }),
        None,
    );
    let tags = send(&mut a, &b, 4);
    assert_eq!(received(&mut b, &a), [0, 2, 3].map(frame).to_vec());
    // Every tag completes: the driver frees the skb and goes on (TCP
    // would retransmit the lost segment).
    assert_eq!(pkt_tags(&a.reap_tx(0)), tags);
    let s = a.handle.stats();
    assert_eq!((s.injected_dma_faults, s.tx_dma_faults), (1, 1));
    assert_eq!(s.reset_requests, 0);
    let r = a.handle.refusals();
    assert_eq!(r.len(), 1);
    assert!(r[0].detail.contains("test fault dma-fault"), "{:?}", r[0]);
    // Not a real IOMMU refusal: nothing reached the memory's fault log.
    assert!(a.mem.faults().is_empty());
}

#[test]
fn dma_fault_on_another_queue_leaves_this_one_alone() {
    let (mut a, mut b, _w) = pair(
        Some(NicFault::DmaFault {
            dir: QueueDir::Tx,
            queue: 1,
            after: 0,
        }),
        None,
    );
    send(&mut a, &b, 3);
    assert_eq!(received(&mut b, &a).len(), 3);
    assert_eq!(a.handle.stats().injected_dma_faults, 0);
}

#[test]
fn dma_fault_on_any_queue_strikes_the_queue_in_use() {
    let (mut a, mut b, _w) = pair(
        Some(NicFault::DmaFault {
            dir: QueueDir::Tx,
            queue: sim_nic::faults::ANY_QUEUE,
            after: 2,
        }),
        None,
    );
    let tags = send(&mut a, &b, 4);
    assert_eq!(received(&mut b, &a), [0, 1, 3].map(frame).to_vec());
    assert_eq!(pkt_tags(&a.reap_tx(0)), tags);
    assert_eq!(a.handle.stats().injected_dma_faults, 1);
}

#[test]
fn dma_fault_on_an_rx_queue_returns_the_buffer_with_rx_error() {
    let (mut a, mut b, _w) = pair(
        None,
        Some(NicFault::DmaFault {
            dir: QueueDir::Rx,
            queue: 0,
            after: 1,
        }),
    );
    send(&mut a, &b, 4);
    // gve_rx_dqo drops the packet whose buffer came back with rx_error.
    assert_eq!(received(&mut b, &a), [0, 2, 3].map(frame).to_vec());
    assert_eq!(b.rx[0].as_ref().unwrap().errors, 1);
    let s = b.handle.stats();
    assert_eq!(
        (s.injected_dma_faults, s.rx_dma_faults, s.rx_errors),
        (1, 1, 1)
    );
    assert_eq!(b.reg_read(REG_DEVICE_STATUS) & DEVICE_STATUS_RESET_MASK, 0);
    // Once: later frames arrive.
    send(&mut a, &b, 2);
    assert_eq!(received(&mut b, &a).len(), 2);
}

// Faults switched on and off while the device runs (`NicHandle::set_faults`).

#[test]
fn rx_starve_set_at_runtime_counts_from_the_setting_and_clearing_stops_it() {
    let (mut a, mut b, _w) = pair(None, None);
    assert!(b.handle.faults().is_empty());
    send(&mut a, &b, 5);
    assert_eq!(received(&mut b, &a).len(), 5);
    let f = NicFault::RxStarve {
        after: 2,
        frames: 3,
    };
    b.handle.set_faults(&[f]);
    assert_eq!(b.handle.faults(), [f]);
    // `after` counts from the setting, not from the device's start.
    send(&mut a, &b, 8);
    assert_eq!(received(&mut b, &a), [0, 1, 5, 6, 7].map(frame).to_vec());
    assert_eq!(b.handle.stats().rx_starved, 3);
    b.handle.set_faults(&[]);
    assert!(b.handle.faults().is_empty());
    send(&mut a, &b, 8);
    assert_eq!(received(&mut b, &a), (0..8).map(frame).collect::<Vec<_>>());
    // Setting it again starts a new window; the counter goes on.
    b.handle.set_faults(&[f]);
    send(&mut a, &b, 8);
    assert_eq!(received(&mut b, &a), [0, 1, 5, 6, 7].map(frame).to_vec());
    let s = b.handle.stats();
    assert_eq!((s.rx_starved, s.rx_no_buffers), (6, 6));
}

#[test]
fn reset_request_and_dma_fault_set_at_runtime_strike_once_per_setting() {
    let (mut a, mut b, _w) = pair(None, None);
    send(&mut a, &b, 10);
    assert_eq!(received(&mut b, &a).len(), 10);
    assert_eq!(a.reap_tx(0).len(), 10);
    let dma = NicFault::DmaFault {
        dir: QueueDir::Tx,
        queue: 0,
        after: 1,
    };
    a.handle
        .set_faults(&[NicFault::ResetRequest { after: 3 }, dma]);
    a.sink.take();
    // Packet 1 of the setting is refused (lost but completed), the 4th
    // finished packet asks for the reset.
    let tags = send(&mut a, &b, 3);
    assert_eq!(pkt_tags(&a.reap_tx(0)), tags);
    assert_eq!(received(&mut b, &a), [0, 2].map(frame).to_vec());
    assert_eq!(a.reg_read(REG_DEVICE_STATUS) & DEVICE_STATUS_RESET_MASK, 0);
    send(&mut a, &b, 1);
    assert_ne!(a.reg_read(REG_DEVICE_STATUS) & DEVICE_STATUS_RESET_MASK, 0);
    assert_eq!(a.sink.count(a.mgmt_vector()), 1);
    let s = a.handle.stats();
    assert_eq!((s.reset_requests, s.injected_dma_faults), (1, 1));
    a.reset().unwrap();
    a.probe().unwrap();
    a.up(1, false).unwrap();
    received(&mut b, &a);
    // The same setting does not strike again after the driver's reset...
    send(&mut a, &b, 6);
    assert_eq!(received(&mut b, &a).len(), 6);
    let s = a.handle.stats();
    assert_eq!((s.reset_requests, s.injected_dma_faults), (1, 1));
    // ...a new one does, and clearing stops both.
    a.handle.set_faults(&[dma]);
    send(&mut a, &b, 3);
    assert_eq!(received(&mut b, &a), [0, 2].map(frame).to_vec());
    a.handle.set_faults(&[]);
    send(&mut a, &b, 6);
    assert_eq!(received(&mut b, &a).len(), 6);
    let s = a.handle.stats();
    assert_eq!((s.reset_requests, s.injected_dma_faults), (1, 2));
    assert_eq!(a.reg_read(REG_DEVICE_STATUS) & DEVICE_STATUS_RESET_MASK, 0);
}

#[test]
fn tx_completion_delay_cleared_at_runtime_still_writes_what_it_held_back() {
    let (mut a, b, _w) = pair(None, None);
    let tags = send(&mut a, &b, 2);
    assert_eq!(pkt_tags(&a.reap_tx(0)), tags);
    // A delay far longer than the test: what it holds back is not written
    // before the clearing, whatever the scheduling.
    a.handle
        .set_faults(&[NicFault::TxCompletionDelay { ms: 60_000 }]);
    let held = send(&mut a, &b, 3);
    assert!(pkt_tags(&a.reap_tx(0)).is_empty());
    assert_eq!(a.handle.stats().tx_completions_delayed, 3);
    a.handle.set_faults(&[]);
    // Clearing releases what the delay held back, and completions of
    // packets sent after it are not delayed: all written now, in order.
    let after = send(&mut a, &b, 2);
    let want: Vec<u16> = held.iter().chain(&after).copied().collect();
    assert_eq!(pkt_tags(&a.reap_tx(0)), want);
    assert!(a.tx[0].as_ref().unwrap().outstanding.is_empty());
    assert_eq!(a.handle.stats().tx_completions_delayed, 3);
}
