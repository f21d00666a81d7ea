//! DQO descriptor formats (gve_desc_dqo.h). Little-endian, C bitfields
//! LSB-first ("Only little endian supported").

/// Size of a TX descriptor (all three kinds).
pub const TX_DESC_SIZE: u64 = 16;
/// Size of a TX completion descriptor (`struct gve_tx_compl_desc`).
pub const TX_COMPL_SIZE: u64 = 8;
/// Size of an RX buffer-queue descriptor (`struct gve_rx_desc_dqo`).
pub const RX_BUF_DESC_SIZE: u64 = 32;
/// Size of an RX completion descriptor (`struct gve_rx_compl_desc_dqo`).
pub const RX_COMPL_SIZE: u64 = 32;

/// `GVE_TX_PKT_DESC_DTYPE_DQO`.
pub const TX_PKT_DESC_DTYPE: u8 = 0x0c;
/// `GVE_TX_TSO_CTX_DESC_DTYPE_DQO`.
pub const TX_TSO_CTX_DESC_DTYPE: u8 = 0x05;
/// `GVE_TX_GENERAL_CTX_DESC_DTYPE_DQO`.
pub const TX_GENERAL_CTX_DESC_DTYPE: u8 = 0x04;
/// `GVE_TX_MAX_BUF_SIZE_DQO` (14-bit buf_size).
pub const TX_MAX_BUF_SIZE: u16 = 16 * 1024 - 1;
/// `GVE_TX_MIN_TSO_MSS_DQO`.
pub const TX_MIN_TSO_MSS: u16 = 88;
/// `GVE_TX_MAX_TSO_MSS_DQO` (HW limit).
pub const TX_MAX_TSO_MSS: u16 = 9728;
/// `GVE_TX_MAX_HDR_SIZE_DQO`.
pub const TX_MAX_HDR_SIZE: u8 = 255;
/// gve.h `GVE_DQO_TX_MAX`: largest TSO payload (`tso_total_len`).
pub const DQO_TX_MAX: u32 = 0x3ffff;

/// `GVE_COMPL_TYPE_DQO_PKT`.
pub const COMPL_TYPE_PKT: u16 = 0x2;
/// `GVE_COMPL_TYPE_DQO_DESC`.
pub const COMPL_TYPE_DESC: u16 = 0x4;
/// `GVE_COMPL_TYPE_DQO_MISS` (never emitted).
pub const COMPL_TYPE_MISS: u16 = 0x1;
/// `GVE_COMPL_TYPE_DQO_REINJECTION` (never emitted).
pub const COMPL_TYPE_REINJECTION: u16 = 0x3;

/// `GVE_RX_BUF_THRESH_DQO`: the driver rings the RX doorbell only when its
/// tail is a multiple of this.
pub const RX_BUF_THRESH: u32 = 32;

/// One TX descriptor as the device sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TxDesc {
    /// `struct gve_tx_pkt_desc_dqo`.
    Pkt {
        buf_addr: u64,
        end_of_packet: bool,
        checksum_offload_enable: bool,
        report_event: bool,
        compl_tag: u16,
        buf_size: u16,
    },
    /// `struct gve_tx_tso_context_desc_dqo`.
    TsoCtx {
        tso_total_len: u32,
        mss: u16,
        header_len: u8,
        tso: bool,
    },
    /// `struct gve_tx_general_context_desc_dqo` (metadata only).
    GeneralCtx,
    /// Any other dtype.
    Unknown(u8),
}

impl TxDesc {
    /// Decode 16 bytes; the dtype is always bits 4:0 of byte 8.
    pub fn parse(b: &[u8; 16]) -> TxDesc {
        let dtype = b[8] & 0x1f;
        match dtype {
            TX_PKT_DESC_DTYPE => TxDesc::Pkt {
                buf_addr: u64::from_le_bytes(b[0..8].try_into().unwrap_or([0; 8])),
                end_of_packet: b[8] & (1 << 5) != 0,
                checksum_offload_enable: b[8] & (1 << 6) != 0,
                report_event: b[8] & (1 << 7) != 0,
                compl_tag: u16::from_le_bytes([b[12], b[13]]),
                buf_size: u16::from_le_bytes([b[14], b[15]]) & 0x3fff,
            },
            TX_TSO_CTX_DESC_DTYPE => TxDesc::TsoCtx {
                tso_total_len: u32::from_le_bytes([b[0], b[1], b[2], 0]),
                mss: u16::from_le_bytes([b[4], b[5]]) & 0x3fff,
                header_len: b[6],
                tso: b[8] & (1 << 5) != 0,
            },
            TX_GENERAL_CTX_DESC_DTYPE => TxDesc::GeneralCtx,
            other => TxDesc::Unknown(other),
        }
    }

