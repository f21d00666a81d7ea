//! Guest-side devmem (netmem) tools, hidden subcommands of the static
//! `netmem-lab` binary, run inside the lab guest against the real kernel:
//!
//! ```text
//! netmem-lab devmem-tx --dev IF [--netns NS] --connect ADDR:PORT --bytes N [--seed S]
//!     [--dmabuf-size B] [--chunk C] [--spare-binding] [--unbind-after BYTES] [--bind-dev]
//!     [--timeout-s T]
//! netmem-lab devmem-rx --dev IF [--netns NS] --listen ADDR:PORT --bytes N [--seed S]
//!     --queue Q [--dmabuf-size B] [--timeout-s T]
//! netmem-lab bind-tx --dev IF [--netns NS] [--dmabuf-size B | --fd N]
//! netmem-lab bind-rx --dev IF [--netns NS] --queue Q [--dmabuf-size B | --fd N]
//! ```
//!
//! Each prints one JSON line (the facts contract, /work/prompts/facts.md):
//! `ok`, on failure `stage`/`errno`/`errno_name`/`extack`/`error`, the
//! `facts` (`dmabufs` with their guest-physical page runs, `bindings` in the
//! order they were made) and a `payload`. Exit codes: 0 ok, 1 failure, 2 bad
//! usage.
//!
//! **Buffers.** A udmabuf: `memfd_create(MFD_ALLOW_SEALING)`, `F_SEAL_SHRINK`
//! (udmabuf refuses memfds that can shrink), `ftruncate`, `UDMABUF_CREATE` on
//! `/dev/udmabuf`, `mmap` shared. CPU access is bracketed by
//! `DMA_BUF_IOCTL_SYNC` START/END (WRITE for the TX fill, READ for the RX
//! copy-out). Page frames come from `/proc/self/pagemap` after every page was
//! touched.
//!
//! **Bindings.** netdev generic netlink `NETDEV_CMD_BIND_TX` / `_BIND_RX`;
//! the binding lives as long as the netlink socket that made it
//! (`netdev_nl_sock_priv_destroy` unbinds), so each binding owns its socket.
//!
//! **TX.** A TCP socket with `SO_ZEROCOPY`, `sendmsg(MSG_ZEROCOPY)` whose
//! iovecs carry byte offsets into the dmabuf (`zerocopy_fill_skb_from_devmem`,
//! net/core/datagram.c) plus one `SCM_DEVMEM_DMABUF` cmsg with the binding id.
//! The stream is the [`fill_pattern`] stream the existing `tcp-sink` verifies;
//! when it is longer than the dmabuf the dmabuf is reused as a ring, and a
//! region is refilled only once every zerocopy completion (`MSG_ERRQUEUE`,
//! `SO_EE_ORIGIN_ZEROCOPY`) covering the data last sent from it arrived.
//!
//! **RX.** `recvmsg(MSG_SOCK_DEVMEM)`: each `SCM_DEVMEM_DMABUF` cmsg names a
//! fragment of the dmabuf, which is copied out, verified at its stream offset
//! and returned with `SO_DEVMEM_DONTNEED`; `SCM_DEVMEM_LINEAR` bytes arrive in
//! the normal iovec. Data with no devmem cmsg at all came through a readable
//! skb, i.e. not through the devmem queue (`tcp_recvmsg_locked` copies such
//! skbs normally even with `MSG_SOCK_DEVMEM`), and makes the run fail.

use std::collections::VecDeque;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use serde_json::{Map, Value, json};

use crate::ethtool::nl;
use crate::guest_tools::{enter_netns, fill_pattern, first_mismatch, ifindex};

// ---------------------------------------------------------------- UAPI

/// `MFD_CLOEXEC` (include/uapi/linux/memfd.h).
pub const MFD_CLOEXEC: u32 = 0x0001;
/// `MFD_ALLOW_SEALING` (include/uapi/linux/memfd.h).
pub const MFD_ALLOW_SEALING: u32 = 0x0002;
/// `F_ADD_SEALS` = F_LINUX_SPECIFIC_BASE (1024, include/uapi/asm-generic/fcntl.h) + 9
/// (include/uapi/linux/fcntl.h).
pub const F_ADD_SEALS: i32 = 1024 + 9;
/// `F_SEAL_SHRINK` (include/uapi/linux/fcntl.h).
pub const F_SEAL_SHRINK: i32 = 0x0002;

/// `_IOW(type, nr, size)` (include/uapi/asm-generic/ioctl.h: dir WRITE = 1
/// at bit 30, size at bit 16, type at bit 8).
const fn iow(ty: u8, nr: u8, size: usize) -> u64 {
    (1u64 << 30) | ((size as u64) << 16) | ((ty as u64) << 8) | nr as u64
}

/// `struct udmabuf_create` size: u32 memfd, u32 flags, u64 offset, u64 size
/// (include/uapi/linux/udmabuf.h).
pub const UDMABUF_CREATE_SIZE: usize = 24;
/// `UDMABUF_CREATE` = `_IOW('u', 0x42, struct udmabuf_create)` (include/uapi/linux/udmabuf.h).
pub const UDMABUF_CREATE: u64 = iow(b'u', 0x42, UDMABUF_CREATE_SIZE);
/// `UDMABUF_FLAGS_CLOEXEC` (include/uapi/linux/udmabuf.h).
pub const UDMABUF_FLAGS_CLOEXEC: u32 = 0x01;
/// `DMA_BUF_IOCTL_SYNC` = `_IOW('b', 0, struct dma_buf_sync)`, a u64 flags
/// (include/uapi/linux/dma-buf.h).
pub const DMA_BUF_IOCTL_SYNC: u64 = iow(b'b', 0, 8);
/// `DMA_BUF_SYNC_READ` (include/uapi/linux/dma-buf.h).
pub const DMA_BUF_SYNC_READ: u64 = 1;
/// `DMA_BUF_SYNC_WRITE` (include/uapi/linux/dma-buf.h).
pub const DMA_BUF_SYNC_WRITE: u64 = 2;
/// `DMA_BUF_SYNC_START` (include/uapi/linux/dma-buf.h).
pub const DMA_BUF_SYNC_START: u64 = 0;
/// `DMA_BUF_SYNC_END` (include/uapi/linux/dma-buf.h).
pub const DMA_BUF_SYNC_END: u64 = 1 << 2;

/// `SO_BINDTODEVICE` (include/uapi/asm-generic/socket.h).
pub const SO_BINDTODEVICE: i32 = 25;
/// `SO_ZEROCOPY` (include/uapi/asm-generic/socket.h).
pub const SO_ZEROCOPY: i32 = 60;
/// `SO_DEVMEM_LINEAR` = `SCM_DEVMEM_LINEAR` (include/uapi/asm-generic/socket.h).
pub const SCM_DEVMEM_LINEAR: i32 = 78;
/// `SO_DEVMEM_DMABUF` = `SCM_DEVMEM_DMABUF` (include/uapi/asm-generic/socket.h).
pub const SCM_DEVMEM_DMABUF: i32 = 79;
/// `SO_DEVMEM_DONTNEED` (include/uapi/asm-generic/socket.h).
pub const SO_DEVMEM_DONTNEED: i32 = 80;
/// `MSG_SOCK_DEVMEM` (include/linux/socket.h).
pub const MSG_SOCK_DEVMEM: i32 = 0x0200_0000;
/// `MSG_ZEROCOPY` (include/linux/socket.h).
pub const MSG_ZEROCOPY: i32 = 0x0400_0000;
/// `MSG_ERRQUEUE` (include/linux/socket.h).
pub const MSG_ERRQUEUE: i32 = 0x2000;
/// `MSG_CTRUNC` (include/linux/socket.h).
pub const MSG_CTRUNC: i32 = 8;
/// `SO_EE_ORIGIN_ZEROCOPY` (include/uapi/linux/errqueue.h).
pub const SO_EE_ORIGIN_ZEROCOPY: u8 = 5;
/// `SO_EE_CODE_ZEROCOPY_COPIED` (include/uapi/linux/errqueue.h).
pub const SO_EE_CODE_ZEROCOPY_COPIED: u8 = 1;
/// `SOL_IP` (include/linux/socket.h) and `IP_RECVERR` (include/uapi/linux/in.h).
pub const SOL_IP: i32 = 0;
pub const IP_RECVERR: i32 = 11;
/// `SOL_IPV6` (include/linux/socket.h) and `IPV6_RECVERR` (include/uapi/linux/in6.h).
pub const SOL_IPV6: i32 = 41;
pub const IPV6_RECVERR: i32 = 25;
/// `UIO_MAXIOV` (include/uapi/linux/uio.h).
pub const UIO_MAXIOV: usize = 1024;
/// `MAX_DONTNEED_TOKENS` (net/core/sock.c): tokens per SO_DEVMEM_DONTNEED call.
pub const MAX_DONTNEED_TOKENS: usize = 128;
/// `MAX_DONTNEED_FRAGS` (net/core/sock.c): frags per SO_DEVMEM_DONTNEED call.
pub const MAX_DONTNEED_FRAGS: u64 = 1024;
/// `sizeof(struct dmabuf_cmsg)` (include/uapi/linux/uio.h): u64 frag_offset,
/// u32 frag_size, u32 frag_token, u32 dmabuf_id, u32 flags.
pub const DMABUF_CMSG_SIZE: usize = 24;
/// `sizeof(struct sock_extended_err)` (include/uapi/linux/errqueue.h).
pub const SOCK_EXTENDED_ERR_SIZE: usize = 16;
/// The x86-64 page size (the dmabuf is mapped in `PAGE_SIZE` niovs, devmem.c).
pub const PAGE_SIZE: u64 = 4096;

/// `NETDEV_FAMILY_NAME` (include/uapi/linux/netdev.h).
pub const NETDEV_FAMILY_NAME: &str = "netdev";
/// `NETDEV_FAMILY_VERSION` (include/uapi/linux/netdev.h).
pub const NETDEV_FAMILY_VERSION: u8 = 1;
/// `NETDEV_CMD_BIND_RX` (enum in include/uapi/linux/netdev.h: DEV_GET = 1 … QSTATS_GET = 12, BIND_RX = 13).
pub const NETDEV_CMD_BIND_RX: u8 = 13;
/// `NETDEV_CMD_BIND_TX` (include/uapi/linux/netdev.h: NAPI_SET = 14, BIND_TX = 15).
pub const NETDEV_CMD_BIND_TX: u8 = 15;
/// `NETDEV_A_DMABUF_IFINDEX` (include/uapi/linux/netdev.h), u32.
pub const NETDEV_A_DMABUF_IFINDEX: u16 = 1;
/// `NETDEV_A_DMABUF_QUEUES` (include/uapi/linux/netdev.h), nest of queue attrs.
pub const NETDEV_A_DMABUF_QUEUES: u16 = 2;
/// `NETDEV_A_DMABUF_FD` (include/uapi/linux/netdev.h), u32.
pub const NETDEV_A_DMABUF_FD: u16 = 3;
/// `NETDEV_A_DMABUF_ID` (include/uapi/linux/netdev.h), u32.
pub const NETDEV_A_DMABUF_ID: u16 = 4;
/// `NETDEV_A_QUEUE_ID` (include/uapi/linux/netdev.h), u32.
pub const NETDEV_A_QUEUE_ID: u16 = 1;
/// `NETDEV_A_QUEUE_TYPE` (include/uapi/linux/netdev.h), u32 `enum netdev_queue_type`.
pub const NETDEV_A_QUEUE_TYPE: u16 = 3;
/// `NETDEV_QUEUE_TYPE_RX` (include/uapi/linux/netdev.h).
pub const NETDEV_QUEUE_TYPE_RX: u32 = 0;

// ---------------------------------------------------------------- errors

/// A failed operation: which stage, errno (when the kernel refused) and extack.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub stage: &'static str,
    pub errno: Option<i32>,
    pub extack: Option<String>,
    pub message: String,
}

impl Failure {
    fn os(stage: &'static str, what: impl std::fmt::Display, errno: i32) -> Failure {
        Failure {
            stage,
            errno: Some(errno),
            extack: None,
            message: format!("{what}: {}", std::io::Error::from_raw_os_error(errno)),
        }
    }

    fn last(stage: &'static str, what: impl std::fmt::Display) -> Failure {
        Failure::os(stage, what, last_errno())
    }

    fn msg(stage: &'static str, m: impl Into<String>) -> Failure {
        Failure {
            stage,
            errno: None,
            extack: None,
            message: m.into(),
        }
    }

    fn nl(stage: &'static str, what: &str, e: nl::NlError) -> Failure {
        let mut f = Failure::os(stage, what, e.errno);
        if let Some(x) = &e.extack {
            f.message.push_str(&format!(" ({x})"));
        }
        f.extack = e.extack;
        f
    }

