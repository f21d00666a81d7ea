//! The step runner: executes a scenario's steps in the guest through a
//! [`GuestExec`] (the agent, or a fake in tests), checks each outcome
//! against the kernel's expectation and decides the verdict.
//!
//! Background work (the TCP sink) needs no agent support: `tcp-sink
//! --detach` returns only once its socket listens, then finishes in the
//! background and writes its result file atomically; the runner starts the
//! source right after and collects that file.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use netmem_agent::protocol::RunOutput;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::events::{Event, EventSink};
use crate::guest_tools::{SinkReport, SourceReport};
use crate::scenario::{ExpectedVerdict, LinkState, Scenario, Step, StepExpect, StepKind};

/// Runs programs in the guest. `Err` means the lab could not run it (agent
/// channel down, spawn failure): the verdict becomes `error`.
pub trait GuestExec {
    fn run(&mut self, argv: &[String], timeout: Duration) -> Result<RunOutput, String>;
}

impl<R: std::io::Read + Send + 'static, W: std::io::Write> GuestExec
    for netmem_agent::client::AgentClient<R, W>
{
    fn run(&mut self, argv: &[String], timeout: Duration) -> Result<RunOutput, String> {
        let spec = netmem_agent::client::RunSpec {
            argv: argv.to_vec(),
            timeout: Some(timeout),
            ..Default::default()
        };
        self.run_with(spec).map_err(|e| e.to_string())
    }
}

/// What a `wire` step asks of the lab's side of a wire.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WireAction {
    /// Take the link up (`Some(true)`) or down.
    pub link_up: Option<bool>,
    /// Replace the wire's faults from now on.
    pub faults: Option<sim_nic::WireFaults>,
}

/// The lab's side of the machine that host-side steps (`wire`) act on:
/// the topology of a running machine, or a fake in tests.
pub trait HostControl {
    /// Apply `action` to the wire with logical NIC `nic` at one end;
    /// returns what the step reports (link state, wire counters).
    fn wire(&mut self, nic: &str, action: &WireAction) -> Result<Value, String>;

    /// Replace the test faults of logical NIC `nic` by `faults` from now
    /// on (empty: clear them); returns what the step reports (the faults
    /// in force, the NIC's counters).
    fn nic_faults(&mut self, nic: &str, faults: &[sim_nic::NicFault]) -> Result<Value, String> {
        let _ = (nic, faults);
        Err("this runner has no access to the machine's NICs".into())
    }
}

/// No host side: `wire` steps are a lab error.
pub struct NoHost;
impl HostControl for NoHost {
    fn wire(&mut self, _nic: &str, _action: &WireAction) -> Result<Value, String> {
        Err("this runner has no access to the machine's wires".into())
    }
}

/// The verdict of a run (ARCHITECTURE.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    /// Every step as expected; the kernel was expected to pass.
    Pass,
    /// An outcome differs from the expectation (a finding).
    Fail,
    /// Every step as expected; the kernel was expected to fail this way.
    ExpectedFail,
    /// The lab could not run the scenario.
    Error,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Pass => "pass",
            Verdict::Fail => "fail",
            Verdict::ExpectedFail => "expected-fail",
            Verdict::Error => "error",
        }
    }
    /// 0 as expected, 1 a finding, 2 the lab could not run.
    pub fn exit_code(self) -> i32 {
        match self {
            Verdict::Pass | Verdict::ExpectedFail => crate::run::EXIT_OK,
            Verdict::Fail => crate::run::EXIT_FINDING,
            Verdict::Error => crate::run::EXIT_LAB_ERROR,
        }
    }
}

/// The outcome of one step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepResult {
    pub name: String,
    pub kind: String,
    /// The step itself succeeded (exit status, replies, verified bytes).
    pub ok: bool,
    pub detail: String,
    /// errno the step reported (tools print `"errno"` in their JSON).
    pub errno: Option<i32>,
    /// The kernel's extack message, if the step reported one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extack: Option<String>,
    pub duration_ms: u64,
    /// Whatever the step measured (tool JSON, ping counts, …).
    pub data: Value,
    /// Matched the kernel's expectation (false for skipped steps).
    pub as_expected: bool,
    /// Not run: an earlier step went wrong.
    #[serde(default)]
    pub skipped: bool,
}

/// A NIC as the guest sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NicBinding {
    pub bdf: String,
    pub ifname: String,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Payload {
    pub sent_bytes: u64,
    pub verified_bytes: u64,
}

/// Everything the runner found out.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScenarioOutcome {
    pub scenario: String,
    pub kernel_id: String,
    pub verdict: Verdict,
    pub steps: Vec<StepResult>,
    /// Logical NIC name → its PCI address and netdev name.
    pub nics: BTreeMap<String, NicBinding>,
    /// Outcomes that differ from the expectation, one line each.
    pub mismatches: Vec<String>,
    /// Why the lab could not run the scenario (verdict `error`).
    pub error: Option<String>,
    pub payload: Payload,
    pub duration_ms: u64,
}

/// Knobs of the runner.
#[derive(Debug, Clone)]
pub struct RunnerConfig {
    /// The `netmem-lab` binary in the guest (the agent itself).
    pub tool: String,
    /// Guest directory for result files.
    pub scratch: String,
    /// How long NICs may take to show up as netdevs (driver probe).
    pub nic_wait: Duration,
    /// How long `netns-setup` waits for carrier and usable IPv6 addresses.
    pub link_wait_s: u64,
    /// Poll interval while waiting for netdevs and result files.
    pub poll: Duration,
}

impl Default for RunnerConfig {
    fn default() -> Self {
        RunnerConfig {
            tool: images::initramfs::AGENT_GUEST_PATH.into(),
            scratch: "/tmp".into(),
            nic_wait: Duration::from_secs(20),
            link_wait_s: 10,
            poll: Duration::from_millis(20),
        }
    }
}

/// Runs `scn` for kernel `kernel_id`. `nic_map` maps the topology's logical
/// NIC names to PCI addresses (`nic0` → `0000:00:04.0`).
pub fn run_scenario_steps(
    scn: &Scenario,
    kernel_id: &str,
    nic_map: &BTreeMap<String, String>,
    exec: &mut impl GuestExec,
    sink: &dyn EventSink,
) -> ScenarioOutcome {
    run_scenario_steps_with(
        &RunnerConfig::default(),
        scn,
        kernel_id,
        nic_map,
        exec,
        sink,
        &mut NoObserver,
    )
}

/// Told when each step starts and ends (the DMA verifier marks the audit
/// trail with step boundaries and takes the facts the step's tools printed).
pub trait StepObserver {
    fn step_started(&mut self, _name: &str) {}
    fn step_ended(&mut self, _name: &str, _result: &StepResult) {}
}

/// An observer that does nothing.
pub struct NoObserver;
impl StepObserver for NoObserver {}

struct Ctx<'a, E: GuestExec> {
    cfg: &'a RunnerConfig,
    exec: &'a mut E,
    host: &'a mut dyn HostControl,
    nics: BTreeMap<String, NicBinding>,
}

/// A lab failure inside a step (the guest could not be driven).
struct LabError(String);

pub fn run_scenario_steps_with(
    cfg: &RunnerConfig,
    scn: &Scenario,
    kernel_id: &str,
    nic_map: &BTreeMap<String, String>,
    exec: &mut impl GuestExec,
    sink: &dyn EventSink,
    observer: &mut dyn StepObserver,
) -> ScenarioOutcome {
    run_scenario_steps_host(
        cfg,
        scn,
        kernel_id,
        nic_map,
        exec,
        &mut NoHost,
        sink,
        observer,
    )
}

