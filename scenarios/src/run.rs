//! Running a job on this host's KVM (the kvm engine, and the L1 side of the
//! nested engine).

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use vmm::machine::{Machine, MachineConfig};
use vmm::power::ExitReason;

use crate::events::{Event, EventSink};
use crate::job::{Job, JobCommand};

/// Exit codes (ARCHITECTURE.md): 0 as expected, 1 a finding, 2 the lab could not run.
pub const EXIT_OK: i32 = 0;
pub const EXIT_FINDING: i32 = 1;
pub const EXIT_LAB_ERROR: i32 = 2;

/// The end of a job: the exit code and the report (also sent as an event).
#[derive(Debug, Clone)]
pub struct Outcome {
    pub exit_code: i32,
    pub report: serde_json::Value,
}

/// A failure that ends the run with exit 2 and the console tail.
#[derive(Debug)]
pub struct RunFailure {
    pub message: String,
    pub console_tail: Vec<String>,
}

/// Set by the CLI's SIGINT/SIGTERM handler: runners stop and tear down.
pub static CANCEL: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

fn cancelled() -> bool {
    CANCEL.load(std::sync::atomic::Ordering::SeqCst)
}

fn step(sink: &dyn EventSink, t0: Instant, name: &str, detail: String) {
    sink.emit(Event::Step {
        name: name.into(),
        elapsed_ms: t0.elapsed().as_millis() as u64,
        detail,
    });
}

/// One booted machine with its agent connected.
pub type Agent = netmem_agent::client::AgentClient<
    std::os::unix::net::UnixStream,
    std::os::unix::net::UnixStream,
>;

pub struct Booted {
    pub machine: Machine,
    pub topology: Option<crate::topology::Topology>,
    pub agent: Agent,
    pub boot_to_agent: Duration,
}

/// Boot the job's machine and wait for the agent's ready event, watching for
/// a panic, an early exit and the watchdog.
pub fn boot(job: &Job, sink: Arc<dyn EventSink>, t0: Instant) -> Result<Booted, RunFailure> {
    let hook_sink = sink.clone();
    let verbose = job.verbose;
    let topo_spec = job.machine.topology.clone();
    let (hook, pending) = if topo_spec.nics.is_empty() {
        (None, None)
    } else {
        let (h, p) = crate::topology::machine_hook(&topo_spec);
        (Some(h), Some(p))
    };
    let cfg = MachineConfig {
        kernel: job.machine.kernel.clone(),
        initramfs: Some(job.machine.initramfs.clone()),
        cmdline: job.machine.cmdline.clone(),
        mem_mib: job.machine.mem_mib,
        vcpus: job.machine.vcpus,
        hide_xsave: job.machine.hide_xsave,
        add_devices: hook,
        console_log: None,
        console_hook: Some(Box::new(move |l: &str| {
            if verbose {
                hook_sink.emit(Event::Console {
                    line: l.to_string(),
                })
            }
        })),
    };
    let start = Instant::now();
    let machine = Machine::start(cfg).map_err(|e| RunFailure {
        message: format!("starting the VM: {}", error_chain(&e)),
        console_tail: vec![],
    })?;
    let topology = match &pending {
        Some(p) => Some(
            crate::topology::finish(&topo_spec, p).map_err(|e| RunFailure {
                message: format!("cabling the NICs: {e}"),
                console_tail: vec![],
            })?,
        ),
        None => None,
    };
    step(
        &*sink,
        t0,
        "VM started",
        format!("{} MiB, {} vCPU", job.machine.mem_mib, job.machine.vcpus),
    );
    let chan = |e: std::io::Error| RunFailure {
        message: format!("agent channel: {e}"),
        console_tail: vec![],
    };
    let stream = machine.agent_stream().map_err(chan)?;
    let mut agent = Agent::new(stream.try_clone().map_err(chan)?, stream);
    let deadline = start + Duration::from_secs(job.boot_timeout_s);
    loop {
        if let Some(p) = machine.console_panic() {
            // Give the console a moment to print the backtrace tail.
            let _ = machine.wait_exit(Duration::from_millis(500));
            return Err(RunFailure {
                message: format!("guest kernel panicked: {p}"),
                console_tail: machine.console_tail(),
            });
        }
        if let Some(r) = machine.exit_reason() {
            return Err(RunFailure {
                message: format!(
                    "the guest ended before its agent started: {}",
                    describe_exit(&r)
                ),
                console_tail: machine.console_tail(),
            });
        }
        if cancelled() {
            return Err(RunFailure {
                message: "interrupted".into(),
                console_tail: machine.console_tail(),
            });
        }
        if Instant::now() > deadline {
            return Err(RunFailure {
                message: format!(
                    "watchdog: no agent after {} s (raise it with --boot-timeout)",
                    job.boot_timeout_s
                ),
                console_tail: machine.console_tail(),
            });
        }
        match agent.wait_ready(Duration::from_millis(250)) {
            Ok(_) => break,
            Err(netmem_agent::client::ClientError::Timeout { .. }) => continue,
            Err(e) => {
                return Err(RunFailure {
                    message: format!("agent channel: {e}"),
                    console_tail: machine.console_tail(),
                });
            }
        }
    }
    let boot_to_agent = start.elapsed();
    step(
        &*sink,
        t0,
        "agent ready",
        format!("{} ms after VM start", boot_to_agent.as_millis()),
    );
    Ok(Booted {
        machine,
        topology,
        agent,
        boot_to_agent,
    })
}

