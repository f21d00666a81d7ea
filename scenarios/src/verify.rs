//! The DMA verifier: proves from outside the guest which device touched the
//! pages of each dmabuf, through which IOVAs, and when (docs/ARCHITECTURE.md,
//! "Invariants the verifier checks").
//!
//! Inputs, all optional and in any mix:
//! - the VMM's audit trail, fed in sequence order batch by batch while the
//!   run goes ([`Verifier::ingest`] / [`Verifier::ingest_batch`]);
//! - step markers carrying the audit sequence number at the step's start
//!   and end ([`Verifier::step_started`], [`Verifier::step_ended`]);
//! - the guest tools' facts (dmabuf pages, bindings; `/work/prompts/facts.md`)
//!   and payload results, which arrive when a step ends, i.e. after the DMA
//!   they describe ([`Verifier::add_facts`], [`Verifier::add_payload`]).
//!
//! Nothing is judged before [`Verifier::finish`]: what the guest says only
//! names pages and bindings; which device got a binding, its IOVAs, its
//! unbind point and every access come from the audit trail alone.
//!
//! Kept while a run goes: one compact entry per DMA access (per guest-
//! physical piece, ~56 bytes), one per MAP/UNMAP, and the (few) attach
//! events. A 64 MiB transfer is a few hundred thousand accesses.
//!
//! How bindings are resolved: a binding maps every page of its dmabuf into
//! the IOMMU domain of the device the kernel resolved (for a netkit guest,
//! the physical NIC), during the step that made it. Within a step's window,
//! per domain, MAPs touching the dmabuf's pages are grouped in sequence
//! order; a group is complete when it covers every page once; a MAP of a
//! page the open group already holds (still mapped) starts a new group;
//! an UNMAP drops its mapping from the open group. Complete groups, in the
//! order they completed, are assigned to the bindings of that dmabuf in the
//! order the tool reported them (a dmabuf bound twice on one device gives
//! two groups in one domain). A binding's resolved device is the endpoint
//! attached to the group's domain; its unbind point the first UNMAP of one
//! of its mappings.
//!
//! A dmabuf's pages are its own from the start of the step that reported
//! it until the step ended or the last of its bindings' mappings went away,
//! whichever is later; outside that window the kernel may reuse them, and
//! accesses there are not judged.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use serde::{Deserialize, Serialize};
use vmm::dma::{Access, FaultReason};
use vmm::iommu::{AuditBatch, AuditEvent, AuditRecord};
use vmm::pci::PciBdf;

/// Page size of dmabuf pages and IOMMU mappings.
pub const PAGE: u64 = 4096;
/// Most pages one step's facts may name (64 GiB of dmabufs).
pub const MAX_FACT_PAGES: u64 = 1 << 24;
/// Violations kept per invariant (all are counted).
pub const MAX_VIOLATIONS_KEPT: usize = 32;

/// Every DMA touching a dmabuf page is by a binding's resolved device,
/// through an IOVA of that binding, translated in that device's domain.
pub const BOUND_DEVICE_ONLY: &str = "bound-device-only";
/// No other device touches a dmabuf page; an IOMMU fault on a binding's
/// IOVA is a violation.
pub const NO_STRAY_DMA: &str = "no-stray-dma";
/// No DMA through a binding's IOVAs or to its pages after its unmap.
pub const NO_DMA_AFTER_UNBIND: &str = "no-dma-after-unbind";
/// No DMA through the IOVAs of a binding the tool did not use.
pub const BINDING_IOVA_IN_USE: &str = "binding-iova-in-use";
/// Every byte sent was verified by the receiver, none bad.
pub const PAYLOAD_INTACT: &str = "payload-intact";
/// The audit trail the verdict rests on is complete.
pub const AUDIT_COMPLETE: &str = "audit-complete";

/// Invariant names, in report order.
pub const INVARIANTS: [&str; 6] = [
    BOUND_DEVICE_ONLY,
    NO_STRAY_DMA,
    NO_DMA_AFTER_UNBIND,
    BINDING_IOVA_IN_USE,
    PAYLOAD_INTACT,
    AUDIT_COMPLETE,
];

#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("facts of step {step:?}: {msg}")]
    Facts { step: String, msg: String },
    #[error("payload of step {step:?}: {msg}")]
    Payload { step: String, msg: String },
}

// ------------------------------------------------------------------ facts

/// `facts.dmabufs[]` of a guest tool.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DmabufFact {
    pub name: String,
    #[serde(default)]
    pub size: u64,
    /// `[gpa_of_first_page, page_count]` runs, in dmabuf-offset order.
    pub pages: Vec<(u64, u64)>,
}

/// `facts.bindings[]` of a guest tool.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BindingFact {
    pub id: u64,
    pub dir: String,
    pub dmabuf: String,
    #[serde(default)]
    pub ifname: String,
    #[serde(default)]
    pub ifindex: Option<u64>,
    #[serde(default)]
    pub netns: String,
    #[serde(default)]
    pub used: bool,
    #[serde(default)]
    pub unbound: bool,
}

/// The `facts` object of a guest tool's output.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Facts {
    #[serde(default)]
    pub dmabufs: Vec<DmabufFact>,
    #[serde(default)]
    pub bindings: Vec<BindingFact>,
}

/// The `payload` object of a guest tool's output.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PayloadFact {
    #[serde(default)]
    pub sent_bytes: Option<u64>,
    #[serde(default)]
    pub verified_bytes: Option<u64>,
    #[serde(default)]
    pub first_bad_offset: Option<u64>,
}

