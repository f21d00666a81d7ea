//! Property: whatever test fault a NIC has and whatever traffic it carries,
//! what the receiving driver gets is the sent frames in order with only the
//! frames the faults counted as lost missing (never a changed byte), every
//! TX packet completes exactly once, and no fault needs a device reset.

use std::time::Duration;

use proptest::prelude::*;
use sim_nic::desc::COMPL_TYPE_PKT;
use sim_nic::packet::build;
use sim_nic::regs::*;
use sim_nic::testing::{FakeDriver, poll_all, test_config, wait_for};
use sim_nic::{NicFault, QueueDir, Wire, WireOptions};

const MEM: usize = 16 << 20;
const A: [u8; 6] = [2, 0, 0, 0, 0, 0xa];
const B: [u8; 6] = [2, 0, 0, 0, 0, 0xb];

/// A fault for the sender (`a`) or the receiver (`b`).
fn fault() -> impl Strategy<Value = (bool, NicFault)> {
    prop_oneof![
        (0..5u64).prop_map(|ms| (true, NicFault::TxCompletionDelay { ms })),
        (0..20u64, 0..20u64)
            .prop_map(|(after, frames)| (false, NicFault::RxStarve { after, frames })),
        (0..20u64).prop_map(|after| (
            true,
            NicFault::DmaFault {
                dir: QueueDir::Tx,
                queue: 0,
                after
            }
        )),
        (0..20u64).prop_map(|after| (
            false,
            NicFault::DmaFault {
                dir: QueueDir::Rx,
                queue: 0,
                after
            }
        )),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 48,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn faults_lose_only_what_they_count(
        (on_sender, f) in fault(),
        sizes in proptest::collection::vec(1usize..1400, 1..40),
    ) {
        let mut ca = test_config("a", 0xa);
        let mut cb = test_config("b", 0xb);
        f.apply(if on_sender { &mut ca } else { &mut cb });
        let (mut a, pa) = FakeDriver::new(ca, MEM);
        let (mut b, pb) = FakeDriver::new(cb, MEM);
        let _w = Wire::connect(pa, pb, WireOptions::default()).unwrap();
        a.probe().unwrap();
        b.probe().unwrap();
        a.up(1, false).unwrap();
        b.up(1, false).unwrap();
        let mut sent = Vec::new();
        let mut tags = Vec::new();
        let mut got = Vec::new();
        for (i, n) in sizes.iter().enumerate() {
            let body: Vec<u8> = (0..*n).map(|j| (i * 7 + j) as u8).collect();
            let fr = build::udp4(B, A, [10, 0, 0, 1], [10, 0, 0, 2], 9, 9, &body);
            tags.push(a.send(0, &[&fr], false, None));
            sent.push(fr);
            poll_all(&[&a.handle, &b.handle]);
            got.extend(b.poll_rx(0).into_iter().map(|p| p.frame()));
        }
        let mut compl = Vec::new();
        let done = wait_for(Duration::from_secs(5), || {
            poll_all(&[&a.handle, &b.handle]);
            got.extend(b.poll_rx(0).into_iter().map(|p| p.frame()));
            compl.extend(
                a.reap_tx(0)
                    .into_iter()
                    .filter(|c| c.ctype == COMPL_TYPE_PKT)
                    .map(|c| c.value),
            );
            compl.len() >= tags.len()
        });
        prop_assert!(done, "not every packet completed within 5 s");
        // Every packet completed once, in order.
        prop_assert_eq!(&compl, &tags);
        // What arrived is the sent frames in order, unchanged, with gaps.
        let mut it = sent.iter();
        for g in &got {
            prop_assert!(it.any(|s| s == g), "a received frame was never sent as is");
        }
        let (sa, sb) = (a.handle.stats(), b.handle.stats());
        let counted_lost = sa.injected_dma_faults + sb.injected_dma_faults + sb.rx_starved;
        prop_assert_eq!(got.len() as u64 + counted_lost, sent.len() as u64);
        // Exactly what the fault promises.
        match f {
            NicFault::RxStarve { after, frames } => {
                let n = sent.len() as u64;
                prop_assert_eq!(sb.rx_starved, n.saturating_sub(after).min(frames));
            }
            NicFault::DmaFault { after, .. } => {
                prop_assert_eq!(counted_lost, u64::from((after as usize) < sent.len()));
            }
            NicFault::TxCompletionDelay { .. } => {
                prop_assert_eq!(counted_lost, 0);
                prop_assert_eq!(sa.tx_completions_delayed, sent.len() as u64);
            }
            _ => {}
        }
        for d in [&mut a, &mut b] {
            prop_assert_eq!(d.reg_read(REG_DEVICE_STATUS) & DEVICE_STATUS_RESET_MASK, 0);
            prop_assert!(d.mem.faults().is_empty());
        }
        prop_assert_eq!(sa.reset_requests + sb.reset_requests, 0);
    }
}
