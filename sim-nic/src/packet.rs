//! Ethernet/IP/TCP/UDP parsing, Internet checksums, TX checksum offload and
//! TSO/USO segmentation (Linux software-GSO semantics), RX checksum checks.
//!
//! Everything here works on untrusted bytes: every access is bounds-checked
//! and malformed frames parse as "unknown".

pub const ETH_HLEN: usize = 14;
pub const ETHERTYPE_IPV4: u16 = 0x0800;
pub const ETHERTYPE_IPV6: u16 = 0x86dd;
pub const ETHERTYPE_VLAN: u16 = 0x8100;
pub const ETHERTYPE_QINQ: u16 = 0x88a8;
pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_ICMPV6: u8 = 58;
pub const IPPROTO_SCTP: u8 = 132;
const IPV6_HOPOPTS: u8 = 0;
const IPV6_ROUTING: u8 = 43;
const IPV6_FRAGMENT: u8 = 44;
const IPV6_AH: u8 = 51;
const IPV6_DSTOPTS: u8 = 60;

const TCP_FIN: u8 = 0x01;
const TCP_PSH: u8 = 0x08;
const TCP_CWR: u8 = 0x80;

/// L3 of a parsed frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum L3 {
    None,
    Ipv4 {
        /// Offset of the IPv4 header.
        off: usize,
        ihl: usize,
        fragment: bool,
    },
    Ipv6 {
        off: usize,
        /// 40 + extension headers before the L4 header.
        hdr_len: usize,
        /// Destination options or routing header present (`ipv6_ex_add`).
        ex_add: bool,
        fragment: bool,
    },
}

/// L4 of a parsed frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum L4 {
    None,
    Tcp { off: usize, hdr_len: usize },
    Udp { off: usize },
    Icmp { off: usize },
    Sctp { off: usize },
    Other { proto: u8 },
}

/// Result of [`parse`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Parsed {
    /// Ethernet header plus VLAN tags.
    pub l2_len: usize,
    pub ethertype: u16,
    pub l3: L3,
    pub l4: L4,
}

impl Parsed {
    /// Bytes of all headers the device understands (L2 + L3 + L4 header),
    /// i.e. where header split puts the boundary. `None` if the frame has no
    /// L4 header the device can split at.
    pub fn split_offset(&self) -> Option<usize> {
        match self.l4 {
            L4::Tcp { off, hdr_len } => Some(off + hdr_len),
            L4::Udp { off } => Some(off + 8),
            _ => None,
        }
    }

    /// End of the L3 headers, if any.
    pub fn l3_end(&self) -> Option<usize> {
        match self.l3 {
            L3::Ipv4 { off, ihl, .. } => Some(off + ihl),
            L3::Ipv6 { off, hdr_len, .. } => Some(off + hdr_len),
            L3::None => None,
        }
    }

    pub fn l4_offset(&self) -> Option<usize> {
        match self.l4 {
            L4::Tcp { off, .. } | L4::Udp { off } | L4::Icmp { off } | L4::Sctp { off } => {
                Some(off)
            }
            _ => None,
        }
    }
}

fn be16(f: &[u8], off: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*f.get(off)?, *f.get(off + 1)?]))
}

fn be32(f: &[u8], off: usize) -> Option<u32> {
    Some(u32::from_be_bytes(f.get(off..off + 4)?.try_into().ok()?))
}

