//! RX queue selection: ntuple flow-steering rules, then RSS (Toeplitz hash
//! with the configured key and indirection table).

use std::collections::BTreeMap;

use crate::adminq::{
    FlowRule, RSS_HASH_IPV4, RSS_HASH_IPV6, RSS_HASH_TCPV4, RSS_HASH_TCPV6, RSS_HASH_UDPV4,
    RSS_HASH_UDPV6, RSS_KEY_SIZE, RSS_LUT_SIZE,
};
use crate::packet::{FlowKey, IPPROTO_SCTP, IPPROTO_TCP, IPPROTO_UDP};

/// Microsoft's RSS verification key, used until the driver configures one.
pub const DEFAULT_RSS_KEY: [u8; 40] = [
    0x6d, 0x5a, 0x56, 0xda, 0x25, 0x5b, 0x0e, 0xc2, 0x41, 0x67, 0x25, 0x3d, 0x43, 0xa3, 0x8f, 0xb0,
    0xd0, 0xca, 0x2b, 0xcb, 0xae, 0x7b, 0x30, 0xb4, 0x77, 0xcb, 0x2d, 0xa3, 0x80, 0x30, 0xf2, 0x0c,
    0x6a, 0x42, 0xb7, 0x3b, 0xbe, 0xac, 0x01, 0xfa,
];

/// Toeplitz hash of `input` under `key` (the key must be at least
/// `input.len() + 4` bytes for a full-strength hash; missing key bits are 0).
pub fn toeplitz(key: &[u8], input: &[u8]) -> u32 {
    let kbit = |i: usize| -> u32 {
        key.get(i / 8)
            .map_or(0, |b| u32::from((b >> (7 - (i % 8))) & 1))
    };
    let mut window: u32 = 0;
    for i in 0..32 {
        window = (window << 1) | kbit(i);
    }
    let mut result = 0u32;
    let mut next = 32;
    for byte in input {
        for bit in (0..8).rev() {
            if (byte >> bit) & 1 != 0 {
                result ^= window;
            }
            window = (window << 1) | kbit(next);
            next += 1;
        }
    }
    result
}

/// RSS state set by CONFIGURE_RSS.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RssConfig {
    pub hash_types: u16,
    pub hash_alg: u8,
    pub key: Vec<u8>,
    pub lut: Vec<u32>,
}

impl Default for RssConfig {
    fn default() -> Self {
        RssConfig {
            hash_types: RSS_HASH_TCPV4 | RSS_HASH_UDPV4 | RSS_HASH_TCPV6 | RSS_HASH_UDPV6,
            hash_alg: crate::adminq::RSS_HASH_ALG_TOEPLITZ,
            key: DEFAULT_RSS_KEY[..usize::from(RSS_KEY_SIZE)].to_vec(),
            lut: vec![0; usize::from(RSS_LUT_SIZE)],
        }
    }
}

impl RssConfig {
    /// The device's power-on RSS state for `queues` RX queues: the default
    /// key and the LUT `i % queues` (what ethtool's default indirection
    /// is; only visible when the driver does not configure RSS itself,
    /// i.e. with the RSS_CONFIG option).
    pub fn for_queues(queues: u16) -> Self {
        let q = u32::from(queues.max(1));
        RssConfig {
            lut: (0..u32::from(RSS_LUT_SIZE)).map(|i| i % q).collect(),
            ..RssConfig::default()
        }
    }

    /// The hash reported in the RX completion and used for the LUT, or
    /// `None` when no enabled hash type covers the frame.
    pub fn hash(&self, k: &FlowKey) -> Option<u32> {
        let (l4_bit, l3_bit) = match (k.v6, k.proto) {
            (false, IPPROTO_TCP) => (RSS_HASH_TCPV4, RSS_HASH_IPV4),
            (false, IPPROTO_UDP) => (RSS_HASH_UDPV4, RSS_HASH_IPV4),
            (true, IPPROTO_TCP) => (RSS_HASH_TCPV6, RSS_HASH_IPV6),
            (true, IPPROTO_UDP) => (RSS_HASH_UDPV6, RSS_HASH_IPV6),
            (false, _) => (0, RSS_HASH_IPV4),
            (true, _) => (0, RSS_HASH_IPV6),
        };
        let alen = if k.v6 { 16 } else { 4 };
        let mut input = Vec::with_capacity(36);
        input.extend_from_slice(&k.src[..alen]);
        input.extend_from_slice(&k.dst[..alen]);
        if l4_bit != 0 && self.hash_types & l4_bit != 0 && k.has_ports {
            input.extend_from_slice(&k.ports);
        } else if self.hash_types & l3_bit == 0 {
            return None;
        }
        Some(toeplitz(&self.key, &input))
    }

    /// Queue for `hash` through the indirection table.
    pub fn queue_for(&self, hash: u32) -> u32 {
        if self.lut.is_empty() {
            return 0;
        }
        self.lut[hash as usize % self.lut.len()]
    }
}

