//! Fault campaigns (issue 7): schedules of guest operations, wire faults
//! and timing built around a base scenario, generated with proptest, each
//! turned into a replayable [`Scenario`], and shrunk to the smallest
//! schedule that still violates the same invariant.
//!
//! A case is the base's setup steps (every step before its first
//! `tcp-transfer`) followed by one step per [`Op`] of the [`Schedule`]:
//!
//! | op | step |
//! |----|------|
//! | `WireFaults` | `kind = "wire"`, `faults = {…}` (lab side, from now on) |
//! | `WireLink` | `kind = "wire"`, `link = "down"/"up"` |
//! | `Pause` | `kind = "pause"` |
//! | `Transfer` | the base's first transfer with the op's bytes, seed, devmem unbind point (and re-bind), sender close point and its own port |
//! | `GuestLink` | `ip link set dev {nicN} down/up` in the NIC's netns |
//! | `Channels` | `netmem-lab ethtool -L {nicN} rx N tx N` |
//! | `Rings` | `netmem-lab ethtool -G {nicN} rx N tx N` |
//! | `NicFaults` | `kind = "nic-fault"` (lab side: the NIC's test faults from now on) |
//! | `NetkitDelete` | `netmem-lab netkit-del --dev PRIMARY` (the base's netkit pair) |
//!
//! Every case step is listed in the expectations' `any_outcome`: under
//! faults a transfer or a guest operation may fail, and that alone is no
//! finding. What counts is what the caller's `run_case` reports (in the
//! lab: the verifier's invariants and payload integrity).
//! [`Schedule::from_scenario`] reads a written case back, so a regression
//! file replays to the same schedule.
//!
//! Faults are written with integer parts per million so shrinking reaches
//! exact boundaries.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use proptest::prelude::*;
use proptest::sample::select;
use proptest::test_runner::{Config, RngAlgorithm, TestCaseError, TestError, TestRng, TestRunner};
use sim_nic::{FaultDirection, LinkWindow, NicFault, QueueDir, WireFaults};

use crate::scenario::{
    DevmemTx, Expectation, ExpectedVerdict, LinkState, Scenario, Step, StepKind,
};

/// The scenario a campaign starts from when none is named.
pub const DEFAULT_BASE: &str = "netkit-devmem-tx";
/// Transfers are drawn in units of this many bytes.
pub const TRANSFER_UNIT: u64 = 64 << 10;
/// Largest probability the strategy draws for a wire fault (ppm).
pub const MAX_FAULT_PPM: u32 = 200_000;
/// Parts per million of a probability.
const PPM: f64 = 1_000_000.0;
/// Longest `tx-completion-delay` drawn (ms): far below the 5 s TX timeout
/// of gve (`watchdog_timeo = 5 * HZ` in
/// drivers/net/ethernet/google/gve/gve_main.c), so no reset follows.
pub const MAX_TX_COMPLETION_DELAY_MS: u64 = 200;
/// Longest a case's transfer may run (s): a 16 MiB transfer takes 10-20 s
/// nested without faults; under 20 % drops it may crawl, and its failure
/// (reported to the sender) is an allowed outcome.
pub const CASE_TRANSFER_TIMEOUT_S: u64 = 120;
/// Largest `after` count a drawn NIC fault waits for (frames, packets or
/// payload DMAs).
pub const MAX_FAULT_AFTER: u64 = 200;
/// `dma-fault` is drawn on queues `0..MAX_FAULT_QUEUES` (the lab's NICs have
/// 4 queue pairs, `GveConfig::default().num_queues`).
pub const MAX_FAULT_QUEUES: u16 = 4;

/// The fault kinds a campaign injects, as [`injected_fault_counts`] and
/// [`Schedule::requested_fault_kinds`] name them: the wire's, then the
/// NIC's (`sim_nic::NicFault::kind`).
pub const FAULT_KINDS: [&str; 11] = [
    "drop",
    "corrupt",
    "duplicate",
    "reorder",
    "delay",
    "link-down",
    "tx-completion-delay",
    "rx-starve",
    "reset-request",
    "dma-fault",
    "dma-foreign-iova",
];