/// Parse as far as possible. Never panics.
pub fn parse(f: &[u8]) -> Parsed {
    let mut p = Parsed {
        l2_len: 0,
        ethertype: 0,
        l3: L3::None,
        l4: L4::None,
    };
    let Some(mut et) = be16(f, 12) else {
        return p;
    };
    let mut off = ETH_HLEN;
    // Up to two VLAN tags (802.1Q, 802.1ad).
    for _ in 0..2 {
        if et == ETHERTYPE_VLAN || et == ETHERTYPE_QINQ {
            match be16(f, off + 2) {
                Some(e) => {
                    et = e;
                    off += 4;
                }
                None => return p,
            }
        }
    }
    p.l2_len = off;
    p.ethertype = et;
    let (proto, l4off) = match et {
        ETHERTYPE_IPV4 => {
            let Some(&vihl) = f.get(off) else { return p };
            let ihl = usize::from(vihl & 0xf) * 4;
            if vihl >> 4 != 4 || ihl < 20 || f.len() < off + ihl {
                return p;
            }
            let frag = be16(f, off + 6).unwrap_or(0);
            let fragment = frag & 0x3fff != 0; // MF or offset
            p.l3 = L3::Ipv4 { off, ihl, fragment };
            if fragment {
                // Only the first fragment carries the L4 header; treat all
                // fragments as "L4 unknown" (hash and checksum are L3 only).
                return p;
            }
            (f[off + 9], off + ihl)
        }
        ETHERTYPE_IPV6 => {
            if f.len() < off + 40 || f[off] >> 4 != 6 {
                return p;
            }
            let mut next = f[off + 6];
            let mut cur = off + 40;
            let mut ex_add = false;
            let mut fragment = false;
            // Walk at most 8 extension headers.
            for _ in 0..8 {
                match next {
                    IPV6_HOPOPTS | IPV6_ROUTING | IPV6_DSTOPTS => {
                        let (Some(&nh), Some(&len)) = (f.get(cur), f.get(cur + 1)) else {
                            return p;
                        };
                        if next != IPV6_HOPOPTS {
                            ex_add = true;
                        }
                        next = nh;
                        cur += (usize::from(len) + 1) * 8;
                    }
                    IPV6_FRAGMENT => {
                        let Some(&nh) = f.get(cur) else { return p };
                        fragment = true;
                        next = nh;
                        cur += 8;
                    }
                    IPV6_AH => {
                        let (Some(&nh), Some(&len)) = (f.get(cur), f.get(cur + 1)) else {
                            return p;
                        };
                        next = nh;
                        cur += (usize::from(len) + 2) * 4;
                    }
                    _ => break,
                }
            }
            if cur > f.len() {
                return p;
            }
            p.l3 = L3::Ipv6 {
                off,
                hdr_len: cur - off,
                ex_add,
                fragment,
            };
            if fragment {
                return p;
            }
            (next, cur)
        }
        _ => return p,
    };
    p.l4 = match proto {
        IPPROTO_TCP => {
            let Some(&doff) = f.get(l4off + 12) else {
                return p;
            };
            let hdr_len = usize::from(doff >> 4) * 4;
            if hdr_len < 20 || f.len() < l4off + hdr_len {
                return p;
            }
            L4::Tcp {
                off: l4off,
                hdr_len,
            }
        }
        IPPROTO_UDP if f.len() >= l4off + 8 => L4::Udp { off: l4off },
        IPPROTO_ICMP | IPPROTO_ICMPV6 if f.len() >= l4off + 4 => L4::Icmp { off: l4off },
        IPPROTO_SCTP if f.len() >= l4off + 12 => L4::Sctp { off: l4off },
        IPPROTO_UDP | IPPROTO_ICMP | IPPROTO_ICMPV6 | IPPROTO_SCTP => L4::None,
        proto => L4::Other { proto },
    };
    p
}

/// One's-complement sum of `data` added to `acc` (not folded).
pub fn csum_add(mut acc: u32, data: &[u8]) -> u32 {
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        acc = acc.wrapping_add(u32::from(u16::from_be_bytes([c[0], c[1]])));
        // Fold early so the u32 never overflows on huge inputs.
        if acc > 0xffff_0000 {
            acc = (acc & 0xffff) + (acc >> 16);
        }
    }
    if let [b] = chunks.remainder() {
        acc = acc.wrapping_add(u32::from(*b) << 8);
    }
    acc
}