// ----------------------------------------------------------------- report

/// DMA of one device to dmabuf pages (within their windows).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct DeviceDmabufStats {
    pub nic: Option<String>,
    pub dmabuf_reads: u64,
    pub dmabuf_writes: u64,
    pub dmabuf_bytes: u64,
    pub dmabuf_pages_touched: u64,
}

/// One binding the tools reported, resolved from the audit trail.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct BindingReport {
    pub id: u64,
    pub dir: String,
    pub dmabuf: String,
    /// Step whose tool reported it.
    pub step: String,
    /// Device the tool named (for netkit: the netkit guest).
    pub ifname: String,
    pub used: bool,
    pub unbound: bool,
    /// `0000:00:04.0` of the device whose domain got the mappings.
    pub resolved_device: Option<String>,
    pub resolved_nic: Option<String>,
    pub domain: Option<u32>,
    /// IOVA pages mapping the dmabuf's pages.
    pub iova_pages: u64,
    /// The IOVA ranges as `[first_iova, pages]`.
    pub iova_ranges: Vec<(u64, u64)>,
    pub mapped_at_seq: Option<u64>,
    /// First UNMAP of one of its mappings (its unbind point).
    pub unmapped_at_seq: Option<u64>,
}

/// Result of one invariant.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct InvariantResult {
    pub name: String,
    pub ok: bool,
    /// How many items (accesses, bindings, reports) were checked.
    pub checked: u64,
    /// Violations found (only the first few are listed in `violations`).
    pub violations: u64,
    pub detail: String,
}

/// One breach of an invariant.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Violation {
    pub invariant: String,
    /// Audit sequence number of the access.
    pub seq: Option<u64>,
    /// Step during which it happened.
    pub step: Option<String>,
    /// `0000:00:04.0`.
    pub device: Option<String>,
    pub nic: Option<String>,
    pub iova: Option<u64>,
    pub gpa: Option<u64>,
    pub tag: Option<String>,
    pub access: Option<Access>,
    pub fault: Option<FaultReason>,
    pub dmabuf: Option<String>,
    /// The binding concerned (the one whose IOVA or pages were used).
    pub binding: Option<u64>,
    pub message: String,
}

/// The verifier's verdict.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct VerifyReport {
    /// Keyed by `0000:BB:DD.F`.
    pub by_device: BTreeMap<String, DeviceDmabufStats>,
    pub bindings: Vec<BindingReport>,
    pub invariants: Vec<InvariantResult>,
    pub violations: Vec<Violation>,
    /// Things worth knowing that are no violation.
    pub notes: Vec<String>,
    pub records: u64,
    pub records_lost: u64,
}

impl VerifyReport {
    /// Every invariant held.
    pub fn ok(&self) -> bool {
        self.invariants.iter().all(|i| i.ok)
    }

    /// Names of the invariants that failed.
    pub fn failed(&self) -> Vec<&str> {
        self.invariants
            .iter()
            .filter(|i| !i.ok)
            .map(|i| i.name.as_str())
            .collect()
    }

    pub fn invariant(&self, name: &str) -> Option<&InvariantResult> {
        self.invariants.iter().find(|i| i.name == name)
    }
}

// ------------------------------------------------------- compact storage

/// One guest-physical piece of a DMA access (a refused access: one entry
/// without `gpa`).
#[derive(Clone, Debug)]
struct Acc {
    seq: u64,
    iova: u64,
    gpa: Option<u64>,
    domain: Option<u32>,
    len: u32,
    device: u16,
    tag: u16,
    access: Access,
    fault: Option<FaultReason>,
}

#[derive(Clone, Copy, Debug)]
struct MapEv {
    seq: u64,
    domain: u32,
    iova: u64,
    gpa: u64,
    size: u64,
    unmap: bool,
}

#[derive(Clone, Debug)]
struct StepMark {
    name: String,
    start: u64,
    end: Option<u64>,
}

/// Feeds on the audit trail, step markers and facts; judges at
/// [`finish`](Self::finish).
#[derive(Debug, Default)]
pub struct Verifier {
    nics: BTreeMap<u16, String>,
    accs: Vec<Acc>,
    maps: Vec<MapEv>,
    /// (seq, endpoint, domain attached to; None: detached).
    attach: Vec<(u64, u16, Option<u32>)>,
    tags: Vec<&'static str>,
    steps: Vec<StepMark>,
    facts: Vec<(String, Facts)>,
    payloads: Vec<(String, PayloadFact)>,
    next_seq: Option<u64>,
    records: u64,
    lost: u64,
    notes: Vec<String>,
}

/// `0000:BB:DD.F` → 16-bit BDF.
pub fn parse_bdf(s: &str) -> Option<u16> {
    let rest = s.strip_prefix("0000:").unwrap_or(s);
    let (bus, rest) = rest.split_once(':')?;
    let (dev, func) = rest.split_once('.')?;
    let bus = u8::from_str_radix(bus, 16).ok()?;
    let dev = u8::from_str_radix(dev, 16).ok().filter(|d| *d < 32)?;
    let func = u8::from_str_radix(func, 16).ok().filter(|f| *f < 8)?;
    Some(u16::from(bus) << 8 | u16::from(dev) << 3 | u16::from(func))
}

fn bdf(d: u16) -> String {
    PciBdf::from_u16(d).to_string()
}

