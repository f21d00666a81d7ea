//! One lab machine: a KVM VM with RAM, vCPUs, the in-kernel irqchip and PIT,
//! COM1, ACPI power registers, a PCI root complex with virtio devices, and a
//! Linux kernel booted with its initramfs.

use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kvm_bindings::{
    KVM_MAX_CPUID_ENTRIES, KVM_PIT_SPEAKER_DUMMY, Msrs, kvm_pit_config, kvm_userspace_memory_region,
};
use kvm_ioctls::{Kvm, VmFd};
use vm_memory::{Address, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use crate::arch;
use crate::boot::{self, E820, EntryMode};
use crate::bus::Bus;
use crate::irq::IrqRouter;
use crate::layout::*;
use crate::power::{AcpiPowerDevice, ExitLatch, ExitReason};
use crate::serial::{ConsoleMonitor, LineHook, SerialDevice};
use crate::vcpu::{ExitCounters, VcpuThread, install_kick_handler};

#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    #[error("opening /dev/kvm")]
    OpenKvm(#[source] kvm_ioctls::Error),
    #[error("KVM: {what}")]
    Kvm {
        what: &'static str,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error(transparent)]
    Memory(#[from] arch::memory::MemoryError),
    #[error(transparent)]
    Boot(#[from] boot::BootError),
    #[error(transparent)]
    Irq(#[from] crate::irq::IrqError),
    #[error(transparent)]
    Bus(#[from] crate::bus::BusError),
    #[error("ACPI tables: {0}")]
    Acpi(String),
    #[error("PCI/virtio setup: {0}")]
    Devices(String),
    #[error("vCPU setup: {0}")]
    Vcpu(String),
    #[error("{context}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

fn kvm_err(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VmmError {
    move |source| VmmError::Kvm { what, source }
}

/// Hook that adds PCI functions to a machine under construction.
pub type AddDevices = Box<dyn FnOnce(&mut crate::devices::Devices) -> Result<(), String> + Send>;

/// Everything needed to start a machine.
pub struct MachineConfig {
    pub kernel: PathBuf,
    pub initramfs: Option<PathBuf>,
    pub cmdline: String,
    pub mem_mib: u64,
    pub vcpus: u8,
    pub console_log: Option<PathBuf>,
    pub console_hook: Option<LineHook>,
    /// Adds more PCI functions (e.g. sim-nics, from a crate above `vmm`)
    /// after the built-in devices and before the ACPI tables are written.
    pub add_devices: Option<AddDevices>,
    /// Hide XSAVE from the guest (nested engine on QEMU TCG; see arch::cpuid::hide_xsave).
    pub hide_xsave: bool,
}

/// Counters a run reports.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct MachineStats {
    pub pio_exits: u64,
    pub mmio_exits: u64,
    pub other_exits: u64,
    pub console_bytes: u64,
}

pub struct Machine {
    _vm: Arc<VmFd>,
    _mem: GuestMemoryMmap<()>,
    vcpus: Vec<VcpuThread>,
    stop: Arc<AtomicBool>,
    latch: Arc<ExitLatch>,
    monitor: Arc<Mutex<ConsoleMonitor>>,
    counters: Arc<ExitCounters>,
    agent: UnixStream,
    devices: crate::devices::Devices,
    started: Instant,
}

impl Machine {
    pub fn start(cfg: MachineConfig) -> Result<Machine, VmmError> {
        let started = Instant::now();
        install_kick_handler().map_err(|source| VmmError::Io {
            context: "installing the vCPU kick signal handler".into(),
            source,
        })?;
        if cfg.vcpus == 0 || cfg.vcpus > 8 {
            return Err(VmmError::Vcpu(format!(
                "{} vCPUs requested; 1–8 are supported",
                cfg.vcpus
            )));
        }
        let kvm = Kvm::new().map_err(VmmError::OpenKvm)?;
        let vm = Arc::new(kvm.create_vm().map_err(kvm_err("KVM_CREATE_VM"))?);
        vm.set_identity_map_address(KVM_IDENTITY_MAP_START)
            .map_err(kvm_err("KVM_SET_IDENTITY_MAP_ADDR"))?;
        vm.set_tss_address(KVM_TSS_START as usize)
            .map_err(kvm_err("KVM_SET_TSS_ADDR"))?;
        vm.create_irq_chip()
            .map_err(kvm_err("KVM_CREATE_IRQCHIP"))?;
        vm.create_pit2(kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        })
        .map_err(kvm_err("KVM_CREATE_PIT2"))?;

        // Guest RAM.
        let ram = cfg.mem_mib << 20;
        let mem = arch::memory::create_guest_memory(ram)?;
        for (slot, region) in mem.iter().enumerate() {
            let r = kvm_userspace_memory_region {
                slot: slot as u32,
                flags: 0,
                guest_phys_addr: region.start_addr().raw_value(),
                memory_size: region.len(),
                userspace_addr: region.as_ptr() as u64,
            };
            // SAFETY: the region's host mapping lives as long as `mem`, which
            // the Machine keeps until the VM (and its vCPUs) are gone.
            unsafe { vm.set_user_memory_region(r) }
                .map_err(kvm_err("KVM_SET_USER_MEMORY_REGION"))?;
        }

        // Interrupts, legacy devices.
        let router = IrqRouter::new(vm.clone())?;
        let latch = Arc::new(ExitLatch::new());
        let log = match &cfg.console_log {
            Some(p) => Some(std::fs::File::create(p).map_err(|source| VmmError::Io {
                context: format!("creating {}", p.display()),
                source,
            })?),
            None => None,
        };
        let monitor = ConsoleMonitor::new(log, cfg.console_hook);
        let mut pio = Bus::new("pio");
        let mut mmio = Bus::new("mmio");
        let com1_irq = router.legacy_line(COM1_IRQ)?;
        pio.insert(
            Arc::new(Mutex::new(SerialDevice::new(com1_irq, monitor.clone()))),
            u64::from(COM1_PORT),
            8,
        )?;
        pio.insert(
            Arc::new(Mutex::new(AcpiPowerDevice::new(latch.clone()))),
            u64::from(AcpiPowerDevice::BASE),
            AcpiPowerDevice::LEN,
        )?;

        // PCI and virtio devices.
        let mut devices = crate::devices::Devices::build(&mem, &router, &mut pio, &mut mmio)
            .map_err(VmmError::Devices)?;
        if let Some(add) = cfg.add_devices {
            add(&mut devices).map_err(VmmError::Devices)?;
        }
        let agent = devices.agent_host_end().map_err(|source| VmmError::Io {
            context: "agent channel".into(),
            source,
        })?;

        // ACPI.
        let acpi_cfg = arch::acpi::AcpiConfig {
            num_cpus: cfg.vcpus,
            pci_devices: devices.acpi_slots(),
            viot: devices.viot(),
        };
        let rsdp = arch::acpi::create_acpi_tables(&mem, &acpi_cfg)
            .map_err(|e| VmmError::Acpi(e.to_string()))?;

        // Kernel, command line, initramfs, boot information.
        let (entry, hdr) = boot::load_kernel(&mem, &cfg.kernel)?;
        boot::write_cmdline(&mem, &cfg.cmdline)?;
        let low_ram_end = ram.min(MEM_32BIT_GAP_START);
        let initrd_max = hdr
            .map(|h| u64::from(h.initrd_addr_max))
            .filter(|m| *m != 0)
            .unwrap_or(0x37ff_ffff);
        let initramfs = match &cfg.initramfs {
            Some(p) => Some(boot::load_initramfs(&mem, p, low_ram_end, initrd_max)?),
            None => None,
        };
        let e820: Vec<E820> = arch::memory::e820_map(ram)
            .iter()
            .map(|e| E820 {
                addr: e.addr,
                size: e.size,
                kind: e.kind.e820_type(),
            })
            .collect();
        match (entry, hdr) {
            (EntryMode::Linux64 { .. }, Some(h)) => boot::write_zero_page(
                &mem,
                h,
                cfg.cmdline.len(),
                initramfs,
                &e820,
                rsdp.raw_value(),
            )?,
            _ => boot::write_pvh_info(&mem, initramfs, &e820, rsdp.raw_value())?,
        }
        arch::regs::setup_boot_gdt(&mem).map_err(|e| VmmError::Vcpu(e.to_string()))?;
        arch::regs::setup_identity_page_tables(&mem).map_err(|e| VmmError::Vcpu(e.to_string()))?;

        // vCPUs.
        let base_cpuid = kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(kvm_err("KVM_GET_SUPPORTED_CPUID"))?;
        let pio = Arc::new(pio);
        let mmio = Arc::new(mmio);
        let stop = Arc::new(AtomicBool::new(false));
        let counters = Arc::new(ExitCounters::default());
        let mut vcpus = Vec::new();
        for id in 0..cfg.vcpus {
            let fd = vm
                .create_vcpu(u64::from(id))
                .map_err(kvm_err("KVM_CREATE_VCPU"))?;
            let mut cpuid = base_cpuid.clone();
            arch::cpuid::patch_cpuid(&mut cpuid, id, cfg.vcpus);
            if cfg.hide_xsave {
                arch::cpuid::hide_xsave(&mut cpuid);
            }
            fd.set_cpuid2(&cpuid).map_err(kvm_err("KVM_SET_CPUID2"))?;
            let entries = arch::cpuid::boot_msrs();
            let msrs = Msrs::from_entries(&entries)
                .map_err(|e| VmmError::Vcpu(format!("MSR list: {e:?}")))?;
            let n = fd.set_msrs(&msrs).map_err(kvm_err("KVM_SET_MSRS"))?;
            if n != entries.len() {
                return Err(VmmError::Vcpu(format!(
                    "KVM accepted {n} of {} boot MSRs",
                    entries.len()
                )));
            }
            fd.set_fpu(&arch::regs::fpu_state())
                .map_err(kvm_err("KVM_SET_FPU"))?;
            let mut lapic = fd.get_lapic().map_err(kvm_err("KVM_GET_LAPIC"))?;
            arch::regs::set_lint(&mut lapic);
            fd.set_lapic(&lapic).map_err(kvm_err("KVM_SET_LAPIC"))?;
            if id == 0 {
                let mut sregs = fd.get_sregs().map_err(kvm_err("KVM_GET_SREGS"))?;
                let regs = match entry {
                    EntryMode::Linux64 { entry } => {
                        arch::regs::long_mode_sregs(&mut sregs);
                        arch::regs::long_mode_regs(entry, ZERO_PAGE_START)
                    }
                    EntryMode::Pvh { entry } => {
                        arch::regs::pvh_sregs(&mut sregs);
                        arch::regs::pvh_regs(entry)
                    }
                };
                fd.set_sregs(&sregs).map_err(kvm_err("KVM_SET_SREGS"))?;
                fd.set_regs(&regs).map_err(kvm_err("KVM_SET_REGS"))?;
            }
            vcpus.push(
                VcpuThread::spawn(
                    id,
                    fd,
                    pio.clone(),
                    mmio.clone(),
                    latch.clone(),
                    stop.clone(),
                    counters.clone(),
                )
                .map_err(|source| VmmError::Io {
                    context: "spawning a vCPU thread".into(),
                    source,
                })?,
            );
        }
        tracing::info!(
            setup_ms = started.elapsed().as_millis() as u64,
            "machine started"
        );
        Ok(Machine {
            _vm: vm,
            _mem: mem,
            vcpus,
            stop,
            latch,
            monitor,
            counters,
            agent,
            devices,
            started,
        })
    }

    /// A new handle on the host end of the agent's virtio-console channel.
    pub fn agent_stream(&self) -> std::io::Result<UnixStream> {
        self.agent.try_clone()
    }

    pub fn exit_reason(&self) -> Option<ExitReason> {
        self.latch.get()
    }

    pub fn wait_exit(&self, timeout: Duration) -> Option<ExitReason> {
        self.latch.wait(timeout)
    }

    /// The panic line if the guest kernel panicked.
    pub fn console_panic(&self) -> Option<String> {
        self.monitor
            .lock()
            .ok()
            .and_then(|m| m.panic_line().map(str::to_string))
    }

    pub fn console_tail(&self) -> Vec<String> {
        self.monitor.lock().map(|m| m.tail()).unwrap_or_default()
    }

    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    pub fn stats(&self) -> MachineStats {
        MachineStats {
            pio_exits: self.counters.pio.load(Ordering::Relaxed),
            mmio_exits: self.counters.mmio.load(Ordering::Relaxed),
            other_exits: self.counters.other.load(Ordering::Relaxed),
            console_bytes: self.monitor.lock().map(|m| m.bytes()).unwrap_or(0),
        }
    }

    pub fn devices(&self) -> &crate::devices::Devices {
        &self.devices
    }

    /// DMA counters by device, IOMMU faults and fault-event counts.
    pub fn dma_report(&self) -> crate::iommu::DmaReport {
        self.devices.dma_report()
    }

    /// Every vCPU's state, for a guest that stopped answering (`None` for a
    /// vCPU whose thread did not answer within `timeout`). The guest resumes.
    pub fn vcpu_snapshots(&self, timeout: Duration) -> Vec<Option<crate::vcpu::VcpuSnapshot>> {
        self.vcpus.iter().map(|v| v.snapshot(timeout)).collect()
    }

    /// Stop the vCPUs (recording `why` unless the guest already ended) and
    /// the device threads.
    pub fn stop(&mut self, why: &str) -> ExitReason {
        self.latch.set(ExitReason::Stopped(why.to_string()));
        self.stop.store(true, Ordering::Release);
        for v in &mut self.vcpus {
            v.stop_and_join(Duration::from_secs(5));
        }
        self.devices.shutdown();
        self.latch
            .get()
            .unwrap_or(ExitReason::Stopped(why.to_string()))
    }
}

impl Drop for Machine {
    fn drop(&mut self) {
        self.stop("machine dropped");
    }
}
