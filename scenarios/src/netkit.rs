//! Guest tools for netkit pairs, queue leasing and the redirect paths that
//! carry a container's traffic to a physical NIC (hidden subcommands of the
//! guest binary, dispatched from [`crate::guest_tools::main`]):
//!
//! ```text
//! netmem-lab netkit-add  --primary NAME --peer NAME [--mode l2|l3] [--peer-netns NS]
//!                        [--num-rx-queues N] [--policy forward|blackhole] [--peer-policy forward|blackhole]
//! netmem-lab netkit-del  --dev NAME [--netns NS]
//! netmem-lab queue-lease --dev NKG [--netns CTR] --lessor IF [--lessor-netns NS] --queue Q
//!                        [--netns-id N | --no-netns-id]
//! netmem-lab queue-get   --dev IF [--netns NS] --queue Q [--type rx|tx]
//! netmem-lab bpf-redirect --dev IF [--netns NS] --hook netkit-primary|netkit-peer|tcx-ingress|tcx-egress
//!                        --to IF2 [--to-netns NS2] [--peer | --neigh] [--match-dst CIDR] [--skip-icmp6]
//!                        [--min-len BYTES]
//!                        [--pin NAME]
//! netmem-lab netkit-wire --mode bpf|forward --nic IF --primary NKH --peer NKG --netns CTR --addr V6/LEN
//!                        [--tx-hook tcx-ingress|netkit-peer]
//! netmem-lab route-add   [--netns NS] DST/LEN|default [via GW] [dev IF]
//! ```
//!
//! Every tool prints one JSON line: `"ok": true` and what it did, or
//! `"ok": false` with `stage`, `error`, and for kernel failures `errno`,
//! `errno_name` and `extack` (the facts contract in the lab docs). Exit code
//! 0 on success, 1 on failure, 2 on bad usage.
//!
//! **netkit-add** sends one `RTM_NEWLINK` of kind `netkit` whose
//! `IFLA_NETKIT_PEER_INFO` carries the peer's `ifinfomsg`, name, queue count
//! and, with `--peer-netns`, `IFLA_NET_NS_FD` (the peer is created directly
//! in that netns, which is made like `netns-add` when missing).
//! `--num-rx-queues` applies to both devices: a netkit starts with one real
//! RX queue and grows by one per lease, up to this count.
//!
//! **queue-lease** runs `NETDEV_CMD_QUEUE_CREATE` from the leasing device's
//! netns. When the lessor lives in another netns the lease names it by a
//! netns id *as seen from the caller's netns*: the tool reads it with
//! `RTM_GETNSID` and, if none is assigned, assigns one with `RTM_NEWNSID`
//! (what `ip netns attach init 1; ip -n ctr netns set init 0` achieves).
//!
//! **bpf-redirect** builds a small `SCHED_CLS` program in Rust (optionally
//! matching the IPv6/IPv4 destination or skipping ICMPv6, then one
//! `bpf_redirect`/`bpf_redirect_peer`/`bpf_redirect_neigh` call), loads it
//! with `BPF_PROG_LOAD`, attaches it with `BPF_LINK_CREATE` (tcx or netkit
//! attach types) and pins the link in bpffs (mounted at `/sys/fs/bpf` when
//! needed) so the attachment outlives the tool; removing the pin file
//! detaches it. Packets the program does not match get `TCX_NEXT` /
//! `NETKIT_NEXT` (the normal path).
//!
//! **netkit-wire** sets up what the upstream `NetDrvContEnv` does
//! (tools/testing/selftests/drivers/net/lib/py/env.py): forwarding on,
//! `fe80::1` on the primary, `fe80::2` and `--addr` on the peer, a default
//! route in the container via `fe80::1`, a host route to `--addr` via
//! `fe80::2`; with `--mode bpf` also the two programs: on the NIC's tcx
//! ingress, traffic to `--addr` goes `bpf_redirect_peer` into the container
//! (upstream nk_forward.bpf.c), and on the primary's tcx ingress (or the
//! netkit peer hook) non-ICMPv6 IPv6 goes `bpf_redirect_neigh` out of the NIC
//! (upstream nk_primary_rx_redirect.bpf.c). The remote's route back to
//! `--addr` is the scenario's business (`route-add --netns remote`).
//! With `--mode bpf` neither direction needs IPv6 forwarding (the lab's VM
//! runs moved 4 MiB with `all.forwarding` set back to 0); the forwarding
//! setup stays in place so ICMPv6 and the host routes keep working.
//!
//! Seen on the lab VM (7.3.4 and 7.1.13 alike): `queue-get` answers ENOENT
//! for a device that is down (the netkit peer before `netkit-wire`); the
//! lease nest appears only on the physical queue (`queue-get --dev eth0`),
//! with the container's netns id as the init netns knows it; deleting the
//! netkit ends the lease.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Value, json};

use crate::ethtool::nl::{self, Attrs, Genl, NlError};
// The netdev family facts both tool sets use live in crate::devmem.
pub use crate::devmem::{
    NETDEV_A_QUEUE_ID, NETDEV_A_QUEUE_TYPE, NETDEV_FAMILY_NAME, NETDEV_FAMILY_VERSION,
    NETDEV_QUEUE_TYPE_RX,
};
use crate::guest_tools::{NETNS_DIR, NetnsSetup, enter_netns, ifindex, netns_add_in, netns_setup};

/// The tool names [`main`] dispatches.
pub const TOOLS: &[&str] = &[
    "netkit-add",
    "netkit-del",
    "queue-lease",
    "queue-get",
    "bpf-redirect",
    "netkit-wire",
    "route-add",
];

// ---------------------------------------------------------------- constants

/// `RTM_NEWLINK` (include/uapi/linux/rtnetlink.h).
pub const RTM_NEWLINK: u16 = 16;
/// `RTM_DELLINK` (include/uapi/linux/rtnetlink.h).
pub const RTM_DELLINK: u16 = 17;
/// `RTM_NEWROUTE` (include/uapi/linux/rtnetlink.h).
pub const RTM_NEWROUTE: u16 = 24;
/// `RTM_NEWNSID` (include/uapi/linux/rtnetlink.h).
pub const RTM_NEWNSID: u16 = 88;
/// `RTM_GETNSID` (include/uapi/linux/rtnetlink.h).
pub const RTM_GETNSID: u16 = 90;
/// `NLM_F_EXCL` (include/uapi/linux/netlink.h).
pub const NLM_F_EXCL: u16 = 0x200;
/// `NLM_F_CREATE` (include/uapi/linux/netlink.h).
pub const NLM_F_CREATE: u16 = 0x400;
/// `NETLINK_ROUTE` (include/uapi/linux/netlink.h).
pub const NETLINK_ROUTE: i32 = 0;

/// `IFLA_IFNAME` (include/uapi/linux/if_link.h).
pub const IFLA_IFNAME: u16 = 3;
/// `IFLA_LINKINFO` (include/uapi/linux/if_link.h).
pub const IFLA_LINKINFO: u16 = 18;
/// `IFLA_NET_NS_FD` (include/uapi/linux/if_link.h).
pub const IFLA_NET_NS_FD: u16 = 28;
/// `IFLA_NUM_RX_QUEUES` (include/uapi/linux/if_link.h).
pub const IFLA_NUM_RX_QUEUES: u16 = 32;
/// `IFLA_INFO_KIND` (include/uapi/linux/if_link.h).
pub const IFLA_INFO_KIND: u16 = 1;
/// `IFLA_INFO_DATA` (include/uapi/linux/if_link.h).
pub const IFLA_INFO_DATA: u16 = 2;
/// `IFLA_NETKIT_PEER_INFO` (include/uapi/linux/if_link.h): ifinfomsg + IFLA_* of the peer.
pub const IFLA_NETKIT_PEER_INFO: u16 = 1;
/// `IFLA_NETKIT_POLICY` (include/uapi/linux/if_link.h), u32 `enum netkit_action`.
pub const IFLA_NETKIT_POLICY: u16 = 3;
/// `IFLA_NETKIT_PEER_POLICY` (include/uapi/linux/if_link.h).
pub const IFLA_NETKIT_PEER_POLICY: u16 = 4;
/// `IFLA_NETKIT_MODE` (include/uapi/linux/if_link.h), u32 `enum netkit_mode`.
pub const IFLA_NETKIT_MODE: u16 = 5;
/// `NETKIT_PASS` (`enum netkit_action`, include/uapi/linux/if_link.h): "forward".
pub const NETKIT_PASS: u32 = 0;
/// `NETKIT_DROP` (`enum netkit_action`, include/uapi/linux/if_link.h): "blackhole".
pub const NETKIT_DROP: u32 = 2;
/// `NETKIT_NEXT` (`enum netkit_action`, include/uapi/linux/if_link.h); equals `TCX_NEXT`.
pub const NETKIT_NEXT: i32 = -1;
/// `NETKIT_L2` (`enum netkit_mode`, include/uapi/linux/if_link.h).
pub const NETKIT_L2: u32 = 0;
/// `NETKIT_L3` (`enum netkit_mode`, include/uapi/linux/if_link.h).
pub const NETKIT_L3: u32 = 1;

/// `NETNSA_NSID` (include/uapi/linux/net_namespace.h), s32.
pub const NETNSA_NSID: u16 = 1;
/// `NETNSA_FD` (include/uapi/linux/net_namespace.h), u32.
pub const NETNSA_FD: u16 = 3;
/// `NETNSA_NSID_NOT_ASSIGNED` (include/uapi/linux/net_namespace.h).
pub const NETNSA_NSID_NOT_ASSIGNED: i32 = -1;

/// `RTA_DST` (include/uapi/linux/rtnetlink.h).
pub const RTA_DST: u16 = 1;
/// `RTA_OIF` (include/uapi/linux/rtnetlink.h).
pub const RTA_OIF: u16 = 4;
/// `RTA_GATEWAY` (include/uapi/linux/rtnetlink.h).
pub const RTA_GATEWAY: u16 = 5;
/// `RT_TABLE_MAIN` (include/uapi/linux/rtnetlink.h).
pub const RT_TABLE_MAIN: u8 = 254;
/// `RTPROT_STATIC` (include/uapi/linux/rtnetlink.h).
pub const RTPROT_STATIC: u8 = 4;
/// `RT_SCOPE_UNIVERSE` (include/uapi/linux/rtnetlink.h).
pub const RT_SCOPE_UNIVERSE: u8 = 0;
/// `RT_SCOPE_LINK` (include/uapi/linux/rtnetlink.h).
pub const RT_SCOPE_LINK: u8 = 253;
/// `RTN_UNICAST` (include/uapi/linux/rtnetlink.h).
pub const RTN_UNICAST: u8 = 1;

/// `NETDEV_CMD_QUEUE_GET` (include/uapi/linux/netdev.h).
pub const NETDEV_CMD_QUEUE_GET: u8 = 10;
/// `NETDEV_CMD_QUEUE_CREATE` (include/uapi/linux/netdev.h).
pub const NETDEV_CMD_QUEUE_CREATE: u8 = 16;
/// `NETDEV_A_QUEUE_IFINDEX` (include/uapi/linux/netdev.h).
pub const NETDEV_A_QUEUE_IFINDEX: u16 = 2;
/// `NETDEV_A_QUEUE_NAPI_ID` (include/uapi/linux/netdev.h).
pub const NETDEV_A_QUEUE_NAPI_ID: u16 = 4;
/// `NETDEV_A_QUEUE_DMABUF` (include/uapi/linux/netdev.h).
pub const NETDEV_A_QUEUE_DMABUF: u16 = 5;
/// `NETDEV_A_QUEUE_IO_URING` (include/uapi/linux/netdev.h).
pub const NETDEV_A_QUEUE_IO_URING: u16 = 6;
/// `NETDEV_A_QUEUE_XSK` (include/uapi/linux/netdev.h).
pub const NETDEV_A_QUEUE_XSK: u16 = 7;
/// `NETDEV_A_QUEUE_LEASE` (include/uapi/linux/netdev.h).
pub const NETDEV_A_QUEUE_LEASE: u16 = 8;
/// `NETDEV_A_LEASE_IFINDEX` (include/uapi/linux/netdev.h).
pub const NETDEV_A_LEASE_IFINDEX: u16 = 1;
/// `NETDEV_A_LEASE_QUEUE` (include/uapi/linux/netdev.h), a queue-id nest.
pub const NETDEV_A_LEASE_QUEUE: u16 = 2;
/// `NETDEV_A_LEASE_NETNS_ID` (include/uapi/linux/netdev.h), s32.
pub const NETDEV_A_LEASE_NETNS_ID: u16 = 3;
/// `NETDEV_QUEUE_TYPE_TX` (include/uapi/linux/netdev.h).
pub const NETDEV_QUEUE_TYPE_TX: u32 = 1;