impl Verifier {
    /// `nics`: BDF → logical NIC name (`0x20` → `nic0`).
    pub fn new(nics: BTreeMap<u16, String>) -> Self {
        Verifier {
            nics,
            ..Verifier::default()
        }
    }

    /// From the topology's name → `0000:00:04.0` map.
    pub fn from_bdfs(bdfs: &BTreeMap<String, String>) -> Self {
        Self::new(
            bdfs.iter()
                .filter_map(|(n, b)| Some((parse_bdf(b)?, n.clone())))
                .collect(),
        )
    }

    fn tag_id(&mut self, tag: &'static str) -> u16 {
        if let Some(i) = self.tags.iter().position(|t| *t == tag) {
            return i as u16;
        }
        if self.tags.len() >= usize::from(u16::MAX) {
            return u16::MAX;
        }
        self.tags.push(tag);
        (self.tags.len() - 1) as u16
    }

    fn tag(&self, id: u16) -> &'static str {
        self.tags.get(usize::from(id)).copied().unwrap_or("?")
    }

    /// A batch from [`vmm::iommu::Audit::drain_since`] (its `lost` count is
    /// kept: records overwritten before being read make the verdict
    /// incomplete).
    pub fn ingest_batch(&mut self, batch: &AuditBatch) {
        self.lost += batch.lost;
        self.ingest(&batch.records);
    }

    /// Audit records in sequence order (batches may follow one another;
    /// records already seen are skipped, gaps counted as lost).
    pub fn ingest(&mut self, records: &[AuditRecord]) {
        for r in records {
            if let Some(next) = self.next_seq {
                if r.seq < next {
                    continue;
                }
                if r.seq > next {
                    self.lost += r.seq - next;
                }
            }
            self.next_seq = Some(r.seq + 1);
            self.records += 1;
            match &r.event {
                AuditEvent::Dma(d) => {
                    let tag = self.tag_id(d.tag);
                    let pieces = d.gpa.as_slice();
                    if d.fault.is_some() || pieces.is_empty() {
                        self.accs.push(Acc {
                            seq: r.seq,
                            iova: d.iova,
                            gpa: None,
                            domain: d.domain,
                            len: u32::try_from(d.len).unwrap_or(u32::MAX),
                            device: d.device,
                            tag,
                            access: d.access,
                            fault: d.fault.clone(),
                        });
                        continue;
                    }
                    let mut off = 0u64;
                    for &(gpa, len) in pieces {
                        self.accs.push(Acc {
                            seq: r.seq,
                            iova: d.iova.wrapping_add(off),
                            gpa: Some(gpa),
                            domain: d.domain,
                            len: u32::try_from(len).unwrap_or(u32::MAX),
                            device: d.device,
                            tag,
                            access: d.access,
                            fault: None,
                        });
                        off = off.wrapping_add(len);
                    }
                }
                AuditEvent::Map(m) | AuditEvent::Unmap(m) => self.maps.push(MapEv {
                    seq: r.seq,
                    domain: m.domain,
                    iova: m.iova,
                    gpa: m.gpa,
                    size: m.size,
                    unmap: matches!(r.event, AuditEvent::Unmap(_)),
                }),
                AuditEvent::Attach {
                    endpoint,
                    domain,
                    bypass,
                } => self
                    .attach
                    .push((r.seq, *endpoint, (!bypass).then_some(*domain))),
                AuditEvent::Detach { endpoint, .. } => self.attach.push((r.seq, *endpoint, None)),
                AuditEvent::Bypass { .. } => {}
            }
        }
    }

    /// The IOMMU state before the first record this verifier will see (a
    /// scenario on a machine that ran others before): live mappings as
    /// `(seq, domain, iova, gpa, size)` and attachments as `(seq, endpoint,
    /// domain; None: detached)`, each with the sequence number of the
    /// record that made it.
    pub fn prime(
        &mut self,
        maps: impl Iterator<Item = (u64, u32, u64, u64, u64)>,
        attach: impl Iterator<Item = (u64, u16, Option<u32>)>,
    ) {
        for (seq, domain, iova, gpa, size) in maps {
            self.maps.push(MapEv {
                seq,
                domain,
                iova,
                gpa,
                size,
                unmap: false,
            });
        }
        self.maps.sort_by_key(|m| m.seq);
        self.attach.extend(attach);
        self.attach.sort_by_key(|a| a.0);
    }

    /// Step `name` starts; `seq` is the audit's next sequence number then.
    pub fn step_started(&mut self, name: &str, seq: u64) {
        self.steps.push(StepMark {
            name: name.to_string(),
            start: seq,
            end: None,
        });
    }

    /// Step `name` ended; `seq` is the audit's next sequence number then.
    pub fn step_ended(&mut self, name: &str, seq: u64) {
        if let Some(s) = self
            .steps
            .iter_mut()
            .rev()
            .find(|s| s.name == name && s.end.is_none())
        {
            s.end = Some(seq);
        } else {
            self.notes
                .push(format!("step {name:?} ended without having started"));
        }
    }

    /// A guest tool's facts: either its whole output line (with `facts`
    /// and maybe `payload`) or the `facts` object alone.
    pub fn add_facts(&mut self, step: &str, v: &serde_json::Value) -> Result<(), VerifyError> {
        let err = |msg: String| VerifyError::Facts {
            step: step.to_string(),
            msg,
        };
        if let Some(p) = v.get("payload") {
            self.add_payload(step, p)?;
        }
        let fv = match v.get("facts") {
            Some(f) => f,
            None if v.get("dmabufs").is_some() || v.get("bindings").is_some() => v,
            None => return Ok(()),
        };
        let facts: Facts = serde_json::from_value(fv.clone()).map_err(|e| err(e.to_string()))?;
        let mut names = BTreeSet::new();
        let mut total = 0u64;
        for d in &facts.dmabufs {
            if !names.insert(d.name.as_str()) {
                return Err(err(format!("dmabuf {:?} listed twice", d.name)));
            }
            for &(gpa, n) in &d.pages {
                if gpa % PAGE != 0 || n == 0 || gpa.checked_add(n.saturating_mul(PAGE)).is_none() {
                    return Err(err(format!(
                        "dmabuf {:?}: bad page run [{gpa:#x}, {n}]",
                        d.name
                    )));
                }
                total = total.saturating_add(n);
            }
        }
        if total > MAX_FACT_PAGES {
            return Err(err(format!(
                "{total} dmabuf pages (at most {MAX_FACT_PAGES})"
            )));
        }
        for b in &facts.bindings {
            if !names.contains(b.dmabuf.as_str()) {
                return Err(err(format!(
                    "binding {} names unknown dmabuf {:?}",
                    b.id, b.dmabuf
                )));
            }
        }
        self.facts.push((step.to_string(), facts));
        Ok(())
    }

    /// A tool's `payload` object (`sent_bytes`, or `verified_bytes` and
    /// `first_bad_offset`).
    pub fn add_payload(&mut self, step: &str, v: &serde_json::Value) -> Result<(), VerifyError> {
        let p: PayloadFact =
            serde_json::from_value(v.clone()).map_err(|e| VerifyError::Payload {
                step: step.to_string(),
                msg: e.to_string(),
            })?;
        self.payloads.push((step.to_string(), p));
        Ok(())
    }

    /// Judge everything fed so far.
    pub fn finish(&self) -> VerifyReport {
        Judge::new(self).run()
    }
}

