//! The subcommands.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use clap::{Args, Subcommand, ValueEnum};
use scenarios::events::{Event, EventSink, JsonLineSink, TerminalSink};
use scenarios::job::{Job, JobCommand, MachineSpec, default_cmdline};
use scenarios::run::{EXIT_LAB_ERROR, Outcome};
use vmm::engine::Engine;

use crate::rundir::RunDir;

/// Modules the lab guest loads at boot (with their dependencies).
pub const GUEST_MODULES: &[&str] = &[
    "virtio_iommu",
    "virtio_rng",
    "gve",
    "sch_ingress",
    "cls_bpf",
];
/// `bench net` also loads these: QEMU's side of the comparison.
pub const BENCH_NET_MODULES: &[&str] = &["virtio_net"];
/// Busybox from Debian's busybox-static.
pub const BUSYBOX: &str = "/bin/busybox";
/// QEMU for the nested engine (Debian's qemu-system-x86).
pub const QEMU: &str = "qemu-system-x86_64";

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum EngineArg {
    Auto,
    Kvm,
    Nested,
}

#[derive(Args, Clone, Debug)]
pub struct MachineArgs {
    /// Kernel: `patched` (Debian 7.3.4 cloud), `baseline` (Debian 7.1.13 cloud) or a PATH to a bzImage/vmlinux.
    #[arg(long, default_value = "patched")]
    pub kernel: String,
    /// Modules directory for a PATH kernel (…/lib/modules/RELEASE).
    #[arg(long)]
    pub modules: Option<PathBuf>,
    /// Where the machine runs.
    #[arg(long, value_enum, default_value = "auto")]
    pub engine: EngineArg,
    /// Guest RAM in MiB.
    #[arg(long, default_value_t = 2048)]
    pub mem: u64,
    /// Guest vCPUs (1–2 supported by the lab's machine model). Default: 2
    /// on hardware KVM, 1 on the nested engine: there two L2 vCPUs plus the
    /// devices' threads oversubscribe the 2-vCPU L1 (a 64 MiB nic-smoke
    /// transfer ran at 4–6 Mbit/s, and QEMU lost the L1 or L2 in most runs;
    /// with one vCPU 14–16 Mbit/s and no loss in 3 of 3 runs).
    #[arg(long, value_parser = clap::value_parser!(u8).range(1..=2))]
    pub vcpus: Option<u8>,
    /// Watchdog: seconds from VM start to the agent's ready signal.
    #[arg(long, default_value_t = 180)]
    pub boot_timeout: u64,
    /// Number of sim-nics (gve), cabled in pairs back to back (nic0↔nic1, …).
    #[arg(long, default_value_t = 0)]
    pub nics: usize,
    /// Print the guest's serial console lines.
    #[arg(long)]
    pub console: bool,
    /// Extra kernel command-line arguments (e.g. `loglevel=8` to undo `quiet`).
    #[arg(long, default_value = "")]
    pub append: String,
}

#[derive(Args, Debug)]
pub struct BootArgs {
    #[command(flatten)]
    pub machine: MachineArgs,
    /// Write the JSON report here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Run a shell command in the guest after the hello (repeatable); its output is printed.
    #[arg(long)]
    pub exec: Vec<String>,
    /// After --exec: make the device at this PCI address (e.g. 0000:00:02.0)
    /// read the IOVA of its last DMA again, through its IOMMU endpoint.
    #[arg(long)]
    pub dma_probe: Vec<String>,
}

#[derive(Subcommand, Debug)]
pub enum BenchWhat {
    /// Boot-to-agent time of our VMM against QEMU on the same kernel, initramfs and engine.
    Boot {
        #[command(flatten)]
        machine: MachineArgs,
        #[arg(long, default_value_t = 3)]
        runs: u32,
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// TCP throughput sim-nic A → B (IOMMU audit on and off) against QEMU's
    /// virtio-net pair, on the same kernel, initramfs and engine.
    Net {
        #[command(flatten)]
        machine: MachineArgs,
        /// Transfers per device (the medians are reported).
        #[arg(long, default_value_t = 3)]
        runs: u32,
        /// Bytes per transfer.
        #[arg(long, default_value_t = 32 << 20)]
        bytes: u64,
        #[arg(long)]
        json: Option<PathBuf>,
    },
}

#[derive(Subcommand, Debug)]
pub enum KernelsWhat {
    /// Download (once), verify and unpack catalog kernels into the cache.
    Fetch {
        /// Kernel ids (default: every id in the catalog).
        ids: Vec<String>,
    },
}

pub fn kernels(what: KernelsWhat) -> i32 {
    match what {
        KernelsWhat::Fetch { ids } => {
            let ids = if ids.is_empty() {
                kernel::catalog().ids()
            } else {
                ids
            };
            for id in ids {
                match kernel::resolve(&id, None, &mut |p| eprintln!("  {id}: {p}")) {
                    Ok(k) => println!("{id}: {} {}", k.release, k.image.display()),
                    Err(e) => {
                        eprintln!("error: kernel {id}: {e}");
                        return EXIT_LAB_ERROR;
                    }
                }
            }
            0
        }
    }
}

static CANCELLED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    CANCELLED.store(true, Ordering::SeqCst);
    scenarios::run::CANCEL.store(true, Ordering::SeqCst);
}