/// Flow type numbers of gve_adminq.h `enum gve_adminq_flow_type`.
fn flow_type_matches(flow_type: u16, k: &FlowKey) -> bool {
    let (v6, proto) = match flow_type {
        0 => (false, IPPROTO_TCP),
        1 => (false, IPPROTO_UDP),
        2 => (false, IPPROTO_SCTP),
        3 => (false, 51), // AH
        4 => (false, 50), // ESP
        5 => (true, IPPROTO_TCP),
        6 => (true, IPPROTO_UDP),
        7 => (true, IPPROTO_SCTP),
        8 => (true, 51),
        9 => (true, 50),
        _ => return false,
    };
    k.v6 == v6 && k.proto == proto
}

fn masked_eq(pkt: &[u8], key: &[u8], mask: &[u8]) -> bool {
    pkt.iter()
        .zip(key)
        .zip(mask)
        .all(|((p, k), m)| p & m == k & m)
}

/// Whether `rule` matches the flow `k` (every field compared under the
/// rule's mask; IPv4 uses the first address word).
pub fn rule_matches(rule: &FlowRule, k: &FlowKey) -> bool {
    if !flow_type_matches(rule.flow_type, k) {
        return false;
    }
    let alen = if k.v6 { 16 } else { 4 };
    masked_eq(
        &k.src[..alen],
        &rule.key.src_ip[..alen],
        &rule.mask.src_ip[..alen],
    ) && masked_eq(
        &k.dst[..alen],
        &rule.key.dst_ip[..alen],
        &rule.mask.dst_ip[..alen],
    ) && masked_eq(&k.ports, &rule.key.ports, &rule.mask.ports)
        && (k.tos & rule.mask.tos) == (rule.key.tos & rule.mask.tos)
}

/// Installed flow rules by location; the lowest matching location wins.
#[derive(Clone, Debug, Default)]
pub struct FlowTable {
    pub rules: BTreeMap<u32, FlowRule>,
}

impl FlowTable {
    /// First matching rule whose action queue satisfies `queue_ok`.
    pub fn lookup(&self, k: &FlowKey, queue_ok: impl Fn(u32) -> bool) -> Option<u32> {
        self.rules
            .values()
            .filter(|r| rule_matches(r, k))
            .map(|r| u32::from(r.action))
            .find(|q| queue_ok(*q))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toeplitz_matches_the_microsoft_vectors() {
        // src 66.9.149.187:2794 → dst 161.142.100.80:1766
        let mut input = vec![66, 9, 149, 187, 161, 142, 100, 80];
        assert_eq!(toeplitz(&DEFAULT_RSS_KEY, &input), 0x323e_8fc2);
        input.extend_from_slice(&2794u16.to_be_bytes());
        input.extend_from_slice(&1766u16.to_be_bytes());
        assert_eq!(toeplitz(&DEFAULT_RSS_KEY, &input), 0x51cc_c178);
        // IPv6: 3ffe:2501:200:1fff::7 → 3ffe:2501:200:3::1, 2794 → 1766
        let src = [
            0x3f, 0xfe, 0x25, 0x01, 0x02, 0x00, 0x1f, 0xff, 0, 0, 0, 0, 0, 0, 0, 7,
        ];
        let dst = [
            0x3f, 0xfe, 0x25, 0x01, 0x02, 0x00, 0x00, 0x03, 0, 0, 0, 0, 0, 0, 0, 1,
        ];
        let mut input = src.to_vec();
        input.extend_from_slice(&dst);
        input.extend_from_slice(&2794u16.to_be_bytes());
        input.extend_from_slice(&1766u16.to_be_bytes());
        assert_eq!(toeplitz(&DEFAULT_RSS_KEY, &input), 0x4020_7d3d);
    }

    #[test]
    fn rules_match_under_mask() {
        let mut k = FlowKey {
            proto: IPPROTO_TCP,
            has_ports: true,
            ..Default::default()
        };
        k.dst[..4].copy_from_slice(&[10, 0, 0, 2]);
        k.ports = [0x1f, 0x90, 0x00, 0x50]; // 8080 → 80
        let mut r = FlowRule {
            flow_type: 0,
            action: 3,
            ..Default::default()
        };
        r.key.ports = [0, 0, 0, 80];
        r.mask.ports = [0, 0, 0xff, 0xff];
        assert!(rule_matches(&r, &k));
        r.key.ports = [0, 0, 0, 81];
        assert!(!rule_matches(&r, &k));
        r.key.ports = [0, 0, 0, 80];
        r.flow_type = 5;
        assert!(!rule_matches(&r, &k));
        r.flow_type = 0;
        let mut t = FlowTable::default();
        t.rules.insert(7, r);
        let mut r2 = r;
        r2.action = 1;
        t.rules.insert(2, r2);
        assert_eq!(t.lookup(&k, |_| true), Some(1));
        assert_eq!(t.lookup(&k, |q| q != 1), Some(3));
    }
}