// ----------------------------------------------------------------- judge

struct Dmabuf {
    step: String,
    name: String,
    pages: u64,
    pfns: HashSet<u64>,
    start: u64,
    step_end: u64,
    /// Window end (exclusive), once bindings are resolved.
    end: u64,
}

struct Binding {
    fact: BindingFact,
    step: String,
    domain: Option<u32>,
    device: Option<u16>,
    /// Sorted IOVA page numbers.
    iova_pages: Vec<u64>,
    /// (iova, seq) of its mappings.
    maps: Vec<(u64, u64)>,
    mapped_at: Option<u64>,
    unmapped_at: Option<u64>,
    /// Every mapping gone (None: some never were).
    gone_at: Option<u64>,
    /// After the unbind, the first MAP reusing one of its IOVAs.
    reused_at: Option<u64>,
}

impl Binding {
    fn has_iova_page(&self, p: u64) -> bool {
        self.iova_pages.binary_search(&p).is_ok()
    }

    fn has_iova_range(&self, first: u64, last: u64) -> bool {
        let i = self.iova_pages.partition_point(|&p| p < first);
        self.iova_pages.get(i).is_some_and(|&p| p <= last)
    }
}

struct Group {
    /// (iova, gpa, size, seq)
    maps: Vec<(u64, u64, u64, u64)>,
    /// pfn → iova page.
    pages: HashMap<u64, u64>,
    first: u64,
}

struct Judge<'a> {
    v: &'a Verifier,
    dmabufs: Vec<Dmabuf>,
    bindings: Vec<Binding>,
    /// Dmabuf bindings by dmabuf.
    by_dmabuf: Vec<Vec<usize>>,
    violations: BTreeMap<&'static str, (u64, Vec<Violation>)>,
    seen: HashSet<(&'static str, u64)>,
    checked: BTreeMap<&'static str, u64>,
    notes: Vec<String>,
}

impl<'a> Judge<'a> {
    fn new(v: &'a Verifier) -> Self {
        Judge {
            v,
            dmabufs: Vec::new(),
            bindings: Vec::new(),
            by_dmabuf: Vec::new(),
            violations: BTreeMap::new(),
            seen: HashSet::new(),
            checked: BTreeMap::new(),
            notes: v.notes.clone(),
        }
    }

    fn window(&self, step: &str) -> (u64, u64) {
        match self.v.steps.iter().rev().find(|s| s.name == step) {
            Some(s) => (s.start, s.end.unwrap_or(u64::MAX)),
            None => (0, u64::MAX),
        }
    }

    fn step_at(&self, seq: u64) -> Option<String> {
        self.v
            .steps
            .iter()
            .rev()
            .find(|s| s.start <= seq && s.end.is_none_or(|e| seq < e))
            .map(|s| s.name.clone())
    }

    fn nic(&self, d: u16) -> Option<String> {
        self.v.nics.get(&d).cloned()
    }

    /// Endpoints attached to `domain` just before `seq`.
    fn endpoints_in(&self, domain: u32, seq: u64) -> Vec<u16> {
        let mut at: BTreeMap<u16, Option<u32>> = BTreeMap::new();
        for &(s, ep, d) in &self.v.attach {
            if s >= seq {
                break;
            }
            at.insert(ep, d);
        }
        at.into_iter()
            .filter(|(_, d)| *d == Some(domain))
            .map(|(e, _)| e)
            .collect()
    }

    fn count(&mut self, inv: &'static str) {
        *self.checked.entry(inv).or_default() += 1;
    }

