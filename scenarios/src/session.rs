//! One booted lab machine running scenario after scenario (the matrix, a
//! campaign's cases): between two scenarios the guest is put back into its
//! booted state (`netmem-lab lab-reset` in the guest, the wires and NIC
//! faults back to the topology's on the host), and each scenario gets its
//! own verifier (started from the IOMMU state the trail had built), its own
//! DMA counts (the difference over its run) and its own report.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::events::{Event, EventSink};
use crate::feed::{Resume, VerifierFeed};
use crate::job::Job;
use crate::run::{Booted, ENDED_MID_RUN, Outcome, RunFailure, boot, describe_exit, power_off};
use crate::scenario::Scenario;
use crate::topology::TopologySpec;

/// How long the guest's reset may take.
const RESET_TIMEOUT: Duration = Duration::from_secs(90);

/// A booted machine and what the next scenario needs to start on it.
pub struct Session {
    b: Booted,
    topology: TopologySpec,
    nic_map: std::collections::BTreeMap<String, String>,
    release: String,
    resume: Resume,
    /// Scenarios run on this machine.
    runs: u32,
    /// Reset the guest before each scenario (several scenarios per VM).
    reuse: bool,
    /// Time the guest resets took, ms.
    pub reset_ms: Vec<u64>,
}

fn emit_step(sink: &dyn EventSink, t0: Instant, name: &str, detail: String) {
    sink.emit(Event::Step {
        name: name.into(),
        elapsed_ms: t0.elapsed().as_millis() as u64,
        detail,
    });
}

impl Session {
    /// Boots `job`'s machine with `topology`. `reuse`: more than one
    /// scenario will run on it (the guest's booted NIC settings are
    /// recorded first, for the resets).
    pub fn open(
        job: &Job,
        topology: &TopologySpec,
        reuse: bool,
        sink: Arc<dyn EventSink>,
        t0: Instant,
    ) -> Result<Session, RunFailure> {
        let mut j = job.clone();
        j.machine.topology = topology.clone();
        let mut b = boot(&j, sink.clone(), t0)?;
        let release = b
            .agent
            .hello()
            .map(|h| h.release)
            .unwrap_or_else(|_| job.kernel_release.clone());
        let nic_map = b
            .topology
            .as_ref()
            .map(|t| t.bdfs.clone())
            .unwrap_or_default();
        let mut s = Session {
            b,
            topology: topology.clone(),
            nic_map,
            release,
            resume: Resume::default(),
            runs: 0,
            reuse,
            reset_ms: Vec::new(),
        };
        if reuse {
            // The first run of the tool records the booted NIC settings.
            s.guest_reset()
                .map_err(|e| s.failure(format!("recording the booted state: {e}")))?;
        }
        Ok(s)
    }

    fn failure(&self, message: String) -> RunFailure {
        RunFailure {
            message,
            console_tail: self.b.machine.console_tail(),
        }
    }

    /// Whether the machine still runs.
    pub fn alive(&self) -> bool {
        self.b.machine.exit_reason().is_none()
    }

    /// Scenarios run so far.
    pub fn runs(&self) -> u32 {
        self.runs
    }

    pub fn boot_to_agent_ms(&self) -> u64 {
        self.b.boot_to_agent.as_millis() as u64
    }

    fn guest_reset(&mut self) -> Result<Value, String> {
        let argv = [
            images::initramfs::AGENT_GUEST_PATH.to_string(),
            "lab-reset".to_string(),
        ];
        let out = crate::steps::GuestExec::run(&mut self.b.agent, &argv, RESET_TIMEOUT)
            .map_err(|e| format!("lab-reset: {e}"))?;
        let line = out.stdout.lines().last().unwrap_or_default();
        let v: Value = serde_json::from_str(line).map_err(|_| {
            format!(
                "lab-reset exited {:?}: {} {}",
                out.exit_code,
                out.stdout.trim(),
                out.stderr.trim()
            )
        })?;
        if out.exit_code != Some(0) || v["ok"] != json!(true) {
            return Err(format!(
                "lab-reset failed: {}",
                v["error"].as_str().unwrap_or(line)
            ));
        }
        Ok(v)
    }

