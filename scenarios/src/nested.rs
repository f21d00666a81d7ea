//! The host side of the nested engine: pack the job, this binary, the lab
//! kernel and initramfs into an L1 initramfs, boot L1 under QEMU TCG, and
//! relay the events it streams back; and the L1 side's event port lookup.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use vmm::engine::{EVENT_PORT_NAME, L1Config, L1Guest};

use crate::events::{Event, EventSink};
use crate::job::Job;
use crate::run::{EXIT_LAB_ERROR, Outcome};

/// Paths inside the L1 initramfs.
pub const L1_JOB: &str = "/etc/netmem/job.json";
pub const L1_L2_KERNEL: &str = "/l2/vmlinuz";
pub const L1_L2_INITRAMFS: &str = "/l2/initramfs.cpio";
/// Kernel modules L1 needs to offer KVM (kvm_amd pulls kvm and irqbypass).
pub const L1_MODULES: &[&str] = &["kvm_amd", "virtio_blk"];
/// Where the job inside L1 writes pcaps; they leave L1 as a tar stream on
/// its virtio-blk disk (see `L1Config::out_disk`).
pub const L1_PCAP_DIR: &str = "/tmp/pcap";
/// Size of the (sparse) disk that carries the pcaps out of L1.
const OUT_DISK_BYTES: u64 = 8 << 30;
/// Where a copy of the host's QEMU lives inside L1 (bench jobs only).
pub const L1_QEMU_BIN: &str = "/qemu/bin/qemu-system-x86_64";
pub const L1_QEMU_LIB: &str = "/qemu/lib";
pub const L1_QEMU_SHARE: &str = "/qemu/share";
/// Firmware QEMU's q35 needs for a direct kernel boot (from /usr/share/qemu).
const QEMU_FIRMWARE: &[&str] = &["bios-256k.bin", "linuxboot_dma.bin", "kvmvapic.bin"];

/// The host's QEMU, its shared libraries (from `ldd`) and firmware, as files
/// for the L1 initramfs. The dynamic loader goes to its PT_INTERP path.
fn qemu_files(binary: &Path) -> Result<Vec<images::initramfs::ExtraFile>, String> {
    use images::initramfs::{ExtraFile, FileSource};
    let bin = if binary.is_absolute() {
        binary.to_path_buf()
    } else {
        which(binary).ok_or_else(|| {
            format!(
                "{} not found in PATH; install qemu-system-x86",
                binary.display()
            )
        })?
    };
    let out = std::process::Command::new("ldd")
        .arg(&bin)
        .output()
        .map_err(|e| format!("ldd {}: {e}", bin.display()))?;
    let mut files = vec![ExtraFile {
        guest_path: L1_QEMU_BIN.into(),
        source: FileSource::Path(bin.clone()),
        mode: 0o755,
    }];
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let line = line.trim();
        // "libz.so.1 => /lib/x86_64-linux-gnu/libz.so.1 (0x…)" or "/lib64/ld-linux-x86-64.so.2 (0x…)"
        let (name, path) = match line.split_once(" => ") {
            Some((n, rest)) => (
                n.to_string(),
                rest.split_whitespace().next().unwrap_or("").to_string(),
            ),
            None => {
                let p = line.split_whitespace().next().unwrap_or("").to_string();
                (p.clone(), p)
            }
        };
        if !path.starts_with('/') {
            continue;
        }
        let real = std::fs::canonicalize(&path).map_err(|e| format!("{path}: {e}"))?;
        if name.starts_with('/') {
            // The dynamic loader, at its absolute (PT_INTERP) path.
            files.push(ExtraFile {
                guest_path: name,
                source: FileSource::Path(real),
                mode: 0o755,
            });
        } else {
            files.push(ExtraFile {
                guest_path: format!("{L1_QEMU_LIB}/{name}"),
                source: FileSource::Path(real),
                mode: 0o644,
            });
        }
    }
    for fw in QEMU_FIRMWARE {
        // Debian's QEMU looks in /usr/share/qemu, then /usr/share/seabios.
        let real = ["/usr/share/qemu", "/usr/share/seabios"]
            .iter()
            .find_map(|d| std::fs::canonicalize(Path::new(d).join(fw)).ok())
            .ok_or_else(|| {
                format!("QEMU firmware {fw} not found in /usr/share/qemu or /usr/share/seabios")
            })?;
        files.push(ExtraFile {
            guest_path: format!("{L1_QEMU_SHARE}/{fw}"),
            source: FileSource::Path(real),
            mode: 0o644,
        });
    }
    Ok(files)
}

