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

/// A request for the vCPU's state, answered by the vCPU thread itself the
/// next time it is out of KVM_RUN (only that thread may issue vCPU ioctls
/// while the vCPU runs).
#[derive(Default)]
pub struct SnapshotSlot {
    requested: AtomicBool,
    answer: std::sync::Mutex<Option<VcpuSnapshot>>,
}

/// What a stuck guest's vCPU was doing: enough to tell a vCPU halted with
/// interrupts off (nothing can wake it) from one waiting for a timer that
/// never fires, or one spinning.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct VcpuSnapshot {
    pub id: u8,
    pub rip: u64,
    pub rflags: u64,
    /// RFLAGS.IF.
    pub interrupts_enabled: bool,
    pub cr3: u64,
    /// KVM_MP_STATE_* (0 runnable, 3 halted).
    pub mp_state: u32,
    /// An external interrupt KVM is about to inject (KVM_GET_VCPU_EVENTS).
    pub injected_irq: Option<u8>,
    pub nmi_pending: bool,
    /// Local APIC: highest vector requested (IRR) and in service (ISR).
    pub apic_irr_top: Option<u8>,
    pub apic_isr_top: Option<u8>,
    pub apic_tpr: u32,
    /// Local APIC timer: LVT entry, initial and current count.
    pub apic_lvtt: u32,
    pub apic_tmict: u32,
    pub apic_tmcct: u32,
    /// IA32_TSC_DEADLINE and IA32_TSC (0 when KVM would not read them).
    pub tsc_deadline: u64,
    pub tsc: u64,
}

/// Local APIC register offsets in the 1 KiB KVM_GET_LAPIC page (Intel SDM
/// vol. 3A, table 11-1 "Local APIC Register Address Map").
mod apic {
    pub const TPR: usize = 0x80;
    pub const ISR: usize = 0x100;
    pub const IRR: usize = 0x200;
    pub const LVTT: usize = 0x320;
    pub const TMICT: usize = 0x380;
    pub const TMCCT: usize = 0x390;
}

/// MSR numbers (Intel SDM vol. 4): IA32_TIME_STAMP_COUNTER, IA32_TSC_DEADLINE.
const MSR_IA32_TSC: u32 = 0x10;
const MSR_IA32_TSC_DEADLINE: u32 = 0x6e0;

fn apic_u32(regs: &[std::os::raw::c_char], off: usize) -> u32 {
    let b = |i: usize| regs.get(off + i).map_or(0, |&c| c as u8);
    u32::from_le_bytes([b(0), b(1), b(2), b(3)])
}

/// Highest vector set in the 256-bit APIC register array at `base` (eight
/// 32-bit registers, 16 bytes apart).
fn apic_top_vector(regs: &[std::os::raw::c_char], base: usize) -> Option<u8> {
    (0..8).rev().find_map(|i| {
        let w = apic_u32(regs, base + i * 0x10);
        (w != 0).then(|| (i * 32 + 31 - w.leading_zeros() as usize) as u8)
    })
}

