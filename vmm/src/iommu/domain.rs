//! One domain's I/O virtual address space: an interval map from IOVA ranges
//! to guest-physical ranges with their MAP flags (virtio 1.2 §5.13.6.3–4).
//!
//! Mappings never overlap. They are keyed by their first IOVA in a
//! `BTreeMap`, so the mapping that may contain an address is the last one
//! starting at or below it: every lookup is one `range(..=addr).next_back()`.

use std::collections::BTreeMap;

use crate::dma::FaultReason;

/// MAP flag: endpoints may read the range.
pub const MAP_F_READ: u32 = 1 << 0;
/// MAP flag: endpoints may write the range.
pub const MAP_F_WRITE: u32 = 1 << 1;
/// MAP flag: the range is MMIO (memory type, not a permission).
pub const MAP_F_MMIO: u32 = 1 << 2;
/// Every MAP flag the device knows.
pub const MAP_F_ALL: u32 = MAP_F_READ | MAP_F_WRITE | MAP_F_MMIO;

/// One mapping created by a single MAP request: `[iova, last]` (inclusive)
/// → `[gpa, gpa + last - iova]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Mapping {
    pub iova: u64,
    /// Last IOVA of the mapping (inclusive, so the top of the 64-bit space
    /// is representable).
    pub last: u64,
    pub gpa: u64,
    pub flags: u32,
}

impl Mapping {
    /// Size in bytes (saturates at `u64::MAX` for a full 64-bit mapping).
    pub fn size(&self) -> u64 {
        (self.last - self.iova).saturating_add(1)
    }
}

/// Why a mapping could not be inserted: it overlaps this existing one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Overlap(pub Mapping);

/// Why a range could not be unmapped: it would split this mapping.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Split(pub Mapping);

/// Where and why a translation failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WalkFault {
    pub reason: FaultReason,
    /// First IOVA that could not be translated with the needed permission.
    pub address: u64,
}

/// The mappings of one domain.
#[derive(Clone, Debug, Default)]
pub struct AddressSpace {
    map: BTreeMap<u64, Mapping>,
}

impl AddressSpace {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Mappings in IOVA order.
    pub fn iter(&self) -> impl Iterator<Item = &Mapping> {
        self.map.values()
    }

    /// The mapping containing `iova`, if any.
    pub fn lookup(&self, iova: u64) -> Option<&Mapping> {
        self.map
            .range(..=iova)
            .next_back()
            .map(|(_, m)| m)
            .filter(|m| m.last >= iova)
    }

    /// First mapping intersecting `[first, last]`, if any.
    fn first_intersecting(&self, first: u64, last: u64) -> Option<&Mapping> {
        self.lookup(first)
            .or_else(|| self.map.range(first..=last).next().map(|(_, m)| m))
    }

    /// Insert `m` (`m.iova <= m.last`), refusing any overlap.
    pub fn insert(&mut self, m: Mapping) -> Result<(), Overlap> {
        debug_assert!(m.iova <= m.last);
        if let Some(o) = self.first_intersecting(m.iova, m.last) {
            return Err(Overlap(*o));
        }
        self.map.insert(m.iova, m);
        Ok(())
    }

    /// Remove every mapping inside `[first, last]` and return them in IOVA
    /// order. If a mapping straddles either end of the range, nothing is
    /// removed and that mapping is returned as the error.
    pub fn remove_range(&mut self, first: u64, last: u64) -> Result<Vec<Mapping>, Split> {
        if first > last {
            return Ok(Vec::new());
        }
        // A mapping starting before `first` and reaching into the range.
        if let Some((_, m)) = self.map.range(..first).next_back()
            && m.last >= first
        {
            return Err(Split(*m));
        }
        // The last mapping starting inside the range must end inside it.
        if let Some((_, m)) = self.map.range(first..=last).next_back()
            && m.last > last
        {
            return Err(Split(*m));
        }
        let mut inside = self.map.split_off(&first);
        if let Some(after_start) = last.checked_add(1) {
            let mut after = inside.split_off(&after_start);
            self.map.append(&mut after);
        }
        Ok(inside.into_values().collect())
    }

