//! Feeds a running machine's DMA audit trail to the [`Verifier`]: a thread
//! drains the audit ring while steps run (so the ring never wraps under a
//! long transfer), and the step runner marks step boundaries and hands over
//! the facts each step's guest tools printed.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use serde_json::Value;
use vmm::iommu::{Audit, AuditEvent, AuditRecord};

use crate::steps::{StepObserver, StepResult};
use crate::verify::{Verifier, VerifyReport};

/// How often the drain thread empties the ring. The ring holds
/// `vmm::iommu::DEFAULT_AUDIT_CAPACITY` records; at the lab's DMA rates
/// (well under 100k records/s nested) a quarter second is far from wrapping.
const DRAIN_EVERY: Duration = Duration::from_millis(250);
/// Records taken per ring lock (keeps the devices' DMA path unblocked).
const DRAIN_BATCH: usize = 1 << 15;

/// The IOMMU state the trail has built so far (live mappings, attachments),
/// kept across the scenarios of one booted VM: a scenario's verifier starts
/// from it instead of from the boot's records.
#[derive(Debug, Clone, Default)]
pub struct IommuShadow {
    /// (domain, iova) → (seq, gpa, size) of every live mapping.
    pub maps: BTreeMap<(u32, u64), (u64, u64, u64)>,
    /// endpoint → (seq, domain; None: detached or bypass).
    pub attach: BTreeMap<u16, (u64, Option<u32>)>,
}

impl IommuShadow {
    fn ingest(&mut self, records: &[AuditRecord]) {
        for r in records {
            match &r.event {
                AuditEvent::Map(m) => {
                    self.maps.insert((m.domain, m.iova), (r.seq, m.gpa, m.size));
                }
                AuditEvent::Unmap(m) => {
                    if self.maps.remove(&(m.domain, m.iova)).is_none() {
                        // A range unmap: every mapping inside it goes.
                        let end = m.iova.saturating_add(m.size);
                        let inside: Vec<_> = self
                            .maps
                            .range((m.domain, m.iova)..(m.domain, end))
                            .map(|(k, _)| *k)
                            .collect();
                        for k in inside {
                            self.maps.remove(&k);
                        }
                    }
                }
                AuditEvent::Attach {
                    endpoint,
                    domain,
                    bypass,
                } => {
                    self.attach
                        .insert(*endpoint, (r.seq, (!bypass).then_some(*domain)));
                }
                AuditEvent::Detach { endpoint, .. } => {
                    self.attach.insert(*endpoint, (r.seq, None));
                }
                AuditEvent::Dma(_) | AuditEvent::Bypass { .. } => {}
            }
        }
    }
}

/// Where one scenario's feed ended: the next scenario on the same machine
/// starts there.
#[derive(Debug, Clone, Default)]
pub struct Resume {
    pub cursor: u64,
    pub shadow: IommuShadow,
}

struct State {
    verifier: Verifier,
    cursor: u64,
    shadow: IommuShadow,
    /// Facts or payloads the verifier refused (a tool bug): kept for the report.
    errors: Vec<String>,
}

/// The verifier of one run, fed from the machine's audit.
pub struct VerifierFeed {
    audit: Arc<Audit>,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

fn lock(m: &Mutex<State>) -> MutexGuard<'_, State> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn drain(audit: &Audit, st: &mut State) {
    loop {
        let b = audit.drain_since_limit(st.cursor, DRAIN_BATCH);
        let n = b.records.len();
        st.shadow.ingest(&b.records);
        st.verifier.ingest_batch(&b);
        st.cursor = b.next;
        if n < DRAIN_BATCH {
            return;
        }
    }
}

impl VerifierFeed {
    /// Starts draining `audit` into `verifier`, from its first record: the
    /// IOMMU attachments made while the guest booted say which domain is
    /// whose.
    pub fn start(audit: Arc<Audit>, verifier: Verifier) -> VerifierFeed {
        Self::resume(audit, verifier, Resume::default())
    }

