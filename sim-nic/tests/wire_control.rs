//! Changing a wire's faults while it runs (`Wire::set_faults`): what a
//! scenario's `wire` step and a campaign's schedule do between steps.

use std::time::Duration;

use sim_nic::packet::build;
use sim_nic::testing::{FakeDriver, test_config, wait_for};
use sim_nic::{FaultDirection, GveConfig, LinkWindow, Wire, WireError, WireFaults, WireOptions};

const MEM: usize = 8 << 20;
const A: [u8; 6] = [2, 0, 0, 0, 0, 0xa];

fn host_wire(faults: WireFaults) -> (FakeDriver, Wire, sim_nic::HostPort) {
    let (mut d, port) = FakeDriver::new(test_config("w", 0xa), MEM);
    let (w, h) = Wire::connect_host(port, WireOptions { pcap: None, faults }).unwrap();
    d.probe().unwrap();
    (d, w, h)
}

/// Send `n` frames from the host towards the NIC; how many the wire took
/// (a frame it dropped by a fault still counts as taken).
fn send_n(h: &sim_nic::HostPort, n: usize) -> usize {
    (0..n)
        .filter(|i| {
            let f = build::udp4(A, A, [1; 4], [2; 4], 7, 7, &[*i as u8; 100]);
            h.send(f)
        })
        .count()
}

#[test]
fn set_faults_switches_drop_on_and_off_and_counts_go_on() {
    let (_d, w, h) = host_wire(WireFaults::none());
    assert_eq!(send_n(&h, 10), 10);
    assert_eq!(w.counters().dropped, 0);
    w.set_faults(WireFaults {
        drop: 1.0,
        direction: FaultDirection::BToA,
        ..Default::default()
    })
    .unwrap();
    // host -> NIC is b -> a on a host wire: every frame is dropped.
    assert_eq!(send_n(&h, 5), 5);
    let c = w.counters();
    assert_eq!((c.frames, c.dropped, c.delivered), (15, 5, 10));
    assert_eq!(w.faults().drop, 1.0);
    w.set_faults(WireFaults::none()).unwrap();
    assert_eq!(send_n(&h, 3), 3);
    let c = w.counters();
    assert_eq!((c.frames, c.dropped, c.delivered), (18, 5, 13));
}

#[test]
fn set_faults_refuses_bad_probabilities_and_keeps_the_old_ones() {
    let (_d, w, _h) = host_wire(WireFaults {
        corrupt: 0.5,
        ..Default::default()
    });
    for bad in [1.5, -0.1, f64::NAN] {
        let e = w
            .set_faults(WireFaults {
                drop: bad,
                ..Default::default()
            })
            .unwrap_err();
        assert!(matches!(e, WireError::Faults(_)), "{e}");
    }
    assert_eq!(w.faults().corrupt, 0.5);
    let (_d2, port) = FakeDriver::new(test_config("x", 1), MEM);
    let e = Wire::connect_host(
        port,
        WireOptions {
            pcap: None,
            faults: WireFaults {
                reorder: 2.0,
                ..Default::default()
            },
        },
    )
    .err()
    .unwrap();
    assert!(e.to_string().contains("reorder"), "{e}");
}

#[test]
fn set_faults_link_window_counts_from_now_and_replacing_it_brings_the_link_back() {
    let (mut d, w, _h) = host_wire(WireFaults::none());
    let link = |d: &mut FakeDriver| {
        d.reg_read(sim_nic::regs::REG_DEVICE_STATUS) & sim_nic::regs::DEVICE_STATUS_LINK_STATUS_MASK
            != 0
    };
    assert!(link(&mut d));
    w.set_faults(WireFaults {
        link_down: vec![LinkWindow {
            at_ms: 0,
            duration_ms: 60_000,
        }],
        ..Default::default()
    })
    .unwrap();
    assert!(wait_for(Duration::from_secs(3), || !w.link_up()));
    assert!(!link(&mut d));
    // New faults cancel the minute-long outage: the link is up at once.
    w.set_faults(WireFaults::none()).unwrap();
    assert!(w.link_up());
    assert!(link(&mut d));
    let c = w.counters();
    assert_eq!((c.link_downs, c.link_ups), (1, 1));
    // A short window runs to its end by itself.
    w.set_faults(WireFaults {
        link_down: vec![LinkWindow {
            at_ms: 10,
            duration_ms: 50,
        }],
        ..Default::default()
    })
    .unwrap();
    assert!(wait_for(Duration::from_secs(3), || w.counters().link_ups == 2));
    assert!(w.link_up());
    assert_eq!(w.counters().link_downs, 2);
}

#[test]
fn dropping_a_wire_with_a_pending_schedule_returns() {
    let cfg = GveConfig {
        spawn_worker: false,
        ..test_config("p", 3)
    };
    let (_d, port) = FakeDriver::new(cfg, MEM);
    let (w, _h) = Wire::connect_host(port, WireOptions::default()).unwrap();
    w.set_faults(WireFaults {
        link_down: vec![LinkWindow {
            at_ms: 3_600_000,
            duration_ms: 1,
        }],
        ..Default::default()
    })
    .unwrap();
    let t = std::time::Instant::now();
    drop(w);
    assert!(t.elapsed() < Duration::from_secs(5));
}
