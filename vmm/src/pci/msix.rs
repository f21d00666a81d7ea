//! MSI-X: the capability's message control, the vector table and the
//! pending-bit array (PCI Local Bus 3.0 §6.8.2).
//!
//! The table and PBA live in a BAR region of the owning device's choosing;
//! the device forwards accesses to [`MsixConfig::read_table`] and friends.
//! Every change of a vector's effective route (entry contents, entry mask,
//! function mask, enable) is pushed to the [`MsiSink`]: `Some(msg)` while the
//! vector can be delivered, `None` while it is masked or MSI-X is off.

use std::sync::Arc;

use crate::device::{MsiMessage, MsiSink};

/// MSI-X capability ID.
pub const MSIX_CAP_ID: u8 = 0x11;
/// Length of the MSI-X capability structure.
pub const MSIX_CAP_LEN: usize = 12;
/// Bytes per vector table entry.
pub const MSIX_TABLE_ENTRY_SIZE: u64 = 16;
/// Architectural maximum number of vectors.
pub const MSIX_MAX_VECTORS: u16 = 2048;
/// Message control: MSI-X enable.
pub const MSIX_CTRL_ENABLE: u16 = 1 << 15;
/// Message control: function mask.
pub const MSIX_CTRL_FUNCTION_MASK: u16 = 1 << 14;
/// Vector control: per-vector mask bit.
const ENTRY_CTRL_MASKED: u32 = 1;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct MsixEntry {
    addr_lo: u32,
    addr_hi: u32,
    data: u32,
    ctrl: u32,
}

impl Default for MsixEntry {
    /// Vectors come out of reset masked (PCI 3.0 §6.8.2.9).
    fn default() -> Self {
        MsixEntry {
            addr_lo: 0,
            addr_hi: 0,
            data: 0,
            ctrl: ENTRY_CTRL_MASKED,
        }
    }
}

impl MsixEntry {
    fn masked(&self) -> bool {
        self.ctrl & ENTRY_CTRL_MASKED != 0
    }

    fn message(&self) -> MsiMessage {
        MsiMessage {
            address: (u64::from(self.addr_hi) << 32) | u64::from(self.addr_lo),
            data: self.data,
        }
    }

    fn dword(&self, i: usize) -> u32 {
        match i {
            0 => self.addr_lo,
            1 => self.addr_hi,
            2 => self.data,
            _ => self.ctrl,
        }
    }

    fn set_dword(&mut self, i: usize, v: u32) {
        match i {
            0 => self.addr_lo = v,
            1 => self.addr_hi = v,
            2 => self.data = v,
            // Only the mask bit is defined; the rest is reserved (reads 0).
            _ => self.ctrl = v & ENTRY_CTRL_MASKED,
        }
    }
}

/// MSI-X state of one function.
pub struct MsixConfig {
    entries: Vec<MsixEntry>,
    pba: Vec<u64>,
    enabled: bool,
    function_masked: bool,
    /// Route last reported to the sink for each vector.
    routes: Vec<Option<MsiMessage>>,
    sink: Arc<dyn MsiSink>,
}

impl MsixConfig {
    /// `num_vectors` is clamped to 1..=2048.
    pub fn new(num_vectors: u16, sink: Arc<dyn MsiSink>) -> Self {
        let n = usize::from(num_vectors.clamp(1, MSIX_MAX_VECTORS));
        MsixConfig {
            entries: vec![MsixEntry::default(); n],
            pba: vec![0; n.div_ceil(64)],
            enabled: false,
            function_masked: false,
            routes: vec![None; n],
            sink,
        }
    }

    pub fn num_vectors(&self) -> u16 {
        self.entries.len() as u16
    }

    /// Bytes the vector table occupies.
    pub fn table_size(&self) -> u64 {
        self.entries.len() as u64 * MSIX_TABLE_ENTRY_SIZE
    }

    /// Bytes the PBA occupies (whole qwords).
    pub fn pba_size(&self) -> u64 {
        self.pba.len() as u64 * 8
    }

    /// Capability body for [`PciConfiguration::add_capability`](super::PciConfiguration::add_capability).
    /// Offsets must be 8-byte aligned; BIRs are BAR indices 0..=5. The owner
    /// must make the upper byte of message control (offset +3, bits 15:14)
    /// writable and forward writes with [`set_message_control`](Self::set_message_control).
    pub fn capability(
        &self,
        table_bar: u8,
        table_offset: u32,
        pba_bar: u8,
        pba_offset: u32,
    ) -> [u8; MSIX_CAP_LEN] {
        let mut cap = [0u8; MSIX_CAP_LEN];
        cap[0] = MSIX_CAP_ID;
        cap[2..4].copy_from_slice(&self.message_control().to_le_bytes());
        let table = (table_offset & !7) | u32::from(table_bar & 7);
        let pba = (pba_offset & !7) | u32::from(pba_bar & 7);
        cap[4..8].copy_from_slice(&table.to_le_bytes());
        cap[8..12].copy_from_slice(&pba.to_le_bytes());
        cap
    }

