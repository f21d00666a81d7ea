//! End-to-end devmem and netkit scenarios through the `netmem-lab` binary:
//! the real Debian kernels, the stock gve driver on the sim-nics, real
//! udmabufs and netdev netlink bindings in the guest, and the verifier's
//! verdict computed from the VMM's DMA audit trail.
//!
//! Like `boot.rs`, they need `.ci/setup` (kernels in the cache, QEMU for
//! the nested engine) and run one VM at a time.

use std::path::Path;
use std::process::Command;

use serde_json::Value;

static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// The sim-nics' PCI addresses (first NIC slot 4: scenarios::topology).
const NIC0: &str = "0000:00:04.0";
const NIC1: &str = "0000:00:05.0";
const NIC2: &str = "0000:00:06.0";

/// Runs `netmem-lab scenario ARGS… --json F`: (exit code, report, stdout+stderr).
fn scenario(args: &[&str]) -> (Option<i32>, Value, String) {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("r.json");
    let out = Command::new(env!("CARGO_BIN_EXE_netmem-lab"))
        .arg("scenario")
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
    let r = read_json(&report).unwrap_or(Value::Null);
    (out.status.code(), r, text)
}

fn read_json(p: &Path) -> Option<Value> {
    serde_json::from_slice(&std::fs::read(p).ok()?).ok()
}

fn dmabuf(r: &Value, bdf: &str, key: &str) -> u64 {
    r["dma"]["by_device"][bdf][key].as_u64().unwrap_or(0)
}

/// Exit 0, the verdict, no violation, every invariant held.
fn assert_clean(code: Option<i32>, r: &Value, text: &str, verdict: &str) {
    assert_eq!(code, Some(0), "{text}");
    assert_eq!(r["verdict"], verdict, "{text}");
    assert_eq!(
        r["dma"]["violations"].as_array().map(Vec::len),
        Some(0),
        "{}",
        r["dma"]["violations"]
    );
    for i in r["invariants"].as_array().unwrap() {
        assert_eq!(i["ok"], true, "{i}");
    }
    assert_eq!(r["dma"]["iommu_faults"].as_array().map(Vec::len), Some(0));
}

/// The bindings the verifier resolved that a step's tool used.
fn used_bindings(r: &Value) -> Vec<&Value> {
    r["dma"]["bindings"]
        .as_array()
        .map(|b| b.iter().filter(|b| b["used"] == true).collect())
        .unwrap_or_default()
}

fn step<'a>(r: &'a Value, name_part: &str) -> &'a Value {
    r["steps"]
        .as_array()
        .and_then(|s| {
            s.iter()
                .find(|s| s["name"].as_str().is_some_and(|n| n.contains(name_part)))
        })
        .unwrap_or_else(|| panic!("no step {name_part:?} in {r}"))
}

#[test]
fn phys_devmem_tx_only_nic0_reads_the_dmabuf() {
    let (code, r, text) = scenario(&["phys-devmem-tx"]);
    assert_clean(code, &r, &text, "pass");
    assert!(r["payload"]["verified_bytes"].as_u64().unwrap() >= 16 << 20);
    assert!(dmabuf(&r, NIC0, "dmabuf_reads") > 0, "{}", r["dma"]);
    assert_eq!(dmabuf(&r, NIC1, "dmabuf_reads"), 0);
    assert_eq!(dmabuf(&r, NIC1, "dmabuf_writes"), 0);
    let b = used_bindings(&r);
    assert_eq!(b.len(), 1, "{}", r["dma"]["bindings"]);
    assert_eq!(b[0]["resolved_device"], NIC0);
    // The spare binding was resolved too, and its IOVAs stayed unused.
    assert_eq!(r["dma"]["bindings"].as_array().unwrap().len(), 2);
}

#[test]
fn dma_foreign_iova_fault_makes_phys_devmem_tx_fail_naming_the_violation() {
    let (code, r, text) = scenario(&["phys-devmem-tx", "--nic-fault", "nic0=dma-foreign-iova"]);
    assert_eq!(code, Some(1), "{text}");
    assert_eq!(r["verdict"], "fail", "{text}");
    let v = r["dma"]["violations"].as_array().unwrap();
    assert!(
        v.iter().any(|v| v["invariant"] == "binding-iova-in-use"
            && v["device"] == NIC0
            && v["binding"].is_u64()),
        "{}",
        r["dma"]["violations"]
    );
    assert!(text.contains("binding-iova-in-use"), "{text}");
    // The bytes were the right ones: only the verifier can tell.
    assert_eq!(
        r["payload"]["verified_bytes"], r["payload"]["sent_bytes"],
        "{text}"
    );
}

