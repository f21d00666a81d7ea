//! Guest-side `ethtool`: the part of ethtool(8) the lab's scenarios need, as
//! a hidden subcommand of the static `netmem-lab` binary (the lab guest has
//! busybox only, and busybox has no ethtool).
//!
//! ```text
//! netmem-lab ethtool [--netns NAME] -i DEV                       # driver info
//! netmem-lab ethtool [--netns NAME] -S DEV                       # driver statistics
//! netmem-lab ethtool [--netns NAME] -g DEV                       # rings (ethtool netlink)
//! netmem-lab ethtool [--netns NAME] -G DEV [rx N] [tx N] [tcp-data-split on|off|auto]
//! netmem-lab ethtool [--netns NAME] -k DEV                       # features
//! netmem-lab ethtool [--netns NAME] -K DEV FEATURE on|off [FEATURE on|off]…
//! netmem-lab ethtool [--netns NAME] -l DEV                       # channels
//! netmem-lab ethtool [--netns NAME] -L DEV [rx N] [tx N] [other N] [combined N]
//! netmem-lab ethtool [--netns NAME] -n DEV [rule LOC]            # ntuple rules
//! netmem-lab ethtool [--netns NAME] -N DEV flow-type tcp4|udp4|sctp4|tcp6|udp6|sctp6
//!     [src-ip A] [dst-ip A] [src-port P] [dst-port P] action Q|-1 [loc L]
//! netmem-lab ethtool [--netns NAME] -N DEV delete LOC
//! ```
//!
//! Long forms are accepted too (`--driver`, `--statistics`, `--show-ring`,
//! `--set-ring`, `--show-features`/`--show-offload`, `--features`/`--offload`,
//! `--show-channels`, `--set-channels`, `-u`/`--show-nfc`/`--show-ntuple`,
//! `-U`/`--config-nfc`/`--config-ntuple`). Numbers are decimal or `0x` hex.
//!
//! Every run prints one JSON object on stdout. Success has `"ok":true` and
//! `"dev"`; failure is `{"ok":false,"dev":..,"error":"<text>"}` plus, when the
//! kernel refused, `"errno":N`, `"op"` (the ioctl command or netlink message)
//! and, over netlink, the extack message as `"extack"`. Exit codes: 0 ok, 1
//! failure (also: a requested change that did not take effect), 2 bad usage.
//!
//! Transport: the classic `SIOCETHTOOL` ioctl for everything except the
//! rings, which use the ethtool generic-netlink family because only netlink
//! carries `tcp-data-split` (`struct ethtool_ringparam` has no such field).
//!
//! The authority for every number and layout below is the linux-source-7.3
//! UAPI: `include/uapi/linux/ethtool.h`, `ethtool_netlink_generated.h`,
//! `genetlink.h`, `netlink.h`, `sockios.h`, `if.h`. Each was checked by
//! compiling a C program against those 7.3 headers (values, `sizeof`,
//! `offsetof`); the compile-time asserts below pin the struct layouts.
//!
//! ntuple masks follow the kernel ABI, not ethtool(8)'s command line: in
//! `struct ethtool_rx_flow_spec`, a set bit in `m_u` means "compare this bit"
//! (ethtool.h: "Masks for flow field bits to be matched"; gve copies `m_u`
//! straight into its device rule's mask, gve_flow_rule.c). Fields given on
//! the command line get an all-ones mask, all others zero.
//!
//! Rule location when `loc` is not given: if the driver advertises
//! `RX_CLS_LOC_SPECIAL` in `ETHTOOL_GRXCLSRLCNT`'s `data`, `RX_CLS_LOC_ANY`
//! is passed and the driver picks; otherwise (gve does not advertise it) the
//! tool reads the used locations (`ETHTOOL_GRXCLSRLALL`) and takes the
//! highest free one below the table size, as ethtool(8)'s rule manager
//! (`rmgr_find_empty_slot`, lowest priority first) does. The location the
//! kernel reports back is printed.

use std::mem::{offset_of, size_of};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use serde::Serialize;
use serde::ser::{SerializeMap, Serializer};
use serde_json::{Map, Value, json};

// ---------------------------------------------------------------- UAPI: ioctl

/// `SIOCETHTOOL` (include/uapi/linux/sockios.h).
pub const SIOCETHTOOL: libc::c_ulong = 0x8946;
/// `IFNAMSIZ` (include/uapi/linux/if.h), including the terminating NUL.
pub const IFNAMSIZ: usize = 16;

/// `ETHTOOL_GDRVINFO` (include/uapi/linux/ethtool.h).
pub const ETHTOOL_GDRVINFO: u32 = 0x0000_0003;
/// `ETHTOOL_GSTRINGS` (include/uapi/linux/ethtool.h).
pub const ETHTOOL_GSTRINGS: u32 = 0x0000_001b;
/// `ETHTOOL_GSTATS` (include/uapi/linux/ethtool.h).
pub const ETHTOOL_GSTATS: u32 = 0x0000_001d;
/// `ETHTOOL_GRXRINGS` (include/uapi/linux/ethtool.h).
pub const ETHTOOL_GRXRINGS: u32 = 0x0000_002d;
/// `ETHTOOL_GRXCLSRLCNT` (include/uapi/linux/ethtool.h).
pub const ETHTOOL_GRXCLSRLCNT: u32 = 0x0000_002e;
/// `ETHTOOL_GRXCLSRULE` (include/uapi/linux/ethtool.h).
pub const ETHTOOL_GRXCLSRULE: u32 = 0x0000_002f;
/// `ETHTOOL_GRXCLSRLALL` (include/uapi/linux/ethtool.h).
pub const ETHTOOL_GRXCLSRLALL: u32 = 0x0000_0030;
/// `ETHTOOL_SRXCLSRLDEL` (include/uapi/linux/ethtool.h).
pub const ETHTOOL_SRXCLSRLDEL: u32 = 0x0000_0031;
/// `ETHTOOL_SRXCLSRLINS` (include/uapi/linux/ethtool.h).
pub const ETHTOOL_SRXCLSRLINS: u32 = 0x0000_0032;
/// `ETHTOOL_GRXFHINDIR` (include/uapi/linux/ethtool.h): get the RSS indirection table.
pub const ETHTOOL_GRXFHINDIR: u32 = 0x0000_0038;
/// `ETHTOOL_SRXFHINDIR` (include/uapi/linux/ethtool.h): set the RSS indirection table.
pub const ETHTOOL_SRXFHINDIR: u32 = 0x0000_0039;
/// `ETHTOOL_GSSET_INFO` (include/uapi/linux/ethtool.h).
pub const ETHTOOL_GSSET_INFO: u32 = 0x0000_0037;
/// `ETHTOOL_GFEATURES` (include/uapi/linux/ethtool.h).
pub const ETHTOOL_GFEATURES: u32 = 0x0000_003a;
/// `ETHTOOL_SFEATURES` (include/uapi/linux/ethtool.h).
pub const ETHTOOL_SFEATURES: u32 = 0x0000_003b;
/// `ETHTOOL_GCHANNELS` (include/uapi/linux/ethtool.h).
pub const ETHTOOL_GCHANNELS: u32 = 0x0000_003c;
/// `ETHTOOL_SCHANNELS` (include/uapi/linux/ethtool.h).
pub const ETHTOOL_SCHANNELS: u32 = 0x0000_003d;

/// `ETH_SS_STATS` of `enum ethtool_stringset` (include/uapi/linux/ethtool.h).
pub const ETH_SS_STATS: u32 = 1;
/// `ETH_SS_FEATURES` of `enum ethtool_stringset` (include/uapi/linux/ethtool.h).
pub const ETH_SS_FEATURES: u32 = 4;
/// `ETH_GSTRING_LEN` (include/uapi/linux/ethtool.h).
pub const ETH_GSTRING_LEN: usize = 32;
/// `ETHTOOL_FWVERS_LEN` (include/uapi/linux/ethtool.h).
pub const ETHTOOL_FWVERS_LEN: usize = 32;
/// `ETHTOOL_BUSINFO_LEN` (include/uapi/linux/ethtool.h).
pub const ETHTOOL_BUSINFO_LEN: usize = 32;
/// `ETHTOOL_EROMVERS_LEN` (include/uapi/linux/ethtool.h).
pub const ETHTOOL_EROMVERS_LEN: usize = 32;

/// `ETHTOOL_F_UNSUPPORTED` (include/uapi/linux/ethtool.h, SFEATURES return bits).
pub const ETHTOOL_F_UNSUPPORTED: i32 = 1 << 0;
/// `ETHTOOL_F_WISH` (include/uapi/linux/ethtool.h).
pub const ETHTOOL_F_WISH: i32 = 1 << 1;
/// `ETHTOOL_F_COMPAT` (include/uapi/linux/ethtool.h).
pub const ETHTOOL_F_COMPAT: i32 = 1 << 2;

/// `TCP_V4_FLOW` (include/uapi/linux/ethtool.h, flow types).
pub const TCP_V4_FLOW: u32 = 0x01;
/// `UDP_V4_FLOW` (include/uapi/linux/ethtool.h).
pub const UDP_V4_FLOW: u32 = 0x02;
/// `SCTP_V4_FLOW` (include/uapi/linux/ethtool.h).
pub const SCTP_V4_FLOW: u32 = 0x03;
/// `TCP_V6_FLOW` (include/uapi/linux/ethtool.h).
pub const TCP_V6_FLOW: u32 = 0x05;
/// `UDP_V6_FLOW` (include/uapi/linux/ethtool.h).
pub const UDP_V6_FLOW: u32 = 0x06;
/// `SCTP_V6_FLOW` (include/uapi/linux/ethtool.h).
pub const SCTP_V6_FLOW: u32 = 0x07;
/// `FLOW_EXT` (include/uapi/linux/ethtool.h).
pub const FLOW_EXT: u32 = 0x8000_0000;
/// `FLOW_MAC_EXT` (include/uapi/linux/ethtool.h).
pub const FLOW_MAC_EXT: u32 = 0x4000_0000;
/// `FLOW_RSS` (include/uapi/linux/ethtool.h).
pub const FLOW_RSS: u32 = 0x2000_0000;
/// `RX_CLS_FLOW_DISC`: drop (include/uapi/linux/ethtool.h).
pub const RX_CLS_FLOW_DISC: u64 = 0xffff_ffff_ffff_ffff;
/// `RX_CLS_FLOW_WAKE` (include/uapi/linux/ethtool.h).
pub const RX_CLS_FLOW_WAKE: u64 = 0xffff_ffff_ffff_fffe;
/// `RX_CLS_LOC_SPECIAL` flag in GRXCLSRLCNT's `data` (include/uapi/linux/ethtool.h).
pub const RX_CLS_LOC_SPECIAL: u64 = 0x8000_0000;
/// `RX_CLS_LOC_ANY` (include/uapi/linux/ethtool.h). (`0xfffffffe` is `RX_CLS_LOC_FIRST`.)
pub const RX_CLS_LOC_ANY: u32 = 0xffff_ffff;
/// `ETHTOOL_RX_FLOW_SPEC_RING` (include/uapi/linux/ethtool.h): queue bits of `ring_cookie`.
pub const ETHTOOL_RX_FLOW_SPEC_RING: u64 = 0x0000_0000_ffff_ffff;
/// `ETHTOOL_RX_FLOW_SPEC_RING_VF` (include/uapi/linux/ethtool.h).
pub const ETHTOOL_RX_FLOW_SPEC_RING_VF: u64 = 0x0000_00ff_0000_0000;
/// `ETHTOOL_RX_FLOW_SPEC_RING_VF_OFF` (include/uapi/linux/ethtool.h).
pub const ETHTOOL_RX_FLOW_SPEC_RING_VF_OFF: u32 = 32;

// ---------------------------------------------------------------- UAPI: ethtool netlink

/// `ETHTOOL_GENL_NAME` (include/uapi/linux/ethtool_netlink_generated.h).
pub const ETHTOOL_GENL_NAME: &str = "ethtool";
/// `ETHTOOL_GENL_VERSION` (include/uapi/linux/ethtool_netlink_generated.h).
pub const ETHTOOL_GENL_VERSION: u8 = 1;
/// `ETHTOOL_MSG_RINGS_GET` (user→kernel enum, include/uapi/linux/ethtool_netlink_generated.h).
pub const ETHTOOL_MSG_RINGS_GET: u8 = 15;
/// `ETHTOOL_MSG_RINGS_SET` (user→kernel enum, ethtool_netlink_generated.h).
pub const ETHTOOL_MSG_RINGS_SET: u8 = 16;
/// `ETHTOOL_MSG_RINGS_GET_REPLY` (kernel→user enum, ethtool_netlink_generated.h).
pub const ETHTOOL_MSG_RINGS_GET_REPLY: u8 = 16;
/// `ETHTOOL_A_HEADER_DEV_INDEX` (ethtool_netlink_generated.h).
pub const ETHTOOL_A_HEADER_DEV_INDEX: u16 = 1;
/// `ETHTOOL_A_HEADER_DEV_NAME` (ethtool_netlink_generated.h).
pub const ETHTOOL_A_HEADER_DEV_NAME: u16 = 2;
/// `ETHTOOL_A_RINGS_HEADER` (ethtool_netlink_generated.h).
pub const ETHTOOL_A_RINGS_HEADER: u16 = 1;
/// `ETHTOOL_A_RINGS_RX_MAX` (ethtool_netlink_generated.h).
pub const ETHTOOL_A_RINGS_RX_MAX: u16 = 2;
/// `ETHTOOL_A_RINGS_RX_MINI_MAX` (ethtool_netlink_generated.h).
pub const ETHTOOL_A_RINGS_RX_MINI_MAX: u16 = 3;
/// `ETHTOOL_A_RINGS_RX_JUMBO_MAX` (ethtool_netlink_generated.h).
pub const ETHTOOL_A_RINGS_RX_JUMBO_MAX: u16 = 4;
/// `ETHTOOL_A_RINGS_TX_MAX` (ethtool_netlink_generated.h).
pub const ETHTOOL_A_RINGS_TX_MAX: u16 = 5;
/// `ETHTOOL_A_RINGS_RX` (ethtool_netlink_generated.h).
pub const ETHTOOL_A_RINGS_RX: u16 = 6;
/// `ETHTOOL_A_RINGS_RX_MINI` (ethtool_netlink_generated.h).
pub const ETHTOOL_A_RINGS_RX_MINI: u16 = 7;
/// `ETHTOOL_A_RINGS_RX_JUMBO` (ethtool_netlink_generated.h).
pub const ETHTOOL_A_RINGS_RX_JUMBO: u16 = 8;
/// `ETHTOOL_A_RINGS_TX` (ethtool_netlink_generated.h).
pub const ETHTOOL_A_RINGS_TX: u16 = 9;
/// `ETHTOOL_A_RINGS_RX_BUF_LEN` (ethtool_netlink_generated.h).
pub const ETHTOOL_A_RINGS_RX_BUF_LEN: u16 = 10;
/// `ETHTOOL_A_RINGS_TCP_DATA_SPLIT` (ethtool_netlink_generated.h), a u8.
pub const ETHTOOL_A_RINGS_TCP_DATA_SPLIT: u16 = 11;
/// `ETHTOOL_A_RINGS_CQE_SIZE` (ethtool_netlink_generated.h).
pub const ETHTOOL_A_RINGS_CQE_SIZE: u16 = 12;
/// `ETHTOOL_A_RINGS_TX_PUSH` (ethtool_netlink_generated.h), a u8.
pub const ETHTOOL_A_RINGS_TX_PUSH: u16 = 13;
/// `ETHTOOL_A_RINGS_RX_PUSH` (ethtool_netlink_generated.h), a u8.
pub const ETHTOOL_A_RINGS_RX_PUSH: u16 = 14;
/// `ETHTOOL_A_RINGS_TX_PUSH_BUF_LEN` (ethtool_netlink_generated.h).
pub const ETHTOOL_A_RINGS_TX_PUSH_BUF_LEN: u16 = 15;
/// `ETHTOOL_A_RINGS_TX_PUSH_BUF_LEN_MAX` (ethtool_netlink_generated.h).
pub const ETHTOOL_A_RINGS_TX_PUSH_BUF_LEN_MAX: u16 = 16;
/// `ETHTOOL_A_RINGS_HDS_THRESH` (ethtool_netlink_generated.h).
pub const ETHTOOL_A_RINGS_HDS_THRESH: u16 = 17;
/// `ETHTOOL_A_RINGS_HDS_THRESH_MAX` (ethtool_netlink_generated.h).
pub const ETHTOOL_A_RINGS_HDS_THRESH_MAX: u16 = 18;
/// `ETHTOOL_TCP_DATA_SPLIT_UNKNOWN` (`enum ethtool_tcp_data_split`, ethtool_netlink_generated.h).
pub const ETHTOOL_TCP_DATA_SPLIT_UNKNOWN: u8 = 0;
/// `ETHTOOL_TCP_DATA_SPLIT_DISABLED` (ethtool_netlink_generated.h).
pub const ETHTOOL_TCP_DATA_SPLIT_DISABLED: u8 = 1;
/// `ETHTOOL_TCP_DATA_SPLIT_ENABLED` (ethtool_netlink_generated.h).
pub const ETHTOOL_TCP_DATA_SPLIT_ENABLED: u8 = 2;

// ---------------------------------------------------------------- UAPI: structs

/// `struct ethtool_drvinfo` (include/uapi/linux/ethtool.h).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct EthtoolDrvinfo {
    pub cmd: u32,
    pub driver: [u8; 32],
    pub version: [u8; 32],
    pub fw_version: [u8; ETHTOOL_FWVERS_LEN],
    pub bus_info: [u8; ETHTOOL_BUSINFO_LEN],
    pub erom_version: [u8; ETHTOOL_EROMVERS_LEN],
    pub reserved2: [u8; 12],
    pub n_priv_flags: u32,
    pub n_stats: u32,
    pub testinfo_len: u32,
    pub eedump_len: u32,
    pub regdump_len: u32,
}
// 4 + 5 * 32 + 12 + 5 * 4.
const _: () = assert!(size_of::<EthtoolDrvinfo>() == 196);

/// `struct ethtool_sset_info` without its `__u32 data[]` (include/uapi/linux/ethtool.h).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct EthtoolSsetInfo {
    pub cmd: u32,
    pub reserved: u32,
    pub sset_mask: u64,
}
const _: () = assert!(size_of::<EthtoolSsetInfo>() == 16);

/// `struct ethtool_gstrings` without its `__u8 data[]` (include/uapi/linux/ethtool.h).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct EthtoolGstrings {
    pub cmd: u32,
    pub string_set: u32,
    pub len: u32,
}
const _: () = assert!(size_of::<EthtoolGstrings>() == 12);

/// `struct ethtool_stats` without its `__u64 data[]` (include/uapi/linux/ethtool.h).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct EthtoolStats {
    pub cmd: u32,
    pub n_stats: u32,
}
const _: () = assert!(size_of::<EthtoolStats>() == 8);

/// `struct ethtool_get_features_block` (include/uapi/linux/ethtool.h).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EthtoolGetFeaturesBlock {
    pub available: u32,
    pub requested: u32,
    pub active: u32,
    pub never_changed: u32,
}
const _: () = assert!(size_of::<EthtoolGetFeaturesBlock>() == 16);

