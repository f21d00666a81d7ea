//! Receive-side coalescing (HW-GRO / RSC) as the gve driver consumes it
//! (gve_rx_dqo.c `gve_rx_complete_skb` → `gve_rx_complete_rsc`).
//!
//! Conservative, modelled on Linux GRO: only TCP over IPv4 without options
//! or fragmentation, or IPv6 without extension headers; the frames of one
//! merge have byte-identical headers except IP length/ID/checksum and TCP
//! sequence/flags/checksum; contiguous sequence numbers; every segment but
//! the last carries exactly the first one's payload length (the MSS); flags
//! exactly ACK (PSH allowed on the last one only); checksums verified; at
//! most 65535 bytes of IP packet. The merged frame keeps the first
//! segment's headers with the IP length rewritten (IPv4 header checksum
//! recomputed) and PSH OR-ed in from the last segment; the TCP checksum
//! field is left as is (the completion says the device verified it).

use crate::packet::{L3, L4, fill_ipv4_checksum, parse, verify_checksums};

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_PSH: u8 = 0x08;
pub const TCP_ACK: u8 = 0x10;
pub const TCP_URG: u8 = 0x20;
pub const TCP_ECE: u8 = 0x40;
pub const TCP_CWR: u8 = 0x80;

/// Largest merged IP packet (IPv4 `tot_len`, and IPv6 header + payload).
pub const MAX_IP_LEN: usize = 65535;

/// A TCP segment that may take part in a merge.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Seg {
    pub v4: bool,
    /// Offset of the IP header (= L2 length).
    pub ip_off: usize,
    pub tcp_off: usize,
    /// End of the TCP header (options included): where the payload starts.
    pub hdr_end: usize,
    pub payload: usize,
    pub seq: u32,
    pub flags: u8,
    pub ip_id: u16,
}

fn be16(f: &[u8], off: usize) -> Option<u16> {
    Some(u16::from_be_bytes([
        *f.get(off)?,
        *f.get(off.checked_add(1)?)?,
    ]))
}

/// `frame` as a mergeable segment: TCP over plain IPv4/IPv6, IP length
/// exactly the frame (no Ethernet padding), checksums verified correct,
/// flags ACK or ACK|PSH, payload not empty.
pub fn segment(frame: &[u8]) -> Option<Seg> {
    let p = parse(frame);
    let (v4, ip_off) = match p.l3 {
        L3::Ipv4 {
            off,
            ihl: 20,
            fragment: false,
        } => (true, off),
        L3::Ipv6 {
            off,
            hdr_len: 40,
            ex_add: false,
            fragment: false,
        } => (false, off),
        _ => return None,
    };
    let L4::Tcp {
        off: tcp_off,
        hdr_len,
    } = p.l4
    else {
        return None;
    };
    let hdr_end = tcp_off.checked_add(hdr_len)?;
    let ip_len = if v4 {
        usize::from(be16(frame, ip_off.checked_add(2)?)?)
    } else {
        40usize.checked_add(usize::from(be16(frame, ip_off.checked_add(4)?)?))?
    };
    if ip_off.checked_add(ip_len)? != frame.len() || hdr_end >= frame.len() {
        return None;
    }
    let c = verify_checksums(frame, &p);
    if !c.l3_l4_processed || c.ip_err || c.l4_err {
        return None;
    }
    let flags = *frame.get(tcp_off.checked_add(13)?)?;
    if flags & !(TCP_ACK | TCP_PSH) != 0 || flags & TCP_ACK == 0 {
        return None;
    }
    let seq = u32::from_be_bytes(
        frame
            .get(tcp_off.checked_add(4)?..tcp_off.checked_add(8)?)?
            .try_into()
            .ok()?,
    );
    let ip_id = if v4 {
        be16(frame, ip_off.checked_add(4)?)?
    } else {
        0
    };
    Some(Seg {
        v4,
        ip_off,
        tcp_off,
        hdr_end,
        payload: frame.len() - hdr_end,
        seq,
        flags,
        ip_id,
    })
}

/// Header bytes that may differ between segments of one merge.
fn variable(s: &Seg, i: usize) -> bool {
    let ip = i.wrapping_sub(s.ip_off);
    let tcp = i.wrapping_sub(s.tcp_off);
    let ip_var = if s.v4 {
        // total length, identification, header checksum
        (2..6).contains(&ip) || (10..12).contains(&ip)
    } else {
        // payload length
        (4..6).contains(&ip)
    };
    // sequence number, flags, checksum
    ip_var || (4..8).contains(&tcp) || tcp == 13 || (16..18).contains(&tcp)
}

/// Same flow and same everything else: MAC header, IP addresses, TOS/TTL,
/// DF, ports, ACK number, window, data offset, urgent pointer, options.
fn same_headers(fa: &[u8], a: &Seg, fb: &[u8], b: &Seg) -> bool {
    if (a.v4, a.ip_off, a.tcp_off, a.hdr_end) != (b.v4, b.ip_off, b.tcp_off, b.hdr_end) {
        return false;
    }
    let (Some(ha), Some(hb)) = (fa.get(..a.hdr_end), fb.get(..b.hdr_end)) else {
        return false;
    };
    ha.iter()
        .zip(hb)
        .enumerate()
        .all(|(i, (x, y))| x == y || variable(a, i))
}

/// A planned merge of the first `segs` frames.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Plan {
    pub segs: usize,
    /// Length of the merged frame.
    pub len: usize,
    /// `rsc_seg_len`: the first segment's payload length.
    pub seg_len: u16,
    pub first: Seg,
}