/// How many faults were actually injected, per kind of [`FAULT_KINDS`]
/// (every kind present, zero when none struck), from the topology stats
/// a run reports (`Topology::stats()`: `nics` maps each NIC to its
/// `NicStats`, `wires` lists each wire's fault counters under `faults`),
/// summed over NICs and wires. Wire: frames dropped, corrupted,
/// duplicated, reordered and delayed, link-down transitions. NIC:
/// completions delayed, frames starved, device reset requests (every
/// request the device made, the test fault's and any other), DMAs refused
/// by `dma-fault`, payload reads through a foreign IOVA. Missing fields
/// count zero.
pub fn injected_fault_counts(stats: &serde_json::Value) -> BTreeMap<String, u64> {
    let mut out: BTreeMap<String, u64> = FAULT_KINDS.iter().map(|k| (k.to_string(), 0)).collect();
    let mut add = |kind: &str, v: &serde_json::Value| {
        if let (Some(c), Some(n)) = (out.get_mut(kind), v.as_u64()) {
            *c = c.saturating_add(n);
        }
    };
    for w in stats["wires"].as_array().into_iter().flatten() {
        let f = &w["faults"];
        for (kind, field) in [
            ("drop", "dropped"),
            ("corrupt", "corrupted"),
            ("duplicate", "duplicated"),
            ("reorder", "reordered"),
            ("delay", "delayed"),
            ("link-down", "link_downs"),
        ] {
            add(kind, &f[field]);
        }
    }
    for n in stats["nics"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(_, v)| v)
    {
        for (kind, field) in [
            ("tx-completion-delay", "tx_completions_delayed"),
            ("rx-starve", "rx_starved"),
            ("reset-request", "reset_requests"),
            ("dma-fault", "injected_dma_faults"),
            ("dma-foreign-iova", "tx_foreign_iova_reads"),
        ] {
            add(kind, &n[field]);
        }
    }
    out
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum CampaignError {
    #[error("base scenario {0}: no tcp-transfer step to build cases around")]
    NoTransfer(String),
    #[error("base scenario {0}: no wire in its topology")]
    NoWire(String),
    #[error("step {step:?} is not one a campaign writes: {why}")]
    NotAnOp { step: String, why: String },
    #[error("the scenario does not start with the base's setup steps ({0})")]
    NotFromBase(String),
}

/// Wire faults as a campaign draws them (probabilities in ppm).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FaultSpec {
    pub seed: u64,
    pub drop_ppm: u32,
    pub corrupt_ppm: u32,
    pub duplicate_ppm: u32,
    pub reorder_ppm: u32,
    pub delay_us: u64,
    pub jitter_us: u64,
    pub direction: FaultDirection,
    /// One link outage (at_ms, duration_ms) from the moment it is set.
    pub link_down: Option<(u64, u64)>,
}

impl FaultSpec {
    pub fn to_wire_faults(&self) -> WireFaults {
        let p = |ppm: u32| f64::from(ppm) / PPM;
        WireFaults {
            seed: self.seed,
            drop: p(self.drop_ppm),
            corrupt: p(self.corrupt_ppm),
            duplicate: p(self.duplicate_ppm),
            reorder: p(self.reorder_ppm),
            delay_us: self.delay_us,
            jitter_us: self.jitter_us,
            direction: self.direction,
            link_down: self
                .link_down
                .map(|(at_ms, duration_ms)| LinkWindow { at_ms, duration_ms })
                .into_iter()
                .collect(),
            ..WireFaults::default()
        }
    }

    /// The spec a campaign wrote as `f`; `None` for faults it never writes
    /// (non-ppm probabilities, several outages, other knobs set).
    pub fn from_wire_faults(f: &WireFaults) -> Option<FaultSpec> {
        let ppm = |p: f64| -> Option<u32> {
            let v = (p * PPM).round();
            ((0.0..=PPM).contains(&v) && (v / PPM - p).abs() < 1e-12).then_some(v as u32)
        };
        let d = WireFaults::default();
        if f.skip_first != d.skip_first
            || f.min_len != d.min_len
            || f.max_faults != d.max_faults
            || f.reorder_hold_us != d.reorder_hold_us
            || f.link_down.len() > 1
        {
            return None;
        }
        Some(FaultSpec {
            seed: f.seed,
            drop_ppm: ppm(f.drop)?,
            corrupt_ppm: ppm(f.corrupt)?,
            duplicate_ppm: ppm(f.duplicate)?,
            reorder_ppm: ppm(f.reorder)?,
            delay_us: f.delay_us,
            jitter_us: f.jitter_us,
            direction: f.direction,
            link_down: f.link_down.first().map(|w| (w.at_ms, w.duration_ms)),
        })
    }
}

/// One operation of a schedule (one step of the case).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Wait between steps.
    Pause { ms: u64 },
    /// Replace the faults of the wire that has `nic` at one end.
    WireFaults { nic: String, faults: FaultSpec },
    /// That wire's link down or up (the lab pulls the cable).
    WireLink { nic: String, up: bool },
    /// The base's transfer with these bytes and seed; `unbind_after`: a
    /// devmem sender closes its binding after that many bytes, and with
    /// `rebind` binds the dmabuf again and sends the rest through the new
    /// binding; `close_after`: the sender closes its socket once the kernel
    /// accepted that many bytes (any transfer).
    Transfer {
        bytes: u64,
        seed: u64,
        unbind_after: Option<u64>,
        rebind: bool,
        close_after: Option<u64>,
    },
    /// The guest takes the NIC's interface down or up.
    GuestLink { nic: String, up: bool },
    /// `ethtool -L NIC rx N tx N` (a queue restart; gve has separate RX
    /// and TX channels, no combined ones).
    Channels { nic: String, queues: u32 },
    /// `ethtool -G NIC rx N tx N` (a ring restart).
    Rings { nic: String, rx: u32, tx: u32 },
    /// Replace the NIC's test faults from now on (empty: clear them).
    NicFaults { nic: String, faults: Vec<NicFault> },
    /// Delete the netkit pair whose primary is `dev` (the guest's
    /// `netmem-lab netkit-del`; the peer goes with it).
    NetkitDelete { dev: String },
}

/// A case: operations in order, after the base's setup.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Schedule {
    pub ops: Vec<Op>,
}