/// `struct ethtool_gfeatures` without its blocks (include/uapi/linux/ethtool.h).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct EthtoolGfeatures {
    pub cmd: u32,
    pub size: u32,
}
const _: () = assert!(size_of::<EthtoolGfeatures>() == 8);

/// `struct ethtool_set_features_block` (include/uapi/linux/ethtool.h).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct EthtoolSetFeaturesBlock {
    pub valid: u32,
    pub requested: u32,
}
const _: () = assert!(size_of::<EthtoolSetFeaturesBlock>() == 8);

/// `struct ethtool_sfeatures` without its blocks (include/uapi/linux/ethtool.h).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct EthtoolSfeatures {
    pub cmd: u32,
    pub size: u32,
}
const _: () = assert!(size_of::<EthtoolSfeatures>() == 8);

/// `struct ethtool_channels` (include/uapi/linux/ethtool.h).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EthtoolChannels {
    pub cmd: u32,
    pub max_rx: u32,
    pub max_tx: u32,
    pub max_other: u32,
    pub max_combined: u32,
    pub rx_count: u32,
    pub tx_count: u32,
    pub other_count: u32,
    pub combined_count: u32,
}
const _: () = assert!(size_of::<EthtoolChannels>() == 36);

/// `struct ethtool_tcpip4_spec` (include/uapi/linux/ethtool.h); the `__be`
/// fields hold network-order bytes. Used for its layout (offsets into the
/// flow union), the union itself is carried as bytes.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct EthtoolTcpip4Spec {
    pub ip4src: u32,
    pub ip4dst: u32,
    pub psrc: u16,
    pub pdst: u16,
    pub tos: u8,
}
const _: () = assert!(size_of::<EthtoolTcpip4Spec>() == 16);
const _: () = assert!(offset_of!(EthtoolTcpip4Spec, ip4dst) == 4);
const _: () = assert!(offset_of!(EthtoolTcpip4Spec, psrc) == 8);
const _: () = assert!(offset_of!(EthtoolTcpip4Spec, pdst) == 10);
const _: () = assert!(offset_of!(EthtoolTcpip4Spec, tos) == 12);

/// `struct ethtool_tcpip6_spec` (include/uapi/linux/ethtool.h).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct EthtoolTcpip6Spec {
    pub ip6src: [u32; 4],
    pub ip6dst: [u32; 4],
    pub psrc: u16,
    pub pdst: u16,
    pub tclass: u8,
}
const _: () = assert!(size_of::<EthtoolTcpip6Spec>() == 40);
const _: () = assert!(offset_of!(EthtoolTcpip6Spec, ip6dst) == 16);
const _: () = assert!(offset_of!(EthtoolTcpip6Spec, psrc) == 32);
const _: () = assert!(offset_of!(EthtoolTcpip6Spec, pdst) == 34);
const _: () = assert!(offset_of!(EthtoolTcpip6Spec, tclass) == 36);

/// `sizeof(union ethtool_flow_union)` (include/uapi/linux/ethtool.h: `__u8 hdata[52]`).
pub const FLOW_UNION_LEN: usize = 52;
const _: () = assert!(size_of::<EthtoolTcpip6Spec>() <= FLOW_UNION_LEN);

/// `struct ethtool_flow_ext` (include/uapi/linux/ethtool.h).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EthtoolFlowExt {
    pub padding: [u8; 2],
    pub h_dest: [u8; 6],
    pub vlan_etype: u16,
    pub vlan_tci: u16,
    pub data: [u32; 2],
}
const _: () = assert!(size_of::<EthtoolFlowExt>() == 20);

/// `struct ethtool_rx_flow_spec` (include/uapi/linux/ethtool.h). The unions
/// are their `hdata` byte view; C's implicit padding is spelled out so every
/// byte handed to the kernel is initialised.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EthtoolRxFlowSpec {
    pub flow_type: u32,
    pub h_u: [u8; FLOW_UNION_LEN],
    pub h_ext: EthtoolFlowExt,
    pub m_u: [u8; FLOW_UNION_LEN],
    pub m_ext: EthtoolFlowExt,
    pad0: u32,
    pub ring_cookie: u64,
    pub location: u32,
    pad1: u32,
}
const _: () = assert!(size_of::<EthtoolRxFlowSpec>() == 168);
const _: () = assert!(offset_of!(EthtoolRxFlowSpec, h_u) == 4);
const _: () = assert!(offset_of!(EthtoolRxFlowSpec, h_ext) == 56);
const _: () = assert!(offset_of!(EthtoolRxFlowSpec, m_u) == 76);
const _: () = assert!(offset_of!(EthtoolRxFlowSpec, m_ext) == 128);
const _: () = assert!(offset_of!(EthtoolRxFlowSpec, ring_cookie) == 152);
const _: () = assert!(offset_of!(EthtoolRxFlowSpec, location) == 160);

impl EthtoolRxFlowSpec {
    pub const fn zeroed() -> Self {
        const EXT: EthtoolFlowExt = EthtoolFlowExt {
            padding: [0; 2],
            h_dest: [0; 6],
            vlan_etype: 0,
            vlan_tci: 0,
            data: [0; 2],
        };
        EthtoolRxFlowSpec {
            flow_type: 0,
            h_u: [0; FLOW_UNION_LEN],
            h_ext: EXT,
            m_u: [0; FLOW_UNION_LEN],
            m_ext: EXT,
            pad0: 0,
            ring_cookie: 0,
            location: 0,
            pad1: 0,
        }
    }
}

/// `struct ethtool_rxnfc` (include/uapi/linux/ethtool.h) up to and including
/// the `rule_cnt`/`rss_context` union; `tail` is C's trailing padding, which
/// is also where the flexible `rule_locs[]` starts ([`RXNFC_RULE_LOCS_OFFSET`]).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EthtoolRxnfc {
    pub cmd: u32,
    pub flow_type: u32,
    pub data: u64,
    pub fs: EthtoolRxFlowSpec,
    pub rule_cnt: u32,
    tail: u32,
}
const _: () = assert!(size_of::<EthtoolRxnfc>() == 192);
const _: () = assert!(offset_of!(EthtoolRxnfc, data) == 8);
const _: () = assert!(offset_of!(EthtoolRxnfc, fs) == 16);
const _: () = assert!(offset_of!(EthtoolRxnfc, rule_cnt) == 184);

/// `offsetof(struct ethtool_rxnfc, rule_locs)` (include/uapi/linux/ethtool.h):
/// right after the 4-byte `rule_cnt` union, inside C's trailing padding.
pub const RXNFC_RULE_LOCS_OFFSET: usize = offset_of!(EthtoolRxnfc, rule_cnt) + 4;
const _: () = assert!(RXNFC_RULE_LOCS_OFFSET == 188);

impl EthtoolRxnfc {
    pub const fn new(cmd: u32) -> Self {
        EthtoolRxnfc {
            cmd,
            flow_type: 0,
            data: 0,
            fs: EthtoolRxFlowSpec::zeroed(),
            rule_cnt: 0,
            tail: 0,
        }
    }
}

// ---------------------------------------------------------------- errors

/// Why an operation failed: what the kernel said (`errno`, netlink extack)
/// or a check of ours; `detail` is merged into the JSON line.
#[derive(Debug, Clone, PartialEq)]
pub struct EtError {
    pub op: Option<&'static str>,
    pub errno: Option<i32>,
    pub error: String,
    pub extack: Option<String>,
    pub detail: Map<String, Value>,
}

/// `strerror(errno)` without std's " (os error N)" suffix.
pub fn strerror(errno: i32) -> String {
    let s = std::io::Error::from_raw_os_error(errno).to_string();
    match s.rfind(" (os error ") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}

impl EtError {
    pub fn os(op: &'static str, errno: i32) -> EtError {
        EtError {
            op: Some(op),
            errno: Some(errno),
            error: strerror(errno),
            extack: None,
            detail: Map::new(),
        }
    }

    pub fn msg(error: impl Into<String>) -> EtError {
        EtError {
            op: None,
            errno: None,
            error: error.into(),
            extack: None,
            detail: Map::new(),
        }
    }

    fn nl(op: &'static str, e: nl::NlError) -> EtError {
        EtError {
            extack: e.extack,
            ..EtError::os(op, e.errno)
        }
    }

    fn proto(op: &'static str, what: impl std::fmt::Display) -> EtError {
        EtError {
            error: format!("malformed reply: {what}"),
            ..EtError::os(op, libc::EPROTO)
        }
    }

    fn with(mut self, key: &str, v: Value) -> EtError {
        self.detail.insert(key.to_string(), v);
        self
    }

    /// The failure's JSON line.
    pub fn to_json(&self, dev: &str) -> Value {
        let mut m = self.detail.clone();
        m.insert("ok".into(), json!(false));
        m.insert("dev".into(), json!(dev));
        m.insert("error".into(), json!(self.error));
        if let Some(e) = self.errno {
            m.insert("errno".into(), json!(e));
        }
        if let Some(op) = self.op {
            m.insert("op".into(), json!(op));
        }
        if let Some(x) = &self.extack {
            m.insert("extack".into(), json!(x));
        }
        Value::Object(m)
    }
}

impl std::fmt::Display for EtError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some(op) = self.op {
            write!(f, "{op}: ")?;
        }
        write!(f, "{}", self.error)?;
        if let Some(x) = &self.extack {
            write!(f, " ({x})")?;
        }
        Ok(())
    }
}

// ---------------------------------------------------------------- byte helpers

fn put_u32(b: &mut [u8], off: usize, v: u32) {
    b[off..off + 4].copy_from_slice(&v.to_ne_bytes());
}

fn put_u64(b: &mut [u8], off: usize, v: u64) {
    b[off..off + 8].copy_from_slice(&v.to_ne_bytes());
}

fn get_u32(b: &[u8], off: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[off..off + 4]);
    u32::from_ne_bytes(a)
}

fn get_u64(b: &[u8], off: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[off..off + 8]);
    u64::from_ne_bytes(a)
}

/// A NUL-padded C string field.
fn cstr_field(b: &[u8]) -> String {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}

// ---------------------------------------------------------------- ioctl

/// An `AF_INET` datagram socket for `SIOCETHTOOL` (ethtool(8) falls back to
/// a generic netlink socket when there is no IPv4; so do we).
pub struct EthtoolSock {
    fd: OwnedFd,
}

fn check_dev(dev: &str) -> Result<(), EtError> {
    if dev.is_empty() || dev.len() >= IFNAMSIZ || dev.contains(['\0', '/']) {
        return Err(EtError::os("SIOCETHTOOL", libc::EINVAL)
            .with("reason", json!(format!("bad interface name {dev:?}"))));
    }
    Ok(())
}

impl EthtoolSock {
    pub fn open() -> Result<EthtoolSock, EtError> {
        let mut last = 0;
        for (dom, ty, proto) in [
            (libc::AF_INET, libc::SOCK_DGRAM, 0),
            (libc::AF_NETLINK, libc::SOCK_RAW, nl::NETLINK_GENERIC),
        ] {
            // SAFETY: plain socket(2); the fd is owned below.
            let fd = unsafe { libc::socket(dom, ty | libc::SOCK_CLOEXEC, proto) };
            if fd >= 0 {
                // SAFETY: fd is a fresh socket nobody else owns.
                return Ok(EthtoolSock {
                    fd: unsafe { OwnedFd::from_raw_fd(fd) },
                });
            }
            last = last_errno();
        }
        Err(EtError::os("socket", last))
    }

    /// `ioctl(SIOCETHTOOL)` on `dev` with `data` as `ifr_data`; returns the
    /// (non-negative) ioctl result, which SFEATURES uses for flags.
    ///
    /// # Safety
    /// `data` must be valid for reads and writes of every byte the kernel
    /// transfers for the command in its first four bytes (the UAPI struct
    /// plus its flexible array as sized by the header fields).
    unsafe fn ioctl_raw(&self, dev: &str, op: &'static str, data: *mut u8) -> Result<i32, EtError> {
        check_dev(dev)?;
        let mut ifr = libc::ifreq {
            ifr_name: [0; IFNAMSIZ],
            ifr_ifru: libc::__c_anonymous_ifr_ifru {
                ifru_data: data.cast(),
            },
        };
        for (d, s) in ifr.ifr_name.iter_mut().zip(dev.bytes()) {
            *d = s as libc::c_char;
        }
        loop {
            // SAFETY: ifr is a valid ifreq naming a NUL-terminated device;
            // the caller vouches for the buffer behind ifr_data.
            let rc = unsafe { libc::ioctl(self.fd.as_raw_fd(), SIOCETHTOOL, &mut ifr) };
            if rc >= 0 {
                return Ok(rc);
            }
            let e = last_errno();
            if e != libc::EINTR {
                return Err(EtError::os(op, e));
            }
        }
    }

    pub fn drvinfo(&self, dev: &str) -> Result<EthtoolDrvinfo, EtError> {
        let mut d = EthtoolDrvinfo {
            cmd: ETHTOOL_GDRVINFO,
            ..Default::default()
        };
        // SAFETY: GDRVINFO reads and writes exactly one struct ethtool_drvinfo.
        unsafe { self.ioctl_raw(dev, "ETHTOOL_GDRVINFO", (&raw mut d).cast()) }?;
        Ok(d)
    }

    /// `cmd` is ETHTOOL_GCHANNELS or ETHTOOL_SCHANNELS.
    pub fn channels(&self, dev: &str, mut c: EthtoolChannels) -> Result<EthtoolChannels, EtError> {
        let op = match c.cmd {
            ETHTOOL_GCHANNELS => "ETHTOOL_GCHANNELS",
            ETHTOOL_SCHANNELS => "ETHTOOL_SCHANNELS",
            _ => return Err(EtError::msg("channels: not a channels command")),
        };
        // SAFETY: G/SCHANNELS transfer exactly one struct ethtool_channels.
        unsafe { self.ioctl_raw(dev, op, (&raw mut c).cast()) }?;
        Ok(c)
    }

    /// A fixed-size rxnfc command (GRXRINGS, GRXCLSRLCNT, GRXCLSRULE,
    /// SRXCLSRLINS, SRXCLSRLDEL). GRXCLSRLALL writes past the struct and goes
    /// through [`EthtoolSock::rule_locations`].
    pub fn rxnfc(&self, dev: &str, mut r: EthtoolRxnfc) -> Result<EthtoolRxnfc, EtError> {
        let op = match r.cmd {
            ETHTOOL_GRXRINGS => "ETHTOOL_GRXRINGS",
            ETHTOOL_GRXCLSRLCNT => "ETHTOOL_GRXCLSRLCNT",
            ETHTOOL_GRXCLSRULE => "ETHTOOL_GRXCLSRULE",
            ETHTOOL_SRXCLSRLINS => "ETHTOOL_SRXCLSRLINS",
            ETHTOOL_SRXCLSRLDEL => "ETHTOOL_SRXCLSRLDEL",
            _ => return Err(EtError::msg("rxnfc: not a fixed-size rxnfc command")),
        };
        // SAFETY: these commands copy sizeof(struct ethtool_rxnfc) in and out
        // (net/ethtool/ioctl.c ethtool_rxnfc_copy_struct/_to_user, no rule_buf).
        unsafe { self.ioctl_raw(dev, op, (&raw mut r).cast()) }?;
        Ok(r)
    }

    /// ETHTOOL_GRXFHINDIR: the RSS indirection table (`struct ethtool_rxfh_indir`).
    pub fn rxfh_indir_get(&self, dev: &str) -> Result<Vec<u32>, EtError> {
        let mut hdr = [ETHTOOL_GRXFHINDIR, 0u32];
        // SAFETY: with size 0 the kernel reads and writes only cmd and size.
        unsafe { self.ioctl_raw(dev, "ETHTOOL_GRXFHINDIR", hdr.as_mut_ptr().cast()) }?;
        let n = hdr[1] as usize;
        if n > 1 << 16 {
            return Err(EtError::msg(format!("indirection table of {n} entries")));
        }
        let mut buf = vec![0u32; 2 + n];
        buf[0] = ETHTOOL_GRXFHINDIR;
        buf[1] = n as u32;
        // SAFETY: the kernel writes the header and `size` (= n) u32s after it.
        unsafe { self.ioctl_raw(dev, "ETHTOOL_GRXFHINDIR", buf.as_mut_ptr().cast()) }?;
        Ok(buf[2..].to_vec())
    }

    /// ETHTOOL_SRXFHINDIR with `table` (its length must be the device's).
    pub fn rxfh_indir_set(&self, dev: &str, table: &[u32]) -> Result<(), EtError> {
        let mut buf = Vec::with_capacity(2 + table.len());
        buf.extend([ETHTOOL_SRXFHINDIR, table.len() as u32]);
        buf.extend_from_slice(table);
        // SAFETY: the kernel reads the header and `size` u32s after it.
        unsafe { self.ioctl_raw(dev, "ETHTOOL_SRXFHINDIR", buf.as_mut_ptr().cast()) }?;
        Ok(())
    }

    /// ETHTOOL_GRXCLSRLALL for up to `count` rules: (table size, locations).
    pub fn rule_locations(&self, dev: &str, count: u32) -> Result<(u64, Vec<u32>), EtError> {
        let len = size_of::<EthtoolRxnfc>().max(RXNFC_RULE_LOCS_OFFSET + 4 * count as usize);
        let mut buf = vec![0u8; len];
        put_u32(&mut buf, offset_of!(EthtoolRxnfc, cmd), ETHTOOL_GRXCLSRLALL);
        put_u32(&mut buf, offset_of!(EthtoolRxnfc, rule_cnt), count);
        // SAFETY: the kernel reads/writes sizeof(struct ethtool_rxnfc) and
        // writes at most rule_cnt (= count) u32s at offsetof(rule_locs);
        // `buf` covers both.
        unsafe { self.ioctl_raw(dev, "ETHTOOL_GRXCLSRLALL", buf.as_mut_ptr()) }?;
        let size = get_u64(&buf, offset_of!(EthtoolRxnfc, data));
        let n = get_u32(&buf, offset_of!(EthtoolRxnfc, rule_cnt)).min(count) as usize;
        let locs = (0..n)
            .map(|i| get_u32(&buf, RXNFC_RULE_LOCS_OFFSET + 4 * i))
            .collect();
        Ok((size, locs))
    }

    /// The length of string set `set`, `None` if the device has none.
    pub fn sset_len(&self, dev: &str, set: u32) -> Result<Option<u32>, EtError> {
        let hdr = size_of::<EthtoolSsetInfo>();
        let mut buf = vec![0u8; hdr + 4];
        put_u32(
            &mut buf,
            offset_of!(EthtoolSsetInfo, cmd),
            ETHTOOL_GSSET_INFO,
        );
        put_u64(
            &mut buf,
            offset_of!(EthtoolSsetInfo, sset_mask),
            1u64 << set,
        );
        // SAFETY: one bit in sset_mask: the kernel reads the 16-byte header and
        // writes it back plus at most one u32 of data; `buf` is 20 bytes.
        unsafe { self.ioctl_raw(dev, "ETHTOOL_GSSET_INFO", buf.as_mut_ptr()) }?;
        let mask = get_u64(&buf, offset_of!(EthtoolSsetInfo, sset_mask));
        Ok((mask & (1u64 << set) != 0).then(|| get_u32(&buf, hdr)))
    }

