//! Engines: where a lab machine runs.
//!
//! `kvm` runs the machine in this process on the host's `/dev/kvm`. `nested`
//! boots an L1 guest under QEMU TCG (`-cpu max` exposes SVM), whose own
//! kvm-amd runs this same binary's machine; this module owns the L1 launcher
//! and the event socket that brings the L1 run's output back to the host.

use std::io::{BufRead, BufReader};
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Engine {
    Kvm,
    Nested,
}

impl std::fmt::Display for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Engine::Kvm => "kvm",
            Engine::Nested => "nested",
        })
    }
}

/// What kind of KVM this host offers, from the loaded modules.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HostKvm {
    /// Hardware virtualization (`kvm_intel` or `kvm_amd`): runs Linux guests.
    Hardware(String),
    /// A KVM that is not hardware-backed (e.g. `kvm_pvm`): tiny guests only.
    Software(String),
    /// `/dev/kvm` missing or unusable.
    None(String),
}

/// Inspect `/sys/module` and `/dev/kvm`.
pub fn host_kvm() -> HostKvm {
    host_kvm_at(Path::new("/sys/module"), Path::new("/dev/kvm"))
}

pub fn host_kvm_at(sys_module: &Path, dev: &Path) -> HostKvm {
    if std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(dev)
        .is_err()
    {
        return HostKvm::None(format!("{} cannot be opened", dev.display()));
    }
    for m in ["kvm_intel", "kvm_amd"] {
        if sys_module.join(m).exists() {
            return HostKvm::Hardware(m.to_string());
        }
    }
    let other = std::fs::read_dir(sys_module)
        .ok()
        .and_then(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().to_string())
                .find(|n| n.starts_with("kvm_"))
        })
        .unwrap_or_else(|| "unknown".into());
    HostKvm::Software(other)
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(
        "--engine kvm needs hardware KVM (kvm_intel or kvm_amd), but this host has {0}; \
         it cannot run a stock Linux kernel. Use --engine nested (or auto)."
    )]
    KvmUnsuitable(String),
    #[error(
        "QEMU ({qemu}) is needed for the nested engine but could not be started; install Debian's qemu-system-x86"
    )]
    QemuMissing {
        qemu: String,
        #[source]
        source: std::io::Error,
    },
    #[error("nested engine: {context}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the L1 guest did not connect its event channel within {0:?}")]
    NoEventChannel(Duration),
}

/// Choose the engine for a request (`auto`, `kvm`, `nested`).
pub fn choose(requested: Option<Engine>) -> Result<Engine, EngineError> {
    let host = host_kvm();
    match (requested, host) {
        (Some(Engine::Nested), _) => Ok(Engine::Nested),
        (Some(Engine::Kvm), HostKvm::Hardware(_)) => Ok(Engine::Kvm),
        (Some(Engine::Kvm), HostKvm::Software(m)) => Err(EngineError::KvmUnsuitable(format!(
            "the software hypervisor module {m}"
        ))),
        (Some(Engine::Kvm), HostKvm::None(why)) => Err(EngineError::KvmUnsuitable(why)),
        (None, HostKvm::Hardware(_)) => Ok(Engine::Kvm),
        (None, _) => Ok(Engine::Nested),
    }
}

/// Name of the virtio-serial port the L1 run writes its events to.
pub const EVENT_PORT_NAME: &str = "netmem.events";

/// How to start the L1 guest.
#[derive(Clone, Debug)]
pub struct L1Config {
    pub qemu: PathBuf,
    pub kernel: PathBuf,
    pub initramfs: PathBuf,
    pub cmdline: String,
    pub mem_mib: u64,
    pub smp: u8,
    pub run_dir: PathBuf,
    /// A raw file L1 sees as a virtio-blk disk (/dev/vda): the way files
    /// made inside L1 (pcaps) come back, as a tar stream.
    pub out_disk: Option<PathBuf>,
}

impl L1Config {
    pub fn event_socket(&self) -> PathBuf {
        self.run_dir.join("l1-events.sock")
    }
    pub fn console_log(&self) -> PathBuf {
        self.run_dir.join("l1-console.log")
    }

