//! The scenario model: a TOML file (`scenarios/catalog/*.toml`, embedded in
//! the binary, or any file given with `--file`).
//!
//! ```toml
//! name = "nic-smoke"
//! description = "two sim-nics back to back: addresses, ping, 64 MiB TCP"
//! kernels = ["patched", "baseline"]     # where it applies (empty: everywhere)
//!
//! [[topology.nic]]
//! name = "nic0"
//! [[topology.nic]]
//! name = "nic1"
//! [[topology.wire]]
//! a = "nic0"
//! b = "nic1"
//!
//! [[step]]
//! name = "remote netns"
//! kind = "netns-setup"                  # sh | netns-setup | ping | tcp-transfer
//! nic = "nic1"
//! netns = "remote"
//! addrs = ["10.0.0.2/24", "fd00::2/64"]
//!
//! [expect.patched]
//! verdict = "pass"                      # or "expected-fail"
//! [expect.baseline]
//! verdict = "expected-fail"
//! steps."bind tx" = { ok = false, errno = "EOPNOTSUPP", extack = "No DMA-capable" }
//! ```
//!
//! NICs are named logically (`nic0`, …); the runner maps them to PCI
//! addresses (from the machine) and, in the guest, to netdev names. In step
//! strings (`script`, `argv`, `to`), `{nic0}` expands to nic0's netdev name.
//! Steps not listed under `expect.<kernel>.steps` are expected to succeed.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde::{Deserialize, Serialize};

/// The embedded catalog: (name, TOML text).
pub const CATALOG: &[(&str, &str)] = &[
    ("nic-smoke", include_str!("../catalog/nic-smoke.toml")),
    (
        "phys-devmem-tx",
        include_str!("../catalog/phys-devmem-tx.toml"),
    ),
    (
        "phys-devmem-rx",
        include_str!("../catalog/phys-devmem-rx.toml"),
    ),
    (
        "stray-dma-nic",
        include_str!("../catalog/stray-dma-nic.toml"),
    ),
    (
        "unbind-during-tx",
        include_str!("../catalog/unbind-during-tx.toml"),
    ),
    (
        "netkit-devmem-tx",
        include_str!("../catalog/netkit-devmem-tx.toml"),
    ),
    (
        "netkit-no-lease",
        include_str!("../catalog/netkit-no-lease.toml"),
    ),
    (
        "netkit-redirect-bpf",
        include_str!("../catalog/netkit-redirect-bpf.toml"),
    ),
    (
        "netkit-forwarding",
        include_str!("../catalog/netkit-forwarding.toml"),
    ),
    (
        "netkit-second-nic",
        include_str!("../catalog/netkit-second-nic.toml"),
    ),
];

