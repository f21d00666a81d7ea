//! DQO RX (RDA): queue selection, buffer queue fetch, header split, RX
//! checksum and packet type, completions with the generation bit
//! (gve_rx_dqo.c, gve_desc_dqo.h).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::adminq::{CreateRxQueue, ptype};
use crate::desc::{RX_BUF_DESC_SIZE, RX_COMPL_SIZE, RxBufDesc, RxCompl};
use crate::device::Dev;
use crate::packet::{L3, L4, Parsed, RxCsum, flow_key, parse, verify_checksums};
use crate::rsc;
use crate::stats::{Counters, RefusalKind};

/// Frames taken from the inbox per poll round.
const DISPATCH_BUDGET: usize = 256;
/// Buffer descriptors fetched per ring read.
const FETCH_WINDOW: u32 = 64;

/// Device-side state of one RX queue.
#[derive(Debug)]
pub(crate) struct RxQueue {
    pub buf_ring: u64,
    pub buf_size: u32,
    pub comp_ring: u64,
    pub comp_size: u32,
    pub ntfy: u32,
    /// Bytes per posted payload buffer.
    pub pbs: u32,
    /// Header buffer size (0: header split off).
    pub hbs: u32,
    /// Created with `enable_rsc` (the driver's NETIF_F_GRO_HW).
    pub rsc: bool,
    /// Next buffer descriptor to fetch.
    pub buf_head: u32,
    /// Last doorbell value.
    pub buf_tail: u32,
    /// Fetched, not yet used buffers.
    pub cache: VecDeque<RxBufDesc>,
    pub comp_tail: u32,
    pub gen_bit: bool,
    /// Frames steered here, waiting for buffers (arrival time).
    pub pending: VecDeque<(Instant, Vec<u8>)>,
    pub broken: bool,
    /// Drops reported to the driver in the stats report (gve_adminq.h
    /// RX_QUEUE_DROP_CNT, RX_NO_BUFFERS_POSTED, RX_DROPS_INVALID_CHECKSUM).
    pub drops: u64,
    pub no_buffers: u64,
    pub bad_csum: u64,
}

impl RxQueue {
    pub fn new(c: &CreateRxQueue) -> Self {
        RxQueue {
            buf_ring: c.rx_data_ring_addr,
            buf_size: u32::from(c.rx_buff_ring_size),
            comp_ring: c.rx_desc_ring_addr,
            comp_size: u32::from(c.rx_ring_size),
            ntfy: c.ntfy_id,
            pbs: u32::from(c.packet_buffer_size),
            hbs: u32::from(c.header_buffer_size),
            rsc: c.enable_rsc != 0,
            buf_head: 0,
            buf_tail: 0,
            cache: VecDeque::new(),
            comp_tail: 0,
            gen_bit: true,
            pending: VecDeque::new(),
            broken: false,
            drops: 0,
            no_buffers: 0,
            bad_csum: 0,
        }
    }

    fn available(&self) -> usize {
        self.cache.len()
            + (self.buf_tail.wrapping_sub(self.buf_head) & (self.buf_size - 1)) as usize
    }
}

/// A coalesced frame being delivered.
#[derive(Clone, Copy, Debug)]
struct Coalesced {
    seg_len: u16,
    segs: u64,
    /// Bytes of the frames it was made of.
    wire_bytes: u64,
}

/// Plan a merge of queue `r`'s waiting frames from the front: only what
/// fits the buffers posted now, and only layouts `gve_rx_complete_rsc`
/// handles (gve_rx_dqo.c): with header split the headers in the header
/// buffer (the payload is then the skb's frags); without it the complete
/// headers plus payload in the first buffer and more than one buffer, so
/// the packet never takes the single-buffer copybreak path (a linear skb
/// would make the driver compute gso_segs = 0).
fn rsc_plan(r: &RxQueue) -> Option<rsc::Plan> {
    if !r.rsc {
        return None;
    }
    let front = &r.pending.front()?.1;
    let first = rsc::segment(front)?;
    let (pbs, hbs) = (r.pbs as usize, r.hbs as usize);
    if pbs == 0 {
        return None;
    }
    let hdr = first.hdr_end;
    let split = hbs > 0 && hdr <= hbs;
    let avail = r.available();
    let nbufs = |len: usize| {
        let data = if split { len.saturating_sub(hdr) } else { len };
        data.div_ceil(pbs).max(1)
    };
    let p = rsc::plan(r.pending.iter().map(|(_, f)| f.as_slice()), |len| {
        nbufs(len) <= avail
    })?;
    if !split && (hdr >= pbs || p.len <= pbs) {
        return None;
    }
    Some(p)
}

