//! Guest-side tools, run inside the lab guest by scenario steps as hidden
//! subcommands of the same static `netmem-lab` binary that is the agent:
//!
//! ```text
//! netmem-lab tcp-sink   --listen ADDR:PORT --bytes N --seed S [--netns NS] [--detach --out FILE] [--timeout-s T]
//! netmem-lab tcp-source --connect ADDR:PORT --bytes N --seed S [--netns NS] [--timeout-s T] [--corrupt-at OFF]
//! netmem-lab netns-add   NAME                      # like `ip netns add` (busybox's ip has no netns)
//! netmem-lab netns-exec  NAME PROGRAM [ARGS…]      # like `ip netns exec` (setns + exec)
//! netmem-lab netns-setup --dev IF [--netns NS] [--addr CIDR]… [--nodad] [--up] [--wait-s T]
//! netmem-lab ethtool [--netns NS] -i|-S|-g|-G|-k|-K|-l|-L|-n|-N DEV …  # see crate::ethtool
//! ```
//!
//! Every tool prints one JSON line on stdout (`{"error":..}` and exit 1 on
//! failure; exit 2 for bad usage). `netns-setup` moves `IF` into `NS`
//! (creating it if needed), adds the addresses (IPv6 with `IFA_F_NODAD` when
//! `--nodad`: busybox's `ip` knows neither `netns` nor `nodad`) and sets `lo`
//! and `IF` up, all over rtnetlink. It is idempotent: a device already in
//! `NS` stays there and addresses already present are fine, so a second
//! `netns-setup` of the same device just waits (`--wait-s`) for carrier and
//! usable IPv6 addresses.
//!
//! The TCP payload is a deterministic, offset-addressable pattern
//! ([`fill_pattern`]): byte `o` of the stream is byte `o % 8` (little endian)
//! of `splitmix64(seed, o / 8)`, so the sink verifies every byte at full speed
//! and names the first bad offset.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::json;

/// Where named network namespaces live (iproute2's convention).
pub const NETNS_DIR: &str = "/run/netns";

/// The tool names [`main`] dispatches.
pub const TOOLS: &[&str] = &[
    "tcp-sink",
    "tcp-source",
    "netns-add",
    "netns-exec",
    "netns-setup",
    "ethtool",
    "netkit-add",
    "netkit-del",
    "queue-lease",
    "queue-get",
    "bpf-redirect",
    "netkit-wire",
    "route-add",
    "devmem-tx",
    "devmem-rx",
    "bind-tx",
    "bind-rx",
    "lab-reset",
];

// ---------------------------------------------------------------- pattern

const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;

/// Word `index` of the pattern stream for `seed` (splitmix64 at a counter).
#[inline]
pub fn pattern_word(seed: u64, index: u64) -> u64 {
    let mut z = seed
        .wrapping_mul(0xD1B5_4A32_D192_ED03)
        .wrapping_add(index.wrapping_add(1).wrapping_mul(GOLDEN));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The pattern byte at stream offset `offset`.
pub fn pattern_byte(seed: u64, offset: u64) -> u8 {
    pattern_word(seed, offset / 8).to_le_bytes()[(offset % 8) as usize]
}

/// Fills `buf` with the pattern bytes `[offset, offset + buf.len())`.
pub fn fill_pattern(seed: u64, offset: u64, buf: &mut [u8]) {
    let mut pos = 0usize;
    let mut off = offset;
    // Leading partial word.
    let head = ((8 - (off % 8)) % 8) as usize;
    if head > 0 {
        let w = pattern_word(seed, off / 8).to_le_bytes();
        let n = head.min(buf.len());
        let s = (off % 8) as usize;
        buf[..n].copy_from_slice(&w[s..s + n]);
        pos = n;
        off += n as u64;
    }
    let mut idx = off / 8;
    let mut chunks = buf[pos..].chunks_exact_mut(8);
    for c in &mut chunks {
        c.copy_from_slice(&pattern_word(seed, idx).to_le_bytes());
        idx += 1;
    }
    let tail = chunks.into_remainder();
    if !tail.is_empty() {
        let w = pattern_word(seed, idx).to_le_bytes();
        let n = tail.len();
        tail.copy_from_slice(&w[..n]);
    }
}

/// The offset of the first byte of `data` (which sits at stream `offset`)
/// that differs from the pattern, if any.
pub fn first_mismatch(seed: u64, offset: u64, data: &[u8]) -> Option<u64> {
    let mut exp = vec![0u8; data.len().min(64 << 10)];
    let mut done = 0usize;
    while done < data.len() {
        let n = exp.len().min(data.len() - done);
        fill_pattern(seed, offset + done as u64, &mut exp[..n]);
        let got = &data[done..done + n];
        if got != &exp[..n] {
            let i = got.iter().zip(&exp[..n]).position(|(a, b)| a != b)?;
            return Some(offset + (done + i) as u64);
        }
        done += n;
    }
    None
}

// ---------------------------------------------------------------- TCP tools

/// What the sink saw (its JSON line).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SinkReport {
    pub received: u64,
    /// Bytes that matched the pattern before the first mismatch (capped at `expected`).
    pub verified: u64,
    pub first_mismatch: Option<u64>,
    pub elapsed_ms: u64,
    pub expected: u64,
    /// `received == verified == expected`.
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// What the source sent (its JSON line).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceReport {
    /// Bytes the kernel accepted.
    pub sent: u64,
    pub elapsed_ms: u64,
    #[serde(default)]
    pub connect_attempts: u32,
    /// Everything sent and the sink closed after reading it.
    #[serde(default)]
    pub ok: bool,
    /// What ended a failed run: `"closed"` for `--close-after` (the source
    /// closed the socket on purpose), else `"connect"` or `"send"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

const IO_CHUNK: usize = 256 << 10;

/// Accepts one connection on `listener`, reads to EOF and verifies every byte.
pub fn run_sink(
    listener: &TcpListener,
    expected: u64,
    seed: u64,
    timeout: Option<Duration>,
) -> SinkReport {
    let t0 = Instant::now();
    let mut r = SinkReport {
        received: 0,
        verified: 0,
        first_mismatch: None,
        elapsed_ms: 0,
        expected,
        ok: false,
        peer: None,
        error: None,
    };
    let res = (|| -> std::io::Result<()> {
        let (mut s, peer) = accept_with_timeout(listener, timeout)?;
        r.peer = Some(peer.to_string());
        s.set_read_timeout(timeout)?;
        let mut buf = vec![0u8; IO_CHUNK];
        loop {
            let n = match s.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            if r.first_mismatch.is_none() {
                match first_mismatch(seed, r.received, &buf[..n]) {
                    None => r.verified += n as u64,
                    Some(off) => {
                        r.verified += off - r.received;
                        r.first_mismatch = Some(off);
                    }
                }
            }
            r.received += n as u64;
        }
        Ok(())
    })();
    if let Err(e) = res {
        r.error = Some(e.to_string());
    }
    r.verified = r.verified.min(expected);
    r.elapsed_ms = t0.elapsed().as_millis() as u64;
    r.ok = r.error.is_none()
        && r.first_mismatch.is_none()
        && r.received == expected
        && r.verified == expected;
    r
}

fn accept_with_timeout(
    l: &TcpListener,
    timeout: Option<Duration>,
) -> std::io::Result<(TcpStream, SocketAddr)> {
    if let Some(t) = timeout {
        let mut pfd = libc::pollfd {
            fd: l.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = t.as_millis().min(i32::MAX as u128) as i32;
        loop {
            // SAFETY: one valid pollfd.
            let rc = unsafe { libc::poll(&mut pfd, 1, ms) };
            if rc < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            if rc == 0 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("no connection within {} s", t.as_secs()),
                ));
            }
            break;
        }
    }
    l.accept()
}

