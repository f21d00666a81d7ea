//! DQO TX: descriptor ring → packets (TSO and checksum offload) → wire,
//! then descriptor and packet completions with the generation bit
//! (gve_tx_dqo.c, gve_desc_dqo.h).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::adminq::CreateTxQueue;
use crate::desc::{
    COMPL_TYPE_DESC, COMPL_TYPE_PKT, DQO_TX_MAX, TX_COMPL_SIZE, TX_DESC_SIZE, TX_MAX_HDR_SIZE,
    TxDesc, encode_tx_compl,
};
use crate::device::Dev;
use crate::packet::{fill_l4_checksum, tso_segment};
use crate::stats::{Counters, RefusalKind};
use crate::wire::TxOutcome;

/// Descriptors read per ring access.
const READ_WINDOW: u32 = 256;
/// More descriptors than this for one packet is nonsense.
pub const MAX_DESCS_PER_PACKET: usize = 128;
/// Packets per queue per poll round.
const PACKET_BUDGET: usize = 64;

/// Device-side state of one TX queue.
#[derive(Clone, Debug)]
pub(crate) struct TxQueue {
    pub id: u16,
    pub ring: u64,
    pub size: u32,
    pub comp: u64,
    pub comp_size: u32,
    pub ntfy: u32,
    /// Next descriptor to fetch.
    pub head: u32,
    /// Last doorbell value (next free slot as seen by the driver).
    pub tail: u32,
    pub comp_tail: u32,
    /// Generation written on this pass (1 on the first pass).
    pub comp_gen: bool,
    /// A ring access faulted: the queue is dead until destroyed.
    pub broken: bool,
    /// Completions held back by the `tx-completion-delay` test fault:
    /// (when due, [(completion type, value)]) in order.
    pub delayed: VecDeque<(Instant, Vec<(u16, u16)>)>,
}

impl TxQueue {
    pub fn new(c: &CreateTxQueue) -> Self {
        TxQueue {
            id: c.queue_id as u16,
            ring: c.tx_ring_addr,
            size: u32::from(c.tx_ring_size),
            comp: c.tx_comp_ring_addr,
            comp_size: u32::from(c.tx_comp_ring_size),
            ntfy: c.ntfy_id,
            head: 0,
            tail: 0,
            comp_tail: 0,
            comp_gen: true,
            broken: false,
            delayed: VecDeque::new(),
        }
    }
}

/// One packet's descriptors, as parsed.
struct TxPacket {
    /// Index after the last descriptor.
    next_head: u32,
    tag: Option<u16>,
    /// Descriptor indices with `report_event`.
    report: Vec<u32>,
    /// Why the packet is dropped, if it is.
    bad: Option<String>,
    tso: Option<(u32, u16, u8)>,
    csum: bool,
    bufs: Vec<(u64, u16)>,
}

enum Scan {
    Packet(TxPacket),
    /// No complete packet yet.
    Wait,
}