enum Deliver {
    Done,
    NeedBuffers,
    Dropped,
}

/// How a frame is laid out over header and payload buffers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Split {
    /// Header split off: the frame fills payload buffers.
    None,
    /// The first `hdr` bytes go to the header buffer.
    At(usize),
    /// Headers larger than the header buffer: whole frame in payload
    /// buffers, `split_header = 1, header_buffer_overflow = 1`.
    Overflow,
}

fn packet_type(p: &Parsed) -> u16 {
    match (p.l3, p.l4) {
        (L3::None, _) => ptype::NON_IP,
        (L3::Ipv4 { .. }, L4::Tcp { .. }) => ptype::IPV4_TCP,
        (L3::Ipv4 { .. }, L4::Udp { .. }) => ptype::IPV4_UDP,
        (L3::Ipv4 { .. }, L4::Icmp { .. }) => ptype::IPV4_ICMP,
        (L3::Ipv4 { .. }, L4::Sctp { .. }) => ptype::IPV4_SCTP,
        (L3::Ipv4 { .. }, L4::Other { .. }) => ptype::IPV4_OTHER,
        (L3::Ipv4 { .. }, L4::None) => ptype::IPV4,
        (L3::Ipv6 { .. }, L4::Tcp { .. }) => ptype::IPV6_TCP,
        (L3::Ipv6 { .. }, L4::Udp { .. }) => ptype::IPV6_UDP,
        (L3::Ipv6 { .. }, L4::Icmp { .. }) => ptype::IPV6_ICMP,
        (L3::Ipv6 { .. }, L4::Sctp { .. }) => ptype::IPV6_SCTP,
        (L3::Ipv6 { .. }, L4::Other { .. }) => ptype::IPV6_OTHER,
        (L3::Ipv6 { .. }, L4::None) => ptype::IPV6,
    }
}

/// Split policy: every TCP/UDP packet exactly after its L4 header (devmem
/// needs the payload in the data buffer); other frames entirely in the
/// header buffer when they fit, else after the IP headers.
fn plan_split(frame: &[u8], p: &Parsed, hbs: usize) -> Split {
    if hbs == 0 {
        return Split::None;
    }
    match p.split_offset() {
        Some(h) if h <= hbs => Split::At(h),
        Some(_) => Split::Overflow,
        None if frame.len() <= hbs => Split::At(frame.len()),
        None => match p.l3_end() {
            Some(h) if h <= hbs => Split::At(h),
            _ => Split::Overflow,
        },
    }
}

/// gve_adminq.h `enum gve_stat_names`, NIC part.
pub const RX_QUEUE_DROP_CNT: u32 = 65;
pub const RX_NO_BUFFERS_POSTED: u32 = 66;
pub const RX_DROPS_PACKET_OVER_MRU: u32 = 67;
pub const RX_DROPS_INVALID_CHECKSUM: u32 = 68;
/// gve.h `NIC_RX_STATS_REPORT_NUM`.
pub const NIC_RX_STATS_REPORT_NUM: usize = 4;