/// Connects to `addr` and sends `bytes` pattern bytes; `corrupt_at` flips one
/// byte (tests, fault drills).
pub fn run_source(
    addr: SocketAddr,
    bytes: u64,
    seed: u64,
    timeout: Option<Duration>,
    corrupt_at: Option<u64>,
) -> SourceReport {
    run_source_closing(addr, bytes, seed, timeout, corrupt_at, None)
}

/// [`run_source`], and with `close_after` the source closes the socket as
/// soon as the kernel accepted that many bytes (no shutdown, no wait for
/// the sink): the report is then not ok, `stage` `"closed"`, `sent` the
/// bytes accepted. The kernel still delivers them, then the FIN.
pub fn run_source_closing(
    addr: SocketAddr,
    bytes: u64,
    seed: u64,
    timeout: Option<Duration>,
    corrupt_at: Option<u64>,
    close_after: Option<u64>,
) -> SourceReport {
    let t0 = Instant::now();
    let mut sent = 0u64;
    let mut attempts = 0u32;
    let mut stage = "connect";
    let limit = close_after.map_or(bytes, |c| c.min(bytes));
    let res = (|| -> std::io::Result<()> {
        let mut s = connect_retrying(addr, timeout, &mut attempts)?;
        stage = "send";
        s.set_write_timeout(timeout)?;
        let mut buf = vec![0u8; IO_CHUNK];
        while sent < limit {
            let n = (limit - sent).min(IO_CHUNK as u64) as usize;
            fill_pattern(seed, sent, &mut buf[..n]);
            if let Some(c) = corrupt_at
                && c >= sent
                && c < sent + n as u64
            {
                buf[(c - sent) as usize] ^= 0xff;
            }
            s.write_all(&buf[..n])?;
            sent += n as u64;
        }
        if sent < bytes {
            // `close_after`: close now, with data possibly still queued.
            drop(s);
            stage = "closed";
            return Err(std::io::Error::other(format!(
                "closed the socket after {sent} of {bytes} bytes (--close-after)"
            )));
        }
        s.flush()?;
        s.shutdown(std::net::Shutdown::Write)?;
        // Wait for the sink to close (it has read everything then).
        let mut sink = [0u8; 64];
        s.set_read_timeout(timeout)?;
        while matches!(s.read(&mut sink), Ok(n) if n > 0) {}
        Ok(())
    })();
    SourceReport {
        sent,
        elapsed_ms: t0.elapsed().as_millis() as u64,
        connect_attempts: attempts,
        ok: res.is_ok(),
        stage: res.is_err().then(|| stage.to_string()),
        error: res.err().map(|e| e.to_string()),
    }
}

/// How long a connect keeps retrying transient errors: right after a link
/// or address comes up the kernel briefly answers ENETUNREACH (seen with
/// IPv6 on a fresh netns), and a peer's listener may be a moment late.
pub const CONNECT_RETRY: Duration = Duration::from_secs(5);

fn connect_retrying(
    addr: SocketAddr,
    timeout: Option<Duration>,
    attempts: &mut u32,
) -> std::io::Result<TcpStream> {
    let start = Instant::now();
    loop {
        *attempts += 1;
        let r = match timeout {
            Some(t) => TcpStream::connect_timeout(&addr, t),
            None => TcpStream::connect(addr),
        };
        match r {
            Ok(s) => return Ok(s),
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::ENETUNREACH | libc::EHOSTUNREACH | libc::ECONNREFUSED)
                ) && start.elapsed() < CONNECT_RETRY =>
            {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => return Err(e),
        }
    }
}

// ---------------------------------------------------------------- netns

fn ns_path(dir: &Path, name: &str) -> Result<PathBuf, String> {
    if name.is_empty() || name.contains('/') || name == "." || name == ".." {
        return Err(format!("bad netns name {name:?}"));
    }
    Ok(dir.join(name))
}

fn cstr(p: &Path) -> Result<std::ffi::CString, String> {
    use std::os::unix::ffi::OsStrExt;
    std::ffi::CString::new(p.as_os_str().as_bytes()).map_err(|e| e.to_string())
}

/// Creates the named netns `dir/name` (a new network namespace kept alive by
/// a bind mount of `/proc/thread-self/ns/net`). The calling thread ends up in
/// the new netns (use a short-lived thread or process). `Ok(false)` if it
/// already existed.
pub fn netns_add_in(dir: &Path, name: &str) -> Result<bool, String> {
    let path = ns_path(dir, name)?;
    std::fs::create_dir_all(dir).map_err(|e| format!("mkdir {}: {e}", dir.display()))?;
    if path.exists() && open_netns(&path).is_ok() && is_nsfs(&path) {
        return Ok(false);
    }
    std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| format!("creating {}: {e}", path.display()))?;
    // SAFETY: unshare only affects the calling thread's net namespace.
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
        let e = std::io::Error::last_os_error();
        let _ = std::fs::remove_file(&path);
        return Err(format!("unshare(CLONE_NEWNET): {e}"));
    }
    let src = cstr(Path::new("/proc/thread-self/ns/net"))?;
    let dst = cstr(&path)?;
    // SAFETY: valid C strings; a plain bind mount.
    let rc = unsafe {
        libc::mount(
            src.as_ptr(),
            dst.as_ptr(),
            std::ptr::null(),
            libc::MS_BIND,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        let e = std::io::Error::last_os_error();
        let _ = std::fs::remove_file(&path);
        return Err(format!("bind mount onto {}: {e}", path.display()));
    }
    Ok(true)
}