/// What a campaign takes from its base scenario.
#[derive(Debug, Clone)]
pub struct CampaignBase {
    pub scenario: Scenario,
    /// The steps before the first transfer: every case starts with them.
    pub setup: Vec<Step>,
    /// The first transfer: the template of `Transfer` ops.
    pub transfer: Step,
    /// NICs on a wire (targets of wire and guest operations), in topology
    /// order.
    pub wired: Vec<String>,
    /// The netns each NIC was moved to by the setup (absent: initial).
    pub netns: BTreeMap<String, String>,
    /// Largest transfer the strategy draws (the base transfer's size,
    /// capped at 16 MiB and rounded down to whole units, at least one).
    pub max_units: u64,
    /// The primary of the netkit pair the setup creates (`netkit-add
    /// --primary NAME`), if any: the target of `NetkitDelete`.
    pub netkit_primary: Option<String>,
}

/// The `--primary NAME` of a setup step running `netkit-add`.
fn netkit_primary_of(step: &Step) -> Option<String> {
    let words: Vec<String> = match &step.kind {
        StepKind::Sh { argv: Some(a), .. } => a.clone(),
        StepKind::Sh {
            script: Some(s), ..
        } => s.split_whitespace().map(String::from).collect(),
        _ => return None,
    };
    let at = words.iter().position(|w| w == "netkit-add")?;
    let rest = &words[at + 1..];
    rest.iter()
        .position(|w| w == "--primary")
        .and_then(|i| rest.get(i + 1))
        .cloned()
}

impl CampaignBase {
    pub fn new(scenario: &Scenario) -> Result<CampaignBase, CampaignError> {
        let at = scenario
            .steps
            .iter()
            .position(|s| matches!(s.kind, StepKind::TcpTransfer { .. }))
            .ok_or_else(|| CampaignError::NoTransfer(scenario.name.clone()))?;
        let wired: Vec<String> = scenario
            .topology
            .nics
            .iter()
            .map(|n| n.name.clone())
            .filter(|n| {
                scenario
                    .topology
                    .wires
                    .iter()
                    .any(|w| &w.a == n || &w.b == n)
            })
            .collect();
        if wired.is_empty() {
            return Err(CampaignError::NoWire(scenario.name.clone()));
        }
        let setup = scenario.steps[..at].to_vec();
        let mut netns = BTreeMap::new();
        for s in &setup {
            if let StepKind::NetnsSetup {
                nic,
                netns: Some(ns),
                ..
            } = &s.kind
            {
                netns.insert(nic.clone(), ns.clone());
            }
        }
        let transfer = scenario.steps[at].clone();
        let bytes = match &transfer.kind {
            StepKind::TcpTransfer { bytes, .. } => *bytes,
            _ => TRANSFER_UNIT,
        };
        Ok(CampaignBase {
            scenario: scenario.clone(),
            setup,
            transfer,
            wired,
            netns,
            max_units: (bytes.min(16 << 20) / TRANSFER_UNIT).max(1),
            netkit_primary: scenario.steps[..at].iter().find_map(netkit_primary_of),
        })
    }

    fn devmem_tx(&self) -> Option<&DevmemTx> {
        match &self.transfer.kind {
            StepKind::TcpTransfer { devmem_tx, .. } => devmem_tx.as_ref(),
            _ => None,
        }
    }

    fn netns_of(&self, nic: &str) -> Option<String> {
        self.netns.get(nic).cloned()
    }
}

const TOOL: &str = images::initramfs::AGENT_GUEST_PATH;

fn placeholder(nic: &str) -> String {
    format!("{{{nic}}}")
}

fn nic_of(arg: &str) -> Option<String> {
    arg.strip_prefix('{')?.strip_suffix('}').map(String::from)
}

impl Op {
    /// A short description (step names).
    pub fn describe(&self) -> String {
        match self {
            Op::Pause { ms } => format!("pause {ms} ms"),
            Op::WireFaults { nic, faults } => {
                let s = crate::steps::fault_summary(&faults.to_wire_faults());
                format!(
                    "wire of {nic}: faults {}",
                    if s.is_empty() { "cleared" } else { &s }
                )
            }
            Op::WireLink { nic, up } => {
                format!("wire of {nic}: link {}", if *up { "up" } else { "down" })
            }
            Op::Transfer {
                bytes,
                seed,
                unbind_after,
                rebind,
                close_after,
            } => format!(
                "transfer {bytes} bytes (seed {seed}){}{}{}",
                unbind_after
                    .map(|u| format!(", unbind after {u}"))
                    .unwrap_or_default(),
                if *rebind { ", re-bind" } else { "" },
                close_after
                    .map(|c| format!(", close after {c}"))
                    .unwrap_or_default()
            ),
            Op::GuestLink { nic, up } => {
                format!("guest: {nic} {}", if *up { "up" } else { "down" })
            }
            Op::Channels { nic, queues } => {
                format!("guest: ethtool -L {nic} rx {queues} tx {queues}")
            }
            Op::Rings { nic, rx, tx } => format!("guest: ethtool -G {nic} rx {rx} tx {tx}"),
            Op::NicFaults { nic, faults } if faults.is_empty() => {
                format!("{nic}: NIC faults cleared")
            }
            Op::NicFaults { nic, faults } => {
                let list: Vec<String> = faults.iter().map(|f| f.to_string()).collect();
                format!("{nic}: NIC faults {}", list.join(", "))
            }
            Op::NetkitDelete { dev } => format!("guest: netkit-del {dev}"),
        }
    }