#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    #[error("{origin}: {source}")]
    Toml {
        origin: String,
        #[source]
        source: Box<toml::de::Error>,
    },
    #[error("{origin}: {message}")]
    Invalid { origin: String, message: String },
    #[error("reading {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("no scenario {0:?} in the catalog (see `netmem-lab list`)")]
    Unknown(String),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// Kernel ids this scenario applies to (empty: all).
    #[serde(default)]
    pub kernels: Vec<String>,
    #[serde(default)]
    pub topology: Topology,
    #[serde(default, rename = "step")]
    pub steps: Vec<Step>,
    /// Per kernel id (`patched`, `baseline`; `default` for any other kernel).
    #[serde(default)]
    pub expect: BTreeMap<String, Expectation>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Topology {
    #[serde(default, rename = "nic")]
    pub nics: Vec<Nic>,
    #[serde(default, rename = "wire")]
    pub wires: Vec<Wire>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Nic {
    /// Logical name (`nic0`).
    pub name: String,
    /// Queue pairs the device offers (device default if absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queues: Option<u32>,
    /// Test-only device faults (`faults = ["dma-foreign-iova"]`, see
    /// `sim_nic::NicFault`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub faults: Vec<sim_nic::NicFault>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Wire {
    pub a: String,
    pub b: String,
    /// Wire faults from the moment the wire is cabled (`[topology.wire.faults]`,
    /// see `sim_nic::WireFaults`: drop/corrupt/duplicate/reorder
    /// probabilities, delay_us, jitter_us, direction `a-to-b`/`b-to-a`/`both`
    /// relative to this wire's `a` and `b`, skip_first, min_len,
    /// max_faults, seed, link_down windows). A `wire` step changes them
    /// later.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub faults: Option<sim_nic::WireFaults>,
}

/// One step: a name, a kind with its parameters, and a timeout.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Step {
    pub name: String,
    /// Seconds before the step is killed (default per kind).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_s: Option<u64>,
    #[serde(flatten)]
    pub kind: StepKind,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum StepKind {
    /// A command in the guest: `script` (run by `sh -c`) or `argv`.
    Sh {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        script: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        argv: Option<Vec<String>>,
        /// Run inside this netns (default: the initial one).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        netns: Option<String>,
        /// Exit status that counts as success.
        #[serde(default)]
        expect_exit: i32,
    },
    /// Move a NIC into a netns (created if needed), add addresses, link up.
    NetnsSetup {
        nic: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        netns: Option<String>,
        #[serde(default)]
        addrs: Vec<String>,
        /// IPv6 addresses without duplicate address detection.
        #[serde(default = "yes")]
        nodad: bool,
        #[serde(default = "yes")]
        up: bool,
    },
    /// Ping `to` from `netns`.
    Ping {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        netns: Option<String>,
        to: String,
        #[serde(default = "three")]
        count: u32,
    },
    /// A verified TCP transfer with the guest tools (sink first, then source).
    TcpTransfer {
        /// Sender's netns (default: the initial one).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        from_netns: Option<String>,
        /// Receiver's netns.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        to_netns: Option<String>,
        /// Receiver's address (the sink listens on it).
        to: String,
        #[serde(default = "default_port")]
        port: u16,
        bytes: u64,
        #[serde(default = "one")]
        seed: u64,
        /// The sender closes its socket once the kernel accepted this many
        /// bytes (below `bytes`): the step then fails (the connection ended
        /// early), and every accepted byte must still arrive intact before
        /// the receiver's end of stream (`payload-intact`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        close_after: Option<u64>,
        /// Send with devmem TX from a dmabuf (`netmem-lab devmem-tx`)
        /// instead of plain `tcp-source`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        devmem_tx: Option<DevmemTx>,
        /// Receive with devmem RX into a dmabuf (`netmem-lab devmem-rx`)
        /// instead of plain `tcp-sink`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        devmem_rx: Option<DevmemRx>,
    },
    /// A host-side action on the wire that has `nic` at one end: take its
    /// link `down` or `up`, and/or replace its faults from now on (their
    /// link windows count from this step; `faults = {}` clears them).
    /// Runs in the lab, not in the guest, and returns at once: faults set
    /// before a transfer act during it.
    Wire {
        nic: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        link: Option<LinkState>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        faults: Option<sim_nic::WireFaults>,
    },
    /// Wait `ms` milliseconds (timing between steps of a fault schedule).
    Pause { ms: u64 },
    /// A host-side change of NIC `nic`'s test faults: `faults` (see
    /// `sim_nic::NicFault`: "rx-starve:100:20", "dma-fault:tx:0", …)
    /// replace the ones in force from now on (their `after` counts start
    /// here); an empty list clears them. Runs in the lab and returns at once.
    NicFault {
        nic: String,
        #[serde(default)]
        faults: Vec<sim_nic::NicFault>,
    },
}

/// A link state a `wire` step sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LinkState {
    Up,
    Down,
}

/// The devmem sender of a transfer (runs in the transfer's `from_netns`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DevmemTx {
    /// The device `bind-tx` names (`{nic0}`, or a netkit guest).
    pub dev: String,
    /// Bind the dmabuf a second time on the same device and never send with
    /// that binding (its IOVAs must stay unused).
    #[serde(default)]
    pub spare_binding: bool,
    /// Close the binding's netlink socket (unbind) after this many bytes and
    /// keep sending: the step then passes when the sender saw an error after
    /// the unbind and every byte it had sent arrived intact.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unbind_after: Option<u64>,
    /// With `unbind_after`: bind the same dmabuf again on the same device
    /// right after the unbind and send the rest through the new binding
    /// (the transfer then completes; `bindings` lists both).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub rebind: bool,
    /// dmabuf size (the tool's default if absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dmabuf_size: Option<u64>,
    /// `SO_BINDTODEVICE` the socket to `dev`.
    #[serde(default)]
    pub bind_dev: bool,
}

/// The devmem receiver of a transfer (runs in the transfer's `to_netns`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DevmemRx {
    /// The device `bind-rx` names.
    pub dev: String,
    /// The RX queue bound to the dmabuf (flow steering must send the flow
    /// there: an earlier `ethtool -N` step).
    pub queue: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dmabuf_size: Option<u64>,
}

fn yes() -> bool {
    true
}
fn three() -> u32 {
    3
}
fn one() -> u64 {
    1
}
fn default_port() -> u16 {
    5201
}

impl StepKind {
    pub fn name(&self) -> &'static str {
        match self {
            StepKind::Sh { .. } => "sh",
            StepKind::NetnsSetup { .. } => "netns-setup",
            StepKind::Ping { .. } => "ping",
            StepKind::TcpTransfer { .. } => "tcp-transfer",
            StepKind::Wire { .. } => "wire",
            StepKind::Pause { .. } => "pause",
            StepKind::NicFault { .. } => "nic-fault",
        }
    }
    pub fn default_timeout_s(&self) -> u64 {
        match self {
            StepKind::TcpTransfer { .. } => 300,
            _ => 60,
        }
    }
}

