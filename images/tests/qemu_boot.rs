//! Boot smoke test: the real Debian cloud kernel under QEMU with an
//! initramfs from `images::build`, the agent being this very (static) test
//! executable, talked to over a virtio-console port with `AgentClient`.
//!
//! Opt-in (it needs qemu-system-x86_64 and the extracted Debian
//! packages, and takes a few seconds): `NETMEM_QEMU_SMOKE=1 cargo test -p images --test qemu_boot`.
//! Paths can be overridden with NETMEM_KERNEL and NETMEM_MODULES.

use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use images::{InitramfsSpec, build};
use netmem_agent::AgentClient;

const KERNEL: &str = "/tmp/kdeb/x/linux-binary-7.3.4+deb13-cloud-amd64/usr/lib/modules/7.3.4+deb13-cloud-amd64/vmlinuz";
const MODULES: &str =
    "/tmp/kdeb/x/linux-modules-7.3.4+deb13-cloud-amd64/usr/lib/modules/7.3.4+deb13-cloud-amd64";

fn main() {
    let args: Vec<String> = std::env::args().collect();
    // In the guest: /init execs `/sbin/netmem-lab agent --port /dev/hvc0`.
    if args.get(1).map(String::as_str) == Some("agent") {
        let port = args
            .iter()
            .position(|a| a == "--port")
            .and_then(|i| args.get(i + 1))
            .cloned()
            .unwrap_or_else(|| "/dev/hvc0".into());
        let code = netmem_agent::agent_main(Path::new(&port));
        std::process::exit(if code == std::process::ExitCode::SUCCESS {
            0
        } else {
            1
        });
    }
    // libtest-style arguments (filters, --list, ...) are accepted and ignored.
    if args.iter().any(|a| a == "--list") {
        println!("qemu_boot: test");
        return;
    }
    if std::env::var_os("NETMEM_QEMU_SMOKE").is_none() {
        println!("note: set NETMEM_QEMU_SMOKE=1 to boot the kernel under QEMU; skipping");
        println!("test result: ok. 0 passed; 0 failed; 1 ignored");
        return;
    }
    match smoke() {
        Ok(()) => println!("test result: ok. 1 passed; 0 failed"),
        Err(e) if e.starts_with("skip:") => {
            println!("note: {e}");
            println!("test result: ok. 0 passed; 0 failed; 1 ignored");
        }
        Err(e) => {
            eprintln!("qemu boot smoke test failed: {e}");
            println!("test result: FAILED. 0 passed; 1 failed");
            std::process::exit(1);
        }
    }
}

struct Qemu(Child);
impl Drop for Qemu {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn smoke() -> Result<(), String> {
    let kernel = PathBuf::from(std::env::var("NETMEM_KERNEL").unwrap_or_else(|_| KERNEL.into()));
    let modules = PathBuf::from(std::env::var("NETMEM_MODULES").unwrap_or_else(|_| MODULES.into()));
    if !kernel.is_file() {
        return Err(format!("skip: no kernel at {}", kernel.display()));
    }
    if Command::new("qemu-system-x86_64")
        .arg("--version")
        .output()
        .is_err()
    {
        return Err("skip: no qemu-system-x86_64".into());
    }
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let me = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut spec = InitramfsSpec::new(&me);
    if modules.is_dir() {
        spec.modules_dir = Some(modules);
        // kvm_intel cannot load on QEMU's (AMD-flavoured) max CPU: exercises the init's failure report.
        spec.modules = [
            "gve",
            "virtio_iommu",
            "sch_ingress",
            "cls_bpf",
            "kvm_amd",
            "kvm_intel",
        ]
        .map(String::from)
        .to_vec();
    }
    let initrd = dir.path().join("initramfs.cpio");
    let t = Instant::now();
    let info = build(&spec, &initrd).map_err(|e| e.to_string())?;
    println!(
        "initramfs: {} bytes, {} entries, modules {:?} ({:?})",
        info.size,
        info.files,
        info.module_load_order,
        t.elapsed()
    );