    fn to_step(&self, base: &CampaignBase, index: usize, transfers: &mut u16) -> Step {
        let name = format!("case {index:02}: {}", self.describe());
        let sh = |argv: Vec<String>, netns: Option<String>| StepKind::Sh {
            script: None,
            argv: Some(argv),
            netns,
            expect_exit: 0,
        };
        let kind = match self {
            Op::Pause { ms } => StepKind::Pause { ms: *ms },
            Op::WireFaults { nic, faults } => StepKind::Wire {
                nic: nic.clone(),
                link: None,
                faults: Some(faults.to_wire_faults()),
            },
            Op::WireLink { nic, up } => StepKind::Wire {
                nic: nic.clone(),
                link: Some(if *up { LinkState::Up } else { LinkState::Down }),
                faults: None,
            },
            Op::Transfer {
                bytes,
                seed,
                unbind_after,
                rebind,
                close_after,
            } => {
                let mut k = base.transfer.kind.clone();
                if let StepKind::TcpTransfer {
                    bytes: b,
                    seed: s,
                    port,
                    close_after: c,
                    devmem_tx,
                    ..
                } = &mut k
                {
                    *b = *bytes;
                    *s = *seed;
                    *c = *close_after;
                    // A port per transfer: a sink of an earlier transfer
                    // that is still waiting must not take this one's data.
                    *port = port.wrapping_add(*transfers);
                    if let Some(d) = devmem_tx {
                        d.unbind_after = *unbind_after;
                        d.rebind = *rebind;
                    }
                }
                *transfers += 1;
                return Step {
                    name,
                    // Under heavy faults a transfer may crawl until its
                    // timeout: a case waits at most CASE_TRANSFER_TIMEOUT_S.
                    timeout_s: Some(
                        base.transfer
                            .timeout_s
                            .unwrap_or_else(|| base.transfer.kind.default_timeout_s())
                            .min(CASE_TRANSFER_TIMEOUT_S),
                    ),
                    kind: k,
                };
            }
            Op::GuestLink { nic, up } => sh(
                vec![
                    "ip".into(),
                    "link".into(),
                    "set".into(),
                    "dev".into(),
                    placeholder(nic),
                    if *up { "up" } else { "down" }.into(),
                ],
                base.netns_of(nic),
            ),
            Op::Channels { nic, queues } => sh(
                vec![
                    TOOL.into(),
                    "ethtool".into(),
                    "-L".into(),
                    placeholder(nic),
                    "rx".into(),
                    queues.to_string(),
                    "tx".into(),
                    queues.to_string(),
                ],
                base.netns_of(nic),
            ),
            Op::Rings { nic, rx, tx } => sh(
                vec![
                    TOOL.into(),
                    "ethtool".into(),
                    "-G".into(),
                    placeholder(nic),
                    "rx".into(),
                    rx.to_string(),
                    "tx".into(),
                    tx.to_string(),
                ],
                base.netns_of(nic),
            ),
            Op::NicFaults { nic, faults } => StepKind::NicFault {
                nic: nic.clone(),
                faults: faults.clone(),
            },
            Op::NetkitDelete { dev } => sh(
                vec![
                    TOOL.into(),
                    "netkit-del".into(),
                    "--dev".into(),
                    dev.clone(),
                ],
                None,
            ),
        };
        Step {
            name,
            timeout_s: None,
            kind,
        }
    }

    fn from_step(step: &Step) -> Result<Op, CampaignError> {
        let bad = |why: &str| CampaignError::NotAnOp {
            step: step.name.clone(),
            why: why.into(),
        };
        Ok(match &step.kind {
            StepKind::Pause { ms } => Op::Pause { ms: *ms },
            StepKind::Wire {
                nic,
                link: None,
                faults: Some(f),
            } => Op::WireFaults {
                nic: nic.clone(),
                faults: FaultSpec::from_wire_faults(f)
                    .ok_or_else(|| bad("wire faults a campaign does not write"))?,
            },
            StepKind::Wire {
                nic,
                link: Some(l),
                faults: None,
            } => Op::WireLink {
                nic: nic.clone(),
                up: *l == LinkState::Up,
            },
            StepKind::Wire { .. } => return Err(bad("a wire step with both link and faults")),
            StepKind::TcpTransfer {
                bytes,
                seed,
                close_after,
                devmem_tx,
                ..
            } => Op::Transfer {
                bytes: *bytes,
                seed: *seed,
                unbind_after: devmem_tx.as_ref().and_then(|d| d.unbind_after),
                rebind: devmem_tx.as_ref().is_some_and(|d| d.rebind),
                close_after: *close_after,
            },
            StepKind::Sh {
                argv: Some(a),
                script: None,
                ..
            } => {
                let a: Vec<&str> = a.iter().map(String::as_str).collect();
                let nic = |s: &str| nic_of(s).ok_or_else(|| bad("no {nic} placeholder"));
                let num = |s: &str| s.parse::<u32>().map_err(|_| bad("not a number"));
                match a.as_slice() {
                    ["ip", "link", "set", "dev", n, state @ ("up" | "down")] => Op::GuestLink {
                        nic: nic(n)?,
                        up: *state == "up",
                    },
                    [t, "ethtool", "-L", n, "rx", r, "tx", x] if *t == TOOL && r == x => {
                        Op::Channels {
                            nic: nic(n)?,
                            queues: num(r)?,
                        }
                    }
                    [t, "ethtool", "-G", n, "rx", r, "tx", x] if *t == TOOL => Op::Rings {
                        nic: nic(n)?,
                        rx: num(r)?,
                        tx: num(x)?,
                    },
                    [t, "netkit-del", "--dev", d] if *t == TOOL => {
                        Op::NetkitDelete { dev: d.to_string() }
                    }
                    _ => return Err(bad("a command a campaign does not write")),
                }
            }
            StepKind::NicFault { nic, faults } => Op::NicFaults {
                nic: nic.clone(),
                faults: faults.clone(),
            },
            k => return Err(bad(&format!("a {} step", k.name()))),
        })
    }
}