/// `BPF_PROG_LOAD` (`enum bpf_cmd`, include/uapi/linux/bpf.h).
pub const BPF_PROG_LOAD: u32 = 5;
/// `BPF_OBJ_PIN` (`enum bpf_cmd`, include/uapi/linux/bpf.h).
pub const BPF_OBJ_PIN: u32 = 6;
/// `BPF_LINK_CREATE` (`enum bpf_cmd`, include/uapi/linux/bpf.h).
pub const BPF_LINK_CREATE: u32 = 28;
/// `BPF_PROG_TYPE_SCHED_CLS` (`enum bpf_prog_type`, include/uapi/linux/bpf.h).
pub const BPF_PROG_TYPE_SCHED_CLS: u32 = 3;
/// `BPF_TCX_INGRESS` (`enum bpf_attach_type`, include/uapi/linux/bpf.h).
pub const BPF_TCX_INGRESS: u32 = 46;
/// `BPF_TCX_EGRESS` (`enum bpf_attach_type`, include/uapi/linux/bpf.h).
pub const BPF_TCX_EGRESS: u32 = 47;
/// `BPF_NETKIT_PRIMARY` (`enum bpf_attach_type`, include/uapi/linux/bpf.h).
pub const BPF_NETKIT_PRIMARY: u32 = 54;
/// `BPF_NETKIT_PEER` (`enum bpf_attach_type`, include/uapi/linux/bpf.h).
pub const BPF_NETKIT_PEER: u32 = 55;
/// `BPF_FUNC_redirect` (`___BPF_FUNC_MAPPER`, include/uapi/linux/bpf.h).
pub const BPF_FUNC_REDIRECT: i32 = 23;
/// `BPF_FUNC_redirect_neigh` (include/uapi/linux/bpf.h).
pub const BPF_FUNC_REDIRECT_NEIGH: i32 = 152;
/// `BPF_FUNC_redirect_peer` (include/uapi/linux/bpf.h).
pub const BPF_FUNC_REDIRECT_PEER: i32 = 155;
/// `BPF_FS_MAGIC` (include/uapi/linux/magic.h).
pub const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
/// `offsetof(struct __sk_buff, data)` (include/uapi/linux/bpf.h).
pub const SKB_DATA_OFF: i16 = 76;
/// `offsetof(struct __sk_buff, len)` (include/uapi/linux/bpf.h): the first field.
pub const SKB_LEN_OFF: i16 = 0;
/// `offsetof(struct __sk_buff, data_end)` (include/uapi/linux/bpf.h).
pub const SKB_DATA_END_OFF: i16 = 80;

/// eBPF opcode parts (include/uapi/linux/bpf_common.h and bpf.h).
pub mod op {
    /// `BPF_LDX` class (bpf_common.h).
    pub const LDX: u8 = 0x01;
    /// `BPF_ALU` class (bpf_common.h): 32-bit ALU.
    pub const ALU: u8 = 0x04;
    /// `BPF_JMP` class (bpf_common.h).
    pub const JMP: u8 = 0x05;
    /// `BPF_JMP32` class (bpf.h): compares the low 32 bits.
    pub const JMP32: u8 = 0x06;
    /// `BPF_ALU64` class (bpf.h).
    pub const ALU64: u8 = 0x07;
    /// `BPF_W` size (bpf_common.h).
    pub const W: u8 = 0x00;
    /// `BPF_H` size (bpf_common.h).
    pub const H: u8 = 0x08;
    /// `BPF_B` size (bpf_common.h).
    pub const B: u8 = 0x10;
    /// `BPF_MEM` mode (bpf_common.h).
    pub const MEM: u8 = 0x60;
    /// `BPF_K` source (bpf_common.h): immediate.
    pub const K: u8 = 0x00;
    /// `BPF_X` source (bpf_common.h): register.
    pub const X: u8 = 0x08;
    /// `BPF_ADD` (bpf_common.h).
    pub const ADD: u8 = 0x00;
    /// `BPF_AND` (bpf_common.h).
    pub const AND: u8 = 0x50;
    /// `BPF_MOV` (bpf.h).
    pub const MOV: u8 = 0xb0;
    /// `BPF_JEQ` (bpf_common.h).
    pub const JEQ: u8 = 0x10;
    /// `BPF_JGT` (bpf_common.h).
    pub const JGT: u8 = 0x20;
    /// `BPF_JNE` (bpf.h).
    pub const JNE: u8 = 0x50;
    /// `BPF_JLT` (include/uapi/linux/bpf.h).
    pub const JLT: u8 = 0xa0;
    /// `BPF_CALL` (bpf.h).
    pub const CALL: u8 = 0x80;
    /// `BPF_EXIT` (bpf.h).
    pub const EXIT: u8 = 0x90;
}

const ETH_HLEN: i16 = 14;
const IPPROTO_ICMPV6: i32 = 58;
const BPFFS: &str = "/sys/fs/bpf";
const PIN_DIR: &str = "/sys/fs/bpf/netmem-lab";

// ---------------------------------------------------------------- errors

/// A tool failure: which stage, the message, and the kernel's answer.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ToolError {
    pub stage: &'static str,
    pub msg: String,
    pub errno: Option<i32>,
    pub extack: Option<String>,
    /// The verifier's log when `BPF_PROG_LOAD` failed.
    pub verifier_log: Option<String>,
}

impl ToolError {
    pub fn new(stage: &'static str, msg: impl Into<String>) -> ToolError {
        ToolError {
            stage,
            msg: msg.into(),
            ..Default::default()
        }
    }

    pub fn nl(stage: &'static str, what: &str, e: NlError) -> ToolError {
        ToolError {
            stage,
            msg: format!(
                "{what}: {}{}",
                std::io::Error::from_raw_os_error(e.errno),
                e.extack
                    .as_deref()
                    .map(|x| format!(" ({x})"))
                    .unwrap_or_default()
            ),
            errno: Some(e.errno),
            extack: e.extack,
            verifier_log: None,
        }
    }

    pub fn os(stage: &'static str, what: &str, errno: i32) -> ToolError {
        ToolError {
            stage,
            msg: format!("{what}: {}", std::io::Error::from_raw_os_error(errno)),
            errno: Some(errno),
            ..Default::default()
        }
    }

    pub fn to_json(&self) -> Value {
        let mut v = json!({"ok": false, "stage": self.stage, "error": self.msg});
        if let Some(e) = self.errno {
            v["errno"] = json!(e);
            v["errno_name"] = json!(errno_name(e));
        }
        if let Some(x) = &self.extack {
            v["extack"] = json!(x);
        }
        if let Some(l) = &self.verifier_log {
            v["verifier_log"] = json!(l);
        }
        v
    }
}

impl std::fmt::Display for ToolError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.stage, self.msg)
    }
}

/// The symbolic name of an errno value (the ones these tools meet).
pub fn errno_name(e: i32) -> String {
    let n = match e {
        libc::EPERM => "EPERM",
        libc::ENOENT => "ENOENT",
        libc::ESRCH => "ESRCH",
        libc::EINTR => "EINTR",
        libc::EIO => "EIO",
        libc::ENXIO => "ENXIO",
        libc::E2BIG => "E2BIG",
        libc::EBADF => "EBADF",
        libc::EAGAIN => "EAGAIN",
        libc::ENOMEM => "ENOMEM",
        libc::EACCES => "EACCES",
        libc::EFAULT => "EFAULT",
        libc::EBUSY => "EBUSY",
        libc::EEXIST => "EEXIST",
        libc::EXDEV => "EXDEV",
        libc::ENODEV => "ENODEV",
        libc::ENOTDIR => "ENOTDIR",
        libc::EINVAL => "EINVAL",
        libc::ENOSPC => "ENOSPC",
        libc::ERANGE => "ERANGE",
        libc::ENOSYS => "ENOSYS",
        libc::ENONET => "ENONET",
        libc::EPROTO => "EPROTO",
        libc::EMSGSIZE => "EMSGSIZE",
        libc::EOPNOTSUPP => "EOPNOTSUPP",
        libc::EADDRNOTAVAIL => "EADDRNOTAVAIL",
        libc::ENETUNREACH => "ENETUNREACH",
        libc::ENOTCONN => "ENOTCONN",
        libc::ETIMEDOUT => "ETIMEDOUT",
        libc::ECONNREFUSED => "ECONNREFUSED",
        libc::EHOSTUNREACH => "EHOSTUNREACH",
        _ => return format!("E{e}"),
    };
    n.to_string()
}

fn errno() -> i32 {
    std::io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}

// ---------------------------------------------------------------- netns helpers

fn check_ns_name(name: &str) -> Result<PathBuf, ToolError> {
    if name.is_empty() || name.contains('/') || name == "." || name == ".." {
        return Err(ToolError::new("args", format!("bad netns name {name:?}")));
    }
    Ok(Path::new(NETNS_DIR).join(name))
}

/// Runs `f` on a helper thread inside netns `ns` (or the caller's netns), so
/// the calling thread stays where it is.
fn in_netns<T: Send>(
    ns: Option<&str>,
    f: impl FnOnce() -> Result<T, ToolError> + Send,
) -> Result<T, ToolError> {
    std::thread::scope(|s| {
        s.spawn(|| {
            if let Some(ns) = ns {
                check_ns_name(ns)?;
                enter_netns(ns).map_err(|e| ToolError::new("netns", e))?;
            }
            f()
        })
        .join()
        .unwrap_or_else(|_| Err(ToolError::new("internal", "helper thread panicked")))
    })
}

/// Creates netns `name` under [`NETNS_DIR`] unless it exists; true if created.
fn ensure_netns(name: &str) -> Result<bool, ToolError> {
    check_ns_name(name)?;
    let n = name.to_string();
    std::thread::spawn(move || netns_add_in(Path::new(NETNS_DIR), &n))
        .join()
        .map_err(|_| ToolError::new("netns", "netns-add thread panicked"))?
        .map_err(|e| ToolError::new("netns", e))
}

fn open_path(stage: &'static str, p: &Path) -> Result<OwnedFd, ToolError> {
    std::fs::File::open(p)
        .map(OwnedFd::from)
        .map_err(|e| ToolError::new(stage, format!("open {}: {e}", p.display())))
}

/// (device, inode) of a namespace file: equal means the same namespace.
fn ns_ident(p: &Path) -> Result<(u64, u64), ToolError> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(p)
        .map_err(|e| ToolError::new("netns", format!("stat {}: {e}", p.display())))?;
    Ok((m.dev(), m.ino()))
}

/// An interface index (a number is taken as is) in the calling thread's netns.
fn resolve_ifindex(stage: &'static str, name: &str) -> Result<u32, ToolError> {
    if let Ok(n) = name.parse::<u32>()
        && n > 0
    {
        return Ok(n);
    }
    ifindex(name).map_err(|e| ToolError {
        errno: Some(libc::ENODEV),
        ..ToolError::new(stage, e)
    })
}

// ---------------------------------------------------------------- message builders