    /// Guest and host back to the booted state.
    fn reset(&mut self, sink: &dyn EventSink, t0: Instant) -> Result<(), String> {
        let started = Instant::now();
        if let Some(t) = &self.b.topology {
            // Wires and NICs back to the topology's faults, links up.
            t.reset_faults(&self.topology)?;
        }
        let v = self.guest_reset()?;
        let ms = started.elapsed().as_millis() as u64;
        self.reset_ms.push(ms);
        let n = |k: &str| v[k].as_array().map_or(0, Vec::len);
        emit_step(
            sink,
            t0,
            "guest reset",
            format!(
                "{ms} ms: {} process(es) killed, {} netns and {} link(s) deleted, {} NIC setting(s) restored",
                n("killed"),
                n("netns_deleted"),
                n("links_deleted"),
                n("restored")
            ),
        );
        Ok(())
    }

    /// Runs `scn` (for kernel `kernel_spec`) on this machine; the first
    /// scenario runs on the fresh guest, each later one after a reset.
    /// `Err`: the machine can take no more scenarios (the reset failed);
    /// the scenario did not run.
    pub fn run(
        &mut self,
        scn: &Scenario,
        kernel_spec: &str,
        engine: &str,
        sink: Arc<dyn EventSink>,
    ) -> Result<Outcome, RunFailure> {
        let t0 = Instant::now();
        if self.runs > 0 {
            if !self.reuse {
                return Err(self.failure("this machine runs one scenario only".into()));
            }
            self.reset(&*sink, t0)
                .map_err(|e| self.failure(format!("resetting the guest: {e}")))?;
        }
        self.runs += 1;
        let dma_before = serde_json::to_value(self.b.machine.dma_report()).unwrap_or_default();
        let nics_before = self.b.topology.as_ref().map(|t| t.stats());
        let mut feed = VerifierFeed::resume(
            self.b.machine.devices().audit().clone(),
            crate::verify::Verifier::from_bdfs(&self.nic_map),
            std::mem::take(&mut self.resume),
        );
        let mut no_host = crate::steps::NoHost;
        let mut topo_host = self.b.topology.as_ref();
        let host: &mut dyn crate::steps::HostControl = match &mut topo_host {
            Some(t) => t,
            None => &mut no_host,
        };
        let mut outcome = crate::steps::run_scenario_steps_host(
            &crate::steps::RunnerConfig::default(),
            scn,
            kernel_spec,
            &self.nic_map,
            &mut self.b.agent,
            host,
            &*sink,
            &mut feed,
        );
        // A step that failed because the machine itself ended under it:
        // name that, not the agent's silence that followed.
        if let (Some(e), Some(r)) = (&outcome.error, self.b.machine.exit_reason()) {
            let panicked =
                self.b.machine.console_tail().iter().any(|l| {
                    l.contains("Kernel panic") || l.contains("BUG:") || l.contains("Oops")
                });
            outcome.error = Some(format!(
                "{}: {}{} (while: {e})",
                ENDED_MID_RUN,
                describe_exit(&r),
                if panicked {
                    "; the guest kernel oopsed first, see its console"
                } else {
                    ""
                }
            ));
        }
        let vcpus_at_error = outcome
            .error
            .as_ref()
            .map(|_| crate::run::vcpu_state(&self.b.machine, &*sink));
        let dma_now = serde_json::to_value(self.b.machine.dma_report()).unwrap_or_default();
        let dma = crate::report::DmaSummary::from_report(&dma_delta(&dma_before, &dma_now)).ok();
        let nics = self.b.topology.as_ref().map(|t| t.stats());
        let (verdict, fact_errors, resume) = feed.finish_resumable();
        self.resume = resume;
        if outcome.error.is_none() {
            let m = scn
                .expectation(kernel_spec)
                .check_bindings(&verdict.bindings);
            if !m.is_empty() {
                outcome.mismatches.extend(m);
                outcome.verdict = crate::steps::Verdict::Fail;
            }
        }
        for e in &fact_errors {
            sink.emit(Event::Log {
                level: "warn".into(),
                message: format!("verifier: a tool's facts were refused: {e}"),
            });
        }
        let report = crate::report::build_report(
            &outcome,
            crate::report::KernelInfo {
                spec: kernel_spec.to_string(),
                release: self.release.clone(),
            },
            engine,
            crate::report::Timing {
                boot_to_agent: if self.runs == 1 {
                    self.boot_to_agent_ms()
                } else {
                    0
                },
                total: t0.elapsed().as_millis() as u64,
            },
            dma,
            Some(&verdict),
        );
        let mut json = report.to_json();
        json["nics"] = json!(nics);
        if self.reuse {
            json["vm"] = json!({
                "scenario_on_this_vm": self.runs,
                "reset_ms": if self.runs > 1 { self.reset_ms.last().copied() } else { None },
                "nics_before": nics_before,
            });
        }
        if !fact_errors.is_empty() {
            json["verifier_fact_errors"] = json!(fact_errors);
        }
        if let Some(v) = vcpus_at_error {
            json["vcpus_at_error"] = v;
        }
        json["junit"] = json!(report.junit());
        let mut summary = Vec::new();
        let _ = report.print_summary(&mut summary);
        json["summary"] = json!(String::from_utf8_lossy(&summary));
        Ok(Outcome {
            exit_code: report.verdict.exit_code(),
            report: json,
        })
    }