/// Ctrl-C / SIGTERM: set a flag the runners poll; they tear everything down.
fn install_cancel_handlers() {
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: the handler only stores to an atomic (async-signal-safe).
        unsafe {
            libc::signal(sig, on_signal as *const () as libc::sighandler_t);
        }
    }
}

fn cancelled() -> bool {
    CANCELLED.load(Ordering::SeqCst)
}

pub fn list() -> i32 {
    println!("kernels:");
    for k in &kernel::catalog().kernels {
        println!("  {:<10} {} ({})", k.id, k.description, k.release);
    }
    println!("  PATH       a bzImage or vmlinux of your own (--modules DIR for its modules)");
    println!("engines:");
    let host = vmm::engine::host_kvm();
    let auto = vmm::engine::choose(None)
        .map(|e| e.to_string())
        .unwrap_or_else(|e| e.to_string());
    println!("  kvm        this host's /dev/kvm ({host:?})");
    println!("  nested     an L1 guest under QEMU TCG running this binary on L1's KVM");
    println!("  auto       → {auto}");
    println!("scenarios:");
    for (name, s) in scenarios::scenario::CATALOG
        .iter()
        .zip(scenarios::scenario::Scenario::catalog())
    {
        match s {
            Ok(s) => println!("  {:<22} {}", s.name, s.description),
            Err(e) => println!("  {:<22} (invalid: {e})", name.0),
        }
    }
    0
}

fn report_error(e: &anyhow::Error) -> i32 {
    eprintln!("error: {e:#}");
    EXIT_LAB_ERROR
}

fn write_json(path: &Option<PathBuf>, v: &serde_json::Value) -> Result<()> {
    if let Some(p) = path {
        let s = serde_json::to_string_pretty(v)?;
        std::fs::write(p, s + "\n").with_context(|| format!("writing {}", p.display()))?;
    }
    Ok(())
}

struct Prepared {
    engine: Engine,
    job: Job,
    run: RunDir,
}

/// Resolve engine and kernel, build the lab initramfs: the common first half.
fn prepare(m: &MachineArgs, command: JobCommand, sink: &dyn EventSink) -> Result<Prepared> {
    let engine = vmm::engine::choose(match m.engine {
        EngineArg::Auto => None,
        EngineArg::Kvm => Some(Engine::Kvm),
        EngineArg::Nested => Some(Engine::Nested),
    })?;
    sink.emit(Event::Step {
        name: "engine".into(),
        elapsed_ms: 0,
        detail: engine.to_string(),
    });
    crate::rundir::sweep(&kernel::cache_dir().join("runs"));
    let k = kernel::resolve(&m.kernel, m.modules.as_deref(), &mut |p| {
        sink.emit(Event::Progress {
            what: "kernel".into(),
            detail: p.to_string(),
        })
    })
    .with_context(|| format!("resolving kernel {:?}", m.kernel))?;
    sink.emit(Event::Step {
        name: "kernel resolved".into(),
        elapsed_ms: 0,
        detail: format!("{} ({})", k.release, k.image.display()),
    });
    let run = RunDir::create(&kernel::cache_dir()).context("creating the run directory")?;
    let self_exe = std::env::current_exe().context("locating this executable")?;
    let mut spec = images::initramfs::InitramfsSpec::new(&self_exe);
    spec.busybox = BUSYBOX.into();
    spec.modules_dir = k.modules_dir.clone();
    spec.modules = if k.modules_dir.is_some() {
        let extra = match command {
            JobCommand::BenchNet { .. } => BENCH_NET_MODULES,
            _ => &[],
        };
        GUEST_MODULES
            .iter()
            .chain(extra)
            .map(|s| s.to_string())
            .collect()
    } else {
        vec![]
    };
    let initramfs = run.path().join("lab-initramfs.cpio");
    let info = images::initramfs::build(&spec, &initramfs).context("building the lab initramfs")?;
    sink.emit(Event::Step {
        name: "initramfs built".into(),
        elapsed_ms: 0,
        detail: format!(
            "{} KiB, modules: {}",
            info.size / 1024,
            info.module_load_order.join(" ")
        ),
    });
    let job = Job {
        command,
        kernel_spec: m.kernel.clone(),
        kernel_release: k.release.clone(),
        machine: MachineSpec {
            kernel: k.image.clone(),
            initramfs,
            cmdline: if m.append.is_empty() {
                default_cmdline()
            } else {
                format!("{} {}", default_cmdline(), m.append)
            },
            mem_mib: m.mem,
            vcpus: m.vcpus.unwrap_or(match engine {
                Engine::Nested => 1,
                _ => 2,
            }),
            hide_xsave: false,
            topology: scenarios::topology::TopologySpec::pairs(m.nics),
        },
        boot_timeout_s: m.boot_timeout,
        verbose: m.console,
        scratch_dir: run.path().to_path_buf(),
    };
    Ok(Prepared { engine, job, run })
}