/// nlmsghdr + a fixed family header (padded to 4) + attributes.
pub fn rt_msg(ty: u16, flags: u16, seq: u32, header: &[u8], attrs: &[u8]) -> Vec<u8> {
    let hlen = nl::align4(header.len());
    let len = nl::NLMSG_HDRLEN + hlen + attrs.len();
    let mut m = Vec::with_capacity(len);
    m.extend_from_slice(&(len as u32).to_ne_bytes());
    m.extend_from_slice(&ty.to_ne_bytes());
    m.extend_from_slice(&(flags | nl::NLM_F_REQUEST | nl::NLM_F_ACK).to_ne_bytes());
    m.extend_from_slice(&seq.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes());
    m.extend_from_slice(header);
    m.resize(nl::NLMSG_HDRLEN + hlen, 0);
    m.extend_from_slice(attrs);
    m
}

/// `struct ifinfomsg` (include/uapi/linux/rtnetlink.h), all zero but the index.
pub fn ifinfomsg(index: i32) -> [u8; 16] {
    let mut h = [0u8; 16];
    h[0] = libc::AF_UNSPEC as u8;
    h[4..8].copy_from_slice(&index.to_ne_bytes());
    h
}

/// What `netkit-add` creates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetkitSpec {
    pub primary: String,
    pub peer: String,
    pub mode: u32,
    pub policy: u32,
    pub peer_policy: u32,
    pub num_rx_queues: Option<u32>,
    pub peer_netns: Option<String>,
}

/// The `RTM_NEWLINK` request for `s` (`peer_ns_fd`: the peer's netns).
pub fn netkit_newlink_request(s: &NetkitSpec, seq: u32, peer_ns_fd: Option<i32>) -> Vec<u8> {
    // The peer: its own ifinfomsg followed by IFLA_* attributes.
    let mut peer = ifinfomsg(0).to_vec();
    let mut pa = Attrs::new();
    pa.put_strz(IFLA_IFNAME, &s.peer);
    if let Some(n) = s.num_rx_queues {
        pa.put_u32(IFLA_NUM_RX_QUEUES, n);
    }
    if let Some(fd) = peer_ns_fd {
        pa.put_u32(IFLA_NET_NS_FD, fd as u32);
    }
    peer.extend_from_slice(&pa.finish());

    let mut a = Attrs::new();
    a.put_strz(IFLA_IFNAME, &s.primary);
    if let Some(n) = s.num_rx_queues {
        a.put_u32(IFLA_NUM_RX_QUEUES, n);
    }
    a.nest_start(IFLA_LINKINFO);
    a.put_strz(IFLA_INFO_KIND, "netkit");
    a.nest_start(IFLA_INFO_DATA);
    a.put_u32(IFLA_NETKIT_MODE, s.mode);
    a.put_u32(IFLA_NETKIT_POLICY, s.policy);
    a.put_u32(IFLA_NETKIT_PEER_POLICY, s.peer_policy);
    // Not flagged nested: the kernel takes it as a blob of ifinfomsg length or more.
    a.put(IFLA_NETKIT_PEER_INFO, &peer);
    a.nest_end();
    a.nest_end();
    rt_msg(
        RTM_NEWLINK,
        NLM_F_CREATE | NLM_F_EXCL,
        seq,
        &ifinfomsg(0),
        &a.finish(),
    )
}

/// `RTM_DELLINK` by name.
pub fn dellink_request(name: &str, seq: u32) -> Vec<u8> {
    let attrs = Attrs::new().put_strz(IFLA_IFNAME, name).finish();
    rt_msg(RTM_DELLINK, 0, seq, &ifinfomsg(0), &attrs)
}

/// `RTM_GETNSID` for the netns open at `fd` (header: `struct rtgenmsg`).
pub fn getnsid_request(fd: i32, seq: u32) -> Vec<u8> {
    let attrs = Attrs::new().put_u32(NETNSA_FD, fd as u32).finish();
    rt_msg(RTM_GETNSID, 0, seq, &[libc::AF_UNSPEC as u8], &attrs)
}

/// `RTM_NEWNSID`: assign `nsid` (-1: the kernel picks) to the netns open at `fd`.
pub fn newnsid_request(fd: i32, nsid: i32, seq: u32) -> Vec<u8> {
    let attrs = Attrs::new()
        .put_u32(NETNSA_FD, fd as u32)
        .put(NETNSA_NSID, &nsid.to_ne_bytes())
        .finish();
    rt_msg(RTM_NEWNSID, 0, seq, &[libc::AF_UNSPEC as u8], &attrs)
}

/// The NETNSA_NSID of an `RTM_NEWNSID` reply payload (rtgenmsg + attrs).
pub fn parse_nsid_reply(payload: &[u8]) -> Result<i32, String> {
    let attrs = nl::parse_attrs(payload.get(4..).ok_or("nsid reply shorter than rtgenmsg")?)?;
    let a = attrs
        .iter()
        .find(|a| a.ty == NETNSA_NSID)
        .ok_or("no NETNSA_NSID in the reply")?;
    nl::attr_u32(a).map(|v| v as i32)
}

/// What `queue-lease` asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseReq {
    pub ifindex: u32,
    pub lessor_ifindex: u32,
    pub lessor_queue: u32,
    pub netns_id: Option<i32>,
}

/// The attributes of `NETDEV_CMD_QUEUE_CREATE` for `r`.
pub fn queue_create_attrs(r: &LeaseReq) -> Vec<u8> {
    let mut a = Attrs::new();
    a.put_u32(NETDEV_A_QUEUE_IFINDEX, r.ifindex);
    a.put_u32(NETDEV_A_QUEUE_TYPE, NETDEV_QUEUE_TYPE_RX);
    a.nest_start(NETDEV_A_QUEUE_LEASE);
    a.put_u32(NETDEV_A_LEASE_IFINDEX, r.lessor_ifindex);
    a.nest_start(NETDEV_A_LEASE_QUEUE);
    a.put_u32(NETDEV_A_QUEUE_ID, r.lessor_queue);
    a.put_u32(NETDEV_A_QUEUE_TYPE, NETDEV_QUEUE_TYPE_RX);
    a.nest_end();
    if let Some(id) = r.netns_id {
        a.put(NETDEV_A_LEASE_NETNS_ID, &id.to_ne_bytes());
    }
    a.nest_end();
    a.finish()
}

/// The attributes of `NETDEV_CMD_QUEUE_GET` (do).
pub fn queue_get_attrs(ifindex: u32, id: u32, ty: u32) -> Vec<u8> {
    Attrs::new()
        .put_u32(NETDEV_A_QUEUE_IFINDEX, ifindex)
        .put_u32(NETDEV_A_QUEUE_TYPE, ty)
        .put_u32(NETDEV_A_QUEUE_ID, id)
        .finish()
}

fn qtype_name(t: u32) -> Value {
    match t {
        NETDEV_QUEUE_TYPE_RX => json!("rx"),
        NETDEV_QUEUE_TYPE_TX => json!("tx"),
        n => json!(n),
    }
}

fn parse_queue_id_nest(data: &[u8]) -> Result<Value, String> {
    let mut v = json!({});
    for a in nl::parse_attrs(data)? {
        match a.ty {
            NETDEV_A_QUEUE_ID => v["id"] = json!(nl::attr_u32(&a)?),
            NETDEV_A_QUEUE_TYPE => v["type"] = qtype_name(nl::attr_u32(&a)?),
            _ => {}
        }
    }
    Ok(v)
}

/// A `NETDEV_CMD_QUEUE_GET`/`QUEUE_CREATE` reply's attributes as JSON.
pub fn parse_queue_attrs(attrs: &[u8]) -> Result<Value, String> {
    let mut v = json!({});
    for a in nl::parse_attrs(attrs)? {
        match a.ty {
            NETDEV_A_QUEUE_ID => v["id"] = json!(nl::attr_u32(&a)?),
            NETDEV_A_QUEUE_IFINDEX => v["ifindex"] = json!(nl::attr_u32(&a)?),
            NETDEV_A_QUEUE_TYPE => v["type"] = qtype_name(nl::attr_u32(&a)?),
            NETDEV_A_QUEUE_NAPI_ID => v["napi_id"] = json!(nl::attr_u32(&a)?),
            NETDEV_A_QUEUE_DMABUF => v["dmabuf"] = json!(nl::attr_u32(&a)?),
            NETDEV_A_QUEUE_IO_URING => v["io_uring"] = json!(true),
            NETDEV_A_QUEUE_XSK => v["xsk"] = json!(true),
            NETDEV_A_QUEUE_LEASE => {
                let mut l = json!({});
                for b in nl::parse_attrs(a.data)? {
                    match b.ty {
                        NETDEV_A_LEASE_IFINDEX => l["ifindex"] = json!(nl::attr_u32(&b)?),
                        NETDEV_A_LEASE_QUEUE => l["queue"] = parse_queue_id_nest(b.data)?,
                        NETDEV_A_LEASE_NETNS_ID => l["netns_id"] = json!(nl::attr_u32(&b)? as i32),
                        _ => {}
                    }
                }
                v["lease"] = l;
            }
            _ => {}
        }
    }
    Ok(v)
}

/// What `route-add` installs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteSpec {
    pub dst: std::net::IpAddr,
    pub dst_len: u8,
    pub via: Option<std::net::IpAddr>,
    pub dev: Option<String>,
}

/// `RTM_NEWROUTE` for `r` in the main table (`oif`: the resolved `dev`).
pub fn newroute_request(r: &RouteSpec, oif: Option<u32>, seq: u32) -> Vec<u8> {
    let family = if r.dst.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    } as u8;
    // A device route without gateway is link-scoped for IPv4 (what ip(8) does).
    let scope = if r.via.is_none() && r.dst.is_ipv4() {
        RT_SCOPE_LINK
    } else {
        RT_SCOPE_UNIVERSE
    };
    // struct rtmsg (include/uapi/linux/rtnetlink.h).
    let mut h = [0u8; 12];
    h[0] = family;
    h[1] = r.dst_len;
    h[4] = RT_TABLE_MAIN;
    h[5] = RTPROT_STATIC;
    h[6] = scope;
    h[7] = RTN_UNICAST;
    let ip = |a: &std::net::IpAddr| match a {
        std::net::IpAddr::V4(a) => a.octets().to_vec(),
        std::net::IpAddr::V6(a) => a.octets().to_vec(),
    };
    let mut a = Attrs::new();
    if r.dst_len > 0 {
        a.put(RTA_DST, &ip(&r.dst));
    }
    if let Some(g) = &r.via {
        a.put(RTA_GATEWAY, &ip(g));
    }
    if let Some(i) = oif {
        a.put_u32(RTA_OIF, i);
    }
    rt_msg(
        RTM_NEWROUTE,
        NLM_F_CREATE | NLM_F_EXCL,
        seq,
        &h,
        &a.finish(),
    )
}

// ---------------------------------------------------------------- eBPF

/// One eBPF instruction (`struct bpf_insn`, include/uapi/linux/bpf.h).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Insn {
    pub code: u8,
    pub dst: u8,
    pub src: u8,
    pub off: i16,
    pub imm: i32,
}

impl Insn {
    /// The 8 wire bytes: code, `dst_reg:4` in the low nibble then
    /// `src_reg:4` (little-endian bitfields), off, imm.
    pub fn encode(&self) -> [u8; 8] {
        let mut b = [0u8; 8];
        b[0] = self.code;
        b[1] = (self.src << 4) | (self.dst & 0x0f);
        b[2..4].copy_from_slice(&self.off.to_le_bytes());
        b[4..8].copy_from_slice(&self.imm.to_le_bytes());
        b
    }

