//! virtio-iommu (virtio 1.2 §5.13): the device the guest's IOMMU driver
//! programs, over the shared [`IommuState`].
//!
//! - Queue 0 (requestq): ATTACH, DETACH, MAP, UNMAP, PROBE. Each request is
//!   a device-readable part (head + fields) followed by a device-writable
//!   part whose last 4 bytes are the tail (status); PROBE's properties fill
//!   the writable part before the tail. Used length = the writable length.
//! - Queue 1 (eventq): the guest posts buffers; a DMA refused by the IOMMU
//!   fills one with a `struct virtio_iommu_fault` (no buffer → dropped and
//!   counted).
//! - The device's own rings are guest-physical: the virtio-iommu is never
//!   translated through itself.
//!
//! Parsing is a pure function ([`handle_request`]) so it can be fuzzed
//! ([`fuzz_request`]). Status choices where the spec leaves room:
//! - unknown request type → `S_UNSUPP` (the tail is at the end of the
//!   writable part, so it can always be written);
//! - readable part not exactly the request's size → `S_INVAL`;
//! - MAP/UNMAP without `MAP_UNMAP` negotiated → `S_UNSUPP`; PROBE without
//!   `PROBE` negotiated → buffer returned unwritten (used length 0), as the
//!   spec asks;
//! - head reserved bytes and DETACH/PROBE reserved fields are ignored
//!   (spec: MUST ignore); ATTACH reserved ≠ 0 → `S_INVAL` (MUST); UNMAP
//!   reserved ≠ 0 → `S_INVAL` without unmapping (MAY);
//! - a writable part shorter than the tail, longer than 64 KiB, or a chain
//!   with a readable descriptor after a writable one → returned unwritten.

use std::sync::Arc;