    /// Encode (fake driver), mirroring gve_tx_dqo.c's fill functions.
    pub fn encode(&self) -> [u8; 16] {
        let mut b = [0u8; 16];
        match *self {
            TxDesc::Pkt {
                buf_addr,
                end_of_packet,
                checksum_offload_enable,
                report_event,
                compl_tag,
                buf_size,
            } => {
                b[0..8].copy_from_slice(&buf_addr.to_le_bytes());
                b[8] = TX_PKT_DESC_DTYPE
                    | (u8::from(end_of_packet) << 5)
                    | (u8::from(checksum_offload_enable) << 6)
                    | (u8::from(report_event) << 7);
                b[12..14].copy_from_slice(&compl_tag.to_le_bytes());
                b[14..16].copy_from_slice(&(buf_size & 0x3fff).to_le_bytes());
            }
            TxDesc::TsoCtx {
                tso_total_len,
                mss,
                header_len,
                tso,
            } => {
                b[0..3].copy_from_slice(&tso_total_len.to_le_bytes()[0..3]);
                b[4..6].copy_from_slice(&(mss & 0x3fff).to_le_bytes());
                b[6] = header_len;
                b[8] = TX_TSO_CTX_DESC_DTYPE | (u8::from(tso) << 5);
            }
            TxDesc::GeneralCtx => b[8] = TX_GENERAL_CTX_DESC_DTYPE,
            TxDesc::Unknown(d) => b[8] = d & 0x1f,
        }
        b
    }
}

/// `struct gve_tx_compl_desc`: bits 10:0 id, 13:11 type, 15 generation,
/// then `tx_head`/`completion_tag`.
pub fn encode_tx_compl(queue_id: u16, ctype: u16, generation: bool, value: u16) -> [u8; 8] {
    let w = (queue_id & 0x7ff) | ((ctype & 0x7) << 11) | (u16::from(generation) << 15);
    let mut b = [0u8; 8];
    b[0..2].copy_from_slice(&w.to_le_bytes());
    b[2..4].copy_from_slice(&value.to_le_bytes());
    b
}

/// Decoded TX completion (fake driver).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TxCompl {
    pub id: u16,
    pub ctype: u16,
    pub generation: bool,
    pub value: u16,
}

pub fn parse_tx_compl(b: &[u8; 8]) -> TxCompl {
    let w = u16::from_le_bytes([b[0], b[1]]);
    TxCompl {
        id: w & 0x7ff,
        ctype: (w >> 11) & 0x7,
        generation: w & 0x8000 != 0,
        value: u16::from_le_bytes([b[2], b[3]]),
    }
}

/// `struct gve_rx_desc_dqo`: a buffer posted on the buffer queue.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RxBufDesc {
    pub buf_id: u16,
    pub buf_addr: u64,
    pub header_buf_addr: u64,
}

impl RxBufDesc {
    pub fn parse(b: &[u8]) -> RxBufDesc {
        let le64 = |o: usize| {
            let mut a = [0u8; 8];
            if let Some(s) = b.get(o..o + 8) {
                a.copy_from_slice(s);
            }
            u64::from_le_bytes(a)
        };
        RxBufDesc {
            buf_id: b.get(0..2).map_or(0, |s| u16::from_le_bytes([s[0], s[1]])),
            buf_addr: le64(8),
            header_buf_addr: le64(16),
        }
    }

    pub fn encode(&self) -> [u8; 32] {
        let mut b = [0u8; 32];
        b[0..2].copy_from_slice(&self.buf_id.to_le_bytes());
        b[8..16].copy_from_slice(&self.buf_addr.to_le_bytes());
        b[16..24].copy_from_slice(&self.header_buf_addr.to_le_bytes());
        b
    }
}

/// `struct gve_rx_compl_desc_dqo` fields the device fills.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RxCompl {
    pub ipv6_ex_add: bool,
    pub rx_error: bool,
    pub packet_type: u16,
    pub packet_len: u16,
    pub generation: bool,
    pub header_len: u16,
    pub rsc: bool,
    pub split_header: bool,
    pub end_of_packet: bool,
    pub header_buffer_overflow: bool,
    pub l3_l4_processed: bool,
    pub csum_ip_err: bool,
    pub csum_l4_err: bool,
    pub buf_id: u16,
    /// `rsc_seg_len` (union with `raw_cs`): the MSS of a coalesced packet,
    /// read from the end-of-packet completion when `rsc` is set.
    pub rsc_seg_len: u16,
    pub hash: u32,
}

/// `rxdid`: "Must be 1" (gve_desc_dqo.h).
pub const RX_COMPL_RXDID: u8 = 1;

