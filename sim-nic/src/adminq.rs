//! Admin-queue wire formats: opcodes, status codes, device options, the
//! command parser and the structures the device writes back.
//!
//! All admin-queue structures are big-endian (gve_adminq.h, all `__be*`).
//! Offsets below are inside the 64-byte command slot (opcode at 0, status
//! at 4, body from 8).

use std::fmt;

// ---- gve_adminq.h `enum gve_adminq_opcodes` ----
pub const OP_DESCRIBE_DEVICE: u32 = 0x1;
pub const OP_CONFIGURE_DEVICE_RESOURCES: u32 = 0x2;
pub const OP_REGISTER_PAGE_LIST: u32 = 0x3;
pub const OP_UNREGISTER_PAGE_LIST: u32 = 0x4;
pub const OP_CREATE_TX_QUEUE: u32 = 0x5;
pub const OP_CREATE_RX_QUEUE: u32 = 0x6;
pub const OP_DESTROY_TX_QUEUE: u32 = 0x7;
pub const OP_DESTROY_RX_QUEUE: u32 = 0x8;
pub const OP_DECONFIGURE_DEVICE_RESOURCES: u32 = 0x9;
pub const OP_CONFIGURE_RSS: u32 = 0xa;
pub const OP_SET_DRIVER_PARAMETER: u32 = 0xb;
pub const OP_REPORT_STATS: u32 = 0xc;
pub const OP_REPORT_LINK_SPEED: u32 = 0xd;
pub const OP_GET_PTYPE_MAP: u32 = 0xe;
pub const OP_VERIFY_DRIVER_COMPATIBILITY: u32 = 0xf;
pub const OP_QUERY_FLOW_RULES: u32 = 0x10;
pub const OP_REPORT_NIC_TIMESTAMP: u32 = 0x11;
pub const OP_QUERY_RSS: u32 = 0x12;
/// Wrapper for commands longer than 56 bytes.
pub const OP_EXTENDED_COMMAND: u32 = 0xff;
/// gve_adminq.h `enum gve_adminq_extended_cmd_opcodes`.
pub const EXT_OP_CONFIGURE_FLOW_RULE: u32 = 0x101;

// ---- gve_adminq.h `enum gve_adminq_statuses` (errno mapping in
// gve_adminq.c `gve_adminq_parse_err`) ----
pub const STATUS_UNSET: u32 = 0x0;
pub const STATUS_PASSED: u32 = 0x1;
/// -EAGAIN
pub const STATUS_ABORTED: u32 = 0xffff_fff0;
/// -EINVAL
pub const STATUS_ALREADY_EXISTS: u32 = 0xffff_fff1;
/// -EAGAIN
pub const STATUS_CANCELLED: u32 = 0xffff_fff2;
/// -EAGAIN
pub const STATUS_DATALOSS: u32 = 0xffff_fff3;
/// -ETIME (CONFIGURE_FLOW_RULE then forces a full reset): never used here.
pub const STATUS_DEADLINE_EXCEEDED: u32 = 0xffff_fff4;
/// -EAGAIN
pub const STATUS_FAILED_PRECONDITION: u32 = 0xffff_fff5;
/// -EINVAL
pub const STATUS_INTERNAL_ERROR: u32 = 0xffff_fff6;
/// -EINVAL
pub const STATUS_INVALID_ARGUMENT: u32 = 0xffff_fff7;
/// -EINVAL
pub const STATUS_NOT_FOUND: u32 = 0xffff_fff8;
/// -EINVAL
pub const STATUS_OUT_OF_RANGE: u32 = 0xffff_fff9;
/// -EACCES
pub const STATUS_PERMISSION_DENIED: u32 = 0xffff_fffa;
/// -EACCES
pub const STATUS_UNAUTHENTICATED: u32 = 0xffff_fffb;
/// -ENOMEM
pub const STATUS_RESOURCE_EXHAUSTED: u32 = 0xffff_fffc;
/// -EAGAIN
pub const STATUS_UNAVAILABLE: u32 = 0xffff_fffd;
/// -EOPNOTSUPP
pub const STATUS_UNIMPLEMENTED: u32 = 0xffff_fffe;
/// -EINVAL
pub const STATUS_UNKNOWN_ERROR: u32 = 0xffff_ffff;

/// A command status the device writes at slot offset 4.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Status(pub u32);

impl Status {
    pub const PASSED: Status = Status(STATUS_PASSED);
    pub const ALREADY_EXISTS: Status = Status(STATUS_ALREADY_EXISTS);
    pub const FAILED_PRECONDITION: Status = Status(STATUS_FAILED_PRECONDITION);
    pub const INVALID_ARGUMENT: Status = Status(STATUS_INVALID_ARGUMENT);
    pub const NOT_FOUND: Status = Status(STATUS_NOT_FOUND);
    pub const OUT_OF_RANGE: Status = Status(STATUS_OUT_OF_RANGE);
    pub const RESOURCE_EXHAUSTED: Status = Status(STATUS_RESOURCE_EXHAUSTED);
    pub const UNIMPLEMENTED: Status = Status(STATUS_UNIMPLEMENTED);