    /// The `n` strings of set `set`; `None` when the kernel's count changed
    /// under us (it then answers `len == 0`).
    pub fn strings(&self, dev: &str, set: u32, n: u32) -> Result<Option<Vec<String>>, EtError> {
        let hdr = size_of::<EthtoolGstrings>();
        let mut buf = vec![0u8; hdr + n as usize * ETH_GSTRING_LEN];
        put_u32(&mut buf, offset_of!(EthtoolGstrings, cmd), ETHTOOL_GSTRINGS);
        put_u32(&mut buf, offset_of!(EthtoolGstrings, string_set), set);
        put_u32(&mut buf, offset_of!(EthtoolGstrings, len), n);
        // SAFETY: with len = n set, the kernel writes the header and either n
        // strings of ETH_GSTRING_LEN bytes or none (len 0 on mismatch).
        unsafe { self.ioctl_raw(dev, "ETHTOOL_GSTRINGS", buf.as_mut_ptr()) }?;
        if get_u32(&buf, offset_of!(EthtoolGstrings, len)) != n {
            return Ok(None);
        }
        Ok(Some(
            buf[hdr..]
                .chunks_exact(ETH_GSTRING_LEN)
                .map(cstr_field)
                .collect(),
        ))
    }

    /// `n` ETHTOOL_GSTATS values; `None` when the count changed under us.
    pub fn stats_values(&self, dev: &str, n: u32) -> Result<Option<Vec<u64>>, EtError> {
        let hdr = size_of::<EthtoolStats>();
        let mut buf = vec![0u8; hdr + n as usize * 8];
        put_u32(&mut buf, offset_of!(EthtoolStats, cmd), ETHTOOL_GSTATS);
        put_u32(&mut buf, offset_of!(EthtoolStats, n_stats), n);
        // SAFETY: with n_stats = n set, the kernel writes the header and either
        // n u64s or none (n_stats 0 on mismatch).
        unsafe { self.ioctl_raw(dev, "ETHTOOL_GSTATS", buf.as_mut_ptr()) }?;
        if get_u32(&buf, offset_of!(EthtoolStats, n_stats)) != n {
            return Ok(None);
        }
        Ok(Some(
            (0..n as usize)
                .map(|i| get_u64(&buf, hdr + 8 * i))
                .collect(),
        ))
    }

    /// ETHTOOL_GFEATURES with room for `words` blocks: (the kernel's word
    /// count, the blocks it filled).
    pub fn gfeatures(
        &self,
        dev: &str,
        words: u32,
    ) -> Result<(u32, Vec<EthtoolGetFeaturesBlock>), EtError> {
        let hdr = size_of::<EthtoolGfeatures>();
        let bsz = size_of::<EthtoolGetFeaturesBlock>();
        let mut buf = vec![0u8; hdr + words as usize * bsz];
        put_u32(
            &mut buf,
            offset_of!(EthtoolGfeatures, cmd),
            ETHTOOL_GFEATURES,
        );
        put_u32(&mut buf, offset_of!(EthtoolGfeatures, size), words);
        // SAFETY: the kernel writes the header and min(size, its word count)
        // blocks (net/ethtool/ioctl.c ethtool_get_features).
        unsafe { self.ioctl_raw(dev, "ETHTOOL_GFEATURES", buf.as_mut_ptr()) }?;
        let kwords = get_u32(&buf, offset_of!(EthtoolGfeatures, size));
        let blocks = (0..kwords.min(words) as usize)
            .map(|i| {
                let o = hdr + i * bsz;
                EthtoolGetFeaturesBlock {
                    available: get_u32(&buf, o + offset_of!(EthtoolGetFeaturesBlock, available)),
                    requested: get_u32(&buf, o + offset_of!(EthtoolGetFeaturesBlock, requested)),
                    active: get_u32(&buf, o + offset_of!(EthtoolGetFeaturesBlock, active)),
                    never_changed: get_u32(
                        &buf,
                        o + offset_of!(EthtoolGetFeaturesBlock, never_changed),
                    ),
                }
            })
            .collect();
        Ok((kwords, blocks))
    }

    /// ETHTOOL_SFEATURES; `blocks.len()` must be the kernel's word count.
    /// Returns the ETHTOOL_F_* flags.
    pub fn sfeatures(&self, dev: &str, blocks: &[EthtoolSetFeaturesBlock]) -> Result<i32, EtError> {
        let hdr = size_of::<EthtoolSfeatures>();
        let bsz = size_of::<EthtoolSetFeaturesBlock>();
        let mut buf = vec![0u8; hdr + size_of_val(blocks)];
        put_u32(
            &mut buf,
            offset_of!(EthtoolSfeatures, cmd),
            ETHTOOL_SFEATURES,
        );
        put_u32(
            &mut buf,
            offset_of!(EthtoolSfeatures, size),
            blocks.len() as u32,
        );
        for (i, b) in blocks.iter().enumerate() {
            let o = hdr + i * bsz;
            put_u32(
                &mut buf,
                o + offset_of!(EthtoolSetFeaturesBlock, valid),
                b.valid,
            );
            put_u32(
                &mut buf,
                o + offset_of!(EthtoolSetFeaturesBlock, requested),
                b.requested,
            );
        }
        // SAFETY: the kernel reads the header and, only if size equals its word
        // count (else EINVAL), that many blocks: exactly `buf`.
        unsafe { self.ioctl_raw(dev, "ETHTOOL_SFEATURES", buf.as_mut_ptr()) }
    }
}

fn last_errno() -> i32 {
    std::io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}

// ---------------------------------------------------------------- netlink

/// A small generic-netlink client: message building, strict parsing (errors,
/// never panics, on malformed input) and a request/ACK exchange.
pub mod nl {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

    /// `NLMSG_HDRLEN` = NLMSG_ALIGN(sizeof(struct nlmsghdr)) (include/uapi/linux/netlink.h).
    pub const NLMSG_HDRLEN: usize = 16;
    /// `NLA_HDRLEN` = NLA_ALIGN(sizeof(struct nlattr)) (include/uapi/linux/netlink.h).
    pub const NLA_HDRLEN: usize = 4;
    /// `GENL_HDRLEN` = NLMSG_ALIGN(sizeof(struct genlmsghdr)) (include/uapi/linux/genetlink.h).
    pub const GENL_HDRLEN: usize = 4;
    /// `NLA_F_NESTED` (include/uapi/linux/netlink.h).
    pub const NLA_F_NESTED: u16 = 1 << 15;
    /// `NLA_F_NET_BYTEORDER` (include/uapi/linux/netlink.h).
    pub const NLA_F_NET_BYTEORDER: u16 = 1 << 14;
    /// `NLA_TYPE_MASK` (include/uapi/linux/netlink.h).
    pub const NLA_TYPE_MASK: u16 = !(NLA_F_NESTED | NLA_F_NET_BYTEORDER);
    /// `NLM_F_REQUEST` (include/uapi/linux/netlink.h).
    pub const NLM_F_REQUEST: u16 = 0x01;
    /// `NLM_F_ACK` (include/uapi/linux/netlink.h).
    pub const NLM_F_ACK: u16 = 0x04;
    /// `NLM_F_CAPPED` (include/uapi/linux/netlink.h): the error echoes only the request's header.
    pub const NLM_F_CAPPED: u16 = 0x100;
    /// `NLM_F_ACK_TLVS` (include/uapi/linux/netlink.h): extended-ACK attributes follow.
    pub const NLM_F_ACK_TLVS: u16 = 0x200;
    /// `NLMSG_NOOP` (include/uapi/linux/netlink.h).
    pub const NLMSG_NOOP: u16 = 0x1;
    /// `NLMSG_ERROR` (include/uapi/linux/netlink.h).
    pub const NLMSG_ERROR: u16 = 0x2;
    /// `NLMSG_DONE` (include/uapi/linux/netlink.h).
    pub const NLMSG_DONE: u16 = 0x3;
    /// `NETLINK_GENERIC` (include/uapi/linux/netlink.h).
    pub const NETLINK_GENERIC: i32 = 16;
    /// `NETLINK_CAP_ACK` socket option (include/uapi/linux/netlink.h).
    pub const NETLINK_CAP_ACK: i32 = 10;
    /// `NETLINK_EXT_ACK` socket option (include/uapi/linux/netlink.h).
    pub const NETLINK_EXT_ACK: i32 = 11;
    /// `NLMSGERR_ATTR_MSG` (`enum nlmsgerr_attrs`, include/uapi/linux/netlink.h).
    pub const NLMSGERR_ATTR_MSG: u16 = 1;
    /// `GENL_ID_CTRL` = NLMSG_MIN_TYPE (include/uapi/linux/genetlink.h).
    pub const GENL_ID_CTRL: u16 = 0x10;
    /// `CTRL_CMD_GETFAMILY` (include/uapi/linux/genetlink.h).
    pub const CTRL_CMD_GETFAMILY: u8 = 3;
    /// `CTRL_ATTR_FAMILY_ID` (include/uapi/linux/genetlink.h), a u16.
    pub const CTRL_ATTR_FAMILY_ID: u16 = 1;
    /// `CTRL_ATTR_FAMILY_NAME` (include/uapi/linux/genetlink.h), a string.
    pub const CTRL_ATTR_FAMILY_NAME: u16 = 2;
    /// The nlctrl family's version (net/netlink/genetlink.c `.version = 0x2`;
    /// not in the UAPI, and the kernel does not check requests against it).
    pub const GENL_CTRL_VERSION: u8 = 2;

    pub fn align4(n: usize) -> usize {
        (n + 3) & !3
    }

    /// An attribute stream under construction, with nests.
    #[derive(Debug, Default)]
    pub struct Attrs {
        buf: Vec<u8>,
        open: Vec<usize>,
    }

    impl Attrs {
        pub fn new() -> Attrs {
            Attrs::default()
        }

        pub fn put(&mut self, ty: u16, data: &[u8]) -> &mut Attrs {
            let len = (NLA_HDRLEN + data.len()) as u16;
            self.buf.extend_from_slice(&len.to_ne_bytes());
            self.buf.extend_from_slice(&ty.to_ne_bytes());
            self.buf.extend_from_slice(data);
            self.buf.resize(align4(self.buf.len()), 0);
            self
        }

        pub fn put_u8(&mut self, ty: u16, v: u8) -> &mut Attrs {
            self.put(ty, &[v])
        }

        pub fn put_u16(&mut self, ty: u16, v: u16) -> &mut Attrs {
            self.put(ty, &v.to_ne_bytes())
        }

        pub fn put_u32(&mut self, ty: u16, v: u32) -> &mut Attrs {
            self.put(ty, &v.to_ne_bytes())
        }

        /// A NUL-terminated string (NLA_NUL_STRING).
        pub fn put_strz(&mut self, ty: u16, s: &str) -> &mut Attrs {
            let mut v = s.as_bytes().to_vec();
            v.push(0);
            self.put(ty, &v)
        }

        /// Opens a nest (with `NLA_F_NESTED`, which strict genetlink
        /// validation requires); close it with [`Attrs::nest_end`].
        pub fn nest_start(&mut self, ty: u16) -> &mut Attrs {
            self.open.push(self.buf.len());
            self.buf.extend_from_slice(&0u16.to_ne_bytes());
            self.buf
                .extend_from_slice(&(ty | NLA_F_NESTED).to_ne_bytes());
            self
        }

        pub fn nest_end(&mut self) -> &mut Attrs {
            if let Some(start) = self.open.pop() {
                let len = (self.buf.len() - start) as u16;
                self.buf[start..start + 2].copy_from_slice(&len.to_ne_bytes());
            }
            self
        }

        /// The bytes (any nests still open are closed).
        pub fn finish(&mut self) -> Vec<u8> {
            while !self.open.is_empty() {
                self.nest_end();
            }
            std::mem::take(&mut self.buf)
        }
    }

    /// nlmsghdr + genlmsghdr + attributes.
    pub fn genl_request(
        family: u16,
        flags: u16,
        seq: u32,
        cmd: u8,
        version: u8,
        attrs: &[u8],
    ) -> Vec<u8> {
        let len = NLMSG_HDRLEN + GENL_HDRLEN + attrs.len();
        let mut m = Vec::with_capacity(len);
        m.extend_from_slice(&(len as u32).to_ne_bytes());
        m.extend_from_slice(&family.to_ne_bytes());
        m.extend_from_slice(&flags.to_ne_bytes());
        m.extend_from_slice(&seq.to_ne_bytes());
        m.extend_from_slice(&0u32.to_ne_bytes()); // nlmsg_pid: to the kernel
        m.extend_from_slice(&[cmd, version, 0, 0]);
        m.extend_from_slice(attrs);
        m
    }

    /// One netlink message of a datagram.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct Msg<'a> {
        pub ty: u16,
        pub flags: u16,
        pub seq: u32,
        pub pid: u32,
        pub payload: &'a [u8],
    }

    fn u16_at(b: &[u8], off: usize) -> Option<u16> {
        Some(u16::from_ne_bytes(b.get(off..off + 2)?.try_into().ok()?))
    }

    fn u32_at(b: &[u8], off: usize) -> Option<u32> {
        Some(u32::from_ne_bytes(b.get(off..off + 4)?.try_into().ok()?))
    }

    /// Splits a datagram into messages; any truncated or inconsistent
    /// length is an error.
    pub fn parse_msgs(buf: &[u8]) -> Result<Vec<Msg<'_>>, String> {
        let mut out = Vec::new();
        let mut off = 0usize;
        while off < buf.len() {
            let rest = &buf[off..];
            if rest.len() < NLMSG_HDRLEN {
                return Err(format!(
                    "{} trailing bytes, less than a message header",
                    rest.len()
                ));
            }
            let len = u32_at(rest, 0).ok_or("short header")? as usize;
            if len < NLMSG_HDRLEN || len > rest.len() {
                return Err(format!(
                    "message length {len} with {} bytes left",
                    rest.len()
                ));
            }
            out.push(Msg {
                ty: u16_at(rest, 4).ok_or("short header")?,
                flags: u16_at(rest, 6).ok_or("short header")?,
                seq: u32_at(rest, 8).ok_or("short header")?,
                pid: u32_at(rest, 12).ok_or("short header")?,
                payload: &rest[NLMSG_HDRLEN..len],
            });
            off += align4(len).min(rest.len());
        }
        Ok(out)
    }

    /// One attribute: its type without the flag bits, whether it is nested,
    /// its payload.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct Attr<'a> {
        pub ty: u16,
        pub nested: bool,
        pub data: &'a [u8],
    }

    /// Splits an attribute stream; any truncated attribute is an error.
    pub fn parse_attrs(buf: &[u8]) -> Result<Vec<Attr<'_>>, String> {
        let mut out = Vec::new();
        let mut off = 0usize;
        while off < buf.len() {
            let rest = &buf[off..];
            if rest.len() < NLA_HDRLEN {
                return Err(format!(
                    "{} trailing bytes, less than an attribute header",
                    rest.len()
                ));
            }
            let len = u16_at(rest, 0).ok_or("short attribute")? as usize;
            let raw = u16_at(rest, 2).ok_or("short attribute")?;
            if len < NLA_HDRLEN || len > rest.len() {
                return Err(format!(
                    "attribute {} length {len} with {} bytes left",
                    raw & NLA_TYPE_MASK,
                    rest.len()
                ));
            }
            out.push(Attr {
                ty: raw & NLA_TYPE_MASK,
                nested: raw & NLA_F_NESTED != 0,
                data: &rest[NLA_HDRLEN..len],
            });
            off += align4(len).min(rest.len());
        }
        Ok(out)
    }

    pub fn attr_u8(a: &Attr) -> Result<u8, String> {
        match a.data {
            [v] => Ok(*v),
            d => Err(format!("attribute {}: {} bytes, want 1", a.ty, d.len())),
        }
    }

    pub fn attr_u16(a: &Attr) -> Result<u16, String> {
        <[u8; 2]>::try_from(a.data)
            .map(u16::from_ne_bytes)
            .map_err(|_| format!("attribute {}: {} bytes, want 2", a.ty, a.data.len()))
    }

    pub fn attr_u32(a: &Attr) -> Result<u32, String> {
        <[u8; 4]>::try_from(a.data)
            .map(u32::from_ne_bytes)
            .map_err(|_| format!("attribute {}: {} bytes, want 4", a.ty, a.data.len()))
    }

    /// A string attribute up to its NUL.
    pub fn attr_str(a: &Attr) -> String {
        super::cstr_field(a.data)
    }

    /// An `NLMSG_ERROR` payload (`struct nlmsgerr` + echoed request +
    /// extended-ACK TLVs): the error code (0 for an ACK, else -errno) and the
    /// extack message. A payload too short for the error code and echoed
    /// header is an error; malformed TLVs only lose the extack message.
    pub fn parse_nlmsgerr(flags: u16, payload: &[u8]) -> Result<(i32, Option<String>), String> {
        let code = u32_at(payload, 0).ok_or("nlmsgerr shorter than its error code")? as i32;
        let orig_len = u32_at(payload, 4).ok_or("nlmsgerr without the request header")? as usize;
        if payload.len() < 4 + NLMSG_HDRLEN {
            return Err("nlmsgerr without the request header".into());
        }
        let tlv_off = if flags & NLM_F_CAPPED != 0 {
            4 + NLMSG_HDRLEN
        } else {
            if orig_len < NLMSG_HDRLEN {
                return Err(format!("echoed request length {orig_len}"));
            }
            4 + align4(orig_len)
        };
        if tlv_off > payload.len() {
            return Err(format!(
                "echoed request of {orig_len} bytes but only {} bytes",
                payload.len()
            ));
        }
        let mut extack = None;
        if flags & NLM_F_ACK_TLVS != 0
            && let Ok(attrs) = parse_attrs(&payload[tlv_off..])
        {
            extack = attrs
                .iter()
                .find(|a| a.ty == NLMSGERR_ATTR_MSG)
                .map(attr_str);
        }
        Ok((code, extack))
    }

    /// A netlink failure: errno and the kernel's extack message, if any.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct NlError {
        pub errno: i32,
        pub extack: Option<String>,
    }

    impl NlError {
        fn new(errno: i32, extack: Option<String>) -> NlError {
            NlError { errno, extack }
        }
    }

    /// CTRL_CMD_GETFAMILY for `name`.
    pub fn getfamily_request(seq: u32, name: &str) -> Vec<u8> {
        let attrs = Attrs::new().put_strz(CTRL_ATTR_FAMILY_NAME, name).finish();
        genl_request(
            GENL_ID_CTRL,
            NLM_F_REQUEST | NLM_F_ACK,
            seq,
            CTRL_CMD_GETFAMILY,
            GENL_CTRL_VERSION,
            &attrs,
        )
    }

    /// CTRL_ATTR_FAMILY_ID of a GETFAMILY reply payload (genlmsghdr + attrs).
    pub fn parse_family_id(payload: &[u8]) -> Result<u16, String> {
        let attrs = payload
            .get(GENL_HDRLEN..)
            .ok_or("reply shorter than a genl header")?;
        let attrs = parse_attrs(attrs)?;
        let a = attrs
            .iter()
            .find(|a| a.ty == CTRL_ATTR_FAMILY_ID)
            .ok_or("no CTRL_ATTR_FAMILY_ID")?;
        attr_u16(a)
    }

    /// A NETLINK_GENERIC socket in the calling thread's netns, with extended
    /// and capped ACKs.
    pub struct Genl {
        fd: OwnedFd,
        seq: u32,
    }

    fn errno() -> i32 {
        super::last_errno()
    }

    impl Genl {
        pub fn open() -> Result<Genl, NlError> {
            Genl::open_protocol(NETLINK_GENERIC)
        }

        /// The same client on another netlink protocol (e.g. `NETLINK_ROUTE`,
        /// whose requests carry their own fixed header instead of genlmsghdr).
        pub fn open_protocol(protocol: i32) -> Result<Genl, NlError> {
            // SAFETY: plain socket(2).
            let fd = unsafe {
                libc::socket(
                    libc::AF_NETLINK,
                    libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                    protocol,
                )
            };
            if fd < 0 {
                return Err(NlError::new(errno(), None));
            }
            // SAFETY: fd is a fresh socket nobody else owns.
            let fd = unsafe { OwnedFd::from_raw_fd(fd) };
            let one: libc::c_int = 1;
            for opt in [NETLINK_EXT_ACK, NETLINK_CAP_ACK] {
                // SAFETY: setsockopt with a valid int; failure (old kernels) only
                // costs the extack text or a longer error message.
                unsafe {
                    libc::setsockopt(
                        fd.as_raw_fd(),
                        libc::SOL_NETLINK,
                        opt,
                        (&raw const one).cast(),
                        size_of::<libc::c_int>() as libc::socklen_t,
                    );
                }
            }
            let tv = libc::timeval {
                tv_sec: 10,
                tv_usec: 0,
            };
            // SAFETY: setsockopt with a valid timeval: never wait forever for the kernel.
            unsafe {
                libc::setsockopt(
                    fd.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_RCVTIMEO,
                    (&raw const tv).cast(),
                    size_of::<libc::timeval>() as libc::socklen_t,
                );
            }
            Ok(Genl { fd, seq: 1 })
        }

        pub fn next_seq(&mut self) -> u32 {
            self.seq = self.seq.wrapping_add(1);
            self.seq
        }

        /// Sends `msg` (built with sequence number `seq`, with NLM_F_ACK) and
        /// collects the payloads of the replies up to the ACK.
        pub fn transact(&mut self, msg: &[u8], seq: u32) -> Result<Vec<Vec<u8>>, NlError> {
            loop {
                // SAFETY: sending our own buffer to the kernel.
                let n =
                    unsafe { libc::send(self.fd.as_raw_fd(), msg.as_ptr().cast(), msg.len(), 0) };
                if n >= 0 {
                    break;
                }
                let e = errno();
                if e != libc::EINTR {
                    return Err(NlError::new(e, None));
                }
            }
            let mut replies = Vec::new();
            let mut buf = vec![0u8; 64 << 10];
            loop {
                // SAFETY: receiving into our buffer; MSG_TRUNC reports the real size.
                let n = unsafe {
                    libc::recv(
                        self.fd.as_raw_fd(),
                        buf.as_mut_ptr().cast(),
                        buf.len(),
                        libc::MSG_TRUNC,
                    )
                };
                if n < 0 {
                    let e = errno();
                    if e == libc::EINTR {
                        continue;
                    }
                    return Err(NlError::new(e, Some("no answer from the kernel".into())));
                }
                let n = n as usize;
                if n > buf.len() {
                    return Err(NlError::new(
                        libc::EMSGSIZE,
                        Some(format!("reply of {n} bytes truncated")),
                    ));
                }
                let msgs =
                    parse_msgs(&buf[..n]).map_err(|e| NlError::new(libc::EPROTO, Some(e)))?;
                for m in msgs {
                    if m.seq != seq {
                        continue;
                    }
                    match m.ty {
                        NLMSG_ERROR => {
                            let (code, extack) = parse_nlmsgerr(m.flags, m.payload)
                                .map_err(|e| NlError::new(libc::EPROTO, Some(e)))?;
                            if code == 0 {
                                return Ok(replies);
                            }
                            return Err(NlError::new(code.saturating_neg(), extack));
                        }
                        NLMSG_DONE => return Ok(replies),
                        NLMSG_NOOP => {}
                        _ => replies.push(m.payload.to_vec()),
                    }
                }
            }
        }

        /// The id of genetlink family `name`.
        pub fn family_id(&mut self, name: &str) -> Result<u16, NlError> {
            let seq = self.next_seq();
            let replies = self.transact(&getfamily_request(seq, name), seq)?;
            let r = replies
                .first()
                .ok_or_else(|| NlError::new(libc::EPROTO, Some("no GETFAMILY reply".into())))?;
            parse_family_id(r).map_err(|e| NlError::new(libc::EPROTO, Some(e)))
        }
    }
}