    /// The QEMU command line (TCG, SVM exposed by `-cpu max`).
    pub fn qemu_args(&self) -> Vec<String> {
        // NETMEM_LAB_L1_ACCEL overrides the accelerator (e.g.
        // `tcg,thread=single` to rule out multi-threaded TCG).
        let accel = std::env::var("NETMEM_LAB_L1_ACCEL")
            .ok()
            .filter(|v| !v.is_empty())
            .unwrap_or_else(|| "tcg,thread=multi".into());
        let mut a: Vec<String> = vec!["-accel".into(), accel, "-cpu".into(), "max".into()];
        a.extend(direct_boot_args(
            &self.kernel,
            &self.initramfs,
            &self.cmdline,
            self.mem_mib,
            self.smp,
            &self.console_log(),
        ));
        a.extend([
            "-chardev".into(),
            format!("socket,id=ev,path={}", self.event_socket().display()),
            "-device".into(),
            format!("virtserialport,chardev=ev,name={EVENT_PORT_NAME}"),
        ]);
        // CPU state at every reset, so an L1 that dies without a word (a
        // triple fault) leaves where it was.
        a.extend([
            "-d".into(),
            "cpu_reset".into(),
            "-D".into(),
            self.run_dir.join("qemu-debug.log").display().to_string(),
        ]);
        if let Some(d) = &self.out_disk {
            a.extend([
                "-drive".into(),
                format!("file={},format=raw,if=virtio,cache=unsafe", d.display()),
            ]);
        }
        a
    }
}