/// Start of the error of a run whose machine ended while steps ran.
pub const ENDED_MID_RUN: &str = "the guest ended mid-run";

pub fn describe_exit(r: &ExitReason) -> String {
    match r {
        ExitReason::PowerOff => "powered off".into(),
        ExitReason::Reset => "reset (ACPI reset register or KVM reset event)".into(),
        ExitReason::TripleFault(d) => format!("triple fault ({d})"),
        ExitReason::VcpuError(e) => format!("vCPU error: {e}"),
        ExitReason::Stopped(w) => format!("stopped: {w}"),
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(x) = src {
        s.push_str(": ");
        s.push_str(&x.to_string());
        src = x.source();
    }
    s
}

/// Power the guest off through its agent and wait for the machine to end.
pub fn power_off(b: &mut Booted) -> ExitReason {
    // With sim-nics the lab stops the machine itself once it has what it
    // needs: a guest power-off shuts the virtio devices (the IOMMU among
    // them) down before gve, whose own shutdown then finds its admin queue
    // unmapped (AQ timeouts and "Reset failed" for ~15 s), and unbinding gve
    // first after heavy traffic was seen to take 90 s. Nothing in the guest
    // needs to be saved.
    if b.topology.as_ref().is_some_and(|t| !t.bdfs.is_empty()) {
        let r = b
            .machine
            .stop("the lab stopped the guest after its last step");
        if let Some(t) = &b.topology {
            t.shutdown();
        }
        return r;
    }
    let _ = b.agent.shutdown();
    let r = match b.machine.wait_exit(Duration::from_secs(30)) {
        Some(r) => {
            b.machine.stop("job finished");
            r
        }
        None => b.machine.stop("guest did not power off within 30 s"),
    };
    // The vCPUs are stopped: quiesce the NICs' workers and flush the pcaps.
    if let Some(t) = &b.topology {
        t.shutdown();
    }
    r
}

/// Run a job here, on this host's KVM.
pub fn run_local(job: &Job, sink: Arc<dyn EventSink>, engine: &str) -> Outcome {
    let t0 = Instant::now();
    let res = match &job.command {
        JobCommand::Boot { exec, dma_probe } => {
            run_boot(job, exec, dma_probe, sink.clone(), t0, engine)
        }
        JobCommand::Scenario { toml, origin } => {
            run_scenario(job, toml, origin, sink.clone(), t0, engine)
        }
        JobCommand::Batch { items } => {
            crate::session::run_batch(job, items, sink.clone(), t0, engine)
        }
        JobCommand::Campaign {
            toml,
            origin,
            config,
        } => crate::session::run_campaign_job(job, toml, origin, config, sink.clone(), t0, engine),
        JobCommand::BenchBoot { runs, qemu } => {
            run_bench_boot(job, *runs, qemu, sink.clone(), t0, engine)
        }
        JobCommand::BenchNet { runs, bytes, qemu } => {
            run_bench_net(job, *runs, *bytes, qemu, sink.clone(), t0, engine)
        }
    };
    match res {
        Ok(mut o) => {
            o.report["exit_code"] = json!(o.exit_code);
            sink.emit(Event::Report {
                report: o.report.clone(),
            });
            o
        }
        Err(f) => {
            sink.emit(Event::Failure {
                message: f.message.clone(),
                console_tail: f.console_tail.clone(),
                exit_code: EXIT_LAB_ERROR,
            });
            Outcome {
                exit_code: EXIT_LAB_ERROR,
                report: json!({
                    "command": command_name(&job.command),
                    "kernel": {"spec": job.kernel_spec, "release": job.kernel_release},
                    "engine": engine,
                    "verdict": "error",
                    "error": f.message,
                    "console_tail": f.console_tail,
                }),
            }
        }
    }
}

fn command_name(c: &JobCommand) -> &'static str {
    match c {
        JobCommand::Boot { .. } => "boot",
        JobCommand::Scenario { .. } => "scenario",
        JobCommand::Batch { .. } => "batch",
        JobCommand::Campaign { .. } => "campaign",
        JobCommand::BenchBoot { .. } => "bench-boot",
        JobCommand::BenchNet { .. } => "bench-net",
    }
}