    pub fn name(self) -> &'static str {
        match self.0 {
            STATUS_UNSET => "UNSET",
            STATUS_PASSED => "PASSED",
            STATUS_ABORTED => "ABORTED",
            STATUS_ALREADY_EXISTS => "ALREADY_EXISTS",
            STATUS_CANCELLED => "CANCELLED",
            STATUS_DATALOSS => "DATALOSS",
            STATUS_DEADLINE_EXCEEDED => "DEADLINE_EXCEEDED",
            STATUS_FAILED_PRECONDITION => "FAILED_PRECONDITION",
            STATUS_INTERNAL_ERROR => "INTERNAL_ERROR",
            STATUS_INVALID_ARGUMENT => "INVALID_ARGUMENT",
            STATUS_NOT_FOUND => "NOT_FOUND",
            STATUS_OUT_OF_RANGE => "OUT_OF_RANGE",
            STATUS_PERMISSION_DENIED => "PERMISSION_DENIED",
            STATUS_UNAUTHENTICATED => "UNAUTHENTICATED",
            STATUS_RESOURCE_EXHAUSTED => "RESOURCE_EXHAUSTED",
            STATUS_UNAVAILABLE => "UNAVAILABLE",
            STATUS_UNIMPLEMENTED => "UNIMPLEMENTED",
            _ => "UNKNOWN",
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({:#x})", self.name(), self.0)
    }
}

// ---- gve_adminq.h `enum gve_dev_opt_id` ----
pub const DEV_OPT_ID_GQI_RAW_ADDRESSING: u16 = 0x1;
pub const DEV_OPT_ID_GQI_RDA: u16 = 0x2;
pub const DEV_OPT_ID_GQI_QPL: u16 = 0x3;
pub const DEV_OPT_ID_DQO_RDA: u16 = 0x4;
pub const DEV_OPT_ID_MODIFY_RING: u16 = 0x6;
pub const DEV_OPT_ID_DQO_QPL: u16 = 0x7;
pub const DEV_OPT_ID_JUMBO_FRAMES: u16 = 0x8;
pub const DEV_OPT_ID_BUFFER_SIZES: u16 = 0xa;
pub const DEV_OPT_ID_FLOW_STEERING: u16 = 0xb;
pub const DEV_OPT_ID_NIC_TIMESTAMP: u16 = 0xd;
pub const DEV_OPT_ID_RSS_CONFIG: u16 = 0xe;

// ---- gve_adminq.h `enum gve_sup_feature_mask`. A feature is enabled only
// if its option is present AND its bit is set in the queue-format option's
// (DQO_RDA's) supported_features_mask (gve_adminq.c
// `gve_enable_supported_features`). ----
pub const SUP_MODIFY_RING_MASK: u32 = 1 << 0;
pub const SUP_JUMBO_FRAMES_MASK: u32 = 1 << 2;
pub const SUP_BUFFER_SIZES_MASK: u32 = 1 << 4;
pub const SUP_FLOW_STEERING_MASK: u32 = 1 << 5;
pub const SUP_RSS_CONFIG_MASK: u32 = 1 << 7;
pub const SUP_NIC_TIMESTAMP_MASK: u32 = 1 << 8;

/// gve_adminq.h `GVE_ADMINQ_DEVICE_DESCRIPTOR_VERSION`.
pub const DEVICE_DESCRIPTOR_VERSION: u32 = 1;
/// sizeof(struct gve_device_descriptor).
pub const DEVICE_DESCRIPTOR_LEN: usize = 40;
/// sizeof(struct gve_device_option).
pub const DEVICE_OPTION_HDR_LEN: usize = 8;
/// gve_adminq.h `GVE_RAW_ADDRESSING_QPL_ID`: queue uses raw addressing.
pub const RAW_ADDRESSING_QPL_ID: u32 = 0xffff_ffff;
/// gve.h `enum gve_queue_format`.
pub const QUEUE_FORMAT_DQO_RDA: u8 = 0x3;
/// sizeof(struct gve_queue_resources).
pub const QUEUE_RESOURCES_LEN: u64 = 64;
/// gve.h `GVE_NUM_PTYPES` (ptypes are 10 bits).
pub const NUM_PTYPES: usize = 1024;
/// sizeof(struct gve_ptype_map).
pub const PTYPE_MAP_LEN: u64 = 2 * NUM_PTYPES as u64;
/// sizeof(struct gve_driver_info).
pub const DRIVER_INFO_LEN: usize = 304;
/// sizeof(struct gve_adminq_configure_flow_rule).
pub const FLOW_RULE_CMD_LEN: usize = 92;
/// sizeof(struct gve_adminq_flow_rule): flow_type, action, key, mask.
pub const FLOW_RULE_LEN: usize = 84;
/// sizeof(struct gve_flow_spec) (37 bytes of fields, 4-byte aligned).
pub const FLOW_SPEC_LEN: usize = 40;
/// sizeof(struct gve_query_flow_rules_descriptor).
pub const FLOW_QUERY_HDR_LEN: usize = 16;
/// sizeof(struct gve_adminq_queried_flow_rule).
pub const QUERIED_FLOW_RULE_LEN: usize = 4 + FLOW_RULE_LEN;
/// sizeof(struct gve_query_rss_descriptor).
pub const RSS_QUERY_HDR_LEN: usize = 8;
/// gve.h `GVE_RSS_KEY_SIZE` / `GVE_RSS_INDIR_SIZE`: the sizes the driver
/// uses when the device does not advertise RSS_CONFIG.
pub const RSS_KEY_SIZE: u16 = 40;
pub const RSS_LUT_SIZE: u16 = 128;
/// ETH_RSS_HASH_TOP (include/uapi/linux/ethtool.h): the only algorithm the
/// driver sends (gve_adminq.c `gve_adminq_configure_rss`).
pub const RSS_HASH_ALG_TOEPLITZ: u8 = 1;

// ---- gve_adminq.h `enum gve_rss_hash_type` (bit numbers) ----
pub const RSS_HASH_IPV4: u16 = 1 << 0;
pub const RSS_HASH_TCPV4: u16 = 1 << 1;
pub const RSS_HASH_IPV6: u16 = 1 << 2;
pub const RSS_HASH_IPV6_EX: u16 = 1 << 3;
pub const RSS_HASH_TCPV6: u16 = 1 << 4;
pub const RSS_HASH_TCPV6_EX: u16 = 1 << 5;
pub const RSS_HASH_UDPV4: u16 = 1 << 6;
pub const RSS_HASH_UDPV6: u16 = 1 << 7;
pub const RSS_HASH_UDPV6_EX: u16 = 1 << 8;

// ---- flow steering (gve_adminq.h) ----
pub const FLOW_RULE_CFG_ADD: u16 = 0;
pub const FLOW_RULE_CFG_DEL: u16 = 1;
pub const FLOW_RULE_CFG_RESET: u16 = 2;
pub const FLOW_RULE_QUERY_RULES: u16 = 0;
pub const FLOW_RULE_QUERY_IDS: u16 = 1;
pub const FLOW_RULE_QUERY_STATS: u16 = 2;
/// `enum gve_adminq_flow_type`: TCPV4 = 0 … ESPV6 = 9.
pub const FLOW_TYPE_MAX: u16 = 9;

// ---- gve_adminq.h `enum gve_l3_type` / `enum gve_l4_type` ----
pub const L3_UNKNOWN: u8 = 0;
pub const L3_OTHER: u8 = 1;
pub const L3_IPV4: u8 = 2;
pub const L3_IPV6: u8 = 3;
pub const L4_UNKNOWN: u8 = 0;
pub const L4_OTHER: u8 = 1;
pub const L4_TCP: u8 = 2;
pub const L4_UDP: u8 = 3;
pub const L4_ICMP: u8 = 4;
pub const L4_SCTP: u8 = 5;

/// The device's packet types (the numbering is the device's choice; the
/// driver learns it with GET_PTYPE_MAP).
pub mod ptype {
    pub const NON_IP: u16 = 0;
    pub const IPV4: u16 = 1;
    pub const IPV4_TCP: u16 = 2;
    pub const IPV4_UDP: u16 = 3;
    pub const IPV4_ICMP: u16 = 4;
    pub const IPV4_OTHER: u16 = 5;
    pub const IPV6: u16 = 6;
    pub const IPV6_TCP: u16 = 7;
    pub const IPV6_UDP: u16 = 8;
    pub const IPV6_ICMP: u16 = 9;
    pub const IPV6_OTHER: u16 = 10;
    pub const IPV4_SCTP: u16 = 11;
    pub const IPV6_SCTP: u16 = 12;
}

/// The 2048-byte ptype map answered to GET_PTYPE_MAP: `{l3_type, l4_type}`
/// per ptype (gve_adminq.h `struct gve_ptype_map`).
pub fn ptype_map() -> Vec<u8> {
    let mut m = vec![0u8; PTYPE_MAP_LEN as usize];
    let mut set = |p: u16, l3: u8, l4: u8| {
        let i = usize::from(p) * 2;
        m[i] = l3;
        m[i + 1] = l4;
    };
    set(ptype::NON_IP, L3_UNKNOWN, L4_UNKNOWN);
    set(ptype::IPV4, L3_IPV4, L4_UNKNOWN);
    set(ptype::IPV4_TCP, L3_IPV4, L4_TCP);
    set(ptype::IPV4_UDP, L3_IPV4, L4_UDP);
    set(ptype::IPV4_ICMP, L3_IPV4, L4_ICMP);
    set(ptype::IPV4_OTHER, L3_IPV4, L4_OTHER);
    set(ptype::IPV6, L3_IPV6, L4_UNKNOWN);
    set(ptype::IPV6_TCP, L3_IPV6, L4_TCP);
    set(ptype::IPV6_UDP, L3_IPV6, L4_UDP);
    set(ptype::IPV6_ICMP, L3_IPV6, L4_ICMP);
    set(ptype::IPV6_OTHER, L3_IPV6, L4_OTHER);
    set(ptype::IPV4_SCTP, L3_IPV4, L4_SCTP);
    set(ptype::IPV6_SCTP, L3_IPV6, L4_SCTP);
    m
}

fn be16(b: &[u8], off: usize) -> u16 {
    u16::from_be_bytes([b[off], b[off + 1]])
}
fn be32(b: &[u8], off: usize) -> u32 {
    u32::from_be_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]])
}
fn be64(b: &[u8], off: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[off..off + 8]);
    u64::from_be_bytes(a)
}

