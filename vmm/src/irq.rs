//! Interrupt plumbing on KVM: the GSI routing table and irqfds.
//!
//! `KVM_SET_GSI_ROUTING` replaces the whole table, so one `IrqRouter` keeps a
//! shadow of every route (the legacy PIC/IOAPIC pins as KVM sets them up by
//! default, plus one MSI route per device vector) and pushes all of it on each
//! change. Devices see only `MsiSink` / `IrqLine` (crate::device).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use kvm_bindings::{
    KVM_IRQ_ROUTING_IRQCHIP, KVM_IRQ_ROUTING_MSI, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER,
    KVM_IRQCHIP_PIC_SLAVE, KvmIrqRouting, kvm_irq_routing_entry,
};
use kvm_ioctls::VmFd;
use vmm_sys_util::eventfd::EventFd;

use crate::device::{IrqLine, MsiMessage, MsiSink};
use crate::layout::{IOAPIC_PINS, MSI_GSI_END, MSI_GSI_START};

#[derive(Debug, thiserror::Error)]
pub enum IrqError {
    #[error("KVM_SET_GSI_ROUTING failed")]
    SetRouting(#[source] kvm_ioctls::Error),
    #[error("registering an irqfd for GSI {gsi} failed")]
    Irqfd {
        gsi: u32,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("creating an eventfd failed")]
    EventFd(#[source] std::io::Error),
    #[error("out of GSIs for MSI vectors")]
    NoGsi,
}

struct RouterState {
    msi_routes: BTreeMap<u32, MsiMessage>,
    next_gsi: u32,
}

/// Owner of the VM's GSI routing table.
pub struct IrqRouter {
    vm: Arc<VmFd>,
    state: Mutex<RouterState>,
}

fn irqchip_entry(gsi: u32, chip: u32, pin: u32) -> kvm_irq_routing_entry {
    let mut e = kvm_irq_routing_entry {
        gsi,
        type_: KVM_IRQ_ROUTING_IRQCHIP,
        ..Default::default()
    };
    e.u.irqchip.irqchip = chip;
    e.u.irqchip.pin = pin;
    e
}

fn msi_entry(gsi: u32, m: &MsiMessage) -> kvm_irq_routing_entry {
    let mut e = kvm_irq_routing_entry {
        gsi,
        type_: KVM_IRQ_ROUTING_MSI,
        ..Default::default()
    };
    e.u.msi.address_lo = m.address as u32;
    e.u.msi.address_hi = (m.address >> 32) as u32;
    e.u.msi.data = m.data;
    e
}

/// The legacy routes KVM installs by default with an in-kernel irqchip
/// (virt/kvm/irqchip.c, arch/x86/kvm/irq_comm.c: GSI n → PIC pin n%8 for
/// n < 16 and IOAPIC pin n for n < 24).
pub fn legacy_routes() -> Vec<kvm_irq_routing_entry> {
    let mut v = Vec::new();
    for gsi in 0..IOAPIC_PINS {
        if gsi < 8 {
            v.push(irqchip_entry(gsi, KVM_IRQCHIP_PIC_MASTER, gsi));
        } else if gsi < 16 {
            v.push(irqchip_entry(gsi, KVM_IRQCHIP_PIC_SLAVE, gsi - 8));
        }
        v.push(irqchip_entry(gsi, KVM_IRQCHIP_IOAPIC, gsi));
    }
    v
}

impl IrqRouter {
    pub fn new(vm: Arc<VmFd>) -> Result<Arc<Self>, IrqError> {
        let r = Arc::new(IrqRouter {
            vm,
            state: Mutex::new(RouterState {
                msi_routes: BTreeMap::new(),
                next_gsi: MSI_GSI_START,
            }),
        });
        r.push(&r.state.lock().expect("router lock"))?;
        Ok(r)
    }

    fn push(&self, st: &RouterState) -> Result<(), IrqError> {
        let mut entries = legacy_routes();
        entries.extend(st.msi_routes.iter().map(|(gsi, m)| msi_entry(*gsi, m)));
        let mut table = KvmIrqRouting::new(entries.len()).map_err(|_| IrqError::NoGsi)?;
        table.as_mut_slice().copy_from_slice(&entries);
        self.vm
            .set_gsi_routing(&table)
            .map_err(IrqError::SetRouting)
    }

    fn alloc_gsi(&self) -> Result<u32, IrqError> {
        let mut st = self.state.lock().map_err(|_| IrqError::NoGsi)?;
        if st.next_gsi > MSI_GSI_END {
            return Err(IrqError::NoGsi);
        }
        let g = st.next_gsi;
        st.next_gsi += 1;
        Ok(g)
    }

    fn set_msi_route(&self, gsi: u32, msg: Option<MsiMessage>) -> Result<(), IrqError> {
        let mut st = self.state.lock().map_err(|_| IrqError::NoGsi)?;
        let changed = match msg {
            Some(m) => st.msi_routes.insert(gsi, m) != Some(m),
            None => st.msi_routes.remove(&gsi).is_some(),
        };
        if changed { self.push(&st) } else { Ok(()) }
    }

    /// An edge-triggered legacy line on IOAPIC pin `gsi`, raised through an irqfd.
    pub fn legacy_line(&self, gsi: u32) -> Result<Arc<IrqFdLine>, IrqError> {
        let evt = EventFd::new(libc::EFD_NONBLOCK).map_err(IrqError::EventFd)?;
        self.vm
            .register_irqfd(&evt, gsi)
            .map_err(|source| IrqError::Irqfd { gsi, source })?;
        Ok(Arc::new(IrqFdLine { evt }))
    }

    /// MSI vectors of one device: `nvec` GSIs with an irqfd each.
    pub fn msi_group(self: &Arc<Self>, nvec: u16) -> Result<Arc<MsiGroup>, IrqError> {
        let mut vectors = Vec::with_capacity(nvec as usize);
        for _ in 0..nvec {
            let gsi = self.alloc_gsi()?;
            let evt = EventFd::new(libc::EFD_NONBLOCK).map_err(IrqError::EventFd)?;
            self.vm
                .register_irqfd(&evt, gsi)
                .map_err(|source| IrqError::Irqfd { gsi, source })?;
            vectors.push(MsiVector {
                gsi,
                evt,
                routed: Mutex::new(false),
            });
        }
        Ok(Arc::new(MsiGroup {
            router: self.clone(),
            vectors,
        }))
    }
}

/// A legacy interrupt line backed by an irqfd.
pub struct IrqFdLine {
    evt: EventFd,
}

impl IrqLine for IrqFdLine {
    fn trigger(&self) {
        let _ = self.evt.write(1);
    }
}

struct MsiVector {
    gsi: u32,
    evt: EventFd,
    routed: Mutex<bool>,
}

/// `MsiSink` for one device: vector i ↔ GSI ↔ irqfd.
pub struct MsiGroup {
    router: Arc<IrqRouter>,
    vectors: Vec<MsiVector>,
}

impl MsiSink for MsiGroup {
    fn set_route(&self, vector: u16, msg: Option<MsiMessage>) {
        let Some(v) = self.vectors.get(vector as usize) else {
            return;
        };
        if let Err(e) = self.router.set_msi_route(v.gsi, msg) {
            tracing::warn!(vector, gsi = v.gsi, "MSI route update failed: {e}");
            return;
        }
        if let Ok(mut r) = v.routed.lock() {
            *r = msg.is_some();
        }
    }

    fn trigger(&self, vector: u16) -> bool {
        let Some(v) = self.vectors.get(vector as usize) else {
            return false;
        };
        if !v.routed.lock().map(|r| *r).unwrap_or(false) {
            return false;
        }
        v.evt.write(1).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn legacy_table_matches_kvm_default() {
        let v = legacy_routes();
        // 16 PIC entries + 24 IOAPIC entries.
        assert_eq!(v.len(), 40);
        let ioapic: Vec<_> = v
            .iter()
            .filter(|e| unsafe { e.u.irqchip.irqchip } == KVM_IRQCHIP_IOAPIC)
            .collect();
        assert_eq!(ioapic.len(), 24);
        for e in ioapic {
            // SAFETY: irqchip entries carry the irqchip union member.
            assert_eq!(e.gsi, unsafe { e.u.irqchip.pin });
        }
    }

    #[test]
    fn msi_entry_splits_address() {
        let e = msi_entry(
            30,
            &MsiMessage {
                address: 0x1_fee0_1000,
                data: 0x4041,
            },
        );
        assert_eq!(e.type_, KVM_IRQ_ROUTING_MSI);
        // SAFETY: MSI entries carry the msi union member.
        unsafe {
            assert_eq!(e.u.msi.address_lo, 0xfee0_1000);
            assert_eq!(e.u.msi.address_hi, 1);
            assert_eq!(e.u.msi.data, 0x4041);
        }
    }
}
