//! virtio-console (virtio 1.2 §5.3), single port, no MULTIPORT.
//!
//! Queue 0 (receiveq) carries host→guest bytes, queue 1 (transmitq)
//! guest→host bytes. The backend is one end of a Unix stream socket pair;
//! the host side gets the other end from [`Console::new`]. The worker thread
//! copies bytes between the queues and the socket without ever blocking:
//! if the host does not read, up to 1 MiB of guest output is buffered and
//! then guest TX stalls (backpressure); if the guest
//! has no RX buffers, the worker stops reading the socket until the guest
//! posts some. If the host end is closed, guest output is dropped.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::Arc;

use virtio_queue::{DescriptorChain, Queue, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use super::worker::{Wake, Worker, drain, event_loop};
use super::{ActivateError, VirtioDevice, VirtioInterrupt};

/// Virtio device ID of the console.
pub const VIRTIO_ID_CONSOLE: u32 = 3;
/// Queue size offered for both queues.
pub const CONSOLE_QUEUE_SIZE: u16 = 256;
const QUEUE_SIZES: [u16; 2] = [CONSOLE_QUEUE_SIZE; 2];
pub const RX_QUEUE: u16 = 0;
pub const TX_QUEUE: u16 = 1;
/// Bytes taken from one TX chain; the rest of a larger chain is dropped.
const MAX_TX_CHAIN: usize = 1 << 20;
/// Guest output buffered while the host is slow to read. TX chains are
/// completed as soon as they are copied (Linux's hvc `put_chars` spins until
/// its buffer comes back), and only beyond this backlog does the device stop
/// taking TX chains.
const TX_BACKLOG: usize = 1 << 20;
/// Bytes read from the socket at a time.
const RX_CHUNK: usize = 64 << 10;

const TOKEN_RX: u64 = 1;
const TOKEN_TX: u64 = 2;
const TOKEN_SOCKET: u64 = 3;

/// The virtio-console device.
pub struct Console {
    socket: UnixStream,
    config: [u8; 12],
    worker: Option<Worker>,
}

impl Console {
    /// A console and the host end of its byte stream.
    pub fn new() -> io::Result<(Console, UnixStream)> {
        let (device_end, host_end) = UnixStream::pair()?;
        device_end.set_nonblocking(true)?;
        // struct virtio_console_config: cols, rows, max_nr_ports, emerg_wr.
        // Only meaningful with F_SIZE / MULTIPORT, which are not offered.
        let mut config = [0u8; 12];
        config[0..2].copy_from_slice(&80u16.to_le_bytes());
        config[2..4].copy_from_slice(&25u16.to_le_bytes());
        config[4..8].copy_from_slice(&1u32.to_le_bytes());
        Ok((
            Console {
                socket: device_end,
                config,
                worker: None,
            },
            host_end,
        ))
    }
}

impl VirtioDevice for Console {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_CONSOLE
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn features(&self) -> u64 {
        0
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        for (i, d) in data.iter_mut().enumerate() {
            *d = offset
                .checked_add(i as u64)
                .and_then(|o| self.config.get(usize::try_from(o).ok()?))
                .copied()
                .unwrap_or(0);
        }
    }

    fn write_config(&mut self, _offset: u64, _data: &[u8]) {
        // emerg_wr needs VIRTIO_CONSOLE_F_EMERG_WRITE, not offered.
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
        let (Some((rx, rx_evt)), Some((tx, tx_evt)), None) = (it.next(), it.next(), it.next())
        else {
            return Err(ActivateError::QueueCount { expected: 2, got });
        };
        let w = ConsoleWorker {
            mem,
            rx,
            rx_evt,
            tx,
            tx_evt,
            socket: self.socket.try_clone()?,
            interrupt,
            rx_pending: Vec::new(),
            rx_buf: vec![0; RX_CHUNK],
            tx_pending: VecDeque::new(),
            host_gone: false,
            socket_events: None,
        };
        self.worker = Some(Worker::spawn("virtio-console", move |kill| w.run(kill))?);
        Ok(())
    }

    fn reset(&mut self) -> bool {
        if let Some(mut w) = self.worker.take() {
            w.stop();
        }
        true
    }
}

struct ConsoleWorker {
    mem: GuestMemoryMmap<()>,
    rx: Queue,
    rx_evt: EventFd,
    tx: Queue,
    tx_evt: EventFd,
    socket: UnixStream,
    interrupt: Arc<dyn VirtioInterrupt>,
    /// Host bytes waiting for guest RX buffers.
    rx_pending: Vec<u8>,
    rx_buf: Vec<u8>,
    /// Guest bytes not yet accepted by the socket.
    tx_pending: VecDeque<u8>,
    host_gone: bool,
    /// Interest currently registered for the socket (None: not in epoll).
    socket_events: Option<EventSet>,
}

impl ConsoleWorker {
    fn run(mut self, kill: EventFd) {
        let sources = [
            (self.rx_evt.as_raw_fd(), TOKEN_RX),
            (self.tx_evt.as_raw_fd(), TOKEN_TX),
        ];
        event_loop(
            "virtio-console",
            &kill,
            &sources,
            |epoll, wake| match wake {
                // The guest may have queued work before activation completed.
                Wake::Start => {
                    self.process_tx();
                    self.process_rx();
                    self.update_socket_interest(epoll);
                }
                Wake::Ready(TOKEN_RX) => {
                    drain(&self.rx_evt);
                    self.process_rx();
                }
                Wake::Ready(TOKEN_TX) => {
                    drain(&self.tx_evt);
                    self.process_tx();
                }
                Wake::Ready(TOKEN_SOCKET) => {
                    self.process_tx();
                    self.process_rx();
                }
                Wake::Ready(_) => {}
                Wake::BatchDone => self.update_socket_interest(epoll),
            },
        );
    }

    /// Poll the socket for reading only while no host bytes are waiting for
    /// RX buffers, and for writing only while TX bytes wait.
    fn update_socket_interest(&mut self, epoll: &Epoll) {
        let mut want = EventSet::empty();
        if !self.host_gone {
            if self.rx_pending.is_empty() {
                want |= EventSet::IN;
            }
            if !self.tx_pending.is_empty() {
                want |= EventSet::OUT;
            }
        }
        let want = (!want.is_empty()).then_some(want);
        if want == self.socket_events {
            return;
        }
        let fd = self.socket.as_raw_fd();
        let r = match (self.socket_events, want) {
            (None, Some(w)) => {
                epoll.ctl(ControlOperation::Add, fd, EpollEvent::new(w, TOKEN_SOCKET))
            }
            (Some(_), Some(w)) => epoll.ctl(
                ControlOperation::Modify,
                fd,
                EpollEvent::new(w, TOKEN_SOCKET),
            ),
            (Some(_), None) => epoll.ctl(ControlOperation::Delete, fd, EpollEvent::default()),
            (None, None) => Ok(()),
        };
        match r {
            Ok(()) => self.socket_events = want,
            Err(e) => {
                tracing::error!("virtio-console: cannot update socket polling: {e}");
                self.host_gone = true;
            }
        }
    }

    /// Write as much pending TX as the socket takes; drop it all if the
    /// host end is gone.
    fn flush_tx(&mut self) {
        while !self.tx_pending.is_empty() && !self.host_gone {
            let (front, _) = self.tx_pending.as_slices();
            match send_nosignal(&self.socket, front) {
                Ok(0) => self.host_gone = true,
                Ok(n) => {
                    self.tx_pending.drain(..n.min(front.len()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => self.host_gone = true,
            }
        }
        if self.host_gone {
            self.tx_pending.clear();
        }
    }

    fn process_tx(&mut self) {
        if !self.tx.ready() {
            return;
        }
        let mut used = false;
        loop {
            self.flush_tx();
            if self.tx_pending.len() >= TX_BACKLOG {
                break;
            }
            let Some(chain) = self.tx.pop_descriptor_chain(&self.mem) else {
                break;
            };
            let head = chain.head_index();
            match read_tx_chain(&self.mem, chain) {
                Some(bytes) if !self.host_gone => self.tx_pending.extend(bytes),
                Some(_) => {}
                None => tracing::debug!(head, "virtio-console: dropping malformed TX chain"),
            }
            if let Err(e) = self.tx.add_used(&self.mem, head, 0) {
                tracing::debug!(head, "virtio-console: add_used failed: {e}");
            }
            used = true;
        }
        if used && self.tx.needs_notification(&self.mem).unwrap_or(true) {
            self.interrupt.signal_used_queue(TX_QUEUE);
        }
    }

    /// Read from the socket into `rx_pending`. Returns true if bytes came.
    fn fill_rx_pending(&mut self) -> bool {
        while !self.host_gone {
            match (&self.socket).read(&mut self.rx_buf) {
                Ok(0) => self.host_gone = true,
                Ok(n) => {
                    self.rx_pending.extend_from_slice(&self.rx_buf[..n]);
                    return true;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => self.host_gone = true,
            }
        }
        false
    }

    fn process_rx(&mut self) {
        if !self.rx.ready() {
            return;
        }
        let mut used = false;
        loop {
            if self.rx_pending.is_empty() && !self.fill_rx_pending() {
                break;
            }
            let Some(chain) = self.rx.pop_descriptor_chain(&self.mem) else {
                break;
            };
            let head = chain.head_index();
            let n = match write_rx_chain(&self.mem, chain, &self.rx_pending) {
                Some(n) => n,
                None => {
                    tracing::debug!(head, "virtio-console: skipping malformed RX chain");
                    0
                }
            };
            self.rx_pending.drain(..n);
            if let Err(e) = self.rx.add_used(&self.mem, head, n as u32) {
                tracing::debug!(head, "virtio-console: add_used failed: {e}");
            }
            used = true;
        }
        if used && self.rx.needs_notification(&self.mem).unwrap_or(true) {
            self.interrupt.signal_used_queue(RX_QUEUE);
        }
    }
}

/// Bytes of a TX chain, or None if it has a device-writable descriptor or
/// points outside guest memory.
fn read_tx_chain(
    mem: &GuestMemoryMmap<()>,
    chain: DescriptorChain<&GuestMemoryMmap<()>>,
) -> Option<Vec<u8>> {
    if chain.clone().any(|d| d.is_write_only()) {
        return None;
    }
    let mut reader = chain.reader(mem).ok()?;
    let n = reader.available_bytes().min(MAX_TX_CHAIN);
    let mut buf = vec![0u8; n];
    reader.read_exact(&mut buf).ok()?;
    Some(buf)
}

/// Copy as much of `data` as fits into an RX chain; None if the chain has a
/// device-readable descriptor or points outside guest memory.
fn write_rx_chain(
    mem: &GuestMemoryMmap<()>,
    chain: DescriptorChain<&GuestMemoryMmap<()>>,
    data: &[u8],
) -> Option<usize> {
    if chain.clone().any(|d| !d.is_write_only()) {
        return None;
    }
    let mut writer = chain.writer(mem).ok()?;
    let n = data.len().min(writer.available_bytes());
    writer.write_all(&data[..n]).ok()?;
    Some(n)
}

/// `send(2)` with MSG_NOSIGNAL so a closed host end yields EPIPE, never
/// SIGPIPE, and MSG_DONTWAIT so the worker never blocks.
fn send_nosignal(sock: &UnixStream, buf: &[u8]) -> io::Result<usize> {
    // SAFETY: `buf` is a live slice valid for reads of `buf.len()` bytes and
    // the fd is owned by `sock`, which outlives the call; send() does not
    // retain the pointer.
    let r = unsafe {
        libc::send(
            sock.as_raw_fd(),
            buf.as_ptr().cast(),
            buf.len(),
            libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pci::PciDevice;
    use crate::pci::msix::tests::FakeSink;
    use crate::virtio::pci::tests::{Driver, memory};
    use crate::virtio::pci::{DEVICE_CFG_OFFSET, VIRTIO_BAR, VirtioPciDevice};
    use crate::virtio::test_utils::{F_WRITE as W, TestQueue};
    use crate::virtio::{
        STATUS_ACKNOWLEDGE, STATUS_DRIVER, STATUS_DRIVER_OK, STATUS_FEATURES_OK, VIRTIO_F_VERSION_1,
    };
    use std::time::{Duration, Instant};
    use vm_memory::{Bytes, GuestAddress};

    pub(crate) fn wait_for(mut f: impl FnMut() -> bool) -> bool {
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if f() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        f()
    }

    struct Rig {
        dev: VirtioPciDevice,
        host: UnixStream,
        sink: Arc<FakeSink>,
        mem: GuestMemoryMmap<()>,
    }

    const RXQ: u64 = 0x1000;
    const TXQ: u64 = 0x4000;
    const QSIZE: u16 = 16;

    /// A console driven to DRIVER_OK with both queues at RXQ/TXQ, queue
    /// vectors 1 (rx) and 2 (tx).
    fn rig() -> Rig {
        let mem = memory();
        let (console, host) = Console::new().unwrap();
        host.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let sink = Arc::new(FakeSink::default());
        let mut dev = VirtioPciDevice::new(Box::new(console), mem.clone(), sink.clone()).unwrap();
        {
            let rxq = TestQueue::new(&mem, RXQ, QSIZE);
            let txq = TestQueue::new(&mem, TXQ, QSIZE);
            let mut d = Driver { dev: &mut dev };
            assert!(d.negotiate(1 << VIRTIO_F_VERSION_1));
            d.enable_msix(3);
            for (i, q) in [&rxq, &txq].into_iter().enumerate() {
                d.setup_queue(i as u16, QSIZE, q.desc, q.avail, q.used, i as u16 + 1);
            }
            d.set_status(
                STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK,
            );
            assert_eq!(d.status() & 0x40, 0);
        }
        Rig {
            dev,
            host,
            sink,
            mem,
        }
    }

    impl Rig {
        fn notify(&mut self, q: u16) {
            Driver { dev: &mut self.dev }.notify(q);
        }

        fn queue(&self, base: u64) -> TestQueue<'_> {
            TestQueue::attach(&self.mem, base, QSIZE)
        }
    }

    #[test]
    fn tx_reaches_host() {
        let mut r = rig();
        let mem = r.mem.clone();
        mem.write_slice(b"hello, ", GuestAddress(0x10000)).unwrap();
        mem.write_slice(b"world", GuestAddress(0x11000)).unwrap();
        // One two-descriptor chain.
        r.queue(TXQ)
            .add_chain(0, &[(0x10000, 7, 0), (0x11000, 5, 0)]);
        r.notify(TX_QUEUE);
        let mut buf = [0u8; 12];
        r.host.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"hello, world");
        assert!(wait_for(|| r.queue(TXQ).used_idx() == 1));
        assert_eq!(r.queue(TXQ).used_elem(0), (0, 0));
        assert!(wait_for(|| r.sink.triggers(2) >= 1));

        // Malformed chains: device-writable, out of memory, wrapping, bad
        // head index, a NEXT loop; then a good one.
        {
            let txq = r.queue(TXQ);
            txq.add_chain(2, &[(0x10000, 4, W)]);
            txq.add_chain(3, &[(0xffff_f000, 0x2000, 0)]);
            txq.add_chain(4, &[(u64::MAX - 2, 16, 0)]);
            txq.publish(QSIZE + 3);
            txq.add_chain(5, &[(0x10000, 2, 0), (0x10000, 2, 0)]);
            // Make descriptor 6 point back to 5.
            mem.write_obj(1u16, GuestAddress(TXQ + 16 * 6 + 12))
                .unwrap();
            mem.write_obj(5u16, GuestAddress(TXQ + 16 * 6 + 14))
                .unwrap();
            mem.write_slice(b"ok", GuestAddress(0x12000)).unwrap();
            txq.add_chain(8, &[(0x12000, 2, 0)]);
        }
        r.notify(TX_QUEUE);
        // The looping chain is cut at the queue size (16 x "he"), then "ok".
        let mut buf = vec![0u8; 32 + 2];
        r.host.read_exact(&mut buf).unwrap();
        assert_eq!(&buf[..2], b"he");
        assert_eq!(&buf[32..], b"ok");
        // Bad head index is never returned; the other 5 are.
        assert!(wait_for(|| r.queue(TXQ).used_idx() == 6));
        for i in 1..6 {
            assert_eq!(r.queue(TXQ).used_elem(i).1, 0);
        }
        // Nothing else arrived.
        r.host.set_nonblocking(true).unwrap();
        assert!(r.host.read(&mut buf).is_err());
    }

    #[test]
    fn rx_lands_in_guest_buffers() {
        let mut r = rig();
        let mem = r.mem.clone();
        r.queue(RXQ).add_chain(0, &[(0x20000, 8, W)]);
        r.notify(RX_QUEUE);
        r.host.write_all(b"0123456789").unwrap();
        assert!(wait_for(|| r.queue(RXQ).used_idx() == 1));
        assert_eq!(r.queue(RXQ).used_elem(0), (0, 8));
        let mut got = [0u8; 8];
        mem.read_slice(&mut got, GuestAddress(0x20000)).unwrap();
        assert_eq!(&got, b"01234567");
        assert!(wait_for(|| r.sink.triggers(1) >= 1));

        // No buffers: the rest waits. Bad chains first (readable, outside
        // memory), then a two-buffer chain gets the remaining bytes.
        {
            let rxq = r.queue(RXQ);
            rxq.add_chain(1, &[(0x21000, 16, 0)]);
            rxq.add_chain(2, &[(0xfff_f000, 16, W)]);
            rxq.add_chain(3, &[(0x22000, 1, W), (0x23000, 16, W)]);
        }
        r.notify(RX_QUEUE);
        assert!(wait_for(|| r.queue(RXQ).used_idx() == 4));
        assert_eq!(r.queue(RXQ).used_elem(1), (1, 0));
        assert_eq!(r.queue(RXQ).used_elem(2), (2, 0));
        assert_eq!(r.queue(RXQ).used_elem(3), (3, 2));
        let mut b = [0u8; 1];
        mem.read_slice(&mut b, GuestAddress(0x22000)).unwrap();
        assert_eq!(&b, b"8");
        mem.read_slice(&mut b, GuestAddress(0x23000)).unwrap();
        assert_eq!(&b, b"9");
        let mut z = [0u8; 16];
        mem.read_slice(&mut z, GuestAddress(0x21000)).unwrap();
        assert_eq!(z, [0; 16]);

        // More host data with a buffer already waiting.
        r.queue(RXQ).add_chain(5, &[(0x24000, 64, W)]);
        r.notify(RX_QUEUE);
        r.host.write_all(b"late").unwrap();
        assert!(wait_for(|| r.queue(RXQ).used_idx() == 5));
        assert_eq!(r.queue(RXQ).used_elem(4), (5, 4));

        // Host closes: TX is dropped but completed, reset joins the worker.
        let Rig { mut dev, host, .. } = r;
        drop(host);
        let txq = TestQueue::attach(&mem, TXQ, QSIZE);
        txq.add_chain(0, &[(0x10000, 4, 0)]);
        let mut d = Driver { dev: &mut dev };
        d.notify(TX_QUEUE);
        assert!(wait_for(|| txq.used_idx() == 1));
        d.set_status(0);
        assert_eq!(d.status(), 0);
    }

    #[test]
    fn tx_backpressure_does_not_block_reset() {
        let mut r = rig();
        // 15 chains of 512 KiB each (far more than the socket buffer), all
        // the same region of guest memory; the host never reads.
        for i in 0..15u16 {
            r.queue(TXQ).add_chain(i, &[(0x80000, 0x8_0000, 0)]);
        }
        r.notify(TX_QUEUE);
        // Chains complete until the 1 MiB backlog is full, then TX stalls.
        assert!(wait_for(|| r.queue(TXQ).used_idx() >= 2));
        std::thread::sleep(Duration::from_millis(50));
        assert!(r.queue(TXQ).used_idx() < 15);
        // Reset must not hang on the stalled worker.
        let mut d = Driver { dev: &mut r.dev };
        d.set_status(0);
        assert_eq!(d.status(), 0);
        // Device config reads (F_SIZE not offered, but harmless).
        let mut c = [0u8; 2];
        r.dev.bar_read(VIRTIO_BAR, DEVICE_CFG_OFFSET, &mut c);
        assert_eq!(u16::from_le_bytes(c), 80);
    }

    #[test]
    fn tx_resumes_when_host_reads() {
        let mut r = rig();
        let mem = r.mem.clone();
        let chunk = 0x8_0000usize;
        let pattern: Vec<u8> = (0..chunk).map(|i| (i % 251) as u8).collect();
        mem.write_slice(&pattern, GuestAddress(0x80000)).unwrap();
        for i in 0..15u16 {
            r.queue(TXQ).add_chain(i, &[(0x80000, chunk as u32, 0)]);
        }
        r.notify(TX_QUEUE);
        std::thread::sleep(Duration::from_millis(20));
        let mut got = vec![0u8; 15 * chunk];
        r.host.read_exact(&mut got).unwrap();
        for c in got.chunks(chunk) {
            assert!(c == pattern.as_slice());
        }
        assert!(wait_for(|| r.queue(TXQ).used_idx() == 15));
        assert!(wait_for(|| r.sink.triggers(2) >= 1));
    }

    #[test]
    fn activate_twice_and_bad_queue_count() {
        let (mut c, _host) = Console::new().unwrap();
        assert_eq!(VirtioPciDevice::msix_vectors(&c), 3);
        let mem = memory();
        struct Nop;
        impl VirtioInterrupt for Nop {
            fn signal_used_queue(&self, _: u16) {}
            fn signal_config_change(&self) {}
        }
        let q = || {
            (
                Queue::new(16).unwrap(),
                EventFd::new(vmm_sys_util::eventfd::EFD_NONBLOCK).unwrap(),
            )
        };
        assert!(matches!(
            c.activate(mem.clone(), vec![q()], Arc::new(Nop)),
            Err(ActivateError::QueueCount {
                expected: 2,
                got: 1
            })
        ));
        c.activate(mem.clone(), vec![q(), q()], Arc::new(Nop))
            .unwrap();
        assert!(matches!(
            c.activate(mem.clone(), vec![q(), q()], Arc::new(Nop)),
            Err(ActivateError::AlreadyActive)
        ));
        assert!(c.reset());
        c.activate(mem, vec![q(), q()], Arc::new(Nop)).unwrap();
        drop(c);
    }
}