    pub fn mov64_imm(dst: u8, imm: i32) -> Insn {
        Insn {
            code: op::ALU64 | op::MOV | op::K,
            dst,
            src: 0,
            off: 0,
            imm,
        }
    }
    pub fn mov64_reg(dst: u8, src: u8) -> Insn {
        Insn {
            code: op::ALU64 | op::MOV | op::X,
            dst,
            src,
            off: 0,
            imm: 0,
        }
    }
    pub fn add64_imm(dst: u8, imm: i32) -> Insn {
        Insn {
            code: op::ALU64 | op::ADD | op::K,
            dst,
            src: 0,
            off: 0,
            imm,
        }
    }
    pub fn and32_imm(dst: u8, imm: i32) -> Insn {
        Insn {
            code: op::ALU | op::AND | op::K,
            dst,
            src: 0,
            off: 0,
            imm,
        }
    }
    /// `dst = *(size *)(src + off)`.
    pub fn ldx(size: u8, dst: u8, src: u8, off: i16) -> Insn {
        Insn {
            code: op::LDX | op::MEM | size,
            dst,
            src,
            off,
            imm: 0,
        }
    }
    /// `if dst > src goto +off` (64-bit, unsigned).
    pub fn jgt_reg(dst: u8, src: u8, off: i16) -> Insn {
        Insn {
            code: op::JMP | op::JGT | op::X,
            dst,
            src,
            off,
            imm: 0,
        }
    }
    /// `if (u32)dst != imm goto +off`.
    pub fn jne32_imm(dst: u8, imm: i32, off: i16) -> Insn {
        Insn {
            code: op::JMP32 | op::JNE | op::K,
            dst,
            src: 0,
            off,
            imm,
        }
    }
    /// `if (u32)dst < imm goto +off` (unsigned).
    pub fn jlt32_imm(dst: u8, imm: i32, off: i16) -> Insn {
        Insn {
            code: op::JMP32 | op::JLT | op::K,
            dst,
            src: 0,
            off,
            imm,
        }
    }
    /// `if (u32)dst == imm goto +off`.
    pub fn jeq32_imm(dst: u8, imm: i32, off: i16) -> Insn {
        Insn {
            code: op::JMP32 | op::JEQ | op::K,
            dst,
            src: 0,
            off,
            imm,
        }
    }
    pub fn call(helper: i32) -> Insn {
        Insn {
            code: op::JMP | op::CALL,
            dst: 0,
            src: 0,
            off: 0,
            imm: helper,
        }
    }
    pub fn exit() -> Insn {
        Insn {
            code: op::JMP | op::EXIT,
            dst: 0,
            src: 0,
            off: 0,
            imm: 0,
        }
    }
}

/// Which redirect helper the program calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Helper {
    /// `bpf_redirect(ifindex, 0)`: out of (egress) `ifindex`.
    Redirect,
    /// `bpf_redirect_peer(ifindex, 0)`: into the ingress of `ifindex`'s peer
    /// (a netkit or veth in another netns).
    Peer,
    /// `bpf_redirect_neigh(ifindex, NULL, 0, 0)`: out of `ifindex` after a
    /// route and neighbour lookup that fills in the L2 header.
    Neigh,
}

impl Helper {
    pub fn name(self) -> &'static str {
        match self {
            Helper::Redirect => "bpf_redirect",
            Helper::Peer => "bpf_redirect_peer",
            Helper::Neigh => "bpf_redirect_neigh",
        }
    }
}

/// What the program matches before redirecting (everything when empty).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Match {
    /// Destination prefix (its family selects the ethertype checked).
    pub dst: Option<(std::net::IpAddr, u8)>,
    /// IPv6 only, and leave ICMPv6 (neighbour discovery) to the normal path.
    pub skip_icmp6: bool,
    /// Only packets of at least this many bytes (`skb->len`): e.g. TCP
    /// segments with data, leaving handshakes and pure ACKs alone.
    pub min_len: Option<u32>,
}

/// The redirect program: filter (packets not matched return `TCX_NEXT`),
/// then one helper call whose result (`TC_ACT_REDIRECT`, or `TC_ACT_SHOT`
/// when the target is gone) is the verdict.
pub fn redirect_program(helper: Helper, ifindex: u32, m: &Match) -> Vec<Insn> {
    const R0: u8 = 0;
    const R1: u8 = 1;
    const R2: u8 = 2;
    const R3: u8 = 3;
    const R4: u8 = 4;
    const R5: u8 = 5;
    let mut p = Vec::new();
    let mut to_pass = Vec::new(); // indices of jumps to the "pass" exit
    let v6 = m.skip_icmp6 || matches!(m.dst, Some((std::net::IpAddr::V6(_), _)));
    let filter = m.skip_icmp6 || m.dst.is_some() || m.min_len.is_some();
    if let Some(n) = m.min_len {
        p.push(Insn::ldx(op::W, R5, R1, SKB_LEN_OFF));
        to_pass.push(p.len());
        p.push(Insn::jlt32_imm(R5, n as i32, 0));
    }
    if m.skip_icmp6 || m.dst.is_some() {
        let (l3_len, ethertype, daddr_off) = if v6 {
            (40i32, 0x86ddu16, ETH_HLEN + 24)
        } else {
            (20i32, 0x0800u16, ETH_HLEN + 16)
        };
        p.push(Insn::ldx(op::W, R2, R1, SKB_DATA_OFF));
        p.push(Insn::ldx(op::W, R3, R1, SKB_DATA_END_OFF));
        p.push(Insn::mov64_reg(R4, R2));
        p.push(Insn::add64_imm(R4, ETH_HLEN as i32 + l3_len));
        to_pass.push(p.len());
        p.push(Insn::jgt_reg(R4, R3, 0));
        // The ethertype as a native-endian load of its network-order bytes.
        p.push(Insn::ldx(op::H, R5, R2, 12));
        to_pass.push(p.len());
        p.push(Insn::jne32_imm(
            R5,
            u16::from_ne_bytes(ethertype.to_be_bytes()) as i32,
            0,
        ));
        if v6 && m.skip_icmp6 {
            p.push(Insn::ldx(op::B, R5, R2, ETH_HLEN + 6)); // ipv6hdr.nexthdr
            to_pass.push(p.len());
            p.push(Insn::jeq32_imm(R5, IPPROTO_ICMPV6, 0));
        }
        if let Some((addr, len)) = m.dst {
            let bytes = match addr {
                std::net::IpAddr::V4(a) => a.octets().to_vec(),
                std::net::IpAddr::V6(a) => a.octets().to_vec(),
            };
            for (i, w) in bytes.chunks_exact(4).enumerate() {
                let bits = (len as i32 - 32 * i as i32).clamp(0, 32);
                if bits == 0 {
                    break;
                }
                let mask_be: u32 = if bits == 32 { !0 } else { !(!0u32 >> bits) };
                let mask = u32::from_ne_bytes(mask_be.to_be_bytes());
                let val = u32::from_ne_bytes([w[0], w[1], w[2], w[3]]) & mask;
                p.push(Insn::ldx(op::W, R5, R2, daddr_off + 4 * i as i16));
                if bits < 32 {
                    p.push(Insn::and32_imm(R5, mask as i32));
                }
                to_pass.push(p.len());
                p.push(Insn::jne32_imm(R5, val as i32, 0));
            }
        }
    }
    p.push(Insn::mov64_imm(R1, ifindex as i32));
    p.push(Insn::mov64_imm(R2, 0));
    let id = match helper {
        Helper::Redirect => BPF_FUNC_REDIRECT,
        Helper::Peer => BPF_FUNC_REDIRECT_PEER,
        Helper::Neigh => {
            p.push(Insn::mov64_imm(R3, 0));
            p.push(Insn::mov64_imm(R4, 0));
            BPF_FUNC_REDIRECT_NEIGH
        }
    };
    p.push(Insn::call(id));
    p.push(Insn::exit());
    if filter {
        let pass = p.len();
        p.push(Insn::mov64_imm(R0, NETKIT_NEXT));
        p.push(Insn::exit());
        for j in to_pass {
            p[j].off = (pass - j - 1) as i16;
        }
    }
    p
}

/// The program's bytes.
pub fn encode_program(p: &[Insn]) -> Vec<u8> {
    p.iter().flat_map(|i| i.encode()).collect()
}

fn sys_bpf(cmd: u32, attr: &mut [u8]) -> Result<i32, i32> {
    // SAFETY: attr is a writable buffer of the length we pass; the kernel
    // copies at most that many bytes and any pointers in it point at live
    // buffers owned by the caller for the duration of the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd as libc::c_long,
            attr.as_mut_ptr(),
            attr.len() as libc::c_long,
        )
    };
    if r < 0 { Err(errno()) } else { Ok(r as i32) }
}

fn put_u32(a: &mut [u8], off: usize, v: u32) {
    a[off..off + 4].copy_from_slice(&v.to_ne_bytes());
}

fn put_u64(a: &mut [u8], off: usize, v: u64) {
    a[off..off + 8].copy_from_slice(&v.to_ne_bytes());
}

/// `BPF_PROG_LOAD` of a GPL `SCHED_CLS` program; on failure the verifier log
/// (from a second, logging load) is in the error.
pub fn prog_load(prog: &[Insn], name: &str) -> Result<OwnedFd, ToolError> {
    let code = encode_program(prog);
    let license = c"GPL";
    let load = |log: Option<&mut Vec<u8>>| {
        // union bpf_attr, the BPF_PROG_LOAD struct (include/uapi/linux/bpf.h).
        let mut attr = [0u8; 128];
        put_u32(&mut attr, 0, BPF_PROG_TYPE_SCHED_CLS);
        put_u32(&mut attr, 4, prog.len() as u32);
        put_u64(&mut attr, 8, code.as_ptr() as u64);
        put_u64(&mut attr, 16, license.as_ptr() as u64);
        if let Some(l) = log {
            put_u32(&mut attr, 24, 1); // log_level
            put_u32(&mut attr, 28, l.len() as u32);
            put_u64(&mut attr, 32, l.as_mut_ptr() as u64);
        }
        let n = name.as_bytes();
        let n = &n[..n.len().min(15)];
        attr[48..48 + n.len()].copy_from_slice(n); // prog_name[16]
        sys_bpf(BPF_PROG_LOAD, &mut attr)
    };
    match load(None) {
        // SAFETY: a fresh program fd from the kernel, owned by nobody else.
        Ok(fd) => Ok(unsafe { OwnedFd::from_raw_fd(fd) }),
        Err(e) => {
            let mut log = vec![0u8; 64 << 10];
            let r = load(Some(&mut log));
            if let Ok(fd) = r {
                // SAFETY: as above; close it, the first load's failure stands.
                drop(unsafe { OwnedFd::from_raw_fd(fd) });
            }
            let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
            let mut err = ToolError::os("prog-load", "BPF_PROG_LOAD", e);
            err.verifier_log = Some(String::from_utf8_lossy(&log[..end]).into_owned());
            Err(err)
        }
    }
}

/// `BPF_LINK_CREATE` of `prog` on `ifindex` with `attach_type` (appended
/// after any programs already there).
pub fn link_create(prog: &OwnedFd, ifindex: u32, attach_type: u32) -> Result<OwnedFd, ToolError> {
    // union bpf_attr, the BPF_LINK_CREATE struct (include/uapi/linux/bpf.h).
    let mut attr = [0u8; 64];
    put_u32(&mut attr, 0, prog.as_raw_fd() as u32);
    put_u32(&mut attr, 4, ifindex);
    put_u32(&mut attr, 8, attach_type);
    match sys_bpf(BPF_LINK_CREATE, &mut attr) {
        // SAFETY: a fresh link fd from the kernel.
        Ok(fd) => Ok(unsafe { OwnedFd::from_raw_fd(fd) }),
        Err(e) => Err(ToolError::os("link-create", "BPF_LINK_CREATE", e)),
    }
}

/// Mounts bpffs at [`BPFFS`] unless it is there.
pub fn ensure_bpffs() -> Result<bool, ToolError> {
    let c = c"/sys/fs/bpf";
    // SAFETY: zeroed statfs is a valid out-parameter.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid path and out-parameter.
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } == 0 && st.f_type as i64 == BPF_FS_MAGIC {
        return Ok(false);
    }
    std::fs::create_dir_all(BPFFS)
        .map_err(|e| ToolError::new("pin", format!("mkdir {BPFFS}: {e}")))?;
    // SAFETY: valid C strings; a plain filesystem mount.
    let rc = unsafe {
        libc::mount(
            c"bpf".as_ptr(),
            c.as_ptr(),
            c"bpf".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(ToolError::os("pin", "mount bpffs on /sys/fs/bpf", errno()));
    }
    Ok(true)
}