    /// Adds `ok:false`, `stage`, `errno`, `errno_name`, `extack`, `error`.
    pub fn put(&self, m: &mut Map<String, Value>) {
        m.insert("ok".into(), json!(false));
        m.insert("stage".into(), json!(self.stage));
        if let Some(e) = self.errno {
            m.insert("errno".into(), json!(e));
            m.insert("errno_name".into(), json!(errno_name(e)));
        }
        if let Some(x) = &self.extack {
            m.insert("extack".into(), json!(x));
        }
        m.insert("error".into(), json!(self.message));
    }
}

/// Progress on stderr (stdout carries only the JSON line): what a hung
/// run was doing last.
fn progress(msg: impl std::fmt::Display) {
    use std::sync::OnceLock;
    static T0: OnceLock<Instant> = OnceLock::new();
    let t0 = T0.get_or_init(Instant::now);
    eprintln!("[{:>8.3}s] {msg}", t0.elapsed().as_secs_f64());
}

fn last_errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// The symbolic name of an errno (the ones these tools can meet), else `E<n>`.
pub fn errno_name(e: i32) -> String {
    let n = match e {
        libc::EPERM => "EPERM",
        libc::ENOENT => "ENOENT",
        libc::EINTR => "EINTR",
        libc::EIO => "EIO",
        libc::ENXIO => "ENXIO",
        libc::EBADF => "EBADF",
        libc::EAGAIN => "EAGAIN",
        libc::ENOMEM => "ENOMEM",
        libc::EACCES => "EACCES",
        libc::EFAULT => "EFAULT",
        libc::EBUSY => "EBUSY",
        libc::EEXIST => "EEXIST",
        libc::ENODEV => "ENODEV",
        libc::EINVAL => "EINVAL",
        libc::ENOSPC => "ENOSPC",
        libc::EPIPE => "EPIPE",
        libc::ERANGE => "ERANGE",
        libc::ENOSYS => "ENOSYS",
        libc::ENOTSUP => "EOPNOTSUPP",
        libc::ENOBUFS => "ENOBUFS",
        libc::EMSGSIZE => "EMSGSIZE",
        libc::EPROTO => "EPROTO",
        libc::ENOTCONN => "ENOTCONN",
        libc::ECONNRESET => "ECONNRESET",
        libc::ECONNREFUSED => "ECONNREFUSED",
        libc::ETIMEDOUT => "ETIMEDOUT",
        libc::EHOSTUNREACH => "EHOSTUNREACH",
        libc::ENETUNREACH => "ENETUNREACH",
        libc::EINPROGRESS => "EINPROGRESS",
        libc::EADDRINUSE => "EADDRINUSE",
        libc::EADDRNOTAVAIL => "EADDRNOTAVAIL",
        libc::ENOTSOCK => "ENOTSOCK",
        libc::ENOTTY => "ENOTTY",
        libc::E2BIG => "E2BIG",
        libc::ENOPROTOOPT => "ENOPROTOOPT",
        _ => return format!("E{e}"),
    };
    n.into()
}

// ---------------------------------------------------------------- udmabuf

/// A udmabuf: its memfd, the dmabuf fd and a shared read/write mapping.
pub struct Udmabuf {
    _memfd: OwnedFd,
    fd: OwnedFd,
    map: *mut u8,
    size: usize,
}

impl Udmabuf {
    /// Creates a `size`-byte udmabuf (`size` a multiple of [`PAGE_SIZE`]).
    pub fn create(size: usize) -> Result<Udmabuf, Failure> {
        const ST: &str = "udmabuf";
        if size == 0 || !(size as u64).is_multiple_of(PAGE_SIZE) {
            return Err(Failure::msg(
                ST,
                format!("size {size} is not a positive multiple of {PAGE_SIZE}"),
            ));
        }
        // SAFETY: plain open(2) of a NUL-terminated path.
        let dev = unsafe { libc::open(c"/dev/udmabuf".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
        if dev < 0 {
            return Err(Failure::last(ST, "open /dev/udmabuf"));
        }
        // SAFETY: fresh fd we own.
        let dev = unsafe { OwnedFd::from_raw_fd(dev) };
        // SAFETY: memfd_create with a NUL-terminated name.
        let memfd = unsafe {
            libc::memfd_create(
                c"netmem-lab-devmem".as_ptr(),
                (MFD_ALLOW_SEALING | MFD_CLOEXEC) as libc::c_uint,
            )
        };
        if memfd < 0 {
            return Err(Failure::last(ST, "memfd_create"));
        }
        // SAFETY: fresh fd we own.
        let memfd = unsafe { OwnedFd::from_raw_fd(memfd) };
        // SAFETY: fcntl on our memfd.
        if unsafe { libc::fcntl(memfd.as_raw_fd(), F_ADD_SEALS, F_SEAL_SHRINK) } < 0 {
            return Err(Failure::last(ST, "F_ADD_SEALS F_SEAL_SHRINK"));
        }
        // SAFETY: ftruncate on our memfd.
        if unsafe { libc::ftruncate(memfd.as_raw_fd(), size as libc::off_t) } < 0 {
            return Err(Failure::last(ST, format!("ftruncate {size}")));
        }
        let mut create = [0u8; UDMABUF_CREATE_SIZE];
        create[0..4].copy_from_slice(&(memfd.as_raw_fd() as u32).to_ne_bytes());
        create[4..8].copy_from_slice(&UDMABUF_FLAGS_CLOEXEC.to_ne_bytes());
        create[8..16].copy_from_slice(&0u64.to_ne_bytes());
        create[16..24].copy_from_slice(&(size as u64).to_ne_bytes());
        // SAFETY: UDMABUF_CREATE reads a struct udmabuf_create we own.
        let fd = unsafe {
            libc::ioctl(
                dev.as_raw_fd(),
                UDMABUF_CREATE as libc::c_ulong,
                create.as_mut_ptr(),
            )
        };
        if fd < 0 {
            return Err(Failure::last(ST, "UDMABUF_CREATE"));
        }
        // SAFETY: the ioctl returned a new fd we own.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: a fresh shared mapping of the whole dmabuf.
        let map = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                size,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if map == libc::MAP_FAILED {
            return Err(Failure::last(ST, "mmap dmabuf"));
        }
        Ok(Udmabuf {
            _memfd: memfd,
            fd,
            map: map.cast(),
            size,
        })
    }

    pub fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    pub fn size(&self) -> usize {
        self.size
    }

    /// `DMA_BUF_IOCTL_SYNC` with `flags`.
    pub fn sync(&self, flags: u64) -> Result<(), Failure> {
        let mut f = flags;
        loop {
            // SAFETY: DMA_BUF_IOCTL_SYNC reads one u64 we own.
            let rc = unsafe {
                libc::ioctl(
                    self.fd.as_raw_fd(),
                    DMA_BUF_IOCTL_SYNC as libc::c_ulong,
                    &raw mut f,
                )
            };
            if rc == 0 {
                return Ok(());
            }
            let e = last_errno();
            if e != libc::EINTR && e != libc::EAGAIN {
                return Err(Failure::os("dmabuf-sync", "DMA_BUF_IOCTL_SYNC", e));
            }
        }
    }

    /// Writes `[off, off + data.len())` of the dmabuf (bounds checked),
    /// bracketed by SYNC START/END WRITE.
    pub fn write_with(
        &mut self,
        off: usize,
        len: usize,
        f: impl FnOnce(&mut [u8]),
    ) -> Result<(), Failure> {
        if off.checked_add(len).is_none_or(|e| e > self.size) {
            return Err(Failure::msg(
                "dmabuf-sync",
                format!("write {off}+{len} beyond {}", self.size),
            ));
        }
        self.sync(DMA_BUF_SYNC_START | DMA_BUF_SYNC_WRITE)?;
        // SAFETY: in bounds of our live mapping; we hold &mut self.
        let s = unsafe { std::slice::from_raw_parts_mut(self.map.add(off), len) };
        f(s);
        self.sync(DMA_BUF_SYNC_END | DMA_BUF_SYNC_WRITE)
    }

    /// Copies `[off, off + out.len())` out of the dmabuf (bounds checked),
    /// bracketed by SYNC START/END READ.
    pub fn read_into(&self, off: u64, out: &mut [u8]) -> Result<(), Failure> {
        let end = off.checked_add(out.len() as u64);
        if end.is_none_or(|e| e > self.size as u64) {
            return Err(Failure::msg(
                "recvmsg",
                format!(
                    "fragment {off}+{} beyond the dmabuf ({} bytes)",
                    out.len(),
                    self.size
                ),
            ));
        }
        self.sync(DMA_BUF_SYNC_START | DMA_BUF_SYNC_READ)?;
        // SAFETY: in bounds of our live mapping.
        let s = unsafe { std::slice::from_raw_parts(self.map.add(off as usize), out.len()) };
        out.copy_from_slice(s);
        self.sync(DMA_BUF_SYNC_END | DMA_BUF_SYNC_READ)
    }

    /// The guest-physical page runs `[gpa, count]` in dmabuf-offset order.
    ///
    /// The dmabuf's own mapping is `VM_PFNMAP` (udmabuf inserts PFNs at
    /// fault time), and the page walker behind `/proc/self/pagemap` skips
    /// such VMAs: they read as holes. The udmabuf pins the memfd's pages
    /// (`memfd_pin_folios`, drivers/dma-buf/udmabuf.c) at the same offsets,
    /// so the frames are read through a shared mapping of the memfd,
    /// touched page by page first.
    pub fn page_runs(&self) -> Result<Vec<[u64; 2]>, Failure> {
        let pages = self.size / PAGE_SIZE as usize;
        // SAFETY: a fresh read-only shared mapping of our memfd.
        let m = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                self.size,
                libc::PROT_READ,
                libc::MAP_SHARED,
                self._memfd.as_raw_fd(),
                0,
            )
        };
        if m == libc::MAP_FAILED {
            return Err(Failure::last("pagemap", "mmap memfd"));
        }
        let m = m.cast::<u8>();
        let mut sum = 0u8;
        for i in 0..pages {
            // SAFETY: in bounds of the mapping; a volatile read faults the page in.
            sum ^= unsafe { std::ptr::read_volatile(m.add(i * PAGE_SIZE as usize)) };
        }
        std::hint::black_box(sum);
        let gpas = pagemap_gpas(m as usize, pages);
        // SAFETY: our mapping, unmapped once.
        unsafe { libc::munmap(m.cast(), self.size) };
        Ok(compress_runs(&gpas?))
    }
}

impl Drop for Udmabuf {
    fn drop(&mut self) {
        // SAFETY: our mapping, unmapped once.
        unsafe { libc::munmap(self.map.cast(), self.size) };
    }
}

/// `/proc/self/pagemap` entry bits (Documentation/admin-guide/mm/pagemap.rst):
/// PFN in bits 0-54, present in bit 63.
pub const PAGEMAP_PFN_MASK: u64 = (1 << 55) - 1;
pub const PAGEMAP_PRESENT: u64 = 1 << 63;

/// The guest-physical address of a pagemap entry, if the page is present
/// and the PFN is shown (root only).
pub fn pagemap_entry_gpa(e: u64) -> Option<u64> {
    let pfn = e & PAGEMAP_PFN_MASK;
    (e & PAGEMAP_PRESENT != 0 && pfn != 0).then(|| pfn * PAGE_SIZE)
}

fn pagemap_gpas(vaddr: usize, pages: usize) -> Result<Vec<u64>, Failure> {
    use std::os::unix::fs::FileExt;
    const ST: &str = "pagemap";
    let f = std::fs::File::open("/proc/self/pagemap")
        .map_err(|e| Failure::msg(ST, format!("/proc/self/pagemap: {e}")))?;
    let mut raw = vec![0u8; pages * 8];
    let off = (vaddr as u64 / PAGE_SIZE) * 8;
    f.read_exact_at(&mut raw, off)
        .map_err(|e| Failure::msg(ST, format!("reading /proc/self/pagemap: {e}")))?;
    raw.chunks_exact(8)
        .enumerate()
        .map(|(i, c)| {
            let e = u64::from_ne_bytes(c.try_into().expect("8 bytes"));
            pagemap_entry_gpa(e).ok_or_else(|| {
                Failure::msg(
                    ST,
                    format!("page {i}: pagemap entry {e:#x} has no PFN (not present or not root)"),
                )
            })
        })
        .collect()
}

/// Compresses page addresses into runs `[first_gpa, count]` of physically
/// contiguous 4 KiB pages, in order.
pub fn compress_runs(gpas: &[u64]) -> Vec<[u64; 2]> {
    let mut runs: Vec<[u64; 2]> = Vec::new();
    for &g in gpas {
        match runs.last_mut() {
            Some([start, n]) if start.checked_add(*n * PAGE_SIZE) == Some(g) => *n += 1,
            _ => runs.push([g, 1]),
        }
    }
    runs
}