    /// Starts where an earlier feed on the same audit ended: `verifier`
    /// first learns the IOMMU state then (live mappings, attachments), then
    /// gets the trail from that point on.
    pub fn resume(audit: Arc<Audit>, mut verifier: Verifier, from: Resume) -> VerifierFeed {
        verifier.prime(
            from.shadow
                .maps
                .iter()
                .map(|(&(domain, iova), &(seq, gpa, size))| (seq, domain, iova, gpa, size)),
            from.shadow.attach.iter().map(|(&e, &(seq, d))| (seq, e, d)),
        );
        let state = Arc::new(Mutex::new(State {
            verifier,
            cursor: from.cursor,
            shadow: from.shadow,
            errors: Vec::new(),
        }));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (audit, state, stop) = (audit.clone(), state.clone(), stop.clone());
            std::thread::Builder::new()
                .name("verifier-feed".into())
                .spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        std::thread::park_timeout(DRAIN_EVERY);
                        drain(&audit, &mut lock(&state));
                    }
                })
                .ok()
        };
        VerifierFeed {
            audit,
            state,
            stop,
            thread,
        }
    }

    /// Stops the thread, takes the rest of the trail and judges it.
    pub fn finish(self) -> (VerifyReport, Vec<String>) {
        let (v, e, _) = self.finish_resumable();
        (v, e)
    }

    /// [`finish`](Self::finish), plus where a next feed on the same audit
    /// starts.
    pub fn finish_resumable(mut self) -> (VerifyReport, Vec<String>, Resume) {
        self.stop_thread();
        let mut st = lock(&self.state);
        drain(&self.audit, &mut st);
        let resume = Resume {
            cursor: st.cursor,
            shadow: std::mem::take(&mut st.shadow),
        };
        (st.verifier.finish(), st.errors.clone(), resume)
    }

    fn stop_thread(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.thread().unpark();
            let _ = t.join();
        }
    }
}

impl Drop for VerifierFeed {
    fn drop(&mut self) {
        self.stop_thread();
    }
}

/// The JSON objects of a step's result that carry tool facts or payloads:
/// an `sh` step's tool line (`result`), a transfer's sender and receiver
/// tool lines (`tx`, `rx`).
fn tool_lines(r: &StepResult) -> impl Iterator<Item = &Value> {
    ["result", "tx", "rx"]
        .into_iter()
        .filter_map(|k| r.data.get(k))
        .filter(|v| v.is_object())
}

impl StepObserver for VerifierFeed {
    fn step_started(&mut self, name: &str) {
        let mut st = lock(&self.state);
        drain(&self.audit, &mut st);
        let seq = st.cursor;
        st.verifier.step_started(name, seq);
    }

