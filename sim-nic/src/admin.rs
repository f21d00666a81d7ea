//! Admin-queue engine: doorbell → sequential slot processing → status →
//! exact event counter (gve_adminq.c `gve_adminq_kick_and_wait`,
//! `gve_adminq_wait_for_cmd`, `gve_adminq_execute_cmd`).

use crate::adminq::*;
use crate::device::{Dev, IrqBlock, Resources};
use crate::regs::*;
use crate::rx::RxQueue;
use crate::stats::{Counters, RefusalKind};
use crate::tx::TxQueue;

/// Largest buffer the device writes for a query/describe answer.
const MAX_ANSWER: u64 = 4096;

impl Dev<'_> {
    /// The driver wrote `adminq_doorbell`: execute every command from the
    /// event counter up to `prod` and then publish `prod`.
    pub fn aq_doorbell(&mut self, prod: u32) {
        let Some(aq) = self.st.aq else {
            self.refuse(
                RefusalKind::AdminQueue,
                format!("doorbell {prod} with no admin queue configured"),
            );
            return;
        };
        let n = prod.wrapping_sub(self.st.event_counter);
        if n == 0 {
            return;
        }
        if n > aq.slots {
            // More outstanding commands than slots: nonsense. The driver
            // never has more than slots - 1 in flight.
            self.refuse(
                RefusalKind::AdminQueue,
                format!(
                    "doorbell {prod} is {n} commands past event counter {} ({} slots)",
                    self.st.event_counter, aq.slots
                ),
            );
            self.request_reset("admin queue doorbell out of range");
            return;
        }
        for i in 0..n {
            let count = self.st.event_counter.wrapping_add(i);
            let slot = aq
                .base
                .wrapping_add(u64::from(count & (aq.slots - 1)) * ADMINQ_CMD_SIZE);
            let mut raw = [0u8; 64];
            if !self.dma_read(slot, &mut raw, "aq") {
                continue;
            }
            let cmd = Command::parse(&raw);
            let name = cmd.name();
            let status = self.execute(cmd);
            Counters::inc(&self.sh.counters.aq_commands);
            if status != Status::PASSED {
                Counters::inc(&self.sh.counters.aq_errors);
                self.refuse(RefusalKind::AdminCommand, format!("{name}: {status}"));
            }
            tracing::debug!(nic = %self.sh.cfg.name, "AQ {name} → {status}");
            self.dma_write(slot.wrapping_add(4), &status.0.to_be_bytes(), "aq");
            // A reset request from inside a command (none today) would have
            // dropped the queue: stop.
            if self.st.aq.is_none() {
                return;
            }
        }
        self.st.event_counter = prod;
    }

    fn execute(&mut self, cmd: Command) -> Status {
        match cmd {
            Command::DescribeDevice {
                descriptor_addr,
                version,
                available_length,
            } => self.describe(descriptor_addr, version, available_length),
            Command::VerifyDriverCompatibility { len, addr } => {
                if len == 0 || len > MAX_ANSWER {
                    return Status::INVALID_ARGUMENT;
                }
                let mut info = vec![0u8; len as usize];
                if !self.dma_read(addr, &mut info, "aq") {
                    return Status::INVALID_ARGUMENT;
                }
                if let Some(rel) = info.get(48..176) {
                    let end = rel.iter().position(|c| *c == 0).unwrap_or(rel.len());
                    tracing::info!(
                        nic = %self.sh.cfg.name,
                        "driver on Linux {}",
                        String::from_utf8_lossy(&rel[..end])
                    );
                }
                self.st.driver_info = Some(info);
                Status::PASSED
            }
            Command::ConfigureDeviceResources {
                counter_array: _,
                irq_db_addr,
                num_counters,
                num_irq_dbs,
                irq_db_stride,
                ntfy_blk_msix_base_idx,
                queue_format,
            } => {
                if self.st.res.is_some() {
                    return Status::FAILED_PRECONDITION;
                }
                let max_blocks = u32::from(self.sh.cfg.msix_vectors()) - 1;
                if num_irq_dbs == 0
                    || num_irq_dbs > max_blocks
                    || !(4..=4096).contains(&irq_db_stride)
                    || ntfy_blk_msix_base_idx > 1
                    || queue_format != QUEUE_FORMAT_DQO_RDA
                {
                    return Status::INVALID_ARGUMENT;
                }
                for b in 0..num_irq_dbs {
                    let at = irq_db_addr.wrapping_add(u64::from(b) * u64::from(irq_db_stride));
                    let index = IRQ_DB_BASE + b;
                    if !self.dma_write(at, &index.to_be_bytes(), "aq") {
                        return Status::INVALID_ARGUMENT;
                    }
                }
                self.st.res = Some(Resources {
                    num_counters,
                    num_irq_dbs,
                    msix_base_idx: ntfy_blk_msix_base_idx,
                });
                self.st.blocks = vec![IrqBlock::default(); num_irq_dbs as usize];
                Status::PASSED
            }
            Command::DeconfigureDeviceResources => {
                if self.st.res.is_none() {
                    return Status::FAILED_PRECONDITION;
                }
                if self.st.tx.iter().any(Option::is_some) || self.st.rx.iter().any(Option::is_some)
                {
                    return Status::FAILED_PRECONDITION;
                }
                self.st.res = None;
                self.st.blocks.clear();
                self.st.stats_report = None;
                Status::PASSED
            }
            Command::GetPtypeMap { len, addr } => {
                if len < PTYPE_MAP_LEN {
                    return Status::INVALID_ARGUMENT;
                }
                if self.dma_write(addr, &ptype_map(), "aq") {
                    Status::PASSED
                } else {
                    Status::INVALID_ARGUMENT
                }
            }
            Command::CreateTxQueue(c) => self.create_tx(c),
            Command::CreateRxQueue(c) => self.create_rx(c),
            Command::DestroyTxQueue { queue_id } => match self.st.tx.get_mut(queue_id as usize) {
                None => Status::INVALID_ARGUMENT,
                Some(q) if q.is_none() => Status::NOT_FOUND,
                Some(q) => {
                    *q = None;
                    Status::PASSED
                }
            },
            Command::DestroyRxQueue { queue_id } => match self.st.rx.get_mut(queue_id as usize) {
                None => Status::INVALID_ARGUMENT,
                Some(q) if q.is_none() => Status::NOT_FOUND,
                Some(q) => {
                    *q = None;
                    self.st.stats_dirty = true;
                    Status::PASSED
                }
            },
            Command::ConfigureRss(c) => self.configure_rss(c),
            Command::QueryRss {
                available_length,
                addr,
            } => self.query_rss(available_length, addr),
            Command::ReportStats { len, addr, .. } => {
                if len == 0 && addr == 0 {
                    self.st.stats_report = None;
                } else if len < 8 {
                    return Status::INVALID_ARGUMENT;
                } else {
                    self.st.stats_report = Some((addr, len));
                    self.st.stats_written = None;
                }
                Status::PASSED
            }
            Command::ReportLinkSpeed { addr } => {
                let speed = self.sh.cfg.link_speed_mbps.to_be_bytes();
                if self.dma_write(addr, &speed, "aq") {
                    Status::PASSED
                } else {
                    Status::INVALID_ARGUMENT
                }
            }
            Command::Extended {
                inner_opcode,
                inner_length,
                inner_addr,
            } => {
                if inner_opcode != EXT_OP_CONFIGURE_FLOW_RULE {
                    return Status::UNIMPLEMENTED;
                }
                if self.sh.cfg.max_flow_rules == 0 {
                    return Status::UNIMPLEMENTED;
                }
                if (inner_length as usize) < FLOW_RULE_CMD_LEN
                    || u64::from(inner_length) > MAX_ANSWER
                {
                    return Status::INVALID_ARGUMENT;
                }
                let mut b = [0u8; FLOW_RULE_CMD_LEN];
                if !self.dma_read(inner_addr, &mut b, "aq") {
                    return Status::INVALID_ARGUMENT;
                }
                match FlowRuleCmd::parse(&b) {
                    Some(c) => self.configure_flow_rule(c),
                    None => Status::INVALID_ARGUMENT,
                }
            }
            Command::QueryFlowRules {
                opcode,
                starting_rule_id,
                available_length,
                addr,
            } => self.query_flow_rules(opcode, starting_rule_id, available_length, addr),
            // QPL formats are never advertised; no 7.3 caller for
            // SET_DRIVER_PARAMETER; NIC_TIMESTAMP is not advertised.
            Command::RegisterPageList
            | Command::UnregisterPageList
            | Command::SetDriverParameter { .. }
            | Command::ReportNicTimestamp { .. }
            | Command::Unknown(_) => Status::UNIMPLEMENTED,
        }
    }

    fn describe(&mut self, addr: u64, version: u32, available: u32) -> Status {
        if version != DEVICE_DESCRIPTOR_VERSION {
            return Status::INVALID_ARGUMENT;
        }
        let d = self.sh.cfg.description().encode();
        if (available as usize) < d.len() {
            return Status::INVALID_ARGUMENT;
        }
        if self.dma_write(addr, &d, "aq") {
            Status::PASSED
        } else {
            Status::INVALID_ARGUMENT
        }
    }

    fn ring_size_ok(&self, n: u16) -> bool {
        n.is_power_of_two() && n >= self.sh.cfg.min_ring() && n <= self.sh.cfg.max_ring()
    }

    fn create_tx(&mut self, c: CreateTxQueue) -> Status {
        let Some(res) = self.st.res else {
            return Status::FAILED_PRECONDITION;
        };
        let q = c.queue_id as usize;
        match self.st.tx.get(q) {
            None => return Status::INVALID_ARGUMENT,
            Some(Some(_)) => return Status::ALREADY_EXISTS,
            Some(None) => {}
        }
        if c.queue_page_list_id != RAW_ADDRESSING_QPL_ID
            || c.ntfy_id >= res.num_irq_dbs
            || !self.ring_size_ok(c.tx_ring_size)
            || !self.ring_size_ok(c.tx_comp_ring_size)
        {
            return Status::INVALID_ARGUMENT;
        }
        let counter_index = c.queue_id % res.num_counters.max(1);
        let mut qr = [0u8; 8];
        qr[0..4].copy_from_slice(&(TX_DB_BASE + c.queue_id).to_be_bytes());
        qr[4..8].copy_from_slice(&counter_index.to_be_bytes());
        if !self.dma_write(c.queue_resources_addr, &qr, "aq") {
            return Status::INVALID_ARGUMENT;
        }
        self.st.tx[q] = Some(TxQueue::new(&c));
        Status::PASSED
    }

    fn create_rx(&mut self, c: CreateRxQueue) -> Status {
        let Some(res) = self.st.res else {
            return Status::FAILED_PRECONDITION;
        };
        let q = c.queue_id as usize;
        match self.st.rx.get(q) {
            None => return Status::INVALID_ARGUMENT,
            Some(Some(_)) => return Status::ALREADY_EXISTS,
            Some(None) => {}
        }
        let hbs = c.header_buffer_size;
        if c.queue_page_list_id != RAW_ADDRESSING_QPL_ID
            || c.ntfy_id >= res.num_irq_dbs
            || !self.ring_size_ok(c.rx_ring_size)
            || !self.ring_size_ok(c.rx_buff_ring_size)
            || c.packet_buffer_size < 256
            || c.packet_buffer_size > self.sh.cfg.packet_buffer_size
            || (hbs != 0 && (hbs < 64 || hbs > self.sh.cfg.header_buffer_size))
        {
            return Status::INVALID_ARGUMENT;
        }
        let mut qr = [0u8; 8];
        qr[0..4].copy_from_slice(&(RX_DB_BASE + c.queue_id).to_be_bytes());
        if !self.dma_write(c.queue_resources_addr, &qr, "aq") {
            return Status::INVALID_ARGUMENT;
        }
        self.st.rx[q] = Some(RxQueue::new(&c));
        self.st.stats_dirty = true;
        Status::PASSED
    }

    fn configure_rss(&mut self, c: ConfigureRss) -> Status {
        if c.hash_alg != 0 && c.hash_alg != RSS_HASH_ALG_TOEPLITZ {
            return Status::INVALID_ARGUMENT;
        }
        if (c.hash_key_size != 0 && c.hash_key_size != RSS_KEY_SIZE)
            || (c.hash_lut_size != 0 && c.hash_lut_size != RSS_LUT_SIZE)
        {
            return Status::INVALID_ARGUMENT;
        }
        let mut key = None;
        if c.hash_key_size != 0 {
            let mut k = vec![0u8; usize::from(c.hash_key_size)];
            if !self.dma_read(c.hash_key_addr, &mut k, "aq") {
                return Status::INVALID_ARGUMENT;
            }
            key = Some(k);
        }
        let mut lut = None;
        if c.hash_lut_size != 0 {
            let mut raw = vec![0u8; 4 * usize::from(c.hash_lut_size)];
            if !self.dma_read(c.hash_lut_addr, &mut raw, "aq") {
                return Status::INVALID_ARGUMENT;
            }
            let l: Vec<u32> = raw
                .chunks_exact(4)
                .map(|w| u32::from_be_bytes([w[0], w[1], w[2], w[3]]))
                .collect();
            if l.iter().any(|q| *q >= u32::from(self.sh.cfg.num_queues)) {
                return Status::INVALID_ARGUMENT;
            }
            lut = Some(l);
        }
        let rss = &mut self.st.rss;
        rss.hash_types = c.hash_types;
        if c.hash_alg != 0 {
            rss.hash_alg = c.hash_alg;
        }
        if let Some(k) = key {
            rss.key = k;
        }
        if let Some(l) = lut {
            rss.lut = l;
        }
        Status::PASSED
    }

    fn query_rss(&mut self, available: u64, addr: u64) -> Status {
        let rss = &self.st.rss;
        let total = RSS_QUERY_HDR_LEN + rss.key.len() + 4 * rss.lut.len();
        if (available as usize) < total {
            return Status::INVALID_ARGUMENT;
        }
        let mut b = Vec::with_capacity(total);
        b.extend_from_slice(&(total as u32).to_be_bytes());
        b.extend_from_slice(&rss.hash_types.to_be_bytes());
        b.push(rss.hash_alg);
        b.push(0);
        b.extend_from_slice(&rss.key);
        for q in &rss.lut {
            b.extend_from_slice(&q.to_be_bytes());
        }
        if self.dma_write(addr, &b, "aq") {
            Status::PASSED
        } else {
            Status::INVALID_ARGUMENT
        }
    }

    fn configure_flow_rule(&mut self, c: FlowRuleCmd) -> Status {
        let max = self.sh.cfg.max_flow_rules;
        match c.opcode {
            FLOW_RULE_CFG_ADD => {
                if c.location >= max {
                    return Status::OUT_OF_RANGE;
                }
                if c.rule.flow_type > FLOW_TYPE_MAX || c.rule.action >= self.sh.cfg.num_queues {
                    return Status::INVALID_ARGUMENT;
                }
                if self.st.flows.rules.contains_key(&c.location) {
                    return Status::ALREADY_EXISTS;
                }
                self.st.flows.rules.insert(c.location, c.rule);
                Status::PASSED
            }
            FLOW_RULE_CFG_DEL => match self.st.flows.rules.remove(&c.location) {
                Some(_) => Status::PASSED,
                None => Status::NOT_FOUND,
            },
            FLOW_RULE_CFG_RESET => {
                self.st.flows.rules.clear();
                Status::PASSED
            }
            _ => Status::INVALID_ARGUMENT,
        }
    }

    /// QUERY_FLOW_RULES: a 16-byte header then rules or ids; `total_length`
    /// must equal header + payload exactly (gve_adminq.c
    /// `gve_adminq_process_flow_rules_query`).
    fn query_flow_rules(&mut self, opcode: u16, start: u32, available: u64, addr: u64) -> Status {
        if self.sh.cfg.max_flow_rules == 0 {
            return Status::UNIMPLEMENTED;
        }
        let room = available.min(MAX_ANSWER) as usize;
        if room < FLOW_QUERY_HDR_LEN {
            return Status::INVALID_ARGUMENT;
        }
        let rules = &self.st.flows.rules;
        let mut payload = Vec::new();
        let mut n = 0u32;
        match opcode {
            FLOW_RULE_QUERY_RULES => {
                for (loc, r) in rules.range(start..) {
                    if FLOW_QUERY_HDR_LEN + payload.len() + QUERIED_FLOW_RULE_LEN > room {
                        break;
                    }
                    payload.extend_from_slice(&loc.to_be_bytes());
                    payload.extend_from_slice(&r.to_bytes());
                    n += 1;
                }
            }
            FLOW_RULE_QUERY_IDS => {
                for loc in rules.range(start..).map(|(l, _)| *l) {
                    if FLOW_QUERY_HDR_LEN + payload.len() + 4 > room {
                        break;
                    }
                    payload.extend_from_slice(&loc.to_be_bytes());
                    n += 1;
                }
            }
            FLOW_RULE_QUERY_STATS => {}
            _ => return Status::INVALID_ARGUMENT,
        }
        let total = (FLOW_QUERY_HDR_LEN + payload.len()) as u32;
        let mut b = Vec::with_capacity(total as usize);
        b.extend_from_slice(&(rules.len() as u32).to_be_bytes());
        b.extend_from_slice(&self.sh.cfg.max_flow_rules.to_be_bytes());
        b.extend_from_slice(&n.to_be_bytes());
        b.extend_from_slice(&total.to_be_bytes());
        b.extend_from_slice(&payload);
        if self.dma_write(addr, &b, "aq") {
            Status::PASSED
        } else {
            Status::INVALID_ARGUMENT
        }
    }
}