/// [`run_scenario_steps_with`] with the lab's side of the machine, for
/// host-side steps (`wire`).
#[allow(clippy::too_many_arguments)]
pub fn run_scenario_steps_host(
    cfg: &RunnerConfig,
    scn: &Scenario,
    kernel_id: &str,
    nic_map: &BTreeMap<String, String>,
    exec: &mut impl GuestExec,
    host: &mut dyn HostControl,
    sink: &dyn EventSink,
    observer: &mut dyn StepObserver,
) -> ScenarioOutcome {
    let t0 = Instant::now();
    let mut out = ScenarioOutcome {
        scenario: scn.name.clone(),
        kernel_id: kernel_id.into(),
        verdict: Verdict::Error,
        steps: Vec::new(),
        nics: BTreeMap::new(),
        mismatches: Vec::new(),
        error: None,
        payload: Payload::default(),
        duration_ms: 0,
    };
    let emit = |name: String, detail: String| {
        sink.emit(Event::Step {
            name,
            elapsed_ms: t0.elapsed().as_millis() as u64,
            detail,
        })
    };
    let finish = |mut out: ScenarioOutcome, err: Option<String>| {
        if let Some(e) = err {
            out.error = Some(e);
            out.verdict = Verdict::Error;
        }
        out.duration_ms = t0.elapsed().as_millis() as u64;
        out
    };
    if !scn.applies_to(kernel_id) {
        return finish(
            out,
            Some(format!(
                "scenario {} does not apply to kernel {kernel_id:?} (it names {:?})",
                scn.name, scn.kernels
            )),
        );
    }
    let mut ctx = Ctx {
        cfg,
        exec,
        host,
        nics: BTreeMap::new(),
    };
    match resolve_nics(&mut ctx, scn, nic_map) {
        Ok(n) => {
            emit(
                "NICs found".into(),
                n.iter()
                    .map(|(k, v)| format!("{k}={} ({})", v.ifname, v.bdf))
                    .collect::<Vec<_>>()
                    .join(", "),
            );
            ctx.nics = n;
            out.nics = ctx.nics.clone();
        }
        Err(LabError(e)) => return finish(out, Some(e)),
    }
    let expect = scn.expectation(kernel_id);
    let mut stop: Option<String> = None;
    for (i, step) in scn.steps.iter().enumerate() {
        if let Some(why) = &stop {
            out.steps.push(StepResult {
                name: step.name.clone(),
                kind: step.kind.name().into(),
                ok: false,
                detail: format!("skipped: {why}"),
                errno: None,
                extack: None,
                duration_ms: 0,
                data: Value::Null,
                as_expected: false,
                skipped: true,
            });
            continue;
        }
        let st = Instant::now();
        observer.step_started(&step.name);
        let r = run_step(&mut ctx, i, step);
        let mut r = match r {
            Ok(r) => r,
            Err(LabError(e)) => {
                emit(format!("step {}", step.name), format!("LAB ERROR: {e}"));
                let r = StepResult {
                    name: step.name.clone(),
                    kind: step.kind.name().into(),
                    ok: false,
                    detail: e.clone(),
                    errno: None,
                    extack: None,
                    duration_ms: st.elapsed().as_millis() as u64,
                    data: Value::Null,
                    as_expected: false,
                    skipped: false,
                };
                observer.step_ended(&step.name, &r);
                out.steps.push(r);
                let e = format!("step {:?}: {e}", step.name);
                stop = Some("the lab failed".into());
                out.error = Some(e);
                continue;
            }
        };
        r.duration_ms = st.elapsed().as_millis() as u64;
        let se = expect.steps.get(&step.name).cloned().unwrap_or_default();
        let checked = if expect.any_outcome.contains(&step.name) {
            Ok(())
        } else {
            check(&se, &r)
        };
        match checked {
            Ok(()) => r.as_expected = true,
            Err(m) => {
                out.mismatches.push(format!("{}: {m}", step.name));
                stop = Some(format!("step {:?} not as expected", step.name));
            }
        }
        observer.step_ended(&step.name, &r);
        if let Some(p) = r.data.get("payload") {
            out.payload.sent_bytes += p["sent_bytes"].as_u64().unwrap_or(0);
            out.payload.verified_bytes += p["verified_bytes"].as_u64().unwrap_or(0);
        }
        emit(
            format!("step {}", step.name),
            format!(
                "{}{} ({} ms){}",
                if r.ok { "ok" } else { "FAILED" },
                if r.as_expected {
                    ""
                } else {
                    " — NOT AS EXPECTED"
                },
                r.duration_ms,
                if r.detail.is_empty() {
                    String::new()
                } else {
                    format!(": {}", r.detail)
                }
            ),
        );
        out.steps.push(r);
    }
    if out.error.is_some() {
        let e = out.error.take();
        return finish(out, e);
    }
    out.verdict = if !out.mismatches.is_empty() {
        Verdict::Fail
    } else {
        match expect.verdict {
            ExpectedVerdict::Pass => Verdict::Pass,
            ExpectedVerdict::ExpectedFail => Verdict::ExpectedFail,
        }
    };
    finish(out, None)
}

/// Compares a step's outcome with its expectation.
pub fn check(se: &StepExpect, r: &StepResult) -> Result<(), String> {
    if r.ok != se.ok {
        return Err(if se.ok {
            format!("expected success, got failure: {}", r.detail)
        } else {
            "expected a failure, but it succeeded".to_string()
        });
    }
    if let Some(e) = &se.errno {
        let want = e.value();
        if r.errno != want {
            return Err(format!(
                "expected errno {e:?} ({want:?}), got {:?}: {}",
                r.errno, r.detail
            ));
        }
    }
    if let Some(x) = &se.extack {
        let hay = r.extack.as_deref().unwrap_or(&r.detail);
        if !hay.contains(x.as_str()) {
            return Err(format!("expected extack containing {x:?}, got {hay:?}"));
        }
    }
    Ok(())
}

fn resolve_nics<E: GuestExec>(
    ctx: &mut Ctx<'_, E>,
    scn: &Scenario,
    nic_map: &BTreeMap<String, String>,
) -> Result<BTreeMap<String, NicBinding>, LabError> {
    let mut want = BTreeMap::new();
    for n in scn.nic_names() {
        let bdf = nic_map.get(&n).ok_or_else(|| {
            LabError(format!(
                "the machine has no PCI address for {n} (it has {:?})",
                nic_map.keys().collect::<Vec<_>>()
            ))
        })?;
        if !bdf
            .chars()
            .all(|c| c.is_ascii_hexdigit() || c == ':' || c == '.')
        {
            return Err(LabError(format!("bad PCI address {bdf:?} for {n}")));
        }
        want.insert(n, bdf.clone());
    }
    if want.is_empty() {
        return Ok(BTreeMap::new());
    }
    let script = format!(
        "for d in {}; do for n in /sys/bus/pci/devices/$d/net/* /sys/bus/pci/devices/$d/virtio*/net/*; do [ -e \"$n\" ] && echo \"$d ${{n##*/}}\"; done; done; true",
        want.values().cloned().collect::<Vec<_>>().join(" ")
    );
    let argv = sh(&script);
    let deadline = Instant::now() + ctx.cfg.nic_wait;
    loop {
        let o = ctx
            .exec
            .run(&argv, Duration::from_secs(10))
            .map_err(|e| LabError(format!("listing netdevs: {e}")))?;
        let found: BTreeMap<&str, &str> =
            o.stdout.lines().filter_map(|l| l.split_once(' ')).collect();
        if want.values().all(|b| found.contains_key(b.as_str())) {
            return Ok(want
                .iter()
                .map(|(n, b)| {
                    (
                        n.clone(),
                        NicBinding {
                            bdf: b.clone(),
                            ifname: found[b.as_str()].to_string(),
                        },
                    )
                })
                .collect());
        }
        if Instant::now() >= deadline {
            let missing: Vec<String> = want
                .iter()
                .filter(|(_, b)| !found.contains_key(b.as_str()))
                .map(|(n, b)| format!("{n} ({b})"))
                .collect();
            return Err(LabError(format!(
                "no netdev for {} after {} s (is gve bound? see the console)",
                missing.join(", "),
                ctx.cfg.nic_wait.as_secs()
            )));
        }
        std::thread::sleep(ctx.cfg.poll.max(Duration::from_millis(50)));
    }
}

fn sh(script: &str) -> Vec<String> {
    vec!["/bin/sh".into(), "-c".into(), script.into()]
}

/// Replaces `{nicN}` with the NIC's netdev name.
fn expand(s: &str, nics: &BTreeMap<String, NicBinding>) -> String {
    let mut s = s.to_string();
    for (n, b) in nics {
        s = s.replace(&format!("{{{n}}}"), &b.ifname);
    }
    s
}

/// `argv` run inside `netns` (through the tool's `netns-exec`).
fn in_netns(tool: &str, netns: &Option<String>, argv: Vec<String>) -> Vec<String> {
    match netns {
        None => argv,
        Some(ns) => {
            let mut v = vec![tool.to_string(), "netns-exec".into(), ns.clone()];
            v.extend(argv);
            v
        }
    }
}

/// The last line of `stdout` that is a JSON object (the tools' result line).
pub fn tool_json(stdout: &str) -> Option<Value> {
    stdout
        .lines()
        .rev()
        .filter(|l| l.trim_start().starts_with('{'))
        .find_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v.is_object())
}

