//! Feeds arbitrary bytes to the virtio-iommu request parser as a session of
//! requests against a small IOMMU model (see `vmm::virtio::iommu::fuzz_request`
//! for the input format and the invariants it asserts).

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = vmm::virtio::iommu::fuzz_request(data);
});