    /// Remove every mapping.
    pub fn clear(&mut self) -> Vec<Mapping> {
        std::mem::take(&mut self.map).into_values().collect()
    }

    /// Translate `[iova, last]` for an access needing all of `need`
    /// (`MAP_F_READ` / `MAP_F_WRITE`), appending the guest-physical pieces
    /// to `out` (adjacent pieces that are also contiguous in GPA are
    /// merged). On failure `out` may hold a prefix and must be discarded.
    pub fn walk(
        &self,
        iova: u64,
        last: u64,
        need: u32,
        out: &mut Segments,
    ) -> Result<(), WalkFault> {
        let mut cur = iova;
        loop {
            let Some(m) = self.lookup(cur) else {
                return Err(WalkFault {
                    reason: FaultReason::Unmapped,
                    address: cur,
                });
            };
            if m.flags & need != need {
                return Err(WalkFault {
                    reason: FaultReason::Permission,
                    address: cur,
                });
            }
            let piece_last = m.last.min(last);
            // `cur - m.iova` fits: the MAP checked `gpa + size` for overflow.
            out.push(m.gpa + (cur - m.iova), piece_last - cur + 1);
            if piece_last == last {
                return Ok(());
            }
            cur = piece_last + 1;
        }
    }
}

/// Guest-physical `(address, length)` pieces of one translated access. Up to
/// four pieces live inline, so the common case never allocates.
#[derive(Clone, Debug, Default)]
pub struct Segments {
    inline: [(u64, u64); 4],
    n: usize,
    heap: Vec<(u64, u64)>,
}

impl Segments {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn clear(&mut self) {
        self.n = 0;
        self.heap.clear();
    }

    /// Append a piece, merging it with the previous one when contiguous.
    pub fn push(&mut self, gpa: u64, len: u64) {
        if let Some(last) = self.last_mut()
            && last.0.checked_add(last.1) == Some(gpa)
            && let Some(sum) = last.1.checked_add(len)
        {
            last.1 = sum;
            return;
        }
        if !self.heap.is_empty() {
            self.heap.push((gpa, len));
        } else if self.n < self.inline.len() {
            self.inline[self.n] = (gpa, len);
            self.n += 1;
        } else {
            self.heap.extend_from_slice(&self.inline);
            self.heap.push((gpa, len));
        }
    }

    fn last_mut(&mut self) -> Option<&mut (u64, u64)> {
        if self.heap.is_empty() {
            self.inline[..self.n].last_mut()
        } else {
            self.heap.last_mut()
        }
    }

    pub fn as_slice(&self) -> &[(u64, u64)] {
        if self.heap.is_empty() {
            &self.inline[..self.n]
        } else {
            &self.heap
        }
    }

    pub fn len(&self) -> usize {
        self.as_slice().len()
    }