    /// Stops the machine.
    pub fn close(mut self, sink: &dyn EventSink, t0: Instant) -> vmm::power::ExitReason {
        let exit = power_off(&mut self.b);
        emit_step(sink, t0, "VM ended", describe_exit(&exit));
        exit
    }
}

/// The DMA report over one scenario: `now` minus `before` (counters per
/// device and in total; only the IOMMU faults recorded since).
pub fn dma_delta(before: &Value, now: &Value) -> Value {
    let mut out = now.clone();
    let sub = |a: &Value, b: &Value| match (a.as_u64(), b.as_u64()) {
        (Some(a), Some(b)) => Some(json!(a.saturating_sub(b))),
        _ => None,
    };
    if let (Some(devs), Some(old)) = (
        out.get_mut("by_device").and_then(Value::as_object_mut),
        before.get("by_device").and_then(Value::as_object),
    ) {
        for (bdf, counters) in devs.iter_mut() {
            let Some(prev) = old.get(bdf) else { continue };
            if let Some(c) = counters.as_object_mut() {
                for (k, v) in c.iter_mut() {
                    if let Some(d) = sub(v, &prev[k]) {
                        *v = d;
                    }
                }
            }
        }
    }
    for k in [
        "iommu_faults_dropped",
        "fault_events_sent",
        "fault_events_dropped",
        "audit_overwritten",
    ] {
        if let Some(d) = sub(&now[k], &before[k]) {
            out[k] = d;
        }
    }
    // The fault list is bounded and oldest first: the new ones are past
    // the old length (none when it was already full).
    let old_len = before["iommu_faults"].as_array().map_or(0, Vec::len);
    if let Some(f) = out.get_mut("iommu_faults").and_then(Value::as_array_mut) {
        let keep: Vec<Value> = f.iter().skip(old_len).cloned().collect();
        *f = keep;
    }
    out
}

/// One entry of a batch: a scenario and where it came from.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct BatchItem {
    pub toml: String,
    pub origin: String,
}

/// The machine a topology needs (the pcap directory is the run's, not the
/// scenario's): scenarios with equal shapes can share a machine.
pub fn shape(t: &TopologySpec) -> TopologySpec {
    TopologySpec {
        pcap_dir: None,
        ..t.clone()
    }
}

/// Whether two scenarios can run on one machine one after the other (the
/// same NICs, wires and faults at cabling; faults changed by steps are set
/// back by the reset).
pub fn can_share(a: &TopologySpec, b: &TopologySpec) -> bool {
    shape(a) == shape(b)
}