    fn violate(&mut self, inv: &'static str, v: Violation) {
        if let Some(seq) = v.seq
            && !self.seen.insert((inv, seq))
        {
            return;
        }
        let e = self.violations.entry(inv).or_default();
        e.0 += 1;
        if e.1.len() < MAX_VIOLATIONS_KEPT {
            e.1.push(v);
        }
    }

    fn violation(&self, inv: &'static str, a: &Acc, gpa: Option<u64>, msg: String) -> Violation {
        Violation {
            invariant: inv.to_string(),
            seq: Some(a.seq),
            step: self.step_at(a.seq),
            device: Some(bdf(a.device)),
            nic: self.nic(a.device),
            iova: Some(a.iova),
            gpa,
            tag: Some(self.v.tag(a.tag).to_string()),
            access: Some(a.access),
            fault: a.fault.clone(),
            dmabuf: None,
            binding: None,
            message: msg,
        }
    }

    fn run(mut self) -> VerifyReport {
        self.collect_dmabufs();
        self.resolve_bindings();
        let by_device = self.check_accesses();
        self.check_unbinds();
        self.check_payload();
        self.report(by_device)
    }

    fn collect_dmabufs(&mut self) {
        for (step, facts) in &self.v.facts {
            let (start, end) = self.window(step);
            if !self.v.steps.iter().any(|s| &s.name == step) {
                self.notes.push(format!(
                    "facts of step {step:?} without step markers: judged over the whole trail"
                ));
            }
            let first = self.dmabufs.len();
            for d in &facts.dmabufs {
                let mut pfns = HashSet::new();
                for &(gpa, n) in &d.pages {
                    pfns.extend((0..n).map(|i| gpa / PAGE + i));
                }
                self.dmabufs.push(Dmabuf {
                    step: step.clone(),
                    name: d.name.clone(),
                    pages: pfns.len() as u64,
                    pfns,
                    start,
                    step_end: end,
                    end,
                });
                self.by_dmabuf.push(Vec::new());
            }
            for b in &facts.bindings {
                let Some(i) =
                    (first..self.dmabufs.len()).find(|&i| self.dmabufs[i].name == b.dmabuf)
                else {
                    continue;
                };
                self.by_dmabuf[i].push(self.bindings.len());
                self.bindings.push(Binding {
                    fact: b.clone(),
                    step: step.clone(),
                    domain: None,
                    device: None,
                    iova_pages: Vec::new(),
                    maps: Vec::new(),
                    mapped_at: None,
                    unmapped_at: None,
                    gone_at: None,
                    reused_at: None,
                });
            }
        }
    }

    /// Complete mapping groups of dmabuf `d` in its step window, in
    /// completion order: (domain, group).
    fn groups(&self, d: &Dmabuf) -> Vec<(u32, Group)> {
        let maps = &self.v.maps;
        let from = maps.partition_point(|m| m.seq < d.start);
        let mut open: HashMap<u32, Group> = HashMap::new();
        let mut done = Vec::new();
        for m in &maps[from..] {
            if m.seq >= d.step_end {
                break;
            }
            if m.unmap {
                if let Some(g) = open.get_mut(&m.domain)
                    && let Some(i) = g.maps.iter().position(|x| x.0 == m.iova)
                {
                    let (_, gpa, size, _) = g.maps.remove(i);
                    let gone = gpa / PAGE..gpa.saturating_add(size).div_ceil(PAGE);
                    g.pages.retain(|pfn, _| !gone.contains(pfn));
                }
                continue;
            }
            let hits: Vec<(u64, u64)> = (0..m.size.div_ceil(PAGE))
                .map(|i| (m.gpa / PAGE + i, m.iova / PAGE + i))
                .filter(|(pfn, _)| d.pfns.contains(pfn))
                .collect();
            if hits.is_empty() {
                continue;
            }
            let g = open.entry(m.domain).or_insert_with(|| Group {
                maps: Vec::new(),
                pages: HashMap::new(),
                first: m.seq,
            });
            if hits.iter().any(|(pfn, _)| g.pages.contains_key(pfn)) {
                *g = Group {
                    maps: Vec::new(),
                    pages: HashMap::new(),
                    first: m.seq,
                };
            }
            g.maps.push((m.iova, m.gpa, m.size, m.seq));
            g.pages.extend(hits);
            if g.pages.len() as u64 == d.pages
                && let Some(g) = open.remove(&m.domain)
            {
                done.push((m.domain, g));
            }
        }
        done
    }