/// Pins `fd` at `path` (replacing what was pinned there, which releases it).
pub fn obj_pin(fd: &OwnedFd, path: &Path) -> Result<(), ToolError> {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(ToolError::new("pin", format!("rm {}: {e}", path.display()))),
    }
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|e| ToolError::new("pin", e.to_string()))?;
    // union bpf_attr, the BPF_OBJ_* struct (include/uapi/linux/bpf.h).
    let mut attr = [0u8; 24];
    put_u64(&mut attr, 0, c.as_ptr() as u64);
    put_u32(&mut attr, 8, fd.as_raw_fd() as u32);
    sys_bpf(BPF_OBJ_PIN, &mut attr)
        .map(|_| ())
        .map_err(|e| ToolError::os("pin", &format!("BPF_OBJ_PIN {}", path.display()), e))
}

// ---------------------------------------------------------------- CLI parsing

struct Flags<'a> {
    args: &'a [String],
    pos: usize,
}

impl<'a> Flags<'a> {
    fn new(args: &'a [String]) -> Flags<'a> {
        Flags { args, pos: 0 }
    }
    fn next(&mut self) -> Option<&'a str> {
        let a = self.args.get(self.pos)?;
        self.pos += 1;
        Some(a)
    }
    fn value(&mut self, flag: &str) -> Result<String, String> {
        self.next()
            .map(String::from)
            .ok_or_else(|| format!("{flag} needs a value"))
    }
    fn u32(&mut self, flag: &str) -> Result<u32, String> {
        let v = self.value(flag)?;
        v.parse().map_err(|e| format!("{flag} {v:?}: {e}"))
    }
}

fn parse_policy(flag: &str, v: &str) -> Result<u32, String> {
    match v {
        "forward" | "pass" => Ok(NETKIT_PASS),
        "blackhole" | "drop" => Ok(NETKIT_DROP),
        _ => Err(format!("{flag} {v:?}: want forward or blackhole")),
    }
}

/// Parses `netkit-add` arguments.
pub fn parse_netkit_add(args: &[String]) -> Result<NetkitSpec, String> {
    let mut s = NetkitSpec {
        primary: String::new(),
        peer: String::new(),
        mode: NETKIT_L2,
        policy: NETKIT_PASS,
        peer_policy: NETKIT_PASS,
        num_rx_queues: None,
        peer_netns: None,
    };
    let mut f = Flags::new(args);
    while let Some(a) = f.next() {
        match a {
            "--primary" => s.primary = f.value(a)?,
            "--peer" => s.peer = f.value(a)?,
            "--mode" => {
                s.mode = match f.value(a)?.as_str() {
                    "l2" => NETKIT_L2,
                    "l3" => NETKIT_L3,
                    v => return Err(format!("--mode {v:?}: want l2 or l3")),
                }
            }
            "--peer-netns" => s.peer_netns = Some(f.value(a)?),
            "--num-rx-queues" => {
                let n = f.u32(a)?;
                if n == 0 {
                    return Err("--num-rx-queues must be at least 1".into());
                }
                s.num_rx_queues = Some(n);
            }
            "--policy" => s.policy = parse_policy(a, &f.value(a)?)?,
            "--peer-policy" => s.peer_policy = parse_policy(a, &f.value(a)?)?,
            _ => return Err(format!("unknown argument {a:?}")),
        }
    }
    for (flag, v) in [("--primary", &s.primary), ("--peer", &s.peer)] {
        if v.is_empty() {
            return Err(format!("{flag} NAME is required"));
        }
        if v.len() >= 16 || v.contains('/') || v.contains(char::is_whitespace) {
            return Err(format!("{flag} {v:?}: not a valid interface name"));
        }
    }
    if s.primary == s.peer {
        return Err("--primary and --peer must differ".into());
    }
    Ok(s)
}

/// `queue-lease` arguments.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LeaseArgs {
    pub dev: String,
    pub netns: Option<String>,
    pub lessor: String,
    pub lessor_netns: Option<String>,
    pub queue: u32,
    /// `Some(None)`: `--no-netns-id`; `Some(Some(n))`: `--netns-id n`.
    pub netns_id: Option<Option<i32>>,
}

pub fn parse_queue_lease(args: &[String]) -> Result<LeaseArgs, String> {
    let mut l = LeaseArgs::default();
    let mut queue = None;
    let mut f = Flags::new(args);
    while let Some(a) = f.next() {
        match a {
            "--dev" => l.dev = f.value(a)?,
            "--netns" => l.netns = Some(f.value(a)?),
            "--lessor" => l.lessor = f.value(a)?,
            "--lessor-netns" => l.lessor_netns = Some(f.value(a)?),
            "--queue" => queue = Some(f.u32(a)?),
            "--netns-id" => {
                let v = f.value(a)?;
                let n: i32 = v.parse().map_err(|e| format!("{a} {v:?}: {e}"))?;
                if n < 0 {
                    return Err(format!("{a} must be >= 0"));
                }
                l.netns_id = Some(Some(n));
            }
            "--no-netns-id" => l.netns_id = Some(None),
            _ => return Err(format!("unknown argument {a:?}")),
        }
    }
    if l.dev.is_empty() || l.lessor.is_empty() {
        return Err("--dev NKG and --lessor IF are required".into());
    }
    l.queue = queue.ok_or("--queue Q is required")?;
    Ok(l)
}

/// `bpf-redirect` arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedirectArgs {
    pub dev: String,
    pub netns: Option<String>,
    pub hook: String,
    pub attach_type: u32,
    pub to: String,
    pub to_netns: Option<String>,
    pub helper: Helper,
    pub m: Match,
    pub pin: Option<String>,
}

fn hook_attach_type(h: &str) -> Result<u32, String> {
    match h {
        "netkit-primary" => Ok(BPF_NETKIT_PRIMARY),
        "netkit-peer" => Ok(BPF_NETKIT_PEER),
        "tcx-ingress" => Ok(BPF_TCX_INGRESS),
        "tcx-egress" => Ok(BPF_TCX_EGRESS),
        _ => Err(format!(
            "--hook {h:?}: want netkit-primary, netkit-peer, tcx-ingress or tcx-egress"
        )),
    }
}

pub fn parse_bpf_redirect(args: &[String]) -> Result<RedirectArgs, String> {
    let mut r = RedirectArgs {
        dev: String::new(),
        netns: None,
        hook: String::new(),
        attach_type: 0,
        to: String::new(),
        to_netns: None,
        helper: Helper::Redirect,
        m: Match::default(),
        pin: None,
    };
    let mut f = Flags::new(args);
    while let Some(a) = f.next() {
        match a {
            "--dev" => r.dev = f.value(a)?,
            "--netns" => r.netns = Some(f.value(a)?),
            "--hook" => {
                r.hook = f.value(a)?;
                r.attach_type = hook_attach_type(&r.hook)?;
            }
            "--to" => r.to = f.value(a)?,
            "--to-netns" => r.to_netns = Some(f.value(a)?),
            "--peer" => r.helper = Helper::Peer,
            "--neigh" => r.helper = Helper::Neigh,
            "--match-dst" => {
                let v = f.value(a)?;
                r.m.dst = Some(crate::guest_tools::parse_cidr(&v)?);
            }
            "--skip-icmp6" => r.m.skip_icmp6 = true,
            "--min-len" => r.m.min_len = Some(f.u32(a)?),
            "--pin" => {
                let v = f.value(a)?;
                if v.is_empty() || v.contains('/') || v.starts_with('.') {
                    return Err(format!("--pin {v:?}: a plain file name"));
                }
                r.pin = Some(v);
            }
            _ => return Err(format!("unknown argument {a:?}")),
        }
    }
    if r.dev.is_empty() || r.to.is_empty() || r.hook.is_empty() {
        return Err("--dev IF, --to IF2 and --hook H are required".into());
    }
    if args.iter().any(|a| a == "--peer") && args.iter().any(|a| a == "--neigh") {
        return Err("--peer and --neigh exclude each other".into());
    }
    if r.m.skip_icmp6 && matches!(r.m.dst, Some((std::net::IpAddr::V4(_), _))) {
        return Err("--skip-icmp6 is for IPv6 destinations".into());
    }
    Ok(r)
}

/// Parses `route-add [--netns NS] DST/LEN|default [via GW] [dev IF]`.
pub fn parse_route_add(args: &[String]) -> Result<(Option<String>, RouteSpec), String> {
    let mut netns = None;
    let mut dst = None;
    let mut via: Option<std::net::IpAddr> = None;
    let mut dev = None;
    let mut f = Flags::new(args);
    while let Some(a) = f.next() {
        match a {
            "--netns" => netns = Some(f.value(a)?),
            "via" => {
                let v = f.value(a)?;
                via = Some(v.parse().map_err(|e| format!("via {v:?}: {e}"))?);
            }
            "dev" => dev = Some(f.value(a)?),
            _ if dst.is_none() && !a.starts_with('-') => dst = Some(a.to_string()),
            _ => return Err(format!("unknown argument {a:?}")),
        }
    }
    let dst = dst.ok_or("a destination DST/LEN (or default) is required")?;
    let (dst, dst_len) = if dst == "default" {
        match via {
            Some(std::net::IpAddr::V4(_)) => (std::net::Ipv4Addr::UNSPECIFIED.into(), 0),
            Some(std::net::IpAddr::V6(_)) => (std::net::Ipv6Addr::UNSPECIFIED.into(), 0),
            None => return Err("default needs via GW (its family picks the table)".into()),
        }
    } else {
        crate::guest_tools::parse_cidr(&dst)?
    };
    if let Some(g) = via
        && g.is_ipv4() != dst.is_ipv4()
    {
        return Err("gateway and destination families differ".into());
    }
    if via.is_none() && dev.is_none() {
        return Err("via GW or dev IF is required".into());
    }
    Ok((
        netns,
        RouteSpec {
            dst,
            dst_len,
            via,
            dev,
        },
    ))
}

/// `netkit-wire` arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WireArgs {
    pub bpf: bool,
    pub nic: String,
    pub primary: String,
    pub peer: String,
    pub netns: String,
    pub addr: std::net::Ipv6Addr,
    pub prefix: u8,
    pub tx_hook: String,
}

pub fn parse_wire(args: &[String]) -> Result<WireArgs, String> {
    let mut mode = None;
    let (mut nic, mut primary, mut peer, mut netns) =
        (String::new(), String::new(), String::new(), String::new());
    let mut addr = None;
    let mut tx_hook = "tcx-ingress".to_string();
    let mut f = Flags::new(args);
    while let Some(a) = f.next() {
        match a {
            "--mode" => {
                mode = Some(match f.value(a)?.as_str() {
                    "bpf" => true,
                    "forward" => false,
                    v => return Err(format!("--mode {v:?}: want bpf or forward")),
                })
            }
            "--nic" => nic = f.value(a)?,
            "--primary" => primary = f.value(a)?,
            "--peer" => peer = f.value(a)?,
            "--netns" => netns = f.value(a)?,
            "--addr" => {
                let v = f.value(a)?;
                match crate::guest_tools::parse_cidr(&v)? {
                    (std::net::IpAddr::V6(x), p) => addr = Some((x, p)),
                    _ => return Err(format!("--addr {v:?}: IPv6 only (like upstream)")),
                }
            }
            "--tx-hook" => {
                tx_hook = f.value(a)?;
                if tx_hook != "tcx-ingress" && tx_hook != "netkit-peer" {
                    return Err(format!(
                        "--tx-hook {tx_hook:?}: want tcx-ingress or netkit-peer"
                    ));
                }
            }
            _ => return Err(format!("unknown argument {a:?}")),
        }
    }
    let bpf = mode.ok_or("--mode bpf|forward is required")?;
    if nic.is_empty() || primary.is_empty() || peer.is_empty() || netns.is_empty() {
        return Err("--nic, --primary, --peer and --netns are required".into());
    }
    let (addr, prefix) = addr.ok_or("--addr V6/LEN is required")?;
    Ok(WireArgs {
        bpf,
        nic,
        primary,
        peer,
        netns,
        addr,
        prefix,
        tx_hook,
    })
}

