//! A job: what one run of the lab does, independent of the engine. On the
//! nested engine the job travels into L1 as JSON with its paths rewritten.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// The lab machine of a job.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MachineSpec {
    pub kernel: PathBuf,
    pub initramfs: PathBuf,
    pub cmdline: String,
    pub mem_mib: u64,
    pub vcpus: u8,
    /// Hide XSAVE from the guest: set by the nested engine (QEMU TCG's SVM
    /// does not intercept the L2 guest's XSETBV; see vmm::arch::cpuid::hide_xsave).
    #[serde(default)]
    pub hide_xsave: bool,
    /// sim-nics and their wires.
    #[serde(default)]
    pub topology: crate::topology::TopologySpec,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "kind")]
pub enum JobCommand {
    /// Boot to the agent, say hello, run `exec` (shell commands) if any, power off.
    Boot {
        #[serde(default)]
        exec: Vec<String>,
        /// After `exec`: make each of these devices (PCI BDF, e.g.
        /// "0000:00:02.0") read again the IOVA of its last DMA, through its
        /// IOMMU endpoint (a device touching memory the guest may have unmapped).
        #[serde(default)]
        dma_probe: Vec<String>,
    },
    /// Run a data-driven scenario (its TOML travels with the job).
    Scenario { toml: String, origin: String },
    /// Run scenarios one after another, sharing a booted machine between
    /// consecutive ones whose topologies allow it (guest reset between).
    Batch {
        items: Vec<crate::session::BatchItem>,
    },
    /// A property-based fault campaign around a base scenario, all cases
    /// on one booted machine.
    Campaign {
        toml: String,
        origin: String,
        config: CampaignJob,
    },
    /// Boot `runs` times with our VMM and with QEMU; report boot-to-agent medians.
    BenchBoot {
        runs: u32,
        qemu: crate::qemu::QemuInstall,
    },
    /// TCP throughput NIC A → NIC B: sim-nics (IOMMU audit on, then off)
    /// against QEMU's virtio-net pair; `runs` transfers of `bytes` each.
    BenchNet {
        runs: u32,
        bytes: u64,
        qemu: crate::qemu::QemuInstall,
    },
}

/// The knobs of a campaign job (see `scenarios::campaign::CampaignConfig`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CampaignJob {
    pub cases: u32,
    pub seed: u64,
    pub max_ops: usize,
    pub shrink_iters: u32,
    /// Name of the regression (file stem) if a violation is found.
    pub regression_name: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Job {
    pub command: JobCommand,
    pub kernel_spec: String,
    pub kernel_release: String,
    pub machine: MachineSpec,
    /// Watchdog for boot-to-agent, seconds.
    pub boot_timeout_s: u64,
    /// Forward every guest console line as an event.
    pub verbose: bool,
    /// Scratch directory for sockets and logs of the run.
    #[serde(default = "default_scratch")]
    pub scratch_dir: PathBuf,
}

fn default_scratch() -> PathBuf {
    "/tmp".into()
}

/// Kernel command line of the lab guest. `quiet` keeps the serial console
/// (one exit per byte) short; the agent reads the full log from /dev/kmsg.
pub fn default_cmdline() -> String {
    [
        "console=ttyS0",
        "quiet",
        "panic=-1",
        "reboot=acpi",
        "iommu.strict=1",
        "iommu.passthrough=0",
        "8250.nr_uarts=1",
        "rdinit=/init",
    ]
    .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_json_round_trip() {
        let j = Job {
            command: JobCommand::BenchBoot {
                runs: 3,
                qemu: crate::qemu::QemuInstall {
                    binary: "qemu-system-x86_64".into(),
                    datadir: None,
                    libdir: None,
                },
            },
            kernel_spec: "patched".into(),
            kernel_release: "7.3.4+deb13-cloud-amd64".into(),
            machine: MachineSpec {
                kernel: "/l2/vmlinuz".into(),
                initramfs: "/l2/initrd".into(),
                cmdline: default_cmdline(),
                mem_mib: 2048,
                vcpus: 2,
                hide_xsave: false,
                topology: Default::default(),
            },
            boot_timeout_s: 120,
            verbose: false,
            scratch_dir: "/tmp".into(),
        };
        let s = serde_json::to_string(&j).unwrap();
        assert_eq!(serde_json::from_str::<Job>(&s).unwrap(), j);
        assert!(default_cmdline().contains("iommu.strict=1"));
    }
}
