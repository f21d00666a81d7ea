//! Lab topologies: sim-nics put on the machine's PCI bus behind the
//! virtio-iommu, and the wires that cable them.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use sim_nic::{GveConfig, GveDevice, NicFault, NicHandle, NicPort, Wire, WireFaults, WireOptions};
use vmm::machine::AddDevices;

/// First PCI slot used for NICs (00:04.0, 00:05.0, …); 1–3 hold the
/// console, the rng and the virtio-iommu.
pub const FIRST_NIC_SLOT: u8 = 4;

/// NICs and wires of a machine.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TopologySpec {
    /// Logical NIC names, in slot order: nic0 at 00:04.0, nic1 at 00:05.0, …
    pub nics: Vec<String>,
    /// Back-to-back cables between two NICs.
    pub wires: Vec<(String, String)>,
    /// Write a pcap per wire into this directory.
    #[serde(default)]
    pub pcap_dir: Option<PathBuf>,
    /// Test-only device faults per logical NIC name (`dma-foreign-iova`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub nic_faults: BTreeMap<String, Vec<NicFault>>,
    /// Wire faults from the moment of cabling, keyed by the wire's first
    /// (`a`) end; wires not listed have none.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub wire_faults: BTreeMap<String, WireFaults>,
}

impl TopologySpec {
    /// `n` NICs cabled in pairs: nic0↔nic1, nic2↔nic3, …
    pub fn pairs(n: usize) -> Self {
        let nics: Vec<String> = (0..n).map(|i| format!("nic{i}")).collect();
        let wires = nics
            .chunks(2)
            .filter(|c| c.len() == 2)
            .map(|c| (c[0].clone(), c[1].clone()))
            .collect();
        TopologySpec {
            nics,
            wires,
            pcap_dir: None,
            nic_faults: BTreeMap::new(),
            wire_faults: BTreeMap::new(),
        }
    }

    /// Logical name → PCI address ("0000:00:04.0").
    pub fn bdfs(&self) -> BTreeMap<String, String> {
        self.nics
            .iter()
            .enumerate()
            .map(|(i, n)| {
                (
                    n.clone(),
                    format!("0000:00:{:02x}.0", FIRST_NIC_SLOT as usize + i),
                )
            })
            .collect()
    }
}

#[derive(Default)]
pub struct Pending {
    ports: BTreeMap<String, NicPort>,
    handles: BTreeMap<String, NicHandle>,
}

/// The NICs of a running machine and their wires.
pub struct Topology {
    pub handles: BTreeMap<String, NicHandle>,
    pub wires: Vec<(String, String, Wire)>,
    pub bdfs: BTreeMap<String, String>,
}

impl Topology {
    pub fn stats(&self) -> serde_json::Value {
        let nics: BTreeMap<_, _> = self
            .handles
            .iter()
            .map(|(n, h)| {
                (
                    n.clone(),
                    serde_json::to_value(h.stats()).unwrap_or_default(),
                )
            })
            .collect();
        let wires: Vec<_> = self
            .wires
            .iter()
            .map(|(a, b, w)| {
                let cfg = w.faults();
                serde_json::json!({
                    "a": a,
                    "b": b,
                    "faults": serde_json::to_value(w.counters()).unwrap_or_default(),
                    "faults_in_force": if cfg.is_none() { serde_json::Value::Null } else { serde_json::to_value(cfg).unwrap_or_default() },
                    "link_up": w.link_up(),
                    "pcap_records": w.pcap_records(),
                })
            })
            .collect();
        let nic_faults: BTreeMap<_, _> = self
            .handles
            .iter()
            .map(|(n, h)| {
                let f: Vec<String> = h.faults().iter().map(|f| f.to_string()).collect();
                (n.clone(), f)
            })
            .filter(|(_, f)| !f.is_empty())
            .collect();
        serde_json::json!({"nics": nics, "wires": wires, "nic_faults_in_force": nic_faults})
    }

    /// Replace the test faults of NIC `nic` by `faults` from now on (their
    /// `after` counts start now; empty clears them).
    pub fn set_nic_faults(&self, nic: &str, faults: &[NicFault]) -> Result<(), String> {
        let h = self
            .handles
            .get(nic)
            .ok_or_else(|| format!("no NIC named {nic:?}"))?;
        if faults.is_empty() {
            tracing::info!(nic, "NIC test faults cleared");
        } else {
            tracing::warn!(nic, ?faults, "NIC test faults switched on");
        }
        h.set_faults(faults);
        Ok(())
    }