fn clip(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

fn last_line(s: &str) -> &str {
    s.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("")
}

fn base_result(step: &Step) -> StepResult {
    StepResult {
        name: step.name.clone(),
        kind: step.kind.name().into(),
        ok: false,
        detail: String::new(),
        errno: None,
        extack: None,
        duration_ms: 0,
        data: Value::Null,
        as_expected: false,
        skipped: false,
    }
}

fn exit_desc(o: &RunOutput) -> String {
    if o.timed_out {
        format!("timed out after {} ms", o.duration_ms)
    } else if let Some(c) = o.exit_code {
        format!("exit {c}")
    } else if let Some(s) = o.signal {
        format!("killed by signal {s}")
    } else {
        "no exit status".into()
    }
}

fn run_step<E: GuestExec>(
    ctx: &mut Ctx<'_, E>,
    index: usize,
    step: &Step,
) -> Result<StepResult, LabError> {
    let timeout = Duration::from_secs(step.timeout_s.unwrap_or(step.kind.default_timeout_s()));
    let tool = ctx.cfg.tool.clone();
    let mut r = base_result(step);
    match &step.kind {
        StepKind::Sh {
            script,
            argv,
            netns,
            expect_exit,
        } => {
            let cmd = match (script, argv) {
                (Some(s), _) => sh(&expand(s, &ctx.nics)),
                (None, Some(a)) => a.iter().map(|x| expand(x, &ctx.nics)).collect(),
                (None, None) => return Err(LabError("sh step without script or argv".into())),
            };
            let o = ctx
                .exec
                .run(&in_netns(&tool, netns, cmd), timeout)
                .map_err(LabError)?;
            r.ok = !o.timed_out && o.exit_code == Some(*expect_exit);
            let j = tool_json(&o.stdout);
            if let Some(j) = &j {
                r.errno = j.get("errno").and_then(Value::as_i64).map(|e| e as i32);
                r.extack = j.get("extack").and_then(Value::as_str).map(String::from);
            }
            r.detail = if r.ok {
                clip(last_line(&o.stdout), 200)
            } else {
                let why = last_line(&o.stderr);
                let why = if why.is_empty() {
                    last_line(&o.stdout)
                } else {
                    why
                };
                format!(
                    "{} (expected exit {expect_exit}): {}",
                    exit_desc(&o),
                    clip(why, 300)
                )
            };
            r.data = json!({
                "exit_code": o.exit_code,
                "signal": o.signal,
                "timed_out": o.timed_out,
                "stdout": clip(&o.stdout, 4096),
                "stderr": clip(&o.stderr, 4096),
                "result": j,
            });
        }
        StepKind::NetnsSetup {
            nic,
            netns,
            addrs,
            nodad,
            up,
        } => {
            let b = ctx
                .nics
                .get(nic)
                .ok_or_else(|| LabError(format!("NIC {nic} was not resolved")))?;
            let mut argv = vec![
                tool.clone(),
                "netns-setup".into(),
                "--dev".into(),
                b.ifname.clone(),
            ];
            if let Some(ns) = netns {
                argv.extend(["--netns".into(), ns.clone()]);
            }
            for a in addrs {
                argv.extend(["--addr".into(), a.clone()]);
            }
            if *nodad {
                argv.push("--nodad".into());
            }
            if *up {
                argv.extend([
                    "--up".into(),
                    "--wait-s".into(),
                    ctx.cfg.link_wait_s.to_string(),
                ]);
            }
            let o = ctx.exec.run(&argv, timeout).map_err(LabError)?;
            let j = tool_json(&o.stdout);
            r.ok = o.success();
            r.detail = match (&j, r.ok) {
                (Some(j), true) => {
                    format!(
                        "{} ({}) in {}: {}",
                        b.ifname,
                        nic,
                        netns.as_deref().unwrap_or("the initial netns"),
                        addrs.join(", ")
                    ) + &j
                        .get("wait_ms")
                        .and_then(Value::as_u64)
                        .map(|w| format!("; carrier after {w} ms"))
                        .unwrap_or_default()
                }
                (Some(j), false) => j
                    .get("error")
                    .and_then(Value::as_str)
                    .map(String::from)
                    .unwrap_or_else(|| exit_desc(&o)),
                (None, _) => format!("{}: {}", exit_desc(&o), clip(last_line(&o.stderr), 300)),
            };
            r.data = j.unwrap_or(Value::Null);
        }
        StepKind::Ping { netns, to, count } => {
            let to = expand(to, &ctx.nics);
            let fam = if to.contains(':') { "-6" } else { "-4" };
            let deadline = (*count as u64 + 5).min(timeout.as_secs().max(1));
            let argv = in_netns(
                &tool,
                netns,
                vec![
                    "ping".into(),
                    fam.into(),
                    "-c".into(),
                    count.to_string(),
                    "-w".into(),
                    deadline.to_string(),
                    to.clone(),
                ],
            );
            let o = ctx.exec.run(&argv, timeout).map_err(LabError)?;
            let (tx, rx) = ping_counts(&o.stdout);
            r.ok = o.success() && rx.unwrap_or(0) >= u64::from(*count);
            r.detail = match (tx, rx) {
                (Some(t), Some(x)) => format!("{to}: {x}/{t} replies"),
                _ => format!(
                    "{to}: {} {}",
                    exit_desc(&o),
                    clip(last_line(&o.stderr), 200)
                ),
            };
            r.data = json!({
                "to": to,
                "transmitted": tx,
                "received": rx,
                "rtt": o.stdout.lines().find(|l| l.contains("min/avg/max")).map(str::trim),
                "exit_code": o.exit_code,
            });
        }
        StepKind::TcpTransfer {
            from_netns,
            to_netns,
            to,
            port,
            bytes,
            seed,
            close_after,
            devmem_tx,
            devmem_rx,
        } => {
            let t = Transfer {
                from_netns,
                to_netns,
                to,
                port: *port,
                bytes: *bytes,
                seed: *seed,
                close_after: *close_after,
                devmem_tx: devmem_tx.as_ref(),
                devmem_rx: devmem_rx.as_ref(),
            };
            tcp_transfer(ctx, index, &mut r, timeout, &t)?;
        }
        StepKind::Wire { nic, link, faults } => {
            let action = WireAction {
                link_up: link.map(|l| l == LinkState::Up),
                faults: faults.clone(),
            };
            // A wire the lab cannot reach or faults it refuses are the
            // scenario's mistake or the lab's, not the guest's.
            let v = ctx.host.wire(nic, &action).map_err(LabError)?;
            r.ok = true;
            r.detail = format!(
                "wire of {nic}:{}{}",
                match link {
                    Some(LinkState::Up) => " link up",
                    Some(LinkState::Down) => " link down",
                    None => "",
                },
                match faults {
                    Some(f) if f.is_none() => " faults cleared".to_string(),
                    Some(f) => format!(" faults {}", fault_summary(f)),
                    None => String::new(),
                }
            );
            r.data = v;
        }
        StepKind::NicFault { nic, faults } => {
            // Like `wire`: a NIC the lab cannot reach is the lab's error.
            let v = ctx.host.nic_faults(nic, faults).map_err(LabError)?;
            r.ok = true;
            r.detail = if faults.is_empty() {
                format!("{nic}: NIC faults cleared")
            } else {
                let list: Vec<String> = faults.iter().map(|f| f.to_string()).collect();
                format!("{nic}: NIC faults {}", list.join(", "))
            };
            r.data = v;
        }
        StepKind::Pause { ms } => {
            std::thread::sleep(Duration::from_millis(*ms));
            r.ok = true;
            r.detail = format!("{ms} ms");
        }
    }
    Ok(r)
}

/// The non-zero settings of wire faults, for step details.
pub fn fault_summary(f: &sim_nic::WireFaults) -> String {
    let mut v = Vec::new();
    for (n, p) in [
        ("drop", f.drop),
        ("corrupt", f.corrupt),
        ("duplicate", f.duplicate),
        ("reorder", f.reorder),
    ] {
        if p > 0.0 {
            v.push(format!("{n}={p}"));
        }
    }
    if f.delay_us > 0 {
        v.push(format!("delay={}us", f.delay_us));
    }
    if f.jitter_us > 0 {
        v.push(format!("jitter={}us", f.jitter_us));
    }
    for w in &f.link_down {
        v.push(format!("link-down@{}ms+{}ms", w.at_ms, w.duration_ms));
    }
    if f.direction != sim_nic::FaultDirection::Both {
        v.push(format!("{:?}", f.direction));
    }
    v.join(" ")
}

/// `N packets transmitted, M packets received` (busybox and iputils).
pub fn ping_counts(out: &str) -> (Option<u64>, Option<u64>) {
    for l in out.lines() {
        if l.contains("transmitted") {
            let nums: Vec<u64> = l.split([',', ' ']).filter_map(|w| w.parse().ok()).collect();
            if nums.len() >= 2 {
                return (Some(nums[0]), Some(nums[1]));
            }
        }
    }
    (None, None)
}

/// A transfer step's parameters.
struct Transfer<'a> {
    from_netns: &'a Option<String>,
    to_netns: &'a Option<String>,
    to: &'a str,
    port: u16,
    bytes: u64,
    seed: u64,
    close_after: Option<u64>,
    devmem_tx: Option<&'a crate::scenario::DevmemTx>,
    devmem_rx: Option<&'a crate::scenario::DevmemRx>,
}

/// What the sending side reported, whichever tool it was.
struct Sent {
    /// Bytes the kernel accepted.
    sent: u64,
    elapsed_ms: u64,
    error: Option<String>,
    errno: Option<i32>,
    extack: Option<String>,
    /// The stage of a failed sender (`"closed"`: it closed on purpose).
    stage: Option<String>,
    /// devmem-tx with `unbind_after`: the first failure after the unbind.
    after_unbind: Option<Value>,
    json: Value,
}

/// What the receiving side reported.
struct Received {
    ok: bool,
    received: u64,
    verified: u64,
    first_mismatch: Option<u64>,
    error: Option<String>,
    /// It read up to the sender's end of stream (a short stream included),
    /// rather than failing on the connection or timing out.
    eof: bool,
    json: Value,
}

/// `stage: ENAME (errno N): extack` of a failed devmem tool line.
fn tool_failure(j: &Value) -> String {
    let mut s = j
        .get("stage")
        .and_then(Value::as_str)
        .unwrap_or("failed")
        .to_string();
    if let Some(n) = j.get("errno_name").and_then(Value::as_str) {
        s.push_str(&format!(": {n}"));
    } else if let Some(e) = j.get("errno").and_then(Value::as_i64) {
        s.push_str(&format!(": errno {e}"));
    }
    for k in ["extack", "error"] {
        if let Some(e) = j.get(k).and_then(Value::as_str) {
            s.push_str(&format!(": {e}"));
        }
    }
    s
}