// ---------------------------------------------------------------- netdev genl

/// `NETDEV_CMD_BIND_TX {ifindex, fd}`.
pub fn bind_tx_request(family: u16, seq: u32, ifindex: u32, fd: u32) -> Vec<u8> {
    let attrs = nl::Attrs::new()
        .put_u32(NETDEV_A_DMABUF_IFINDEX, ifindex)
        .put_u32(NETDEV_A_DMABUF_FD, fd)
        .finish();
    nl::genl_request(
        family,
        nl::NLM_F_REQUEST | nl::NLM_F_ACK,
        seq,
        NETDEV_CMD_BIND_TX,
        NETDEV_FAMILY_VERSION,
        &attrs,
    )
}

/// `NETDEV_CMD_BIND_RX {ifindex, fd, queues {id: queue, type: rx}}`.
pub fn bind_rx_request(family: u16, seq: u32, ifindex: u32, fd: u32, queue: u32) -> Vec<u8> {
    let attrs = nl::Attrs::new()
        .put_u32(NETDEV_A_DMABUF_IFINDEX, ifindex)
        .put_u32(NETDEV_A_DMABUF_FD, fd)
        .nest_start(NETDEV_A_DMABUF_QUEUES)
        .put_u32(NETDEV_A_QUEUE_ID, queue)
        .put_u32(NETDEV_A_QUEUE_TYPE, NETDEV_QUEUE_TYPE_RX)
        .nest_end()
        .finish();
    nl::genl_request(
        family,
        nl::NLM_F_REQUEST | nl::NLM_F_ACK,
        seq,
        NETDEV_CMD_BIND_RX,
        NETDEV_FAMILY_VERSION,
        &attrs,
    )
}

/// `NETDEV_A_DMABUF_ID` of a bind reply payload (genlmsghdr + attrs).
pub fn parse_bind_reply(payload: &[u8]) -> Result<u32, String> {
    let attrs = payload
        .get(nl::GENL_HDRLEN..)
        .ok_or("reply shorter than a genl header")?;
    let attrs = nl::parse_attrs(attrs)?;
    let a = attrs
        .iter()
        .find(|a| a.ty == NETDEV_A_DMABUF_ID)
        .ok_or("no NETDEV_A_DMABUF_ID in the reply")?;
    nl::attr_u32(a)
}

/// Bind direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dir {
    Tx,
    Rx { queue: u32 },
}

impl Dir {
    pub fn name(self) -> &'static str {
        match self {
            Dir::Tx => "tx",
            Dir::Rx { .. } => "rx",
        }
    }

    fn stage(self) -> &'static str {
        match self {
            Dir::Tx => "bind-tx",
            Dir::Rx { .. } => "bind-rx",
        }
    }
}

/// A live binding: it lasts as long as its netlink socket.
pub struct Binding {
    sock: Option<nl::Genl>,
    pub id: u32,
}

impl Binding {
    /// Binds `fd` on `ifindex`; the socket stays open in the result.
    pub fn bind(dir: Dir, ifindex: u32, fd: RawFd) -> Result<Binding, Failure> {
        let st = dir.stage();
        let mut g = nl::Genl::open().map_err(|e| Failure::nl(st, "netlink socket", e))?;
        let fam = g
            .family_id(NETDEV_FAMILY_NAME)
            .map_err(|e| Failure::nl(st, "CTRL_CMD_GETFAMILY(netdev)", e))?;
        let seq = g.next_seq();
        let (req, what) = match dir {
            Dir::Tx => (
                bind_tx_request(fam, seq, ifindex, fd as u32),
                "NETDEV_CMD_BIND_TX",
            ),
            Dir::Rx { queue } => (
                bind_rx_request(fam, seq, ifindex, fd as u32, queue),
                "NETDEV_CMD_BIND_RX",
            ),
        };
        progress(format_args!("{what} ifindex {ifindex} fd {fd}"));
        let replies = g
            .transact(&req, seq)
            .map_err(|e| Failure::nl(st, what, e))?;
        let r = replies
            .first()
            .ok_or_else(|| Failure::msg(st, format!("{what}: no reply before the ACK")))?;
        let id = parse_bind_reply(r).map_err(|e| Failure::msg(st, format!("{what}: {e}")))?;
        progress(format_args!("{what}: id {id}"));
        Ok(Binding { sock: Some(g), id })
    }

    /// Closes the netlink socket: the kernel unbinds.
    pub fn unbind(&mut self) {
        self.sock = None;
    }

    pub fn is_bound(&self) -> bool {
        self.sock.is_some()
    }
}

/// A `facts.bindings` entry.
#[derive(Debug, Clone)]
pub struct BindingFact {
    pub id: u32,
    pub dir: &'static str,
    pub dmabuf: String,
    pub ifname: String,
    pub ifindex: u32,
    pub netns: String,
    pub used: bool,
    pub unbound: bool,
}

impl BindingFact {
    fn json(&self) -> Value {
        json!({
            "id": self.id, "dir": self.dir, "dmabuf": self.dmabuf, "ifname": self.ifname,
            "ifindex": self.ifindex, "netns": self.netns, "used": self.used, "unbound": self.unbound,
        })
    }
}

/// The facts a tool collected so far.
#[derive(Debug, Default)]
pub struct Facts {
    pub dmabufs: Vec<Value>,
    pub bindings: Vec<BindingFact>,
}

impl Facts {
    fn json(&self) -> Value {
        json!({
            "dmabufs": self.dmabufs,
            "bindings": self.bindings.iter().map(BindingFact::json).collect::<Vec<_>>(),
        })
    }

    fn add_dmabuf(&mut self, name: &str, size: usize, pages: &[[u64; 2]]) {
        self.dmabufs
            .push(json!({"name": name, "size": size, "pages": pages}));
    }
}

// ---------------------------------------------------------------- cmsg / iovec

/// `CMSG_ALIGN` on x86-64 (aligned to `sizeof(size_t)`).
pub const fn cmsg_align(n: usize) -> usize {
    (n + 7) & !7
}

/// `sizeof(struct cmsghdr)` on x86-64: size_t cmsg_len, int level, int type.
pub const CMSG_HDR: usize = 16;

/// `CMSG_LEN(n)`.
pub const fn cmsg_len(n: usize) -> usize {
    cmsg_align(CMSG_HDR) + n
}

/// `CMSG_SPACE(n)`.
pub const fn cmsg_space(n: usize) -> usize {
    cmsg_align(CMSG_HDR) + cmsg_align(n)
}

/// One `SOL_SOCKET`/`SCM_DEVMEM_DMABUF` cmsg carrying the u32 binding id, as
/// the kernel's `sock_cmsg_send` expects it (data exactly a u32).
pub fn devmem_tx_cmsg(id: u32) -> Vec<u8> {
    let mut b = vec![0u8; cmsg_space(4)];
    b[0..8].copy_from_slice(&(cmsg_len(4) as u64).to_ne_bytes());
    b[8..12].copy_from_slice(&libc::SOL_SOCKET.to_ne_bytes());
    b[12..16].copy_from_slice(&SCM_DEVMEM_DMABUF.to_ne_bytes());
    b[16..20].copy_from_slice(&id.to_ne_bytes());
    b
}

/// One parsed control message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cmsg<'a> {
    pub level: i32,
    pub ty: i32,
    pub data: &'a [u8],
}

/// Splits the used part of a control buffer into messages; a length that
/// does not fit is an error.
pub fn parse_cmsgs(buf: &[u8]) -> Result<Vec<Cmsg<'_>>, String> {
    let mut out = Vec::new();
    let mut off = 0usize;
    while buf.len().saturating_sub(off) >= CMSG_HDR {
        let r = &buf[off..];
        let len = u64::from_ne_bytes(r[0..8].try_into().expect("8")) as usize;
        if len < CMSG_HDR || len > r.len() {
            return Err(format!("cmsg length {len} with {} bytes left", r.len()));
        }
        out.push(Cmsg {
            level: i32::from_ne_bytes(r[8..12].try_into().expect("4")),
            ty: i32::from_ne_bytes(r[12..16].try_into().expect("4")),
            data: &r[CMSG_HDR..len],
        });
        off += cmsg_align(len);
    }
    Ok(out)
}

/// `struct dmabuf_cmsg` (include/uapi/linux/uio.h).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DmabufCmsg {
    pub frag_offset: u64,
    pub frag_size: u32,
    pub frag_token: u32,
    pub dmabuf_id: u32,
    pub flags: u32,
}

impl DmabufCmsg {
    pub fn parse(d: &[u8]) -> Result<DmabufCmsg, String> {
        if d.len() < DMABUF_CMSG_SIZE {
            return Err(format!(
                "dmabuf_cmsg of {} bytes, want {DMABUF_CMSG_SIZE}",
                d.len()
            ));
        }
        let u32_at = |o: usize| u32::from_ne_bytes(d[o..o + 4].try_into().expect("4"));
        Ok(DmabufCmsg {
            frag_offset: u64::from_ne_bytes(d[0..8].try_into().expect("8")),
            frag_size: u32_at(8),
            frag_token: u32_at(12),
            dmabuf_id: u32_at(16),
            flags: u32_at(20),
        })
    }
}

/// A zerocopy completion (`struct sock_extended_err` with origin ZEROCOPY):
/// the notification ids `lo..=hi` and whether the kernel copied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ZcCompletion {
    pub lo: u32,
    pub hi: u32,
    pub copied: bool,
}

/// Parses a `sock_extended_err`; `Ok(None)` if it is not a zerocopy
/// notification, `Err` for a zerocopy one carrying an error.
pub fn parse_zc_completion(d: &[u8]) -> Result<Option<ZcCompletion>, String> {
    if d.len() < SOCK_EXTENDED_ERR_SIZE {
        return Err(format!("sock_extended_err of {} bytes", d.len()));
    }
    let u32_at = |o: usize| u32::from_ne_bytes(d[o..o + 4].try_into().expect("4"));
    let (errno, origin, code) = (u32_at(0), d[4], d[6]);
    if origin != SO_EE_ORIGIN_ZEROCOPY {
        return Ok(None);
    }
    if errno != 0 {
        return Err(format!("zerocopy notification with ee_errno {errno}"));
    }
    Ok(Some(ZcCompletion {
        lo: u32_at(8),
        hi: u32_at(12),
        copied: code & SO_EE_CODE_ZEROCOPY_COPIED != 0,
    }))
}

/// The `(dmabuf offset, length)` iovecs for `len` bytes at dmabuf offset
/// `off`, `chunk` bytes each.
pub fn plan_iovecs(off: u64, len: u64, chunk: u64) -> Vec<(u64, u64)> {
    let chunk = chunk.max(1);
    let mut v = Vec::with_capacity(len.div_ceil(chunk) as usize);
    let mut done = 0;
    while done < len {
        let n = chunk.min(len - done);
        v.push((off + done, n));
        done += n;
    }
    v
}

/// Tokens as `struct dmabuf_token {token_start, token_count}` runs, at most
/// [`MAX_DONTNEED_TOKENS`] runs and [`MAX_DONTNEED_FRAGS`] tokens per batch.
pub fn token_batches(tokens: &[u32]) -> Vec<Vec<(u32, u32)>> {
    let mut batches: Vec<Vec<(u32, u32)>> = Vec::new();
    let mut cur: Vec<(u32, u32)> = Vec::new();
    let mut frags = 0u64;
    for &t in tokens {
        if frags == MAX_DONTNEED_FRAGS {
            batches.push(std::mem::take(&mut cur));
            frags = 0;
        }
        match cur.last_mut() {
            Some((s, n)) if s.checked_add(*n) == Some(t) => *n += 1,
            _ => {
                if cur.len() == MAX_DONTNEED_TOKENS {
                    batches.push(std::mem::take(&mut cur));
                    frags = 0;
                }
                cur.push((t, 1));
            }
        }
        frags += 1;
    }
    if !cur.is_empty() {
        batches.push(cur);
    }
    batches
}

/// `struct dmabuf_token` array bytes.
pub fn encode_tokens(runs: &[(u32, u32)]) -> Vec<u8> {
    runs.iter()
        .flat_map(|(s, n)| s.to_ne_bytes().into_iter().chain(n.to_ne_bytes()))
        .collect()
}

// ---------------------------------------------------------------- TX ring

/// Book-keeping of the dmabuf used as a ring for the TX stream: which stream
/// bytes are written into it (`filled`), handed to the kernel (`sent`) and
/// released by zerocopy completions (`completed`: every completion covering
/// stream bytes below it arrived). Stream byte `o` lives at dmabuf offset
/// `o % size`, so bytes `[filled, completed + size)` may be (re)written.
#[derive(Debug, Clone)]
pub struct TxRing {
    pub size: u64,
    pub filled: u64,
    pub sent: u64,
    pub completed: u64,
    /// Per successful sendmsg (one notification id each, in order): its id,
    /// the stream offset after it, whether its completion arrived.
    pending: VecDeque<(u32, u64, bool)>,
    next_id: u32,
    pub completions: u64,
    pub copied_completions: u64,
    pub zerocopy_completions: u64,
}