impl RxCompl {
    pub fn encode(&self) -> [u8; 32] {
        let mut b = [0u8; 32];
        b[0] = RX_COMPL_RXDID;
        b[1] = (u8::from(self.ipv6_ex_add) << 1) | (u8::from(self.rx_error) << 2);
        b[2..4].copy_from_slice(&(self.packet_type & 0x3ff).to_le_bytes());
        let w = (self.packet_len & 0x3fff) | (u16::from(self.generation) << 14);
        b[4..6].copy_from_slice(&w.to_le_bytes());
        let w = (self.header_len & 0x3ff)
            | (u16::from(self.rsc) << 10)
            | (u16::from(self.split_header) << 11);
        b[6..8].copy_from_slice(&w.to_le_bytes());
        b[8] = 1 // descriptor_done
            | (u8::from(self.end_of_packet) << 1)
            | (u8::from(self.header_buffer_overflow) << 2)
            | (u8::from(self.l3_l4_processed) << 3)
            | (u8::from(self.csum_ip_err) << 4)
            | (u8::from(self.csum_l4_err) << 5);
        b[12..14].copy_from_slice(&self.buf_id.to_le_bytes());
        b[14..16].copy_from_slice(&self.rsc_seg_len.to_le_bytes());
        b[16..20].copy_from_slice(&self.hash.to_le_bytes());
        b
    }

    pub fn parse(b: &[u8; 32]) -> RxCompl {
        let w45 = u16::from_le_bytes([b[4], b[5]]);
        let w67 = u16::from_le_bytes([b[6], b[7]]);
        RxCompl {
            ipv6_ex_add: b[1] & 2 != 0,
            rx_error: b[1] & 4 != 0,
            packet_type: u16::from_le_bytes([b[2], b[3]]) & 0x3ff,
            packet_len: w45 & 0x3fff,
            generation: w45 & (1 << 14) != 0,
            header_len: w67 & 0x3ff,
            rsc: w67 & (1 << 10) != 0,
            split_header: w67 & (1 << 11) != 0,
            end_of_packet: b[8] & 2 != 0,
            header_buffer_overflow: b[8] & 4 != 0,
            l3_l4_processed: b[8] & 8 != 0,
            csum_ip_err: b[8] & 0x10 != 0,
            csum_l4_err: b[8] & 0x20 != 0,
            buf_id: u16::from_le_bytes([b[12], b[13]]),
            rsc_seg_len: u16::from_le_bytes([b[14], b[15]]),
            hash: u32::from_le_bytes([b[16], b[17], b[18], b[19]]),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tx_desc_round_trip() {
        let d = TxDesc::Pkt {
            buf_addr: 0x1234_5678_9abc,
            end_of_packet: true,
            checksum_offload_enable: true,
            report_event: false,
            compl_tag: 77,
            buf_size: 16383,
        };
        assert_eq!(TxDesc::parse(&d.encode()), d);
        let t = TxDesc::TsoCtx {
            tso_total_len: 0x3ffff,
            mss: 1448,
            header_len: 66,
            tso: true,
        };
        assert_eq!(TxDesc::parse(&t.encode()), t);
        assert_eq!(
            TxDesc::parse(&TxDesc::GeneralCtx.encode()),
            TxDesc::GeneralCtx
        );
    }

    #[test]
    fn tx_compl_layout() {
        // byte 1 = type<<3 | gen<<7 | id[10:8]
        let b = encode_tx_compl(0x105, COMPL_TYPE_PKT, true, 0xbeef);
        assert_eq!(b[1], (2 << 3) | 0x80 | 1);
        assert_eq!(b[0], 5);
        let c = parse_tx_compl(&b);
        assert_eq!(
            (c.id, c.ctype, c.generation, c.value),
            (0x105, 2, true, 0xbeef)
        );
    }

    #[test]
    fn rx_compl_round_trip() {
        let c = RxCompl {
            packet_type: 7,
            packet_len: 1448,
            generation: true,
            header_len: 86,
            split_header: true,
            end_of_packet: true,
            l3_l4_processed: true,
            buf_id: 1023,
            hash: 0xdead_beef,
            ..Default::default()
        };
        let b = c.encode();
        assert_eq!(b[0], 1);
        assert_eq!(RxCompl::parse(&b), c);
        let c = RxCompl {
            rsc: true,
            rsc_seg_len: 1448,
            ..c
        };
        let b = c.encode();
        assert_eq!(b[7] & 0x04, 0x04, "rsc is bit 10 of the header_len word");
        assert_eq!(u16::from_le_bytes([b[14], b[15]]), 1448);
        assert_eq!(RxCompl::parse(&b), c);
    }
}
