//! How a machine ends: HW-reduced ACPI sleep/reset registers, triple faults,
//! errors, and the host asking it to stop. The first reason wins.

use std::sync::{Condvar, Mutex};
use std::time::Duration;

use crate::device::BusDevice;
use crate::layout::{
    ACPI_RESET_PORT, ACPI_RESET_VALUE, ACPI_SLEEP_CONTROL_PORT, ACPI_SLEEP_STATUS_PORT,
};

pub use crate::arch::acpi::{S5_SLP_TYP, SLP_EN};

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case", tag = "kind", content = "detail")]
pub enum ExitReason {
    /// The guest powered off through ACPI S5.
    PowerOff,
    /// The guest asked for a reset (ACPI reset register or triple fault).
    Reset,
    /// A vCPU took a triple fault (KVM_EXIT_SHUTDOWN); the detail has its RIP.
    TripleFault(String),
    /// A vCPU failed (KVM error, emulation failure, internal error).
    VcpuError(String),
    /// The host stopped the machine (watchdog, Ctrl-C, end of job).
    Stopped(String),
}

/// One-shot latch of the machine's exit reason.
#[derive(Default)]
pub struct ExitLatch {
    reason: Mutex<Option<ExitReason>>,
    cv: Condvar,
}

impl ExitLatch {
    pub fn new() -> Self {
        Self::default()
    }

    /// Record `r` unless a reason is already recorded.
    pub fn set(&self, r: ExitReason) {
        if let Ok(mut g) = self.reason.lock()
            && g.is_none()
        {
            tracing::debug!(?r, "machine exit");
            *g = Some(r);
            self.cv.notify_all();
        }
    }

    pub fn get(&self) -> Option<ExitReason> {
        self.reason.lock().ok().and_then(|g| g.clone())
    }

    /// Wait up to `timeout` for a reason.
    pub fn wait(&self, timeout: Duration) -> Option<ExitReason> {
        let g = self.reason.lock().ok()?;
        let (g, _) = self
            .cv
            .wait_timeout_while(g, timeout, |r| r.is_none())
            .ok()?;
        g.clone()
    }
}

/// The three one-byte registers the FADT points at.
pub struct AcpiPowerDevice {
    latch: std::sync::Arc<ExitLatch>,
}

impl AcpiPowerDevice {
    pub const BASE: u16 = ACPI_SLEEP_CONTROL_PORT;
    pub const LEN: u64 = (ACPI_RESET_PORT - ACPI_SLEEP_CONTROL_PORT + 1) as u64;

    pub fn new(latch: std::sync::Arc<ExitLatch>) -> Self {
        AcpiPowerDevice { latch }
    }
}

impl BusDevice for AcpiPowerDevice {
    fn read(&mut self, _base: u64, _offset: u64, data: &mut [u8]) {
        // Sleep status reads "wake status" clear; nothing else is readable.
        data.fill(0);
    }
    fn write(&mut self, base: u64, offset: u64, data: &[u8]) {
        let Some(&v) = data.first() else { return };
        let port = base + offset;
        if port == u64::from(ACPI_SLEEP_CONTROL_PORT) {
            if crate::arch::acpi::sleep_control_is_poweroff(v) {
                self.latch.set(ExitReason::PowerOff);
            }
        } else if port == u64::from(ACPI_RESET_PORT) && v == ACPI_RESET_VALUE {
            self.latch.set(ExitReason::Reset);
        } else if port == u64::from(ACPI_SLEEP_STATUS_PORT) {
            // Write-1-to-clear wake status: nothing latched.
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn s5_and_reset() {
        let l = Arc::new(ExitLatch::new());
        let mut d = AcpiPowerDevice::new(l.clone());
        let base = u64::from(AcpiPowerDevice::BASE);
        d.write(base, 0, &[S5_SLP_TYP << 2]); // no SLP_EN: ignored
        assert_eq!(l.get(), None);
        d.write(base, 0, &[(3 << 2) | SLP_EN]); // S3: ignored
        assert_eq!(l.get(), None);
        d.write(base, 0, &[(S5_SLP_TYP << 2) | SLP_EN]);
        assert_eq!(l.get(), Some(ExitReason::PowerOff));
        d.write(base, 2, &[ACPI_RESET_VALUE]);
        assert_eq!(l.get(), Some(ExitReason::PowerOff), "first reason wins");
        let l2 = Arc::new(ExitLatch::new());
        let mut d2 = AcpiPowerDevice::new(l2.clone());
        d2.write(base, 2, &[ACPI_RESET_VALUE]);
        assert_eq!(l2.wait(Duration::from_millis(1)), Some(ExitReason::Reset));
    }
}