// ---------------------------------------------------------------- operations

fn route_sock(stage: &'static str) -> Result<Genl, ToolError> {
    Genl::open_protocol(NETLINK_ROUTE).map_err(|e| ToolError::nl(stage, "netlink socket", e))
}

fn rt_do(
    stage: &'static str,
    what: &str,
    build: impl FnOnce(u32) -> Vec<u8>,
) -> Result<Vec<Vec<u8>>, ToolError> {
    let mut s = route_sock(stage)?;
    let seq = s.next_seq();
    s.transact(&build(seq), seq)
        .map_err(|e| ToolError::nl(stage, what, e))
}

/// `netkit-add`.
pub fn netkit_add(s: &NetkitSpec) -> Result<Value, ToolError> {
    let mut created = false;
    let ns_fd = match &s.peer_netns {
        Some(ns) => {
            created = ensure_netns(ns)?;
            Some(open_path("netns", &check_ns_name(ns)?)?)
        }
        None => None,
    };
    rt_do("newlink", "RTM_NEWLINK netkit", |seq| {
        netkit_newlink_request(s, seq, ns_fd.as_ref().map(|f| f.as_raw_fd()))
    })?;
    let primary_idx = resolve_ifindex("newlink", &s.primary)?;
    let peer = s.peer.clone();
    let peer_idx = in_netns(s.peer_netns.as_deref(), move || {
        resolve_ifindex("newlink", &peer)
    })?;
    Ok(json!({
        "ok": true,
        "primary": {"ifname": s.primary, "ifindex": primary_idx, "netns": ""},
        "peer": {"ifname": s.peer, "ifindex": peer_idx, "netns": s.peer_netns.clone().unwrap_or_default()},
        "mode": if s.mode == NETKIT_L2 { "l2" } else { "l3" },
        "num_rx_queues": s.num_rx_queues,
        "netns_created": created,
    }))
}

/// `netkit-del`.
pub fn netkit_del(dev: &str, netns: Option<&str>) -> Result<Value, ToolError> {
    in_netns(netns, || {
        rt_do("dellink", "RTM_DELLINK", |seq| dellink_request(dev, seq))
    })?;
    Ok(json!({"ok": true, "dev": dev, "netns": netns.unwrap_or("")}))
}

/// The id the calling thread's netns knows the netns at `fd` by, assigning
/// one when there is none. Returns (id, assigned_now).
pub fn ensure_nsid(fd: i32) -> Result<(i32, bool), ToolError> {
    let get = || -> Result<i32, ToolError> {
        let replies = rt_do("nsid", "RTM_GETNSID", |seq| getnsid_request(fd, seq))?;
        let r = replies
            .first()
            .ok_or_else(|| ToolError::new("nsid", "no RTM_GETNSID reply"))?;
        parse_nsid_reply(r).map_err(|e| ToolError::new("nsid", e))
    };
    let id = get()?;
    if id != NETNSA_NSID_NOT_ASSIGNED {
        return Ok((id, false));
    }
    rt_do("nsid", "RTM_NEWNSID", |seq| newnsid_request(fd, -1, seq))?;
    let id = get()?;
    if id < 0 {
        return Err(ToolError::new("nsid", "RTM_NEWNSID did not assign an id"));
    }
    Ok((id, true))
}

fn netdev_sock(stage: &'static str) -> Result<(Genl, u16), ToolError> {
    let mut g = Genl::open().map_err(|e| ToolError::nl(stage, "genetlink socket", e))?;
    let fam = g
        .family_id(NETDEV_FAMILY_NAME)
        .map_err(|e| ToolError::nl(stage, "netdev family", e))?;
    Ok((g, fam))
}

fn netdev_do(stage: &'static str, what: &str, cmd: u8, attrs: &[u8]) -> Result<Value, ToolError> {
    let (mut g, fam) = netdev_sock(stage)?;
    let seq = g.next_seq();
    let msg = nl::genl_request(
        fam,
        nl::NLM_F_REQUEST | nl::NLM_F_ACK,
        seq,
        cmd,
        NETDEV_FAMILY_VERSION,
        attrs,
    );
    let replies = g
        .transact(&msg, seq)
        .map_err(|e| ToolError::nl(stage, what, e))?;
    let r = replies
        .first()
        .ok_or_else(|| ToolError::new(stage, format!("{what}: no reply")))?;
    let attrs = r
        .get(nl::GENL_HDRLEN..)
        .ok_or_else(|| ToolError::new(stage, "reply shorter than a genl header"))?;
    parse_queue_attrs(attrs).map_err(|e| ToolError::new(stage, e))
}

/// `queue-lease`.
pub fn queue_lease(l: &LeaseArgs) -> Result<Value, ToolError> {
    // The lessor's netns, opened from here (the caller's netns by default).
    let lessor_ns_path = match &l.lessor_netns {
        Some(ns) => check_ns_name(ns)?,
        None => PathBuf::from("/proc/thread-self/ns/net"),
    };
    let lessor_fd = open_path("netns", &lessor_ns_path)?;
    let lessor_ident = ns_ident(&lessor_ns_path)?;
    let lessor = l.lessor.clone();
    let lessor_idx = in_netns(l.lessor_netns.as_deref(), move || {
        resolve_ifindex("lessor", &lessor)
    })?;
    in_netns(l.netns.as_deref(), || {
        let idx = resolve_ifindex("dev", &l.dev)?;
        let same = ns_ident(Path::new("/proc/thread-self/ns/net"))? == lessor_ident;
        let (netns_id, assigned) = match l.netns_id {
            Some(explicit) => (explicit, false),
            None if same => (None, false),
            None => {
                let (id, a) = ensure_nsid(lessor_fd.as_raw_fd())?;
                (Some(id), a)
            }
        };
        let req = LeaseReq {
            ifindex: idx,
            lessor_ifindex: lessor_idx,
            lessor_queue: l.queue,
            netns_id,
        };
        let q = netdev_do(
            "queue-create",
            "NETDEV_CMD_QUEUE_CREATE",
            NETDEV_CMD_QUEUE_CREATE,
            &queue_create_attrs(&req),
        )?;
        Ok(json!({
            "ok": true,
            "queue_id": q.get("id"),
            "dev": l.dev, "ifindex": idx, "netns": l.netns.clone().unwrap_or_default(),
            "lessor": l.lessor, "lessor_ifindex": lessor_idx,
            "lessor_netns": l.lessor_netns.clone().unwrap_or_default(),
            "lessor_queue": l.queue,
            "netns_id": netns_id,
            "netns_id_assigned": assigned,
        }))
    })
}

/// `queue-get`.
pub fn queue_get(dev: &str, netns: Option<&str>, id: u32, ty: u32) -> Result<Value, ToolError> {
    in_netns(netns, || {
        let idx = resolve_ifindex("dev", dev)?;
        let mut q = netdev_do(
            "queue-get",
            "NETDEV_CMD_QUEUE_GET",
            NETDEV_CMD_QUEUE_GET,
            &queue_get_attrs(idx, id, ty),
        )?;
        q["ok"] = json!(true);
        q["dev"] = json!(dev);
        q["netns"] = json!(netns.unwrap_or(""));
        Ok(q)
    })
}

/// `bpf-redirect`.
pub fn bpf_redirect(r: &RedirectArgs) -> Result<Value, ToolError> {
    let to = r.to.clone();
    let to_ns = r.to_netns.clone().or_else(|| r.netns.clone());
    let to_idx = in_netns(to_ns.as_deref(), move || resolve_ifindex("to", &to))?;
    let prog = redirect_program(r.helper, to_idx, &r.m);
    let mounted = ensure_bpffs()?;
    std::fs::create_dir_all(PIN_DIR)
        .map_err(|e| ToolError::new("pin", format!("mkdir {PIN_DIR}: {e}")))?;
    let pin = Path::new(PIN_DIR).join(r.pin.clone().unwrap_or_else(|| {
        format!(
            "{}-{}-{}",
            r.netns.as_deref().unwrap_or("init"),
            r.dev,
            r.hook
        )
    }));
    let (dev_idx, _) = in_netns(r.netns.as_deref(), || {
        let idx = resolve_ifindex("dev", &r.dev)?;
        let p = prog_load(&prog, "netmem_redir")?;
        let link = link_create(&p, idx, r.attach_type)?;
        obj_pin(&link, &pin)?;
        Ok((idx, ()))
    })?;
    Ok(json!({
        "ok": true,
        "dev": r.dev, "ifindex": dev_idx, "netns": r.netns.clone().unwrap_or_default(),
        "hook": r.hook, "attach_type": r.attach_type,
        "helper": r.helper.name(), "to": r.to, "to_ifindex": to_idx,
        "match_dst": r.m.dst.map(|(a, l)| format!("{a}/{l}")),
        "skip_icmp6": r.m.skip_icmp6,
        "min_len": r.m.min_len,
        "insns": prog.len(),
        "pin": pin, "bpffs_mounted": mounted,
    }))
}

/// `route-add` in the calling thread's netns (EEXIST is fine: `already_present`).
pub fn route_add(r: &RouteSpec) -> Result<Value, ToolError> {
    let oif = match &r.dev {
        Some(d) => Some(resolve_ifindex("route", d)?),
        None => None,
    };
    let present = match rt_do("route", "RTM_NEWROUTE", |seq| newroute_request(r, oif, seq)) {
        Ok(_) => false,
        Err(e) if e.errno == Some(libc::EEXIST) => true,
        Err(e) => return Err(e),
    };
    Ok(json!({
        "ok": true,
        "dst": format!("{}/{}", r.dst, r.dst_len),
        "via": r.via.map(|v| v.to_string()),
        "dev": r.dev, "oif": oif, "already_present": present,
    }))
}

fn sysctl(path: &str, v: &str) -> Result<(), ToolError> {
    std::fs::write(path, v).map_err(|e| ToolError::new("sysctl", format!("{path}: {e}")))
}