fn execute(p: &Prepared, sink: Arc<dyn EventSink>) -> Result<Outcome> {
    match p.engine {
        Engine::Kvm => Ok(scenarios::run::run_local(&p.job, sink, "kvm")),
        Engine::Nested => {
            let l1_kernel = kernel::resolve("patched", None, &mut |pr| {
                sink.emit(Event::Progress {
                    what: "L1 kernel".into(),
                    detail: pr.to_string(),
                })
            })
            .context("resolving the L1 kernel")?;
            let setup = scenarios::nested::NestedSetup {
                l1_kernel,
                self_exe: std::env::current_exe()?,
                busybox: BUSYBOX.into(),
                qemu: QEMU.into(),
                run_dir: p.run.path().to_path_buf(),
                l1_connect_timeout: Duration::from_secs(120),
            };
            Ok(scenarios::nested::run_nested(
                &p.job, &setup, sink, &cancelled,
            ))
        }
    }
}

fn print_hello(report: &serde_json::Value) {
    let Some(h) = report.get("hello") else { return };
    println!("kernel  {}", h["release"].as_str().unwrap_or("?"));
    println!("cmdline {}", h["cmdline"].as_str().unwrap_or("?").trim());
    if let Some(pci) = h["pci"].as_array() {
        println!("PCI functions:");
        for f in pci {
            println!(
                "  {} {:04x}:{:04x} class {:06x} driver {} iommu_group {}",
                f["bdf"].as_str().unwrap_or("?"),
                f["vendor"].as_u64().unwrap_or(0),
                f["device"].as_u64().unwrap_or(0),
                f["class"].as_u64().unwrap_or(0),
                f["driver"].as_str().unwrap_or("-"),
                f["iommu_group"]
                    .as_u64()
                    .map(|g| g.to_string())
                    .unwrap_or_else(|| "-".into()),
            );
        }
    }
    if let Some(g) = h["iommu_groups"].as_array() {
        for grp in g {
            println!(
                "IOMMU group {} type {} devices {}",
                grp["id"],
                grp["type_"]
                    .as_str()
                    .or(grp["type"].as_str())
                    .unwrap_or("?"),
                grp["devices"]
            );
        }
    }
    if let Some(ex) = report["exec"].as_array() {
        for e in ex {
            println!(
                "$ {}  (exit {})",
                e["command"].as_str().unwrap_or(""),
                e["exit_code"]
            );
            print!("{}", e["stdout"].as_str().unwrap_or(""));
            eprint!("{}", e["stderr"].as_str().unwrap_or(""));
        }
    }
    if let Some(t) = report.get("timing_ms") {
        println!(
            "boot_to_agent {} ms, total {} ms",
            t["boot_to_agent"], t["total"]
        );
    }
}

pub fn boot(a: BootArgs) -> i32 {
    install_cancel_handlers();
    let sink: Arc<dyn EventSink> = Arc::new(TerminalSink::new(a.machine.console));
    let res = (|| -> Result<i32> {
        let p = prepare(
            &a.machine,
            JobCommand::Boot {
                exec: a.exec.clone(),
                dma_probe: a.dma_probe.clone(),
            },
            &*sink,
        )?;
        let out = execute(&p, sink.clone())?;
        let mut report = out.report.clone();
        report["engine"] = serde_json::json!(p.engine.to_string());
        write_json(&a.json, &report)?;
        print_hello(&report);
        Ok(out.exit_code)
    })();
    res.unwrap_or_else(|e| report_error(&e))
}

