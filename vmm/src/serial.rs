//! COM1: a 16550A UART (vm-superio) at 0x3f8 / IRQ 4 for the guest's console,
//! and the console monitor that turns its bytes into lines, keeps the tail for
//! failure reports and spots kernel panics.

use std::collections::VecDeque;
use std::io::Write;
use std::sync::{Arc, Mutex};

use vm_superio::{Serial, Trigger};

use crate::device::{BusDevice, IrqLine};

/// How many console lines a failure report quotes.
pub const CONSOLE_TAIL_LINES: usize = 40;

/// Markers of a dead guest kernel on the console (kernel/panic.c, oops_end()).
const PANIC_MARKERS: &[&str] = &["Kernel panic - not syncing", "---[ end Kernel panic"];

/// Receives every complete console line (kvm engine: printed or logged; nested
/// engine: forwarded to the host).
pub type LineHook = Box<dyn FnMut(&str) + Send>;

/// Line-oriented view of the console shared with the VMM.
pub struct ConsoleMonitor {
    partial: Vec<u8>,
    tail: VecDeque<String>,
    panicked: Option<String>,
    log: Option<std::fs::File>,
    hook: Option<LineHook>,
    bytes: u64,
}

impl ConsoleMonitor {
    pub fn new(log: Option<std::fs::File>, hook: Option<LineHook>) -> Arc<Mutex<Self>> {
        Arc::new(Mutex::new(ConsoleMonitor {
            partial: Vec::new(),
            tail: VecDeque::with_capacity(CONSOLE_TAIL_LINES + 1),
            panicked: None,
            log,
            hook,
            bytes: 0,
        }))
    }

    pub fn push_bytes(&mut self, data: &[u8]) {
        self.bytes += data.len() as u64;
        if let Some(f) = self.log.as_mut() {
            let _ = f.write_all(data);
        }
        for &b in data {
            if b == b'\n' {
                let line = String::from_utf8_lossy(&self.partial)
                    .trim_end_matches('\r')
                    .to_string();
                self.partial.clear();
                self.push_line(line);
            } else if self.partial.len() < 4096 {
                self.partial.push(b);
            }
        }
    }

    fn push_line(&mut self, line: String) {
        if self.panicked.is_none() && PANIC_MARKERS.iter().any(|m| line.contains(m)) {
            self.panicked = Some(line.clone());
        }
        if let Some(h) = self.hook.as_mut() {
            h(&line);
        }
        if self.tail.len() == CONSOLE_TAIL_LINES {
            self.tail.pop_front();
        }
        self.tail.push_back(line);
    }

    /// The first panic line seen, if any.
    pub fn panic_line(&self) -> Option<&str> {
        self.panicked.as_deref()
    }

    /// The last lines, including an unterminated one.
    pub fn tail(&self) -> Vec<String> {
        let mut v: Vec<String> = self.tail.iter().cloned().collect();
        if !self.partial.is_empty() {
            v.push(String::from_utf8_lossy(&self.partial).to_string());
        }
        if v.len() > CONSOLE_TAIL_LINES {
            v.drain(..v.len() - CONSOLE_TAIL_LINES);
        }
        v
    }

    pub fn bytes(&self) -> u64 {
        self.bytes
    }
}

/// `Write` adapter feeding the UART's output into the monitor.
pub struct MonitorWriter(pub Arc<Mutex<ConsoleMonitor>>);

impl Write for MonitorWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Ok(mut m) = self.0.lock() {
            m.push_bytes(buf);
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// vm-superio trigger over any `IrqLine`.
pub struct LineTrigger(pub Arc<dyn IrqLine>);

impl Trigger for LineTrigger {
    type E = std::io::Error;
    fn trigger(&self) -> std::io::Result<()> {
        self.0.trigger();
        Ok(())
    }
}

/// The UART as a port-I/O bus device (8 registers).
pub struct SerialDevice {
    uart: Serial<LineTrigger, vm_superio::serial::NoEvents, MonitorWriter>,
}

impl SerialDevice {
    pub fn new(irq: Arc<dyn IrqLine>, monitor: Arc<Mutex<ConsoleMonitor>>) -> Self {
        SerialDevice {
            uart: Serial::new(LineTrigger(irq), MonitorWriter(monitor)),
        }
    }
}

impl BusDevice for SerialDevice {
    fn read(&mut self, _base: u64, offset: u64, data: &mut [u8]) {
        if data.len() == 1 && offset < 8 {
            data[0] = self.uart.read(offset as u8);
        } else {
            data.fill(0xff);
        }
    }
    fn write(&mut self, _base: u64, offset: u64, data: &[u8]) {
        if data.len() == 1
            && offset < 8
            && let Err(e) = self.uart.write(offset as u8, data[0])
        {
            tracing::debug!("uart write: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_tail_and_panic() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s2 = seen.clone();
        let m = ConsoleMonitor::new(
            None,
            Some(Box::new(move |l: &str| {
                s2.lock().unwrap().push(l.to_string())
            })),
        );
        let mut m = m.lock().unwrap();
        for i in 0..50 {
            m.push_bytes(format!("line {i}\r\n").as_bytes());
        }
        assert!(m.panic_line().is_none());
        m.push_bytes(
            b"[    1.0] Kernel panic - not syncing: VFS: Unable to mount root fs\npartial",
        );
        assert!(m.panic_line().unwrap().contains("VFS"));
        let t = m.tail();
        assert_eq!(t.len(), CONSOLE_TAIL_LINES);
        assert_eq!(t.last().unwrap(), "partial");
        assert_eq!(seen.lock().unwrap().len(), 51);
        assert_eq!(seen.lock().unwrap()[0], "line 0");
    }

    struct Count(std::sync::atomic::AtomicU32);
    impl IrqLine for Count {
        fn trigger(&self) {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }

    #[test]
    fn uart_transmits_to_monitor() {
        let m = ConsoleMonitor::new(None, None);
        let irq = Arc::new(Count(0.into()));
        let mut dev = SerialDevice::new(irq.clone(), m.clone());
        for b in b"hi\n" {
            dev.write(0x3f8, 0, &[*b]);
        }
        assert_eq!(m.lock().unwrap().tail(), vec!["hi".to_string()]);
        // Wrong-size accesses are ignored / read all-ones.
        let mut w = [0u8; 2];
        dev.read(0x3f8, 0, &mut w);
        assert_eq!(w, [0xff, 0xff]);
    }
}