/// One admin-queue command slot.
pub type RawCommand = [u8; 64];

/// A decoded admin command. Field names follow gve_adminq.h.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    DescribeDevice {
        descriptor_addr: u64,
        version: u32,
        available_length: u32,
    },
    ConfigureDeviceResources {
        counter_array: u64,
        irq_db_addr: u64,
        num_counters: u32,
        num_irq_dbs: u32,
        irq_db_stride: u32,
        ntfy_blk_msix_base_idx: u32,
        queue_format: u8,
    },
    RegisterPageList,
    UnregisterPageList,
    CreateTxQueue(CreateTxQueue),
    CreateRxQueue(CreateRxQueue),
    DestroyTxQueue {
        queue_id: u32,
    },
    DestroyRxQueue {
        queue_id: u32,
    },
    DeconfigureDeviceResources,
    ConfigureRss(ConfigureRss),
    SetDriverParameter {
        parameter_type: u32,
        value: u64,
    },
    ReportStats {
        len: u64,
        addr: u64,
        interval: u64,
    },
    ReportLinkSpeed {
        addr: u64,
    },
    GetPtypeMap {
        len: u64,
        addr: u64,
    },
    VerifyDriverCompatibility {
        len: u64,
        addr: u64,
    },
    QueryFlowRules {
        opcode: u16,
        starting_rule_id: u32,
        available_length: u64,
        addr: u64,
    },
    ReportNicTimestamp {
        len: u64,
        addr: u64,
    },
    QueryRss {
        available_length: u64,
        addr: u64,
    },
    Extended {
        inner_opcode: u32,
        inner_length: u32,
        inner_addr: u64,
    },
    Unknown(u32),
}