fn which(name: &Path) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join(name))
            .find(|c| c.is_file())
    })
}

/// Memory of L1 on top of the lab guest's.
pub const L1_EXTRA_MIB: u64 = 1024;

/// What the host needs to start L1.
pub struct NestedSetup {
    /// The L1 kernel (Debian's, the patched one) with its modules.
    pub l1_kernel: kernel::ResolvedKernel,
    /// This executable (static), run inside L1.
    pub self_exe: PathBuf,
    pub busybox: PathBuf,
    pub qemu: PathBuf,
    pub run_dir: PathBuf,
    /// Bound for L1 to boot and connect its event channel.
    pub l1_connect_timeout: Duration,
}

/// The L1 init: mount, load KVM, run the job, power off.
fn l1_init_script() -> String {
    format!(
        r#"#!/bin/busybox sh
/bin/busybox mkdir -p /proc /sys /dev /tmp /run
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sysfs /sys
/bin/busybox mount -t devtmpfs devtmpfs /dev
/bin/busybox mount -t tmpfs tmpfs /tmp
/bin/busybox mount -t tmpfs tmpfs /run
while read -r name path; do
  [ -n "$path" ] || continue
  /bin/busybox insmod "$path" || echo "netmem-l1: insmod $name failed" > /dev/ttyS0
done < /etc/netmem/modules.load
/sbin/netmem-lab l1-job {L1_JOB}
if [ -d {L1_PCAP_DIR} ] && [ -b /dev/vda ]; then
  /bin/busybox tar -C {L1_PCAP_DIR} -cf /dev/vda . || echo "netmem-l1: pcap export failed" > /dev/ttyS0
fi
/bin/busybox sync
/bin/busybox poweroff -f
"#
    )
}

fn l1_cmdline() -> String {
    let mut c = String::from(
        "console=ttyS0 quiet panic=-1 rdinit=/init transparent_hugepage=never numa_balancing=disable",
    );
    // The kernel hands unknown `key=value` parameters to init as
    // environment: the job inside L1 logs at the host's level (to the L1
    // console log, kept with NETMEM_LAB_KEEP_RUN).
    if let Ok(filter) = std::env::var("RUST_LOG")
        && !filter.is_empty()
        && !filter.contains(char::is_whitespace)
    {
        c.push_str(" RUST_LOG=");
        c.push_str(&filter);
    }
    // NETMEM_LAB_L1_APPEND: extra L1 kernel parameters, e.g. kvm_amd
    // module options (`kvm_amd.vgif=0`) when chasing an engine problem.
    if let Ok(extra) = std::env::var("NETMEM_LAB_L1_APPEND")
        && !extra.trim().is_empty()
    {
        c.push(' ');
        c.push_str(extra.trim());
    }
    c
}

