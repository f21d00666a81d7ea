//! [`EndpointMemory`]: a virtio device's view of guest memory through its
//! IOMMU endpoint, as a `vm_memory::GuestMemory` (the vm-memory 0.18 "I/O
//! memory" trait that virtio-queue 0.18's `Queue` works with).
//!
//! Every access (descriptor, avail/used ring, buffer) is translated through
//! the *current* domain tables, permission-checked, recorded in the audit
//! trail and, if refused, reported as a fault: ring addresses are not
//! translated once at queue enable but on each use, so an UNMAP of a ring
//! page takes effect on the next access.
//!
//! We implement `GuestMemory` directly rather than using vm-memory's
//! `IommuMemory` + `Iotlb`: the domain tables are already the source of
//! truth (no IOTLB to keep coherent), each access needs an audit record with
//! a tag (`vring` for ring addresses, the device's buffer tag otherwise),
//! and `check_range` (queue validation) must not count as DMA.
//!
//! Unlike [`IommuDma`], the copy happens after the tables' lock is released
//! (virtio-queue holds the slices across calls), so an UNMAP racing with a
//! virtio device's access can complete between translation and copy; the
//! audit record (taken at translation) still orders before that UNMAP.

use std::iter::FusedIterator;
use std::sync::Arc;

use vm_memory::guest_memory::{GuestMemoryBackendSliceIterator, GuestMemorySliceIterator};
use vm_memory::iommu::{Error as IovaError, IovaRange};
use vm_memory::{
    GuestAddress, GuestMemory, GuestMemoryBackend, GuestMemoryError, GuestMemoryMmap,
    GuestMemoryResult, Permissions, VolatileSlice,
};

use super::dma::IommuDma;
use super::domain::Segments;
use super::{MAP_F_READ, MAP_F_WRITE};
use crate::dma::{Access, DmaTag};

/// Tag of accesses to a virtqueue's descriptor table and rings.
pub const TAG_VRING: DmaTag = "vring";
/// Tag of other accesses when the device sets none.
pub const TAG_DEFAULT: DmaTag = "dma";

/// A virtio device's guest memory through its IOMMU endpoint.
#[derive(Clone, Debug)]
pub struct EndpointMemory {
    dma: Arc<IommuDma>,
    /// `[start, end)` IOVA ranges of the device's vrings.
    rings: Arc<[(u64, u64)]>,
    buf_tag: DmaTag,
}

impl EndpointMemory {
    /// `rings`: the `[start, end)` IOVA ranges of the device's descriptor
    /// tables and rings; accesses inside them are tagged [`TAG_VRING`].
    pub fn new(dma: Arc<IommuDma>, rings: Vec<(u64, u64)>) -> Self {
        EndpointMemory {
            dma,
            rings: rings.into(),
            buf_tag: TAG_DEFAULT,
        }
    }

    /// The same view, tagging non-ring accesses with `tag` (e.g. `rng-buf`).
    pub fn with_buf_tag(mut self, tag: DmaTag) -> Self {
        self.buf_tag = tag;
        self
    }

    pub fn dma(&self) -> &Arc<IommuDma> {
        &self.dma
    }

    fn tag_for(&self, iova: u64, len: u64) -> DmaTag {
        let end = iova.saturating_add(len);
        if self.rings.iter().any(|&(s, e)| iova < e && end > s) {
            TAG_VRING
        } else {
            self.buf_tag
        }
    }
}

fn need_of(access: Permissions) -> (u32, Access) {
    match access {
        Permissions::No => (0, Access::Read),
        Permissions::Read => (MAP_F_READ, Access::Read),
        Permissions::Write => (MAP_F_WRITE, Access::Write),
        Permissions::ReadWrite => (MAP_F_READ | MAP_F_WRITE, Access::Write),
    }
}

impl GuestMemory for EndpointMemory {
    type PhysicalMemory = GuestMemoryMmap<()>;
    type Bitmap = ();

    fn check_range(&self, addr: GuestAddress, count: usize, access: Permissions) -> bool {
        count == 0
            || self
                .dma
                .translate_quiet(addr.0, count as u64, need_of(access).0)
    }

    fn get_slices<'a>(
        &'a self,
        addr: GuestAddress,
        count: usize,
        access: Permissions,
    ) -> GuestMemoryResult<impl GuestMemorySliceIterator<'a, ()>> {
        let mut segs = Segments::new();
        if count > 0 {
            let (need, acc) = need_of(access);
            let len = count as u64;
            let tag = self.tag_for(addr.0, len);
            if let Err(f) = self
                .dma
                .translate_recorded(addr.0, len, acc, need, tag, &mut segs)
            {
                return Err(GuestMemoryError::IommuError(IovaError::CannotResolve {
                    iova_range: IovaRange {
                        base: addr,
                        length: count,
                    },
                    reason: format!("{:?}", f.reason),
                }));
            }
        }
        Ok(EndpointSlices {
            mem: self.dma.memory(),
            segs,
            next: 0,
            cur: None,
            done: false,
        })
    }

    fn physical_memory(&self) -> Option<&Self::PhysicalMemory> {
        None
    }
}

/// Slices of one translated access, piece by piece.
pub struct EndpointSlices<'a> {
    mem: &'a GuestMemoryMmap<()>,
    segs: Segments,
    next: usize,
    cur: Option<GuestMemoryBackendSliceIterator<'a, GuestMemoryMmap<()>>>,
    done: bool,
}

impl<'a> Iterator for EndpointSlices<'a> {
    type Item = GuestMemoryResult<VolatileSlice<'a, ()>>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        loop {
            if let Some(item) = self.cur.as_mut().and_then(Iterator::next) {
                if item.is_err() {
                    self.done = true;
                }
                return Some(item);
            }
            let Some(&(gpa, len)) = self.segs.as_slice().get(self.next) else {
                self.done = true;
                return None;
            };
            self.next += 1;
            self.cur = Some(GuestMemoryBackend::get_slices(
                self.mem,
                GuestAddress(gpa),
                len as usize,
            ));
        }
    }
}

impl FusedIterator for EndpointSlices<'_> {}

impl<'a> GuestMemorySliceIterator<'a, ()> for EndpointSlices<'a> {}
