//! The cargo-fuzz entry point over a few thousand deterministic
//! pseudo-random inputs (so CI exercises it without a fuzzer).

use sim_nic::faults::SplitMix64;

#[test]
fn fuzz_entry_point_smoke() {
    let mut rng = SplitMix64::new(0x5eed);
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
        sim_nic::fuzz::admin_and_descriptors(&data);
    }
}
