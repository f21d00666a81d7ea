//! Property tests of the IOMMU model against a plain reference model (a
//! list of mappings per domain, checked page by page), plus DMA-handle,
//! permission and audit tests.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use proptest::prelude::*;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::*;
use crate::dma::{Access, Dma, DmaFault, FaultReason};

const PAGE: u64 = 0x1000;
/// Guest RAM of the tests: 4 MiB at 0.
const RAM: u64 = 0x40_0000;
const EP_A: u16 = 0x08;
const EP_B: u16 = 0x10;
/// Not registered.
const EP_X: u16 = 0x18;

fn memory() -> GuestMemoryMmap<()> {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), RAM as usize)]).unwrap()
}

fn state_with(config: IommuConfig, audit: AuditConfig) -> Arc<IommuState> {
    let s = IommuState::new(config, Arc::new(Audit::new(audit))).unwrap();
    s.register_endpoint(EP_A);
    s.register_endpoint(EP_B);
    s
}

fn state() -> Arc<IommuState> {
    state_with(IommuConfig::default(), AuditConfig::default())
}

// ---------------------------------------------------------------- model

#[derive(Clone, Debug, Default)]
struct MDomain {
    bypass: bool,
    /// (first iova, last iova, gpa, flags)
    maps: Vec<(u64, u64, u64, u32)>,
    eps: BTreeSet<u16>,
}

#[derive(Clone, Debug)]
struct Model {
    cfg: IommuConfig,
    bypass: bool,
    eps: BTreeMap<u16, Option<u32>>,
    domains: BTreeMap<u32, MDomain>,
}

type R = Result<(), IommuError>;

impl Model {
    fn new(cfg: IommuConfig) -> Self {
        Model {
            bypass: cfg.bypass,
            cfg,
            eps: [(EP_A, None), (EP_B, None)].into_iter().collect(),
            domains: BTreeMap::new(),
        }
    }

    fn ep(&self, e: u32) -> Result<u16, IommuError> {
        u16::try_from(e)
            .ok()
            .filter(|e| self.eps.contains_key(e))
            .ok_or(IommuError::NoEntry)
    }

    fn leave(&mut self, ep: u16) {
        if let Some(Some(d)) = self.eps.insert(ep, None) {
            let dom = self.domains.get_mut(&d).unwrap();
            dom.eps.remove(&ep);
            if dom.eps.is_empty() {
                self.domains.remove(&d);
            }
        }
    }

    fn attach(&mut self, d: u32, e: u32, bypass: bool) -> R {
        let ep = self.ep(e)?;
        if let Some(dom) = self.domains.get(&d)
            && dom.bypass != bypass
        {
            return Err(IommuError::Invalid);
        }
        if !self.domains.contains_key(&d) && self.domains.len() >= self.cfg.max_domains {
            return Err(IommuError::NoMemory);
        }
        if self.eps[&ep] == Some(d) {
            return Ok(());
        }
        self.leave(ep);
        let dom = self.domains.entry(d).or_insert_with(|| MDomain {
            bypass,
            ..MDomain::default()
        });
        dom.eps.insert(ep);
        self.eps.insert(ep, Some(d));
        Ok(())
    }

    fn detach(&mut self, d: u32, e: u32) -> R {
        let ep = self.ep(e)?;
        if self.eps[&ep] != Some(d) {
            return Err(IommuError::Invalid);
        }
        self.leave(ep);
        Ok(())
    }

    fn map(&mut self, d: u32, start: u64, end: u64, phys: u64, flags: u32) -> R {
        if flags & !7 != 0 || end < start {
            return Err(IommuError::Invalid);
        }
        let aligned = start.is_multiple_of(PAGE)
            && phys.is_multiple_of(PAGE)
            && (end + 1).is_multiple_of(PAGE);
        if !aligned || end > self.cfg.input_range.1 || phys.checked_add(end - start).is_none() {
            return Err(IommuError::Range);
        }
        let max = self.cfg.max_mappings;
        let reserved = self.cfg.reserved.clone();
        let dom = self.domains.get_mut(&d).ok_or(IommuError::NoEntry)?;
        if dom.bypass || reserved.iter().any(|r| r.start <= end && r.end >= start) {
            return Err(IommuError::Invalid);
        }
        if dom.maps.len() >= max {
            return Err(IommuError::NoMemory);
        }
        if dom.maps.iter().any(|&(s, l, _, _)| s <= end && l >= start) {
            return Err(IommuError::Invalid);
        }
        dom.maps.push((start, end, phys, flags));
        Ok(())
    }