pub fn bench(what: BenchWhat) -> i32 {
    install_cancel_handlers();
    let qemu = scenarios::qemu::QemuInstall {
        binary: QEMU.into(),
        datadir: None,
        libdir: None,
    };
    let (machine, command, json) = match what {
        BenchWhat::Boot {
            machine,
            runs,
            json,
        } => (machine, JobCommand::BenchBoot { runs, qemu }, json),
        BenchWhat::Net {
            mut machine,
            runs,
            bytes,
            json,
        } => {
            // The two NICs under test (nic0 ↔ nic1) unless asked for more.
            machine.nics = machine.nics.max(2);
            (machine, JobCommand::BenchNet { runs, bytes, qemu }, json)
        }
    };
    let sink: Arc<dyn EventSink> = Arc::new(TerminalSink::new(machine.console));
    let res = (|| -> Result<i32> {
        let p = prepare(&machine, command, &*sink)?;
        let out = execute(&p, sink.clone())?;
        write_json(&json, &out.report)?;
        println!("{}", serde_json::to_string_pretty(&out.report)?);
        Ok(out.exit_code)
    })();
    res.unwrap_or_else(|e| report_error(&e))
}

pub fn agent(port: &Path) -> i32 {
    match netmem_agent::server::serve(port) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("netmem-agent: {e}");
            1
        }
    }
}

/// Everything after a hidden guest-tool subcommand, parsed by the tool itself.
#[derive(Args)]
pub struct ToolArgs {
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    args: Vec<String>,
}

/// In the guest: a tool for scenario steps (see scenarios::guest_tools).
pub fn guest_tool(tool: &str, a: ToolArgs) -> i32 {
    scenarios::guest_tools::main(tool, &a.args)
}

/// In the guest: a tool without its own subcommand variant (`argv[0]` is
/// its name); only names in scenarios::guest_tools::TOOLS are accepted.
pub fn guest_tool_external(argv: &[String]) -> i32 {
    match argv.split_first() {
        Some((tool, args)) if scenarios::guest_tools::TOOLS.contains(&tool.as_str()) => {
            scenarios::guest_tools::main(tool, args)
        }
        _ => {
            eprintln!(
                "netmem-lab: unknown subcommand {:?} (see --help)",
                argv.first().map(String::as_str).unwrap_or("")
            );
            2
        }
    }
}

/// Inside L1: run the job on L1's KVM, streaming events to the host.
pub fn l1_job(job_path: &Path) -> i32 {
    let res = (|| -> Result<i32> {
        let job: Job = serde_json::from_slice(
            &std::fs::read(job_path).with_context(|| format!("reading {}", job_path.display()))?,
        )?;
        let port = scenarios::nested::find_event_port(Path::new("/sys")).ok_or_else(|| {
            anyhow!(
                "no virtio-serial port named {}",
                vmm::engine::EVENT_PORT_NAME
            )
        })?;
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&port)
            .with_context(|| format!("opening {}", port.display()))?;
        let sink: Arc<dyn EventSink> = Arc::new(JsonLineSink::new(Box::new(f)));
        sink.emit(Event::Step {
            name: "L1 booted".into(),
            elapsed_ms: 0,
            detail: "kvm_amd loaded".into(),
        });
        let out = scenarios::run::run_local(&job, sink, "nested");
        Ok(out.exit_code)
    })();
    res.unwrap_or_else(|e| {
        eprintln!("netmem-lab l1-job: {e:#}");
        EXIT_LAB_ERROR
    })
}

/// Scenario run when none is named.
pub const DEFAULT_SCENARIO: &str = "netkit-devmem-tx";

#[derive(Args, Debug)]
pub struct ScenarioArgs {
    /// Scenario name from the catalog (`netmem-lab list`).
    pub name: Option<String>,
    /// A scenario file instead of a catalog name.
    #[arg(long, conflicts_with = "name")]
    pub file: Option<PathBuf>,
    #[command(flatten)]
    pub machine: MachineArgs,
    /// Write the JSON report here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Write a JUnit XML report here.
    #[arg(long)]
    pub junit: Option<PathBuf>,
    /// Write a pcap of each wire into this directory.
    #[arg(long)]
    pub pcap: Option<PathBuf>,
    /// Switch on a test-only device fault: `NIC=FAULT` (e.g.
    /// `nic0=dma-foreign-iova`, `nic0=dma-foreign-iova:16`) or just `FAULT`
    /// for the scenario's first NIC. Repeatable.
    #[arg(long = "nic-fault", value_name = "[NIC=]FAULT")]
    pub nic_fault: Vec<String>,
}

/// A catalog scenario's TOML by name.
fn catalog_toml(name: &str) -> Result<String> {
    scenarios::scenario::CATALOG
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, t)| t.to_string())
        .ok_or_else(|| anyhow!("unknown scenario {name:?}; `netmem-lab list` shows the catalog"))
}