use std::os::fd::AsRawFd;
use virtio_queue::{DescriptorChain, Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use super::worker::{Wake, Worker, drain, event_loop};
use super::{ActivateError, VirtioDevice, VirtioInterrupt};
use crate::iommu::{
    Audit, AuditConfig, FaultEvent, IommuConfig, IommuError, IommuState, MAP_F_MMIO, MAP_F_READ,
    MAP_F_WRITE, ReservedKind, status,
};

/// Virtio device ID of the IOMMU.
pub const VIRTIO_ID_IOMMU: u32 = 23;

/// Feature bits (virtio 1.2 §5.13.3).
pub const VIRTIO_IOMMU_F_INPUT_RANGE: u32 = 0;
pub const VIRTIO_IOMMU_F_DOMAIN_RANGE: u32 = 1;
pub const VIRTIO_IOMMU_F_MAP_UNMAP: u32 = 2;
pub const VIRTIO_IOMMU_F_BYPASS: u32 = 3;
pub const VIRTIO_IOMMU_F_PROBE: u32 = 4;
pub const VIRTIO_IOMMU_F_MMIO: u32 = 5;
pub const VIRTIO_IOMMU_F_BYPASS_CONFIG: u32 = 6;

/// Features this device offers (the transport adds VERSION_1).
pub const OFFERED_FEATURES: u64 = (1 << VIRTIO_IOMMU_F_INPUT_RANGE)
    | (1 << VIRTIO_IOMMU_F_MAP_UNMAP)
    | (1 << VIRTIO_IOMMU_F_PROBE)
    | (1 << VIRTIO_IOMMU_F_BYPASS_CONFIG);

/// Request types.
pub const VIRTIO_IOMMU_T_ATTACH: u8 = 1;
pub const VIRTIO_IOMMU_T_DETACH: u8 = 2;
pub const VIRTIO_IOMMU_T_MAP: u8 = 3;
pub const VIRTIO_IOMMU_T_UNMAP: u8 = 4;
pub const VIRTIO_IOMMU_T_PROBE: u8 = 5;

/// ATTACH flag: the domain is a bypass domain.
pub const VIRTIO_IOMMU_ATTACH_F_BYPASS: u32 = 1;

/// PROBE property type RESV_MEM and its value length.
pub const VIRTIO_IOMMU_PROBE_T_RESV_MEM: u16 = 1;
const RESV_MEM_VALUE_LEN: u16 = 20;

/// Sizes of the device-readable part of each request (head included).
pub const ATTACH_LEN: usize = 20;
pub const DETACH_LEN: usize = 20;
pub const MAP_LEN: usize = 36;
pub const UNMAP_LEN: usize = 28;
pub const PROBE_LEN: usize = 72;
/// `struct virtio_iommu_req_tail`.
pub const TAIL_LEN: usize = 4;
/// `struct virtio_iommu_fault`.
pub const FAULT_LEN: usize = 24;
/// Largest device-readable part read from a request chain.
pub const MAX_READABLE: usize = 4096;
/// Largest device-writable part answered.
pub const MAX_WRITABLE: usize = 64 << 10;

/// Config space layout (`struct virtio_iommu_config`).
const CFG_PAGE_SIZE_MASK: usize = 0;
const CFG_INPUT_START: usize = 8;
const CFG_INPUT_END: usize = 16;
const CFG_DOMAIN_START: usize = 24;
const CFG_DOMAIN_END: usize = 28;
const CFG_PROBE_SIZE: usize = 32;
const CFG_BYPASS: usize = 36;
const CFG_LEN: usize = 40;

pub const REQUEST_QUEUE: u16 = 0;
pub const EVENT_QUEUE: u16 = 1;
const QUEUE_SIZES: [u16; 2] = [256, 64];

const TOKEN_REQ: u64 = 1;
const TOKEN_EVT: u64 = 2;
const TOKEN_FAULT: u64 = 3;

fn le32(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

fn le64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

fn has(features: u64, bit: u32) -> bool {
    features & (1 << bit) != 0
}

fn result_status(r: Result<(), IommuError>) -> u8 {
    r.map_or_else(IommuError::status, |()| status::OK)
}

/// Write the PROBE properties of any endpoint into `props` (already
/// zeroed): one RESV_MEM property per reserved region.
fn write_probe_properties(state: &IommuState, props: &mut [u8]) {
    let mut at = 0;
    for r in &state.config().reserved {
        let Some(p) = props.get_mut(at..at + 4 + usize::from(RESV_MEM_VALUE_LEN)) else {
            break;
        };
        p[0..2].copy_from_slice(&VIRTIO_IOMMU_PROBE_T_RESV_MEM.to_le_bytes());
        p[2..4].copy_from_slice(&RESV_MEM_VALUE_LEN.to_le_bytes());
        p[4] = match r.kind {
            ReservedKind::Reserved => 0,
            ReservedKind::Msi => 1,
        };
        p[8..16].copy_from_slice(&r.start.to_le_bytes());
        p[16..24].copy_from_slice(&r.end.to_le_bytes());
        at += p.len();
    }
}

/// The status of request `req` (its device-readable bytes); `props` is
/// the writable part before the tail (zeroed; PROBE writes into it).
/// `None`: return the buffer unwritten.
fn request_status(state: &IommuState, features: u64, req: &[u8], props: &mut [u8]) -> Option<u8> {
    let Some(&ty) = req.first() else {
        return Some(status::INVAL);
    };
    let exact = |n: usize| req.len() == n;
    let map_unmap = has(features, VIRTIO_IOMMU_F_MAP_UNMAP);
    let st = match ty {
        VIRTIO_IOMMU_T_ATTACH => {
            if !exact(ATTACH_LEN) {
                return Some(status::INVAL);
            }
            let (domain, endpoint, flags) = (le32(req, 4), le32(req, 8), le32(req, 12));
            let known = if has(features, VIRTIO_IOMMU_F_BYPASS_CONFIG) {
                VIRTIO_IOMMU_ATTACH_F_BYPASS
            } else {
                0
            };
            if req[16..20] != [0; 4] || flags & !known != 0 {
                status::INVAL
            } else {
                let bypass = flags & VIRTIO_IOMMU_ATTACH_F_BYPASS != 0;
                result_status(state.attach(domain, endpoint, bypass))
            }
        }
        VIRTIO_IOMMU_T_DETACH => {
            if !exact(DETACH_LEN) {
                return Some(status::INVAL);
            }
            result_status(state.detach(le32(req, 4), le32(req, 8)))
        }
        VIRTIO_IOMMU_T_MAP => {
            if !map_unmap {
                return Some(status::UNSUPP);
            }
            if !exact(MAP_LEN) {
                return Some(status::INVAL);
            }
            let flags = le32(req, 32);
            let mut known = MAP_F_READ | MAP_F_WRITE;
            if has(features, VIRTIO_IOMMU_F_MMIO) {
                known |= MAP_F_MMIO;
            }
            if flags & !known != 0 {
                status::INVAL
            } else {
                let (domain, start, end, phys) =
                    (le32(req, 4), le64(req, 8), le64(req, 16), le64(req, 24));
                result_status(state.map(domain, start, end, phys, flags))
            }
        }
        VIRTIO_IOMMU_T_UNMAP => {
            if !map_unmap {
                return Some(status::UNSUPP);
            }
            if !exact(UNMAP_LEN) {
                return Some(status::INVAL);
            }
            if req[24..28] != [0; 4] {
                status::INVAL
            } else {
                result_status(state.unmap(le32(req, 4), le64(req, 8), le64(req, 16)))
            }
        }
        VIRTIO_IOMMU_T_PROBE => {
            if !has(features, VIRTIO_IOMMU_F_PROBE) {
                return None;
            }
            if !exact(PROBE_LEN) || props.len() < state.config().probe_size as usize {
                status::INVAL
            } else if !state.has_endpoint(le32(req, 4)) {
                status::NOENT
            } else {
                write_probe_properties(state, props);
                status::OK
            }
        }
        _ => status::UNSUPP,
    };
    Some(st)
}

/// Handle one request: `req` is its device-readable part, `writable_len`
/// the size of its device-writable part. Returns the bytes to write at the
/// start of the writable part (always `writable_len` bytes, status in the
/// tail), or `None` to return the buffers unwritten (used length 0).
pub fn handle_request(
    state: &IommuState,
    features: u64,
    req: &[u8],
    writable_len: usize,
) -> Option<Vec<u8>> {
    if !(TAIL_LEN..=MAX_WRITABLE).contains(&writable_len) {
        return None;
    }
    let mut reply = vec![0u8; writable_len];
    let tail = writable_len - TAIL_LEN;
    let st = request_status(state, features, req, &mut reply[..tail])?;
    reply[tail] = st;
    Some(reply)
}

/// Fuzz entry point (the `fuzz/` target and a smoke test call it): a
/// sequence of requests, each `[features, writable_len, readable_len,
/// readable bytes…]`, against a small IOMMU with endpoints 0x08 and 0x10.
/// Panics only if an invariant breaks. Returns how many requests succeeded.
pub fn fuzz_request(data: &[u8]) -> usize {
    let audit = Arc::new(Audit::new(AuditConfig {
        capacity: 256,
        max_faults: 16,
        record: true,
    }));
    let config = IommuConfig {
        max_domains: 8,
        max_mappings: 64,
        ..IommuConfig::default()
    };
    let probe_size = config.probe_size as usize;
    let Ok(state) = IommuState::new(config, audit) else {
        return 0;
    };
    let mut ok = 0;
    state.register_endpoint(0x08);
    state.register_endpoint(0x10);
    let mut rest = data;
    while let [f, w, r, tail @ ..] = rest {
        // Bits 0..=6 select offered features (plus MMIO, never offered).
        let features = u64::from(*f & 0x7f) & (OFFERED_FEATURES | (1 << VIRTIO_IOMMU_F_MMIO));
        // Writable length: small values, or around the PROBE size.
        let wlen = if w & 0x80 != 0 {
            probe_size + TAIL_LEN + usize::from(w & 0x7f) - 0x40
        } else {
            usize::from(*w)
        };
        let rlen = usize::from(*r).min(tail.len());
        let (req, next) = tail.split_at(rlen);
        rest = next;
        let reply = handle_request(&state, features, req, wlen);
        let is_probe = req.first() == Some(&VIRTIO_IOMMU_T_PROBE);
        match reply {
            None => assert!(
                wlen < TAIL_LEN || (is_probe && !has(features, VIRTIO_IOMMU_F_PROBE)),
                "no reply to a request with a {wlen}-byte writable part"
            ),
            Some(b) => {
                assert_eq!(b.len(), wlen);
                assert!(b[wlen - TAIL_LEN] <= status::NOMEM);
                assert_eq!(b[wlen - 3..], [0, 0, 0]);
                ok += usize::from(b[wlen - TAIL_LEN] == status::OK);
                if b[wlen - TAIL_LEN] == status::OK && is_probe {
                    assert_eq!(&b[..4], &[1, 0, 20, 0]);
                }
            }
        }
        // Translations of either endpoint stay consistent.
        for ep in [0x08u16, 0x10] {
            let iova = u64::from(le32(&[*f, *w, *r, 0], 0)) << 12;
            for access in [crate::dma::Access::Read, crate::dma::Access::Write] {
                if let Ok(segs) = state.translate(ep, iova, 0x2000, access) {
                    assert_eq!(segs.iter().map(|s| s.1).sum::<u64>(), 0x2000);
                }
            }
            if let Some(d) = state.domain_of(ep) {
                let maps = state.mappings(d).expect("attached to a live domain");
                assert!(maps.windows(2).all(|w| w[0].last < w[1].iova));
            }
        }
    }
    state.reset();
    assert_eq!(state.domain_count(), 0);
    ok
}

/// The virtio-iommu device.
pub struct VirtioIommu {
    state: Arc<IommuState>,
    acked: u64,
    worker: Option<Worker>,
}

impl VirtioIommu {
    pub fn new(state: Arc<IommuState>) -> Self {
        VirtioIommu {
            state,
            acked: 0,
            worker: None,
        }
    }

    pub fn state(&self) -> &Arc<IommuState> {
        &self.state
    }

    fn config_bytes(&self) -> [u8; CFG_LEN] {
        let c = self.state.config();
        let mut b = [0u8; CFG_LEN];
        b[CFG_PAGE_SIZE_MASK..CFG_PAGE_SIZE_MASK + 8]
            .copy_from_slice(&c.page_size_mask.to_le_bytes());
        b[CFG_INPUT_START..CFG_INPUT_START + 8].copy_from_slice(&c.input_range.0.to_le_bytes());
        b[CFG_INPUT_END..CFG_INPUT_END + 8].copy_from_slice(&c.input_range.1.to_le_bytes());
        b[CFG_DOMAIN_START..CFG_DOMAIN_START + 4].copy_from_slice(&c.domain_range.0.to_le_bytes());
        b[CFG_DOMAIN_END..CFG_DOMAIN_END + 4].copy_from_slice(&c.domain_range.1.to_le_bytes());
        b[CFG_PROBE_SIZE..CFG_PROBE_SIZE + 4].copy_from_slice(&c.probe_size.to_le_bytes());
        b[CFG_BYPASS] = u8::from(self.state.bypass());
        b
    }
}

impl VirtioDevice for VirtioIommu {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_IOMMU
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn features(&self) -> u64 {
        OFFERED_FEATURES
    }

    fn ack_features(&mut self, features: u64) {
        self.acked = features;
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let cfg = self.config_bytes();
        for (i, d) in data.iter_mut().enumerate() {
            *d = offset
                .checked_add(i as u64)
                .and_then(|o| cfg.get(usize::try_from(o).ok()?))
                .copied()
                .unwrap_or(0);
        }
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        // Only `bypass` is writable, and only with BYPASS_CONFIG.
        if !has(self.acked, VIRTIO_IOMMU_F_BYPASS_CONFIG) {
            return;
        }
        let at = (CFG_BYPASS as u64).checked_sub(offset);
        if let Some(b) = at.and_then(|i| data.get(usize::try_from(i).ok()?)) {
            self.state.set_bypass(b & 1 != 0);
        }
    }

    fn activate(
        &mut self,
        mem: GuestMemoryMmap<()>,
        queues: Vec<(Queue, EventFd)>,
        interrupt: Arc<dyn VirtioInterrupt>,
    ) -> Result<(), ActivateError> {
        if self.worker.is_some() {
            return Err(ActivateError::AlreadyActive);
        }
        let got = queues.len();
        let mut it = queues.into_iter();
        let (Some((reqq, req_evt)), Some((evtq, evt_evt)), None) =
            (it.next(), it.next(), it.next())
        else {
            return Err(ActivateError::QueueCount { expected: 2, got });
        };
        drain(self.state.fault_eventfd());
        self.state.set_events_active(evtq.ready());
        let w = IommuWorker {
            mem,
            state: self.state.clone(),
            features: self.acked,
            reqq,
            req_evt,
            evtq,
            evt_evt,
            interrupt,
        };
        match Worker::spawn("virtio-iommu", move |kill| w.run(kill)) {
            Ok(worker) => {
                self.worker = Some(worker);
                Ok(())
            }
            Err(e) => {
                self.state.set_events_active(false);
                Err(e.into())
            }
        }
    }

    fn reset(&mut self) -> bool {
        if let Some(mut w) = self.worker.take() {
            w.stop();
        }
        self.state.set_events_active(false);
        // Reset: endpoints are not attached to any domain (virtio 1.2
        // §5.13.5); `bypass` keeps its value.
        self.state.reset();
        self.acked = 0;
        true
    }
}

struct IommuWorker {
    mem: GuestMemoryMmap<()>,
    state: Arc<IommuState>,
    features: u64,
    reqq: Queue,
    req_evt: EventFd,
    evtq: Queue,
    evt_evt: EventFd,
    interrupt: Arc<dyn VirtioInterrupt>,
}

impl IommuWorker {
    fn run(mut self, kill: EventFd) {
        let sources = [
            (self.req_evt.as_raw_fd(), TOKEN_REQ),
            (self.evt_evt.as_raw_fd(), TOKEN_EVT),
            (self.state.fault_eventfd().as_raw_fd(), TOKEN_FAULT),
        ];
        event_loop("virtio-iommu", &kill, &sources, |_, wake| match wake {
            Wake::Start => {
                self.process_requests();
                self.deliver_faults();
            }
            Wake::Ready(TOKEN_REQ) => {
                drain(&self.req_evt);
                self.process_requests();
            }
            Wake::Ready(TOKEN_EVT) => {
                drain(&self.evt_evt);
                self.deliver_faults();
            }
            Wake::Ready(TOKEN_FAULT) => {
                drain(self.state.fault_eventfd());
                self.deliver_faults();
            }
            Wake::Ready(_) | Wake::BatchDone => {}
        });
    }

    fn process_requests(&mut self) {
        if !self.reqq.ready() {
            return;
        }
        let mut used = false;
        while let Some(chain) = self.reqq.pop_descriptor_chain(&self.mem) {
            let head = chain.head_index();
            let len = self.handle_chain(chain);
            if let Err(e) = self.reqq.add_used(&self.mem, head, len) {
                tracing::debug!(head, "virtio-iommu: add_used failed: {e}");
            }
            used = true;
        }
        if used && self.reqq.needs_notification(&self.mem).unwrap_or(true) {
            self.interrupt.signal_used_queue(REQUEST_QUEUE);
        }
    }

    /// Run one request chain; returns the used length.
    fn handle_chain(&self, chain: DescriptorChain<&GuestMemoryMmap<()>>) -> u32 {
        let mut req = Vec::new();
        let mut too_long = false;
        let mut writable: Vec<(GuestAddress, usize)> = Vec::new();
        let mut wlen = 0usize;
        for d in chain {
            let len = d.len() as usize;
            if d.is_write_only() {
                writable.push((d.addr(), len));
                wlen = wlen.saturating_add(len);
                continue;
            }
            if !writable.is_empty() {
                tracing::debug!("virtio-iommu: readable descriptor after a writable one");
                return 0;
            }
            if too_long || req.len() + len > MAX_READABLE {
                too_long = true;
                continue;
            }
            let start = req.len();
            req.resize(start + len, 0);
            if self.mem.read_slice(&mut req[start..], d.addr()).is_err() {
                tracing::debug!("virtio-iommu: request outside guest memory");
                return 0;
            }
        }
        let reply = if too_long {
            // Longer than any request: invalid, whatever its type.
            handle_request(&self.state, self.features, &[0xff], wlen).map(|mut r| {
                r[wlen - TAIL_LEN] = status::INVAL;
                r
            })
        } else {
            handle_request(&self.state, self.features, &req, wlen)
        };
        let Some(reply) = reply else {
            return 0;
        };
        if write_chain(&self.mem, &writable, &reply) {
            reply.len() as u32
        } else {
            tracing::debug!("virtio-iommu: reply outside guest memory");
            0
        }
    }

    /// Put pending fault events into event buffers (or drop them).
    fn deliver_faults(&mut self) {
        let events = self.state.take_fault_events();
        if events.is_empty() {
            return;
        }
        let mut used = false;
        for ev in events {
            let chain = if self.evtq.ready() {
                self.evtq.pop_descriptor_chain(&self.mem)
            } else {
                None
            };
            let Some(chain) = chain else {
                self.state.note_event(false);
                continue;
            };
            let head = chain.head_index();
            let ok = write_event(&self.mem, chain, &ev);
            self.state.note_event(ok);
            let len = if ok { FAULT_LEN as u32 } else { 0 };
            if let Err(e) = self.evtq.add_used(&self.mem, head, len) {
                tracing::debug!(head, "virtio-iommu: event add_used failed: {e}");
            }
            used = true;
        }
        if used && self.evtq.needs_notification(&self.mem).unwrap_or(true) {
            self.interrupt.signal_used_queue(EVENT_QUEUE);
        }
    }
}

/// Write `data` across the writable descriptors, in order.
fn write_chain(mem: &GuestMemoryMmap<()>, writable: &[(GuestAddress, usize)], data: &[u8]) -> bool {
    let mut off = 0;
    for &(addr, len) in writable {
        if off == data.len() {
            break;
        }
        let n = len.min(data.len() - off);
        if mem.write_slice(&data[off..off + n], addr).is_err() {
            return false;
        }
        off += n;
    }
    off == data.len()
}

/// Write a fault report into an event buffer; false if the buffer is not
/// all device-writable or too small for it.
fn write_event(
    mem: &GuestMemoryMmap<()>,
    chain: DescriptorChain<&GuestMemoryMmap<()>>,
    ev: &FaultEvent,
) -> bool {
    let mut writable = Vec::new();
    let mut total = 0usize;
    for d in chain {
        if !d.is_write_only() {
            return false;
        }
        writable.push((d.addr(), d.len() as usize));
        total = total.saturating_add(d.len() as usize);
    }
    total >= FAULT_LEN && write_chain(mem, &writable, &ev.to_bytes())
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use proptest::prelude::*;
    use vm_memory::{Bytes, GuestAddress};

    use super::*;
    use crate::dma::{Access, FaultReason};
    use crate::iommu::{AuditEvent, IommuDma, fault};
    use crate::pci::msix::tests::FakeSink;
    use crate::virtio::pci::tests::{Driver, memory};
    use crate::virtio::pci::{DEVICE_CFG_OFFSET, VirtioPciDevice};
    use crate::virtio::rng::Rng;
    use crate::virtio::test_utils::{F_WRITE as W, TestQueue};
    use crate::virtio::{
        STATUS_ACKNOWLEDGE, STATUS_DEVICE_NEEDS_RESET, STATUS_DRIVER, STATUS_DRIVER_OK,
        STATUS_FEATURES_OK, VIRTIO_F_ACCESS_PLATFORM, VIRTIO_F_VERSION_1,
    };

    const EP_RNG: u16 = 0x10;
    const ALL: u64 = OFFERED_FEATURES | (1 << VIRTIO_F_VERSION_1);
    const RUNNING: u8 = STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK;

    fn wait_for(mut f: impl FnMut() -> bool) -> bool {
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if f() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        f()
    }

    fn new_state() -> Arc<IommuState> {
        IommuState::new(IommuConfig::default(), Arc::new(Audit::default())).unwrap()
    }

    fn attach(domain: u32, ep: u32, flags: u32) -> Vec<u8> {
        let mut r = vec![VIRTIO_IOMMU_T_ATTACH, 0, 0, 0];
        r.extend(domain.to_le_bytes());
        r.extend(ep.to_le_bytes());
        r.extend(flags.to_le_bytes());
        r.extend([0u8; 4]);
        r
    }

    fn detach(domain: u32, ep: u32) -> Vec<u8> {
        let mut r = attach(domain, ep, 0);
        r[0] = VIRTIO_IOMMU_T_DETACH;
        r[12..].fill(0xee); // reserved: ignored
        r
    }

    fn map(domain: u32, start: u64, end: u64, phys: u64, flags: u32) -> Vec<u8> {
        let mut r = vec![VIRTIO_IOMMU_T_MAP, 0xaa, 0, 0]; // head reserved: ignored
        r.extend(domain.to_le_bytes());
        r.extend(start.to_le_bytes());
        r.extend(end.to_le_bytes());
        r.extend(phys.to_le_bytes());
        r.extend(flags.to_le_bytes());
        r
    }

    fn unmap(domain: u32, start: u64, end: u64) -> Vec<u8> {
        let mut r = vec![VIRTIO_IOMMU_T_UNMAP, 0, 0, 0];
        r.extend(domain.to_le_bytes());
        r.extend(start.to_le_bytes());
        r.extend(end.to_le_bytes());
        r.extend([0u8; 4]);
        r
    }

    fn probe(ep: u32) -> Vec<u8> {
        let mut r = vec![VIRTIO_IOMMU_T_PROBE, 0, 0, 0];
        r.extend(ep.to_le_bytes());
        r.extend([0x5au8; 64]); // reserved: ignored
        r
    }

    const RW: u32 = MAP_F_READ | MAP_F_WRITE;

    #[test]
    fn request_rules() {
        let s = new_state();
        s.register_endpoint(EP_RNG);
        let st = |req: &[u8]| handle_request(&s, ALL, req, TAIL_LEN).unwrap()[0];
        assert_eq!(st(&attach(1, 0x99, 0)), status::NOENT);
        assert_eq!(st(&attach(1, 0x1_0010, 0)), status::NOENT);
        let mut a = attach(1, EP_RNG.into(), 0);
        a[19] = 1;
        assert_eq!(st(&a), status::INVAL, "ATTACH reserved must be zero");
        assert_eq!(
            st(&attach(1, EP_RNG.into(), 2)),
            status::INVAL,
            "unknown flag"
        );
        assert_eq!(
            st(&attach(1, EP_RNG.into(), 0)[..19]),
            status::INVAL,
            "short"
        );
        assert_eq!(st(&attach(1, EP_RNG.into(), 0)), status::OK);
        assert_eq!(
            st(&attach(1, EP_RNG.into(), 1)),
            status::INVAL,
            "bypass mismatch"
        );
        assert_eq!(st(&map(1, 0x1000, 0x1fff, 0x8000, RW)), status::OK);
        assert_eq!(
            st(&map(1, 0x1000, 0x1fff, 0x8000, RW)),
            status::INVAL,
            "overlap"
        );
        assert_eq!(st(&map(1, 0x2800, 0x2fff, 0x8000, RW)), status::RANGE);
        assert_eq!(
            st(&map(1, 0x2000, 0x2fff, 0x8000, MAP_F_MMIO)),
            status::INVAL
        );
        assert_eq!(st(&map(7, 0x2000, 0x2fff, 0x8000, RW)), status::NOENT);
        assert_eq!(
            st(&map(1, 0xfee0_0000, 0xfee0_0fff, 0, RW)),
            status::INVAL,
            "MSI"
        );
        assert_eq!(st(&map(1, 0x2000, 0x3fff, 0x9000, RW)), status::OK);
        assert_eq!(st(&unmap(1, 0x2000, 0x2fff)), status::RANGE, "split");
        let mut u = unmap(1, 0x0, 0x10_0000);
        u[27] = 1;
        assert_eq!(st(&u), status::INVAL);
        assert_eq!(
            s.mappings(1).unwrap().len(),
            2,
            "a refused UNMAP unmaps nothing"
        );
        assert_eq!(st(&unmap(1, 0x0, 0x10_0000)), status::OK);
        assert_eq!(
            st(&unmap(1, 0x0, 0x10_0000)),
            status::OK,
            "nothing left: still OK"
        );
        assert_eq!(st(&unmap(1, 0x10, 0x0)), status::INVAL);
        assert_eq!(st(&detach(2, EP_RNG.into())), status::INVAL);
        assert_eq!(st(&detach(1, 0x42)), status::NOENT);
        assert_eq!(st(&detach(1, EP_RNG.into())), status::OK);
        assert_eq!(st(&[0x42, 0, 0, 0]), status::UNSUPP);
        assert_eq!(st(&[]), status::INVAL);
        // Without MAP_UNMAP / BYPASS_CONFIG / PROBE negotiated.
        let bare = 1 << VIRTIO_F_VERSION_1;
        let st2 = |req: &[u8], w| handle_request(&s, bare, req, w);
        assert_eq!(st2(&map(1, 0, 0xfff, 0, RW), 4).unwrap()[0], status::UNSUPP);
        assert_eq!(st2(&unmap(1, 0, 0xfff), 4).unwrap()[0], status::UNSUPP);
        assert_eq!(
            st2(&attach(3, EP_RNG.into(), 1), 4).unwrap()[0],
            status::INVAL
        );
        assert_eq!(st2(&probe(EP_RNG.into()), 516), None);
        // Writable part too small / too large: buffers returned unwritten.
        assert_eq!(handle_request(&s, ALL, &attach(1, 0x10, 0), 3), None);
        assert_eq!(
            handle_request(&s, ALL, &attach(1, 0x10, 0), MAX_WRITABLE + 1),
            None
        );
        // Larger writable part: tail at its end, the rest zeroed.
        let r = handle_request(&s, ALL, &attach(4, EP_RNG.into(), 0), 12).unwrap();
        assert_eq!(r, [0u8; 12]);
    }

    #[test]
    fn probe_reports_the_msi_window() {
        let s = new_state();
        s.register_endpoint(EP_RNG);
        let r = handle_request(&s, ALL, &probe(EP_RNG.into()), 512 + 4).unwrap();
        assert_eq!(r[512], status::OK);
        assert_eq!(&r[0..4], &[1, 0, 20, 0]);
        assert_eq!(r[4], 1, "subtype MSI");
        assert_eq!(le64(&r, 8), 0xfee0_0000);
        assert_eq!(le64(&r, 16), 0xfeef_ffff);
        assert!(r[24..512].iter().all(|&b| b == 0));
        let r = handle_request(&s, ALL, &probe(EP_RNG.into()), 511 + 4).unwrap();
        assert_eq!(r[511], status::INVAL);
        assert!(
            r[..511].iter().all(|&b| b == 0),
            "no property when too small"
        );
        let r = handle_request(&s, ALL, &probe(0x11), 516).unwrap();
        assert_eq!(r[512], status::NOENT);
        let r = handle_request(&s, ALL, &probe(EP_RNG.into())[..71], 516).unwrap();
        assert_eq!(r[512], status::INVAL);
    }

    proptest! {
        #[test]
        fn parser_answers_any_bytes(
            ty in 0u8..8,
            exact in any::<bool>(),
            body in prop::collection::vec(any::<u8>(), 0..120),
            wlen in prop_oneof![0usize..16, 500usize..530],
            features in any::<u8>(),
        ) {
            let s = new_state();
            s.register_endpoint(EP_RNG);
            let mut req = body;
            if exact {
                let n = match ty {
                    1 | 2 => ATTACH_LEN,
                    3 => MAP_LEN,
                    4 => UNMAP_LEN,
                    5 => PROBE_LEN,
                    _ => req.len(),
                };
                req.resize(n, 0);
            }
            if let Some(t) = req.first_mut() {
                *t = ty;
            }
            let f = u64::from(features);
            let reply = handle_request(&s, f, &req, wlen);
            let no_probe = ty == VIRTIO_IOMMU_T_PROBE && !req.is_empty() && !has(f, VIRTIO_IOMMU_F_PROBE);
            if wlen < TAIL_LEN || no_probe {
                prop_assert!(reply.is_none());
            } else {
                let r = reply.unwrap();
                prop_assert_eq!(r.len(), wlen);
                prop_assert!(r[wlen - 4] <= status::NOMEM);
                prop_assert_eq!(&r[wlen - 3..], &[0u8, 0, 0][..]);
            }
        }
    }

    /// xorshift64*: deterministic pseudo-random bytes.
    struct Rand(u64);
    impl Rand {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n.max(1)
        }
    }

    /// A well-formed fuzz input: a session of valid requests.
    fn seed_session() -> Vec<u8> {
        let mut v = Vec::new();
        let mut push = |w: u8, req: Vec<u8>| {
            v.extend([0x75, w, req.len() as u8]);
            v.extend(req);
        };
        push(0xc0, probe(0x08));
        push(4, attach(1, 0x08, 0));
        push(4, map(1, 0x1000, 0x1fff, 0x8000, RW));
        push(4, map(1, 0x2000, 0x3fff, 0x20_0000, MAP_F_READ));
        push(4, attach(1, 0x10, 0));
        push(4, unmap(1, 0x1000, 0x2fff));
        push(4, attach(2, 0x10, 1));
        push(4, detach(1, 0x08));
        push(4, unmap(1, 0, u64::MAX));
        v
    }

    #[test]
    fn fuzz_smoke() {
        let mut rng = Rand(0x9e37_79b9_7f4a_7c15);
        let seed = seed_session();
        assert_eq!(fuzz_request(&seed), 7, "the seed session is mostly valid");
        assert_eq!(fuzz_request(&[]), 0);
        let mut answered = 0;
        for i in 0..4000 {
            let input: Vec<u8> = if i % 2 == 0 {
                (0..rng.below(400)).map(|_| rng.next() as u8).collect()
            } else {
                let mut m = seed.clone();
                for _ in 0..=rng.below(6) {
                    if m.is_empty() {
                        m.push(rng.next() as u8);
                    }
                    let at = rng.below(m.len() as u64) as usize;
                    match rng.below(4) {
                        0 => m[at] = rng.next() as u8,
                        1 => m[at] ^= 1 << rng.below(8),
                        2 => m.truncate(at),
                        _ => m.insert(at, rng.next() as u8),
                    }
                }
                m
            };
            answered += fuzz_request(&input);
        }
        assert!(answered > 2000, "mutations keep valid requests: {answered}");
    }

    /// Guest side of a virtio-iommu: request queue at 0x1000, event queue
    /// at 0x4000, request buffers at 0x20000, event buffers at 0x30000.
    struct Guest<'a> {
        mem: &'a GuestMemoryMmap<()>,
        reqq: TestQueue<'a>,
        evtq: TestQueue<'a>,
        sent: u16,
    }

    impl Guest<'_> {
        fn request(&mut self, dev: &mut VirtioPciDevice, req: &[u8], wlen: u32) -> (u32, Vec<u8>) {
            let (r, w) = (0x20000u64, 0x21000u64);
            self.mem.write_slice(req, GuestAddress(r)).unwrap();
            self.mem
                .write_slice(&vec![0xffu8; wlen as usize], GuestAddress(w))
                .unwrap();
            let head = (self.sent % 8) * 2;
            self.reqq
                .add_chain(head, &[(r, req.len() as u32, 0), (w, wlen, W)]);
            Driver { dev }.notify(0);
            let want = self.sent.wrapping_add(1);
            assert!(wait_for(|| self.reqq.used_idx() == want));
            let (id, len) = self.reqq.used_elem(self.sent);
            assert_eq!(id, u32::from(head));
            self.sent = want;
            let mut out = vec![0u8; wlen as usize];
            self.mem.read_slice(&mut out, GuestAddress(w)).unwrap();
            (len, out)
        }

        fn ok(&mut self, dev: &mut VirtioPciDevice, req: &[u8]) {
            let (len, out) = self.request(dev, req, 4);
            assert_eq!((len, out[0]), (4, status::OK), "{req:02x?}");
        }
    }

    fn start_iommu<'a>(
        mem: &'a GuestMemoryMmap<()>,
        state: &Arc<IommuState>,
        sink: &Arc<FakeSink>,
    ) -> (VirtioPciDevice, Guest<'a>) {
        let mut dev = VirtioPciDevice::new(
            Box::new(VirtioIommu::new(state.clone())),
            mem.clone(),
            sink.clone(),
        )
        .unwrap();
        let reqq = TestQueue::new(mem, 0x1000, 16);
        let evtq = TestQueue::new(mem, 0x4000, 8);
        let mut d = Driver { dev: &mut dev };
        let f = d.device_features();
        assert_eq!(f, ALL);
        assert_eq!(
            f & (1 << VIRTIO_F_ACCESS_PLATFORM),
            0,
            "never behind itself"
        );
        assert!(d.negotiate(f));
        d.enable_msix(3);
        d.setup_queue(0, 16, reqq.desc, reqq.avail, reqq.used, 1);
        d.setup_queue(1, 8, evtq.desc, evtq.avail, evtq.used, 2);
        d.set_status(RUNNING);
        assert_eq!(d.status() & STATUS_DEVICE_NEEDS_RESET, 0);
        (
            dev,
            Guest {
                mem,
                reqq,
                evtq,
                sent: 0,
            },
        )
    }

    #[test]
    fn requests_over_split_rings_and_config() {
        let mem = memory();
        let state = new_state();
        state.register_endpoint(EP_RNG);
        let sink = Arc::new(FakeSink::default());
        let (mut dev, mut g) = start_iommu(&mem, &state, &sink);
        // Config space.
        let mut d = Driver { dev: &mut dev };
        assert_eq!(d.r(DEVICE_CFG_OFFSET, 8), 0x20_1000);
        assert_eq!(d.r(DEVICE_CFG_OFFSET + 8, 8), 0);
        assert_eq!(d.r(DEVICE_CFG_OFFSET + 16, 8), (1 << 48) - 1);
        assert_eq!(d.r(DEVICE_CFG_OFFSET + 24, 4), 0);
        assert_eq!(d.r(DEVICE_CFG_OFFSET + 28, 4), u64::from(u32::MAX));
        assert_eq!(d.r(DEVICE_CFG_OFFSET + 32, 4), 512);
        assert_eq!(d.r(DEVICE_CFG_OFFSET + 36, 1), 1);
        d.w(DEVICE_CFG_OFFSET + 36, 1, 0);
        assert_eq!(d.r(DEVICE_CFG_OFFSET + 36, 1), 0);
        assert!(!state.bypass());
        d.w(DEVICE_CFG_OFFSET + 32, 4, 0x1000); // read-only
        assert_eq!(d.r(DEVICE_CFG_OFFSET + 32, 4), 512);

        g.ok(&mut dev, &attach(3, EP_RNG.into(), 0));
        g.ok(&mut dev, &map(3, 0x10_0000, 0x2f_ffff, 0x20_0000, RW));
        assert_eq!(
            state.translate(EP_RNG, 0x10_0ff0, 0x20, Access::Write),
            Ok(vec![(0x20_0ff0, 0x20)])
        );
        let (len, out) = g.request(&mut dev, &probe(EP_RNG.into()), 516);
        assert_eq!((len, out[512]), (516, status::OK));
        assert_eq!(&out[..4], &[1, 0, 20, 0]);
        let (len, out) = g.request(&mut dev, &[9, 0, 0, 0], 4);
        assert_eq!((len, out[0]), (4, status::UNSUPP));
        let (len, out) = g.request(&mut dev, &unmap(3, 0x10_0000, 0x1f_ffff), 4);
        assert_eq!((len, out[0]), (4, status::RANGE));
        // Tail does not fit: buffer returned unwritten.
        let (len, out) = g.request(&mut dev, &unmap(3, 0x10_0000, 0x2f_ffff), 2);
        assert_eq!((len, out), (0, vec![0xff, 0xff]));
        g.ok(&mut dev, &unmap(3, 0x10_0000, 0x2f_ffff));
        assert!(sink.triggers(1) >= 1);
        // Device reset detaches everything; bypass survives.
        Driver { dev: &mut dev }.set_status(0);
        assert_eq!(state.domain_of(EP_RNG), None);
        assert!(!state.bypass());
    }

    #[test]
    fn rng_behind_the_iommu_is_translated_on_every_access() {
        let mem = memory();
        let state = new_state();
        let sink = Arc::new(FakeSink::default());
        // The rng (endpoint 00:02.0) DMAs through its IOMMU endpoint.
        let rng_dma = Arc::new(IommuDma::new(mem.clone(), &state, EP_RNG));
        let mut rng =
            VirtioPciDevice::new(Box::new(Rng::new(true)), mem.clone(), sink.clone()).unwrap();
        rng.set_iommu(rng_dma);
        let (mut iommu, mut g) = start_iommu(&mem, &state, &sink);
        // Event buffers for fault reports.
        for i in 0..4u16 {
            g.evtq
                .add_chain(i, &[(0x30000 + 0x40 * u64::from(i), FAULT_LEN as u32, W)]);
        }
        Driver { dev: &mut iommu }.notify(1);

        // Rings at GPA 0x8000 appear at IOVA 0x100_8000; buffers at GPA
        // 0x40000 at IOVA 0x104_0000, device-writable only.
        const OFF: u64 = 0x100_0000;
        g.ok(&mut iommu, &attach(1, EP_RNG.into(), 0));
        g.ok(&mut iommu, &map(1, OFF + 0x8000, OFF + 0xafff, 0x8000, RW));
        g.ok(
            &mut iommu,
            &map(1, OFF + 0x40000, OFF + 0x40fff, 0x40000, MAP_F_WRITE),
        );

        let q = TestQueue::new(&mem, 0x8000, 8);
        let mut d = Driver { dev: &mut rng };
        let f = d.device_features();
        assert_ne!(f & (1 << VIRTIO_F_ACCESS_PLATFORM), 0);
        assert!(
            !d.negotiate(f & !(1 << VIRTIO_F_ACCESS_PLATFORM)),
            "must use the IOMMU"
        );
        d.set_status(0);
        assert!(d.negotiate(f));
        d.enable_msix(2);
        d.setup_queue(0, 8, OFF + q.desc, OFF + q.avail, OFF + q.used, 1);
        d.set_status(RUNNING);
        assert_eq!(d.status() & STATUS_DEVICE_NEEDS_RESET, 0);

        q.add_chain(0, &[(OFF + 0x40000, 64, W)]);
        d.notify(0);
        assert!(wait_for(|| q.used_idx() == 1));
        assert_eq!(q.used_elem(0), (0, 64));
        let mut b = [0u8; 64];
        mem.read_slice(&mut b, GuestAddress(0x40000)).unwrap();
        assert_ne!(b, [0u8; 64]);
        // A buffer the device may not write (no mapping): refused.
        q.add_chain(1, &[(OFF + 0x41000, 64, W)]);
        d.notify(0);
        assert!(wait_for(|| q.used_idx() == 2));
        assert_eq!(q.used_elem(1), (1, 0));

        let recs = state.audit().drain_since(0).records;
        let dmas: Vec<_> = recs
            .iter()
            .filter_map(|r| match &r.event {
                AuditEvent::Dma(a) => Some(a),
                _ => None,
            })
            .collect();
        assert!(dmas.iter().all(|a| a.device == EP_RNG));
        assert!(
            dmas.iter()
                .any(|a| a.tag == "vring" && a.access == Access::Read && a.ok())
        );
        assert!(
            dmas.iter()
                .any(|a| a.tag == "vring" && a.access == Access::Write && a.ok())
        );
        let buf: Vec<_> = dmas.iter().filter(|a| a.tag == "rng-buf").collect();
        assert_eq!(buf.len(), 2);
        assert_eq!(buf[0].gpa.as_slice(), &[(0x40000, 64)]);
        assert_eq!((buf[0].access, buf[0].ok()), (Access::Write, true));
        assert_eq!(buf[1].fault, Some(FaultReason::Unmapped));
        assert!(wait_for(|| g.evtq.used_idx() == 1));

        // The guest unmaps the rings: the next access faults (no
        // translate-once), is recorded and lands in the event queue.
        g.ok(&mut iommu, &unmap(1, OFF + 0x8000, OFF + 0xafff));
        q.add_chain(2, &[(OFF + 0x40000, 16, W)]);
        d.notify(0);
        assert!(wait_for(|| g.evtq.used_idx() >= 2));
        assert_eq!(q.used_idx(), 2, "nothing completed without rings");
        assert_eq!(g.evtq.used_elem(1).1, FAULT_LEN as u32);
        let mut ev = [0u8; FAULT_LEN];
        let (id, _) = g.evtq.used_elem(1);
        mem.read_slice(&mut ev, GuestAddress(0x30000 + 0x40 * u64::from(id)))
            .unwrap();
        assert_eq!(ev[0], fault::R_MAPPING);
        assert_eq!(&ev[1..4], &[0, 0, 0]);
        assert_eq!(le32(&ev, 4), fault::F_READ | fault::F_ADDRESS);
        assert_eq!(le32(&ev, 8), u32::from(EP_RNG));
        let addr = le64(&ev, 16);
        assert!((OFF + 0x8000..OFF + 0xb000).contains(&addr), "{addr:#x}");
        let report = state.report();
        assert!(report.fault_events_sent >= 2);
        let f = report
            .iommu_faults
            .iter()
            .find(|f| f.tag == "vring")
            .expect("ring fault recorded");
        assert_eq!(
            (f.endpoint, f.reason.clone()),
            (EP_RNG, FaultReason::Unmapped)
        );
        assert!(report.by_device["0000:00:02.0"].faults >= 2);
        assert!(sink.triggers(2) >= 1, "event queue interrupt");

        // Remap: the device works again with the same ring addresses.
        g.ok(&mut iommu, &map(1, OFF + 0x8000, OFF + 0xafff, 0x8000, RW));
        d.notify(0);
        assert!(wait_for(|| q.used_idx() == 3));
        Driver { dev: &mut rng }.set_status(0);
        Driver { dev: &mut iommu }.set_status(0);
    }
}