/// gve_adminq.h `struct gve_adminq_create_tx_queue` (48 bytes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CreateTxQueue {
    pub queue_id: u32,
    pub queue_resources_addr: u64,
    pub tx_ring_addr: u64,
    pub queue_page_list_id: u32,
    pub ntfy_id: u32,
    pub tx_comp_ring_addr: u64,
    pub tx_ring_size: u16,
    pub tx_comp_ring_size: u16,
}

/// gve_adminq.h `struct gve_adminq_create_rx_queue` (56 bytes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CreateRxQueue {
    pub queue_id: u32,
    pub index: u32,
    pub ntfy_id: u32,
    pub queue_resources_addr: u64,
    /// DQO: the RX completion queue.
    pub rx_desc_ring_addr: u64,
    /// DQO: the RX buffer queue.
    pub rx_data_ring_addr: u64,
    pub queue_page_list_id: u32,
    pub rx_ring_size: u16,
    pub packet_buffer_size: u16,
    pub rx_buff_ring_size: u16,
    pub enable_rsc: u8,
    pub header_buffer_size: u16,
}

/// gve_adminq.h `struct gve_adminq_configure_rss` (24 bytes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConfigureRss {
    pub hash_types: u16,
    pub hash_alg: u8,
    pub hash_key_size: u16,
    pub hash_lut_size: u16,
    pub hash_key_addr: u64,
    pub hash_lut_addr: u64,
}

impl Command {
    /// Decode a 64-byte slot. Never fails: unknown opcodes decode as
    /// [`Command::Unknown`].
    pub fn parse(slot: &RawCommand) -> Command {
        let b = &slot[8..];
        match be32(slot, 0) {
            OP_DESCRIBE_DEVICE => Command::DescribeDevice {
                descriptor_addr: be64(b, 0),
                version: be32(b, 8),
                available_length: be32(b, 12),
            },
            OP_CONFIGURE_DEVICE_RESOURCES => Command::ConfigureDeviceResources {
                counter_array: be64(b, 0),
                irq_db_addr: be64(b, 8),
                num_counters: be32(b, 16),
                num_irq_dbs: be32(b, 20),
                irq_db_stride: be32(b, 24),
                ntfy_blk_msix_base_idx: be32(b, 28),
                queue_format: b[32],
            },
            OP_REGISTER_PAGE_LIST => Command::RegisterPageList,
            OP_UNREGISTER_PAGE_LIST => Command::UnregisterPageList,
            OP_CREATE_TX_QUEUE => Command::CreateTxQueue(CreateTxQueue {
                queue_id: be32(b, 0),
                queue_resources_addr: be64(b, 8),
                tx_ring_addr: be64(b, 16),
                queue_page_list_id: be32(b, 24),
                ntfy_id: be32(b, 28),
                tx_comp_ring_addr: be64(b, 32),
                tx_ring_size: be16(b, 40),
                tx_comp_ring_size: be16(b, 42),
            }),
            OP_CREATE_RX_QUEUE => Command::CreateRxQueue(CreateRxQueue {
                queue_id: be32(b, 0),
                index: be32(b, 4),
                ntfy_id: be32(b, 12),
                queue_resources_addr: be64(b, 16),
                rx_desc_ring_addr: be64(b, 24),
                rx_data_ring_addr: be64(b, 32),
                queue_page_list_id: be32(b, 40),
                rx_ring_size: be16(b, 44),
                packet_buffer_size: be16(b, 46),
                rx_buff_ring_size: be16(b, 48),
                enable_rsc: b[50],
                header_buffer_size: be16(b, 52),
            }),
            OP_DESTROY_TX_QUEUE => Command::DestroyTxQueue {
                queue_id: be32(b, 0),
            },
            OP_DESTROY_RX_QUEUE => Command::DestroyRxQueue {
                queue_id: be32(b, 0),
            },
            OP_DECONFIGURE_DEVICE_RESOURCES => Command::DeconfigureDeviceResources,
            OP_CONFIGURE_RSS => Command::ConfigureRss(ConfigureRss {
                hash_types: be16(b, 0),
                hash_alg: b[2],
                hash_key_size: be16(b, 4),
                hash_lut_size: be16(b, 6),
                hash_key_addr: be64(b, 8),
                hash_lut_addr: be64(b, 16),
            }),
            OP_SET_DRIVER_PARAMETER => Command::SetDriverParameter {
                parameter_type: be32(b, 0),
                value: be64(b, 8),
            },
            OP_REPORT_STATS => Command::ReportStats {
                len: be64(b, 0),
                addr: be64(b, 8),
                interval: be64(b, 16),
            },
            OP_REPORT_LINK_SPEED => Command::ReportLinkSpeed { addr: be64(b, 0) },
            OP_GET_PTYPE_MAP => Command::GetPtypeMap {
                len: be64(b, 0),
                addr: be64(b, 8),
            },
            OP_VERIFY_DRIVER_COMPATIBILITY => Command::VerifyDriverCompatibility {
                len: be64(b, 0),
                addr: be64(b, 8),
            },
            OP_QUERY_FLOW_RULES => Command::QueryFlowRules {
                opcode: be16(b, 0),
                starting_rule_id: be32(b, 4),
                available_length: be64(b, 8),
                addr: be64(b, 16),
            },
            OP_REPORT_NIC_TIMESTAMP => Command::ReportNicTimestamp {
                len: be64(b, 0),
                addr: be64(b, 8),
            },
            OP_QUERY_RSS => Command::QueryRss {
                available_length: be64(b, 0),
                addr: be64(b, 8),
            },
            OP_EXTENDED_COMMAND => Command::Extended {
                inner_opcode: be32(b, 0),
                inner_length: be32(b, 4),
                inner_addr: be64(b, 8),
            },
            op => Command::Unknown(op),
        }
    }