/// Parse "0000:00:02.0" (or "00:02.0") into a 16-bit BDF.
pub fn parse_bdf(s: &str) -> Option<u16> {
    let s = s.strip_prefix("0000:").unwrap_or(s);
    let (bus, rest) = s.split_once(':')?;
    let (dev, func) = rest.split_once('.')?;
    let (b, d, f) = (
        u16::from_str_radix(bus, 16).ok()?,
        u16::from_str_radix(dev, 16).ok()?,
        u16::from_str_radix(func, 16).ok()?,
    );
    (b < 256 && d < 32 && f < 8).then_some((b << 8) | (d << 3) | f)
}

/// Replay a device's last DMA address through its endpoint (see JobCommand::Boot).
fn replay_last_dma(machine: &Machine, bdf_text: &str) -> serde_json::Value {
    let Some(bdf) = parse_bdf(bdf_text) else {
        return json!({"device": bdf_text, "error": "not a PCI address like 0000:00:02.0"});
    };
    let audit = machine.devices().audit();
    let batch = audit.drain_since(0);
    let last = batch.records.iter().rev().find_map(|r| match &r.event {
        vmm::iommu::AuditEvent::Dma(d) if d.device == bdf && d.ok() => {
            Some((d.iova, d.len.min(4096)))
        }
        _ => None,
    });
    let Some((iova, len)) = last else {
        return json!({"device": bdf_text, "error": "no earlier DMA of this device in the audit trail"});
    };
    match machine
        .devices()
        .dma_probe(bdf, iova, len, vmm::dma::Access::Read)
    {
        Ok(()) => json!({"device": bdf_text, "iova": iova, "len": len, "refused": false}),
        Err(e) => {
            json!({"device": bdf_text, "iova": iova, "len": len, "refused": true, "detail": e.to_string()})
        }
    }
}