fn is_nsfs(p: &Path) -> bool {
    let Ok(c) = cstr(p) else { return false };
    // SAFETY: zeroed statfs is a valid out-parameter.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid path and out-parameter.
    let rc = unsafe { libc::statfs(c.as_ptr(), &mut st) };
    const NSFS_MAGIC: i64 = 0x6e73_6673;
    rc == 0 && st.f_type as i64 == NSFS_MAGIC
}

fn open_netns(path: &Path) -> Result<OwnedFd, String> {
    let f = std::fs::File::open(path).map_err(|e| format!("open {}: {e}", path.display()))?;
    Ok(OwnedFd::from(f))
}

/// TSO burst floor the lab sets in every namespace it configures.
///
/// TCP sizes each TSO burst from the rate it measured (about 1 ms of data,
/// at least `tcp_min_tso_segs`, default 2). In an emulated machine every
/// packet costs a few VM exits, so the measured rate stays low, bursts stay
/// at 2 segments, and the rate never grows: measured 2 Mbit/s nested with 2,
/// 13 Mbit/s with 44 (a 64 KiB burst). The setting changes only how TCP
/// batches, not what reaches the wire or the NIC's offload paths.
pub const TCP_MIN_TSO_SEGS: u32 = 44;

/// Apply [`TCP_MIN_TSO_SEGS`] to the calling thread's network namespace
/// (`/proc/sys/net` follows the opener's namespace).
pub fn tune_tcp_for_emulation() -> Result<(), String> {
    let path = "/proc/sys/net/ipv4/tcp_min_tso_segs";
    std::fs::write(path, format!("{TCP_MIN_TSO_SEGS}\n")).map_err(|e| format!("{path}: {e}"))
}

