//! QEMU as the yardstick for `bench`: the same kernel, initramfs and command
//! line on the same engine (host KVM, or L1's KVM when nested), with the agent
//! on a virtconsole, timed from process start to the agent's ready event.

use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::job::MachineSpec;
use crate::run::Agent;

/// Where QEMU and its firmware are.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct QemuInstall {
    pub binary: PathBuf,
    /// Extra firmware directory (`-L`), for a QEMU copied into L1.
    pub datadir: Option<PathBuf>,
    /// Extra library path (`LD_LIBRARY_PATH`) for a QEMU copied into L1.
    pub libdir: Option<PathBuf>,
}

/// CPU features QEMU must not offer when the guest must not use XSAVE
/// (see vmm::arch::cpuid::hide_xsave; QEMU names).
const NO_XSAVE_FLAGS: &[&str] = &[
    "xsave",
    "xsaveopt",
    "xsavec",
    "xgetbv1",
    "xsaves",
    "avx",
    "avx2",
    "fma",
    "f16c",
    "pku",
    "vaes",
    "vpclmulqdq",
    "avx512f",
    "avx512dq",
    "avx512ifma",
    "avx512cd",
    "avx512bw",
    "avx512vl",
    "avx512vbmi",
    "avx512vbmi2",
    "avx512vnni",
    "avx512bitalg",
    "avx512-vpopcntdq",
    "avx-vnni",
    "avx512-bf16",
    "xop",
    "fma4",
];

pub fn qemu_args(
    m: &MachineSpec,
    agent_sock: &Path,
    console_log: &Path,
    datadir: Option<&Path>,
) -> Vec<String> {
    let mut cpu = String::from("host");
    if m.hide_xsave {
        for f in NO_XSAVE_FLAGS {
            cpu.push_str(&format!(",{f}=off"));
        }
    }
    let mut a: Vec<String> = vec![
        "-accel".into(),
        "kvm".into(),
        "-M".into(),
        "q35".into(),
        "-cpu".into(),
        cpu,
    ];
    a.extend(vmm::engine::direct_boot_args(
        &m.kernel,
        &m.initramfs,
        &m.cmdline,
        m.mem_mib,
        m.vcpus,
        console_log,
    ));
    a.extend([
        "-chardev".into(),
        format!("socket,id=agent,path={}", agent_sock.display()),
        "-device".into(),
        "virtconsole,chardev=agent".into(),
    ]);
    if let Some(d) = datadir {
        a.push("-L".into());
        a.push(d.display().to_string());
    }
    a
}

/// Boot `m` under QEMU once; returns the boot-to-agent time.
pub fn boot_once(
    m: &MachineSpec,
    q: &QemuInstall,
    run_dir: &Path,
    timeout: Duration,
) -> Result<Duration, String> {
    with_guest(m, q, run_dir, timeout, &[], |_| ()).map(|(t, ())| t)
}

/// QEMU's side of `bench net`: two virtio-net functions at the PCI
/// addresses of the lab's first two sim-nics (00:04.0, 00:05.0), joined by
/// a QEMU hub, which passes every frame of one to the other (a wire).
pub fn virtio_net_pair_args() -> Vec<String> {
    let mut a = Vec::new();
    for (i, slot) in [4u8, 5].iter().enumerate() {
        a.extend([
            "-netdev".into(),
            format!("hubport,id=n{i},hubid=0"),
            "-device".into(),
            format!(
                "virtio-net-pci,netdev=n{i},addr={slot:#x},mac=02:00:00:00:0{slot}:01,romfile="
            ),
        ]);
    }
    a
}

/// Boot `m` under QEMU with `extra` arguments, run `f` against its agent,
/// and power it off. Returns the boot-to-agent time and `f`'s result.
pub fn with_guest<T>(
    m: &MachineSpec,
    q: &QemuInstall,
    run_dir: &Path,
    timeout: Duration,
    extra: &[String],
    f: impl FnOnce(&mut Agent) -> T,
) -> Result<(Duration, T), String> {
    let sock = run_dir.join("qemu-agent.sock");
    let con = run_dir.join("qemu-console.log");
    let _ = std::fs::remove_file(&sock);
    let listener =
        UnixListener::bind(&sock).map_err(|e| format!("binding {}: {e}", sock.display()))?;
    listener.set_nonblocking(true).map_err(|e| e.to_string())?;
    let start = Instant::now();
    let mut cmd = Command::new(&q.binary);
    cmd.args(qemu_args(m, &sock, &con, q.datadir.as_deref()))
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    if let Some(l) = &q.libdir {
        cmd.env("LD_LIBRARY_PATH", l);
    }
    let mut child = vmm::engine::spawn_tied(&mut cmd)
        .map_err(|e| format!("starting {}: {e}", q.binary.display()))?;
    let result = (|| {
        let deadline = start + timeout;
        let stream = match vmm::engine::accept_from_child(&listener, &mut child, deadline) {
            Ok(s) => s,
            Err(vmm::engine::AcceptError::Exited(st)) => {
                let mut err = String::new();
                if let Some(mut e) = child.stderr.take() {
                    use std::io::Read;
                    let _ = e.read_to_string(&mut err);
                }
                return Err(format!("QEMU exited ({st}): {}", err.trim()));
            }
            Err(vmm::engine::AcceptError::TimedOut) => {
                return Err("QEMU did not connect the agent channel".into());
            }
            Err(vmm::engine::AcceptError::Io(e)) => return Err(e.to_string()),
        };
        let mut agent = Agent::new(stream.try_clone().map_err(|e| e.to_string())?, stream);
        let left = deadline.saturating_duration_since(Instant::now());
        agent
            .wait_ready(left)
            .map_err(|e| format!("QEMU guest agent: {e}; console tail: {}", tail(&con)))?;
        let t = start.elapsed();
        let v = f(&mut agent);
        let _ = agent.shutdown();
        Ok((t, v))
    })();
    vmm::engine::wait_or_kill(&mut child, Duration::from_secs(20));
    let _ = std::fs::remove_file(&sock);
    result.map_err(|e| {
        // QEMU connects its chardevs before it builds the machine: a bad
        // device or missing firmware shows up as a closed channel.
        let mut err = String::new();
        if let Some(mut s) = child.stderr.take() {
            use std::io::Read;
            let _ = s.read_to_string(&mut err);
        }
        let err: Vec<&str> = err
            .lines()
            .filter(|l| !l.contains("is not connected to host network"))
            .collect();
        if err.is_empty() {
            e
        } else {
            format!("{e}; QEMU said: {}", err.join(" | "))
        }
    })
}

fn tail(p: &Path) -> String {
    let s = std::fs::read_to_string(p).unwrap_or_default();
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(5)..].join(" | ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn args_hide_xsave_only_when_asked() {
        let mut m = MachineSpec {
            kernel: "/k".into(),
            initramfs: "/i".into(),
            cmdline: "console=ttyS0".into(),
            mem_mib: 2048,
            vcpus: 2,
            hide_xsave: false,
            topology: Default::default(),
        };
        let a = qemu_args(&m, Path::new("/s"), Path::new("/c"), None).join(" ");
        assert!(a.contains("-accel kvm -M q35 -cpu host -smp 2 -m 2048M"));
        assert!(a.contains("virtconsole,chardev=agent"));
        m.hide_xsave = true;
        let a = qemu_args(&m, Path::new("/s"), Path::new("/c"), Some(Path::new("/q"))).join(" ");
        assert!(a.contains("xsave=off") && a.contains("avx=off") && a.ends_with("-L /q"));
    }
}
