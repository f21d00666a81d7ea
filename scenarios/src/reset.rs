//! `netmem-lab lab-reset`: puts a lab guest back into the state it booted
//! in, so one booted VM can run scenario after scenario (matrix, campaign).
//!
//! ```text
//! netmem-lab lab-reset [--state FILE]
//! ```
//!
//! The first run (no state file yet) only records each PCI NIC's ethtool
//! settings as booted (channels, rings, tcp-data-split, ntuple feature) in
//! the state file; every later run undoes what scenarios do:
//!
//! 1. every process but PID 1 and this tool's ancestors is killed (devmem
//!    senders and receivers, detached sinks): their sockets close, which
//!    unbinds their dmabufs;
//! 2. `/sys/fs/bpf` is emptied: the tcx/netkit links the lab pins are
//!    released, detaching their programs;
//! 3. every named netns under `/run/netns` gives its devices back to the
//!    initial netns and is deleted;
//! 4. in the initial netns, every virtual link (netkit pairs: deleting one
//!    end deletes both, and with the guest end its queue leases) is deleted,
//!    and every PCI NIC makes a round trip through a scratch netns: moving a
//!    device between namespaces closes it and drops all its addresses and
//!    routes, so it comes back down and bare, as at boot;
//! 5. IP forwarding is switched off;
//! 6. each PCI NIC's ntuple rules are deleted and its channels, rings,
//!    tcp-data-split and RSS indirection (equal over its RX queues) are
//!    set back to what the state file recorded.
//!
//! It prints one JSON line: what it did, and `ok`.

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::ethtool::{self, ChannelsSet, EthtoolSock, RingsSet, TcpDataSplit};
use crate::guest_tools::{NETNS_DIR, rtnl};

/// Where the booted state is kept in the guest (tmpfs).
pub const DEFAULT_STATE: &str = "/run/netmem-lab/booted-nics.json";
/// bpffs, where the lab pins its BPF links.
const BPFFS: &str = "/sys/fs/bpf";
/// How long killed processes get to disappear.
const KILL_WAIT: Duration = Duration::from_secs(10);

/// One PCI NIC's settings as booted.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct NicState {
    pub ifname: String,
    pub combined: u32,
    pub rx: u32,
    pub tx: u32,
    pub rx_ring: Option<u32>,
    pub tx_ring: Option<u32>,
    /// ETHTOOL_A_RINGS_TCP_DATA_SPLIT as read (0 unknown, 1 off, 2 on).
    pub tcp_data_split: Option<u8>,
    /// The `ntuple` feature on (`rx-ntuple-filter`).
    pub ntuple: Option<bool>,
}

/// Interface names of the calling thread's netns (from its /proc view).
fn links_here() -> Vec<String> {
    let Ok(t) = std::fs::read_to_string("/proc/thread-self/net/dev") else {
        return vec![];
    };
    t.lines()
        .skip(2)
        .filter_map(|l| l.split_once(':').map(|(n, _)| n.trim().to_string()))
        .filter(|n| n != "lo")
        .collect()
}

/// PCI NICs of the initial netns (interfaces with a PCI parent in sysfs).
fn pci_nics() -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir("/sys/class/net")
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| {
            std::fs::read_link(e.path().join("device"))
                .map(|p| p.to_string_lossy().contains("pci"))
                .unwrap_or(false)
                || e.path().join("device/vendor").exists()
        })
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

fn ntuple_on(sock: &EthtoolSock, dev: &str) -> Option<bool> {
    let (_, feats) = ethtool::features_get(sock, dev).ok()?;
    feats
        .iter()
        .find(|f| f.name == "rx-ntuple-filter")
        .map(|f| f.active)
}

