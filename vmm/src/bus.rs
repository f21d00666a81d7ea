//! Address-range dispatch for port I/O and MMIO exits.
//!
//! A `Bus` maps non-overlapping `[base, base+len)` ranges to devices. The vCPU
//! threads only ever call `Bus::read`/`Bus::write`; an access nobody claims
//! reads as all-ones and is logged once per range start.

use std::collections::{BTreeMap, HashSet};
use std::sync::Mutex;

use crate::device::SharedDevice;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BusError {
    #[error("bus range {base:#x}+{len:#x} overlaps an existing range")]
    Overlap { base: u64, len: u64 },
    #[error("bus range {base:#x}+{len:#x} is empty or wraps around")]
    BadRange { base: u64, len: u64 },
}

#[derive(Clone)]
struct Entry {
    len: u64,
    dev: SharedDevice,
}

/// A bus of one address space (PIO or MMIO).
pub struct Bus {
    name: &'static str,
    ranges: BTreeMap<u64, Entry>,
    warned: Mutex<HashSet<u64>>,
}

impl Bus {
    pub fn new(name: &'static str) -> Self {
        Bus {
            name,
            ranges: BTreeMap::new(),
            warned: Mutex::new(HashSet::new()),
        }
    }

    /// Register `dev` for `[base, base+len)`.
    pub fn insert(&mut self, dev: SharedDevice, base: u64, len: u64) -> Result<(), BusError> {
        let end = base
            .checked_add(len)
            .ok_or(BusError::BadRange { base, len })?;
        if len == 0 {
            return Err(BusError::BadRange { base, len });
        }
        if let Some((&b, e)) = self.ranges.range(..end).next_back()
            && b + e.len > base
        {
            return Err(BusError::Overlap { base, len });
        }
        self.ranges.insert(base, Entry { len, dev });
        Ok(())
    }

    fn lookup(&self, addr: u64, size: usize) -> Option<(u64, &Entry)> {
        let (&base, e) = self.ranges.range(..=addr).next_back()?;
        let off = addr - base;
        // The whole access must lie inside the range.
        if off.checked_add(size as u64)? <= e.len {
            Some((base, e))
        } else {
            None
        }
    }

    fn warn_once(&self, addr: u64, what: &str) {
        if let Ok(mut w) = self.warned.lock()
            && w.insert(addr)
        {
            tracing::debug!(
                bus = self.name,
                addr = format_args!("{addr:#x}"),
                "unclaimed {what}"
            );
        }
    }

    /// Returns true when a device handled the access.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.lookup(addr, data.len()) {
            Some((base, e)) => {
                if let Ok(mut d) = e.dev.lock() {
                    d.read(base, addr - base, data);
                } else {
                    data.fill(0xff);
                }
                true
            }
            None => {
                data.fill(0xff);
                self.warn_once(addr, "read");
                false
            }
        }
    }

    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.lookup(addr, data.len()) {
            Some((base, e)) => {
                if let Ok(mut d) = e.dev.lock() {
                    d.write(base, addr - base, data);
                }
                true
            }
            None => {
                self.warn_once(addr, "write");
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::BusDevice;
    use std::sync::{Arc, Mutex};

    struct Echo(Vec<(u64, u64, Vec<u8>)>);
    impl BusDevice for Echo {
        fn read(&mut self, _base: u64, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&mut self, base: u64, offset: u64, data: &[u8]) {
            self.0.push((base, offset, data.to_vec()));
        }
    }

    #[test]
    fn dispatch_and_overlap() {
        let mut bus = Bus::new("pio");
        let d = Arc::new(Mutex::new(Echo(vec![])));
        bus.insert(d.clone(), 0x3f8, 8).unwrap();
        assert_eq!(
            bus.insert(d.clone(), 0x3fc, 8),
            Err(BusError::Overlap {
                base: 0x3fc,
                len: 8
            })
        );
        assert_eq!(
            bus.insert(d.clone(), 0x3f0, 9),
            Err(BusError::Overlap {
                base: 0x3f0,
                len: 9
            })
        );
        bus.insert(d.clone(), 0x3f0, 8).unwrap();
        assert_eq!(
            bus.insert(d.clone(), 0, 0),
            Err(BusError::BadRange { base: 0, len: 0 })
        );
        let mut b = [0u8; 1];
        assert!(bus.read(0x3fa, &mut b));
        assert_eq!(b[0], 2);
        // Straddling the end of a range is unclaimed.
        let mut w = [0u8; 4];
        assert!(!bus.read(0x3fe, &mut w));
        assert_eq!(w, [0xff; 4]);
        assert!(bus.write(0x3f9, &[7]));
        assert_eq!(d.lock().unwrap().0, vec![(0x3f8, 1, vec![7])]);
        assert!(!bus.write(0x1000, &[1]));
    }
}