/// Fold and complement.
pub fn csum_fold(mut acc: u32) -> u16 {
    while acc >> 16 != 0 {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    !(acc as u16)
}

/// Internet checksum of `data`.
pub fn checksum(data: &[u8]) -> u16 {
    csum_fold(csum_add(0, data))
}

/// Pseudo-header sum for the L4 protocol `proto` of length `len`.
fn pseudo_sum(f: &[u8], l3: L3, proto: u8, len: usize) -> Option<u32> {
    let mut acc = 0u32;
    match l3 {
        L3::Ipv4 { off, .. } => {
            acc = csum_add(acc, f.get(off + 12..off + 20)?);
        }
        L3::Ipv6 { off, .. } => {
            acc = csum_add(acc, f.get(off + 8..off + 40)?);
        }
        L3::None => return None,
    }
    acc = csum_add(acc, &[0, proto]);
    let len = u32::try_from(len).ok()?;
    acc = csum_add(acc, &len.to_be_bytes());
    Some(acc)
}

/// L4 protocol number and checksum-field offset for `l4`.
fn l4_proto_and_field(p: &Parsed) -> Option<(u8, usize, usize)> {
    let v6 = matches!(p.l3, L3::Ipv6 { .. });
    match p.l4 {
        L4::Tcp { off, .. } => Some((IPPROTO_TCP, off, off + 16)),
        L4::Udp { off } => Some((IPPROTO_UDP, off, off + 6)),
        L4::Icmp { off } => Some((if v6 { IPPROTO_ICMPV6 } else { IPPROTO_ICMP }, off, off + 2)),
        _ => None,
    }
}

/// Length of the L3 payload according to the IP header (clamped to the
/// frame), i.e. where the L4 segment ends. Trailing Ethernet padding is not
/// part of it.
fn l4_end(f: &[u8], p: &Parsed) -> Option<usize> {
    let end = match p.l3 {
        L3::Ipv4 { off, .. } => off + usize::from(be16(f, off + 2)?),
        L3::Ipv6 { off, .. } => off + 40 + usize::from(be16(f, off + 4)?),
        L3::None => return None,
    };
    (end <= f.len()).then_some(end)
}

/// Compute and store the full L4 checksum (pseudo-header + L4 header +
/// payload) of `frame`. Returns false if the frame is not a TCP/UDP/ICMP
/// packet the device can parse (then it is left unchanged).
pub fn fill_l4_checksum(frame: &mut [u8]) -> bool {
    let p = parse(frame);
    let Some((proto, l4off, field)) = l4_proto_and_field(&p) else {
        return false;
    };
    let Some(end) = l4_end(frame, &p) else {
        return false;
    };
    if end < field + 2 || l4off > end {
        return false;
    }
    frame[field] = 0;
    frame[field + 1] = 0;
    let len = end - l4off;
    let acc = if proto == IPPROTO_ICMP {
        0
    } else {
        match pseudo_sum(frame, p.l3, proto, len) {
            Some(a) => a,
            None => return false,
        }
    };
    let mut c = csum_fold(csum_add(acc, &frame[l4off..end]));
    if proto == IPPROTO_UDP && c == 0 {
        c = 0xffff;
    }
    frame[field..field + 2].copy_from_slice(&c.to_be_bytes());
    true
}

/// Recompute the IPv4 header checksum in place.
pub fn fill_ipv4_checksum(frame: &mut [u8], off: usize, ihl: usize) {
    if frame.len() < off + ihl || ihl < 20 {
        return;
    }
    frame[off + 10] = 0;
    frame[off + 11] = 0;
    let c = checksum(&frame[off..off + ihl]);
    frame[off + 10..off + 12].copy_from_slice(&c.to_be_bytes());
}

/// What RX checksum validation found (gve_rx_dqo.c `gve_rx_skb_csum` reads
/// these bits).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RxCsum {
    /// L3 and L4 were recognised and verified.
    pub l3_l4_processed: bool,
    pub ip_err: bool,
    pub l4_err: bool,
}