/// Build the L1 initramfs for `job` (whose machine paths are host paths).
pub fn build_l1_initramfs(job: &Job, setup: &NestedSetup) -> Result<PathBuf, String> {
    let mut inner = job.clone();
    inner.machine.kernel = L1_L2_KERNEL.into();
    inner.machine.initramfs = L1_L2_INITRAMFS.into();
    inner.machine.hide_xsave = true;
    inner.scratch_dir = "/tmp".into();
    if inner.machine.topology.pcap_dir.is_some() {
        inner.machine.topology.pcap_dir = Some(L1_PCAP_DIR.into());
    }
    let mut extra = Vec::new();
    if let crate::job::JobCommand::BenchBoot { qemu, .. }
    | crate::job::JobCommand::BenchNet { qemu, .. } = &mut inner.command
    {
        extra = qemu_files(&qemu.binary)?;
        *qemu = crate::qemu::QemuInstall {
            binary: L1_QEMU_BIN.into(),
            datadir: Some(L1_QEMU_SHARE.into()),
            libdir: Some(L1_QEMU_LIB.into()),
        };
    }
    let job_json = serde_json::to_vec_pretty(&inner).map_err(|e| e.to_string())?;
    let spec = images::initramfs::InitramfsSpec {
        agent_binary: setup.self_exe.clone(),
        busybox: setup.busybox.clone(),
        modules_dir: setup.l1_kernel.modules_dir.clone(),
        modules: L1_MODULES.iter().map(|s| s.to_string()).collect(),
        extra_files: vec![
            images::initramfs::ExtraFile {
                guest_path: L1_L2_KERNEL.into(),
                source: images::initramfs::FileSource::Path(job.machine.kernel.clone()),
                mode: 0o644,
            },
            images::initramfs::ExtraFile {
                guest_path: L1_L2_INITRAMFS.into(),
                source: images::initramfs::FileSource::Path(job.machine.initramfs.clone()),
                mode: 0o644,
            },
            images::initramfs::ExtraFile {
                guest_path: L1_JOB.into(),
                source: images::initramfs::FileSource::Bytes(job_json),
                mode: 0o644,
            },
        ],
        init: images::initramfs::InitKind::Custom(l1_init_script()),
    };
    let mut spec = spec;
    spec.extra_files.extend(extra);
    let out = setup.run_dir.join("l1-initramfs.cpio");
    images::initramfs::build(&spec, &out).map_err(|e| format!("building the L1 initramfs: {e}"))?;
    Ok(out)
}

/// Start of the error of a run whose L1 died under it.
const L1_LOST: &str = "the L1 guest ended without a report";

/// How many times a job lost to the engine (see [`engine_trouble`]) is run
/// again.
pub const ENGINE_RETRIES: usize = 2;

/// Why `o` failed because of the emulator under the lab rather than the
/// guest under test, if it did:
/// - QEMU's TCG loses the L1 now and then under heavy nested traffic (an L1
///   kernel oops at a text-patching site in KVM, or a silent reset);
/// - the L2 triple-faulted before its agent started: the distro kernels
///   boot to the agent in every other run, and a kernel under test that
///   really faults at boot faults again on the retry;
/// - the L2 triple-faulted mid-run without a kernel oops on its console
///   (seen in 64 MiB nic-smoke runs under QEMU TCG's
///   nested SVM, at random points of the transfer): a kernel that really
///   crashes prints its oops or panic first, and that is not retried.
pub fn engine_trouble(o: &Outcome) -> Option<String> {
    let e = o.report["error"].as_str()?;
    let boot_fault = e.starts_with("the guest ended before its agent started: triple fault");
    let run_fault = e.starts_with(&format!("{}: triple fault", crate::run::ENDED_MID_RUN))
        && !e.contains("oopsed first");
    (e.starts_with(L1_LOST) || boot_fault || run_fault).then(|| e.to_string())
}

/// Run `job` inside an L1 guest and relay its events to `sink`. A run the
/// engine lost is done again, up to [`ENGINE_RETRIES`] times, and the
/// report lists why (`engine_retries`).
pub fn run_nested(
    job: &Job,
    setup: &NestedSetup,
    sink: Arc<dyn EventSink>,
    cancel: &dyn Fn() -> bool,
) -> Outcome {
    let mut lost = Vec::new();
    loop {
        let mut o = run_nested_once(job, setup, sink.clone(), cancel);
        match engine_trouble(&o) {
            Some(why) if lost.len() < ENGINE_RETRIES && !cancel() => {
                sink.emit(Event::Log {
                    level: "warn".into(),
                    message: format!(
                        "the nested engine lost the run ({}); running the job again",
                        why.split(" (").next().unwrap_or(&why)
                    ),
                });
                // Keep the lost attempt's QEMU log next to the retry's.
                let log = setup.run_dir.join("qemu-debug.log");
                let _ = std::fs::rename(
                    &log,
                    setup
                        .run_dir
                        .join(format!("qemu-debug.attempt{}.log", lost.len() + 1)),
                );
                lost.push(why);
            }
            _ => {
                if !lost.is_empty() {
                    o.report["engine_retries"] = json!(lost);
                }
                return o;
            }
        }
    }
}