fn run_boot(
    job: &Job,
    exec: &[String],
    dma_probe: &[String],
    sink: Arc<dyn EventSink>,
    t0: Instant,
    engine: &str,
) -> Result<Outcome, RunFailure> {
    let mut b = boot(job, sink.clone(), t0)?;
    let hello = b.agent.hello().map_err(|e| RunFailure {
        message: format!("agent hello: {e}"),
        console_tail: b.machine.console_tail(),
    })?;
    step(
        &*sink,
        t0,
        "agent hello",
        format!("{} ({} PCI functions)", hello.release, hello.pci.len()),
    );
    let mut execs = Vec::new();
    for cmd in exec {
        let out = b
            .agent
            .run(&["/bin/sh", "-c", cmd.as_str()])
            .map_err(|e| RunFailure {
                message: format!("agent run {cmd:?}: {e}"),
                console_tail: b.machine.console_tail(),
            })?;
        step(
            &*sink,
            t0,
            "guest command",
            format!("{cmd:?} exited {:?}", out.exit_code),
        );
        execs.push(json!({"command": cmd, "exit_code": out.exit_code, "stdout": out.stdout, "stderr": out.stderr}));
    }
    let mut probes = Vec::new();
    for dev in dma_probe {
        let r = replay_last_dma(&b.machine, dev);
        step(&*sink, t0, "DMA probe", r.to_string());
        probes.push(r);
    }
    let exit = power_off(&mut b);
    step(&*sink, t0, "VM ended", describe_exit(&exit));
    let clean = exit == ExitReason::PowerOff;
    let report = json!({
        "command": "boot",
        "exec": execs,
        "dma_probes": probes,
        "dma": b.machine.dma_report(),
        "nics": b.topology.as_ref().map(|t| t.stats()),
        "kernel": {"spec": job.kernel_spec, "release": hello.release},
        "engine": engine,
        "verdict": if clean { "pass" } else { "error" },
        "timing_ms": {
            "boot_to_agent": b.boot_to_agent.as_millis() as u64,
            "total": t0.elapsed().as_millis() as u64,
        },
        "hello": hello,
        "machine": b.machine.stats(),
        "exit": exit,
    });
    Ok(Outcome {
        exit_code: if clean { EXIT_OK } else { EXIT_LAB_ERROR },
        report,
    })
}

/// The traffic of `bench net`, as a scenario: nic1 into netns `remote`
/// (with `setup`), then `runs` verified transfers nic0 → nic1.
pub fn bench_net_toml(runs: u32, bytes: u64, setup: bool) -> String {
    let mut t = String::from(
        r#"name = "bench-net"
description = "TCP throughput nic0 -> nic1"
"#,
    );
    if setup {
        t.push_str(
            r#"
[[topology.nic]]
name = "nic0"

[[topology.nic]]
name = "nic1"

[[topology.wire]]
a = "nic0"
b = "nic1"

[[step]]
name = "nic1 into netns remote"
kind = "netns-setup"
nic = "nic1"
netns = "remote"
addrs = ["10.0.0.2/24"]

[[step]]
name = "nic0 address"
kind = "netns-setup"
nic = "nic0"
addrs = ["10.0.0.1/24"]
"#,
        );
    }
    for i in 0..runs {
        t.push_str(&format!(
            "\n[[step]]\nname = \"transfer {n}\"\nkind = \"tcp-transfer\"\nto_netns = \"remote\"\nto = \"10.0.0.2\"\nport = {port}\nbytes = {bytes}\nseed = {n}\ntimeout_s = {tmo}\n",
            n = i + 1,
            port = 5301 + i,
            tmo = bytes / 125_000 + 60,
        ));
    }
    t.push_str("\n[expect.default]\nverdict = \"pass\"\n");
    t
}

/// Mbit/s of every transfer step of `o`, or why there is none.
fn transfer_rates(o: &crate::steps::ScenarioOutcome) -> Result<Vec<f64>, String> {
    if let Some(e) = &o.error {
        return Err(e.clone());
    }
    let mut rates = Vec::new();
    for st in &o.steps {
        if !st.ok {
            return Err(format!("step {:?}: {}", st.name, st.detail));
        }
        if st.kind != "tcp-transfer" {
            continue;
        }
        let d = &st.data;
        let ms = d["sink"]["elapsed_ms"]
            .as_u64()
            .or_else(|| d["source"]["elapsed_ms"].as_u64())
            .filter(|&ms| ms > 0)
            .ok_or_else(|| format!("step {:?}: no elapsed time", st.name))?;
        let bytes = d["payload"]["verified_bytes"].as_u64().unwrap_or(0);
        rates.push(bytes as f64 * 8.0 / 1000.0 / ms as f64);
    }
    Ok(rates)
}