impl TxRing {
    pub fn new(size: u64) -> TxRing {
        TxRing {
            size,
            filled: 0,
            sent: 0,
            completed: 0,
            pending: VecDeque::new(),
            next_id: 0,
            completions: 0,
            copied_completions: 0,
            zerocopy_completions: 0,
        }
    }

    /// How many more stream bytes may be written now.
    pub fn fillable(&self) -> u64 {
        (self.completed + self.size).saturating_sub(self.filled)
    }

    pub fn on_filled(&mut self, n: u64) {
        self.filled += n;
        debug_assert!(self.filled <= self.completed + self.size);
    }

    /// The next send: dmabuf offset and length (not crossing the dmabuf's
    /// end), at most `max` bytes; `None` if nothing is filled and unsent.
    pub fn next_send(&self, max: u64) -> Option<(u64, u64)> {
        let avail = self.filled - self.sent;
        if avail == 0 {
            return None;
        }
        let off = self.sent % self.size;
        Some((off, avail.min(self.size - off).min(max)))
    }

    /// A sendmsg accepted `n > 0` bytes: it took the next notification id
    /// (`sk_zckey`, net/core/skbuff.c `msg_zerocopy_realloc`).
    pub fn on_sent(&mut self, n: u64) {
        self.sent += n;
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1);
        self.pending.push_back((id, self.sent, false));
    }

    /// A completion for ids `lo..=hi` (wrapping u32 range).
    pub fn on_completion(&mut self, c: ZcCompletion) {
        let n = u64::from(c.hi.wrapping_sub(c.lo)) + 1;
        self.completions += 1;
        if c.copied {
            self.copied_completions += n;
        } else {
            self.zerocopy_completions += n;
        }
        for p in self.pending.iter_mut() {
            if p.0.wrapping_sub(c.lo) <= c.hi.wrapping_sub(c.lo) {
                p.2 = true;
            }
        }
        while let Some(&(_, end, true)) = self.pending.front() {
            self.completed = end;
            self.pending.pop_front();
        }
    }

    /// Sends whose completion has not arrived.
    pub fn outstanding(&self) -> usize {
        self.pending.len()
    }
}

// ---------------------------------------------------------------- options

/// Parsed command line of the devmem tools.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Opts {
    pub dev: String,
    pub netns: Option<String>,
    pub addr: Option<SocketAddr>,
    pub bytes: Option<u64>,
    pub seed: u64,
    pub dmabuf_size: Option<u64>,
    pub chunk: Option<u64>,
    pub spare_binding: bool,
    pub unbind_after: Option<u64>,
    /// After the unbind at `unbind_after`, bind the dmabuf again on the
    /// same device and send the rest with the new binding.
    pub rebind: bool,
    /// Close the socket once the kernel accepted this many bytes.
    pub close_after: Option<u64>,
    pub bind_dev: bool,
    pub timeout: Option<Duration>,
    pub queue: Option<u32>,
    pub fd: Option<i32>,
}

fn parse_num(flag: &str, v: &str) -> Result<u64, String> {
    let v = v.replace('_', "");
    let r = match v.strip_prefix("0x") {
        Some(h) => u64::from_str_radix(h, 16),
        None => v.parse(),
    };
    r.map_err(|e| format!("{flag} {v:?}: {e}"))
}

/// Default dmabuf sizes: TX 4 MiB (a 16 MiB stream then cycles through it),
/// RX 16 MiB (gve's 1024-entry buffer queue plus the page pool's cache).
pub const DEFAULT_TX_DMABUF: u64 = 4 << 20;
pub const DEFAULT_RX_DMABUF: u64 = 16 << 20;
/// Largest dmabuf accepted (udmabuf's default `size_limit_mb` is 64).
pub const MAX_DMABUF: u64 = 1 << 30;
/// Default iovec size.
pub const DEFAULT_CHUNK: u64 = 64 << 10;

/// Parses the arguments of `tool` (one of the devmem tools).
pub fn parse_opts(tool: &str, args: &[String]) -> Result<Opts, String> {
    let allowed: &[&str] = match tool {
        "devmem-tx" => &[
            "--dev",
            "--netns",
            "--connect",
            "--bytes",
            "--seed",
            "--dmabuf-size",
            "--chunk",
            "--spare-binding",
            "--unbind-after",
            "--rebind",
            "--close-after",
            "--bind-dev",
            "--timeout-s",
        ],
        "devmem-rx" => &[
            "--dev",
            "--netns",
            "--listen",
            "--bytes",
            "--seed",
            "--queue",
            "--dmabuf-size",
            "--timeout-s",
        ],
        "bind-tx" => &["--dev", "--netns", "--dmabuf-size", "--fd"],
        "bind-rx" => &["--dev", "--netns", "--queue", "--dmabuf-size", "--fd"],
        _ => return Err(format!("unknown devmem tool {tool:?}")),
    };
    let mut o = Opts::default();
    let mut i = 0;
    while i < args.len() {
        let a = args[i].as_str();
        if !allowed.contains(&a) {
            return Err(format!(
                "unknown argument {a:?} (known: {})",
                allowed.join(" ")
            ));
        }
        if matches!(a, "--spare-binding" | "--bind-dev" | "--rebind") {
            match a {
                "--spare-binding" => o.spare_binding = true,
                "--rebind" => o.rebind = true,
                _ => o.bind_dev = true,
            }
            i += 1;
            continue;
        }
        let v = args
            .get(i + 1)
            .ok_or_else(|| format!("{a} needs a value"))?;
        match a {
            "--dev" => o.dev = v.clone(),
            "--netns" => o.netns = Some(v.clone()),
            "--connect" | "--listen" => {
                o.addr = Some(v.parse().map_err(|e| format!("{a} {v:?}: {e}"))?)
            }
            "--bytes" => o.bytes = Some(parse_num(a, v)?),
            "--seed" => o.seed = parse_num(a, v)?,
            "--dmabuf-size" => o.dmabuf_size = Some(parse_num(a, v)?),
            "--chunk" => o.chunk = Some(parse_num(a, v)?),
            "--unbind-after" => o.unbind_after = Some(parse_num(a, v)?),
            "--close-after" => o.close_after = Some(parse_num(a, v)?),
            "--timeout-s" => o.timeout = Some(Duration::from_secs(parse_num(a, v)?)),
            "--queue" => {
                o.queue = Some(
                    u32::try_from(parse_num(a, v)?).map_err(|_| format!("{a} {v:?} too large"))?,
                )
            }
            "--fd" => {
                o.fd = Some(
                    i32::try_from(parse_num(a, v)?).map_err(|_| format!("{a} {v:?} too large"))?,
                )
            }
            _ => unreachable!("checked against allowed"),
        }
        i += 2;
    }
    if o.dev.is_empty() || o.dev.len() >= 16 || o.dev.contains(['/', '\0']) {
        return Err(format!(
            "--dev IF is required (a valid interface name, got {:?})",
            o.dev
        ));
    }
    if let Some(s) = o.dmabuf_size
        && (s == 0 || !s.is_multiple_of(PAGE_SIZE) || s > MAX_DMABUF)
    {
        return Err(format!(
            "--dmabuf-size {s}: want a positive multiple of {PAGE_SIZE} up to {MAX_DMABUF}"
        ));
    }
    if o.fd.is_some() && o.dmabuf_size.is_some() {
        return Err("--fd and --dmabuf-size exclude each other".into());
    }
    match tool {
        "devmem-tx" | "devmem-rx" => {
            let af = if tool == "devmem-tx" {
                "--connect"
            } else {
                "--listen"
            };
            if o.addr.is_none() {
                return Err(format!("{af} ADDR:PORT is required"));
            }
            if o.bytes.is_none() {
                return Err("--bytes N is required".into());
            }
        }
        _ => {}
    }
    if matches!(tool, "devmem-rx" | "bind-rx") && o.queue.is_none() {
        return Err("--queue Q is required".into());
    }
    if o.rebind && o.unbind_after.is_none() {
        return Err("--rebind needs --unbind-after BYTES".into());
    }
    if let (Some(c), Some(b)) = (o.close_after, o.bytes)
        && (c == 0 || c >= b)
    {
        return Err(format!("--close-after {c}: want 1..{b} (below --bytes)"));
    }
    if let Some(c) = o.chunk {
        let size = o.dmabuf_size.unwrap_or(DEFAULT_TX_DMABUF);
        if c == 0 || c > size {
            return Err(format!("--chunk {c}: want 1..={size} (the dmabuf size)"));
        }
    }
    Ok(o)
}

// ---------------------------------------------------------------- sockets

struct Sock(OwnedFd);

impl Sock {
    fn fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }

    fn setsockopt_bytes(&self, level: i32, opt: i32, v: &[u8]) -> Result<(), i32> {
        // SAFETY: setsockopt reads `v.len()` bytes we own.
        let rc = unsafe {
            libc::setsockopt(
                self.fd(),
                level,
                opt,
                v.as_ptr().cast(),
                v.len() as libc::socklen_t,
            )
        };
        if rc < 0 { Err(last_errno()) } else { Ok(()) }
    }

    fn setsockopt_int(&self, level: i32, opt: i32, v: i32) -> Result<(), i32> {
        self.setsockopt_bytes(level, opt, &v.to_ne_bytes())
    }

    fn set_nonblocking(&self) -> Result<(), i32> {
        // SAFETY: fcntl on our fd.
        let fl = unsafe { libc::fcntl(self.fd(), libc::F_GETFL) };
        // SAFETY: fcntl on our fd.
        if fl < 0 || unsafe { libc::fcntl(self.fd(), libc::F_SETFL, fl | libc::O_NONBLOCK) } < 0 {
            return Err(last_errno());
        }
        Ok(())
    }

    /// poll for `events` up to `until`; returns revents (0 on timeout).
    fn poll(&self, events: i16, until: Instant) -> Result<i16, i32> {
        poll_fd(self.fd(), events, until)
    }
}

/// poll one fd for `events` up to `until`; returns revents (0 on timeout).
fn poll_fd(fd: RawFd, events: i16, until: Instant) -> Result<i16, i32> {
    {
        loop {
            let ms = until
                .saturating_duration_since(Instant::now())
                .as_millis()
                .min(i32::MAX as u128) as i32;
            let mut p = libc::pollfd {
                fd,
                events,
                revents: 0,
            };
            // SAFETY: one valid pollfd.
            let rc = unsafe { libc::poll(&mut p, 1, ms) };
            if rc < 0 {
                let e = last_errno();
                if e == libc::EINTR {
                    continue;
                }
                return Err(e);
            }
            return Ok(if rc == 0 { 0 } else { p.revents });
        }
    }
}

fn sockaddr(addr: &SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: all-zero is a valid sockaddr_storage.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match addr {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_in fits in sockaddr_storage.
            unsafe { std::ptr::write((&raw mut ss).cast(), sin) };
            size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: a.flowinfo(),
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: a.scope_id(),
            };
            // SAFETY: sockaddr_in6 fits in sockaddr_storage.
            unsafe { std::ptr::write((&raw mut ss).cast(), sin6) };
            size_of::<libc::sockaddr_in6>()
        }
    };
    (ss, len as libc::socklen_t)
}