fn run_nested_once(
    job: &Job,
    setup: &NestedSetup,
    sink: Arc<dyn EventSink>,
    cancel: &dyn Fn() -> bool,
) -> Outcome {
    let t0 = Instant::now();
    let fail = |msg: String, tail: Vec<String>| {
        sink.emit(Event::Failure {
            message: msg.clone(),
            console_tail: tail.clone(),
            exit_code: EXIT_LAB_ERROR,
        });
        Outcome {
            exit_code: EXIT_LAB_ERROR,
            report: json!({"kernel": {"spec": job.kernel_spec, "release": job.kernel_release}, "engine": "nested", "verdict": "error", "error": msg, "console_tail": tail}),
        }
    };
    let initramfs = match build_l1_initramfs(job, setup) {
        Ok(p) => p,
        Err(e) => return fail(e, vec![]),
    };
    sink.emit(Event::Step {
        name: "L1 initramfs built".into(),
        elapsed_ms: t0.elapsed().as_millis() as u64,
        detail: String::new(),
    });
    let cfg = L1Config {
        qemu: setup.qemu.clone(),
        kernel: setup.l1_kernel.image.clone(),
        initramfs,
        cmdline: l1_cmdline(),
        mem_mib: job.machine.mem_mib + L1_EXTRA_MIB,
        smp: 2,
        run_dir: setup.run_dir.clone(),
        out_disk: None,
    };
    let pcap_dir = job.machine.topology.pcap_dir.clone();
    let mut cfg = cfg;
    if pcap_dir.is_some() {
        let disk = setup.run_dir.join("l1-out.tar");
        let made = std::fs::File::create(&disk).and_then(|f| f.set_len(OUT_DISK_BYTES));
        if let Err(e) = made {
            return fail(format!("creating {}: {e}", disk.display()), vec![]);
        }
        cfg.out_disk = Some(disk);
    }
    let out_disk = cfg.out_disk.clone();
    sink.emit(Event::Progress {
        what: "booting L1".into(),
        detail: "QEMU TCG, -cpu max (SVM), kvm_amd inside".into(),
    });
    let mut l1 = match L1Guest::start(cfg, setup.l1_connect_timeout) {
        Ok(g) => g,
        Err(e) => return fail(format!("{e}"), vec![]),
    };
    sink.emit(Event::Step {
        name: "L1 started".into(),
        elapsed_ms: t0.elapsed().as_millis() as u64,
        detail: "event channel connected".into(),
    });
    // Watchdog for the whole L1 run: L1 boot + the job's own watchdogs.
    let overall = setup.l1_connect_timeout
        + Duration::from_secs(job.boot_timeout_s * job_boots(job) + job_work_s(job) + 120);
    let mut outcome: Option<Outcome> = None;
    loop {
        if cancel() {
            l1.kill();
            return fail("interrupted".into(), l1.console_tail(40));
        }
        if t0.elapsed() > overall {
            l1.kill();
            return fail(
                format!("watchdog: the L1 run exceeded {} s", overall.as_secs()),
                l1.console_tail(40),
            );
        }
        match l1.next_line(Duration::from_millis(200)) {
            Ok(Some(line)) => match serde_json::from_str::<Event>(&line) {
                Ok(Event::Report { report }) => {
                    let code = report
                        .get("exit_code")
                        .and_then(|c| c.as_i64())
                        .unwrap_or(0) as i32;
                    sink.emit(Event::Report {
                        report: report.clone(),
                    });
                    outcome = Some(Outcome {
                        exit_code: code,
                        report,
                    });
                }
                Ok(Event::Failure {
                    message,
                    console_tail,
                    exit_code,
                }) => {
                    sink.emit(Event::Failure {
                        message: message.clone(),
                        console_tail: console_tail.clone(),
                        exit_code,
                    });
                    outcome = Some(Outcome {
                        exit_code,
                        report: json!({"kernel": {"spec": job.kernel_spec, "release": job.kernel_release}, "engine": "nested", "verdict": "error", "error": message, "console_tail": console_tail}),
                    });
                }
                Ok(ev) => sink.emit(ev),
                Err(_) => sink.emit(Event::Log {
                    level: "l1".into(),
                    message: line,
                }),
            },
            Ok(None) => break,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                if l1.try_exit_status().is_some() {
                    break;
                }
            }
            Err(e) => return fail(format!("L1 event channel: {e}"), l1.console_tail(40)),
        }
    }
    // With pcaps, L1 still writes them out after its report.
    let exit_status = l1.finish(Duration::from_secs(if out_disk.is_some() {
        120
    } else {
        10
    }));
    if let (Some(disk), Some(dir)) = (&out_disk, &pcap_dir) {
        match extract_pcaps(disk, dir) {
            Ok(n) => sink.emit(Event::Step {
                name: "pcaps copied out of L1".into(),
                elapsed_ms: t0.elapsed().as_millis() as u64,
                detail: format!("{n} file(s) in {}", dir.display()),
            }),
            Err(e) => sink.emit(Event::Log {
                level: "warn".into(),
                message: format!("pcaps: {e}"),
            }),
        }
        let _ = std::fs::remove_file(disk);
    }
    match outcome {
        Some(o) => o,
        None => fail(
            format!(
                "{L1_LOST}: QEMU {}; {} (QEMU's log: {}/qemu-debug.log, kept with NETMEM_LAB_KEEP_RUN=1)",
                exit_status.map_or("was killed".to_string(), |s| format!("exited ({s})")),
                l1.reset_summary(),
                setup.run_dir.display()
            ),
            l1.console_tail(40),
        ),
    }
}