    fn resolve_bindings(&mut self) {
        // (domain, iova) → UNMAP seqs, ascending.
        let mut unmaps: HashMap<(u32, u64), Vec<u64>> = HashMap::new();
        for m in self.v.maps.iter().filter(|m| m.unmap) {
            unmaps.entry((m.domain, m.iova)).or_default().push(m.seq);
        }
        for di in 0..self.dmabufs.len() {
            let groups = self.groups(&self.dmabufs[di]);
            let bs = self.by_dmabuf[di].clone();
            if groups.len() > bs.len() {
                let d = &self.dmabufs[di];
                self.notes.push(format!(
                    "dmabuf {:?} of step {:?} was mapped {} times but {} binding(s) were reported",
                    d.name,
                    d.step,
                    groups.len(),
                    bs.len()
                ));
            }
            let mut gone_max = Some(self.dmabufs[di].step_end);
            for (bi, (domain, g)) in bs.iter().copied().zip(groups) {
                let eps = self.endpoints_in(domain, g.first);
                if eps.len() > 1 {
                    self.notes.push(format!(
                        "binding {}: domain {domain} holds several endpoints {:?}; taking the first",
                        self.bindings[bi].fact.id,
                        eps.iter().map(|&e| bdf(e)).collect::<Vec<_>>()
                    ));
                }
                let mut iova_pages: Vec<u64> = g.pages.values().copied().collect();
                iova_pages.sort_unstable();
                let mut unmapped_at: Option<u64> = None;
                let mut gone_at = Some(0u64);
                for &(iova, _, _, seq) in &g.maps {
                    let u = unmaps
                        .get(&(domain, iova))
                        .and_then(|v| v.iter().copied().find(|&s| s > seq));
                    unmapped_at = match (unmapped_at, u) {
                        (Some(a), Some(b)) => Some(a.min(b)),
                        (a, b) => a.or(b),
                    };
                    gone_at = match (gone_at, u) {
                        (Some(a), Some(b)) => Some(a.max(b)),
                        _ => None,
                    };
                }
                let b = &mut self.bindings[bi];
                b.domain = Some(domain);
                b.device = eps.first().copied();
                b.mapped_at = Some(g.first);
                b.maps = g.maps.iter().map(|m| (m.0, m.3)).collect();
                b.iova_pages = iova_pages;
                b.unmapped_at = unmapped_at;
                b.gone_at = gone_at;
                gone_max = match (gone_max, gone_at) {
                    (Some(a), Some(b)) => Some(a.max(b + 1)),
                    _ => None,
                };
                if let Some(u) = unmapped_at {
                    let b = &self.bindings[bi];
                    let from = self.v.maps.partition_point(|m| m.seq <= u);
                    let r = self.v.maps[from..]
                        .iter()
                        .filter(|m| !m.unmap && m.domain == domain)
                        .find(|m| {
                            b.has_iova_range(
                                m.iova / PAGE,
                                m.iova.saturating_add(m.size.max(1) - 1) / PAGE,
                            )
                        })
                        .map(|m| m.seq);
                    self.bindings[bi].reused_at = r;
                }
            }
            let d = &mut self.dmabufs[di];
            d.end = gone_max.unwrap_or(u64::MAX).max(d.step_end);
            for &bi in &bs {
                let b = &self.bindings[bi];
                if b.domain.is_none() {
                    self.notes.push(format!(
                        "binding {} ({} of dmabuf {:?}, step {:?}): no IOMMU mapping of its pages found",
                        b.fact.id, b.fact.dir, b.fact.dmabuf, b.step
                    ));
                } else if b.fact.unbound && b.gone_at.is_none() {
                    self.notes.push(format!(
                        "binding {} was unbound by its tool but some of its mappings were never removed",
                        b.fact.id
                    ));
                }
            }
        }
    }

    /// Pages of dmabufs → dmabuf indices.
    fn page_index(&self) -> HashMap<u64, Vec<usize>> {
        let mut idx: HashMap<u64, Vec<usize>> = HashMap::new();
        for (i, d) in self.dmabufs.iter().enumerate() {
            for &p in &d.pfns {
                idx.entry(p).or_default().push(i);
            }
        }
        idx
    }

    fn check_accesses(&mut self) -> BTreeMap<u16, (DeviceDmabufStats, HashSet<(usize, u64)>)> {
        let idx = self.page_index();
        let mut stats: BTreeMap<u16, (DeviceDmabufStats, HashSet<(usize, u64)>)> = BTreeMap::new();
        // Last access counted per device (an access has one entry per
        // guest-physical piece and may span several pages).
        let mut last_counted: HashMap<u16, u64> = HashMap::new();
        let v = self.v;
        for a in &v.accs {
            match a.gpa {
                None => self.check_fault(a),
                Some(gpa) if a.len > 0 && !idx.is_empty() => {
                    let last = gpa.saturating_add(u64::from(a.len) - 1);
                    for pfn in gpa / PAGE..=last / PAGE {
                        let Some(ds) = idx.get(&pfn) else { continue };
                        for &di in ds {
                            let d = &self.dmabufs[di];
                            if a.seq < d.start || a.seq >= d.end {
                                continue;
                            }
                            let lo = gpa.max(pfn * PAGE);
                            let hi = last.min(pfn * PAGE + PAGE - 1);
                            let e = stats.entry(a.device).or_default();
                            e.0.dmabuf_bytes += hi - lo + 1;
                            e.1.insert((di, pfn));
                            if last_counted.insert(a.device, a.seq) != Some(a.seq) {
                                match a.access {
                                    Access::Read => e.0.dmabuf_reads += 1,
                                    Access::Write => e.0.dmabuf_writes += 1,
                                }
                            }
                            let iova_page = (a.iova + (lo - gpa)) / PAGE;
                            self.classify(a, di, lo, iova_page);
                        }
                    }
                }
                Some(_) => {}
            }
        }
        stats
    }