#[test]
fn phys_devmem_rx_only_nic0_writes_the_dmabuf() {
    let (code, r, text) = scenario(&["phys-devmem-rx"]);
    assert_clean(code, &r, &text, "pass");
    assert!(r["payload"]["verified_bytes"].as_u64().unwrap() >= 16 << 20);
    assert!(dmabuf(&r, NIC0, "dmabuf_writes") > 0, "{}", r["dma"]);
    assert_eq!(dmabuf(&r, NIC1, "dmabuf_writes"), 0);
    let b = used_bindings(&r);
    assert!(
        !b.is_empty()
            && b.iter()
                .all(|b| b["resolved_device"] == NIC0 && b["dir"] == "rx")
    );
}

#[test]
fn unbind_during_tx_fails_sends_with_einval_and_keeps_queued_bytes() {
    let (code, r, text) = scenario(&["unbind-during-tx"]);
    assert_clean(code, &r, &text, "pass");
    let s = step(&r, "unbound after");
    assert_eq!(s["errno"], libc::EINVAL, "{s}");
    let sent = s["data"]["payload"]["sent_bytes"].as_u64().unwrap();
    assert!((1 << 20..8 << 20).contains(&sent), "{s}");
    assert_eq!(s["data"]["payload"]["verified_bytes"].as_u64(), Some(sent));
    assert!(
        used_bindings(&r)
            .iter()
            .all(|b| b["unmapped_at_seq"].is_u64())
    );
}

#[test]
fn stray_dma_nic_drops_devmem_skbs_at_the_unbound_nic() {
    let (code, r, text) = scenario(&["stray-dma-nic"]);
    assert_clean(code, &r, &text, "pass");
    assert_eq!(step(&r, "tx_dropped grew")["ok"], true);
    assert_eq!(dmabuf(&r, NIC2, "dmabuf_reads"), 0);
    assert!(dmabuf(&r, NIC0, "dmabuf_reads") <= 1 << 20);
}

#[test]
fn netkit_devmem_tx_is_the_default_and_binds_on_the_lessor() {
    let (code, r, text) = scenario(&[]);
    assert_clean(code, &r, &text, "pass");
    assert_eq!(r["scenario"], "netkit-devmem-tx");
    assert!(r["payload"]["verified_bytes"].as_u64().unwrap() >= 16 << 20);
    let b = used_bindings(&r);
    assert_eq!(b.len(), 1, "{}", r["dma"]["bindings"]);
    assert_eq!(b[0]["ifname"], "nkg");
    assert_eq!(b[0]["resolved_device"], NIC0);
    assert!(dmabuf(&r, NIC0, "dmabuf_reads") > 0);
    assert_eq!(dmabuf(&r, NIC1, "dmabuf_reads"), 0);
}

#[test]
fn netkit_devmem_tx_on_the_baseline_is_an_expected_failure() {
    let (code, r, text) = scenario(&["netkit-devmem-tx", "--kernel", "baseline"]);
    assert_clean(code, &r, &text, "expected-fail");
    let s = step(&r, "devmem tx");
    assert_eq!(s["errno"], libc::EOPNOTSUPP, "{s}");
    assert!(
        s["extack"]
            .as_str()
            .is_some_and(|e| e.contains("Driver does not support netmem TX")),
        "{s}"
    );
}

#[test]
fn netkit_without_a_lease_cannot_bind_tx() {
    let (code, r, text) = scenario(&["netkit-no-lease"]);
    assert_clean(code, &r, &text, "pass");
    let s = step(&r, "bind-tx on nkg");
    assert_eq!(s["errno"], libc::EOPNOTSUPP, "{s}");
}

#[test]
fn netkit_redirect_paths_carry_devmem_tx_through_nic0() {
    for name in ["netkit-redirect-bpf", "netkit-forwarding"] {
        let (code, r, text) = scenario(&[name]);
        assert_clean(code, &r, &text, "pass");
        assert!(r["payload"]["verified_bytes"].as_u64().unwrap() >= 16 << 20);
        let b = used_bindings(&r);
        assert!(
            !b.is_empty() && b.iter().all(|b| b["resolved_device"] == NIC0),
            "{name}: {}",
            r["dma"]["bindings"]
        );
    }
}

#[test]
fn netkit_devmem_routed_to_a_second_nic_is_dropped_there() {
    let (code, r, text) = scenario(&["netkit-second-nic"]);
    assert_clean(code, &r, &text, "pass");
    assert_eq!(step(&r, "tx_dropped grew")["ok"], true);
    assert_eq!(dmabuf(&r, NIC2, "dmabuf_reads"), 0);
}