/// Unpack the tar stream L1 wrote onto its out disk into `dir`; returns
/// how many pcap files arrived.
fn extract_pcaps(disk: &Path, dir: &Path) -> Result<usize, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let out = std::process::Command::new("tar")
        .arg("-xf")
        .arg(disk)
        .arg("-C")
        .arg(dir)
        .output()
        .map_err(|e| format!("running tar: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "tar -xf {}: {}",
            disk.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let n = std::fs::read_dir(dir)
        .map_err(|e| e.to_string())?
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "pcap"))
        .count();
    Ok(n)
}

fn job_boots(job: &Job) -> u64 {
    match &job.command {
        crate::job::JobCommand::BenchBoot { runs, .. } => 2 * u64::from((*runs).max(1)),
        crate::job::JobCommand::BenchNet { .. } => 2,
        // A machine per topology change, and fresh machines for retries.
        crate::job::JobCommand::Batch { items } => {
            let mut shapes = 0u64;
            let mut last = None;
            for it in items {
                let s = crate::scenario::Scenario::parse(&it.toml, &it.origin)
                    .map(|s| crate::session::shape(&s.topology_spec()))
                    .ok();
                if s != last {
                    shapes += 1;
                    last = s;
                }
            }
            shapes + 2
        }
        crate::job::JobCommand::Campaign { .. } => 3,
        _ => 1,
    }
}

/// What a guest reset between two scenarios may take, at most.
const RESET_ALLOWANCE_S: u64 = 90;

/// A scenario's step timeouts, summed.
fn scenario_work_s(toml: &str, origin: &str) -> u64 {
    crate::scenario::Scenario::parse(toml, origin)
        .map(|s| {
            s.steps
                .iter()
                .map(|st| st.timeout_s.unwrap_or_else(|| st.kind.default_timeout_s()))
                .sum()
        })
        .unwrap_or(0)
}