    fn unmap(&mut self, d: u32, start: u64, end: u64) -> R {
        if end < start {
            return Err(IommuError::Invalid);
        }
        let dom = self.domains.get_mut(&d).ok_or(IommuError::NoEntry)?;
        if dom.bypass {
            return Err(IommuError::Invalid);
        }
        let hit = |&(s, l, _, _): &(u64, u64, u64, u32)| s <= end && l >= start;
        if dom
            .maps
            .iter()
            .filter(|m| hit(m))
            .any(|&(s, l, _, _)| s < start || l > end)
        {
            return Err(IommuError::Range);
        }
        dom.maps.retain(|m| !hit(m));
        Ok(())
    }

    fn reset(&mut self) {
        for ep in self.eps.keys().copied().collect::<Vec<_>>() {
            self.leave(ep);
        }
    }

    /// Byte-range translation by walking page by page.
    fn translate(
        &self,
        ep: u16,
        iova: u64,
        len: u64,
        acc: Access,
    ) -> Result<Vec<(u64, u64)>, FaultReason> {
        let Some(last) = len.checked_sub(1).and_then(|l| iova.checked_add(l)) else {
            return Err(FaultReason::BadRange);
        };
        let dom = self
            .eps
            .get(&ep)
            .copied()
            .flatten()
            .map(|d| &self.domains[&d]);
        match dom {
            Some(d) if d.bypass => return Ok(vec![(iova, len)]),
            None if self.bypass => return Ok(vec![(iova, len)]),
            None => return Err(FaultReason::NoDomain),
            Some(_) => {}
        }
        let d = dom.unwrap();
        let need = need_flags(acc);
        let mut out: Vec<(u64, u64)> = Vec::new();
        let mut cur = iova;
        loop {
            let Some(&(s, l, g, f)) = d.maps.iter().find(|&&(s, l, _, _)| s <= cur && cur <= l)
            else {
                return Err(FaultReason::Unmapped);
            };
            if f & need != need {
                return Err(FaultReason::Permission);
            }
            let piece_end = l.min(last);
            let gpa = g + (cur - s);
            let plen = piece_end - cur + 1;
            match out.last_mut() {
                Some(p) if p.0 + p.1 == gpa => p.1 += plen,
                _ => out.push((gpa, plen)),
            }
            if piece_end == last {
                return Ok(out);
            }
            cur = piece_end + 1;
        }
    }

    /// Domain operand of a MAP/UNMAP op: 0..4 literal, 4..8 the domain
    /// EP_A (even) or EP_B (odd) is attached to, else `d - 4`.
    fn resolve(&self, d: u32) -> u32 {
        if d < 4 {
            return d;
        }
        let ep = if d.is_multiple_of(2) { EP_A } else { EP_B };
        self.eps[&ep].unwrap_or(d - 4)
    }

    fn sorted_maps(&self, d: u32) -> Option<Vec<(u64, u64, u64, u32)>> {
        self.domains.get(&d).map(|dom| {
            let mut v = dom.maps.clone();
            v.sort();
            v
        })
    }
}

// ---------------------------------------------------------------- ops

#[derive(Clone, Debug)]
enum Op {
    Attach {
        d: u32,
        ep: u32,
        bypass: bool,
    },
    Detach {
        d: u32,
        ep: u32,
    },
    Map {
        d: u32,
        page: u64,
        pages: u64,
        gpa_page: u64,
        flags: u32,
        skew: u8,
    },
    Unmap {
        d: u32,
        page: u64,
        pages: u64,
        lo: u64,
        hi: u64,
    },
    MapMsi {
        d: u32,
    },
    Bypass(bool),
    Translate {
        ep: u16,
        iova: u64,
        len: u64,
        write: bool,
        /// Aim at the n-th mapping of the endpoint's domain (if any).
        near: Option<usize>,
    },
    Reset,
}