/// A devmem-rx result line as a [`Received`].
fn devmem_received(j: Value) -> Received {
    let p = &j["payload"];
    let verified = p["verified_bytes"].as_u64().unwrap_or(0);
    let received = j["received_bytes"].as_u64().unwrap_or_else(|| {
        j["devmem_bytes"].as_u64().unwrap_or(0) + j["linear_bytes"].as_u64().unwrap_or(0)
    });
    let ok = j["ok"].as_bool().unwrap_or(false);
    Received {
        ok,
        received,
        verified,
        first_mismatch: p["first_bad_offset"].as_u64(),
        error: (!ok).then(|| tool_failure(&j)),
        // devmem-rx fails at stage "verify" only after the end of stream
        // (a short or corrupted stream).
        eof: ok || j["stage"] == "verify",
        json: j,
    }
}

/// Whether `port` has a TCP listener in `netns` (from /proc/net/tcp{,6} as
/// that netns sees them: local port in hex, state 0A = LISTEN).
fn listening<E: GuestExec>(
    ctx: &mut Ctx<'_, E>,
    netns: &Option<String>,
    port: u16,
) -> Result<bool, LabError> {
    let tool = ctx.cfg.tool.clone();
    let cat = in_netns(
        &tool,
        netns,
        vec![
            "cat".into(),
            "/proc/net/tcp".into(),
            "/proc/net/tcp6".into(),
        ],
    );
    let o = ctx
        .exec
        .run(&cat, Duration::from_secs(10))
        .map_err(LabError)?;
    let want = format!(":{port:04X}");
    Ok(o.stdout.lines().any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        f.len() > 3 && f[1].ends_with(&want) && f[3] == "0A"
    }))
}

/// Reads a detached receiver's result file until it holds a JSON line.
fn poll_result<E: GuestExec>(
    ctx: &mut Ctx<'_, E>,
    out: &str,
    wait: Duration,
) -> Result<Option<Value>, LabError> {
    let deadline = Instant::now() + wait;
    let cat = vec!["cat".to_string(), out.to_string()];
    loop {
        let c = ctx
            .exec
            .run(&cat, Duration::from_secs(10))
            .map_err(LabError)?;
        if c.success()
            && let Some(j) = tool_json(&c.stdout)
        {
            return Ok(Some(j));
        }
        if Instant::now() >= deadline {
            return Ok(None);
        }
        std::thread::sleep(ctx.cfg.poll);
    }
}

