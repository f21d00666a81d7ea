//! The cargo-fuzz entry point over a few thousand deterministic
//! pseudo-random inputs (so CI exercises it without a fuzzer).

use sim_nic::faults::SplitMix64;

#[test]
fn fuzz_entry_point_smoke() {
    let mut rng = SplitMix64::new(0x5eed);
    let mut total = sim_nic::NicStats::default();
    for i in 0..3000 {
        let len = rng.below(600) as usize;
        let mut data: Vec<u8> = (0..len).map(|_| rng.next_u64() as u8).collect();
        // Bias some inputs towards well-formed admin opcodes and TX dtypes.
        if i % 3 == 0 {
            for (j, b) in data.iter_mut().enumerate() {
                if j % 17 == 0 {
                    *b = [0x0c, 0x04, 0x05, 0x01, 0x06, 0x08][j % 6];
                }
            }
        }
        let st = sim_nic::fuzz::admin_and_descriptors(&data);
        total.aq_commands += st.aq_commands;
        total.aq_errors += st.aq_errors;
        total.tx_packets += st.tx_packets;
        total.tx_bad_packets += st.tx_bad_packets;
        total.rx_frames += st.rx_frames;
        total.rx_errors += st.rx_errors;
        total.refusals += st.refusals;
        total.reset_requests += st.reset_requests;
    }
    // The inputs reach every part of the device.
    assert!(total.aq_errors > 100, "{total:?}");
    assert!(
        total.tx_packets > 1000 && total.tx_bad_packets > 100,
        "{total:?}"
    );
    assert!(total.rx_frames > 100 && total.rx_errors > 0, "{total:?}");
    assert!(
        total.refusals > 1000 && total.reset_requests > 0,
        "{total:?}"
    );
    eprintln!("{total:?}");
}