    /// Short name for logs.
    pub fn name(&self) -> &'static str {
        match self {
            Command::DescribeDevice { .. } => "DESCRIBE_DEVICE",
            Command::ConfigureDeviceResources { .. } => "CONFIGURE_DEVICE_RESOURCES",
            Command::RegisterPageList => "REGISTER_PAGE_LIST",
            Command::UnregisterPageList => "UNREGISTER_PAGE_LIST",
            Command::CreateTxQueue(_) => "CREATE_TX_QUEUE",
            Command::CreateRxQueue(_) => "CREATE_RX_QUEUE",
            Command::DestroyTxQueue { .. } => "DESTROY_TX_QUEUE",
            Command::DestroyRxQueue { .. } => "DESTROY_RX_QUEUE",
            Command::DeconfigureDeviceResources => "DECONFIGURE_DEVICE_RESOURCES",
            Command::ConfigureRss(_) => "CONFIGURE_RSS",
            Command::SetDriverParameter { .. } => "SET_DRIVER_PARAMETER",
            Command::ReportStats { .. } => "REPORT_STATS",
            Command::ReportLinkSpeed { .. } => "REPORT_LINK_SPEED",
            Command::GetPtypeMap { .. } => "GET_PTYPE_MAP",
            Command::VerifyDriverCompatibility { .. } => "VERIFY_DRIVER_COMPATIBILITY",
            Command::QueryFlowRules { .. } => "QUERY_FLOW_RULES",
            Command::ReportNicTimestamp { .. } => "REPORT_NIC_TIMESTAMP",
            Command::QueryRss { .. } => "QUERY_RSS",
            Command::Extended { .. } => "EXTENDED_COMMAND",
            Command::Unknown(_) => "UNKNOWN",
        }
    }
}

/// Encoders used by the fake driver (tests, fuzzing) to build commands the
/// way gve_adminq.c does.
pub mod encode {
    use super::*;

    fn put16(b: &mut [u8], off: usize, v: u16) {
        b[off..off + 2].copy_from_slice(&v.to_be_bytes());
    }
    fn put32(b: &mut [u8], off: usize, v: u32) {
        b[off..off + 4].copy_from_slice(&v.to_be_bytes());
    }
    fn put64(b: &mut [u8], off: usize, v: u64) {
        b[off..off + 8].copy_from_slice(&v.to_be_bytes());
    }

    fn slot(op: u32) -> RawCommand {
        let mut s = [0u8; 64];
        put32(&mut s, 0, op);
        s
    }

    pub fn describe_device(addr: u64, len: u32) -> RawCommand {
        let mut s = slot(OP_DESCRIBE_DEVICE);
        put64(&mut s, 8, addr);
        put32(&mut s, 16, DEVICE_DESCRIPTOR_VERSION);
        put32(&mut s, 20, len);
        s
    }

    pub fn verify_driver_compatibility(addr: u64, len: u64) -> RawCommand {
        let mut s = slot(OP_VERIFY_DRIVER_COMPATIBILITY);
        put64(&mut s, 8, len);
        put64(&mut s, 16, addr);
        s
    }

    pub fn configure_device_resources(
        counter_array: u64,
        num_counters: u32,
        irq_db_addr: u64,
        num_irq_dbs: u32,
        stride: u32,
    ) -> RawCommand {
        let mut s = slot(OP_CONFIGURE_DEVICE_RESOURCES);
        put64(&mut s, 8, counter_array);
        put64(&mut s, 16, irq_db_addr);
        put32(&mut s, 24, num_counters);
        put32(&mut s, 28, num_irq_dbs);
        put32(&mut s, 32, stride);
        put32(&mut s, 36, 0);
        s[40] = QUEUE_FORMAT_DQO_RDA;
        s
    }

    pub fn deconfigure_device_resources() -> RawCommand {
        slot(OP_DECONFIGURE_DEVICE_RESOURCES)
    }