// ---------------------------------------------------------------- rings (netlink)

/// `tcp-data-split` values a user can ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TcpDataSplit {
    /// `auto`: ETHTOOL_TCP_DATA_SPLIT_UNKNOWN, the driver decides.
    Auto,
    Off,
    On,
}

impl TcpDataSplit {
    pub fn uapi(self) -> u8 {
        match self {
            TcpDataSplit::Auto => ETHTOOL_TCP_DATA_SPLIT_UNKNOWN,
            TcpDataSplit::Off => ETHTOOL_TCP_DATA_SPLIT_DISABLED,
            TcpDataSplit::On => ETHTOOL_TCP_DATA_SPLIT_ENABLED,
        }
    }

    fn parse(s: &str) -> Result<TcpDataSplit, String> {
        match s {
            "auto" => Ok(TcpDataSplit::Auto),
            "off" => Ok(TcpDataSplit::Off),
            "on" => Ok(TcpDataSplit::On),
            _ => Err(format!("tcp-data-split {s:?}: want on, off or auto")),
        }
    }

    fn name(self) -> &'static str {
        match self {
            TcpDataSplit::Auto => "auto",
            TcpDataSplit::Off => "off",
            TcpDataSplit::On => "on",
        }
    }
}

/// The JSON name of a reported `ETHTOOL_A_RINGS_TCP_DATA_SPLIT` (absent means
/// unknown: the kernel only puts a non-zero value).
pub fn tcp_data_split_name(v: Option<u8>) -> String {
    match v {
        None | Some(ETHTOOL_TCP_DATA_SPLIT_UNKNOWN) => "unknown".into(),
        Some(ETHTOOL_TCP_DATA_SPLIT_DISABLED) => "off".into(),
        Some(ETHTOOL_TCP_DATA_SPLIT_ENABLED) => "on".into(),
        Some(x) => format!("invalid({x})"),
    }
}

/// What `-G` asks for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RingsSet {
    pub rx: Option<u32>,
    pub tx: Option<u32>,
    pub tcp_data_split: Option<TcpDataSplit>,
}

/// An ETHTOOL_MSG_RINGS_GET_REPLY.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rings {
    pub dev_index: Option<u32>,
    pub dev_name: Option<String>,
    pub rx_max: Option<u32>,
    pub rx_mini_max: Option<u32>,
    pub rx_jumbo_max: Option<u32>,
    pub tx_max: Option<u32>,
    pub rx: Option<u32>,
    pub rx_mini: Option<u32>,
    pub rx_jumbo: Option<u32>,
    pub tx: Option<u32>,
    pub rx_buf_len: Option<u32>,
    pub tcp_data_split: Option<u8>,
    pub cqe_size: Option<u32>,
    pub tx_push: Option<u8>,
    pub rx_push: Option<u8>,
    pub tx_push_buf_len: Option<u32>,
    pub tx_push_buf_len_max: Option<u32>,
    pub hds_thresh: Option<u32>,
    pub hds_thresh_max: Option<u32>,
    /// Attribute types this tool does not know (newer kernels).
    pub unknown: Vec<u16>,
}

impl Rings {
    /// `rx`, `tx`, `rx_max`, `tx_max` (null when the driver has none) and
    /// `tcp_data_split` always; the rest when the kernel sent them.
    pub fn to_json(&self) -> Map<String, Value> {
        let mut m = Map::new();
        m.insert("rx".into(), json!(self.rx));
        m.insert("tx".into(), json!(self.tx));
        m.insert("rx_max".into(), json!(self.rx_max));
        m.insert("tx_max".into(), json!(self.tx_max));
        m.insert(
            "tcp_data_split".into(),
            json!(tcp_data_split_name(self.tcp_data_split)),
        );
        for (k, v) in [
            ("rx_buf_len", self.rx_buf_len),
            ("rx_mini", self.rx_mini),
            ("rx_mini_max", self.rx_mini_max),
            ("rx_jumbo", self.rx_jumbo),
            ("rx_jumbo_max", self.rx_jumbo_max),
            ("cqe_size", self.cqe_size),
            ("tx_push_buf_len", self.tx_push_buf_len),
            ("tx_push_buf_len_max", self.tx_push_buf_len_max),
            ("hds_thresh", self.hds_thresh),
            ("hds_thresh_max", self.hds_thresh_max),
        ] {
            if let Some(v) = v {
                m.insert(k.into(), json!(v));
            }
        }
        for (k, v) in [("tx_push", self.tx_push), ("rx_push", self.rx_push)] {
            if let Some(v) = v {
                m.insert(k.into(), json!(v != 0));
            }
        }
        if !self.unknown.is_empty() {
            m.insert("unknown_attrs".into(), json!(self.unknown));
        }
        m
    }
}

/// The ETHTOOL_A_RINGS_HEADER nest naming `dev`.
fn header_nest(a: &mut nl::Attrs, dev: &str) {
    a.nest_start(ETHTOOL_A_RINGS_HEADER)
        .put_strz(ETHTOOL_A_HEADER_DEV_NAME, dev)
        .nest_end();
}

/// ETHTOOL_MSG_RINGS_GET for `dev`.
pub fn rings_get_request(family: u16, seq: u32, dev: &str) -> Vec<u8> {
    let mut a = nl::Attrs::new();
    header_nest(&mut a, dev);
    nl::genl_request(
        family,
        nl::NLM_F_REQUEST | nl::NLM_F_ACK,
        seq,
        ETHTOOL_MSG_RINGS_GET,
        ETHTOOL_GENL_VERSION,
        &a.finish(),
    )
}

/// ETHTOOL_MSG_RINGS_SET for `dev` (attributes only for what is set).
pub fn rings_set_request(family: u16, seq: u32, dev: &str, s: &RingsSet) -> Vec<u8> {
    let mut a = nl::Attrs::new();
    header_nest(&mut a, dev);
    if let Some(rx) = s.rx {
        a.put_u32(ETHTOOL_A_RINGS_RX, rx);
    }
    if let Some(tx) = s.tx {
        a.put_u32(ETHTOOL_A_RINGS_TX, tx);
    }
    if let Some(t) = s.tcp_data_split {
        a.put_u8(ETHTOOL_A_RINGS_TCP_DATA_SPLIT, t.uapi());
    }
    nl::genl_request(
        family,
        nl::NLM_F_REQUEST | nl::NLM_F_ACK,
        seq,
        ETHTOOL_MSG_RINGS_SET,
        ETHTOOL_GENL_VERSION,
        &a.finish(),
    )
}

/// Parses a RINGS_GET reply payload (genlmsghdr + attributes). Unknown
/// attributes are listed, wrong sizes and truncation are errors.
pub fn parse_rings_reply(payload: &[u8]) -> Result<Rings, String> {
    let cmd = *payload.first().ok_or("empty reply")?;
    if payload.len() < nl::GENL_HDRLEN {
        return Err("reply shorter than a genl header".into());
    }
    if cmd != ETHTOOL_MSG_RINGS_GET_REPLY {
        return Err(format!(
            "reply command {cmd}, want ETHTOOL_MSG_RINGS_GET_REPLY"
        ));
    }
    let mut r = Rings::default();
    for a in nl::parse_attrs(&payload[nl::GENL_HDRLEN..])? {
        let u32v = || nl::attr_u32(&a).map(Some);
        match a.ty {
            ETHTOOL_A_RINGS_HEADER => {
                for h in nl::parse_attrs(a.data)? {
                    match h.ty {
                        ETHTOOL_A_HEADER_DEV_INDEX => r.dev_index = Some(nl::attr_u32(&h)?),
                        ETHTOOL_A_HEADER_DEV_NAME => r.dev_name = Some(nl::attr_str(&h)),
                        _ => {}
                    }
                }
            }
            ETHTOOL_A_RINGS_RX_MAX => r.rx_max = u32v()?,
            ETHTOOL_A_RINGS_RX_MINI_MAX => r.rx_mini_max = u32v()?,
            ETHTOOL_A_RINGS_RX_JUMBO_MAX => r.rx_jumbo_max = u32v()?,
            ETHTOOL_A_RINGS_TX_MAX => r.tx_max = u32v()?,
            ETHTOOL_A_RINGS_RX => r.rx = u32v()?,
            ETHTOOL_A_RINGS_RX_MINI => r.rx_mini = u32v()?,
            ETHTOOL_A_RINGS_RX_JUMBO => r.rx_jumbo = u32v()?,
            ETHTOOL_A_RINGS_TX => r.tx = u32v()?,
            ETHTOOL_A_RINGS_RX_BUF_LEN => r.rx_buf_len = u32v()?,
            ETHTOOL_A_RINGS_TCP_DATA_SPLIT => r.tcp_data_split = Some(nl::attr_u8(&a)?),
            ETHTOOL_A_RINGS_CQE_SIZE => r.cqe_size = u32v()?,
            ETHTOOL_A_RINGS_TX_PUSH => r.tx_push = Some(nl::attr_u8(&a)?),
            ETHTOOL_A_RINGS_RX_PUSH => r.rx_push = Some(nl::attr_u8(&a)?),
            ETHTOOL_A_RINGS_TX_PUSH_BUF_LEN => r.tx_push_buf_len = u32v()?,
            ETHTOOL_A_RINGS_TX_PUSH_BUF_LEN_MAX => r.tx_push_buf_len_max = u32v()?,
            ETHTOOL_A_RINGS_HDS_THRESH => r.hds_thresh = u32v()?,
            ETHTOOL_A_RINGS_HDS_THRESH_MAX => r.hds_thresh_max = u32v()?,
            other => r.unknown.push(other),
        }
    }
    Ok(r)
}

/// The ethtool genetlink family on a fresh socket.
fn ethtool_genl() -> Result<(nl::Genl, u16), EtError> {
    let mut g = nl::Genl::open().map_err(|e| EtError::nl("socket(NETLINK_GENERIC)", e))?;
    let fam = g
        .family_id(ETHTOOL_GENL_NAME)
        .map_err(|e| EtError::nl("CTRL_CMD_GETFAMILY(ethtool)", e))?;
    Ok((g, fam))
}

fn rings_get_on(g: &mut nl::Genl, family: u16, dev: &str) -> Result<Rings, EtError> {
    const OP: &str = "ETHTOOL_MSG_RINGS_GET";
    let seq = g.next_seq();
    let replies = g
        .transact(&rings_get_request(family, seq, dev), seq)
        .map_err(|e| EtError::nl(OP, e))?;
    let r = replies
        .first()
        .ok_or_else(|| EtError::proto(OP, "no reply"))?;
    parse_rings_reply(r).map_err(|e| EtError::proto(OP, e))
}

/// `-g`: the rings over ethtool netlink.
pub fn rings_get(dev: &str) -> Result<Rings, EtError> {
    let (mut g, fam) = ethtool_genl()?;
    rings_get_on(&mut g, fam, dev)
}

/// `-G`: sets, re-reads and checks that what was asked for took effect
/// (`tcp-data-split auto` is not checked: the driver picks).
pub fn rings_set(dev: &str, s: &RingsSet) -> Result<Rings, EtError> {
    let (mut g, fam) = ethtool_genl()?;
    let seq = g.next_seq();
    g.transact(&rings_set_request(fam, seq, dev, s), seq)
        .map_err(|e| EtError::nl("ETHTOOL_MSG_RINGS_SET", e))?;
    let r = rings_get_on(&mut g, fam, dev)?;
    let mut off = Vec::new();
    if s.rx.is_some() && s.rx != r.rx {
        off.push("rx");
    }
    if s.tx.is_some() && s.tx != r.tx {
        off.push("tx");
    }
    if let Some(t @ (TcpDataSplit::On | TcpDataSplit::Off)) = s.tcp_data_split
        && r.tcp_data_split != Some(t.uapi())
    {
        off.push("tcp_data_split");
    }
    if !off.is_empty() {
        return Err(EtError::msg(format!(
            "ring settings did not take effect: {}",
            off.join(", ")
        ))
        .with("not_changed", json!(off))
        .with("rings", Value::Object(r.to_json())));
    }
    Ok(r)
}

fn rings_set_json(s: &RingsSet) -> Value {
    let mut m = Map::new();
    if let Some(v) = s.rx {
        m.insert("rx".into(), json!(v));
    }
    if let Some(v) = s.tx {
        m.insert("tx".into(), json!(v));
    }
    if let Some(t) = s.tcp_data_split {
        m.insert("tcp_data_split".into(), json!(t.name()));
    }
    Value::Object(m)
}

// ---------------------------------------------------------------- stats, drvinfo

/// `-i` as JSON.
pub fn drvinfo_json(d: &EthtoolDrvinfo) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("driver".into(), json!(cstr_field(&d.driver)));
    m.insert("version".into(), json!(cstr_field(&d.version)));
    m.insert("fw_version".into(), json!(cstr_field(&d.fw_version)));
    m.insert("bus_info".into(), json!(cstr_field(&d.bus_info)));
    m.insert("erom_version".into(), json!(cstr_field(&d.erom_version)));
    m.insert("n_priv_flags".into(), json!(d.n_priv_flags));
    m.insert("n_stats".into(), json!(d.n_stats));
    m.insert("testinfo_len".into(), json!(d.testinfo_len));
    m.insert("eedump_len".into(), json!(d.eedump_len));
    m.insert("regdump_len".into(), json!(d.regdump_len));
    m
}

/// `-S`: (name, value) in the driver's order. Retries when the count
/// changes between the calls (queues reconfigured meanwhile).
pub fn stats(sock: &EthtoolSock, dev: &str) -> Result<Vec<(String, u64)>, EtError> {
    for _ in 0..3 {
        let Some(n) = sock.sset_len(dev, ETH_SS_STATS)? else {
            return Err(EtError {
                error: "no stats available".into(),
                ..EtError::os("ETHTOOL_GSSET_INFO", libc::EOPNOTSUPP)
            });
        };
        let Some(names) = sock.strings(dev, ETH_SS_STATS, n)? else {
            continue;
        };
        let Some(values) = sock.stats_values(dev, n)? else {
            continue;
        };
        return Ok(names.into_iter().zip(values).collect());
    }
    Err(EtError {
        error: "statistics count kept changing".into(),
        ..EtError::os("ETHTOOL_GSTATS", libc::EAGAIN)
    })
}

/// Serializes stats as one JSON object in the driver's order (a repeated name
/// gets `#2`, `#3`… so no value is lost).
struct OrderedStats<'a>(&'a [(String, u64)]);

impl Serialize for OrderedStats<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut seen = std::collections::HashMap::<&str, u32>::new();
        let mut m = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in self.0 {
            let c = seen.entry(k.as_str()).or_insert(0);
            *c += 1;
            if *c == 1 {
                m.serialize_entry(k, v)?;
            } else {
                m.serialize_entry(&format!("{k}#{c}"), v)?;
            }
        }
        m.end()
    }
}

#[derive(Serialize)]
struct StatsOut<'a> {
    ok: bool,
    dev: &'a str,
    stats: OrderedStats<'a>,
}

// ---------------------------------------------------------------- features

/// One device feature (`ETH_SS_FEATURES` string + its GFEATURES bits).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Feature {
    pub name: String,
    pub bit: usize,
    /// In `hw_features`: the user may change it.
    pub available: bool,
    pub requested: bool,
    pub active: bool,
    pub never_changed: bool,
}