    pub fn is_empty(&self) -> bool {
        self.as_slice().is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(iova: u64, last: u64, gpa: u64, flags: u32) -> Mapping {
        Mapping {
            iova,
            last,
            gpa,
            flags,
        }
    }

    const RW: u32 = MAP_F_READ | MAP_F_WRITE;

    #[test]
    fn insert_refuses_overlap() {
        let mut s = AddressSpace::new();
        s.insert(m(0x1000, 0x1fff, 0xa000, RW)).unwrap();
        s.insert(m(0x3000, 0x3fff, 0xb000, RW)).unwrap();
        for (a, b) in [
            (0x0, 0x1000),
            (0x1fff, 0x2fff),
            (0x0, 0xffff),
            (0x3800, 0x3800),
        ] {
            assert!(s.insert(m(a, b, 0, RW)).is_err(), "{a:#x}..={b:#x}");
        }
        s.insert(m(0x2000, 0x2fff, 0xc000, RW)).unwrap();
        s.insert(m(0, 0xfff, 0, RW)).unwrap();
        s.insert(m(u64::MAX - 0xfff, u64::MAX, 0, RW)).unwrap();
        assert_eq!(s.len(), 5);
    }

    #[test]
    fn unmap_examples_from_the_spec() {
        // virtio 1.2 §5.13.6.4, examples (1)–(7), scaled by 0x1000.
        let p = |x: u64| x * 0x1000;
        let mut s = AddressSpace::new();
        assert_eq!(s.remove_range(p(0), p(5) - 1).unwrap(), vec![]);
        s.insert(m(p(0), p(10) - 1, 0, RW)).unwrap();
        assert_eq!(s.remove_range(p(0), p(10) - 1).unwrap().len(), 1);
        s.insert(m(p(0), p(5) - 1, 0, RW)).unwrap();
        s.insert(m(p(5), p(10) - 1, 0, RW)).unwrap();
        assert_eq!(s.remove_range(p(0), p(10) - 1).unwrap().len(), 2);
        s.insert(m(p(0), p(10) - 1, 0, RW)).unwrap();
        assert!(s.remove_range(p(0), p(5) - 1).is_err());
        assert!(s.remove_range(p(5), p(20)).is_err());
        assert_eq!(s.len(), 1);
        s.clear();
        s.insert(m(p(0), p(5) - 1, 0, RW)).unwrap();
        s.insert(m(p(5), p(10) - 1, 0, RW)).unwrap();
        assert_eq!(s.remove_range(p(0), p(5) - 1).unwrap().len(), 1);
        assert_eq!(s.remove_range(p(0), p(20)).unwrap().len(), 1);
        s.insert(m(p(0), p(5) - 1, 0, RW)).unwrap();
        s.insert(m(p(10), p(15) - 1, 0, RW)).unwrap();
        assert_eq!(s.remove_range(p(0), p(15) - 1).unwrap().len(), 2);
        assert!(s.is_empty());
        s.insert(m(u64::MAX - 0xfff, u64::MAX, 0, RW)).unwrap();
        assert_eq!(s.remove_range(0, u64::MAX).unwrap().len(), 1);
    }

    #[test]
    fn walk_spans_adjacent_mappings_and_checks_permissions() {
        let mut s = AddressSpace::new();
        s.insert(m(0x1000, 0x1fff, 0xa000, RW)).unwrap();
        s.insert(m(0x2000, 0x2fff, 0xb000, MAP_F_READ)).unwrap();
        s.insert(m(0x3000, 0x3fff, 0xc000, RW)).unwrap();
        let mut out = Segments::new();
        s.walk(0x1800, 0x37ff, MAP_F_READ, &mut out).unwrap();
        // All three are contiguous in GPA too: one piece.
        assert_eq!(out.as_slice(), &[(0xa800, 0x2000)][..]);
        out.clear();
        s.walk(0x1800, 0x1fff, MAP_F_READ, &mut out).unwrap();
        s.walk(0x3000, 0x30ff, MAP_F_READ, &mut out).unwrap();
        assert_eq!(out.as_slice(), &[(0xa800, 0x800), (0xc000, 0x100)][..]);
        out.clear();
        let e = s.walk(0x1800, 0x37ff, MAP_F_WRITE, &mut out).unwrap_err();
        assert_eq!((e.reason, e.address), (FaultReason::Permission, 0x2000));
        out.clear();
        let e = s.walk(0x3800, 0x47ff, MAP_F_READ, &mut out).unwrap_err();
        assert_eq!((e.reason, e.address), (FaultReason::Unmapped, 0x4000));
        out.clear();
        let e = s.walk(0x800, 0x1800, 0, &mut out).unwrap_err();
        assert_eq!((e.reason, e.address), (FaultReason::Unmapped, 0x800));
    }

    #[test]
    fn segments_spill_to_the_heap() {
        let mut s = Segments::new();
        for i in 0..10u64 {
            s.push(i * 0x2000, 0x1000);
        }
        assert_eq!(s.len(), 10);
        assert_eq!(s.as_slice()[9], (0x12000, 0x1000));
        s.push(0x13000, 0x10);
        assert_eq!(s.len(), 10);
        assert_eq!(s.as_slice()[9], (0x12000, 0x1010));
        s.clear();
        assert!(s.is_empty());
        s.push(u64::MAX, 1);
        s.push(0, 1);
        assert_eq!(s.len(), 2);
    }
}