/// What a kernel is expected to do.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expectation {
    #[serde(default)]
    pub verdict: ExpectedVerdict,
    /// Per step name; steps not listed are expected to succeed.
    #[serde(default)]
    pub steps: BTreeMap<String, StepExpect>,
    /// Per step name: the NIC (logical name) every binding the step's
    /// tools used must resolve to, as the verifier finds it from the IOMMU
    /// mappings (for a netkit bind-tx: the NIC that leased the queue).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub bindings: BTreeMap<String, String>,
    /// Step names whose success or failure is not checked (the run goes
    /// on either way; their results and the verifier still count): the
    /// guest operations and transfers of a fault campaign, which may
    /// legitimately fail under the faults it injects.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub any_outcome: BTreeSet<String>,
}

impl Expectation {
    /// Mismatches between `bindings` and what the verifier resolved.
    pub fn check_bindings(&self, found: &[crate::verify::BindingReport]) -> Vec<String> {
        let mut out = Vec::new();
        for (step, nic) in &self.bindings {
            let used: Vec<_> = found.iter().filter(|b| &b.step == step && b.used).collect();
            if used.is_empty() {
                out.push(format!(
                    "{step}: expected a binding resolved to {nic}, the step made none that was used"
                ));
            }
            for b in used {
                if b.resolved_nic.as_deref() != Some(nic.as_str()) {
                    out.push(format!(
                        "{step}: binding {} ({} on {}) resolved to {}, expected {nic}",
                        b.id,
                        b.dir,
                        b.ifname,
                        b.resolved_nic
                            .as_deref()
                            .or(b.resolved_device.as_deref())
                            .unwrap_or("no device (no IOMMU mapping of its pages seen)")
                    ));
                }
            }
        }
        out
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ExpectedVerdict {
    #[default]
    Pass,
    ExpectedFail,
}

/// The expected outcome of one step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StepExpect {
    #[serde(default = "yes")]
    pub ok: bool,
    /// errno, as a number or a name (`"EOPNOTSUPP"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub errno: Option<Errno>,
    /// A substring of the kernel's extack message (or the step's detail).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extack: Option<String>,
}

impl Default for StepExpect {
    fn default() -> Self {
        StepExpect {
            ok: true,
            errno: None,
            extack: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Errno {
    Num(i32),
    Name(String),
}

/// errno names the scenarios use.
pub const ERRNO_NAMES: &[(&str, i32)] = &[
    ("EPERM", libc::EPERM),
    ("ENOENT", libc::ENOENT),
    ("EIO", libc::EIO),
    ("EBADF", libc::EBADF),
    ("EAGAIN", libc::EAGAIN),
    ("ENOMEM", libc::ENOMEM),
    ("EACCES", libc::EACCES),
    ("EFAULT", libc::EFAULT),
    ("EBUSY", libc::EBUSY),
    ("EEXIST", libc::EEXIST),
    ("ENODEV", libc::ENODEV),
    ("EINVAL", libc::EINVAL),
    ("ENOSPC", libc::ENOSPC),
    ("ERANGE", libc::ERANGE),
    ("EMSGSIZE", libc::EMSGSIZE),
    ("EPROTONOSUPPORT", libc::EPROTONOSUPPORT),
    ("EOPNOTSUPP", libc::EOPNOTSUPP),
    ("ENETDOWN", libc::ENETDOWN),
    ("ENETUNREACH", libc::ENETUNREACH),
    ("ECONNRESET", libc::ECONNRESET),
    ("ENOBUFS", libc::ENOBUFS),
    ("ETIMEDOUT", libc::ETIMEDOUT),
    ("ECONNREFUSED", libc::ECONNREFUSED),
    ("EHOSTUNREACH", libc::EHOSTUNREACH),
    ("ENOTSUP", libc::ENOTSUP),
];

impl Errno {
    pub fn value(&self) -> Option<i32> {
        match self {
            Errno::Num(n) => Some(*n),
            Errno::Name(s) => ERRNO_NAMES
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(s))
                .map(|(_, v)| *v),
        }
    }
}

impl Scenario {
    /// Parses and validates a scenario; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Scenario, ScenarioError> {
        let s: Scenario = toml::from_str(text).map_err(|e| ScenarioError::Toml {
            origin: origin.into(),
            source: Box::new(e),
        })?;
        s.validate().map_err(|message| ScenarioError::Invalid {
            origin: origin.into(),
            message,
        })?;
        Ok(s)
    }

    /// A catalog scenario by name.
    pub fn builtin(name: &str) -> Result<Scenario, ScenarioError> {
        let (n, text) = CATALOG
            .iter()
            .find(|(n, _)| *n == name)
            .ok_or_else(|| ScenarioError::Unknown(name.into()))?;
        Scenario::parse(text, &format!("catalog/{n}.toml"))
    }

    /// A scenario file (`--file PATH`).
    pub fn from_file(path: &Path) -> Result<Scenario, ScenarioError> {
        let text = std::fs::read_to_string(path).map_err(|e| ScenarioError::Io {
            path: path.display().to_string(),
            source: e,
        })?;
        Scenario::parse(&text, &path.display().to_string())
    }

    /// Every catalog scenario (for `netmem-lab list` and `matrix`).
    pub fn catalog() -> Vec<Result<Scenario, ScenarioError>> {
        CATALOG.iter().map(|(n, _)| Scenario::builtin(n)).collect()
    }

    pub fn applies_to(&self, kernel_id: &str) -> bool {
        self.kernels.is_empty() || self.kernels.iter().any(|k| k == kernel_id)
    }

    /// The expectation for a kernel id: its own, else `default`, else "all steps pass".
    pub fn expectation(&self, kernel_id: &str) -> Expectation {
        self.expect
            .get(kernel_id)
            .or_else(|| self.expect.get("default"))
            .cloned()
            .unwrap_or_default()
    }

    /// The wires as (a, b) pairs of logical NIC names.
    pub fn wire_pairs(&self) -> Vec<(String, String)> {
        self.topology
            .wires
            .iter()
            .map(|w| (w.a.clone(), w.b.clone()))
            .collect()
    }

    /// Faults per wire from the start, keyed by the wire's `a` end (only
    /// wires that have some).
    pub fn wire_faults(&self) -> BTreeMap<String, sim_nic::WireFaults> {
        self.topology
            .wires
            .iter()
            .filter_map(|w| w.faults.clone().map(|f| (w.a.clone(), f)))
            .collect()
    }

    /// The machine topology this scenario needs (no pcap directory).
    pub fn topology_spec(&self) -> crate::topology::TopologySpec {
        crate::topology::TopologySpec {
            nics: self.nic_names(),
            wires: self.wire_pairs(),
            pcap_dir: None,
            nic_faults: self.nic_faults(),
            wire_faults: self.wire_faults(),
        }
    }

    /// Test faults of the topology's NICs (only NICs that have some).
    pub fn nic_faults(&self) -> BTreeMap<String, Vec<sim_nic::NicFault>> {
        self.topology
            .nics
            .iter()
            .filter(|n| !n.faults.is_empty())
            .map(|n| (n.name.clone(), n.faults.clone()))
            .collect()
    }

    /// The logical NIC names of the topology.
    pub fn nic_names(&self) -> Vec<String> {
        self.topology.nics.iter().map(|n| n.name.clone()).collect()
    }

    fn validate(&self) -> Result<(), String> {
        if self.name.is_empty() {
            return Err("empty name".into());
        }
        let mut nics = BTreeSet::new();
        for n in &self.topology.nics {
            if n.name.is_empty()
                || !n
                    .name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            {
                return Err(format!("bad NIC name {:?}", n.name));
            }
            if !nics.insert(n.name.as_str()) {
                return Err(format!("NIC {:?} declared twice", n.name));
            }
        }
        let mut cabled = BTreeSet::new();
        for w in &self.topology.wires {
            for end in [&w.a, &w.b] {
                if !nics.contains(end.as_str()) {
                    return Err(format!("wire end {end:?} is not a NIC of the topology"));
                }
                if !cabled.insert(end.as_str()) {
                    return Err(format!("NIC {end:?} is on two wires"));
                }
            }
            if w.a == w.b {
                return Err(format!("wire from {:?} to itself", w.a));
            }
            if let Some(f) = &w.faults {
                f.validate()
                    .map_err(|e| format!("wire {}-{}: faults: {e}", w.a, w.b))?;
            }
        }
        let mut names = BTreeSet::new();
        for s in &self.steps {
            if s.name.is_empty() {
                return Err("a step without a name".into());
            }
            if !names.insert(s.name.as_str()) {
                return Err(format!("two steps named {:?}", s.name));
            }
            let ctx = |m: String| format!("step {:?}: {m}", s.name);
            match &s.kind {
                StepKind::Sh { script, argv, .. } => {
                    if script.is_some() == argv.is_some() {
                        return Err(ctx("give exactly one of `script` and `argv`".into()));
                    }
                    if argv.as_ref().is_some_and(|a| a.is_empty()) {
                        return Err(ctx("empty argv".into()));
                    }
                }
                StepKind::NetnsSetup { nic, addrs, .. } => {
                    if !nics.contains(nic.as_str()) {
                        return Err(ctx(format!("{nic:?} is not a NIC of the topology")));
                    }
                    for a in addrs {
                        crate::guest_tools::parse_cidr(a).map_err(ctx)?;
                    }
                }
                StepKind::Ping { to, count, .. } => {
                    if *count == 0 {
                        return Err(ctx("count 0".into()));
                    }
                    if !to.contains('{') {
                        to.parse::<std::net::IpAddr>()
                            .map_err(|e| ctx(format!("to {to:?}: {e}")))?;
                    }
                }
                StepKind::TcpTransfer {
                    to,
                    bytes,
                    close_after,
                    devmem_tx,
                    devmem_rx,
                    ..
                } => {
                    to.parse::<std::net::IpAddr>()
                        .map_err(|e| ctx(format!("to {to:?}: {e}")))?;
                    if *bytes == 0 {
                        return Err(ctx("bytes 0".into()));
                    }
                    if devmem_tx.as_ref().is_some_and(|d| d.dev.is_empty())
                        || devmem_rx.as_ref().is_some_and(|d| d.dev.is_empty())
                    {
                        return Err(ctx("devmem dev is empty".into()));
                    }
                    if let Some(u) = devmem_tx.as_ref().and_then(|d| d.unbind_after)
                        && u >= *bytes
                    {
                        return Err(ctx(format!("unbind_after {u} must be below bytes {bytes}")));
                    }
                    if devmem_tx
                        .as_ref()
                        .is_some_and(|d| d.rebind && d.unbind_after.is_none())
                    {
                        return Err(ctx("rebind needs unbind_after".into()));
                    }
                    if let Some(c) = close_after
                        && (*c == 0 || c >= bytes)
                    {
                        return Err(ctx(format!(
                            "close_after {c} must be in 1..{bytes} (below bytes)"
                        )));
                    }
                }
                StepKind::Wire { nic, link, faults } => {
                    if !cabled.contains(nic.as_str()) {
                        return Err(ctx(format!("{nic:?} is not on a wire of the topology")));
                    }
                    if link.is_none() && faults.is_none() {
                        return Err(ctx("give `link` and/or `faults`".into()));
                    }
                    if let Some(f) = faults {
                        f.validate().map_err(|e| ctx(format!("faults: {e}")))?;
                    }
                }
                StepKind::NicFault { nic, .. } => {
                    if !nics.contains(nic.as_str()) {
                        return Err(ctx(format!("{nic:?} is not a NIC of the topology")));
                    }
                }
                StepKind::Pause { ms } => {
                    if *ms > MAX_PAUSE_MS {
                        return Err(ctx(format!("pause of {ms} ms (at most {MAX_PAUSE_MS})")));
                    }
                }
            }
            for ns in step_netns(&s.kind) {
                if ns.is_empty() || ns.contains('/') || ns.contains(char::is_whitespace) {
                    return Err(ctx(format!("bad netns name {ns:?}")));
                }
            }
        }
        for (k, e) in &self.expect {
            if k != "default" && !self.kernels.is_empty() && !self.kernels.contains(k) {
                return Err(format!(
                    "expectation for kernel {k:?}, which is not in `kernels`"
                ));
            }
            for (step, nic) in &e.bindings {
                if !names.contains(step.as_str()) {
                    return Err(format!("expect.{k}.bindings: no step named {step:?}"));
                }
                if !self.topology.nics.iter().any(|n| &n.name == nic) {
                    return Err(format!("expect.{k}.bindings: no NIC named {nic:?}"));
                }
            }
            for step in &e.any_outcome {
                if !names.contains(step.as_str()) {
                    return Err(format!("expect.{k}.any_outcome: no step named {step:?}"));
                }
            }
            for (step, se) in &e.steps {
                if !names.contains(step.as_str()) {
                    return Err(format!("expect.{k}: no step named {step:?}"));
                }
                if let Some(er) = &se.errno
                    && er.value().is_none()
                {
                    return Err(format!("expect.{k}.steps.{step:?}: unknown errno {er:?}"));
                }
                if se.ok && (se.errno.is_some() || se.extack.is_some()) {
                    return Err(format!(
                        "expect.{k}.steps.{step:?}: errno/extack only make sense with ok = false"
                    ));
                }
            }
            if e.verdict == ExpectedVerdict::ExpectedFail && e.steps.values().all(|s| s.ok) {
                return Err(format!(
                    "expect.{k}: verdict expected-fail but no step is expected to fail"
                ));
            }
        }
        Ok(())
    }
}

/// Longest `pause` step.
pub const MAX_PAUSE_MS: u64 = 600_000;

fn step_netns(k: &StepKind) -> Vec<&str> {
    match k {
        StepKind::Wire { .. } | StepKind::Pause { .. } | StepKind::NicFault { .. } => Vec::new(),
        StepKind::Sh { netns, .. }
        | StepKind::NetnsSetup { netns, .. }
        | StepKind::Ping { netns, .. } => netns.iter().map(|s| s.as_str()).collect(),
        StepKind::TcpTransfer {
            from_netns,
            to_netns,
            ..
        } => from_netns
            .iter()
            .chain(to_netns.iter())
            .map(|s| s.as_str())
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catalog_parses_and_validates() {
        assert!(!CATALOG.is_empty());
        for s in Scenario::catalog() {
            let s = s.unwrap();
            assert!(!s.steps.is_empty(), "{}", s.name);
            assert!(!s.description.is_empty(), "{}", s.name);
        }
        let mut names: Vec<_> = CATALOG.iter().map(|(n, _)| *n).collect();
        names.dedup();
        assert_eq!(names.len(), CATALOG.len());
        for (n, _) in CATALOG {
            assert_eq!(
                Scenario::builtin(n).unwrap().name,
                *n,
                "file name = scenario name"
            );
        }
        assert!(matches!(
            Scenario::builtin("nope"),
            Err(ScenarioError::Unknown(_))
        ));
    }

    #[test]
    fn nic_smoke_shape() {
        let s = Scenario::builtin("nic-smoke").unwrap();
        assert_eq!(s.nic_names(), ["nic0", "nic1"]);
        assert_eq!(s.wire_pairs(), [("nic0".to_string(), "nic1".to_string())]);
        assert!(s.applies_to("patched") && s.applies_to("baseline"));
        for k in ["patched", "baseline"] {
            assert_eq!(s.expectation(k).verdict, ExpectedVerdict::Pass);
        }
        let tcp = s
            .steps
            .iter()
            .find_map(|st| match &st.kind {
                StepKind::TcpTransfer {
                    bytes, to_netns, ..
                } => Some((*bytes, to_netns.clone())),
                _ => None,
            })
            .unwrap();
        assert_eq!(tcp, (64 << 20, Some("remote".into())));
        let pings = s
            .steps
            .iter()
            .filter(|st| matches!(st.kind, StepKind::Ping { .. }))
            .count();
        assert_eq!(pings, 4);
    }

    const BASE: &str = r#"
name = "t"
kernels = ["patched", "baseline"]
[[topology.nic]]
name = "nic0"
[[topology.nic]]
name = "nic1"
[[topology.wire]]
a = "nic0"
b = "nic1"
[[step]]
name = "a"
kind = "sh"
script = "true"
"#;

    fn parse_err(extra: &str) -> String {
        Scenario::parse(&format!("{BASE}{extra}"), "t.toml")
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn expectations_and_errnos() {
        let s = Scenario::parse(
            &format!(
                "{BASE}\n[expect.baseline]\nverdict = \"expected-fail\"\nsteps.a = {{ ok = false, errno = \"EOPNOTSUPP\", extack = \"No DMA\" }}\n[expect.patched.steps.a]\nok = true\n"
            ),
            "t.toml",
        )
        .unwrap();
        let e = s.expectation("baseline");
        assert_eq!(e.verdict, ExpectedVerdict::ExpectedFail);
        assert_eq!(
            e.steps["a"].errno.as_ref().unwrap().value(),
            Some(libc::EOPNOTSUPP)
        );
        assert!(s.expectation("patched").steps["a"].ok);
        // Unknown kernels fall back to "all pass".
        assert_eq!(
            s.expectation("/boot/vmlinuz").verdict,
            ExpectedVerdict::Pass
        );
        assert_eq!(Errno::Num(95).value(), Some(95));
    }

    #[test]
    fn rejects_mistakes() {
        for (extra, want) in [
            (
                "[[step]]\nname = \"a\"\nkind = \"sh\"\nscript = \"x\"\n",
                "two steps named",
            ),
            ("[[step]]\nname = \"b\"\nkind = \"sh\"\n", "exactly one of"),
            (
                "[[step]]\nname = \"b\"\nkind = \"sh\"\nscript = \"x\"\nbogus = 1\n",
                "unknown field",
            ),
            ("[[step]]\nname = \"b\"\nkind = \"teleport\"\n", "teleport"),
            (
                "[[step]]\nname = \"b\"\nkind = \"netns-setup\"\nnic = \"nic9\"\n",
                "not a NIC",
            ),
            (
                "[[step]]\nname = \"b\"\nkind = \"netns-setup\"\nnic = \"nic0\"\naddrs = [\"10.0.0.1/40\"]\n",
                "prefix",
            ),
            (
                "[[step]]\nname = \"b\"\nkind = \"ping\"\nto = \"not-an-ip\"\n",
                "not-an-ip",
            ),
            (
                "[[step]]\nname = \"b\"\nkind = \"tcp-transfer\"\nto = \"10.0.0.2\"\nbytes = 0\n",
                "bytes 0",
            ),
            (
                "[[topology.wire]]\na = \"nic9\"\nb = \"nic1\"\n",
                "not a NIC",
            ),
            ("[expect.patched.steps.zz]\nok = false\n", "no step named"),
            ("[expect.other]\nverdict = \"pass\"\n", "not in `kernels`"),
            (
                "[expect.patched]\nverdict = \"expected-fail\"\n",
                "no step is expected to fail",
            ),
            (
                "[expect.patched.steps.a]\nok = false\nerrno = \"EWHAT\"\n",
                "unknown errno",
            ),
            ("[expect.patched.steps.a]\nerrno = 95\n", "only make sense"),
            ("colour = \"red\"\n", "unknown field"),
        ] {
            let e = parse_err(extra);
            assert!(e.contains(want), "{extra:?}: {e}");
        }
    }

    #[test]
    fn nic_faults_parse() {
        let base = BASE.replacen(
            "name = \"nic0\"\n",
            "name = \"nic0\"\nfaults = [\"dma-foreign-iova\"]\n",
            1,
        );
        let s = Scenario::parse(&base, "t.toml").unwrap();
        assert_eq!(
            s.nic_faults(),
            BTreeMap::from([(
                "nic0".to_string(),
                vec![sim_nic::NicFault::DmaForeignIova { after: 64 }]
            )])
        );
        assert!(
            Scenario::builtin("nic-smoke")
                .unwrap()
                .nic_faults()
                .is_empty()
        );
        let bad = BASE.replacen(
            "name = \"nic0\"\n",
            "name = \"nic0\"\nfaults = [\"melt\"]\n",
            1,
        );
        let e = Scenario::parse(&bad, "t.toml").unwrap_err().to_string();
        assert!(e.contains("unknown NIC fault"), "{e}");
    }

    #[test]
    fn nic_fault_steps_parse_validate_and_write_back() {
        let s = Scenario::parse(
            &format!(
                "{BASE}[[step]]\nname = \"starve\"\nkind = \"nic-fault\"\nnic = \"nic1\"\nfaults = [\"rx-starve:100:20\", \"dma-fault:tx:0\"]\n[[step]]\nname = \"clear\"\nkind = \"nic-fault\"\nnic = \"nic1\"\n"
            ),
            "t.toml",
        )
        .unwrap();
        assert_eq!(
            s.steps[1].kind,
            StepKind::NicFault {
                nic: "nic1".into(),
                faults: vec![
                    sim_nic::NicFault::RxStarve {
                        after: 100,
                        frames: 20
                    },
                    sim_nic::NicFault::DmaFault {
                        dir: sim_nic::QueueDir::Tx,
                        queue: 0,
                        after: sim_nic::faults::DEFAULT_DMA_FAULT_AFTER
                    }
                ]
            }
        );
        assert_eq!(s.steps[1].kind.name(), "nic-fault");
        assert_eq!(
            s.steps[2].kind,
            StepKind::NicFault {
                nic: "nic1".into(),
                faults: vec![]
            }
        );
        let again = Scenario::parse(&toml::to_string(&s).unwrap(), "again").unwrap();
        assert_eq!(again, s);
        let e = parse_err("[[step]]\nname = \"x\"\nkind = \"nic-fault\"\nnic = \"nic7\"\n");
        assert!(e.contains("nic7"), "{e}");
        let e = parse_err(
            "[[step]]\nname = \"x\"\nkind = \"nic-fault\"\nnic = \"nic0\"\nfaults = [\"melt\"]\n",
        );
        assert!(e.contains("unknown NIC fault"), "{e}");
    }

    #[test]
    fn wire_faults_parse_into_the_topology_spec() {
        let text = BASE.replacen(
            "b = \"nic1\"\n",
            "b = \"nic1\"\n[topology.wire.faults]\nseed = 9\ndrop = 0.02\ndirection = \"a-to-b\"\nlink_down = [{ at_ms = 100, duration_ms = 50 }]\n",
            1,
        );
        let s = Scenario::parse(&text, "t.toml").unwrap();
        let f = s.topology.wires[0].faults.clone().unwrap();
        assert_eq!(f.seed, 9);
        assert_eq!(f.drop, 0.02);
        assert_eq!(f.direction, sim_nic::FaultDirection::AToB);
        assert_eq!(f.link_down.len(), 1);
        let spec = s.topology_spec();
        assert_eq!(spec.wire_faults.len(), 1);
        assert_eq!(spec.wire_faults["nic0"], f);
        assert_eq!(spec.wires, s.wire_pairs());
        // The TOML we write reads back the same.
        let again = Scenario::parse(&toml::to_string(&s).unwrap(), "again").unwrap();
        assert_eq!(again, s);
        assert!(
            Scenario::builtin("nic-smoke")
                .unwrap()
                .wire_faults()
                .is_empty()
        );
        for (faults, want) in [
            ("drop = 1.5\n", "probability"),
            ("colour = 1\n", "unknown field"),
            ("direction = \"sideways\"\n", "sideways"),
        ] {
            let bad = BASE.replacen(
                "b = \"nic1\"\n",
                &format!("b = \"nic1\"\n[topology.wire.faults]\n{faults}"),
                1,
            );
            let e = Scenario::parse(&bad, "t.toml").unwrap_err().to_string();
            assert!(e.contains(want), "{faults:?}: {e}");
        }
    }

    #[test]
    fn wire_and_pause_steps_parse_and_validate() {
        let s = Scenario::parse(
            &format!(
                "{BASE}[[step]]\nname = \"cut\"\nkind = \"wire\"\nnic = \"nic1\"\nlink = \"down\"\n\
                 [[step]]\nname = \"lossy\"\nkind = \"wire\"\nnic = \"nic0\"\nfaults = {{ drop = 0.1, seed = 4 }}\n\
                 [[step]]\nname = \"wait\"\nkind = \"pause\"\nms = 250\n\
                 [expect.patched]\nany_outcome = [\"cut\"]\n"
            ),
            "t.toml",
        )
        .unwrap();
        assert_eq!(
            s.steps[1].kind,
            StepKind::Wire {
                nic: "nic1".into(),
                link: Some(LinkState::Down),
                faults: None
            }
        );
        match &s.steps[2].kind {
            StepKind::Wire {
                faults: Some(f),
                link: None,
                ..
            } => assert_eq!((f.drop, f.seed), (0.1, 4)),
            k => panic!("{k:?}"),
        }
        assert_eq!(s.steps[3].kind, StepKind::Pause { ms: 250 });
        assert!(s.expectation("patched").any_outcome.contains("cut"));
        for (extra, want) in [
            (
                "[[step]]\nname = \"w\"\nkind = \"wire\"\nnic = \"nic0\"\n",
                "link` and/or `faults",
            ),
            (
                "[[step]]\nname = \"w\"\nkind = \"wire\"\nnic = \"nic7\"\nlink = \"up\"\n",
                "not on a wire",
            ),
            (
                "[[step]]\nname = \"w\"\nkind = \"wire\"\nnic = \"nic0\"\nlink = \"sideways\"\n",
                "sideways",
            ),
            (
                "[[step]]\nname = \"w\"\nkind = \"wire\"\nnic = \"nic0\"\nfaults = { corrupt = -1.0 }\n",
                "probability",
            ),
            (
                "[[step]]\nname = \"p\"\nkind = \"pause\"\nms = 600001\n",
                "at most",
            ),
            (
                "[expect.patched]\nany_outcome = [\"zz\"]\n",
                "no step named",
            ),
        ] {
            let e = parse_err(extra);
            assert!(e.contains(want), "{extra:?}: {e}");
        }
    }

    #[test]
    fn close_after_and_rebind_parse_and_validate() {
        let xfer =
            "[[step]]\nname = \"x\"\nkind = \"tcp-transfer\"\nto = \"10.0.0.2\"\nbytes = 4096\n";
        let s = Scenario::parse(
            &format!(
                "{BASE}{xfer}close_after = 1024\n{}",
                xfer.replace("\"x\"", "\"y\"")
                    + "[step.devmem_tx]\ndev = \"{nic0}\"\nunbind_after = 2048\nrebind = true\n"
            ),
            "t.toml",
        )
        .unwrap();
        match (&s.steps[1].kind, &s.steps[2].kind) {
            (
                StepKind::TcpTransfer {
                    close_after: Some(1024),
                    devmem_tx: None,
                    ..
                },
                StepKind::TcpTransfer {
                    close_after: None,
                    devmem_tx: Some(d),
                    ..
                },
            ) => assert!(d.rebind && d.unbind_after == Some(2048)),
            k => panic!("{k:?}"),
        }
        // Written back the same (rebind only when set).
        let text = toml::to_string(&s).unwrap();
        assert_eq!(text.matches("rebind").count(), 1, "{text}");
        assert_eq!(Scenario::parse(&text, "t.toml").unwrap(), s);
        for (extra, want) in [
            (format!("{xfer}close_after = 4096\n"), "close_after 4096"),
            (format!("{xfer}close_after = 0\n"), "close_after 0"),
            (
                format!("{xfer}[step.devmem_tx]\ndev = \"{{nic0}}\"\nrebind = true\n"),
                "rebind needs unbind_after",
            ),
        ] {
            let e = parse_err(&extra);
            assert!(e.contains(want), "{extra:?}: {e}");
        }
    }

    #[test]
    fn file_loading() {
        let d = std::env::temp_dir().join(format!("netmem-scn-{}.toml", std::process::id()));
        std::fs::write(&d, BASE).unwrap();
        assert_eq!(Scenario::from_file(&d).unwrap().name, "t");
        let _ = std::fs::remove_file(&d);
        assert!(matches!(
            Scenario::from_file(Path::new("/nonexistent/x.toml")),
            Err(ScenarioError::Io { .. })
        ));
    }
}