    /// Put every fault back as `spec` has it: each wire gets the spec's
    /// faults again (link windows counting from now) with its link up, each
    /// NIC the spec's `nic_faults` (none when not listed), counting from
    /// now. Counters go on. For running another scenario on the same
    /// machine.
    pub fn reset_faults(&self, spec: &TopologySpec) -> Result<(), String> {
        for (a, b, w) in &self.wires {
            let faults = spec.wire_faults.get(a).cloned().unwrap_or_default();
            w.set_faults(faults)
                .map_err(|e| format!("wire {a}-{b}: {e}"))?;
            w.set_link(true);
        }
        for (name, h) in &self.handles {
            let faults = spec.nic_faults.get(name).map_or(&[][..], |f| f.as_slice());
            h.set_faults(faults);
            // Release a link an owner forced down.
            h.set_link(true);
        }
        Ok(())
    }

    /// The wire with `nic` at one end.
    pub fn wire_of(&self, nic: &str) -> Option<&Wire> {
        self.wires
            .iter()
            .find(|(a, b, _)| a == nic || b == nic)
            .map(|(_, _, w)| w)
    }

    pub fn shutdown(&self) {
        for (_, _, w) in &self.wires {
            w.flush_pcap();
        }
        for h in self.handles.values() {
            h.shutdown();
        }
    }
}

/// The machine hook that adds the NICs, and the handle to finish the
/// topology (cable the wires) once the machine is built.
pub fn machine_hook(spec: &TopologySpec) -> (AddDevices, Arc<Mutex<Option<Pending>>>) {
    let pending = Arc::new(Mutex::new(Some(Pending::default())));
    let p2 = pending.clone();
    let nics = spec.nics.clone();
    let faults = spec.nic_faults.clone();
    let hook: AddDevices = Box::new(move |devices| {
        let mut guard = p2.lock().map_err(|_| "topology lock".to_string())?;
        let st = guard.as_mut().ok_or("topology already built")?;
        for (i, name) in nics.iter().enumerate() {
            let mut cfg = GveConfig {
                name: name.clone(),
                mac: [0x02, 0x4e, 0x4d, 0x00, 0x00, i as u8 + 1],
                ..GveConfig::default()
            };
            for f in faults.get(name).into_iter().flatten() {
                tracing::warn!(nic = %name, fault = %f, "test fault switched on");
                f.apply(&mut cfg);
            }
            let vectors = cfg.msix_vectors();
            let mut port = None;
            let mut handle = None;
            devices.add_iommu_function(
                FIRST_NIC_SLOT + i as u8,
                &format!("NIC{i}"),
                vectors,
                |dma, msi| {
                    let (dev, p) = GveDevice::new(cfg, dma, msi).map_err(|e| e.to_string())?;
                    handle = Some(dev.handle());
                    port = Some(p);
                    Ok(Arc::new(Mutex::new(dev)))
                },
            )?;
            st.ports.insert(name.clone(), port.ok_or("no port")?);
            st.handles.insert(name.clone(), handle.ok_or("no handle")?);
        }
        Ok(())
    });
    (hook, pending)
}

/// Cable the wires after the machine started.
pub fn finish(
    spec: &TopologySpec,
    pending: &Arc<Mutex<Option<Pending>>>,
) -> Result<Topology, String> {
    let mut st = pending
        .lock()
        .map_err(|_| "topology lock".to_string())?
        .take()
        .ok_or("topology not built")?;
    let mut wires = Vec::new();
    if let Some(d) = &spec.pcap_dir {
        std::fs::create_dir_all(d).map_err(|e| format!("creating {}: {e}", d.display()))?;
    }
    for (a, b) in &spec.wires {
        let pa = st
            .ports
            .remove(a)
            .ok_or_else(|| format!("no free port on {a}"))?;
        let pb = st
            .ports
            .remove(b)
            .ok_or_else(|| format!("no free port on {b}"))?;
        let pcap = spec
            .pcap_dir
            .as_ref()
            .map(|d| d.join(format!("{a}-{b}.pcap")));
        let faults = spec.wire_faults.get(a).cloned().unwrap_or_default();
        if !faults.is_none() {
            tracing::info!(wire = %format!("{a}-{b}"), ?faults, "wire faults switched on");
        }
        let w = Wire::connect(pa, pb, WireOptions { pcap, faults })
            .map_err(|e| format!("wire {a}-{b}: {e}"))?;
        wires.push((a.clone(), b.clone(), w));
    }
    Ok(Topology {
        handles: st.handles,
        wires,
        bdfs: spec.bdfs(),
    })
}