fn run_bench_net(
    job: &Job,
    runs: u32,
    bytes: u64,
    qemu: &crate::qemu::QemuInstall,
    sink: Arc<dyn EventSink>,
    t0: Instant,
    engine: &str,
) -> Result<Outcome, RunFailure> {
    let runs = runs.max(1);
    let fail = |message: String| RunFailure {
        message,
        console_tail: vec![],
    };
    let parse = |setup| {
        crate::scenario::Scenario::parse(&bench_net_toml(runs, bytes, setup), "bench-net")
            .map_err(|e| fail(e.to_string()))
    };
    let (scn, again) = (parse(true)?, parse(false)?);
    let kid = "default";
    let mut b = boot(job, sink.clone(), t0)?;
    let nic_map = b
        .topology
        .as_ref()
        .map(|t| t.bdfs.clone())
        .unwrap_or_default();
    if nic_map.len() < 2 {
        power_off(&mut b);
        return Err(fail("bench net needs two sim-nics (--nics 2)".into()));
    }
    let audit = b.machine.devices().audit().clone();
    let mut series = Vec::new();
    let none = std::collections::BTreeMap::new();
    for (label, recording) in [("audit on", true), ("audit off", false)] {
        audit.set_recording(recording);
        // The second series finds the NICs already set up (nic1 has left
        // the initial netns, where the runner looks NICs up).
        let (s, m) = if recording {
            (&scn, &nic_map)
        } else {
            (&again, &none)
        };
        let o = crate::steps::run_scenario_steps(s, kid, m, &mut b.agent, &*sink);
        match transfer_rates(&o) {
            Ok(r) => {
                step(
                    &*sink,
                    t0,
                    &format!("bench: sim-nic, {label}"),
                    format!("Mbit/s per run: {r:.1?}"),
                );
                series.push(r);
            }
            Err(e) => {
                if o.error.is_some() {
                    vcpu_state(&b.machine, &*sink);
                }
                power_off(&mut b);
                return Err(fail(format!("sim-nic ({label}): {e}")));
            }
        }
    }
    audit.set_recording(true);
    power_off(&mut b);
    let extra = crate::qemu::virtio_net_pair_args();
    let (_, q) = crate::qemu::with_guest(
        &job.machine,
        qemu,
        &job.scratch_dir,
        Duration::from_secs(job.boot_timeout_s),
        &extra,
        |agent| crate::steps::run_scenario_steps(&scn, kid, &nic_map, agent, &*sink),
    )
    .map_err(|e| fail(format!("QEMU baseline: {e}")))?;
    let theirs = transfer_rates(&q).map_err(|e| fail(format!("QEMU virtio-net: {e}")))?;
    step(
        &*sink,
        t0,
        "bench: QEMU virtio-net",
        format!("Mbit/s per run: {theirs:.1?}"),
    );
    let (on, off, qm) = (median(&series[0]), median(&series[1]), median(&theirs));
    let ratio = if qm > 0.0 { on / qm } else { 0.0 };
    let audit_cost = if off > 0.0 { (off - on) / off } else { 0.0 };
    Ok(Outcome {
        exit_code: EXIT_OK,
        report: json!({
            "command": "bench-net",
            "kernel": {"spec": job.kernel_spec, "release": job.kernel_release},
            "engine": engine,
            "metric": "tcp_mbit_per_s",
            "bytes_per_run": bytes,
            "vmm": {
                "device": "sim-nic (gve DQO-RDA) behind virtio-iommu",
                "audit_on": {"runs_mbit_s": series[0], "median_mbit_s": on},
                "audit_off": {"runs_mbit_s": series[1], "median_mbit_s": off},
            },
            "qemu": {"device": "virtio-net-pci pair on a hub", "machine": "q35", "accel": "kvm",
                     "runs_mbit_s": theirs, "median_mbit_s": qm},
            "ratio_vmm_over_qemu": ratio,
            "audit_slowdown": audit_cost,
        }),
    })
}