fn ep_id() -> impl Strategy<Value = u32> {
    prop_oneof![
        4 => Just(u32::from(EP_A)),
        4 => Just(u32::from(EP_B)),
        1 => Just(u32::from(EP_X)),
        1 => Just(0x1_0008u32),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    // 0..4: that domain ID; 4..8: the domain of EP_A / EP_B (see `resolve`).
    let d = 0u32..8;
    prop_oneof![
        3 => (0u32..4, ep_id(), prop::bool::weighted(0.15))
            .prop_map(|(d, ep, bypass)| Op::Attach { d, ep, bypass }),
        1 => (0u32..4, ep_id()).prop_map(|(d, ep)| Op::Detach { d, ep }),
        6 => (d.clone(), 0u64..32, 1u64..5, 0u64..1100, prop::sample::select(vec![3u32, 3, 3, 3, 1, 2, 0, 4, 7, 8]), prop::sample::select(vec![0u8, 0, 0, 0, 0, 5, 5, 5, 1, 2, 3, 4]))
            .prop_map(|(d, page, pages, gpa_page, flags, skew)| Op::Map { d, page, pages, gpa_page, flags, skew }),
        3 => (d.clone(), 0u64..32, 1u64..8, prop::sample::select(vec![0u64, 0, 0, 0x100]), prop::sample::select(vec![0u64, 0, 0, 0x100, 0x1100]))
            .prop_map(|(d, page, pages, lo, hi)| Op::Unmap { d, page, pages, lo, hi }),
        1 => (0u32..4).prop_map(|d| Op::MapMsi { d }),
        1 => any::<bool>().prop_map(Op::Bypass),
        10 => (prop::sample::select(vec![EP_A, EP_A, EP_B, EP_B, EP_X]), 0u64..(36 * PAGE), prop_oneof![3 => 1u64..0x200, 1 => 0u64..(3 * PAGE)], any::<bool>(), prop::option::weighted(0.7, 0usize..8))
            .prop_map(|(ep, iova, len, write, near)| Op::Translate { ep, iova, len, write, near }),
        1 => Just(Op::Reset),
    ]
}

fn apply(s: &IommuState, m: &mut Model, dma: &BTreeMap<u16, IommuDma>, op: &Op) {
    match *op {
        Op::Attach { d, ep, bypass } => {
            assert_eq!(s.attach(d, ep, bypass), m.attach(d, ep, bypass), "{op:?}");
        }
        Op::Detach { d, ep } => assert_eq!(s.detach(d, ep), m.detach(d, ep), "{op:?}"),
        Op::Map {
            d,
            page,
            pages,
            gpa_page,
            flags,
            skew,
        } => {
            let d = m.resolve(d);
            // skew 5: right after the domain's last mapping (adjacent
            // mappings, so accesses can span two).
            let after = m.sorted_maps(d).and_then(|v| v.last().map(|x| x.1 + 1));
            let mut start = match (skew, after) {
                (5, Some(a)) => a,
                _ => page * PAGE,
            };
            let mut end = start + pages * PAGE - 1;
            let mut phys = gpa_page * PAGE;
            match skew {
                1 => start += 0x800,
                2 => end -= 0x800,
                3 => phys += 0x10,
                4 => std::mem::swap(&mut start, &mut end),
                _ => {}
            }
            assert_eq!(
                s.map(d, start, end, phys, flags),
                m.map(d, start, end, phys, flags),
                "{op:?}"
            );
        }
        Op::Unmap {
            d,
            page,
            pages,
            lo,
            hi,
        } => {
            let start = page * PAGE + lo;
            let end = (page + pages) * PAGE - 1 + hi;
            let d = m.resolve(d);
            assert_eq!(s.unmap(d, start, end), m.unmap(d, start, end), "{op:?}");
        }
        Op::MapMsi { d } => {
            let start = crate::layout::MSI_RANGE_START;
            let r = m.map(d, start, start + PAGE - 1, 0, MAP_F_READ);
            assert_eq!(s.map(d, start, start + PAGE - 1, 0, MAP_F_READ), r);
            assert_ne!(r, Ok(()));
        }
        Op::Bypass(b) => {
            s.set_bypass(b);
            m.bypass = b;
        }
        Op::Translate {
            ep,
            iova,
            len,
            write,
            near,
        } => {
            let maps = m
                .eps
                .get(&ep)
                .copied()
                .flatten()
                .and_then(|d| m.sorted_maps(d))
                .unwrap_or_default();
            let iova = match near {
                Some(k) if !maps.is_empty() => {
                    let (first, last, _, _) = maps[k % maps.len()];
                    if iova % 3 == 0 {
                        // Just before its end: spans into whatever follows.
                        last - (iova / 3) % 0x100
                    } else {
                        first + iova % (last - first + 1)
                    }
                }
                _ => iova,
            };
            let acc = if write { Access::Write } else { Access::Read };
            let want = m.translate(ep, iova, len, acc);
            assert_eq!(s.translate(ep, iova, len, acc), want, "{op:?}");
            // The DMA handle adds the RAM check, then moves the bytes.
            if let Some(h) = dma.get(&ep) {
                let want = want.and_then(|segs| {
                    if segs.iter().all(|&(g, l)| g + l <= RAM) {
                        Ok(segs)
                    } else {
                        Err(FaultReason::OutsideRam)
                    }
                });
                let mut buf = vec![0u8; len as usize];
                let got = if write {
                    h.write(iova, &buf, "t")
                } else {
                    h.read(iova, &mut buf, "t")
                };
                assert_eq!(
                    got.map_err(|f: DmaFault| f.reason),
                    want.map(|_| ()),
                    "{op:?}"
                );
            }
        }
        Op::Reset => {
            s.reset();
            m.reset();
        }
    }
}

fn check_same(s: &IommuState, m: &Model) {
    for ep in [EP_A, EP_B] {
        assert_eq!(s.domain_of(ep), m.eps[&ep]);
    }
    assert_eq!(s.domain_count(), m.domains.len());
    for d in 0..4 {
        let got = s.mappings(d).map(|v| {
            v.iter()
                .map(|x| (x.iova, x.last, x.gpa, x.flags))
                .collect::<Vec<_>>()
        });
        assert_eq!(got, m.sorted_maps(d), "domain {d}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn matches_reference_model(
        bypass in any::<bool>(),
        pre_attach in prop::bool::weighted(0.7),
        ops in prop::collection::vec(op(), 1..80),
    ) {
        let cfg = IommuConfig { bypass, max_domains: 3, max_mappings: 24, ..IommuConfig::default() };
        let s = state_with(cfg.clone(), AuditConfig { capacity: 64, ..AuditConfig::default() });
        let mem = memory();
        let dma: BTreeMap<u16, IommuDma> = [EP_A, EP_B]
            .into_iter()
            .map(|e| (e, IommuDma::new(mem.clone(), &s, e)))
            .collect();
        let mut m = Model::new(cfg);
        let prelude = [
            Op::Attach { d: 1, ep: EP_A.into(), bypass: false },
            Op::Attach { d: 2, ep: EP_B.into(), bypass: false },
        ];
        for op in prelude.iter().take(if pre_attach { 2 } else { 0 }).chain(&ops) {
            apply(&s, &mut m, &dma, op);
            check_same(&s, &m);
        }
    }
}

// ---------------------------------------------------------------- unit

#[test]
fn permissions_are_enforced() {
    let s = state();
    let mem = memory();
    let dma = IommuDma::new(mem.clone(), &s, EP_A);
    s.attach(1, EP_A.into(), false).unwrap();
    s.map(1, 0x10_000, 0x10_fff, 0x20_000, MAP_F_READ).unwrap();
    s.map(1, 0x11_000, 0x11_fff, 0x30_000, MAP_F_WRITE).unwrap();
    s.map(1, 0x12_000, 0x12_fff, 0x40_000, MAP_F_MMIO).unwrap();
    mem.write_slice(&[7u8; 16], GuestAddress(0x20_000)).unwrap();
    let mut b = [0u8; 16];
    dma.read(0x10_000, &mut b, "t").unwrap();
    assert_eq!(b, [7u8; 16]);
    let e = dma.write(0x10_000, &b, "t").unwrap_err();
    assert_eq!(e.reason, FaultReason::Permission);
    assert_eq!(mem.read_obj::<u8>(GuestAddress(0x20_000)).unwrap(), 7);
    dma.write(0x11_000, &[9u8; 16], "t").unwrap();
    assert_eq!(mem.read_obj::<u8>(GuestAddress(0x30_000)).unwrap(), 9);
    // Write-only mappings are not readable (no "WRITE implies READ").
    assert_eq!(
        dma.read(0x11_000, &mut b, "t").unwrap_err().reason,
        FaultReason::Permission
    );
    // MMIO alone grants nothing.
    assert_eq!(
        dma.read(0x12_000, &mut b, "t").unwrap_err().reason,
        FaultReason::Permission
    );
    // A read spanning the R and W mappings fails at the W one, moving nothing.
    let mut big = [0u8; 0x1010];
    let e = dma.read(0x10_ff8, &mut big, "t").unwrap_err();
    assert_eq!(e.reason, FaultReason::Permission);
    assert_eq!(big, [0u8; 0x1010]);
    // Zero-length and overflowing accesses.
    assert_eq!(
        dma.read(0x10_000, &mut [], "t").unwrap_err().reason,
        FaultReason::BadRange
    );
    assert_eq!(
        s.translate(EP_A, u64::MAX, 2, Access::Read),
        Err(FaultReason::BadRange)
    );
}

#[test]
fn bypass_and_unattached_endpoints() {
    let s = state_with(
        IommuConfig {
            bypass: false,
            ..IommuConfig::default()
        },
        AuditConfig::default(),
    );
    let mem = memory();
    let a = IommuDma::new(mem.clone(), &s, EP_A);
    let mut b = [0u8; 8];
    assert_eq!(
        a.read(0x1000, &mut b, "t").unwrap_err().reason,
        FaultReason::NoDomain
    );
    s.set_bypass(true);
    a.read(0x1000, &mut b, "t").unwrap();
    assert_eq!(
        a.read(RAM, &mut b, "t").unwrap_err().reason,
        FaultReason::OutsideRam
    );
    // Bypass domain: identity even with global bypass off.
    s.set_bypass(false);
    s.attach(5, EP_A.into(), true).unwrap();
    a.read(0x1000, &mut b, "t").unwrap();
    assert_eq!(s.map(5, 0, 0xfff, 0, MAP_F_READ), Err(IommuError::Invalid));
    assert_eq!(s.unmap(5, 0, 0xfff), Err(IommuError::Invalid));
    assert_eq!(s.attach(5, EP_B.into(), false), Err(IommuError::Invalid));
    // Unknown endpoints.
    assert_eq!(s.attach(1, EP_X.into(), false), Err(IommuError::NoEntry));
    assert_eq!(s.detach(1, 0x1_0000), Err(IommuError::NoEntry));
    assert_eq!(s.detach(1, EP_A.into()), Err(IommuError::Invalid));
    s.detach(5, EP_A.into()).unwrap();
    assert_eq!(s.domain_count(), 0);
    let records = s.audit().drain_since(0).records;
    let kinds: Vec<&str> = records
        .iter()
        .map(|r| match r.event {
            AuditEvent::Dma(_) => "dma",
            AuditEvent::Bypass { .. } => "bypass",
            AuditEvent::Attach { .. } => "attach",
            AuditEvent::Detach { .. } => "detach",
            _ => "other",
        })
        .collect();
    assert_eq!(
        kinds,
        [
            "dma", "bypass", "dma", "dma", "bypass", "attach", "dma", "detach"
        ]
    );
}

#[test]
fn alignment_range_and_limits() {
    let s = state_with(
        IommuConfig {
            max_mappings: 2,
            max_domains: 1,
            ..IommuConfig::default()
        },
        AuditConfig::default(),
    );
    s.attach(1, EP_A.into(), false).unwrap();
    let rw = MAP_F_READ | MAP_F_WRITE;
    assert_eq!(s.map(1, 0x800, 0x17ff, 0, rw), Err(IommuError::Range));
    assert_eq!(s.map(1, 0x1000, 0x17ff, 0, rw), Err(IommuError::Range));
    assert_eq!(s.map(1, 0x1000, 0x1fff, 0x800, rw), Err(IommuError::Range));
    assert_eq!(s.map(1, 0x1000, 0x1fff, 0, 8), Err(IommuError::Invalid));
    assert_eq!(s.map(1, 0x2000, 0x1fff, 0, rw), Err(IommuError::Invalid));
    assert_eq!(
        s.map(1, 1 << 48, (1 << 48) + 0xfff, 0, rw),
        Err(IommuError::Range)
    );
    assert_eq!(
        s.map(1, 0x1000, 0x2fff, u64::MAX - 0xfff, rw),
        Err(IommuError::Range)
    );
    assert_eq!(s.map(2, 0x1000, 0x1fff, 0, rw), Err(IommuError::NoEntry));
    assert_eq!(s.unmap(2, 0x1000, 0x1fff), Err(IommuError::NoEntry));
    // 2 MiB mapping, then the per-domain cap.
    s.map(1, 0x20_0000, 0x3f_ffff, 0x20_0000, rw).unwrap();
    s.map(1, 0x1000, 0x1fff, 0, rw).unwrap();
    assert_eq!(s.map(1, 0x2000, 0x2fff, 0, rw), Err(IommuError::NoMemory));
    // Domain cap: EP_B cannot create a second domain, but can join.
    assert_eq!(s.attach(2, EP_B.into(), false), Err(IommuError::NoMemory));
    s.attach(1, EP_B.into(), false).unwrap();
    assert_eq!(
        s.translate(EP_B, 0x20_1000, 0x10, Access::Write),
        Ok(vec![(0x20_1000, 0x10)])
    );
    // Domain 1 lives while an endpoint is attached.
    assert_eq!(s.attach(3, EP_A.into(), false), Err(IommuError::NoMemory));
    s.detach(1, EP_B.into()).unwrap();
    assert_eq!(s.mappings(1).map(|m| m.len()), Some(2));
    s.detach(1, EP_A.into()).unwrap();
    assert_eq!(s.mappings(1), None, "domain 1 died with its last endpoint");
    s.attach(3, EP_A.into(), false).unwrap();
    let unmaps = s
        .audit()
        .drain_since(0)
        .records
        .iter()
        .filter(|r| matches!(r.event, AuditEvent::Unmap(_)))
        .count();
    assert_eq!(unmaps, 2);
}

#[test]
fn dma_records_tags_gpas_and_map_events_in_one_sequence() {
    let s = state_with(
        IommuConfig::default(),
        AuditConfig {
            capacity: 8,
            max_faults: 4,
            record: true,
        },
    );
    let mem = memory();
    let a = IommuDma::new(mem.clone(), &s, EP_A);
    s.attach(1, EP_A.into(), false).unwrap(); // seq 0
    s.map(1, 0x1000, 0x1fff, 0x5000, MAP_F_READ | MAP_F_WRITE)
        .unwrap(); // 1
    s.map(1, 0x2000, 0x2fff, 0x9000, MAP_F_READ).unwrap(); // 2
    let mut b = [0u8; 0x20];
    a.read(0x1ff0, &mut b, "tx-payload").unwrap(); // 3
    s.unmap(1, 0x1000, 0x1fff).unwrap(); // 4
    let e = a.read(0x1ff0, &mut b, "tx-payload").unwrap_err(); // 5
    assert_eq!(e.reason, FaultReason::Unmapped);
    let recs = s.audit().drain_since(0).records;
    assert_eq!(recs.len(), 6);
    let AuditEvent::Dma(d) = &recs[3].event else {
        panic!("{:?}", recs[3])
    };
    assert_eq!(d.gpa.as_slice(), &[(0x5ff0, 0x10), (0x9000, 0x10)]);
    assert_eq!((d.tag, d.device, d.ok()), ("tx-payload", EP_A, true));
    assert_eq!(d.domain, Some(1));
    assert_eq!(
        recs[4].event,
        AuditEvent::Unmap(MapEvent {
            domain: 1,
            iova: 0x1000,
            gpa: 0x5000,
            size: 0x1000,
            flags: 3
        })
    );
    let AuditEvent::Dma(d) = &recs[5].event else {
        panic!()
    };
    assert_eq!(d.fault, Some(FaultReason::Unmapped));
    assert_eq!(d.domain, Some(1), "a refused access names its domain too");
    let r = s.report();
    let st = r.by_device["0000:00:01.0"];
    assert_eq!((st.reads, st.writes, st.bytes, st.faults), (1, 0, 0x20, 1));
    assert_eq!(r.iommu_faults.len(), 1);
    assert_eq!(r.iommu_faults[0].tag, "tx-payload");
    // The device was not active: the event was dropped.
    assert_eq!(r.fault_events_dropped, 1);
    // Wraparound: capacity 8.
    for _ in 0..10 {
        a.read(0x2000, &mut b, "rx").unwrap();
    }
    let batch = s.audit().drain_since(6);
    assert_eq!(batch.lost, 2);
    assert_eq!(batch.records.first().map(|r| r.seq), Some(8));
    assert_eq!(batch.records.len(), 8);
    assert_eq!(batch.next, 16);
    assert_eq!(s.report().audit_overwritten, 8);
    assert_eq!(s.report().by_device["0000:00:01.0"].reads, 11);
}

#[test]
fn fault_events_are_queued_when_active() {
    let s = state();
    let a = IommuDma::new(memory(), &s, EP_A);
    s.set_events_active(true);
    s.set_bypass(false);
    assert!(a.probe(0x1234, 4, Access::Write, "probe").is_err());
    s.attach(1, EP_A.into(), false).unwrap();
    assert!(a.probe(0x5000, 4, Access::Read, "probe").is_err());
    let ev = s.take_fault_events();
    assert_eq!(
        ev,
        [
            FaultEvent {
                reason: fault::R_DOMAIN,
                flags: fault::F_WRITE | fault::F_ADDRESS,
                endpoint: 8,
                address: 0x1234
            },
            FaultEvent {
                reason: fault::R_MAPPING,
                flags: fault::F_READ | fault::F_ADDRESS,
                endpoint: 8,
                address: 0x5000
            },
        ]
    );
    assert_eq!(s.fault_eventfd().read().unwrap(), 2);
    let b = ev[1].to_bytes();
    assert_eq!(b[0], 2);
    assert_eq!(&b[4..8], &0x101u32.to_le_bytes());
    assert_eq!(&b[16..24], &0x5000u64.to_le_bytes());
    // Bounded queue.
    for _ in 0..(s.config().max_pending_events + 5) {
        let _ = a.probe(0x5000, 4, Access::Read, "probe");
    }
    assert_eq!(s.take_fault_events().len(), s.config().max_pending_events);
    assert_eq!(s.report().fault_events_dropped, 5);
    s.set_events_active(false);
}

#[test]
fn passthrough_dma_is_audited_but_not_an_iommu_fault() {
    let audit = Arc::new(Audit::default());
    let mem = memory();
    let p = PassthroughDma::new(mem.clone(), &audit, 0x20);
    p.write(0x3000, &[1, 2, 3], "rx-buf").unwrap();
    let mut b = [0u8; 3];
    p.read(0x3000, &mut b, "tx").unwrap();
    assert_eq!(b, [1, 2, 3]);
    assert_eq!(
        p.read(RAM - 1, &mut b, "tx").unwrap_err().reason,
        FaultReason::OutsideRam
    );
    assert!(p.probe(0, 0, Access::Read, "p").is_err());
    let r = audit.report();
    let st = r.by_device["0000:00:04.0"];
    assert_eq!((st.reads, st.writes, st.bytes, st.faults), (1, 1, 6, 2));
    assert!(r.iommu_faults.is_empty());
    assert_eq!(r.audit_next_seq, 4);
}

#[test]
fn concurrent_dma_and_unmap_never_touch_a_page_after_its_unmap() {
    // A device hammers an IOVA while the driver maps and unmaps it; in the
    // audit trail, every successful DMA must fall between a MAP and the
    // following UNMAP of its page.
    let s = state();
    let mem = memory();
    let a = Arc::new(IommuDma::new(mem, &s, EP_A));
    s.attach(1, EP_A.into(), false).unwrap();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (a2, stop2) = (a.clone(), stop.clone());
    let t = std::thread::spawn(move || {
        let mut b = [0u8; 64];
        let mut ok = 0u32;
        for _ in 0..200_000 {
            if stop2.load(std::sync::atomic::Ordering::Relaxed) {
                break;
            }
            ok += u32::from(a2.read(0x7000, &mut b, "x").is_ok());
        }
        ok
    });
    for i in 0..300u64 {
        let gpa = 0x10_000 + (i % 16) * PAGE;
        s.map(1, 0x7000, 0x7fff, gpa, MAP_F_READ).unwrap();
        std::thread::yield_now();
        s.unmap(1, 0x7000, 0x7fff).unwrap();
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    t.join().unwrap();
    let mut mapped: Option<u64> = None;
    for r in s.audit().drain_since(0).records {
        match r.event {
            AuditEvent::Map(m) => mapped = Some(m.gpa),
            AuditEvent::Unmap(_) => mapped = None,
            AuditEvent::Dma(d) if d.ok() => {
                let gpa = mapped.expect("DMA with no mapping in place");
                assert_eq!(d.gpa.as_slice(), &[(gpa, 64)]);
            }
            _ => {}
        }
    }
}

#[test]
fn pushes_64_mib_through_the_iommu() {
    // The NIC's volume: 64 MiB in 4 KiB buffers, written then read back
    // through 2 MiB mappings, audited. Prints the rate (no timing assert).
    let s = state();
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x800_0000)]).unwrap();
    let a = IommuDma::new(mem, &s, EP_A);
    s.attach(1, EP_A.into(), false).unwrap();
    for i in 0..32u64 {
        let iova = 0x1_0000_0000 + i * PAGE_SIZE_2M;
        let gpa = 0x400_0000 + i * PAGE_SIZE_2M;
        s.map(
            1,
            iova,
            iova + PAGE_SIZE_2M - 1,
            gpa,
            MAP_F_READ | MAP_F_WRITE,
        )
        .unwrap();
    }
    let mut buf = vec![0x5au8; 4096];
    let total = 64u64 << 20;
    // First touch of the guest pages (host page faults), not measured.
    for off in (0..total).step_by(4096) {
        a.write(0x1_0000_0000 + off, &buf, "rx-buf").unwrap();
    }
    let t = std::time::Instant::now();
    for off in (0..total).step_by(4096) {
        a.read(0x1_0000_0000 + off, &mut buf, "tx-payload").unwrap();
    }
    let secs = t.elapsed().as_secs_f64();
    eprintln!(
        "IommuDma: 64 MiB in 4 KiB reads: {:.0} MiB/s ({:.0} ns/access)",
        64.0 / secs,
        secs * 1e9 / (total / 4096) as f64
    );
    let st = s.report().by_device["0000:00:01.0"];
    assert_eq!((st.reads, st.writes, st.bytes), (16384, 16384, 2 * total));
    assert_eq!(s.audit().next_seq(), 33 + 2 * 16384);
}

