//! Feeds a running machine's DMA audit trail to the [`Verifier`]: a thread
//! drains the audit ring while steps run (so the ring never wraps under a
//! long transfer), and the step runner marks step boundaries and hands over
//! the facts each step's guest tools printed.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use serde_json::Value;
use vmm::iommu::Audit;

use crate::steps::{StepObserver, StepResult};
use crate::verify::{Verifier, VerifyReport};

/// How often the drain thread empties the ring. The ring holds
/// `vmm::iommu::DEFAULT_AUDIT_CAPACITY` records; at the lab's DMA rates
/// (well under 100k records/s nested) a quarter second is far from wrapping.
const DRAIN_EVERY: Duration = Duration::from_millis(250);
/// Records taken per ring lock (keeps the devices' DMA path unblocked).
const DRAIN_BATCH: usize = 1 << 15;

struct State {
    verifier: Verifier,
    cursor: u64,
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
        let state = Arc::new(Mutex::new(State {
            verifier,
            cursor: 0,
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
    pub fn finish(mut self) -> (VerifyReport, Vec<String>) {
        self.stop_thread();
        let mut st = lock(&self.state);
        drain(&self.audit, &mut st);
        (st.verifier.finish(), st.errors.clone())
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
            // unless its sender reported success: bytes then must not go
            // missing (`sender_ok` in the step's payload).
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
}