/// `netkit-wire`: see the module docs.
pub fn netkit_wire(w: &WireArgs) -> Result<Value, ToolError> {
    let mut steps = Vec::new();
    for p in [
        "/proc/sys/net/ipv6/conf/all/forwarding",
        "/proc/sys/net/ipv4/conf/all/forwarding",
    ] {
        sysctl(p, "1")?;
    }
    let host_ll = "fe80::1".to_string();
    let guest_ll: std::net::IpAddr = "fe80::2".parse().expect("literal");
    let setup = |dev: &str, ns: Option<&str>, addrs: Vec<String>, wait: bool| {
        let s = NetnsSetup {
            dev: dev.to_string(),
            netns: ns.map(String::from),
            addrs,
            nodad: true,
            up: true,
            wait: wait.then(|| Duration::from_secs(10)),
        };
        std::thread::spawn(move || netns_setup(&s, Path::new(NETNS_DIR)))
            .join()
            .map_err(|_| ToolError::new("addr", "netns-setup thread panicked"))?
            .map_err(|e| ToolError::new("addr", e))
    };
    steps.push(setup(
        &w.primary,
        None,
        vec![format!("{host_ll}/64")],
        false,
    )?);
    // The global address first, waited for (carrier, DAD-free and routable);
    // the link-local one apart: netns-setup's readiness check binds the
    // address, which a link-local address refuses without a scope id.
    steps.push(setup(
        &w.peer,
        Some(&w.netns),
        vec![format!("{}/{}", w.addr, w.prefix)],
        true,
    )?);
    steps.push(setup(
        &w.peer,
        Some(&w.netns),
        vec!["fe80::2/64".into()],
        false,
    )?);
    let def = RouteSpec {
        dst: std::net::Ipv6Addr::UNSPECIFIED.into(),
        dst_len: 0,
        via: Some(host_ll.parse().expect("literal")),
        dev: Some(w.peer.clone()),
    };
    steps.push(in_netns(Some(&w.netns), || route_add(&def))?);
    let host = RouteSpec {
        dst: w.addr.into(),
        dst_len: 128,
        via: Some(guest_ll),
        dev: Some(w.primary.clone()),
    };
    steps.push(route_add(&host)?);
    if w.bpf {
        // NIC -> container: traffic for the container's address goes into
        // the netkit peer's ingress (upstream nk_forward.bpf.c).
        steps.push(bpf_redirect(&RedirectArgs {
            dev: w.nic.clone(),
            netns: None,
            hook: "tcx-ingress".into(),
            attach_type: BPF_TCX_INGRESS,
            to: w.primary.clone(),
            to_netns: None,
            helper: Helper::Peer,
            m: Match {
                dst: Some((w.addr.into(), 128)),
                ..Match::default()
            },
            pin: None,
        })?);
        // Container -> NIC: IPv6 but ICMPv6 leaves through the NIC with a
        // neighbour lookup (upstream nk_primary_rx_redirect.bpf.c).
        steps.push(bpf_redirect(&RedirectArgs {
            dev: w.primary.clone(),
            netns: None,
            hook: w.tx_hook.clone(),
            attach_type: hook_attach_type(&w.tx_hook).map_err(|e| ToolError::new("args", e))?,
            to: w.nic.clone(),
            to_netns: None,
            helper: Helper::Neigh,
            m: Match {
                skip_icmp6: true,
                ..Match::default()
            },
            pin: None,
        })?);
    }
    Ok(json!({
        "ok": true,
        "mode": if w.bpf { "bpf" } else { "forward" },
        "nic": w.nic, "primary": w.primary, "peer": w.peer, "netns": w.netns,
        "addr": format!("{}/{}", w.addr, w.prefix),
        "steps": steps,
    }))
}

// ---------------------------------------------------------------- entry point

fn print(v: &Value) {
    println!("{v}");
}