/// A TCP socket (optionally bound to `dev`) with `SO_ZEROCOPY`, connected to
/// `addr` (retrying the transient errors of a fresh link for up to 5 s),
/// then non-blocking.
fn connect_zerocopy(
    addr: &SocketAddr,
    dev: Option<&str>,
    until: Instant,
) -> Result<(Sock, u32), Failure> {
    let start = Instant::now();
    let mut attempts = 0u32;
    loop {
        attempts += 1;
        let fam = if addr.is_ipv4() {
            libc::AF_INET
        } else {
            libc::AF_INET6
        };
        // SAFETY: plain socket(2).
        let fd = unsafe { libc::socket(fam, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(Failure::last("socket", "socket"));
        }
        // SAFETY: fresh fd we own.
        let s = Sock(unsafe { OwnedFd::from_raw_fd(fd) });
        if let Some(d) = dev {
            s.setsockopt_bytes(libc::SOL_SOCKET, SO_BINDTODEVICE, d.as_bytes())
                .map_err(|e| Failure::os("socket", format!("SO_BINDTODEVICE {d}"), e))?;
        }
        s.setsockopt_int(libc::SOL_SOCKET, SO_ZEROCOPY, 1)
            .map_err(|e| Failure::os("socket", "SO_ZEROCOPY", e))?;
        // Bound the blocking connect by the deadline.
        let left = until
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1));
        let tv = libc::timeval {
            tv_sec: left.as_secs() as libc::time_t,
            tv_usec: left.subsec_micros() as libc::suseconds_t,
        };
        // SAFETY: a timeval we own.
        let tvb = unsafe {
            std::slice::from_raw_parts((&raw const tv).cast::<u8>(), size_of::<libc::timeval>())
        };
        s.setsockopt_bytes(libc::SOL_SOCKET, libc::SO_SNDTIMEO, tvb)
            .map_err(|e| Failure::os("socket", "SO_SNDTIMEO", e))?;
        let (ss, len) = sockaddr(addr);
        // SAFETY: connect with a sockaddr we own.
        let rc = unsafe { libc::connect(s.fd(), (&raw const ss).cast(), len) };
        if rc == 0 {
            s.set_nonblocking()
                .map_err(|e| Failure::os("socket", "O_NONBLOCK", e))?;
            return Ok((s, attempts));
        }
        let e = last_errno();
        let transient = matches!(
            e,
            libc::ENETUNREACH | libc::EHOSTUNREACH | libc::ECONNREFUSED
        );
        if transient
            && start.elapsed() < crate::guest_tools::CONNECT_RETRY
            && Instant::now() < until
        {
            // A retry backoff, not synchronisation: nothing signals "route ready".
            std::thread::sleep(Duration::from_millis(20));
            continue;
        }
        return Err(Failure::os("connect", format!("connect {addr}"), e));
    }
}

fn throughput_mbit(bytes: u64, d: Duration) -> f64 {
    let s = d.as_secs_f64();
    if s > 0.0 {
        (bytes as f64 * 8.0 / s / 1e6 * 100.0).round() / 100.0
    } else {
        0.0
    }
}

fn base_out(o: &Opts, tool: &str) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("tool".into(), json!(tool));
    m.insert("dev".into(), json!(o.dev));
    m.insert("netns".into(), json!(o.netns.clone().unwrap_or_default()));
    m
}

fn print_line(m: Map<String, Value>) {
    println!("{}", Value::Object(m));
}

/// The device's ifindex and a dmabuf (recorded in `facts`).
fn setup_dmabuf(
    o: &Opts,
    name: &str,
    default_size: u64,
    facts: &mut Facts,
) -> Result<(u32, Udmabuf), Failure> {
    let ifx = ifindex(&o.dev).map_err(|e| Failure::msg("ifindex", e))?;
    let buf = Udmabuf::create(o.dmabuf_size.unwrap_or(default_size) as usize)?;
    progress(format_args!(
        "udmabuf {name}: {} bytes, fd {}",
        buf.size(),
        buf.fd()
    ));
    let runs = buf.page_runs()?;
    progress(format_args!("udmabuf {name}: {} page runs", runs.len()));
    facts.add_dmabuf(name, buf.size(), &runs);
    Ok((ifx, buf))
}

fn fact(o: &Opts, dir: Dir, id: u32, dmabuf: &str, ifx: u32) -> BindingFact {
    BindingFact {
        id,
        dir: dir.name(),
        dmabuf: dmabuf.into(),
        ifname: o.dev.clone(),
        ifindex: ifx,
        netns: o.netns.clone().unwrap_or_default(),
        used: false,
        unbound: false,
    }
}

// ---------------------------------------------------------------- devmem-tx

/// What `devmem-tx` did after `--unbind-after`.
#[derive(Debug, Clone, Default)]
struct AfterUnbind {
    errno: Option<i32>,
    sent_bytes_after: u64,
}

struct TxRun {
    ring: TxRing,
    connect_attempts: u32,
    t_connected: Option<Instant>,
    t_done: Option<Instant>,
    unbound_at: Option<u64>,
    /// `--rebind`: the stream offset at which the new binding took over.
    rebound_at: Option<u64>,
    /// `--close-after`: the bytes accepted when the socket was closed.
    closed_at: Option<u64>,
    after_unbind: Option<AfterUnbind>,
    sendmsg_calls: u64,
    eagain: u64,
    enobufs: u64,
    peer_closed: bool,
}

/// The largest sendmsg: `UIO_MAXIOV` iovecs and at most 1 MiB.
const MAX_SEND: u64 = 1 << 20;

fn drain_errqueue(s: &Sock, ring: &mut TxRing) -> Result<(), Failure> {
    let mut ctrl = [0u64; 64];
    loop {
        // SAFETY: zeroed msghdr is valid; we set the control buffer we own.
        let mut mh: libc::msghdr = unsafe { std::mem::zeroed() };
        mh.msg_control = ctrl.as_mut_ptr().cast();
        mh.msg_controllen = size_of_val(&ctrl);
        // SAFETY: recvmsg into our buffers.
        let rc = unsafe { libc::recvmsg(s.fd(), &mut mh, MSG_ERRQUEUE | libc::MSG_DONTWAIT) };
        if rc < 0 {
            let e = last_errno();
            if e == libc::EAGAIN || e == libc::EINTR {
                return Ok(());
            }
            return Err(Failure::os("completions", "recvmsg(MSG_ERRQUEUE)", e));
        }
        // SAFETY: the kernel filled msg_controllen bytes of ctrl.
        let bytes = unsafe {
            std::slice::from_raw_parts(
                ctrl.as_ptr().cast::<u8>(),
                mh.msg_controllen.min(size_of_val(&ctrl)),
            )
        };
        let cm = parse_cmsgs(bytes).map_err(|e| Failure::msg("completions", e))?;
        for c in cm {
            if (c.level == SOL_IP && c.ty == IP_RECVERR)
                || (c.level == SOL_IPV6 && c.ty == IPV6_RECVERR)
            {
                match parse_zc_completion(c.data) {
                    Ok(Some(z)) => ring.on_completion(z),
                    Ok(None) => {}
                    Err(e) => return Err(Failure::msg("completions", e)),
                }
            }
        }
    }
}

fn sendmsg_devmem(
    s: &Sock,
    iov: &[(u64, u64)],
    cmsg: &[u64],
    cmsg_len: usize,
) -> Result<usize, i32> {
    let iovs: Vec<libc::iovec> = iov
        .iter()
        .map(|&(off, len)| libc::iovec {
            // The kernel reads iov_base as a byte offset into the dmabuf.
            iov_base: off as usize as *mut libc::c_void,
            iov_len: len as usize,
        })
        .collect();
    // SAFETY: zeroed msghdr is valid.
    let mut mh: libc::msghdr = unsafe { std::mem::zeroed() };
    mh.msg_iov = iovs.as_ptr() as *mut libc::iovec;
    mh.msg_iovlen = iovs.len();
    mh.msg_control = cmsg.as_ptr() as *mut libc::c_void;
    mh.msg_controllen = cmsg_len;
    // SAFETY: sendmsg reads our msghdr, iovecs (offsets, not dereferenced by
    // this process) and control buffer.
    let rc = unsafe { libc::sendmsg(s.fd(), &mh, MSG_ZEROCOPY | libc::MSG_DONTWAIT) };
    if rc < 0 {
        Err(last_errno())
    } else {
        Ok(rc as usize)
    }
}

fn u64_buf(b: &[u8]) -> Vec<u64> {
    let mut v = vec![0u64; b.len().div_ceil(8)];
    for (i, c) in b.chunks(8).enumerate() {
        let mut w = [0u8; 8];
        w[..c.len()].copy_from_slice(c);
        v[i] = u64::from_ne_bytes(w);
    }
    v
}

/// The TX bindings of a `devmem-tx` run: `live[i]` made `facts.bindings[i]`;
/// sends go through `live[active]`.
struct TxBindings<'a> {
    live: &'a mut Vec<Binding>,
    facts: &'a mut Facts,
    active: usize,
    ifindex: u32,
}

impl TxBindings<'_> {
    fn id(&self) -> u32 {
        self.live[self.active].id
    }

    /// Closes the active binding's netlink socket (the kernel unbinds).
    fn unbind(&mut self) {
        self.live[self.active].unbind();
        self.facts.bindings[self.active].unbound = true;
    }

    /// Binds the same dmabuf on the same device again (a new netlink
    /// socket, a new id) and sends through it from now on.
    fn rebind(&mut self, o: &Opts, fd: RawFd) -> Result<(), Failure> {
        let b = Binding::bind(Dir::Tx, self.ifindex, fd).map_err(|mut f| {
            f.stage = "rebind";
            f
        })?;
        self.facts
            .bindings
            .push(fact(o, Dir::Tx, b.id, "tx", self.ifindex));
        self.live.push(b);
        self.active = self.live.len() - 1;
        Ok(())
    }
}

fn tx_transfer(
    o: &Opts,
    buf: &mut Udmabuf,
    tx: &mut TxBindings<'_>,
    run: &mut TxRun,
    until: Instant,
) -> Result<(), Failure> {
    let total = o.bytes.expect("checked");
    let chunk = o.chunk.unwrap_or(DEFAULT_CHUNK);
    let max_call = MAX_SEND.min(chunk * UIO_MAXIOV as u64);
    let addr = o.addr.expect("checked");
    let (s, attempts) = connect_zerocopy(&addr, o.bind_dev.then_some(o.dev.as_str()), until)?;
    run.connect_attempts = attempts;
    run.t_connected = Some(Instant::now());
    progress(format_args!("connected to {addr} ({attempts} attempts)"));
    let mut next_report = 0u64;
    let mut cm = devmem_tx_cmsg(tx.id());
    let mut cm_words = u64_buf(&cm);
    let seed = o.seed;
    let mut stop_sending = false;
    loop {
        if Instant::now() >= until {
            return Err(Failure::msg(
                if run.ring.sent < total && !stop_sending {
                    "sendmsg"
                } else {
                    "completions"
                },
                format!(
                    "timed out: sent {} of {total}, {} sends without completion",
                    run.ring.sent,
                    run.ring.outstanding()
                ),
            ));
        }
        drain_errqueue(&s, &mut run.ring)?;
        if run.ring.sent >= next_report {
            progress(format_args!(
                "sent {} filled {} completed {} outstanding {}",
                run.ring.sent,
                run.ring.filled,
                run.ring.completed,
                run.ring.outstanding()
            ));
            next_report = run.ring.sent + (1 << 20);
        }
        let all_sent = run.ring.sent >= total || stop_sending;
        if all_sent && run.ring.outstanding() == 0 {
            break;
        }
        if let Some(c) = o.close_after
            && run.ring.sent >= c
        {
            // A deliberate close with sends still in flight: tcp_close()
            // queues the FIN behind the accepted data, and the orphaned
            // socket still transmits it (each skb frag keeps its binding
            // referenced: net_devmem_get_net_iov, net/core/devmem.c).
            drop(s);
            progress(format_args!(
                "closed the socket after {} bytes ({} sends without completion)",
                run.ring.sent,
                run.ring.outstanding()
            ));
            run.closed_at = Some(run.ring.sent);
            return Err(Failure::msg(
                "closed",
                format!(
                    "closed the socket after {} of {total} bytes (--close-after)",
                    run.ring.sent
                ),
            ));
        }
        if let Some(u) = o.unbind_after
            && run.unbound_at.is_none()
            && run.ring.sent >= u
        {
            // Closing the netlink socket unbinds (netdev_nl_sock_priv_destroy →
            // net_devmem_unbind_dmabuf, which xa_erase()s the id first).
            tx.unbind();
            progress(format_args!("unbound after {} bytes", run.ring.sent));
            run.unbound_at = Some(run.ring.sent);
            if o.rebind {
                // Instead of sending with the erased id (EINVAL), bind the
                // same dmabuf again: net_devmem_bind_dmabuf() makes a new
                // attachment and id; nothing forbids several TX bindings of
                // one dmabuf on one device, and the old binding lives on
                // (its mapping too) until the skbs that hold its net_iovs
                // are freed (percpu_ref, released after the completions).
                tx.rebind(o, buf.fd())?;
                progress(format_args!("rebound: id {}", tx.id()));
                cm = devmem_tx_cmsg(tx.id());
                cm_words = u64_buf(&cm);
                run.rebound_at = Some(run.ring.sent);
            } else {
                run.after_unbind = Some(AfterUnbind::default());
            }
        }
        // Refill what completions released.
        while run.ring.filled < total && run.ring.fillable() > 0 {
            let at = run.ring.filled;
            let off = at % run.ring.size;
            let n = run
                .ring
                .fillable()
                .min(total - at)
                .min(run.ring.size - off)
                .min(MAX_SEND);
            buf.write_with(off as usize, n as usize, |b| fill_pattern(seed, at, b))?;
            run.ring.on_filled(n);
        }
        // A send never crosses the close point: the kernel accepts at most
        // `close_after` bytes in all.
        let max_now = o
            .close_after
            .map_or(max_call, |c| max_call.min(c.saturating_sub(run.ring.sent)));
        let next = if stop_sending {
            None
        } else {
            run.ring.next_send(max_now)
        };
        let Some((off, len)) = next else {
            // Everything filled is in flight: wait for completions.
            let ev = s
                .poll(0, until)
                .map_err(|e| Failure::os("completions", "poll", e))?;
            if ev & (libc::POLLHUP | libc::POLLNVAL) != 0 && ev & libc::POLLERR == 0 {
                return Err(Failure::msg(
                    "completions",
                    format!(
                        "socket closed (revents {ev:#x}) with {} sends outstanding",
                        run.ring.outstanding()
                    ),
                ));
            }
            continue;
        };
        let iov = plan_iovecs(off, len, chunk);
        run.sendmsg_calls += 1;
        match sendmsg_devmem(&s, &iov, &cm_words, cm.len()) {
            Ok(0) => {
                return Err(Failure::msg("sendmsg", "sendmsg accepted 0 bytes"));
            }
            Ok(n) => {
                run.ring.on_sent(n as u64);
                tx.facts.bindings[tx.active].used = true;
                if let (Some(a), Some(at)) = (run.after_unbind.as_mut(), run.unbound_at) {
                    a.sent_bytes_after = run.ring.sent - at;
                }
            }
            Err(libc::EINTR) => {}
            Err(libc::EAGAIN) => {
                run.eagain += 1;
                s.poll(libc::POLLOUT, until)
                    .map_err(|e| Failure::os("sendmsg", "poll", e))?;
            }
            Err(libc::ENOBUFS) => {
                // optmem for the notification skb ran out: completions free it.
                run.enobufs += 1;
                let cap = Instant::now() + Duration::from_millis(10);
                s.poll(0, cap.min(until))
                    .map_err(|e| Failure::os("sendmsg", "poll", e))?;
            }
            Err(e) => {
                if let Some(a) = run.after_unbind.as_mut() {
                    // After the unbind the id is gone from the global xarray:
                    // tcp_sendmsg_locked → net_devmem_get_binding →
                    // net_devmem_lookup_dmabuf() finds nothing → -EINVAL
                    // (net/core/devmem.c; net/ipv4/tcp.c passes it out
                    // through sk_stream_error). Data already queued keeps
                    // its own binding references and still completes.
                    a.errno = Some(e);
                    stop_sending = true;
                    continue;
                }
                return Err(Failure::os(
                    "sendmsg",
                    format!("sendmsg(MSG_ZEROCOPY) {len} bytes at dmabuf offset {off}"),
                    e,
                ));
            }
        }
    }
    run.t_done = Some(Instant::now());
    progress(format_args!(
        "{} bytes sent and completed; waiting for the peer to close",
        run.ring.sent
    ));
    // End of stream; the sink closes once it has read (and verified) all.
    // SAFETY: shutdown on our socket.
    unsafe { libc::shutdown(s.fd(), libc::SHUT_WR) };
    let mut b = [0u8; 256];
    loop {
        let ev = s
            .poll(libc::POLLIN, until)
            .map_err(|e| Failure::os("close", "poll", e))?;
        if ev == 0 {
            return Err(Failure::msg(
                "close",
                "the peer did not close the connection in time",
            ));
        }
        // SAFETY: read into our buffer.
        let n = unsafe { libc::read(s.fd(), b.as_mut_ptr().cast(), b.len()) };
        if n == 0 {
            run.peer_closed = true;
            return Ok(());
        }
        if n < 0 {
            let e = last_errno();
            if e == libc::EAGAIN || e == libc::EINTR {
                continue;
            }
            if e == libc::ECONNRESET {
                run.peer_closed = true;
                return Ok(());
            }
            return Err(Failure::os("close", "read", e));
        }
    }
}

