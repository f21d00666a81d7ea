//! End-to-end tests of the `netmem-lab` binary: real kernels, real VMs.
//!
//! They need the kernel packages in the cache (`.ci/setup` fetches them) and
//! QEMU for the nested engine; `auto` picks the engine as a user would get it.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// VM-booting tests run one at a time: each nested run uses both cores.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_netmem-lab")
}

fn run(args: &[&str]) -> Output {
    Command::new(bin())
        .args(args)
        .output()
        .expect("netmem-lab runs")
}

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).expect("report written")).expect("report is JSON")
}

fn check_boot(kernel: &str, release_prefix: &str) {
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("b.json");
    let out = run(&[
        "boot",
        "--kernel",
        kernel,
        "--json",
        report.to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(0),
        "boot {kernel} failed:\n{stderr}"
    );
    let r = json(&report);
    assert_eq!(r["verdict"], "pass");
    let release = r["kernel"]["release"].as_str().unwrap();
    assert!(release.starts_with(release_prefix), "release {release}");
    let engine = r["engine"].as_str().unwrap();
    let expected_engine = match vmm::engine::host_kvm() {
        vmm::engine::HostKvm::Hardware(_) => "kvm",
        _ => "nested",
    };
    assert_eq!(
        engine, expected_engine,
        "auto must pick {expected_engine} on this host"
    );
    assert!(r["timing_ms"]["boot_to_agent"].as_u64().unwrap() > 0);
    let pci = r["hello"]["pci"].as_array().unwrap();
    // Host bridge + at least the agent's virtio-console, each virtio function bound.
    assert!(
        pci.iter()
            .any(|f| f["vendor"] == 0x8086 && f["class"] == 0x060000),
        "{pci:?}"
    );
    let virtio: Vec<_> = pci.iter().filter(|f| f["vendor"] == 0x1af4).collect();
    assert!(virtio.len() >= 2, "{pci:?}");
    assert!(
        virtio.iter().all(|f| f["driver"] == "virtio-pci"),
        "{pci:?}"
    );
    assert!(
        r["hello"]["cmdline"]
            .as_str()
            .unwrap()
            .contains("iommu.strict=1")
    );
    // IOMMU: the virtio-iommu function is bound, every endpoint it
    // translates (the rng) sits in a group with a DMA (translated) domain,
    // DMA through it was counted, and a clean boot has no faults.
    let iommu = pci
        .iter()
        .find(|f| f["vendor"] == 0x1af4 && f["device"] == 0x1057)
        .expect("virtio-iommu function");
    assert_eq!(iommu["driver"], "virtio-pci");
    assert!(
        r["hello"]["modules"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m == "virtio_iommu"),
        "virtio_iommu loaded"
    );
    let rng = pci
        .iter()
        .find(|f| f["vendor"] == 0x1af4 && f["device"] == 0x1044)
        .expect("virtio-rng function");
    let group = rng["iommu_group"]
        .as_u64()
        .expect("rng is in an IOMMU group");
    let groups = r["hello"]["iommu_groups"].as_array().unwrap();
    let g = groups
        .iter()
        .find(|g| g["id"] == group)
        .expect("group listed");
    assert_eq!(g["type"], "DMA", "strict DMA domain: {g}");
    let rng_bdf = rng["bdf"].as_str().unwrap();
    let counted = &r["dma"]["by_device"][rng_bdf];
    assert!(
        counted["reads"].as_u64().unwrap() > 0 && counted["writes"].as_u64().unwrap() > 0,
        "{counted}"
    );
    assert_eq!(
        r["dma"]["iommu_faults"].as_array().unwrap().len(),
        0,
        "clean boot: no IOMMU faults"
    );
    // The console stream made it to the host's timeline.
    assert!(stderr.contains("agent ready"), "{stderr}");
}

#[test]
fn boots_patched_kernel_to_agent() {
    check_boot("patched", "7.3.4");
}

#[test]
fn boots_baseline_kernel_to_agent() {
    check_boot("baseline", "7.1.13");
}

#[test]
fn corrupt_kernel_and_missing_path_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("vmlinuz-corrupt");
    let mut bytes = vec![0u8; 64 * 1024];
    for (i, b) in bytes.iter_mut().enumerate() {
        *b = (i * 7 % 251) as u8;
    }
    std::fs::write(&bad, &bytes).unwrap();
    let out = run(&["boot", "--kernel", bad.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("not a 64-bit x86 kernel"), "{err}");

    let missing = dir.path().join("no-such-kernel");
    let out = run(&["boot", "--kernel", missing.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains(missing.to_str().unwrap()), "{err}");

    let out = run(&["boot", "--kernel", "no-such-id"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("patched") && err.contains("baseline"),
        "the message lists known ids: {err}"
    );
}

#[test]
fn kvm_engine_refusal_names_nested() {
    if matches!(vmm::engine::host_kvm(), vmm::engine::HostKvm::Hardware(_)) {
        eprintln!("hardware KVM here: --engine kvm is valid, nothing to refuse");
        return;
    }
    let out = run(&["boot", "--engine", "kvm"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("--engine nested"), "{err}");
}

/// Every process whose command line mentions `needle`.
fn processes_mentioning(needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        if !e
            .file_name()
            .to_string_lossy()
            .chars()
            .all(|c| c.is_ascii_digit())
        {
            continue;
        }
        if let Ok(c) = std::fs::read(e.path().join("cmdline")) {
            let c = String::from_utf8_lossy(&c).replace('\0', " ");
            if c.contains(needle) {
                found.push(format!("{}: {c}", e.file_name().to_string_lossy()));
            }
        }
    }
    found
}

fn run_dirs_of(pid: u32) -> Vec<PathBuf> {
    let runs = kernel::cache_dir().join("runs");
    std::fs::read_dir(&runs)
        .map(|d| {
            d.flatten()
                .map(|e| e.path())
                .filter(|p| {
                    p.file_name()
                        .unwrap()
                        .to_string_lossy()
                        .starts_with(&format!("{pid}-"))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Start a boot, wait until its VM is being started, then end it with
/// `signal`; afterwards no process of the run and (after the next run's
/// sweep, for SIGKILL) no run directory may remain.
fn kill_mid_boot(signal: i32) {
    let _g = serial();
    let mut child = Command::new(bin())
        .args(["boot"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    // Read the timeline until the machine is on its way up.
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut seen = Vec::new();
    loop {
        let line = rx
            .recv_timeout(Duration::from_secs(120))
            .expect("timeline line");
        let mid = line.contains("L1 started") || line.contains("VM started");
        seen.push(line);
        if mid {
            break;
        }
        assert!(Instant::now() < deadline, "never got mid-boot: {seen:?}");
    }
    let dirs = run_dirs_of(pid);
    assert_eq!(dirs.len(), 1, "one run directory while running: {dirs:?}");
    let run_dir = dirs[0].to_string_lossy().to_string();
    assert!(
        !processes_mentioning(&run_dir).is_empty()
            || !matches!(vmm::engine::host_kvm(), vmm::engine::HostKvm::Software(_))
    );
    // SAFETY: signalling our own child.
    unsafe {
        libc::kill(pid as i32, signal);
    }
    let status = child.wait().unwrap();
    assert!(!status.success(), "the run was interrupted: {status:?}");
    // Processes die with their parent (PR_SET_PDEATHSIG) or are killed by the teardown.
    let gone_by = Instant::now() + Duration::from_secs(10);
    while !processes_mentioning(&run_dir).is_empty() && Instant::now() < gone_by {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        processes_mentioning(&run_dir).is_empty(),
        "left running: {:?}",
        processes_mentioning(&run_dir)
    );
    if signal == libc::SIGKILL {
        // Nothing could clean up; the next run sweeps the dead run's directory.
        let _ = run(&["boot", "--kernel", "/nonexistent/for-sweep"]);
    }
    assert!(
        !Path::new(&run_dir).exists(),
        "run directory {run_dir} left behind"
    );
}

#[test]
fn ctrl_c_mid_boot_leaves_nothing() {
    kill_mid_boot(libc::SIGINT);
}

#[test]
fn sigkill_mid_boot_leaves_nothing() {
    kill_mid_boot(libc::SIGKILL);
}

#[test]
fn guest_panic_is_reported_with_console_tail() {
    let _g = serial();
    // No init in the initramfs at that path: the kernel panics after mounting it.
    let out = run(&[
        "boot",
        "--append",
        "rdinit=/no-such-init init=/no-such-init",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("guest kernel panicked"), "{err}");
    assert!(
        err.contains("--- last ") && err.contains("console lines ---"),
        "the console tail is printed: {err}"
    );
    assert!(err.contains("Kernel panic - not syncing"), "{err}");
}

#[test]
fn watchdog_kills_a_guest_that_never_answers() {
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("w.json");
    let out = run(&[
        "boot",
        "--boot-timeout",
        "1",
        "--json",
        report.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("watchdog"), "{err}");
    let r = json(&report);
    assert_eq!(r["verdict"], "error");
    assert!(r["error"].as_str().unwrap().contains("watchdog"));
}

#[test]
fn device_touching_unmapped_iova_after_unbind_is_refused() {
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("u.json");
    // The rng is read while it is being unbound; its driver's DMA mappings go
    // away; then the device touches the IOVA of its last DMA again.
    let out = run(&[
        "boot",
        "--json",
        report.to_str().unwrap(),
        "--exec",
        "cat /dev/hwrng > /dev/null & echo 0000:00:02.0 > /sys/bus/pci/drivers/virtio-pci/unbind",
        "--dma-probe",
        "0000:00:02.0",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    let r = json(&report);
    let probe = &r["dma_probes"][0];
    assert_eq!(probe["refused"], true, "{probe}");
    let faults = r["dma"]["iommu_faults"].as_array().unwrap();
    let f = faults
        .iter()
        .find(|f| f["endpoint"] == 0x10)
        .unwrap_or_else(|| panic!("fault of 00:02.0 recorded: {faults:?}"));
    assert_eq!(f["iova"], probe["iova"]);
    assert!(
        f["reason"] == "unmapped" || f["reason"] == "no-domain",
        "{f}"
    );
    // The guest was told through the event queue.
    assert!(
        r["dma"]["fault_events_sent"].as_u64().unwrap() >= 1,
        "{}",
        r["dma"]
    );
}

/// The catalog's nic-smoke as a user runs it: two sim-nics driven by the
/// stock gve driver (DQO RDA) behind the virtio-iommu, IPv4/IPv6 pings both
/// ways, a 64 MiB TCP transfer whose bytes the receiver checks, and a guest
/// dmesg without gve errors.
#[test]
fn nic_smoke_passes_through_stock_gve() {
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("s.json");
    let junit = dir.path().join("s.xml");
    let out = run(&[
        "scenario",
        "nic-smoke",
        "--json",
        report.to_str().unwrap(),
        "--junit",
        junit.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    let r = json(&report);
    assert_eq!(r["verdict"], "pass", "{r}");
    assert!(
        r["payload"]["verified_bytes"].as_u64().unwrap() >= 64 << 20,
        "{r}"
    );
    let steps = r["steps"].as_array().unwrap();
    for name in [
        "queue format DQO RDA on both NICs",
        "no gve errors or warnings in the guest's dmesg",
    ] {
        assert!(
            steps.iter().any(|s| s["name"] == name && s["ok"] == true),
            "{name}: {r}"
        );
    }
    for nic in ["0000:00:04.0", "0000:00:05.0"] {
        let d = &r["dma"]["by_device"][nic];
        assert!(
            d["reads"].as_u64().unwrap() > 0 && d["writes"].as_u64().unwrap() > 0,
            "{nic}: {d}"
        );
    }
    assert_eq!(r["dma"]["iommu_faults"].as_array().unwrap().len(), 0);
    let x = std::fs::read_to_string(&junit).unwrap();
    assert!(x.contains("<testsuite") && x.contains("tcp"), "{x}");
}