    pub fn get_ptype_map(addr: u64) -> RawCommand {
        let mut s = slot(OP_GET_PTYPE_MAP);
        put64(&mut s, 8, PTYPE_MAP_LEN);
        put64(&mut s, 16, addr);
        s
    }

    pub fn create_tx_queue(c: &CreateTxQueue) -> RawCommand {
        let mut s = slot(OP_CREATE_TX_QUEUE);
        put32(&mut s, 8, c.queue_id);
        put64(&mut s, 16, c.queue_resources_addr);
        put64(&mut s, 24, c.tx_ring_addr);
        put32(&mut s, 32, c.queue_page_list_id);
        put32(&mut s, 36, c.ntfy_id);
        put64(&mut s, 40, c.tx_comp_ring_addr);
        put16(&mut s, 48, c.tx_ring_size);
        put16(&mut s, 50, c.tx_comp_ring_size);
        s
    }

    pub fn create_rx_queue(c: &CreateRxQueue) -> RawCommand {
        let mut s = slot(OP_CREATE_RX_QUEUE);
        put32(&mut s, 8, c.queue_id);
        put32(&mut s, 12, c.index);
        put32(&mut s, 20, c.ntfy_id);
        put64(&mut s, 24, c.queue_resources_addr);
        put64(&mut s, 32, c.rx_desc_ring_addr);
        put64(&mut s, 40, c.rx_data_ring_addr);
        put32(&mut s, 48, c.queue_page_list_id);
        put16(&mut s, 52, c.rx_ring_size);
        put16(&mut s, 54, c.packet_buffer_size);
        put16(&mut s, 56, c.rx_buff_ring_size);
        s[58] = c.enable_rsc;
        put16(&mut s, 60, c.header_buffer_size);
        s
    }

    pub fn destroy_tx_queue(q: u32) -> RawCommand {
        let mut s = slot(OP_DESTROY_TX_QUEUE);
        put32(&mut s, 8, q);
        s
    }

    pub fn destroy_rx_queue(q: u32) -> RawCommand {
        let mut s = slot(OP_DESTROY_RX_QUEUE);
        put32(&mut s, 8, q);
        s
    }

    pub fn configure_rss(c: &ConfigureRss) -> RawCommand {
        let mut s = slot(OP_CONFIGURE_RSS);
        put16(&mut s, 8, c.hash_types);
        s[10] = c.hash_alg;
        put16(&mut s, 12, c.hash_key_size);
        put16(&mut s, 14, c.hash_lut_size);
        put64(&mut s, 16, c.hash_key_addr);
        put64(&mut s, 24, c.hash_lut_addr);
        s
    }

    pub fn report_stats(len: u64, addr: u64, interval: u64) -> RawCommand {
        let mut s = slot(OP_REPORT_STATS);
        put64(&mut s, 8, len);
        put64(&mut s, 16, addr);
        put64(&mut s, 24, interval);
        s
    }

    pub fn report_link_speed(addr: u64) -> RawCommand {
        let mut s = slot(OP_REPORT_LINK_SPEED);
        put64(&mut s, 8, addr);
        s
    }

    pub fn extended(inner_opcode: u32, inner_length: u32, inner_addr: u64) -> RawCommand {
        let mut s = slot(OP_EXTENDED_COMMAND);
        put32(&mut s, 8, inner_opcode);
        put32(&mut s, 12, inner_length);
        put64(&mut s, 16, inner_addr);
        s
    }

    pub fn query_flow_rules(opcode: u16, start: u32, addr: u64) -> RawCommand {
        let mut s = slot(OP_QUERY_FLOW_RULES);
        put16(&mut s, 8, opcode);
        put32(&mut s, 12, start);
        put64(&mut s, 16, 4096);
        put64(&mut s, 24, addr);
        s
    }

    pub fn query_rss(addr: u64) -> RawCommand {
        let mut s = slot(OP_QUERY_RSS);
        put64(&mut s, 8, 4096);
        put64(&mut s, 16, addr);
        s
    }

    /// The 92-byte inner CONFIGURE_FLOW_RULE command.
    pub fn flow_rule_cmd(opcode: u16, location: u32, rule: Option<&super::FlowRule>) -> Vec<u8> {
        let mut b = vec![0u8; FLOW_RULE_CMD_LEN];
        put16(&mut b, 0, opcode);
        if let Some(r) = rule {
            b[4..4 + FLOW_RULE_LEN].copy_from_slice(&r.to_bytes());
        }
        put32(&mut b, 88, location);
        b
    }
}

/// gve.h `struct gve_flow_spec`: addresses and ports kept in network byte
/// order exactly as the driver stores them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct FlowSpec {
    pub src_ip: [u8; 16],
    pub dst_ip: [u8; 16],
    /// src_port/dst_port, or the SPI for AH/ESP (same 4 bytes).
    pub ports: [u8; 4],
    pub tos: u8,
}

impl FlowSpec {
    pub fn parse(b: &[u8]) -> FlowSpec {
        let mut s = FlowSpec::default();
        if b.len() < 37 {
            return s;
        }
        s.src_ip.copy_from_slice(&b[0..16]);
        s.dst_ip.copy_from_slice(&b[16..32]);
        s.ports.copy_from_slice(&b[32..36]);
        s.tos = b[36];
        s
    }

    pub fn to_bytes(&self) -> [u8; FLOW_SPEC_LEN] {
        let mut b = [0u8; FLOW_SPEC_LEN];
        b[0..16].copy_from_slice(&self.src_ip);
        b[16..32].copy_from_slice(&self.dst_ip);
        b[32..36].copy_from_slice(&self.ports);
        b[36] = self.tos;
        b
    }
}