fn devmem_tx(o: &Opts) -> (Map<String, Value>, bool) {
    let mut out = base_out(o, "devmem-tx");
    let mut facts = Facts::default();
    let t0 = Instant::now();
    let until = t0 + o.timeout.unwrap_or(Duration::from_secs(60));
    let total = o.bytes.expect("checked");
    let mut bindings: Vec<Binding> = Vec::new();
    let mut run = TxRun {
        ring: TxRing::new(o.dmabuf_size.unwrap_or(DEFAULT_TX_DMABUF)),
        connect_attempts: 0,
        t_connected: None,
        t_done: None,
        unbound_at: None,
        rebound_at: None,
        closed_at: None,
        after_unbind: None,
        sendmsg_calls: 0,
        eagain: 0,
        enobufs: 0,
        peer_closed: false,
    };
    let res = (|| -> Result<(), Failure> {
        let (ifx, mut buf) = setup_dmabuf(o, "tx", DEFAULT_TX_DMABUF, &mut facts)?;
        let b = Binding::bind(Dir::Tx, ifx, buf.fd())?;
        facts.bindings.push(fact(o, Dir::Tx, b.id, "tx", ifx));
        bindings.push(b);
        if o.spare_binding {
            let b = Binding::bind(Dir::Tx, ifx, buf.fd())?;
            facts.bindings.push(fact(o, Dir::Tx, b.id, "tx", ifx));
            bindings.push(b);
        }
        let mut tx = TxBindings {
            live: &mut bindings,
            facts: &mut facts,
            active: 0,
            ifindex: ifx,
        };
        tx_transfer(o, &mut buf, &mut tx, &mut run, until)
    })();
    let ok = match &res {
        Ok(()) => {
            out.insert("ok".into(), json!(true));
            true
        }
        Err(f) => {
            f.put(&mut out);
            false
        }
    };
    let end = run.t_done.unwrap_or_else(Instant::now);
    let xfer = run
        .t_connected
        .map(|c| end.saturating_duration_since(c))
        .unwrap_or_default();
    let mut p = Map::new();
    p.insert("bytes".into(), json!(total));
    p.insert("sent_bytes".into(), json!(run.ring.sent));
    p.insert("seed".into(), json!(o.seed));
    p.insert("dmabuf_size".into(), json!(run.ring.size));
    p.insert("chunk".into(), json!(o.chunk.unwrap_or(DEFAULT_CHUNK)));
    p.insert("sendmsg_calls".into(), json!(run.sendmsg_calls));
    p.insert("eagain".into(), json!(run.eagain));
    p.insert("enobufs".into(), json!(run.enobufs));
    p.insert(
        "completions".into(),
        json!({
            "notifications": run.ring.completions,
            "ids_zerocopy": run.ring.zerocopy_completions,
            "ids_copied": run.ring.copied_completions,
            "outstanding": run.ring.outstanding(),
        }),
    );
    p.insert("connect_attempts".into(), json!(run.connect_attempts));
    p.insert("transfer_ms".into(), json!(xfer.as_millis() as u64));
    p.insert("elapsed_ms".into(), json!(t0.elapsed().as_millis() as u64));
    p.insert(
        "throughput_mbit_s".into(),
        json!(throughput_mbit(run.ring.sent, xfer)),
    );
    p.insert("peer_closed".into(), json!(run.peer_closed));
    if run.unbound_at.is_some() {
        p.insert("unbound_at_bytes".into(), json!(run.unbound_at));
    }
    if let Some(r) = run.rebound_at {
        p.insert("rebound_at_bytes".into(), json!(r));
    }
    if let Some(c) = run.closed_at {
        p.insert("closed_at_bytes".into(), json!(c));
    }
    if let Some(a) = &run.after_unbind {
        p.insert(
            "after_unbind".into(),
            json!({
                "errno": a.errno,
                "errno_name": a.errno.map(errno_name),
                "sent_bytes_after": a.sent_bytes_after,
            }),
        );
    }
    out.insert("facts".into(), facts.json());
    out.insert("payload".into(), Value::Object(p));
    // The bindings stay alive until here (after all completions).
    progress("closing the bindings");
    drop(bindings);
    progress("done");
    (out, ok)
}

// ---------------------------------------------------------------- devmem-rx

#[derive(Debug, Default)]
struct RxStats {
    received: u64,
    verified: u64,
    devmem_bytes: u64,
    linear_bytes: u64,
    plain_bytes: u64,
    frags: u64,
    recvmsg_calls: u64,
    tokens_returned: u64,
    first_bad: Option<u64>,
    foreign_ids: u64,
    peer: Option<String>,
    t_accept: Option<Instant>,
    t_eof: Option<Instant>,
}

impl RxStats {
    /// Verifies `data` at the current stream offset and advances.
    fn take(&mut self, seed: u64, data: &[u8]) {
        if self.first_bad.is_none() {
            match first_mismatch(seed, self.received, data) {
                None => self.verified += data.len() as u64,
                Some(off) => {
                    self.verified += off - self.received;
                    self.first_bad = Some(off);
                }
            }
        }
        self.received += data.len() as u64;
    }
}

fn rx_transfer(
    o: &Opts,
    buf: &Udmabuf,
    id: u32,
    listener: &TcpListener,
    st: &mut RxStats,
    until: Instant,
) -> Result<(), Failure> {
    let ev = poll_fd(listener.as_raw_fd(), libc::POLLIN, until)
        .map_err(|e| Failure::os("accept", "poll", e))?;
    if ev == 0 {
        return Err(Failure::msg("accept", "no connection before the timeout"));
    }
    let (stream, peer) = listener
        .accept()
        .map_err(|e| Failure::os("accept", "accept", e.raw_os_error().unwrap_or(0)))?;
    st.peer = Some(peer.to_string());
    progress(format_args!("accepted {peer}"));
    let mut next_report = 0u64;
    st.t_accept = Some(Instant::now());
    let s = Sock(OwnedFd::from(stream));
    s.set_nonblocking()
        .map_err(|e| Failure::os("recvmsg", "O_NONBLOCK", e))?;
    let seed = o.seed;
    let mut iobuf = vec![0u8; 64 << 10];
    let mut ctrl = vec![0u64; (80 << 10) / 8];
    let mut frag = Vec::new();
    loop {
        if Instant::now() >= until {
            return Err(Failure::msg(
                "recvmsg",
                format!("timed out after {} bytes", st.received),
            ));
        }
        let mut iov = libc::iovec {
            iov_base: iobuf.as_mut_ptr().cast(),
            iov_len: iobuf.len(),
        };
        // SAFETY: zeroed msghdr is valid; buffers are ours.
        let mut mh: libc::msghdr = unsafe { std::mem::zeroed() };
        mh.msg_iov = &mut iov;
        mh.msg_iovlen = 1;
        mh.msg_control = ctrl.as_mut_ptr().cast();
        mh.msg_controllen = ctrl.len() * 8;
        // SAFETY: recvmsg into our buffers.
        let rc = unsafe { libc::recvmsg(s.fd(), &mut mh, MSG_SOCK_DEVMEM) };
        st.recvmsg_calls += 1;
        if rc < 0 {
            let e = last_errno();
            if e == libc::EINTR {
                continue;
            }
            if e == libc::EAGAIN {
                s.poll(libc::POLLIN, until)
                    .map_err(|e| Failure::os("recvmsg", "poll", e))?;
                continue;
            }
            return Err(Failure::os(
                "recvmsg",
                format!("recvmsg(MSG_SOCK_DEVMEM) after {} bytes", st.received),
                e,
            ));
        }
        if rc == 0 {
            st.t_eof = Some(Instant::now());
            return Ok(());
        }
        let n = rc as usize;
        if st.received >= next_report {
            progress(format_args!(
                "received {} (devmem {} linear {} plain {})",
                st.received, st.devmem_bytes, st.linear_bytes, st.plain_bytes
            ));
            next_report = st.received + (1 << 20);
        }
        if mh.msg_flags & MSG_CTRUNC != 0 {
            return Err(Failure::msg(
                "recvmsg",
                "control data truncated (MSG_CTRUNC)",
            ));
        }
        // SAFETY: the kernel filled msg_controllen bytes of ctrl.
        let cbytes = unsafe {
            std::slice::from_raw_parts(
                ctrl.as_ptr().cast::<u8>(),
                mh.msg_controllen.min(ctrl.len() * 8),
            )
        };
        let cms = parse_cmsgs(cbytes).map_err(|e| Failure::msg("recvmsg", e))?;
        let mut tokens = Vec::new();
        let mut linear_pos = 0usize;
        let mut accounted = 0usize;
        let mut devmem_seen = false;
        for c in &cms {
            if c.level != libc::SOL_SOCKET || !matches!(c.ty, SCM_DEVMEM_LINEAR | SCM_DEVMEM_DMABUF)
            {
                continue;
            }
            devmem_seen = true;
            let d = DmabufCmsg::parse(c.data).map_err(|e| Failure::msg("recvmsg", e))?;
            let size = d.frag_size as usize;
            if c.ty == SCM_DEVMEM_LINEAR {
                let data = iobuf.get(linear_pos..linear_pos + size).ok_or_else(|| {
                    Failure::msg(
                        "recvmsg",
                        format!("SCM_DEVMEM_LINEAR of {size} bytes beyond the {n} received"),
                    )
                })?;
                st.take(seed, data);
                st.linear_bytes += size as u64;
                linear_pos += size;
            } else {
                tokens.push(d.frag_token);
                if d.dmabuf_id != id {
                    st.foreign_ids += 1;
                    return Err(Failure::msg(
                        "recvmsg",
                        format!(
                            "fragment of dmabuf id {} (ours is {id}): flow steering error",
                            d.dmabuf_id
                        ),
                    ));
                }
                frag.resize(size, 0);
                buf.read_into(d.frag_offset, &mut frag)?;
                st.take(seed, &frag);
                st.devmem_bytes += size as u64;
                st.frags += 1;
            }
            accounted += size;
        }
        if !devmem_seen {
            // A readable skb: the data is plain in the iovec.
            st.take(seed, &iobuf[..n]);
            st.plain_bytes += n as u64;
            accounted = n;
        }
        for batch in token_batches(&tokens) {
            let want: u64 = batch.iter().map(|&(_, c)| u64::from(c)).sum();
            let b = encode_tokens(&batch);
            // SAFETY: setsockopt reads our token array.
            let rc = unsafe {
                libc::setsockopt(
                    s.fd(),
                    libc::SOL_SOCKET,
                    SO_DEVMEM_DONTNEED,
                    b.as_ptr().cast(),
                    b.len() as libc::socklen_t,
                )
            };
            if rc < 0 {
                return Err(Failure::last("dontneed", "SO_DEVMEM_DONTNEED"));
            }
            if rc as u64 != want {
                return Err(Failure::msg(
                    "dontneed",
                    format!("SO_DEVMEM_DONTNEED freed {rc} of {want} tokens"),
                ));
            }
            st.tokens_returned += want;
        }
        if accounted != n {
            return Err(Failure::msg(
                "recvmsg",
                format!("recvmsg returned {n} bytes but its cmsgs describe {accounted}"),
            ));
        }
    }
}

