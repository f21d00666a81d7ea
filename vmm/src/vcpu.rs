//! vCPU threads: the KVM_RUN loop and the dispatch of its exits to the buses.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use kvm_ioctls::{VcpuExit, VcpuFd};
use vmm_sys_util::signal::{Killable, register_signal_handler};

use crate::bus::Bus;
use crate::power::{ExitLatch, ExitReason};

/// The signal that knocks a vCPU thread out of KVM_RUN.
pub fn kick_signal() -> libc::c_int {
    libc::SIGRTMIN()
}

extern "C" fn noop_handler(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

/// Install the no-op kick handler once per process.
pub fn install_kick_handler() -> std::io::Result<()> {
    static ONCE: std::sync::Once = std::sync::Once::new();
    let mut res = Ok(());
    ONCE.call_once(|| {
        res = register_signal_handler(kick_signal(), noop_handler)
            .map_err(|e| std::io::Error::from_raw_os_error(e.errno()));
    });
    res
}

/// Exit statistics shared by all vCPUs (read by bench and reports).
#[derive(Default)]
pub struct ExitCounters {
    pub pio: AtomicU64,
    pub mmio: AtomicU64,
    pub other: AtomicU64,
}

pub struct VcpuThread {
    handle: Option<JoinHandle<()>>,
}

impl VcpuThread {
    /// Run `fd` on a new thread until the machine stops.
    pub fn spawn(
        id: u8,
        mut fd: VcpuFd,
        pio: Arc<Bus>,
        mmio: Arc<Bus>,
        latch: Arc<ExitLatch>,
        stop: Arc<AtomicBool>,
        counters: Arc<ExitCounters>,
    ) -> std::io::Result<Self> {
        let handle = std::thread::Builder::new().name(format!("vcpu{id}")).spawn(move || {
            loop {
                if stop.load(Ordering::Acquire) {
                    break;
                }
                match fd.run() {
                    Ok(exit) => match exit {
                        VcpuExit::IoIn(port, data) => {
                            counters.pio.fetch_add(1, Ordering::Relaxed);
                            pio.read(u64::from(port), data);
                        }
                        VcpuExit::IoOut(port, data) => {
                            counters.pio.fetch_add(1, Ordering::Relaxed);
                            pio.write(u64::from(port), data);
                        }
                        VcpuExit::MmioRead(addr, data) => {
                            counters.mmio.fetch_add(1, Ordering::Relaxed);
                            mmio.read(addr, data);
                        }
                        VcpuExit::MmioWrite(addr, data) => {
                            counters.mmio.fetch_add(1, Ordering::Relaxed);
                            mmio.write(addr, data);
                        }
                        VcpuExit::Hlt => {
                            // Only reached without an in-kernel LAPIC; a halted
                            // guest with interrupts off is dead.
                            latch.set(ExitReason::VcpuError(format!("vcpu{id} halted")));
                        }
                        VcpuExit::Shutdown => {
                            let rip = fd.get_regs().map(|r| format!("rip {:#x}", r.rip)).unwrap_or_default();
                            let cr = fd.get_sregs().map(|s| format!(" cr0 {:#x} cr3 {:#x}", s.cr0, s.cr3)).unwrap_or_default();
                            latch.set(ExitReason::TripleFault(format!("vcpu{id} {rip}{cr}")))
                        }
                        VcpuExit::SystemEvent(kind, _) => match kind {
                            kvm_bindings::KVM_SYSTEM_EVENT_SHUTDOWN => latch.set(ExitReason::PowerOff),
                            kvm_bindings::KVM_SYSTEM_EVENT_RESET => latch.set(ExitReason::Reset),
                            other => latch.set(ExitReason::VcpuError(format!("vcpu{id}: system event {other}"))),
                        },
                        VcpuExit::FailEntry(reason, cpu) => {
                            latch.set(ExitReason::VcpuError(format!("vcpu{id}: KVM entry failure {reason:#x} on cpu {cpu}")))
                        }
                        VcpuExit::InternalError => latch.set(ExitReason::VcpuError(format!(
                            "vcpu{id}: KVM internal error (emulation failure): this host's KVM cannot run this guest"
                        ))),
                        VcpuExit::IoapicEoi(_) | VcpuExit::Intr | VcpuExit::IrqWindowOpen => {
                            counters.other.fetch_add(1, Ordering::Relaxed);
                        }
                        other => {
                            counters.other.fetch_add(1, Ordering::Relaxed);
                            tracing::debug!(id, "unhandled vcpu exit {other:?}");
                        }
                    },
                    Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                        fd.set_kvm_immediate_exit(0);
                    }
                    Err(e) => {
                        latch.set(ExitReason::VcpuError(format!("vcpu{id}: KVM_RUN failed: {e}")));
                    }
                }
                if latch.get().is_some() {
                    break;
                }
            }
        })?;
        Ok(VcpuThread {
            handle: Some(handle),
        })
    }

    /// Kick the thread out of KVM_RUN (repeatedly, to beat the race with
    /// entering the ioctl) and join it. `stop` must already be set.
    pub fn stop_and_join(&mut self, timeout: Duration) -> bool {
        let Some(h) = self.handle.take() else {
            return true;
        };
        let deadline = Instant::now() + timeout;
        while !h.is_finished() {
            let _ = h.kill(kick_signal());
            if Instant::now() > deadline {
                tracing::warn!("vcpu thread did not stop");
                return false;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        h.join().is_ok()
    }
}

impl Drop for VcpuThread {
    fn drop(&mut self) {
        self.stop_and_join(Duration::from_secs(2));
    }
}