impl Feature {
    /// ethtool(8)'s `[fixed]`.
    pub fn fixed(&self) -> bool {
        !self.available || self.never_changed
    }

    fn json(&self) -> Value {
        json!({"active": self.active, "requested": self.requested, "fixed": self.fixed()})
    }
}

/// The device's features plus the kernel's feature word count (for SFEATURES).
pub fn features_get(sock: &EthtoolSock, dev: &str) -> Result<(u32, Vec<Feature>), EtError> {
    for _ in 0..3 {
        let Some(n) = sock.sset_len(dev, ETH_SS_FEATURES)? else {
            return Err(EtError::os("ETHTOOL_GSSET_INFO", libc::EOPNOTSUPP));
        };
        let Some(names) = sock.strings(dev, ETH_SS_FEATURES, n)? else {
            continue;
        };
        let (kwords, blocks) = sock.gfeatures(dev, n.div_ceil(32))?;
        let bit = |w: u32, i: usize| (w >> (i % 32)) & 1 != 0;
        let feats = names
            .into_iter()
            .enumerate()
            .filter(|(_, name)| !name.is_empty())
            .filter_map(|(i, name)| {
                let b = blocks.get(i / 32)?;
                Some(Feature {
                    name,
                    bit: i,
                    available: bit(b.available, i),
                    requested: bit(b.requested, i),
                    active: bit(b.active, i),
                    never_changed: bit(b.never_changed, i),
                })
            })
            .collect();
        return Ok((kwords, feats));
    }
    Err(EtError {
        error: "feature count kept changing".into(),
        ..EtError::os("ETHTOOL_GSTRINGS", libc::EAGAIN)
    })
}

/// ethtool(8)'s legacy offload names (ethtool.c `off_flag_def`): short name,
/// long name, pattern over the kernel's feature names.
pub const FEATURE_ALIASES: &[(&str, &str, &str)] = &[
    ("rx", "rx-checksumming", "rx-checksum"),
    ("tx", "tx-checksumming", "tx-checksum-*"),
    ("sg", "scatter-gather", "tx-scatter-gather*"),
    ("tso", "tcp-segmentation-offload", "tx-tcp*-segmentation"),
    ("ufo", "udp-fragmentation-offload", "tx-udp-fragmentation"),
    (
        "gso",
        "generic-segmentation-offload",
        "tx-generic-segmentation",
    ),
    ("gro", "generic-receive-offload", "rx-gro"),
    ("lro", "large-receive-offload", "rx-lro"),
    ("rxvlan", "rx-vlan-offload", "rx-vlan-hw-parse"),
    ("txvlan", "tx-vlan-offload", "tx-vlan-hw-insert"),
    ("ntuple", "ntuple-filters", "rx-ntuple-filter"),
    ("rxhash", "receive-hashing", "rx-hashing"),
];

/// `fnmatch`-style match with `*` only (what the alias patterns use).
pub fn glob_match(pat: &str, s: &str) -> bool {
    fn go(p: &[u8], s: &[u8]) -> bool {
        match p.split_first() {
            None => s.is_empty(),
            Some((b'*', rest)) => (0..=s.len()).any(|i| go(rest, &s[i..])),
            Some((c, rest)) => s.split_first().is_some_and(|(d, t)| c == d && go(rest, t)),
        }
    }
    go(pat.as_bytes(), s.as_bytes())
}

/// Indices into `names` that a user's feature name means: the exact kernel
/// name, else an ethtool(8) alias (which may cover several features).
pub fn resolve_feature(name: &str, names: &[&str]) -> Result<Vec<usize>, String> {
    if let Some(i) = names.iter().position(|n| *n == name) {
        return Ok(vec![i]);
    }
    let pat = FEATURE_ALIASES
        .iter()
        .find(|(short, long, _)| *short == name || *long == name)
        .map(|(_, _, pat)| *pat)
        .ok_or_else(|| format!("unknown feature {name:?}"))?;
    let hits: Vec<usize> = names
        .iter()
        .enumerate()
        .filter(|(_, n)| glob_match(pat, n))
        .map(|(i, _)| i)
        .collect();
    if hits.is_empty() {
        return Err(format!("feature {name:?} ({pat}) not known to this kernel"));
    }
    Ok(hits)
}

fn feature_flags(rc: i32) -> Vec<&'static str> {
    let mut v = Vec::new();
    if rc & ETHTOOL_F_UNSUPPORTED != 0 {
        v.push("unsupported");
    }
    if rc & ETHTOOL_F_WISH != 0 {
        v.push("wish");
    }
    if rc & ETHTOOL_F_COMPAT != 0 {
        v.push("compat");
    }
    v
}

/// `-K`: applies the changes, re-reads and fails unless every requested
/// feature ended up in the requested state. Aliases covering several
/// features (`tso`, `tx`, `sg`) act on the changeable ones among them.
pub fn features_set(
    sock: &EthtoolSock,
    dev: &str,
    req: &[(String, bool)],
) -> Result<Value, EtError> {
    let (kwords, feats) = features_get(sock, dev)?;
    let names: Vec<&str> = feats.iter().map(|f| f.name.as_str()).collect();
    // Requested state per index into `feats` (later requests win).
    let mut want: Vec<(usize, bool)> = Vec::new();
    for (name, on) in req {
        let hits = resolve_feature(name, &names).map_err(EtError::msg)?;
        let changeable: Vec<usize> = hits
            .iter()
            .copied()
            .filter(|&i| !feats[i].fixed())
            .collect();
        let chosen = if hits.len() > 1 && !changeable.is_empty() {
            changeable
        } else {
            hits
        };
        for i in chosen {
            want.retain(|(j, _)| *j != i);
            want.push((i, *on));
        }
    }
    let mut blocks = vec![EthtoolSetFeaturesBlock::default(); kwords as usize];
    for &(i, on) in &want {
        let f = &feats[i];
        // The kernel refuses NETIF_F_NEVER_CHANGE bits in `valid` (EINVAL).
        if f.never_changed {
            continue;
        }
        let Some(b) = blocks.get_mut(f.bit / 32) else {
            continue;
        };
        b.valid |= 1 << (f.bit % 32);
        if on {
            b.requested |= 1 << (f.bit % 32);
        }
    }
    let rc = if blocks.iter().any(|b| b.valid != 0) {
        sock.sfeatures(dev, &blocks)?
    } else {
        0
    };
    let (_, after) = features_get(sock, dev)?;
    let mut changed = Vec::new();
    let mut failed = Vec::new();
    let mut result = Map::new();
    let mut requested = Map::new();
    for &(i, on) in &want {
        let before = &feats[i];
        requested.insert(before.name.clone(), json!(if on { "on" } else { "off" }));
        let Some(now) = after.iter().find(|f| f.bit == before.bit) else {
            failed.push(before.name.clone());
            continue;
        };
        result.insert(now.name.clone(), now.json());
        if now.active != on {
            failed.push(now.name.clone());
        } else if before.active != on {
            changed.push(now.name.clone());
        }
    }
    let out = json!({
        "requested": requested,
        "changed": changed,
        "not_changed": failed,
        "kernel_flags": feature_flags(rc),
        "features": result,
    });
    if !failed.is_empty() {
        let error = if changed.is_empty() {
            "Could not change any device features".to_string()
        } else {
            format!("could not change: {}", failed.join(", "))
        };
        let mut e = EtError::msg(error);
        if let Value::Object(m) = out {
            e.detail = m;
        }
        return Err(e);
    }
    Ok(out)
}

// ---------------------------------------------------------------- channels

/// What `-L` asks for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChannelsSet {
    pub rx: Option<u32>,
    pub tx: Option<u32>,
    pub other: Option<u32>,
    pub combined: Option<u32>,
}

pub fn channels_json(c: &EthtoolChannels) -> Map<String, Value> {
    let mut m = Map::new();
    for (k, v) in [
        ("max_rx", c.max_rx),
        ("max_tx", c.max_tx),
        ("max_other", c.max_other),
        ("max_combined", c.max_combined),
        ("rx", c.rx_count),
        ("tx", c.tx_count),
        ("other", c.other_count),
        ("combined", c.combined_count),
    ] {
        m.insert(k.into(), json!(v));
    }
    m
}

pub fn channels_get(sock: &EthtoolSock, dev: &str) -> Result<EthtoolChannels, EtError> {
    sock.channels(
        dev,
        EthtoolChannels {
            cmd: ETHTOOL_GCHANNELS,
            ..Default::default()
        },
    )
}

/// `-L`: like ethtool(8), reads the current counts, changes the requested
/// ones and writes all back; then re-reads and checks.
pub fn channels_set(
    sock: &EthtoolSock,
    dev: &str,
    s: &ChannelsSet,
) -> Result<EthtoolChannels, EtError> {
    let mut c = channels_get(sock, dev)?;
    c.cmd = ETHTOOL_SCHANNELS;
    c.rx_count = s.rx.unwrap_or(c.rx_count);
    c.tx_count = s.tx.unwrap_or(c.tx_count);
    c.other_count = s.other.unwrap_or(c.other_count);
    c.combined_count = s.combined.unwrap_or(c.combined_count);
    sock.channels(dev, c)?;
    let now = channels_get(sock, dev)?;
    let mut off = Vec::new();
    for (k, want, got) in [
        ("rx", s.rx, now.rx_count),
        ("tx", s.tx, now.tx_count),
        ("other", s.other, now.other_count),
        ("combined", s.combined, now.combined_count),
    ] {
        if want.is_some_and(|w| w != got) {
            off.push(k);
        }
    }
    if !off.is_empty() {
        return Err(EtError::msg(format!(
            "channel counts did not take effect: {}",
            off.join(", ")
        ))
        .with("not_changed", json!(off))
        .with("channels", Value::Object(channels_json(&now))));
    }
    Ok(now)
}

/// `-X DEV equal N` (ethtool(8)'s meaning): indirection entry `i` = `i % n`,
/// so RSS keeps flows off queues `n..` (a devmem RX queue then only gets
/// what an ntuple rule steers to it). Reads the table back; returns it.
pub fn rss_set_equal(sock: &EthtoolSock, dev: &str, n: u32) -> Result<Vec<u32>, EtError> {
    let cur = sock.rxfh_indir_get(dev)?;
    if cur.is_empty() {
        return Err(EtError::msg("the device has no RSS indirection table"));
    }
    let want: Vec<u32> = (0..cur.len() as u32).map(|i| i % n).collect();
    sock.rxfh_indir_set(dev, &want)?;
    let now = sock.rxfh_indir_get(dev)?;
    if now != want {
        return Err(
            EtError::msg("the indirection table did not take effect").with("indir", json!(now))
        );
    }
    Ok(now)
}

fn channels_set_json(s: &ChannelsSet) -> Value {
    let mut m = Map::new();
    for (k, v) in [
        ("rx", s.rx),
        ("tx", s.tx),
        ("other", s.other),
        ("combined", s.combined),
    ] {
        if let Some(v) = v {
            m.insert(k.into(), json!(v));
        }
    }
    Value::Object(m)
}

// ---------------------------------------------------------------- ntuple rules

/// The flow types `-N` knows (the tcp/udp/sctp ones share one spec layout).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlowType {
    Tcp4,
    Udp4,
    Sctp4,
    Tcp6,
    Udp6,
    Sctp6,
}

impl FlowType {
    fn parse(s: &str) -> Result<FlowType, String> {
        Ok(match s {
            "tcp4" => FlowType::Tcp4,
            "udp4" => FlowType::Udp4,
            "sctp4" => FlowType::Sctp4,
            "tcp6" => FlowType::Tcp6,
            "udp6" => FlowType::Udp6,
            "sctp6" => FlowType::Sctp6,
            _ => {
                return Err(format!(
                    "flow-type {s:?}: want tcp4, udp4, sctp4, tcp6, udp6 or sctp6"
                ));
            }
        })
    }

    pub fn uapi(self) -> u32 {
        match self {
            FlowType::Tcp4 => TCP_V4_FLOW,
            FlowType::Udp4 => UDP_V4_FLOW,
            FlowType::Sctp4 => SCTP_V4_FLOW,
            FlowType::Tcp6 => TCP_V6_FLOW,
            FlowType::Udp6 => UDP_V6_FLOW,
            FlowType::Sctp6 => SCTP_V6_FLOW,
        }
    }

    fn from_uapi(v: u32) -> Option<FlowType> {
        Some(match v {
            TCP_V4_FLOW => FlowType::Tcp4,
            UDP_V4_FLOW => FlowType::Udp4,
            SCTP_V4_FLOW => FlowType::Sctp4,
            TCP_V6_FLOW => FlowType::Tcp6,
            UDP_V6_FLOW => FlowType::Udp6,
            SCTP_V6_FLOW => FlowType::Sctp6,
            _ => return None,
        })
    }

    pub fn is_v6(self) -> bool {
        matches!(self, FlowType::Tcp6 | FlowType::Udp6 | FlowType::Sctp6)
    }

    pub fn name(self) -> &'static str {
        match self {
            FlowType::Tcp4 => "tcp4",
            FlowType::Udp4 => "udp4",
            FlowType::Sctp4 => "sctp4",
            FlowType::Tcp6 => "tcp6",
            FlowType::Udp6 => "udp6",
            FlowType::Sctp6 => "sctp6",
        }
    }
}

/// Where matching packets go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Queue(u32),
    /// `action -1`: RX_CLS_FLOW_DISC.
    Drop,
}

/// An `-N … flow-type` rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleSpec {
    pub flow: FlowType,
    pub src_ip: Option<IpAddr>,
    pub dst_ip: Option<IpAddr>,
    pub src_port: Option<u16>,
    pub dst_port: Option<u16>,
    pub action: Action,
    pub loc: Option<u32>,
}

/// Byte offsets of the tcp/udp/sctp spec fields inside the flow union.
struct SpecLayout {
    src: usize,
    dst: usize,
    addr_len: usize,
    psrc: usize,
    pdst: usize,
}

fn layout(flow: FlowType) -> SpecLayout {
    if flow.is_v6() {
        SpecLayout {
            src: offset_of!(EthtoolTcpip6Spec, ip6src),
            dst: offset_of!(EthtoolTcpip6Spec, ip6dst),
            addr_len: 16,
            psrc: offset_of!(EthtoolTcpip6Spec, psrc),
            pdst: offset_of!(EthtoolTcpip6Spec, pdst),
        }
    } else {
        SpecLayout {
            src: offset_of!(EthtoolTcpip4Spec, ip4src),
            dst: offset_of!(EthtoolTcpip4Spec, ip4dst),
            addr_len: 4,
            psrc: offset_of!(EthtoolTcpip4Spec, psrc),
            pdst: offset_of!(EthtoolTcpip4Spec, pdst),
        }
    }
}

fn ip_octets(a: &IpAddr) -> Vec<u8> {
    match a {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

/// The kernel-ABI flow spec of `r` at `location`: values in network order
/// in `h_u`, all-ones masks (= compare) in `m_u` for the given fields only.
pub fn build_flow_spec(r: &RuleSpec, location: u32) -> Result<EthtoolRxFlowSpec, String> {
    let mut fs = EthtoolRxFlowSpec::zeroed();
    fs.flow_type = r.flow.uapi();
    let l = layout(r.flow);
    for (addr, off) in [(&r.src_ip, l.src), (&r.dst_ip, l.dst)] {
        if let Some(a) = addr {
            if a.is_ipv6() != r.flow.is_v6() {
                return Err(format!("{a} does not fit flow-type {}", r.flow.name()));
            }
            fs.h_u[off..off + l.addr_len].copy_from_slice(&ip_octets(a));
            fs.m_u[off..off + l.addr_len].fill(0xff);
        }
    }
    for (port, off) in [(r.src_port, l.psrc), (r.dst_port, l.pdst)] {
        if let Some(p) = port {
            fs.h_u[off..off + 2].copy_from_slice(&p.to_be_bytes());
            fs.m_u[off..off + 2].fill(0xff);
        }
    }
    fs.ring_cookie = match r.action {
        Action::Queue(q) => u64::from(q),
        Action::Drop => RX_CLS_FLOW_DISC,
    };
    fs.location = location;
    Ok(fs)
}

/// A flow spec as JSON: the flow type, each compared field's value (and its
/// mask when not all ones), the action, the location.
pub fn flow_spec_json(fs: &EthtoolRxFlowSpec) -> Value {
    let mut m = Map::new();
    m.insert("location".into(), json!(fs.location));
    let base = fs.flow_type & !(FLOW_EXT | FLOW_MAC_EXT | FLOW_RSS);
    match FlowType::from_uapi(base) {
        Some(ft) => {
            m.insert("flow_type".into(), json!(ft.name()));
            let l = layout(ft);
            let addr = |b: &[u8]| -> String {
                if ft.is_v6() {
                    let mut o = [0u8; 16];
                    o.copy_from_slice(b);
                    Ipv6Addr::from(o).to_string()
                } else {
                    let mut o = [0u8; 4];
                    o.copy_from_slice(b);
                    Ipv4Addr::from(o).to_string()
                }
            };
            for (k, off) in [("src_ip", l.src), ("dst_ip", l.dst)] {
                let mask = &fs.m_u[off..off + l.addr_len];
                if mask.iter().any(|&b| b != 0) {
                    let v: Vec<u8> = fs.h_u[off..off + l.addr_len]
                        .iter()
                        .zip(mask)
                        .map(|(v, m)| v & m)
                        .collect();
                    m.insert(k.into(), json!(addr(&v)));
                    if mask.iter().any(|&b| b != 0xff) {
                        m.insert(format!("{k}_mask"), json!(addr(mask)));
                    }
                }
            }
            for (k, off) in [("src_port", l.psrc), ("dst_port", l.pdst)] {
                let mask = u16::from_be_bytes([fs.m_u[off], fs.m_u[off + 1]]);
                if mask != 0 {
                    let v = u16::from_be_bytes([fs.h_u[off], fs.h_u[off + 1]]);
                    m.insert(k.into(), json!(v & mask));
                    if mask != 0xffff {
                        m.insert(format!("{k}_mask"), json!(mask));
                    }
                }
            }
        }
        None => {
            m.insert("flow_type".into(), json!(format!("0x{base:x}")));
        }
    }
    if fs.flow_type & FLOW_RSS != 0 {
        m.insert("rss".into(), json!(true));
    }
    match fs.ring_cookie {
        RX_CLS_FLOW_DISC => {
            m.insert("action".into(), json!("drop"));
        }
        RX_CLS_FLOW_WAKE => {
            m.insert("action".into(), json!("wake"));
        }
        c => {
            m.insert("action".into(), json!(c & ETHTOOL_RX_FLOW_SPEC_RING));
            let vf = (c & ETHTOOL_RX_FLOW_SPEC_RING_VF) >> ETHTOOL_RX_FLOW_SPEC_RING_VF_OFF;
            if vf != 0 {
                m.insert("vf".into(), json!(vf));
            }
        }
    }
    Value::Object(m)
}

/// ETHTOOL_GRXCLSRLCNT: (rule count, `data`: table size | RX_CLS_LOC_SPECIAL).
pub fn rule_count(sock: &EthtoolSock, dev: &str) -> Result<(u32, u64), EtError> {
    let r = sock.rxnfc(dev, EthtoolRxnfc::new(ETHTOOL_GRXCLSRLCNT))?;
    Ok((r.rule_cnt, r.data))
}

pub fn rule_get(sock: &EthtoolSock, dev: &str, loc: u32) -> Result<EthtoolRxFlowSpec, EtError> {
    let mut r = EthtoolRxnfc::new(ETHTOOL_GRXCLSRULE);
    r.fs.location = loc;
    Ok(sock.rxnfc(dev, r)?.fs)
}

/// The highest location below `size` not in `used` (ethtool(8)'s choice).
pub fn pick_free_location(size: u64, used: &[u32]) -> Option<u32> {
    let top = u32::try_from(size.min(u64::from(u32::MAX))).ok()?;
    (0..top).rev().find(|l| !used.contains(l))
}

/// `-n`: the rules (all, or the one at `only`).
pub fn rules_list(sock: &EthtoolSock, dev: &str, only: Option<u32>) -> Result<Value, EtError> {
    let (count, data) = rule_count(sock, dev)?;
    let rings = sock
        .rxnfc(dev, EthtoolRxnfc::new(ETHTOOL_GRXRINGS))
        .ok()
        .map(|r| r.data);
    let locs = match only {
        Some(l) => vec![l],
        None if count == 0 => Vec::new(),
        None => sock.rule_locations(dev, count)?.1,
    };
    let rules = locs
        .iter()
        .map(|&l| rule_get(sock, dev, l).map(|fs| flow_spec_json(&fs)))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(json!({
        "rx_rings": rings,
        "rule_count": count,
        "table_size": data & !RX_CLS_LOC_SPECIAL,
        "special_locations": data & RX_CLS_LOC_SPECIAL != 0,
        "rules": rules,
    }))
}

/// `-N … flow-type`: inserts the rule and reports where it went.
pub fn rule_insert(sock: &EthtoolSock, dev: &str, r: &RuleSpec) -> Result<Value, EtError> {
    let (loc, chosen_by) = match r.loc {
        Some(l) => (l, "user"),
        None => {
            let (count, data) = rule_count(sock, dev)?;
            if data & RX_CLS_LOC_SPECIAL != 0 {
                (RX_CLS_LOC_ANY, "driver")
            } else {
                let used = if count == 0 {
                    Vec::new()
                } else {
                    sock.rule_locations(dev, count)?.1
                };
                let l = pick_free_location(data, &used).ok_or_else(|| EtError {
                    error: format!("no free rule location (table size {data}, {count} in use)"),
                    ..EtError::os("ETHTOOL_GRXCLSRLALL", libc::ENOSPC)
                })?;
                (l, "tool")
            }
        }
    };
    let mut n = EthtoolRxnfc::new(ETHTOOL_SRXCLSRLINS);
    n.fs = build_flow_spec(r, loc).map_err(EtError::msg)?;
    let done = sock.rxnfc(dev, n)?;
    Ok(json!({
        "location": done.fs.location,
        "location_chosen_by": chosen_by,
        "rule": flow_spec_json(&done.fs),
    }))
}

pub fn rule_delete(sock: &EthtoolSock, dev: &str, loc: u32) -> Result<(), EtError> {
    let mut n = EthtoolRxnfc::new(ETHTOOL_SRXCLSRLDEL);
    n.fs.location = loc;
    sock.rxnfc(dev, n).map(|_| ())
}

// ---------------------------------------------------------------- CLI

pub const USAGE: &str = "usage: ethtool [--netns NAME] \
-i|-S|-g|-k|-l DEV | -G DEV [rx N] [tx N] [tcp-data-split on|off|auto] | \
-K DEV FEATURE on|off... | -L DEV [rx N] [tx N] [other N] [combined N] | \
-X DEV equal N | -n DEV [rule LOC] | -N DEV flow-type tcp4|udp4|sctp4|tcp6|udp6|sctp6 [src-ip A] [dst-ip A] \
[src-port P] [dst-port P] action Q|-1 [loc L] | -N DEV delete LOC";

/// What to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    DriverInfo,
    Stats,
    ShowRings,
    SetRings(RingsSet),
    ShowFeatures,
    SetFeatures(Vec<(String, bool)>),
    ShowChannels,
    SetChannels(ChannelsSet),
    ShowRules(Option<u32>),
    InsertRule(RuleSpec),
    DeleteRule(u32),
    /// `-X DEV equal N`: spread the RSS indirection table over queues 0..N.
    SetRssEqual(u32),
}

/// A parsed command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invocation {
    pub netns: Option<String>,
    pub dev: String,
    pub op: Op,
}