/// gve_adminq.h `struct gve_adminq_flow_rule`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct FlowRule {
    pub flow_type: u16,
    /// Destination RX queue.
    pub action: u16,
    pub key: FlowSpec,
    pub mask: FlowSpec,
}

impl FlowRule {
    /// Parse the 84-byte rule (`b.len() >= 84`, else a zero rule).
    pub fn parse(b: &[u8]) -> FlowRule {
        if b.len() < FLOW_RULE_LEN {
            return FlowRule::default();
        }
        FlowRule {
            flow_type: be16(b, 0),
            action: be16(b, 2),
            key: FlowSpec::parse(&b[4..4 + FLOW_SPEC_LEN]),
            mask: FlowSpec::parse(&b[4 + FLOW_SPEC_LEN..4 + 2 * FLOW_SPEC_LEN]),
        }
    }

    pub fn to_bytes(&self) -> [u8; FLOW_RULE_LEN] {
        let mut b = [0u8; FLOW_RULE_LEN];
        b[0..2].copy_from_slice(&self.flow_type.to_be_bytes());
        b[2..4].copy_from_slice(&self.action.to_be_bytes());
        b[4..4 + FLOW_SPEC_LEN].copy_from_slice(&self.key.to_bytes());
        b[4 + FLOW_SPEC_LEN..].copy_from_slice(&self.mask.to_bytes());
        b
    }
}

/// gve_adminq.h `struct gve_adminq_configure_flow_rule` (92 bytes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowRuleCmd {
    pub opcode: u16,
    pub rule: FlowRule,
    pub location: u32,
}

impl FlowRuleCmd {
    pub fn parse(b: &[u8]) -> Option<FlowRuleCmd> {
        if b.len() < FLOW_RULE_CMD_LEN {
            return None;
        }
        Some(FlowRuleCmd {
            opcode: be16(b, 0),
            rule: FlowRule::parse(&b[4..4 + FLOW_RULE_LEN]),
            location: be32(b, 88),
        })
    }
}

/// What the device advertises in DESCRIBE_DEVICE.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceDescription {
    pub max_registered_pages: u64,
    pub tx_queue_entries: u16,
    pub rx_queue_entries: u16,
    pub default_num_queues: u16,
    pub mtu: u16,
    pub counters: u16,
    pub mac: [u8; 6],
    /// DQO_RDA supported_features_mask (gates every feature option).
    pub features: u32,
    pub packet_buffer_size: u16,
    pub header_buffer_size: u16,
    pub max_flow_rules: u32,
    pub jumbo_max_mtu: Option<u16>,
    /// MODIFY_RING: (max_rx, max_tx, min_rx, min_tx).
    pub modify_ring: Option<(u16, u16, u16, u16)>,
    /// RSS_CONFIG: (key size, lut size).
    pub rss_config: Option<(u16, u16)>,
}

impl DeviceDescription {
    /// The descriptor plus its option list, as written at
    /// `device_descriptor_addr` (gve_adminq.h `struct gve_device_descriptor`,
    /// `struct gve_device_option`, option payload structs).
    pub fn encode(&self) -> Vec<u8> {
        let mut opts: Vec<(u16, Vec<u8>)> = Vec::new();
        // DQO_RDA: u32 supported_features_mask, u32 reserved.
        let mut p = self.features.to_be_bytes().to_vec();
        p.extend_from_slice(&[0; 4]);
        opts.push((DEV_OPT_ID_DQO_RDA, p));
        if self.features & SUP_BUFFER_SIZES_MASK != 0 {
            let mut p = SUP_BUFFER_SIZES_MASK.to_be_bytes().to_vec();
            p.extend_from_slice(&self.packet_buffer_size.to_be_bytes());
            p.extend_from_slice(&self.header_buffer_size.to_be_bytes());
            opts.push((DEV_OPT_ID_BUFFER_SIZES, p));
        }
        if self.features & SUP_FLOW_STEERING_MASK != 0 {
            let mut p = SUP_FLOW_STEERING_MASK.to_be_bytes().to_vec();
            p.extend_from_slice(&[0; 4]);
            p.extend_from_slice(&self.max_flow_rules.to_be_bytes());
            opts.push((DEV_OPT_ID_FLOW_STEERING, p));
        }
        if let Some(max_mtu) = self.jumbo_max_mtu {
            let mut p = SUP_JUMBO_FRAMES_MASK.to_be_bytes().to_vec();
            p.extend_from_slice(&max_mtu.to_be_bytes());
            p.extend_from_slice(&[0; 2]);
            opts.push((DEV_OPT_ID_JUMBO_FRAMES, p));
        }
        if let Some((max_rx, max_tx, min_rx, min_tx)) = self.modify_ring {
            let mut p = SUP_MODIFY_RING_MASK.to_be_bytes().to_vec();
            for v in [max_rx, max_tx, min_rx, min_tx] {
                p.extend_from_slice(&v.to_be_bytes());
            }
            opts.push((DEV_OPT_ID_MODIFY_RING, p));
        }
        if let Some((key, lut)) = self.rss_config {
            let mut p = SUP_RSS_CONFIG_MASK.to_be_bytes().to_vec();
            p.extend_from_slice(&key.to_be_bytes());
            p.extend_from_slice(&lut.to_be_bytes());
            opts.push((DEV_OPT_ID_RSS_CONFIG, p));
        }
        let total: usize = DEVICE_DESCRIPTOR_LEN
            + opts
                .iter()
                .map(|(_, p)| DEVICE_OPTION_HDR_LEN + p.len())
                .sum::<usize>();
        let mut d = Vec::with_capacity(total);
        d.extend_from_slice(&self.max_registered_pages.to_be_bytes());
        d.extend_from_slice(&[0; 2]);
        d.extend_from_slice(&self.tx_queue_entries.to_be_bytes());
        d.extend_from_slice(&self.rx_queue_entries.to_be_bytes());
        d.extend_from_slice(&self.default_num_queues.to_be_bytes());
        d.extend_from_slice(&self.mtu.to_be_bytes());
        d.extend_from_slice(&self.counters.to_be_bytes());
        d.extend_from_slice(&[0; 4]); // tx/rx_pages_per_qpl (QPL only)
        d.extend_from_slice(&self.mac);
        d.extend_from_slice(&(opts.len() as u16).to_be_bytes());
        d.extend_from_slice(&(total as u16).to_be_bytes());
        d.extend_from_slice(&[0; 6]);
        for (id, p) in &opts {
            d.extend_from_slice(&id.to_be_bytes());
            d.extend_from_slice(&(p.len() as u16).to_be_bytes());
            // required_features_mask must be 0 for every known option
            // (gve_adminq.h `enum gve_dev_opt_req_feat_mask`).
            d.extend_from_slice(&[0; 4]);
            d.extend_from_slice(p);
        }
        d
    }
}