    fn check_fault(&mut self, a: &Acc) {
        let Some(dom) = a.domain else { return };
        // Pages of the refused range (bounded: a bogus length must not
        // make this loop long; binding lookups are ranges anyway).
        let first = a.iova / PAGE;
        let last = a
            .iova
            .saturating_add(u64::from(a.len.max(1)) - 1)
            .min(a.iova.saturating_add(64 * PAGE))
            / PAGE;
        self.count(NO_STRAY_DMA);
        for bi in 0..self.bindings.len() {
            let b = &self.bindings[bi];
            if b.domain != Some(dom)
                || b.mapped_at.is_none_or(|m| a.seq < m)
                || !b.has_iova_range(first, last)
            {
                continue;
            }
            let (id, dmabuf) = (b.fact.id, b.fact.dmabuf.clone());
            let after = b.unmapped_at.is_some_and(|u| a.seq >= u);
            if after && b.reused_at.is_some_and(|r| a.seq >= r) {
                continue;
            }
            let (inv, what) = if after {
                (
                    NO_DMA_AFTER_UNBIND,
                    format!("after binding {id} was unmapped"),
                )
            } else {
                (NO_STRAY_DMA, format!("while binding {id} was mapped"))
            };
            let msg = format!(
                "{} {:?} of {} bytes at IOVA {:#x} ({}) faulted ({:?}) on an IOVA of binding {id} (dmabuf {dmabuf:?}) in domain {dom}, {what}",
                self.dev_label(a.device),
                a.access,
                a.len,
                a.iova,
                self.v.tag(a.tag),
                a.fault.clone().unwrap_or(FaultReason::Unmapped),
            );
            let mut v = self.violation(inv, a, None, msg);
            v.dmabuf = Some(dmabuf);
            v.binding = Some(id);
            self.violate(inv, v);
        }
    }

    fn dev_label(&self, d: u16) -> String {
        match self.nic(d) {
            Some(n) => format!("{n} ({})", bdf(d)),
            None => format!("device {}", bdf(d)),
        }
    }