/// Upper bound of a job's own work after boot: a scenario's step timeouts.
fn job_work_s(job: &Job) -> u64 {
    match &job.command {
        crate::job::JobCommand::Scenario { toml, origin } => scenario_work_s(toml, origin),
        crate::job::JobCommand::Batch { items } => items
            .iter()
            .map(|it| scenario_work_s(&it.toml, &it.origin) + RESET_ALLOWANCE_S)
            .sum(),
        crate::job::JobCommand::Campaign {
            toml,
            origin,
            config,
        } => {
            // Every case is the base's setup plus at most max_ops steps,
            // none longer than the base's transfer.
            let per_case = crate::scenario::Scenario::parse(toml, origin)
                .ok()
                .and_then(|s| {
                    let b = crate::campaign::CampaignBase::new(&s).ok()?;
                    let step_s = |st: &crate::scenario::Step| {
                        st.timeout_s.unwrap_or_else(|| st.kind.default_timeout_s())
                    };
                    let setup: u64 = b.setup.iter().map(step_s).sum();
                    Some(setup + config.max_ops as u64 * step_s(&b.transfer).max(60))
                })
                .unwrap_or(600);
            let cases = u64::from(config.cases) + u64::from(config.shrink_iters) + 1;
            cases * (per_case + RESET_ALLOWANCE_S)
        }
        // Three series of transfers, at the slowest rate seen nested (1 Mbit/s).
        crate::job::JobCommand::BenchNet { runs, bytes, .. } => {
            3 * u64::from(*runs) * (bytes / 125_000 + 30)
        }
        _ => 0,
    }
}

/// Inside L1: the character device of the virtio-serial port named
/// `netmem.events`, from /sys/class/virtio-ports/*/name.
pub fn find_event_port(sys_root: &Path) -> Option<PathBuf> {
    let dir = sys_root.join("class/virtio-ports");
    for e in std::fs::read_dir(dir).ok()?.flatten() {
        let name = std::fs::read_to_string(e.path().join("name")).unwrap_or_default();
        if name.trim() == EVENT_PORT_NAME {
            return Some(Path::new("/dev").join(e.file_name()));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engine_trouble_is_the_lost_l1_or_a_boot_triple_fault_only() {
        let o = |e: serde_json::Value| Outcome {
            exit_code: 2,
            report: json!({ "verdict": "error", "error": e }),
        };
        let lost = o(json!(format!(
            "{L1_LOST}: QEMU exited (exit status: 0); 1 CPU reset"
        )));
        assert!(engine_trouble(&lost).unwrap().starts_with(L1_LOST));
        let fault = o(json!(
            "the guest ended before its agent started: triple fault (vcpu0 rip 0xfff0)"
        ));
        assert!(engine_trouble(&fault).is_some());
        let mid = o(json!(format!(
            "{}: triple fault (vcpu0 rip 0xfff0) (while: step \"t\": the guest stopped)",
            crate::run::ENDED_MID_RUN
        )));
        assert!(engine_trouble(&mid).is_some());
        let oops = o(json!(format!(
            "{}: triple fault (vcpu0 rip 0xfff0); the guest kernel oopsed first, see its console (while: x)",
            crate::run::ENDED_MID_RUN
        )));
        assert_eq!(engine_trouble(&oops), None);
        // A finding or a hang in the guest is the guest's, not the engine's.
        for e in [
            "step \"transfer 1\": the guest stopped: no agent heartbeat for 45s",
            "the guest panicked: Kernel panic - not syncing",
            "watchdog: no agent after 180 s",
        ] {
            assert_eq!(engine_trouble(&o(json!(e))), None, "{e}");
        }
        assert_eq!(
            engine_trouble(&Outcome {
                exit_code: 0,
                report: json!({"verdict": "pass"})
            }),
            None
        );
    }

    #[test]
    fn finds_port_by_name() {
        let d = std::env::temp_dir().join(format!("nl-ports-{}", std::process::id()));
        for (p, n) in [("vport0p0", "other"), ("vport1p1", EVENT_PORT_NAME)] {
            std::fs::create_dir_all(d.join("class/virtio-ports").join(p)).unwrap();
            std::fs::write(
                d.join("class/virtio-ports").join(p).join("name"),
                format!("{n}\n"),
            )
            .unwrap();
        }
        assert_eq!(find_event_port(&d), Some(PathBuf::from("/dev/vport1p1")));
        std::fs::remove_dir_all(&d).unwrap();
        assert_eq!(find_event_port(&d), None);
    }

    #[test]
    fn init_script_runs_job_then_powers_off() {
        let s = l1_init_script();
        let run = s.find("l1-job").unwrap();
        let off = s.find("poweroff -f").unwrap();
        assert!(run < off);
        assert!(s.contains("modules.load"));
    }
}