/// Direct-kernel-boot QEMU arguments shared by the L1 guest and the bench
/// baseline: no defaults or user config, no display, no reboot, the serial
/// console into `console_log`, and a virtio-serial bus for an agent/event port.
pub fn direct_boot_args(
    kernel: &Path,
    initramfs: &Path,
    cmdline: &str,
    mem_mib: u64,
    smp: u8,
    console_log: &Path,
) -> Vec<String> {
    [
        "-smp",
        &smp.to_string(),
        "-m",
        &format!("{mem_mib}M"),
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-no-reboot",
        "-kernel",
        &kernel.display().to_string(),
        "-initrd",
        &initramfs.display().to_string(),
        "-append",
        cmdline,
        "-chardev",
        &format!("file,id=con,path={}", console_log.display()),
        "-serial",
        "chardev:con",
        "-device",
        "virtio-serial-pci",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// Why [`accept_from_child`] gave up.
#[derive(Debug)]
pub enum AcceptError {
    /// The child exited before connecting.
    Exited(std::process::ExitStatus),
    TimedOut,
    Io(std::io::Error),
}

/// Make `cmd` die with this process (PR_SET_PDEATHSIG) and spawn it.
pub fn spawn_tied(cmd: &mut Command) -> std::io::Result<Child> {
    // SAFETY: prctl in the forked child before exec only changes the
    // child's own death signal; it is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.spawn()
}

/// Accept the connection `child` makes to the non-blocking `listener`,
/// noticing when it exits first; returns a blocking stream.
pub fn accept_from_child(
    listener: &UnixListener,
    child: &mut Child,
    deadline: Instant,
) -> Result<UnixStream, AcceptError> {
    loop {
        match listener.accept() {
            Ok((s, _)) => {
                s.set_nonblocking(false).map_err(AcceptError::Io)?;
                return Ok(s);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if let Ok(Some(st)) = child.try_wait() {
                    return Err(AcceptError::Exited(st));
                }
                if Instant::now() > deadline {
                    return Err(AcceptError::TimedOut);
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => return Err(AcceptError::Io(e)),
        }
    }
}

/// Wait up to `timeout` for `child` to exit by itself, then kill it.
pub fn wait_or_kill(child: &mut Child, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Resets QEMU logs for a normal boot of an `smp`-CPU machine: each CPU at
/// creation, each at the machine reset, and each AP's INIT from the kernel.
fn boot_resets(smp: u8) -> usize {
    3 * usize::from(smp) - 1
}

/// See [`L1Guest::reset_summary`].
pub fn summarize_reset_log(log: &str, smp: u8) -> String {
    let lines: Vec<&str> = log.lines().collect();
    let resets: Vec<usize> = lines
        .iter()
        .enumerate()
        .filter(|(_, l)| l.starts_with("CPU Reset"))
        .map(|(i, _)| i)
        .collect();
    let extra = resets.len().saturating_sub(boot_resets(smp));
    if extra == 0 {
        return format!(
            "no CPU reset after boot in QEMU's log ({} logged)",
            resets.len()
        );
    }
    let last = *resets.last().expect("extra > 0");
    let rip = lines[last..]
        .iter()
        .find_map(|l| {
            l.split_whitespace()
                .find(|w| w.starts_with("RIP=") || w.starts_with("EIP="))
        })
        .unwrap_or("RIP=?");
    format!(
        "{extra} CPU reset(s) after boot in QEMU's log, the last: {} {rip} (an L1 triple fault)",
        lines[last].trim()
    )
}

/// A running L1 guest. Dropping it kills QEMU.
pub struct L1Guest {
    child: Option<Child>,
    cfg: L1Config,
    events: Option<BufReader<UnixStream>>,
}

impl L1Guest {
    /// Listen on the event socket, start QEMU (which connects to it) and wait
    /// for the connection. QEMU dies with this process (PR_SET_PDEATHSIG).
    pub fn start(cfg: L1Config, connect_timeout: Duration) -> Result<Self, EngineError> {
        let sock = cfg.event_socket();
        let _ = std::fs::remove_file(&sock);
        let listener = UnixListener::bind(&sock).map_err(|source| EngineError::Io {
            context: format!("binding {}", sock.display()),
            source,
        })?;
        listener
            .set_nonblocking(true)
            .map_err(|source| EngineError::Io {
                context: "socket".into(),
                source,
            })?;
        let mut cmd = Command::new(&cfg.qemu);
        cmd.args(cfg.qemu_args())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(
                std::fs::File::create(cfg.run_dir.join("qemu-stderr.log")).map_err(|source| {
                    EngineError::Io {
                        context: "qemu log".into(),
                        source,
                    }
                })?,
            ));
        let mut child = spawn_tied(&mut cmd).map_err(|source| EngineError::QemuMissing {
            qemu: cfg.qemu.display().to_string(),
            source,
        })?;
        let accepted = accept_from_child(&listener, &mut child, Instant::now() + connect_timeout);
        let mut g = L1Guest {
            child: Some(child),
            cfg,
            events: None,
        };
        match accepted {
            Ok(s) => g.events = Some(BufReader::new(s)),
            Err(AcceptError::Exited(st)) => {
                return Err(EngineError::Io {
                    context: format!("QEMU exited early ({st}): {}", g.qemu_stderr()),
                    source: std::io::Error::other("qemu exited"),
                });
            }
            Err(AcceptError::TimedOut) => return Err(EngineError::NoEventChannel(connect_timeout)),
            Err(AcceptError::Io(source)) => {
                return Err(EngineError::Io {
                    context: "accepting the L1 event channel".into(),
                    source,
                });
            }
        }
        Ok(g)
    }

    /// Read one event line (without the newline); `None` at end of stream.
    /// `timeout` bounds the wait for this line.
    pub fn next_line(&mut self, timeout: Duration) -> Result<Option<String>, std::io::Error> {
        let Some(r) = self.events.as_mut() else {
            return Ok(None);
        };
        r.get_ref().set_read_timeout(Some(timeout))?;
        let mut line = String::new();
        match r.read_line(&mut line) {
            Ok(0) => Ok(None),
            Ok(_) => Ok(Some(line.trim_end_matches(['\n', '\r']).to_string())),
            Err(e) => Err(e),
        }
    }

    pub fn try_exit_status(&mut self) -> Option<std::process::ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    pub fn qemu_stderr(&self) -> String {
        std::fs::read_to_string(self.cfg.run_dir.join("qemu-stderr.log")).unwrap_or_default()
    }

    /// Last `n` lines of the L1 serial console.
    pub fn console_tail(&self, n: usize) -> Vec<String> {
        let s = std::fs::read(self.cfg.console_log()).unwrap_or_default();
        let s = String::from_utf8_lossy(&s);
        let lines: Vec<String> = s
            .lines()
            .map(|l| l.trim_end_matches('\r').to_string())
            .collect();
        lines[lines.len().saturating_sub(n)..].to_vec()
    }

    /// Wait up to `timeout` for QEMU to exit by itself, then kill it;
    /// returns QEMU's exit status (`None` when the lab had to kill it).
    pub fn finish(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let mut c = self.child.take()?;
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(st)) = c.try_wait() {
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = c.kill();
        let _ = c.wait();
        None
    }

    /// What QEMU's `-d cpu_reset` log says about an L1 that ended: how many
    /// CPU resets past the boot's own, and the last one's header and RIP
    /// line. An extra reset with `-no-reboot` is an L1 triple fault.
    pub fn reset_summary(&self) -> String {
        let log =
            std::fs::read_to_string(self.cfg.run_dir.join("qemu-debug.log")).unwrap_or_default();
        summarize_reset_log(&log, self.cfg.smp)
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for L1Guest {
    fn drop(&mut self) {
        self.kill();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reset(cpu: u8, rip: &str) -> String {
        format!("CPU Reset (CPU {cpu})\nRAX=0 RBX=0\nRIP={rip} RFL=00000002 [-------] CPL=0\n")
    }

    #[test]
    fn reset_log_of_a_normal_boot_is_quiet_and_an_extra_reset_is_named() {
        let boot: String = [0, 1, 0, 1, 1]
            .iter()
            .map(|&c| reset(c, "0000000000000000"))
            .collect();
        assert!(summarize_reset_log(&boot, 2).starts_with("no CPU reset after boot"));
        let lost = boot + &reset(1, "ffffffff81234567");
        let s = summarize_reset_log(&lost, 2);
        assert!(s.starts_with("1 CPU reset(s) after boot"), "{s}");
        assert!(s.contains("CPU Reset (CPU 1) RIP=ffffffff81234567"), "{s}");
        assert!(summarize_reset_log("", 2).starts_with("no CPU reset"));
    }

    #[test]
    fn detects_kvm_kinds() {
        let d = std::env::temp_dir().join(format!("nl-eng-{}", std::process::id()));
        let sm = d.join("module");
        std::fs::create_dir_all(sm.join("kvm")).unwrap();
        let dev = d.join("kvm");
        assert!(matches!(host_kvm_at(&sm, &dev), HostKvm::None(_)));
        std::fs::write(&dev, b"").unwrap();
        std::fs::create_dir_all(sm.join("kvm_pvm")).unwrap();
        assert_eq!(host_kvm_at(&sm, &dev), HostKvm::Software("kvm_pvm".into()));
        std::fs::create_dir_all(sm.join("kvm_amd")).unwrap();
        assert_eq!(host_kvm_at(&sm, &dev), HostKvm::Hardware("kvm_amd".into()));
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn kvm_refusal_names_nested() {
        let e = EngineError::KvmUnsuitable("kvm_pvm".into());
        assert!(e.to_string().contains("--engine nested"));
    }

    #[test]
    fn qemu_args_expose_svm_and_event_port() {
        let c = L1Config {
            qemu: "qemu-system-x86_64".into(),
            kernel: "/k".into(),
            initramfs: "/i".into(),
            cmdline: "console=ttyS0".into(),
            mem_mib: 4096,
            smp: 2,
            run_dir: "/tmp/r".into(),
            out_disk: None,
        };
        let a = c.qemu_args().join(" ");
        assert!(a.contains("-accel tcg,thread=multi -cpu max -smp 2"));
        assert!(a.contains("name=netmem.events"));
        assert!(a.contains("path=/tmp/r/l1-events.sock"));
        assert!(!a.contains("-drive"));
        let c = L1Config {
            out_disk: Some("/tmp/r/out.tar".into()),
            ..c
        };
        let a = c.qemu_args().join(" ");
        assert!(a.contains("-drive file=/tmp/r/out.tar,format=raw,if=virtio"));
    }
}