impl Dev<'_> {
    /// Refresh the NIC RX stats at the end of the driver's stats report:
    /// one group of 4 per existing RX queue in the last entries
    /// (gve_ethtool.c `gve_get_ethtool_stats` reads them from
    /// `(len - 8)/16 - 4·(R - stopped)` on).
    pub fn write_nic_stats(&mut self, now: Instant) {
        let Some((addr, len)) = self.st.stats_report else {
            return;
        };
        let due = match self.st.stats_written {
            None => true,
            Some(t) => {
                self.st.stats_dirty && now.saturating_duration_since(t) >= self.sh.cfg.stats_refresh
            }
        };
        if !due {
            return;
        }
        let entries = (len.saturating_sub(8) / 16) as usize;
        let groups: Vec<(u32, [u64; 4])> = self
            .st
            .rx
            .iter()
            .enumerate()
            .filter_map(|(q, r)| {
                r.as_ref()
                    .map(|r| (q as u32, [r.drops, r.no_buffers, 0, r.bad_csum]))
            })
            .collect();
        let n = groups.len() * NIC_RX_STATS_REPORT_NUM;
        self.st.stats_written = Some(now);
        self.st.stats_dirty = false;
        if n == 0 || n > entries {
            return;
        }
        let mut b = Vec::with_capacity(16 * n);
        for (q, v) in groups {
            let names = [
                RX_QUEUE_DROP_CNT,
                RX_NO_BUFFERS_POSTED,
                RX_DROPS_PACKET_OVER_MRU,
                RX_DROPS_INVALID_CHECKSUM,
            ];
            for (name, value) in names.iter().zip(v) {
                b.extend_from_slice(&name.to_be_bytes());
                b.extend_from_slice(&q.to_be_bytes());
                b.extend_from_slice(&value.to_be_bytes());
            }
        }
        let at = addr.wrapping_add(8 + 16 * (entries - n) as u64);
        self.dma_write(at, &b, "stats");
    }

    /// Move frames from the inbox to their queues and deliver what fits.
    /// Returns (more work ready, when to look again).
    pub fn rx_poll(&mut self, now: Instant) -> (bool, Option<Duration>) {
        let mut more = false;
        for _ in 0..DISPATCH_BUDGET {
            let Some(frame) = self.sh.port.pop_ready(now) else {
                break;
            };
            if !self.dispatch(frame, now) {
                break;
            }
            more = true;
        }
        let mut wake = self
            .sh
            .port
            .next_deadline()
            .map(|d| d.saturating_duration_since(now));
        for q in 0..self.st.rx.len() {
            if let Some(w) = self.rx_deliver_pending(q, now) {
                wake = Some(wake.map_or(w, |x| x.min(w)));
            }
        }
        (more, wake)
    }

    /// Steer one frame to a queue's pending list. Returns false (and puts
    /// the frame back) when that list is full.
    fn dispatch(&mut self, frame: Vec<u8>, now: Instant) -> bool {
        let c = &self.sh.counters;
        if frame.len() > self.sh.cfg.max_frame() {
            Counters::inc(&c.rx_oversize);
            return true;
        }
        if self.st.res.is_none() || !self.link_up() {
            Counters::inc(&c.rx_no_queue);
            return true;
        }
        let p = parse(&frame);
        let q = self.select_queue(&frame, &p);
        let cap = self.sh.cfg.rx_pending_frames;
        match q
            .and_then(|q| self.st.rx.get_mut(q))
            .and_then(Option::as_mut)
        {
            Some(r) if r.pending.len() >= cap => {
                self.sh.port.unpop(frame, now);
                false
            }
            Some(r) => {
                // The `rx-starve` test fault: frames in its window find no
                // buffer and are dropped as a starved queue drops them.
                let seen = self.st.faults.rx_frames_seen;
                self.st.faults.rx_frames_seen += 1;
                if let Some((after, frames)) = self.st.faults.active.rx_starve
                    && seen >= after
                    && seen - after < frames
                {
                    r.no_buffers += 1;
                    r.drops += 1;
                    self.st.stats_dirty = true;
                    Counters::inc(&self.sh.counters.rx_no_buffers);
                    Counters::inc(&self.sh.counters.rx_starved);
                    return true;
                }
                r.pending.push_back((now, frame));
                true
            }
            None => {
                Counters::inc(&self.sh.counters.rx_no_queue);
                true
            }
        }
    }

    /// Flow rules first (lowest location; rules to absent queues fall
    /// through), then RSS.
    fn select_queue(&mut self, frame: &[u8], p: &Parsed) -> Option<usize> {
        let Some(k) = flow_key(frame, p) else {
            let q = self.st.rss.queue_for(0) as usize;
            return self.rx_exists(q).then_some(q);
        };
        let hash = self.st.rss.hash(&k);
        let rx = &self.st.rx;
        if let Some(q) = self
            .st
            .flows
            .lookup(&k, |q| rx.get(q as usize).is_some_and(Option::is_some))
        {
            Counters::inc(&self.sh.counters.rx_flow_steered);
            return Some(q as usize);
        }
        let q = self.st.rss.queue_for(hash.unwrap_or(0)) as usize;
        self.rx_exists(q).then_some(q)
    }

    fn rx_exists(&self, q: usize) -> bool {
        self.st.rx.get(q).is_some_and(Option::is_some)
    }

    /// Deliver queue `q`'s waiting frames; returns when the oldest frame
    /// still waiting expires.
    fn rx_deliver_pending(&mut self, q: usize, now: Instant) -> Option<Duration> {
        let hold = self.sh.cfg.rx_hold;
        let coalescing = self.sh.cfg.rx_coalescing;
        let mut wrote = false;
        let mut wake = None;
        let mut skip_rsc = false;
        loop {
            let r = self.st.rx.get_mut(q).and_then(Option::as_mut)?;
            if r.broken {
                let n = r.pending.len() as u64;
                r.pending.clear();
                Counters::add(&self.sh.counters.rx_no_buffers, n);
                break;
            }
            if coalescing
                && !std::mem::take(&mut skip_rsc)
                && let Some(plan) = rsc_plan(r)
            {
                let n = plan.segs.min(r.pending.len());
                let frames: Vec<(Instant, Vec<u8>)> = r.pending.drain(..n).collect();
                let refs: Vec<&[u8]> = frames.iter().map(|(_, f)| f.as_slice()).collect();
                let merged = rsc::merge(&refs, &plan);
                let info = Coalesced {
                    seg_len: plan.seg_len,
                    segs: n as u64,
                    wire_bytes: refs.iter().map(|f| f.len() as u64).sum(),
                };
                match self.rx_deliver(q, &merged, Some(info)) {
                    Deliver::Done => wrote = true,
                    Deliver::Dropped => {}
                    Deliver::NeedBuffers => {
                        // Not expected (the plan counted the buffers); put
                        // the frames back and go on without coalescing.
                        if let Some(Some(r)) = self.st.rx.get_mut(q) {
                            for f in frames.into_iter().rev() {
                                r.pending.push_front(f);
                            }
                        }
                        skip_rsc = true;
                    }
                }
                continue;
            }
            let Some((t, frame)) = r.pending.pop_front() else {
                break;
            };
            match self.rx_deliver(q, &frame, None) {
                Deliver::Done => wrote = true,
                Deliver::Dropped => {}
                Deliver::NeedBuffers => {
                    let age = now.saturating_duration_since(t);
                    if age >= hold {
                        Counters::inc(&self.sh.counters.rx_no_buffers);
                        if let Some(Some(r)) = self.st.rx.get_mut(q) {
                            r.no_buffers += 1;
                            r.drops += 1;
                        }
                        self.st.stats_dirty = true;
                        continue;
                    }
                    if let Some(Some(r)) = self.st.rx.get_mut(q) {
                        r.pending.push_front((t, frame));
                    }
                    wake = Some(hold - age);
                    break;
                }
            }
        }
        if wrote && let Some(Some(r)) = self.st.rx.get(q) {
            let b = r.ntfy;
            self.notify_block(b);
        }
        wake
    }

    /// Fetch buffer descriptors until `need` are cached.
    fn rx_fetch(&mut self, q: usize, need: usize) -> bool {
        loop {
            let Some(r) = self.st.rx.get(q).and_then(Option::as_ref) else {
                return false;
            };
            if r.cache.len() >= need {
                return true;
            }
            let mask = r.buf_size - 1;
            let visible = r.buf_tail.wrapping_sub(r.buf_head) & mask;
            if visible == 0 {
                return false;
            }
            let n = visible.min(FETCH_WINDOW).min(r.buf_size - r.buf_head);
            let at = r
                .buf_ring
                .wrapping_add(u64::from(r.buf_head) * RX_BUF_DESC_SIZE);
            let mut raw = vec![0u8; (n * RX_BUF_DESC_SIZE as u32) as usize];
            if !self.dma_read(at, &mut raw, "rx-desc") {
                self.break_rx(q, "buffer queue read faulted");
                return false;
            }
            let Some(Some(r)) = self.st.rx.get_mut(q) else {
                return false;
            };
            r.cache.extend(
                raw.chunks_exact(RX_BUF_DESC_SIZE as usize)
                    .map(RxBufDesc::parse),
            );
            r.buf_head = (r.buf_head + n) & mask;
        }
    }

    fn break_rx(&mut self, q: usize, why: &str) {
        if let Some(Some(r)) = self.st.rx.get_mut(q) {
            r.broken = true;
        }
        self.refuse(RefusalKind::RxDescriptor, format!("RX{q}: {why}"));
        self.request_reset(&format!("RX queue {q}: {why}"));
    }

    /// Write one frame into queue `q`'s buffers and complete them.
    /// `rsc`: `frame` was coalesced from segments whose checksums were all
    /// verified (its own TCP checksum field is the first segment's).
    fn rx_deliver(&mut self, q: usize, frame: &[u8], rsc: Option<Coalesced>) -> Deliver {
        let c = &self.sh.counters;
        let p = parse(frame);
        let csum = match rsc {
            Some(_) => RxCsum {
                l3_l4_processed: true,
                ip_err: false,
                l4_err: false,
            },
            None => verify_checksums(frame, &p),
        };
        if csum.l3_l4_processed && (csum.ip_err || csum.l4_err) && self.sh.cfg.drop_bad_rx_checksum
        {
            Counters::inc(&c.rx_bad_checksum);
            if let Some(Some(r)) = self.st.rx.get_mut(q) {
                r.bad_csum += 1;
                r.drops += 1;
            }
            self.st.stats_dirty = true;
            return Deliver::Dropped;
        }
        let hash = flow_key(frame, &p)
            .and_then(|k| self.st.rss.hash(&k))
            .unwrap_or(0);
        let Some(r) = self.st.rx.get(q).and_then(Option::as_ref) else {
            return Deliver::Dropped;
        };
        let (pbs, hbs) = (r.pbs as usize, r.hbs as usize);
        let split = plan_split(frame, &p, hbs);
        let hdr = match split {
            Split::At(h) => h,
            Split::None | Split::Overflow => 0,
        };
        let payload = &frame[hdr..];
        let nbufs = payload.len().div_ceil(pbs).max(1);
        if r.available() < nbufs {
            return Deliver::NeedBuffers;
        }
        if !self.rx_fetch(q, nbufs) {
            return if self
                .st
                .rx
                .get(q)
                .and_then(Option::as_ref)
                .is_some_and(|r| r.broken)
            {
                Deliver::Dropped
            } else {
                Deliver::NeedBuffers
            };
        }
        let template = RxCompl {
            ipv6_ex_add: matches!(p.l3, L3::Ipv6 { ex_add: true, .. }),
            packet_type: packet_type(&p),
            l3_l4_processed: csum.l3_l4_processed,
            csum_ip_err: csum.ip_err,
            csum_l4_err: csum.l4_err,
            hash,
            ..Default::default()
        };
        for i in 0..nbufs {
            let Some(desc) = self
                .st
                .rx
                .get_mut(q)
                .and_then(Option::as_mut)
                .and_then(|r| r.cache.pop_front())
            else {
                return Deliver::Dropped;
            };
            let last = i + 1 == nbufs;
            let chunk = &payload[(i * pbs).min(payload.len())..((i + 1) * pbs).min(payload.len())];
            let mut cpl = RxCompl {
                buf_id: desc.buf_id,
                packet_len: chunk.len() as u16,
                end_of_packet: last,
                ..template
            };
            // gve_rx_complete_skb reads `rsc` and `rsc_seg_len` from the
            // end-of-packet completion.
            if last && let Some(info) = rsc {
                cpl.rsc = true;
                cpl.rsc_seg_len = info.seg_len;
            }
            if i == 0 {
                match split {
                    Split::At(h) => {
                        cpl.split_header = true;
                        cpl.header_len = h as u16;
                    }
                    Split::Overflow => {
                        cpl.split_header = true;
                        cpl.header_buffer_overflow = true;
                    }
                    Split::None => {}
                }
            }
            let buf_size = self
                .st
                .rx
                .get(q)
                .and_then(Option::as_ref)
                .map_or(0, |r| r.buf_size);
            let mut error = None;
            if u32::from(desc.buf_id) >= buf_size {
                error = Some(format!("buffer id {} >= ring size {buf_size}", desc.buf_id));
            } else if i == 0 && matches!(split, Split::At(_)) && desc.header_buf_addr == 0 {
                error = Some(format!("buffer {} has no header buffer", desc.buf_id));
            } else if i == 0
                && let Split::At(h) = split
                && !self.dma_write(desc.header_buf_addr, &frame[..h], "rx-hdr")
            {
                Counters::inc(&self.sh.counters.rx_dma_faults);
                error = Some(format!("header buffer of {} faulted", desc.buf_id));
            } else if self.injected_dma_fault(crate::faults::QueueDir::Rx, q, "RX buffer write") {
                Counters::inc(&self.sh.counters.rx_dma_faults);
                error = Some(format!(
                    "buffer {} faulted (test fault dma-fault)",
                    desc.buf_id
                ));
            } else if !self.dma_write(desc.buf_addr, chunk, "rx-buf") {
                Counters::inc(&self.sh.counters.rx_dma_faults);
                error = Some(format!("buffer {} faulted", desc.buf_id));
            }
            if let Some(why) = error {
                // Return the buffer with rx_error: the driver frees it and
                // drops the packet under construction (gve_rx_dqo.c
                // `gve_rx_dqo`). The rest of the frame is lost.
                Counters::inc(&self.sh.counters.rx_errors);
                self.refuse(RefusalKind::RxDescriptor, format!("RX{q}: {why}"));
                let err = RxCompl {
                    buf_id: desc.buf_id,
                    rx_error: true,
                    end_of_packet: true,
                    ..Default::default()
                };
                self.rx_complete(q, err);
                return Deliver::Done;
            }
            if !self.rx_complete(q, cpl) {
                return Deliver::Dropped;
            }
        }
        let (frames, bytes) = match rsc {
            Some(info) => {
                Counters::inc(&c.rx_rsc_packets);
                Counters::add(&c.rx_rsc_segments, info.segs);
                (info.segs, info.wire_bytes)
            }
            None => (1, frame.len() as u64),
        };
        Counters::add(&c.rx_frames, frames);
        Counters::add(&c.rx_bytes, bytes);
        if matches!(split, Split::At(_)) {
            Counters::add(&c.rx_hsplit, frames);
        }
        Deliver::Done
    }

    /// Write one completion, generation word last.
    fn rx_complete(&mut self, q: usize, mut cpl: RxCompl) -> bool {
        let Some(r) = self.st.rx.get(q).and_then(Option::as_ref) else {
            return false;
        };
        let at = r
            .comp_ring
            .wrapping_add(u64::from(r.comp_tail) * RX_COMPL_SIZE);
        cpl.generation = !r.gen_bit;
        let stale = cpl.encode();
        cpl.generation = r.gen_bit;
        let fresh = cpl.encode();
        if !self.dma_write(at, &stale, "completion")
            || !self.dma_write(at.wrapping_add(4), &fresh[4..6], "completion")
        {
            self.break_rx(q, "completion queue write faulted");
            return false;
        }
        let Some(Some(r)) = self.st.rx.get_mut(q) else {
            return false;
        };
        r.comp_tail = (r.comp_tail + 1) & (r.comp_size - 1);
        if r.comp_tail == 0 {
            r.gen_bit = !r.gen_bit;
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::build;

    #[test]
    fn split_policy() {
        let a = [2, 0, 0, 0, 0, 1];
        let f = build::tcp4(a, a, [1; 4], [2; 4], 1, 2, 0, 0x10, &[7u8; 100]);
        let p = parse(&f);
        assert_eq!(plan_split(&f, &p, 0), Split::None);
        assert_eq!(plan_split(&f, &p, 256), Split::At(54));
        assert_eq!(plan_split(&f, &p, 64), Split::At(54));
        assert_eq!(plan_split(&f, &p, 50), Split::Overflow);
        let arp = vec![0xffu8; 42];
        assert_eq!(plan_split(&arp, &parse(&arp), 256), Split::At(42));
        let big = vec![0u8; 600];
        assert_eq!(plan_split(&big, &parse(&big), 256), Split::Overflow);
        assert_eq!(packet_type(&p), ptype::IPV4_TCP);
        assert_eq!(packet_type(&parse(&arp)), ptype::NON_IP);
    }
}