fn run_bench_boot(
    job: &Job,
    runs: u32,
    qemu: &crate::qemu::QemuInstall,
    sink: Arc<dyn EventSink>,
    t0: Instant,
    engine: &str,
) -> Result<Outcome, RunFailure> {
    let runs = runs.max(1);
    let mut ours = Vec::new();
    for i in 0..runs {
        let mut b = boot(job, sink.clone(), t0)?;
        ours.push(b.boot_to_agent.as_millis() as u64);
        power_off(&mut b);
        step(
            &*sink,
            t0,
            "bench: netmem-lab VMM",
            format!(
                "run {}/{runs}: {} ms to agent",
                i + 1,
                b.boot_to_agent.as_millis()
            ),
        );
    }
    let mut theirs = Vec::new();
    for i in 0..runs {
        let t = crate::qemu::boot_once(
            &job.machine,
            qemu,
            &job.scratch_dir,
            Duration::from_secs(job.boot_timeout_s),
        )
        .map_err(|e| RunFailure {
            message: format!("QEMU baseline: {e}"),
            console_tail: vec![],
        })?;
        theirs.push(t.as_millis() as u64);
        step(
            &*sink,
            t0,
            "bench: QEMU q35",
            format!("run {}/{runs}: {} ms to agent", i + 1, t.as_millis()),
        );
    }
    let (a, b) = (median(&ours), median(&theirs));
    let ratio = if b == 0 { 0.0 } else { a as f64 / b as f64 };
    Ok(Outcome {
        exit_code: EXIT_OK,
        report: json!({
            "command": "bench-boot",
            "kernel": {"spec": job.kernel_spec, "release": job.kernel_release},
            "engine": engine,
            "metric": "boot_to_agent_ms",
            "vmm": {"runs_ms": ours, "median_ms": a},
            "qemu": {"runs_ms": theirs, "median_ms": b, "machine": "q35", "accel": "kvm"},
            "ratio_vmm_over_qemu": ratio,
        }),
    })
}

/// The middle value (the upper one of an even count); the default for none.
pub fn median<T: Copy + Default + PartialOrd>(v: &[T]) -> T {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    s.get(s.len() / 2).copied().unwrap_or_default()
}

fn run_scenario(
    job: &Job,
    toml: &str,
    origin: &str,
    sink: Arc<dyn EventSink>,
    t0: Instant,
    engine: &str,
) -> Result<Outcome, RunFailure> {
    let scn = crate::scenario::Scenario::parse(toml, origin).map_err(|e| RunFailure {
        message: e.to_string(),
        console_tail: vec![],
    })?;
    let mut s = crate::session::Session::open(job, &job.machine.topology, false, sink.clone(), t0)?;
    let out = s.run(&scn, &job.kernel_spec, engine, sink.clone());
    s.close(&*sink, t0);
    let mut out = out?;
    out.report["timing_ms"]["total"] = json!(t0.elapsed().as_millis() as u64);
    Ok(out)
}