/// The settings of the PCI NICs now.
pub fn snapshot() -> Result<Vec<NicState>, String> {
    let sock = EthtoolSock::open().map_err(|e| e.error)?;
    let mut out = Vec::new();
    for dev in pci_nics() {
        let c = ethtool::channels_get(&sock, &dev).map_err(|e| format!("{dev}: {}", e.error))?;
        let r = ethtool::rings_get(&dev).ok();
        out.push(NicState {
            ntuple: ntuple_on(&sock, &dev),
            ifname: dev,
            combined: c.combined_count,
            rx: c.rx_count,
            tx: c.tx_count,
            rx_ring: r.as_ref().and_then(|r| r.rx),
            tx_ring: r.as_ref().and_then(|r| r.tx),
            tcp_data_split: r.and_then(|r| r.tcp_data_split),
        });
    }
    Ok(out)
}

fn ancestors() -> Vec<i32> {
    let mut v = vec![std::process::id() as i32];
    let mut pid = std::process::id() as i32;
    while pid > 1 {
        let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            break;
        };
        let Some(close) = s.rfind(')') else { break };
        let ppid = s[close + 1..]
            .split_whitespace()
            .nth(1)
            .and_then(|p| p.parse::<i32>().ok())
            .unwrap_or(0);
        v.push(ppid);
        pid = ppid;
    }
    v
}

/// User processes (not kernel threads) other than PID 1 and `keep`.
fn others(keep: &[i32]) -> Vec<i32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|p| *p > 1 && !keep.contains(p))
        // Kernel threads have an empty cmdline (and kthreadd as parent).
        .filter(|p| std::fs::read(format!("/proc/{p}/cmdline")).is_ok_and(|c| !c.is_empty()))
        .collect()
}