/// A scenario run the engine lost (the guest triple-faulted mid-run with no
/// oops on its console: see `nested::engine_trouble`): worth a run on a
/// fresh machine.
fn lost_by_engine(o: &Outcome) -> bool {
    o.report["error"].as_str().is_some_and(|e| {
        e.starts_with(&format!("{ENDED_MID_RUN}: triple fault")) && !e.contains("oopsed first")
    })
}

/// Runs on a fresh machine a scenario may get after its first attempt.
const FRESH_RETRIES: u32 = 2;

/// Keeps one machine for consecutive scenarios that can share it, boots a
/// new one when they cannot (or the old one is gone), and gives a scenario
/// that the engine lost, or whose reset failed, another run on a fresh
/// machine.
struct Pool<'a> {
    job: &'a Job,
    sink: Arc<dyn EventSink>,
    t0: Instant,
    engine: &'a str,
    cur: Option<Session>,
    /// Machines booted.
    vms: u32,
    /// Guest resets, ms.
    reset_ms: Vec<u64>,
    /// Why machines were replaced.
    replaced: Vec<String>,
}

impl<'a> Pool<'a> {
    fn new(job: &'a Job, sink: Arc<dyn EventSink>, t0: Instant, engine: &'a str) -> Pool<'a> {
        Pool {
            job,
            sink,
            t0,
            engine,
            cur: None,
            vms: 0,
            reset_ms: Vec::new(),
            replaced: Vec::new(),
        }
    }

    fn drop_machine(&mut self) {
        if let Some(s) = self.cur.take() {
            self.reset_ms.extend(s.reset_ms.iter().copied());
            s.close(&*self.sink, self.t0);
        }
    }

    fn machine_for(&mut self, topo: &TopologySpec) -> Result<&mut Session, RunFailure> {
        let fits = self
            .cur
            .as_ref()
            .is_some_and(|s| s.alive() && can_share(&s.topology, topo));
        if !fits {
            self.drop_machine();
            let mut t = topo.clone();
            t.pcap_dir = self.job.machine.topology.pcap_dir.clone();
            self.vms += 1;
            self.cur = Some(Session::open(
                self.job,
                &t,
                true,
                self.sink.clone(),
                self.t0,
            )?);
        }
        Ok(self.cur.as_mut().expect("just set"))
    }

    /// `scn` on a machine of its topology, with fresh-machine retries.
    fn run(&mut self, scn: &Scenario) -> Outcome {
        let topo = scn.topology_spec();
        let mut attempt = 0;
        loop {
            let (engine, kernel, sink) =
                (self.engine, self.job.kernel_spec.clone(), self.sink.clone());
            let r = self
                .machine_for(&topo)
                .and_then(|m| m.run(scn, &kernel, engine, sink));
            let retry = match &r {
                Ok(o) => {
                    lost_by_engine(o).then(|| o.report["error"].as_str().unwrap_or("?").to_string())
                }
                Err(f) => Some(f.message.clone()),
            };
            match retry {
                Some(why)
                    if attempt < FRESH_RETRIES
                        && !crate::run::CANCEL.load(std::sync::atomic::Ordering::SeqCst) =>
                {
                    self.sink.emit(Event::Log {
                        level: "warn".into(),
                        message: format!(
                            "{}: {why}; running it again on a fresh machine",
                            scn.name
                        ),
                    });
                    self.replaced.push(format!("{}: {why}", scn.name));
                    self.drop_machine();
                    attempt += 1;
                }
                _ => {
                    return match r {
                        Ok(mut o) => {
                            if attempt > 0 {
                                o.report["fresh_machine_retries"] = json!(attempt);
                            }
                            o
                        }
                        Err(f) => error_outcome(self.job, self.engine, &scn.name, f),
                    };
                }
            }
        }
    }
}

