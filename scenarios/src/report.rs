//! The report of a scenario run: the JSON of ARCHITECTURE.md, a human
//! summary and JUnit XML.
//!
//! ```json
//! {"scenario":"nic-smoke","kernel":{"spec":"patched","release":"7.3.4+deb13-cloud-amd64"},
//!  "engine":"kvm","verdict":"pass","exit_code":0,
//!  "timing_ms":{"boot_to_agent":812,"total":4120},
//!  "steps":[{"name":"ping v4 nic0 -> nic1","ok":true,"detail":"10.0.0.2: 3/3 replies",...}],
//!  "dma":{"by_device":{"0000:00:04.0":{"reads":..,"writes":..,"bytes":..,"dmabuf_reads":0,"dmabuf_writes":0}},
//!         "iommu_faults":[],"violations":[]},
//!  "payload":{"sent_bytes":67108864,"verified_bytes":67108864},
//!  "invariants":[{"name":"nothing-lost","ok":true,"detail":".."}, ...]}
//! ```

use std::collections::BTreeMap;
use std::io::Write;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::steps::{NicBinding, Payload, ScenarioOutcome, StepResult, Verdict};

/// DMA counters of one device (from the VMM's audit).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceDma {
    pub reads: u64,
    pub writes: u64,
    pub bytes: u64,
    #[serde(default)]
    pub dmabuf_reads: u64,
    #[serde(default)]
    pub dmabuf_writes: u64,
    /// Refused accesses (IOMMU faults) of this device.
    #[serde(default)]
    pub faults: u64,
}

/// A broken invariant, as the verifier reports it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Violation {
    /// One of [`INVARIANTS`] (`bound-device-only`, `no-stray-dma`, …).
    pub invariant: String,
    pub message: String,
    /// Anything else (device, IOVA, GPA, binding id, …).
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

/// What the VMM side saw of DMA.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DmaSummary {
    /// PCI address → counters.
    pub by_device: BTreeMap<String, DeviceDma>,
    #[serde(default)]
    pub iommu_faults: Vec<Value>,
    #[serde(default)]
    pub violations: Vec<Violation>,
    /// Whatever else the VMM reports (dropped faults, audit counters, …).
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

impl DmaSummary {
    /// From the VMM's report (`vmm::iommu::DmaReport`, or its JSON): its
    /// `by_device` and `iommu_faults` keys are this struct's.
    pub fn from_report(r: &impl Serialize) -> Result<DmaSummary, String> {
        serde_json::to_value(r)
            .and_then(serde_json::from_value)
            .map_err(|e| format!("DMA report: {e}"))
    }
}

/// The invariants of ARCHITECTURE.md, by name (the DMA ones are judged by
/// [`crate::verify`]; `expectation` by the step runner).
pub const INVARIANTS: &[(&str, &str)] = &[
    (
        crate::verify::BOUND_DEVICE_ONLY,
        "DMA to a dmabuf page only by the bound device, through its binding's IOVAs",
    ),
    (
        crate::verify::NO_STRAY_DMA,
        "no other device touches dmabuf pages; no IOMMU fault on a binding's IOVA",
    ),
    (
        crate::verify::NO_DMA_AFTER_UNBIND,
        "no DMA to a binding's pages or IOVAs after unbind or close",
    ),
    (
        crate::verify::BINDING_IOVA_IN_USE,
        "no DMA through the IOVAs of a binding no socket sent or received with",
    ),
    (
        crate::verify::PAYLOAD_INTACT,
        "every payload byte sent arrives unchanged",
    ),
    (
        crate::verify::AUDIT_COMPLETE,
        "the verifier saw the whole DMA audit trail",
    ),
    (
        "expectation",
        "each step's outcome matches the scenario's expectation for this kernel",
    ),
];

