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
            .map(|(a, b, w)| serde_json::json!({"a": a, "b": b, "faults": serde_json::to_value(w.counters()).unwrap_or_default(), "pcap_records": w.pcap_records()}))
            .collect();
        serde_json::json!({"nics": nics, "wires": wires})
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
        let w = Wire::connect(
            pa,
            pb,
            WireOptions {
                pcap,
                faults: WireFaults::none(),
            },
        )
        .map_err(|e| e.to_string())?;
        wires.push((a.clone(), b.clone(), w));
    }
    Ok(Topology {
        handles: st.handles,
        wires,
        bdfs: spec.bdfs(),
    })
}
