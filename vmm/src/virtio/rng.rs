//! virtio-rng (virtio 1.2 §5.4): one request queue whose device-writable
//! buffers are filled from the host's `getrandom(2)`.
//!
//! Behind the virtio-iommu (`Rng::new(true)` on a transport with an IOMMU
//! endpoint), every ring and buffer access goes through the endpoint's
//! translation and is audited: ring accesses as `vring`, the random bytes
//! as `rng-buf`.

use std::io;
use std::sync::Arc;

use std::os::fd::AsRawFd;
use virtio_queue::{DescriptorChain, Queue, QueueT};
use vm_memory::{Bytes, GuestMemory, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use super::worker::{Wake, Worker, drain, event_loop};
use super::{ActivateError, EndpointMemory, VirtioDevice, VirtioInterrupt};

/// Virtio device ID of the entropy device.
pub const VIRTIO_ID_RNG: u32 = 4;
pub const RNG_QUEUE_SIZE: u16 = 256;
const QUEUE_SIZES: [u16; 1] = [RNG_QUEUE_SIZE];
/// Bytes supplied per request at most (Linux asks for far less).
const MAX_REQUEST: usize = 64 << 10;

/// Audit tag of the random bytes written to the guest.
pub const TAG_RNG_BUF: &str = "rng-buf";

const TOKEN_QUEUE: u64 = 1;

/// The virtio-rng device.
pub struct Rng {
    access_platform: bool,
    worker: Option<Worker>,
}

impl Rng {
    /// `access_platform`: offer VIRTIO_F_ACCESS_PLATFORM, i.e. the device
    /// sits behind the (virtio-)IOMMU and the driver must use the DMA API.
    pub fn new(access_platform: bool) -> Self {
        Rng {
            access_platform,
            worker: None,
        }
    }

    fn start<M: GuestMemory + Send + 'static>(
        &mut self,
        mem: M,
        queues: Vec<(Queue, EventFd)>,
        interrupt: Arc<dyn VirtioInterrupt>,
    ) -> Result<(), ActivateError> {
        if self.worker.is_some() {
            return Err(ActivateError::AlreadyActive);
        }
        let got = queues.len();
        let mut it = queues.into_iter();
        let (Some((queue, evt)), None) = (it.next(), it.next()) else {
            return Err(ActivateError::QueueCount { expected: 1, got });
        };
        let mut w = RngWorker {
            mem,
            queue,
            evt,
            interrupt,
        };
        self.worker = Some(Worker::spawn("virtio-rng", move |kill| w.run(kill))?);
        Ok(())
    }
}

impl VirtioDevice for Rng {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_RNG
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn features(&self) -> u64 {
        0
    }

    fn access_platform(&self) -> bool {
        self.access_platform
    }

    fn read_config(&self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}

    fn activate(
        &mut self,
        mem: GuestMemoryMmap<()>,
        queues: Vec<(Queue, EventFd)>,
        interrupt: Arc<dyn VirtioInterrupt>,
    ) -> Result<(), ActivateError> {
        self.start(mem, queues, interrupt)
    }

    fn activate_platform(
        &mut self,
        mem: EndpointMemory,
        queues: Vec<(Queue, EventFd)>,
        interrupt: Arc<dyn VirtioInterrupt>,
    ) -> Result<(), ActivateError> {
        self.start(mem.with_buf_tag(TAG_RNG_BUF), queues, interrupt)
    }

    fn reset(&mut self) -> bool {
        if let Some(mut w) = self.worker.take() {
            w.stop();
        }
        true
    }
}

struct RngWorker<M> {
    mem: M,
    queue: Queue,
    evt: EventFd,
    interrupt: Arc<dyn VirtioInterrupt>,
}

impl<M: GuestMemory> RngWorker<M> {
    fn run(&mut self, kill: EventFd) {
        let sources = [(self.evt.as_raw_fd(), TOKEN_QUEUE)];
        event_loop("virtio-rng", &kill, &sources, |_, wake| match wake {
            Wake::Start => self.process(),
            Wake::Ready(TOKEN_QUEUE) => {
                drain(&self.evt);
                self.process();
            }
            Wake::Ready(_) | Wake::BatchDone => {}
        });
    }