/// One `--nic-fault [NIC=]FAULT` value against a scenario's NICs (`nics`,
/// in topology order): the NIC (the first one when not named) and the fault.
fn parse_nic_fault(f: &str, nics: &[String]) -> Result<(String, sim_nic::NicFault)> {
    let (nic, fault) = match f.split_once('=') {
        Some((n, x)) => (n.to_string(), x),
        None => (
            nics.first()
                .cloned()
                .ok_or_else(|| anyhow!("--nic-fault {f:?}: the scenario has no NIC"))?,
            f,
        ),
    };
    if !nics.contains(&nic) {
        return Err(anyhow!(
            "--nic-fault {f:?}: no NIC {nic:?} in the scenario (it has {nics:?})"
        ));
    }
    let fault = fault
        .parse()
        .map_err(|e| anyhow!("--nic-fault {f:?}: {e}"))?;
    Ok((nic, fault))
}

/// `--nic-fault` values onto the topology's faults.
fn add_nic_faults(spec: &mut scenarios::topology::TopologySpec, faults: &[String]) -> Result<()> {
    for f in faults {
        let (nic, fault) = parse_nic_fault(f, &spec.nics)?;
        spec.nic_faults.entry(nic).or_default().push(fault);
    }
    Ok(())
}

/// A scenario's TOML and origin: `--file F`, else a catalog name (the
/// default scenario when none).
fn scenario_source(file: &Option<PathBuf>, name: &Option<String>) -> Result<(String, String)> {
    Ok(match file {
        Some(f) => (
            std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?,
            f.display().to_string(),
        ),
        None => {
            let name = name.clone().unwrap_or_else(|| DEFAULT_SCENARIO.to_string());
            (catalog_toml(&name)?, name)
        }
    })
}

/// One scenario run's results as the CLI hands them out.
struct ScenarioRun {
    exit_code: i32,
    report: serde_json::Value,
    junit: Option<String>,
    summary: Option<String>,
}

fn run_scenario_toml(
    machine: &MachineArgs,
    toml: &str,
    origin: &str,
    nic_faults: &[String],
    pcap: &Option<PathBuf>,
    sink: Arc<dyn EventSink>,
) -> Result<ScenarioRun> {
    let scn = scenarios::scenario::Scenario::parse(toml, origin).map_err(|e| anyhow!("{e}"))?;
    let mut p = prepare(
        machine,
        JobCommand::Scenario {
            toml: toml.to_string(),
            origin: origin.to_string(),
        },
        &*sink,
    )?;
    p.job.machine.topology = scn.topology_spec();
    add_nic_faults(&mut p.job.machine.topology, nic_faults)?;
    if let Some(d) = pcap {
        std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
        p.job.machine.topology.pcap_dir = Some(d.canonicalize()?);
    }
    let out = execute(&p, sink.clone())?;
    let mut report = out.report.clone();
    let junit = report
        .get("junit")
        .and_then(|j| j.as_str())
        .map(str::to_string);
    let summary = report
        .get("summary")
        .and_then(|j| j.as_str())
        .map(str::to_string);
    if let Some(o) = report.as_object_mut() {
        o.remove("junit");
        o.remove("summary");
        o.remove("exit_code");
    }
    report["engine"] = serde_json::json!(p.engine.to_string());
    Ok(ScenarioRun {
        exit_code: out.exit_code,
        report,
        junit,
        summary,
    })
}

pub fn scenario(a: ScenarioArgs) -> i32 {
    install_cancel_handlers();
    let sink: Arc<dyn EventSink> = Arc::new(TerminalSink::new(a.machine.console));
    let res = (|| -> Result<i32> {
        let (toml, origin) = scenario_source(&a.file, &a.name)?;
        let r = run_scenario_toml(&a.machine, &toml, &origin, &a.nic_fault, &a.pcap, sink)?;
        write_json(&a.json, &r.report)?;
        if let (Some(path), Some(x)) = (&a.junit, &r.junit) {
            std::fs::write(path, x).with_context(|| format!("writing {}", path.display()))?;
        }
        if let Some(s) = &r.summary {
            print!("{s}");
        }
        Ok(r.exit_code)
    })();
    res.unwrap_or_else(|e| report_error(&e))
}

#[derive(Args, Debug)]
pub struct MatrixArgs {
    /// Kernels to run every scenario on.
    #[arg(long, value_delimiter = ',', default_value = "patched,baseline")]
    pub kernels: Vec<String>,
    /// Only these scenarios (default: the whole catalog).
    #[arg(long, value_delimiter = ',')]
    pub scenarios: Vec<String>,
    #[command(flatten)]
    pub machine: MachineArgs,
    /// Write the JSON matrix (every run's report) here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Write one JUnit XML with a testsuite per run here.
    #[arg(long)]
    pub junit: Option<PathBuf>,
}