impl Schedule {
    /// The fault kinds (names of [`FAULT_KINDS`]) this schedule asks for:
    /// a wire fault with a non-zero setting, a link cut (a wire outage or
    /// a `WireLink` down), a NIC fault set. Whether they strike depends on
    /// the traffic: compare with [`injected_fault_counts`].
    pub fn requested_fault_kinds(&self) -> BTreeSet<&'static str> {
        let mut k = BTreeSet::new();
        for op in &self.ops {
            match op {
                Op::WireFaults { faults: f, .. } => {
                    for (name, on) in [
                        ("drop", f.drop_ppm > 0),
                        ("corrupt", f.corrupt_ppm > 0),
                        ("duplicate", f.duplicate_ppm > 0),
                        ("reorder", f.reorder_ppm > 0),
                        ("delay", f.delay_us > 0 || f.jitter_us > 0),
                        ("link-down", f.link_down.is_some()),
                    ] {
                        if on {
                            k.insert(name);
                        }
                    }
                }
                Op::WireLink { up: false, .. } => {
                    k.insert("link-down");
                }
                Op::NicFaults { faults, .. } => k.extend(faults.iter().map(|f| f.kind())),
                _ => {}
            }
        }
        k
    }

    /// The replayable scenario of this case: the base's setup, then one
    /// step per op; its expectations are the base's for the setup steps,
    /// and every case step may succeed or fail.
    pub fn to_scenario(&self, base: &CampaignBase, name: &str, description: &str) -> Scenario {
        let mut steps = base.setup.clone();
        let mut transfers = 0u16;
        let mut case_names = BTreeSet::new();
        for (i, op) in self.ops.iter().enumerate() {
            let s = op.to_step(base, i, &mut transfers);
            case_names.insert(s.name.clone());
            steps.push(s);
        }
        let setup_names: BTreeSet<&str> = base.setup.iter().map(|s| s.name.as_str()).collect();
        let mut expect = BTreeMap::new();
        for (k, e) in &base.scenario.expect {
            let steps: BTreeMap<_, _> = e
                .steps
                .iter()
                .filter(|(n, _)| setup_names.contains(n.as_str()))
                .map(|(n, v)| (n.clone(), v.clone()))
                .collect();
            let verdict =
                if e.verdict == ExpectedVerdict::ExpectedFail && steps.values().any(|s| !s.ok) {
                    ExpectedVerdict::ExpectedFail
                } else {
                    ExpectedVerdict::Pass
                };
            expect.insert(
                k.clone(),
                Expectation {
                    verdict,
                    steps,
                    bindings: BTreeMap::new(),
                    any_outcome: case_names.clone(),
                },
            );
        }
        // Kernels without their own entry use `default`: case steps may
        // fail there too.
        if !expect.contains_key("default") {
            expect.insert(
                "default".into(),
                Expectation {
                    any_outcome: case_names.clone(),
                    ..Expectation::default()
                },
            );
        }
        Scenario {
            name: name.into(),
            description: description.into(),
            kernels: base.scenario.kernels.clone(),
            topology: base.scenario.topology.clone(),
            steps,
            expect,
        }
    }

    /// The schedule of a case scenario written by [`to_scenario`] from
    /// `base` (a regression file read back).
    ///
    /// [`to_scenario`]: Schedule::to_scenario
    pub fn from_scenario(base: &CampaignBase, scn: &Scenario) -> Result<Schedule, CampaignError> {
        let n = base.setup.len();
        if scn.steps.len() < n || scn.steps[..n].iter().zip(&base.setup).any(|(a, b)| a != b) {
            return Err(CampaignError::NotFromBase(base.scenario.name.clone()));
        }
        let ops = scn.steps[n..]
            .iter()
            .map(Op::from_step)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Schedule { ops })
    }
}

/// proptest strategies over schedules.
pub mod strategy {
    use super::*;