impl crate::steps::HostControl for Topology {
    fn wire(
        &mut self,
        nic: &str,
        action: &crate::steps::WireAction,
    ) -> Result<serde_json::Value, String> {
        apply_wire_action(self, nic, action)
    }

    fn nic_faults(&mut self, nic: &str, faults: &[NicFault]) -> Result<serde_json::Value, String> {
        apply_nic_faults(self, nic, faults)
    }
}

impl crate::steps::HostControl for &Topology {
    fn wire(
        &mut self,
        nic: &str,
        action: &crate::steps::WireAction,
    ) -> Result<serde_json::Value, String> {
        apply_wire_action(self, nic, action)
    }

    fn nic_faults(&mut self, nic: &str, faults: &[NicFault]) -> Result<serde_json::Value, String> {
        apply_nic_faults(self, nic, faults)
    }
}

fn apply_nic_faults(
    t: &Topology,
    nic: &str,
    faults: &[NicFault],
) -> Result<serde_json::Value, String> {
    t.set_nic_faults(nic, faults)?;
    let h = &t.handles[nic];
    let in_force: Vec<String> = h.faults().iter().map(|f| f.to_string()).collect();
    Ok(serde_json::json!({
        "faults_in_force": in_force,
        "stats": serde_json::to_value(h.stats()).unwrap_or_default(),
    }))
}