/// Verify the IPv4 header checksum and the TCP/UDP/ICMP checksum.
pub fn verify_checksums(f: &[u8], p: &Parsed) -> RxCsum {
    let mut r = RxCsum::default();
    let ip_err = match p.l3 {
        L3::Ipv4 { off, ihl, .. } => match f.get(off..off + ihl) {
            Some(h) => checksum(h) != 0,
            None => return r,
        },
        L3::Ipv6 { .. } => false,
        L3::None => return r,
    };
    let Some((proto, l4off, _)) = l4_proto_and_field(p) else {
        return r;
    };
    let Some(end) = l4_end(f, p) else {
        return r;
    };
    if l4off > end {
        return r;
    }
    r.l3_l4_processed = true;
    r.ip_err = ip_err;
    // IPv4 UDP with checksum 0: no checksum.
    if proto == IPPROTO_UDP && matches!(p.l3, L3::Ipv4 { .. }) && be16(f, l4off + 6) == Some(0) {
        return r;
    }
    let acc = if proto == IPPROTO_ICMP {
        0
    } else {
        match pseudo_sum(f, p.l3, proto, end - l4off) {
            Some(a) => a,
            None => return RxCsum::default(),
        }
    };
    r.l4_err = csum_fold(csum_add(acc, &f[l4off..end])) != 0;
    r
}

/// Flow tuple for RSS and flow steering (addresses/ports as in the frame).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowKey {
    pub v6: bool,
    pub proto: u8,
    pub src: [u8; 16],
    pub dst: [u8; 16],
    /// src port, dst port (or the SPI for AH/ESP) in network order.
    pub ports: [u8; 4],
    pub has_ports: bool,
    pub tos: u8,
}

/// Extract the flow key, if the frame is IP.
pub fn flow_key(f: &[u8], p: &Parsed) -> Option<FlowKey> {
    let mut k = FlowKey::default();
    match p.l3 {
        L3::Ipv4 { off, .. } => {
            k.src[..4].copy_from_slice(f.get(off + 12..off + 16)?);
            k.dst[..4].copy_from_slice(f.get(off + 16..off + 20)?);
            k.proto = *f.get(off + 9)?;
            k.tos = *f.get(off + 1)?;
        }
        L3::Ipv6 { off, .. } => {
            k.v6 = true;
            k.src.copy_from_slice(f.get(off + 8..off + 24)?);
            k.dst.copy_from_slice(f.get(off + 24..off + 40)?);
            let w = be16(f, off)?;
            k.tos = ((w >> 4) & 0xff) as u8;
            k.proto = match p.l4 {
                L4::Tcp { .. } => IPPROTO_TCP,
                L4::Udp { .. } => IPPROTO_UDP,
                L4::Sctp { .. } => IPPROTO_SCTP,
                L4::Icmp { .. } => IPPROTO_ICMPV6,
                L4::Other { proto } => proto,
                L4::None => 0,
            };
        }
        L3::None => return None,
    }
    match p.l4 {
        L4::Tcp { off, .. } | L4::Udp { off } | L4::Sctp { off } => {
            k.ports.copy_from_slice(f.get(off..off + 4)?);
            k.has_ports = true;
        }
        L4::Other { proto } if proto == 50 || proto == 51 => {
            // ESP: SPI at 0; AH: SPI at 4.
            let l4 = p.l3_end()?;
            let o = if proto == 50 { l4 } else { l4 + 4 };
            k.ports.copy_from_slice(f.get(o..o + 4)?);
            k.has_ports = true;
        }
        _ => {}
    }
    Some(k)
}

/// Why a TSO request was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TsoError {
    #[error("header of {0} bytes does not end at the L4 payload")]
    BadHeader(usize),
    #[error("MSS {0} out of range")]
    BadMss(u16),
    #[error("tso_total_len {total} does not match the {actual} payload bytes")]
    LengthMismatch { total: u32, actual: usize },
    #[error("not TCP or UDP over IPv4/IPv6")]
    NotTcpUdp,
}