    fn step_ended(&mut self, name: &str, r: &StepResult) {
        let mut st = lock(&self.state);
        drain(&self.audit, &mut st);
        let seq = st.cursor;
        st.verifier.step_ended(name, seq);
        // Facts (dmabuf pages, bindings) without their payloads: the
        // step's own `payload` sums sender and receiver once.
        for line in tool_lines(r) {
            if let Some(f) = line.get("facts")
                && let Err(e) = st
                    .verifier
                    .add_facts(name, &serde_json::json!({ "facts": f }))
            {
                st.errors.push(e.to_string());
            }
        }
        if let Some(p) = r.data.get("payload") {
            // A transfer expected to fail (devmem skbs the kernel must drop)
            // is not expected to deliver its bytes; what did arrive must
            // still be intact.
            // A failure the expectation allows (an expected-fail step, a
            // campaign's transfer under faults) counts only for corruption,
            // unless its sender reported success (or closed on purpose
            // and the receiver read up to that end of stream): bytes then
            // must not go missing (`sender_ok` in the step's payload).
            let sender_ok = p.get("sender_ok").and_then(Value::as_bool).unwrap_or(false);
            let p = if !r.ok && r.as_expected && !sender_ok {
                serde_json::json!({ "first_bad_offset": p.get("first_bad_offset") })
            } else {
                p.clone()
            };
            if let Err(e) = st.verifier.add_payload(name, &p) {
                st.errors.push(e.to_string());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::collections::BTreeMap;

    fn result(data: Value) -> StepResult {
        StepResult {
            name: "s".into(),
            kind: "tcp-transfer".into(),
            ok: true,
            detail: String::new(),
            errno: None,
            extack: None,
            duration_ms: 0,
            data,
            as_expected: true,
            skipped: false,
        }
    }

    #[test]
    fn payloads_and_facts_reach_the_verifier_and_bad_facts_are_kept() {
        let audit = Arc::new(Audit::new(Default::default()));
        let mut f = VerifierFeed::start(audit, Verifier::new(BTreeMap::new()));
        f.step_started("t");
        f.step_ended(
            "t",
            &result(json!({
                "tx": {"facts": {"dmabufs": [{"name": "tx", "size": 4096, "pages": [[4097, 1]]}]}},
                "payload": {"sent_bytes": 10, "verified_bytes": 9, "first_bad_offset": 9},
            })),
        );
        let (rep, errors) = f.finish();
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(errors[0].contains("bad page run"), "{errors:?}");
        let p = rep.invariant(crate::verify::PAYLOAD_INTACT).unwrap();
        assert!(!p.ok, "{p:?}");

        // An expected failure: its missing bytes are fine, corruption not.
        let audit = Arc::new(Audit::new(Default::default()));
        let mut f = VerifierFeed::start(audit, Verifier::new(BTreeMap::new()));
        let mut r = result(json!({"payload": {"sent_bytes": 10, "verified_bytes": 0}}));
        (r.ok, r.as_expected) = (false, true);
        f.step_started("t");
        f.step_ended("t", &r);
        let (rep, _) = f.finish();
        assert!(rep.ok(), "{:?}", rep.failed());
        let audit = Arc::new(Audit::new(Default::default()));
        let mut f = VerifierFeed::start(audit, Verifier::new(BTreeMap::new()));
        r.data = json!({"payload": {"sent_bytes": 10, "verified_bytes": 4, "first_bad_offset": 4}});
        f.step_started("t");
        f.step_ended("t", &r);
        let (rep, _) = f.finish();
        assert_eq!(rep.failed(), [crate::verify::PAYLOAD_INTACT]);
        // An allowed failure whose sender reported success: bytes that did
        // not arrive are a violation.
        let audit = Arc::new(Audit::new(Default::default()));
        let mut f = VerifierFeed::start(audit, Verifier::new(BTreeMap::new()));
        r.data = json!({"payload": {"sent_bytes": 10, "verified_bytes": 4, "sender_ok": true}});
        f.step_started("t");
        f.step_ended("t", &r);
        let (rep, _) = f.finish();
        assert_eq!(rep.failed(), [crate::verify::PAYLOAD_INTACT]);
        let audit = Arc::new(Audit::new(Default::default()));
        let mut f = VerifierFeed::start(audit, Verifier::new(BTreeMap::new()));
        r.data = json!({"payload": {"sent_bytes": 10, "verified_bytes": 4, "sender_ok": false}});
        f.step_started("t");
        f.step_ended("t", &r);
        let (rep, _) = f.finish();
        assert!(rep.ok(), "{:?}", rep.failed());
    }

    /// A scenario on a machine that ran another before: its verifier
    /// starts from the IOMMU state the earlier trail built (attachments and
    /// mappings made before it), so it still resolves bindings and catches
    /// a stray device reading the dmabuf through an old mapping.
    #[test]
    fn a_resumed_feed_knows_earlier_attachments_and_mappings() {
        use vmm::iommu::{DmaAccess, GpaRanges, MapEvent};
        let audit = Arc::new(Audit::new(Default::default()));
        let nics = BTreeMap::from([(0x20u16, "nic0".to_string()), (0x28, "nic1".to_string())]);
        let map = |domain, iova, gpa| {
            AuditEvent::Map(MapEvent {
                domain,
                iova,
                gpa,
                size: 0x1000,
                flags: 3,
            })
        };
        audit.record(AuditEvent::Attach {
            endpoint: 0x20,
            domain: 1,
            bypass: false,
        });
        audit.record(AuditEvent::Attach {
            endpoint: 0x28,
            domain: 2,
            bypass: false,
        });
        // The first scenario: nic1 gets an RX buffer mapping that stays.
        let mut f = VerifierFeed::start(audit.clone(), Verifier::new(nics.clone()));
        f.step_started("a");
        audit.record(map(2, 0x5000, 0x10_0000));
        audit.record(map(2, 0x6000, 0x20_0000));
        audit.record(AuditEvent::Unmap(MapEvent {
            domain: 2,
            iova: 0x6000,
            gpa: 0x20_0000,
            size: 0x1000,
            flags: 3,
        }));
        f.step_ended("a", &result(json!({})));
        let (r1, _, resume) = f.finish_resumable();
        assert!(r1.ok(), "{:?}", r1.failed());
        assert_eq!(resume.shadow.maps.len(), 1);
        assert_eq!(resume.shadow.attach.len(), 2);
        // The second: a dmabuf page bound on nic0, which nic1 reads through
        // the mapping it kept from the first scenario.
        let mut f = VerifierFeed::resume(audit.clone(), Verifier::new(nics), resume);
        f.step_started("tx");
        audit.record(map(1, 0x9000, 0x10_0000));
        for (device, iova, domain) in [(0x20u16, 0x9000u64, 1u32), (0x28, 0x5000, 2)] {
            audit.record(AuditEvent::Dma(DmaAccess {
                device,
                iova,
                len: 64,
                access: vmm::dma::Access::Read,
                tag: "tx-payload",
                gpa: GpaRanges::from_slice(&[(0x10_0000, 64)]),
                domain: Some(domain),
                fault: None,
            }));
        }
        f.step_ended(
            "tx",
            &result(json!({"tx": {"facts": {
                "dmabufs": [{"name": "tx", "size": 4096, "pages": [[0x10_0000, 1]]}],
                "bindings": [{"id": 1, "dir": "tx", "dmabuf": "tx", "ifname": "eth0",
                              "ifindex": 2, "netns": "", "used": true, "unbound": false}],
            }}})),
        );
        let (r2, errors) = f.finish();
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(r2.bindings[0].resolved_nic.as_deref(), Some("nic0"));
        assert!(
            r2.failed().contains(&crate::verify::NO_STRAY_DMA),
            "{:?}",
            r2.failed()
        );
    }
}