fn tcp_transfer<E: GuestExec>(
    ctx: &mut Ctx<'_, E>,
    index: usize,
    r: &mut StepResult,
    timeout: Duration,
    t: &Transfer<'_>,
) -> Result<(), LabError> {
    let tool = ctx.cfg.tool.clone();
    let bytes = t.bytes;
    let ip: std::net::IpAddr =
        t.to.parse()
            .map_err(|e| LabError(format!("address {:?}: {e}", t.to)))?;
    let addr = std::net::SocketAddr::new(ip, t.port).to_string();
    let out = format!("{}/netmem-tcp-sink-{index}.json", ctx.cfg.scratch);
    let tsecs = timeout.as_secs().max(1).to_string();
    let netns_args = |ns: &Option<String>| -> Vec<String> {
        ns.iter()
            .flat_map(|n| ["--netns".to_string(), n.clone()])
            .collect()
    };

    // 1. The receiver, detached, its result going to `out`.
    let pid: Option<i64>;
    if let Some(rx) = t.devmem_rx {
        let mut cmd = vec![
            tool.clone(),
            "devmem-rx".into(),
            "--dev".into(),
            expand(&rx.dev, &ctx.nics),
            "--listen".into(),
            addr.clone(),
            "--bytes".into(),
            bytes.to_string(),
            "--seed".into(),
            t.seed.to_string(),
            "--queue".into(),
            rx.queue.to_string(),
            "--timeout-s".into(),
            tsecs.clone(),
        ];
        if let Some(d) = rx.dmabuf_size {
            cmd.extend(["--dmabuf-size".into(), d.to_string()]);
        }
        cmd.extend(netns_args(t.to_netns));
        let quoted: Vec<String> = cmd.iter().map(|a| shell_quote(a)).collect();
        let script = format!(
            "{} >{out} 2>{out}.err </dev/null & echo $!",
            quoted.join(" ")
        );
        let o = ctx
            .exec
            .run(&sh(&script), Duration::from_secs(30))
            .map_err(LabError)?;
        pid = o.stdout.trim().parse().ok();
        if pid.is_none() {
            r.ok = false;
            r.detail = format!("devmem-rx did not start: {}", exit_desc(&o));
            return Ok(());
        }
        // Ready once it listens; a tool that failed first (bind-rx refused)
        // has written its result instead.
        let ready_by = Instant::now() + Duration::from_secs(60);
        loop {
            if listening(ctx, t.to_netns, t.port)? {
                break;
            }
            if let Some(j) = poll_result(ctx, &out, Duration::ZERO)? {
                let rcv = devmem_received(j);
                r.ok = false;
                r.errno = rcv.json["errno"].as_i64().map(|e| e as i32);
                r.extack = rcv.json["extack"].as_str().map(String::from);
                r.detail = format!(
                    "receiver: {}",
                    rcv.error.clone().unwrap_or_else(|| "ended early".into())
                );
                r.data = json!({"addr": addr, "bytes": bytes, "rx": rcv.json,
                                "payload": {"sent_bytes": 0, "verified_bytes": 0}});
                return Ok(());
            }
            if Instant::now() >= ready_by {
                r.ok = false;
                r.detail = "devmem-rx did not listen within 60 s".into();
                let _ = ctx.exec.run(
                    &[
                        "kill".to_string(),
                        "-9".into(),
                        pid.unwrap_or(0).to_string(),
                    ],
                    Duration::from_secs(5),
                );
                return Ok(());
            }
            std::thread::sleep(ctx.cfg.poll);
        }
    } else {
        let mut sink = vec![
            tool.clone(),
            "tcp-sink".into(),
            "--listen".into(),
            addr.clone(),
            "--bytes".into(),
            bytes.to_string(),
            "--seed".into(),
            t.seed.to_string(),
            "--detach".into(),
            "--out".into(),
            out.clone(),
            "--timeout-s".into(),
            tsecs.clone(),
        ];
        sink.extend(netns_args(t.to_netns));
        let o = ctx
            .exec
            .run(&sink, Duration::from_secs(30))
            .map_err(LabError)?;
        let started = tool_json(&o.stdout);
        pid = started
            .as_ref()
            .and_then(|j| j.get("pid"))
            .and_then(Value::as_i64);
        if !o.success() || pid.is_none() {
            r.ok = false;
            r.detail = format!(
                "sink did not start: {}",
                started
                    .as_ref()
                    .and_then(|j| j.get("error"))
                    .and_then(Value::as_str)
                    .map(String::from)
                    .unwrap_or_else(|| format!("{} {}", exit_desc(&o), last_line(&o.stderr)))
            );
            r.data = json!({ "sink_start": started });
            return Ok(());
        }
    }

    // 2. The sender.
    let sent: Option<Sent> = if let Some(tx) = t.devmem_tx {
        let mut cmd = vec![
            tool.clone(),
            "devmem-tx".into(),
            "--dev".into(),
            expand(&tx.dev, &ctx.nics),
            "--connect".into(),
            addr.clone(),
            "--bytes".into(),
            bytes.to_string(),
            "--seed".into(),
            t.seed.to_string(),
            "--timeout-s".into(),
            tsecs.clone(),
        ];
        if tx.spare_binding {
            cmd.push("--spare-binding".into());
        }
        if tx.bind_dev {
            cmd.push("--bind-dev".into());
        }
        if let Some(u) = tx.unbind_after {
            cmd.extend(["--unbind-after".into(), u.to_string()]);
        }
        if tx.rebind {
            cmd.push("--rebind".into());
        }
        if let Some(c) = t.close_after {
            cmd.extend(["--close-after".into(), c.to_string()]);
        }
        if let Some(d) = tx.dmabuf_size {
            cmd.extend(["--dmabuf-size".into(), d.to_string()]);
        }
        cmd.extend(netns_args(t.from_netns));
        let st = Instant::now();
        let so = ctx
            .exec
            .run(&cmd, timeout + Duration::from_secs(10))
            .map_err(LabError)?;
        let elapsed_ms = st.elapsed().as_millis() as u64;
        tool_json(&so.stdout).map(|j| {
            let ok = j["ok"].as_bool().unwrap_or(false);
            Sent {
                sent: j["payload"]["sent_bytes"].as_u64().unwrap_or(0),
                elapsed_ms,
                error: (!ok).then(|| tool_failure(&j)),
                errno: j["errno"].as_i64().map(|e| e as i32),
                extack: j["extack"].as_str().map(String::from),
                stage: (!ok)
                    .then(|| j["stage"].as_str().map(String::from))
                    .flatten(),
                after_unbind: j
                    .get("after_unbind")
                    .or_else(|| j["payload"].get("after_unbind"))
                    .filter(|v| v.is_object())
                    .cloned(),
                json: j,
            }
        })
    } else {
        let mut src = vec![
            tool.clone(),
            "tcp-source".into(),
            "--connect".into(),
            addr.clone(),
            "--bytes".into(),
            bytes.to_string(),
            "--seed".into(),
            t.seed.to_string(),
            "--timeout-s".into(),
            tsecs,
        ];
        if let Some(c) = t.close_after {
            src.extend(["--close-after".into(), c.to_string()]);
        }
        src.extend(netns_args(t.from_netns));
        let so = ctx
            .exec
            .run(&src, timeout + Duration::from_secs(10))
            .map_err(LabError)?;
        let source: Option<SourceReport> =
            tool_json(&so.stdout).and_then(|j| serde_json::from_value(j).ok());
        match source {
            Some(s) => Some(Sent {
                sent: s.sent,
                elapsed_ms: s.elapsed_ms,
                error: s.error.clone(),
                errno: None,
                extack: None,
                stage: s.stage.clone(),
                after_unbind: None,
                json: serde_json::to_value(&s).unwrap_or(Value::Null),
            }),
            None => {
                r.ok = false;
                r.detail = format!(
                    "source: {} {}",
                    exit_desc(&so),
                    clip(last_line(&so.stderr), 200)
                );
                None
            }
        }
    };
    let sender_ok = sent.as_ref().is_some_and(|s| s.error.is_none());
    // An unbind without a rebind: the sender must fail after it.
    let unbinding = t
        .devmem_tx
        .is_some_and(|d| d.unbind_after.is_some() && !d.rebind);
    // `close_after`: the sender closed its socket on purpose.
    let closed = t.close_after.is_some()
        && sent
            .as_ref()
            .is_some_and(|s| s.stage.as_deref() == Some("closed"));

    // 3. The receiver's result: it finishes once it read the sender's EOF.
    let wait = if sender_ok || closed || (unbinding && sent.is_some()) {
        Duration::from_secs(30)
    } else {
        Duration::from_secs(2)
    };
    let rcv: Option<Received> = poll_result(ctx, &out, wait)?.map(|j| {
        if t.devmem_rx.is_some() {
            devmem_received(j)
        } else {
            match serde_json::from_value::<SinkReport>(j.clone()) {
                Ok(k) => Received {
                    ok: k.ok,
                    received: k.received,
                    verified: k.verified,
                    first_mismatch: k.first_mismatch,
                    error: k.error.clone(),
                    // The sink reads to EOF; an error is a transport one.
                    eof: k.error.is_none(),
                    json: j,
                },
                Err(e) => Received {
                    ok: false,
                    received: 0,
                    verified: 0,
                    first_mismatch: None,
                    error: Some(format!("unreadable sink result: {e}")),
                    eof: false,
                    json: j,
                },
            }
        }
    });
    if rcv.is_none()
        && let Some(p) = pid
    {
        // Don't leave a listener behind for the next steps.
        let _ = ctx.exec.run(
            &["kill".to_string(), "-9".into(), p.to_string()],
            Duration::from_secs(5),
        );
    }
    let _ = ctx.exec.run(
        &[
            "rm".to_string(),
            "-f".into(),
            out.clone(),
            format!("{out}.err"),
        ],
        Duration::from_secs(5),
    );

    // 4. The verdict of the step.
    let sent_bytes = sent.as_ref().map(|s| s.sent).unwrap_or(0);
    let verified = rcv.as_ref().map(|k| k.verified).unwrap_or(0);
    let intact = rcv
        .as_ref()
        .is_some_and(|k| k.first_mismatch.is_none() && k.verified == sent_bytes);
    if let Some(s) = &sent {
        r.errno = s.errno;
        r.extack = s.extack.clone();
    }
    if closed {
        // A deliberate close before `bytes`: the step fails (the stream
        // ended early); what the kernel had accepted must reach the
        // receiver intact before its end of stream (payload-intact, with
        // `sender_ok` below).
        r.ok = false;
        r.detail = format!(
            "the sender closed the socket after {sent_bytes} of {bytes} bytes (close_after {}); {}",
            t.close_after.unwrap_or(0),
            match &rcv {
                Some(k) if k.eof => format!(
                    "the receiver saw the end of stream after {} bytes, {} verified{}",
                    k.received,
                    k.verified,
                    if intact { "" } else { " (NOT all intact)" }
                ),
                Some(k) => format!(
                    "receiver: {} ({} verified)",
                    k.error.as_deref().unwrap_or("failed"),
                    k.verified
                ),
                None => "the receiver wrote no result".into(),
            }
        );
    } else if unbinding {
        // The kernel must make the sender fail after the unbind; what it
        // had accepted must still arrive intact (payload-intact checks it).
        let au = sent.as_ref().and_then(|s| s.after_unbind.clone());
        r.ok = au.is_none();
        if let Some(a) = &au {
            r.errno = a["errno"].as_i64().map(|e| e as i32);
        }
        r.detail = match (&au, &rcv) {
            (Some(a), Some(k)) => format!(
                "after the unbind: {}; {sent_bytes} bytes sent before it, {} verified{}",
                tool_failure(a),
                k.verified,
                if intact { "" } else { " (NOT all intact)" }
            ),
            (Some(a), None) => format!(
                "after the unbind: {}; {sent_bytes} bytes sent, the receiver wrote no result",
                tool_failure(a)
            ),
            (None, _) => format!(
                "the sender saw no error after the unbind ({sent_bytes} bytes sent{})",
                sent.as_ref()
                    .and_then(|s| s.error.as_ref())
                    .map(|e| format!("; {e}"))
                    .unwrap_or_default()
            ),
        };
    } else if let Some(s) = &sent {
        r.ok =
            sender_ok && rcv.as_ref().is_some_and(|k| k.ok) && s.sent == bytes && verified == bytes;
        let ms = s.elapsed_ms.max(1);
        r.detail = match &rcv {
            Some(_) if r.ok => format!(
                "{} to {addr}{}, verified, {} ms ({:.0} Mbit/s)",
                human_bytes(bytes),
                match (t.devmem_tx, t.devmem_rx) {
                    (Some(_), Some(_)) => " (devmem TX and RX)",
                    (Some(_), None) => " (devmem TX)",
                    (None, Some(_)) => " (devmem RX)",
                    (None, None) => "",
                },
                s.elapsed_ms,
                bytes as f64 * 8.0 / 1e3 / ms as f64
            ),
            Some(k) => {
                let mut why = Vec::new();
                if let Some(e) = &s.error {
                    why.push(format!("sender: {e}"));
                }
                if let Some(e) = &k.error {
                    why.push(format!("receiver: {e}"));
                }
                if let Some(m) = k.first_mismatch {
                    why.push(format!("first corrupted byte at offset {m}"));
                }
                format!(
                    "sent {} of {bytes}, received {}, verified {}{}{}",
                    s.sent,
                    k.received,
                    k.verified,
                    if why.is_empty() { "" } else { ": " },
                    why.join("; ")
                )
            }
            None => format!(
                "sent {} of {bytes}{}; the receiver wrote no result",
                s.sent,
                s.error
                    .as_ref()
                    .map(|e| format!(" (sender: {e})"))
                    .unwrap_or_default()
            ),
        };
    } else if r.detail.is_empty() {
        r.ok = false;
        r.detail = "the sender printed no result".into();
    }
    let tx_json = sent.as_ref().map(|s| s.json.clone());
    let rx_json = rcv.as_ref().map(|k| k.json.clone());
    // `sender_ok`: every byte the sender handed the kernel must have
    // arrived (the verifier counts missing bytes even when the step's
    // failure was allowed): the sender reported success, or it closed on
    // purpose and the receiver read up to its end of stream (a receiver
    // that timed out or lost the connection reported the loss itself).
    let must_arrive = sender_ok || (closed && rcv.as_ref().is_some_and(|k| k.eof));
    r.data = json!({
        "addr": addr,
        "bytes": bytes,
        "seed": t.seed,
        "payload": {"sent_bytes": sent_bytes, "verified_bytes": verified,
                    "first_bad_offset": rcv.as_ref().and_then(|k| k.first_mismatch),
                    "sender_ok": must_arrive},
    });
    if closed {
        r.data["payload"]["closed_at"] = json!(sent_bytes);
    }
    // Plain tools keep their historical keys; devmem tools' lines go under
    // tx/rx, where the verifier looks for their facts.
    let (tx_key, rx_key) = (
        if t.devmem_tx.is_some() {
            "tx"
        } else {
            "source"
        },
        if t.devmem_rx.is_some() { "rx" } else { "sink" },
    );
    r.data[tx_key] = json!(tx_json);
    r.data[rx_key] = json!(rx_json);
    Ok(())
}

/// `a` quoted for `sh -c` (single quotes; a `'` becomes `'\''`).
fn shell_quote(a: &str) -> String {
    if !a.is_empty()
        && a.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:=@%+,[]".contains(c))
    {
        a.to_string()
    } else {
        format!("'{}'", a.replace('\'', r"'\''"))
    }
}