    let sock = dir.path().join("agent.sock");
    let serial = dir.path().join("serial.log");
    let started = Instant::now();
    let qemu = Command::new("qemu-system-x86_64")
        .args([
            "-nodefaults",
            "-display",
            "none",
            "-no-reboot",
            "-m",
            "512",
            "-smp",
            "2",
        ])
        // `-cpu host` trips over MSRs in nested setups; QEMU's default model works everywhere.
        .args(
            std::env::var("NETMEM_QEMU_CPU")
                .map(|c| vec!["-cpu".to_string(), c])
                .unwrap_or_default(),
        )
        .arg("-kernel")
        .arg(&kernel)
        .arg("-initrd")
        .arg(&initrd)
        .args(["-append", "console=ttyS0 panic=-1 quiet loglevel=4"])
        .arg("-serial")
        .arg(format!("file:{}", serial.display()))
        // q35 + virtio-iommu (described by ACPI VIOT) so that IOMMU groups exist.
        .args(["-M", "q35", "-device", "virtio-iommu-pci"])
        .args(["-device", "virtio-serial-pci"])
        .arg("-chardev")
        .arg(format!(
            "socket,id=agent,path={},server=on,wait=off",
            sock.display()
        ))
        .args(["-device", "virtconsole,chardev=agent"])
        .stdin(Stdio::null())
        .spawn()
        .map_err(|e| format!("qemu: {e}"))?;
    let mut qemu = Qemu(qemu);
    let deadline = Instant::now() + Duration::from_secs(10);
    let conn = loop {
        match UnixStream::connect(&sock) {
            Ok(c) => break c,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => return Err(format!("connecting to {}: {e}", sock.display())),
        }
    };
    let serial_tail = || std::fs::read_to_string(&serial).unwrap_or_default();
    let mut client = AgentClient::new(conn.try_clone().map_err(|e| e.to_string())?, conn);
    let ready = client
        .wait_ready(Duration::from_secs(60))
        .map_err(|e| format!("{e}\nserial:\n{}", serial_tail()))?;
    println!(
        "agent ready after {:?} (guest uptime {:?} ms), version {}",
        started.elapsed(),
        ready.uptime_ms,
        ready.agent_version
    );
    let t = Instant::now();
    let hello = client.hello().map_err(|e| e.to_string())?;
    println!(
        "hello in {:?}: release {} machine {} cmdline {:?}",
        t.elapsed(),
        hello.release,
        hello.machine,
        hello.cmdline
    );
    println!("modules: {:?}", hello.modules);
    for p in &hello.pci {
        println!(
            "pci {} {:04x}:{:04x} class {:06x} driver {:?} group {:?}",
            p.bdf, p.vendor, p.device, p.class, p.driver, p.iommu_group
        );
    }
    println!("iommu groups: {:?}", hello.iommu_groups);
    println!("dmesg warnings: {:#?}", hello.dmesg_warnings);
    if hello.release != "7.3.4+deb13-cloud-amd64" && kernel == Path::new(KERNEL) {
        return Err(format!("unexpected release {}", hello.release));
    }
    for m in ["gve", "virtio_iommu", "sch_ingress", "cls_bpf", "kvm"] {
        if !spec.modules.is_empty() && !hello.modules.iter().any(|x| x == m) {
            return Err(format!(
                "module {m} not loaded: {:?}\nserial:\n{}",
                hello.modules,
                serial_tail()
            ));
        }
    }
    let t = Instant::now();
    let out = client.run(&["echo", "hi"]).map_err(|e| e.to_string())?;
    println!("run echo hi in {:?}: {:?}", t.elapsed(), out);
    if out.stdout != "hi\n" {
        return Err(format!("echo: {out:?}"));
    }
    let out = client
        .run(&[
            "sh",
            "-c",
            "mount; ls /dev/pts /sys/kernel/debug | head -3; ip link show lo",
        ])
        .map_err(|e| e.to_string())?;
    println!("{}{}", out.stdout, out.stderr);
    let n = 100;
    let t = Instant::now();
    for _ in 0..n {
        client.ping().map_err(|e| e.to_string())?;
    }
    println!("ping round trip: {:?} avg over {n}", t.elapsed() / n);

    client.shutdown().map_err(|e| e.to_string())?;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match qemu.0.try_wait() {
            Ok(Some(st)) => {
                println!("qemu exited ({st}) {:?} after start", started.elapsed());
                break;
            }
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            _ => {
                return Err(format!(
                    "guest did not power off\nserial:\n{}",
                    serial_tail()
                ));
            }
        }
    }
    let console = serial_tail();
    println!("serial console:\n{console}");
    if !spec.modules.is_empty()
        && !hello.modules.iter().any(|m| m == "kvm_intel")
        && !console.contains("netmem-init: insmod kvm_intel failed")
    {
        return Err("no insmod failure report for kvm_intel on the console".into());
    }
    Ok(())
}