fn devmem_rx(o: &Opts) -> (Map<String, Value>, bool) {
    let mut out = base_out(o, "devmem-rx");
    let mut facts = Facts::default();
    let t0 = Instant::now();
    let until = t0 + o.timeout.unwrap_or(Duration::from_secs(60));
    let total = o.bytes.expect("checked");
    let queue = o.queue.expect("checked");
    let mut st = RxStats::default();
    let mut binding = None;
    let res = (|| -> Result<(), Failure> {
        let (ifx, buf) = setup_dmabuf(o, "rx", DEFAULT_RX_DMABUF, &mut facts)?;
        let b = Binding::bind(Dir::Rx { queue }, ifx, buf.fd())?;
        facts
            .bindings
            .push(fact(o, Dir::Rx { queue }, b.id, "rx", ifx));
        let id = b.id;
        binding = Some(b);
        let addr = o.addr.expect("checked");
        let l = TcpListener::bind(addr).map_err(|e| {
            Failure::os(
                "listen",
                format!("listen on {addr}"),
                e.raw_os_error().unwrap_or(0),
            )
        })?;
        let r = rx_transfer(o, &buf, id, &l, &mut st, until);
        facts.bindings[0].used = st.devmem_bytes + st.linear_bytes > 0;
        r?;
        if st.plain_bytes > 0 {
            return Err(Failure::msg(
                "recvmsg",
                format!(
                    "{} bytes arrived outside devmem (no devmem cmsg): the flow was not steered to queue {queue}",
                    st.plain_bytes
                ),
            ));
        }
        if st.first_bad.is_some() || st.received != total || st.verified != total {
            return Err(Failure::msg(
                "verify",
                format!(
                    "received {} verified {} of {total}",
                    st.received, st.verified
                ),
            ));
        }
        Ok(())
    })();
    let ok = match &res {
        Ok(()) => {
            out.insert("ok".into(), json!(true));
            true
        }
        Err(f) => {
            f.put(&mut out);
            false
        }
    };
    let xfer = match (st.t_accept, st.t_eof) {
        (Some(a), Some(e)) => e - a,
        (Some(a), None) => a.elapsed(),
        _ => Duration::ZERO,
    };
    out.insert("facts".into(), facts.json());
    out.insert(
        "payload".into(),
        json!({
            "bytes": total,
            "received_bytes": st.received,
            "verified_bytes": st.verified.min(total),
            "first_bad_offset": st.first_bad,
            "devmem_bytes": st.devmem_bytes,
            "linear_bytes": st.linear_bytes,
            "plain_bytes": st.plain_bytes,
            "frags": st.frags,
            "tokens_returned": st.tokens_returned,
            "recvmsg_calls": st.recvmsg_calls,
            "queue": queue,
            "peer": st.peer,
            "transfer_ms": xfer.as_millis() as u64,
            "elapsed_ms": t0.elapsed().as_millis() as u64,
            "throughput_mbit_s": throughput_mbit(st.received, xfer),
        }),
    );
    drop(binding);
    (out, ok)
}

// ---------------------------------------------------------------- bind-tx / bind-rx

fn bind_once(o: &Opts, dir: Dir) -> (Map<String, Value>, bool) {
    let mut out = base_out(o, if dir == Dir::Tx { "bind-tx" } else { "bind-rx" });
    let mut facts = Facts::default();
    let mut keep = None;
    let res = (|| -> Result<u32, Failure> {
        let (ifx, fd) = match o.fd {
            Some(fd) => (ifindex(&o.dev).map_err(|e| Failure::msg("ifindex", e))?, fd),
            None => {
                let def = if dir == Dir::Tx {
                    DEFAULT_TX_DMABUF
                } else {
                    DEFAULT_RX_DMABUF
                };
                let (ifx, buf) = setup_dmabuf(o, dir.name(), def, &mut facts)?;
                let fd = buf.fd();
                keep = Some(buf);
                (ifx, fd)
            }
        };
        out.insert("ifindex".into(), json!(ifx));
        out.insert("fd".into(), json!(fd));
        let b = Binding::bind(dir, ifx, fd)?;
        let id = b.id;
        facts.bindings.push(fact(
            o,
            dir,
            id,
            if o.fd.is_some() { "" } else { dir.name() },
            ifx,
        ));
        // Unbound when the tool exits (after printing).
        std::mem::forget(b);
        Ok(id)
    })();
    let ok = match res {
        Ok(id) => {
            out.insert("ok".into(), json!(true));
            out.insert("id".into(), json!(id));
            true
        }
        Err(f) => {
            f.put(&mut out);
            false
        }
    };
    out.insert("facts".into(), facts.json());
    out.insert("payload".into(), json!({}));
    drop(keep);
    (out, ok)
}

// ---------------------------------------------------------------- entry