impl DmaSummary {
    /// Takes the verifier's findings: dmabuf counters per device, the
    /// resolved bindings and the violations.
    pub fn apply_verify(&mut self, v: &crate::verify::VerifyReport) {
        for (bdf, d) in &v.by_device {
            let e = self.by_device.entry(bdf.clone()).or_default();
            e.dmabuf_reads = d.dmabuf_reads;
            e.dmabuf_writes = d.dmabuf_writes;
        }
        for x in &v.violations {
            let mut extra: BTreeMap<String, Value> = match serde_json::to_value(x) {
                Ok(Value::Object(m)) => m.into_iter().collect(),
                _ => BTreeMap::new(),
            };
            extra.remove("invariant");
            extra.remove("message");
            extra.retain(|_, v| !v.is_null());
            self.violations.push(Violation {
                invariant: x.invariant.clone(),
                message: x.message.clone(),
                extra,
            });
        }
        self.extra
            .insert("bindings".into(), serde_json::json!(v.bindings));
        self.extra
            .insert("dmabuf_by_device".into(), serde_json::json!(v.by_device));
        if !v.notes.is_empty() {
            self.extra
                .insert("verifier_notes".into(), serde_json::json!(v.notes));
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KernelInfo {
    /// What the user asked for: `patched`, `baseline` or a path.
    pub spec: String,
    /// `uname -r` of the guest.
    pub release: String,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Timing {
    pub boot_to_agent: u64,
    pub total: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InvariantResult {
    pub name: String,
    pub ok: bool,
    /// False when the run had nothing to check it with (no DMA audit).
    pub checked: bool,
    pub detail: String,
}

/// The JSON report (stable keys: ARCHITECTURE.md; the rest are extras).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub scenario: String,
    pub kernel: KernelInfo,
    pub engine: String,
    pub verdict: Verdict,
    pub exit_code: i32,
    pub timing_ms: Timing,
    pub steps: Vec<StepResult>,
    pub dma: DmaSummary,
    pub payload: Payload,
    pub invariants: Vec<InvariantResult>,
    pub nics: BTreeMap<String, NicBinding>,
    /// Outcomes that differ from the expectation.
    pub mismatches: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The whole report of a run. `dma` is what the VMM audit saw (None: no
/// audit, the DMA invariants are then reported as not checked).
pub fn build_report(
    outcome: &ScenarioOutcome,
    kernel: KernelInfo,
    engine: &str,
    timing: Timing,
    dma: Option<DmaSummary>,
    verify: Option<&crate::verify::VerifyReport>,
) -> Report {
    let audited = dma.is_some();
    let mut dma = dma.unwrap_or_default();
    if let Some(v) = verify {
        dma.apply_verify(v);
    }
    let mut invariants = Vec::new();
    for (name, _) in INVARIANTS {
        if let Some(i) = verify.and_then(|v| v.invariant(name)) {
            invariants.push(InvariantResult {
                name: (*name).into(),
                ok: i.ok,
                checked: true,
                detail: i.detail.clone(),
            });
            continue;
        }
        let r = match *name {
            crate::verify::PAYLOAD_INTACT => {
                let p = outcome.payload;
                let ok = p.sent_bytes == p.verified_bytes
                    && outcome
                        .steps
                        .iter()
                        .filter(|s| s.kind == "tcp-transfer" && !s.skipped)
                        .all(|s| {
                            let d = &s.data["payload"];
                            d["sent_bytes"] == d["verified_bytes"]
                        });
                InvariantResult {
                    name: (*name).into(),
                    ok,
                    checked: true,
                    detail: format!("{} bytes sent, {} verified", p.sent_bytes, p.verified_bytes),
                }
            }
            "expectation" => InvariantResult {
                name: (*name).into(),
                checked: true,
                ok: outcome.mismatches.is_empty() && outcome.error.is_none(),
                detail: if outcome.mismatches.is_empty() {
                    outcome
                        .error
                        .clone()
                        .unwrap_or_else(|| "every step as expected".into())
                } else {
                    outcome.mismatches.join("; ")
                },
            },
            _ => {
                let v: Vec<&Violation> = dma
                    .violations
                    .iter()
                    .filter(|v| v.invariant == *name)
                    .collect();
                InvariantResult {
                    name: (*name).into(),
                    ok: v.is_empty(),
                    checked: audited,
                    detail: if !audited {
                        "not checked (no DMA audit)".into()
                    } else if v.is_empty() {
                        "no violation".into()
                    } else {
                        format!(
                            "{} violation(s): {}",
                            v.len(),
                            v.iter()
                                .take(3)
                                .map(|v| v.message.as_str())
                                .collect::<Vec<_>>()
                                .join("; ")
                        )
                    },
                }
            }
        };
        invariants.push(r);
    }
    // Violations of invariants this version does not know still count.
    let unknown: Vec<&Violation> = dma
        .violations
        .iter()
        .filter(|v| !INVARIANTS.iter().any(|(n, _)| *n == v.invariant))
        .collect();
    if !unknown.is_empty() {
        invariants.push(InvariantResult {
            name: "other".into(),
            ok: false,
            checked: true,
            detail: unknown
                .iter()
                .map(|v| format!("{}: {}", v.invariant, v.message))
                .collect::<Vec<_>>()
                .join("; "),
        });
    }
    // A broken DMA invariant is a finding whatever the steps said, unless
    // the lab could not run at all.
    // (payload-intact too: bytes lost or corrupted are a finding even when a
    // step's expectation allowed its failure.)
    let dma_broken = invariants.iter().any(|i| !i.ok && i.name != "expectation");
    let verdict = match outcome.verdict {
        Verdict::Error => Verdict::Error,
        _ if dma_broken => Verdict::Fail,
        v => v,
    };
    let mut mismatches = outcome.mismatches.clone();
    if dma_broken && outcome.verdict != Verdict::Error {
        mismatches.push("DMA invariant violated (see invariants)".into());
    }
    Report {
        scenario: outcome.scenario.clone(),
        kernel,
        engine: engine.into(),
        verdict,
        exit_code: verdict.exit_code(),
        timing_ms: timing,
        steps: outcome.steps.clone(),
        dma,
        payload: outcome.payload,
        invariants,
        nics: outcome.nics.clone(),
        mismatches,
        error: outcome.error.clone(),
    }
}

impl Report {
    pub fn to_json(&self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }

    /// The human summary.
    pub fn print_summary(&self, w: &mut dyn Write) -> std::io::Result<()> {
        writeln!(
            w,
            "scenario {} on {} ({}), engine {}: {}",
            self.scenario,
            self.kernel.spec,
            if self.kernel.release.is_empty() {
                "?"
            } else {
                &self.kernel.release
            },
            self.engine,
            self.verdict.as_str().to_uppercase()
        )?;
        for s in &self.steps {
            let mark = if s.skipped {
                "skip"
            } else if s.ok && s.as_expected {
                " ok "
            } else if s.as_expected {
                "xfail"
            } else {
                "FAIL"
            };
            writeln!(w, "  [{mark:^5}] {:<32} {}", s.name, s.detail)?;
        }
        for i in &self.invariants {
            writeln!(
                w,
                "  [{:^5}] invariant {:<22} {}",
                if !i.checked {
                    "n/a"
                } else if i.ok {
                    " ok "
                } else {
                    "FAIL"
                },
                i.name,
                i.detail
            )?;
        }
        if !self.dma.by_device.is_empty() {
            writeln!(w, "  DMA by device:")?;
            for (bdf, d) in &self.dma.by_device {
                writeln!(
                    w,
                    "    {bdf}: {} reads, {} writes, {} bytes, dmabuf {} reads / {} writes",
                    d.reads, d.writes, d.bytes, d.dmabuf_reads, d.dmabuf_writes
                )?;
            }
        }
        if let Some(e) = &self.error {
            writeln!(w, "  error: {e}")?;
        }
        writeln!(
            w,
            "  payload {} / {} bytes verified; boot to agent {} ms, total {} ms; exit {}",
            self.payload.verified_bytes,
            self.payload.sent_bytes,
            self.timing_ms.boot_to_agent,
            self.timing_ms.total,
            self.exit_code
        )
    }

    /// JUnit XML: one testcase per step and per invariant.
    pub fn junit(&self) -> String {
        let class = format!("{}.{}", self.scenario, self.kernel.spec);
        let mut cases = String::new();
        let mut failures = 0;
        let mut errors = 0;
        let mut skipped = 0;
        let mut n = 0;
        for s in &self.steps {
            n += 1;
            let body = if s.skipped {
                skipped += 1;
                format!("<skipped message=\"{}\"/>", xml_escape(&s.detail))
            } else if !s.as_expected && self.verdict == Verdict::Error && !s.ok {
                errors += 1;
                format!(
                    "<error message=\"{}\">{}</error>",
                    xml_escape(&s.detail),
                    xml_escape(&serde_json::to_string_pretty(&s.data).unwrap_or_default())
                )
            } else if !s.as_expected {
                failures += 1;
                let why = self
                    .mismatches
                    .iter()
                    .find(|m| m.starts_with(&format!("{}: ", s.name)))
                    .cloned()
                    .unwrap_or_else(|| s.detail.clone());
                format!(
                    "<failure message=\"{}\">{}</failure>",
                    xml_escape(&why),
                    xml_escape(&serde_json::to_string_pretty(&s.data).unwrap_or_default())
                )
            } else {
                format!("<system-out>{}</system-out>", xml_escape(&s.detail))
            };
            cases.push_str(&format!(
                "    <testcase classname=\"{}\" name=\"step: {}\" time=\"{:.3}\">{body}</testcase>\n",
                xml_escape(&class),
                xml_escape(&s.name),
                s.duration_ms as f64 / 1000.0
            ));
        }
        for i in &self.invariants {
            n += 1;
            let body = if !i.checked {
                skipped += 1;
                format!("<skipped message=\"{}\"/>", xml_escape(&i.detail))
            } else if i.ok {
                format!("<system-out>{}</system-out>", xml_escape(&i.detail))
            } else {
                failures += 1;
                format!("<failure message=\"{}\"/>", xml_escape(&i.detail))
            };
            cases.push_str(&format!(
                "    <testcase classname=\"{}\" name=\"invariant: {}\" time=\"0\">{body}</testcase>\n",
                xml_escape(&class),
                xml_escape(&i.name)
            ));
        }
        if let Some(e) = &self.error
            && self.steps.is_empty()
        {
            n += 1;
            errors += 1;
            cases.push_str(&format!(
                "    <testcase classname=\"{}\" name=\"setup\" time=\"0\"><error message=\"{}\"/></testcase>\n",
                xml_escape(&class),
                xml_escape(e)
            ));
        }
        format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<testsuites>\n  <testsuite name=\"{}\" tests=\"{n}\" failures=\"{failures}\" errors=\"{errors}\" skipped=\"{skipped}\" time=\"{:.3}\">\n    <properties>\n      <property name=\"kernel.spec\" value=\"{}\"/>\n      <property name=\"kernel.release\" value=\"{}\"/>\n      <property name=\"engine\" value=\"{}\"/>\n      <property name=\"verdict\" value=\"{}\"/>\n    </properties>\n{cases}  </testsuite>\n</testsuites>\n",
            xml_escape(&class),
            self.timing_ms.total as f64 / 1000.0,
            xml_escape(&self.kernel.spec),
            xml_escape(&self.kernel.release),
            xml_escape(&self.engine),
            self.verdict.as_str()
        )
    }
}

/// Escapes text for XML attributes and content; drops characters XML 1.0
/// cannot carry (control characters other than tab, newline, CR).
pub fn xml_escape(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&apos;"),
            '\t' | '\n' | '\r' => o.push(c),
            c if (c as u32) < 0x20 || c == '\u{FFFE}' || c == '\u{FFFF}' => {
                o.push_str(&format!("\\x{:02x}", c as u32))
            }
            c => o.push(c),
        }
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn step(name: &str, ok: bool, as_expected: bool, skipped: bool) -> StepResult {
        StepResult {
            name: name.into(),
            kind: if name.starts_with("tcp") {
                "tcp-transfer".into()
            } else {
                "sh".into()
            },
            ok,
            detail: format!("detail of {name} <&>\"'\u{1}"),
            errno: None,
            extack: None,
            duration_ms: 1500,
            data: if name.starts_with("tcp") {
                json!({"payload": {"sent_bytes": 100, "verified_bytes": if ok {100} else {40}}})
            } else {
                Value::Null
            },
            as_expected,
            skipped,
        }
    }

    fn outcome(
        verdict: Verdict,
        steps: Vec<StepResult>,
        mismatches: Vec<String>,
    ) -> ScenarioOutcome {
        let verified = steps
            .iter()
            .map(|s| s.data["payload"]["verified_bytes"].as_u64().unwrap_or(0))
            .sum();
        let sent = steps
            .iter()
            .map(|s| s.data["payload"]["sent_bytes"].as_u64().unwrap_or(0))
            .sum();
        ScenarioOutcome {
            scenario: "nic-smoke".into(),
            kernel_id: "patched".into(),
            verdict,
            steps,
            nics: BTreeMap::new(),
            mismatches,
            error: None,
            payload: Payload {
                sent_bytes: sent,
                verified_bytes: verified,
            },
            duration_ms: 10,
        }
    }

    fn kernel() -> KernelInfo {
        KernelInfo {
            spec: "patched".into(),
            release: "7.3.4+deb13-cloud-amd64".into(),
        }
    }

    #[test]
    fn stable_keys_present() {
        let mut dma = DmaSummary::default();
        dma.by_device.insert(
            "0000:00:04.0".into(),
            DeviceDma {
                reads: 3,
                writes: 4,
                bytes: 5,
                ..Default::default()
            },
        );
        let o = outcome(
            Verdict::Pass,
            vec![step("a", true, true, false), step("tcp", true, true, false)],
            vec![],
        );
        let r = build_report(
            &o,
            kernel(),
            "kvm",
            Timing {
                boot_to_agent: 800,
                total: 4000,
            },
            Some(dma),
            None,
        );
        assert_eq!(r.verdict, Verdict::Pass);
        let j = r.to_json();
        for k in [
            "scenario",
            "kernel",
            "engine",
            "verdict",
            "timing_ms",
            "steps",
            "dma",
            "payload",
        ] {
            assert!(j.get(k).is_some(), "{k}");
        }
        assert_eq!(j["verdict"], "pass");
        assert_eq!(j["kernel"]["spec"], "patched");
        assert_eq!(j["timing_ms"]["boot_to_agent"], 800);
        assert_eq!(j["steps"][0]["name"], "a");
        assert_eq!(j["steps"][0]["ok"], true);
        assert!(j["steps"][0]["detail"].is_string());
        let d = &j["dma"]["by_device"]["0000:00:04.0"];
        for k in ["reads", "writes", "bytes", "dmabuf_reads", "dmabuf_writes"] {
            assert!(d[k].is_u64(), "{k}");
        }
        assert!(j["dma"]["iommu_faults"].is_array() && j["dma"]["violations"].is_array());
        assert_eq!(j["payload"]["sent_bytes"], 100);
        assert_eq!(j["payload"]["verified_bytes"], 100);
        assert!(r.invariants.iter().all(|i| i.ok), "{:?}", r.invariants);
        // Round trip.
        let back: Report = serde_json::from_value(j).unwrap();
        assert_eq!(back, r);
    }

    #[test]
    fn verdicts_and_violations() {
        let o = outcome(Verdict::Pass, vec![step("a", true, true, false)], vec![]);
        let mut dma = DmaSummary::default();
        dma.violations.push(Violation {
            invariant: "no-stray-dma".into(),
            message: "0000:00:05.0 wrote a dmabuf page".into(),
            extra: [("gpa".to_string(), json!(4096))].into_iter().collect(),
        });
        let r = build_report(
            &o,
            kernel(),
            "kvm",
            Timing::default(),
            Some(dma.clone()),
            None,
        );
        assert_eq!(r.verdict, Verdict::Fail);
        assert_eq!(r.exit_code, 1);
        let inv = r
            .invariants
            .iter()
            .find(|i| i.name == "no-stray-dma")
            .unwrap();
        assert!(!inv.ok && inv.detail.contains("wrote a dmabuf page"));
        assert_eq!(r.to_json()["dma"]["violations"][0]["gpa"], 4096);
        // Lab errors stay errors.
        let mut e = outcome(Verdict::Error, vec![], vec![]);
        e.error = Some("no agent".into());
        let r = build_report(&e, kernel(), "nested", Timing::default(), Some(dma), None);
        assert_eq!((r.verdict, r.exit_code), (Verdict::Error, 2));
        assert!(r.junit().contains("<error message=\"no agent\"/>"));
        // Expected failures stay exit 0; no audit → DMA invariants "not checked".
        let x = outcome(
            Verdict::ExpectedFail,
            vec![step("a", false, true, false)],
            vec![],
        );
        let r = build_report(&x, kernel(), "kvm", Timing::default(), None, None);
        assert_eq!((r.verdict, r.exit_code), (Verdict::ExpectedFail, 0));
        assert!(
            r.invariants
                .iter()
                .any(|i| i.detail.contains("not checked"))
        );
        // Unknown invariant names are not lost.
        let mut dma = DmaSummary::default();
        dma.violations.push(Violation {
            invariant: "new-thing".into(),
            message: "m".into(),
            extra: BTreeMap::new(),
        });
        let r = build_report(
            &outcome(Verdict::Pass, vec![], vec![]),
            kernel(),
            "kvm",
            Timing::default(),
            Some(dma),
            None,
        );
        assert_eq!(r.verdict, Verdict::Fail);
        assert!(r.invariants.iter().any(|i| i.name == "other" && !i.ok));
    }

    #[test]
    fn junit_and_summary() {
        let o = outcome(
            Verdict::Fail,
            vec![
                step("a", true, true, false),
                step("tcp <1>", false, false, false),
                step("c", false, false, true),
            ],
            vec!["tcp <1>: expected success, got failure".into()],
        );
        let r = build_report(
            &o,
            kernel(),
            "kvm",
            Timing {
                boot_to_agent: 1,
                total: 2500,
            },
            None,
            None,
        );
        let x = r.junit();
        assert!(x.starts_with("<?xml"));
        assert!(x.contains("tests=\"10\""), "{x}");
        assert!(x.contains("skipped=\"6\""), "{x}");
        // tcp step + payload-intact + expectation.
        assert!(x.contains("failures=\"3\""), "{x}");
        assert!(x.contains("name=\"step: tcp &lt;1&gt;\""));
        assert!(x.contains("detail of a &lt;&amp;&gt;&quot;&apos;\\x01"));
        assert!(!x.contains('\u{1}'));
        assert!(x.contains("expected success, got failure"));
        // Balanced testcases.
        assert_eq!(
            x.matches("<testcase ").count(),
            x.matches("</testcase>").count()
        );
        let mut s = Vec::new();
        r.print_summary(&mut s).unwrap();
        let s = String::from_utf8(s).unwrap();
        assert!(
            s.contains("FAIL") && s.contains("skip") && s.contains("payload-intact"),
            "{s}"
        );
        assert!(s.starts_with(
            "scenario nic-smoke on patched (7.3.4+deb13-cloud-amd64), engine kvm: FAIL"
        ));
    }

    #[test]
    fn from_the_vmm_report_shape() {
        let v = json!({
            "by_device": {"0000:00:04.0": {"reads": 1, "writes": 2, "bytes": 3, "faults": 4}},
            "iommu_faults": [{"bdf": "0000:00:04.0", "iova": 4096}],
            "iommu_faults_dropped": 0,
            "audit_next_seq": 9
        });
        let d = DmaSummary::from_report(&v).unwrap();
        assert_eq!(d.by_device["0000:00:04.0"].faults, 4);
        assert_eq!(d.iommu_faults.len(), 1);
        assert!(d.violations.is_empty());
        assert_eq!(d.extra["audit_next_seq"], 9);
        let back = serde_json::to_value(&d).unwrap();
        assert_eq!(back["audit_next_seq"], 9);
        assert_eq!(back["by_device"]["0000:00:04.0"]["dmabuf_reads"], 0);
    }

    #[test]
    fn escaping() {
        assert_eq!(
            xml_escape("a<b>&\"'\u{0}\tz"),
            "a&lt;b&gt;&amp;&quot;&apos;\\x00\tz"
        );
    }
}