#[test]
fn dma_records_name_the_translating_domain() {
    let s = state();
    let mem = memory();
    let a = IommuDma::new(mem.clone(), &s, EP_A);
    let b = IommuDma::new(mem.clone(), &s, EP_B);
    let p = PassthroughDma::new(mem, s.audit(), 0x30);
    // Unattached with global bypass: identity, no domain.
    a.probe(0x3000, 8, Access::Read, "t").unwrap();
    s.attach(7, EP_A.into(), false).unwrap();
    s.map(7, 0x1000, 0x1fff, 0x5000, MAP_F_READ).unwrap();
    a.probe(0x1000, 8, Access::Read, "t").unwrap();
    // Permission fault: still translated in domain 7.
    let _ = a.probe(0x1000, 8, Access::Write, "t");
    // Bad range: the domain is known before the range is checked.
    let _ = a.probe(0x1000, 0, Access::Read, "t");
    s.attach(9, EP_B.into(), true).unwrap();
    b.probe(0x3000, 8, Access::Read, "t").unwrap();
    p.probe(0x3000, 8, Access::Read, "t").unwrap();
    s.set_bypass(false);
    s.detach(7, EP_A.into()).unwrap();
    let _ = a.probe(0x1000, 8, Access::Read, "t");
    let got: Vec<(Option<u32>, bool)> = s
        .audit()
        .drain_since(0)
        .records
        .into_iter()
        .filter_map(|r| match r.event {
            AuditEvent::Dma(d) => Some((d.domain, d.ok())),
            _ => None,
        })
        .collect();
    assert_eq!(
        got,
        [
            (None, true),
            (Some(7), true),
            (Some(7), false),
            (Some(7), false),
            (None, true),
            (None, true),
            (None, false),
        ]
    );
}