/// The vCPUs' state of a guest the lab gave up on (an agent that stopped
/// answering): logged, and returned for the report.
pub fn vcpu_state(m: &vmm::machine::Machine, sink: &dyn EventSink) -> serde_json::Value {
    if let Some(r) = m.exit_reason() {
        // Nothing to sample: the machine ended under the steps.
        let tail = m.console_tail();
        let tail = &tail[tail.len().saturating_sub(20)..];
        sink.emit(Event::Log {
            level: "warn".into(),
            message: format!(
                "the guest had ended: {}; its console's last lines: {tail:?}",
                describe_exit(&r)
            ),
        });
        return json!({"ended": describe_exit(&r), "console_tail": tail});
    }
    // Two samples a second apart, with the CPU time each thread of this
    // process used meanwhile: a spinning guest moves RIP/TSC and burns vCPU
    // thread time; a stuck one does neither.
    let before = thread_cpu_ticks();
    let first = m.vcpu_snapshots(Duration::from_secs(2));
    std::thread::sleep(Duration::from_secs(1));
    let snaps = m.vcpu_snapshots(Duration::from_secs(2));
    let after = thread_cpu_ticks();
    let busy: Vec<String> = after
        .iter()
        .map(|(name, (state, t))| {
            let d = t.saturating_sub(before.get(name).map_or(0, |b| b.1));
            format!("{name} {state} {d}")
        })
        .collect();
    sink.emit(Event::Log {
        level: "warn".into(),
        message: format!(
            "threads (state, CPU ticks over the last second): {}",
            busy.join(", ")
        ),
    });
    for (i, f) in first.iter().enumerate() {
        if let Some(f) = f {
            sink.emit(Event::Log {
                level: "warn".into(),
                message: format!("vcpu{i} a second earlier: rip {:#x} tsc {}", f.rip, f.tsc),
            });
        }
    }
    for (i, s) in snaps.iter().enumerate() {
        let message = match s {
            Some(s) => format!(
                "vcpu{}: rip {:#x} IF={} mp_state {} injected {:?} nmi {} apic irr {:?} isr {:?} tpr {:#x} lvtt {:#x} tmict {} tmcct {} tsc_deadline {} tsc {}",
                s.id,
                s.rip,
                u8::from(s.interrupts_enabled),
                s.mp_state,
                s.injected_irq,
                s.nmi_pending,
                s.apic_irr_top,
                s.apic_isr_top,
                s.apic_tpr,
                s.apic_lvtt,
                s.apic_tmict,
                s.apic_tmcct,
                s.tsc_deadline,
                s.tsc
            ),
            None => format!("vcpu{i}: no answer (its thread is busy outside KVM_RUN)"),
        };
        sink.emit(Event::Log {
            level: "warn".into(),
            message,
        });
    }
    json!({ "vcpus": snaps })
}

/// Per thread of this process (by `comm`, e.g. `vcpu0`): its state letter
/// and user+system CPU ticks, from /proc/self/task/*/stat.
fn thread_cpu_ticks() -> std::collections::BTreeMap<String, (String, u64)> {
    let mut out = std::collections::BTreeMap::new();
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else {
        return out;
    };
    for e in dir.flatten() {
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        // "tid (comm) S ppid ..." with utime, stime the 14th and 15th fields.
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let comm = format!(
            "{}/{}",
            &stat[open + 1..close],
            e.file_name().to_string_lossy()
        );
        let f: Vec<&str> = stat[close + 1..].split_whitespace().collect();
        let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        out.insert(
            comm,
            (f.first().unwrap_or(&"?").to_string(), ticks(11) + ticks(12)),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::{Scenario, StepKind};

    #[test]
    fn bench_net_scenarios_parse_with_and_without_setup() {
        let full = Scenario::parse(&bench_net_toml(3, 1 << 20, true), "t").unwrap();
        assert_eq!(full.steps.len(), 5);
        assert!(matches!(full.steps[0].kind, StepKind::NetnsSetup { .. }));
        let again = Scenario::parse(&bench_net_toml(2, 1 << 20, false), "t").unwrap();
        assert_eq!(again.steps.len(), 2);
        assert!(
            again
                .steps
                .iter()
                .all(|s| matches!(s.kind, StepKind::TcpTransfer { bytes, .. } if bytes == 1 << 20))
        );
    }

    #[test]
    fn median_of_rates() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median::<f64>(&[]), 0.0);
        assert_eq!(median(&[5u64, 9, 1, 7]), 7);
    }
}