/// Moves the calling thread into the netns at `path`.
pub fn setns_path(path: &Path) -> Result<(), String> {
    let fd = open_netns(path)?;
    // SAFETY: fd is an open namespace file.
    if unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(format!(
            "setns {}: {}",
            path.display(),
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

/// Moves the calling thread into the named netns (under [`NETNS_DIR`]).
pub fn enter_netns(name: &str) -> Result<(), String> {
    setns_path(&ns_path(Path::new(NETNS_DIR), name)?)
}

// ---------------------------------------------------------------- rtnetlink

/// A minimal rtnetlink client: just what `netns-setup` needs.
pub mod rtnl {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

    /// A netlink error: errno and the kernel's extack message, if any.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct NlError {
        pub errno: i32,
        pub extack: Option<String>,
        pub what: String,
    }

    impl std::fmt::Display for NlError {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(
                f,
                "{}: {}",
                self.what,
                std::io::Error::from_raw_os_error(self.errno)
            )?;
            if let Some(m) = &self.extack {
                write!(f, " ({m})")?;
            }
            Ok(())
        }
    }

    const NLMSG_HDRLEN: usize = 16;
    const NLMSGERR_ATTR_MSG: u16 = 1;
    const NLM_F_ACK_TLVS: u16 = 0x200;
    const IFLA_NET_NS_FD: u16 = 28;
    const IFA_ADDRESS: u16 = 1;
    const IFA_LOCAL: u16 = 2;
    const IFA_FLAGS: u16 = 8;
    const IFA_F_NODAD: u32 = 0x02;

    fn align4(n: usize) -> usize {
        (n + 3) & !3
    }

    /// One request message under construction.
    pub struct Msg {
        buf: Vec<u8>,
    }

    impl Msg {
        pub fn new(ty: u16, flags: u16, header: &[u8]) -> Msg {
            let mut buf = vec![0u8; NLMSG_HDRLEN];
            buf[4..6].copy_from_slice(&ty.to_ne_bytes());
            let flags = flags | (libc::NLM_F_REQUEST | libc::NLM_F_ACK) as u16;
            buf[6..8].copy_from_slice(&flags.to_ne_bytes());
            buf.extend_from_slice(header);
            buf.resize(align4(buf.len()), 0);
            Msg { buf }
        }
        pub fn attr(mut self, ty: u16, data: &[u8]) -> Msg {
            let len = 4 + data.len();
            self.buf.extend_from_slice(&(len as u16).to_ne_bytes());
            self.buf.extend_from_slice(&ty.to_ne_bytes());
            self.buf.extend_from_slice(data);
            self.buf.resize(align4(self.buf.len()), 0);
            self
        }
        pub fn finish(mut self, seq: u32) -> Vec<u8> {
            let len = self.buf.len() as u32;
            self.buf[0..4].copy_from_slice(&len.to_ne_bytes());
            self.buf[8..12].copy_from_slice(&seq.to_ne_bytes());
            self.buf
        }
    }

    /// `struct ifinfomsg`.
    pub fn ifinfomsg(index: i32, flags: u32, change: u32) -> Vec<u8> {
        let mut h = vec![0u8; 16];
        h[0] = libc::AF_UNSPEC as u8;
        h[4..8].copy_from_slice(&index.to_ne_bytes());
        h[8..12].copy_from_slice(&flags.to_ne_bytes());
        h[12..16].copy_from_slice(&change.to_ne_bytes());
        h
    }

    /// `struct ifaddrmsg`.
    pub fn ifaddrmsg(family: u8, prefixlen: u8, flags: u8, index: u32) -> Vec<u8> {
        let mut h = vec![0u8; 8];
        h[0] = family;
        h[1] = prefixlen;
        h[2] = flags;
        h[3] = 0; // RT_SCOPE_UNIVERSE
        h[4..8].copy_from_slice(&index.to_ne_bytes());
        h
    }

    /// A NETLINK_ROUTE socket in the calling thread's netns.
    pub struct Rtnl {
        fd: OwnedFd,
        seq: u32,
    }

    impl Rtnl {
        pub fn open() -> Result<Rtnl, String> {
            // SAFETY: plain socket(2).
            let fd = unsafe {
                libc::socket(
                    libc::AF_NETLINK,
                    libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                    libc::NETLINK_ROUTE,
                )
            };
            if fd < 0 {
                return Err(format!(
                    "netlink socket: {}",
                    std::io::Error::last_os_error()
                ));
            }
            // SAFETY: fd is a fresh socket we own.
            let fd = unsafe { OwnedFd::from_raw_fd(fd) };
            let one: libc::c_int = 1;
            // SAFETY: setsockopt with an int; failure (old kernels) is harmless.
            unsafe {
                libc::setsockopt(
                    fd.as_raw_fd(),
                    libc::SOL_NETLINK,
                    libc::NETLINK_EXT_ACK,
                    (&one as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                );
            }
            Ok(Rtnl { fd, seq: 1 })
        }

        /// Sends a request and waits for its ACK.
        pub fn request(&mut self, what: &str, m: Msg) -> Result<(), NlError> {
            self.seq += 1;
            let seq = self.seq;
            let msg = m.finish(seq);
            let err = |errno: i32| NlError {
                errno,
                extack: None,
                what: what.to_string(),
            };
            // SAFETY: sending our own buffer on our socket (to the kernel: no address needed).
            let n = unsafe { libc::send(self.fd.as_raw_fd(), msg.as_ptr().cast(), msg.len(), 0) };
            if n < 0 {
                return Err(err(std::io::Error::last_os_error()
                    .raw_os_error()
                    .unwrap_or(libc::EIO)));
            }
            let mut buf = vec![0u8; 32 << 10];
            loop {
                // SAFETY: receiving into our buffer.
                let n = unsafe {
                    libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0)
                };
                if n < 0 {
                    let e = std::io::Error::last_os_error();
                    if e.kind() == std::io::ErrorKind::Interrupted {
                        continue;
                    }
                    return Err(err(e.raw_os_error().unwrap_or(libc::EIO)));
                }
                let data = &buf[..n as usize];
                let mut off = 0usize;
                while off + NLMSG_HDRLEN <= data.len() {
                    let len = u32::from_ne_bytes(data[off..off + 4].try_into().unwrap()) as usize;
                    let ty = u16::from_ne_bytes(data[off + 4..off + 6].try_into().unwrap());
                    let flags = u16::from_ne_bytes(data[off + 6..off + 8].try_into().unwrap());
                    let mseq = u32::from_ne_bytes(data[off + 8..off + 12].try_into().unwrap());
                    if len < NLMSG_HDRLEN || off + len > data.len() {
                        break;
                    }
                    if mseq == seq && ty == libc::NLMSG_ERROR as u16 && len >= NLMSG_HDRLEN + 4 {
                        let code = i32::from_ne_bytes(data[off + 16..off + 20].try_into().unwrap());
                        if code == 0 {
                            return Ok(());
                        }
                        let mut e = err(-code);
                        if flags & NLM_F_ACK_TLVS != 0 {
                            e.extack = parse_extack(&data[off..off + len]);
                        }
                        return Err(e);
                    }
                    off += align4(len);
                }
            }
        }

        /// Moves link `index` into the netns open at `ns_fd`.
        pub fn link_set_netns(&mut self, index: i32, ns_fd: i32) -> Result<(), NlError> {
            let m = Msg::new(libc::RTM_NEWLINK, 0, &ifinfomsg(index, 0, 0))
                .attr(IFLA_NET_NS_FD, &(ns_fd as u32).to_ne_bytes());
            self.request("link set netns", m)
        }

        /// Deletes link `index` (virtual links only: a device without
        /// rtnl_link_ops answers EOPNOTSUPP, net/core/rtnetlink.c rtnl_dellink).
        pub fn link_del(&mut self, index: i32) -> Result<(), NlError> {
            let m = Msg::new(libc::RTM_DELLINK, 0, &ifinfomsg(index, 0, 0));
            self.request("link del", m)
        }

        /// Sets link `index` up.
        pub fn link_set_up(&mut self, index: i32) -> Result<(), NlError> {
            let up = libc::IFF_UP as u32;
            let m = Msg::new(libc::RTM_NEWLINK, 0, &ifinfomsg(index, up, up));
            self.request("link set up", m)
        }

        /// Adds `addr/prefix` to link `index` (IPv6 without DAD when `nodad`).
        pub fn addr_add(
            &mut self,
            index: u32,
            addr: std::net::IpAddr,
            prefix: u8,
            nodad: bool,
        ) -> Result<(), NlError> {
            let (family, bytes): (u8, Vec<u8>) = match addr {
                std::net::IpAddr::V4(a) => (libc::AF_INET as u8, a.octets().to_vec()),
                std::net::IpAddr::V6(a) => (libc::AF_INET6 as u8, a.octets().to_vec()),
            };
            let fl = if nodad && addr.is_ipv6() {
                IFA_F_NODAD
            } else {
                0
            };
            let flags = (libc::NLM_F_CREATE | libc::NLM_F_EXCL) as u16;
            let m = Msg::new(
                libc::RTM_NEWADDR,
                flags,
                &ifaddrmsg(family, prefix, fl as u8, index),
            )
            .attr(IFA_LOCAL, &bytes)
            .attr(IFA_ADDRESS, &bytes)
            .attr(IFA_FLAGS, &fl.to_ne_bytes());
            self.request("addr add", m)
        }
    }

    /// The NLMSGERR_ATTR_MSG of an extended ACK (`msg` is the whole nlmsg).
    pub fn parse_extack(msg: &[u8]) -> Option<String> {
        // nlmsghdr, error code, then the original request's header (capped: only its header).
        let orig_len = msg.get(20..24)?;
        let _ = orig_len;
        let mut off = NLMSG_HDRLEN + 4 + NLMSG_HDRLEN;
        while off + 4 <= msg.len() {
            let len = u16::from_ne_bytes(msg[off..off + 2].try_into().ok()?) as usize;
            let ty = u16::from_ne_bytes(msg[off + 2..off + 4].try_into().ok()?) & 0x3fff;
            if len < 4 || off + len > msg.len() {
                return None;
            }
            if ty == NLMSGERR_ATTR_MSG {
                let s = &msg[off + 4..off + len];
                let s = s.split(|&b| b == 0).next().unwrap_or(s);
                return Some(String::from_utf8_lossy(s).into_owned());
            }
            off += align4(len);
        }
        None
    }
}

/// An interface's index in the calling thread's netns.
pub fn ifindex(name: &str) -> Result<u32, String> {
    let c = std::ffi::CString::new(name).map_err(|e| e.to_string())?;
    // SAFETY: valid C string.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if i == 0 {
        return Err(format!(
            "no interface {name:?}: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(i)
}

/// Parses `ADDR/PREFIX` (prefix defaults to the full length).
pub fn parse_cidr(s: &str) -> Result<(std::net::IpAddr, u8), String> {
    let (a, p) = match s.split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (s, None),
    };
    let addr: std::net::IpAddr = a.parse().map_err(|e| format!("{s:?}: {e}"))?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let prefix = match p {
        Some(p) => p.parse::<u8>().map_err(|e| format!("{s:?}: {e}"))?,
        None => max,
    };
    if prefix > max {
        return Err(format!("{s:?}: prefix longer than {max}"));
    }
    Ok((addr, prefix))
}

/// What `netns-setup` does; see the module docs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetnsSetup {
    pub dev: String,
    /// None: stay in the current netns.
    pub netns: Option<String>,
    pub addrs: Vec<String>,
    pub nodad: bool,
    pub up: bool,
    /// Wait this long for carrier (with `up`) and for the IPv6 addresses to
    /// leave the tentative state; an error if they don't.
    pub wait: Option<Duration>,
}

/// `IFF_RUNNING` (carrier) of `dev` in the calling thread's netns.
pub fn link_running(dev: &str) -> Result<bool, String> {
    // SAFETY: a plain datagram socket, closed by OwnedFd.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(format!("socket: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: fd is fresh and ours.
    let fd = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    // SAFETY: zeroed ifreq is valid.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    if dev.len() >= req.ifr_name.len() {
        return Err(format!("interface name too long: {dev:?}"));
    }
    for (d, s) in req.ifr_name.iter_mut().zip(dev.bytes()) {
        *d = s as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS fills ifr_flags of our ifreq.
    if unsafe { libc::ioctl(fd.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) } != 0 {
        return Err(format!(
            "SIOCGIFFLAGS {dev}: {}",
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: the union member SIOCGIFFLAGS set.
    let flags = unsafe { req.ifr_ifru.ifru_flags } as i32;
    Ok(flags & libc::IFF_RUNNING != 0)
}

/// Whether `addr` is configured on link `index`, no longer tentative (from
/// `/proc/thread-self/net/if_inet6` of the calling thread's netns) and usable.
pub fn ipv6_ready(addr: &std::net::Ipv6Addr, index: u32) -> bool {
    let Ok(t) = std::fs::read_to_string("/proc/thread-self/net/if_inet6") else {
        return false;
    };
    let want: String = addr.octets().iter().map(|b| format!("{b:02x}")).collect();
    let listed = t.lines().any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        f.len() >= 6
            && f[0] == want
            && u32::from_str_radix(f[1], 16) == Ok(index)
            && u32::from_str_radix(f[4], 16).is_ok_and(|fl| fl & 0x48 == 0)
    });
    // The flag clears a moment before the local route is in: check that the
    // address is routable too (a UDP connect is a route lookup, nothing is sent).
    listed
        && std::net::UdpSocket::bind((*addr, 0))
            .and_then(|u| u.connect((*addr, 9)))
            .is_ok()
}

/// Runs a [`NetnsSetup`] on the calling thread (which ends up in the target netns).
pub fn netns_setup(s: &NetnsSetup, netns_dir: &Path) -> Result<serde_json::Value, String> {
    let addrs = s
        .addrs
        .iter()
        .map(|a| parse_cidr(a))
        .collect::<Result<Vec<_>, _>>()?;
    let mut created = false;
    let mut moved = false;
    if let Some(ns) = &s.netns {
        let path = ns_path(netns_dir, ns)?;
        let here = ifindex(&s.dev);
        if !path.exists() || !is_nsfs(&path) {
            // Create it on a helper thread so this thread stays where the device is.
            let (dir, n) = (netns_dir.to_path_buf(), ns.clone());
            created = std::thread::spawn(move || netns_add_in(&dir, &n))
                .join()
                .map_err(|_| "netns-add thread panicked".to_string())??;
        }
        match here {
            Ok(idx) => {
                let fd = open_netns(&path)?;
                let mut nl = rtnl::Rtnl::open()?;
                nl.link_set_netns(idx as i32, fd.as_raw_fd())
                    .map_err(|e| e.to_string())?;
                moved = true;
                setns_path(&path)?;
            }
            // Already there (a second setup of the same device): fine.
            Err(e) => {
                setns_path(&path)?;
                ifindex(&s.dev).map_err(|_| e)?;
            }
        }
    }
    tune_tcp_for_emulation()?;
    // Index again: it may change when the device changed namespace.
    let idx = ifindex(&s.dev)?;
    let mut nl = rtnl::Rtnl::open()?;
    // Up first: IPv6 addresses added to a down link stay tentative until it
    // comes up, and that is finished asynchronously.
    if s.up {
        if let Ok(lo) = ifindex("lo") {
            nl.link_set_up(lo as i32).map_err(|e| format!("lo: {e}"))?;
        }
        nl.link_set_up(idx as i32)
            .map_err(|e| format!("{}: {e}", s.dev))?;
    }
    let mut existing = Vec::new();
    for (a, p) in &addrs {
        match nl.addr_add(idx, *a, *p, s.nodad) {
            Ok(()) => {}
            Err(e) if e.errno == libc::EEXIST => existing.push(format!("{a}/{p}")),
            Err(e) => return Err(format!("{a}/{p} on {}: {e}", s.dev)),
        }
    }
    let t0 = Instant::now();
    let deadline = t0 + s.wait.unwrap_or(Duration::ZERO);
    let mut carrier = false;
    let mut pending: Vec<std::net::Ipv6Addr>;
    loop {
        if s.up {
            carrier = link_running(&s.dev)?;
        }
        pending = addrs
            .iter()
            .filter_map(|(a, _)| match a {
                std::net::IpAddr::V6(a) => Some(*a),
                _ => None,
            })
            .filter(|a| !ipv6_ready(a, idx))
            .collect();
        let done = (!s.up || carrier) && pending.is_empty();
        if done || Instant::now() >= deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    if s.wait.is_some() {
        if s.up && !carrier {
            return Err(format!(
                "{}: no carrier after {} ms",
                s.dev,
                t0.elapsed().as_millis()
            ));
        }
        if !pending.is_empty() {
            return Err(format!(
                "{}: IPv6 addresses still tentative after {} ms: {pending:?}",
                s.dev,
                t0.elapsed().as_millis()
            ));
        }
    }
    Ok(json!({
        "dev": s.dev,
        "ifindex": idx,
        "netns": s.netns,
        "netns_created": created,
        "moved": moved,
        "already_present": existing,
        "addrs": s.addrs,
        "up": s.up,
        "carrier": carrier,
        "wait_ms": t0.elapsed().as_millis() as u64,
    }))
}

// ---------------------------------------------------------------- CLI

struct Flags {
    args: Vec<String>,
    pos: usize,
}

impl Flags {
    fn value(&mut self, flag: &str) -> Result<String, String> {
        self.pos += 1;
        self.args
            .get(self.pos)
            .cloned()
            .ok_or_else(|| format!("{flag} needs a value"))
    }
}

fn parse_u64(flag: &str, v: &str) -> Result<u64, String> {
    let v = v.replace('_', "");
    let r = if let Some(h) = v.strip_prefix("0x") {
        u64::from_str_radix(h, 16)
    } else {
        v.parse()
    };
    r.map_err(|e| format!("{flag} {v:?}: {e}"))
}

#[derive(Debug, Default)]
struct TcpOpts {
    addr: Option<SocketAddr>,
    bytes: Option<u64>,
    seed: u64,
    netns: Option<String>,
    detach: bool,
    out: Option<PathBuf>,
    timeout: Option<Duration>,
    corrupt_at: Option<u64>,
    close_after: Option<u64>,
}

fn parse_tcp(args: &[String], addr_flag: &str) -> Result<TcpOpts, String> {
    let mut o = TcpOpts {
        timeout: Some(Duration::from_secs(120)),
        ..Default::default()
    };
    let mut f = Flags {
        args: args.to_vec(),
        pos: 0,
    };
    while f.pos < f.args.len() {
        let a = f.args[f.pos].clone();
        match a.as_str() {
            x if x == addr_flag => {
                let v = f.value(&a)?;
                o.addr = Some(v.parse().map_err(|e| format!("{a} {v:?}: {e}"))?);
            }
            "--bytes" => o.bytes = Some(parse_u64(&a, &f.value(&a)?)?),
            "--seed" => o.seed = parse_u64(&a, &f.value(&a)?)?,
            "--netns" => o.netns = Some(f.value(&a)?),
            "--detach" => o.detach = true,
            "--out" => o.out = Some(f.value(&a)?.into()),
            "--timeout-s" => {
                let s = parse_u64(&a, &f.value(&a)?)?;
                o.timeout = (s > 0).then(|| Duration::from_secs(s));
            }
            "--corrupt-at" => o.corrupt_at = Some(parse_u64(&a, &f.value(&a)?)?),
            "--close-after" if addr_flag == "--connect" => {
                o.close_after = Some(parse_u64(&a, &f.value(&a)?)?)
            }
            _ => return Err(format!("unknown argument {a:?}")),
        }
        f.pos += 1;
    }
    if o.addr.is_none() {
        return Err(format!("{addr_flag} ADDR:PORT is required"));
    }
    if o.bytes.is_none() {
        return Err("--bytes N is required".into());
    }
    if o.detach && o.out.is_none() {
        return Err("--detach needs --out FILE".into());
    }
    if let (Some(c), Some(b)) = (o.close_after, o.bytes)
        && (c == 0 || c >= b)
    {
        return Err(format!("--close-after {c}: want 1..{b} (below --bytes)"));
    }
    Ok(o)
}

fn print_json(v: &impl Serialize) {
    if let Ok(s) = serde_json::to_string(v) {
        println!("{s}");
    }
}

fn fail(msg: String) -> i32 {
    print_json(&json!({ "error": msg }));
    1
}

fn usage(tool: &str, msg: String) -> i32 {
    eprintln!("netmem-lab {tool}: {msg}");
    print_json(&json!({ "error": msg }));
    2
}

/// Entry point of the hidden CLI subcommands: `tool` is one of [`TOOLS`],
/// `args` what follows it. Returns the exit code.
pub fn main(tool: &str, args: &[String]) -> i32 {
    match tool {
        "tcp-sink" => tcp_sink_main(args),
        "tcp-source" => tcp_source_main(args),
        "netns-add" => match args {
            [name] => {
                match std::thread::spawn({
                    let n = name.clone();
                    move || netns_add_in(Path::new(NETNS_DIR), &n)
                })
                .join()
                {
                    Ok(Ok(created)) => {
                        print_json(&json!({"netns": name, "created": created}));
                        0
                    }
                    Ok(Err(e)) => fail(e),
                    Err(_) => fail("netns-add thread panicked".into()),
                }
            }
            _ => usage(tool, "usage: netns-add NAME".into()),
        },
        "netns-exec" => {
            let [name, prog, rest @ ..] = args else {
                return usage(tool, "usage: netns-exec NAME PROGRAM [ARGS…]".into());
            };
            if let Err(e) = enter_netns(name) {
                return fail(e);
            }
            use std::os::unix::process::CommandExt;
            let e = std::process::Command::new(prog).args(rest).exec();
            eprintln!("netmem-lab netns-exec: {prog}: {e}");
            127
        }
        "netns-setup" => {
            let mut s = NetnsSetup::default();
            let mut f = Flags {
                args: args.to_vec(),
                pos: 0,
            };
            while f.pos < f.args.len() {
                let a = f.args[f.pos].clone();
                let r = match a.as_str() {
                    "--dev" => f.value(&a).map(|v| s.dev = v),
                    "--netns" => f.value(&a).map(|v| s.netns = Some(v)),
                    "--addr" => f.value(&a).map(|v| s.addrs.push(v)),
                    "--nodad" => {
                        s.nodad = true;
                        Ok(())
                    }
                    "--up" => {
                        s.up = true;
                        Ok(())
                    }
                    "--wait-s" => f
                        .value(&a)
                        .and_then(|v| parse_u64(&a, &v))
                        .map(|v| s.wait = Some(Duration::from_secs(v))),
                    _ => Err(format!("unknown argument {a:?}")),
                };
                if let Err(e) = r {
                    return usage(tool, e);
                }
                f.pos += 1;
            }
            if s.dev.is_empty() {
                return usage(tool, "--dev IF is required".into());
            }
            match netns_setup(&s, Path::new(NETNS_DIR)) {
                Ok(v) => {
                    print_json(&v);
                    0
                }
                Err(e) => fail(e),
            }
        }
        "ethtool" => crate::ethtool::main(args),
        "lab-reset" => crate::reset::main(args),
        t if crate::netkit::TOOLS.contains(&t) => crate::netkit::main(t, args),
        "devmem-tx" | "devmem-rx" | "bind-tx" | "bind-rx" => crate::devmem::main(tool, args),
        _ => usage(tool, format!("unknown tool (known: {})", TOOLS.join(", "))),
    }
}

fn tcp_sink_main(args: &[String]) -> i32 {
    let o = match parse_tcp(args, "--listen") {
        Ok(o) => o,
        Err(e) => return usage("tcp-sink", e),
    };
    if let Some(ns) = &o.netns
        && let Err(e) = enter_netns(ns)
    {
        return fail(e);
    }
    let (addr, bytes) = (o.addr.expect("checked"), o.bytes.expect("checked"));
    let listener = match TcpListener::bind(addr) {
        Ok(l) => l,
        Err(e) => return fail(format!("listen on {addr}: {e}")),
    };
    if !o.detach {
        let r = run_sink(&listener, bytes, o.seed, o.timeout);
        print_json(&r);
        return if r.ok { 0 } else { 1 };
    }
    // Detached: the socket is listening before we return, so the caller can
    // start the source as soon as this command exits (no ready polling).
    let out = o.out.expect("checked");
    let tmp = out.with_extension("tmp");
    let _ = std::fs::remove_file(&out);
    let file = match std::fs::File::create(&tmp) {
        Ok(f) => f,
        Err(e) => return fail(format!("creating {}: {e}", tmp.display())),
    };
    let _ = std::io::stdout().flush();
    // SAFETY: the tool is single-threaded here; the child only uses its own data.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return fail(format!("fork: {}", std::io::Error::last_os_error()));
    }
    if pid > 0 {
        print_json(&json!({"listening": addr.to_string(), "pid": pid, "out": out}));
        return 0;
    }
    // Child: leave the caller's session and pipes behind.
    // SAFETY: plain syscalls on fds we own.
    unsafe {
        libc::setsid();
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
        if null >= 0 {
            libc::dup2(null, 0);
            libc::dup2(null, 1);
            libc::dup2(null, 2);
            if null > 2 {
                libc::close(null);
            }
        }
    }
    let r = run_sink(&listener, bytes, o.seed, o.timeout);
    let mut file = file;
    let ok = serde_json::to_vec(&r)
        .ok()
        .map(|mut v| {
            v.push(b'\n');
            file.write_all(&v).is_ok() && file.sync_all().is_ok()
        })
        .unwrap_or(false);
    drop(file);
    if ok {
        let _ = std::fs::rename(&tmp, &out);
    }
    // SAFETY: end the forked child without running the parent's atexit state.
    unsafe { libc::_exit(if r.ok { 0 } else { 1 }) }
}

fn tcp_source_main(args: &[String]) -> i32 {
    let o = match parse_tcp(args, "--connect") {
        Ok(o) => o,
        Err(e) => return usage("tcp-source", e),
    };
    if o.detach {
        return usage("tcp-source", "--detach is for tcp-sink".into());
    }
    if let Some(ns) = &o.netns
        && let Err(e) = enter_netns(ns)
    {
        return fail(e);
    }
    let r = run_source_closing(
        o.addr.expect("checked"),
        o.bytes.expect("checked"),
        o.seed,
        o.timeout,
        o.corrupt_at,
        o.close_after,
    );
    print_json(&r);
    if r.error.is_none() { 0 } else { 1 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pattern_is_offset_addressable() {
        let seed = 0x1234;
        let mut whole = vec![0u8; 10_000];
        fill_pattern(seed, 0, &mut whole);
        for (off, len) in [
            (0usize, 1usize),
            (1, 7),
            (3, 8),
            (5, 17),
            (8, 16),
            (7, 9000),
        ] {
            let mut part = vec![0u8; len];
            fill_pattern(seed, off as u64, &mut part);
            assert_eq!(part, whole[off..off + len], "off {off} len {len}");
        }
        for o in [0u64, 1, 7, 8, 9999] {
            assert_eq!(pattern_byte(seed, o), whole[o as usize]);
        }
        let mut other = vec![0u8; 64];
        fill_pattern(seed + 1, 0, &mut other);
        assert_ne!(other, whole[..64]);
        // Not trivially zero or repeating.
        assert!(whole.iter().filter(|&&b| b == 0).count() < 200);
        assert_ne!(whole[..8], whole[8..16]);
    }

    #[test]
    fn mismatch_detection_names_first_bad_offset() {
        let seed = 7;
        let mut d = vec![0u8; 300_000];
        fill_pattern(seed, 1000, &mut d);
        assert_eq!(first_mismatch(seed, 1000, &d), None);
        d[200_001] ^= 1;
        d[250_000] ^= 1;
        assert_eq!(first_mismatch(seed, 1000, &d), Some(201_001));
        assert_eq!(first_mismatch(seed, 1001, &d[..10]), Some(1001));
    }

    #[test]
    fn proptest_fill_matches_bytes() {
        use proptest::prelude::*;
        proptest!(|(seed: u64, off in 0u64..1 << 40, len in 0usize..100)| {
            let mut b = vec![0u8; len];
            fill_pattern(seed, off, &mut b);
            for (i, x) in b.iter().enumerate() {
                prop_assert_eq!(*x, pattern_byte(seed, off + i as u64));
            }
        });
    }

    fn loopback(bytes: u64, corrupt: Option<u64>) -> (SinkReport, SourceReport) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let t = Some(Duration::from_secs(30));
        let sink = std::thread::spawn(move || run_sink(&l, bytes, 42, t));
        let src = run_source(addr, bytes, 42, t, corrupt);
        (sink.join().unwrap(), src)
    }

    #[test]
    fn loopback_transfer_verifies() {
        let n = 5 * (1 << 20) + 3;
        let (s, c) = loopback(n, None);
        assert_eq!(c.error, None);
        assert_eq!(c.sent, n);
        assert!(s.ok, "{s:?}");
        assert_eq!((s.received, s.verified, s.first_mismatch), (n, n, None));
    }

    #[test]
    fn loopback_detects_corrupted_byte() {
        let n = 3 << 20;
        let (s, c) = loopback(n, Some(1_234_567));
        assert_eq!(c.sent, n);
        assert!(!s.ok);
        assert_eq!(s.received, n);
        assert_eq!(s.first_mismatch, Some(1_234_567));
        assert_eq!(s.verified, 1_234_567);
    }

    #[test]
    fn short_transfer_is_not_ok() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let t = Some(Duration::from_secs(30));
        let sink = std::thread::spawn(move || run_sink(&l, 1000, 1, t));
        let c = run_source(addr, 999, 1, t, None);
        let s = sink.join().unwrap();
        assert_eq!(c.sent, 999);
        assert!(!s.ok);
        assert_eq!((s.received, s.verified), (999, 999));
    }

    #[test]
    fn a_closing_source_delivers_what_the_kernel_accepted_then_eof() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let t = Some(Duration::from_secs(30));
        let n = 4 << 20;
        let close = IO_CHUNK as u64 * 3 + 12_345;
        let sink = std::thread::spawn(move || run_sink(&l, n, 7, t));
        let c = run_source_closing(addr, n, 7, t, None, Some(close));
        let s = sink.join().unwrap();
        assert_eq!(c.sent, close);
        assert!(!c.ok);
        assert_eq!(c.stage.as_deref(), Some("closed"));
        assert!(c.error.unwrap().contains("--close-after"));
        // The sink saw a clean EOF early: not ok, no error, nothing corrupt.
        assert!(!s.ok);
        assert_eq!(s.error, None);
        assert_eq!(
            (s.received, s.verified, s.first_mismatch),
            (close, close, None)
        );
        // A full run reports ok and no stage.
        let (s, c) = loopback(100_000, None);
        assert!(s.ok && c.ok && c.stage.is_none(), "{c:?}");
    }

    #[test]
    fn ipv6_loopback_when_available() {
        let Ok(l) = TcpListener::bind("[::1]:0") else {
            eprintln!("note: no IPv6 loopback here, skipping");
            return;
        };
        let addr = l.local_addr().unwrap();
        let t = Some(Duration::from_secs(30));
        let sink = std::thread::spawn(move || run_sink(&l, 100_000, 9, t));
        let c = run_source(addr, 100_000, 9, t, None);
        assert!(sink.join().unwrap().ok);
        assert_eq!(c.sent, 100_000);
    }

    #[test]
    fn sink_times_out_without_a_peer() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let r = run_sink(&l, 10, 1, Some(Duration::from_millis(100)));
        assert!(!r.ok);
        assert!(r.error.unwrap().contains("no connection"));
    }

    #[test]
    fn cli_parsing() {
        let a: Vec<String> = "--listen [fd00::2]:5201 --bytes 0x4000000 --seed 3 --netns remote --detach --out /tmp/x.json"
            .split(' ')
            .map(String::from)
            .collect();
        let o = parse_tcp(&a, "--listen").unwrap();
        assert_eq!(o.addr.unwrap().to_string(), "[fd00::2]:5201");
        assert_eq!(o.bytes, Some(64 << 20));
        assert_eq!(o.netns.as_deref(), Some("remote"));
        assert!(o.detach);
        assert!(parse_tcp(&a[..2], "--listen").is_err());
        let src = |extra: &str| -> Vec<String> {
            format!("--connect 10.0.0.2:5201 --bytes 1000 {extra}")
                .split_whitespace()
                .map(String::from)
                .collect()
        };
        assert_eq!(
            parse_tcp(&src("--close-after 999"), "--connect")
                .unwrap()
                .close_after,
            Some(999)
        );
        for bad in ["--close-after 1000", "--close-after 0", "--close-after x"] {
            assert!(parse_tcp(&src(bad), "--connect").is_err(), "{bad}");
        }
        // Only the source closes.
        assert!(
            parse_tcp(
                &a.iter()
                    .cloned()
                    .chain(["--close-after".into(), "5".into()])
                    .collect::<Vec<_>>(),
                "--listen"
            )
            .is_err()
        );
        assert!(parse_tcp(&["--bogus".to_string()], "--listen").is_err());
        assert_eq!(parse_cidr("10.0.0.1/24").unwrap().1, 24);
        assert_eq!(parse_cidr("fd00::1").unwrap().1, 128);
        assert!(parse_cidr("10.0.0.1/33").is_err());
        assert!(ns_path(Path::new("/run/netns"), "../x").is_err());
        assert_eq!(main("nope", &[]), 2);
    }

    #[test]
    fn extack_parsing() {
        // nlmsghdr(16) + error(4) + orig nlmsghdr(16) + attr MSG "boom\0".
        let mut m = vec![0u8; 36];
        m[16..20].copy_from_slice(&(-95i32).to_ne_bytes());
        let s = b"boom\0";
        m.extend_from_slice(&((4 + s.len()) as u16).to_ne_bytes());
        m.extend_from_slice(&1u16.to_ne_bytes());
        m.extend_from_slice(s);
        m.resize(m.len().next_multiple_of(4), 0);
        assert_eq!(rtnl::parse_extack(&m).as_deref(), Some("boom"));
    }

    /// Root only: a netns created, entered, addresses (IPv6 without DAD) and
    /// links configured over rtnetlink, then used for TCP.
    #[test]
    fn netns_and_rtnetlink_when_root() {
        // SAFETY: no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("note: not root, skipping");
            return;
        }
        let dir = tempfile_dir();
        let d2 = dir.clone();
        let created = std::thread::spawn(move || netns_add_in(&d2, "t1"))
            .join()
            .unwrap();
        let created = match created {
            Ok(c) => c,
            Err(e) => {
                eprintln!("note: cannot create a netns here ({e}), skipping");
                return;
            }
        };
        assert!(created);
        let d2 = dir.clone();
        assert!(
            !std::thread::spawn(move || netns_add_in(&d2, "t1").unwrap())
                .join()
                .unwrap()
        );
        let d2 = dir.clone();
        let res = std::thread::spawn(move || -> Result<(), String> {
            setns_path(&d2.join("t1"))?;
            let s = NetnsSetup {
                dev: "lo".into(),
                netns: None,
                addrs: vec!["10.77.0.1/24".into(), "fd00:77::1/64".into()],
                nodad: true,
                up: true,
                wait: Some(Duration::from_secs(5)),
            };
            let v = netns_setup(&s, &d2)?;
            assert_eq!(v["dev"], "lo");
            let segs = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_min_tso_segs").unwrap();
            assert_eq!(segs.trim(), TCP_MIN_TSO_SEGS.to_string());
            // Idempotent.
            let v = netns_setup(&s, &d2)?;
            assert_eq!(v["already_present"].as_array().unwrap().len(), 2);
            // Duplicate address: EEXIST from the kernel.
            let mut nl = rtnl::Rtnl::open()?;
            let e = nl
                .addr_add(ifindex("lo")?, "10.77.0.1".parse().unwrap(), 24, false)
                .unwrap_err();
            assert_eq!(e.errno, libc::EEXIST);
            for a in ["10.77.0.1:0", "[fd00:77::1]:0"] {
                let l = TcpListener::bind(a).map_err(|e| format!("{a}: {e}"))?;
                let addr = l.local_addr().unwrap();
                let t = Some(Duration::from_secs(10));
                let sink = std::thread::spawn(move || run_sink(&l, 1 << 20, 5, t));
                // Threads inherit the netns of their creator: both ends are in t1.
                let c = run_source(addr, 1 << 20, 5, t, None);
                assert_eq!(c.error, None, "{a}");
                assert!(sink.join().unwrap().ok, "{a}");
            }
            Ok(())
        })
        .join()
        .unwrap();
        let p = cstr(&dir.join("t1")).unwrap();
        // SAFETY: unmounting our own bind mount.
        unsafe { libc::umount2(p.as_ptr(), libc::MNT_DETACH) };
        let _ = std::fs::remove_dir_all(&dir);
        res.unwrap();
    }

    fn tempfile_dir() -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "netmem-netns-test-{}-{}",
            std::process::id(),
            Instant::now().elapsed().as_nanos()
        ));
        std::fs::create_dir_all(&d).unwrap();
        d
    }
}