fn snapshot(id: u8, fd: &VcpuFd) -> VcpuSnapshot {
    let regs = fd.get_regs().unwrap_or_default();
    let sregs = fd.get_sregs().unwrap_or_default();
    let mp_state = fd.get_mp_state().map(|m| m.mp_state).unwrap_or(u32::MAX);
    let events = fd.get_vcpu_events().unwrap_or_default();
    let lapic = fd.get_lapic().unwrap_or_default();
    let mut msrs = kvm_bindings::Msrs::from_entries(&[
        kvm_bindings::kvm_msr_entry {
            index: MSR_IA32_TSC_DEADLINE,
            ..Default::default()
        },
        kvm_bindings::kvm_msr_entry {
            index: MSR_IA32_TSC,
            ..Default::default()
        },
    ])
    .expect("two entries fit");
    let (tsc_deadline, tsc) = match fd.get_msrs(&mut msrs) {
        Ok(2) => (msrs.as_slice()[0].data, msrs.as_slice()[1].data),
        _ => (0, 0),
    };
    VcpuSnapshot {
        id,
        rip: regs.rip,
        rflags: regs.rflags,
        interrupts_enabled: regs.rflags & (1 << 9) != 0,
        cr3: sregs.cr3,
        mp_state,
        injected_irq: (events.interrupt.injected != 0).then_some(events.interrupt.nr),
        nmi_pending: events.nmi.pending != 0,
        apic_irr_top: apic_top_vector(&lapic.regs, apic::IRR),
        apic_isr_top: apic_top_vector(&lapic.regs, apic::ISR),
        apic_tpr: apic_u32(&lapic.regs, apic::TPR),
        apic_lvtt: apic_u32(&lapic.regs, apic::LVTT),
        apic_tmict: apic_u32(&lapic.regs, apic::TMICT),
        apic_tmcct: apic_u32(&lapic.regs, apic::TMCCT),
        tsc_deadline,
        tsc,
    }
}

pub struct VcpuThread {
    handle: Option<JoinHandle<()>>,
    snap: Arc<SnapshotSlot>,
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
        let snap = Arc::new(SnapshotSlot::default());
        let slot = snap.clone();
        let handle = std::thread::Builder::new().name(format!("vcpu{id}")).spawn(move || {
            loop {
                if stop.load(Ordering::Acquire) {
                    break;
                }
                if slot.requested.swap(false, Ordering::AcqRel) {
                    let s = snapshot(id, &fd);
                    *slot.answer.lock().unwrap_or_else(|e| e.into_inner()) = Some(s);
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
            snap,
        })
    }

    /// Ask the thread for its vCPU's state and wait up to `timeout`; `None`
    /// when the thread did not come out of KVM_RUN or a device handler.
    pub fn snapshot(&self, timeout: Duration) -> Option<VcpuSnapshot> {
        let h = self.handle.as_ref()?;
        *self.snap.answer.lock().unwrap_or_else(|e| e.into_inner()) = None;
        self.snap.requested.store(true, Ordering::Release);
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self
                .snap
                .answer
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take()
            {
                return Some(s);
            }
            if Instant::now() > deadline || h.is_finished() {
                self.snap.requested.store(false, Ordering::Release);
                return None;
            }
            let _ = h.kill(kick_signal());
            std::thread::sleep(Duration::from_millis(2));
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn page_with(words: &[(usize, u32)]) -> Vec<std::os::raw::c_char> {
        let mut p = vec![0 as std::os::raw::c_char; 1024];
        for &(off, w) in words {
            for (i, b) in w.to_le_bytes().iter().enumerate() {
                p[off + i] = *b as std::os::raw::c_char;
            }
        }
        p
    }

    #[test]
    fn apic_top_vector_finds_the_highest_set_bit() {
        assert_eq!(apic_top_vector(&page_with(&[]), apic::IRR), None);
        // Vector 0xec (timer, in Linux) is bit 12 of IRR register 7.
        let p = page_with(&[(apic::IRR + 7 * 0x10, 1 << 12), (apic::IRR, 1 << 5)]);
        assert_eq!(apic_top_vector(&p, apic::IRR), Some(0xec));
        assert_eq!(apic_top_vector(&p, apic::ISR), None);
        let p = page_with(&[(apic::ISR + 0x10, 0x8000_0001)]);
        assert_eq!(apic_top_vector(&p, apic::ISR), Some(63));
    }

    #[test]
    fn apic_u32_reads_little_endian_and_tolerates_short_pages() {
        let p = page_with(&[(apic::TMICT, 0x1234_5678)]);
        assert_eq!(apic_u32(&p, apic::TMICT), 0x1234_5678);
        assert_eq!(apic_u32(&p[..apic::TMICT + 2], apic::TMICT), 0x5678);
    }
}