fn parse_num<T: TryFrom<u64>>(what: &str, v: &str) -> Result<T, String> {
    let n = match v.strip_prefix("0x").or_else(|| v.strip_prefix("0X")) {
        Some(h) => u64::from_str_radix(h, 16),
        None => v.parse::<u64>(),
    }
    .map_err(|e| format!("{what} {v:?}: {e}"))?;
    T::try_from(n).map_err(|_| format!("{what} {v:?}: out of range"))
}

fn parse_on_off(what: &str, v: &str) -> Result<bool, String> {
    match v {
        "on" => Ok(true),
        "off" => Ok(false),
        _ => Err(format!("{what} {v:?}: want on or off")),
    }
}

/// `KEY VALUE` pairs, each key at most once.
fn pairs<'a>(rest: &'a [String], what: &str) -> Result<Vec<(&'a str, &'a str)>, String> {
    if !rest.len().is_multiple_of(2) {
        return Err(format!("{what}: {:?} needs a value", rest[rest.len() - 1]));
    }
    let mut out: Vec<(&str, &str)> = Vec::new();
    for p in rest.chunks_exact(2) {
        if out.iter().any(|(k, _)| *k == p[0]) {
            return Err(format!("{what}: {:?} given twice", p[0]));
        }
        out.push((p[0].as_str(), p[1].as_str()));
    }
    Ok(out)
}

fn parse_rule(rest: &[String]) -> Result<Op, String> {
    match rest {
        [d, loc] if d == "delete" => return Ok(Op::DeleteRule(parse_num("delete", loc)?)),
        [d, ..] if d == "delete" => return Err("-N DEV delete LOC".into()),
        _ => {}
    }
    let kv = pairs(rest, "-N")?;
    let Some((&("flow-type", ft), kv)) = kv.split_first() else {
        return Err("-N DEV flow-type TYPE ... or -N DEV delete LOC".into());
    };
    let flow = FlowType::parse(ft)?;
    let mut r = RuleSpec {
        flow,
        src_ip: None,
        dst_ip: None,
        src_port: None,
        dst_port: None,
        action: Action::Drop,
        loc: None,
    };
    let mut action = None;
    let ip = |k: &str, v: &str| -> Result<IpAddr, String> {
        let a: IpAddr = v.parse().map_err(|e| format!("{k} {v:?}: {e}"))?;
        if a.is_ipv6() != flow.is_v6() {
            return Err(format!("{k} {v}: not an address of flow-type {ft}"));
        }
        Ok(a)
    };
    for &(k, v) in kv {
        match k {
            "src-ip" => r.src_ip = Some(ip(k, v)?),
            "dst-ip" => r.dst_ip = Some(ip(k, v)?),
            "src-port" => r.src_port = Some(parse_num(k, v)?),
            "dst-port" => r.dst_port = Some(parse_num(k, v)?),
            "action" => {
                action = Some(if v == "-1" {
                    Action::Drop
                } else {
                    Action::Queue(parse_num(k, v)?)
                })
            }
            "loc" => r.loc = Some(parse_num(k, v)?),
            "flow-type" => return Err("flow-type given twice".into()),
            _ => return Err(format!("-N: unknown field {k:?}")),
        }
    }
    r.action = action.ok_or("-N: action Q (or -1 to drop) is required")?;
    Ok(Op::InsertRule(r))
}

/// Parses `[--netns NAME] OP DEV [ARGS…]`.
pub fn parse_args(args: &[String]) -> Result<Invocation, String> {
    let mut netns = None;
    let mut i = 0;
    while args.get(i).map(String::as_str) == Some("--netns") {
        let v = args.get(i + 1).ok_or("--netns needs a value")?;
        netns = Some(v.clone());
        i += 2;
    }
    let op = args.get(i).ok_or("no operation")?.as_str();
    let dev = args.get(i + 1).ok_or_else(|| format!("{op}: no device"))?;
    if dev.is_empty() || dev.len() >= IFNAMSIZ || dev.starts_with('-') || dev.contains(['/', '\0'])
    {
        return Err(format!("bad device name {dev:?}"));
    }
    let rest = &args[i + 2..];
    let no_args = |op: Op| -> Result<Op, String> {
        match rest {
            [] => Ok(op),
            [x, ..] => Err(format!("unexpected argument {x:?}")),
        }
    };
    let op = match op {
        "-i" | "--driver" => no_args(Op::DriverInfo)?,
        "-S" | "--statistics" => no_args(Op::Stats)?,
        "-g" | "--show-ring" => no_args(Op::ShowRings)?,
        "-k" | "--show-features" | "--show-offload" => no_args(Op::ShowFeatures)?,
        "-l" | "--show-channels" => no_args(Op::ShowChannels)?,
        "-G" | "--set-ring" => {
            let mut s = RingsSet::default();
            for (k, v) in pairs(rest, op)? {
                match k {
                    "rx" => s.rx = Some(parse_num(k, v)?),
                    "tx" => s.tx = Some(parse_num(k, v)?),
                    "tcp-data-split" => s.tcp_data_split = Some(TcpDataSplit::parse(v)?),
                    _ => return Err(format!("{op}: unknown ring parameter {k:?}")),
                }
            }
            if s == RingsSet::default() {
                return Err(format!("{op}: nothing to set"));
            }
            Op::SetRings(s)
        }
        "-K" | "--features" | "--offload" => {
            let kv = pairs(rest, op)?;
            if kv.is_empty() {
                return Err(format!("{op}: nothing to set"));
            }
            Op::SetFeatures(
                kv.into_iter()
                    .map(|(k, v)| Ok((k.to_string(), parse_on_off(k, v)?)))
                    .collect::<Result<_, String>>()?,
            )
        }
        "-L" | "--set-channels" => {
            let mut s = ChannelsSet::default();
            for (k, v) in pairs(rest, op)? {
                let n = Some(parse_num(k, v)?);
                match k {
                    "rx" => s.rx = n,
                    "tx" => s.tx = n,
                    "other" => s.other = n,
                    "combined" => s.combined = n,
                    _ => return Err(format!("{op}: unknown channel type {k:?}")),
                }
            }
            if s == ChannelsSet::default() {
                return Err(format!("{op}: nothing to set"));
            }
            Op::SetChannels(s)
        }
        "-n" | "-u" | "--show-nfc" | "--show-ntuple" => match rest {
            [] => Op::ShowRules(None),
            [r, l] if r == "rule" => Op::ShowRules(Some(parse_num("rule", l)?)),
            _ => return Err(format!("{op} DEV [rule LOC]")),
        },
        "-N" | "-U" | "--config-nfc" | "--config-ntuple" => parse_rule(rest)?,
        "-X" | "--set-rxfh-indir" | "--rxfh" => match rest {
            [e, n] if e == "equal" => match parse_num("equal", n)? {
                0 => return Err(format!("{op}: equal 0")),
                n => Op::SetRssEqual(n),
            },
            _ => return Err(format!("{op} DEV equal N")),
        },
        _ => return Err(format!("unknown operation {op:?}")),
    };
    Ok(Invocation {
        netns,
        dev: dev.clone(),
        op,
    })
}

fn ok_line(dev: &str, mut m: Map<String, Value>) -> String {
    m.insert("ok".into(), json!(true));
    m.insert("dev".into(), json!(dev));
    Value::Object(m).to_string()
}

fn obj(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        other => {
            let mut m = Map::new();
            m.insert("value".into(), other);
            m
        }
    }
}

/// Runs `inv` in the calling thread's netns (the caller has entered
/// `--netns`); the JSON line on success.
pub fn run(inv: &Invocation) -> Result<String, EtError> {
    let dev = inv.dev.as_str();
    check_dev(dev)?;
    let sock = EthtoolSock::open;
    match &inv.op {
        Op::ShowRings => Ok(ok_line(dev, rings_get(dev)?.to_json())),
        Op::SetRings(s) => {
            let mut m = rings_set(dev, s)?.to_json();
            m.insert("requested".into(), rings_set_json(s));
            Ok(ok_line(dev, m))
        }
        Op::DriverInfo => Ok(ok_line(dev, drvinfo_json(&sock()?.drvinfo(dev)?))),
        Op::Stats => {
            let st = stats(&sock()?, dev)?;
            serde_json::to_string(&StatsOut {
                ok: true,
                dev,
                stats: OrderedStats(&st),
            })
            .map_err(|e| EtError::msg(e.to_string()))
        }
        Op::ShowFeatures => {
            let (_, feats) = features_get(&sock()?, dev)?;
            let m: Map<String, Value> = feats.iter().map(|f| (f.name.clone(), f.json())).collect();
            Ok(ok_line(dev, obj(json!({ "features": m }))))
        }
        Op::SetFeatures(req) => Ok(ok_line(dev, obj(features_set(&sock()?, dev, req)?))),
        Op::ShowChannels => Ok(ok_line(dev, channels_json(&channels_get(&sock()?, dev)?))),
        Op::SetChannels(s) => {
            let mut m = channels_json(&channels_set(&sock()?, dev, s)?);
            m.insert("requested".into(), channels_set_json(s));
            Ok(ok_line(dev, m))
        }
        Op::ShowRules(only) => Ok(ok_line(dev, obj(rules_list(&sock()?, dev, *only)?))),
        Op::InsertRule(r) => Ok(ok_line(dev, obj(rule_insert(&sock()?, dev, r)?))),
        Op::DeleteRule(l) => {
            rule_delete(&sock()?, dev, *l)?;
            Ok(ok_line(dev, obj(json!({ "deleted": l }))))
        }
        Op::SetRssEqual(n) => {
            let table = rss_set_equal(&sock()?, dev, *n)?;
            Ok(ok_line(dev, obj(json!({ "equal": n, "indir": table }))))
        }
    }
}