fn error_outcome(job: &Job, engine: &str, name: &str, f: RunFailure) -> Outcome {
    Outcome {
        exit_code: crate::run::EXIT_LAB_ERROR,
        report: json!({
            "command": "scenario",
            "scenario": name,
            "kernel": {"spec": job.kernel_spec, "release": job.kernel_release},
            "engine": engine,
            "verdict": "error",
            "error": f.message,
            "console_tail": f.console_tail,
        }),
    }
}

/// The batch job: every item in order, machines shared where topologies
/// allow. The report has one entry per item (`runs`, each a scenario
/// report with its `exit_code`).
pub fn run_batch(
    job: &Job,
    items: &[BatchItem],
    sink: Arc<dyn EventSink>,
    t0: Instant,
    engine: &str,
) -> Result<Outcome, RunFailure> {
    let mut pool = Pool::new(job, sink.clone(), t0, engine);
    let mut runs = Vec::new();
    let mut worst = crate::run::EXIT_OK;
    for (i, item) in items.iter().enumerate() {
        let started = Instant::now();
        let mut o = if crate::run::CANCEL.load(std::sync::atomic::Ordering::SeqCst) {
            error_outcome(
                job,
                engine,
                &item.origin,
                RunFailure {
                    message: "interrupted".into(),
                    console_tail: vec![],
                },
            )
        } else {
            match Scenario::parse(&item.toml, &item.origin) {
                Err(e) => error_outcome(
                    job,
                    engine,
                    &item.origin,
                    RunFailure {
                        message: e.to_string(),
                        console_tail: vec![],
                    },
                ),
                Ok(scn) => {
                    emit_step(
                        &*sink,
                        t0,
                        &format!("batch {}/{}: {}", i + 1, items.len(), scn.name),
                        "starting".into(),
                    );
                    pool.run(&scn)
                }
            }
        };
        o.report["exit_code"] = json!(o.exit_code);
        o.report["ms"] = json!(started.elapsed().as_millis() as u64);
        emit_step(
            &*sink,
            t0,
            &format!("batch {}/{}: {}", i + 1, items.len(), item.origin),
            format!(
                "{} (exit {})",
                o.report["verdict"].as_str().unwrap_or("?"),
                o.exit_code
            ),
        );
        worst = worst.max(o.exit_code);
        runs.push(o.report);
    }
    pool.drop_machine();
    Ok(Outcome {
        exit_code: worst,
        report: json!({
            "command": "batch",
            "kernel": {"spec": job.kernel_spec, "release": job.kernel_release},
            "engine": engine,
            "verdict": if worst == 0 { "pass" } else if worst == 1 { "fail" } else { "error" },
            "runs": runs,
            "vms_booted": pool.vms,
            "reset_ms": pool.reset_ms,
            "machines_replaced": pool.replaced,
            "wall_ms": t0.elapsed().as_millis() as u64,
        }),
    })
}