    fn process(&mut self) {
        if !self.queue.ready() {
            return;
        }
        let mut used = false;
        while let Some(chain) = self.queue.pop_descriptor_chain(&self.mem) {
            let head = chain.head_index();
            let n = fill_chain(&self.mem, chain).unwrap_or_else(|| {
                tracing::debug!(head, "virtio-rng: skipping malformed chain");
                0
            });
            if let Err(e) = self.queue.add_used(&self.mem, head, n as u32) {
                tracing::debug!(head, "virtio-rng: add_used failed: {e}");
            }
            used = true;
        }
        if used && self.queue.needs_notification(&self.mem).unwrap_or(true) {
            self.interrupt.signal_used_queue(0);
        }
    }
}

/// Fill a device-writable chain with random bytes, one write per
/// descriptor; None if the chain has a device-readable descriptor or a
/// write fails (outside guest memory, or refused by the IOMMU).
fn fill_chain<M: GuestMemory>(mem: &M, chain: DescriptorChain<&M>) -> Option<usize> {
    let mut descs = Vec::new();
    let mut total = 0usize;
    for d in chain {
        if !d.is_write_only() {
            return None;
        }
        total = total.saturating_add(d.len() as usize);
        descs.push(d);
    }
    let n = total.min(MAX_REQUEST);
    let mut buf = vec![0u8; n];
    getrandom(&mut buf).ok()?;
    let mut off = 0;
    for d in descs {
        if off == n {
            break;
        }
        let len = (d.len() as usize).min(n - off);
        mem.write_slice(&buf[off..off + len], d.addr()).ok()?;
        off += len;
    }
    Some(off)
}

/// Fill `buf` from the kernel CSPRNG.
fn getrandom(buf: &mut [u8]) -> io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        let rest = &mut buf[done..];
        // SAFETY: `rest` is a live, exclusively borrowed slice valid for
        // writes of `rest.len()` bytes; getrandom writes at most that many
        // and does not retain the pointer.
        let r = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        done += r as usize;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pci::msix::tests::FakeSink;
    use crate::virtio::pci::VirtioPciDevice;
    use crate::virtio::pci::tests::{Driver, memory};
    use crate::virtio::test_utils::{F_WRITE as W, TestQueue};
    use crate::virtio::{
        STATUS_ACKNOWLEDGE, STATUS_DRIVER, STATUS_DRIVER_OK, STATUS_FEATURES_OK,
        VIRTIO_F_ACCESS_PLATFORM, VIRTIO_F_VERSION_1,
    };
    use std::time::{Duration, Instant};
    use vm_memory::{Bytes, GuestAddress};

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

    #[test]
    fn fills_writable_buffers() {
        let mem = memory();
        let sink = Arc::new(FakeSink::default());
        let mut dev =
            VirtioPciDevice::new(Box::new(Rng::new(true)), mem.clone(), sink.clone()).unwrap();
        let q = TestQueue::new(&mem, 0x1000, 8);
        let mut d = Driver { dev: &mut dev };
        let f = d.device_features();
        assert_ne!(f & (1 << VIRTIO_F_ACCESS_PLATFORM), 0);
        assert!(d.negotiate(f));
        d.enable_msix(2);
        d.setup_queue(0, 8, q.desc, q.avail, q.used, 1);
        d.set_status(STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK);
        assert_eq!(d.status() & 0x40, 0);

        q.add_chain(0, &[(0x10000, 64, W), (0x10100, 32, W)]);
        q.add_chain(2, &[(0x11000, 16, 0)]);
        q.add_chain(3, &[(0xfff_fff0, 64, W)]);
        d.notify(0);
        assert!(wait_for(|| q.used_idx() == 3));
        assert_eq!(q.used_elem(0), (0, 96));
        assert_eq!(q.used_elem(1), (2, 0));
        assert_eq!(q.used_elem(2), (3, 0));
        let mut b = [0u8; 64];
        mem.read_slice(&mut b, GuestAddress(0x10000)).unwrap();
        assert_ne!(b, [0u8; 64]);
        let mut b = [0u8; 16];
        mem.read_slice(&mut b, GuestAddress(0x11000)).unwrap();
        assert_eq!(b, [0u8; 16]);
        assert!(wait_for(|| sink.triggers(1) >= 1));
        d.set_status(0);
        drop(dev);

        assert_eq!(VirtioPciDevice::msix_vectors(&Rng::new(false)), 2);
        // Without the flag, ACCESS_PLATFORM is not offered.
        let mut dev = VirtioPciDevice::new(Box::new(Rng::new(false)), mem, sink).unwrap();
        let f = Driver { dev: &mut dev }.device_features();
        assert_eq!(f, 1 << VIRTIO_F_VERSION_1);
    }
}