/// Every catalog scenario on every kernel it applies to: a table of
/// verdicts on stdout; exit 0 when every run's verdict was as expected, 1
/// when one differed, 2 when one could not run.
pub fn matrix(a: MatrixArgs) -> i32 {
    install_cancel_handlers();
    let sink: Arc<dyn EventSink> = Arc::new(TerminalSink::new(a.machine.console));
    let t0 = std::time::Instant::now();
    let res = (|| -> Result<i32> {
        let names: Vec<String> = if a.scenarios.is_empty() {
            scenarios::scenario::CATALOG
                .iter()
                .map(|(n, _)| n.to_string())
                .collect()
        } else {
            a.scenarios.clone()
        };
        let mut parsed = Vec::new();
        for name in &names {
            let toml = catalog_toml(name)?;
            let scn =
                scenarios::scenario::Scenario::parse(&toml, name).map_err(|e| anyhow!("{e}"))?;
            parsed.push((name.clone(), toml, scn));
        }
        // (scenario, kernel) → row.
        let mut rows: std::collections::BTreeMap<(String, String), serde_json::Value> =
            Default::default();
        let mut worst = 0;
        let mut junit = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<testsuites>\n");
        let mut vms = serde_json::Map::new();
        for k in &a.kernels {
            if scenarios::run::CANCEL.load(Ordering::SeqCst) {
                return Err(anyhow!("interrupted"));
            }
            // Scenarios of one topology next to each other: one machine each.
            let mut todo: Vec<&(String, String, scenarios::scenario::Scenario)> = Vec::new();
            for p in &parsed {
                if p.2.applies_to(k) {
                    todo.push(p);
                } else {
                    rows.insert(
                        (p.0.clone(), k.clone()),
                        serde_json::json!({"scenario": p.0, "kernel": k,
                            "verdict": "n/a", "exit_code": 0, "ms": 0}),
                    );
                }
            }
            let shapes: Vec<_> = todo
                .iter()
                .map(|p| scenarios::session::shape(&p.2.topology_spec()))
                .collect();
            let mut order: Vec<usize> = (0..todo.len()).collect();
            order.sort_by_key(|&i| shapes.iter().position(|s| *s == shapes[i]).unwrap_or(i));
            let todo: Vec<_> = order.into_iter().map(|i| todo[i]).collect();
            if todo.is_empty() {
                continue;
            }
            let mut m = a.machine.clone();
            m.kernel = k.clone();
            sink.emit(Event::Step {
                name: format!("matrix: {} scenario(s) on {k}", todo.len()),
                elapsed_ms: t0.elapsed().as_millis() as u64,
                detail: todo
                    .iter()
                    .map(|p| p.0.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            });
            let items = todo
                .iter()
                .map(|p| scenarios::session::BatchItem {
                    toml: p.1.clone(),
                    origin: p.0.clone(),
                })
                .collect();
            let out = prepare(&m, JobCommand::Batch { items }, &*sink)
                .and_then(|p| execute(&p, sink.clone()).map(|o| (o, p.engine.to_string())));
            let (out, engine) = match out {
                Ok(x) => x,
                Err(e) => (
                    scenarios::run::Outcome {
                        exit_code: EXIT_LAB_ERROR,
                        report: serde_json::json!({"verdict": "error", "error": format!("{e:#}")}),
                    },
                    String::new(),
                ),
            };
            vms.insert(
                k.clone(),
                serde_json::json!({
                    "vms_booted": out.report["vms_booted"],
                    "reset_ms": out.report["reset_ms"],
                    "machines_replaced": out.report["machines_replaced"],
                    "engine_retries": out.report.get("engine_retries"),
                }),
            );
            let runs = out.report["runs"].as_array().cloned().unwrap_or_default();
            for (i, p) in todo.iter().enumerate() {
                let mut report = runs.get(i).cloned().unwrap_or_else(|| {
                    // The whole job failed (the engine, the L1): each of its
                    // scenarios says so.
                    serde_json::json!({"verdict": "error",
                        "error": out.report["error"].as_str().unwrap_or("the batch job ended without this scenario's report"),
                        "exit_code": out.exit_code.max(EXIT_LAB_ERROR)})
                });
                let code = report["exit_code"]
                    .as_i64()
                    .unwrap_or(i64::from(EXIT_LAB_ERROR)) as i32;
                worst = worst.max(code);
                if let Some(x) = report.get("junit").and_then(|j| j.as_str()) {
                    // Keep the testsuites of each run's own XML.
                    for l in x
                        .lines()
                        .filter(|l| !l.starts_with("<?xml") && !l.contains("testsuites>"))
                    {
                        junit.push_str(l);
                        junit.push('\n');
                    }
                }
                let ms = report["ms"].as_u64().unwrap_or(0);
                if let Some(o) = report.as_object_mut() {
                    o.remove("junit");
                    o.remove("summary");
                }
                if !engine.is_empty() {
                    report["engine"] = serde_json::json!(engine);
                }
                rows.insert(
                    (p.0.clone(), k.clone()),
                    serde_json::json!({"scenario": p.0, "kernel": k,
                        "verdict": report["verdict"], "exit_code": code, "ms": ms,
                        "error": report.get("error"), "report": report}),
                );
            }
        }
        let rows: Vec<serde_json::Value> = names
            .iter()
            .flat_map(|n| a.kernels.iter().map(move |k| (n.clone(), k.clone())))
            .filter_map(|key| rows.remove(&key))
            .collect();
        junit.push_str("</testsuites>\n");
        println!(
            "{:<24} {:<10} {:<14} {:>8}",
            "scenario", "kernel", "verdict", "time"
        );
        for r in &rows {
            println!(
                "{:<24} {:<10} {:<14} {:>7.0}s",
                r["scenario"].as_str().unwrap_or("?"),
                r["kernel"].as_str().unwrap_or("?"),
                match (r["verdict"].as_str(), r["exit_code"].as_i64()) {
                    (Some(v), Some(0)) => v.to_string(),
                    (Some(v), Some(c)) => format!("{v} (exit {c})"),
                    _ => "?".into(),
                },
                r["ms"].as_u64().unwrap_or(0) as f64 / 1000.0
            );
        }
        let total_ms = t0.elapsed().as_millis() as u64;
        println!("wall time {:.0} s; exit {worst}", total_ms as f64 / 1000.0);
        write_json(
            &a.json,
            &serde_json::json!({"kernels": a.kernels, "runs": rows, "machines": vms, "wall_ms": total_ms, "exit_code": worst}),
        )?;
        if let Some(p) = &a.junit {
            std::fs::write(p, &junit).with_context(|| format!("writing {}", p.display()))?;
        }
        Ok(worst)
    })();
    res.unwrap_or_else(|e| report_error(&e))
}

#[derive(Args, Debug)]
pub struct CampaignArgs {
    /// Base scenario from the catalog (default: the default scenario).
    #[arg(long)]
    pub scenario: Option<String>,
    /// A base scenario file instead of a catalog name.
    #[arg(long, conflicts_with = "scenario")]
    pub file: Option<PathBuf>,
    #[command(flatten)]
    pub machine: MachineArgs,
    /// Passing cases wanted (each boots a VM).
    #[arg(long, default_value_t = 4)]
    pub cases: u32,
    /// Everything the campaign draws comes from this seed.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Operations per schedule at most.
    #[arg(long, default_value_t = 6)]
    pub max_ops: usize,
    /// Cases run while shrinking a violation at most (each boots a VM).
    #[arg(long, default_value_t = 8)]
    pub shrink_iters: u32,
    /// Where the minimal failing case is written as a scenario file.
    #[arg(long, default_value = "scenarios/regressions")]
    pub regressions: PathBuf,
    /// Write the campaign's JSON report here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Print the cases the seed draws (scenario TOML) without running them.
    #[arg(long)]
    pub dry_run: bool,
    /// Switch on a test-only device fault in the base scenario's topology
    /// (`NIC=FAULT` or `FAULT` for its first NIC, e.g. `dma-foreign-iova`):
    /// every case runs with it, and a regression file keeps it.
    #[arg(long = "nic-fault", value_name = "[NIC=]FAULT")]
    pub nic_fault: Vec<String>,
}

/// `--nic-fault` values into a scenario's own topology (so a file written
/// from it keeps them).
fn scenario_nic_faults(scn: &mut scenarios::scenario::Scenario, faults: &[String]) -> Result<()> {
    let nics: Vec<String> = scn.topology.nics.iter().map(|n| n.name.clone()).collect();
    for f in faults {
        let (nic, fault) = parse_nic_fault(f, &nics)?;
        if let Some(n) = scn.topology.nics.iter_mut().find(|n| n.name == nic) {
            n.faults.push(fault);
        }
    }
    Ok(())
}

/// `netmem-lab campaign`: property-based fault schedules around a base
/// scenario, all cases on one booted VM (one job); a violation is shrunk and written as a
/// regression scenario. Exit 0: no violation, 1: a violation (regression
/// written), 2: the lab could not run the campaign.
pub fn campaign(a: CampaignArgs) -> i32 {
    use scenarios::campaign::{
        CampaignBase, CampaignConfig, Schedule, regression_name, run_campaign, scenario_toml,
        strategy,
    };
    install_cancel_handlers();
    let sink: Arc<dyn EventSink> = Arc::new(TerminalSink::new(a.machine.console));
    let res = (|| -> Result<i32> {
        let (toml, origin) = scenario_source(&a.file, &a.scenario)?;
        let mut scn =
            scenarios::scenario::Scenario::parse(&toml, &origin).map_err(|e| anyhow!("{e}"))?;
        scenario_nic_faults(&mut scn, &a.nic_fault)?;
        let base = CampaignBase::new(&scn).map_err(|e| anyhow!("{e}"))?;
        let cfg = CampaignConfig {
            cases: a.cases.max(1),
            seed: a.seed,
            max_ops: a.max_ops.max(1),
            max_shrink_iters: a.shrink_iters,
            ..CampaignConfig::default()
        };
        let strat = strategy::schedule(&base, cfg.max_ops);
        let case_name = |n: u32| format!("campaign-{}-seed{}-case{n}", base.scenario.name, a.seed);
        if a.dry_run {
            let mut n = 0;
            run_campaign(
                &cfg,
                &strat,
                |s: &Schedule| {
                    let text = scenario_toml(&s.to_scenario(&base, &case_name(n), "dry run"))
                        .unwrap_or_else(|e| format!("# not serialisable: {e}\n"));
                    println!("# ---- case {n}: {} ops", s.ops.len());
                    for (i, op) in s.ops.iter().enumerate() {
                        println!("#   {i:02}: {}", op.describe());
                    }
                    println!("{text}");
                    n += 1;
                    Ok(())
                },
                |_| {},
            );
            return Ok(0);
        }
        let name = regression_name(&base.scenario.name, a.seed);
        let mut p = prepare(
            &a.machine,
            JobCommand::Campaign {
                toml: scenario_toml(&base.scenario).map_err(|e| anyhow!("{e}"))?,
                origin: origin.clone(),
                config: scenarios::job::CampaignJob {
                    cases: cfg.cases,
                    seed: cfg.seed,
                    max_ops: cfg.max_ops,
                    shrink_iters: cfg.max_shrink_iters,
                    regression_name: name.clone(),
                },
            },
            &*sink,
        )?;
        p.job.machine.topology = base.scenario.topology_spec();
        let out = execute(&p, sink.clone())?;
        let mut report = out.report.clone();
        if let Some(o) = report.as_object_mut() {
            o.remove("exit_code");
        }
        report["engine"] = serde_json::json!(p.engine.to_string());
        let mut code = out.exit_code;
        let kernel = &a.machine.kernel;
        if report["command"] != serde_json::json!("campaign") {
            // The job itself failed (the engine, the L1).
            write_json(&a.json, &report)?;
            return Err(anyhow!(
                "campaign: {}",
                report["error"].as_str().unwrap_or("the job failed")
            ));
        }
        let faults = &report["faults_injected"];
        println!(
            "campaign {} on {kernel}: {} case(s) run, {} violation(s), {} VM(s), seed {}, {:.0} s",
            base.scenario.name,
            report["cases_run"],
            report["violations"],
            report["vms_booted"],
            a.seed,
            report["wall_ms"].as_u64().unwrap_or(0) as f64 / 1000.0
        );
        println!(
            "  payload: {} bytes sent, {} verified; cases with bytes lost or corrupted: {}",
            report["bytes"]["sent"],
            report["bytes"]["verified"],
            report["bytes"]["cases_lost_or_corrupted"]
                .as_array()
                .map_or(0, Vec::len)
        );
        if let Some(f) = faults.as_object() {
            let list: Vec<String> = f.iter().map(|(k, v)| format!("{k} {v}")).collect();
            println!("  faults injected: {}", list.join(", "));
        }
        if let Some(found) = report.get("found").cloned() {
            let text = found["regression_toml"].as_str().unwrap_or_default();
            let path = scenarios::campaign::write_regression_text(&a.regressions, &name, text)
                .with_context(|| {
                    format!("writing the regression into {}", a.regressions.display())
                })?;
            println!(
                "  VIOLATION of {}: {}",
                found["invariant"].as_str().unwrap_or("?"),
                found["detail"].as_str().unwrap_or("")
            );
            println!(
                "  minimal schedule ({} ops), {} on a second run:",
                found["minimal_ops"].as_array().map_or(0, Vec::len),
                if found["confirmed"] == serde_json::json!(true) {
                    "failed again"
                } else {
                    "did NOT fail again"
                }
            );
            for (i, op) in found["minimal_ops"]
                .as_array()
                .into_iter()
                .flatten()
                .enumerate()
            {
                println!("    {i:02}: {}", op.as_str().unwrap_or("?"));
            }
            println!(
                "  written to {}; replay: netmem-lab scenario --file {} --kernel {kernel}",
                path.display(),
                path.display(),
            );
            report["found"]["regression"] = serde_json::json!(path);
            if let Some(o) = report["found"].as_object_mut() {
                o.remove("regression_toml");
            }
            code = code.max(1);
        }
        report["exit_code"] = serde_json::json!(code);
        write_json(&a.json, &report)?;
        Ok(code)
    })();
    res.unwrap_or_else(|e| report_error(&e))
}