/// Segment `packet` (header + payload) into frames of at most `mss` payload
/// bytes, with Linux GSO semantics: per-segment IPv4 total length, ID + i
/// and header checksum; IPv6 payload length; TCP sequence += offset,
/// FIN/PSH only on the last segment, CWR only on the first; UDP length;
/// full L4 checksum on every segment.
pub fn tso_segment(
    packet: &[u8],
    header_len: usize,
    mss: u16,
    tso_total_len: u32,
) -> Result<Vec<Vec<u8>>, TsoError> {
    if mss == 0 || mss > crate::desc::TX_MAX_TSO_MSS {
        return Err(TsoError::BadMss(mss));
    }
    let p = parse(packet);
    let hdr_end = p.split_offset().ok_or(TsoError::NotTcpUdp)?;
    if hdr_end != header_len || header_len > packet.len() {
        return Err(TsoError::BadHeader(header_len));
    }
    if matches!(p.l3, L3::None) {
        return Err(TsoError::NotTcpUdp);
    }
    let payload = &packet[header_len..];
    if payload.len() != tso_total_len as usize {
        return Err(TsoError::LengthMismatch {
            total: tso_total_len,
            actual: payload.len(),
        });
    }
    let hdr = &packet[..header_len];
    let mss = usize::from(mss);
    let nseg = payload.len().div_ceil(mss).max(1);
    let mut out = Vec::with_capacity(nseg);
    let (ip_id0, seq0) = (
        match p.l3 {
            L3::Ipv4 { off, .. } => be16(hdr, off + 4).unwrap_or(0),
            _ => 0,
        },
        match p.l4 {
            L4::Tcp { off, .. } => be32(hdr, off + 4).unwrap_or(0),
            _ => 0,
        },
    );
    for i in 0..nseg {
        let start = i * mss;
        let end = (start + mss).min(payload.len());
        let mut seg = Vec::with_capacity(header_len + end - start);
        seg.extend_from_slice(hdr);
        seg.extend_from_slice(&payload[start..end]);
        let seg_len = seg.len();
        match p.l3 {
            L3::Ipv4 { off, ihl, .. } => {
                let tot = (seg_len - off) as u16;
                seg[off + 2..off + 4].copy_from_slice(&tot.to_be_bytes());
                let id = ip_id0.wrapping_add(i as u16);
                seg[off + 4..off + 6].copy_from_slice(&id.to_be_bytes());
                fill_ipv4_checksum(&mut seg, off, ihl);
            }
            L3::Ipv6 { off, .. } => {
                let pl = (seg_len - off - 40) as u16;
                seg[off + 4..off + 6].copy_from_slice(&pl.to_be_bytes());
            }
            L3::None => {}
        }
        match p.l4 {
            L4::Tcp { off, .. } => {
                let seq = seq0.wrapping_add(start as u32);
                seg[off + 4..off + 8].copy_from_slice(&seq.to_be_bytes());
                let mut flags = seg[off + 13];
                if i + 1 != nseg {
                    flags &= !(TCP_FIN | TCP_PSH);
                }
                if i != 0 {
                    flags &= !TCP_CWR;
                }
                seg[off + 13] = flags;
            }
            L4::Udp { off } => {
                let ul = (seg_len - off) as u16;
                seg[off + 4..off + 6].copy_from_slice(&ul.to_be_bytes());
            }
            _ => {}
        }
        fill_l4_checksum(&mut seg);
        out.push(seg);
    }
    Ok(out)
}

/// Frame builders for tests, the fake driver and the fuzzer.
pub mod build {
    use super::*;

    /// Ethernet + IPv4 + TCP frame with correct checksums.
    #[allow(clippy::too_many_arguments)]
    pub fn tcp4(
        dst_mac: [u8; 6],
        src_mac: [u8; 6],
        src: [u8; 4],
        dst: [u8; 4],
        sport: u16,
        dport: u16,
        seq: u32,
        flags: u8,
        payload: &[u8],
    ) -> Vec<u8> {
        let mut f = Vec::with_capacity(54 + payload.len());
        f.extend_from_slice(&dst_mac);
        f.extend_from_slice(&src_mac);
        f.extend_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
        let tot = (20 + 20 + payload.len()) as u16;
        f.extend_from_slice(&[0x45, 0]);
        f.extend_from_slice(&tot.to_be_bytes());
        f.extend_from_slice(&[0x12, 0x34, 0x40, 0, 64, IPPROTO_TCP, 0, 0]);
        f.extend_from_slice(&src);
        f.extend_from_slice(&dst);
        f.extend_from_slice(&sport.to_be_bytes());
        f.extend_from_slice(&dport.to_be_bytes());
        f.extend_from_slice(&seq.to_be_bytes());
        f.extend_from_slice(&0u32.to_be_bytes());
        f.extend_from_slice(&[0x50, flags, 0xff, 0xff, 0, 0, 0, 0]);
        f.extend_from_slice(payload);
        fill_ipv4_checksum(&mut f, ETH_HLEN, 20);
        fill_l4_checksum(&mut f);
        f
    }

