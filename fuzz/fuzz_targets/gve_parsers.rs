//! gve device model: arbitrary bytes drive the admin queue, descriptor
//! rings, registers, doorbells and the wire of a probed sim-nic device
//! (`sim_nic::fuzz::admin_and_descriptors`), after feeding the raw parsers.
//! The device must never panic and must always come back through a reset.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = sim_nic::fuzz::admin_and_descriptors(data);
});