/// How many of `frames` (in order, from the first) coalesce. `fits(len)`
/// says whether a merged frame of `len` bytes still fits (buffers).
/// Returns `None` unless at least two merge.
pub fn plan<'a>(
    frames: impl IntoIterator<Item = &'a [u8]>,
    fits: impl Fn(usize) -> bool,
) -> Option<Plan> {
    let mut it = frames.into_iter();
    let f0 = it.next()?;
    let first = segment(f0)?;
    let seg_len = u16::try_from(first.payload).ok()?;
    if first.flags & TCP_PSH != 0 {
        return None;
    }
    let mss = first.payload;
    let mut len = f0.len();
    let mut segs = 1usize;
    let mut next_seq = first.seq.wrapping_add(u32::from(seg_len));
    // IPv4 ID: incrementing (TSO) or fixed with DF (Linux GRO accepts both).
    let df = first.v4 && f0.get(first.ip_off + 6).is_some_and(|b| b & 0x40 != 0);
    let mut incrementing = None;
    for f in it {
        let Some(s) = segment(f) else { break };
        if !same_headers(f0, &first, f, &s) || s.seq != next_seq || s.payload > mss {
            break;
        }
        if first.v4 {
            let step = s.ip_id.wrapping_sub(first.ip_id);
            let inc = *incrementing.get_or_insert(step != 0);
            let ok = if inc {
                usize::from(step) == segs
            } else {
                df && step == 0
            };
            if !ok {
                break;
            }
        }
        let Some(new_len) = len.checked_add(s.payload) else {
            break;
        };
        if new_len - first.ip_off > MAX_IP_LEN || !fits(new_len) {
            break;
        }
        len = new_len;
        segs += 1;
        // s.payload <= mss <= u16::MAX
        next_seq = next_seq.wrapping_add(s.payload as u32);
        if s.flags & TCP_PSH != 0 || s.payload < mss {
            break;
        }
    }
    (segs >= 2).then_some(Plan {
        segs,
        len,
        seg_len,
        first,
    })
}

/// Build the merged frame of `frames` (which `plan` accepted).
pub fn merge(frames: &[&[u8]], p: &Plan) -> Vec<u8> {
    let mut m = Vec::with_capacity(p.len);
    let s = &p.first;
    for (i, f) in frames.iter().enumerate() {
        let part = if i == 0 {
            f.get(..)
        } else {
            f.get(s.hdr_end..)
        };
        m.extend_from_slice(part.unwrap_or_default());
    }
    let last_flags = frames
        .last()
        .and_then(|f| f.get(s.tcp_off + 13))
        .copied()
        .unwrap_or(0);
    if let Some(b) = m.get_mut(s.tcp_off + 13) {
        *b |= last_flags & TCP_PSH;
    }
    let ip_len = m.len().saturating_sub(s.ip_off);
    if s.v4 {
        let tot = u16::try_from(ip_len).unwrap_or(u16::MAX);
        if let Some(w) = m.get_mut(s.ip_off + 2..s.ip_off + 4) {
            w.copy_from_slice(&tot.to_be_bytes());
        }
        fill_ipv4_checksum(&mut m, s.ip_off, 20);
    } else {
        let pl = u16::try_from(ip_len.saturating_sub(40)).unwrap_or(u16::MAX);
        if let Some(w) = m.get_mut(s.ip_off + 4..s.ip_off + 6) {
            w.copy_from_slice(&pl.to_be_bytes());
        }
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::build;

    const A: [u8; 6] = [2, 0, 0, 0, 0, 1];

    fn seg(seq: u32, flags: u8, n: usize) -> Vec<u8> {
        build::tcp4(A, A, [1; 4], [2; 4], 1, 2, seq, flags, &vec![7u8; n])
    }

    #[test]
    fn merges_contiguous_and_stops_at_rules() {
        let f = [seg(0, 0x10, 100), seg(100, 0x10, 100), seg(200, 0x18, 50)];
        let refs: Vec<&[u8]> = f.iter().map(Vec::as_slice).collect();
        let p = plan(refs.iter().copied(), |_| true).unwrap();
        assert_eq!((p.segs, p.seg_len, p.len), (3, 100, 54 + 250));
        let m = merge(&refs, &p);
        assert_eq!(m.len(), 304);
        assert_eq!(u16::from_be_bytes([m[16], m[17]]), 290);
        assert_eq!(crate::packet::checksum(&m[14..34]), 0);
        assert_eq!(m[47], 0x18);
        // Gap, FIN, short segment in the middle, budget.
        let g = [seg(0, 0x10, 100), seg(101, 0x10, 100)];
        assert!(plan(g.iter().map(Vec::as_slice), |_| true).is_none());
        let g = [seg(0, 0x11, 100), seg(100, 0x10, 100)];
        assert!(plan(g.iter().map(Vec::as_slice), |_| true).is_none());
        let g = [seg(0, 0x10, 100), seg(100, 0x10, 50), seg(150, 0x10, 50)];
        assert_eq!(plan(g.iter().map(Vec::as_slice), |_| true).unwrap().segs, 2);
        assert!(plan(f.iter().map(Vec::as_slice), |l| l < 200).is_none());
        assert_eq!(
            plan(f.iter().map(Vec::as_slice), |l| l < 300).unwrap().segs,
            2
        );
    }
}