    /// Ethernet + IPv6 + TCP frame with a correct checksum.
    #[allow(clippy::too_many_arguments)]
    pub fn tcp6(
        dst_mac: [u8; 6],
        src_mac: [u8; 6],
        src: [u8; 16],
        dst: [u8; 16],
        sport: u16,
        dport: u16,
        seq: u32,
        flags: u8,
        payload: &[u8],
    ) -> Vec<u8> {
        let mut f = Vec::with_capacity(74 + payload.len());
        f.extend_from_slice(&dst_mac);
        f.extend_from_slice(&src_mac);
        f.extend_from_slice(&ETHERTYPE_IPV6.to_be_bytes());
        f.extend_from_slice(&[0x60, 0, 0, 0]);
        f.extend_from_slice(&((20 + payload.len()) as u16).to_be_bytes());
        f.extend_from_slice(&[IPPROTO_TCP, 64]);
        f.extend_from_slice(&src);
        f.extend_from_slice(&dst);
        f.extend_from_slice(&sport.to_be_bytes());
        f.extend_from_slice(&dport.to_be_bytes());
        f.extend_from_slice(&seq.to_be_bytes());
        f.extend_from_slice(&0u32.to_be_bytes());
        f.extend_from_slice(&[0x50, flags, 0xff, 0xff, 0, 0, 0, 0]);
        f.extend_from_slice(payload);
        fill_l4_checksum(&mut f);
        f
    }