/// The campaign job: cases drawn around the base scenario, run on one
/// machine (a fresh one only when the engine lost it), the first violation
/// shrunk, and the minimal case run once more to confirm it. The report
/// carries the regression's text (`found.regression_toml`) for the caller
/// to write.
pub fn run_campaign_job(
    job: &Job,
    toml: &str,
    origin: &str,
    cfg: &crate::job::CampaignJob,
    sink: Arc<dyn EventSink>,
    t0: Instant,
    engine: &str,
) -> Result<Outcome, RunFailure> {
    use crate::campaign::{
        CampaignBase, CampaignConfig, CaseFailure, Schedule, case_failure, regression_text,
        run_campaign, strategy,
    };
    let bad = |message: String| RunFailure {
        message,
        console_tail: vec![],
    };
    let scn = Scenario::parse(toml, origin).map_err(|e| bad(e.to_string()))?;
    let base = CampaignBase::new(&scn).map_err(|e| bad(e.to_string()))?;
    let ccfg = CampaignConfig {
        cases: cfg.cases.max(1),
        seed: cfg.seed,
        max_ops: cfg.max_ops.max(1),
        max_shrink_iters: cfg.shrink_iters,
        ..CampaignConfig::default()
    };
    let strat = strategy::campaign_schedule(&base, &ccfg);
    let mut pool = Pool::new(job, sink.clone(), t0, engine);
    let mut log: Vec<Value> = Vec::new();
    let mut n = 0u32;
    let case_name = |n: u32| format!("campaign-{}-seed{}-case{n}", base.scenario.name, cfg.seed);
    let mut totals: BTreeMap<String, u64> = BTreeMap::new();
    let run_one = |pool: &mut Pool,
                   s: &Schedule,
                   name: String,
                   log: &mut Vec<Value>,
                   totals: &mut BTreeMap<String, u64>|
     -> Option<CaseFailure> {
        let case = s.to_scenario(&base, &name, "campaign case");
        let started = Instant::now();
        let o = pool.run(&case);
        let f = case_failure(&o.report);
        // Faults injected during the case: the NICs' and wires' counters
        // after it minus before it (they count on over a machine's life).
        let after = crate::campaign::injected_fault_counts(&o.report["nics"]);
        let before = crate::campaign::injected_fault_counts(&o.report["vm"]["nics_before"]);
        let mut injected = BTreeMap::new();
        for (k, v) in after {
            let d = v.saturating_sub(before.get(&k).copied().unwrap_or(0));
            *totals.entry(k.clone()).or_insert(0) += d;
            injected.insert(k, d);
        }
        log.push(json!({
            "case": name,
            "ops": s.ops.iter().map(|o| o.describe()).collect::<Vec<_>>(),
            "verdict": o.report["verdict"],
            "violated": f.as_ref().map(|f| f.invariant.clone()),
            "detail": f.as_ref().map(|f| f.detail.clone()),
            "payload": o.report["payload"],
            "faults_injected": injected,
            "nic_faults_at_start": o.report["vm"]["nics_before"]["nic_faults_in_force"],
            "nic_faults_at_end": o.report["nics"]["nic_faults_in_force"],
            "ms": started.elapsed().as_millis() as u64,
        }));
        f
    };
    let out = run_campaign(
        &ccfg,
        &strat,
        |s: &Schedule| -> Result<(), CaseFailure> {
            if crate::run::CANCEL.load(std::sync::atomic::Ordering::SeqCst) {
                return Ok(());
            }
            let name = case_name(n);
            n += 1;
            emit_step(
                &*sink,
                t0,
                &format!("campaign: {name}"),
                s.ops
                    .iter()
                    .map(|o| o.describe())
                    .collect::<Vec<_>>()
                    .join("; "),
            );
            match run_one(&mut pool, s, name, &mut log, &mut totals) {
                Some(f) => Err(f),
                None => Ok(()),
            }
        },
        |p| {
            let total = ccfg.cases.max(1);
            let done = p.cases_run.min(total);
            let width = 20usize;
            let filled = (done as usize * width) / total as usize;
            sink.emit(Event::Progress {
                what: "campaign".into(),
                detail: format!(
                    "[{}{}] {} case(s) run{}, {} violation(s){}",
                    "#".repeat(filled),
                    ".".repeat(width - filled),
                    p.cases_run,
                    if p.shrinking {
                        String::new()
                    } else {
                        format!(" of {total}")
                    },
                    p.violations,
                    if p.shrinking { ", shrinking" } else { "" }
                ),
            })
        },
    );
    let interrupted = crate::run::CANCEL.load(std::sync::atomic::Ordering::SeqCst);
    let mut report = json!({
        "command": "campaign",
        "base": base.scenario.name,
        "kernel": {"spec": job.kernel_spec, "release": job.kernel_release},
        "engine": engine,
        "seed": cfg.seed,
        "cases_wanted": ccfg.cases,
        "cases_run": out.cases_run,
        "violations": out.violations,
    });
    let mut code = crate::run::EXIT_OK;
    if let Some(found) = &out.found {
        // Once more, to be sure the minimal case fails on its own.
        let again = run_one(
            &mut pool,
            &found.minimal,
            format!("{}-confirm", cfg.regression_name),
            &mut log,
            &mut totals,
        );
        let confirmed = again
            .as_ref()
            .is_some_and(|f| f.invariant == found.failure.invariant);
        let text = regression_text(
            &cfg.regression_name,
            &base,
            found,
            cfg.seed,
            &job.kernel_spec,
        )
        .map_err(bad)?;
        report["found"] = json!({
            "invariant": found.failure.invariant,
            "detail": found.failure.detail,
            "original_ops": found.original.ops.iter().map(|o| o.describe()).collect::<Vec<_>>(),
            "minimal_ops": found.minimal.ops.iter().map(|o| o.describe()).collect::<Vec<_>>(),
            "confirmed": confirmed,
            "confirm_run": again.map(|f| json!({"invariant": f.invariant, "detail": f.detail})),
            "regression_name": cfg.regression_name,
            "regression_toml": text,
        });
        code = crate::run::EXIT_FINDING;
    }
    pool.drop_machine();
    if let Some(why) = &out.aborted {
        report["aborted"] = json!(why);
        code = code.max(crate::run::EXIT_LAB_ERROR);
    }
    if interrupted {
        report["error"] = json!("interrupted");
        code = crate::run::EXIT_LAB_ERROR;
    }
    let errors = log
        .iter()
        .filter(|c| c["verdict"] == json!("error"))
        .count();
    report["verdict"] = json!(match code {
        0 => "pass",
        1 => "fail",
        _ => "error",
    });
    report["lab_errors"] = json!(errors);
    report["faults_injected"] = json!(totals);
    report["bytes"] = campaign_bytes(&log);
    report["cases"] = json!(log);
    report["vms_booted"] = json!(pool.vms);
    report["reset_ms"] = json!(pool.reset_ms);
    report["machines_replaced"] = json!(pool.replaced);
    report["wall_ms"] = json!(t0.elapsed().as_millis() as u64);
    Ok(Outcome {
        exit_code: code,
        report,
    })
}