fn human_bytes(n: u64) -> String {
    if n >= 1 << 20 && n.is_multiple_of(1 << 20) {
        format!("{} MiB", n >> 20)
    } else if n >= 1 << 10 && n.is_multiple_of(1 << 10) {
        format!("{} KiB", n >> 10)
    } else {
        format!("{n} bytes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::CollectSink;
    use crate::guest_tools;
    use std::collections::HashMap;
    use std::net::TcpListener;
    use std::sync::{Arc, Mutex};

    /// A guest made of canned answers plus real in-process TCP tools.
    struct FakeGuest {
        calls: Vec<Vec<String>>,
        netdevs: String,
        /// argv[1] (or argv[0]) → exit code and stdout.
        canned: HashMap<String, (i32, String)>,
        sinks: Arc<Mutex<HashMap<String, SinkReport>>>,
        corrupt_at: Option<u64>,
        /// Don't list netdevs until this many calls happened.
        netdev_delay: usize,
        fail_transport_on: Option<String>,
        /// Where the last fake sink listens.
        port: Option<u16>,
        /// The fake source claims this many more bytes accepted than it
        /// sent (bytes "lost" between the kernel and the receiver).
        sent_extra: u64,
    }

    impl FakeGuest {
        fn new() -> Self {
            FakeGuest {
                calls: vec![],
                netdevs: "0000:00:04.0 eth0\n0000:00:05.0 eth1\n".into(),
                canned: HashMap::new(),
                sinks: Arc::default(),
                corrupt_at: None,
                netdev_delay: 0,
                fail_transport_on: None,
                port: None,
                sent_extra: 0,
            }
        }
    }

    fn ok_out(code: i32, stdout: &str) -> RunOutput {
        RunOutput {
            exit_code: Some(code),
            stdout: stdout.into(),
            ..Default::default()
        }
    }

    fn flag<'a>(argv: &'a [String], f: &str) -> &'a str {
        let i = argv.iter().position(|a| a == f).unwrap();
        &argv[i + 1]
    }

    impl GuestExec for FakeGuest {
        fn run(&mut self, argv: &[String], _t: Duration) -> Result<RunOutput, String> {
            self.calls.push(argv.to_vec());
            // Strip a netns-exec wrapper.
            let a: Vec<String> = if argv.get(1).map(String::as_str) == Some("netns-exec") {
                argv[3..].to_vec()
            } else {
                argv.to_vec()
            };
            let key = if a[0].ends_with("netmem-lab") {
                a[1].clone()
            } else {
                a[0].clone()
            };
            if self.fail_transport_on.as_deref() == Some(key.as_str()) {
                return Err("agent channel closed".into());
            }
            if let Some((c, s)) = self.canned.get(&key) {
                return Ok(ok_out(*c, s));
            }
            Ok(match key.as_str() {
                "/bin/sh" if a[2].contains("/sys/bus/pci/devices") => {
                    if self.calls.len() <= self.netdev_delay {
                        ok_out(0, "")
                    } else {
                        ok_out(0, &self.netdevs)
                    }
                }
                "/bin/sh" => ok_out(0, "fine\n"),
                "netns-setup" => ok_out(
                    0,
                    &json!({"dev": flag(&a, "--dev"), "wait_ms": 3}).to_string(),
                ),
                "ping" => ok_out(
                    0,
                    "3 packets transmitted, 3 packets received, 0% packet loss\nround-trip min/avg/max = 0.1/0.2/0.3 ms\n",
                ),
                "tcp-sink" => {
                    let l = TcpListener::bind("127.0.0.1:0").unwrap();
                    let port = l.local_addr().unwrap().port();
                    // The step's port is whatever the scenario says; the fake
                    // source connects to this one instead.
                    self.port = Some(port);
                    let bytes: u64 = flag(&a, "--bytes").parse().unwrap();
                    let seed: u64 = flag(&a, "--seed").parse().unwrap();
                    let out = flag(&a, "--out").to_string();
                    let sinks = self.sinks.clone();
                    std::thread::spawn(move || {
                        let r =
                            guest_tools::run_sink(&l, bytes, seed, Some(Duration::from_secs(20)));
                        sinks.lock().unwrap().insert(out, r);
                    });
                    ok_out(0, &json!({"listening": "x", "pid": 4242}).to_string())
                }
                "tcp-source" => {
                    let port = self.port.unwrap();
                    let bytes: u64 = flag(&a, "--bytes").parse().unwrap();
                    let seed: u64 = flag(&a, "--seed").parse().unwrap();
                    let close_after = a
                        .iter()
                        .any(|x| x == "--close-after")
                        .then(|| flag(&a, "--close-after").parse().unwrap());
                    let mut r = guest_tools::run_source_closing(
                        format!("127.0.0.1:{port}").parse().unwrap(),
                        bytes,
                        seed,
                        Some(Duration::from_secs(20)),
                        self.corrupt_at,
                        close_after,
                    );
                    r.sent += self.sent_extra;
                    ok_out(
                        if r.error.is_none() { 0 } else { 1 },
                        &serde_json::to_string(&r).unwrap(),
                    )
                }
                "cat" => match self.sinks.lock().unwrap().get(&a[1]) {
                    Some(r) => ok_out(0, &serde_json::to_string(r).unwrap()),
                    None => ok_out(1, ""),
                },
                "rm" | "kill" => ok_out(0, ""),
                other => panic!("unexpected command {other}: {argv:?}"),
            })
        }
    }

    fn nic_map() -> BTreeMap<String, String> {
        [("nic0", "0000:00:04.0"), ("nic1", "0000:00:05.0")]
            .into_iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    fn cfg() -> RunnerConfig {
        RunnerConfig {
            nic_wait: Duration::from_secs(2),
            poll: Duration::from_millis(1),
            ..Default::default()
        }
    }

    fn small_smoke() -> Scenario {
        let mut s = Scenario::builtin("nic-smoke").unwrap();
        for st in &mut s.steps {
            if let StepKind::TcpTransfer { bytes, .. } = &mut st.kind {
                *bytes = 3 << 20;
            }
        }
        s
    }

    #[test]
    fn nic_smoke_passes_on_a_good_guest() {
        let mut g = FakeGuest::new();
        g.netdev_delay = 2;
        let sink = CollectSink::default();
        let o = run_scenario_steps_with(
            &cfg(),
            &small_smoke(),
            "patched",
            &nic_map(),
            &mut g,
            &sink,
            &mut NoObserver,
        );
        assert_eq!(o.verdict, Verdict::Pass, "{o:#?}");
        assert_eq!(o.error, None);
        assert_eq!(o.nics["nic1"].ifname, "eth1");
        assert!(o.steps.iter().all(|s| s.ok && s.as_expected));
        assert_eq!(o.payload.sent_bytes, 3 << 20);
        assert_eq!(o.payload.verified_bytes, 3 << 20);
        // One event per step plus the NIC resolution.
        let evs = sink.0.lock().unwrap();
        assert_eq!(evs.len(), o.steps.len() + 1);
        // The NIC names were substituted and the netns wrapper used.
        let first = g.calls.iter().find(|c| c[2].contains("gve")).unwrap();
        assert!(first[2].contains("/sys/class/net/eth0") && first[2].contains("eth1"));
        assert!(
            g.calls
                .iter()
                .any(|c| c[1] == "netns-exec" && c[2] == "remote" && c[3] == "ping")
        );
        let setup = g
            .calls
            .iter()
            .find(|c| c.get(1).map(String::as_str) == Some("netns-setup"))
            .unwrap();
        assert_eq!(flag(setup, "--dev"), "eth1");
        assert_eq!(flag(setup, "--netns"), "remote");
        assert!(setup.contains(&"--nodad".to_string()));
        let sink_call = g
            .calls
            .iter()
            .find(|c| c.get(1).map(String::as_str) == Some("tcp-sink"))
            .unwrap();
        assert_eq!(flag(sink_call, "--listen"), "10.0.0.2:5201");
        assert_eq!(flag(sink_call, "--netns"), "remote");
        // The sink starts before the source.
        let pos = |k: &str| {
            g.calls
                .iter()
                .position(|c| c.get(1).map(String::as_str) == Some(k))
                .unwrap()
        };
        assert!(pos("tcp-sink") < pos("tcp-source"));
    }

    #[test]
    fn corrupted_payload_is_a_finding() {
        let mut g = FakeGuest::new();
        g.corrupt_at = Some(100_000);
        let o = run_scenario_steps_with(
            &cfg(),
            &small_smoke(),
            "baseline",
            &nic_map(),
            &mut g,
            &CollectSink::default(),
            &mut NoObserver,
        );
        assert_eq!(o.verdict, Verdict::Fail);
        assert_eq!(o.verdict.exit_code(), 1);
        let t = o.steps.iter().find(|s| s.kind == "tcp-transfer").unwrap();
        assert!(!t.ok && !t.as_expected);
        assert!(t.detail.contains("offset 100000"), "{}", t.detail);
        assert_eq!(o.payload.verified_bytes, 100_000);
        assert_eq!(o.mismatches.len(), 1);
    }

    #[test]
    fn failing_ping_skips_the_rest() {
        let mut g = FakeGuest::new();
        g.canned.insert(
            "ping".into(),
            (
                1,
                "3 packets transmitted, 0 packets received, 100% packet loss\n".into(),
            ),
        );
        let o = run_scenario_steps_with(
            &cfg(),
            &small_smoke(),
            "patched",
            &nic_map(),
            &mut g,
            &CollectSink::default(),
            &mut NoObserver,
        );
        assert_eq!(o.verdict, Verdict::Fail);
        let first_ping = o.steps.iter().position(|s| s.kind == "ping").unwrap();
        assert!(o.steps[first_ping].detail.contains("0/3"));
        assert!(o.steps[first_ping + 1..].iter().all(|s| s.skipped));
        assert!(
            !g.calls
                .iter()
                .any(|c| c.get(1).map(String::as_str) == Some("tcp-sink"))
        );
    }

    /// Records what `wire` steps asked for.
    #[derive(Default)]
    struct FakeHost {
        calls: Vec<(String, WireAction)>,
    }

    impl HostControl for FakeHost {
        fn wire(&mut self, nic: &str, action: &WireAction) -> Result<Value, String> {
            if nic == "nic9" {
                return Err("no wire with nic9 at one end".into());
            }
            self.calls.push((nic.to_string(), action.clone()));
            Ok(json!({"link_up": action.link_up.unwrap_or(true)}))
        }
    }

    /// nic-smoke with wire steps and a pause before its transfer.
    fn smoke_with_wire_steps() -> Scenario {
        let mut s = small_smoke();
        let at = s
            .steps
            .iter()
            .position(|st| st.kind.name() == "tcp-transfer")
            .unwrap();
        let extra: Scenario = toml::from_str(
            r#"
name = "x"
[[step]]
name = "cut"
kind = "wire"
nic = "nic1"
link = "down"
[[step]]
name = "wait"
kind = "pause"
ms = 5
[[step]]
name = "lossy, up again"
kind = "wire"
nic = "nic0"
link = "up"
faults = { drop = 0.25, seed = 3, direction = "b-to-a" }
"#,
        )
        .unwrap();
        for (i, st) in extra.steps.into_iter().enumerate() {
            s.steps.insert(at + i, st);
        }
        s
    }

    #[test]
    fn wire_steps_reach_the_host_side_in_order() {
        let mut g = FakeGuest::new();
        let mut h = FakeHost::default();
        let o = run_scenario_steps_host(
            &cfg(),
            &smoke_with_wire_steps(),
            "patched",
            &nic_map(),
            &mut g,
            &mut h,
            &CollectSink::default(),
            &mut NoObserver,
        );
        assert_eq!(o.verdict, Verdict::Pass, "{o:#?}");
        assert_eq!(h.calls.len(), 2);
        assert_eq!(
            h.calls[0],
            (
                "nic1".to_string(),
                WireAction {
                    link_up: Some(false),
                    faults: None
                }
            )
        );
        assert_eq!(h.calls[1].0, "nic0");
        assert_eq!(h.calls[1].1.link_up, Some(true));
        let f = h.calls[1].1.faults.as_ref().unwrap();
        assert_eq!((f.drop, f.seed), (0.25, 3));
        let step = |n: &str| o.steps.iter().find(|s| s.name == n).unwrap();
        assert_eq!(step("cut").detail, "wire of nic1: link down");
        assert_eq!(step("cut").data["link_up"], json!(false));
        assert!(
            step("lossy, up again")
                .detail
                .contains("link up faults drop=0.25 BToA"),
            "{}",
            step("lossy, up again").detail
        );
        assert_eq!(step("wait").kind, "pause");
        assert!(step("wait").duration_ms >= 5);
        // The transfer ran after them.
        let pos = |k: &str| o.steps.iter().position(|s| s.kind == k).unwrap();
        assert!(pos("wire") < pos("tcp-transfer") && o.steps[pos("tcp-transfer")].ok);
    }

    #[test]
    fn wire_steps_without_host_access_are_a_lab_error() {
        let mut g = FakeGuest::new();
        let o = run_scenario_steps_with(
            &cfg(),
            &smoke_with_wire_steps(),
            "patched",
            &nic_map(),
            &mut g,
            &CollectSink::default(),
            &mut NoObserver,
        );
        assert_eq!(o.verdict, Verdict::Error);
        assert!(
            o.error
                .as_deref()
                .unwrap()
                .contains("no access to the machine's wires"),
            "{:?}",
            o.error
        );
        let cut = o.steps.iter().position(|s| s.name == "cut").unwrap();
        assert!(o.steps[cut + 1..].iter().all(|s| s.skipped));
        let mut s = smoke_with_wire_steps();
        if let StepKind::Wire { nic, .. } =
            &mut s.steps.iter_mut().find(|s| s.name == "cut").unwrap().kind
        {
            *nic = "nic9".into();
        }
        let o = run_scenario_steps_host(
            &cfg(),
            &s,
            "patched",
            &nic_map(),
            &mut FakeGuest::new(),
            &mut FakeHost::default(),
            &CollectSink::default(),
            &mut NoObserver,
        );
        assert_eq!(o.verdict, Verdict::Error);
        assert!(o.error.as_deref().unwrap().contains("nic9"));
    }

    #[test]
    fn any_outcome_steps_may_fail_and_the_run_goes_on() {
        let mut g = FakeGuest::new();
        g.canned.insert(
            "ping".into(),
            (
                1,
                "3 packets transmitted, 0 packets received, 100% packet loss\n".into(),
            ),
        );
        let mut s = small_smoke();
        let pings: Vec<String> = s
            .steps
            .iter()
            .filter(|st| st.kind.name() == "ping")
            .map(|st| st.name.clone())
            .collect();
        assert!(!pings.is_empty());
        s.expect.entry("patched".into()).or_default().any_outcome = pings.iter().cloned().collect();
        let o = run_scenario_steps_with(
            &cfg(),
            &s,
            "patched",
            &nic_map(),
            &mut g,
            &CollectSink::default(),
            &mut NoObserver,
        );
        assert_eq!(o.verdict, Verdict::Pass, "{:?}", o.mismatches);
        for p in &pings {
            let r = o.steps.iter().find(|st| &st.name == p).unwrap();
            assert!(!r.ok && r.as_expected && !r.skipped);
        }
        assert!(o.steps.iter().all(|st| !st.skipped));
        assert_eq!(o.payload.verified_bytes, 3 << 20);
        // Without the list, the same guest fails the run.
        let o = run_scenario_steps_with(
            &cfg(),
            &small_smoke(),
            "patched",
            &nic_map(),
            &mut g,
            &CollectSink::default(),
            &mut NoObserver,
        );
        assert_eq!(o.verdict, Verdict::Fail);
    }

    /// nic-smoke with its transfer closing after `close`, allowed to fail.
    fn closing_smoke(close: u64) -> (Scenario, String) {
        let mut s = small_smoke();
        let mut name = String::new();
        for st in &mut s.steps {
            if let StepKind::TcpTransfer { close_after, .. } = &mut st.kind {
                *close_after = Some(close);
                name = st.name.clone();
            }
        }
        for k in ["patched", "baseline"] {
            s.expect
                .entry(k.into())
                .or_default()
                .any_outcome
                .insert(name.clone());
        }
        let s = Scenario::parse(&toml::to_string(&s).unwrap(), "closing.toml").unwrap();
        (s, name)
    }

    fn run_fed(g: &mut FakeGuest, s: &Scenario) -> (ScenarioOutcome, crate::verify::VerifyReport) {
        let audit = std::sync::Arc::new(vmm::iommu::Audit::new(Default::default()));
        let mut feed =
            crate::feed::VerifierFeed::start(audit, crate::verify::Verifier::new(BTreeMap::new()));
        let o = run_scenario_steps_with(
            &cfg(),
            s,
            "patched",
            &nic_map(),
            g,
            &CollectSink::default(),
            &mut feed,
        );
        (o, feed.finish().0)
    }

    #[test]
    fn a_deliberate_close_fails_the_step_and_every_accepted_byte_must_arrive() {
        let close = (1 << 20) + 4321;
        let (s, name) = closing_smoke(close);
        let mut g = FakeGuest::new();
        let (o, rep) = run_fed(&mut g, &s);
        let src = g
            .calls
            .iter()
            .find(|c| c.get(1).map(String::as_str) == Some("tcp-source"))
            .unwrap();
        assert_eq!(flag(src, "--close-after"), close.to_string());
        let t = o.steps.iter().find(|st| st.name == name).unwrap();
        assert!(!t.ok && t.as_expected, "{t:?}");
        assert!(
            t.detail
                .contains(&format!("closed the socket after {close} of"))
                && t.detail.contains("end of stream")
                && !t.detail.contains("NOT"),
            "{}",
            t.detail
        );
        let p = &t.data["payload"];
        assert_eq!(p["sent_bytes"], close);
        assert_eq!(p["verified_bytes"], close);
        assert_eq!(p["closed_at"], close);
        assert_eq!(p["sender_ok"], true);
        assert_eq!(t.data["source"]["stage"], "closed");
        assert!(rep.ok(), "{:?}", rep.failed());
        assert_eq!(o.verdict, Verdict::Pass, "{:?}", o.mismatches);

        // Accepted bytes that never reached the receiver before its end of
        // stream: payload-intact breaks although the step may fail.
        let mut g = FakeGuest::new();
        g.sent_extra = 4096;
        let (o, rep) = run_fed(&mut g, &s);
        let t = o.steps.iter().find(|st| st.name == name).unwrap();
        assert!(!t.ok && t.as_expected);
        assert!(t.detail.contains("NOT all intact"), "{}", t.detail);
        assert_eq!(t.data["payload"]["sent_bytes"], close + 4096);
        assert_eq!(t.data["payload"]["sender_ok"], true);
        assert_eq!(rep.failed(), [crate::verify::PAYLOAD_INTACT]);

        // Corruption before the close is a finding too.
        let mut g = FakeGuest::new();
        g.corrupt_at = Some(1000);
        let (_, rep) = run_fed(&mut g, &s);
        assert_eq!(rep.failed(), [crate::verify::PAYLOAD_INTACT]);
    }

    #[test]
    fn a_closed_transfer_whose_receiver_failed_counts_only_corruption() {
        let (s, name) = closing_smoke(1 << 20);
        let mut g = FakeGuest::new();
        // The sink reports a transport error (its connection was reset):
        // the loss was reported, not silent.
        g.canned.insert(
            "cat".into(),
            (
                0,
                json!({"received": 4096, "verified": 4096, "first_mismatch": null,
                       "elapsed_ms": 1, "expected": 3 << 20, "ok": false,
                       "error": "Connection reset by peer (os error 104)"})
                .to_string(),
            ),
        );
        let (o, rep) = run_fed(&mut g, &s);
        let t = o.steps.iter().find(|st| st.name == name).unwrap();
        assert!(!t.ok && t.as_expected);
        assert!(t.detail.contains("Connection reset"), "{}", t.detail);
        assert_eq!(t.data["payload"]["sender_ok"], false);
        assert!(rep.ok(), "{:?}", rep.failed());
    }

    #[test]
    fn devmem_close_and_rebind_reach_the_sender_and_its_result() {
        let mut s = small_smoke();
        let name = s
            .steps
            .iter()
            .find(|st| st.kind.name() == "tcp-transfer")
            .unwrap()
            .name
            .clone();
        let bytes = 3u64 << 20;
        let sink_line = |n: u64| {
            json!({"received": n, "verified": n, "first_mismatch": null, "elapsed_ms": 1,
                   "expected": bytes, "ok": n == bytes})
            .to_string()
        };
        let set = |s: &mut Scenario, close: Option<u64>, rebind: bool| {
            for st in &mut s.steps {
                if let StepKind::TcpTransfer {
                    close_after,
                    devmem_tx,
                    ..
                } = &mut st.kind
                {
                    *close_after = close;
                    *devmem_tx = Some(crate::scenario::DevmemTx {
                        dev: "{nic0}".into(),
                        unbind_after: rebind.then_some(1 << 20),
                        rebind,
                        ..Default::default()
                    });
                }
            }
        };
        // Rebind: the sender completes; the step passes like a full one.
        set(&mut s, None, true);
        let mut g = FakeGuest::new();
        g.canned.insert(
            "devmem-tx".into(),
            (
                0,
                json!({"ok": true, "payload": {"sent_bytes": bytes, "rebound_at_bytes": 1 << 20}})
                    .to_string(),
            ),
        );
        g.canned.insert("cat".into(), (0, sink_line(bytes)));
        let (o, rep) = run_fed(&mut g, &s);
        let tx = g
            .calls
            .iter()
            .find(|c| c.get(1).map(String::as_str) == Some("devmem-tx"))
            .unwrap();
        assert!(tx.contains(&"--rebind".to_string()));
        assert_eq!(flag(tx, "--unbind-after"), (1u64 << 20).to_string());
        assert!(!tx.contains(&"--close-after".to_string()));
        let t = o.steps.iter().find(|st| st.name == name).unwrap();
        assert!(t.ok, "{}", t.detail);
        assert!(rep.ok(), "{:?}", rep.failed());

        // A devmem close: stage "closed", the accepted bytes must arrive.
        set(&mut s, Some(2 << 20), false);
        for k in ["patched", "baseline"] {
            s.expect
                .entry(k.into())
                .or_default()
                .any_outcome
                .insert(name.clone());
        }
        for (verified, intact) in [(2u64 << 20, true), ((2 << 20) - 1, false)] {
            let mut g = FakeGuest::new();
            g.canned.insert(
                "devmem-tx".into(),
                (
                    1,
                    json!({"ok": false, "stage": "closed", "error": "closed the socket",
                           "payload": {"sent_bytes": 2 << 20}})
                    .to_string(),
                ),
            );
            g.canned.insert("cat".into(), (0, sink_line(verified)));
            let (o, rep) = run_fed(&mut g, &s);
            let tx = g
                .calls
                .iter()
                .find(|c| c.get(1).map(String::as_str) == Some("devmem-tx"))
                .unwrap();
            assert_eq!(flag(tx, "--close-after"), (2u64 << 20).to_string());
            let t = o.steps.iter().find(|st| st.name == name).unwrap();
            assert!(!t.ok && t.as_expected, "{}", t.detail);
            assert_eq!(t.data["payload"]["sender_ok"], true);
            assert_eq!(rep.ok(), intact, "{verified}: {:?}", rep.failed());
        }
    }

    #[test]
    fn expected_failures_and_errnos() {
        let text = r#"
name = "probe"
kernels = ["patched", "baseline"]
[[step]]
name = "bind-tx"
kind = "sh"
argv = ["probe"]
[[step]]
name = "after"
kind = "sh"
script = "true"
[expect.baseline]
verdict = "expected-fail"
steps."bind-tx" = { ok = false, errno = "EOPNOTSUPP", extack = "No DMA-capable" }
"#;
        let s = Scenario::parse(text, "t").unwrap();
        let fail = (
            1,
            r#"{"errno":95,"extack":"No DMA-capable device found for netmem TX"}"#.to_string(),
        );
        // Baseline fails as expected → expected-fail (exit 0), later steps still run.
        let mut g = FakeGuest::new();
        g.canned.insert("probe".into(), fail.clone());
        let o = run_scenario_steps_with(
            &cfg(),
            &s,
            "baseline",
            &nic_map(),
            &mut g,
            &CollectSink::default(),
            &mut NoObserver,
        );
        assert_eq!(o.verdict, Verdict::ExpectedFail, "{o:#?}");
        assert_eq!(o.verdict.exit_code(), 0);
        assert_eq!(o.steps[0].errno, Some(95));
        assert!(o.steps[1].ok && !o.steps[1].skipped);
        // Patched fails the same way → a finding.
        let mut g = FakeGuest::new();
        g.canned.insert("probe".into(), fail);
        let o = run_scenario_steps_with(
            &cfg(),
            &s,
            "patched",
            &nic_map(),
            &mut g,
            &CollectSink::default(),
            &mut NoObserver,
        );
        assert_eq!(o.verdict, Verdict::Fail);
        // Baseline unexpectedly succeeds → a finding.
        let mut g = FakeGuest::new();
        g.canned.insert("probe".into(), (0, "{}".into()));
        let o = run_scenario_steps_with(
            &cfg(),
            &s,
            "baseline",
            &nic_map(),
            &mut g,
            &CollectSink::default(),
            &mut NoObserver,
        );
        assert_eq!(o.verdict, Verdict::Fail);
        assert!(o.mismatches[0].contains("succeeded"));
        // Wrong errno → a finding.
        let mut g = FakeGuest::new();
        g.canned
            .insert("probe".into(), (1, r#"{"errno":22}"#.into()));
        let o = run_scenario_steps_with(
            &cfg(),
            &s,
            "baseline",
            &nic_map(),
            &mut g,
            &CollectSink::default(),
            &mut NoObserver,
        );
        assert_eq!(o.verdict, Verdict::Fail);
        assert!(o.mismatches[0].contains("errno"), "{:?}", o.mismatches);
    }

    #[test]
    fn lab_errors() {
        // Missing NIC mapping.
        let mut m = nic_map();
        m.remove("nic1");
        let o = run_scenario_steps_with(
            &cfg(),
            &small_smoke(),
            "patched",
            &m,
            &mut FakeGuest::new(),
            &CollectSink::default(),
            &mut NoObserver,
        );
        assert_eq!(o.verdict, Verdict::Error);
        assert!(o.error.unwrap().contains("nic1"));
        // Netdev never appears.
        let mut g = FakeGuest::new();
        g.netdevs = "0000:00:04.0 eth0\n".into();
        let mut c = cfg();
        c.nic_wait = Duration::from_millis(100);
        let o = run_scenario_steps_with(
            &c,
            &small_smoke(),
            "patched",
            &nic_map(),
            &mut g,
            &CollectSink::default(),
            &mut NoObserver,
        );
        assert_eq!(o.verdict, Verdict::Error);
        assert!(o.error.unwrap().contains("nic1 (0000:00:05.0)"));
        // The agent goes away mid-run.
        let mut g = FakeGuest::new();
        g.fail_transport_on = Some("ping".into());
        let o = run_scenario_steps_with(
            &cfg(),
            &small_smoke(),
            "patched",
            &nic_map(),
            &mut g,
            &CollectSink::default(),
            &mut NoObserver,
        );
        assert_eq!(o.verdict, Verdict::Error);
        assert_eq!(o.verdict.exit_code(), 2);
        assert!(o.error.unwrap().contains("agent channel closed"));
        assert!(o.steps.last().unwrap().skipped);
        // Kernel not covered.
        let mut s = small_smoke();
        s.kernels = vec!["patched".into()];
        let o = run_scenario_steps_with(
            &cfg(),
            &s,
            "baseline",
            &nic_map(),
            &mut FakeGuest::new(),
            &CollectSink::default(),
            &mut NoObserver,
        );
        assert_eq!(o.verdict, Verdict::Error);
    }

    #[test]
    fn parsing_helpers() {
        assert_eq!(
            ping_counts("PING x\n3 packets transmitted, 2 packets received, 33% packet loss\n"),
            (Some(3), Some(2))
        );
        assert_eq!(
            ping_counts("3 packets transmitted, 3 received, 0% packet loss, time 2003ms"),
            (Some(3), Some(3))
        );
        assert_eq!(ping_counts("nothing"), (None, None));
        assert_eq!(tool_json("noise\n{\"a\":1}\n\n").unwrap()["a"], 1);
        assert_eq!(tool_json("{bad\n"), None);
        let mut n = BTreeMap::new();
        n.insert(
            "nic0".to_string(),
            NicBinding {
                bdf: "b".into(),
                ifname: "eth7".into(),
            },
        );
        assert_eq!(
            expand("ip link show {nic0} {nic9}", &n),
            "ip link show eth7 {nic9}"
        );
        assert_eq!(human_bytes(64 << 20), "64 MiB");
        assert_eq!(clip("ééé", 3), "é…");
    }
}