/// A parsed device option, for the fake driver / tests: walks the option
/// list like gve_adminq.c `gve_process_device_options`.
pub fn parse_options(desc: &[u8]) -> Option<Vec<(u16, u32, Vec<u8>)>> {
    if desc.len() < DEVICE_DESCRIPTOR_LEN {
        return None;
    }
    let num = usize::from(be16(desc, 30));
    let total = usize::from(be16(desc, 32)).min(desc.len());
    let mut off = DEVICE_DESCRIPTOR_LEN;
    let mut out = Vec::new();
    for _ in 0..num {
        if off + DEVICE_OPTION_HDR_LEN > total {
            return None;
        }
        let id = be16(desc, off);
        let len = usize::from(be16(desc, off + 2));
        let req = be32(desc, off + 4);
        let end = off + DEVICE_OPTION_HDR_LEN + len;
        if end > total {
            return None;
        }
        out.push((id, req, desc[off + DEVICE_OPTION_HDR_LEN..end].to_vec()));
        off = end;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn struct_sizes_match_the_driver() {
        // static_asserts of gve_adminq.h
        assert_eq!(FLOW_RULE_CMD_LEN, 92);
        assert_eq!(QUERIED_FLOW_RULE_LEN, 88);
        assert_eq!(QUEUE_RESOURCES_LEN, 64);
        assert_eq!(PTYPE_MAP_LEN, 2048);
    }

    #[test]
    fn create_queue_round_trip() {
        let tx = CreateTxQueue {
            queue_id: 3,
            queue_resources_addr: 0x1000,
            tx_ring_addr: 0x2000,
            queue_page_list_id: RAW_ADDRESSING_QPL_ID,
            ntfy_id: 3,
            tx_comp_ring_addr: 0x3000,
            tx_ring_size: 512,
            tx_comp_ring_size: 512,
        };
        assert_eq!(
            Command::parse(&encode::create_tx_queue(&tx)),
            Command::CreateTxQueue(tx)
        );
        let rx = CreateRxQueue {
            queue_id: 1,
            index: 0,
            ntfy_id: 5,
            queue_resources_addr: 0x10,
            rx_desc_ring_addr: 0x20,
            rx_data_ring_addr: 0x30,
            queue_page_list_id: RAW_ADDRESSING_QPL_ID,
            rx_ring_size: 1024,
            packet_buffer_size: 2048,
            rx_buff_ring_size: 1024,
            enable_rsc: 1,
            header_buffer_size: 256,
        };
        assert_eq!(
            Command::parse(&encode::create_rx_queue(&rx)),
            Command::CreateRxQueue(rx)
        );
    }

    #[test]
    fn describe_encoding_parses_like_the_driver() {
        let d = DeviceDescription {
            max_registered_pages: 0,
            tx_queue_entries: 512,
            rx_queue_entries: 1024,
            default_num_queues: 0,
            mtu: 1500,
            counters: 8,
            mac: [2, 0, 0, 0, 0, 1],
            features: SUP_BUFFER_SIZES_MASK | SUP_FLOW_STEERING_MASK | SUP_MODIFY_RING_MASK,
            packet_buffer_size: 4096,
            header_buffer_size: 256,
            max_flow_rules: 64,
            jumbo_max_mtu: None,
            modify_ring: Some((4096, 4096, 64, 64)),
            rss_config: None,
        };
        let b = d.encode();
        assert_eq!(usize::from(be16(&b, 32)), b.len());
        let opts = parse_options(&b).unwrap();
        assert_eq!(opts.len(), 4);
        assert_eq!(opts[0].0, DEV_OPT_ID_DQO_RDA);
        assert_eq!(opts[0].2.len(), 8);
        assert!(opts.iter().all(|o| o.1 == 0));
        assert_eq!(&b[24..30], &[2, 0, 0, 0, 0, 1]);
    }
}
