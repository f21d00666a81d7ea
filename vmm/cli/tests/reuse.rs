//! One booted VM for many scenarios: `matrix` (scenarios of one topology
//! share a VM, the guest reset between them) and `campaign` (every case on
//! one VM). Like `boot.rs`, these need `.ci/setup` and run one VM at a time.

use std::path::Path;
use std::process::Command;

use serde_json::Value;

static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

const NIC0: &str = "0000:00:04.0";
const NIC1: &str = "0000:00:05.0";

/// Runs `netmem-lab ARGS… --json F`: (exit code, report, stdout+stderr).
fn lab(args: &[&str]) -> (Option<i32>, Value, String) {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("r.json");
    let out = Command::new(env!("CARGO_BIN_EXE_netmem-lab"))
        .args(args)
        .arg("--json")
        .arg(&report)
        .output()
        .expect("netmem-lab runs");
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (
        out.status.code(),
        read_json(&report).unwrap_or(Value::Null),
        text,
    )
}

fn read_json(p: &Path) -> Option<Value> {
    serde_json::from_slice(&std::fs::read(p).ok()?).ok()
}

/// Two scenarios of one topology on one VM: both pass, the second ran
/// after a guest reset, and its verifier (resumed from the IOMMU state the
/// first left) still resolves the netkit binding to nic0 and sees only
/// nic0 read the dmabuf.
#[test]
fn matrix_runs_scenarios_of_one_topology_on_one_vm() {
    let (code, m, text) = lab(&[
        "matrix",
        "--kernels",
        "patched",
        "--scenarios",
        "netkit-no-lease,netkit-devmem-tx",
    ]);
    assert_eq!(code, Some(0), "{text}");
    let machine = &m["machines"]["patched"];
    // One VM, unless the nested engine lost one (then the scenario ran
    // again on a fresh one, and says why).
    let replaced = machine["machines_replaced"].as_array().map_or(0, Vec::len);
    assert_eq!(machine["vms_booted"], 1 + replaced as u64, "{machine}");
    assert!(
        machine["reset_ms"].as_array().map(Vec::len) >= Some(1) || replaced > 0,
        "{machine}"
    );
    let runs = m["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 2);
    for r in runs {
        assert_eq!(r["verdict"], "pass", "{}", r["report"]);
    }
    let tx = runs
        .iter()
        .find(|r| r["scenario"] == "netkit-devmem-tx")
        .unwrap();
    let rep = &tx["report"];
    if replaced == 0 {
        assert_eq!(rep["vm"]["scenario_on_this_vm"], 2, "{}", rep["vm"]);
    }
    let b = &rep["dma"]["bindings"][0];
    assert_eq!(b["resolved_nic"], "nic0", "{b}");
    assert!(rep["dma"]["by_device"][NIC0]["dmabuf_reads"].as_u64() > Some(0));
    assert_eq!(rep["dma"]["by_device"][NIC1]["dmabuf_reads"], 0);
    assert_eq!(rep["dma"]["violations"].as_array().map(Vec::len), Some(0));
    assert!(rep["payload"]["verified_bytes"].as_u64() >= Some(16 << 20));
    // The JUnit has both runs' suites.
    assert_eq!(
        m["runs"][0]["report"]["kernel"]["spec"], "patched",
        "{}",
        m["runs"][0]
    );
}

/// A short campaign: every case on one VM (a fresh one only for a case the
/// nested engine lost), no violation, the cases' payload intact, and
/// faults injected. Seed 5 draws two cases: wire drops, corruption,
/// duplicates and delay on the data direction; then 19 % drops, an RX
/// starvation and delayed TX completions on nic1, and a sender that closes
/// after 1.2 MB.
#[test]
fn short_campaign_on_one_vm() {
    let (code, c, text) = lab(&["campaign", "--cases", "2", "--seed", "5", "--max-ops", "3"]);
    assert_eq!(code, Some(0), "{text}");
    assert_eq!(c["cases_run"], 2, "{text}");
    assert_eq!(c["violations"], 0, "{text}");
    let replaced = c["machines_replaced"].as_array().map_or(0, Vec::len);
    assert_eq!(c["vms_booted"], 1 + replaced as u64, "{text}");
    assert_eq!(
        c["bytes"]["cases_lost_or_corrupted"]
            .as_array()
            .map(Vec::len),
        Some(0)
    );
    let injected: u64 = c["faults_injected"]
        .as_object()
        .unwrap()
        .values()
        .filter_map(Value::as_u64)
        .sum();
    assert!(injected > 0, "{}", c["faults_injected"]);
}