    fn fault_spec() -> impl Strategy<Value = FaultSpec> {
        (
            any::<u16>(),
            // Each knob on in half the draws: a short campaign still
            // sets every kind (see `FAULT_KINDS`) at least once.
            prop_oneof![1 => Just(0u32), 1 => 1..=MAX_FAULT_PPM],
            prop_oneof![1 => Just(0u32), 1 => 1..=MAX_FAULT_PPM],
            prop_oneof![1 => Just(0u32), 1 => 1..=MAX_FAULT_PPM],
            prop_oneof![1 => Just(0u32), 1 => 1..=MAX_FAULT_PPM],
            prop_oneof![2 => Just(0u64), 1 => 1..=20_000u64],
            prop_oneof![2 => Just(0u64), 1 => 1..=5_000u64],
            select(vec![
                FaultDirection::Both,
                FaultDirection::AToB,
                FaultDirection::BToA,
            ]),
            proptest::option::weighted(0.3, (0..=2_000u64, 1..=3_000u64)),
        )
            .prop_map(
                |(
                    seed,
                    drop_ppm,
                    corrupt_ppm,
                    duplicate_ppm,
                    reorder_ppm,
                    delay_us,
                    jitter_us,
                    direction,
                    link_down,
                )| FaultSpec {
                    seed: u64::from(seed),
                    drop_ppm,
                    corrupt_ppm,
                    duplicate_ppm,
                    reorder_ppm,
                    delay_us,
                    jitter_us,
                    direction,
                    link_down,
                },
            )
    }

    /// One NIC fault a campaign draws: every kind but `dma-foreign-iova`
    /// (a deliberate device bug, only through
    /// [`CampaignConfig::test_faults`]). Delays stay far below gve's 5 s TX
    /// watchdog.
    pub fn nic_fault() -> impl Strategy<Value = NicFault> {
        // The `after` counts are small enough that a case's traffic (its
        // transfers end every schedule) reaches them. Which queue a flow
        // uses is up to RSS and XPS: a DMA fault mostly strikes whichever
        // queue of its direction (`any`), sometimes a given one.
        prop_oneof![
            (1..=MAX_TX_COMPLETION_DELAY_MS).prop_map(|ms| NicFault::TxCompletionDelay { ms }),
            (0..=MAX_FAULT_AFTER, 1..=200u64)
                .prop_map(|(after, frames)| NicFault::RxStarve { after, frames }),
            (0..=MAX_FAULT_AFTER).prop_map(|after| NicFault::ResetRequest { after }),
            (
                select(vec![QueueDir::Tx, QueueDir::Rx]),
                prop_oneof![3 => Just(sim_nic::faults::ANY_QUEUE), 1 => 0..MAX_FAULT_QUEUES],
                0..=MAX_FAULT_AFTER
            )
                .prop_map(|(dir, queue, after)| NicFault::DmaFault {
                    dir,
                    queue,
                    after
                }),
        ]
    }

    /// One operation on `base` (simplest kinds first: shrinking moves
    /// towards them).
    pub fn op(base: &CampaignBase) -> BoxedStrategy<Op> {
        let nics = select(base.wired.clone());
        let transfer = transfer_op(base);
        let all_nics = select(
            base.scenario
                .topology
                .nics
                .iter()
                .map(|n| n.name.clone())
                .collect::<Vec<_>>(),
        );
        let netkit = base.netkit_primary.clone();
        let netkit_weight = if netkit.is_some() { 1 } else { 0 };
        let netkit = Just(netkit.unwrap_or_default());
        prop_oneof![
            2 => (0..=2_000u64).prop_map(|ms| Op::Pause { ms }),
            4 => (nics.clone(), fault_spec()).prop_map(|(nic, faults)| Op::WireFaults { nic, faults }),
            1 => (nics.clone(), any::<bool>()).prop_map(|(nic, up)| Op::WireLink { nic, up }),
            4 => transfer,
            1 => (nics.clone(), any::<bool>()).prop_map(|(nic, up)| Op::GuestLink { nic, up }),
            1 => (nics.clone(), 1..=4u32).prop_map(|(nic, queues)| Op::Channels { nic, queues }),
            1 => (nics, select(vec![256u32, 512, 1024]), select(vec![256u32, 512, 1024]))
                .prop_map(|(nic, rx, tx)| Op::Rings { nic, rx, tx }),
            4 => (all_nics.clone(), proptest::collection::vec(nic_fault(), 1..=3))
                .prop_map(|(nic, faults)| Op::NicFaults { nic, faults }),
            1 => all_nics.prop_map(|nic| Op::NicFaults { nic, faults: Vec::new() }),
            netkit_weight => netkit.prop_map(|dev| Op::NetkitDelete { dev }),
        ]
        .boxed()
    }

    /// A transfer op on `base`: bytes in units, seed, maybe a devmem unbind
    /// (half of them re-bind) and a sender close.
    pub fn transfer_op(base: &CampaignBase) -> BoxedStrategy<Op> {
        let units = base.max_units;
        let devmem = base.devmem_tx().is_some();
        // Points inside the transfer, in percent of its bytes: a devmem
        // unbind (half of them re-bind), a sender close (any transfer).
        // (`option::weighted` refuses probability 0: a plain base draws
        // no unbind at all.)
        let unbind = if devmem {
            proptest::option::weighted(0.25, 1..100u64).boxed()
        } else {
            Just(None).boxed()
        };
        let transfer = (
            1..=units,
            1..=1000u64,
            unbind,
            proptest::bool::weighted(0.5),
            proptest::option::weighted(0.2, 1..100u64),
        )
            .prop_map(|(u, seed, unbind_pct, rebind, close_pct)| {
                let bytes = u * TRANSFER_UNIT;
                let at = |p: u64| (bytes * p / 100).clamp(1, bytes - 1);
                Op::Transfer {
                    bytes,
                    seed,
                    unbind_after: unbind_pct.map(at),
                    rebind: rebind && unbind_pct.is_some(),
                    close_after: close_pct.map(at),
                }
            });
        transfer.boxed()
    }