impl Dev<'_> {
    /// Flush the backlog, then run every TX queue. Returns whether more
    /// work is ready.
    pub fn tx_poll(&mut self) -> bool {
        if !self.flush_backlog() {
            return false;
        }
        let mut more = false;
        for q in 0..self.st.tx.len() {
            more |= self.tx_queue_round(q);
            if !self.st.tx_backlog.is_empty() {
                return false;
            }
        }
        more
    }

    /// Returns false while the wire is still full.
    fn flush_backlog(&mut self) -> bool {
        while let Some(f) = self.st.tx_backlog.pop_front() {
            if let Err(f) = self.send_frame(f) {
                self.st.tx_backlog.push_front(f);
                return false;
            }
        }
        true
    }

    /// Put one frame on the wire; hands it back if the peer is full.
    fn send_frame(&mut self, f: Vec<u8>) -> Result<(), Vec<u8>> {
        let c = &self.sh.counters;
        if !self.link_up() {
            Counters::inc(&c.tx_no_link);
            return Ok(());
        }
        match self.sh.port.transmit(f) {
            TxOutcome::Sent => {
                tracing::trace!(nic = %self.sh.cfg.name, "frame on the wire");
                Counters::inc(&c.tx_frames)
            }
            TxOutcome::NoLink => Counters::inc(&c.tx_no_link),
            TxOutcome::Full(f) => return Err(f),
        }
        Ok(())
    }

    fn emit(&mut self, frames: Vec<Vec<u8>>) {
        for f in frames {
            if !self.st.tx_backlog.is_empty() {
                self.st.tx_backlog.push_back(f);
            } else if let Err(f) = self.send_frame(f) {
                Counters::inc(&self.sh.counters.tx_backpressure);
                self.st.tx_backlog.push_back(f);
            }
        }
    }

    /// Read `n` descriptors starting at `head` (wrapping).
    fn read_tx_descs(&mut self, q: &TxQueue, n: u32) -> Option<Vec<[u8; 16]>> {
        let mut raw = vec![0u8; (n as usize) * TX_DESC_SIZE as usize];
        let first = n.min(q.size - q.head);
        let (a, b) = raw.split_at_mut(first as usize * TX_DESC_SIZE as usize);
        let at = q.ring.wrapping_add(u64::from(q.head) * TX_DESC_SIZE);
        if !self.dma_read(at, a, "tx-desc") || !self.dma_read(q.ring, b, "tx-desc") {
            return None;
        }
        Some(
            raw.chunks_exact(16)
                .map(|c| {
                    let mut d = [0u8; 16];
                    d.copy_from_slice(c);
                    d
                })
                .collect(),
        )
    }

    /// Process up to `PACKET_BUDGET` packets of queue `q`.
    fn tx_queue_round(&mut self, q: usize) -> bool {
        let Some(queue) = self.st.tx.get(q).and_then(Option::as_ref).cloned() else {
            return false;
        };
        if queue.broken || queue.head == queue.tail {
            return false;
        }
        let mask = queue.size - 1;
        let avail = queue.tail.wrapping_sub(queue.head) & mask;
        let n = avail.min(READ_WINDOW);
        let Some(raw) = self.read_tx_descs(&queue, n) else {
            self.break_tx(q, "descriptor ring read faulted");
            return false;
        };
        let descs: Vec<TxDesc> = raw.iter().map(TxDesc::parse).collect();
        let mut pos = 0usize;
        let mut head = queue.head;
        let mut wrote = false;
        let mut packets = 0;
        let mut more = false;
        while pos < descs.len() {
            if packets == PACKET_BUDGET || !self.st.tx_backlog.is_empty() {
                more = self.st.tx_backlog.is_empty();
                break;
            }
            let full_window = n == avail;
            let ring_full = avail == mask;
            match scan_packet(&descs[pos..], head, mask, full_window && ring_full) {
                Scan::Wait => {
                    // An incomplete packet at the end of a partial window is
                    // read again from its start next round.
                    more = !full_window;
                    break;
                }
                Scan::Packet(p) => {
                    let used = (p.next_head.wrapping_sub(head) & mask) as usize;
                    let used = if used == 0 { descs.len() - pos } else { used };
                    pos += used;
                    head = p.next_head;
                    packets += 1;
                    let Some(ok) = self.finish_packet(q, &queue, p) else {
                        return false;
                    };
                    wrote |= ok;
                }
            }
        }
        if let Some(Some(t)) = self.st.tx.get_mut(q) {
            t.head = head;
        }
        if wrote {
            self.notify_block(queue.ntfy);
        }
        more
    }

    fn break_tx(&mut self, q: usize, why: &str) {
        if let Some(Some(t)) = self.st.tx.get_mut(q) {
            t.broken = true;
        }
        self.refuse(RefusalKind::TxDescriptor, format!("TX{q}: {why}"));
        self.request_reset(&format!("TX queue {q}: {why}"));
    }

    /// Read, transform and send one packet, then complete it. Returns
    /// whether completions were written (`None`: the queue broke).
    fn finish_packet(&mut self, q: usize, queue: &TxQueue, p: TxPacket) -> Option<bool> {
        let c = &self.sh.counters;
        Counters::inc(&c.tx_packets);
        if let Some(why) = &p.bad {
            Counters::inc(&c.tx_bad_packets);
            self.refuse(RefusalKind::TxDescriptor, format!("TX{q}: {why}"));
        } else {
            self.transmit_packet(q, &p);
        }
        self.st.faults.tx_packets_seen += 1;
        if let Some(after) = self.st.faults.active.reset_request_after
            && !self.st.faults.reset_requested
            && self.st.faults.tx_packets_seen > after
        {
            self.st.faults.reset_requested = true;
            self.request_reset(&format!(
                "test fault reset-request after {after} TX packets"
            ));
        }
        // Descriptor completions first (the driver learns the ring head from
        // them), then the packet completion.
        let mask = queue.size - 1;
        let mut compls: Vec<(u16, u16)> = p
            .report
            .iter()
            .map(|idx| (COMPL_TYPE_DESC, ((idx + 1) & mask) as u16))
            .collect();
        if let Some(tag) = p.tag {
            compls.push((COMPL_TYPE_PKT, tag));
        }
        if compls.is_empty() {
            return Some(false);
        }
        let delay = self.st.faults.active.tx_completion_delay;
        let t = self.st.tx.get_mut(q)?.as_mut()?;
        if delay.is_some() || !t.delayed.is_empty() {
            // Delayed, or behind completions still held back (a ring's
            // completions are written in order: the descriptor ones move
            // the driver's view of the ring head).
            if delay.is_some() {
                Counters::inc(&self.sh.counters.tx_completions_delayed);
            }
            let now = Instant::now();
            let at = t
                .delayed
                .back()
                .map_or(now, |(at, _)| *at)
                .max(now + delay.unwrap_or_default());
            t.delayed.push_back((at, compls));
            return Some(false);
        }
        for (ctype, value) in compls {
            self.tx_complete(q, ctype, value)?;
        }
        Some(true)
    }

    /// Write the completions the `tx-completion-delay` test fault held
    /// back whose time has come; returns when the next ones are due.
    pub fn tx_flush_delayed(&mut self, now: Instant) -> Option<Duration> {
        // Completions held back stay due after the fault is cleared.
        if self.st.tx.iter().flatten().all(|t| t.delayed.is_empty()) {
            return None;
        }
        let mut wake: Option<Duration> = None;
        for q in 0..self.st.tx.len() {
            let mut wrote = false;
            while let Some(t) = self.st.tx.get_mut(q).and_then(Option::as_mut) {
                match t.delayed.front() {
                    Some((at, _)) if *at <= now => {}
                    Some((at, _)) => {
                        let w = at.saturating_duration_since(now);
                        wake = Some(wake.map_or(w, |x| x.min(w)));
                        break;
                    }
                    None => break,
                }
                let Some((_, compls)) = t.delayed.pop_front() else {
                    break;
                };
                let mut ok = true;
                for (ctype, value) in compls {
                    if self.tx_complete(q, ctype, value).is_none() {
                        ok = false;
                        break;
                    }
                }
                if !ok {
                    break;
                }
                wrote = true;
            }
            if wrote && let Some(Some(t)) = self.st.tx.get(q) {
                let b = t.ntfy;
                self.notify_block(b);
            }
        }
        wake
    }

    fn transmit_packet(&mut self, q: usize, p: &TxPacket) {
        let total: usize = p.bufs.iter().map(|b| usize::from(b.1)).sum();
        let limit = match p.tso {
            Some(_) => usize::from(TX_MAX_HDR_SIZE) + DQO_TX_MAX as usize,
            None => self.sh.cfg.max_frame(),
        };
        if total > limit {
            Counters::inc(&self.sh.counters.tx_bad_packets);
            self.refuse(
                RefusalKind::TxDescriptor,
                format!("TX{q}: packet of {total} bytes exceeds {limit}"),
            );
            return;
        }
        let mut pkt = vec![0u8; total];
        let mut off = 0;
        for (addr, len) in &p.bufs {
            let len = usize::from(*len);
            let addr = self.payload_iova(*addr, len as u64);
            if self.injected_dma_fault(crate::faults::QueueDir::Tx, q, "TX payload read") {
                Counters::inc(&self.sh.counters.tx_dma_faults);
                return;
            }
            if !self.dma_read(addr, &mut pkt[off..off + len], "tx-payload") {
                Counters::inc(&self.sh.counters.tx_dma_faults);
                return;
            }
            off += len;
        }
        Counters::add(&self.sh.counters.tx_bytes, total as u64);
        let frames = match p.tso {
            Some((tso_total_len, mss, header_len)) => {
                match tso_segment(&pkt, usize::from(header_len), mss, tso_total_len) {
                    Ok(f) => {
                        Counters::inc(&self.sh.counters.tx_tso_packets);
                        f
                    }
                    Err(e) => {
                        Counters::inc(&self.sh.counters.tx_bad_packets);
                        self.refuse(
                            RefusalKind::TxDescriptor,
                            format!("TX{q}: TSO refused: {e}"),
                        );
                        return;
                    }
                }
            }
            None => {
                if p.csum && fill_l4_checksum(&mut pkt) {
                    Counters::inc(&self.sh.counters.tx_csum_offloads);
                }
                vec![pkt]
            }
        };
        self.emit(frames);
    }

    /// The IOVA a TX payload read of `[iova, iova + len)` goes to: `iova`,
    /// unless the `dma-foreign-iova` test fault is on and due, and the
    /// domain maps the same bytes at another IOVA.
    fn payload_iova(&mut self, iova: u64, len: u64) -> u64 {
        let Some(after) = self.st.faults.active.dma_foreign_iova else {
            return iova;
        };
        let n = self.st.faults.payload_reads;
        self.st.faults.payload_reads += 1;
        if n < after {
            return iova;
        }
        match self.sh.dma.alias_iova(iova, len) {
            Some(alias) => {
                Counters::inc(&self.sh.counters.tx_foreign_iova_reads);
                tracing::trace!(nic = %self.sh.cfg.name, iova, alias, "dma-foreign-iova");
                alias
            }
            None => iova,
        }
    }

    /// Write one completion (generation last) and advance the tail.
    fn tx_complete(&mut self, q: usize, ctype: u16, value: u16) -> Option<()> {
        let t = self.st.tx.get(q)?.as_ref()?;
        let (id, gen_, at) = (
            t.id,
            t.comp_gen,
            t.comp.wrapping_add(u64::from(t.comp_tail) * TX_COMPL_SIZE),
        );
        // Full descriptor with the old generation, then the word holding
        // the new one: the driver never sees the new generation with stale
        // content (it tests the bit, then dma_rmb()).
        let stale = encode_tx_compl(id, ctype, !gen_, value);
        let fresh = encode_tx_compl(id, ctype, gen_, value);
        if !self.dma_write(at, &stale, "completion")
            || !self.dma_write(at, &fresh[0..2], "completion")
        {
            self.break_tx(q, "completion ring write faulted");
            return None;
        }
        let t = self.st.tx.get_mut(q)?.as_mut()?;
        t.comp_tail = (t.comp_tail + 1) & (t.comp_size - 1);
        if t.comp_tail == 0 {
            t.comp_gen = !t.comp_gen;
        }
        Some(())
    }
}