    /// Ethernet + IPv4 + UDP frame with correct checksums.
    pub fn udp4(
        dst_mac: [u8; 6],
        src_mac: [u8; 6],
        src: [u8; 4],
        dst: [u8; 4],
        sport: u16,
        dport: u16,
        payload: &[u8],
    ) -> Vec<u8> {
        let mut f = Vec::new();
        f.extend_from_slice(&dst_mac);
        f.extend_from_slice(&src_mac);
        f.extend_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
        let tot = (20 + 8 + payload.len()) as u16;
        f.extend_from_slice(&[0x45, 0]);
        f.extend_from_slice(&tot.to_be_bytes());
        f.extend_from_slice(&[0, 1, 0, 0, 64, IPPROTO_UDP, 0, 0]);
        f.extend_from_slice(&src);
        f.extend_from_slice(&dst);
        f.extend_from_slice(&sport.to_be_bytes());
        f.extend_from_slice(&dport.to_be_bytes());
        f.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
        f.extend_from_slice(&[0, 0]);
        f.extend_from_slice(payload);
        fill_ipv4_checksum(&mut f, ETH_HLEN, 20);
        fill_l4_checksum(&mut f);
        f
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: [u8; 6] = [2, 0, 0, 0, 0, 1];
    const B: [u8; 6] = [2, 0, 0, 0, 0, 2];

    #[test]
    fn rfc1071_example() {
        let d = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(csum_fold(csum_add(0, &d)), !0xddf2);
    }

    #[test]
    fn parse_and_verify_tcp4() {
        let f = build::tcp4(A, B, [10, 0, 0, 1], [10, 0, 0, 2], 1, 2, 7, 0x18, b"hello");
        let p = parse(&f);
        assert_eq!(p.l2_len, 14);
        assert_eq!(p.split_offset(), Some(54));
        let c = verify_checksums(&f, &p);
        assert!(c.l3_l4_processed && !c.ip_err && !c.l4_err);
        let mut bad = f.clone();
        bad[56] ^= 1;
        let c = verify_checksums(&bad, &parse(&bad));
        assert!(c.l4_err && !c.ip_err);
        let mut bad = f.clone();
        bad[22] ^= 1; // TTL
        assert!(verify_checksums(&bad, &parse(&bad)).ip_err);
    }

    #[test]
    fn parse_vlan_v6_udp() {
        let mut f = build::tcp6(A, B, [1; 16], [2; 16], 5, 6, 0, 0x10, b"xyz");
        f.splice(12..12, [0x81, 0x00, 0x00, 0x05]);
        let p = parse(&f);
        assert_eq!(p.l2_len, 18);
        assert!(matches!(p.l3, L3::Ipv6 { hdr_len: 40, .. }));
        assert!(verify_checksums(&f, &p).l3_l4_processed);
        assert!(!verify_checksums(&f, &p).l4_err);
        let u = build::udp4(A, B, [1, 1, 1, 1], [2, 2, 2, 2], 9, 10, b"data!");
        let p = parse(&u);
        assert_eq!(p.split_offset(), Some(42));
        assert!(!verify_checksums(&u, &p).l4_err);
    }

    #[test]
    fn garbage_never_panics() {
        for len in 0..80 {
            let f: Vec<u8> = (0..len).map(|i| (i * 37 + 11) as u8).collect();
            let p = parse(&f);
            let _ = verify_checksums(&f, &p);
            let mut g = f.clone();
            fill_l4_checksum(&mut g);
            let _ = flow_key(&f, &p);
        }
        let mut f = build::tcp4(A, B, [1; 4], [2; 4], 1, 2, 0, 0, &[]);
        f[16] = 0xff; // total length way past the frame
        f[17] = 0xff;
        assert!(!fill_l4_checksum(&mut f));
    }

    #[test]
    fn tso_segments_like_gso() {
        let payload: Vec<u8> = (0..10_000u32).map(|i| i as u8).collect();
        let mut pkt = build::tcp4(
            A,
            B,
            [10, 0, 0, 1],
            [10, 0, 0, 2],
            1000,
            2000,
            5,
            0x19 | 0x80,
            &payload,
        );
        // The driver leaves a pseudo-header seed in the checksum field; garble it.
        pkt[50] = 0x12;
        let segs = tso_segment(&pkt, 54, 1448, payload.len() as u32).unwrap();
        assert_eq!(segs.len(), 7);
        let mut got = Vec::new();
        for (i, s) in segs.iter().enumerate() {
            let p = parse(s);
            let c = verify_checksums(s, &p);
            assert!(c.l3_l4_processed && !c.ip_err && !c.l4_err, "seg {i}");
            assert_eq!(u16::from_be_bytes([s[16], s[17]]) as usize, s.len() - 14);
            assert_eq!(u16::from_be_bytes([s[18], s[19]]), 0x1234 + i as u16);
            assert_eq!(
                u32::from_be_bytes(s[38..42].try_into().unwrap()),
                5 + 1448 * i as u32
            );
            let flags = s[47];
            assert_eq!(flags & TCP_FIN != 0, i == 6);
            assert_eq!(flags & TCP_PSH != 0, i == 6);
            assert_eq!(flags & TCP_CWR != 0, i == 0);
            got.extend_from_slice(&s[54..]);
        }
        assert_eq!(got, payload);
        assert!(tso_segment(&pkt, 50, 1448, payload.len() as u32).is_err());
        assert!(tso_segment(&pkt, 54, 1448, 1).is_err());
        assert!(tso_segment(&pkt, 54, 0, payload.len() as u32).is_err());
    }

    #[test]
    fn tso_v6() {
        let payload = vec![0xabu8; 3000];
        let pkt = build::tcp6(A, B, [1; 16], [2; 16], 1, 2, 100, 0x10, &payload);
        let segs = tso_segment(&pkt, 74, 1000, 3000).unwrap();
        assert_eq!(segs.len(), 3);
        for s in &segs {
            assert_eq!(u16::from_be_bytes([s[18], s[19]]) as usize, s.len() - 54);
            assert!(!verify_checksums(s, &parse(s)).l4_err);
        }
    }
}