/// Entry point of `netmem-lab ethtool ARGS…`; returns the exit code.
pub fn main(args: &[String]) -> i32 {
    let inv = match parse_args(args) {
        Ok(i) => i,
        Err(e) => {
            eprintln!("netmem-lab ethtool: {e}\n{USAGE}");
            println!("{}", json!({"ok": false, "error": e, "usage": USAGE}));
            return 2;
        }
    };
    if let Some(ns) = &inv.netns
        && let Err(e) = crate::guest_tools::enter_netns(ns)
    {
        println!("{}", json!({"ok": false, "dev": inv.dev, "error": e}));
        return 1;
    }
    match run(&inv) {
        Ok(line) => {
            println!("{line}");
            0
        }
        Err(e) => {
            println!("{}", e.to_json(&inv.dev));
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::{Path, PathBuf};

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    fn parse(s: &str) -> Result<Invocation, String> {
        parse_args(&args(s))
    }

    #[test]
    fn constants_agree_with_libc() {
        assert_eq!(SIOCETHTOOL, libc::SIOCETHTOOL);
        assert_eq!(nl::NETLINK_EXT_ACK, libc::NETLINK_EXT_ACK);
        assert_eq!(nl::NETLINK_CAP_ACK, libc::NETLINK_CAP_ACK);
        assert_eq!(nl::NETLINK_GENERIC, libc::NETLINK_GENERIC);
        assert_eq!(i32::from(nl::GENL_ID_CTRL), libc::GENL_ID_CTRL);
        assert_eq!(i32::from(nl::CTRL_CMD_GETFAMILY), libc::CTRL_CMD_GETFAMILY);
        assert_eq!(
            i32::from(nl::CTRL_ATTR_FAMILY_ID),
            libc::CTRL_ATTR_FAMILY_ID
        );
        assert_eq!(
            i32::from(nl::CTRL_ATTR_FAMILY_NAME),
            libc::CTRL_ATTR_FAMILY_NAME
        );
        assert_eq!(i32::from(nl::NLA_F_NESTED), libc::NLA_F_NESTED);
        assert_eq!(i32::from(nl::NLM_F_REQUEST), libc::NLM_F_REQUEST);
        assert_eq!(i32::from(nl::NLM_F_ACK), libc::NLM_F_ACK);
        assert_eq!(i32::from(nl::NLM_F_CAPPED), libc::NLM_F_CAPPED);
        assert_eq!(i32::from(nl::NLM_F_ACK_TLVS), libc::NLM_F_ACK_TLVS);
        assert_eq!(i32::from(nl::NLMSG_ERROR), libc::NLMSG_ERROR);
        assert_eq!(i32::from(nl::NLMSG_DONE), libc::NLMSG_DONE);
        assert_eq!(IFNAMSIZ, libc::IFNAMSIZ);
    }

    /// The exact RINGS_SET request for `-G eth0 rx 1024 tcp-data-split on`
    /// (family id 0x1a, seq 7), on a little-endian machine.
    #[test]
    #[cfg(target_endian = "little")]
    fn rings_set_request_exact_bytes() {
        let s = RingsSet {
            rx: Some(1024),
            tx: None,
            tcp_data_split: Some(TcpDataSplit::On),
        };
        let got = rings_set_request(0x1a, 7, "eth0", &s);
        #[rustfmt::skip]
        let want: Vec<u8> = vec![
            52, 0, 0, 0,        // nlmsg_len
            0x1a, 0,            // nlmsg_type: the ethtool family
            0x05, 0,            // NLM_F_REQUEST | NLM_F_ACK
            7, 0, 0, 0,         // seq
            0, 0, 0, 0,         // pid
            16, 1, 0, 0,        // genlmsghdr: ETHTOOL_MSG_RINGS_SET, version 1
            16, 0, 0x01, 0x80,  // ETHTOOL_A_RINGS_HEADER | NLA_F_NESTED, len 16
            9, 0, 2, 0,         //   ETHTOOL_A_HEADER_DEV_NAME, len 9
            b'e', b't', b'h', b'0', 0, 0, 0, 0,
            8, 0, 6, 0,         // ETHTOOL_A_RINGS_RX
            0, 4, 0, 0,         //   1024
            5, 0, 11, 0,        // ETHTOOL_A_RINGS_TCP_DATA_SPLIT
            2, 0, 0, 0,         //   ETHTOOL_TCP_DATA_SPLIT_ENABLED + padding
        ];
        assert_eq!(got, want);

        // tx and "off"/"auto" land in their own attributes and values.
        let s = RingsSet {
            rx: None,
            tx: Some(256),
            tcp_data_split: Some(TcpDataSplit::Auto),
        };
        let got = rings_set_request(0x1a, 8, "eth0", &s);
        assert_eq!(got.len(), 52);
        assert_eq!(&got[36..44], &[8, 0, 9, 0, 0, 1, 0, 0]);
        assert_eq!(&got[44..48], &[5, 0, 11, 0]);
        assert_eq!(got[48], ETHTOOL_TCP_DATA_SPLIT_UNKNOWN);
        let off = RingsSet {
            tcp_data_split: Some(TcpDataSplit::Off),
            ..Default::default()
        };
        let got = rings_set_request(0x1a, 9, "eth0", &off);
        assert_eq!(got.len(), 44);
        assert_eq!(got[40], ETHTOOL_TCP_DATA_SPLIT_DISABLED);
    }

    #[test]
    #[cfg(target_endian = "little")]
    fn get_and_getfamily_request_bytes() {
        let g = rings_get_request(0x1a, 3, "lo");
        assert_eq!(g.len(), 16 + 4 + 4 + 8);
        assert_eq!(&g[0..8], &[32, 0, 0, 0, 0x1a, 0, 5, 0]);
        assert_eq!(&g[16..20], &[ETHTOOL_MSG_RINGS_GET, 1, 0, 0]);
        assert_eq!(&g[20..32], &[12, 0, 1, 0x80, 7, 0, 2, 0, b'l', b'o', 0, 0]);

        let f = nl::getfamily_request(5, "ethtool");
        #[rustfmt::skip]
        let want: Vec<u8> = vec![
            32, 0, 0, 0, 0x10, 0, 5, 0, 5, 0, 0, 0, 0, 0, 0, 0,
            3, 2, 0, 0,                  // CTRL_CMD_GETFAMILY
            12, 0, 2, 0,                 // CTRL_ATTR_FAMILY_NAME
            b'e', b't', b'h', b't', b'o', b'o', b'l', 0,
        ];
        assert_eq!(f, want);
    }

    /// A RINGS_GET_REPLY payload like gve's, plus attributes this tool does
    /// not know (a newer kernel).
    fn sample_reply() -> Vec<u8> {
        let mut a = nl::Attrs::new();
        a.nest_start(ETHTOOL_A_RINGS_HEADER)
            .put_u32(ETHTOOL_A_HEADER_DEV_INDEX, 2)
            .put_strz(ETHTOOL_A_HEADER_DEV_NAME, "eth0")
            .put_u32(77, 1) // unknown header attribute: ignored
            .nest_end()
            .put_u32(ETHTOOL_A_RINGS_RX_MAX, 4096)
            .put_u32(ETHTOOL_A_RINGS_RX, 1024)
            .put_u32(ETHTOOL_A_RINGS_TX_MAX, 4096)
            .put_u32(ETHTOOL_A_RINGS_TX, 512)
            .put_u32(ETHTOOL_A_RINGS_RX_BUF_LEN, 4096)
            .put_u8(
                ETHTOOL_A_RINGS_TCP_DATA_SPLIT,
                ETHTOOL_TCP_DATA_SPLIT_ENABLED,
            )
            .put_u8(ETHTOOL_A_RINGS_TX_PUSH, 0)
            .put_u8(ETHTOOL_A_RINGS_RX_PUSH, 1)
            .put_u32(99, 0xdead_beef)
            .nest_start(200)
            .put_u8(1, 1)
            .nest_end()
            .put_u32(ETHTOOL_A_RINGS_HDS_THRESH, 0)
            .put_u32(ETHTOOL_A_RINGS_HDS_THRESH_MAX, 1024);
        let attrs = a.finish();
        let mut p = vec![ETHTOOL_MSG_RINGS_GET_REPLY, ETHTOOL_GENL_VERSION, 0, 0];
        p.extend_from_slice(&attrs);
        p
    }

    /// The attribute boundaries of a payload: offsets where a truncated reply
    /// is still a well-formed, shorter attribute list (after an attribute's
    /// padding, or after its data with only the padding missing, which the
    /// kernel's own nla_ok() accepts too).
    fn boundaries(p: &[u8]) -> Vec<usize> {
        let mut v = vec![nl::GENL_HDRLEN];
        let mut off = nl::GENL_HDRLEN;
        while off + 4 <= p.len() {
            let len = u16::from_ne_bytes([p[off], p[off + 1]]) as usize;
            v.extend(off + len..=off + nl::align4(len));
            off += nl::align4(len);
        }
        v
    }

    #[test]
    fn rings_reply_parsing() {
        let p = sample_reply();
        let r = parse_rings_reply(&p).unwrap();
        assert_eq!(r.dev_index, Some(2));
        assert_eq!(r.dev_name.as_deref(), Some("eth0"));
        assert_eq!(
            (r.rx, r.rx_max, r.tx, r.tx_max),
            (Some(1024), Some(4096), Some(512), Some(4096))
        );
        assert_eq!(r.rx_buf_len, Some(4096));
        assert_eq!(r.tcp_data_split, Some(ETHTOOL_TCP_DATA_SPLIT_ENABLED));
        assert_eq!((r.tx_push, r.rx_push), (Some(0), Some(1)));
        assert_eq!((r.hds_thresh, r.hds_thresh_max), (Some(0), Some(1024)));
        assert_eq!(r.rx_mini, None);
        assert_eq!(r.unknown, vec![99, 200]);
        let j = Value::Object(r.to_json());
        assert_eq!(j["tcp_data_split"], "on");
        assert_eq!(j["rx"], 1024);
        assert_eq!(j["rx_buf_len"], 4096);
        assert_eq!(j["rx_push"], true);
        assert_eq!(j["unknown_attrs"], json!([99, 200]));
        assert!(j.get("cqe_size").is_none());

        // No tcp-data-split attribute (the kernel omits UNKNOWN) reads as unknown.
        let mut a = nl::Attrs::new();
        a.put_u32(ETHTOOL_A_RINGS_RX, 1);
        let mut p2 = vec![ETHTOOL_MSG_RINGS_GET_REPLY, 1, 0, 0];
        p2.extend_from_slice(&a.finish());
        let r2 = parse_rings_reply(&p2).unwrap();
        assert_eq!(Value::Object(r2.to_json())["tcp_data_split"], "unknown");
        assert_eq!(Value::Object(r2.to_json())["tx"], Value::Null);

        // Wrong command, wrong attribute sizes.
        let mut bad = p.clone();
        bad[0] = ETHTOOL_MSG_RINGS_GET_REPLY + 1;
        assert!(
            parse_rings_reply(&bad)
                .unwrap_err()
                .contains("reply command")
        );
        let mut a = nl::Attrs::new();
        a.put(ETHTOOL_A_RINGS_RX, &[1, 2, 3]);
        let mut p3 = vec![ETHTOOL_MSG_RINGS_GET_REPLY, 1, 0, 0];
        p3.extend_from_slice(&a.finish());
        assert!(parse_rings_reply(&p3).unwrap_err().contains("want 4"));
        let mut a = nl::Attrs::new();
        a.put_u32(ETHTOOL_A_RINGS_TCP_DATA_SPLIT, 2);
        let mut p4 = vec![ETHTOOL_MSG_RINGS_GET_REPLY, 1, 0, 0];
        p4.extend_from_slice(&a.finish());
        assert!(parse_rings_reply(&p4).unwrap_err().contains("want 1"));
        assert!(parse_rings_reply(&[]).is_err());
        assert!(parse_rings_reply(&[ETHTOOL_MSG_RINGS_GET_REPLY, 1]).is_err());
    }

    #[test]
    fn truncated_rings_reply_is_an_error_never_a_panic() {
        let p = sample_reply();
        let cuts = boundaries(&p);
        assert!(cuts.len() > 10);
        for n in 0..p.len() {
            let r = parse_rings_reply(&p[..n]);
            if cuts.contains(&n) {
                assert!(r.is_ok(), "cut at attribute boundary {n}: {r:?}");
            } else {
                assert!(r.is_err(), "cut at {n} parsed: {r:?}");
            }
        }
        // A length field pointing past the end.
        let mut long = p.clone();
        long[4] = 0xff;
        assert!(parse_rings_reply(&long).is_err());
        // A length below the header size.
        let mut short = p.clone();
        short[4] = 2;
        short[5] = 0;
        assert!(parse_rings_reply(&short).is_err());
    }

    /// A whole datagram: the reply message then the ACK, as the kernel sends them.
    #[test]
    fn datagram_with_reply_and_ack() {
        let payload = sample_reply();
        let mut d = Vec::new();
        let len = (nl::NLMSG_HDRLEN + payload.len()) as u32;
        d.extend_from_slice(&len.to_ne_bytes());
        d.extend_from_slice(&0x1au16.to_ne_bytes());
        d.extend_from_slice(&0u16.to_ne_bytes());
        d.extend_from_slice(&9u32.to_ne_bytes());
        d.extend_from_slice(&1234u32.to_ne_bytes());
        d.extend_from_slice(&payload);
        // ACK: nlmsgerr { error 0, capped echo of the request header }.
        d.extend_from_slice(&36u32.to_ne_bytes());
        d.extend_from_slice(&nl::NLMSG_ERROR.to_ne_bytes());
        d.extend_from_slice(&nl::NLM_F_CAPPED.to_ne_bytes());
        d.extend_from_slice(&9u32.to_ne_bytes());
        d.extend_from_slice(&1234u32.to_ne_bytes());
        d.extend_from_slice(&[0u8; 20]);
        let msgs = nl::parse_msgs(&d).unwrap();
        assert_eq!(msgs.len(), 2);
        assert_eq!((msgs[0].ty, msgs[0].seq, msgs[0].pid), (0x1a, 9, 1234));
        assert_eq!(parse_rings_reply(msgs[0].payload).unwrap().rx, Some(1024));
        assert_eq!(msgs[1].ty, nl::NLMSG_ERROR);
        assert_eq!(
            nl::parse_nlmsgerr(msgs[1].flags, msgs[1].payload).unwrap(),
            (0, None)
        );
        for n in 1..nl::NLMSG_HDRLEN {
            assert!(nl::parse_msgs(&d[..n]).is_err());
        }
        assert!(nl::parse_msgs(&d[..d.len() - 1]).is_err());
    }

    fn nlmsgerr(code: i32, flags: u16, echo_payload: &[u8], tlvs: &[u8]) -> Vec<u8> {
        let mut p = code.to_ne_bytes().to_vec();
        let orig_len = (nl::NLMSG_HDRLEN + echo_payload.len()) as u32;
        p.extend_from_slice(&orig_len.to_ne_bytes());
        p.extend_from_slice(&[0u8; 12]);
        if flags & nl::NLM_F_CAPPED == 0 {
            p.extend_from_slice(echo_payload);
            p.resize(nl::align4(p.len()), 0);
        }
        p.extend_from_slice(tlvs);
        p
    }

    #[test]
    fn extack_parsing_capped_and_uncapped() {
        let tlvs = nl::Attrs::new()
            .put_strz(
                nl::NLMSGERR_ATTR_MSG,
                "setting TCP data split is not supported",
            )
            .put_u32(2, 40) // NLMSGERR_ATTR_OFFS: ignored
            .finish();
        let both = nl::NLM_F_CAPPED | nl::NLM_F_ACK_TLVS;
        let p = nlmsgerr(-95, both, &[], &tlvs);
        let (code, ext) = nl::parse_nlmsgerr(both, &p).unwrap();
        assert_eq!(code, -95);
        assert_eq!(
            ext.as_deref(),
            Some("setting TCP data split is not supported")
        );
        // Not capped: the whole request (here 22 bytes, padded) is echoed first.
        let echo = [0xabu8; 22];
        let p = nlmsgerr(-22, nl::NLM_F_ACK_TLVS, &echo, &tlvs);
        let (code, ext) = nl::parse_nlmsgerr(nl::NLM_F_ACK_TLVS, &p).unwrap();
        assert_eq!(code, -22);
        assert_eq!(
            ext.as_deref(),
            Some("setting TCP data split is not supported")
        );
        // Without ACK_TLVS there is no extack even if bytes follow.
        assert_eq!(
            nl::parse_nlmsgerr(nl::NLM_F_CAPPED, &nlmsgerr(-1, both, &[], &tlvs))
                .unwrap()
                .1,
            None
        );
        // Truncated: no room for the echoed header or the echoed request.
        assert!(nl::parse_nlmsgerr(both, &p[..3]).is_err());
        assert!(nl::parse_nlmsgerr(both, &p[..19]).is_err());
        assert!(nl::parse_nlmsgerr(nl::NLM_F_ACK_TLVS, &p[..30]).is_err());
        // Malformed TLVs only lose the message.
        let mut broken = nlmsgerr(-95, both, &[], &tlvs);
        broken.truncate(24);
        assert_eq!(nl::parse_nlmsgerr(both, &broken).unwrap(), (-95, None));
    }

    #[test]
    fn family_id_parsing() {
        let mut p = vec![1u8, 2, 0, 0];
        p.extend_from_slice(
            &nl::Attrs::new()
                .put_strz(nl::CTRL_ATTR_FAMILY_NAME, "ethtool")
                .put_u16(nl::CTRL_ATTR_FAMILY_ID, 0x1c)
                .finish(),
        );
        assert_eq!(nl::parse_family_id(&p).unwrap(), 0x1c);
        assert!(nl::parse_family_id(&p[..4]).is_err());
        // Missing trailing padding is tolerated (as the kernel's nla_ok does);
        // missing data is not.
        assert_eq!(nl::parse_family_id(&p[..p.len() - 2]).unwrap(), 0x1c);
        assert!(nl::parse_family_id(&p[..p.len() - 3]).is_err());
        assert!(nl::parse_family_id(&[1, 2]).is_err());
    }

    #[test]
    fn proptest_parsers_never_panic() {
        use proptest::prelude::*;
        proptest!(|(bytes in proptest::collection::vec(any::<u8>(), 0..600), flags: u16)| {
            if let Ok(msgs) = nl::parse_msgs(&bytes) {
                for m in msgs {
                    prop_assert!(m.payload.len() <= bytes.len());
                    let _ = parse_rings_reply(m.payload);
                    let _ = nl::parse_nlmsgerr(m.flags, m.payload);
                }
            }
            let _ = nl::parse_attrs(&bytes);
            let _ = nl::parse_family_id(&bytes);
            let _ = nl::parse_nlmsgerr(flags, &bytes);
            // With a valid command byte, the random rest reaches the attribute parser.
            let mut p = vec![ETHTOOL_MSG_RINGS_GET_REPLY, 1, 0, 0];
            p.extend_from_slice(&bytes);
            let _ = parse_rings_reply(&p);
        });
    }

    #[test]
    fn proptest_rings_reply_roundtrip_and_mutation() {
        use proptest::prelude::*;
        proptest!(|(rx: Option<u32>, tx: Option<u32>, tds in proptest::option::of(0u8..3),
                    cut in 0usize..200, flip in 0usize..200, x: u8)| {
            let mut a = nl::Attrs::new();
            if let Some(v) = rx { a.put_u32(ETHTOOL_A_RINGS_RX, v); }
            if let Some(v) = tx { a.put_u32(ETHTOOL_A_RINGS_TX, v); }
            if let Some(v) = tds { a.put_u8(ETHTOOL_A_RINGS_TCP_DATA_SPLIT, v); }
            let mut p = vec![ETHTOOL_MSG_RINGS_GET_REPLY, 1, 0, 0];
            p.extend_from_slice(&a.finish());
            let r = parse_rings_reply(&p).unwrap();
            prop_assert_eq!((r.rx, r.tx, r.tcp_data_split), (rx, tx, tds));
            let n = cut.min(p.len());
            let _ = parse_rings_reply(&p[..n]);
            let mut m = p.clone();
            if !m.is_empty() {
                let i = flip % m.len();
                m[i] ^= x;
            }
            let _ = parse_rings_reply(&m);
        });
    }

    #[test]
    fn argument_parsing() {
        let i = parse("-i eth0").unwrap();
        assert_eq!(
            (i.netns, i.dev.as_str(), i.op),
            (None, "eth0", Op::DriverInfo)
        );
        let i = parse("--netns remote -S eth0").unwrap();
        assert_eq!(i.netns.as_deref(), Some("remote"));
        assert_eq!(i.op, Op::Stats);
        assert_eq!(parse("--show-ring eth0").unwrap().op, Op::ShowRings);
        assert_eq!(parse("-X eth0 equal 3").unwrap().op, Op::SetRssEqual(3));
        for bad in [
            "-X eth0",
            "-X eth0 equal",
            "-X eth0 equal 0",
            "-X eth0 even 2",
            "-X eth0 equal 2 x",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
        assert_eq!(
            parse("-G eth0 rx 1024 tx 0x200 tcp-data-split on")
                .unwrap()
                .op,
            Op::SetRings(RingsSet {
                rx: Some(1024),
                tx: Some(512),
                tcp_data_split: Some(TcpDataSplit::On)
            })
        );
        assert_eq!(
            parse("-G eth0 tcp-data-split auto").unwrap().op,
            Op::SetRings(RingsSet {
                tcp_data_split: Some(TcpDataSplit::Auto),
                ..Default::default()
            })
        );
        assert_eq!(
            parse("-K eth0 ntuple on rx-gro off").unwrap().op,
            Op::SetFeatures(vec![("ntuple".into(), true), ("rx-gro".into(), false)])
        );
        assert_eq!(parse("-k eth0").unwrap().op, Op::ShowFeatures);
        assert_eq!(parse("-l eth0").unwrap().op, Op::ShowChannels);
        assert_eq!(
            parse("-L eth0 rx 2 tx 3 combined 0").unwrap().op,
            Op::SetChannels(ChannelsSet {
                rx: Some(2),
                tx: Some(3),
                other: None,
                combined: Some(0)
            })
        );
        assert_eq!(parse("-n eth0").unwrap().op, Op::ShowRules(None));
        assert_eq!(parse("-u eth0 rule 7").unwrap().op, Op::ShowRules(Some(7)));
        assert_eq!(parse("-N eth0 delete 3").unwrap().op, Op::DeleteRule(3));
        assert_eq!(
            parse("-N eth0 flow-type tcp4 dst-port 5201 action 1")
                .unwrap()
                .op,
            Op::InsertRule(RuleSpec {
                flow: FlowType::Tcp4,
                src_ip: None,
                dst_ip: None,
                src_port: None,
                dst_port: Some(5201),
                action: Action::Queue(1),
                loc: None
            })
        );
        assert_eq!(
            parse("-U eth0 flow-type tcp6 src-ip fd00::1 dst-ip fd00::2 src-port 1 dst-port 2 action -1 loc 9")
                .unwrap()
                .op,
            Op::InsertRule(RuleSpec {
                flow: FlowType::Tcp6,
                src_ip: Some("fd00::1".parse().unwrap()),
                dst_ip: Some("fd00::2".parse().unwrap()),
                src_port: Some(1),
                dst_port: Some(2),
                action: Action::Drop,
                loc: Some(9)
            })
        );

        for bad in [
            "",
            "-i",
            "--netns",
            "--netns x",
            "-x eth0",
            "-i eth0 extra",
            "-i averyveryverylongname",
            "-i -S",
            "-G eth0",
            "-G eth0 rx",
            "-G eth0 rx abc",
            "-G eth0 rx 1 rx 2",
            "-G eth0 rx 0x1ffffffff",
            "-G eth0 tcp-data-split maybe",
            "-G eth0 hds 4",
            "-K eth0",
            "-K eth0 gro",
            "-K eth0 gro yes",
            "-L eth0",
            "-L eth0 queues 4",
            "-n eth0 rule",
            "-N eth0",
            "-N eth0 delete",
            "-N eth0 delete x",
            "-N eth0 flow-type tcp4 dst-port 5201",
            "-N eth0 flow-type tcp4 dst-port 70000 action 1",
            "-N eth0 flow-type tcp4 src-ip fd00::1 action 1",
            "-N eth0 flow-type tcp6 dst-ip 10.0.0.1 action 1",
            "-N eth0 flow-type icmp4 action 1",
            "-N eth0 flow-type tcp4 vlan 5 action 1",
            "-N eth0 dst-port 5201 flow-type tcp4 action 1",
            "-N eth0 flow-type tcp4 action 1 action 2",
        ] {
            assert!(parse(bad).is_err(), "{bad:?} parsed");
        }
        // Usage errors exit 2.
        assert_eq!(main(&args("-i")), 2);
        assert_eq!(main(&args("-G eth0 rx")), 2);
        assert_eq!(main(&[]), 2);
    }

    #[test]
    fn flow_spec_tcp4_dst_port_action() {
        let r = match parse("-N eth0 flow-type tcp4 dst-port 5201 action 1")
            .unwrap()
            .op
        {
            Op::InsertRule(r) => r,
            op => panic!("{op:?}"),
        };
        let fs = build_flow_spec(&r, 3).unwrap();
        assert_eq!(fs.flow_type, TCP_V4_FLOW);
        let mut h = [0u8; FLOW_UNION_LEN];
        let mut m = [0u8; FLOW_UNION_LEN];
        h[10..12].copy_from_slice(&[0x14, 0x51]); // 5201, network order, at pdst
        m[10..12].copy_from_slice(&[0xff, 0xff]); // compare all of pdst, nothing else
        assert_eq!(fs.h_u, h);
        assert_eq!(fs.m_u, m);
        assert_eq!(fs.h_ext, EthtoolFlowExt::default());
        assert_eq!(fs.m_ext, EthtoolFlowExt::default());
        assert_eq!(fs.ring_cookie, 1);
        assert_eq!(fs.location, 3);
        // The same bytes through the UAPI struct, as the kernel sees them.
        let mut n = EthtoolRxnfc::new(ETHTOOL_SRXCLSRLINS);
        n.fs = fs;
        assert_eq!(n.fs.h_u[offset_of!(EthtoolTcpip4Spec, pdst)], 0x14);
        let j = flow_spec_json(&fs);
        assert_eq!(
            j,
            json!({"location": 3, "flow_type": "tcp4", "dst_port": 5201, "action": 1})
        );

        let r = RuleSpec {
            flow: FlowType::Tcp6,
            src_ip: Some("fd00::1".parse().unwrap()),
            dst_ip: None,
            src_port: Some(0x1234),
            dst_port: None,
            action: Action::Drop,
            loc: None,
        };
        let fs = build_flow_spec(&r, 0).unwrap();
        assert_eq!(fs.flow_type, TCP_V6_FLOW);
        assert_eq!(
            &fs.h_u[0..16],
            &"fd00::1".parse::<Ipv6Addr>().unwrap().octets()
        );
        assert_eq!(&fs.m_u[0..16], &[0xff; 16]);
        assert_eq!(&fs.m_u[16..32], &[0; 16]);
        assert_eq!(&fs.h_u[32..34], &[0x12, 0x34]);
        assert_eq!(&fs.m_u[32..36], &[0xff, 0xff, 0, 0]);
        assert!(fs.m_u[36..].iter().all(|&b| b == 0));
        assert_eq!(fs.ring_cookie, RX_CLS_FLOW_DISC);
        assert_eq!(
            flow_spec_json(&fs),
            json!({"location": 0, "flow_type": "tcp6", "src_ip": "fd00::1", "src_port": 0x1234, "action": "drop"})
        );
        // Family mismatch is refused even if the parser was bypassed.
        let bad = RuleSpec {
            flow: FlowType::Tcp4,
            src_ip: Some("fd00::1".parse().unwrap()),
            ..r
        };
        assert!(build_flow_spec(&bad, 0).is_err());
    }

    #[test]
    fn flow_spec_decoding_of_partial_masks_and_vf() {
        let mut fs = EthtoolRxFlowSpec::zeroed();
        fs.flow_type = UDP_V4_FLOW | FLOW_EXT;
        fs.h_u[0..4].copy_from_slice(&[10, 1, 2, 3]);
        fs.m_u[0..4].copy_from_slice(&[255, 255, 255, 0]);
        fs.h_u[8..10].copy_from_slice(&[0x12, 0x34]);
        fs.m_u[8..10].copy_from_slice(&[0xff, 0x00]);
        fs.ring_cookie = (2u64 << 32) | 5;
        fs.location = 11;
        assert_eq!(
            flow_spec_json(&fs),
            json!({"location": 11, "flow_type": "udp4", "src_ip": "10.1.2.0", "src_ip_mask": "255.255.255.0",
                   "src_port": 0x1200, "src_port_mask": 0xff00, "action": 5, "vf": 2})
        );
        fs.flow_type = 0x12;
        assert_eq!(flow_spec_json(&fs)["flow_type"], "0x12");
    }

    #[test]
    fn feature_aliases_and_globs() {
        assert!(glob_match("tx-tcp*-segmentation", "tx-tcp6-segmentation"));
        assert!(glob_match("tx-tcp*-segmentation", "tx-tcp-segmentation"));
        assert!(glob_match(
            "tx-tcp*-segmentation",
            "tx-tcp-ecn-segmentation"
        ));
        assert!(!glob_match("tx-tcp*-segmentation", "tx-udp-segmentation"));
        assert!(glob_match("tx-checksum-*", "tx-checksum-ipv4"));
        assert!(!glob_match("rx-checksum", "rx-checksum-x"));
        assert!(glob_match("*", ""));
        let names = [
            "tx-scatter-gather",
            "tx-checksum-ipv4",
            "tx-checksum-ip-generic",
            "tx-scatter-gather-fraglist",
            "rx-gro",
            "tx-tcp-segmentation",
            "tx-tcp-ecn-segmentation",
            "tx-tcp-mangleid-segmentation",
            "tx-tcp6-segmentation",
            "tx-udp-segmentation",
            "rx-ntuple-filter",
            "rx-hashing",
            "rx-checksum",
            "",
        ];
        let r = |n: &str| resolve_feature(n, &names);
        assert_eq!(r("ntuple").unwrap(), vec![10]);
        assert_eq!(r("ntuple-filters").unwrap(), vec![10]);
        assert_eq!(r("rxhash").unwrap(), vec![11]);
        assert_eq!(r("gro").unwrap(), vec![4]);
        assert_eq!(r("tso").unwrap(), vec![5, 6, 7, 8]);
        assert_eq!(r("sg").unwrap(), vec![0, 3]);
        assert_eq!(r("tx").unwrap(), vec![1, 2]);
        assert_eq!(r("rx").unwrap(), vec![12]);
        assert_eq!(r("rx-checksum").unwrap(), vec![12]);
        assert_eq!(r("tx-tcp6-segmentation").unwrap(), vec![8]);
        assert!(r("lro").unwrap_err().contains("not known"));
        assert!(r("bogus").unwrap_err().contains("unknown feature"));
        assert!(
            r("").is_ok(),
            "the empty (undefined) slot is only matched exactly"
        );
    }

    #[test]
    fn free_location_choice_matches_ethtool() {
        assert_eq!(pick_free_location(8, &[]), Some(7));
        assert_eq!(pick_free_location(8, &[7, 6]), Some(5));
        assert_eq!(pick_free_location(3, &[0, 1, 2]), None);
        assert_eq!(pick_free_location(0, &[]), None);
    }

    #[test]
    fn small_helpers() {
        assert_eq!(strerror(libc::EOPNOTSUPP), "Operation not supported");
        assert_eq!(tcp_data_split_name(None), "unknown");
        assert_eq!(tcp_data_split_name(Some(1)), "off");
        assert_eq!(tcp_data_split_name(Some(2)), "on");
        assert_eq!(tcp_data_split_name(Some(7)), "invalid(7)");
        let e = EtError::nl(
            "ETHTOOL_MSG_RINGS_SET",
            nl::NlError {
                errno: 95,
                extack: Some("x".into()),
            },
        );
        assert_eq!(
            e.to_json("eth0"),
            json!({"ok": false, "dev": "eth0", "errno": 95, "error": "Operation not supported",
                   "op": "ETHTOOL_MSG_RINGS_SET", "extack": "x"})
        );
        let mut d = EthtoolDrvinfo::default();
        d.driver[..3].copy_from_slice(b"gve");
        d.bus_info[..12].copy_from_slice(b"0000:00:04.0");
        d.n_stats = 7;
        let j = Value::Object(drvinfo_json(&d));
        assert_eq!(
            (
                j["driver"].clone(),
                j["bus_info"].clone(),
                j["n_stats"].clone()
            ),
            (json!("gve"), json!("0000:00:04.0"), json!(7))
        );
        let st = vec![("b".to_string(), 1u64), ("a".into(), 2), ("b".into(), 3)];
        let s = serde_json::to_string(&StatsOut {
            ok: true,
            dev: "x",
            stats: OrderedStats(&st),
        })
        .unwrap();
        assert_eq!(s, r#"{"ok":true,"dev":"x","stats":{"b":1,"a":2,"b#2":3}}"#);
    }

    // ------------------------------------------------ root only: a real kernel

    /// `IFLA_IFNAME` (include/uapi/linux/if_link.h).
    const IFLA_IFNAME: u16 = 3;
    /// `IFLA_LINKINFO` (include/uapi/linux/if_link.h).
    const IFLA_LINKINFO: u16 = 18;
    /// `IFLA_NUM_TX_QUEUES` (include/uapi/linux/if_link.h).
    const IFLA_NUM_TX_QUEUES: u16 = 31;
    /// `IFLA_NUM_RX_QUEUES` (include/uapi/linux/if_link.h).
    const IFLA_NUM_RX_QUEUES: u16 = 32;
    /// `IFLA_INFO_KIND` (include/uapi/linux/if_link.h).
    const IFLA_INFO_KIND: u16 = 1;
    /// `IFLA_INFO_DATA` (include/uapi/linux/if_link.h).
    const IFLA_INFO_DATA: u16 = 2;
    /// `VETH_INFO_PEER` (include/uapi/linux/veth.h).
    const VETH_INFO_PEER: u16 = 1;

    /// A veth pair `a`/`b` with two queues on `a`, over the rtnl layer.
    fn add_veth(a: &str, b: &str) -> Result<(), String> {
        use crate::guest_tools::rtnl;
        let mut peer = rtnl::ifinfomsg(0, 0, 0);
        peer.extend_from_slice(&nl::Attrs::new().put_strz(IFLA_IFNAME, b).finish());
        let linkinfo = nl::Attrs::new()
            .put_strz(IFLA_INFO_KIND, "veth")
            .nest_start(IFLA_INFO_DATA)
            .put(VETH_INFO_PEER, &peer)
            .nest_end()
            .finish();
        let flags = (libc::NLM_F_CREATE | libc::NLM_F_EXCL) as u16;
        let m = rtnl::Msg::new(libc::RTM_NEWLINK, flags, &rtnl::ifinfomsg(0, 0, 0))
            .attr(IFLA_IFNAME, format!("{a}\0").as_bytes())
            .attr(IFLA_NUM_TX_QUEUES, &2u32.to_ne_bytes())
            .attr(IFLA_NUM_RX_QUEUES, &2u32.to_ne_bytes())
            .attr(IFLA_LINKINFO | nl::NLA_F_NESTED, &linkinfo);
        rtnl::Rtnl::open()?
            .request("link add veth", m)
            .map_err(|e| e.to_string())
    }

    fn inv(s: &str) -> Invocation {
        parse(s).unwrap()
    }

    fn ok(s: &str) -> Value {
        let line = run(&inv(s)).unwrap_or_else(|e| panic!("{s}: {e}"));
        let v: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["ok"], true, "{s}: {v}");
        v
    }

    fn err(s: &str) -> EtError {
        match run(&inv(s)) {
            Ok(l) => panic!("{s}: succeeded: {l}"),
            Err(e) => e,
        }
    }

    fn kernel_checks() {
        // lo has no get_drvinfo, no parent device, no rtnl_link_ops:
        // ethtool_get_drvinfo answers EOPNOTSUPP (net/ethtool/ioctl.c).
        let e = err("-i lo");
        assert_eq!(
            (e.errno, e.op),
            (Some(libc::EOPNOTSUPP), Some("ETHTOOL_GDRVINFO"))
        );
        assert_eq!(e.to_json("lo")["errno"], 95);
        assert_eq!(err("-i nosuchdev0").errno, Some(libc::ENODEV));
        // No driver stats, channels or ntuple on lo.
        assert_eq!(err("-S lo").errno, Some(libc::EOPNOTSUPP));
        assert_eq!(err("-l lo").errno, Some(libc::EOPNOTSUPP));
        assert_eq!(err("-n lo").errno, Some(libc::EOPNOTSUPP));

        // Features: lo's hw_features are GSO_SOFTWARE plus GSO/GRO, so its
        // checksum features are on but fixed and GRO is changeable.
        let k = ok("-k lo");
        let f = &k["features"];
        for fixed_on in [
            "rx-checksum",
            "tx-checksum-ip-generic",
            "loopback",
            "tx-scatter-gather",
        ] {
            assert_eq!(
                f[fixed_on],
                json!({"active": true, "requested": false, "fixed": true}),
                "{fixed_on}: {k}"
            );
        }
        assert_eq!(f["rx-gro"]["fixed"], false, "{k}");
        // NETIF_F_NEVER_CHANGE: fixed, and never sent in SFEATURES' valid mask
        // (that would be EINVAL), so asking for it fails as "not changed".
        assert_eq!(
            f["vlan-challenged"],
            json!({"active": true, "requested": false, "fixed": true})
        );
        let e = err("-K lo vlan-challenged off");
        assert_eq!(
            (e.errno, e.detail["not_changed"].clone()),
            (None, json!(["vlan-challenged"]))
        );
        let gro = f["rx-gro"]["active"].as_bool().unwrap();
        let flip = if gro { "off" } else { "on" };
        let v = ok(&format!("-K lo gro {flip}"));
        assert_eq!(v["changed"], json!(["rx-gro"]), "{v}");
        assert_eq!(v["features"]["rx-gro"]["active"], !gro);
        assert_eq!(ok("-k lo")["features"]["rx-gro"]["active"], !gro);
        ok(&format!("-K lo rx-gro {}", if gro { "on" } else { "off" }));
        assert_eq!(ok("-k lo")["features"]["rx-gro"]["active"], gro);
        // Asking for the current state succeeds without changes.
        let v = ok(&format!("-K lo gro {}", if gro { "on" } else { "off" }));
        assert_eq!(v["changed"], json!([]));
        // tso covers every tx-tcp*-segmentation feature that can change.
        let v = ok("-K lo tso off");
        assert_eq!(v["features"]["tx-tcp-segmentation"]["active"], false, "{v}");
        assert_eq!(
            v["features"]["tx-tcp6-segmentation"]["active"], false,
            "{v}"
        );
        let v = ok("-K lo tso on");
        assert_eq!(v["features"]["tx-tcp-segmentation"]["active"], true, "{v}");
        // A fixed feature cannot be changed: failure, reported like ethtool(8).
        let e = err("-K lo rx-checksum off");
        assert_eq!(e.errno, None);
        assert_eq!(e.error, "Could not change any device features");
        assert_eq!(e.detail["not_changed"], json!(["rx-checksum"]));
        let e = err("-K lo ntuple on");
        assert_eq!(e.detail["not_changed"], json!(["rx-ntuple-filter"]));
        assert!(err("-K lo bogus on").error.contains("unknown feature"));

        // Rings over ethtool netlink: lo has no get_ringparam.
        let e = err("-g lo");
        assert_eq!(
            (e.errno, e.op),
            (Some(libc::EOPNOTSUPP), Some("ETHTOOL_MSG_RINGS_GET"))
        );
        assert_eq!(e.to_json("lo")["errno"], 95);
        // RINGS_SET with tcp-data-split: refused in set_validate with an extack
        // message (net/ethtool/rings.c).
        let e = err("-G lo tcp-data-split on");
        assert_eq!(
            (e.errno, e.op),
            (Some(libc::EOPNOTSUPP), Some("ETHTOOL_MSG_RINGS_SET"))
        );
        assert_eq!(
            e.extack.as_deref(),
            Some("setting TCP data split is not supported"),
            "{e}"
        );
        assert_eq!(
            e.to_json("lo")["extack"],
            "setting TCP data split is not supported"
        );
        assert_eq!(err("-G lo rx 128").errno, Some(libc::EOPNOTSUPP));
        let e = err("-g nosuchdev0");
        assert_eq!(e.errno, Some(libc::ENODEV));
        eprintln!("note: -g nosuchdev0 extack: {:?}", e.extack);

        // A veth pair when the kernel has veth.
        if let Err(e) = add_veth("etva", "etvb") {
            eprintln!("note: no veth here ({e}), skipping the veth part");
            return;
        }
        let i = ok("-i etva");
        assert_eq!(i["driver"], "veth");
        assert_eq!(i["bus_info"], "");
        let peer = crate::guest_tools::ifindex("etvb").unwrap();
        let s = ok("-S etva");
        assert_eq!(s["stats"]["peer_ifindex"], peer, "{s}");
        let line = run(&inv("-S etva")).unwrap();
        assert!(
            line.find("\"peer_ifindex\"").unwrap() < line.find("\"rx_queue_0_").unwrap(),
            "driver order kept"
        );
        let l = ok("-l etva");
        assert_eq!(
            (l["max_rx"].clone(), l["rx"].clone(), l["tx"].clone()),
            (json!(2), json!(2), json!(2)),
            "{l}"
        );
        let l = ok("-L etva rx 1 tx 1");
        assert_eq!(
            (l["rx"].clone(), l["tx"].clone()),
            (json!(1), json!(1)),
            "{l}"
        );
        assert_eq!(l["requested"], json!({"rx": 1, "tx": 1}));
        assert_eq!(ok("-l etva")["rx"], 1);
        assert_eq!(err("-L etva rx 3").errno, Some(libc::EINVAL));
        ok("-L etva rx 2 tx 2");
        assert_eq!(err("-g etva").errno, Some(libc::EOPNOTSUPP));
        assert_eq!(err("-n etva").errno, Some(libc::EOPNOTSUPP));
        assert_eq!(
            err("-N etva flow-type tcp4 dst-port 5201 action 0").op,
            Some("ETHTOOL_GRXCLSRLCNT")
        );
        let e = err("-N etva flow-type tcp4 dst-port 5201 action 0 loc 0");
        assert_eq!(
            (e.errno, e.op),
            (Some(libc::EOPNOTSUPP), Some("ETHTOOL_SRXCLSRLINS"))
        );
        assert!(ok("-k etva")["features"]["rx-checksum"]["active"].is_boolean());
    }

    /// Root only: the ops against a fresh netns's `lo` (and a veth pair when
    /// the kernel has veth), asserting what the kernel's code says they do.
    #[test]
    fn ops_against_a_real_kernel_when_root() {
        // SAFETY: no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("note: not root, skipping");
            return;
        }
        let dir: PathBuf =
            std::env::temp_dir().join(format!("netmem-ethtool-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let d2 = dir.clone();
        let res = std::thread::spawn(move || {
            match crate::guest_tools::netns_add_in(&d2, "et") {
                Ok(_) => {}
                Err(e) => {
                    eprintln!("note: cannot create a netns here ({e}), skipping");
                    return;
                }
            }
            // This thread is now in the fresh netns.
            kernel_checks();
        })
        .join();
        let p = std::ffi::CString::new(dir.join("et").to_str().unwrap()).unwrap();
        // SAFETY: unmounting our own bind mount (if it exists).
        unsafe { libc::umount2(p.as_ptr(), libc::MNT_DETACH) };
        let _ = std::fs::remove_dir_all(Path::new(&dir));
        if let Err(panic) = res {
            std::panic::resume_unwind(panic);
        }
    }
}