/// Runs netkit tool `tool` (one of [`TOOLS`]); returns the exit code.
pub fn main(tool: &str, args: &[String]) -> i32 {
    let usage = |e: String| {
        eprintln!("netmem-lab {tool}: {e}");
        print(&json!({"ok": false, "stage": "args", "error": e}));
        2
    };
    let res = match tool {
        "netkit-add" => match parse_netkit_add(args) {
            Ok(s) => netkit_add(&s),
            Err(e) => return usage(e),
        },
        "netkit-del" => {
            let mut f = Flags::new(args);
            let (mut dev, mut netns) = (None, None);
            while let Some(a) = f.next() {
                let r = match a {
                    "--dev" => f.value(a).map(|v| dev = Some(v)),
                    "--netns" => f.value(a).map(|v| netns = Some(v)),
                    _ => Err(format!("unknown argument {a:?}")),
                };
                if let Err(e) = r {
                    return usage(e);
                }
            }
            let Some(dev) = dev else {
                return usage("--dev NAME is required".into());
            };
            netkit_del(&dev, netns.as_deref())
        }
        "queue-lease" => match parse_queue_lease(args) {
            Ok(l) => queue_lease(&l),
            Err(e) => return usage(e),
        },
        "queue-get" => {
            let mut f = Flags::new(args);
            let (mut dev, mut netns, mut q, mut ty) = (None, None, None, NETDEV_QUEUE_TYPE_RX);
            while let Some(a) = f.next() {
                let r = match a {
                    "--dev" => f.value(a).map(|v| dev = Some(v)),
                    "--netns" => f.value(a).map(|v| netns = Some(v)),
                    "--queue" => f.u32(a).map(|v| q = Some(v)),
                    "--type" => f.value(a).and_then(|v| {
                        ty = match v.as_str() {
                            "rx" => NETDEV_QUEUE_TYPE_RX,
                            "tx" => NETDEV_QUEUE_TYPE_TX,
                            _ => return Err(format!("--type {v:?}: want rx or tx")),
                        };
                        Ok(())
                    }),
                    _ => Err(format!("unknown argument {a:?}")),
                };
                if let Err(e) = r {
                    return usage(e);
                }
            }
            let (Some(dev), Some(q)) = (dev, q) else {
                return usage("--dev IF and --queue Q are required".into());
            };
            queue_get(&dev, netns.as_deref(), q, ty)
        }
        "bpf-redirect" => match parse_bpf_redirect(args) {
            Ok(r) => bpf_redirect(&r),
            Err(e) => return usage(e),
        },
        "netkit-wire" => match parse_wire(args) {
            Ok(w) => netkit_wire(&w),
            Err(e) => return usage(e),
        },
        "route-add" => match parse_route_add(args) {
            Ok((ns, r)) => in_netns(ns.as_deref(), || route_add(&r)),
            Err(e) => return usage(e),
        },
        _ => return usage(format!("unknown tool (known: {})", TOOLS.join(", "))),
    };
    match res {
        Ok(v) => {
            print(&v);
            0
        }
        Err(e) => {
            print(&e.to_json());
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sv(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    /// A hand-built attribute: header, payload, padding.
    fn hattr(ty: u16, payload: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&((4 + payload.len()) as u16).to_ne_bytes());
        v.extend_from_slice(&ty.to_ne_bytes());
        v.extend_from_slice(payload);
        while v.len() % 4 != 0 {
            v.push(0);
        }
        v
    }

    fn hnest(ty: u16, inner: &[Vec<u8>]) -> Vec<u8> {
        hattr(ty | 0x8000, &inner.concat())
    }

    fn u32b(v: u32) -> Vec<u8> {
        v.to_ne_bytes().to_vec()
    }

    /// nlmsghdr with REQUEST|ACK|extra flags.
    fn hmsg(ty: u16, extra_flags: u16, seq: u32, body: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&((16 + body.len()) as u32).to_ne_bytes());
        v.extend_from_slice(&ty.to_ne_bytes());
        v.extend_from_slice(&(0x05 | extra_flags).to_ne_bytes());
        v.extend_from_slice(&seq.to_ne_bytes());
        v.extend_from_slice(&[0; 4]);
        v.extend_from_slice(body);
        v
    }

    #[test]
    fn newlink_bytes_match_hand_built() {
        let s = parse_netkit_add(&sv(
            "--primary nkh --peer nkg --num-rx-queues 2 --peer-policy blackhole",
        ))
        .unwrap();
        let got = netkit_newlink_request(&s, 7, Some(9));
        let ifi = [0u8; 16];
        let mut peer = ifi.to_vec();
        peer.extend(hattr(3, b"nkg\0"));
        peer.extend(hattr(32, &u32b(2)));
        peer.extend(hattr(28, &u32b(9)));
        let data = hnest(
            2,
            &[
                hattr(5, &u32b(0)), // mode l2
                hattr(3, &u32b(0)), // policy forward
                hattr(4, &u32b(2)), // peer policy blackhole
                hattr(1, &peer),    // peer info, not flagged nested
            ],
        );
        let linkinfo = hnest(18, &[hattr(1, b"netkit\0"), data]);
        let body = [
            ifi.to_vec(),
            hattr(3, b"nkh\0"),
            hattr(32, &u32b(2)),
            linkinfo,
        ]
        .concat();
        assert_eq!(got, hmsg(16, 0x600, 7, &body));
        // Parses back: the outer length is the message length.
        let m = nl::parse_msgs(&got).unwrap();
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].ty, RTM_NEWLINK);
    }

    #[test]
    fn small_rtnetlink_requests() {
        let ifi = [0u8; 16];
        assert_eq!(
            dellink_request("nkh", 3),
            hmsg(17, 0, 3, &[ifi.to_vec(), hattr(3, b"nkh\0")].concat())
        );
        let rtgen = [0u8, 0, 0, 0];
        assert_eq!(
            getnsid_request(5, 4),
            hmsg(90, 0, 4, &[rtgen.to_vec(), hattr(3, &u32b(5))].concat())
        );
        assert_eq!(
            newnsid_request(5, -1, 4),
            hmsg(
                88,
                0,
                4,
                &[
                    rtgen.to_vec(),
                    hattr(3, &u32b(5)),
                    hattr(1, &(-1i32).to_ne_bytes())
                ]
                .concat()
            )
        );
        // route-add 2001:db8:2::2/128 via fe80::2 dev (oif 4)
        let (_, r) = parse_route_add(&sv("2001:db8:2::2/128 via fe80::2 dev nkh")).unwrap();
        let dst: std::net::Ipv6Addr = "2001:db8:2::2".parse().unwrap();
        let gw: std::net::Ipv6Addr = "fe80::2".parse().unwrap();
        let rtm = [libc::AF_INET6 as u8, 128, 0, 0, 254, 4, 0, 1, 0, 0, 0, 0];
        assert_eq!(
            newroute_request(&r, Some(4), 9),
            hmsg(
                24,
                0x600,
                9,
                &[
                    rtm.to_vec(),
                    hattr(1, &dst.octets()),
                    hattr(5, &gw.octets()),
                    hattr(4, &u32b(4))
                ]
                .concat()
            )
        );
        // An IPv4 device route is link-scoped and a default route has no RTA_DST.
        let (_, r) = parse_route_add(&sv("10.0.0.0/8 dev eth0")).unwrap();
        let m = newroute_request(&r, Some(2), 1);
        assert_eq!(&m[16..28], &[2, 8, 0, 0, 254, 4, 253, 1, 0, 0, 0, 0]);
        let (ns, r) = parse_route_add(&sv("--netns ctr default via fe80::1 dev nkg")).unwrap();
        assert_eq!(ns.as_deref(), Some("ctr"));
        let m = newroute_request(&r, Some(2), 1);
        assert_eq!(m[17], 0); // dst_len
        let attrs = nl::parse_attrs(&m[28..]).unwrap();
        assert_eq!(
            attrs.iter().map(|a| a.ty).collect::<Vec<_>>(),
            vec![RTA_GATEWAY, RTA_OIF]
        );
    }

    #[test]
    fn queue_create_attrs_match_hand_built() {
        let r = LeaseReq {
            ifindex: 2,
            lessor_ifindex: 5,
            lessor_queue: 1,
            netns_id: Some(0),
        };
        let want = [
            hattr(2, &u32b(2)), // ifindex
            hattr(3, &u32b(0)), // type rx
            hnest(
                8,
                &[
                    hattr(1, &u32b(5)),
                    hnest(2, &[hattr(1, &u32b(1)), hattr(3, &u32b(0))]),
                    hattr(3, &0i32.to_ne_bytes()),
                ],
            ),
        ]
        .concat();
        assert_eq!(queue_create_attrs(&r), want);
        let no_ns = queue_create_attrs(&LeaseReq {
            netns_id: None,
            ..r
        });
        assert_eq!(no_ns.len(), want.len() - 8);
        assert_eq!(
            queue_get_attrs(2, 1, NETDEV_QUEUE_TYPE_RX),
            [hattr(2, &u32b(2)), hattr(3, &u32b(0)), hattr(1, &u32b(1))].concat()
        );
    }

    #[test]
    fn queue_reply_with_lease_parses() {
        let reply = [
            hattr(1, &u32b(1)),
            hattr(3, &u32b(0)),
            hattr(2, &u32b(2)),
            hattr(4, &u32b(8206)),
            hnest(
                8,
                &[
                    hnest(2, &[hattr(1, &u32b(1)), hattr(3, &u32b(0))]),
                    hattr(1, &u32b(2)),
                    hattr(3, &1i32.to_ne_bytes()),
                ],
            ),
            hattr(5, &u32b(3)),
        ]
        .concat();
        let v = parse_queue_attrs(&reply).unwrap();
        assert_eq!(
            v,
            json!({"id": 1, "type": "rx", "ifindex": 2, "napi_id": 8206, "dmabuf": 3,
                   "lease": {"queue": {"id": 1, "type": "rx"}, "ifindex": 2, "netns_id": 1}})
        );
        // Truncated or malformed replies are errors, not panics.
        assert!(parse_queue_attrs(&reply[..reply.len() - 2]).is_err());
        assert!(parse_queue_attrs(&hattr(1, &[1, 2])).is_err());
        let bad_nest = hnest(8, &[vec![0xff, 0x00, 0x01, 0x00]]);
        assert!(parse_queue_attrs(&bad_nest).is_err());
        // nsid reply: rtgenmsg + NETNSA_NSID.
        let r = [vec![0u8; 4], hattr(1, &(-1i32).to_ne_bytes())].concat();
        assert_eq!(parse_nsid_reply(&r), Ok(-1));
        assert!(parse_nsid_reply(&[0, 0]).is_err());
        assert!(parse_nsid_reply(&[0u8; 4]).is_err());
    }

    #[test]
    fn bpf_instruction_encoding() {
        // Reference encodings (struct bpf_insn, little-endian bitfields).
        let cases: &[(Insn, [u8; 8])] = &[
            (
                Insn::mov64_imm(0, -1),
                [0xb7, 0x00, 0, 0, 0xff, 0xff, 0xff, 0xff],
            ),
            (Insn::mov64_reg(4, 2), [0xbf, 0x24, 0, 0, 0, 0, 0, 0]),
            (Insn::add64_imm(4, 54), [0x07, 0x04, 0, 0, 54, 0, 0, 0]),
            (Insn::ldx(op::W, 2, 1, 76), [0x61, 0x12, 76, 0, 0, 0, 0, 0]),
            (Insn::ldx(op::H, 5, 2, 12), [0x69, 0x25, 12, 0, 0, 0, 0, 0]),
            (Insn::ldx(op::B, 5, 2, 20), [0x71, 0x25, 20, 0, 0, 0, 0, 0]),
            (Insn::jgt_reg(4, 3, 9), [0x2d, 0x34, 9, 0, 0, 0, 0, 0]),
            (
                Insn::jne32_imm(5, 0xdd86, 1),
                [0x56, 0x05, 1, 0, 0x86, 0xdd, 0, 0],
            ),
            (
                Insn::jeq32_imm(5, 58, -2),
                [0x16, 0x05, 0xfe, 0xff, 58, 0, 0, 0],
            ),
            (
                Insn::and32_imm(5, 0x00ff_ffff),
                [0x54, 0x05, 0, 0, 0xff, 0xff, 0xff, 0],
            ),
            (Insn::call(155), [0x85, 0, 0, 0, 155, 0, 0, 0]),
            (Insn::exit(), [0x95, 0, 0, 0, 0, 0, 0, 0]),
        ];
        for (i, want) in cases {
            assert_eq!(&i.encode(), want, "{i:?}");
        }
    }

    #[test]
    fn redirect_programs() {
        // Unconditional: set args, call, exit.
        let p = redirect_program(Helper::Peer, 4, &Match::default());
        assert_eq!(
            encode_program(&p),
            [
                Insn::mov64_imm(1, 4),
                Insn::mov64_imm(2, 0),
                Insn::call(BPF_FUNC_REDIRECT_PEER),
                Insn::exit()
            ]
            .iter()
            .flat_map(|i| i.encode())
            .collect::<Vec<_>>()
        );
        let p = redirect_program(Helper::Neigh, 2, &Match::default());
        assert_eq!(p.len(), 6);
        assert_eq!(p[4], Insn::call(BPF_FUNC_REDIRECT_NEIGH));
        let p = redirect_program(Helper::Redirect, 2, &Match::default());
        assert_eq!(p[2], Insn::call(BPF_FUNC_REDIRECT));

        // Filtered: every conditional jump lands on the "pass" tail.
        let m = Match {
            dst: Some(("2001:db8:2::2".parse().unwrap(), 64)),
            skip_icmp6: true,
            min_len: None,
        };
        let p = redirect_program(Helper::Peer, 4, &m);
        let pass = p.len() - 2;
        assert_eq!(p[pass], Insn::mov64_imm(0, NETKIT_NEXT));
        assert_eq!(p[pass + 1], Insn::exit());
        let jumps: Vec<usize> = (0..p.len())
            .filter(|&i| p[i].code & 0x07 == op::JMP || p[i].code & 0x07 == op::JMP32)
            .filter(|&i| p[i].code & 0xf0 != op::CALL && p[i].code & 0xf0 != op::EXIT)
            .collect();
        // bounds, ethertype, ICMPv6, two /64 words.
        assert_eq!(jumps.len(), 5);
        for j in &jumps {
            assert_eq!(j + 1 + p[*j].off as usize, pass, "jump at {j}");
        }
        // The bounds check covers Ethernet + IPv6 headers.
        assert!(p.contains(&Insn::add64_imm(4, 54)));
        // The prefix words compare the daddr's first 8 bytes as loaded.
        assert!(p.contains(&Insn::ldx(op::W, 5, 2, 38)));
        assert!(p.contains(&Insn::ldx(op::W, 5, 2, 42)));
        assert!(!p.contains(&Insn::ldx(op::W, 5, 2, 46)));
        let w0 = u32::from_ne_bytes([0x20, 0x01, 0x0d, 0xb8]) as i32;
        assert!(p.iter().any(|i| *i == Insn::jne32_imm(5, w0, i.off)));

        // IPv4 /20: ethertype 0x0800, daddr at 30, a mask on the partial word.
        let m = Match {
            dst: Some(("10.1.16.0".parse().unwrap(), 20)),
            skip_icmp6: false,
            min_len: None,
        };
        let p = redirect_program(Helper::Redirect, 3, &m);
        assert!(p.contains(&Insn::add64_imm(4, 34)));
        let et = u16::from_ne_bytes([0x08, 0x00]) as i32;
        assert!(p.iter().any(|i| *i == Insn::jne32_imm(5, et, i.off)));
        let mask = u32::from_ne_bytes([0xff, 0xff, 0xf0, 0x00]) as i32;
        assert!(p.contains(&Insn::and32_imm(5, mask)));
        let val = u32::from_ne_bytes([10, 1, 16, 0]) as i32;
        assert!(p.iter().any(|i| *i == Insn::jne32_imm(5, val, i.off)));

        // A length floor alone: skb->len first, and short packets pass.
        let m = Match {
            min_len: Some(200),
            ..Match::default()
        };
        let p = redirect_program(Helper::Redirect, 3, &m);
        assert_eq!(p[0], Insn::ldx(op::W, 5, 1, SKB_LEN_OFF));
        assert_eq!(p[1].code, op::JMP32 | op::JLT | op::K);
        assert_eq!(p[1].imm, 200);
        let pass = p.len() - 2;
        assert_eq!(1 + 1 + p[1].off as usize, pass);
        assert_eq!(p[pass], Insn::mov64_imm(0, NETKIT_NEXT));
        // No packet-data access without an address filter.
        assert!(!p.contains(&Insn::ldx(op::W, 2, 1, SKB_DATA_OFF)));
    }

    #[test]
    fn argument_errors() {
        let bad = |f: fn(&[String]) -> Result<(), String>, s: &str| {
            f(&sv(s)).expect_err(s);
        };
        let nk = |a: &[String]| parse_netkit_add(a).map(|_| ());
        bad(nk, "--primary nkh");
        bad(nk, "--primary nkh --peer nkh");
        bad(nk, "--primary nkh --peer nkg --mode l4");
        bad(nk, "--primary nkh --peer nkg --num-rx-queues 0");
        bad(nk, "--primary nkh --peer nkg --policy maybe");
        bad(nk, "--primary averyveryverylongname --peer nkg");
        bad(nk, "--primary nkh --peer nkg --bogus");
        bad(nk, "--primary nkh --peer");
        let s = parse_netkit_add(&sv("--primary a --peer b --mode l3 --policy blackhole")).unwrap();
        assert_eq!(
            (s.mode, s.policy, s.peer_policy),
            (NETKIT_L3, NETKIT_DROP, NETKIT_PASS)
        );

        let ql = |a: &[String]| parse_queue_lease(a).map(|_| ());
        bad(ql, "--dev nkg --lessor eth0");
        bad(ql, "--dev nkg --queue 1");
        bad(ql, "--dev nkg --lessor eth0 --queue x");
        bad(ql, "--dev nkg --lessor eth0 --queue 1 --netns-id -3");
        let l = parse_queue_lease(&sv(
            "--dev nkg --netns c --lessor eth0 --queue 3 --no-netns-id",
        ))
        .unwrap();
        assert_eq!((l.queue, l.netns_id), (3, Some(None)));

        let br = |a: &[String]| parse_bpf_redirect(a).map(|_| ());
        bad(br, "--dev eth0 --to nkh");
        bad(br, "--dev eth0 --to nkh --hook xdp");
        bad(br, "--dev eth0 --to nkh --hook tcx-ingress --peer --neigh");
        bad(
            br,
            "--dev eth0 --to nkh --hook tcx-ingress --match-dst 10.0.0.1/8 --skip-icmp6",
        );
        bad(
            br,
            "--dev eth0 --to nkh --hook tcx-ingress --match-dst nope",
        );
        bad(br, "--dev eth0 --to nkh --hook tcx-ingress --pin ../x");
        let r = parse_bpf_redirect(&sv("--dev nkh --hook netkit-peer --to eth0 --neigh")).unwrap();
        assert_eq!((r.attach_type, r.helper), (BPF_NETKIT_PEER, Helper::Neigh));

        let ra = |a: &[String]| parse_route_add(a).map(|_| ());
        bad(ra, "");
        bad(ra, "default dev eth0");
        bad(ra, "10.0.0.0/8");
        bad(ra, "10.0.0.0/8 via fe80::1");
        bad(ra, "10.0.0.0/40 dev eth0");
        bad(ra, "10.0.0.0/8 dev eth0 extra");

        let w = |a: &[String]| parse_wire(a).map(|_| ());
        bad(
            w,
            "--nic eth0 --primary a --peer b --netns c --addr 2001:db8::2/64",
        );
        bad(
            w,
            "--mode bpf --nic eth0 --primary a --peer b --netns c --addr 10.0.0.2/24",
        );
        bad(w, "--mode bpf --nic eth0 --primary a --peer b --netns c");
        bad(
            w,
            "--mode x --nic eth0 --primary a --peer b --netns c --addr 2001:db8::2/64",
        );
        bad(
            w,
            "--mode bpf --nic eth0 --primary a --peer b --netns c --addr 2001:db8::2/64 --tx-hook tcx-egress",
        );

        // The entry point: bad usage is exit 2 before touching the kernel.
        assert_eq!(main("netkit-add", &sv("--primary x")), 2);
        assert_eq!(main("queue-get", &sv("--dev eth0")), 2);
        assert_eq!(main("queue-get", &sv("--dev eth0 --queue 1 --type zz")), 2);
        assert_eq!(main("netkit-del", &[]), 2);
        assert_eq!(main("no-such-tool", &[]), 2);
        assert!(check_ns_name("a/b").is_err());
        assert!(check_ns_name("..").is_err());
    }

    #[test]
    fn error_json_and_errno_names() {
        assert_eq!(errno_name(libc::EOPNOTSUPP), "EOPNOTSUPP");
        assert_eq!(errno_name(libc::ENONET), "ENONET");
        assert_eq!(errno_name(9999), "E9999");
        let e = ToolError::nl(
            "queue-create",
            "NETDEV_CMD_QUEUE_CREATE",
            NlError {
                errno: libc::EINVAL,
                extack: Some("Lease device is a virtual device".into()),
            },
        );
        let v = e.to_json();
        assert_eq!(v["ok"], false);
        assert_eq!(v["stage"], "queue-create");
        assert_eq!(v["errno"], libc::EINVAL);
        assert_eq!(v["errno_name"], "EINVAL");
        assert_eq!(v["extack"], "Lease device is a virtual device");
        assert!(v["error"].as_str().unwrap().contains("virtual device"));
        let v = ToolError::new("args", "x").to_json();
        assert!(v.get("errno").is_none() && v.get("extack").is_none());
    }
}