    /// Judge one access `a` touching page `lo` (a gpa) of dmabuf `di`
    /// through IOVA page `iova_page`.
    fn classify(&mut self, a: &Acc, di: usize, gpa: u64, iova_page: u64) {
        self.count(BOUND_DEVICE_ONLY);
        self.count(NO_STRAY_DMA);
        let d = &self.dmabufs[di];
        let dname = d.name.clone();
        let bs = &self.by_dmabuf[di];
        let holders: Vec<usize> = bs
            .iter()
            .copied()
            .filter(|&bi| {
                let b = &self.bindings[bi];
                b.device == Some(a.device) && b.domain == a.domain && b.has_iova_page(iova_page)
            })
            .collect();
        // An IOVA freed by one binding's unmap may be mapped again by a
        // later binding of the same dmabuf (a re-bind after an unbind):
        // the access goes through the binding mapped at that moment.
        let through = holders
            .iter()
            .copied()
            .find(|&bi| {
                let b = &self.bindings[bi];
                b.mapped_at.is_some_and(|m| a.seq >= m) && b.unmapped_at.is_none_or(|u| a.seq < u)
            })
            .or_else(|| holders.first().copied());
        let who = self.dev_label(a.device);
        let what = format!(
            "{who} {} dmabuf {dname:?} page {gpa:#x} at IOVA {:#x} ({})",
            match a.access {
                Access::Read => "read",
                Access::Write => "wrote",
            },
            a.iova,
            self.v.tag(a.tag)
        );
        let mut out: Option<(&'static str, String, Option<u64>)> = None;
        if let Some(bi) = through {
            self.count(BINDING_IOVA_IN_USE);
            let b = &self.bindings[bi];
            let id = b.fact.id;
            if b.mapped_at.is_some_and(|m| a.seq < m) {
                out = Some((
                    BOUND_DEVICE_ONLY,
                    format!("{what} before binding {id} mapped it"),
                    Some(id),
                ));
            } else if b.unmapped_at.is_some_and(|u| a.seq >= u) {
                out = Some((
                    NO_DMA_AFTER_UNBIND,
                    format!(
                        "{what} through binding {id}'s IOVA after its unmap (seq {})",
                        b.unmapped_at.unwrap_or_default()
                    ),
                    Some(id),
                ));
            } else if !b.fact.used {
                out = Some((
                    BINDING_IOVA_IN_USE,
                    format!(
                        "{what} through an IOVA of binding {id}, which the tool did not use (it used {})",
                        self.used_ids(di)
                    ),
                    Some(id),
                ));
            }
        } else {
            let own: Vec<usize> = bs
                .iter()
                .copied()
                .filter(|&bi| self.bindings[bi].device == Some(a.device))
                .collect();
            if own.is_empty() {
                let bound: Vec<String> = bs
                    .iter()
                    .filter_map(|&bi| self.bindings[bi].device)
                    .map(|d| self.dev_label(d))
                    .collect();
                out = Some((
                    NO_STRAY_DMA,
                    format!(
                        "{what}, but the dmabuf is bound to {}",
                        if bound.is_empty() {
                            "no device".to_string()
                        } else {
                            bound.join(", ")
                        }
                    ),
                    None,
                ));
            } else if own
                .iter()
                .all(|&bi| self.bindings[bi].unmapped_at.is_some_and(|u| a.seq >= u))
            {
                let id = self.bindings[own[0]].fact.id;
                out = Some((
                    NO_DMA_AFTER_UNBIND,
                    format!("{what} after binding {id} was unmapped"),
                    Some(id),
                ));
            } else {
                let how = match a.domain {
                    None => "without IOMMU translation".to_string(),
                    Some(dom) => format!("through an IOVA of domain {dom} that no binding mapped"),
                };
                out = Some((BOUND_DEVICE_ONLY, format!("{what} {how}"), None));
            }
        }
        if let Some((inv, msg, binding)) = out {
            let mut v = self.violation(inv, a, Some(gpa), msg);
            v.dmabuf = Some(dname);
            v.binding = binding;
            self.violate(inv, v);
        }
    }

    fn used_ids(&self, di: usize) -> String {
        let ids: Vec<String> = self.by_dmabuf[di]
            .iter()
            .filter(|&&bi| self.bindings[bi].fact.used)
            .map(|&bi| self.bindings[bi].fact.id.to_string())
            .collect();
        if ids.is_empty() {
            "none".into()
        } else {
            format!("binding {}", ids.join(", "))
        }
    }

    fn check_unbinds(&mut self) {
        for b in &self.bindings {
            if b.unmapped_at.is_some() {
                *self.checked.entry(NO_DMA_AFTER_UNBIND).or_default() += 1;
            }
        }
    }

    fn check_payload(&mut self) {
        let mut sent = 0u64;
        let mut verified: Option<u64> = None;
        let mut any_sent = false;
        for (step, p) in self.v.payloads.clone() {
            self.count(PAYLOAD_INTACT);
            if let Some(s) = p.sent_bytes {
                sent += s;
                any_sent = true;
            }
            if let Some(v) = p.verified_bytes {
                *verified.get_or_insert(0) += v;
            }
            if let Some(off) = p.first_bad_offset {
                self.violate(
                    PAYLOAD_INTACT,
                    Violation {
                        invariant: PAYLOAD_INTACT.into(),
                        seq: None,
                        step: Some(step.clone()),
                        device: None,
                        nic: None,
                        iova: None,
                        gpa: None,
                        tag: None,
                        access: None,
                        fault: None,
                        dmabuf: None,
                        binding: None,
                        message: format!(
                            "the receiver of step {step:?} found a bad byte at offset {off}"
                        ),
                    },
                );
            }
        }
        let mismatch = match verified {
            Some(v) if v != sent => Some(format!("{sent} bytes sent, {v} verified")),
            None if any_sent && sent > 0 => {
                Some(format!("{sent} bytes sent, no receiver verified any"))
            }
            _ => None,
        };
        if let Some(m) = mismatch {
            self.violate(
                PAYLOAD_INTACT,
                Violation {
                    invariant: PAYLOAD_INTACT.into(),
                    seq: None,
                    step: None,
                    device: None,
                    nic: None,
                    iova: None,
                    gpa: None,
                    tag: None,
                    access: None,
                    fault: None,
                    dmabuf: None,
                    binding: None,
                    message: m,
                },
            );
        }
    }

    fn report(
        mut self,
        stats: BTreeMap<u16, (DeviceDmabufStats, HashSet<(usize, u64)>)>,
    ) -> VerifyReport {
        let lost = self.v.lost;
        let by_device = stats
            .into_iter()
            .map(|(d, (mut s, pages))| {
                s.nic = self.nic(d);
                s.dmabuf_pages_touched = pages.len() as u64;
                (bdf(d), s)
            })
            .collect();
        let bindings = self
            .bindings
            .iter()
            .map(|b| BindingReport {
                id: b.fact.id,
                dir: b.fact.dir.clone(),
                dmabuf: b.fact.dmabuf.clone(),
                step: b.step.clone(),
                ifname: b.fact.ifname.clone(),
                used: b.fact.used,
                unbound: b.fact.unbound,
                resolved_device: b.device.map(bdf),
                resolved_nic: b.device.and_then(|d| self.nic(d)),
                domain: b.domain,
                iova_pages: b.iova_pages.len() as u64,
                iova_ranges: page_runs(&b.iova_pages),
                mapped_at_seq: b.mapped_at,
                unmapped_at_seq: b.unmapped_at,
            })
            .collect();
        let mut invariants = Vec::new();
        let mut violations = Vec::new();
        for name in INVARIANTS {
            let (n, kept) = self.violations.remove(name).unwrap_or_default();
            let checked = if name == AUDIT_COMPLETE {
                self.v.records
            } else {
                self.checked.get(name).copied().unwrap_or(0)
            };
            let (ok, detail) = if name == AUDIT_COMPLETE {
                if lost == 0 {
                    (true, format!("{} records, none lost", self.v.records))
                } else {
                    (
                        false,
                        format!(
                            "{lost} audit records lost (ring overwritten or gaps): the other verdicts rest on an incomplete trail"
                        ),
                    )
                }
            } else if n > 0 {
                (
                    false,
                    format!(
                        "{n} violation(s) in {checked} checked; first: {}",
                        kept.first().map_or("", |v| v.message.as_str())
                    ),
                )
            } else if checked == 0 {
                (true, "nothing to check".to_string())
            } else {
                (true, format!("{checked} checked, all good"))
            };
            invariants.push(InvariantResult {
                name: name.to_string(),
                ok,
                checked,
                violations: n,
                detail,
            });
            violations.extend(kept);
        }
        VerifyReport {
            by_device,
            bindings,
            invariants,
            violations,
            notes: self.notes,
            records: self.v.records,
            records_lost: lost,
        }
    }
}

/// Sorted page numbers → `[first_address, pages]` runs.
fn page_runs(pages: &[u64]) -> Vec<(u64, u64)> {
    let mut out: Vec<(u64, u64)> = Vec::new();
    for &p in pages {
        match out.last_mut() {
            Some((a, n)) if *a / PAGE + *n == p => *n += 1,
            _ => out.push((p * PAGE, 1)),
        }
    }
    out
}

#[cfg(test)]
mod tests;