/// Find the next packet in `descs` (which start at ring index `head`).
/// `force` consumes an incomplete packet (the ring is full of descriptors
/// without end-of-packet, which would otherwise wedge the queue).
fn scan_packet(descs: &[TxDesc], head: u32, mask: u32, force: bool) -> Scan {
    let mut p = TxPacket {
        next_head: head,
        tag: None,
        report: Vec::new(),
        bad: None,
        tso: None,
        csum: false,
        bufs: Vec::new(),
    };
    let bad = |p: &mut TxPacket, why: String| {
        if p.bad.is_none() {
            p.bad = Some(why);
        }
    };
    for (i, d) in descs.iter().enumerate() {
        let idx = head.wrapping_add(i as u32) & mask;
        if i >= MAX_DESCS_PER_PACKET {
            bad(
                &mut p,
                format!("more than {MAX_DESCS_PER_PACKET} descriptors"),
            );
            p.next_head = idx;
            return Scan::Packet(p);
        }
        match *d {
            TxDesc::TsoCtx {
                tso_total_len,
                mss,
                header_len,
                tso,
            } => {
                if !p.bufs.is_empty() || p.tso.is_some() {
                    bad(&mut p, format!("TSO context at {idx} inside a packet"));
                } else if !tso {
                    bad(&mut p, format!("TSO context at {idx} without the tso bit"));
                } else {
                    p.tso = Some((tso_total_len, mss, header_len));
                }
            }
            TxDesc::GeneralCtx => {
                if !p.bufs.is_empty() {
                    bad(&mut p, format!("general context at {idx} inside a packet"));
                }
            }
            TxDesc::Unknown(t) => bad(&mut p, format!("unknown dtype {t:#x} at {idx}")),
            TxDesc::Pkt {
                buf_addr,
                end_of_packet,
                checksum_offload_enable,
                report_event,
                compl_tag,
                buf_size,
            } => {
                match p.tag {
                    None => {
                        p.tag = Some(compl_tag);
                        p.csum = checksum_offload_enable;
                    }
                    Some(t) if t != compl_tag => bad(
                        &mut p,
                        format!("completion tag {compl_tag} at {idx} differs from {t}"),
                    ),
                    Some(_) => {}
                }
                if report_event {
                    p.report.push(idx);
                }
                if buf_size == 0 {
                    bad(&mut p, format!("zero-length buffer at {idx}"));
                }
                p.bufs.push((buf_addr, buf_size));
                if end_of_packet {
                    p.next_head = (idx + 1) & mask;
                    return Scan::Packet(p);
                }
            }
        }
    }
    if force {
        bad(
            &mut p,
            "ring full of descriptors without end of packet".into(),
        );
        p.next_head = head.wrapping_add(descs.len() as u32) & mask;
        return Scan::Packet(p);
    }
    Scan::Wait
}