/// Kills every other user process; returns (killed, still there).
fn kill_others() -> (Vec<String>, Vec<i32>) {
    let keep = ancestors();
    let victims = others(&keep);
    let mut names = Vec::new();
    for p in &victims {
        let comm = std::fs::read_to_string(format!("/proc/{p}/comm")).unwrap_or_default();
        names.push(format!("{p} {}", comm.trim()));
        // SAFETY: kill(2) on a pid.
        unsafe { libc::kill(*p, libc::SIGKILL) };
    }
    let t0 = Instant::now();
    loop {
        // Zombies of PID 1 are reaped by it; count only live ones.
        let left: Vec<i32> = others(&keep)
            .into_iter()
            .filter(|p| victims.contains(p))
            .collect();
        if left.is_empty() || t0.elapsed() > KILL_WAIT {
            return (names, left);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn empty_bpffs() -> Result<usize, String> {
    let mut n = 0;
    let Ok(rd) = std::fs::read_dir(BPFFS) else {
        return Ok(0);
    };
    for e in rd.flatten() {
        let p = e.path();
        let r = if p.is_dir() {
            std::fs::remove_dir_all(&p)
        } else {
            std::fs::remove_file(&p)
        };
        r.map_err(|err| format!("rm {}: {err}", p.display()))?;
        n += 1;
    }
    Ok(n)
}

fn init_netns_fd() -> Result<std::fs::File, String> {
    std::fs::File::open("/proc/1/ns/net").map_err(|e| format!("/proc/1/ns/net: {e}"))
}

/// In the netns at `path` (on a helper thread): move every link to the
/// initial netns (deleting those that may not move), then delete the netns.
fn dissolve_netns(path: &Path) -> Result<Vec<String>, String> {
    let p = path.to_path_buf();
    let moved = std::thread::spawn(move || -> Result<Vec<String>, String> {
        crate::guest_tools::setns_path(&p)?;
        let init = init_netns_fd()?;
        let mut nl = rtnl::Rtnl::open()?;
        let mut done = Vec::new();
        for dev in links_here() {
            let Ok(idx) = crate::guest_tools::ifindex(&dev) else {
                continue;
            };
            match nl.link_set_netns(idx as i32, init.as_raw_fd()) {
                Ok(()) => done.push(format!("{dev} back")),
                // A name taken in the initial netns, or a netns-local device.
                Err(_) => match nl.link_del(idx as i32) {
                    Ok(()) => done.push(format!("{dev} deleted")),
                    Err(e) => done.push(format!("{dev} left ({e})")),
                },
            }
        }
        Ok(done)
    })
    .join()
    .map_err(|_| "netns thread panicked".to_string())??;
    let c = std::ffi::CString::new(path.as_os_str().to_string_lossy().as_bytes())
        .map_err(|e| e.to_string())?;
    // SAFETY: valid C string; detaching a bind mount of an nsfs file.
    unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
    std::fs::remove_file(path).map_err(|e| format!("rm {}: {e}", path.display()))?;
    Ok(moved)
}

/// Name of the netns the NICs pass through.
const SCRATCH: &str = "lab-reset-scratch";

/// Moves the PCI NICs (initial netns) into a scratch netns and back: they
/// return closed, with no addresses and no routes.
fn round_trip(devs: &[String]) -> Result<(), String> {
    let dir = PathBuf::from(NETNS_DIR);
    let path = dir.join(SCRATCH);
    let d = dir.clone();
    std::thread::spawn(move || crate::guest_tools::netns_add_in(&d, SCRATCH))
        .join()
        .map_err(|_| "scratch netns thread panicked".to_string())??;
    let ns = std::fs::File::open(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut nl = rtnl::Rtnl::open()?;
    for dev in devs {
        let idx = crate::guest_tools::ifindex(dev)?;
        nl.link_set_netns(idx as i32, ns.as_raw_fd())
            .map_err(|e| format!("{dev} to a scratch netns: {e}"))?;
    }
    let back = dissolve_netns(&path)?;
    if back.len() != devs.len() || back.iter().any(|b| !b.ends_with(" back")) {
        return Err(format!("from the scratch netns: {back:?}"));
    }
    Ok(())
}

fn write_sysctl(path: &str, v: &str) -> Result<(), String> {
    std::fs::write(path, v).map_err(|e| format!("{path}: {e}"))
}

/// Ethtool settings of `want.ifname` back to `want`.
fn restore_nic(sock: &EthtoolSock, want: &NicState) -> Result<Vec<String>, String> {
    let dev = want.ifname.as_str();
    let e = |what: &str, err: ethtool::EtError| format!("{dev}: {what}: {}", err.error);
    let mut did = Vec::new();
    let (count, _) = ethtool::rule_count(sock, dev).unwrap_or((0, 0));
    if count > 0 {
        let (_, locs) = sock
            .rule_locations(dev, count)
            .map_err(|x| e("ntuple rules", x))?;
        for l in locs {
            ethtool::rule_delete(sock, dev, l).map_err(|x| e("ntuple delete", x))?;
            did.push(format!("{dev}: rule {l} deleted"));
        }
    }
    let c = ethtool::channels_get(sock, dev).map_err(|x| e("channels", x))?;
    if (c.combined_count, c.rx_count, c.tx_count) != (want.combined, want.rx, want.tx) {
        ethtool::channels_set(
            sock,
            dev,
            &ChannelsSet {
                rx: Some(want.rx),
                tx: Some(want.tx),
                other: None,
                combined: Some(want.combined),
            },
        )
        .map_err(|x| e("channels", x))?;
        did.push(format!("{dev}: channels restored"));
    }
    if let Ok(r) = ethtool::rings_get(dev) {
        let split = match want.tcp_data_split {
            Some(1) => Some(TcpDataSplit::Off),
            Some(2) => Some(TcpDataSplit::On),
            _ => None,
        };
        let set = RingsSet {
            rx: want.rx_ring.filter(|w| r.rx != Some(*w)),
            tx: want.tx_ring.filter(|w| r.tx != Some(*w)),
            tcp_data_split: split.filter(|_| r.tcp_data_split != want.tcp_data_split),
        };
        if set != RingsSet::default() {
            ethtool::rings_set(dev, &set).map_err(|x| e("rings", x))?;
            did.push(format!("{dev}: rings restored"));
        }
    }
    let rxq = if want.combined > 0 {
        want.combined
    } else {
        want.rx
    };
    if rxq > 0 && sock.rxfh_indir_get(dev).is_ok_and(|t| !t.is_empty()) {
        ethtool::rss_set_equal(sock, dev, rxq).map_err(|x| e("RSS", x))?;
    }
    if let (Some(w), Some(now)) = (want.ntuple, ntuple_on(sock, dev))
        && w != now
    {
        let _ = ethtool::features_set(sock, dev, &[("ntuple".to_string(), w)]);
        did.push(format!("{dev}: ntuple {}", if w { "on" } else { "off" }));
    }
    Ok(did)
}

/// The whole reset; see the module docs.
pub fn reset(state: &Path) -> Result<serde_json::Value, String> {
    if !state.exists() {
        let s = snapshot()?;
        if let Some(d) = state.parent() {
            std::fs::create_dir_all(d).map_err(|e| format!("mkdir {}: {e}", d.display()))?;
        }
        let text = serde_json::to_string(&s).map_err(|e| e.to_string())?;
        std::fs::write(state, text).map_err(|e| format!("{}: {e}", state.display()))?;
        return Ok(json!({"ok": true, "recorded": s}));
    }
    let booted: Vec<NicState> = serde_json::from_str(
        &std::fs::read_to_string(state).map_err(|e| format!("{}: {e}", state.display()))?,
    )
    .map_err(|e| format!("{}: {e}", state.display()))?;
    let (killed, left) = kill_others();
    if !left.is_empty() {
        return Err(format!("processes outlived SIGKILL: {left:?}"));
    }
    let pins = empty_bpffs()?;
    let mut netns = Vec::new();
    if let Ok(rd) = std::fs::read_dir(NETNS_DIR) {
        let mut paths: Vec<PathBuf> = rd.flatten().map(|e| e.path()).collect();
        paths.sort();
        for p in paths {
            let done = dissolve_netns(&p)?;
            netns.push(json!({"netns": p.file_name().map(|n| n.to_string_lossy().into_owned()), "links": done}));
        }
    }
    let nics = pci_nics();
    let mut deleted = Vec::new();
    {
        let mut nl = rtnl::Rtnl::open()?;
        for dev in links_here() {
            if nics.contains(&dev) {
                continue;
            }
            if let Ok(idx) = crate::guest_tools::ifindex(&dev)
                && nl.link_del(idx as i32).is_ok()
            {
                deleted.push(dev);
            }
        }
    }
    round_trip(&nics)?;
    for p in [
        "/proc/sys/net/ipv4/ip_forward",
        "/proc/sys/net/ipv6/conf/all/forwarding",
    ] {
        write_sysctl(p, "0")?;
    }
    let sock = EthtoolSock::open().map_err(|e| e.error)?;
    let mut restored = Vec::new();
    for want in &booted {
        if !nics.contains(&want.ifname) {
            return Err(format!(
                "{} is not back in the initial netns (there: {nics:?})",
                want.ifname
            ));
        }
        restored.extend(restore_nic(&sock, want)?);
    }
    Ok(json!({
        "ok": true,
        "killed": killed,
        "bpf_pins_removed": pins,
        "netns_deleted": netns,
        "links_deleted": deleted,
        "nics": nics,
        "restored": restored,
    }))
}

/// The `lab-reset` tool.
pub fn main(args: &[String]) -> i32 {
    let state = match args {
        [] => PathBuf::from(DEFAULT_STATE),
        [f, p] if f == "--state" => PathBuf::from(p),
        _ => {
            println!(
                "{}",
                json!({"ok": false, "error": "usage: lab-reset [--state FILE]"})
            );
            return 2;
        }
    };
    match reset(&state) {
        Ok(v) => {
            println!("{v}");
            0
        }
        Err(e) => {
            println!("{}", json!({"ok": false, "error": e}));
            1
        }
    }
}