fn apply_wire_action(
    t: &Topology,
    nic: &str,
    action: &crate::steps::WireAction,
) -> Result<serde_json::Value, String> {
    let w = t
        .wire_of(nic)
        .ok_or_else(|| format!("no wire with {nic} at one end"))?;
    if let Some(f) = &action.faults {
        w.set_faults(f.clone()).map_err(|e| e.to_string())?;
    }
    if let Some(up) = action.link_up {
        w.set_link(up);
    }
    Ok(serde_json::json!({
        "link_up": w.link_up(),
        "counters": serde_json::to_value(w.counters()).unwrap_or_default(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::steps::{HostControl, WireAction};
    use sim_nic::testing::{FakeDriver, test_config};

    /// Two fake-driven NICs, cabled by `finish` from `spec`.
    fn cabled(spec: &TopologySpec) -> (Topology, Vec<FakeDriver>) {
        let mut p = Pending::default();
        let mut drivers = Vec::new();
        for (i, n) in spec.nics.iter().enumerate() {
            let (d, port) = FakeDriver::new(test_config(n, i as u8 + 1), 1 << 20);
            p.handles.insert(n.clone(), d.handle.clone());
            p.ports.insert(n.clone(), port);
            drivers.push(d);
        }
        let t = finish(spec, &Arc::new(Mutex::new(Some(p)))).unwrap();
        (t, drivers)
    }

    #[test]
    fn wires_are_cabled_with_the_spec_faults() {
        let mut spec = TopologySpec::pairs(2);
        spec.wire_faults.insert(
            "nic0".into(),
            WireFaults {
                seed: 3,
                drop: 0.25,
                ..WireFaults::none()
            },
        );
        let (t, _d) = cabled(&spec);
        let w = t.wire_of("nic1").unwrap();
        assert_eq!((w.faults().seed, w.faults().drop), (3, 0.25));
        let s = t.stats();
        assert_eq!(s["wires"][0]["faults_in_force"]["drop"], 0.25);
        assert_eq!(s["wires"][0]["link_up"], true);
        // Without faults in the spec: none.
        let (t, _d) = cabled(&TopologySpec::pairs(2));
        assert!(t.wire_of("nic0").unwrap().faults().is_none());
        assert!(t.stats()["wires"][0]["faults_in_force"].is_null());
        // Faults a wire refuses fail the cabling with the wire's name.
        let mut bad = TopologySpec::pairs(2);
        bad.wire_faults.insert(
            "nic0".into(),
            WireFaults {
                corrupt: 7.0,
                ..WireFaults::none()
            },
        );
        let mut p = Pending::default();
        let mut keep = Vec::new();
        for (i, n) in bad.nics.iter().enumerate() {
            let (d, port) = FakeDriver::new(test_config(n, i as u8 + 1), 1 << 20);
            p.ports.insert(n.clone(), port);
            keep.push(d);
        }
        let e = finish(&bad, &Arc::new(Mutex::new(Some(p)))).err().unwrap();
        assert!(e.contains("wire nic0-nic1") && e.contains("corrupt"), "{e}");
    }

    #[test]
    fn wire_actions_reach_the_wire_and_its_counters() {
        let (mut t, _d) = cabled(&TopologySpec::pairs(2));
        let v = HostControl::wire(
            &mut t,
            "nic1",
            &WireAction {
                link_up: Some(false),
                faults: Some(WireFaults {
                    duplicate: 0.5,
                    ..WireFaults::none()
                }),
            },
        )
        .unwrap();
        assert_eq!(v["link_up"], false);
        assert_eq!(v["counters"]["link_downs"], 1);
        let w = t.wire_of("nic0").unwrap();
        assert!(!w.link_up());
        assert_eq!(w.faults().duplicate, 0.5);
        let mut by_ref = &t;
        HostControl::wire(
            &mut by_ref,
            "nic0",
            &WireAction {
                link_up: Some(true),
                faults: None,
            },
        )
        .unwrap();
        assert!(t.wire_of("nic0").unwrap().link_up());
        assert_eq!(t.stats()["wires"][0]["faults"]["link_ups"], 1);
        // The campaign reads what was injected from these very stats.
        let injected = crate::campaign::injected_fault_counts(&t.stats());
        assert_eq!(injected["link-down"], 1);
        assert_eq!(injected.values().sum::<u64>(), 1);
        let e = HostControl::wire(&mut t, "nic9", &WireAction::default()).unwrap_err();
        assert!(e.contains("nic9"), "{e}");
        let e = HostControl::wire(
            &mut t,
            "nic0",
            &WireAction {
                link_up: None,
                faults: Some(WireFaults {
                    drop: -1.0,
                    ..WireFaults::none()
                }),
            },
        )
        .unwrap_err();
        assert!(e.contains("drop"), "{e}");
        // A refused change leaves the faults in force as they were.
        assert_eq!(t.wire_of("nic0").unwrap().faults().duplicate, 0.5);
    }

    #[test]
    fn nic_faults_are_set_at_runtime_and_reset_to_the_spec() {
        use sim_nic::{NicFault, QueueDir};
        let mut spec = TopologySpec::pairs(2);
        let starve = NicFault::RxStarve {
            after: 1,
            frames: 2,
        };
        spec.nic_faults.insert("nic1".into(), vec![starve]);
        spec.wire_faults.insert(
            "nic0".into(),
            WireFaults {
                seed: 5,
                drop: 0.1,
                ..WireFaults::none()
            },
        );
        let (mut t, _d) = cabled(&spec);
        let dma = NicFault::DmaFault {
            dir: QueueDir::Rx,
            queue: 2,
            after: 0,
        };
        t.set_nic_faults("nic0", &[dma]).unwrap();
        assert_eq!(t.handles["nic0"].faults(), [dma]);
        assert_eq!(
            t.stats()["nic_faults_in_force"]["nic0"][0],
            "dma-fault:rx:2:0"
        );
        let e = t.set_nic_faults("nic9", &[dma]).unwrap_err();
        assert!(e.contains("nic9"), "{e}");
        // Through the step interface: the faults in force and the counters.
        let v = HostControl::nic_faults(&mut t, "nic1", &[]).unwrap();
        assert_eq!(v["faults_in_force"], serde_json::json!([]));
        assert_eq!(v["stats"]["rx_starved"], 0);
        assert!(HostControl::nic_faults(&mut t, "nic5", &[]).is_err());
        // A wire step changed the wire; reset puts everything back.
        HostControl::wire(
            &mut t,
            "nic0",
            &WireAction {
                link_up: Some(false),
                faults: Some(WireFaults {
                    duplicate: 0.5,
                    ..WireFaults::none()
                }),
            },
        )
        .unwrap();
        t.reset_faults(&spec).unwrap();
        let w = t.wire_of("nic0").unwrap();
        assert!(w.link_up());
        assert_eq!(w.faults(), spec.wire_faults["nic0"]);
        assert!(t.handles["nic0"].faults().is_empty());
        assert_eq!(t.handles["nic1"].faults(), [starve]);
        assert_eq!(
            t.stats()["nic_faults_in_force"],
            serde_json::json!({"nic1": ["rx-starve:1:2"]})
        );
        // A spec without faults clears them all.
        t.reset_faults(&TopologySpec::pairs(2)).unwrap();
        assert!(t.wire_of("nic0").unwrap().faults().is_none());
        assert!(t.handles.values().all(|h| h.faults().is_empty()));
        assert!(
            t.stats()["nic_faults_in_force"]
                .as_object()
                .unwrap()
                .is_empty()
        );
    }
}