    /// Schedules of 1..=`max_ops` operations on `base`, the last one a
    /// transfer: whatever the ops before it did (faults set, links cut,
    /// queues restarted, bindings dropped), traffic then runs through it,
    /// the faults strike, and the verifier judges what reached the wire.
    pub fn schedule(base: &CampaignBase, max_ops: usize) -> BoxedStrategy<Schedule> {
        (
            proptest::collection::vec(op(base), 0..max_ops.max(1)),
            transfer_op(base),
        )
            .prop_map(|(mut ops, last)| {
                ops.push(last);
                Schedule { ops }
            })
            .boxed()
    }

    /// The schedules of a campaign run with `cfg`: [`schedule`] with
    /// `cfg.max_ops`, and when `cfg.test_faults` is not empty every
    /// schedule starts with a `NicFaults` op setting them on the base's
    /// first NIC. That op is not drawn, so shrinking never removes it: a
    /// regression still contains it and replays the violation.
    pub fn campaign_schedule(base: &CampaignBase, cfg: &CampaignConfig) -> BoxedStrategy<Schedule> {
        let inner = schedule(base, cfg.max_ops);
        let first = base.scenario.topology.nics.first().map(|n| n.name.clone());
        match first {
            Some(nic) if !cfg.test_faults.is_empty() => {
                let prefix = Op::NicFaults {
                    nic,
                    faults: cfg.test_faults.clone(),
                };
                inner
                    .prop_map(move |mut s| {
                        s.ops.insert(0, prefix.clone());
                        s
                    })
                    .boxed()
            }
            _ => inner,
        }
    }
}

/// Why a case failed: the violated invariant and what was seen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaseFailure {
    pub invariant: String,
    pub detail: String,
}

/// Knobs of a campaign run.
#[derive(Debug, Clone)]
pub struct CampaignConfig {
    /// Passing cases wanted.
    pub cases: u32,
    /// Everything drawn comes from this seed.
    pub seed: u64,
    /// Operations per schedule at most.
    pub max_ops: usize,
    /// Cases run while shrinking at most.
    pub max_shrink_iters: u32,
    /// NIC faults every case sets first on the base's first NIC (see
    /// [`strategy::campaign_schedule`]), e.g. `dma-foreign-iova`, a
    /// deliberate device bug the verifier must catch; never drawn
    /// otherwise.
    pub test_faults: Vec<NicFault>,
}

impl Default for CampaignConfig {
    fn default() -> Self {
        CampaignConfig {
            cases: 16,
            seed: 0,
            max_ops: 8,
            max_shrink_iters: 64,
            test_faults: Vec::new(),
        }
    }
}

/// Progress, for a progress bar.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// Cases run (generated and shrinking).
    pub cases_run: u32,
    /// Cases that violated an invariant.
    pub violations: u32,
    /// Running shrink cases (after the first violation).
    pub shrinking: bool,
}

/// A violation and its shrunk schedule.
#[derive(Debug, Clone, PartialEq)]
pub struct Found {
    /// The first failing schedule drawn.
    pub original: Schedule,
    pub original_failure: CaseFailure,
    /// The smallest schedule proptest found that fails the same invariant.
    pub minimal: Schedule,
    pub failure: CaseFailure,
}

/// What a campaign did.
#[derive(Debug, Clone, PartialEq)]
pub struct CampaignOutcome {
    pub cases_run: u32,
    pub violations: u32,
    pub found: Option<Found>,
    /// proptest gave up (too many rejects, …).
    pub aborted: Option<String>,
}

/// 32 bytes of ChaCha seed from a u64 (SplitMix64).
pub fn rng_for(seed: u64) -> TestRng {
    let mut sm = sim_nic::faults::SplitMix64::new(seed);
    let mut bytes = [0u8; 32];
    for c in bytes.chunks_exact_mut(8) {
        c.copy_from_slice(&sm.next_u64().to_le_bytes());
    }
    TestRng::from_seed(RngAlgorithm::ChaCha, &bytes)
}

fn runner_config(cfg: &CampaignConfig) -> Config {
    Config {
        cases: cfg.cases,
        max_shrink_iters: cfg.max_shrink_iters,
        max_shrink_time: 0,
        failure_persistence: None,
        fork: false,
        timeout: 0,
        verbose: 0,
        max_global_rejects: 1024,
        ..Config::default()
    }
}