    /// Current message control register value.
    pub fn message_control(&self) -> u16 {
        let mut v = self.num_vectors() - 1;
        if self.enabled {
            v |= MSIX_CTRL_ENABLE;
        }
        if self.function_masked {
            v |= MSIX_CTRL_FUNCTION_MASK;
        }
        v
    }

    /// The guest wrote message control (only enable and function mask
    /// matter; the table size is read-only).
    pub fn set_message_control(&mut self, ctrl: u16) {
        let enabled = ctrl & MSIX_CTRL_ENABLE != 0;
        let masked = ctrl & MSIX_CTRL_FUNCTION_MASK != 0;
        if enabled == self.enabled && masked == self.function_masked {
            return;
        }
        self.enabled = enabled;
        self.function_masked = masked;
        for v in 0..self.entries.len() {
            self.sync_vector(v);
        }
    }

    pub fn enabled(&self) -> bool {
        self.enabled
    }

    pub fn function_masked(&self) -> bool {
        self.function_masked
    }

    /// Whether `vector`'s pending bit is set.
    pub fn is_pending(&self, vector: u16) -> bool {
        let v = usize::from(vector);
        self.pba
            .get(v / 64)
            .is_some_and(|w| w & (1 << (v % 64)) != 0)
    }

    fn set_pending(&mut self, v: usize, pending: bool) {
        if let Some(w) = self.pba.get_mut(v / 64) {
            if pending {
                *w |= 1 << (v % 64);
            } else {
                *w &= !(1 << (v % 64));
            }
        }
    }

    fn deliverable(&self, v: usize) -> bool {
        self.enabled && !self.function_masked && self.entries.get(v).is_some_and(|e| !e.masked())
    }

    /// Push `v`'s effective route if it changed; fire a pending vector that
    /// just became deliverable.
    fn sync_vector(&mut self, v: usize) {
        let Some(entry) = self.entries.get(v) else {
            return;
        };
        let deliverable = self.deliverable(v);
        let route = deliverable.then(|| entry.message());
        if self.routes[v] != route {
            self.routes[v] = route;
            self.sink.set_route(v as u16, route);
        }
        if deliverable && self.is_pending(v as u16) {
            self.set_pending(v, false);
            self.sink.trigger(v as u16);
        }
    }