/// Entry point of `devmem-tx`, `devmem-rx`, `bind-tx`, `bind-rx`; the exit code.
pub fn main(tool: &str, args: &[String]) -> i32 {
    let o = match parse_opts(tool, args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("netmem-lab {tool}: {e}");
            println!("{}", json!({"ok": false, "stage": "usage", "error": e}));
            return 2;
        }
    };
    if let Some(ns) = &o.netns
        && let Err(e) = enter_netns(ns)
    {
        let mut m = base_out(&o, tool);
        Failure::msg("netns", e).put(&mut m);
        print_line(m);
        return 1;
    }
    let (m, ok) = match tool {
        "devmem-tx" => devmem_tx(&o),
        "devmem-rx" => devmem_rx(&o),
        "bind-tx" => bind_once(&o, Dir::Tx),
        _ => bind_once(
            &o,
            Dir::Rx {
                queue: o.queue.expect("checked"),
            },
        ),
    };
    print_line(m);
    if ok { 0 } else { 1 }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn constants_agree_with_libc() {
        assert_eq!(MFD_ALLOW_SEALING, libc::MFD_ALLOW_SEALING);
        assert_eq!(MFD_CLOEXEC, libc::MFD_CLOEXEC);
        assert_eq!(F_ADD_SEALS, libc::F_ADD_SEALS);
        assert_eq!(F_SEAL_SHRINK, libc::F_SEAL_SHRINK);
        assert_eq!(SO_BINDTODEVICE, libc::SO_BINDTODEVICE);
        assert_eq!(SO_ZEROCOPY, libc::SO_ZEROCOPY);
        assert_eq!(MSG_ZEROCOPY, libc::MSG_ZEROCOPY);
        assert_eq!(MSG_ERRQUEUE, libc::MSG_ERRQUEUE);
        assert_eq!(MSG_CTRUNC, libc::MSG_CTRUNC);
        assert_eq!(SOL_IP, libc::SOL_IP);
        assert_eq!(IP_RECVERR, libc::IP_RECVERR);
        assert_eq!(SOL_IPV6, libc::SOL_IPV6);
        assert_eq!(IPV6_RECVERR, libc::IPV6_RECVERR);
        assert_eq!(UIO_MAXIOV, libc::UIO_MAXIOV as usize);
        assert_eq!(size_of::<libc::sock_extended_err>(), SOCK_EXTENDED_ERR_SIZE);
        // _IOW('u', 0x42, 24) and _IOW('b', 0, 8), computed by hand.
        assert_eq!(UDMABUF_CREATE, 0x4018_7542);
        assert_eq!(DMA_BUF_IOCTL_SYNC, 0x4008_6200);
        // SAFETY: CMSG_* are pure arithmetic.
        unsafe {
            assert_eq!(cmsg_space(4), libc::CMSG_SPACE(4) as usize);
            assert_eq!(cmsg_len(4), libc::CMSG_LEN(4) as usize);
            assert_eq!(cmsg_space(DMABUF_CMSG_SIZE), libc::CMSG_SPACE(24) as usize);
        }
    }

    #[test]
    #[cfg(target_endian = "little")]
    fn tx_cmsg_exact_bytes() {
        #[rustfmt::skip]
        let want: Vec<u8> = vec![
            20, 0, 0, 0, 0, 0, 0, 0, // cmsg_len = CMSG_LEN(4)
            1, 0, 0, 0,              // SOL_SOCKET
            79, 0, 0, 0,             // SCM_DEVMEM_DMABUF
            0x07, 0x01, 0, 0,        // id 263
            0, 0, 0, 0,              // CMSG_SPACE padding
        ];
        assert_eq!(devmem_tx_cmsg(263), want);
        let c = parse_cmsgs(&want).unwrap();
        assert_eq!(c.len(), 1);
        assert_eq!(
            (c[0].level, c[0].ty, c[0].data),
            (libc::SOL_SOCKET, 79, &[7u8, 1, 0, 0][..])
        );
    }

    fn dmabuf_cmsg_bytes(ty: i32, off: u64, size: u32, token: u32, id: u32) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&(cmsg_len(24) as u64).to_ne_bytes());
        b.extend_from_slice(&libc::SOL_SOCKET.to_ne_bytes());
        b.extend_from_slice(&ty.to_ne_bytes());
        b.extend_from_slice(&off.to_ne_bytes());
        for v in [size, token, id, 0] {
            b.extend_from_slice(&v.to_ne_bytes());
        }
        b
    }

    #[test]
    fn dmabuf_cmsgs_parse_in_order() {
        let mut buf = dmabuf_cmsg_bytes(SCM_DEVMEM_LINEAR, 0, 66, 0, 0);
        buf.extend(dmabuf_cmsg_bytes(SCM_DEVMEM_DMABUF, 0x12_3000, 4030, 17, 5));
        let c = parse_cmsgs(&buf).unwrap();
        assert_eq!(c.len(), 2);
        assert_eq!(c[0].ty, SCM_DEVMEM_LINEAR);
        assert_eq!(DmabufCmsg::parse(c[0].data).unwrap().frag_size, 66);
        let d = DmabufCmsg::parse(c[1].data).unwrap();
        assert_eq!(
            d,
            DmabufCmsg {
                frag_offset: 0x12_3000,
                frag_size: 4030,
                frag_token: 17,
                dmabuf_id: 5,
                flags: 0
            }
        );
        // Truncated and oversized lengths are errors, never a panic.
        assert!(DmabufCmsg::parse(&c[1].data[..20]).is_err());
        let mut bad = buf.clone();
        bad[40..48].copy_from_slice(&1000u64.to_ne_bytes());
        assert!(parse_cmsgs(&bad).is_err());
        bad[40..48].copy_from_slice(&3u64.to_ne_bytes());
        assert!(parse_cmsgs(&bad).is_err());
        // Fewer bytes than a header at the end are ignored (as CMSG_NXTHDR does).
        assert_eq!(parse_cmsgs(&buf[..buf.len() - 40 + 8]).unwrap().len(), 1);
    }

    #[test]
    fn zerocopy_completion_parsing() {
        let mut e = [0u8; 16];
        e[4] = SO_EE_ORIGIN_ZEROCOPY;
        e[8..12].copy_from_slice(&3u32.to_ne_bytes());
        e[12..16].copy_from_slice(&9u32.to_ne_bytes());
        assert_eq!(
            parse_zc_completion(&e).unwrap(),
            Some(ZcCompletion {
                lo: 3,
                hi: 9,
                copied: false
            })
        );
        e[6] = SO_EE_CODE_ZEROCOPY_COPIED;
        assert!(parse_zc_completion(&e).unwrap().unwrap().copied);
        e[4] = 2; // ICMP
        assert_eq!(parse_zc_completion(&e).unwrap(), None);
        e[4] = SO_EE_ORIGIN_ZEROCOPY;
        e[0] = 5;
        assert!(parse_zc_completion(&e).is_err());
        assert!(parse_zc_completion(&e[..15]).is_err());
    }

    #[test]
    fn iovecs_are_offsets_in_chunks() {
        assert_eq!(
            plan_iovecs(4096, 10_000, 4096),
            vec![(4096, 4096), (8192, 4096), (12288, 1808)]
        );
        assert_eq!(plan_iovecs(0, 0, 4096), vec![]);
        assert_eq!(plan_iovecs(7, 5, 100), vec![(7, 5)]);
    }

    #[test]
    fn page_runs_compress_contiguous_pages() {
        let g = |p: u64| p * PAGE_SIZE;
        assert_eq!(compress_runs(&[]), Vec::<[u64; 2]>::new());
        assert_eq!(
            compress_runs(&[g(100), g(101), g(102), g(7), g(8), g(200), g(199)]),
            vec![[g(100), 3], [g(7), 2], [g(200), 1], [g(199), 1]]
        );
        assert_eq!(
            pagemap_entry_gpa(PAGEMAP_PRESENT | 0x1234),
            Some(0x1234 * 4096)
        );
        assert_eq!(pagemap_entry_gpa(0x1234), None); // not present
        assert_eq!(pagemap_entry_gpa(PAGEMAP_PRESENT), None); // PFN hidden (not root)
        // Flag bits 55-62 are not part of the PFN.
        assert_eq!(
            pagemap_entry_gpa(PAGEMAP_PRESENT | (1 << 55) | 5),
            Some(5 * 4096)
        );
    }

    /// The BIND_TX / BIND_RX requests against bytes built by hand from
    /// include/uapi/linux/netdev.h and netlink.h.
    #[test]
    #[cfg(target_endian = "little")]
    fn bind_requests_exact_bytes() {
        #[rustfmt::skip]
        let tx: Vec<u8> = vec![
            36, 0, 0, 0,   // nlmsg_len
            0x1c, 0,       // family id
            5, 0,          // NLM_F_REQUEST | NLM_F_ACK
            9, 0, 0, 0,    // seq
            0, 0, 0, 0,    // pid
            15, 1, 0, 0,   // NETDEV_CMD_BIND_TX, version 1
            8, 0, 1, 0, 2, 0, 0, 0,  // NETDEV_A_DMABUF_IFINDEX = 2
            8, 0, 3, 0, 5, 0, 0, 0,  // NETDEV_A_DMABUF_FD = 5
        ];
        assert_eq!(bind_tx_request(0x1c, 9, 2, 5), tx);
        #[rustfmt::skip]
        let rx: Vec<u8> = vec![
            56, 0, 0, 0,
            0x1c, 0,
            5, 0,
            10, 0, 0, 0,
            0, 0, 0, 0,
            13, 1, 0, 0,   // NETDEV_CMD_BIND_RX
            8, 0, 1, 0, 2, 0, 0, 0,
            8, 0, 3, 0, 5, 0, 0, 0,
            20, 0, 2, 0x80,          // NETDEV_A_DMABUF_QUEUES | NLA_F_NESTED
            8, 0, 1, 0, 3, 0, 0, 0,  //   NETDEV_A_QUEUE_ID = 3
            8, 0, 3, 0, 0, 0, 0, 0,  //   NETDEV_A_QUEUE_TYPE = rx
        ];
        assert_eq!(bind_rx_request(0x1c, 10, 2, 5, 3), rx);
        // A reply: genl header + NETDEV_A_DMABUF_ID.
        let reply = [15u8, 1, 0, 0, 8, 0, 4, 0, 42, 0, 0, 0];
        assert_eq!(parse_bind_reply(&reply), Ok(42));
        assert!(parse_bind_reply(&reply[..4]).is_err());
        assert!(parse_bind_reply(&[15u8, 1]).is_err());
        assert!(parse_bind_reply(&[15u8, 1, 0, 0, 6, 0, 4, 0, 42, 0, 0, 0]).is_err());
    }

    #[test]
    fn tx_ring_refills_only_after_completions() {
        let mut r = TxRing::new(8192);
        assert_eq!(r.fillable(), 8192);
        r.on_filled(8192);
        assert_eq!(r.fillable(), 0);
        assert_eq!(r.next_send(5000), Some((0, 5000)));
        r.on_sent(5000); // id 0
        assert_eq!(r.next_send(5000), Some((5000, 3192)));
        r.on_sent(3192); // id 1
        assert_eq!(r.next_send(5000), None);
        // Out of order: id 1 first releases nothing.
        r.on_completion(ZcCompletion {
            lo: 1,
            hi: 1,
            copied: false,
        });
        assert_eq!((r.completed, r.fillable(), r.outstanding()), (0, 0, 2));
        r.on_completion(ZcCompletion {
            lo: 0,
            hi: 0,
            copied: true,
        });
        assert_eq!(
            (r.completed, r.fillable(), r.outstanding()),
            (8192, 8192, 0)
        );
        assert_eq!(
            (r.completions, r.zerocopy_completions, r.copied_completions),
            (2, 1, 1)
        );
        // Wraps: the next send starts at dmabuf offset 0 again.
        r.on_filled(4096);
        assert_eq!(r.next_send(1 << 20), Some((0, 4096)));
        r.on_sent(4096); // id 2
        r.on_sent(0); // id 3 (a send that the test pretends took 0 more bytes)
        r.on_completion(ZcCompletion {
            lo: 2,
            hi: 3,
            copied: false,
        });
        assert_eq!((r.completed, r.outstanding()), (12288, 0));
    }

    #[test]
    fn tx_ring_id_ranges_wrap() {
        let mut r = TxRing::new(1 << 20);
        r.next_id = u32::MAX - 1;
        r.on_filled(3000);
        for _ in 0..3 {
            r.on_sent(1000);
        }
        r.on_completion(ZcCompletion {
            lo: u32::MAX - 1,
            hi: 0,
            copied: false,
        });
        assert_eq!(
            (r.completed, r.outstanding(), r.zerocopy_completions),
            (3000, 0, 3)
        );
    }

    #[test]
    fn dontneed_batches_merge_and_cap() {
        assert_eq!(
            token_batches(&[5, 6, 7, 9, 10, 2]),
            vec![vec![(5, 3), (9, 2), (2, 1)]]
        );
        let scattered: Vec<u32> = (0..300).map(|i| i * 2).collect();
        let b = token_batches(&scattered);
        assert_eq!(
            b.iter().map(Vec::len).collect::<Vec<_>>(),
            vec![128, 128, 44]
        );
        let run: Vec<u32> = (0..2500).collect();
        let b = token_batches(&run);
        assert_eq!(
            b,
            vec![vec![(0, 1024)], vec![(1024, 1024)], vec![(2048, 452)]]
        );
        assert_eq!(
            encode_tokens(&[(1, 2)]),
            [1u32.to_ne_bytes(), 2u32.to_ne_bytes()].concat()
        );
    }

    #[test]
    fn argument_parsing() {
        let o = parse_opts(
            "devmem-tx",
            &args("--dev eth0 --netns a --connect 10.0.0.2:5201 --bytes 0x1000000 --seed 3 --dmabuf-size 1048576 --chunk 4096 --spare-binding --unbind-after 1_000 --bind-dev --timeout-s 9"),
        )
        .unwrap();
        assert_eq!(o.bytes, Some(16 << 20));
        assert_eq!(o.addr.unwrap().to_string(), "10.0.0.2:5201");
        assert!(o.spare_binding && o.bind_dev);
        assert_eq!(
            (o.unbind_after, o.chunk, o.timeout),
            (Some(1000), Some(4096), Some(Duration::from_secs(9)))
        );
        assert!(!o.rebind && o.close_after.is_none());
        let o = parse_opts(
            "devmem-tx",
            &args("--dev eth0 --connect 10.0.0.2:5201 --bytes 4096 --unbind-after 1024 --rebind --close-after 2048"),
        )
        .unwrap();
        assert!(o.rebind);
        assert_eq!((o.unbind_after, o.close_after), (Some(1024), Some(2048)));
        let o = parse_opts(
            "devmem-rx",
            &args("--dev eth0 --listen [fd00::1]:5201 --bytes 10 --queue 3"),
        )
        .unwrap();
        assert_eq!(o.queue, Some(3));
        assert_eq!(
            parse_opts("bind-tx", &args("--dev eth0 --fd 999"))
                .unwrap()
                .fd,
            Some(999)
        );
        for (tool, a, needle) in [
            (
                "devmem-tx",
                "--dev eth0 --connect 1.2.3.4:5 --bytes 10 --rebind",
                "--rebind needs --unbind-after",
            ),
            (
                "devmem-tx",
                "--dev eth0 --connect 1.2.3.4:5 --bytes 10 --close-after 10",
                "below --bytes",
            ),
            (
                "devmem-tx",
                "--dev eth0 --connect 1.2.3.4:5 --bytes 10 --close-after 0",
                "below --bytes",
            ),
            (
                "devmem-rx",
                "--dev eth0 --listen 1.2.3.4:5 --bytes 10 --queue 1 --close-after 5",
                "unknown argument",
            ),
            ("devmem-tx", "--dev eth0 --bytes 1", "--connect"),
            ("devmem-tx", "--dev eth0 --connect 1.2.3.4:5", "--bytes"),
            ("devmem-tx", "--connect 1.2.3.4:5 --bytes 1", "--dev"),
            (
                "devmem-tx",
                "--dev eth0 --connect nope --bytes 1",
                "--connect",
            ),
            (
                "devmem-tx",
                "--dev eth0 --connect 1.2.3.4:5 --bytes",
                "needs a value",
            ),
            (
                "devmem-tx",
                "--dev eth0 --connect 1.2.3.4:5 --bytes 1 --queue 1",
                "unknown argument",
            ),
            (
                "devmem-tx",
                "--dev eth0 --connect 1.2.3.4:5 --bytes 1 --dmabuf-size 1000",
                "multiple",
            ),
            (
                "devmem-tx",
                "--dev eth0 --connect 1.2.3.4:5 --bytes 1 --chunk 0",
                "--chunk",
            ),
            (
                "devmem-tx",
                "--dev eth0 --connect 1.2.3.4:5 --bytes 1 --dmabuf-size 4096 --chunk 8192",
                "--chunk",
            ),
            (
                "devmem-rx",
                "--dev eth0 --listen 1.2.3.4:5 --bytes 1",
                "--queue",
            ),
            ("bind-rx", "--dev eth0", "--queue"),
            ("bind-tx", "--dev eth0 --fd 3 --dmabuf-size 4096", "exclude"),
            ("bind-tx", "--dev eth0 --fd x", "--fd"),
            ("bind-tx", "--dev a/b", "--dev"),
            ("bind-tx", "--dev 0123456789abcdef", "--dev"),
            ("nope", "--dev eth0", "unknown devmem tool"),
        ] {
            let e = parse_opts(tool, &args(a)).unwrap_err();
            assert!(e.contains(needle), "{tool} {a}: {e}");
        }
        assert_eq!(main("devmem-tx", &args("--bogus")), 2);
        assert_eq!(errno_name(libc::EOPNOTSUPP), "EOPNOTSUPP");
        assert_eq!(errno_name(9999), "E9999");
    }

    /// Over the host's real netdev genl family when it has one: `lo` has no
    /// netmem TX, and the kernel says so (the fd is never looked at).
    #[test]
    fn bind_tx_on_lo_is_refused_when_netdev_genl_exists() {
        match Binding::bind(Dir::Tx, 1, 999) {
            Ok(_) => panic!("bind-tx on lo succeeded"),
            Err(f) if f.message.contains("CTRL_CMD_GETFAMILY") => {
                eprintln!("note: no netdev genl family here ({}), skipping", f.message)
            }
            Err(f) => {
                assert_eq!(f.stage, "bind-tx");
                assert!(
                    matches!(
                        f.errno,
                        Some(libc::EOPNOTSUPP) | Some(libc::EBADF) | Some(libc::ENODEV)
                    ),
                    "{f:?}"
                );
            }
        }
    }
}