/// Payload bytes over the cases: sent and verified (each case's payload
/// summary), and the cases whose payload did not arrive intact (the
/// verifier's `payload-intact`: bytes lost without an error to the sender,
/// or corrupted).
fn campaign_bytes(log: &[Value]) -> Value {
    let sum = |k: &str| -> u64 { log.iter().filter_map(|c| c["payload"][k].as_u64()).sum() };
    let broken: Vec<&Value> = log
        .iter()
        .filter(|c| c["violated"] == json!(crate::verify::PAYLOAD_INTACT))
        .map(|c| &c["case"])
        .collect();
    json!({
        "sent": sum("sent_bytes"),
        "verified": sum("verified_bytes"),
        "cases_lost_or_corrupted": broken,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dma_delta_subtracts_counters_and_keeps_new_faults() {
        let before = json!({
            "by_device": {"0000:00:04.0": {"reads": 10, "writes": 4, "bytes": 100, "faults": 1}},
            "iommu_faults": [{"iova": 1}],
            "fault_events_sent": 1, "audit_next_seq": 50,
        });
        let now = json!({
            "by_device": {
                "0000:00:04.0": {"reads": 15, "writes": 4, "bytes": 180, "faults": 2},
                "0000:00:05.0": {"reads": 3, "writes": 0, "bytes": 9, "faults": 0},
            },
            "iommu_faults": [{"iova": 1}, {"iova": 2}],
            "fault_events_sent": 2, "audit_next_seq": 90,
        });
        let d = dma_delta(&before, &now);
        assert_eq!(d["by_device"]["0000:00:04.0"]["reads"], 5);
        assert_eq!(d["by_device"]["0000:00:04.0"]["writes"], 0);
        assert_eq!(d["by_device"]["0000:00:04.0"]["bytes"], 80);
        assert_eq!(d["by_device"]["0000:00:05.0"]["reads"], 3);
        assert_eq!(d["iommu_faults"], json!([{"iova": 2}]));
        assert_eq!(d["fault_events_sent"], 1);
        assert_eq!(d["audit_next_seq"], 90);
    }
}