    /// Guest read of the vector table at byte `offset` (any size; bytes
    /// outside the table read as zero).
    pub fn read_table(&self, offset: u64, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            *b = offset
                .checked_add(i as u64)
                .and_then(|o| {
                    let e = self
                        .entries
                        .get(usize::try_from(o / MSIX_TABLE_ENTRY_SIZE).ok()?)?;
                    let d = e.dword(((o % MSIX_TABLE_ENTRY_SIZE) / 4) as usize);
                    Some((d >> (8 * (o % 4))) as u8)
                })
                .unwrap_or(0);
        }
    }

    /// Guest write to the vector table at byte `offset` (any size, so
    /// partial dwords and qwords spanning two fields work; bytes outside the
    /// table are dropped).
    pub fn write_table(&mut self, offset: u64, data: &[u8]) {
        let mut touched: Option<(usize, usize)> = None;
        for (i, b) in data.iter().enumerate() {
            let Some(o) = offset.checked_add(i as u64) else {
                break;
            };
            let Ok(idx) = usize::try_from(o / MSIX_TABLE_ENTRY_SIZE) else {
                break;
            };
            let Some(e) = self.entries.get_mut(idx) else {
                break;
            };
            let field = ((o % MSIX_TABLE_ENTRY_SIZE) / 4) as usize;
            let shift = 8 * (o % 4);
            let d = e.dword(field);
            e.set_dword(field, (d & !(0xff << shift)) | (u32::from(*b) << shift));
            touched = Some(match touched {
                None => (idx, idx),
                Some((lo, _)) => (lo, idx),
            });
        }
        if let Some((lo, hi)) = touched {
            for v in lo..=hi {
                self.sync_vector(v);
            }
        }
    }

    /// Guest read of the PBA at byte `offset`; the PBA is read-only.
    pub fn read_pba(&self, offset: u64, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            *b = offset
                .checked_add(i as u64)
                .and_then(|o| {
                    let w = self.pba.get(usize::try_from(o / 8).ok()?)?;
                    Some((w >> (8 * (o % 8))) as u8)
                })
                .unwrap_or(0);
        }
    }

    /// The device wants to raise `vector`: deliver it now if MSI-X is on
    /// and neither the function nor the vector is masked, else remember it
    /// in the PBA (delivered when it becomes deliverable).
    pub fn notify(&mut self, vector: u16) {
        let v = usize::from(vector);
        if v >= self.entries.len() {
            return;
        }
        if self.deliverable(v) {
            if !self.sink.trigger(vector) {
                tracing::trace!(vector, "MSI-X vector has no route");
            }
        } else {
            self.set_pending(v, true);
        }
    }

    /// Back to power-on state: disabled, all vectors masked, nothing
    /// pending, all routes removed.
    pub fn reset(&mut self) {
        self.enabled = false;
        self.function_masked = false;
        self.entries.fill(MsixEntry::default());
        self.pba.fill(0);
        for v in 0..self.entries.len() {
            self.sync_vector(v);
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::sync::Mutex;

    #[derive(Clone, Debug, PartialEq, Eq)]
    pub(crate) enum SinkCall {
        Route(u16, Option<MsiMessage>),
        Trigger(u16),
    }

    /// Records every call; `trigger` succeeds when the vector has a route.
    #[derive(Default)]
    pub(crate) struct FakeSink {
        pub calls: Mutex<Vec<SinkCall>>,
        routes: Mutex<std::collections::HashMap<u16, MsiMessage>>,
    }

    impl FakeSink {
        pub fn take(&self) -> Vec<SinkCall> {
            std::mem::take(&mut *self.calls.lock().unwrap())
        }

        pub fn triggers(&self, vector: u16) -> usize {
            self.calls
                .lock()
                .unwrap()
                .iter()
                .filter(|c| **c == SinkCall::Trigger(vector))
                .count()
        }
    }

    impl MsiSink for FakeSink {
        fn set_route(&self, vector: u16, msg: Option<MsiMessage>) {
            let mut r = self.routes.lock().unwrap();
            match msg {
                Some(m) => r.insert(vector, m),
                None => r.remove(&vector),
            };
            self.calls
                .lock()
                .unwrap()
                .push(SinkCall::Route(vector, msg));
        }

        fn trigger(&self, vector: u16) -> bool {
            self.calls.lock().unwrap().push(SinkCall::Trigger(vector));
            self.routes.lock().unwrap().contains_key(&vector)
        }
    }

    fn setup(n: u16) -> (MsixConfig, Arc<FakeSink>) {
        let sink = Arc::new(FakeSink::default());
        (MsixConfig::new(n, sink.clone()), sink)
    }

    fn program(m: &mut MsixConfig, v: u64, addr: u64, data: u32) {
        let base = v * 16;
        m.write_table(base, &(addr as u32).to_le_bytes());
        m.write_table(base + 4, &((addr >> 32) as u32).to_le_bytes());
        m.write_table(base + 8, &data.to_le_bytes());
    }

    const MSG: MsiMessage = MsiMessage {
        address: 0xfee0_1000,
        data: 0x41,
    };

    #[test]
    fn sizes_and_capability() {
        let (m, _) = setup(3);
        assert_eq!(m.num_vectors(), 3);
        assert_eq!(m.table_size(), 48);
        assert_eq!(m.pba_size(), 8);
        let cap = m.capability(0, 0x4000, 0, 0x5000);
        assert_eq!(cap[0], MSIX_CAP_ID);
        assert_eq!(u16::from_le_bytes([cap[2], cap[3]]), 2);
        assert_eq!(u32::from_le_bytes(cap[4..8].try_into().unwrap()), 0x4000);
        assert_eq!(u32::from_le_bytes(cap[8..12].try_into().unwrap()), 0x5000);
        let (m, _) = setup(0);
        assert_eq!(m.num_vectors(), 1);
        let (m, _) = setup(u16::MAX);
        assert_eq!(m.num_vectors(), 2048);
        assert_eq!(m.pba_size(), 256);
    }

    #[test]
    fn table_partial_access() {
        let (mut m, _) = setup(2);
        // Initially masked.
        let mut d = [0u8; 4];
        m.read_table(12, &mut d);
        assert_eq!(u32::from_le_bytes(d), 1);
        // Byte and word writes build up a dword.
        m.write_table(16, &[0x78]);
        m.write_table(17, &[0x56]);
        m.write_table(18, &[0x34, 0x12]);
        m.read_table(16, &mut d);
        assert_eq!(u32::from_le_bytes(d), 0x1234_5678);
        let mut w = [0u8; 2];
        m.read_table(17, &mut w);
        assert_eq!(w, [0x56, 0x34]);
        // A qword write covers addr lo + hi.
        m.write_table(0, &0x0000_0001_fee0_0000u64.to_le_bytes());
        let mut q = [0u8; 8];
        m.read_table(0, &mut q);
        assert_eq!(u64::from_le_bytes(q), 0x1_fee0_0000);
        // Reserved vector-control bits read zero.
        m.write_table(12, &0xffff_fffeu32.to_le_bytes());
        m.read_table(12, &mut d);
        assert_eq!(u32::from_le_bytes(d), 0);
        // Out of range: reads zero, writes ignored, no panic.
        m.read_table(32, &mut d);
        assert_eq!(d, [0; 4]);
        m.write_table(30, &[1, 2, 3, 4]);
        m.write_table(u64::MAX - 1, &[1, 2, 3, 4]);
        m.read_table(u64::MAX - 1, &mut d);
        m.read_pba(u64::MAX, &mut d);
    }

    #[test]
    fn routes_follow_enable_and_masks() {
        let (mut m, sink) = setup(4);
        program(&mut m, 1, MSG.address, MSG.data);
        // Disabled: no route yet.
        assert!(sink.take().is_empty());
        m.set_message_control(MSIX_CTRL_ENABLE | MSIX_CTRL_FUNCTION_MASK);
        assert!(sink.take().is_empty());
        // Unmask vector 1 while function-masked: still nothing.
        m.write_table(16 + 12, &0u32.to_le_bytes());
        assert!(sink.take().is_empty());
        m.set_message_control(MSIX_CTRL_ENABLE);
        assert_eq!(sink.take(), vec![SinkCall::Route(1, Some(MSG))]);
        assert_eq!(m.message_control(), MSIX_CTRL_ENABLE | 3);
        // Changing data of an unmasked vector updates the route.
        m.write_table(16 + 8, &0x42u32.to_le_bytes());
        let msg2 = MsiMessage { data: 0x42, ..MSG };
        assert_eq!(sink.take(), vec![SinkCall::Route(1, Some(msg2))]);
        // Mask vector → route removed.
        m.write_table(16 + 12, &1u32.to_le_bytes());
        assert_eq!(sink.take(), vec![SinkCall::Route(1, None)]);
        // Disable → nothing more to remove.
        m.set_message_control(0);
        assert!(sink.take().is_empty());
    }

    #[test]
    fn pending_bits() {
        let (mut m, sink) = setup(4);
        program(&mut m, 2, MSG.address, MSG.data);
        m.write_table(2 * 16 + 12, &0u32.to_le_bytes());
        // Disabled: notify sets the PBA bit.
        m.notify(2);
        assert!(m.is_pending(2));
        let mut d = [0u8; 8];
        m.read_pba(0, &mut d);
        assert_eq!(u64::from_le_bytes(d), 1 << 2);
        assert!(sink.take().is_empty());
        // Enabling fires and clears it.
        m.set_message_control(MSIX_CTRL_ENABLE);
        assert_eq!(
            sink.take(),
            vec![SinkCall::Route(2, Some(MSG)), SinkCall::Trigger(2)]
        );
        assert!(!m.is_pending(2));
        // Deliverable: notify triggers directly.
        m.notify(2);
        assert_eq!(sink.take(), vec![SinkCall::Trigger(2)]);
        // Vector mask: pending, then unmask fires.
        m.write_table(2 * 16 + 12, &1u32.to_le_bytes());
        sink.take();
        m.notify(2);
        assert!(m.is_pending(2));
        assert!(sink.take().is_empty());
        m.write_table(2 * 16 + 12, &[0]);
        assert_eq!(
            sink.take(),
            vec![SinkCall::Route(2, Some(MSG)), SinkCall::Trigger(2)]
        );
        // Function mask: pending, unmask fires.
        m.set_message_control(MSIX_CTRL_ENABLE | MSIX_CTRL_FUNCTION_MASK);
        assert_eq!(sink.take(), vec![SinkCall::Route(2, None)]);
        m.notify(2);
        assert!(m.is_pending(2));
        m.set_message_control(MSIX_CTRL_ENABLE);
        assert_eq!(
            sink.take(),
            vec![SinkCall::Route(2, Some(MSG)), SinkCall::Trigger(2)]
        );
        // Out-of-range vectors are ignored.
        m.notify(4);
        m.notify(u16::MAX);
        assert!(sink.take().is_empty());
        // Writes to the PBA region are not possible (no API); reset clears.
        m.write_table(2 * 16 + 12, &1u32.to_le_bytes());
        m.notify(2);
        sink.take();
        m.reset();
        assert!(!m.is_pending(2));
        assert!(!m.enabled());
        assert!(sink.take().is_empty());
        m.set_message_control(MSIX_CTRL_ENABLE);
        m.write_table(2 * 16 + 12, &0u32.to_le_bytes());
        assert_eq!(
            sink.take(),
            vec![SinkCall::Route(2, Some(MsiMessage::default()))]
        );
        m.reset();
        assert_eq!(sink.take(), vec![SinkCall::Route(2, None)]);
    }
}