/// Runs a campaign: draws schedules from `strategy` (reproducibly from
/// `cfg.seed`), runs each with `run_case`, and when one fails shrinks it
/// to the smallest schedule that fails the same invariant (a case that
/// fails another invariant while shrinking counts as passing, so shrinking
/// does not wander to another bug). `progress` is told after every case.
pub fn run_campaign(
    cfg: &CampaignConfig,
    strategy: &BoxedStrategy<Schedule>,
    run_case: impl FnMut(&Schedule) -> Result<(), CaseFailure>,
    progress: impl FnMut(Progress),
) -> CampaignOutcome {
    struct State<F, P> {
        run_case: F,
        progress: P,
        p: Progress,
        first: Option<(Schedule, CaseFailure)>,
        last: Option<(Schedule, CaseFailure)>,
    }
    let st = RefCell::new(State {
        run_case,
        progress,
        p: Progress {
            cases_run: 0,
            violations: 0,
            shrinking: false,
        },
        first: None,
        last: None,
    });
    let mut runner = TestRunner::new_with_rng(runner_config(cfg), rng_for(cfg.seed));
    let result = runner.run(strategy, |s: Schedule| {
        let mut g = st.borrow_mut();
        let g = &mut *g;
        let r = (g.run_case)(&s);
        g.p.cases_run += 1;
        let verdict = match r {
            Ok(()) => Ok(()),
            Err(f) => match &g.first {
                None => {
                    g.p.violations += 1;
                    g.p.shrinking = true;
                    g.first = Some((s.clone(), f.clone()));
                    g.last = Some((s, f.clone()));
                    Err(TestCaseError::fail(f.invariant))
                }
                Some((_, first)) if first.invariant == f.invariant => {
                    g.p.violations += 1;
                    g.last = Some((s, f.clone()));
                    Err(TestCaseError::fail(f.invariant))
                }
                // Another invariant: not the failure being shrunk.
                Some(_) => Ok(()),
            },
        };
        let p = g.p;
        (g.progress)(p);
        verdict
    });
    let st = st.into_inner();
    let mut out = CampaignOutcome {
        cases_run: st.p.cases_run,
        violations: st.p.violations,
        found: None,
        aborted: None,
    };
    match result {
        Ok(()) => {}
        Err(TestError::Fail(_, minimal)) => {
            if let (Some((original, original_failure)), Some((last, lf))) = (st.first, st.last) {
                // proptest's minimal value is the last failing case run.
                let failure = if last == minimal {
                    lf
                } else {
                    original_failure.clone()
                };
                out.found = Some(Found {
                    original,
                    original_failure,
                    minimal,
                    failure,
                });
            }
        }
        Err(TestError::Abort(why)) => out.aborted = Some(why.to_string()),
    }
    out
}

/// A scenario as TOML text (what `--file` reads back).
pub fn scenario_toml(scn: &Scenario) -> Result<String, String> {
    toml::to_string(scn).map_err(|e| format!("scenario {}: {e}", scn.name))
}

/// Invariant name of a case the lab could not run to its end (the guest
/// died, the agent stopped answering, a step was a lab error): under
/// injected faults that is itself worth a regression.
pub const RUN_COMPLETED: &str = "run-completed";

/// The violation a case's scenario report shows: a run that ended in
/// `error` ([`RUN_COMPLETED`]), else the first invariant in report order
/// that was checked and broken (the verifier's DMA invariants, payload
/// integrity, and `expectation` for the setup steps). `None`: the case
/// passed.
pub fn case_failure(report: &serde_json::Value) -> Option<CaseFailure> {
    if report["verdict"].as_str() == Some("error") {
        return Some(CaseFailure {
            invariant: RUN_COMPLETED.into(),
            detail: report["error"]
                .as_str()
                .unwrap_or("the run ended in error")
                .to_string(),
        });
    }
    report["invariants"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|i| i["ok"] == serde_json::json!(false) && i["checked"] != serde_json::json!(false))
        .map(|i| CaseFailure {
            invariant: i["name"].as_str().unwrap_or("?").to_string(),
            detail: i["detail"].as_str().unwrap_or_default().to_string(),
        })
}

/// A file name for a regression: the base's name and the seed.
pub fn regression_name(base: &str, seed: u64) -> String {
    format!("{base}-seed{seed}")
}

/// The regression file's text: the minimal case as a scenario (what
/// `netmem-lab scenario --file` replays) with a header naming the violated
/// invariant and how it was found.
pub fn regression_text(
    name: &str,
    base: &CampaignBase,
    found: &Found,
    seed: u64,
    kernel: &str,
) -> Result<String, String> {
    let scn = found.minimal.to_scenario(
        base,
        name,
        &format!(
            "campaign regression: {} (minimal schedule of {} ops, base {}, seed {seed}, kernel {kernel})",
            found.failure.invariant,
            found.minimal.ops.len(),
            base.scenario.name
        ),
    );
    let body = toml::to_string(&scn).map_err(|e| e.to_string())?;
    let mut text = format!(
        "# Found by `netmem-lab campaign --scenario {} --seed {seed} --kernel {kernel}`.\n# Violated invariant: {}\n# {}\n# Minimal schedule:\n",
        base.scenario.name,
        found.failure.invariant,
        found.failure.detail.replace('\n', "\n# "),
    );
    for (i, op) in found.minimal.ops.iter().enumerate() {
        text.push_str(&format!("#   {i:02}: {}\n", op.describe()));
    }
    text.push('\n');
    text.push_str(&body);
    Ok(text)
}

/// Writes [`regression_text`] as `dir/<name>.toml`. Returns the path.
pub fn write_regression(
    dir: &Path,
    name: &str,
    base: &CampaignBase,
    found: &Found,
    seed: u64,
    kernel: &str,
) -> std::io::Result<PathBuf> {
    let text = regression_text(name, base, found, seed, kernel).map_err(std::io::Error::other)?;
    write_regression_text(dir, name, &text)
}

/// Writes a regression's text as `dir/<name>.toml`. Returns the path.
pub fn write_regression_text(dir: &Path, name: &str, text: &str) -> std::io::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, text)?;
    Ok(path)
}

#[cfg(test)]
mod tests;