#[test]
fn alias_iova_finds_another_mapping_of_the_same_bytes() {
    let s = state();
    let a = IommuDma::new(memory(), &s, EP_A);
    assert_eq!(a.alias_iova(0x1000, 8), None, "no domain");
    s.attach(1, EP_A.into(), false).unwrap();
    // Binding 1: two pages at IOVA 0x10000; binding 2: the same pages at
    // 0x80000 (one mapping), plus an unrelated page.
    s.map(1, 0x10000, 0x10fff, 0x20000, MAP_F_READ).unwrap();
    s.map(1, 0x11000, 0x11fff, 0x21000, MAP_F_READ).unwrap();
    s.map(1, 0x80000, 0x81fff, 0x20000, MAP_F_READ).unwrap();
    s.map(1, 0x90000, 0x90fff, 0x30000, MAP_F_READ).unwrap();
    assert_eq!(a.alias_iova(0x10010, 0x100), Some(0x80010));
    assert_eq!(a.alias_iova(0x11ff0, 0x10), Some(0x81ff0));
    // Spanning both pages of binding 1 (contiguous in GPA): still one piece.
    assert_eq!(a.alias_iova(0x10ff0, 0x20), Some(0x80ff0));
    // And back: binding 2's IOVA aliases to binding 1's.
    assert_eq!(a.alias_iova(0x80010, 0x100), Some(0x10010));
    // Crossing into binding 2's IOVA range from binding 1 is not possible:
    // spanning 0x81000..0x82000 is the end of the mapping.
    assert_eq!(a.alias_iova(0x81ff0, 0x20), None, "unmapped tail");
    assert_eq!(a.alias_iova(0x90000, 0x10), None, "only one mapping");
    assert_eq!(a.alias_iova(0x10000, 0), None);
    // The alias really reads the same bytes.
    a.memory()
        .write_slice(&[7u8; 16], GuestAddress(0x20100))
        .unwrap();
    let (mut x, mut y) = ([0u8; 16], [0u8; 16]);
    a.read(0x10100, &mut x, "tx-payload").unwrap();
    a.read(a.alias_iova(0x10100, 16).unwrap(), &mut y, "tx-payload")
        .unwrap();
    assert_eq!((x, y), ([7; 16], [7; 16]));
    // Another endpoint's domain is not searched.
    let b = IommuDma::new(memory(), &s, EP_B);
    s.attach(2, EP_B.into(), false).unwrap();
    s.map(2, 0x10000, 0x10fff, 0x20000, MAP_F_READ).unwrap();
    assert_eq!(b.alias_iova(0x10010, 8), None);
    // Without read permission, a mapping is no alias.
    s.map(2, 0x50000, 0x50fff, 0x20000, MAP_F_WRITE).unwrap();
    assert_eq!(b.alias_iova(0x10010, 8), None);
    // Passthrough handles have none.
    let p = PassthroughDma::new(memory(), s.audit(), 0x30);
    assert_eq!(p.alias_iova(0x20000, 8), None);
}
